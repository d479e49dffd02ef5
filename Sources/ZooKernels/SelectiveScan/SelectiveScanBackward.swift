import ZooTensor

// Selective scan, fast backward: reverse scan with chunk-wise recomputation.
//   inputs as the forward; gradOut [B, D, L]; gradFinalState [B, D, N] (optional)
//   loss = Σ out·gradOut + Σ h_L·gradFinalState
// Per channel, with a_t = exp(Δ_t A) and gy_t = gradOut_t·silu(z_t):
//   λ_t  = gy_t C_t + a_{t+1} ⊙ λ_{t+1}          (λ_{L−1} starts from gradFinalState; ∂/∂h0 = a_0 ⊙ λ_0)
//   ∂Δ_t = Σ_n λ_t (A a_t h_{t−1} + u_t B_t)     ∂u_t = gy_t D + Δ_t Σ_n λ_t B_t
//   ∂A   = Σ_t λ_t Δ_t a_t h_{t−1}               ∂B_t = Σ_channels λ_t Δ_t u_t    ∂C_t = Σ_channels gy_t h_t
//   ∂D   = Σ_t gy_t u_t      ∂z_t = gradOut_t y_t silu'(z_t)     ∂delta = ∂Δ·sigmoid(delta + bias) with softplus
// Algorithm: chunks of K steps in reverse; each chunk first recomputes its K states from the
// forward's checkpoint (keeping a_t and h_{t−1} for 16 states × 16 channels in an L2-sized
// buffer), then walks back through them. Vectors hold 16 channels as in the forward.
// ∂B and ∂C sum over the channels of a group: each step's 16 per-state vectors are reduced
// across lanes by a transpose-and-add tree (~3 instructions per sum); the per-tile results are
// added into one partial row per work item (a fixed slice of ≤ 4 tiles), and the partials are
// summed in slice order afterwards. ∂A, ∂D and ∂bias sum over the batch the same way. Every sum
// has a fixed order, so gradients do not depend on the thread count.

/// Tiles (of 16 channels) per backward work item: the unit whose ∂B/∂C partials are summed.
/// Fixed (not derived from the thread count) so the summation order never changes.
let tilesPerBackwardItem = 4

/// Gradients of the selective scan from the forward's checkpoints. `gradFinalState` nil means 0.
public func selectiveScanBackward(_ x: SelectiveScanInputs, saved: SelectiveScanSaved, gradOut: Tensor,
                                  gradFinalState: Tensor? = nil) -> SelectiveScanGradients {
    let function = "selectiveScanBackward"
    let s = x.shape(checkedBy: function)
    if saved.shape != s {
        fatalError("\(function): saved checkpoints are for \(saved.shape), inputs are \(s)")
    }
    let sequenceShape = ScanSequenceLayout(x.layout, s).shape(batch: s.batch)
    if gradOut.shape != sequenceShape {
        fatalError("\(function): gradOut must have out's shape \(describe(sequenceShape)) (\(x.layout)), got \(describe(gradOut.shape))")
    }
    if let gradFinalState, gradFinalState.shape != [s.batch, s.channels, s.stateSize] {
        fatalError("\(function): gradFinalState must be [B, D, N] = \(describe([s.batch, s.channels, s.stateSize])), got \(describe(gradFinalState.shape))")
    }
    let geo = ScanGeometry(s, interval: saved.checkpointInterval, function: function)
    let (nb, nd, l, n, np) = (s.batch, s.channels, s.length, s.stateSize, geo.paddedState)
    let slices = (geo.blocksPerGroup + tilesPerBackwardItem - 1) / tilesPerBackwardItem
    let items = nb * s.groups * slices

    var gu = Tensor(uninitializedShape: sequenceShape), gdelta = Tensor(uninitializedShape: sequenceShape)
    var gz = x.z == nil ? nil : Tensor(uninitializedShape: sequenceShape)
    var gh0 = Tensor(uninitializedShape: [nb, nd, n])
    let perBatchA = ScratchBuffer(count: nb * nd * n, zeroed: false)
    let perBatchD = ScratchBuffer(count: nb * nd, zeroed: false)
    let perBatchBias = ScratchBuffer(count: nb * nd, zeroed: false)
    let partialB = ScratchBuffer(count: items * l * np)
    let partialC = ScratchBuffer(count: items * l * np)
    let bRows = transposeStateInputs(x.B.pointer, ScanSequenceLayout(x.layout, s), batch: nb, paddedState: np)
    let cRows = transposeStateInputs(x.C.pointer, ScanSequenceLayout(x.layout, s), batch: nb, paddedState: np)
    let inputs = ScanInputPointers(x, shape: s, bRows: bRows, cRows: cRows)
    var gzPointer: SendablePointer<Float>? = nil
    if gz != nil { gzPointer = SendablePointer(gz!.mutablePointer()) }
    let outputs = ScanBackwardOutputs(
        gu: gu.mutablePointer(), gdelta: gdelta.mutablePointer(), gz: gzPointer?.pointer, gh0: gh0.mutablePointer(),
        gA: perBatchA.pointer, gD: perBatchD.pointer, gBias: perBatchBias.pointer,
        partialB: partialB.pointer, partialC: partialC.pointer,
        gradOut: gradOut.pointer, gradFinal: gradFinalState?.pointer, checkpoints: saved.checkpoints.pointer)
    let softplus = x.deltaSoftplus

    withExtendedLifetime((x, saved, gradOut, gradFinalState, bRows, cRows)) {
        ZooThreads.parallelFor(items) { range in
            let scratch = ScanBackwardScratch(geo)
            for item in range {
                let slice = item % slices, bg = item / slices
                let b = bg / s.groups, g = bg % s.groups
                let firstTile = slice * tilesPerBackwardItem
                for j in firstTile..<min(firstTile + tilesPerBackwardItem, geo.blocksPerGroup) {
                    backwardTile(batch: b, block: g * geo.blocksPerGroup + j, item: item, geo: geo, x: inputs,
                                 softplus: softplus, scratch: scratch, o: outputs)
                }
            }
        }
    }

    // ∂B, ∂C: sum the slice partials of each group in slice order, back to [B, G, N, L]
    // (token-major: [B, L, G, N], where state i of step t sits at stride 1 from state i − 1).
    var gB = Tensor(uninitializedShape: x.B.shape), gC = Tensor(uninitializedShape: x.C.shape)
    let gBp = SendablePointer(gB.mutablePointer()), gCp = SendablePointer(gC.mutablePointer())
    let pB = SendablePointer(partialB.pointer), pC = SendablePointer(partialC.pointer)
    let seq = ScanSequenceLayout(x.layout, s), groups = s.groups
    withExtendedLifetime((partialB, partialC)) {
        ZooThreads.parallelFor(nb * groups * n) { range in
            for row in range {
                let bg = row / n, i = row % n
                let start = seq.stateOffset(batch: bg / groups, group: bg % groups, step: 0) + i * seq.stateStride
                let step = seq.stateTimeStride
                for (partial, grad) in [(pB, gBp), (pC, gCp)] {
                    let dst = grad.pointer + start
                    let first = partial.pointer + bg * slices * l * np + i
                    for t in 0..<l { dst[t * step] = first[t * np] }
                    for slice in 1..<max(slices, 1) {
                        let src = first + slice * l * np
                        for t in 0..<l { dst[t * step] += src[t * np] }
                    }
                }
            }
        }
    }
    // ∂A, ∂D, ∂bias: sum over the batch in order.
    func batchSum(_ parts: ScratchBuffer, _ count: Int, _ shape: [Int]) -> Tensor {
        var out = Tensor(shape: shape, repeating: 0)
        let p = out.mutablePointer()
        for b in 0..<nb { for i in 0..<count { p[i] += parts.pointer[b * count + i] } }
        return out
    }
    return SelectiveScanGradients(
        u: gu, delta: gdelta, A: batchSum(perBatchA, nd * n, [nd, n]), B: gB, C: gC,
        D: x.D == nil ? nil : batchSum(perBatchD, nd, [nd]), z: gz,
        deltaBias: x.deltaBias == nil ? nil : batchSum(perBatchBias, nd, [nd]), initialState: gh0)
}

struct ScanBackwardOutputs: @unchecked Sendable {
    let gu, gdelta: UnsafeMutablePointer<Float>
    let gz: UnsafeMutablePointer<Float>?
    let gh0, gA, gD, gBias, partialB, partialC: UnsafeMutablePointer<Float>
    let gradOut: UnsafePointer<Float>
    let gradFinal: UnsafePointer<Float>?
    let checkpoints: UnsafePointer<Float>
}

/// One worker's tiles: [Npad][16] matrices (A, A·log2e, adjoint carry, ∂A), the recomputed
/// a_t and h_{t−1} of one 16-state group for a chunk ([K][16][16] each), and [K][16] time tiles.
struct ScanBackwardScratch {
    let buffer: ScratchBuffer
    let a, a2, carry, gA, h, decay, hPrev: UnsafeMutablePointer<Float>
    let u, dt, du, sig, z, gout, gy, y, gdt, gu: UnsafeMutablePointer<Float>
    init(_ geo: ScanGeometry) {
        let np = geo.paddedState * 16, k = geo.interval * 16
        buffer = ScratchBuffer(count: 4 * np + 256 + 2 * 16 * k + 10 * k)
        a = buffer.pointer; a2 = a + np; carry = a2 + np; gA = carry + np; h = gA + np
        decay = h + 256; hPrev = decay + 16 * k
        u = hPrev + 16 * k; dt = u + k; du = dt + k; sig = du + k; z = sig + k
        gout = z + k; gy = gout + k; y = gy + k; gdt = y + k; gu = gdt + k
    }
}

func backwardTile(batch b: Int, block: Int, item: Int, geo: ScanGeometry, x: ScanInputPointers, softplus: Bool,
                  scratch w: ScanBackwardScratch, o: ScanBackwardOutputs) {
    let s = geo.shape
    let (g, first, width) = geo.tile(block)
    let np = geo.paddedState, l = s.length
    loadStateMatrixTile(x.A, first: first, width: width, stateSize: s.stateSize, paddedState: np, scale: 1, into: w.a)
    loadStateMatrixTile(x.A, first: first, width: width, stateSize: s.stateSize, paddedState: np, scale: log2e, into: w.a2)
    loadStateTile(o.gradFinal, batch: b, first: first, width: width, shape: s, paddedState: np, into: w.carry)
    w.gA.update(repeating: 0, count: np * 16)
    let bias = laneVector(x.deltaBias, first: first, width: width)
    let dSkip = laneVector(x.D, first: first, width: width)
    var gDAcc = F16(), gBiasAcc = F16()
    let bRows = x.bRows + (b * s.groups + g) * l * np
    let cRows = x.cRows + (b * s.groups + g) * l * np

    for c in stride(from: geo.chunks - 1, through: 0, by: -1) {
        let t0 = c * geo.interval, count = geo.chunkLength(c)
        let tileOffset = x.seq.offset(batch: b, channel: first, step: t0)
        loadSequenceTile(x.u + tileOffset, x.seq, width: width, count: count, into: w.u)
        loadSequenceTile(x.delta + tileOffset, x.seq, width: width, count: count, into: w.dt)
        loadSequenceTile(o.gradOut + tileOffset, x.seq, width: width, count: count, into: w.gout)
        if let z = x.z { loadSequenceTile(z + tileOffset, x.seq, width: width, count: count, into: w.z) }
        for t in 0..<count {
            var delta = vadd(vload(w.dt + 16 * t), bias)
            if softplus {
                let r = softplusAndSigmoid(delta, wantSigmoid: true)
                delta = r.softplus
                vstore(w.sig + 16 * t, r.sigmoid)
            }
            let u = vload(w.u + 16 * t)
            vstore(w.dt + 16 * t, delta)
            vstore(w.du + 16 * t, vmul(delta, u))
            let gout = vload(w.gout + 16 * t)
            var gy = gout
            if x.z != nil {
                // gy = gout·silu(z); the z tile becomes gout·silu'(z), so ∂z = that · y later.
                let z = vload(w.z + 16 * t), sz = sigmoidVector(z)
                gy = vmul(gout, vmul(z, sz))
                vstore(w.z + 16 * t, vmul(gout, vmul(sz, vfma(z, vsub(splat(1), sz), splat(1)))))
            }
            vstore(w.gy + 16 * t, gy)
            vstore(w.y + 16 * t, vmul(dSkip, u))
            vstore(w.gdt + 16 * t, F16())
            vstore(w.gu + 16 * t, vmul(gy, dSkip))
        }
        let checkpoint = o.checkpoints + ((b * geo.blocks + block) * geo.chunks + c) * np * 16
        let partialRow = (item * l + t0) * np
        for group in 0..<geo.stateGroups {
            w.h.update(from: checkpoint + 256 * group, count: 256)
            recomputeStateGroup(h: w.h, a2: w.a2 + 256 * group, dt: w.dt, du: w.du,
                                bRows: bRows + t0 * np + 16 * group, rowStride: np,
                                decay: w.decay, hPrev: w.hPrev, count: count)
            reverseStateGroup(carry: w.carry + 256 * group, gA: w.gA + 256 * group, a: w.a + 256 * group,
                              decay: w.decay, hPrev: w.hPrev, w: w,
                              bRows: bRows + t0 * np + 16 * group, cRows: cRows + t0 * np + 16 * group, rowStride: np,
                              partialB: o.partialB + partialRow + 16 * group, partialC: o.partialC + partialRow + 16 * group,
                              count: count)
        }
        for t in 0..<count {
            let u = vload(w.u + 16 * t), gy = vload(w.gy + 16 * t)
            if x.z != nil { vstore(w.z + 16 * t, vmul(vload(w.z + 16 * t), vload(w.y + 16 * t))) }
            var gpre = vload(w.gdt + 16 * t)
            if softplus { gpre = vmul(gpre, vload(w.sig + 16 * t)) }
            vstore(w.gdt + 16 * t, gpre)
            gBiasAcc = vadd(gBiasAcc, gpre)
            gDAcc = vfma(gy, u, gDAcc)
        }
        storeSequenceTile(w.gu, to: o.gu + tileOffset, x.seq, width: width, count: count)
        storeSequenceTile(w.gdt, to: o.gdelta + tileOffset, x.seq, width: width, count: count)
        if let gz = o.gz { storeSequenceTile(w.z, to: gz + tileOffset, x.seq, width: width, count: count) }
    }
    storeStateTile(w.carry, to: o.gh0, batch: b, first: first, width: width, shape: s)
    storeStateTile(w.gA, to: o.gA, batch: b, first: first, width: width, shape: s)
    for lane in 0..<width {
        o.gD[b * s.channels + first + lane] = gDAcc[lane]
        o.gBias[b * s.channels + first + lane] = gBiasAcc[lane]
    }
}

/// Recomputes 16 states over a chunk exactly as the forward did (same operations, so the same
/// bits), keeping a_t and h_{t−1} per step: decay/hPrev [count][16 states][16 lanes].
@inline(__always) func recomputeStateGroup(h hp: UnsafeMutablePointer<Float>, a2 ap: UnsafePointer<Float>,
                                           dt: UnsafePointer<Float>, du: UnsafePointer<Float>,
                                           bRows: UnsafePointer<Float>, rowStride: Int,
                                           decay: UnsafeMutablePointer<Float>, hPrev: UnsafeMutablePointer<Float>,
                                           count: Int) {
    for t in 0..<count {
        let d = vload(dt + 16 * t), x = vload(du + 16 * t)
        let bt = bRows + t * rowStride
        let dp = decay + 256 * t, pp = hPrev + 256 * t
        for n in stride(from: 0, to: 16, by: 2) {
            let a0 = exp2Vector(vmul(d, vload(ap + 16 * n))), a1 = exp2Vector(vmul(d, vload(ap + 16 * n + 16)))
            let h0 = vload(hp + 16 * n), h1 = vload(hp + 16 * n + 16)
            vstore(dp + 16 * n, a0); vstore(dp + 16 * n + 16, a1)
            vstore(pp + 16 * n, h0); vstore(pp + 16 * n + 16, h1)
            vstore(hp + 16 * n, vfma(a0, h0, vmul(x, splat(bt[n]))))
            vstore(hp + 16 * n + 16, vfma(a1, h1, vmul(x, splat(bt[n + 1]))))
        }
    }
}

/// The adjoint of one state n at one step; returns the per-lane terms of ∂C_n and ∂B_n.
@inline(always) func reverseState(decay a: F16, hPrev hp: F16, dt d: F16, du x: F16, gy: F16, b bn: F16, c cn: F16,
                                  A an: F16, carry: inout F16, gA: inout F16, y: inout F16, gdt: inout F16,
                                  sumB: inout F16) -> (gc: F16, gb: F16) {
    let ah = vmul(a, hp)
    let h = vfma(a, hp, vmul(x, bn))                // h_t, as the forward computed it
    y = vfma(h, cn, y)
    let lambda = vfma(gy, cn, carry)                // λ_t = gy C + a_{t+1} λ_{t+1}
    let t1 = vmul(lambda, ah)
    gA = vfma(t1, d, gA)
    gdt = vfma(t1, an, gdt)
    sumB = vfma(lambda, bn, sumB)
    carry = vmul(lambda, a)
    return (vmul(gy, h), vmul(lambda, x))
}

/// Per-step sums over the states, two of each to halve the dependency chains.
struct ScanReverseAccumulators {
    var y0 = F16(), y1 = F16(), gdt0 = F16(), gdt1 = F16(), sumB0 = F16(), sumB1 = F16()
}

/// States n0…n0+3 of one step: updates their carry and ∂A in place and returns the ∂C and ∂B
/// lane terms partly reduced (`reduceFour`).
@inline(always) func reverseFour(_ n0: Int, decay dp: UnsafePointer<Float>, hPrev pp: UnsafePointer<Float>,
                                 a ap: UnsafePointer<Float>, carry: UnsafeMutablePointer<Float>,
                                 gA: UnsafeMutablePointer<Float>, dt d: F16, du x: F16, gy: F16,
                                 bRow bt: UnsafePointer<Float>, cRow ct: UnsafePointer<Float>,
                                 acc: inout ScanReverseAccumulators) -> (c: F16, b: F16) {
    @inline(always) func one(_ n: Int, _ y: inout F16, _ gdt: inout F16, _ sumB: inout F16) -> (gc: F16, gb: F16) {
        var c = vload(carry + 16 * n), ga = vload(gA + 16 * n)
        let r = reverseState(decay: vload(dp + 16 * n), hPrev: vload(pp + 16 * n), dt: d, du: x, gy: gy,
                             b: splat(bt[n]), c: splat(ct[n]), A: vload(ap + 16 * n), carry: &c, gA: &ga,
                             y: &y, gdt: &gdt, sumB: &sumB)
        vstore(carry + 16 * n, c); vstore(gA + 16 * n, ga)
        return r
    }
    let r0 = one(n0, &acc.y0, &acc.gdt0, &acc.sumB0)
    let r1 = one(n0 + 1, &acc.y1, &acc.gdt1, &acc.sumB1)
    let r2 = one(n0 + 2, &acc.y0, &acc.gdt0, &acc.sumB0)
    let r3 = one(n0 + 3, &acc.y1, &acc.gdt1, &acc.sumB1)
    return (reduceFour(r0.gc, r1.gc, r2.gc, r3.gc), reduceFour(r0.gb, r1.gb, r2.gb, r3.gb))
}

/// Walks one chunk backwards for 16 states of a tile: updates the carry (λ·a) and ∂A of the
/// 16 states, adds ∂C/∂B rows (lane-reduced) into the item's partials, and y, ∂Δ, ∂u into the
/// tiles of `w`.
@inline(__always) func reverseStateGroup(carry: UnsafeMutablePointer<Float>, gA: UnsafeMutablePointer<Float>,
                                         a ap: UnsafePointer<Float>, decay: UnsafePointer<Float>,
                                         hPrev: UnsafePointer<Float>, w: ScanBackwardScratch,
                                         bRows: UnsafePointer<Float>, cRows: UnsafePointer<Float>, rowStride: Int,
                                         partialB: UnsafeMutablePointer<Float>, partialC: UnsafeMutablePointer<Float>,
                                         count: Int) {
    for t in stride(from: count - 1, through: 0, by: -1) {
        let d = vload(w.dt + 16 * t), x = vload(w.du + 16 * t), gy = vload(w.gy + 16 * t)
        let bt = bRows + t * rowStride, ct = cRows + t * rowStride
        let dp = decay + 256 * t, pp = hPrev + 256 * t
        var acc = ScanReverseAccumulators()
        let q0 = reverseFour(0, decay: dp, hPrev: pp, a: ap, carry: carry, gA: gA, dt: d, du: x, gy: gy, bRow: bt, cRow: ct, acc: &acc)
        let q1 = reverseFour(4, decay: dp, hPrev: pp, a: ap, carry: carry, gA: gA, dt: d, du: x, gy: gy, bRow: bt, cRow: ct, acc: &acc)
        let q2 = reverseFour(8, decay: dp, hPrev: pp, a: ap, carry: carry, gA: gA, dt: d, du: x, gy: gy, bRow: bt, cRow: ct, acc: &acc)
        let q3 = reverseFour(12, decay: dp, hPrev: pp, a: ap, carry: carry, gA: gA, dt: d, du: x, gy: gy, bRow: bt, cRow: ct, acc: &acc)
        let reducedC = (q0.c, q1.c, q2.c, q3.c), reducedB = (q0.b, q1.b, q2.b, q3.b)
        let (y0, y1, gdt0, gdt1, sumB0, sumB1) = (acc.y0, acc.y1, acc.gdt0, acc.gdt1, acc.sumB0, acc.sumB1)
        let rowC = partialC + t * rowStride, rowB = partialB + t * rowStride
        vstore(rowC, vadd(vload(rowC), reduceSixteen(reducedC.0, reducedC.1, reducedC.2, reducedC.3)))
        vstore(rowB, vadd(vload(rowB), reduceSixteen(reducedB.0, reducedB.1, reducedB.2, reducedB.3)))
        let sumB = vadd(sumB0, sumB1)
        vstore(w.y + 16 * t, vadd(vload(w.y + 16 * t), vadd(y0, y1)))
        vstore(w.gdt + 16 * t, vadd(vload(w.gdt + 16 * t), vfma(vload(w.u + 16 * t), sumB, vadd(gdt0, gdt1))))
        vstore(w.gu + 16 * t, vfma(d, sumB, vload(w.gu + 16 * t)))
    }
}
