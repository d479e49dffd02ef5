import ZooTensor
import ZooAutograd
import ZooNN
import ZooMixers

/// Shared checks of the mixer test contract (../shared/DESIGN.md §5, items 4–6), so every mixer
/// is held to the same definition. Each returns numbers; the test decides the tolerance.
public enum MixerContract {
    /// Parallel form vs the recurrent form: T single steps, prefill of `prefix` tokens then single
    /// steps, and a two-chunk prefill split at `prefix`. Returns relative RMS errors of each
    /// against the parallel output.
    public static func parallelVersusRecurrent<M: Mixer>(_ mixer: M, x: Tensor, prefix: Int)
        -> (steps: Double, prefillThenSteps: Double, twoChunks: Double) {
        let (b, t) = (x.shape[0], x.shape[1])
        precondition(prefix > 0 && prefix < t, "parallelVersusRecurrent: prefix must be in 1..<T")
        let parallel = withNoGrad { mixer(Variable(x)).value }

        var state = mixer.initialState(batch: b)
        let steps = Tensor.concatenate((0..<t).map { i in mixer.step(x.slice(axis: 1, i..<(i + 1)), state: &state) }, axis: 1)

        var state2 = mixer.initialState(batch: b)
        var parts = [mixer.step(x.slice(axis: 1, 0..<prefix), state: &state2)]
        for i in prefix..<t { parts.append(mixer.step(x.slice(axis: 1, i..<(i + 1)), state: &state2)) }
        let prefilled = Tensor.concatenate(parts, axis: 1)

        var state3 = mixer.initialState(batch: b)
        let chunks = Tensor.concatenate([mixer.step(x.slice(axis: 1, 0..<prefix), state: &state3),
                                         mixer.step(x.slice(axis: 1, prefix..<t), state: &state3)], axis: 1)
        return (relativeError(steps, parallel), relativeError(prefilled, parallel), relativeError(chunks, parallel))
    }

    /// Largest change of y[:, ..<t] when x[:, t+1...] is replaced by other values (0 when causal).
    public static func causalityViolation<M: Mixer>(_ mixer: M, x: Tensor, at t: Int, seed: UInt64 = 99) -> Double {
        let (b, len, d) = (x.shape[0], x.shape[1], x.shape[2])
        precondition(t >= 0 && t < len - 1, "causalityViolation: t must leave at least one later token")
        var g = SeededGenerator(seed: seed)
        let noise = Tensor.normal([b, len - t - 1, d], generator: &g)
        let changed = Tensor.concatenate([x.slice(axis: 1, 0..<(t + 1)), noise], axis: 1)
        let (y0, y1) = withNoGrad { (mixer(Variable(x)).value, mixer(Variable(changed)).value) }
        return maxAbsError(y0.slice(axis: 1, 0..<(t + 1)).doubles, y1.slice(axis: 1, 0..<(t + 1)).doubles)
    }

    /// The decode state's measured bytes after consuming `length` tokens (prefill, then one step
    /// when length > 1, so both paths are exercised).
    public static func measuredStateBytes<M: Mixer>(_ mixer: M, batch: Int, length: Int, dModel: Int, seed: UInt64 = 5) -> Int {
        var g = SeededGenerator(seed: seed)
        var state = mixer.initialState(batch: batch)
        if length > 1 { _ = mixer.step(Tensor.normal([batch, length - 1, dModel], generator: &g), state: &state) }
        _ = mixer.step(Tensor.normal([batch, 1, dModel], generator: &g), state: &state)
        precondition(state.position == length, "measuredStateBytes: state position \(state.position) after \(length) tokens")
        return state.byteCount
    }

    /// Layer-level gradient check: autograd gradients of L = Σ w·y with respect to the input and
    /// every parameter, against central differences of the Float32 forward (loss summed in Double)
    /// at `probes` random coordinates per tensor. Float32 forward noise limits this to ~1e-2
    /// relative; the kernels' own Double checks carry the precise contract.
    public static func layerGradientError<M: Mixer>(_ mixer: M, x: Tensor, probes: Int = 6, step: Float = 1e-2, seed: UInt64 = 3) -> [String: Double] {
        var g = SeededGenerator(seed: seed)
        let input = Variable(x, requiresGrad: true)
        let params = mixer.namedParameters()
        for p in params { p.variable.zeroGrad() }
        let y = mixer(input)
        let w = Tensor.normal(y.shape, generator: &g)
        y.backward(gradient: w)
        func loss() -> Double {
            let out = withNoGrad { mixer(Variable(input.value)).value }
            var s = 0.0
            for i in 0..<out.count { s += Double(out.pointer[i]) * Double(w.pointer[i]) }
            return s
        }
        var results: [String: Double] = [:]
        let targets: [(String, Variable)] = [("input", input)] + params.map { ($0.name, $0.variable) }
        for (name, v) in targets {
            guard let grad = v.grad else { results[name] = .infinity; continue }
            var numeric: [Double] = [], analytic: [Double] = []
            for _ in 0..<probes {
                let i = g.nextInt(below: v.value.count)
                let original = v.value.pointer[i]
                v.value.mutablePointer()[i] = original + step; let up = loss()
                v.value.mutablePointer()[i] = original - step; let down = loss()
                v.value.mutablePointer()[i] = original
                numeric.append((up - down) / (2 * Double(step)))
                analytic.append(Double(grad.pointer[i]))
            }
            results[name] = relativeError(analytic, numeric)
        }
        return results
    }
}
