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

    /// What follows the convolution inside the same node.
    public enum Activation: Sendable { case none, silu }

    /// y = conv(x), or SiLU(conv(x)) as one node: the SiLU is applied to each output row as it is
    /// computed, and its derivative to each gradient row inside the backward, so neither the
    /// convolution's output nor its gradient takes a pass of its own over memory. Bit-identical
    /// to `self(x).silu()` (tested).
    public func callAsFunction(_ x: Variable, activation: Activation = .none) -> Variable {
        precondition(x.rank == 3 && x.shape[2] == channels, "CausalConv1d: input \(describe(x.shape)) is not [B, T, \(channels)]")
        let xv = x.value, wv = weight.value
        let bv = bias?.value
        let (a, y) = causalConvForward(xv, wv, bv, silu: activation == .silu)
        let inputs = [x, weight] + (bias.map { [$0] } ?? [])
        return record(y, inputs: inputs) { g in
            let (dx, dw, db) = causalConvBackward(g, xv, wv, hasBias: bv != nil, siluInput: a)
            return [dx, dw] + (bv != nil ? [db] : [])
        }
    }

    /// The convolution of an input given as channel blocks, each its own [B, T, C_p] tensor (the
    /// blocks in channel order, C_p adding up to C): the outputs are `self(concatenated)` cut the
    /// same way. The convolution is depthwise, so each block needs only its channels' weights
    /// (slices of the parameters, which collect the blocks' gradients); nothing is joined or split.
    public func split(_ parts: [Variable], activation: Activation = .none) -> [Variable] {
        precondition(parts.allSatisfy { $0.rank == 3 } && parts.map { $0.shape[2] }.reduce(0, +) == channels,
                     "CausalConv1d.split: blocks \(parts.map { describe($0.shape) }) do not add up to \(channels) channels")
        var start = 0
        return parts.map { part in
            let range = start ..< start + part.shape[2]
            start = range.upperBound
            if range.count == channels { return self(part, activation: activation) }
            return CausalConv1d(sharing: weight.slice(axis: 0, range), bias: bias?.slice(axis: 0, range))(part, activation: activation)
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

/// The convolution's output a [B, T, C] and, with `silu`, y = SiLU(a) written row by row from
/// the same registers' results (a is then kept for the backward); without, y is a.
func causalConvForward(_ x: Tensor, _ w: Tensor, _ bias: Tensor?, silu: Bool) -> (a: Tensor?, y: Tensor) {
    let (b, t, c) = (x.shape[0], x.shape[1], x.shape[2])
    let k = w.shape[2]
    // Weights transposed to [k, C] so the inner loop runs over contiguous channels.
    var wt = [Float](repeating: 0, count: k * c)
    for ci in 0..<c { for j in 0..<k { wt[j * c + ci] = w.pointer[ci * k + j] } }
    var a = Tensor(uninitializedShape: x.shape), activated = Tensor(uninitializedShape: silu ? x.shape : [0])
    let pa = SendablePointer(a.mutablePointer()), px = SendablePointer(UnsafeMutablePointer(mutating: x.pointer))
    let py = SendablePointer(activated.mutablePointer())
    let pb = bias.map { SendablePointer(UnsafeMutablePointer(mutating: $0.pointer)) }
    wt.withUnsafeMutableBufferPointer { wtBuf in
        let pwt = SendablePointer(wtBuf.baseAddress!)
        ZooThreads.parallelFor(b * t, minChunk: Swift.max(1, 4096 / Swift.max(c * k, 1))) { range in
            for row in range {
                let bi = row / t, ti = row % t
                let out = pa + row * c
                if let pb { out.update(from: pb.pointer, count: c) } else { out.update(repeating: 0, count: c) }
                for j in 0..<k {
                    let src = ti - (k - 1) + j
                    if src < 0 { continue }
                    multiplyAdd(out, pwt + j * c, px + (bi * t + src) * c, count: c)
                }
                if silu { siluElements(out, py + row * c, count: c) }
            }
        }
    }
    return silu ? (a, activated) : (nil, a)
}

/// Gradients of the convolution from the output's gradient g (of SiLU(a) when `siluInput` is a):
///   da = g (or g ⊙ SiLU′(a));  dx[s] = Σ_j w[j] ⊙ da[s + k−1−j];  dw[j] = Σ_t da[t] ⊙ x[t−(k−1)+j];  db = Σ_t da[t]
/// Work items are (sequence, block of 64 steps), split over the workers: an item computes da for
/// its steps and the k−1 after them into a scratch tile (so each dx row is a gather, written by
/// one item) and its partial dw, db; the partials are summed in item order, so the result does
/// not depend on the thread count.
func causalConvBackward(_ g: Tensor, _ x: Tensor, _ w: Tensor, hasBias: Bool, siluInput: Tensor?) -> (Tensor, Tensor, Tensor) {
    let (b, t, c) = (x.shape[0], x.shape[1], x.shape[2])
    let k = w.shape[2]
    let block = 64, blocksPerSequence = (t + block - 1) / block, items = b * blocksPerSequence
    var dx = Tensor(uninitializedShape: x.shape)
    var wt = [Float](repeating: 0, count: k * c)
    for ci in 0..<c { for j in 0..<k { wt[j * c + ci] = w.pointer[ci * k + j] } }
    let partials = ScratchBuffer(count: items * (k + 1) * c)    // per item: dw as [k, C], then db [C]
    let pdx = SendablePointer(dx.mutablePointer()), pp = SendablePointer(partials.pointer)
    let px = SendablePointer(UnsafeMutablePointer(mutating: x.pointer)), pg = SendablePointer(UnsafeMutablePointer(mutating: g.pointer))
    let pa = siluInput.map { SendablePointer(UnsafeMutablePointer(mutating: $0.pointer)) }
    withExtendedLifetime((x, g, siluInput, partials)) {
        wt.withUnsafeBufferPointer { wtBuf in
            let pwt = SendablePointer(UnsafeMutablePointer(mutating: wtBuf.baseAddress!))
            ZooThreads.parallelFor(items) { range in
                let tile = ScratchBuffer(count: (block + k - 1) * c, zeroed: false)
                for item in range {
                    let bi = item / blocksPerSequence, t0 = (item % blocksPerSequence) * block
                    let t1 = Swift.min(t, t0 + block), tEnd = Swift.min(t, t1 + k - 1)
                    // da rows t0 ..< tEnd into the tile.
                    for ti in t0..<tEnd {
                        let gr = pg + (bi * t + ti) * c, dar = tile.pointer + (ti - t0) * c
                        if let pa { siluGradientElements(pa + (bi * t + ti) * c, gr, dar, count: c) }
                        else { dar.update(from: gr, count: c) }
                    }
                    let dw = pp + item * (k + 1) * c, db = dw + k * c
                    for ti in t0..<t1 {
                        let dar = tile.pointer + (ti - t0) * c
                        if hasBias { simdAxpy(1, dar, db, c) }
                        // dx[ti] = Σ_j w[j] ⊙ da[ti + k−1−j]
                        let dxr = pdx + (bi * t + ti) * c
                        dxr.update(repeating: 0, count: c)
                        for j in 0..<k {
                            let dst = ti + (k - 1) - j
                            if dst >= t { continue }
                            multiplyAdd(dxr, pwt + j * c, tile.pointer + (dst - t0) * c, count: c)
                        }
                        // dw[j] += da[ti] ⊙ x[ti − (k−1) + j]
                        for j in 0..<k {
                            let src = ti - (k - 1) + j
                            if src < 0 { continue }
                            multiplyAdd(dw + j * c, px + (bi * t + src) * c, dar, count: c)
                        }
                    }
                }
            }
        }
    }
    // Sum the items' partials in item order (no items, T = 0: zero gradients).
    var sums = [Float](repeating: 0, count: (k + 1) * c)
    sums.withUnsafeMutableBufferPointer { buf in
        for item in 0..<items { simdAxpy(1, partials.pointer + item * (k + 1) * c, buf.baseAddress!, (k + 1) * c) }
    }
    var dw = Tensor(uninitializedShape: w.shape)
    let pdwOut = dw.mutablePointer()
    for ci in 0..<c { for j in 0..<k { pdwOut[ci * k + j] = sums[j * c + ci] } }
    let db = Tensor(shape: [c], scalars: Array(sums[(k * c)...]))
    return (dx, dw, db)
}

/// y[i] += a[i] · b[i] for i < count: fused multiply-adds on whole vectors, a multiply and an add
/// for the last count mod 16 elements.
@inline(__always) private func multiplyAdd(_ y: UnsafeMutablePointer<Float>, _ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, count c: Int) {
    var i = 0
    while i + 16 <= c { store16(y + i, load16(y + i).addingProduct(load16(a + i), load16(b + i))); i += 16 }
    while i < c { y[i] += a[i] * b[i]; i += 1 }
}
