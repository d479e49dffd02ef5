// Vector helpers for the NSA kernels, defined in this module rather than imported: ZooTensor's
// `load16`, `store16`, `fastExp`, `simdMax`, `simdAxpy`… are `@inline(__always)` but not
// `@inlinable`, so across the module boundary each use compiles to a call (perf showed them as
// separate symbols in the forward's hot loops). `@inline(always)` inlines them here (Swift 6.3,
// ../shared/notes/swift-cpu.md §3c). The formulas are ZooTensor's, so results match it.

import ZooTensor

enum NSALanes {
    @inline(always) static func load(_ p: UnsafePointer<Float>) -> F16 { UnsafeRawPointer(p).loadUnaligned(as: F16.self) }
    @inline(always) static func load(_ p: UnsafeMutablePointer<Float>) -> F16 { UnsafeRawPointer(p).loadUnaligned(as: F16.self) }
    @inline(always) static func store(_ p: UnsafeMutablePointer<Float>, _ v: F16) {
        UnsafeMutableRawPointer(p).storeBytes(of: v, as: F16.self)
    }

    /// ZooTensor.fastExp: Cody–Waite reduction, degree-5 polynomial, ≤ 1 ulp on [−87.3, 88.7];
    /// inputs below −87.3 give ~1e-38 (callers zero masked entries themselves).
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
    @inline(always) static func exp(_ x: Float) -> Float { exp(F16(repeating: x))[0] }

    @inline(always) static func vmax(_ a: F16, _ b: F16) -> F16 { a.replacing(with: b, where: b .> a) }

    /// Largest lane by halving (the stdlib's .max() is a scalar loop with NaN checks).
    @inline(always) static func maxLane(_ x: F16) -> Float {
        let a = x.lowHalf.replacing(with: x.highHalf, where: x.highHalf .> x.lowHalf)
        let b = a.lowHalf.replacing(with: a.highHalf, where: a.highHalf .> a.lowHalf)
        let c = b.lowHalf.replacing(with: b.highHalf, where: b.highHalf .> b.lowHalf)
        return c[0] > c[1] ? c[0] : c[1]
    }

    /// Sum of the lanes by halving (the stdlib's .sum() is a generic, non-inlined lane loop).
    @inline(always) static func sumLanes(_ x: F16) -> Float {
        let a = x.lowHalf + x.highHalf
        let b = a.lowHalf + a.highHalf
        let c = b.lowHalf + b.highHalf
        return c[0] + c[1]
    }

    /// Maximum of n ≥ 1 floats.
    @inline(always) static func max(_ p: UnsafePointer<Float>, _ n: Int) -> Float {
        var m0 = F16(repeating: -.infinity), m1 = m0
        var i = 0
        while i + 32 <= n { m0 = vmax(m0, load(p + i)); m1 = vmax(m1, load(p + i + 16)); i += 32 }
        if i + 16 <= n { m0 = vmax(m0, load(p + i)); i += 16 }
        var m = maxLane(vmax(m0, m1))
        while i < n { if p[i] > m { m = p[i] }; i += 1 }
        return m
    }

    /// y += alpha · x
    @inline(always) static func axpy(_ alpha: Float, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, _ n: Int) {
        let a = F16(repeating: alpha)
        var i = 0
        while i + 16 <= n { store(y + i, load(y + i).addingProduct(a, load(x + i))); i += 16 }
        while i < n { y[i] += alpha * x[i]; i += 1 }
    }

    /// y = x + alpha · y  (an accumulator rescaled, then a new contribution added)
    @inline(always) static func scaleAdd(_ y: UnsafeMutablePointer<Float>, _ alpha: Float, _ x: UnsafePointer<Float>, _ n: Int) {
        let a = F16(repeating: alpha)
        var i = 0
        while i + 16 <= n { store(y + i, load(x + i).addingProduct(a, load(y + i))); i += 16 }
        while i < n { y[i] = x[i] + alpha * y[i]; i += 1 }
    }

    /// x *= alpha
    @inline(always) static func scale(_ x: UnsafeMutablePointer<Float>, _ alpha: Float, _ n: Int) {
        let a = F16(repeating: alpha)
        var i = 0
        while i + 16 <= n { store(x + i, load(x + i) * a); i += 16 }
        while i < n { x[i] *= alpha; i += 1 }
    }

    /// dst = alpha · src
    @inline(always) static func scaledCopy(_ dst: UnsafeMutablePointer<Float>, _ src: UnsafePointer<Float>, _ alpha: Float, _ n: Int) {
        let a = F16(repeating: alpha)
        var i = 0
        while i + 16 <= n { store(dst + i, load(src + i) * a); i += 16 }
        while i < n { dst[i] = src[i] * alpha; i += 1 }
    }

    /// Σ a·b with two accumulators (fixed order).
    @inline(always) static func dot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ n: Int) -> Float {
        var a0 = F16(), a1 = F16()
        var i = 0
        while i + 32 <= n {
            a0 = a0.addingProduct(load(a + i), load(b + i)); a1 = a1.addingProduct(load(a + i + 16), load(b + i + 16)); i += 32
        }
        if i + 16 <= n { a0 = a0.addingProduct(load(a + i), load(b + i)); i += 16 }
        var s = sumLanes(a0 + a1)
        while i < n { s += a[i] * b[i]; i += 1 }
        return s
    }
}
