// Keys and values packed in panels of 64 keys: the operand layout of the tile kernels.
//
//   panel p of group g = (b, kvh) holds keys 64p ..< 64p + 64:
//     keysT  [d][64]       the keys transposed (B operand of S = Q·Kᵀ; one 64-key row per d)
//     values [64][dvPad]   the values, rows padded to a multiple of 16 (B operand of O += P·V)
//   keys at or past the length are zero (never garbage: 0·NaN would poison the sums).
//
// A page table maps panel index → page base; group g's panel sits at page + g·groupStride. The
// flash forward packs a whole call into one buffer (page p at base + p·pageFloats); the KV cache
// (Step.swift) appends into separately allocated pages of the same layout, so decode reads the
// cache with the very same inner loop and never repacks it.

import ZooTensor

/// Keys per panel. The microkernels write 64 columns at a time, so S = Q·Kᵀ tiles are whole panels.
public let attentionPanelWidth = 64

/// A read-only view of packed keys and values (see the file comment for the layout).
public struct AttentionPanels: @unchecked Sendable {
    public let pages: UnsafePointer<UnsafeMutablePointer<Float>>
    public let pageCount: Int
    /// Keys held (the panels beyond are not there; keys past `keyLength` in the last are zero).
    public let keyLength: Int
    public let headDim: Int
    public let valueDim: Int
    /// Floats between two groups' panels inside a page: 64·(d + dvPad).
    public let groupStride: Int

    public init(pages: UnsafePointer<UnsafeMutablePointer<Float>>, pageCount: Int, keyLength: Int,
                headDim: Int, valueDim: Int) {
        self.pages = pages
        self.pageCount = pageCount
        self.keyLength = keyLength
        self.headDim = headDim
        self.valueDim = valueDim
        groupStride = AttentionPanels.groupFloats(headDim: headDim, valueDim: valueDim)
    }

    /// Floats of one group's panel: 64·(d + dvPad).
    public static func groupFloats(headDim: Int, valueDim: Int) -> Int {
        attentionPanelWidth * (headDim + paddedTo16(valueDim))
    }

    public var valueStride: Int { paddedTo16(valueDim) }

    /// keysT [d][64] of panel p, group g.
    @inline(__always) public func keys(group g: Int, panel p: Int) -> UnsafePointer<Float> {
        UnsafePointer(pages[p] + g * groupStride)
    }
    /// values [64][dvPad] of panel p, group g.
    @inline(__always) public func values(group g: Int, panel p: Int) -> UnsafePointer<Float> {
        UnsafePointer(pages[p] + g * groupStride + attentionPanelWidth * headDim)
    }
}

/// Writes key/value rows into a group's panel: keys `first ..< first + count` of the panel
/// (0 ≤ first, first + count ≤ 64), reading row j's key at key(j) and value at value(j).
@inline(__always)
func writePanelRows(_ panel: UnsafeMutablePointer<Float>, headDim d: Int, valueDim dv: Int,
                    first: Int, count: Int,
                    key: (Int) -> UnsafePointer<Float>, value: (Int) -> UnsafePointer<Float>) {
    let width = attentionPanelWidth
    let dvPad = paddedTo16(dv)
    let values = panel + width * d
    for j in 0..<count {
        let kRow = key(j), slot = first + j
        for c in 0..<d { panel[c * width + slot] = kRow[c] }
        let vRow = value(j), vOut = values + slot * dvPad
        vOut.update(from: vRow, count: dv)
        if dvPad > dv { (vOut + dv).update(repeating: 0, count: dvPad - dv) }
    }
}

/// Zeroes keys `first ..< 64` of a group's panel (the unused tail of the last panel).
func zeroPanelTail(_ panel: UnsafeMutablePointer<Float>, headDim d: Int, valueDim dv: Int, first: Int) {
    let width = attentionPanelWidth
    if first >= width { return }
    for c in 0..<d { (panel + c * width + first).update(repeating: 0, count: width - first) }
    let dvPad = paddedTo16(dv)
    (panel + width * d + first * dvPad).update(repeating: 0, count: (width - first) * dvPad)
}

/// Packs k [B, Tk, Hk, d] and v [B, Tk, Hk, dv] of a whole call into one panel buffer, in
/// parallel. Returns the buffer and its page table (both must outlive the returned view).
func packPanels(k: UnsafePointer<Float>, v: UnsafePointer<Float>, shape s: AttentionShape)
    -> (buffer: ScratchBuffer, table: [UnsafeMutablePointer<Float>], panels: Int) {
    let width = attentionPanelWidth
    let panelCount = (s.keyLength + width - 1) / width
    let groups = s.batch * s.keyValueHeads
    let groupFloats = AttentionPanels.groupFloats(headDim: s.headDim, valueDim: s.valueDim)
    let buffer = ScratchBuffer(count: panelCount * groups * groupFloats, zeroed: false)
    let base = SendablePointer(buffer.pointer)
    let kp = SendablePointer(UnsafeMutablePointer(mutating: k)), vp = SendablePointer(UnsafeMutablePointer(mutating: v))
    ZooThreads.parallelFor(panelCount * groups, minChunk: 4) { range in
        for item in range {
            let p = item / groups, g = item % groups
            let b = g / s.keyValueHeads, kvh = g % s.keyValueHeads
            let panel = base.pointer + (p * groups + g) * groupFloats
            let first = p * width
            let count = Swift.min(width, s.keyLength - first)
            writePanelRows(panel, headDim: s.headDim, valueDim: s.valueDim, first: 0, count: count,
                           key: { j in UnsafePointer(kp.pointer + ((b * s.keyLength + first + j) * s.keyValueHeads + kvh) * s.headDim) },
                           value: { j in UnsafePointer(vp.pointer + ((b * s.keyLength + first + j) * s.keyValueHeads + kvh) * s.valueDim) })
            zeroPanelTail(panel, headDim: s.headDim, valueDim: s.valueDim, first: count)
        }
    }
    let table = (0..<panelCount).map { buffer.pointer + $0 * groups * groupFloats }
    return (buffer, table, panelCount)
}
