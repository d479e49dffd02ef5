import Foundation
import CBLAS

/// A pointer that may cross into `@Sendable` closures of parallel loops. Each worker must write
/// disjoint ranges; that is the caller's promise, not something this type checks.
public struct SendablePointer<T>: @unchecked Sendable {
    public let pointer: UnsafeMutablePointer<T>
    @inlinable public init(_ pointer: UnsafeMutablePointer<T>) { self.pointer = pointer }
    @inlinable public subscript(i: Int) -> T {
        get { pointer[i] }
        nonmutating set { pointer[i] = newValue }
    }
    @inlinable public static func + (lhs: SendablePointer, rhs: Int) -> UnsafeMutablePointer<T> { lhs.pointer + rhs }
}

/// The one thread policy of the process (../shared/DESIGN.md §3, notes/swift-cpu.md §4):
/// parallel loops over independent work run in Swift on `concurrentPerform`; BLAS stays
/// single-threaded inside them, and is never run multi-threaded under a parallel loop.
///
/// Results do not depend on the thread count: every output element is produced by one worker,
/// and cross-chunk reductions combine in a fixed order.
public enum ZooThreads {
    nonisolated(unsafe) private static var _count = ProcessInfo.processInfo.activeProcessorCount
    nonisolated(unsafe) private static var configured = false

    /// Worker count for parallel loops (`--threads`, default: all cores).
    public static var count: Int {
        if !configured { configure(threads: _count) }
        return _count
    }

    /// Sets the worker count and pins OpenBLAS to one thread (it busy-waits ~100 ms after a
    /// threaded call, which makes nesting it under Swift workers 3–10× slower).
    public static func configure(threads: Int) {
        precondition(threads >= 1, "ZooThreads.configure: threads must be ≥ 1, got \(threads)")
        _count = threads
        configured = true
        openblas_set_num_threads(1)
    }

    /// Runs `body(range)` over `0..<n` split into at most `count` contiguous chunks, in parallel.
    /// Nested calls run serially on the calling worker (one level of parallelism only).
    /// `minChunk` avoids forking for work too small to pay for it.
    public static func parallelFor(_ n: Int, minChunk: Int = 1, _ body: (Range<Int>) -> Void) {
        if n <= 0 { return }
        let workers = min(count, max(1, n / max(minChunk, 1)))
        if workers <= 1 || insideParallelRegion {
            body(0..<n)
            return
        }
        withoutActuallyEscaping(body) { body in
            let box = UnsafeSendableClosure(body)
            DispatchQueue.concurrentPerform(iterations: workers) { w in
                let lo = n * w / workers, hi = n * (w + 1) / workers
                ParallelRegion.enter()
                box.body(lo..<hi)
                ParallelRegion.leave()
            }
        }
    }

    /// Runs `body(i)` for each item, items spread over the workers in contiguous chunks.
    public static func parallelForEach(_ n: Int, _ body: (Int) -> Void) {
        parallelFor(n) { range in for i in range { body(i) } }
    }

    /// True inside a `parallelFor` worker.
    public static var insideParallelRegion: Bool { ParallelRegion.depth > 0 }
}

private struct UnsafeSendableClosure: @unchecked Sendable {
    let body: (Range<Int>) -> Void
    init(_ body: @escaping (Range<Int>) -> Void) { self.body = body }
}

private enum ParallelRegion {
    // Per-thread nesting depth, kept in pthread TLS so a nested parallelFor runs serially.
    private static let key: pthread_key_t = {
        var key = pthread_key_t()
        pthread_key_create(&key, nil)
        return key
    }()
    static var depth: Int {
        Int(bitPattern: pthread_getspecific(key))
    }
    static func enter() { pthread_setspecific(key, UnsafeRawPointer(bitPattern: depth + 1)) }
    static func leave() {
        let d = depth - 1
        pthread_setspecific(key, d == 0 ? nil : UnsafeRawPointer(bitPattern: d))
    }
}
