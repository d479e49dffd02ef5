#!/usr/bin/env python3
"""Golden vectors for zoo's log-linear Mamba-2 kernels (NumPy, float64), written from the math.

    Delta_t = softplus(dt_t + dt_bias),  a_t = Delta_t * A   (per head)
    y_t = sum_{s<=t} lam_t[level(t,s)] * exp(a_{s+1}+...+a_t) * (C_t . B_s) * Delta_s x_s + D x_t
    level(t,t) = 0, level(t,s) = bit_length(t ^ s)  (0-based absolute positions)

y comes from the full masked matrix. The decode state (one P x N matrix per Fenwick level) comes
from a token-by-token recurrence -- merge levels 0..ctz(t) into ctz(t)+1, decay, write the token
at level 0, read y_t = sum_l lam_t[l] S_l C_t + D x_t -- and the script checks that this recurrence
gives the same y. A continued call starts from the recurrence's state after a prefix.
Gradients of loss = sum(gy*y) + sum(gF*F) by central differences. Writes golden_loglinear.json
beside this file:  python3 golden_loglinear.py
"""
import json
import os

import numpy as np


def level(t, s):
    return (t ^ s).bit_length()


def softplus(v):
    return np.logaddexp(0.0, v)


def levels_for(tokens):
    return 0 if tokens == 0 else (tokens - 1).bit_length() + 1


def matrix_forward(p):
    """y [B,T,H,P] from the masked matrix, plus the contribution of an initial state given as
    the recurrence's state (levels relative to query t0-1; routed by the recurrence itself)."""
    x, dt, A, Bm, Cm, D, bias, lam = (p[k] for k in ("x", "dt", "A", "B", "C", "D", "dt_bias", "lambda"))
    t0 = p.get("start", 0)
    b_, T, H, P = x.shape
    G = Bm.shape[2]
    y = np.zeros_like(x)
    for b in range(b_):
        for h in range(H):
            g = h // (H // G)
            delta = softplus(dt[b, :, h] + bias[h])
            a = delta * A[h]
            for t in range(T):
                acc = D[h] * x[b, t, h]
                for s in range(t + 1):
                    decay = np.exp(a[s + 1:t + 1].sum())
                    w = lam[b, t, h, level(t0 + t, t0 + s)] * decay * (Cm[b, t, g] @ Bm[b, s, g]) * delta[s]
                    acc = acc + w * x[b, s, h]
                y[b, t, h] = acc
    if t0 > 0:
        # The initial state's own contribution: run the recurrence with zero inputs on top of it.
        zero = dict(p)
        zero["x"] = np.zeros_like(x)
        zero["D"] = np.zeros_like(D)
        y = y + recurrent_forward(zero)[0]
    return y


def recurrent_forward(p):
    """Token-by-token Fenwick recurrence: returns y and the final state [B,H,Lf,P,N]."""
    x, dt, A, Bm, Cm, D, bias, lam = (p[k] for k in ("x", "dt", "A", "B", "C", "D", "dt_bias", "lambda"))
    t0 = p.get("start", 0)
    b_, T, H, P = x.shape
    G, N = Bm.shape[2], Bm.shape[3]
    Lf = levels_for(t0 + T)
    y = np.zeros_like(x)
    final = np.zeros((b_, H, Lf, P, N))
    for b in range(b_):
        for h in range(H):
            g = h // (H // G)
            S = np.zeros((Lf, P, N))
            if t0 > 0:
                init = p["initial_state"][b, h]
                S[:init.shape[0]] = init
            for i in range(T):
                t = t0 + i
                if t > 0:
                    k = (t & -t).bit_length() - 1          # ctz(t)
                    S[k + 1] = S[:k + 1].sum(axis=0)
                    S[:k + 1] = 0
                delta = softplus(dt[b, i, h] + bias[h])
                S *= np.exp(delta * A[h])
                S[0] = delta * np.outer(x[b, i, h], Bm[b, i, g])
                out = D[h] * x[b, i, h]
                for l in range(Lf):
                    out = out + lam[b, i, h, l] * (S[l] @ Cm[b, i, g]) if l < lam.shape[3] else out
                y[b, i, h] = out
            final[b, h] = S
    return y, final


def make_case(rng, batch, T, H, P, G, N, start=0):
    L = levels_for(start + T)
    p = {
        "x": rng.standard_normal((batch, T, H, P)),
        "dt": rng.standard_normal((batch, T, H)) * 0.7 - 0.5,
        "A": -rng.uniform(0.2, 1.5, H),
        "B": rng.standard_normal((batch, T, G, N)) * 0.6,
        "C": rng.standard_normal((batch, T, G, N)) * 0.6,
        "D": rng.standard_normal(H),
        "dt_bias": rng.standard_normal(H) * 0.3,
        "lambda": rng.uniform(0.2, 1.8, (batch, T, H, L)),
        "start": start,
    }
    if start > 0:
        # A consistent initial state: the recurrence's state after a random prefix.
        prefix = make_case(rng, batch, start, H, P, G, N)
        p["initial_state"] = recurrent_forward(prefix)[1]
    return p


def both(p):
    y_matrix = matrix_forward(p)
    y_rec, final = recurrent_forward(p)
    assert np.allclose(y_matrix, y_rec, rtol=1e-11, atol=1e-11), np.abs(y_matrix - y_rec).max()
    return y_matrix, final


def finite_differences(p, gy, gF, keys, eps=1e-6):
    def loss(q):
        y, f = both(q)
        return float((y * gy).sum() + (f * gF).sum())
    grads = {}
    for key in keys:
        g = np.zeros_like(p[key])
        flat = g.reshape(-1)
        for k in range(flat.size):
            plus = {kk: (vv.copy() if isinstance(vv, np.ndarray) else vv) for kk, vv in p.items()}
            minus = {kk: (vv.copy() if isinstance(vv, np.ndarray) else vv) for kk, vv in p.items()}
            plus[key].reshape(-1)[k] += eps
            minus[key].reshape(-1)[k] -= eps
            flat[k] = (loss(plus) - loss(minus)) / (2 * eps)
        grads[key] = g
    return grads


def entry(a):
    a = np.asarray(a, dtype=np.float64)
    return {"shape": list(a.shape), "data": [float(f"{v:.15g}") for v in a.reshape(-1)]}


def main():
    rng = np.random.default_rng(20251121)
    out = {}
    cases = {
        "grad": dict(batch=1, T=11, H=2, P=3, G=1, N=4),
        "groups": dict(batch=2, T=37, H=4, P=5, G=2, N=3),
        "continued": dict(batch=1, T=9, H=2, P=3, G=1, N=2, start=6),
    }
    inputs = ("x", "dt", "A", "B", "C", "D", "dt_bias", "lambda")
    for name, c in cases.items():
        p = make_case(rng, c["batch"], c["T"], c["H"], c["P"], c["G"], c["N"], c.get("start", 0))
        y, final = both(p)
        for key in inputs + (("initial_state",) if "initial_state" in p else ()):
            out[f"{name}.{key}"] = entry(p[key])
        out[f"{name}.start"] = p["start"]
        out[f"{name}.y"] = entry(y)
        out[f"{name}.final_state"] = entry(final)
        if name == "grad":
            gy = rng.standard_normal(y.shape)
            gF = rng.standard_normal(final.shape)
            out[f"{name}.gy"] = entry(gy)
            out[f"{name}.gF"] = entry(gF)
            for key, g in finite_differences(p, gy, gF, inputs).items():
                out[f"{name}.grad_{key}"] = entry(g)
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden_loglinear.json")
    with open(path, "w") as f:
        json.dump(out, f, separators=(",", ":"))
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
    main()
