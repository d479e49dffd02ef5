import Foundation
import ZooNN
import ZooMixers

/// One experiment: what to build (`model`), what to learn from (`data`), how (`train`), what to
/// measure afterwards (`eval`) and, optionally, a grid of variations (`sweep`).
///
/// Every key has a default, so a config names only what it changes. Keys, types and ranges are
/// documented in `keyReference` (printed by `zoo config keys` and copied into the README).
public struct ExperimentConfig: Codable, Sendable {
    public var name: String = "experiment"
    public var seed: Int = 0
    public var model = ModelConfig()
    public var data = DataConfig()
    public var train = TrainConfig()
    public var eval = EvalConfig()
    /// Dotted key path → list of values; the grid's cross product expands into runs.
    public var sweep: [String: [SweepValue]]? = nil

    public init() {}

    enum CodingKeys: String, CodingKey, CaseIterable { case name, seed, model, data, train, eval, sweep }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        name = try c.decodeIfPresent(String.self, forKey: .name) ?? name
        seed = try c.decodeIfPresent(Int.self, forKey: .seed) ?? seed
        model = try c.decodeIfPresent(ModelConfig.self, forKey: .model) ?? model
        data = try c.decodeIfPresent(DataConfig.self, forKey: .data) ?? data
        train = try c.decodeIfPresent(TrainConfig.self, forKey: .train) ?? train
        eval = try c.decodeIfPresent(EvalConfig.self, forKey: .eval) ?? eval
        sweep = try c.decodeIfPresent([String: [SweepValue]].self, forKey: .sweep)
    }

    public static let keyReference: [(key: String, description: String)] = [
        ("name", "experiment name, used in output folders and CSV rows (default \"experiment\")"),
        ("seed", "seed of weights and data order (default 0)"),
        ("model", "the model (see model.*)"),
        ("data", "the task (see data.*)"),
        ("train", "the training run (see train.*)"),
        ("eval", "measurements after training (see eval.*)"),
        ("sweep", "map of dotted key → list of values; runs the cross product, one folder per run"),
    ]
}

/// A scalar in a sweep grid (number, string or bool), kept as YAML text so it can be applied as
/// an override.
public struct SweepValue: Codable, Sendable, Equatable, CustomStringConvertible {
    public let text: String
    public init(_ text: String) { self.text = text }
    public init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if let i = try? c.decode(Int.self) { text = String(i) }
        else if let d = try? c.decode(Double.self) { text = String(d) }
        else if let b = try? c.decode(Bool.self) { text = String(b) }
        else { text = try c.decode(String.self) }
    }
    public func encode(to encoder: Encoder) throws { var c = encoder.singleValueContainer(); try c.encode(text) }
    public var description: String { text }
}

public struct ModelConfig: Codable, Sendable {
    public var dModel: Int = 128
    public var nLayers: Int = 2
    /// One mixer for every layer, or a list repeated to fill `n_layers` (hybrids).
    public var mixer: [AnyMixerConfig] = []
    public var mlp: String = "swiglu"
    public var mlpHidden: Int? = nil
    public var normEps: Double = 1e-5

    public init() {}

    enum CodingKeys: String, CodingKey, CaseIterable {
        case dModel = "d_model", nLayers = "n_layers", mixer, mlp, mlpHidden = "mlp_hidden", normEps = "norm_eps"
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        dModel = try c.decodeIfPresent(Int.self, forKey: .dModel) ?? dModel
        nLayers = try c.decodeIfPresent(Int.self, forKey: .nLayers) ?? nLayers
        mlp = try c.decodeIfPresent(String.self, forKey: .mlp) ?? mlp
        mlpHidden = try c.decodeIfPresent(Int.self, forKey: .mlpHidden)
        normEps = try c.decodeIfPresent(Double.self, forKey: .normEps) ?? normEps
        // A list (hybrid stack) or one mixer; the key check has already vetted the shape.
        if (try? c.nestedUnkeyedContainer(forKey: .mixer)) != nil {
            mixer = try c.decode([AnyMixerConfig].self, forKey: .mixer)
        } else if let one = try c.decodeIfPresent(AnyMixerConfig.self, forKey: .mixer) {
            mixer = [one]
        }
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(dModel, forKey: .dModel); try c.encode(nLayers, forKey: .nLayers)
        try c.encode(mixer, forKey: .mixer); try c.encode(mlp, forKey: .mlp)
        try c.encodeIfPresent(mlpHidden, forKey: .mlpHidden); try c.encode(normEps, forKey: .normEps)
    }

    /// The mixer of each layer (the list repeated to `n_layers`).
    public var layerMixers: [AnyMixerConfig] { (0..<nLayers).map { mixer[$0 % mixer.count] } }

    public var mlpKind: MLP.Kind? { mlp == "none" ? nil : MLP.Kind(rawValue: mlp) }

    public static let keyReference: [(key: String, description: String)] = [
        ("d_model", "model width D (default 128)"),
        ("n_layers", "number of blocks (default 2)"),
        ("mixer", "a mixer {type: NAME, …keys}, a type name alone, or a list of them repeated over the layers (hybrids); required"),
        ("mlp", "MLP after each mixer: swiglu, gelu or none (default swiglu)"),
        ("mlp_hidden", "MLP hidden width (default 4·d_model)"),
        ("norm_eps", "RMSNorm epsilon (default 1e-5)"),
    ]
}

public struct DataConfig: Codable, Sendable {
    /// `text` (byte-level language modelling) or `mqar` (multi-query associative recall).
    public var task: String = "text"
    public var seqLen: Int = 256
    // text
    public var path: String = "default"
    public var validationFraction: Double = 0.1
    // mqar
    public var vocabSize: Int = 8192
    public var numKVPairs: Int = 8
    public var powerA: Double = 0.01
    public var trainExamples: Int = 20_000
    public var testExamples: Int = 1_000

    public init() {}

    enum CodingKeys: String, CodingKey, CaseIterable {
        case task, seqLen = "seq_len", path, validationFraction = "validation_fraction", vocabSize = "vocab_size",
             numKVPairs = "num_kv_pairs", powerA = "power_a", trainExamples = "train_examples", testExamples = "test_examples"
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        task = try c.decodeIfPresent(String.self, forKey: .task) ?? task
        seqLen = try c.decodeIfPresent(Int.self, forKey: .seqLen) ?? seqLen
        path = try c.decodeIfPresent(String.self, forKey: .path) ?? path
        validationFraction = try c.decodeIfPresent(Double.self, forKey: .validationFraction) ?? validationFraction
        vocabSize = try c.decodeIfPresent(Int.self, forKey: .vocabSize) ?? vocabSize
        numKVPairs = try c.decodeIfPresent(Int.self, forKey: .numKVPairs) ?? numKVPairs
        powerA = try c.decodeIfPresent(Double.self, forKey: .powerA) ?? powerA
        trainExamples = try c.decodeIfPresent(Int.self, forKey: .trainExamples) ?? trainExamples
        testExamples = try c.decodeIfPresent(Int.self, forKey: .testExamples) ?? testExamples
    }

    /// Vocabulary of the model this data needs.
    public var modelVocabulary: Int { task == "mqar" ? vocabSize : 256 }

    public static let keyReference: [(key: String, description: String)] = [
        ("task", "text or mqar (default text)"),
        ("seq_len", "training sequence length T (default 256)"),
        ("path", "text: a UTF-8/bytes file, or `default` for the prepared corpus (Data/prepare.sh) (default default)"),
        ("validation_fraction", "text: share of the file held out for validation, in (0, 0.5] (default 0.1)"),
        ("vocab_size", "mqar: vocabulary V; keys from [1, V/2), values from [V/2, V) (default 8192)"),
        ("num_kv_pairs", "mqar: key-value pairs per example (default 8)"),
        ("power_a", "mqar: query gaps drawn with p(i) ∝ i^(a−1) (default 0.01)"),
        ("train_examples", "mqar: training examples (default 20000)"),
        ("test_examples", "mqar: test examples, from a separate seed (default 1000)"),
    ]
}

public struct EarlyStop: Codable, Sendable, Equatable {
    public var metric: String = "accuracy"
    public var threshold: Double = 0.99
    public init(metric: String = "accuracy", threshold: Double = 0.99) { self.metric = metric; self.threshold = threshold }
    enum CodingKeys: String, CodingKey, CaseIterable { case metric, threshold }
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        metric = try c.decodeIfPresent(String.self, forKey: .metric) ?? metric
        threshold = try c.decodeIfPresent(Double.self, forKey: .threshold) ?? threshold
    }
    public static let keyReference: [(key: String, description: String)] = [
        ("metric", "accuracy (MQAR, stop when ≥ threshold) or val_loss (stop when ≤ threshold) (default accuracy)"),
        ("threshold", "the value that stops training (default 0.99)"),
    ]
}

public struct TrainConfig: Codable, Sendable {
    public var steps: Int = 200
    public var batchSize: Int = 8
    public var lr: Double = 3e-3
    public var minLR: Double = 3e-4
    public var warmup: Int = 20
    public var weightDecay: Double = 0.1
    public var beta1: Double = 0.9
    public var beta2: Double = 0.95
    public var eps: Double = 1e-8
    public var gradClip: Double = 1.0
    public var evalEvery: Int = 50
    public var evalBatches: Int = 4
    public var logEvery: Int = 10
    public var checkpointEvery: Int = 100
    /// Stop early when the metric reaches the threshold; defaults to MQAR accuracy ≥ 0.99 for MQAR.
    public var earlyStop: EarlyStop? = nil

    public init() {}

    enum CodingKeys: String, CodingKey, CaseIterable {
        case steps, batchSize = "batch_size", lr, minLR = "min_lr", warmup, weightDecay = "weight_decay", beta1, beta2, eps,
             gradClip = "grad_clip", evalEvery = "eval_every", evalBatches = "eval_batches", logEvery = "log_every",
             checkpointEvery = "checkpoint_every", earlyStop = "early_stop"
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        steps = try c.decodeIfPresent(Int.self, forKey: .steps) ?? steps
        batchSize = try c.decodeIfPresent(Int.self, forKey: .batchSize) ?? batchSize
        lr = try c.decodeIfPresent(Double.self, forKey: .lr) ?? lr
        minLR = try c.decodeIfPresent(Double.self, forKey: .minLR) ?? minLR
        warmup = try c.decodeIfPresent(Int.self, forKey: .warmup) ?? warmup
        weightDecay = try c.decodeIfPresent(Double.self, forKey: .weightDecay) ?? weightDecay
        beta1 = try c.decodeIfPresent(Double.self, forKey: .beta1) ?? beta1
        beta2 = try c.decodeIfPresent(Double.self, forKey: .beta2) ?? beta2
        eps = try c.decodeIfPresent(Double.self, forKey: .eps) ?? eps
        gradClip = try c.decodeIfPresent(Double.self, forKey: .gradClip) ?? gradClip
        evalEvery = try c.decodeIfPresent(Int.self, forKey: .evalEvery) ?? evalEvery
        evalBatches = try c.decodeIfPresent(Int.self, forKey: .evalBatches) ?? evalBatches
        logEvery = try c.decodeIfPresent(Int.self, forKey: .logEvery) ?? logEvery
        checkpointEvery = try c.decodeIfPresent(Int.self, forKey: .checkpointEvery) ?? checkpointEvery
        earlyStop = try c.decodeIfPresent(EarlyStop.self, forKey: .earlyStop)
    }

    public static let keyReference: [(key: String, description: String)] = [
        ("steps", "optimizer steps (default 200)"),
        ("batch_size", "sequences per step (default 8)"),
        ("lr", "peak learning rate (default 3e-3)"),
        ("min_lr", "learning rate at the end of the cosine decay (default 3e-4)"),
        ("warmup", "linear warm-up steps (default 20)"),
        ("weight_decay", "AdamW decoupled weight decay; norms, biases, A_log and D are excluded (default 0.1)"),
        ("beta1", "AdamW β₁ (default 0.9)"), ("beta2", "AdamW β₂ (default 0.95)"), ("eps", "AdamW ε (default 1e-8)"),
        ("grad_clip", "global gradient-norm clip, 0 disables (default 1.0)"),
        ("eval_every", "steps between evaluations (default 50)"),
        ("eval_batches", "validation batches per evaluation (default 4)"),
        ("log_every", "steps between log lines when not on a terminal (default 10)"),
        ("checkpoint_every", "steps between checkpoints (default 100; one is also written at the end)"),
        ("early_stop", "{metric, threshold}; default for mqar: accuracy ≥ 0.99, none for text"),
    ]
}

/// What `zoo eval` measures (see README).
public struct EvalConfig: Codable, Sendable {
    /// Sequence lengths for quality (validation loss / perplexity, MQAR accuracy) and throughput.
    public var lengths: [Int] = []
    /// Measure throughput (training, prefill, decode) at each length.
    public var throughput: Bool = true
    /// Measure decode-state memory at each length.
    public var memory: Bool = true
    /// Measure quality (needs a trained model or trains first).
    public var quality: Bool = true
    public var batchSize: Int = 1
    public var decodeTokens: Int = 32
    public var qualityBatches: Int = 4
    /// `zoo train` evaluates the experiment and prints the comparison once every run has finished.
    public var afterTrain: Bool = false
    /// A measurement predicted (from the same model's shorter lengths) to take longer than this is
    /// skipped and says so, so long-length sweeps stay within a time budget.
    public var maxSeconds: Double = 60

    public init() {}
    enum CodingKeys: String, CodingKey, CaseIterable {
        case lengths, throughput, memory, quality, batchSize = "batch_size", decodeTokens = "decode_tokens", qualityBatches = "quality_batches"
        case afterTrain = "after_train", maxSeconds = "max_seconds"
    }
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        lengths = try c.decodeIfPresent([Int].self, forKey: .lengths) ?? lengths
        throughput = try c.decodeIfPresent(Bool.self, forKey: .throughput) ?? throughput
        memory = try c.decodeIfPresent(Bool.self, forKey: .memory) ?? memory
        quality = try c.decodeIfPresent(Bool.self, forKey: .quality) ?? quality
        batchSize = try c.decodeIfPresent(Int.self, forKey: .batchSize) ?? batchSize
        decodeTokens = try c.decodeIfPresent(Int.self, forKey: .decodeTokens) ?? decodeTokens
        qualityBatches = try c.decodeIfPresent(Int.self, forKey: .qualityBatches) ?? qualityBatches
        afterTrain = try c.decodeIfPresent(Bool.self, forKey: .afterTrain) ?? afterTrain
        maxSeconds = try c.decodeIfPresent(Double.self, forKey: .maxSeconds) ?? maxSeconds
    }
    public static let keyReference: [(key: String, description: String)] = [
        ("lengths", "sequence lengths to measure (default: the training seq_len and 2× and 4× it)"),
        ("throughput", "measure training (forward + backward), prefill and decode tokens/s (default true)"),
        ("memory", "measure decode-state bytes (measured and analytic), bytes read per decoded token and peak RSS (default true)"),
        ("quality", "measure validation loss / perplexity or MQAR accuracy; needs trained weights (default true)"),
        ("batch_size", "batch for throughput and memory measurements (default 1)"),
        ("decode_tokens", "tokens decoded one at a time per decode measurement (default 32)"),
        ("quality_batches", "validation batches (of train.batch_size sequences) per length (default 4)"),
        ("after_train", "`zoo train` evaluates the experiment and prints the comparison when all its runs have finished (default false)"),
        ("max_seconds", "skip a measurement predicted to take longer than this, from the same model's shorter lengths (default 60)"),
    ]
}
