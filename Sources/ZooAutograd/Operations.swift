import ZooTensor

// Differentiable primitives. Each backward sits beside its forward.

// MARK: - Broadcasting arithmetic

extension Variable {
    public static func + (a: Variable, b: Variable) -> Variable {
        let y = a.value + b.value
        let (sa, sb) = (a.shape, b.shape)
        return record(y, inputs: [a, b]) { g in [g.sumToShape(sa), g.sumToShape(sb)] }
    }

    public static func - (a: Variable, b: Variable) -> Variable {
        let y = a.value - b.value
        let (sa, sb) = (a.shape, b.shape)
        return record(y, inputs: [a, b]) { g in [g.sumToShape(sa), (-g).sumToShape(sb)] }
    }

    public static func * (a: Variable, b: Variable) -> Variable {
        let y = a.value * b.value
        let (va, vb) = (a.value, b.value)
        return record(y, inputs: [a, b]) { g in
            [a.requiresGrad ? (g * vb).sumToShape(va.shape) : nil,
             b.requiresGrad ? (g * va).sumToShape(vb.shape) : nil]
        }
    }

    public static func / (a: Variable, b: Variable) -> Variable {
        let y = a.value / b.value
        let (va, vb) = (a.value, b.value)
        return record(y, inputs: [a, b]) { g in
            [a.requiresGrad ? (g / vb).sumToShape(va.shape) : nil,
             b.requiresGrad ? (-(g * va) / (vb * vb)).sumToShape(vb.shape) : nil]
        }
    }

    public static prefix func - (a: Variable) -> Variable {
        record(-a.value, inputs: [a]) { g in [-g] }
    }

    public static func * (a: Variable, s: Float) -> Variable {
        record(a.value * s, inputs: [a]) { g in [g * s] }
    }
    public static func * (s: Float, a: Variable) -> Variable { a * s }
    public static func + (a: Variable, s: Float) -> Variable {
        record(a.value + s, inputs: [a]) { g in [g] }
    }
    public static func - (a: Variable, s: Float) -> Variable { a + (-s) }
    public static func / (a: Variable, s: Float) -> Variable { a * (1 / s) }
}

// MARK: - Unary functions

extension Variable {
    public func exp() -> Variable {
        let y = value.exp()
        return record(y, inputs: [self]) { g in [g * y] }
    }

    public func log() -> Variable {
        let x = value
        return record(x.log(), inputs: [self]) { g in [g / x] }
    }

    public func tanh() -> Variable {
        let y = value.tanh()
        return record(y, inputs: [self]) { g in [Tensor.tanhGradient(output: y, g)] }
    }

    public func sigmoid() -> Variable {
        let y = value.sigmoid()
        return record(y, inputs: [self]) { g in [Tensor.sigmoidGradient(output: y, g)] }
    }

    /// x · σ(x); derivative σ(x) · (1 + x · (1 − σ(x))).
    public func silu() -> Variable {
        let x = value
        return record(x.silu(), inputs: [self]) { g in [Tensor.siluGradient(x, g)] }
    }

    /// log(1 + eˣ); derivative σ(x).
    public func softplus() -> Variable {
        let x = value
        return record(x.softplus(), inputs: [self]) { g in [Tensor.softplusGradient(x, g)] }
    }

    /// GELU, tanh approximation: 0.5·x·(1 + tanh(c·(x + 0.044715·x³))), c = √(2/π).
    public func gelu() -> Variable {
        let x = value
        return record(x.gelu(), inputs: [self]) { g in [Tensor.geluGradient(x, g)] }
    }

    public func squared() -> Variable {
        let x = value
        return record(x.squared(), inputs: [self]) { g in [2 * g * x] }
    }

    public func sqrt() -> Variable {
        let y = value.sqrt()
        return record(y, inputs: [self]) { g in [g / (2 * y)] }
    }
}

// MARK: - Reductions

extension Variable {
    public func sum(axes: [Int] = [], keepDims: Bool = false) -> Variable {
        let shape = self.shape
        let kept = keptShape(axes)
        return record(value.sum(axes: axes, keepDims: keepDims), inputs: [self]) { g in
            [g.reshaped(kept).broadcast(to: shape)]
        }
    }

    public func mean(axes: [Int] = [], keepDims: Bool = false) -> Variable {
        let shape = self.shape
        let kept = keptShape(axes)
        let n = Float(shape.reduce(1, *) / Swift.max(kept.reduce(1, *), 1))
        return record(value.mean(axes: axes, keepDims: keepDims), inputs: [self]) { g in
            [(g * (1 / n)).reshaped(kept).broadcast(to: shape)]
        }
    }

    /// Maximum over axes; the gradient is shared equally by tied maxima.
    public func max(axes: [Int] = [], keepDims: Bool = false) -> Variable {
        let x = value
        let kept = keptShape(axes)
        let m = x.max(axes: axes, keepDims: true)
        let y = keepDims ? m : x.max(axes: axes, keepDims: false)
        return record(y, inputs: [self]) { g in
            let mask = isEqualMask(x, m)
            let ties = mask.sum(axes: axes.isEmpty ? Array(0..<x.rank) : axes, keepDims: true)
            return [mask * (g.reshaped(kept) / ties)]
        }
    }

    private func isReduced(_ axis: Int, _ axes: [Int]) -> Bool {
        axes.isEmpty || axes.contains { ($0 < 0 ? $0 + rank : $0) == axis }
    }

    /// The input shape with reduced axes set to 1.
    func keptShape(_ axes: [Int]) -> [Int] {
        shape.enumerated().map { isReduced($0.offset, axes) ? 1 : $0.element }
    }
}

/// 1 where x equals the (broadcast) m, else 0.
func isEqualMask(_ x: Tensor, _ m: Tensor) -> Tensor {
    let mb = m.broadcast(to: x.shape)
    return Tensor(shape: x.shape) { buf in
        for i in 0..<buf.count { buf[i] = x.pointer[i] == mb.pointer[i] ? 1 : 0 }
    }
}

// MARK: - Softmax family

extension Variable {
    /// softmax over the last axis; dx = y ⊙ (g − Σ g ⊙ y).
    public func softmax() -> Variable {
        let y = value.softmax()
        return record(y, inputs: [self]) { g in
            let dot = (g * y).sum(axes: [-1], keepDims: true)
            return [y * (g - dot)]
        }
    }

    /// log Σ exp over the last axis; dx = g ⊙ softmax(x).
    public func logsumexp() -> Variable {
        let x = value
        return record(x.logsumexp(), inputs: [self]) { g in
            [x.softmax() * g.reshaped(g.shape + [1])]
        }
    }
}

// MARK: - Matrix products

/// Projections of one input by row blocks of weights, as one node: part p is
/// y_p = x · W_p[rows_p]ᵀ, x [..., in] → [..., rows_p.count] (`Tensor.projections`: one pass
/// over x forward, one over dx backward, no split or sum afterwards). A weight may serve several
/// parts (Mamba-2's in_proj cut into z, x, B, C and dt); its gradient collects each part's rows.
public func projections(_ x: Variable, _ parts: [(weight: Variable, rows: Range<Int>)]) -> [Variable] {
    let weights = parts.map(\.weight.value), rows = parts.map(\.rows)
    let xv = x.value
    let ys = Tensor.projections(xv, weights: weights, rows: rows)
    // Each distinct weight is one input of the node; `owner[p]` says which.
    var distinct: [Variable] = [], owner: [Int] = []
    for part in parts {
        if let i = distinct.firstIndex(where: { $0 === part.weight }) { owner.append(i) }
        else { owner.append(distinct.count); distinct.append(part.weight) }
    }
    return recordMulti(ys, inputs: [x] + distinct) { grads in
        let dx = x.requiresGrad ? Tensor.projectionInputGradient(grads, weights: weights, rows: rows, inputShape: xv.shape) : nil
        // Only the parts of weights that want a gradient.
        let wanted = grads.indices.map { distinct[owner[$0]].requiresGrad ? grads[$0] : nil }
        let dws = Tensor.projectionWeightGradients(wanted, x: xv, rows: rows, owners: owner, weightShapes: distinct.map(\.shape))
        return [dx] + dws
    }
}

/// a [..., m, k] · b [..., k, n] (transposes as flags). b may be a plain matrix shared by the batch.
public func matmul(_ a: Variable, _ b: Variable, transA: Bool = false, transB: Bool = false) -> Variable {
    let (va, vb) = (a.value, b.value)
    let y = Tensor.matmul(va, vb, transA: transA, transB: transB)
    return record(y, inputs: [a, b]) { g in
        var da: Tensor? = nil, db: Tensor? = nil
        if a.requiresGrad {
            switch (transA, transB) {
            case (false, false): da = Tensor.matmul(g, vb, transB: true)
            case (false, true): da = Tensor.matmul(g, vb)
            case (true, false): da = batchedProduct(vb, g, transA: false, transB: true, batchShape: va.shape)
            case (true, true): da = batchedProduct(vb, g, transA: true, transB: true, batchShape: va.shape)
            }
        }
        if b.requiresGrad {
            if vb.rank == 2 && va.rank > 2 && !transA {
                // b is shared by the batch: fold the batch into the rows and sum in one product.
                let k = va.shape[va.rank - 1], n = g.shape[g.rank - 1]
                let a2 = va.reshaped([-1, k]), g2 = g.reshaped([-1, n])
                db = transB ? Tensor.matmul(g2, a2, transA: true) : Tensor.matmul(a2, g2, transA: true)
            } else {
                switch (transA, transB) {
                case (false, false): db = batchedProduct(va, g, transA: true, transB: false, batchShape: vb.shape)
                case (false, true): db = batchedProduct(g, va, transA: true, transB: false, batchShape: vb.shape)
                case (true, false): db = batchedProduct(va, g, transA: false, transB: false, batchShape: vb.shape)
                case (true, true): db = batchedProduct(g, va, transA: true, transB: true, batchShape: vb.shape)
                }
            }
        }
        return [da, db]
    }
}

/// A product whose result is summed down to `batchShape` when that operand was broadcast.
private func batchedProduct(_ x: Tensor, _ y: Tensor, transA: Bool, transB: Bool, batchShape: [Int]) -> Tensor {
    if batchShape.count == 2 && x.rank > 2 {
        // The operand was a shared matrix: per-batch products summed over the batch.
        let full = Tensor.matmul(x, y.rank == 2 ? y : y, transA: transA, transB: transB)
        return full.sum(axes: Array(0..<(full.rank - 2)))
    }
    return Tensor.matmul(x, y, transA: transA, transB: transB)
}

// MARK: - Shape

extension Variable {
    public func reshaped(_ shape: [Int]) -> Variable {
        let original = self.shape
        return record(value.reshaped(shape), inputs: [self]) { g in [g.reshaped(original)] }
    }

    public func permuted(_ order: [Int]) -> Variable {
        var inverse = [Int](repeating: 0, count: order.count)
        for (i, o) in order.enumerated() { inverse[o] = i }
        return record(value.permuted(order), inputs: [self]) { g in [g.permuted(inverse)] }
    }

    public func transposed(_ a: Int = -2, _ b: Int = -1) -> Variable {
        var order = Array(0..<rank)
        let x = a < 0 ? a + rank : a, y = b < 0 ? b + rank : b
        order.swapAt(x, y)
        return permuted(order)
    }

    public func slice(axis: Int, _ range: Range<Int>) -> Variable {
        let shape = self.shape
        let ax = axis < 0 ? axis + rank : axis
        return record(value.slice(axis: axis, range), inputs: [self]) { g in
            var parts: [Tensor] = []
            if range.lowerBound > 0 { var s = shape; s[ax] = range.lowerBound; parts.append(.zeros(s)) }
            parts.append(g)
            if range.upperBound < shape[ax] { var s = shape; s[ax] = shape[ax] - range.upperBound; parts.append(.zeros(s)) }
            return [parts.count == 1 ? g : Tensor.concatenate(parts, axis: ax)]
        }
    }

    /// Pieces along `axis`, recorded as one node: the backward concatenates the pieces' gradients
    /// (zeros only for pieces that received none), instead of one zero-padded full-size gradient
    /// per piece.
    public func split(axis: Int, sizes: [Int]) -> [Variable] {
        let parts = value.split(axis: axis, sizes: sizes)
        let ax = axis < 0 ? axis + rank : axis
        return recordMulti(parts, inputs: [self]) { grads in
            let filled = zip(grads, parts).map { $0 ?? Tensor.zeros($1.shape) }
            return [Tensor.concatenate(filled, axis: ax)]
        }
    }

    public static func concatenate(_ parts: [Variable], axis: Int) -> Variable {
        let y = Tensor.concatenate(parts.map(\.value), axis: axis)
        let ax = axis < 0 ? axis + y.rank : axis
        let sizes = parts.map { $0.shape[ax] }
        return record(y, inputs: parts) { g in g.split(axis: ax, sizes: sizes).map { Optional($0) } }
    }

    /// Rows of a table (e.g. an embedding) by index; the gradient scatters back and accumulates.
    public func gatherRows(_ indices: [Int]) -> Variable {
        let rows = shape[0]
        return record(value.gatherRows(indices), inputs: [self]) { g in
            [Tensor.scatterAddRows(g, indices: indices, rows: rows)]
        }
    }
}
