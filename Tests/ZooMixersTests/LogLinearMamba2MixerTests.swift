import Foundation
import XCTest
import ZooTensor
import ZooAutograd
import ZooKernels
import ZooMixers
import ZooTestSupport

// XCTest rather than Swift Testing: the tape's switches are process-wide, so layer tests run one
// at a time (as the other mixers' tests).

private let dModel = 32

private func makeMixer(_ config: LogLinearMamba2MixerConfig, seed: UInt64 = 1) -> LogLinearMamba2Mixer {
    var g = SeededGenerator(seed: seed)
    return LogLinearMamba2Mixer(config, context: MixerContext(dModel: dModel, layerCount: 2), generator: &g)
}

private func input(batch: Int, length: Int, seed: UInt64 = 2) -> Tensor {
    var g = SeededGenerator(seed: seed)
    return Tensor.normal([batch, length, dModel], std: 3, generator: &g)
}

private let configs: [(String, LogLinearMamba2MixerConfig)] = [
    ("4 heads of 16, N=16, Q=16, softplus", LogLinearMamba2MixerConfig(mamba2: Mamba2MixerConfig(dState: 16, headDim: 16, chunk: 16), levels: 12)),
    ("2 groups, N=8, Q=8, conv 3, sigmoid", LogLinearMamba2MixerConfig(
        mamba2: Mamba2MixerConfig(dState: 8, headDim: 16, ngroups: 2, chunk: 8, convKernel: 3), levels: 11, lambda: .sigmoid)),
    ("2 heads of 32, N=12, Q=64, exp", LogLinearMamba2MixerConfig(mamba2: Mamba2MixerConfig(dState: 12, headDim: 32, chunk: 64), lambda: .exp)),
]

final class LogLinearMamba2MixerTests: XCTestCase {
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
            let violation = MixerContract.causalityViolation(makeMixer(config), x: input(batch: 1, length: 40), at: 17)
            XCTAssertEqual(violation, 0, "\(name): y[..17] moved when x[18...] changed")
        }
    }

    /// Measured bytes equal the analytic size and grow as ⌈log₂ T⌉ + 1 levels.
    func testStateBytesMatchAnalyticSizeAndGrowLogarithmically() {
        for (name, config) in configs {
            let mixer = makeMixer(config)
            var previous = 0
            for length in [1, 17, 64, 1000] {
                let measured = MixerContract.measuredStateBytes(mixer, batch: 2, length: length, dModel: dModel)
                XCTAssertEqual(measured, config.stateBytes(batch: 2, length: length, dModel: dModel), "\(name), T=\(length)")
                XCTAssertGreaterThan(measured, previous, "\(name): the state grows with T")
                previous = measured
            }
        }
        // conv [2, 64 + 2·16, 3] + 11 levels (T = 1000) of [2, 4, 16, 16], Float32.
        XCTAssertEqual(configs[0].1.stateBytes(batch: 2, length: 1000, dModel: dModel), (2 * 96 * 3 + 11 * 2 * 4 * 16 * 16) * 4)
        XCTAssertEqual(configs[0].1.stateBytes(batch: 2, length: 1024, dModel: dModel) - configs[0].1.stateBytes(batch: 2, length: 513, dModel: dModel), 0)
    }

    func testDecodeStateHasOnePlusPopcountLevels() {
        let mixer = makeMixer(configs[0].1)
        var state = mixer.initialState(batch: 1)
        let x = input(batch: 1, length: 40)
        for t in 0..<40 {
            _ = mixer.step(x.slice(axis: 1, t..<(t + 1)), state: &state)
            for h in 0..<mixer.mamba2.heads {
                XCTAssertEqual(state.levels.nonEmptyLevelCount(batch: 0, head: h), 1 + t.nonzeroBitCount, "after token \(t), head \(h)")
            }
            XCTAssertEqual(state.bytesReadLastStep, state.conv.byteCount + (1 + t.nonzeroBitCount) * mixer.mamba2.heads * 16 * 16 * 4)
        }
    }

    /// With λ ≡ 1 the layer is the Mamba-2 layer with the same weights.
    func testUnitLevelWeightsGiveMamba2() {
        let base = Mamba2MixerConfig(dState: 16, headDim: 16, ngroups: 2, chunk: 16)
        let logLinear = makeMixer(LogLinearMamba2MixerConfig(mamba2: base, lambda: .ones), seed: 7)
        var g = SeededGenerator(seed: 7)
        let mamba2 = Mamba2Mixer(base, context: MixerContext(dModel: dModel, layerCount: 2), generator: &g)
        let x = input(batch: 2, length: 50)
        let (a, b) = withNoGrad { (logLinear(Variable(x)).value, mamba2(Variable(x)).value) }
        XCTAssertLessThan(relativeError(a, b), 1e-6)
        var s1 = logLinear.initialState(batch: 2), s2 = mamba2.initialState(batch: 2)
        let y1 = logLinear.step(x.slice(axis: 1, 0..<20), state: &s1), y2 = mamba2.step(x.slice(axis: 1, 0..<20), state: &s2)
        XCTAssertLessThan(relativeError(y1, y2), 1e-6)
        XCTAssertEqual(Set(logLinear.namedParameters().map(\.name)), Set(mamba2.namedParameters().map(\.name)))
    }

    func testLayerGradients() {
        for (name, base) in configs {
            // Δ from [0.05, 0.5] so that A_log and dt_bias move the loss well above Float32 noise
            // (as the Mamba-2 mixer's test).
            // levels = ⌈log₂ 23⌉ + 1 so every level_scale / in_proj_levels column is used (unused
            // levels have gradient 0, where Float32 central differences are pure noise).
            var config = base
            config.mamba2.dtMin = 0.05
            config.mamba2.dtMax = 0.5
            config.levels = logLinearLevelCount(tokens: 23)
            let mixer = makeMixer(config), x = input(batch: 1, length: 23)
            var errors = MixerContract.layerGradientError(mixer, x: x)
            XCTAssertEqual(Set(errors.keys), Set(["input", "in_proj.weight", "conv1d.weight", "conv1d.bias", "A_log", "dt_bias", "D",
                                                  "norm.weight", "out_proj.weight", "in_proj_levels.weight", "level_scale"]), name)
            // L's gradients are 1e-6…1e-3 here (dl is small at initialisation): at step 1e-2 the
            // Float32 loss differences are rounding noise (measured 9% off), at step 0.1 they agree
            // to ~1% (λ is smooth in L).
            errors["level_scale"] = MixerContract.layerGradientError(mixer, x: x, step: 0.1)["level_scale"]
            for (parameter, error) in errors.sorted(by: { $0.key < $1.key }) {
                XCTAssertLessThan(error, 2e-2, "\(name): \(parameter)")
            }
        }
    }

    func testLevelScaleStartsAtOnes() {
        let mixer = makeMixer(configs[0].1)
        XCTAssertEqual(mixer.levelScale?.value.shape, [4, 12])
        XCTAssertEqual(mixer.levelScale?.value.scalars, [Float](repeating: 1, count: 48))
        XCTAssertEqual(mixer.levelProjection?.outFeatures, 4 * 12)
    }

    func testConfigDecodesFromSnakeCaseKeysAndValidates() throws {
        let json = #"{"type": "loglinear_mamba2", "d_state": 32, "head_dim": 16, "ngroups": 2, "expand": 3, "chunk": 32, "conv_kernel": 3, "dt_min": 0.01, "dt_max": 0.2, "levels": 9, "lambda": "sigmoid"}"#
        let decoded = try JSONDecoder().decode(AnyMixerConfig.self, from: Data(json.utf8))
        let config = try XCTUnwrap(decoded.config as? LogLinearMamba2MixerConfig)
        XCTAssertEqual(config, LogLinearMamba2MixerConfig(
            mamba2: Mamba2MixerConfig(dState: 32, headDim: 16, ngroups: 2, expand: 3, chunk: 32, convKernel: 3, dtMin: 0.01, dtMax: 0.2),
            levels: 9, lambda: .sigmoid))
        XCTAssertEqual(Set(LogLinearMamba2MixerConfig.keyReference.map(\.key)),
                       ["d_state", "head_dim", "ngroups", "expand", "chunk", "conv_kernel", "dt_min", "dt_max", "levels", "lambda"])
        XCTAssertEqual(try JSONDecoder().decode(AnyMixerConfig.self, from: Data(#""loglinear_mamba2""#.utf8)).config as? LogLinearMamba2MixerConfig,
                       LogLinearMamba2MixerConfig())
        XCTAssertThrowsError(try JSONDecoder().decode(AnyMixerConfig.self, from: Data(#"{"type": "loglinear_mamba2", "lambda": "tanh"}"#.utf8)))
        XCTAssertThrowsError(try LogLinearMamba2MixerConfig(mamba2: Mamba2MixerConfig(chunk: 48)).validate(dModel: 32))   // not a power of two
        XCTAssertThrowsError(try LogLinearMamba2MixerConfig(mamba2: Mamba2MixerConfig(), levels: 0).validate(dModel: 32))
        XCTAssertEqual(LogLinearMamba2MixerConfig(mamba2: Mamba2MixerConfig(), levels: 5).maximumLength(dModel: 32), 16)
        let roundTrip = try JSONDecoder().decode(AnyMixerConfig.self, from: JSONEncoder().encode(decoded))
        XCTAssertEqual(roundTrip.config as? LogLinearMamba2MixerConfig, config)
    }
}
