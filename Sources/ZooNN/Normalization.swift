import ZooTensor
import ZooAutograd

/// y = x / √(mean(x²) + ε) ⊙ w over the last axis, fused into one node with its backward:
///   r = 1/√(mean(x²) + ε), x̂ = x·r, dw = Σ_rows g ⊙ x̂,
///   dx = r · (g⊙w − x̂ · mean(g⊙w ⊙ x̂)).
public struct RMSNorm: Module {
    public let weight: Variable
    public let epsilon: Float
    public init(_ dim: Int, epsilon: Float = 1e-5) {
        weight = parameter(.ones([dim]))
        self.epsilon = epsilon
    }
    public func callAsFunction(_ x: Variable) -> Variable { rmsNorm(x, weight: weight, epsilon: epsilon) }
    public func apply(_ x: Tensor) -> Tensor { rmsNormForward(x, weight.value, epsilon).y }
    public func namedParameters() -> [NamedParameter] { [NamedParameter("weight", weight, decays: false)] }
}

/// RMSNorm(y ⊙ SiLU(z)) ⊙ w: the output norm of the Mamba-2 block (z gates before normalising).
public struct GatedRMSNorm: Module {
    public let norm: RMSNorm
    public init(_ dim: Int, epsilon: Float = 1e-5) { norm = RMSNorm(dim, epsilon: epsilon) }
    public func callAsFunction(_ y: Variable, gate z: Variable) -> Variable { norm(y * z.silu()) }
    public func apply(_ y: Tensor, gate z: Tensor) -> Tensor { norm.apply(y * z.silu()) }
    public func namedParameters() -> [NamedParameter] { norm.namedParameters() }
}

func rmsNormForward(_ x: Tensor, _ w: Tensor, _ eps: Float) -> (y: Tensor, rstd: Tensor) {
    let d = x.shape.last ?? 1
    precondition(w.shape == [d], "RMSNorm: input \(describe(x.shape)) does not end in the weight's size \(describe(w.shape))")
    let rows = x.count / Swift.max(d, 1)
    var y = Tensor(uninitializedShape: x.shape)
    var rstd = Tensor(uninitializedShape: [rows])
    let py = SendablePointer(y.mutablePointer()), pr = SendablePointer(rstd.mutablePointer())
    let px = SendablePointer(UnsafeMutablePointer(mutating: x.pointer))
    let pw = SendablePointer(UnsafeMutablePointer(mutating: w.pointer))
    ZooThreads.parallelFor(rows, minChunk: Swift.max(1, 8192 / Swift.max(d, 1))) { range in
        for r in range {
            let xr = px + r * d, yr = py + r * d
            let r0 = 1 / (simdDot(xr, xr, d) / Float(d) + eps).squareRoot()
            pr[r] = r0
            for i in 0..<d { yr[i] = xr[i] * r0 * pw[i] }
        }
    }
    return (y, rstd)
}

public func rmsNorm(_ x: Variable, weight: Variable, epsilon: Float) -> Variable {
    let (y, rstd) = rmsNormForward(x.value, weight.value, epsilon)
    let xv = x.value, wv = weight.value
    return record(y, inputs: [x, weight]) { g in
        let d = wv.count, rows = xv.count / d
        var dx = Tensor(uninitializedShape: xv.shape)
        var dw = Tensor.zeros([d])
        let pdx = dx.mutablePointer(), pdw = dw.mutablePointer()
        let px = xv.pointer, pw = wv.pointer, pg = g.pointer, pr = rstd.pointer
        // Serial over rows: dw accumulates in a fixed order (deterministic).
        for r in 0..<rows {
            let xr = px + r * d, gr = pg + r * d, dxr = pdx + r * d, rs = pr[r]
            var dotv: Float = 0
            for i in 0..<d {
                let xhat = xr[i] * rs
                pdw[i] += gr[i] * xhat
                dotv += gr[i] * pw[i] * xhat
            }
            let meanDot = dotv / Float(d)
            for i in 0..<d { dxr[i] = rs * (gr[i] * pw[i] - xr[i] * rs * meanDot) }
        }
        return [dx, dw]
    }
}
