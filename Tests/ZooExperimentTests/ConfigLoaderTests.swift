import Testing
import Foundation
import ZooExperiment
import ZooMixers

/// A config that is valid once at least one mixer is registered (uses the first registered type).
func baseYAML(extra: String = "") -> String {
    let mixer = MixerRegistry.typeNames.first ?? "attention"
    return """
    name: unit
    model:
      d_model: 32
      n_layers: 2
      mixer: \(mixer)
    data:
      task: mqar
      vocab_size: 64
      seq_len: 32
      num_kv_pairs: 4
      train_examples: 100
      test_examples: 20
    train:
      steps: 10
    \(extra)
    """
}

func configError(_ body: () throws -> Any) -> ConfigError? {
    do { _ = try body(); return nil } catch let e as ConfigError { return e } catch { return nil }
}

@Suite struct StrictDecoding {
    @Test func unknownTopLevelKeyNamesFileKeyLineAndAllowed() {
        let e = configError { try ConfigLoader.load(yaml: "modle:\n  d_model: 3\n", file: "x.yaml") }
        #expect(e?.file == "x.yaml")
        #expect(e?.keyPath == "modle")
        #expect(e?.line == 1)
        #expect(e?.message.contains("did you mean 'model'") == true)
        #expect(e?.message.contains("allowed: name, seed, model, data, train, eval, sweep") == true)
    }

    @Test func misspelledNestedKeyHasItsLine() {
        let e = configError { try ConfigLoader.load(yaml: "train:\n  steps: 3\n  batchsize: 4\n", file: "y.yaml") }
        #expect(e?.keyPath == "train.batchsize")
        #expect(e?.line == 3)
        #expect(e?.message.contains("batch_size") == true)
    }

    @Test func wrongTypeNamesTheKeyAndExpectedType() {
        let e = configError { try ConfigLoader.load(yaml: "train:\n  steps: many\n", file: "z.yaml") }
        #expect(e?.keyPath == "train.steps")
        #expect(e?.line == 2)
        #expect(e?.message.contains("an integer") == true)
    }

    @Test func outOfRangeValuesNameTheRule() {
        let e1 = configError { try ConfigLoader.load(yaml: baseYAML(), file: "r.yaml", overrides: ["train.lr=-1"]) }
        #expect(e1?.keyPath == "train.lr")
        #expect(e1?.message.contains("> 0") == true)
        let e2 = configError { try ConfigLoader.load(yaml: baseYAML(), file: "r.yaml", overrides: ["data.num_kv_pairs=20"]) }
        #expect(e2?.keyPath == "data.num_kv_pairs")
        let e3 = configError { try ConfigLoader.load(yaml: baseYAML(), file: "r.yaml", overrides: ["data.task=images"]) }
        #expect(e3?.message.contains("text or mqar") == true)
    }

    @Test func unknownMixerTypeListsTheRegisteredOnes() {
        let e = configError { try ConfigLoader.load(yaml: "model:\n  mixer: {type: transformerxl}\n", file: "m.yaml") }
        #expect(e?.keyPath == "model.mixer.type")
        #expect(e?.message.contains("unknown mixer type 'transformerxl'") == true)
        #expect(e?.message.contains(MixerRegistry.typeNames.joined(separator: ", ")) == true)
    }

    @Test func missingFileIsAClearError() {
        let e = configError { try ConfigLoader.load(path: "/nonexistent/exp.yaml") }
        #expect(e?.file == "/nonexistent/exp.yaml")
        #expect(e?.message == "no such file")
    }

    @Test func invalidYAMLIsReported() {
        let e = configError { try ConfigLoader.load(yaml: "train: [1, 2\n", file: "bad.yaml") }
        #expect(e?.message.contains("invalid YAML") == true)
    }

    @Test func overridesReachNestedKeysAndAreCheckedToo() throws {
        guard !MixerRegistry.all.isEmpty else { return }
        let c = try ConfigLoader.load(yaml: baseYAML(), overrides: ["train.steps=7", "model.d_model=64", "train.early_stop={metric: accuracy, threshold: 0.5}"])
        #expect(c.train.steps == 7 && c.model.dModel == 64)
        #expect(c.train.earlyStop == EarlyStop(metric: "accuracy", threshold: 0.5))
        let e = configError { try ConfigLoader.load(yaml: baseYAML(), overrides: ["train.stepz=7"]) }
        #expect(e?.keyPath == "train.stepz")
        let e2 = configError { try ConfigLoader.load(yaml: baseYAML(), overrides: ["train.steps"]) }
        #expect(e2?.message.contains("key.path=value") == true)
    }
}

@Suite struct Sweeps {
    @Test func gridExpandsToTheCrossProductWithStableNames() throws {
        guard !MixerRegistry.all.isEmpty else { return }
        let runs = try ConfigLoader.loadRuns(yaml: baseYAML(extra: "sweep:\n  train.lr: [0.001, 0.01]\n  seed: [1, 2, 3]\n"), file: "s.yaml")
        #expect(runs.count == 6)
        #expect(runs.map(\.name).contains("seed=2_lr=0.001"))
        #expect(Set(runs.map(\.name)).count == 6)
        #expect(runs.allSatisfy { $0.config.sweep == nil })
        #expect(runs.first { $0.name == "seed=3_lr=0.01" }?.config.train.lr == 0.01)
    }

    @Test func badSweepKeyFailsBeforeAnyRun() {
        guard !MixerRegistry.all.isEmpty else { return }
        let e = configError { try ConfigLoader.loadRuns(yaml: baseYAML(extra: "sweep:\n  train.learning_rate: [0.1]\n"), file: "s.yaml") }
        #expect(e?.keyPath.contains("train.learning_rate") == true)
        #expect(e?.message.contains("unknown key") == true)
    }

    @Test func noSweepIsOneRun() throws {
        guard !MixerRegistry.all.isEmpty else { return }
        let runs = try ConfigLoader.loadRuns(yaml: baseYAML(), file: "s.yaml")
        #expect(runs.map(\.name) == ["run"])
    }
}
