// Element-wise arithmetic with NumPy broadcasting, and the unary functions the layers need.
// Kernels are generic over small protocol types so each op compiles to its own SIMD loop
// (closures would block inlining in the hot loop). Their vector `apply` is `@inline(always)`:
// marked only `@inline(__always)`, the larger ones (GELU′, SiLU′, softplus′, GELU, SiLU, …) were
// left as a call per 16 elements (seen in the objects), and GELU′ on an L2-resident block ran at
// 1.36 ns per element against 0.71–0.78 inlined (1 thread).

public protocol BinaryElementKernel {
    static func apply(_ a: F16, _ b: F16) -> F16
    static func apply(_ a: Float, _ b: Float) -> Float
}
public enum AddKernel: BinaryElementKernel {
    @inline(always) public static func apply(_ a: F16, _ b: F16) -> F16 { a + b }
    @inline(__always) public static func apply(_ a: Float, _ b: Float) -> Float { a + b }
}
public enum SubKernel: BinaryElementKernel {
    @inline(always) public static func apply(_ a: F16, _ b: F16) -> F16 { a - b }
    @inline(__always) public static func apply(_ a: Float, _ b: Float) -> Float { a - b }
}
public enum MulKernel: BinaryElementKernel {
    @inline(always) public static func apply(_ a: F16, _ b: F16) -> F16 { a * b }
    @inline(__always) public static func apply(_ a: Float, _ b: Float) -> Float { a * b }
}
public enum DivKernel: BinaryElementKernel {
    @inline(always) public static func apply(_ a: F16, _ b: F16) -> F16 { a / b }
    @inline(__always) public static func apply(_ a: Float, _ b: Float) -> Float { a / b }
}
public enum MaxKernel: BinaryElementKernel {
    @inline(always) public static func apply(_ a: F16, _ b: F16) -> F16 { vmax(a, b) }
    @inline(__always) public static func apply(_ a: Float, _ b: Float) -> Float { b > a ? b : a }
}

/// Element-wise work below this many elements runs on one thread (forking costs ~1 µs).
let parallelElementThreshold = 1 << 16

@inline(__always)
func binaryLoop<K: BinaryElementKernel>(_: K.Type, _ a: UnsafePointer<Float>, _ strideA: Int,
                                        _ b: UnsafePointer<Float>, _ strideB: Int,
                                        _ out: UnsafeMutablePointer<Float>, _ n: Int) {
    var i = 0
    switch (strideA, strideB) {
    case (1, 1):
        while i + 16 <= n { store16(out + i, K.apply(load16(a + i), load16(b + i))); i += 16 }
        while i < n { out[i] = K.apply(a[i], b[i]); i += 1 }
    case (1, 0):
        let vb = F16(repeating: b[0])
        while i + 16 <= n { store16(out + i, K.apply(load16(a + i), vb)); i += 16 }
        while i < n { out[i] = K.apply(a[i], b[0]); i += 1 }
    case (0, 1):
        let va = F16(repeating: a[0])
        while i + 16 <= n { store16(out + i, K.apply(va, load16(b + i))); i += 16 }
        while i < n { out[i] = K.apply(a[0], b[i]); i += 1 }
    default:
        let v = K.apply(a[0], b[0])
        out.update(repeating: v, count: n)
    }
}

extension Tensor {
    /// Broadcasting binary operation: the result has the broadcast shape of the operands.
    public static func elementwise<K: BinaryElementKernel>(_ a: Tensor, _ b: Tensor, _ kernel: K.Type, op: String) -> Tensor {
        let outShape = validate { () throws(ShapeError) in try ShapeCheck.broadcast(a.shape, b.shape, op: op) }
        let out = Tensor(uninitializedShape: outShape)
        let n = out.count
        if n == 0 { return out }
        let po = SendablePointer(out.storage.pointer)
        let pa = SendablePointer(a.storage.pointer), pb = SendablePointer(b.storage.pointer)
        // Fast path: identical shapes, or one operand a single value.
        if a.count == n && b.count == n || (a.count == n && b.count == 1) || (a.count == 1 && b.count == n) {
            let sa = a.count == 1 && n > 1 ? 0 : 1, sb = b.count == 1 && n > 1 ? 0 : 1
            ZooThreads.parallelFor(n, minChunk: parallelElementThreshold) { r in
                binaryLoop(K.self, pa + r.lowerBound * sa, sa, pb + r.lowerBound * sb, sb, po + r.lowerBound, r.count)
            }
            return out
        }
        // General path: walk all but the last axis with an odometer; the innermost axis is a SIMD
        // loop where each operand's stride is 1 (present) or 0 (broadcast).
        let rank = outShape.count
        let stA = broadcastStrides(a.shape, to: outShape), stB = broadcastStrides(b.shape, to: outShape)
        let inner = outShape[rank - 1]
        let rows = n / inner
        let outer = Array(outShape.dropLast())
        ZooThreads.parallelFor(rows, minChunk: Swift.max(1, parallelElementThreshold / Swift.max(inner, 1))) { range in
            var idx = unravel(range.lowerBound, outer)
            for row in range {
                var offA = 0, offB = 0
                for d in 0..<(rank - 1) { offA += idx[d] * stA[d]; offB += idx[d] * stB[d] }
                binaryLoop(K.self, pa + offA, stA[rank - 1], pb + offB, stB[rank - 1], po + row * inner, inner)
                increment(&idx, outer)
            }
        }
        return out
    }

    public static func + (a: Tensor, b: Tensor) -> Tensor { elementwise(a, b, AddKernel.self, op: "add") }
    public static func - (a: Tensor, b: Tensor) -> Tensor { elementwise(a, b, SubKernel.self, op: "subtract") }
    public static func * (a: Tensor, b: Tensor) -> Tensor { elementwise(a, b, MulKernel.self, op: "multiply") }
    public static func / (a: Tensor, b: Tensor) -> Tensor { elementwise(a, b, DivKernel.self, op: "divide") }
    public static func + (a: Tensor, b: Float) -> Tensor { a + Tensor.scalar(b) }
    public static func - (a: Tensor, b: Float) -> Tensor { a - Tensor.scalar(b) }
    public static func * (a: Tensor, b: Float) -> Tensor { a * Tensor.scalar(b) }
    public static func / (a: Tensor, b: Float) -> Tensor { a * Tensor.scalar(1 / b) }
    public static func + (a: Float, b: Tensor) -> Tensor { Tensor.scalar(a) + b }
    public static func - (a: Float, b: Tensor) -> Tensor { Tensor.scalar(a) - b }
    public static func * (a: Float, b: Tensor) -> Tensor { Tensor.scalar(a) * b }
    public static prefix func - (a: Tensor) -> Tensor { a.map(NegKernel.self) }
    public static func maximum(_ a: Tensor, _ b: Tensor) -> Tensor { elementwise(a, b, MaxKernel.self, op: "maximum") }

    /// In place: self += other (same shape), other scaled by alpha.
    public mutating func add(_ other: Tensor, scaledBy alpha: Float = 1) {
        validate { () throws(ShapeError) in
            guard shape == other.shape else {
                throw ShapeError("add(in place)", "shapes \(describe(shape)) and \(describe(other.shape)) differ")
            }
        }
        let n = count
        let y = SendablePointer(mutablePointer()), x = SendablePointer(UnsafeMutablePointer(mutating: other.pointer))
        // Workers take whole 16-float vectors, so every element goes through the same fused
        // multiply-add as in one serial pass (the scalar tail stays at the very end): the result
        // does not depend on the thread count. Gradient sums of [B·T, d] activations use this.
        let vectors = n / 16
        ZooThreads.parallelFor(vectors, minChunk: Swift.max(1, parallelElementThreshold / 16)) { r in
            simdAxpy(alpha, x.pointer + r.lowerBound * 16, y.pointer + r.lowerBound * 16, r.count * 16)
        }
        if vectors * 16 < n { simdAxpy(alpha, x.pointer + vectors * 16, y.pointer + vectors * 16, n - vectors * 16) }
        withExtendedLifetime(other) {}
    }

    /// In place: self *= alpha.
    public mutating func scale(by alpha: Float) { let n = count; simdScale(mutablePointer(), alpha, n) }
}

/// Strides of `shape` aligned to `target`, with 0 on broadcast axes.
func broadcastStrides(_ shape: [Int], to target: [Int]) -> [Int] {
    let own = Tensor.strides(of: shape)
    let pad = target.count - shape.count
    return (0..<target.count).map { i in
        i < pad ? 0 : (shape[i - pad] == 1 && target[i] != 1 ? 0 : own[i - pad])
    }
}

@inline(__always) func unravel(_ flat: Int, _ shape: [Int]) -> [Int] {
    var idx = [Int](repeating: 0, count: shape.count)
    var r = flat
    for d in stride(from: shape.count - 1, through: 0, by: -1) where shape[d] > 0 {
        idx[d] = r % shape[d]; r /= shape[d]
    }
    return idx
}

@inline(__always) func increment(_ idx: inout [Int], _ shape: [Int]) {
    var d = shape.count - 1
    while d >= 0 {
        idx[d] += 1
        if idx[d] < shape[d] { return }
        idx[d] = 0; d -= 1
    }
}

// MARK: - Unary functions

public protocol UnaryElementKernel {
    static func apply(_ x: F16) -> F16
    static func apply(_ x: Float) -> Float
}
public enum NegKernel: UnaryElementKernel {
    @inline(always) public static func apply(_ x: F16) -> F16 { -x }
    @inline(__always) public static func apply(_ x: Float) -> Float { -x }
}
public enum ExpKernel: UnaryElementKernel {
    @inline(always) public static func apply(_ x: F16) -> F16 { fastExp(x) }
    @inline(__always) public static func apply(_ x: Float) -> Float { fastExp(x) }
}
public enum LogKernel: UnaryElementKernel {
    @inline(always) public static func apply(_ x: F16) -> F16 {
        // Keep IEEE semantics at the domain's edges: log 0 = −inf, log(x<0) = NaN.
        var r = fastLog(x)
        r = r.replacing(with: -.infinity, where: x .== 0)
        return r.replacing(with: .nan, where: x .< 0)
    }
    @inline(__always) public static func apply(_ x: Float) -> Float { apply(F16(repeating: x))[0] }
}
public enum SigmoidKernel: UnaryElementKernel {
    @inline(always) public static func apply(_ x: F16) -> F16 { fastSigmoid(x) }
    @inline(__always) public static func apply(_ x: Float) -> Float { fastSigmoid(F16(repeating: x))[0] }
}
public enum TanhKernel: UnaryElementKernel {
    // tanh x = 2σ(2x) − 1: accurate to ~1e-7 absolute; near 0 the relative error grows, so small
    // |x| uses the odd series x − x³/3 + 2x⁵/15 − 17x⁷/315.
    @inline(always) public static func apply(_ x: F16) -> F16 {
        let viaSigmoid = 2 * fastSigmoid(2 * x) - 1
        let x2 = x * x
        var poly = F16(repeating: -17.0 / 315).addingProduct(x2, F16(repeating: 62.0 / 2835))
        poly = F16(repeating: 2.0 / 15).addingProduct(poly, x2)
        poly = F16(repeating: -1.0 / 3).addingProduct(poly, x2)
        poly = F16(repeating: 1).addingProduct(poly, x2)
        let series = x * poly
        let absX = x.replacing(with: -x, where: x .< 0)
        return viaSigmoid.replacing(with: series, where: absX .< 0.0625)
    }
    @inline(__always) public static func apply(_ x: Float) -> Float { apply(F16(repeating: x))[0] }
}
public enum SiLUKernel: UnaryElementKernel {
    @inline(always) public static func apply(_ x: F16) -> F16 { x * fastSigmoid(x) }
    @inline(__always) public static func apply(_ x: Float) -> Float { apply(F16(repeating: x))[0] }
}
public enum SoftplusKernel: UnaryElementKernel {
    @inline(always) public static func apply(_ x: F16) -> F16 { fastSoftplus(x) }
    @inline(__always) public static func apply(_ x: Float) -> Float { fastSoftplus(F16(repeating: x))[0] }
}
/// GELU with the tanh approximation (as GPT-2 and `gelu(approximate="tanh")`):
/// 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))), computed as x·σ(2u) with u = √(2/π)·(x + 0.044715·x³)
/// (½(1 + tanh u) = σ(2u) exactly): one exp and one division per element.
public enum GELUKernel: UnaryElementKernel {
    @inline(always) public static func apply(_ x: F16) -> F16 {
        let twoU = F16(repeating: 2 * 0.7978845608028654) * x.addingProduct(x * x * x, F16(repeating: 0.044715))
        return x * fastSigmoid(twoU)
    }
    @inline(__always) public static func apply(_ x: Float) -> Float { apply(F16(repeating: x))[0] }
}
public enum SquareKernel: UnaryElementKernel {
    @inline(always) public static func apply(_ x: F16) -> F16 { x * x }
    @inline(__always) public static func apply(_ x: Float) -> Float { x * x }
}
public enum SqrtKernel: UnaryElementKernel {
    @inline(always) public static func apply(_ x: F16) -> F16 { x.squareRoot() }
    @inline(__always) public static func apply(_ x: Float) -> Float { x.squareRoot() }
}
public enum ReciprocalKernel: UnaryElementKernel {
    @inline(always) public static func apply(_ x: F16) -> F16 { 1 / x }
    @inline(__always) public static func apply(_ x: Float) -> Float { 1 / x }
}

@inline(__always)
func unaryLoop<K: UnaryElementKernel>(_: K.Type, _ x: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Float>, _ n: Int) {
    var i = 0
    while i + 16 <= n { store16(out + i, K.apply(load16(x + i))); i += 16 }
    if i < n {
        // Tail through the vector path too, so every element gets bit-identical math.
        var tmp = F16()
        for j in 0..<(n - i) { tmp[j] = x[i + j] }
        let r = K.apply(tmp)
        for j in 0..<(n - i) { out[i + j] = r[j] }
    }
}

extension Tensor {
    /// Applies a unary kernel element-wise (SIMD, parallel for large tensors).
    public func map<K: UnaryElementKernel>(_: K.Type) -> Tensor {
        var out = Tensor(uninitializedShape: shape)
        let po = SendablePointer(out.mutablePointer()), px = SendablePointer(storage.pointer)
        ZooThreads.parallelFor(count, minChunk: parallelElementThreshold) { r in
            unaryLoop(K.self, px + r.lowerBound, po + r.lowerBound, r.count)
        }
        return out
    }

    public func exp() -> Tensor { map(ExpKernel.self) }
    public func log() -> Tensor { map(LogKernel.self) }
    public func tanh() -> Tensor { map(TanhKernel.self) }
    public func sigmoid() -> Tensor { map(SigmoidKernel.self) }
    public func silu() -> Tensor { map(SiLUKernel.self) }
    public func softplus() -> Tensor { map(SoftplusKernel.self) }
    public func gelu() -> Tensor { map(GELUKernel.self) }
    public func squared() -> Tensor { map(SquareKernel.self) }
    public func sqrt() -> Tensor { map(SqrtKernel.self) }
    public func reciprocal() -> Tensor { map(ReciprocalKernel.self) }
}

// MARK: - GELU and SiLU on raw memory (fused into the MLP's products and the convolution, ZooNN)

/// out[i] = GELU(x[i]) for i < count: `gelu()`'s kernel, so the same bits.
public func geluElements(_ x: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Float>, count: Int) {
    unaryLoop(GELUKernel.self, x, out, count)
}

/// g[i] ← g[i] · GELU′(x[i]) for i < count, in place: `geluGradient`'s kernel, so the same bits.
public func geluGradientElements(_ x: UnsafePointer<Float>, _ g: UnsafeMutablePointer<Float>, count: Int) {
    binaryLoop(GELUGradientKernel.self, x, 1, UnsafePointer(g), 1, g, count)
}

/// out[i] = SiLU(x[i]) for i < count: `silu()`'s kernel, so the same bits.
public func siluElements(_ x: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Float>, count: Int) {
    unaryLoop(SiLUKernel.self, x, out, count)
}

/// out[i] = g[i] · SiLU′(x[i]) for i < count: the SiLU node's backward kernel, so the same bits.
public func siluGradientElements(_ x: UnsafePointer<Float>, _ g: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Float>, count: Int) {
    binaryLoop(SiLUGradientKernel.self, x, 1, g, 1, out, count)
}

// MARK: - Derivatives fused with the incoming gradient
//
// Each backward of a unary function is one pass over (input or output, gradient): composing it
// from tensor operations took 6–12 passes, each allocating a fresh tensor (GELU's backward was
// ~10 % of a training step). The kernels take (a, g) with `a` the saved input or output.

/// g · σ(x)·(1 + x·(1 − σ(x))), the derivative of SiLU x·σ(x).
public enum SiLUGradientKernel: BinaryElementKernel {
    @inline(always) public static func apply(_ x: F16, _ g: F16) -> F16 {
        let s = fastSigmoid(x)
        return g * s * (1 + x * (1 - s))
    }
    @inline(__always) public static func apply(_ x: Float, _ g: Float) -> Float { apply(F16(repeating: x), F16(repeating: g))[0] }
}
/// g · GELU′(x) for the tanh approximation: with GELU = x·σ(2u), u = c·(x + 0.044715·x³),
/// GELU′ = s + x·s·(1 − s)·2c·(1 + 3·0.044715·x²), s = σ(2u).
public enum GELUGradientKernel: BinaryElementKernel {
    @inline(always) public static func apply(_ x: F16, _ g: F16) -> F16 {
        let twoC = F16(repeating: 2 * 0.7978845608028654)
        let x2 = x * x
        let s = fastSigmoid(twoC * x.addingProduct(x2 * x, F16(repeating: 0.044715)))
        let dTwoU = twoC * F16(repeating: 1).addingProduct(x2, F16(repeating: 0.134145))
        return g * s.addingProduct(x * s * (1 - s), dTwoU)
    }
    @inline(__always) public static func apply(_ x: Float, _ g: Float) -> Float { apply(F16(repeating: x), F16(repeating: g))[0] }
}
/// g · y·(1 − y) from the sigmoid's output y.
public enum SigmoidGradientKernel: BinaryElementKernel {
    @inline(always) public static func apply(_ y: F16, _ g: F16) -> F16 { g * y * (1 - y) }
    @inline(__always) public static func apply(_ y: Float, _ g: Float) -> Float { g * y * (1 - y) }
}
/// g · (1 − y²) from tanh's output y.
public enum TanhGradientKernel: BinaryElementKernel {
    @inline(always) public static func apply(_ y: F16, _ g: F16) -> F16 { g * (1 - y * y) }
    @inline(__always) public static func apply(_ y: Float, _ g: Float) -> Float { g * (1 - y * y) }
}
/// g · σ(x), the derivative of softplus.
public enum SoftplusGradientKernel: BinaryElementKernel {
    @inline(always) public static func apply(_ x: F16, _ g: F16) -> F16 { g * fastSigmoid(x) }
    @inline(__always) public static func apply(_ x: Float, _ g: Float) -> Float { apply(F16(repeating: x), F16(repeating: g))[0] }
}

extension Tensor {
    /// g ⊙ SiLU′(x) in one pass (same shapes).
    public static func siluGradient(_ x: Tensor, _ g: Tensor) -> Tensor { elementwise(x, g, SiLUGradientKernel.self, op: "silu gradient") }
    /// g ⊙ GELU′(x) (tanh approximation) in one pass.
    public static func geluGradient(_ x: Tensor, _ g: Tensor) -> Tensor { elementwise(x, g, GELUGradientKernel.self, op: "gelu gradient") }
    /// g ⊙ y ⊙ (1 − y) from the sigmoid's output y, in one pass.
    public static func sigmoidGradient(output y: Tensor, _ g: Tensor) -> Tensor { elementwise(y, g, SigmoidGradientKernel.self, op: "sigmoid gradient") }
    /// g ⊙ (1 − y²) from tanh's output y, in one pass.
    public static func tanhGradient(output y: Tensor, _ g: Tensor) -> Tensor { elementwise(y, g, TanhGradientKernel.self, op: "tanh gradient") }
    /// g ⊙ σ(x), softplus′, in one pass.
    public static func softplusGradient(_ x: Tensor, _ g: Tensor) -> Tensor { elementwise(x, g, SoftplusGradientKernel.self, op: "softplus gradient") }
}
