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
        subcommands: [Train.self, Eval.self, Bench.self, ConfigCommand.self],
        defaultSubcommand: nil)
}

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Benchmarks, measured side by side in one run (build with -c release).",
        subcommands: [BenchCore.self, BenchTrain.self, BenchAttention.self, BenchMamba.self, BenchMamba2.self,
                      BenchLogLinear.self, BenchNSA.self])
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

struct BenchTrain: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "One training step per mixer on the tiny LM of the peer benchmark, tokens/s vs PyTorch.")
    @OptionGroup var common: CommonOptions
    @Option(help: "Mixers to time (default: every registered mixer).")
    var mixer: [String] = []
    @Option(help: "Timed steps per mixer (median reported).")
    var steps = 3
    @Flag(help: "Then run as many steps again under the tape profiler and print where a step's time goes, per operation.")
    var profile = false
    @Flag(help: "Then run three times as many steps rotating zoo's products (skinny GEMM, fused projections and GELU MLP), the skinny GEMM unfused, and OpenBLAS (unfused), and print the three medians.")
    var compareGemm = false
    @Option(help: "PyTorch's figures from a CSV that `bench_peers.py lm` wrote (../shared/bench), instead of PEERS.md's.")
    var peerCsv: String?

    func run() throws {
        try common.apply()
        print(try runTrainBenchmark(mixers: mixer.isEmpty ? nil : mixer, steps: steps, profile: profile,
                                       compareGemm: compareGemm, peerCSV: peerCsv))
    }
}
