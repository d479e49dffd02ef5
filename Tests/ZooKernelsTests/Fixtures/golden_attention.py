#!/usr/bin/env python3
"""Golden vectors for zoo's attention kernels, written from the math with NumPy in float64.

Independent of the Swift code: dense scores per head, explicit masks, analytic gradients (checked
here against central finite differences before anything is written). Writes golden_attention.json
beside this script. Layout as DESIGN.md section 4: q [B,Tq,Hq,d], k [B,Tk,Hk,d], v [B,Tk,Hk,dv],
o [B,Tq,Hq,dv], lse [B,Hq,Tq]; query i sits at key position i + Tk - Tq (bottom-right).

Run: python3 golden_attention.py
"""
import json
import os

import numpy as np

CASES = [
    # name, B, Tq, Tk, Hq, Hk, d, dv, causal, window_left, window_right, softcap, scale
    ("causal_gqa", 1, 7, 7, 4, 2, 8, 6, True, None, None, 0.0, None),
    ("cross_window_softcap", 2, 5, 9, 2, 1, 4, 4, True, 3, None, 1.5, 0.8),
    ("noncausal_local", 1, 6, 6, 3, 3, 5, 2, False, 2, 1, 0.0, None),
    ("more_queries_than_keys", 1, 6, 4, 1, 1, 3, 3, True, None, None, 0.0, None),
]


def visible(Tq, Tk, causal, left, right):
    """mask[i, j]: query i sees key j."""
    pos = np.arange(Tq)[:, None] + (Tk - Tq)
    j = np.arange(Tk)[None, :]
    m = np.ones((Tq, Tk), dtype=bool)
    if causal:
        m &= j <= pos
    if left is not None:
        m &= j >= pos - left
    if right is not None:
        m &= j <= pos + right
    return m


def forward(q, k, v, causal, left, right, softcap, scale):
    B, Tq, Hq, d = q.shape
    _, Tk, Hk, dv = v.shape
    group = Hq // Hk
    mask = visible(Tq, Tk, causal, left, right)
    o = np.zeros((B, Tq, Hq, dv))
    lse = np.full((B, Hq, Tq), -np.inf)
    for b in range(B):
        for h in range(Hq):
            kh, vh = k[b, :, h // group, :], v[b, :, h // group, :]
            x = q[b, :, h, :] @ kh.T
            s = softcap * np.tanh(scale * x / softcap) if softcap > 0 else scale * x
            s = np.where(mask, s, -np.inf)
            for i in range(Tq):
                if not mask[i].any():
                    continue
                m = s[i].max()
                e = np.exp(s[i] - m)
                lse[b, h, i] = m + np.log(e.sum())
                o[b, i, h, :] = (e / e.sum()) @ vh
    return o, lse


def backward(q, k, v, dO, causal, left, right, softcap, scale):
    B, Tq, Hq, d = q.shape
    _, Tk, Hk, dv = v.shape
    group = Hq // Hk
    mask = visible(Tq, Tk, causal, left, right)
    dq, dk, dvv = np.zeros_like(q), np.zeros_like(k), np.zeros_like(v)
    for b in range(B):
        for h in range(Hq):
            kh, vh = k[b, :, h // group, :], v[b, :, h // group, :]
            x = q[b, :, h, :] @ kh.T
            if softcap > 0:
                th = np.tanh(scale * x / softcap)
                s, dsdx = softcap * th, scale * (1 - th ** 2)
            else:
                s, dsdx = scale * x, np.full_like(x, scale)
            s = np.where(mask, s, -np.inf)
            p = np.zeros_like(s)
            for i in range(Tq):
                if mask[i].any():
                    e = np.exp(s[i] - s[i].max())
                    p[i] = e / e.sum()
            g = dO[b, :, h, :]
            dvv[b, :, h // group, :] += p.T @ g
            dp = g @ vh.T
            ds = p * (dp - (p * dp).sum(axis=1, keepdims=True))
            dx = ds * dsdx
            dq[b, :, h, :] = dx @ kh
            dk[b, :, h // group, :] += dx.T @ q[b, :, h, :]
    return dq, dk, dvv


def check_gradients(q, k, v, dO, args, grads):
    """Central differences of sum(o * dO) at a few entries of each input."""
    rng = np.random.default_rng(0)
    eps = 1e-6
    for which, g in zip(range(3), grads):
        inputs = [q, k, v]
        for flat in rng.choice(inputs[which].size, size=min(8, inputs[which].size), replace=False):
            idx = np.unravel_index(flat, inputs[which].shape)
            plus = [a.copy() for a in inputs]
            minus = [a.copy() for a in inputs]
            plus[which][idx] += eps
            minus[which][idx] -= eps
            lp = (forward(*plus, *args)[0] * dO).sum()
            lm = (forward(*minus, *args)[0] * dO).sum()
            numeric = (lp - lm) / (2 * eps)
            assert abs(numeric - g[idx]) < 1e-6 * max(1.0, abs(numeric)), (which, idx, numeric, g[idx])


def main():
    rng = np.random.default_rng(20261121)
    out = {}

    def put(name, a):
        out[name] = {"shape": list(a.shape), "data": [float(f"{x:.17g}") for x in a.ravel()]}

    for name, B, Tq, Tk, Hq, Hk, d, dv, causal, left, right, softcap, scale in CASES:
        q = rng.standard_normal((B, Tq, Hq, d))
        k = rng.standard_normal((B, Tk, Hk, d))
        v = rng.standard_normal((B, Tk, Hk, dv))
        dO = rng.standard_normal((B, Tq, Hq, dv))
        used_scale = scale if scale is not None else d ** -0.5
        args = (causal, left, right, softcap, used_scale)
        o, lse = forward(q, k, v, *args)
        grads = backward(q, k, v, dO, *args)
        check_gradients(q, k, v, dO, args, grads)
        for key, a in [("q", q), ("k", k), ("v", v), ("dO", dO), ("o", o), ("dq", grads[0]), ("dk", grads[1]), ("dv", grads[2])]:
            put(f"{name}.{key}", a)
        # -inf (a query that sees no key) is stored as -1e300: JSON has no infinity.
        put(f"{name}.lse", np.where(np.isinf(lse), -1e300, lse))
        out[f"{name}.causal"] = 1.0 if causal else 0.0
        out[f"{name}.window_left"] = float(left) if left is not None else -1.0
        out[f"{name}.window_right"] = float(right) if right is not None else -1.0
        out[f"{name}.softcap"] = softcap
        out[f"{name}.scale"] = used_scale
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden_attention.json")
    with open(path, "w") as f:
        json.dump(out, f, separators=(",", ":"))
    print(f"wrote {path}: {os.path.getsize(path)} bytes, {len(CASES)} cases")


if __name__ == "__main__":
    main()
