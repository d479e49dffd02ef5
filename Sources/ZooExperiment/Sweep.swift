import Foundation
import Yams

/// One run of an experiment: its folder name, the overrides that define it, and its config.
public struct ExperimentRun: Sendable {
    /// Folder name under the experiment's output folder ("run" when there is no sweep).
    public let name: String
    /// The `key=value` assignments of the sweep point (empty without a sweep).
    public let assignments: [(key: String, value: String)]
    public let config: ExperimentConfig
}

extension ConfigLoader {
    /// Loads a config and expands its `sweep:` grid (cross product, keys in sorted order) into
    /// runs. Each point applies its values as overrides to the base and is checked as strictly as
    /// the base, so a misspelled sweep key fails before any run starts.
    public static func loadRuns(path: String, overrides: [String] = []) throws -> [ExperimentRun] {
        guard FileManager.default.fileExists(atPath: path) else { throw ConfigError(file: path, keyPath: "", "no such file") }
        let text = try String(contentsOfFile: path, encoding: .utf8)
        return try loadRuns(yaml: text, file: path, overrides: overrides)
    }

    public static func loadRuns(yaml: String, file: String, overrides: [String] = []) throws -> [ExperimentRun] {
        var root = try parse(yaml, file: file)
        for o in overrides { root = try applyOverride(o, to: root, file: file) }
        let base = try decode(root, file: file)
        guard let sweep = base.sweep, !sweep.isEmpty else {
            return [ExperimentRun(name: "run", assignments: [], config: base)]
        }
        // Drop the sweep from each point so a run's saved config is a plain experiment.
        var pairs = root.mapping.map { $0.map { ($0.key, $0.value) } } ?? []
        pairs.removeAll { $0.0.string == "sweep" }
        let stripped = Node.mapping(Node.Mapping(pairs))
        let keys = sweep.keys.sorted()
        for k in keys where sweep[k]!.isEmpty {
            throw ConfigError(file: file, keyPath: "sweep.\(k)", line: line(atDotted: "sweep", in: root), "the list of values is empty")
        }
        var points: [[(String, String)]] = [[]]
        for k in keys {
            points = points.flatMap { p in sweep[k]!.map { p + [(k, $0.text)] } }
        }
        return try points.map { point in
            var node = stripped
            for (k, v) in point {
                do { node = try applyOverride("\(k)=\(v)", to: node, file: file) }
                catch let e as ConfigError { throw ConfigError(file: file, keyPath: "sweep.\(k)", line: line(atDotted: "sweep", in: root), e.message) }
            }
            let config: ExperimentConfig
            do { config = try decode(node, file: file) }
            catch let e as ConfigError {
                throw ConfigError(file: file, keyPath: "sweep (\(point.map { "\($0.0)=\($0.1)" }.joined(separator: ", "))) → \(e.keyPath)",
                                  line: line(atDotted: "sweep", in: root), e.message)
            }
            let name = point.map { "\(shortKey($0.0))=\(sanitise($0.1))" }.joined(separator: "_")
            return ExperimentRun(name: name, assignments: point.map { (key: $0.0, value: $0.1) }, config: config)
        }
    }

    static func shortKey(_ k: String) -> String { String(k.split(separator: ".").last ?? Substring(k)) }
    static func sanitise(_ v: String) -> String {
        String(v.map { $0.isLetter || $0.isNumber || $0 == "." || $0 == "-" ? $0 : "-" })
    }
}
