import ArgumentParser
import ZooBench

/// `zoo bench mamba`: selective scan kernels (fast forward, fast forward+backward, naive) over T.
struct BenchMamba: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mamba",
        abstract: "Selective scan (Mamba-1) kernels: B=1, D=512, N=16, T=256…16384, fwd and fwd+bwd, vs the naive reference.")
    @OptionGroup var common: CommonOptions
    @Option(help: "Comma-separated sequence lengths.")
    var lengths: String = "256,512,1024,2048,4096,8192,16384"
    @Option(help: "Channels D.")
    var channels: Int = 512
    @Option(help: "State size N.")
    var stateSize: Int = 16
    @Option(help: "Skip the naive kernel where one run is predicted to take longer (seconds).")
    var naiveLimit: Double = 10
    @Flag(help: "A shorter run (fewer repeats), for smoke tests.")
    var quick = false

    func run() throws {
        try common.apply()
        let parsed = lengths.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
        guard !parsed.isEmpty, parsed.allSatisfy({ $0 >= 1 }) else {
            throw ValidationError("--lengths needs positive integers, got '\(lengths)'")
        }
        print(runMambaBenchmark(lengths: parsed, channels: channels, stateSize: stateSize, naiveLimitSeconds: naiveLimit, quick: quick))
    }
}
