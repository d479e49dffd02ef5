import ZooMixers

/// The reference of every config key, generated from the key lists the loader enforces (so the
/// README's reference cannot drift from what is accepted).
public enum ConfigReference {
    public static func markdown() -> String {
        var out: [String] = []
        func section(_ title: String, _ prefix: String, _ keys: [(key: String, description: String)]) {
            out.append("| `\(title)` key | meaning |\n|---|---|")
            out.append(keys.map { "| `\(prefix)\($0.key)` | \($0.description) |" }.joined(separator: "\n"))
            out.append("")
        }
        section("top-level", "", ExperimentConfig.keyReference)
        section("model", "model.", ModelConfig.keyReference)
        section("data", "data.", DataConfig.keyReference)
        section("train", "train.", TrainConfig.keyReference)
        section("train.early_stop", "train.early_stop.", EarlyStop.keyReference)
        section("eval", "eval.", EvalConfig.keyReference)
        for type in MixerRegistry.all {
            section("mixer type: \(type.typeName)", "", [("type", "`\(type.typeName)`")] + type.keyReference)
        }
        return out.joined(separator: "\n")
    }
}
