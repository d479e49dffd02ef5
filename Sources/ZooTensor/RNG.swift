/// A seeded generator that gives the same numbers on every machine.
///
/// SplitMix64 for the bits; uniforms from the top 24 (Float) or 53 (Double) bits; normals by the
/// Marsaglia polar method with a logarithm built from IEEE add/multiply/divide only
/// (`portableLog`), so no libm difference between machines can change a single value.
public struct SeededGenerator: RandomNumberGenerator, Sendable, Codable, Equatable {
    public private(set) var state: UInt64
    private var spareNormal: Double?

    public init(seed: UInt64) { state = seed; spareNormal = nil }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 53 random bits.
    public mutating func nextUniformDouble() -> Double { Double(next() >> 11) * 0x1.0p-53 }

    /// Uniform in [0, 1) with 24 random bits.
    public mutating func nextUniformFloat() -> Float { Float(next() >> 40) * 0x1.0p-24 }

    /// Standard normal (mean 0, sd 1).
    public mutating func nextNormal() -> Double {
        if let spare = spareNormal { spareNormal = nil; return spare }
        while true {
            let u = 2 * nextUniformDouble() - 1, v = 2 * nextUniformDouble() - 1
            let s = u * u + v * v
            if s >= 1 || s == 0 { continue }
            let factor = (-2 * portableLog(s) / s).squareRoot()   // sqrt is IEEE-exact
            spareNormal = v * factor
            return u * factor
        }
    }

    /// Uniform integer in 0..<bound, without modulo bias (rejection sampling).
    public mutating func nextInt(below bound: Int) -> Int {
        precondition(bound > 0, "SeededGenerator.nextInt: bound must be positive, got \(bound)")
        let b = UInt64(bound)
        let limit = UInt64.max - UInt64.max % b
        while true {
            let x = next()
            if x < limit { return Int(x % b) }
        }
    }

    /// A generator for a sub-stream: independent of this one's future draws.
    public func derived(_ salt: UInt64) -> SeededGenerator {
        var g = SeededGenerator(seed: state ^ (salt &* 0xD1B5_4A32_D192_ED03))
        _ = g.next()
        return g
    }
}

/// ln(x) for x > 0 using only +, −, ×, ÷ (bit-identical on every IEEE-754 machine).
/// x = m·2^e with m in [√½, √2); ln m = 2·atanh(s), s = (m−1)/(m+1), series to s^25 (|s| ≤ 0.172,
/// truncation below 1e-19).
public func portableLog(_ x: Double) -> Double {
    precondition(x > 0 && x.isFinite, "portableLog: argument must be positive and finite, got \(x)")
    var m = x.significand          // [1, 2)
    var e = Double(x.exponent)
    if m > 1.4142135623730951 { m *= 0.5; e += 1 }
    let s = (m - 1) / (m + 1), s2 = s * s
    var term = s, sum = 0.0
    var k = 1.0
    while k <= 25 { sum += term / k; term *= s2; k += 2 }
    return 2 * sum + e * 0.6931471805599453
}
