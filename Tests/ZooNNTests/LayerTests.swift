import Testing
import Foundation
import ZooTensor
import ZooAutograd
import ZooNN
import ZooTestSupport

/// Layers against Double references and finite differences (gradientCheck).
@Suite struct LayerGradients {
    @Test func linearWithBias() {
        let x = randomTensor([2, 5, 4], seed: 2), w = randomTensor([3, 4], seed: 1), b = randomTensor([3], seed: 3)
        let result = gradientCheck([x, w, b], function: { v in Linear(sharing: v[1], bias: v[2])(v[0]) }, reference: { v in
            var out: [Double] = []
            for r in 0..<10 { for o in 0..<3 {
                var s = v[2][o]; for i in 0..<4 { s += v[0][r * 4 + i] * v[1][o * 4 + i] }; out.append(s)
            } }
            return out
        })
        #expect(result.worst < 1e-5, "\(result)")
        var g = SeededGenerator(seed: 1)
        let layer = Linear(4, 3, bias: true, generator: &g)
        #expect(layer.namedParameters().map(\.name) == ["weight", "bias"])
        #expect(layer.namedParameters().map(\.decays) == [true, false])
        expectClose(layer.apply(x), layer(Variable(x)).value, tolerance: 0, "apply ≡ callAsFunction")
    }

    @Test func rmsNormForwardAndGradients() {
        let x = randomTensor([3, 8], seed: 4), w = randomTensor([8], seed: 5)
        let eps = 1e-5
        let result = gradientCheck([x, w], function: { v in rmsNorm(v[0], weight: v[1], epsilon: Float(eps)) }, reference: { v in
            var out: [Double] = []
            for r in 0..<3 {
                let row = Array(v[0][(r * 8)..<(r * 8 + 8)])
                let rs = 1 / (row.map { $0 * $0 }.reduce(0, +) / 8 + eps).squareRoot()
                out += (0..<8).map { row[$0] * rs * v[1][$0] }
            }
            return out
        })
        #expect(result.worst < 2e-5, "\(result)")
    }

    @Test func gatedRMSNormMatchesComposition() {
        let y = randomTensor([2, 3, 6], seed: 6), z = randomTensor([2, 3, 6], seed: 7)
        let norm = GatedRMSNorm(6)
        let result = gradientCheck([y, z], function: { v in norm(v[0], gate: v[1]) }, reference: { v in
            var out: [Double] = []
            for r in 0..<6 {
                let gated = (0..<6).map { i -> Double in let zz = v[1][r * 6 + i]; return v[0][r * 6 + i] * zz / (1 + Foundation.exp(-zz)) }
                let rs = 1 / (gated.map { $0 * $0 }.reduce(0, +) / 6 + 1e-5).squareRoot()
                out += gated.map { $0 * rs }
            }
            return out
        })
        #expect(result.worst < 2e-5, "\(result)")
        expectClose(norm.apply(y, gate: z), norm(Variable(y), gate: Variable(z)).value, tolerance: 1e-7, "apply ≡ callAsFunction")
    }

    /// Rows beyond one block of the parallel backward (32 rows) and a width that is not a multiple
    /// of the 16-lane vectors, with the weight among the checked inputs.
    @Test func rmsNormAcrossBlocksAndRaggedWidth() {
        let (rows, d) = (70, 37)
        let x = randomTensor([rows, d], seed: 14), w = randomTensor([d], seed: 15)
        let result = gradientCheck([x, w], function: { v in rmsNorm(v[0], weight: v[1], epsilon: 1e-5) }, reference: { v in
            var out: [Double] = []
            for r in 0..<rows {
                let row = Array(v[0][(r * d)..<(r * d + d)])
                let rs = 1 / (row.map { $0 * $0 }.reduce(0, +) / Double(d) + 1e-5).squareRoot()
                out += (0..<d).map { row[$0] * rs * v[1][$0] }
            }
            return out
        })
        #expect(result.worst < 2e-5, "\(result)")
    }

    /// The fused residual sum and norm against finite differences and a Double reference: both
    /// outputs used (h weighted by a constant r, so each output's gradient path is checked), rows
    /// across backward blocks, a ragged width.
    @Test func residualRMSNormGradients() {
        let (rows, d) = (40, 21)
        let x = randomTensor([rows, d], seed: 31), f = randomTensor([rows, d], seed: 32), w = randomTensor([d], seed: 33)
        let r = randomTensor([rows, d], seed: 34)
        let result = gradientCheck([x, f, w], function: { v in
            let (h, y) = residualRMSNorm(v[0], v[1], weight: v[2], epsilon: 1e-5)
            return h * Variable(r) + y
        }, reference: { v in
            var out: [Double] = []
            for row in 0..<rows {
                let h = (0..<d).map { v[0][row * d + $0] + v[1][row * d + $0] }
                let rs = 1 / (h.map { $0 * $0 }.reduce(0, +) / Double(d) + 1e-5).squareRoot()
                out += (0..<d).map { h[$0] * Double(r.scalars[row * d + $0]) + h[$0] * rs * v[2][$0] }
            }
            return out
        })
        #expect(result.worst < 2e-5, "\(result)")
    }

    /// `residualRMSNorm` performs the operations of `x + f` then `rmsNorm`, and sums h's two
    /// gradients (from downstream and through the norm) as the tape does: outputs and every
    /// gradient bit-identical to the composition, with only the normalised output used as well.
    @Test(arguments: [true, false])
    func residualRMSNormIsBitIdenticalToItsComposition(bothOutputsUsed: Bool) {
        let shape = [3, 50, 40]
        let x0 = randomTensor(shape, seed: 41), f0 = randomTensor(shape, seed: 42), w0 = randomTensor([40], seed: 43)
        let rh = randomTensor(shape, seed: 44), ry = randomTensor(shape, seed: 45)
        func run(fused: Bool) -> [[Float]] {
            let (x, f, w) = (parameter(x0), parameter(f0), parameter(w0))
            let h: Variable, y: Variable
            if fused { (h, y) = residualRMSNorm(x, f, weight: w, epsilon: 1e-5) }
            else { h = x + f; y = rmsNorm(h, weight: w, epsilon: 1e-5) }
            let loss = bothOutputsUsed ? (h * Variable(rh)).sum() + (y * Variable(ry)).sum() : (y * Variable(ry)).sum()
            loss.backward()
            return [h.value, y.value, x.grad!, f.grad!, w.grad!].map(\.scalars)
        }
        let fused = run(fused: true), separate = run(fused: false)
        for (i, name) in ["h", "y", "∂x", "∂f", "∂w"].enumerated() {
            let firstDifference = fused[i].indices.first { fused[i][$0] != separate[i][$0] }
            #expect(fused[i].count == separate[i].count && firstDifference == nil,
                    "residualRMSNorm: \(name) differs from the composition at element \(firstDifference ?? -1)")
        }
        #expect(fused[2].contains { $0 != 0 } && fused[4].contains { $0 != 0 }, "gradients are all zero")
    }

    /// The grouped form (mamba_ssm's RMSNormGated, group_size = E/G) with a weight, across blocks
    /// and with ragged group widths.
    @Test func groupedGatedRMSNormGradients() {
        let (rows, groups, size) = (40, 2, 19)
        let e = groups * size
        let y = randomTensor([rows, e], seed: 16), z = randomTensor([rows, e], seed: 17), w = randomTensor([e], seed: 18)
        let result = gradientCheck([y, z, w], function: { v in gatedRMSNorm(v[0], gate: v[1], weight: v[2], groups: groups, epsilon: 1e-5) },
                                   reference: { v in
            var out: [Double] = []
            for r in 0..<rows {
                for grp in 0..<groups {
                    let base = r * e + grp * size
                    let gated = (0..<size).map { i -> Double in
                        let zz = v[1][base + i]; return v[0][base + i] * zz / (1 + Foundation.exp(-zz))
                    }
                    let rs = 1 / (gated.map { $0 * $0 }.reduce(0, +) / Double(size) + 1e-5).squareRoot()
                    out += (0..<size).map { gated[$0] * rs * v[2][grp * size + $0] }
                }
            }
            return out
        })
        #expect(result.worst < 2e-5, "\(result)")
    }

    @Test(arguments: [MLP.Kind.swiglu, .gelu])
    func mlpGradients(kind: MLP.Kind) {
        var g = SeededGenerator(seed: 8)
        let mlp = MLP(dim: 4, hidden: 6, kind: kind, std: 0.5, generator: &g)
        let x = randomTensor([3, 4], seed: 9)
        let params = mlp.namedParameters()
        let result = gradientCheck([x] + params.map(\.variable.value), function: { v in
            mlpWith(params: Array(v.dropFirst()), kind: kind, x: v[0])
        }, reference: { v in
            func lin(_ x: [Double], _ w: [Double], _ i: Int, _ o: Int) -> [Double] {
                (0..<(x.count / i)).flatMap { r in (0..<o).map { c in (0..<i).map { x[r * i + $0] * w[c * i + $0] }.reduce(0, +) } }
            }
            func sig(_ a: Double) -> Double { 1 / (1 + Foundation.exp(-a)) }
            if kind == .swiglu {
                let gate = lin(v[0], v[1], 4, 6), up = lin(v[0], v[2], 4, 6)
                let h = zip(gate, up).map { $0 * sig($0) * $1 }
                return lin(h, v[3], 6, 4)
            } else {
                let h = lin(v[0], v[1], 4, 6).map { 0.5 * $0 * (1 + Foundation.tanh(0.7978845608028654 * ($0 + 0.044715 * $0 * $0 * $0))) }
                return lin(h, v[2], 6, 4)
            }
        })
        #expect(result.worst < 3e-5, "\(result)")
        #expect(params.map(\.name) == (kind == .swiglu ? ["gate.weight", "up.weight", "down.weight"] : ["fc1.weight", "fc2.weight"]))
    }

    /// The fused GELU MLP node against finite differences, at a shape small enough for the
    /// OpenBLAS path (the product first, then GELU and GELU′ over blocks of rows).
    @Test func geluMLPGradients() {
        let x = randomTensor([5, 4], seed: 12), w1 = randomTensor([6, 4], seed: 13, scale: 0.5), w2 = randomTensor([4, 6], seed: 14, scale: 0.5)
        let result = gradientCheck([x, w1, w2], function: { v in geluMLP(v[0], fc1: v[1], fc2: v[2]) }, reference: { v in
            func lin(_ x: [Double], _ w: [Double], _ i: Int, _ o: Int) -> [Double] {
                (0..<(x.count / i)).flatMap { r in (0..<o).map { c in (0..<i).map { x[r * i + $0] * w[c * i + $0] }.reduce(0, +) } }
            }
            let h = lin(v[0], v[1], 4, 6).map { 0.5 * $0 * (1 + Foundation.tanh(0.7978845608028654 * ($0 + 0.044715 * $0 * $0 * $0))) }
            return lin(h, v[2], 6, 4)
        })
        #expect(result.worst < 3e-5, "\(result)")
    }

    /// `geluMLP` uses the same products and element-wise kernels as the three separate nodes, so
    /// its output and every gradient must match theirs bit for bit: with 300 rows through the skinny
    /// GEMM (GELU and GELU′ on each 48-row block as it is computed, the last block partial), with 3
    /// rows through OpenBLAS and then the blocks.
    @Test(arguments: [[2, 150, 32], [3, 32]])
    func geluMLPIsBitIdenticalToItsComposition(shape: [Int]) {
        let d = shape[shape.count - 1], hidden = 80
        let x0 = randomTensor(shape, seed: 21), w1 = randomTensor([hidden, d], seed: 22, scale: 0.3)
        let w2 = randomTensor([d, hidden], seed: 23, scale: 0.3), r = randomTensor(shape, seed: 24)
        func run(fused: Bool) -> [[Float]] {
            let (x, a, b) = (parameter(x0), parameter(w1), parameter(w2))
            let y = fused ? geluMLP(x, fc1: a, fc2: b) : matmul(matmul(x, a, transB: true).gelu(), b, transB: true)
            (y * Variable(r)).sum().backward()
            return [y.value, x.grad!, a.grad!, b.grad!].map(\.scalars)
        }
        let fused = run(fused: true), separate = run(fused: false)
        for (i, name) in ["output", "∂x", "∂W1", "∂W2"].enumerated() {
            let firstDifference = fused[i].indices.first { fused[i][$0] != separate[i][$0] }
            #expect(fused[i].count == separate[i].count && firstDifference == nil,
                    "geluMLP \(shape): \(name) differs from the composition at element \(firstDifference ?? -1)")
        }
        #expect(fused[1].contains { $0 != 0 } && fused[2].contains { $0 != 0 }, "gradients are all zero")
    }

    func mlpWith(params: [Variable], kind: MLP.Kind, x: Variable) -> Variable {
        if kind == .swiglu {
            let gate = matmul(x, params[0], transB: true), up = matmul(x, params[1], transB: true)
            return matmul(gate.silu() * up, params[2], transB: true)
        }
        return matmul(matmul(x, params[0], transB: true).gelu(), params[1], transB: true)
    }

    @Test func mlpLayerEqualsItsComposition() {
        var g = SeededGenerator(seed: 10)
        for kind in MLP.Kind.allCases {
            let mlp = MLP(dim: 8, hidden: 16, kind: kind, generator: &g)
            let x = randomTensor([2, 3, 8], seed: 11)
            let expected = mlpWith(params: mlp.namedParameters().map(\.variable), kind: kind, x: Variable(x)).value
            expectClose(mlp(Variable(x)).value, expected, tolerance: 1e-7, "\(kind)")
            expectClose(mlp.apply(x), expected, tolerance: 1e-7, "\(kind) apply")
        }
    }
}

@Suite struct ConvolutionRotaryLoss {
    func convReference(_ x: [Double], _ w: [Double], _ b: [Double], batch: Int, t: Int, c: Int, k: Int) -> [Double] {
        var out = [Double](repeating: 0, count: batch * t * c)
        for bi in 0..<batch { for ti in 0..<t { for ci in 0..<c {
            var s = b[ci]
            for j in 0..<k { let src = ti - (k - 1) + j; if src >= 0 { s += w[ci * k + j] * x[(bi * t + src) * c + ci] } }
            out[(bi * t + ti) * c + ci] = s
        } } }
        return out
    }

    @Test(arguments: [(1, 5, 3, 4), (2, 7, 20, 4), (1, 3, 17, 1)])
    func causalConvGradients(batch: Int, t: Int, c: Int, k: Int) {
        var g = SeededGenerator(seed: 12)
        let conv = CausalConv1d(channels: c, kernelSize: k, generator: &g)
        let x = randomTensor([batch, t, c], seed: 13)
        let result = gradientCheck([x, conv.weight.value, conv.bias!.value], function: { v in
            CausalConv1d(sharing: v[1], bias: v[2])(v[0])
        }, reference: { v in convReference(v[0], v[1], v[2], batch: batch, t: t, c: c, k: k) })
        #expect(result.worst < 2e-5, "\(result)")
    }

    /// SiLU inside the convolution's node, against finite differences; the second shape spans
    /// two of the backward's 64-step blocks.
    @Test(arguments: [(1, 5, 3, 4), (1, 70, 3, 2)])
    func causalConvSiLUGradients(batch: Int, t: Int, c: Int, k: Int) {
        var g = SeededGenerator(seed: 17)
        let conv = CausalConv1d(channels: c, kernelSize: k, generator: &g)
        let x = randomTensor([batch, t, c], seed: 18)
        let result = gradientCheck([x, conv.weight.value, conv.bias!.value], function: { v in
            CausalConv1d(sharing: v[1], bias: v[2])(v[0], activation: .silu)
        }, reference: { v in
            convReference(v[0], v[1], v[2], batch: batch, t: t, c: c, k: k).map { $0 / (1 + Foundation.exp(-$0)) }
        })
        #expect(result.worst < 2e-5, "\(result)")
    }

    /// Output and gradients of one convolution node, loss Σ y ⊙ r.
    func convolutionGradients(_ x0: Tensor, _ conv: CausalConv1d, _ r: Tensor, fusedSiLU: Bool?) -> [[Float]] {
        let x = parameter(x0), w = parameter(conv.weight.value), b = parameter(conv.bias!.value)
        let layer = CausalConv1d(sharing: w, bias: b)
        let y: Variable
        switch fusedSiLU {
        case nil: y = layer(x)
        case true?: y = layer(x, activation: .silu)
        case false?: y = layer(x).silu()
        }
        (y * Variable(r)).sum().backward()
        return [y.value, x.grad!, w.grad!, b.grad!].map(\.scalars)
    }

    /// The backward over several 64-step blocks of two sequences (rows of dx gathered from the
    /// next blocks' steps, dw and db summed over the blocks), against Double:
    ///   dx[s] = Σ_j w[j] r[s + k−1−j],  dw[j] = Σ_t r[t] x[t−(k−1)+j],  db = Σ_t r[t].
    @Test func causalConvBackwardAcrossBlocksMatchesDouble() {
        let (batch, t, c, k) = (2, 150, 21, 4)
        var g = SeededGenerator(seed: 19)
        let conv = CausalConv1d(channels: c, kernelSize: k, generator: &g)
        let x0 = randomTensor([batch, t, c], seed: 20), r = randomTensor([batch, t, c], seed: 21)
        let got = convolutionGradients(x0, conv, r, fusedSiLU: nil)
        let (xv, wv, rv) = (x0.scalars.map(Double.init), conv.weight.value.scalars.map(Double.init), r.scalars.map(Double.init))
        var dx = [Double](repeating: 0, count: batch * t * c), dw = [Double](repeating: 0, count: c * k), db = [Double](repeating: 0, count: c)
        for bi in 0..<batch { for ti in 0..<t { for ci in 0..<c {
            let gr = rv[(bi * t + ti) * c + ci]
            db[ci] += gr
            for j in 0..<k {
                let src = ti - (k - 1) + j
                if src < 0 { continue }
                dx[(bi * t + src) * c + ci] += wv[ci * k + j] * gr
                dw[ci * k + j] += xv[(bi * t + src) * c + ci] * gr
            }
        } } }
        expectClose(got[1], dx, tolerance: 1e-5, "dx")
        expectClose(got[2], dw, tolerance: 1e-4, "dw")
        expectClose(got[3], db, tolerance: 1e-4, "db")
    }

    /// SiLU fused into the node uses the SiLU node's kernels: bit-identical output and gradients.
    /// The backward's partial sums are added in a fixed order: the same bits for 1, 2 or 3 threads.
    @Test(arguments: [(2, 150, 20, 4), (1, 3, 17, 1)])
    func causalConvSiLUIsBitIdenticalAndThreadInvariant(batch: Int, t: Int, c: Int, k: Int) {
        var g = SeededGenerator(seed: 22)
        let conv = CausalConv1d(channels: c, kernelSize: k, generator: &g)
        let x0 = randomTensor([batch, t, c], seed: 23), r = randomTensor([batch, t, c], seed: 24)
        let fused = convolutionGradients(x0, conv, r, fusedSiLU: true), separate = convolutionGradients(x0, conv, r, fusedSiLU: false)
        for (i, name) in ["output", "∂x", "∂w", "∂b"].enumerated() {
            #expect(fused[i] == separate[i], "conv + SiLU \(batch)×\(t)×\(c), k \(k): \(name) differs from conv(x).silu()")
        }
        let saved = ZooThreads.count
        defer { ZooThreads.configure(threads: saved) }
        var byThreads: [[[Float]]] = []
        for threads in [1, 2, 3] {
            ZooThreads.configure(threads: threads)
            byThreads.append(convolutionGradients(x0, conv, r, fusedSiLU: true))
        }
        #expect(byThreads[0] == byThreads[1] && byThreads[1] == byThreads[2], "conv + SiLU: thread counts disagree")
    }

    @Test func causalConvStepEqualsParallel() {
        var g = SeededGenerator(seed: 14)
        let conv = CausalConv1d(channels: 19, kernelSize: 4, generator: &g)
        let x = randomTensor([2, 9, 19], seed: 15)
        let parallel = conv(Variable(x)).value
        var state = conv.initialState(batch: 2)
        let first = conv.step(x.slice(axis: 1, 0..<5), state: &state)
        let rest = (5..<9).map { conv.step(x.slice(axis: 1, $0..<($0 + 1)), state: &state) }
        expectClose(Tensor.concatenate([first] + rest, axis: 1), parallel, tolerance: 1e-6, "prefill + steps")
        #expect(state.shape == [2, 19, 3])
    }

    @Test func rotaryMatchesDoubleAndIsOrthogonal() {
        let rope = RotaryEmbedding(headDim: 8, base: 100)
        let x = randomTensor([1, 5, 2, 8], seed: 16)
        let result = gradientCheck([x], function: { rope($0[0], offset: 3) }, reference: { v in
            var out = v[0]
            for t in 0..<5 { for h in 0..<2 { for i in 0..<4 {
                let angle = Double(3 + t) * Foundation.pow(100, -2 * Double(i) / 8)
                let base = (t * 2 + h) * 8
                let x0 = v[0][base + i], x1 = v[0][base + i + 4]
                out[base + i] = x0 * Foundation.cos(angle) - x1 * Foundation.sin(angle)
                out[base + i + 4] = x0 * Foundation.sin(angle) + x1 * Foundation.cos(angle)
            } } }
            return out
        })
        #expect(result.worst < 2e-5, "\(result)")
        // Relative positions: ⟨R(p)q, R(p')k⟩ depends only on p − p'.
        let q = randomTensor([1, 1, 1, 8], seed: 17), k = randomTensor([1, 1, 1, 8], seed: 18)
        func dot(_ a: Tensor, _ b: Tensor) -> Float { zip(a.scalars, b.scalars).map { $0 * $1 }.reduce(0, +) }
        let d1 = dot(rope.apply(q, offset: 10), rope.apply(k, offset: 7))
        let d2 = dot(rope.apply(q, offset: 40), rope.apply(k, offset: 37))
        #expect(abs(d1 - d2) < 1e-4)
    }

    /// The rotation tables are cached per (length, offset): alternating positions and lengths on one
    /// embedding must give exactly what a fresh embedding gives, and an empty sequence is fine.
    @Test func rotaryTableCacheNeverServesOtherPositions() {
        let shared = RotaryEmbedding(headDim: 8, base: 100)
        let x = randomTensor([2, 6, 3, 8], seed: 19)
        for (offset, length) in [(0, 6), (5, 6), (0, 6), (0, 4), (5, 6), (0, 4)] {
            let part = x.slice(axis: 1, 0..<length)
            let fresh = RotaryEmbedding(headDim: 8, base: 100).apply(part, offset: offset)
            #expect(shared.apply(part, offset: offset).scalars == fresh.scalars, "offset \(offset), length \(length)")
            #expect(shared.apply(part, offset: offset, inverse: true).scalars
                    == RotaryEmbedding(headDim: 8, base: 100).apply(part, offset: offset, inverse: true).scalars)
        }
        #expect(shared.apply(x.slice(axis: 1, 0..<0), offset: 3).shape == [2, 0, 3, 8])
    }

    @Test func crossEntropyIgnoresLabelsAndMatchesDouble() {
        let logits = randomTensor([5, 7], seed: 19, scale: 2)
        let targets = [3, -100, 0, 6, -100]
        let result = gradientCheck([logits], function: { crossEntropy($0[0], targets: targets) }, reference: { v in
            var total = 0.0, n = 0.0
            for (r, t) in targets.enumerated() where t != -100 {
                let row = Array(v[0][(r * 7)..<(r * 7 + 7)]); let m = row.max()!
                total += m + Foundation.log(row.map { Foundation.exp($0 - m) }.reduce(0, +)) - row[t]; n += 1
            }
            return [total / n]
        })
        #expect(result.worst < 2e-5, "\(result)")
        let none = crossEntropy(Variable(logits, requiresGrad: true), targets: Array(repeating: -100, count: 5))
        #expect(none.value.item == 0)
    }
}

@Suite struct Optimisation {
    @Test func adamWMatchesDoubleReference() {
        let p = Variable(Tensor(shape: [3], scalars: [0.5, -1, 2]), requiresGrad: true)
        let q = Variable(Tensor(shape: [2], scalars: [1, 1]), requiresGrad: true)
        let params = [NamedParameter("p", p), NamedParameter("q", q, decays: false)]
        var opt = AdamW(beta1: 0.9, beta2: 0.99, epsilon: 1e-8, weightDecay: 0.1)
        var pd = [0.5, -1, 2], qd = [1.0, 1], mp = [0.0, 0, 0], vp = [0.0, 0, 0], mq = [0.0, 0], vq = [0.0, 0]
        let grads: [[Double]] = [[0.1, -0.2, 0.3], [1, -1, 0.5], [-0.3, 0.2, 0.1]]
        for (step, gr) in grads.enumerated() {
            p.grad = Tensor(shape: [3], doubles: gr); q.grad = Tensor(shape: [2], doubles: [gr[0], gr[1]])
            opt.step(params, learningRate: 0.01)
            let t = Double(step + 1)
            func update(_ x: inout [Double], _ m: inout [Double], _ v: inout [Double], _ g: [Double], decay: Double) {
                for i in 0..<x.count {
                    m[i] = 0.9 * m[i] + 0.1 * g[i]; v[i] = 0.99 * v[i] + 0.01 * g[i] * g[i]
                    let mh = m[i] / (1 - Foundation.pow(0.9, t)), vh = v[i] / (1 - Foundation.pow(0.99, t))
                    x[i] -= 0.01 * (mh / (vh.squareRoot() + 1e-8) + decay * x[i])
                }
            }
            update(&pd, &mp, &vp, gr, decay: 0.1)
            update(&qd, &mq, &vq, [gr[0], gr[1]], decay: 0)
        }
        expectClose(p.value.scalars, pd, tolerance: 1e-6, "decayed parameter")
        expectClose(q.value.scalars, qd, tolerance: 1e-6, "excluded parameter")
        #expect(opt.stepCount == 3)
    }

    @Test func cosineScheduleWithWarmup() {
        #expect(cosineLearningRate(step: 0, warmup: 10, total: 110, peak: 1) == 0.1)
        #expect(cosineLearningRate(step: 9, warmup: 10, total: 110, peak: 1) == 1)
        #expect(abs(cosineLearningRate(step: 60, warmup: 10, total: 110, peak: 1, minimum: 0.1) - 0.55) < 1e-6)
        #expect(cosineLearningRate(step: 110, warmup: 10, total: 110, peak: 1, minimum: 0.1) == 0.1)
    }

    @Test func clippingScalesToTheGlobalNorm() {
        let a = Variable(Tensor.zeros([2]), requiresGrad: true), b = Variable(Tensor.zeros([1]), requiresGrad: true)
        a.grad = Tensor(shape: [2], scalars: [3, 0]); b.grad = Tensor(shape: [1], scalars: [4])
        let params = [NamedParameter("a", a), NamedParameter("b", b)]
        let norm = clipGradientNorm(params, maxNorm: 1)
        #expect(abs(norm - 5) < 1e-6)
        #expect(abs(a.grad!.scalars[0] - 0.6) < 1e-5 && abs(b.grad!.scalars[0] - 0.8) < 1e-5)
        #expect(abs(clipGradientNorm(params, maxNorm: 10) - 1) < 1e-4)
    }
}
