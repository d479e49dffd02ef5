import Testing
import Foundation
import ZooTensor
@testable import ZooCheckpoint

/// A scratch directory removed when the test ends.
final class TemporaryDirectory {
    let path: String
    init() {
        path = NSTemporaryDirectory() + "zoo-checkpoint-test-" + UUID().uuidString
        try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }
    deinit { try? FileManager.default.removeItem(atPath: path) }
    var files: [String] { (try? FileManager.default.contentsOfDirectory(atPath: path))?.sorted() ?? [] }
}

func fixture(_ name: String) throws -> (path: String, bytes: [UInt8]) {
    let url = try #require(Bundle.module.url(forResource: name, withExtension: "safetensors", subdirectory: "Fixtures"))
    return (url.path, [UInt8](try Data(contentsOf: url)))
}

/// The tensors of Fixtures/make_fixtures.py.
let fixtureTensors: [String: Tensor] = [
    "embedding.weight": Tensor(shape: [3, 4], scalars: (0..<12).map { Float($0) * 0.25 - 1 }),
    "layers.0.mixer.bias": Tensor(shape: [5], scalars: [0, -0.0, 1.5, -2.75, Float(Double(3.0e-38))]),
    "layers.0.norm.scale": Tensor(shape: [], scalars: [7]),
    "empty": Tensor(shape: [0, 3], scalars: []),
    "layers.1.big": Tensor(shape: [2, 2, 2], scalars: (-4..<4).map { Float(pow(2.0, Double($0))) }),
]
let fixtureMetadata = ["step": "1234", "rng": "18446744073709551557", "note": "quote \" backslash \\ newline \n é"]

/// Same names, shapes and bits.
func expectIdentical(_ a: [String: Tensor], _ b: [String: Tensor], sourceLocation: SourceLocation = #_sourceLocation) {
    #expect(a.keys.sorted() == b.keys.sorted(), sourceLocation: sourceLocation)
    for (name, t) in a {
        guard let u = b[name] else { continue }
        #expect(t.shape == u.shape, "\(name) shape", sourceLocation: sourceLocation)
        #expect(t.scalars.map(\.bitPattern) == u.scalars.map(\.bitPattern), "\(name) bits", sourceLocation: sourceLocation)
    }
}

/// A file from a header text and data bytes, with the length field set to the header's size.
func craft(_ header: String, data: [UInt8] = [], length: UInt64? = nil) -> [UInt8] {
    let h = Array(header.utf8)
    var out = [UInt8]()
    withUnsafeBytes(of: (length ?? UInt64(h.count)).littleEndian) { out += $0 }
    return out + h + data
}

func refusal(_ bytes: [UInt8]) -> String? {
    do { _ = try SafeTensors.decode(bytes, path: "bad.safetensors"); return nil } catch { return error.description }
}

@Suite struct SafeTensorsFormat {
    @Test func roundTripsThroughAFile() throws {
        var g = SeededGenerator(seed: 1)
        let tensors: [String: Tensor] = [
            "blocks.0.mixer.in_proj.weight": Tensor.normal([64, 32], generator: &g),
            "blocks.0.norm.weight": Tensor.ones([32]),
            "scalar": Tensor.scalar(-3.5),
            "zero": Tensor.zeros([4, 0]),
            "special": Tensor(shape: [4], scalars: [.infinity, -.infinity, .nan, .leastNonzeroMagnitude]),
            "ünïcode name/with \"quotes\"": Tensor.normal([3], generator: &g),
        ]
        let metadata = ["step": "\(Int.max)", "rng": "\(UInt64.max)", "position": #"{"epoch":1,"source":"a \"b\""}"#, "empty": ""]
        let dir = TemporaryDirectory()
        let path = dir.path + "/model.safetensors"
        try SafeTensors.write(tensors, metadata: metadata, to: path)
        let back = try SafeTensors.read(path)
        expectIdentical(back.tensors, tensors)
        #expect(back.metadata == metadata)
        #expect(dir.files == ["model.safetensors"], "no temporary file is left behind")
        // Writing is deterministic and the data starts 8-aligned.
        let bytes = try SafeTensors.encode(SafeTensorsFile(tensors: tensors, metadata: metadata))
        #expect(bytes == [UInt8](try Data(contentsOf: URL(fileURLWithPath: path))))
        let headerLength = bytes[0..<8].reversed().reduce(0) { $0 << 8 | Int($1) }
        #expect((8 + headerLength) % 8 == 0)
        // Empty files too.
        try SafeTensors.write([:], to: path)
        #expect(try SafeTensors.read(path).tensors.isEmpty)
    }

    @Test func readsFilesWrittenFromTheSpecificationAndWritesTheSameBytes() throws {
        let canonical = try fixture("canonical"), loose = try fixture("loose")
        for f in [canonical, loose] {
            let file = try SafeTensors.read(f.path)
            expectIdentical(file.tensors, fixtureTensors)
            #expect(file.metadata == fixtureMetadata)
        }
        // zoo writes exactly what the specification-following Python writer wrote…
        #expect(try SafeTensors.encode(SafeTensorsFile(tensors: fixtureTensors, metadata: fixtureMetadata)) == canonical.bytes)
        // …and what the reference implementation (safetensors 0.8.0) wrote.
        let official = try fixture("official")
        let file = try SafeTensors.read(official.path)
        expectIdentical(file.tensors, fixtureTensors)
        #expect(file.metadata == ["step": "1234"])
        #expect(try SafeTensors.encode(file) == official.bytes)
    }

    @Test func everyTruncationIsRefusedNamingTheFile() throws {
        let bytes = try fixture("canonical").bytes
        for cut in 0..<bytes.count {
            #expect(refusal(Array(bytes[0..<cut]))?.hasPrefix("bad.safetensors: ") == true, "cut at \(cut)")
        }
        // Through the file system as well, at a few points.
        let dir = TemporaryDirectory()
        for cut in [0, 5, 8, 100, 8 + 456, bytes.count - 1] {
            let path = dir.path + "/cut\(cut).safetensors"
            try Data(bytes[0..<cut]).write(to: URL(fileURLWithPath: path))
            #expect(throws: CheckpointError.self) { try SafeTensors.read(path) }
            do { _ = try SafeTensors.read(path) } catch {
                #expect(error.path == path)
                #expect(error.message.contains("truncated"), "cut \(cut): \(error.message)")
            }
        }
        do { _ = try SafeTensors.read(dir.path + "/missing.safetensors") } catch {
            #expect(error.description == dir.path + "/missing.safetensors: no such file")
        }
    }

    @Test func damagedHeadersAreRefused() throws {
        let bytes = try fixture("canonical").bytes
        let headerEnd = 8 + bytes[0..<8].reversed().reduce(0) { $0 << 8 | Int($1) }
        // Setting the top bit of any header byte breaks the JSON or its UTF-8 (the header is ASCII
        // apart from the 'é', whose bytes then stop being UTF-8).
        for i in 8..<headerEnd {
            var damaged = bytes
            damaged[i] ^= 0x80
            #expect(refusal(damaged) != nil, "byte \(i) '\(UnicodeScalar(bytes[i]))' flipped")
        }
        // Any change to the length field.
        for i in 0..<8 {
            for flip: UInt8 in [0x01, 0x08, 0x10, 0x80, 0xFF] {
                var damaged = bytes
                damaged[i] ^= flip
                #expect(refusal(damaged) != nil, "length byte \(i) ^ \(flip)")
            }
        }
        // Changing one digit of a shape or an offset (digits outside strings) makes them
        // inconsistent, except a zero-size tensor's other dimensions, which change nothing.
        var inString = false, escaped = false
        for i in 8..<headerEnd {
            let b = bytes[i]
            if inString {
                if escaped { escaped = false } else if b == 0x5C { escaped = true } else if b == 0x22 { inString = false }
                continue
            }
            if b == 0x22 { inString = true; continue }
            guard (48...57).contains(b) else { continue }
            for replacement in UInt8(48)...UInt8(57) where replacement != b {
                var damaged = bytes
                damaged[i] = replacement
                if refusal(damaged) == nil {
                    let file = try SafeTensors.decode(damaged)
                    #expect(file.tensors["empty"]?.count == 0 && file.tensors["empty"]?.shape != [0, 3],
                            "digit at \(i) \(UnicodeScalar(b)) → \(UnicodeScalar(replacement)) accepted")
                    var others = file.tensors
                    others["empty"] = fixtureTensors["empty"]
                    expectIdentical(others, fixtureTensors)
                }
            }
        }
    }

    @Test func eachKindOfCorruptionHasAClearMessage() {
        let data16 = [UInt8](repeating: 0, count: 16)
        func entry(_ name: String = "w", dtype: String = "F32", shape: String = "[4]", offsets: String = "[0,16]") -> String {
            "\"\(name)\":{\"dtype\":\"\(dtype)\",\"shape\":\(shape),\"data_offsets\":\(offsets)}"
        }
        let cases: [(String, [UInt8], String)] = [
            ("short file", [1, 2, 3], "truncated: 3 bytes"),
            ("length beyond the file", craft("{}", length: 1000), "truncated: the header length is 1000"),
            ("absurd length", craft("{}", length: UInt64.max), "bad header length"),
            ("zero length", craft("", length: 0), "bad header length 0"),
            ("not an object", craft("[1,2]"), "must be a JSON object"),
            ("bad JSON", craft("{\"w\":{\"dtype\":\"F32\",}}"), "bad header JSON"),
            ("garbage after the object", craft("{}x"), "after the end of the header object"),
            ("unsupported dtype", craft("{\(entry(dtype: "BF16", offsets: "[0,8]"))}", data: [UInt8](repeating: 0, count: 8)), "dtype BF16; zoo reads only F32"),
            ("offsets outside the file", craft("{\(entry(offsets: "[0,32]"))}", data: data16), "outside the data (16 bytes)"),
            ("offsets backwards", craft("{\(entry(offsets: "[16,0]"))}", data: data16), "outside the data"),
            ("overlap", craft("{\(entry("a", shape: "[2]", offsets: "[0,8]")),\(entry("b", shape: "[3]", offsets: "[4,16]"))}", data: data16), "overlap"),
            ("hole", craft("{\(entry("a", shape: "[2]", offsets: "[0,8]")),\(entry("b", shape: "[1]", offsets: "[12,16]"))}", data: data16), "hole at bytes 8 ..< 12"),
            ("trailing data", craft("{\(entry(shape: "[2]", offsets: "[0,8]"))}", data: data16), "trailing bytes"),
            ("shape and size disagree", craft("{\(entry(shape: "[2,3]"))}", data: data16 + data16), "needs 24 bytes of F32"),
            ("huge shape", craft("{\(entry(shape: "[4294967296,4294967296]"))}", data: data16), "more elements than the file has data"),
            ("negative dimension", craft("{\(entry(shape: "[-4]"))}", data: data16), "shape must be a list of non-negative integers"),
            ("fractional offset", craft("{\(entry(offsets: "[0,16.0]"))}", data: data16), "data_offsets must be [begin, end]"),
            ("missing field", craft("{\"w\":{\"dtype\":\"F32\",\"shape\":[4]}}", data: data16), "needs dtype, shape and data_offsets"),
            ("unknown field", craft("{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16],\"x\":1}}", data: data16), "unknown field 'x'"),
            ("duplicate tensor", craft("{\(entry()),\(entry())}", data: data16), "duplicate key \"w\""),
            ("metadata not strings", craft("{\"__metadata__\":{\"step\":12}}"), "__metadata__[\"step\"] is not a string"),
            ("invalid UTF-8", craft("{\"\u{00E9}\":1}").map { $0 == 0xA9 ? 0xFF : $0 }, "not valid UTF-8"),
            ("leading whitespace", craft(" {}"), "starting with '{'"),
        ]
        for (what, bytes, expected) in cases {
            let message = refusal(bytes)
            #expect(message?.contains(expected) == true, "\(what): \(message ?? "accepted")")
            #expect(message?.hasPrefix("bad.safetensors: ") == true, "\(what) names the file")
        }
        // Valid edge cases are accepted: padding, whitespace, escapes, an empty header.
        #expect(refusal(craft("{}      ")) == nil)
        #expect(refusal(craft("{ \"w\" : { \"shape\" : [ 4 ] , \"data_offsets\" : [ 0 , 16 ], \"dtype\" : \"F32\" } }", data: data16)) == nil)
        let escaped = try? SafeTensors.decode(craft("{\"__metadata__\":{\"k\\u00e9\\ud83d\\ude00\":\"a\\/b\\tc\"}}"))
        #expect(escaped?.metadata == ["ké😀": "a/b\tc"])
    }

    @Test func writingIsAtomicAndRefusesWhatItCannotWrite() throws {
        let dir = TemporaryDirectory()
        let path = dir.path + "/ckpt.safetensors"
        try SafeTensors.write(["a": Tensor.ones([2])], metadata: ["step": "1"], to: path)
        // Replacing an existing checkpoint.
        try SafeTensors.write(["a": Tensor.full([3], 2)], metadata: ["step": "2"], to: path)
        let file = try SafeTensors.read(path)
        #expect(file.tensors["a"]?.scalars == [2, 2, 2] && file.metadata == ["step": "2"])
        // A failed write leaves the old file untouched and no temporary file behind.
        #expect(throws: CheckpointError.self) { try SafeTensors.write(["__metadata__": Tensor.ones([1])], to: path) }
        #expect(try SafeTensors.read(path).metadata == ["step": "2"])
        #expect(dir.files == ["ckpt.safetensors"])
        do {
            try SafeTensors.write(["a": Tensor.ones([1])], to: dir.path + "/missing/ckpt.safetensors")
            Issue.record("wrote into a missing directory")
        } catch {
            #expect(error.path == dir.path + "/missing/ckpt.safetensors" && error.message.contains("does not exist"))
        }
    }
}
