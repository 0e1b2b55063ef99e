"""Chapter 08 — Numba kernel of the IQ4_NL / IQ4_XS quantizer, one (super-)block per loop step.

It equals ``minq.kquants_iq.quantize_blocks`` byte for byte (tests/test_kquants_imatrix.py, and
llama.cpp's golden bytes); that NumPy code is the one to read, with the formulas and the layouts:

    quantize_iq4_kernel(B [nb, S] float32, qtype, imatrix [nb, S] float32 or None) -> raw [nb, nbytes]

Per sub-block of 32: weights (``x^2``, or ``imatrix * sqrt(sigma2 + x^2)``), the signed extreme, the
fit from ``d = max / 127`` and 15 trial scales ``max / (t - 127)``, each a nearest-entry search in the
16-entry table (``_best_index``, ggml's binary search) with float32 sums in C's order. IQ4_XS then
quantizes its 8 scales to 6 bits against ``d = -max_scale / 32``. Numba has no float16: the kernel
returns the float32 ``d``, which NumPy rounds to fp16 (``astype``, round to nearest even) as ggml does.
"""

from __future__ import annotations

import numpy as np

from minq._jit import njit, prange
from minq.kquants_iq import CODEBOOK, LAYOUTS, NTRY

__all__ = ["quantize_iq4_kernel"]

F32 = np.float32
_T = CODEBOOK.astype(F32)
_EPS = F32(1e-15)                    # GROUP_MAX_EPS: a sub-block below it is all zero


@njit
def _best_index(v, T):
    """The table entry nearest to ``v``: binary search; the lower neighbour only when strictly nearer."""
    if v <= T[0]:
        return 0
    if v >= T[15]:
        return 15
    lo, hi = 0, 15
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if v < T[mid]:
            hi = mid
        else:
            lo = mid
    return hi - 1 if v - T[hi - 1] < T[hi] - v else hi


@njit
def _fit(x, w, inv, T, L):
    """Codes of ``inv x`` into ``L``; returns (sum w q x, sum w q^2), accumulated left to right."""
    sqx, sq2 = F32(0), F32(0)
    for j in range(x.shape[0]):
        l = _best_index(inv * x[j], T)
        L[j] = l
        wq = w[j] * T[l]
        sqx += wq * x[j]
        sq2 += wq * T[l]
    return sqx, sq2


@njit(float_division=True)
def _scale(x, w, T, L):
    """The searched scale of one sub-block ``x [32]`` with weights ``w`` (0 below GROUP_MAX_EPS)."""
    amax, mx = F32(0), F32(0)
    for j in range(x.shape[0]):
        if abs(x[j]) > amax:                                             # strict: the first extreme
            amax, mx = abs(x[j]), x[j]
    if amax < _EPS:
        return F32(0)
    d = -mx / T[0]
    sqx, sq2 = _fit(x, w, F32(1) / d, T, L)
    d = sqx / sq2 if sq2 > 0 else F32(0)
    best = d * sqx
    for t in range(-NTRY, NTRY + 1):
        sqx, sq2 = _fit(x, w, F32(t + int(T[0])) / mx, T, L)
        if sq2 > 0 and sqx * sqx > best * sq2:
            d = sqx / sq2
            best = d * sqx
    return d


@njit
def _pack(x, inv, T, raw, i, o):
    """Codes of ``inv x`` for one sub-block of 32, two a byte, into ``raw[i, o:o + 16]``."""
    for j in range(16):
        raw[i, o + j] = _best_index(inv * x[j], T) | (_best_index(inv * x[j + 16], T) << 4)


@njit(parallel=True, float_division=True)
def _q_iq4(B, imp, weighted, raw, d_out):
    """IQ4_NL (``B [nb, 32]``) or IQ4_XS (``B [nb, 256]``) into ``raw``; float32 d into ``d_out``."""
    T = _T
    S = B.shape[1]
    nsub = S // 32
    for i in prange(B.shape[0]):
        sigma2 = F32(0)
        for j in range(S):
            sigma2 += B[i, j] * B[i, j]
        sigma2 *= F32(2) / F32(S)
        w = np.empty(32, F32)
        L = np.empty(32, np.uint8)
        scales = np.empty(nsub, F32)
        for s in range(nsub):
            x = B[i, 32 * s:32 * s + 32]
            for j in range(32):
                w[j] = imp[i, 32 * s + j] * np.sqrt(sigma2 + x[j] * x[j]) if weighted else x[j] * x[j]
            scales[s] = _scale(x, w, T, L)
        if nsub == 1:                                                    # IQ4_NL: [d][qs:16]
            d_out[i] = scales[0]
            _pack(B[i], F32(1) / scales[0] if scales[0] != 0 else F32(0), T, raw, i, 2)
            continue
        amax, max_scale = F32(0), F32(0)                                 # IQ4_XS: [d][sh:2][sl:4][qs:128]
        for s in range(nsub):
            if abs(scales[s]) > amax:
                amax, max_scale = abs(scales[s]), scales[s]
        d = -max_scale / F32(32)
        d_out[i] = d
        inv = F32(1) / d if d != 0 else F32(0)
        sh = 0
        for s in range(nsub):
            v = inv * scales[s]
            l = 0 if np.isnan(v) else min(31, max(-32, int(np.rint(v))))   # ggml's nearest_int, |v| <= 32
            dl = d * F32(l)
            _pack(B[i, 32 * s:32 * s + 32], F32(1) / dl if dl != 0 else F32(0), T, raw, i, 8 + 16 * s)
            ls = l + 32
            if s % 2 == 0:
                raw[i, 4 + s // 2] = ls & 0xF
            else:
                raw[i, 4 + s // 2] |= (ls & 0xF) << 4
            sh |= (ls >> 4) << (2 * s)
        raw[i, 2], raw[i, 3] = sh & 0xFF, sh >> 8


def quantize_iq4_kernel(B, qtype: str, imatrix=None):
    """``B [nb, block]`` float32 (and ``imatrix [nb, block]`` or None) -> ``raw [nb, nbytes]`` uint8."""
    layout = LAYOUTS[qtype]
    B = np.ascontiguousarray(B, F32)
    raw = np.zeros((B.shape[0], layout.itemsize), np.uint8)
    d = np.empty(B.shape[0], F32)
    imp = np.ascontiguousarray(imatrix, F32) if imatrix is not None else np.zeros((1, 1), F32)
    _q_iq4(B, imp, imatrix is not None, raw, d)
    raw.reshape(-1).view(layout)["d"] = d.astype(np.float16)
    return raw
