import ZooTensor

// Selective scan, fast forward.
//   u, delta, z: [B, D, L]   A: [D, N]   B, C: [B, G, N, L]   D, deltaBias: [D]   h0: [B, D, N]
//   (token-major: u, delta, z, out [B, L, D], B, C [B, L, G, N]; SelectiveScanTypes.swift)
//   Δ_t = softplus(delta_t + bias);  h_t = exp(Δ_t A) ⊙ h_{t−1} + Δ_t u_t B_t;
//   out_t = (⟨h_t, C_t⟩ + D u_t) · silu(z_t)
// Algorithm: one SIMD16 vector holds 16 channels of one B/C group; a tile of 16 channels keeps
// its N-dim state in 16-state register groups while it walks the sequence. Channel-major inputs
// are transposed per K-step chunk into [K][16] tiles (contiguous time loop; token-major rows load
// as vectors), B and C once per call
// into [L][Npad] rows (one broadcast per state and step). Work items are (batch, 16-channel tile),
// split over the workers; every output element is written by one item, so the result does not
// depend on the thread count. The exponential is base 2 on A·log2(e) (SelectiveScanMath.swift, exp2Vector).
// For the backward it saves only the state at the start of every K-step chunk.

/// Raw input pointers for the parallel loops (read-only; valid while the inputs live).
struct ScanInputPointers: @unchecked Sendable {
    let u, delta, A: UnsafePointer<Float>
    let D, z, deltaBias, initialState: UnsafePointer<Float>?
    let bRows, cRows: UnsafePointer<Float>           // transposed [B, G, L, Npad]
    let seq: ScanSequenceLayout                      // where u, delta, z, out (and gradients) live

    init(_ x: SelectiveScanInputs, shape: SelectiveScanShape, bRows: ScratchBuffer, cRows: ScratchBuffer) {
        seq = ScanSequenceLayout(x.layout, shape)
        u = x.u.pointer; delta = x.delta.pointer; A = x.A.pointer
        D = x.D?.pointer; z = x.z?.pointer; deltaBias = x.deltaBias?.pointer
        initialState = x.initialState?.pointer
        self.bRows = UnsafePointer(bRows.pointer); self.cRows = UnsafePointer(cRows.pointer)
    }
}

/// Runs the selective scan: out [B, D, L] (in the inputs' layout), the final state [B, D, N] and, unless
/// `options.saveForBackward` is false, the checkpoints the backward needs.
public func selectiveScanForward(_ x: SelectiveScanInputs,
                                 options: SelectiveScanOptions = SelectiveScanOptions()) -> SelectiveScanForwardResult {
    let s = x.shape(checkedBy: "selectiveScanForward")
    let geo = ScanGeometry(s, interval: options.checkpointInterval, function: "selectiveScanForward")
    var out = Tensor(uninitializedShape: ScanSequenceLayout(x.layout, s).shape(batch: s.batch))
    var final = Tensor(uninitializedShape: [s.batch, s.channels, s.stateSize])
    var checkpoints = options.saveForBackward
        ? Tensor(uninitializedShape: [s.batch, geo.blocks, geo.chunks, geo.paddedState, 16]) : nil
    let bRows = transposeStateInputs(x.B.pointer, ScanSequenceLayout(x.layout, s), batch: s.batch, paddedState: geo.paddedState)
    let cRows = transposeStateInputs(x.C.pointer, ScanSequenceLayout(x.layout, s), batch: s.batch, paddedState: geo.paddedState)
    let inputs = ScanInputPointers(x, shape: s, bRows: bRows, cRows: cRows)
    let outPointer = SendablePointer(out.mutablePointer())
    let finalPointer = SendablePointer(final.mutablePointer())
    var checkpointPointer: SendablePointer<Float>? = nil
    if checkpoints != nil { checkpointPointer = SendablePointer(checkpoints!.mutablePointer()) }
    let softplus = x.deltaSoftplus

    withExtendedLifetime((x, bRows, cRows)) {
        ZooThreads.parallelFor(s.batch * geo.blocks) { range in
            let scratch = ScanForwardScratch(geo)
            for item in range {
                forwardTile(item: item, geo: geo, x: inputs, softplus: softplus, scratch: scratch,
                            out: outPointer.pointer, final: finalPointer.pointer,
                            checkpoints: checkpointPointer?.pointer)
            }
        }
    }
    let saved = checkpoints.map { SelectiveScanSaved(shape: s, checkpointInterval: geo.interval, checkpoints: $0) }
    return SelectiveScanForwardResult(out: out, finalState: final, saved: saved)
}

/// One worker's tiles: A·log2e and the state as [Npad][16], and five [K][16] time tiles.
struct ScanForwardScratch {
    let buffer: ScratchBuffer
    let a2, h, dt, du, u, z, y: UnsafeMutablePointer<Float>
    init(_ geo: ScanGeometry) {
        let np = geo.paddedState * 16, k = geo.interval * 16
        buffer = ScratchBuffer(count: 2 * np + 5 * k)
        a2 = buffer.pointer; h = a2 + np; dt = h + np; du = dt + k; u = du + k; z = u + k; y = z + k
    }
}

/// Fills `tile` [Npad][16] with A[first + lane, n]·scale (zero outside N and the width).
@inline(__always) func loadStateMatrixTile(_ A: UnsafePointer<Float>, first: Int, width: Int, stateSize n: Int,
                                          paddedState: Int, scale: Float, into tile: UnsafeMutablePointer<Float>) {
    tile.update(repeating: 0, count: paddedState * 16)
    for lane in 0..<width {
        for i in 0..<n { tile[i * 16 + lane] = A[(first + lane) * n + i] * scale }
    }
}

/// Loads the state [Npad][16] of a tile from a [B, D, N] tensor (zero when absent).
@inline(__always) func loadStateTile(_ src: UnsafePointer<Float>?, batch b: Int, first: Int, width: Int,
                                     shape s: SelectiveScanShape, paddedState: Int, into tile: UnsafeMutablePointer<Float>) {
    tile.update(repeating: 0, count: paddedState * 16)
    guard let src else { return }
    let n = s.stateSize
    for lane in 0..<width {
        let row = src + (b * s.channels + first + lane) * n
        for i in 0..<n { tile[i * 16 + lane] = row[i] }
    }
}

/// Stores the first `width` lanes and N states of a [Npad][16] tile into a [B, D, N] tensor.
@inline(__always) func storeStateTile(_ tile: UnsafePointer<Float>, to dst: UnsafeMutablePointer<Float>, batch b: Int,
                                      first: Int, width: Int, shape s: SelectiveScanShape) {
    let n = s.stateSize
    for lane in 0..<width {
        let row = dst + (b * s.channels + first + lane) * n
        for i in 0..<n { row[i] = tile[i * 16 + lane] }
    }
}

/// Δ tile and Δ·u tile from the raw delta tile (in place) and the u tile.
@inline(__always) func discretise(dt: UnsafeMutablePointer<Float>, du: UnsafeMutablePointer<Float>,
                                  u: UnsafePointer<Float>, bias: F16, softplus: Bool, count: Int) {
    for t in 0..<count {
        var d = vadd(vload(dt + 16 * t), bias)
        if softplus { d = softplusVector(d) }
        vstore(dt + 16 * t, d)
        vstore(du + 16 * t, vmul(d, vload(u + 16 * t)))
    }
}

func forwardTile(item: Int, geo: ScanGeometry, x: ScanInputPointers, softplus: Bool, scratch: ScanForwardScratch,
                 out: UnsafeMutablePointer<Float>, final: UnsafeMutablePointer<Float>,
                 checkpoints: UnsafeMutablePointer<Float>?) {
    let s = geo.shape
    let b = item / geo.blocks, block = item % geo.blocks
    let (g, first, width) = geo.tile(block)
    let np = geo.paddedState, l = s.length
    loadStateMatrixTile(x.A, first: first, width: width, stateSize: s.stateSize, paddedState: np,
                        scale: log2e, into: scratch.a2)
    loadStateTile(x.initialState, batch: b, first: first, width: width, shape: s, paddedState: np, into: scratch.h)
    let bias = laneVector(x.deltaBias, first: first, width: width)
    let dSkip = laneVector(x.D, first: first, width: width)
    let bRows = x.bRows + (b * s.groups + g) * l * np
    let cRows = x.cRows + (b * s.groups + g) * l * np

    for c in 0..<geo.chunks {
        let t0 = c * geo.interval, count = geo.chunkLength(c)
        let tileOffset = x.seq.offset(batch: b, channel: first, step: t0)
        if let checkpoints {
            (checkpoints + ((b * geo.blocks + block) * geo.chunks + c) * np * 16).update(from: scratch.h, count: np * 16)
        }
        loadSequenceTile(x.u + tileOffset, x.seq, width: width, count: count, into: scratch.u)
        loadSequenceTile(x.delta + tileOffset, x.seq, width: width, count: count, into: scratch.dt)
        discretise(dt: scratch.dt, du: scratch.du, u: scratch.u, bias: bias, softplus: softplus, count: count)
        for group in 0..<geo.stateGroups {
            scanStateGroup(h: scratch.h + 256 * group, a2: scratch.a2 + 256 * group, dt: scratch.dt, du: scratch.du,
                           bRows: bRows + t0 * np + 16 * group, cRows: cRows + t0 * np + 16 * group, rowStride: np,
                           y: scratch.y, count: count, accumulate: group > 0)
        }
        if let z = x.z { loadSequenceTile(z + tileOffset, x.seq, width: width, count: count, into: scratch.z) }
        for t in 0..<count {
            var y = vfma(dSkip, vload(scratch.u + 16 * t), vload(scratch.y + 16 * t))
            if x.z != nil {
                let zt = vload(scratch.z + 16 * t)
                y = vmul(y, vmul(zt, sigmoidVector(zt)))
            }
            vstore(scratch.y + 16 * t, y)
        }
        storeSequenceTile(scratch.y, to: out + tileOffset, x.seq, width: width, count: count)
    }
    storeStateTile(scratch.h, to: final, batch: b, first: first, width: width, shape: s)
}

/// Scans 16 states of one 16-channel tile over `count` steps:
///   h_n ← 2^(Δ·A_n·log2e) h_n + (Δu)·B_n;   y (+)= Σ_n h_n C_n.
/// h, a2: 16 vectors each; dt, du, y: [count][16]; B/C rows at bRows + t·rowStride.
@inline(__always) func scanStateGroup(h hp: UnsafeMutablePointer<Float>, a2 ap: UnsafePointer<Float>,
                                      dt: UnsafePointer<Float>, du: UnsafePointer<Float>,
                                      bRows: UnsafePointer<Float>, cRows: UnsafePointer<Float>, rowStride: Int,
                                      y: UnsafeMutablePointer<Float>, count: Int, accumulate: Bool) {
    for t in 0..<count {
        let d = vload(dt + 16 * t), x = vload(du + 16 * t)
        let bt = bRows + t * rowStride, ct = cRows + t * rowStride
        // Four accumulators: the y chain would otherwise be 16 dependent FMAs per step.
        var y0 = F16(), y1 = F16(), y2 = F16(), y3 = F16()
        for q in 0..<4 {
            let n = 4 * q
            let h0 = vfma(exp2Vector(vmul(d, vload(ap + 16 * n))), vload(hp + 16 * n), vmul(x, splat(bt[n])))
            let h1 = vfma(exp2Vector(vmul(d, vload(ap + 16 * n + 16))), vload(hp + 16 * n + 16), vmul(x, splat(bt[n + 1])))
            let h2 = vfma(exp2Vector(vmul(d, vload(ap + 16 * n + 32))), vload(hp + 16 * n + 32), vmul(x, splat(bt[n + 2])))
            let h3 = vfma(exp2Vector(vmul(d, vload(ap + 16 * n + 48))), vload(hp + 16 * n + 48), vmul(x, splat(bt[n + 3])))
            vstore(hp + 16 * n, h0); vstore(hp + 16 * n + 16, h1)
            vstore(hp + 16 * n + 32, h2); vstore(hp + 16 * n + 48, h3)
            y0 = vfma(h0, splat(ct[n]), y0); y1 = vfma(h1, splat(ct[n + 1]), y1)
            y2 = vfma(h2, splat(ct[n + 2]), y2); y3 = vfma(h3, splat(ct[n + 3]), y3)
        }
        let sum = vadd(vadd(y0, y1), vadd(y2, y3))
        vstore(y + 16 * t, accumulate ? vadd(vload(y + 16 * t), sum) : sum)
    }
}
