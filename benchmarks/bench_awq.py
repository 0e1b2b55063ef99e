"""Speed of minq's AWQ search against a straightforward transcription of the reference's search.

    python benchmarks/bench_awq.py [--repeat 3] [--tokens 4096] [--model-windows 0]

The layer of notebooks/07_awq.ipynb section 5 (``W [1536, 576]``, llm-like inputs, 4096 calibration
tokens), 4 and 3 bits, groups of 64. Baseline (``reference_search`` below): the reference's algorithm written
directly in NumPy float32 — every scale trial multiplies out ``X W_hat^T`` on all tokens, and the
clip search forms the group-local partial products ``X_g * Q(W_g)`` over 512 sampled tokens, 64 output
channels at a time, as llm-awq's ``auto_clip_layer`` does. minq scores both searches through
``H = X^T X`` (scale: ``tr(dW H dW^T)``; clip: H's diagonal blocks) on every token. Both are timed in
the same run (best of ``--repeat``), so a loaded machine slows both alike; the relative output error of
each result is printed beside it. The reference code itself (AutoAWQ on torch CPU) took 46-102 s per
configuration on this machine class (goal: at least 5x faster).

``--model-windows N`` (N > 0) also times ``awq_model`` on all of SmolLM2 with N calibration windows of
512 tokens (the ``awq-*`` schemes use 32) and prints its perplexity on 8192 evaluation tokens.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from minq.awq import awq_quantize
from minq.groups import quantize_groups
from minq.testing import llm_like_layer, rel_output_error


def _q(W, bits, g):
    return quantize_groups(W, bits=bits, group_size=g, scale_dtype="float32").dequantize()


def reference_search(W, X, bits, g=64, n_grid=20, n_shrink=10, n_sample=512, oc_batch=64):
    """AWQ scale + clip search as the reference computes it. Returns W_hat [out, in]."""
    y = X @ W.T                                                               # [tokens, out]
    x_bar = np.abs(X).mean(0)
    best = (np.inf, None)
    for r in range(n_grid):
        s = np.maximum(x_bar ** (r / n_grid), 1e-4)
        s = s / np.sqrt(s.max() * s.min())
        W_hat = _q(W * s, bits, g) / s
        loss = float(np.mean((X @ W_hat.T - y) ** 2))
        if loss < best[0]:
            best = (loss, s)
    s = best[1]
    Ws, Xs = W * s, X / s
    out, n = Ws.shape
    G = n // g
    x = Xs.reshape(-1, G, g)[:: max(1, len(Xs) // n_sample)]                 # [n_sample, G, g]
    max_val = np.empty((out, G, 1), np.float32)
    for o in range(0, out, oc_batch):
        w = Ws[o:o + oc_batch].reshape(-1, 1, G, g)                          # [oc, 1, G, g]
        org = (x[None] * w).sum(-1)                                          # [oc, n_sample, G]
        amax = np.abs(w).max(-1, keepdims=True)
        err_best, mv_best = np.full((len(w), 1, G, 1), np.inf), amax.copy()
        for i in range(n_shrink):
            mv = amax * (1 - i / 20)
            q = _q(np.clip(w, -mv, mv).reshape(len(w), n), bits, g).reshape(w.shape)
            err = (((x[None] * q).sum(-1) - org) ** 2).mean(1)[:, None, :, None]
            better = err < err_best
            err_best, mv_best = np.where(better, err, err_best), np.where(better, mv, mv_best)
        max_val[o:o + oc_batch] = mv_best[:, 0]
    Wc = np.clip(Ws.reshape(out, G, g), -max_val, max_val).reshape(out, n)
    return _q(Wc, bits, g) / s


def best_of(fn, repeat):
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def bench_layer(repeat, tokens):
    W, X = llm_like_layer(0, n_tokens=tokens + 1024)
    cal = X[:tokens]
    awq_quantize(W[:64], cal[:64], bits=4, group_size=64)                      # warm-up (Numba compiles)
    print(f"AWQ scale + clip search, W [1536, 576], {tokens} calibration tokens, groups of 64 (best of {repeat})")
    print(f"{'bits':>4s} {'reference transcription':>24s} {'minq':>10s} {'speed-up':>9s} {'rel err ref':>12s} "
          f"{'rel err minq':>13s}")
    for bits in (4, 3):
        t_ref, W_ref = best_of(lambda b=bits: reference_search(W, cal, b), repeat)
        t_minq, q = best_of(lambda b=bits: awq_quantize(W, cal, bits=b, group_size=64), repeat)
        print(f"{bits:4d} {t_ref:22.2f} s {t_minq:8.2f} s {t_ref / t_minq:8.1f}x "
              f"{rel_output_error(W, W_ref, cal):12.5f} {rel_output_error(W, q.dequantize(), cal):13.5f}")
    print("the reference code (AutoAWQ, torch CPU) took 46-102 s per configuration here")


def bench_model(windows):
    import minq
    from minq.awq_model import awq_model
    from minq.data import calibration_tokens, eval_tokens
    from minq.eval import perplexity

    model = minq.load_model("smollm2", progress=False)
    ids = calibration_tokens(model.tokenizer, n_samples=windows, seq_len=512)
    ev = eval_tokens(model.tokenizer, max_tokens=8192)
    for bits in (4, 3):
        stats = {}
        q = awq_model(model, ids, bits=bits, group_size=64, stats=stats)
        print(f"awq-w{bits}g64 on SmolLM2, {windows} x 512 calibration tokens: {stats['seconds']:.0f} s, "
              f"perplexity {perplexity(q, ev, 512, progress=False):.3f} (8192 eval tokens)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--model-windows", type=int, default=0)
    a = ap.parse_args()
    bench_layer(a.repeat, a.tokens)
    if a.model_windows > 0:
        bench_model(a.model_windows)
