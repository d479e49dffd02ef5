import ZooTensor
import Foundation

/// A tensor on the tape: its value, and (for leaves that require gradients) the accumulated
/// gradient after `backward()`.
///
/// Reverse mode over a tape: every operation on variables that need gradients records a `Node`
/// with a sequence number (its place on the tape) and the backward closure written beside the
/// forward. `backward()` walks the nodes reachable from the loss in reverse tape order, so each
/// node runs once, after every use of its outputs has added its gradient (values used twice
/// accumulate). Graph building is single-threaded; kernels inside ops may run in parallel.
public final class Variable {
    public var value: Tensor
    /// The accumulated gradient of a leaf after `backward()` (nil until then).
    public var grad: Tensor?
    public let requiresGrad: Bool
    let node: Node?
    let outputIndex: Int

    /// A leaf: an input or a parameter.
    public init(_ value: Tensor, requiresGrad: Bool = false) {
        self.value = value
        self.requiresGrad = requiresGrad
        self.node = nil
        self.outputIndex = 0
    }

    init(value: Tensor, node: Node, outputIndex: Int) {
        self.value = value
        self.requiresGrad = true
        self.node = node
        self.outputIndex = outputIndex
    }

    public var shape: [Int] { value.shape }
    public var rank: Int { value.rank }
    public var isLeaf: Bool { node == nil }

    /// Clears the accumulated gradient.
    public func zeroGrad() { grad = nil }

    /// The same value, cut from the tape.
    public func detached() -> Variable { Variable(value) }
}

/// One recorded operation: its inputs, and a closure from output gradients to input gradients.
final class Node {
    let order: Int
    let inputs: [Variable]
    /// Dropped once run (with the tensors it saved): activations are freed as the backward
    /// passes them, and the parameters are no longer shared with the tape when the optimizer
    /// updates them in place.
    var backward: (([Tensor?]) -> [Tensor?])?
    var outputGradients: [Tensor?]
    /// Where it was recorded (for TapeProfiler).
    let site: TapeSite

    init(inputs: [Variable], outputCount: Int, site: TapeSite, backward: @escaping ([Tensor?]) -> [Tensor?]) {
        self.order = Tape.nextOrder()
        self.inputs = inputs
        self.backward = backward
        self.outputGradients = Array(repeating: nil, count: outputCount)
        self.site = site
        TapeProfiler.recorded(site)
    }
}

/// The switches of the tape.
///
/// The no-grad depth is per thread (pthread TLS, as ZooThreads' parallel-region depth): a
/// process-wide counter let one thread's `withNoGrad` switch recording off for another thread
/// building a graph at the same moment (Swift Testing runs tests concurrently in one process; a
/// gradient test then found no gradient). The order counter takes a lock for the same reason.
public enum Tape {
    nonisolated(unsafe) private static var counter = 0
    private static let counterLock = NSLock()

    static func nextOrder() -> Int {
        counterLock.lock(); defer { counterLock.unlock() }
        counter += 1
        return counter
    }

    private static let noGradKey: pthread_key_t = {
        var key = pthread_key_t()
        pthread_key_create(&key, nil)
        return key
    }()
    static var noGradDepth: Int {
        get { Int(bitPattern: pthread_getspecific(noGradKey)) }
        set { pthread_setspecific(noGradKey, UnsafeRawPointer(bitPattern: newValue)) }
    }

    /// False inside `withNoGrad` (on this thread): operations then record nothing.
    public static var isRecording: Bool { noGradDepth == 0 }
}

/// Runs `body` without recording (evaluation, decoding, optimizer updates) on the calling thread.
public func withNoGrad<R>(_ body: () throws -> R) rethrows -> R {
    Tape.noGradDepth += 1
    defer { Tape.noGradDepth -= 1 }
    return try body()
}

// MARK: - Recording

/// Records a single-output operation. `backward` maps the output gradient to one gradient per
/// input (nil where an input gets none). Nothing is recorded when no input requires a gradient
/// or inside `withNoGrad`.
/// `function` and `file` name the operation in TapeProfiler's report (the defaults: the caller).
@inline(__always)
public func record(_ value: Tensor, inputs: [Variable], function: StaticString = #function, file: StaticString = #fileID,
                   backward: @escaping (Tensor) -> [Tensor?]) -> Variable {
    guard Tape.isRecording, inputs.contains(where: { $0.requiresGrad }) else { return Variable(value) }
    let node = Node(inputs: inputs, outputCount: 1, site: .function(function, file: file)) { grads in
        guard let g = grads[0] else { return Array(repeating: nil, count: inputs.count) }
        return backward(g)
    }
    return Variable(value: value, node: node, outputIndex: 0)
}

/// Records a multi-output operation. `backward` receives one gradient per output (nil for outputs
/// that received none) and returns one per input.
public func recordMulti(_ values: [Tensor], inputs: [Variable], function: StaticString = #function, file: StaticString = #fileID,
                        backward: @escaping ([Tensor?]) -> [Tensor?]) -> [Variable] {
    recordMulti(values, inputs: inputs, site: .function(function, file: file), backward: backward)
}

func recordMulti(_ values: [Tensor], inputs: [Variable], site: TapeSite, backward: @escaping ([Tensor?]) -> [Tensor?]) -> [Variable] {
    guard Tape.isRecording, inputs.contains(where: { $0.requiresGrad }) else { return values.map { Variable($0) } }
    let node = Node(inputs: inputs, outputCount: values.count, site: site, backward: backward)
    return values.enumerated().map { Variable(value: $0.element, node: node, outputIndex: $0.offset) }
}

extension Variable {
    /// Back-propagates from this variable. A non-scalar output needs an explicit `gradient`
    /// (of the same shape); a scalar defaults to 1. Leaf gradients accumulate into `.grad`.
    public func backward(gradient: Tensor? = nil) {
        let seed: Tensor
        if let g = gradient {
            precondition(g.shape == value.shape, "backward: gradient shape \(describe(g.shape)) differs from value shape \(describe(value.shape))")
            seed = g
        } else {
            precondition(value.count == 1, "backward: a non-scalar output of shape \(describe(value.shape)) needs an explicit gradient")
            seed = Tensor.ones(value.shape)
        }
        guard requiresGrad else { return }
        guard let root = node else { accumulate(into: self, seed); return }
        root.outputGradients[outputIndex] = seed

        // Collect the nodes reachable from the root (iteratively: graphs can be deep).
        var seen = Set<ObjectIdentifier>([ObjectIdentifier(root)])
        var stack = [root], nodes: [Node] = []
        while let n = stack.popLast() {
            nodes.append(n)
            for input in n.inputs {
                if let p = input.node, seen.insert(ObjectIdentifier(p)).inserted { stack.append(p) }
            }
        }
        // Reverse tape order: a node runs after every node that consumed its outputs.
        nodes.sort { $0.order > $1.order }
        for n in nodes {
            let outGrads = n.outputGradients
            n.outputGradients = Array(repeating: nil, count: outGrads.count)   // free as we go
            guard let backward = n.backward else {
                preconditionFailure("backward: this graph was already back-propagated (each operation's saved tensors are freed once used); record it again")
            }
            n.backward = nil
            if outGrads.allSatisfy({ $0 == nil }) { continue }
            let started = TapeProfiler.clock()
            let inGrads = backward(outGrads)
            TapeProfiler.ranBackward(n.site, since: started)
            precondition(inGrads.count == n.inputs.count, "backward: an operation returned \(inGrads.count) gradients for \(n.inputs.count) inputs")
            for (input, g) in zip(n.inputs, inGrads) {
                guard let g, input.requiresGrad else { continue }
                precondition(g.shape == input.value.shape, "backward: gradient of shape \(describe(g.shape)) for an input of shape \(describe(input.value.shape))")
                if let p = input.node {
                    if var existing = p.outputGradients[input.outputIndex] {
                        let started = TapeProfiler.clock()
                        p.outputGradients[input.outputIndex] = nil   // so `existing` may own its storage
                        p.outputGradients[input.outputIndex] = sum(&existing, g)
                        TapeProfiler.ranBackward(.gradientSum, since: started)
                    } else {
                        p.outputGradients[input.outputIndex] = g
                    }
                } else {
                    let started = TapeProfiler.clock()
                    accumulate(into: input, g)
                    TapeProfiler.ranBackward(.leafGradient, since: started)
                }
            }
        }
    }

    private func accumulate(into leaf: Variable, _ g: Tensor) {
        if var existing = leaf.grad { leaf.grad = nil; leaf.grad = sum(&existing, g) } else { leaf.grad = g.copy() }
    }

    /// a + g, in place when `a` owns its storage. A gradient is often shared (a sum passes the
    /// same tensor to both inputs), and then one out-of-place pass beats copy-then-add.
    private func sum(_ a: inout Tensor, _ g: Tensor) -> Tensor {
        if a.ownsStorageUniquely() { a.add(g); return a }
        return a + g
    }
}
