import Foundation
import ZooTensor
import ZooAutograd
import ZooNN
import ZooModels
import ZooData
import ZooCheckpoint

/// How to train (the `train:` section, resolved).
public struct TrainingOptions: Sendable {
    public var steps: Int
    public var peakLR: Float
    public var minLR: Float
    public var warmup: Int
    public var weightDecay: Float
    public var beta1: Float
    public var beta2: Float
    public var epsilon: Float
    public var gradClip: Float
    public var evalEvery: Int
    public var logEvery: Int
    public var checkpointEvery: Int
    /// Stop when `metric` reaches `threshold` (accuracy: ≥, val_loss: ≤).
    public var earlyStop: (metric: String, threshold: Double)?

    public init(steps: Int, peakLR: Float, minLR: Float, warmup: Int, weightDecay: Float, beta1: Float, beta2: Float,
                epsilon: Float, gradClip: Float, evalEvery: Int, logEvery: Int, checkpointEvery: Int,
                earlyStop: (metric: String, threshold: Double)?) {
        self.steps = steps; self.peakLR = peakLR; self.minLR = minLR; self.warmup = warmup; self.weightDecay = weightDecay
        self.beta1 = beta1; self.beta2 = beta2; self.epsilon = epsilon; self.gradClip = gradClip; self.evalEvery = evalEvery
        self.logEvery = logEvery; self.checkpointEvery = checkpointEvery; self.earlyStop = earlyStop
    }
}

/// How a run ended.
public struct TrainingOutcome: Sendable {
    public enum Reason: String, Sendable { case completed, earlyStopped = "early_stopped", interrupted }
    public let reason: Reason
    public let steps: Int
    public let finalLoss: Double
    public let lastMetrics: [String: Double]
    public let tokensPerSecond: Double
}

public enum TrainingError: Error, CustomStringConvertible {
    case nonFinite(step: Int, loss: Float, checkpoint: String?)
    public var description: String {
        switch self {
        case .nonFinite(let step, let loss, let checkpoint):
            return "the loss became \(loss) at step \(step); training stopped. The last good checkpoint is \(checkpoint ?? "(none written yet)")"
        }
    }
}

/// SIGINT / SIGTERM ask the running trainer to save a checkpoint and stop after the current step.
public enum StopSignal {
    nonisolated(unsafe) static var requested: sig_atomic_t = 0
    public static var isRequested: Bool { requested != 0 }
    public static func install() {
        signal(SIGINT) { _ in StopSignal.requested = 1 }
        signal(SIGTERM) { _ in StopSignal.requested = 1 }
    }
    public static func reset() { requested = 0 }
}

/// The training loop: AdamW with warm-up + cosine, global-norm clipping, evaluation every N steps,
/// early stopping, a per-run `metrics.csv` (step, split, metric, value), checkpoints every N steps
/// and at the end, bit-exact resume, and a NaN/Inf guard.
public final class Trainer {
    public let model: LanguageModel
    public let options: TrainingOptions
    public let runDirectory: URL
    public var optimizer: AdamW
    public let evaluate: (LanguageModel) -> [String: Double]
    /// Where progress lines go (stdout by default).
    public var log: (String) -> Void = writeLine
    /// Polled after every step: true saves a checkpoint and stops (SIGINT/SIGTERM by default;
    /// tests pass their own, since the signal flag is global to the process).
    public var stopRequested: () -> Bool = { StopSignal.isRequested }
    /// Also stop after this many steps in this process (tests simulate interruption with it).
    public var stopAfterSteps: Int? = nil

    public var checkpointURL: URL { runDirectory.appendingPathComponent("checkpoint.safetensors") }
    public var metricsURL: URL { runDirectory.appendingPathComponent("metrics.csv") }

    public init(model: LanguageModel, options: TrainingOptions, runDirectory: URL,
                evaluate: @escaping (LanguageModel) -> [String: Double]) {
        self.model = model
        self.options = options
        self.runDirectory = runDirectory
        self.optimizer = AdamW(beta1: options.beta1, beta2: options.beta2, epsilon: options.epsilon, weightDecay: options.weightDecay)
        self.evaluate = evaluate
    }

    /// Trains from step 0, or from the run folder's checkpoint when `resume` is set.
    public func run<Source: BatchSource>(data: inout Source, resume: Bool) throws -> TrainingOutcome {
        try FileManager.default.createDirectory(at: runDirectory, withIntermediateDirectories: true)
        let parameters = model.namedParameters()
        var startStep = 0
        var bestMetric: Double? = nil
        if resume {
            guard FileManager.default.fileExists(atPath: checkpointURL.path) else {
                throw CheckpointError(path: checkpointURL.path, "--resume: no checkpoint here")
            }
            var opt: AdamW? = optimizer
            guard let progress = try Checkpoint.load(from: checkpointURL, into: parameters, optimizer: &opt) else {
                throw CheckpointError(path: checkpointURL.path, "no training progress in the checkpoint")
            }
            optimizer = opt!
            do { try data.restore(progress.dataPosition) }
            catch { throw CheckpointError(path: checkpointURL.path, "the data position does not fit this data: \(error)") }
            startStep = progress.step
            bestMetric = progress.bestMetric
            try trimMetrics(afterStep: startStep)
            log("resumed from \(checkpointURL.path) at step \(startStep)")
        } else {
            try "step,split,metric,value\n".write(to: metricsURL, atomically: true, encoding: .utf8)
        }
        let metrics = try FileHandle(forWritingTo: metricsURL)
        metrics.seekToEndOfFile()
        defer { try? metrics.close() }
        func record(_ step: Int, _ split: String, _ name: String, _ value: Double) {
            metrics.write(Data("\(step),\(split),\(name),\(value)\n".utf8))
        }

        let interactive = isatty(STDOUT_FILENO) != 0
        var lastLoss = Double.nan
        var lastMetrics: [String: Double] = [:]
        var tokens = 0
        let started = Date()
        var stepsThisProcess = 0
        var lastCheckpoint: String? = FileManager.default.fileExists(atPath: checkpointURL.path) && resume ? checkpointURL.path : nil
        var step = startStep

        func saveCheckpoint() throws {
            try Checkpoint.save(parameters, optimizer: optimizer,
                                progress: TrainingProgress(step: step, dataPosition: data.position, bestMetric: bestMetric), to: checkpointURL)
            lastCheckpoint = checkpointURL.path
        }

        while step < options.steps {
            let batch = data.nextBatch()
            let loss = model.loss(batch.inputs, targets: batch.targets, batch: batch.batchSize, length: batch.length,
                                  ignoreIndex: Batch.ignoreIndex)
            let lossValue = loss.value.item
            guard lossValue.isFinite else {
                throw TrainingError.nonFinite(step: step + 1, loss: lossValue, checkpoint: lastCheckpoint)
            }
            loss.backward()
            let gradNorm = options.gradClip > 0 ? clipGradientNorm(parameters, maxNorm: options.gradClip) : Float.nan
            let lr = cosineLearningRate(step: step, warmup: options.warmup, total: options.steps, peak: options.peakLR, minimum: options.minLR)
            optimizer.step(parameters, learningRate: lr)
            for p in parameters { p.variable.zeroGrad() }
            step += 1
            stepsThisProcess += 1
            tokens += batch.batchSize * batch.length
            lastLoss = Double(lossValue)
            record(step, "train", "loss", lastLoss)
            record(step, "train", "lr", Double(lr))
            if gradNorm.isFinite { record(step, "train", "grad_norm", Double(gradNorm)) }

            let elapsed = Date().timeIntervalSince(started)
            let rate = Double(tokens) / max(elapsed, 1e-9)
            if interactive {
                let eta = Double(options.steps - step) * elapsed / Double(stepsThisProcess)
                FileHandle.standardOutput.write(Data(String(format: "\rstep %d/%d  loss %.4f  %.0f tok/s  ETA %@   ",
                                                             step, options.steps, lastLoss, rate, formatDuration(eta)).utf8))
            } else if step % options.logEvery == 0 || step == options.steps {
                log(String(format: "step %d/%d loss %.4f lr %.2e %.0f tok/s", step, options.steps, lastLoss, Double(lr), rate))
            }

            var stopEarly = false
            if step % options.evalEvery == 0 || step == options.steps {
                lastMetrics = withNoGrad { evaluate(model) }
                for (k, v) in lastMetrics.sorted(by: { $0.key < $1.key }) { record(step, "eval", k, v) }
                if interactive { FileHandle.standardOutput.write(Data("\n".utf8)) }
                log("eval at step \(step): " + lastMetrics.sorted(by: { $0.key < $1.key }).map { "\($0.key) \(String(format: "%.4f", $0.value))" }.joined(separator: ", "))
                if let es = options.earlyStop, let value = lastMetrics[es.metric] {
                    bestMetric = es.metric == "accuracy" ? max(bestMetric ?? -.infinity, value) : min(bestMetric ?? .infinity, value)
                    stopEarly = es.metric == "accuracy" ? value >= es.threshold : value <= es.threshold
                }
            }
            metrics.synchronizeFile()
            if stopEarly {
                try saveCheckpoint()
                log("early stop at step \(step): \(options.earlyStop!.metric) reached \(options.earlyStop!.threshold)")
                return TrainingOutcome(reason: .earlyStopped, steps: step, finalLoss: lastLoss, lastMetrics: lastMetrics, tokensPerSecond: rate)
            }
            if stopRequested() || (stopAfterSteps.map { stepsThisProcess >= $0 } ?? false) {
                try saveCheckpoint()
                if interactive { FileHandle.standardOutput.write(Data("\n".utf8)) }
                log("interrupted at step \(step); checkpoint saved to \(checkpointURL.path) (continue with --resume)")
                return TrainingOutcome(reason: .interrupted, steps: step, finalLoss: lastLoss, lastMetrics: lastMetrics, tokensPerSecond: rate)
            }
            if step % options.checkpointEvery == 0 && step < options.steps { try saveCheckpoint() }
        }
        try saveCheckpoint()
        if interactive { FileHandle.standardOutput.write(Data("\n".utf8)) }
        let elapsed = Date().timeIntervalSince(started)
        return TrainingOutcome(reason: .completed, steps: step, finalLoss: lastLoss, lastMetrics: lastMetrics,
                               tokensPerSecond: Double(tokens) / max(elapsed, 1e-9))
    }

    /// Drops metric rows written after `step` (by the run that was interrupted after its last
    /// checkpoint), so a resumed run's metrics.csv equals an uninterrupted one's.
    func trimMetrics(afterStep step: Int) throws {
        guard let text = try? String(contentsOf: metricsURL, encoding: .utf8) else {
            try "step,split,metric,value\n".write(to: metricsURL, atomically: true, encoding: .utf8)
            return
        }
        let lines = text.split(separator: "\n", omittingEmptySubsequences: true)
        let kept = lines.enumerated().filter { i, line in
            i == 0 || (Int(line.split(separator: ",").first ?? "") ?? Int.max) <= step
        }.map { String($0.element) }
        try (kept.joined(separator: "\n") + "\n").write(to: metricsURL, atomically: true, encoding: .utf8)
    }
}

func formatDuration(_ seconds: Double) -> String {
    guard seconds.isFinite else { return "?" }
    let s = Int(seconds.rounded())
    return s >= 3600 ? String(format: "%d:%02d:%02d", s / 3600, s / 60 % 60, s % 60) : String(format: "%d:%02d", s / 60, s % 60)
}

/// Writes a line to standard output unbuffered, so progress reaches a pipe or file as it happens.
public func writeLine(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}
