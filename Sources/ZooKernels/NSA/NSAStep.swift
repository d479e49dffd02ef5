// NSA decode: a KV cache (raw keys/values of the selected and window branches) plus the compressed
// cache, and a one-token step that reads only what NSA reads.
//
// Shapes: q [B, 1, Hq, dk], gates [B, 1, Hq, 3] → output [B, 1, Hq, dv]. The cache holds t tokens
// (the current one included, at position p = t − 1) and the Nc = ⌊(t − l)/d⌋ + 1 compressed blocks
// completed so far (the caller compresses a block with φ once its last token arrives).
//
// Per kv group the step computes, exactly as the parallel kernels do for position p:
//   compressed attention over the Nc entries → group importance → top-n blocks (Eq. 9–11);
//   attention over the selected blocks' tokens ≤ p; attention over the last w tokens; gates.
// Tokens read per sequence: Nc + (tokens of the selected blocks) + min(w, t) — with the defaults
// and t a multiple of l′, ⌊(t − l)/d⌋ + 1 + n·l′ + w, the count behind the paper's Table 4
// (NSAOptions.decodeTokensRead). The selected and window reads are counted separately, as the
// paper does, even where the local blocks fall inside the window.

import Foundation
import ZooTensor

/// Rows of `width` floats for `batch` sequences, kept in pages of `pageRows` rows (one Tensor
/// [B, pageRows, width] per page): appending never moves old rows, and the bytes held are exactly
/// pages × B × pageRows × width × 4.
public struct NSAPagedRows: @unchecked Sendable {
    public let batch: Int, width: Int, pageRows: Int
    public private(set) var count = 0
    private var pages: [Tensor] = []

    public init(batch: Int, width: Int, pageRows: Int = 256) {
        if batch < 1 || width < 1 || pageRows < 1 {
            fatalError("NSAPagedRows: batch \(batch), width \(width), pageRows \(pageRows) must be ≥ 1")
        }
        self.batch = batch; self.width = width; self.pageRows = pageRows
    }

    /// Bytes of storage held (whole pages).
    public var byteCount: Int { pages.count * batch * pageRows * width * MemoryLayout<Float>.stride }
    /// Bytes held after `rows` rows: the analytic form of `byteCount`.
    public static func bytes(rows: Int, batch: Int, width: Int, pageRows: Int = 256) -> Int {
        (rows + pageRows - 1) / pageRows * batch * pageRows * width * MemoryLayout<Float>.stride
    }

    /// Appends rows given as x [B, n, …] with `width` floats per (b, row).
    public mutating func append(_ x: Tensor) {
        if x.rank < 2 || x.shape[0] != batch || x.count != batch * x.shape[1] * width {
            fatalError("NSAPagedRows.append: expected [B = \(batch), n, …] with \(width) floats per row, got \(x.shape)")
        }
        let n = x.shape[1]
        var done = 0
        while done < n {
            if count % pageRows == 0 && count / pageRows == pages.count {
                pages.append(Tensor.zeros([batch, pageRows, width]))
            }
            let page = count / pageRows, offset = count % pageRows
            let take = min(n - done, pageRows - offset)
            let dst = pages[page].mutablePointer()
            for b in 0..<batch {
                (dst + (b * pageRows + offset) * width).update(from: x.pointer + (b * n + done) * width, count: take * width)
            }
            count += take
            done += take
        }
    }

    /// Row u of sequence b (valid while the pages are not mutated).
    @inline(__always) public func row(_ b: Int, _ u: Int) -> UnsafePointer<Float> {
        pages[u / pageRows].pointer + (b * pageRows + u % pageRows) * width
    }

    /// All rows as one contiguous tensor [B, count, width] (for a prefill through the fast kernels).
    public func contiguous() -> Tensor {
        var out = Tensor(uninitializedShape: [batch, count, width])
        let dst = out.mutablePointer()
        for b in 0..<batch {
            var u = 0
            while u < count {
                let take = min(pageRows - u % pageRows, count - u)
                (dst + (b * count + u) * width).update(from: row(b, u), count: take * width)
                u += take
            }
        }
        return out
    }
}

/// The decode cache of one NSA layer: raw keys/values of the selected and window branches (one
/// set when the layer shares them) and the compressed keys/values.
public struct NSADecodeCache: @unchecked Sendable {
    public let options: NSAOptions
    public let batch: Int, kvHeads: Int, keyDim: Int, valueDim: Int
    /// True when the selected and window branches use the same raw K/V (stored once).
    public let sharedRawKV: Bool
    public private(set) var kSel: NSAPagedRows, vSel: NSAPagedRows
    public private(set) var kCmp: NSAPagedRows, vCmp: NSAPagedRows
    // Window K/V of their own (nil when shared: a second reference to the selected branch's pages
    // would make every append copy its page).
    private var kWinOwn: NSAPagedRows?, vWinOwn: NSAPagedRows?
    public var kWin: NSAPagedRows { kWinOwn ?? kSel }
    public var vWin: NSAPagedRows { vWinOwn ?? vSel }

    public init(options: NSAOptions, batch: Int, kvHeads: Int, keyDim: Int, valueDim: Int, sharedRawKV: Bool,
                pageTokens: Int = 256, pageCompressed: Int = 64) {
        self.options = options; self.batch = batch; self.kvHeads = kvHeads; self.keyDim = keyDim; self.valueDim = valueDim
        self.sharedRawKV = sharedRawKV
        kSel = NSAPagedRows(batch: batch, width: kvHeads * keyDim, pageRows: pageTokens)
        vSel = NSAPagedRows(batch: batch, width: kvHeads * valueDim, pageRows: pageTokens)
        if !sharedRawKV { kWinOwn = kSel; vWinOwn = vSel }
        kCmp = NSAPagedRows(batch: batch, width: kvHeads * keyDim, pageRows: pageCompressed)
        vCmp = NSAPagedRows(batch: batch, width: kvHeads * valueDim, pageRows: pageCompressed)
    }

    /// Tokens held.
    public var length: Int { kSel.count }
    /// Compressed blocks held.
    public var compressedCount: Int { kCmp.count }

    /// Bytes held now: raw K/V (once when shared) plus compressed K/V.
    public var byteCount: Int {
        kSel.byteCount + vSel.byteCount + (kWinOwn?.byteCount ?? 0) + (vWinOwn?.byteCount ?? 0) + kCmp.byteCount + vCmp.byteCount
    }

    /// Appends raw keys/values [B, n, Hkv, dk|dv] (window ones ignored when shared).
    public mutating func appendRaw(kSel k: Tensor, vSel v: Tensor, kWin kw: Tensor? = nil, vWin vw: Tensor? = nil) {
        kSel.append(k); vSel.append(v)
        if !sharedRawKV {
            guard let kw, let vw else { fatalError("NSADecodeCache.appendRaw: window K/V are required when the branches do not share them") }
            kWinOwn!.append(kw); vWinOwn!.append(vw)
        }
    }

    /// Appends compressed keys/values [B, m, Hkv, dk|dv] (blocks completed by the new tokens).
    public mutating func appendCompressed(k: Tensor, v: Tensor) {
        kCmp.append(k); vCmp.append(v)
    }
}

/// What one decode step read, per sequence.
public struct NSADecodeReads: Sendable, Equatable {
    public var compressedEntries: Int, selectedTokens: Int, windowTokens: Int
    /// Bytes read per sequence (keys and values, all kv heads).
    public var bytes: Int
    public var tokens: Int { compressedEntries + selectedTokens + windowTokens }
}

/// One decode step for the token at position t − 1 (already appended to the cache, with its
/// completed compressed blocks). Returns o [B, 1, Hq, dv], the blocks chosen [B, Hkv, n] (−1
/// padded) and what was read.
public func nsaDecodeStep(q: Tensor, gates: Tensor, cache c: NSADecodeCache)
    -> (output: Tensor, selection: [Int32], reads: NSADecodeReads) {
    let o = c.options
    o.validate("nsaDecodeStep")
    let B = c.batch, Hk = c.kvHeads, dk = c.keyDim, dv = c.valueDim, t = c.length
    if q.rank != 4 || q.shape[0] != B || q.shape[1] != 1 || q.shape[3] != dk || q.shape[2] % Hk != 0 {
        fatalError("nsaDecodeStep: q must be [B = \(B), 1, Hq (multiple of \(Hk)), dk = \(dk)], got \(q.shape)")
    }
    let Hq = q.shape[2], G = Hq / Hk
    if gates.shape != [B, 1, Hq, 3] { fatalError("nsaDecodeStep: gates must be [B, 1, Hq, 3] = \([B, 1, Hq, 3]), got \(gates.shape)") }
    if t < 1 { fatalError("nsaDecodeStep: the cache is empty; append the token's keys/values first") }
    let Nc = c.compressedCount
    if Nc != o.compressedCount(keys: t) {
        fatalError("nsaDecodeStep: the cache holds \(Nc) compressed blocks, but \(t) tokens complete \(o.compressedCount(keys: t))")
    }
    let p = t - 1, scale = o.softmaxScale(headDim: dk)
    let kc = c.kCmp, vc = c.vCmp, ks = c.kSel, vs = c.vSel, kw = c.kWin, vw = c.vWin
    let current = p / o.selectBlock, n = o.selectCount
    var out = Tensor.zeros([B, 1, Hq, dv])
    let outP = out.mutablePointer()
    var selection = [Int32](repeating: -1, count: B * Hk * n)
    let nb = current + 1
    let map = NSAScoreMap(blocks: nb, options: o)
    var logits = [Float](repeating: 0, count: max(Nc, o.selectCount * o.selectBlock, o.window, 1))
    var pSum = [Float](repeating: 0, count: max(Nc, 1))
    var scores = [Float](repeating: 0, count: nb)
    var qs = [Float](repeating: 0, count: dk)
    var branch = [Float](repeating: 0, count: 3 * dv)
    var selectedTokens = 0

    // Softmax attention of qs over `count` keys given by index → row pointers; writes into dst.
    func attend(_ count: Int, key: (Int) -> UnsafePointer<Float>, value: (Int) -> UnsafePointer<Float>,
                into dst: UnsafeMutablePointer<Float>, probabilities: UnsafeMutablePointer<Float>?) {
        dst.update(repeating: 0, count: dv)
        if count == 0 { return }
        qs.withUnsafeBufferPointer { qb in
            logits.withUnsafeMutableBufferPointer { lb in
                var mx = -Float.infinity
                for i in 0..<count { let s = Lanes.dot(qb.baseAddress!, key(i), dk); lb[i] = s; if s > mx { mx = s } }
                var sum: Float = 0
                for i in 0..<count { let e = fastExp(lb[i] - mx); lb[i] = e; sum += e }
                let inv = 1 / sum
                for i in 0..<count {
                    let pr = lb[i] * inv
                    simdAxpy(pr, value(i), dst, dv)
                    probabilities?[i] = pr
                }
            }
        }
    }

    for b in 0..<B {
        for hk in 0..<Hk {
            // Compressed branch per head; the group's probabilities summed for the selection.
            pSum.withUnsafeMutableBufferPointer { $0.update(repeating: 0) }
            var cmpOut = [[Float]]()
            for g in 0..<G {
                let h = hk * G + g
                for e in 0..<dk { qs[e] = q.pointer[(b * Hq + h) * dk + e] * scale }
                var probs = [Float](repeating: 0, count: max(Nc, 1))
                var oc = [Float](repeating: 0, count: dv)
                probs.withUnsafeMutableBufferPointer { pb in
                    oc.withUnsafeMutableBufferPointer { ob in
                        attend(Nc, key: { kc.row(b, $0) + hk * dk }, value: { vc.row(b, $0) + hk * dv },
                               into: ob.baseAddress!, probabilities: pb.baseAddress!)
                    }
                }
                for i in 0..<Nc { pSum[i] += probs[i] }
                cmpOut.append(oc)
            }
            // Selection (Eq. 9–11), the same rule and arithmetic order as the parallel kernel.
            let sel = selection.withUnsafeMutableBufferPointer { sb -> Int in
                scores.withUnsafeMutableBufferPointer { scb in
                    if current + 1 > n {
                        pSum.withUnsafeBufferPointer { map.scores(pSum: $0.baseAddress!, visible: Nc, current: current, into: scb.baseAddress!) }
                    }
                    return nsaTopBlocks(scores: scb.baseAddress!, position: p, options: o, out: sb.baseAddress! + (b * Hk + hk) * n)
                }
            }
            let blocks = (0..<sel).map { Int(selection[(b * Hk + hk) * n + $0]) }
            let selKeys = blocks.flatMap { j in (j * o.selectBlock) ..< min((j + 1) * o.selectBlock, p + 1) }
            if b == 0 && hk == 0 { selectedTokens = selKeys.count }
            let winStart = max(0, p - o.window + 1)
            for g in 0..<G {
                let h = hk * G + g
                for e in 0..<dk { qs[e] = q.pointer[(b * Hq + h) * dk + e] * scale }
                branch.withUnsafeMutableBufferPointer { br in
                    br.baseAddress!.update(from: cmpOut[g], count: dv)
                    attend(selKeys.count, key: { ks.row(b, selKeys[$0]) + hk * dk }, value: { vs.row(b, selKeys[$0]) + hk * dv },
                           into: br.baseAddress! + dv, probabilities: nil)
                    attend(p - winStart + 1, key: { kw.row(b, winStart + $0) + hk * dk },
                           value: { vw.row(b, winStart + $0) + hk * dv }, into: br.baseAddress! + 2 * dv, probabilities: nil)
                }
                let row = b * Hq + h
                for k in 0..<3 {
                    let sg = 1 / (1 + exp(-gates.pointer[row * 3 + k]))
                    for e in 0..<dv { outP[row * dv + e] += sg * branch[k * dv + e] }
                }
            }
        }
    }
    let windowTokens = min(o.window, t)
    let perToken = Hk * (dk + dv) * MemoryLayout<Float>.stride
    let reads = NSADecodeReads(compressedEntries: Nc, selectedTokens: selectedTokens, windowTokens: windowTokens,
                               bytes: (Nc + selectedTokens + windowTokens) * perToken)
    return (out, selection, reads)
}

/// Prefill of Tq new tokens (their raw and compressed K/V already appended to the cache) through
/// the fast kernels: q [B, Tq, Hq, dk], gates [B, Tq, Hq, 3] → [B, Tq, Hq, dv], the queries being
/// the last Tq positions. The cache's pages are copied into contiguous tensors (O(t) copies,
/// small next to the attention itself).
public func nsaPrefill(q: Tensor, gates: Tensor, cache c: NSADecodeCache) -> NSAForwardResult {
    let B = c.batch, t = c.length, Hk = c.kvHeads
    func dense(_ rows: NSAPagedRows, _ tokens: Int, _ d: Int) -> Tensor { rows.contiguous().reshaped([B, tokens, Hk, d]) }
    let ks = dense(c.kSel, t, c.keyDim), vs = dense(c.vSel, t, c.valueDim)
    let kw = c.sharedRawKV ? ks : dense(c.kWin, t, c.keyDim), vw = c.sharedRawKV ? vs : dense(c.vWin, t, c.valueDim)
    let x = NSAInputs(q: q, kCmp: dense(c.kCmp, c.compressedCount, c.keyDim), vCmp: dense(c.vCmp, c.compressedCount, c.valueDim),
                      kSel: ks, vSel: vs, kWin: kw, vWin: vw, gates: gates)
    return nsaForward(x, options: c.options)
}
