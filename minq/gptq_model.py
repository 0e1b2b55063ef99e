"""Chapter 06 — GPTQ on a whole model: decoder blocks one after the other, each calibrated on the
outputs of the already quantized blocks before it (the reference's ``opt_sequential``/``llama_sequential``).

For block ``i``, with ``x`` its inputs from the quantized blocks ``0 .. i-1`` (``x = embed(ids)`` for block 0):

1. run block ``i`` with its float weights on ``x``; hooks accumulate one ``Hessian`` (``H = X^T X``,
   ``minq.calibration``) per distinct linear input (q/k/v share one, gate/up share one: 4 per Llama
   block). The forward stops at ffn_down's hook (its output is not needed: the reference's ``Catcher``
   trick, ``minq.calibration.forward_block(..., stop_at=...)``);
2. ``gptq_quantize`` each of the 7 linears with its input's ``H``;
3. run the quantized block on ``x``: its outputs are the inputs of block ``i + 1``.

Quantization error therefore propagates, as in the reference. ``true_sequential=True`` (the reference's
``--true-sequential``, the ``-ts`` schemes) replaces 1-2 by one partial forward per input group, in
forward order: H of q/k/v (from ``rms(x)``, the same as above), quantize q/k/v; H of o from the block
with q/k/v quantized, quantize o; then gate/up, then down — each group compensates the error of the
quantized groups before it. Embeddings, norms and the (tied) output head stay in float.

Cost (2 cores, SmolLM2, 128 x 512 calibration tokens; figures in notebooks/06_gptq.ipynb): the block
forwards dominate, then ``X^T X`` (one float32 SYRK per batch and input, ``Hessian``), then the
per-group GPTQ (the inverse factor of the 1536-wide ffn_down input is the largest single part).

Schemes registered here (``minq.registry``): ``gptq-w{bits}[g{group}][-sym][-act][-static][-ts]``, e.g.
``gptq-w4``, ``gptq-w4g64``, ``gptq-w3g64-act``; asymmetric by default (``-sym``: symmetric); ``-act`` = act-order
(dynamic groups, stored permuted), ``-static`` = static groups, ``-ts`` = true-sequential. They calibrate
on 128 x 512 tokens of minq's calibration text unless ``minq.quantize(model, scheme, calibration=ids)``
gets other ids.

Notebook: ``notebooks/06_gptq.ipynb``.
"""

from __future__ import annotations

import re
import time
from dataclasses import fields, replace

import numpy as np

from minq import registry
from minq._checks import check_int
from minq.calibration import Hessian, check_blocks, check_calibration, forward_block
from minq.gptq import GPTQWeight, gptq_quantize
from minq.groups import GroupedAffine

__all__ = ["gptq_model", "input_groups", "collect_hessians", "scheme_kwargs"]


def input_groups(model, i: int) -> dict:
    """``{first linear name: [linear names that read the same input]}`` of block ``i`` (the model
    protocol's ``input_groups``: for a Llama q/k/v, o, gate/up, down)."""
    return {g[0]: list(g) for g in model.input_groups(i)}


def collect_hessians(model, i: int, x, keys, *, stop_at: str | None = None, batch_size: int = 8,
                     timer: dict | None = None) -> dict:
    """``{key: Hessian}`` (``H = X^T X`` over every token) of the inputs of the linears ``keys`` of block
    ``i`` of ``model``, over the windows ``x [n, T, d]`` (``batch_size`` windows per forward call).

    stop_at: a linear whose hook ends each forward (after its input is accumulated) — the rest of
    the block is not computed. ``timer``: a dict whose ``"hessian"`` entry is increased by the seconds
    spent accumulating ``X^T X`` (the rest of the call is the forward).
    """
    H = {key: Hessian(model.weights[key].shape[1]) for key in keys}

    def hook(name, X):
        t = time.perf_counter()
        H[name].add_batch(X)                                                 # X [b * T, in]
        if timer is not None:
            timer["hessian"] = timer.get("hessian", 0.0) + time.perf_counter() - t

    forward_block(model, i, x, hooks={key: hook for key in keys}, stop_at=stop_at, batch_size=batch_size)
    return H


def gptq_model(model, calibration, *, bits: int, group_size=-1, symmetric: bool = False, act_order: bool = False,
               static_groups: bool = False, damp: float = 0.01, block_size: int = 128, scale_dtype: str = "float16",
               true_sequential: bool = False, blocks=None, batch_size: int = 8, progress: bool = True,
               stats: dict | None = None):
    """A new model with the linears of ``blocks`` (default: all) GPTQ-quantized, sequentially.

    calibration: int token ids ``[n_samples, seq_len]`` (the GPTQ arguments are ``gptq_quantize``'s).
    true_sequential: the reference's ``--true-sequential``: inside a block, the Hessian of each input
    group (q/k/v, o, gate/up, down) is collected *after* the groups before it are quantized, so o_proj
    compensates the error of the quantized q/k/v, and so on (one partial forward per group: about 1.4x
    the time). False: all four Hessians from the float block (one forward that stops before ffn_down).
    batch_size: calibration windows per forward call (memory only: the result does not depend on it
    beyond float summation order). ``stats``: a dict that receives ``{"seconds": wall, "cpu_seconds": CPU
    time of all threads, "tokens": ..., "phases": {"forward": s, "hessian": s, "gptq": s} (wall), "layers":
    [{first linear of an input group: GPTQ loss tr(dW (H + lambda I) dW^T) of the group, its squared output
    error on the calibration tokens plus the damping term}]}`` for plots and reports. Raises ValueError
    (TypeError) for missing or malformed calibration (``minq.calibration.check_calibration``) and bad
    ``blocks`` or ``batch_size``.
    """
    from tqdm.auto import tqdm

    from minq.models.base import Decoder, require

    require(model, Decoder, "GPTQ (block by block)")
    ids = check_calibration(calibration)
    blocks = check_blocks(blocks, model.config.n_layers)
    batch_size = check_int(batch_size, "batch_size", lo=1)

    t0, cpu0 = time.perf_counter(), time.process_time()
    timer = {"forward": 0.0, "hessian": 0.0, "gptq": 0.0}
    x = model.embed(ids)                                                     # [n, T, d]: inputs of block 0
    qmodel = model
    layer_stats = []
    kw = dict(bits=bits, group_size=group_size, symmetric=symmetric, act_order=act_order,
              static_groups=static_groups, damp=damp, block_size=block_size, scale_dtype=scale_dtype)

    def quantize_group(key, members, H):
        t = time.perf_counter()
        Ws = [model.weights[name].dequantize() for name in members]
        # rows are independent in GPTQ: the linears that share H run as one row-stacked matrix
        q = gptq_quantize(np.concatenate(Ws), H.H, **kw)
        timer["gptq"] += time.perf_counter() - t
        return dict(zip(members, split_rows(q, [len(W) for W in Ws]))), float(q.losses.sum())

    def forward_collect(i, keys, stop_at):
        t, h0 = time.perf_counter(), timer["hessian"]
        H = collect_hessians(qmodel, i, x, keys, stop_at=stop_at, batch_size=batch_size, timer=timer)
        timer["forward"] += time.perf_counter() - t - (timer["hessian"] - h0)
        return H

    bar = tqdm(range(blocks[-1] + 1), desc=f"GPTQ w{bits}", unit="layer", disable=not progress)
    for i in bar:
        if i in blocks:
            groups = input_groups(model, i)
            losses = {}
            if true_sequential:                                              # 1.-2. group by group, each H
                for key, members in groups.items():                          # after the groups before it
                    H = forward_collect(i, [key], stop_at=key)[key]
                    new, losses[key] = quantize_group(key, members, H)
                    qmodel = qmodel.with_weights(new)
            else:                                                            # 1. all Hessians from the float
                H = forward_collect(i, list(groups), stop_at=list(groups)[-1])    # block, 2. GPTQ each group
                new = {}
                for key, members in groups.items():
                    q, losses[key] = quantize_group(key, members, H[key])
                    new.update(q)
                qmodel = qmodel.with_weights(new)
            layer_stats.append(losses)
        if i < blocks[-1]:                                                   # 3. inputs of the next block
            t = time.perf_counter()
            x = forward_block(qmodel, i, x, batch_size=batch_size)
            timer["forward"] += time.perf_counter() - t
        bar.set_postfix({k: f"{v:.0f}s" for k, v in timer.items()}, refresh=False)
    if stats is not None:
        stats.update(seconds=time.perf_counter() - t0, cpu_seconds=time.process_time() - cpu0, layers=layer_stats,
                     tokens=int(ids.size), phases=dict(timer))
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
        base = replace(base, ragged_group_size=q.ragged_group_size)
        out.append(GPTQWeight(**{f.name: getattr(base, f.name) for f in fields(GroupedAffine)}, perm=q.perm,
                              losses=None, gptq_group_size=q.gptq_group_size))
    return out


# --- the gptq-* schemes -------------------------------------------------------------------------------

PATTERN = re.compile(r"gptq-w(?P<bits>\d+)(?:g(?P<group>\d+))?(?P<sym>-sym)?(?P<act>-act)?(?P<static>-static)?"
                     r"(?P<ts>-ts)?")


def scheme_kwargs(name: str) -> dict:
    """The ``gptq_model`` keyword arguments of the scheme ``name`` (e.g. ``"gptq-w3g64-act"`` ->
    ``{bits: 3, group_size: 64, act_order: True, ...}``). Raises ValueError for a name that is not one."""
    m = PATTERN.fullmatch(name) if isinstance(name, str) else None
    if m is None:
        raise ValueError(f"{name!r} is not a GPTQ scheme name gptq-w{{bits}}[g{{group}}][-sym][-act][-static][-ts]")
    bits = int(m["bits"])
    group = int(m["group"]) if m["group"] else -1
    if not 2 <= bits <= 8:
        raise ValueError(f"scheme {name!r}: bits must be in 2..8")
    if m["group"] and group <= 0:
        raise ValueError(f"scheme {name!r}: group size must be > 0")
    return dict(bits=bits, group_size=group, symmetric=m["sym"] is not None, act_order=m["act"] is not None,
                static_groups=m["static"] is not None, true_sequential=m["ts"] is not None)


def _gptq(m: re.Match) -> registry.Scheme:
    kw = scheme_kwargs(m.string)
    gran = "per output channel" if kw["group_size"] == -1 else f"groups of {kw['group_size']}"
    desc = (f"GPTQ {kw['bits']}-bit, {gran}, {'symmetric' if kw['symmetric'] else 'asymmetric'}"
            f"{', act-order' if kw['act_order'] else ''}{', static groups' if kw['static_groups'] else ''}"
            f"{', true-sequential' if kw['true_sequential'] else ''}")

    def quantize_model(model, calibration, progress=True):
        return gptq_model(model, calibration, progress=progress, **kw)

    return registry.Scheme(m.string, desc, quantize_model=quantize_model, needs_calibration=True)


# What ``minq report`` runs: ``defaults`` (the full report), ``quick`` (the first run). Each GPTQ scheme
# calibrates on 128 x 512 tokens: about 59 block forwards over 65,536 tokens each. Measured for
# gptq-w4g64 (benchmarks/bench_gptq_model.py): 81 min wall on the 2 shared cores at load average 11,
# 93 s for the first 4 blocks at load 5 (12 min extrapolated, ~5-8 min on 2 idle cores from its CPU
# time) — so the default report runs two GPTQ schemes, not the ten of chapter 06's table: GPTQ's best
# variant (act-order) at the two grids where RTN (rtn-w4g64, rtn-w3g64) and AWQ (awq-w4g64, awq-w3g64)
# also appear, which makes the table a direct comparison of the three methods. The rest — gptq-w4 and
# gptq-w2g64, every scheme without -act, the -ts (true-sequential) variants — is registered: run it
# with ``minq report --schemes gptq-w4,gptq-w4-act,...``.
registry.register_family("gptq", PATTERN.pattern, _gptq, "gptq-w{bits}[g{group}][-sym][-act][-static][-ts]",
                         defaults=("gptq-w4g64-act", "gptq-w3g64-act"), quick=("gptq-w4g64-act",))

