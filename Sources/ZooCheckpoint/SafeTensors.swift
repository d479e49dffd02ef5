import Foundation
import ZooTensor
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

// The safetensors format (Hugging Face), as zoo writes and reads it:
//
//   bytes 0 ..< 8        N, the header length, unsigned 64-bit little-endian
//   bytes 8 ..< 8 + N    a UTF-8 JSON object, padded with spaces so the data starts 8-aligned:
//                          { "__metadata__": { "key": "value", … },            (optional, strings only)
//                            "name": { "dtype": "F32", "shape": [d0, d1, …],
//                                      "data_offsets": [begin, end] }, … }
//   bytes 8 + N ..< end  the data buffer: each tensor's elements row-major, little-endian;
//                        offsets are relative to the buffer's start
//
// zoo writes F32 only, tensors sorted by name and packed back to back, so the buffer has no holes
// and the same tensors always give the same bytes. The reader accepts any valid F32 file (any
// header order, any JSON whitespace) and refuses everything else with an error naming the file:
// it checks the whole file before it builds a single tensor, so a bad file is never half-loaded.

/// The contents of a safetensors file.
public struct SafeTensorsFile: Sendable {
    public var tensors: [String: Tensor]
    /// The `__metadata__` strings (integers such as the step or a generator state go in as
    /// decimal strings).
    public var metadata: [String: String]

    public init(tensors: [String: Tensor], metadata: [String: String] = [:]) {
        self.tensors = tensors
        self.metadata = metadata
    }
}

/// A checkpoint that cannot be written or read. `path` is the file; the message says what is
/// wrong with it.
public struct CheckpointError: Error, CustomStringConvertible, Equatable, Sendable {
    public let path: String
    public let message: String
    public init(path: String, _ message: String) {
        self.path = path
        self.message = message
    }
    public var description: String { "\(path): \(message)" }
}

public enum SafeTensors {
    /// The largest header accepted (the reference implementation's limit too).
    public static let maxHeaderBytes = 100 << 20

    // MARK: Writing

    /// The file's bytes: header then data, tensors sorted by name.
    public static func encode(_ file: SafeTensorsFile, path: String = "<memory>") throws(CheckpointError) -> [UInt8] {
        if file.tensors["__metadata__"] != nil {
            throw CheckpointError(path: path, "a tensor may not be named __metadata__ (the name is reserved for the metadata map)")
        }
        let names = file.tensors.keys.sorted()
        var header = "{"
        var fields: [String] = []
        if !file.metadata.isEmpty {
            let entries = file.metadata.keys.sorted().map { "\(jsonString($0)):\(jsonString(file.metadata[$0]!))" }
            fields.append("\"__metadata__\":{\(entries.joined(separator: ","))}")
        }
        var offset = 0
        for name in names {
            let t = file.tensors[name]!
            let end = offset + t.count * 4
            fields.append("\(jsonString(name)):{\"dtype\":\"F32\",\"shape\":[\(t.shape.map(String.init).joined(separator: ","))],\"data_offsets\":[\(offset),\(end)]}")
            offset = end
        }
        header += fields.joined(separator: ",") + "}"
        var headerBytes = Array(header.utf8)
        while (8 + headerBytes.count) % 8 != 0 { headerBytes.append(0x20) }   // align the data to 8 bytes

        var out = [UInt8]()
        out.reserveCapacity(8 + headerBytes.count + offset)
        withUnsafeBytes(of: UInt64(headerBytes.count).littleEndian) { out.append(contentsOf: $0) }
        out.append(contentsOf: headerBytes)
        for name in names {
            file.tensors[name]!.withUnsafeBufferPointer { buffer in
                #if _endian(little)
                out.append(contentsOf: UnsafeRawBufferPointer(buffer))
                #else
                for x in buffer { withUnsafeBytes(of: x.bitPattern.littleEndian) { out.append(contentsOf: $0) } }
                #endif
            }
        }
        return out
    }

    /// Writes atomically: the bytes go to a temporary file in the same directory, which is
    /// flushed to disk (fsync) and then renamed over `path`; the directory is flushed too. A crash
    /// leaves either the old file or the new one, never a mixture.
    public static func write(_ file: SafeTensorsFile, to path: String) throws(CheckpointError) {
        let bytes = try encode(file, path: path)
        let url = URL(fileURLWithPath: path)
        let directory = url.deletingLastPathComponent().path
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: directory, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw CheckpointError(path: path, "cannot write: the directory \(directory) does not exist")
        }
        let temporary = directory + "/." + url.lastPathComponent + ".tmp-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw CheckpointError(path: path, "cannot create \(temporary): \(errnoMessage())") }
        var failure: String? = nil
        bytes.withUnsafeBytes { raw in
            var done = 0
            while done < raw.count {
                let n = posixWrite(fd, raw.baseAddress! + done, raw.count - done)
                if n < 0 {
                    if errno == EINTR { continue }
                    failure = "cannot write \(temporary): \(errnoMessage())"
                    return
                }
                done += n
            }
        }
        if failure == nil && fsync(fd) != 0 { failure = "cannot flush \(temporary) to disk: \(errnoMessage())" }
        if close(fd) != 0 && failure == nil { failure = "cannot close \(temporary): \(errnoMessage())" }
        if failure == nil && rename(temporary, path) != 0 { failure = "cannot rename \(temporary) to \(path): \(errnoMessage())" }
        if let failure {
            unlink(temporary)
            throw CheckpointError(path: path, failure)
        }
        // Make the rename itself durable.
        let directoryFD = open(directory, O_RDONLY | O_CLOEXEC)
        if directoryFD >= 0 { _ = fsync(directoryFD); close(directoryFD) }
    }

    /// Writes `tensors` and `metadata` atomically (see `write(_:to:)`).
    public static func write(_ tensors: [String: Tensor], metadata: [String: String] = [:], to path: String) throws(CheckpointError) {
        try write(SafeTensorsFile(tensors: tensors, metadata: metadata), to: path)
    }

    // MARK: Reading

    /// Reads and checks a whole file; throws `CheckpointError` naming the file and the first
    /// problem found.
    public static func read(_ path: String) throws(CheckpointError) -> SafeTensorsFile {
        guard FileManager.default.fileExists(atPath: path) else {
            throw CheckpointError(path: path, "no such file")
        }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw CheckpointError(path: path, "cannot read the file (a directory, or no permission)")
        }
        return try decode([UInt8](data), path: path)
    }

    /// Parses and checks a file's bytes.
    public static func decode(_ bytes: [UInt8], path: String = "<memory>") throws(CheckpointError) -> SafeTensorsFile {
        func fail(_ message: String) -> CheckpointError { CheckpointError(path: path, message) }
        guard bytes.count >= 8 else {
            throw fail("truncated: \(bytes.count) bytes, but a safetensors file starts with an 8-byte header length")
        }
        var length: UInt64 = 0
        for i in (0..<8).reversed() { length = length << 8 | UInt64(bytes[i]) }
        guard length >= 2, length <= UInt64(maxHeaderBytes) else {
            throw fail("bad header length \(length) (must be 2 ... \(maxHeaderBytes)): corrupt, or not a safetensors file")
        }
        let headerLength = Int(length)
        guard 8 + headerLength <= bytes.count else {
            throw fail("truncated: the header length is \(headerLength) bytes but the file has only \(bytes.count - 8) after the length field")
        }
        guard bytes[8] == UInt8(ascii: "{") else {
            throw fail("bad header: it must be a JSON object starting with '{', found byte 0x\(String(bytes[8], radix: 16))")
        }
        let json: JSONValue
        do {
            var parser = JSONParser(bytes: bytes[8..<(8 + headerLength)])
            json = try parser.parseDocument()
        } catch {
            throw fail("bad header JSON: \(error.message)")
        }
        guard case .object(let members) = json else { throw fail("bad header: not a JSON object") }

        struct Entry { let name: String; let shape: [Int]; let begin: Int; let end: Int }
        let dataStart = 8 + headerLength
        let dataCount = bytes.count - dataStart
        var entries: [Entry] = []
        var metadata: [String: String] = [:]
        for (name, value) in members {
            if name == "__metadata__" {
                guard case .object(let pairs) = value else { throw fail("bad header: __metadata__ must be an object of strings") }
                for (key, item) in pairs {
                    guard case .string(let s) = item else { throw fail("bad header: __metadata__[\"\(key)\"] is not a string") }
                    metadata[key] = s
                }
                continue
            }
            guard case .object(let fields) = value else { throw fail("bad header: tensor '\(name)' must be an object") }
            var dtype: String?, shape: [Int]?, offsets: [Int]?
            for (field, item) in fields {
                switch field {
                case "dtype":
                    guard case .string(let s) = item else { throw fail("bad header: tensor '\(name)': dtype must be a string") }
                    dtype = s
                case "shape":
                    guard let dims = item.nonNegativeIntegers, dims.count <= 64 else {
                        throw fail("bad header: tensor '\(name)': shape must be a list of non-negative integers")
                    }
                    shape = dims
                case "data_offsets":
                    guard let pair = item.nonNegativeIntegers, pair.count == 2 else {
                        throw fail("bad header: tensor '\(name)': data_offsets must be [begin, end]")
                    }
                    offsets = pair
                default:
                    throw fail("bad header: tensor '\(name)' has an unknown field '\(field)' (allowed: dtype, shape, data_offsets)")
                }
            }
            guard let dtype, let shape, let offsets else {
                throw fail("bad header: tensor '\(name)' needs dtype, shape and data_offsets")
            }
            guard dtype == "F32" else {
                throw fail("tensor '\(name)' has dtype \(dtype); zoo reads only F32")
            }
            var count = shape.contains(0) ? 0 : 1
            for d in shape where count > 0 {
                let (product, overflow) = count.multipliedReportingOverflow(by: d)
                guard !overflow, product <= dataCount / 4 else {
                    throw fail("tensor '\(name)': shape \(shape) holds more elements than the file has data (truncated or corrupt)")
                }
                count = product
            }
            let (begin, end) = (offsets[0], offsets[1])
            guard begin <= end, end <= dataCount else {
                throw fail("tensor '\(name)': data_offsets [\(begin), \(end)] lie outside the data (\(dataCount) bytes): truncated or corrupt")
            }
            guard end - begin == count * 4 else {
                throw fail("tensor '\(name)': shape \(shape) needs \(count * 4) bytes of F32, but data_offsets [\(begin), \(end)] give \(end - begin)")
            }
            entries.append(Entry(name: name, shape: shape, begin: begin, end: end))
        }

        // The tensors must tile the buffer exactly: no overlap, no hole, nothing after the last.
        let byOffset = entries.sorted { ($0.begin, $0.end, $0.name) < ($1.begin, $1.end, $1.name) }
        var expected = 0
        for e in byOffset {
            if e.begin < expected {
                throw fail("tensor '\(e.name)': data_offsets [\(e.begin), \(e.end)] overlap another tensor's data")
            }
            if e.begin > expected {
                throw fail("the data has a hole at bytes \(expected) ..< \(e.begin) (before tensor '\(e.name)'): corrupt")
            }
            expected = e.end
        }
        guard expected == dataCount else {
            throw fail("the data has \(dataCount) bytes but the tensors cover \(expected): \(dataCount > expected ? "trailing bytes" : "truncated")")
        }

        var tensors: [String: Tensor] = [:]
        bytes.withUnsafeBytes { raw in
            for e in entries {
                let source = raw.baseAddress! + dataStart + e.begin
                tensors[e.name] = Tensor(shape: e.shape) { buffer in
                    guard buffer.count > 0 else { return }
                    #if _endian(little)
                    UnsafeMutableRawPointer(buffer.baseAddress!).copyMemory(from: source, byteCount: buffer.count * 4)
                    #else
                    for i in 0..<buffer.count {
                        buffer[i] = Float(bitPattern: UInt32(littleEndian: source.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self)))
                    }
                    #endif
                }
            }
        }
        return SafeTensorsFile(tensors: tensors, metadata: metadata)
    }
}

private func errnoMessage() -> String { String(cString: strerror(errno)) }

private func posixWrite(_ fd: Int32, _ buffer: UnsafeRawPointer, _ count: Int) -> Int {
    #if canImport(Glibc)
    return Glibc.write(fd, buffer, count)
    #elseif canImport(Musl)
    return Musl.write(fd, buffer, count)
    #else
    return Darwin.write(fd, buffer, count)
    #endif
}

/// A JSON string literal (RFC 8259 escapes; non-ASCII passes through as UTF-8).
func jsonString(_ s: String) -> String {
    var out = "\""
    for scalar in s.unicodeScalars {
        switch scalar {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        case _ where scalar.value < 0x20:
            let h = String(scalar.value, radix: 16)
            out += "\\u" + String(repeating: "0", count: 4 - h.count) + h
        default: out.unicodeScalars.append(scalar)
        }
    }
    return out + "\""
}

// MARK: - A strict JSON parser for the header

/// JSON values as the header needs them: numbers are kept as their text so integers are exact.
enum JSONValue {
    case object([(String, JSONValue)])
    case array([JSONValue])
    case string(String)
    case number(String)
    case bool(Bool)
    case null

    /// The value as a list of non-negative integers that fit in Int, or nil.
    var nonNegativeIntegers: [Int]? {
        guard case .array(let items) = self else { return nil }
        var out: [Int] = []
        for item in items {
            guard case .number(let text) = item, !text.isEmpty, text.utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }),
                  let n = Int(text) else { return nil }
            out.append(n)
        }
        return out
    }
}

struct JSONError: Error { let message: String }

/// RFC 8259 JSON; duplicate keys in an object are an error (they would make a header ambiguous);
/// trailing whitespace (the header's padding) is allowed, anything else after the value is not.
struct JSONParser {
    let bytes: ArraySlice<UInt8>
    var index: Int
    var depth = 0

    init(bytes: ArraySlice<UInt8>) {
        self.bytes = bytes
        self.index = bytes.startIndex
    }

    mutating func parseDocument() throws(JSONError) -> JSONValue {
        let value = try parseValue()
        skipWhitespace()
        guard index == bytes.endIndex else { throw error("unexpected '\(character(at: index))' after the end of the header object") }
        return value
    }

    private func error(_ message: String) -> JSONError {
        JSONError(message: "\(message) (at header byte \(index - bytes.startIndex))")
    }

    private func character(at i: Int) -> String {
        let b = bytes[i]
        return b >= 0x20 && b < 0x7F ? String(UnicodeScalar(b)) : "0x" + String(b, radix: 16)
    }

    private mutating func skipWhitespace() {
        while index < bytes.endIndex, [0x20, 0x09, 0x0A, 0x0D].contains(bytes[index]) { index += 1 }
    }

    private mutating func expect(_ c: UInt8) throws(JSONError) {
        skipWhitespace()
        guard index < bytes.endIndex else { throw error("unexpected end of header, expected '\(UnicodeScalar(c))'") }
        guard bytes[index] == c else { throw error("expected '\(UnicodeScalar(c))', found '\(character(at: index))'") }
        index += 1
    }

    private mutating func parseValue() throws(JSONError) -> JSONValue {
        skipWhitespace()
        guard index < bytes.endIndex else { throw error("unexpected end of header") }
        switch bytes[index] {
        case UInt8(ascii: "{"): return try parseObject()
        case UInt8(ascii: "["): return try parseArray()
        case UInt8(ascii: "\""): return .string(try parseString())
        case UInt8(ascii: "t"): try literal("true"); return .bool(true)
        case UInt8(ascii: "f"): try literal("false"); return .bool(false)
        case UInt8(ascii: "n"): try literal("null"); return .null
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return .number(try parseNumber())
        default: throw error("unexpected '\(character(at: index))'")
        }
    }

    private mutating func literal(_ word: String) throws(JSONError) {
        for c in word.utf8 {
            guard index < bytes.endIndex, bytes[index] == c else { throw error("invalid literal, expected \(word)") }
            index += 1
        }
    }

    private mutating func nest() throws(JSONError) {
        depth += 1
        if depth > 64 { throw error("nested too deeply") }
    }

    private mutating func parseObject() throws(JSONError) -> JSONValue {
        try nest()
        defer { depth -= 1 }
        index += 1
        var members: [(String, JSONValue)] = []
        var seen = Set<String>()
        skipWhitespace()
        if index < bytes.endIndex, bytes[index] == UInt8(ascii: "}") { index += 1; return .object(members) }
        while true {
            skipWhitespace()
            guard index < bytes.endIndex, bytes[index] == UInt8(ascii: "\"") else {
                throw error(index < bytes.endIndex ? "expected a key string, found '\(character(at: index))'" : "unexpected end of header in an object")
            }
            let key = try parseString()
            guard seen.insert(key).inserted else { throw error("duplicate key \"\(key)\"") }
            try expect(UInt8(ascii: ":"))
            members.append((key, try parseValue()))
            skipWhitespace()
            guard index < bytes.endIndex else { throw error("unexpected end of header in an object") }
            if bytes[index] == UInt8(ascii: ",") { index += 1; continue }
            if bytes[index] == UInt8(ascii: "}") { index += 1; return .object(members) }
            throw error("expected ',' or '}', found '\(character(at: index))'")
        }
    }

    private mutating func parseArray() throws(JSONError) -> JSONValue {
        try nest()
        defer { depth -= 1 }
        index += 1
        var items: [JSONValue] = []
        skipWhitespace()
        if index < bytes.endIndex, bytes[index] == UInt8(ascii: "]") { index += 1; return .array(items) }
        while true {
            items.append(try parseValue())
            skipWhitespace()
            guard index < bytes.endIndex else { throw error("unexpected end of header in an array") }
            if bytes[index] == UInt8(ascii: ",") { index += 1; continue }
            if bytes[index] == UInt8(ascii: "]") { index += 1; return .array(items) }
            throw error("expected ',' or ']', found '\(character(at: index))'")
        }
    }

    private mutating func parseNumber() throws(JSONError) -> String {
        let start = index
        func digits() -> Int {
            let s = index
            while index < bytes.endIndex, bytes[index] >= 48, bytes[index] <= 57 { index += 1 }
            return index - s
        }
        if bytes[index] == UInt8(ascii: "-") { index += 1 }
        let intStart = index
        guard digits() > 0 else { throw error("invalid number") }
        if index - intStart > 1 && bytes[intStart] == UInt8(ascii: "0") { throw error("invalid number (leading zero)") }
        if index < bytes.endIndex, bytes[index] == UInt8(ascii: ".") {
            index += 1
            guard digits() > 0 else { throw error("invalid number") }
        }
        if index < bytes.endIndex, bytes[index] == UInt8(ascii: "e") || bytes[index] == UInt8(ascii: "E") {
            index += 1
            if index < bytes.endIndex, bytes[index] == UInt8(ascii: "+") || bytes[index] == UInt8(ascii: "-") { index += 1 }
            guard digits() > 0 else { throw error("invalid number") }
        }
        return String(decoding: bytes[start..<index], as: UTF8.self)
    }

    private mutating func parseHex4() throws(JSONError) -> UInt32 {
        guard index + 4 <= bytes.endIndex else { throw error("truncated \\u escape") }
        var v: UInt32 = 0
        for _ in 0..<4 {
            let b = bytes[index]
            let d: UInt8
            switch b {
            case 48...57: d = b - 48
            case 65...70: d = b - 55
            case 97...102: d = b - 87
            default: throw error("invalid \\u escape")
            }
            v = v << 4 | UInt32(d)
            index += 1
        }
        return v
    }

    private mutating func parseString() throws(JSONError) -> String {
        index += 1   // opening quote
        var out: [UInt8] = []
        while true {
            guard index < bytes.endIndex else { throw error("unterminated string") }
            let b = bytes[index]
            index += 1
            switch b {
            case UInt8(ascii: "\""):
                guard let s = String(validating: out, as: UTF8.self) else { throw error("string is not valid UTF-8") }
                return s
            case UInt8(ascii: "\\"):
                guard index < bytes.endIndex else { throw error("unterminated string") }
                let e = bytes[index]
                index += 1
                switch e {
                case UInt8(ascii: "\""): out.append(0x22)
                case UInt8(ascii: "\\"): out.append(0x5C)
                case UInt8(ascii: "/"): out.append(0x2F)
                case UInt8(ascii: "b"): out.append(0x08)
                case UInt8(ascii: "f"): out.append(0x0C)
                case UInt8(ascii: "n"): out.append(0x0A)
                case UInt8(ascii: "r"): out.append(0x0D)
                case UInt8(ascii: "t"): out.append(0x09)
                case UInt8(ascii: "u"):
                    var code = try parseHex4()
                    if code >= 0xD800 && code < 0xDC00 {   // a surrogate pair
                        guard index + 2 <= bytes.endIndex, bytes[index] == UInt8(ascii: "\\"), bytes[index + 1] == UInt8(ascii: "u") else {
                            throw error("unpaired surrogate in \\u escape")
                        }
                        index += 2
                        let low = try parseHex4()
                        guard low >= 0xDC00 && low < 0xE000 else { throw error("unpaired surrogate in \\u escape") }
                        code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                    }
                    guard let scalar = Unicode.Scalar(code) else { throw error("invalid \\u escape") }
                    out.append(contentsOf: Array(String(Character(scalar)).utf8))
                default: throw error("invalid escape '\\\(character(at: index - 1))'")
                }
            case 0..<0x20: throw error("control character in a string")
            default: out.append(b)
            }
        }
    }
}
