// Vector helpers for hot loops. Measured facts behind them: ../shared/notes/swift-cpu.md §3.
// - `replacing(with:where:)` instead of `pointwiseMax`/`clamped` (those lower to scalar loops);
// - two or more accumulators for reductions (Swift keeps IEEE order and never reassociates);
// - unaligned loads and stores through raw pointers;
// - `@inlinable` so that other modules (the kernels) inline them rather than call them per vector.

public typealias F16 = SIMD16<Float>

@inlinable @inline(__always) public func load16(_ p: UnsafePointer<Float>) -> F16 {
    UnsafeRawPointer(p).loadUnaligned(as: F16.self)
}
@inlinable @inline(__always) public func load16(_ p: UnsafeMutablePointer<Float>) -> F16 {
    UnsafeRawPointer(p).loadUnaligned(as: F16.self)
}
@inlinable @inline(__always) public func store16(_ p: UnsafeMutablePointer<Float>, _ v: F16) {
    UnsafeMutableRawPointer(p).storeBytes(of: v, as: F16.self)
}
@inlinable @inline(__always) public func vmax(_ a: F16, _ b: F16) -> F16 { a.replacing(with: b, where: b .> a) }
@inlinable @inline(__always) public func vmin(_ a: F16, _ b: F16) -> F16 { a.replacing(with: b, where: b .< a) }

/// exp(x) for 16 lanes: max relative error 1.2e-7 (≤ 1 ulp) on [-87.3, 88.7].
/// Inputs below -87.3 (including -inf) give ~1e-38 rather than 0; callers that need an exact 0
/// for masked entries mask explicitly.
@inlinable @inline(always) public func fastExp(_ xIn: F16) -> F16 {
    var x = xIn.replacing(with: -87.33654, where: xIn .< -87.33654)
    x = x.replacing(with: 88.72283, where: x .> 88.72283)
    let magic = F16(repeating: 12582912.0)                               // 1.5·2^23: round to nearest
    let t = magic.addingProduct(x, F16(repeating: 1.44269504088896341))  // x·log2(e) + magic
    let kf = t - magic                                                   // n = round(x·log2 e)
    var r = x.addingProduct(kf, F16(repeating: -0.693145751953125))      // x − n·ln2 (hi)
    r = r.addingProduct(kf, F16(repeating: -1.428606765330187045e-06))   //   − n·ln2 (lo)
    var p = F16(repeating: 1.3981999507e-3).addingProduct(r, F16(repeating: 1.9875691500e-4))
    p = F16(repeating: 8.3334519073e-3).addingProduct(p, r)
    p = F16(repeating: 4.1665795894e-2).addingProduct(p, r)
    p = F16(repeating: 1.6666665459e-1).addingProduct(p, r)
    p = F16(repeating: 5.0000001201e-1).addingProduct(p, r)
    p = (r + 1).addingProduct(p, r * r)                                  // e^r on [−ln2/2, ln2/2]
    // 2^n: the low mantissa bits of t hold n; shifting by 23 moves it into the exponent field.
    let bits = unsafeBitCast(p, to: SIMD16<Int32>.self) &+ (unsafeBitCast(t, to: SIMD16<Int32>.self) &<< 23)
    return unsafeBitCast(bits, to: F16.self)
}

/// Scalar exp through the same polynomial (bit-identical to one lane of `fastExp`), for tails.
@inlinable @inline(always) public func fastExp(_ x: Float) -> Float { fastExp(F16(repeating: x))[0] }

/// Natural log for 16 positive, finite lanes: relative error ~2e-7. Zero gives a large negative
/// number (not -inf); callers guard their domain.
@inlinable @inline(always) public func fastLog(_ xIn: F16) -> F16 {
    let x = xIn.replacing(with: Float.leastNormalMagnitude, where: xIn .< Float.leastNormalMagnitude)
    let bits = unsafeBitCast(x, to: SIMD16<Int32>.self)
    // Split x = m · 2^e with m in [√½, √2): log x = e·ln2 + log m.
    var e = (bits &>> 23) &- 127
    var mBits = (bits & 0x007F_FFFF) | 0x3F80_0000          // m in [1, 2)
    var m = unsafeBitCast(mBits, to: F16.self)
    let big = m .> 1.41421356
    m = m.replacing(with: m * 0.5, where: big)
    e = e.replacing(with: e &+ 1, where: big)
    mBits = unsafeBitCast(m, to: SIMD16<Int32>.self)
    _ = mBits
    // log m = 2·atanh(s), s = (m−1)/(m+1) ∈ [−0.172, 0.172]; odd series to s^11.
    let s = (m - 1) / (m + 1)
    let s2 = s * s
    var q = F16(repeating: 1.0 / 11.0)
    q = F16(repeating: 1.0 / 9.0).addingProduct(q, s2)
    q = F16(repeating: 1.0 / 7.0).addingProduct(q, s2)
    q = F16(repeating: 1.0 / 5.0).addingProduct(q, s2)
    q = F16(repeating: 1.0 / 3.0).addingProduct(q, s2)
    q = F16(repeating: 1.0).addingProduct(q, s2)
    let logM = 2 * s * q
    let ef = F16(e)
    return logM.addingProduct(ef, F16(repeating: 0.693147180559945))
}

@inlinable @inline(__always) public func fastLog(_ x: Float) -> Float { fastLog(F16(repeating: x))[0] }

/// 1 / (1 + e^−x), stable for large |x| because fastExp clamps its argument.
@inlinable @inline(always) public func fastSigmoid(_ x: F16) -> F16 { 1 / (1 + fastExp(-x)) }

/// log(1 + e^x) = max(x, 0) + log(1 + e^−|x|), with no overflow for large x.
@inlinable @inline(always) public func fastSoftplus(_ x: F16) -> F16 {
    let absX = x.replacing(with: -x, where: x .< 0)
    let positive = x.replacing(with: 0, where: x .< 0)
    return positive + fastLog(1 + fastExp(-absX))
}

/// Sum of n floats with 4 SIMD accumulators and a scalar tail (fixed order: deterministic).
@inlinable @inline(__always) public func simdSum(_ p: UnsafePointer<Float>, _ n: Int) -> Float {
    var a0 = F16(), a1 = F16(), a2 = F16(), a3 = F16()
    var i = 0
    while i + 64 <= n {
        a0 += load16(p + i); a1 += load16(p + i + 16); a2 += load16(p + i + 32); a3 += load16(p + i + 48)
        i += 64
    }
    while i + 16 <= n { a0 += load16(p + i); i += 16 }
    var s = ((a0 + a1) + (a2 + a3)).sum()
    while i < n { s += p[i]; i += 1 }
    return s
}

/// Dot product of two float vectors (4 SIMD accumulators, fixed order).
@inlinable @inline(__always) public func simdDot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ n: Int) -> Float {
    var a0 = F16(), a1 = F16(), a2 = F16(), a3 = F16()
    var i = 0
    while i + 64 <= n {
        a0 = a0.addingProduct(load16(a + i), load16(b + i))
        a1 = a1.addingProduct(load16(a + i + 16), load16(b + i + 16))
        a2 = a2.addingProduct(load16(a + i + 32), load16(b + i + 32))
        a3 = a3.addingProduct(load16(a + i + 48), load16(b + i + 48))
        i += 64
    }
    while i + 16 <= n { a0 = a0.addingProduct(load16(a + i), load16(b + i)); i += 16 }
    var s = ((a0 + a1) + (a2 + a3)).sum()
    while i < n { s += a[i] * b[i]; i += 1 }
    return s
}

/// Maximum of n floats (n ≥ 1).
@inlinable @inline(__always) public func simdMax(_ p: UnsafePointer<Float>, _ n: Int) -> Float {
    var m0 = F16(repeating: -.infinity), m1 = m0
    var i = 0
    while i + 32 <= n { m0 = vmax(m0, load16(p + i)); m1 = vmax(m1, load16(p + i + 16)); i += 32 }
    while i + 16 <= n { m0 = vmax(m0, load16(p + i)); i += 16 }
    var m = vmax(m0, m1).max()
    while i < n { if p[i] > m { m = p[i] }; i += 1 }
    return m
}

/// y[i] += alpha · x[i]
@inlinable @inline(__always) public func simdAxpy(_ alpha: Float, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, _ n: Int) {
    let a = F16(repeating: alpha)
    var i = 0
    while i + 16 <= n { store16(y + i, load16(y + i).addingProduct(a, load16(x + i))); i += 16 }
    while i < n { y[i] += alpha * x[i]; i += 1 }
}

/// x[i] *= alpha
@inlinable @inline(__always) public func simdScale(_ x: UnsafeMutablePointer<Float>, _ alpha: Float, _ n: Int) {
    let a = F16(repeating: alpha)
    var i = 0
    while i + 16 <= n { store16(x + i, load16(x + i) * a); i += 16 }
    while i < n { x[i] *= alpha; i += 1 }
}

/// Sixteen SIMD16 rows: a 16×16 block in registers.
public typealias Block16 = (F16, F16, F16, F16, F16, F16, F16, F16, F16, F16, F16, F16, F16, F16, F16, F16)

/// One perfect unshuffle of the 256 values of a 16×16 block read row by row (evens, then odds):
/// it rotates the bits of each value's index right by one, so four of them swap the row and
/// column bits, i.e. transpose. Each output row is one two-source permute (vpermt2ps).
@inlinable @inline(__always) public func unshuffle16(_ a: Block16) -> Block16 {
    (F16(lowHalf: a.0.evenHalf, highHalf: a.1.evenHalf), F16(lowHalf: a.2.evenHalf, highHalf: a.3.evenHalf),
     F16(lowHalf: a.4.evenHalf, highHalf: a.5.evenHalf), F16(lowHalf: a.6.evenHalf, highHalf: a.7.evenHalf),
     F16(lowHalf: a.8.evenHalf, highHalf: a.9.evenHalf), F16(lowHalf: a.10.evenHalf, highHalf: a.11.evenHalf),
     F16(lowHalf: a.12.evenHalf, highHalf: a.13.evenHalf), F16(lowHalf: a.14.evenHalf, highHalf: a.15.evenHalf),
     F16(lowHalf: a.0.oddHalf, highHalf: a.1.oddHalf), F16(lowHalf: a.2.oddHalf, highHalf: a.3.oddHalf),
     F16(lowHalf: a.4.oddHalf, highHalf: a.5.oddHalf), F16(lowHalf: a.6.oddHalf, highHalf: a.7.oddHalf),
     F16(lowHalf: a.8.oddHalf, highHalf: a.9.oddHalf), F16(lowHalf: a.10.oddHalf, highHalf: a.11.oddHalf),
     F16(lowHalf: a.12.oddHalf, highHalf: a.13.oddHalf), F16(lowHalf: a.14.oddHalf, highHalf: a.15.oddHalf))
}

/// dst[c·ldd + j] = row(j)[c] for j, c < 16: sixteen rows of 16 floats (at any addresses) written
/// as sixteen columns, through registers: 16 loads, four unshuffles (64 permutes), 16 stores,
/// ~4 elements/ns against ~1 for a scalar loop. Every load happens before any store, so `dst` may
/// be the rows' own block (in place with ldd 16).
@inlinable @inline(always) public func transpose16x16(rows row: (Int) -> UnsafePointer<Float>,
                                                       into dst: UnsafeMutablePointer<Float>, ldd: Int) {
    var b: Block16 = (load16(row(0)), load16(row(1)), load16(row(2)), load16(row(3)), load16(row(4)), load16(row(5)),
                      load16(row(6)), load16(row(7)), load16(row(8)), load16(row(9)), load16(row(10)), load16(row(11)),
                      load16(row(12)), load16(row(13)), load16(row(14)), load16(row(15)))
    b = unshuffle16(unshuffle16(unshuffle16(unshuffle16(b))))
    store16(dst, b.0); store16(dst + ldd, b.1); store16(dst + 2 * ldd, b.2); store16(dst + 3 * ldd, b.3)
    store16(dst + 4 * ldd, b.4); store16(dst + 5 * ldd, b.5); store16(dst + 6 * ldd, b.6); store16(dst + 7 * ldd, b.7)
    store16(dst + 8 * ldd, b.8); store16(dst + 9 * ldd, b.9); store16(dst + 10 * ldd, b.10); store16(dst + 11 * ldd, b.11)
    store16(dst + 12 * ldd, b.12); store16(dst + 13 * ldd, b.13); store16(dst + 14 * ldd, b.14); store16(dst + 15 * ldd, b.15)
}
