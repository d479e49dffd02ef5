import ArgumentParser
import ZooBench

struct BenchMamba2: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mamba2",
        abstract: "SSD (Mamba-2) kernels: chunked forward and forward+backward vs the naive form, over lengths.")
    @OptionGroup var common: CommonOptions
    @Option(parsing: .upToNextOption, help: "Sequence lengths.")
    var lengths: [Int] = [256, 512, 1024, 2048, 4096, 8192, 16384]
    @Option(help: "Chunk size Q.")
    var chunk = 64
    @Option(help: "Longest T for the naive (Double, O(T²)) forward; its backward runs up to half of it.")
    var naiveMaxLength = 1024
    @Flag(help: "A shorter run (fewer repeats), for smoke tests.")
    var quick = false

    @Option(help: "PyTorch's figures from a CSV that `bench_peers.py mixers` wrote (../shared/bench), instead of PEERS.md's.")
    var peerCsv: String?

    func run() throws {
        try common.apply()
        print(try runMamba2Benchmark(lengths: lengths, chunk: chunk, naiveMaxLength: naiveMaxLength, quick: quick, peerCSV: peerCsv))
    }
}
