// SSD (Mamba-2) kernels against the test contract (../shared/DESIGN.md §5): chunked vs the naive
// quadratic form in Double (outputs, final state, every gradient), finite differences, parallel ≡
// recurrent, causality, awkward shapes, determinism, stability, golden vectors from NumPy, and the
// duality with the Mamba-1 selective scan.
import Foundation
import Testing
import ZooKernels
import ZooTensor
import ZooTestSupport

// MARK: - Helpers

/// Seeded inputs. Δ = softplus(dt + bias) lands around 0.1–1.5; A in [−2, −0.25] (or stronger).
func ssdInputs(_ s: SSDShape, seed: UInt64, initialState: Bool = true, decayScale: Float = 1) -> SSDInputs {
    var g = SeededGenerator(seed: seed)
    let A = Tensor.uniform([s.heads], low: -2 * decayScale, high: -0.25 * decayScale, generator: &g)
    return SSDInputs(
        x: randomTensor(s.xShape, seed: seed &+ 1),
        dt: randomTensor(s.dtShape, seed: seed &+ 2, scale: 0.7),
        A: A,
        B: randomTensor(s.bcShape, seed: seed &+ 3, scale: 0.5),
        C: randomTensor(s.bcShape, seed: seed &+ 4, scale: 0.5),
        D: randomTensor([s.heads], seed: seed &+ 5),
        dtBias: randomTensor([s.heads], seed: seed &+ 6, scale: 0.5),
        initialState: initialState ? randomTensor(s.stateShape, seed: seed &+ 7, scale: 0.5) : nil)
}

func shape(_ b: Int, _ t: Int, _ h: Int, _ p: Int, _ g: Int, _ n: Int) -> SSDShape {
    SSDShape(batch: b, length: t, heads: h, headDim: p, groups: g, stateSize: n)
}

/// Tokens t0..<t1 of the inputs (the per-token tensors sliced along T; no initial state).
func ssdSlice(_ i: SSDInputs, _ t0: Int, _ t1: Int) -> SSDInputs {
    func cut(_ t: Tensor) -> Tensor {
        let (b, T) = (t.shape[0], t.shape[1])
        let inner = t.count / (b * T)
        var out = [Float]()
        let all = t.scalars
        for bi in 0..<b { out += all[((bi * T + t0) * inner)..<((bi * T + t1) * inner)] }
        return Tensor(shape: [b, t1 - t0] + t.shape.dropFirst(2), scalars: out)
    }
    return SSDInputs(x: cut(i.x), dt: cut(i.dt), A: i.A, B: cut(i.B), C: cut(i.C), D: i.D, dtBias: i.dtBias)
}

/// Concatenates [B, T_k, …] tensors along T.
func ssdConcat(_ parts: [Tensor]) -> Tensor {
    let b = parts[0].shape[0], inner = parts[0].count / (b * parts[0].shape[1])
    var out = [Float]()
    for bi in 0..<b {
        for p in parts {
            let T = p.shape[1], all = p.scalars
            out += all[(bi * T * inner)..<((bi + 1) * T * inner)]
        }
    }
    let T = parts.reduce(0) { $0 + $1.shape[1] }
    return Tensor(shape: [b, T] + parts[0].shape.dropFirst(2), scalars: out)
}

/// Checks the chunked forward and backward against the naive Double reference.
func checkAgainstNaive(_ s: SSDShape, chunk: Int, seed: UInt64, initialState: Bool = true,
                       decayScale: Float = 1, saveStates: Bool = false, tolerance: Double = 1e-5,
                       sourceLocation: SourceLocation = #_sourceLocation) {
    let inputs = ssdInputs(s, seed: seed, initialState: initialState, decayScale: decayScale)
    let options = SSDOptions(chunkSize: chunk)
    let fast = ssdChunkedForward(inputs, options: options, saveChunkStates: saveStates)
    let ref = SSDReference(inputs)
    let (y, hT) = ssdNaiveForward(ref)
    let what = "\(s) Q=\(chunk)"
    expectClose(fast.y.doubles, y, tolerance: tolerance, "y \(what)", sourceLocation: sourceLocation)
    expectClose(fast.finalState.doubles, hT, tolerance: tolerance, "final state \(what)", sourceLocation: sourceLocation)

    let dY = randomTensor(s.xShape, seed: seed &+ 100)
    let dH = randomTensor(s.stateShape, seed: seed &+ 101)
    let grads = ssdChunkedBackward(inputs, outputGradient: dY, finalStateGradient: dH,
                                   chunkStates: fast.chunkStates, options: options)
    let refGrads = ssdNaiveBackward(ref, outputGradient: dY.doubles, finalStateGradient: dH.doubles)
    let pairs: [(String, Tensor, [Double])] = [
        ("dx", grads.x, refGrads.x), ("ddt", grads.dt, refGrads.dt), ("dA", grads.A, refGrads.A),
        ("dB", grads.B, refGrads.B), ("dC", grads.C, refGrads.C), ("dD", grads.D, refGrads.D),
        ("ddtBias", grads.dtBias, refGrads.dtBias), ("dh0", grads.initialState, refGrads.initialState),
    ]
    for (name, got, want) in pairs {
        expectClose(got.doubles, want, tolerance: tolerance, "\(name) \(what)", sourceLocation: sourceLocation)
    }
}

// MARK: - Fast vs naive (forward, final state, every gradient)

@Suite("SSD kernels") struct SSDKernelTests {
    @Test func chunkedMatchesNaiveExactChunks() {
        checkAgainstNaive(shape(1, 64, 2, 16, 1, 16), chunk: 16, seed: 1)
    }

    @Test func chunkedMatchesNaiveRaggedLengthAndGroups() {
        // T not a multiple of Q, B > 1, 2 groups of 2 heads, P ≠ N, sizes off the SIMD width.
        checkAgainstNaive(shape(2, 37, 4, 5, 2, 7), chunk: 8, seed: 2)
    }

    @Test func chunkedMatchesNaiveDefaultChunk() {
        checkAgainstNaive(shape(1, 150, 2, 32, 1, 24), chunk: 64, seed: 3, saveStates: true)
    }

    @Test func chunkedMatchesNaiveOddChunkSizes() {
        // Chunks of 40 and 33 (the triangular products split at a multiple of 16), a ragged tail.
        checkAgainstNaive(shape(1, 95, 2, 8, 1, 8), chunk: 40, seed: 8)
        checkAgainstNaive(shape(2, 70, 2, 5, 2, 3), chunk: 33, seed: 9)
    }

    @Test func chunkedMatchesNaiveWithoutInitialState() {
        checkAgainstNaive(shape(2, 21, 3, 4, 3, 6), chunk: 4, seed: 4, initialState: false)
    }

    @Test func singleToken() {
        checkAgainstNaive(shape(2, 1, 2, 3, 1, 5), chunk: 64, seed: 5)
    }

    @Test func chunkOfOne() {
        checkAgainstNaive(shape(1, 9, 2, 3, 2, 4), chunk: 1, seed: 6)
    }

    /// Strong decay (log-decay per step down to ≈ −50): the segment sums reach thousands; nothing
    /// may overflow, and the result still matches the reference.
    @Test func strongDecayIsStable() {
        checkAgainstNaive(shape(1, 200, 2, 8, 1, 8), chunk: 64, seed: 7, decayScale: 16)
        let s = shape(1, 300, 2, 8, 1, 8)
        var inputs = ssdInputs(s, seed: 8, decayScale: 16)
        inputs.dt = Tensor.full(s.dtShape, 30)   // Δ ≈ 30, a ≈ −30·|A|
        let out = ssdChunkedForward(inputs)
        #expect(out.y.scalars.allSatisfy { $0.isFinite })
        let grads = ssdChunkedBackward(inputs, outputGradient: randomTensor(s.xShape, seed: 9))
        for t in [grads.x, grads.dt, grads.A, grads.B, grads.C, grads.D, grads.dtBias, grads.initialState] {
            #expect(t.scalars.allSatisfy { $0.isFinite })
        }
    }

    @Test func identityDeltaOption() {
        // Δ = dt + bias without softplus (dt kept positive).
        let s = shape(1, 30, 2, 4, 1, 4)
        var inputs = ssdInputs(s, seed: 10)
        inputs.dt = Tensor(shape: s.dtShape, scalars: inputs.dt.scalars.map { abs($0) + 0.6 })
        inputs.dtBias = Tensor.zeros([s.heads])
        let options = SSDOptions(chunkSize: 8, deltaSoftplus: false)
        let ref = SSDReference(inputs, deltaSoftplus: false)
        let fast = ssdChunkedForward(inputs, options: options)
        expectClose(fast.y.doubles, ssdNaiveForward(ref).y, "y without softplus")
        let dY = randomTensor(s.xShape, seed: 11)
        let g = ssdChunkedBackward(inputs, outputGradient: dY, options: options)
        let r = ssdNaiveBackward(ref, outputGradient: dY.doubles)
        expectClose(g.dt.doubles, r.dt, "ddt without softplus")
        expectClose(g.A.doubles, r.A, "dA without softplus")
    }

    // MARK: Finite differences (Double) against the fast backward

    @Test func finiteDifferencesMatchBackward() {
        let s = shape(1, 11, 2, 3, 1, 4)
        let inputs = ssdInputs(s, seed: 20)
        let ref = SSDReference(inputs)
        let dY = randomTensor(s.xShape, seed: 21).doubles
        let dH = randomTensor(s.stateShape, seed: 22).doubles
        func loss(_ r: SSDReference) -> Double {
            let (y, h) = ssdNaiveForward(r)
            return zip(y, dY).reduce(0) { $0 + $1.0 * $1.1 } + zip(h, dH).reduce(0) { $0 + $1.0 * $1.1 }
        }
        let options = SSDOptions(chunkSize: 4)
        let fast = ssdChunkedBackward(inputs, outputGradient: Tensor(shape: s.xShape, doubles: dY),
                                      finalStateGradient: Tensor(shape: s.stateShape, doubles: dH), options: options)
        let naive = ssdNaiveBackward(ref, outputGradient: dY, finalStateGradient: dH)
        let eps = 1e-6
        let fields: [(String, WritableKeyPath<SSDReference, [Double]>, Tensor, [Double])] = [
            ("x", \.x, fast.x, naive.x), ("dt", \.dt, fast.dt, naive.dt), ("A", \.A, fast.A, naive.A),
            ("B", \.B, fast.B, naive.B), ("C", \.C, fast.C, naive.C), ("D", \.D, fast.D, naive.D),
            ("dtBias", \.dtBias, fast.dtBias, naive.dtBias),
        ]
        for (name, path, fastGrad, naiveGrad) in fields {
            var numeric = [Double]()
            for k in 0..<ref[keyPath: path].count {
                var plus = ref, minus = ref
                plus[keyPath: path][k] += eps
                minus[keyPath: path][k] -= eps
                numeric.append((loss(plus) - loss(minus)) / (2 * eps))
            }
            expectClose(fastGrad.doubles, numeric, tolerance: 1e-5, "finite differences vs fast d\(name)")
            expectClose(naiveGrad, numeric, tolerance: 1e-7, "finite differences vs naive d\(name)")
        }
        var numeric = [Double]()
        for k in 0..<ref.initialState!.count {
            var plus = ref, minus = ref
            plus.initialState![k] += eps
            minus.initialState![k] -= eps
            numeric.append((loss(plus) - loss(minus)) / (2 * eps))
        }
        expectClose(fast.initialState.doubles, numeric, tolerance: 1e-5, "finite differences vs fast dh0")
        expectClose(naive.initialState, numeric, tolerance: 1e-7, "finite differences vs naive dh0")
    }

    // MARK: Parallel ≡ recurrent

    @Test func parallelEqualsStepsAndPrefills() {
        let s = shape(2, 45, 4, 6, 2, 5)
        let inputs = ssdInputs(s, seed: 30)
        let options = SSDOptions(chunkSize: 8)
        let full = ssdChunkedForward(inputs, options: options)
        let h0 = inputs.initialState!

        // T single steps.
        var state = h0
        var ys: [Tensor] = []
        for t in 0..<s.length { ys.append(ssdStep(ssdSlice(inputs, t, t + 1), state: &state, options: options)) }
        expectClose(ssdConcat(ys), full.y, "y, T single steps")
        expectClose(state, full.finalState, "state, T single steps")

        // Prefill k tokens (not a multiple of Q), then steps.
        let k = 19
        state = h0
        ys = [ssdStep(ssdSlice(inputs, 0, k), state: &state, options: options)]
        for t in k..<s.length { ys.append(ssdStep(ssdSlice(inputs, t, t + 1), state: &state, options: options)) }
        expectClose(ssdConcat(ys), full.y, "y, prefill \(k) then steps")
        expectClose(state, full.finalState, "state, prefill \(k) then steps")

        // Two-chunk prefill.
        state = h0
        let first = ssdStep(ssdSlice(inputs, 0, 30), state: &state, options: options)
        let second = ssdStep(ssdSlice(inputs, 30, s.length), state: &state, options: options)
        expectClose(ssdConcat([first, second]), full.y, "y, two-chunk prefill")
        expectClose(state, full.finalState, "state, two-chunk prefill")
    }

    /// The gradient flows through a chunked prefill: backward of the second half with dh_T gives
    /// dh0 of the second half, which as the first half's final-state gradient gives the full grads.
    @Test func backwardThroughTwoPrefills() {
        let s = shape(1, 40, 2, 4, 1, 6)
        let inputs = ssdInputs(s, seed: 31)
        let options = SSDOptions(chunkSize: 8)
        let dY = randomTensor(s.xShape, seed: 32), dH = randomTensor(s.stateShape, seed: 33)
        let full = ssdChunkedBackward(inputs, outputGradient: dY, finalStateGradient: dH, options: options)
        let cut = 13
        var first = ssdSlice(inputs, 0, cut); first.initialState = inputs.initialState
        var second = ssdSlice(inputs, cut, s.length)
        second.initialState = ssdChunkedForward(first, options: options).finalState
        func dySlice(_ t0: Int, _ t1: Int) -> Tensor {
            ssdSlice(SSDInputs(x: dY, dt: inputs.dt, A: inputs.A, B: inputs.B, C: inputs.C, D: inputs.D, dtBias: inputs.dtBias), t0, t1).x
        }
        let g2 = ssdChunkedBackward(second, outputGradient: dySlice(cut, s.length), finalStateGradient: dH, options: options)
        let g1 = ssdChunkedBackward(first, outputGradient: dySlice(0, cut), finalStateGradient: g2.initialState, options: options)
        expectClose(ssdConcat([g1.x, g2.x]), full.x, "dx through two prefills")
        expectClose(ssdConcat([g1.B, g2.B]), full.B, "dB through two prefills")
        expectClose(g1.initialState, full.initialState, "dh0 through two prefills")
        expectClose(Tensor(shape: [s.heads], scalars: zip(g1.A.scalars, g2.A.scalars).map(+)), full.A, "dA through two prefills")
    }

    // MARK: Causality

    @Test func causality() {
        let s = shape(1, 50, 2, 4, 1, 4)
        let inputs = ssdInputs(s, seed: 40)
        let options = SSDOptions(chunkSize: 16)
        let y = ssdChunkedForward(inputs, options: options).y
        let cut = 21
        var changed = inputs
        for name in 0..<4 {
            func perturb(_ t: Tensor) -> Tensor {
                var v = t.scalars
                let inner = t.count / t.shape[1]
                for i in (cut * inner)..<v.count { v[i] += Float(i % 7) - 3 }
                return Tensor(shape: t.shape, scalars: v)
            }
            switch name {
            case 0: changed.x = perturb(inputs.x)
            case 1: changed.dt = perturb(inputs.dt)
            case 2: changed.B = perturb(inputs.B)
            default: changed.C = perturb(inputs.C)
            }
        }
        let y2 = ssdChunkedForward(changed, options: options).y
        let inner = s.heads * s.headDim
        #expect(Array(y.scalars[0..<(cut * inner)]) == Array(y2.scalars[0..<(cut * inner)]))
        #expect(Array(y.scalars[(cut * inner)...]) != Array(y2.scalars[(cut * inner)...]))
    }

    // MARK: Determinism and options that must not change results

    @Test func resultsIndependentOfThreads() {
        let s = shape(2, 100, 4, 16, 2, 16)
        let inputs = ssdInputs(s, seed: 50)
        let dY = randomTensor(s.xShape, seed: 51)
        func run(threads: Int) -> [[Float]] {
            let before = ZooThreads.count
            ZooThreads.configure(threads: threads)
            defer { ZooThreads.configure(threads: before) }
            let options = SSDOptions(chunkSize: 16)
            let f = ssdChunkedForward(inputs, options: options)
            let g = ssdChunkedBackward(inputs, outputGradient: dY, options: options)
            return [f.y.scalars, f.finalState.scalars, g.x.scalars, g.dt.scalars, g.B.scalars, g.C.scalars, g.A.scalars, g.initialState.scalars]
        }
        let reference = run(threads: 1)
        #expect(run(threads: 2) == reference)
        #expect(run(threads: 3) == reference)
    }

    @Test func savedChunkStatesGiveSameGradients() {
        let s = shape(1, 70, 2, 8, 1, 8)
        let inputs = ssdInputs(s, seed: 60)
        let options = SSDOptions(chunkSize: 16)
        let f = ssdChunkedForward(inputs, options: options, saveChunkStates: true)
        let dY = randomTensor(s.xShape, seed: 61)
        let a = ssdChunkedBackward(inputs, outputGradient: dY, chunkStates: f.chunkStates, options: options)
        let b = ssdChunkedBackward(inputs, outputGradient: dY, options: options)
        #expect(a.x.scalars == b.x.scalars && a.dt.scalars == b.dt.scalars && a.B.scalars == b.B.scalars)
    }
}

// MARK: - Golden vectors (independent NumPy recurrence, Fixtures/golden_ssd.py)

@Suite("SSD golden vectors") struct SSDGoldenTests {
    let fixture: GoldenFixture

    init() throws {
        let url = try #require(Bundle.module.url(forResource: "golden_ssd", withExtension: "json", subdirectory: "Fixtures"))
        fixture = try GoldenFixture(contentsOf: url)
    }

    func inputs(_ prefix: String, initialState: Bool) -> SSDInputs {
        func t(_ name: String) -> Tensor {
            let a = fixture["\(prefix)_\(name)"]
            return Tensor(shape: a.shape, doubles: a.data)
        }
        return SSDInputs(x: t("x"), dt: t("dt"), A: t("A"), B: t("B"), C: t("C"), D: t("D"), dtBias: t("dt_bias"),
                         initialState: initialState ? t("h0") : nil)
    }

    @Test func forwardAndEveryGradient() {
        let inp = inputs("case1", initialState: true)
        let y = fixture["case1_y"].data, hT = fixture["case1_final_state"].data
        let gy = Tensor(shape: fixture["case1_gy"].shape, doubles: fixture["case1_gy"].data)
        let gh = Tensor(shape: fixture["case1_gh"].shape, doubles: fixture["case1_gh"].data)
        // The naive Double reference, on the fixture's float64 inputs, agrees with NumPy to rounding.
        func d(_ name: String) -> [Double] { fixture["case1_\(name)"].data }
        let ref = SSDReference(shape: inp.validatedShape("golden"), x: d("x"), dt: d("dt"), A: d("A"), B: d("B"), C: d("C"),
                               D: d("D"), dtBias: d("dt_bias"), initialState: d("h0"))
        let naive = ssdNaiveForward(ref)
        expectClose(naive.y, y, tolerance: 1e-10, "naive y vs NumPy (the fixture keeps 12 digits)")
        expectClose(naive.finalState, hT, tolerance: 1e-10, "naive final state vs NumPy")
        let naiveGrads = ssdNaiveBackward(ref, outputGradient: gy.doubles, finalStateGradient: gh.doubles)
        for chunk in [4, 64] {
            let options = SSDOptions(chunkSize: chunk)
            let f = ssdChunkedForward(inp, options: options)
            expectClose(f.y.doubles, y, "chunked y vs NumPy, Q=\(chunk)")
            expectClose(f.finalState.doubles, hT, "chunked final state vs NumPy, Q=\(chunk)")
            let g = ssdChunkedBackward(inp, outputGradient: gy, finalStateGradient: gh, options: options)
            let pairs: [(String, Tensor, [Double])] = [
                ("x", g.x, naiveGrads.x), ("dt", g.dt, naiveGrads.dt), ("A", g.A, naiveGrads.A), ("B", g.B, naiveGrads.B),
                ("C", g.C, naiveGrads.C), ("D", g.D, naiveGrads.D), ("dt_bias", g.dtBias, naiveGrads.dtBias),
                ("h0", g.initialState, naiveGrads.initialState),
            ]
            for (name, fast, naiveGrad) in pairs {
                let numeric = fixture["case1_grad_\(name)"].data
                expectClose(fast.doubles, numeric, tolerance: 1e-5, "chunked d\(name) vs NumPy finite differences, Q=\(chunk)")
                if chunk == 4 { expectClose(naiveGrad, numeric, tolerance: 1e-7, "naive d\(name) vs NumPy finite differences") }
            }
        }
    }

    @Test func longerSequenceWithoutInitialState() {
        let inp = inputs("case2", initialState: false)
        let f = ssdChunkedForward(inp, options: SSDOptions(chunkSize: 16))
        expectClose(f.y.doubles, fixture["case2_y"].data, "chunked y vs NumPy (T=70, Q=16)")
        expectClose(f.finalState.doubles, fixture["case2_final_state"].data, "chunked final state vs NumPy (T=70, Q=16)")
    }
}

// MARK: - Duality with the Mamba-1 selective scan

/// SSD is the selective scan with a scalar A_h repeated over (P, N): channel d = h·P + p of the
/// scan takes x[·,·,h,p], Δ from dt[·,·,h], A[d, n] = A_h, and the B/C of head h's group. The
/// test maps SSD's inputs onto the Mamba issue's naive scan (Double) and compares outputs, final
/// states and every gradient (summing the scan's per-channel gradients of A, dt, D, bias per head).
@Suite("SSD ≡ Mamba-1 selective scan") struct SSDDualityTests {
    @Test func ssdEqualsSelectiveScanWithScalarA() {
        let s = shape(2, 13, 4, 3, 2, 5)
        let inputs = ssdInputs(s, seed: 70)
        let (Bn, T, H, P, G, N) = (s.batch, s.length, s.heads, s.headDim, s.groups, s.stateSize)
        let D = H * P
        let x = inputs.x.doubles, dt = inputs.dt.doubles, Bm = inputs.B.doubles, Cm = inputs.C.doubles
        var u = [Double](repeating: 0, count: Bn * D * T), delta = u
        var bScan = [Double](repeating: 0, count: Bn * G * N * T), cScan = bScan
        for b in 0..<Bn {
            for t in 0..<T {
                for h in 0..<H {
                    for p in 0..<P {
                        u[(b * D + h * P + p) * T + t] = x[((b * T + t) * H + h) * P + p]
                        delta[(b * D + h * P + p) * T + t] = dt[(b * T + t) * H + h]
                    }
                }
                for g in 0..<G {
                    for n in 0..<N {
                        bScan[((b * G + g) * N + n) * T + t] = Bm[((b * T + t) * G + g) * N + n]
                        cScan[((b * G + g) * N + n) * T + t] = Cm[((b * T + t) * G + g) * N + n]
                    }
                }
            }
        }
        let perChannel = { (v: [Double]) in (0..<D).map { v[$0 / P] } }
        let aScan = (0..<(D * N)).map { inputs.A.doubles[$0 / N / P] }
        let scan = SelectiveScanReferenceInputs(
            shape: SelectiveScanShape(batch: Bn, channels: D, length: T, stateSize: N, groups: G),
            u: u, delta: delta, A: aScan, B: bScan, C: cScan, D: perChannel(inputs.D.doubles), z: nil,
            deltaBias: perChannel(inputs.dtBias.doubles), initialState: inputs.initialState!.doubles, deltaSoftplus: true)
        let scanOut = selectiveScanNaive(scan)
        // Back to SSD's [B, T, H, P] layout.
        var yScan = [Double](repeating: 0, count: x.count)
        for b in 0..<Bn { for d in 0..<D { for t in 0..<T { yScan[((b * T + t) * H + d / P) * P + d % P] = scanOut.out[(b * D + d) * T + t] } } }

        let ref = SSDReference(inputs)
        let naive = ssdNaiveForward(ref)
        expectClose(naive.y, yScan, tolerance: 1e-12, "SSD naive y vs selective scan")
        expectClose(naive.finalState, scanOut.finalState, tolerance: 1e-12, "SSD naive final state vs selective scan")
        let fast = ssdChunkedForward(inputs, options: SSDOptions(chunkSize: 4))
        expectClose(fast.y.doubles, yScan, "SSD chunked y vs selective scan")
        expectClose(fast.finalState.doubles, scanOut.finalState, "SSD chunked final state vs selective scan")

        // Gradients.
        let dY = randomTensor(s.xShape, seed: 71), dH = randomTensor(s.stateShape, seed: 72)
        var gradOut = [Double](repeating: 0, count: x.count)
        let dYd = dY.doubles
        for b in 0..<Bn { for d in 0..<D { for t in 0..<T { gradOut[(b * D + d) * T + t] = dYd[((b * T + t) * H + d / P) * P + d % P] } } }
        let sg = selectiveScanNaiveBackward(scan, gradOut: gradOut, gradFinalState: dH.doubles)
        let g = ssdChunkedBackward(inputs, outputGradient: dY, finalStateGradient: dH, options: SSDOptions(chunkSize: 4))
        var dx = [Double](repeating: 0, count: x.count), ddt = [Double](repeating: 0, count: dt.count)
        var dB = [Double](repeating: 0, count: Bm.count), dC = dB
        for b in 0..<Bn {
            for d in 0..<D {
                for t in 0..<T {
                    dx[((b * T + t) * H + d / P) * P + d % P] = sg.u[(b * D + d) * T + t]
                    ddt[(b * T + t) * H + d / P] += sg.delta[(b * D + d) * T + t]
                }
            }
            for g in 0..<G { for n in 0..<N { for t in 0..<T {
                dB[((b * T + t) * G + g) * N + n] = sg.B[((b * G + g) * N + n) * T + t]
                dC[((b * T + t) * G + g) * N + n] = sg.C[((b * G + g) * N + n) * T + t]
            } } }
        }
        let perHead = { (v: [Double], width: Int) in (0..<H).map { h in (0..<(P * width)).reduce(0.0) { $0 + v[h * P * width + $1] } } }
        expectClose(g.x.doubles, dx, "dx vs selective scan du")
        expectClose(g.dt.doubles, ddt, "ddt vs selective scan Σ_p ddelta")
        expectClose(g.B.doubles, dB, "dB vs selective scan")
        expectClose(g.C.doubles, dC, "dC vs selective scan")
        expectClose(g.A.doubles, perHead(sg.A, N), "dA vs selective scan Σ_{p,n} dA")
        expectClose(g.D.doubles, perHead(sg.D!, 1), "dD vs selective scan Σ_p dD")
        expectClose(g.dtBias.doubles, perHead(sg.deltaBias!, 1), "ddtBias vs selective scan Σ_p ddeltaBias")
        expectClose(g.initialState.doubles, sg.initialState, "dh0 vs selective scan")
    }
}
