import Testing
import Foundation
import ZooTensor
import ZooTestSupport

/// The skinny GEMM (SkinnyGemm.swift) against a Double reference, with the awkward parts of its
/// blocking exercised: row counts that are not multiples of 6 or of a worker's share, n with a
/// 16-wide tail after the 64-wide panels, k not a multiple of the 128-token chunks, leading
/// dimensions wider than the matrices, and C += (beta 1).
@Suite struct SkinnyGemmTests {
    /// Float32 sums of k products drift from the Double sum like a random walk, ~√k rounding
    /// errors; a lost or doubled 128-token chunk would be off by ~√(128/k) ≥ 0.18.
    func floatSumTolerance(_ k: Int) -> Double { Swift.max(1e-6, 5e-7 * Double(k).squareRoot()) }

    /// One product through `skinnyGemm` on padded buffers: returns the [m, n] result and the
    /// Double reference (C₀ + op(A)·op(B) for beta 1). Padding columns of C must stay untouched.
    func run(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, beta: Float, pad: Int, seed: UInt64)
        -> (got: [Float], want: [Double], paddingIntact: Bool) {
        let aRows = transA ? k : m, aCols = transA ? m : k
        let bRows = transB ? n : k, bCols = transB ? k : n
        let (lda, ldb, ldc) = (aCols + pad, bCols + pad, n + pad)
        let a = randomTensor([aRows, lda], seed: seed), b = randomTensor([bRows, ldb], seed: seed + 1)
        var c = randomTensor([m, ldc], seed: seed + 2)
        let before = c.scalars
        skinnyGemm(transA: transA, transB: transB, m: m, n: n, k: k, a: a.pointer, lda: lda, b: b.pointer, ldb: ldb,
                   beta: beta, c: c.mutablePointer(), ldc: ldc)
        // Dense copies without the padding for the reference.
        let (av, bv, after) = (a.scalars, b.scalars, c.scalars)
        let ad = (0..<(aRows * aCols)).map { Double(av[($0 / aCols) * lda + $0 % aCols]) }
        let bd = (0..<(bRows * bCols)).map { Double(bv[($0 / bCols) * ldb + $0 % bCols]) }
        var want = referenceMatmul(ad, bd, m: m, n: n, k: k, transA: transA, transB: transB)
        if beta == 1 { for i in 0..<(m * n) { want[i] += Double(before[(i / n) * ldc + i % n]) } }
        let got = (0..<(m * n)).map { after[($0 / n) * ldc + $0 % n] }
        var intact = true
        for r in 0..<m { for j in n..<ldc where after[r * ldc + j] != before[r * ldc + j] { intact = false } }
        return (got, want, intact)
    }

    @Test(arguments: [
        // (transB, m, n, k): activations × weight, rows case
        (true, 256, 128, 128), (true, 301, 80, 37), (false, 259, 64, 300), (false, 264, 1024, 1),
        (true, 1000, 16, 129), (false, 257, 208, 1024),
    ])
    func rowsCaseMatchesTheReference(transB: Bool, m: Int, n: Int, k: Int) {
        for beta: Float in [0, 1] {
            let r = run(transA: false, transB: transB, m: m, n: n, k: k, beta: beta, pad: 3, seed: UInt64(m + n + k))
            expectClose(r.got, r.want, tolerance: floatSumTolerance(k), "rows case \(m)×\(n)×\(k) transB \(transB) beta \(beta)")
            #expect(r.paddingIntact, "rows case \(m)×\(n)×\(k): wrote outside its columns")
        }
    }

    @Test(arguments: [
        // (m, n, k): a weight gradient, inner case over the tokens
        (128, 128, 256), (40, 256, 300), (7, 80, 1000), (1, 16, 257), (385, 64, 4096),
    ])
    func innerCaseMatchesTheReference(m: Int, n: Int, k: Int) {
        for beta: Float in [0, 1] {
            let r = run(transA: true, transB: false, m: m, n: n, k: k, beta: beta, pad: 5, seed: UInt64(7 * m + n + k))
            expectClose(r.got, r.want, tolerance: floatSumTolerance(k), "inner case \(m)×\(n)×\(k) beta \(beta)")
            #expect(r.paddingIntact, "inner case \(m)×\(n)×\(k): wrote outside its columns")
        }
    }

    @Test func resultsDoNotDependOnTheThreadCount() {
        let saved = ZooThreads.count
        defer { ZooThreads.configure(threads: saved) }
        for (transA, transB, m, n, k) in [(false, true, 515, 96, 200), (true, false, 97, 144, 700)] {
            var results: [[Float]] = []
            for threads in [1, 2, 3] {
                ZooThreads.configure(threads: threads)
                results.append(run(transA: transA, transB: transB, m: m, n: n, k: k, beta: 0, pad: 0, seed: 11).got)
            }
            #expect(results[0] == results[1] && results[1] == results[2], "\(m)×\(n)×\(k) transA \(transA): thread counts disagree")
        }
    }

    @Test func shapeRuleTakesTheModelsProductsOnly() {
        // The tiny LM's products: forward, input gradient, weight gradient.
        #expect(skinnyGemmApplies(transA: false, transB: true, m: 4096, n: 512, k: 128, alpha: 1, beta: 0))
        #expect(skinnyGemmApplies(transA: false, transB: false, m: 4096, n: 128, k: 512, alpha: 1, beta: 0))
        #expect(skinnyGemmApplies(transA: true, transB: false, m: 512, n: 128, k: 4096, alpha: 1, beta: 1))
        // Everything else stays with OpenBLAS.
        #expect(!skinnyGemmApplies(transA: false, transB: true, m: 4096, n: 40, k: 256, alpha: 1, beta: 0))   // n % 16
        #expect(!skinnyGemmApplies(transA: false, transB: false, m: 128, n: 128, k: 128, alpha: 1, beta: 0))  // few rows
        #expect(!skinnyGemmApplies(transA: false, transB: false, m: 4096, n: 2048, k: 128, alpha: 1, beta: 0)) // wide n
        #expect(!skinnyGemmApplies(transA: true, transB: true, m: 128, n: 128, k: 4096, alpha: 1, beta: 0))
        #expect(!skinnyGemmApplies(transA: true, transB: false, m: 128, n: 128, k: 100, alpha: 1, beta: 0))   // short k
        #expect(!skinnyGemmApplies(transA: false, transB: false, m: 4096, n: 128, k: 128, alpha: 2, beta: 0))
        #expect(!skinnyGemmApplies(transA: false, transB: false, m: 4096, n: 128, k: 128, alpha: 1, beta: 0.5))
    }

    @Test func tensorMatmulOnAModelShapeTakesTheSkinnyPath() {
        // [2, 160, 32] · W[48, 32]ᵀ folds the batch into 320 rows: the rows case.
        let x = randomTensor([2, 160, 32], seed: 21), w = randomTensor([48, 32], seed: 22)
        #expect(skinnyGemmApplies(transA: false, transB: true, m: 320, n: 48, k: 32, alpha: 1, beta: 0))
        let skinny = Tensor.matmul(x, w, transB: true)
        let reference = referenceMatmul(x.doubles, w.doubles, m: 320, n: 48, k: 32, transA: false, transB: true)
        expectClose(skinny.scalars, reference, tolerance: 1e-6, "Tensor.matmul on the skinny path")
    }
}
