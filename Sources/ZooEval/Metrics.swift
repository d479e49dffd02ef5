import Foundation
import ZooTensor

/// The metrics `zoo eval` writes (names as ../shared/DESIGN.md §6), their units, and the group
/// each belongs to. A group is measured as one piece and written at once, so "is this group done
/// for (run, seq_len)?" is the unit of resumption.
public enum EvalMetric {
    public enum Group: String, Sendable, CaseIterable {
        /// Validation loss / perplexity (text) or accuracy (MQAR) at the length.
        case quality
        /// The training loss at the training length, from the run's metrics.csv.
        case trainLoss = "train_loss"
        /// One forward + backward pass.
        case train
        /// Prefill, decode-state bytes, bytes read per decoded token, decode speed, peak RSS.
        case inference
    }

    public static let units: [String: String] = [
        "train_loss": "nats/token", "val_loss": "nats/token", "perplexity": "1", "accuracy": "fraction",
        "train_tokens_per_s": "tokens/s", "train_peak_rss_bytes": "bytes",
        "prefill_tokens_per_s": "tokens/s", "decode_tokens_per_s": "tokens/s",
        "state_bytes": "bytes", "state_bytes_analytic": "bytes",
        "decode_bytes_read_per_token": "bytes", "decode_tokens_read_per_token": "tokens", "peak_rss_bytes": "bytes",
    ]

    /// The order tables and plots list metrics in.
    public static let order = ["train_loss", "val_loss", "perplexity", "accuracy", "train_tokens_per_s", "prefill_tokens_per_s",
                               "decode_tokens_per_s", "state_bytes", "state_bytes_analytic", "decode_bytes_read_per_token",
                               "decode_tokens_read_per_token", "peak_rss_bytes", "train_peak_rss_bytes"]

    public static func unit(_ metric: String) -> String {
        if metric.hasPrefix("accuracy") { return "fraction" }
        return units[metric] ?? ""
    }

    public static func group(_ metric: String) -> Group {
        switch metric {
        case "train_loss": return .trainLoss
        case "train_tokens_per_s", "train_peak_rss_bytes": return .train
        case "val_loss", "perplexity": return .quality
        default: return metric.hasPrefix("accuracy") ? .quality : .inference
        }
    }

    /// Sort key: catalogue order, then accuracy slices by their pair count.
    static func rank(_ metric: String) -> (Int, Int, String) {
        if let i = order.firstIndex(of: metric) { return (i, 0, metric) }
        if metric.hasPrefix("accuracy_kv"), let k = Int(metric.dropFirst("accuracy_kv".count)) {
            return (order.firstIndex(of: "accuracy")!, k, metric)
        }
        return (order.count, 0, metric)
    }
}

/// What every row records about where it was measured.
public struct EvalEnvironment: Sendable {
    public var gitRev: String
    public var threads: Int
    public var now: @Sendable () -> String

    public init(gitRev: String, threads: Int, now: @escaping @Sendable () -> String = EvalEnvironment.isoNow) {
        self.gitRev = gitRev; self.threads = threads; self.now = now
    }

    /// This checkout's revision and the process's thread count.
    public static func current(root: String) -> EvalEnvironment {
        EvalEnvironment(gitRev: gitRevision(root: root), threads: ZooThreads.count)
    }

    @Sendable public static func isoNow() -> String {
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime]
        return f.string(from: Date())
    }

    /// `git rev-parse --short=12 HEAD` in `root`, with `-dirty` when tracked files differ from it;
    /// `ZOO_GIT_REV` overrides it (for builds run outside a checkout); "unknown" without git.
    public static func gitRevision(root: String) -> String {
        if let rev = ProcessInfo.processInfo.environment["ZOO_GIT_REV"], !rev.isEmpty { return rev }
        guard let head = runGit(["rev-parse", "--short=12", "HEAD"], in: root)?.trimmingCharacters(in: .whitespacesAndNewlines),
              !head.isEmpty else { return "unknown" }
        let dirty = runGit(["status", "--porcelain", "--untracked-files=no"], in: root).map { !$0.isEmpty } ?? false
        return dirty ? head + "-dirty" : head
    }

    static func runGit(_ arguments: [String], in directory: String) -> String? {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = ["git", "-C", directory] + arguments
        let pipe = Pipe()
        p.standardOutput = pipe
        p.standardError = FileHandle.nullDevice
        do { try p.run() } catch { return nil }
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return p.terminationStatus == 0 ? String(decoding: data, as: UTF8.self) : nil
    }
}

/// Peak resident memory over a stretch of work: Linux can reset the process's high-water mark
/// (`/proc/self/clear_refs` ← 5), so each measurement gets its own peak instead of the process's
/// lifetime maximum.
public enum PeakMemory {
    /// Resets the high-water mark to the current RSS; false where that is not possible (the peak
    /// then covers the process's life so far).
    @discardableResult
    public static func reset() -> Bool {
        // Hand freed heap memory back first, so the peak is this measurement's and not what
        // earlier ones left cached in the allocator.
        #if os(Linux)
        _ = glibcMallocTrim(0)
        #endif
        guard let h = FileHandle(forWritingAtPath: "/proc/self/clear_refs") else { return false }
        defer { try? h.close() }
        do { try h.write(contentsOf: Data("5".utf8)) } catch { return false }
        return true
    }

    /// The peak RSS of `body`, when it can be measured.
    public static func measure<R>(_ body: () throws -> R) rethrows -> (result: R, peakBytes: Int?, isolated: Bool) {
        let isolated = reset()
        let r = try body()
        return (r, peakResidentBytes(), isolated)
    }
}

#if os(Linux)
@_silgen_name("malloc_trim") private func glibcMallocTrim(_ pad: Int) -> Int32
#endif

/// Monotonic seconds.
func monotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
}

/// Times `body` (which may prepare its own input inside `timed`): runs it once; when that took less
/// than `minSeconds`, runs it again until `minSeconds` have passed (at least 3 more runs, at most
/// `maxRuns`) and takes the median of the repeats, the first run counting as warm-up.
/// Returns seconds per run.
func timeRuns(minSeconds: Double = 0.3, maxRuns: Int = 25, _ body: (_ timed: (() -> Void) -> Void) -> Void) -> Double {
    var samples: [Double] = []
    func once() {
        body { work in
            let t0 = monotonicSeconds()
            work()
            samples.append(monotonicSeconds() - t0)
        }
    }
    once()
    guard let first = samples.first, first < minSeconds else { return samples.first ?? .nan }
    samples.removeAll()
    var total = 0.0
    while (samples.count < 3 || total < minSeconds) && samples.count < maxRuns {
        once()
        total += samples.last ?? 0
    }
    let s = samples.sorted()
    return s.count % 2 == 1 ? s[s.count / 2] : 0.5 * (s[s.count / 2 - 1] + s[s.count / 2])
}
