import Foundation
import Testing
import ZooKernels
import ZooTensor
import ZooTestSupport

// MARK: - Helpers

/// Inputs of one attention case, in Float (what the kernels take) and the same values in Double.
struct AttentionInputs {
    let shape: AttentionShape
    let q, k, v, dO: [Float]
    init(shape: AttentionShape, q: [Float], k: [Float], v: [Float], dO: [Float]) {
        self.shape = shape; self.q = q; self.k = k; self.v = v; self.dO = dO
    }
    init(_ shape: AttentionShape, seed: UInt64, scale: Double = 1) {
        self.shape = shape
        func floats(_ n: Int, _ s: UInt64) -> [Float] { randomDoubles(n, seed: s, scale: scale).map(Float.init) }
        q = floats(shape.queryCount, seed)
        k = floats(shape.keyCount, seed &+ 1)
        v = floats(shape.valueCount, seed &+ 2)
        dO = floats(shape.outputCount, seed &+ 3)
    }
}

func flashForward(_ x: AttentionInputs, _ options: AttentionOptions) -> (o: [Float], lse: [Float]) {
    var o = [Float](repeating: .nan, count: x.shape.outputCount)
    var lse = [Float](repeating: .nan, count: x.shape.logSumExpCount)
    flashAttentionForward(q: x.q, k: x.k, v: x.v, shape: x.shape, options: options, output: &o, logSumExp: &lse)
    return (o, lse)
}

func naiveForward(_ x: AttentionInputs, _ options: AttentionOptions) -> (o: [Double], lse: [Double]) {
    var o = [Double](repeating: .nan, count: x.shape.outputCount)
    var lse = [Double](repeating: .nan, count: x.shape.logSumExpCount)
    naiveAttentionForward(q: x.q.map(Double.init), k: x.k.map(Double.init), v: x.v.map(Double.init),
                          shape: x.shape, options: options, output: &o, logSumExp: &lse)
    return (o, lse)
}

/// lse may hold −∞ (a query that sees no key): those must match exactly, the rest by relative error.
func expectCloseLogSumExp(_ actual: [Float], _ expected: [Double], tolerance: Double = 1e-5, _ what: String,
                          sourceLocation: SourceLocation = #_sourceLocation) {
    let emptyActual = actual.map { $0 == -.infinity }, emptyExpected = expected.map { $0 == -.infinity }
    if emptyActual != emptyExpected {
        Issue.record("\(what): rows with no visible key differ", sourceLocation: sourceLocation)
        return
    }
    let keep = expected.indices.filter { !emptyExpected[$0] }
    expectClose(keep.map { Double(actual[$0]) }, keep.map { expected[$0] }, tolerance: tolerance, what, sourceLocation: sourceLocation)
}

func flashBackward(_ x: AttentionInputs, _ options: AttentionOptions) -> (dq: [Float], dk: [Float], dv: [Float]) {
    let (o, lse) = flashForward(x, options)
    var dq = [Float](repeating: .nan, count: x.shape.queryCount)
    var dk = [Float](repeating: .nan, count: x.shape.keyCount)
    var dv = [Float](repeating: .nan, count: x.shape.valueCount)
    flashAttentionBackward(q: x.q, k: x.k, v: x.v, output: o, logSumExp: lse, outputGradient: x.dO,
                           shape: x.shape, options: options, queryGradient: &dq, keyGradient: &dk, valueGradient: &dv)
    return (dq, dk, dv)
}

func naiveBackward(_ x: AttentionInputs, _ options: AttentionOptions) -> (dq: [Double], dk: [Double], dv: [Double]) {
    var dq = [Double](repeating: .nan, count: x.shape.queryCount)
    var dk = [Double](repeating: .nan, count: x.shape.keyCount)
    var dv = [Double](repeating: .nan, count: x.shape.valueCount)
    naiveAttentionBackward(q: x.q.map(Double.init), k: x.k.map(Double.init), v: x.v.map(Double.init),
                           outputGradient: x.dO.map(Double.init), shape: x.shape, options: options,
                           queryGradient: &dq, keyGradient: &dk, valueGradient: &dv)
    return (dq, dk, dv)
}

let forwardCases: [(String, AttentionShape, AttentionOptions)] = [
    ("causal T=1", AttentionShape(batch: 1, queryLength: 1, keyLength: 1, queryHeads: 1, keyValueHeads: 1, headDim: 8), AttentionOptions()),
    ("causal T=100", AttentionShape(batch: 1, queryLength: 100, keyLength: 100, queryHeads: 2, keyValueHeads: 2, headDim: 64), AttentionOptions()),
    ("causal T=300 GQA B=2", AttentionShape(batch: 2, queryLength: 300, keyLength: 300, queryHeads: 4, keyValueHeads: 2, headDim: 32), AttentionOptions()),
    ("noncausal Tq<Tk dv≠d", AttentionShape(batch: 1, queryLength: 37, keyLength: 150, queryHeads: 3, keyValueHeads: 1, headDim: 24, valueDim: 40), AttentionOptions(causal: false)),
    ("causal Tq<Tk", AttentionShape(batch: 1, queryLength: 70, keyLength: 333, queryHeads: 2, keyValueHeads: 1, headDim: 16), AttentionOptions()),
    ("causal Tq>Tk", AttentionShape(batch: 1, queryLength: 90, keyLength: 40, queryHeads: 2, keyValueHeads: 2, headDim: 16), AttentionOptions()),
    ("window softcap", AttentionShape(batch: 1, queryLength: 260, keyLength: 260, queryHeads: 2, keyValueHeads: 1, headDim: 64, valueDim: 48), AttentionOptions(windowLeft: 70, softcap: 5)),
    ("local left/right noncausal", AttentionShape(batch: 1, queryLength: 200, keyLength: 200, queryHeads: 1, keyValueHeads: 1, headDim: 16), AttentionOptions(causal: false, windowLeft: 10, windowRight: 3, scale: 0.4)),
    ("d=128 dv=80 MQA B=3", AttentionShape(batch: 3, queryLength: 150, keyLength: 150, queryHeads: 3, keyValueHeads: 1, headDim: 128, valueDim: 80), AttentionOptions()),
    ("no keys", AttentionShape(batch: 1, queryLength: 5, keyLength: 0, queryHeads: 2, keyValueHeads: 1, headDim: 8), AttentionOptions(causal: false)),
    ("no queries", AttentionShape(batch: 2, queryLength: 0, keyLength: 9, queryHeads: 2, keyValueHeads: 2, headDim: 8), AttentionOptions()),
]

@Suite struct AttentionKernelTests {
    @Test(arguments: 0..<forwardCases.count)
    func flashForwardMatchesNaive(_ index: Int) {
        let (name, shape, options) = forwardCases[index]
        let x = AttentionInputs(shape, seed: UInt64(index) * 17 + 1)
        let fast = flashForward(x, options)
        let ref = naiveForward(x, options)
        expectClose(fast.o, ref.o, tolerance: 1e-5, "\(name): output")
        expectCloseLogSumExp(fast.lse, ref.lse, "\(name): lse")
    }

    @Test(arguments: 0..<forwardCases.count)
    func flashBackwardMatchesNaive(_ index: Int) {
        let (name, shape, options) = forwardCases[index]
        let x = AttentionInputs(shape, seed: UInt64(index) * 17 + 1)
        let fast = flashBackward(x, options)
        let ref = naiveBackward(x, options)
        expectClose(fast.dq, ref.dq, tolerance: 1e-5, "\(name): dq")
        expectClose(fast.dk, ref.dk, tolerance: 1e-5, "\(name): dk")
        expectClose(fast.dv, ref.dv, tolerance: 1e-5, "\(name): dv")
    }
}

// MARK: - Decode against the KV cache

/// Rows t0..<t1 of a [B, T, H, w] array as a packed [B, t1 − t0, H, w] array.
func timeSlice(_ x: [Float], batch: Int, length: Int, heads: Int, width: Int, _ t0: Int, _ t1: Int) -> [Float] {
    var out: [Float] = []
    out.reserveCapacity(batch * (t1 - t0) * heads * width)
    for b in 0..<batch {
        let start = (b * length + t0) * heads * width
        out += x[start ..< start + (t1 - t0) * heads * width]
    }
    return out
}

/// Decodes the sequence in the given chunk sizes (appending each chunk, then attending its queries)
/// and returns the outputs reassembled as [B, T, Hq, dv].
func decodeInChunks(_ x: AttentionInputs, _ options: AttentionOptions, chunks: [Int]) -> [Float] {
    let s = x.shape
    var cache = AttentionKVCache(batch: s.batch, keyValueHeads: s.keyValueHeads, headDim: s.headDim, valueDim: s.valueDim)
    var out = [Float](repeating: .nan, count: s.outputCount)
    var t0 = 0
    for n in chunks {
        let t1 = t0 + n
        let k = timeSlice(x.k, batch: s.batch, length: s.keyLength, heads: s.keyValueHeads, width: s.headDim, t0, t1)
        let v = timeSlice(x.v, batch: s.batch, length: s.keyLength, heads: s.keyValueHeads, width: s.valueDim, t0, t1)
        let q = timeSlice(x.q, batch: s.batch, length: s.queryLength, heads: s.queryHeads, width: s.headDim, t0, t1)
        cache.append(keys: k, values: v, count: n)
        var o = [Float](repeating: .nan, count: s.batch * n * s.queryHeads * s.valueDim)
        attentionDecode(q: q, queryLength: n, queryHeads: s.queryHeads, cache: cache, options: options, output: &o)
        for b in 0..<s.batch {
            for t in 0..<n {
                for i in 0..<(s.queryHeads * s.valueDim) {
                    out[((b * s.queryLength + t0 + t) * s.queryHeads) * s.valueDim + i] = o[((b * n + t) * s.queryHeads) * s.valueDim + i]
                }
            }
        }
        t0 = t1
    }
    return out
}

let decodeCases: [(String, AttentionShape, AttentionOptions)] = [
    ("MHA", AttentionShape(batch: 1, queryLength: 150, keyLength: 150, queryHeads: 2, keyValueHeads: 2, headDim: 32), AttentionOptions()),
    ("GQA B=2 dv≠d", AttentionShape(batch: 2, queryLength: 131, keyLength: 131, queryHeads: 4, keyValueHeads: 1, headDim: 16, valueDim: 24), AttentionOptions()),
    ("window softcap", AttentionShape(batch: 1, queryLength: 200, keyLength: 200, queryHeads: 2, keyValueHeads: 1, headDim: 64), AttentionOptions(windowLeft: 50, softcap: 4)),
]

extension AttentionKernelTests {
    @Test(arguments: 0..<decodeCases.count)
    func decodeMatchesParallel(_ index: Int) {
        let (name, shape, options) = decodeCases[index]
        let x = AttentionInputs(shape, seed: 100 + UInt64(index))
        let ref = naiveForward(x, options).o
        let T = shape.queryLength
        let parallel = flashForward(x, options).o
        expectClose(parallel, ref, "\(name): parallel")
        expectClose(decodeInChunks(x, options, chunks: Array(repeating: 1, count: T)), ref, "\(name): step by step")
        expectClose(decodeInChunks(x, options, chunks: [70] + Array(repeating: 1, count: T - 70)), ref, "\(name): prefill 70 then steps")
        expectClose(decodeInChunks(x, options, chunks: [65, T - 65]), ref, "\(name): two-chunk prefill")
        expectClose(decodeInChunks(x, options, chunks: [T]), ref, "\(name): one-chunk prefill")
    }

    @Test func decodeOneTokenAgainstLongCacheSplitsKeys() {
        // One query against 5000 keys: the forward splits the keys into parts and merges them.
        let shape = AttentionShape(batch: 1, queryLength: 1, keyLength: 5000, queryHeads: 2, keyValueHeads: 1, headDim: 64)
        let x = AttentionInputs(shape, seed: 9)
        for options in [AttentionOptions(), AttentionOptions(windowLeft: 3000)] {
            var cache = AttentionKVCache(batch: 1, keyValueHeads: 1, headDim: 64)
            cache.append(keys: x.k, values: x.v, count: 5000)
            var o = [Float](repeating: .nan, count: shape.outputCount), lse = [Float](repeating: .nan, count: 2)
            attentionDecode(q: x.q, queryLength: 1, queryHeads: 2, cache: cache, options: options, output: &o, logSumExp: &lse)
            let ref = naiveForward(x, options)
            expectClose(o, ref.o, "output")
            expectClose(lse, ref.lse, "lse")
        }
    }

    @Test func cacheBytesMatchAnalyticSize() {
        for length in [1, 17, 64, 1000] {
            for (batch, heads, d, dv) in [(1, 1, 64, 64), (2, 3, 16, 24)] {
                var cache = AttentionKVCache(batch: batch, keyValueHeads: heads, headDim: d, valueDim: dv)
                let k = [Float](repeating: 1, count: batch * length * heads * d), v = [Float](repeating: 1, count: batch * length * heads * dv)
                cache.append(keys: k, values: v, count: length)
                #expect(cache.byteCount == AttentionKVCache.byteCount(length: length, batch: batch, keyValueHeads: heads, headDim: d, valueDim: dv))
            }
        }
    }

    @Test func cacheCopiesAreIndependent() {
        let shape = AttentionShape(batch: 1, queryLength: 10, keyLength: 10, queryHeads: 1, keyValueHeads: 1, headDim: 16)
        let x = AttentionInputs(shape, seed: 3)
        var cache = AttentionKVCache(batch: 1, keyValueHeads: 1, headDim: 16)
        cache.append(keys: Array(x.k[0..<80]), values: Array(x.v[0..<80]), count: 5)
        var before = [Float](repeating: 0, count: 16), after = before
        attentionDecode(q: Array(x.q[64..<80]), queryLength: 1, queryHeads: 1, cache: cache, output: &before)
        // The copy shares the partly filled page; appending to it must copy that page first.
        var copy = cache
        copy.append(keys: Array(x.k[80..<160]), values: Array(x.v[80..<160]), count: 5)
        #expect(cache.length == 5 && copy.length == 10)
        attentionDecode(q: Array(x.q[64..<80]), queryLength: 1, queryHeads: 1, cache: cache, output: &after)
        #expect(before == after)
    }
}

// MARK: - Finite differences, causality

/// L(q, k, v) = Σ o · dO with the naive kernel in Double.
func naiveLoss(_ q: [Double], _ k: [Double], _ v: [Double], _ dO: [Double], _ shape: AttentionShape, _ options: AttentionOptions) -> Double {
    var o = [Double](repeating: 0, count: shape.outputCount), lse = [Double](repeating: 0, count: shape.logSumExpCount)
    naiveAttentionForward(q: q, k: k, v: v, shape: shape, options: options, output: &o, logSumExp: &lse)
    return zip(o, dO).reduce(0) { $0 + $1.0 * $1.1 }
}

let finiteDifferenceCases: [(String, AttentionShape, AttentionOptions)] = [
    ("causal GQA", AttentionShape(batch: 1, queryLength: 5, keyLength: 5, queryHeads: 2, keyValueHeads: 1, headDim: 4, valueDim: 3), AttentionOptions()),
    ("Tq<Tk window softcap", AttentionShape(batch: 2, queryLength: 3, keyLength: 7, queryHeads: 1, keyValueHeads: 1, headDim: 5), AttentionOptions(windowLeft: 3, softcap: 2, scale: 0.7)),
    ("noncausal local", AttentionShape(batch: 1, queryLength: 6, keyLength: 6, queryHeads: 2, keyValueHeads: 2, headDim: 3), AttentionOptions(causal: false, windowLeft: 2, windowRight: 1)),
]

extension AttentionKernelTests {
    @Test(arguments: 0..<finiteDifferenceCases.count)
    func backwardMatchesFiniteDifferences(_ index: Int) {
        let (name, shape, options) = finiteDifferenceCases[index]
        let x = AttentionInputs(shape, seed: 50 + UInt64(index))
        let fast = flashBackward(x, options)
        let (q, k, v, dO) = (x.q.map(Double.init), x.k.map(Double.init), x.v.map(Double.init), x.dO.map(Double.init))
        let h = 1e-6
        func numeric(_ which: Int) -> [Double] {
            let base = [q, k, v][which]
            return base.indices.map { i in
                var plus = [q, k, v], minus = [q, k, v]
                plus[which][i] += h; minus[which][i] -= h
                return (naiveLoss(plus[0], plus[1], plus[2], dO, shape, options) - naiveLoss(minus[0], minus[1], minus[2], dO, shape, options)) / (2 * h)
            }
        }
        expectClose(fast.dq, numeric(0), tolerance: 1e-5, "\(name): dq vs finite differences")
        expectClose(fast.dk, numeric(1), tolerance: 1e-5, "\(name): dk vs finite differences")
        expectClose(fast.dv, numeric(2), tolerance: 1e-5, "\(name): dv vs finite differences")
        // And the naive backward (the spec) against the same differences, tightly.
        let ref = naiveBackward(x, options)
        expectClose(ref.dq, numeric(0), tolerance: 1e-7, "\(name): naive dq vs finite differences")
        expectClose(ref.dk, numeric(1), tolerance: 1e-7, "\(name): naive dk vs finite differences")
    }

    @Test func outputsUpToTDoNotSeeLaterTokens() {
        let shape = AttentionShape(batch: 1, queryLength: 300, keyLength: 300, queryHeads: 2, keyValueHeads: 1, headDim: 32)
        let x = AttentionInputs(shape, seed: 77)
        let cut = 137
        let changed = AttentionInputs(shape: shape, q: x.q.enumerated().map { ($0.offset / (2 * 32)) > cut ? $0.element + 3 : $0.element },
                                  k: x.k.enumerated().map { ($0.offset / 32) > cut ? -$0.element : $0.element },
                                  v: x.v.enumerated().map { ($0.offset / 32) > cut ? $0.element * 5 : $0.element }, dO: x.dO)
        let a = flashForward(x, AttentionOptions()).o, b = flashForward(changed, AttentionOptions()).o
        let prefix = (cut + 1) * 2 * 32
        #expect(Array(a[0..<prefix]) == Array(b[0..<prefix]))
        #expect(Array(a[prefix...]) != Array(b[prefix...]))
    }
}

// MARK: - Golden vectors (Fixtures/golden_attention.py, NumPy float64)

extension AttentionKernelTests {
    @Test(arguments: ["causal_gqa", "cross_window_softcap", "noncausal_local", "more_queries_than_keys"])
    func goldenVectors(_ name: String) throws {
        let url = try #require(Bundle.module.url(forResource: "golden_attention", withExtension: "json", subdirectory: "Fixtures"))
        let golden = try GoldenFixture(contentsOf: url)
        let (q, k, v) = (golden["\(name).q"], golden["\(name).k"], golden["\(name).v"])
        let shape = AttentionShape(batch: q.shape[0], queryLength: q.shape[1], keyLength: k.shape[1], queryHeads: q.shape[2],
                                   keyValueHeads: k.shape[2], headDim: q.shape[3], valueDim: v.shape[3])
        let left = golden.scalar("\(name).window_left"), right = golden.scalar("\(name).window_right")
        let options = AttentionOptions(causal: golden.scalar("\(name).causal") == 1,
                                       windowLeft: left < 0 ? nil : Int(left), windowRight: right < 0 ? nil : Int(right),
                                       softcap: Float(golden.scalar("\(name).softcap")), scale: Float(golden.scalar("\(name).scale")))
        let x = AttentionInputs(shape: shape, q: q.floats, k: k.floats, v: v.floats, dO: golden["\(name).dO"].floats)
        // The fixture's inputs are float64; the kernels see them rounded to Float32, which moves
        // the outputs by ~1e-7 relative: well inside the tolerance.
        let fast = flashForward(x, options)
        expectClose(fast.o, golden["\(name).o"].data, "\(name): output")
        expectCloseLogSumExp(fast.lse, golden["\(name).lse"].data.map { $0 < -1e299 ? -.infinity : $0 }, "\(name): lse")
        let grads = flashBackward(x, options)
        expectClose(grads.dq, golden["\(name).dq"].data, "\(name): dq")
        expectClose(grads.dk, golden["\(name).dk"].data, "\(name): dk")
        expectClose(grads.dv, golden["\(name).dv"].data, "\(name): dv")
        if shape.queryLength == shape.keyLength && options.causal {   // decoding cannot see future keys
            expectClose(decodeInChunks(x, options, chunks: Array(repeating: 1, count: shape.queryLength)), golden["\(name).o"].data,
                        "\(name): step-by-step decode")
        }
    }
}

// MARK: - The public block routine over a chosen set of key panels (as sparse attention uses it)

extension AttentionKernelTests {
    @Test func attendRowBlockOverSelectedPanels() {
        // 2 query heads sharing 1 KV head, 5 query positions at the end of 400 keys; attend only
        // to panels 0, 2, 3 and 5 (keys 0..<64, 128..<256, 320..<384), causally.
        let shape = AttentionShape(batch: 1, queryLength: 5, keyLength: 400, queryHeads: 2, keyValueHeads: 1, headDim: 24, valueDim: 40)
        let x = AttentionInputs(shape, seed: 21)
        let options = AttentionOptions(softcap: 3)
        let panelList = [0, 2, 3, 5]
        let rows = shape.queryLength * shape.groupSize
        let packed = PackedAttentionPanels(k: x.k, v: x.v, shape: shape)
        let queryScale = attentionQueryScale(options: options, headDim: shape.headDim)
        let queries = x.q.map { $0 * queryScale }          // rows (t, g) are already t-major in q [1, 5, 2, 24]
        var output = [Float](repeating: 0, count: rows * 48), rowMax = [Float](repeating: 0, count: rows)
        var rowSum = rowMax, scores = [Float](repeating: 0, count: attentionScoreScratchCount)
        var o = [Float](repeating: .nan, count: rows * 40), lse = [Float](repeating: .nan, count: rows)
        output.withUnsafeMutableBufferPointer { op in
            rowMax.withUnsafeMutableBufferPointer { mp in
                rowSum.withUnsafeMutableBufferPointer { sp in
                    let state = AttentionRowState(output: op.baseAddress!, rowMax: mp.baseAddress!, rowSum: sp.baseAddress!, rows: rows, valueDim: 40)
                    state.reset()
                    packed.withPanels { panels in
                        panelList.withUnsafeBufferPointer { list in
                            attendRowBlock(queries: queries, state: state, scores: &scores,
                                           visibility: AttentionRowVisibility(mask: AttentionMask(options: options, keyLength: 400), firstRow: 0,
                                                                              rowsPerPosition: 2, positionOffset: 395),
                                           panels: panels, group: 0, panelList: list, softcap: options.softcap)
                        }
                    }
                    o.withUnsafeMutableBufferPointer { ob in
                        lse.withUnsafeMutableBufferPointer { lb in
                            state.finish { i in (ob.baseAddress! + i * 40, lb.baseAddress! + i) }
                        }
                    }
                }
            }
        }
        // Reference in Double over the selected keys only.
        let selected = panelList.flatMap { p in (p * 64)..<min(400, p * 64 + 64) }
        var refO = [Double](), refLse = [Double]()
        let scale = 1 / Double(24).squareRoot()
        for row in 0..<rows {
            let t = row / 2
            let keys = selected.filter { $0 <= 395 + t }
            let scores = keys.map { j -> Double in
                var dot = 0.0
                for c in 0..<24 { dot += Double(x.q[row * 24 + c]) * Double(x.k[j * 24 + c]) }
                return 3 * tanh(scale * dot / 3)
            }
            let m = scores.max()!
            let weights = scores.map { exp($0 - m) }
            let total = weights.reduce(0, +)
            refLse.append(m + log(total))
            for c in 0..<40 { refO.append(zip(keys, weights).reduce(0) { $0 + $1.1 * Double(x.v[$1.0 * 40 + c]) } / total) }
        }
        expectClose(o, refO, "output over selected panels")
        expectClose(lse, refLse, "lse over selected panels")
    }
}
