"""Chapter 10 — Numba kernels of NF4: one block of the flattened weight per loop step.

They equal ``minq.nf4.quantize_reference`` / ``dequantize_reference`` byte for byte and bit for bit
(tests/test_nf4.py); that NumPy code is the one to read, with the formula and the byte layout:

    quantize_kernel(x [n] float32, block, midpoints [15]) -> (packed [ceil(n / 2)] uint8, absmax [n_blocks], finite)
    dequantize_kernel(packed, absmax [n_blocks] float32, n, block, codebook [16]) -> x_hat [n] float32

The codebook and its midpoints come in as arguments (``minq.nf4.CODEBOOK``, ``MIDPOINTS``), so the
numbers live in one place. The full blocks run as a 2-D ``[n_blocks, block]`` view in parallel, the
partial last block (if any) after them. Per block: the absmax (the integer max of the bits of |x|: the
same number for finite floats, and it vectorises where a float max does not; a NaN/Inf shows as bits at
or above Inf's, so the finiteness check costs no pass of its own), then each value's code is the number
of midpoints strictly below its scaled value (15 branch-free comparisons; ties go to the lower code,
and the reference's clamp to [-1, 1] changes no count). A full block scales by the float32 reciprocal
``1 / max(absmax, 1e-38)``; the partial last block divides by ``am = max(absmax, 1e-38)`` and stores
``am``, as bitsandbytes does. ``block`` is even, so every block starts on a byte; an odd ``n`` pads the
low nibble of the last byte with the code of 0.0. Inner loops run over row views (``Pb = P[b]``), of
run-time length, which LLVM vectorises rather than unrolls (see ``minq.kquants_kernels``); a row view
also indexes faster than ``P[b, j]`` (dequantize 1.7x).
"""

from __future__ import annotations

import numpy as np

from minq._jit import njit, prange

__all__ = ["quantize_kernel", "dequantize_kernel"]

F32 = np.float32
TINY = F32(1e-38)        # bitsandbytes' absmax.clamp(min=1e-38), as float32 (a subnormal)
ZERO_CODE = 7            # the code of 0.0: what the pad nibble of an odd n holds


@njit
def _code(v, mid):
    """Number of midpoints ``< v`` (``mid [15]`` ascending): the nearest code, ties to the lower one."""
    q = np.int32(0)
    for k in range(15):                                   # unrolled: 15 compares, no branch
        q += np.int32(v > mid[k])
    return q


@njit(parallel=True, float_division=True)
def _quantize_full(X, U, mid, P, absmax):
    """Full blocks ``X [nb, block]`` (``U``: its int32 view) -> bytes ``P [nb, block / 2]``, ``absmax [nb]``:
    times the reciprocal. Returns whether a block holds NaN/Inf (its amax bits at or above Inf's)."""
    bad = np.zeros(X.shape[0], np.uint8)
    for b in prange(X.shape[0]):
        Xb, Ub, Pb = X[b], U[b], P[b]                     # row views: cheaper indexing than X[b, i]
        ab = np.int64(0)
        for i in range(Ub.size):                          # amax as the integer max of the bits of |x|
            ab = max(ab, np.int64(Ub[i]) & 0x7FFFFFFF)
        bad[b] = ab >= 0x7F800000
        amax = np.int32(ab).view(np.float32)
        absmax[b] = amax
        inv = F32(1) / max(amax, TINY)
        for j in range(Pb.size):                          # Pb.size read at run time: LLVM vectorises
            Pb[j] = (_code(Xb[2 * j] * inv, mid) << 4) | _code(Xb[2 * j + 1] * inv, mid)
    return bad.any()


@njit(float_division=True)
def _quantize_tail(x, mid, p):
    """The partial last block ``x [r]`` -> bytes ``p [ceil(r / 2)]``; returns the stored ``am``."""
    amax = F32(0)
    for i in range(x.shape[0]):
        amax = max(amax, abs(x[i]))
    am = max(amax, TINY)
    for i in range(0, x.shape[0], 2):                     # divided by am (not times 1 / am)
        lo = _code(x[i + 1] / am, mid) if i + 1 < x.shape[0] else ZERO_CODE
        p[i >> 1] = (_code(x[i] / am, mid) << 4) | lo
    return am


@njit(parallel=True)
def _dequantize_full(P, absmax, code, Y):
    """Bytes ``P [nb, block / 2]`` -> ``Y [nb, block]``: ``code[q] * absmax``, high nibble first."""
    for b in prange(P.shape[0]):
        a, Pb, Yb = absmax[b], P[b], Y[b]                 # row views (1.7x faster than P[b, j])
        for j in range(Pb.size):
            p = Pb[j]
            Yb[2 * j] = code[p >> 4] * a
            Yb[2 * j + 1] = code[p & 15] * a


@njit
def _dequantize_tail(p, a, code, y):
    """The partial last block: bytes ``p`` -> ``y [r]`` = ``code[q] * a``."""
    for i in range(y.shape[0]):
        byte = np.int32(p[i >> 1])
        y[i] = code[byte >> 4 if i % 2 == 0 else byte & 15] * a


def quantize_kernel(x, block: int, midpoints):
    """``x [n]`` float32 -> ``(packed uint8 [ceil(n / 2)], absmax float32 [ceil(n / block)], finite)``:
    ``finite`` False when x holds NaN/Inf (checked in the same pass; the caller raises)."""
    x = np.ascontiguousarray(x, F32).reshape(-1)
    mid = np.ascontiguousarray(midpoints, F32)
    n, full = x.size, x.size - x.size % block
    packed = np.empty((n + 1) // 2, np.uint8)
    absmax = np.empty(-(-n // block), F32)
    X = x[:full].reshape(-1, block)
    bad = _quantize_full(X, X.view(np.int32), mid, packed[:full // 2].reshape(-1, block // 2), absmax[:full // block])
    if full < n:
        bad |= not np.isfinite(x[full:]).all()
        absmax[-1] = _quantize_tail(x[full:], mid, packed[full // 2:])
    return packed, absmax, not bad


def dequantize_kernel(packed, absmax, n: int, block: int, codebook):
    """``packed [ceil(n / 2)]`` uint8, ``absmax [ceil(n / block)]`` float32 -> float32 ``[n]``."""
    packed = np.ascontiguousarray(packed, np.uint8).reshape(-1)
    absmax, code = np.ascontiguousarray(absmax, F32), np.ascontiguousarray(codebook, F32)
    out = np.empty(n, F32)
    full = n - n % block
    _dequantize_full(packed[:full // 2].reshape(-1, block // 2), absmax[:full // block], code,
                     out[:full].reshape(-1, block))
    if full < n:
        _dequantize_tail(packed[full // 2:], absmax[-1], code, out[full:])
    return out
