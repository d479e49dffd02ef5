import ZooTensor
import ZooAutograd

/// Depthwise causal convolution over time, channels last.
///
///   x [B, T, C], weight [C, 1, k] (PyTorch's depthwise Conv1d layout), bias [C]
///   y[b,t,c] = bias[c] + Σ_{j<k} weight[c,0,j] · x[b, t−(k−1)+j, c]      (x before 0 is 0)
///
/// The step form keeps the last k−1 inputs per channel, state [B, C, k−1], and gives the same
/// outputs token by token. The parallel form is one fused node (vectorised over channels).
public struct CausalConv1d: Module {
    public let weight: Variable
    public let bias: Variable?
    public let channels: Int
    public let kernelSize: Int

    /// Uniform(−1/√k, 1/√k) weights, as PyTorch's default for a depthwise Conv1d.
    public init(channels: Int, kernelSize: Int, bias: Bool = true, generator: inout SeededGenerator) {
        precondition(channels > 0 && kernelSize > 0, "CausalConv1d: channels and kernel size must be positive, got \(channels), \(kernelSize)")
        let bound = 1 / Float(kernelSize).squareRoot()
        weight = parameter(Tensor.uniform([channels, 1, kernelSize], low: -bound, high: bound, generator: &generator))
        self.bias = bias ? parameter(Tensor.uniform([channels], low: -bound, high: bound, generator: &generator)) : nil
        self.channels = channels
        self.kernelSize = kernelSize
    }

    /// A layer over existing variables: weight [C, 1, k], bias [C].
    public init(sharing weight: Variable, bias: Variable?) {
        precondition(weight.rank == 3 && weight.shape[1] == 1, "CausalConv1d: weight must be [C, 1, k], got \(describe(weight.shape))")
        self.weight = weight
        self.bias = bias
        channels = weight.shape[0]
        kernelSize = weight.shape[2]
    }

    public func namedParameters() -> [NamedParameter] {
        [NamedParameter("weight", weight)] + (bias.map { [NamedParameter("bias", $0, decays: false)] } ?? [])
    }

    public func callAsFunction(_ x: Variable) -> Variable {
        precondition(x.rank == 3 && x.shape[2] == channels, "CausalConv1d: input \(describe(x.shape)) is not [B, T, \(channels)]")
        let xv = x.value, wv = weight.value
        let bv = bias?.value
        let y = causalConvForward(xv, wv, bv)
        let inputs = [x, weight] + (bias.map { [$0] } ?? [])
        return record(y, inputs: inputs) { g in
            let (dx, dw, db) = causalConvBackward(g, xv, wv, hasBias: bv != nil)
            return [dx, dw] + (bv != nil ? [db] : [])
        }
    }

    /// The convolution of an input given as channel blocks, each its own [B, T, C_p] tensor (the
    /// blocks in channel order, C_p adding up to C): the outputs are `self(concatenated)` cut the
    /// same way. The convolution is depthwise, so each block needs only its channels' weights
    /// (slices of the parameters, which collect the blocks' gradients); nothing is joined or split.
    public func split(_ parts: [Variable]) -> [Variable] {
        precondition(parts.allSatisfy { $0.rank == 3 } && parts.map { $0.shape[2] }.reduce(0, +) == channels,
                     "CausalConv1d.split: blocks \(parts.map { describe($0.shape) }) do not add up to \(channels) channels")
        var start = 0
        return parts.map { part in
            let range = start ..< start + part.shape[2]
            start = range.upperBound
            if range.count == channels { return self(part) }
            return CausalConv1d(sharing: weight.slice(axis: 0, range), bias: bias?.slice(axis: 0, range))(part)
        }
    }

    /// A zero state for `batch` sequences: [B, C, k−1].
    public func initialState(batch: Int) -> Tensor { .zeros([batch, channels, kernelSize - 1]) }

    /// Consumes x [B, T, C] (T ≥ 1) from `state` [B, C, k−1]; returns y [B, T, C] and updates the state.
    public func step(_ x: Tensor, state: inout Tensor) -> Tensor {
        let (b, t, c, k) = (x.shape[0], x.shape[1], channels, kernelSize)
        precondition(x.rank == 3 && c == x.shape[2] && state.shape == [b, c, k - 1],
                     "CausalConv1d.step: input \(describe(x.shape)) and state \(describe(state.shape)) do not fit C = \(c), k = \(k)")
        var y = Tensor(uninitializedShape: x.shape)
        let py = y.mutablePointer(), ps = state.mutablePointer()
        let px = x.pointer, pw = weight.value.pointer, pb = bias?.value.pointer
        for bi in 0..<b {
            for ti in 0..<t {
                for ci in 0..<c {
                    let s = ps + (bi * c + ci) * (k - 1)
                    let xt = px[(bi * t + ti) * c + ci]
                    var acc: Float = pb?[ci] ?? 0
                    for j in 0..<(k - 1) { acc += pw[ci * k + j] * s[j] }
                    acc += pw[ci * k + k - 1] * xt
                    py[(bi * t + ti) * c + ci] = acc
                    if k > 1 {
                        for j in 0..<(k - 2) { s[j] = s[j + 1] }
                        s[k - 2] = xt
                    }
                }
            }
        }
        return y
    }
}

func causalConvForward(_ x: Tensor, _ w: Tensor, _ bias: Tensor?) -> Tensor {
    let (b, t, c) = (x.shape[0], x.shape[1], x.shape[2])
    let k = w.shape[2]
    // Weights transposed to [k, C] so the inner loop runs over contiguous channels.
    var wt = [Float](repeating: 0, count: k * c)
    for ci in 0..<c { for j in 0..<k { wt[j * c + ci] = w.pointer[ci * k + j] } }
    var y = Tensor(uninitializedShape: x.shape)
    let py = SendablePointer(y.mutablePointer()), px = SendablePointer(UnsafeMutablePointer(mutating: x.pointer))
    let pb = bias.map { SendablePointer(UnsafeMutablePointer(mutating: $0.pointer)) }
    wt.withUnsafeMutableBufferPointer { wtBuf in
        let pwt = SendablePointer(wtBuf.baseAddress!)
        ZooThreads.parallelFor(b * t, minChunk: Swift.max(1, 4096 / Swift.max(c * k, 1))) { range in
            for row in range {
                let bi = row / t, ti = row % t
                let out = py + row * c
                if let pb { out.update(from: pb.pointer, count: c) } else { out.update(repeating: 0, count: c) }
                for j in 0..<k {
                    let src = ti - (k - 1) + j
                    if src < 0 { continue }
                    let xr = px + (bi * t + src) * c, wr = pwt + j * c
                    var i = 0
                    while i + 16 <= c { store16(out + i, load16(out + i).addingProduct(load16(wr + i), load16(xr + i))); i += 16 }
                    while i < c { out[i] += wr[i] * xr[i]; i += 1 }
                }
            }
        }
    }
    return y
}

func causalConvBackward(_ g: Tensor, _ x: Tensor, _ w: Tensor, hasBias: Bool) -> (Tensor, Tensor, Tensor) {
    let (b, t, c) = (x.shape[0], x.shape[1], x.shape[2])
    let k = w.shape[2]
    var dx = Tensor.zeros(x.shape)
    var dwt = [Float](repeating: 0, count: k * c)       // [k, C]
    var db = Tensor.zeros([c])
    let pdx = dx.mutablePointer(), pdb = db.mutablePointer()
    let px = x.pointer, pg = g.pointer, pw = w.pointer
    var wt = [Float](repeating: 0, count: k * c)
    for ci in 0..<c { for j in 0..<k { wt[j * c + ci] = pw[ci * k + j] } }
    // dx[src] += w[j] ⊙ g[t];  dw[j] += g[t] ⊙ x[src];  db += g[t]   (src = t − (k−1) + j)
    dwt.withUnsafeMutableBufferPointer { dwtBuf in
        wt.withUnsafeBufferPointer { wtBuf in
            let pdw = dwtBuf.baseAddress!, pwt = wtBuf.baseAddress!
            for bi in 0..<b {
                for ti in 0..<t {
                    let gr = pg + (bi * t + ti) * c
                    if hasBias { simdAxpy(1, gr, pdb, c) }
                    for j in 0..<k {
                        let src = ti - (k - 1) + j
                        if src < 0 { continue }
                        let xr = px + (bi * t + src) * c, dxr = pdx + (bi * t + src) * c
                        let wr = pwt + j * c, dwr = pdw + j * c
                        var i = 0
                        while i + 16 <= c {
                            let gv = load16(gr + i)
                            store16(dxr + i, load16(dxr + i).addingProduct(load16(wr + i), gv))
                            store16(dwr + i, load16(dwr + i).addingProduct(load16(xr + i), gv))
                            i += 16
                        }
                        while i < c { dxr[i] += wr[i] * gr[i]; dwr[i] += xr[i] * gr[i]; i += 1 }
                    }
                }
            }
        }
    }
    var dw = Tensor(uninitializedShape: w.shape)
    let pdwOut = dw.mutablePointer()
    for ci in 0..<c { for j in 0..<k { pdwOut[ci * k + j] = dwt[j * c + ci] } }
    return (dx, dw, db)
}
