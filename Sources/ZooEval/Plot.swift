import Foundation

/// A line chart written as plain SVG (no dependencies): x on a log₂ axis, y on a log₁₀ axis (log₂
/// for bytes, so ticks fall on KiB/MiB; linear for fractions and for data that are not all positive), one line with markers per
/// series, labelled axes, a title and a legend. A missing point (a skipped measurement) breaks its
/// line.
public struct LinePlot {
    public struct Series {
        public var label: String
        public var points: [(x: Double, y: Double?)]
        public init(label: String, points: [(x: Double, y: Double?)]) { self.label = label; self.points = points }
    }

    public var title: String
    public var xLabel: String
    public var yLabel: String
    /// The y values' unit, for tick labels ("bytes", "tokens/s", "fraction", …).
    public var yUnit: String
    public var series: [Series]
    public var logY: Bool

    public init(title: String, xLabel: String, yLabel: String, yUnit: String, series: [Series], logY: Bool = true) {
        self.title = title; self.xLabel = xLabel; self.yLabel = yLabel; self.yUnit = yUnit; self.series = series; self.logY = logY
    }

    /// The tableau-10 palette: distinct in colour and in lightness.
    static let palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
    static let dashes = ["", "6 3", "2 3"]

    public static let width = 760.0, height = 460.0
    static let left = 92.0, top = 46.0, right = 540.0, bottom = 392.0

    public func svg() -> String {
        let xs = series.flatMap { $0.points.map(\.x) }.filter { $0 > 0 }
        let ys = series.flatMap { $0.points.compactMap(\.y) }.filter { $0.isFinite }
        let useLogY = logY && !ys.isEmpty && ys.allSatisfy { $0 > 0 }
        let xAxis = LogAxis(values: xs.isEmpty ? [1, 2] : xs, base: 2)
        let yAxis: Axis = useLogY ? LogAxis(values: ys, base: yUnit == "bytes" ? 2 : 10) : LinearAxis(values: ys.isEmpty ? [0, 1] : ys, unit: yUnit)
        let (l, t, r, b) = (LinePlot.left, LinePlot.top, LinePlot.right, LinePlot.bottom)
        func px(_ x: Double) -> Double { l + (r - l) * xAxis.fraction(x) }
        func py(_ y: Double) -> Double { b - (b - t) * yAxis.fraction(y) }

        var s: [String] = []
        s.append("""
        <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(LinePlot.width))" height="\(Int(LinePlot.height))" \
        viewBox="0 0 \(Int(LinePlot.width)) \(Int(LinePlot.height))" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">
        <rect x="0" y="0" width="\(Int(LinePlot.width))" height="\(Int(LinePlot.height))" fill="#ffffff"/>
        <text x="\(f((l + r) / 2))" y="26" font-size="16" font-weight="bold" text-anchor="middle">\(xml(title))</text>
        """)
        // Grid and ticks.
        for tick in xAxis.ticks() {
            let x = px(tick)
            s.append("<line x1=\"\(f(x))\" y1=\"\(f(t))\" x2=\"\(f(x))\" y2=\"\(f(b))\" stroke=\"#e4e4e4\" stroke-width=\"1\"/>")
            s.append("<line x1=\"\(f(x))\" y1=\"\(f(b))\" x2=\"\(f(x))\" y2=\"\(f(b + 5))\" stroke=\"#333333\" stroke-width=\"1\"/>")
            s.append("<text x=\"\(f(x))\" y=\"\(f(b + 19))\" font-size=\"12\" text-anchor=\"middle\">\(xml(EvalFormat.length(Int(tick.rounded()))))</text>")
        }
        for tick in yAxis.ticks() {
            let y = py(tick)
            s.append("<line x1=\"\(f(l))\" y1=\"\(f(y))\" x2=\"\(f(r))\" y2=\"\(f(y))\" stroke=\"#e4e4e4\" stroke-width=\"1\"/>")
            s.append("<line x1=\"\(f(l - 5))\" y1=\"\(f(y))\" x2=\"\(f(l))\" y2=\"\(f(y))\" stroke=\"#333333\" stroke-width=\"1\"/>")
            s.append("<text x=\"\(f(l - 8))\" y=\"\(f(y + 4))\" font-size=\"12\" text-anchor=\"end\">\(xml(tickLabel(tick)))</text>")
        }
        s.append("<rect x=\"\(f(l))\" y=\"\(f(t))\" width=\"\(f(r - l))\" height=\"\(f(b - t))\" fill=\"none\" stroke=\"#333333\" stroke-width=\"1\"/>")
        // Axis labels.
        s.append("<text x=\"\(f((l + r) / 2))\" y=\"\(f(b + 44))\" font-size=\"13\" text-anchor=\"middle\">\(xml(xLabel))</text>")
        s.append("<text x=\"\(f(20))\" y=\"\(f((t + b) / 2))\" font-size=\"13\" text-anchor=\"middle\" "
                 + "transform=\"rotate(-90 20 \(f((t + b) / 2)))\">\(xml(yLabel + (useLogY ? " (log scale)" : "")))</text>")
        // Lines, broken at missing points, and markers.
        for (i, series) in series.enumerated() {
            let color = LinePlot.palette[i % LinePlot.palette.count]
            let dash = LinePlot.dashes[(i / LinePlot.palette.count) % LinePlot.dashes.count]
            var segment: [String] = []
            func flush() {
                if segment.count >= 2 {
                    s.append("<polyline points=\"\(segment.joined(separator: " "))\" fill=\"none\" stroke=\"\(color)\" stroke-width=\"2.2\""
                             + (dash.isEmpty ? "" : " stroke-dasharray=\"\(dash)\"") + "/>")
                }
                segment = []
            }
            for p in series.points.sorted(by: { $0.x < $1.x }) {
                if let y = p.y, y.isFinite, !useLogY || y > 0 { segment.append("\(f(px(p.x))),\(f(py(y)))") } else { flush() }
            }
            flush()
            for p in series.points {
                guard let y = p.y, y.isFinite, !useLogY || y > 0 else { continue }
                s.append("<circle cx=\"\(f(px(p.x)))\" cy=\"\(f(py(y)))\" r=\"3.6\" fill=\"\(color)\" stroke=\"#ffffff\" stroke-width=\"1\"/>")
            }
        }
        // Legend, right of the plot.
        let lx = r + 18
        s.append("<text x=\"\(f(lx))\" y=\"\(f(t + 4))\" font-size=\"12\" font-weight=\"bold\">legend</text>")
        for (i, series) in series.enumerated() {
            let y = t + 24 + Double(i) * 20
            let color = LinePlot.palette[i % LinePlot.palette.count]
            let dash = LinePlot.dashes[(i / LinePlot.palette.count) % LinePlot.dashes.count]
            s.append("<line x1=\"\(f(lx))\" y1=\"\(f(y))\" x2=\"\(f(lx + 26))\" y2=\"\(f(y))\" stroke=\"\(color)\" stroke-width=\"2.2\""
                     + (dash.isEmpty ? "" : " stroke-dasharray=\"\(dash)\"") + "/>")
            s.append("<circle cx=\"\(f(lx + 13))\" cy=\"\(f(y))\" r=\"3.6\" fill=\"\(color)\"/>")
            let label = series.label.count > 26 ? String(series.label.prefix(25)) + "…" : series.label
            s.append("<text x=\"\(f(lx + 34))\" y=\"\(f(y + 4))\" font-size=\"12\">\(xml(label))</text>")
        }
        s.append("</svg>")
        return s.joined(separator: "\n") + "\n"
    }

    func tickLabel(_ v: Double) -> String {
        switch yUnit {
        case "bytes": return EvalFormat.bytes(v)
        case "fraction": return String(format: "%.1f", v)
        default:
            if v != 0 && (abs(v) < 0.01) { return String(format: "%.0e", v) }
            return abs(v) >= 1000 ? EvalFormat.compact(v) : String(format: "%g", (v * 1000).rounded() / 1000)
        }
    }
}

private func f(_ v: Double) -> String { String(format: "%.1f", v) }

/// Escapes text for SVG.
func xml(_ s: String) -> String {
    s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
        .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
}

protocol Axis {
    func fraction(_ v: Double) -> Double
    func ticks() -> [Double]
}

/// A logarithmic axis padded a little beyond the data.
struct LogAxis: Axis {
    let lo: Double, hi: Double, base: Double
    init(values: [Double], base: Double) {
        let positive = values.filter { $0 > 0 }
        var a = log(positive.min() ?? 1) / log(base), b = log(positive.max() ?? base) / log(base)
        if b - a < 1e-9 { a -= 0.5; b += 0.5 }
        let pad = (b - a) * 0.06
        lo = a - pad; hi = b + pad; self.base = base
    }
    func fraction(_ v: Double) -> Double { (log(v) / log(base) - lo) / (hi - lo) }
    func ticks() -> [Double] {
        let (first, last) = (Int(lo.rounded(.up)), Int(hi.rounded(.down)))
        var majors = first <= last ? (first...last).map { pow(base, Double($0)) } : []
        while majors.count > 9 { majors = majors.enumerated().filter { $0.offset % 2 == 0 }.map(\.element) }
        if majors.count >= (base == 10 ? 3 : 2) { return majors }
        // A narrow range: 1-2-5 ticks, then every integer multiple if still sparse.
        let (low, high) = (pow(base, lo), pow(base, hi))
        let inRange = { (v: Double) in v >= low && v <= high }
        let decades = Int(log10(low).rounded(.down))...Int(log10(high).rounded(.up))
        let oneTwoFive = decades.flatMap { k in [1.0, 2, 5].map { $0 * pow(10, Double(k)) } }.filter(inRange)
        if oneTwoFive.count >= 3 { return oneTwoFive }
        let multiples = decades.flatMap { k in (1...9).map { Double($0) * pow(10, Double(k)) } }.filter(inRange)
        if multiples.count >= 3 { return multiples }
        // Narrower still (a loss between 1.9 and 2.6): evenly spaced "nice" values.
        let raw = (high - low) / 4
        let magnitude = pow(10, log10(raw).rounded(.down))
        let step = [1.0, 2, 2.5, 5, 10].first { $0 * magnitude >= raw }! * magnitude
        return stride(from: (low / step).rounded(.up) * step, through: high, by: step).map { ($0 * 1e9).rounded() / 1e9 }
    }
}

/// A linear axis from "nice" tick values; fractions always span [0, 1].
struct LinearAxis: Axis {
    let lo: Double, hi: Double, step: Double
    init(values: [Double], unit: String) {
        if unit == "fraction" { lo = 0; hi = 1; step = 0.2; return }
        var a = values.min() ?? 0, b = values.max() ?? 1
        if b - a < 1e-12 { a -= 1; b += 1 }
        let raw = (b - a) / 5
        let magnitude = pow(10, (log10(raw)).rounded(.down))
        let nice = [1.0, 2, 5, 10].first { $0 * magnitude >= raw }! * magnitude
        step = nice
        lo = (a / nice).rounded(.down) * nice
        hi = (b / nice).rounded(.up) * nice
    }
    func fraction(_ v: Double) -> Double { (v - lo) / (hi - lo) }
    func ticks() -> [Double] {
        // Rounded to 9 decimals so 3 × 0.2 prints as 0.6.
        stride(from: lo, through: hi + step * 1e-6, by: step).map { (($0 / step).rounded() * step * 1e9).rounded() / 1e9 }
    }
}

/// The plots of an evaluation: one SVG per metric against sequence length, one line per model.
public enum EvalPlots {
    /// At most this many lines in one plot (a large sweep is summarised by its own tables).
    public static let maximumSeries = 12

    /// The plot of `metric`, or nil when no model has it at two lengths or there are too many models.
    public static func plot(metric: String, rows: [EvalRow], labels: [String: String]) -> LinePlot? {
        let mrows = rows.filter { $0.metric == metric }
        guard let unit = mrows.first?.unit else { return nil }
        var order: [String] = []
        var points: [String: [Int: Double?]] = [:]
        for r in mrows {
            let label = labels["\(r.experiment)/\(r.run)"] ?? r.run
            if points[label] == nil { order.append(label) }
            points[label, default: [:]][r.seqLen] = r.value
        }
        guard order.count <= maximumSeries,
              points.values.contains(where: { $0.values.compactMap { $0 }.count >= 2 }) else { return nil }
        let series = order.map { label in
            LinePlot.Series(label: label, points: points[label]!.sorted { $0.key < $1.key }.map { (x: Double($0.key), y: $0.value) })
        }
        let batch = Set(mrows.map(\.batch))
        let unitText = unit.isEmpty || unit == "1" ? "" : " (\(unit))"
        let title = "\(metric) vs sequence length" + (batch.count == 1 && EvalMetric.group(metric) != .quality ? ", batch \(batch.first!)" : "")
        return LinePlot(title: title, xLabel: "sequence length T (tokens, log scale)", yLabel: metric + unitText, yUnit: unit,
                        series: series, logY: unit != "fraction")
    }

    /// Writes `<metric>.svg` into `folder` for every plottable metric; returns the files.
    @discardableResult
    public static func write(_ rows: [EvalRow], to folder: URL) throws -> [URL] {
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        let labels = EvalSummary.labels(rows)
        var written: [URL] = []
        for metric in Set(rows.map(\.metric)).sorted(by: { EvalMetric.rank($0) < EvalMetric.rank($1) }) where !metric.hasPrefix("accuracy_kv") {
            guard let plot = plot(metric: metric, rows: rows, labels: labels) else { continue }
            let url = folder.appendingPathComponent("\(metric).svg")
            try plot.svg().write(to: url, atomically: true, encoding: .utf8)
            written.append(url)
        }
        return written
    }
}
