"""Chapter 04 — post-training quantization (PTQ) of a whole model's weights, with calibration observers.

Weight-only RTN (round to nearest) is chapter 03's ``quantize_groups`` on every linear
(``rtn-w{bits}[g{group}][-sym]``, registered in ``minq.registry``). This module adds the
**observers** of ``minq.observers`` as the way to choose each group's range: ``rtn-w4g64-mse``
searches, per group, the clipped range whose rounding error is smallest (``MSEObserver``) instead
of using min-max,

    r* = argmin_r  sum_i (w_i - Q_r(w_i))^2,     Q_r the grid of the range r * [min(w), max(w)],

and ``rtn-w{bits}g{group}-ragged`` lets a group size that does not divide a linear's inputs end in a
shorter last group (SmolLM2's 576 inputs in groups of 128).

Quantizing the activations too (W8A8, LLM.int8) is ``minq.w8a8``; SmoothQuant is ``minq.smoothquant``.
Notebook: ``notebooks/04_ptq.ipynb``.
"""

from __future__ import annotations

import re
from dataclasses import replace

from minq import affine
from minq._checks import check_group_size
from minq.groups import GroupedAffine, quantize_ragged
from minq.observers import make_observer
from minq.registry import Scheme, register_family

__all__ = ["quantize_weight_observed"]


# --- weights: RTN with an observer ----------------------------------------------------------------


def quantize_weight_observed(W, *, bits: int, group_size=-1, symmetric: bool = False, observer: str = "mse",
                             ragged: bool = False, **observer_kw) -> GroupedAffine:
    """``quantize_groups`` with the range of each group chosen by an observer (``minq.observers``).

    ``W [out, in] -> [out, in/g, g]``; one observer reduces the last axis (per tensor: all axes).
    Scales are stored as float16 (rounded up) and the codes use the stored scale, as in
    ``quantize_groups``; ``observer="minmax"`` reproduces ``quantize_groups`` exactly (``ragged`` too:
    a ragged last group when ``group_size`` does not divide ``in``, ``minq.groups.quantize_ragged``).
    ``observer_kw`` go to the observer (e.g. ``grid=``, ``max_shrink=`` of the MSE search).
    """
    if hasattr(W, "detach"):                 # torch: the observers are NumPy; the same codes, as torch tensors
        import torch

        c = quantize_weight_observed(W.detach().cpu().numpy(), bits=bits, group_size=group_size,
                                     symmetric=symmetric, observer=observer, ragged=ragged, **observer_kw)
        t = {f: torch.as_tensor(getattr(c, f)).to(W.device) for f in ("packed", "s", "z") if getattr(c, f) is not None}
        return replace(c, packed=t["packed"], s=t["s"], z=t.get("z"))
    if ragged:
        return quantize_ragged(W, group_size, lambda Wp, g: quantize_weight_observed(
            Wp, bits=bits, group_size=g, symmetric=symmetric, observer=observer, **observer_kw))
    out, n_in = W.shape
    g = check_group_size(group_size, n_in)
    per_tensor = group_size is None or group_size == 0
    Wg = W.reshape(out, n_in // g, g)                                       # [out, in] -> [out, G, g]
    obs = make_observer(observer, bits=bits, symmetric=symmetric, axis=None if per_tensor else -1,
                        scale_dtype="float16", max_samples=W.size if per_tensor else g,   # exact: all values
                        **observer_kw).update(Wg)
    qp = obs.qparams()                                                      # s, z [out, G, 1] or [1, 1, 1]
    q = affine.quantize(Wg, qp).reshape(out, n_in)                         # [out, in] uint8
    z = None if symmetric else qp.z[..., 0]
    return GroupedAffine.from_codes(q, qp.s[..., 0], z, bits=bits, group_size=group_size)


def _rtn_observed(m: re.Match) -> Scheme:
    from minq.registry import get

    base = get(m["base"])                                  # validates bits / group like rtn-w...
    bits = int(m["bits"])
    group = int(m["group"]) if m["group"] else -1
    sym = m["sym"] is not None

    def quantize_weight(W):
        return quantize_weight_observed(W, bits=bits, group_size=group, symmetric=sym, observer="mse")

    return Scheme(m.string, base.description.replace("min-max", "MSE-searched clipping range"),
                  quantize_weight=quantize_weight)


register_family("rtn-mse", r"(?P<base>rtn-w(?P<bits>\d+)(?:g(?P<group>\d+))?(?P<sym>-sym)?)-mse", _rtn_observed,
                "rtn-w{bits}[g{group}][-sym]-mse", defaults=("rtn-w4g64-mse", "rtn-w3g64-mse", "rtn-w2g64-mse"))


def _rtn_ragged(m: re.Match) -> Scheme:
    """``rtn-w{bits}g{group}[-sym]-ragged[-mse]``: RTN with a ragged last group where ``group`` does not
    divide a linear's inputs (SmolLM2: g128 on 576 inputs = 4 groups of 128 + 1 of 64). The plain
    ``rtn-w4g128`` of ``minq.registry`` rejects such a linear; this name asks for the ragged layout."""
    from minq.registry import get

    base = get(f"rtn-w{m['bits']}g{m['group']}{m['sym'] or ''}")          # validates bits / group
    bits, group, sym, mse = int(m["bits"]), int(m["group"]), m["sym"] is not None, m["mse"] is not None

    def quantize_weight(W):
        return quantize_weight_observed(W, bits=bits, group_size=group, symmetric=sym, ragged=True,
                                        observer="mse" if mse else "minmax")

    desc = base.description + ", ragged last group"
    return Scheme(m.string, desc.replace("min-max", "MSE-searched clipping range") if mse else desc,
                  quantize_weight=quantize_weight)


register_family("rtn-ragged", r"rtn-w(?P<bits>\d+)g(?P<group>\d+)(?P<sym>-sym)?-ragged(?P<mse>-mse)?", _rtn_ragged,
                "rtn-w{bits}g{group}[-sym]-ragged[-mse]", defaults=("rtn-w4g128-ragged",))
