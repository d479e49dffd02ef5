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
        // n not a multiple of 16: the last panel padded (Mamba-2's in_proj 644, Mamba's x_proj 40)
        (true, 300, 644, 128), (false, 262, 40, 256), (true, 256, 17, 5), (false, 263, 100, 130),
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
        #expect(skinnyGemmApplies(transA: false, transB: true, m: 4096, n: 644, k: 128, alpha: 1, beta: 0))   // padded panel
        #expect(!skinnyGemmApplies(transA: false, transB: true, m: 4096, n: 8, k: 256, alpha: 1, beta: 0))    // n < 16
        #expect(!skinnyGemmApplies(transA: true, transB: false, m: 256, n: 40, k: 4096, alpha: 1, beta: 0))   // inner: n % 16
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

    // MARK: several outputs, several terms

    /// Random B_p for `skinnyProducts` outputs of `widths` (alternately transposed), with padded
    /// leading dimensions; returns the results and the Double reference.
    func runProducts(m: Int, k: Int, widths: [Int], beta: Float, seed: UInt64) -> (got: [[Float]], want: [[Double]]) {
        let lda = k + 2
        let a = randomTensor([m, lda], seed: seed)
        let av = a.scalars
        let ad = (0..<(m * k)).map { Double(av[($0 / k) * lda + $0 % k]) }
        var bs: [Tensor] = [], cs: [Tensor] = [], befores: [[Float]] = []
        for (p, n) in widths.enumerated() {
            let transB = p % 2 == 0
            bs.append(randomTensor(transB ? [n, k + 1] : [k, n + 3], seed: seed + 10 + UInt64(p)))
            cs.append(randomTensor([m, n + 1], seed: seed + 20 + UInt64(p)))
            befores.append(cs[p].scalars)
        }
        let outputs = widths.indices.map { p in
            SkinnyOutput(b: bs[p].pointer, ldb: bs[p].shape[1], transB: p % 2 == 0, n: widths[p], c: cs[p].mutablePointer(), ldc: widths[p] + 1)
        }
        skinnyProducts(m: m, k: k, a: a.pointer, lda: lda, outputs: outputs, beta: beta)
        var got: [[Float]] = [], want: [[Double]] = []
        for (p, n) in widths.enumerated() {
            let transB = p % 2 == 0, ldb = bs[p].shape[1], bv = bs[p].scalars
            let rows = transB ? n : k, cols = transB ? k : n
            let bd = (0..<(rows * cols)).map { Double(bv[($0 / cols) * ldb + $0 % cols]) }
            var w = referenceMatmul(ad, bd, m: m, n: n, k: k, transA: false, transB: transB)
            if beta == 1 { for i in 0..<(m * n) { w[i] += Double(befores[p][(i / n) * (n + 1) + i % n]) } }
            let after = cs[p].scalars
            got.append((0..<(m * n)).map { after[($0 / n) * (n + 1) + $0 % n] })
            want.append(w)
            #expect((0..<m).allSatisfy { after[$0 * (n + 1) + n] == befores[p][$0 * (n + 1) + n] }, "output \(p): wrote into its padding")
        }
        return (got, want)
    }

    @Test(arguments: [
        // (m, k, widths): attention's q, k, v; Mamba-2's z, xBC, dt; Mamba's dt, B, C
        (300, 128, [128, 128, 128]), (257, 128, [256, 384, 4]), (262, 256, [8, 16, 16]), (256, 200, [20]),
    ])
    func severalOutputsMatchTheReference(m: Int, k: Int, widths: [Int]) {
        for beta: Float in [0, 1] {
            let r = runProducts(m: m, k: k, widths: widths, beta: beta, seed: UInt64(m + k))
            for p in widths.indices {
                expectClose(r.got[p], r.want[p], tolerance: floatSumTolerance(k), "skinnyProducts output \(p) of \(widths), beta \(beta)")
            }
        }
    }

    /// `skinnySumOfProducts` with terms A_s [m, k_s] · op(B_s) (alternately transposed).
    func runSum(m: Int, n: Int, ks: [Int], beta: Float, seed: UInt64) -> (got: [Float], want: [Double]) {
        var want = [Double](repeating: 0, count: m * n)
        var tensors: [Tensor] = []
        var terms: [SkinnyTerm] = []
        for (s, k) in ks.enumerated() {
            let transB = s % 2 == 1
            let a = randomTensor([m, k + 1], seed: seed + UInt64(s)), b = randomTensor(transB ? [n, k + 2] : [k, n + 2], seed: seed + 50 + UInt64(s))
            tensors += [a, b]
            terms.append(SkinnyTerm(a: a.pointer, lda: k + 1, b: b.pointer, ldb: b.shape[1], transB: transB, k: k))
            let (av, bv) = (a.scalars, b.scalars)
            let ad = (0..<(m * k)).map { Double(av[($0 / k) * (k + 1) + $0 % k]) }
            let rows = transB ? n : k, cols = transB ? k : n
            let bd = (0..<(rows * cols)).map { Double(bv[($0 / cols) * b.shape[1] + $0 % cols]) }
            let product = referenceMatmul(ad, bd, m: m, n: n, k: k, transA: false, transB: transB)
            for i in 0..<(m * n) { want[i] += product[i] }
        }
        var c = randomTensor([m, n], seed: seed + 99)
        if beta == 1 { let before = c.scalars; for i in 0..<(m * n) { want[i] += Double(before[i]) } }
        skinnySumOfProducts(m: m, n: n, terms: terms, beta: beta, c: c.mutablePointer(), ldc: n)
        withExtendedLifetime(tensors) {}
        return (c.scalars, want)
    }

    @Test(arguments: [
        // (m, n, ks): the input gradient of attention's q, k, v; of Mamba-2's in_proj; of Mamba's x_proj
        (300, 128, [128, 128, 128]), (259, 128, [256, 384, 4]), (256, 256, [8, 16, 16]), (270, 40, [300, 5]),
    ])
    func sumOfProductsMatchesTheReference(m: Int, n: Int, ks: [Int]) {
        for beta: Float in [0, 1] {
            let r = runSum(m: m, n: n, ks: ks, beta: beta, seed: UInt64(m + n))
            expectClose(r.got, r.want, tolerance: floatSumTolerance(ks.reduce(0, +)), "skinnySumOfProducts \(m)×\(n) over \(ks), beta \(beta)")
        }
    }

    /// `skinnyTransposedProducts`: parts C_p = A_pᵀ · B sharing B [k, n].
    func runTransposed(n: Int, k: Int, rows: [Int], beta: Float, seed: UInt64) -> (got: [[Float]], want: [[Double]]) {
        let b = randomTensor([k, n + 4], seed: seed)
        let bv = b.scalars
        let bd = (0..<(k * n)).map { Double(bv[($0 / n) * (n + 4) + $0 % n]) }
        var tensors: [Tensor] = [], cs: [Tensor] = [], befores: [[Float]] = [], parts: [SkinnyTransposedPart] = []
        for (p, m) in rows.enumerated() {
            tensors.append(randomTensor([k, m + 1], seed: seed + 1 + UInt64(p)))
            cs.append(randomTensor([m, n + 2], seed: seed + 30 + UInt64(p)))
            befores.append(cs[p].scalars)
        }
        for p in rows.indices {
            parts.append(SkinnyTransposedPart(a: tensors[p].pointer, lda: rows[p] + 1, m: rows[p], c: cs[p].mutablePointer(), ldc: n + 2))
        }
        skinnyTransposedProducts(n: n, k: k, b: b.pointer, ldb: n + 4, parts: parts, beta: beta)
        var got: [[Float]] = [], want: [[Double]] = []
        for (p, m) in rows.enumerated() {
            let av = tensors[p].scalars
            let ad = (0..<(k * m)).map { Double(av[($0 / m) * (m + 1) + $0 % m]) }
            var w = referenceMatmul(ad, bd, m: m, n: n, k: k, transA: true, transB: false)
            if beta == 1 { for i in 0..<(m * n) { w[i] += Double(befores[p][(i / n) * (n + 2) + i % n]) } }
            let after = cs[p].scalars
            got.append((0..<(m * n)).map { after[($0 / n) * (n + 2) + $0 % n] })
            want.append(w)
            #expect((0..<m).allSatisfy { r in (n..<(n + 2)).allSatisfy { after[r * (n + 2) + $0] == befores[p][r * (n + 2) + $0] } },
                    "part \(p): wrote into its padding")
        }
        return (got, want)
    }

    @Test(arguments: [
        // (n, k, rows): the weight gradients of Mamba-2's in_proj pieces; attention's q, k, v; one 64-wide panel
        (128, 300, [256, 256, 64, 64, 4]), (128, 4096, [128, 128, 128]), (64, 700, [7, 1, 13]), (16, 257, [40]),
    ])
    func severalTransposedProductsMatchTheReference(n: Int, k: Int, rows: [Int]) {
        for beta: Float in [0, 1] {
            let r = runTransposed(n: n, k: k, rows: rows, beta: beta, seed: UInt64(n + k))
            for p in rows.indices {
                expectClose(r.got[p], r.want[p], tolerance: floatSumTolerance(k), "skinnyTransposedProducts part \(p) of \(rows), beta \(beta)")
            }
        }
    }

    @Test func severalOutputsAndTermsDoNotDependOnTheThreadCount() {
        let saved = ZooThreads.count
        defer { ZooThreads.configure(threads: saved) }
        var products: [[[Float]]] = [], sums: [[Float]] = [], transposed: [[[Float]]] = [], oneColumnPanel: [[[Float]]] = []
        var moreRowsThanColumns: [[[Float]]] = []
        for threads in [1, 2, 3] {
            ZooThreads.configure(threads: threads)
            products.append(runProducts(m: 517, k: 130, widths: [64, 40, 4], beta: 0, seed: 5).got)
            sums.append(runSum(m: 517, n: 100, ks: [64, 40, 4], beta: 0, seed: 6).got)
            transposed.append(runTransposed(n: 192, k: 300, rows: [20, 7, 64], beta: 0, seed: 7).got)        // split by panels
            oneColumnPanel.append(runTransposed(n: 48, k: 300, rows: [20, 7, 64], beta: 0, seed: 8).got)     // by row blocks
            moreRowsThanColumns.append(runTransposed(n: 128, k: 300, rows: [100, 7, 64], beta: 0, seed: 9).got)  // by row blocks
        }
        #expect(products[0] == products[1] && products[1] == products[2], "skinnyProducts: thread counts disagree")
        #expect(transposed[0] == transposed[1] && transposed[1] == transposed[2], "skinnyTransposedProducts: thread counts disagree")
        #expect(oneColumnPanel[0] == oneColumnPanel[1] && oneColumnPanel[1] == oneColumnPanel[2], "skinnyTransposedProducts (one panel): thread counts disagree")
        #expect(moreRowsThanColumns[0] == moreRowsThanColumns[1] && moreRowsThanColumns[1] == moreRowsThanColumns[2],
                "skinnyTransposedProducts (more rows than columns): thread counts disagree")
        #expect(sums[0] == sums[1] && sums[1] == sums[2], "skinnySumOfProducts: thread counts disagree")
    }
}
