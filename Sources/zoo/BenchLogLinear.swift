import ArgumentParser
import ZooBench

struct BenchLogLinear: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "loglinear",
        abstract: "Log-linear Mamba-2 kernels: chunked forward and forward+backward vs zoo's SSD, over lengths.")
    @OptionGroup var common: CommonOptions
    @Option(parsing: .upToNextOption, help: "Sequence lengths.")
    var lengths: [Int] = [256, 512, 1024, 2048, 4096, 8192, 16384]
    @Option(help: "Chunk size Q (a power of two).")
    var chunk = 64
    @Flag(help: "A shorter run (fewer repeats), for smoke tests.")
    var quick = false
    @Flag(help: "Skip zoo's SSD columns (log-linear only).")
    var noSSD = false

    @Option(help: "PyTorch's figures from a CSV that `bench_peers.py mixers` wrote (../shared/bench), instead of PEERS.md's.")
    var peerCsv: String?

    func run() throws {
        try common.apply()
        print(try runLogLinearBenchmark(lengths: lengths, chunk: chunk, quick: quick, withSSD: !noSSD, peerCSV: peerCsv))
    }
}
