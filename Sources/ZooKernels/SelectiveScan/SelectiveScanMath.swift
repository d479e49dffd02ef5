import ZooTensor
#if canImport(_Builtin_intrinsics.intel)
import _Builtin_intrinsics.intel
#endif

// Vector helpers of the selective scan kernels. All `@inline(always)`: a large SIMD body marked
// only `@inline(__always)` was left as a call in the scan loop (2× slower, measured), see
// ../shared/notes/swift-cpu.md §3c.
//
// Arithmetic goes through vadd/vsub/vmul/vfma, not SIMD16's operators: in Swift 6.3 only splats,
// comparisons and selects on SIMD16<Float> are vector builtins, while + − × ÷ and addingProduct are
// lane loops that LLVM's SLP vectoriser must rebuild. In the scan loops it rebuilt them across
// states in 4- and 8-lane pieces (xmm/ymm shuffles, scalar FMAs: 2–3× slower, seen in the
// disassembly). Clang's `_mm512_*` arithmetic is plain vector IR: one zmm instruction with AVX-512,
// two ymm instructions when built for haswell (checked), and the operators elsewhere.

#if canImport(_Builtin_intrinsics.intel)
@inline(always) func vadd(_ a: F16, _ b: F16) -> F16 { _mm512_add_ps(a, b) }
@inline(always) func vsub(_ a: F16, _ b: F16) -> F16 { _mm512_sub_ps(a, b) }
@inline(always) func vmul(_ a: F16, _ b: F16) -> F16 { _mm512_mul_ps(a, b) }
@inline(always) func vdiv(_ a: F16, _ b: F16) -> F16 { _mm512_div_ps(a, b) }
/// a·b + c with one rounding.
@inline(always) func vfma(_ a: F16, _ b: F16, _ c: F16) -> F16 { _mm512_fmadd_ps(a, b, c) }
#else
@inline(always) func vadd(_ a: F16, _ b: F16) -> F16 { a + b }
@inline(always) func vsub(_ a: F16, _ b: F16) -> F16 { a - b }
@inline(always) func vmul(_ a: F16, _ b: F16) -> F16 { a * b }
@inline(always) func vdiv(_ a: F16, _ b: F16) -> F16 { a / b }
@inline(always) func vfma(_ a: F16, _ b: F16, _ c: F16) -> F16 { c.addingProduct(a, b) }
#endif
@inline(always) func splat(_ x: Float) -> F16 { F16(repeating: x) }

// Module-local load/store: ZooTensor's load16/store16 are inlined across modules only with
// cross-module optimisation (release), so debug test builds would call them per vector.
@inline(always) func vload(_ p: UnsafePointer<Float>) -> F16 { UnsafeRawPointer(p).loadUnaligned(as: F16.self) }
@inline(always) func vload(_ p: UnsafeMutablePointer<Float>) -> F16 { UnsafeRawPointer(p).loadUnaligned(as: F16.self) }
@inline(always) func vstore(_ p: UnsafeMutablePointer<Float>, _ v: F16) { UnsafeMutableRawPointer(p).storeBytes(of: v, as: F16.self) }

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
    let magic = splat(12582912.0)                          // 1.5·2^23: adding it rounds to an integer
    let t = vadd(y, magic)
    let f = vsub(y, vsub(t, magic))
    var p = vfma(splat(0.001326472731307149), f, splat(0.009671512991189957))
    p = vfma(p, f, splat(0.05550733581185341))
    p = vfma(p, f, splat(0.24022242426872253))
    p = vfma(p, f, splat(0.6931470036506653))
    p = vfma(p, f, splat(1))
    let bits = unsafeBitCast(p, to: SIMD16<Int32>.self) &+ (unsafeBitCast(t, to: SIMD16<Int32>.self) &<< 23)
    return unsafeBitCast(bits, to: F16.self)
}

/// e^x for 16 lanes via exp2Vector.
@inline(always) func expVector(_ x: F16) -> F16 { exp2Vector(vmul(x, splat(log2e))) }

/// |x|
@inline(always) func absVector(_ x: F16) -> F16 { x.replacing(with: -x, where: x .< 0) }

/// 1 / (1 + e^−x)
@inline(always) func sigmoidVector(_ x: F16) -> F16 { vdiv(splat(1), vadd(splat(1), expVector(vsub(F16(), x)))) }

/// softplus(x) = max(x, 0) + log1p(e^−|x|), with log1p(w) = 2 atanh(s), s = w / (2 + w) ∈ (0, ⅓]:
/// the odd series to s¹⁵ has relative error ≤ 2.1e-7 for every w ∈ (0, 1] (tiny w included, where
/// log(1 + w) alone loses every digit: Mamba's Δ ≈ 1e-3 needs x ≈ −7). No integer work, one divide.
@inline(always) func softplusVector(_ x: F16) -> F16 { softplusAndSigmoid(x, wantSigmoid: false).softplus }

/// softplus(x) and, when asked, its derivative sigmoid(x) = (x ≥ 0 ? 1 : w) / (1 + w) from the
/// same w = e^−|x| (one exponential for both).
@inline(always) func softplusAndSigmoid(_ x: F16, wantSigmoid: Bool) -> (softplus: F16, sigmoid: F16) {
    let w = expVector(vsub(F16(), absVector(x)))
    let s = vdiv(w, vadd(splat(2), w))
    let s2 = vmul(s, s)
    var q = vfma(splat(1.0 / 15.0), s2, splat(1.0 / 13.0))
    q = vfma(q, s2, splat(1.0 / 11.0))
    q = vfma(q, s2, splat(1.0 / 9.0))
    q = vfma(q, s2, splat(1.0 / 7.0))
    q = vfma(q, s2, splat(1.0 / 5.0))
    q = vfma(q, s2, splat(1.0 / 3.0))
    q = vfma(q, s2, splat(1))
    let softplus = vfma(vadd(s, s), q, x.replacing(with: 0, where: x .< 0))
    guard wantSigmoid else { return (softplus, F16()) }
    let numerator = splat(1).replacing(with: w, where: x .< 0)
    return (softplus, vdiv(numerator, vadd(splat(1), w)))
}

/// Lanes 0–7: sums of adjacent lane pairs of a; lanes 8–15: the same for b.
@inline(always) func pairReduce(_ a: F16, _ b: F16) -> F16 {
    vadd(SIMD16(lowHalf: a.evenHalf, highHalf: b.evenHalf), SIMD16(lowHalf: a.oddHalf, highHalf: b.oddHalf))
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
/// (lane = row); lanes ≥ width become 0. Whole 16×16 blocks go through `transpose16x16` (ZooTensor, in registers).
@inline(__always) func loadTile(_ src: UnsafePointer<Float>, rowStride: Int, width: Int, count: Int,
                                into tile: UnsafeMutablePointer<Float>) {
    var t0 = 0
    if width == 16 {
        while t0 + 16 <= count {
            transpose16x16(rows: { src + $0 * rowStride + t0 }, into: tile + 16 * t0, ldd: 16)
            t0 += 16
        }
    }
    for t in t0..<count { vstore(tile + 16 * t, F16()) }
    for lane in 0..<width {
        let row = src + lane * rowStride
        var t = t0
        while t < count { tile[16 * t + lane] = row[t]; t += 1 }
    }
}

/// The inverse of `loadTile` for the first `width` lanes.
@inline(__always) func storeTile(_ tile: UnsafeMutablePointer<Float>, to dst: UnsafeMutablePointer<Float>,
                                 rowStride: Int, width: Int, count: Int) {
    var t0 = 0
    if width == 16 {
        while t0 + 16 <= count {
            transpose16x16(rows: { UnsafePointer(tile + 16 * (t0 + $0)) }, into: dst + t0, ldd: rowStride)
            t0 += 16
        }
    }
    for lane in 0..<width {
        let row = dst + lane * rowStride
        var t = t0
        while t < count { row[t] = tile[16 * t + lane]; t += 1 }
    }
}

/// `loadTile` for a sequence tensor in either layout: `src` points at (b, first channel, t0).
/// Token-major rows already hold 16 consecutive channels per step, so they load as vectors.
@inline(__always) func loadSequenceTile(_ src: UnsafePointer<Float>, _ seq: ScanSequenceLayout, width: Int, count: Int,
                                        into tile: UnsafeMutablePointer<Float>) {
    guard seq.layout == .tokenMajor else {
        loadTile(src, rowStride: seq.laneStride, width: width, count: count, into: tile)
        return
    }
    let step = seq.timeStride
    if width == 16 {
        for t in 0..<count { vstore(tile + 16 * t, vload(src + t * step)) }
    } else {
        for t in 0..<count {
            var v = F16()
            for lane in 0..<width { v[lane] = src[t * step + lane] }
            vstore(tile + 16 * t, v)
        }
    }
}

/// The inverse of `loadSequenceTile` for the first `width` lanes (the tile may be overwritten).
@inline(__always) func storeSequenceTile(_ tile: UnsafeMutablePointer<Float>, to dst: UnsafeMutablePointer<Float>,
                                         _ seq: ScanSequenceLayout, width: Int, count: Int) {
    guard seq.layout == .tokenMajor else {
        storeTile(tile, to: dst, rowStride: seq.laneStride, width: width, count: count)
        return
    }
    let step = seq.timeStride
    if width == 16 {
        for t in 0..<count { vstore(dst + t * step, vload(tile + 16 * t)) }
    } else {
        for t in 0..<count {
            for lane in 0..<width { dst[t * step + lane] = tile[16 * t + lane] }
        }
    }
}

/// Lane values of a per-channel vector (D, deltaBias): src[first..<first+width], zero padded.
@inline(__always) func laneVector(_ src: UnsafePointer<Float>?, first: Int, width: Int) -> F16 {
    var v = F16()
    if let src { for lane in 0..<width { v[lane] = src[first + lane] } }
    return v
}

/// B or C [B, G, N, L] (token-major [B, L, G, N]) → [B, G, L, Npad] (zero padded states), so
/// the scan reads one contiguous row of N values per step and broadcasts from it. O(B·G·N·L),
/// once per call.
func transposeStateInputs(_ src: UnsafePointer<Float>, _ seq: ScanSequenceLayout, batch: Int,
                          paddedState: Int) -> ScratchBuffer {
    let l = seq.length, n = seq.stateSize, groups = seq.groups
    let out = ScratchBuffer(count: batch * groups * l * paddedState, zeroed: paddedState != n)
    let dst = SendablePointer(out.pointer)
    let srcPointer = SendablePointer(UnsafeMutablePointer(mutating: src))
    ZooThreads.parallelFor(batch * groups) { range in
        for bg in range {
            let to = dst.pointer + bg * l * paddedState
            let first = srcPointer.pointer + seq.stateOffset(batch: bg / groups, group: bg % groups, step: 0)
            if seq.stateStride == 1 {
                // Token-major: a step's N states are already contiguous.
                for t in 0..<l { (to + t * paddedState).update(from: first + t * seq.stateTimeStride, count: n) }
            } else {
                for i in 0..<n {
                    let row = first + i * seq.stateStride
                    for t in 0..<l { to[t * paddedState + i] = row[t] }
                }
            }
        }
    }
    return out
}
