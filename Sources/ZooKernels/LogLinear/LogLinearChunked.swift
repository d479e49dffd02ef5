// Chunked log-linear Mamba-2, forward and backward: O(T log T) time, BLAS for the products.
//
//   x [B,T,H,P], dt [B,T,H], A [H], B and C [B,T,G,N], D [H], dt_bias [H], λ [B,T,H,L],
//   optional initial state [B,H,L0,P,N] at absolute position t0 → y [B,T,H,P], final state [B,H,Lf,P,N]
//   y_t = Σ_{s≤t} λ_t[level(t,s)] e^{cum_t − cum_s} (C_t·B_s) Δ_s x_s + D x_t   (LogLinearNaive.swift)
//
// Chunks of Q = 2^c tokens sit at absolute multiples of Q (the first and last may be partial). For
// t in chunk z and s in chunk y < z, level(t,s) = c + bit_length(z XOR y): pairs inside a chunk
// have levels ≤ c, and across chunks the Fenwick tree repeats at chunk granularity. So, per chunk
// and head (the SSD building blocks of ../SSD/SSDChunkBlocks.swift do each product; states N×P):
//   (1) intra-chunk   Y  = (C Bᵀ ∘ L ∘ Λ) (Δ∘x),  Λ[i,j] = λ_i[level(i,j)]   (the λ-weighted block)
//   (2) across chunks for every set bit ℓ'−1 of z:  Y += diag(λ[c+ℓ'] ∘ e^{cum}) C Wᵀ, W the state
//       of the chunk block [(z>>ℓ')<<ℓ', (z>>(ℓ'−1))<<(ℓ'−1)) decayed to the start of z: one
//       state-to-output product per non-empty level (popcount(z) of them, ~½ log₂(T/Q) on average)
//   (3) after the chunk: its end state joins the chunk-level Fenwick tree like a token in the
//       decode step (merge the full levels below the first zero bit of z), so block states cost one
//       P×N update each and every level's state pass is one walk over the chunks.
// The forward keeps only the ~log₂(T/Q) live block states per head. The backward recomputes every
// block state (one P×N matrix per chunk), then walks the chunks in reverse, accumulating the block
// states' gradients (each complete before its chunk is reached) and pushing them into the chunks.
//
// Gradient of the decay: the blocks give every log-decay a_k = Δ_k A its gradient directly inside
// its chunk; a block state carried across chunks is scaled by e^{sum of the chunk totals in
// between}, whose gradient reaches every a_k of those chunks (a difference array over chunks). No
// reverse cumulative sum over the sequence, so no cancellation of large totals.
//
// Threads: a parallel loop over (batch, B/C group, chunk) computes the shared C Bᵀ; one over
// (batch, head) runs the sequential chunk walk. In the backward the heads run in waves of one per
// worker and add their B/C gradients into the group's in head order, so results do not depend on
// the thread count.
import Foundation
import ZooTensor

/// Inputs of a log-linear attention call (Float32, canonical [B, T, H, …] layout). See
/// `LogLinearShape` for the shapes.
public struct LogLinearInputs: Sendable {
    public var x: Tensor
    public var dt: Tensor
    public var A: Tensor
    public var B: Tensor
    public var C: Tensor
    public var D: Tensor
    public var dtBias: Tensor
    public var lambda: Tensor
    /// [B, H, L0, P, N] with L0 = logLinearLevelCount(tokens: startPosition); nil when start is 0.
    public var initialState: Tensor?
    /// Absolute position of the first token (levels depend on absolute positions).
    public var startPosition: Int

    public init(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, dtBias: Tensor,
                lambda: Tensor, initialState: Tensor? = nil, startPosition: Int = 0) {
        self.x = x; self.dt = dt; self.A = A; self.B = B; self.C = C; self.D = D; self.dtBias = dtBias
        self.lambda = lambda; self.initialState = initialState; self.startPosition = startPosition
    }

    /// The sizes after checking every shape (SSD's inputs by `SSDInputs.validatedShape`, then λ and
    /// the initial state); stops with a message naming `function` otherwise.
    public func validatedShape(_ function: String) -> LogLinearShape {
        func fail(_ what: String) -> Never { fatalError("\(function): \(what)") }
        let ssd = SSDInputs(x: x, dt: dt, A: A, B: B, C: C, D: D, dtBias: dtBias).validatedShape(function)
        if lambda.rank != 4 || Array(lambda.shape.prefix(3)) != [ssd.batch, ssd.length, ssd.heads] {
            fail("λ is \(lambda.shape), expected [\(ssd.batch),\(ssd.length),\(ssd.heads),L]")
        }
        let s = LogLinearShape(ssd: ssd, lambdaLevels: lambda.shape[3], startPosition: startPosition)
        s.validate(function)
        let initialShape = s.stateShape(tokens: startPosition)
        if let initialState, initialState.shape != initialShape {
            fail("initial state is \(initialState.shape), expected \(initialShape) at start position \(startPosition)")
        }
        if initialState == nil && startPosition > 0 {
            fail("start position \(startPosition) needs the initial state \(initialShape) of those tokens")
        }
        return s
    }
}

public struct LogLinearOptions: Sendable {
    /// Q: tokens per chunk, a power of two. Pairs within a chunk go through the quadratic block.
    public var chunkSize: Int
    public init(chunkSize: Int = 64) { self.chunkSize = chunkSize }
}

public struct LogLinearForwardResult: Sendable {
    public var y: Tensor
    /// [B, H, Lf, P, N], Lf = logLinearLevelCount(tokens: start + T): the decode state after the call.
    public var finalState: Tensor?
}

/// Gradients with respect to every input (same shapes); `initialState` only when one was given.
public struct LogLinearGradients: Sendable {
    public var x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, dtBias: Tensor, lambda: Tensor
    public var initialState: Tensor?
}

// MARK: - Geometry

/// Chunk layout and offsets of one call.
struct LogLinearGeometry {
    let s: LogLinearShape
    let Q: Int, chunkBits: Int
    let t0: Int, T: Int
    /// First and last absolute chunk index.
    let firstChunk: Int, lastChunk: Int
    var chunkCount: Int { lastChunk - firstChunk + 1 }
    /// The initial state's query (t0 − 1) lies inside the first chunk: its levels ≤ chunkBits are
    /// pieces of that chunk, not chunk-level blocks.
    let splitFirstChunk: Bool
    /// Chunk-level slots: levels 1…maxChunkLevel.
    let maxChunkLevel: Int
    let xRow: Int, bcRow: Int, lamRow: Int

    init(_ s: LogLinearShape, chunkSize Q: Int, function: String) {
        if Q < 1 || Q & (Q - 1) != 0 { fatalError("\(function): chunk size must be a power of two, got \(Q)") }
        self.s = s; self.Q = Q; chunkBits = Q.trailingZeroBitCount
        t0 = s.startPosition; T = s.length
        firstChunk = t0 / Q; lastChunk = (t0 + T - 1) / Q
        splitFirstChunk = t0 > 0 && t0 % Q != 0
        maxChunkLevel = bitLength(lastChunk) + 1
        xRow = s.heads * s.headDim; bcRow = s.groups * s.stateSize; lamRow = s.heads * s.lambdaLevels
    }

    /// Local token range [lo, hi) of chunk z, and the in-chunk position of its first token.
    @inline(__always) func range(_ z: Int) -> (lo: Int, hi: Int, offset: Int) {
        let start = max(z * Q, t0), end = min((z + 1) * Q, t0 + T)
        return (start - t0, end - t0, start - z * Q)
    }
    @inline(__always) func xOffset(_ b: Int, _ t: Int, _ h: Int) -> Int { (b * T + t) * xRow + h * s.headDim }
    @inline(__always) func bcOffset(_ b: Int, _ t: Int, _ g: Int) -> Int { (b * T + t) * bcRow + g * s.stateSize }
    @inline(__always) func lamOffset(_ b: Int, _ t: Int, _ h: Int) -> Int { (b * T + t) * lamRow + h * s.lambdaLevels }
    @inline(__always) func dtOffset(_ b: Int, _ t: Int, _ h: Int) -> Int { (b * T + t) * s.heads + h }
    /// Slot of chunk z's C Bᵀ (q×q, ld q) in the scores buffer.
    @inline(__always) func scoresOffset(_ b: Int, _ g: Int, _ z: Int) -> Int {
        ((b * s.groups + g) * chunkCount + (z - firstChunk)) * Q * Q
    }
    var scoresCount: Int { s.batch * s.groups * chunkCount * Q * Q }

    /// The chunk-level block that query chunk z reads at level ℓ' (bit ℓ'−1 of z set) ends at chunk
    /// e = ((z >> (ℓ'−1)) << (ℓ'−1)) − 1; blocks ending before the first chunk come from the
    /// initial state. Returns the index of the node created after chunk e, or −1 for an initial one.
    @inline(__always) func blockNode(queryChunk z: Int, level: Int) -> Int {
        let e = ((z >> (level - 1)) << (level - 1)) - 1
        return e >= firstChunk ? e - firstChunk : -1
    }
}

/// Calls `body(level, j0, j1)` for the key ranges of query row i of a chunk whose first token sits
/// at in-chunk position `offset`: level 0 is j = i itself, level ℓ ≥ 1 the row's Fenwick bucket
/// clipped to the chunk's tokens. The ranges tile 0…i.
@inline(__always)
func forEachLevelRange(row i: Int, offset: Int, _ body: (_ level: Int, _ j0: Int, _ j1: Int) -> Void) {
    body(0, i, i + 1)
    let r = offset + i
    var level = 1, bits = r
    while bits != 0 {
        if bits & 1 == 1 {
            let lo = max((r >> level) << level, offset) - offset, hi = ((r >> (level - 1)) << (level - 1)) - offset
            if hi > lo { body(level, lo, hi) }
        }
        bits >>= 1; level += 1
    }
}

/// Pointers of the inputs, read by every worker.
struct LogLinearPointers: @unchecked Sendable {
    let x, dt, A, B, C, D, dtBias, lambda: UnsafePointer<Float>
    let initial: UnsafePointer<Float>?
    init(_ i: LogLinearInputs) {
        x = i.x.pointer; dt = i.dt.pointer; A = i.A.pointer; B = i.B.pointer; C = i.C.pointer
        D = i.D.pointer; dtBias = i.dtBias.pointer; lambda = i.lambda.pointer; initial = i.initialState?.pointer
    }
}

/// C Bᵀ of every chunk, once per (batch, group): shared by the group's heads.
private func computeScores(_ geo: LogLinearGeometry, _ inp: LogLinearPointers, into scores: UnsafeMutablePointer<Float>) {
    let s = geo.s, n = geo.chunkCount
    ZooThreads.parallelFor(s.batch * s.groups * n) { range in
        let scratch = ScratchBuffer(count: geo.Q * s.stateSize, zeroed: false)
        for item in range {
            let z = geo.firstChunk + item % n, g = (item / n) % s.groups, b = item / (n * s.groups)
            let (lo, hi, _) = geo.range(z)
            let q = hi - lo, bc = geo.bcOffset(b, lo, g)
            ssdChunkScores(q: q, n: s.stateSize, c: inp.C + bc, ldc: geo.bcRow, b: inp.B + bc, ldb: geo.bcRow,
                           scores: scores + geo.scoresOffset(b, g, z), ldScores: q, scratch: scratch.pointer)
        }
    }
}

// MARK: - Per-head chunk workspace

/// Scratch for one head's walk over its chunks.
final class LogLinearChunkWork {
    let Q: Int, P: Int, N: Int
    let buffer: ScratchBuffer
    let delta, logDecay, suffix, dLogDecay, rowScale, rowGrad: UnsafeMutablePointer<Float>
    let xd, decay, weight, matrix, blockScratch, dWeight, du, state, state2: UnsafeMutablePointer<Float>
    /// a_0 + … + a_{q−1}: the chunk's total log-decay.
    var total: Float = 0

    init(Q: Int, P: Int, N: Int) {
        self.Q = Q; self.P = P; self.N = N
        let vec = Q + 16, mat = Q * Q, side = Q * (P + N) + 16
        buffer = ScratchBuffer(count: 6 * vec + Q * P + 4 * mat + 2 * side + Q * P + 2 * P * N, zeroed: true)
        var p = buffer.pointer
        func take(_ n: Int) -> UnsafeMutablePointer<Float> { defer { p += n }; return p }
        delta = take(vec); logDecay = take(vec); suffix = take(vec); dLogDecay = take(vec); rowScale = take(vec); rowGrad = take(vec)
        xd = take(Q * P); decay = take(mat); weight = take(mat); matrix = take(mat); dWeight = take(mat)
        blockScratch = take(2 * side); du = take(Q * P); state = take(P * N); state2 = take(P * N)
    }

    /// Δ, the log-decays a = Δ·A, Δ∘x, the suffix sums a_j + … + a_{q−1} (suffix[q] = 0) and,
    /// when asked, the decay matrix of chunk rows [lo, lo+q) of head (b, h).
    @inline(__always)
    func prepare(_ geo: LogLinearGeometry, _ inp: LogLinearPointers, b: Int, h: Int, lo: Int, q: Int, decayMatrix: Bool) {
        let a = inp.A[h], bias = inp.dtBias[h]
        for i in 0..<q {
            let d = Float(softplusDouble(Double(inp.dt[geo.dtOffset(b, lo + i, h)] + bias)))
            delta[i] = d
            logDecay[i] = d * a
            scaledCopy(inp.x + geo.xOffset(b, lo + i, h), d, xd + i * P, P)
        }
        var run: Float = 0
        suffix[q] = 0
        for i in stride(from: q - 1, through: 0, by: -1) { run += logDecay[i]; suffix[i] = run }
        total = run
        if decayMatrix { ssdChunkDecay(logDecay: logDecay, count: q, decay: decay, ldDecay: Q) }
    }

    /// Λ[i, j] = λ_i[level(i, j)] on the lower triangle (ld Q).
    @inline(__always)
    func buildLevelWeights(q: Int, offset: Int, lambda: UnsafePointer<Float>, lamRow: Int) {
        for i in 0..<q {
            let lam = lambda + i * lamRow, row = weight + i * Q
            forEachLevelRange(row: i, offset: offset) { level, j0, j1 in
                (row + j0).update(repeating: lam[level], count: j1 - j0)
            }
        }
    }
}

/// The initial state's levels as the chunk walk uses them, transposed (N×P, the SSD blocks'
/// layout): chunk-level blocks (slots 1…) entering the first chunk, and — when the initial query
/// sits inside the first chunk — its in-chunk levels ("pieces").
struct InitialLevels {
    /// Chunk-level slot ℓ' (nil when unoccupied).
    var slots: [UnsafePointer<Float>?]
    /// In-chunk levels ℓ ≤ chunkBits of a split first chunk (nil when unoccupied).
    var pieces: [UnsafePointer<Float>?]
    /// For a chunk-aligned start: the initial levels summed into one slot, and that slot.
    var mergedLevels: [Int] = []
    var mergedSlot: Int = 0

    /// Floats of `storage` needed.
    static func storageCount(_ geo: LogLinearGeometry) -> Int {
        (geo.maxChunkLevel + 2 + geo.chunkBits + 1) * geo.s.headDim * geo.s.stateSize
    }

    /// Reads the [L0, P, N] levels at `base` into `storage`, transposed.
    init(_ geo: LogLinearGeometry, base: UnsafePointer<Float>?, storage: UnsafeMutablePointer<Float>) {
        let (P, N, cb, t0) = (geo.s.headDim, geo.s.stateSize, geo.chunkBits, geo.t0)
        let size = P * N, slotCount = geo.maxChunkLevel + 2
        slots = Array(repeating: nil, count: slotCount)
        pieces = Array(repeating: nil, count: cb + 1)
        guard let base, t0 > 0 else { return }
        let L0 = geo.s.initialLevels
        func occupied(_ l: Int) -> Bool { l < L0 && logLinearLevelIsOccupied(l, tokens: t0) }
        func read(_ l: Int, into dst: UnsafeMutablePointer<Float>) -> UnsafePointer<Float> {
            ssdTranspose(base + l * size, ld: N, rows: P, cols: N, into: dst, ldOut: P)
            return UnsafePointer(dst)
        }
        let z = geo.firstChunk
        if geo.splitFirstChunk {
            for l in 0...cb where occupied(l) { pieces[l] = read(l, into: storage + (slotCount + l) * size) }
            for lp in 1..<slotCount where (z >> (lp - 1)) & 1 == 1 && occupied(cb + lp) {
                slots[lp] = read(cb + lp, into: storage + lp * size)
            }
        } else {
            // Token t0 = z·Q merges levels 0…cb+ctz(z) into level cb+ctz(z)+1 = chunk slot ctz(z)+1.
            let k = cb + z.trailingZeroBitCount
            mergedSlot = z.trailingZeroBitCount + 1
            let merged = storage + mergedSlot * size, one = storage + slotCount * size
            merged.update(repeating: 0, count: size)
            for l in 0...k where occupied(l) {
                simdAxpy(1, read(l, into: one), merged, size)
                mergedLevels.append(l)
            }
            slots[mergedSlot] = UnsafePointer(merged)
            for lp in (mergedSlot + 1)..<slotCount where (z >> (lp - 1)) & 1 == 1 && occupied(cb + lp) {
                slots[lp] = read(cb + lp, into: storage + lp * size)
            }
        }
    }

    /// Writes the gradients of the slots and pieces (N×P) back as the initial state's [L0, P, N].
    func writeGradient(_ geo: LogLinearGeometry, dSlots: UnsafePointer<Float>, dPieces: UnsafePointer<Float>,
                       into out: UnsafeMutablePointer<Float>) {
        let (P, N, cb) = (geo.s.headDim, geo.s.stateSize, geo.chunkBits)
        let size = P * N
        func write(_ src: UnsafePointer<Float>, level l: Int) {
            ssdTranspose(src, ld: P, rows: N, cols: P, into: out + l * size, ldOut: N)
        }
        for l in 0...cb where pieces[l] != nil { write(dPieces + l * size, level: l) }
        for lp in 1..<slots.count where slots[lp] != nil {
            if !geo.splitFirstChunk && lp == mergedSlot {
                for l in mergedLevels { write(dSlots + lp * size, level: l) }
            } else {
                write(dSlots + lp * size, level: cb + lp)
            }
        }
    }
}

// MARK: - Forward

/// Chunked log-linear attention forward (O(T log T)). See the file header for the algorithm.
///
/// Block states are kept transposed (N×P), the SSD blocks' layout; the final state is written
/// in the decode layout [B, H, L, P, N].
public func logLinearChunkedForward(_ inputs: LogLinearInputs, options: LogLinearOptions = LogLinearOptions(),
                                    returnFinalState: Bool = true) -> LogLinearForwardResult {
    let s = inputs.validatedShape("logLinearChunkedForward")
    let geo = LogLinearGeometry(s, chunkSize: options.chunkSize, function: "logLinearChunkedForward")
    let (H, P, N, Q, cb) = (s.heads, s.headDim, s.stateSize, geo.Q, geo.chunkBits)
    let size = P * N, Lf = s.finalLevels, L0 = s.initialLevels
    var y = Tensor(uninitializedShape: [s.batch, s.length, H, P])
    var final: Tensor? = returnFinalState ? Tensor.zeros([s.batch, H, Lf, P, N]) : nil
    let yp = y.mutablePointer(), finalp = final?.mutablePointer()
    let scores = ScratchBuffer(count: geo.scoresCount, zeroed: false)
    withExtendedLifetime(inputs) {
        let inp = LogLinearPointers(inputs)
        computeScores(geo, inp, into: scores.pointer)
        ZooThreads.parallelFor(s.batch * H) { range in
            let denormals = DenormalsFlushed()
            defer { denormals.restore() }
            let work = LogLinearChunkWork(Q: Q, P: P, N: N)
            let slotCount = geo.maxChunkLevel + 2
            let slotBuffer = ScratchBuffer(count: slotCount * size, zeroed: true)
            let initialBuffer = ScratchBuffer(count: InitialLevels.storageCount(geo), zeroed: false)
            let slots = slotBuffer.pointer
            for bh in range {
                let b = bh / H, h = bh % H, g = h / s.headsPerGroup
                let initial = InitialLevels(geo, base: inp.initial.map { $0 + bh * L0 * size }, storage: initialBuffer.pointer)
                // Live chunk-level block states: slot ℓ' holds the block read at level c+ℓ', decayed
                // to the end of its own last chunk; slotReference is the Double running log-decay there.
                var slotReference = [Double](repeating: 0, count: slotCount)
                for lp in 1..<slotCount {
                    if let p = initial.slots[lp] { (slots + lp * size).update(from: p, count: size) }
                }
                var before = 0.0          // running log-decay up to the chunk's first token
                for z in geo.firstChunk...geo.lastChunk {
                    let (lo, hi, offset) = geo.range(z)
                    let q = hi - lo
                    work.prepare(geo, inp, b: b, h: h, lo: lo, q: q, decayMatrix: true)
                    let lam = inp.lambda + geo.lamOffset(b, lo, h)
                    work.buildLevelWeights(q: q, offset: offset, lambda: lam, lamRow: geo.lamRow)
                    let yc = yp + geo.xOffset(b, lo, h), cRows = inp.C + geo.bcOffset(b, lo, g)
                    ssdIntraChunkForward(q: q, p: P, scores: scores.pointer + geo.scoresOffset(b, g, z), ldScores: q,
                                         decay: work.decay, ldDecay: Q, weight: work.weight, ldWeight: Q,
                                         x: work.xd, ldx: P, y: yc, ldy: geo.xRow, accumulate: false, matrix: work.matrix)
                    for i in 0..<q { simdAxpy(inp.D[h], inp.x + geo.xOffset(b, lo + i, h), yc + i * geo.xRow, P) }
                    let splitHere = z == geo.firstChunk && geo.splitFirstChunk
                    if splitHere {
                        for l in 0...cb {
                            guard let piece = initial.pieces[l] else { continue }
                            for i in 0..<q { work.rowScale[i] = lam[i * geo.lamRow + max(l, bitLength((geo.t0 + lo + i) ^ (geo.t0 - 1)))] }
                            ssdStateToOutputForward(q: q, p: P, n: N, c: cRows, ldc: geo.bcRow, stateTransposed: piece,
                                                    ldStateTransposed: P, logDecay: work.logDecay, rowScale: work.rowScale,
                                                    y: yc, ldy: geo.xRow, accumulate: true, scratch: work.blockScratch)
                        }
                    }
                    var bits = z, lp = 1
                    while bits != 0 {
                        if bits & 1 == 1 {
                            let f = Float(exp(before - slotReference[lp]))
                            for i in 0..<q { work.rowScale[i] = lam[i * geo.lamRow + cb + lp] * f }
                            ssdStateToOutputForward(q: q, p: P, n: N, c: cRows, ldc: geo.bcRow, stateTransposed: slots + lp * size,
                                                    ldStateTransposed: P, logDecay: work.logDecay, rowScale: work.rowScale,
                                                    y: yc, ldy: geo.xRow, accumulate: true, scratch: work.blockScratch)
                        }
                        bits >>= 1; lp += 1
                    }
                    let total = Double(work.total)
                    let after = before + total
                    let bRows = inp.B + geo.bcOffset(b, lo, g)
                    if z < geo.lastChunk {
                        // This chunk's end state, then the carry through the full slots below the
                        // first zero bit of z (the chunk-level merge).
                        let carry = work.state
                        ssdChunkStateForward(q: q, p: P, n: N, x: work.xd, ldx: P, b: bRows, ldb: geo.bcRow,
                                             logDecay: work.logDecay, stateTransposed: carry, ldStateTransposed: P, beta: 0,
                                             scratch: work.blockScratch)
                        if splitHere {
                            let e = Float(exp(total))
                            for l in 0...cb { if let piece = initial.pieces[l] { simdAxpy(e, piece, carry, size) } }
                        }
                        let m = (z + 1).trailingZeroBitCount
                        if m >= 1 {
                            for j in 1...m { simdAxpy(Float(exp(after - slotReference[j])), slots + j * size, carry, size) }
                        }
                        (slots + (m + 1) * size).update(from: carry, count: size)
                        slotReference[m + 1] = after
                    } else if let finalp {
                        writeFinalState(geo, inp, work: work, b: b, h: h, g: g, q: q, offset: offset, before: before,
                                        slots: slots, slotReference: slotReference, initial: initial,
                                        out: finalp + bh * Lf * size)
                    }
                    before = after
                }
            }
        }
    }
    return LogLinearForwardResult(y: y, finalState: final)
}

/// The decode state after the last token qf (levels of query qf, decayed to qf), from the last
/// chunk's tokens, the live chunk-level slots (N×P) and (when the call fits in a split first
/// chunk) the initial pieces. `work` holds the last chunk's prepared rows.
private func writeFinalState(_ geo: LogLinearGeometry, _ inp: LogLinearPointers, work: LogLinearChunkWork,
                             b: Int, h: Int, g: Int, q: Int, offset: Int, before: Double,
                             slots: UnsafePointer<Float>, slotReference: [Double], initial: InitialLevels,
                             out: UnsafeMutablePointer<Float>) {
    let (P, N, cb) = (geo.s.headDim, geo.s.stateSize, geo.chunkBits)
    let size = P * N, z = geo.lastChunk, last = work.total
    var bits = z, lp = 1
    while bits != 0 {
        if bits & 1 == 1 {
            let f = Float(exp(Double(last) + before - slotReference[lp]))
            let src = slots + lp * size, dst = out + (cb + lp) * size
            for p in 0..<P { for n in 0..<N { dst[p * N + n] += f * src[n * P + p] } }
        }
        bits >>= 1; lp += 1
    }
    let (lo, _, _) = geo.range(z)
    let bRows = inp.B + geo.bcOffset(b, lo, g)
    forEachLevelRange(row: q - 1, offset: offset) { level, j0, j1 in
        // Σ_{j∈[j0,j1)} e^{a_{j+1}+…+a_{q−1}} Δ_j x_j B_jᵀ: the block decays to j1−1, then on to the end.
        let target = out + level * size, blockState = work.state
        ssdChunkStateForward(q: j1 - j0, p: P, n: N, x: work.xd + j0 * P, ldx: P, b: bRows + j0 * geo.bcRow,
                             ldb: geo.bcRow, logDecay: work.logDecay + j0, stateTransposed: blockState,
                             ldStateTransposed: P, beta: 0, scratch: work.blockScratch)
        ssdTranspose(blockState, ld: P, rows: N, cols: P, into: target, ldOut: N)
        simdScale(target, fastExp(work.suffix[j1]), size)
    }
    if z == geo.firstChunk && geo.splitFirstChunk {
        let qf = geo.t0 + geo.T - 1, e = fastExp(last)
        for l in 0...cb {
            guard let piece = initial.pieces[l] else { continue }
            let target = out + max(l, bitLength(qf ^ (geo.t0 - 1))) * size
            for p in 0..<P { for n in 0..<N { target[p * N + n] += e * piece[n * P + p] } }
        }
    }
}

/// Flushes denormal floats to zero on the calling thread (x86 MXCSR FTZ and DAZ) until `restore()`.
///
/// Block states several chunks old are scaled by e^{−hundreds}: on their way to zero the products
/// pass through the denormal range, where every x86 multiply takes a microcode assist (the forward
/// ran 3–4× slower at T = 8192 with A = −U(1, 16)). Flushing changes results by < 1e-38 absolute.
/// The setting is per thread, so each worker of a parallel loop sets and restores its own; BLAS
/// calls made on the thread inherit it.
struct DenormalsFlushed {
    #if arch(x86_64)
    private let saved: fenv_t
    init() {
        var env = fenv_t()
        fegetenv(&env)
        saved = env
        env.__mxcsr |= 0x8040          // FTZ (bit 15) | DAZ (bit 6)
        fesetenv(&env)
    }
    func restore() { var env = saved; fesetenv(&env) }
    #else
    init() {}
    func restore() {}
    #endif
}

// MARK: - Backward

/// Chunked log-linear attention backward for the loss Σ y·dY + Σ F·dF (F the final state;
/// `finalStateGradient` nil means 0). Recomputes what it needs from the inputs.
public func logLinearChunkedBackward(_ inputs: LogLinearInputs, outputGradient: Tensor,
                                     finalStateGradient: Tensor? = nil,
                                     options: LogLinearOptions = LogLinearOptions()) -> LogLinearGradients {
    let function = "logLinearChunkedBackward"
    let s = inputs.validatedShape(function)
    let geo = LogLinearGeometry(s, chunkSize: options.chunkSize, function: function)
    let (batch, H, P, N, Q, T) = (s.batch, s.heads, s.headDim, s.stateSize, geo.Q, s.length)
    let size = P * N, Lf = s.finalLevels, L0 = s.initialLevels, G = s.groups
    if outputGradient.shape != inputs.x.shape {
        fatalError("\(function): outputGradient is \(outputGradient.shape), expected \(inputs.x.shape)")
    }
    let finalShape = [batch, H, Lf, P, N]
    if let finalStateGradient, finalStateGradient.shape != finalShape {
        fatalError("\(function): finalStateGradient is \(finalStateGradient.shape), expected \(finalShape)")
    }
    var dx = Tensor(uninitializedShape: inputs.x.shape), ddt = Tensor(uninitializedShape: inputs.dt.shape)
    var dlambda = Tensor.zeros(inputs.lambda.shape)
    var dB = Tensor.zeros(inputs.B.shape), dC = Tensor.zeros(inputs.C.shape)
    var dInitial: Tensor? = inputs.initialState.map { Tensor.zeros($0.shape) }
    let dxp = dx.mutablePointer(), ddtp = ddt.mutablePointer(), dlamp = dlambda.mutablePointer()
    let dBp = dB.mutablePointer(), dCp = dC.mutablePointer(), dInitp = dInitial?.mutablePointer()
    let scores = ScratchBuffer(count: geo.scoresCount, zeroed: false)
    let scoreGrads = ScratchBuffer(count: geo.scoresCount, zeroed: true)      // Σ over a group's heads
    var perHeadA = [Double](repeating: 0, count: batch * H), perHeadD = perHeadA, perHeadBias = perHeadA
    let waveWidth = max(1, min(ZooThreads.count, batch * H))
    let chunkScoreCount = geo.chunkCount * Q * Q
    // Per wave slot: the head's C Bᵀ gradient per chunk, and its other dC, dB rows.
    let slotFloats = chunkScoreCount + 2 * T * N
    let waveBuffers = ScratchBuffer(count: waveWidth * slotFloats, zeroed: false)
    let wave = waveBuffers.pointer

    withExtendedLifetime((inputs, outputGradient, finalStateGradient)) {
        let inp = LogLinearPointers(inputs)
        let gyp = outputGradient.pointer, gFp = finalStateGradient?.pointer
        computeScores(geo, inp, into: scores.pointer)
        perHeadA.withUnsafeMutableBufferPointer { dAp in
        perHeadD.withUnsafeMutableBufferPointer { dDp in
        perHeadBias.withUnsafeMutableBufferPointer { dBiasp in
        for w0 in stride(from: 0, to: batch * H, by: waveWidth) {
            let w1 = min(batch * H, w0 + waveWidth)
            ZooThreads.parallelFor(w1 - w0) { range in
                let denormals = DenormalsFlushed()
                defer { denormals.restore() }
                for k in range {
                    let bh = w0 + k, b = bh / H, h = bh % H, g = h / s.headsPerGroup
                    let myScores = wave + k * slotFloats, myC = myScores + chunkScoreCount, myB = myC + T * N
                    myC.update(repeating: 0, count: 2 * T * N)
                    let sums = backwardHead(geo, inp, b: b, h: h, g: g, scores: scores.pointer, gy: gyp,
                                            gFinal: gFp.map { $0 + bh * Lf * size },
                                            dx: dxp, ddt: ddtp, dlambda: dlamp, dScores: myScores, dCRows: myC, dBRows: myB,
                                            dInitial: dInitp.map { $0 + bh * L0 * size })
                    dAp[bh] = sums.A; dDp[bh] = sums.D; dBiasp[bh] = sums.bias
                }
            }
            // Fold the wave's heads into the group sums in head order (deterministic).
            for k in 0..<(w1 - w0) {
                let bh = w0 + k, b = bh / H, g = (bh % H) / s.headsPerGroup
                let myScores = wave + k * slotFloats, myC = myScores + chunkScoreCount, myB = myC + T * N
                ZooThreads.parallelFor(T, minChunk: 64) { rows in
                    for t in rows {
                        let o = geo.bcOffset(b, t, g)
                        simdAxpy(1, myC + t * N, dCp + o, N)
                        simdAxpy(1, myB + t * N, dBp + o, N)
                    }
                }
                let dst = scoreGrads.pointer + geo.scoresOffset(b, g, geo.firstChunk)
                ZooThreads.parallelFor(geo.chunkCount) { chunks in
                    for c in chunks { simdAxpy(1, myScores + c * Q * Q, dst + c * Q * Q, Q * Q) }
                }
            }
        }
        }}}
        // dC += dS·B and dB += dSᵀ·C per chunk, with dS = Σ_heads d(C Bᵀ) of the group.
        let n = geo.chunkCount
        ZooThreads.parallelFor(batch * G * n) { range in
            for item in range {
                let z = geo.firstChunk + item % n, g = (item / n) % G, b = item / (n * G)
                let (lo, hi, _) = geo.range(z)
                let q = hi - lo, o = geo.bcOffset(b, lo, g), dS = scoreGrads.pointer + geo.scoresOffset(b, g, z)
                gemm(m: q, n: N, k: q, a: dS, lda: q, b: inp.B + o, ldb: geo.bcRow, beta: 1, c: dCp + o, ldc: geo.bcRow)
                gemm(transA: true, m: q, n: N, k: q, a: dS, lda: q, b: inp.C + o, ldb: geo.bcRow, beta: 1, c: dBp + o, ldc: geo.bcRow)
            }
        }
    }
    func reduce(_ perHead: [Double]) -> Tensor {
        Tensor(shape: [H]) { buf in
            for h in 0..<H { var v = 0.0; for b in 0..<batch { v += perHead[b * H + h] }; buf[h] = Float(v) }
        }
    }
    return LogLinearGradients(x: dx, dt: ddt, A: reduce(perHeadA), B: dB, C: dC, D: reduce(perHeadD),
                              dtBias: reduce(perHeadBias), lambda: dlambda, initialState: dInitial)
}

/// One head's backward: recomputes the chunk-level block states, then walks the chunks in reverse.
/// Writes this head's rows of dx, ddt, dλ and dInitial; its C Bᵀ gradients to `dScores` (per chunk,
/// q×q) and its other dC, dB contributions to `dCRows`, `dBRows` ([T, N]). Returns Σ dA, dD, d(dt_bias).
///
/// Decay gradients: the SSD blocks give each chunk's own log-decay gradients directly. A block
/// state read (or merged) across chunks carries e^{(sum of the chunk totals in between)}; its
/// gradient v goes to every log-decay of those chunks, collected as a difference array over chunks.
private func backwardHead(_ geo: LogLinearGeometry, _ inp: LogLinearPointers, b: Int, h: Int, g: Int,
                          scores: UnsafePointer<Float>, gy: UnsafePointer<Float>, gFinal: UnsafePointer<Float>?,
                          dx: UnsafeMutablePointer<Float>, ddt: UnsafeMutablePointer<Float>,
                          dlambda: UnsafeMutablePointer<Float>,
                          dScores: UnsafeMutablePointer<Float>, dCRows: UnsafeMutablePointer<Float>,
                          dBRows: UnsafeMutablePointer<Float>, dInitial: UnsafeMutablePointer<Float>?)
    -> (A: Double, D: Double, bias: Double) {
    let s = geo.s
    let (P, N, Q, cb, T) = (s.headDim, s.stateSize, geo.Q, geo.chunkBits, s.length)
    let size = P * N, L0 = s.initialLevels, first = geo.firstChunk, last = geo.lastChunk
    let work = LogLinearChunkWork(Q: Q, P: P, N: N)
    let slotCount = geo.maxChunkLevel + 2
    // nodes[i]: state of the block created after chunk first+i (decayed to its end, N×P); dNodes:
    // its gradient. dSlots, dPieces: gradients of the initial state's slots and pieces (N×P).
    let nodeCount = geo.chunkCount - 1
    let nodeBuffer = ScratchBuffer(count: 2 * max(nodeCount, 1) * size, zeroed: true)
    let nodes = nodeBuffer.pointer, dNodes = nodeBuffer.pointer + max(nodeCount, 1) * size
    let initialBuffer = ScratchBuffer(count: InitialLevels.storageCount(geo) + (slotCount + cb + 1) * size, zeroed: true)
    let dSlots = initialBuffer.pointer, dPieces = dSlots + slotCount * size
    let initial = InitialLevels(geo, base: inp.initial.map { $0 + (b * s.heads + h) * L0 * size },
                                storage: dPieces + (cb + 1) * size)
    var nodeReference = [Double](repeating: 0, count: max(nodeCount, 1))
    var before = [Double](repeating: 0, count: geo.chunkCount)
    // Difference array over chunks: a value added on chunks [c1, c2] reaches every log-decay in them.
    var spread = [Double](repeating: 0, count: geo.chunkCount)

    /// The block read by query chunk z at chunk level ℓ': its state, its gradient, the running
    /// log-decay at its end, and its last chunk (first − 1 for blocks of the initial state).
    @inline(__always) func block(_ z: Int, _ level: Int) -> (UnsafePointer<Float>?, UnsafeMutablePointer<Float>, Double, Int) {
        let id = geo.blockNode(queryChunk: z, level: level)
        if id >= 0 { return (UnsafePointer(nodes + id * size), dNodes + id * size, nodeReference[id], first + id) }
        return (initial.slots[level], dSlots + level * size, 0, first - 1)
    }
    /// Adds v to the log-decay gradient of every token of chunks c1…c2.
    @inline(__always) func spreadOver(_ c1: Int, _ c2: Int, _ v: Double) {
        let lo = max(c1, first)
        if lo > c2 { return }
        spread[c2 - first] += v
        if lo - 1 >= first { spread[lo - 1 - first] -= v }
    }

    // Pass A: every chunk-level block state, as the forward's carries.
    var running = 0.0
    for z in first...last {
        before[z - first] = running
        let (lo, hi, _) = geo.range(z)
        let q = hi - lo
        work.prepare(geo, inp, b: b, h: h, lo: lo, q: q, decayMatrix: false)
        let total = Double(work.total)
        running += total
        guard z < last else { break }
        let node = nodes + (z - first) * size
        ssdChunkStateForward(q: q, p: P, n: N, x: work.xd, ldx: P, b: inp.B + geo.bcOffset(b, lo, g), ldb: geo.bcRow,
                             logDecay: work.logDecay, stateTransposed: node, ldStateTransposed: P, beta: 0,
                             scratch: work.blockScratch)
        if z == first && geo.splitFirstChunk {
            let e = Float(exp(total))
            for l in 0...cb { if let piece = initial.pieces[l] { simdAxpy(e, piece, node, size) } }
        }
        let m = (z + 1).trailingZeroBitCount
        if m >= 1 {
            for j in 1...m {
                let (st, _, ref, _) = block(z, j)
                if let st { simdAxpy(Float(exp(running - ref)), st, node, size) }
            }
        }
        nodeReference[z - first] = running
    }

    // Pass B: reverse walk.
    var pending = 0.0, sumA = 0.0, sumD = 0.0, sumBias = 0.0
    let a = inp.A[h], skip = inp.D[h], bias = inp.dtBias[h]
    let xRow = geo.xRow, lamRow = geo.lamRow
    let dLog = work.dLogDecay
    for z in stride(from: last, through: first, by: -1) {
        let (lo, hi, offset) = geo.range(z)
        let q = hi - lo
        work.prepare(geo, inp, b: b, h: h, lo: lo, q: q, decayMatrix: true)
        let lam = inp.lambda + geo.lamOffset(b, lo, h), dlam = dlambda + geo.lamOffset(b, lo, h)
        work.buildLevelWeights(q: q, offset: offset, lambda: lam, lamRow: lamRow)
        let gyc = gy + geo.xOffset(b, lo, h)
        let cRows = inp.C + geo.bcOffset(b, lo, g), bRows = inp.B + geo.bcOffset(b, lo, g)
        let dC = dCRows + lo * N, dB = dBRows + lo * N
        let du = work.du
        let beforeZ = before[z - first], after = beforeZ + Double(work.total)
        var wholeChunk = 0.0            // added to every log-decay of this chunk
        dLog.update(repeating: 0, count: q)
        // (1) intra-chunk block
        ssdIntraChunkBackward(q: q, p: P, scores: scores + geo.scoresOffset(b, g, z), ldScores: q,
                              decay: work.decay, ldDecay: Q, weight: work.weight, ldWeight: Q, x: work.xd, ldx: P,
                              dY: gyc, lddy: xRow, dX: du, lddx: P, accumulateX: false,
                              dScores: dScores + (z - first) * Q * Q, dWeight: work.dWeight,
                              dLogDecay: dLog, matrix: work.matrix, scratch: work.blockScratch)
        for i in 0..<q {
            let dw = work.dWeight + i * q
            forEachLevelRange(row: i, offset: offset) { level, j0, j1 in
                dlam[i * lamRow + level] += j1 - j0 >= 16 ? simdSum(dw + j0, j1 - j0) : (j0..<j1).reduce(0) { $0 + dw[$1] }
            }
        }
        // (2) the initial state's in-chunk pieces and the chunk-level blocks
        if z == first && geo.splitFirstChunk {
            for l in 0...cb {
                guard let piece = initial.pieces[l] else { continue }
                for i in 0..<q { work.rowScale[i] = lam[i * lamRow + max(l, bitLength((geo.t0 + lo + i) ^ (geo.t0 - 1)))] }
                ssdStateToOutputBackward(q: q, p: P, n: N, c: cRows, ldc: geo.bcRow, stateTransposed: piece,
                                         ldStateTransposed: P, logDecay: work.logDecay, rowScale: work.rowScale,
                                         dY: gyc, lddy: xRow, dC: dC, lddc: N, accumulateC: true,
                                         dStateTransposed: dPieces + l * size, lddStateTransposed: P, accumulateState: true,
                                         dLogDecay: dLog, dRowScale: work.rowGrad, scratch: work.blockScratch)
                for i in 0..<q { dlam[i * lamRow + max(l, bitLength((geo.t0 + lo + i) ^ (geo.t0 - 1)))] += work.rowGrad[i] }
            }
        }
        var bits = z, lp = 1
        while bits != 0 {
            if bits & 1 == 1 {
                let (st, dst, ref, end) = block(z, lp)
                if let st {
                    let f = Float(exp(beforeZ - ref))
                    for i in 0..<q { work.rowScale[i] = lam[i * lamRow + cb + lp] * f }
                    ssdStateToOutputBackward(q: q, p: P, n: N, c: cRows, ldc: geo.bcRow, stateTransposed: st,
                                             ldStateTransposed: P, logDecay: work.logDecay, rowScale: work.rowScale,
                                             dY: gyc, lddy: xRow, dC: dC, lddc: N, accumulateC: true,
                                             dStateTransposed: dst, lddStateTransposed: P, accumulateState: true,
                                             dLogDecay: dLog, dRowScale: work.rowGrad, scratch: work.blockScratch)
                    var v = 0.0
                    for i in 0..<q {
                        dlam[i * lamRow + cb + lp] += f * work.rowGrad[i]
                        v += Double(work.rowScale[i] * work.rowGrad[i])
                    }
                    spreadOver(end + 1, z - 1, v)
                }
            }
            bits >>= 1; lp += 1
        }
        // (3) the final state's gradient (last chunk only)
        if z == last, let gF = gFinal {
            var bits = z, lp = 1
            while bits != 0 {
                if bits & 1 == 1 {
                    let (st, dst, ref, end) = block(z, lp)
                    if let st {
                        let phi = Float(exp(Double(work.total) + beforeZ - ref)), gl = work.state
                        ssdTranspose(gF + (cb + lp) * size, ld: N, rows: P, cols: N, into: gl, ldOut: P)
                        simdAxpy(phi, gl, dst, size)
                        let v = Double(phi * simdDot(gl, st, size))
                        wholeChunk += v
                        spreadOver(end + 1, z - 1, v)
                    }
                }
                bits >>= 1; lp += 1
            }
            forEachLevelRange(row: q - 1, offset: offset) { level, j0, j1 in
                // F_ℓ = e^{a_{j1}+…+a_{q−1}} · (the block's state at j1−1)
                let phi = fastExp(work.suffix[j1]), blockState = work.state2, scaled = work.state
                ssdChunkStateForward(q: j1 - j0, p: P, n: N, x: work.xd + j0 * P, ldx: P, b: bRows + j0 * geo.bcRow,
                                     ldb: geo.bcRow, logDecay: work.logDecay + j0, stateTransposed: blockState,
                                     ldStateTransposed: P, beta: 0, scratch: work.blockScratch)
                ssdTranspose(gF + level * size, ld: N, rows: P, cols: N, into: scaled, ldOut: P)
                simdScale(scaled, phi, size)
                let v = simdDot(scaled, blockState, size)
                for k in j1..<q { dLog[k] += v }
                ssdChunkStateBackward(q: j1 - j0, p: P, n: N, x: work.xd + j0 * P, ldx: P, b: bRows + j0 * geo.bcRow,
                                      ldb: geo.bcRow, logDecay: work.logDecay + j0, dStateTransposed: scaled,
                                      lddStateTransposed: P, dX: du + j0 * P, lddx: P, accumulateX: true, dB: dB + j0 * N,
                                      lddb: N, accumulateB: true, dLogDecay: dLog + j0, scratch: work.blockScratch)
            }
            if z == first && geo.splitFirstChunk {
                let qf = geo.t0 + T - 1, e = fastExp(work.total)
                for l in 0...cb {
                    guard let piece = initial.pieces[l] else { continue }
                    let gl = work.state
                    ssdTranspose(gF + max(l, bitLength(qf ^ (geo.t0 - 1))) * size, ld: N, rows: P, cols: N, into: gl, ldOut: P)
                    simdAxpy(e, gl, dPieces + l * size, size)
                    wholeChunk += Double(e * simdDot(gl, piece, size))
                }
            }
        }
        // (4) the chunk's own end state: its block's gradient is complete now
        if z < last {
            let dcs = UnsafePointer(dNodes + (z - first) * size)
            let m = (z + 1).trailingZeroBitCount
            if m >= 1 {
                for j in 1...m {
                    let (st, dst, ref, end) = block(z, j)
                    guard let st else { continue }
                    let phi = Float(exp(after - ref))
                    simdAxpy(phi, dcs, dst, size)
                    spreadOver(end + 1, z, Double(phi * simdDot(dcs, st, size)))
                }
            }
            if z == first && geo.splitFirstChunk {
                let e = fastExp(work.total)
                for l in 0...cb {
                    guard let piece = initial.pieces[l] else { continue }
                    simdAxpy(e, dcs, dPieces + l * size, size)
                    wholeChunk += Double(e * simdDot(dcs, piece, size))
                }
            }
            ssdChunkStateBackward(q: q, p: P, n: N, x: work.xd, ldx: P, b: bRows, ldb: geo.bcRow,
                                  logDecay: work.logDecay, dStateTransposed: dcs, lddStateTransposed: P, dX: du, lddx: P,
                                  accumulateX: true, dB: dB, lddb: N, accumulateB: true, dLogDecay: dLog,
                                  scratch: work.blockScratch)
        }
        // (5) per token: the cross-chunk decay gradients, then Δ, x, dt.
        pending += spread[z - first]
        let common = Float(pending + wholeChunk)
        for i in 0..<q {
            let t = lo + i, xo = geo.xOffset(b, t, h)
            let gyRow = gy + xo, xIn = inp.x + xo, duRow = du + i * P
            let dLogI = dLog[i] + common
            let d = work.delta[i]
            let dDelta = simdDot(duRow, xIn, P) + dLogI * a
            let dxRow = dx + xo
            for p in 0..<P { dxRow[p] = d * duRow[p] + skip * gyRow[p] }
            let pre = Double(inp.dt[geo.dtOffset(b, t, h)] + bias)
            let ddtValue = Double(dDelta) * sigmoidDouble(pre)
            ddt[geo.dtOffset(b, t, h)] = Float(ddtValue)
            sumA += Double(dLogI) * Double(d); sumD += Double(simdDot(gyRow, xIn, P)); sumBias += ddtValue
        }
    }
    // The initial state's gradient, level by level.
    if let dInitial { initial.writeGradient(geo, dSlots: dSlots, dPieces: dPieces, into: dInitial) }
    return (sumA, sumD, sumBias)
}
