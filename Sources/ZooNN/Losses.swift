import ZooTensor
import ZooAutograd

/// Mean cross-entropy over the rows whose target is not `ignoreIndex`, fused with its backward.
///
///   logits [N, V], targets [N]:  L = −(1/n) Σ_{i: target_i ≠ ignore} log softmax(logits_i)[target_i]
///   dlogits_i = (softmax(logits_i) − onehot(target_i)) / n  for counted rows, 0 otherwise.
///
/// With no counted rows the loss is 0 and so is the gradient.
public func crossEntropy(_ logits: Variable, targets: [Int], ignoreIndex: Int = -100) -> Variable {
    precondition(logits.rank == 2, "crossEntropy: logits must be [N, V], got \(describe(logits.shape))")
    let (n, v) = (logits.shape[0], logits.shape[1])
    precondition(targets.count == n, "crossEntropy: \(targets.count) targets for \(n) rows of logits \(describe(logits.shape))")
    if let bad = targets.first(where: { $0 != ignoreIndex && ($0 < 0 || $0 >= v) }) {
        fatalError("crossEntropy: target \(bad) is outside 0..<\(v) (and is not the ignore index \(ignoreIndex))")
    }
    let x = logits.value
    let counted = targets.filter { $0 != ignoreIndex }.count
    var lse = [Float](repeating: 0, count: n)
    // Rows in parallel; the loss is then summed in row order (the same for any thread count).
    let px = SendablePointer(UnsafeMutablePointer(mutating: x.pointer))
    lse.withUnsafeMutableBufferPointer { buffer in
        guard let base = buffer.baseAddress else { return }   // no rows
        let pl = SendablePointer(base)
        ZooThreads.parallelFor(n, minChunk: Swift.max(1, 16384 / Swift.max(v, 1))) { range in
            for i in range where targets[i] != ignoreIndex { pl[i] = logSumExpRow(px + i * v, v) }
        }
    }
    var total: Double = 0
    for i in 0..<n where targets[i] != ignoreIndex { total += Double(lse[i] - x.pointer[i * v + targets[i]]) }
    let loss = Tensor.scalar(counted == 0 ? 0 : Float(total / Double(counted)))
    return record(loss, inputs: [logits]) { g in
        var dx = Tensor.zeros([n, v])
        if counted == 0 { return [dx] }
        let scale = g.item / Float(counted)
        let pd = SendablePointer(dx.mutablePointer()), px = SendablePointer(UnsafeMutablePointer(mutating: x.pointer))
        lse.withUnsafeBufferPointer { lseBuf in
            let pl = SendablePointer(UnsafeMutablePointer(mutating: lseBuf.baseAddress!))
            ZooThreads.parallelFor(n, minChunk: Swift.max(1, 8192 / Swift.max(v, 1))) { range in
                for i in range where targets[i] != ignoreIndex {
                    let row = pd + i * v, xr = px + i * v
                    let m = F16(repeating: pl[i]), s = F16(repeating: scale)
                    var j = 0
                    while j + 16 <= v { store16(row + j, fastExp(load16(xr + j) - m) * s); j += 16 }
                    while j < v { row[j] = fastExp(xr[j] - pl[i]) * scale; j += 1 }
                    row[targets[i]] -= scale
                }
            }
        }
        return [dx]
    }
}
