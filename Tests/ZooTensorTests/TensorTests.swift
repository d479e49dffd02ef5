import Testing
import Foundation
import ZooTensor
import ZooTestSupport

/// Naive Double matmul of row-major [m,k]·[k,n] with optional transposed storage.
func referenceMatmul(_ a: [Double], _ b: [Double], m: Int, n: Int, k: Int, transA: Bool, transB: Bool) -> [Double] {
    var c = [Double](repeating: 0, count: m * n)
    for i in 0..<m { for j in 0..<n {
        var s = 0.0
        for p in 0..<k { s += (transA ? a[p * m + i] : a[i * k + p]) * (transB ? b[j * k + p] : b[p * n + j]) }
        c[i * n + j] = s
    } }
    return c
}

@Suite struct CreationAndStorage {
    @Test func copyOnWriteKeepsTheOriginal() {
        let a = Tensor(shape: [2, 2], scalars: [1, 2, 3, 4])
        var b = a
        b[0, 1] = 9
        #expect(a.scalars == [1, 2, 3, 4])
        #expect(b.scalars == [1, 9, 3, 4])
        #expect(a.storage !== b.storage)
    }

    @Test func reshapeSharesStorageAndInfersOneAxis() {
        let a = Tensor.arange(12)
        let b = a.reshaped([3, -1])
        #expect(b.shape == [3, 4])
        #expect(a.storage === b.storage)
    }

    @Test func creationHelpers() {
        #expect(Tensor.zeros([2, 3]).scalars == Array(repeating: 0, count: 6))
        #expect(Tensor.ones([4]).scalars == [1, 1, 1, 1])
        #expect(Tensor.full([2], 2.5).scalars == [2.5, 2.5])
        #expect(Tensor.arange(4, start: 1, step: 0.5).scalars == [1, 1.5, 2, 2.5])
    }

    @Test func seededGeneratorMatchesSplitMix64Reference() {
        // SplitMix64 (Steele, Lea, Flood 2014) for seed 1234567, computed by an independent Python
        // transcription of the public-domain reference splitmix64.c.
        var g = SeededGenerator(seed: 1234567)
        let expected: [UInt64] = [6457827717110365317, 3203168211198807973, 9817491932198370423,
                                  4593380528125082431, 16408922859458223821]
        #expect((0..<5).map { _ in g.next() } == expected)
    }

    @Test func normalsHaveTheRightMomentsAndRepeatExactly() {
        var g1 = SeededGenerator(seed: 3), g2 = SeededGenerator(seed: 3)
        let a = Tensor.normal([20000], mean: 1, std: 2, generator: &g1)
        let b = Tensor.normal([20000], mean: 1, std: 2, generator: &g2)
        #expect(a.scalars == b.scalars)
        let mean = a.doubles.reduce(0, +) / 20000
        let variance = a.doubles.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / 20000
        #expect(abs(mean - 1) < 0.05)
        #expect(abs(variance.squareRoot() - 2) < 0.05)
        let u = Tensor.uniform([20000], low: -1, high: 3, generator: &g1)
        #expect(u.scalars.allSatisfy { $0 >= -1 && $0 < 3 })
        #expect(abs(u.doubles.reduce(0, +) / 20000 - 1) < 0.05)
    }

    @Test func portableLogAgreesWithLibm() {
        for x in [1e-300, 1e-10, 0.3, 0.7071, 1, 1.5, 2, 1234.5, 1e300] {
            #expect(abs(portableLog(x) - Foundation.log(x)) <= 4 * Foundation.log(x).ulp.magnitude + 1e-300)
        }
    }
}

@Suite struct ElementwiseAndBroadcasting {
    @Test func broadcastingArithmeticMatchesLoops() {
        let a = randomTensor([2, 3, 4], seed: 1), b = randomTensor([3, 1], seed: 2), c = randomTensor([4], seed: 3)
        let sum = a + b, product = a * c, quotient = a / (c * c + 1), difference = b - a
        var eSum: [Double] = [], eProd: [Double] = [], eQuot: [Double] = [], eDiff: [Double] = []
        for i in 0..<2 { for j in 0..<3 { for k in 0..<4 {
            let av = Double(a[i, j, k]), bv = Double(b[j, 0]), cv = Double(c[k])
            eSum.append(av + bv); eProd.append(av * cv); eQuot.append(av / (Double(Float(cv * cv) + 1))); eDiff.append(bv - av)
        } } }
        #expect(sum.shape == [2, 3, 4])
        expectClose(sum.scalars, eSum, tolerance: 1e-7, "a + b")
        expectClose(product.scalars, eProd, tolerance: 1e-7, "a * c")
        expectClose(quotient.scalars, eQuot, tolerance: 1e-6, "a / c")
        expectClose(difference.scalars, eDiff, tolerance: 1e-7, "b - a")
        expectClose((a * 2 + 1).scalars, a.doubles.map { $0 * 2 + 1 }, tolerance: 1e-7, "scalar ops")
    }

    @Test(arguments: [1, 15, 16, 17, 100, 70000])
    func unaryFunctionsMatchDouble(n: Int) {
        let x = randomTensor([n], seed: UInt64(n), scale: 3)
        let xd = x.doubles
        func sig(_ v: Double) -> Double { 1 / (1 + Foundation.exp(-v)) }
        expectClose(x.exp().scalars, xd.map { Foundation.exp($0) }, tolerance: 2e-7, "exp")
        expectClose((x.squared() + 0.1).log().scalars, xd.map { Foundation.log(Double(Float($0 * $0) + 0.1)) }, tolerance: 1e-6, "log")
        expectClose(x.tanh().scalars, xd.map { Foundation.tanh($0) }, tolerance: 1e-6, "tanh")
        expectClose(x.sigmoid().scalars, xd.map(sig), tolerance: 2e-7, "sigmoid")
        expectClose(x.silu().scalars, xd.map { $0 * sig($0) }, tolerance: 2e-7, "silu")
        expectClose(x.softplus().scalars, xd.map { Foundation.log1p(Foundation.exp($0)) }, tolerance: 3e-7, "softplus")
        expectClose(x.gelu().scalars, xd.map { 0.5 * $0 * (1 + Foundation.tanh(0.7978845608028654 * ($0 + 0.044715 * $0 * $0 * $0))) },
                    tolerance: 1e-6, "gelu")
    }

    @Test func extremeArgumentsStayFinite() {
        let x = Tensor(shape: [6], scalars: [-200, -90, 0, 30, 90, 200])
        #expect(x.sigmoid().scalars.allSatisfy { $0.isFinite && $0 >= 0 && $0 <= 1 })
        #expect(x.softplus().scalars.allSatisfy { $0.isFinite })
        #expect(abs(x.softplus().scalars[5] - 200) < 1e-4)
        #expect(x.tanh().scalars.allSatisfy { abs($0) <= 1 })
        #expect(Tensor(shape: [2], scalars: [0, -1]).log().scalars[0] == -.infinity)
    }
}

@Suite struct ReductionsAndSoftmax {
    @Test func sumMeanMaxAlongAxes() {
        let x = randomTensor([3, 4, 5], seed: 11)
        var s1 = [Double](repeating: 0, count: 15), m0 = [Double](repeating: -.infinity, count: 20)
        for i in 0..<3 { for j in 0..<4 { for k in 0..<5 {
            let v = Double(x[i, j, k])
            s1[i * 5 + k] += v
            m0[j * 5 + k] = Swift.max(m0[j * 5 + k], v)
        } } }
        let sum1 = x.sum(axis: 1)
        #expect(sum1.shape == [3, 5])
        expectClose(sum1.scalars, s1, tolerance: 1e-6, "sum axis 1")
        expectClose(x.max(axis: 0).scalars, m0, tolerance: 0, "max axis 0")
        expectClose(x.mean(axes: [0, 2], keepDims: true).reshaped([4]).scalars,
                    (0..<4).map { j in (0..<3).flatMap { i in (0..<5).map { k in Double(x[i, j, k]) } }.reduce(0, +) / 15 },
                    tolerance: 1e-6, "mean axes 0,2")
        #expect(abs(Double(x.sum().item) - x.doubles.reduce(0, +)) < 1e-4)
        #expect(x.sum(axis: -1, keepDims: true).shape == [3, 4, 1])
    }

    @Test(arguments: [1, 7, 33, 4096])
    func softmaxAndLogSumExpMatchDouble(n: Int) {
        let x = randomTensor([3, n], seed: 5, scale: 4)
        var soft: [Double] = [], lse: [Double] = []
        for r in 0..<3 {
            let row = (0..<n).map { Double(x[r, $0]) }
            let m = row.max()!
            let s = row.map { Foundation.exp($0 - m) }.reduce(0, +)
            soft += row.map { Foundation.exp($0 - m) / s }
            lse.append(m + Foundation.log(s))
        }
        expectClose(x.softmax().scalars, soft, tolerance: 1e-6, "softmax")
        expectClose(x.logsumexp().scalars, lse, tolerance: 1e-6, "logsumexp")
    }

    @Test func sumToShapeReversesBroadcasting() {
        let g = Tensor.ones([2, 3, 4])
        #expect(g.sumToShape([3, 1]).scalars == [8, 8, 8])
        #expect(g.sumToShape([4]).scalars == [6, 6, 6, 6])
    }
}

@Suite struct ShapeOperations {
    @Test func permuteTransposeSliceConcatSplit() {
        let x = randomTensor([2, 3, 4], seed: 9)
        let p = x.permuted([2, 0, 1])
        #expect(p.shape == [4, 2, 3])
        #expect(p[3, 1, 2] == x[1, 2, 3])
        #expect(x.transposed(0, 2)[3, 2, 1] == x[1, 2, 3])
        #expect(p.permuted([1, 2, 0]).scalars == x.scalars)
        let s = x.slice(axis: 1, 1..<3)
        #expect(s.shape == [2, 2, 4] && s[1, 0, 2] == x[1, 1, 2])
        let parts = x.split(axis: 2, sizes: [1, 3])
        #expect(Tensor.concatenate(parts, axis: 2).scalars == x.scalars)
        let rows = Tensor(shape: [3, 2], scalars: [0, 1, 2, 3, 4, 5]).gatherRows([2, 0, 2])
        #expect(rows.scalars == [4, 5, 0, 1, 4, 5])
        let back = Tensor.scatterAddRows(rows, indices: [2, 0, 2], rows: 3)
        #expect(back.scalars == [0, 1, 0, 0, 8, 10])
    }

    /// The tiled transpose path (last output axis strided in the source) against index arithmetic,
    /// on shapes that are not multiples of the 16×16 tile and on several axis orders.
    @Test(arguments: [[0, 2, 1], [2, 0, 1], [1, 2, 0], [2, 1, 0], [0, 3, 2, 1], [3, 1, 0, 2], [1, 0, 3, 2]])
    func permuteMatchesIndexArithmetic(order: [Int]) {
        let shape = order.count == 3 ? [3, 37, 21] : [2, 5, 19, 33]
        let x = randomTensor(shape, seed: 4)
        let y = x.permuted(order)
        #expect(y.shape == order.map { shape[$0] })
        let inStrides = Tensor.strides(of: shape), outStrides = Tensor.strides(of: y.shape)
        var mismatches = 0
        for flat in 0..<y.count {
            var rest = flat, src = 0
            for a in 0..<order.count {
                let i = rest / outStrides[a]; rest %= outStrides[a]
                src += i * inStrides[order[a]]
            }
            if y.scalars[flat] != x.scalars[src] { mismatches += 1 }
        }
        #expect(mismatches == 0, "permute \(order) of \(shape)")
    }
}

@Suite struct MatrixProducts {
    @Test(arguments: [(false, false), (false, true), (true, false), (true, true)])
    func matmulWithTransposeFlags(transA: Bool, transB: Bool) {
        for (m, n, k) in [(1, 7, 5), (5, 1, 3), (17, 33, 9), (64, 64, 64)] {
            let a = randomTensor(transA ? [k, m] : [m, k], seed: 1), b = randomTensor(transB ? [n, k] : [k, n], seed: 2)
            let c = Tensor.matmul(a, b, transA: transA, transB: transB)
            #expect(c.shape == [m, n])
            expectClose(c.scalars, referenceMatmul(a.doubles, b.doubles, m: m, n: n, k: k, transA: transA, transB: transB),
                        tolerance: 1e-6, "matmul \(m)x\(n)x\(k) tA=\(transA) tB=\(transB)")
        }
    }

    @Test func batchedAndSharedRightOperand() {
        let a = randomTensor([3, 4, 5], seed: 3), b = randomTensor([3, 5, 2], seed: 4), w = randomTensor([2, 5], seed: 5)
        let c = Tensor.matmul(a, b)
        let shared = Tensor.matmul(a, w, transB: true)
        for i in 0..<3 {
            let ai = a.slice(axis: 0, i..<(i + 1)).doubles, bi = b.slice(axis: 0, i..<(i + 1)).doubles
            expectClose(c.slice(axis: 0, i..<(i + 1)).scalars, referenceMatmul(ai, bi, m: 4, n: 2, k: 5, transA: false, transB: false), tolerance: 1e-6)
            expectClose(shared.slice(axis: 0, i..<(i + 1)).scalars, referenceMatmul(ai, w.doubles, m: 4, n: 2, k: 5, transA: false, transB: true), tolerance: 1e-6)
        }
    }

    @Test func largeProductIsIdenticalForOneAndTwoThreads() {
        let a = randomTensor([300, 200], seed: 1), b = randomTensor([200, 250], seed: 2)
        let saved = ZooThreads.count
        ZooThreads.configure(threads: 1)
        let one = Tensor.matmul(a, b)
        ZooThreads.configure(threads: 2)
        let two = Tensor.matmul(a, b)
        ZooThreads.configure(threads: saved)
        #expect(one.scalars == two.scalars)
        expectClose(one.scalars, referenceMatmul(a.doubles, b.doubles, m: 300, n: 250, k: 200, transA: false, transB: false), tolerance: 1e-6)
    }
}

@Suite struct BadInputMessages {
    @Test func broadcastMismatchNamesOperationAndShapes() {
        #expect(throws: ShapeError("add", "shapes [2, 3] and [4] do not broadcast (axis 1: 3 vs 4)")) {
            try ShapeCheck.broadcast([2, 3], [4], op: "add")
        }
    }
    @Test func matmulMismatchNamesBothShapes() throws {
        do { _ = try ShapeCheck.matmul([2, 3], [4, 5], transA: false, transB: false); Issue.record("no error") }
        catch { #expect(error.description.contains("matmul") && error.description.contains("[2, 3]") && error.description.contains("[4, 5]")) }
    }
    @Test func axisAndReshapeErrors() {
        #expect(throws: ShapeError.self) { try ShapeCheck.axis(3, rank: 2, op: "sum", shape: [2, 2]) }
        do { _ = try ShapeCheck.reshape([2, 3], to: [4, -1]); Issue.record("no error") }
        catch { #expect(error.description.contains("[2, 3]") && error.description.contains("[4, -1]")) }
    }
}
