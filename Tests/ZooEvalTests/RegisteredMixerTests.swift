import Testing
import Foundation
import ZooMixers
import ZooExperiment
import ZooTraining
@testable import ZooEval

/// The evaluation path with every mixer in the registry (whatever has landed): measured state
/// bytes against the analytic figure, and a trained MQAR sweep evaluated from its run folders.
@Suite(.serialized) struct RegisteredMixerTests {
    @Test func everyRegisteredMixerMeasuresTheStateBytesItsConfigPredicts() throws {
        for name in MixerRegistry.typeNames {
            let yaml = """
            name: state-\(name)
            model: {d_model: 64, n_layers: 2, mixer: \(name), mlp: none}
            data: {task: text, seq_len: 64}
            eval: {lengths: [1, 17, 64, 200], throughput: false, quality: false, batch_size: 2}
            """
            let config = try ConfigLoader.load(yaml: yaml, file: "\(name).yaml")
            let report = try evaluate([EvalTarget(experiment: config.name, run: name, config: config)], output: temporaryDirectory())
            for l in [1, 17, 64, 200] {
                let measured = report.rows.first { $0.metric == "state_bytes" && $0.seqLen == l }?.value
                let analytic = report.rows.first { $0.metric == "state_bytes_analytic" && $0.seqLen == l }?.value
                #expect(measured != nil && measured == analytic, "\(name) T=\(l): measured \(String(describing: measured)), analytic \(String(describing: analytic))")
                #expect((report.rows.first { $0.metric == "decode_bytes_read_per_token" && $0.seqLen == l }?.value ?? 0) > 0, "\(name) T=\(l)")
            }
        }
    }

    @Test func aLengthBeyondARealMixersLimitFailsBeforeAnyMeasurement() throws {
        guard MixerRegistry.configType(named: "loglinear_mamba2") != nil else { return }
        let file = temporaryDirectory().appendingPathComponent("levels.yaml")
        try """
        name: limit
        model: {d_model: 32, n_layers: 1, mixer: {type: loglinear_mamba2, levels: 5, head_dim: 16, d_state: 8, chunk: 8}}
        data: {task: text, seq_len: 16}
        eval: {lengths: [16, 32], quality: false}
        """.write(to: file, atomically: true, encoding: .utf8)
        let out = temporaryDirectory()
        do {
            _ = try EvalSession(path: file.path, output: out, root: ".", environment: testEnvironment(), log: quiet)
            Issue.record("expected an error")
        } catch let e as EvalError {
            #expect(e.message.contains("eval length 32") && e.message.contains("at most 16") && e.message.contains("loglinear_mamba2"))
        }
        #expect(!FileManager.default.fileExists(atPath: out.appendingPathComponent("eval.csv").path))
    }

    @Test func aTrainedSweepIsEvaluatedFromItsRunFoldersAndSummarised() throws {
        guard let mixer = MixerRegistry.typeNames.contains("attention") ? "attention" : MixerRegistry.typeNames.first else { return }
        let dir = temporaryDirectory()
        let file = dir.appendingPathComponent("mqar.yaml")
        try """
        name: mqar
        model: {d_model: 32, n_layers: 1, mixer: \(mixer), mlp_hidden: 64}
        data: {task: mqar, vocab_size: 32, seq_len: 24, num_kv_pairs: 3, train_examples: 64, test_examples: 16}
        train: {steps: 4, batch_size: 4, warmup: 1, eval_every: 4, log_every: 100, early_stop: {metric: accuracy, threshold: 1.01}}
        eval: {lengths: [24, 48], throughput: false, batch_size: 1, quality_batches: 2}
        sweep: {train.lr: [0.01, 0.003], seed: [0, 1]}
        """.write(to: file, atomically: true, encoding: .utf8)
        let out = dir.appendingPathComponent("runs")
        let points = try SweepTraining.points(files: [file.path], overrides: [], output: out)
        for p in points { _ = try ExperimentRunner.train(p.run, output: out, root: ".", resume: false, log: quiet) }

        let session = try EvalSession(path: out.appendingPathComponent("mqar").path, root: ".", environment: testEnvironment(), log: quiet)
        #expect(session.output.path == out.appendingPathComponent("mqar/eval").path)
        let report = try session.run()
        #expect(Set(report.rows.map(\.run)) == Set(points.map(\.run.name)))
        for p in points {
            for l in [24, 48] {
                #expect(report.rows.contains { $0.run == p.run.name && $0.seqLen == l && $0.metric == "accuracy" && $0.value != nil })
                #expect(report.rows.contains { $0.run == p.run.name && $0.seqLen == l && $0.metric == "state_bytes" })
            }
            #expect(report.rows.contains { $0.run == p.run.name && $0.metric == "train_loss" && $0.seqLen == 24 })
        }
        #expect(report.mqar.count == 1 && report.mqar[0].seeds == 2 && [0.01, 0.003].contains(report.mqar[0].bestLR))
        #expect(report.text.contains("MQAR: best learning rate"))
        #expect(FileManager.default.fileExists(atPath: session.output.appendingPathComponent("mqar_summary.csv").path))
        #expect(FileManager.default.fileExists(atPath: session.plotsURL.appendingPathComponent("state_bytes.svg").path))
        // Repeated: everything is in the CSV already.
        let again = try EvalSession(path: out.appendingPathComponent("mqar").path, root: ".", environment: testEnvironment(), log: quiet).run()
        #expect(again.newRows.isEmpty && again.rows.count == report.rows.count)
        // One run folder on its own; its experiment's eval folder is the default output.
        let one = try EvalInputs.load(path: ExperimentRunner.runDirectory(points[0].run, output: out).path)
        #expect(one.kind == .runFolder && one.targets.count == 1 && one.defaultOutput.path == out.appendingPathComponent("mqar/eval").path)
    }
}
