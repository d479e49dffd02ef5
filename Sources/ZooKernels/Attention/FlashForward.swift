// Flash attention forward: tiled online softmax; never holds a score matrix larger than 6 × 512.
//
//   q [B, Tq, Hq, d]   k [B, Tk, Hk, d]   v [B, Tk, Hk, dv]   →   o [B, Tq, Hq, dv], lse [B, Hq, Tq]
//
// Work is split by (batch, KV head, block of 96 query rows). The rows of a KV head's group are the
// pairs (t, g) of query position and group member, t-major, so the query heads that share a KV
// head share its key/value panels (GQA costs no extra reads). For each block of rows, and for each
// tile of 8 key panels (512 keys) that some row of the block can see:
//   for every 6 rows:  S = Q·Kᵀ over the panels these rows can see     (microkernel, k = d)
//                      per row: m' = max(m, max_j s_j);  ℓ ← ℓ·2^{m−m'} + Σ_j 2^{s_j−m'}
//                               O_row ← O_row·2^{m−m'};  P = 2^{S−m'} (0 where masked)
//                      O += P·V                          (microkernel, k = the tile's visible keys)
// and finally o = O/ℓ, lse = m·ln 2 + log ℓ. Scores are in log2 units (log2 e is folded into the
// query scale), so the softmax costs one exp2 per score. Panels that no row of a 6-row group can
// see are skipped, so a causal diagonal wastes at most one panel per group, and masking runs only
// on panels that straddle a row's visible interval. The query block shares each tile (256 KB of
// keys and values) in L2; the 6 × 512 score strip and the 6 output rows stay in L1.
//
// Saved for the backward: o and lse only.

import Foundation
import ZooTensor

/// Query rows per work item; a multiple of 6 (the microkernel's row count).
let forwardRowBlock = 96
/// Panels per key tile (the online-softmax step): 8 × 64 = 512 keys.
let forwardTilePanels = 8

/// Flash attention forward (see the file comment). Writes `output` [B,Tq,Hq,dv] and `logSumExp`
/// [B,Hq,Tq] (natural log of Σ exp(s) over visible keys, in score units; −∞ for a query that
/// sees no key, whose output is 0). Parallel over (batch, KV head, query block); the result does
/// not depend on the thread count. Extra memory: the packed keys and values (the size of k + v)
/// plus a few KB per worker.
public func flashAttentionForward(
    q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
    shape: AttentionShape, options: AttentionOptions = AttentionOptions(),
    output: UnsafeMutablePointer<Float>, logSumExp: UnsafeMutablePointer<Float>
) {
    shape.validate("flashAttentionForward"); options.validate("flashAttentionForward")
    let packed = PackedAttentionPanels(k: k, v: v, shape: shape)
    packed.withPanels { panels in
        flashForward(q: q, panels: panels, shape: shape, options: options, output: output, logSumExp: logSumExp)
    }
}

/// The forward over keys and values already packed in panels (a whole call's, or a KV cache's):
/// `shape.keyLength` must equal `panels.keyLength`.
func flashForward(
    q: UnsafePointer<Float>, panels: AttentionPanels, shape s: AttentionShape, options: AttentionOptions,
    output: UnsafeMutablePointer<Float>, logSumExp: UnsafeMutablePointer<Float>
) {
    let width = attentionPanelWidth
    let groups = s.batch * s.keyValueHeads
    let G = s.groupSize
    let rowsPerGroup = s.queryLength * G
    let rowBlock = forwardRowBlock
    let rowBlocks = (rowsPerGroup + rowBlock - 1) / rowBlock
    if groups == 0 || rowsPerGroup == 0 { return }
    let d = s.headDim, dv = s.valueDim, dvPad = paddedTo16(dv)
    let mask = AttentionMask(options: options, keyLength: s.keyLength)
    let offset = s.keyLength - s.queryLength
    let softcap = options.softcap
    let queryScale = attentionQueryScale(options: options, headDim: d)

    // Panels a block of rows may need: from its first row's lower end to its last row's upper end
    // (both ends grow with the row, so this covers every row of the block).
    func panelRange(_ rb: Int) -> Range<Int> {
        let r0 = rb * rowBlock, r1 = Swift.min(rowsPerGroup, r0 + rowBlock)
        let lo = mask.interval(position: r0 / G + offset).lower
        let hi = mask.interval(position: (r1 - 1) / G + offset).upper
        if hi <= lo { return 0..<0 }
        return (lo / width) ..< ((hi + width - 1) / width)
    }

    // Few work items but many keys (decoding against a long cache): split the keys of each item
    // into parts with partial (O, m, ℓ), merged afterwards in a fixed order. The split count
    // depends on the shape only, never on the thread count.
    let baseItems = groups * rowBlocks
    let minPanelsPerPart = 4
    var splits = 1
    if baseItems < 8 {
        let widest = (0..<rowBlocks).map { panelRange($0).count }.max() ?? 0
        splits = Swift.max(1, Swift.min((8 + baseItems - 1) / baseItems, widest / minPanelsPerPart))
    }
    let partials: ScratchBuffer? = splits > 1 ? ScratchBuffer(count: baseItems * splits * rowBlock * (dvPad + 2), zeroed: false) : nil
    let partialBase = partials.map { SendablePointer($0.pointer) }

    let qp = SendablePointer(UnsafeMutablePointer(mutating: q))
    let op = SendablePointer(output), lp = SendablePointer(logSumExp)
    forEachItem(baseItems * splits, makeScratch: { AttentionForwardScratch(rows: rowBlock, headDim: d, valueDim: dv, panels: panels.pageCount) }) { item, scratch in
        let part = item % splits, base = item / splits
        // Later row blocks see more keys (causal): hand out the largest first, every group's at
        // once, so the last items to finish are small ones.
        let g = base % groups, rb = rowBlocks - 1 - base / groups
        let b = g / s.keyValueHeads, kvh = g % s.keyValueHeads
        let r0 = rb * rowBlock, rows = Swift.min(rowBlock, rowsPerGroup - r0)
        // Pack the block's query rows, scaled: S = Q·Kᵀ then needs no further multiply.
        for i in 0..<rows {
            let row = r0 + i, t = row / G, h = kvh * G + row % G
            let src = qp.pointer + ((b * s.queryLength + t) * s.queryHeads + h) * d
            let dst = scratch.queries + i * d
            for c in 0..<d { dst[c] = src[c] * queryScale }
        }
        let range = panelRange(rb)
        let lo = range.lowerBound + range.count * part / splits
        let hi = range.lowerBound + range.count * (part + 1) / splits
        for (n, p) in (lo..<hi).enumerated() { scratch.panelList[n] = p }
        let state = AttentionRowState(output: scratch.output, rowMax: scratch.rowMax, rowSum: scratch.rowSum, rows: rows, valueDim: dv)
        state.reset()
        attendRowBlock(queries: scratch.queries, state: state, scores: scratch.scores,
                       visibility: AttentionRowVisibility(mask: mask, firstRow: r0, rowsPerPosition: G, positionOffset: offset),
                       panels: panels, group: g,
                       panelList: UnsafeBufferPointer(start: scratch.panelList, count: hi - lo), softcap: softcap)
        if let partialBase {
            // [item][rows][dvPad] accumulators, then m and ℓ per row.
            let slot = partialBase.pointer + item * rowBlock * (dvPad + 2)
            slot.update(from: scratch.output, count: rows * dvPad)
            (slot + rowBlock * dvPad).update(from: scratch.rowMax, count: rows)
            (slot + rowBlock * dvPad + rowBlock).update(from: scratch.rowSum, count: rows)
        } else {
            state.finish(into: { i in
                let row = r0 + i, t = row / G, h = kvh * G + row % G
                return (op.pointer + ((b * s.queryLength + t) * s.queryHeads + h) * dv,
                        lp.pointer + (b * s.queryHeads + h) * s.queryLength + t)
            })
        }
    }
    guard let partialBase else { return }
    ZooThreads.parallelFor(baseItems) { range in
        for base in range {
            let g = base % groups, rb = rowBlocks - 1 - base / groups
            let b = g / s.keyValueHeads, kvh = g % s.keyValueHeads
            let r0 = rb * rowBlock, rows = Swift.min(rowBlock, rowsPerGroup - r0)
            let stride = rowBlock * (dvPad + 2)
            let first = partialBase.pointer + base * splits * stride
            for i in 0..<rows {
                // Merge the parts' (O, m, ℓ) in order: m* = max m_p, ℓ = Σ ℓ_p e^{m_p − m*}.
                var m = -Float.infinity
                for part in 0..<splits { m = Swift.max(m, first[part * stride + rowBlock * dvPad + i]) }
                let row = r0 + i, t = row / G, h = kvh * G + row % G
                let oRow = op.pointer + ((b * s.queryLength + t) * s.queryHeads + h) * dv
                let lseSlot = lp.pointer + (b * s.queryHeads + h) * s.queryLength + t
                if m == -.infinity {
                    oRow.update(repeating: 0, count: dv)
                    lseSlot.pointee = -.infinity
                    continue
                }
                var sum: Float = 0
                for c in 0..<dv { oRow[c] = 0 }
                for part in 0..<splits {
                    let pm = first[part * stride + rowBlock * dvPad + i]
                    if pm == -.infinity { continue }
                    let w = Lanes.exp2(pm - m)
                    sum += w * first[part * stride + rowBlock * dvPad + rowBlock + i]
                    let src = first + part * stride + i * dvPad
                    for c in 0..<dv { oRow[c] += w * src[c] }
                }
                let inv = 1 / sum
                for c in 0..<dv { oRow[c] *= inv }
                lseSlot.pointee = m * Lanes.ln2 + Foundation.log(sum)
            }
        }
    }
}

/// The factor `attendRowBlock` expects the queries to carry. Scores are kept in log2 units
/// (s·log2 e), so the softmax runs on exp2: log2 e is folded into the query scale, or, with a
/// softcap, into the softcap multiplier that applies after the tanh (queries then carry
/// scale/softcap).
public func attentionQueryScale(options: AttentionOptions, headDim: Int) -> Float {
    let scale = options.resolvedScale(headDim: headDim)
    return options.softcap > 0 ? scale / options.softcap : scale * Lanes.log2e
}

/// Which keys each row of a query block sees: row i sits at position (firstRow + i) / rowsPerPosition
/// + positionOffset (rows of one position are the query heads of a KV group).
public struct AttentionRowVisibility: Sendable {
    public var mask: AttentionMask
    public var firstRow: Int
    public var rowsPerPosition: Int
    public var positionOffset: Int
    public init(mask: AttentionMask, firstRow: Int, rowsPerPosition: Int, positionOffset: Int) {
        self.mask = mask
        self.firstRow = firstRow
        self.rowsPerPosition = rowsPerPosition
        self.positionOffset = positionOffset
    }
    @inline(__always) public func interval(row i: Int) -> (lower: Int, upper: Int) {
        mask.interval(position: (firstRow + i) / rowsPerPosition + positionOffset)
    }
}

/// The running state of an online softmax for a block of query rows: unnormalised output rows
/// [rows][dvPad], running max m (in log2 units: scores · log2 e) and running sum ℓ per row.
public struct AttentionRowState {
    public var output: UnsafeMutablePointer<Float>
    public var rowMax: UnsafeMutablePointer<Float>
    public var rowSum: UnsafeMutablePointer<Float>
    public var rows: Int
    public var valueDim: Int
    public init(output: UnsafeMutablePointer<Float>, rowMax: UnsafeMutablePointer<Float>,
                rowSum: UnsafeMutablePointer<Float>, rows: Int, valueDim: Int) {
        self.output = output; self.rowMax = rowMax; self.rowSum = rowSum; self.rows = rows; self.valueDim = valueDim
    }
    /// O = 0, m = −∞, ℓ = 0.
    public func reset() {
        output.update(repeating: 0, count: rows * paddedTo16(valueDim))
        rowMax.update(repeating: -.infinity, count: rows)
        rowSum.update(repeating: 0, count: rows)
    }
    /// Writes o = O/ℓ and lse = m·ln 2 + log ℓ (natural units) for each row to the places `destination(row)` gives
    /// (o = 0, lse = −∞ for a row that saw no key).
    @inline(__always)
    public func finish(into destination: (Int) -> (output: UnsafeMutablePointer<Float>, logSumExp: UnsafeMutablePointer<Float>)) {
        let dvPad = paddedTo16(valueDim)
        for i in 0..<rows {
            let (o, lse) = destination(i)
            let sum = rowSum[i]
            if sum > 0 {
                let inv = 1 / sum
                let src = output + i * dvPad
                for c in 0..<valueDim { o[c] = src[c] * inv }
                lse.pointee = rowMax[i] * Lanes.ln2 + Foundation.log(sum)
            } else {
                o.update(repeating: 0, count: valueDim)
                lse.pointee = -.infinity
            }
        }
    }
}

/// Floats of score scratch `attendRowBlock` needs: 6 rows × one key tile.
public let attentionScoreScratchCount = 6 * forwardTilePanels * 64

/// Online-softmax attention of a block of query rows over a list of key panels, updating `state`
/// (the flash forward's inner loop; public so kernels that choose their own keys, e.g. sparse
/// attention over selected blocks, can reuse it).
///
/// - queries: [rows][d], already multiplied by `attentionQueryScale` (scores, the running max
///   and `state` are in log2 units: s·log2 e);
/// - panelList: ascending panel indices (keys 64p ..< 64p+64 each) of `panels`' group `group`;
/// - scores: scratch of `attentionScoreScratchCount` floats;
/// - softcap: > 0 applies s = softcap·log2 e·tanh(u) to the raw scores u.
/// Keys outside a row's visible interval, and keys past `panels.keyLength`, get probability 0.
public func attendRowBlock(
    queries: UnsafePointer<Float>, state: AttentionRowState, scores: UnsafeMutablePointer<Float>,
    visibility: AttentionRowVisibility, panels: AttentionPanels, group: Int,
    panelList: UnsafeBufferPointer<Int>, softcap: Float
) {
    let width = attentionPanelWidth
    let d = panels.headDim, dvPad = panels.valueStride
    let ldS = forwardTilePanels * width
    let rows = state.rows
    var lower = (0, 0, 0, 0, 0, 0), upper = (0, 0, 0, 0, 0, 0)
    var tileStart = 0
    while tileStart < panelList.count {
        let tileCount = Swift.min(forwardTilePanels, panelList.count - tileStart)
        var r0 = 0
        while r0 < rows {
            let groupRows = Swift.min(6, rows - r0)
            // Visible intervals of the 6 rows and their union.
            var groupLo = Int.max, groupHi = Int.min
            withUnsafeMutableBytes(of: &lower) { lb in
                withUnsafeMutableBytes(of: &upper) { ub in
                    let l = lb.baseAddress!.assumingMemoryBound(to: Int.self), u = ub.baseAddress!.assumingMemoryBound(to: Int.self)
                    for r in 0..<groupRows {
                        let (lo, hi) = visibility.interval(row: r0 + r)
                        l[r] = lo; u[r] = hi
                        if hi > lo { groupLo = Swift.min(groupLo, lo); groupHi = Swift.max(groupHi, hi) }
                    }
                }
            }
            if groupHi <= groupLo { r0 += 6; continue }
            // Panels of this tile that some row of the group can see (a contiguous run).
            var first = tileCount, last = 0
            for slot in 0..<tileCount {
                let key0 = panelList[tileStart + slot] * width
                if key0 < groupHi && key0 + width > groupLo { first = Swift.min(first, slot); last = slot + 1 }
            }
            if first >= last { r0 += 6; continue }
            let qRows = queries + r0 * d
            let sRows = scores
            for slot in first..<last {
                let p = panelList[tileStart + slot]
                // A panel the group sees only the start of (the causal diagonal): just the
                // 16-key chunks it sees; the softmax masks the rest of the panel anyway.
                let columns = Swift.min(width, (groupHi - p * width + 15) & ~15)
                tileMultiply(m: groupRows, n: columns, k: d, a: qRows, aRowStride: d, aStep: 1,
                             b: panels.keys(group: group, panel: p), ldb: width,
                             c: sRows + slot * width, ldc: ldS, accumulate: false)
            }
            withUnsafeBytes(of: &lower) { lb in
                withUnsafeBytes(of: &upper) { ub in
                    let l = lb.baseAddress!.assumingMemoryBound(to: Int.self), u = ub.baseAddress!.assumingMemoryBound(to: Int.self)
                    for r in 0..<groupRows {
                        onlineSoftmaxRow(sRows + r * ldS, panelList: panelList.baseAddress! + tileStart,
                                         slots: first..<last, lower: l[r], upper: u[r], softcap: softcap,
                                         rowMax: state.rowMax + r0 + r, rowSum: state.rowSum + r0 + r,
                                         output: state.output + (r0 + r) * dvPad, valueStride: dvPad)
                    }
                }
            }
            // O += P·V, one pass per run of panels whose values are contiguous.
            var slot = first
            while slot < last {
                var end = slot + 1
                if panels.valuesContiguous {
                    while end < last && panelList[tileStart + end] == panelList[tileStart + end - 1] + 1 { end += 1 }
                }
                // Keys past the group's last visible one have P = 0: leave them out of k (on a
                // causal diagonal that is half a panel per group).
                let runStart = panelList[tileStart + slot] * width
                let keys = Swift.min((end - slot) * width, groupHi - runStart)
                tileMultiply(m: groupRows, n: dvPad, k: keys, a: sRows + slot * width, aRowStride: ldS, aStep: 1,
                             b: panels.values(group: group, panel: panelList[tileStart + slot]), ldb: dvPad,
                             c: state.output + r0 * dvPad, ldc: dvPad, accumulate: true)
                slot = end
            }
            r0 += 6
        }
        tileStart += tileCount
    }
}

/// One row of a score tile: softcap, mask, online-softmax update; leaves P in place of S.
@inline(__always)
private func onlineSoftmaxRow(
    _ s: UnsafeMutablePointer<Float>, panelList: UnsafePointer<Int>, slots: Range<Int>,
    lower: Int, upper: Int, softcap: Float,
    rowMax: UnsafeMutablePointer<Float>, rowSum: UnsafeMutablePointer<Float>,
    output: UnsafeMutablePointer<Float>, valueStride: Int
) {
    let width = attentionPanelWidth
    let cap = F16(repeating: softcap * Lanes.log2e)
    var mx0 = F16(repeating: -.infinity), mx1 = mx0
    for slot in slots {
        let seg = s + slot * width
        let key0 = panelList[slot] * width
        if softcap > 0 {
            for v in 0..<4 { store16(seg + 16 * v, cap * Lanes.tanh(load16(seg + 16 * v))) }
        }
        if key0 >= lower && key0 + width <= upper {
            mx0 = vmax(mx0, vmax(load16(seg), load16(seg + 16)))
            mx1 = vmax(mx1, vmax(load16(seg + 32), load16(seg + 48)))
        } else {
            // The visible interval relative to the panel, clamped to 0...64.
            let lo = SIMD16<Int32>(repeating: Int32(Swift.max(0, Swift.min(width, lower - key0))))
            let hi = SIMD16<Int32>(repeating: Int32(Swift.max(0, Swift.min(width, upper - key0))))
            for v in 0..<4 {
                let idx = Lanes.index &+ Int32(16 * v)
                let hidden = (idx .< lo) .| (idx .>= hi)
                let x = load16(seg + 16 * v).replacing(with: -.infinity, where: hidden)
                store16(seg + 16 * v, x)
                if v & 1 == 0 { mx0 = vmax(mx0, x) } else { mx1 = vmax(mx1, x) }
            }
        }
    }
    let tileMax = Lanes.maxLane(vmax(mx0, mx1))
    let mOld = rowMax.pointee
    let mNew = Swift.max(mOld, tileMax)
    if mNew == -.infinity {
        for slot in slots { (s + slot * width).update(repeating: 0, count: width) }
        return
    }
    if mNew > mOld {
        let alpha = mOld == -.infinity ? 0 : Lanes.exp2(mOld - mNew)
        rowSum.pointee *= alpha
        simdScale(output, alpha, valueStride)
        rowMax.pointee = mNew
    }
    let m = F16(repeating: mNew)
    var sum0 = F16(), sum1 = F16()
    for slot in slots {
        let seg = s + slot * width
        let key0 = panelList[slot] * width
        if !(key0 >= lower && key0 + width <= upper) {   // this panel was masked (−∞ lanes)
            for v in 0..<4 {
                let x = load16(seg + 16 * v)
                let e = Lanes.exp2(x - m).replacing(with: 0, where: x .== -.infinity)
                store16(seg + 16 * v, e)
                if v & 1 == 0 { sum0 += e } else { sum1 += e }
            }
        } else {
            let e0 = Lanes.exp2(load16(seg) - m), e1 = Lanes.exp2(load16(seg + 16) - m)
            let e2 = Lanes.exp2(load16(seg + 32) - m), e3 = Lanes.exp2(load16(seg + 48) - m)
            store16(seg, e0); store16(seg + 16, e1); store16(seg + 32, e2); store16(seg + 48, e3)
            sum0 += e0 + e2; sum1 += e1 + e3
        }
    }
    rowSum.pointee += Lanes.sumLanes(sum0 + sum1)
}

/// Per-worker scratch of the forward.
final class AttentionForwardScratch: @unchecked Sendable {
    let buffer: ScratchBuffer
    let queries, output, rowMax, rowSum, scores: UnsafeMutablePointer<Float>
    let panelList: UnsafeMutablePointer<Int>
    init(rows: Int, headDim: Int, valueDim: Int, panels: Int) {
        let dvPad = paddedTo16(valueDim)
        let sizes = [rows * headDim, rows * dvPad, rows, rows, attentionScoreScratchCount, 2 * Swift.max(panels, 1)]
        buffer = ScratchBuffer(count: sizes.map { ($0 + 15) & ~15 }.reduce(0, +), zeroed: false)
        var p = buffer.pointer
        func take(_ n: Int) -> UnsafeMutablePointer<Float> { defer { p += (n + 15) & ~15 }; return p }
        queries = take(sizes[0]); output = take(sizes[1]); rowMax = take(sizes[2]); rowSum = take(sizes[3])
        scores = take(sizes[4])
        panelList = UnsafeMutableRawPointer(take(sizes[5])).bindMemory(to: Int.self, capacity: Swift.max(panels, 1))
    }
}
