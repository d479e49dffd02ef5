import ArgumentParser
import ZooTensor
import ZooBench

/// Options every command takes.
struct CommonOptions: ParsableArguments {
    @Option(help: "Worker threads for parallel loops (default: all cores). BLAS runs single-threaded inside them.")
    var threads: Int?

    func apply() throws {
        if let threads {
            guard threads >= 1 else { throw ValidationError("--threads must be at least 1, got \(threads)") }
            ZooThreads.configure(threads: threads)
        } else {
            ZooThreads.configure(threads: ZooThreads.count)
        }
    }
}

@main
struct Zoo: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "zoo",
        abstract: "Compare sequence mixers (attention, Mamba, Mamba-2, log-linear, NSA) on one CPU harness.",
        subcommands: [Bench.self])
}

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Benchmarks, measured side by side in one run (build with -c release).",
        subcommands: [BenchCore.self, BenchNSA.self])
}

struct BenchCore: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "core",
        abstract: "Matmul vs raw sgemm, softmax/exp/SiLU vs memcpy, tape overhead per op.")
    @OptionGroup var common: CommonOptions
    @Flag(help: "A shorter run (fewer shapes and repeats), for smoke tests.")
    var quick = false

    func run() throws {
        try common.apply()
        print(runCoreBenchmark(quick: quick))
    }
}
