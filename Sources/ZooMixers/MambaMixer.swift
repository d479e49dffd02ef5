import Foundation
import ZooTensor
import ZooAutograd
import ZooNN
import ZooKernels

// Mamba (Mamba-1) mixer, YAML `type: mamba`. With E = expand·d, R = dt_rank, N = d_state, k = d_conv:
//   [x, z] = in_proj(h)                      h [B, T, d] → [B, T, 2E]
//   x      = silu(conv1d(x))                 depthwise causal, kernel k
//   [dt, B, C] = x_proj(x)                   → [B, T, R + 2N]
//   Δ      = softplus(dt_proj.weight · dt + dt_proj.bias)      (the bias is the kernel's delta_bias)
//   y      = selective_scan(x, Δ, A = −exp(A_log), B, C, D, z)  (one tape node, hand-written backward)
//   out    = out_proj(y)
// Parameter names follow state-spaces/mamba (in_proj.weight, conv1d.weight, conv1d.bias,
// x_proj.weight, dt_proj.weight, dt_proj.bias, A_log, D, out_proj.weight), so checkpoints map one
// to one. Decode state: the conv window [B, E, k−1] and the SSM state [B, E, N], constant in T.

/// Configuration of the Mamba mixer (defaults as in state-spaces/mamba's `Mamba`).
public struct MambaConfig: MixerConfig, Equatable {
    public static let typeName = "mamba"
    /// N: SSM state size per channel.
    public var stateSize: Int = 16
    /// k: depthwise causal convolution width.
    public var convKernel: Int = 4
    /// E = expand · d_model.
    public var expand: Int = 2
    /// R: rank of the Δ projection; nil means "auto", ⌈d_model / 16⌉.
    public var dtRank: Int? = nil
    /// Δ at initialisation is log-uniform in [dtMin, dtMax], floored at dtInitFloor.
    public var dtMin: Double = 0.001
    public var dtMax: Double = 0.1
    public var dtInitFloor: Double = 1e-4
    /// dt_proj.weight ~ U(−s, s) with s = dtScale / √R.
    public var dtScale: Double = 1
    public var convBias: Bool = true
    /// Biases on in_proj and out_proj.
    public var bias: Bool = false
    /// The scan kernel's checkpoint interval K (memory B·E·N·T/K floats; speed only).
    public var checkpointInterval: Int = 64

    public init() {}

    enum CodingKeys: String, CodingKey, CaseIterable {
        case stateSize = "d_state", convKernel = "d_conv", expand, dtRank = "dt_rank", dtMin = "dt_min", dtMax = "dt_max"
        case dtInitFloor = "dt_init_floor", dtScale = "dt_scale", convBias = "conv_bias", bias
        case checkpointInterval = "checkpoint_interval"
    }

    public static let keyReference: [(key: String, description: String)] = [
        ("d_state", "SSM state size N per channel (default 16)"),
        ("d_conv", "depthwise causal convolution width (default 4)"),
        ("expand", "inner width E = expand·d_model (default 2)"),
        ("dt_rank", "rank of the Δ projection, or auto = ⌈d_model/16⌉ (default auto)"),
        ("dt_min", "smallest Δ at initialisation (default 0.001)"),
        ("dt_max", "largest Δ at initialisation (default 0.1)"),
        ("dt_init_floor", "floor of the initial Δ (default 1e-4)"),
        ("dt_scale", "dt_proj.weight ~ U(±dt_scale/√dt_rank) (default 1)"),
        ("conv_bias", "bias on the convolution (default true)"),
        ("bias", "biases on in_proj and out_proj (default false)"),
        ("checkpoint_interval", "scan checkpoint interval K: memory vs recompute, same results (default 64)"),
    ]

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        stateSize = try c.decodeIfPresent(Int.self, forKey: .stateSize) ?? stateSize
        convKernel = try c.decodeIfPresent(Int.self, forKey: .convKernel) ?? convKernel
        expand = try c.decodeIfPresent(Int.self, forKey: .expand) ?? expand
        // An integer, or the word auto. Integers first: YAML decoders also read `8` as a string.
        if let rank = try? c.decodeIfPresent(Int.self, forKey: .dtRank) {
            dtRank = rank
        } else if let text = try c.decodeIfPresent(String.self, forKey: .dtRank) {
            guard text == "auto" else {
                throw DecodingError.dataCorruptedError(forKey: .dtRank, in: c, debugDescription: "dt_rank must be a positive integer or auto, got '\(text)'")
            }
            dtRank = nil
        }
        dtMin = try c.decodeIfPresent(Double.self, forKey: .dtMin) ?? dtMin
        dtMax = try c.decodeIfPresent(Double.self, forKey: .dtMax) ?? dtMax
        dtInitFloor = try c.decodeIfPresent(Double.self, forKey: .dtInitFloor) ?? dtInitFloor
        dtScale = try c.decodeIfPresent(Double.self, forKey: .dtScale) ?? dtScale
        convBias = try c.decodeIfPresent(Bool.self, forKey: .convBias) ?? convBias
        bias = try c.decodeIfPresent(Bool.self, forKey: .bias) ?? bias
        checkpointInterval = try c.decodeIfPresent(Int.self, forKey: .checkpointInterval) ?? checkpointInterval
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(stateSize, forKey: .stateSize); try c.encode(convKernel, forKey: .convKernel)
        try c.encode(expand, forKey: .expand)
        if let dtRank { try c.encode(dtRank, forKey: .dtRank) } else { try c.encode("auto", forKey: .dtRank) }
        try c.encode(dtMin, forKey: .dtMin); try c.encode(dtMax, forKey: .dtMax)
        try c.encode(dtInitFloor, forKey: .dtInitFloor); try c.encode(dtScale, forKey: .dtScale)
        try c.encode(convBias, forKey: .convBias); try c.encode(bias, forKey: .bias)
        try c.encode(checkpointInterval, forKey: .checkpointInterval)
    }

    /// E for a model width.
    public func innerWidth(dModel: Int) -> Int { expand * dModel }
    /// R for a model width (auto: ⌈d_model / 16⌉).
    public func resolvedDtRank(dModel: Int) -> Int { dtRank ?? (dModel + 15) / 16 }

    public func validate(dModel: Int) throws(MixerConfigError) {
        if stateSize < 1 { throw MixerConfigError(key: "d_state", "must be ≥ 1, got \(stateSize)") }
        if convKernel < 1 { throw MixerConfigError(key: "d_conv", "must be ≥ 1, got \(convKernel)") }
        if expand < 1 { throw MixerConfigError(key: "expand", "must be ≥ 1, got \(expand)") }
        if let dtRank, dtRank < 1 { throw MixerConfigError(key: "dt_rank", "must be ≥ 1 or auto, got \(dtRank)") }
        if !(dtMin > 0) { throw MixerConfigError(key: "dt_min", "must be > 0, got \(dtMin)") }
        if !(dtMax >= dtMin) { throw MixerConfigError(key: "dt_max", "must be ≥ dt_min (\(dtMin)), got \(dtMax)") }
        if !(dtInitFloor > 0) { throw MixerConfigError(key: "dt_init_floor", "must be > 0, got \(dtInitFloor)") }
        if !(dtScale > 0) { throw MixerConfigError(key: "dt_scale", "must be > 0, got \(dtScale)") }
        if checkpointInterval < 1 { throw MixerConfigError(key: "checkpoint_interval", "must be ≥ 1, got \(checkpointInterval)") }
    }

    public func makeMixer(_ context: MixerContext, generator: inout SeededGenerator) -> any Mixer {
        MambaMixer(self, context: context, generator: &generator)
    }

    /// conv window B·E·(k−1) + SSM state B·E·N floats, whatever the length.
    public func stateBytes(batch: Int, length: Int, dModel: Int) -> Int {
        batch * innerWidth(dModel: dModel) * ((convKernel - 1) + stateSize) * MemoryLayout<Float>.stride
    }
}

/// Decode state of the Mamba mixer: the last k−1 conv inputs and the SSM state, per channel.
public struct MambaState: MixerState {
    /// [B, E, k−1]
    public var conv: Tensor
    /// [B, E, N]
    public var ssm: Tensor
    public private(set) var position: Int = 0

    public var byteCount: Int { conv.byteCount + ssm.byteCount }

    mutating func advance(by tokens: Int) { position += tokens }
}

/// The Mamba mixer (see the header of this file).
public struct MambaMixer: Mixer {
    public let config: MambaConfig
    public let dModel: Int
    public let innerWidth: Int
    public let dtRank: Int
    public let inProj: Linear
    public let conv1d: CausalConv1d
    public let xProj: Linear
    /// dt_proj.weight [E, R]; its bias is the kernel's delta_bias.
    public let dtProjWeight: Variable
    public let dtProjBias: Variable
    /// [E, N]; A = −exp(A_log).
    public let aLog: Variable
    /// [E]
    public let skip: Variable
    public let outProj: Linear

    /// Fresh weights: in_proj and x_proj N(0, 0.02²), out_proj N(0, (0.02/√(2L))²) (zoo's
    /// convention), the convolution as PyTorch's default (U(±1/√k)), dt_proj.weight U(±dt_scale/√R),
    /// dt_proj.bias = softplus⁻¹(Δ₀) with Δ₀ log-uniform in [dt_min, dt_max] floored at
    /// dt_init_floor, A_log[e, n] = log(n + 1), D = 1 (as state-spaces/mamba).
    public init(_ config: MambaConfig, context: MixerContext, generator g: inout SeededGenerator) {
        let d = context.dModel
        let e = config.innerWidth(dModel: d), r = config.resolvedDtRank(dModel: d), n = config.stateSize
        self.config = config
        dModel = d; innerWidth = e; dtRank = r
        inProj = Linear(d, 2 * e, bias: config.bias, std: context.weightStd, generator: &g)
        conv1d = CausalConv1d(channels: e, kernelSize: config.convKernel, bias: config.convBias, generator: &g)
        xProj = Linear(e, r + 2 * n, bias: false, std: context.weightStd, generator: &g)
        let bound = Float(config.dtScale / Double(r).squareRoot())
        dtProjWeight = parameter(Tensor.uniform([e, r], low: -bound, high: bound, generator: &g))
        let (lo, hi) = (log(config.dtMin), log(config.dtMax))
        dtProjBias = parameter(Tensor(shape: [e]) { buf in
            for i in 0..<e {
                let dt = max(exp(lo + (hi - lo) * g.nextUniformDouble()), config.dtInitFloor)
                buf[i] = Float(dt + log(-expm1(-dt)))       // softplus⁻¹(dt) = log(e^dt − 1)
            }
        })
        aLog = parameter(Tensor(shape: [e, n]) { buf in
            for i in 0..<e { for k in 0..<n { buf[i * n + k] = Float(log(Double(k + 1))) } }
        })
        skip = parameter(Tensor.ones([e]))
        outProj = Linear(e, d, bias: config.bias, std: context.outputProjectionStd, generator: &g)
    }

    public func namedParameters() -> [NamedParameter] {
        nested("in_proj", inProj) + nested("conv1d", conv1d) + nested("x_proj", xProj)
            + [NamedParameter("dt_proj.weight", dtProjWeight),
               NamedParameter("dt_proj.bias", dtProjBias, decays: false),
               NamedParameter("A_log", aLog, decays: false),
               NamedParameter("D", skip, decays: false)]
            + nested("out_proj", outProj)
    }

    public func callAsFunction(_ h: Variable) -> Variable {
        precondition(h.rank == 3 && h.shape[2] == dModel, "MambaMixer: input \(describe(h.shape)) is not [B, T, \(dModel)]")
        let (b, t) = (h.shape[0], h.shape[1])
        let n = config.stateSize
        let xz = inProj.split(h, sizes: [innerWidth, innerWidth])         // x, z
        let x = conv1d(xz[0], activation: .silu)                            // [B, T, E]
        let parts = xProj.split(x, sizes: [dtRank, n, n])                   // dt, B, C
        let dt = matmul(parts[0], dtProjWeight, transB: true)               // [B, T, E]
        let a = aLog.exp() * -1
        // The kernel reads the projections where they are (token-major: [B, T, E], B/C [B, T, N]),
        // so nothing is permuted on the way in or out.
        let scan = SelectiveScanFunction(options: SelectiveScanOptions(checkpointInterval: config.checkpointInterval))
        let y = scan([x, dt, a, parts[1], parts[2], skip, xz[1], dtProjBias])[0]     // [B, T, E]
        precondition(y.shape == [b, t, innerWidth])
        return outProj(y)
    }

    public func initialState(batch: Int) -> MambaState {
        MambaState(conv: conv1d.initialState(batch: batch), ssm: .zeros([batch, innerWidth, config.stateSize]))
    }

    /// Decodes (T = 1) or prefills (T > 1) from `state`: the convolution continues from its window,
    /// the scan from the SSM state (step kernel for one token, the fast forward for a chunk).
    public func step(_ h: Tensor, state: inout MambaState) -> Tensor {
        precondition(h.rank == 3 && h.shape[2] == dModel, "MambaMixer.step: input \(describe(h.shape)) is not [B, T, \(dModel)]")
        let (b, t) = (h.shape[0], h.shape[1])
        let n = config.stateSize
        precondition(state.ssm.shape == [b, innerWidth, n], "MambaMixer.step: state is for batch \(state.ssm.shape[0]), input has \(b)")
        let xz = inProj.apply(h).split(axis: 2, sizes: [innerWidth, innerWidth])
        let x = conv1d.step(xz[0], state: &state.conv).silu()
        let parts = xProj.apply(x).split(axis: 2, sizes: [dtRank, n, n])
        let dt = Tensor.matmul(parts[0], dtProjWeight.value, transB: true)
        let a = aLog.value.exp() * -1
        let inputs = SelectiveScanInputs(u: x, delta: dt, A: a, B: parts[1], C: parts[2], D: skip.value, z: xz[1],
                                         deltaBias: dtProjBias.value, deltaSoftplus: true, layout: .tokenMajor)
        let y: Tensor
        if t == 1 {
            y = selectiveScanStep(inputs, state: &state.ssm)
        } else {
            var withState = inputs
            withState.initialState = state.ssm
            let r = selectiveScanForward(withState, options: SelectiveScanOptions(checkpointInterval: config.checkpointInterval,
                                                                                    saveForBackward: false))
            state.ssm = r.finalState
            y = r.out
        }
        state.advance(by: t)
        return outProj.apply(y)
    }
}

/// The selective scan as one tape node: inputs u, delta, A, B, C, D, z, deltaBias (softplus on,
/// token-major: u, delta, z [B, T, E], B, C [B, T, N]);
/// it keeps the input tensors (already alive on the tape) and the kernel's checkpoints, never a
/// per-step state.
struct SelectiveScanFunction: DifferentiableFunction {
    let options: SelectiveScanOptions

    struct Saved {
        let inputs: SelectiveScanInputs
        let checkpoints: SelectiveScanSaved
    }

    func forward(_ t: [Tensor]) -> (outputs: [Tensor], saved: Saved) {
        let inputs = SelectiveScanInputs(u: t[0], delta: t[1], A: t[2], B: t[3], C: t[4], D: t[5], z: t[6],
                                         deltaBias: t[7], deltaSoftplus: true, layout: .tokenMajor)
        let r = selectiveScanForward(inputs, options: options)
        return ([r.out], Saved(inputs: inputs, checkpoints: r.saved!))
    }

    func backward(_ saved: Saved, outputGradients: [Tensor?]) -> [Tensor?] {
        let x = saved.inputs
        let gradOut = outputGradients[0] ?? Tensor.zeros(x.u.shape)
        let g = selectiveScanBackward(x, saved: saved.checkpoints, gradOut: gradOut)
        return [g.u, g.delta, g.A, g.B, g.C, g.D, g.z, g.deltaBias]
    }
}
