import Testing
import Foundation
import ZooTensor
import ZooNN
import ZooData
import ZooExperiment
import ZooTraining
@testable import ZooEval

let quiet: @Sendable (String) -> Void = { _ in }

/// Writes a run folder for `config` as `zoo train` would (config.yaml is skipped: stand-in mixers
/// are not in the registry), with a checkpoint of the config's initial weights and a metrics.csv.
func fakeTrainedTarget(_ config: ExperimentConfig, in dir: URL, run: String = "run") throws -> EvalTarget {
    let runDir = dir.appendingPathComponent(config.name).appendingPathComponent(run)
    try FileManager.default.createDirectory(at: runDir, withIntermediateDirectories: true)
    let model = ExperimentRunner.makeModel(config)
    let checkpoint = runDir.appendingPathComponent("checkpoint.safetensors")
    try Checkpoint.save(model.namedParameters(), optimizer: AdamW(), progress: TrainingProgress(step: 3, dataPosition: DataPosition(source: "test")),
                        to: checkpoint)
    try "step,split,metric,value\n1,train,loss,3.0\n2,train,lr,0.01\n2,train,loss,2.0\n3,train,loss,1.0\n"
        .write(to: runDir.appendingPathComponent("metrics.csv"), atomically: true, encoding: .utf8)
    return EvalTarget(experiment: config.name, run: run, config: config, checkpoint: checkpoint, runDirectory: runDir)
}

func evaluate(_ targets: [EvalTarget], output: URL, environment: EvalEnvironment = testEnvironment(), fresh: Bool = false) throws -> EvalSession.Report {
    try EvalSession(targets: targets, output: output, root: ".", environment: environment, log: quiet).run(fresh: fresh)
}

let inferenceMetrics = ["prefill_tokens_per_s", "state_bytes", "state_bytes_analytic", "decode_bytes_read_per_token",
                        "decode_tokens_read_per_token", "decode_tokens_per_s", "peak_rss_bytes"]

@Suite struct EvaluatorTests {
    @Test func oneTidyRowPerMeasurementForEveryLength() throws {
        let out = temporaryDirectory()
        let config = standInConfig(lengths: [8, 16, 32])
        let report = try evaluate([EvalTarget(experiment: "standin", run: "run", config: config)], output: out)
        let text = try String(contentsOf: out.appendingPathComponent("eval.csv"), encoding: .utf8)
        #expect(text.split(separator: "\n").first.map(String.init) == EvalCSV.header)
        let rows = try EvalCSV.parse(text).rows
        #expect(rows == report.rows)
        let params = ExperimentRunner.makeModel(config).parameterCount
        for l in [8, 16, 32] {
            for metric in ["train_tokens_per_s", "train_peak_rss_bytes"] + inferenceMetrics {
                let matching = rows.filter { $0.seqLen == l && $0.metric == metric }
                #expect(matching.count == 1, "\(metric) at \(l)")
                guard let r = matching.first else { continue }
                #expect(r.value.map { $0 >= 0 && $0.isFinite } == true, "\(metric) at \(l): \(String(describing: r.value))")
                #expect(r.unit == EvalMetric.unit(metric))
                #expect(r.experiment == "standin" && r.run == "run" && r.mixer == "stand_in")
                #expect(r.dModel == 16 && r.nLayers == 2 && r.params == params && r.batch == 1)
                #expect(r.threads == ZooThreads.count && r.gitRev == "testrev" && r.timestamp == "2026-01-01T00:00:00Z")
            }
        }
        // Random weights: no quality rows.
        #expect(!rows.contains { EvalMetric.group($0.metric) == .quality || $0.metric == "train_loss" })
        #expect(report.text.contains("decode_tokens_per_s"))
        #expect(report.text.contains("state bytes: measured = analytic"))
    }

    @Test(arguments: [true, false])
    func measuredStateBytesEqualTheAnalyticFigureThroughTheEvalPath(growing: Bool) throws {
        var config = standInConfig(growing: growing, lengths: [1, 17, 64])
        config.eval.throughput = false
        config.eval.batchSize = 3
        let report = try evaluate([EvalTarget(experiment: "standin", run: "run", config: config)], output: temporaryDirectory())
        for l in [1, 17, 64] {
            let measured = report.rows.first { $0.metric == "state_bytes" && $0.seqLen == l }?.value
            let analytic = report.rows.first { $0.metric == "state_bytes_analytic" && $0.seqLen == l }?.value
            let expected = Double(2 * 4 * 3 * 16 * (growing ? l : 1))   // layers · 4 bytes · B · D · (L or 1)
            #expect(measured == expected && analytic == expected, "T=\(l): measured \(String(describing: measured)), analytic \(String(describing: analytic))")
            // The token after a context of L reads the whole state of L + 1 tokens (per sequence).
            let read = report.rows.first { $0.metric == "decode_bytes_read_per_token" && $0.seqLen == l }?.value
            #expect(read == Double(2 * 4 * 16 * (growing ? l + 1 : 1)))
            let tokens = report.rows.first { $0.metric == "decode_tokens_read_per_token" && $0.seqLen == l }?.value
            #expect(tokens == Double(growing ? l + 1 : 0))
        }
        #expect(!report.rows.contains { $0.metric.hasSuffix("tokens_per_s") })
    }

    @Test func trainedTargetsGetQualityAtEveryLengthMQAR() throws {
        var config = standInConfig(lengths: [16, 32])
        config.eval.throughput = false
        config.eval.memory = false
        let dir = temporaryDirectory()
        let target = try fakeTrainedTarget(config, in: dir)
        let report = try evaluate([target], output: dir.appendingPathComponent("eval"))
        let rows = report.rows
        #expect(rows.first { $0.metric == "train_loss" }?.value == 2.0)   // mean of the logged losses 3, 2, 1
        #expect(rows.first { $0.metric == "train_loss" }?.seqLen == 16)
        for l in [16, 32] {
            let acc = rows.first { $0.metric == "accuracy" && $0.seqLen == l }
            #expect(acc?.value.map { (0...1).contains($0) } == true)
            let kv = Evaluator.mqarKVPairs(trainingPairs: 2, trainingLength: 16, length: l, vocabSize: 32)
            if kv.count > 1 { for k in kv { #expect(rows.contains { $0.metric == "accuracy_kv\(k)" && $0.seqLen == l }) } }
            #expect(rows.first { $0.metric == "accuracy" && $0.seqLen == l }?.batch == 2)   // train.batch_size
        }
    }

    @Test func trainedTargetsGetValidationLossAndPerplexityOnText() throws {
        let dir = temporaryDirectory()
        let corpus = dir.appendingPathComponent("corpus.txt")
        try String(repeating: "the quick brown fox jumps over the lazy dog. ", count: 200).write(to: corpus, atomically: true, encoding: .utf8)
        var config = standInConfig(task: "text", lengths: [16, 64])
        config.data.path = corpus.path
        config.eval.throughput = false
        let report = try evaluate([try fakeTrainedTarget(config, in: dir)], output: dir.appendingPathComponent("eval"))
        for l in [16, 64] {
            let loss = try #require(report.rows.first { $0.metric == "val_loss" && $0.seqLen == l }?.value)
            let ppl = try #require(report.rows.first { $0.metric == "perplexity" && $0.seqLen == l }?.value)
            #expect(abs(ppl - exp(loss)) < 1e-6 * ppl)
            #expect(abs(loss - log(256.0)) < 0.5)   // near-uniform output of a freshly initialised model
        }
    }

    @Test func mqarPairsScaleWithTheLength() {
        #expect(Evaluator.mqarKVPairs(trainingPairs: 8, trainingLength: 64, length: 64, vocabSize: 8192) == [2, 4, 8])
        #expect(Evaluator.mqarKVPairs(trainingPairs: 8, trainingLength: 64, length: 256, vocabSize: 8192) == [8, 16, 32])
        #expect(Evaluator.mqarKVPairs(trainingPairs: 8, trainingLength: 64, length: 16, vocabSize: 8192) == [1, 2])
        #expect(Evaluator.mqarKVPairs(trainingPairs: 16, trainingLength: 64, length: 18, vocabSize: 8192) == [1, 2, 4])   // ≤ L/4
        #expect(Evaluator.mqarKVPairs(trainingPairs: 8, trainingLength: 64, length: 1024, vocabSize: 64) == [7, 15, 31])   // distinct keys
    }

    @Test func aRepeatedEvaluationKeepsEveryFinishedRowAndMeasuresOnlyWhatIsMissing() throws {
        let out = temporaryDirectory()
        let configs = [standInConfig(growing: true, lengths: [8, 16]), standInConfig(growing: false, lengths: [8, 16])]
        let targets = configs.enumerated().map { EvalTarget(experiment: "standin", run: "r\($0.offset)", config: $0.element) }
        let full = try evaluate(targets, output: out)
        #expect(full.newRows.count == full.rows.count && full.rows.count == 2 * 2 * 9)
        // Interrupted while writing: 12 rows reached the disk, the 13th half. Row 12 opens a group
        // (r0, T=16, inference) that may be incomplete, so it goes too: 11 rows are kept.
        let url = out.appendingPathComponent("eval.csv")
        let lines = try String(contentsOf: url, encoding: .utf8).split(separator: "\n").map(String.init)
        try (lines[0...12].joined(separator: "\n") + "\n" + lines[13].prefix(20)).write(to: url, atomically: true, encoding: .utf8)
        let kept = try EvalCSV.parse(lines[0...11].joined(separator: "\n")).rows
        #expect(kept.count == 11)
        let later = EvalEnvironment(gitRev: "testrev", threads: ZooThreads.count, now: { "later" })
        let resumed = try evaluate(targets, output: out, environment: later)
        #expect(Array(resumed.rows.prefix(kept.count)) == kept)   // earlier rows unchanged, first
        #expect(resumed.rows.count == full.rows.count)
        #expect(Set(resumed.rows.map { "\($0.run) \($0.seqLen) \($0.metric)" }).count == resumed.rows.count)   // no duplicates
        #expect(resumed.newRows.count == full.rows.count - kept.count)
        #expect(resumed.newRows.allSatisfy { $0.timestamp == "later" })
        for t in targets { for l in [8, 16] {
            #expect(resumed.rows.filter { $0.run == t.run && $0.seqLen == l && EvalMetric.group($0.metric) == .inference }.count == 7)
        } }
        // A third run has nothing to do.
        #expect(try evaluate(targets, output: out).newRows.isEmpty)
    }

    @Test func measurementsPredictedOverTheBudgetAreSkippedWithANote() throws {
        var config = standInConfig(lengths: [8, 16, 32])
        config.eval.maxSeconds = 1e-9
        let report = try evaluate([EvalTarget(experiment: "standin", run: "run", config: config)], output: temporaryDirectory())
        // The shortest length has no earlier measurement to predict from, so it is measured.
        #expect(report.rows.filter { $0.seqLen == 8 }.allSatisfy { $0.value != nil })
        let skipped = report.rows.filter { $0.seqLen > 8 && ["train_tokens_per_s", "prefill_tokens_per_s", "state_bytes"].contains($0.metric) }
        #expect(skipped.count == 6 && skipped.allSatisfy { $0.value == nil && $0.note.contains("skipped") && $0.note.contains("max_seconds") })
        #expect(report.text.contains("skip"))
        #expect(report.text.contains("eval.max_seconds"))
    }

    @Test func timePredictionFollowsTheObservedExponent() {
        var t = Evaluator.Timings()
        t.add("train", 100, 1)
        #expect(abs(t.predict("train", 200)! - pow(2, 1.5)) < 1e-9)   // one point: exponent 1.5
        t.add("train", 200, 4)
        #expect(abs(t.predict("train", 400)! - 16) < 1e-9)             // quadratic
        t.add("train", 400, 4.4)
        #expect(abs(t.predict("train", 800)! - 8.8) < 1e-9)            // flatter than linear → 1
        #expect(t.predict("prefill", 100) == nil)
    }
}

@Suite struct BadInputTests {
    @Test func aRunFolderWithoutCheckpointFailsWithAClearMessage() throws {
        let dir = temporaryDirectory().appendingPathComponent("exp/run")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        try "name: exp\n".write(to: dir.appendingPathComponent("config.yaml"), atomically: true, encoding: .utf8)
        do {
            _ = try EvalInputs.load(path: dir.path)
            Issue.record("expected an error")
        } catch let e as EvalError {
            #expect(e.message.contains("no checkpoint.safetensors") && e.message.contains(dir.path))
        }
        // The same inside a folder of runs: every run that cannot be evaluated is named, nothing measured.
        let experiment = dir.deletingLastPathComponent()
        do {
            _ = try EvalSession(path: experiment.path, root: ".", environment: testEnvironment(), log: quiet)
            Issue.record("expected an error")
        } catch let e as EvalError {
            #expect(e.message.contains("1 of 1 run folders cannot be evaluated"))
        }
        #expect(!FileManager.default.fileExists(atPath: experiment.appendingPathComponent("eval").path))
    }

    @Test func aConfigNamingAnUnknownMixerFails() throws {
        let file = temporaryDirectory().appendingPathComponent("bad.yaml")
        try "model: {mixer: no_such_mixer}\n".write(to: file, atomically: true, encoding: .utf8)
        do {
            _ = try EvalInputs.load(path: file.path)
            Issue.record("expected an error")
        } catch let e as ConfigError {
            #expect(e.message.contains("unknown mixer type 'no_such_mixer'") && e.keyPath == "model.mixer" && e.line == 1)
        }
    }

    @Test func aPathThatIsNothingFails() {
        #expect(throws: EvalError.self) { try EvalInputs.load(path: "/nonexistent/zoo/path") }
        #expect(throws: EvalError.self) { try EvalInputs.load(path: temporaryDirectory().path) }   // no run folders
    }

    @Test func aLengthTheModelCannotTakeFailsBeforeAnyMeasurement() throws {
        let out = temporaryDirectory()
        let config = standInConfig(lengths: [16, 64], maxLength: 32)
        do {
            _ = try EvalSession(targets: [EvalTarget(experiment: "standin", run: "run", config: config)], output: out, root: ".",
                                environment: testEnvironment(), log: quiet)
            Issue.record("expected an error")
        } catch let e as EvalError {
            #expect(e.message.contains("eval length 64") && e.message.contains("at most 32") && e.message.contains("stand_in"))
        }
        #expect(!FileManager.default.fileExists(atPath: out.appendingPathComponent("eval.csv").path))
    }

    @Test func qualityLengthsTheDataCannotServeFailBeforeAnyMeasurement() throws {
        let dir = temporaryDirectory()
        // MQAR: 3 tokens cannot hold a pair and its query.
        let mqar = try fakeTrainedTarget(standInConfig(lengths: [3, 16]), in: dir)
        #expect(throws: EvalError.self) { try EvalSession(targets: [mqar], output: dir, root: ".", environment: testEnvironment(), log: quiet) }
        // Text: a length longer than the validation part.
        let corpus = dir.appendingPathComponent("small.txt")
        try String(repeating: "abcdefghij", count: 50).write(to: corpus, atomically: true, encoding: .utf8)
        var config = standInConfig(name: "text", task: "text", lengths: [16, 100])
        config.data.path = corpus.path
        let text = try fakeTrainedTarget(config, in: dir)
        do {
            _ = try EvalSession(targets: [text], output: dir, root: ".", environment: testEnvironment(), log: quiet)
            Issue.record("expected an error")
        } catch let e as EvalError {
            #expect(e.message.contains("length 100") && e.message.contains("validation"))
        }
        #expect(!FileManager.default.fileExists(atPath: dir.appendingPathComponent("eval.csv").path))
    }

    @Test func aCheckpointOfAnotherModelFailsBeforeAnyMeasurement() throws {
        let dir = temporaryDirectory()
        var target = try fakeTrainedTarget(standInConfig(), in: dir)
        target.config.model.dModel = 32
        do {
            _ = try EvalSession(targets: [target], output: dir, root: ".", environment: testEnvironment(), log: quiet)
            Issue.record("expected an error")
        } catch let e as EvalError {
            #expect(e.message.contains("shape"))
        }
    }

    @Test func runFoldersTakeOnlyEvalOverrides() throws {
        let dir = temporaryDirectory()
        let target = try fakeTrainedTarget(standInConfig(), in: dir)
        #expect(throws: EvalError.self) { try EvalInputs.runFolder(target.runDirectory!, overrides: ["model.d_model=64"]) }
    }
}
