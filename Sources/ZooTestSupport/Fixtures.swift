import Foundation

/// Golden vectors written by an independent implementation (a NumPy script committed beside the
/// fixture). File format: JSON object mapping a name to {"shape": [...], "data": [...]} with data
/// in row-major order as float64; scalars may be stored as plain numbers.
public struct GoldenFixture: Sendable {
    public struct Array: Sendable {
        public let shape: [Int]
        public let data: [Double]
        public var floats: [Float] { data.map(Float.init) }
    }
    public let arrays: [String: Array]
    public let scalars: [String: Double]

    public init(contentsOf url: URL) throws {
        let object = try JSONSerialization.jsonObject(with: Data(contentsOf: url))
        guard let dict = object as? [String: Any] else {
            throw FixtureError("\(url.lastPathComponent): top level must be an object")
        }
        var arrays: [String: Array] = [:], scalars: [String: Double] = [:]
        for (name, value) in dict {
            if let number = value as? NSNumber { scalars[name] = number.doubleValue; continue }
            guard let entry = value as? [String: Any],
                  let shape = entry["shape"] as? [Int],
                  let data = entry["data"] as? [NSNumber] else {
                throw FixtureError("\(url.lastPathComponent): entry '\(name)' needs 'shape' and 'data'")
            }
            let values = data.map(\.doubleValue)
            guard shape.reduce(1, *) == values.count else {
                throw FixtureError("\(url.lastPathComponent): entry '\(name)' has \(values.count) values for shape \(shape)")
            }
            arrays[name] = Array(shape: shape, data: values)
        }
        self.arrays = arrays
        self.scalars = scalars
    }

    public subscript(name: String) -> Array {
        guard let a = arrays[name] else { fatalError("golden fixture has no array '\(name)'; it has \(arrays.keys.sorted())") }
        return a
    }
    public func scalar(_ name: String) -> Double {
        guard let s = scalars[name] else { fatalError("golden fixture has no scalar '\(name)'; it has \(scalars.keys.sorted())") }
        return s
    }
}

public struct FixtureError: Error, CustomStringConvertible {
    public let description: String
    init(_ d: String) { description = d }
}
