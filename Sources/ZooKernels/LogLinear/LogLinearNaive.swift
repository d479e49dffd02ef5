// Naive log-linear Mamba-2: the executable specification, in Double, O(T²).
//
//   x [B,T,H,P], dt [B,T,H], A [H], B and C [B,T,G,N] (head h uses group h / (H/G)), D [H],
//   dt_bias [H], λ [B,T,H,L], optional initial state S⁰ [B,H,L0,P,N] at position t0 = startPosition.
//   Δ_t = softplus(dt_t + dt_bias),  cum_t = Σ_{k ≤ t} Δ_k A  (over this call's tokens),
//   y_t = Σ_{s ≤ t} λ_t[level(t,s)] · e^{cum_t − cum_s} · (C_t·B_s) · Δ_s x_s
//       + Σ_ℓ λ_t[max(ℓ, bit_length(t XOR (t0−1)))] · e^{cum_t} · S⁰_ℓ C_t  +  D x_t,
//   final state F_ℓ (levels of query t0+T−1, Fenwick.swift) = Σ of e^{cum_last − cum_s} Δ_s x_s B_sᵀ over
//   keys of that level, plus the initial levels routed by the same max rule.
// Unoccupied levels of the initial state (Fenwick.swift) are ignored: every kernel keeps them zero.
// With λ ≡ 1 this is Mamba-2's SSD exactly. The backward differentiates the same sums term by term.

import Foundation

/// Inputs of the naive kernel, in Double (finite differences need Double perturbations).
public struct LogLinearReferenceInputs: Sendable {
    public var shape: LogLinearShape
    public var x: [Double], dt: [Double], A: [Double], B: [Double], C: [Double]
    public var D: [Double], dtBias: [Double], lambda: [Double]
    /// [B, H, L0, P, N], or empty when startPosition == 0.
    public var initialState: [Double]

    public init(shape: LogLinearShape, x: [Double], dt: [Double], A: [Double], B: [Double], C: [Double],
                D: [Double], dtBias: [Double], lambda: [Double], initialState: [Double] = []) {
        self.shape = shape; self.x = x; self.dt = dt; self.A = A; self.B = B; self.C = C
        self.D = D; self.dtBias = dtBias; self.lambda = lambda; self.initialState = initialState
    }

    /// Δ_t and cum_t = Σ_{k≤t} Δ_k A of head (b, h), over this call's tokens.
    func decays(_ b: Int, _ h: Int) -> (delta: [Double], cum: [Double]) {
        let (T, H) = (shape.length, shape.heads)
        var delta = [Double](repeating: 0, count: T), cum = [Double](repeating: 0, count: T)
        var run = 0.0
        for t in 0..<T {
            delta[t] = softplusDouble(dt[(b * T + t) * H + h] + dtBias[h])
            run += delta[t] * A[h]
            cum[t] = run
        }
        return (delta, cum)
    }

    func validate(_ function: String) {
        shape.validate(function)
        let s = shape
        let expected: [(String, Int, Int)] = [
            ("x", x.count, s.batch * s.length * s.heads * s.headDim),
            ("dt", dt.count, s.batch * s.length * s.heads),
            ("A", A.count, s.heads), ("D", D.count, s.heads), ("dt_bias", dtBias.count, s.heads),
            ("B", B.count, s.batch * s.length * s.groups * s.stateSize),
            ("C", C.count, s.batch * s.length * s.groups * s.stateSize),
            ("λ", lambda.count, s.batch * s.length * s.heads * s.lambdaLevels),
            ("initial state", initialState.count, s.batch * s.heads * s.initialLevels * s.headDim * s.stateSize),
        ]
        for (name, got, want) in expected where got != want {
            fatalError("\(function): \(name) has \(got) values, \(s) needs \(want)")
        }
    }
}

/// Gradients of loss = Σ gy·y + Σ gF·F with respect to every input (same layouts as the inputs).
public struct LogLinearReferenceGradients: Sendable {
    public var x: [Double], dt: [Double], A: [Double], B: [Double], C: [Double]
    public var D: [Double], dtBias: [Double], lambda: [Double], initialState: [Double]
}


/// y [B,T,H,P] and the final state [B,H,Lf,P,N], Lf = logLinearLevelCount(tokens: t0 + T).
public func logLinearNaiveForward(_ inputs: LogLinearReferenceInputs) -> (y: [Double], finalState: [Double]) {
    inputs.validate("logLinearNaiveForward")
    let s = inputs.shape
    let (T, H, P, G, N, L) = (s.length, s.heads, s.headDim, s.groups, s.stateSize, s.lambdaLevels)
    let L0 = s.initialLevels, Lf = s.finalLevels, t0 = s.startPosition
    let q0 = t0 - 1, qf = t0 + T - 1
    var y = [Double](repeating: 0, count: s.batch * T * H * P)
    var final = [Double](repeating: 0, count: s.batch * H * Lf * P * N)
    for b in 0..<s.batch {
        for h in 0..<H {
            let g = h / (H / G)
            let (delta, cum) = inputs.decays(b, h)
            func xAt(_ t: Int, _ p: Int) -> Double { inputs.x[((b * T + t) * H + h) * P + p] }
            func bAt(_ t: Int, _ n: Int) -> Double { inputs.B[((b * T + t) * G + g) * N + n] }
            func cAt(_ t: Int, _ n: Int) -> Double { inputs.C[((b * T + t) * G + g) * N + n] }
            func lam(_ t: Int, _ l: Int) -> Double { inputs.lambda[((b * T + t) * H + h) * L + l] }
            func s0(_ l: Int, _ p: Int, _ n: Int) -> Double { inputs.initialState[(((b * H + h) * L0 + l) * P + p) * N + n] }
            for t in 0..<T {
                var out = [Double](repeating: 0, count: P)
                for k in 0...t {
                    var cb = 0.0
                    for n in 0..<N { cb += cAt(t, n) * bAt(k, n) }
                    let w = lam(t, fenwickLevel(query: t0 + t, key: t0 + k)) * exp(cum[t] - cum[k]) * cb * delta[k]
                    for p in 0..<P { out[p] += w * xAt(k, p) }
                }
                for l in 0..<L0 where logLinearLevelIsOccupied(l, tokens: t0) {
                    let w = lam(t, max(l, bitLength((t0 + t) ^ q0))) * exp(cum[t])
                    for p in 0..<P {
                        var v = 0.0
                        for n in 0..<N { v += s0(l, p, n) * cAt(t, n) }
                        out[p] += w * v
                    }
                }
                for p in 0..<P { y[((b * T + t) * H + h) * P + p] = out[p] + inputs.D[h] * xAt(t, p) }
            }
            func fIndex(_ l: Int, _ p: Int, _ n: Int) -> Int { (((b * H + h) * Lf + l) * P + p) * N + n }
            for k in 0..<T {
                let l = fenwickLevel(query: qf, key: t0 + k)
                let w = exp(cum[T - 1] - cum[k]) * delta[k]
                for p in 0..<P { for n in 0..<N { final[fIndex(l, p, n)] += w * xAt(k, p) * bAt(k, n) } }
            }
            for l in 0..<L0 where logLinearLevelIsOccupied(l, tokens: t0) {
                let target = max(l, bitLength(qf ^ q0)), w = exp(cum[T - 1])
                for p in 0..<P { for n in 0..<N { final[fIndex(target, p, n)] += w * s0(l, p, n) } }
            }
        }
    }
    return (y, final)
}

/// Gradients of Σ gy·y + Σ gF·F (gF may be empty: no final-state term).
public func logLinearNaiveBackward(_ inputs: LogLinearReferenceInputs, gradY gy: [Double],
                                   gradFinalState gF: [Double] = []) -> LogLinearReferenceGradients {
    inputs.validate("logLinearNaiveBackward")
    let s = inputs.shape
    let (T, H, P, G, N, L) = (s.length, s.heads, s.headDim, s.groups, s.stateSize, s.lambdaLevels)
    let L0 = s.initialLevels, Lf = s.finalLevels, t0 = s.startPosition
    let q0 = t0 - 1, qf = t0 + T - 1
    if gy.count != inputs.x.count { fatalError("logLinearNaiveBackward: gradY has \(gy.count) values, needs \(inputs.x.count)") }
    let hasFinal = !gF.isEmpty
    if hasFinal && gF.count != s.batch * H * Lf * P * N {
        fatalError("logLinearNaiveBackward: gradFinalState has \(gF.count) values, needs \(s.batch * H * Lf * P * N)")
    }
    var gr = LogLinearReferenceGradients(
        x: .init(repeating: 0, count: inputs.x.count), dt: .init(repeating: 0, count: inputs.dt.count),
        A: .init(repeating: 0, count: H), B: .init(repeating: 0, count: inputs.B.count),
        C: .init(repeating: 0, count: inputs.C.count), D: .init(repeating: 0, count: H),
        dtBias: .init(repeating: 0, count: H), lambda: .init(repeating: 0, count: inputs.lambda.count),
        initialState: .init(repeating: 0, count: inputs.initialState.count))
    for b in 0..<s.batch {
        for h in 0..<H {
            let g = h / (H / G)
            let (delta, cum) = inputs.decays(b, h)
            func xi(_ t: Int, _ p: Int) -> Int { ((b * T + t) * H + h) * P + p }
            func bi(_ t: Int, _ n: Int) -> Int { ((b * T + t) * G + g) * N + n }
            func li(_ t: Int, _ l: Int) -> Int { ((b * T + t) * H + h) * L + l }
            func si(_ l: Int, _ p: Int, _ n: Int) -> Int { (((b * H + h) * L0 + l) * P + p) * N + n }
            func fi(_ l: Int, _ p: Int, _ n: Int) -> Int { (((b * H + h) * Lf + l) * P + p) * N + n }
            var du = [Double](repeating: 0, count: T * P)      // d(Δ_s x_s)
            var dcum = [Double](repeating: 0, count: T)
            for t in 0..<T {
                for p in 0..<P {
                    gr.x[xi(t, p)] += inputs.D[h] * gy[xi(t, p)]
                    gr.D[h] += gy[xi(t, p)] * inputs.x[xi(t, p)]
                }
                for k in 0...t {
                    var cb = 0.0
                    for n in 0..<N { cb += inputs.C[bi(t, n)] * inputs.B[bi(k, n)] }
                    let level = fenwickLevel(query: t0 + t, key: t0 + k)
                    let lam = inputs.lambda[li(t, level)], e = exp(cum[t] - cum[k])
                    var gu = 0.0                                  // gy_t · u_k
                    for p in 0..<P {
                        gu += gy[xi(t, p)] * delta[k] * inputs.x[xi(k, p)]
                        du[k * P + p] += lam * e * cb * gy[xi(t, p)]
                    }
                    gr.lambda[li(t, level)] += e * cb * gu
                    let dcb = lam * e * gu
                    for n in 0..<N {
                        gr.C[bi(t, n)] += dcb * inputs.B[bi(k, n)]
                        gr.B[bi(k, n)] += dcb * inputs.C[bi(t, n)]
                    }
                    dcum[t] += lam * e * cb * gu
                    dcum[k] -= lam * e * cb * gu
                }
                for l in 0..<L0 where logLinearLevelIsOccupied(l, tokens: t0) {
                    let level = max(l, bitLength((t0 + t) ^ q0))
                    let lam = inputs.lambda[li(t, level)], e = exp(cum[t])
                    var gv = 0.0                                  // gy_t · S⁰_ℓ C_t
                    for p in 0..<P {
                        var v = 0.0
                        for n in 0..<N { v += inputs.initialState[si(l, p, n)] * inputs.C[bi(t, n)] }
                        gv += gy[xi(t, p)] * v
                        for n in 0..<N {
                            gr.C[bi(t, n)] += lam * e * inputs.initialState[si(l, p, n)] * gy[xi(t, p)]
                            gr.initialState[si(l, p, n)] += lam * e * gy[xi(t, p)] * inputs.C[bi(t, n)]
                        }
                    }
                    gr.lambda[li(t, level)] += e * gv
                    dcum[t] += lam * e * gv
                }
            }
            if hasFinal {
                for k in 0..<T {
                    let l = fenwickLevel(query: qf, key: t0 + k), e = exp(cum[T - 1] - cum[k])
                    var inner = 0.0                               // ⟨gF_ℓ, u_k B_kᵀ⟩
                    for p in 0..<P {
                        for n in 0..<N {
                            let gf = gF[fi(l, p, n)]
                            inner += gf * delta[k] * inputs.x[xi(k, p)] * inputs.B[bi(k, n)]
                            du[k * P + p] += e * gf * inputs.B[bi(k, n)]
                            gr.B[bi(k, n)] += e * gf * delta[k] * inputs.x[xi(k, p)]
                        }
                    }
                    dcum[T - 1] += e * inner
                    dcum[k] -= e * inner
                }
                for l in 0..<L0 where logLinearLevelIsOccupied(l, tokens: t0) {
                    let target = max(l, bitLength(qf ^ q0)), e = exp(cum[T - 1])
                    var inner = 0.0
                    for p in 0..<P {
                        for n in 0..<N {
                            gr.initialState[si(l, p, n)] += e * gF[fi(target, p, n)]
                            inner += gF[fi(target, p, n)] * inputs.initialState[si(l, p, n)]
                        }
                    }
                    dcum[T - 1] += e * inner
                }
            }
            // cum_t = Σ_{k ≤ t} Δ_k A, so d/d(Δ_k A) = Σ_{t ≥ k} dcum_t.
            var tail = 0.0
            for k in stride(from: T - 1, through: 0, by: -1) {
                tail += dcum[k]
                var dDelta = tail * inputs.A[h]
                for p in 0..<P {
                    dDelta += du[k * P + p] * inputs.x[xi(k, p)]
                    gr.x[xi(k, p)] += delta[k] * du[k * P + p]
                }
                gr.A[h] += tail * delta[k]
                let pre = inputs.dt[(b * T + k) * H + h] + inputs.dtBias[h]
                let ddt = dDelta * sigmoidDouble(pre)
                gr.dt[(b * T + k) * H + h] = ddt
                gr.dtBias[h] += ddt
            }
        }
    }
    return gr
}
