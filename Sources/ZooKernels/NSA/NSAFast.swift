// NSA fast kernels: forward and backward that touch only the compressed keys, the selected blocks
// and the window, so the work per query is O(Tk/d + n·l′ + w), not O(Tk).
//
// Shapes as in NSANaive.swift: q [B, Tq, Hq, dk]; kCmp, vCmp [B, Nc, Hkv, dk|dv]; kSel, vSel, kWin,
// vWin [B, Tk, Hkv, dk|dv]; gates [B, Tq, Hq, 3] (logits); output [B, Tq, Hq, dv]. Saved for the
// backward: the three branch outputs [3, B, Tq, Hq, dv], their log-sum-exps [3, B, Tq, Hq] and the
// selection [B, Hkv, Tq, n].
//
// Forward, per (batch, kv head, chunk of queries); a GQA group's G query heads travel together as
// G consecutive rows, so one sgemm serves the whole group:
//   1. compressed: S = Q Kcmpᵀ over the visible compressed keys (exact softmax per row, rows are
//      short: ≤ Tk/d); O = P Vcmp. The group's probabilities are summed and mapped to
//      selection-block scores (Eq. 9), then top-n picks the blocks (unless a selection is given).
//   2. selected: the chunk's (query, block) pairs are inverted into per-block row lists; for each
//      block in ascending order, the rows that chose it are gathered, S = Q K_blockᵀ and P V by
//      sgemm, with an online softmax across blocks (the causal cut only bites in the query's own
//      block).
//   3. window: query tiles against the band of keys they need, online softmax.
//   4. o = Σ_c σ(g_c) o_c.
// Backward (selection fixed), with D_c = σ(g_c)·⟨dO, o_c⟩, dO_c = σ(g_c)·dO, dg_c = σ′(g_c)⟨dO, o_c⟩:
//   queries are split into parts (a count fixed by the shapes); each part runs its chunks as the
//   forward does and, from the same P and dS tiles, accumulates dQ (owned) and dK/dV into private
//   buffers for the keys it reaches; the parts are summed in part order, so no result depends on
//   the thread count.

import Foundation
import ZooTensor

/// Everything the backward needs from the forward.
public struct NSAForwardResult: @unchecked Sendable {
    /// o = Σ_c σ(g_c) o_c, [B, Tq, Hq, dv].
    public var output: Tensor
    /// The blocks the selected branch used, [B, Hkv, Tq, n].
    public var selection: NSASelection
    /// o_cmp, o_sel, o_win stacked: [3, B, Tq, Hq, dv].
    public var branchOutputs: Tensor
    /// Log-sum-exp of each branch's softmax, [3, B, Tq, Hq] (a query's heads adjacent, as the
    /// backward reads them); −inf where a branch sees no key.
    public var logSumExp: Tensor
}

/// Gradients of sum(output · dOutput) with respect to each input, same shapes as the inputs.
public struct NSAGradients: @unchecked Sendable {
    public var q: Tensor, kCmp: Tensor, vCmp: Tensor, kSel: Tensor, vSel: Tensor, kWin: Tensor, vWin: Tensor, gates: Tensor
}

// MARK: - Shapes, pointers and scratch

/// Sizes of one call and the tiling derived from them (a function of the shapes only, never of
/// the thread count, so results are the same on any machine).
struct NSAPlan {
    let B: Int, Tq: Int, Tk: Int, Hq: Int, Hk: Int, G: Int, dk: Int, dv: Int, Nc: Int, nb: Int, off: Int
    let o: NSAOptions
    let scale: Float
    /// Queries per work item of the query passes.
    let chunk: Int
    /// Floats of one score buffer; every tile below is sized to fit it.
    let scoreCapacity: Int
    /// Queries per window tile, and keys per window pass.
    let windowTile: Int, windowKeys: Int

    init(_ x: NSAInputs, _ o: NSAOptions) {
        B = x.batch; Tq = x.queries; Tk = x.keys; Hq = x.queryHeads; Hk = x.kvHeads; G = Hq / Hk
        dk = x.keyDim; dv = x.valueDim; Nc = o.compressedCount(keys: Tk); nb = o.selectionBlockCount(keys: Tk)
        off = Tk - Tq; self.o = o; scale = o.softmaxScale(headDim: dk)
        // Larger chunks give the selected branch taller gathered tiles (more rows per block);
        // smaller ones more work items. 256 queries keeps a chunk's accumulators near 256 KB.
        chunk = max(1, min(Tq, 256))
        let rows = chunk * G
        // 32 queries × G rows: the band S computes is w + 31 keys wide for w useful ones.
        windowTile = max(1, min(chunk, 32))
        // 512 KB of scores: a compressed tile's S then stays in L2 through its max, exp, scale and
        // P·V passes (1 MB measured ~4 % slower at T = 32768), and w + 31 window keys still fit one
        // pass at the defaults.
        scoreCapacity = max(1 << 17, rows * o.selectBlock, G * max(Nc, 1),
                            windowTile * G * 16)
        windowKeys = max(16, scoreCapacity / (windowTile * G))
    }

    /// Query parts of the backward: as many as a 64 MB budget of private key-gradient buffers
    /// allows (the selected branch's reach the whole prefix), at least 4 work items, at most one
    /// per chunk. A function of the shapes only, so results never depend on the thread count.
    var backwardParts: Int {
        let perPart = max(1, Tk * (dk + dv) * 4 * B * Hk)
        var parts = max(1, min(chunks, (64 << 20) / perPart))
        if B * Hk * parts < 4 { parts = min(chunks, (4 + B * Hk - 1) / (B * Hk)) }
        return parts
    }

    @inline(__always) func position(_ t: Int) -> Int { t + off }
    var chunks: Int { (Tq + chunk - 1) / chunk }
    /// Compressed-branch query tile: as many queries as fit the score buffer at this width.
    func cmpTile(visible: Int) -> Int { max(1, scoreCapacity / (G * max(visible, 1))) }
}

/// A branch's keys or values transposed per (batch, kv head) and cut into blocks of 64 keys:
/// [B, T, H, D] → [B, H, ⌈T/64⌉, D, 64], so that S = q·Kᵀ and dP = dO·Vᵀ are NN products whose
/// right operand has row stride 64 (see NSAKeyPanel in NSATiles.swift for why that matters).
final class NSATransposed: @unchecked Sendable {
    private let buffer: ScratchBuffer
    let pointer: UnsafeMutablePointer<Float>
    let heads: Int, dim: Int, blocksPerHead: Int

    init(_ x: Tensor) {
        let B = x.shape[0], T = x.shape[1], H = x.shape[2], D = x.shape[3]
        let block = nsaKeyBlock, blocks = (T + block - 1) / block
        heads = H; dim = D; blocksPerHead = blocks
        buffer = ScratchBuffer(count: max(1, B * H * blocks * D * block), zeroed: false)
        pointer = buffer.pointer
        let src = SendablePointer(UnsafeMutablePointer(mutating: x.pointer)), dst = SendablePointer(buffer.pointer)
        ZooThreads.parallelFor(B * H * blocks, minChunk: 8) { range in
            for item in range {
                let bh = item / blocks, blk = item % blocks, t0 = blk * block, t1 = min(T, t0 + block)
                let b = bh / H, h = bh % H
                // 16×16 register transposes (transposeRows, AttentionMath.swift): ~4× a scalar scatter.
                transposeRows(t1 - t0, D, row: { UnsafePointer(src.pointer + ((b * T + t0 + $0) * H + h) * D) },
                              into: dst.pointer + item * D * block, ldd: block)
            }
        }
        withExtendedLifetime(x) {}
    }

    /// The keys of (b, h) from key `first` on.
    @inline(__always) func panel(_ b: Int, _ h: Int, from first: Int = 0) -> NSAKeyPanel {
        NSAKeyPanel(blocks: UnsafePointer(pointer + (b * heads + h) * blocksPerHead * dim * nsaKeyBlock), dim: dim, first: first)
    }
}

/// Raw pointers of one call, passed into the parallel workers.
struct NSAPointers: @unchecked Sendable {
    let q, kc, vc, ks, vs, kw, vw, gates: UnsafePointer<Float>
    /// Transposed keys (and, in the backward, values) of each branch; see NSATransposed.
    let kcT, ksT, kwT: NSATransposed
    let vcT, vsT, vwT: NSATransposed?
    init(_ x: NSAInputs, transposeValues: Bool) {
        q = x.q.pointer; kc = x.kCmp.pointer; vc = x.vCmp.pointer; ks = x.kSel.pointer; vs = x.vSel.pointer
        kw = x.kWin.pointer; vw = x.vWin.pointer; gates = x.gates.pointer
        // Branches that share a tensor share its transposed copy.
        kcT = NSATransposed(x.kCmp)
        ksT = NSATransposed(x.kSel)
        kwT = x.kWin.storage === x.kSel.storage ? ksT : NSATransposed(x.kWin)
        if transposeValues {
            let vcT = NSATransposed(x.vCmp), vsT = NSATransposed(x.vSel)
            self.vcT = vcT; self.vsT = vsT
            vwT = x.vWin.storage === x.vSel.storage ? vsT : NSATransposed(x.vWin)
        } else {
            vcT = nil; vsT = nil; vwT = nil
        }
    }
}

/// Work memory of one worker (counted by MemoryMeter through ScratchBuffer).
final class NSAScratch {
    private let buffers: [ScratchBuffer]
    let qp, qg, acc, pv, dOp, dq, m, l, alpha, mg, lg, lseg, deltag, s, dp, pSum, scoreRow: UnsafeMutablePointer<Float>
    let lo, hi, rowIndex, counts, starts, entries: UnsafeMutablePointer<Int32>

    init(_ plan: NSAPlan, backward: Bool) {
        let rows = plan.chunk * plan.G
        var owned: [ScratchBuffer] = []
        func floats(_ n: Int) -> UnsafeMutablePointer<Float> {
            let b = ScratchBuffer(count: n + 16, zeroed: false)
            owned.append(b)
            return b.pointer
        }
        func ints(_ n: Int) -> UnsafeMutablePointer<Int32> {
            let b = ScratchBuffer(count: n + 16, zeroed: false)
            owned.append(b)
            return UnsafeMutableRawPointer(b.pointer).bindMemory(to: Int32.self, capacity: n + 16)
        }
        qp = floats(rows * plan.dk); qg = floats(rows * plan.dk)
        acc = floats(rows * plan.dv); pv = floats(rows * max(plan.dv, plan.dk))
        m = floats(rows); l = floats(rows); alpha = floats(rows); mg = floats(rows); lg = floats(rows)
        lseg = floats(rows); deltag = floats(rows)
        s = floats(plan.scoreCapacity)
        dp = backward ? floats(plan.scoreCapacity) : s
        dOp = backward ? floats(rows * plan.dv) : acc
        dq = backward ? floats(rows * plan.dk) : qg
        pSum = floats(plan.Nc)
        scoreRow = floats(plan.nb)
        lo = ints(rows); hi = ints(rows); rowIndex = ints(rows)
        counts = ints(plan.nb + 1); starts = ints(plan.nb + 1); entries = ints(plan.chunk * plan.o.selectCount)
        buffers = owned
    }
}

/// Runs `worker` on each of the pool's threads; each call pulls item indices from a shared counter
/// until none are left (dynamic scheduling: the items have very uneven costs). Every item is
/// computed whole by one worker, so the results do not depend on the thread count.
func nsaParallelWorkers(items n: Int, _ worker: (_ next: () -> Int?) -> Void) {
    if n <= 0 { return }
    final class Counter: @unchecked Sendable {
        let lock = NSLock()
        var next = 0
        func take(_ n: Int) -> Int? { lock.lock(); defer { lock.unlock() }; if next >= n { return nil }; next += 1; return next - 1 }
    }
    let counter = Counter()
    let workers = ZooThreads.insideParallelRegion ? 1 : min(ZooThreads.count, n)
    ZooThreads.parallelFor(workers) { range in
        for _ in range { worker { counter.take(n) } }
    }
}

/// Copies the G rows of query t (kv head hk) scaled by `scale` into dst [G, dk].
@inline(__always)
func nsaPackQueryRows(_ plan: NSAPlan, _ q: UnsafePointer<Float>, b: Int, hk: Int, t: Int,
                      scale: Float, into dst: UnsafeMutablePointer<Float>) {
    let src = q + ((b * plan.Tq + t) * plan.Hq + hk * plan.G) * plan.dk
    let n = plan.G * plan.dk
    let sc = F16(repeating: scale)
    var i = 0
    while i + 16 <= n { store16(dst + i, load16(src + i) * sc); i += 16 }
    while i < n { dst[i] = src[i] * scale; i += 1 }
}

/// Writes the CSR inversion of a range of queries' selections: for each block j, the queries
/// (relative to t0, ascending) that chose it. Returns the largest block index seen (−1 if none).
@inline(__always)
func nsaInvertSelection(_ plan: NSAPlan, selection: UnsafePointer<Int32>, t0: Int, t1: Int,
                        counts: UnsafeMutablePointer<Int32>, starts: UnsafeMutablePointer<Int32>,
                        entries: UnsafeMutablePointer<Int32>) -> Int {
    let n = plan.o.selectCount
    var jMax = -1
    for t in t0..<t1 {
        for k in 0..<n {
            let j = Int(selection[t * n + k])
            if j < 0 { break }
            if j > jMax { jMax = j }
        }
    }
    if jMax < 0 { return -1 }
    counts.update(repeating: 0, count: jMax + 1)
    for t in t0..<t1 {
        for k in 0..<n { let j = Int(selection[t * n + k]); if j < 0 { break }; counts[j] += 1 }
    }
    var run: Int32 = 0
    for j in 0...jMax { starts[j] = run; run += counts[j] }
    for j in 0...jMax { counts[j] = starts[j] }       // reuse as fill cursors
    for t in t0..<t1 {
        for k in 0..<n {
            let j = Int(selection[t * n + k]); if j < 0 { break }
            entries[Int(counts[j])] = Int32(t - t0); counts[j] += 1
        }
    }
    for j in 0...jMax { counts[j] -= starts[j] }       // back to counts
    return jMax
}

// MARK: - Forward

/// NSA forward (fast). With `selection` nil the blocks are chosen here by top-n on the compressed
/// branch's probabilities; a given selection is used as is (the gradient checks fix it).
public func nsaForward(_ x: NSAInputs, options o: NSAOptions = NSAOptions(), selection given: NSASelection? = nil) -> NSAForwardResult {
    x.validate("nsaForward", o)
    let plan = NSAPlan(x, o)
    if let g = given, g.batch != plan.B || g.kvHeads != plan.Hk || g.queries != plan.Tq || g.slots != o.selectCount {
        fatalError("nsaForward: selection shape [\(g.batch), \(g.kvHeads), \(g.queries), \(g.slots)] does not match [B \(plan.B), Hkv \(plan.Hk), Tq \(plan.Tq), n \(o.selectCount)]")
    }
    var output = Tensor(uninitializedShape: [plan.B, plan.Tq, plan.Hq, plan.dv])
    if plan.Tq == 0 {
        return NSAForwardResult(output: output, selection: NSASelection(batch: plan.B, kvHeads: plan.Hk, queries: 0, slots: o.selectCount),
                                branchOutputs: Tensor.zeros([3, plan.B, 0, plan.Hq, plan.dv]), logSumExp: Tensor.zeros([3, plan.B, 0, plan.Hq]))
    }
    var branches = Tensor(uninitializedShape: [3, plan.B, plan.Tq, plan.Hq, plan.dv])
    var lse = Tensor(uninitializedShape: [3, plan.B, plan.Tq, plan.Hq])
    var selection = given ?? NSASelection(batch: plan.B, kvHeads: plan.Hk, queries: plan.Tq, slots: o.selectCount)
    let ptr = NSAPointers(x, transposeValues: false)
    let out = SendablePointer(output.mutablePointer()), br = SendablePointer(branches.mutablePointer())
    let ls = SendablePointer(lse.mutablePointer())
    let scoreMap = NSAScoreMap(blocks: plan.nb, options: o)
    let groups = plan.B * plan.Hk, chunks = plan.chunks
    selection.indices.withUnsafeMutableBufferPointer { selBuf in
        let sel = SendablePointer(selBuf.baseAddress!)
        do {
                let map = scoreMap
                nsaParallelWorkers(items: groups * chunks) { next in
                    let w = NSAScratch(plan, backward: false)
                    while let item = next() {
                        // Later chunks first: they see more compressed keys (longest jobs first).
                        let bh = item % groups, c = chunks - 1 - item / groups
                        nsaForwardChunk(plan, ptr, w, b: bh / plan.Hk, hk: bh % plan.Hk, chunk: c,
                                        selection: sel.pointer + bh * plan.Tq * o.selectCount, choose: given == nil,
                                        map: map, out: out.pointer, branches: br.pointer, lse: ls.pointer)
                    }
                }
        }
    }
    withExtendedLifetime(x) {}
    return NSAForwardResult(output: output, selection: selection, branchOutputs: branches, logSumExp: lse)
}

func nsaForwardChunk(_ plan: NSAPlan, _ x: NSAPointers, _ w: NSAScratch, b: Int, hk: Int, chunk c: Int,
                     selection: UnsafeMutablePointer<Int32>, choose: Bool,
                     map: NSAScoreMap, out: UnsafeMutablePointer<Float>, branches: UnsafeMutablePointer<Float>, lse: UnsafeMutablePointer<Float>) {
    let o = plan.o, G = plan.G, dk = plan.dk, dv = plan.dv, Hk = plan.Hk
    let t0 = c * plan.chunk, t1 = min(plan.Tq, t0 + plan.chunk), nq = t1 - t0, M = nq * G
    let branchStride = plan.B * plan.Tq * plan.Hq * dv, lseStride = plan.B * plan.Hq * plan.Tq
    for t in t0..<t1 { nsaPackQueryRows(plan, x.q, b: b, hk: hk, t: t, scale: plan.scale, into: w.qp + (t - t0) * G * dk) }
    let rows = NSARows(count: 0, lo: w.lo, hi: w.hi)

    // Stores finished rows (acc / ℓ, lse) of branch `branch` for queries ta..<tb from packed buffers.
    func finish(branch: Int, ta: Int, tb: Int, acc: UnsafeMutablePointer<Float>, m: UnsafePointer<Float>,
                l: UnsafePointer<Float>, rowOf: (Int) -> Int) {
        for t in ta..<tb {
            for g in 0..<G {
                let r = rowOf((t - ta) * G + g)
                let h = hk * G + g
                let dst = branches + branch * branchStride + ((b * plan.Tq + t) * plan.Hq + h) * dv
                let lsePtr = lse + branch * lseStride + (b * plan.Tq + t) * plan.Hq + h
                if l[r] > 0 {
                    let inv = 1 / l[r]
                    for e in 0..<dv { dst[e] = acc[r * dv + e] * inv }
                    lsePtr.pointee = m[r] + log(l[r])
                } else {
                    dst.update(repeating: 0, count: dv)
                    lsePtr.pointee = -.infinity
                }
            }
        }
    }

    // 1. Compressed branch, exact softmax per row, and the selection that follows from it.
    let vcBase = x.vc + (b * plan.Nc * Hk + hk) * dv
    let nvLast = o.visibleCompressed(position: plan.position(t1 - 1))
    let tile = plan.cmpTile(visible: nvLast)
    var ta = t0
    while ta < t1 {
        let tb = min(t1, ta + tile), rowsT = (tb - ta) * G
        let nk = o.visibleCompressed(position: plan.position(tb - 1))
        let s = w.s
        if nk > 0 {
            nsaTileScores(rows: rowsT, keys: nk, dk: dk, q: w.qp + (ta - t0) * G * dk, kt: x.kcT.panel(b, hk), s: s)
            for r in 0..<rowsT {
                let nv = o.visibleCompressed(position: plan.position(ta + r / G))
                let row = s + r * nk
                if nv == 0 { row.update(repeating: 0, count: nk); w.m[r] = -.infinity; w.l[r] = 0; continue }
                let mx = Lanes.max(row, nv)
                let sum = nsaExpRow(row, count: nk, lo: 0, hi: nv, shift: mx)
                simdScale(row, 1 / sum, nv)   // normalised: these are p_cmp, also for Eq. 9
                w.m[r] = mx; w.l[r] = sum
            }
            nsaGemm(m: rowsT, n: dv, k: nk, a: s, lda: nk, b: vcBase, ldb: Hk * dv, c: w.acc, ldc: dv)
            // acc already holds P V with P normalised; finish() divides by ℓ, so pass ℓ = 1 rows.
            for r in 0..<rowsT where w.l[r] > 0 { w.m[r] += log(w.l[r]); w.l[r] = 1 }
        } else {
            for r in 0..<rowsT { w.m[r] = -.infinity; w.l[r] = 0 }
        }
        finish(branch: 0, ta: ta, tb: tb, acc: w.acc, m: w.m, l: w.l, rowOf: { $0 })
        if choose {
            for t in ta..<tb {
                let p = plan.position(t)
                let current = p / o.selectBlock
                let selRow = selection + t * o.selectCount
                if current + 1 <= o.selectCount {
                    _ = nsaTopBlocks(scores: w.scoreRow, position: p, options: o, out: selRow)
                    continue
                }
                // Group importance: sum the G heads' probabilities, then gather per block (Eq. 9–10).
                let nv = o.visibleCompressed(position: p)
                if nv > 0 {
                    let base = s + (t - ta) * G * nk
                    w.pSum.update(from: base, count: nv)
                    for g in 1..<max(G, 1) { simdAxpy(1, base + g * nk, w.pSum, nv) }
                }
                map.scores(pSum: w.pSum, visible: nv, current: current, into: w.scoreRow)
                _ = nsaTopBlocks(scores: w.scoreRow, position: p, options: o, out: selRow)
            }
        }
        ta = tb
    }

    // 2. Selected branch: per block, the rows that chose it, online softmax across blocks.
    let jMax = nsaInvertSelection(plan, selection: selection, t0: t0, t1: t1, counts: w.counts, starts: w.starts, entries: w.entries)
    w.m.update(repeating: -.infinity, count: M); w.l.update(repeating: 0, count: M); w.acc.update(repeating: 0, count: M * dv)
    if jMax >= 0 {
        for j in 0...jMax where w.counts[j] > 0 {
            let key0 = j * o.selectBlock, nk = min(o.selectBlock, plan.Tk - key0)
            var r = 0
            for e in Int(w.starts[j]) ..< Int(w.starts[j] + w.counts[j]) {
                let tl = Int(w.entries[e])
                let hiKey = Int32(min(nk, plan.position(t0 + tl) - key0 + 1))
                for g in 0..<G {
                    let R = tl * G + g
                    (w.qg + r * dk).update(from: w.qp + R * dk, count: dk)
                    w.rowIndex[r] = Int32(R); w.lo[r] = 0; w.hi[r] = hiKey
                    w.mg[r] = w.m[R]; w.lg[r] = w.l[R]
                    r += 1
                }
            }
            var rs = rows; rs.count = r
            nsaTileScores(rows: r, keys: nk, dk: dk, q: w.qg, kt: x.ksT.panel(b, hk, from: key0), s: w.s)
            nsaOnlineRows(rows: rs, keys: nk, s: w.s, m: w.mg, l: w.lg, alpha: w.alpha)
            nsaGemm(m: r, n: dv, k: nk, a: w.s, lda: nk, b: x.vs + ((b * plan.Tk + key0) * Hk + hk) * dv, ldb: Hk * dv,
                    c: w.pv, ldc: dv)
            for i in 0..<r {
                let R = Int(w.rowIndex[i])
                let a = F16(repeating: w.alpha[i])
                let dst = w.acc + R * dv, src = w.pv + i * dv
                var e = 0
                while e + 16 <= dv { store16(dst + e, load16(src + e).addingProduct(a, load16(dst + e))); e += 16 }
                while e < dv { dst[e] = src[e] + w.alpha[i] * dst[e]; e += 1 }
                w.m[R] = w.mg[i]; w.l[R] = w.lg[i]
            }
        }
    }
    finish(branch: 1, ta: t0, tb: t1, acc: w.acc, m: w.m, l: w.l, rowOf: { $0 })

    // 3. Sliding window: query tiles against their band of keys.
    ta = t0
    while ta < t1 {
        let tb = min(t1, ta + plan.windowTile), rowsT = (tb - ta) * G
        let kLo = max(0, plan.position(ta) - o.window + 1), kHi = plan.position(tb - 1) + 1
        w.m.update(repeating: -.infinity, count: rowsT); w.l.update(repeating: 0, count: rowsT)
        w.acc.update(repeating: 0, count: rowsT * dv)
        var k0 = kLo
        while k0 < kHi {
            let k1 = min(kHi, k0 + plan.windowKeys)
            for r in 0..<rowsT {
                let p = plan.position(ta + r / G)
                let a = max(k0, p - o.window + 1), e = min(k1, p + 1)
                w.lo[r] = Int32(max(0, a - k0)); w.hi[r] = Int32(max(a, e) - k0)
            }
            var rs = rows; rs.count = rowsT
            nsaTileForward(rows: rs, keys: k1 - k0, dk: dk, dv: dv, q: w.qp + (ta - t0) * G * dk,
                           kt: x.kwT.panel(b, hk, from: k0),
                           v: x.vw + ((b * plan.Tk + k0) * Hk + hk) * dv, ldv: Hk * dv,
                           s: w.s, m: w.m, l: w.l, alpha: w.alpha, acc: w.acc, ldacc: dv)
            k0 = k1
        }
        finish(branch: 2, ta: ta, tb: tb, acc: w.acc, m: w.m, l: w.l, rowOf: { $0 })
        ta = tb
    }

    // 4. Gates.
    for t in t0..<t1 {
        for g in 0..<G {
            let row = (b * plan.Tq + t) * plan.Hq + hk * G + g
            let dst = out + row * dv
            let s0 = 1 / (1 + exp(-x.gates[row * 3])), s1 = 1 / (1 + exp(-x.gates[row * 3 + 1]))
            let s2 = 1 / (1 + exp(-x.gates[row * 3 + 2]))
            let o0 = branches + row * dv, o1 = o0 + branchStride, o2 = o1 + branchStride
            for e in 0..<dv { dst[e] = s0 * o0[e] + s1 * o1[e] + s2 * o2[e] }
        }
    }
}

// MARK: - Backward

/// Where one query part accumulates its key-side gradients: private buffers for the keys its
/// queries can reach, summed over the parts (in part order) once every part is done.
///   compressed: rows 0 ..< cmpRows;  selected: rows 0 ..< selRows;  window: rows winLo ..< winLo + winRows.
final class NSAKeyPartials: @unchecked Sendable {
    let cmpRows: Int, selRows: Int, winLo: Int, winRows: Int
    let kc, vc, ks, vs, kw, vw: UnsafeMutablePointer<Float>
    private let buffers: [ScratchBuffer]

    init(_ plan: NSAPlan, firstQuery t0: Int, lastQuery t1: Int) {
        let o = plan.o, dk = plan.dk, dv = plan.dv
        let pFirst = plan.position(t0), pLast = plan.position(t1)
        cmpRows = o.visibleCompressed(position: pLast)
        selRows = min(plan.Tk, (pLast / o.selectBlock + 1) * o.selectBlock)
        winLo = max(0, pFirst - o.window + 1)
        winRows = pLast + 1 - winLo
        var owned: [ScratchBuffer] = []
        func zeros(_ n: Int) -> UnsafeMutablePointer<Float> { let b = ScratchBuffer(count: max(n, 1)); owned.append(b); return b.pointer }
        kc = zeros(cmpRows * dk); vc = zeros(cmpRows * dv)
        ks = zeros(selRows * dk); vs = zeros(selRows * dv)
        kw = zeros(winRows * dk); vw = zeros(winRows * dv)
        buffers = owned
    }
}

/// NSA backward (fast) with the forward's selection fixed: gradients of sum(output · dOutput).
///
/// Queries are split into parts (a number fixed by the shapes and a memory budget, never by the
/// thread count). A part runs its chunks like the forward and, from the same P and dS tiles,
/// accumulates dQ (which it owns) and dK/dV into private buffers for the keys it reaches; the
/// parts' buffers are then summed in part order. Five products per (query row, key) — the two
/// separate passes a single owner per dK row would need cost seven.
public func nsaBackward(_ x: NSAInputs, forward f: NSAForwardResult, outputGradient dOut: Tensor,
                        options o: NSAOptions = NSAOptions()) -> NSAGradients {
    x.validate("nsaBackward", o)
    let plan = NSAPlan(x, o)
    let B = plan.B, Tq = plan.Tq, Hq = plan.Hq, Hk = plan.Hk, dk = plan.dk, dv = plan.dv
    if dOut.shape != [B, Tq, Hq, dv] { fatalError("nsaBackward: dOutput \(dOut.shape) must be [B, Tq, Hq, dv] = \([B, Tq, Hq, dv])") }
    if f.branchOutputs.shape != [3, B, Tq, Hq, dv] || f.logSumExp.shape != [3, B, Tq, Hq]
        || f.selection.indices.count != B * Hk * Tq * o.selectCount {
        fatalError("nsaBackward: forward result does not match the inputs (branchOutputs \(f.branchOutputs.shape), logSumExp \(f.logSumExp.shape))")
    }
    var gq = Tensor(uninitializedShape: x.q.shape)
    var gkc = Tensor.zeros(x.kCmp.shape), gvc = Tensor.zeros(x.vCmp.shape)
    var gks = Tensor.zeros(x.kSel.shape), gvs = Tensor.zeros(x.vSel.shape)
    var gkw = Tensor.zeros(x.kWin.shape), gvw = Tensor.zeros(x.vWin.shape)
    var gg = Tensor(uninitializedShape: x.gates.shape)
    if Tq == 0 { return NSAGradients(q: gq, kCmp: gkc, vCmp: gvc, kSel: gks, vSel: gvs, kWin: gkw, vWin: gvw, gates: gg) }
    let ptr = NSAPointers(x, transposeValues: true)
    let rowsTotal = B * Tq * Hq
    // σ(g) [B, Tq, Hq, 3] and δ_c = σ(g_c)·⟨dO, o_c⟩ [3, B, Tq, Hq]; dg_c = σ(1 − σ)·⟨dO, o_c⟩.
    let sigmaBuf = ScratchBuffer(count: rowsTotal * 3, zeroed: false), deltaBuf = ScratchBuffer(count: rowsTotal * 3, zeroed: false)
    let sigma = SendablePointer(sigmaBuf.pointer), delta = SendablePointer(deltaBuf.pointer)
    let ggP = SendablePointer(gg.mutablePointer())
    let dO = SendablePointer(UnsafeMutablePointer(mutating: dOut.pointer))
    let brP = SendablePointer(UnsafeMutablePointer(mutating: f.branchOutputs.pointer))
    let lseP = SendablePointer(UnsafeMutablePointer(mutating: f.logSumExp.pointer))
    let branchStride = rowsTotal * dv
    ZooThreads.parallelFor(rowsTotal, minChunk: 256) { range in
        for row in range {
            for c in 0..<3 {
                let sg = 1 / (1 + exp(-ptr.gates[row * 3 + c]))
                let dot = Lanes.dot(dO.pointer + row * dv, brP.pointer + c * branchStride + row * dv, dv)
                sigma[row * 3 + c] = sg
                ggP[row * 3 + c] = sg * (1 - sg) * dot
                delta[c * rowsTotal + row] = sg * dot
            }
        }
    }
    let ctx = NSABackwardContext(plan: plan, x: ptr, dO: dO.pointer, sigma: sigma.pointer, delta: delta.pointer,
                                 lse: lseP.pointer)
    let groups = B * Hk, parts = plan.backwardParts, chunks = plan.chunks
    func partChunks(_ p: Int) -> Range<Int> { (chunks * p / parts) ..< (chunks * (p + 1) / parts) }
    var partials: [NSAKeyPartials] = []
    for _ in 0..<groups {
        for p in 0..<parts {
            let cs = partChunks(p)
            partials.append(NSAKeyPartials(plan, firstQuery: cs.lowerBound * plan.chunk, lastQuery: min(Tq, cs.upperBound * plan.chunk) - 1))
        }
    }

    let gqP = SendablePointer(gq.mutablePointer())
    f.selection.indices.withUnsafeBufferPointer { selBuf in
        let sel = SendablePointer(UnsafeMutablePointer(mutating: selBuf.baseAddress!))
        partials.withUnsafeBufferPointer { partBuf in
            nsaParallelWorkers(items: groups * parts) { next in
                let w = NSAScratch(plan, backward: true)
                while let item = next() {
                    // Later parts first: they reach more compressed keys (longest jobs first).
                    let bh = item % groups, p = parts - 1 - item / groups
                    for c in partChunks(p) {
                        nsaBackwardChunk(ctx, w, b: bh / Hk, hk: bh % Hk, chunk: c, selection: sel.pointer + bh * Tq * o.selectCount,
                                         dq: gqP.pointer, keys: partBuf[bh * parts + p])
                    }
                }
            }
        }
    }

    // Sum the parts' key gradients, in part order, into the outputs (one owner per output row).
    let gkcP = SendablePointer(gkc.mutablePointer()), gvcP = SendablePointer(gvc.mutablePointer())
    let gksP = SendablePointer(gks.mutablePointer()), gvsP = SendablePointer(gvs.mutablePointer())
    let gkwP = SendablePointer(gkw.mutablePointer()), gvwP = SendablePointer(gvw.mutablePointer())
    let rowBlock = 64
    let blocks = (max(plan.Tk, plan.Nc) + rowBlock - 1) / rowBlock
    partials.withUnsafeBufferPointer { partBuf in
        ZooThreads.parallelFor(groups * blocks, minChunk: 4) { range in
            for item in range {
                let bh = item / blocks, r0 = (item % blocks) * rowBlock
                let b = bh / Hk, hk = bh % Hk
                for p in 0..<parts {
                    let part = partBuf[bh * parts + p]
                    func add(_ src: UnsafeMutablePointer<Float>, _ srcLo: Int, _ srcRows: Int, _ dst: UnsafeMutablePointer<Float>,
                             _ rowsTotal: Int, _ d: Int) {
                        let lo = max(r0, srcLo), hi = min(r0 + rowBlock, srcLo + srcRows, rowsTotal)
                        if lo >= hi { return }
                        for u in lo..<hi { simdAxpy(1, src + (u - srcLo) * d, dst + ((b * rowsTotal + u) * Hk + hk) * d, d) }
                    }
                    add(part.kc, 0, part.cmpRows, gkcP.pointer, plan.Nc, dk); add(part.vc, 0, part.cmpRows, gvcP.pointer, plan.Nc, dv)
                    add(part.ks, 0, part.selRows, gksP.pointer, plan.Tk, dk); add(part.vs, 0, part.selRows, gvsP.pointer, plan.Tk, dv)
                    add(part.kw, part.winLo, part.winRows, gkwP.pointer, plan.Tk, dk)
                    add(part.vw, part.winLo, part.winRows, gvwP.pointer, plan.Tk, dv)
                }
            }
        }
    }
    withExtendedLifetime((x, dOut, f, sigmaBuf, deltaBuf, partials)) {}
    return NSAGradients(q: gq, kCmp: gkc, vCmp: gvc, kSel: gks, vSel: gvs, kWin: gkw, vWin: gvw, gates: gg)
}

struct NSABackwardContext: @unchecked Sendable {
    let plan: NSAPlan
    let x: NSAPointers
    let dO: UnsafePointer<Float>        // [B, Tq, Hq, dv]
    let sigma: UnsafePointer<Float>     // [B, Tq, Hq, 3]
    let delta: UnsafePointer<Float>     // [3, B, Tq, Hq]
    let lse: UnsafePointer<Float>       // [3, B, Tq, Hq]

    init(plan: NSAPlan, x: NSAPointers, dO: UnsafeMutablePointer<Float>, sigma: UnsafeMutablePointer<Float>,
         delta: UnsafeMutablePointer<Float>, lse: UnsafeMutablePointer<Float>) {
        self.plan = plan; self.x = x; self.dO = UnsafePointer(dO); self.sigma = UnsafePointer(sigma)
        self.delta = UnsafePointer(delta); self.lse = UnsafePointer(lse)
    }

    /// Packs query t's G rows of branch c: dO_c = σ(g_c)·dO into dOp [G, dv], lse and δ into
    /// lseg[G], deltag[G], and (if q is non-nil) the scaled queries into q [G, dk].
    @inline(__always)
    func pack(branch c: Int, b: Int, hk: Int, t: Int, row r: Int, w: NSAScratch, q: UnsafeMutablePointer<Float>?) {
        let p = plan, G = p.G, dv = p.dv
        let stride = p.B * p.Hq * p.Tq
        for g in 0..<G {
            let h = hk * G + g
            let row = (b * p.Tq + t) * p.Hq + h
            let sg = sigma[row * 3 + c]
            Lanes.scaledCopy(w.dOp + (r + g) * dv, dO + row * dv, sg, dv)
            w.lseg[r + g] = lse[c * stride + row]
            w.deltag[r + g] = delta[c * stride + row]
        }
        if let q { nsaPackQueryRows(p, x.q, b: b, hk: hk, t: t, scale: p.scale, into: q + r * p.dk) }
    }
}

/// One chunk of queries: dQ rows (owned) and the chunk's contributions to its part's key buffers.
func nsaBackwardChunk(_ ctx: NSABackwardContext, _ w: NSAScratch, b: Int, hk: Int, chunk c: Int,
                      selection: UnsafePointer<Int32>, dq: UnsafeMutablePointer<Float>, keys part: NSAKeyPartials) {
    let plan = ctx.plan, o = plan.o, G = plan.G, dk = plan.dk, dv = plan.dv, Hk = plan.Hk
    let t0 = c * plan.chunk, t1 = min(plan.Tq, t0 + plan.chunk), nq = t1 - t0, M = nq * G
    for t in t0..<t1 { nsaPackQueryRows(plan, ctx.x.q, b: b, hk: hk, t: t, scale: plan.scale, into: w.qp + (t - t0) * G * dk) }
    w.dq.update(repeating: 0, count: M * dk)
    var rows = NSARows(count: 0, lo: w.lo, hi: w.hi)

    // Compressed branch.
    let kcBase = ctx.x.kc + (b * plan.Nc * Hk + hk) * dk
    let tile = plan.cmpTile(visible: o.visibleCompressed(position: plan.position(t1 - 1)))
    var ta = t0
    while ta < t1 {
        let tb = min(t1, ta + tile)
        let nk = o.visibleCompressed(position: plan.position(tb - 1))
        if nk > 0 {
            rows.count = (tb - ta) * G
            for t in ta..<tb {
                let r = (t - ta) * G
                ctx.pack(branch: 0, b: b, hk: hk, t: t, row: r, w: w, q: nil)
                let nv = Int32(o.visibleCompressed(position: plan.position(t)))
                for g in 0..<G { w.lo[r + g] = 0; w.hi[r + g] = nv }
            }
            nsaTileBackwardFused(rows: rows, keys: nk, dk: dk, dv: dv, q: w.qp + (ta - t0) * G * dk,
                                 kt: ctx.x.kcT.panel(b, hk), k: kcBase, ldk: Hk * dk,
                                 vt: ctx.x.vcT!.panel(b, hk), dO: w.dOp, lse: w.lseg, delta: w.deltag, s: w.s, dp: w.dp,
                                 dq: w.dq + (ta - t0) * G * dk, lddq: dk, dK: part.kc, lddk: dk, dV: part.vc, lddv: dv)
        }
        ta = tb
    }

    // Selected branch: per block, the rows that chose it.
    let jMax = nsaInvertSelection(plan, selection: selection, t0: t0, t1: t1, counts: w.counts, starts: w.starts, entries: w.entries)
    if jMax >= 0 {
        for j in 0...jMax where w.counts[j] > 0 {
            let key0 = j * o.selectBlock, nk = min(o.selectBlock, plan.Tk - key0)
            var r = 0
            for e in Int(w.starts[j]) ..< Int(w.starts[j] + w.counts[j]) {
                let tl = Int(w.entries[e])
                ctx.pack(branch: 1, b: b, hk: hk, t: t0 + tl, row: r, w: w, q: nil)
                let hiKey = Int32(min(nk, plan.position(t0 + tl) - key0 + 1))
                for g in 0..<G {
                    (w.qg + (r + g) * dk).update(from: w.qp + (tl * G + g) * dk, count: dk)
                    w.rowIndex[r + g] = Int32(tl * G + g); w.lo[r + g] = 0; w.hi[r + g] = hiKey
                }
                r += G
            }
            rows.count = r
            w.pv.update(repeating: 0, count: r * dk)
            nsaTileBackwardFused(rows: rows, keys: nk, dk: dk, dv: dv, q: w.qg,
                                 kt: ctx.x.ksT.panel(b, hk, from: key0),
                                 k: ctx.x.ks + ((b * plan.Tk + key0) * Hk + hk) * dk, ldk: Hk * dk,
                                 vt: ctx.x.vsT!.panel(b, hk, from: key0),
                                 dO: w.dOp, lse: w.lseg, delta: w.deltag, s: w.s, dp: w.dp, dq: w.pv, lddq: dk,
                                 dK: part.ks + key0 * dk, lddk: dk, dV: part.vs + key0 * dv, lddv: dv)
            for i in 0..<r { simdAxpy(1, w.pv + i * dk, w.dq + Int(w.rowIndex[i]) * dk, dk) }
        }
    }

    // Window branch.
    ta = t0
    while ta < t1 {
        let tb = min(t1, ta + plan.windowTile), rowsT = (tb - ta) * G
        for t in ta..<tb { ctx.pack(branch: 2, b: b, hk: hk, t: t, row: (t - ta) * G, w: w, q: nil) }
        let kLo = max(0, plan.position(ta) - o.window + 1), kHi = plan.position(tb - 1) + 1
        var k0 = kLo
        while k0 < kHi {
            let k1 = min(kHi, k0 + plan.windowKeys)
            for r in 0..<rowsT {
                let p = plan.position(ta + r / G)
                let a = max(k0, p - o.window + 1), e = min(k1, p + 1)
                w.lo[r] = Int32(max(0, a - k0)); w.hi[r] = Int32(max(a, e) - k0)
            }
            rows.count = rowsT
            nsaTileBackwardFused(rows: rows, keys: k1 - k0, dk: dk, dv: dv, q: w.qp + (ta - t0) * G * dk,
                                 kt: ctx.x.kwT.panel(b, hk, from: k0),
                                 k: ctx.x.kw + ((b * plan.Tk + k0) * Hk + hk) * dk, ldk: Hk * dk,
                                 vt: ctx.x.vwT!.panel(b, hk, from: k0),
                                 dO: w.dOp, lse: w.lseg, delta: w.deltag, s: w.s, dp: w.dp,
                                 dq: w.dq + (ta - t0) * G * dk, lddq: dk,
                                 dK: part.kw + (k0 - part.winLo) * dk, lddk: dk, dV: part.vw + (k0 - part.winLo) * dv, lddv: dv)
            k0 = k1
        }
        ta = tb
    }

    // dq = scale · Σ dS k (the scale of S = scale·q·k).
    for t in t0..<t1 {
        Lanes.scaledCopy(dq + ((b * plan.Tq + t) * plan.Hq + hk * G) * dk, w.dq + (t - t0) * G * dk, plan.scale, G * dk)
    }
}
