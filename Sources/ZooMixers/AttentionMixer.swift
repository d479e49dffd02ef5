// Softmax attention mixer (YAML `type: attention`): the baseline every other mixer is compared with.
//
//   x [B, T, D] → q = x·Wqᵀ [B,T,H,dh], k = x·Wkᵀ, v = x·Wvᵀ [B,T,Hkv,dh]
//              → RoPE(q), RoPE(k) at positions 0..<T (offset by the tokens already decoded)
//              → o = attention(q, k, v) causal, optional sliding window and softcap  [B,T,H,dh]
//              → y = o·Woᵀ [B, T, D]
//
// The attention runs as ONE tape node (`AttentionFunction`) whose backward is the flash backward,
// so the tape keeps q, k, v, o and lse — never a T×T matrix. `kernel: naive` swaps in the Double
// spec kernel (for checking, and for the memory comparison). Decoding appends each token's k and v
// to a KV cache (64-token pages) and attends over it: the state grows linearly with the length.

import Foundation
import ZooTensor
import ZooAutograd
import ZooKernels
import ZooNN

public struct AttentionMixerConfig: MixerConfig, Equatable {
    public static let typeName = "attention"
    public static let keyReference: [(key: String, description: String)] = [
        ("heads", "query heads (default 4)"),
        ("kv_heads", "key/value heads; heads must be a multiple (default: heads; 1 = multi-query)"),
        ("head_dim", "per-head dimension (default d_model / heads)"),
        ("rotary", "rotary position embedding on q and k (default true)"),
        ("rotary_theta", "RoPE base θ (default 10000)"),
        ("window", "sliding window: each token sees itself and the window − 1 before it (default: none)"),
        ("softcap", "score softcap c: s = c·tanh(s/c) (default 0: off)"),
        ("kernel", "flash | naive (default flash; naive is the Double spec kernel, T×T memory)"),
    ]

    public var heads: Int
    public var kvHeads: Int?
    public var headDim: Int?
    public var rotary: Bool
    public var rotaryTheta: Double
    public var window: Int?
    public var softcap: Float
    public var kernel: Kernel

    public enum Kernel: String, Codable, Sendable { case flash, naive }

    public init() { self.init(heads: 4) }

    public init(heads: Int = 4, kvHeads: Int? = nil, headDim: Int? = nil, rotary: Bool = true, rotaryTheta: Double = 10_000,
                window: Int? = nil, softcap: Float = 0, kernel: Kernel = .flash) {
        self.heads = heads; self.kvHeads = kvHeads; self.headDim = headDim; self.rotary = rotary
        self.rotaryTheta = rotaryTheta; self.window = window; self.softcap = softcap; self.kernel = kernel
    }

    enum CodingKeys: String, CodingKey {
        case heads, kvHeads = "kv_heads", headDim = "head_dim", rotary, rotaryTheta = "rotary_theta", window, softcap, kernel
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        heads = try c.decodeIfPresent(Int.self, forKey: .heads) ?? 4
        kvHeads = try c.decodeIfPresent(Int.self, forKey: .kvHeads)
        headDim = try c.decodeIfPresent(Int.self, forKey: .headDim)
        rotary = try c.decodeIfPresent(Bool.self, forKey: .rotary) ?? true
        rotaryTheta = try c.decodeIfPresent(Double.self, forKey: .rotaryTheta) ?? 10_000
        window = try c.decodeIfPresent(Int.self, forKey: .window)
        softcap = try c.decodeIfPresent(Float.self, forKey: .softcap) ?? 0
        kernel = try c.decodeIfPresent(Kernel.self, forKey: .kernel) ?? .flash
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(heads, forKey: .heads)
        try c.encodeIfPresent(kvHeads, forKey: .kvHeads)
        try c.encodeIfPresent(headDim, forKey: .headDim)
        try c.encode(rotary, forKey: .rotary)
        try c.encode(rotaryTheta, forKey: .rotaryTheta)
        try c.encodeIfPresent(window, forKey: .window)
        try c.encode(softcap, forKey: .softcap)
        try c.encode(kernel, forKey: .kernel)
    }

    public func resolvedKVHeads() -> Int { kvHeads ?? heads }
    public func resolvedHeadDim(dModel: Int) -> Int { headDim ?? dModel / max(heads, 1) }

    /// The kernel options this config implies (causal always).
    public var attentionOptions: AttentionOptions {
        AttentionOptions(causal: true, windowLeft: window.map { $0 - 1 }, softcap: softcap)
    }

    public func validate(dModel: Int) throws(MixerConfigError) {
        try validateHeadLayout(heads: heads, kvHeads: resolvedKVHeads(), headDim: headDim,
                               resolvedHeadDim: resolvedHeadDim(dModel: dModel), rotary: rotary,
                               rotaryTheta: rotaryTheta, dModel: dModel)
        if let w = window, w < 1 { throw MixerConfigError(key: "window", "must be ≥ 1 token, got \(w)") }
        if !(softcap >= 0) || !softcap.isFinite { throw MixerConfigError(key: "softcap", "must be finite and ≥ 0, got \(softcap)") }
    }

    public func makeMixer(_ context: MixerContext, generator: inout SeededGenerator) -> any Mixer {
        AttentionMixer(self, context: context, generator: &generator)
    }

    /// The KV cache after `length` tokens: whole 64-token pages of keys and values for every
    /// (sequence, KV head) — see `AttentionKVCache.byteCount`.
    public func stateBytes(batch: Int, length: Int, dModel: Int) -> Int {
        let dh = resolvedHeadDim(dModel: dModel)
        return AttentionKVCache.byteCount(length: length, batch: batch, keyValueHeads: resolvedKVHeads(), headDim: dh, valueDim: dh)
    }
}

/// The KV cache and the position of the next token.
public struct AttentionMixerState: MixerState {
    public var cache: AttentionKVCache
    public private(set) var tokensReadLastStep = 0
    public private(set) var bytesReadLastStep = 0
    public var position: Int { cache.length }
    public var byteCount: Int { cache.byteCount }

    mutating func recordRead(options: AttentionOptions) {
        tokensReadLastStep = attentionDecodeKeysRead(cacheLength: cache.length, options: options)
        // Whole panels are read, so this is the bytes of that many cached tokens.
        bytesReadLastStep = AttentionKVCache.byteCount(length: tokensReadLastStep, batch: cache.batch, keyValueHeads: cache.keyValueHeads,
                                                       headDim: cache.headDim, valueDim: cache.valueDim)
    }
}

public struct AttentionMixer: Mixer {
    public let config: AttentionMixerConfig
    public let heads: Int, kvHeads: Int, headDim: Int, dModel: Int
    public let queryProjection: Linear, keyProjection: Linear, valueProjection: Linear, outputProjection: Linear
    let rotary: RotaryEmbedding?

    public init(_ config: AttentionMixerConfig, context: MixerContext, generator: inout SeededGenerator) {
        do { try config.validate(dModel: context.dModel) } catch { fatalError("attention mixer: \(error)") }
        self.config = config
        dModel = context.dModel
        heads = config.heads
        kvHeads = config.resolvedKVHeads()
        headDim = config.resolvedHeadDim(dModel: dModel)
        queryProjection = Linear(dModel, heads * headDim, std: context.weightStd, generator: &generator)
        keyProjection = Linear(dModel, kvHeads * headDim, std: context.weightStd, generator: &generator)
        valueProjection = Linear(dModel, kvHeads * headDim, std: context.weightStd, generator: &generator)
        outputProjection = Linear(heads * headDim, dModel, std: context.outputProjectionStd, generator: &generator)
        rotary = config.rotary ? RotaryEmbedding(headDim: headDim, base: config.rotaryTheta) : nil
    }

    public func namedParameters() -> [NamedParameter] {
        nested("q_proj", queryProjection) + nested("k_proj", keyProjection) + nested("v_proj", valueProjection)
            + nested("o_proj", outputProjection)
    }

    public func callAsFunction(_ x: Variable) -> Variable {
        precondition(x.rank == 3 && x.shape[2] == dModel, "attention mixer: input \(describe(x.shape)) is not [B, T, \(dModel)]")
        let (b, t) = (x.shape[0], x.shape[1])
        // One pass over x for the three projections (Linear.project), each into its own tensor.
        let qkv = Linear.project(x, through: [queryProjection, keyProjection, valueProjection])
        var q = qkv[0].reshaped([b, t, heads, headDim])
        var k = qkv[1].reshaped([b, t, kvHeads, headDim])
        let v = qkv[2].reshaped([b, t, kvHeads, headDim])
        if let rotary { q = rotary(q); k = rotary(k) }
        let attention = AttentionFunction(options: config.attentionOptions, kernel: config.kernel)
        let o = attention([q, k, v])[0]
        return outputProjection(o.reshaped([b, t, heads * headDim]))
    }

    public func initialState(batch: Int) -> AttentionMixerState {
        AttentionMixerState(cache: AttentionKVCache(batch: batch, keyValueHeads: kvHeads, headDim: headDim))
    }

    public func step(_ x: Tensor, state: inout AttentionMixerState) -> Tensor {
        precondition(x.rank == 3 && x.shape[2] == dModel, "attention mixer step: input \(describe(x.shape)) is not [B, T, \(dModel)]")
        let (b, t) = (x.shape[0], x.shape[1])
        precondition(b == state.cache.batch, "attention mixer step: batch \(b) but the state holds \(state.cache.batch) sequences")
        let offset = state.position
        var q = queryProjection.apply(x).reshaped([b, t, heads, headDim])
        var k = keyProjection.apply(x).reshaped([b, t, kvHeads, headDim])
        let v = valueProjection.apply(x).reshaped([b, t, kvHeads, headDim])
        if let rotary { q = rotary.apply(q, offset: offset); k = rotary.apply(k, offset: offset) }
        state.cache.append(keys: k.pointer, values: v.pointer, count: t)
        var o = Tensor(uninitializedShape: [b, t, heads, headDim])
        attentionDecode(q: q.pointer, queryLength: t, queryHeads: heads, cache: state.cache,
                        options: config.attentionOptions, output: o.mutablePointer())
        state.recordRead(options: config.attentionOptions)
        return outputProjection.apply(o.reshaped([b, t, heads * headDim]))
    }
}

/// Attention as one differentiable node: q [B,T,H,d], k and v [B,T,Hkv,d] → o [B,T,H,d].
/// Saves q, k, v (shared with the tape, not copied), o and lse; the backward recomputes the
/// probabilities tile by tile (flash) or densely (naive).
struct AttentionFunction: DifferentiableFunction {
    let options: AttentionOptions
    let kernel: AttentionMixerConfig.Kernel

    struct Saved { let q, k, v, o, lse: Tensor; let shape: AttentionShape }

    func shape(_ q: Tensor, _ k: Tensor, _ v: Tensor) -> AttentionShape {
        AttentionShape(batch: q.shape[0], queryLength: q.shape[1], keyLength: k.shape[1], queryHeads: q.shape[2],
                       keyValueHeads: k.shape[2], headDim: q.shape[3], valueDim: v.shape[3])
    }

    func forward(_ inputs: [Tensor]) -> (outputs: [Tensor], saved: Saved) {
        let (q, k, v) = (inputs[0], inputs[1], inputs[2])
        let s = shape(q, k, v)
        var o = Tensor(uninitializedShape: [s.batch, s.queryLength, s.queryHeads, s.valueDim])
        var lse = Tensor(uninitializedShape: [s.batch, s.queryHeads, s.queryLength])
        switch kernel {
        case .flash:
            flashAttentionForward(q: q.pointer, k: k.pointer, v: v.pointer, shape: s, options: options,
                                  output: o.mutablePointer(), logSumExp: lse.mutablePointer())
        case .naive:
            naiveAttentionForward(q: q.pointer, k: k.pointer, v: v.pointer, shape: s, options: options,
                                  output: o.mutablePointer(), logSumExp: lse.mutablePointer())
        }
        return ([o], Saved(q: q, k: k, v: v, o: o, lse: lse, shape: s))
    }

    func backward(_ saved: Saved, outputGradients: [Tensor?]) -> [Tensor?] {
        guard let dO = outputGradients[0] else { return [nil, nil, nil] }
        var dq = Tensor(uninitializedShape: saved.q.shape)
        var dk = Tensor(uninitializedShape: saved.k.shape)
        var dv = Tensor(uninitializedShape: saved.v.shape)
        switch kernel {
        case .flash:
            flashAttentionBackward(q: saved.q.pointer, k: saved.k.pointer, v: saved.v.pointer, output: saved.o.pointer,
                                   logSumExp: saved.lse.pointer, outputGradient: dO.pointer, shape: saved.shape, options: options,
                                   queryGradient: dq.mutablePointer(), keyGradient: dk.mutablePointer(), valueGradient: dv.mutablePointer())
        case .naive:
            naiveAttentionBackward(q: saved.q.pointer, k: saved.k.pointer, v: saved.v.pointer, outputGradient: dO.pointer,
                                   shape: saved.shape, options: options,
                                   queryGradient: dq.mutablePointer(), keyGradient: dk.mutablePointer(), valueGradient: dv.mutablePointer())
        }
        return [dq, dk, dv]
    }
}
