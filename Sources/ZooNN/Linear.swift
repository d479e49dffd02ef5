import ZooTensor
import ZooAutograd

/// y = x · Wᵀ + b, with W stored [out, in] (as PyTorch and MLX), x [..., in] → y [..., out].
public struct Linear: Module {
    public let weight: Variable
    public let bias: Variable?

    /// Weights from N(0, std²) (default 0.02, the GPT-2 convention); bias zero.
    public init(_ inFeatures: Int, _ outFeatures: Int, bias: Bool = false, std: Float = 0.02,
                generator: inout SeededGenerator) {
        weight = parameter(Tensor.normal([outFeatures, inFeatures], std: std, generator: &generator))
        self.bias = bias ? parameter(.zeros([outFeatures])) : nil
    }

    public init(weight: Tensor, bias: Tensor? = nil) {
        self.weight = parameter(weight)
        self.bias = bias.map(parameter)
    }

    /// A layer over existing variables (tied weights, tests).
    public init(sharing weight: Variable, bias: Variable? = nil) {
        self.weight = weight
        self.bias = bias
    }

    public var inFeatures: Int { weight.shape[1] }
    public var outFeatures: Int { weight.shape[0] }

    public func callAsFunction(_ x: Variable) -> Variable {
        precondition(x.shape.last == inFeatures, "Linear: input \(describe(x.shape)) does not end in \(inFeatures) features (weight \(describe(weight.shape)))")
        let y = matmul(x, weight, transB: true)
        return bias.map { y + $0 } ?? y
    }

    /// The same map on a plain tensor (decoding, no tape).
    public func apply(_ x: Tensor) -> Tensor {
        let y = Tensor.matmul(x, weight.value, transB: true)
        return bias.map { y + $0.value } ?? y
    }

    public func namedParameters() -> [NamedParameter] {
        [NamedParameter("weight", weight)] + (bias.map { [NamedParameter("bias", $0, decays: false)] } ?? [])
    }
}

extension Linear {
    /// Several layers of the same input width applied to one input, as one product:
    /// `[l(x) for l in layers]` (attention's q, k and v projections). See `projections`.
    public static func project(_ x: Variable, through layers: [Linear]) -> [Variable] {
        precondition(!layers.isEmpty && layers.allSatisfy { $0.inFeatures == x.shape.last },
                     "Linear.project: input \(describe(x.shape)) does not match every layer's input width")
        guard GemmPolicy.fuseProjections else { return layers.map { $0(x) } }
        let ys = projections(x, layers.map { ($0.weight, 0 ..< $0.outFeatures) })
        return zip(ys, layers).map { y, layer in layer.bias.map { y + $0 } ?? y }
    }

    /// This layer's output cut into blocks of `sizes` features, each computed into its own tensor:
    /// `self(x).split(axis: -1, sizes: sizes)` without the wide output and its copies.
    public func split(_ x: Variable, sizes: [Int]) -> [Variable] {
        precondition(sizes.reduce(0, +) == outFeatures && sizes.allSatisfy { $0 > 0 },
                     "Linear.split: sizes \(sizes) do not add up to the \(outFeatures) output features")
        precondition(x.shape.last == inFeatures, "Linear: input \(describe(x.shape)) does not end in \(inFeatures) features (weight \(describe(weight.shape)))")
        guard GemmPolicy.fuseProjections else { return self(x).split(axis: x.rank - 1, sizes: sizes) }
        var ranges: [Range<Int>] = [], start = 0
        for size in sizes { ranges.append(start ..< start + size); start += size }
        let ys = projections(x, ranges.map { (weight, $0) })
        guard let bias else { return ys }
        return zip(ys, bias.split(axis: 0, sizes: sizes)).map { $0 + $1 }
    }
}

/// Rows of a [vocab, dim] table by token id: ids [B, T] → [B, T, dim].
public struct Embedding: Module {
    public let weight: Variable
    public init(_ vocab: Int, _ dim: Int, std: Float = 0.02, generator: inout SeededGenerator) {
        weight = parameter(Tensor.normal([vocab, dim], std: std, generator: &generator))
    }
    public var vocabularySize: Int { weight.shape[0] }
    public var dimension: Int { weight.shape[1] }

    /// `ids` flat row-major with logical shape `shape` (e.g. [B, T]).
    public func callAsFunction(_ ids: [Int], shape: [Int]) -> Variable {
        precondition(shape.reduce(1, *) == ids.count, "Embedding: \(ids.count) ids for shape \(describe(shape))")
        if let bad = ids.first(where: { $0 < 0 || $0 >= vocabularySize }) {
            fatalError("Embedding: token id \(bad) is outside the vocabulary 0..<\(vocabularySize)")
        }
        return weight.gatherRows(ids).reshaped(shape + [dimension])
    }
    public func namedParameters() -> [NamedParameter] { [NamedParameter("weight", weight)] }
}
