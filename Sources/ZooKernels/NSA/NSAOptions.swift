// NSA (native sparse attention, Yuan et al. 2025): options, shapes and the discrete block selection
// shared by the naive, fast and decode kernels. The algorithm is written out in README.md.
//
// Positions are 0-based. Keys run over 0..<Tk; the Tq queries are the last Tq positions
// (bottom-right aligned: query t sits at position p = t + Tk − Tq), so one API serves training
// (Tq = Tk), chunked prefill (Tq < Tk) and decoding (Tq = 1).
//
//   compressed block i   covers tokens [i·d, i·d + l), visible to p iff i·d + l − 1 ≤ p
//   selection block j    covers tokens [j·l′, (j + 1)·l′), visible to p iff j·l′ ≤ p
//   window               tokens [p − w + 1, p]

import ZooTensor

/// How compression-block probabilities become selection-block scores (paper Eq. 9).
public enum NSABlockScoreRule: String, Sendable, Codable, CaseIterable {
    /// score[j] = Σ_i p_cmp[i] · |tokens(i) ∩ tokens(j)| / d. This is Eq. 9 read with the paper's
    /// 1-based indices: compression block i is counted once for every stride-d slice it shares with
    /// selection block j (weights 1, 2, 2, 2, 1 for l = 32, d = 16, l′ = 64). The default.
    case overlapWeighted
    /// score[j] = Σ_i p_cmp[i] · [tokens(i) ∩ tokens(j) ≠ ∅]: every overlapping block counts once
    /// (the convention of ../shared/bench/ref_mixers.py, kept for side-by-side comparisons).
    case overlapIndicator
}

/// Sizes and switches of NSA. Defaults are the paper's: l = 32, d = 16, l′ = 64, n = 16, w = 512,
/// with 1 initial and 2 local blocks always selected (counted within the n).
public struct NSAOptions: Sendable, Equatable, Codable {
    /// l: tokens per compression block.
    public var compressBlock: Int = 32
    /// d: stride between compression blocks (blocks overlap when d < l).
    public var compressStride: Int = 16
    /// l′: tokens per selection block.
    public var selectBlock: Int = 64
    /// n: selection blocks per query (including the forced initial and local blocks).
    public var selectCount: Int = 16
    /// w: sliding-window length (query p sees p − w + 1 … p).
    public var window: Int = 512
    /// Blocks 0..<initialBlocks are always selected.
    public var initialBlocks: Int = 1
    /// The block holding p and the localBlocks − 1 blocks before it are always selected.
    public var localBlocks: Int = 2
    /// Eq. 9 reading; see `NSABlockScoreRule`.
    public var scoreRule: NSABlockScoreRule = .overlapWeighted
    /// Softmax scale of all three branches; nil means 1/√dk.
    public var scale: Float? = nil

    public init(compressBlock: Int = 32, compressStride: Int = 16, selectBlock: Int = 64, selectCount: Int = 16,
                window: Int = 512, initialBlocks: Int = 1, localBlocks: Int = 2,
                scoreRule: NSABlockScoreRule = .overlapWeighted, scale: Float? = nil) {
        self.compressBlock = compressBlock; self.compressStride = compressStride
        self.selectBlock = selectBlock; self.selectCount = selectCount; self.window = window
        self.initialBlocks = initialBlocks; self.localBlocks = localBlocks
        self.scoreRule = scoreRule; self.scale = scale
    }

    /// Number of compressed blocks over `keys` tokens: ⌊(T − l)/d⌋ + 1, or 0 when T < l.
    public func compressedCount(keys: Int) -> Int {
        keys < compressBlock ? 0 : (keys - compressBlock) / compressStride + 1
    }
    /// Number of selection blocks covering `keys` tokens (the last may be partial).
    public func selectionBlockCount(keys: Int) -> Int { (keys + selectBlock - 1) / selectBlock }
    /// Compressed blocks visible at position p (their last token ≤ p).
    @inline(__always) public func visibleCompressed(position p: Int) -> Int {
        p < compressBlock - 1 ? 0 : (p - compressBlock + 1) / compressStride + 1
    }
    public func softmaxScale(headDim: Int) -> Float { scale ?? 1 / Float(headDim).squareRoot() }

    /// Tokens one decode step reads at context length t (the token at t − 1 included): compressed
    /// entries + tokens of the selected blocks + window tokens, the paper's count for Table 4
    /// (⌊(t − l)/d⌋ + 1 + n·l′ + w once t is long). Exact, using the blocks actually visible.
    public func decodeTokensRead(context t: Int) -> Int {
        if t <= 0 { return 0 }
        let p = t - 1
        let blocks = p / selectBlock + 1
        let chosen = min(blocks, selectCount)
        // The block holding p is always chosen (it is local) and holds p % l′ + 1 visible tokens.
        let selectedTokens = (chosen - 1) * selectBlock + (p % selectBlock + 1)
        return compressedCount(keys: t) + selectedTokens + min(window, t)
    }

    func validate(_ op: String) {
        if compressBlock < 1 || compressStride < 1 || selectBlock < 1 || window < 1 {
            fatalError("\(op): block sizes and window must be ≥ 1 (l \(compressBlock), d \(compressStride), l′ \(selectBlock), w \(window))")
        }
        if initialBlocks < 0 || localBlocks < 1 || selectCount < initialBlocks + localBlocks {
            fatalError("\(op): need n ≥ initial + local blocks and ≥ 1 local block (n \(selectCount), initial \(initialBlocks), local \(localBlocks))")
        }
    }
}

/// The chosen selection blocks: for each (batch, kv head, query), up to n block indices in
/// ascending order, padded with −1. Shape [B, Hkv, Tq, n]. The discrete choice carries no gradient;
/// the backward takes it as given.
public struct NSASelection: Sendable, Equatable {
    public let batch: Int, kvHeads: Int, queries: Int, slots: Int
    public var indices: [Int32]

    public init(batch: Int, kvHeads: Int, queries: Int, slots: Int, indices: [Int32]) {
        if indices.count != batch * kvHeads * queries * slots {
            fatalError("NSASelection: \(indices.count) indices for shape [\(batch), \(kvHeads), \(queries), \(slots)]")
        }
        self.batch = batch; self.kvHeads = kvHeads; self.queries = queries; self.slots = slots
        self.indices = indices
    }
    public init(batch: Int, kvHeads: Int, queries: Int, slots: Int) {
        self.init(batch: batch, kvHeads: kvHeads, queries: queries, slots: slots,
                  indices: [Int32](repeating: -1, count: batch * kvHeads * queries * slots))
    }
    /// Blocks chosen for one query (ascending).
    public func blocks(batch b: Int, kvHead h: Int, query t: Int) -> [Int] {
        let base = ((b * kvHeads + h) * queries + t) * slots
        return (0..<slots).compactMap { indices[base + $0] >= 0 ? Int(indices[base + $0]) : nil }
    }
}

/// Overlap weight of compression block i with selection block j under `rule` (0 if disjoint).
@inline(__always)
func nsaOverlapWeight(_ i: Int, _ j: Int, _ o: NSAOptions) -> Float {
    let lo = max(i * o.compressStride, j * o.selectBlock)
    let hi = min(i * o.compressStride + o.compressBlock, (j + 1) * o.selectBlock)
    if hi <= lo { return 0 }
    return o.scoreRule == .overlapWeighted ? Float(hi - lo) / Float(o.compressStride) : 1
}

/// Eq. 9 as a block-major table: selection block j collects compression blocks
/// firstCompressed[j] ..< firstCompressed[j] + counts[j] with weights[offsets[j] + k]. Block-major so
/// each score accumulates in a register (a compression-block-major scatter `score[j] += …` was a
/// store-to-load dependency chain: 7 µs per query at T = 32k).
final class NSAScoreMap: @unchecked Sendable {
    let first, counts, offsets: UnsafeMutablePointer<Int32>
    let weights: UnsafeMutablePointer<Float>
    private let storage: [ScratchBuffer]

    init(blocks nb: Int, options o: NSAOptions) {
        var firstA = [Int32](repeating: 0, count: nb + 1), countA = firstA, offsetA = firstA
        var w: [Float] = []
        for j in 0..<nb {
            // Compression blocks i with [i·d, i·d + l) ∩ [j·l′, (j+1)·l′) ≠ ∅: a contiguous range.
            var i = max(0, (j * o.selectBlock - o.compressBlock + o.compressStride) / o.compressStride)
            while nsaOverlapWeight(i, j, o) == 0 && i * o.compressStride < (j + 1) * o.selectBlock { i += 1 }
            firstA[j] = Int32(i); offsetA[j] = Int32(w.count)
            while true {
                let weight = nsaOverlapWeight(i, j, o)
                if weight == 0 { break }
                w.append(weight); i += 1
            }
            countA[j] = Int32(w.count) - offsetA[j]
        }
        let ints = ScratchBuffer(count: 3 * (nb + 1), zeroed: false), floats = ScratchBuffer(count: max(w.count, 1))
        let base = UnsafeMutableRawPointer(ints.pointer).bindMemory(to: Int32.self, capacity: 3 * (nb + 1))
        first = base; counts = base + (nb + 1); offsets = base + 2 * (nb + 1)
        first.update(from: firstA, count: nb + 1); counts.update(from: countA, count: nb + 1); offsets.update(from: offsetA, count: nb + 1)
        weights = floats.pointer
        weights.update(from: w, count: w.count)
        storage = [ints, floats]
    }

    /// Block scores score[0...current] from pSum[0..<nv]; see `nsaBlockScores`.
    @inline(__always) func scores(pSum: UnsafePointer<Float>, visible nv: Int, current: Int, into out: UnsafeMutablePointer<Float>) {
        nsaBlockScores(pSum: pSum, visible: nv, current: current, first: first, counts: counts, offsets: offsets,
                       weights: weights, scores: out)
    }
}

/// Block scores score[0...current] from the kv group's summed compressed probabilities
/// pSum[0..<nv] (Eq. 9); entries beyond nv are not visible and count as 0.
@inline(__always)
func nsaBlockScores(pSum: UnsafePointer<Float>, visible nv: Int, current: Int, first: UnsafePointer<Int32>,
                    counts: UnsafePointer<Int32>, offsets: UnsafePointer<Int32>, weights: UnsafePointer<Float>,
                    scores: UnsafeMutablePointer<Float>) {
    for j in 0...current {
        let i0 = Int(first[j]), n = min(Int(counts[j]), nv - i0), w = weights + Int(offsets[j])
        if n <= 0 { scores[j] = 0; continue }
        // Summed in k order as a plain loop would (same bits, so the same top-n); unrolled because
        // n is ~5 at the defaults and the loop's branch cost more than its adds (perf, T = 32k).
        let p = pSum + i0
        var acc: Float = 0
        var k = 0
        while k + 4 <= n {
            acc += p[k] * w[k]; acc += p[k + 1] * w[k + 1]; acc += p[k + 2] * w[k + 2]; acc += p[k + 3] * w[k + 3]
            k += 4
        }
        while k < n { acc += p[k] * w[k]; k += 1 }
        scores[j] = acc
    }
}

/// Top-n selection for one query at position p from its block scores (scores[0...p/l′] are read).
/// Writes the chosen blocks in ascending order to `out` (n slots, −1 padded) and returns how many.
///
/// Rule: if at most n blocks are visible, all are chosen. Otherwise blocks j < initial and the
/// `local` blocks ending at p/l′ are forced; the rest are filled by score, higher first, and among
/// equal scores the lower block index first (so the choice is a function of the scores alone).
@inline(__always)
func nsaTopBlocks(scores: UnsafePointer<Float>, position p: Int, options o: NSAOptions,
                  out: UnsafeMutablePointer<Int32>) -> Int {
    let n = o.selectCount
    let current = p / o.selectBlock
    let visible = current + 1
    if visible <= n {
        for j in 0..<visible { out[j] = Int32(j) }
        for k in visible..<n { out[k] = -1 }
        return visible
    }
    let localStart = current - o.localBlocks + 1
    let initialEnd = min(o.initialBlocks, localStart)
    let free = n - initialEnd - o.localBlocks
    // Best `free` candidates in (score desc, index asc) order, kept by insertion in stack buffers
    // (this runs once per query and kv head, so no heap allocation here).
    return withUnsafeTemporaryAllocation(of: Float.self, capacity: max(free, 1)) { bestScore in
        withUnsafeTemporaryAllocation(of: Int32.self, capacity: max(free, 1)) { bestIndex in
            var filled = 0
            if free > 0 {
                for j in initialEnd..<localStart {
                    let s = scores[j]
                    if filled == free && !(s > bestScore[free - 1]) { continue }
                    var k = filled == free ? free - 1 : filled
                    while k > 0 && s > bestScore[k - 1] {
                        bestScore[k] = bestScore[k - 1]; bestIndex[k] = bestIndex[k - 1]; k -= 1
                    }
                    bestScore[k] = s; bestIndex[k] = Int32(j)
                    if filled < free { filled += 1 }
                }
            }
            // Free choices by ascending index (insertion sort of ≤ n entries).
            for a in 1..<max(filled, 1) {
                let x = bestIndex[a]
                var k = a
                while k > 0 && bestIndex[k - 1] > x { bestIndex[k] = bestIndex[k - 1]; k -= 1 }
                bestIndex[k] = x
            }
            var c = 0
            for j in 0..<initialEnd { out[c] = Int32(j); c += 1 }
            for k in 0..<filled { out[c] = bestIndex[k]; c += 1 }
            for j in localStart...current { out[c] = Int32(j); c += 1 }
            for k in c..<n { out[k] = -1 }
            return c
        }
    }
}

/// Top-n selection from a full score tensor [B, Hkv, Tq, nb] (nb = ⌈Tk/l′⌉), the discrete step on
/// its own. `keys` is Tk; query t sits at position t + Tk − Tq.
public func nsaSelectBlocks(scores: [Float], batch: Int, kvHeads: Int, queries: Int, keys: Int,
                            options: NSAOptions) -> NSASelection {
    options.validate("nsaSelectBlocks")
    let nb = options.selectionBlockCount(keys: keys)
    if scores.count != batch * kvHeads * queries * nb {
        fatalError("nsaSelectBlocks: scores hold \(scores.count) values, expected [B \(batch), Hkv \(kvHeads), Tq \(queries), nb \(nb)]")
    }
    var sel = NSASelection(batch: batch, kvHeads: kvHeads, queries: queries, slots: options.selectCount)
    let offset = keys - queries
    scores.withUnsafeBufferPointer { s in
        sel.indices.withUnsafeMutableBufferPointer { out in
            for row in 0..<(batch * kvHeads * queries) {
                let t = row % queries
                _ = nsaTopBlocks(scores: s.baseAddress! + row * nb, position: t + offset, options: options,
                                 out: out.baseAddress! + row * options.selectCount)
            }
        }
    }
    return sel
}

/// NSA's inputs (Float32, contiguous, canonical [B, T, H, D] layout). Branches may share K/V by
/// passing the same tensor twice (copy-on-write: no copy); their gradients come back separately.
///   q [B, Tq, Hq, dk]                  queries (shared by the three branches)
///   kCmp [B, Nc, Hkv, dk], vCmp [B, Nc, Hkv, dv]   compressed keys/values, Nc = ⌊(Tk − l)/d⌋ + 1
///   kSel, vSel [B, Tk, Hkv, dk|dv]     raw keys/values of the selected branch
///   kWin, vWin [B, Tk, Hkv, dk|dv]     raw keys/values of the sliding-window branch
///   gates [B, Tq, Hq, 3]               gate logits (compressed, selected, window)
public struct NSAInputs: @unchecked Sendable {
    public var q: Tensor, kCmp: Tensor, vCmp: Tensor, kSel: Tensor, vSel: Tensor, kWin: Tensor, vWin: Tensor, gates: Tensor

    public init(q: Tensor, kCmp: Tensor, vCmp: Tensor, kSel: Tensor, vSel: Tensor, kWin: Tensor, vWin: Tensor, gates: Tensor) {
        self.q = q; self.kCmp = kCmp; self.vCmp = vCmp; self.kSel = kSel; self.vSel = vSel
        self.kWin = kWin; self.vWin = vWin; self.gates = gates
    }

    public var batch: Int { q.shape[0] }
    public var queries: Int { q.shape[1] }
    public var queryHeads: Int { q.shape[2] }
    public var keyDim: Int { q.shape[3] }
    public var keys: Int { kSel.shape[1] }
    public var kvHeads: Int { kSel.shape[2] }
    public var valueDim: Int { vSel.shape[3] }
    public var compressed: Int { kCmp.shape[1] }

    /// Checks every shape against q and kSel; the message names the function and the shapes.
    func validate(_ op: String, _ o: NSAOptions) {
        o.validate(op)
        func fail(_ why: String) -> Never {
            fatalError("\(op): \(why) (q \(q.shape), kCmp \(kCmp.shape), vCmp \(vCmp.shape), kSel \(kSel.shape), vSel \(vSel.shape), kWin \(kWin.shape), vWin \(vWin.shape), gates \(gates.shape))")
        }
        for t in [q, kCmp, vCmp, kSel, vSel, kWin, vWin, gates] where t.rank != 4 { fail("every input must have rank 4") }
        let B = batch, Tq = queries, Hq = queryHeads, dk = keyDim, Tk = keys, Hk = kvHeads, dv = valueDim
        if Hk < 1 || Hq % Hk != 0 { fail("query heads \(Hq) must be a multiple of kv heads \(Hk)") }
        if Tq > Tk { fail("more queries (\(Tq)) than keys (\(Tk))") }
        let Nc = o.compressedCount(keys: Tk)
        if kSel.shape != [B, Tk, Hk, dk] || kWin.shape != [B, Tk, Hk, dk] { fail("kSel and kWin must be [B, Tk, Hkv, dk]") }
        if vSel.shape != [B, Tk, Hk, dv] || vWin.shape != [B, Tk, Hk, dv] { fail("vSel and vWin must be [B, Tk, Hkv, dv]") }
        if kCmp.shape != [B, Nc, Hk, dk] || vCmp.shape != [B, Nc, Hk, dv] {
            fail("kCmp/vCmp must be [B, Nc = \(Nc), Hkv, dk|dv] for Tk = \(Tk), l = \(o.compressBlock), d = \(o.compressStride)")
        }
        if gates.shape != [B, Tq, Hq, 3] { fail("gates must be [B, Tq, Hq, 3]") }
    }
}
