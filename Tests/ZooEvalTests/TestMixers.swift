import Foundation
import ZooTensor
import ZooAutograd
import ZooNN
import ZooMixers
import ZooExperiment
import ZooEval

// Two stand-in mixers for testing the evaluation plumbing whatever the registry holds: y = W·x
// per token (trivially causal, so parallel ≡ recurrent), with a decode state that either grows
// (a cache of every input, like a KV cache) or stays fixed (a running sum, like an SSM state).
// They are built in code, never registered: the registry is global to the test process.

struct StandInMixerConfig: MixerConfig {
    static let typeName = "stand_in"
    static let keyReference: [(key: String, description: String)] = [("growing", "cache every token"), ("max_length", "longest input")]
    var growing = true
    var maxLength: Int? = nil
    init() {}
    init(growing: Bool, maxLength: Int? = nil) { self.growing = growing; self.maxLength = maxLength }
    func validate(dModel: Int) throws(MixerConfigError) {}
    func makeMixer(_ context: MixerContext, generator: inout SeededGenerator) -> any Mixer {
        StandInMixer(growing: growing, projection: Linear(context.dModel, context.dModel, std: context.outputProjectionStd, generator: &generator))
    }
    func stateBytes(batch: Int, length: Int, dModel: Int) -> Int { 4 * batch * dModel * (growing ? length : 1) }
    func maximumLength(dModel: Int) -> Int? { maxLength }
    enum CodingKeys: String, CodingKey { case growing, maxLength = "max_length" }
}

struct StandInState: MixerState {
    var cache: Tensor          // growing: [B, T, D]; fixed: [B, 1, D] running sum
    var position = 0
    var lastRead = 0
    var byteCount: Int { cache.count * 4 }
    var tokensReadLastStep: Int { lastRead }
    var bytesReadLastStep: Int { byteCount }
}

struct StandInMixer: Mixer {
    let growing: Bool
    let projection: Linear
    func namedParameters() -> [NamedParameter] { nested("proj", projection) }
    func callAsFunction(_ x: Variable) -> Variable { projection(x) }
    func initialState(batch: Int) -> StandInState {
        StandInState(cache: Tensor.zeros([batch, growing ? 0 : 1, projection.inFeatures]))
    }
    func step(_ x: Tensor, state: inout StandInState) -> Tensor {
        if growing {
            state.cache = state.cache.shape[1] == 0 ? x : Tensor.concatenate([state.cache, x], axis: 1)
        } else {
            var sum = state.cache
            let p = sum.mutablePointer()
            let (b, t, d) = (x.shape[0], x.shape[1], x.shape[2])
            for i in 0..<b { for s in 0..<t { for j in 0..<d { p[i * d + j] += x.pointer[(i * t + s) * d + j] } } }
            state.cache = sum
        }
        state.position += x.shape[1]
        state.lastRead = growing ? state.position : 0
        return projection.apply(x)
    }
}

/// A small experiment over the stand-in mixer (random weights unless a test trains it).
func standInConfig(growing: Bool = true, name: String = "standin", task: String = "mqar", lengths: [Int] = [16, 32],
                   maxLength: Int? = nil) -> ExperimentConfig {
    var c = ExperimentConfig()
    c.name = name
    c.model.dModel = 16
    c.model.nLayers = 2
    c.model.mlpHidden = 32
    c.model.mixer = [AnyMixerConfig(StandInMixerConfig(growing: growing, maxLength: maxLength))]
    c.data.task = task
    c.data.seqLen = 16
    c.data.vocabSize = 32
    c.data.numKVPairs = 2
    c.train.batchSize = 2
    c.eval.lengths = lengths
    c.eval.decodeTokens = 4
    c.eval.qualityBatches = 2
    return c
}

func temporaryDirectory() -> URL {
    let url = FileManager.default.temporaryDirectory.appendingPathComponent("zoo-eval-test-\(UUID().uuidString)")
    try? FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    return url
}

/// Rows stamped with a fixed revision and time, so tests can compare them.
func testEnvironment() -> EvalEnvironment {
    EvalEnvironment(gitRev: "testrev", threads: ZooThreads.count, now: { "2026-01-01T00:00:00Z" })
}
