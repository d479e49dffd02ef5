import Testing
import Foundation
import ZooMixers
import ZooExperiment
import ZooTraining
@testable import ZooEval

@Suite struct SweepSchedulerTests {
    /// Each job logs its start and end times to a shared file; the overlap never exceeds the limit.
    @Test func runsAtMostConcurrencyChildrenAndReportsEachStatus() throws {
        let dir = temporaryDirectory()
        let events = dir.appendingPathComponent("events")
        var jobs: [SweepScheduler.Job] = []
        for i in 0..<5 {
            let script: String = "echo start $(date +%s%N) >> \(events.path); echo hello from \(i); sleep 0.3; "
                + "echo end $(date +%s%N) >> \(events.path); exit \(i == 3 ? 3 : 0)"
            jobs.append(SweepScheduler.Job(name: "job\(i)", arguments: ["-c", script], logFile: dir.appendingPathComponent("job\(i)/train.log")))
        }
        var lines: [String] = []
        let outcomes = try SweepScheduler.run(executable: URL(fileURLWithPath: "/bin/sh"), jobs: jobs, concurrency: 2, log: { lines.append($0) })
        #expect(outcomes.map(\.status) == [0, 0, 0, 3, 0])
        #expect(try String(contentsOf: jobs[4].logFile, encoding: .utf8).contains("hello from 4"))
        var marks: [(time: Int, change: Int)] = []
        for line in try String(contentsOf: events, encoding: .utf8).split(separator: "\n") {
            let f = line.split(separator: " ")
            marks.append((time: Int(f[1]) ?? 0, change: f[0] == "start" ? 1 : -1))
        }
        marks.sort { $0.time < $1.time || ($0.time == $1.time && $0.change < $1.change) }
        var now = 0, most = 0
        for m in marks { now += m.change; most = max(most, now) }
        #expect(most == 2)
        #expect(lines.contains { $0.contains("job3: exit status 3") })
    }

    @Test func aStopStartsNothingNewAndStopsTheRunningChildren() throws {
        let dir = temporaryDirectory()
        let jobs = (0..<3).map { i in
            SweepScheduler.Job(name: "job\(i)", arguments: ["-c", "exec sleep 5"], logFile: dir.appendingPathComponent("job\(i).log"))
        }
        var calls = 0
        let started = Date()
        let outcomes = try SweepScheduler.run(executable: URL(fileURLWithPath: "/bin/sh"), jobs: jobs, concurrency: 1, log: { _ in },
                                              stopRequested: { calls += 1; return calls > 1 })
        #expect(Date().timeIntervalSince(started) < 4)
        #expect(outcomes[0].status != nil && outcomes[0].status != 0)
        #expect(outcomes[1].status == nil && outcomes[2].status == nil)
    }
}

@Suite struct SweepTrainingTests {
    @Test func aFolderMeansItsYAMLFilesInNameOrder() throws {
        let dir = temporaryDirectory()
        for name in ["t256.yaml", "t64.yml", "notes.txt"] { try "".write(to: dir.appendingPathComponent(name), atomically: true, encoding: .utf8) }
        let files = try SweepTraining.configFiles([dir.path])
        #expect(files.map { URL(fileURLWithPath: $0).lastPathComponent } == ["t256.yaml", "t64.yml"])
        #expect(throws: ConfigError.self) { try SweepTraining.configFiles([dir.appendingPathComponent("missing.yaml").path]) }
        #expect(throws: ConfigError.self) { try SweepTraining.configFiles([temporaryDirectory().path]) }
    }

    @Test func pointsChildArgumentsAndUnfinishedRuns() throws {
        guard let mixer = MixerRegistry.typeNames.first else { return }
        let dir = temporaryDirectory()
        let file = dir.appendingPathComponent("sweep.yaml")
        try """
        name: grid
        model: {d_model: 32, n_layers: 1, mixer: \(mixer)}
        data: {task: mqar, vocab_size: 32, seq_len: 16, num_kv_pairs: 2}
        sweep: {train.lr: [0.01, 0.001], seed: [0, 1]}
        """.write(to: file, atomically: true, encoding: .utf8)
        let out = dir.appendingPathComponent("runs")
        let points = try SweepTraining.points(files: [file.path], overrides: ["train.steps=3"], output: out)
        #expect(points.count == 4)
        let only = try SweepTraining.points(files: [file.path], overrides: [], only: [points[1].run.name], output: out)
        #expect(only.map(\.run.name) == [points[1].run.name])
        #expect(throws: EvalError.self) { try SweepTraining.points(files: [file.path], overrides: [], only: ["nope"], output: out) }
        #expect(throws: EvalError.self) { try SweepTraining.points(files: [file.path, file.path], overrides: [], output: out) }
        let args = SweepTraining.childArguments(points[0], overrides: ["train.steps=3"], output: out, threads: 1, resume: true, restart: false)
        #expect(args == ["train", file.path, "--set", "train.steps=3", "--run", points[0].run.name, "--threads", "1", "--output", out.path,
                         "--no-eval", "--resume"])
        // A run with a checkpoint but no done.json blocks a plain repeat; --resume lets it continue.
        let runDir = ExperimentRunner.runDirectory(points[2].run, output: out)
        try FileManager.default.createDirectory(at: runDir, withIntermediateDirectories: true)
        try Data().write(to: runDir.appendingPathComponent("checkpoint.safetensors"))
        #expect(throws: EvalError.self) { try SweepTraining.checkUnfinished(points, output: out, resume: false, restart: false) }
        try SweepTraining.checkUnfinished(points, output: out, resume: true, restart: false)
    }
}
