import Foundation
import ZooTensor
import ZooKernels

/// `zoo bench mamba2`: the SSD kernels at B=1, H=8, P=64, N=64, G=1, Q=64 over a range of lengths,
/// side by side in one run:
///   - chunked forward, and forward + backward (forward saving the chunk states, then backward:
///     the training path), in ms, tokens/s and GFLOP/s of the products the algorithm performs;
///   - the naive quadratic kernel (Double, O(T²)) forward and forward + backward, up to
///     `naiveMaxLength` (beyond that it is too slow);
///   - peak extra memory of forward + backward (tensors and scratch, counted by `MemoryMeter`) and
///     the process's peak RSS.
/// The PyTorch peer figures (ssd chunked64) are printed beside, for the ratio: PEERS.md's, or with
/// `peerCSV` those of a `bench_peers.py mixers` CSV taken in the same session.
public func runMamba2Benchmark(lengths: [Int] = [256, 512, 1024, 2048, 4096, 8192, 16384],
                               chunk: Int = 64, naiveMaxLength: Int = 1024, quick: Bool = false, peerCSV: String? = nil) throws -> String {
    let (H, P, N, G) = (8, 64, 64, 1)
    var report = [benchmarkHeader("zoo bench mamba2 (SSD kernels, B=1 H=\(H) P=\(P) N=\(N) G=\(G) Q=\(chunk))")]
    // PyTorch chunked64 tokens/s (fwd+bwd, fwd) by length; the fallback is PEERS.md's.
    let peer = try PeerResults.kernelTokensPerSecond(csv: peerCSV, mixer: "ssd", impl: "chunked64", fallback: [
        256: (56978, 127373), 512: (51117, 107614), 1024: (58152, 91175), 2048: (55548, 139924), 4096: (48145, 124571), 8192: (45647, 125881)])
    var table = Table(["T", "fwd ms", "fwd tok/s", "fwd GFLOP/s", "fwd+bwd ms", "fwd+bwd tok/s", "fwd+bwd GFLOP/s",
                       "× torch fwd", "× torch f+b", "best ms fwd", "best ms f+b", "CPU ms fwd", "CPU ms f+b", "naive fwd ms", "naive f+b ms",
                       "peak MB (f+b)", "RSS MB"])
    let options = SSDOptions(chunkSize: chunk)
    for T in lengths {
        let shape = SSDShape(batch: 1, length: T, heads: H, headDim: P, groups: G, stateSize: N)
        let inputs = benchmarkSSDInputs(shape, seed: UInt64(T))
        var g = SeededGenerator(seed: 7)
        let dY = Tensor.normal(shape.xShape, generator: &g)
        let repeats = quick ? 2 : 5
        var cpuF: [Double] = [], cpuFB: [Double] = []
        let fwdRun = measure(warmup: 1, repeats: repeats, minSeconds: quick ? 0.05 : 0.5) {
            let c0 = processCPUSeconds()
            _ = ssdChunkedForward(inputs, options: options)
            cpuF.append(processCPUSeconds() - c0)
        }
        let fwdBwdRun = measure(warmup: 1, repeats: repeats, minSeconds: quick ? 0.05 : 0.5) {
            let c0 = processCPUSeconds()
            let f = ssdChunkedForward(inputs, options: options, saveChunkStates: true)
            _ = ssdChunkedBackward(inputs, outputGradient: dY, chunkStates: f.chunkStates, options: options)
            cpuFB.append(processCPUSeconds() - c0)
        }
        let fwd = fwdRun.median, fwdBwd = fwdBwdRun.median
        let peak = MemoryMeter.measurePeak {
            let f = ssdChunkedForward(inputs, options: options, saveChunkStates: true)
            _ = ssdChunkedBackward(inputs, outputGradient: dY, chunkStates: f.chunkStates, options: options)
        }.peakExtraBytes
        let (flopsF, flopsB) = ssdChunkedFlops(shape, chunk: chunk)
        var naiveF = "–", naiveFB = "–"
        if T <= naiveMaxLength {
            let ref = SSDReference(inputs)
            let dYd = dY.doubles
            naiveF = fmt(measure(warmup: 0, repeats: 1, minSeconds: 0) { _ = ssdNaiveForward(ref) }.median * 1e3)
            if T <= naiveMaxLength / 2 {
                naiveFB = fmt(measure(warmup: 0, repeats: 1, minSeconds: 0) {
                    _ = ssdNaiveForward(ref)
                    _ = ssdNaiveBackward(ref, outputGradient: dYd)
                }.median * 1e3)
            }
        }
        let tokF = Double(T) / fwd, tokFB = Double(T) / fwdBwd
        let ratios = (PeerResults.ratio(tokF, over: peer[T]?.fwd), PeerResults.ratio(tokFB, over: peer[T]?.fwdBwd))
        table.add(["\(T)", fmt(fwd * 1e3, 2), fmt(tokF, 0), fmt(flopsF / fwd / 1e9), fmt(fwdBwd * 1e3, 2), fmt(tokFB, 0),
                   fmt((flopsF + flopsB) / fwdBwd / 1e9), ratios.0, ratios.1, fmt(fwdRun.best * 1e3, 2), fmt(fwdBwdRun.best * 1e3, 2),
                   fmt(Measurement(samples: cpuF).median * 1e3, 2), fmt(Measurement(samples: cpuFB).median * 1e3, 2), naiveF, naiveFB,
                   fmt(Double(peak) / 1e6, 1), fmt(Double(peakResidentBytes() ?? 0) / 1e6, 0)])
    }
    report.append(table.render())
    report.append("""
        fwd+bwd = forward saving the chunk states + backward (all eight gradients, incl. h0).
        GFLOP/s counts the products of the chunked algorithm (\(fmtFlopsNote)).
        × torch: tokens/s over PyTorch's chunked SSD from \(peerCSV ?? "../shared/bench/PEERS.md (another day; see --peer-csv)");
        goal ≥ 2 for T ≥ 1024 (≥ 110k tokens/s fwd+bwd at T = 2048). naive: Double, one run.
        best ms: fastest run (wall), the least disturbed by other load; CPU ms: median process CPU time per
        call (all threads).
        """)
    return report.joined(separator: "\n")
}

private let fmtFlopsNote = "forward 2q²P + 4qPN per head-chunk + 2q²N per group-chunk; backward 4q²P + 8qPN per head-chunk + 6q²N per group-chunk, with the chunk states saved"

/// Floating-point operations of the products in the chunked forward and backward.
public func ssdChunkedFlops(_ s: SSDShape, chunk: Int) -> (forward: Double, backward: Double) {
    var f = 0.0, b = 0.0
    var t0 = 0
    while t0 < s.length {
        let q = Double(min(chunk, s.length - t0))
        let (P, N) = (Double(s.headDim), Double(s.stateSize))
        let heads = Double(s.batch * s.heads), groups = Double(s.batch * s.groups)
        f += heads * (2 * q * q * P + 4 * q * P * N) + groups * 2 * q * q * N
        b += heads * (4 * q * q * P + 8 * q * P * N) + groups * 6 * q * q * N
        t0 += chunk
    }
    return (f, b)
}

/// Inputs shaped like a freshly initialised Mamba-2 layer: A = −U(1, 16), dt bias = softplus⁻¹ of
/// a log-uniform Δ in [1e-3, 0.1], small dt, unit-variance x, B, C.
public func benchmarkSSDInputs(_ s: SSDShape, seed: UInt64) -> SSDInputs {
    var g = SeededGenerator(seed: seed)
    let A = Tensor.uniform([s.heads], low: -16, high: -1, generator: &g)
    let bias = Tensor(shape: [s.heads], scalars: (0..<s.heads).map { _ in
        let dt = exp(Double(g.nextUniformFloat()) * (log(0.1) - log(1e-3)) + log(1e-3))
        return Float(dt + log(-expm1(-dt)))
    })
    return SSDInputs(x: Tensor.normal(s.xShape, generator: &g), dt: Tensor.normal(s.dtShape, std: 0.1, generator: &g),
                     A: A, B: Tensor.normal(s.bcShape, generator: &g), C: Tensor.normal(s.bcShape, generator: &g),
                     D: Tensor.ones([s.heads]), dtBias: bias)
}

/// CPU time used by the process so far (all threads), in seconds.
func processCPUSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
}
