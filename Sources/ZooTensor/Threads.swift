import Foundation
import CBLAS
import Synchronization

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
/// parallel loops over independent work run on zoo's own worker threads (`WorkerPool`); BLAS stays
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

    /// Runs `body(range)` over `0..<n` split into at most `count` contiguous chunks, in parallel:
    /// chunk w is lo..<hi with lo = n·w/workers, hi = n·(w+1)/workers, the caller taking chunk 0.
    /// Nested calls run serially on the calling worker (one level of parallelism only), and so
    /// does a call made while another thread's parallel loop holds the workers.
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
            let chunk: @Sendable (Int) -> Void = { w in
                let lo = n * w / workers, hi = n * (w + 1) / workers
                ParallelRegion.enter()
                box.body(lo..<hi)
                ParallelRegion.leave()
            }
            if useDispatch {
                DispatchQueue.concurrentPerform(iterations: workers, execute: chunk)
            } else if !WorkerPool.shared.run(workers: workers, chunk) {
                body(0..<n)   // the workers are busy with another thread's loop
            }
        }
    }

    /// Runs `body(i)` for each item, items spread over the workers in contiguous chunks.
    public static func parallelForEach(_ n: Int, _ body: (Int) -> Void) {
        parallelFor(n) { range in for i in range { body(i) } }
    }

    /// True inside a `parallelFor` worker.
    public static var insideParallelRegion: Bool { ParallelRegion.depth > 0 }

    /// Puts zoo's idle workers to sleep at once, rather than after their spin, so that other
    /// threads (OpenBLAS's, in `withBLASThreads`) get the cores; the next loop wakes them.
    public static func releaseCores() { if !useDispatch { WorkerPool.shared.sleepNow() } }

    /// `ZOO_THREADS_BACKEND=dispatch` runs the loops on `DispatchQueue.concurrentPerform` instead
    /// of the worker pool (to compare the two on one machine).
    static let useDispatch = ProcessInfo.processInfo.environment["ZOO_THREADS_BACKEND"] == "dispatch"
}

private struct UnsafeSendableClosure: @unchecked Sendable {
    let body: (Range<Int>) -> Void
    init(_ body: @escaping (Range<Int>) -> Void) { self.body = body }
}

/// zoo's worker threads: `parallelFor`'s caller runs chunk 0 and helpers 1, 2, … run the others.
///
/// Why not `DispatchQueue.concurrentPerform`: on the project's 2-core VM a woken dispatch worker
/// often ran on the caller's core for milliseconds before the scheduler moved it (Linux places a
/// woken thread beside its waker), so two workers did little better than one. Measured, the same
/// L1-resident microkernel work split in two: dispatch 90–176 GFLOP/s, these workers 149–264
/// (one core alone 128–134). A helper that finished a job spins, watching for the next, so it is
/// still running on its own core when the next loop of a training step comes (microseconds
/// later); after `spinSeconds` without work it sleeps on a condition variable.
final class WorkerPool: @unchecked Sendable {
    static let shared = WorkerPool()
    /// How long an idle helper spins before it sleeps.
    static let spinSeconds = 0.02

    private let generation = Atomic<Int>(0)     // bumped once per job
    private let pending = Atomic<Int>(0)        // helpers yet to finish the current job
    private let sleepers = Atomic<Int>(0)       // helpers asleep (or about to be)
    private let sleepRequest = Atomic<Int>(0)   // bumped by `sleepNow`
    private let submit = Mutex(())              // one job at a time
    private let helperCount = Atomic<Int>(0)
    private nonisolated(unsafe) var job: (workers: Int, chunk: @Sendable (Int) -> Void) = (0, { _ in })
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let wake: UnsafeMutablePointer<pthread_cond_t>

    private init() {
        mutex = .allocate(capacity: 1); wake = .allocate(capacity: 1)
        pthread_mutex_init(mutex, nil); pthread_cond_init(wake, nil)
    }

    /// Runs chunk(w) for w in 0..<workers, chunk 0 on the calling thread, and returns when all
    /// are done; false (nothing run) when another thread's job holds the pool.
    func run(workers: Int, _ chunk: @escaping @Sendable (Int) -> Void) -> Bool {
        let ran: Bool? = submit.withLockIfAvailable { _ in
            ensureHelpers(workers - 1)
            let helpers = helperCount.load(ordering: .relaxed)
            job = (workers, chunk)
            pending.store(helpers, ordering: .relaxed)
            generation.add(1, ordering: .sequentiallyConsistent)
            if sleepers.load(ordering: .sequentiallyConsistent) > 0 {
                pthread_mutex_lock(mutex); pthread_cond_broadcast(wake); pthread_mutex_unlock(mutex)
            }
            chunk(0)
            var spins = 0
            while pending.load(ordering: .acquiring) > 0 {
                spins += 1
                if spins & 1023 == 0 { sched_yield() }
            }
            job = (0, { _ in })
            return true
        }
        return ran ?? false
    }

    /// Wakes nothing; makes every helper that is spinning go to sleep now.
    func sleepNow() { sleepRequest.add(1, ordering: .sequentiallyConsistent) }

    private func ensureHelpers(_ wanted: Int) {
        while helperCount.load(ordering: .relaxed) < wanted {
            let index = helperCount.load(ordering: .relaxed) + 1
            helperCount.store(index, ordering: .relaxed)
            // The job about to be posted is the first this helper must run: it starts from the
            // generation before it (read now, not when the thread gets going).
            let seen = generation.load(ordering: .acquiring)
            let thread = Thread { [self] in helperLoop(index: index, seen: seen) }
            thread.name = "zoo worker \(index)"
            thread.stackSize = 8 << 20
            thread.start()
        }
    }

    private func helperLoop(index: Int, seen start: Int) {
        var seen = start
        while true {
            seen = waitForJob(after: seen)
            // The chunk runs in a function of its own so that this thread holds no reference to
            // the caller's closure once it reports done (the closure must not outlive its loop).
            runChunk(index)
            pending.subtract(1, ordering: .releasing)
        }
    }

    @inline(never) private func runChunk(_ index: Int) {
        let (workers, chunk) = job
        if index < workers { chunk(index) }
    }

    /// Spins until the generation moves past `seen`, then for up to `spinSeconds`, then sleeps.
    private func waitForJob(after seen: Int) -> Int {
        var spins = 0, started = 0.0
        let request = sleepRequest.load(ordering: .relaxed)
        while true {
            let g = generation.load(ordering: .acquiring)
            if g != seen { return g }
            spins += 1
            if spins & 255 == 0 {
                if sleepRequest.load(ordering: .relaxed) != request { break }
                let now = monotonicSeconds()
                if started == 0 { started = now } else if now - started > WorkerPool.spinSeconds { break }
                sched_yield()
            }
        }
        pthread_mutex_lock(mutex)
        sleepers.add(1, ordering: .sequentiallyConsistent)
        var g = generation.load(ordering: .sequentiallyConsistent)
        while g == seen {
            pthread_cond_wait(wake, mutex)
            g = generation.load(ordering: .sequentiallyConsistent)
        }
        sleepers.subtract(1, ordering: .sequentiallyConsistent)
        pthread_mutex_unlock(mutex)
        return g
    }
}

private func monotonicSeconds() -> Double {
    var t = timespec()
    clock_gettime(CLOCK_MONOTONIC, &t)
    return Double(t.tv_sec) + Double(t.tv_nsec) * 1e-9
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
