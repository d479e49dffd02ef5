import Foundation

/// PyTorch peer figures measured side by side: the CSV files that ../shared/bench/bench_peers.py
/// writes (`lm` → cpu_peer_DATE_lm.csv, `mixers` → cpu_peer_DATE_mixers.csv). Shared machines
/// drift by tens of percent between days, so a ratio is only worth quoting against figures taken
/// in the same session; without such a file the benchmarks fall back to PEERS.md's constants.
public enum PeerResults {
    public struct ReadError: Error, CustomStringConvertible {
        public let description: String
    }

    /// The peer's names for zoo's mixer types (bench_peers.py's `mixer` column).
    static let peerName: [String: String] = ["attention": "attn", "mamba": "mamba", "mamba2": "ssd",
                                             "loglinear_mamba2": "loglinear", "nsa": "nsa"]

    /// LM training-step tokens/s by zoo mixer type, from a `bench_peers.py lm` CSV. Rows whose
    /// status is not `ok`/`ok_contended` (a failed or skipped peer) are left out.
    public static func trainingTokensPerSecond(csv path: String) throws -> [String: Double] {
        let rows = try read(path, columns: ["mixer", "status", "tokens_per_s"])
        var out: [String: Double] = [:]
        for (line, row) in rows where row["status"]!.hasPrefix("ok") {
            guard let rate = Double(row["tokens_per_s"]!), rate > 0 else {
                throw ReadError(description: "\(path):\(line): tokens_per_s '\(row["tokens_per_s"]!)' is not a positive number")
            }
            for (zoo, peer) in peerName where peer == row["mixer"] { out[zoo] = rate }
        }
        return out
    }

    /// Tokens/s by sequence length for one (mixer, impl, mode) of a `bench_peers.py mixers` CSV,
    /// e.g. ("nsa", "ref", "fwdbwd"). Only `ok`/`ok_contended` rows count; a later row for the same
    /// length replaces an earlier one (the script appends re-runs).
    public static func mixerTokensPerSecond(csv path: String, mixer: String, impl: String, mode: String) throws -> [Int: Double] {
        let rows = try read(path, columns: ["mixer", "impl", "L", "mode", "status", "tokens_per_s"])
        var out: [Int: Double] = [:]
        for (line, row) in rows where row["mixer"] == mixer && row["impl"] == impl && row["mode"] == mode && row["status"]!.hasPrefix("ok") {
            guard let length = Int(row["L"]!), let rate = Double(row["tokens_per_s"]!), rate > 0 else {
                throw ReadError(description: "\(path):\(line): L '\(row["L"]!)' or tokens_per_s '\(row["tokens_per_s"]!)' is not a positive number")
            }
            out[length] = rate
        }
        return out
    }

    /// Forward and forward+backward tokens/s by length for one peer kernel (e.g. "ssd", "chunked64"):
    /// from `csv` when given, else `fallback` (PEERS.md's figures). Either mode may be missing at a length.
    public static func kernelTokensPerSecond(csv: String?, mixer: String, impl: String,
                                             fallback: [Int: (fwdBwd: Double, fwd: Double)]) throws -> [Int: (fwdBwd: Double?, fwd: Double?)] {
        guard let csv else { return fallback.mapValues { (fwdBwd: $0.fwdBwd, fwd: $0.fwd) } }
        let both = try mixerTokensPerSecond(csv: csv, mixer: mixer, impl: impl, mode: "fwdbwd")
        let forward = try mixerTokensPerSecond(csv: csv, mixer: mixer, impl: impl, mode: "fwd")
        var out: [Int: (fwdBwd: Double?, fwd: Double?)] = [:]
        for length in Set(both.keys).union(forward.keys) { out[length] = (both[length], forward[length]) }
        return out
    }

    /// "x.xx" for ours / theirs, "–" where there is no peer figure.
    static func ratio(_ ours: Double, over peer: Double?) -> String {
        guard let p = peer else { return "–" }
        return fmt(ours / p, 2)
    }

    /// Rows of a CSV file with a header naming at least `columns`, each with its 1-based line.
    static func read(_ path: String, columns: [String]) throws -> [(line: Int, row: [String: String])] {
        guard let data = FileManager.default.contents(atPath: path), let text = String(data: data, encoding: .utf8) else {
            throw ReadError(description: "\(path): cannot read the peer CSV (expected a file written by ../shared/bench/bench_peers.py)")
        }
        let lines = text.split(omittingEmptySubsequences: false, whereSeparator: \.isNewline).map(String.init)
        guard let headerLine = lines.first, !headerLine.isEmpty else { throw ReadError(description: "\(path): empty file, expected a CSV header") }
        let header = splitCSVLine(headerLine)
        for c in columns where !header.contains(c) {
            throw ReadError(description: "\(path): no column '\(c)' in the header (needs \(columns.joined(separator: ", ")); has \(header.joined(separator: ", ")))")
        }
        var out: [(Int, [String: String])] = []
        for (i, line) in lines.enumerated().dropFirst() where !line.trimmingCharacters(in: .whitespaces).isEmpty {
            let fields = splitCSVLine(line)
            guard fields.count == header.count else {
                throw ReadError(description: "\(path):\(i + 1): \(fields.count) fields, the header has \(header.count)")
            }
            out.append((i + 1, Dictionary(uniqueKeysWithValues: zip(header, fields))))
        }
        return out
    }

    /// One CSV record (RFC 4180 quoting: "a, b" and "" for a quote), as Python's csv module writes it.
    static func splitCSVLine(_ line: String) -> [String] {
        var fields: [String] = [], field = "", quoted = false
        var chars = line.makeIterator()
        while let ch = chars.next() {
            if quoted {
                if ch == "\"" {
                    // "" inside quotes is a literal quote; a lone " ends the quoted part.
                    if let nextChar = chars.next() {
                        if nextChar == "\"" { field.append("\"") } else {
                            quoted = false
                            if nextChar == "," { fields.append(field); field = "" } else { field.append(nextChar) }
                        }
                    } else { quoted = false }
                } else { field.append(ch) }
            } else if ch == "\"" { quoted = true }
            else if ch == "," { fields.append(field); field = "" }
            else { field.append(ch) }
        }
        fields.append(field)
        return fields
    }
}
