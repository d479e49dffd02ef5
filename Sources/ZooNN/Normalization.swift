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
    public let weight: Variable
    public let epsilon: Float
    public init(_ dim: Int, epsilon: Float = 1e-5) {
        weight = parameter(.ones([dim]))
        self.epsilon = epsilon
    }
    public func callAsFunction(_ y: Variable, gate z: Variable) -> Variable {
        gatedRMSNorm(y, gate: z, weight: weight, groups: 1, epsilon: epsilon)
    }
    public func apply(_ y: Tensor, gate z: Tensor) -> Tensor {
        gatedRMSNormForward(y, z, weight.value, groups: 1, epsilon: epsilon).out
    }
    public func namedParameters() -> [NamedParameter] { [NamedParameter("weight", weight, decays: false)] }
}

// MARK: - Kernels
//
// Rows are independent, so forward and backward run in parallel over blocks of rows. The weight
// gradient is summed per block (rows in order), then over blocks in order: the result depends
// on neither the thread count nor the scheduling (bit-identical runs).

/// Rows per work item in the backward (and per partial weight gradient).
private let rowsPerBlock = 32

/// Loads lanes i..<i+16 of a row of length n, zero beyond n.
@inline(__always) private func loadLanes(_ p: UnsafePointer<Float>, _ i: Int, _ n: Int) -> F16 {
    if i + 16 <= n { return load16(p + i) }
    var v = F16()
    for l in 0..<(n - i) { v[l] = p[i + l] }
    return v
}

/// Stores lanes i..<min(i+16, n).
@inline(__always) private func storeLanes(_ p: UnsafeMutablePointer<Float>, _ i: Int, _ n: Int, _ v: F16) {
    if i + 16 <= n { store16(p + i, v); return }
    for l in 0..<(n - i) { p[i + l] = v[l] }
}

@inline(__always) private func rsqrtMeanSquare(_ sumOfSquares: Float, _ n: Int, _ eps: Float) -> Float {
    1 / (sumOfSquares / Float(n) + eps).squareRoot()
}

/// y = x ⊙ rstd ⊙ w for one row of d floats, rstd = 1/rms(x), which it returns. Both forwards
/// normalise through it, so the fused node's norm is the plain one's, bit for bit.
@inline(__always) private func normaliseRow(_ xr: UnsafePointer<Float>, into yr: UnsafeMutablePointer<Float>,
                                            weight w: UnsafePointer<Float>, _ d: Int, _ eps: Float) -> Float {
    let rstd = rsqrtMeanSquare(simdDot(xr, xr, d), d, eps)
    let vr = F16(repeating: rstd)
    var i = 0
    while i < d { storeLanes(yr, i, d, loadLanes(xr, i, d) * vr * loadLanes(w, i, d)); i += 16 }
    return rstd
}

/// Forward: y [..., d] and the per-row 1/rms [rows].
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
            pr[r] = normaliseRow(px + r * d, into: py + r * d, weight: pw.pointer, d, eps)
        }
    }
    return (y, rstd)
}

public func rmsNorm(_ x: Variable, weight: Variable, epsilon: Float) -> Variable {
    let (y, rstd) = rmsNormForward(x.value, weight.value, epsilon)
    let xv = x.value, wv = weight.value
    return record(y, inputs: [x, weight]) { g in
        let (dx, dw) = rmsNormBackward(x: xv, weight: wv, rstd: rstd, gradient: g, plus: nil)
        return [dx, dw]
    }
}

/// h = x + f and y = RMSNorm(h) ⊙ w as one node: a block's residual sum and the norm that follows
/// it, in one pass over the rows (h is written and normalised while the row is in registers and
/// L1). Its backward adds the gradient h receives downstream to the norm's input gradient in the
/// same pass, so the residual stream needs no gradient sum of its own. Values and gradients are
/// bit-identical to `rmsNorm(x + f, …)` (tested).
public func residualRMSNorm(_ x: Variable, _ f: Variable, weight: Variable, epsilon: Float) -> (sum: Variable, normed: Variable) {
    precondition(x.shape == f.shape, "residualRMSNorm: branch \(describe(f.shape)) differs from the residual stream \(describe(x.shape))")
    let (h, y, rstd) = residualRMSNormForward(x.value, f.value, weight.value, epsilon)
    let wv = weight.value
    let outputs = recordMulti([h, y], inputs: [x, f, weight]) { grads in
        if grads[0] == nil && grads[1] == nil { return [nil, nil, nil] }
        let (dh, dw) = rmsNormBackward(x: h, weight: wv, rstd: rstd, gradient: grads[1], plus: grads[0])
        return [dh, dh, dw]
    }
    return (outputs[0], outputs[1])
}

/// Forward of `residualRMSNorm`: h = x + f, y = RMSNorm(h) ⊙ w, and 1/rms per row.
func residualRMSNormForward(_ x: Tensor, _ f: Tensor, _ w: Tensor, _ eps: Float) -> (h: Tensor, y: Tensor, rstd: Tensor) {
    let d = x.shape.last ?? 1
    precondition(w.shape == [d], "RMSNorm: input \(describe(x.shape)) does not end in the weight's size \(describe(w.shape))")
    let rows = x.count / Swift.max(d, 1)
    var h = Tensor(uninitializedShape: x.shape), y = Tensor(uninitializedShape: x.shape)
    var rstd = Tensor(uninitializedShape: [rows])
    let ph = SendablePointer(h.mutablePointer()), py = SendablePointer(y.mutablePointer()), pr = SendablePointer(rstd.mutablePointer())
    let px = SendablePointer(UnsafeMutablePointer(mutating: x.pointer)), pf = SendablePointer(UnsafeMutablePointer(mutating: f.pointer))
    let pw = SendablePointer(UnsafeMutablePointer(mutating: w.pointer))
    ZooThreads.parallelFor(rows, minChunk: Swift.max(1, 8192 / Swift.max(d, 1))) { range in
        for r in range {
            let xr = px + r * d, fr = pf + r * d, hr = ph + r * d, yr = py + r * d
            var i = 0
            while i < d { storeLanes(hr, i, d, loadLanes(xr, i, d) + loadLanes(fr, i, d)); i += 16 }
            pr[r] = normaliseRow(hr, into: yr, weight: pw.pointer, d, eps)
        }
    }
    return (h, y, rstd)
}

/// The backward of y = RMSNorm(x) ⊙ w given its saved 1/rms per row:
///   dx = rstd · (g⊙w − x̂ · mean(g⊙w⊙x̂)) (+ `plus`, a gradient x receives from elsewhere),
///   dw = Σ_rows g⊙x̂, summed per block of rows, then over blocks in order.
/// A nil `gradient` counts as zero (then dx = plus).
private func rmsNormBackward(x xv: Tensor, weight wv: Tensor, rstd: Tensor, gradient: Tensor?, plus: Tensor?) -> (dx: Tensor, dw: Tensor) {
    guard let g = gradient else { return (plus ?? .zeros(xv.shape), .zeros(wv.shape)) }
    let d = wv.count, rows = xv.count / d
    var dx = Tensor(uninitializedShape: xv.shape)
    let blocks = (rows + rowsPerBlock - 1) / rowsPerBlock
    var partials = Tensor.zeros([blocks, d])
    let pdx = SendablePointer(dx.mutablePointer()), pdw = SendablePointer(partials.mutablePointer())
    let px = SendablePointer(UnsafeMutablePointer(mutating: xv.pointer)), pw = SendablePointer(UnsafeMutablePointer(mutating: wv.pointer))
    let pg = SendablePointer(UnsafeMutablePointer(mutating: g.pointer)), pr = SendablePointer(UnsafeMutablePointer(mutating: rstd.pointer))
    let pp = plus.map { SendablePointer(UnsafeMutablePointer(mutating: $0.pointer)) }
    ZooThreads.parallelFor(blocks, minChunk: Swift.max(1, 4096 / Swift.max(d * rowsPerBlock, 1))) { range in
        for block in range {
            let dwBlock = pdw + block * d
            for r in (block * rowsPerBlock)..<Swift.min(rows, (block + 1) * rowsPerBlock) {
                let xr = px + r * d, gr = pg + r * d, dxr = pdx + r * d
                let rs = F16(repeating: pr[r])
                var dot = F16()
                var i = 0
                while i < d {
                    let xhat = loadLanes(xr, i, d) * rs, gi = loadLanes(gr, i, d)
                    storeLanes(dwBlock, i, d, loadLanes(dwBlock, i, d).addingProduct(gi, xhat))
                    dot = dot.addingProduct(gi * loadLanes(pw.pointer, i, d), xhat)
                    i += 16
                }
                let meanDot = F16(repeating: dot.sum() / Float(d))
                i = 0
                while i < d {
                    let xhat = loadLanes(xr, i, d) * rs
                    let gw = loadLanes(gr, i, d) * loadLanes(pw.pointer, i, d)
                    var v = rs * (gw - xhat * meanDot)
                    if let pp { v = v + loadLanes(pp.pointer + r * d, i, d) }
                    storeLanes(dxr, i, d, v)
                    i += 16
                }
            }
        }
    }
    return (dx, sumBlocks(partials))
}

/// Σ over the leading axis of [blocks, d], blocks in order.
private func sumBlocks(_ partials: Tensor) -> Tensor {
    let (blocks, d) = (partials.shape[0], partials.shape[1])
    var out = Tensor.zeros([d])
    let po = out.mutablePointer()
    for b in 0..<blocks { simdAxpy(1, partials.pointer + b * d, po, d) }
    return out
}

/// Forward of the gated norm: out = RMSNorm_group(y ⊙ SiLU(z)) ⊙ w, with the last axis (E)
/// cut into `groups` groups of E/G channels, each normalised on its own (mamba_ssm's
/// RMSNormGated with group_size = E/G); rstd [rows·G].
func gatedRMSNormForward(_ y: Tensor, _ z: Tensor, _ w: Tensor, groups: Int, epsilon: Float) -> (out: Tensor, rstd: Tensor) {
    let e = y.shape.last ?? 1
    precondition(z.shape == y.shape, "GatedRMSNorm: gate \(describe(z.shape)) differs from input \(describe(y.shape))")
    precondition(w.shape == [e], "GatedRMSNorm: input \(describe(y.shape)) does not end in the weight's size \(describe(w.shape))")
    precondition(groups >= 1 && e % groups == 0, "GatedRMSNorm: \(e) channels do not split into \(groups) groups")
    let size = e / groups, units = y.count / size
    var out = Tensor(uninitializedShape: y.shape)
    var rstd = Tensor(uninitializedShape: [units])
    let po = SendablePointer(out.mutablePointer()), pr = SendablePointer(rstd.mutablePointer())
    let py = SendablePointer(UnsafeMutablePointer(mutating: y.pointer)), pz = SendablePointer(UnsafeMutablePointer(mutating: z.pointer))
    let pw = SendablePointer(UnsafeMutablePointer(mutating: w.pointer))
    ZooThreads.parallelFor(units, minChunk: Swift.max(1, 8192 / size)) { range in
        for u in range {
            let yr = py + u * size, zr = pz + u * size, or = po + u * size
            let wr = pw + (u % groups) * size
            var ss = F16()
            var i = 0
            while i < size {
                let zi = loadLanes(zr, i, size)
                let gated = loadLanes(yr, i, size) * zi * fastSigmoid(zi)
                storeLanes(or, i, size, gated)
                ss = ss.addingProduct(gated, gated)
                i += 16
            }
            let r0 = rsqrtMeanSquare(ss.sum(), size, epsilon)
            pr[u] = r0
            let vr = F16(repeating: r0)
            i = 0
            while i < size { storeLanes(or, i, size, loadLanes(or, i, size) * vr * loadLanes(wr, i, size)); i += 16 }
        }
    }
    return (out, rstd)
}

/// RMSNorm(y ⊙ SiLU(z)) ⊙ w as one node (see `gatedRMSNormForward`). With a = y·SiLU(z),
/// â = a·r:  dw = Σ g ⊙ â,  da = r·(g⊙w − â·mean(g⊙w⊙â)),  dy = da ⊙ SiLU(z),
/// dz = da ⊙ y ⊙ SiLU′(z). The backward recomputes a rather than keeping it.
public func gatedRMSNorm(_ y: Variable, gate z: Variable, weight: Variable, groups: Int, epsilon: Float) -> Variable {
    let (out, rstd) = gatedRMSNormForward(y.value, z.value, weight.value, groups: groups, epsilon: epsilon)
    let (yv, zv, wv) = (y.value, z.value, weight.value)
    return record(out, inputs: [y, z, weight]) { g in
        let e = wv.count, size = e / groups, rows = yv.count / e
        var dy = Tensor(uninitializedShape: yv.shape), dz = Tensor(uninitializedShape: zv.shape)
        let blocks = (rows + rowsPerBlock - 1) / rowsPerBlock
        var partials = Tensor.zeros([blocks, e])
        let pdy = SendablePointer(dy.mutablePointer()), pdz = SendablePointer(dz.mutablePointer())
        let pdw = SendablePointer(partials.mutablePointer())
        let py = SendablePointer(UnsafeMutablePointer(mutating: yv.pointer)), pz = SendablePointer(UnsafeMutablePointer(mutating: zv.pointer))
        let pw = SendablePointer(UnsafeMutablePointer(mutating: wv.pointer)), pg = SendablePointer(UnsafeMutablePointer(mutating: g.pointer))
        let pr = SendablePointer(UnsafeMutablePointer(mutating: rstd.pointer))
        ZooThreads.parallelFor(blocks, minChunk: Swift.max(1, 4096 / Swift.max(e * rowsPerBlock, 1))) { range in
            for block in range {
                for row in (block * rowsPerBlock)..<Swift.min(rows, (block + 1) * rowsPerBlock) {
                    for group in 0..<groups {
                        let u = row * groups + group, offset = u * size
                        let yr = py + offset, zr = pz + offset, gr = pg + offset
                        let wr = pw + group * size, dwr = pdw + block * e + group * size
                        let rs = F16(repeating: pr[u])
                        var dot = F16()
                        var i = 0
                        while i < size {
                            let zi = loadLanes(zr, i, size)
                            let ahat = loadLanes(yr, i, size) * zi * fastSigmoid(zi) * rs
                            let gi = loadLanes(gr, i, size)
                            storeLanes(dwr, i, size, loadLanes(dwr, i, size).addingProduct(gi, ahat))
                            dot = dot.addingProduct(gi * loadLanes(wr, i, size), ahat)
                            i += 16
                        }
                        let meanDot = F16(repeating: dot.sum() / Float(size))
                        i = 0
                        while i < size {
                            let zi = loadLanes(zr, i, size), yi = loadLanes(yr, i, size)
                            let s = fastSigmoid(zi), silu = zi * s
                            let ahat = yi * silu * rs
                            let da = rs * (loadLanes(gr, i, size) * loadLanes(wr, i, size) - ahat * meanDot)
                            storeLanes(pdy + offset, i, size, da * silu)
                            storeLanes(pdz + offset, i, size, da * yi * s * (1 + zi * (1 - s)))
                            i += 16
                        }
                    }
                }
            }
        }
        return [dy, dz, sumBlocks(partials)]
    }
}
