import Foundation
import CBLAS
import ZooTensor
import ZooKernels

/// Raw cblas_sgemm GFLOP/s at 2048² with OpenBLAS given all the worker threads: the ceiling the
/// attention kernels are compared with.
public func sgemmCeiling(size n: Int = 2048, seconds: Double = 0.5) -> Double {
    var g = SeededGenerator(seed: 7)
    let a = Tensor.normal([n, n], generator: &g), b = Tensor.normal([n, n], generator: &g)
    var c = Tensor.zeros([n, n])
    let pc = c.mutablePointer()
    let t = withBLASThreads(ZooThreads.count) {
        measure(warmup: 1, repeats: 3, minSeconds: seconds) {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(n), Int32(n), Int32(n), 1,
                        a.pointer, Int32(n), b.pointer, Int32(n), 0, pc, Int32(n))
        }.best
    }
    usleep(150_000)   // OpenBLAS's workers spin ~100 ms after a threaded call
    return 2 * Double(n * n * n) / t / 1e9
}

func cpuNow() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
}
/// Development probe: best process-CPU seconds of `body` (meaningful with one thread only).
public func cpuBest(_ runs: Int = 5, _ body: () -> Void) -> Double {
    body()
    var best = Double.infinity
    for _ in 0..<runs { let t0 = cpuNow(); body(); best = min(best, cpuNow() - t0) }
    return best
}

public func runAttentionBenchmark(lengths: [Int], quick: Bool = false) -> String {
    var report = [benchmarkHeader("zoo bench attention")]
    if ProcessInfo.processInfo.environment["ZOO_DEV"] != nil { return devProbe(lengths: lengths) }
    let ceiling = sgemmCeiling()
    report.append("sgemm ceiling \(fmt(ceiling)) GFLOP/s")
    var table = Table(["T", "fwd ms", "fwd GFLOP/s", "% ceiling"])
    for T in lengths {
        let shape = AttentionShape(batch: 1, queryLength: T, keyLength: T, queryHeads: 4, keyValueHeads: 4, headDim: 64)
        var g = SeededGenerator(seed: 1)
        let q = Tensor.normal([1, T, 4, 64], generator: &g), k = Tensor.normal([1, T, 4, 64], generator: &g)
        let v = Tensor.normal([1, T, 4, 64], generator: &g)
        var o = Tensor.zeros([1, T, 4, 64]), lse = Tensor.zeros([1, 4, T])
        let po = o.mutablePointer(), pl = lse.mutablePointer()
        let t = measure(warmup: 1, repeats: 5, minSeconds: 0.3) {
            flashAttentionForward(q: q.pointer, k: k.pointer, v: v.pointer, shape: shape, output: po, logSumExp: pl)
        }.best
        let flops = 2.0 * 4 * Double(T) * Double(T) * 64
        table.add(["\(T)", fmt(t * 1e3, 2), fmt(flops / t / 1e9), fmt(100 * flops / t / 1e9 / ceiling)])
    }
    report.append(table.render())
    return report.joined(separator: "\n")
}

func devProbe(lengths: [Int]) -> String {
    var g = SeededGenerator(seed: 7)
    let n = 1024
    let a = Tensor.normal([n, n], generator: &g), b = Tensor.normal([n, n], generator: &g)
    var c = Tensor.zeros([n, n])
    let pc = c.mutablePointer()
    let ts = cpuBest(5) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(n), Int32(n), Int32(n), 1, a.pointer, Int32(n), b.pointer, Int32(n), 0, pc, Int32(n))
    }
    let ceiling = 2 * Double(n * n * n) / ts / 1e9
    var out = ["1-thread CPU-time probe: sgemm 1024² \(fmt(ceiling)) GFLOP/s"]
    for T in lengths {
        let shape = AttentionShape(batch: 1, queryLength: T, keyLength: T, queryHeads: 4, keyValueHeads: 4, headDim: 64)
        let q = Tensor.normal([1, T, 4, 64], generator: &g), k = Tensor.normal([1, T, 4, 64], generator: &g)
        let v = Tensor.normal([1, T, 4, 64], generator: &g)
        var o = Tensor.zeros([1, T, 4, 64]), lse = Tensor.zeros([1, 4, T])
        let po = o.mutablePointer(), pl = lse.mutablePointer()
        let t = cpuBest(5) { flashAttentionForward(q: q.pointer, k: k.pointer, v: v.pointer, shape: shape, output: po, logSumExp: pl) }
        let dO = Tensor.normal([1, T, 4, 64], generator: &g)
        var dq = Tensor.zeros([1, T, 4, 64]), dk = dq, dv = dq
        let pdq = dq.mutablePointer(), pdk = dk.mutablePointer(), pdv = dv.mutablePointer()
        let tb = cpuBest(3) {
            flashAttentionForward(q: q.pointer, k: k.pointer, v: v.pointer, shape: shape, output: po, logSumExp: pl)
            flashAttentionBackward(q: q.pointer, k: k.pointer, v: v.pointer, output: po, logSumExp: pl, outputGradient: dO.pointer,
                                   shape: shape, queryGradient: pdq, keyGradient: pdk, valueGradient: pdv)
        }
        let flops = 2.0 * 4 * Double(T) * Double(T) * 64
        out.append("T=\(T) fwd \(fmt(flops / t / 1e9)) GFLOP/s = \(fmt(100 * flops / t / 1e9 / ceiling))%  fwd+bwd \(fmt(3.5 * flops / tb / 1e9)) GFLOP/s = \(fmt(100 * 3.5 * flops / tb / 1e9 / ceiling))%  (bwd alone \(fmt(2.5 * flops / (tb - t) / 1e9)))")
    }
    return out.joined(separator: "\n")
}
