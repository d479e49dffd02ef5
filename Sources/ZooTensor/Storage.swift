import Foundation

/// Counts the bytes held by every `TensorStorage` and `ScratchBuffer` in the process, so tests and
/// benchmarks can measure memory (live and peak) instead of estimating it.
///
/// Counting is lock-free and approximate only under concurrent allocation from several threads
/// (the peak may miss a simultaneous spike); kernels allocate their scratch before fanning out.
public enum MemoryMeter {
    nonisolated(unsafe) private static var _live = 0
    nonisolated(unsafe) private static var _peak = 0
    nonisolated(unsafe) private static var _allocations = 0
    private static let lock = NSLock()

    /// Bytes held right now by tensors and scratch buffers.
    public static var liveBytes: Int { lock.lock(); defer { lock.unlock() }; return _live }
    /// The largest `liveBytes` seen since the last `resetPeak()`.
    public static var peakBytes: Int { lock.lock(); defer { lock.unlock() }; return _peak }
    /// Number of allocations since the last `resetPeak()`.
    public static var allocationCount: Int { lock.lock(); defer { lock.unlock() }; return _allocations }

    /// Starts a new measurement window: the peak becomes the current live size.
    public static func resetPeak() {
        lock.lock(); _peak = _live; _allocations = 0; lock.unlock()
    }

    static func didAllocate(_ bytes: Int) {
        lock.lock(); _live += bytes; _allocations += 1; if _live > _peak { _peak = _live }; lock.unlock()
    }
    static func didFree(_ bytes: Int) {
        lock.lock(); _live -= bytes; lock.unlock()
    }

    /// Measures the extra peak bytes allocated while `body` runs (beyond what was live before).
    public static func measurePeak<R>(_ body: () throws -> R) rethrows -> (result: R, peakExtraBytes: Int) {
        let before = liveBytes
        resetPeak()
        let result = try body()
        return (result, peakBytes - before)
    }
}

/// Process peak resident set size (VmHWM), in bytes, or nil where /proc is unavailable.
public func peakResidentBytes() -> Int? {
    guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return nil }
    for line in status.split(separator: "\n") where line.hasPrefix("VmHWM:") {
        let parts = line.split(separator: " ", omittingEmptySubsequences: true)
        if parts.count >= 2, let kib = Int(parts[1]) { return kib * 1024 }
    }
    return nil
}

#if os(Linux)
// <malloc.h> is not part of the Glibc module; mallopt is a stable glibc symbol.
@_silgen_name("mallopt") private func glibcMallopt(_ parameter: Int32, _ value: Int32) -> Int32
#endif

/// 64-byte aligned Float32 memory owned by a class, so `Tensor` can share it copy-on-write.
/// Hot loops never index through this class: they take its `pointer` once.
public final class TensorStorage: @unchecked Sendable {
    public let pointer: UnsafeMutablePointer<Float>
    public let count: Int

    /// Keep freed memory in the heap for reuse: glibc otherwise maps every block over 128 KiB
    /// fresh from the kernel and unmaps it on free, so each large temporary pays its page faults
    /// again (measured: a 64 MiB softmax output costs more in faults than in arithmetic).
    static let heapPolicy: Void = {
        #if os(Linux)
        _ = glibcMallopt(-3, 1 << 30)        // M_MMAP_THRESHOLD (glibc's malloc.h)
        _ = glibcMallopt(-1, Int32.max)      // M_TRIM_THRESHOLD
        #endif
    }()

    /// Uninitialised storage for `count` floats.
    public init(uninitializedCount count: Int) {
        _ = TensorStorage.heapPolicy
        precondition(count >= 0, "TensorStorage: negative element count \(count)")
        self.count = count
        let raw = UnsafeMutableRawPointer.allocate(byteCount: max(count, 1) * 4, alignment: 64)
        pointer = raw.bindMemory(to: Float.self, capacity: max(count, 1))
        MemoryMeter.didAllocate(count * 4)
    }

    public convenience init(repeating value: Float, count: Int) {
        self.init(uninitializedCount: count)
        pointer.initialize(repeating: value, count: count)
    }

    deinit {
        MemoryMeter.didFree(count * 4)
        pointer.deallocate()
    }

    /// A new storage holding a copy of the first `count` elements.
    public func copy() -> TensorStorage {
        let other = TensorStorage(uninitializedCount: count)
        other.pointer.update(from: pointer, count: count)
        return other
    }
}

/// Scratch memory for kernels: aligned, counted by `MemoryMeter`, freed when the value dies.
/// Use it (not `[Float]`) for work buffers so memory tests see every byte a kernel takes.
public final class ScratchBuffer: @unchecked Sendable {
    public let pointer: UnsafeMutablePointer<Float>
    public let count: Int
    public init(count: Int, zeroed: Bool = true) {
        _ = TensorStorage.heapPolicy
        let raw = UnsafeMutableRawPointer.allocate(byteCount: max(count, 1) * 4, alignment: 64)
        pointer = raw.bindMemory(to: Float.self, capacity: max(count, 1))
        self.count = count
        if zeroed { pointer.initialize(repeating: 0, count: count) }
        MemoryMeter.didAllocate(count * 4)
    }
    deinit {
        MemoryMeter.didFree(count * 4)
        pointer.deallocate()
    }
}
