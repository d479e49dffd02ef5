// Fenwick-tree bookkeeping shared by the naive, chunked and step kernels of log-linear attention
// (Guo, Yang, Goel, Xing, Dao, Kim 2025, arXiv 2506.04761).
//
// Positions are 0-based and absolute. For a query t and a key s ≤ t:
//   level(t, t) = 0,   level(t, s) = bit_length(t XOR s)  (1 + the highest bit where t and s differ).
// For a fixed t the keys of level ℓ ≥ 1 form the bucket [(t >> ℓ) << ℓ, (t >> (ℓ−1)) << (ℓ−1)),
// non-empty iff bit ℓ−1 of t is set: the buckets tile [0, t) in power-of-two pieces, oldest largest.
//
// Decode state after the tokens 0 … p−1 (p ≥ 1): the buckets of query q = p − 1, one [P, N] matrix
// per level ℓ = 0 … bit_length(q), each decayed to q. At most 1 + popcount(q) of them are non-empty.
// Any matrix S_ℓ of that state reaches a later query t > q at level max(ℓ, bit_length(t XOR q)):
// the next token's merge (levels 0…k into k+1, k = ctz(t)) is that rule for one step, and rules of
// this max form compose. Every kernel here (naive, chunked, step) uses this one rule for states.

/// 1 + the index of the highest set bit of `v` (0 for 0): Python's `int.bit_length`.
@inline(__always) public func bitLength(_ v: Int) -> Int {
    v == 0 ? 0 : Int.bitWidth - v.leadingZeroBitCount
}

/// The Fenwick level of key `s` for query `t` (both 0-based, s ≤ t).
@inline(__always) public func fenwickLevel(query t: Int, key s: Int) -> Int { bitLength(t ^ s) }

/// Number of state levels after `tokens` tokens: 0 for none, else ⌈log₂ tokens⌉ + 1. This is also the
/// number of λ levels a sequence of that length needs (Lmax in ../shared/DESIGN.md §4).
@inline(__always) public func logLinearLevelCount(tokens: Int) -> Int {
    tokens <= 0 ? 0 : bitLength(tokens - 1) + 1
}

/// Whether level ℓ of the decode state is non-empty after `tokens` tokens.
@inline(__always) public func logLinearLevelIsOccupied(_ level: Int, tokens: Int) -> Bool {
    if tokens <= 0 { return false }
    if level == 0 { return true }
    return ((tokens - 1) >> (level - 1)) & 1 == 1
}

/// Shapes of one log-linear attention call: SSD's sizes plus the λ levels and the start position.
/// Inputs (canonical layout, ../shared/DESIGN.md §4): those of SSD (x [B, T, H, P], dt [B, T, H],
/// A [H], B and C [B, T, G, N], D [H], dt_bias [H]), λ [B, T, H, L] with
/// L ≥ logLinearLevelCount(tokens: start + T), optional initial state [B, H, L0, P, N] with
/// L0 = logLinearLevelCount(tokens: start). `startPosition` is the absolute position of the first
/// token (the tokens already folded into the initial state): levels depend on absolute positions,
/// so a continued prefill must pass it.
public struct LogLinearShape: Sendable, Equatable, CustomStringConvertible {
    public var ssd: SSDShape
    public var lambdaLevels: Int
    public var startPosition: Int

    public init(ssd: SSDShape, lambdaLevels: Int, startPosition: Int = 0) {
        self.ssd = ssd; self.lambdaLevels = lambdaLevels; self.startPosition = startPosition
    }

    public init(batch: Int, length: Int, heads: Int, headDim: Int, groups: Int, stateSize: Int,
                lambdaLevels: Int, startPosition: Int = 0) {
        self.init(ssd: SSDShape(batch: batch, length: length, heads: heads, headDim: headDim, groups: groups,
                                stateSize: stateSize),
                  lambdaLevels: lambdaLevels, startPosition: startPosition)
    }

    public var batch: Int { ssd.batch }
    public var length: Int { ssd.length }
    public var heads: Int { ssd.heads }
    public var headDim: Int { ssd.headDim }
    public var groups: Int { ssd.groups }
    public var stateSize: Int { ssd.stateSize }
    public var headsPerGroup: Int { ssd.headsPerGroup }
    public var xShape: [Int] { ssd.xShape }
    public var dtShape: [Int] { ssd.dtShape }
    public var bcShape: [Int] { ssd.bcShape }
    public var lambdaShape: [Int] { [batch, length, heads, lambdaLevels] }
    /// [B, H, levels, P, N]: a decode state after `tokens` tokens.
    public func stateShape(tokens: Int) -> [Int] { [batch, heads, logLinearLevelCount(tokens: tokens), headDim, stateSize] }

    /// Levels of the initial state (tokens before the call).
    public var initialLevels: Int { logLinearLevelCount(tokens: startPosition) }
    /// Levels of the final state, and the λ levels the call needs.
    public var finalLevels: Int { logLinearLevelCount(tokens: startPosition + length) }

    public var description: String { "\(ssd) L=\(lambdaLevels) start=\(startPosition)" }

    /// Stops with a message naming `function` when the sizes are inconsistent.
    public func validate(_ function: String) {
        if batch < 1 || length < 1 || heads < 1 || headDim < 1 || groups < 1 || stateSize < 1 || startPosition < 0 {
            fatalError("\(function): sizes must be positive (start ≥ 0), got \(self)")
        }
        if heads % groups != 0 {
            fatalError("\(function): heads \(heads) must be a multiple of groups \(groups)")
        }
        if lambdaLevels < finalLevels {
            fatalError("\(function): λ has \(lambdaLevels) levels, positions \(startPosition)..<\(startPosition + length) need \(finalLevels) (⌈log₂ T⌉ + 1)")
        }
    }
}
