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
