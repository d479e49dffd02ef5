// Vector helpers of the kernels that ZooTensor's SIMD.swift does not have: the softmax's exp2,
// tanh, lane reductions in a fixed halving order, and the NSA kernels' row helpers. Everything
// else (load16, store16, vmax, fastExp, simdAxpy, simdScale) comes from ZooTensor, whose helpers
// are `@inlinable`, so they inline here as these do. `@inline(always)` on the larger ones: the
// optimiser otherwise leaves some as calls inside hot loops (../shared/notes/swift-cpu.md §3c).

import ZooTensor

enum Lanes {
    /// 2^x for the softmax's arguments (x ≤ 0, −∞ allowed): round to n, 2^(x−n) by a degree-5
    /// polynomial on [−½, ½] (a relative-error minimax fit made for this file: 9.2e-8, 1.8e-7
    /// with Float's rounding of the Horner steps), times 2^n from exponent bits. Cheaper than
    /// `fastExp` by the ln 2 reduction, a degree and the upper clamp; the kernels fold log2(e) into
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
        let large = 1 - 2 / (fastExp(x + x) + 1)
        return large.replacing(with: small, where: z .< 0.390625)   // |x| < 0.625
    }

    @inline(__always) static func tanh(_ x: Float) -> Float { tanh(F16(repeating: x))[0] }

    /// 0, 1, …, 15.
    @inline(__always) static var index: SIMD16<Int32> { SIMD16(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15) }

    /// Maximum of n ≥ 1 floats (ZooTensor's `simdMax` reduces its last vector with SIMD's .max(),
    /// a scalar loop with NaN checks; this one by halving).
    @inline(always) static func max(_ p: UnsafePointer<Float>, _ n: Int) -> Float {
        var m0 = F16(repeating: -.infinity), m1 = m0
        var i = 0
        while i + 32 <= n { m0 = vmax(m0, load16(p + i)); m1 = vmax(m1, load16(p + i + 16)); i += 32 }
        if i + 16 <= n { m0 = vmax(m0, load16(p + i)); i += 16 }
        var m = maxLane(vmax(m0, m1))
        while i < n { if p[i] > m { m = p[i] }; i += 1 }
        return m
    }

    /// dst = alpha · src
    @inline(always) static func scaledCopy(_ dst: UnsafeMutablePointer<Float>, _ src: UnsafePointer<Float>, _ alpha: Float, _ n: Int) {
        let a = F16(repeating: alpha)
        var i = 0
        while i + 16 <= n { store16(dst + i, load16(src + i) * a); i += 16 }
        while i < n { dst[i] = src[i] * alpha; i += 1 }
    }

    /// Σ a·b with two accumulators (fixed order), the lanes summed by halving.
    @inline(always) static func dot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ n: Int) -> Float {
        var a0 = F16(), a1 = F16()
        var i = 0
        while i + 32 <= n {
            a0 = a0.addingProduct(load16(a + i), load16(b + i)); a1 = a1.addingProduct(load16(a + i + 16), load16(b + i + 16)); i += 32
        }
        if i + 16 <= n { a0 = a0.addingProduct(load16(a + i), load16(b + i)); i += 16 }
        var s = sumLanes(a0 + a1)
        while i < n { s += a[i] * b[i]; i += 1 }
        return s
    }
}
