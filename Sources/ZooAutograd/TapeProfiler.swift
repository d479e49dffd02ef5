import Foundation

/// What recorded a tape node: a differentiable operation (the function that called `record`, and
/// its file) or a fused kernel (its `DifferentiableFunction` type). Cheap to store: names are
/// built only while the profiler is on.
enum TapeSite: Hashable {
    case function(StaticString, file: StaticString)
    case kernel(Any.Type)
    /// Gradients of a value used more than once, summed during the backward.
    case gradientSum
    /// A parameter's (or input's) gradient stored into, or added to, its `.grad`.
    case leafGradient

    static func == (a: TapeSite, b: TapeSite) -> Bool { a.name == b.name }
    func hash(into h: inout Hasher) { h.combine(name) }

    var name: String {
        switch self {
        case let .function(function, file):
            let base = "\(file)".split(separator: "/").last.map(String.init) ?? "\(file)"
            let bare = "\(function)".split(separator: "(").first.map(String.init) ?? "\(function)"
            return "\(bare) (\(base.replacingOccurrences(of: ".swift", with: "")))"
        case let .kernel(type): return "\(type)"
        case .gradientSum: return "gradient sums (values used twice)"
        case .leafGradient: return "parameter gradients into .grad"
        }
    }
}

/// Wall time of the tape's operations, by operation (`zoo bench train --profile`).
///
/// Forward: each recorded node is charged the time since the previous node was recorded (or since
/// `start`) — its own forward and any unrecorded work just before it. Backward: each node's
/// backward closure is timed, and summing the gradients of values used twice is a line of its own.
/// Off unless started; meant for one thread building one graph (a benchmark), not for tests that
/// build graphs concurrently (their times would mix, though nothing breaks).
public enum TapeProfiler {
    public struct Entry: Sendable {
        public let operation: String
        public var forwardSeconds = 0.0, backwardSeconds = 0.0
        /// Nodes recorded (for an operation), or sums done (for gradient sums).
        public var calls = 0
    }

    private static let lock = NSLock()
    nonisolated(unsafe) private static var enabled = false
    nonisolated(unsafe) private static var last = 0.0
    nonisolated(unsafe) private static var table: [TapeSite: Entry] = [:]

    /// Clears the table and starts timing; the next recorded node's forward is timed from here.
    public static func start() {
        lock.lock(); defer { lock.unlock() }
        table = [:]; enabled = true; last = now()
    }

    /// Marks the start of a forward pass (time before it is not charged to its first node).
    public static func mark() {
        lock.lock(); defer { lock.unlock() }
        last = now()
    }

    /// Stops timing and returns the entries, largest total first.
    public static func stop() -> [Entry] {
        lock.lock(); defer { lock.unlock() }
        enabled = false
        return table.values.sorted { ($0.forwardSeconds + $0.backwardSeconds) > ($1.forwardSeconds + $1.backwardSeconds) }
    }

    @inline(__always) static func clock() -> Double { enabled ? now() : 0 }

    static func recorded(_ site: TapeSite) {
        guard enabled else { return }
        lock.lock(); defer { lock.unlock() }
        let t = now()
        table[site, default: Entry(operation: site.name)].forwardSeconds += t - last
        table[site, default: Entry(operation: site.name)].calls += 1
        last = t
    }

    static func ranBackward(_ site: TapeSite, since started: Double) {
        guard enabled else { return }
        lock.lock(); defer { lock.unlock() }
        table[site, default: Entry(operation: site.name)].backwardSeconds += now() - started
        if site == .gradientSum || site == .leafGradient { table[site, default: Entry(operation: site.name)].calls += 1 }
    }

    private static func now() -> Double {
        var t = timespec()
        clock_gettime(CLOCK_MONOTONIC, &t)
        return Double(t.tv_sec) + Double(t.tv_nsec) * 1e-9
    }
}
