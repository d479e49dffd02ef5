// Register-blocked matrix-multiply microkernels: attention's tiles and the skinny GEMM
// (SkinnyGemm.swift) run on them.
//
//   C[r, 0..<w] (= or +=) Σ_{kk < k} A[r, kk] · B[kk, 0..<w]       r < 6 (or 1), w = 64 (or 16)
//
// A row r is read by broadcasting A[r, kk] at aRow[r] + kk·aStep (so A may be row-major, aStep 1,
// or a transposed view, aStep = its row length); B is row-major with ldb; C rows are separate
// pointers. 6×64 keeps 24 SIMD16 accumulators in registers (of 32), with 4 vector loads and 6
// broadcasts per 24 FMAs.
//
// Why not sgemm on tiles: every sgemm call packs both operands, and for attention's shapes (one of
// the sizes is the head dim, 64) that packing is a large part of the work. Measured on the
// project's machine (1 thread): OpenBLAS reaches 95–114 GFLOP/s on 128–256 × 256–512 × 64 tiles,
// while this kernel, reading operands that the attention kernels pack once per call, reaches
// ~133 GFLOP/s (more than OpenBLAS's 2048² sgemm, 125).
//
// ZooTensor builds with -O (overflow checks kept), so the loop counters use wrapping arithmetic:
// the indices are bounded by the caller's shapes, and a check per step would sit in the FMA loop.

/// Six row pointers (A rows or C rows) of one microkernel call.
@usableFromInline struct SixRows {
    @usableFromInline var r0, r1, r2, r3, r4, r5: UnsafeMutablePointer<Float>
    @inlinable @inline(__always) init(_ base: UnsafeMutablePointer<Float>, stride: Int, count: Int) {
        // Rows beyond `count` repeat the last real row: they compute (and store) exactly what the
        // last row does, into the same place, so a partial group costs no special kernel.
        let last = count - 1
        r0 = base
        r1 = base + Swift.min(1, last) * stride
        r2 = base + Swift.min(2, last) * stride
        r3 = base + Swift.min(3, last) * stride
        r4 = base + Swift.min(4, last) * stride
        r5 = base + Swift.min(5, last) * stride
    }
    @inlinable @inline(__always) func offset(_ n: Int) -> SixRows {
        var s = self
        s.r0 += n; s.r1 += n; s.r2 += n; s.r3 += n; s.r4 += n; s.r5 += n
        return s
    }
}

@inlinable @inline(__always)
func kernel6x64(_ k: Int, _ a: SixRows, _ aStep: Int, _ b: UnsafePointer<Float>, _ ldb: Int,
                _ c: SixRows, accumulate: Bool) {
    var c00 = F16(), c01 = F16(), c02 = F16(), c03 = F16()
    var c10 = F16(), c11 = F16(), c12 = F16(), c13 = F16()
    var c20 = F16(), c21 = F16(), c22 = F16(), c23 = F16()
    var c30 = F16(), c31 = F16(), c32 = F16(), c33 = F16()
    var c40 = F16(), c41 = F16(), c42 = F16(), c43 = F16()
    var c50 = F16(), c51 = F16(), c52 = F16(), c53 = F16()
    if accumulate {
        c00 = load16(c.r0); c01 = load16(c.r0 + 16); c02 = load16(c.r0 + 32); c03 = load16(c.r0 + 48)
        c10 = load16(c.r1); c11 = load16(c.r1 + 16); c12 = load16(c.r1 + 32); c13 = load16(c.r1 + 48)
        c20 = load16(c.r2); c21 = load16(c.r2 + 16); c22 = load16(c.r2 + 32); c23 = load16(c.r2 + 48)
        c30 = load16(c.r3); c31 = load16(c.r3 + 16); c32 = load16(c.r3 + 32); c33 = load16(c.r3 + 48)
        c40 = load16(c.r4); c41 = load16(c.r4 + 16); c42 = load16(c.r4 + 32); c43 = load16(c.r4 + 48)
        c50 = load16(c.r5); c51 = load16(c.r5 + 16); c52 = load16(c.r5 + 32); c53 = load16(c.r5 + 48)
    }
    var pb = b
    var off = 0
    for _ in 0..<k {
        let b0 = load16(pb), b1 = load16(pb + 16), b2 = load16(pb + 32), b3 = load16(pb + 48)
        var x = F16(repeating: a.r0[off])
        c00 = c00.addingProduct(x, b0); c01 = c01.addingProduct(x, b1); c02 = c02.addingProduct(x, b2); c03 = c03.addingProduct(x, b3)
        x = F16(repeating: a.r1[off])
        c10 = c10.addingProduct(x, b0); c11 = c11.addingProduct(x, b1); c12 = c12.addingProduct(x, b2); c13 = c13.addingProduct(x, b3)
        x = F16(repeating: a.r2[off])
        c20 = c20.addingProduct(x, b0); c21 = c21.addingProduct(x, b1); c22 = c22.addingProduct(x, b2); c23 = c23.addingProduct(x, b3)
        x = F16(repeating: a.r3[off])
        c30 = c30.addingProduct(x, b0); c31 = c31.addingProduct(x, b1); c32 = c32.addingProduct(x, b2); c33 = c33.addingProduct(x, b3)
        x = F16(repeating: a.r4[off])
        c40 = c40.addingProduct(x, b0); c41 = c41.addingProduct(x, b1); c42 = c42.addingProduct(x, b2); c43 = c43.addingProduct(x, b3)
        x = F16(repeating: a.r5[off])
        c50 = c50.addingProduct(x, b0); c51 = c51.addingProduct(x, b1); c52 = c52.addingProduct(x, b2); c53 = c53.addingProduct(x, b3)
        pb += ldb
        off &+= aStep
    }
    store16(c.r0, c00); store16(c.r0 + 16, c01); store16(c.r0 + 32, c02); store16(c.r0 + 48, c03)
    store16(c.r1, c10); store16(c.r1 + 16, c11); store16(c.r1 + 32, c12); store16(c.r1 + 48, c13)
    store16(c.r2, c20); store16(c.r2 + 16, c21); store16(c.r2 + 32, c22); store16(c.r2 + 48, c23)
    store16(c.r3, c30); store16(c.r3 + 16, c31); store16(c.r3 + 32, c32); store16(c.r3 + 48, c33)
    store16(c.r4, c40); store16(c.r4 + 16, c41); store16(c.r4 + 32, c42); store16(c.r4 + 48, c43)
    store16(c.r5, c50); store16(c.r5 + 16, c51); store16(c.r5 + 32, c52); store16(c.r5 + 48, c53)
}

@inlinable @inline(__always)
func kernel6x16(_ k: Int, _ a: SixRows, _ aStep: Int, _ b: UnsafePointer<Float>, _ ldb: Int,
                _ c: SixRows, accumulate: Bool) {
    var c0 = F16(), c1 = F16(), c2 = F16(), c3 = F16(), c4 = F16(), c5 = F16()
    if accumulate {
        c0 = load16(c.r0); c1 = load16(c.r1); c2 = load16(c.r2); c3 = load16(c.r3); c4 = load16(c.r4); c5 = load16(c.r5)
    }
    var pb = b
    var off = 0
    for _ in 0..<k {
        let b0 = load16(pb)
        c0 = c0.addingProduct(F16(repeating: a.r0[off]), b0)
        c1 = c1.addingProduct(F16(repeating: a.r1[off]), b0)
        c2 = c2.addingProduct(F16(repeating: a.r2[off]), b0)
        c3 = c3.addingProduct(F16(repeating: a.r3[off]), b0)
        c4 = c4.addingProduct(F16(repeating: a.r4[off]), b0)
        c5 = c5.addingProduct(F16(repeating: a.r5[off]), b0)
        pb += ldb
        off &+= aStep
    }
    store16(c.r0, c0); store16(c.r1, c1); store16(c.r2, c2); store16(c.r3, c3); store16(c.r4, c4); store16(c.r5, c5)
}

@inlinable @inline(__always)
func kernel1x64(_ k: Int, _ a: UnsafePointer<Float>, _ aStep: Int, _ b: UnsafePointer<Float>, _ ldb: Int,
                _ c: UnsafeMutablePointer<Float>, accumulate: Bool) {
    // Two sets of accumulators (even and odd kk) halve the FMA dependency chains of one row.
    var c0 = F16(), c1 = F16(), c2 = F16(), c3 = F16()
    var d0 = F16(), d1 = F16(), d2 = F16(), d3 = F16()
    if accumulate { c0 = load16(c); c1 = load16(c + 16); c2 = load16(c + 32); c3 = load16(c + 48) }
    var pb = b
    var off = 0
    var kk = 0
    while kk + 2 <= k {
        let x = F16(repeating: a[off]), y = F16(repeating: a[off &+ aStep])
        let pb1 = pb + ldb
        c0 = c0.addingProduct(x, load16(pb)); c1 = c1.addingProduct(x, load16(pb + 16))
        c2 = c2.addingProduct(x, load16(pb + 32)); c3 = c3.addingProduct(x, load16(pb + 48))
        d0 = d0.addingProduct(y, load16(pb1)); d1 = d1.addingProduct(y, load16(pb1 + 16))
        d2 = d2.addingProduct(y, load16(pb1 + 32)); d3 = d3.addingProduct(y, load16(pb1 + 48))
        pb += 2 * ldb
        off &+= 2 &* aStep
        kk += 2
    }
    if kk < k {
        let x = F16(repeating: a[off])
        c0 = c0.addingProduct(x, load16(pb)); c1 = c1.addingProduct(x, load16(pb + 16))
        c2 = c2.addingProduct(x, load16(pb + 32)); c3 = c3.addingProduct(x, load16(pb + 48))
    }
    store16(c, c0 + d0); store16(c + 16, c1 + d1); store16(c + 32, c2 + d2); store16(c + 48, c3 + d3)
}

@inlinable @inline(__always)
func kernel1x16(_ k: Int, _ a: UnsafePointer<Float>, _ aStep: Int, _ b: UnsafePointer<Float>, _ ldb: Int,
                _ c: UnsafeMutablePointer<Float>, accumulate: Bool) {
    var c0 = F16(), c1 = F16()
    if accumulate { c0 = load16(c) }
    var pb = b
    var off = 0
    var kk = 0
    while kk + 2 <= k {
        c0 = c0.addingProduct(F16(repeating: a[off]), load16(pb))
        c1 = c1.addingProduct(F16(repeating: a[off &+ aStep]), load16(pb + ldb))
        pb += 2 * ldb
        off &+= 2 &* aStep
        kk += 2
    }
    if kk < k { c0 = c0.addingProduct(F16(repeating: a[off]), load16(pb)) }
    store16(c, c0 + c1)
}

/// C[m × n] (= or +=) A[m × k] · B[k × n] with the microkernels; n must be a multiple of 16.
///
/// A element (r, kk) is at a + r·aRowStride + kk·aStep (aStep 1: row-major; aRowStride 1 and
/// aStep = row length: the transpose of a row-major matrix). B row kk at b + kk·ldb, C row r at
/// c + r·ldc. Single-threaded; callers parallelise over independent tiles.
@inlinable @inline(__always)
public func tileMultiply(m: Int, n: Int, k: Int,
                  a: UnsafePointer<Float>, aRowStride: Int, aStep: Int,
                  b: UnsafePointer<Float>, ldb: Int,
                  c: UnsafeMutablePointer<Float>, ldc: Int, accumulate: Bool) {
    if k == 0 {
        if !accumulate { for r in 0..<m { (c + r * ldc).update(repeating: 0, count: n) } }
        return
    }
    let aMutable = UnsafeMutablePointer(mutating: a)
    var r0 = 0
    while r0 < m {
        let rows = Swift.min(6, m - r0)
        let aRows = aMutable + r0 * aRowStride
        let cRows = c + r0 * ldc
        if rows == 1 {
            var j = 0
            while j + 64 <= n { kernel1x64(k, aRows, aStep, b + j, ldb, cRows + j, accumulate: accumulate); j += 64 }
            while j < n { kernel1x16(k, aRows, aStep, b + j, ldb, cRows + j, accumulate: accumulate); j += 16 }
        } else {
            let aSix = SixRows(aRows, stride: aRowStride, count: rows)
            let cSix = SixRows(cRows, stride: ldc, count: rows)
            var j = 0
            while j + 64 <= n { kernel6x64(k, aSix, aStep, b + j, ldb, cSix.offset(j), accumulate: accumulate); j += 64 }
            while j < n { kernel6x16(k, aSix, aStep, b + j, ldb, cSix.offset(j), accumulate: accumulate); j += 16 }
        }
        r0 += 6
    }
}
