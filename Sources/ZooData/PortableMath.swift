import ZooTensor

// Sampling decisions must come out the same on every machine, so the few transcendental values
// the data generators need are computed with IEEE-754 +, −, ×, ÷ (correctly rounded everywhere)
// and exact scaling by powers of two, never with the platform's libm, whose last bits differ
// between systems. Swift does not contract a·b + c into a fused multiply-add unless asked to, so
// the expressions below round the same way on every target.

/// eˣ using only +, −, ×, ÷ and exact scaling by 2ᵏ (bit-identical on every IEEE-754 machine).
///
/// x = k·ln 2 + r with k = round(x / ln 2), r in about [−0.35, 0.35] by the Cody–Waite split of
/// ln 2 (the high part has trailing zero bits, so k·ln2hi is exact); eʳ by its Taylor series to
/// r²⁰/20! in Horner form (truncation below 1e-27, far under one ulp); then the exponent is added exactly.
/// Within a few ulps of libm (the test holds it to 5e-16 relative).
public func portableExp(_ x: Double) -> Double {
    precondition(!x.isNaN, "portableExp: argument is NaN")
    if x > 709.78 { return .infinity }
    if x < -745.2 { return 0 }
    let ln2hi = 6.93147180369123816490e-01   // 0x3FE62E42FEE00000: 32 significant bits
    let ln2lo = 1.90821492927058770002e-10   // ln 2 − ln2hi
    let k = (x / 0.6931471805599453).rounded()
    let r = (x - k * ln2hi) - k * ln2lo
    // Horner form 1 + r(1 + r/2(1 + r/3(…))): the small terms are added first.
    var sum = 1.0
    var n = 20.0
    while n >= 1 { sum = 1 + sum * r / n; n -= 1 }
    // sum·2ᵏ: exact unless the result is subnormal (only for x < −708, irrelevant here).
    let e = Int(k)
    if e < -1022 { return Double(sign: .plus, exponent: e + 60, significand: sum) * 0x1p-60 }
    return Double(sign: .plus, exponent: e, significand: sum)
}

/// xʸ for x > 0 as e^(y·ln x) with `portableLog` and `portableExp` (bit-identical everywhere).
public func portablePow(_ x: Double, _ y: Double) -> Double {
    portableExp(y * portableLog(x))
}
