import Testing
import Foundation
@testable import ZooEval

/// A real SVG renderer on this machine: rsvg-convert (Debian librsvg2-bin), or ImageMagick.
enum Renderer {
    static func find(_ name: String) -> String? {
        for dir in (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":") {
            let path = "\(dir)/\(name)"
            if FileManager.default.isExecutableFile(atPath: path) { return path }
        }
        return nil
    }
    static func output(_ tool: String, _ args: [String]) -> (status: Int32, text: String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: tool)
        p.arguments = args
        let pipe = Pipe()
        p.standardOutput = pipe
        p.standardError = pipe
        do { try p.run() } catch { return (-1, "\(error)") }
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: data, as: UTF8.self))
    }
    /// The renderer: rsvg-convert, or real ImageMagick (the stand-in `convert` that only prints PNGs is not one).
    static let tool: (path: String, isRSVG: Bool)? = {
        if let rsvg = find("rsvg-convert") { return (rsvg, true) }
        for name in ["magick", "convert"] {
            if let tool = find(name), output(tool, ["-version"]).text.contains("Version: ImageMagick") { return (tool, false) }
        }
        return nil
    }()
    static var available: Bool { tool != nil }
    static func render(svg: String, png: String) -> (status: Int32, text: String) {
        guard let tool else { return (-1, "no renderer") }
        return output(tool.path, tool.isRSVG ? ["-o", png, svg] : [svg, png])
    }
}

func samplePlotRows() -> [EvalRow] {
    var rows: [EvalRow] = []
    for (mixer, exponent) in [("attention", 1.0), ("mamba2", 0.0), ("nsa", 0.5)] {
        for (i, l) in [256, 512, 1024, 2048, 4096].enumerated() {
            var r = sampleRow(metric: "state_bytes", value: 1000 * pow(Double(l), exponent), seqLen: l, run: "mixer=\(mixer)")
            r.mixer = mixer
            if mixer == "nsa" && i == 2 { r.value = nil; r.note = "skipped" }   // a gap in one line
            rows.append(r)
        }
    }
    return rows
}

@Suite struct PlotTests {
    @Test func svgHasTitleLabelledAxesLegendAndOneLinePerSeries() throws {
        let rows = samplePlotRows()
        let plot = try #require(EvalPlots.plot(metric: "state_bytes", rows: rows, labels: EvalSummary.labels(rows)))
        let svg = plot.svg()
        #expect(svg.hasPrefix("<svg xmlns=\"http://www.w3.org/2000/svg\""))
        #expect(svg.contains("state_bytes vs sequence length"))
        #expect(svg.contains("sequence length T (tokens, log scale)"))
        #expect(svg.contains("state_bytes (bytes) (log scale)"))
        for label in ["attention", "mamba2", "nsa"] { #expect(svg.contains(">\(label)</text>")) }
        // attention and mamba2: one polyline each; nsa: broken at the skipped point into two.
        #expect(svg.components(separatedBy: "<polyline").count - 1 == 4)
        #expect(svg.contains(">1k</text>") && svg.contains(">4k</text>"))   // log₂ ticks on x
        #expect(svg.contains("KiB") || svg.contains("MiB"))                   // byte ticks on y
        #expect(LinePlot(title: "a & b", xLabel: "<x>", yLabel: "y", yUnit: "", series: []).svg().contains("a &amp; b"))
    }

    @Test func logAxisTicks() {
        #expect(LogAxis(values: [256, 16384], base: 2).ticks() == [256, 512, 1024, 2048, 4096, 8192, 16384])
        #expect(LogAxis(values: [1, 1e6], base: 10).ticks() == [1, 10, 100, 1000, 1e4, 1e5, 1e6])
        let narrow = LogAxis(values: [3, 40], base: 10).ticks()
        #expect(narrow.count >= 3 && narrow.contains(10) && narrow.contains(20) && narrow.contains(5))
        #expect(LinearAxis(values: [0.1, 0.9], unit: "fraction").ticks() == [0, 0.2, 0.4, 0.6, 0.8, 1.0])
        #expect(LogAxis(values: [1.9, 2.56], base: 10).ticks().count >= 3)   // a narrow loss range still gets ticks
    }

    @Test func metricsAtOneLengthOrWithTooManySeriesAreNotPlotted() {
        let one = [sampleRow(seqLen: 256)]
        #expect(EvalPlots.plot(metric: "state_bytes", rows: one, labels: EvalSummary.labels(one)) == nil)
        let many = (0..<13).flatMap { i in [256, 512].map { sampleRow(seqLen: $0, run: "r\(i)") } }
        #expect(EvalPlots.plot(metric: "state_bytes", rows: many, labels: EvalSummary.labels(many)) == nil)
    }

    @Test(.enabled(if: Renderer.available, "no SVG renderer (install librsvg2-bin or imagemagick)"))
    func aPlotRendersToAPNGWithVisibleLines() throws {
        let dir = temporaryDirectory()
        let files = try EvalPlots.write(samplePlotRows(), to: dir)
        let svg = try #require(files.first { $0.lastPathComponent == "state_bytes.svg" })
        let png = dir.appendingPathComponent("state_bytes.png")
        let result = Renderer.render(svg: svg.path, png: png.path)
        #expect(result.status == 0, "\(Renderer.tool!.path): \(result.text)")
        let image = try PNGImage([UInt8](try Data(contentsOf: png)))
        #expect(image.width == Int(LinePlot.width) && image.height == Int(LinePlot.height))
        var ink = 0, seriesPixels = [0, 0, 0]
        let colours = [(0x1f, 0x77, 0xb4), (0xff, 0x7f, 0x0e), (0x2c, 0xa0, 0x2c)]
        for y in 0..<image.height {
            for x in 0..<image.width {
                let (r, g, b) = image.rgb(x, y)
                if r < 235 || g < 235 || b < 235 { ink += 1 }
                for (i, c) in colours.enumerated() where abs(r - c.0) < 30 && abs(g - c.1) < 30 && abs(b - c.2) < 30 { seriesPixels[i] += 1 }
            }
        }
        let total = image.width * image.height
        #expect(ink > total / 100 && ink < total / 2, "non-blank pixels: \(ink) of \(total)")
        #expect(seriesPixels.allSatisfy { $0 > 100 }, "pixels in each series colour: \(seriesPixels)")
    }
}

@Suite struct SummaryTests {
    @Test func oneTablePerMetricWithAColumnPerLength() {
        let text = EvalSummary.render(samplePlotRows())
        #expect(text.contains("state_bytes (bytes), batch 1"))
        #expect(text.contains("attention") && text.contains("mamba2") && text.contains("skip"))
        #expect(text.contains("4k"))
    }

    @Test func aLargeSweepGetsANoteInsteadOfTables() {
        let many = (0..<13).map { sampleRow(run: "r\($0)") }
        let text = EvalSummary.render(many)
        #expect(text.contains("13 models: per-model tables omitted") && !text.contains("state_bytes (bytes)"))
    }

    @Test func labelsAreMixersUnlessSeveralRunsShareOne() {
        let a = [sampleRow(run: "lr=0.1"), sampleRow(run: "lr=0.01")]
        #expect(Set(EvalSummary.labels(a).values) == ["lr=0.1", "lr=0.01"])
        #expect(Set(EvalSummary.labels(samplePlotRows()).values) == ["attention", "mamba2", "nsa"])
    }
}

@Suite struct MQARSummaryTests {
    @Test func bestLearningRateAndMeanAndSdOverSeeds() throws {
        typealias R = MQARSweepSummary.RunResult
        let results = [
            R(mixer: "attention", dModel: 64, seqLen: 64, numKVPairs: 4, lr: 1e-3, seed: 0, accuracy: 0.5),
            R(mixer: "attention", dModel: 64, seqLen: 64, numKVPairs: 4, lr: 1e-3, seed: 1, accuracy: 0.7),
            R(mixer: "attention", dModel: 64, seqLen: 64, numKVPairs: 4, lr: 1e-2, seed: 0, accuracy: 0.9),
            R(mixer: "attention", dModel: 64, seqLen: 64, numKVPairs: 4, lr: 1e-2, seed: 1, accuracy: 1.0),
            R(mixer: "attention", dModel: 64, seqLen: 128, numKVPairs: 8, lr: 1e-2, seed: 0, accuracy: 0.4),
            R(mixer: "attention", dModel: 64, seqLen: 128, numKVPairs: 8, lr: 1e-2, seed: 1, accuracy: nil),
            R(mixer: "mamba", dModel: 64, seqLen: 64, numKVPairs: 4, lr: 1e-2, seed: 0, accuracy: nil),
        ]
        let rows = MQARSweepSummary.aggregate(results)
        #expect(rows.count == 3)
        let first = rows[0]
        #expect(first.mixer == "attention" && first.seqLen == 64 && first.bestLR == 1e-2 && first.seeds == 2)
        #expect(abs(first.mean - 0.95) < 1e-12 && abs(first.sd - (0.005).squareRoot()) < 1e-12)
        #expect(first.meanByLR[1e-3].map { abs($0 - 0.6) < 1e-12 } == true)
        #expect(rows[1].seeds == 1 && rows[1].sd == 0 && rows[1].unfinished == 1)
        #expect(rows[2].mixer == "mamba" && rows[2].seeds == 0 && rows[2].unfinished == 1)
        let text = MQARSweepSummary.render(rows)
        #expect(text.contains("0.950 ± 0.071") && text.contains("(+1 unfinished)"))
        #expect(MQARSweepSummary.csv(rows).hasPrefix("mixer,d_model,seq_len,num_kv_pairs,best_lr,accuracy_mean,accuracy_sd,seeds,unfinished\n"))
        #expect(MQARSweepSummary.plot(rows) != nil)
    }

    @Test func finalAccuracyComesFromDoneJSON() throws {
        let dir = temporaryDirectory()
        try #"{"metrics": "accuracy=0.875;accuracy_kv4=0.9", "reason": "completed"}"#.write(to: dir.appendingPathComponent("done.json"), atomically: true, encoding: .utf8)
        #expect(MQARSweepSummary.finalAccuracy(runDirectory: dir) == 0.875)
        #expect(MQARSweepSummary.finalAccuracy(runDirectory: temporaryDirectory()) == nil)
    }
}
