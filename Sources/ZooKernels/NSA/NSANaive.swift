// NSA naive kernel: the executable spec, in Double, with dense per-query key lists (O(T²) work).
//
// Shapes (canonical [B, T, H, D]; G = Hq / Hkv, query head h uses kv head h / G):
//   q [B, Tq, Hq, dk]; kCmp [B, Nc, Hkv, dk], vCmp [B, Nc, Hkv, dv] (compressed keys/values, Nc =
//   ⌊(Tk − l)/d⌋ + 1); kSel, vSel, kWin, vWin [B, Tk, Hkv, dk|dv]; gates [B, Tq, Hq, 3] (logits for
//   compressed, selected, window); output [B, Tq, Hq, dv].
//
// For query t at position p = t + Tk − Tq and head h, with s = scale:
//   o_cmp = Σ_{i: i·d+l−1 ≤ p} softmax(s q·kCmp_i) vCmp_i            (0 if no block is complete)
//   P[i]  = Σ_{h in the kv group} softmax_h[i]                          (GQA-shared importance)
//   score[j] = Σ_i P[i] · w(i, j)                                       (Eq. 9, see NSABlockScoreRule)
//   J = top-n blocks by score (forced: initial and local blocks), or a given selection
//   o_sel = attention over tokens u ≤ p with ⌊u / l′⌋ ∈ J, keys kSel, values vSel
//   o_win = attention over tokens u ∈ [p − w + 1, p], keys kWin, values vWin
//   o = σ(g_cmp) o_cmp + σ(g_sel) o_sel + σ(g_win) o_win

import Foundation
import ZooTensor

/// NSA's inputs in Double, the naive kernel's form (and what finite differences perturb).
public struct NSADoubleInputs: Sendable {
    public var batch: Int, queries: Int, keys: Int, queryHeads: Int, kvHeads: Int, keyDim: Int, valueDim: Int
    public var q: [Double]
    public var kCmp: [Double], vCmp: [Double]
    public var kSel: [Double], vSel: [Double]
    public var kWin: [Double], vWin: [Double]
    public var gates: [Double]

    public init(batch: Int, queries: Int, keys: Int, queryHeads: Int, kvHeads: Int, keyDim: Int, valueDim: Int,
                q: [Double], kCmp: [Double], vCmp: [Double], kSel: [Double], vSel: [Double],
                kWin: [Double], vWin: [Double], gates: [Double]) {
        self.batch = batch; self.queries = queries; self.keys = keys; self.queryHeads = queryHeads
        self.kvHeads = kvHeads; self.keyDim = keyDim; self.valueDim = valueDim
        self.q = q; self.kCmp = kCmp; self.vCmp = vCmp; self.kSel = kSel; self.vSel = vSel
        self.kWin = kWin; self.vWin = vWin; self.gates = gates
    }

    /// The Float inputs widened to Double.
    public init(_ x: NSAInputs) {
        self.init(batch: x.batch, queries: x.queries, keys: x.keys, queryHeads: x.queryHeads, kvHeads: x.kvHeads,
                  keyDim: x.keyDim, valueDim: x.valueDim, q: x.q.doubles, kCmp: x.kCmp.doubles, vCmp: x.vCmp.doubles,
                  kSel: x.kSel.doubles, vSel: x.vSel.doubles, kWin: x.kWin.doubles, vWin: x.vWin.doubles,
                  gates: x.gates.doubles)
    }

    var compressed: Int { kCmp.count / max(1, batch * kvHeads * keyDim) }
}

/// Everything the naive forward computes, for tests.
public struct NSANaiveResult: Sendable {
    public var output: [Double]                 // [B, Tq, Hq, dv]
    public var branchOutputs: [[Double]]        // 3 × [B, Tq, Hq, dv]: compressed, selected, window
    public var scores: [Double]                 // [B, Hkv, Tq, nb] selection-block importance
    public var selection: NSASelection          // the selection used
}

/// Gradients of sum(output · dOutput) with respect to every input, in Double.
public struct NSADoubleGradients: Sendable {
    public var q: [Double], kCmp: [Double], vCmp: [Double], kSel: [Double], vSel: [Double]
    public var kWin: [Double], vWin: [Double], gates: [Double]
}

@inline(__always) private func sigmoid(_ x: Double) -> Double { 1 / (1 + exp(-x)) }

/// Brute-force top-n for one query: sort every visible, non-forced block by (score desc, index asc)
/// and take what the forced blocks leave. The spec that `nsaTopBlocks` must equal.
public func nsaNaiveSelect(scores: [Double], position p: Int, options o: NSAOptions) -> [Int] {
    let current = p / o.selectBlock
    if current + 1 <= o.selectCount { return Array(0...current) }
    let forced = (0...current).filter { $0 < o.initialBlocks || $0 > current - o.localBlocks }
    let rest = (0...current).filter { !($0 < o.initialBlocks || $0 > current - o.localBlocks) }
        .sorted { scores[$0] != scores[$1] ? scores[$0] > scores[$1] : $0 < $1 }
    return (forced + rest.prefix(o.selectCount - forced.count)).sorted()
}

/// One query's view of NSA: the key lists of the three branches.
private struct NaiveQueryPlan {
    var cmpKeys: [Int]       // compressed block indices
    var selKeys: [Int]       // raw token positions in the selected blocks, ≤ p
    var winKeys: [Int]       // raw token positions in the window
}

/// Softmax attention of one query over a key list: returns probabilities and output.
private func naiveAttend(_ q: ArraySlice<Double>, keys: [Int], K: [Double], V: [Double], rowOffsetK: (Int) -> Int,
                         rowOffsetV: (Int) -> Int, dk: Int, dv: Int, scale: Double) -> (p: [Double], o: [Double]) {
    if keys.isEmpty { return ([], [Double](repeating: 0, count: dv)) }
    let qb = q.startIndex
    var logits = keys.map { u -> Double in
        let kb = rowOffsetK(u)
        var s = 0.0
        for c in 0..<dk { s += q[qb + c] * K[kb + c] }
        return s * scale
    }
    let m = logits.max()!
    var sum = 0.0
    for i in logits.indices { logits[i] = exp(logits[i] - m); sum += logits[i] }
    for i in logits.indices { logits[i] /= sum }
    var o = [Double](repeating: 0, count: dv)
    for (i, u) in keys.enumerated() {
        let vb = rowOffsetV(u)
        for c in 0..<dv { o[c] += logits[i] * V[vb + c] }
    }
    return (logits, o)
}

/// Naive NSA forward. With `selection` nil the blocks are chosen by brute-force top-n on Double
/// scores; otherwise the given blocks are used (what gradient checks need).
public func nsaNaiveForward(_ x: NSADoubleInputs, options o: NSAOptions = NSAOptions(),
                            selection given: NSASelection? = nil) -> NSANaiveResult {
    o.validate("nsaNaiveForward")
    let B = x.batch, Tq = x.queries, Tk = x.keys, Hq = x.queryHeads, Hk = x.kvHeads, dk = x.keyDim, dv = x.valueDim
    let G = Hq / Hk, off = Tk - Tq, Nc = o.compressedCount(keys: Tk), nb = o.selectionBlockCount(keys: Tk)
    let scale = Double(o.softmaxScale(headDim: dk))
    var out = [Double](repeating: 0, count: B * Tq * Hq * dv)
    var branches = [[Double]](repeating: out, count: 3)
    var scores = [Double](repeating: 0, count: B * Hk * Tq * nb)
    var sel = given ?? NSASelection(batch: B, kvHeads: Hk, queries: Tq, slots: o.selectCount)
    for b in 0..<B {
        for hk in 0..<Hk {
            for t in 0..<Tq {
                let p = t + off
                let nvis = o.visibleCompressed(position: p)
                let cmpKeys = Array(0..<nvis)
                // Compressed branch for each head of the group, and the group's summed probabilities.
                var pSum = [Double](repeating: 0, count: Nc)
                var cmpOut = [[Double]]()
                for g in 0..<G {
                    let h = hk * G + g
                    let qs = x.q[((b * Tq + t) * Hq + h) * dk ..< ((b * Tq + t) * Hq + h + 1) * dk]
                    let (pr, oc) = naiveAttend(qs, keys: cmpKeys, K: x.kCmp, V: x.vCmp,
                                               rowOffsetK: { ((b * Nc + $0) * Hk + hk) * dk },
                                               rowOffsetV: { ((b * Nc + $0) * Hk + hk) * dv }, dk: dk, dv: dv, scale: scale)
                    for (i, v) in pr.enumerated() { pSum[i] += v }
                    cmpOut.append(oc)
                }
                let srow = ((b * Hk + hk) * Tq + t) * nb
                for i in 0..<nvis {
                    for j in 0..<nb {
                        let w = Double(nsaOverlapWeight(i, j, o))
                        if w != 0 { scores[srow + j] += pSum[i] * w }
                    }
                }
                let chosen: [Int]
                if given != nil {
                    chosen = sel.blocks(batch: b, kvHead: hk, query: t)
                } else {
                    chosen = nsaNaiveSelect(scores: Array(scores[srow ..< srow + nb]), position: p, options: o)
                    let base = ((b * Hk + hk) * Tq + t) * o.selectCount
                    for (k, j) in chosen.enumerated() { sel.indices[base + k] = Int32(j) }
                }
                let selKeys = chosen.flatMap { j in (j * o.selectBlock ..< min((j + 1) * o.selectBlock, p + 1)) }
                let winKeys = Array(max(0, p - o.window + 1) ... p)
                for g in 0..<G {
                    let h = hk * G + g
                    let row = (b * Tq + t) * Hq + h
                    let qs = x.q[row * dk ..< (row + 1) * dk]
                    let os = naiveAttend(qs, keys: selKeys, K: x.kSel, V: x.vSel,
                                         rowOffsetK: { ((b * Tk + $0) * Hk + hk) * dk },
                                         rowOffsetV: { ((b * Tk + $0) * Hk + hk) * dv }, dk: dk, dv: dv, scale: scale).o
                    let ow = naiveAttend(qs, keys: winKeys, K: x.kWin, V: x.vWin,
                                         rowOffsetK: { ((b * Tk + $0) * Hk + hk) * dk },
                                         rowOffsetV: { ((b * Tk + $0) * Hk + hk) * dv }, dk: dk, dv: dv, scale: scale).o
                    let branchOut = [cmpOut[g], os, ow]
                    for c in 0..<3 {
                        let gate = sigmoid(x.gates[row * 3 + c])
                        for e in 0..<dv {
                            branches[c][row * dv + e] = branchOut[c][e]
                            out[row * dv + e] += gate * branchOut[c][e]
                        }
                    }
                }
            }
        }
    }
    return NSANaiveResult(output: out, branchOutputs: branches, scores: scores, selection: sel)
}

/// Naive NSA backward with the selection fixed: gradients of sum(output · dOutput).
public func nsaNaiveBackward(_ x: NSADoubleInputs, options o: NSAOptions = NSAOptions(), selection: NSASelection,
                             outputGradient dOut: [Double]) -> NSADoubleGradients {
    o.validate("nsaNaiveBackward")
    let B = x.batch, Tq = x.queries, Tk = x.keys, Hq = x.queryHeads, Hk = x.kvHeads, dk = x.keyDim, dv = x.valueDim
    let G = Hq / Hk, off = Tk - Tq, Nc = o.compressedCount(keys: Tk)
    let scale = Double(o.softmaxScale(headDim: dk))
    var gr = NSADoubleGradients(
        q: [Double](repeating: 0, count: x.q.count), kCmp: [Double](repeating: 0, count: x.kCmp.count),
        vCmp: [Double](repeating: 0, count: x.vCmp.count), kSel: [Double](repeating: 0, count: x.kSel.count),
        vSel: [Double](repeating: 0, count: x.vSel.count), kWin: [Double](repeating: 0, count: x.kWin.count),
        vWin: [Double](repeating: 0, count: x.vWin.count), gates: [Double](repeating: 0, count: x.gates.count))

    // Standard softmax-attention backward for one query and key list, accumulating into dq/dK/dV.
    func attendBackward(row: Int, keys: [Int], K: [Double], V: [Double], rowK: (Int) -> Int, rowV: (Int) -> Int,
                        gate: Double, dK: inout [Double], dV: inout [Double]) -> Double {
        let qs = x.q[row * dk ..< (row + 1) * dk]
        let (p, oBranch) = naiveAttend(qs, keys: keys, K: K, V: V, rowOffsetK: rowK, rowOffsetV: rowV,
                                       dk: dk, dv: dv, scale: scale)
        var dotOut = 0.0
        for e in 0..<dv { dotOut += oBranch[e] * dOut[row * dv + e] }
        if keys.isEmpty { return dotOut }
        let dO = (0..<dv).map { gate * dOut[row * dv + $0] }
        var dP = [Double](repeating: 0, count: keys.count)
        for (i, u) in keys.enumerated() {
            for e in 0..<dv { dP[i] += dO[e] * V[rowV(u) + e]; dV[rowV(u) + e] += p[i] * dO[e] }
        }
        var delta = 0.0
        for i in keys.indices { delta += p[i] * dP[i] }
        for (i, u) in keys.enumerated() {
            let dS = p[i] * (dP[i] - delta) * scale
            for c in 0..<dk {
                gr.q[row * dk + c] += dS * K[rowK(u) + c]
                dK[rowK(u) + c] += dS * x.q[row * dk + c]
            }
        }
        return dotOut
    }

    for b in 0..<B {
        for hk in 0..<Hk {
            for t in 0..<Tq {
                let p = t + off
                let cmpKeys = Array(0..<o.visibleCompressed(position: p))
                let chosen = selection.blocks(batch: b, kvHead: hk, query: t)
                let selKeys = chosen.flatMap { j in (j * o.selectBlock ..< min((j + 1) * o.selectBlock, p + 1)) }
                let winKeys = Array(max(0, p - o.window + 1) ... p)
                for g in 0..<G {
                    let row = (b * Tq + t) * Hq + hk * G + g
                    let gates = (0..<3).map { sigmoid(x.gates[row * 3 + $0]) }
                    let rowCmpK: (Int) -> Int = { ((b * Nc + $0) * Hk + hk) * dk }
                    let rowCmpV: (Int) -> Int = { ((b * Nc + $0) * Hk + hk) * dv }
                    let rowK: (Int) -> Int = { ((b * Tk + $0) * Hk + hk) * dk }
                    let rowV: (Int) -> Int = { ((b * Tk + $0) * Hk + hk) * dv }
                    let d0 = attendBackward(row: row, keys: cmpKeys, K: x.kCmp, V: x.vCmp, rowK: rowCmpK, rowV: rowCmpV,
                                            gate: gates[0], dK: &gr.kCmp, dV: &gr.vCmp)
                    let d1 = attendBackward(row: row, keys: selKeys, K: x.kSel, V: x.vSel, rowK: rowK, rowV: rowV,
                                            gate: gates[1], dK: &gr.kSel, dV: &gr.vSel)
                    let d2 = attendBackward(row: row, keys: winKeys, K: x.kWin, V: x.vWin, rowK: rowK, rowV: rowV,
                                            gate: gates[2], dK: &gr.kWin, dV: &gr.vWin)
                    for (c, d) in [d0, d1, d2].enumerated() { gr.gates[row * 3 + c] = gates[c] * (1 - gates[c]) * d }
                }
            }
        }
    }
    return gr
}

/// Mean-pooling compression in Double: y[b, i, h] = mean of x[b, i·d ..< i·d + l, h].
public func nsaNaiveCompressMean(_ x: [Double], batch: Int, tokens: Int, heads: Int, dim: Int,
                                 options o: NSAOptions) -> [Double] {
    let Nc = o.compressedCount(keys: tokens)
    var y = [Double](repeating: 0, count: batch * Nc * heads * dim)
    for b in 0..<batch { for i in 0..<Nc { for h in 0..<heads { for c in 0..<dim {
        var s = 0.0
        for u in (i * o.compressStride) ..< (i * o.compressStride + o.compressBlock) { s += x[((b * tokens + u) * heads + h) * dim + c] }
        y[((b * Nc + i) * heads + h) * dim + c] = s / Double(o.compressBlock)
    } } } }
    return y
}
