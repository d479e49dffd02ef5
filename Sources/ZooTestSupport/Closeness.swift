import Testing
import Foundation
import ZooTensor

/// Relative RMS error ‖actual − expected‖ / ‖expected‖ (the test contract's metric,
/// ../shared/DESIGN.md §5). When the reference is all zeros, the absolute RMS norm is returned.
public func relativeError(_ actual: [Double], _ expected: [Double]) -> Double {
    precondition(actual.count == expected.count, "relativeError: \(actual.count) vs \(expected.count) elements")
    var diff = 0.0, ref = 0.0
    for i in 0..<actual.count {
        let d = actual[i] - expected[i]
        diff += d * d; ref += expected[i] * expected[i]
    }
    if ref == 0 { return diff.squareRoot() }
    return (diff / ref).squareRoot()
}
public func relativeError(_ actual: [Float], _ expected: [Double]) -> Double { relativeError(actual.map(Double.init), expected) }
public func relativeError(_ actual: [Float], _ expected: [Float]) -> Double { relativeError(actual.map(Double.init), expected.map(Double.init)) }
public func relativeError(_ actual: Tensor, _ expected: Tensor) -> Double { relativeError(actual.doubles, expected.doubles) }

/// Largest |actual − expected|.
public func maxAbsError(_ actual: [Double], _ expected: [Double]) -> Double {
    zip(actual, expected).reduce(0) { Swift.max($0, abs($1.0 - $1.1)) }
}

/// Records a test issue at the caller when the relative RMS error exceeds `tolerance`; the message
/// gives both the relative and the max-abs error. Non-finite values always fail.
public func expectClose(_ actual: [Double], _ expected: [Double], tolerance: Double = 1e-5,
                        _ what: @autoclosure () -> String = "",
                        sourceLocation: SourceLocation = #_sourceLocation) {
    guard actual.count == expected.count else {
        Issue.record("\(what()): \(actual.count) values vs \(expected.count) expected", sourceLocation: sourceLocation)
        return
    }
    if actual.contains(where: { !$0.isFinite }) && !zip(actual, expected).allSatisfy({ $0 == $1 || ($0.isNaN && $1.isNaN) }) {
        Issue.record("\(what()): non-finite value in result", sourceLocation: sourceLocation)
        return
    }
    let rel = relativeError(actual, expected)
    if !(rel <= tolerance) {
        Issue.record("\(what()): relative RMS error \(rel) > \(tolerance) (max abs error \(maxAbsError(actual, expected)), n = \(actual.count))",
                     sourceLocation: sourceLocation)
    }
}
public func expectClose(_ actual: [Float], _ expected: [Double], tolerance: Double = 1e-5,
                        _ what: @autoclosure () -> String = "", sourceLocation: SourceLocation = #_sourceLocation) {
    expectClose(actual.map(Double.init), expected, tolerance: tolerance, what(), sourceLocation: sourceLocation)
}
public func expectClose(_ actual: [Float], _ expected: [Float], tolerance: Double = 1e-5,
                        _ what: @autoclosure () -> String = "", sourceLocation: SourceLocation = #_sourceLocation) {
    expectClose(actual.map(Double.init), expected.map(Double.init), tolerance: tolerance, what(), sourceLocation: sourceLocation)
}
public func expectClose(_ actual: Tensor, _ expected: Tensor, tolerance: Double = 1e-5,
                        _ what: @autoclosure () -> String = "", sourceLocation: SourceLocation = #_sourceLocation) {
    if actual.shape != expected.shape {
        Issue.record("\(what()): shape \(describe(actual.shape)) vs expected \(describe(expected.shape))", sourceLocation: sourceLocation)
        return
    }
    expectClose(actual.doubles, expected.doubles, tolerance: tolerance, what(), sourceLocation: sourceLocation)
}

/// Random test data from a seeded generator.
public func randomDoubles(_ n: Int, seed: UInt64, scale: Double = 1) -> [Double] {
    var g = SeededGenerator(seed: seed)
    return (0..<n).map { _ in g.nextNormal() * scale }
}
public func randomTensor(_ shape: [Int], seed: UInt64, scale: Float = 1) -> Tensor {
    var g = SeededGenerator(seed: seed)
    return Tensor.normal(shape, std: scale, generator: &g)
}
