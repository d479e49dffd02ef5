#!/usr/bin/env python3
"""Golden vectors for zoo's NSA kernels (native sparse attention, Yuan et al. 2025).

An independent float64 NumPy implementation written from the paper's equations with dense masks
(no tiling, no online softmax), run on small seeded inputs. Writes golden_nsa.json beside itself:
inputs, outputs, the chosen blocks and the gradients of L = sum(y * gy) with respect to every raw
input, by central differences with the block choice held fixed.

Conventions (the same as zoo's kernels, Sources/ZooKernels/NSA/README.md):
  positions 0-based; q [B,T,Hq,dk]; raw k/v [B,T,Hkv,d]; query head h uses kv head h // (Hq/Hkv)
  compressed block i = mean of tokens [i*stride, i*stride + l)  (phi = mean pooling)
    visible to t iff i*stride + l - 1 <= t
  importance of selection block j for the kv group at t (Eq. 8-10):
    sum over the group's heads and the visible compressed blocks i of p_cmp[i] * w(i, j),
    w = |tokens(i) & tokens(j)| / stride  ("weighted", the reading of Eq. 9 with 1-based indices)
    or 1 if they overlap                   ("indicator")
  top-n (Eq. 11): all visible blocks if at most n; else blocks < n_init and the n_local blocks
    ending at t // l' are forced, the rest by score (higher first, ties: lower index first)
  selected branch: tokens u <= t of the chosen blocks; window: u in [t - w + 1, t]
  y = sigmoid(g_cmp) o_cmp + sigmoid(g_sel) o_sel + sigmoid(g_win) o_win, scale = 1/sqrt(dk)

Run: python3 golden_nsa.py   (numpy only; about ten seconds)
"""
import json
import os

import numpy as np

CFG = dict(l=4, stride=2, lsel=6, n=4, w=7, n_init=1, n_local=2)
B, T, HQ, HK, DK, DV = 1, 32, 4, 2, 4, 3


def n_compressed(t, cfg):
    return 0 if t < cfg["l"] else (t - cfg["l"]) // cfg["stride"] + 1


def compress_mean(x, cfg):
    nc = n_compressed(x.shape[1], cfg)
    out = np.zeros((x.shape[0], nc) + x.shape[2:])
    for i in range(nc):
        out[:, i] = x[:, i * cfg["stride"]: i * cfg["stride"] + cfg["l"]].mean(axis=1)
    return out


def overlap_weights(nc, nb, cfg, rule):
    w = np.zeros((nc, nb))
    for i in range(nc):
        a0, a1 = i * cfg["stride"], i * cfg["stride"] + cfg["l"]
        for j in range(nb):
            b0, b1 = j * cfg["lsel"], (j + 1) * cfg["lsel"]
            ov = min(a1, b1) - max(a0, b0)
            if ov > 0:
                w[i, j] = ov / cfg["stride"] if rule == "weighted" else 1.0
    return w


def masked_attention(q, k, v, mask, scale):
    """q [T,dk], k [S,dk], v [S,dv], mask [T,S] bool -> o [T,dv], p [T,S]; empty rows give 0."""
    s = (q @ k.T) * scale
    s = np.where(mask, s, -np.inf)
    m = np.max(s, axis=1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    e = np.where(mask, np.exp(s - m), 0.0)
    den = e.sum(axis=1, keepdims=True)
    p = e / np.where(den > 0, den, 1.0)
    return p @ v, p


def top_blocks(scores, t, cfg):
    cur = t // cfg["lsel"]
    if cur + 1 <= cfg["n"]:
        return list(range(cur + 1))
    forced = [j for j in range(cur + 1) if j < cfg["n_init"] or j > cur - cfg["n_local"]]
    rest = [j for j in range(cur + 1) if j not in forced]
    rest.sort(key=lambda j: (-scores[j], j))
    return sorted(forced + rest[: cfg["n"] - len(forced)])


def nsa(x, cfg, rule="weighted", selection=None):
    q, kraw, vraw, ks, vs, kw, vw, g = (x[k] for k in ("q", "kCmpRaw", "vCmpRaw", "kSel", "vSel", "kWin", "vWin", "gates"))
    b_, t_, hq, dk = q.shape
    hk = ks.shape[2]
    grp = hq // hk
    scale = 1.0 / np.sqrt(dk)
    kc, vc = compress_mean(kraw, cfg), compress_mean(vraw, cfg)
    nc = kc.shape[1]
    nb = -(-t_ // cfg["lsel"])
    wmap = overlap_weights(nc, nb, cfg, rule)
    pos = np.arange(t_)
    cmp_mask = (np.arange(nc)[None, :] * cfg["stride"] + cfg["l"] - 1) <= pos[:, None]
    win_mask = (pos[None, :] <= pos[:, None]) & (pos[None, :] > pos[:, None] - cfg["w"])
    y = np.zeros((b_, t_, hq, vs.shape[3]))
    scores = np.zeros((b_, hk, t_, nb))
    chosen = selection if selection is not None else np.full((b_, hk, t_, cfg["n"]), -1, dtype=np.int64)
    for b in range(b_):
        for kh in range(hk):
            heads = range(kh * grp, (kh + 1) * grp)
            o_cmp, psum = {}, np.zeros((t_, nc))
            for h in heads:
                o, p = masked_attention(q[b, :, h], kc[b, :, kh], vc[b, :, kh], cmp_mask, scale)
                o_cmp[h] = o
                psum += p
            scores[b, kh] = psum @ wmap
            sel_mask = np.zeros((t_, t_), dtype=bool)
            for t in range(t_):
                if selection is None:
                    blocks = top_blocks(scores[b, kh, t], t, cfg)
                    chosen[b, kh, t, : len(blocks)] = blocks
                else:
                    blocks = [j for j in selection[b, kh, t] if j >= 0]
                for j in blocks:
                    sel_mask[t, j * cfg["lsel"]: min((j + 1) * cfg["lsel"], t + 1)] = True
            for h in heads:
                o_sel, _ = masked_attention(q[b, :, h], ks[b, :, kh], vs[b, :, kh], sel_mask, scale)
                o_win, _ = masked_attention(q[b, :, h], kw[b, :, kh], vw[b, :, kh], win_mask, scale)
                sg = 1.0 / (1.0 + np.exp(-g[b, :, h]))
                y[b, :, h] = sg[:, 0:1] * o_cmp[h] + sg[:, 1:2] * o_sel + sg[:, 2:3] * o_win
    return y, chosen, scores


def main():
    rng = np.random.default_rng(1)   # a seed where the two Eq. 9 readings choose differently (4 queries), with no near-ties (gap ≥ 6e-5)
    x = {
        "q": rng.standard_normal((B, T, HQ, DK)),
        "kCmpRaw": rng.standard_normal((B, T, HK, DK)), "vCmpRaw": rng.standard_normal((B, T, HK, DV)),
        "kSel": rng.standard_normal((B, T, HK, DK)), "vSel": rng.standard_normal((B, T, HK, DV)),
        "kWin": rng.standard_normal((B, T, HK, DK)), "vWin": rng.standard_normal((B, T, HK, DV)),
        "gates": rng.standard_normal((B, T, HQ, 3)),
    }
    gy = rng.standard_normal((B, T, HQ, DV))
    y, sel, scores = nsa(x, CFG)
    y_ind, sel_ind, _ = nsa(x, CFG, rule="indicator")

    # Gradients of L = sum(y * gy) by central differences, the selection held fixed.
    eps = 1e-6
    grads = {}
    for name, arr in x.items():
        gr = np.zeros_like(arr)
        flat, gflat = arr.reshape(-1), gr.reshape(-1)
        for i in range(flat.size):
            keep = flat[i]
            flat[i] = keep + eps
            up = np.sum(nsa(x, CFG, selection=sel)[0] * gy)
            flat[i] = keep - eps
            down = np.sum(nsa(x, CFG, selection=sel)[0] * gy)
            flat[i] = keep
            gflat[i] = (up - down) / (2 * eps)
        grads["d_" + name] = gr

    def entry(a):
        a = np.asarray(a, dtype=np.float64)
        return {"shape": list(a.shape), "data": [float("%.15g" % v) for v in a.reshape(-1)]}

    out = {name: entry(a) for name, a in x.items()}
    out.update({"gy": entry(gy), "y": entry(y), "selection": entry(sel), "scores": entry(scores),
                "y_indicator": entry(y_ind), "selection_indicator": entry(sel_ind)})
    out.update({k: entry(v) for k, v in grads.items()})
    for k, v in CFG.items():
        out["cfg_" + k] = v
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden_nsa.json")
    with open(path, "w") as f:
        json.dump(out, f, separators=(",", ":"))
    print("wrote", path, os.path.getsize(path), "bytes")


if __name__ == "__main__":
    main()
