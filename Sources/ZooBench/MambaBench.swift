import Foundation
import ZooTensor
import ZooKernels

/// `zoo bench mamba`: the selective scan kernels (issue 4), measured side by side in one run.
/// B = 1, D = 512, N = 16, z, D, delta_bias and softplus on, T over `lengths`:
///   - fast forward (saving checkpoints, as training does) and fast forward + backward, in the
///     channel-major layout ([B, D, L]) and in the token-major one ([B, L, D], what the Mamba layer
///     passes in training: its projections' output, no permutes);
///   - the naive Double reference (forward, and forward + its backward) while one run of it takes
///     under `naiveLimitSeconds` (predicted linearly from the previous length);
///   - ms (median), tokens/s, state updates/s (B·T·D·N per second), and memory: the MemoryMeter
///     peak of tensors and scratch allocated during one call (inputs excluded) plus the process
///     peak RSS after the row.
/// Goals (issue 4): ≥ 300k tokens/s forward and ≥ 100k tokens/s forward+backward at T = 2048.
public func runMambaBenchmark(lengths: [Int] = [256, 512, 1024, 2048, 4096, 8192, 16384],
                              channels: Int = 512, stateSize: Int = 16, naiveLimitSeconds: Double = 10,
                              quick: Bool = false) -> String {
    var report = [benchmarkHeader("zoo bench mamba (selective scan kernels)")]
    report.append("# B=1 D=\(channels) N=\(stateSize), z, D, delta_bias, softplus on; checkpoint interval \(SelectiveScanOptions().checkpointInterval)")
    var table = Table(["T", "kernel", "mode", "ms", "best ms", "CPU ms", "tokens/s", "state upd/s", "peak MB (meter)", "peak RSS MB"])
    var naiveForwardSeconds: Double? = nil, naiveBackwardSeconds: Double? = nil
    var previousLength = 0
    var goals: [String] = []
    for l in lengths {
        let s = SelectiveScanShape(batch: 1, channels: channels, length: l, stateSize: stateSize)
        let x = benchInputs(s, seed: UInt64(l))
        var g = SeededGenerator(seed: 99)
        let gradOut = Tensor.normal([1, channels, l], generator: &g)
        let updates = Double(l * channels * stateSize)
        func row(_ kernel: String, _ mode: String, _ seconds: Double, _ best: Double, _ cpuSeconds: Double, _ peak: Int?) {
            table.add(["\(l)", kernel, mode, fmt(seconds * 1e3, 2), fmt(best * 1e3, 2), fmt(cpuSeconds * 1e3, 2), fmt(Double(l) / seconds, 0),
                       String(format: "%.3g", updates / seconds),
                       peak.map { fmt(Double($0) / 1_048_576, 1) } ?? "–",
                       peakResidentBytes().map { fmt(Double($0) / 1_048_576, 0) } ?? "–"])
        }
        let repeats = quick ? 2 : 5
        // The fast kernels in both layouts (same values: token-major is a permuted copy).
        func timeFast(_ kernel: String, _ x: SelectiveScanInputs, _ gradOut: Tensor) -> (forward: Measurement, both: Measurement) {
            var cpu: [Double] = []
            let forward = measure(warmup: 1, repeats: repeats, minSeconds: quick ? 0.05 : 1.0) {
                let c0 = processCPUTime()
                _ = selectiveScanForward(x)
                cpu.append(processCPUTime() - c0)
            }
            let forwardPeak = MemoryMeter.measurePeak { _ = selectiveScanForward(x) }.peakExtraBytes
            row(kernel, "fwd", forward.median, forward.best, Measurement(samples: cpu).median, forwardPeak)
            cpu = []
            let both = measure(warmup: 1, repeats: repeats, minSeconds: quick ? 0.05 : 1.0) {
                let c0 = processCPUTime()
                let r = selectiveScanForward(x)
                _ = selectiveScanBackward(x, saved: r.saved!, gradOut: gradOut)
                cpu.append(processCPUTime() - c0)
            }
            let bothPeak = MemoryMeter.measurePeak {
                let r = selectiveScanForward(x)
                _ = selectiveScanBackward(x, saved: r.saved!, gradOut: gradOut)
            }.peakExtraBytes
            row(kernel, "fwd+bwd", both.median, both.best, Measurement(samples: cpu).median, bothPeak)
            return (forward, both)
        }
        let (forward, both) = timeFast("fast, [B,D,L]", x, gradOut)
        _ = timeFast("fast, [B,L,D]", tokenMajor(x), gradOut.permuted([0, 2, 1]))
        if l == 2048 {
            goals.append("T=2048: forward \(fmt(2048 / forward.median, 0)) tokens/s (goal ≥ 300000: \(fmt(2048 / forward.median / 3e5, 2))×), "
                         + "forward+backward \(fmt(2048 / both.median, 0)) tokens/s (goal ≥ 100000: \(fmt(2048 / both.median / 1e5, 2))×)")
        }

        // The naive reference: one timed run when it is predicted to fit the limit.
        let scale = previousLength > 0 ? Double(l) / Double(previousLength) : 1
        let reference = SelectiveScanReferenceInputs(x)
        if naiveLimitSeconds > 0 && (naiveForwardSeconds.map { $0 * scale < naiveLimitSeconds } ?? true) {
            let t0 = now(), c0 = processCPUTime()
            _ = selectiveScanNaive(reference)
            naiveForwardSeconds = now() - t0
            row("naive", "fwd", naiveForwardSeconds!, naiveForwardSeconds!, processCPUTime() - c0, nil)
            if (naiveBackwardSeconds.map { $0 * scale < naiveLimitSeconds } ?? true) {
                let gradOutDoubles = gradOut.doubles
                let t1 = now(), c1 = processCPUTime()
                _ = selectiveScanNaive(reference)
                _ = selectiveScanNaiveBackward(reference, gradOut: gradOutDoubles)
                naiveBackwardSeconds = now() - t1
                row("naive", "fwd+bwd", naiveBackwardSeconds!, naiveBackwardSeconds!, processCPUTime() - c1, nil)
            } else {
                naiveBackwardSeconds = .infinity
            }
        } else {
            naiveForwardSeconds = .infinity
        }
        previousLength = l
    }
    report.append(table.render())
    report.append(contentsOf: goals)
    report.append("CPU ms: process CPU time per call (all threads), which other processes on a shared machine do not inflate as much as wall time")
    report.append("peak MB (meter): bytes of tensors and scratch allocated during one call, inputs excluded (naive: Swift arrays, not metered)")
    return report.joined(separator: "\n")
}

/// Inputs as the Mamba block produces them: Δ from softplus(delta + bias) with bias =
/// softplus⁻¹(dt), dt log-uniform in [1e-3, 0.1]; A = −(1…N); unit-variance u, B, C, z.
func benchInputs(_ s: SelectiveScanShape, seed: UInt64) -> SelectiveScanInputs {
    var g = SeededGenerator(seed: seed)
    let (d, l, n) = (s.channels, s.length, s.stateSize)
    let bias = Tensor(shape: [d]) { buf in
        for i in 0..<d {
            let dt = exp(log(1e-3) + (log(0.1) - log(1e-3)) * g.nextUniformDouble())
            buf[i] = Float(dt + log(-expm1(-dt)))          // softplus⁻¹(dt)
        }
    }
    let a = Tensor(shape: [d, n]) { buf in for i in 0..<d { for k in 0..<n { buf[i * n + k] = -Float(k + 1) } } }
    return SelectiveScanInputs(
        u: Tensor.normal([1, d, l], generator: &g), delta: Tensor.normal([1, d, l], std: 0.1, generator: &g),
        A: a, B: Tensor.normal([1, 1, n, l], generator: &g), C: Tensor.normal([1, 1, n, l], generator: &g),
        D: Tensor.ones([d]), z: Tensor.normal([1, d, l], generator: &g), deltaBias: bias,
        initialState: nil, deltaSoftplus: true)
}

/// The same inputs in the token-major layout: u, delta, z [B, L, D]; B, C [B, L, G, N].
func tokenMajor(_ x: SelectiveScanInputs) -> SelectiveScanInputs {
    var t = x
    t.u = x.u.permuted([0, 2, 1]); t.delta = x.delta.permuted([0, 2, 1]); t.z = x.z?.permuted([0, 2, 1])
    t.B = x.B.permuted([0, 3, 1, 2]); t.C = x.C.permuted([0, 3, 1, 2])
    t.layout = .tokenMajor
    return t
}

/// CPU seconds used by this process so far (all threads).
func processCPUTime() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
}
