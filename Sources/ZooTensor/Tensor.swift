/// A dense, row-major Float32 array with a shape: a value type over copy-on-write storage.
///
/// Copies share storage until one of them is written (`withUnsafeMutableBufferPointer` copies
/// first when the storage is shared). Views are not kept: `permute`, `slice` and friends
/// materialise, so every tensor is contiguous and every kernel can take a plain pointer.
public struct Tensor: @unchecked Sendable {
    public private(set) var storage: TensorStorage
    public private(set) var shape: [Int]

    // MARK: Creation

    /// Uninitialised contents; write every element before reading.
    public init(uninitializedShape shape: [Int]) {
        validate { () throws(ShapeError) in try Tensor.checkShape(shape, op: "Tensor(shape:)") }
        self.shape = shape
        self.storage = TensorStorage(uninitializedCount: shape.reduce(1, *))
    }

    public init(shape: [Int], repeating value: Float) {
        validate { () throws(ShapeError) in try Tensor.checkShape(shape, op: "Tensor(shape:repeating:)") }
        self.shape = shape
        self.storage = TensorStorage(repeating: value, count: shape.reduce(1, *))
    }

    public init(shape: [Int], scalars: [Float]) {
        validate { () throws(ShapeError) in
            try Tensor.checkShape(shape, op: "Tensor(shape:scalars:)")
            let n = shape.reduce(1, *)
            guard n == scalars.count else {
                throw ShapeError("Tensor(shape:scalars:)", "shape \(describe(shape)) needs \(n) scalars, got \(scalars.count)")
            }
        }
        self.shape = shape
        self.storage = TensorStorage(uninitializedCount: scalars.count)
        scalars.withUnsafeBufferPointer { storage.pointer.update(from: $0.baseAddress!, count: scalars.count) }
    }

    public init(shape: [Int], doubles: [Double]) {
        self.init(shape: shape, scalars: doubles.map(Float.init))
    }

    /// Wraps existing storage (no copy). The storage must hold exactly the shape's element count.
    public init(shape: [Int], storage: TensorStorage) {
        precondition(shape.reduce(1, *) == storage.count, "Tensor(shape:storage:): shape \(describe(shape)) does not match storage of \(storage.count) elements")
        self.shape = shape
        self.storage = storage
    }

    /// Fills a new tensor by calling `body` with its (uninitialised) buffer.
    public init(shape: [Int], initializingWith body: (UnsafeMutableBufferPointer<Float>) throws -> Void) rethrows {
        self.init(uninitializedShape: shape)
        try body(UnsafeMutableBufferPointer(start: storage.pointer, count: storage.count))
    }

    public static func zeros(_ shape: [Int]) -> Tensor { Tensor(shape: shape, repeating: 0) }
    public static func ones(_ shape: [Int]) -> Tensor { Tensor(shape: shape, repeating: 1) }
    public static func full(_ shape: [Int], _ value: Float) -> Tensor { Tensor(shape: shape, repeating: value) }
    public static func scalar(_ value: Float) -> Tensor { Tensor(shape: [], repeating: value) }

    /// 0, 1, …, n−1 scaled: start + step·i.
    public static func arange(_ n: Int, start: Float = 0, step: Float = 1) -> Tensor {
        Tensor(shape: [n]) { buf in for i in 0..<n { buf[i] = start + step * Float(i) } }
    }

    /// Normal(mean, std) from a seeded generator: the same numbers on every machine.
    public static func normal(_ shape: [Int], mean: Float = 0, std: Float = 1, generator: inout SeededGenerator) -> Tensor {
        Tensor(shape: shape) { buf in
            for i in 0..<buf.count { buf[i] = mean + std * Float(generator.nextNormal()) }
        }
    }

    /// Uniform in [low, high) from a seeded generator.
    public static func uniform(_ shape: [Int], low: Float = 0, high: Float = 1, generator: inout SeededGenerator) -> Tensor {
        Tensor(shape: shape) { buf in
            for i in 0..<buf.count { buf[i] = low + (high - low) * generator.nextUniformFloat() }
        }
    }

    static func checkShape(_ shape: [Int], op: String) throws(ShapeError) {
        if shape.contains(where: { $0 < 0 }) { throw ShapeError(op, "negative size in shape \(describe(shape))") }
    }

    // MARK: Properties

    public var rank: Int { shape.count }
    public var count: Int { storage.count }
    public var scalars: [Float] { Array(UnsafeBufferPointer(start: storage.pointer, count: count)) }
    public var doubles: [Double] { scalars.map(Double.init) }
    /// The single value of a one-element tensor.
    public var item: Float {
        precondition(count == 1, "Tensor.item: needs exactly one element, shape is \(describe(shape))")
        return storage.pointer[0]
    }
    public var byteCount: Int { count * MemoryLayout<Float>.stride }

    /// Row-major strides of the shape.
    public var strides: [Int] { Tensor.strides(of: shape) }
    public static func strides(of shape: [Int]) -> [Int] {
        var s = [Int](repeating: 1, count: shape.count)
        var acc = 1
        for i in stride(from: shape.count - 1, through: 0, by: -1) { s[i] = acc; acc *= shape[i] }
        return s
    }

    // MARK: Access

    public func withUnsafeBufferPointer<R>(_ body: (UnsafeBufferPointer<Float>) throws -> R) rethrows -> R {
        try body(UnsafeBufferPointer(start: storage.pointer, count: count))
    }

    /// Mutable access; copies the storage first if another tensor shares it.
    public mutating func withUnsafeMutableBufferPointer<R>(_ body: (UnsafeMutableBufferPointer<Float>) throws -> R) rethrows -> R {
        if !isKnownUniquelyReferenced(&storage) { storage = storage.copy() }
        return try body(UnsafeMutableBufferPointer(start: storage.pointer, count: count))
    }

    /// Read-only base pointer, valid while `self` is alive (use inside `withExtendedLifetime`
    /// or while the tensor is a live local).
    public var pointer: UnsafePointer<Float> { UnsafePointer(storage.pointer) }

    /// Mutable base pointer after making storage unique.
    /// True when no other tensor shares this one's storage (writing through `mutablePointer()`
    /// then copies nothing).
    public mutating func ownsStorageUniquely() -> Bool { isKnownUniquelyReferenced(&storage) }

    public mutating func mutablePointer() -> UnsafeMutablePointer<Float> {
        if !isKnownUniquelyReferenced(&storage) { storage = storage.copy() }
        return storage.pointer
    }

    /// Element at a multi-index (slow; for tests and small work).
    public subscript(indices: Int...) -> Float {
        get { storage.pointer[flatIndex(indices)] }
        set { let i = flatIndex(indices); mutablePointer()[i] = newValue }
    }

    func flatIndex(_ indices: [Int]) -> Int {
        validate { () throws(ShapeError) -> Int in
            guard indices.count == rank else {
                throw ShapeError("subscript", "\(indices.count) indices for shape \(describe(shape))")
            }
            var flat = 0, s = 1
            for i in stride(from: rank - 1, through: 0, by: -1) {
                guard indices[i] >= 0 && indices[i] < shape[i] else {
                    throw ShapeError("subscript", "index \(indices) out of range for shape \(describe(shape))")
                }
                flat += indices[i] * s; s *= shape[i]
            }
            return flat
        }
    }

    // MARK: Shape

    /// Same storage, new shape (one −1 may be inferred). No copy.
    public func reshaped(_ newShape: [Int]) -> Tensor {
        let resolved = validate { () throws(ShapeError) in try ShapeCheck.reshape(shape, to: newShape) }
        return Tensor(shape: resolved, storage: storage)
    }

    /// An independent copy of the storage.
    public func copy() -> Tensor { Tensor(shape: shape, storage: storage.copy()) }
}

extension Tensor: CustomStringConvertible {
    public var description: String {
        let preview = scalars.prefix(8).map { String(format: "%.4g", $0) }.joined(separator: ", ")
        return "Tensor(\(describe(shape)): [\(preview)\(count > 8 ? ", …" : "")])"
    }
}

import Foundation
