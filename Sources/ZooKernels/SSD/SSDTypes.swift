// Shapes, options and argument structs of the SSD (Mamba-2) kernels.
//
//   x [B,T,H,P]   dt [B,T,H]   A [H] (negative)   B, C [B,T,G,N] (H % G == 0; head h reads group
//   h / (H/G))   D [H]   dtBias [H]   initial state h0 [B,H,P,N] (optional)
//
//   Δ_t = softplus(dt_t + dtBias_h)        (identity instead of softplus when asked)
//   S_t = exp(Δ_t A_h) S_{t−1} + Δ_t x_t B_tᵀ     (P×N per head, S_{−1} = h0)
//   y_t = S_t C_t + D_h x_t
import ZooTensor

/// Sizes of one SSD problem (../shared/DESIGN.md §4, "SSD").
public struct SSDShape: Equatable, Sendable, CustomStringConvertible {
    public var batch: Int
    public var length: Int
    public var heads: Int
    /// P: value dimension per head.
    public var headDim: Int
    /// G: number of B/C groups; head h uses group h / (heads / groups).
    public var groups: Int
    /// N: state size.
    public var stateSize: Int

    public init(batch: Int, length: Int, heads: Int, headDim: Int, groups: Int, stateSize: Int) {
        self.batch = batch; self.length = length; self.heads = heads
        self.headDim = headDim; self.groups = groups; self.stateSize = stateSize
    }

    public var headsPerGroup: Int { heads / groups }
    public var xShape: [Int] { [batch, length, heads, headDim] }
    public var dtShape: [Int] { [batch, length, heads] }
    public var bcShape: [Int] { [batch, length, groups, stateSize] }
    public var stateShape: [Int] { [batch, heads, headDim, stateSize] }
    public var description: String {
        "B=\(batch) T=\(length) H=\(heads) P=\(headDim) G=\(groups) N=\(stateSize)"
    }
}

/// Options of the chunked kernels.
public struct SSDOptions: Sendable {
    /// Q: tokens per chunk. Larger chunks move work from the state scan into the quadratic blocks.
    public var chunkSize: Int
    /// Δ = softplus(dt + dtBias) when true (Mamba-2's default), Δ = dt + dtBias otherwise.
    public var deltaSoftplus: Bool

    public init(chunkSize: Int = 64, deltaSoftplus: Bool = true) {
        self.chunkSize = chunkSize; self.deltaSoftplus = deltaSoftplus
    }
}

/// The inputs of an SSD call (Float32 tensors in the canonical [B, T, H, …] layout).
public struct SSDInputs {
    public var x: Tensor        // [B,T,H,P]
    public var dt: Tensor       // [B,T,H] (before bias and softplus)
    public var A: Tensor        // [H], negative
    public var B: Tensor        // [B,T,G,N]
    public var C: Tensor        // [B,T,G,N]
    public var D: Tensor        // [H]
    public var dtBias: Tensor   // [H]
    public var initialState: Tensor?   // [B,H,P,N]; nil means zeros

    public init(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, dtBias: Tensor,
                initialState: Tensor? = nil) {
        self.x = x; self.dt = dt; self.A = A; self.B = B; self.C = C; self.D = D
        self.dtBias = dtBias; self.initialState = initialState
    }

    /// The problem's sizes, after checking every tensor's shape; stops with a message naming
    /// `function` and the offending shapes otherwise.
    public func validatedShape(_ function: String) -> SSDShape {
        func fail(_ what: String) -> Never { fatalError("\(function): \(what)") }
        guard x.rank == 4 else { fail("x must be [B,T,H,P], got \(describe(x.shape))") }
        let s = SSDShape(batch: x.shape[0], length: x.shape[1], heads: x.shape[2], headDim: x.shape[3],
                         groups: B.rank == 4 ? B.shape[2] : 0, stateSize: B.rank == 4 ? B.shape[3] : 0)
        if s.batch < 1 || s.length < 1 || s.heads < 1 || s.headDim < 1 { fail("x needs positive sizes, got \(describe(x.shape))") }
        if B.rank != 4 || s.groups < 1 || s.stateSize < 1 { fail("B must be [B,T,G,N] with G, N ≥ 1, got \(describe(B.shape))") }
        if s.heads % s.groups != 0 { fail("heads \(s.heads) must be a multiple of groups \(s.groups)") }
        if B.shape != s.bcShape { fail("B is \(describe(B.shape)), expected \(describe(s.bcShape)) for x \(describe(x.shape))") }
        if C.shape != s.bcShape { fail("C is \(describe(C.shape)), expected \(describe(s.bcShape)) (same as B)") }
        if dt.shape != s.dtShape { fail("dt is \(describe(dt.shape)), expected \(describe(s.dtShape))") }
        for (name, t) in [("A", A), ("D", D), ("dtBias", dtBias)] where t.shape != [s.heads] {
            fail("\(name) is \(describe(t.shape)), expected [\(s.heads)]")
        }
        if let h0 = initialState, h0.shape != s.stateShape {
            fail("initialState is \(describe(h0.shape)), expected \(describe(s.stateShape))")
        }
        return s
    }
}

/// Output of the chunked forward.
public struct SSDForwardResult {
    /// y [B,T,H,P].
    public var y: Tensor
    /// The state after the last token, [B,H,P,N].
    public var finalState: Tensor
    /// The state entering every chunk and the final one, TRANSPOSED: [B,H,nChunks+1,N,P] (only
    /// when asked for; slot c is Sᵀ entering chunk c). Lets the backward skip recomputing them.
    /// Its size is T·P·N/Q per head, i.e. linear in T.
    public var chunkStates: Tensor?
}

/// Gradients of the loss with respect to every input (same shapes as the inputs).
public struct SSDGradients {
    public var x: Tensor
    public var dt: Tensor
    public var A: Tensor
    public var B: Tensor
    public var C: Tensor
    public var D: Tensor
    public var dtBias: Tensor
    /// Gradient with respect to the initial state (returned even when none was given: it is the
    /// gradient at h0 = 0, which chunked prefill needs).
    public var initialState: Tensor
}
