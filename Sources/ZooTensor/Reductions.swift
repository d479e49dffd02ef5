// Reductions along axes, and softmax / logsumexp along the last axis.

extension Tensor {
    /// View of the shape around one axis: [outer, n, inner].
    func splitAround(_ axis: Int) -> (outer: Int, n: Int, inner: Int) {
        (shape[..<axis].reduce(1, *), shape[axis], shape[(axis + 1)...].reduce(1, *))
    }

    private func reduceAxis(_ axis: Int, op: String, isMax: Bool) -> Tensor {
        let (outer, n, inner) = splitAround(axis)
        var outShape = shape; outShape[axis] = 1
        if isMax && n == 0 { fatalError("\(op): cannot take the maximum over an empty axis \(axis) of shape \(describe(shape))") }
        var out = Tensor(uninitializedShape: outShape)
        let po = SendablePointer(out.mutablePointer()), px = SendablePointer(storage.pointer)
        if inner == 1 {
            ZooThreads.parallelFor(outer, minChunk: Swift.max(1, parallelElementThreshold / Swift.max(n, 1))) { r in
                for o in r { po[o] = isMax ? simdMax(px + o * n, n) : simdSum(px + o * n, n) }
            }
        } else {
            ZooThreads.parallelFor(outer, minChunk: Swift.max(1, parallelElementThreshold / Swift.max(n * inner, 1))) { r in
                for o in r {
                    let dst = po + o * inner
                    let src = px + o * n * inner
                    dst.update(from: src, count: inner)
                    for j in 1..<Swift.max(n, 1) {
                        let row = src + j * inner
                        if isMax {
                            var i = 0
                            while i + 16 <= inner { store16(dst + i, vmax(load16(dst + i), load16(row + i))); i += 16 }
                            while i < inner { if row[i] > dst[i] { dst[i] = row[i] }; i += 1 }
                        } else {
                            simdAxpy(1, row, dst, inner)
                        }
                    }
                    if n == 0 { dst.update(repeating: 0, count: inner) }
                }
            }
        }
        return out
    }

    private func reduce(_ axes: [Int], keepDims: Bool, op: String, isMax: Bool) -> Tensor {
        let normalised = validate { () throws(ShapeError) -> [Int] in
            var out: [Int] = []
            for a in axes { out.append(try ShapeCheck.axis(a, rank: rank, op: op, shape: shape)) }
            return out
        }
        let unique = Array(Set(normalised)).sorted(by: >)
        var result = self
        for a in unique { result = result.reduceAxis(a, op: op, isMax: isMax) }
        if !keepDims { result = result.reshaped(shape.enumerated().filter { !unique.contains($0.offset) }.map(\.element)) }
        return result
    }

    /// Sum over the given axes (all axes when empty).
    public func sum(axes: [Int] = [], keepDims: Bool = false) -> Tensor {
        if axes.isEmpty { return Tensor.scalar(simdSum(pointer, count)).reshaped(keepDims ? shape.map { _ in 1 } : []) }
        return reduce(axes, keepDims: keepDims, op: "sum", isMax: false)
    }
    public func sum(axis: Int, keepDims: Bool = false) -> Tensor { sum(axes: [axis], keepDims: keepDims) }

    /// Mean over the given axes (all axes when empty).
    public func mean(axes: [Int] = [], keepDims: Bool = false) -> Tensor {
        let total = sum(axes: axes, keepDims: keepDims)
        let reduced = axes.isEmpty ? count : axes.map { shape[$0 < 0 ? $0 + rank : $0] }.reduce(1, *)
        return total * (1 / Float(Swift.max(reduced, 1)))
    }
    public func mean(axis: Int, keepDims: Bool = false) -> Tensor { mean(axes: [axis], keepDims: keepDims) }

    /// Maximum over the given axes (all axes when empty).
    public func max(axes: [Int] = [], keepDims: Bool = false) -> Tensor {
        if axes.isEmpty {
            precondition(count > 0, "max: empty tensor of shape \(describe(shape))")
            return Tensor.scalar(simdMax(pointer, count)).reshaped(keepDims ? shape.map { _ in 1 } : [])
        }
        return reduce(axes, keepDims: keepDims, op: "max", isMax: true)
    }
    public func max(axis: Int, keepDims: Bool = false) -> Tensor { max(axes: [axis], keepDims: keepDims) }

    /// Sums a broadcast result back to `target` (the reverse of broadcasting; used by gradients).
    public func sumToShape(_ target: [Int]) -> Tensor {
        if shape == target { return self }
        let pad = rank - target.count
        precondition(pad >= 0, "sumToShape: cannot reduce \(describe(shape)) to the larger shape \(describe(target))")
        var axes: [Int] = Array(0..<pad)
        for (i, d) in target.enumerated() where d == 1 && shape[pad + i] != 1 { axes.append(pad + i) }
        let reduced = axes.isEmpty ? self : sum(axes: axes, keepDims: true)
        return reduced.reshaped(target)
    }

    // MARK: Softmax family (last axis)

    /// softmax over the last axis: e^(x − max) / Σ e^(x − max).
    public func softmax() -> Tensor {
        precondition(rank >= 1, "softmax: needs rank ≥ 1, got a scalar")
        let n = shape[rank - 1], rows = n == 0 ? 0 : count / n
        var out = Tensor(uninitializedShape: shape)
        let po = SendablePointer(out.mutablePointer()), px = SendablePointer(storage.pointer)
        ZooThreads.parallelFor(rows, minChunk: Swift.max(1, 16384 / Swift.max(n, 1))) { r in
            for row in r { softmaxRow(px + row * n, po + row * n, n) }
        }
        return out
    }

    /// log Σ exp over the last axis (shape loses the last axis), computed stably.
    public func logsumexp() -> Tensor {
        precondition(rank >= 1, "logsumexp: needs rank ≥ 1, got a scalar")
        let n = shape[rank - 1], rows = n == 0 ? 0 : count / n
        var out = Tensor(uninitializedShape: Array(shape.dropLast()))
        let po = SendablePointer(out.mutablePointer()), px = SendablePointer(storage.pointer)
        ZooThreads.parallelFor(rows, minChunk: Swift.max(1, 16384 / Swift.max(n, 1))) { r in
            for row in r { po[row] = logSumExpRow(px + row * n, n) }
        }
        return out
    }
}

/// Stable softmax of one row (3 passes: max, exp and sum, scale).
@inline(__always) public func softmaxRow(_ x: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Float>, _ n: Int) {
    let m = simdMax(x, n)
    let vm = F16(repeating: m)
    var s0 = F16(), s1 = F16()
    var i = 0
    while i + 32 <= n {
        let e0 = fastExp(load16(x + i) - vm), e1 = fastExp(load16(x + i + 16) - vm)
        store16(out + i, e0); store16(out + i + 16, e1); s0 += e0; s1 += e1; i += 32
    }
    while i + 16 <= n { let e = fastExp(load16(x + i) - vm); store16(out + i, e); s0 += e; i += 16 }
    var s = (s0 + s1).sum()
    while i < n { let e = fastExp(x[i] - m); out[i] = e; s += e; i += 1 }
    simdScale(out, 1 / s, n)
}

/// Stable log Σ exp of one row.
@inline(__always) public func logSumExpRow(_ x: UnsafePointer<Float>, _ n: Int) -> Float {
    let m = simdMax(x, n)
    if m == -.infinity { return -.infinity }
    let vm = F16(repeating: m)
    var s0 = F16(), s1 = F16()
    var i = 0
    while i + 32 <= n { s0 += fastExp(load16(x + i) - vm); s1 += fastExp(load16(x + i + 16) - vm); i += 32 }
    while i + 16 <= n { s0 += fastExp(load16(x + i) - vm); i += 16 }
    var s = (s0 + s1).sum()
    while i < n { s += fastExp(x[i] - m); i += 1 }
    return m + Foundation.log(s)
}

import Foundation
