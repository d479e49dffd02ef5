import Testing
import Foundation
import Synchronization
import ZooTensor

/// `ZooThreads.parallelFor` on zoo's worker pool: every index once, in the documented chunks,
/// nested loops serial, several threads' loops at once, and helpers that went to sleep wake up.
@Suite struct WorkerPoolTests {
    /// Runs a loop that records which chunk (by its first index) covered each index, and whether
    /// the body saw itself inside a parallel region.
    func chunksOf(_ n: Int, threads: Int, minChunk: Int = 1) -> (owner: [Int], inside: Bool) {
        let saved = ZooThreads.count
        defer { ZooThreads.configure(threads: saved) }
        ZooThreads.configure(threads: threads)
        let owner = UnsafeMutablePointer<Int>.allocate(capacity: max(n, 1))
        defer { owner.deallocate() }
        owner.initialize(repeating: -1, count: max(n, 1))
        let po = SendablePointer(owner)
        let outside = Atomic<Int>(0)
        ZooThreads.parallelFor(n, minChunk: minChunk) { range in
            if !ZooThreads.insideParallelRegion { outside.add(1, ordering: .relaxed) }
            for i in range {
                precondition(po[i] == -1, "index \(i) covered twice")
                po[i] = range.lowerBound
            }
        }
        return (Array(UnsafeBufferPointer(start: owner, count: n)), outside.load(ordering: .relaxed) == 0)
    }

    /// The chunks a loop used, from `owner`: contiguous, and starting at n·w/W for their count W.
    /// (The thread count is process-wide and other suites change it while tests run in parallel,
    /// so W is checked against the split, not against the count this test set.)
    func isDocumentedSplit(_ owner: [Int], n: Int, maxWorkers: Int) -> Bool {
        let starts = Array(Set(owner)).sorted()
        let w = starts.count
        guard w >= 1, w <= maxWorkers, starts == (0..<w).map({ n * $0 / w }) else { return false }
        return owner.indices.allSatisfy { i in owner[i] == starts.last(where: { $0 <= i }) }
    }

    @Test(arguments: [1, 2, 3, 4])
    func everyIndexOnceInTheDocumentedChunks(threads: Int) {
        for n in [1, 2, 3, 7, 64, 1000] {
            let (owner, inside) = chunksOf(n, threads: threads)
            #expect(isDocumentedSplit(owner, n: n, maxWorkers: 4), "n \(n), \(threads) threads: chunks \(owner) are not the split n·w/workers")
            #expect(inside || Set(owner).count == 1, "n \(n), \(threads) threads: a worker did not see itself inside the loop")
        }
        // minChunk: 100 items, chunks of at least 40 → at most 2 workers.
        let (owner, _) = chunksOf(100, threads: threads, minChunk: 40)
        #expect(isDocumentedSplit(owner, n: 100, maxWorkers: 2))
    }

    @Test func nestedLoopsRunSeriallyOnTheirWorker() {
        let saved = ZooThreads.count
        defer { ZooThreads.configure(threads: saved) }
        ZooThreads.configure(threads: 2)
        let innerCalls = Atomic<Int>(0), innerChunks = Atomic<Int>(0)
        ZooThreads.parallelFor(2) { outer in
            for _ in outer {
                innerCalls.add(1, ordering: .relaxed)
                ZooThreads.parallelFor(10) { _ in innerChunks.add(1, ordering: .relaxed) }
            }
        }
        #expect(innerChunks.load(ordering: .relaxed) == innerCalls.load(ordering: .relaxed),
                "a nested loop was split (one chunk per inner call expected)")
    }

    /// Four threads each run 300 small loops at once (`parallelFor` called from inside another
    /// library's parallel loop, not zoo's): a loop that finds the workers busy runs on its own
    /// thread, and every loop still covers its indices once.
    @Test func loopsFromSeveralThreadsAtOnce() {
        let saved = ZooThreads.count
        defer { ZooThreads.configure(threads: saved) }
        ZooThreads.configure(threads: 2)
        let failures = Atomic<Int>(0)
        DispatchQueue.concurrentPerform(iterations: 4) { caller in
            for round in 0..<300 {
                let n = 17 + (caller * 7 + round) % 50
                let hits = UnsafeMutablePointer<Int>.allocate(capacity: n)
                hits.initialize(repeating: 0, count: n)
                let ph = SendablePointer(hits)
                ZooThreads.parallelFor(n) { range in for i in range { ph[i] += 1 } }
                if (0..<n).contains(where: { hits[$0] != 1 }) { failures.add(1, ordering: .relaxed) }
                hits.deallocate()
            }
        }
        #expect(failures.load(ordering: .relaxed) == 0)
    }

    /// Helpers sleep after spinning idle (or at once after `releaseCores`); the next loop wakes them.
    @Test func sleepingHelpersWakeForTheNextLoop() {
        let saved = ZooThreads.count
        defer { ZooThreads.configure(threads: saved) }
        ZooThreads.configure(threads: 2)
        _ = chunksOf(8, threads: 2)
        ZooThreads.releaseCores()
        usleep(50_000)                      // past the spin: the helper is asleep either way
        let (owner, inside) = chunksOf(8, threads: 2)
        #expect(isDocumentedSplit(owner, n: 8, maxWorkers: 4) && (inside || Set(owner).count == 1))
    }
}
