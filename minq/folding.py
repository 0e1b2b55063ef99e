"""Per-input-channel scales folded into a model, leaving its float function unchanged.

Shared by SmoothQuant (chapter 04) and AWQ (chapter 07). A linear ``Y = X W^T`` does not change when
input channel ``j`` of X is divided by ``s_j`` and column ``j`` of W is multiplied by it:

    Y = X W^T = (X diag(s)^-1) (W diag(s))^T

The division goes into the operation that produces X, so no extra operation runs. Where that is, the
model says: ``model.fold_targets()`` is ``{target: FoldTarget}`` (``minq.models.base``) — for a Llama
block (``minq.models.llama_weights.fold_targets``)::

    "qkv"      attn_norm gamma / s   ->  attn_q, attn_k, attn_v columns * s
    "gate_up"  ffn_norm gamma / s    ->  ffn_gate, ffn_up columns * s
    "down"     ffn_up rows / s       ->  ffn_down columns * s    silu(g) * (u / s) = (silu(g) * u) / s
    "o"        attn_v rows / s       ->  attn_output columns * s  softmax(.) (V / s) = (softmax(.) V) / s

For "o" the scale lives on V's channels: with grouped-query attention the query heads that share a
KV head read the same V channel (the target's ``channel_map``). A post-LN encoder (MiniLM) has no
targets: its normed ``h`` feeds both the next linears and the residual.
"""

from __future__ import annotations

import numpy as np

__all__ = ["fold_scales"]


def fold_scales(model, scales: dict):
    """The model with each scale folded in: ``scales`` is ``{f"blk.{i}.{target}": s}``, ``s`` float
    ``[channels of the producer]`` (the norm's ``d``, ffn_up's rows, or attn_v's rows for "o").

    Returns a new model (``model`` unchanged) whose changed linears are float ``DenseWeight``s.
    Raises ValueError for an unknown key or a scale of the wrong size, non-finite or <= 0.
    """
    from minq.models.weights import DenseWeight

    targets = model.fold_targets()
    norms, W = {}, {}

    def weight(name):
        return W[name] if name in W else model.weights[name].dequantize()

    for key, s in scales.items():
        parts = key.split(".")
        if len(parts) != 3 or parts[0] != "blk" or parts[2] not in targets:
            raise ValueError(f"scales key {key!r} must be 'blk.<i>.<target>' with target in {list(targets)}")
        i, ft = parts[1], targets[parts[2]]
        kind, group = ft.kind, ft.consumers
        p = f"blk.{i}.{ft.producer}"
        s = np.asarray(s, np.float32).reshape(-1)
        n_prev = model.norms[p].shape[0] if kind == "norm" else model.weights[p].shape[0]
        if s.size != n_prev or not np.isfinite(s).all() or (s <= 0).any():
            raise ValueError(f"scales[{key!r}] must be {n_prev} finite values > 0, got {s.size}")
        if kind == "norm":
            norms[p] = (norms[p] if p in norms else model.norms[p]) / s
        else:
            W[p] = weight(p) / s[:, None]                                    # rows of the previous linear
        s_cols = ft.consumer_scale(s)                                         # [in] of the next linears
        for n in group:
            W[f"blk.{i}.{n}"] = weight(f"blk.{i}.{n}") * s_cols[None, :]      # columns * s
    new = model.with_norms(norms) if norms else model
    return new.with_weights({n: DenseWeight(Wn) for n, Wn in W.items()}) if W else new
