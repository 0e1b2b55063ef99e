"""Chapter 12 — HQQ, Half-Quadratic Quantization: each group's zero point fitted without calibration data.

HQQ (Badri & Shaji, "Half-Quadratic Quantization of Large Machine Learning Models", 2023; reference code
mobiusml/hqq) keeps the min-max scale of every group of g weights and moves only its zero point ``z``, to
make an lp "norm" with p < 1 of the reconstruction error small. Under p < 1 a few large errors cost little,
so the grid is not dragged towards the outliers as the squared error drags it. With the *inverse* scale
``s_inv = 1 / s`` (HQQ multiplies, it never divides while quantizing) and ``qmax = 2^bits - 1``:

    Wq = clip(round(W s_inv + z), 0, qmax)        Wr = (Wq - z) / s_inv         (quantize, dequantize)
    min_z  || W - Wr(z) ||_p^p

Half-quadratic splitting brings in an auxiliary error ``We`` coupled to ``W - Wr`` by a quadratic of
weight ``beta``, ``min_{z, We} ||We||_p^p + beta / 2 ||We - (W - Wr(z))||_2^2``, and alternates the two
sub-problems, each solved in closed form (one HQQ iteration, all groups at once):

    We <- shrink(W - Wr),   shrink(x) = sign(x) max(|x| - |x|^(p-1) / beta, 0)   generalized soft-threshold
    z  <- mean over the group of (Wq - (W - We) s_inv)                          the quadratic's minimiser

Initialisation (HQQ's ``Quantizer.quantize``, per group): ``s_inv = qmax / (max - min)``, 1.0 where
``max - min <= 1e-4``, at most 2e4; ``z = -min s_inv``, rounded when ``round_zero`` (HQQ's config: only for
4 bits). Defaults p = 0.7, beta = 10, at most 20 iterations. What HQQ's default solver
(``optimize_weights_proximal_legacy``) does and minq reproduces: every iteration measures
``error = mean |W - Wr|`` over the *whole* tensor for the current z, then computes the next z; it stops at
the first error that is not lower than the best one. Its ``opt_params`` carry ``kappa = 1.01``, but the
legacy loop never multiplies beta by it: beta stays 10 (``kappa=1.0`` here; another kappa grows beta after
each step, as the paper and HQQ's ``optimize_weights_proximal_v2`` do). It returns the z of its *last*
step, computed after the error that failed to improve and never measured itself (``keep="last"``); minq
by default returns the measured z with the lowest error (``keep="best"``), so the result is never worse
than the min-max start. Codes come from the float32 ``s_inv, z``; then, as HQQ stores its meta data in
the float16 compute dtype, ``s = 1 / s_inv`` and ``z`` are kept as float16 (a ``GroupedAffine`` with float
zero points: ``bits + 32 / g`` bits a weight, 4.5 for w4g64). Note that beta is in W's units: the shrink
is 0 unless ``|W - Wr| > beta^(-1 / (2 - p))`` (0.17 for HQQ's defaults), which the errors of LLM weights
(|W| ~ 0.02) never reach; there ``We = 0`` and each step is ``z <- mean(Wq - W s_inv)``.

Bit for bit where it can be: ``s_inv = (1 / (max - min)) * qmax``, the order in which torch evaluates
HQQ's ``qmax / (max - min)`` (a reciprocal, then a product), so the scales agree exactly. Where minq
differs: the group means and the error are float64 sums rounded once (torch sums float32, in an order
of its own), and ``|x|^(p-1)`` is a float64 power rounded to float32. Against HQQ 0.2.8's own output
(data/hqq/golden.npz: 20 cases, 40960 codes; tests/test_hqq.py): every code and scale equal; z within 4 ulps
in all groups but one, where a code at a rounding tie went the other way mid-loop and z parted by 0.01
(the same final codes). On CUDA HQQ iterates in float16; minq in float32 everywhere.
Notebook: notebooks/12_rotations_and_hqq.ipynb.
"""

from __future__ import annotations

import math
import re

import numpy as np

from minq._backend import is_torch, namespace
from minq._checks import (
    _all_finite,
    check_bits,
    check_choice,
    check_float_array,
    check_group_size,
    check_int,
)
from minq._jit import njit, prange
from minq.groups import GroupedAffine
from minq.registry import Scheme, register_family

__all__ = ["quantize", "solve"]

F32 = np.float32
RANGE_EPS, S_INV_MAX = 1e-4, 2e4            # HQQ's start: s_inv = 1 for a range <= RANGE_EPS; s_inv <= 2e4


def _check_real(value, name: str, lo: float, hi: float = math.inf, lo_open: bool = True) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    v = float(value)
    if not (v > lo if lo_open else v >= lo) or not v <= hi or not math.isfinite(v):
        left = "(" if lo_open else "["
        want = f"in {left}{lo}, {hi}]" if hi < math.inf else f"{'>' if lo_open else '>='} {lo}"
        raise ValueError(f"{name} must be finite and {want}, got {value!r}")
    return v


def _init(Wg, qmax: int, round_zero: bool, xp):
    """HQQ's min-max start: ``(s_inv, z)`` float32 ``[rows, G]`` of the grouped ``Wg [rows, G, g]``."""
    lo, hi = xp.amin(Wg, -1)[..., 0], xp.amax(Wg, -1)[..., 0]                # [rows, G]
    r = hi - lo
    with np.errstate(divide="ignore"):                                        # r = 0: replaced just below
        s_inv = (1.0 / r) * qmax              # HQQ's qmax / r in torch: a reciprocal, then a product
    s_inv = xp.clip(xp.where(r <= float(F32(RANGE_EPS)), r * 0 + 1, s_inv), None, S_INV_MAX)
    z = -lo * s_inv
    return s_inv, (xp.rint(z) if round_zero else z)


def _step_reference(Wg, s_inv, z, qmax: int, inv_beta: float, p: float, update: bool, xp):
    """One HQQ iteration on ``Wg [rows, G, g]`` for ``s_inv, z [rows, G]``: ``(Wq, error, z_next)``, the
    codes (float32, Wg's shape), ``mean |W - Wr|`` over the whole tensor and the next z (None unless
    ``update``). Plain array code: NumPy, or torch on the tensor's device."""
    s_inv, z = s_inv[..., None], z[..., None]                                 # [rows, G, 1]
    Wq = xp.clip(xp.rint(Wg * s_inv + z), 0, qmax)                            # [rows, G, g]
    Wr = (Wq - z) / s_inv
    E = Wg - Wr
    error = float(xp.f64(abs(E)).sum()) / xp.size(E)
    if not update:
        return Wq, error, None
    a = abs(E)
    with np.errstate(divide="ignore"):                                        # 0^(p-1) = inf: shrinks to 0
        t = xp.f32(xp.f64(a) ** (p - 1)) * inv_beta                          # |x|^(p-1) / beta, float32
    m = xp.maximum(a - t, 0.0)
    We = xp.where(E < 0, -m, m)                                               # shrink(W - Wr)
    z_next = xp.f32(xp.f64(Wq - (Wg - We) * s_inv).sum(-1) / Wg.shape[-1])   # [rows, G]
    return Wq, error, z_next


def _a_skip(inv_beta, p: float) -> float:
    """An error size below which the shrink is 0 whatever the rounding: ``|x| - |x|^(p-1) / beta <= 0`` iff
    ``|x| <= beta^(-1 / (2 - p))``; 1e-5 below that, the float32 threshold exceeds ``|x|`` by far more than
    its rounding (a few 1e-7). HQQ's beta = 10 at p = 0.7 gives 0.17: LLM weights' errors never get there."""
    return float(inv_beta) ** (1.0 / (2.0 - p)) * (1.0 - 1e-5)


@njit(parallel=True, float_division=True)
def _step_kernel(W, s_inv, z, inv_beta, p1, a_skip, qmax, update, q, err_rows):
    # W [rows, in] float32, s_inv/z [rows, G] float32 (z updated in place when update) -> q [rows, in]
    # uint8, err_rows [rows] float64: sum |W - Wr| of each row. _step_reference's arithmetic, element by
    # element; an error |x| <= a_skip shrinks to 0 without the power (_a_skip: |x|^(p-1) / beta > |x|).
    rows, n_in = W.shape
    g = n_in // s_inv.shape[1]
    for r in prange(rows):
        acc = np.float64(0.0)              # float64 sums, also when JIT is off (0.0 + float32 is float32)
        for j in range(s_inv.shape[1]):
            si, zj = s_inv[r, j], z[r, j]
            zsum = np.float64(0.0)
            for i in range(j * g, (j + 1) * g):
                w = W[r, i]
                wq = min(max(np.rint(w * si + zj), np.float32(0.0)), qmax)
                q[r, i] = np.uint8(wq)
                e = w - (wq - zj) / si
                a = abs(e)
                acc += a
                if update:
                    m = np.float32(0.0)
                    if a > a_skip:
                        m = max(a - np.float32(np.float64(a) ** p1) * inv_beta, np.float32(0.0))
                    We = -m if e < 0 else m
                    zsum += np.float64(wq - (w - We) * si)
            if update:
                z[r, j] = np.float32(zsum / g)
        err_rows[r] = acc


def solve(W, bits: int = 4, group_size=64, *, iters: int = 20, p: float = 0.7, beta: float = 10.0,
          kappa: float = 1.0, round_zero=None, keep: str = "best", kernel: bool = False):
    """HQQ's zero-point search on ``W [out, in]``: ``(q, s_inv, z, errors)``.

    q uint8 ``[out, in]`` codes ``clip(round(W s_inv + z), 0, 2^bits - 1)`` of the returned z; ``s_inv``
    and ``z`` float32 ``[out, n_groups]`` (``[1, 1]`` per tensor); ``errors[i]`` the whole tensor's
    ``mean |W - Wr|`` of the i-th z (``errors[0]`` the min-max start's). The loop's entries decrease
    strictly except perhaps the last (HQQ's early stop); after them one more entry, the error of the last
    step's z. ``keep="last"``: that z (HQQ's answer); ``"best"``: the z of ``min(errors)``. ``iters=0``:
    HQQ's min-max start unchanged. ``round_zero=None``: rounded z iff ``bits == 4``; ``kappa``: beta is
    multiplied by it after each step (1.0, HQQ's legacy solver, keeps beta fixed).

    group_size: ``g > 0`` dividing ``in`` (groups of g inputs of a row, HQQ's ``axis=1``), -1 per row,
    None/0 one group for the whole tensor. ``kernel=False`` runs ``_step_reference`` (the readable loop),
    ``True`` the Numba ``_step_kernel``; tests/test_hqq.py: equal codes, z within 4 float32 ulps, errors
    within 1e-6 relative. A torch ``W`` (CPU or CUDA) runs the reference on its device and returns
    tensors there, NumPy's values to the same tolerances. Errors naming the parameter, before any work.
    """
    check_float_array(W, "W", ndim=2)
    bits = check_bits(bits)
    g = check_group_size(group_size, W.shape[1])
    iters = check_int(iters, "iters", lo=0)
    p = _check_real(p, "p", 0.0, 1.0)
    beta = _check_real(beta, "beta", 0.0)
    kappa = _check_real(kappa, "kappa", 1.0, lo_open=False)
    if round_zero is not None and not isinstance(round_zero, bool):
        raise TypeError(f"round_zero must be None or a bool, got {round_zero!r}")
    check_choice(keep, "keep", ("best", "last"))
    if not isinstance(kernel, bool):
        raise TypeError(f"kernel must be a bool, got {type(kernel).__name__}")
    round_zero = bits == 4 if round_zero is None else round_zero
    xp, qmax = namespace(W), (1 << bits) - 1
    with np.errstate(over="ignore"):
        W2 = W.detach().float().contiguous() if is_torch(W) else np.ascontiguousarray(W, F32)
    if not _all_finite(W2):
        raise ValueError("W has values beyond the float32 range (HQQ computes in float32)")
    out, n_in = W2.shape
    if group_size is None or group_size == 0:
        W2, g = W2.reshape(1, out * n_in), out * n_in                        # one group: the whole tensor
    rows, G = W2.shape[0], W2.shape[1] // g
    Wg = W2.reshape(rows, G, g)                                               # [rows, in] -> [rows, G, g]
    s_inv, z = _init(Wg, qmax, round_zero, xp)                                # [rows, G] each

    if kernel and not is_torch(W):
        q_buf, err_rows = np.empty(W2.shape, np.uint8), np.empty(rows, np.float64)

        def step(z, beta, update):
            z_next = z.copy() if update else z
            inv_beta = F32(1.0 / beta)
            _step_kernel(W2, s_inv, z_next, inv_beta, p - 1, _a_skip(inv_beta, p), F32(qmax), update, q_buf,
                         err_rows)
            return q_buf, float(err_rows.sum()) / W2.size, (z_next if update else None)
    else:
        def step(z, beta, update):
            return _step_reference(Wg, s_inv, z, qmax, float(F32(1.0 / beta)), p, update, xp)

    errors, z_best, e_best = [], z, math.inf
    for _ in range(iters):
        _, error, z_next = step(z, beta, True)
        errors.append(error)
        if not error < e_best:                   # HQQ's early stop; its answer is the z just computed
            z = z_next
            break
        e_best, z_best, z = error, z, z_next
        beta *= kappa
    Wq, error, _ = step(z, beta, False)          # the last z, measured
    errors.append(error)
    if keep == "best" and e_best <= error:
        z = z_best
        Wq, _, _ = step(z, beta, False)
    q = xp.to_uint8(Wq).reshape(out, n_in)                                    # [rows, G, g] -> [out, in]
    return q, s_inv, z, errors


def quantize(W, bits: int = 4, group_size=64, *, iters: int = 20, p: float = 0.7, beta: float = 10.0,
             kappa: float = 1.0, round_zero=None, keep: str = "best", kernel: bool = True) -> GroupedAffine:
    """HQQ-quantized ``W [out, in]`` as a ``GroupedAffine`` (``w_hat = s (q - z)``, float zero points).

    ``solve``'s codes (from the float32 ``s_inv, z``, as HQQ computes them), ``s = 1 / s_inv`` (float32)
    and ``z`` both stored as float16, HQQ's meta dtype: ``bits + 32 / g`` bits a weight. Parameters as in
    ``solve``; ``kernel=True`` (the default here) the Numba step. A torch ``W`` gives a container of torch
    tensors on its device, NumPy's codes and float16 parameters. ValueError when ``s`` or ``z`` exceeds
    float16 (a group far from 0 relative to its range, e.g. all of it in [1000, 1000.01]).
    """
    q, s_inv, z, _ = solve(W, bits, group_size, iters=iters, p=p, beta=beta, kappa=kappa,
                           round_zero=round_zero, keep=keep, kernel=kernel)
    if is_torch(W):
        import torch

        s, z16 = (1.0 / s_inv).to(torch.float16), z.to(torch.float16)
    else:
        with np.errstate(over="ignore"):
            s, z16 = (F32(1.0) / s_inv).astype(np.float16), z.astype(np.float16)
    if not (_all_finite(s) and _all_finite(z16)):
        raise ValueError("W has a group whose scale or zero point overflows float16 (HQQ's meta dtype): its "
                         "values sit too far from 0 for their range")
    return GroupedAffine.from_codes(q, s, z16, bits=bits, group_size=group_size, zero_point="float")


def _scheme(m: re.Match) -> Scheme:
    bits = int(m["bits"])
    group = int(m["group"]) if m["group"] else -1
    if not 1 <= bits <= 8 or (m["group"] and group <= 0):
        raise ValueError(f"scheme {m.string!r}: bits must be in 1..8 and the group size > 0")
    gran = "per output channel" if group == -1 else f"groups of {group}"
    desc = (f"HQQ {bits}-bit, {gran}: min-max scale, zero point by the half-quadratic lp solver (p=0.7), "
            f"float16 scale and zero")
    return Scheme(m.string, desc, quantize_weight=lambda W: quantize(W, bits, group))


register_family("hqq", r"hqq-w(?P<bits>\d)(?:g(?P<group>\d+))?", _scheme, "hqq-w{bits}[g{group}]",
                defaults=("hqq-w4g64", "hqq-w3g64", "hqq-w2g64"), quick=())
