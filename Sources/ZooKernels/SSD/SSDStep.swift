// SSD decode: advance a state [B,H,P,N] by the tokens of `inputs` (x [B,T,H,P], …).
//
//   T == 1 (decode), per (batch, head):
//     Δ = softplus(dt + dtBias_h);  S ← e^{Δ A_h} S + (Δ x) Bᵀ;  y = S C + D_h x      O(P·N)
//   T > 1 (prefill a chunk from a state): the chunked forward with h0 = state, state ← h_T.
//
// The state is the whole decoding memory: B·H·P·N floats, constant in T.
import Foundation
import ZooTensor

/// Runs the tokens of `inputs` from `state` ([B,H,P,N], updated in place) and returns y
/// [B,T,H,P]. `inputs.initialState` must be nil: the state argument is the initial state.
public func ssdStep(_ inputs: SSDInputs, state: inout Tensor, options: SSDOptions = SSDOptions()) -> Tensor {
    let s = inputs.validatedShape("ssdStep")
    if inputs.initialState != nil { fatalError("ssdStep: pass the state as `state`, not as inputs.initialState") }
    if state.shape != s.stateShape { fatalError("ssdStep: state is \(describe(state.shape)), expected \(describe(s.stateShape))") }
    if s.length > 1 {
        var chunk = inputs
        chunk.initialState = state
        let result = ssdChunkedForward(chunk, options: options)
        state = result.finalState
        return result.y
    }
    let (H, P, N, G) = (s.heads, s.headDim, s.stateSize, s.groups)
    var y = Tensor(uninitializedShape: s.xShape)
    let yp = y.mutablePointer(), sp = state.mutablePointer()
    let deltas = ScratchBuffer(count: 2 * s.batch * H, zeroed: false)
    withExtendedLifetime((inputs, deltas)) {
        let inp = SSDPointers(inputs)
        let raw = deltas.pointer + s.batch * H
        for bh in 0..<(s.batch * H) { raw[bh] = inp.dt[bh] + inp.dtBias[bh % H] }
        ssdDelta(raw, count: s.batch * H, softplus: options.deltaSoftplus, delta: deltas.pointer, slope: raw)
        // A head's update is only P·N multiply-adds: fork only when there is enough of them.
        ZooThreads.parallelFor(s.batch * H, minChunk: max(1, 16_384 / (P * N))) { range in
            for bh in range {
                let b = bh / H, h = bh % H, g = h / s.headsPerGroup
                let delta = deltas.pointer[bh]
                let decay = fastExp(delta * inp.A[h])
                let xr = inp.x + (b * H + h) * P, yr = yp + (b * H + h) * P
                let br = inp.B + (b * G + g) * N, cr = inp.C + (b * G + g) * N
                let st = sp + bh * P * N
                for p in 0..<P {
                    let row = st + p * N
                    scaledCopy(row, decay, row, N)
                    simdAxpy(delta * xr[p], br, row, N)
                    yr[p] = simdDot(row, cr, N) + inp.D[h] * xr[p]
                }
            }
        }
    }
    return y
}
