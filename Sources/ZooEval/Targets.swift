import Foundation
import ZooExperiment

/// One model to evaluate: a trained run (its folder's config.yaml and checkpoint) or a config
/// point with random weights (throughput and memory only).
public struct EvalTarget: Sendable {
    public var experiment: String
    public var run: String
    public var config: ExperimentConfig
    /// Trained weights; nil means fresh weights from the config's seed.
    public var checkpoint: URL?
    /// The run folder (metrics.csv, done.json), for trained runs.
    public var runDirectory: URL?

    public init(experiment: String, run: String, config: ExperimentConfig, checkpoint: URL? = nil, runDirectory: URL? = nil) {
        self.experiment = experiment; self.run = run; self.config = config
        self.checkpoint = checkpoint; self.runDirectory = runDirectory
    }

    public var isTrained: Bool { checkpoint != nil }

    /// The layer mixers: one type name, or `a+b+c` for a hybrid stack.
    public var mixerLabel: String {
        let names = config.model.layerMixers.map(\.typeName)
        return Set(names).count == 1 ? names[0] : names.joined(separator: "+")
    }

    /// `eval.lengths` sorted, or the training length and 2× and 4× it.
    public var lengths: [Int] {
        let l = config.eval.lengths.isEmpty ? [1, 2, 4].map { $0 * config.data.seqLen } : config.eval.lengths
        return Array(Set(l)).sorted()
    }

    /// Whether the run finished (done.json beside the checkpoint).
    public var isFinished: Bool {
        runDirectory.map { FileManager.default.fileExists(atPath: $0.appendingPathComponent("done.json").path) } ?? false
    }
}

/// Finds what `zoo eval PATH` means: a config file (random weights), a run folder, or a folder of
/// run folders (an experiment's output, or an output root holding several experiments).
public enum EvalInputs {
    public enum Kind: Sendable, Equatable { case config, runFolder, folderOfRuns }

    /// The targets and the default output folder (`<experiment folder>/eval` for run folders,
    /// `<runsRoot>/<name>/eval` for a config).
    public static func load(path: String, overrides: [String] = [], runsRoot: String = "runs") throws
        -> (targets: [EvalTarget], defaultOutput: URL, kind: Kind) {
        let fm = FileManager.default
        var isDirectory: ObjCBool = false
        guard fm.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw EvalError("\(path): no such file or folder (give a run folder, an experiment output folder or a config file)")
        }
        let url = URL(fileURLWithPath: path).standardizedFileURL
        if isDirectory.boolValue { try checkRunOverrides(overrides) }
        if !isDirectory.boolValue {
            let runs = try ConfigLoader.loadRuns(path: path, overrides: overrides)
            let targets = runs.map { EvalTarget(experiment: $0.config.name, run: $0.name, config: $0.config) }
            let name = runs.first?.config.name ?? "experiment"
            return (targets, URL(fileURLWithPath: runsRoot).appendingPathComponent(name).appendingPathComponent("eval"), .config)
        }
        if isRunFolder(url) {
            return ([try runFolder(url, overrides: overrides)], url.deletingLastPathComponent().appendingPathComponent("eval"), .runFolder)
        }
        let folders = runFolders(under: url)
        guard !folders.isEmpty else {
            throw EvalError("\(path): holds no run folders (folders with config.yaml and checkpoint.safetensors, as `zoo train` "
                            + "writes); give a run folder, an experiment output folder or a config file")
        }
        // Every run must be evaluable before anything is measured: list all that are not.
        var targets: [EvalTarget] = [], problems: [String] = []
        for f in folders {
            do { targets.append(try runFolder(f, overrides: overrides)) }
            catch { problems.append("  \(error)") }
        }
        if !problems.isEmpty {
            throw EvalError("\(path): \(problems.count) of \(folders.count) run folders cannot be evaluated:\n" + problems.joined(separator: "\n"))
        }
        return (targets, url.appendingPathComponent("eval"), .folderOfRuns)
    }

    static func isRunFolder(_ url: URL) -> Bool {
        FileManager.default.fileExists(atPath: url.appendingPathComponent("config.yaml").path)
    }

    /// Run folders directly under `url` or one level deeper (an output root of several
    /// experiments), in name order; `eval` folders are not runs.
    static func runFolders(under url: URL) -> [URL] {
        func children(_ u: URL) -> [URL] {
            let names = (try? FileManager.default.contentsOfDirectory(atPath: u.path)) ?? []
            return names.sorted().filter { $0 != "eval" && !$0.hasPrefix(".") }.map { u.appendingPathComponent($0) }.filter {
                var d: ObjCBool = false
                return FileManager.default.fileExists(atPath: $0.path, isDirectory: &d) && d.boolValue
            }
        }
        var found: [URL] = []
        for c in children(url) {
            if isRunFolder(c) { found.append(c) } else { found += children(c).filter(isRunFolder) }
        }
        return found
    }

    static func checkRunOverrides(_ overrides: [String]) throws {
        for o in overrides where !o.hasPrefix("eval.") {
            throw EvalError("--set \(o): a trained run's model, data and training are fixed by its checkpoint; "
                            + "only eval.* keys can be overridden when evaluating run folders")
        }
    }

    /// A trained run: its checkpoint must exist (checked first: an untrained folder is the common
    /// mistake), then its config.yaml is loaded strictly. Only `eval.*` keys may be overridden: the
    /// model, data and training are fixed by the checkpoint.
    public static func runFolder(_ dir: URL, overrides: [String] = []) throws -> EvalTarget {
        let checkpoint = dir.appendingPathComponent("checkpoint.safetensors")
        guard FileManager.default.fileExists(atPath: checkpoint.path) else {
            throw EvalError("\(dir.path): no checkpoint.safetensors — this run was never trained or stopped before its first "
                            + "checkpoint. Train it (`zoo train CONFIG --resume`), or evaluate the config file itself to measure "
                            + "throughput and memory with random weights")
        }
        try checkRunOverrides(overrides)
        let config = try ConfigLoader.load(path: dir.appendingPathComponent("config.yaml").path, overrides: overrides)
        return EvalTarget(experiment: config.name, run: dir.lastPathComponent, config: config, checkpoint: checkpoint, runDirectory: dir)
    }
}
