"""Chapter 08 — Numba kernels of the block types: one kernel per type, one loop step per block, in parallel.

Each kernel equals a NumPy reference of ``minq.kquants_legacy`` / ``minq.kquants_k`` bit for bit
(tests/test_kquants.py proves it on random and golden data); the reference is the code to read, this
is the code that runs (``minq.kquants.quantize`` / ``dequantize``; ``*_reference`` run the NumPy path).

    dequantize_kernel(raw [nb, nbytes] uint8, qtype) -> float32 [nb, block]           every type

(The quantizers: ``minq.kquants_kernels_legacy`` for the blocks of 32 and the ternary types,
``minq.kquants_kernels_k`` for the k-quants.)

One kernel per type (not one kernel branching on the type inside its loops), and inner loops whose
length is read at run time (``half = y.shape[1] // 2``, not ``range(16)``): LLVM fully unrolls a loop
of known short length into scalar code, but vectorises one of unknown length. Together 2-5x faster. Numba has no float16: an fp16 scale
is read through a 65536-entry table (``_F16``, every fp16 bit pattern as float32) and written by NumPy
(``astype(np.float16)``, round to nearest even) outside the kernel. Arithmetic stays float32 as in
ggml: integers enter products as ``F32(q)`` (Numba would promote int * float32 to float64, and
``d * q - m`` rounded once in float64 can differ from ggml's two float32 roundings).
"""

from __future__ import annotations

import numpy as np

from minq._jit import njit, prange
from minq.kquants_legacy import BLOCK as L_BLOCK

__all__ = ["dequantize_kernel"]

F32 = np.float32
I32 = np.int32
_BLOCK = {**L_BLOCK, "IQ4_NL": 32}                                       # the rest: 256
_F16 = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(F32)   # [65536]


@njit
def _h(b, i, o, T):
    """The fp16 at byte offset ``o`` of block ``i``, as float32."""
    return T[I32(b[i, o]) | (I32(b[i, o + 1]) << 8)]


@njit
def _u32(b, i, o):
    """The little-endian uint32 at byte offset ``o`` of block ``i`` (Q5_0 / Q5_1's ``qh``)."""
    return np.int64(b[i, o]) | np.int64(b[i, o + 1]) << 8 | np.int64(b[i, o + 2]) << 16 | np.int64(b[i, o + 3]) << 24


# ---- dequantize: the legacy blocks of 32 -------------------------------------------------------------

@njit(parallel=True)
def _deq_q4_0(b, T, y):                       # [d][qs:16]                     y = d (q - 8)
    half = y.shape[1] // 2                                               # 16, read at run time (see above)
    for i in prange(b.shape[0]):
        d = _h(b, i, 0, T)
        for j in range(half):
            v = I32(b[i, 2 + j])
            y[i, j], y[i, j + 16] = F32((v & 0xF) - 8) * d, F32((v >> 4) - 8) * d


@njit(parallel=True)
def _deq_q4_1(b, T, y):                       # [d][m][qs:16]                  y = d q + m
    half = y.shape[1] // 2
    for i in prange(b.shape[0]):
        d, m = _h(b, i, 0, T), _h(b, i, 2, T)
        for j in range(half):
            v = I32(b[i, 4 + j])
            y[i, j], y[i, j + 16] = F32(v & 0xF) * d + m, F32(v >> 4) * d + m


@njit(parallel=True)
def _deq_q5_0(b, T, y):                       # [d][qh:4][qs:16]               y = d (q - 16)
    half = y.shape[1] // 2
    for i in prange(b.shape[0]):
        d, qh = _h(b, i, 0, T), _u32(b, i, 2)
        for j in range(half):
            v = I32(b[i, 6 + j])
            q0 = (v & 0xF) | I32((qh >> j) & 1) << 4
            q1 = (v >> 4) | I32((qh >> (j + 16)) & 1) << 4
            y[i, j], y[i, j + 16] = F32(q0 - 16) * d, F32(q1 - 16) * d


@njit(parallel=True)
def _deq_q5_1(b, T, y):                       # [d][m][qh:4][qs:16]            y = d q + m
    half = y.shape[1] // 2
    for i in prange(b.shape[0]):
        d, m, qh = _h(b, i, 0, T), _h(b, i, 2, T), _u32(b, i, 4)
        for j in range(half):
            v = I32(b[i, 8 + j])
            q0 = (v & 0xF) | I32((qh >> j) & 1) << 4
            q1 = (v >> 4) | I32((qh >> (j + 16)) & 1) << 4
            y[i, j], y[i, j + 16] = F32(q0) * d + m, F32(q1) * d + m


@njit(parallel=True)
def _deq_q8_0(b, T, y):                       # [d][qs:32 int8]                y = d q
    for i in prange(b.shape[0]):
        d = _h(b, i, 0, T)
        for j in range(y.shape[1]):
            y[i, j] = F32(np.int8(b[i, 2 + j])) * d


# ---- dequantize: the ternary blocks of 256 ---------------------------------------------------------

@njit
def _trits_out(q, y, width, ntrit, d):
    """Trit n of the bytes ``q [width]`` -> ``y[n width + m] = (t - 1) d``; trit n of byte v is
    ``((v * 3^n mod 256) * 3) >> 8``. Row slices in, so the inner loop is a plain vectorisable run."""
    p = 1                                                                # 3^n
    for n in range(ntrit):
        for m in range(width):
            t = (((I32(q[m]) * p) & 0xFF) * 3) >> 8
            y[n * width + m] = F32(t - 1) * d
        p *= 3


@njit(parallel=True)
def _deq_tq1_0(b, T, y):                      # [qs:48][qh:4][d]               y = d (t - 1)
    w = y.shape[1] // 8                                                  # 32, read at run time
    for i in prange(b.shape[0]):
        d = _h(b, i, 52, T)
        _trits_out(b[i, :w], y[i, :5 * w], w, 5, d)                       # qs[0:32]  -> e_0 .. e_159
        _trits_out(b[i, w:3 * w // 2], y[i, 5 * w:15 * w // 2], w // 2, 5, d)      # qs[32:48] -> e_160 .. e_239
        _trits_out(b[i, 3 * w // 2:13 * w // 8], y[i, 15 * w // 2:], w // 8, 4, d)  # qh[0:4] -> e_240 .. e_255


@njit(parallel=True)
def _deq_tq2_0(b, T, y):                      # [qs:64][d]
    for i in prange(b.shape[0]):
        d = _h(b, i, 64, T)
        for c in range(2):
            for n in range(4):
                for m in range(y.shape[1] // 8):                     # 32, read at run time
                    t = (I32(b[i, 32 * c + m]) >> (2 * n)) & 3
                    y[i, 128 * c + 32 * n + m] = F32(t - 1) * d


# ---- dequantize: the k-quant super-blocks of 256 (element e = 128 h + 32 k + l, sub-block e // 16) --

@njit(parallel=True)
def _deq_q2_k(b, T, y):                       # [scales:16][qs:64][d][dmin]    y = d sc q - dmin mn
    for i in prange(b.shape[0]):
        d, dmin = _h(b, i, 80, T), _h(b, i, 82, T)
        sub = y.shape[1] // 16                                           # 16, read at run time
        for h in range(2):
            for k in range(4):
                for s in range(2):
                    sc = I32(b[i, 8 * h + 2 * k + s])
                    dl, ml = d * F32(sc & 0xF), dmin * F32(sc >> 4)
                    for l in range(sub * s, sub * s + sub):
                        q = (I32(b[i, 16 + 32 * h + l]) >> (2 * k)) & 3
                        y[i, 128 * h + 32 * k + l] = dl * F32(q) - ml


@njit(parallel=True)
def _deq_q3_k(b, T, y):                       # [hmask:32][qs:64][scales:12][d]  y = d (sc - 32) q
    for i in prange(b.shape[0]):
        d = _h(b, i, 108, T)
        sub = y.shape[1] // 16                                           # 16, read at run time
        for h in range(2):
            for k in range(4):
                for s in range(2):
                    j = 8 * h + 2 * k + s                                 # 6-bit scale j: 4 + 2 bits
                    low = (I32(b[i, 96 + j]) & 0xF) if j < 8 else (I32(b[i, 88 + j]) >> 4)
                    high = (I32(b[i, 104 + j % 4]) >> (2 * (j // 4))) & 3
                    dl = d * F32((low | high << 4) - 32)
                    for l in range(sub * s, sub * s + sub):
                        q = ((I32(b[i, 32 + 32 * h + l]) >> (2 * k)) & 3) + 4 * ((I32(b[i, l]) >> (4 * h + k)) & 1) - 4
                        y[i, 128 * h + 32 * k + l] = dl * F32(q)


@njit
def _scale_min_k4(b, i, j):
    """ggml's ``get_scale_min_k4``: the 6-bit scale and min of sub-block ``j`` from the 12 bytes at 4."""
    if j < 4:
        return I32(b[i, 4 + j]) & 63, I32(b[i, 8 + j]) & 63
    sc = (I32(b[i, 8 + j]) & 0xF) | ((I32(b[i, j]) >> 6) << 4)
    mn = (I32(b[i, 8 + j]) >> 4) | ((I32(b[i, 4 + j]) >> 6) << 4)
    return sc, mn


@njit(parallel=True)
def _deq_q4_k(b, T, y):                       # [d][dmin][scales:12][qs:128]   y = d sc q - dmin mn
    for i in prange(b.shape[0]):
        d, dmin = _h(b, i, 0, T), _h(b, i, 2, T)
        quarter = y.shape[1] // 8                                        # 32, read at run time
        for p in range(4):                                               # sub-blocks 2p, 2p + 1 share bytes
            sc, mn = _scale_min_k4(b, i, 2 * p)
            d0, m0 = d * F32(sc), dmin * F32(mn)
            sc, mn = _scale_min_k4(b, i, 2 * p + 1)
            d1, m1 = d * F32(sc), dmin * F32(mn)
            for l in range(quarter):
                v = I32(b[i, 16 + 32 * p + l])
                y[i, 64 * p + l], y[i, 64 * p + 32 + l] = d0 * F32(v & 0xF) - m0, d1 * F32(v >> 4) - m1


@njit(parallel=True)
def _deq_q5_k(b, T, y):                       # [d][dmin][scales:12][qh:32][qs:128]
    for i in prange(b.shape[0]):
        d, dmin = _h(b, i, 0, T), _h(b, i, 2, T)
        quarter = y.shape[1] // 8                                        # 32, read at run time
        for p in range(4):
            sc, mn = _scale_min_k4(b, i, 2 * p)
            d0, m0 = d * F32(sc), dmin * F32(mn)
            sc, mn = _scale_min_k4(b, i, 2 * p + 1)
            d1, m1 = d * F32(sc), dmin * F32(mn)
            for l in range(quarter):
                v, hb = I32(b[i, 48 + 32 * p + l]), I32(b[i, 16 + l]) >> (2 * p)
                q0, q1 = (v & 0xF) | (hb & 1) << 4, (v >> 4) | (hb & 2) << 3
                y[i, 64 * p + l], y[i, 64 * p + 32 + l] = d0 * F32(q0) - m0, d1 * F32(q1) - m1


@njit(parallel=True)
def _deq_q6_k(b, T, y):                       # [ql:128][qh:64][scales:16 int8][d]  y = d sc (q - 32)
    for i in prange(b.shape[0]):
        d = _h(b, i, 208, T)
        sub = y.shape[1] // 16                                           # 16, read at run time
        for h in range(2):
            for k in range(4):
                for s in range(2):
                    dl = d * F32(np.int8(b[i, 192 + 8 * h + 2 * k + s]))
                    for l in range(sub * s, sub * s + sub):
                        lo = (I32(b[i, 64 * h + 32 * (k % 2) + l]) >> (4 * (k // 2))) & 0xF
                        hi = (I32(b[i, 128 + 32 * h + l]) >> (2 * k)) & 3
                        y[i, 128 * h + 32 * k + l] = dl * F32((lo | hi << 4) - 32)


# ---- dequantize: the non-linear types (codes through IQ4_NL's 16-entry table T) ---------------------

_IQ4 = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], F32)


@njit
def _iq4_run(q, dl, T, y):
    """16 bytes ``q`` of codes -> 32 values ``y``: ``dl T[low nibble]`` then ``dl T[high nibble]``."""
    half = y.shape[0] // 2
    for j in range(half):
        y[j], y[j + half] = dl * T[q[j] & 0xF], dl * T[q[j] >> 4]


@njit(parallel=True)
def _deq_iq4_nl(b, T, y):                     # [d][qs:16]                     y = d T[q]
    for i in prange(b.shape[0]):
        _iq4_run(b[i, 2:], _h(b, i, 0, T), _IQ4, y[i])


@njit(parallel=True)
def _deq_iq4_xs(b, T, y):                     # [d][scales_h:2][scales_l:4][qs:128]  y = d (ls - 32) T[q]
    w = y.shape[1] // 8                                                  # 32, read at run time
    for i in prange(b.shape[0]):
        d = _h(b, i, 0, T)
        sh = I32(b[i, 2]) | (I32(b[i, 3]) << 8)
        for s in range(8):
            ls = ((I32(b[i, 4 + s // 2]) >> (4 * (s % 2))) & 0xF) | (((sh >> (2 * s)) & 3) << 4)
            _iq4_run(b[i, 8 + 16 * s:], d * F32(ls - 32), _IQ4, y[i, w * s:w * s + w])


_DEQ = {"Q4_0": _deq_q4_0, "Q4_1": _deq_q4_1, "Q5_0": _deq_q5_0, "Q5_1": _deq_q5_1, "Q8_0": _deq_q8_0,
        "TQ1_0": _deq_tq1_0, "TQ2_0": _deq_tq2_0, "Q2_K": _deq_q2_k, "Q3_K": _deq_q3_k,
        "Q4_K": _deq_q4_k, "Q5_K": _deq_q5_k, "Q6_K": _deq_q6_k, "IQ4_NL": _deq_iq4_nl, "IQ4_XS": _deq_iq4_xs}


def dequantize_kernel(raw, qtype: str):
    """``raw [nb, nbytes]`` uint8 blocks of ``qtype`` -> float32 ``[nb, block]``."""
    y = np.empty((raw.shape[0], _BLOCK.get(qtype, 256)), F32)
    _DEQ[qtype](np.ascontiguousarray(raw), _F16, y)
    return y
