// Recurrent (decode) form of log-linear Mamba-2: one token per call, a Fenwick state per head.
//
//   x [B,H,P], dt [B,H], A [H], B and C [B,G,N], D [H], dt_bias [H], λ [B,H,L] (L ≥ levels after
//   this token); state [B,H,Lcap,P,N] holding the buckets of the previous token (Fenwick.swift).
//   For the token at position t:
//     merge:  S_{k+1} = Σ_{ℓ ≤ k} S_ℓ, S_0…S_k = 0, with k = ctz(t) (the previous token and the full
//             levels below the first zero bit of t−1 become one bucket; skipped for t = 0)
//     decay:  S_ℓ ← e^{Δ_t A} S_ℓ for every occupied level
//     write:  S_0 = Δ_t x_t B_tᵀ
//     output: y_t = Σ_ℓ λ_t[ℓ] S_ℓ C_t + D x_t
//   After the token, 1 + popcount(t) levels are occupied; the state holds ⌈log₂(t+1)⌉ + 1 slots.

import Foundation
import ZooTensor

/// The Fenwick decode state: per (batch, head) one [P, N] matrix per level, for the tokens consumed
/// so far. Grows by one level each time the token count passes a power of two (O(log T) bytes);
/// unoccupied levels hold zeros.
public struct LogLinearDecodeState: Sendable {
    public let batch: Int, heads: Int, headDim: Int, stateSize: Int
    /// Tokens consumed.
    public private(set) var position: Int
    /// [B, H, logLinearLevelCount(tokens: position), P, N].
    public private(set) var levels: Tensor

    public init(batch: Int, heads: Int, headDim: Int, stateSize: Int) {
        self.batch = batch; self.heads = heads; self.headDim = headDim; self.stateSize = stateSize
        position = 0
        levels = Tensor(uninitializedShape: [batch, heads, 0, headDim, stateSize])
    }

    /// Adopts a state produced by the chunked kernel (its final state after `position` tokens).
    public init(levels: Tensor, position: Int) {
        if levels.rank != 5 || levels.shape[2] != logLinearLevelCount(tokens: position) {
            fatalError("LogLinearDecodeState(levels:position:): levels \(levels.shape) must be [B, H, \(logLinearLevelCount(tokens: position)), P, N] after \(position) tokens")
        }
        batch = levels.shape[0]; heads = levels.shape[1]; headDim = levels.shape[3]; stateSize = levels.shape[4]
        self.position = position
        self.levels = levels
    }

    public var levelCount: Int { levels.shape[2] }
    /// Bytes of tensor storage held now (measured from the storage, not a formula).
    public var byteCount: Int { levels.byteCount }
    /// The analytic size after `tokens` tokens: B·H·(⌈log₂ tokens⌉ + 1)·P·N floats.
    public static func analyticByteCount(batch: Int, heads: Int, headDim: Int, stateSize: Int, tokens: Int) -> Int {
        batch * heads * logLinearLevelCount(tokens: tokens) * headDim * stateSize * MemoryLayout<Float>.stride
    }

    /// Number of levels of head (b, h) holding any non-zero value (measured from the data).
    public func nonEmptyLevelCount(batch b: Int, head h: Int) -> Int {
        let size = headDim * stateSize, base = (b * heads + h) * levelCount * size
        var count = 0
        for l in 0..<levelCount {
            let p = levels.pointer + base + l * size
            if (0..<size).contains(where: { p[$0] != 0 }) { count += 1 }
        }
        return count
    }

    /// Makes room for the levels needed after `tokens` tokens (copying the old ones).
    mutating func reserve(tokens: Int) {
        let needed = logLinearLevelCount(tokens: tokens), old = levelCount
        if needed <= old { return }
        let size = headDim * stateSize
        var grown = Tensor.zeros([batch, heads, needed, headDim, stateSize])
        let dst = grown.mutablePointer(), src = levels.pointer
        for bh in 0..<(batch * heads) {
            (dst + bh * needed * size).update(from: src + bh * old * size, count: old * size)
        }
        levels = grown
    }

    mutating func advance() { position += 1 }
    mutating func mutableLevels() -> UnsafeMutablePointer<Float> { levels.mutablePointer() }
}

/// One decode step. Returns y [B, H, P] and advances `state` by one token.
public func logLinearStep(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, dtBias: Tensor,
                          lambda: Tensor, state: inout LogLinearDecodeState) -> Tensor {
    let (batch, H, P, N) = (state.batch, state.heads, state.headDim, state.stateSize)
    let G = B.rank == 3 ? B.shape[1] : 0
    let t = state.position
    let needed = logLinearLevelCount(tokens: t + 1)
    if x.shape != [batch, H, P] || dt.shape != [batch, H] || A.shape != [H] || D.shape != [H] || dtBias.shape != [H]
        || G < 1 || H % G != 0 || B.shape != [batch, G, N] || C.shape != [batch, G, N]
        || lambda.rank != 3 || lambda.shape[0] != batch || lambda.shape[1] != H || lambda.shape[2] < needed {
        fatalError("logLinearStep: expected x [\(batch),\(H),\(P)], dt [\(batch),\(H)], A/D/dt_bias [\(H)], B/C [\(batch),G,\(N)] with G | \(H), λ [\(batch),\(H),≥\(needed)]; got x \(x.shape), dt \(dt.shape), A \(A.shape), D \(D.shape), dt_bias \(dtBias.shape), B \(B.shape), C \(C.shape), λ \(lambda.shape)")
    }
    state.reserve(tokens: t + 1)
    let Lcap = state.levelCount, L = lambda.shape[2], size = P * N
    let levels = SendablePointer(state.mutableLevels())
    var y = Tensor(uninitializedShape: [batch, H, P])
    let yp = SendablePointer(y.mutablePointer())
    let xp = x.pointer, dtp = dt.pointer, ap = A.pointer, bp = B.pointer, cp = C.pointer
    let dp = D.pointer, biasp = dtBias.pointer, lp = lambda.pointer
    let px = SendablePointer(UnsafeMutablePointer(mutating: xp)), pdt = SendablePointer(UnsafeMutablePointer(mutating: dtp))
    let pa = SendablePointer(UnsafeMutablePointer(mutating: ap)), pb = SendablePointer(UnsafeMutablePointer(mutating: bp))
    let pc = SendablePointer(UnsafeMutablePointer(mutating: cp)), pd = SendablePointer(UnsafeMutablePointer(mutating: dp))
    let pbias = SendablePointer(UnsafeMutablePointer(mutating: biasp)), pl = SendablePointer(UnsafeMutablePointer(mutating: lp))
    ZooThreads.parallelFor(batch * H) { range in
        for bh in range {
            let b = bh / H, h = bh % H, g = h / (H / G)
            let S = levels.pointer + bh * Lcap * size
            if t > 0 {
                let k = t.trailingZeroBitCount
                let target = S + (k + 1) * size
                target.update(from: S, count: size)
                for l in 1...max(k, 1) where l <= k { simdAxpy(1, S + l * size, target, size) }
                S.update(repeating: 0, count: (k + 1) * size)
            }
            let delta = scalarSoftplus(pdt[bh] + pbias[h])
            let decay = Float(exp(Double(delta * pa[h])))
            let xRow = px.pointer + bh * P, bRow = pb.pointer + (b * G + g) * N, cRow = pc.pointer + (b * G + g) * N
            let lam = pl.pointer + bh * L
            let out = yp.pointer + bh * P
            for p in 0..<P { out[p] = pd[h] * xRow[p] }
            // Occupied levels ℓ ≥ 1 (bit ℓ−1 of t set): decay, then read out.
            var bits = t, l = 1
            while bits != 0 {
                if bits & 1 == 1 {
                    let Sl = S + l * size, w = lam[l]
                    for p in 0..<P {
                        let row = Sl + p * N
                        simdScale(row, decay, N)
                        out[p] += w * simdDot(row, cRow, N)
                    }
                }
                bits >>= 1; l += 1
            }
            // Level 0: the token itself, Δ x Bᵀ (read out as Δ (B·C) x, no need to decay).
            let w0 = lam[0], bc = simdDot(bRow, cRow, N)
            for p in 0..<P {
                let row = S + p * N, v = delta * xRow[p]
                for n in 0..<N { row[n] = v * bRow[n] }
                out[p] += w0 * v * bc
            }
        }
    }
    state.advance()
    return y
}

/// softplus for one Float, computed in Double (decode and per-token setup, not a hot vector loop).
@inline(__always) func scalarSoftplus(_ v: Float) -> Float {
    let d = Double(v)
    return Float(d > 30 ? d : log1p(exp(d)))
}
