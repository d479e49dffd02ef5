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
    public init(headDim: Int, base: Double = 10_000) {
        precondition(headDim % 2 == 0 && headDim > 0, "RotaryEmbedding: head dim must be even and positive, got \(headDim)")
        self.headDim = headDim
        self.base = base
    }

    /// cos and sin tables [T, d/2] for positions offset..<offset+T (computed in Double).
    func tables(length: Int, offset: Int) -> (cos: [Float], sin: [Float]) {
        let half = headDim / 2
        var c = [Float](repeating: 0, count: length * half), s = c
        for t in 0..<length {
            let p = Double(offset + t)
            for i in 0..<half {
                let angle = p * Foundation.pow(base, -2 * Double(i) / Double(headDim))
                c[t * half + i] = Float(Foundation.cos(angle)); s[t * half + i] = Float(Foundation.sin(angle))
            }
        }
        return (c, s)
    }

    /// Rotates a plain tensor [B, T, H, d] (decoding; `offset` = position of the first token).
    public func apply(_ x: Tensor, offset: Int = 0, inverse: Bool = false) -> Tensor {
        precondition(x.rank == 4 && x.shape[3] == headDim, "RotaryEmbedding: input \(describe(x.shape)) is not [B, T, H, \(headDim)]")
        let (b, t, h) = (x.shape[0], x.shape[1], x.shape[2])
        let half = headDim / 2
        let (ct, st) = tables(length: t, offset: offset)
        let sign: Float = inverse ? -1 : 1
        var y = Tensor(uninitializedShape: x.shape)
        let py = y.mutablePointer(), px = x.pointer
        for bi in 0..<b {
            for ti in 0..<t {
                for hi in 0..<h {
                    let base = ((bi * t + ti) * h + hi) * headDim
                    for i in 0..<half {
                        let c = ct[ti * half + i], s = sign * st[ti * half + i]
                        let x0 = px[base + i], x1 = px[base + i + half]
                        py[base + i] = x0 * c - x1 * s
                        py[base + i + half] = x0 * s + x1 * c
                    }
                }
            }
        }
        return y
    }

    public func callAsFunction(_ x: Variable, offset: Int = 0) -> Variable {
        let y = apply(x.value, offset: offset)
        return record(y, inputs: [x]) { g in [self.apply(g, offset: offset, inverse: true)] }
    }
}
