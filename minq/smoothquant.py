"""Chapter 04 — SmoothQuant: move the activation outliers into the weights, then W8A8.

Xiao et al., "SmoothQuant: Accurate and Efficient Post-Training Quantization for Large Language
Models" (ICML 2023, arXiv:2211.10438). A few *input channels* j of a linear carry activations ten to
a hundred times larger than the rest, in every token. A per-tensor (or per-token) int8 scale is set by
them and rounds the other channels to a handful of levels. The weights have no such channels. So
divide channel j of X by s_j and multiply column j of W by s_j — the product does not change:

    Y = X W^T = (X diag(s)^-1) (W diag(s))^T
    s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)          alpha = migration strength, default 0.5

``alpha = 0`` leaves X alone (``s_j = 1 / max|W_j|`` only rescales); ``alpha = 1`` makes every input
channel's max exactly 1 and puts all of its range into the weights. ``max|X_j|`` comes from
calibration; ``max|W_j|`` is taken over all the linears that read the same X (q, k, v; gate, up).
Both are clamped to at least 1e-5, and so is ``s`` (the reference code, ``smoothquant/smooth.py``).

Where does ``diag(s)^-1`` go? Into the operation that produces X, so that no extra operation runs
and the float model is unchanged (to float32 rounding; tests/test_ptq.py checks 1e-5 relative on the
logits). A Llama block has four linear inputs, and each has such a place (``model.fold_targets()``; the folding
itself is ``minq.folding.fold_scales``, which AWQ shares):

    "qkv"      attn_norm gamma / s   ->  attn_q, attn_k, attn_v columns * s    (the paper's, for Llama)
    "gate_up"  ffn_norm gamma / s    ->  ffn_gate, ffn_up columns * s          (the paper's, for Llama)
    "down"     ffn_up rows / s       ->  ffn_down columns * s    silu(g) * (u / s) = (silu(g) * u) / s
    "o"        attn_v rows / s       ->  attn_output columns * s  softmax(.) (V / s) = (softmax(.) V) / s;
               with grouped-query attention the query heads that share a KV head share its scales, so
               s of a V channel is computed from the maxima over its query heads.

The reference code smooths only "qkv" and "gate_up" for Llama (AWQ folds its scales into up and v in
the same way as "down" and "o"). minq smooths all four by default: on SmolLM2 the inputs of ffn_down
carry by far the largest outliers (max |x| in the thousands in some blocks) and decide whether W8A8
works at all; ``targets=("qkv", "gate_up")`` gives the paper's setting (the notebook compares them).

Not for MiniLM (``quantize_smoothquant`` rejects an encoder): BERT is *post*-LN, ``h = LN(x + f(x))``,
and the same ``h`` feeds the next linears *and* the residual stream, so ``1 / s`` folded into the
LayerNorm's gamma and beta would change the residual too; the input of the second MLP linear is
``gelu(.)``, which no scale passes through. Only ``attention.output`` (``1 / s`` into the value rows
and bias) folds cleanly; the rest would need an explicit scaling of X at run time, which is what
SmoothQuant exists to avoid. MiniLM's W8A8 rows are ``w8a8``, ``w8a8-dynamic`` and ``llmint8``.

Then the model is quantized as ``w8a8`` (static per-tensor scales: the paper's O3 setting) or
``w8a8-dynamic`` (per token: O1). Notebook: ``notebooks/04_ptq.ipynb``.
"""

from __future__ import annotations

import re

import numpy as np

from minq.calibration import calibrate, check_calibration
from minq.folding import fold_scales
from minq.observers import MinMaxObserver
from minq.registry import Scheme, register_family
from minq.w8a8 import quantize_w8a8

__all__ = ["smooth_scales", "smooth", "quantize_smoothquant", "ALPHA"]

ALPHA = 0.5


def _check_alpha(alpha) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.floating)) or not 0 <= alpha <= 1:
        raise ValueError(f"alpha (migration strength) must be a number in [0, 1], got {alpha!r}")
    return float(alpha)


def _check_targets(model, targets) -> tuple:
    """``targets`` checked against ``model.fold_targets()``; TypeError for a model without any."""
    known = model.fold_targets() if hasattr(model, "fold_targets") else {}
    if not known:
        raise TypeError(f"SmoothQuant folds its scales into the model (norm gammas, producer rows); a "
                        f"{type(model).__name__} has nowhere to fold them (model.fold_targets() is empty; "
                        f"MiniLM: use w8a8, w8a8-dynamic or llmint8)")
    targets = tuple(known) if targets is None else tuple(targets)            # None: every target
    bad = [t for t in targets if t not in known]
    if bad or not targets:
        raise ValueError(f"targets must be a non-empty subset of {list(known)}, got {list(targets)}")
    return targets


def smooth_scales(act_absmax, weights, alpha: float = ALPHA):
    """``s [in]`` float32: ``max|X_j|^alpha / max|W_j|^(1 - alpha)``, clamped to >= 1e-5.

    act_absmax: float ``[in]``, max |X_j| per input channel over the calibration tokens.
    weights: the float ``W [out_i, in]`` of every linear reading that X (their column maxima combine).
    """
    alpha = _check_alpha(alpha)
    if not np.isfinite(np.asarray(act_absmax, np.float64)).all():
        raise ValueError("act_absmax contains NaN or Inf")
    a = np.maximum(np.asarray(act_absmax, np.float64).reshape(-1), 1e-5)
    w = np.max([np.abs(np.asarray(W, np.float64)).max(axis=0) for W in weights], axis=0)    # [in]
    if w.shape != a.shape:
        raise ValueError(f"act_absmax has {a.size} channels, the weights {w.size} inputs")
    w = np.maximum(w, 1e-5)
    return np.maximum(a ** alpha / w ** (1 - alpha), 1e-5).astype(np.float32)


def smooth(model, act_absmax: dict, alpha: float = ALPHA, targets=None):
    """The float model with SmoothQuant's scales folded in (see the module docstring).

    act_absmax: ``{linear name: max|X_j| [in]}`` for the first linear of each target of every block.
    Returns ``(smoothed model, {f"blk.{i}.{target}": s})``; ``s`` is per input channel of the target
    linears (for "o": per attn_output input, equal across the query heads of a KV head).
    """
    targets = _check_targets(model, targets)
    alpha = _check_alpha(alpha)
    known = model.fold_targets()
    fold, scales = {}, {}
    for i in range(model.config.n_layers):
        for t in targets:
            ft = known[t]
            names = [f"blk.{i}.{n}" for n in ft.consumers]
            a = np.asarray(act_absmax[names[0]], np.float32).reshape(-1)
            Ws = [model.weights[n].dequantize() for n in names]
            if ft.channel_map is not None:     # one scale per producer channel: maxima over what reads it
                kv = np.asarray(ft.channel_map)                              # [in] -> producer channel
                n_v = kv.max() + 1
                a_v, w_v = np.zeros(n_v, np.float32), np.zeros(n_v, np.float32)
                np.maximum.at(a_v, kv, a)
                np.maximum.at(w_v, kv, np.abs(Ws[0]).max(axis=0))
                s_prev = smooth_scales(a_v, [w_v[None]], alpha)              # [kv * hd]
                s = s_prev[kv]                                               # [d]
            else:
                s = s_prev = smooth_scales(a, Ws, alpha)                     # [in]
            fold[f"blk.{i}.{t}"] = s_prev
            scales[f"blk.{i}.{t}"] = s
    return fold_scales(model, fold), scales


def quantize_smoothquant(model, calibration, *, alpha: float = ALPHA, mode: str = "static",
                         targets=None, progress: bool = False):
    """SmoothQuant W8A8: calibrate ``max|X_j|`` (one pass), smooth, then int8 weights and activations.

    Static per-tensor activation scales come from the same pass: a smoothed input's max is
    ``max_j max|X_j| / s_j`` (equal to observing the smoothed model, up to float32 rounding).
    """
    targets = _check_targets(model, targets)
    alpha = _check_alpha(alpha)
    if mode not in ("static", "dynamic"):
        raise ValueError(f"mode must be 'static' or 'dynamic', got {mode!r}")
    ids = check_calibration(calibration)
    obs = calibrate(model, ids, lambda name: MinMaxObserver(bits=8, axis=0), progress=progress)
    absmax = {n: o.absmax().reshape(-1) for n, o in obs.items()}             # {name: [in]}
    smoothed, scales = smooth(model, absmax, alpha, targets)
    if mode == "dynamic":
        return quantize_w8a8(smoothed, mode="dynamic", progress=progress)
    ranges = dict(absmax)
    for key, s in scales.items():
        _, i, t = key.split(".")
        for n in model.fold_targets()[t].consumers:
            ranges[f"blk.{i}.{n}"] = absmax[f"blk.{i}.{n}"] / s
    return quantize_w8a8(smoothed, mode="static", static_absmax={n: float(r.max()) for n, r in ranges.items()},
                         progress=progress)


def _smoothquant(m: re.Match) -> Scheme:
    alpha = _check_alpha(float(m["alpha"])) if m["alpha"] else ALPHA
    mode = "dynamic" if m["dyn"] else "static"
    targets = ("qkv", "gate_up") if m["paper"] else None                       # None: all the model's

    def quantize_model(model, calibration, progress=True):
        return quantize_smoothquant(model, calibration, alpha=alpha, mode=mode, targets=targets, progress=progress)

    act = "per tensor, static" if mode == "static" else "per token, dynamic"
    where = "norm-fed inputs only" if m["paper"] else "all linear inputs"
    return Scheme(m.string, f"SmoothQuant (alpha {alpha:g}, {where}) + int8 weights per channel, "
                            f"int8 activations {act}", quantize_model=quantize_model, needs_calibration=True)


register_family("smoothquant", r"smoothquant-w8a8(?P<dyn>-dynamic)?(?P<paper>-norms)?(?:-a(?P<alpha>\d+(?:\.\d+)?))?",
                _smoothquant, "smoothquant-w8a8[-dynamic][-norms][-a{alpha}]",
                defaults=("smoothquant-w8a8", "smoothquant-w8a8-dynamic"), quick=("smoothquant-w8a8-dynamic",))
