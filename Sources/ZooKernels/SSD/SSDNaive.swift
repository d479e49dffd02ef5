// Naive SSD in Double: the executable spec (the quadratic masked form of Mamba-2, eq. "SSD as
// attention"), with its hand-derived backward. O(T²) per head; for tests and small benchmarks.
//
//   x [B,T,H,P], dt [B,T,H], A [H], B, C [B,T,G,N], D [H], dtBias [H], h0 [B,H,P,N] (optional)
//   Δ_t = softplus(dt_t + dtBias_h),  cum_t = Σ_{k≤t} Δ_k A_h  (from the sequence start)
//   L[t,s] = exp(cum_t − cum_s) for s ≤ t, 0 otherwise        (the cumulative decay)
//   Y = (L ∘ C Bᵀ)(Δ ∘ X) + diag(e^cum) C h0ᵀ + D X           (per head; B, C of its group)
//   h_T = e^{cum_{T−1}} h0 + Σ_s e^{cum_{T−1} − cum_s} Δ_s x_s B_sᵀ   (the final state, directly)
import Foundation

/// Double-precision copies of the SSD inputs (flat, row-major, same layouts as `SSDInputs`).
public struct SSDReference: Sendable {
    public var shape: SSDShape
    public var x, dt, A, B, C, D, dtBias: [Double]
    public var initialState: [Double]?
    public var deltaSoftplus: Bool

    public init(shape: SSDShape, x: [Double], dt: [Double], A: [Double], B: [Double], C: [Double],
                D: [Double], dtBias: [Double], initialState: [Double]? = nil, deltaSoftplus: Bool = true) {
        let s = shape
        let expected: [(String, Int, Int)] = [
            ("x", x.count, s.xShape.reduce(1, *)), ("dt", dt.count, s.dtShape.reduce(1, *)),
            ("A", A.count, s.heads), ("B", B.count, s.bcShape.reduce(1, *)), ("C", C.count, s.bcShape.reduce(1, *)),
            ("D", D.count, s.heads), ("dtBias", dtBias.count, s.heads),
            ("initialState", initialState?.count ?? s.stateShape.reduce(1, *), s.stateShape.reduce(1, *)),
        ]
        for (name, got, want) in expected where got != want {
            fatalError("SSDReference: \(name) has \(got) values, expected \(want) for \(s)")
        }
        if s.heads % s.groups != 0 { fatalError("SSDReference: heads \(s.heads) not a multiple of groups \(s.groups)") }
        self.shape = shape; self.x = x; self.dt = dt; self.A = A; self.B = B; self.C = C; self.D = D
        self.dtBias = dtBias; self.initialState = initialState; self.deltaSoftplus = deltaSoftplus
    }

    /// Copies of Float32 inputs.
    public init(_ i: SSDInputs, deltaSoftplus: Bool = true) {
        self.init(shape: i.validatedShape("SSDReference"), x: i.x.doubles, dt: i.dt.doubles, A: i.A.doubles,
                  B: i.B.doubles, C: i.C.doubles, D: i.D.doubles, dtBias: i.dtBias.doubles,
                  initialState: i.initialState?.doubles, deltaSoftplus: deltaSoftplus)
    }
}

/// Gradients from `ssdNaiveBackward` (flat, same layouts as the inputs).
public struct SSDReferenceGradients: Sendable {
    public var x, dt, A, B, C, D, dtBias, initialState: [Double]
}

/// Per-head quantities both naive passes need.
private struct NaiveHead {
    var delta: [Double], slope: [Double], cum: [Double], xd: [Double]   // xd: [T,P]
}

private func naiveHead(_ r: SSDReference, b: Int, h: Int) -> NaiveHead {
    let s = r.shape, T = s.length, P = s.headDim, H = s.heads
    var head = NaiveHead(delta: [], slope: [], cum: [], xd: [Double](repeating: 0, count: T * P))
    var run = 0.0
    for t in 0..<T {
        let v = r.dt[(b * T + t) * H + h] + r.dtBias[h]
        let d = r.deltaSoftplus ? max(v, 0) + log1p(exp(-abs(v))) : v
        head.delta.append(d)
        head.slope.append(r.deltaSoftplus ? 1 / (1 + exp(-v)) : 1)
        run += d * r.A[h]
        head.cum.append(run)
        for p in 0..<P { head.xd[t * P + p] = d * r.x[((b * T + t) * H + h) * P + p] }
    }
    return head
}

/// The quadratic form and the final state, in Double.
public func ssdNaiveForward(_ r: SSDReference) -> (y: [Double], finalState: [Double]) {
    let s = r.shape, (T, H, P, N, G) = (s.length, s.heads, s.headDim, s.stateSize, s.groups)
    var y = [Double](repeating: 0, count: s.xShape.reduce(1, *))
    var final = [Double](repeating: 0, count: s.stateShape.reduce(1, *))
    for b in 0..<s.batch {
        for h in 0..<H {
            let g = h / s.headsPerGroup, hd = naiveHead(r, b: b, h: h)
            func bRow(_ t: Int) -> Int { ((b * T + t) * G + g) * N }
            let h0 = (b * H + h) * P * N
            for t in 0..<T {
                let yo = ((b * T + t) * H + h) * P
                for sIdx in 0...t {
                    var score = 0.0
                    for n in 0..<N { score += r.C[bRow(t) + n] * r.B[bRow(sIdx) + n] }
                    let k = exp(hd.cum[t] - hd.cum[sIdx]) * score
                    for p in 0..<P { y[yo + p] += k * hd.xd[sIdx * P + p] }
                }
                if let initial = r.initialState {
                    let e = exp(hd.cum[t])
                    for p in 0..<P {
                        var v = 0.0
                        for n in 0..<N { v += initial[h0 + p * N + n] * r.C[bRow(t) + n] }
                        y[yo + p] += e * v
                    }
                }
                for p in 0..<P { y[yo + p] += r.D[h] * r.x[yo + p] }
            }
            let last = hd.cum[T - 1]
            for p in 0..<P {
                for n in 0..<N {
                    var v = (r.initialState?[h0 + p * N + n] ?? 0) * exp(last)
                    for sIdx in 0..<T { v += exp(last - hd.cum[sIdx]) * hd.xd[sIdx * P + p] * r.B[bRow(sIdx) + n] }
                    final[h0 + p * N + n] = v
                }
            }
        }
    }
    return (y, final)
}

/// Gradients of Σ y·dY + Σ h_T·dh_T (`finalStateGradient` nil means 0), derived by hand from the
/// quadratic form: with K[t,s] = e^{cum_t − cum_s}, S[t,s] = C_t·B_s and g[t,s] = dY_t·(Δ_s x_s),
///   d(Δx)_s = Σ_{t≥s} K S dY_t + e^{cum_L − cum_s} dh_T B_s,  dC_t = Σ_{s≤t} K g B_s + e^{cum_t} dY_t h0,
///   dB_s = Σ_{t≥s} K g C_t + e^{cum_L − cum_s} dh_Tᵀ(Δx)_s,   dh0 = Σ_t e^{cum_t} dY_t C_tᵀ + e^{cum_L} dh_T,
///   dcum from every exponent, da_k = Σ_{t≥k} dcum_t, then the chain through Δ = softplus(dt + bias).
public func ssdNaiveBackward(_ r: SSDReference, outputGradient dy: [Double],
                             finalStateGradient dhT: [Double]? = nil) -> SSDReferenceGradients {
    let s = r.shape, (T, H, P, N, G) = (s.length, s.heads, s.headDim, s.stateSize, s.groups)
    if dy.count != s.xShape.reduce(1, *) { fatalError("ssdNaiveBackward: outputGradient has \(dy.count) values, expected \(s.xShape.reduce(1, *))") }
    if let dhT, dhT.count != s.stateShape.reduce(1, *) { fatalError("ssdNaiveBackward: finalStateGradient has \(dhT.count) values") }
    var gr = SSDReferenceGradients(
        x: .init(repeating: 0, count: r.x.count), dt: .init(repeating: 0, count: r.dt.count),
        A: .init(repeating: 0, count: H), B: .init(repeating: 0, count: r.B.count), C: .init(repeating: 0, count: r.C.count),
        D: .init(repeating: 0, count: H), dtBias: .init(repeating: 0, count: H),
        initialState: .init(repeating: 0, count: s.stateShape.reduce(1, *)))
    for b in 0..<s.batch {
        for h in 0..<H {
            let g = h / s.headsPerGroup, hd = naiveHead(r, b: b, h: h)
            func bRow(_ t: Int) -> Int { ((b * T + t) * G + g) * N }
            func xRow(_ t: Int) -> Int { ((b * T + t) * H + h) * P }
            let h0 = (b * H + h) * P * N
            var dxd = [Double](repeating: 0, count: T * P), dcum = [Double](repeating: 0, count: T)
            for t in 0..<T {
                for sIdx in 0...t {
                    var score = 0.0, gts = 0.0
                    for n in 0..<N { score += r.C[bRow(t) + n] * r.B[bRow(sIdx) + n] }
                    for p in 0..<P { gts += dy[xRow(t) + p] * hd.xd[sIdx * P + p] }
                    let k = exp(hd.cum[t] - hd.cum[sIdx])
                    for p in 0..<P { dxd[sIdx * P + p] += k * score * dy[xRow(t) + p] }
                    let rr = k * score * gts
                    dcum[t] += rr; dcum[sIdx] -= rr
                    for n in 0..<N {
                        gr.C[bRow(t) + n] += k * gts * r.B[bRow(sIdx) + n]
                        gr.B[bRow(sIdx) + n] += k * gts * r.C[bRow(t) + n]
                    }
                }
                let e = exp(hd.cum[t])
                for n in 0..<N {
                    var u = 0.0
                    for p in 0..<P { u += dy[xRow(t) + p] * (r.initialState?[h0 + p * N + n] ?? 0) }
                    gr.C[bRow(t) + n] += e * u
                    dcum[t] += e * r.C[bRow(t) + n] * u
                    for p in 0..<P { gr.initialState[h0 + p * N + n] += e * dy[xRow(t) + p] * r.C[bRow(t) + n] }
                }
            }
            if let dhT {
                let last = T - 1, eL = exp(hd.cum[last])
                var inner = 0.0
                for k in 0..<(P * N) {
                    gr.initialState[h0 + k] += eL * dhT[h0 + k]
                    inner += (r.initialState?[h0 + k] ?? 0) * dhT[h0 + k]
                }
                dcum[last] += eL * inner
                for sIdx in 0..<T {
                    let w = exp(hd.cum[last] - hd.cum[sIdx])
                    var contribution = 0.0
                    for p in 0..<P {
                        var v = 0.0
                        for n in 0..<N { v += dhT[h0 + p * N + n] * r.B[bRow(sIdx) + n] }
                        dxd[sIdx * P + p] += w * v
                        contribution += w * v * hd.xd[sIdx * P + p]
                    }
                    for n in 0..<N {
                        var v = 0.0
                        for p in 0..<P { v += hd.xd[sIdx * P + p] * dhT[h0 + p * N + n] }
                        gr.B[bRow(sIdx) + n] += w * v
                    }
                    dcum[last] += contribution; dcum[sIdx] -= contribution
                }
            }
            var da = 0.0
            for t in stride(from: T - 1, through: 0, by: -1) {
                da += dcum[t]
                var dDelta = da * r.A[h]
                gr.A[h] += da * hd.delta[t]
                for p in 0..<P {
                    let xv = r.x[xRow(t) + p]
                    dDelta += dxd[t * P + p] * xv
                    gr.x[xRow(t) + p] = hd.delta[t] * dxd[t * P + p] + r.D[h] * dy[xRow(t) + p]
                    gr.D[h] += dy[xRow(t) + p] * xv
                }
                let ddt = dDelta * hd.slope[t]
                gr.dt[(b * T + t) * H + h] = ddt
                gr.dtBias[h] += ddt
            }
        }
    }
    return gr
}
