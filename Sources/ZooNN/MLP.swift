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
        case .gelu: return down(first(x).gelu())
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

/// SiLU(a) ⊙ b.
public enum SwiGLUKernel: BinaryElementKernel {
    @inline(__always) public static func apply(_ a: F16, _ b: F16) -> F16 { a * fastSigmoid(a) * b }
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
