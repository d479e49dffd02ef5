import Foundation
import ZooTensor

/// A batch of token sequences: row-major [batchSize, length] token ids.
///
/// `targets[i]` is the token the model should predict at position i (the next token for language
/// modelling, the paired value at an MQAR query), or `Batch.ignoreIndex` where there is no label;
/// the loss and the metrics skip those positions.
public struct Batch: Sendable, Equatable {
    public let inputs: [Int]
    public let targets: [Int]
    public let batchSize: Int
    public let length: Int

    /// The target of positions without a label (PyTorch's `ignore_index` convention).
    public static let ignoreIndex = -100

    public init(inputs: [Int], targets: [Int], batchSize: Int, length: Int) {
        precondition(inputs.count == batchSize * length && targets.count == batchSize * length,
                     "Batch: \(inputs.count) inputs and \(targets.count) targets for [\(batchSize), \(length)]")
        self.inputs = inputs
        self.targets = targets
        self.batchSize = batchSize
        self.length = length
    }

    /// How many targets carry a label (the tokens a loss is averaged over).
    public var labelledCount: Int { targets.reduce(0) { $0 + ($1 == Batch.ignoreIndex ? 0 : 1) } }
}

/// A mistake in a data configuration or a data file. `key` names the configuration key at fault
/// (snake_case, as written in an experiment file) when there is one; the message says what is
/// allowed.
public struct DataError: Error, CustomStringConvertible, Equatable, Sendable {
    public let key: String?
    public let message: String
    public init(key: String? = nil, _ message: String) {
        self.key = key
        self.message = message
    }
    public var description: String { key.map { "\($0): \(message)" } ?? message }
}

/// Where a batch source stands, so a resumed run gets exactly the batches an uninterrupted run
/// would have got. Save it beside a checkpoint (`jsonString()`), restore it with
/// `BatchSource.restore(_:)`.
///
/// `source` describes the data and the batch shape; restoring into a source with another
/// description fails instead of silently continuing on different data. Which counters a source
/// uses is its own business: MQAR uses `epoch` and `offset`, text uses `generator`.
public struct DataPosition: Codable, Sendable, Equatable {
    public var source: String
    /// Batches produced so far.
    public var batchesTaken: Int
    /// Passes completed over a finite dataset.
    public var epoch: Int
    /// Examples consumed in the current pass.
    public var offset: Int
    /// The sampler's state, for sources that draw at random.
    public var generator: SeededGenerator?

    public init(source: String, batchesTaken: Int = 0, epoch: Int = 0, offset: Int = 0,
                generator: SeededGenerator? = nil) {
        self.source = source
        self.batchesTaken = batchesTaken
        self.epoch = epoch
        self.offset = offset
        self.generator = generator
    }

    /// Compact JSON with sorted keys (the same position always gives the same string), for a
    /// checkpoint's string metadata.
    public func jsonString() -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        // Encoding plain integers, strings and an optional struct cannot fail.
        let data = try! encoder.encode(self)
        return String(decoding: data, as: UTF8.self)
    }

    public init(jsonString: String) throws(DataError) {
        do {
            self = try JSONDecoder().decode(DataPosition.self, from: Data(jsonString.utf8))
        } catch {
            throw DataError("data position: cannot decode \(jsonString.prefix(200)): \(error)")
        }
    }
}

/// An endless, deterministic stream of training batches that can be stopped and resumed.
///
/// Taking n batches, saving `position`, and restoring it into a freshly made source with the same
/// data gives the same batch n + 1 as the uninterrupted source.
public protocol BatchSource: Sendable {
    /// The next batch; advances the position.
    mutating func nextBatch() -> Batch
    /// Where the source stands now.
    var position: DataPosition { get }
    /// Continues from a saved position. Throws when the position belongs to other data or another
    /// batch shape (its `source` differs) or its counters are out of range.
    mutating func restore(_ position: DataPosition) throws(DataError)
}

extension BatchSource {
    func checkSource(_ position: DataPosition, expected: String) throws(DataError) {
        guard position.source == expected else {
            throw DataError("cannot resume: the saved data position is for \"\(position.source)\", "
                            + "but this run's data is \"\(expected)\" (same data, length and batch size are needed to resume)")
        }
        guard position.batchesTaken >= 0 else {
            throw DataError("cannot resume: batchesTaken \(position.batchesTaken) is negative")
        }
    }
}

/// 64-bit FNV-1a over bytes: a cheap fingerprint that tells data files apart (not a security hash).
func fnv1a64<C: Sequence>(_ bytes: C, seed: UInt64 = 0xcbf2_9ce4_8422_2325) -> UInt64 where C.Element == UInt8 {
    var h = seed
    for b in bytes { h = (h ^ UInt64(b)) &* 0x0000_0100_0000_01B3 }
    return h
}

func hex(_ value: UInt64) -> String {
    let s = String(value, radix: 16)
    return String(repeating: "0", count: 16 - s.count) + s
}
