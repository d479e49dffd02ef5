import Foundation
import ZooTensor
import ZooKernels

/// `zoo bench loglinear`: the log-linear Mamba-2 kernels at B=1, H=8, P=64, N=64, G=1, Q=64 over a
/// range of lengths, with zoo's own SSD kernels on the same inputs in the same run:
///   - chunked forward, and forward + backward (the training path: all gradients incl. λ), in ms
///     and tokens/s, for log-linear and SSD, and the time ratio log-linear / SSD;
///   - peak extra memory of forward + backward (tensors and scratch, counted by `MemoryMeter`) for
///     both, and the process's peak RSS.
/// The PyTorch peer figures (loglinear chunked64) are printed beside as a ratio: PEERS.md's, or with
/// `peerCSV` those of a `bench_peers.py mixers` CSV taken in the same session.
public func runLogLinearBenchmark(lengths: [Int] = [256, 512, 1024, 2048, 4096, 8192, 16384],
                                  chunk: Int = 64, quick: Bool = false, withSSD: Bool = true, peerCSV: String? = nil) throws -> String {
    let (H, P, N, G) = (8, 64, 64, 1)
    var report = [benchmarkHeader("zoo bench loglinear (log-linear Mamba-2 vs SSD kernels, B=1 H=\(H) P=\(P) N=\(N) G=\(G) Q=\(chunk))")]
    // PyTorch loglinear chunked64 tokens/s (fwd+bwd, fwd) by length; the fallback is PEERS.md's.
    let peer = try PeerResults.kernelTokensPerSecond(csv: peerCSV, mixer: "loglinear", impl: "chunked64", fallback: [
        256: (22657, 95270), 512: (27016, 54395), 1024: (26590, 52782), 2048: (20421, 48969), 4096: (15765, 49636), 8192: (12846, 37264)])
    var table = Table(["T", "LL fwd ms", "LL fwd tok/s", "LL f+b ms", "LL f+b tok/s", "× torch fwd", "× torch f+b",
                       "SSD fwd ms", "SSD f+b ms", "LL/SSD fwd", "LL/SSD f+b", "LL f+b CPU ms", "SSD f+b CPU ms", "CPU LL/SSD f+b", "LL peak MB", "SSD peak MB", "RSS MB"])
    let options = LogLinearOptions(chunkSize: chunk)
    let ssdOptions = SSDOptions(chunkSize: chunk)
    for T in lengths {
        let inputs = benchmarkLogLinearInputs(batch: 1, length: T, heads: H, headDim: P, groups: G, stateSize: N, seed: UInt64(T))
        let ssdInputs = SSDInputs(x: inputs.x, dt: inputs.dt, A: inputs.A, B: inputs.B, C: inputs.C, D: inputs.D,
                                  dtBias: inputs.dtBias)
        var g = SeededGenerator(seed: 7)
        let dY = Tensor.normal(inputs.x.shape, generator: &g)
        let repeats = quick ? 2 : 5, minSeconds = quick ? 0.05 : 0.5
        let llForward = measure(warmup: 1, repeats: repeats, minSeconds: minSeconds) {
            _ = logLinearChunkedForward(inputs, options: options, returnFinalState: false)
        }.median
        let llTrain = {
            _ = logLinearChunkedForward(inputs, options: options, returnFinalState: false)
            _ = logLinearChunkedBackward(inputs, outputGradient: dY, options: options)
        }
        var llCPU: [Double] = [], ssdCPU: [Double] = []
        let llBoth = measure(warmup: 1, repeats: repeats, minSeconds: minSeconds) {
            let c0 = cpuTime(); llTrain(); llCPU.append(cpuTime() - c0)
        }.median
        let ssdForward = !withSSD ? Double.nan : measure(warmup: 1, repeats: repeats, minSeconds: minSeconds) {
            _ = ssdChunkedForward(ssdInputs, options: ssdOptions)
        }.median
        let ssdTrain = {
            let f = ssdChunkedForward(ssdInputs, options: ssdOptions, saveChunkStates: true)
            _ = ssdChunkedBackward(ssdInputs, outputGradient: dY, chunkStates: f.chunkStates, options: ssdOptions)
        }
        let ssdBoth = !withSSD ? Double.nan : measure(warmup: 1, repeats: repeats, minSeconds: minSeconds) {
            let c0 = cpuTime(); ssdTrain(); ssdCPU.append(cpuTime() - c0)
        }.median
        if !withSSD { ssdCPU = [.nan] }
        let llPeak = MemoryMeter.measurePeak(llTrain).peakExtraBytes
        let ssdPeak = withSSD ? MemoryMeter.measurePeak(ssdTrain).peakExtraBytes : 0
        let tokF = Double(T) / llForward, tokFB = Double(T) / llBoth
        let ratios = (PeerResults.ratio(tokF, over: peer[T]?.fwd), PeerResults.ratio(tokFB, over: peer[T]?.fwdBwd))
        table.add(["\(T)", fmt(llForward * 1e3, 2), fmt(tokF, 0), fmt(llBoth * 1e3, 2), fmt(tokFB, 0), ratios.0, ratios.1,
                   fmt(ssdForward * 1e3, 2), fmt(ssdBoth * 1e3, 2), fmt(llForward / ssdForward, 2), fmt(llBoth / ssdBoth, 2),
                   fmt(Measurement(samples: llCPU).median * 1e3, 1), fmt(Measurement(samples: ssdCPU).median * 1e3, 1),
                   fmt(Measurement(samples: llCPU).median / Measurement(samples: ssdCPU).median, 2),
                   fmt(Double(llPeak) / 1e6, 1), fmt(Double(ssdPeak) / 1e6, 1), fmt(Double(peakResidentBytes() ?? 0) / 1e6, 0)])
    }
    report.append(table.render())
    report.append("""
        LL = log-linear (λ from softplus of N(0,1)), f+b = forward + backward (all gradients incl. λ; SSD saves its
        chunk states for the backward, log-linear recomputes its block states). × torch: tokens/s over PyTorch's
        loglinear_chunked(64) from \(peerCSV ?? "../shared/bench/PEERS.md (another day; see --peer-csv)"); goal ≥ 2.5 f+b for T ≥ 1024.
        CPU ms: process CPU time of one call, all threads (on a loaded machine wall time ≫ CPU time / threads).
        LL/SSD: time ratio in this run (CPU: of process CPU time, less sensitive to other load); goal ≤ 2.5 f+b at T = 8192. peak MB: extra tensor + scratch bytes of one f+b.
        """)
    return report.joined(separator: "\n")
}

/// Inputs shaped like a freshly initialised log-linear Mamba-2 layer: A = −U(1, 16), dt bias =
/// softplus⁻¹ of a log-uniform Δ in [1e-3, 0.1], small dt, unit-variance x, B, C, D = 1, and
/// λ = softplus(L ⊙ dl) with L = 1 and dl ~ N(0, 1).
public func benchmarkLogLinearInputs(batch: Int, length: Int, heads: Int, headDim: Int, groups: Int, stateSize: Int,
                                     seed: UInt64) -> LogLinearInputs {
    var g = SeededGenerator(seed: seed)
    let A = Tensor.uniform([heads], low: -16, high: -1, generator: &g)
    let bias = Tensor(shape: [heads], scalars: (0..<heads).map { _ in
        let dt = exp(Double(g.nextUniformFloat()) * (log(0.1) - log(1e-3)) + log(1e-3))
        return Float(dt + log(-expm1(-dt)))
    })
    let levels = logLinearLevelCount(tokens: length)
    return LogLinearInputs(
        x: Tensor.normal([batch, length, heads, headDim], generator: &g),
        dt: Tensor.normal([batch, length, heads], std: 0.1, generator: &g), A: A,
        B: Tensor.normal([batch, length, groups, stateSize], generator: &g),
        C: Tensor.normal([batch, length, groups, stateSize], generator: &g),
        D: Tensor.ones([heads]), dtBias: bias,
        lambda: Tensor.normal([batch, length, heads, levels], generator: &g).softplus())
}

/// CPU time used by the process so far (all threads), in seconds.
fileprivate func cpuTime() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
}
