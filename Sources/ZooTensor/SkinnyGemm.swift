// GEMM for the products of a training step, on the register-blocked microkernels of
// TileMultiply.swift, without packing the token-sized operand.
//
//   rows case:   C[m, n] = A[m, k] · op(B)[k, n]       A: activations, m = tokens (≥ 256);
//                                                      B: a weight, k, n ≤ 1024, n ≥ 16
//   inner case:  C[m, n] = A[k, m]ᵀ · B[k, n]           k = tokens (≥ 256): a weight gradient,
//                                                      m, n ≤ 1024, n a multiple of 16
//   alpha 1, beta 0 (C =) or 1 (C +=).
//
// The rows case also takes several outputs sharing A (C_p = A · op(B_p): a layer's projections
// of one input, `skinnyProducts`) or a sum of products into one C (C = Σ_s A_s · op(B_s): their
// input gradient, `skinnySumOfProducts`); the inner case several parts sharing B (C_p = A_pᵀ · B:
// their weight gradients, `skinnyTransposedProducts`). See Projections.swift.
//
// Why: one side of every such product is the batch's tokens (4096 in the tiny LM of
// `zoo bench train`) and the other two are model widths (128–512). OpenBLAS packs both operands
// on every call and zeroes C in a pass of its own before accumulating into it; with a width of
// 128 that packing and zeroing was a third of its time inside a training step (perf: kernel 33 %
// of the step's samples, packing 13 %, memset 3 %). Here the microkernel reads A where it lies:
// it broadcasts one element of each of 6 rows per step (rows case: the activations, never
// copied), or 6 neighbouring elements of one row (inner case, Aᵀ read through aStep). Only B is
// copied into panels (below): once per call in the rows case, where it is the weight; per
// 128-token chunk in the inner case, where it is token-sized but each chunk is reused by every
// row block of C.
// Measured on 2 cores, 2026-11-22, before projections were fused: `zoo bench train
// --compare-gemm` (steps alternating in one process) gave a training step of the tiny LM
// 1.04–1.11× the speed it had with OpenBLAS for attention, Mamba and NSA; `zoo bench core`
// (operands hot in cache) gives the products alone 1.01–1.24× OpenBLAS's speed. With the
// projections fused, OpenBLAS steps are 1.03–1.19× slower than zoo's (README, Matrix products).
//
// Blocking. Rows case: op(B) is packed once per call into contiguous 64-column panels (read in
// place, a panel's rows would lie n floats apart and, for n a multiple of 128, crowd into a few L1
// sets), an output's last panel padded with zeros to a multiple of 16 columns (its results pass
// through a per-worker tile, so the padding never reaches C); 48 rows of A (8 microkernel calls)
// pass over one 128-deep slice of a panel (32 KB, in L1) before the next. Inner case: k runs in
// chunks of 128 tokens; each worker copies its columns of the chunk of B into panels and its
// part of every C_p (a range of rows, or of 64-column panels) accumulates over them, reading Aᵀ
// in place.
//
// Deterministic: each element of C is computed by one worker, over k in fixed chunks in a fixed
// order, so results do not depend on the thread count.

/// The shapes `skinnyGemm` takes (those where it measured faster than OpenBLAS): one side of the
/// product the tokens, the others at most 1024, alpha 1, beta 0 or 1. The rows case takes any
/// n ≥ 16 (a last panel narrower than a multiple of 16 is padded); the inner case n a multiple of 16.
@inlinable
public func skinnyGemmApplies(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float, beta: Float) -> Bool {
    guard alpha == 1, beta == 0 || beta == 1, m > 0, n > 0, n <= 1024, k > 0 else { return false }
    if !transA { return m >= 256 && k <= 1024 && n >= 16 }
    return !transB && n % 16 == 0 && k >= 256 && m <= 1024
}

/// One right-hand side of `skinnyProducts`: C [m, n] = A · op(B), op(B) [k, n]; B is [k, n]
/// (`transB` false) or [n, k] (true), rows `ldb` apart; C rows `ldc` apart.
public struct SkinnyOutput {
    public var b: UnsafePointer<Float>, ldb: Int, transB: Bool, n: Int
    public var c: UnsafeMutablePointer<Float>, ldc: Int
    public init(b: UnsafePointer<Float>, ldb: Int, transB: Bool, n: Int, c: UnsafeMutablePointer<Float>, ldc: Int) {
        (self.b, self.ldb, self.transB, self.n, self.c, self.ldc) = (b, ldb, transB, n, c, ldc)
    }
}

/// One product of `skinnySumOfProducts`: A [m, k] (rows `lda` apart) · op(B) [k, n].
public struct SkinnyTerm {
    public var a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int, transB: Bool, k: Int
    public init(a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int, transB: Bool, k: Int) {
        (self.a, self.lda, self.b, self.ldb, self.transB, self.k) = (a, lda, b, ldb, transB, k)
    }
}

/// Whether `skinnyProducts` (one A, several outputs of `widths` columns) takes a product: the rows
/// case's limits, with the outputs' widths summed, and `GemmPolicy.useSkinny` on.
public func skinnyProductsApply(m: Int, k: Int, widths: [Int]) -> Bool {
    let n = widths.reduce(0, +)
    return GemmPolicy.useSkinny && m >= 256 && k > 0 && k <= 1024 && n >= 16 && n <= 1024 && widths.allSatisfy { $0 > 0 }
}

/// Whether `skinnySumOfProducts` (n columns, terms of inner sizes `ks`) takes a product
/// (`GemmPolicy.useSkinny` on).
public func skinnySumOfProductsApplies(m: Int, n: Int, ks: [Int]) -> Bool {
    GemmPolicy.useSkinny && m >= 256 && n >= 16 && n <= 1024 && !ks.isEmpty && ks.allSatisfy { $0 > 0 && $0 <= 1024 }
}

/// C = op(A)·op(B) (beta 0) or C += op(A)·op(B) (beta 1) for the shapes of `skinnyGemmApplies`,
/// split over the workers by rows of C (rows case; inner case with more rows than columns) or by
/// its 64-column panels (inner case otherwise).
/// Row-major, leading dimensions as in `gemm`.
public func skinnyGemm(
    transA: Bool, transB: Bool, m: Int, n: Int, k: Int,
    a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
    beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int
) {
    precondition(skinnyGemmApplies(transA: transA, transB: transB, m: m, n: n, k: k, alpha: 1, beta: beta),
                 "skinnyGemm: shape \(m)×\(n)×\(k) (transA \(transA), transB \(transB), beta \(beta)) is not one it takes")
    let accumulate = beta == 1
    if !transA {
        rowsCase(m: m, terms: [SkinnyTerm(a: a, lda: lda, b: b, ldb: ldb, transB: transB, k: k)],
                 outputs: [SkinnyOutput(b: b, ldb: ldb, transB: transB, n: n, c: c, ldc: ldc)], accumulate: accumulate)
        return
    }
    innerCase(m: m, n: n, k: k, a: a, lda: lda, b: b, ldb: ldb, accumulate: accumulate, c: c, ldc: ldc)
}

/// C = A · op(B) (the rows case, beta 0), then `afterRows(r)` on each block of rows r of C, run
/// by the worker that computed the block right after computing it, while the rows are still in
/// its cache: element-wise work on a product's result (the MLP's GELU and its derivative) without
/// a pass of its own over memory. Requires `skinnyGemmApplies(transA: false, …, beta: 0)`.
public func skinnyGemm(transB: Bool, m: Int, n: Int, k: Int, a: UnsafePointer<Float>, lda: Int,
                       b: UnsafePointer<Float>, ldb: Int, c: UnsafeMutablePointer<Float>, ldc: Int,
                       afterRows: (Range<Int>) -> Void) {
    precondition(skinnyGemmApplies(transA: false, transB: transB, m: m, n: n, k: k, alpha: 1, beta: 0),
                 "skinnyGemm: shape \(m)×\(n)×\(k) (transB \(transB)) is not one it takes")
    rowsCase(m: m, terms: [SkinnyTerm(a: a, lda: lda, b: b, ldb: ldb, transB: transB, k: k)],
             outputs: [SkinnyOutput(b: b, ldb: ldb, transB: transB, n: n, c: c, ldc: ldc)], accumulate: false,
             afterRows: afterRows)
}

/// Several products sharing their left operand, in one pass over it: C_p = A · op(B_p) (beta 0)
/// or C_p += A · op(B_p) (beta 1), A [m, k]. A layer's projections (q, k and v, or the row
/// blocks of Mamba-2's in_proj) each get their own output matrix, so nothing is split afterwards.
/// Requires `skinnyProductsApply`.
public func skinnyProducts(m: Int, k: Int, a: UnsafePointer<Float>, lda: Int, outputs: [SkinnyOutput], beta: Float) {
    precondition(skinnyProductsApply(m: m, k: k, widths: outputs.map(\.n)) && (beta == 0 || beta == 1),
                 "skinnyProducts: \(m) rows, k \(k), widths \(outputs.map(\.n)), beta \(beta) is not a shape it takes")
    // One term (A); each output's B is read from the output.
    rowsCase(m: m, terms: [SkinnyTerm(a: a, lda: lda, b: outputs[0].b, ldb: outputs[0].ldb, transB: outputs[0].transB, k: k)],
             outputs: outputs, accumulate: beta == 1)
}

/// A sum of products into one matrix, in one pass over C: C = Σ_s A_s · op(B_s) (beta 0) or
/// C += … (beta 1), each A_s [m, k_s]. The input gradient of several projections of one input
/// (Σ_p dY_p · W_p) without a partial result per projection. Requires `skinnySumOfProductsApplies`.
public func skinnySumOfProducts(m: Int, n: Int, terms: [SkinnyTerm], beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) {
    precondition(skinnySumOfProductsApplies(m: m, n: n, ks: terms.map(\.k)) && (beta == 0 || beta == 1),
                 "skinnySumOfProducts: \(m)×\(n) with inner sizes \(terms.map(\.k)), beta \(beta) is not a shape it takes")
    rowsCase(m: m, terms: terms, outputs: [SkinnyOutput(b: terms[0].b, ldb: terms[0].ldb, transB: terms[0].transB, n: n, c: c, ldc: ldc)],
             accumulate: beta == 1)
}

// MARK: - Rows case

/// One packed panel of the rows case: `valid` columns of an output, stored [kTotal, width] at
/// `offset` in the packed buffer with width = valid rounded up to 16 (zeros beyond valid).
private struct RowsPanel: Sendable {
    let offset: Int, width: Int, valid: Int
    let c: SendablePointer<Float>, ldc: Int
    /// Where this panel's results collect in a worker's scratch while a row group is computed
    /// (padded panels only: their extra columns must not reach C).
    let scratchSlot: Int?
}

/// A term's rows of A and where its k rows start in every packed panel.
private struct RowsTerm: Sendable {
    let a: SendablePointer<Float>, lda: Int, k: Int, packedRow: Int
}

/// The rows case, general form: outputs p (column blocks of C) × terms s (blocks of k):
///   C_p (=, or += when accumulating) Σ_s A_s · op(B_{s,p})
/// with either one term (several outputs: `skinnyProducts`, `skinnyGemm`) or one output (several
/// terms: `skinnySumOfProducts`); `outputs[p].b` is B for one term, `terms[s].b` for one output.
/// `afterRows(r)` runs on the worker that computed rows r of every output, right after it
/// finished them (48 rows at a time), while they are still in its cache.
private func rowsCase(m: Int, terms: [SkinnyTerm], outputs: [SkinnyOutput], accumulate: Bool,
                      afterRows: (Range<Int>) -> Void = { _ in }) {
    precondition(terms.count == 1 || outputs.count == 1, "rowsCase: several terms and several outputs at once")
    let kTotal = terms.reduce(0) { $0 + $1.k }
    // Panels: each output's columns in blocks of 64, the last of an output possibly narrower.
    var panels: [RowsPanel] = [], floats = 0, slots = 0
    for output in outputs {
        var j0 = 0
        while j0 < output.n {
            let valid = Swift.min(64, output.n - j0), width = (valid + 15) / 16 * 16
            panels.append(RowsPanel(offset: floats, width: width, valid: valid, c: SendablePointer(output.c + j0), ldc: output.ldc,
                                    scratchSlot: width == valid ? nil : slots))
            if width != valid { slots += 1 }
            floats += kTotal * width
            j0 += 64
        }
    }
    // Pack op(B) once per call. Read in place, a panel's rows would be n floats apart, and with n a
    // multiple of 128 they fall into a few L1 sets (n = 512: 8 of 64) and evict one another.
    let packed = ScratchBuffer(count: floats, zeroed: false)
    var rowTerms: [RowsTerm] = [], packedRow = 0
    for term in terms {
        rowTerms.append(RowsTerm(a: SendablePointer(UnsafeMutablePointer(mutating: term.a)), lda: term.lda, k: term.k, packedRow: packedRow))
        packedRow += term.k
    }
    var p = 0
    for output in outputs {
        var j0 = 0
        while j0 < output.n {
            let panel = panels[p]
            for (s, term) in terms.enumerated() {
                let b = outputs.count == 1 ? term : SkinnyTerm(a: term.a, lda: term.lda, b: output.b, ldb: output.ldb, transB: output.transB, k: term.k)
                packPanel(b.b, transposed: b.transB, ld: b.ldb, rows: term.k, columns: j0, valid: panel.valid, width: panel.width,
                          into: packed.pointer + panel.offset + rowTerms[s].packedRow * panel.width)
            }
            p += 1
            j0 += 64
        }
    }
    let pb = SendablePointer(packed.pointer)
    let groupRows = 48, chunk = 128   // 8 microkernel calls pass over one 128-deep panel slice (32 KB, in L1)
    let groups = (m + groupRows - 1) / groupRows
    /// Rows r0 ..< r1 of every output; padded panels collect in `scratch` (64 columns per slot).
    func rowGroup(_ group: Int, _ scratch: ScratchBuffer?) {
        let r0 = group * groupRows, r1 = Swift.min(m, r0 + groupRows)
        var first = true
        for term in rowTerms {
            var k0 = 0
            while k0 < term.k {
                let kc = Swift.min(chunk, term.k - k0)
                for panel in panels {
                    let b = pb.pointer + panel.offset + (term.packedRow + k0) * panel.width
                    if let slot = panel.scratchSlot, let scratch {
                        tileMultiply(m: r1 - r0, n: panel.width, k: kc, a: term.a.pointer + r0 * term.lda + k0, aRowStride: term.lda, aStep: 1,
                                     b: b, ldb: panel.width, c: scratch.pointer + slot * groupRows * 64, ldc: 64, accumulate: !first)
                    } else {
                        tileMultiply(m: r1 - r0, n: panel.width, k: kc, a: term.a.pointer + r0 * term.lda + k0, aRowStride: term.lda, aStep: 1,
                                     b: b, ldb: panel.width, c: panel.c.pointer + r0 * panel.ldc, ldc: panel.ldc,
                                     accumulate: accumulate || !first)
                    }
                }
                first = false
                k0 += kc
            }
        }
        if let scratch {
            for panel in panels {
                guard let slot = panel.scratchSlot else { continue }
                let tile = scratch.pointer + slot * groupRows * 64
                for r in 0..<(r1 - r0) {
                    let src = tile + r * 64, dst = panel.c.pointer + (r0 + r) * panel.ldc
                    if accumulate { for j in 0..<panel.valid { dst[j] += src[j] } }
                    else { dst.update(from: src, count: panel.valid) }
                }
            }
        }
        afterRows(r0 ..< r1)
    }
    // A static split: handing row groups out one at a time measured no faster in training steps
    // (0.93–1.05×, alternating steps), and a static split keeps each worker on the rows that the
    // previous operation, split the same way, left in its own cache.
    ZooThreads.parallelFor(groups) { range in
        let scratch = slots > 0 ? ScratchBuffer(count: slots * groupRows * 64, zeroed: false) : nil
        for g in range { rowGroup(g, scratch) }
    }
    withExtendedLifetime(packed) {}
}

/// Columns j0 ..< j0 + valid of op(B) [rows, ·] into a panel [rows, width] (rows `width` apart),
/// zeros in columns valid ..< width. B is [rows, n] (`transposed` false) or [n, rows] (true).
private func packPanel(_ b: UnsafePointer<Float>, transposed: Bool, ld: Int, rows: Int, columns j0: Int, valid: Int, width: Int,
                       into panel: UnsafeMutablePointer<Float>) {
    if transposed {
        // Column j of op(B) is row j of B: whole 16×16 blocks are transposed in registers
        // (`transpose16x16`), the edges element by element.
        var p0 = 0
        while p0 < rows {
            let p1 = Swift.min(rows, p0 + 16)
            var j = 0
            if p1 - p0 == 16 {
                while j + 16 <= valid {
                    let first = b + (j0 + j) * ld + p0
                    transpose16x16(rows: { UnsafePointer(first + $0 * ld) }, into: panel + p0 * width + j, ldd: width)
                    j += 16
                }
            }
            while j < valid {
                let row = b + (j0 + j) * ld
                for p in p0..<p1 { panel[p * width + j] = row[p] }
                j += 1
            }
            p0 = p1
        }
    } else {
        for p in 0..<rows { (panel + p * width).update(from: b + p * ld + j0, count: valid) }
    }
    if width > valid { for p in 0..<rows { (panel + p * width + valid).update(repeating: 0, count: width - valid) } }
}

// MARK: - Inner case

/// One part of `skinnyTransposedProducts`: C [m, n] (rows `ldc` apart) = A [k, m]ᵀ · B, A's rows
/// `lda` apart.
public struct SkinnyTransposedPart {
    public var a: UnsafePointer<Float>, lda: Int, m: Int, c: UnsafeMutablePointer<Float>, ldc: Int
    public init(a: UnsafePointer<Float>, lda: Int, m: Int, c: UnsafeMutablePointer<Float>, ldc: Int) {
        (self.a, self.lda, self.m, self.c, self.ldc) = (a, lda, m, c, ldc)
    }
}

/// Whether `skinnyTransposedProducts` takes parts of `rows` rows each with B [k, n]
/// (`GemmPolicy.useSkinny` on).
public func skinnyTransposedProductsApply(n: Int, k: Int, rows: [Int]) -> Bool {
    GemmPolicy.useSkinny && k >= 256 && n > 0 && n % 16 == 0 && n <= 1024 && !rows.isEmpty && rows.allSatisfy { $0 > 0 && $0 <= 1024 }
}

/// Several inner-case products sharing B, in one pass over it: C_p = A_pᵀ · B (beta 0) or
/// C_p += A_pᵀ · B (beta 1), B [k, n]. The weight gradients of several projections of one input
/// (dW_p = dY_pᵀ · x): each chunk of x is copied once for all of them. Requires
/// `skinnyTransposedProductsApply`.
public func skinnyTransposedProducts(n: Int, k: Int, b: UnsafePointer<Float>, ldb: Int, parts: [SkinnyTransposedPart], beta: Float) {
    precondition(skinnyTransposedProductsApply(n: n, k: k, rows: parts.map(\.m)) && (beta == 0 || beta == 1),
                 "skinnyTransposedProducts: B \(k)×\(n) with parts of \(parts.map(\.m)) rows, beta \(beta) is not a shape it takes")
    innerCase(parts: parts, n: n, k: k, b: b, ldb: ldb, accumulate: beta == 1)
}

private func innerCase(m: Int, n: Int, k: Int, a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                       accumulate: Bool, c: UnsafeMutablePointer<Float>, ldc: Int) {
    innerCase(parts: [SkinnyTransposedPart(a: a, lda: lda, m: m, c: c, ldc: ldc)], n: n, k: k, b: b, ldb: ldb, accumulate: accumulate)
}

/// A part's rows of A and C, and its first 6-row block in the numbering of all parts' blocks.
private struct InnerPart: Sendable {
    let a: SendablePointer<Float>, lda: Int, m: Int, c: SendablePointer<Float>, ldc: Int, firstBlock: Int
}

private func innerCase(parts: [SkinnyTransposedPart], n: Int, k: Int, b: UnsafePointer<Float>, ldb: Int, accumulate: Bool) {
    // Per chunk of 128 tokens, a worker copies its columns of B's chunk into panels (32 KB each:
    // one stays in L1 while all its row blocks of every part's C pass over it); Aᵀ is read in
    // place (row r of Aᵀ starts at a + r and steps lda). The workers split C by whichever side
    // keeps the operands' traffic down: by rows when C has more rows than columns (each worker
    // then reads only its columns of A, the larger operand, and copies all of B's chunk), by
    // 64-column panels otherwise (each reads all of A, and copies only its panels). A weight
    // gradient's operands come from memory, not cache: split by rows, the shapes with m > n ran
    // 1.08–1.23× faster than split by panels (4096 tokens, m 256–644, n 128, 2 workers, cache
    // swept between calls). The per-element arithmetic is the same either way (same 6-row
    // groups, panels and chunks), so the split never changes a result.
    var innerParts: [InnerPart] = [], blocks = 0
    for part in parts {
        innerParts.append(InnerPart(a: SendablePointer(UnsafeMutablePointer(mutating: part.a)), lda: part.lda, m: part.m,
                                    c: SendablePointer(part.c), ldc: part.ldc, firstBlock: blocks))
        blocks += (part.m + 5) / 6
    }
    let totalBlocks = blocks
    let pb = SendablePointer(UnsafeMutablePointer(mutating: b))
    let chunk = 128
    let panelCount = (n + 63) / 64
    /// Row blocks `blockRange` (numbered over all parts) × columns c0 ..< c1 of every C_p.
    func accumulateInto(blocks blockRange: Range<Int>, columns c0: Int, _ c1: Int) {
        let width = c1 - c0
        let panels = ScratchBuffer(count: chunk * width, zeroed: false)
        var k0 = 0
        while k0 < k {
            let kc = Swift.min(chunk, k - k0)
            packPanels(pb.pointer + k0 * ldb + c0, k: kc, n: width, ld: ldb, into: panels.pointer)
            for part in innerParts {
                let partBlocks = part.firstBlock ..< part.firstBlock + (part.m + 5) / 6
                let mine = partBlocks.clamped(to: blockRange)
                if mine.isEmpty { continue }
                let r0 = (mine.lowerBound - part.firstBlock) * 6, r1 = Swift.min(part.m, (mine.upperBound - part.firstBlock) * 6)
                var j = 0
                while j < width {
                    let w = Swift.min(64, width - j)
                    tileMultiply(m: r1 - r0, n: w, k: kc, a: part.a.pointer + k0 * part.lda + r0, aRowStride: 1, aStep: part.lda,
                                 b: panels.pointer + j * kc, ldb: w, c: part.c.pointer + r0 * part.ldc + c0 + j, ldc: part.ldc,
                                 accumulate: accumulate || k0 > 0)
                    j += w
                }
            }
            k0 += kc
        }
    }
    let rows = parts.reduce(0) { $0 + $1.m }
    if panelCount >= 2 && rows <= n {
        ZooThreads.parallelFor(panelCount) { panels in
            accumulateInto(blocks: 0 ..< totalBlocks, columns: panels.lowerBound * 64, Swift.min(n, panels.upperBound * 64))
        }
    } else {
        ZooThreads.parallelFor(totalBlocks) { blocks in
            accumulateInto(blocks: blocks, columns: 0, n)
        }
    }
}

/// B [k, n] (rows `ld` apart, n a multiple of 16) into panels of 64 columns (the last `n % 64`
/// wide), panel p at dst + 64·p·k as [k, width].
private func packPanels(_ b: UnsafePointer<Float>, k: Int, n: Int, ld: Int, into dst: UnsafeMutablePointer<Float>) {
    var j0 = 0
    while j0 < n {
        let width = Swift.min(64, n - j0)
        packPanel(b, transposed: false, ld: ld, rows: k, columns: j0, valid: width, width: width, into: dst + j0 * k)
        j0 += width
    }
}
