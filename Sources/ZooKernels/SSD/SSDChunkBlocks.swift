// Building blocks of chunked SSD, one chunk of one head at a time, forward and backward.
// They are public so other chunked mixers (log-linear Mamba-2) reuse them; see README.md here.
//
// One chunk holds q ≤ Q tokens i = 0..<q. Every block is a function of the chunk's log-decays
//   a[i] = Δ_i·A_h ≤ 0,   cum[i] = a[0] + … + a[i]  (inclusive, inside the chunk),
// and every exponent it evaluates is a sum of a's (≤ 0), accumulated directly rather than as a
// difference of cumulative sums: no exp of a positive number, no cancellation of large totals.
//
//   intra-chunk   Y  [+]= (S ∘ L ∘ W) X          S = C Bᵀ (q×q scores), L[i,j] = exp(a_{j+1}+…+a_i)
//                                                  for j ≤ i else 0, W optional extra weight
//   state→output  Y  [+]= diag(r ∘ e^cum) C Hᵀ   H (P×N) the state entering the chunk, r optional
//   chunk state   H' = β H + Xᵀ diag(w) B        w_j = exp(a_{j+1} + … + a_{q−1})  (β = e^{cum_{q−1}}
//                                                  scans, β = 0 gives the chunk's own contribution)
//
// Backward blocks take the output's gradient and ACCUMULATE the gradient with respect to the
// log-decays a into `dLogDecay` (q floats). They use the direct forms (a_k enters exp(cum_i − cum_j)
// iff j < k ≤ i) rather than a gradient of cum followed by a reverse cumulative sum: the latter
// subtracts large near-equal totals and loses dA/ddt to rounding under strong decay.
//
// Layouts: matrices are row-major with explicit leading dimensions (ld ≥ row length), so rows of
// the [B,T,H,P] / [B,T,G,N] tensors can be passed in place (ld = H·P or G·N). Every block takes
// the P×N state, and its gradient, TRANSPOSED (Sᵀ, n×p): with that, every product is a row-major
// A·B or Aᵀ·B, never A·Bᵀ, which OpenBLAS 0.3.21 runs at 64³ through its packing path at about
// half the speed (measured: 7.4 µs against 4.1 µs). The few operands that would need A·Bᵀ are
// transposed into scratch first (`ssdTranspose`, 0.35 µs at 64×64).
// Products go to BLAS (`gemm`, single-threaded, called inside the caller's parallel loop).
import CBLAS
import ZooTensor

// A computed constant, not a global `let`: a global's lazy initialiser costs a `swift_once` call
// on every use inside the loops.
private var laneIndex: F16 { F16(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15) }

// MARK: - Decay

/// The masked decay matrix of a chunk: the numerically stable segment sum.
///
///     decay[i·ld + j] = exp(a[j+1] + … + a[i])  for j ≤ i,   0 for i < j < q
///
/// No exponent is a difference of two cumulative sums (that loses the digits of a small segment
/// next to large totals; exp(cum_i)/exp(cum_j) would overflow): in 16×16 tiles, a diagonal tile
/// accumulates its segment sums row by row (row i = row i−1 + a[i]); an off-diagonal tile (rows I,
/// columns J before I, I0 the tile's first row) is the outer product u_i·v_j with
/// u_i = exp(a[I0+1] + … + a[i]) and v_j = exp(a[j+1] + … + a[I0]) — both exponents ≤ 0 when
/// a ≤ 0, so nothing overflows, and 16 + 16 exponentials serve 256 entries.
public func ssdChunkDecay(logDecay a: UnsafePointer<Float>, count q: Int,
                          decay: UnsafeMutablePointer<Float>, ldDecay: Int) {
    if ldDecay < q { fatalError("ssdChunkDecay: ldDecay \(ldDecay) < chunk length \(q)") }
    withUnsafeTemporaryAllocation(of: Float.self, capacity: 2 * q + 32) { buffer in
        let u = buffer.baseAddress!, v = u + q + 16            // row factors of a tile, column factors before it
        var i0 = 0
        while i0 < q {
            let i1 = min(q, i0 + 16), rows = i1 - i0
            // u_i, i in the tile; v_j, j < i0 (suffix sums down from i0).
            var run: Float = 0
            u[0] = 0
            for i in (i0 + 1)..<max(i1, i0 + 1) { run += a[i]; u[i - i0] = run }
            run = 0
            for j in stride(from: i0 - 1, through: 0, by: -1) { run += a[j + 1]; v[j] = run }
            expInPlace(u, rows)
            expInPlace(v, i0)
            // Diagonal tile: running segment sums over its 16 columns.
            var seg = F16()
            let width = F16(repeating: Float(rows))
            for i in i0..<i1 {
                let r = i - i0
                seg = (seg + F16(repeating: a[i])).replacing(with: 0, where: laneIndex .>= F16(repeating: Float(r)))
                let e = fastExp(seg).replacing(with: 0, where: (laneIndex .> F16(repeating: Float(r))) .| (laneIndex .>= width))
                let row = decay + i * ldDecay
                // Off-diagonal tiles: u_i · v_j.
                let ui = F16(repeating: u[r])
                var j = 0
                while j + 16 <= i0 { store16(row + j, ui * load16(v + j)); j += 16 }
                if rows == 16 && i0 + 16 <= q {
                    store16(row + i0, e)
                } else {
                    for k in 0..<rows { row[i0 + k] = e[k] }
                }
                (row + i1).update(repeating: 0, count: q - i1)
            }
            i0 = i1
        }
    }
}

/// x[i] = exp(x[i]) for `count` values.
@inline(__always)
func expInPlace(_ x: UnsafeMutablePointer<Float>, _ count: Int) {
    var i = 0
    while i + 16 <= count { store16(x + i, fastExp(load16(x + i))); i += 16 }
    if i < count {
        var t = F16()
        for k in 0..<(count - i) { t[k] = x[i + k] }
        t = fastExp(t)
        for k in 0..<(count - i) { x[i + k] = t[k] }
    }
}

/// out[i] = r_i · exp(a_0 + … + a_i): the decay from the chunk start (row scale r optional).
@inline(__always)
func prefixDecays(_ a: UnsafePointer<Float>, _ q: Int, rowScale: UnsafePointer<Float>?, _ out: UnsafeMutablePointer<Float>) {
    var run: Float = 0
    for i in 0..<q { run += a[i]; out[i] = run }
    expInPlace(out, q)
    if let rowScale { for i in 0..<q { out[i] *= rowScale[i] } }
}

/// out[j] = exp(a_{j+1} + … + a_{q−1}): the decay from token j to the chunk's end.
@inline(__always)
func suffixDecays(_ a: UnsafePointer<Float>, _ q: Int, _ out: UnsafeMutablePointer<Float>) {
    var run: Float = 0
    for j in stride(from: q - 1, through: 0, by: -1) { out[j] = run; run += a[j] }
    expInPlace(out, q)
}

// MARK: - Scores

/// S (q×q, ldScores) = C Bᵀ for one chunk: the scores the heads of a B/C group share.
/// c, b (q×n, ldc / ldb); scratch ≥ n·q floats (B is transposed there first; see Layouts above).
public func ssdChunkScores(q: Int, n: Int, c: UnsafePointer<Float>, ldc: Int, b: UnsafePointer<Float>, ldb: Int,
                           scores: UnsafeMutablePointer<Float>, ldScores: Int, scratch: UnsafeMutablePointer<Float>) {
    ssdTranspose(b, ld: ldb, rows: q, cols: n, into: scratch, ldOut: q)
    gemm(m: q, n: q, k: n, a: c, lda: ldc, b: scratch, ldb: q, c: scores, ldc: ldScores)
}

/// out[j·ldOut + i] = a[i·ld + j] for i < rows, j < cols.
/// OpenBLAS's `somatcopy` transposes 64×64 in ~0.35 µs, against ~3 µs lost by a 64³ A·Bᵀ product.
@inline(__always)
public func ssdTranspose(_ a: UnsafePointer<Float>, ld: Int, rows: Int, cols: Int,
                         into out: UnsafeMutablePointer<Float>, ldOut: Int) {
    if rows == 0 || cols == 0 { return }
    cblas_somatcopy(CblasRowMajor, CblasTrans, Int32(rows), Int32(cols), 1, a, Int32(ld), out, Int32(ldOut))
}

// MARK: - Intra-chunk masked block

/// The quadratic (diagonal-block) part of a chunk:
///
///     M = S ∘ L ∘ W   (lower triangular: M[i,j] = 0 for j > i)
///     Y (q×p, ldy) = M · X          or  Y += M · X  when `accumulate`
///
/// - scores S (q×q, ldScores): C Bᵀ of the chunk (shared by the heads of a B/C group, so the
///   caller computes it once per group); only its lower triangle is read.
/// - decay L (q×q, ldDecay): from `ssdChunkDecay`.
/// - weight W (optional, q×q, ldWeight): an extra per-(i, j) factor, e.g. log-linear attention's
///   level weights λ_i^{level(i,j)}; only the lower triangle is read.
/// - x (q×p, ldx): the values already multiplied by Δ (X = Δ ∘ x).
/// - matrix (q×q, ld q): receives M (scratch, or kept for the backward).
public func ssdIntraChunkForward(q: Int, p: Int,
                                 scores: UnsafePointer<Float>, ldScores: Int,
                                 decay: UnsafePointer<Float>, ldDecay: Int,
                                 weight: UnsafePointer<Float>?, ldWeight: Int,
                                 x: UnsafePointer<Float>, ldx: Int,
                                 y: UnsafeMutablePointer<Float>, ldy: Int, accumulate: Bool,
                                 matrix: UnsafeMutablePointer<Float>) {
    maskedProduct(q: q, scores: scores, ldScores: ldScores, decay: decay, ldDecay: ldDecay,
                  weight: weight, ldWeight: ldWeight, out: matrix)
    let beta: Float = accumulate ? 1 : 0
    let h = triangleSplit(q)
    if h == 0 {
        gemm(m: q, n: p, k: q, a: matrix, lda: q, b: x, ldb: ldx, beta: beta, c: y, ldc: ldy)
        return
    }
    // M is lower triangular: rows before h only need the first h columns (¼ of the work saved).
    gemm(m: h, n: p, k: h, a: matrix, lda: q, b: x, ldb: ldx, beta: beta, c: y, ldc: ldy)
    gemm(m: q - h, n: p, k: q, a: matrix + h * q, lda: q, b: x, ldb: ldx, beta: beta, c: y + h * ldy, ldc: ldy)
}

/// Where a q×q lower-triangular product splits into two row blocks (a multiple of 16, so row
/// passes over whole vectors never reach the skipped upper-right block); 0: no split.
@inline(__always)
func triangleSplit(_ q: Int) -> Int { q >= 32 ? (q / 2) / 16 * 16 : 0 }

/// Backward of `ssdIntraChunkForward`. With dM = dY Xᵀ and R = dM ∘ M:
///
///     dX (q×p, lddx)          = Mᵀ dY   (+= when `accumulateX`)
///     dScores (q×q, ld q)     = dM ∘ L ∘ W   (lower triangle; zero above): the gradient of S,
///                               from which dC = dScores·B and dB = dScoresᵀ·C (summed over the
///                               heads of a group first, since S is shared)
///     dWeight (q×q, ld q)     = dM ∘ S ∘ L   (only when W is given and dWeight is not nil)
///     dLogDecay[k]           += Σ_{i≥k} Σ_{j<k} R[i,j]    (L[i,j] = exp(a_{j+1} + … + a_i))
///
/// `matrix` (q×q) is scratch: it receives M, then R; scratch ≥ p·q floats (Xᵀ).
public func ssdIntraChunkBackward(q: Int, p: Int,
                                  scores: UnsafePointer<Float>, ldScores: Int,
                                  decay: UnsafePointer<Float>, ldDecay: Int,
                                  weight: UnsafePointer<Float>?, ldWeight: Int,
                                  x: UnsafePointer<Float>, ldx: Int,
                                  dY: UnsafePointer<Float>, lddy: Int,
                                  dX: UnsafeMutablePointer<Float>, lddx: Int, accumulateX: Bool,
                                  dScores: UnsafeMutablePointer<Float>,
                                  dWeight: UnsafeMutablePointer<Float>?,
                                  dLogDecay: UnsafeMutablePointer<Float>,
                                  matrix: UnsafeMutablePointer<Float>, scratch: UnsafeMutablePointer<Float>) {
    maskedProduct(q: q, scores: scores, ldScores: ldScores, decay: decay, ldDecay: ldDecay,
                  weight: weight, ldWeight: ldWeight, out: matrix)
    // dX = Mᵀ dY; dM = dY Xᵀ (only its lower triangle is used), written where dScores goes and
    // transformed in place below. With the split at h, the blocks above the diagonal are skipped.
    let h = triangleSplit(q), beta: Float = accumulateX ? 1 : 0
    ssdTranspose(x, ld: ldx, rows: q, cols: p, into: scratch, ldOut: q)
    if h == 0 {
        gemm(transA: true, m: q, n: p, k: q, a: matrix, lda: q, b: dY, ldb: lddy, beta: beta, c: dX, ldc: lddx)
        gemm(m: q, n: q, k: p, a: dY, lda: lddy, b: scratch, ldb: q, c: dScores, ldc: q)
    } else {
        gemm(transA: true, m: h, n: p, k: q, a: matrix, lda: q, b: dY, ldb: lddy, beta: beta, c: dX, ldc: lddx)
        gemm(transA: true, m: q - h, n: p, k: q - h, a: matrix + h * q + h, lda: q, b: dY + h * lddy, ldb: lddy,
             beta: beta, c: dX + h * lddx, ldc: lddx)
        gemm(m: h, n: h, k: p, a: dY, lda: lddy, b: scratch, ldb: q, c: dScores, ldc: q)
        gemm(m: q - h, n: q, k: p, a: dY + h * lddy, lda: lddy, b: scratch, ldb: q, c: dScores + h * q, ldc: q)
    }
    let hasWeight = weight != nil
    let wantWeightGradient = hasWeight && dWeight != nil
    // Pass 1, per row: R = dM ∘ M (into `matrix`), dWeight, and dScores = dM ∘ L ∘ W in place, all
    // zero above the diagonal. Whole 16-lane blocks with a lane mask; a scalar tail only when q is
    // not a multiple of 16.
    for i in 0..<q {
        let dm = dScores + i * q, mRow = matrix + i * q
        let lRow = decay + i * ldDecay, sRow = scores + i * ldScores
        let wRow = hasWeight ? weight! + i * ldWeight : nil
        let dwRow = wantWeightGradient ? dWeight! + i * q : nil
        var j = 0
        while j + 16 <= q {
            if j > i {
                // R above the diagonal is never read (pass 2 reads j < k only): left as it is.
                store16(dm + j, F16())
                if let dwRow { store16(dwRow + j, F16()) }
            } else {
                let above = laneIndex .> F16(repeating: Float(i - j))
                let g = load16(dm + j).replacing(with: 0, where: above), l = load16(lRow + j)
                store16(mRow + j, g * load16(mRow + j))
                if let dwRow { store16(dwRow + j, g * load16(sRow + j) * l) }
                let gl = g * l
                store16(dm + j, wRow.map { gl * load16($0 + j) } ?? gl)
            }
            j += 16
        }
        while j < q {
            let g = j <= i ? dm[j] : 0, l = lRow[j]
            mRow[j] = g * mRow[j]
            if let dwRow { dwRow[j] = g * sRow[j] * l }
            dm[j] = wRow.map { g * l * $0[j] } ?? g * l
            j += 1
        }
    }
    // Pass 2, rows bottom-up: z = Σ_{i≥k} R[i, ·] and dLogDecay[k] += Σ_{j<k} z[j]. Only z[0..<k]
    // is read at step k, so lanes of z at or past k may collect junk.
    withUnsafeTemporaryAllocation(of: Float.self, capacity: q + 16) { buffer in
        let z = buffer.baseAddress!
        z.initialize(repeating: 0, count: q + 16)
        for k in stride(from: q - 1, through: 1, by: -1) {
            let rRow = matrix + k * q
            var sums = F16(), tail: Float = 0
            var j = 0
            while j < k && j + 16 <= q {
                let v = load16(z + j) + load16(rRow + j)
                store16(z + j, v)
                sums += v.replacing(with: 0, where: laneIndex .>= F16(repeating: Float(k - j)))
                j += 16
            }
            while j < k { z[j] += rRow[j]; tail += z[j]; j += 1 }
            dLogDecay[k] += horizontalSum(sums) + tail
        }
    }
}

/// out (q×q, ld q) = S ∘ L (∘ W) on the lower triangle, 0 above.
@inline(__always)
private func maskedProduct(q: Int, scores: UnsafePointer<Float>, ldScores: Int,
                           decay: UnsafePointer<Float>, ldDecay: Int,
                           weight: UnsafePointer<Float>?, ldWeight: Int,
                           out: UnsafeMutablePointer<Float>) {
    for i in 0..<q {
        let o = out + i * q, s = scores + i * ldScores, l = decay + i * ldDecay
        let w = weight.map { $0 + i * ldWeight }
        var j = 0
        while j + 16 <= q {
            if j > i {
                store16(o + j, F16())
            } else {
                var v = load16(s + j) * load16(l + j)
                if let w { v *= load16(w + j) }
                store16(o + j, v.replacing(with: 0, where: laneIndex .> F16(repeating: Float(i - j))))
            }
            j += 16
        }
        while j < q { o[j] = j <= i ? s[j] * l[j] * (w?[j] ?? 1) : 0; j += 1 }
    }
}

// MARK: - State to output

/// The contribution of the state entering the chunk to the chunk's outputs:
///
///     Y (q×p, ldy) [+]= diag(r ∘ e^{cum}) · C · S,   cum_i = a_0 + … + a_i
///
/// - c (q×n, ldc); stateTransposed Sᵀ (n×p, ldStateTransposed): the P×N state stored transposed
///   (see Layouts above); logDecay a (q); rowScale r (optional, q; e.g. a log-linear level weight
///   λ_i per query); scratch ≥ q·n floats.
public func ssdStateToOutputForward(q: Int, p: Int, n: Int,
                                    c: UnsafePointer<Float>, ldc: Int,
                                    stateTransposed: UnsafePointer<Float>, ldStateTransposed: Int,
                                    logDecay a: UnsafePointer<Float>, rowScale: UnsafePointer<Float>?,
                                    y: UnsafeMutablePointer<Float>, ldy: Int, accumulate: Bool,
                                    scratch: UnsafeMutablePointer<Float>) {
    withUnsafeTemporaryAllocation(of: Float.self, capacity: q) { buffer in
        let f = buffer.baseAddress!
        prefixDecays(a, q, rowScale: rowScale, f)
        for i in 0..<q { scaledCopy(c + i * ldc, f[i], scratch + i * n, n) }
    }
    gemm(m: q, n: p, k: n, a: scratch, lda: n, b: stateTransposed, ldb: ldStateTransposed,
         beta: accumulate ? 1 : 0, c: y, ldc: ldy)
}

/// Backward of `ssdStateToOutputForward`. With S the state (given transposed, Sᵀ n×p),
/// U = dY · S (q×n), f_i = r_i e^{cum_i} and g_i = f_i ⟨C_i, U_i⟩:
///
///     dC (q×n, lddc)                  [+]= diag(f) U
///     dStateTransposed dSᵀ (n×p)      [+]= Cᵀ diag(f) dY      (skipped when nil)
///     dLogDecay[k]                     += Σ_{i≥k} g_i
///     dRowScale[i]                      = e^{cum_i} ⟨C_i, U_i⟩  (only when given)
///
/// scratch ≥ 2·q·n + n·p floats.
public func ssdStateToOutputBackward(q: Int, p: Int, n: Int,
                                     c: UnsafePointer<Float>, ldc: Int,
                                     stateTransposed: UnsafePointer<Float>, ldStateTransposed: Int,
                                     logDecay a: UnsafePointer<Float>, rowScale: UnsafePointer<Float>?,
                                     dY: UnsafePointer<Float>, lddy: Int,
                                     dC: UnsafeMutablePointer<Float>, lddc: Int, accumulateC: Bool,
                                     dStateTransposed: UnsafeMutablePointer<Float>?, lddStateTransposed: Int,
                                     accumulateState: Bool,
                                     dLogDecay: UnsafeMutablePointer<Float>,
                                     dRowScale: UnsafeMutablePointer<Float>?,
                                     scratch: UnsafeMutablePointer<Float>) {
    let u = scratch, scaledC = scratch + q * n, state = scratch + 2 * q * n
    ssdTranspose(stateTransposed, ld: ldStateTransposed, rows: n, cols: p, into: state, ldOut: n)
    gemm(m: q, n: n, k: p, a: dY, lda: lddy, b: state, ldb: n, c: u, ldc: n)
    withUnsafeTemporaryAllocation(of: Float.self, capacity: 2 * q) { buffer in
        let g = buffer.baseAddress!, decays = g + q
        prefixDecays(a, q, rowScale: nil, decays)
        for i in 0..<q {
            let e = decays[i]
            let f = e * (rowScale?[i] ?? 1)
            let cRow = c + i * ldc, uRow = u + i * n
            let dot = rowDot(cRow, uRow, n)
            g[i] = f * dot
            dRowScale?[i] = e * dot
            let dcRow = dC + i * lddc
            if accumulateC { simdAxpy(f, uRow, dcRow, n) } else { scaledCopy(uRow, f, dcRow, n) }
            if dStateTransposed != nil { scaledCopy(cRow, f, scaledC + i * n, n) }
        }
        var suffix: Float = 0
        for k in stride(from: q - 1, through: 0, by: -1) { suffix += g[k]; dLogDecay[k] += suffix }
    }
    if let dStateTransposed {
        gemm(transA: true, m: n, n: p, k: q, a: scaledC, lda: n, b: dY, ldb: lddy,
             beta: accumulateState ? 1 : 0, c: dStateTransposed, ldc: lddStateTransposed)
    }
}

/// The gradient that the outputs of a chunk send to the state entering it (the dState part of
/// `ssdStateToOutputBackward` alone): dSᵀ (n×p) [+]= Cᵀ diag(r ∘ e^{cum}) dY. scratch ≥ q·n.
public func ssdStateToOutputStateGradient(q: Int, p: Int, n: Int,
                                          c: UnsafePointer<Float>, ldc: Int,
                                          logDecay a: UnsafePointer<Float>, rowScale: UnsafePointer<Float>?,
                                          dY: UnsafePointer<Float>, lddy: Int,
                                          dStateTransposed: UnsafeMutablePointer<Float>, lddStateTransposed: Int,
                                          accumulate: Bool, scratch: UnsafeMutablePointer<Float>) {
    withUnsafeTemporaryAllocation(of: Float.self, capacity: q) { buffer in
        let f = buffer.baseAddress!
        prefixDecays(a, q, rowScale: rowScale, f)
        for i in 0..<q { scaledCopy(c + i * ldc, f[i], scratch + i * n, n) }
    }
    gemm(transA: true, m: n, n: p, k: q, a: scratch, lda: n, b: dY, ldb: lddy,
         beta: accumulate ? 1 : 0, c: dStateTransposed, ldc: lddStateTransposed)
}

// MARK: - Chunk state

/// e^{a_0 + … + a_{q−1}}: the decay over the whole chunk, the β of one scan step.
public func ssdChunkTotalDecay(logDecay a: UnsafePointer<Float>, count q: Int) -> Float {
    var total: Float = 0
    for i in 0..<q { total += a[i] }
    return fastExp(total)
}

/// The state at the end of the chunk, on the state stored transposed (Sᵀ, n×p; see Layouts):
///
///     Sᵀ (n×p, ldStateTransposed) = β · Sᵀ + Bᵀ diag(w) X,   w_j = e^{a_{j+1} + … + a_{q−1}}
///
/// i.e. S = β S + Xᵀ diag(w) B. w_j is the decay from token j to the chunk's last token (summed
/// from the end, so it stays exact however large the chunk's total decay). β =
/// `ssdChunkTotalDecay` makes this one step of the inter-chunk scan (the state entering the chunk
/// decays over the whole chunk); β = 0 gives the chunk's own contribution (log-linear attention
/// scans these per level itself). x (q×p, ldx) holds Δ ∘ x; b (q×n, ldb); scratch ≥ q·p floats.
public func ssdChunkStateForward(q: Int, p: Int, n: Int,
                                 x: UnsafePointer<Float>, ldx: Int,
                                 b: UnsafePointer<Float>, ldb: Int,
                                 logDecay a: UnsafePointer<Float>,
                                 stateTransposed: UnsafeMutablePointer<Float>, ldStateTransposed: Int, beta: Float,
                                 scratch: UnsafeMutablePointer<Float>) {
    withUnsafeTemporaryAllocation(of: Float.self, capacity: q) { buffer in
        let w = buffer.baseAddress!
        suffixDecays(a, q, w)
        for j in 0..<q { scaledCopy(x + j * ldx, w[j], scratch + j * p, p) }
    }
    gemm(transA: true, m: n, n: p, k: q, a: b, lda: ldb, b: scratch, ldb: p, beta: beta,
         c: stateTransposed, ldc: ldStateTransposed)
}

/// Backward of the Xᵀ diag(w) B term of `ssdChunkStateForward`, given the gradient of the state
/// the chunk writes (transposed, dSᵀ n×p). With V = B dSᵀ (q×p), U = X dS (q×n) and
/// g_j = w_j ⟨B_j, U_j⟩:
///
///     dX (q×p, lddx)     [+]= diag(w) V
///     dB (q×n, lddb)     [+]= diag(w) U
///     dLogDecay[k]        += Σ_{j<k} g_j          (a_k enters w_j iff j < k)
///
/// The β·state term is the caller's: its gradients are β·dS for the old state and ⟨S_old, dS⟩
/// for β (with β = e^{Σ a}, add β·⟨S_old, dS⟩ to every dLogDecay[k]).
/// scratch ≥ q·(p + n) + n·p floats.
public func ssdChunkStateBackward(q: Int, p: Int, n: Int,
                                  x: UnsafePointer<Float>, ldx: Int,
                                  b: UnsafePointer<Float>, ldb: Int,
                                  logDecay a: UnsafePointer<Float>,
                                  dStateTransposed: UnsafePointer<Float>, lddStateTransposed: Int,
                                  dX: UnsafeMutablePointer<Float>, lddx: Int, accumulateX: Bool,
                                  dB: UnsafeMutablePointer<Float>, lddb: Int, accumulateB: Bool,
                                  dLogDecay: UnsafeMutablePointer<Float>,
                                  scratch: UnsafeMutablePointer<Float>) {
    let v = scratch, u = scratch + q * p, dState = scratch + q * (p + n)
    gemm(m: q, n: p, k: n, a: b, lda: ldb, b: dStateTransposed, ldb: lddStateTransposed, c: v, ldc: p)
    ssdTranspose(dStateTransposed, ld: lddStateTransposed, rows: n, cols: p, into: dState, ldOut: n)
    gemm(m: q, n: n, k: p, a: x, lda: ldx, b: dState, ldb: n, c: u, ldc: n)
    withUnsafeTemporaryAllocation(of: Float.self, capacity: 2 * q) { buffer in
        let g = buffer.baseAddress!, decays = g + q
        suffixDecays(a, q, decays)
        for j in 0..<q {
            let w = decays[j]
            let uRow = u + j * n
            g[j] = w * rowDot(b + j * ldb, uRow, n)
            if accumulateX { simdAxpy(w, v + j * p, dX + j * lddx, p) } else { scaledCopy(v + j * p, w, dX + j * lddx, p) }
            if accumulateB { simdAxpy(w, uRow, dB + j * lddb, n) } else { scaledCopy(uRow, w, dB + j * lddb, n) }
        }
        var prefix: Float = 0
        for k in 0..<q { dLogDecay[k] += prefix; prefix += g[k] }
    }
}

// MARK: - Small vector helpers

/// The sum of 16 lanes as a tree (4 dependent vector adds), not a chain of 15 scalar adds.
@inline(__always)
func horizontalSum(_ v: F16) -> Float {
    let a = v.lowHalf + v.highHalf
    let b = a.lowHalf + a.highHalf
    let c = b.lowHalf + b.highHalf
    return c[0] + c[1]
}

/// Σ a[i]·b[i] with two vector accumulators and a tree reduction (fixed order: deterministic).
@inline(__always)
func rowDot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ n: Int) -> Float {
    var s0 = F16(), s1 = F16()
    var i = 0
    while i + 32 <= n {
        s0 = s0.addingProduct(load16(a + i), load16(b + i))
        s1 = s1.addingProduct(load16(a + i + 16), load16(b + i + 16))
        i += 32
    }
    if i + 16 <= n { s0 = s0.addingProduct(load16(a + i), load16(b + i)); i += 16 }
    var s = horizontalSum(s0 + s1)
    while i < n { s += a[i] * b[i]; i += 1 }
    return s
}

/// dst[i] = alpha · src[i]
@inline(__always)
func scaledCopy(_ src: UnsafePointer<Float>, _ alpha: Float, _ dst: UnsafeMutablePointer<Float>, _ n: Int) {
    let a = F16(repeating: alpha)
    var i = 0
    while i + 16 <= n { store16(dst + i, load16(src + i) * a); i += 16 }
    while i < n { dst[i] = alpha * src[i]; i += 1 }
}
