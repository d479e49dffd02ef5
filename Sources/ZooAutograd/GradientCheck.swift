import ZooTensor

/// The result of `gradientCheck`: relative RMS errors of the forward value and of each input's
/// gradient against central finite differences of a Double reference.
public struct GradientCheckResult: CustomStringConvertible {
    public let forwardError: Double
    public let gradientErrors: [Double]
    public var worst: Double { ([forwardError] + gradientErrors).max() ?? 0 }
    public var description: String {
        "forward rel err \(forwardError); gradient rel errs \(gradientErrors.map { String(format: "%.2e", $0) })"
    }
}

/// Checks an autograd (Float32) function against central finite differences in Double.
///
/// - `inputs`: the input values (all of them receive gradients).
/// - `function`: the Float32 computation on variables.
/// - `reference`: the same mathematics written in Double on flat arrays (row-major), returning
///   the output's flat values. Written independently of the Float32 code, it is the check's
///   second implementation.
///
/// The loss is L = Σ gᵢ·yᵢ with fixed pseudo-random weights g, so every output element counts.
/// The numeric gradient is (L(x + h) − L(x − h)) / 2h in Double with h = `step`, which leaves a
/// truncation error of O(h²) ≈ 1e-12 relative: the comparison measures Float32 rounding only.
public func gradientCheck(
    _ inputs: [Tensor],
    step: Double = 1e-5,
    seed: UInt64 = 7,
    function: ([Variable]) -> Variable,
    reference: ([[Double]]) -> [Double]
) -> GradientCheckResult {
    let variables = inputs.map { Variable($0, requiresGrad: true) }
    let y = function(variables)
    var gen = SeededGenerator(seed: seed)
    let weights = (0..<y.value.count).map { _ in gen.nextNormal() }
    y.backward(gradient: Tensor(shape: y.shape, doubles: weights))

    let x0 = inputs.map(\.doubles)
    let yRef = reference(x0)
    precondition(yRef.count == y.value.count, "gradientCheck: reference returned \(yRef.count) values, the function \(y.value.count)")
    let forwardError = relErr(y.value.doubles, yRef)

    func loss(_ xs: [[Double]]) -> Double {
        let out = reference(xs)
        var s = 0.0
        for i in 0..<out.count { s += weights[i] * out[i] }
        return s
    }
    var errors: [Double] = []
    for (i, v) in variables.enumerated() {
        var numeric = [Double](repeating: 0, count: x0[i].count)
        var xs = x0
        for j in 0..<x0[i].count {
            let h = step * Swift.max(1, abs(x0[i][j]))
            xs[i][j] = x0[i][j] + h; let up = loss(xs)
            xs[i][j] = x0[i][j] - h; let down = loss(xs)
            xs[i][j] = x0[i][j]
            numeric[j] = (up - down) / (2 * h)
        }
        let analytic = v.grad?.doubles ?? [Double](repeating: 0, count: numeric.count)
        errors.append(relErr(analytic, numeric))
    }
    return GradientCheckResult(forwardError: forwardError, gradientErrors: errors)
}

private func relErr(_ a: [Double], _ b: [Double]) -> Double {
    var d = 0.0, r = 0.0
    for i in 0..<a.count { d += (a[i] - b[i]) * (a[i] - b[i]); r += b[i] * b[i] }
    return r == 0 ? d.squareRoot() : (d / r).squareRoot()
}
