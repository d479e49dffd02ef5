import Testing
import Foundation
import ZooTensor
import ZooAutograd
import ZooTestSupport

/// Every primitive against central differences of a Double reference (`gradientCheck`).
@Suite struct PrimitiveGradients {
    func check(_ inputs: [Tensor], tolerance: Double = 2e-5, _ name: String,
               function: ([Variable]) -> Variable, reference: ([[Double]]) -> [Double],
               sourceLocation: SourceLocation = #_sourceLocation) {
        let result = gradientCheck(inputs, function: function, reference: reference)
        #expect(result.worst < tolerance, "\(name): \(result)", sourceLocation: sourceLocation)
    }

    func unary(_ name: String, _ f: @escaping (Variable) -> Variable, _ r: @escaping (Double) -> Double, positive: Bool = false, tolerance: Double = 2e-5) {
        var x = randomTensor([3, 5], seed: 21, scale: 1.5)
        if positive { x = x.squared() + 0.5 }
        check([x], tolerance: tolerance, name, function: { f($0[0]) }, reference: { $0[0].map(r) })
    }

    @Test func unaryFunctions() {
        func sig(_ v: Double) -> Double { 1 / (1 + Foundation.exp(-v)) }
        unary("exp", { $0.exp() }, { Foundation.exp($0) })
        unary("log", { $0.log() }, { Foundation.log($0) }, positive: true)
        unary("tanh", { $0.tanh() }, { Foundation.tanh($0) })
        unary("sigmoid", { $0.sigmoid() }, sig)
        unary("silu", { $0.silu() }, { $0 * sig($0) })
        unary("softplus", { $0.softplus() }, { Foundation.log1p(Foundation.exp($0)) })
        unary("gelu", { $0.gelu() }, { 0.5 * $0 * (1 + Foundation.tanh(0.7978845608028654 * ($0 + 0.044715 * $0 * $0 * $0))) })
        unary("square", { $0.squared() }, { $0 * $0 })
        unary("sqrt", { $0.sqrt() }, { $0.squareRoot() }, positive: true)
        unary("neg and scalars", { -($0 * 3 + 1) / 2 }, { -($0 * 3 + 1) / 2 })
    }

    @Test func broadcastingBinaryOperations() {
        let a = randomTensor([2, 3, 4], seed: 1), b = randomTensor([3, 1], seed: 2)
        let bPositive = b.squared() + 0.5
        func bcast(_ x: [[Double]], _ op: (Double, Double) -> Double) -> [Double] {
            var out: [Double] = []
            for i in 0..<2 { for j in 0..<3 { for k in 0..<4 { out.append(op(x[0][(i * 3 + j) * 4 + k], x[1][j])) } } }
            return out
        }
        check([a, b], "add", function: { $0[0] + $0[1] }, reference: { bcast($0, +) })
        check([a, b], "sub", function: { $0[0] - $0[1] }, reference: { bcast($0, -) })
        check([a, b], "mul", function: { $0[0] * $0[1] }, reference: { bcast($0, *) })
        check([a, bPositive], "div", function: { $0[0] / $0[1] }, reference: { bcast($0, /) })
    }

    @Test func reductions() {
        let x = randomTensor([3, 4, 2], seed: 4)
        func sumAxis1(_ x: [[Double]]) -> [Double] {
            var out = [Double](repeating: 0, count: 6)
            for i in 0..<3 { for j in 0..<4 { for k in 0..<2 { out[i * 2 + k] += x[0][(i * 4 + j) * 2 + k] } } }
            return out
        }
        check([x], "sum axis 1", function: { $0[0].sum(axes: [1]) }, reference: sumAxis1)
        check([x], "mean all", function: { $0[0].mean() }, reference: { [$0[0].reduce(0, +) / 24] })
        check([x], "max last", function: { $0[0].max(axes: [-1]) }, reference: { x in
            (0..<12).map { r in Swift.max(x[0][2 * r], x[0][2 * r + 1]) }
        })
    }

    @Test func softmaxAndLogSumExp() {
        let x = randomTensor([4, 6], seed: 8, scale: 2)
        func rows(_ x: [Double], _ f: ([Double]) -> [Double]) -> [Double] { (0..<4).flatMap { f(Array(x[($0 * 6)..<($0 * 6 + 6)])) } }
        check([x], "softmax", function: { $0[0].softmax() }, reference: { x in rows(x[0]) { r in
            let m = r.max()!; let e = r.map { Foundation.exp($0 - m) }; let s = e.reduce(0, +); return e.map { $0 / s } } })
        check([x], "logsumexp", function: { $0[0].logsumexp() }, reference: { x in rows(x[0]) { r in
            let m = r.max()!; return [m + Foundation.log(r.map { Foundation.exp($0 - m) }.reduce(0, +))] } })
    }

    @Test(arguments: [(false, false), (false, true), (true, false), (true, true)])
    func matmulGradients(transA: Bool, transB: Bool) {
        let (m, n, k) = (3, 4, 5)
        let a = randomTensor(transA ? [k, m] : [m, k], seed: 1), b = randomTensor(transB ? [n, k] : [k, n], seed: 2)
        check([a, b], "matmul tA=\(transA) tB=\(transB)", function: { matmul($0[0], $0[1], transA: transA, transB: transB) },
              reference: { referenceProduct($0[0], $0[1], m: m, n: n, k: k, transA: transA, transB: transB) })
    }

    @Test func batchedMatmulWithSharedWeight() {
        let x = randomTensor([2, 3, 4], seed: 3), w = randomTensor([5, 4], seed: 4)
        func shared(_ v: [[Double]]) -> [Double] {
            var out: [Double] = []
            for bi in 0..<2 {
                let xb = Array(v[0][(bi * 12)..<(bi * 12 + 12)])
                out += referenceProduct(xb, v[1], m: 3, n: 5, k: 4, transA: false, transB: true)
            }
            return out
        }
        check([x, w], "x·Wᵀ batched", function: { matmul($0[0], $0[1], transB: true) }, reference: shared)
        let y = randomTensor([2, 4, 3], seed: 5)
        func batched(_ v: [[Double]]) -> [Double] {
            var out: [Double] = []
            for bi in 0..<2 {
                let xb = Array(v[0][(bi * 12)..<(bi * 12 + 12)]), yb = Array(v[1][(bi * 12)..<(bi * 12 + 12)])
                out += referenceProduct(xb, yb, m: 3, n: 3, k: 4, transA: false, transB: false)
            }
            return out
        }
        check([x, y], "batched x·y", function: { matmul($0[0], $0[1]) }, reference: batched)
    }

    @Test func shapeOperations() {
        let x = randomTensor([2, 3, 4], seed: 6)
        check([x], "permute", function: { $0[0].permuted([2, 0, 1]) }, reference: { v in
            var out: [Double] = []
            for k in 0..<4 { for i in 0..<2 { for j in 0..<3 { out.append(v[0][(i * 3 + j) * 4 + k]) } } }
            return out
        })
        func sliced(_ v: [[Double]]) -> [Double] {
            var out: [Double] = []
            for i in 0..<2 { for j in 1..<3 { for k in 0..<4 { out.append(v[0][(i * 3 + j) * 4 + k]) } } }
            return out
        }
        check([x], "slice+reshape", function: { $0[0].slice(axis: 1, 1..<3).reshaped([-1]) }, reference: sliced)
        let y = randomTensor([2, 1, 4], seed: 7)
        func joined(_ v: [[Double]]) -> [Double] {
            var out: [Double] = []
            for i in 0..<2 {
                for j in 0..<3 { for k in 0..<4 { out.append(v[0][(i * 3 + j) * 4 + k]) } }
                for k in 0..<4 { out.append(v[1][i * 4 + k]) }
            }
            return out
        }
        check([x, y], "concatenate", function: { Variable.concatenate([$0[0], $0[1]], axis: 1) }, reference: joined)
        func pieces(_ v: [[Double]]) -> [Double] {
            // split [2, 3, 4] along axis 2 into [1, 3] and use piece 1 doubled plus piece 0's sum
            var out: [Double] = []
            for i in 0..<2 { for j in 0..<3 {
                let row = (0..<4).map { v[0][(i * 3 + j) * 4 + $0] }
                out += row[1...].map { 2 * $0 + row[0] }
            } }
            return out
        }
        check([x], "split", function: { v in
            let p = v[0].split(axis: 2, sizes: [1, 3])
            return p[1] * 2 + p[0]
        }, reference: pieces)
        let unused = Variable(x, requiresGrad: true)
        let halves = unused.split(axis: -1, sizes: [2, 2])
        halves[1].sum().backward()
        #expect(unused.grad?.slice(axis: 2, 0..<2).scalars.allSatisfy { $0 == 0 } == true)
        #expect(unused.grad?.slice(axis: 2, 2..<4).scalars.allSatisfy { $0 == 1 } == true)
        let table = randomTensor([4, 3], seed: 8)
        check([table], "gather rows (repeated)", function: { $0[0].gatherRows([3, 1, 3]) }, reference: { v in
            [3, 1, 3].flatMap { r in (0..<3).map { v[0][r * 3 + $0] } }
        })
    }
}

func referenceProduct(_ a: [Double], _ b: [Double], m: Int, n: Int, k: Int, transA: Bool, transB: Bool) -> [Double] {
    var c = [Double](repeating: 0, count: m * n)
    for i in 0..<m { for j in 0..<n { for p in 0..<k {
        c[i * n + j] += (transA ? a[p * m + i] : a[i * k + p]) * (transB ? b[j * k + p] : b[p * n + j])
    } } }
    return c
}

@Suite struct TapeBehaviour {
    @Test func valueUsedTwiceAccumulates() {
        let x = Variable(Tensor(shape: [2], scalars: [1, 2]), requiresGrad: true)
        let y = (x * x + x * 3).sum()
        y.backward()
        #expect(x.grad?.scalars == [5, 7])   // 2x + 3
    }

    @Test func noGradRecordsNothing() {
        let x = Variable(Tensor.ones([2]), requiresGrad: true)
        let y = withNoGrad { (x * 2).sum() }
        #expect(!y.requiresGrad)
        y.backward()
        #expect(x.grad == nil)
    }

    @Test func gradientsAccumulateAcrossBackwardCallsUntilCleared() {
        let x = Variable(Tensor.ones([3]), requiresGrad: true)
        (x * 2).sum().backward()
        (x * 2).sum().backward()
        #expect(x.grad?.scalars == [4, 4, 4])
        x.zeroGrad()
        #expect(x.grad == nil)
    }

    /// The backward drops each operation's saved tensors once it has run: a parameter is shared
    /// with the tape until then and unshared after, so the optimizer updates it without a copy,
    /// even while the graph's output is still alive.
    @Test func backwardReleasesSavedTensors() {
        let x = Variable(randomTensor([4, 3], seed: 61)), w = Variable(randomTensor([2, 3], seed: 62), requiresGrad: true)
        let y = matmul(x, w, transB: true).sum()
        let sharedBefore = !w.value.ownsStorageUniquely()
        #expect(sharedBefore, "the product's backward should hold the weight")
        y.backward()
        let uniqueAfter = w.value.ownsStorageUniquely()
        #expect(uniqueAfter, "the weight is still shared after the backward ran")
        #expect(y.requiresGrad)
    }

    @Test func aSecondBackwardThroughTheSameGraphStopsWithAMessage() async {
        await #expect(processExitsWith: .failure) {
            let x = Variable(Tensor.ones([3]), requiresGrad: true)
            let y = (x * 2).sum()
            y.backward()
            y.backward()
        }
    }

    /// A fused two-output function with a hand-written backward is one node on the tape.
    struct ScaleAndShift: DifferentiableFunction {
        func forward(_ inputs: [Tensor]) -> (outputs: [Tensor], saved: Tensor) {
            (outputs: [inputs[0] * 3, inputs[0] + inputs[1]], saved: inputs[0])
        }
        func backward(_ saved: Tensor, outputGradients: [Tensor?]) -> [Tensor?] {
            let g0 = outputGradients[0] ?? .zeros(saved.shape), g1 = outputGradients[1] ?? .zeros(saved.shape)
            return [g0 * 3 + g1, g1]
        }
    }

    @Test func fusedFunctionWithTwoOutputs() {
        let a = randomTensor([4], seed: 1), b = randomTensor([4], seed: 2)
        let result = gradientCheck([a, b], function: { v in
            let out = ScaleAndShift()(v)
            return out[0] * out[1]
        }, reference: { v in (0..<4).map { (v[0][$0] * 3) * (v[0][$0] + v[1][$0]) } })
        #expect(result.worst < 1e-5, "\(result)")
    }

    @Test func deepChainDoesNotOverflowTheStack() {
        let x = Variable(Tensor.ones([1]), requiresGrad: true)
        var y = x
        for _ in 0..<20000 { y = y * 1.0 }
        y.sum().backward()
        #expect(x.grad?.scalars == [1])
    }

    /// Used only by the profiler test, so its entry counts nothing from tests running beside it.
    struct ProfiledDouble: DifferentiableFunction {
        func forward(_ inputs: [Tensor]) -> (outputs: [Tensor], saved: Void) { ([inputs[0] * 2], ()) }
        func backward(_ saved: Void, outputGradients: [Tensor?]) -> [Tensor?] { [outputGradients[0].map { $0 * 2 }] }
    }

    @Test func profilerTimesEachOperationByName() {
        let x = Variable(randomTensor([64, 64], seed: 3), requiresGrad: true)
        TapeProfiler.start()
        let h = ProfiledDouble()([x])[0]
        let y = ProfiledDouble()([h])[0]
        (y * h).sum().backward()   // h is used twice: its gradients are summed
        let entries = TapeProfiler.stop()
        let kernel = entries.first { $0.operation == "ProfiledDouble" }
        #expect(kernel?.calls == 2)
        #expect((kernel?.forwardSeconds ?? 0) > 0 && (kernel?.backwardSeconds ?? 0) > 0)
        #expect(entries.contains { $0.operation == "* (Operations)" && $0.calls >= 1 })
        #expect(entries.contains { $0.operation == "sum (Operations)" && $0.calls >= 1 })
        #expect((entries.first { $0.operation.hasPrefix("gradient sums") }?.calls ?? 0) >= 1)
        // Stopped: nothing more is counted.
        _ = ProfiledDouble()([x])
        TapeProfiler.start()
        #expect(TapeProfiler.stop().first { $0.operation == "ProfiledDouble" } == nil)
        #expect(x.grad?.scalars == (x.value * 16).scalars)   // Σ y·h = Σ 8x², so 16x
    }
}

/// `projections` (several row blocks of weights applied to one input as one node).
@Suite struct ProjectionGradients {
    @Test func gradientsMatchFiniteDifferences() {
        // Small: the separate-products path. One weight cut in two, a second weight of which only
        // rows 1..<3 are used (row 0 must get a zero gradient).
        let x = randomTensor([2, 3, 4], seed: 31), w0 = randomTensor([5, 4], seed: 32), w1 = randomTensor([3, 4], seed: 33)
        let result = gradientCheck([x, w0, w1], function: { v in
            let parts = projections(v[0], [(v[1], 0..<2), (v[1], 2..<5), (v[2], 1..<3)])
            return Variable.concatenate(parts, axis: 2)
        }, reference: { v in
            var out: [Double] = []
            for t in 0..<6 {
                let xt = Array(v[0][(t * 4)..<(t * 4 + 4)])
                for (w, rows) in [(v[1], 0..<5), (v[2], 1..<3)] {
                    for r in rows { out.append((0..<4).reduce(0) { $0 + xt[$1] * w[r * 4 + $1] }) }
                }
            }
            return out
        })
        #expect(result.worst < 2e-5, "projections: \(result)")
    }

    /// At a model's shape (300 tokens) the node runs on the skinny GEMM's several-outputs,
    /// sum-of-products and several-transposed-products paths; values and gradients against Double, with one part left unused.
    @Test func skinnyPathMatchesTheDoubleReference() {
        let (tokens, inFeatures) = (300, 32)
        let x = Variable(randomTensor([2, 150, inFeatures], seed: 41), requiresGrad: true)
        let w0 = Variable(randomTensor([44, inFeatures], seed: 42), requiresGrad: true)
        let w1 = Variable(randomTensor([32, inFeatures], seed: 43), requiresGrad: true)
        let parts: [(weight: Variable, rows: Range<Int>)] = [(w0, 0..<16), (w0, 16..<40), (w0, 40..<44), (w1, 0..<32)]
        #expect(skinnyProductsApply(m: tokens, k: inFeatures, widths: parts.map(\.rows.count)))
        #expect(skinnySumOfProductsApplies(m: tokens, n: inFeatures, ks: parts.map(\.rows.count)))
        #expect(skinnyTransposedProductsApply(n: inFeatures, k: tokens, rows: parts.map(\.rows.count)))
        let ys = projections(x, parts)
        // L = Σ_p Σ y_p ⊙ G_p over the parts used (part 2 unused: rows 40..<44 of w0 get zero).
        let used = [0, 1, 3]
        let upstream = parts.indices.map { randomTensor([2, 150, parts[$0].rows.count], seed: 50 + UInt64($0)) }
        var loss: Variable? = nil
        for p in used {
            let term = (ys[p] * Variable(upstream[p])).sum()
            loss = loss.map { $0 + term } ?? term
        }
        loss!.backward()

        let (xd, w0d, w1d) = (x.value.doubles, w0.value.doubles, w1.value.doubles)
        var dx = [Double](repeating: 0, count: tokens * inFeatures)
        var dw0 = [Double](repeating: 0, count: 44 * inFeatures), dw1 = [Double](repeating: 0, count: 32 * inFeatures)
        for (p, part) in parts.enumerated() {
            let (w, isFirst) = part.weight === w0 ? (w0d, true) : (w1d, false)
            let g = upstream[p].doubles, n = part.rows.count
            let y = ys[p].value.scalars
            var want = [Double](repeating: 0, count: tokens * n)
            for t in 0..<tokens { for (j, r) in part.rows.enumerated() {
                for c in 0..<inFeatures { want[t * n + j] += xd[t * inFeatures + c] * w[r * inFeatures + c] }
            } }
            expectClose(y, want, tolerance: 2e-6, "projections: part \(p) forward")
            guard used.contains(p) else { continue }
            for t in 0..<tokens { for (j, r) in part.rows.enumerated() {
                let gv = g[t * n + j]
                for c in 0..<inFeatures {
                    dx[t * inFeatures + c] += gv * w[r * inFeatures + c]
                    if isFirst { dw0[r * inFeatures + c] += gv * xd[t * inFeatures + c] } else { dw1[r * inFeatures + c] += gv * xd[t * inFeatures + c] }
                }
            } }
        }
        expectClose(x.grad!.scalars, dx, tolerance: 2e-6, "projections: input gradient")
        expectClose(w0.grad!.scalars, dw0, tolerance: 1e-5, "projections: gradient of the weight cut in three")
        expectClose(w1.grad!.scalars, dw1, tolerance: 1e-5, "projections: gradient of the whole weight")
        #expect(w0.grad!.slice(axis: 0, 40..<44).scalars.allSatisfy { $0 == 0 }, "projections: rows of an unused part must get zero")
    }
}
