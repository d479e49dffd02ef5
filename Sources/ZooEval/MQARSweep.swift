import Foundation

/// The zoology-style summary of an MQAR sweep: for each (mixer, d_model, seq_len), the learning
/// rate with the best mean accuracy over seeds, and that accuracy as mean ± standard deviation
/// over the seeds.
public enum MQARSweepSummary {
    /// One trained run's final test accuracy (nil: the run has not finished).
    public struct RunResult: Sendable, Equatable {
        public var mixer: String
        public var dModel: Int
        public var seqLen: Int
        public var numKVPairs: Int
        public var lr: Double
        public var seed: Int
        public var accuracy: Double?
        public init(mixer: String, dModel: Int, seqLen: Int, numKVPairs: Int, lr: Double, seed: Int, accuracy: Double?) {
            self.mixer = mixer; self.dModel = dModel; self.seqLen = seqLen; self.numKVPairs = numKVPairs
            self.lr = lr; self.seed = seed; self.accuracy = accuracy
        }
    }

    public struct Row: Sendable, Equatable {
        public var mixer: String
        public var dModel: Int
        public var seqLen: Int
        public var numKVPairs: Int
        public var bestLR: Double
        /// Mean and sample standard deviation (n − 1; 0 for one seed) over seeds at the best lr.
        public var mean: Double
        public var sd: Double
        public var seeds: Int
        /// Mean accuracy of every learning rate tried (finished runs only).
        public var meanByLR: [Double: Double]
        /// Runs of this group that have not finished.
        public var unfinished: Int
    }

    public static func aggregate(_ results: [RunResult]) -> [Row] {
        struct Key: Hashable { let mixer: String; let d: Int; let t: Int; let kv: Int }
        let groups = Dictionary(grouping: results) { Key(mixer: $0.mixer, d: $0.dModel, t: $0.seqLen, kv: $0.numKVPairs) }
        var rows: [Row] = []
        for (k, runs) in groups {
            let finished = runs.filter { $0.accuracy != nil }
            let byLR = Dictionary(grouping: finished, by: \.lr)
            var means: [Double: Double] = [:]
            for (lr, rs) in byLR { means[lr] = rs.map { $0.accuracy! }.reduce(0, +) / Double(rs.count) }
            // Best mean; ties go to the smaller learning rate (the more conservative choice).
            guard let best = means.max(by: { $0.value < $1.value || ($0.value == $1.value && $0.key > $1.key) }) else {
                rows.append(Row(mixer: k.mixer, dModel: k.d, seqLen: k.t, numKVPairs: k.kv, bestLR: .nan, mean: .nan, sd: .nan,
                                seeds: 0, meanByLR: [:], unfinished: runs.count))
                continue
            }
            let accs = byLR[best.key]!.map { $0.accuracy! }
            let sd = accs.count > 1
                ? (accs.map { ($0 - best.value) * ($0 - best.value) }.reduce(0, +) / Double(accs.count - 1)).squareRoot() : 0
            rows.append(Row(mixer: k.mixer, dModel: k.d, seqLen: k.t, numKVPairs: k.kv, bestLR: best.key, mean: best.value, sd: sd,
                            seeds: accs.count, meanByLR: means, unfinished: runs.count - finished.count))
        }
        return rows.sorted { ($0.mixer, $0.dModel, $0.seqLen, $0.numKVPairs) < ($1.mixer, $1.dModel, $1.seqLen, $1.numKVPairs) }
    }

    public static func render(_ rows: [Row]) -> String {
        let lrs = Array(Set(rows.flatMap { $0.meanByLR.keys })).sorted()
        var table = TextTable(["mixer", "d_model", "T", "kv", "best lr", "accuracy (mean ± sd)", "seeds"] + lrs.map { "lr \(formatLR($0))" })
        for r in rows {
            table.add([r.mixer, String(r.dModel), String(r.seqLen), String(r.numKVPairs),
                       r.seeds > 0 ? formatLR(r.bestLR) : "–",
                       r.seeds > 0 ? String(format: "%.3f ± %.3f", r.mean, r.sd) : "–",
                       String(r.seeds) + (r.unfinished > 0 ? " (+\(r.unfinished) unfinished)" : "")]
                      + lrs.map { r.meanByLR[$0].map { String(format: "%.3f", $0) } ?? "" })
        }
        return "MQAR: best learning rate per (mixer, d_model, T), accuracy mean ± sd over seeds at that rate; "
            + "columns lr …: mean accuracy of each rate\n" + table.render()
    }

    public static func csv(_ rows: [Row]) -> String {
        var lines = ["mixer,d_model,seq_len,num_kv_pairs,best_lr,accuracy_mean,accuracy_sd,seeds,unfinished"]
        for r in rows {
            lines.append("\(r.mixer),\(r.dModel),\(r.seqLen),\(r.numKVPairs),\(r.bestLR),\(r.mean),\(r.sd),\(r.seeds),\(r.unfinished)")
        }
        return lines.joined(separator: "\n") + "\n"
    }

    /// Best-learning-rate accuracy against T, one line per (mixer, d_model).
    public static func plot(_ rows: [Row]) -> LinePlot? {
        let groups = Dictionary(grouping: rows.filter { $0.seeds > 0 }) { "\($0.mixer) d=\($0.dModel)" }
        guard groups.values.contains(where: { Set($0.map(\.seqLen)).count >= 2 }) else { return nil }
        let series = groups.keys.sorted().map { label in
            LinePlot.Series(label: label, points: groups[label]!.sorted { $0.seqLen < $1.seqLen }.map { (x: Double($0.seqLen), y: $0.mean) })
        }
        return LinePlot(title: "MQAR accuracy (best lr, mean over seeds) vs sequence length", xLabel: "sequence length T (tokens, log scale)",
                        yLabel: "accuracy (fraction)", yUnit: "fraction", series: series, logY: false)
    }

    static func formatLR(_ lr: Double) -> String { String(format: "%g", lr) }

    /// Reads a finished run's final `accuracy` from its done.json (`metrics: "accuracy=…;…"`).
    public static func finalAccuracy(runDirectory: URL) -> Double? {
        guard let data = try? Data(contentsOf: runDirectory.appendingPathComponent("done.json")),
              let json = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
              let metrics = json["metrics"] as? String else { return nil }
        for item in metrics.split(separator: ";") {
            let kv = item.split(separator: "=", maxSplits: 1)
            if kv.count == 2 && kv[0] == "accuracy" { return Double(kv[1]) }
        }
        return nil
    }

    /// The sweep's results from its trained MQAR targets.
    public static func results(_ targets: [EvalTarget]) -> [RunResult] {
        targets.filter { $0.config.data.task == "mqar" && $0.isTrained }.map { t in
            RunResult(mixer: t.mixerLabel, dModel: t.config.model.dModel, seqLen: t.config.data.seqLen, numKVPairs: t.config.data.numKVPairs,
                      lr: t.config.train.lr, seed: t.config.seed, accuracy: t.runDirectory.flatMap { finalAccuracy(runDirectory: $0) })
        }
    }
}
