import Foundation
import Testing
import ZooKernels
import ZooTensor
import ZooTestSupport

/// Small NSA sizes that make every branch non-trivial on short sequences: overlapping compression
/// blocks (d < l), l′ ≠ l, real top-n choices (n < visible blocks), a window shorter than T.
let smallNSA = NSAOptions(compressBlock: 4, compressStride: 2, selectBlock: 8, selectCount: 4, window: 12)

struct NSAShape: CustomStringConvertible, Sendable {
    var B = 1, Tq = 40, Tk = 40, Hq = 2, Hk = 1, dk = 8, dv = 8
    var description: String { "B\(B) Tq\(Tq) Tk\(Tk) Hq\(Hq) Hkv\(Hk) dk\(dk) dv\(dv)" }
}

/// Random inputs; compressed K/V are mean-pooled from their own raw keys when `pooled`.
func makeNSAInputs(_ s: NSAShape, _ o: NSAOptions, seed: UInt64, pooled: Bool = true) -> NSAInputs {
    let Nc = o.compressedCount(keys: s.Tk)
    func r(_ shape: [Int], _ salt: UInt64) -> Tensor { randomTensor(shape, seed: seed &* 7919 &+ salt) }
    let kc: Tensor, vc: Tensor
    if pooled {
        kc = nsaCompressMean(r([s.B, s.Tk, s.Hk, s.dk], 1), options: o)
        vc = nsaCompressMean(r([s.B, s.Tk, s.Hk, s.dv], 2), options: o)
    } else {
        kc = r([s.B, Nc, s.Hk, s.dk], 1); vc = r([s.B, Nc, s.Hk, s.dv], 2)
    }
    return NSAInputs(q: r([s.B, s.Tq, s.Hq, s.dk], 3), kCmp: kc, vCmp: vc,
                     kSel: r([s.B, s.Tk, s.Hk, s.dk], 4), vSel: r([s.B, s.Tk, s.Hk, s.dv], 5),
                     kWin: r([s.B, s.Tk, s.Hk, s.dk], 6), vWin: r([s.B, s.Tk, s.Hk, s.dv], 7),
                     gates: r([s.B, s.Tq, s.Hq, 3], 8))
}

let nsaShapes: [NSAShape] = [
    NSAShape(),                                                    // one head pair, T = 40
    NSAShape(B: 2, Tq: 37, Tk: 37, Hq: 4, Hk: 2, dk: 8, dv: 6),    // B > 1, GQA, dv ≠ dk, odd T
    NSAShape(B: 1, Tq: 1, Tk: 1, Hq: 2, Hk: 2, dk: 4, dv: 4),      // T = 1
    NSAShape(B: 1, Tq: 13, Tk: 50, Hq: 3, Hk: 1, dk: 5, dv: 7),    // queries are the last 13 positions
    NSAShape(B: 1, Tq: 300, Tk: 300, Hq: 4, Hk: 1, dk: 16, dv: 16), // several chunks and tiles
    NSAShape(B: 1, Tq: 1100, Tk: 1100, Hq: 2, Hk: 1, dk: 8, dv: 8),  // five chunks: several backward parts
]

@Suite struct NSAKernelTests {
    @Test(arguments: nsaShapes)
    func fastForwardMatchesNaive(_ s: NSAShape) {
        let x = makeNSAInputs(s, smallNSA, seed: 11)
        let ref = nsaNaiveForward(NSADoubleInputs(x), options: smallNSA)
        let fast = nsaForward(x, options: smallNSA, selection: ref.selection)
        expectClose(fast.output.doubles, ref.output, "output \(s)")
        let branch = fast.branchOutputs.doubles, n = ref.output.count
        for c in 0..<3 { expectClose(Array(branch[c * n ..< (c + 1) * n]), ref.branchOutputs[c], "branch \(c) \(s)") }
    }

    @Test(arguments: nsaShapes)
    func fastBackwardMatchesNaive(_ s: NSAShape) {
        let x = makeNSAInputs(s, smallNSA, seed: 12)
        let dx = NSADoubleInputs(x)
        let ref = nsaNaiveForward(dx, options: smallNSA)
        let dOut = randomTensor([s.B, s.Tq, s.Hq, s.dv], seed: 99)
        let g = nsaNaiveBackward(dx, options: smallNSA, selection: ref.selection, outputGradient: dOut.doubles)
        let fwd = nsaForward(x, options: smallNSA, selection: ref.selection)
        let fg = nsaBackward(x, forward: fwd, outputGradient: dOut, options: smallNSA)
        expectClose(fg.q.doubles, g.q, "dq \(s)")
        expectClose(fg.kCmp.doubles, g.kCmp, "dkCmp \(s)")
        expectClose(fg.vCmp.doubles, g.vCmp, "dvCmp \(s)")
        expectClose(fg.kSel.doubles, g.kSel, "dkSel \(s)")
        expectClose(fg.vSel.doubles, g.vSel, "dvSel \(s)")
        expectClose(fg.kWin.doubles, g.kWin, "dkWin \(s)")
        expectClose(fg.vWin.doubles, g.vWin, "dvWin \(s)")
        expectClose(fg.gates.doubles, g.gates, "dgates \(s)")
    }
}

extension NSAKernelTests {
    // MARK: Selection

    /// The top-n step equals a brute-force sort on the same scores, ties included.
    @Test func selectionEqualsBruteForceTopN() {
        var g = SeededGenerator(seed: 3)
        for o in [smallNSA, NSAOptions(compressBlock: 8, compressStride: 4, selectBlock: 4, selectCount: 5, window: 8, initialBlocks: 2, localBlocks: 1),
                  NSAOptions()] {
            let (B, Hk, Tq, Tk) = (2, 3, 70, 90)
            let nb = o.selectionBlockCount(keys: Tk)
            // Scores from a small set of values, so ties are common.
            let scores = (0..<(B * Hk * Tq * nb)).map { _ in Float(g.nextInt(below: 4)) / 4 }
            let sel = nsaSelectBlocks(scores: scores, batch: B, kvHeads: Hk, queries: Tq, keys: Tk, options: o)
            for b in 0..<B { for h in 0..<Hk { for t in 0..<Tq {
                let row = ((b * Hk + h) * Tq + t) * nb
                let expected = nsaNaiveSelect(scores: scores[row ..< row + nb].map(Double.init), position: t + Tk - Tq, options: o)
                #expect(sel.blocks(batch: b, kvHead: h, query: t) == expected, "b \(b) h \(h) t \(t)")
            } } }
        }
    }

    /// The fast forward's own choice is a top-n of the naive (Double) block scores: forced blocks
    /// present, and no unchosen block scores above a chosen one (beyond float round-off).
    @Test(arguments: [nsaShapes[1], nsaShapes[4]])
    func forwardSelectionIsTopNOfNaiveScores(_ s: NSAShape) {
        for o in [smallNSA, NSAOptions(compressBlock: 4, compressStride: 2, selectBlock: 8, selectCount: 4, window: 12, scoreRule: .overlapIndicator)] {
            let x = makeNSAInputs(s, o, seed: 21)
            let ref = nsaNaiveForward(NSADoubleInputs(x), options: o)
            let fast = nsaForward(x, options: o)
            let nb = o.selectionBlockCount(keys: s.Tk)
            var exact = 0, total = 0
            for b in 0..<s.B { for h in 0..<s.Hk { for t in 0..<s.Tq {
                let p = t + s.Tk - s.Tq, current = p / o.selectBlock
                let row = ((b * s.Hk + h) * s.Tq + t) * nb
                let scores = Array(ref.scores[row ..< row + nb])
                let chosen = fast.selection.blocks(batch: b, kvHead: h, query: t)
                total += 1
                if chosen == nsaNaiveSelect(scores: scores, position: p, options: o) { exact += 1; continue }
                #expect(chosen.count == min(o.selectCount, current + 1))
                let forced = (0...current).filter { $0 < o.initialBlocks || $0 > current - o.localBlocks }
                #expect(forced.allSatisfy(chosen.contains))
                let free = chosen.filter { !forced.contains($0) }
                let others = (0...current).filter { !chosen.contains($0) }
                if let low = free.map({ scores[$0] }).min(), let high = others.map({ scores[$0] }).max() {
                    #expect(low >= high - 1e-5, "t \(t): chosen \(chosen) scores \(scores)")
                }
            } } }
            #expect(exact >= total - 2, "fast selection equals the naive top-n on \(exact) of \(total) queries")
        }
    }

    // MARK: Gradients

    /// Central differences of the naive Double forward (selection fixed) against the fast backward.
    @Test func finiteDifferencesAgainstFastBackward() {
        let s = NSAShape(B: 1, Tq: 21, Tk: 21, Hq: 2, Hk: 1, dk: 3, dv: 2)
        let x = makeNSAInputs(s, smallNSA, seed: 31, pooled: false)
        let base = NSADoubleInputs(x)
        let sel = nsaNaiveForward(base, options: smallNSA).selection
        let dOut = randomTensor([s.B, s.Tq, s.Hq, s.dv], seed: 32)
        let gy = dOut.doubles
        let fast = nsaBackward(x, forward: nsaForward(x, options: smallNSA, selection: sel), outputGradient: dOut, options: smallNSA)
        func loss(_ v: NSADoubleInputs) -> Double {
            zip(nsaNaiveForward(v, options: smallNSA, selection: sel).output, gy).reduce(0) { $0 + $1.0 * $1.1 }
        }
        let fields: [(String, WritableKeyPath<NSADoubleInputs, [Double]>, Tensor)] = [
            ("q", \.q, fast.q), ("kCmp", \.kCmp, fast.kCmp), ("vCmp", \.vCmp, fast.vCmp), ("kSel", \.kSel, fast.kSel),
            ("vSel", \.vSel, fast.vSel), ("kWin", \.kWin, fast.kWin), ("vWin", \.vWin, fast.vWin), ("gates", \.gates, fast.gates)]
        let h = 1e-6
        for (name, path, grad) in fields {
            var numeric = [Double]()
            for i in 0..<base[keyPath: path].count {
                var up = base, down = base
                up[keyPath: path][i] += h; down[keyPath: path][i] -= h
                numeric.append((loss(up) - loss(down)) / (2 * h))
            }
            expectClose(grad.doubles, numeric, "d\(name) vs central differences")
        }
    }

    // MARK: Decode

    @Test(arguments: [false, true])
    func decodeMatchesParallel(_ shared: Bool) {
        let s = NSAShape(B: 2, Tq: 45, Tk: 45, Hq: 4, Hk: 2, dk: 8, dv: 6), o = smallNSA
        let rawK = randomTensor([s.B, s.Tk, s.Hk, s.dk], seed: 41), rawV = randomTensor([s.B, s.Tk, s.Hk, s.dv], seed: 42)
        let ks = randomTensor([s.B, s.Tk, s.Hk, s.dk], seed: 43), vs = randomTensor([s.B, s.Tk, s.Hk, s.dv], seed: 44)
        let kw = shared ? ks : randomTensor([s.B, s.Tk, s.Hk, s.dk], seed: 45)
        let vw = shared ? vs : randomTensor([s.B, s.Tk, s.Hk, s.dv], seed: 46)
        let q = randomTensor([s.B, s.Tq, s.Hq, s.dk], seed: 47), gates = randomTensor([s.B, s.Tq, s.Hq, 3], seed: 48)
        let kc = nsaCompressMean(rawK, options: o), vc = nsaCompressMean(rawV, options: o)
        let x = NSAInputs(q: q, kCmp: kc, vCmp: vc, kSel: ks, vSel: vs, kWin: kw, vWin: vw, gates: gates)
        let parallel = nsaForward(x, options: o)

        func newCache() -> NSADecodeCache {
            NSADecodeCache(options: o, batch: s.B, kvHeads: s.Hk, keyDim: s.dk, valueDim: s.dv, sharedRawKV: shared,
                           pageTokens: 16, pageCompressed: 4)
        }
        // Appends tokens a..<b and the compressed blocks they complete.
        func append(_ c: inout NSADecodeCache, _ a: Int, _ b: Int) {
            c.appendRaw(kSel: ks.slice(axis: 1, a..<b), vSel: vs.slice(axis: 1, a..<b),
                        kWin: shared ? nil : kw.slice(axis: 1, a..<b), vWin: shared ? nil : vw.slice(axis: 1, a..<b))
            let c0 = o.compressedCount(keys: a), c1 = o.compressedCount(keys: b)
            if c1 > c0 { c.appendCompressed(k: kc.slice(axis: 1, c0..<c1), v: vc.slice(axis: 1, c0..<c1)) }
        }
        func step(_ c: inout NSADecodeCache, _ t: Int) -> Tensor {
            append(&c, t, t + 1)
            let r = nsaDecodeStep(q: q.slice(axis: 1, t..<(t + 1)), gates: gates.slice(axis: 1, t..<(t + 1)), cache: c)
            #expect(r.reads.tokens == o.decodeTokensRead(context: t + 1), "reads at t = \(t + 1)")
            return r.output
        }
        var c1 = newCache()
        let steps = Tensor.concatenate((0..<s.Tq).map { step(&c1, $0) }, axis: 1)
        expectClose(steps, parallel.output, "T single steps vs parallel (shared K/V \(shared))")

        let k0 = 19
        var c2 = newCache()
        append(&c2, 0, k0)
        var parts = [nsaPrefill(q: q.slice(axis: 1, 0..<k0), gates: gates.slice(axis: 1, 0..<k0), cache: c2).output]
        for t in k0..<s.Tq { parts.append(step(&c2, t)) }
        expectClose(Tensor.concatenate(parts, axis: 1), parallel.output, "prefill \(k0) then steps")

        var c3 = newCache()
        append(&c3, 0, k0)
        let first = nsaPrefill(q: q.slice(axis: 1, 0..<k0), gates: gates.slice(axis: 1, 0..<k0), cache: c3).output
        append(&c3, k0, s.Tq)
        let second = nsaPrefill(q: q.slice(axis: 1, k0..<s.Tq), gates: gates.slice(axis: 1, k0..<s.Tq), cache: c3).output
        expectClose(Tensor.concatenate([first, second], axis: 1), parallel.output, "two-chunk prefill")

        // Bytes held: whole pages of raw K/V (once when shared) and of compressed K/V.
        let raw = NSAPagedRows.bytes(rows: s.Tk, batch: s.B, width: s.Hk * (s.dk + s.dv), pageRows: 16)
        let cmp = NSAPagedRows.bytes(rows: o.compressedCount(keys: s.Tk), batch: s.B, width: s.Hk * (s.dk + s.dv), pageRows: 4)
        #expect(c1.byteCount == (shared ? raw : 2 * raw) + cmp)
    }

    /// The read meter reproduces the paper's expected decode speed-ups (Table 4: 4.0×, 6.4×,
    /// 9.1×, 11.6× fewer tokens than full attention at 8k, 16k, 32k, 64k) with its defaults.
    @Test func decodeReadMeterReproducesPaperRatios() {
        let o = NSAOptions()
        let (dk, dv) = (2, 2)
        var cache = NSADecodeCache(options: o, batch: 1, kvHeads: 1, keyDim: dk, valueDim: dv, sharedRawKV: true)
        let raw = randomTensor([1, 65536, 1, dk], seed: 51)
        for (t, paper) in [(8192, "4.0"), (16384, "6.4"), (32768, "9.1"), (65536, "11.6")] {
            let start = cache.length
            cache.appendRaw(kSel: raw.slice(axis: 1, start..<t), vSel: raw.slice(axis: 1, start..<t))
            let c0 = o.compressedCount(keys: start), c1 = o.compressedCount(keys: t)
            let kc = randomTensor([1, c1 - c0, 1, dk], seed: UInt64(t))
            cache.appendCompressed(k: kc, v: kc)
            let r = nsaDecodeStep(q: randomTensor([1, 1, 2, dk], seed: 52), gates: Tensor.zeros([1, 1, 2, 3]), cache: cache)
            let formula = (t - o.compressBlock) / o.compressStride + 1 + o.selectCount * o.selectBlock + o.window
            #expect(r.reads.tokens == formula && o.decodeTokensRead(context: t) == formula, "t = \(t)")
            #expect(r.reads.bytes == formula * (dk + dv) * 4)
            #expect(String(format: "%.1f", Double(t) / Double(r.reads.tokens)) == paper, "t = \(t): \(Double(t) / Double(r.reads.tokens))")
        }
    }

    // MARK: Causality, compression, golden vectors

    /// Changing every input after position t (raw K/V, queries, gates; compression redone) leaves
    /// outputs up to t unchanged, selection included.
    @Test func causality() {
        let s = NSAShape(B: 1, Tq: 120, Tk: 120, Hq: 4, Hk: 2, dk: 8, dv: 8), o = smallNSA
        let x = makeNSAInputs(s, o, seed: 61)
        let rawK = randomTensor([s.B, s.Tk, s.Hk, s.dk], seed: 62), rawV = randomTensor([s.B, s.Tk, s.Hk, s.dv], seed: 63)
        let y0 = nsaForward(NSAInputs(q: x.q, kCmp: nsaCompressMean(rawK, options: o), vCmp: nsaCompressMean(rawV, options: o),
                                      kSel: x.kSel, vSel: x.vSel, kWin: x.kWin, vWin: x.vWin, gates: x.gates), options: o)
        for t in [0, 37, 64, 100] {
            func change(_ a: Tensor, _ seed: UInt64) -> Tensor {
                let n = a.shape[1] - t - 1
                return Tensor.concatenate([a.slice(axis: 1, 0..<(t + 1)), randomTensor([a.shape[0], n] + Array(a.shape[2...]), seed: seed)], axis: 1)
            }
            let rk = change(rawK, 71), rv = change(rawV, 72)
            let x1 = NSAInputs(q: change(x.q, 73), kCmp: nsaCompressMean(rk, options: o), vCmp: nsaCompressMean(rv, options: o),
                               kSel: change(x.kSel, 74), vSel: change(x.vSel, 75), kWin: change(x.kWin, 76), vWin: change(x.vWin, 77),
                               gates: change(x.gates, 78))
            let y1 = nsaForward(x1, options: o)
            let a = y0.output.slice(axis: 1, 0..<(t + 1)).doubles, b = y1.output.slice(axis: 1, 0..<(t + 1)).doubles
            #expect(maxAbsError(a, b) == 0, "outputs up to \(t) changed by \(maxAbsError(a, b))")
        }
    }

    @Test func meanCompressionMatchesNaive() {
        for (T, o) in [(37, smallNSA), (100, NSAOptions()), (5, NSAOptions(compressBlock: 3, compressStride: 3))] {
            let x = randomTensor([2, T, 3, 5], seed: 81)
            let y = nsaCompressMean(x, options: o)
            expectClose(y.doubles, nsaNaiveCompressMean(x.doubles, batch: 2, tokens: T, heads: 3, dim: 5, options: o), "compress T \(T)")
            // Backward: ⟨dy, compress(x)⟩ is linear in x, so its gradient is exact to check by probing.
            let dy = randomTensor(y.shape, seed: 82)
            let dx = nsaCompressMeanBackward(dy, tokens: T, options: o)
            var expected = [Double](repeating: 0, count: x.count)
            for i in 0..<x.count {
                var e = [Double](repeating: 0, count: x.count); e[i] = 1
                expected[i] = zip(nsaNaiveCompressMean(e, batch: 2, tokens: T, heads: 3, dim: 5, options: o), dy.doubles).reduce(0) { $0 + $1.0 * $1.1 }
            }
            expectClose(dx.doubles, expected, "compress backward T \(T)")
        }
    }

    /// Golden vectors from Fixtures/golden_nsa.py (an independent NumPy float64 implementation):
    /// output, selection (both Eq. 9 readings) and every gradient, compression's included.
    @Test func goldenVectors() throws {
        let url = try #require(Bundle.module.url(forResource: "golden_nsa", withExtension: "json", subdirectory: "Fixtures"))
        let f = try GoldenFixture(contentsOf: url)
        let o = NSAOptions(compressBlock: Int(f.scalar("cfg_l")), compressStride: Int(f.scalar("cfg_stride")),
                           selectBlock: Int(f.scalar("cfg_lsel")), selectCount: Int(f.scalar("cfg_n")), window: Int(f.scalar("cfg_w")),
                           initialBlocks: Int(f.scalar("cfg_n_init")), localBlocks: Int(f.scalar("cfg_n_local")))
        func tensor(_ name: String) -> Tensor { Tensor(shape: f[name].shape, doubles: f[name].data) }
        let kRaw = tensor("kCmpRaw"), vRaw = tensor("vCmpRaw"), T = kRaw.shape[1]
        let x = NSAInputs(q: tensor("q"), kCmp: nsaCompressMean(kRaw, options: o), vCmp: nsaCompressMean(vRaw, options: o),
                          kSel: tensor("kSel"), vSel: tensor("vSel"), kWin: tensor("kWin"), vWin: tensor("vWin"), gates: tensor("gates"))
        let fwd = nsaForward(x, options: o)
        #expect(fwd.selection.indices.map(Double.init) == f["selection"].data, "selection (weighted Eq. 9)")
        expectClose(fwd.output.doubles, f["y"].data, "y")
        var oi = o; oi.scoreRule = .overlapIndicator
        let fwdI = nsaForward(x, options: oi)
        #expect(fwdI.selection.indices.map(Double.init) == f["selection_indicator"].data, "selection (indicator Eq. 9)")
        expectClose(fwdI.output.doubles, f["y_indicator"].data, "y (indicator)")
        let g = nsaBackward(x, forward: fwd, outputGradient: tensor("gy"), options: o)
        // Central differences in float64 with step 1e-6: the reference itself is good to ~1e-9.
        expectClose(g.q.doubles, f["d_q"].data, "dq")
        expectClose(nsaCompressMeanBackward(g.kCmp, tokens: T, options: o).doubles, f["d_kCmpRaw"].data, "dkCmpRaw")
        expectClose(nsaCompressMeanBackward(g.vCmp, tokens: T, options: o).doubles, f["d_vCmpRaw"].data, "dvCmpRaw")
        expectClose(g.kSel.doubles, f["d_kSel"].data, "dkSel")
        expectClose(g.vSel.doubles, f["d_vSel"].data, "dvSel")
        expectClose(g.kWin.doubles, f["d_kWin"].data, "dkWin")
        expectClose(g.vWin.doubles, f["d_vWin"].data, "dvWin")
        expectClose(g.gates.doubles, f["d_gates"].data, "dgates")
        // The naive kernel agrees with the fixture too (two implementations against a third).
        let naive = nsaNaiveForward(NSADoubleInputs(x), options: o)
        expectClose(naive.output, f["y"].data, tolerance: 1e-6, "naive y")
    }

    /// Two runs give bitwise-identical results (the dynamic work queue hands items to threads in a
    /// different order each time; every item is computed whole by one thread).
    @Test func runsAreBitwiseReproducible() {
        let s = nsaShapes[4]
        let x = makeNSAInputs(s, smallNSA, seed: 91)
        let dOut = randomTensor([s.B, s.Tq, s.Hq, s.dv], seed: 92)
        let f1 = nsaForward(x, options: smallNSA), f2 = nsaForward(x, options: smallNSA)
        #expect(f1.output.scalars == f2.output.scalars && f1.selection == f2.selection)
        let g1 = nsaBackward(x, forward: f1, outputGradient: dOut, options: smallNSA)
        let g2 = nsaBackward(x, forward: f2, outputGradient: dOut, options: smallNSA)
        for (a, b) in [(g1.q, g2.q), (g1.kCmp, g2.kCmp), (g1.vSel, g2.vSel), (g1.kWin, g2.kWin), (g1.gates, g2.gates)] {
            #expect(a.scalars == b.scalars)
        }
    }
}
