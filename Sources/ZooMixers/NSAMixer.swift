// Native sparse attention mixer (YAML `type: nsa`; Yuan et al., DeepSeek 2025).
//
//   x [B, T, D] → q = x·Wqᵀ [B,T,H,dh]; per branch c ∈ {cmp, sel, win}: k_c = x·W_kcᵀ, v_c = x·W_vcᵀ
//                 [B,T,Hkv,dh] (one shared pair with `shared_kv`); RoPE on q and every k at 0..<T
//              → K̃ = φ_K(k_cmp), Ṽ = φ_V(v_cmp) over blocks [i·d, i·d + l) [B,Nc,Hkv,dh]
//                 φ = MLP(flatten(block) + intra-block position embedding) (or mean pooling)
//              → g = x·W_gᵀ [B,T,H,3] (gate logits)
//              → o = NSA(q, K̃, Ṽ, k_sel, v_sel, k_win, v_win, g) [B,T,H,dh]   (Sources/ZooKernels/NSA)
//              → y = o·Woᵀ [B, T, D]
//
// The NSA kernel runs as ONE tape node (`NSAFunction`): its backward is the fast kernel's, with the
// forward's block choice held fixed, and it hands back the gradients of K̃ and Ṽ so φ's backward
// chains on the tape. Decoding keeps the raw K/V of the selected and window branches and the
// compressed K/V in pages (NSADecodeCache), plus the last l raw tokens of the compression branch
// for φ; each step reads the compressed entries, the selected blocks and the window, and the
// state reports those tokens and bytes separately from the bytes it holds.

import Foundation
import ZooTensor
import ZooAutograd
import ZooKernels
import ZooNN

public struct NSAMixerConfig: MixerConfig, Equatable {
    public static let typeName = "nsa"
    public static let keyReference: [(key: String, description: String)] = [
        ("heads", "query heads (default 4)"),
        ("kv_heads", "key/value heads; heads must be a multiple; a kv group shares its block choice (default 1)"),
        ("head_dim", "per-head dimension (default d_model / heads)"),
        ("rotary", "rotary position embedding on q and every branch's keys (default true)"),
        ("rotary_theta", "RoPE base θ (default 10000)"),
        ("compress_block", "l: tokens per compression block (default 32)"),
        ("compress_stride", "d: stride between compression blocks (default 16)"),
        ("select_block", "l′: tokens per selection block (default 64)"),
        ("select_count", "n: selection blocks per query, the forced ones included (default 16)"),
        ("window", "w: sliding-window length in tokens (default 512)"),
        ("initial_blocks", "selection blocks always chosen at the start (default 1)"),
        ("local_blocks", "selection blocks always chosen at the end, the query's own included (default 2)"),
        ("score_rule", "Eq. 9 reading: weighted | indicator (default weighted; see ZooKernels/NSA/README.md)"),
        ("compression", "φ: mlp (learned, intra-block position embedding) | mean (default mlp)"),
        ("compress_hidden", "hidden width of the φ MLP (default head_dim)"),
        ("shared_kv", "one K/V projection for the three branches instead of one per branch (default false)"),
        ("kernel", "fast | naive (default fast; naive is the Double spec kernel, O(T²))"),
    ]

    public enum Compression: String, Codable, Sendable { case mlp, mean }
    public enum Kernel: String, Codable, Sendable { case fast, naive }
    public enum ScoreRule: String, Codable, Sendable { case weighted, indicator }

    public var heads: Int
    public var kvHeads: Int
    public var headDim: Int?
    public var rotary: Bool
    public var rotaryTheta: Double
    public var compressBlock: Int, compressStride: Int, selectBlock: Int, selectCount: Int, window: Int
    public var initialBlocks: Int, localBlocks: Int
    public var scoreRule: ScoreRule
    public var compression: Compression
    public var compressHidden: Int?
    public var sharedKV: Bool
    public var kernel: Kernel

    public init() { self.init(heads: 4) }

    public init(heads: Int = 4, kvHeads: Int = 1, headDim: Int? = nil, rotary: Bool = true, rotaryTheta: Double = 10_000,
                compressBlock: Int = 32, compressStride: Int = 16, selectBlock: Int = 64, selectCount: Int = 16, window: Int = 512,
                initialBlocks: Int = 1, localBlocks: Int = 2, scoreRule: ScoreRule = .weighted, compression: Compression = .mlp,
                compressHidden: Int? = nil, sharedKV: Bool = false, kernel: Kernel = .fast) {
        self.heads = heads; self.kvHeads = kvHeads; self.headDim = headDim; self.rotary = rotary; self.rotaryTheta = rotaryTheta
        self.compressBlock = compressBlock; self.compressStride = compressStride; self.selectBlock = selectBlock
        self.selectCount = selectCount; self.window = window; self.initialBlocks = initialBlocks; self.localBlocks = localBlocks
        self.scoreRule = scoreRule; self.compression = compression; self.compressHidden = compressHidden
        self.sharedKV = sharedKV; self.kernel = kernel
    }

    enum CodingKeys: String, CodingKey {
        case heads, kvHeads = "kv_heads", headDim = "head_dim", rotary, rotaryTheta = "rotary_theta"
        case compressBlock = "compress_block", compressStride = "compress_stride", selectBlock = "select_block"
        case selectCount = "select_count", window, initialBlocks = "initial_blocks", localBlocks = "local_blocks"
        case scoreRule = "score_rule", compression, compressHidden = "compress_hidden", sharedKV = "shared_kv", kernel
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let d = NSAMixerConfig()
        heads = try c.decodeIfPresent(Int.self, forKey: .heads) ?? d.heads
        kvHeads = try c.decodeIfPresent(Int.self, forKey: .kvHeads) ?? d.kvHeads
        headDim = try c.decodeIfPresent(Int.self, forKey: .headDim)
        rotary = try c.decodeIfPresent(Bool.self, forKey: .rotary) ?? d.rotary
        rotaryTheta = try c.decodeIfPresent(Double.self, forKey: .rotaryTheta) ?? d.rotaryTheta
        compressBlock = try c.decodeIfPresent(Int.self, forKey: .compressBlock) ?? d.compressBlock
        compressStride = try c.decodeIfPresent(Int.self, forKey: .compressStride) ?? d.compressStride
        selectBlock = try c.decodeIfPresent(Int.self, forKey: .selectBlock) ?? d.selectBlock
        selectCount = try c.decodeIfPresent(Int.self, forKey: .selectCount) ?? d.selectCount
        window = try c.decodeIfPresent(Int.self, forKey: .window) ?? d.window
        initialBlocks = try c.decodeIfPresent(Int.self, forKey: .initialBlocks) ?? d.initialBlocks
        localBlocks = try c.decodeIfPresent(Int.self, forKey: .localBlocks) ?? d.localBlocks
        scoreRule = try c.decodeIfPresent(ScoreRule.self, forKey: .scoreRule) ?? d.scoreRule
        compression = try c.decodeIfPresent(Compression.self, forKey: .compression) ?? d.compression
        compressHidden = try c.decodeIfPresent(Int.self, forKey: .compressHidden)
        sharedKV = try c.decodeIfPresent(Bool.self, forKey: .sharedKV) ?? d.sharedKV
        kernel = try c.decodeIfPresent(Kernel.self, forKey: .kernel) ?? d.kernel
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(heads, forKey: .heads); try c.encode(kvHeads, forKey: .kvHeads)
        try c.encodeIfPresent(headDim, forKey: .headDim)
        try c.encode(rotary, forKey: .rotary); try c.encode(rotaryTheta, forKey: .rotaryTheta)
        try c.encode(compressBlock, forKey: .compressBlock); try c.encode(compressStride, forKey: .compressStride)
        try c.encode(selectBlock, forKey: .selectBlock); try c.encode(selectCount, forKey: .selectCount)
        try c.encode(window, forKey: .window); try c.encode(initialBlocks, forKey: .initialBlocks)
        try c.encode(localBlocks, forKey: .localBlocks); try c.encode(scoreRule, forKey: .scoreRule)
        try c.encode(compression, forKey: .compression); try c.encodeIfPresent(compressHidden, forKey: .compressHidden)
        try c.encode(sharedKV, forKey: .sharedKV); try c.encode(kernel, forKey: .kernel)
    }

    public func resolvedHeadDim(dModel: Int) -> Int { headDim ?? dModel / max(heads, 1) }
    public func resolvedCompressHidden(dModel: Int) -> Int { compressHidden ?? resolvedHeadDim(dModel: dModel) }

    /// The kernel options this config implies.
    public var options: NSAOptions {
        NSAOptions(compressBlock: compressBlock, compressStride: compressStride, selectBlock: selectBlock, selectCount: selectCount,
                   window: window, initialBlocks: initialBlocks, localBlocks: localBlocks,
                   scoreRule: scoreRule == .weighted ? .overlapWeighted : .overlapIndicator)
    }

    public func validate(dModel: Int) throws(MixerConfigError) {
        try validateHeadLayout(heads: heads, kvHeads: kvHeads, headDim: headDim,
                               resolvedHeadDim: resolvedHeadDim(dModel: dModel), rotary: rotary,
                               rotaryTheta: rotaryTheta, dModel: dModel)
        for (key, value) in [("compress_block", compressBlock), ("compress_stride", compressStride), ("select_block", selectBlock),
                             ("window", window), ("local_blocks", localBlocks)] where value < 1 {
            throw MixerConfigError(key: key, "must be ≥ 1, got \(value)")
        }
        if initialBlocks < 0 { throw MixerConfigError(key: "initial_blocks", "must be ≥ 0, got \(initialBlocks)") }
        if selectCount < initialBlocks + localBlocks {
            throw MixerConfigError(key: "select_count", "must be ≥ initial_blocks + local_blocks (\(initialBlocks + localBlocks)), got \(selectCount)")
        }
        if let h = compressHidden, h < 1 { throw MixerConfigError(key: "compress_hidden", "must be ≥ 1, got \(h)") }
    }

    public func makeMixer(_ context: MixerContext, generator: inout SeededGenerator) -> any Mixer {
        NSAMixer(self, context: context, generator: &generator)
    }

    /// The decode state after `length` tokens: raw K/V pages (256 tokens; once when shared, else
    /// for the selected and window branches), compressed K/V pages (64 entries), and the last
    /// min(length, l) raw keys/values of the compression branch that φ reads.
    public func stateBytes(batch: Int, length: Int, dModel: Int) -> Int {
        let dh = resolvedHeadDim(dModel: dModel), width = kvHeads * 2 * dh
        let raw = NSAPagedRows.bytes(rows: length, batch: batch, width: width, pageRows: NSAMixer.pageTokens)
        let compressed = NSAPagedRows.bytes(rows: options.compressedCount(keys: length), batch: batch, width: width,
                                            pageRows: NSAMixer.pageCompressed)
        let tail = batch * min(length, compressBlock) * width * MemoryLayout<Float>.stride
        return (sharedKV ? raw : 2 * raw) + compressed + tail
    }
}

/// NSA's decode state: the kernel's cache plus the compression branch's last raw tokens.
public struct NSAMixerState: MixerState {
    public var cache: NSADecodeCache
    /// The last min(position, l) raw keys/values of the compression branch (rotated), [B, ≤l, Hkv, dh].
    public var tailKeys: Tensor, tailValues: Tensor
    public private(set) var tokensReadLastStep = 0
    public private(set) var bytesReadLastStep = 0
    /// The blocks the last decoded token chose, [B, Hkv, n] (−1 padded).
    public private(set) var lastSelection: [Int32] = []

    public var position: Int { cache.length }
    public var byteCount: Int { cache.byteCount + tailKeys.byteCount + tailValues.byteCount }

    /// What the last token read: compressed entries + selected tokens + window tokens (the paper's
    /// count, per sequence) and their bytes for all sequences.
    mutating func recordRead(tokens: Int, batch: Int, kvHeads: Int, headDim: Int, selection: [Int32]) {
        tokensReadLastStep = tokens
        bytesReadLastStep = tokens * batch * kvHeads * 2 * headDim * MemoryLayout<Float>.stride
        lastSelection = selection
    }
}

/// φ: an MLP over a flattened block of l raw keys (or values) plus a learned intra-block position
/// embedding, mapping [l·dh] → hidden → dh; shared by the kv heads.
public struct NSACompressor: Module {
    public let position: Variable              // [l·dh]
    public let fc1: Linear, fc2: Linear
    let block: Int, stride: Int, dim: Int

    init(block: Int, stride: Int, dim: Int, hidden: Int, std: Float, generator: inout SeededGenerator) {
        self.block = block; self.stride = stride; self.dim = dim
        position = parameter(Tensor.normal([block * dim], std: std, generator: &generator))
        fc1 = Linear(block * dim, hidden, bias: true, std: std, generator: &generator)
        fc2 = Linear(hidden, dim, bias: true, std: std, generator: &generator)
    }

    public func namedParameters() -> [NamedParameter] {
        [NamedParameter("pos", position, decays: false)] + nested("fc1", fc1) + nested("fc2", fc2)
    }

    /// x [B, T, Hkv, dh] → [B, Nc, Hkv, dh] on the tape.
    func callAsFunction(_ x: Variable) -> Variable {
        let blocks = NSABlockUnfold(block: block, stride: stride)([x])[0]       // [B, Nc, Hkv, l·dh]
        return fc2((fc1(blocks + position)).gelu())
    }

    /// The same map on plain blocks [B, m, Hkv, l·dh] (decoding).
    func apply(blocks: Tensor) -> Tensor {
        fc2.apply(fc1.apply(blocks + position.value).gelu())
    }
}

public struct NSAMixer: Mixer {
    /// Page sizes of the decode cache (raw tokens, compressed entries).
    public static let pageTokens = 256, pageCompressed = 64

    public let config: NSAMixerConfig
    public let heads: Int, kvHeads: Int, headDim: Int, dModel: Int
    public let queryProjection: Linear, gateProjection: Linear, outputProjection: Linear
    /// Key/value projections of the compressed, selected and window branches (the same three
    /// layers when `shared_kv`).
    public let keyProjections: [Linear], valueProjections: [Linear]
    public let keyCompressor: NSACompressor?, valueCompressor: NSACompressor?
    let rotary: RotaryEmbedding?
    let options: NSAOptions
    /// When set, the parallel form uses these blocks instead of choosing them ([B, Hkv, T, n]):
    /// the loss is only piecewise smooth in the inputs (the top-n choice jumps), so gradient
    /// checks hold the choice fixed, as the kernels' own checks do. Nil in normal use.
    public var fixedSelection: NSASelection? = nil

    public init(_ config: NSAMixerConfig, context: MixerContext, generator: inout SeededGenerator) {
        do { try config.validate(dModel: context.dModel) } catch { fatalError("nsa mixer: \(error)") }
        self.config = config
        options = config.options
        dModel = context.dModel
        heads = config.heads; kvHeads = config.kvHeads
        headDim = config.resolvedHeadDim(dModel: dModel)
        let std = context.weightStd
        queryProjection = Linear(dModel, heads * headDim, std: std, generator: &generator)
        var ks: [Linear] = [], vs: [Linear] = []
        for _ in 0..<(config.sharedKV ? 1 : 3) {
            ks.append(Linear(dModel, kvHeads * headDim, std: std, generator: &generator))
            vs.append(Linear(dModel, kvHeads * headDim, std: std, generator: &generator))
        }
        keyProjections = config.sharedKV ? [ks[0], ks[0], ks[0]] : ks
        valueProjections = config.sharedKV ? [vs[0], vs[0], vs[0]] : vs
        // Gates start at σ(0) = ½ for every branch.
        gateProjection = Linear(dModel, heads * 3, bias: true, std: std, generator: &generator)
        outputProjection = Linear(heads * headDim, dModel, std: context.outputProjectionStd, generator: &generator)
        if config.compression == .mlp {
            let hidden = config.resolvedCompressHidden(dModel: dModel)
            keyCompressor = NSACompressor(block: config.compressBlock, stride: config.compressStride, dim: headDim, hidden: hidden,
                                          std: std, generator: &generator)
            valueCompressor = NSACompressor(block: config.compressBlock, stride: config.compressStride, dim: headDim, hidden: hidden,
                                            std: std, generator: &generator)
        } else {
            keyCompressor = nil; valueCompressor = nil
        }
        rotary = config.rotary ? RotaryEmbedding(headDim: headDim, base: config.rotaryTheta) : nil
    }

    public func namedParameters() -> [NamedParameter] {
        var p = nested("q_proj", queryProjection)
        if config.sharedKV {
            p += nested("k_proj", keyProjections[0]) + nested("v_proj", valueProjections[0])
        } else {
            for (i, name) in ["cmp", "sel", "win"].enumerated() {
                p += nested("k_\(name)_proj", keyProjections[i]) + nested("v_\(name)_proj", valueProjections[i])
            }
        }
        if let keyCompressor, let valueCompressor { p += nested("phi_k", keyCompressor) + nested("phi_v", valueCompressor) }
        return p + nested("gate_proj", gateProjection) + nested("o_proj", outputProjection)
    }

    /// φ on the tape: the learned MLP, or mean pooling.
    func compress(_ x: Variable, _ compressor: NSACompressor?) -> Variable {
        if let compressor { return compressor(x) }
        return NSAMeanCompress(options: options)([x])[0]
    }

    public func callAsFunction(_ x: Variable) -> Variable { forward(x).output }

    /// The blocks the parallel form chooses for x [B, T, D], [B, Hkv, T, n] (no tape).
    public func blockSelection(_ x: Tensor) -> NSASelection { withNoGrad { forward(Variable(x)).selection } }

    func forward(_ x: Variable) -> (output: Variable, selection: NSASelection) {
        precondition(x.rank == 3 && x.shape[2] == dModel, "nsa mixer: input \(describe(x.shape)) is not [B, T, \(dModel)]")
        let (b, t) = (x.shape[0], x.shape[1])
        var q = queryProjection(x).reshaped([b, t, heads, headDim])
        if let rotary { q = rotary(q) }
        var keys: [Variable] = [], values: [Variable] = []
        for branch in 0..<(config.sharedKV ? 1 : 3) {
            var k = keyProjections[branch](x).reshaped([b, t, kvHeads, headDim])
            if let rotary { k = rotary(k) }
            keys.append(k)
            values.append(valueProjections[branch](x).reshaped([b, t, kvHeads, headDim]))
        }
        if config.sharedKV { keys = [keys[0], keys[0], keys[0]]; values = [values[0], values[0], values[0]] }
        let kCmp = compress(keys[0], keyCompressor), vCmp = compress(values[0], valueCompressor)
        let gates = gateProjection(x).reshaped([b, t, heads, 3])
        let function = NSAFunction(options: options, kernel: config.kernel, selection: fixedSelection)
        let o = function([q, kCmp, vCmp, keys[1], values[1], keys[2], values[2], gates])[0]
        return (outputProjection(o.reshaped([b, t, heads * headDim])), function.chosen.selection!)
    }

    public func initialState(batch: Int) -> NSAMixerState {
        NSAMixerState(cache: NSADecodeCache(options: options, batch: batch, kvHeads: kvHeads, keyDim: headDim, valueDim: headDim,
                                            sharedRawKV: config.sharedKV, pageTokens: Self.pageTokens, pageCompressed: Self.pageCompressed),
                      tailKeys: Tensor.zeros([batch, 0, kvHeads, headDim]), tailValues: Tensor.zeros([batch, 0, kvHeads, headDim]))
    }

    public func step(_ x: Tensor, state: inout NSAMixerState) -> Tensor {
        precondition(x.rank == 3 && x.shape[2] == dModel, "nsa mixer step: input \(describe(x.shape)) is not [B, T, \(dModel)]")
        let (b, t) = (x.shape[0], x.shape[1])
        precondition(b == state.cache.batch, "nsa mixer step: batch \(b) but the state holds \(state.cache.batch) sequences")
        let offset = state.position
        var q = queryProjection.apply(x).reshaped([b, t, heads, headDim])
        if let rotary { q = rotary.apply(q, offset: offset) }
        var keys: [Tensor] = [], values: [Tensor] = []
        for branch in 0..<(config.sharedKV ? 1 : 3) {
            var k = keyProjections[branch].apply(x).reshaped([b, t, kvHeads, headDim])
            if let rotary { k = rotary.apply(k, offset: offset) }
            keys.append(k)
            values.append(valueProjections[branch].apply(x).reshaped([b, t, kvHeads, headDim]))
        }
        if config.sharedKV { keys = [keys[0], keys[0], keys[0]]; values = [values[0], values[0], values[0]] }
        let gates = gateProjection.apply(x).reshaped([b, t, heads, 3])
        state.cache.appendRaw(kSel: keys[1], vSel: values[1], kWin: config.sharedKV ? nil : keys[2], vWin: config.sharedKV ? nil : values[2])

        // Compression: the blocks these tokens complete, from the kept tail plus the new tokens.
        let recentK = Tensor.concatenate([state.tailKeys, keys[0]], axis: 1)
        let recentV = Tensor.concatenate([state.tailValues, values[0]], axis: 1)
        let first = offset - state.tailKeys.shape[1]                     // position of recent[0]
        let c0 = options.compressedCount(keys: offset), c1 = options.compressedCount(keys: offset + t)
        if c1 > c0 {
            let blockK = gatherBlocks(recentK, from: c0, to: c1, firstPosition: first)
            let blockV = gatherBlocks(recentV, from: c0, to: c1, firstPosition: first)
            state.cache.appendCompressed(k: compressBlocks(blockK, keyCompressor), v: compressBlocks(blockV, valueCompressor))
        }
        let keep = min(offset + t, config.compressBlock), n = recentK.shape[1]
        state.tailKeys = recentK.slice(axis: 1, (n - keep)..<n)
        state.tailValues = recentV.slice(axis: 1, (n - keep)..<n)

        let o: Tensor
        if t == 1 {
            let r = nsaDecodeStep(q: q, gates: gates, cache: state.cache)
            o = r.output
            state.recordRead(tokens: r.reads.tokens, batch: b, kvHeads: kvHeads, headDim: headDim, selection: r.selection)
        } else {
            let f = nsaPrefill(q: q, gates: gates, cache: state.cache)
            o = f.output
            let last = f.selection.indices.enumerated().filter { ($0.offset / options.selectCount) % t == t - 1 }.map(\.element)
            state.recordRead(tokens: options.decodeTokensRead(context: offset + t), batch: b, kvHeads: kvHeads, headDim: headDim,
                             selection: last)
        }
        return outputProjection.apply(o.reshaped([b, t, heads * headDim]))
    }

    /// Blocks c0..<c1 as rows [B, m, Hkv, l·dh] from `recent` [B, n, Hkv, dh], whose row 0 sits at
    /// position `firstPosition`.
    func gatherBlocks(_ recent: Tensor, from c0: Int, to c1: Int, firstPosition: Int) -> Tensor {
        let (b, n) = (recent.shape[0], recent.shape[1])
        let l = config.compressBlock, m = c1 - c0, row = kvHeads * headDim
        var out = Tensor(uninitializedShape: [b, m, kvHeads, l * headDim])
        let dst = out.mutablePointer(), src = recent.pointer
        for bi in 0..<b {
            for i in 0..<m {
                let start = (c0 + i) * config.compressStride - firstPosition
                precondition(start >= 0 && start + l <= n, "nsa mixer: block \(c0 + i) is not in the kept tokens")
                for h in 0..<kvHeads {
                    for u in 0..<l {
                        (dst + ((bi * m + i) * kvHeads + h) * l * headDim + u * headDim)
                            .update(from: src + (bi * n + start + u) * row + h * headDim, count: headDim)
                    }
                }
            }
        }
        return out
    }

    /// φ on plain blocks [B, m, Hkv, l·dh] → [B, m, Hkv, dh].
    func compressBlocks(_ blocks: Tensor, _ compressor: NSACompressor?) -> Tensor {
        if let compressor { return compressor.apply(blocks: blocks) }
        // Mean pooling over the l rows of each block.
        let (b, m, l) = (blocks.shape[0], blocks.shape[1], config.compressBlock)
        return blocks.reshaped([b, m, kvHeads, l, headDim]).mean(axes: [3]).reshaped([b, m, kvHeads, headDim])
    }
}

/// The NSA kernel as one differentiable node:
/// [q, kCmp, vCmp, kSel, vSel, kWin, vWin, gates] → [o]. Saves the inputs (shared with the tape)
/// and the forward's branch outputs, log-sum-exps and block choice; the backward keeps that choice.
struct NSAFunction: DifferentiableFunction {
    let options: NSAOptions
    let kernel: NSAMixerConfig.Kernel
    /// A given block choice (nil: choose by top-n).
    let selection: NSASelection?
    /// The choice the forward made, for `NSAMixer.blockSelection`.
    final class Chosen { var selection: NSASelection? }
    let chosen = Chosen()

    struct Saved { let inputs: NSAInputs; let forward: NSAForwardResult?; let selection: NSASelection }

    func forward(_ t: [Tensor]) -> (outputs: [Tensor], saved: Saved) {
        let x = NSAInputs(q: t[0], kCmp: t[1], vCmp: t[2], kSel: t[3], vSel: t[4], kWin: t[5], vWin: t[6], gates: t[7])
        switch kernel {
        case .fast:
            let f = nsaForward(x, options: options, selection: selection)
            chosen.selection = f.selection
            return ([f.output], Saved(inputs: x, forward: f, selection: f.selection))
        case .naive:
            let r = nsaNaiveForward(NSADoubleInputs(x), options: options, selection: selection)
            chosen.selection = r.selection
            return ([Tensor(shape: t[0].shape.dropLast() + [t[4].shape[3]], doubles: r.output)], Saved(inputs: x, forward: nil, selection: r.selection))
        }
    }

    func backward(_ saved: Saved, outputGradients: [Tensor?]) -> [Tensor?] {
        guard let dO = outputGradients[0] else { return Array(repeating: nil, count: 8) }
        let x = saved.inputs
        if let f = saved.forward {
            let g = nsaBackward(x, forward: f, outputGradient: dO, options: options)
            return [g.q, g.kCmp, g.vCmp, g.kSel, g.vSel, g.kWin, g.vWin, g.gates]
        }
        let g = nsaNaiveBackward(NSADoubleInputs(x), options: options, selection: saved.selection, outputGradient: dO.doubles)
        return [Tensor(shape: x.q.shape, doubles: g.q), Tensor(shape: x.kCmp.shape, doubles: g.kCmp),
                Tensor(shape: x.vCmp.shape, doubles: g.vCmp), Tensor(shape: x.kSel.shape, doubles: g.kSel),
                Tensor(shape: x.vSel.shape, doubles: g.vSel), Tensor(shape: x.kWin.shape, doubles: g.kWin),
                Tensor(shape: x.vWin.shape, doubles: g.vWin), Tensor(shape: x.gates.shape, doubles: g.gates)]
    }
}

/// Overlapping blocks as rows: x [B, T, H, D] → [B, Nc, H, l·D], row (b, i, h) = x[b, i·d ..< i·d + l, h]
/// flattened. The backward adds each row back onto the tokens it came from.
struct NSABlockUnfold: DifferentiableFunction {
    let block: Int, stride: Int

    func count(_ T: Int) -> Int { T < block ? 0 : (T - block) / stride + 1 }

    func forward(_ inputs: [Tensor]) -> (outputs: [Tensor], saved: [Int]) {
        let x = inputs[0]
        let (B, T, H, D) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        let Nc = count(T)
        var y = Tensor(uninitializedShape: [B, Nc, H, block * D])
        let dst = y.mutablePointer(), src = x.pointer
        for b in 0..<B { for i in 0..<Nc { for h in 0..<H { for u in 0..<block {
            (dst + ((b * Nc + i) * H + h) * block * D + u * D).update(from: src + ((b * T + i * stride + u) * H + h) * D, count: D)
        } } } }
        return ([y], x.shape)
    }

    func backward(_ shape: [Int], outputGradients: [Tensor?]) -> [Tensor?] {
        guard let dy = outputGradients[0] else { return [nil] }
        let (B, T, H, D) = (shape[0], shape[1], shape[2], shape[3])
        let Nc = count(T)
        var dx = Tensor.zeros(shape)
        let dst = dx.mutablePointer(), src = dy.pointer
        for b in 0..<B { for i in 0..<Nc { for h in 0..<H { for u in 0..<block {
            let out = dst + ((b * T + i * stride + u) * H + h) * D, inp = src + ((b * Nc + i) * H + h) * block * D + u * D
            for e in 0..<D { out[e] += inp[e] }
        } } } }
        return [dx]
    }
}

/// Mean-pooling φ as a node: x [B, T, H, D] → [B, Nc, H, D] (the kernels' `nsaCompressMean`).
struct NSAMeanCompress: DifferentiableFunction {
    let options: NSAOptions
    func forward(_ inputs: [Tensor]) -> (outputs: [Tensor], saved: Int) {
        ([nsaCompressMean(inputs[0], options: options)], inputs[0].shape[1])
    }
    func backward(_ tokens: Int, outputGradients: [Tensor?]) -> [Tensor?] {
        guard let dy = outputGradients[0] else { return [nil] }
        return [nsaCompressMeanBackward(dy, tokens: tokens, options: options)]
    }
}
