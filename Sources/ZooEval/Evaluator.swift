import Foundation
import ZooTensor
import ZooAutograd
import ZooNN
import ZooMixers
import ZooModels
import ZooData
import ZooExperiment
import ZooTraining

/// Measures every target at every length: quality (trained models), training / prefill / decode
/// throughput, and decode-state memory, one `EvalRow` per number.
///
/// Order of work: `validate()` checks everything that can be wrong with the input (lengths the
/// mixers cannot take, data too short for a length, checkpoints that do not fit their model)
/// before anything is measured. `run(into:)` then measures the groups missing from the CSV, in
/// increasing length per model, appending each group's rows as soon as it finishes, so an
/// interrupted evaluation keeps them and a repeated one continues after them.
///
/// Time budget: a measurement predicted to take longer than `eval.max_seconds` is skipped, and a
/// row with an empty value and a note records that. The prediction extrapolates the same model's
/// previous length with the exponent seen between its last two lengths (clamped to [1, 2]; 1.5
/// with one length), so quadratic mixers stop earlier than linear ones.
public final class Evaluator {
    public let targets: [EvalTarget]
    public let root: String
    public let environment: EvalEnvironment
    public var log: (String) -> Void

    private var corpora: [String: ByteCorpus] = [:]

    public init(targets: [EvalTarget], root: String, environment: EvalEnvironment, log: @escaping (String) -> Void = { print($0) }) {
        self.targets = targets
        self.root = root
        self.environment = environment
        self.log = log
    }

    // MARK: Validation (before any measurement)

    /// Throws the first problem of any target, naming the run, the length and what to change.
    public func validate() throws {
        guard !targets.isEmpty else { throw EvalError("nothing to evaluate") }
        for t in targets {
            let name = "\(t.experiment)/\(t.run)"
            let e = t.config.eval
            if !e.throughput && !e.memory && !(e.quality && t.isTrained) {
                throw EvalError("\(name): nothing to measure (eval.throughput and eval.memory are false, and quality needs a trained model)")
            }
            let d = t.config.model.dModel
            for l in t.lengths {
                for m in t.config.model.layerMixers {
                    if let maxLength = m.config.maximumLength(dModel: d), l > maxLength {
                        throw EvalError("\(name): eval length \(l) is longer than mixer \(m.typeName) can take (at most \(maxLength) tokens "
                                        + "at d_model \(d)); remove it from eval.lengths")
                    }
                }
            }
            if t.isTrained && e.quality {
                for l in t.lengths { _ = try qualityData(t, length: l) }
            }
            if let checkpoint = t.checkpoint {
                // Loading fails whole (names, shapes) before anything is assigned.
                let model = ExperimentRunner.makeModel(t.config)
                var none: AdamW? = nil
                do { try Checkpoint.load(from: checkpoint, into: model.namedParameters(), optimizer: &none) }
                catch { throw EvalError("\(name): \(error)") }
            }
        }
    }

    // MARK: Data for quality

    enum QualityData {
        case text([Batch])
        case mqar([MQAREvaluationBatch], kvPairs: [Int])
    }

    /// Key-value pairs of the MQAR test set at `length`: the training count scaled with the length
    /// (k·L/T, as zoology grows pairs with the sequence), capped by what fits (L/4) and by the
    /// vocabulary's distinct keys; accuracy is reported for slices at k_L, k_L/2 and k_L/4.
    public static func mqarKVPairs(trainingPairs k: Int, trainingLength t: Int, length l: Int, vocabSize v: Int) -> [Int] {
        let scaled = max(1, min(Int((Double(k) * Double(l) / Double(t)).rounded()), l / 4, v / 2 - 1))
        return Array(Set([scaled, scaled / 2, scaled / 4].filter { $0 >= 1 })).sorted()
    }

    func qualityData(_ t: EvalTarget, length l: Int) throws -> QualityData {
        let name = "\(t.experiment)/\(t.run)"
        let d = t.config.data
        let batch = t.config.train.batchSize, batches = t.config.eval.qualityBatches
        if d.task == "mqar" {
            guard l >= 4 else {
                throw EvalError("\(name): eval length \(l) is too short for an MQAR example (one pair and its query need 4 tokens); "
                                + "remove it from eval.lengths")
            }
            let kv = Evaluator.mqarKVPairs(trainingPairs: d.numKVPairs, trainingLength: d.seqLen, length: l, vocabSize: d.vocabSize)
            let perSlice = max(1, (batches * batch + kv.count - 1) / kv.count)
            let segments = kv.map { MQARConfig(vocabSize: d.vocabSize, seqLen: l, numKVPairs: $0, powerA: d.powerA, numExamples: perSlice) }
            do {
                let set = try MQARDataset(segments: segments, seed: UInt64(t.config.seed), split: .test)
                return .mqar(set.evaluationBatches(batchSize: batch), kvPairs: kv)
            } catch {
                throw EvalError("\(name): cannot make the MQAR test set at length \(l): \(error)")
            }
        }
        do {
            let path = d.path == "default" ? try DefaultCorpus.path(root: root) : d.path
            let key = "\(path)|\(d.validationFraction)"
            let corpus: ByteCorpus
            if let c = corpora[key] { corpus = c } else {
                corpus = try ByteCorpus(contentsOf: path, validationFraction: d.validationFraction)
                corpora[key] = corpus
            }
            return .text(try corpus.validationBatches(length: l, batchSize: batch, maxBatches: batches))
        } catch {
            throw EvalError("\(name): cannot evaluate quality at length \(l): \(error)")
        }
    }

    // MARK: Measurement

    /// Seconds each kind of measurement took, per length, for the time-budget prediction.
    struct Timings {
        var seconds: [String: [(length: Int, seconds: Double)]] = [:]
        mutating func add(_ kind: String, _ length: Int, _ s: Double) {
            guard s.isFinite && s > 0 else { return }
            seconds[kind, default: []].append((length, s))
        }
        /// Predicted seconds of `kind` at `length`, or nil without an earlier shorter length.
        func predict(_ kind: String, _ length: Int) -> Double? {
            guard let h = seconds[kind]?.filter({ $0.length < length }).sorted(by: { $0.length < $1.length }), let last = h.last else { return nil }
            var exponent = 1.5
            if h.count >= 2 {
                let prev = h[h.count - 2]
                exponent = min(2, max(1, Foundation.log(last.seconds / prev.seconds) / Foundation.log(Double(last.length) / Double(prev.length))))
            }
            return last.seconds * pow(Double(length) / Double(last.length), exponent)
        }
    }

    /// Runs every measurement missing from `csv`; returns the rows written now.
    @discardableResult
    public func run(into csv: EvalCSVFile) throws -> [EvalRow] {
        var written: [EvalRow] = []
        func key(_ experiment: String, _ run: String, _ length: Int, _ group: EvalMetric.Group) -> String {
            "\(experiment)\u{1}\(run)\u{1}\(length)\u{1}\(group.rawValue)"
        }
        var done = Set(csv.rows.map { key($0.experiment, $0.run, $0.seqLen, EvalMetric.group($0.metric)) })
        for (index, t) in targets.enumerated() {
            let e = t.config.eval
            let wantQuality = e.quality && t.isTrained
            let lengths = t.lengths
            let pending = lengths.contains { l in
                (wantQuality && !done.contains(key(t.experiment, t.run, l, .quality)))
                    || (e.throughput && !done.contains(key(t.experiment, t.run, l, .train)))
                    || ((e.throughput || e.memory) && !done.contains(key(t.experiment, t.run, l, .inference)))
            }
            let earlier = csv.rows.filter { $0.experiment == t.experiment && $0.run == t.run }
            var timings = Timings()
            for r in earlier { Evaluator.recordTiming(r, into: &timings, decodeTokens: e.decodeTokens) }
            let needsTrainLoss = t.isTrained && !done.contains(key(t.experiment, t.run, t.config.data.seqLen, .trainLoss))
            guard pending || needsTrainLoss else {
                log("[\(index + 1)/\(targets.count)] \(t.experiment)/\(t.run): measured earlier, skipped")
                continue
            }
            let model = ExperimentRunner.makeModel(t.config)
            if let checkpoint = t.checkpoint {
                var none: AdamW? = nil
                try Checkpoint.load(from: checkpoint, into: model.namedParameters(), optimizer: &none)
            }
            let context = RowContext(target: t, params: model.parameterCount, environment: environment)
            log("[\(index + 1)/\(targets.count)] \(t.experiment)/\(t.run): \(t.mixerLabel), \(context.params) parameters, "
                + (t.isTrained ? "trained weights\(t.isFinished ? "" : " (unfinished run: its last checkpoint)")" : "random weights")
                + ", lengths \(lengths.map(String.init).joined(separator: ", "))")
            if e.quality && !t.isTrained && index == 0 {
                log("  quality needs trained weights: measuring throughput and memory only")
            }

            if needsTrainLoss, let rows = trainLossRows(t, context) {
                csv.append(rows); written += rows
                done.insert(key(t.experiment, t.run, t.config.data.seqLen, .trainLoss))
            }
            for l in lengths {
                var summary: [String] = []
                if wantQuality && !done.contains(key(t.experiment, t.run, l, .quality)) {
                    let rows = try measureQuality(t, model: model, length: l, context: context, timings: &timings)
                    csv.append(rows); written += rows; summary += describe(rows)
                }
                if e.throughput && !done.contains(key(t.experiment, t.run, l, .train)) {
                    let rows = measureTraining(t, model: model, length: l, context: context, timings: &timings)
                    csv.append(rows); written += rows; summary += describe(rows)
                }
                if (e.throughput || e.memory) && !done.contains(key(t.experiment, t.run, l, .inference)) {
                    let rows = measureInference(t, model: model, length: l, context: context, timings: &timings)
                    csv.append(rows); written += rows; summary += describe(rows)
                }
                if !summary.isEmpty { log("  T=\(l): " + summary.joined(separator: ", ")) }
            }
        }
        return written
    }

    /// Rebuilds the budget history from rows measured earlier (a resumed evaluation).
    static func recordTiming(_ r: EvalRow, into timings: inout Timings, decodeTokens: Int) {
        guard let v = r.value, v > 0 else { return }
        switch r.metric {
        case "train_tokens_per_s": timings.add("train", r.seqLen, Double(r.batch * r.seqLen) / v)
        case "prefill_tokens_per_s": timings.add("prefill", r.seqLen, Double(r.batch * r.seqLen) / v)
        case "decode_tokens_per_s": timings.add("decode", r.seqLen, Double(r.batch * decodeTokens) / v)
        default: break
        }
    }

    struct RowContext {
        let target: EvalTarget
        let params: Int
        let environment: EvalEnvironment
        func row(_ metric: String, _ value: Double?, length: Int, batch: Int, note: String = "") -> EvalRow {
            EvalRow(experiment: target.experiment, run: target.run, mixer: target.mixerLabel, dModel: target.config.model.dModel,
                    nLayers: target.config.model.nLayers, params: params, seqLen: length, batch: batch, threads: environment.threads,
                    metric: metric, value: value, unit: EvalMetric.unit(metric), gitRev: environment.gitRev,
                    timestamp: environment.now(), note: note)
        }
    }

    func describe(_ rows: [EvalRow]) -> [String] {
        rows.compactMap { r in
            guard ["val_loss", "accuracy", "train_tokens_per_s", "prefill_tokens_per_s", "decode_tokens_per_s", "state_bytes"].contains(r.metric)
            else { return nil }
            return "\(r.metric) " + (r.value.map { EvalFormat.value($0, unit: r.unit) } ?? "skipped")
        }
    }

    func skipNote(_ kind: String, _ predicted: Double, budget: Double) -> String {
        String(format: "skipped: %@ predicted to take %.0f s > eval.max_seconds %.0f", kind, predicted, budget)
    }

    /// The mean training loss over the last steps of the run's metrics.csv, at the training length.
    func trainLossRows(_ t: EvalTarget, _ c: RowContext) -> [EvalRow]? {
        guard let dir = t.runDirectory,
              let text = try? String(contentsOf: dir.appendingPathComponent("metrics.csv"), encoding: .utf8) else { return nil }
        let losses = text.split(separator: "\n").compactMap { line -> Double? in
            let f = line.split(separator: ",")
            return f.count == 4 && f[1] == "train" && f[2] == "loss" ? Double(f[3]) : nil
        }
        guard !losses.isEmpty else { return nil }
        let last = losses.suffix(10)
        return [c.row("train_loss", last.reduce(0, +) / Double(last.count), length: t.config.data.seqLen, batch: t.config.train.batchSize,
                      note: "mean of the last \(last.count) training steps")]
    }

    func measureQuality(_ t: EvalTarget, model: LanguageModel, length l: Int, context c: RowContext, timings: inout Timings) throws -> [EvalRow] {
        let batch = t.config.train.batchSize
        let metrics: [String]
        let data = try qualityData(t, length: l)
        switch data {
        case .text: metrics = ["val_loss", "perplexity"]
        case .mqar(_, let kv): metrics = ["accuracy"] + (kv.count > 1 ? kv.map { "accuracy_kv\($0)" } : [])
        }
        if let p = timings.predict("quality", l), p > t.config.eval.maxSeconds {
            let note = skipNote("quality", p, budget: t.config.eval.maxSeconds)
            return metrics.map { c.row($0, nil, length: l, batch: batch, note: note) }
        }
        let t0 = monotonicSeconds()
        let values: [String: Double]
        switch data {
        case .text(let batches): values = ExperimentRunner.textMetrics(model, batches)
        case .mqar(let batches, _): values = ExperimentRunner.mqarMetrics(model, batches)
        }
        timings.add("quality", l, monotonicSeconds() - t0)
        return metrics.map { m in
            var note = ""
            if case .mqar(_, let kv) = data, m == "accuracy" { note = "kv pairs \(kv.map(String.init).joined(separator: ", "))" }
            return c.row(m, values[m], length: l, batch: batch, note: note)
        }
    }

    /// Random token ids (and next-token targets) for throughput runs.
    static func tokens(count: Int, vocabulary: Int, seed: UInt64) -> [Int] {
        var g = SeededGenerator(seed: seed)
        return (0..<count).map { _ in g.nextInt(below: vocabulary) }
    }

    func measureTraining(_ t: EvalTarget, model: LanguageModel, length l: Int, context c: RowContext, timings: inout Timings) -> [EvalRow] {
        let b = t.config.eval.batchSize, budget = t.config.eval.maxSeconds
        if let p = timings.predict("train", l), p > budget {
            let note = skipNote("training step", p, budget: budget)
            return ["train_tokens_per_s", "train_peak_rss_bytes"].map { c.row($0, nil, length: l, batch: b, note: note) }
        }
        let vocabulary = t.config.data.modelVocabulary
        let ids = Evaluator.tokens(count: b * l, vocabulary: vocabulary, seed: 11)
        let targets = Evaluator.tokens(count: b * l, vocabulary: vocabulary, seed: 12)
        let parameters = model.namedParameters()
        let (seconds, peak, isolated) = PeakMemory.measure {
            timeRuns { timed in
                timed {
                    let loss = model.loss(ids, targets: targets, batch: b, length: l)
                    loss.backward()
                }
                for p in parameters { p.variable.zeroGrad() }
            }
        }
        timings.add("train", l, seconds)
        return [c.row("train_tokens_per_s", Double(b * l) / seconds, length: l, batch: b, note: "forward + backward"),
                c.row("train_peak_rss_bytes", peak.map(Double.init), length: l, batch: b,
                      note: isolated ? "" : "process peak so far (the high-water mark cannot be reset here)")]
    }

    func measureInference(_ t: EvalTarget, model: LanguageModel, length l: Int, context c: RowContext, timings: inout Timings) -> [EvalRow] {
        let e = t.config.eval
        let b = e.batchSize, budget = e.maxSeconds
        let d = t.config.model.dModel
        var metrics: [String] = []
        if e.throughput { metrics.append("prefill_tokens_per_s") }
        if e.memory { metrics += ["state_bytes", "state_bytes_analytic", "decode_bytes_read_per_token", "decode_tokens_read_per_token"] }
        if e.throughput { metrics.append("decode_tokens_per_s") }
        metrics.append("peak_rss_bytes")
        if let p = timings.predict("prefill", l), p > budget {
            // The state after L tokens needs the prefill, so memory is skipped with it.
            let note = skipNote("prefill", p, budget: budget)
            return metrics.map { c.row($0, nil, length: l, batch: b, note: note) }
        }
        let vocabulary = t.config.data.modelVocabulary
        let ids = Evaluator.tokens(count: b * l, vocabulary: vocabulary, seed: 13)
        let next = Evaluator.tokens(count: b * 8 * e.decodeTokens, vocabulary: vocabulary, seed: 14)
        var values: [String: Double] = [:]
        var notes: [String: String] = [:]
        let (_, peak, isolated) = PeakMemory.measure {
            var state = model.initialState(batch: b)
            if e.throughput {
                let seconds = timeRuns { timed in
                    var s = model.initialState(batch: b)
                    timed { _ = model.step(ids, batch: b, length: l, state: &s) }
                    state = s
                }
                timings.add("prefill", l, seconds)
                values["prefill_tokens_per_s"] = Double(b * l) / seconds
            } else {
                _ = model.step(ids, batch: b, length: l, state: &state)
            }
            precondition(state.position == l, "eval: decode state at position \(state.position) after prefilling \(l) tokens")
            // The state holding the context of L tokens, measured from its tensors, beside the formula.
            values["state_bytes"] = Double(state.byteCount)
            values["state_bytes_analytic"] = Double(t.config.model.layerMixers.reduce(0) {
                $0 + $1.config.stateBytes(batch: b, length: l, dModel: d)
            })
            // Token L + 1: what decoding one token after a context of L reads.
            _ = model.step(Array(next[0..<b]), batch: b, length: 1, state: &state)
            values["decode_bytes_read_per_token"] = Double(state.bytesReadLastStep) / Double(b)
            values["decode_tokens_read_per_token"] = Double(state.tokensReadLastStep) / Double(t.config.model.nLayers)
            notes["decode_bytes_read_per_token"] = "all layers, per sequence"
            notes["decode_tokens_read_per_token"] = "context tokens read per layer, per sequence"
            guard e.throughput else { return }
            if let p = timings.predict("decode", l), p > budget {
                notes["decode_tokens_per_s"] = skipNote("decode", p, budget: budget)
                return
            }
            // At least decode_tokens tokens, more (up to 8×) until 0.2 s have passed.
            var decoded = 0
            let t0 = monotonicSeconds()
            var elapsed = 0.0
            while decoded < e.decodeTokens || (elapsed < 0.2 && decoded < 8 * e.decodeTokens - 1) {
                let start = (decoded + 1) * b
                _ = model.step(Array(next[start..<(start + b)]), batch: b, length: 1, state: &state)
                decoded += 1
                elapsed = monotonicSeconds() - t0
            }
            timings.add("decode", l, elapsed * Double(e.decodeTokens) / Double(decoded))
            values["decode_tokens_per_s"] = Double(b * decoded) / elapsed
            notes["decode_tokens_per_s"] = "one token at a time after a context of \(l), \(decoded) tokens"
        }
        values["peak_rss_bytes"] = peak.map(Double.init)
        notes["peak_rss_bytes"] = isolated ? "prefill and decode" : "process peak so far (the high-water mark cannot be reset here)"
        if e.throughput { notes["prefill_tokens_per_s"] = "one pass over \(l) tokens from an empty state" }
        return metrics.map { c.row($0, values[$0], length: l, batch: b, note: notes[$0] ?? "") }
    }
}
