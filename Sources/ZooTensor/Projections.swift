// Several projections of one input, and their gradients, without splitting or summing afterwards.
//
//   x [..., in];  part p: rows r_p of a weight W_p [out_p, in]
//   forward:   y_p = x · W_p[r_p]ᵀ                 [..., |r_p|]
//   backward:  dx = Σ_p dy_p · W_p[r_p]            [..., in]   (the parts that received a gradient)
//              dW_p[r_p] = dy_pᵀ · x               rows r_p of W_p's gradient (other rows 0)
//
// Why: a layer's projections all read the same x: attention's q, k and v, Mamba-2's in_proj whose
// output is cut into z, x, B, C and dt at once. As separate products each reads x again and their input
// gradients are added afterwards; as one wide product (x · [W_q; W_k; W_v]ᵀ, or in_proj) the
// output must then be split, copying it, and the split's backward concatenates the gradients,
// copying them again. Here the forward writes each part to its own matrix in one pass over x
// (`skinnyProducts`) and the backward sums the parts' input gradients in one pass over dx
// (`skinnySumOfProducts`). Shapes the skinny GEMM does not take (few rows: decoding) run as
// separate `parallelGemm` calls, with the same results up to rounding.

extension Tensor {
    /// y_p = x · W_p[rows_p]ᵀ for each part: x [..., in] → [..., rows_p.count]. Each weight is
    /// [out, in]; `rows[p]` must lie inside `weights[p]`'s rows.
    public static func projections(_ x: Tensor, weights: [Tensor], rows: [Range<Int>]) -> [Tensor] {
        let (tokens, inFeatures) = projectionShape(x, weights: weights, rows: rows, "Tensor.projections")
        var outputs = rows.map { Tensor(uninitializedShape: Array(x.shape.dropLast()) + [$0.count]) }
        let pointers = outputs.indices.map { outputs[$0].mutablePointer() }
        if skinnyProductsApply(m: tokens, k: inFeatures, widths: rows.map(\.count)) {
            skinnyProducts(m: tokens, k: inFeatures, a: x.pointer, lda: inFeatures,
                           outputs: rows.indices.map { p in
                               SkinnyOutput(b: weights[p].pointer + rows[p].lowerBound * inFeatures, ldb: inFeatures, transB: true,
                                            n: rows[p].count, c: pointers[p], ldc: rows[p].count)
                           }, beta: 0)
        } else {
            for p in rows.indices where !rows[p].isEmpty {
                parallelGemm(transB: true, m: tokens, n: rows[p].count, k: inFeatures, a: x.pointer,
                             b: weights[p].pointer + rows[p].lowerBound * inFeatures, c: pointers[p])
            }
        }
        return outputs
    }

    /// dx = Σ_p dy_p · W_p[rows_p] over the parts whose gradient `dys[p]` is given (shape
    /// [..., rows_p.count]); `inputShape` is x's shape. Zero when none is given.
    public static func projectionInputGradient(_ dys: [Tensor?], weights: [Tensor], rows: [Range<Int>], inputShape: [Int]) -> Tensor {
        precondition(dys.count == rows.count, "Tensor.projectionInputGradient: \(dys.count) gradients for \(rows.count) parts")
        let inFeatures = inputShape.last ?? 0
        let tokens = inputShape.dropLast().reduce(1, *)
        var terms: [(dy: Tensor, weight: UnsafePointer<Float>, k: Int)] = []
        for p in rows.indices {
            guard let dy = dys[p], !rows[p].isEmpty else { continue }
            precondition(dy.shape == Array(inputShape.dropLast()) + [rows[p].count],
                         "Tensor.projectionInputGradient: gradient \(describe(dy.shape)) of part \(p) does not match \(describe(inputShape)) → \(rows[p].count)")
            terms.append((dy, weights[p].pointer + rows[p].lowerBound * inFeatures, rows[p].count))
        }
        if terms.isEmpty { return Tensor.zeros(inputShape) }
        var dx = Tensor(uninitializedShape: inputShape)
        let pc = dx.mutablePointer()
        if skinnySumOfProductsApplies(m: tokens, n: inFeatures, ks: terms.map(\.k)) {
            skinnySumOfProducts(m: tokens, n: inFeatures,
                                terms: terms.map { SkinnyTerm(a: $0.dy.pointer, lda: $0.k, b: $0.weight, ldb: inFeatures, transB: false, k: $0.k) },
                                beta: 0, c: pc, ldc: inFeatures)
        } else {
            for (s, term) in terms.enumerated() {
                parallelGemm(m: tokens, n: inFeatures, k: term.k, a: term.dy.pointer, b: term.weight, beta: s == 0 ? 0 : 1, c: pc)
            }
        }
        withExtendedLifetime(terms) {}
        return dx
    }

    /// The weights' gradients: weight w (shape `weightShapes[w]`, [out, in]) gets, in the rows
    /// r_p of each part p with `owners[p] == w`, dy_pᵀ · x; rows no part covers (or whose part got
    /// no gradient) are zero, and a weight none of whose parts got a gradient gets nil. One pass
    /// over x for all parts (`skinnyTransposedProducts`) where the skinny GEMM takes the shape.
    public static func projectionWeightGradients(_ dys: [Tensor?], x: Tensor, rows: [Range<Int>], owners: [Int],
                                                 weightShapes: [[Int]]) -> [Tensor?] {
        precondition(dys.count == rows.count && owners.count == rows.count && owners.allSatisfy { weightShapes.indices.contains($0) },
                     "Tensor.projectionWeightGradients: \(dys.count) gradients, \(rows.count) row ranges, owners \(owners) of \(weightShapes.count) weights")
        let inFeatures = x.shape.last ?? 0, tokens = x.count / Swift.max(inFeatures, 1)
        var covered = weightShapes.map { [Bool](repeating: false, count: $0[0]) }
        for p in rows.indices where dys[p] != nil {
            precondition(weightShapes[owners[p]].count == 2 && weightShapes[owners[p]][1] == inFeatures && rows[p].upperBound <= weightShapes[owners[p]][0],
                         "Tensor.projectionWeightGradients: rows \(rows[p]) of weight \(describe(weightShapes[owners[p]])) do not fit input \(describe(x.shape))")
            precondition(dys[p]!.count == tokens * rows[p].count, "Tensor.projectionWeightGradients: gradient \(describe(dys[p]!.shape)) for \(rows[p].count) rows")
            for r in rows[p] { covered[owners[p]][r] = true }
        }
        var grads: [Tensor?] = weightShapes.indices.map { w in
            let used = rows.indices.contains { owners[$0] == w && dys[$0] != nil }
            if !used { return nil }
            return covered[w].allSatisfy { $0 } ? Tensor(uninitializedShape: weightShapes[w]) : Tensor.zeros(weightShapes[w])
        }
        let pointers = grads.indices.map { grads[$0] == nil ? nil : grads[$0]!.mutablePointer() }
        var parts: [SkinnyTransposedPart] = []
        for p in rows.indices {
            guard let dy = dys[p], !rows[p].isEmpty, let pw = pointers[owners[p]] else { continue }
            parts.append(SkinnyTransposedPart(a: dy.pointer, lda: rows[p].count, m: rows[p].count,
                                              c: pw + rows[p].lowerBound * inFeatures, ldc: inFeatures))
        }
        if parts.isEmpty { return grads }
        if skinnyTransposedProductsApply(n: inFeatures, k: tokens, rows: parts.map(\.m)) {
            skinnyTransposedProducts(n: inFeatures, k: tokens, b: x.pointer, ldb: inFeatures, parts: parts, beta: 0)
        } else {
            for part in parts {
                parallelGemm(transA: true, m: part.m, n: inFeatures, k: tokens, a: part.a, b: x.pointer, c: part.c)
            }
        }
        withExtendedLifetime(dys) {}
        return grads
    }

    private static func projectionShape(_ x: Tensor, weights: [Tensor], rows: [Range<Int>], _ caller: String) -> (tokens: Int, inFeatures: Int) {
        precondition(weights.count == rows.count && !rows.isEmpty, "\(caller): \(weights.count) weights for \(rows.count) row ranges")
        let inFeatures = x.shape.last ?? 0
        for (w, r) in zip(weights, rows) {
            precondition(w.rank == 2 && w.shape[1] == inFeatures && r.lowerBound >= 0 && r.upperBound <= w.shape[0],
                         "\(caller): rows \(r) of weight \(describe(w.shape)) do not project input \(describe(x.shape))")
        }
        return (x.count / Swift.max(inFeatures, 1), inFeatures)
    }
}
