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
        case .swiglu: return down(first(x).silu() * up!(x))
        case .gelu: return down(first(x).gelu())
        }
    }

    public func apply(_ x: Tensor) -> Tensor {
        switch kind {
        case .swiglu: return down.apply(first.apply(x).silu() * up!.apply(x))
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
