// Recurrent (decode) form of log-linear Mamba-2: one token per call, a Fenwick state per head.
//
//   x [B,1,H,P], dt [B,1,H], A [H], B and C [B,1,G,N], D [H], dt_bias [H], λ [B,1,H,L] (L ≥ levels
//   after this token); state [B,H,Lcap,P,N] holding the buckets of the previous token (Fenwick.swift).
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

/// Runs the tokens of `inputs` (x [B,T,H,P], …) from `state`, advancing it, and returns y [B,T,H,P].
/// T == 1 decodes with the Fenwick update above (O((1 + popcount t)·P·N) per head); T > 1 prefills
/// with the chunked forward from the state. `inputs.initialState` must be nil and
/// `inputs.startPosition` equal to `state.position`: the state carries both.
public func logLinearStep(_ inputs: LogLinearInputs, state: inout LogLinearDecodeState,
                          options: LogLinearOptions = LogLinearOptions()) -> Tensor {
    let function = "logLinearStep"
    if inputs.initialState != nil { fatalError("\(function): pass the state as `state`, not as inputs.initialState") }
    if inputs.startPosition != state.position {
        fatalError("\(function): inputs start at position \(inputs.startPosition) but the state holds \(state.position) tokens")
    }
    var chunk = inputs
    if state.position > 0 { chunk.initialState = state.levels }
    let s = chunk.validatedShape(function)
    if s.batch != state.batch || s.heads != state.heads || s.headDim != state.headDim || s.stateSize != state.stateSize {
        fatalError("\(function): inputs \(s) do not match the state [B=\(state.batch), H=\(state.heads), P=\(state.headDim), N=\(state.stateSize)]")
    }
    if s.length > 1 {
        let result = logLinearChunkedForward(chunk, options: options, returnFinalState: true)
        state = LogLinearDecodeState(levels: result.finalState!, position: state.position + s.length)
        return result.y
    }
    let (batch, H, P, N, G) = (s.batch, s.heads, s.headDim, s.stateSize, s.groups)
    let t = state.position
    state.reserve(tokens: t + 1)
    let Lcap = state.levelCount, L = s.lambdaLevels, size = P * N
    let levels = state.mutableLevels()
    var y = Tensor(uninitializedShape: [batch, 1, H, P])
    let yp = y.mutablePointer()
    withExtendedLifetime(inputs) {
        let inp = LogLinearPointers(inputs)
        // A head's update is a few P·N multiply-adds: fork only when there are enough of them.
        ZooThreads.parallelFor(batch * H, minChunk: max(1, 16_384 / size)) { range in
            // Old levels decay towards zero through the denormal range (LogLinearChunked.swift).
            let denormals = DenormalsFlushed()
            defer { denormals.restore() }
            for bh in range {
                let b = bh / H, h = bh % H, g = h / (H / G)
                let S = levels + bh * Lcap * size
                if t > 0 {
                    // The previous token and the full levels below the first zero bit of t−1 merge.
                    let k = t.trailingZeroBitCount
                    let target = S + (k + 1) * size
                    target.update(from: S, count: size)
                    if k >= 1 { for l in 1...k { simdAxpy(1, S + l * size, target, size) } }
                    S.update(repeating: 0, count: (k + 1) * size)
                }
                let delta = Float(softplusDouble(Double(inp.dt[bh] + inp.dtBias[h])))
                let decay = fastExp(delta * inp.A[h])
                let xRow = inp.x + bh * P, bRow = inp.B + (b * G + g) * N, cRow = inp.C + (b * G + g) * N
                let lam = inp.lambda + bh * L
                let out = yp + bh * P
                for p in 0..<P { out[p] = inp.D[h] * xRow[p] }
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
                // Level 0: the token itself, Δ x Bᵀ.
                let w0 = lam[0]
                for p in 0..<P {
                    let row = S + p * N
                    scaledCopy(bRow, delta * xRow[p], row, N)
                    out[p] += w0 * simdDot(row, cRow, N)
                }
            }
        }
    }
    state.advance()
    return y
}
