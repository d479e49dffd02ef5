#!/usr/bin/env python3
"""Golden vectors for the selective scan (Mamba-1), written from the math with NumPy in float64.

    delta' = softplus(delta + delta_bias)                  (or delta + delta_bias)
    x_t    = exp(delta'_t * A) * x_{t-1} + delta'_t * u_t * B_t     x_{-1} = h0 (or 0)
    y_t    = sum_n x_t[n] * C_t[n] + D * u_t ;   out = y * z * sigmoid(z)   (when z is given)

Shapes: u, delta, z [B, D, L]; A [D, N]; B, C [B, G, N, L] (channel d uses group d // (D/G));
D, delta_bias [D]; h0 [B, D, N]. The recurrence runs over all channels at once (an einsum per
step), and the gradients of  sum(out * grad_out) + sum(last_state * grad_last_state)  come from
central finite differences of this same function, so nothing here shares code or derivation with
the Swift kernels. Writes golden_selective_scan.json beside this file.
"""
import json
import os

import numpy as np


def scan(p, softplus):
    u, delta, A, B, C = p["u"], p["delta"], p["A"], p["B"], p["C"]
    nb, nd, L = u.shape
    G = B.shape[1]
    # Expand B, C from groups to channels: [B, D, N, L].
    Bc = np.repeat(B, nd // G, axis=1)
    Cc = np.repeat(C, nd // G, axis=1)
    dt = delta + (p["delta_bias"][None, :, None] if "delta_bias" in p else 0.0)
    if softplus:
        dt = np.logaddexp(0.0, dt)
    x = p["h0"].copy() if "h0" in p else np.zeros((nb, nd, A.shape[1]))
    ys = []
    for t in range(L):
        decay = np.exp(dt[:, :, t, None] * A[None])                      # [B, D, N]
        x = decay * x + (dt[:, :, t] * u[:, :, t])[..., None] * Bc[:, :, :, t]
        ys.append(np.einsum("bdn,bdn->bd", x, Cc[:, :, :, t]))
    y = np.stack(ys, axis=-1)
    if "D" in p:
        y = y + p["D"][None, :, None] * u
    if "z" in p:
        z = p["z"]
        y = y * z / (1.0 + np.exp(-z))
    return y, x


def loss(p, softplus, g_out, g_last):
    out, last = scan(p, softplus)
    return float(np.sum(out * g_out) + np.sum(last * g_last))


def case(rng, nb, nd, L, N, G, full):
    p = {
        "u": rng.standard_normal((nb, nd, L)),
        "delta": rng.normal(-1.0, 0.5, (nb, nd, L)) if full else rng.uniform(0.02, 0.6, (nb, nd, L)),
        "A": -np.arange(1, N + 1)[None, :] * np.exp(0.3 * rng.standard_normal((nd, N))),
        "B": rng.standard_normal((nb, G, N, L)),
        "C": rng.standard_normal((nb, G, N, L)),
    }
    if full:
        p["D"] = rng.standard_normal(nd)
        p["z"] = rng.standard_normal((nb, nd, L))
        p["delta_bias"] = 0.3 * rng.standard_normal(nd)
        p["h0"] = rng.standard_normal((nb, nd, N))
    softplus = full
    out, last = scan(p, softplus)
    g_out = rng.standard_normal(out.shape)
    g_last = rng.standard_normal(last.shape)
    grads = {}
    keys = list(p.keys()) + ([] if "h0" in p else ["h0"])
    for key in keys:
        q = {k: v.copy() for k, v in p.items()}
        if key not in q:                      # gradient of a zero initial state
            q[key] = np.zeros((nb, nd, N))
        g = np.zeros_like(q[key])
        for idx in np.ndindex(g.shape):
            h = 1e-6 * max(1.0, abs(q[key][idx]))
            keep = q[key][idx]
            q[key][idx] = keep + h
            plus = loss(q, softplus, g_out, g_last)
            q[key][idx] = keep - h
            minus = loss(q, softplus, g_out, g_last)
            q[key][idx] = keep
            g[idx] = (plus - minus) / (2 * h)
        grads["grad_" + key] = g
    return p, softplus, out, last, g_out, g_last, grads


def main():
    rng = np.random.default_rng(20261121)
    fixture = {}
    for name, args in [("full", (2, 6, 11, 4, 2, True)), ("plain", (1, 5, 9, 3, 1, False))]:
        p, softplus, out, last, g_out, g_last, grads = case(rng, *args)
        arrays = dict(p, out=out, last_state=last, grad_out=g_out, grad_last_state=g_last, **grads)
        for key, value in arrays.items():
            fixture[f"{name}.{key}"] = {"shape": list(value.shape), "data": [float(v) for v in value.ravel()]}
        fixture[f"{name}.delta_softplus"] = 1.0 if softplus else 0.0
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden_selective_scan.json")
    with open(path, "w") as f:
        json.dump(fixture, f, separators=(",", ":"))
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
    main()
