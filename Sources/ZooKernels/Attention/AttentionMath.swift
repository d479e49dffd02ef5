// Vector helpers for the attention kernels, defined here rather than imported from ZooTensor:
// ZooTensor's `fastExp`, `vmax` and `simdScale` are `@inline(__always)` but not `@inlinable`, so
// across the module boundary they compile to calls (measured: 9 calls per softmax row strip, a
// third of the forward's time spent outside the microkernels). Same formulas as ZooTensor's.

import ZooTensor

enum Lanes {
    /// ZooTensor.fastExp (Cody–Waite reduction, degree-5 polynomial, ≤ 1 ulp on [−87.3, 88.7]);
    /// inputs below −87.3, −∞ included, give ~1e-38, so masked lanes are zeroed by the callers.
    @inline(always) static func exp(_ xIn: F16) -> F16 {
        var x = xIn.replacing(with: -87.33654, where: xIn .< -87.33654)
        x = x.replacing(with: 88.72283, where: x .> 88.72283)
        let magic = F16(repeating: 12582912.0)
        let t = magic.addingProduct(x, F16(repeating: 1.44269504088896341))
        let kf = t - magic
        var r = x.addingProduct(kf, F16(repeating: -0.693145751953125))
        r = r.addingProduct(kf, F16(repeating: -1.428606765330187045e-06))
        var p = F16(repeating: 1.3981999507e-3).addingProduct(r, F16(repeating: 1.9875691500e-4))
        p = F16(repeating: 8.3334519073e-3).addingProduct(p, r)
        p = F16(repeating: 4.1665795894e-2).addingProduct(p, r)
        p = F16(repeating: 1.6666665459e-1).addingProduct(p, r)
        p = F16(repeating: 5.0000001201e-1).addingProduct(p, r)
        p = (r + 1).addingProduct(p, r * r)
        let bits = unsafeBitCast(p, to: SIMD16<Int32>.self) &+ (unsafeBitCast(t, to: SIMD16<Int32>.self) &<< 23)
        return unsafeBitCast(bits, to: F16.self)
    }

    @inline(__always) static func exp(_ x: Float) -> Float { exp(F16(repeating: x))[0] }

    /// 2^x for the softmax's arguments (x ≤ 0, −∞ allowed): round to n, 2^(x−n) by a degree-5
    /// polynomial on [−½, ½] (a relative-error minimax fit made for this file: 9.2e-8, 1.8e-7
    /// with Float's rounding of the Horner steps), times 2^n from exponent bits. Cheaper than
    /// `exp` by the ln 2 reduction, a degree and the upper clamp; the kernels fold log2(e) into
    /// the scale instead. x < −125 gives ≤ 2^−125 (not 0), so masked lanes are zeroed by the callers.
    @inline(always) static func exp2(_ xIn: F16) -> F16 {
        let x = xIn.replacing(with: -125, where: xIn .< -125)
        let magic = F16(repeating: 12582912.0)            // 1.5·2^23: adding it rounds to an integer
        let t = x + magic
        let r = x - (t - magic)                           // x − round(x) ∈ [−½, ½]
        var p = F16(repeating: 1.3266604535321605e-3)
        p = F16(repeating: 9.6715128696639450e-3).addingProduct(p, r)
        p = F16(repeating: 5.5507272789484720e-2).addingProduct(p, r)
        p = F16(repeating: 0.24022242085777700).addingProduct(p, r)
        p = F16(repeating: 0.69314698251331970).addingProduct(p, r)
        p = F16(repeating: 1).addingProduct(p, r)
        let bits = unsafeBitCast(p, to: SIMD16<Int32>.self) &+ (unsafeBitCast(t, to: SIMD16<Int32>.self) &<< 23)
        return unsafeBitCast(bits, to: F16.self)
    }

    @inline(__always) static func exp2(_ x: Float) -> Float { exp2(F16(repeating: x))[0] }

    static let log2e: Float = 1.44269504088896341
    static let ln2: Float = 0.693147180559945309

    @inline(__always) static func max(_ a: F16, _ b: F16) -> F16 { a.replacing(with: b, where: b .> a) }

    /// Largest lane, by halving (SIMD's own .max() is a scalar loop with NaN checks).
    @inline(__always) static func maxLane(_ x: F16) -> Float {
        let a = x.lowHalf.replacing(with: x.highHalf, where: x.highHalf .> x.lowHalf)
        let b = a.lowHalf.replacing(with: a.highHalf, where: a.highHalf .> a.lowHalf)
        let c = b.lowHalf.replacing(with: b.highHalf, where: b.highHalf .> b.lowHalf)
        return Swift.max(c[0], c[1])
    }

    /// Sum of the lanes, by halving (a fixed order, so deterministic).
    @inline(__always) static func sumLanes(_ x: F16) -> Float {
        let a = x.lowHalf + x.highHalf
        let b = a.lowHalf + a.highHalf
        let c = b.lowHalf + b.highHalf
        return c[0] + c[1]
    }

    /// x[0..<n] *= alpha, n a multiple of 16.
    @inline(__always) static func scale(_ x: UnsafeMutablePointer<Float>, _ alpha: Float, _ n: Int) {
        let a = F16(repeating: alpha)
        var i = 0
        while i < n { store16(x + i, load16(x + i) * a); i += 16 }
    }

    /// tanh: Cephes' odd polynomial for |x| < 0.625 (keeps small inputs accurate, where
    /// 1 − 2/(e^{2x}+1) would lose digits to cancellation), that formula elsewhere.
    @inline(always) static func tanh(_ x: F16) -> F16 {
        let z = x * x
        var p = F16(repeating: -5.70498872745e-3)
        p = F16(repeating: 2.06390887954e-2).addingProduct(p, z)
        p = F16(repeating: -5.37397155531e-2).addingProduct(p, z)
        p = F16(repeating: 1.33314422036e-1).addingProduct(p, z)
        p = F16(repeating: -3.33332819422e-1).addingProduct(p, z)
        let small = x.addingProduct(p * z, x)
        let large = 1 - 2 / (exp(x + x) + 1)
        return large.replacing(with: small, where: z .< 0.390625)   // |x| < 0.625
    }

    @inline(__always) static func tanh(_ x: Float) -> Float { tanh(F16(repeating: x))[0] }

    /// 0, 1, …, 15.
    @inline(__always) static var index: SIMD16<Int32> { SIMD16(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15) }
}

/// dst[c·ldd + j] = row(j)[c] for j < rows, c < cols (any sizes): 16×16 blocks where they fit,
/// scalar copies at the edges.
@inline(__always) func transposeRows(_ rows: Int, _ cols: Int, row: (Int) -> UnsafePointer<Float>,
                                     into dst: UnsafeMutablePointer<Float>, ldd: Int) {
    var j0 = 0
    while j0 + 16 <= rows {
        var c0 = 0
        while c0 + 16 <= cols {
            transpose16x16(rows: { row(j0 + $0) + c0 }, into: dst + c0 * ldd + j0, ldd: ldd)
            c0 += 16
        }
        for j in j0..<(j0 + 16) {
            let r = row(j)
            for c in c0..<cols { dst[c * ldd + j] = r[c] }
        }
        j0 += 16
    }
    for j in j0..<rows {
        let r = row(j)
        for c in 0..<cols { dst[c * ldd + j] = r[c] }
    }
}
