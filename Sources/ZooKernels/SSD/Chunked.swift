// Chunked SSD (Mamba-2's state-space-duality algorithm), forward and backward.
//
//   x [B,T,H,P], dt [B,T,H], A [H], B, C [B,T,G,N], D [H], dtBias [H], h0 [B,H,P,N] (optional)
//   → y [B,T,H,P], final state [B,H,P,N]
//
//   Δ_t = softplus(dt_t + dtBias_h),  a_t = Δ_t A_h,  S_t = e^{a_t} S_{t−1} + Δ_t x_t B_tᵀ,
//   y_t = S_t C_t + D_h x_t
//
// Time is cut into chunks of Q tokens (the last may be shorter; nothing is padded). Per chunk and
// head, with X = Δ ∘ x and cum the chunk's cumulative log-decay (ChunkBlocks.swift):
//   (1) intra-chunk  Y  = (C Bᵀ ∘ L) X               quadratic block, by BLAS
//   (2) state→output Y += diag(e^cum) C Hᵀ           H: state entering the chunk
//   (3) chunk state  H ← e^{cum_last} H + Xᵀ diag(w) B   (the inter-chunk scan, one step per chunk)
//   plus Y += D x. C Bᵀ is computed once per B/C group and shared by its heads.
//
// Parallel structure (results do not depend on the thread count): the chunks are taken in segments
// of `chunksPerSegment`; per segment, one parallel loop over (batch, group, chunk) computes the
// shared scores C Bᵀ, then one over (batch, head) walks the segment's chunks in order (backward:
// in reverse), carrying the head's state (backward: the state's gradient). In the backward a third
// loop over (batch, group, chunk) turns the heads' score gradients into dB, dC with two products
// per group and adds the heads' other B/C contributions in a fixed head order (deterministic).
// Scratch is O(chunksPerSegment·Q²) per head, independent of T.
import Foundation
import ZooTensor

// MARK: - Forward

/// Chunked SSD forward. Returns y, the final state and, when `saveChunkStates`, the state entering
/// every chunk (for `ssdChunkedBackward`).
public func ssdChunkedForward(_ inputs: SSDInputs, options: SSDOptions = SSDOptions(),
                              saveChunkStates: Bool = false) -> SSDForwardResult {
    let s = inputs.validatedShape("ssdChunkedForward")
    let lay = SSDLayout(shape: s, options: options, function: "ssdChunkedForward")
    var y = Tensor(uninitializedShape: s.xShape)
    var state = inputs.initialState?.copy() ?? Tensor.zeros(s.stateShape)
    var saved: Tensor? = saveChunkStates ? Tensor(uninitializedShape: lay.chunkStatesShape) : nil
    let (P, N, H, Q) = (s.headDim, s.stateSize, s.heads, lay.Q)
    let scores = ScratchBuffer(count: lay.scoresCount, zeroed: false)
    let yp = y.mutablePointer(), statep = state.mutablePointer()
    let savedp = saved?.mutablePointer()
    withExtendedLifetime(inputs) {
        let inp = SSDPointers(inputs)
        for c0 in stride(from: 0, to: lay.nChunks, by: lay.segment) {
            let c1 = min(lay.nChunks, c0 + lay.segment)
            computeScores(lay, inp, c0: c0, c1: c1, into: scores.pointer)
            ZooThreads.parallelFor(s.batch * H) { range in
                let work = HeadWorkspace(lay)
                for bh in range {
                    let b = bh / H, h = bh % H, g = h / s.headsPerGroup
                    let st = statep + bh * P * N
                    let skip = inp.D[h]
                    for c in c0..<c1 {
                        let t0 = c * Q, q = min(Q, s.length - t0)
                        work.prepare(lay, inp, b: b, h: h, t0: t0, q: q, decayMatrix: true)
                        let yc = yp + lay.xOffset(b, t0, h)
                        let bc = lay.bcOffset(b, t0, g)
                        ssdIntraChunkForward(q: q, p: P, scores: scores.pointer + lay.scoresSlot(b, g, c - c0), ldScores: q,
                                             decay: work.decay, ldDecay: Q, weight: nil, ldWeight: 0,
                                             x: work.xd, ldx: P, y: yc, ldy: lay.xRow, accumulate: false,
                                             matrix: work.matrix)
                        ssdStateToOutputForward(q: q, p: P, n: N, c: inp.C + bc, ldc: lay.bcRow, state: st, ldState: N,
                                                logDecay: work.logDecay, rowScale: nil, y: yc, ldy: lay.xRow,
                                                accumulate: true, scratch: work.blockScratch)
                        for i in 0..<q {
                            simdAxpy(skip, inp.x + lay.xOffset(b, t0 + i, h), yc + i * lay.xRow, P)
                        }
                        if let savedp { (savedp + (bh * lay.nChunks + c) * P * N).update(from: st, count: P * N) }
                        ssdChunkStateForward(q: q, p: P, n: N, x: work.xd, ldx: P, b: inp.B + bc, ldb: lay.bcRow,
                                             logDecay: work.logDecay, state: st, ldState: N,
                                             beta: ssdChunkTotalDecay(logDecay: work.logDecay, count: q), scratch: work.blockScratch)
                    }
                }
            }
        }
    }
    return SSDForwardResult(y: y, finalState: state, chunkStates: saved)
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
    let states = chunkStates ?? recomputeChunkStates(inputs, lay)
    let (P, N, H, G, Q, hpg) = (s.headDim, s.stateSize, s.heads, s.groups, lay.Q, s.headsPerGroup)

    var dx = Tensor(uninitializedShape: s.xShape)
    var ddt = Tensor(uninitializedShape: s.dtShape)
    var dB = Tensor(uninitializedShape: s.bcShape)
    var dC = Tensor(uninitializedShape: s.bcShape)
    var dState = finalStateGradient?.copy() ?? Tensor.zeros(s.stateShape)   // becomes dh0
    // Per (batch, head) sums for dA, dD, dtBias, reduced over the batch in order at the end.
    var headSums = [Double](repeating: 0, count: s.batch * H * 3)

    let scores = ScratchBuffer(count: lay.scoresCount, zeroed: false)
    let headScoreGrads = ScratchBuffer(count: s.batch * H * lay.segment * Q * Q, zeroed: false)
    let headCGrads = ScratchBuffer(count: s.batch * H * lay.segment * Q * N, zeroed: false)
    let headBGrads = ScratchBuffer(count: s.batch * H * lay.segment * Q * N, zeroed: false)
    let dxp = dx.mutablePointer(), ddtp = ddt.mutablePointer(), dBp = dB.mutablePointer(), dCp = dC.mutablePointer()
    let dsp = dState.mutablePointer()

    withExtendedLifetime((inputs, dY, states)) {
        let inp = SSDPointers(inputs)
        let dyp = dY.pointer, statesp = states.pointer
        headSums.withUnsafeMutableBufferPointer { sums in
            let sums = sums.baseAddress!
            for c0 in stride(from: 0, to: lay.nChunks, by: lay.segment).reversed() {
                let c1 = min(lay.nChunks, c0 + lay.segment)
                computeScores(lay, inp, c0: c0, c1: c1, into: scores.pointer)

                // Per head, chunks in reverse: everything but the B/C reduction over heads.
                ZooThreads.parallelFor(s.batch * H) { range in
                    let work = HeadWorkspace(lay)
                    for bh in range {
                        let b = bh / H, h = bh % H, g = h / hpg
                        let dH = dsp + bh * P * N
                        let aH = inp.A[h], skip = inp.D[h]
                        var sumA = 0.0, sumD = 0.0, sumBias = 0.0
                        for c in (c0..<c1).reversed() {
                            let t0 = c * Q, q = min(Q, s.length - t0)
                            work.prepare(lay, inp, b: b, h: h, t0: t0, q: q, decayMatrix: true)
                            let da = work.da
                            da.update(repeating: 0, count: q)
                            let dyc = dyp + lay.xOffset(b, t0, h)
                            let bc = lay.bcOffset(b, t0, g)
                            let slot = bh * lay.segment + (c - c0)
                            let hc = statesp + (bh * lay.nChunks + c) * P * N
                            ssdIntraChunkBackward(q: q, p: P, scores: scores.pointer + lay.scoresSlot(b, g, c - c0), ldScores: q,
                                                  decay: work.decay, ldDecay: Q, weight: nil, ldWeight: 0,
                                                  x: work.xd, ldx: P, dY: dyc, lddy: lay.xRow,
                                                  dX: work.dxd, lddx: P, accumulateX: false,
                                                  dScores: headScoreGrads.pointer + slot * Q * Q, dWeight: nil,
                                                  dLogDecay: da, matrix: work.matrix)
                            ssdStateToOutputBackward(q: q, p: P, n: N, c: inp.C + bc, ldc: lay.bcRow, state: hc, ldState: N,
                                                     logDecay: work.logDecay, rowScale: nil, dY: dyc, lddy: lay.xRow,
                                                     dC: headCGrads.pointer + slot * Q * N, lddc: N, accumulateC: false,
                                                     dState: work.dStateIn, lddState: N, accumulateState: false,
                                                     dLogDecay: da, dRowScale: nil, scratch: work.blockScratch)
                            ssdChunkStateBackward(q: q, p: P, n: N, x: work.xd, ldx: P, b: inp.B + bc, ldb: lay.bcRow,
                                                  logDecay: work.logDecay, dState: dH, lddState: N,
                                                  dX: work.dxd, lddx: P, accumulateX: true,
                                                  dB: headBGrads.pointer + slot * Q * N, lddb: N, accumulateB: false,
                                                  dLogDecay: da, scratch: work.blockScratch)
                            // The β·H term of the scan step, β = e^{a_0 + … + a_{q−1}}.
                            let beta = ssdChunkTotalDecay(logDecay: work.logDecay, count: q)
                            let dBeta = beta * simdDot(hc, dH, P * N)
                            for i in 0..<q { da[i] += dBeta }
                            scaledCopy(dH, beta, dH, P * N)
                            simdAxpy(1, work.dStateIn, dH, P * N)
                            // Back through a_t = Δ_t A, X = Δ ∘ x, Δ = softplus(dt + bias), and D x.
                            for i in 0..<q {
                                let xo = lay.xOffset(b, t0 + i, h)
                                let xr = inp.x + xo, dyr = dyp + xo, dxr = dxp + xo, dxdr = work.dxd + i * P
                                let delta = work.delta[i]
                                let dDelta = simdDot(dxdr, xr, P) + da[i] * aH
                                sumA += Double(da[i] * delta)
                                sumD += doubleDot(dyr, xr, P)
                                scaledCopy(dxdr, delta, dxr, P)
                                simdAxpy(skip, dyr, dxr, P)
                                let g = dDelta * work.slope[i]
                                ddtp[lay.dtOffset(b, t0 + i, h)] = g
                                sumBias += Double(g)
                            }
                        }
                        sums[bh * 3] += sumA; sums[bh * 3 + 1] += sumD; sums[bh * 3 + 2] += sumBias
                    }
                }

                // Per (batch, group, chunk): dC = dS·B + Σ_h dC_h, dB = dSᵀ·C + Σ_h dB_h with
                // dS = Σ_h dS_h, heads in order.
                let groupItems = s.batch * G * (c1 - c0)
                ZooThreads.parallelFor(groupItems) { range in
                    let summed = ScratchBuffer(count: Q * Q, zeroed: false)
                    let dS = summed.pointer
                    for item in range {
                        let b = item / (G * (c1 - c0)), rest = item % (G * (c1 - c0))
                        let g = rest / (c1 - c0), c = c0 + rest % (c1 - c0)
                        let t0 = c * Q, q = min(Q, s.length - t0)
                        let bc = lay.bcOffset(b, t0, g)
                        func slot(_ h: Int) -> Int { (b * H + h) * lay.segment + (c - c0) }
                        let h0 = g * hpg
                        dS.update(from: headScoreGrads.pointer + slot(h0) * Q * Q, count: q * q)
                        for h in (h0 + 1)..<(h0 + hpg) { simdAxpy(1, headScoreGrads.pointer + slot(h) * Q * Q, dS, q * q) }
                        gemm(m: q, n: N, k: q, a: dS, lda: q, b: inp.B + bc, ldb: lay.bcRow, c: dCp + bc, ldc: lay.bcRow)
                        gemm(transA: true, m: q, n: N, k: q, a: dS, lda: q, b: inp.C + bc, ldb: lay.bcRow, c: dBp + bc, ldc: lay.bcRow)
                        for h in h0..<(h0 + hpg) {
                            let hcg = headCGrads.pointer + slot(h) * Q * N, hbg = headBGrads.pointer + slot(h) * Q * N
                            for i in 0..<q {
                                simdAxpy(1, hcg + i * N, dCp + bc + i * lay.bcRow, N)
                                simdAxpy(1, hbg + i * N, dBp + bc + i * lay.bcRow, N)
                            }
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
        for b in 0..<s.batch {
            let k = (b * H + h) * 3
            a += headSums[k]; d += headSums[k + 1]; bias += headSums[k + 2]
        }
        dAp[h] = Float(a); dDp[h] = Float(d); dBiasp[h] = Float(bias)
    }
    return SSDGradients(x: dx, dt: ddt, A: dA, B: dB, C: dC, D: dD, dtBias: dBias, initialState: dState)
}

/// The state entering every chunk, [B,H,nChunks,P,N], by the forward's scan alone (no outputs).
func recomputeChunkStates(_ inputs: SSDInputs, _ lay: SSDLayout) -> Tensor {
    let s = lay.shape
    let (P, N, H, Q) = (s.headDim, s.stateSize, s.heads, lay.Q)
    var states = Tensor(uninitializedShape: lay.chunkStatesShape)
    let sp = states.mutablePointer()
    withExtendedLifetime(inputs) {
        let inp = SSDPointers(inputs)
        ZooThreads.parallelFor(s.batch * H) { range in
            let work = HeadWorkspace(lay)
            for bh in range {
                let b = bh / H, h = bh % H, g = h / s.headsPerGroup
                var st = sp + bh * lay.nChunks * P * N
                if let h0 = inp.initialState { st.update(from: h0 + bh * P * N, count: P * N) } else { st.update(repeating: 0, count: P * N) }
                for c in 0..<(lay.nChunks - 1) {
                    let t0 = c * Q, q = min(Q, s.length - t0)
                    work.prepare(lay, inp, b: b, h: h, t0: t0, q: q, decayMatrix: false)
                    let next = st + P * N
                    next.update(from: st, count: P * N)
                    ssdChunkStateForward(q: q, p: P, n: N, x: work.xd, ldx: P, b: inp.B + lay.bcOffset(b, t0, g),
                                         ldb: lay.bcRow, logDecay: work.logDecay, state: next, ldState: N,
                                         beta: ssdChunkTotalDecay(logDecay: work.logDecay, count: q), scratch: work.blockScratch)
                    st = next
                }
            }
        }
    }
    return states
}

// MARK: - Shared pieces

/// Index arithmetic of the canonical layouts plus the chunking.
struct SSDLayout {
    let shape: SSDShape
    let Q: Int
    let nChunks: Int
    let segment: Int
    let deltaSoftplus: Bool
    var xRow: Int { shape.heads * shape.headDim }
    var bcRow: Int { shape.groups * shape.stateSize }
    var chunkStatesShape: [Int] { [shape.batch, shape.heads, nChunks, shape.headDim, shape.stateSize] }
    var scoresCount: Int { shape.batch * shape.groups * segment * Q * Q }

    init(shape: SSDShape, options: SSDOptions, function: String) {
        if options.chunkSize < 1 { fatalError("\(function): chunkSize must be ≥ 1, got \(options.chunkSize)") }
        if options.chunksPerSegment < 1 { fatalError("\(function): chunksPerSegment must be ≥ 1, got \(options.chunksPerSegment)") }
        self.shape = shape
        Q = options.chunkSize
        nChunks = (shape.length + Q - 1) / Q
        segment = min(options.chunksPerSegment, nChunks)
        deltaSoftplus = options.deltaSoftplus
    }
    @inline(__always) func xOffset(_ b: Int, _ t: Int, _ h: Int) -> Int { ((b * shape.length + t) * shape.heads + h) * shape.headDim }
    @inline(__always) func dtOffset(_ b: Int, _ t: Int, _ h: Int) -> Int { (b * shape.length + t) * shape.heads + h }
    @inline(__always) func bcOffset(_ b: Int, _ t: Int, _ g: Int) -> Int { ((b * shape.length + t) * shape.groups + g) * shape.stateSize }
    /// Where chunk `c0 + k` of (b, g) keeps its scores C Bᵀ in the segment's buffer.
    @inline(__always) func scoresSlot(_ b: Int, _ g: Int, _ k: Int) -> Int { ((b * shape.groups + g) * segment + k) * Q * Q }
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

/// C Bᵀ of chunks c0..<c1 for every (batch, group), in parallel: the scores its heads share.
func computeScores(_ lay: SSDLayout, _ inp: SSDPointers, c0: Int, c1: Int, into scores: UnsafeMutablePointer<Float>) {
    let s = lay.shape, k = c1 - c0
    ZooThreads.parallelFor(s.batch * s.groups * k) { range in
        for item in range {
            let b = item / (s.groups * k), g = (item / k) % s.groups, c = c0 + item % k
            let t0 = c * lay.Q, q = min(lay.Q, s.length - t0)
            let bc = lay.bcOffset(b, t0, g)
            gemm(transB: true, m: q, n: q, k: s.stateSize, a: inp.C + bc, lda: lay.bcRow, b: inp.B + bc, ldb: lay.bcRow,
                 c: scores + lay.scoresSlot(b, g, c - c0), ldc: q)
        }
    }
}

/// Scratch of one worker, reused for every chunk it handles.
final class HeadWorkspace {
    let buffer: ScratchBuffer
    let delta, slope, logDecay, da: UnsafeMutablePointer<Float>              // Q each
    let decay, matrix: UnsafeMutablePointer<Float>                            // Q×Q each
    let xd, dxd: UnsafeMutablePointer<Float>                                  // Q×P each
    let dStateIn: UnsafeMutablePointer<Float>                                 // P×N
    let blockScratch: UnsafeMutablePointer<Float>                             // 2·Q·(P+N)

    init(_ lay: SSDLayout) {
        let (Q, P, N) = (lay.Q, lay.shape.headDim, lay.shape.stateSize)
        let sizes = [Q, Q, Q, Q, Q * Q, Q * Q, Q * P, Q * P, P * N, 2 * Q * (P + N)]
        // Each piece starts on a 64-byte boundary.
        let rounded = sizes.map { ($0 + 15) / 16 * 16 }
        buffer = ScratchBuffer(count: rounded.reduce(0, +), zeroed: false)
        var offsets: [Int] = [], acc = 0
        for r in rounded { offsets.append(acc); acc += r }
        let p = buffer.pointer
        delta = p + offsets[0]; slope = p + offsets[1]; logDecay = p + offsets[2]; da = p + offsets[3]
        decay = p + offsets[4]; matrix = p + offsets[5]
        xd = p + offsets[6]; dxd = p + offsets[7]; dStateIn = p + offsets[8]; blockScratch = p + offsets[9]
    }

    /// Δ, dΔ/d(dt), log-decay (and the decay matrix) and X = Δ ∘ x of one chunk.
    @inline(__always)
    func prepare(_ lay: SSDLayout, _ inp: SSDPointers, b: Int, h: Int, t0: Int, q: Int, decayMatrix: Bool) {
        let P = lay.shape.headDim
        let bias = inp.dtBias[h], aH = inp.A[h]
        for i in 0..<q {
            let v = inp.dt[lay.dtOffset(b, t0 + i, h)] + bias
            let d: Float
            if lay.deltaSoftplus {
                d = Float(softplus(Double(v)))
                slope[i] = Float(1 / (1 + exp(-Double(v))))
            } else {
                d = v
                slope[i] = 1
            }
            delta[i] = d
            logDecay[i] = d * aH
            scaledCopy(inp.x + lay.xOffset(b, t0 + i, h), d, xd + i * P, P)
        }
        if decayMatrix { ssdChunkDecay(logDecay: logDecay, count: q, decay: decay, ldDecay: lay.Q) }
    }
}

/// log(1 + e^v) without overflow: max(v, 0) + log1p(e^{−|v|}).
@inline(__always) func softplus(_ v: Double) -> Double { max(v, 0) + log1p(exp(-abs(v))) }

/// Σ a[i]·b[i] accumulated in Double: Float products are exact in Double, so a long reduction that
/// cancels (dD = Σ dy·x over every token) keeps its digits.
@inline(__always) func doubleDot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ n: Int) -> Double {
    var acc = SIMD8<Double>()
    var i = 0
    while i + 8 <= n {
        let x = SIMD8<Double>(UnsafeRawPointer(a + i).loadUnaligned(as: SIMD8<Float>.self))
        let y = SIMD8<Double>(UnsafeRawPointer(b + i).loadUnaligned(as: SIMD8<Float>.self))
        acc = acc.addingProduct(x, y)
        i += 8
    }
    var sum = acc.sum()
    while i < n { sum += Double(a[i]) * Double(b[i]); i += 1 }
    return sum
}
