// Matrix products through cblas_sgemm (sgemv for a single row), transposes as flags.

extension Tensor {
    /// a [..., m, k] · b [..., k, n] → [..., m, n]; `transA`/`transB` read the last two axes of a
    /// or b transposed, without copying. b may be a plain matrix shared by every batch entry.
    public static func matmul(_ a: Tensor, _ b: Tensor, transA: Bool = false, transB: Bool = false) -> Tensor {
        let (batch, m, n, k) = validate { () throws(ShapeError) in
            try ShapeCheck.matmul(a.shape, b.shape, transA: transA, transB: transB)
        }
        var out = Tensor(uninitializedShape: batch + [m, n])
        let batchCount = batch.reduce(1, *)
        let pc = out.mutablePointer()
        if b.rank == 2 && !transA {
            // Fold the batch into the rows: one large product.
            parallelGemm(transA: false, transB: transB, m: batchCount * m, n: n, k: k,
                         a: a.pointer, b: b.pointer, c: pc)
            return out
        }
        let pa = SendablePointer(UnsafeMutablePointer(mutating: a.pointer))
        let pb = SendablePointer(UnsafeMutablePointer(mutating: b.pointer))
        let po = SendablePointer(pc)
        let strideB = b.rank == 2 ? 0 : k * n
        if batchCount == 1 {
            parallelGemm(transA: transA, transB: transB, m: m, n: n, k: k, a: a.pointer, b: b.pointer, c: pc)
            return out
        }
        ZooThreads.parallelFor(batchCount) { range in
            for i in range {
                gemm(transA: transA, transB: transB, m: m, n: n, k: k,
                     a: pa.pointer + i * m * k, b: pb.pointer + i * strideB, c: po.pointer + i * m * n)
            }
        }
        return out
    }
}
