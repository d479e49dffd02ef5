import ArgumentParser
import ZooBench

struct BenchAttention: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "attention",
        abstract: "Flash attention forward and forward+backward vs the naive kernel and raw sgemm; decode vs memcpy.")
    @OptionGroup var common: CommonOptions
    @Option(help: "Sequence lengths (comma-separated).")
    var lengths: String = "256,512,1024,2048,4096,8192,16384"
    @Option(help: "Cache length for the one-token decode.")
    var decodeLength = 16384
    @Flag(help: "A shorter run, for smoke tests.")
    var quick = false

    func run() throws {
        try common.apply()
        let list = lengths.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
        guard !list.isEmpty, list.allSatisfy({ $0 >= 1 }) else { throw ValidationError("--lengths needs positive integers, got '\(lengths)'") }
        guard decodeLength >= 1 else { throw ValidationError("--decode-length must be ≥ 1") }
        print(runAttentionBenchmark(lengths: list, decodeLength: decodeLength, quick: quick))
    }
}
