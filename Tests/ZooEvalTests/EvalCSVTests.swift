import Testing
import Foundation
@testable import ZooEval

func sampleRow(metric: String = "state_bytes", value: Double? = 1024, seqLen: Int = 256, run: String = "mixer=attention") -> EvalRow {
    EvalRow(experiment: "default", run: run, mixer: "attention", dModel: 128, nLayers: 2, params: 12345, seqLen: seqLen, batch: 1,
            threads: 2, metric: metric, value: value, unit: EvalMetric.unit(metric), gitRev: "abc", timestamp: "2026-01-01T00:00:00Z")
}

/// Opens `url` again after the previous writer was closed. The lock is released when every copy
/// of its descriptor is closed, and a child that another test is spawning in parallel holds a
/// copy between its fork and its exec (O_CLOEXEC closes it only at exec), so a reopen can meet
/// the lock for a moment: retry for up to two seconds.
func reopen(_ url: URL, fresh: Bool = false) throws -> EvalCSVFile {
    for _ in 0..<200 {
        if let file = try? EvalCSVFile(url: url, fresh: fresh) { return file }
        usleep(10_000)
    }
    return try EvalCSVFile(url: url, fresh: fresh)
}

@Suite struct EvalCSVTests {
    @Test func headerIsDesignSectionSixPlusRunAndNote() {
        #expect(EvalCSV.header == "experiment,run,mixer,d_model,n_layers,params,seq_len,batch,threads,metric,value,unit,git_rev,timestamp,note")
    }

    @Test func rowsRoundTripIncludingQuotedFieldsAndMissingValues() throws {
        var tricky = sampleRow(metric: "decode_tokens_per_s", value: 1234.5678)
        tricky.note = "skipped: \"decode\", predicted 85 s\nsecond line"
        tricky.run = "lr=0.001,seed=1"
        let rows = [sampleRow(), tricky, sampleRow(metric: "accuracy", value: nil), sampleRow(metric: "val_loss", value: 1e-7)]
        let text = ([EvalCSV.header] + rows.map(EvalCSV.line)).joined(separator: "\n") + "\n"
        let parsed = try EvalCSV.parse(text)
        #expect(parsed.dropped == 0)
        #expect(parsed.rows == rows)
        #expect(EvalCSV.line(sampleRow()).contains(",1024,bytes,"))   // integers stay integers
    }

    @Test func aTornLastLineIsDroppedAndTheFileRepaired() throws {
        let dir = temporaryDirectory()
        let url = dir.appendingPathComponent("eval.csv")
        let good = [sampleRow(seqLen: 256), sampleRow(seqLen: 512)]
        try (([EvalCSV.header] + good.map(EvalCSV.line)).joined(separator: "\n") + "\ndefault,mixer=attention,atten").write(to: url, atomically: true, encoding: .utf8)
        // The torn line's group may be incomplete: the last intact group (T=512) is dropped too.
        do {
            let file = try EvalCSVFile(url: url)
            #expect(file.rows == [good[0]])
            file.append([sampleRow(seqLen: 1024)])
        }
        let reread = try EvalCSV.parse(try String(contentsOf: url, encoding: .utf8))
        #expect(reread.dropped == 0)
        #expect(reread.rows.map(\.seqLen) == [256, 1024])
    }

    @Test func anotherHeaderIsRefusedWithAHint() throws {
        #expect(throws: EvalError.self) { try EvalCSV.parse("a,b,c\n1,2,3\n", file: "old.csv") }
        do { _ = try EvalCSV.parse("a,b\n", file: "old.csv") } catch let e as EvalError { #expect(e.message.contains("--fresh")) }
    }

    @Test func oneWriterAtATime() throws {
        let url = temporaryDirectory().appendingPathComponent("eval.csv")
        var first: EvalCSVFile? = try EvalCSVFile(url: url)
        #expect(throws: EvalError.self) { try EvalCSVFile(url: url) }
        first?.append([sampleRow()])
        first = nil
        #expect(try reopen(url).rows.count == 1)   // free again once the first is closed
    }

    @Test func freshDiscardsEarlierRows() throws {
        let url = temporaryDirectory().appendingPathComponent("eval.csv")
        do { try EvalCSVFile(url: url).append([sampleRow()]) }
        do { #expect(try reopen(url).rows.count == 1) }
        do { #expect(try reopen(url, fresh: true).rows.isEmpty) }
    }

    @Test func metricGroupsAndUnits() {
        #expect(EvalMetric.group("accuracy_kv16") == .quality)
        #expect(EvalMetric.group("decode_bytes_read_per_token") == .inference)
        #expect(EvalMetric.group("train_tokens_per_s") == .train)
        #expect(EvalMetric.unit("accuracy_kv4") == "fraction")
        #expect(EvalMetric.unit("state_bytes") == "bytes")
    }

    @Test func formats() {
        #expect(EvalFormat.bytes(512) == "512 B")
        #expect(EvalFormat.bytes(1536) == "1.50 KiB")
        #expect(EvalFormat.bytes(3 * 1024 * 1024) == "3 MiB")
        #expect(EvalFormat.si(12345) == "12.3k")
        #expect(EvalFormat.length(16384) == "16k")
        #expect(EvalFormat.compact(10_000) == "10k" && EvalFormat.compact(2_500) == "2.5k" && EvalFormat.compact(123_000) == "123k")
        #expect(EvalFormat.length(384) == "384")
    }
}
