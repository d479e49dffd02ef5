import Foundation
import ArgumentParser
import ZooExperiment
import ZooTraining
import ZooTensor
import ZooEval

struct Train: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Train the model(s) of an experiment config (every point of its sweep).",
        discussion: """
        With no config, runs Experiments/default.yaml on the default corpus (prepare it once with \
        Data/prepare.sh). A config may also be a folder: all its .yaml files. Each run writes \
        <output>/<name>/<run>/: config.yaml (resolved), metrics.csv, checkpoint.safetensors and, when \
        finished, done.json. Finished runs are skipped when the command is repeated; SIGINT/SIGTERM save a \
        checkpoint and stop; --resume continues bit-exactly. With --jobs J, J runs train at once, each in its \
        own process with threads/J worker threads (log: <run>/train.log). When the config's eval.after_train \
        is true, the finished experiment is evaluated (as `zoo eval <output>/<name>`) and the comparison printed.
        """)

    @Argument(help: "Experiment YAML files or folders of them (default: Experiments/default.yaml).")
    var configs: [String] = []

    @Option(name: .customLong("set"), help: ArgumentHelp("Override a config key, e.g. --set train.steps=50 (repeatable).", valueName: "key.path=value"))
    var overrides: [String] = []

    @Option(help: "Folder for run outputs.")
    var output: String = "runs"

    @Flag(help: "Continue unfinished runs from their checkpoints.")
    var resume = false

    @Flag(help: "Delete earlier results of these runs and start over.")
    var restart = false

    @Option(name: .customLong("init"), help: ArgumentHelp("Start from the weights of a safetensors file.", valueName: "FILE.safetensors"))
    var initFrom: String?

    @Option(help: "Runs of a sweep trained at once, each in its own process with threads/jobs worker threads.")
    var jobs = 1

    @Option(name: .customLong("run"), help: ArgumentHelp("Train only this run of the sweep (its folder name; repeatable).", valueName: "name"))
    var only: [String] = []

    @Flag(help: "Do not evaluate after training, even when the config's eval.after_train asks for it.")
    var noEval = false

    @Option(help: ArgumentHelp("Stop (with a checkpoint) after this many steps in this process.", visibility: .hidden))
    var stopAfter: Int?

    @OptionGroup var common: CommonOptions

    func validate() throws {
        if resume && restart { throw ValidationError("--resume and --restart exclude each other") }
        if jobs < 1 { throw ValidationError("--jobs must be at least 1, got \(jobs)") }
        if jobs > 1 && initFrom != nil { throw ValidationError("--init starts one run from given weights; use it without --jobs") }
        if let initFrom, !FileManager.default.fileExists(atPath: initFrom) {
            throw ValidationError("--init: no such file \(initFrom)")
        }
    }

    func run() throws {
        try common.apply()
        let outputURL = URL(fileURLWithPath: output)
        let points = try reportingErrors {
            try SweepTraining.points(files: try SweepTraining.configFiles(configs.isEmpty ? ["Experiments/default.yaml"] : configs),
                                     overrides: overrides, only: only, output: outputURL)
        }
        StopSignal.install()
        let root = FileManager.default.currentDirectoryPath
        if jobs > 1 && points.count > 1 {
            try trainConcurrently(points, output: outputURL)
        } else {
            var summary: [(String, TrainingOutcome?)] = []
            for point in points {
                let outcome = try reportingErrors {
                    try ExperimentRunner.train(point.run, output: outputURL, root: root, resume: resume,
                                               restart: restart, initFrom: initFrom.map { URL(fileURLWithPath: $0) },
                                               stopAfterSteps: stopAfter)
                }
                summary.append((point.run.name, outcome))
                if outcome?.reason == .interrupted { throw ExitCode(130) }
            }
            if points.count > 1 {
                print("\n\(points.count) runs:")
                for (name, outcome) in summary {
                    let text = outcome.map { o in
                        "\(o.reason.rawValue) after \(o.steps) steps, loss \(String(format: "%.4f", o.finalLoss))"
                            + o.lastMetrics.sorted { $0.key < $1.key }.map { ", \($0.key) \(String(format: "%.4f", $0.value))" }.joined()
                    } ?? "finished earlier"
                    print("  \(name): \(text)")
                }
            }
        }
        if !noEval { try evaluateAfterTraining(points, output: outputURL, root: root) }
    }

    /// --jobs J: J child processes `zoo train FILE --run NAME --threads threads/J`, so the
    /// process-global thread pool is never shared between runs.
    func trainConcurrently(_ points: [SweepTraining.Point], output: URL) throws {
        try reportingErrors { try SweepTraining.checkUnfinished(points, output: output, resume: resume, restart: restart) }
        let threads = max(1, ZooThreads.count / jobs)
        if jobs > ZooThreads.count {
            writeLine("note: \(jobs) jobs on \(ZooThreads.count) threads: each run gets 1 thread and the cores are oversubscribed")
        }
        let pending = points.filter { restart || !ExperimentRunner.isFinished(ExperimentRunner.runDirectory($0.run, output: output)) }
        if pending.count < points.count { writeLine("\(points.count - pending.count) run(s) finished earlier, skipped") }
        writeLine("training \(pending.count) run(s), \(jobs) at a time, \(threads) thread(s) each")
        let jobsList = pending.map { p in
            SweepScheduler.Job(name: p.run.name,
                               arguments: SweepTraining.childArguments(p, overrides: overrides, output: output, threads: threads,
                                                                       resume: resume, restart: restart),
                               logFile: ExperimentRunner.runDirectory(p.run, output: output).appendingPathComponent("train.log"))
        }
        let outcomes = try reportingErrors {
            try SweepScheduler.run(executable: SweepScheduler.currentExecutable(), jobs: jobsList, concurrency: jobs,
                                   log: writeLine, stopRequested: { StopSignal.isRequested })
        }
        writeLine("\n\(points.count) runs:")
        for p in points {
            let dir = ExperimentRunner.runDirectory(p.run, output: output)
            writeLine("  \(p.run.name): \(SweepTraining.doneSummary(dir) ?? "not finished")")
        }
        let failed = zip(pending, outcomes).filter { $0.1.status != 0 }
        if StopSignal.isRequested { throw ExitCode(130) }
        if !failed.isEmpty {
            for (p, o) in failed {
                let log = ExperimentRunner.runDirectory(p.run, output: output).appendingPathComponent("train.log")
                FileHandle.standardError.write(Data("error: run \(p.run.name) exited with status \(o.status.map(String.init) ?? "?"); end of \(log.path):\n\(SweepScheduler.tail(log))\n".utf8))
            }
            throw ExitCode(1)
        }
    }

    /// Evaluates each experiment whose config sets eval.after_train, once all its runs have finished.
    func evaluateAfterTraining(_ points: [SweepTraining.Point], output: URL, root: String) throws {
        fflush(nil)   // print() is buffered, writeLine is not: keep the run summary before the evaluation
        var names: [String] = []
        for p in points where !names.contains(p.run.config.name) { names.append(p.run.config.name) }
        for name in names {
            let group = points.filter { $0.run.config.name == name }
            guard group.contains(where: { $0.run.config.eval.afterTrain }) else { continue }
            let unfinished = group.filter { !ExperimentRunner.isFinished(ExperimentRunner.runDirectory($0.run, output: output)) }
            guard unfinished.isEmpty else {
                writeLine("\(name): \(unfinished.count) run(s) not finished; evaluate later with `zoo eval \(output.appendingPathComponent(name).path)`")
                continue
            }
            writeLine("\nevaluating \(name) (eval.after_train)")
            let report = try reportingErrors {
                let session = try EvalSession(targets: try SweepTraining.evaluationTargets(group, output: output),
                                              output: output.appendingPathComponent(name).appendingPathComponent("eval"), root: root,
                                              environment: EvalEnvironment.current(root: root), log: writeLine)
                return try session.run()
            }
            writeLine("\n" + report.text)
        }
    }
}

/// Prints a library error as one clear line and exits non-zero (instead of a stack of types).
func reportingErrors<T>(_ body: () throws -> T) throws -> T {
    do { return try body() }
    catch let e as ExitCode { throw e }
    catch {
        FileHandle.standardError.write(Data("error: \(error)\n".utf8))
        throw ExitCode(2)
    }
}

struct ConfigCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "config", abstract: "Inspect experiment configs.",
                                                    subcommands: [Keys.self, Check.self])

    struct Keys: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print every config key with its meaning and default (Markdown).")
        func run() { print(ConfigReference.markdown()) }
    }

    struct Check: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Load a config strictly and list its runs, without running anything.")
        @Argument var config: String
        @Option(name: .customLong("set")) var overrides: [String] = []
        func run() throws {
            let runs = try reportingErrors { try ConfigLoader.loadRuns(path: config, overrides: overrides) }
            print("\(config): OK, \(runs.count) run(s): \(runs.map(\.name).joined(separator: ", "))")
        }
    }
}

