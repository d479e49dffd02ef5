import Foundation

// Selective scan, naive reference (the executable spec; Double throughout).
//   u, delta, z: [B, D, L]   A: [D, N]   B, C: [B, G, N, L]   D, deltaBias: [D]   h0: [B, D, N]
// For channel d (group g = d / (D/G)) and step t, exactly as `selective_scan_ref`:
//   Δ_t   = softplus(delta_t + bias)            (or delta_t + bias without softplus)
//   h_t   = exp(Δ_t A[d,:]) ⊙ h_{t−1} + Δ_t u_t B[g,:,t]      h_{−1} = h0 (or 0)
//   y_t   = ⟨h_t, C[g,:,t]⟩ + D u_t
//   out_t = y_t · silu(z_t)                      (y_t without z)
// Returns out and h_{L−1}. The backward is plain reverse-mode over the stored states (adjoint
// λ_t = ∂loss/∂h_t = gy_t C_t + exp(Δ_{t+1} A) λ_{t+1}, λ_{L−1} starts from the final-state gradient).
// softplus here is exact, log(1 + e^x); PyTorch returns x for x > 20, a difference below 2.1e-9.

/// Double-precision inputs of the reference, as flat row-major arrays (shapes above).
public struct SelectiveScanReferenceInputs: Sendable {
    public var shape: SelectiveScanShape
    public var u: [Double]
    public var delta: [Double]
    public var A: [Double]
    public var B: [Double]
    public var C: [Double]
    public var D: [Double]?
    public var z: [Double]?
    public var deltaBias: [Double]?
    public var initialState: [Double]?
    public var deltaSoftplus: Bool

    public init(shape: SelectiveScanShape, u: [Double], delta: [Double], A: [Double], B: [Double],
                C: [Double], D: [Double]? = nil, z: [Double]? = nil, deltaBias: [Double]? = nil,
                initialState: [Double]? = nil, deltaSoftplus: Bool = false) {
        self.shape = shape; self.u = u; self.delta = delta; self.A = A; self.B = B; self.C = C
        self.D = D; self.z = z; self.deltaBias = deltaBias; self.initialState = initialState
        self.deltaSoftplus = deltaSoftplus
    }

    /// The same inputs as the Float32 kernels see them, always channel-major (token-major inputs
    /// are permuted; the reference's outputs and gradients are then channel-major too).
    public init(_ x: SelectiveScanInputs) {
        let x = x.channelMajor()
        self.init(shape: x.shape(checkedBy: "SelectiveScanReferenceInputs"), u: x.u.doubles,
                  delta: x.delta.doubles, A: x.A.doubles, B: x.B.doubles, C: x.C.doubles,
                  D: x.D?.doubles, z: x.z?.doubles, deltaBias: x.deltaBias?.doubles,
                  initialState: x.initialState?.doubles, deltaSoftplus: x.deltaSoftplus)
    }

    func check(_ function: String) {
        let s = shape
        s.check(function)
        let (b, d, l, n, g) = (s.batch, s.channels, s.length, s.stateSize, s.groups)
        func need(_ name: String, _ count: Int?, _ expected: Int, _ shapeText: String) {
            if let count, count != expected {
                fatalError("\(function): \(name) has \(count) values, expected \(shapeText) = \(expected) for \(s)")
            }
        }
        need("u", u.count, b * d * l, "[B, D, L]")
        need("delta", delta.count, b * d * l, "[B, D, L]")
        need("A", A.count, d * n, "[D, N]")
        need("B", B.count, b * g * n * l, "[B, G, N, L]")
        need("C", C.count, b * g * n * l, "[B, G, N, L]")
        need("D", D?.count, d, "[D]")
        need("z", z?.count, b * d * l, "[B, D, L]")
        need("deltaBias", deltaBias?.count, d, "[D]")
        need("initialState", initialState?.count, b * d * n, "[B, D, N]")
    }
}

public struct SelectiveScanReferenceOutput: Sendable {
    /// [B, D, L]
    public var out: [Double]
    /// [B, D, N]
    public var finalState: [Double]
}

public struct SelectiveScanReferenceGradients: Sendable {
    public var u: [Double]
    public var delta: [Double]
    public var A: [Double]
    public var B: [Double]
    public var C: [Double]
    public var D: [Double]?
    public var z: [Double]?
    public var deltaBias: [Double]?
    public var initialState: [Double]
}

@inline(__always) func softplusDouble(_ x: Double) -> Double { max(x, 0) + log1p(exp(-abs(x))) }
@inline(__always) func sigmoidDouble(_ x: Double) -> Double { 1 / (1 + exp(-x)) }

/// The reference forward, in Double: out [B, D, L] and the final state [B, D, N].
///
/// Mamba-2 cross-check: SSD with scalar A_h per head equals this scan with channels = H·P,
/// A[h·P + p, n] = A_h for every n, and B/C groups as SSD's groups (mind the [B, T, …] layout).
public func selectiveScanNaive(_ x: SelectiveScanReferenceInputs) -> SelectiveScanReferenceOutput {
    x.check("selectiveScanNaive")
    let s = x.shape
    let (nb, nd, l, n, g) = (s.batch, s.channels, s.length, s.stateSize, s.groups)
    var out = [Double](repeating: 0, count: nb * nd * l)
    var final = [Double](repeating: 0, count: nb * nd * n)
    var h = [Double](repeating: 0, count: n)
    for b in 0..<nb {
        for d in 0..<nd {
            let grp = d / (nd / g)
            let row = (b * nd + d) * l
            let bc = (b * g + grp) * n * l
            for i in 0..<n { h[i] = x.initialState?[(b * nd + d) * n + i] ?? 0 }
            for t in 0..<l {
                var dt = x.delta[row + t] + (x.deltaBias?[d] ?? 0)
                if x.deltaSoftplus { dt = softplusDouble(dt) }
                let ut = x.u[row + t]
                var y = 0.0
                for i in 0..<n {
                    h[i] = exp(dt * x.A[d * n + i]) * h[i] + dt * x.B[bc + i * l + t] * ut
                    y += h[i] * x.C[bc + i * l + t]
                }
                y += (x.D?[d] ?? 0) * ut
                if let z = x.z {
                    let zt = z[row + t]
                    y *= zt * sigmoidDouble(zt)
                }
                out[row + t] = y
            }
            for i in 0..<n { final[(b * nd + d) * n + i] = h[i] }
        }
    }
    return SelectiveScanReferenceOutput(out: out, finalState: final)
}

/// The reference backward, in Double, for the loss Σ out·gradOut + Σ h_L·gradFinalState.
/// Stores every state (B·D·L·N values): a spec, not a fast path.
public func selectiveScanNaiveBackward(_ x: SelectiveScanReferenceInputs, gradOut: [Double],
                                       gradFinalState: [Double]? = nil) -> SelectiveScanReferenceGradients {
    x.check("selectiveScanNaiveBackward")
    let s = x.shape
    let (nb, nd, l, n, g) = (s.batch, s.channels, s.length, s.stateSize, s.groups)
    if gradOut.count != nb * nd * l {
        fatalError("selectiveScanNaiveBackward: gradOut has \(gradOut.count) values, expected [B, D, L] = \(nb * nd * l)")
    }
    if let gradFinalState, gradFinalState.count != nb * nd * n {
        fatalError("selectiveScanNaiveBackward: gradFinalState has \(gradFinalState.count) values, expected [B, D, N] = \(nb * nd * n)")
    }
    var gu = [Double](repeating: 0, count: nb * nd * l), gdelta = gu
    var gz: [Double]? = x.z == nil ? nil : gu
    var gA = [Double](repeating: 0, count: nd * n)
    var gB = [Double](repeating: 0, count: nb * g * n * l), gC = gB
    var gD: [Double]? = x.D == nil ? nil : [Double](repeating: 0, count: nd)
    var gBias: [Double]? = x.deltaBias == nil ? nil : [Double](repeating: 0, count: nd)
    var gh0 = [Double](repeating: 0, count: nb * nd * n)

    var states = [Double](repeating: 0, count: (l + 1) * n)   // states[t+1] = h_t, states[0] = h0
    var dts = [Double](repeating: 0, count: l), pre = dts
    var lambda = [Double](repeating: 0, count: n)
    for b in 0..<nb {
        for d in 0..<nd {
            let grp = d / (nd / g)
            let row = (b * nd + d) * l
            let bc = (b * g + grp) * n * l
            let dd = x.D?[d] ?? 0
            for i in 0..<n { states[i] = x.initialState?[(b * nd + d) * n + i] ?? 0 }
            for t in 0..<l {
                pre[t] = x.delta[row + t] + (x.deltaBias?[d] ?? 0)
                dts[t] = x.deltaSoftplus ? softplusDouble(pre[t]) : pre[t]
                for i in 0..<n {
                    states[(t + 1) * n + i] = exp(dts[t] * x.A[d * n + i]) * states[t * n + i]
                        + dts[t] * x.B[bc + i * l + t] * x.u[row + t]
                }
            }
            for i in 0..<n { lambda[i] = gradFinalState?[(b * nd + d) * n + i] ?? 0 }
            for t in stride(from: l - 1, through: 0, by: -1) {
                let ut = x.u[row + t], dt = dts[t]
                var y = dd * ut
                for i in 0..<n { y += states[(t + 1) * n + i] * x.C[bc + i * l + t] }
                var gy = gradOut[row + t]
                if let z = x.z {
                    let zt = z[row + t], sg = sigmoidDouble(zt)
                    gz![row + t] = gy * y * sg * (1 + zt * (1 - sg))
                    gy *= zt * sg
                }
                gD?[d] += gy * ut
                var gu_t = gy * dd, gdt = 0.0
                for i in 0..<n {
                    let c = x.C[bc + i * l + t], bb = x.B[bc + i * l + t], a = x.A[d * n + i]
                    gC[bc + i * l + t] += gy * states[(t + 1) * n + i]
                    let lam = lambda[i] + gy * c
                    let decay = exp(dt * a)
                    let ah = decay * states[t * n + i]
                    gdt += lam * (a * ah + ut * bb)
                    gA[d * n + i] += lam * dt * ah
                    gu_t += lam * dt * bb
                    gB[bc + i * l + t] += lam * dt * ut
                    lambda[i] = lam * decay
                }
                gu[row + t] = gu_t
                let gpre = x.deltaSoftplus ? gdt * sigmoidDouble(pre[t]) : gdt
                gdelta[row + t] = gpre
                gBias?[d] += gpre
            }
            for i in 0..<n { gh0[(b * nd + d) * n + i] = lambda[i] }
        }
    }
    return SelectiveScanReferenceGradients(u: gu, delta: gdelta, A: gA, B: gB, C: gC, D: gD, z: gz,
                                           deltaBias: gBias, initialState: gh0)
}
