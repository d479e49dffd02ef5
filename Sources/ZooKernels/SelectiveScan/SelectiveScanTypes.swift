import ZooTensor

// Selective scan (Mamba-1, "S6"): shared argument and result types of the naive, fast and step
// kernels. Shapes (channel-major, as the reference `selective_scan_ref`):
//   u, delta, z: [B, D, L]   A: [D, N]   B, C: [B, G, N, L] (G divides D; [B, N, L] means G = 1)
//   D, deltaBias: [D]        initialState h0, finalState: [B, D, N]
// Channel d reads B/C group d / (D/G).
// Token-major layout (`SelectiveScanLayout.tokenMajor`, what a model's projections produce):
//   u, delta, z, out: [B, L, D]   B, C: [B, L, G, N] (or [B, L, N])   the rest as above.
// The fast kernels read either layout directly: channel-major rows are transposed into their
// [K][16] time tiles, token-major rows are already 16 channels per step (plain vector loads),
// so a model saves a permute of every input and output.

/// How u, delta, z, out (and their gradients) and B, C are laid out in memory.
public enum SelectiveScanLayout: Sendable, Equatable {
    /// u [B, D, L], B [B, G, N, L]: the reference kernels' layout.
    case channelMajor
    /// u [B, L, D], B [B, L, G, N]: the layout of a [B, L, features] activation.
    case tokenMajor
}

/// The sizes of one selective scan call.
public struct SelectiveScanShape: Sendable, Equatable, CustomStringConvertible {
    public var batch: Int
    public var channels: Int
    public var length: Int
    public var stateSize: Int
    public var groups: Int

    public init(batch: Int, channels: Int, length: Int, stateSize: Int, groups: Int = 1) {
        self.batch = batch; self.channels = channels; self.length = length
        self.stateSize = stateSize; self.groups = groups
    }

    public var channelsPerGroup: Int { channels / groups }
    public var description: String {
        "B=\(batch) D=\(channels) L=\(length) N=\(stateSize) G=\(groups)"
    }

    /// Checks sizes that every kernel relies on; stops with a message naming `function`.
    func check(_ function: String) {
        if batch < 1 || channels < 1 || stateSize < 1 || groups < 1 || length < 0 {
            fatalError("\(function): sizes must be positive (length ≥ 0), got \(self)")
        }
        if channels % groups != 0 {
            fatalError("\(function): groups G=\(groups) must divide channels D=\(channels)")
        }
    }
}

/// Float32 inputs of the fast and step kernels (see the shapes at the top of this file).
/// `deltaSoftplus` applies Δ = softplus(delta + deltaBias); otherwise Δ = delta + deltaBias.
public struct SelectiveScanInputs: Sendable {
    public var u: Tensor
    public var delta: Tensor
    public var A: Tensor
    public var B: Tensor
    public var C: Tensor
    public var D: Tensor?
    public var z: Tensor?
    public var deltaBias: Tensor?
    public var initialState: Tensor?
    public var deltaSoftplus: Bool
    public var layout: SelectiveScanLayout

    public init(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor? = nil,
                z: Tensor? = nil, deltaBias: Tensor? = nil, initialState: Tensor? = nil,
                deltaSoftplus: Bool = false, layout: SelectiveScanLayout = .channelMajor) {
        self.u = u; self.delta = delta; self.A = A; self.B = B; self.C = C; self.D = D
        self.z = z; self.deltaBias = deltaBias; self.initialState = initialState
        self.deltaSoftplus = deltaSoftplus
        self.layout = layout
    }

    /// The same inputs in the channel-major layout (permuted copies when token-major).
    public func channelMajor() -> SelectiveScanInputs {
        guard layout == .tokenMajor else { return self }
        let s = shape(checkedBy: "SelectiveScanInputs.channelMajor")
        func stateInput(_ t: Tensor) -> Tensor {
            t.reshaped([s.batch, s.length, s.groups, s.stateSize]).permuted([0, 2, 3, 1]).reshaped(
                t.rank == 3 ? [s.batch, s.stateSize, s.length] : [s.batch, s.groups, s.stateSize, s.length])
        }
        var x = self
        x.u = u.permuted([0, 2, 1]); x.delta = delta.permuted([0, 2, 1]); x.z = z?.permuted([0, 2, 1])
        x.B = stateInput(B); x.C = stateInput(C)
        x.layout = .channelMajor
        return x
    }

    /// Validates every shape against u ([B, D, L], or [B, L, D] token-major) and A [D, N]; stops
    /// with a message naming `function`, the layout and the offending shapes.
    public func shape(checkedBy function: String) -> SelectiveScanShape {
        func fail(_ what: String) -> Never {
            fatalError("\(function): \(what) (\(layout), u \(describe(u.shape)), delta \(describe(delta.shape)), A \(describe(A.shape)), B \(describe(B.shape)), C \(describe(C.shape)))")
        }
        let tokenMajor = layout == .tokenMajor
        let sequenceShape = tokenMajor ? "[B, L, D]" : "[B, D, L]"
        guard u.rank == 3 else { fail("u must be \(sequenceShape), got \(describe(u.shape))") }
        let (b, d, l) = tokenMajor ? (u.shape[0], u.shape[2], u.shape[1]) : (u.shape[0], u.shape[1], u.shape[2])
        guard delta.shape == u.shape else { fail("delta must have u's shape \(sequenceShape)") }
        guard A.rank == 2, A.shape[0] == d else { fail("A must be [D, N] with D = \(d)") }
        let n = A.shape[1]
        let g: Int
        if tokenMajor {
            if B.rank == 3 && B.shape == [b, l, n] { g = 1 }
            else if B.rank == 4 && B.shape[0] == b && B.shape[1] == l && B.shape[3] == n && B.shape[2] >= 1 { g = B.shape[2] }
            else { fail("B must be [B, L, G, N] = [\(b), \(l), G, \(n)] (or [B, L, N])") }
        } else {
            if B.rank == 3 && B.shape == [b, n, l] { g = 1 }
            else if B.rank == 4 && B.shape[0] == b && B.shape[2] == n && B.shape[3] == l && B.shape[1] >= 1 { g = B.shape[1] }
            else { fail("B must be [B, G, N, L] = [\(b), G, \(n), \(l)] (or [B, N, L])") }
        }
        guard C.shape == B.shape else { fail("C must have B's shape") }
        if let D, D.shape != [d] { fail("D must be [\(d)], got \(describe(D.shape))") }
        if let z, z.shape != u.shape { fail("z must have u's shape, got \(describe(z.shape))") }
        if let deltaBias, deltaBias.shape != [d] { fail("deltaBias must be [\(d)], got \(describe(deltaBias.shape))") }
        if let initialState, initialState.shape != [b, d, n] {
            fail("initialState must be [B, D, N] = [\(b), \(d), \(n)], got \(describe(initialState.shape))")
        }
        let shape = SelectiveScanShape(batch: b, channels: d, length: l, stateSize: n, groups: g)
        shape.check(function)
        return shape
    }
}

/// Performance knobs of the fast kernels; they never change the function computed.
public struct SelectiveScanOptions: Sendable {
    /// K: the forward saves the state every K steps; the backward recomputes K steps at a time
    /// from those checkpoints (saved memory B·D·N·⌈L/K⌉ floats, recompute scratch ~2·K·N·16 floats
    /// per worker).
    public var checkpointInterval: Int
    /// Whether the forward keeps checkpoints for `selectiveScanBackward` (inference sets false).
    public var saveForBackward: Bool

    public init(checkpointInterval: Int = 64, saveForBackward: Bool = true) {
        self.checkpointInterval = checkpointInterval
        self.saveForBackward = saveForBackward
    }
}

/// What the forward keeps for the backward: the state at the start of every K-step chunk,
/// stored as the kernel's register tiles [B, blocks, chunks, Npad, 16] (16 channels per tile).
public struct SelectiveScanSaved: Sendable {
    public let shape: SelectiveScanShape
    public let checkpointInterval: Int
    let checkpoints: Tensor
    /// Bytes held by the checkpoints (B·blocks·⌈L/K⌉·Npad·16·4).
    public var byteCount: Int { checkpoints.byteCount }
}

public struct SelectiveScanForwardResult: Sendable {
    /// [B, D, L] ([B, L, D] token-major)
    public var out: Tensor
    /// h_L: [B, D, N]
    public var finalState: Tensor
    /// nil when `saveForBackward` was false.
    public var saved: SelectiveScanSaved?
}

/// Gradients of the loss with respect to every input. `D`, `z` and `deltaBias` are nil when the
/// input was absent; `initialState` is always given (the gradient of a zero initial state).
/// `B` and `C` have the shape the inputs had.
public struct SelectiveScanGradients: Sendable {
    public var u: Tensor
    public var delta: Tensor
    public var A: Tensor
    public var B: Tensor
    public var C: Tensor
    public var D: Tensor?
    public var z: Tensor?
    public var deltaBias: Tensor?
    public var initialState: Tensor
}

/// Where the sequence tensors (u, delta, z, out and their gradients) keep element (b, d, t):
/// at `offset(b, d, t)`, with channel d + 1 at `+ laneStride` and step t + 1 at `+ timeStride`.
/// B and C (and their gradients) keep state i of group g at step t at
/// `stateOffset(b, g, t) + i · stateStride`; step t + 1 is `stateTimeStride` further.
struct ScanSequenceLayout {
    let layout: SelectiveScanLayout
    let channels: Int
    let length: Int
    let groups: Int
    let stateSize: Int
    init(_ layout: SelectiveScanLayout, _ s: SelectiveScanShape) {
        self.layout = layout; channels = s.channels; length = s.length; groups = s.groups; stateSize = s.stateSize
    }
    var stateStride: Int { layout == .tokenMajor ? 1 : length }
    var stateTimeStride: Int { layout == .tokenMajor ? groups * stateSize : 1 }
    /// [B, L, G, N] at ((b·L + t)·G + g)·N, [B, G, N, L] at (b·G + g)·N·L + t.
    @inline(__always) func stateOffset(batch b: Int, group g: Int, step t: Int) -> Int {
        layout == .tokenMajor ? ((b * length + t) * groups + g) * stateSize : (b * groups + g) * stateSize * length + t
    }
    var laneStride: Int { layout == .tokenMajor ? 1 : length }
    var timeStride: Int { layout == .tokenMajor ? channels : 1 }
    @inline(__always) func offset(batch b: Int, channel d: Int, step t: Int) -> Int {
        layout == .tokenMajor ? (b * length + t) * channels + d : (b * channels + d) * length + t
    }
    /// The shape of a sequence tensor in this layout.
    func shape(batch: Int) -> [Int] { layout == .tokenMajor ? [batch, length, channels] : [batch, channels, length] }
}

/// How the fast kernels cut the work: tiles of 16 channels inside one B/C group (the last tile
/// of a group may be partial), the state padded to a multiple of 16, chunks of K steps.
struct ScanGeometry {
    let shape: SelectiveScanShape
    let interval: Int
    let paddedState: Int          // Npad
    let stateGroups: Int          // Npad / 16
    let blocksPerGroup: Int
    let blocks: Int               // G · blocksPerGroup
    let chunks: Int               // ⌈L / K⌉

    init(_ shape: SelectiveScanShape, interval: Int, function: String) {
        if interval < 1 { fatalError("\(function): checkpointInterval must be ≥ 1, got \(interval)") }
        self.shape = shape
        self.interval = interval
        paddedState = (shape.stateSize + 15) / 16 * 16
        stateGroups = paddedState / 16
        blocksPerGroup = (shape.channelsPerGroup + 15) / 16
        blocks = shape.groups * blocksPerGroup
        chunks = (shape.length + interval - 1) / interval
    }

    /// Group, first channel and width (≤ 16) of tile `block`.
    @inline(__always) func tile(_ block: Int) -> (group: Int, firstChannel: Int, width: Int) {
        let g = block / blocksPerGroup, j = block % blocksPerGroup
        let first = g * shape.channelsPerGroup + 16 * j
        return (g, first, min(16, shape.channelsPerGroup - 16 * j))
    }

    /// Steps in chunk c.
    @inline(__always) func chunkLength(_ c: Int) -> Int { min(interval, shape.length - c * interval) }
}
