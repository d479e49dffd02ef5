import Testing
import Foundation
import ZooTensor
@testable import ZooData

/// Checks every MQAR invariant of one example and returns its gaps (query slot of each pair).
@discardableResult
func checkInvariants(_ e: MQARExample, _ config: MQARConfig, sourceLocation: SourceLocation = #_sourceLocation) -> [Int] {
    let v = config.vocabSize, k = config.numKVPairs, t = config.seqLen
    #expect(e.inputs.count == t && e.targets.count == t, sourceLocation: sourceLocation)
    #expect(e.numKVPairs == k, sourceLocation: sourceLocation)
    let keys = (0..<k).map { e.inputs[2 * $0] }, values = (0..<k).map { e.inputs[2 * $0 + 1] }
    #expect(Set(keys).count == k, "keys are distinct", sourceLocation: sourceLocation)
    #expect(Set(values).count == k, "values are distinct", sourceLocation: sourceLocation)
    #expect(keys.allSatisfy { $0 >= 1 && $0 < v / 2 }, "keys in [1, V/2)", sourceLocation: sourceLocation)
    #expect(values.allSatisfy { $0 >= v / 2 && $0 < v }, "values in [V/2, V)", sourceLocation: sourceLocation)
    #expect(e.inputs.allSatisfy { $0 >= 0 && $0 < v }, "tokens in [0, V)", sourceLocation: sourceLocation)
    // Labels exactly at the query positions, equal to the value paired with the queried key.
    let labelled = (0..<t).filter { e.targets[$0] != Batch.ignoreIndex }
    #expect(labelled == e.queryPositions.sorted(), sourceLocation: sourceLocation)
    var gaps: [Int] = []
    for (j, q) in e.queryPositions.enumerated() {
        #expect(q >= 2 * k && (q - 2 * k) % 2 == 0 && q < t, "query \(j) at \(q)", sourceLocation: sourceLocation)
        #expect(e.inputs[q] == keys[j], "query \(j) repeats key \(j)", sourceLocation: sourceLocation)
        #expect(e.targets[q] == values[j], "query \(j) is labelled with value \(j)", sourceLocation: sourceLocation)
        gaps.append((q - 2 * k) / 2)
    }
    #expect(Set(gaps).count == k, "one query per slot", sourceLocation: sourceLocation)
    if !config.randomNonQueries {
        let special = Set(0..<(2 * k)).union(e.queryPositions)
        #expect((0..<t).allSatisfy { special.contains($0) || e.inputs[$0] == 0 }, sourceLocation: sourceLocation)
    }
    return gaps
}

@Suite struct MQARGeneration {
    let config = MQARConfig(vocabSize: 64, seqLen: 64, numKVPairs: 8, numExamples: 50)

    @Test func everyExampleKeepsTheInvariants() throws {
        for random in [true, false] {
            var c = config
            c.randomNonQueries = random
            let data = try MQARDataset(c, seed: 7, split: .train)
            for i in 0..<data.count { checkInvariants(data.example(at: i), c) }
        }
        // Extremes: as many pairs as the length allows, and as many keys as the vocabulary has.
        let tight = MQARConfig(vocabSize: 18, seqLen: 32, numKVPairs: 8, numExamples: 20)
        let data = try MQARDataset(tight, seed: 1, split: .test)
        for i in 0..<data.count {
            let gaps = checkInvariants(data.example(at: i), tight)
            #expect(gaps.sorted() == Array(0..<8))   // every slot holds a query
        }
        let oddLength = MQARConfig(vocabSize: 100, seqLen: 45, numKVPairs: 5, numExamples: 20)
        let odd = try MQARDataset(oddLength, seed: 1, split: .train)
        for i in 0..<odd.count { checkInvariants(odd.example(at: i), oddLength) }
    }

    @Test func theSameSeedGivesTheSameDataAndOtherSeedsOrSplitsDiffer() throws {
        let a = try MQARDataset(config, seed: 3, split: .train)
        let b = try MQARDataset(config, seed: 3, split: .train)
        let c = try MQARDataset(config, seed: 4, split: .train)
        let test = try MQARDataset(config, seed: 3, split: .test)
        for i in 0..<a.count { #expect(a.example(at: i) == b.example(at: i)) }
        // Random access: the order examples are made in does not matter.
        #expect(a.example(at: 17) == b.example(at: 17))
        let all = (0..<a.count).map { a.example(at: $0).inputs }
        #expect((0..<a.count).filter { c.example(at: $0).inputs == all[$0] }.isEmpty)
        #expect((0..<a.count).filter { test.example(at: $0).inputs == all[$0] }.isEmpty)
        #expect(Set(all).count == a.count, "examples within a dataset differ")
    }

    /// Pins the generator's output to the fingerprints printed by Reference/mqar_reference.py, an
    /// independent Python transcription of the algorithm: the data does not depend on the
    /// language or the machine, and any change to the sampling shows here.
    @Test func theGeneratorsOutputMatchesTheIndependentTranscription() throws {
        func fingerprint(_ config: MQARConfig, seed: UInt64, split: MQARDataset.Split) throws -> String {
            let data = try MQARDataset(config, seed: seed, split: split)
            var bytes: [UInt8] = []
            for i in 0..<data.count {
                let e = data.example(at: i)
                for x in e.inputs + e.targets { withUnsafeBytes(of: Int64(x).littleEndian) { bytes += $0 } }
            }
            return hex(fnv1a64(bytes))
        }
        #expect(try fingerprint(MQARConfig(vocabSize: 8192, seqLen: 256, numKVPairs: 32, numExamples: 8), seed: 42, split: .train)
                == "e64bdd887d630ddb")
        #expect(try fingerprint(MQARConfig(vocabSize: 100, seqLen: 45, numKVPairs: 5, powerA: 0.5, numExamples: 16, randomNonQueries: false),
                                seed: 7, split: .test) == "7cd2e05894eda785")
    }

    @Test func gapsFollowThePowerLaw() throws {
        // One pair, so each example's single gap is one draw from p(g) ∝ (g + 1)^(a − 1).
        let slots = 32, n = 20_000
        for a in [0.01, 0.5, 1.0] {
            let config = MQARConfig(vocabSize: 16, seqLen: 2 + 2 * slots, numKVPairs: 1, powerA: a, numExamples: n)
            let data = try MQARDataset(config, seed: 11, split: .train)
            var counts = [Int](repeating: 0, count: slots)
            for i in 0..<n { counts[(data.example(at: i).queryPositions[0] - 2) / 2] += 1 }
            let weights = (0..<slots).map { Foundation.pow(Double($0 + 1), a - 1) }
            let total = weights.reduce(0, +)
            var distance = 0.0
            for g in 0..<slots {
                let p = weights[g] / total
                let sigma = (Double(n) * p * (1 - p)).squareRoot()
                #expect(abs(Double(counts[g]) - Double(n) * p) < 5 * sigma + 1, "a = \(a), gap \(g): \(counts[g]) vs \(Double(n) * p)")
                distance += abs(Double(counts[g]) / Double(n) - p) / 2
            }
            #expect(distance < 0.02, "a = \(a): total variation \(distance)")
        }
        // Several pairs: short gaps still dominate at a = 0.01, and every gap is used.
        let many = try MQARDataset(MQARConfig(vocabSize: 256, seqLen: 256, numKVPairs: 16, numExamples: 500), seed: 2, split: .train)
        var counts = [Int](repeating: 0, count: 112)
        for i in 0..<many.count { for q in many.example(at: i).queryPositions { counts[(q - 32) / 2] += 1 } }
        #expect(counts[0] > counts[10] && counts[10] > counts[100])
    }

    @Test func portableMathMatchesLibm() {
        var g = SeededGenerator(seed: 5)
        var worst = 0.0
        for _ in 0..<20_000 {
            let x = -40 + 80 * g.nextUniformDouble()
            worst = max(worst, abs(portableExp(x) - Foundation.exp(x)) / Foundation.exp(x))
        }
        #expect(worst < 5e-16, "portableExp relative error \(worst)")
        #expect(portableExp(0) == 1)
        #expect(portableExp(-800) == 0 && portableExp(800) == .infinity)
        for base in [1.0, 2.0, 7.0, 100.0, 4095.0] {
            let p = portablePow(base, -0.99)
            #expect(abs(p - Foundation.pow(base, -0.99)) / p < 1e-14, "pow(\(base), -0.99)")
        }
    }
}

@Suite struct MQARConfigAndSlices {
    @Test func impossibleConfigsNameTheirKeyAndTheLimit() {
        func error(_ c: MQARConfig) -> DataError? {
            do { try c.validate(); return nil } catch { return error }
        }
        let tooManyForLength = error(MQARConfig(vocabSize: 8192, seqLen: 64, numKVPairs: 17, numExamples: 1))
        #expect(tooManyForLength?.key == "seq_len")
        #expect(tooManyForLength?.message.contains("≥ 4·num_kv_pairs = 68") == true)
        #expect(tooManyForLength?.message.contains("num_kv_pairs ≤ 16") == true)
        let tooManyForVocab = error(MQARConfig(vocabSize: 20, seqLen: 64, numKVPairs: 10, numExamples: 1))
        #expect(tooManyForVocab?.key == "num_kv_pairs")
        #expect(tooManyForVocab?.description.contains("num_kv_pairs ≤ 9") == true)
        #expect(error(MQARConfig(vocabSize: 20, seqLen: 64, numKVPairs: 9, numExamples: 1)) == nil)
        #expect(error(MQARConfig(vocabSize: 64, seqLen: 64, numKVPairs: 0, numExamples: 1))?.key == "num_kv_pairs")
        #expect(error(MQARConfig(vocabSize: 64, seqLen: 64, numKVPairs: 4, powerA: 0, numExamples: 1))?.key == "power_a")
        #expect(error(MQARConfig(vocabSize: 64, seqLen: 64, numKVPairs: 4, powerA: .nan, numExamples: 1))?.key == "power_a")
        #expect(error(MQARConfig(vocabSize: 64, seqLen: 64, numKVPairs: 4, numExamples: 0))?.key == "num_examples")
        #expect(error(MQARConfig(vocabSize: 2, seqLen: 64, numKVPairs: 1, numExamples: 1))?.key == "vocab_size")
        // The dataset refuses the same configs, and mixed lengths, naming the task.
        #expect(throws: DataError.self) { try MQARDataset(MQARConfig(vocabSize: 64, seqLen: 8, numKVPairs: 4, numExamples: 1), seed: 0, split: .train) }
        do {
            _ = try MQARDataset(segments: [MQARConfig(vocabSize: 64, seqLen: 64, numKVPairs: 4, numExamples: 1),
                                           MQARConfig(vocabSize: 64, seqLen: 128, numKVPairs: 4, numExamples: 1)], seed: 0, split: .train)
            Issue.record("mixed seq_len accepted")
        } catch {
            #expect(error.key == "[1].seq_len")
        }
        #expect(throws: DataError.self) { try MQARDataset(segments: [], seed: 0, split: .train) }
    }

    @Test func decodesWithZoologysDefaults() throws {
        let json = #"{"vocab_size": 8192, "seq_len": 256, "num_kv_pairs": 16, "num_examples": 1000}"#
        let c = try JSONDecoder().decode(MQARConfig.self, from: Data(json.utf8))
        #expect(c == MQARConfig(vocabSize: 8192, seqLen: 256, numKVPairs: 16, powerA: 0.01, numExamples: 1000, randomNonQueries: true))
        let back = try JSONDecoder().decode(MQARConfig.self, from: JSONEncoder().encode(c))
        #expect(back == c)
        #expect(Set(MQARConfig.keys) == ["vocab_size", "seq_len", "num_kv_pairs", "power_a", "num_examples", "random_non_queries"])
    }

    @Test func mixedTasksSliceByPairs() throws {
        let segments = [MQARConfig(vocabSize: 128, seqLen: 64, numKVPairs: 4, numExamples: 5),
                        MQARConfig(vocabSize: 128, seqLen: 64, numKVPairs: 8, numExamples: 3),
                        MQARConfig(vocabSize: 128, seqLen: 64, numKVPairs: 16, numExamples: 4)]
        let data = try MQARDataset(segments: segments, seed: 9, split: .test)
        #expect(data.count == 12)
        let expected = [4, 4, 4, 4, 4, 8, 8, 8, 16, 16, 16, 16]
        #expect((0..<12).map(data.numKVPairs(ofExample:)) == expected)
        for i in 0..<12 { checkInvariants(data.example(at: i), segments[expected[i] == 4 ? 0 : expected[i] == 8 ? 1 : 2]) }
        let batches = data.evaluationBatches(batchSize: 5)
        #expect(batches.map(\.batch.batchSize) == [5, 5, 2])
        #expect(batches.flatMap(\.numKVPairs) == expected)
        #expect(batches[1].batch.inputs[0..<64].elementsEqual(data.example(at: 5).inputs))
        #expect(batches.reduce(0) { $0 + $1.batch.labelledCount } == expected.reduce(0, +))
        #expect(data.evaluationBatches(batchSize: 5, maxBatches: 2).count == 2)
    }
}

@Suite struct MQARTraining {
    let data = try! MQARDataset(MQARConfig(vocabSize: 64, seqLen: 32, numKVPairs: 4, numExamples: 10), seed: 5, split: .train)

    @Test func eachEpochVisitsEveryExampleOnceInAFreshOrder() {
        var source = data.trainingBatches(batchSize: 5)
        let all = Set((0..<10).map { data.example(at: $0).inputs })
        func rows(_ b: Batch) -> [[Int]] { (0..<b.batchSize).map { Array(b.inputs[($0 * 32)..<(($0 + 1) * 32)]) } }
        let epoch0 = rows(source.nextBatch()) + rows(source.nextBatch())
        let epoch1 = rows(source.nextBatch()) + rows(source.nextBatch())
        #expect(Set(epoch0) == all && epoch0.count == 10)
        #expect(Set(epoch1) == all)
        #expect(epoch0 != epoch1)
        #expect(source.position.epoch == 1 && source.position.offset == 10 && source.position.batchesTaken == 4)
    }

    @Test func resumingGivesTheSameBatchesAcrossEpochBoundaries() throws {
        var uninterrupted = data.trainingBatches(batchSize: 3)
        let reference = (0..<12).map { _ in uninterrupted.nextBatch() }
        for n in [0, 1, 3, 4, 7] {
            var first = data.trainingBatches(batchSize: 3)
            for _ in 0..<n { _ = first.nextBatch() }
            let saved = first.position.jsonString()
            var resumed = try MQARDataset(MQARConfig(vocabSize: 64, seqLen: 32, numKVPairs: 4, numExamples: 10), seed: 5, split: .train)
                .trainingBatches(batchSize: 3)
            try resumed.restore(DataPosition(jsonString: saved))
            for i in n..<12 { #expect(resumed.nextBatch() == reference[i], "resumed after \(n), batch \(i)") }
        }
    }

    @Test func refusesAPositionFromOtherData() throws {
        var a = data.trainingBatches(batchSize: 3)
        _ = a.nextBatch()
        var otherBatch = data.trainingBatches(batchSize: 4)
        #expect(throws: DataError.self) { try otherBatch.restore(a.position) }
        var otherSeed = try MQARDataset(MQARConfig(vocabSize: 64, seqLen: 32, numKVPairs: 4, numExamples: 10), seed: 6, split: .train)
            .trainingBatches(batchSize: 3)
        do { try otherSeed.restore(a.position); Issue.record("accepted") } catch {
            #expect(error.message.contains("cannot resume") && error.message.contains("seed 5"))
        }
        var bad = a.position
        bad.offset = 11
        #expect(throws: DataError.self) { try a.restore(bad) }
    }
}
