"""Chapter 08 — Numba kernels of the quantizers of ggml's blocks of 32 and of its ternary blocks.

    quantize_legacy_kernel(B [nb, block] float32, qtype) -> raw [nb, nbytes] uint8
        Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 (block 32), TQ1_0, TQ2_0 (block 256)

They equal ``minq.kquants_legacy.quantize_blocks`` byte for byte (tests/test_kquants.py, and the
golden bytes of llama.cpp); that NumPy code is the one to read, with the formulas and the layouts.
Each type has its own parallel kernel around one block function, so the type's constants (``bits``)
fold into the loop; the block length is read at run time so that LLVM vectorises the loops (see
``minq.kquants_kernels``). Numba has no float16: the kernels return float32 scales, which NumPy
rounds to fp16 (``astype``, round to nearest even) as ggml's ``GGML_FP32_TO_FP16`` does.
"""

from __future__ import annotations

import numpy as np

from minq._jit import njit, prange
from minq.kquants_legacy import LAYOUTS as L_LAYOUTS

__all__ = ["quantize_legacy_kernel"]

F32 = np.float32
I32 = np.int32


# The block extremes are found on the float32 bit patterns ``U`` (``B.view(uint32)``, finite input),
# packed with the element's index into one integer key whose maximum is C's answer: ``|x|`` orders
# like its bits without the sign, and ties go to the first index (``255 - j`` in the low byte), as
# ggml's strict ``if (amax < fabsf(v))`` keeps the first. A max over keys has no data-dependent
# branch (C's loop mispredicts at every new maximum): ~3x faster, and the same element.

@njit
def _first_abs_max(U, i, n):
    """Index of the first element of block ``i`` with the largest |x| (0 for a zero block)."""
    best = np.uint64(0)
    for j in range(n):
        best = max(best, np.uint64(U[i, j] & np.uint32(0x7FFFFFFF)) << np.uint64(8) | np.uint64(255 - j))
    return 255 - np.int64(best & np.uint64(255))


@njit
def _key(u):
    """An int64 that orders like the float32 whose bits are ``u``; -0.0 and +0.0 equal, as to C."""
    v = np.int64(np.int32(u))
    return v if v >= 0 else -(v & 0x7FFFFFFF)


@njit
def _first_min_max(B, U, i, n):
    """(min, max) of block ``i``: the first minimum and the first maximum, as C's strict ``<`` / ``>``."""
    lo, hi = np.int64(1) << 62, -(np.int64(1) << 62)
    for j in range(n):
        k = _key(U[i, j]) << 8
        lo, hi = min(lo, k | j), max(hi, k | (255 - j))
    return B[i, lo & 255], B[i, 255 - (hi & 255)]


@njit
def _roundf(v):
    """C's ``roundf`` (half away from zero), as an int: floor(|v|) + [frac >= 0.5], with v's sign."""
    a = abs(v)
    fl = np.floor(a)
    r = I32(fl + np.floor(F32(2) * (a - fl)))
    return r if v >= 0 else -r


@njit(float_division=True)
def _type0_block(B, U, i, n, bits, raw):
    """Q4_0 (``bits`` 4) / Q5_0 (5) of block ``i`` into ``raw[i]``; returns float32 d.
    d = max / -2^(bits-1), q = min(top, trunc(x / d + 2^(bits-1) + 0.5))."""
    half, top = 1 << (bits - 1), (1 << bits) - 1
    qs = 2 if bits == 4 else 6                                           # after d (and qh)
    mx = B[i, _first_abs_max(U, i, n)]                                   # the signed extreme
    d = (mx + F32(0)) / F32(-half)                                       # a zero block: +0.0 / -half, as ggml
    inv = F32(1) / d if d != 0 else F32(0)
    add = F32(half) + F32(0.5)
    qh = np.int64(0)
    for j in range(n // 2):
        q0 = min(top, I32(B[i, j] * inv + add))                          # C's cast truncates toward zero
        q1 = min(top, I32(B[i, j + n // 2] * inv + add))
        raw[i, qs + j] = (q0 & 0xF) | (q1 & 0xF) << 4
        if bits == 5:
            qh |= np.int64((q0 >> 4) & 1) << j | np.int64((q1 >> 4) & 1) << (j + 16)
    if bits == 5:
        for k in range(4):
            raw[i, 2 + k] = (qh >> (8 * k)) & 0xFF
    return d


@njit(float_division=True)
def _type1_block(B, U, i, n, bits, raw, m_out):
    """Q4_1 (``bits`` 4) / Q5_1 (5) of block ``i``; returns float32 d, stores m = min in ``m_out[i]``.
    d = (max - min) / top, q = trunc((x - m) / d + 0.5)."""
    top = (1 << bits) - 1
    clamp = top if bits == 4 else 1 << 30                                # Q5_1 does not clamp, as ggml
    qs = 4 if bits == 4 else 8                                           # after d, m (and qh)
    lo, hi = _first_min_max(B, U, i, n)
    d = (hi - lo) / F32(top)
    inv = F32(1) / d if d != 0 else F32(0)
    qh = np.int64(0)
    for j in range(n // 2):
        q0 = min(clamp, I32((B[i, j] - lo) * inv + F32(0.5)))
        q1 = min(clamp, I32((B[i, j + n // 2] - lo) * inv + F32(0.5)))
        raw[i, qs + j] = (q0 & 0xF) | (q1 & 0xF) << 4
        if bits == 5:
            qh |= np.int64((q0 >> 4) & 1) << j | np.int64((q1 >> 4) & 1) << (j + 16)
    if bits == 5:
        for k in range(4):
            raw[i, 4 + k] = (qh >> (8 * k)) & 0xFF
    m_out[i] = lo
    return d


@njit(float_division=True)
def _q8_0_block(B, U, i, n, raw):
    """Q8_0 of block ``i``: d = amax / 127, q = roundf(x / d); returns float32 d."""
    d = abs(B[i, _first_abs_max(U, i, n)]) / F32(127)
    inv = F32(1) / d if d != 0 else F32(0)
    for j in range(n):
        raw[i, 2 + j] = _roundf(B[i, j] * inv) & 0xFF
    return d


# one kernel per type: the constant ``bits`` folds into the inlined block function (a run-time ``bits``
# left its branches in the loop, 3x slower); ``n``, the block length, is read at run time (see above)

@njit(parallel=True, float_division=True)
def _q_q4_0(B, U, raw, d, m):
    for i in prange(B.shape[0]):
        d[i] = _type0_block(B, U, i, B.shape[1], 4, raw)


@njit(parallel=True, float_division=True)
def _q_q5_0(B, U, raw, d, m):
    for i in prange(B.shape[0]):
        d[i] = _type0_block(B, U, i, B.shape[1], 5, raw)


@njit(parallel=True, float_division=True)
def _q_q4_1(B, U, raw, d, m):
    for i in prange(B.shape[0]):
        d[i] = _type1_block(B, U, i, B.shape[1], 4, raw, m)


@njit(parallel=True, float_division=True)
def _q_q5_1(B, U, raw, d, m):
    for i in prange(B.shape[0]):
        d[i] = _type1_block(B, U, i, B.shape[1], 5, raw, m)


@njit(parallel=True, float_division=True)
def _q_q8_0(B, U, raw, d, m):
    for i in prange(B.shape[0]):
        d[i] = _q8_0_block(B, U, i, B.shape[1], raw)


@njit
def _trit(B, i, e, inv):
    """t = lroundf(x_e / d) + 1 in {0, 1, 2}."""
    return _roundf(B[i, e] * inv) + 1


@njit(float_division=True)
def _ternary_block(B, U, i, tq1, raw):
    """TQ1_0 (``tq1`` True, five trits a byte) / TQ2_0 (four 2-bit codes a byte) of block ``i``: d = amax."""
    amax = abs(B[i, _first_abs_max(U, i, B.shape[1])])
    inv = F32(1) / amax if amax != 0 else F32(0)
    if not tq1:
        for c in range(2):
            for m in range(32):
                v = 0
                for n in range(4):
                    v |= _trit(B, i, 128 * c + 32 * n + m, inv) << (2 * n)
                raw[i, 32 * c + m] = v
    else:
        for start, first, width, ntrit in ((0, 0, 32, 5), (32, 160, 16, 5), (48, 240, 4, 4)):
            for m in range(width):
                v = 0
                for n in range(5):                                   # Horner: first trit most significant
                    v = (3 * v + (_trit(B, i, first + m + width * n, inv) if n < ntrit else 0)) & 0xFF
                raw[i, start + m] = (v * 256 + 242) // 243           # ceil(v * 256 / 243); v is C's uint8
    return amax


@njit(parallel=True, float_division=True)
def _q_tq1_0(B, U, raw, d, m):
    for i in prange(B.shape[0]):
        d[i] = _ternary_block(B, U, i, True, raw)


@njit(parallel=True, float_division=True)
def _q_tq2_0(B, U, raw, d, m):
    for i in prange(B.shape[0]):
        d[i] = _ternary_block(B, U, i, False, raw)


_QUANT = {"Q4_0": _q_q4_0, "Q5_0": _q_q5_0, "Q4_1": _q_q4_1, "Q5_1": _q_q5_1, "Q8_0": _q_q8_0,
          "TQ1_0": _q_tq1_0, "TQ2_0": _q_tq2_0}


def quantize_legacy_kernel(B, qtype: str):
    """``B [nb, block]`` float32 -> ``raw [nb, nbytes]``; equals ``kquants_legacy.quantize_blocks``."""
    layout = L_LAYOUTS[qtype]
    B = np.ascontiguousarray(B, F32)
    raw = np.zeros((B.shape[0], layout.itemsize), np.uint8)
    d = np.empty(B.shape[0], F32)
    m = np.empty(B.shape[0], F32)
    _QUANT[qtype](B, B.view(np.uint32), raw, d, m)                      # the same bits, for the extremes
    y = raw.reshape(-1).view(layout)
    y["d"] = d.astype(np.float16)
    if "m" in layout.names:
        y["m"] = m.astype(np.float16)
    return raw
