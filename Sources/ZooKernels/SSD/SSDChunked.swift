// Chunked SSD (Mamba-2's state-space-duality algorithm), forward and backward.
//
//   x [B,T,H,P], dt [B,T,H], A [H], B, C [B,T,G,N], D [H], dtBias [H], h0 [B,H,P,N] (optional)
//   → y [B,T,H,P], final state [B,H,P,N]
//
//   Δ_t = softplus(dt_t + dtBias_h),  a_t = Δ_t A_h,  S_t = e^{a_t} S_{t−1} + Δ_t x_t B_tᵀ,
//   y_t = S_t C_t + D_h x_t
//
// Time is cut into chunks of Q tokens (the last may be shorter; nothing is padded). Per chunk c
// and head, with X = Δ ∘ x and the blocks of SSDChunkBlocks.swift:
//   (1) intra-chunk  Y_c  = (C Bᵀ ∘ L) X + D x              quadratic block, by BLAS
//   (2) chunk state  K_c  = Xᵀ diag(w) B                    the chunk's own end state
//   (3) scan         H_{c+1} = e^{A_c} H_c + K_c            H_0 = h0, A_c the chunk's total log-decay
//   (4) state→output Y_c += diag(e^cum) C H_cᵀ
// (1), (2) and (4) are independent across chunks: they run in parallel over (batch, chunk), all
// heads of a chunk in one worker, so the chunk's rows of x, y, B, C are read as one contiguous
// block and C Bᵀ is computed once per B/C group. Only the scan (3), P·N operations per chunk, runs
// per (batch, head) in order. The backward mirrors this: per (batch, chunk) the gradient each
// chunk's outputs send to its entering state; per (batch, head) the reverse scan of the state
// gradients; per (batch, chunk) everything else, with the heads' contributions to dB and dC added
// in a fixed head order inside the chunk's worker. Results do not depend on the thread count.
//
// States are kept transposed (Sᵀ, N×P; see SSDChunkBlocks.swift) in a [B,H,nChunks+1,N,P] buffer:
// slot c is the state entering chunk c, slot nChunks the final state. It is T·P·N/Q floats per
// head (the size of x when N = Q): memory stays linear in T.
import Foundation
import ZooTensor

// MARK: - Forward

/// Chunked SSD forward. Returns y, the final state and, when `saveChunkStates`, the states
/// entering the chunks (for `ssdChunkedBackward`, which otherwise recomputes them).
public func ssdChunkedForward(_ inputs: SSDInputs, options: SSDOptions = SSDOptions(),
                              saveChunkStates: Bool = false) -> SSDForwardResult {
    let s = inputs.validatedShape("ssdChunkedForward")
    let lay = SSDLayout(shape: s, options: options, function: "ssdChunkedForward")
    let (P, N, H, Q) = (s.headDim, s.stateSize, s.heads, lay.Q)
    var y = Tensor(uninitializedShape: s.xShape)
    var states = Tensor(uninitializedShape: lay.chunkStatesShape)
    var finalState = Tensor(uninitializedShape: s.stateShape)
    let yp = y.mutablePointer(), sp = states.mutablePointer(), fp = finalState.mutablePointer()
    withExtendedLifetime(inputs) {
        let inp = SSDPointers(inputs)
        scanChunkStates(lay, inp, states: sp, y: yp)
        // (4) state → output, per (batch, chunk); chunk 0 only has a state when h0 is given.
        let first = inp.initialState == nil ? 1 : 0
        let chunks = lay.nChunks - first
        forEachChunk(s.batch * chunks, lay) { work, item in
            let b = item / chunks, c = first + item % chunks
            let t0 = c * Q, q = min(Q, s.length - t0)
            work.prepareChunk(lay, inp, b: b, t0: t0, q: q, values: false)
            for h in 0..<H {
                ssdStateToOutputForward(q: q, p: P, n: N, c: inp.C + lay.bcOffset(b, t0, h / s.headsPerGroup), ldc: lay.bcRow,
                                        stateTransposed: sp + lay.stateSlot(b, h, c), ldStateTransposed: P,
                                        logDecay: work.logDecay(h), rowScale: nil,
                                        y: work.headRows(h), ldy: P, accumulate: false, scratch: work.blockScratch)
            }
            work.addHeadRows(to: yp + lay.xOffset(b, t0, 0), lay, q: q)
        }
        for bh in 0..<(s.batch * H) {
            ssdTranspose(sp + lay.stateSlot(bh / H, bh % H, lay.nChunks), ld: P, rows: N, cols: P, into: fp + bh * P * N, ldOut: N)
        }
    }
    return SSDForwardResult(y: y, finalState: finalState, chunkStates: saveChunkStates ? states : nil)
}

/// Steps (1)–(3): fills `states` ([B,H,nChunks+1,N,P], transposed states) and, when `y` is given,
/// writes the intra-chunk outputs plus D x there.
func scanChunkStates(_ lay: SSDLayout, _ inp: SSDPointers, states sp: UnsafeMutablePointer<Float>,
                     y yp: UnsafeMutablePointer<Float>?) {
    let s = lay.shape
    let (P, N, H, G, Q) = (s.headDim, s.stateSize, s.heads, s.groups, lay.Q)
    let totalDecay = ScratchBuffer(count: s.batch * H * lay.nChunks, zeroed: false)
    // (1) and (2), per (batch, chunk): the chunk's own end state goes to slot c + 1.
    forEachChunk(s.batch * lay.nChunks, lay) { work, item in
        let b = item / lay.nChunks, c = item % lay.nChunks
        let t0 = c * Q, q = min(Q, s.length - t0)
        work.prepareChunk(lay, inp, b: b, t0: t0, q: q, values: true)
        if yp != nil {
            for g in 0..<G {
                let bc = lay.bcOffset(b, t0, g)
                ssdChunkScores(q: q, n: N, c: inp.C + bc, ldc: lay.bcRow, b: inp.B + bc, ldb: lay.bcRow,
                               scores: work.scores + g * Q * Q, ldScores: q, scratch: work.blockScratch)
            }
        }
        for h in 0..<H {
            let g = h / s.headsPerGroup, bc = lay.bcOffset(b, t0, g)
            if yp != nil {
                ssdChunkDecay(logDecay: work.logDecay(h), count: q, decay: work.decay, ldDecay: Q)
                ssdIntraChunkForward(q: q, p: P, scores: work.scores + g * Q * Q, ldScores: q,
                                     decay: work.decay, ldDecay: Q, weight: nil, ldWeight: 0,
                                     x: work.values(h), ldx: P, y: work.headRows(h), ldy: P, accumulate: false,
                                     matrix: work.matrix)
            }
            totalDecay.pointer[(b * H + h) * lay.nChunks + c] = ssdChunkTotalDecay(logDecay: work.logDecay(h), count: q)
            ssdChunkStateForward(q: q, p: P, n: N, x: work.values(h), ldx: P, b: inp.B + bc, ldb: lay.bcRow,
                                 logDecay: work.logDecay(h), stateTransposed: sp + lay.stateSlot(b, h, c + 1),
                                 ldStateTransposed: P, beta: 0, scratch: work.blockScratch)
        }
        if let yp {
            // y = intra-chunk output + D x, written row by row over the chunk's contiguous block.
            for i in 0..<q {
                for h in 0..<H {
                    let o = lay.xOffset(b, t0 + i, h)
                    let dst = yp + o, src = work.headRows(h) + i * P, xr = inp.x + o
                    let skip = F16(repeating: inp.D[h])
                    var k = 0
                    while k + 16 <= P { store16(dst + k, load16(src + k).addingProduct(skip, load16(xr + k))); k += 16 }
                    while k < P { dst[k] = src[k] + inp.D[h] * xr[k]; k += 1 }
                }
            }
        }
    }
    // (3) the scan, per (batch, head): slot c+1 ← e^{A_c} slot c + slot c+1.
    ZooThreads.parallelFor(s.batch * H) { range in
        for bh in range {
            let b = bh / H, h = bh % H
            let slot0 = sp + lay.stateSlot(b, h, 0)
            if let h0 = inp.initialState {
                ssdTranspose(h0 + bh * P * N, ld: N, rows: P, cols: N, into: slot0, ldOut: P)
            } else {
                slot0.update(repeating: 0, count: P * N)
            }
            for c in 0..<lay.nChunks {
                let beta = totalDecay.pointer[bh * lay.nChunks + c]
                simdAxpy(beta, sp + lay.stateSlot(b, h, c), sp + lay.stateSlot(b, h, c + 1), P * N)
            }
        }
    }
}

// MARK: - Backward

/// Chunked SSD backward for the loss Σ y·dY + Σ h_T·dh_T (`finalStateGradient` nil means 0).
/// `chunkStates` from `ssdChunkedForward(saveChunkStates: true)` saves one product per chunk and
/// head; without it they are recomputed.
public func ssdChunkedBackward(_ inputs: SSDInputs, outputGradient dY: Tensor,
                               finalStateGradient: Tensor? = nil, chunkStates: Tensor? = nil,
                               options: SSDOptions = SSDOptions()) -> SSDGradients {
    let fn = "ssdChunkedBackward"
    let s = inputs.validatedShape(fn)
    let lay = SSDLayout(shape: s, options: options, function: fn)
    if dY.shape != s.xShape { fatalError("\(fn): outputGradient is \(describe(dY.shape)), expected \(describe(s.xShape))") }
    if let g = finalStateGradient, g.shape != s.stateShape {
        fatalError("\(fn): finalStateGradient is \(describe(g.shape)), expected \(describe(s.stateShape))")
    }
    if let cs = chunkStates, cs.shape != lay.chunkStatesShape {
        fatalError("\(fn): chunkStates is \(describe(cs.shape)), expected \(describe(lay.chunkStatesShape)) for chunk size \(lay.Q)")
    }
    let (P, N, H, G, Q, hpg) = (s.headDim, s.stateSize, s.heads, s.groups, lay.Q, s.headsPerGroup)
    let nc = lay.nChunks
    let states: Tensor
    if let chunkStates { states = chunkStates } else {
        var fresh = Tensor(uninitializedShape: lay.chunkStatesShape)
        let fp = fresh.mutablePointer()
        withExtendedLifetime(inputs) { scanChunkStates(lay, SSDPointers(inputs), states: fp, y: nil) }
        states = fresh
    }

    var dx = Tensor(uninitializedShape: s.xShape)
    var ddt = Tensor(uninitializedShape: s.dtShape)
    var dB = Tensor(uninitializedShape: s.bcShape)
    var dC = Tensor(uninitializedShape: s.bcShape)
    var dh0 = Tensor(uninitializedShape: s.stateShape)
    // Slot c: first the gradient chunk c's outputs send to its entering state, then (after the
    // reverse scan) the gradient of the state leaving chunk c. Transposed, like the states.
    let stateGrads = ScratchBuffer(count: s.batch * H * nc * N * P, zeroed: false)
    let totalDecay = ScratchBuffer(count: s.batch * H * nc, zeroed: false)
    // Per (batch, chunk, head) sums for dA, dD, dtBias, reduced in a fixed order at the end.
    var partial = [Double](repeating: 0, count: s.batch * nc * H * 3)
    let dxp = dx.mutablePointer(), ddtp = ddt.mutablePointer(), dBp = dB.mutablePointer(), dCp = dC.mutablePointer()
    let dh0p = dh0.mutablePointer()
    func gradSlot(_ b: Int, _ h: Int, _ c: Int) -> Int { ((b * H + h) * nc + c) * N * P }

    withExtendedLifetime((inputs, dY, states, finalStateGradient)) {
        let inp = SSDPointers(inputs)
        let dyp = dY.pointer, sp = states.pointer, dhT = finalStateGradient?.pointer
        // Per (batch, chunk): the gradient each chunk's outputs send to the state entering it.
        forEachChunk(s.batch * nc, lay) { work, item in
            let b = item / nc, c = item % nc
            let t0 = c * Q, q = min(Q, s.length - t0)
            work.prepareChunk(lay, inp, b: b, t0: t0, q: q, values: false)
            work.gatherHeadRows(dyp + lay.xOffset(b, t0, 0), lay, q: q)
            for h in 0..<H {
                totalDecay.pointer[(b * H + h) * nc + c] = ssdChunkTotalDecay(logDecay: work.logDecay(h), count: q)
                ssdStateToOutputStateGradient(q: q, p: P, n: N, c: inp.C + lay.bcOffset(b, t0, h / hpg), ldc: lay.bcRow,
                                              logDecay: work.logDecay(h), rowScale: nil,
                                              dY: work.gradients(h), lddy: P,
                                              dStateTransposed: stateGrads.pointer + gradSlot(b, h, c), lddStateTransposed: P,
                                              accumulate: false, scratch: work.blockScratch)
            }
        }
        // Reverse scan per (batch, head): dH_leaving(c) = dH_entering(c+1);
        // dH_entering(c) = e^{A_c} dH_leaving(c) + (what chunk c's outputs sent).
        ZooThreads.parallelFor(s.batch * H) { range in
            let runningBuffer = ScratchBuffer(count: N * P, zeroed: false)
            defer { withExtendedLifetime(runningBuffer) {} }
            let running = runningBuffer.pointer
            for bh in range {
                let b = bh / H, h = bh % H
                if let dhT {
                    ssdTranspose(dhT + bh * P * N, ld: N, rows: P, cols: N, into: running, ldOut: P)
                } else {
                    running.update(repeating: 0, count: N * P)
                }
                for c in stride(from: nc - 1, through: 0, by: -1) {
                    let beta = totalDecay.pointer[bh * nc + c]
                    swapScaleAdd(stateGrads.pointer + gradSlot(b, h, c), running, beta, N * P)
                }
                ssdTranspose(running, ld: P, rows: N, cols: P, into: dh0p + bh * P * N, ldOut: N)
            }
        }
        // Per (batch, chunk): everything else.
        partial.withUnsafeMutableBufferPointer { partialBuffer in
            let sums = partialBuffer.baseAddress!
            forEachChunk(s.batch * nc, lay) { work, item in
                let b = item / nc, c = item % nc
                let t0 = c * Q, q = min(Q, s.length - t0)
                work.prepareChunk(lay, inp, b: b, t0: t0, q: q, values: true)
                work.gatherHeadRows(dyp + lay.xOffset(b, t0, 0), lay, q: q)
                for g in 0..<G {
                    let bc = lay.bcOffset(b, t0, g)
                    ssdChunkScores(q: q, n: N, c: inp.C + bc, ldc: lay.bcRow, b: inp.B + bc, ldb: lay.bcRow,
                                   scores: work.scores + g * Q * Q, ldScores: q, scratch: work.blockScratch)
                    (work.scoreGrads + g * Q * Q).update(repeating: 0, count: q * q)
                }
                (dBp + lay.bcOffset(b, t0, 0)).update(repeating: 0, count: q * lay.bcRow)
                (dCp + lay.bcOffset(b, t0, 0)).update(repeating: 0, count: q * lay.bcRow)
                for h in 0..<H {
                    let g = h / hpg, bc = lay.bcOffset(b, t0, g)
                    let dyc = work.gradients(h), dxd = work.headRows(h), a = work.logDecay(h)
                    let da = work.logDecayGradient(h)
                    da.update(repeating: 0, count: q)
                    ssdChunkDecay(logDecay: a, count: q, decay: work.decay, ldDecay: Q)
                    ssdIntraChunkBackward(q: q, p: P, scores: work.scores + g * Q * Q, ldScores: q,
                                          decay: work.decay, ldDecay: Q, weight: nil, ldWeight: 0,
                                          x: work.values(h), ldx: P, dY: dyc, lddy: P,
                                          dX: dxd, lddx: P, accumulateX: false,
                                          dScores: work.headScoreGrads, dWeight: nil,
                                          dLogDecay: da, matrix: work.matrix, scratch: work.blockScratch)
                    simdAxpy(1, work.headScoreGrads, work.scoreGrads + g * Q * Q, q * q)
                    if c > 0 || inp.initialState != nil {
                        ssdStateToOutputBackward(q: q, p: P, n: N, c: inp.C + bc, ldc: lay.bcRow,
                                                 stateTransposed: sp + lay.stateSlot(b, h, c), ldStateTransposed: P,
                                                 logDecay: a, rowScale: nil, dY: dyc, lddy: P,
                                                 dC: dCp + bc, lddc: lay.bcRow, accumulateC: true,
                                                 dStateTransposed: nil, lddStateTransposed: P, accumulateState: false,
                                                 dLogDecay: da, dRowScale: nil, scratch: work.blockScratch)
                    }
                    ssdChunkStateBackward(q: q, p: P, n: N, x: work.values(h), ldx: P, b: inp.B + bc, ldb: lay.bcRow,
                                          logDecay: a,
                                          dStateTransposed: stateGrads.pointer + gradSlot(b, h, c), lddStateTransposed: P,
                                          dX: dxd, lddx: P, accumulateX: true,
                                          dB: dBp + bc, lddb: lay.bcRow, accumulateB: true,
                                          dLogDecay: da, scratch: work.blockScratch)
                    // The e^{A_c} H_c term of the scan: A_c is the sum of every a in the chunk, and
                    // its gradient e^{A_c}⟨H_c, dH_leaving⟩ (both already in cache here).
                    let dTotal = totalDecay.pointer[(b * H + h) * nc + c]
                        * rowDot(sp + lay.stateSlot(b, h, c), stateGrads.pointer + gradSlot(b, h, c), N * P)
                    for i in 0..<q { da[i] += dTotal }
                }
                // The scores are shared by a group's heads: dC += dS·B, dB += dSᵀ·C once per group.
                for g in 0..<G {
                    let bc = lay.bcOffset(b, t0, g), dS = work.scoreGrads + g * Q * Q
                    gemm(m: q, n: N, k: q, a: dS, lda: q, b: inp.B + bc, ldb: lay.bcRow, beta: 1, c: dCp + bc, ldc: lay.bcRow)
                    gemm(transA: true, m: q, n: N, k: q, a: dS, lda: q, b: inp.C + bc, ldb: lay.bcRow, beta: 1, c: dBp + bc, ldc: lay.bcRow)
                }
                // Back through a = Δ A, X = Δ ∘ x, Δ = softplus(dt + bias) and D x, row by row over
                // the chunk's contiguous block.
                withUnsafeTemporaryAllocation(of: SIMD8<Double>.self, capacity: H) { dBuffer in
                withUnsafeTemporaryAllocation(of: Double.self, capacity: 2 * H) { sBuffer in
                    // dD = Σ dy·x: products accumulated in Double lanes (Float products are
                    // exact in Double; a long cancelling sum keeps its digits), reduced once.
                    let sumD = dBuffer.baseAddress!, sumA = sBuffer.baseAddress!, sumBias = sumA + H
                    sumD.initialize(repeating: SIMD8<Double>(), count: H)
                    sumA.initialize(repeating: 0, count: 2 * H)
                    for i in 0..<q {
                        for h in 0..<H {
                            let o = lay.xOffset(b, t0 + i, h)
                            let xr = inp.x + o, dyr = dyp + o, dxr = dxp + o, dxdr = work.headRows(h) + i * P
                            let delta = work.delta(h)[i], da = work.logDecayGradient(h)[i]
                            let dDelta = rowDot(dxdr, xr, P) + da * inp.A[h]
                            sumA[h] += Double(da * delta)
                            accumulateProducts(dyr, xr, P, into: &sumD[h])
                            let d = F16(repeating: delta), skip = F16(repeating: inp.D[h])
                            var k = 0
                            while k + 16 <= P {
                                store16(dxr + k, (load16(dxdr + k) * d).addingProduct(skip, load16(dyr + k)))
                                k += 16
                            }
                            while k < P { dxr[k] = delta * dxdr[k] + inp.D[h] * dyr[k]; k += 1 }
                            let gdt = dDelta * work.slope(h)[i]
                            ddtp[lay.dtOffset(b, t0 + i, h)] = gdt
                            sumBias[h] += Double(gdt)
                        }
                    }
                    for h in 0..<H {
                        let k = ((b * nc + c) * H + h) * 3
                        sums[k] = sumA[h]; sums[k + 1] = sumD[h].sum(); sums[k + 2] = sumBias[h]
                    }
                }
                }
            }
        }
    }

    var dA = Tensor(uninitializedShape: [H]), dD = Tensor(uninitializedShape: [H]), dBias = Tensor(uninitializedShape: [H])
    let dAp = dA.mutablePointer(), dDp = dD.mutablePointer(), dBiasp = dBias.mutablePointer()
    for h in 0..<H {
        var a = 0.0, d = 0.0, bias = 0.0
        for bc in 0..<(s.batch * nc) {
            let k = (bc * H + h) * 3
            a += partial[k]; d += partial[k + 1]; bias += partial[k + 2]
        }
        dAp[h] = Float(a); dDp[h] = Float(d); dBiasp[h] = Float(bias)
    }
    return SSDGradients(x: dx, dt: ddt, A: dA, B: dB, C: dC, D: dD, dtBias: dBias, initialState: dh0)
}

/// (slot, running) ← (running, β·running + slot), elementwise.
@inline(__always)
private func swapScaleAdd(_ slot: UnsafeMutablePointer<Float>, _ running: UnsafeMutablePointer<Float>, _ beta: Float, _ n: Int) {
    let b = F16(repeating: beta)
    var i = 0
    while i + 16 <= n {
        let g = load16(slot + i), r = load16(running + i)
        store16(slot + i, r)
        store16(running + i, g.addingProduct(b, r))
        i += 16
    }
    while i < n {
        let g = slot[i], r = running[i]
        slot[i] = r
        running[i] = g + beta * r
        i += 1
    }
}

// MARK: - Shared pieces

/// Runs `body(workspace, item)` for every item in 0..<count on the workers, handing items out one
/// at a time, so a worker slowed by other load on the machine takes fewer of them. Each worker has
/// its own workspace. Which worker takes an item never changes a result: items write disjoint
/// outputs, and per-item partial sums are reduced in item order afterwards.
func forEachChunk(_ count: Int, _ lay: SSDLayout, _ body: (ChunkWorkspace, Int) -> Void) {
    if count <= 0 { return }
    let workers = min(ZooThreads.count, count)
    let next = ItemCounter()
    ZooThreads.parallelFor(workers) { range in
        for _ in range {
            let work = ChunkWorkspace(lay)
            while let item = next.take(below: count) { body(work, item) }
            withExtendedLifetime(work) {}
        }
    }
}

/// A shared counter handing out 0, 1, 2, … (one lock per item: nanoseconds against the tens of
/// microseconds an item takes).
final class ItemCounter: @unchecked Sendable {
    private let lock = NSLock()
    private var value = 0
    func take(below count: Int) -> Int? {
        lock.lock(); defer { lock.unlock() }
        if value >= count { return nil }
        value += 1
        return value - 1
    }
}

/// Index arithmetic of the canonical layouts plus the chunking.
struct SSDLayout {
    let shape: SSDShape
    let Q: Int
    let nChunks: Int
    let deltaSoftplus: Bool
    var xRow: Int { shape.heads * shape.headDim }
    var bcRow: Int { shape.groups * shape.stateSize }
    var chunkStatesShape: [Int] { [shape.batch, shape.heads, nChunks + 1, shape.stateSize, shape.headDim] }

    init(shape: SSDShape, options: SSDOptions, function: String) {
        if options.chunkSize < 1 { fatalError("\(function): chunkSize must be ≥ 1, got \(options.chunkSize)") }
        self.shape = shape
        Q = options.chunkSize
        nChunks = (shape.length + Q - 1) / Q
        deltaSoftplus = options.deltaSoftplus
    }
    @inline(__always) func xOffset(_ b: Int, _ t: Int, _ h: Int) -> Int { ((b * shape.length + t) * shape.heads + h) * shape.headDim }
    @inline(__always) func dtOffset(_ b: Int, _ t: Int, _ h: Int) -> Int { (b * shape.length + t) * shape.heads + h }
    @inline(__always) func bcOffset(_ b: Int, _ t: Int, _ g: Int) -> Int { ((b * shape.length + t) * shape.groups + g) * shape.stateSize }
    /// Slot c of head (b, h) in the [B,H,nChunks+1,N,P] states buffer.
    @inline(__always) func stateSlot(_ b: Int, _ h: Int, _ c: Int) -> Int {
        ((b * shape.heads + h) * (nChunks + 1) + c) * shape.stateSize * shape.headDim
    }
    /// Token t of head (b, h) in a [B,H,T] buffer.
    @inline(__always) func logDecayOffset(_ b: Int, _ h: Int, _ t: Int) -> Int { (b * shape.heads + h) * shape.length + t }
}

/// Raw pointers to the inputs (valid inside `withExtendedLifetime(inputs)`).
struct SSDPointers {
    let x, dt, A, B, C, D, dtBias: UnsafePointer<Float>
    let initialState: UnsafePointer<Float>?
    init(_ i: SSDInputs) {
        x = i.x.pointer; dt = i.dt.pointer; A = i.A.pointer; B = i.B.pointer; C = i.C.pointer
        D = i.D.pointer; dtBias = i.dtBias.pointer; initialState = i.initialState?.pointer
    }
}

/// Scratch of one worker, reused for every chunk it handles. Per-head quantities of the current
/// chunk are kept head-major ([H][Q] and [H][Q][P]) so that each head's rows are contiguous, and
/// the chunk's block of x / y / dY is read or written in one sequential pass.
final class ChunkWorkspace {
    let buffer: ScratchBuffer
    let Q: Int, P: Int
    private let deltas, slopes, logDecays, logDecayGradients: UnsafeMutablePointer<Float>  // [H][Q] each
    private let valueRows, gradientRows, outputRows: UnsafeMutablePointer<Float>           // [H][Q][P] each
    let decay, matrix, headScoreGrads: UnsafeMutablePointer<Float>                         // Q×Q each
    let scores, scoreGrads: UnsafeMutablePointer<Float>                                    // G·Q×Q each
    let blockScratch: UnsafeMutablePointer<Float>                                          // 2·Q·(P+N) + P·N
    private let raw: UnsafeMutablePointer<Float>                                           // Q·H

    init(_ lay: SSDLayout) {
        let (Q, P, N, G, H) = (lay.Q, lay.shape.headDim, lay.shape.stateSize, lay.shape.groups, lay.shape.heads)
        self.Q = Q; self.P = P
        let sizes = [H * Q, H * Q, H * Q, H * Q, H * Q * P, H * Q * P, H * Q * P, Q * Q, Q * Q, Q * Q,
                     G * Q * Q, G * Q * Q, 2 * Q * (P + N) + P * N, H * Q]
        // Each piece starts on a 64-byte boundary, and pieces are skewed by a cache line beyond
        // that: buffers a multiple of 4 KiB apart make loads from one wait on stores to the other
        // (4K aliasing; measured on the Q×Q row passes).
        let rounded = sizes.map { ($0 + 15) / 16 * 16 + 16 }
        buffer = ScratchBuffer(count: rounded.reduce(0, +), zeroed: false)
        var offsets: [Int] = [], acc = 0
        for r in rounded { offsets.append(acc); acc += r }
        let p = buffer.pointer
        deltas = p + offsets[0]; slopes = p + offsets[1]; logDecays = p + offsets[2]; logDecayGradients = p + offsets[3]
        valueRows = p + offsets[4]; gradientRows = p + offsets[5]; outputRows = p + offsets[6]
        decay = p + offsets[7]; matrix = p + offsets[8]; headScoreGrads = p + offsets[9]
        scores = p + offsets[10]; scoreGrads = p + offsets[11]; blockScratch = p + offsets[12]; raw = p + offsets[13]
    }

    /// Δ of head h's tokens in the chunk (q floats), dΔ/d(dt), the log-decays a = Δ A, their gradient.
    @inline(__always) func delta(_ h: Int) -> UnsafeMutablePointer<Float> { deltas + h * Q }
    @inline(__always) func slope(_ h: Int) -> UnsafeMutablePointer<Float> { slopes + h * Q }
    @inline(__always) func logDecay(_ h: Int) -> UnsafeMutablePointer<Float> { logDecays + h * Q }
    @inline(__always) func logDecayGradient(_ h: Int) -> UnsafeMutablePointer<Float> { logDecayGradients + h * Q }
    /// X = Δ ∘ x of head h (q×P, ld P).
    @inline(__always) func values(_ h: Int) -> UnsafeMutablePointer<Float> { valueRows + h * Q * P }
    /// dY of head h (q×P, ld P), after `gatherHeadRows`.
    @inline(__always) func gradients(_ h: Int) -> UnsafeMutablePointer<Float> { gradientRows + h * Q * P }
    /// Head h's output rows (q×P, ld P): y in the forward, the gradient of X in the backward.
    @inline(__always) func headRows(_ h: Int) -> UnsafeMutablePointer<Float> { outputRows + h * Q * P }

    /// Δ, dΔ/d(dt) and a = Δ A for every head of the chunk (and X = Δ ∘ x when `values`).
    func prepareChunk(_ lay: SSDLayout, _ inp: SSDPointers, b: Int, t0: Int, q: Int, values: Bool) {
        let H = lay.shape.heads
        let dtRows = inp.dt + lay.dtOffset(b, t0, 0)          // q×H, contiguous
        for i in 0..<q { for h in 0..<H { raw[i * H + h] = dtRows[i * H + h] + inp.dtBias[h] } }
        // Softplus over the whole block at once; results go to the head-major slots.
        withUnsafeTemporaryAllocation(of: Float.self, capacity: 2 * q * H) { tmp in
            let d = tmp.baseAddress!, sl = d + q * H
            ssdDelta(raw, count: q * H, softplus: lay.deltaSoftplus, delta: d, slope: sl)
            for i in 0..<q {
                for h in 0..<H {
                    let dv = d[i * H + h]
                    deltas[h * Q + i] = dv
                    slopes[h * Q + i] = sl[i * H + h]
                    logDecays[h * Q + i] = dv * inp.A[h]
                }
            }
        }
        if values {
            let xRows = inp.x + lay.xOffset(b, t0, 0)         // q×H×P, contiguous
            for i in 0..<q {
                for h in 0..<H { scaledCopy(xRows + (i * H + h) * P, deltas[h * Q + i], valueRows + (h * Q + i) * P, P) }
            }
        }
    }

    /// Copies a chunk's block of a [B,T,H,P] tensor (q×H×P from `rows`) head-major into `gradients`.
    func gatherHeadRows(_ rows: UnsafePointer<Float>, _ lay: SSDLayout, q: Int) {
        let H = lay.shape.heads
        for i in 0..<q { for h in 0..<H { (gradientRows + (h * Q + i) * P).update(from: rows + (i * H + h) * P, count: P) } }
    }

    /// Adds the head-major `headRows` into a chunk's block of a [B,T,H,P] tensor.
    func addHeadRows(to rows: UnsafeMutablePointer<Float>, _ lay: SSDLayout, q: Int) {
        let H = lay.shape.heads
        for i in 0..<q { for h in 0..<H { simdAxpy(1, outputRows + (h * Q + i) * P, rows + (i * H + h) * P, P) } }
    }
}

/// Δ = softplus(v) (or v) and dΔ/dv = sigmoid(v) (or 1) for `count` values, 16 at a time.
/// softplus(v) = max(v, 0) + log1p(e^{−|v|}), with log1p(e) = log(u)·e/(u − 1), u = 1 + e (Kahan):
/// exact to a few ulps even where e^{−|v|} is small and 1 + e rounds.
func ssdDelta(_ v: UnsafePointer<Float>, count: Int, softplus: Bool,
              delta: UnsafeMutablePointer<Float>, slope: UnsafeMutablePointer<Float>) {
    if !softplus {
        delta.update(from: v, count: count)
        slope.update(repeating: 1, count: count)
        return
    }
    var i = 0
    while i < count {
        let n = min(16, count - i)
        var x = F16()
        for k in 0..<n { x[k] = v[i + k] }
        let e = fastExp(x.replacing(with: -x, where: x .> 0))       // e^{−|v|} ∈ (0, 1]
        let u = 1 + e
        let log1pE = (fastLog(u) * (e / (u - 1))).replacing(with: e, where: u .== 1)
        let d = x.replacing(with: 0, where: x .< 0) + log1pE
        let sig = (1 / u).replacing(with: e / u, where: x .< 0)       // 1/(1+e^{−v}), no overflow
        for k in 0..<n { delta[i + k] = d[k]; slope[i + k] = sig[k] }
        i += 16
    }
}

/// acc += a[i]·b[i] lane-wise in Double (the tail folded into lane 0): Float products are exact in
/// Double, so a long reduction that cancels (dD = Σ dy·x over every token) keeps its digits.
@inline(__always) func accumulateProducts(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ n: Int,
                                          into acc: inout SIMD8<Double>) {
    var i = 0
    while i + 8 <= n {
        let x = SIMD8<Double>(UnsafeRawPointer(a + i).loadUnaligned(as: SIMD8<Float>.self))
        let y = SIMD8<Double>(UnsafeRawPointer(b + i).loadUnaligned(as: SIMD8<Float>.self))
        acc = acc.addingProduct(x, y)
        i += 8
    }
    while i < n { acc[0] += Double(a[i]) * Double(b[i]); i += 1 }
}
