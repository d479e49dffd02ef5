import Foundation
import ZooTensor
import ZooAutograd

/// AdamW with decoupled weight decay (Loshchilov & Hutter):
///   m ← β₁m + (1−β₁)g,  v ← β₂v + (1−β₂)g²,  m̂ = m/(1−β₁ᵗ),  v̂ = v/(1−β₂ᵗ)
///   p ← p − lr·(m̂/(√v̂ + ε) + λ·p)     (λ only for parameters that decay)
/// State is a value (moments keyed by parameter name, and the step count), so it can be saved.
public struct AdamW {
    public var beta1: Float
    public var beta2: Float
    public var epsilon: Float
    public var weightDecay: Float
    public private(set) var stepCount: Int = 0
    public var firstMoments: [String: Tensor] = [:]
    public var secondMoments: [String: Tensor] = [:]

    public init(beta1: Float = 0.9, beta2: Float = 0.999, epsilon: Float = 1e-8, weightDecay: Float = 0.01) {
        self.beta1 = beta1; self.beta2 = beta2; self.epsilon = epsilon; self.weightDecay = weightDecay
    }

    /// Restores the step count (from a checkpoint).
    public mutating func restore(stepCount: Int) { self.stepCount = stepCount }

    /// One update of every parameter that has a gradient, at learning rate `lr`.
    public mutating func step(_ parameters: [NamedParameter], learningRate lr: Float) {
        stepCount += 1
        let t = Double(stepCount)
        let c1 = Float(1 - Foundation.pow(Double(beta1), t)), c2 = Float(1 - Foundation.pow(Double(beta2), t))
        for p in parameters {
            guard let g = p.variable.grad else { continue }
            // Taken out of the dictionaries while updated, so the writes below copy nothing.
            var m = firstMoments.removeValue(forKey: p.name) ?? .zeros(g.shape)
            var v = secondMoments.removeValue(forKey: p.name) ?? .zeros(g.shape)
            precondition(m.shape == g.shape, "AdamW: moment of '\(p.name)' has shape \(describe(m.shape)), gradient \(describe(g.shape))")
            let n = g.count
            let pm = SendablePointer(m.mutablePointer()), pv = SendablePointer(v.mutablePointer())
            // In place: once the backward has run, the tape no longer shares the parameter's
            // storage, so this copies nothing (it would copy a value something else still holds).
            let pp = SendablePointer(p.variable.value.mutablePointer()), pg = SendablePointer(UnsafeMutablePointer(mutating: g.pointer))
            let decay = p.decays ? weightDecay : 0
            let (b1, b2, eps) = (beta1, beta2, epsilon)
            // Element-wise, so splitting across workers changes no result. The loop is written
            // for the auto-vectoriser (no cross-element state; sqrt is vsqrtps).
            ZooThreads.parallelFor(n, minChunk: 1 << 15) { range in
                let m = pm + range.lowerBound, v = pv + range.lowerBound, w = pp + range.lowerBound, gr = pg + range.lowerBound
                for i in 0..<range.count {
                    let gi = gr[i]
                    let mi = b1 * m[i] + (1 - b1) * gi
                    let vi = b2 * v[i] + (1 - b2) * gi * gi
                    m[i] = mi; v[i] = vi
                    let mHat = mi / c1, vHat = vi / c2
                    w[i] -= lr * (mHat / (vHat.squareRoot() + eps) + decay * w[i])
                }
            }
            firstMoments[p.name] = m
            secondMoments[p.name] = v
        }
    }
}

/// Linear warm-up from 0 to `peak` over `warmup` steps, then cosine decay to `minimum` at `total`.
public func cosineLearningRate(step: Int, warmup: Int, total: Int, peak: Float, minimum: Float = 0) -> Float {
    if warmup > 0 && step < warmup { return peak * Float(step + 1) / Float(warmup) }
    if step >= total { return minimum }
    let progress = Double(step - warmup) / Double(Swift.max(1, total - warmup))
    return minimum + (peak - minimum) * Float(0.5 * (1 + Foundation.cos(Double.pi * progress)))
}

/// Scales all gradients so their global L2 norm is at most `maxNorm`; returns the norm before.
@discardableResult
public func clipGradientNorm(_ parameters: [NamedParameter], maxNorm: Float) -> Float {
    var total: Double = 0
    for p in parameters { if let g = p.variable.grad { total += Double(simdDot(g.pointer, g.pointer, g.count)) } }
    let norm = Float(total.squareRoot())
    if norm > maxNorm && norm.isFinite {
        let scale = maxNorm / (norm + 1e-6)
        for p in parameters { if var g = p.variable.grad { g.scale(by: scale); p.variable.grad = g } }
    }
    return norm
}
