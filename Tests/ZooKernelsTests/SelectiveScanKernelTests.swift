import Testing
import Foundation
import ZooTensor
import ZooKernels
import ZooTestSupport

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

@Suite struct SelectiveScanKernelTests {
    @Test(arguments: [
        SelectiveScanShape(batch: 1, channels: 16, length: 64, stateSize: 16),
        SelectiveScanShape(batch: 2, channels: 40, length: 77, stateSize: 5, groups: 2),
        SelectiveScanShape(batch: 1, channels: 3, length: 1, stateSize: 3),
        SelectiveScanShape(batch: 2, channels: 48, length: 130, stateSize: 20, groups: 3),
    ])
    func forwardMatchesNaive(_ s: SelectiveScanShape) {
        for flags in [(true, true, true, true, true), (false, false, false, false, false), (true, false, true, true, false)] {
            let x = selectiveScanCase(s, seed: 7, z: flags.0, D: flags.1, bias: flags.2, softplus: flags.3, initialState: flags.4)
            let ref = selectiveScanNaive(SelectiveScanReferenceInputs(x))
            let fast = selectiveScanForward(x, options: SelectiveScanOptions(checkpointInterval: 32))
            expectClose(fast.out.doubles, ref.out, tolerance: 1e-5, "out \(s) \(flags)")
            expectClose(fast.finalState.doubles, ref.finalState, tolerance: 1e-5, "final state \(s) \(flags)")
        }
    }
}
