import Foundation

/// Number formatting for tables and plot ticks.
public enum EvalFormat {
    /// A value in its unit's customary form: bytes in B/KiB/MiB/GiB, rates with k/M, fractions and
    /// losses with three decimals.
    public static func value(_ v: Double, unit: String) -> String {
        switch unit {
        case "bytes": return bytes(v)
        case "tokens/s", "tokens": return si(v)
        case "fraction": return String(format: "%.3f", v)
        case "nats/token": return String(format: "%.3f", v)
        default: return v >= 100 ? si(v) : String(format: "%.3g", v)
        }
    }

    public static func bytes(_ v: Double) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB"]
        var x = v, i = 0
        while abs(x) >= 1024 && i < units.count - 1 { x /= 1024; i += 1 }
        if i == 0 { return "\(Int(x)) B" }
        return String(format: x == x.rounded() || x >= 100 ? "%.0f %@" : x >= 10 ? "%.1f %@" : "%.2f %@", x, units[i])
    }

    /// 3 significant digits with k/M/G suffixes.
    public static func si(_ v: Double) -> String {
        let a = abs(v)
        let (scale, suffix): (Double, String) = a >= 1e9 ? (1e9, "G") : a >= 1e6 ? (1e6, "M") : a >= 1e3 ? (1e3, "k") : (1, "")
        let x = v / scale
        if suffix.isEmpty && x == x.rounded() { return String(Int(x)) }
        return String(format: abs(x) >= 100 ? "%.0f" : abs(x) >= 10 ? "%.1f" : "%.2f", x) + suffix
    }

    /// `si` without trailing zeros (tick labels: 10k, 2.5k).
    public static func compact(_ v: Double) -> String {
        var text = si(v)
        let suffix = text.last.map { $0.isLetter ? String($0) : "" } ?? ""
        if !suffix.isEmpty { text.removeLast() }
        if text.contains(".") { while text.hasSuffix("0") { text.removeLast() }; if text.hasSuffix(".") { text.removeLast() } }
        return text + suffix
    }

    /// Tick labels: powers of two as 256, 1k, 16k (binary k for lengths).
    public static func length(_ n: Int) -> String {
        n >= 1024 && n % 1024 == 0 ? "\(n / 1024)k" : String(n)
    }
}

/// The readable comparison printed after an evaluation: one table per metric, a row per model
/// (mixer, or run when several runs share a mixer) and a column per sequence length.
public enum EvalSummary {
    /// The label of each (experiment, run): the mixer when it names the run uniquely, else the run
    /// (prefixed by the experiment when several experiments are shown).
    public static func labels(_ rows: [EvalRow]) -> [String: String] {
        var mixerOf: [String: String] = [:]
        for r in rows { mixerOf["\(r.experiment)/\(r.run)"] = r.mixer }
        let experiments = Set(rows.map(\.experiment))
        if Set(mixerOf.values).count == mixerOf.count { return mixerOf }
        var out: [String: String] = [:]
        for r in rows { out["\(r.experiment)/\(r.run)"] = experiments.count > 1 ? "\(r.experiment)/\(r.run)" : r.run }
        return out
    }

    /// The tables; with more than `maximumSeries` models (a large sweep) only a note, the state-bytes
    /// check and the skips (the sweep has its own summary, and eval.csv every row).
    public static func render(_ rows: [EvalRow], maximumSeries: Int = EvalPlots.maximumSeries) -> String {
        guard !rows.isEmpty else { return "(no measurements)" }
        let labels = labels(rows)
        let metrics = Set(rows.map(\.metric)).sorted { EvalMetric.rank($0) < EvalMetric.rank($1) }
        var out: [String] = []
        var seriesOrder: [String] = []
        for r in rows { let l = labels["\(r.experiment)/\(r.run)"]!; if !seriesOrder.contains(l) { seriesOrder.append(l) } }
        if seriesOrder.count > maximumSeries {
            out.append("\(seriesOrder.count) models: per-model tables omitted (every row is in eval.csv)")
        }
        for metric in metrics where seriesOrder.count <= maximumSeries {
            let mrows = rows.filter { $0.metric == metric }
            let lengths = Array(Set(mrows.map(\.seqLen))).sorted()
            let unit = mrows[0].unit
            let batches = Set(mrows.map(\.batch))
            var header = "\(metric)" + (unit.isEmpty || unit == "1" ? "" : " (\(unit))")
            if batches.count == 1, !metric.contains("loss") && !metric.hasPrefix("perplexity") && !metric.hasPrefix("accuracy") {
                header += ", batch \(batches.first!)"
            }
            var table = TextTable(["T"] + lengths.map(EvalFormat.length))
            for series in seriesOrder {
                let srows = mrows.filter { labels["\($0.experiment)/\($0.run)"] == series }
                guard !srows.isEmpty else { continue }
                table.add([series] + lengths.map { l in
                    guard let r = srows.last(where: { $0.seqLen == l }) else { return "" }
                    return r.value.map { EvalFormat.value($0, unit: unit) } ?? "skip"
                })
            }
            out.append(header)
            out.append(table.render())
            out.append("")
        }
        // Measured state bytes against the formula, so a drifting formula shows at once.
        let measured = rows.filter { $0.metric == "state_bytes" && $0.value != nil }
        if !measured.isEmpty {
            let analytic = Dictionary(rows.filter { $0.metric == "state_bytes_analytic" }.map { ("\($0.experiment)/\($0.run)/\($0.seqLen)", $0.value) },
                                      uniquingKeysWith: { _, b in b })
            let mismatches = measured.filter { analytic["\($0.experiment)/\($0.run)/\($0.seqLen)"] != $0.value }
            out.append(mismatches.isEmpty ? "state bytes: measured = analytic for every model and length"
                       : "state bytes: measured ≠ analytic for " + mismatches.map { "\(labels["\($0.experiment)/\($0.run)"]!) at T=\($0.seqLen)" }.joined(separator: ", "))
        }
        let skipped = rows.filter { $0.value == nil }
        if !skipped.isEmpty {
            var seen = Set<String>()
            out.append("skipped (\"skip\" above):")
            for r in skipped {
                let line = "  \(labels["\(r.experiment)/\(r.run)"]!) T=\(r.seqLen) \(EvalMetric.group(r.metric).rawValue): \(r.note)"
                if seen.insert(line).inserted { out.append(line) }
            }
        }
        return out.joined(separator: "\n")
    }
}

/// A plain-text table: first column left-aligned, the others right-aligned.
public struct TextTable {
    public let header: [String]
    public private(set) var rows: [[String]] = []
    public init(_ header: [String]) { self.header = header }
    public mutating func add(_ row: [String]) { rows.append(row) }
    public func render() -> String {
        let all = [header] + rows
        let widths = (0..<header.count).map { c in all.map { c < $0.count ? $0[c].count : 0 }.max() ?? 0 }
        func line(_ r: [String]) -> String {
            (0..<header.count).map { c in
                let s = c < r.count ? r[c] : ""
                let pad = String(repeating: " ", count: widths[c] - s.count)
                return c == 0 ? s + pad : pad + s
            }.joined(separator: "  ")
        }
        return ([line(header), widths.map { String(repeating: "-", count: $0) }.joined(separator: "  ")] + rows.map(line)).joined(separator: "\n")
    }
}
