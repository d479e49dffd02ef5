import ZooTensor

/// A fused kernel with a hand-written backward, recorded on the tape as ONE node.
///
/// The mixers use it (as flash-attention and mamba use `autograd.Function`) so that no T×T
/// matrix or per-step state is stored by the tape: `forward` keeps only what `backward` needs in
/// `Saved` (for flash attention, the output and the log-sum-exp).
public protocol DifferentiableFunction {
    associatedtype Saved
    /// Computes the outputs from the input values, and what the backward needs.
    func forward(_ inputs: [Tensor]) -> (outputs: [Tensor], saved: Saved)
    /// Gradients for each input (nil where an input takes none), given one gradient per output
    /// (nil where an output received none: treat it as zero).
    func backward(_ saved: Saved, outputGradients: [Tensor?]) -> [Tensor?]
}

extension DifferentiableFunction {
    /// Runs the function on variables and records it as one node.
    public func callAsFunction(_ inputs: [Variable]) -> [Variable] {
        let (outputs, saved) = forward(inputs.map(\.value))
        return recordMulti(outputs, inputs: inputs, site: .kernel(Self.self)) { grads in self.backward(saved, outputGradients: grads) }
    }
}
