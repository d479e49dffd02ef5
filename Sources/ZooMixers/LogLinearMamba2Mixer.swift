// Log-linear Mamba-2 mixer (YAML `type: loglinear_mamba2`): the Mamba-2 block with log-linear
// attention's Fenwick-level weights (Guo, Yang, Goel, Xing, Dao, Kim 2025).
//
//   x [B, T, D] → the Mamba-2 pieces (Mamba2Mixer.swift): in_proj → [z, xBC, dt]; causal conv +
//   SiLU over xBC; A = −exp(A_log), D, dt_bias; gated RMSNorm; out_proj — unchanged, plus
//   dl = x W_levels [B, T, H, L] (the extra in_proj slice: one row per head and level, kept as its
//   own matrix `in_proj_levels` so the Mamba-2 pieces are reused as they are) and
//   λ = softplus(L ⊙ dl) with L [H, L] initialised to ones (`lambda: softplus`; alternatives:
//   `sigmoid` σ(L ⊙ dl), `exp` e^{L ⊙ dl}, `ones` λ ≡ 1 — exactly Mamba-2, no extra parameters).
//   y = log-linear SSD(x, dt, A, B, C, D, dt_bias, λ) (ZooKernels/LogLinear) as ONE tape node.
//
// `levels` (L, default 16) fixes the λ width, so sequences up to 2^(L−1) tokens. Decoding keeps
// the conv window and the Fenwick state [B, H, ⌈log₂ t⌉ + 1, P, N]: O(log T) bytes, measured.

import Foundation
import ZooTensor
import ZooAutograd
import ZooKernels
import ZooNN

/// How λ is computed from the projection dl and the per-(head, level) scale L.
public enum LevelWeighting: String, Codable, Sendable, CaseIterable {
    case softplus, sigmoid, exp, ones
}

public struct LogLinearMamba2MixerConfig: MixerConfig, Equatable {
    public static let typeName = "loglinear_mamba2"
    public static let keyReference: [(key: String, description: String)] = Mamba2MixerConfig.keyReference + [
        ("levels", "λ levels per head L; sequences up to 2^(L−1) tokens (default 16)"),
        ("lambda", "level weights: softplus (λ = softplus(L ⊙ dl), default), sigmoid, exp, or ones (λ ≡ 1: Mamba-2)"),
    ]

    /// Every Mamba-2 key (d_state, head_dim, ngroups, expand, chunk, conv_kernel, dt_min, dt_max).
    public var mamba2: Mamba2MixerConfig
    public var levels: Int
    public var lambda: LevelWeighting

    public init() { self.init(mamba2: Mamba2MixerConfig()) }

    public init(mamba2: Mamba2MixerConfig, levels: Int = 16, lambda: LevelWeighting = .softplus) {
        self.mamba2 = mamba2; self.levels = levels; self.lambda = lambda
    }

    enum CodingKeys: String, CodingKey { case levels, lambda }

    public init(from decoder: Decoder) throws {
        mamba2 = try Mamba2MixerConfig(from: decoder)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        levels = try c.decodeIfPresent(Int.self, forKey: .levels) ?? 16
        lambda = try c.decodeIfPresent(LevelWeighting.self, forKey: .lambda) ?? .softplus
    }

    public func encode(to encoder: Encoder) throws {
        try mamba2.encode(to: encoder)
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(levels, forKey: .levels)
        try c.encode(lambda, forKey: .lambda)
    }

    public func validate(dModel: Int) throws(MixerConfigError) {
        try mamba2.validate(dModel: dModel)
        if mamba2.chunk & (mamba2.chunk - 1) != 0 {
            throw MixerConfigError(key: "chunk", "must be a power of two for the Fenwick levels, got \(mamba2.chunk)")
        }
        if levels < 1 || levels > 40 { throw MixerConfigError(key: "levels", "must be in 1…40, got \(levels)") }
    }

    public func makeMixer(_ context: MixerContext, generator: inout SeededGenerator) -> any Mixer {
        LogLinearMamba2Mixer(self, context: context, generator: &generator)
    }

    /// The conv window [B, E + 2·G·N, k−1] plus the Fenwick state [B, H, ⌈log₂ length⌉ + 1, P, N].
    public func stateBytes(batch: Int, length: Int, dModel: Int) -> Int {
        let conv = batch * mamba2.convChannels(dModel: dModel) * (mamba2.convKernel - 1) * MemoryLayout<Float>.stride
        return conv + LogLinearDecodeState.analyticByteCount(batch: batch, heads: mamba2.heads(dModel: dModel),
                                                             headDim: mamba2.headDim, stateSize: mamba2.dState, tokens: length)
    }

    /// λ has `levels` columns: positions up to 2^(levels−1) − 1.
    public func maximumLength(dModel: Int) -> Int? { levels >= 40 ? nil : 1 << (levels - 1) }
}

/// The decode state: the conv's last k−1 inputs and the Fenwick levels, one [P, N] per level.
public struct LogLinearMamba2MixerState: MixerState {
    /// [B, E + 2·G·N, k−1]
    public var conv: Tensor
    public var levels: LogLinearDecodeState
    public var position: Int { levels.position }
    public var byteCount: Int { conv.byteCount + levels.byteCount }
    /// The last token read the conv window and the 1 + popcount(t) occupied levels.
    public var bytesReadLastStep: Int {
        let occupied = position == 0 ? 0 : 1 + (position - 1).nonzeroBitCount
        return conv.byteCount + levels.batch * levels.heads * occupied * levels.headDim * levels.stateSize * MemoryLayout<Float>.stride
    }
}

public struct LogLinearMamba2Mixer: Mixer {
    public let config: LogLinearMamba2MixerConfig
    /// The Mamba-2 pieces: in_proj, conv, A_log, dt_bias, D, gated norm, out_proj.
    public let mamba2: Mamba2Mixer
    /// dl = x W_levels: [D] → [H·L] (nil for `lambda: ones`).
    public let levelProjection: Linear?
    /// L [H, levels], initialised to ones (nil for `lambda: ones`).
    public let levelScale: Variable?

    public init(_ config: LogLinearMamba2MixerConfig, context: MixerContext, generator: inout SeededGenerator) {
        do { try config.validate(dModel: context.dModel) } catch { fatalError("loglinear_mamba2 mixer: \(error)") }
        self.config = config
        mamba2 = Mamba2Mixer(config.mamba2, context: context, generator: &generator)
        if config.lambda == .ones {
            levelProjection = nil
            levelScale = nil
        } else {
            levelProjection = Linear(context.dModel, mamba2.heads * config.levels, std: context.weightStd, generator: &generator)
            levelScale = parameter(.ones([mamba2.heads, config.levels]))
        }
    }

    public func namedParameters() -> [NamedParameter] {
        var all = mamba2.namedParameters()
        if let levelProjection, let levelScale {
            all += nested("in_proj_levels", levelProjection) + [NamedParameter("level_scale", levelScale, decays: false)]
        }
        return all
    }

    var options: LogLinearOptions { LogLinearOptions(chunkSize: config.mamba2.chunk) }

    /// λ [B, T, H, levels] from the layer input.
    func levelWeights(_ x: Variable) -> Variable {
        let (b, t) = (x.shape[0], x.shape[1])
        guard let levelProjection, let levelScale else { return Variable(.ones([b, t, mamba2.heads, config.levels])) }
        let scaled = levelProjection(x).reshaped([b, t, mamba2.heads, config.levels]) * levelScale
        switch config.lambda {
        case .softplus: return scaled.softplus()
        case .sigmoid: return scaled.sigmoid()
        case .exp: return scaled.exp()
        case .ones: fatalError("unreachable")
        }
    }

    func checkLength(_ tokens: Int, _ function: String) {
        if let limit = config.maximumLength(dModel: mamba2.dModel), tokens > limit {
            fatalError("loglinear_mamba2 mixer \(function): \(tokens) tokens need \(logLinearLevelCount(tokens: tokens)) levels, the config has levels: \(config.levels) (at most \(limit) tokens)")
        }
    }

    public func callAsFunction(_ x: Variable) -> Variable {
        let m = mamba2
        precondition(x.rank == 3 && x.shape[2] == m.dModel, "loglinear_mamba2 mixer: input \(describe(x.shape)) is not [B, T, \(m.dModel)]")
        let (b, t) = (x.shape[0], x.shape[1])
        checkLength(t, "forward")
        let parts = m.inputProjection.split(x, sizes: m.projectionSizes)  // z, x, B, C, dt
        let (z, dt) = (parts[0], parts[4])
        let xbc = m.conv.split(Array(parts[1...3]), activation: .silu)
        let kernel = LogLinearFunction(options: options)
        let y = kernel([xbc[0].reshaped([b, t, m.heads, m.headDim]), dt, -m.logA.exp(),
                        xbc[1].reshaped([b, t, m.groups, m.stateSize]), xbc[2].reshaped([b, t, m.groups, m.stateSize]),
                        m.skip, m.dtBias, levelWeights(x)])[0]
        return m.outputProjection(m.gatedNorm(y.reshaped([b, t, m.innerWidth]), gate: z))
    }

    public func initialState(batch: Int) -> LogLinearMamba2MixerState {
        LogLinearMamba2MixerState(conv: mamba2.conv.initialState(batch: batch),
                                  levels: LogLinearDecodeState(batch: batch, heads: mamba2.heads, headDim: mamba2.headDim,
                                                               stateSize: mamba2.stateSize))
    }

    public func step(_ x: Tensor, state: inout LogLinearMamba2MixerState) -> Tensor {
        let m = mamba2
        precondition(x.rank == 3 && x.shape[2] == m.dModel, "loglinear_mamba2 mixer step: input \(describe(x.shape)) is not [B, T, \(m.dModel)]")
        let (b, t) = (x.shape[0], x.shape[1])
        precondition(b == state.levels.batch, "loglinear_mamba2 mixer step: batch \(b) but the state holds \(state.levels.batch) sequences")
        checkLength(state.position + t, "step")
        let parts = m.inputProjection.apply(x).split(axis: 2, sizes: m.splitSizes)
        let xbc = m.conv.step(parts[1], state: &state.conv).silu().split(axis: 2, sizes: m.xbcSizes)
        let lambda = withNoGrad { levelWeights(Variable(x)).value }
        let inputs = LogLinearInputs(x: xbc[0].reshaped([b, t, m.heads, m.headDim]), dt: parts[2], A: -m.logA.value.exp(),
                                     B: xbc[1].reshaped([b, t, m.groups, m.stateSize]), C: xbc[2].reshaped([b, t, m.groups, m.stateSize]),
                                     D: m.skip.value, dtBias: m.dtBias.value, lambda: lambda, startPosition: state.position)
        let y = logLinearStep(inputs, state: &state.levels, options: options)
        let out = withNoGrad { m.gatedNorm(Variable(y.reshaped([b, t, m.innerWidth])), gate: Variable(parts[0])).value }
        return m.outputProjection.apply(out)
    }
}

/// The chunked log-linear SSD as one differentiable node: [x, dt, A, B, C, D, dt_bias, λ] → [y].
/// Saves only its inputs (shared with the tape); the backward recomputes the block states.
struct LogLinearFunction: DifferentiableFunction {
    let options: LogLinearOptions

    func forward(_ inputs: [Tensor]) -> (outputs: [Tensor], saved: LogLinearInputs) {
        let args = LogLinearInputs(x: inputs[0], dt: inputs[1], A: inputs[2], B: inputs[3], C: inputs[4], D: inputs[5],
                                   dtBias: inputs[6], lambda: inputs[7])
        return ([logLinearChunkedForward(args, options: options, returnFinalState: false).y], args)
    }

    func backward(_ saved: LogLinearInputs, outputGradients: [Tensor?]) -> [Tensor?] {
        guard let dY = outputGradients[0] else { return Array(repeating: nil, count: 8) }
        let g = logLinearChunkedBackward(saved, outputGradient: dY, options: options)
        return [g.x, g.dt, g.A, g.B, g.C, g.D, g.dtBias, g.lambda]
    }
}
