"""Chapter 06 — GPTQ on a whole model: decoder blocks one after the other, each calibrated on the
outputs of the already quantized blocks before it (the reference's ``opt_sequential``/``llama_sequential``).

For block ``i``, with ``x`` its inputs from the quantized blocks ``0 .. i-1`` (``x = embed(ids)`` for block 0):

1. run block ``i`` with its float weights on ``x``; hooks accumulate one ``Hessian`` per distinct
   linear input (q/k/v share one, gate/up share one: 4 per Llama block);
2. ``gptq_quantize`` each of the 7 linears with its input's ``H``;
3. run the quantized block on ``x``: its outputs are the inputs of block ``i + 1``.

Quantization error therefore propagates, as in the reference. Not done (the reference's
``--true-sequential``): recollecting o/gate/up/down's Hessians after quantizing the linears before
them in the same block. Embeddings, norms and the (tied) output head stay in float.

Schemes registered here (``minq.registry``): ``gptq-w{bits}[g{group}][-sym][-act][-static]``, e.g.
``gptq-w4``, ``gptq-w4g64``, ``gptq-w3g64-act``; asymmetric by default; ``-act`` = act-order
(dynamic groups, stored permuted), ``-static`` = static groups. They calibrate on 128 x 512 tokens of
minq's calibration text unless ``minq.quantize(model, scheme, calibration=ids)`` gets other ids.

Notebook: ``notebooks/06_gptq.ipynb``.
"""

from __future__ import annotations

import re
import time
from dataclasses import fields

import numpy as np

from minq import registry
from minq.gptq import GPTQWeight, Hessian, gptq_quantize
from minq.groups import GroupedAffine

__all__ = ["gptq_model", "input_groups"]


def input_groups(model, i: int) -> dict:
    """``{first linear name: [linear names that read the same input]}`` of block ``i``: Llama's ``GROUPS``
    (q/k/v, o, gate/up, down), else one group per linear."""
    from minq.models.llama import GROUPS, LlamaModel

    if not isinstance(model, LlamaModel):
        return {n: [n] for n in model.block_linear_names(i)}
    return {f"blk.{i}.{g[0]}": [f"blk.{i}.{n}" for n in g] for g in GROUPS}


def gptq_model(model, calibration, *, bits: int, group_size=-1, sym: bool = False, act_order: bool = False,
               static_groups: bool = False, damp: float = 0.01, block_size: int = 128, scale_dtype: str = "float16",
               blocks=None, batch_size: int = 8, progress: bool = True, stats: dict | None = None):
    """A new model with the linears of ``blocks`` (default: all) GPTQ-quantized, sequentially.

    calibration: int token ids ``[n_samples, seq_len]`` (the GPTQ arguments are ``gptq_quantize``'s).
    batch_size: calibration windows per forward call (memory only: the result does not depend on it
    beyond float summation order). ``stats``: a dict that receives ``{"seconds": ..., "tokens": ..., "layers":
    [{first linear of an input group: GPTQ loss tr(dW H dW^T) / 2 of the group}]}`` for plots and
    reports. Raises ValueError for missing or malformed calibration and bad ``blocks``.
    """
    ids = _check_calibration(calibration)
    n_layers = model.config.n_layers
    blocks = list(range(n_layers)) if blocks is None else sorted(set(int(b) for b in blocks))
    if not blocks or not all(0 <= b < n_layers for b in blocks):
        raise ValueError(f"blocks must be a non-empty list of block indices in [0, {n_layers}), got {blocks!r}")
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    x = model.embed(ids)                                                     # [n, T, d]: inputs of block 0
    qmodel = model
    n, T = ids.shape
    layer_stats = []
    for i in tqdm(range(blocks[-1] + 1), desc=f"GPTQ w{bits}", unit="layer", disable=not progress):
        if i in blocks:
            groups = input_groups(model, i)
            H = {key: Hessian(model.weights[key].shape[1]) for key in groups}

            def hook(name, X, H=H):
                H[name].add_batch(X.reshape(-1, T, X.shape[-1]))             # [b * T, in] -> b sequences

            for a in range(0, n, batch_size):                                # 1. Hessians from the float block
                qmodel.run_block(i, x[a:a + batch_size], hooks={key: hook for key in groups})
            new, losses = {}, {}
            for key, members in groups.items():                              # 2. GPTQ the linears of each input
                Ws = [model.weights[name].dequantize() for name in members]
                # rows are independent in GPTQ: the linears that share H run as one row-stacked matrix
                q = gptq_quantize(np.concatenate(Ws), H[key].H, bits=bits, group_size=group_size, sym=sym,
                                  act_order=act_order, static_groups=static_groups, damp=damp,
                                  block_size=block_size, scale_dtype=scale_dtype)
                new.update(zip(members, split_rows(q, [len(W) for W in Ws])))
                losses[key] = float(q.losses.sum())
            qmodel = qmodel.with_weights(new)
            layer_stats.append(losses)
        if i < blocks[-1]:                                                   # 3. inputs of the next block
            x = np.concatenate([qmodel.run_block(i, x[a:a + batch_size]) for a in range(0, n, batch_size)])
    if stats is not None:
        stats.update(seconds=time.perf_counter() - t0, layers=layer_stats, tokens=int(ids.size))
    return qmodel


def split_rows(q: GPTQWeight, sizes) -> list:
    """``q`` of a row-stacked ``[W_1; W_2; ...]`` -> one ``GPTQWeight`` per part (rows ``sizes``).

    Each part keeps ``q``'s column order (``perm``); ``losses`` (per column, summed over all rows) stay
    with the whole: the parts get None."""
    codes, qp = q.codes, q.qparams()
    s, z = qp.s[..., 0], (None if q.symmetric else qp.z[..., 0])             # [out, n_groups]
    out = []
    for a, b in zip(np.cumsum([0] + list(sizes))[:-1], np.cumsum(sizes)):
        rows = slice(a, b) if len(s) > 1 else slice(None)                  # per tensor: s, z [1, 1]
        base = GroupedAffine.from_codes(codes[a:b], s[rows], None if z is None else z[rows], bits=q.bits,
                                        group_size=q.group_size, zero_point=q.zero_point)
        out.append(GPTQWeight(**{f.name: getattr(base, f.name) for f in fields(GroupedAffine)}, perm=q.perm,
                              losses=None, gptq_group_size=q.gptq_group_size))
    return out


def _check_calibration(calibration):
    if calibration is None:
        raise ValueError("calibration is required: token ids [n_samples, seq_len] (no calibration data given)")
    ids = np.asarray(calibration)
    if ids.dtype.kind not in "iu":
        raise TypeError(f"calibration must be integer token ids, got dtype {ids.dtype}")
    if ids.ndim == 1:
        ids = ids[None]
    if ids.ndim != 2 or ids.size == 0 or ids.shape[1] < 1:
        raise ValueError(f"calibration must be non-empty token ids [n_samples, seq_len], got shape {ids.shape}")
    return ids.astype(np.int64)


# --- the gptq-* schemes -------------------------------------------------------------------------------

def _gptq(m: re.Match) -> registry.Scheme:
    bits = int(m["bits"])
    group = int(m["group"]) if m["group"] else -1
    if not 2 <= bits <= 8:
        raise ValueError(f"scheme {m.string!r}: bits must be in 2..8")
    if m["group"] and group <= 0:
        raise ValueError(f"scheme {m.string!r}: group size must be > 0")
    kw = dict(bits=bits, group_size=group, sym=m["sym"] is not None, act_order=m["act"] is not None,
              static_groups=m["static"] is not None)
    gran = "per output channel" if group == -1 else f"groups of {group}"
    desc = (f"GPTQ {bits}-bit, {gran}, {'symmetric' if kw['sym'] else 'asymmetric'}"
            f"{', act-order' if kw['act_order'] else ''}{', static groups' if kw['static_groups'] else ''}")

    def quantize_model(model, calibration, progress=True):
        return gptq_model(model, calibration, progress=progress, **kw)

    return registry.Scheme(m.string, desc, quantize_model=quantize_model, needs_calibration=True)


registry.register_family(r"gptq-w(?P<bits>\d+)(?:g(?P<group>\d+))?(?P<sym>-sym)?(?P<act>-act)?(?P<static>-static)?",
                         _gptq, "gptq-w{bits}[g{group}][-sym][-act][-static]")

# The GPTQ schemes of chapter 06's table.
SCHEMES = ["gptq-w4", "gptq-w4-act", "gptq-w4g64", "gptq-w4g64-act", "gptq-w3g64", "gptq-w3g64-act",
           "gptq-w2g64", "gptq-w2g64-act"]
