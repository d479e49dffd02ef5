import ZooTensor

// Selective scan, recurrent step (decode): one token, or a short chunk, from a given state.
//   u, delta, z: [B, D, L]   A: [D, N]   B, C: [B, G, N, L]   D, deltaBias: [D]   state: [B, D, N]
//   (token-major: u, delta, z, out [B, L, D], B, C [B, L, G, N]; SelectiveScanTypes.swift)
//   Δ_t = softplus(delta_t + bias);  h ← exp(Δ_t A) ⊙ h + Δ_t u_t B_t;  out_t = (⟨h, C_t⟩ + D u_t)·silu(z_t)
// `state` holds h before the call and h after its last token. Vectors run over the state index n
// (one channel at a time), not over channels as in the fast forward: for L = 1 the inputs of a
// channel are single values and B/C rows are contiguous, and the two kernels check each other.
// Long prefills should call `selectiveScanForward` with `initialState` instead (channel-vectorised).

/// Advances `state` [B, D, N] over the L ≥ 1 tokens of `x` and returns out [B, D, L] (in the
/// inputs' layout).
/// `x.initialState` must be nil (the state comes from `state`).
public func selectiveScanStep(_ x: SelectiveScanInputs, state: inout Tensor) -> Tensor {
    let function = "selectiveScanStep"
    let s = x.shape(checkedBy: function)
    if x.initialState != nil {
        fatalError("\(function): pass the state as `state`, not as initialState")
    }
    if state.shape != [s.batch, s.channels, s.stateSize] {
        fatalError("\(function): state must be [B, D, N] = \(describe([s.batch, s.channels, s.stateSize])), got \(describe(state.shape))")
    }
    let (nd, l, n) = (s.channels, s.length, s.stateSize)
    let np = (n + 15) / 16 * 16
    let seq = ScanSequenceLayout(x.layout, s)
    var out = Tensor(uninitializedShape: seq.shape(batch: s.batch))
    let inputs = ScanStepPointers(x)
    let outPointer = SendablePointer(out.mutablePointer())
    let statePointer = SendablePointer(state.mutablePointer())
    let softplus = x.deltaSoftplus
    withExtendedLifetime(x) {
        ZooThreads.parallelFor(s.batch * nd, minChunk: 32) { range in
            let scratch = ScratchBuffer(count: 4 * np)
            let a2 = scratch.pointer, h = a2 + np, bRow = h + np, cRow = bRow + np
            for row in range {
                let b = row / nd, d = row % nd
                let g = d / s.channelsPerGroup
                let hState = statePointer.pointer + row * n
                for i in 0..<n { a2[i] = inputs.A[d * n + i] * log2e; h[i] = hState[i] }
                let bias = inputs.deltaBias?[d] ?? 0, skip = inputs.D?[d] ?? 0
                for t in 0..<l {
                    let at = seq.offset(batch: b, channel: d, step: t)
                    let pre = inputs.delta[at] + bias
                    let delta = softplus ? softplusVector(splat(pre))[0] : pre
                    let u = inputs.u[at]
                    let bc = seq.stateOffset(batch: b, group: g, step: t), stateStride = seq.stateStride
                    for i in 0..<n { bRow[i] = inputs.B[bc + i * stateStride]; cRow[i] = inputs.C[bc + i * stateStride] }
                    let dv = splat(delta), du = splat(delta * u)
                    var y = F16()
                    for c in stride(from: 0, to: np, by: 16) {
                        let hn = vfma(exp2Vector(vmul(dv, vload(a2 + c))), vload(h + c), vmul(du, vload(bRow + c)))
                        vstore(h + c, hn)
                        y = vfma(hn, vload(cRow + c), y)
                    }
                    var yt = y.sum() + skip * u
                    if let z = inputs.z {
                        let zt = z[at]
                        yt *= zt * sigmoidVector(splat(zt))[0]
                    }
                    outPointer.pointer[at] = yt
                }
                for i in 0..<n { hState[i] = h[i] }
            }
        }
    }
    return out
}

/// Raw pointers of the step's inputs (read-only; valid while the inputs live).
struct ScanStepPointers: @unchecked Sendable {
    let u, delta, A, B, C: UnsafePointer<Float>
    let D, z, deltaBias: UnsafePointer<Float>?
    init(_ x: SelectiveScanInputs) {
        u = x.u.pointer; delta = x.delta.pointer; A = x.A.pointer; B = x.B.pointer; C = x.C.pointer
        D = x.D?.pointer; z = x.z?.pointer; deltaBias = x.deltaBias?.pointer
    }
}
