// Mean-pooling compression φ for NSA (the parameter-free option; the learned MLP φ lives in the
// mixer layer, which hands its output to the attention kernels as kCmp/vCmp).
//
//   x [B, T, H, D] → y [B, Nc, H, D],  y[b, i, h] = (1/l) Σ_{u = i·d}^{i·d + l − 1} x[b, u, h],
//   Nc = ⌊(T − l)/d⌋ + 1 (0 when T < l). Backward: dx[b, u, h] = (1/l) Σ_{i : u ∈ block i} dy[b, i, h].

import ZooTensor

/// Mean-pooled compressed blocks of `x` [B, T, H, D] with the options' block length and stride.
public func nsaCompressMean(_ x: Tensor, options o: NSAOptions = NSAOptions()) -> Tensor {
    if x.rank != 4 { fatalError("nsaCompressMean: x must be [B, T, H, D], got \(x.shape)") }
    o.validate("nsaCompressMean")
    let B = x.shape[0], T = x.shape[1], H = x.shape[2], D = x.shape[3]
    let Nc = o.compressedCount(keys: T), width = H * D
    var y = Tensor.zeros([B, Nc, H, D])
    let src = SendablePointer(UnsafeMutablePointer(mutating: x.pointer)), dst = SendablePointer(y.mutablePointer())
    let inv = 1 / Float(o.compressBlock)
    ZooThreads.parallelFor(B * Nc, minChunk: 16) { range in
        for item in range {
            let b = item / max(Nc, 1), i = item % max(Nc, 1)
            let out = dst.pointer + (b * Nc + i) * width
            for u in (i * o.compressStride) ..< (i * o.compressStride + o.compressBlock) {
                simdAxpy(1, src.pointer + (b * T + u) * width, out, width)
            }
            simdScale(out, inv, width)
        }
    }
    withExtendedLifetime(x) {}
    return y
}

/// Gradient of `nsaCompressMean`: dy [B, Nc, H, D] → dx [B, T, H, D] for `tokens` = T.
public func nsaCompressMeanBackward(_ dy: Tensor, tokens T: Int, options o: NSAOptions = NSAOptions()) -> Tensor {
    o.validate("nsaCompressMeanBackward")
    let Nc = o.compressedCount(keys: T)
    if dy.rank != 4 || dy.shape[1] != Nc {
        fatalError("nsaCompressMeanBackward: dy must be [B, Nc = \(Nc), H, D] for T = \(T), got \(dy.shape)")
    }
    let B = dy.shape[0], H = dy.shape[2], D = dy.shape[3], width = H * D
    var dx = Tensor.zeros([B, T, H, D])
    let src = SendablePointer(UnsafeMutablePointer(mutating: dy.pointer)), dst = SendablePointer(dx.mutablePointer())
    let inv = 1 / Float(o.compressBlock)
    // Each token gathers from the blocks that contain it (one owner per output row).
    ZooThreads.parallelFor(B * T, minChunk: 64) { range in
        for item in range {
            let b = item / T, u = item % T
            // Blocks i with i·d ≤ u < i·d + l.
            let iHi = min(Nc - 1, u / o.compressStride)
            let iLo = max(0, (u - o.compressBlock + o.compressStride) / o.compressStride)
            if iLo > iHi { continue }
            let out = dst.pointer + (b * T + u) * width
            for i in iLo...iHi where u < i * o.compressStride + o.compressBlock {
                simdAxpy(inv, src.pointer + (b * Nc + i) * width, out, width)
            }
        }
    }
    withExtendedLifetime(dy) {}
    return dx
}
