import Foundation
import ArgumentParser
import ZooExperiment
import ZooTraining

struct Train: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Train the model(s) of an experiment config (every point of its sweep).",
        discussion: """
        With no config, runs Experiments/default.yaml on the default corpus (prepare it once with \
        Data/prepare.sh). Each run writes <output>/<name>/<run>/: config.yaml (resolved), metrics.csv, \
        checkpoint.safetensors and, when finished, done.json. Finished runs are skipped when the command \
        is repeated; SIGINT/SIGTERM save a checkpoint and stop; --resume continues bit-exactly.
        """)

    @Argument(help: "Experiment YAML (default: Experiments/default.yaml).")
    var config: String = "Experiments/default.yaml"

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

    @Option(help: ArgumentHelp("Stop (with a checkpoint) after this many steps in this process.", visibility: .hidden))
    var stopAfter: Int?

    @OptionGroup var common: CommonOptions

    func validate() throws {
        if resume && restart { throw ValidationError("--resume and --restart exclude each other") }
        if let initFrom, !FileManager.default.fileExists(atPath: initFrom) {
            throw ValidationError("--init: no such file \(initFrom)")
        }
    }

    func run() throws {
        try common.apply()
        let runs = try reportingErrors { try ConfigLoader.loadRuns(path: config, overrides: overrides) }
        StopSignal.install()
        let root = FileManager.default.currentDirectoryPath
        var summary: [(String, TrainingOutcome?)] = []
        for run in runs {
            let outcome = try reportingErrors {
                try ExperimentRunner.train(run, output: URL(fileURLWithPath: output), root: root, resume: resume,
                                           restart: restart, initFrom: initFrom.map { URL(fileURLWithPath: $0) },
                                           stopAfterSteps: stopAfter)
            }
            summary.append((run.name, outcome))
            if outcome?.reason == .interrupted { throw ExitCode(130) }
        }
        if runs.count > 1 {
            print("\n\(runs.count) runs:")
            for (name, outcome) in summary {
                let text = outcome.map { o in
                    "\(o.reason.rawValue) after \(o.steps) steps, loss \(String(format: "%.4f", o.finalLoss))"
                        + o.lastMetrics.sorted { $0.key < $1.key }.map { ", \($0.key) \(String(format: "%.4f", $0.value))" }.joined()
                } ?? "finished earlier"
                print("  \(name): \(text)")
            }
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

