import Foundation
import Yams
import ZooMixers

/// A bad experiment config: names the file, the key path, the line when known, what is wrong and
/// what is allowed. Raised before any work starts.
public struct ConfigError: Error, CustomStringConvertible, Equatable {
    public let file: String
    public let keyPath: String
    public let line: Int?
    public let message: String
    public init(file: String, keyPath: String, line: Int? = nil, _ message: String) {
        self.file = file; self.keyPath = keyPath; self.line = line; self.message = message
    }
    public var description: String {
        "\(file)\(line.map { ":\($0)" } ?? ""): \(keyPath.isEmpty ? "" : "\(keyPath): ")\(message)"
    }
}

/// Loads experiment configs strictly: YAML → node tree → `--set` overrides → unknown-key check
/// (every mapping against its section's key list) → Codable decoding (type errors mapped back to
/// key paths and lines) → range checks.
public enum ConfigLoader {
    /// Loads a file, applying `overrides` ("a.b=value", YAML scalars or flow mappings).
    public static func load(path: String, overrides: [String] = []) throws -> ExperimentConfig {
        guard FileManager.default.fileExists(atPath: path) else {
            throw ConfigError(file: path, keyPath: "", "no such file")
        }
        let text: String
        do { text = try String(contentsOfFile: path, encoding: .utf8) }
        catch { throw ConfigError(file: path, keyPath: "", "cannot read the file: \(error.localizedDescription)") }
        return try load(yaml: text, file: path, overrides: overrides)
    }

    public static func load(yaml: String, file: String = "<config>", overrides: [String] = []) throws -> ExperimentConfig {
        var root = try parse(yaml, file: file)
        for o in overrides { root = try applyOverride(o, to: root, file: file) }
        return try decode(root, file: file)
    }

    /// Parses YAML text into a node (an empty document is an empty mapping).
    public static func parse(_ yaml: String, file: String) throws -> Node {
        do {
            return try Yams.compose(yaml: yaml) ?? Node.mapping(Node.Mapping([]))
        } catch let error as YamlError {
            throw ConfigError(file: file, keyPath: "", "invalid YAML: \(error)")
        }
    }

    /// Decodes a node tree (already overridden) into a checked config.
    public static func decode(_ root: Node, file: String) throws -> ExperimentConfig {
        try checkKeys(root, file: file)
        let config: ExperimentConfig
        do {
            config = try YAMLDecoder().decode(ExperimentConfig.self, from: root)
        } catch let error as DecodingError {
            throw describe(error, root: root, file: file)
        }
        try validate(config, root: root, file: file)
        return config
    }

    // MARK: Overrides

    /// "a.b.c=value": sets the value (a YAML scalar, list or mapping) at the dotted path.
    public static func applyOverride(_ assignment: String, to root: Node, file: String) throws -> Node {
        guard let eq = assignment.firstIndex(of: "=") else {
            throw ConfigError(file: file, keyPath: assignment, "an override must look like key.path=value (got '\(assignment)')")
        }
        let path = assignment[..<eq].split(separator: ".").map(String.init)
        let valueText = String(assignment[assignment.index(after: eq)...])
        guard !path.isEmpty, path.allSatisfy({ !$0.isEmpty }) else {
            throw ConfigError(file: file, keyPath: String(assignment[..<eq]), "empty key in override '\(assignment)'")
        }
        let value = try parse(valueText.isEmpty ? "''" : valueText, file: "--set \(assignment)")
        return try setting(value, at: path, in: root, file: file, fullPath: path)
    }

    static func setting(_ value: Node, at path: [String], in node: Node, file: String, fullPath: [String]) throws -> Node {
        guard let key = path.first else { return value }
        var pairs: [(Node, Node)]
        switch node {
        case .mapping(let m): pairs = m.map { ($0.key, $0.value) }
        case .scalar(let s) where s.string == "" || s.string == "~" || s.string == "null": pairs = []
        default:
            throw ConfigError(file: file, keyPath: fullPath.joined(separator: "."), "cannot set a key inside a value that is not a mapping")
        }
        if let i = pairs.firstIndex(where: { $0.0.string == key }) {
            pairs[i].1 = try setting(value, at: Array(path.dropFirst()), in: pairs[i].1, file: file, fullPath: fullPath)
        } else {
            pairs.append((Node(key), try setting(value, at: Array(path.dropFirst()), in: Node.mapping(Node.Mapping([])), file: file, fullPath: fullPath)))
        }
        return .mapping(Node.Mapping(pairs))
    }

    // MARK: Unknown keys

    static func checkKeys(_ root: Node, file: String) throws {
        try checkMapping(root, path: "", allowed: ExperimentConfig.keyReference.map(\.key), file: file)
        guard let top = root.mapping else { return }
        for (k, v) in top {
            switch k.string {
            case "model":
                try checkMapping(v, path: "model", allowed: ModelConfig.keyReference.map(\.key), file: file)
                if let mixer = v.mapping?["mixer"] { try checkMixer(mixer, path: "model.mixer", file: file) }
            case "data": try checkMapping(v, path: "data", allowed: DataConfig.keyReference.map(\.key), file: file)
            case "train":
                try checkMapping(v, path: "train", allowed: TrainConfig.keyReference.map(\.key), file: file)
                if let es = v.mapping?["early_stop"], es.mapping != nil {
                    try checkMapping(es, path: "train.early_stop", allowed: EarlyStop.keyReference.map(\.key), file: file)
                }
            case "eval": try checkMapping(v, path: "eval", allowed: EvalConfig.keyReference.map(\.key), file: file)
            case "sweep":
                guard let m = v.mapping else {
                    throw ConfigError(file: file, keyPath: "sweep", line: line(v), "must be a mapping of dotted key → list of values")
                }
                for (sk, sv) in m where sv.sequence == nil {
                    throw ConfigError(file: file, keyPath: "sweep.\(sk.string ?? "?")", line: line(sv), "must be a list of values")
                }
            default: break
            }
        }
    }

    static func checkMixer(_ node: Node, path: String, file: String) throws {
        switch node {
        case .sequence(let items):
            if items.isEmpty { throw ConfigError(file: file, keyPath: path, line: line(node), "the list of mixers is empty") }
            for (i, item) in items.enumerated() { try checkMixer(item, path: "\(path)[\(i)]", file: file) }
        case .scalar(let s):
            guard MixerRegistry.configType(named: s.string) != nil else {
                throw ConfigError(file: file, keyPath: path, line: line(node),
                                  "unknown mixer type '\(s.string)'; allowed: \(MixerRegistry.typeNames.joined(separator: ", "))")
            }
        case .mapping(let m):
            guard let typeNode = m["type"], let name = typeNode.string else {
                throw ConfigError(file: file, keyPath: path, line: line(node),
                                  "a mixer needs `type:` (one of \(MixerRegistry.typeNames.joined(separator: ", ")))")
            }
            guard let type = MixerRegistry.configType(named: name) else {
                throw ConfigError(file: file, keyPath: "\(path).type", line: line(typeNode),
                                  "unknown mixer type '\(name)'; allowed: \(MixerRegistry.typeNames.joined(separator: ", "))")
            }
            try checkMapping(node, path: path, allowed: ["type"] + type.keyReference.map(\.key), file: file)
        default:
            throw ConfigError(file: file, keyPath: path, line: line(node), "a mixer must be a mapping, a type name or a list")
        }
    }

    static func checkMapping(_ node: Node, path: String, allowed: [String], file: String) throws {
        if case .scalar(let s) = node, s.string.isEmpty || s.string == "~" || s.string == "null" { return }
        guard let m = node.mapping else {
            throw ConfigError(file: file, keyPath: path, line: line(node), "must be a mapping with keys \(allowed.joined(separator: ", "))")
        }
        for (k, _) in m {
            let key = k.string ?? "?"
            if !allowed.contains(key) {
                let suggestion = allowed.min { editDistance($0, key) < editDistance($1, key) }
                let hint = suggestion.flatMap { editDistance($0, key) <= 3 ? " (did you mean '\($0)'?)" : nil } ?? ""
                throw ConfigError(file: file, keyPath: path.isEmpty ? key : "\(path).\(key)", line: line(k),
                                  "unknown key\(hint); allowed: \(allowed.joined(separator: ", "))")
            }
        }
    }

    // MARK: Decoding errors and ranges

    static func describe(_ error: DecodingError, root: Node, file: String) -> ConfigError {
        func pathString(_ path: [CodingKey]) -> String {
            path.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }.joined(separator: ".").replacingOccurrences(of: ".[", with: "[")
        }
        switch error {
        case .typeMismatch(let type, let ctx):
            return ConfigError(file: file, keyPath: pathString(ctx.codingPath), line: line(at: ctx.codingPath, in: root),
                               "expected \(typeName(type)): \(ctx.debugDescription)")
        case .valueNotFound(let type, let ctx):
            return ConfigError(file: file, keyPath: pathString(ctx.codingPath), line: line(at: ctx.codingPath, in: root), "expected \(typeName(type)), found nothing")
        case .keyNotFound(let key, let ctx):
            return ConfigError(file: file, keyPath: pathString(ctx.codingPath + [key]), line: line(at: ctx.codingPath, in: root), "required key is missing")
        case .dataCorrupted(let ctx):
            return ConfigError(file: file, keyPath: pathString(ctx.codingPath), line: line(at: ctx.codingPath, in: root), ctx.debugDescription)
        @unknown default:
            return ConfigError(file: file, keyPath: "", "\(error)")
        }
    }

    static func typeName(_ t: Any.Type) -> String {
        switch t {
        case is Int.Type: return "an integer"
        case is Double.Type: return "a number"
        case is String.Type: return "a string"
        case is Bool.Type: return "true or false"
        default: return "\(t)"
        }
    }

    /// Range and consistency checks, with the key path and line of the offending value.
    static func validate(_ c: ExperimentConfig, root: Node, file: String) throws {
        func fail(_ path: String, _ message: String) -> ConfigError {
            ConfigError(file: file, keyPath: path, line: line(atDotted: path, in: root), message)
        }
        func positive(_ v: Int, _ path: String) throws { if v < 1 { throw fail(path, "must be ≥ 1, got \(v)") } }
        try positive(c.model.dModel, "model.d_model")
        try positive(c.model.nLayers, "model.n_layers")
        if c.model.mixer.isEmpty { throw fail("model.mixer", "required: one of \(MixerRegistry.typeNames.joined(separator: ", ")), or a list of them") }
        if c.model.mlpKind == nil && c.model.mlp != "none" { throw fail("model.mlp", "must be swiglu, gelu or none, got '\(c.model.mlp)'") }
        if let h = c.model.mlpHidden { try positive(h, "model.mlp_hidden") }
        if !(c.model.normEps > 0) { throw fail("model.norm_eps", "must be > 0") }
        for (i, m) in c.model.mixer.enumerated() {
            do { try m.config.validate(dModel: c.model.dModel) }
            catch { throw fail(c.model.mixer.count == 1 ? "model.mixer.\(error.key)" : "model.mixer[\(i)].\(error.key)", error.message) }
        }
        let d = c.data
        guard ["text", "mqar"].contains(d.task) else { throw fail("data.task", "must be text or mqar, got '\(d.task)'") }
        try positive(d.seqLen, "data.seq_len")
        if d.task == "text" && !(d.validationFraction > 0 && d.validationFraction <= 0.5) {
            throw fail("data.validation_fraction", "must be in (0, 0.5], got \(d.validationFraction)")
        }
        if d.task == "mqar" {
            if d.vocabSize < 4 { throw fail("data.vocab_size", "must be ≥ 4, got \(d.vocabSize)") }
            try positive(d.numKVPairs, "data.num_kv_pairs")
            if d.numKVPairs > d.vocabSize / 2 - 1 { throw fail("data.num_kv_pairs", "must be ≤ vocab_size/2 − 1 = \(d.vocabSize / 2 - 1) (keys are distinct)") }
            if 2 * d.numKVPairs > d.seqLen { throw fail("data.num_kv_pairs", "2·num_kv_pairs = \(2 * d.numKVPairs) must fit in seq_len = \(d.seqLen)") }
            if !(d.powerA > 0) { throw fail("data.power_a", "must be > 0, got \(d.powerA)") }
            try positive(d.trainExamples, "data.train_examples"); try positive(d.testExamples, "data.test_examples")
        }
        for m in c.model.mixer {
            if let maxLength = m.config.maximumLength(dModel: c.model.dModel), d.seqLen > maxLength {
                throw fail("data.seq_len", "\(d.seqLen) is longer than mixer \(m.typeName) can take (\(maxLength))")
            }
        }
        let t = c.train
        try positive(t.steps, "train.steps"); try positive(t.batchSize, "train.batch_size")
        if !(t.lr > 0) { throw fail("train.lr", "must be > 0, got \(t.lr)") }
        if !(t.minLR >= 0 && t.minLR <= t.lr) { throw fail("train.min_lr", "must be in [0, lr], got \(t.minLR)") }
        if t.warmup < 0 { throw fail("train.warmup", "must be ≥ 0") }
        if t.weightDecay < 0 { throw fail("train.weight_decay", "must be ≥ 0") }
        if !(t.beta1 >= 0 && t.beta1 < 1) { throw fail("train.beta1", "must be in [0, 1)") }
        if !(t.beta2 >= 0 && t.beta2 < 1) { throw fail("train.beta2", "must be in [0, 1)") }
        if !(t.eps > 0) { throw fail("train.eps", "must be > 0") }
        if t.gradClip < 0 { throw fail("train.grad_clip", "must be ≥ 0 (0 disables clipping)") }
        try positive(t.evalEvery, "train.eval_every"); try positive(t.evalBatches, "train.eval_batches")
        try positive(t.logEvery, "train.log_every"); try positive(t.checkpointEvery, "train.checkpoint_every")
        if let es = t.earlyStop, !["accuracy", "val_loss"].contains(es.metric) {
            throw fail("train.early_stop.metric", "must be accuracy or val_loss, got '\(es.metric)'")
        }
        if let es = t.earlyStop, es.metric == "accuracy", d.task != "mqar" {
            throw fail("train.early_stop.metric", "accuracy is measured on mqar only; use val_loss for text")
        }
        for l in c.eval.lengths where l < 1 { throw fail("eval.lengths", "lengths must be ≥ 1, got \(l)") }
        try positive(c.eval.batchSize, "eval.batch_size"); try positive(c.eval.decodeTokens, "eval.decode_tokens")
        try positive(c.eval.qualityBatches, "eval.quality_batches")
        if !(c.eval.maxSeconds > 0) { throw fail("eval.max_seconds", "must be > 0, got \(c.eval.maxSeconds)") }
    }

    // MARK: Lines

    static func line(_ node: Node) -> Int? { node.mark?.line }

    static func line(atDotted path: String, in root: Node) -> Int? {
        var node = root
        var last = root.mark?.line
        for part in path.split(separator: ".") {
            let key = String(part.split(separator: "[").first ?? part)
            guard let m = node.mapping, let next = m[key] else { return last }
            node = next
            last = next.mark?.line ?? last
        }
        return last
    }

    static func line(at path: [CodingKey], in root: Node) -> Int? {
        var node = root
        var last = root.mark?.line
        for key in path {
            if let i = key.intValue, let seq = node.sequence, i < seq.count { node = seq[i] }
            else if let m = node.mapping, let next = m[key.stringValue] { node = next }
            else { return last }
            last = node.mark?.line ?? last
        }
        return last
    }
}

/// Levenshtein distance, for "did you mean" hints.
func editDistance(_ a: String, _ b: String) -> Int {
    let a = Array(a), b = Array(b)
    var row = Array(0...b.count)
    for i in 1...max(a.count, 1) where !a.isEmpty {
        var prev = row[0]; row[0] = i
        for j in 1...max(b.count, 1) where !b.isEmpty {
            let cur = row[j]
            row[j] = min(row[j] + 1, row[j - 1] + 1, prev + (a[i - 1] == b[j - 1] ? 0 : 1))
            prev = cur
        }
    }
    return row[b.count]
}
