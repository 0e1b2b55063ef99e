"""Chapter 08 — Numba kernels of the importance-matrix quantizers (Q4_0 ... Q5_1, Q2_K ... Q6_K).

``quantize_weighted_kernel(x, qtype, imatrix)`` returns what ``minq.kquants_weighted.quantize_weighted``
returns, byte for byte (tests/test_kquants_weighted.py; that NumPy code is the one to read, with the
weights ``w_i = imatrix_i sqrt(sigma2 + x_i^2)`` and the searches). Every search below is llama.cpp's
(``quantize_row_<type>_impl``, ggml-quants.c), loop by loop, in float32 and C's order of operations:

    _sum_x2      sum x^2 of each row (legacy types) or super-block (k-quants), left to right
    _sub_blocks  for every block of 32 (legacy) or sub-block of 16 / 32 (k-quants): its weights, their
                 sum ``sw``, and its search: ``_qx`` (make_qx_quants with weights: Q4_0, Q5_0, Q3_K,
                 Q6_K) or ``_qkx3`` (make_qkx3_quants: Q4_1, Q5_1, Q2_K, Q4_K, Q5_K) -> codes, scale, min

The legacy types are then packed by NumPy (their fp16 d and m are the searches' own); the k-quants go
on to ``minq.kquants_kernels_weighted_k`` (the scales of each super-block quantized, NumPy's fp16
rounding of d and dmin, the codes rounded again with the stored scales and packed).

Speed: a search's sums run left to right, one dependent add after another, so a C-like loop over one
sub-block is latency-bound. ``_sub_blocks`` hands each parallel step ``LANES`` = 32 consecutive
(sub-)blocks, stored transposed (``X[i, g]`` = value i of lane g), and every loop over the values
``for i`` holds an inner ``for g in range(G)`` over the lanes: each lane still adds in C's order, and
the lane loop is SIMD. C's branches become per-lane selects, and where C copies the codes of every
better trial, the lanes keep that trial's ``iscale`` (and min) and round once at the end, to the same
codes. ggml's ``nearest_int(f)`` reads the low mantissa bits of ``f + 1.5 * 2^23``; for |f| < 2^22 - 1
that is ``(f + 1.5 * 2^23) - 1.5 * 2^23`` in float32, which vectorises. ``_qx``'s |f| stays below
nmax + 1 (|x| <= |max|; a lane whose max is under 1e-15 runs with max = 1 and is zeroed at the end);
``_qkx3`` bounds every |f| of a trial first and, where the bound fails (``_wide``: a tiny sub-block
overflows 1 / (max - min) to inf, a better trial's min may leave max - min = 0), reads the bits as
ggml does (``_nint``, through a float32 scratch row viewed as int32).
Constants are float32 and integers enter products as float32 (``F32(l)``): Numba would otherwise
compute in float64 and round differently from ggml.
"""

from __future__ import annotations

import numpy as np

from minq import kquants_k, kquants_legacy, kquants_weighted
from minq._jit import njit, prange
from minq.kquants_kernels_weighted_k import superblock_stage

__all__ = ["quantize_weighted_kernel"]

F32 = np.float32
_EPS = F32(1e-15)                                   # GROUP_MAX_EPS: below it a sub-block is all zero
LANES = 32
# qtype: (kind, values per (sub-)block, nmax of its search); kind 40/50/41/51 legacy, 2..6 the k-quants
_SPEC = {"Q4_0": (40, 32, 8), "Q5_0": (50, 32, 16), "Q4_1": (41, 32, 15), "Q5_1": (51, 32, 31),
         "Q2_K": (2, 16, 3), "Q3_K": (3, 16, 4), "Q4_K": (4, 32, 15), "Q5_K": (5, 32, 31), "Q6_K": (6, 16, 32)}


@njit
def _nint(buf, bits, g, f):
    """ggml's ``nearest_int(f)`` for lane g: ``f + 1.5 * 2^23`` rounds to an integer in float32, whose low
    mantissa bits are read back (``bits`` is ``buf.view(int32)``)."""
    buf[g] = f + F32(12582912.0)
    return (bits[g] & 0x7FFFFF) - 0x400000


@njit(float_division=True)
def _qx(X, W, nmax, L, scale):
    """``make_qx_quants(n, nmax, x, L, 1, w)`` on the lanes of ``X, W [n, G]``: ``scale [G]``, codes
    ``L [n, G]`` in 0..2 nmax - 1 (a lane whose largest |x| is below 1e-15: scale 0, codes 0)."""
    n, G = X.shape
    mx, amax = np.zeros(G, F32), np.zeros(G, F32)
    iscale, sumlx, suml2, best = np.empty(G, F32), np.empty(G, F32), np.empty(G, F32), np.empty(G, F32)
    win = np.empty(G, F32)                                  # the iscale of the best trial so far
    for i in range(n):                                      # the signed max: C's ``if (ax > amax)``
        for g in range(G):
            if abs(X[i, g]) > amax[g]:
                amax[g], mx[g] = abs(X[i, g]), X[i, g]
    for g in range(G):                                      # an all-zero lane: C returns; run it at
        mx[g] = mx[g] if amax[g] >= _EPS else F32(1)        # max = 1, zero it at the end
    for t in range(19):                                     # step 0 (the first rounding), -9..-1, 1..9
        step = t - 10 if 0 < t < 10 else t - 9 if t else 0
        for g in range(G):                                  # at step 0: -nmax / max, bit for bit
            iscale[g] = -(F32(nmax) + F32(0.1) * F32(step)) / mx[g]
            sumlx[g], suml2[g] = F32(0), F32(0)
        for i in range(n):
            for g in range(G):
                l = _round_qx(iscale[g] * X[i, g], nmax)
                sumlx[g] += W[i, g] * X[i, g] * l
                suml2[g] += W[i, g] * l * l
        for g in range(G):                                  # per-lane selects instead of C's branches
            q = sumlx[g] / suml2[g]
            if step == 0:                                   # C: scale = suml2 ? sumlx / suml2 : 0
                scale[g] = q if suml2[g] != 0 else F32(0)
                best[g], win[g] = scale[g] * sumlx[g], iscale[g]
            else:
                take = (suml2[g] > 0) & (sumlx[g] * sumlx[g] > best[g] * suml2[g])
                scale[g] = q if take else scale[g]
                best[g] = q * sumlx[g] if take else best[g]
                win[g] = iscale[g] if take else win[g]
    for i in range(n):                                      # C rounds again at every win: once here
        for g in range(G):
            L[i, g] = np.int32(_round_qx(win[g] * X[i, g], nmax)) + nmax if amax[g] >= _EPS else 0
    for g in range(G):
        scale[g] = scale[g] if amax[g] >= _EPS else F32(0)


@njit
def _round_qx(f, nmax):
    """``MAX(-nmax, MIN(nmax - 1, nearest_int(f)))`` as a float32, for |f| < 2^22 (see above)."""
    return max(F32(-nmax), min(F32(nmax - 1), (f + F32(12582912.0)) - F32(12582912.0)))


@njit(float_division=True)
def _qkx3(X, W, nmax, L, scale, the_min):
    """``make_qkx3_quants(n, nmax, x, w, L, &the_min, Laux, -0.9, 0.05, 36, false)`` on the lanes of
    ``X, W [n, G]``: ``scale``, ``the_min [G]``, codes ``L [n, G]`` in 0..nmax, x_hat = scale L - the_min."""
    n, G = X.shape
    xmin, mx, sum_w, sum_x = X[0].copy(), X[0].copy(), W[0].copy(), W[0] * X[0]
    mn, iscale, best = np.empty(G, F32), np.empty(G, F32), np.zeros(G, F32)
    sum_l, sum_l2, sum_xl = np.empty(G, F32), np.empty(G, F32), np.empty(G, F32)
    this_scale, this_min, cur = np.empty(G, F32), np.empty(G, F32), np.empty(G, F32)
    ok, flat = np.zeros(G, np.bool_), np.zeros(G, np.bool_)
    win, win_mn = np.empty(G, F32), np.empty(G, F32)        # iscale and min of the best trial so far
    Laux = np.empty((n, G), F32)                            # the codes of the current trial
    buf = np.empty(G, F32)
    bits = buf.view(np.int32)
    for i in range(1, n):
        for g in range(G):
            xmin[g] = X[i, g] if X[i, g] < xmin[g] else xmin[g]
            mx[g] = X[i, g] if X[i, g] > mx[g] else mx[g]
            sum_w[g] += W[i, g]
            sum_x[g] += W[i, g] * X[i, g]
    wide = False
    for g in range(G):
        mn[g] = F32(0) if xmin[g] > 0 else xmin[g]
        flat[g] = mx[g] <= mn[g]                            # C returns here: codes 0, scale 0
        iscale[g] = F32(nmax) / (mx[g] - mn[g])
        scale[g] = F32(1) / iscale[g]
        win[g], win_mn[g] = iscale[g], mn[g]
        wide |= _wide(iscale[g], mn[g], mx[g], xmin[g], flat[g])
    for i in range(n):
        for g in range(G):
            l = _code(iscale[g] * (X[i, g] - mn[g]), nmax, wide, buf, bits, g)
            diff = scale[g] * l + mn[g] - X[i, g]
            best[g] += W[i, g] * (diff * diff)
    for step in range(37):
        wide = False
        for g in range(G):
            iscale[g] = (F32(-0.9) + F32(0.05) * F32(step) + F32(nmax)) / (mx[g] - mn[g])
            sum_l[g], sum_l2[g], sum_xl[g], cur[g] = F32(0), F32(0), F32(0), F32(0)
            wide |= _wide(iscale[g], mn[g], mx[g], xmin[g], flat[g])
        for i in range(n):
            for g in range(G):
                l = _code(iscale[g] * (X[i, g] - mn[g]), nmax, wide, buf, bits, g)
                Laux[i, g] = l
                sum_l[g] += W[i, g] * l
                sum_l2[g] += W[i, g] * l * l
                sum_xl[g] += W[i, g] * l * X[i, g]
        for g in range(G):                                  # per-lane selects instead of C's branches
            D = sum_w[g] * sum_l2[g] - sum_l[g] * sum_l[g]
            ok[g] = (D > 0) & (not flat[g])
            a = (sum_w[g] * sum_xl[g] - sum_x[g] * sum_l[g]) / D
            b = (sum_l2[g] * sum_x[g] - sum_l[g] * sum_xl[g]) / D
            this_scale[g] = sum_xl[g] / sum_l2[g] if b > 0 else a       # a positive min is set to 0
            this_min[g] = F32(0) if b > 0 else b
        for i in range(n):
            for g in range(G):
                diff = this_scale[g] * Laux[i, g] + this_min[g] - X[i, g]
                cur[g] += W[i, g] * (diff * diff)
        for g in range(G):
            take = ok[g] & (cur[g] < best[g])
            best[g] = cur[g] if take else best[g]
            scale[g] = this_scale[g] if take else scale[g]
            win[g] = iscale[g] if take else win[g]
            win_mn[g] = mn[g] if take else win_mn[g]        # the trial's codes came from the old min
            mn[g] = this_min[g] if take else mn[g]
    wide = False
    for g in range(G):
        wide |= _wide(win[g], win_mn[g], mx[g], xmin[g], flat[g])
    for i in range(n):                                      # C copies the codes at every win: once here
        for g in range(G):
            l = _code(win[g] * (X[i, g] - win_mn[g]), nmax, wide, buf, bits, g)
            L[i, g] = 0 if flat[g] else np.int32(l)
    for g in range(G):
        the_min[g] = -mn[g]
        scale[g] = F32(0) if flat[g] else scale[g]


@njit
def _code(f, nmax, wide, buf, bits, g):
    """``MAX(0, MIN(nmax, nearest_int(f)))`` as a float32: ``(f + 1.5 * 2^23) - 1.5 * 2^23``, or, when some
    |f| of the loop may reach 2^22 (``wide``), ggml's bits (``_nint``)."""
    if wide:
        return F32(max(0, min(nmax, _nint(buf, bits, g, f))))
    return max(F32(0), min(F32(nmax), (f + F32(12582912.0)) - F32(12582912.0)))


@njit
def _wide(iscale, mn, mx, xmin, flat):
    """May some ``|iscale * (x - mn)|``, ``xmin <= x <= mx``, reach 2^22 - 1 (or be NaN)? Rounding is
    monotonic, so the float32 product at the farther end bounds them all. A flat lane's codes are 0."""
    return not flat and not abs(iscale) * max(abs(mx - mn), abs(xmin - mn)) < F32(4194303.0)


@njit(parallel=True)
def _sum_x2(X, out):
    """``out[r] = sum_j X[r, j]^2``, left to right in float32 (C's ``sumx2 += x[j]*x[j]``)."""
    for r in prange(X.shape[0]):
        acc = F32(0)
        for j in range(X.shape[1]):
            acc += X[r, j] * X[r, j]
        out[r] = acc


@njit(parallel=True, float_division=True)
def _sub_blocks(X, Q, sigma2, kind, nmax, L, scale, the_min, sw):
    """Every (sub-)block ``X[k]`` (``X [nsb, n]``), ``LANES`` per step: weights ``w = Q[k % len(Q)] *
    sqrt(sigma2[k] + x^2)`` (Q6_K: ``w = Q[k % len(Q)]``), ``sw[k]``, and its search -> ``L[k]``,
    ``scale[k]``, ``the_min[k]``."""
    nsb, n = X.shape
    for step in prange((nsb + LANES - 1) // LANES):
        k0 = step * LANES
        G = min(LANES, nsb - k0)
        Xt, Wt = np.empty((n, G), F32), np.empty((n, G), F32)
        Lt = np.zeros((n, G), np.int32)
        s, m = np.zeros(G, F32), np.zeros(G, F32)
        for g in range(G):
            k = k0 + g
            q = Q[k % Q.shape[0]]
            acc = F32(0)
            for i in range(n):
                Xt[i, g] = X[k, i]
                Wt[i, g] = q[i] if kind == 6 else q[i] * np.sqrt(sigma2[k] + X[k, i] * X[k, i])
                acc += Wt[i, g]
            sw[k] = acc
        if kind in (3, 6, 40, 50):
            _qx(Xt, Wt, nmax, Lt, s)
        else:
            _qkx3(Xt, Wt, nmax, Lt, s, m)
        for g in range(G):
            scale[k0 + g], the_min[k0 + g] = s[g], m[g]
            for i in range(n):
                L[k0 + g, i] = Lt[i, g]


def quantize_weighted_kernel(x, qtype: str, imatrix):
    """``x [rows, n]`` float32, ``imatrix [n] >= 0`` -> the structured blocks ``[rows * n / block]`` of
    ``qtype``; equals ``kquants_weighted.quantize_weighted(x, qtype, imatrix)`` byte for byte."""
    if qtype not in _SPEC:
        raise ValueError(f"qtype must be one of {tuple(_SPEC)}, got {qtype!r}")
    if imatrix is None:
        raise ValueError("imatrix is required (without one llama.cpp runs the *_ref quantizers: minq.kquants)")
    x, imatrix = np.ascontiguousarray(x, F32), np.ascontiguousarray(imatrix, F32)
    kind, n, nmax = _SPEC[qtype]
    block = 32 if kind >= 40 else 256
    if x.ndim != 2 or x.shape[1] % block or imatrix.shape != (x.shape[1],):
        raise ValueError(f"need x [rows, n] with n a multiple of {block} and imatrix [n], got {x.shape}, "
                         f"{imatrix.shape}")
    seg = x if kind >= 40 else x.reshape(-1, 256)                       # sigma2 per row / super-block
    sum_x2 = np.empty(len(seg), F32)
    _sum_x2(seg, sum_x2)
    sigma2 = sum_x2 / F32(seg.shape[1]) if kind in (2, 40, 41, 50, 51) else F32(2) * sum_x2 / F32(256)
    nsb = x.size // n
    L = np.zeros((nsb, n), np.uint8)
    scale, the_min, sw = np.zeros(nsb, F32), np.zeros(nsb, F32), np.zeros(nsb, F32)
    _sub_blocks(x.reshape(nsb, n), imatrix.reshape(-1, n), np.repeat(sigma2, seg.shape[1] // n), kind, nmax,
                L, scale, the_min, sw)
    if kind >= 40:                                                      # Q4_0 ... Q5_1: d, m, codes
        y = np.zeros(nsb, kquants_legacy.LAYOUTS[qtype])
        y["d"] = scale.astype(np.float16)
        if kind % 10 == 1:
            y["m"] = (-the_min).astype(np.float16)
        y["qs"] = kquants_legacy._nibbles(L)
        if kind // 10 == 5:
            y["qh"] = kquants_weighted._bit4(L)
        return y
    nb, nsub = nsb * n // 256, 256 // n
    raw, d16, dmin16 = superblock_stage(x.reshape(nb, 256), kind, L.reshape(nb, 256), scale.reshape(nb, nsub),
                                        the_min.reshape(nb, nsub), sw.reshape(nb, nsub))
    y = raw.reshape(-1).view(kquants_k.LAYOUTS[qtype])
    y["d"] = d16
    if "dmin" in y.dtype.names:
        y["dmin"] = dmin16
    return y
