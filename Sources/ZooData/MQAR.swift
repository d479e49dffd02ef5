import ZooTensor

// Multi-query associative recall (MQAR), with the semantics of the zoology benchmark
// (Arora, Eyuboglu et al., "Zoology: Measuring and improving recall in efficient language
// models", 2023; HazyResearch/zoology `multiquery_ar`). One example of length T, k pairs, vocab V:
//
//   positions 0 ..< 2k      k₁ v₁ k₂ v₂ … k_k v_k   keys distinct from [1, V/2), values distinct
//                                                   from [V/2, V), both in random order
//   positions 2k ..< T      S = ⌊(T − 2k)/2⌋ query slots at 2k + 2g (g = 0 ..< S); pair j's key is
//                           placed again at slot g_j, the gaps g_j drawn without replacement with
//                           p(g) ∝ (g + 1)^(a − 1) (a = power_a; a = 1 is uniform, a → 0 favours
//                           short gaps, as repeated bigrams in real text do)
//   every other position    a uniform random token from [0, V) (random_non_queries, the default)
//                           or 0
//   targets                 v_j at the position of pair j's query, ignoreIndex everywhere else
//
// Zoology places the same tokens; its random numbers come from NumPy, ours from SeededGenerator,
// so the two produce different (equally distributed) examples. Its weighted draws without
// replacement come in rounds from NumPy; ours are successive draws from the renormalised remaining
// weights (the usual definition), which gives the same law.
//
// Determinism across machines: example i of a dataset is generated from its own generator
// (dataset seed → split → i), so any example can be made in any order; the gap weights use
// portableLog/portableExp and are summed in a fixed order, so every sampling decision is the
// same on every IEEE-754 machine.

/// One MQAR task: the `data` section of an experiment names one or more of these.
public struct MQARConfig: Codable, Sendable, Hashable {
    /// V: token ids are in 0 ..< V; keys come from [1, V/2), values from [V/2, V).
    public var vocabSize: Int
    /// T: the input length.
    public var seqLen: Int
    /// k: key-value pairs per example (and as many queries).
    public var numKVPairs: Int
    /// a in p(gap g) ∝ (g + 1)^(a − 1). Default 0.01, as zoology.
    public var powerA: Double
    /// Examples in the dataset (train or test).
    public var numExamples: Int
    /// Fill the positions that are neither pair nor query with random tokens (zoology's default)
    /// instead of 0.
    public var randomNonQueries: Bool

    public init(vocabSize: Int, seqLen: Int, numKVPairs: Int, powerA: Double = 0.01, numExamples: Int,
                randomNonQueries: Bool = true) {
        self.vocabSize = vocabSize
        self.seqLen = seqLen
        self.numKVPairs = numKVPairs
        self.powerA = powerA
        self.numExamples = numExamples
        self.randomNonQueries = randomNonQueries
    }

    enum CodingKeys: String, CodingKey, CaseIterable {
        case vocabSize = "vocab_size", seqLen = "seq_len", numKVPairs = "num_kv_pairs"
        case powerA = "power_a", numExamples = "num_examples", randomNonQueries = "random_non_queries"
    }

    /// The keys an experiment file may use (for strict decoding): `power_a` and
    /// `random_non_queries` are optional.
    public static let keys: [String] = CodingKeys.allCases.map(\.rawValue)

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        vocabSize = try c.decode(Int.self, forKey: .vocabSize)
        seqLen = try c.decode(Int.self, forKey: .seqLen)
        numKVPairs = try c.decode(Int.self, forKey: .numKVPairs)
        powerA = try c.decodeIfPresent(Double.self, forKey: .powerA) ?? 0.01
        numExamples = try c.decode(Int.self, forKey: .numExamples)
        randomNonQueries = try c.decodeIfPresent(Bool.self, forKey: .randomNonQueries) ?? true
    }

    /// Query slots after the pairs: ⌊(T − 2k)/2⌋.
    public var querySlots: Int { (seqLen - 2 * numKVPairs) / 2 }

    /// Throws the first impossible setting, naming its key and what is allowed.
    public func validate() throws(DataError) {
        guard vocabSize >= 4 else {
            throw DataError(key: "vocab_size", "is \(vocabSize); MQAR needs at least 4 tokens (keys from [1, V/2), values from [V/2, V))")
        }
        guard numKVPairs >= 1 else {
            throw DataError(key: "num_kv_pairs", "is \(numKVPairs); it must be at least 1")
        }
        let maxKeys = vocabSize / 2 - 1
        guard numKVPairs <= maxKeys else {
            throw DataError(key: "num_kv_pairs", "is \(numKVPairs), but vocab_size \(vocabSize) has only \(maxKeys) distinct keys "
                            + "(keys are drawn without replacement from [1, \(vocabSize / 2))); use num_kv_pairs ≤ \(maxKeys) "
                            + "or vocab_size ≥ \(2 * numKVPairs + 2)")
        }
        guard seqLen >= 4 * numKVPairs else {
            throw DataError(key: "seq_len", "is \(seqLen), too short for num_kv_pairs \(numKVPairs): the pairs take 2·\(numKVPairs) "
                            + "positions and each query needs its own slot of two among the rest, so seq_len must be ≥ 4·num_kv_pairs "
                            + "= \(4 * numKVPairs) (or num_kv_pairs ≤ \(seqLen / 4))")
        }
        guard powerA.isFinite && powerA > 0 else {
            throw DataError(key: "power_a", "is \(powerA); it must be a positive number (0.01 as zoology; 1 gives uniform gaps)")
        }
        guard numExamples >= 1 else {
            throw DataError(key: "num_examples", "is \(numExamples); it must be at least 1")
        }
    }
}

/// One generated example.
public struct MQARExample: Sendable, Equatable {
    /// [T] token ids.
    public let inputs: [Int]
    /// [T] targets: the value at each query position, `Batch.ignoreIndex` elsewhere.
    public let targets: [Int]
    /// The number of key-value pairs of the task this example comes from.
    public let numKVPairs: Int
    /// The query positions, in the order of the pairs (query j asks for pair j's value).
    public let queryPositions: [Int]
}

/// An evaluation batch with the pairs count of each row, so accuracy can be sliced by it.
public struct MQAREvaluationBatch: Sendable, Equatable {
    public let batch: Batch
    /// [batchSize]: num_kv_pairs of each row.
    public let numKVPairs: [Int]
}

/// A finite, deterministic MQAR dataset: the concatenation of one or more tasks (segments) that
/// share `vocab_size` and `seq_len`. Examples are generated on demand, so a dataset costs no
/// memory and any example can be made in any order.
///
/// Train and test sets of one experiment use the same seed and different `split`s, which draw
/// from independent streams.
public struct MQARDataset: Sendable {
    public enum Split: String, Codable, Sendable { case train, test }

    public let segments: [MQARConfig]
    public let seed: UInt64
    public let split: Split
    /// Total examples over all segments.
    public let count: Int
    public let vocabSize: Int
    public let seqLen: Int

    /// Cumulative example counts: segment s holds examples segmentStarts[s] ..< segmentStarts[s + 1].
    private let segmentStarts: [Int]
    /// Per segment, the unnormalised gap weights (g + 1)^(a − 1), g = 0 ..< querySlots.
    private let gapWeights: [[Double]]
    private let base: SeededGenerator

    public init(segments: [MQARConfig], seed: UInt64, split: Split) throws(DataError) {
        guard let first = segments.first else {
            throw DataError("MQAR: a dataset needs at least one task")
        }
        for (i, s) in segments.enumerated() {
            do { try s.validate() } catch {
                throw DataError(key: segments.count > 1 ? "[\(i)].\(error.key ?? "")" : error.key, error.message)
            }
            if s.vocabSize != first.vocabSize {
                throw DataError(key: "[\(i)].vocab_size", "is \(s.vocabSize), but the first task has \(first.vocabSize); tasks mixed in one dataset share vocab_size")
            }
            if s.seqLen != first.seqLen {
                throw DataError(key: "[\(i)].seq_len", "is \(s.seqLen), but the first task has \(first.seqLen); tasks mixed in one dataset share seq_len (make one dataset per length)")
            }
        }
        self.segments = segments
        self.seed = seed
        self.split = split
        self.vocabSize = first.vocabSize
        self.seqLen = first.seqLen
        var starts = [0]
        for s in segments { starts.append(starts.last! + s.numExamples) }
        self.segmentStarts = starts
        self.count = starts.last!
        self.gapWeights = segments.map { s in
            (0..<s.querySlots).map { g in portablePow(Double(g + 1), s.powerA - 1) }
        }
        // Independent streams per split: the salts are the ASCII of "train" and "test".
        self.base = SeededGenerator(seed: seed).derived(split == .train ? 0x74_7261_696E : 0x7465_7374)
    }

    public init(_ config: MQARConfig, seed: UInt64, split: Split) throws(DataError) {
        try self.init(segments: [config], seed: seed, split: split)
    }

    /// Describes the data for `DataPosition.source`.
    public var identity: String {
        let tasks = segments.map { "V\($0.vocabSize) T\($0.seqLen) k\($0.numKVPairs) a\($0.powerA) n\($0.numExamples)\($0.randomNonQueries ? "" : " zeros")" }
        return "mqar \(split.rawValue) seed \(seed) [\(tasks.joined(separator: ", "))]"
    }

    private func segment(of index: Int) -> Int {
        precondition(index >= 0 && index < count, "MQARDataset: example \(index) is out of range 0..<\(count)")
        var lo = 0, hi = segments.count - 1
        while lo < hi {   // last s with segmentStarts[s] <= index
            let mid = (lo + hi + 1) / 2
            if segmentStarts[mid] <= index { lo = mid } else { hi = mid - 1 }
        }
        return lo
    }

    /// num_kv_pairs of example `index` (for accuracy by kv-pairs slice).
    public func numKVPairs(ofExample index: Int) -> Int { segments[segment(of: index)].numKVPairs }

    /// Example `index` (0 ..< count); the same on every call and every machine.
    public func example(at index: Int) -> MQARExample {
        let s = segment(of: index)
        let config = segments[s]
        var rng = base.derived(UInt64(index))
        let v = config.vocabSize, k = config.numKVPairs, t = config.seqLen
        let keys = sampleWithoutReplacement(k, from: 1, to: v / 2, using: &rng)
        let values = sampleWithoutReplacement(k, from: v / 2, to: v, using: &rng)
        let gaps = sampleGaps(k, weights: gapWeights[s], using: &rng)

        let empty = -1
        var inputs = [Int](repeating: empty, count: t)
        var targets = [Int](repeating: Batch.ignoreIndex, count: t)
        var queryPositions = [Int](repeating: 0, count: k)
        for j in 0..<k {
            inputs[2 * j] = keys[j]
            inputs[2 * j + 1] = values[j]
            let q = 2 * k + 2 * gaps[j]
            inputs[q] = keys[j]
            targets[q] = values[j]
            queryPositions[j] = q
        }
        for i in 0..<t where inputs[i] == empty {
            inputs[i] = config.randomNonQueries ? rng.nextInt(below: v) : 0
        }
        return MQARExample(inputs: inputs, targets: targets, numKVPairs: k, queryPositions: queryPositions)
    }

    /// The examples at `indices`, stacked as a batch [indices.count, seqLen].
    public func batch(examples indices: some Collection<Int>) -> Batch {
        var inputs: [Int] = [], targets: [Int] = []
        inputs.reserveCapacity(indices.count * seqLen)
        targets.reserveCapacity(indices.count * seqLen)
        for i in indices {
            let e = example(at: i)
            inputs += e.inputs
            targets += e.targets
        }
        return Batch(inputs: inputs, targets: targets, batchSize: indices.count, length: seqLen)
    }

    /// The whole dataset in order, `batchSize` examples a batch (the last one may be smaller),
    /// at most `maxBatches` batches; each with the pairs count of every row.
    public func evaluationBatches(batchSize: Int, maxBatches: Int? = nil) -> [MQAREvaluationBatch] {
        precondition(batchSize >= 1, "MQARDataset.evaluationBatches: batchSize must be ≥ 1, got \(batchSize)")
        var out: [MQAREvaluationBatch] = []
        var start = 0
        while start < count && out.count < (maxBatches ?? Int.max) {
            let range = start..<min(start + batchSize, count)
            out.append(MQAREvaluationBatch(batch: batch(examples: range), numKVPairs: range.map(numKVPairs(ofExample:))))
            start = range.upperBound
        }
        return out
    }

    /// An endless training stream: the examples in a fresh seeded order each epoch (epoch e's
    /// order comes from the dataset seed and e alone), `batchSize` per batch, batches running on
    /// across epoch boundaries so every batch is full.
    public func trainingBatches(batchSize: Int) -> MQARBatches {
        MQARBatches(dataset: self, batchSize: batchSize)
    }

    /// The example order of training epoch `epoch` (Fisher–Yates).
    func epochOrder(_ epoch: Int) -> [Int] {
        var rng = SeededGenerator(seed: seed).derived(0x7368_7566_666C_65).derived(UInt64(epoch))  // "shuffle"
        var order = Array(0..<count)
        var i = count - 1
        while i > 0 {
            order.swapAt(i, rng.nextInt(below: i + 1))
            i -= 1
        }
        return order
    }
}

/// k distinct integers from lo ..< hi in the order drawn (a partial Fisher–Yates over a virtual
/// array, O(k) memory).
func sampleWithoutReplacement(_ k: Int, from lo: Int, to hi: Int, using rng: inout SeededGenerator) -> [Int] {
    let n = hi - lo
    precondition(k <= n, "sampleWithoutReplacement: \(k) from \(n)")
    var swapped: [Int: Int] = [:]
    var out = [Int]()
    out.reserveCapacity(k)
    for i in 0..<k {
        let j = i + rng.nextInt(below: n - i)
        let atJ = swapped[j] ?? j
        swapped[j] = swapped[i] ?? i
        out.append(lo + atJ)
    }
    return out
}

/// k distinct gap indices, each drawn from the remaining weights renormalised. The total is
/// summed once and the picked weights subtracted from it; the running sums go in index order, so
/// the same uniform number picks the same gap on every machine.
func sampleGaps(_ k: Int, weights: [Double], using rng: inout SeededGenerator) -> [Int] {
    var remaining = weights
    var total = weights.reduce(0, +)
    var out = [Int]()
    out.reserveCapacity(k)
    for _ in 0..<k {
        let u = rng.nextUniformDouble() * total
        var pick = -1
        var cumulative = 0.0
        for (g, w) in remaining.enumerated() where w > 0 {
            cumulative += w
            pick = g   // the last positive weight, should rounding put u above the final sum
            if u < cumulative { break }
        }
        total -= remaining[pick]
        remaining[pick] = 0
        out.append(pick)
    }
    return out
}

/// The training stream of an `MQARDataset` (see `MQARDataset.trainingBatches`).
public struct MQARBatches: BatchSource {
    public let dataset: MQARDataset
    public let batchSize: Int
    private var epoch = 0
    private var offset = 0
    private var batchesTaken = 0
    private var order: [Int]

    init(dataset: MQARDataset, batchSize: Int) {
        precondition(batchSize >= 1, "MQARDataset.trainingBatches: batchSize must be ≥ 1, got \(batchSize)")
        self.dataset = dataset
        self.batchSize = batchSize
        self.order = dataset.epochOrder(0)
    }

    private var identity: String { "\(dataset.identity) batch \(batchSize)" }

    public mutating func nextBatch() -> Batch {
        var indices = [Int]()
        indices.reserveCapacity(batchSize)
        while indices.count < batchSize {
            if offset == dataset.count {
                epoch += 1
                offset = 0
                order = dataset.epochOrder(epoch)
            }
            indices.append(order[offset])
            offset += 1
        }
        batchesTaken += 1
        return dataset.batch(examples: indices)
    }

    public var position: DataPosition {
        DataPosition(source: identity, batchesTaken: batchesTaken, epoch: epoch, offset: offset)
    }

    public mutating func restore(_ position: DataPosition) throws(DataError) {
        try checkSource(position, expected: identity)
        guard position.epoch >= 0, position.offset >= 0, position.offset <= dataset.count else {
            throw DataError("cannot resume: MQAR position epoch \(position.epoch), offset \(position.offset) is outside 0...\(dataset.count)")
        }
        if position.epoch != epoch { order = dataset.epochOrder(position.epoch) }
        epoch = position.epoch
        offset = position.offset
        batchesTaken = position.batchesTaken
    }
}
