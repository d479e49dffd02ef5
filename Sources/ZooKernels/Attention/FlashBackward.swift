// Flash attention backward: recomputes the probabilities tile by tile from the saved lse.
//
//   in:  q [B,Tq,Hq,d], k [B,Tk,Hk,d], v [B,Tk,Hk,dv], o [B,Tq,Hq,dv], lse [B,Hq,Tq], dO [B,Tq,Hq,dv]
//   out: dq [B,Tq,Hq,d], dk [B,Tk,Hk,d], dv [B,Tk,Hk,dv]
//
//   D_i = Σ_c dO_ic o_ic                         (once per row, O(T·dv))
//   per tile (a block of query rows × a block of keys):
//     U  = Q'·Kᵀ  with Q' = q·scale (softcap c: q·scale/c, s = c·tanh U; otherwise s = U)
//     P  = exp(s − lse)          (0 where masked)
//     dP = dO·Vᵀ
//     dU = P ∘ (dP − D)          (softcap: ∘ c·(1 − tanh² U), the derivative of s w.r.t. U)
//     dV += Pᵀ·dO,  dK += dUᵀ·Q',  dQ' += dU·K        and finally dq = dQ'·(scale, or scale/c)
//
// Work is split by (batch, KV head, a residue class of key blocks): an item owns the dK, dV rows of
// its key blocks outright (the group's query heads are rows of the same tiles, so GQA sums over them
// inside the microkernel), and adds its dQ contributions into a private partial buffer; the
// partials are summed in a fixed order at the end. The number of classes depends on the shape only,
// so the result is the same for every thread count. Memory: packed copies of q, dO, k, v (each the
// size of its input) and the dQ partials — O(T·d), never a T×T matrix; the two score tiles are
// 96 × 128 floats per worker.
//
// Every product goes through the 6×64 microkernel on operands packed once per call:
//   U, dP    rows = queries, k = d (or dv), B = keys/values transposed in 64-key panels
//   dV, dK   rows = keys, k = query rows of the block, A = P or dU read column-wise
//   dQ'      rows = queries, k = keys the row group sees, B = key rows

import Foundation
import ZooTensor

/// Query rows per tile (a multiple of 6) and 64-key panels per key block.
let backwardRowBlock = 96
let backwardKeyPanels = 2
/// Keys per dV/dK product where a row block cuts the mask's edge (a multiple of 6, the microkernel's
/// row count): each chunk is multiplied over only the rows that see it.
let backwardDiagonalKeyChunk = 24

/// Flash attention backward (see the file comment). `output` and `logSumExp` are the forward's;
/// writes (overwrites) dq, dk, dv. Parallel; the result does not depend on the thread count.
public func flashAttentionBackward(
    q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
    output o: UnsafePointer<Float>, logSumExp lse: UnsafePointer<Float>, outputGradient dO: UnsafePointer<Float>,
    shape s: AttentionShape, options: AttentionOptions = AttentionOptions(),
    queryGradient dq: UnsafeMutablePointer<Float>, keyGradient dk: UnsafeMutablePointer<Float>,
    valueGradient dv: UnsafeMutablePointer<Float>
) {
    s.validate("flashAttentionBackward"); options.validate("flashAttentionBackward")
    let width = attentionPanelWidth
    let groups = s.batch * s.keyValueHeads
    let G = s.groupSize
    let rowsPerGroup = s.queryLength * G
    let d = s.headDim, dvDim = s.valueDim
    let dPad = paddedTo16(d), dvPad = paddedTo16(dvDim)
    let panelCount = (s.keyLength + width - 1) / width
    let paddedKeys = panelCount * width
    let keyBlockPanels = backwardKeyPanels
    let keyBlocks = (panelCount + keyBlockPanels - 1) / keyBlockPanels
    let scale = options.resolvedScale(headDim: d)
    let softcap = options.softcap
    let queryScale = softcap > 0 ? scale / softcap : scale
    let mask = AttentionMask(options: options, keyLength: s.keyLength)
    let offset = s.keyLength - s.queryLength

    if groups == 0 { return }
    if rowsPerGroup == 0 || s.keyLength == 0 {
        dq.update(repeating: 0, count: s.queryCount)
        dk.update(repeating: 0, count: s.keyCount)
        dv.update(repeating: 0, count: s.valueCount)
        return
    }

    // Residue classes of key blocks per group, decided by the shape alone. At least 16 items: on
    // a shared machine a worker slowed by a neighbour hands its share to the other
    // at this granularity; the price is one dQ partial (the size of dq) per class.
    let classes = Swift.max(1, Swift.min(keyBlocks, (16 + groups - 1) / groups))

    // Packed operands (all O(T·d)).
    let rowFloats = rowsPerGroup * dPad, rowValueFloats = rowsPerGroup * dvPad
    let queries = ScratchBuffer(count: groups * rowFloats, zeroed: false)          // Q' rows [g][row][dPad]
    let gradOut = ScratchBuffer(count: groups * rowValueFloats, zeroed: false)     // dO rows [g][row][dvPad]
    let rowStats = ScratchBuffer(count: groups * rowsPerGroup * 2, zeroed: false)  // lse, D per row
    let keysT = ScratchBuffer(count: groups * panelCount * d * width, zeroed: false)       // [g][p][d][64]
    let valuesT = ScratchBuffer(count: groups * panelCount * dvDim * width, zeroed: false) // [g][p][dv][64]
    let keyRows = ScratchBuffer(count: groups * paddedKeys * dPad, zeroed: false)         // [g][key][dPad]
    let partials = ScratchBuffer(count: classes * groups * rowFloats, zeroed: true)       // dQ' [c][g][row][dPad]

    let qp = SendablePointer(UnsafeMutablePointer(mutating: q)), kp = SendablePointer(UnsafeMutablePointer(mutating: k))
    let vp = SendablePointer(UnsafeMutablePointer(mutating: v)), op = SendablePointer(UnsafeMutablePointer(mutating: o))
    let lp = SendablePointer(UnsafeMutablePointer(mutating: lse)), gp = SendablePointer(UnsafeMutablePointer(mutating: dO))
    let Qp = SendablePointer(queries.pointer), dOp = SendablePointer(gradOut.pointer), stats = SendablePointer(rowStats.pointer)
    let Ktp = SendablePointer(keysT.pointer), Vtp = SendablePointer(valuesT.pointer), Kp = SendablePointer(keyRows.pointer)
    let partialp = SendablePointer(partials.pointer)
    let dqp = SendablePointer(dq), dkp = SendablePointer(dk), dvp = SendablePointer(dv)

    // Query side: Q' rows, dO rows, lse and D = rowsum(dO ∘ o) per row.
    let rowChunk = 64
    let rowChunks = (rowsPerGroup + rowChunk - 1) / rowChunk
    ZooThreads.parallelFor(groups * rowChunks) { range in
        for item in range {
            let g = item / rowChunks, chunk = item % rowChunks
            let b = g / s.keyValueHeads, kvh = g % s.keyValueHeads
            for row in chunk * rowChunk ..< Swift.min(rowsPerGroup, (chunk + 1) * rowChunk) {
                let t = row / G, h = kvh * G + row % G
                let qRow = qp.pointer + ((b * s.queryLength + t) * s.queryHeads + h) * d
                let Q = Qp.pointer + g * rowFloats + row * dPad
                for c in 0..<d { Q[c] = qRow[c] * queryScale }
                for c in d..<dPad { Q[c] = 0 }
                let gRow = gp.pointer + ((b * s.queryLength + t) * s.queryHeads + h) * dvDim
                let oRow = op.pointer + ((b * s.queryLength + t) * s.queryHeads + h) * dvDim
                let dOut = dOp.pointer + g * rowValueFloats + row * dvPad
                dOut.update(from: gRow, count: dvDim)
                (dOut + dvDim).update(repeating: 0, count: dvPad - dvDim)
                let stat = stats.pointer + (g * rowsPerGroup + row) * 2
                stat[0] = lp.pointer[(b * s.queryHeads + h) * s.queryLength + t]
                stat[1] = Lanes.dot(gRow, oRow, dvDim)
            }
        }
    }
    // Key side: keys and values transposed per panel, and key rows.
    ZooThreads.parallelFor(groups * panelCount) { range in
        for item in range {
            let g = item / panelCount, p = item % panelCount
            let b = g / s.keyValueHeads, kvh = g % s.keyValueHeads
            let kt = Ktp.pointer + (g * panelCount + p) * d * width
            let vt = Vtp.pointer + (g * panelCount + p) * dvDim * width
            let count = Swift.min(width, s.keyLength - p * width)
            let keyRow = { (j: Int) in UnsafePointer(kp.pointer + ((b * s.keyLength + p * width + j) * s.keyValueHeads + kvh) * d) }
            let valueRow = { (j: Int) in UnsafePointer(vp.pointer + ((b * s.keyLength + p * width + j) * s.keyValueHeads + kvh) * dvDim) }
            transposeRows(count, d, row: keyRow, into: kt, ldd: width)
            transposeRows(count, dvDim, row: valueRow, into: vt, ldd: width)
            if count < width {
                for c in 0..<d { (kt + c * width + count).update(repeating: 0, count: width - count) }
                for c in 0..<dvDim { (vt + c * width + count).update(repeating: 0, count: width - count) }
            }
            for j in 0..<width {
                let kRowOut = Kp.pointer + (g * paddedKeys + p * width + j) * dPad
                if j < count {
                    kRowOut.update(from: keyRow(j), count: d)
                    if dPad > d { (kRowOut + d).update(repeating: 0, count: dPad - d) }
                } else {
                    kRowOut.update(repeating: 0, count: dPad)
                }
            }
        }
    }

    // Rows (t-major (t, member) pairs) that can see some key in [k0, k1): a contiguous run, since
    // both ends of a row's interval grow with t.
    func visibleRows(_ k0: Int, _ k1: Int) -> Range<Int> {
        var lo = 0, hi = s.queryLength
        while lo < hi { let mid = (lo + hi) / 2; if mask.interval(position: mid + offset).upper > k0 { hi = mid } else { lo = mid + 1 } }
        let tStart = lo
        hi = s.queryLength
        while lo < hi { let mid = (lo + hi) / 2; if mask.interval(position: mid + offset).lower >= k1 { hi = mid } else { lo = mid + 1 } }
        return (tStart * G) ..< (lo * G)
    }

    let rowBlock = backwardRowBlock
    let keyBlockWidth = keyBlockPanels * width
    forEachItem(groups * classes, makeScratch: {
        AttentionBackwardScratch(rows: rowBlock, keys: keyBlockWidth, headDim: dPad, valueDim: dvPad)
    }) { item, scratch in
        let g = item / classes, cls = item % classes
        let b = g / s.keyValueHeads, kvh = g % s.keyValueHeads
        let Q = Qp.pointer + g * rowFloats, dOut = dOp.pointer + g * rowValueFloats
        let rowStat = stats.pointer + g * rowsPerGroup * 2
        let dQ = partialp.pointer + (cls * groups + g) * rowFloats
        let ldS = keyBlockWidth
        let S = scratch.scores, dP = scratch.gradScores
        var block = cls
        while block < keyBlocks {
            let p0 = block * keyBlockPanels
            let panels = Swift.min(keyBlockPanels, panelCount - p0)
            let k0 = p0 * width, k1 = k0 + panels * width
            let keys = panels * width
            let dK = scratch.keyGrad, dV = scratch.valueGrad
            dK.update(repeating: 0, count: keys * dPad)
            dV.update(repeating: 0, count: keys * dvPad)
            let rows = visibleRows(k0, Swift.min(k1, s.keyLength))
            var rowStart = rows.lowerBound
            while rowStart < rows.upperBound {
                let blockRows = Swift.min(rowBlock, rows.upperBound - rowStart)
                var r0 = 0
                while r0 < blockRows {
                    let groupRows = Swift.min(6, blockRows - r0)
                    // The panels of this key block that some row of the 6 can see.
                    var groupLo = Int.max, groupHi = Int.min
                    for r in 0..<groupRows {
                        let (lo, hi) = mask.interval(position: (rowStart + r0 + r) / G + offset)
                        if hi > lo { groupLo = Swift.min(groupLo, lo); groupHi = Swift.max(groupHi, hi) }
                    }
                    var first = panels, last = 0
                    if groupHi > groupLo {
                        for c in 0..<panels {
                            let key0 = k0 + c * width
                            if key0 < groupHi && key0 + width > groupLo { first = Swift.min(first, c); last = c + 1 }
                        }
                    }
                    scratch.groupFirst[r0 / 6] = first
                    scratch.groupLast[r0 / 6] = last
                    scratch.groupEnd[r0 / 6] = groupHi
                    let qRows = Q + (rowStart + r0) * dPad, gRows = dOut + (rowStart + r0) * dvPad
                    if first < last {
                        for c in first..<last {
                            // Only the 16-key chunks the group sees of a diagonal panel; the rest
                            // is masked to 0 by gradientRow.
                            let columns = Swift.min(width, (groupHi - (k0 + c * width) + 15) & ~15)
                            tileMultiply(m: groupRows, n: columns, k: d, a: qRows, aRowStride: dPad, aStep: 1,
                                         b: Ktp.pointer + (g * panelCount + p0 + c) * d * width, ldb: width,
                                         c: S + r0 * ldS + c * width, ldc: ldS, accumulate: false)
                            tileMultiply(m: groupRows, n: columns, k: dvDim, a: gRows, aRowStride: dvPad, aStep: 1,
                                         b: Vtp.pointer + (g * panelCount + p0 + c) * dvDim * width, ldb: width,
                                         c: dP + r0 * ldS + c * width, ldc: ldS, accumulate: false)
                        }
                    }
                    for r in 0..<groupRows {
                        let row = rowStart + r0 + r
                        let (lo, hi) = mask.interval(position: row / G + offset)
                        gradientRow(S + (r0 + r) * ldS, dP + (r0 + r) * ldS, keys: keys, key0: k0,
                                    first: first, last: last, lower: lo, upper: hi,
                                    logSumExp: rowStat[row * 2], delta: rowStat[row * 2 + 1], softcap: softcap)
                    }
                    r0 += 6
                }
                // dV += Pᵀ·dO and dK += dUᵀ·Q' over the block's rows. Where the block's rows all
                // see all its keys, in one pass; where they cut the mask's edge (the causal
                // diagonal), key chunk by key chunk over only the rows that see some key of the
                // chunk: the others have P = dU = 0 there, so the sums are the same, and the
                // diagonal's triangle (a fifth of these products at T = 512) is not multiplied.
                let blockEnd = rowStart + blockRows
                let lastKey = Swift.min(k1, s.keyLength)
                // Intervals are contiguous and move forward with the row, so every row sees every
                // key of the block when every row sees its first and its last key.
                let seeFirst = visibleRows(k0, k0 + 1), seeLast = visibleRows(lastKey - 1, lastKey)
                let allSeen = seeFirst.lowerBound <= rowStart && blockEnd <= seeFirst.upperBound
                    && seeLast.lowerBound <= rowStart && blockEnd <= seeLast.upperBound
                let keyChunk = allSeen ? keys : backwardDiagonalKeyChunk
                var j0 = 0
                while j0 < keys {
                    let j1 = Swift.min(keys, j0 + keyChunk)
                    var seen = rowStart ..< blockEnd
                    if !allSeen {
                        let chunkRows = k0 + j0 < s.keyLength ? visibleRows(k0 + j0, Swift.min(k0 + j1, s.keyLength)) : 0..<0
                        seen = seen.clamped(to: chunkRows)
                    }
                    if !seen.isEmpty {
                        let a0 = seen.lowerBound - rowStart
                        tileMultiply(m: j1 - j0, n: dvPad, k: seen.count, a: S + a0 * ldS + j0, aRowStride: 1, aStep: ldS,
                                     b: dOut + seen.lowerBound * dvPad, ldb: dvPad, c: dV + j0 * dvPad, ldc: dvPad, accumulate: true)
                        tileMultiply(m: j1 - j0, n: dPad, k: seen.count, a: dP + a0 * ldS + j0, aRowStride: 1, aStep: ldS,
                                     b: Q + seen.lowerBound * dPad, ldb: dPad, c: dK + j0 * dPad, ldc: dPad, accumulate: true)
                    }
                    j0 = j1
                }
                // dQ' += dU·K over the panels each row group sees.
                r0 = 0
                while r0 < blockRows {
                    let groupRows = Swift.min(6, blockRows - r0)
                    let first = scratch.groupFirst[r0 / 6], last = scratch.groupLast[r0 / 6]
                    if first < last {
                        // Keys past the group's last visible one have dU = 0: leave them out.
                        let keys = Swift.min((last - first) * width, scratch.groupEnd[r0 / 6] - (k0 + first * width))
                        tileMultiply(m: groupRows, n: dPad, k: keys,
                                     a: dP + r0 * ldS + first * width, aRowStride: ldS, aStep: 1,
                                     b: Kp.pointer + (g * paddedKeys + k0 + first * width) * dPad, ldb: dPad,
                                     c: dQ + (rowStart + r0) * dPad, ldc: dPad, accumulate: true)
                    }
                    r0 += 6
                }
                rowStart += blockRows
            }
            // This item owns these keys' gradients: write them out.
            for j in 0..<Swift.min(keys, s.keyLength - k0) {
                let key = k0 + j
                let dkRow = dkp.pointer + ((b * s.keyLength + key) * s.keyValueHeads + kvh) * d
                let dvRow = dvp.pointer + ((b * s.keyLength + key) * s.keyValueHeads + kvh) * dvDim
                dkRow.update(from: dK + j * dPad, count: d)
                dvRow.update(from: dV + j * dvPad, count: dvDim)
            }
            block += classes
        }
    }

    // dq = scale' · Σ_classes dQ' (in class order).
    ZooThreads.parallelFor(groups * rowChunks) { range in
        for item in range {
            let g = item / rowChunks, chunk = item % rowChunks
            let b = g / s.keyValueHeads, kvh = g % s.keyValueHeads
            for row in chunk * rowChunk ..< Swift.min(rowsPerGroup, (chunk + 1) * rowChunk) {
                let t = row / G, h = kvh * G + row % G
                let out = dqp.pointer + ((b * s.queryLength + t) * s.queryHeads + h) * d
                let first = partialp.pointer + g * rowFloats + row * dPad
                for c in 0..<d { out[c] = first[c] }
                for cls in 1..<classes {
                    let part = first + cls * groups * rowFloats
                    for c in 0..<d { out[c] += part[c] }
                }
                for c in 0..<d { out[c] *= queryScale }
            }
        }
    }
    withExtendedLifetime((queries, gradOut, rowStats, keysT, valuesT, keyRows, partials)) {}
}

/// One row of a tile: P = exp(s − lse) into `scores`, dU = P ∘ (dP − D) (∘ softcap derivative)
/// into `gradScores`; zero outside the row's visible keys and in panels not computed.
@inline(__always)
private func gradientRow(
    _ scores: UnsafeMutablePointer<Float>, _ gradScores: UnsafeMutablePointer<Float>,
    keys: Int, key0: Int, first: Int, last: Int, lower: Int, upper: Int,
    logSumExp: Float, delta: Float, softcap: Float
) {
    let width = attentionPanelWidth
    if first >= last || lower >= upper {
        scores.update(repeating: 0, count: keys)
        gradScores.update(repeating: 0, count: keys)
        return
    }
    if first > 0 {
        scores.update(repeating: 0, count: first * width)
        gradScores.update(repeating: 0, count: first * width)
    }
    if last * width < keys {
        (scores + last * width).update(repeating: 0, count: keys - last * width)
        (gradScores + last * width).update(repeating: 0, count: keys - last * width)
    }
    // P = exp(s − lse) = 2^(s·log2 e − lse·log2 e): one FMA, then the cheaper exp2.
    let log2e = F16(repeating: Lanes.log2e), minusLse2 = F16(repeating: -logSumExp * Lanes.log2e)
    let D = F16(repeating: delta), cap = F16(repeating: softcap), capLog2e = F16(repeating: softcap * Lanes.log2e)
    for c in first..<last {
        let panelKey0 = key0 + c * width
        let full = panelKey0 >= lower && panelKey0 + width <= upper
        let lo = SIMD16<Int32>(repeating: Int32(Swift.max(0, Swift.min(width, lower - panelKey0))))
        let hi = SIMD16<Int32>(repeating: Int32(Swift.max(0, Swift.min(width, upper - panelKey0))))
        let sRow = scores + c * width, gRow = gradScores + c * width
        for v in 0..<4 {
            let u = load16(sRow + 16 * v)
            var p: F16, dU: F16
            if softcap > 0 {
                let t = Lanes.tanh(u)
                p = Lanes.exp2(minusLse2.addingProduct(t, capLog2e))
                dU = p * (load16(gRow + 16 * v) - D) * (cap - cap * t * t)
            } else {
                p = Lanes.exp2(minusLse2.addingProduct(u, log2e))
                dU = p * (load16(gRow + 16 * v) - D)
            }
            if !full {
                // Masked lanes (and chunks of a diagonal panel that were never computed, which
                // may hold anything, NaN included) must be exactly 0 in both.
                let idx = Lanes.index &+ Int32(16 * v)
                let hidden = (idx .< lo) .| (idx .>= hi)
                p = p.replacing(with: 0, where: hidden)
                dU = dU.replacing(with: 0, where: hidden)
            }
            store16(sRow + 16 * v, p)
            store16(gRow + 16 * v, dU)
        }
    }
}

/// Per-worker scratch of the backward: two score tiles, the key block's dK and dV, and each row
/// group's range of computed panels and its last visible key (+1).
final class AttentionBackwardScratch: @unchecked Sendable {
    let buffer: ScratchBuffer
    let scores, gradScores, keyGrad, valueGrad: UnsafeMutablePointer<Float>
    let groupFirst, groupLast, groupEnd: UnsafeMutablePointer<Int>
    init(rows: Int, keys: Int, headDim: Int, valueDim: Int) {
        let groups = (rows + 5) / 6
        buffer = ScratchBuffer(count: 2 * rows * keys + keys * (headDim + valueDim) + 6 * groups, zeroed: false)
        scores = buffer.pointer
        gradScores = scores + rows * keys
        keyGrad = gradScores + rows * keys
        valueGrad = keyGrad + keys * headDim
        let ints = UnsafeMutableRawPointer(valueGrad + keys * valueDim).bindMemory(to: Int.self, capacity: 3 * groups)
        groupFirst = ints
        groupLast = ints + groups
        groupEnd = ints + 2 * groups
    }
}
