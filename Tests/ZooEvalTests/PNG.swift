import Foundation

/// A minimal PNG reader for checking rendered plots: 8-bit greyscale/RGB/RGBA, non-interlaced,
/// with its own DEFLATE decoder (RFC 1951, after zlib's puff.c structure) so the test needs no
/// image library.
struct PNGImage {
    let width: Int, height: Int, channels: Int
    /// Row-major bytes, `channels` per pixel.
    let pixels: [UInt8]

    enum Failure: Error { case notPNG, unsupported(String), corrupt(String) }

    init(_ data: [UInt8]) throws {
        guard data.count > 8, data[0..<8].elementsEqual([137, 80, 78, 71, 13, 10, 26, 10]) else { throw Failure.notPNG }
        var pos = 8, idat: [UInt8] = []
        var w = 0, h = 0, colorType = 0, depth = 0, interlace = 0
        func be32(_ i: Int) -> Int { Int(data[i]) << 24 | Int(data[i + 1]) << 16 | Int(data[i + 2]) << 8 | Int(data[i + 3]) }
        while pos + 8 <= data.count {
            let length = be32(pos)
            let type = String(decoding: data[(pos + 4)..<(pos + 8)], as: UTF8.self)
            let body = (pos + 8)..<(pos + 8 + length)
            guard body.upperBound + 4 <= data.count else { throw Failure.corrupt("chunk \(type) overruns the file") }
            if type == "IHDR" {
                w = be32(body.lowerBound); h = be32(body.lowerBound + 4)
                depth = Int(data[body.lowerBound + 8]); colorType = Int(data[body.lowerBound + 9]); interlace = Int(data[body.lowerBound + 12])
            } else if type == "IDAT" {
                idat += data[body]
            } else if type == "IEND" { break }
            pos = body.upperBound + 4
        }
        guard depth == 8, interlace == 0 else { throw Failure.unsupported("bit depth \(depth), interlace \(interlace)") }
        let channels: Int
        switch colorType { case 0: channels = 1; case 2: channels = 3; case 4: channels = 2; case 6: channels = 4
        default: throw Failure.unsupported("colour type \(colorType)") }
        guard idat.count > 2 else { throw Failure.corrupt("no image data") }
        var inflater = Inflater(Array(idat[2...]))
        let raw = try inflater.inflate()
        let stride = w * channels
        guard raw.count >= h * (stride + 1) else { throw Failure.corrupt("\(raw.count) bytes for \(w)×\(h)×\(channels)") }
        var out = [UInt8](repeating: 0, count: h * stride)
        for y in 0..<h {
            let filter = raw[y * (stride + 1)]
            let src = y * (stride + 1) + 1
            for x in 0..<stride {
                let a = x >= channels ? Int(out[y * stride + x - channels]) : 0
                let b = y > 0 ? Int(out[(y - 1) * stride + x]) : 0
                let c = (x >= channels && y > 0) ? Int(out[(y - 1) * stride + x - channels]) : 0
                let v = Int(raw[src + x])
                let predicted: Int
                switch filter {
                case 0: predicted = 0
                case 1: predicted = a
                case 2: predicted = b
                case 3: predicted = (a + b) / 2
                case 4:
                    let p = a + b - c, pa = abs(p - a), pb = abs(p - b), pc = abs(p - c)
                    predicted = pa <= pb && pa <= pc ? a : (pb <= pc ? b : c)
                default: throw Failure.corrupt("filter \(filter)")
                }
                out[y * stride + x] = UInt8((v + predicted) & 0xff)
            }
        }
        width = w; height = h; self.channels = channels; pixels = out
    }

    /// RGB of pixel (x, y), alpha composited over white.
    func rgb(_ x: Int, _ y: Int) -> (Int, Int, Int) {
        let i = (y * width + x) * channels
        switch channels {
        case 1, 2:
            let g = Int(pixels[i]), a = channels == 2 ? Int(pixels[i + 1]) : 255
            let v = (g * a + 255 * (255 - a)) / 255
            return (v, v, v)
        default:
            let a = channels == 4 ? Int(pixels[i + 3]) : 255
            func over(_ c: UInt8) -> Int { (Int(c) * a + 255 * (255 - a)) / 255 }
            return (over(pixels[i]), over(pixels[i + 1]), over(pixels[i + 2]))
        }
    }
}

struct Inflater {
    let input: [UInt8]
    var pos = 0, bitBuffer = 0, bitCount = 0
    var output: [UInt8] = []

    init(_ input: [UInt8]) { self.input = input }

    struct Huffman { var counts = [Int](repeating: 0, count: 16); var symbols: [Int] = [] }

    mutating func bits(_ n: Int) throws -> Int {
        while bitCount < n {
            guard pos < input.count else { throw PNGImage.Failure.corrupt("deflate stream ends early") }
            bitBuffer |= Int(input[pos]) << bitCount; pos += 1; bitCount += 8
        }
        let v = bitBuffer & ((1 << n) - 1)
        bitBuffer >>= n; bitCount -= n
        return v
    }

    static func huffman(_ lengths: [Int]) -> Huffman {
        var h = Huffman()
        for l in lengths { h.counts[l] += 1 }
        h.counts[0] = 0
        var offsets = [Int](repeating: 0, count: 16)
        for l in 1..<15 { offsets[l + 1] = offsets[l] + h.counts[l] }
        h.symbols = [Int](repeating: 0, count: lengths.count)
        for (s, l) in lengths.enumerated() where l != 0 { h.symbols[offsets[l]] = s; offsets[l] += 1 }
        return h
    }

    mutating func decode(_ h: Huffman) throws -> Int {
        var code = 0, first = 0, index = 0
        for len in 1...15 {
            code |= try bits(1)
            let count = h.counts[len]
            if code - count < first { return h.symbols[index + code - first] }
            index += count; first += count; first <<= 1; code <<= 1
        }
        throw PNGImage.Failure.corrupt("bad Huffman code")
    }

    static let lengthBase = [3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258]
    static let lengthExtra = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0]
    static let distanceBase = [1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537, 2049, 3073,
                               4097, 6145, 8193, 12289, 16385, 24577]
    static let distanceExtra = [0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13]

    mutating func codes(_ lit: Huffman, _ dist: Huffman) throws {
        while true {
            let symbol = try decode(lit)
            if symbol < 256 { output.append(UInt8(symbol)); continue }
            if symbol == 256 { return }
            let li = symbol - 257
            guard li < 29 else { throw PNGImage.Failure.corrupt("length symbol \(symbol)") }
            let length = Inflater.lengthBase[li] + (try bits(Inflater.lengthExtra[li]))
            let di = try decode(dist)
            guard di < 30 else { throw PNGImage.Failure.corrupt("distance symbol \(di)") }
            let distance = Inflater.distanceBase[di] + (try bits(Inflater.distanceExtra[di]))
            guard distance <= output.count else { throw PNGImage.Failure.corrupt("distance too far back") }
            for _ in 0..<length { output.append(output[output.count - distance]) }
        }
    }

    mutating func inflate() throws -> [UInt8] {
        var last = 0
        repeat {
            last = try bits(1)
            switch try bits(2) {
            case 0:
                bitBuffer = 0; bitCount = 0
                guard pos + 4 <= input.count else { throw PNGImage.Failure.corrupt("stored block header") }
                let len = Int(input[pos]) | Int(input[pos + 1]) << 8
                pos += 4
                guard pos + len <= input.count else { throw PNGImage.Failure.corrupt("stored block") }
                output += input[pos..<(pos + len)]; pos += len
            case 1:
                let lit = Inflater.huffman((0..<288).map { $0 < 144 ? 8 : $0 < 256 ? 9 : $0 < 280 ? 7 : 8 })
                try codes(lit, Inflater.huffman([Int](repeating: 5, count: 30)))
            case 2:
                let nlen = try bits(5) + 257, ndist = try bits(5) + 1, ncode = try bits(4) + 4
                let order = [16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15]
                var codeLengths = [Int](repeating: 0, count: 19)
                for i in 0..<ncode { codeLengths[order[i]] = try bits(3) }
                let lencode = Inflater.huffman(codeLengths)
                var lengths: [Int] = []
                while lengths.count < nlen + ndist {
                    let sym = try decode(lencode)
                    if sym < 16 { lengths.append(sym); continue }
                    var value = 0, repeatCount = 0
                    if sym == 16 {
                        guard let prev = lengths.last else { throw PNGImage.Failure.corrupt("repeat with no previous length") }
                        value = prev; repeatCount = 3 + (try bits(2))
                    } else if sym == 17 { repeatCount = 3 + (try bits(3)) } else { repeatCount = 11 + (try bits(7)) }
                    lengths += [Int](repeating: value, count: repeatCount)
                }
                try codes(Inflater.huffman(Array(lengths[0..<nlen])), Inflater.huffman(Array(lengths[nlen..<(nlen + ndist)])))
            default:
                throw PNGImage.Failure.corrupt("block type 3")
            }
        } while last == 0
        return output
    }
}
