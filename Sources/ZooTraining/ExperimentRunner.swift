import Foundation
import Yams
import ZooTensor
import ZooAutograd
import ZooNN
import ZooMixers
import ZooModels
import ZooData
import ZooCheckpoint
import ZooExperiment

/// Runs experiments: builds the model and data of a config, trains, and keeps each run's folder
/// (`<output>/<experiment>/<run>/`: config.yaml, metrics.csv, checkpoint.safetensors, done.json).
public enum ExperimentRunner {
    /// The model a config describes, with fresh weights from the config's seed.
    public static func makeModel(_ config: ExperimentConfig) -> LanguageModel {
        let shape = ModelShape(vocabularySize: config.data.modelVocabulary, dModel: config.model.dModel,
                               mixers: config.model.layerMixers, mlp: config.model.mlpKind,
                               mlpHidden: config.model.mlpHidden, normEpsilon: Float(config.model.normEps))
        return LanguageModel(shape, seed: UInt64(config.seed))
    }

    /// The training data of a config, and the evaluation it implies.
    public enum Source {
        case text(TextBatches, validation: [Batch])
        case mqar(MQARBatches, test: [MQAREvaluationBatch])
    }

    /// Builds the data. `root` is the project root (for the default corpus under Data/).
    public static func makeData(_ config: ExperimentConfig, root: String, evalBatches: Int? = nil) throws -> Source {
        do {
            return try buildData(config, root: root, evalBatches: evalBatches ?? config.train.evalBatches)
        } catch {
            throw ConfigError(file: config.name, keyPath: error.key.map { "data.\($0)" } ?? "data", error.message)
        }
    }

    static func buildData(_ config: ExperimentConfig, root: String, evalBatches: Int) throws(DataError) -> Source {
        let d = config.data
        let batchSize = config.train.batchSize
        let seed = UInt64(config.seed)
        if d.task == "mqar" {
            let c = MQARConfig(vocabSize: d.vocabSize, seqLen: d.seqLen, numKVPairs: d.numKVPairs, powerA: d.powerA, numExamples: d.trainExamples)
            var test = c
            test.numExamples = d.testExamples
            let train = try MQARDataset(c, seed: seed, split: .train)
            let testSet = try MQARDataset(test, seed: seed, split: .test)
            return .mqar(train.trainingBatches(batchSize: batchSize), test: testSet.evaluationBatches(batchSize: batchSize))
        }
        let path = d.path == "default" ? try DefaultCorpus.path(root: root) : d.path
        let corpus = try ByteCorpus(contentsOf: path, validationFraction: d.validationFraction)
        let validation = try corpus.validationBatches(length: d.seqLen, batchSize: batchSize, maxBatches: evalBatches)
        let training = try corpus.trainingBatches(length: d.seqLen, batchSize: batchSize, seed: seed)
        return .text(training, validation: validation)
    }

    /// Validation loss and perplexity over text batches.
    public static func textMetrics(_ model: LanguageModel, _ batches: [Batch]) -> [String: Double] {
        var total = 0.0, count = 0
        for b in batches {
            let loss = withNoGrad { model.loss(b.inputs, targets: b.targets, batch: b.batchSize, length: b.length) }
            let n = b.labelledCount
            total += Double(loss.value.item) * Double(n); count += n
        }
        let mean = total / Double(max(count, 1))
        return ["val_loss": mean, "perplexity": Foundation.exp(mean)]
    }

    /// MQAR accuracy overall and by number of kv pairs (`accuracy_kv<N>`), at query positions.
    public static func mqarMetrics(_ model: LanguageModel, _ batches: [MQAREvaluationBatch]) -> [String: Double] {
        var correct = 0, total = 0
        var bySlice: [Int: (Int, Int)] = [:]
        for eb in batches {
            let b = eb.batch
            let (logits, targets, positions) = model.labelledLogits(b.inputs, targets: b.targets, batch: b.batchSize, length: b.length)
            let v = logits.shape[1]
            for (row, target) in targets.enumerated() {
                let p = logits.pointer + row * v
                var best = 0
                for j in 1..<v where p[j] > p[best] { best = j }
                let ok = best == target
                correct += ok ? 1 : 0; total += 1
                let kv = eb.numKVPairs[positions[row] / b.length]
                let s = bySlice[kv] ?? (0, 0)
                bySlice[kv] = (s.0 + (ok ? 1 : 0), s.1 + 1)
            }
        }
        var out = ["accuracy": Double(correct) / Double(max(total, 1))]
        if bySlice.count > 1 { for (kv, s) in bySlice { out["accuracy_kv\(kv)"] = Double(s.0) / Double(max(s.1, 1)) } }
        return out
    }

    public static func options(_ t: TrainConfig, task: String) -> TrainingOptions {
        let early: (String, Double)? = t.earlyStop.map { ($0.metric, $0.threshold) } ?? (task == "mqar" ? ("accuracy", 0.99) : nil)
        return TrainingOptions(steps: t.steps, peakLR: Float(t.lr), minLR: Float(t.minLR), warmup: t.warmup,
                               weightDecay: Float(t.weightDecay), beta1: Float(t.beta1), beta2: Float(t.beta2), epsilon: Float(t.eps),
                               gradClip: Float(t.gradClip), evalEvery: t.evalEvery, logEvery: t.logEvery,
                               checkpointEvery: t.checkpointEvery, earlyStop: early)
    }

    public static func runDirectory(_ run: ExperimentRun, output: URL) -> URL {
        output.appendingPathComponent(run.config.name).appendingPathComponent(run.name)
    }

    /// Whether a run has finished (its done.json exists).
    public static func isFinished(_ dir: URL) -> Bool {
        FileManager.default.fileExists(atPath: dir.appendingPathComponent("done.json").path)
    }

    /// Trains one run. A finished run is skipped (returns nil); an unfinished run with a checkpoint
    /// needs `resume` (or `restart`), so nothing is lost by accident.
    public static func train(_ run: ExperimentRun, output: URL, root: String, resume: Bool, restart: Bool = false,
                             initFrom: URL? = nil, log: @escaping (String) -> Void = writeLine,
                             stopAfterSteps: Int? = nil,
                             stopRequested: @escaping () -> Bool = { StopSignal.isRequested }) throws -> TrainingOutcome? {
        let dir = runDirectory(run, output: output)
        if isFinished(dir) && !restart {
            log("\(dir.path): finished earlier, skipped")
            return nil
        }
        let checkpoint = dir.appendingPathComponent("checkpoint.safetensors")
        let hasCheckpoint = FileManager.default.fileExists(atPath: checkpoint.path)
        if hasCheckpoint && !resume && !restart {
            throw CheckpointError(path: dir.path, "holds an unfinished run's checkpoint; pass --resume to continue it or --restart to start over")
        }
        if restart { try? FileManager.default.removeItem(at: dir) }
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        try YAMLEncoder().encode(run.config).write(to: dir.appendingPathComponent("config.yaml"), atomically: true, encoding: .utf8)

        let model = makeModel(run.config)
        if let initFrom {
            var none: AdamW? = nil
            try Checkpoint.load(from: initFrom, into: model.namedParameters(), optimizer: &none)
            log("initialised weights from \(initFrom.path)")
        }
        log("run \(dir.path): \(model.parameterCount) parameters, mixers \(run.config.model.layerMixers.map(\.typeName).joined(separator: ", "))")
        let source = try makeData(run.config, root: root)
        let opts = options(run.config.train, task: run.config.data.task)
        let outcome: TrainingOutcome
        switch source {
        case .text(var batches, let validation):
            let trainer = Trainer(model: model, options: opts, runDirectory: dir) { textMetrics($0, validation) }
            trainer.log = log; trainer.stopAfterSteps = stopAfterSteps; trainer.stopRequested = stopRequested
            outcome = try trainer.run(data: &batches, resume: resume && hasCheckpoint && !restart)
        case .mqar(var batches, let test):
            let trainer = Trainer(model: model, options: opts, runDirectory: dir) { mqarMetrics($0, test) }
            trainer.log = log; trainer.stopAfterSteps = stopAfterSteps; trainer.stopRequested = stopRequested
            outcome = try trainer.run(data: &batches, resume: resume && hasCheckpoint && !restart)
        }
        if outcome.reason != .interrupted {
            let done: [String: String] = ["reason": outcome.reason.rawValue, "steps": String(outcome.steps),
                                          "final_loss": String(outcome.finalLoss),
                                          "metrics": outcome.lastMetrics.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ";")]
            let json = try JSONSerialization.data(withJSONObject: done, options: [.sortedKeys, .prettyPrinted])
            try json.write(to: dir.appendingPathComponent("done.json"), options: .atomic)
        }
        return outcome
    }
}
