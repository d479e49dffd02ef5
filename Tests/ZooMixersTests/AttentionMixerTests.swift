import Foundation
import XCTest
import ZooTensor
import ZooAutograd
import ZooKernels
import ZooMixers
import ZooTestSupport

// XCTest rather than Swift Testing: these layer tests build tapes, and when they were written the
// tape's no-grad switch was process-wide, so parallel tests switched each other's recording off
// (seen: every gradient nil). The tape is per-thread now; XCTest still keeps these serial, and
// they take well under a second.

private let dModel = 32

private func makeMixer(_ config: AttentionMixerConfig, seed: UInt64 = 1) -> AttentionMixer {
    var g = SeededGenerator(seed: seed)
    return AttentionMixer(config, context: MixerContext(dModel: dModel, layerCount: 2), generator: &g)
}

private func input(batch: Int, length: Int, seed: UInt64 = 2) -> Tensor {
    var g = SeededGenerator(seed: seed)
    // Larger than the 0.02-std weights would give: scores then vary enough to test the softmax.
    return Tensor.normal([batch, length, dModel], std: 3, generator: &g)
}

private let configs: [(String, AttentionMixerConfig)] = [
    ("default (flash, rotary)", AttentionMixerConfig(heads: 4)),
    ("GQA window softcap", AttentionMixerConfig(heads: 4, kvHeads: 2, headDim: 12, rotaryTheta: 500, window: 20, softcap: 3)),
    ("MQA no rotary", AttentionMixerConfig(heads: 2, kvHeads: 1, rotary: false)),
    ("naive kernel", AttentionMixerConfig(heads: 2, kernel: .naive)),
]

final class AttentionMixerTests: XCTestCase {
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

    func testStateBytesMatchAnalyticSize() {
        for (name, config) in configs {
            let mixer = makeMixer(config)
            for length in [1, 17, 64, 1000] {
                let measured = MixerContract.measuredStateBytes(mixer, batch: 2, length: length, dModel: dModel)
                XCTAssertEqual(measured, config.stateBytes(batch: 2, length: length, dModel: dModel), "\(name), T=\(length)")
            }
        }
    }

    func testDecodeReadsTheWholeCacheOrTheWindow() {
        let full = makeMixer(AttentionMixerConfig(heads: 4))
        var state = full.initialState(batch: 1)
        _ = full.step(input(batch: 1, length: 300), state: &state)
        XCTAssertEqual(state.tokensReadLastStep, 320)                     // 5 pages of 64
        XCTAssertEqual(state.bytesReadLastStep, state.byteCount)
        let windowed = makeMixer(AttentionMixerConfig(heads: 4, window: 64))
        var ws = windowed.initialState(batch: 1)
        _ = windowed.step(input(batch: 1, length: 300), state: &ws)
        XCTAssertEqual(ws.tokensReadLastStep, 128)                        // keys 236..<300 span 2 pages
    }

    func testLayerGradients() {
        for (name, config) in configs {
            let errors = MixerContract.layerGradientError(makeMixer(config), x: input(batch: 1, length: 23))
            for (parameter, error) in errors.sorted(by: { $0.key < $1.key }) {
                XCTAssertLessThan(error, 2e-2, "\(name): \(parameter)")
            }
        }
    }

    func testFlashAndNaiveLayersAgree() {
        let flash = makeMixer(AttentionMixerConfig(heads: 4, kvHeads: 2, window: 30, softcap: 2))
        let naive = makeMixer(AttentionMixerConfig(heads: 4, kvHeads: 2, window: 30, softcap: 2, kernel: .naive))
        let x = input(batch: 2, length: 90)
        var g = SeededGenerator(seed: 4)
        let w = Tensor.normal([2, 90, dModel], generator: &g)
        var outputs: [Tensor] = [], grads: [[Tensor?]] = []
        for mixer in [flash, naive] {
            let xv = Variable(x, requiresGrad: true)
            let y = mixer(xv)
            y.backward(gradient: w)
            outputs.append(y.value)
            grads.append([xv.grad] + mixer.namedParameters().map { $0.variable.grad })
        }
        XCTAssertLessThan(relativeError(outputs[0], outputs[1]), 1e-5, "output")
        for (a, b) in zip(grads[0], grads[1]) {
            guard let a, let b else { XCTFail("missing gradient"); continue }
            XCTAssertLessThan(relativeError(a, b), 1e-5, "gradient")
        }
    }

    func testConfigDecodesFromSnakeCaseKeysAndValidates() throws {
        let json = #"{"type": "attention", "heads": 8, "kv_heads": 2, "head_dim": 16, "rotary_theta": 500000, "window": 128, "softcap": 30, "kernel": "naive"}"#
        let decoded = try JSONDecoder().decode(AnyMixerConfig.self, from: Data(json.utf8))
        let config = try XCTUnwrap(decoded.config as? AttentionMixerConfig)
        XCTAssertEqual(config, AttentionMixerConfig(heads: 8, kvHeads: 2, headDim: 16, rotaryTheta: 500_000, window: 128, softcap: 30, kernel: .naive))
        XCTAssertEqual(Set(AttentionMixerConfig.keyReference.map(\.key)),
                       ["heads", "kv_heads", "head_dim", "rotary", "rotary_theta", "window", "softcap", "kernel"])
        XCTAssertThrowsError(try AttentionMixerConfig(heads: 3, kvHeads: 2).validate(dModel: 48))
        XCTAssertThrowsError(try AttentionMixerConfig(heads: 5).validate(dModel: 32))
        XCTAssertThrowsError(try AttentionMixerConfig(window: 0).validate(dModel: 32))
        let roundTrip = try JSONDecoder().decode(AnyMixerConfig.self, from: JSONEncoder().encode(decoded))
        XCTAssertEqual(roundTrip.config as? AttentionMixerConfig, config)
    }
}
