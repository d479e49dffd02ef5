import Foundation
import XCTest
import ZooTensor
import ZooAutograd
import ZooKernels
import ZooMixers
import ZooTestSupport

// XCTest rather than Swift Testing: the tape's switches are process-wide (see AttentionMixerTests),
// so layer tests run one at a time.

private let dModel = 32

private func makeMixer(_ config: Mamba2MixerConfig, seed: UInt64 = 1) -> Mamba2Mixer {
    var g = SeededGenerator(seed: seed)
    return Mamba2Mixer(config, context: MixerContext(dModel: dModel, layerCount: 2), generator: &g)
}

private func input(batch: Int, length: Int, seed: UInt64 = 2) -> Tensor {
    var g = SeededGenerator(seed: seed)
    return Tensor.normal([batch, length, dModel], std: 3, generator: &g)
}

private let configs: [(String, Mamba2MixerConfig)] = [
    ("4 heads of 16, N=16, Q=16", Mamba2MixerConfig(dState: 16, headDim: 16, chunk: 16)),
    ("2 groups, N=8, Q=8, conv 3", Mamba2MixerConfig(dState: 8, headDim: 16, ngroups: 2, chunk: 8, convKernel: 3)),
    ("2 heads of 32, N=12, Q=64", Mamba2MixerConfig(dState: 12, headDim: 32, expand: 2, chunk: 64)),
]

final class Mamba2MixerTests: XCTestCase {
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

    func testStateBytesMatchAnalyticSizeAndStayConstant() {
        for (name, config) in configs {
            let mixer = makeMixer(config)
            var sizes: Set<Int> = []
            for length in [1, 17, 64, 1000] {
                let measured = MixerContract.measuredStateBytes(mixer, batch: 2, length: length, dModel: dModel)
                XCTAssertEqual(measured, config.stateBytes(batch: 2, length: length, dModel: dModel), "\(name), T=\(length)")
                sizes.insert(measured)
            }
            XCTAssertEqual(sizes.count, 1, "\(name): the state must not grow with T")
        }
        // conv [2, 64 + 2·16, 3] + ssm [2, 4, 16, 16], Float32.
        XCTAssertEqual(configs[0].1.stateBytes(batch: 2, length: 5, dModel: dModel), (2 * 96 * 3 + 2 * 4 * 16 * 16) * 4)
    }

    func testLayerGradients() {
        for (name, base) in configs {
            // Δ drawn from [0.05, 0.5] instead of the default [0.001, 0.1]: with Δ ≈ 0.001 the decay
            // is ≈ 1 and the loss barely depends on A_log or dt_bias, so their Float32 central
            // differences are mostly rounding noise (measured 2–4e-2 against 0.6% here).
            var config = base
            config.dtMin = 0.05
            config.dtMax = 0.5
            let errors = MixerContract.layerGradientError(makeMixer(config), x: input(batch: 1, length: 23))
            XCTAssertEqual(Set(errors.keys), Set(["input", "in_proj.weight", "conv1d.weight", "conv1d.bias", "A_log", "dt_bias", "D",
                                                  "norm.weight", "out_proj.weight"]), name)
            for (parameter, error) in errors.sorted(by: { $0.key < $1.key }) {
                XCTAssertLessThan(error, 2e-2, "\(name): \(parameter)")
            }
        }
    }

    func testInitialisationFollowsMamba2() {
        let mixer = makeMixer(Mamba2MixerConfig(dState: 16, headDim: 8, chunk: 16))
        let a = mixer.logA.value.scalars.map { -Foundation.exp(Double($0)) }
        XCTAssertTrue(a.allSatisfy { $0 <= -1 && $0 >= -16 }, "A = −exp(A_log) in [−16, −1]: \(a)")
        let dt = mixer.dtBias.value.scalars.map { Foundation.log1p(Foundation.exp(Double($0))) }
        XCTAssertTrue(dt.allSatisfy { $0 >= 0.001 * 0.999 && $0 <= 0.1 * 1.001 }, "softplus(dt_bias) in [dt_min, dt_max]: \(dt)")
        XCTAssertEqual(mixer.skip.value.scalars, [Float](repeating: 1, count: mixer.heads))
        XCTAssertEqual(mixer.heads, 8)
        XCTAssertEqual(mixer.inputProjection.outFeatures, 2 * 64 + 2 * 16 + 8)
    }

    func testConfigDecodesFromSnakeCaseKeysAndValidates() throws {
        let json = #"{"type": "mamba2", "d_state": 32, "head_dim": 16, "ngroups": 2, "expand": 3, "chunk": 32, "conv_kernel": 3, "dt_min": 0.01, "dt_max": 0.2}"#
        let decoded = try JSONDecoder().decode(AnyMixerConfig.self, from: Data(json.utf8))
        let config = try XCTUnwrap(decoded.config as? Mamba2MixerConfig)
        XCTAssertEqual(config, Mamba2MixerConfig(dState: 32, headDim: 16, ngroups: 2, expand: 3, chunk: 32, convKernel: 3, dtMin: 0.01, dtMax: 0.2))
        XCTAssertEqual(Set(Mamba2MixerConfig.keyReference.map(\.key)),
                       ["d_state", "head_dim", "ngroups", "expand", "chunk", "conv_kernel", "dt_min", "dt_max"])
        XCTAssertEqual(try JSONDecoder().decode(AnyMixerConfig.self, from: Data(#""mamba2""#.utf8)).config as? Mamba2MixerConfig,
                       Mamba2MixerConfig())
        XCTAssertThrowsError(try Mamba2MixerConfig(headDim: 24).validate(dModel: 32))        // 64 not a multiple of 24
        XCTAssertThrowsError(try Mamba2MixerConfig(headDim: 16, ngroups: 3).validate(dModel: 32)) // 4 heads, 3 groups
        XCTAssertThrowsError(try Mamba2MixerConfig(chunk: 0).validate(dModel: 32))
        XCTAssertThrowsError(try Mamba2MixerConfig(dtMin: 0.2, dtMax: 0.1).validate(dModel: 32))
        let roundTrip = try JSONDecoder().decode(AnyMixerConfig.self, from: JSONEncoder().encode(decoded))
        XCTAssertEqual(roundTrip.config as? Mamba2MixerConfig, config)
    }
}
