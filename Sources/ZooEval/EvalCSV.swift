import Foundation

/// One measurement: a row of the tidy evaluation CSV (../shared/DESIGN.md §6), so a scaling curve
/// is a group-by on (mixer, metric) over `seq_len`.
///
/// Two columns go beyond DESIGN §6: `run` (the run folder or sweep point, so sweep points that share
/// a mixer stay apart) and `note` (why a value is missing, e.g. a measurement skipped for the time
/// budget; empty otherwise). A skipped measurement is a row with an empty `value`.
public struct EvalRow: Sendable, Equatable {
    public var experiment: String
    public var run: String
    /// The layer mixers: one type name, or `a+b+c` for a hybrid stack.
    public var mixer: String
    public var dModel: Int
    public var nLayers: Int
    public var params: Int
    public var seqLen: Int
    public var batch: Int
    public var threads: Int
    public var metric: String
    /// nil: not measured; `note` says why.
    public var value: Double?
    public var unit: String
    public var gitRev: String
    /// ISO 8601, UTC, when the measurement finished.
    public var timestamp: String
    public var note: String

    public init(experiment: String, run: String, mixer: String, dModel: Int, nLayers: Int, params: Int, seqLen: Int,
                batch: Int, threads: Int, metric: String, value: Double?, unit: String, gitRev: String, timestamp: String,
                note: String = "") {
        self.experiment = experiment; self.run = run; self.mixer = mixer; self.dModel = dModel; self.nLayers = nLayers
        self.params = params; self.seqLen = seqLen; self.batch = batch; self.threads = threads; self.metric = metric
        self.value = value; self.unit = unit; self.gitRev = gitRev; self.timestamp = timestamp; self.note = note
    }
}

/// Reading and writing the evaluation CSV (RFC 4180: fields with commas, quotes or newlines are
/// quoted, quotes doubled).
public enum EvalCSV {
    public static let columns = ["experiment", "run", "mixer", "d_model", "n_layers", "params", "seq_len", "batch", "threads",
                                 "metric", "value", "unit", "git_rev", "timestamp", "note"]
    public static var header: String { columns.joined(separator: ",") }

    public static func line(_ r: EvalRow) -> String {
        [r.experiment, r.run, r.mixer, String(r.dModel), String(r.nLayers), String(r.params), String(r.seqLen), String(r.batch),
         String(r.threads), r.metric, r.value.map(formatValue) ?? "", r.unit, r.gitRev, r.timestamp, r.note]
            .map(quoted).joined(separator: ",")
    }

    /// Integers print as integers (byte counts stay readable), everything else in Swift's shortest
    /// round-tripping form.
    public static func formatValue(_ v: Double) -> String {
        if v.isFinite && v == v.rounded() && abs(v) < 1e15 { return String(Int64(v)) }
        return "\(v)"
    }

    static func quoted(_ field: String) -> String {
        guard field.contains(where: { $0 == "," || $0 == "\"" || $0 == "\n" || $0 == "\r" }) else { return field }
        return "\"" + field.replacingOccurrences(of: "\"", with: "\"\"") + "\""
    }

    /// Splits CSV text into records of fields. A record cut off inside quotes is dropped.
    static func records(_ text: String) -> [[String]] {
        var records: [[String]] = [], fields: [String] = [], field = ""
        var inQuotes = false, fieldStarted = false
        var chars = Array(text)[...]
        while let c = chars.popFirst() {
            if inQuotes {
                if c == "\"" {
                    if chars.first == "\"" { field.append("\""); chars.removeFirst() } else { inQuotes = false }
                } else { field.append(c) }
            } else if c == "\"" && field.isEmpty {
                inQuotes = true; fieldStarted = true
            } else if c == "," {
                fields.append(field); field = ""; fieldStarted = true
            } else if c == "\n" || c == "\r\n" || c == "\r" {
                fields.append(field); records.append(fields); fields = []; field = ""; fieldStarted = false
            } else {
                field.append(c); fieldStarted = true
            }
        }
        if !inQuotes && (fieldStarted || !field.isEmpty) { fields.append(field); records.append(fields) }
        return records
    }

    /// Parses CSV text written by `line`. Returns the rows and how many records were dropped as
    /// incomplete (a run killed while writing leaves at most a torn last line). Throws when the
    /// header is not this format's.
    public static func parse(_ text: String, file: String = "<csv>") throws -> (rows: [EvalRow], dropped: Int) {
        var recs = records(text)
        guard !recs.isEmpty else { return ([], 0) }
        let head = recs.removeFirst()
        guard head == columns else {
            throw EvalError("\(file): the header is \(head.joined(separator: ",")), expected \(header) "
                            + "(written by another zoo version? move it away or pass --fresh)")
        }
        var rows: [EvalRow] = [], dropped = 0
        for f in recs {
            guard f.count == columns.count, let d = Int(f[3]), let n = Int(f[4]), let p = Int(f[5]), let t = Int(f[6]),
                  let b = Int(f[7]), let th = Int(f[8]) else { dropped += 1; continue }
            let value: Double?
            if f[10].isEmpty { value = nil } else if let v = Double(f[10]) { value = v } else { dropped += 1; continue }
            rows.append(EvalRow(experiment: f[0], run: f[1], mixer: f[2], dModel: d, nLayers: n, params: p, seqLen: t, batch: b,
                                threads: th, metric: f[9], value: value, unit: f[11], gitRev: f[12], timestamp: f[13], note: f[14]))
        }
        return (rows, dropped)
    }
}

/// The evaluation CSV on disk, appended to as measurements finish, so an interrupted evaluation
/// keeps every finished row and a repeated command skips them.
public final class EvalCSVFile {
    public let url: URL
    public private(set) var rows: [EvalRow]
    private let handle: FileHandle

    /// Opens (or creates) the file. `fresh` discards earlier rows. A torn last line (a run killed
    /// mid-write) is dropped with the rest of its measurement group, and the file rewritten.
    public init(url: URL, fresh: Bool = false) throws {
        self.url = url
        let fm = FileManager.default
        try fm.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        var rows: [EvalRow] = []
        if !fresh, fm.fileExists(atPath: url.path) {
            let text = try String(contentsOf: url, encoding: .utf8)
            let parsed = try EvalCSV.parse(text, file: url.path)
            rows = parsed.rows
            if parsed.dropped > 0 || !text.hasSuffix("\n") {
                // A torn write: the group it belonged to may be incomplete (a group is written in
                // one piece, so only the last one can be), so that group is measured again.
                if let last = rows.last {
                    let group = EvalMetric.group(last.metric)
                    while let r = rows.last, r.experiment == last.experiment, r.run == last.run, r.seqLen == last.seqLen,
                          EvalMetric.group(r.metric) == group { rows.removeLast() }
                }
                try EvalCSVFile.rewrite(url, rows)
            }
        } else {
            try EvalCSVFile.rewrite(url, [])
        }
        self.rows = rows
        handle = try FileHandle(forWritingTo: url)
        handle.seekToEndOfFile()
    }

    deinit { try? handle.close() }

    static func rewrite(_ url: URL, _ rows: [EvalRow]) throws {
        let text = ([EvalCSV.header] + rows.map(EvalCSV.line)).joined(separator: "\n") + "\n"
        try text.write(to: url, atomically: true, encoding: .utf8)
    }

    /// Appends rows and flushes them to disk.
    public func append(_ new: [EvalRow]) {
        guard !new.isEmpty else { return }
        handle.write(Data(new.map { EvalCSV.line($0) + "\n" }.joined().utf8))
        handle.synchronizeFile()
        rows += new
    }
}

/// A problem with what was asked to evaluate; the message says what and how to fix it.
public struct EvalError: Error, CustomStringConvertible, Equatable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
