"""Chapter 08 — Numba kernels of the block types: one loop per block, in parallel over blocks.

Each kernel equals a NumPy reference of ``minq.kquants_legacy`` / ``minq.kquants_k`` bit for bit
(tests/test_kquants.py proves it on random and golden data); the reference is the code to read, this
is the code that runs (``minq.kquants.quantize`` / ``dequantize``; ``*_reference`` run the NumPy path).

    dequantize_kernel(raw [nb, nbytes] uint8, qtype) -> float32 [nb, block]     every type
    quantize_legacy_kernel(B [nb, 32] float32, qtype) -> raw [nb, nbytes]       Q4_0, Q4_1, Q5_0, Q5_1, Q8_0

Numba has no float16: an fp16 scale is read through a 65536-entry table (``_F16``, every fp16 bit
pattern as float32) and written by NumPy (``astype(np.float16)``, round to nearest even) outside the
kernel. Arithmetic stays float32 as in ggml: integers enter products as ``np.float32(q)`` (Numba
would promote int * float32 to float64, and ``d * q - m`` rounded once in float64 can differ from
ggml's two float32 roundings).
"""

from __future__ import annotations

import numpy as np

from minq._jit import njit, prange
from minq.kquants_k import LAYOUTS as K_LAYOUTS
from minq.kquants_legacy import BLOCK as L_BLOCK
from minq.kquants_legacy import LAYOUTS as L_LAYOUTS

__all__ = ["dequantize_kernel", "quantize_legacy_kernel"]

F32 = np.float32
_F16 = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(F32)   # [65536]
_OFFSET = {name: {f: layout.fields[f][1] for f in layout.names} for name, layout in {**L_LAYOUTS, **K_LAYOUTS}.items()}
_KIND = {"Q4_0": 0, "Q4_1": 1, "Q5_0": 2, "Q5_1": 3, "Q8_0": 4, "TQ1_0": 5, "TQ2_0": 6,
         "Q2_K": 7, "Q3_K": 8, "Q4_K": 9, "Q5_K": 10, "Q6_K": 11}


@njit
def _h(b, i, o, T):
    """The fp16 at byte offset ``o`` of block ``i``, as float32."""
    return T[np.int64(b[i, o]) | (np.int64(b[i, o + 1]) << 8)]


@njit(parallel=True)
def _deq_legacy(b, kind, T, y):
    """Q4_0 / Q4_1 / Q5_0 / Q5_1 / Q8_0 (``kind`` 0-4) of blocks ``b [nb, nbytes]`` into ``y [nb, 32]``."""
    for i in prange(b.shape[0]):
        d = _h(b, i, 0, T)
        if kind == 4:                                                  # Q8_0: d, int8 qs[32]
            for j in range(32):
                q = np.int64(b[i, 2 + j])
                y[i, j] = F32(q - 256 if q > 127 else q) * d
            continue
        m = _h(b, i, 2, T) if kind in (1, 3) else F32(0)
        qs = 2 + 2 * (kind in (1, 3)) + 4 * (kind in (2, 3))          # after d, m, qh
        qh = np.int64(0)
        if kind in (2, 3):
            o = qs - 4
            qh = np.int64(b[i, o]) | np.int64(b[i, o + 1]) << 8 | np.int64(b[i, o + 2]) << 16 | np.int64(b[i, o + 3]) << 24
        for j in range(16):
            byte = np.int64(b[i, qs + j])
            q0, q1 = byte & 0xF, byte >> 4
            if kind in (2, 3):
                q0 |= ((qh >> j) & 1) << 4
                q1 |= ((qh >> (j + 16)) & 1) << 4
            if kind == 0:
                y[i, j], y[i, j + 16] = F32(q0 - 8) * d, F32(q1 - 8) * d
            elif kind == 2:
                y[i, j], y[i, j + 16] = F32(q0 - 16) * d, F32(q1 - 16) * d
            else:
                y[i, j], y[i, j + 16] = F32(q0) * d + m, F32(q1) * d + m


@njit(parallel=True)
def _deq_ternary(b, kind, T, y):
    """TQ1_0 (``kind`` 5) / TQ2_0 (6) blocks into ``y [nb, 256]``: ``(t - 1) * d``."""
    pow3 = np.array([1, 3, 9, 27, 81], np.int64)
    for i in prange(b.shape[0]):
        if kind == 6:
            d = _h(b, i, 64, T)
            for c in range(2):
                for n in range(4):
                    for m in range(32):
                        t = (np.int64(b[i, 32 * c + m]) >> (2 * n)) & 3
                        y[i, 128 * c + 32 * n + m] = F32(t - 1) * d
            continue
        d = _h(b, i, 52, T)
        e = 0
        for start, width, ntrit in ((0, 32, 5), (32, 16, 5), (48, 4, 4)):
            for n in range(ntrit):
                for m in range(width):
                    t = ((((np.int64(b[i, start + m]) * pow3[n]) & 0xFF) * 3) >> 8)
                    y[i, e] = F32(t - 1) * d
                    e += 1


@njit
def _scale_min_k4(b, i, o, j):
    """ggml's ``get_scale_min_k4``: the 6-bit scale and min of sub-block ``j`` from the 12 bytes at ``o``."""
    if j < 4:
        return np.int64(b[i, o + j]) & 63, np.int64(b[i, o + j + 4]) & 63
    sc = (np.int64(b[i, o + j + 4]) & 0xF) | ((np.int64(b[i, o + j - 4]) >> 6) << 4)
    mn = (np.int64(b[i, o + j + 4]) >> 4) | ((np.int64(b[i, o + j]) >> 6) << 4)
    return sc, mn


@njit(parallel=True)
def _deq_k(b, kind, T, y):
    """Q2_K (7), Q3_K (8), Q4_K (9), Q5_K (10), Q6_K (11) super-blocks into ``y [nb, 256]``."""
    for i in prange(b.shape[0]):
        if kind == 7:                                   # [scales:16][qs:64][d][dmin]
            d, dmin = _h(b, i, 80, T), _h(b, i, 82, T)
            for e in range(256):
                sc = np.int64(b[i, e // 16])
                q = (np.int64(b[i, 16 + 32 * (e // 128) + e % 32]) >> (2 * ((e % 128) // 32))) & 3
                y[i, e] = d * F32(sc & 0xF) * F32(q) - dmin * F32(sc >> 4)
        elif kind == 8:                                 # [hmask:32][qs:64][scales:12][d]
            d = _h(b, i, 108, T)
            for e in range(256):
                j = e // 16
                low = (np.int64(b[i, 96 + j]) & 0xF) if j < 8 else (np.int64(b[i, 96 + j - 8]) >> 4)
                high = (np.int64(b[i, 104 + j % 4]) >> (2 * (j // 4))) & 3
                q = ((np.int64(b[i, 32 + 32 * (e // 128) + e % 32]) >> (2 * ((e % 128) // 32))) & 3) \
                    + 4 * ((np.int64(b[i, e % 32]) >> (e // 32)) & 1) - 4
                y[i, e] = d * F32((low | high << 4) - 32) * F32(q)
        elif kind == 11:                                # [ql:128][qh:64][scales:16 int8][d]
            d = _h(b, i, 208, T)
            for e in range(256):
                h, r = e // 128, e % 128
                k, l = r // 32, r % 32
                lo = np.int64(b[i, 64 * h + 32 * (k % 2) + l])
                lo = lo & 0xF if k < 2 else lo >> 4
                hi = (np.int64(b[i, 128 + 32 * h + l]) >> (2 * k)) & 3
                sc = np.int64(b[i, 192 + e // 16])
                y[i, e] = d * F32(sc - 256 if sc > 127 else sc) * F32((lo | hi << 4) - 32)
        else:                                           # Q4_K / Q5_K: [d][dmin][scales:12](qh:32)[qs:128]
            d, dmin = _h(b, i, 0, T), _h(b, i, 2, T)
            qs = 16 if kind == 9 else 48
            for j in range(8):
                sc, mn = _scale_min_k4(b, i, 4, j)
                dl, ml = d * F32(sc), dmin * F32(mn)
                for l in range(32):
                    byte = np.int64(b[i, qs + 32 * (j // 2) + l])
                    q = byte & 0xF if j % 2 == 0 else byte >> 4
                    if kind == 10:
                        q |= ((np.int64(b[i, 16 + l]) >> j) & 1) << 4
                    y[i, 32 * j + l] = dl * F32(q) - ml


def dequantize_kernel(raw, qtype: str):
    """``raw [nb, nbytes]`` uint8 blocks of ``qtype`` -> float32 ``[nb, block]``."""
    kind = _KIND[qtype]
    y = np.empty((raw.shape[0], L_BLOCK.get(qtype, 256)), F32)
    fn = _deq_legacy if kind <= 4 else _deq_ternary if kind <= 6 else _deq_k
    fn(np.ascontiguousarray(raw), kind, _F16, y)
    return y


@njit(parallel=True, float_division=True)
def _q_legacy(B, kind, raw, d_out, m_out):
    """Codes of Q4_0 / Q4_1 / Q5_0 / Q5_1 / Q8_0 blocks ``B [nb, 32]`` into ``raw``; float32 d (and m) out."""
    for i in prange(B.shape[0]):
        if kind == 4:
            amax = F32(0)
            for j in range(32):
                amax = max(amax, abs(B[i, j]))
            d = amax / F32(127)
            inv = F32(1) / d if d != 0 else F32(0)
            for j in range(32):
                v = B[i, j] * inv
                a = abs(v)
                fl = np.floor(a)
                r = fl + np.floor(F32(2) * (a - fl))                  # roundf: half away from zero
                q = np.int64(r) if v >= 0 else -np.int64(r)
                raw[i, 2 + j] = q & 0xFF
            d_out[i] = d
            continue
        top = 15 if kind in (0, 1) else 31
        if kind in (0, 2):                              # the signed value of largest |x|, first one
            amax, mx = F32(0), F32(0)
            for j in range(32):
                if amax < abs(B[i, j]):
                    amax, mx = abs(B[i, j]), B[i, j]
            d = mx / F32(-8 if kind == 0 else -16)
            lo, add = F32(0), F32(8.5 if kind == 0 else 16.5)
        else:
            lo, hi = B[i, 0], B[i, 0]
            for j in range(1, 32):                      # strict, as C: the first of equal extremes stays
                if B[i, j] < lo:
                    lo = B[i, j]
                if B[i, j] > hi:
                    hi = B[i, j]
            d = (hi - lo) / F32(top)
            add = F32(0.5)
            m_out[i] = lo
        inv = F32(1) / d if d != 0 else F32(0)
        qs = 2 + 2 * (kind in (1, 3)) + 4 * (kind in (2, 3))
        qh = np.int64(0)
        for j in range(32):
            q = np.int64((B[i, j] - lo) * inv + add)                   # trunc toward zero, as C's cast
            if kind != 3:
                q = min(top, q)
            if j < 16:
                raw[i, qs + j] = q & 0xF
            else:
                raw[i, qs + j - 16] |= (q & 0xF) << 4
            qh |= ((q >> 4) & 1) << j
        if kind in (2, 3):
            for k in range(4):
                raw[i, qs - 4 + k] = (qh >> (8 * k)) & 0xFF
        d_out[i] = d


def quantize_legacy_kernel(B, qtype: str):
    """``B [nb, 32]`` float32 -> ``raw [nb, nbytes]`` of a legacy type; equals ``kquants_legacy.quantize_blocks``."""
    kind = _KIND[qtype]
    layout = L_LAYOUTS[qtype]
    raw = np.zeros((B.shape[0], layout.itemsize), np.uint8)
    d, m = np.empty(B.shape[0], F32), np.zeros(B.shape[0], F32)
    _q_legacy(np.ascontiguousarray(B, F32), kind, raw, d, m)
    y = raw.reshape(-1).view(layout)
    y["d"] = d.astype(np.float16)
    if "m" in layout.names:
        y["m"] = m.astype(np.float16)
    return raw
