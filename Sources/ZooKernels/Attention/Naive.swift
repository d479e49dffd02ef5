// Naive attention: the executable spec. Materialises the whole score matrix of a head in Double.
//
//   q [B, Tq, Hq, d]   k [B, Tk, Hk, d]   v [B, Tk, Hk, dv]   →   o [B, Tq, Hq, dv], lse [B, Hq, Tq]
//
//   x_ij = q_i·k_j;  s_ij = scale·x_ij (softcap c: s_ij = c·tanh(scale·x_ij / c)); masked s_ij = −∞
//   p_ij = exp(s_ij − lse_i), lse_i = log Σ_j exp(s_ij);  o_i = Σ_j p_ij v_j
// Backward, from dO:
//   dv_j = Σ_i p_ij dO_i;  dp_ij = dO_i·v_j;  ds_ij = p_ij (dp_ij − Σ_j' p_ij' dp_ij')
//   dx_ij = ds_ij · ∂s/∂x = ds_ij · scale · (1 − tanh²(scale·x_ij / c))   (no softcap: ds_ij · scale)
//   dq_i = Σ_j dx_ij k_j;  dk_j = Σ_i dx_ij q_i  (summed over the query heads sharing the KV head)
// Nothing here is tiled or clever: every number is computed the obvious way, in Double, so the fast
// kernels have something trustworthy to be compared with. Memory: one Tq×Tk Double matrix per
// worker, allocated as a ScratchBuffer so MemoryMeter sees it.

import Foundation
import ZooTensor

/// Naive attention forward in Double (the spec). Writes `output` [B,Tq,Hq,dv] and `logSumExp`
/// [B,Hq,Tq]; a query that sees no key gets o = 0 and lse = −∞.
public func naiveAttentionForward(
    q: UnsafePointer<Double>, k: UnsafePointer<Double>, v: UnsafePointer<Double>,
    shape: AttentionShape, options: AttentionOptions = AttentionOptions(),
    output: UnsafeMutablePointer<Double>, logSumExp: UnsafeMutablePointer<Double>
) {
    shape.validate("naiveAttentionForward"); options.validate("naiveAttentionForward")
    let s = shape
    let (q, k, v) = (SendablePointer(UnsafeMutablePointer(mutating: q)), SendablePointer(UnsafeMutablePointer(mutating: k)),
                     SendablePointer(UnsafeMutablePointer(mutating: v)))
    let (o, lse) = (SendablePointer(output), SendablePointer(logSumExp))
    ZooThreads.parallelFor(s.batch * s.queryHeads) { range in
        let matrix = DoubleScratch(count: s.queryLength * s.keyLength)
        for item in range {
            let b = item / s.queryHeads, h = item % s.queryHeads
            let p = matrix.pointer
            naiveProbabilities(q.pointer, k.pointer, s, options, b, h, p, lse.pointer + (b * s.queryHeads + h) * s.queryLength)
            for i in 0..<s.queryLength {
                let oRow = o.pointer + ((b * s.queryLength + i) * s.queryHeads + h) * s.valueDim
                for c in 0..<s.valueDim { oRow[c] = 0 }
                for j in 0..<s.keyLength {
                    let pij = p[i * s.keyLength + j]
                    if pij == 0 { continue }
                    let vRow = v.pointer + ((b * s.keyLength + j) * s.keyValueHeads + h / s.groupSize) * s.valueDim
                    for c in 0..<s.valueDim { oRow[c] += pij * vRow[c] }
                }
            }
        }
    }
}

/// Naive attention backward in Double: recomputes everything from q, k, v and dO (it needs
/// neither o nor lse) and writes dq, dk, dv (overwritten).
public func naiveAttentionBackward(
    q: UnsafePointer<Double>, k: UnsafePointer<Double>, v: UnsafePointer<Double>,
    outputGradient dO: UnsafePointer<Double>,
    shape: AttentionShape, options: AttentionOptions = AttentionOptions(),
    queryGradient dq: UnsafeMutablePointer<Double>, keyGradient dk: UnsafeMutablePointer<Double>,
    valueGradient dv: UnsafeMutablePointer<Double>
) {
    shape.validate("naiveAttentionBackward"); options.validate("naiveAttentionBackward")
    let s = shape
    let scale = Double(options.resolvedScale(headDim: s.headDim))
    let cap = Double(options.softcap)
    let (q, k, v, dO) = (SendablePointer(UnsafeMutablePointer(mutating: q)), SendablePointer(UnsafeMutablePointer(mutating: k)),
                         SendablePointer(UnsafeMutablePointer(mutating: v)), SendablePointer(UnsafeMutablePointer(mutating: dO)))
    let (dqP, dkP, dvP) = (SendablePointer(dq), SendablePointer(dk), SendablePointer(dv))
    dq.update(repeating: 0, count: s.queryCount)
    dk.update(repeating: 0, count: s.keyCount)
    dv.update(repeating: 0, count: s.valueCount)
    // One item per (batch, KV head): the query heads of a group add into the same dk, dv rows.
    ZooThreads.parallelFor(s.batch * s.keyValueHeads) { range in
        let matrix = DoubleScratch(count: s.queryLength * s.keyLength)
        let lseRow = DoubleScratch(count: s.queryLength)
        let dpRow = DoubleScratch(count: s.keyLength)
        for item in range {
            let b = item / s.keyValueHeads, kvh = item % s.keyValueHeads
            for h in kvh * s.groupSize ..< (kvh + 1) * s.groupSize {
                let p = matrix.pointer
                naiveProbabilities(q.pointer, k.pointer, s, options, b, h, p, lseRow.pointer)
                for i in 0..<s.queryLength {
                    let qRow = q.pointer + ((b * s.queryLength + i) * s.queryHeads + h) * s.headDim
                    let dqRow = dqP.pointer + ((b * s.queryLength + i) * s.queryHeads + h) * s.headDim
                    let dORow = dO.pointer + ((b * s.queryLength + i) * s.queryHeads + h) * s.valueDim
                    let pRow = p + i * s.keyLength
                    var rowDot = 0.0
                    for j in 0..<s.keyLength where pRow[j] != 0 {
                        let vRow = v.pointer + ((b * s.keyLength + j) * s.keyValueHeads + kvh) * s.valueDim
                        let dvRow = dvP.pointer + ((b * s.keyLength + j) * s.keyValueHeads + kvh) * s.valueDim
                        var dp = 0.0
                        for c in 0..<s.valueDim { dp += dORow[c] * vRow[c]; dvRow[c] += pRow[j] * dORow[c] }
                        dpRow.pointer[j] = dp
                        rowDot += pRow[j] * dp
                    }
                    for j in 0..<s.keyLength where pRow[j] != 0 {
                        let ds = pRow[j] * (dpRow.pointer[j] - rowDot)
                        let kRow = k.pointer + ((b * s.keyLength + j) * s.keyValueHeads + kvh) * s.headDim
                        let dkRow = dkP.pointer + ((b * s.keyLength + j) * s.keyValueHeads + kvh) * s.headDim
                        var dx = ds * scale
                        if cap > 0 {
                            var x = 0.0
                            for c in 0..<s.headDim { x += qRow[c] * kRow[c] }
                            let t = tanh(scale * x / cap)
                            dx *= 1 - t * t
                        }
                        for c in 0..<s.headDim { dqRow[c] += dx * kRow[c]; dkRow[c] += dx * qRow[c] }
                    }
                }
            }
        }
    }
}

/// Float32 entry points: convert to Double, run the spec, convert back (the conversions are
/// counted scratch as well).
public func naiveAttentionForward(
    q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
    shape: AttentionShape, options: AttentionOptions = AttentionOptions(),
    output: UnsafeMutablePointer<Float>, logSumExp: UnsafeMutablePointer<Float>
) {
    shape.validate("naiveAttentionForward")
    let (qd, kd, vd) = (DoubleScratch(copying: q, shape.queryCount), DoubleScratch(copying: k, shape.keyCount),
                        DoubleScratch(copying: v, shape.valueCount))
    let od = DoubleScratch(count: shape.outputCount), ld = DoubleScratch(count: shape.logSumExpCount)
    naiveAttentionForward(q: qd.pointer, k: kd.pointer, v: vd.pointer, shape: shape, options: options,
                          output: od.pointer, logSumExp: ld.pointer)
    od.write(to: output, shape.outputCount)
    ld.write(to: logSumExp, shape.logSumExpCount)
}

public func naiveAttentionBackward(
    q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
    outputGradient dO: UnsafePointer<Float>,
    shape: AttentionShape, options: AttentionOptions = AttentionOptions(),
    queryGradient dq: UnsafeMutablePointer<Float>, keyGradient dk: UnsafeMutablePointer<Float>,
    valueGradient dv: UnsafeMutablePointer<Float>
) {
    shape.validate("naiveAttentionBackward")
    let (qd, kd, vd) = (DoubleScratch(copying: q, shape.queryCount), DoubleScratch(copying: k, shape.keyCount),
                        DoubleScratch(copying: v, shape.valueCount))
    let dod = DoubleScratch(copying: dO, shape.outputCount)
    let (dqd, dkd, dvd) = (DoubleScratch(count: shape.queryCount), DoubleScratch(count: shape.keyCount),
                           DoubleScratch(count: shape.valueCount))
    naiveAttentionBackward(q: qd.pointer, k: kd.pointer, v: vd.pointer, outputGradient: dod.pointer,
                           shape: shape, options: options,
                           queryGradient: dqd.pointer, keyGradient: dkd.pointer, valueGradient: dvd.pointer)
    dqd.write(to: dq, shape.queryCount)
    dkd.write(to: dk, shape.keyCount)
    dvd.write(to: dv, shape.valueCount)
}

/// p[i, j] = softmax over visible j of s_ij for query head h of batch b; writes lse[i] (the
/// caller passes the row of lse for (b, h)).
private func naiveProbabilities(
    _ q: UnsafePointer<Double>, _ k: UnsafePointer<Double>, _ s: AttentionShape, _ options: AttentionOptions,
    _ b: Int, _ h: Int, _ p: UnsafeMutablePointer<Double>, _ lse: UnsafeMutablePointer<Double>
) {
    let scale = Double(options.resolvedScale(headDim: s.headDim))
    let cap = Double(options.softcap)
    let mask = AttentionMask(options: options, keyLength: s.keyLength)
    let kvh = h / s.groupSize
    for i in 0..<s.queryLength {
        let qRow = q + ((b * s.queryLength + i) * s.queryHeads + h) * s.headDim
        let pRow = p + i * s.keyLength
        let position = i + s.keyLength - s.queryLength
        var m = -Double.infinity
        for j in 0..<s.keyLength {
            guard mask.isVisible(position: position, key: j) else { pRow[j] = -.infinity; continue }
            let kRow = k + ((b * s.keyLength + j) * s.keyValueHeads + kvh) * s.headDim
            var x = 0.0
            for c in 0..<s.headDim { x += qRow[c] * kRow[c] }
            let score = cap > 0 ? cap * tanh(scale * x / cap) : scale * x
            pRow[j] = score
            m = max(m, score)
        }
        let lseIndex = i
        if m == -.infinity {
            for j in 0..<s.keyLength { pRow[j] = 0 }
            lse[lseIndex] = -.infinity
            continue
        }
        var sum = 0.0
        for j in 0..<s.keyLength {
            let e = pRow[j] == -.infinity ? 0 : exp(pRow[j] - m)
            pRow[j] = e
            sum += e
        }
        for j in 0..<s.keyLength { pRow[j] /= sum }
        lse[lseIndex] = m + log(sum)
    }
}

/// Double scratch memory counted by MemoryMeter (a ScratchBuffer of twice the floats).
final class DoubleScratch {
    private let buffer: ScratchBuffer
    let pointer: UnsafeMutablePointer<Double>
    init(count: Int) {
        buffer = ScratchBuffer(count: 2 * max(count, 1), zeroed: false)
        pointer = UnsafeMutableRawPointer(buffer.pointer).bindMemory(to: Double.self, capacity: max(count, 1))
        pointer.initialize(repeating: 0, count: count)
    }
    convenience init(copying source: UnsafePointer<Float>, _ count: Int) {
        self.init(count: count)
        for i in 0..<count { pointer[i] = Double(source[i]) }
    }
    func write(to destination: UnsafeMutablePointer<Float>, _ count: Int) {
        for i in 0..<count { destination[i] = Float(pointer[i]) }
    }
}
