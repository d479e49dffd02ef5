// Mamba-2 mixer (YAML `type: mamba2`): the SSD block of Dao & Gu 2024 ("Transformers are SSMs").
//
//   x [B, T, D] → in_proj → [z (E), xBC (E + 2·G·N), dt (H)]              E = expand·D, H = E / P
//              → xBC = SiLU(causal depthwise conv_k(xBC)) → [x (E), B (G·N), C (G·N)]
//              → y = SSD(x [B,T,H,P], dt, A = −exp(A_log), B, C [B,T,G,N], D, dt_bias)  (ZooKernels/SSD)
//              → y = RMSNorm(y ⊙ SiLU(z)) (per group of E/G channels, as mamba_ssm) → out_proj → [B, T, D]
//
// The SSD runs as ONE tape node (`SSDFunction`) whose backward is the chunked kernel's: the tape
// keeps the node's inputs and the chunk states (T·P·N/Q floats per head), never a T×T matrix or a
// per-token state. Decoding keeps the last k−1 conv inputs and the SSM state [B,H,P,N]: a state
// constant in T. Initialisation as mamba_ssm: A_log = log U(1, 16) per head, D = 1, dt_bias =
// softplus⁻¹(Δ) for Δ log-uniform in [dt_min, dt_max] (floored at 1e-4); projections N(0, 0.02)
// (out_proj scaled by the depth, the zoo convention).

import Foundation
import ZooTensor
import ZooAutograd
import ZooKernels
import ZooNN

public struct Mamba2MixerConfig: MixerConfig, Equatable {
    public static let typeName = "mamba2"
    public static let keyReference: [(key: String, description: String)] = [
        ("d_state", "SSM state size N (default 64)"),
        ("head_dim", "channels per head P; heads = expand·d_model / head_dim (default 64)"),
        ("ngroups", "B/C groups G; heads must be a multiple (default 1)"),
        ("expand", "inner width E = expand·d_model (default 2)"),
        ("chunk", "SSD chunk size Q (default 64)"),
        ("conv_kernel", "causal depthwise conv width over x, B, C (default 4)"),
        ("dt_min", "smallest initial Δ (default 0.001)"),
        ("dt_max", "largest initial Δ (default 0.1)"),
    ]

    public var dState: Int
    public var headDim: Int
    public var ngroups: Int
    public var expand: Int
    public var chunk: Int
    public var convKernel: Int
    public var dtMin: Double
    public var dtMax: Double

    public init() { self.init(dState: 64) }

    public init(dState: Int = 64, headDim: Int = 64, ngroups: Int = 1, expand: Int = 2, chunk: Int = 64,
                convKernel: Int = 4, dtMin: Double = 0.001, dtMax: Double = 0.1) {
        self.dState = dState; self.headDim = headDim; self.ngroups = ngroups; self.expand = expand
        self.chunk = chunk; self.convKernel = convKernel; self.dtMin = dtMin; self.dtMax = dtMax
    }

    enum CodingKeys: String, CodingKey {
        case dState = "d_state", headDim = "head_dim", ngroups, expand, chunk, convKernel = "conv_kernel"
        case dtMin = "dt_min", dtMax = "dt_max"
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let d = Mamba2MixerConfig(dState: 64)
        dState = try c.decodeIfPresent(Int.self, forKey: .dState) ?? d.dState
        headDim = try c.decodeIfPresent(Int.self, forKey: .headDim) ?? d.headDim
        ngroups = try c.decodeIfPresent(Int.self, forKey: .ngroups) ?? d.ngroups
        expand = try c.decodeIfPresent(Int.self, forKey: .expand) ?? d.expand
        chunk = try c.decodeIfPresent(Int.self, forKey: .chunk) ?? d.chunk
        convKernel = try c.decodeIfPresent(Int.self, forKey: .convKernel) ?? d.convKernel
        dtMin = try c.decodeIfPresent(Double.self, forKey: .dtMin) ?? d.dtMin
        dtMax = try c.decodeIfPresent(Double.self, forKey: .dtMax) ?? d.dtMax
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(dState, forKey: .dState)
        try c.encode(headDim, forKey: .headDim)
        try c.encode(ngroups, forKey: .ngroups)
        try c.encode(expand, forKey: .expand)
        try c.encode(chunk, forKey: .chunk)
        try c.encode(convKernel, forKey: .convKernel)
        try c.encode(dtMin, forKey: .dtMin)
        try c.encode(dtMax, forKey: .dtMax)
    }

    public func innerWidth(dModel: Int) -> Int { expand * dModel }
    public func heads(dModel: Int) -> Int { innerWidth(dModel: dModel) / headDim }
    /// Channels the conv runs over: x, B and C.
    public func convChannels(dModel: Int) -> Int { innerWidth(dModel: dModel) + 2 * ngroups * dState }

    public func validate(dModel: Int) throws(MixerConfigError) {
        if dState < 1 { throw MixerConfigError(key: "d_state", "must be ≥ 1, got \(dState)") }
        if expand < 1 { throw MixerConfigError(key: "expand", "must be ≥ 1, got \(expand)") }
        if headDim < 1 || innerWidth(dModel: dModel) % headDim != 0 {
            throw MixerConfigError(key: "head_dim", "must be ≥ 1 and divide expand·d_model = \(innerWidth(dModel: dModel)), got \(headDim)")
        }
        let h = heads(dModel: dModel)
        if ngroups < 1 || h % ngroups != 0 {
            throw MixerConfigError(key: "ngroups", "must be ≥ 1 and divide the number of heads (\(h)), got \(ngroups)")
        }
        if chunk < 1 { throw MixerConfigError(key: "chunk", "must be ≥ 1, got \(chunk)") }
        if convKernel < 1 { throw MixerConfigError(key: "conv_kernel", "must be ≥ 1, got \(convKernel)") }
        if !(dtMin > 0) || !dtMin.isFinite { throw MixerConfigError(key: "dt_min", "must be finite and > 0, got \(dtMin)") }
        if !(dtMax >= dtMin) || !dtMax.isFinite { throw MixerConfigError(key: "dt_max", "must be finite and ≥ dt_min (\(dtMin)), got \(dtMax)") }
    }

    public func makeMixer(_ context: MixerContext, generator: inout SeededGenerator) -> any Mixer {
        Mamba2Mixer(self, context: context, generator: &generator)
    }

    /// The conv window [B, E + 2·G·N, k−1] plus the SSM state [B, H, P, N], in Float32: constant in T.
    public func stateBytes(batch: Int, length: Int, dModel: Int) -> Int {
        let conv = batch * convChannels(dModel: dModel) * (convKernel - 1)
        let ssm = batch * heads(dModel: dModel) * headDim * dState
        return (conv + ssm) * MemoryLayout<Float>.stride
    }
}

/// The decode state: the conv's last k−1 inputs and the SSM state, plus the position.
public struct Mamba2MixerState: MixerState {
    /// [B, E + 2·G·N, k−1]
    public var conv: Tensor
    /// [B, H, P, N]
    public var ssm: Tensor
    public internal(set) var position: Int
    public var byteCount: Int { conv.byteCount + ssm.byteCount }
}

public struct Mamba2Mixer: Mixer {
    public let config: Mamba2MixerConfig
    public let dModel: Int, innerWidth: Int, heads: Int, headDim: Int, groups: Int, stateSize: Int
    public let inputProjection: Linear
    public let conv: CausalConv1d
    /// Per head: log(−A), the Δ bias, and the skip D.
    public let logA: Variable, dtBias: Variable, skip: Variable
    /// Per-channel weight of the gated RMSNorm [E].
    public let normWeight: Variable
    public let outputProjection: Linear

    public init(_ config: Mamba2MixerConfig, context: MixerContext, generator: inout SeededGenerator) {
        do { try config.validate(dModel: context.dModel) } catch { fatalError("mamba2 mixer: \(error)") }
        self.config = config
        dModel = context.dModel
        innerWidth = config.innerWidth(dModel: dModel)
        heads = config.heads(dModel: dModel)
        headDim = config.headDim
        groups = config.ngroups
        stateSize = config.dState
        let projected = 2 * innerWidth + 2 * groups * stateSize + heads
        inputProjection = Linear(dModel, projected, std: context.weightStd, generator: &generator)
        conv = CausalConv1d(channels: config.convChannels(dModel: dModel), kernelSize: config.convKernel, generator: &generator)
        var a = [Float](), bias = [Float]()
        for _ in 0..<heads {
            a.append(Float(Foundation.log(1 + 15 * Double(generator.nextUniformFloat()))))
            let u = Double(generator.nextUniformFloat())
            let dt = max(Foundation.exp(u * (Foundation.log(config.dtMax) - Foundation.log(config.dtMin)) + Foundation.log(config.dtMin)), 1e-4)
            bias.append(Float(dt + Foundation.log(-Foundation.expm1(-dt))))      // softplus⁻¹(dt)
        }
        logA = parameter(Tensor(shape: [heads], scalars: a))
        dtBias = parameter(Tensor(shape: [heads], scalars: bias))
        skip = parameter(.ones([heads]))
        normWeight = parameter(.ones([innerWidth]))
        outputProjection = Linear(innerWidth, dModel, std: context.outputProjectionStd, generator: &generator)
    }

    public func namedParameters() -> [NamedParameter] {
        nested("in_proj", inputProjection) + nested("conv1d", conv)
            + [NamedParameter("A_log", logA, decays: false), NamedParameter("dt_bias", dtBias, decays: false),
               NamedParameter("D", skip, decays: false), NamedParameter("norm.weight", normWeight, decays: false)]
            + nested("out_proj", outputProjection)
    }

    var ssdOptions: SSDOptions { SSDOptions(chunkSize: config.chunk) }
    var splitSizes: [Int] { [innerWidth, conv.channels, heads] }
    var xbcSizes: [Int] { [innerWidth, groups * stateSize, groups * stateSize] }
    /// in_proj's output cut into z, x, B, C and dt (xBC in its three pieces: the convolution is
    /// depthwise, so it runs on them apart and nothing is split after it).
    var projectionSizes: [Int] { [innerWidth] + xbcSizes + [heads] }

    public func callAsFunction(_ x: Variable) -> Variable {
        precondition(x.rank == 3 && x.shape[2] == dModel, "mamba2 mixer: input \(describe(x.shape)) is not [B, T, \(dModel)]")
        let (b, t) = (x.shape[0], x.shape[1])
        let parts = inputProjection.split(x, sizes: projectionSizes)      // z, x, B, C, dt: each its own tensor
        let (z, dt) = (parts[0], parts[4])
        let xbc = conv.split(Array(parts[1...3]), activation: .silu)
        let ssd = SSDFunction(options: ssdOptions)
        let y = ssd([xbc[0].reshaped([b, t, heads, headDim]), dt, -logA.exp(),
                     xbc[1].reshaped([b, t, groups, stateSize]), xbc[2].reshaped([b, t, groups, stateSize]), skip, dtBias])[0]
        return outputProjection(gatedNorm(y.reshaped([b, t, innerWidth]), gate: z))
    }

    /// RMSNorm(y ⊙ SiLU(z)) ⊙ w, normalised over groups of E/G channels (mamba_ssm's RMSNormGated
    /// with group_size = E / ngroups; one group when G = 1), as one fused node.
    func gatedNorm(_ y: Variable, gate z: Variable) -> Variable {
        gatedRMSNorm(y, gate: z, weight: normWeight, groups: groups, epsilon: 1e-5)
    }

    public func initialState(batch: Int) -> Mamba2MixerState {
        Mamba2MixerState(conv: conv.initialState(batch: batch), ssm: .zeros([batch, heads, headDim, stateSize]), position: 0)
    }

    public func step(_ x: Tensor, state: inout Mamba2MixerState) -> Tensor {
        precondition(x.rank == 3 && x.shape[2] == dModel, "mamba2 mixer step: input \(describe(x.shape)) is not [B, T, \(dModel)]")
        let (b, t) = (x.shape[0], x.shape[1])
        precondition(b == state.ssm.shape[0], "mamba2 mixer step: batch \(b) but the state holds \(state.ssm.shape[0]) sequences")
        let parts = inputProjection.apply(x).split(axis: 2, sizes: splitSizes)
        let xbc = conv.step(parts[1], state: &state.conv).silu().split(axis: 2, sizes: xbcSizes)
        let inputs = SSDInputs(x: xbc[0].reshaped([b, t, heads, headDim]), dt: parts[2], A: -logA.value.exp(),
                               B: xbc[1].reshaped([b, t, groups, stateSize]), C: xbc[2].reshaped([b, t, groups, stateSize]),
                               D: skip.value, dtBias: dtBias.value)
        let y = ssdStep(inputs, state: &state.ssm, options: ssdOptions)
        state.position += t
        let out = withNoGrad { gatedNorm(Variable(y.reshaped([b, t, innerWidth])), gate: Variable(parts[0])).value }
        return outputProjection.apply(out)
    }
}

/// The chunked SSD as one differentiable node: inputs [x, dt, A, B, C, D, dtBias] → [y].
/// Saves the inputs (shared with the tape, not copied) and the chunk states for the backward.
struct SSDFunction: DifferentiableFunction {
    let options: SSDOptions

    struct Saved { let inputs: SSDInputs; let chunkStates: Tensor? }

    func forward(_ inputs: [Tensor]) -> (outputs: [Tensor], saved: Saved) {
        let ssd = SSDInputs(x: inputs[0], dt: inputs[1], A: inputs[2], B: inputs[3], C: inputs[4], D: inputs[5], dtBias: inputs[6])
        let result = ssdChunkedForward(ssd, options: options, saveChunkStates: true)
        return ([result.y], Saved(inputs: ssd, chunkStates: result.chunkStates))
    }

    func backward(_ saved: Saved, outputGradients: [Tensor?]) -> [Tensor?] {
        guard let dY = outputGradients[0] else { return Array(repeating: nil, count: 7) }
        let g = ssdChunkedBackward(saved.inputs, outputGradient: dY, chunkStates: saved.chunkStates, options: options)
        return [g.x, g.dt, g.A, g.B, g.C, g.D, g.dtBias]
    }
}
