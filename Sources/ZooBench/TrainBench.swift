import Foundation
import CBLAS
import ZooTensor
import ZooAutograd
import ZooNN
import ZooMixers
import ZooModels
import ZooExperiment

/// `zoo bench train`: one AdamW training step per mixer on the tiny LM of ../shared/bench/PEERS.md
/// (vocab 256, d_model 128, 4 layers of mixer + MLP, RMSNorm, B = 8, L = 512), in tokens/s, with the
/// model's matmul FLOPs per second against the sgemm ceiling measured just before each mixer.
///
/// Mixer settings follow the peer's: attention 2 heads × 64 (no positional encoding, as the peer);
/// Mamba expand 2 (E = 256), N = 16, dt rank 8, conv 4; Mamba-2 and log-linear 4 heads × 64, N = 64,
/// conv 4, chunk 64; NSA 2 query heads, 1 KV head × 64, paper block sizes.
///
/// With `profile`, each mixer then runs `steps` more steps under TapeProfiler and the report adds
/// where a step's time goes, per operation on the tape.
///
/// With `compareGemm`, each mixer then runs 3 × `steps` more steps rotating through three ways of
/// computing the products: zoo's (the default: the skinny GEMM of SkinnyGemm.swift, a layer's
/// projections fused as in Projections.swift, the GELU MLP one node with its GELU on each block of
/// the product's rows, `geluMLP`), the skinny GEMM unfused (each projection its own product and the
/// wide ones split afterwards; the MLP a product, a GELU pass and a product), and OpenBLAS for every
/// product (unfused). The report adds the three medians: all sides see the same machine, step by step.
///
/// The PyTorch column is PEERS.md's figures unless `peerCSV` names a `bench_peers.py lm` CSV taken
/// in the same session (see `PeerResults`); a mixer missing from that file shows "–".
public func runTrainBenchmark(mixers requested: [String]? = nil, batch: Int = 8, length: Int = 512, steps: Int = 3,
                              profile: Bool = false, compareGemm: Bool = false, peerCSV: String? = nil) throws -> String {
    let peerSettings: [String: String] = [
        "attention": "{type: attention, heads: 2, kv_heads: 2, head_dim: 64, rotary: false}",
        "mamba": "{type: mamba, d_state: 16, expand: 2, dt_rank: 8, d_conv: 4}",
        "mamba2": "{type: mamba2, d_state: 64, head_dim: 64, expand: 2, chunk: 64}",
        "loglinear_mamba2": "{type: loglinear_mamba2, d_state: 64, head_dim: 64, expand: 2, chunk: 64}",
        "nsa": "{type: nsa, heads: 2, kv_heads: 1, head_dim: 64}",
    ]
    let peerTokensPerSecond: [String: Double] = try peerCSV.map { try PeerResults.trainingTokensPerSecond(csv: $0) }
        ?? ["attention": 15198, "mamba2": 8266, "loglinear_mamba2": 6489, "mamba": 1561, "nsa": 380]
    let names = (requested ?? MixerRegistry.typeNames).filter { MixerRegistry.configType(named: $0) != nil }
    var report = [benchmarkHeader("zoo bench train (vocab 256, d_model 128, 4 layers, B=\(batch), L=\(length), AdamW)")]
    report.append(peerCSV.map { "PyTorch tokens/s: measured side by side, from \($0)" }
                  ?? "PyTorch tokens/s: ../shared/bench/PEERS.md (another day's machine; --peer-csv compares with figures taken now)")

    // The sgemm ceiling of this machine right now (OpenBLAS with all threads, 1024²). Shared
    // machines drift by ±25 % within minutes, so it is measured again before each mixer and each
    // row is compared with the ceiling taken next to it.
    let n = 1024
    var g = SeededGenerator(seed: 1)
    let a = Tensor.normal([n, n], generator: &g), b = Tensor.normal([n, n], generator: &g)
    var c = Tensor.zeros([n, n])
    func measureCeiling() -> Double {
        let pc = c.mutablePointer()
        let time = withBLASThreads(ZooThreads.count) {
            measure(repeats: 5, minSeconds: 0.3) {
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(n), Int32(n), Int32(n), 1, a.pointer, Int32(n), b.pointer, Int32(n), 0, pc, Int32(n))
            }.median
        }
        usleep(150_000)   // let OpenBLAS's spinning workers go idle before the model's steps
        return 2.0 * Double(n * n * n) / time / 1e9
    }

    var profiles: [String] = []
    var gemmTable = Table(["mixer", "step ms, zoo", "unfused", "OpenBLAS", "unfused ÷ zoo", "OpenBLAS ÷ zoo"])
    var table = Table(["mixer", "params", "step ms", "fwd ms", "bwd ms", "opt ms", "tokens/s", "PyTorch tokens/s", "× PyTorch", "matmul GFLOP/s", "sgemm ceiling", "% of sgemm"])
    for name in names {
        let mixerYAML = peerSettings[name] ?? name
        let yaml = """
        model: {d_model: 128, n_layers: 4, mixer: \(mixerYAML), mlp: gelu, mlp_hidden: 512}
        data: {task: text, seq_len: \(length)}
        train: {batch_size: \(batch)}
        """
        let config: ExperimentConfig
        do { config = try ConfigLoader.load(yaml: yaml, file: "bench-train(\(name))") }
        catch { report.append("\(name): skipped (\(error))"); continue }
        let shape = ModelShape(vocabularySize: 256, dModel: 128, mixers: config.model.layerMixers, mlp: .gelu, mlpHidden: 512)
        let model = LanguageModel(shape, seed: 0)
        let ceiling = measureCeiling()
        let params = model.namedParameters()
        var opt = AdamW(weightDecay: 0.1)
        var rng = SeededGenerator(seed: 2)
        let ids = (0..<(batch * (length + 1))).map { _ in rng.nextInt(below: 256) }
        var inputs: [Int] = [], targets: [Int] = []
        for r in 0..<batch {
            let start: Int = r * (length + 1)
            inputs += ids[start..<(start + length)]
            targets += ids[(start + 1)..<(start + length + 1)]
        }
        // Each step is also split into its phases (forward with the loss, backward, clipping with
        // the optimizer update), so a slow mixer shows where its time goes.
        var phases: [[Double]] = [[], [], []]
        func trainingStep() {
            let t0 = now()
            let loss = model.loss(inputs, targets: targets, batch: batch, length: length)
            let t1 = now()
            loss.backward()
            let t2 = now()
            clipGradientNorm(params, maxNorm: 1)
            opt.step(params, learningRate: 1e-3)
            for p in params { p.variable.zeroGrad() }
            let t3 = now()
            for (i, d) in [t1 - t0, t2 - t1, t3 - t2].enumerated() { phases[i].append(d) }
        }
        let t = measure(warmup: 1, repeats: steps, minSeconds: 0) { trainingStep() }.median
        let phaseMedians = phases.map { Measurement(samples: Array($0.dropFirst())).median }
        if profile {
            TapeProfiler.start()
            for _ in 0..<steps { TapeProfiler.mark(); trainingStep() }
            profiles.append(renderTapeProfile(TapeProfiler.stop(), mixer: name, steps: steps,
                                              optimizerSeconds: phases[2].suffix(steps).reduce(0, +)))
        }
        if compareGemm {
            // (skinny GEMM, fused products) for each of the three ways, rotated step by step.
            let ways: [(Bool, Bool)] = [(true, true), (true, false), (false, false)]
            var samples: [[Double]] = [[], [], []]
            for i in 0..<(3 * steps) {
                (GemmPolicy.useSkinny, GemmPolicy.fuseProjections) = ways[i % 3]
                GemmPolicy.fuseMLP = GemmPolicy.fuseProjections
                let start = now()
                trainingStep()
                samples[i % 3].append(now() - start)
            }
            (GemmPolicy.useSkinny, GemmPolicy.fuseProjections, GemmPolicy.fuseMLP) = (true, true, true)
            let ms = samples.map { Measurement(samples: $0).median }
            gemmTable.add([name] + ms.map { fmt($0 * 1000) } + [fmt(ms[1] / ms[0], 2), fmt(ms[2] / ms[0], 2)])
        }
        let tokens = Double(batch * length)
        // Matmul FLOPs of a step: 6 per weight per token for the dense layers and the tied head,
        // plus attention's score and value products (causal: 2·T²·d forward, ×3.5 with backward).
        let nonEmbedding = Double(params.filter { $0.name != "embedding.weight" }.reduce(0) { $0 + $1.variable.value.count })
        var flops = 6 * (nonEmbedding + 256 * 128) * tokens
        if name == "attention" {
            let perLayer: Double = 3.5 * 2 * Double(batch) * 2 * Double(length) * Double(length) * 64   // H = 2, d = 64
            flops += 4 * perLayer
        }
        let gflops = flops / t / 1e9
        let peer = peerTokensPerSecond[name]
        table.add([name, String(model.parameterCount), fmt(t * 1000)] + phaseMedians.map { fmt($0 * 1000) } + [fmt(tokens / t, 0), peer.map { fmt($0, 0) } ?? "–",
                   peer.map { fmt(tokens / t / $0, 2) } ?? "–", fmt(gflops), fmt(ceiling), fmt(100 * gflops / ceiling)])
    }
    report.append("sgemm ceiling: 1024² with \(ZooThreads.count) OpenBLAS threads, GFLOP/s, measured just before each mixer's steps")
    report.append(table.render())
    report.append("goals: attention ≥ 1.3× PyTorch (~78 % of the ceiling), mamba2 and log-linear ≥ 2×, mamba ≥ 10×, nsa ≥ 20×")
    if compareGemm {
        report.append("\n# step ms with the products computed three ways, steps rotating in one process, medians of \(steps) each:\n"
                      + "# zoo (skinny GEMM, fused projections and MLP), skinny GEMM unfused, OpenBLAS (unfused)\n"
                      + gemmTable.render())
    }
    report += profiles
    return report.joined(separator: "\n")
}

/// One mixer's tape profile: ms per step by operation, forward and backward, with its share of
/// the step (the optimizer, which is not on the tape, as a last line).
func renderTapeProfile(_ entries: [TapeProfiler.Entry], mixer: String, steps: Int, optimizerSeconds: Double) -> String {
    let perStep = 1000 / Double(max(steps, 1))
    let total = entries.reduce(optimizerSeconds) { $0 + $1.forwardSeconds + $1.backwardSeconds }
    var table = Table(["operation", "calls/step", "forward ms", "backward ms", "total ms", "% of step"])
    for e in entries {
        let sum = e.forwardSeconds + e.backwardSeconds
        table.add([e.operation, String(e.calls / max(steps, 1)), fmt(e.forwardSeconds * perStep, 2), fmt(e.backwardSeconds * perStep, 2),
                   fmt(sum * perStep, 2), fmt(100 * sum / total)])
    }
    table.add(["clipping + AdamW (not on the tape)", "–", "–", "–", fmt(optimizerSeconds * perStep, 2), fmt(100 * optimizerSeconds / total)])
    return """

    # tape profile, \(mixer): \(steps) more steps, ms per step; a node's forward is the time since the previous node was recorded
    \(table.render())
    """
}
