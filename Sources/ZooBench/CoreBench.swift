import Foundation
import CBLAS
import ZooTensor
import ZooAutograd

/// `zoo bench core`: the foundation's speed, measured side by side in one run.
///   1. matmul through the Tensor API vs raw `cblas_sgemm` (OpenBLAS given all the threads):
///      square 512/1024/2048 and head-dim-64 attention shapes; goal ratio ≥ 0.95.
///   2. softmax over 4096-wide rows and element-wise exp / SiLU on 64 MiB (from DRAM), in GB/s
///      (one read + one write), against a memcpy of the same bytes; goal ≥ 0.6 of memcpy.
///   3. the tape's overhead per recorded op on small shapes, in µs; goal ≤ 2 µs.
public func runCoreBenchmark(quick: Bool = false) -> String {
    var report = [benchmarkHeader("zoo bench core")]
    let threads = ZooThreads.count

    // 1. Matmul.
    var mm = Table(["shape (m×n×k)", "Tensor GFLOP/s", "raw sgemm GFLOP/s", "ratio"])
    var ratios: [Double] = []
    let shapes: [(Int, Int, Int, Bool, String)] = [
        (512, 512, 512, false, ""), (1024, 1024, 1024, false, ""), (2048, 2048, 2048, false, ""),
        (4096, 4096, 64, true, " (QKᵀ)"), (4096, 64, 4096, false, " (PV)"), (128, 4096, 64, true, " (QKᵀ block)"),
    ]
    for (m, n, k, transB, label) in quick ? Array(shapes.prefix(2)) : shapes {
        var g = SeededGenerator(seed: 1)
        let a = Tensor.normal([m, k], generator: &g)
        let b = Tensor.normal(transB ? [n, k] : [k, n], generator: &g)
        var c = Tensor.zeros([m, n])
        let flops = 2.0 * Double(m * n * k)
        // Interleave the two so both see the same machine load.
        var apiSamples: [Double] = [], rawSamples: [Double] = []
        for _ in 0..<(quick ? 2 : 5) {
            apiSamples += measure(warmup: 1, repeats: 3, minSeconds: 0.1) { _ = Tensor.matmul(a, b, transB: transB) }.samples
            let pc = c.mutablePointer()
            rawSamples += withBLASThreads(threads) {
                measure(warmup: 1, repeats: 3, minSeconds: 0.1) {
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, transB ? CblasTrans : CblasNoTrans, Int32(m), Int32(n), Int32(k),
                                1, a.pointer, Int32(k), b.pointer, Int32(transB ? k : n), 0, pc, Int32(n))
                }.samples
            }
            usleep(150_000)   // let OpenBLAS's spinning workers go idle before the next API run
        }
        let api = flops / Measurement(samples: apiSamples).median / 1e9
        let raw = flops / Measurement(samples: rawSamples).median / 1e9
        ratios.append(api / raw)
        mm.add(["\(m)×\(n)×\(k)\(transB ? "ᵀ" : "")\(label)", fmt(api), fmt(raw), fmt(api / raw, 2)])
    }
    report.append("\n## matmul (Tensor API splits rows over \(threads) Swift workers; raw sgemm uses \(threads) OpenBLAS threads)\n" + mm.render())
    report.append("median ratio \(fmt(ratios.sorted()[ratios.count / 2], 2)) (goal ≥ 0.95)")

    // 1b. The training step's skinny products: zoo's skinny GEMM against OpenBLAS, both split
    // over the same workers (parallelGemm), samples interleaved.
    var skinny = Table(["product (tiny LM, 4096 tokens)", "skinny GFLOP/s", "OpenBLAS GFLOP/s", "ratio"])
    var skinnyRatios: [Double] = []
    let skinnyShapes: [(String, Bool, Bool, Int, Int, Int)] = [
        ("x·Wᵀ, 128 → 128", false, true, 4096, 128, 128), ("x·Wᵀ, 128 → 512", false, true, 4096, 512, 128),
        ("x·Wᵀ, 512 → 128", false, true, 4096, 128, 512), ("dy·W, 512 → 128", false, false, 4096, 128, 512),
        ("dy·W, 128 → 512", false, false, 4096, 512, 128),
        ("dyᵀ·x, 128 × 128", true, false, 128, 128, 4096), ("dyᵀ·x, 512 × 128", true, false, 512, 128, 4096),
        ("dyᵀ·x, 128 × 512", true, false, 128, 512, 4096),
    ]
    for (label, transA, transB, m, n, k) in quick ? Array(skinnyShapes.prefix(2)) : skinnyShapes {
        var g = SeededGenerator(seed: 3)
        let a = Tensor.normal(transA ? [k, m] : [m, k], generator: &g)
        let b = Tensor.normal(transB ? [n, k] : [k, n], generator: &g)
        var c = Tensor.zeros([m, n])
        let pc = c.mutablePointer()
        let flops = 2.0 * Double(m * n * k)
        var own: [Double] = [], blas: [Double] = []
        for round in 0..<(quick ? 2 : 6) {
            for useSkinny in round % 2 == 0 ? [true, false] : [false, true] {
                GemmPolicy.useSkinny = useSkinny
                let samples = measure(warmup: 1, repeats: 3, minSeconds: 0.05) {
                    parallelGemm(transA: transA, transB: transB, m: m, n: n, k: k, a: a.pointer, b: b.pointer, c: pc)
                }.samples
                if useSkinny { own += samples } else { blas += samples }
            }
        }
        GemmPolicy.useSkinny = true
        let ownRate = flops / Measurement(samples: own).median / 1e9, blasRate = flops / Measurement(samples: blas).median / 1e9
        skinnyRatios.append(ownRate / blasRate)
        skinny.add([label, fmt(ownRate), fmt(blasRate), fmt(ownRate / blasRate, 2)])
    }
    report.append("\n## skinny products (SkinnyGemm.swift against single-threaded OpenBLAS, both split over \(threads) workers; operands hot in cache)\n"
                  + skinny.render())
    report.append("median ratio \(fmt(skinnyRatios.sorted()[skinnyRatios.count / 2], 2)) (inside a training step, where operands arrive from other cores and memory, the gain is larger: `zoo bench train`)")

    // 2. Bandwidth-bound element-wise work against memcpy.
    let rows = quick ? 256 : 4096, cols = 4096
    var g = SeededGenerator(seed: 2)
    let x = Tensor.normal([rows, cols], generator: &g)
    let bytes = Double(2 * x.byteCount)
    var dst = Tensor.zeros([rows, cols])
    let memcpyTime = measure(repeats: 7, minSeconds: 0.3) {
        let pd = SendablePointer(dst.mutablePointer()), ps = SendablePointer(UnsafeMutablePointer(mutating: x.pointer))
        let n = x.count
        ZooThreads.parallelFor(n, minChunk: 1 << 16) { r in (pd + r.lowerBound).update(from: ps + r.lowerBound, count: r.count) }
    }.median
    var bw = Table(["kernel (\(rows)×\(cols) floats)", "GB/s", "memcpy GB/s", "fraction of memcpy"])
    for (name, body) in [("softmax rows", { _ = x.softmax() }), ("exp", { _ = x.exp() }), ("SiLU", { _ = x.silu() })] as [(String, () -> Void)] {
        let t = measure(repeats: 7, minSeconds: 0.3, body).median
        bw.add([name, fmt(bytes / t / 1e9), fmt(bytes / memcpyTime / 1e9), fmt(memcpyTime / t, 2)])
    }
    report.append("\n## element-wise from DRAM (read + write counted; memcpy parallel over \(threads) workers)\n" + bw.render() + "\ngoal ≥ 0.6 of memcpy")

    // 3. Tape overhead per recorded op.
    let small = Variable(Tensor.ones([4, 4]), requiresGrad: true), other = Variable(Tensor.ones([4, 4]), requiresGrad: true)
    let ops = 2000
    let plain = measure(repeats: 7, minSeconds: 0.2) {
        var t = small.value
        for _ in 0..<ops { t = t * other.value }
    }.median
    let recorded = measure(repeats: 7, minSeconds: 0.2) {
        var v = small
        for _ in 0..<ops { v = v * other }
    }.median
    let withBackward = measure(repeats: 7, minSeconds: 0.2) {
        var v = small
        for _ in 0..<ops { v = v * other }
        v.backward(gradient: Tensor.ones([4, 4]))
        small.zeroGrad(); other.zeroGrad()
    }.median
    var tape = Table(["4×4 multiply", "µs per op"])
    tape.add(["tensor op, no tape", fmt(plain / Double(ops) * 1e6, 2)])
    tape.add(["recorded op (forward)", fmt(recorded / Double(ops) * 1e6, 2)])
    tape.add(["tape overhead (recorded − plain)", fmt((recorded - plain) / Double(ops) * 1e6, 2)])
    tape.add(["recorded forward + backward", fmt(withBackward / Double(ops) * 1e6, 2)])
    report.append("\n## autograd tape (goal: overhead ≤ 2 µs per recorded op)\n" + tape.render())
    return report.joined(separator: "\n")
}
