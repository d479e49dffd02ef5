import CBLAS

/// Row-major single-precision GEMM on raw buffers: C = alpha · op(A) · op(B) + beta · C.
///
///   op(A) is [m, k] (A stored [m, k], or [k, m] when `transA`), op(B) is [k, n] (B stored [k, n],
///   or [n, k] when `transB`), C is [m, n]. Leading dimensions default to the packed row length.
///
/// Transposes go to BLAS as flags, never as copies. m == 1 goes to `sgemv` (OpenBLAS 0.3.21 does
/// not forward small-m gemm to gemv; 5× faster for decode shapes). Runs on the calling thread with
/// BLAS single-threaded; use `parallelGemm` to split a large product across the workers.
@inline(__always)
public func gemm(
    transA: Bool = false, transB: Bool = false,
    m: Int, n: Int, k: Int,
    alpha: Float = 1,
    a: UnsafePointer<Float>, lda: Int? = nil,
    b: UnsafePointer<Float>, ldb: Int? = nil,
    beta: Float = 0,
    c: UnsafeMutablePointer<Float>, ldc: Int? = nil
) {
    if m == 0 || n == 0 { return }
    let lda = lda ?? (transA ? m : k)
    let ldb = ldb ?? (transB ? k : n)
    let ldc = ldc ?? n
    if k == 0 {
        for i in 0..<m {
            if beta == 0 { (c + i * ldc).update(repeating: 0, count: n) } else { simdScale(c + i * ldc, beta, n) }
        }
        return
    }
    if m == 1 {
        // y[n] = alpha · op(B)ᵀ-view · x + beta · y, where x is A's single row (or column).
        let incX = transA ? lda : 1
        if transB {
            // B stored [n, k]: y = B · x
            cblas_sgemv(CblasRowMajor, CblasNoTrans, Int32(n), Int32(k), alpha, b, Int32(ldb),
                        a, Int32(incX), beta, c, 1)
        } else {
            // B stored [k, n]: y = Bᵀ · x
            cblas_sgemv(CblasRowMajor, CblasTrans, Int32(k), Int32(n), alpha, b, Int32(ldb),
                        a, Int32(incX), beta, c, 1)
        }
        return
    }
    cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
                Int32(m), Int32(n), Int32(k), alpha, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
}

/// `gemm` split across the thread policy's workers. A training step's products (one side the
/// tokens, the others model widths: `skinnyGemmApplies`) go to zoo's skinny GEMM, which reads the
/// token-sized operand without packing it; the rest go to OpenBLAS, split along the longer of m
/// and n (each worker calls single-threaded BLAS on its own block), or in one call inside a
/// parallel region or for small products. Deterministic: each output element is computed by
/// exactly one call.
public func parallelGemm(
    transA: Bool = false, transB: Bool = false,
    m: Int, n: Int, k: Int,
    alpha: Float = 1,
    a: UnsafePointer<Float>, lda: Int? = nil,
    b: UnsafePointer<Float>, ldb: Int? = nil,
    beta: Float = 0,
    c: UnsafeMutablePointer<Float>, ldc: Int? = nil
) {
    let lda = lda ?? (transA ? m : k)
    let ldb = ldb ?? (transB ? k : n)
    let ldc = ldc ?? n
    if GemmPolicy.useSkinny, skinnyGemmApplies(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, beta: beta) {
        skinnyGemm(transA: transA, transB: transB, m: m, n: n, k: k, a: a, lda: lda, b: b, ldb: ldb,
                   beta: beta, c: c, ldc: ldc)
        return
    }
    let flops = 2 * m * n * k
    let workers = ZooThreads.count
    if workers <= 1 || ZooThreads.insideParallelRegion || flops < 4_000_000 || (m < 64 && n < 64) {
        gemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda,
             b: b, ldb: ldb, beta: beta, c: c, ldc: ldc)
        return
    }
    let pa = SendablePointer(UnsafeMutablePointer(mutating: a))
    let pb = SendablePointer(UnsafeMutablePointer(mutating: b))
    let pc = SendablePointer(c)
    if m >= n || m >= 256 {
        // Split rows of C (and of op(A)); blocks of 16 rows keep the kernel's panels full.
        let blocks = (m + 15) / 16
        ZooThreads.parallelFor(blocks) { range in
            let r0 = range.lowerBound * 16, r1 = min(m, range.upperBound * 16)
            let aOffset = transA ? r0 : r0 * lda
            gemm(transA: transA, transB: transB, m: r1 - r0, n: n, k: k, alpha: alpha,
                 a: pa.pointer + aOffset, lda: lda, b: pb.pointer, ldb: ldb, beta: beta,
                 c: pc.pointer + r0 * ldc, ldc: ldc)
        }
    } else {
        let blocks = (n + 15) / 16
        ZooThreads.parallelFor(blocks) { range in
            let c0 = range.lowerBound * 16, c1 = min(n, range.upperBound * 16)
            let bOffset = transB ? c0 * ldb : c0
            gemm(transA: transA, transB: transB, m: m, n: c1 - c0, k: k, alpha: alpha,
                 a: pa.pointer, lda: lda, b: pb.pointer + bOffset, ldb: ldb, beta: beta,
                 c: pc.pointer + c0, ldc: ldc)
        }
    }
}

/// C = A · op(B) (`parallelGemm`, beta 0) followed by `afterRows(r)` over blocks of rows r of C
/// covering 0 ..< m, each once. In the skinny GEMM a block is handed over by the worker that
/// computed it, right after computing it (`skinnyGemm(transB:…afterRows:)`); otherwise the blocks
/// follow the product, split over the workers. Either way C ends the same.
public func parallelGemm(transB: Bool, m: Int, n: Int, k: Int,
                         a: UnsafePointer<Float>, b: UnsafePointer<Float>, c: UnsafeMutablePointer<Float>,
                         afterRows: (Range<Int>) -> Void) {
    let lda = k, ldb = transB ? k : n
    if GemmPolicy.useSkinny, skinnyGemmApplies(transA: false, transB: transB, m: m, n: n, k: k, alpha: 1, beta: 0) {
        skinnyGemm(transB: transB, m: m, n: n, k: k, a: a, lda: lda, b: b, ldb: ldb, c: c, ldc: n, afterRows: afterRows)
        return
    }
    parallelGemm(transB: transB, m: m, n: n, k: k, a: a, lda: lda, b: b, ldb: ldb, c: c)
    ZooThreads.parallelFor((m + 47) / 48) { blocks in
        for block in blocks { afterRows(block * 48 ..< Swift.min(m, block * 48 + 48)) }
    }
}

/// The name of the BLAS core OpenBLAS chose at run time (for benchmark headers).
public var blasCoreName: String { String(cString: openblas_get_corename()) }

/// Runs `body` with OpenBLAS allowed `threads` threads (for measuring the raw sgemm ceiling
/// outside any parallel loop), then pins it back to one.
public func withBLASThreads<R>(_ threads: Int, _ body: () throws -> R) rethrows -> R {
    precondition(!ZooThreads.insideParallelRegion, "withBLASThreads: not allowed inside a parallel loop")
    ZooThreads.releaseCores()
    openblas_set_num_threads(Int32(threads))
    defer { openblas_set_num_threads(1) }
    return try body()
}

/// Which GEMM `parallelGemm` uses for the shapes the skinny GEMM takes. Only benchmarks switch it
/// (`zoo bench train --compare-gemm`, `zoo bench core`), to time both on the same machine.
public enum GemmPolicy {
    nonisolated(unsafe) public static var useSkinny = true
    /// Whether `Linear.project` and `Linear.split` compute a layer's projections as one product
    /// (Projections.swift) or as separate products followed by a split, as before.
    nonisolated(unsafe) public static var fuseProjections = true
    /// Whether the GELU MLP is one node whose GELU and GELU′ run on each block of a product's rows
    /// as it is computed (`geluMLP`, ZooNN) or three nodes (product, GELU, product), as before.
    nonisolated(unsafe) public static var fuseMLP = true
}
