import Foundation
import XCTest
import ZooTensor
import ZooAutograd
import ZooKernels
import ZooMixers
import ZooTestSupport

// XCTest rather than Swift Testing: the tape's switches are process-wide, so layer tests must not
// run in parallel with other tape users (XCTest runs them one at a time, before Swift Testing).

private let dModel = 32

private func makeMixer(_ config: NSAMixerConfig, seed: UInt64 = 1) -> NSAMixer {
    var g = SeededGenerator(seed: seed)
    let mixer = NSAMixer(config, context: MixerContext(dModel: dModel, layerCount: 2), generator: &g)
    // At the 0.02-std initialisation φ_K maps every block to nearly the same key, so the compressed
    // softmax is almost flat and the gradients of the key-compression path are ~1e-7 — below what
    // Float32 finite differences resolve. Larger φ_K weights make compressed keys differ.
    if let phi = mixer.keyCompressor {
        phi.fc1.weight.value = phi.fc1.weight.value * 8
        phi.fc2.weight.value = phi.fc2.weight.value * 25
        phi.position.value = phi.position.value * 10
    }
    return mixer
}

private func input(batch: Int, length: Int, seed: UInt64 = 2) -> Tensor {
    var g = SeededGenerator(seed: seed)
    // Larger than the 0.02-std weights would give, so the compressed attention is far from
    // uniform and the block choice has no near-ties.
    return Tensor.normal([batch, length, dModel], std: 3, generator: &g)
}

/// Sizes small enough that a 75-token sequence exercises every branch: overlapping compression
/// blocks, a real top-n choice (n = 4 of up to 10 blocks), a window shorter than T.
private func small(_ c: NSAMixerConfig) -> NSAMixerConfig {
    var c = c
    c.compressBlock = 4; c.compressStride = 2; c.selectBlock = 8; c.selectCount = 4; c.window = 12
    return c
}

private let configs: [(String, NSAMixerConfig)] = [
    ("MLP φ, own K/V per branch", small(NSAMixerConfig(heads: 4, kvHeads: 1))),
    ("GQA 4/2, shared K/V, mean φ", small(NSAMixerConfig(heads: 4, kvHeads: 2, compression: .mean, sharedKV: true))),
    ("indicator Eq. 9, no rotary, head_dim 6", small(NSAMixerConfig(heads: 2, kvHeads: 2, headDim: 6, rotary: false, scoreRule: .indicator))),
    ("naive kernel", small(NSAMixerConfig(heads: 2, kvHeads: 1, kernel: .naive))),
]

final class NSAMixerTests: XCTestCase {
    func testParallelEqualsRecurrent() {
        for (name, config) in configs {
            let errors = MixerContract.parallelVersusRecurrent(makeMixer(config), x: input(batch: 2, length: 75), prefix: 33)
            XCTAssertLessThan(errors.steps, 1e-5, "\(name): T single steps")
            XCTAssertLessThan(errors.prefillThenSteps, 1e-5, "\(name): prefill then steps")
            XCTAssertLessThan(errors.twoChunks, 1e-5, "\(name): two-chunk prefill")
        }
    }

    func testCausal() {
        for (name, config) in configs {
            for t in [5, 17, 50] {
                let violation = MixerContract.causalityViolation(makeMixer(config), x: input(batch: 1, length: 64), at: t)
                XCTAssertEqual(violation, 0, "\(name): y[..\(t)] moved when x[\(t + 1)...] changed")
            }
        }
    }

    func testStateBytesMatchAnalyticSize() {
        for (name, config) in configs + [("defaults", NSAMixerConfig())] {
            let mixer = makeMixer(config)
            for length in [1, 17, 64, 1000] {
                let measured = MixerContract.measuredStateBytes(mixer, batch: 2, length: length, dModel: dModel)
                XCTAssertEqual(measured, config.stateBytes(batch: 2, length: length, dModel: dModel), "\(name), T=\(length)")
            }
        }
    }

    /// The layer's read meter with the paper's sizes: tokens read per decoded token are
    /// ⌊(t − l)/d⌋ + 1 + n·l′ + w, 4.0×, 6.4×, 9.1×, 11.6× fewer than full attention at 8k–64k
    /// (the paper's expected decode speed-ups); bytes are those tokens' keys and values.
    func testDecodeReadMeterReproducesPaperRatios() {
        let config = NSAMixerConfig(heads: 2, kvHeads: 1, headDim: 4, compressHidden: 4)
        var g = SeededGenerator(seed: 7)
        let mixer = NSAMixer(config, context: MixerContext(dModel: 8), generator: &g)
        var state = mixer.initialState(batch: 1)
        for (t, paper) in [(8192, "4.0"), (16384, "6.4"), (32768, "9.1"), (65536, "11.6")] {
            _ = mixer.step(Tensor.normal([1, t - 1 - state.position, 8], generator: &g), state: &state)   // prefill
            _ = mixer.step(Tensor.normal([1, 1, 8], generator: &g), state: &state)                        // decode token t
            let o = config.options
            let formula = (t - o.compressBlock) / o.compressStride + 1 + o.selectCount * o.selectBlock + o.window
            XCTAssertEqual(state.position, t)
            XCTAssertEqual(state.tokensReadLastStep, formula, "t = \(t)")
            XCTAssertEqual(state.bytesReadLastStep, formula * 2 * 4 * 4, "t = \(t): keys and values of 1 kv head × 4 dims")
            XCTAssertEqual(String(format: "%.1f", Double(t) / Double(state.tokensReadLastStep)), paper, "t = \(t)")
            XCTAssertEqual(state.lastSelection.filter { $0 >= 0 }.count, o.selectCount)
            XCTAssertEqual(state.byteCount, config.stateBytes(batch: 1, length: t, dModel: 8))
        }
    }

    func testLayerGradients() {
        for (name, config) in configs {
            // The block choice held fixed: the top-n step has no gradient, and a finite-difference
            // step that flips it measures a jump, not a slope.
            var mixer = makeMixer(config)
            let x = input(batch: 1, length: 29)
            mixer.fixedSelection = mixer.blockSelection(x)
            let errors = MixerContract.layerGradientError(mixer, x: x)
            XCTAssertFalse(errors.isEmpty)
            // The key-compression path (k_cmp_proj, φ_K) has the smallest gradients of the layer; per
            // coordinate, Float32 differences sit at 2–60 % noise for any step (measured), so
            // `testKeyCompressionGradientAlongADirection` checks that group along a direction.
            for (parameter, error) in errors.sorted(by: { $0.key < $1.key })
            where !(parameter.hasPrefix("phi_k") || parameter == "k_cmp_proj.weight") {
                XCTAssertLessThan(error, 2e-2, "\(name): \(parameter)")
            }
            // φ_K's output bias shifts all compressed keys alike, invisible to every softmax: its
            // gradient is 0 up to round-off.
            if let bias = mixer.keyCompressor?.fc2.bias, let grad = bias.grad {
                XCTAssertLessThan(maxAbsError(grad.doubles, [Double](repeating: 0, count: grad.count)), 1e-5, "\(name): phi_k.fc2.bias")
            }
        }
    }

    /// Directional derivative of L = Σ w·y along one random direction over all key-compression
    /// parameters at once (k_cmp_proj and φ_K), block choice fixed: √N more signal than
    /// per-coordinate differences for the path whose gradients are smallest.
    func testKeyCompressionGradientAlongADirection() {
        for (name, config) in configs where config.compression == .mlp {
            var mixer = makeMixer(config)
            let x = input(batch: 1, length: 40)
            mixer.fixedSelection = mixer.blockSelection(x)
            var g = SeededGenerator(seed: 12)
            let params = mixer.namedParameters().filter { $0.name.hasPrefix("phi_k") || $0.name == "k_cmp_proj.weight" }
            XCTAssertEqual(params.count, 6, name)
            for p in mixer.namedParameters() { p.variable.zeroGrad() }
            let y = mixer(Variable(x))
            let w = Tensor.normal(y.shape, generator: &g)
            y.backward(gradient: w)
            let directions = params.map { Tensor.normal($0.variable.shape, generator: &g) }
            var analytic = 0.0
            for (p, d) in zip(params, directions) { analytic += zip(p.variable.grad!.doubles, d.doubles).reduce(0) { $0 + $1.0 * $1.1 } }
            func loss(_ h: Float) -> Double {
                let saved = params.map { $0.variable.value }
                for (p, d) in zip(params, directions) { p.variable.value = p.variable.value + d * h }
                defer { for (p, v) in zip(params, saved) { p.variable.value = v } }
                let out = withNoGrad { mixer(Variable(x)).value }
                return zip(out.doubles, w.doubles).reduce(0) { $0 + $1.0 * $1.1 }
            }
            // Fourth-order central difference: the h² curvature term cancels, so the step can be
            // large enough (1e-2) that the Float32 round-off of the forward (~1e-7 of each output,
            // divided by h) stays far below the tolerance. A second-order difference had to sit
            // between noise (h = 1e-3) and curvature (h = 1e-2) and passed by a fraction of a percent
            // or failed by one, depending on the round-off of the projections.
            let h: Float = 1e-2
            let numeric = (8 * (loss(h) - loss(-h)) - (loss(2 * h) - loss(-2 * h))) / (12 * Double(h))
            XCTAssertLessThan(abs(numeric - analytic) / abs(analytic), 1e-2, "\(name): analytic \(analytic), numeric \(numeric)")
        }
    }

    func testFastAndNaiveLayersAgree() {
        let fast = makeMixer(small(NSAMixerConfig(heads: 4, kvHeads: 2)))
        let naive = makeMixer(small(NSAMixerConfig(heads: 4, kvHeads: 2, kernel: .naive)))
        let x = input(batch: 2, length: 70)
        var g = SeededGenerator(seed: 4)
        let w = Tensor.normal([2, 70, dModel], generator: &g)
        var outputs: [Tensor] = [], grads: [[Tensor?]] = []
        for mixer in [fast, naive] {
            let xv = Variable(x, requiresGrad: true)
            let y = mixer(xv)
            y.backward(gradient: w)
            outputs.append(y.value)
            grads.append([xv.grad] + mixer.namedParameters().map { $0.variable.grad })
        }
        XCTAssertLessThan(relativeError(outputs[0], outputs[1]), 1e-5, "output")
        let names = ["input"] + fast.namedParameters().map(\.name)
        for (i, (a, b)) in zip(grads[0], grads[1]).enumerated() {
            guard let a, let b else { XCTFail("missing gradient \(names[i])"); continue }
            // φ_K's output bias shifts every compressed key alike, which no softmax sees: its true
            // gradient is 0, so only an absolute comparison means anything there.
            if maxAbsError(b.doubles, [Double](repeating: 0, count: b.count)) < 1e-7 {
                XCTAssertLessThan(maxAbsError(a.doubles, b.doubles), 1e-7, "gradient \(names[i]) (≈ 0)")
            } else {
                XCTAssertLessThan(relativeError(a, b), 1e-5, "gradient \(names[i])")
            }
        }
    }

    func testConfigDecodesFromSnakeCaseKeysAndValidates() throws {
        let json = #"{"type": "nsa", "heads": 8, "kv_heads": 2, "head_dim": 16, "rotary_theta": 500000, "compress_block": 16, "compress_stride": 8, "select_block": 32, "select_count": 8, "window": 128, "initial_blocks": 2, "local_blocks": 1, "score_rule": "indicator", "compression": "mean", "compress_hidden": 24, "shared_kv": true, "kernel": "naive"}"#
        let decoded = try JSONDecoder().decode(AnyMixerConfig.self, from: Data(json.utf8))
        let config = try XCTUnwrap(decoded.config as? NSAMixerConfig)
        XCTAssertEqual(config, NSAMixerConfig(heads: 8, kvHeads: 2, headDim: 16, rotaryTheta: 500_000, compressBlock: 16, compressStride: 8,
                                              selectBlock: 32, selectCount: 8, window: 128, initialBlocks: 2, localBlocks: 1,
                                              scoreRule: .indicator, compression: .mean, compressHidden: 24, sharedKV: true, kernel: .naive))
        XCTAssertEqual(Set(NSAMixerConfig.keyReference.map(\.key)), Set(["heads", "kv_heads", "head_dim", "rotary", "rotary_theta", "compress_block",
            "compress_stride", "select_block", "select_count", "window", "initial_blocks", "local_blocks", "score_rule", "compression",
            "compress_hidden", "shared_kv", "kernel"]))
        let defaults = try JSONDecoder().decode(AnyMixerConfig.self, from: Data(#""nsa""#.utf8))
        XCTAssertEqual(defaults.config as? NSAMixerConfig, NSAMixerConfig())
        XCTAssertEqual(NSAMixerConfig().options, NSAOptions())
        XCTAssertThrowsError(try NSAMixerConfig(heads: 3, kvHeads: 2).validate(dModel: 48))
        XCTAssertThrowsError(try NSAMixerConfig(heads: 5).validate(dModel: 32))
        XCTAssertThrowsError(try NSAMixerConfig(selectCount: 2).validate(dModel: 32))
        XCTAssertThrowsError(try NSAMixerConfig(compressStride: 0).validate(dModel: 32))
        XCTAssertThrowsError(try NSAMixerConfig(headDim: 7).validate(dModel: 32))
        let roundTrip = try JSONDecoder().decode(AnyMixerConfig.self, from: JSONEncoder().encode(decoded))
        XCTAssertEqual(roundTrip.config as? NSAMixerConfig, config)
    }
}
