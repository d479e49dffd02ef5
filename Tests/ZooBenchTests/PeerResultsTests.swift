import Testing
import Foundation
@testable import ZooBench

/// Reading the CSV files that ../shared/bench/bench_peers.py writes (Python's csv module: CRLF line
/// ends, fields with commas quoted).
@Suite struct PeerResultsTests {
    func write(_ text: String) throws -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("peer-\(UUID().uuidString).csv").path
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    @Test func trainingRowsMapToZooMixerNamesAndSkipFailedPeers() throws {
        let path = try write("""
        mixer,status,step_median_ms,step_min_ms,tokens_per_s,params,peak_rss_mb,loss_first,loss_last,contended_runs,other_load_before,note\r
        attn,ok,346.8,316.4,11809.7,853120,946.1,5.6952,5.016,0,0.01,\r
        ssd,ok_contended,929.0,893.5,4409.3,1060528,1494.1,5.7079,4.3308,4,0.0,"slow, shared"\r
        loglinear,ok,1181.4,1158.4,3467.1,1081008,1775.0,5.7039,4.3013,0,0.03,\r
        nsa,failed,,,,,,,,,,"timeout"\r

        """)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let rates = try PeerResults.trainingTokensPerSecond(csv: path)
        #expect(rates == ["attention": 11809.7, "mamba2": 4409.3, "loglinear_mamba2": 3467.1])
    }

    @Test func mixerRowsAreFilteredByImplModeAndStatus() throws {
        let path = try write("""
        mixer,impl,L,mode,status,median_ms,min_ms,runs,warmup_ms,tokens_per_s,gflops,peak_rss_mb,setup_rss_mb,contended_runs,other_load_before,note
        nsa,ref,8192,fwd,ok,4446.3,4400,5,5000,1842.0,,,,0,0,
        nsa,ref,8192,fwdbwd,ok,11046.6,11000,5,12000,742.0,,,,0,0,
        nsa,lucidrains_layer,8192,fwdbwd,failed,,,,,,,,,,,"out of memory, 24 GB"
        nsa,ref,16384,fwdbwd,ok,30000,29000,3,31000,546.1,,,,0,0,"a ""quoted"" note"
        nsa,ref,16384,fwdbwd,ok,28000,27000,3,29000,585.1,,,,0,0,re-run
        nsa,ref,32768,fwdbwd,failed,,,,,,,,,,,MemoryError
        """)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let rates = try PeerResults.mixerTokensPerSecond(csv: path, mixer: "nsa", impl: "ref", mode: "fwdbwd")
        #expect(rates == [8192: 742.0, 16384: 585.1])
    }

    @Test func quotedFieldsKeepTheirCommasAndQuotes() {
        #expect(PeerResults.splitCSVLine(#"a,"b, c","say ""hi""",,x"#) == ["a", "b, c", #"say "hi""#, "", "x"])
    }

    /// A CSV with `contents` must be refused with an error that names each of `mentioning(path)`.
    func expectRejected(_ contents: String, _ what: String, mentioning: (String) -> [String],
                        sourceLocation: SourceLocation = #_sourceLocation) throws {
        let path = try write(contents)
        defer { try? FileManager.default.removeItem(atPath: path) }
        do {
            _ = try PeerResults.trainingTokensPerSecond(csv: path)
            Issue.record("\(what) was accepted", sourceLocation: sourceLocation)
        } catch {
            for text in mentioning(path) {
                #expect("\(error)".contains(text), "\(what): the error does not name \(text)", sourceLocation: sourceLocation)
            }
        }
    }

    @Test func badFilesNameThePathAndWhatIsWrong() throws {
        let missing = "/nonexistent/peer.csv"
        #expect(throws: PeerResults.ReadError.self) { try PeerResults.trainingTokensPerSecond(csv: missing) }
        do { _ = try PeerResults.trainingTokensPerSecond(csv: missing) } catch {
            #expect("\(error)".contains(missing))
        }
        try expectRejected("mixer,status,step_median_ms\nattn,ok,300\n", "a CSV without tokens_per_s",
                           mentioning: { path in ["tokens_per_s", path] })
        try expectRejected("mixer,status,tokens_per_s\nattn,ok,fast\n", "a non-numeric tokens_per_s",
                           mentioning: { path in ["\(path):2", "fast"] })
        let ragged = try write("mixer,status,tokens_per_s\nattn,ok\n")
        defer { try? FileManager.default.removeItem(atPath: ragged) }
        #expect(throws: PeerResults.ReadError.self) { try PeerResults.trainingTokensPerSecond(csv: ragged) }
    }
}

extension PeerResultsTests {
    @Test func kernelFiguresPairBothModesOrFallBack() throws {
        let path = try write("""
        mixer,impl,L,mode,status,tokens_per_s
        ssd,chunked64,2048,fwd,ok,120000
        ssd,chunked64,2048,fwdbwd,ok,50000
        ssd,chunked64,4096,fwd,ok,110000
        ssd,naive,2048,fwdbwd,ok,1400
        """)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let measured = try PeerResults.kernelTokensPerSecond(csv: path, mixer: "ssd", impl: "chunked64", fallback: [2048: (1, 1)])
        #expect(measured.count == 2)
        #expect(measured[2048]?.fwdBwd == 50000 && measured[2048]?.fwd == 120000)
        #expect(measured[4096]?.fwdBwd == nil && measured[4096]?.fwd == 110000)
        #expect(PeerResults.ratio(100000, over: measured[4096]?.fwdBwd) == "–")
        let fallback = try PeerResults.kernelTokensPerSecond(csv: nil, mixer: "ssd", impl: "chunked64", fallback: [2048: (3, 4)])
        #expect(fallback[2048]?.fwdBwd == 3 && fallback[2048]?.fwd == 4)
    }
}
