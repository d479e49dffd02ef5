// Attention decode: new queries against a KV cache that grows by appending.
//
//   cache: keys and values of the L tokens seen so far, per (b, kvh), in pages of 64 tokens
//   append:  k [B, n, Hk, d], v [B, n, Hk, dv] → L += n
//   decode:  q [B, Tq, Hq, d] (the newest Tq tokens, already appended) → o [B, Tq, Hq, dv], lse
//            query t sits at position L − Tq + t (the same bottom-right rule as the forward)
//
// A page holds 64 tokens of every (b, kvh) in the flash forward's panel layout (keys transposed
// [d][64], then values [64][dvPad]), so decoding runs the forward's inner loop straight on the
// cache: no repacking, one pass over the keys and values, the query heads of a KV group sharing
// that pass. One token against a long cache has few rows, so the keys are split into parts
// decoded in parallel and merged (flash-decoding). Memory held: ⌈L/64⌉ pages; the cache grows one
// page at a time, so appending never copies what is already there.

import Foundation
import ZooTensor

/// A key/value cache in 64-token pages (see the file comment). A value type: a copy shares the
/// full pages and copies the partly filled one before writing to it.
public struct AttentionKVCache {
    public let batch: Int
    public let keyValueHeads: Int
    public let headDim: Int
    public let valueDim: Int
    /// Tokens held.
    public private(set) var length: Int = 0
    private var pages: [TensorStorage] = []

    public init(batch: Int, keyValueHeads: Int, headDim: Int, valueDim: Int? = nil) {
        let dv = valueDim ?? headDim
        if batch < 1 || keyValueHeads < 1 || headDim < 1 || dv < 1 {
            fatalError("AttentionKVCache: sizes must be ≥ 1, got batch \(batch), kv heads \(keyValueHeads), d \(headDim), dv \(dv)")
        }
        self.batch = batch
        self.keyValueHeads = keyValueHeads
        self.headDim = headDim
        self.valueDim = dv
    }

    public static let pageLength = attentionPanelWidth

    private var groups: Int { batch * keyValueHeads }
    private var pageFloats: Int { groups * AttentionKVCache.pageLength * (headDim + paddedTo16(valueDim)) }

    /// Bytes of storage held now (measured from the pages).
    public var byteCount: Int { pages.reduce(0) { $0 + $1.count * MemoryLayout<Float>.stride } }

    /// The bytes a cache of these sizes holds after `length` tokens: whole pages of 64 tokens,
    /// keys d and values padded to a multiple of 16 floats per token, per (batch, KV head).
    public static func byteCount(length: Int, batch: Int, keyValueHeads: Int, headDim: Int, valueDim: Int) -> Int {
        let pages = (length + pageLength - 1) / pageLength
        return pages * pageLength * batch * keyValueHeads * (headDim + paddedTo16(valueDim)) * MemoryLayout<Float>.stride
    }

    /// Appends `count` tokens: keys [B, count, Hk, d] and values [B, count, Hk, dv].
    public mutating func append(keys: UnsafePointer<Float>, values: UnsafePointer<Float>, count: Int) {
        if count < 0 { fatalError("AttentionKVCache.append: negative count \(count)") }
        let width = AttentionKVCache.pageLength
        let (d, dv, Hk) = (headDim, valueDim, keyValueHeads)
        var done = 0
        while done < count {
            let slot = length % width
            if slot == 0 {
                pages.append(TensorStorage(repeating: 0, count: pageFloats))   // zero: unwritten keys stay 0
            } else if !isKnownUniquelyReferenced(&pages[pages.count - 1]) {
                pages[pages.count - 1] = pages[pages.count - 1].copy()
            }
            let n = Swift.min(width - slot, count - done)
            let page = pages[pages.count - 1].pointer
            let valueBase = page + groups * d * width
            for g in 0..<groups {
                let b = g / Hk, kvh = g % Hk
                let first = done
                writePanelRows(keys: page + g * d * width, values: valueBase + g * width * paddedTo16(dv),
                               headDim: d, valueDim: dv, first: slot, count: n,
                               key: { j in keys + ((b * count + first + j) * Hk + kvh) * d },
                               value: { j in values + ((b * count + first + j) * Hk + kvh) * dv })
            }
            length += n
            done += n
        }
    }

    /// Runs `body` with a panel view of the cache (valid only inside `body`).
    public func withPanels<R>(_ body: (AttentionPanels) -> R) -> R {
        let width = AttentionKVCache.pageLength
        let d = headDim, dvPad = paddedTo16(valueDim)
        let keyPages = pages.map { $0.pointer }
        let valuePages = pages.map { $0.pointer + groups * d * width }
        return keyPages.withUnsafeBufferPointer { kp in
            valuePages.withUnsafeBufferPointer { vp in
                let dummy = UnsafeMutablePointer<UnsafeMutablePointer<Float>>.allocate(capacity: 1)
                defer { dummy.deallocate() }
                let view = AttentionPanels(
                    keyPages: kp.baseAddress.map { UnsafePointer($0) } ?? UnsafePointer(dummy),
                    valuePages: vp.baseAddress.map { UnsafePointer($0) } ?? UnsafePointer(dummy),
                    pageCount: pages.count, keyLength: length, headDim: d, valueDim: valueDim,
                    keyGroupStride: d * width, valueGroupStride: width * dvPad, valuesContiguous: false)
                return withExtendedLifetime(pages) { body(view) }
            }
        }
    }
}

/// Attention of the newest `queryLength` tokens' queries q [B, Tq, Hq, d] (already appended to
/// `cache`) over everything in the cache: writes o [B, Tq, Hq, dv] and, if given, lse [B, Hq, Tq].
/// Query t sits at position cache.length − Tq + t, so causal masking matches the full forward.
public func attentionDecode(
    q: UnsafePointer<Float>, queryLength: Int, queryHeads: Int, cache: AttentionKVCache,
    options: AttentionOptions = AttentionOptions(),
    output: UnsafeMutablePointer<Float>, logSumExp: UnsafeMutablePointer<Float>? = nil
) {
    let shape = AttentionShape(batch: cache.batch, queryLength: queryLength, keyLength: cache.length,
                               queryHeads: queryHeads, keyValueHeads: cache.keyValueHeads,
                               headDim: cache.headDim, valueDim: cache.valueDim)
    shape.validate("attentionDecode"); options.validate("attentionDecode")
    if queryLength > cache.length {
        fatalError("attentionDecode: \(queryLength) queries but the cache holds only \(cache.length) tokens (append the new keys first)")
    }
    let lseScratch = logSumExp == nil ? ScratchBuffer(count: shape.logSumExpCount, zeroed: false) : nil
    cache.withPanels { panels in
        flashForward(q: q, panels: panels, shape: shape, options: options, output: output,
                     logSumExp: logSumExp ?? lseScratch!.pointer)
    }
    withExtendedLifetime(lseScratch) {}
}

/// Keys a decode of the cache's newest token reads: the panels overlapping its visible interval.
public func attentionDecodeKeysRead(cacheLength: Int, options: AttentionOptions) -> Int {
    if cacheLength == 0 { return 0 }
    let width = attentionPanelWidth
    let (lo, hi) = AttentionMask(options: options, keyLength: cacheLength).interval(position: cacheLength - 1)
    if hi <= lo { return 0 }
    return ((hi + width - 1) / width - lo / width) * width
}
