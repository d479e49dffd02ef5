import Foundation
import ZooTensor
import ZooAutograd
import ZooNN

/// The decode state of a mixer: typed, one struct per mixer (KV cache, SSM state, Fenwick levels…).
public protocol MixerState {
    /// Tokens consumed so far.
    var position: Int { get }
    /// Bytes of tensor storage held right now, measured from the state's own tensors (never a
    /// formula): tests hold it equal to the config's analytic `stateBytes`.
    var byteCount: Int { get }
    /// Tokens the last decoded token read from the state (all of them for a KV cache, the selected
    /// ones for sparse attention, 0 for a fixed-size recurrent state whose size is its read).
    var tokensReadLastStep: Int { get }
    /// Bytes the last decoded token read from the state.
    var bytesReadLastStep: Int { get }
}

extension MixerState {
    public var tokensReadLastStep: Int { 0 }
    public var bytesReadLastStep: Int { byteCount }
}

/// A sequence mixer: maps [B, T, D] → [B, T, D] causally, in two forms that must agree.
public protocol Mixer: Module {
    associatedtype State: MixerState
    /// Parallel (chunked / tiled) form on the tape. Kernels are wrapped as one node with a
    /// hand-written backward, so no T×T matrix or per-step state is stored by the tape.
    func callAsFunction(_ x: Variable) -> Variable
    /// An empty decode state for `batch` sequences.
    func initialState(batch: Int) -> State
    /// Recurrent form: x [B, T, D]; T == 1 decodes one token, T > 1 prefills a chunk.
    func step(_ x: Tensor, state: inout State) -> Tensor
}

extension Mixer {
    /// Type-erased `initialState`, for models that hold mixers of several kinds.
    public func makeState(batch: Int) -> any MixerState { initialState(batch: batch) }

    /// Type-erased `step`: the state must be this mixer's `State`.
    public func step(_ x: Tensor, anyState: inout any MixerState) -> Tensor {
        guard var typed = anyState as? State else {
            fatalError("\(Self.self).step: got a state of type \(type(of: anyState)), expected \(State.self)")
        }
        let y = step(x, state: &typed)
        anyState = typed
        return y
    }
}

/// What a mixer needs to build itself inside a model.
public struct MixerContext: Sendable {
    /// Model width D.
    public let dModel: Int
    /// Number of blocks in the model: residual output projections are initialised with
    /// std 0.02 / √(2·layerCount) (GPT-2), all other weights with std 0.02.
    public let layerCount: Int
    public init(dModel: Int, layerCount: Int = 1) {
        self.dModel = dModel
        self.layerCount = layerCount
    }
    public var weightStd: Float { 0.02 }
    public var outputProjectionStd: Float { 0.02 / Float(2 * layerCount).squareRoot() }
}

/// A mixer's configuration: Codable, named by its YAML `type:` tag.
///
/// Decoding is strict: `allowedKeys` lists every key the config accepts (besides `type`), and the
/// experiment loader rejects any other key with the file, key path and this list. Missing keys
/// take documented defaults.
public protocol MixerConfig: Codable, Sendable {
    /// The YAML `type:` tag, e.g. `attention`, `mamba`, `mamba2`, `loglinear_mamba2`, `nsa`.
    static var typeName: String { get }
    /// Every key at its default (a config may name a mixer by its type alone).
    init()
    /// Every key this config accepts, with a one-line description and default (README reference).
    static var keyReference: [(key: String, description: String)] { get }
    /// Checks values against the model width; the message names the key and what is allowed.
    func validate(dModel: Int) throws(MixerConfigError)
    /// Builds the mixer with freshly initialised weights.
    func makeMixer(_ context: MixerContext, generator: inout SeededGenerator) -> any Mixer
    /// Analytic decode-state bytes after `length` tokens for `batch` sequences.
    func stateBytes(batch: Int, length: Int, dModel: Int) -> Int
    /// The longest sequence the mixer can take (nil: unbounded).
    func maximumLength(dModel: Int) -> Int?
}

extension MixerConfig {
    public static var allowedKeys: Set<String> { Set(keyReference.map(\.key)) }
    public func maximumLength(dModel: Int) -> Int? { nil }
}

/// The head-layout checks shared by the attention-family mixers (attention, NSA): query heads,
/// KV heads dividing them, a head dim given or implied by d_model, even with rotary.
func validateHeadLayout(heads: Int, kvHeads: Int, headDim: Int?, resolvedHeadDim: Int, rotary: Bool,
                        rotaryTheta: Double, dModel: Int) throws(MixerConfigError) {
    if heads < 1 { throw MixerConfigError(key: "heads", "must be ≥ 1, got \(heads)") }
    if kvHeads < 1 || heads % kvHeads != 0 {
        throw MixerConfigError(key: "kv_heads", "must be ≥ 1 and divide heads (\(heads)), got \(kvHeads)")
    }
    if headDim == nil && dModel % heads != 0 {
        throw MixerConfigError(key: "head_dim", "d_model (\(dModel)) is not a multiple of heads (\(heads)); give head_dim")
    }
    if resolvedHeadDim < 1 { throw MixerConfigError(key: "head_dim", "must be ≥ 1, got \(resolvedHeadDim)") }
    if rotary && resolvedHeadDim % 2 != 0 { throw MixerConfigError(key: "head_dim", "must be even with rotary, got \(resolvedHeadDim)") }
    if !(rotaryTheta > 0) { throw MixerConfigError(key: "rotary_theta", "must be > 0, got \(rotaryTheta)") }
}

/// A value in a mixer config that is out of range or inconsistent.
public struct MixerConfigError: Error, CustomStringConvertible, Equatable {
    public let key: String
    public let message: String
    public init(key: String, _ message: String) { self.key = key; self.message = message }
    public var description: String { "\(key): \(message)" }
}

/// The mixers zoo knows, by YAML `type:`. Adding a mixer is one line here.
public enum MixerRegistry {
    public static let all: [any MixerConfig.Type] = [
        AttentionMixerConfig.self,
        MambaConfig.self,
        Mamba2MixerConfig.self,
        LogLinearMamba2MixerConfig.self,
        NSAMixerConfig.self,
    ]

    public static var typeNames: [String] { all.map { $0.typeName } }

    public static func configType(named name: String) -> (any MixerConfig.Type)? {
        all.first { $0.typeName == name }
    }
}

/// A mixer config decoded from `{type: name, ...keys}`.
public struct AnyMixerConfig: Codable, Sendable {
    public let config: any MixerConfig
    public init(_ config: any MixerConfig) { self.config = config }
    public var typeName: String { type(of: config).typeName }

    enum TypeKey: String, CodingKey { case type }

    public init(from decoder: Decoder) throws {
        // A bare type name (`mixer: mamba`) means that mixer with every key at its default.
        if let single = try? decoder.singleValueContainer(), let name = try? single.decode(String.self) {
            guard let type = MixerRegistry.configType(named: name) else {
                throw DecodingError.dataCorruptedError(
                    in: single, debugDescription: "unknown mixer type '\(name)'; allowed: \(MixerRegistry.typeNames.joined(separator: ", "))")
            }
            config = type.init()
            return
        }
        let container = try decoder.container(keyedBy: TypeKey.self)
        let name = try container.decode(String.self, forKey: .type)
        guard let type = MixerRegistry.configType(named: name) else {
            throw DecodingError.dataCorruptedError(
                forKey: .type, in: container,
                debugDescription: "unknown mixer type '\(name)'; allowed: \(MixerRegistry.typeNames.joined(separator: ", "))")
        }
        config = try type.init(from: decoder)
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.container(keyedBy: TypeKey.self)
        try container.encode(typeName, forKey: .type)
        try config.encode(to: encoder)
    }
}
