import Testing
import XCTest
import Foundation
import ZooTensor
import ZooKernels
import ZooTestSupport

// Test contract (../shared/DESIGN.md §5) for the selective scan kernels: fast vs naive (outputs,
// final state, every gradient incl. h0's), finite differences in Double, parallel ≡ step ≡
// prefill + steps ≡ two-chunk prefill, causality, awkward shapes, golden vectors from NumPy,
// thread-count independence and memory (XCTest, serial: they change global state / measure).

/// Seeded inputs for a selective scan case. Δ lands in Mamba's working range (≈ 0.05–1) either
/// way: with softplus from delta ≈ N(−1, 0.5), without it from delta ∈ [0.02, 0.6].
func selectiveScanCase(_ s: SelectiveScanShape, seed: UInt64, z: Bool = true, D: Bool = true, bias: Bool = true,
                       softplus: Bool = true, initialState: Bool = true) -> SelectiveScanInputs {
    var g = SeededGenerator(seed: seed)
    let (b, d, l, n, gr) = (s.batch, s.channels, s.length, s.stateSize, s.groups)
    func normal(_ shape: [Int], _ std: Float = 1, _ mean: Float = 0) -> Tensor { Tensor.normal(shape, mean: mean, std: std, generator: &g) }
    let u = normal([b, d, l])
    let delta = softplus ? normal([b, d, l], 0.5, -1) : Tensor.uniform([b, d, l], low: 0.02, high: 0.6, generator: &g)
    // A = −(n+1)·e^ε: the S4D-real pattern with a spread, so channels differ.
    var a = Tensor(uninitializedShape: [d, n])
    for i in 0..<d { for k in 0..<n { a[i, k] = -Float(k + 1) * Float(exp(0.3 * g.nextNormal())) } }
    let bb = normal([b, gr, n, l]), cc = normal([b, gr, n, l])
    return SelectiveScanInputs(u: u, delta: delta, A: a, B: bb, C: cc,
                               D: D ? normal([d]) : nil, z: z ? normal([b, d, l]) : nil,
                               deltaBias: bias ? normal([d], 0.3) : nil,
                               initialState: initialState ? normal([b, d, n]) : nil, deltaSoftplus: softplus)
}

/// The flags of a case: z, D, deltaBias, softplus, initial state.
struct ScanFlags: CustomStringConvertible, Sendable {
    var z = true, D = true, bias = true, softplus = true, initialState = true
    static let all = ScanFlags()
    static let none = ScanFlags(z: false, D: false, bias: false, softplus: false, initialState: false)
    static let mixed = ScanFlags(z: true, D: false, bias: true, softplus: true, initialState: false)
    var description: String { "z:\(z) D:\(D) bias:\(bias) softplus:\(softplus) h0:\(initialState)" }
}

func makeCase(_ s: SelectiveScanShape, _ f: ScanFlags, seed: UInt64) -> SelectiveScanInputs {
    selectiveScanCase(s, seed: seed, z: f.z, D: f.D, bias: f.bias, softplus: f.softplus, initialState: f.initialState)
}

/// Copies time steps [from, to) of a [B, X, L] tensor (any rank ≥ 1 with time last).
func timeSlice(_ t: Tensor, _ from: Int, _ to: Int) -> Tensor {
    let l = t.shape.last!, rows = t.count / max(l, 1)
    var shape = t.shape; shape[shape.count - 1] = to - from
    return Tensor(shape: shape) { buf in
        for r in 0..<rows { for i in from..<to { buf[r * (to - from) + i - from] = t.pointer[r * l + i] } }
    }
}

extension SelectiveScanInputs {
    /// The same scan restricted to steps [from, to), starting from `state`.
    func steps(_ from: Int, _ to: Int, state: Tensor?) -> SelectiveScanInputs {
        SelectiveScanInputs(u: timeSlice(u, from, to), delta: timeSlice(delta, from, to), A: A,
                            B: timeSlice(B, from, to), C: timeSlice(C, from, to), D: D,
                            z: z.map { timeSlice($0, from, to) }, deltaBias: deltaBias, initialState: state,
                            deltaSoftplus: deltaSoftplus)
    }
}

/// Joins [B, D, Li] outputs along time.
func concatTime(_ parts: [Tensor]) -> Tensor {
    let rows = parts[0].count / parts[0].shape.last!
    let total = parts.reduce(0) { $0 + $1.shape.last! }
    var shape = parts[0].shape; shape[shape.count - 1] = total
    return Tensor(shape: shape) { buf in
        var offset = 0
        for p in parts {
            let l = p.shape.last!
            for r in 0..<rows { for i in 0..<l { buf[r * total + offset + i] = p.pointer[r * l + i] } }
            offset += l
        }
    }
}

@Suite struct SelectiveScanKernelTests {
    static let shapes = [
        SelectiveScanShape(batch: 1, channels: 16, length: 64, stateSize: 16),
        SelectiveScanShape(batch: 2, channels: 40, length: 77, stateSize: 5, groups: 2),   // 20 channels/group, N < 16
        SelectiveScanShape(batch: 1, channels: 3, length: 1, stateSize: 3),                // L = 1
        SelectiveScanShape(batch: 2, channels: 160, length: 130, stateSize: 20, groups: 2), // N = 20 > 16, several tiles per item
        SelectiveScanShape(batch: 1, channels: 48, length: 200, stateSize: 32, groups: 3),  // L not a multiple of K
    ]

    @Test(arguments: shapes)
    func forwardMatchesNaive(_ s: SelectiveScanShape) {
        for (k, flags) in [(32, ScanFlags.all), (7, ScanFlags.none), (64, ScanFlags.mixed)] {
            let x = makeCase(s, flags, seed: 7)
            let ref = selectiveScanNaive(SelectiveScanReferenceInputs(x))
            let fast = selectiveScanForward(x, options: SelectiveScanOptions(checkpointInterval: k))
            expectClose(fast.out.doubles, ref.out, tolerance: 1e-5, "out \(s) \(flags) K=\(k)")
            expectClose(fast.finalState.doubles, ref.finalState, tolerance: 1e-5, "final state \(s) \(flags) K=\(k)")
        }
    }

    @Test(arguments: shapes)
    func backwardMatchesNaive(_ s: SelectiveScanShape) {
        for (k, flags) in [(32, ScanFlags.all), (7, ScanFlags.none), (64, ScanFlags.mixed)] {
            let x = makeCase(s, flags, seed: 11)
            var g = SeededGenerator(seed: 5)
            let gradOut = Tensor.normal([s.batch, s.channels, s.length], generator: &g)
            let gradFinal = Tensor.normal([s.batch, s.channels, s.stateSize], generator: &g)
            let expected = selectiveScanNaiveBackward(SelectiveScanReferenceInputs(x), gradOut: gradOut.doubles,
                                                      gradFinalState: gradFinal.doubles)
            let fwd = selectiveScanForward(x, options: SelectiveScanOptions(checkpointInterval: k))
            let got = selectiveScanBackward(x, saved: fwd.saved!, gradOut: gradOut, gradFinalState: gradFinal)
            let what = "\(s) \(flags) K=\(k)"
            expectClose(got.u.doubles, expected.u, "∂u \(what)")
            expectClose(got.delta.doubles, expected.delta, "∂delta \(what)")
            expectClose(got.A.doubles, expected.A, "∂A \(what)")
            expectClose(got.B.doubles, expected.B, "∂B \(what)")
            expectClose(got.C.doubles, expected.C, "∂C \(what)")
            expectClose(got.initialState.doubles, expected.initialState, "∂h0 \(what)")
            #expect((got.D == nil) == (x.D == nil) && (got.z == nil) == (x.z == nil) && (got.deltaBias == nil) == (x.deltaBias == nil))
            if let e = expected.D { expectClose(got.D!.doubles, e, "∂D \(what)") }
            if let e = expected.z { expectClose(got.z!.doubles, e, "∂z \(what)") }
            if let e = expected.deltaBias { expectClose(got.deltaBias!.doubles, e, "∂bias \(what)") }
        }
    }

    /// The token-major layout ([B, L, D], B/C [B, L, G, N]) computes exactly what the
    /// channel-major layout does: every output and gradient equal bit for bit after permuting,
    /// for the fast forward and backward and for the step kernel (one token and a chunk).
    @Test(arguments: shapes)
    func tokenMajorLayoutMatchesChannelMajorBitwise(_ s: SelectiveScanShape) {
        func sequence(_ t: Tensor) -> Tensor { t.permuted([0, 2, 1]) }
        for (k, flags) in [(32, ScanFlags.all), (7, ScanFlags.none), (64, ScanFlags.mixed)] {
            let x = makeCase(s, flags, seed: 17)
            // G = 1 also as the rank-3 [B, L, N] form a model passes.
            let rank3 = s.groups == 1 && k == 7
            func state(_ t: Tensor) -> Tensor {
                let tm = t.permuted([0, 3, 1, 2])
                return rank3 ? tm.reshaped([s.batch, s.length, s.stateSize]) : tm
            }
            let xt = SelectiveScanInputs(u: sequence(x.u), delta: sequence(x.delta), A: x.A, B: state(x.B), C: state(x.C),
                                         D: x.D, z: x.z.map(sequence), deltaBias: x.deltaBias,
                                         initialState: x.initialState, deltaSoftplus: x.deltaSoftplus, layout: .tokenMajor)
            let what = "\(s) \(flags) K=\(k)"
            let options = SelectiveScanOptions(checkpointInterval: k)
            let fc = selectiveScanForward(x, options: options), ft = selectiveScanForward(xt, options: options)
            #expect(ft.out.shape == [s.batch, s.length, s.channels], "out shape \(what)")
            #expect(ft.out.doubles == sequence(fc.out).doubles, "out \(what)")
            #expect(ft.finalState.doubles == fc.finalState.doubles, "final state \(what)")

            var g = SeededGenerator(seed: 23)
            let gradOut = Tensor.normal([s.batch, s.channels, s.length], generator: &g)
            let gradFinal = Tensor.normal([s.batch, s.channels, s.stateSize], generator: &g)
            let gc = selectiveScanBackward(x, saved: fc.saved!, gradOut: gradOut, gradFinalState: gradFinal)
            let gt = selectiveScanBackward(xt, saved: ft.saved!, gradOut: sequence(gradOut), gradFinalState: gradFinal)
            #expect(gt.u.doubles == sequence(gc.u).doubles, "∂u \(what)")
            #expect(gt.delta.doubles == sequence(gc.delta).doubles, "∂delta \(what)")
            #expect(gt.z?.doubles == gc.z.map(sequence)?.doubles, "∂z \(what)")
            #expect(gt.B.shape == xt.B.shape && gt.B.doubles == state(gc.B).doubles, "∂B \(what)")
            #expect(gt.C.doubles == state(gc.C).doubles, "∂C \(what)")
            #expect(gt.A.doubles == gc.A.doubles && gt.initialState.doubles == gc.initialState.doubles, "∂A, ∂h0 \(what)")
            #expect(gt.D?.doubles == gc.D?.doubles && gt.deltaBias?.doubles == gc.deltaBias?.doubles, "∂D, ∂bias \(what)")

            // Step kernel: the whole sequence as one chunk, from the initial state.
            var stateC = x.initialState ?? Tensor.zeros([s.batch, s.channels, s.stateSize]), stateT = stateC
            var xs = x, xts = xt
            xs.initialState = nil; xts.initialState = nil
            let sc = selectiveScanStep(xs, state: &stateC), st = selectiveScanStep(xts, state: &stateT)
            #expect(st.doubles == sequence(sc).doubles && stateT.doubles == stateC.doubles, "step \(what)")
        }
    }

    /// Without a final-state gradient the backward treats it as zero.
    @Test func backwardWithoutFinalStateGradient() {
        let s = SelectiveScanShape(batch: 1, channels: 20, length: 45, stateSize: 4)
        let x = makeCase(s, .all, seed: 3)
        var g = SeededGenerator(seed: 4)
        let gradOut = Tensor.normal([1, 20, 45], generator: &g)
        let expected = selectiveScanNaiveBackward(SelectiveScanReferenceInputs(x), gradOut: gradOut.doubles)
        let got = selectiveScanBackward(x, saved: selectiveScanForward(x).saved!, gradOut: gradOut)
        expectClose(got.u.doubles, expected.u, "∂u")
        expectClose(got.A.doubles, expected.A, "∂A")
        expectClose(got.initialState.doubles, expected.initialState, "∂h0")
    }

    /// Central differences of the Double reference against the fast (Float32) backward and the
    /// naive (Double) backward, for every element of every input, on a tiny case.
    @Test(arguments: [ScanFlags.all, ScanFlags.none])
    func finiteDifferences(_ flags: ScanFlags) {
        let s = SelectiveScanShape(batch: 2, channels: 4, length: 6, stateSize: 3, groups: 2)
        let x = makeCase(s, flags, seed: 21)
        var g = SeededGenerator(seed: 22)
        let gradOut = randomDoubles(s.batch * s.channels * s.length, seed: 23)
        let gradFinal = randomDoubles(s.batch * s.channels * s.stateSize, seed: 24)
        _ = g.next()
        let base = SelectiveScanReferenceInputs(x)
        func loss(_ r: SelectiveScanReferenceInputs) -> Double {
            let o = selectiveScanNaive(r)
            return zip(o.out, gradOut).reduce(0) { $0 + $1.0 * $1.1 } + zip(o.finalState, gradFinal).reduce(0) { $0 + $1.0 * $1.1 }
        }
        func numeric(_ path: WritableKeyPath<SelectiveScanReferenceInputs, [Double]>) -> [Double] {
            (0..<base[keyPath: path].count).map { i in
                var plus = base, minus = base
                let h = 1e-6 * max(1, abs(base[keyPath: path][i]))
                plus[keyPath: path][i] += h; minus[keyPath: path][i] -= h
                return (loss(plus) - loss(minus)) / (2 * h)
            }
        }
        func numericOptional(_ path: WritableKeyPath<SelectiveScanReferenceInputs, [Double]?>) -> [Double]? {
            guard let values = base[keyPath: path] else { return nil }
            return (0..<values.count).map { i in
                var plus = base, minus = base
                let h = 1e-6 * max(1, abs(values[i]))
                plus[keyPath: path]![i] += h; minus[keyPath: path]![i] -= h
                return (loss(plus) - loss(minus)) / (2 * h)
            }
        }
        let fast = selectiveScanBackward(x, saved: selectiveScanForward(x, options: SelectiveScanOptions(checkpointInterval: 4)).saved!,
                                         gradOut: Tensor(shape: x.u.shape, doubles: gradOut),
                                         gradFinalState: Tensor(shape: [2, 4, 3], doubles: gradFinal))
        let naive = selectiveScanNaiveBackward(base, gradOut: gradOut, gradFinalState: gradFinal)
        let checks: [(String, [Double], [Double], [Double])] = [
            ("u", numeric(\.u), fast.u.doubles, naive.u), ("delta", numeric(\.delta), fast.delta.doubles, naive.delta),
            ("A", numeric(\.A), fast.A.doubles, naive.A), ("B", numeric(\.B), fast.B.doubles, naive.B),
            ("C", numeric(\.C), fast.C.doubles, naive.C),
        ]
        for (name, fd, f, n) in checks {
            expectClose(f, fd, tolerance: 1e-5, "fast ∂\(name) vs finite differences \(flags)")
            expectClose(n, fd, tolerance: 1e-7, "naive ∂\(name) vs finite differences \(flags)")
        }
        // h0: differentiate with an explicit zero initial state when the case has none.
        var withState = base
        if withState.initialState == nil { withState.initialState = [Double](repeating: 0, count: 2 * 4 * 3) }
        let fdState: [Double] = (0..<24).map { i in
            var plus = withState, minus = withState
            plus.initialState![i] += 1e-6; minus.initialState![i] -= 1e-6
            return (loss(plus) - loss(minus)) / 2e-6
        }
        expectClose(fast.initialState.doubles, fdState, tolerance: 1e-5, "fast ∂h0 vs finite differences \(flags)")
        if let fd = numericOptional(\.D) { expectClose(fast.D!.doubles, fd, tolerance: 1e-5, "fast ∂D") }
        if let fd = numericOptional(\.z) { expectClose(fast.z!.doubles, fd, tolerance: 1e-5, "fast ∂z") }
        if let fd = numericOptional(\.deltaBias) { expectClose(fast.deltaBias!.doubles, fd, tolerance: 1e-5, "fast ∂bias") }
    }

    /// Parallel form ≡ T single steps ≡ prefill of k then steps ≡ two-chunk prefill.
    @Test(arguments: [ScanFlags.all, ScanFlags.mixed])
    func parallelEqualsRecurrent(_ flags: ScanFlags) {
        let s = SelectiveScanShape(batch: 2, channels: 36, length: 50, stateSize: 16, groups: 2)
        let x = makeCase(s, flags, seed: 31)
        let full = selectiveScanForward(x, options: SelectiveScanOptions(checkpointInterval: 16, saveForBackward: false))
        let start = x.initialState ?? Tensor.zeros([2, 36, 16])

        var state = start
        var outs: [Tensor] = []
        for t in 0..<50 { outs.append(selectiveScanStep(x.steps(t, t + 1, state: nil), state: &state)) }
        expectClose(concatTime(outs).doubles, full.out.doubles, tolerance: 1e-6, "steps vs parallel out")
        expectClose(state.doubles, full.finalState.doubles, tolerance: 1e-6, "steps vs parallel state")

        let k = 23
        let prefill = selectiveScanForward(x.steps(0, k, state: x.initialState))
        var state2 = prefill.finalState
        var outs2 = [prefill.out]
        for t in k..<50 { outs2.append(selectiveScanStep(x.steps(t, t + 1, state: nil), state: &state2)) }
        expectClose(concatTime(outs2).doubles, full.out.doubles, tolerance: 1e-6, "prefill+steps vs parallel out")
        expectClose(state2.doubles, full.finalState.doubles, tolerance: 1e-6, "prefill+steps vs parallel state")

        let second = selectiveScanForward(x.steps(k, 50, state: prefill.finalState))
        expectClose(concatTime([prefill.out, second.out]).doubles, full.out.doubles, tolerance: 1e-6, "two-chunk prefill out")
        expectClose(second.finalState.doubles, full.finalState.doubles, tolerance: 1e-6, "two-chunk prefill state")

        var state3 = start
        let chunkStep = selectiveScanStep(x.steps(0, 50, state: nil), state: &state3)
        expectClose(chunkStep.doubles, full.out.doubles, tolerance: 1e-6, "one multi-token step vs parallel")
    }

    /// Changing inputs after step t leaves outputs up to t bit-identical.
    @Test func causality() {
        let s = SelectiveScanShape(batch: 1, channels: 32, length: 90, stateSize: 16)
        let x = makeCase(s, .all, seed: 41)
        let cut = 57
        var y = x
        var g = SeededGenerator(seed: 42)
        for name in ["u", "delta", "z", "B", "C"] {
            func perturb(_ t: inout Tensor) {
                let l = t.shape.last!, p = t.mutablePointer()
                for r in 0..<(t.count / l) { for i in (cut + 1)..<l { p[r * l + i] += Float(g.nextNormal()) } }
            }
            switch name {
            case "u": perturb(&y.u)
            case "delta": perturb(&y.delta)
            case "z": perturb(&y.z!)
            case "B": perturb(&y.B)
            default: perturb(&y.C)
            }
        }
        let a = selectiveScanForward(x).out, b = selectiveScanForward(y).out
        var same = true, changedLater = false
        for r in 0..<32 {
            for t in 0...cut where a.pointer[r * 90 + t] != b.pointer[r * 90 + t] { same = false }
            for t in (cut + 1)..<90 where a.pointer[r * 90 + t] != b.pointer[r * 90 + t] { changedLater = true }
        }
        #expect(same, "outputs up to t = \(cut) changed when only later inputs changed")
        #expect(changedLater, "later outputs should change")
    }

    /// Golden vectors from Tests/ZooKernelsTests/Fixtures/golden_selective_scan.py (NumPy, float64).
    @Test func goldenVectors() throws {
        let url = try #require(Bundle.module.url(forResource: "golden_selective_scan", withExtension: "json", subdirectory: "Fixtures"))
        let fixture = try GoldenFixture(contentsOf: url)
        for name in ["full", "plain"] {
            func t(_ key: String) -> Tensor? {
                fixture.arrays["\(name).\(key)"].map { Tensor(shape: $0.shape, doubles: $0.data) }
            }
            let x = SelectiveScanInputs(u: t("u")!, delta: t("delta")!, A: t("A")!, B: t("B")!, C: t("C")!, D: t("D"),
                                        z: t("z"), deltaBias: t("delta_bias"), initialState: t("h0"),
                                        deltaSoftplus: fixture.scalar("\(name).delta_softplus") != 0)
            let fwd = selectiveScanForward(x, options: SelectiveScanOptions(checkpointInterval: 8))
            expectClose(fwd.out.doubles, fixture["\(name).out"].data, tolerance: 1e-5, "golden \(name) out")
            expectClose(fwd.finalState.doubles, fixture["\(name).last_state"].data, tolerance: 1e-5, "golden \(name) last state")
            let naive = selectiveScanNaive(SelectiveScanReferenceInputs(x))
            expectClose(naive.out, fixture["\(name).out"].data, tolerance: 1e-6, "golden \(name) naive out")
            var state = x.initialState ?? Tensor.zeros(fwd.finalState.shape)
            let stepped = selectiveScanStep(x.steps(0, x.u.shape[2], state: nil), state: &state)
            expectClose(stepped.doubles, fixture["\(name).out"].data, tolerance: 1e-5, "golden \(name) step out")
            let grads = selectiveScanBackward(x, saved: fwd.saved!, gradOut: t("grad_out")!, gradFinalState: t("grad_last_state"))
            for (key, got) in [("u", grads.u), ("delta", grads.delta), ("A", grads.A), ("B", grads.B), ("C", grads.C),
                               ("h0", grads.initialState)] {
                expectClose(got.doubles, fixture["\(name).grad_\(key)"].data, tolerance: 1e-5, "golden \(name) ∂\(key)")
            }
            for (key, got) in [("D", grads.D), ("z", grads.z), ("delta_bias", grads.deltaBias)] {
                if let expected = fixture.arrays["\(name).grad_\(key)"] {
                    expectClose(got!.doubles, expected.data, tolerance: 1e-5, "golden \(name) ∂\(key)")
                }
            }
        }
    }

    /// A zero-length scan returns the initial state and passes the final-state gradient through.
    @Test func emptySequence() {
        let s = SelectiveScanShape(batch: 1, channels: 5, length: 0, stateSize: 4)
        let x = makeCase(s, .all, seed: 51)
        let fwd = selectiveScanForward(x)
        #expect(fwd.out.shape == [1, 5, 0])
        #expect(fwd.finalState.scalars == x.initialState!.scalars)
        let gh = randomTensor([1, 5, 4], seed: 52)
        let grads = selectiveScanBackward(x, saved: fwd.saved!, gradOut: Tensor.zeros([1, 5, 0]), gradFinalState: gh)
        #expect(grads.initialState.scalars == gh.scalars)
        #expect(grads.A.scalars.allSatisfy { $0 == 0 })
    }
}

/// Serial tests (XCTest runs before Swift Testing, one test at a time): they change the global
/// thread count or measure MemoryMeter.
final class SelectiveScanSerialTests: XCTestCase {
    /// Outputs and every gradient are bit-identical for 1, 2 and 3 worker threads.
    func testResultsDoNotDependOnThreadCount() {
        let s = SelectiveScanShape(batch: 2, channels: 200, length: 150, stateSize: 16, groups: 2)
        let x = makeCase(s, .all, seed: 61)
        let gradOut = randomTensor([2, 200, 150], seed: 62)
        let before = ZooThreads.count
        defer { ZooThreads.configure(threads: before) }
        var results: [[Float]] = []
        for threads in [1, 2, 3] {
            ZooThreads.configure(threads: threads)
            let fwd = selectiveScanForward(x)
            let g = selectiveScanBackward(x, saved: fwd.saved!, gradOut: gradOut)
            results.append(fwd.out.scalars + fwd.finalState.scalars + g.u.scalars + g.delta.scalars + g.A.scalars
                           + g.B.scalars + g.C.scalars + g.D!.scalars + g.z!.scalars + g.deltaBias!.scalars
                           + g.initialState.scalars)
        }
        XCTAssertEqual(results[0], results[1], "1 vs 2 threads")
        XCTAssertEqual(results[0], results[2], "1 vs 3 threads")
    }

    /// Forward+backward memory is linear in T and holds no per-step state: the saved checkpoints
    /// are B·D·Npad·⌈L/K⌉ floats, and the peak of one forward+backward (outputs and gradients
    /// included) stays far below the B·D·N·L floats that storing every state would take.
    func testMemoryIsLinearWithoutPerStepStates() {
        let d = 64, n = 16
        var peaks: [Int] = []
        for l in [1024, 2048, 4096] {
            let s = SelectiveScanShape(batch: 1, channels: d, length: l, stateSize: n)
            let x = makeCase(s, .all, seed: 71)
            let gradOut = randomTensor([1, d, l], seed: 72)
            let (saved, peak) = MemoryMeter.measurePeak { () -> Int in
                let fwd = selectiveScanForward(x)
                _ = selectiveScanBackward(x, saved: fwd.saved!, gradOut: gradOut)
                return fwd.saved!.byteCount
            }
            XCTAssertEqual(saved, d * n * ((l + 63) / 64) * 4, "checkpoint bytes at L=\(l)")
            let perStepStates = d * n * l * 4
            XCTAssertLessThan(peak, perStepStates / 2, "peak \(peak) B at L=\(l) vs all states \(perStepStates) B")
            peaks.append(peak)
        }
        // Linear: doubling L adds about the same amount each time (within 10 %).
        let first = Double(peaks[1] - peaks[0]), second = Double(peaks[2] - peaks[1])
        XCTAssertEqual(second / first, 2, accuracy: 0.2, "peak growth \(peaks)")
    }
}
