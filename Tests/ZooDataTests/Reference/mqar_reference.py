#!/usr/bin/env python3
"""An independent transcription of zoo's MQAR generator (Sources/ZooData/MQAR.swift) from its
documented algorithm, in plain Python floats (IEEE-754 doubles, the same correctly rounded
+, -, *, / as Swift). It prints the FNV-1a fingerprint of the first examples of the datasets that
MQARTests.theGeneratorsOutputIsPinned checks, so the pinned values come from two implementations
and the generator's output does not depend on the language or the machine.

Run: python3 mqar_reference.py
"""
import math

MASK = (1 << 64) - 1


class SeededGenerator:
    """SplitMix64, as ZooTensor's SeededGenerator."""

    def __init__(self, seed):
        self.state = seed & MASK

    def next(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)

    def uniform(self):
        return float(self.next() >> 11) * 2.0 ** -53

    def below(self, bound):
        limit = MASK - MASK % bound
        while True:
            x = self.next()
            if x < limit:
                return x % bound

    def derived(self, salt):
        g = SeededGenerator(self.state ^ ((salt * 0xD1B54A32D192ED03) & MASK))
        g.next()
        return g


def portable_log(x):
    m, e = math.frexp(x)          # x = m * 2**e, m in [0.5, 1): exact
    m, e = m * 2.0, float(e - 1)  # significand in [1, 2), as Swift's x.significand / x.exponent
    if m > 1.4142135623730951:
        m *= 0.5
        e += 1.0
    s = (m - 1.0) / (m + 1.0)
    s2 = s * s
    term, total, k = s, 0.0, 1.0
    while k <= 25.0:
        total += term / k
        term *= s2
        k += 2.0
    return 2.0 * total + e * 0.6931471805599453


def portable_exp(x):
    ln2hi, ln2lo = 6.93147180369123816490e-01, 1.90821492927058770002e-10
    q = x / 0.6931471805599453
    k = math.copysign(math.floor(abs(q) + 0.5), q)   # Swift's rounded(): ties away from zero
    r = (x - k * ln2hi) - k * ln2lo
    total, n = 1.0, 20.0
    while n >= 1.0:
        total = 1.0 + total * r / n
        n -= 1.0
    return math.ldexp(total, int(k))


def sample_without_replacement(k, lo, hi, rng):
    n, swapped, out = hi - lo, {}, []
    for i in range(k):
        j = i + rng.below(n - i)
        at_j = swapped.get(j, j)
        swapped[j] = swapped.get(i, i)
        out.append(lo + at_j)
    return out


def sample_gaps(k, weights, rng):
    remaining = list(weights)
    total = 0.0
    for w in weights:
        total += w
    out = []
    for _ in range(k):
        u = rng.uniform() * total
        pick, cumulative = -1, 0.0
        for g, w in enumerate(remaining):
            if w > 0:
                cumulative += w
                pick = g
                if u < cumulative:
                    break
        total -= remaining[pick]
        remaining[pick] = 0.0
        out.append(pick)
    return out


def example(vocab, length, pairs, power_a, random_fill, seed, split, index):
    base = SeededGenerator(seed).derived(0x747261696E if split == "train" else 0x74657374)
    rng = base.derived(index)
    slots = (length - 2 * pairs) // 2
    weights = [portable_exp((power_a - 1.0) * portable_log(float(g + 1))) for g in range(slots)]
    keys = sample_without_replacement(pairs, 1, vocab // 2, rng)
    values = sample_without_replacement(pairs, vocab // 2, vocab, rng)
    gaps = sample_gaps(pairs, weights, rng)
    inputs, targets = [None] * length, [-100] * length
    for j in range(pairs):
        inputs[2 * j], inputs[2 * j + 1] = keys[j], values[j]
        q = 2 * pairs + 2 * gaps[j]
        inputs[q], targets[q] = keys[j], values[j]
    for i in range(length):
        if inputs[i] is None:
            inputs[i] = rng.below(vocab) if random_fill else 0
    return inputs, targets


def fingerprint(vocab, length, pairs, power_a, random_fill, seed, split, count):
    h = 0xCBF29CE484222325
    for i in range(count):
        inputs, targets = example(vocab, length, pairs, power_a, random_fill, seed, split, i)
        for x in inputs + targets:
            for b in (x & MASK).to_bytes(8, "little"):
                h = ((h ^ b) * 0x100000001B3) & MASK
    return "%016x" % h


if __name__ == "__main__":
    print("V8192 T256 k32 a0.01 random seed 42 train, 8 examples:",
          fingerprint(8192, 256, 32, 0.01, True, 42, "train", 8))
    print("V100 T45 k5 a0.5 zeros seed 7 test, 16 examples:",
          fingerprint(100, 45, 5, 0.5, False, 7, "test", 16))
