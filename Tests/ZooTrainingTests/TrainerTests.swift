import Testing
import Foundation
import ZooTensor
import ZooMixers
import ZooExperiment
import ZooTraining
import ZooCheckpoint
import ZooNN

/// A small MQAR experiment over the first registered mixer (attention when present).
func tinyExperiment(steps: Int = 12, extra: [String] = []) throws -> ExperimentRun {
    let mixer = MixerRegistry.typeNames.contains("attention") ? "attention" : (MixerRegistry.typeNames.first ?? "attention")
    let yaml = """
    name: tiny
    seed: 3
    model: {d_model: 32, n_layers: 2, mixer: \(mixer), mlp_hidden: 64}
    data: {task: mqar, vocab_size: 32, seq_len: 24, num_kv_pairs: 3, train_examples: 64, test_examples: 16}
    train: {steps: \(steps), batch_size: 4, lr: 0.01, warmup: 2, eval_every: 4, checkpoint_every: 4, log_every: 100,
            early_stop: {metric: accuracy, threshold: 1.01}}
    """
    return try ConfigLoader.loadRuns(yaml: yaml, file: "tiny.yaml", overrides: extra)[0]
}

func temporaryDirectory() -> URL {
    let url = FileManager.default.temporaryDirectory.appendingPathComponent("zoo-test-\(UUID().uuidString)")
    try? FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    return url
}

func trainLosses(_ dir: URL) throws -> [String] {
    try String(contentsOf: dir.appendingPathComponent("tiny/run/metrics.csv"), encoding: .utf8)
        .split(separator: "\n").filter { $0.contains(",train,loss,") || $0.contains(",eval,") }.map(String.init)
}

@Suite(.serialized) struct TrainingRuns {
    let quiet: (String) -> Void = { _ in }

    @Test func sameConfigGivesTheSameLossesBitForBit() throws {
        guard !MixerRegistry.all.isEmpty else { return }
        let run = try tinyExperiment(steps: 6)
        let a = temporaryDirectory(), b = temporaryDirectory()
        _ = try ExperimentRunner.train(run, output: a, root: ".", resume: false, log: quiet)
        _ = try ExperimentRunner.train(run, output: b, root: ".", resume: false, log: quiet)
        #expect(try trainLosses(a) == trainLosses(b))
        #expect(try trainLosses(a).count >= 6)
        // The checkpoints too, byte for byte (metadata included: its JSON has sorted keys).
        let checkpoint = "tiny/run/checkpoint.safetensors"
        #expect(try Data(contentsOf: a.appendingPathComponent(checkpoint)) == Data(contentsOf: b.appendingPathComponent(checkpoint)))
    }

    @Test func interruptedAndResumedRunEndsWithTheSameLossesAndWeights() throws {
        guard !MixerRegistry.all.isEmpty else { return }
        let run = try tinyExperiment(steps: 12)
        let straight = temporaryDirectory(), interrupted = temporaryDirectory()
        _ = try ExperimentRunner.train(run, output: straight, root: ".", resume: false, log: quiet)
        // Stop after 5 steps (between checkpoints: the checkpoint is written at the stop).
        let first = try ExperimentRunner.train(run, output: interrupted, root: ".", resume: false, log: quiet, stopAfterSteps: 5)
        #expect(first?.reason == .interrupted)
        #expect(!ExperimentRunner.isFinished(interrupted.appendingPathComponent("tiny/run")))
        // Without --resume an unfinished run is refused rather than overwritten.
        #expect(throws: CheckpointError.self) { try ExperimentRunner.train(run, output: interrupted, root: ".", resume: false, log: quiet) }
        let second = try ExperimentRunner.train(run, output: interrupted, root: ".", resume: true, log: quiet)
        #expect(second?.reason == .completed)
        #expect(try trainLosses(straight) == trainLosses(interrupted))
        let w1 = try SafeTensors.read(straight.appendingPathComponent("tiny/run/checkpoint.safetensors").path)
        let w2 = try SafeTensors.read(interrupted.appendingPathComponent("tiny/run/checkpoint.safetensors").path)
        #expect(w1.tensors.keys.sorted() == w2.tensors.keys.sorted())
        for (k, t) in w1.tensors { #expect(t.scalars == w2.tensors[k]!.scalars, "\(k)") }
        // A finished run is skipped when the command is repeated.
        #expect(try ExperimentRunner.train(run, output: interrupted, root: ".", resume: true, log: quiet) == nil)
    }

    @Test func stopSignalSavesACheckpointAndStops() throws {
        guard !MixerRegistry.all.isEmpty else { return }
        let dir = temporaryDirectory()
        // A stop request of its own: setting the process-wide signal flag would also stop the
        // trainings of tests running in parallel (it did: a sweep test elsewhere lost runs).
        let outcome = try ExperimentRunner.train(try tinyExperiment(), output: dir, root: ".", resume: false, log: quiet,
                                                 stopRequested: { true })
        #expect(outcome?.reason == .interrupted && outcome?.steps == 1)
        #expect(FileManager.default.fileExists(atPath: dir.appendingPathComponent("tiny/run/checkpoint.safetensors").path))
    }

    @Test func earlyStoppingAtTheThreshold() throws {
        guard !MixerRegistry.all.isEmpty else { return }
        let run = try tinyExperiment(steps: 40, extra: ["train.early_stop.threshold=0.0"])
        let outcome = try ExperimentRunner.train(run, output: temporaryDirectory(), root: ".", resume: false, log: quiet)
        #expect(outcome?.reason == .earlyStopped && outcome?.steps == 4)
    }

    @Test func nonFiniteLossStopsWithTheStepAndKeepsTheLastGoodCheckpoint() throws {
        guard !MixerRegistry.all.isEmpty else { return }
        let run = try tinyExperiment()
        let dir = temporaryDirectory()
        // Poison one weight through --init: the very first loss is NaN.
        let model = ExperimentRunner.makeModel(run.config)
        var tensors: [String: Tensor] = [:]
        for p in model.namedParameters() { tensors[p.name] = p.variable.value }
        var embedding = tensors["embedding.weight"]!
        embedding.mutablePointer()[0] = .nan
        tensors["embedding.weight"] = embedding
        let poisoned = dir.appendingPathComponent("poisoned.safetensors")
        try SafeTensors.write(tensors, metadata: [:], to: poisoned.path)
        do {
            _ = try ExperimentRunner.train(run, output: dir, root: ".", resume: false, initFrom: poisoned, log: quiet)
            Issue.record("no error")
        } catch let e as TrainingError {
            #expect(e.description.contains("at step 1"))
            #expect(e.description.contains("none written yet"))
        }
    }

    @Test func corruptCheckpointIsRefusedAndNothingIsLoaded() throws {
        guard !MixerRegistry.all.isEmpty else { return }
        let run = try tinyExperiment(steps: 4)
        let dir = temporaryDirectory()
        _ = try ExperimentRunner.train(run, output: dir, root: ".", resume: false, log: quiet)
        let file = dir.appendingPathComponent("tiny/run/checkpoint.safetensors")
        let bytes = try Data(contentsOf: file)
        let truncated = dir.appendingPathComponent("truncated.safetensors")
        try bytes.prefix(bytes.count - 100).write(to: truncated)
        let model = ExperimentRunner.makeModel(run.config)
        let before = model.namedParameters().map { $0.variable.value.scalars }
        var none: AdamW? = nil
        #expect(throws: CheckpointError.self) { try Checkpoint.load(from: truncated, into: model.namedParameters(), optimizer: &none) }
        #expect(model.namedParameters().map { $0.variable.value.scalars } == before)
        // A checkpoint of another model shape is refused by name and shape.
        let other = ExperimentRunner.makeModel(try tinyExperiment(extra: ["model.d_model=64"]).config)
        do { try Checkpoint.load(from: file, into: other.namedParameters(), optimizer: &none); Issue.record("no error") }
        catch let e as CheckpointError { #expect(e.message.contains("shape")) }
    }

    @Test func initLoadsWeights() throws {
        guard !MixerRegistry.all.isEmpty else { return }
        let run = try tinyExperiment(steps: 4)
        let dir = temporaryDirectory()
        _ = try ExperimentRunner.train(run, output: dir, root: ".", resume: false, log: quiet)
        let file = dir.appendingPathComponent("tiny/run/checkpoint.safetensors")
        let model = ExperimentRunner.makeModel(run.config)
        var none: AdamW? = nil
        try Checkpoint.load(from: file, into: model.namedParameters(), optimizer: &none)
        let saved = try SafeTensors.read(file.path)
        for p in model.namedParameters() { #expect(p.variable.value.scalars == saved.tensors[p.name]!.scalars) }
    }

    @Test func textTaskTrainsAndReportsValidationLoss() throws {
        guard !MixerRegistry.all.isEmpty else { return }
        let dir = temporaryDirectory()
        let corpus = dir.appendingPathComponent("corpus.txt")
        try String(repeating: "the quick brown fox jumps over the lazy dog. ", count: 200).write(to: corpus, atomically: true, encoding: .utf8)
        let run = try tinyExperiment(steps: 8, extra: ["data.task=text", "data.path=\(corpus.path)", "data.seq_len=32", "train.early_stop=null"])
        let outcome = try ExperimentRunner.train(run, output: dir, root: ".", resume: false, log: quiet)
        #expect(outcome?.reason == .completed)
        let first = try trainLosses(dir).first { $0.contains(",train,loss,") }.flatMap { Double($0.split(separator: ",").last!) }
        #expect(first != nil && abs(first! - Foundation.log(256)) < 0.5)   // starts near uniform over 256 bytes
        #expect((outcome?.lastMetrics["val_loss"] ?? .nan) < first!)
        #expect(outcome?.lastMetrics["perplexity"] != nil)
    }
}
