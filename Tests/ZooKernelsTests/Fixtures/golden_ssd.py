#!/usr/bin/env python3
"""Golden vectors for the SSD (Mamba-2) kernels, written from the math with NumPy in float64.

An independent implementation: the token-by-token recurrence (not the quadratic form the Swift
naive kernel uses, nor the chunked algorithm), and gradients by central finite differences of
that recurrence (no hand-derived backward).

    delta_t = softplus(dt_t + dt_bias_h)
    S_t     = exp(delta_t * A_h) * S_{t-1} + delta_t * outer(x_t, B_t)      (P x N per head)
    y_t     = S_t @ C_t + D_h * x_t                                         (head h uses group h // (H/G))
    loss    = sum(y * gy) + sum(S_T * gh)

Writes golden_ssd.json beside this script: {"name": {"shape": [...], "data": [...]}}.
Run: python3 golden_ssd.py
"""
import json
import os

import numpy as np


def softplus(v):
    return np.maximum(v, 0) + np.log1p(np.exp(-np.abs(v)))


def recurrence(x, dt, A, B, C, D, dt_bias, h0):
    b, T, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    y = np.zeros_like(x)
    S = h0.copy()
    for t in range(T):
        for h in range(H):
            g = h // (H // G)
            d = softplus(dt[:, t, h] + dt_bias[h])                      # (b,)
            S[:, h] = np.exp(d * A[h])[:, None, None] * S[:, h] \
                + d[:, None, None] * x[:, t, h, :, None] * B[:, t, g, None, :]
            y[:, t, h] = np.einsum("bpn,bn->bp", S[:, h], C[:, t, g]) + D[h] * x[:, t, h]
    return y, S


def make_case(rng, b, T, H, P, G, N, with_h0):
    return {
        "x": rng.standard_normal((b, T, H, P)),
        "dt": 0.7 * rng.standard_normal((b, T, H)),
        "A": -rng.uniform(0.25, 2.0, H),
        "B": 0.5 * rng.standard_normal((b, T, G, N)),
        "C": 0.5 * rng.standard_normal((b, T, G, N)),
        "D": rng.standard_normal(H),
        "dt_bias": 0.5 * rng.standard_normal(H),
        "h0": 0.5 * rng.standard_normal((b, H, P, N)) if with_h0 else np.zeros((b, H, P, N)),
    }


def run(inputs):
    return recurrence(inputs["x"], inputs["dt"], inputs["A"], inputs["B"], inputs["C"], inputs["D"],
                      inputs["dt_bias"], inputs["h0"])


def finite_difference_grads(inputs, gy, gh, eps=1e-6):
    def loss(v):
        y, s = run(v)
        return np.sum(y * gy) + np.sum(s * gh)
    grads = {}
    for name, value in inputs.items():
        g = np.zeros_like(value)
        flat = value.reshape(-1)
        for i in range(flat.size):
            keep = flat[i]
            flat[i] = keep + eps
            up = loss(inputs)
            flat[i] = keep - eps
            down = loss(inputs)
            flat[i] = keep
            g.reshape(-1)[i] = (up - down) / (2 * eps)
        grads[name] = g
    return grads


def entry(a):
    a = np.asarray(a, dtype=np.float64)
    return {"shape": list(a.shape), "data": [float(f"{v:.12g}") for v in a.reshape(-1)]}


def main():
    out = {}
    # Case 1: groups (H=4, G=2), B=2, T=11 (not a multiple of the chunk sizes the test uses),
    # an initial state, every gradient.
    rng = np.random.default_rng(20261121)
    case1 = make_case(rng, 2, 11, 4, 3, 2, 5, with_h0=True)
    y, s = run(case1)
    gy = rng.standard_normal(y.shape)
    gh = rng.standard_normal(s.shape)
    grads = finite_difference_grads(case1, gy, gh)
    for k, v in case1.items():
        out[f"case1_{k}"] = entry(v)
    out["case1_y"], out["case1_final_state"] = entry(y), entry(s)
    out["case1_gy"], out["case1_gh"] = entry(gy), entry(gh)
    for k, v in grads.items():
        out[f"case1_grad_{k}"] = entry(v)
    # Case 2: longer (several chunks of 16), no initial state, forward only.
    case2 = make_case(rng, 1, 70, 2, 4, 1, 3, with_h0=False)
    y, s = run(case2)
    for k, v in case2.items():
        if k != "h0":
            out[f"case2_{k}"] = entry(v)
    out["case2_y"], out["case2_final_state"] = entry(y), entry(s)
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden_ssd.json")
    with open(path, "w") as f:
        json.dump(out, f, separators=(",", ":"))
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
    main()
