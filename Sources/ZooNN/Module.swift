import ZooTensor
import ZooAutograd

/// A parameter with its stable dotted name (`layers.0.mixer.in_proj.weight`) and whether AdamW's
/// weight decay applies to it.
public struct NamedParameter {
    public let name: String
    public let variable: Variable
    public let decays: Bool
    public init(_ name: String, _ variable: Variable, decays: Bool = true) {
        self.name = name; self.variable = variable; self.decays = decays
    }
}

/// Anything that owns parameters. Names are relative; a parent prefixes its children's names.
public protocol Module {
    func namedParameters() -> [NamedParameter]
}

extension Module {
    /// The parameters of `child` under `prefix.` (the dotted naming used in checkpoints).
    public func nested(_ prefix: String, _ child: some Module) -> [NamedParameter] {
        child.namedParameters().map { NamedParameter("\(prefix).\($0.name)", $0.variable, decays: $0.decays) }
    }
    public var parameterCount: Int { namedParameters().reduce(0) { $0 + $1.variable.value.count } }
}

/// A trainable leaf.
public func parameter(_ value: Tensor) -> Variable { Variable(value, requiresGrad: true) }
