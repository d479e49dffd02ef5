// swift-tools-version: 6.0
import PackageDescription
import Foundation

// MARK: - CPU target for the hot kernels
//
// Without `-target-cpu`, Swift compiles SIMD code for SSE2 only and FMA becomes a libm call per
// lane (70–100× slower; ../shared/notes/swift-cpu.md §3b). The default is read from this machine's
// /proc/cpuinfo so that a build never uses instructions the build machine lacks:
//   AVX-512 (F, BW, DQ, VL) → skylake-avx512; AVX2 + FMA → haswell; otherwise the baseline.
// `ZOO_TARGET_CPU=<cpu>` overrides it (for example `haswell` for a binary carried to other
// machines, `znver4` on Zen 4, `none` for the baseline).
func detectTargetCPU() -> String? {
    if let chosen = ProcessInfo.processInfo.environment["ZOO_TARGET_CPU"], !chosen.isEmpty {
        return chosen == "none" ? nil : chosen
    }
    #if arch(x86_64)
    guard let info = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8),
          let flagLine = info.split(separator: "\n").first(where: { $0.hasPrefix("flags") })
    else { return nil }
    let flags = Set(flagLine.split(separator: " ").map(String.init))
    if ["avx512f", "avx512bw", "avx512dq", "avx512vl", "fma"].allSatisfy(flags.contains) {
        return "skylake-avx512"
    }
    if ["avx2", "fma"].allSatisfy(flags.contains) { return "haswell" }
    return nil
    #else
    return nil
    #endif
}

let targetCPUFlags: [String] = detectTargetCPU().map { ["-target-cpu", $0] } ?? []
// Optimised even in debug builds, so `swift test` runs kernels at full speed. `-O` keeps
// preconditions (bad shapes must fail with a message); `-Ounchecked` only in ZooKernels, whose
// entry points validate their arguments with `fatalError`-based checks that survive it.
let optimised: [SwiftSetting] = [.unsafeFlags(["-O", "-enforce-exclusivity=unchecked"] + targetCPUFlags)]
let kernelOptimised: [SwiftSetting] = [.unsafeFlags(["-Ounchecked", "-enforce-exclusivity=unchecked"] + targetCPUFlags)]

let package = Package(
    name: "zoo",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "zoo", targets: ["zoo"]),
        .library(name: "ZooNN", targets: ["ZooNN"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.0.0"),
    ],
    targets: [
        // MARK: System libraries
        .systemLibrary(name: "CBLAS", pkgConfig: "openblas",
                       providers: [.apt(["libopenblas-dev", "liblapacke-dev"])]),

        // MARK: Libraries (dependencies run one way: tensor ← autograd ← kernels ← nn)
        .target(name: "ZooTensor", dependencies: ["CBLAS"], swiftSettings: optimised),
        .target(name: "ZooAutograd", dependencies: ["ZooTensor"], swiftSettings: optimised),
        .target(name: "ZooKernels", dependencies: ["ZooTensor", "CBLAS"], exclude: ["Attention/README.md", "SelectiveScan/README.md", "SSD/README.md", "LogLinear/README.md", "NSA/README.md"],
                swiftSettings: kernelOptimised),
        .target(name: "ZooNN", dependencies: ["ZooTensor", "ZooAutograd"], swiftSettings: optimised),
        .target(name: "ZooMixers", dependencies: ["ZooTensor", "ZooAutograd", "ZooKernels", "ZooNN"],
                swiftSettings: optimised),
        .target(name: "ZooModels", dependencies: ["ZooTensor", "ZooAutograd", "ZooNN", "ZooMixers"],
                swiftSettings: optimised),
        .target(name: "ZooExperiment", dependencies: ["ZooTensor", "ZooNN", "ZooMixers", .product(name: "Yams", package: "Yams")],
                swiftSettings: optimised),
        .target(name: "ZooBench", dependencies: ["ZooTensor", "ZooAutograd", "ZooKernels", "ZooNN", "ZooMixers", "ZooModels", "ZooExperiment", "CBLAS"], swiftSettings: optimised),
        // Data sources (MQAR, byte-level text) and checkpoint files (safetensors): plain Swift over
        // ZooTensor, so evaluation and tools can read data and checkpoints without the training stack.
        .target(name: "ZooData", dependencies: ["ZooTensor"], swiftSettings: optimised),
        .target(name: "ZooCheckpoint", dependencies: ["ZooTensor"], swiftSettings: optimised),
        .target(name: "ZooTraining", dependencies: ["ZooTensor", "ZooAutograd", "ZooNN", "ZooMixers", "ZooModels",
                                                   "ZooData", "ZooCheckpoint", "ZooExperiment",
                                                   .product(name: "Yams", package: "Yams")],
                swiftSettings: optimised),
        // Measurements after training (quality, throughput, state memory vs length), the tidy CSV,
        // terminal tables, SVG plots, the MQAR sweep summary and the child-process sweep scheduler.
        .target(name: "ZooEval", dependencies: ["ZooTensor", "ZooAutograd", "ZooNN", "ZooMixers", "ZooModels", "ZooData",
                                               "ZooCheckpoint", "ZooExperiment", "ZooTraining"],
                swiftSettings: optimised),
        .target(name: "ZooTestSupport", dependencies: ["ZooTensor", "ZooAutograd", "ZooNN", "ZooMixers"], swiftSettings: optimised),

        // MARK: Command-line tool (thin: parsing and printing)
        .executableTarget(name: "zoo", dependencies: [
            "ZooTensor", "ZooAutograd", "ZooNN", "ZooKernels", "ZooMixers", "ZooModels", "ZooData", "ZooExperiment", "ZooTraining", "ZooEval", "ZooBench", "CBLAS",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ], swiftSettings: optimised),

        // MARK: Tests
        .testTarget(name: "ZooTensorTests", dependencies: ["ZooTensor", "ZooTestSupport"]),
        .testTarget(name: "ZooAutogradTests", dependencies: ["ZooAutograd", "ZooTestSupport"]),
        .testTarget(name: "ZooKernelsTests", dependencies: ["ZooKernels", "ZooTestSupport"],
                    resources: [.copy("Fixtures")]),
        .testTarget(name: "ZooNNTests", dependencies: ["ZooNN", "ZooTestSupport"]),
        .testTarget(name: "ZooExperimentTests", dependencies: ["ZooExperiment", "ZooTestSupport"]),
        .testTarget(name: "ZooTrainingTests", dependencies: ["ZooTraining", "ZooCheckpoint", "ZooTestSupport"]),
        .testTarget(name: "ZooEvalTests", dependencies: ["ZooEval", "ZooTraining", "ZooCheckpoint", "ZooTestSupport"]),
        .testTarget(name: "ZooModelsTests", dependencies: ["ZooModels", "ZooTestSupport"]),
        .testTarget(name: "ZooMixersTests", dependencies: ["ZooMixers", "ZooTestSupport"]),
        .testTarget(name: "ZooDataTests", dependencies: ["ZooData", "ZooTestSupport"], exclude: ["Reference"]),
        .testTarget(name: "ZooCheckpointTests", dependencies: ["ZooCheckpoint", "ZooTestSupport"],
                    resources: [.copy("Fixtures")]),
        .testTarget(name: "ZooBenchTests", dependencies: ["ZooBench"]),
    ]
)
