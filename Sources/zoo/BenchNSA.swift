import ArgumentParser
import ZooBench

/// `zoo bench nsa`: NSA forward and forward+backward at the paper's sizes over a range of lengths.
struct BenchNSA: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "nsa",
        abstract: "NSA fast kernels (B=1, Hq=4, Hkv=1, d=64, paper defaults), forward and forward+backward, beside flash attention.")
    @OptionGroup var common: CommonOptions
    @Option(help: "Comma-separated sequence lengths.")
    var lengths: String = "1024,2048,4096,8192,16384,32768"
    @Flag(help: "Forward only.")
    var forwardOnly = false
    @Flag(help: "Leave out the flash-attention columns.")
    var noFlash = false
    @Option(help: "PyTorch reference figures from a CSV that `bench_peers.py mixers` wrote (../shared/bench), instead of PEERS.md's.")
    var peerCsv: String?

    func run() throws {
        try common.apply()
        let ts = lengths.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
        guard !ts.isEmpty, ts.allSatisfy({ $0 >= 1 }) else { throw ValidationError("--lengths needs positive integers, got '\(lengths)'") }
        print(try runNSABenchmark(lengths: ts, backward: !forwardOnly, baseline: noFlash ? nil : flashAttentionBaseline,
                                  peerCSV: peerCsv, progress: { print("# " + $0) }))
    }
}
