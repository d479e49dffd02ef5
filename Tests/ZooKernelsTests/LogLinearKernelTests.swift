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
