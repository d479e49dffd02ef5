import ZooTensor
import ZooAutograd

/// The feed-forward block after each mixer.
///   SwiGLU: down(SiLU(gate(x)) ⊙ up(x))      (parameters gate, up, down)
///   GELU:   fc2(GELU(fc1(x)))                 (parameters fc1, fc2)
public struct MLP: Module {
    public enum Kind: String, Codable, Sendable, CaseIterable { case swiglu, gelu }
    public let kind: Kind
    let first: Linear        // gate (SwiGLU) or fc1 (GELU)
    let up: Linear?          // SwiGLU only
    public let down: Linear  // down (SwiGLU) or fc2 (GELU): a residual output projection

    public init(dim: Int, hidden: Int, kind: Kind = .swiglu, std: Float = 0.02, outputStd: Float? = nil,
                generator: inout SeededGenerator) {
        self.kind = kind
        first = Linear(dim, hidden, std: std, generator: &generator)
        up = kind == .swiglu ? Linear(dim, hidden, std: std, generator: &generator) : nil
        down = Linear(hidden, dim, std: outputStd ?? std, generator: &generator)
    }

    public func callAsFunction(_ x: Variable) -> Variable {
        switch kind {
        case .swiglu: return down(swiGLU(first(x), up!(x)))
        case .gelu:
            guard GemmPolicy.fuseMLP, first.bias == nil, down.bias == nil else { return down(first(x).gelu()) }
            return geluMLP(x, fc1: first.weight, fc2: down.weight)
        }
    }

    public func apply(_ x: Tensor) -> Tensor {
        switch kind {
        case .swiglu: return down.apply(Tensor.elementwise(first.apply(x), up!.apply(x), SwiGLUKernel.self, op: "swiglu"))
        case .gelu: return down.apply(first.apply(x).gelu())
        }
    }

    public func namedParameters() -> [NamedParameter] {
        switch kind {
        case .swiglu: return nested("gate", first) + nested("up", up!) + nested("down", down)
        case .gelu: return nested("fc1", first) + nested("fc2", down)
        }
    }
}

/// fc2(GELU(fc1(x))) without biases, as one node: y = GELU(x · W1ᵀ) · W2ᵀ, x [..., d], W1 [hidden, d],
/// W2 [d, hidden]. The GELU runs on each block of rows of h = x · W1ᵀ as soon as the product has
/// computed it, and in the backward GELU′ multiplies each block of dY · W2 the same way, so
/// neither h nor dG = dY · W2 takes a pass of its own over memory (`parallelGemm(…afterRows:)`):
///   dH = (dY · W2) ⊙ GELU′(h),  dW2 = dYᵀ · g,  dW1 = dHᵀ · x,  dX = dH · W1   (g = GELU(h))
/// Every product and element-wise kernel is the one the separate nodes use, so values and
/// gradients are bit-identical to `fc2(fc1(x).gelu())` (tested).
public func geluMLP(_ x: Variable, fc1: Variable, fc2: Variable) -> Variable {
    let (xv, w1, w2) = (x.value, fc1.value, fc2.value)
    let d = xv.shape.last ?? 0, hidden = w1.shape[0]
    precondition(w1.shape == [hidden, d] && w2.shape == [d, hidden] && xv.rank >= 2,
                 "geluMLP: x \(describe(xv.shape)), W1 \(describe(w1.shape)) and W2 \(describe(w2.shape)) do not fit (want W1 [hidden, d], W2 [d, hidden])")
    let rows = xv.count / Swift.max(d, 1)
    let hiddenShape = Array(xv.shape.dropLast()) + [hidden]
    var h = Tensor(uninitializedShape: hiddenShape), g = Tensor(uninitializedShape: hiddenShape)
    let ph = SendablePointer(h.mutablePointer()), pg = SendablePointer(g.mutablePointer())
    parallelGemm(transB: true, m: rows, n: hidden, k: d, a: xv.pointer, b: w1.pointer, c: ph.pointer) { r in
        geluElements(ph.pointer + r.lowerBound * hidden, pg.pointer + r.lowerBound * hidden, count: r.count * hidden)
    }
    let y = Tensor.matmul(g, w2, transB: true)
    return record(y, inputs: [x, fc1, fc2]) { dy in
        var dh = Tensor(uninitializedShape: hiddenShape)
        let pdh = SendablePointer(dh.mutablePointer()), hv = SendablePointer(UnsafeMutablePointer(mutating: h.pointer))
        parallelGemm(transB: false, m: rows, n: hidden, k: d, a: dy.pointer, b: w2.pointer, c: pdh.pointer) { r in
            geluGradientElements(hv.pointer + r.lowerBound * hidden, pdh.pointer + r.lowerBound * hidden, count: r.count * hidden)
        }
        let dh2 = dh.reshaped([rows, hidden])
        let dw2 = fc2.requiresGrad ? Tensor.matmul(dy.reshaped([rows, d]), g.reshaped([rows, hidden]), transA: true) : nil
        let dw1 = fc1.requiresGrad ? Tensor.matmul(dh2, xv.reshaped([rows, d]), transA: true) : nil
        let dx = x.requiresGrad ? Tensor.matmul(dh, w1) : nil
        return [dx, dw1, dw2]
    }
}

/// SiLU(a) ⊙ b.
public enum SwiGLUKernel: BinaryElementKernel {
    @inline(always) public static func apply(_ a: F16, _ b: F16) -> F16 { a * fastSigmoid(a) * b }
    @inline(__always) public static func apply(_ a: Float, _ b: Float) -> Float { apply(F16(repeating: a), F16(repeating: b))[0] }
}

/// SiLU(gate) ⊙ up as one node (same shapes): the forward is one pass, and the backward writes
///   d gate = g ⊙ up ⊙ σ(a)·(1 + a·(1 − σ(a))),  d up = g ⊙ a·σ(a)
/// in one pass over (a, up, g), where composing SiLU and a product took five.
public func swiGLU(_ gate: Variable, _ up: Variable) -> Variable {
    let (a, b) = (gate.value, up.value)
    precondition(a.shape == b.shape, "swiGLU: gate \(describe(a.shape)) and up \(describe(b.shape)) differ")
    let y = Tensor.elementwise(a, b, SwiGLUKernel.self, op: "swiglu")
    return record(y, inputs: [gate, up]) { g in
        var da = Tensor(uninitializedShape: a.shape), db = Tensor(uninitializedShape: b.shape)
        let n = a.count
        let pa = SendablePointer(UnsafeMutablePointer(mutating: a.pointer)), pb = SendablePointer(UnsafeMutablePointer(mutating: b.pointer))
        let pg = SendablePointer(UnsafeMutablePointer(mutating: g.pointer))
        let pda = SendablePointer(da.mutablePointer()), pdb = SendablePointer(db.mutablePointer())
        ZooThreads.parallelFor((n + 15) / 16, minChunk: 4096) { range in
            for v in range {
                let i = v * 16, lanes = Swift.min(16, n - i)
                var av = F16(), bv = F16(), gv = F16()
                if lanes == 16 { av = load16(pa + i); bv = load16(pb + i); gv = load16(pg + i) }
                else { for l in 0..<lanes { av[l] = pa[i + l]; bv[l] = pb[i + l]; gv[l] = pg[i + l] } }
                let s = fastSigmoid(av)
                let dav = gv * bv * s * (1 + av * (1 - s)), dbv = gv * av * s
                if lanes == 16 { store16(pda + i, dav); store16(pdb + i, dbv) }
                else { for l in 0..<lanes { pda[i + l] = dav[l]; pdb[i + l] = dbv[l] } }
            }
        }
        return [da, db]
    }
}
