// Permute, transpose, slice, concatenation, broadcasting copies and row gathers. All materialise.

extension Tensor {
    /// Reorders the axes: result axis i is input axis `order[i]`.
    public func permuted(_ order: [Int]) -> Tensor {
        validate { () throws(ShapeError) in
            guard order.count == rank, Set(order) == Set(0..<rank) else {
                throw ShapeError("permute", "order \(order) is not a permutation of the axes of shape \(describe(shape))")
            }
        }
        if order == Array(0..<rank) { return self }
        let outShape = order.map { shape[$0] }
        let inStrides = strides
        let srcStrides = order.map { inStrides[$0] }
        var out = Tensor(uninitializedShape: outShape)
        if count == 0 { return out }
        let po = SendablePointer(out.mutablePointer()), px = SendablePointer(storage.pointer)
        let inner = outShape[rank - 1], innerStride = srcStrides[rank - 1]
        if innerStride != 1, let pivot = (0..<(rank - 1)).last(where: { srcStrides[$0] == 1 && outShape[$0] > 1 }) {
            permuteTiled(px, po, outShape: outShape, srcStrides: srcStrides, pivot: pivot)
            return out
        }
        let rows = count / inner
        let outer = Array(outShape.dropLast())
        ZooThreads.parallelFor(rows, minChunk: Swift.max(1, 16384 / Swift.max(inner, 1))) { range in
            var idx = unravel(range.lowerBound, outer)
            for row in range {
                var off = 0
                for d in 0..<(rank - 1) { off += idx[d] * srcStrides[d] }
                let dst = po + row * inner
                if innerStride == 1 { dst.update(from: px + off, count: inner) }
                else { for j in 0..<inner { dst[j] = px[off + j * innerStride] } }
                increment(&idx, outer)
            }
        }
        return out
    }

    /// The permute whose last output axis is strided in the source (a transpose, e.g. [B,T,E] →
    /// [B,E,T]): the row-by-row gather would read one float per cache line, so the work goes in
    /// 16×16 tiles of (pivot axis, last axis), where `pivot` is the output axis that walks the
    /// source's contiguous axis. Each tile reads 16 source runs of 16 floats and writes 16 output
    /// runs of 16, so both sides touch whole cache lines.
    private func permuteTiled(_ px: SendablePointer<Float>, _ po: SendablePointer<Float>, outShape: [Int], srcStrides: [Int], pivot: Int) {
        let rank = outShape.count
        let cols = outShape[rank - 1], colStride = srcStrides[rank - 1]
        let pivotCount = outShape[pivot]
        let outStrides = Tensor.strides(of: outShape)
        let pivotOutStride = outStrides[pivot]
        // The remaining axes, walked with an odometer: one (pivot × last) plane per index.
        let otherAxes = (0..<(rank - 1)).filter { $0 != pivot }
        let otherShape = otherAxes.map { outShape[$0] }
        let planes = otherShape.reduce(1, *)
        let tile = 16
        let pivotTiles = (pivotCount + tile - 1) / tile, colTiles = (cols + tile - 1) / tile
        let work = planes * pivotTiles
        ZooThreads.parallelFor(work, minChunk: Swift.max(1, 16384 / Swift.max(tile * cols, 1))) { range in
            for w in range {
                let plane = w / pivotTiles, p0 = (w % pivotTiles) * tile
                let p1 = Swift.min(pivotCount, p0 + tile)
                var srcBase = 0, dstBase = 0, rest = plane
                for a in stride(from: otherAxes.count - 1, through: 0, by: -1) {
                    let i = rest % otherShape[a]; rest /= otherShape[a]
                    srcBase += i * srcStrides[otherAxes[a]]; dstBase += i * outStrides[otherAxes[a]]
                }
                for ct in 0..<colTiles {
                    let c0 = ct * tile, c1 = Swift.min(cols, c0 + tile)
                    if p1 - p0 == tile && c1 - c0 == tile {
                        // A whole tile: 16 source runs in, transposed in registers, 16 runs out.
                        transpose16x16(rows: { UnsafePointer(px.pointer + srcBase + p0 + (c0 + $0) * colStride) },
                                       into: po.pointer + dstBase + p0 * pivotOutStride + c0, ldd: pivotOutStride)
                        continue
                    }
                    for p in p0..<p1 {
                        let dst = po.pointer + dstBase + p * pivotOutStride
                        let src = px.pointer + srcBase + p
                        for c in c0..<c1 { dst[c] = src[c * colStride] }
                    }
                }
            }
        }
    }

    /// Swaps two axes.
    public func transposed(_ a: Int = -2, _ b: Int = -1) -> Tensor {
        let (x, y) = validate { () throws(ShapeError) in
            (try ShapeCheck.axis(a, rank: rank, op: "transpose", shape: shape),
             try ShapeCheck.axis(b, rank: rank, op: "transpose", shape: shape))
        }
        var order = Array(0..<rank)
        order.swapAt(x, y)
        return permuted(order)
    }

    /// Elements `range` along `axis`.
    public func slice(axis: Int, _ range: Range<Int>) -> Tensor {
        let ax = validate { () throws(ShapeError) -> Int in
            let ax = try ShapeCheck.axis(axis, rank: rank, op: "slice", shape: shape)
            guard range.lowerBound >= 0, range.upperBound <= shape[ax] else {
                throw ShapeError("slice", "range \(range) is out of bounds for axis \(axis) of shape \(describe(shape))")
            }
            return ax
        }
        let (outer, n, inner) = splitAround(ax)
        var outShape = shape; outShape[ax] = range.count
        var out = Tensor(uninitializedShape: outShape)
        let po = SendablePointer(out.mutablePointer()), px = SendablePointer(storage.pointer)
        let block = range.count * inner
        ZooThreads.parallelFor(outer, minChunk: Swift.max(1, 32768 / Swift.max(block, 1))) { rows in
            for o in rows { (po + o * block).update(from: px + (o * n + range.lowerBound) * inner, count: block) }
        }
        return out
    }

    /// Concatenation along `axis`; all other sizes must agree.
    public static func concatenate(_ parts: [Tensor], axis: Int) -> Tensor {
        precondition(!parts.isEmpty, "concatenate: no tensors given")
        let first = parts[0]
        let ax = validate { () throws(ShapeError) -> Int in
            let ax = try ShapeCheck.axis(axis, rank: first.rank, op: "concatenate", shape: first.shape)
            for p in parts.dropFirst() {
                var a = p.shape, b = first.shape
                guard a.count == b.count else {
                    throw ShapeError("concatenate", "ranks differ: \(describe(first.shape)) and \(describe(p.shape))")
                }
                a[ax] = 0; b[ax] = 0
                guard a == b else {
                    throw ShapeError("concatenate", "shapes \(describe(first.shape)) and \(describe(p.shape)) differ outside axis \(axis)")
                }
            }
            return ax
        }
        var outShape = first.shape
        outShape[ax] = parts.reduce(0) { $0 + $1.shape[ax] }
        var out = Tensor(uninitializedShape: outShape)
        let po = SendablePointer(out.mutablePointer())
        let outer = first.shape[..<ax].reduce(1, *), inner = first.shape[(ax + 1)...].reduce(1, *)
        let outBlock = outShape[ax] * inner
        let sources = parts.map { SendablePointer($0.storage.pointer) }, blocks = parts.map { $0.shape[ax] * inner }
        // Row by row of the output, all parts at once: each output row is written in one sweep.
        ZooThreads.parallelFor(outer, minChunk: Swift.max(1, 32768 / Swift.max(outBlock, 1))) { rows in
            for o in rows {
                var offset = o * outBlock
                for (src, block) in zip(sources, blocks) {
                    (po + offset).update(from: src + o * block, count: block)
                    offset += block
                }
            }
        }
        return out
    }

    /// Splits along `axis` into pieces of the given sizes (the inverse of `concatenate`).
    public func split(axis: Int, sizes: [Int]) -> [Tensor] {
        let ax = validate { () throws(ShapeError) -> Int in
            let ax = try ShapeCheck.axis(axis, rank: rank, op: "split", shape: shape)
            guard sizes.reduce(0, +) == shape[ax], sizes.allSatisfy({ $0 >= 0 }) else {
                throw ShapeError("split", "sizes \(sizes) do not add up to \(shape[ax]) along axis \(axis) of shape \(describe(shape))")
            }
            return ax
        }
        // One sweep over the source rows writes every piece (rather than one sweep per piece).
        let (outer, n, inner) = splitAround(ax)
        var pieces = sizes.map { s -> Tensor in var sh = shape; sh[ax] = s; return Tensor(uninitializedShape: sh) }
        let destinations = pieces.indices.map { SendablePointer(pieces[$0].mutablePointer()) }
        let blocks = sizes.map { $0 * inner }
        let px = SendablePointer(storage.pointer)
        ZooThreads.parallelFor(outer, minChunk: Swift.max(1, 32768 / Swift.max(n * inner, 1))) { rows in
            for o in rows {
                var offset = o * n * inner
                for (dst, block) in zip(destinations, blocks) {
                    (dst + o * block).update(from: px + offset, count: block)
                    offset += block
                }
            }
        }
        return pieces
    }

    /// Materialises broadcasting to `target`.
    public func broadcast(to target: [Int]) -> Tensor {
        if shape == target { return self }
        return Tensor.zeros(target) + self
    }

    /// Rows of a [rows, width] (or [rows, ...]) tensor picked by index: result [indices.count, ...].
    public func gatherRows(_ indices: [Int]) -> Tensor {
        precondition(rank >= 1, "gatherRows: needs rank ≥ 1, shape is \(describe(shape))")
        let rows = shape[0], width = rows == 0 ? 0 : count / rows
        validate { () throws(ShapeError) in
            if let bad = indices.first(where: { $0 < 0 || $0 >= rows }) {
                throw ShapeError("gatherRows", "index \(bad) is out of range for \(rows) rows (shape \(describe(shape)))")
            }
        }
        var out = Tensor(uninitializedShape: [indices.count] + shape.dropFirst())
        let po = out.mutablePointer()
        for (i, r) in indices.enumerated() { (po + i * width).update(from: storage.pointer + r * width, count: width) }
        return out
    }

    /// Adds rows of `source` into the rows of a zero tensor of `rows` rows (the gradient of a gather;
    /// repeated indices accumulate, in order).
    public static func scatterAddRows(_ source: Tensor, indices: [Int], rows: Int) -> Tensor {
        let width = indices.isEmpty ? 0 : source.count / indices.count
        var out = Tensor.zeros([rows] + source.shape.dropFirst())
        let po = out.mutablePointer()
        for (i, r) in indices.enumerated() {
            precondition(r >= 0 && r < rows, "scatterAddRows: index \(r) is out of range for \(rows) rows")
            simdAxpy(1, source.pointer + i * width, po + r * width, width)
        }
        return out
    }
}
