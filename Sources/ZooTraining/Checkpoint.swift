import Foundation
import ZooTensor
import ZooNN
import ZooData
import ZooCheckpoint

/// What a checkpoint holds besides the weights: enough to continue bit-exactly.
public struct TrainingProgress: Codable, Sendable, Equatable {
    /// Optimizer steps completed.
    public var step: Int
    /// Where the training data stands (generator state, counters).
    public var dataPosition: DataPosition
    /// The best early-stopping metric so far, if any.
    public var bestMetric: Double?
    public init(step: Int, dataPosition: DataPosition, bestMetric: Double? = nil) {
        self.step = step; self.dataPosition = dataPosition; self.bestMetric = bestMetric
    }
}

/// Checkpoints in the safetensors format: the weights under their dotted names, AdamW's moments
/// under `optimizer.m.<name>` / `optimizer.v.<name>`, and the progress as JSON metadata.
/// Written atomically (temporary file, fsync, rename); a truncated or corrupt file is refused
/// whole by the reader.
public enum Checkpoint {
    public static let progressKey = "zoo.progress"
    public static let formatKey = "zoo.format"
    public static let format = "zoo-checkpoint-1"

    public static func save(_ parameters: [NamedParameter], optimizer: AdamW, progress: TrainingProgress, to url: URL) throws {
        var tensors: [String: Tensor] = [:]
        for p in parameters {
            tensors[p.name] = p.variable.value
            if let m = optimizer.firstMoments[p.name] { tensors["optimizer.m.\(p.name)"] = m }
            if let v = optimizer.secondMoments[p.name] { tensors["optimizer.v.\(p.name)"] = v }
        }
        // Sorted keys: the same run writes the same bytes (JSONEncoder's order otherwise varies by process).
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let progressJSON = String(decoding: try encoder.encode(progress), as: UTF8.self)
        try SafeTensors.write(tensors, metadata: [progressKey: progressJSON, formatKey: format,
                                                  "zoo.adam_step": String(optimizer.stepCount)], to: url.path)
    }

    /// Loads weights (and, when `optimizer` is given, its moments) into the parameters. Every
    /// name and shape is checked before anything is assigned, so a mismatch changes nothing.
    @discardableResult
    public static func load(from url: URL, into parameters: [NamedParameter], optimizer: inout AdamW?) throws -> TrainingProgress? {
        let file = try SafeTensors.read(url.path)
        var assignments: [(NamedParameter, Tensor)] = []
        for p in parameters {
            guard let t = file.tensors[p.name] else {
                throw CheckpointError(path: url.path, "no tensor '\(p.name)' (the checkpoint does not match this model)")
            }
            guard t.shape == p.variable.value.shape else {
                throw CheckpointError(path: url.path, "'\(p.name)' has shape \(describe(t.shape)), the model expects \(describe(p.variable.value.shape))")
            }
            assignments.append((p, t))
        }
        let known = Set(parameters.map(\.name))
        if let extra = file.tensors.keys.filter({ !$0.hasPrefix("optimizer.") && !known.contains($0) }).sorted().first {
            throw CheckpointError(path: url.path, "tensor '\(extra)' is not a parameter of this model")
        }
        var progress: TrainingProgress? = nil
        if let json = file.metadata[progressKey] {
            do { progress = try JSONDecoder().decode(TrainingProgress.self, from: Data(json.utf8)) }
            catch { throw CheckpointError(path: url.path, "unreadable progress metadata: \(error)") }
        }
        if var opt = optimizer {
            guard let stepText = file.metadata["zoo.adam_step"], let adamStep = Int(stepText) else {
                throw CheckpointError(path: url.path, "no optimizer step count; cannot resume from a weights-only file")
            }
            for p in parameters {
                guard let m = file.tensors["optimizer.m.\(p.name)"], let v = file.tensors["optimizer.v.\(p.name)"],
                      m.shape == p.variable.value.shape, v.shape == m.shape else {
                    if adamStep == 0 { continue }
                    throw CheckpointError(path: url.path, "optimizer state for '\(p.name)' is missing or has the wrong shape")
                }
                opt.firstMoments[p.name] = m
                opt.secondMoments[p.name] = v
            }
            opt.restore(stepCount: adamStep)
            optimizer = opt
        }
        for (p, t) in assignments { p.variable.value = t }
        return progress
    }
}

