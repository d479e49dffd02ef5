import ZooTensor

// Vector helpers of the selective scan kernels. All `@inline(always)`: a large SIMD body marked
// only `@inline(__always)` was left as a call in the scan loop (2× slower, measured), see
// ../shared/notes/swift-cpu.md §3c.

/// log2(e): the kernels keep A·log2(e) so the per-state exponential is a base-2 one.
let log2e: Float = 1.4426950408889634

/// 2^y for 16 lanes. n = round(y), f = y − n ∈ [−½, ½] exactly; 2^f by a degree-5 near-minimax
/// polynomial (max relative error 1.6e-7 in Float32 evaluation, fitted by a weighted least-squares
/// iteration on Chebyshev nodes); 2^n is added into the exponent bits. One multiply, two clamps,
/// three adds, five FMAs and two integer ops: the exp of the scan costs 13 vector instructions
/// instead of the 18 of a natural-base exp with Cody–Waite reduction.
/// y is clamped to [−125, 127]: below, the result is ~2.4e-38 rather than 0 (harmless as a decay).
@inline(always) func exp2Vector(_ yIn: F16) -> F16 {
    var y = yIn.replacing(with: -125, where: yIn .< -125)
    y = y.replacing(with: 127, where: y .> 127)
    let magic = F16(repeating: 12582912.0)                 // 1.5·2^23: adding it rounds to an integer
    let t = y + magic
    let f = y - (t - magic)
    var p = F16(repeating: 0.009671512991189957).addingProduct(F16(repeating: 0.001326472731307149), f)
    p = F16(repeating: 0.05550733581185341).addingProduct(p, f)
    p = F16(repeating: 0.24022242426872253).addingProduct(p, f)
    p = F16(repeating: 0.6931470036506653).addingProduct(p, f)
    p = F16(repeating: 1).addingProduct(p, f)
    let bits = unsafeBitCast(p, to: SIMD16<Int32>.self) &+ (unsafeBitCast(t, to: SIMD16<Int32>.self) &<< 23)
    return unsafeBitCast(bits, to: F16.self)
}

/// e^x for 16 lanes via exp2Vector.
@inline(always) func expVector(_ x: F16) -> F16 { exp2Vector(x * log2e) }

/// |x|
@inline(always) func absVector(_ x: F16) -> F16 { x.replacing(with: -x, where: x .< 0) }

/// 1 / (1 + e^−x)
@inline(always) func sigmoidVector(_ x: F16) -> F16 { 1 / (1 + expVector(-x)) }

/// softplus(x) = max(x, 0) + log1p(e^−|x|), with log1p(w) = log(1 + w)·w / ((1 + w) − 1)
/// (Goldberg's trick): exact to a few ulp even when e^−|x| is tiny, where log(1 + w) alone loses
/// every digit (Mamba's Δ ≈ 1e-3 needs x ≈ −7; plain log(1 + e^x) is then 1e-4 off).
@inline(always) func softplusVector(_ x: F16) -> F16 {
    let w = expVector(-absVector(x))
    let onePlus = 1 + w
    let shifted = onePlus - 1
    let ratio = w / shifted.replacing(with: 1, where: shifted .== 0)
    let log1p = (fastLog(onePlus) * ratio).replacing(with: w, where: shifted .== 0)
    return x.replacing(with: 0, where: x .< 0) + log1p
}

/// Lanes 0–7: sums of adjacent lane pairs of a; lanes 8–15: the same for b.
@inline(always) func pairReduce(_ a: F16, _ b: F16) -> F16 {
    SIMD16(lowHalf: a.evenHalf, highHalf: b.evenHalf) + SIMD16(lowHalf: a.oddHalf, highHalf: b.oddHalf)
}

/// Four vectors → one vector whose lanes 4i..4i+3 hold partial sums (4 each) of v_i.
@inline(always) func reduceFour(_ v0: F16, _ v1: F16, _ v2: F16, _ v3: F16) -> F16 {
    pairReduce(pairReduce(v0, v1), pairReduce(v2, v3))
}

/// Four `reduceFour` results (of v0…v15) → lane n = Σ lanes of v_n: the transpose-and-add tree,
/// ~3 instructions per horizontal sum instead of ~15 for `.sum()`.
@inline(always) func reduceSixteen(_ q0: F16, _ q1: F16, _ q2: F16, _ q3: F16) -> F16 {
    pairReduce(pairReduce(q0, q1), pairReduce(q2, q3))
}

/// Copies `width` rows (row stride `rowStride`) of `count` values into the tile [count][16]
/// (lane = row); lanes ≥ width become 0.
@inline(__always) func loadTile(_ src: UnsafePointer<Float>, rowStride: Int, width: Int, count: Int,
                                into tile: UnsafeMutablePointer<Float>) {
    if width < 16 {
        for t in 0..<count { store16(tile + 16 * t, F16()) }
    }
    for lane in 0..<width {
        let row = src + lane * rowStride
        for t in 0..<count { tile[16 * t + lane] = row[t] }
    }
}

/// The inverse of `loadTile` for the first `width` lanes.
@inline(__always) func storeTile(_ tile: UnsafePointer<Float>, to dst: UnsafeMutablePointer<Float>,
                                 rowStride: Int, width: Int, count: Int) {
    for lane in 0..<width {
        let row = dst + lane * rowStride
        for t in 0..<count { row[t] = tile[16 * t + lane] }
    }
}

/// Lane values of a per-channel vector (D, deltaBias): src[first..<first+width], zero padded.
@inline(__always) func laneVector(_ src: UnsafePointer<Float>?, first: Int, width: Int) -> F16 {
    var v = F16()
    if let src { for lane in 0..<width { v[lane] = src[first + lane] } }
    return v
}

/// B or C [B, G, N, L] → [B, G, L, Npad] (zero padded states), so the scan reads one contiguous
/// row of N values per step and broadcasts from it. O(B·G·N·L), once per call.
func transposeStateInputs(_ src: UnsafePointer<Float>, shape s: SelectiveScanShape, paddedState: Int) -> ScratchBuffer {
    let l = s.length, n = s.stateSize
    let out = ScratchBuffer(count: s.batch * s.groups * l * paddedState, zeroed: paddedState != n)
    let dst = SendablePointer(out.pointer)
    let srcPointer = SendablePointer(UnsafeMutablePointer(mutating: src))
    ZooThreads.parallelFor(s.batch * s.groups) { range in
        for bg in range {
            let from = srcPointer.pointer + bg * n * l
            let to = dst.pointer + bg * l * paddedState
            for i in 0..<n {
                let row = from + i * l
                for t in 0..<l { to[t * paddedState + i] = row[t] }
            }
        }
    }
    return out
}
