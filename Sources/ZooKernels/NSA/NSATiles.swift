// Row-interval attention tiles: the BLAS-backed building blocks of the fast NSA kernels.
//
// A tile is M query rows q [M, dk] (packed, already multiplied by the softmax scale) against nk keys,
// given transposed as a key panel kt (the [dk, nk] operand of S = q·kᵀ, stored in 64-key blocks; see
// NSAKeyPanel), and in natural layout k [nk, dk] (row stride ldk) where dQ needs it; values v [nk, dv]
// (ldv) and, for the backward, the value panel vt ([dv, nk]). Row r may only use keys lo[r] ..< hi[r]
// (an empty interval is allowed). Every NSA branch has this shape:
//   compressed: keys 0 ..< (visible blocks of p);  window: keys p − w + 1 ... p;
//   selected:   the rows of the queries that chose a block, keys of that block up to p.
//
// Every product is a row-major NN or TN sgemm cut into blocks of at most 128×64×64 (`nsaGemm`): in
// that range OpenBLAS takes its small-matrix path (M·N·K ≤ 10⁶, no packing), measured ~1.3–1.5×
// faster at these shapes than one larger call, while NT products of these sizes take the slow
// packed path — hence the transposed copies of K and V. Those copies are blocked (NSAKeyPanel): a
// [dk, 64] piece with row stride Tk (a power of two at the usual lengths) maps every row to the same
// cache sets, and S ran at ~55 GFLOP/s against ~85 with row stride 64 (one core, 28×64×64 tiles).
//
// Forward: S = q kᵀ (sgemm); online softmax per row (running max m and sum ℓ; the accumulator is
// rescaled by e^(m − m′) when the max moves); acc += P v (sgemm).
// Backward (P recomputed from the saved lse): dP = dO vᵀ, dS = P ∘ (dP − δ) with δ = rowsum(dO ∘ O);
// query side dq += dS k; key side dv += Pᵀ dO, dk += dSᵀ q. The caller applies the scale to dq.

import ZooTensor

/// Per-row key intervals and row count of a tile.
struct NSARows {
    var count: Int
    let lo: UnsafeMutablePointer<Int32>
    let hi: UnsafeMutablePointer<Int32>
}

/// Writes exp(row − shift) on [lo, hi) and zeros elsewhere in [0, nk); returns the sum.
/// The row buffer must have 16 floats of readable slack after nk (the tail is loaded whole).
@inline(__always)
func nsaExpRow(_ row: UnsafeMutablePointer<Float>, count nk: Int, lo: Int, hi: Int, shift: Float) -> Float {
    if lo > 0 { row.update(repeating: 0, count: lo) }
    let sh = F16(repeating: shift)
    var a0 = F16(), a1 = F16()
    var i = lo
    while i + 32 <= hi {
        let e0 = fastExp(load16(row + i) - sh), e1 = fastExp(load16(row + i + 16) - sh)
        store16(row + i, e0); store16(row + i + 16, e1)
        a0 += e0; a1 += e1
        i += 32
    }
    while i + 16 <= hi {
        let e = fastExp(load16(row + i) - sh)
        store16(row + i, e); a0 += e
        i += 16
    }
    var sum = Lanes.sumLanes(a0 + a1)
    if i < hi {
        let e = fastExp(load16(row + i) - sh)
        for k in 0..<(hi - i) { row[i + k] = e[k]; sum += e[k] }
    }
    if hi < nk { (row + hi).update(repeating: 0, count: nk - hi) }
    return sum
}

/// Writes exp(row − lse) on [lo, hi) and zeros elsewhere (P of the backward); lse = −inf gives zeros.
@inline(__always)
func nsaProbRow(_ row: UnsafeMutablePointer<Float>, count nk: Int, lo: Int, hi: Int, lse: Float) {
    if lo >= hi || lse == -.infinity { row.update(repeating: 0, count: nk); return }
    _ = nsaExpRow(row, count: nk, lo: lo, hi: hi, shift: lse)
}

/// C [m, n] (ldc) = op(A)·B + beta·C, with op(A) = A [m, k] (lda) or, when transA, Aᵀ for A stored
/// [k, m]; B [k, n] (ldb). Cut into blocks of ≤ 128 × 64 × 64 so every sgemm call stays on
/// OpenBLAS's small-matrix path; blocks along k accumulate in a fixed order (deterministic).
@inline(__always)
func nsaGemm(transA: Bool = false, m: Int, n: Int, k: Int, a: UnsafePointer<Float>, lda: Int,
             b: UnsafePointer<Float>, ldb: Int, beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int) {
    if m == 0 || n == 0 { return }
    let mb = 128, nb = 64, kb = 64
    var i0 = 0
    while i0 < m {
        let mi = min(mb, m - i0)
        var j0 = 0
        while j0 < n {
            let nj = min(nb, n - j0)
            if k == 0 {
                gemm(m: mi, n: nj, k: 0, a: a, lda: 1, b: b, ldb: ldb, beta: beta, c: c + i0 * ldc + j0, ldc: ldc)
            }
            var k0 = 0
            while k0 < k {
                let kk = min(kb, k - k0)
                let aBlock = transA ? a + k0 * lda + i0 : a + i0 * lda + k0
                gemm(transA: transA, m: mi, n: nj, k: kk, a: aBlock, lda: lda, b: b + k0 * ldb + j0, ldb: ldb,
                     beta: k0 == 0 ? beta : 1, c: c + i0 * ldc + j0, ldc: ldc)
                k0 += kk
            }
            j0 += nj
        }
        i0 += mi
    }
}

/// Keys per block of the transposed layout (NSATransposed, NSAKeyPanel).
let nsaKeyBlock = 64

/// The keys (or values) of one (batch, kv head), transposed and cut into blocks of 64 keys,
/// [⌈T/64⌉, dim, 64], seen from key `first` on: the [dim, n] right operand of S = q·kᵀ and
/// dP = dO·vᵀ. Key u, component c sits at blocks[(u / 64)·dim·64 + c·64 + u % 64].
struct NSAKeyPanel {
    let blocks: UnsafePointer<Float>
    let dim: Int
    let first: Int
}

/// C [m, n] (ldc) = A [m, dim] (lda) · panel[:, first ..< first + n], one `nsaGemm` per piece of the
/// key range that lies inside one block (B's row stride is then always 64).
@inline(__always)
func nsaGemmKeys(m: Int, n: Int, a: UnsafePointer<Float>, lda: Int, panel: NSAKeyPanel,
                 c: UnsafeMutablePointer<Float>, ldc: Int) {
    var j = 0
    while j < n {
        let key = panel.first + j
        let inBlock = key % nsaKeyBlock, width = min(nsaKeyBlock - inBlock, n - j)
        let b = panel.blocks + (key / nsaKeyBlock) * panel.dim * nsaKeyBlock + inBlock
        nsaGemm(m: m, n: width, k: panel.dim, a: a, lda: lda, b: b, ldb: nsaKeyBlock, c: c + j, ldc: ldc)
        j += width
    }
}

/// S = q kᵀ for a tile from the key panel kt: s [M, nk] (row stride nk).
@inline(__always)
func nsaTileScores(rows M: Int, keys nk: Int, dk: Int, q: UnsafePointer<Float>, kt: NSAKeyPanel,
                   s: UnsafeMutablePointer<Float>) {
    nsaGemmKeys(m: M, n: nk, a: q, lda: dk, panel: kt, c: s, ldc: nk)
}

/// Online-softmax update of M packed rows from their scores s [M, nk] (overwritten with P).
/// m, l are the running max and sum; alpha receives each row's rescale factor e^(m − m′) for the
/// caller's accumulator (0 for a row that had no key before, 1 for a row with no key here).
@inline(__always)
func nsaOnlineRows(rows: NSARows, keys nk: Int, s: UnsafeMutablePointer<Float>, m: UnsafeMutablePointer<Float>,
                   l: UnsafeMutablePointer<Float>, alpha: UnsafeMutablePointer<Float>) {
    for r in 0..<rows.count {
        let row = s + r * nk
        let lo = Int(rows.lo[r]), hi = Int(rows.hi[r])
        if lo >= hi { row.update(repeating: 0, count: nk); alpha[r] = 1; continue }
        let mx = Lanes.max(row + lo, hi - lo)
        let mOld = m[r]
        let mNew = mOld > mx ? mOld : mx
        let a: Float = mOld == -.infinity ? 0 : fastExp(mOld - mNew)
        let sum = nsaExpRow(row, count: nk, lo: lo, hi: hi, shift: mNew)
        l[r] = l[r] * a + sum
        m[r] = mNew
        alpha[r] = a
    }
}

/// One forward step of a tile into contiguous accumulators acc [M, dv] (row stride ldacc):
/// scores, online softmax, acc = α·acc + P v.
@inline(__always)
func nsaTileForward(rows: NSARows, keys nk: Int, dk: Int, dv: Int, q: UnsafePointer<Float>,
                    kt: NSAKeyPanel, v: UnsafePointer<Float>, ldv: Int,
                    s: UnsafeMutablePointer<Float>, m: UnsafeMutablePointer<Float>, l: UnsafeMutablePointer<Float>,
                    alpha: UnsafeMutablePointer<Float>, acc: UnsafeMutablePointer<Float>, ldacc: Int) {
    let M = rows.count
    if M == 0 || nk == 0 { return }
    nsaTileScores(rows: M, keys: nk, dk: dk, q: q, kt: kt, s: s)
    nsaOnlineRows(rows: rows, keys: nk, s: s, m: m, l: l, alpha: alpha)
    for r in 0..<M where alpha[r] != 1 { simdScale(acc + r * ldacc, alpha[r], dv) }
    nsaGemm(m: M, n: dv, k: nk, a: s, lda: nk, b: v, ldb: ldv, beta: 1, c: acc, ldc: ldacc)
}

/// P of the backward for a tile: s [M, nk] ← exp(q kᵀ − lse) inside each row's interval.
@inline(__always)
func nsaTileProbabilities(rows: NSARows, keys nk: Int, dk: Int, q: UnsafePointer<Float>, kt: NSAKeyPanel, lse: UnsafePointer<Float>, s: UnsafeMutablePointer<Float>) {
    nsaTileScores(rows: rows.count, keys: nk, dk: dk, q: q, kt: kt, s: s)
    for r in 0..<rows.count {
        nsaProbRow(s + r * nk, count: nk, lo: Int(rows.lo[r]), hi: Int(rows.hi[r]), lse: lse[r])
    }
}

/// dS = P ∘ (dP − δ), in place over dp; p and dp are [M, nk].
@inline(__always)
func nsaTileScoreGradient(rows M: Int, keys nk: Int, p: UnsafePointer<Float>, dp: UnsafeMutablePointer<Float>,
                          delta: UnsafePointer<Float>) {
    for r in 0..<M {
        let pr = p + r * nk, dr = dp + r * nk
        let d = F16(repeating: delta[r])
        var i = 0
        while i + 16 <= nk { store16(dr + i, load16(pr + i) * (load16(dr + i) - d)); i += 16 }
        while i < nk { dr[i] = pr[i] * (dr[i] - delta[r]); i += 1 }
    }
}

/// Query side of the backward: dq [M, dk] (row stride lddq) += dS k. dO is packed [M, dv].
@inline(__always)
func nsaTileBackwardQuery(rows: NSARows, keys nk: Int, dk: Int, dv: Int, q: UnsafePointer<Float>,
                          kt: NSAKeyPanel, k: UnsafePointer<Float>, ldk: Int,
                          vt: NSAKeyPanel,
                          dO: UnsafePointer<Float>, lse: UnsafePointer<Float>, delta: UnsafePointer<Float>,
                          s: UnsafeMutablePointer<Float>, dp: UnsafeMutablePointer<Float>,
                          dq: UnsafeMutablePointer<Float>, lddq: Int) {
    let M = rows.count
    if M == 0 || nk == 0 { return }
    nsaTileProbabilities(rows: rows, keys: nk, dk: dk, q: q, kt: kt, lse: lse, s: s)
    nsaGemmKeys(m: M, n: nk, a: dO, lda: dv, panel: vt, c: dp, ldc: nk)
    nsaTileScoreGradient(rows: M, keys: nk, p: s, dp: dp, delta: delta)
    nsaGemm(m: M, n: dk, k: nk, a: dp, lda: nk, b: k, ldb: ldk, beta: 1, c: dq, ldc: lddq)
}

/// Key side of the backward: dK [nk, dk] (row stride lddk) += dSᵀ q, dV [nk, dv] (lddv) += Pᵀ dO.
@inline(__always)
func nsaTileBackwardKey(rows: NSARows, keys nk: Int, dk: Int, dv: Int, q: UnsafePointer<Float>,
                        kt: NSAKeyPanel, vt: NSAKeyPanel,
                        dO: UnsafePointer<Float>, lse: UnsafePointer<Float>, delta: UnsafePointer<Float>,
                        s: UnsafeMutablePointer<Float>, dp: UnsafeMutablePointer<Float>,
                        dK: UnsafeMutablePointer<Float>, lddk: Int, dV: UnsafeMutablePointer<Float>, lddv: Int) {
    let M = rows.count
    if M == 0 || nk == 0 { return }
    nsaTileProbabilities(rows: rows, keys: nk, dk: dk, q: q, kt: kt, lse: lse, s: s)
    nsaGemm(transA: true, m: nk, n: dv, k: M, a: s, lda: nk, b: dO, ldb: dv, beta: 1, c: dV, ldc: lddv)
    nsaGemmKeys(m: M, n: nk, a: dO, lda: dv, panel: vt, c: dp, ldc: nk)
    nsaTileScoreGradient(rows: M, keys: nk, p: s, dp: dp, delta: delta)
    nsaGemm(transA: true, m: nk, n: dk, k: M, a: dp, lda: nk, b: q, ldb: dk, beta: 1, c: dK, ldc: lddk)
}

/// Both sides of the backward from one set of P and dS (5 products instead of the 7 of the two
/// separate passes): dq [M, dk] (lddq) += dS k, dK [nk, dk] (lddk) += dSᵀ q, dV [nk, dv] (lddv) += Pᵀ dO.
@inline(__always)
func nsaTileBackwardFused(rows: NSARows, keys nk: Int, dk: Int, dv: Int, q: UnsafePointer<Float>,
                          kt: NSAKeyPanel, k: UnsafePointer<Float>, ldk: Int,
                          vt: NSAKeyPanel,
                          dO: UnsafePointer<Float>, lse: UnsafePointer<Float>, delta: UnsafePointer<Float>,
                          s: UnsafeMutablePointer<Float>, dp: UnsafeMutablePointer<Float>,
                          dq: UnsafeMutablePointer<Float>, lddq: Int,
                          dK: UnsafeMutablePointer<Float>, lddk: Int, dV: UnsafeMutablePointer<Float>, lddv: Int) {
    let M = rows.count
    if M == 0 || nk == 0 { return }
    nsaTileProbabilities(rows: rows, keys: nk, dk: dk, q: q, kt: kt, lse: lse, s: s)
    nsaGemm(transA: true, m: nk, n: dv, k: M, a: s, lda: nk, b: dO, ldb: dv, beta: 1, c: dV, ldc: lddv)
    nsaGemmKeys(m: M, n: nk, a: dO, lda: dv, panel: vt, c: dp, ldc: nk)
    nsaTileScoreGradient(rows: M, keys: nk, p: s, dp: dp, delta: delta)
    nsaGemm(m: M, n: dk, k: nk, a: dp, lda: nk, b: k, ldb: ldk, beta: 1, c: dq, ldc: lddq)
    nsaGemm(transA: true, m: nk, n: dk, k: M, a: dp, lda: nk, b: q, ldb: dk, beta: 1, c: dK, ldc: lddk)
}
