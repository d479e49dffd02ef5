// Attention: shapes, options and the visibility rule shared by every attention kernel.
//
//   q [B, Tq, Hq, d]   k [B, Tk, Hk, d]   v [B, Tk, Hk, dv]   →   o [B, Tq, Hq, dv], lse [B, Hq, Tq]
//
//   s_ij = scale · q_i·k_j                      (softcap c > 0: s_ij = c · tanh(scale · q_i·k_j / c))
//   o_i  = Σ_{j visible from i} softmax_j(s_i) v_j,   lse_i = log Σ_{j visible} exp(s_ij)
//
// Query head h reads KV head h / (Hq / Hk) (grouped-query / multi-query attention).
// Visibility (bottom-right aligned, as flash-attention): with offset = Tk − Tq, query i sits at
// key position i + offset and sees key j iff
//   causal:        j ≤ i + offset
//   window left:   j ≥ i + offset − left
//   window right:  j ≤ i + offset + right
// Every query's visible keys form one contiguous interval [lo, hi), and both ends grow with i;
// the tiled kernels lean on that to skip whole tiles. A query that sees no key (Tq > Tk under
// causal, or a narrow window) gets o = 0 and lse = −∞.

import Foundation
import ZooTensor

/// Sizes of one attention call (DESIGN.md §4 layout).
public struct AttentionShape: Equatable, Sendable, CustomStringConvertible {
    public var batch: Int
    public var queryLength: Int
    public var keyLength: Int
    public var queryHeads: Int
    public var keyValueHeads: Int
    public var headDim: Int
    public var valueDim: Int

    public init(batch: Int, queryLength: Int, keyLength: Int, queryHeads: Int, keyValueHeads: Int,
                headDim: Int, valueDim: Int? = nil) {
        self.batch = batch
        self.queryLength = queryLength
        self.keyLength = keyLength
        self.queryHeads = queryHeads
        self.keyValueHeads = keyValueHeads
        self.headDim = headDim
        self.valueDim = valueDim ?? headDim
    }

    /// Query heads per KV head.
    public var groupSize: Int { queryHeads / keyValueHeads }
    public var queryCount: Int { batch * queryLength * queryHeads * headDim }
    public var keyCount: Int { batch * keyLength * keyValueHeads * headDim }
    public var valueCount: Int { batch * keyLength * keyValueHeads * valueDim }
    public var outputCount: Int { batch * queryLength * queryHeads * valueDim }
    public var logSumExpCount: Int { batch * queryHeads * queryLength }

    public var description: String {
        "B=\(batch) Tq=\(queryLength) Tk=\(keyLength) Hq=\(queryHeads) Hk=\(keyValueHeads) d=\(headDim) dv=\(valueDim)"
    }

    /// Stops with a message naming `function` when the sizes cannot describe an attention call.
    /// An explicit check (not `precondition`): ZooKernels compiles with -Ounchecked.
    public func validate(_ function: String) {
        if batch < 0 || queryLength < 0 || keyLength < 0 {
            fatalError("\(function): negative size in \(self)")
        }
        if queryHeads < 1 || keyValueHeads < 1 || headDim < 1 || valueDim < 1 {
            fatalError("\(function): heads and head dims must be ≥ 1, got \(self)")
        }
        if queryHeads % keyValueHeads != 0 {
            fatalError("\(function): query heads (\(queryHeads)) must be a multiple of KV heads (\(keyValueHeads)) in \(self)")
        }
    }
}

/// What a query may see and how scores are formed. Defaults: causal, no window, no softcap,
/// scale 1/√d.
public struct AttentionOptions: Equatable, Sendable {
    /// Query i sees no key after its own position i + Tk − Tq.
    public var causal: Bool
    /// Keys at most `windowLeft` positions before the query's position (nil: unlimited).
    public var windowLeft: Int?
    /// Keys at most `windowRight` positions after the query's position (nil: unlimited; causal
    /// already stops at 0).
    public var windowRight: Int?
    /// s = softcap · tanh(s / softcap) when > 0 (Gemma 2); 0 turns it off.
    public var softcap: Float
    /// Score scale; nil means 1/√d.
    public var scale: Float?

    public init(causal: Bool = true, windowLeft: Int? = nil, windowRight: Int? = nil,
                softcap: Float = 0, scale: Float? = nil) {
        self.causal = causal
        self.windowLeft = windowLeft
        self.windowRight = windowRight
        self.softcap = softcap
        self.scale = scale
    }

    public func resolvedScale(headDim: Int) -> Float { scale ?? 1 / Float(headDim).squareRoot() }

    public func validate(_ function: String) {
        if let l = windowLeft, l < 0 { fatalError("\(function): windowLeft must be ≥ 0 or nil, got \(l)") }
        if let r = windowRight, r < 0 { fatalError("\(function): windowRight must be ≥ 0 or nil, got \(r)") }
        if !(softcap >= 0) || !softcap.isFinite { fatalError("\(function): softcap must be finite and ≥ 0, got \(softcap)") }
        if let s = scale, !s.isFinite { fatalError("\(function): scale must be finite, got \(s)") }
    }
}

/// The visibility rule as a function of a query's absolute position (its index plus Tk − Tq):
/// the visible keys are `lower ..< upper`, clamped to `0 ..< keyLength`.
public struct AttentionMask: Sendable {
    public let keyLength: Int
    let left: Int      // Int.max: unlimited
    let right: Int     // Int.max: unlimited

    public init(options: AttentionOptions, keyLength: Int) {
        self.keyLength = keyLength
        left = options.windowLeft ?? Int.max
        var r = options.windowRight ?? Int.max
        if options.causal { r = Swift.min(r, 0) }
        right = r
    }

    /// Visible keys of the query at absolute position `position`, as [lower, upper) (empty when
    /// lower ≥ upper).
    @inline(__always) public func interval(position: Int) -> (lower: Int, upper: Int) {
        let lower = left == Int.max ? 0 : Swift.max(0, position - left)
        let upper = right == Int.max ? keyLength : Swift.max(0, Swift.min(keyLength, position + right + 1))
        return (Swift.min(lower, keyLength), upper)
    }

    @inline(__always) public func isVisible(position: Int, key: Int) -> Bool {
        let (lo, hi) = interval(position: position)
        return key >= lo && key < hi
    }
}

// MARK: - Shared numerics

/// Rounds up to a multiple of 16 floats (one SIMD vector): row widths the microkernels write.
@inline(__always) func paddedTo16(_ n: Int) -> Int { (n + 15) & ~15 }

/// Hands out work items 0..<n to the thread policy's workers one at a time, so a worker slowed by
/// other processes on a shared machine simply takes fewer items. Every item writes only its own
/// outputs, so the result does not depend on which worker ran it or on the worker count.
/// `makeScratch` runs once per worker.
func forEachItem<Scratch>(_ n: Int, makeScratch: () -> Scratch, _ body: (Int, Scratch) -> Void) {
    if n <= 0 { return }
    let queue = WorkQueue(count: n)
    let lanes = Swift.min(ZooThreads.count, n)
    withoutActuallyEscaping(makeScratch) { makeScratch in
        withoutActuallyEscaping(body) { body in
            let box = UncheckedSendable((makeScratch, body))
            ZooThreads.parallelFor(lanes) { _ in
                let scratch = box.value.0()
                while let item = queue.next() { box.value.1(item, scratch) }
            }
        }
    }
}

struct UncheckedSendable<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}

final class WorkQueue: @unchecked Sendable {
    private let lock = NSLock()
    private var nextItem = 0
    private let count: Int
    init(count: Int) { self.count = count }
    func next() -> Int? {
        lock.lock(); defer { lock.unlock() }
        if nextItem >= count { return nil }
        nextItem += 1
        return nextItem - 1
    }
}
