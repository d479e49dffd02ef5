/// A caller's mistake in shapes, axes or indices. Each message names the operation and the shapes
/// involved. Non-throwing tensor operations validate through the `throws` checks below and stop
/// with the same message (`fatalError`, which survives every optimisation level).
public struct ShapeError: Error, CustomStringConvertible, Equatable {
    public let operation: String
    public let message: String
    public init(_ operation: String, _ message: String) {
        self.operation = operation
        self.message = message
    }
    public var description: String { "\(operation): \(message)" }
}

/// Formats a shape as `[2, 3, 4]`.
@inlinable public func describe(_ shape: [Int]) -> String { "[" + shape.map(String.init).joined(separator: ", ") + "]" }

/// Runs a validation and stops the process with its message when it fails.
@inline(__always) public func validate<T>(_ check: () throws(ShapeError) -> T) -> T {
    do { return try check() } catch { fatalError(error.description) }
}

public enum ShapeCheck {
    /// The broadcast shape of two shapes (NumPy rules: align right; sizes equal or one is 1).
    public static func broadcast(_ a: [Int], _ b: [Int], op: String) throws(ShapeError) -> [Int] {
        let rank = max(a.count, b.count)
        var out = [Int](repeating: 1, count: rank)
        for i in 0..<rank {
            let da = i < rank - a.count ? 1 : a[i - (rank - a.count)]
            let db = i < rank - b.count ? 1 : b[i - (rank - b.count)]
            if da == db || db == 1 { out[i] = da }
            else if da == 1 { out[i] = db }
            else {
                throw ShapeError(op, "shapes \(describe(a)) and \(describe(b)) do not broadcast (axis \(i): \(da) vs \(db))")
            }
        }
        return out
    }

    /// An axis in −rank..<rank, normalised to 0..<rank.
    public static func axis(_ axis: Int, rank: Int, op: String, shape: [Int]) throws(ShapeError) -> Int {
        let a = axis < 0 ? axis + rank : axis
        guard a >= 0 && a < rank else {
            throw ShapeError(op, "axis \(axis) is out of range for shape \(describe(shape)) (rank \(rank))")
        }
        return a
    }

    /// The shape after `reshape`, with at most one −1 inferred.
    public static func reshape(_ from: [Int], to: [Int], op: String = "reshape") throws(ShapeError) -> [Int] {
        let count = from.reduce(1, *)
        var inferred: Int? = nil
        var known = 1
        for (i, d) in to.enumerated() {
            if d == -1 {
                if inferred != nil { throw ShapeError(op, "more than one −1 in target shape \(describe(to))") }
                inferred = i
            } else if d < 0 {
                throw ShapeError(op, "negative size in target shape \(describe(to))")
            } else { known *= d }
        }
        var out = to
        if let i = inferred {
            guard known > 0, count % known == 0 else {
                throw ShapeError(op, "cannot reshape \(describe(from)) (\(count) elements) to \(describe(to))")
            }
            out[i] = count / known
        }
        guard out.reduce(1, *) == count else {
            throw ShapeError(op, "cannot reshape \(describe(from)) (\(count) elements) to \(describe(to))")
        }
        return out
    }

    /// Shapes of a (batched) matmul: a [..., m, k] · b [..., k, n] (after the transposes).
    public static func matmul(_ a: [Int], _ b: [Int], transA: Bool, transB: Bool, op: String = "matmul")
        throws(ShapeError) -> (batch: [Int], m: Int, n: Int, k: Int) {
        guard a.count >= 2, b.count >= 2 else {
            throw ShapeError(op, "operands need rank ≥ 2, got \(describe(a)) and \(describe(b))")
        }
        let m = transA ? a[a.count - 1] : a[a.count - 2]
        let ka = transA ? a[a.count - 2] : a[a.count - 1]
        let kb = transB ? b[b.count - 1] : b[b.count - 2]
        let n = transB ? b[b.count - 2] : b[b.count - 1]
        guard ka == kb else {
            throw ShapeError(op, "inner dimensions differ: \(describe(a))\(transA ? "ᵀ" : "") · \(describe(b))\(transB ? "ᵀ" : "") (\(ka) vs \(kb))")
        }
        let batchA = Array(a.dropLast(2)), batchB = Array(b.dropLast(2))
        if !batchB.isEmpty && batchA != batchB {
            throw ShapeError(op, "batch dimensions differ: \(describe(a)) and \(describe(b)); b must have the same batch shape as a, or be a plain matrix")
        }
        return (batchA, m, n, ka)
    }
}
