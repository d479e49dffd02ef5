import Foundation
import ZooTensor

/// Wall-clock measurement for benchmarks: warm-up runs, then `repeats` timed runs (or until
/// `minSeconds` have passed); reports the median, which resists the noise of a shared machine.
public struct Measurement: Sendable {
    public let samples: [Double]          // seconds per run
    public var median: Double {
        let s = samples.sorted()
        return s.count % 2 == 1 ? s[s.count / 2] : 0.5 * (s[s.count / 2 - 1] + s[s.count / 2])
    }
    public var best: Double { samples.min() ?? .nan }
}

public func now() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
}

/// Times `body`. At least `repeats` runs and at least `minSeconds` in total, at most `maxRuns`.
public func measure(warmup: Int = 1, repeats: Int = 5, minSeconds: Double = 0.2, maxRuns: Int = 1000,
                    _ body: () -> Void) -> Measurement {
    for _ in 0..<warmup { body() }
    var samples: [Double] = []
    let start = now()
    while samples.count < repeats || (now() - start < minSeconds && samples.count < maxRuns) {
        let t0 = now()
        body()
        samples.append(now() - t0)
    }
    return Measurement(samples: samples)
}

/// A plain-text table with right-aligned columns, printed as the benchmark's report.
public struct Table {
    public let header: [String]
    public private(set) var rows: [[String]] = []
    public init(_ header: [String]) { self.header = header }
    public mutating func add(_ row: [String]) { rows.append(row) }
    public func render() -> String {
        let all = [header] + rows
        let widths = (0..<header.count).map { c in all.map { c < $0.count ? $0[c].count : 0 }.max() ?? 0 }
        func line(_ r: [String]) -> String {
            (0..<header.count).map { c in
                let s = c < r.count ? r[c] : ""
                return String(repeating: " ", count: widths[c] - s.count) + s
            }.joined(separator: "  ")
        }
        let rule = widths.map { String(repeating: "-", count: $0) }.joined(separator: "  ")
        return ([line(header), rule] + rows.map(line)).joined(separator: "\n")
    }
}

/// Fixed-precision number formatting for tables.
public func fmt(_ x: Double, _ digits: Int = 1) -> String { String(format: "%.\(digits)f", x) }

/// A header line every benchmark prints first: machine, threads, BLAS core, build.
public func benchmarkHeader(_ title: String) -> String {
    let cores = ProcessInfo.processInfo.activeProcessorCount
    return "# \(title)\n# threads \(ZooThreads.count) of \(cores) cores, BLAS core \(blasCoreName), times are medians"
}
