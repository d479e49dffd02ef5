import Foundation

/// One `zoo eval` (or the evaluation at the end of `zoo train`): finds the targets, checks them
/// all, measures what is missing from `<output>/eval.csv`, then writes the plots
/// (`<output>/plots/*.svg`), the MQAR sweep summary when there is one (`mqar_summary.csv`), and
/// returns the comparison to print.
public final class EvalSession {
    public let targets: [EvalTarget]
    public let output: URL
    public let evaluator: Evaluator

    public var csvURL: URL { output.appendingPathComponent("eval.csv") }
    public var plotsURL: URL { output.appendingPathComponent("plots") }

    /// Checks every target (see `Evaluator.validate`): nothing is measured when this throws.
    public init(targets: [EvalTarget], output: URL, root: String, environment: EvalEnvironment,
                log: @escaping (String) -> Void = { print($0) }) throws {
        self.targets = targets
        self.output = output
        evaluator = Evaluator(targets: targets, root: root, environment: environment, log: log)
        try evaluator.validate()
    }

    /// From a path as `zoo eval` takes it (config file, run folder, folder of runs).
    public convenience init(path: String, overrides: [String] = [], output: URL? = nil, root: String,
                            environment: EvalEnvironment, log: @escaping (String) -> Void = { print($0) }) throws {
        let found = try EvalInputs.load(path: path, overrides: overrides)
        try self.init(targets: found.targets, output: output ?? found.defaultOutput, root: root, environment: environment, log: log)
    }

    public struct Report {
        /// Every row of these targets in the CSV (earlier ones included).
        public let rows: [EvalRow]
        /// Rows measured by this call.
        public let newRows: [EvalRow]
        public let plots: [URL]
        public let mqar: [MQARSweepSummary.Row]
        /// The comparison tables (and the MQAR summary), ready to print.
        public let text: String
    }

    /// Measures, writes plots and summaries. `fresh` discards earlier rows in eval.csv.
    public func run(fresh: Bool = false) throws -> Report {
        let csv = try EvalCSVFile(url: csvURL, fresh: fresh)
        let newRows = try evaluator.run(into: csv)
        let ids = Set(targets.map { "\($0.experiment)/\($0.run)" })
        let rows = csv.rows.filter { ids.contains("\($0.experiment)/\($0.run)") }
        var plots = try EvalPlots.write(rows, to: plotsURL)
        var text = [EvalSummary.render(rows)]

        let results = MQARSweepSummary.results(targets)
        var mqar: [MQARSweepSummary.Row] = []
        if results.count >= 2 {
            mqar = MQARSweepSummary.aggregate(results)
            text.append("")
            text.append(MQARSweepSummary.render(mqar))
            try MQARSweepSummary.csv(mqar).write(to: output.appendingPathComponent("mqar_summary.csv"), atomically: true, encoding: .utf8)
            if let plot = MQARSweepSummary.plot(mqar) {
                let url = plotsURL.appendingPathComponent("mqar_accuracy.svg")
                try plot.svg().write(to: url, atomically: true, encoding: .utf8)
                plots.append(url)
            }
        }
        text.append("")
        text.append("rows: \(csvURL.path) (\(newRows.count) new, \(rows.count) in all)")
        if !plots.isEmpty { text.append("plots: \(plotsURL.path)/ (\(plots.map(\.lastPathComponent).joined(separator: ", ")))") }
        return Report(rows: rows, newRows: newRows, plots: plots, mqar: mqar, text: text.joined(separator: "\n"))
    }
}
