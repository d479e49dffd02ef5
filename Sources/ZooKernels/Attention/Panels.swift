// Keys and values packed in panels of 64 keys: the operand layout of the tile kernels.
//
//   panel p of group g = (b, kvh) holds keys 64p ..< 64p + 64:
//     keys   [d][64]       the keys transposed (B operand of S = Q·Kᵀ; one 64-key row per d)
//     values [64][dvPad]   the values, rows padded to a multiple of 16 (B operand of O += P·V)
//   keys at or past the length are zero (never garbage: 0·NaN would poison the sums).
//
// Two page tables map a panel index to the base of its keys and of its values; group g's panel
// sits at base + g·groupStride. The flash forward packs a whole call into one buffer, keys
// [g][p][d][64] then values [g][64p + j][dvPad], so one group's values are contiguous across
// panels and O += P·V runs over a whole tile in one microkernel pass. The KV cache (AttentionStep.swift)
// appends into separately allocated pages of 64 keys (keys of every group, then values of every
// group), so decode reads the cache with the very same inner loop and never repacks it.

import ZooTensor

/// Keys per panel. The microkernels write 64 columns at a time, so S = Q·Kᵀ tiles are whole panels.
public let attentionPanelWidth = 64

/// A read-only view of packed keys and values (see the file comment for the layout).
public struct AttentionPanels: @unchecked Sendable {
    public let keyPages: UnsafePointer<UnsafeMutablePointer<Float>>
    public let valuePages: UnsafePointer<UnsafeMutablePointer<Float>>
    public let pageCount: Int
    /// Keys held (keys past `keyLength` in the last panel are zero).
    public let keyLength: Int
    public let headDim: Int
    public let valueDim: Int
    public let keyGroupStride: Int
    public let valueGroupStride: Int
    /// values(g, p + 1) == values(g, p) + 64·dvPad for every p: runs of panels can be multiplied
    /// in one pass.
    public let valuesContiguous: Bool

    public init(keyPages: UnsafePointer<UnsafeMutablePointer<Float>>, valuePages: UnsafePointer<UnsafeMutablePointer<Float>>,
                pageCount: Int, keyLength: Int, headDim: Int, valueDim: Int,
                keyGroupStride: Int, valueGroupStride: Int, valuesContiguous: Bool) {
        self.keyPages = keyPages
        self.valuePages = valuePages
        self.pageCount = pageCount
        self.keyLength = keyLength
        self.headDim = headDim
        self.valueDim = valueDim
        self.keyGroupStride = keyGroupStride
        self.valueGroupStride = valueGroupStride
        self.valuesContiguous = valuesContiguous
    }

    public var valueStride: Int { paddedTo16(valueDim) }

    /// keys [d][64] of panel p, group g.
    @inline(__always) public func keys(group g: Int, panel p: Int) -> UnsafePointer<Float> {
        UnsafePointer(keyPages[p] + g * keyGroupStride)
    }
    /// values [64][dvPad] of panel p, group g.
    @inline(__always) public func values(group g: Int, panel p: Int) -> UnsafePointer<Float> {
        UnsafePointer(valuePages[p] + g * valueGroupStride)
    }
}

/// Writes key/value rows into a group's panel: keys `first ..< first + count` of the panel
/// (0 ≤ first, first + count ≤ 64), reading row j's key at key(j) and value at value(j).
@inline(__always)
func writePanelRows(keys: UnsafeMutablePointer<Float>, values: UnsafeMutablePointer<Float>, headDim d: Int, valueDim dv: Int,
                    first: Int, count: Int,
                    key: (Int) -> UnsafePointer<Float>, value: (Int) -> UnsafePointer<Float>) {
    let width = attentionPanelWidth
    let dvPad = paddedTo16(dv)
    transposeRows(count, d, row: key, into: keys + first, ldd: width)
    for j in 0..<count {
        let slot = first + j
        let vRow = value(j), vOut = values + slot * dvPad
        vOut.update(from: vRow, count: dv)
        if dvPad > dv { (vOut + dv).update(repeating: 0, count: dvPad - dv) }
    }
}

/// Zeroes keys `first ..< 64` of a group's panel (the unused tail of the last panel).
func zeroPanelTail(keys: UnsafeMutablePointer<Float>, values: UnsafeMutablePointer<Float>, headDim d: Int, valueDim dv: Int, first: Int) {
    let width = attentionPanelWidth
    if first >= width { return }
    for c in 0..<d { (keys + c * width + first).update(repeating: 0, count: width - first) }
    let dvPad = paddedTo16(dv)
    (values + first * dvPad).update(repeating: 0, count: (width - first) * dvPad)
}

/// Keys and values of a whole call packed into one buffer (keys [g][p][d][64], then values
/// [g][64p + j][dvPad]), with the page tables that view it. Public so kernels that choose their
/// own keys (sparse attention) can pack once and call `attendRowBlock`.
public final class PackedAttentionPanels {
    let buffer: ScratchBuffer
    let keyPages: [UnsafeMutablePointer<Float>]
    let valuePages: [UnsafeMutablePointer<Float>]
    public let shape: AttentionShape
    public var panelCount: Int { keyPages.count }

    /// Packs k [B, Tk, Hk, d] and v [B, Tk, Hk, dv] (only the key-side sizes of `shape` are used),
    /// in parallel over (panel, group). Group g = b·Hk + kvh.
    public init(k: UnsafePointer<Float>, v: UnsafePointer<Float>, shape s: AttentionShape) {
        shape = s
        let width = attentionPanelWidth
        let panelCount = (s.keyLength + width - 1) / width
        let groups = s.batch * s.keyValueHeads
        let keyFloats = s.headDim * width, valueFloats = width * paddedTo16(s.valueDim)
        buffer = ScratchBuffer(count: panelCount * groups * (keyFloats + valueFloats), zeroed: false)
        let keyBase = buffer.pointer, valueBase = buffer.pointer + panelCount * groups * keyFloats
        keyPages = (0..<panelCount).map { keyBase + $0 * keyFloats }
        valuePages = (0..<panelCount).map { valueBase + $0 * valueFloats }
        let kb = SendablePointer(keyBase), vb = SendablePointer(valueBase)
        let kp = SendablePointer(UnsafeMutablePointer(mutating: k)), vp = SendablePointer(UnsafeMutablePointer(mutating: v))
        ZooThreads.parallelFor(panelCount * groups, minChunk: 4) { range in
            for item in range {
                let g = item / panelCount, p = item % panelCount
                let b = g / s.keyValueHeads, kvh = g % s.keyValueHeads
                let keys = kb.pointer + (g * panelCount + p) * keyFloats
                let values = vb.pointer + (g * panelCount + p) * valueFloats
                let first = p * width
                let count = Swift.min(width, s.keyLength - first)
                writePanelRows(keys: keys, values: values, headDim: s.headDim, valueDim: s.valueDim, first: 0, count: count,
                               key: { j in UnsafePointer(kp.pointer + ((b * s.keyLength + first + j) * s.keyValueHeads + kvh) * s.headDim) },
                               value: { j in UnsafePointer(vp.pointer + ((b * s.keyLength + first + j) * s.keyValueHeads + kvh) * s.valueDim) })
                zeroPanelTail(keys: keys, values: values, headDim: s.headDim, valueDim: s.valueDim, first: count)
            }
        }
    }

    /// Runs `body` with a view of the panels (valid only inside `body`).
    public func withPanels<R>(_ body: (AttentionPanels) -> R) -> R {
        let width = attentionPanelWidth
        return keyPages.withUnsafeBufferPointer { kp in
            valuePages.withUnsafeBufferPointer { vp in
                let n = panelCount
                let dummy = UnsafeMutablePointer<UnsafeMutablePointer<Float>>.allocate(capacity: 1)
                defer { dummy.deallocate() }
                let view = AttentionPanels(
                    keyPages: n > 0 ? kp.baseAddress! : UnsafePointer(dummy), valuePages: n > 0 ? vp.baseAddress! : UnsafePointer(dummy),
                    pageCount: n, keyLength: shape.keyLength, headDim: shape.headDim, valueDim: shape.valueDim,
                    keyGroupStride: n * shape.headDim * width, valueGroupStride: n * width * paddedTo16(shape.valueDim),
                    valuesContiguous: true)
                return withExtendedLifetime(buffer) { body(view) }
            }
        }
    }
}
