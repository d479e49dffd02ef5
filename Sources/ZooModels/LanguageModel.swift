import ZooTensor
import ZooAutograd
import ZooNN
import ZooMixers

/// The shape of a language model; the mixer may differ per layer (hybrid stacks).
public struct ModelShape: Sendable {
    public var vocabularySize: Int
    public var dModel: Int
    /// One mixer config per layer.
    public var mixers: [AnyMixerConfig]
    /// MLP after each mixer (nil: no MLP, mixer-only blocks).
    public var mlp: MLP.Kind?
    public var mlpHidden: Int
    public var normEpsilon: Float

    public init(vocabularySize: Int, dModel: Int, mixers: [AnyMixerConfig], mlp: MLP.Kind? = .swiglu,
                mlpHidden: Int? = nil, normEpsilon: Float = 1e-5) {
        self.vocabularySize = vocabularySize
        self.dModel = dModel
        self.mixers = mixers
        self.mlp = mlp
        self.mlpHidden = mlpHidden ?? 4 * dModel
        self.normEpsilon = normEpsilon
    }
    public var layerCount: Int { mixers.count }
}

/// embedding → n × [RMSNorm → mixer → residual, RMSNorm → MLP → residual] → RMSNorm → LM head tied
/// to the embedding (../shared/DESIGN.md §3).
///
/// Initialisation: every weight N(0, 0.02); residual output projections (each mixer's output
/// projection and each MLP's down projection) N(0, 0.02/√(2·n_layers)) (GPT-2).
/// Parameter names: `embedding.weight`, `layers.<i>.mixer_norm.weight`, `layers.<i>.mixer.<…>`,
/// `layers.<i>.mlp_norm.weight`, `layers.<i>.mlp.<…>`, `norm.weight`.
public final class LanguageModel: Module {
    public struct Block {
        public let mixerNorm: RMSNorm
        public let mixer: any Mixer
        public let mlpNorm: RMSNorm?
        public let mlp: MLP?
    }

    public let shape: ModelShape
    public let embedding: Embedding
    public let blocks: [Block]
    public let norm: RMSNorm

    public init(_ shape: ModelShape, seed: UInt64) {
        precondition(shape.layerCount >= 1, "LanguageModel: needs at least one layer")
        self.shape = shape
        var g = SeededGenerator(seed: seed)
        let context = MixerContext(dModel: shape.dModel, layerCount: shape.layerCount)
        embedding = Embedding(shape.vocabularySize, shape.dModel, std: context.weightStd, generator: &g)
        var blocks: [Block] = []
        for config in shape.mixers {
            // Each layer draws from its own sub-stream, so changing one layer's mixer leaves the
            // others' initial weights unchanged.
            var layerGenerator = g.derived(UInt64(blocks.count + 1))
            let mixer = config.config.makeMixer(context, generator: &layerGenerator)
            let mlp = shape.mlp.map {
                MLP(dim: shape.dModel, hidden: shape.mlpHidden, kind: $0, std: context.weightStd,
                    outputStd: context.outputProjectionStd, generator: &layerGenerator)
            }
            blocks.append(Block(mixerNorm: RMSNorm(shape.dModel, epsilon: shape.normEpsilon), mixer: mixer,
                                mlpNorm: mlp == nil ? nil : RMSNorm(shape.dModel, epsilon: shape.normEpsilon), mlp: mlp))
        }
        self.blocks = blocks
        norm = RMSNorm(shape.dModel, epsilon: shape.normEpsilon)
    }

    public func namedParameters() -> [NamedParameter] {
        var all = nested("embedding", embedding)
        for (i, b) in blocks.enumerated() {
            all += nested("layers.\(i).mixer_norm", b.mixerNorm)
            all += nested("layers.\(i).mixer", b.mixer)
            if let n = b.mlpNorm, let m = b.mlp { all += nested("layers.\(i).mlp_norm", n) + nested("layers.\(i).mlp", m) }
        }
        return all + nested("norm", norm)
    }

    /// Final hidden states [B, T, D] for token ids [B·T] (row-major).
    ///
    /// The same computation as `x = x + mixer(mixerNorm(x)); x = x + mlp(mlpNorm(x))` per block and
    /// `norm(x)` at the end, with each residual sum fused to the norm that follows it
    /// (`residualRMSNorm`): the residual stream and its next normalised copy come out of one pass,
    /// and its gradient needs no separate sum. Bit-identical to the unfused form (tested).
    public func hidden(_ ids: [Int], batch: Int, length: Int) -> Variable {
        var x = embedding(ids, shape: [batch, length])
        // The residual branches in order, each with the norm that follows its sum.
        var branches: [(branch: (Variable) -> Variable, nextNorm: RMSNorm)] = []
        for (i, b) in blocks.enumerated() {
            let afterBlock = i + 1 < blocks.count ? blocks[i + 1].mixerNorm : norm
            if let n = b.mlpNorm, let m = b.mlp {
                branches.append(({ b.mixer($0) }, n))
                branches.append(({ m($0) }, afterBlock))
            } else {
                branches.append(({ b.mixer($0) }, afterBlock))
            }
        }
        var normed = blocks[0].mixerNorm(x)
        for (branch, nextNorm) in branches {
            (x, normed) = residualRMSNorm(x, branch(normed), weight: nextNorm.weight, epsilon: nextNorm.epsilon)
        }
        return normed
    }

    /// Logits [rows, V] of hidden rows [rows, D] through the tied head (x · Eᵀ).
    public func logits(_ hiddenRows: Variable) -> Variable { matmul(hiddenRows, embedding.weight, transB: true) }

    /// Mean cross-entropy over labelled positions. Only positions whose target is not
    /// `ignoreIndex` are projected to logits (MQAR labels a few positions per sequence: the
    /// others cost no head FLOPs).
    public func loss(_ ids: [Int], targets: [Int], batch: Int, length: Int, ignoreIndex: Int = -100) -> Variable {
        precondition(ids.count == batch * length && targets.count == ids.count,
                     "LanguageModel.loss: \(ids.count) ids and \(targets.count) targets for batch \(batch) × length \(length)")
        let h = hidden(ids, batch: batch, length: length).reshaped([batch * length, shape.dModel])
        let labelled = targets.indices.filter { targets[$0] != ignoreIndex }
        if labelled.count == targets.count {
            return crossEntropy(logits(h), targets: targets, ignoreIndex: ignoreIndex)
        }
        let rows = h.gatherRows(labelled)
        return crossEntropy(logits(rows), targets: labelled.map { targets[$0] }, ignoreIndex: ignoreIndex)
    }

    /// Logits at labelled positions only, with their targets (evaluation).
    public func labelledLogits(_ ids: [Int], targets: [Int], batch: Int, length: Int, ignoreIndex: Int = -100) -> (logits: Tensor, targets: [Int], positions: [Int]) {
        withNoGrad {
            let h = hidden(ids, batch: batch, length: length).reshaped([batch * length, shape.dModel])
            let labelled = targets.indices.filter { targets[$0] != ignoreIndex }
            return (logits(h.gatherRows(labelled)).value, labelled.map { targets[$0] }, labelled)
        }
    }

    // MARK: Recurrent decoding

    /// The decode state of the whole model: one mixer state per layer.
    public struct DecodeState {
        public var layers: [any MixerState]
        public var position: Int { layers.first?.position ?? 0 }
        /// Bytes held by all layers' states, measured.
        public var byteCount: Int { layers.reduce(0) { $0 + $1.byteCount } }
        public var bytesReadLastStep: Int { layers.reduce(0) { $0 + $1.bytesReadLastStep } }
        public var tokensReadLastStep: Int { layers.reduce(0) { $0 + $1.tokensReadLastStep } }
    }

    public func initialState(batch: Int) -> DecodeState {
        DecodeState(layers: blocks.map { $0.mixer.makeState(batch: batch) })
    }

    /// Consumes tokens [B, T] (T = 1 decodes, T > 1 prefills) and returns the logits of the last
    /// position, [B, V].
    public func step(_ ids: [Int], batch: Int, length: Int, state: inout DecodeState) -> Tensor {
        withNoGrad {
            var x = embedding.weight.value.gatherRows(ids).reshaped([batch, length, shape.dModel])
            for (i, b) in blocks.enumerated() {
                x = x + b.mixer.step(b.mixerNorm.apply(x), anyState: &state.layers[i])
                if let n = b.mlpNorm, let m = b.mlp { x = x + m.apply(n.apply(x)) }
            }
            let last = x.slice(axis: 1, (length - 1)..<length).reshaped([batch, shape.dModel])
            return Tensor.matmul(norm.apply(last), embedding.weight.value, transB: true)
        }
    }
}
