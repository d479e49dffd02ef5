import Foundation
import ZooTensor
import ZooAutograd

/// Rotary position embedding (RoFormer; the "half-split" pairing of GPT-NeoX and Llama):
/// for x [B, T, H, d] at absolute positions p = offset + t, pairs (i, i + d/2), i < d/2, rotate by
/// angle p·θ_i with θ_i = base^(−2i/d):
///   y_i = x_i cos − x_{i+d/2} sin,   y_{i+d/2} = x_i sin + x_{i+d/2} cos.
/// The backward is the rotation by −angle (the map is orthogonal).
public struct RotaryEmbedding: Sendable {
    public let headDim: Int
    public let base: Double
    /// The cos/sin tables of the last (length, offset) asked for: training asks for the same
    /// positions every step, and rebuilding them (a pow, cos and sin in Double per entry) cost as
    /// much as the rotation itself.
    private let cache = RotaryTableCache()

    public init(headDim: Int, base: Double = 10_000) {
        precondition(headDim % 2 == 0 && headDim > 0, "RotaryEmbedding: head dim must be even and positive, got \(headDim)")
        self.headDim = headDim
        self.base = base
    }

    /// cos and sin tables [T, d/2] for positions offset..<offset+T (computed in Double).
    func tables(length: Int, offset: Int) -> RotaryTables {
        if let hit = cache.lookup(length: length, offset: offset) { return hit }
        let half = headDim / 2
        var c = [Float](repeating: 0, count: length * half), s = c
        for t in 0..<length {
            let p = Double(offset + t)
            for i in 0..<half {
                let angle = p * Foundation.pow(base, -2 * Double(i) / Double(headDim))
                c[t * half + i] = Float(Foundation.cos(angle)); s[t * half + i] = Float(Foundation.sin(angle))
            }
        }
        let tables = RotaryTables(length: length, offset: offset, cos: c, sin: s)
        cache.store(tables)
        return tables
    }

    /// Rotates a plain tensor [B, T, H, d] (decoding; `offset` = position of the first token).
    public func apply(_ x: Tensor, offset: Int = 0, inverse: Bool = false) -> Tensor {
        precondition(x.rank == 4 && x.shape[3] == headDim, "RotaryEmbedding: input \(describe(x.shape)) is not [B, T, H, \(headDim)]")
        let (b, t, h) = (x.shape[0], x.shape[1], x.shape[2])
        let half = headDim / 2, d = headDim
        var y = Tensor(uninitializedShape: x.shape)
        if b * t * h == 0 { return y }
        let tables = tables(length: t, offset: offset)
        let py = SendablePointer(y.mutablePointer()), px = SendablePointer(UnsafeMutablePointer(mutating: x.pointer))
        // One token's H heads per item; the inner loop runs over contiguous halves and vectorises.
        // The sign is folded into the sine table read, so inverse is the same loop.
        let sign: Float = inverse ? -1 : 1
        tables.cos.withUnsafeBufferPointer { cosTable in
            tables.sin.withUnsafeBufferPointer { sinTable in
                let cosBase = SendablePointer(UnsafeMutablePointer(mutating: cosTable.baseAddress!))
                let sinBase = SendablePointer(UnsafeMutablePointer(mutating: sinTable.baseAddress!))
                ZooThreads.parallelFor(b * t, minChunk: max(1, 16_384 / max(h * d, 1))) { rows in
                    for row in rows {
                        let ti = row % t
                        let c = cosBase.pointer + ti * half, s = sinBase.pointer + ti * half
                        for hi in 0..<h {
                            let src = px.pointer + (row * h + hi) * d, dst = py.pointer + (row * h + hi) * d
                            for i in 0..<half {
                                let si = sign * s[i]
                                let x0 = src[i], x1 = src[i + half]
                                dst[i] = x0 * c[i] - x1 * si
                                dst[i + half] = x0 * si + x1 * c[i]
                            }
                        }
                    }
                }
            }
        }
        withExtendedLifetime(x) {}
        return y
    }

    public func callAsFunction(_ x: Variable, offset: Int = 0) -> Variable {
        let y = apply(x.value, offset: offset)
        return record(y, inputs: [x]) { g in [self.apply(g, offset: offset, inverse: true)] }
    }
}

/// Rotation tables for positions offset..<offset+length, [length, d/2] each.
struct RotaryTables: Sendable {
    let length: Int, offset: Int
    let cos: [Float], sin: [Float]
}

/// The last tables built (one entry: a model asks for one (length, offset) per step in training,
/// and decode's single positions are cheap to rebuild). Locked: layers may run on several threads.
private final class RotaryTableCache: @unchecked Sendable {
    private let lock = NSLock()
    private var last: RotaryTables?

    func lookup(length: Int, offset: Int) -> RotaryTables? {
        lock.lock(); defer { lock.unlock() }
        guard let last, last.length == length, last.offset == offset else { return nil }
        return last
    }

    func store(_ tables: RotaryTables) {
        lock.lock(); defer { lock.unlock() }
        last = tables
    }
}
