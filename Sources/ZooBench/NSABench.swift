import Foundation
import ZooTensor
import ZooKernels

/// `zoo bench nsa`: NSA's fast kernels at the paper's sizes (B = 1, Hq = 4, Hkv = 1, d = 64, l = 32,
/// d = 16, l′ = 64, n = 16, w = 512), one K/V shared by the three branches as in the PyTorch
/// references, compressed by mean pooling. Forward = compression + `nsaForward` (selection
/// included); forward+backward adds `nsaBackward` and the compression's backward.
///
/// Goals (issue 7): ≥ 20× the PyTorch references' ~0.7–1k tokens/s forward+backward at T ≥ 2048;
/// faster than zoo's flash attention from T = 8192, ≥ 3× faster at T = 32768 in the forward pass.
/// `baseline` times a full causal attention forward and forward+backward at the same shapes, in the
/// same run, for the speed-up columns: zoo's flash attention by default (`flashAttentionBaseline`).
public struct NSABenchBaseline: Sendable {
    public let name: String
    public let forward: @Sendable (_ q: Tensor, _ k: Tensor, _ v: Tensor) -> Void
    public let forwardBackward: @Sendable (_ q: Tensor, _ k: Tensor, _ v: Tensor, _ dO: Tensor) -> Void
    public init(name: String, forward: @escaping @Sendable (Tensor, Tensor, Tensor) -> Void,
                forwardBackward: @escaping @Sendable (Tensor, Tensor, Tensor, Tensor) -> Void) {
        self.name = name; self.forward = forward; self.forwardBackward = forwardBackward
    }
}

/// CPU seconds (user + system, all threads of the process) spent in `body`.
func processCPUSeconds(_ body: () -> Void) -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts)
    let t0 = Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
    body()
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9 - t0
}

/// Causal flash attention forward on [B, T, H, d] tensors: the shape, output and log-sum-exp.
private func flashForward(_ q: Tensor, _ k: Tensor, _ v: Tensor) -> (shape: AttentionShape, output: Tensor, logSumExp: Tensor) {
    let s = AttentionShape(batch: q.shape[0], queryLength: q.shape[1], keyLength: k.shape[1], queryHeads: q.shape[2],
                           keyValueHeads: k.shape[2], headDim: q.shape[3], valueDim: v.shape[3])
    var o = Tensor(uninitializedShape: [s.batch, s.queryLength, s.queryHeads, s.valueDim])
    var lse = Tensor(uninitializedShape: [s.batch, s.queryHeads, s.queryLength])
    flashAttentionForward(q: q.pointer, k: k.pointer, v: v.pointer, shape: s, options: AttentionOptions(causal: true),
                          output: o.mutablePointer(), logSumExp: lse.mutablePointer())
    return (s, o, lse)
}

/// Zoo's flash attention (causal, Hq = 4 over Hkv = 1 as NSA's inputs, d = 64): forward, and
/// forward + backward.
public let flashAttentionBaseline = NSABenchBaseline(name: "flash", forward: { q, k, v in
    _ = flashForward(q, k, v)
}, forwardBackward: { q, k, v, dO in
    let (s, o, lse) = flashForward(q, k, v)
    var dq = Tensor(uninitializedShape: q.shape), dk = Tensor(uninitializedShape: k.shape), dv = Tensor(uninitializedShape: v.shape)
    flashAttentionBackward(q: q.pointer, k: k.pointer, v: v.pointer, output: o.pointer, logSumExp: lse.pointer,
                           outputGradient: dO.pointer, shape: s, options: AttentionOptions(causal: true),
                           queryGradient: dq.mutablePointer(), keyGradient: dk.mutablePointer(), valueGradient: dv.mutablePointer())
})

/// `peerCSV` names a `bench_peers.py mixers` CSV taken in the same session: its `nsa`/`ref`/`fwdbwd`
/// rows replace PEERS.md's figures in the "ref tok/s" and "× ref" columns (lengths it lacks show "–").
public func runNSABenchmark(lengths: [Int] = [1024, 2048, 4096, 8192, 16384, 32768], backward: Bool = true,
                            baseline: NSABenchBaseline? = flashAttentionBaseline, peerCSV: String? = nil,
                            progress: ((String) -> Void)? = nil) throws -> String {
    let (B, Hq, Hk, d) = (1, 4, 1, 64)
    let o = NSAOptions()
    // The PyTorch reference (nsa_ref in ../shared/bench/ref_mixers.py), forward+backward tokens/s.
    let reference: [Int: Double] = try peerCSV.map { try PeerResults.mixerTokensPerSecond(csv: $0, mixer: "nsa", impl: "ref", mode: "fwdbwd") }
        ?? [256: 5622, 512: 1776, 1024: 996, 2048: 946, 4096: 827, 8192: 742]
    var report = [benchmarkHeader("zoo bench nsa"),
                  "# B=\(B) Hq=\(Hq) Hkv=\(Hk) d=\(d) l=\(o.compressBlock) stride=\(o.compressStride) l'=\(o.selectBlock) n=\(o.selectCount) w=\(o.window); K/V shared by the branches, mean-pool compression",
                  peerCSV.map { "# PyTorch ref: measured side by side, from \($0)" }
                  ?? "# PyTorch ref: ../shared/bench/PEERS.md (measured there up to T = 8192; --peer-csv compares with figures taken now)"]
    // CPU seconds (all threads) per run beside the wall-clock medians: on a shared machine the
    // wall clock mostly measures the neighbours; tok/CPU-s is the contention-robust figure.
    var header = ["T", "fwd ms", "fwd tok/s", "fwd CPU ms", "fwd+bwd ms", "fwd+bwd tok/s", "f+b CPU ms", "f+b tok/CPU-s", "vs 1k tok/s",
                  "ref tok/s", "× ref"]
    if let baseline { header += ["\(baseline.name) fwd ms", "fwd speed-up", "\(baseline.name) fwd+bwd ms", "fwd+bwd speed-up"] }
    var table = Table(header)
    for T in lengths {
        var g = SeededGenerator(seed: UInt64(T))
        let q = Tensor.normal([B, T, Hq, d], generator: &g)
        let k = Tensor.normal([B, T, Hk, d], generator: &g)
        let v = Tensor.normal([B, T, Hk, d], generator: &g)
        let gates = Tensor.normal([B, T, Hq, 3], generator: &g)
        let dO = Tensor.normal([B, T, Hq, d], generator: &g)
        func forward() -> (NSAInputs, NSAForwardResult) {
            let x = NSAInputs(q: q, kCmp: nsaCompressMean(k, options: o), vCmp: nsaCompressMean(v, options: o),
                              kSel: k, vSel: v, kWin: k, vWin: v, gates: gates)
            return (x, nsaForward(x, options: o))
        }
        // Long runs: fewer repeats (the median of 3 still resists one noisy run).
        let repeats = T >= 16384 ? 3 : 5, minSeconds = T >= 8192 ? 0.0 : 0.5
        var cpu: [Double] = []
        let fwd = measure(warmup: 1, repeats: repeats, minSeconds: minSeconds) { cpu.append(processCPUSeconds { _ = forward() }) }.median
        let fwdCPU = Measurement(samples: Array(cpu.dropFirst())).median
        var row = ["\(T)", fmt(fwd * 1e3, 1), fmt(Double(T) / fwd, 0), fmt(fwdCPU * 1e3, 1)]
        var both = Double.nan
        if backward {
            cpu = []
            both = measure(warmup: 1, repeats: repeats, minSeconds: minSeconds) {
                cpu.append(processCPUSeconds {
                    let (x, f) = forward()
                    let grads = nsaBackward(x, forward: f, outputGradient: dO, options: o)
                    _ = nsaCompressMeanBackward(grads.kCmp, tokens: T, options: o)
                    _ = nsaCompressMeanBackward(grads.vCmp, tokens: T, options: o)
                })
            }.median
            let bothCPU = Measurement(samples: Array(cpu.dropFirst())).median
            row += [fmt(both * 1e3, 1), fmt(Double(T) / both, 0), fmt(bothCPU * 1e3, 1), fmt(Double(T) / bothCPU, 0),
                    fmt(Double(T) / both / 1000, 1) + "×"]
            row += reference[T].map { [fmt($0, 0), fmt(Double(T) / both / $0, 1) + "×"] } ?? ["–", "–"]
        } else {
            row += ["–", "–", "–", "–", "–", "–", "–"]
        }
        if let baseline {
            let bf = measure(warmup: 1, repeats: repeats, minSeconds: minSeconds) { baseline.forward(q, k, v) }.median
            row += [fmt(bf * 1e3, 1), fmt(bf / fwd, 2) + "×"]
            if backward {
                let bb = measure(warmup: 1, repeats: repeats, minSeconds: minSeconds) { baseline.forwardBackward(q, k, v, dO) }.median
                row += [fmt(bb * 1e3, 1), fmt(bb / both, 2) + "×"]
            } else {
                row += ["–", "–"]
            }
        }
        table.add(row)
        progress?(row.joined(separator: "  "))
    }
    report.append(table.render())
    report.append("goals: fwd+bwd ≥ 20× the PyTorch refs' ~0.7–1k tok/s at T ≥ 2048; forward faster than flash attention from T = 8192, ≥ 3× at T = 32768")
    report.append("CPU ms = process CPU time per run, all threads (median); on a contended machine wall ms ≫ CPU ms / threads")
    return report.joined(separator: "\n")
}
