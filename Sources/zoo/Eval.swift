import Foundation
import ArgumentParser
import ZooTraining
import ZooEval

struct Eval: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure quality, throughput and state memory against sequence length; write CSV, plots and a comparison.",
        discussion: """
        RUN_DIR_OR_CONFIG is a run folder (config.yaml + checkpoint.safetensors, as zoo train writes), a folder of \\
        run folders (an experiment's output, e.g. runs/default), or a config file: a config alone is measured \\
        with random weights (throughput and memory; quality needs training). Lengths and switches come from \\
        the eval: section (override with --set eval.lengths=[256,1024]). Rows go to <output>/eval.csv, one per \\
        measurement, appended as they finish: a repeated command measures only what is missing. Plots go to \\
        <output>/plots/<metric>.svg; an MQAR sweep also gets mqar_summary.csv (best learning rate, mean ± sd \\
        over seeds). Default output: <experiment folder>/eval for runs, runs/<name>/eval for a config.
        """)

    @Argument(help: ArgumentHelp("A run folder, a folder of runs, or an experiment config.", valueName: "RUN_DIR_OR_CONFIG"))
    var target: String

    @Option(help: "Folder for eval.csv, plots/ and mqar_summary.csv.")
    var output: String?

    @Option(name: .customLong("set"), help: ArgumentHelp("Override a config key, e.g. --set eval.lengths=[256,1024] (repeatable; run folders take eval.* only).", valueName: "key.path=value"))
    var overrides: [String] = []

    @Flag(help: "Discard earlier rows in eval.csv and measure everything again.")
    var fresh = false

    @OptionGroup var common: CommonOptions

    func run() throws {
        try common.apply()
        let root = FileManager.default.currentDirectoryPath
        let session = try reportingErrors {
            try EvalSession(path: target, overrides: overrides, output: output.map { URL(fileURLWithPath: $0) }, root: root,
                            environment: EvalEnvironment.current(root: root), log: writeLine)
        }
        let report = try reportingErrors { try session.run(fresh: fresh) }
        print("\n" + report.text)
    }
}
