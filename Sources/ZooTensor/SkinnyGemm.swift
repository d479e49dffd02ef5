// GEMM for the products of a training step, on the register-blocked microkernels of
// TileMultiply.swift, without packing the token-sized operand.
//
//   rows case:   C[m, n] = A[m, k] · op(B)[k, n]       A: activations, m = tokens (≥ 256);
//                                                      B: a weight, k, n ≤ 1024
//   inner case:  C[m, n] = A[k, m]ᵀ · B[k, n]           k = tokens (≥ 256): a weight gradient,
//                                                      m, n ≤ 1024
//   n a multiple of 16 in both; alpha 1, beta 0 (C =) or 1 (C +=).
//
// Why: one side of every such product is the batch's tokens (4096 in the tiny LM of
// `zoo bench train`) and the other two are model widths (128–512). OpenBLAS packs both operands
// on every call and zeroes C in a pass of its own before accumulating into it; with a width of
// 128 that packing and zeroing was a third of its time inside a training step (perf: kernel 33 %
// of the step's samples, packing 13 %, memset 3 %). Here the microkernel reads A where it lies:
// it broadcasts one element of each of 6 rows per step (rows case: the activations, never
// copied), or 6 neighbouring elements of one row (inner case, Aᵀ read through aStep). Only B is
// copied into panels (below): once per call in the rows case, where it is the weight; per
// 128-token chunk in the inner case, where it is token-sized but each chunk is reused by every
// row block of C.
// Measured on 2 cores, 2026-11-22: `zoo bench train --compare-gemm` (steps alternating in one
// process) gives a training step of the tiny LM 1.04–1.11× the speed it has with OpenBLAS for
// attention, Mamba and NSA, 0.98–1.07× for Mamba-2 and log-linear (their 644-wide input
// projection stays on OpenBLAS); `zoo bench core` (operands hot in cache) gives the products
// alone 1.01–1.24× OpenBLAS's speed.
//
// Blocking. Rows case: op(B) is packed once per call into contiguous 64-column panels (read in
// place, a panel's rows would lie n floats apart and, for n a multiple of 128, crowd into a few L1
// sets); 48 rows of A (8 microkernel calls) pass over one 128-deep slice of a panel (32 KB, in L1)
// before the next. Inner case: k runs in chunks of 128 tokens; each worker copies its columns of the
// chunk of B into panels and its columns of C accumulate over them, reading Aᵀ in place.
//
// Deterministic: each element of C is computed by one worker, over k in fixed chunks in a fixed
// order, so results do not depend on the thread count.

/// The shapes `skinnyGemm` takes (those where it measured faster than OpenBLAS): one side of the
/// product the tokens, the others at most 1024, n a multiple of 16, alpha 1, beta 0 or 1.
@inlinable
public func skinnyGemmApplies(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float, beta: Float) -> Bool {
    guard alpha == 1, beta == 0 || beta == 1, m > 0, n > 0, n % 16 == 0, n <= 1024, k > 0 else { return false }
    if !transA { return m >= 256 && k <= 1024 }
    return !transB && k >= 256 && m <= 1024
}

/// C = op(A)·op(B) (beta 0) or C += op(A)·op(B) (beta 1) for the shapes of `skinnyGemmApplies`,
/// split over the workers by rows of C (rows case) or by its 64-column panels (inner case).
/// Row-major, leading dimensions as in `gemm`.
public func skinnyGemm(
    transA: Bool, transB: Bool, m: Int, n: Int, k: Int,
    a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
    beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int
) {
    precondition(skinnyGemmApplies(transA: transA, transB: transB, m: m, n: n, k: k, alpha: 1, beta: beta),
                 "skinnyGemm: shape \(m)×\(n)×\(k) (transA \(transA), transB \(transB), beta \(beta)) is not one it takes")
    let accumulate = beta == 1
    let pa = SendablePointer(UnsafeMutablePointer(mutating: a)), pc = SendablePointer(c)
    let rowBlocks = (m + 5) / 6
    if !transA {
        // Read in place, a panel's rows would be n floats apart, and with n a multiple of 128 they
        // fall into a few L1 sets (n = 512: 8 of 64) and evict one another.
        let panels = ScratchBuffer(count: k * n, zeroed: false)
        packPanels(b, transposed: transB, k: k, n: n, ld: ldb, into: panels.pointer)
        let pb = SendablePointer(panels.pointer)
        let groupBlocks = 8, rowsChunk = 128
        ZooThreads.parallelFor(rowBlocks) { blocks in
            var g0 = blocks.lowerBound
            while g0 < blocks.upperBound {
                let r0 = g0 * 6, r1 = Swift.min(m, Swift.min(blocks.upperBound, g0 + groupBlocks) * 6)
                var k0 = 0
                while k0 < k {
                    let kc = Swift.min(rowsChunk, k - k0)
                    var j = 0
                    while j < n {
                        let width = Swift.min(64, n - j)
                        tileMultiply(m: r1 - r0, n: width, k: kc, a: pa.pointer + r0 * lda + k0, aRowStride: lda, aStep: 1,
                                     b: pb.pointer + j * k + k0 * width, ldb: width, c: pc.pointer + r0 * ldc + j, ldc: ldc,
                                     accumulate: accumulate || k0 > 0)
                        j += width
                    }
                    k0 += kc
                }
                g0 += groupBlocks
            }
        }
        withExtendedLifetime(panels) {}
        return
    }
    // Inner case: the workers split C by 64-column panels (by rows when there is one panel), and
    // per chunk of 128 tokens each copies its columns of B's chunk into panels (32 KB each: one
    // stays in L1 while all row blocks of C pass over it). Aᵀ is read in place (row r of Aᵀ starts
    // at a + r and steps lda). Splitting by columns, no worker copies what another copies; the
    // per-element arithmetic is the same either way (same 6-row groups, panels and chunks).
    let pb = SendablePointer(UnsafeMutablePointer(mutating: b))
    let chunk = 128
    let panelCount = (n + 63) / 64
    func accumulateInto(rows r0: Int, _ r1: Int, columns c0: Int, _ c1: Int) {
        let width = c1 - c0
        let panels = ScratchBuffer(count: chunk * width, zeroed: false)
        var k0 = 0
        while k0 < k {
            let kc = Swift.min(chunk, k - k0)
            packPanels(pb.pointer + k0 * ldb + c0, transposed: false, k: kc, n: width, ld: ldb, into: panels.pointer)
            var j = 0
            while j < width {
                let w = Swift.min(64, width - j)
                tileMultiply(m: r1 - r0, n: w, k: kc, a: pa.pointer + k0 * lda + r0, aRowStride: 1, aStep: lda,
                             b: panels.pointer + j * kc, ldb: w, c: pc.pointer + r0 * ldc + c0 + j, ldc: ldc,
                             accumulate: accumulate || k0 > 0)
                j += w
            }
            k0 += kc
        }
    }
    if panelCount >= 2 {
        ZooThreads.parallelFor(panelCount) { panels in
            accumulateInto(rows: 0, m, columns: panels.lowerBound * 64, Swift.min(n, panels.upperBound * 64))
        }
    } else {
        ZooThreads.parallelFor(rowBlocks) { blocks in
            accumulateInto(rows: blocks.lowerBound * 6, Swift.min(m, blocks.upperBound * 6), columns: 0, n)
        }
    }
}

/// op(B) [k, n] into panels of 64 columns (the last `n % 64` wide), panel p at dst + 64·p·k as
/// [k, width]. B is [k, n] (`transposed` false) or [n, k] (true), rows `ld` apart.
func packPanels(_ b: UnsafePointer<Float>, transposed: Bool, k: Int, n: Int, ld: Int, into dst: UnsafeMutablePointer<Float>) {
    var j0 = 0
    while j0 < n {
        let width = Swift.min(64, n - j0)
        let panel = dst + j0 * k
        if transposed {
            // Column j of op(B) is row j of B; going 16 along k at a time keeps the lines of the
            // panel's 64 source rows in L1 while they are read.
            var p0 = 0
            while p0 < k {
                let p1 = Swift.min(k, p0 + 16)
                for j in j0 ..< j0 + width {
                    let row = b + j * ld
                    for p in p0..<p1 { panel[p * width + (j - j0)] = row[p] }
                }
                p0 = p1
            }
        } else {
            for p in 0..<k { (panel + p * width).update(from: b + p * ld + j0, count: width) }
        }
        j0 += width
    }
}
