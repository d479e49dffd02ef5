// Attention's operand packing helper.

import ZooTensor

/// dst[c·ldd + j] = row(j)[c] for j < rows, c < cols (any sizes): 16×16 blocks where they fit,
/// scalar copies at the edges.
@inline(__always) func transposeRows(_ rows: Int, _ cols: Int, row: (Int) -> UnsafePointer<Float>,
                                     into dst: UnsafeMutablePointer<Float>, ldd: Int) {
    var j0 = 0
    while j0 + 16 <= rows {
        var c0 = 0
        while c0 + 16 <= cols {
            transpose16x16(rows: { row(j0 + $0) + c0 }, into: dst + c0 * ldd + j0, ldd: ldd)
            c0 += 16
        }
        for j in j0..<(j0 + 16) {
            let r = row(j)
            for c in c0..<cols { dst[c * ldd + j] = r[c] }
        }
        j0 += 16
    }
    for j in j0..<rows {
        let r = row(j)
        for c in 0..<cols { dst[c * ldd + j] = r[c] }
    }
}
