import Testing
import Foundation
import ZooTensor
@testable import ZooData

/// A scratch directory removed when the test ends.
final class TemporaryDirectory {
    let path: String
    init() {
        path = NSTemporaryDirectory() + "zoo-data-test-" + UUID().uuidString
        try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }
    deinit { try? FileManager.default.removeItem(atPath: path) }
}

/// Training bytes in 0 ..< 128 and validation bytes in 128 ..< 256, so a batch shows which part
/// it came from.
func markedBytes(training: Int, validation: Int) -> [UInt8] {
    var g = SeededGenerator(seed: 99)
    return (0..<training).map { _ in UInt8(g.nextInt(below: 128)) } + (0..<validation).map { _ in UInt8(128 + g.nextInt(below: 128)) }
}

@Suite struct ByteLanguageModelling {
    let corpus = try! ByteCorpus(bytes: markedBytes(training: 900, validation: 100), name: "marked", validationFraction: 0.1)

    @Test func splitsTheLastFractionOff() throws {
        #expect(corpus.trainingCount == 900 && corpus.validationCount == 100)
        let whole = try ByteCorpus(bytes: [UInt8](repeating: 65, count: 10), name: "x", validationFraction: 0)
        #expect(whole.trainingCount == 10 && whole.validationCount == 0)
    }

    @Test func trainingWindowsComeFromTheTrainingPartAndTargetsAreShiftedByOne() throws {
        var source = try corpus.trainingBatches(length: 16, batchSize: 8, seed: 1)
        for _ in 0..<50 {
            let b = source.nextBatch()
            #expect(b.batchSize == 8 && b.length == 16)
            #expect(b.inputs.allSatisfy { $0 < 128 } && b.targets.allSatisfy { $0 < 128 })
            #expect(b.labelledCount == 8 * 16)
            for r in 0..<8 {
                #expect(b.inputs[(r * 16 + 1)..<(r * 16 + 16)].elementsEqual(b.targets[(r * 16)..<(r * 16 + 15)]))
                // The row is a real window of the file.
                let row = b.inputs[(r * 16)..<(r * 16 + 16)].map(UInt8.init) + [UInt8(b.targets[r * 16 + 15])]
                #expect((0...(900 - 17)).contains { corpus.bytes[$0..<($0 + 17)].elementsEqual(row) })
            }
        }
        // The last possible window is reachable (window starts 0 ... 883).
        var small = try ByteCorpus(bytes: Array(0..<20), name: "tiny", validationFraction: 0).trainingBatches(length: 18, batchSize: 1, seed: 0)
        let firsts = Set((0..<100).map { _ in small.nextBatch().inputs[0] })
        #expect(firsts == [0, 1])
    }

    @Test func trainingBatchesAreDeterministic() throws {
        var a = try corpus.trainingBatches(length: 32, batchSize: 4, seed: 7)
        var b = try corpus.trainingBatches(length: 32, batchSize: 4, seed: 7)
        var c = try corpus.trainingBatches(length: 32, batchSize: 4, seed: 8)
        for _ in 0..<10 {
            let x = a.nextBatch()
            #expect(x == b.nextBatch())
            #expect(x != c.nextBatch())
        }
    }

    @Test func validationWindowsTileTheValidationPartInOrder() throws {
        let batches = try corpus.validationBatches(length: 16, batchSize: 4)
        // (100 − 1) / 16 = 6 windows: batches of 4 and 2.
        #expect(batches.map(\.batchSize) == [4, 2])
        let inputs = batches.flatMap(\.inputs), targets = batches.flatMap(\.targets)
        let validation = corpus.bytes[900...].map(Int.init)
        #expect(inputs == Array(validation[0..<96]))
        #expect(targets == Array(validation[1..<97]))
        #expect(try corpus.validationBatches(length: 16, batchSize: 4, maxBatches: 1).count == 1)
        #expect(try corpus.validationBatches(length: 16, batchSize: 4) == batches)
    }

    @Test func resumingGivesTheSameBatches() throws {
        var uninterrupted = try corpus.trainingBatches(length: 24, batchSize: 3, seed: 12)
        let reference = (0..<10).map { _ in uninterrupted.nextBatch() }
        for n in [0, 1, 6] {
            var first = try corpus.trainingBatches(length: 24, batchSize: 3, seed: 12)
            for _ in 0..<n { _ = first.nextBatch() }
            let saved = first.position.jsonString()
            // A fresh corpus object and source, restored from the string a checkpoint would hold.
            let again = try ByteCorpus(bytes: markedBytes(training: 900, validation: 100), name: "marked", validationFraction: 0.1)
            var resumed = try again.trainingBatches(length: 24, batchSize: 3, seed: 12)
            try resumed.restore(DataPosition(jsonString: saved))
            #expect(resumed.position == first.position)
            for i in n..<10 { #expect(resumed.nextBatch() == reference[i], "resumed after \(n), batch \(i)") }
        }
    }

    @Test func refusesAPositionFromAnotherFileOrShape() throws {
        var a = try corpus.trainingBatches(length: 24, batchSize: 3, seed: 12)
        _ = a.nextBatch()
        var changed = markedBytes(training: 900, validation: 100)
        changed[5] ^= 1
        var other = try ByteCorpus(bytes: changed, name: "marked", validationFraction: 0.1).trainingBatches(length: 24, batchSize: 3, seed: 12)
        #expect(throws: DataError.self) { try other.restore(a.position) }
        var otherLength = try corpus.trainingBatches(length: 25, batchSize: 3, seed: 12)
        #expect(throws: DataError.self) { try otherLength.restore(a.position) }
        var noGenerator = a.position
        noGenerator.generator = nil
        #expect(throws: DataError.self) { try a.restore(noGenerator) }
        #expect(throws: DataError.self) { try DataPosition(jsonString: "{not json") }
    }

    @Test func positionsSurviveJSONExactly() throws {
        var g = SeededGenerator(seed: 0xFFFF_FFFF_FFFF_FFF1)
        _ = g.next()
        let p = DataPosition(source: "x \"quoted\" ünïcode", batchesTaken: 123_456_789, epoch: 3, offset: 9, generator: g)
        #expect(try DataPosition(jsonString: p.jsonString()) == p)
        #expect(p.jsonString() == p.jsonString())
    }

    @Test func loadsFilesAndExplainsWhatIsWrong() throws {
        let dir = TemporaryDirectory()
        let file = dir.path + "/corpus.txt"
        try Data("hello, world: a small corpus\n".utf8).write(to: URL(fileURLWithPath: file))
        let loaded = try ByteCorpus(contentsOf: file, validationFraction: 0.25)
        #expect(loaded.bytes == Array("hello, world: a small corpus\n".utf8))
        #expect(loaded.trainingCount == 29 - 7)

        func message(_ body: () throws -> Void) -> String {
            do { try body(); return "" } catch let error as DataError { return error.description } catch { return "unexpected \(error)" }
        }
        #expect(message { _ = try ByteCorpus(contentsOf: dir.path + "/missing.txt") } == "text corpus not found: \(dir.path)/missing.txt")
        #expect(message { _ = try ByteCorpus(contentsOf: dir.path) }.contains("is a directory"))
        let empty = dir.path + "/empty.txt"
        _ = FileManager.default.createFile(atPath: empty, contents: Data())
        #expect(message { _ = try ByteCorpus(contentsOf: empty) } == "text corpus \(empty) is empty")
        #expect(message { _ = try ByteCorpus(contentsOf: file, validationFraction: 1) }.hasPrefix("validation_fraction: is 1.0"))
        let short = message { _ = try loaded.trainingBatches(length: 22, batchSize: 1, seed: 0) }
        #expect(short.contains(file) && short.contains("training part has 22 bytes") && short.contains("seq_len + 1 = 23"))
        #expect(message { _ = try loaded.trainingBatches(length: 21, batchSize: 1, seed: 0) } == "")
        let shortValidation = message { _ = try loaded.validationBatches(length: 7, batchSize: 1) }
        #expect(shortValidation.contains("validation part has 7 bytes"))
        #expect(message { _ = try loaded.trainingBatches(length: 0, batchSize: 1, seed: 0) }.hasPrefix("seq_len:"))
        #expect(message { _ = try loaded.trainingBatches(length: 4, batchSize: 0, seed: 0) }.hasPrefix("batch_size:"))
    }

    @Test func theDefaultCorpusIsFoundOrExplained() throws {
        let root = TemporaryDirectory()
        do {
            _ = try DefaultCorpus.path(root: root.path)
            Issue.record("found a corpus in an empty directory")
        } catch {
            #expect(error.message.contains("Data/prepare.sh") && error.message.contains(root.path + "/Data/prepared/corpus.txt"))
        }
        try FileManager.default.createDirectory(atPath: root.path + "/Data/prepared", withIntermediateDirectories: true)
        _ = FileManager.default.createFile(atPath: root.path + "/Data/prepared/corpus.txt", contents: Data("text".utf8))
        #expect(throws: DataError.self) { try DefaultCorpus.path(root: root.path) }   // no manifest: not finished
        _ = FileManager.default.createFile(atPath: root.path + "/Data/prepared/MANIFEST.sha256", contents: Data())
        #expect(try DefaultCorpus.path(root: root.path + "/") == root.path + "/Data/prepared/corpus.txt")
    }
}

/// The repository root, from this file's path (Tests/ZooDataTests/TextTests.swift).
let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path

@Suite struct PreparedDefaultCorpus {
    /// Runs only where Data/prepare.sh has been run (it downloads once, so CI may not have it).
    @Test(.enabled(if: (try? DefaultCorpus.path(root: repositoryRoot)) != nil, "Data/prepare.sh has not been run"))
    func theShakespeareCorpusLoadsAsBytes() throws {
        let corpus = try ByteCorpus(contentsOf: try DefaultCorpus.path(root: repositoryRoot), validationFraction: 0.1)
        #expect(corpus.bytes.count == 5_057_323)
        #expect(corpus.bytes.allSatisfy { $0 < 128 }, "plain ASCII")
        #expect(String(decoding: corpus.bytes.prefix(64), as: UTF8.self).contains("ALL'S WELL THAT ENDS WELL"))
        var train = try corpus.trainingBatches(length: 512, batchSize: 8, seed: 0)
        #expect(train.nextBatch().inputs.count == 8 * 512)
        let validation = try corpus.validationBatches(length: 512, batchSize: 8, maxBatches: 4)
        #expect(validation.count == 4 && validation.allSatisfy { $0.batchSize == 8 })
    }
}
