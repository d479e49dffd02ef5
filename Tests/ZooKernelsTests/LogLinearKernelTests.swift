import Foundation
import Testing
import ZooKernels
import ZooTensor
import ZooTestSupport

/// A seeded log-linear problem: Float tensors for the fast kernels and the same values in Double
/// for the naive reference.
struct LogLinearProblem: Sendable {
    var inputs: LogLinearInputs
    var shape: LogLinearShape

    init(batch: Int = 1, length: Int, heads: Int = 2, headDim: Int = 4, groups: Int = 1, stateSize: Int = 3,
         start: Int = 0, extraLevels: Int = 0, lambdaOnes: Bool = false, seed: UInt64) {
        let levels = logLinearLevelCount(tokens: start + length) + extraLevels
        shape = LogLinearShape(batch: batch, length: length, heads: heads, headDim: headDim, groups: groups,
                               stateSize: stateSize, lambdaLevels: levels, startPosition: start)
        var g = SeededGenerator(seed: seed)
        let x = Tensor.normal([batch, length, heads, headDim], std: 1, generator: &g)
        let dt = Tensor.normal([batch, length, heads], mean: -0.5, std: 0.7, generator: &g)
        let A = Tensor.uniform([heads], low: -1.5, high: -0.2, generator: &g)
        let B = Tensor.normal([batch, length, groups, stateSize], std: 0.6, generator: &g)
        let C = Tensor.normal([batch, length, groups, stateSize], std: 0.6, generator: &g)
        let D = Tensor.normal([heads], std: 1, generator: &g)
        let bias = Tensor.normal([heads], std: 0.3, generator: &g)
        let lambda = lambdaOnes ? Tensor.ones([batch, length, heads, levels])
            : Tensor.uniform([batch, length, heads, levels], low: 0.2, high: 1.8, generator: &g)
        var initial: Tensor? = nil
        if start > 0 {
            // A random state with zeros in the levels that are unoccupied after `start` tokens.
            let L0 = logLinearLevelCount(tokens: start), size = headDim * stateSize
            var s = Tensor.normal([batch, heads, L0, headDim, stateSize], std: 0.5, generator: &g)
            let p = s.mutablePointer()
            for bh in 0..<(batch * heads) {
                for l in 0..<L0 where !logLinearLevelIsOccupied(l, tokens: start) {
                    (p + (bh * L0 + l) * size).update(repeating: 0, count: size)
                }
            }
            initial = s
        }
        inputs = LogLinearInputs(x: x, dt: dt, A: A, B: B, C: C, D: D, dtBias: bias, lambda: lambda,
                                 initialState: initial, startPosition: start)
    }

    var reference: LogLinearReferenceInputs {
        LogLinearReferenceInputs(shape: shape, x: inputs.x.doubles, dt: inputs.dt.doubles, A: inputs.A.doubles,
                                 B: inputs.B.doubles, C: inputs.C.doubles, D: inputs.D.doubles,
                                 dtBias: inputs.dtBias.doubles, lambda: inputs.lambda.doubles,
                                 initialState: inputs.initialState?.doubles ?? [])
    }

    /// Rows [from, to) of the inputs as a problem starting at absolute position start + from.
    func slice(_ from: Int, _ to: Int, initialState: Tensor?) -> LogLinearInputs {
        func rows(_ t: Tensor) -> Tensor {
            let b = t.shape[0], T = t.shape[1], inner = t.shape.dropFirst(2).reduce(1, *)
            return Tensor(shape: [b, to - from] + Array(t.shape.dropFirst(2))) { buf in
                for bi in 0..<b {
                    for r in from..<to {
                        for k in 0..<inner { buf[(bi * (to - from) + r - from) * inner + k] = t.pointer[(bi * T + r) * inner + k] }
                    }
                }
            }
        }
        return LogLinearInputs(x: rows(inputs.x), dt: rows(inputs.dt), A: inputs.A, B: rows(inputs.B), C: rows(inputs.C),
                               D: inputs.D, dtBias: inputs.dtBias, lambda: rows(inputs.lambda),
                               initialState: initialState, startPosition: shape.startPosition + from)
    }
}

@Suite("Log-linear kernels")
struct LogLinearKernelTests {

    @Test func fenwickBucketsTileThePast() {
        for t in 0..<70 {
            var covered = [Int](repeating: 0, count: t + 1)
            for s in 0...t { covered[s] += 1 }
            var occupied = 0
            for l in 0...bitLength(t) {
                let members = (0...t).filter { fenwickLevel(query: t, key: $0) == l }
                if !members.isEmpty {
                    occupied += 1
                    #expect(members == Array(members.first!...members.last!), "level \(l) of \(t) is contiguous")
                }
                #expect(members.isEmpty == !logLinearLevelIsOccupied(l, tokens: t + 1), "occupancy of level \(l) at \(t)")
            }
            #expect(occupied == 1 + t.nonzeroBitCount)
        }
        #expect(logLinearLevelCount(tokens: 1) == 1 && logLinearLevelCount(tokens: 2) == 2)
        #expect(logLinearLevelCount(tokens: 1024) == 11 && logLinearLevelCount(tokens: 1025) == 12)
    }

    /// (problem, chunk) cases covering partial chunks, many chunk levels, B > 1, groups, split and
    /// aligned starts, T = 1.
    static let cases: [(String, LogLinearProblem, Int)] = [
        ("T=1", LogLinearProblem(length: 1, seed: 1), 4),
        ("T=37 Q=4", LogLinearProblem(length: 37, seed: 2), 4),
        ("T=64 Q=8 P≠N", LogLinearProblem(length: 64, headDim: 5, stateSize: 7, seed: 3), 8),
        ("B=2 H=4 G=2 T=50 Q=8", LogLinearProblem(batch: 2, length: 50, heads: 4, groups: 2, seed: 4), 8),
        ("start=21 split T=45 Q=8", LogLinearProblem(length: 45, start: 21, seed: 5), 8),
        ("start=32 aligned T=40 Q=8", LogLinearProblem(length: 40, start: 32, seed: 6), 8),
        ("start=5 T=2 Q=8 one chunk", LogLinearProblem(length: 2, start: 5, seed: 7), 8),
        ("start=24 T=1 Q=4", LogLinearProblem(length: 1, start: 24, seed: 8), 4),
        ("T=150 Q=64 extra λ levels", LogLinearProblem(length: 150, heads: 3, headDim: 16, stateSize: 16, extraLevels: 2, seed: 9), 64),
        ("start=1234 split T=300 Q=8: many chunk levels", LogLinearProblem(length: 300, heads: 2, headDim: 3, stateSize: 2, start: 1234, seed: 10), 8),
        ("start=1024 aligned T=77 Q=16", LogLinearProblem(batch: 2, length: 77, heads: 2, headDim: 3, stateSize: 2, start: 1024, seed: 11), 16),
    ]

    @Test(arguments: 0..<cases.count) func chunkedForwardMatchesNaive(_ index: Int) {
        let (name, problem, chunk) = Self.cases[index]
        let fast = logLinearChunkedForward(problem.inputs, options: LogLinearOptions(chunkSize: chunk))
        let ref = logLinearNaiveForward(problem.reference)
        expectClose(fast.y.doubles, ref.y, tolerance: 1e-5, "\(name): y")
        expectClose(fast.finalState!.doubles, ref.finalState, tolerance: 1e-5, "\(name): final state")
    }

    @Test(arguments: 0..<cases.count) func chunkedBackwardMatchesNaive(_ index: Int) {
        let (name, problem, chunk) = Self.cases[index]
        let options = LogLinearOptions(chunkSize: chunk)
        let fwd = logLinearChunkedForward(problem.inputs, options: options)
        let gy = randomTensor(fwd.y.shape, seed: 100 + UInt64(index))
        let gF = randomTensor(fwd.finalState!.shape, seed: 200 + UInt64(index))
        let fast = logLinearChunkedBackward(problem.inputs, outputGradient: gy, finalStateGradient: gF, options: options)
        let ref = logLinearNaiveBackward(problem.reference, gradY: gy.doubles, gradFinalState: gF.doubles)
        expectClose(fast.x.doubles, ref.x, tolerance: 1e-5, "\(name): dx")
        expectClose(fast.dt.doubles, ref.dt, tolerance: 1e-5, "\(name): ddt")
        expectClose(fast.A.doubles, ref.A, tolerance: 1e-5, "\(name): dA")
        expectClose(fast.B.doubles, ref.B, tolerance: 1e-5, "\(name): dB")
        expectClose(fast.C.doubles, ref.C, tolerance: 1e-5, "\(name): dC")
        expectClose(fast.D.doubles, ref.D, tolerance: 1e-5, "\(name): dD")
        expectClose(fast.dtBias.doubles, ref.dtBias, tolerance: 1e-5, "\(name): d dt_bias")
        expectClose(fast.lambda.doubles, ref.lambda, tolerance: 1e-5, "\(name): dλ")
        if problem.shape.startPosition > 0 {
            expectClose(fast.initialState!.doubles, ref.initialState, tolerance: 1e-5, "\(name): d initial state")
        }
    }
}

extension LogLinearKernelTests {

    // MARK: Finite differences (Double) against the fast and the naive backward

    @Test(arguments: [(0, 4), (5, 2), (8, 4)]) func finiteDifferencesMatchBackward(start: Int, chunk: Int) {
        let problem = LogLinearProblem(length: 7, heads: 2, headDim: 2, stateSize: 3, start: start, seed: 20 + UInt64(start))
        let ref = problem.reference, s = problem.shape
        let fwd = logLinearChunkedForward(problem.inputs, options: LogLinearOptions(chunkSize: chunk))
        let gy = randomTensor(fwd.y.shape, seed: 21).doubles
        let gF = randomTensor(fwd.finalState!.shape, seed: 22).doubles
        func loss(_ r: LogLinearReferenceInputs) -> Double {
            let (y, f) = logLinearNaiveForward(r)
            return zip(y, gy).reduce(0) { $0 + $1.0 * $1.1 } + zip(f, gF).reduce(0) { $0 + $1.0 * $1.1 }
        }
        let fast = logLinearChunkedBackward(problem.inputs, outputGradient: Tensor(shape: fwd.y.shape, doubles: gy),
                                            finalStateGradient: Tensor(shape: fwd.finalState!.shape, doubles: gF),
                                            options: LogLinearOptions(chunkSize: chunk))
        let naive = logLinearNaiveBackward(ref, gradY: gy, gradFinalState: gF)
        var fields: [(String, WritableKeyPath<LogLinearReferenceInputs, [Double]>, Tensor, [Double])] = [
            ("x", \.x, fast.x, naive.x), ("dt", \.dt, fast.dt, naive.dt), ("A", \.A, fast.A, naive.A),
            ("B", \.B, fast.B, naive.B), ("C", \.C, fast.C, naive.C), ("D", \.D, fast.D, naive.D),
            ("dt_bias", \.dtBias, fast.dtBias, naive.dtBias), ("λ", \.lambda, fast.lambda, naive.lambda),
        ]
        if s.startPosition > 0 { fields.append(("initial state", \.initialState, fast.initialState!, naive.initialState)) }
        let eps = 1e-6
        for (name, path, fastGrad, naiveGrad) in fields {
            var numeric = [Double]()
            for k in 0..<ref[keyPath: path].count {
                var plus = ref, minus = ref
                plus[keyPath: path][k] += eps
                minus[keyPath: path][k] -= eps
                numeric.append((loss(plus) - loss(minus)) / (2 * eps))
            }
            if name == "initial state" {
                // Unoccupied levels are ignored by definition: their gradient is 0 everywhere.
                let L0 = s.initialLevels, size = s.headDim * s.stateSize
                for k in 0..<numeric.count where !logLinearLevelIsOccupied((k / size) % L0, tokens: s.startPosition) {
                    #expect(numeric[k] == 0 && naiveGrad[k] == 0 && fastGrad.scalars[k] == 0)
                }
            }
            expectClose(fastGrad.doubles, numeric, tolerance: 1e-5, "start \(start): finite differences vs fast d\(name)")
            expectClose(naiveGrad, numeric, tolerance: 1e-7, "start \(start): finite differences vs naive d\(name)")
        }
    }

    // MARK: λ ≡ 1 is SSD

    @Test func unitLevelWeightsGiveSSD() {
        let problem = LogLinearProblem(batch: 2, length: 77, heads: 4, headDim: 8, groups: 2, stateSize: 6, lambdaOnes: true, seed: 30)
        let i = problem.inputs
        let ssdInputs = SSDInputs(x: i.x, dt: i.dt, A: i.A, B: i.B, C: i.C, D: i.D, dtBias: i.dtBias)
        // The naive references agree to Double rounding.
        let naive = logLinearNaiveForward(problem.reference)
        let ssdNaive = ssdNaiveForward(SSDReference(ssdInputs))
        expectClose(naive.y, ssdNaive.y, tolerance: 1e-13, "naive y, λ ≡ 1 vs SSD")
        // The chunked kernels agree to Float rounding, and the Fenwick levels sum to SSD's state.
        let options = LogLinearOptions(chunkSize: 16)
        let fast = logLinearChunkedForward(i, options: options)
        let ssd = ssdChunkedForward(ssdInputs, options: SSDOptions(chunkSize: 16))
        expectClose(fast.y, ssd.y, tolerance: 1e-6, "chunked y, λ ≡ 1 vs SSD")
        let s = problem.shape, Lf = s.finalLevels, size = s.headDim * s.stateSize
        let summed = Tensor(shape: ssd.finalState.shape) { buf in
            for bh in 0..<(s.batch * s.heads) {
                for k in 0..<size { buf[bh * size + k] = (0..<Lf).reduce(0) { $0 + fast.finalState!.pointer[(bh * Lf + $1) * size + k] } }
            }
        }
        expectClose(summed, ssd.finalState, tolerance: 1e-6, "Σ of the Fenwick levels vs SSD's state")
        // So do the gradients of everything SSD has.
        let gy = randomTensor(s.xShape, seed: 31)
        let g = logLinearChunkedBackward(i, outputGradient: gy, options: options)
        let gs = ssdChunkedBackward(ssdInputs, outputGradient: gy, options: SSDOptions(chunkSize: 16))
        for (name, a, b) in [("x", g.x, gs.x), ("dt", g.dt, gs.dt), ("A", g.A, gs.A), ("B", g.B, gs.B),
                             ("C", g.C, gs.C), ("D", g.D, gs.D), ("dt_bias", g.dtBias, gs.dtBias)] {
            expectClose(a, b, tolerance: 1e-5, "d\(name), λ ≡ 1 vs SSD")
        }
    }

    // MARK: Parallel ≡ recurrent

    @Test func parallelEqualsStepsAndPrefills() {
        let problem = LogLinearProblem(batch: 2, length: 45, heads: 4, headDim: 6, groups: 2, stateSize: 5, seed: 40)
        let options = LogLinearOptions(chunkSize: 8)
        let s = problem.shape
        let full = logLinearChunkedForward(problem.inputs, options: options)
        func fresh() -> LogLinearDecodeState { LogLinearDecodeState(batch: s.batch, heads: s.heads, headDim: s.headDim, stateSize: s.stateSize) }
        func concat(_ parts: [Tensor]) -> Tensor { Tensor.concatenate(parts, axis: 1) }

        var state = fresh()
        var ys: [Tensor] = []
        for t in 0..<s.length { ys.append(logLinearStep(problem.slice(t, t + 1, initialState: nil), state: &state, options: options)) }
        expectClose(concat(ys), full.y, "y, T single steps")
        expectClose(state.levels, full.finalState!, "state, T single steps")

        let k = 19
        state = fresh()
        ys = [logLinearStep(problem.slice(0, k, initialState: nil), state: &state, options: options)]
        for t in k..<s.length { ys.append(logLinearStep(problem.slice(t, t + 1, initialState: nil), state: &state, options: options)) }
        expectClose(concat(ys), full.y, "y, prefill \(k) then steps")
        expectClose(state.levels, full.finalState!, "state, prefill \(k) then steps")

        for cut in [16, 30] {          // chunk-aligned and split continuation
            state = fresh()
            let first = logLinearStep(problem.slice(0, cut, initialState: nil), state: &state, options: options)
            let second = logLinearStep(problem.slice(cut, s.length, initialState: nil), state: &state, options: options)
            expectClose(concat([first, second]), full.y, "y, two-chunk prefill at \(cut)")
            expectClose(state.levels, full.finalState!, "state, two-chunk prefill at \(cut)")
        }
    }

    /// Backward of the second half with dF gives d(initial state), which as the first half's
    /// final-state gradient gives the full gradients.
    @Test(arguments: [13, 24]) func backwardThroughTwoPrefills(cut: Int) {
        let problem = LogLinearProblem(length: 40, heads: 2, headDim: 4, stateSize: 6, seed: 41)
        let options = LogLinearOptions(chunkSize: 8)
        let s = problem.shape
        let fwd = logLinearChunkedForward(problem.inputs, options: options)
        let gy = randomTensor(s.xShape, seed: 42), gF = randomTensor(fwd.finalState!.shape, seed: 43)
        let full = logLinearChunkedBackward(problem.inputs, outputGradient: gy, finalStateGradient: gF, options: options)
        let first = problem.slice(0, cut, initialState: nil)
        let second = problem.slice(cut, s.length, initialState: logLinearChunkedForward(first, options: options).finalState)
        let gyProblem = LogLinearProblem(length: 40, heads: 2, headDim: 4, stateSize: 6, seed: 41)
        var withGy = gyProblem; withGy.inputs.x = gy
        let g2 = logLinearChunkedBackward(second, outputGradient: withGy.slice(cut, s.length, initialState: nil).x,
                                          finalStateGradient: gF, options: options)
        let g1 = logLinearChunkedBackward(first, outputGradient: withGy.slice(0, cut, initialState: nil).x,
                                          finalStateGradient: g2.initialState, options: options)
        expectClose(Tensor.concatenate([g1.x, g2.x], axis: 1), full.x, "dx through two prefills")
        expectClose(Tensor.concatenate([g1.dt, g2.dt], axis: 1), full.dt, "ddt through two prefills")
        expectClose(Tensor.concatenate([g1.B, g2.B], axis: 1), full.B, "dB through two prefills")
        expectClose(Tensor.concatenate([g1.lambda, g2.lambda], axis: 1), full.lambda, "dλ through two prefills")
        expectClose(g1.A + g2.A, full.A, "dA through two prefills")
    }

    // MARK: The decode state

    @Test func decodeStateHoldsOnePlusPopcountLevels() {
        let problem = LogLinearProblem(length: 70, heads: 2, headDim: 3, stateSize: 4, seed: 50)
        let s = problem.shape
        var state = LogLinearDecodeState(batch: 1, heads: s.heads, headDim: s.headDim, stateSize: s.stateSize)
        #expect(state.byteCount == 0)
        for t in 0..<s.length {
            _ = logLinearStep(problem.slice(t, t + 1, initialState: nil), state: &state)
            for h in 0..<s.heads {
                #expect(state.nonEmptyLevelCount(batch: 0, head: h) == 1 + t.nonzeroBitCount, "after token \(t)")
            }
            #expect(state.levelCount == logLinearLevelCount(tokens: t + 1))
            #expect(state.byteCount == LogLinearDecodeState.analyticByteCount(batch: 1, heads: s.heads, headDim: s.headDim,
                                                                               stateSize: s.stateSize, tokens: t + 1))
        }
        // The chunked prefill leaves the same occupancy.
        let full = logLinearChunkedForward(problem.inputs, options: LogLinearOptions(chunkSize: 8))
        let prefilled = LogLinearDecodeState(levels: full.finalState!, position: s.length)
        #expect(prefilled.nonEmptyLevelCount(batch: 0, head: 1) == 1 + (s.length - 1).nonzeroBitCount)
    }

    // MARK: Causality, threads, strong decay

    @Test func causality() {
        let problem = LogLinearProblem(length: 50, heads: 2, headDim: 4, stateSize: 4, seed: 60)
        let options = LogLinearOptions(chunkSize: 16)
        let y = logLinearChunkedForward(problem.inputs, options: options).y
        let cut = 21
        func perturb(_ t: Tensor) -> Tensor {
            var v = t.scalars
            let inner = t.count / t.shape[1]
            for i in (cut * inner)..<v.count { v[i] += Float(i % 7) * 0.1 + 0.05 }
            return Tensor(shape: t.shape, scalars: v)
        }
        var changed = problem.inputs
        changed.x = perturb(changed.x); changed.dt = perturb(changed.dt); changed.B = perturb(changed.B)
        changed.C = perturb(changed.C); changed.lambda = perturb(changed.lambda)
        let y2 = logLinearChunkedForward(changed, options: options).y
        let inner = problem.shape.heads * problem.shape.headDim
        #expect(Array(y.scalars[0..<(cut * inner)]) == Array(y2.scalars[0..<(cut * inner)]))
        #expect(Array(y.scalars[(cut * inner)...]) != Array(y2.scalars[(cut * inner)...]))
    }

    @Test func resultsIndependentOfThreads() {
        let problem = LogLinearProblem(batch: 2, length: 100, heads: 4, headDim: 16, groups: 2, stateSize: 16, start: 37, seed: 70)
        let gy = randomTensor(problem.shape.xShape, seed: 71)
        func run(threads: Int) -> [[Float]] {
            let before = ZooThreads.count
            ZooThreads.configure(threads: threads)
            defer { ZooThreads.configure(threads: before) }
            let options = LogLinearOptions(chunkSize: 16)
            let f = logLinearChunkedForward(problem.inputs, options: options)
            let g = logLinearChunkedBackward(problem.inputs, outputGradient: gy, options: options)
            return [f.y.scalars, f.finalState!.scalars, g.x.scalars, g.dt.scalars, g.B.scalars, g.C.scalars, g.A.scalars,
                    g.lambda.scalars, g.initialState!.scalars]
        }
        let reference = run(threads: 1)
        #expect(run(threads: 2) == reference)
        #expect(run(threads: 3) == reference)
    }

    @Test func strongDecayIsStable() {
        var problem = LogLinearProblem(length: 300, heads: 2, headDim: 4, stateSize: 4, seed: 80)
        problem.inputs.A = Tensor(shape: [2], scalars: [-8, -30])
        problem.inputs.dt = problem.inputs.dt + 2
        let options = LogLinearOptions(chunkSize: 32)
        let fast = logLinearChunkedForward(problem.inputs, options: options)
        let ref = logLinearNaiveForward(problem.reference)
        expectClose(fast.y.doubles, ref.y, "y under strong decay")
        let gy = randomTensor(problem.shape.xShape, seed: 81)
        let g = logLinearChunkedBackward(problem.inputs, outputGradient: gy, options: options)
        let r = logLinearNaiveBackward(problem.reference, gradY: gy.doubles)
        expectClose(g.dt.doubles, r.dt, "ddt under strong decay")
        expectClose(g.A.doubles, r.A, "dA under strong decay")
        expectClose(g.lambda.doubles, r.lambda, "dλ under strong decay")
    }
}

extension LogLinearKernelTests {

    // MARK: Golden vectors from Fixtures/golden_loglinear.py (NumPy, float64, independent)

    @Test func goldenVectors() throws {
        let url = try #require(Bundle.module.url(forResource: "golden_loglinear", withExtension: "json", subdirectory: "Fixtures"))
        let golden = try GoldenFixture(contentsOf: url)
        func tensor(_ name: String) -> Tensor { let a = golden[name]; return Tensor(shape: a.shape, doubles: a.data) }
        for name in ["grad", "groups", "continued"] {
            let start = Int(golden.scalar("\(name).start"))
            let inputs = LogLinearInputs(
                x: tensor("\(name).x"), dt: tensor("\(name).dt"), A: tensor("\(name).A"), B: tensor("\(name).B"),
                C: tensor("\(name).C"), D: tensor("\(name).D"), dtBias: tensor("\(name).dt_bias"),
                lambda: tensor("\(name).lambda"), initialState: start > 0 ? tensor("\(name).initial_state") : nil,
                startPosition: start)
            let options = LogLinearOptions(chunkSize: 4)
            let fwd = logLinearChunkedForward(inputs, options: options)
            expectClose(fwd.y.doubles, golden["\(name).y"].data, tolerance: 1e-5, "\(name): y vs NumPy")
            expectClose(fwd.finalState!.doubles, golden["\(name).final_state"].data, tolerance: 1e-5, "\(name): final state vs NumPy")
            // The decode step, token by token, against the same vectors.
            let s = inputs.validatedShape("golden")
            var state = start > 0 ? LogLinearDecodeState(levels: inputs.initialState!, position: start)
                : LogLinearDecodeState(batch: s.batch, heads: s.heads, headDim: s.headDim, stateSize: s.stateSize)
            let problem = LogLinearProblem(wrapping: inputs)
            var ys: [Tensor] = []
            for t in 0..<s.length { ys.append(logLinearStep(problem.slice(t, t + 1, initialState: nil), state: &state)) }
            expectClose(Tensor.concatenate(ys, axis: 1).doubles, golden["\(name).y"].data, tolerance: 1e-5, "\(name): steps vs NumPy")
            if name == "grad" {
                let g = logLinearChunkedBackward(inputs, outputGradient: tensor("grad.gy"),
                                                 finalStateGradient: tensor("grad.gF"), options: options)
                for (key, value) in [("x", g.x), ("dt", g.dt), ("A", g.A), ("B", g.B), ("C", g.C), ("D", g.D),
                                     ("dt_bias", g.dtBias), ("lambda", g.lambda)] {
                    expectClose(value.doubles, golden["grad.grad_\(key)"].data, tolerance: 1e-5, "d\(key) vs NumPy finite differences")
                }
            }
        }
    }
}

extension LogLinearProblem {
    /// Wraps given inputs (for slicing); the shape is read from them.
    init(wrapping inputs: LogLinearInputs) {
        self.inputs = inputs
        self.shape = inputs.validatedShape("LogLinearProblem(wrapping:)")
        self.inputs.initialState = nil
        self.inputs.startPosition = inputs.startPosition
    }
}
