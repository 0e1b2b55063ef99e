"""Chapter 10 — Numba kernels of MX and NVFP4: one fused pass per block, the blocks in parallel.

They equal the readable NumPy code of ``minq.mx`` (``quantize_reference``, ``quantize_nvfp4_reference``,
``dequantize_reference``) byte for byte and bit for bit (tests/test_mx.py); that code is the one to read,
with the formulas, the bit layouts and where minq departs from torchao. Here, per block of ``k`` values
(rows of ``X [n_blocks, k]``):

    mx_quantize    amax = max |x|, as the integer max of the bits of |x| (the same number for finite
                   floats, and it vectorises; a non-finite value shows as amax bits >= those of Inf)
                   c    = clamp(E(amax) - emax, -127, 127) + 127         (scale rule, from amax's bits)
                   P    = RNE(x * 2^(127 - c)) in the element format, saturating at ±max
                   (x * 2^(127 - c) is exactly the reference's x / 2^(c - 127): a power of two's
                   reciprocal is exact, 2^-127 included, so both round the same real number)
    mx_dequantize  x_hat = decode(P) * 2^(c - 127)              (code 0: 2^-127; 255: Inf, as _pow2)
                   (the OR of the codes is kept: a code beyond the format goes to the reference, which raises)
    nvfp4_amax     the blocks' amax (pass 1; the two-level tensor scale needs all of them first)
    nvfp4_quantize s8 = e4m3(clamp(amax / 6 [/ pts], 2^-6, 448)), recip = (1 / pts) / s8f (or 1 / s8f),
                   P = e2m1(clamp(x * recip, -6, 6)); NaN products (0 * Inf) counted, mx raises
    nvfp4_dequantize  x_hat = decode(P) * (pts * s8f)

Element encode and decode are chapter 01's fast kernels (``minq.formats_kernels``, whose module
docstring derives them) specialised: the encoder without Inf/NaN inputs and always saturating, the
decoder without fnuz. They are repeated here because Numba's cache does not follow jitted helpers into
another module (``minq._jit``); tests/test_mx.py checks every code of every element format against
chapter 01. The formats' constants come from ``minq.formats_kernels.encode_consts`` / ``decode_consts``.
"""

from __future__ import annotations

import numpy as np

from minq._jit import njit, prange
from minq.formats_kernels import decode_consts, encode_consts

__all__ = ["mx_quantize", "mx_dequantize", "nvfp4_amax", "nvfp4_quantize", "nvfp4_dequantize"]

F32 = np.float32
_F32_INF, _F32_QNAN = 0x7F800000, 0x7FC00000
RULES = ("floor", "rceil", "ceil", "even")        # minq.mx.SCALE_RULES, as ints 0-3
CHUNK = 1 << 14                                   # values a parallel loop step (whole blocks)


@njit
def _encode_sat(v, s, m, emin, rebias, max_mag):
    """Finite float32 ``v`` -> code [s|E|M] of the element format, RNE, saturating at ±max."""
    k = 23 - m
    b = np.int64(np.float32(v).view(np.int32))
    sign, a = (b >> 31) & 1, b & 0x7FFFFFFF
    mag = ((a + ((1 << (k - 1)) - 1) + ((a >> k) & 1)) >> k) - rebias     # |v| >= 2^emin
    magic_bits = (emin - m + 150) << 23                                      # 2^(emin - m + 23)
    sub = np.int64(np.float32(np.int32(a).view(np.float32) + np.int32(magic_bits).view(np.float32))
                   .view(np.int32)) - magic_bits                             # |v| < 2^emin
    mag = sub if a < (emin + 127) << 23 else mag
    return (sign << s) | min(mag, max_mag)


@njit
def _decode_one(ci, s, m, bias, inf_code, nan_lo):
    """Code [s|E|M] -> float32 (ieee, fn and none conventions)."""
    em = ci & ((1 << s) - 1)
    v = np.int32(em << (23 - m)).view(np.float32) * np.int32((254 - bias) << 23).view(np.float32)
    v = np.int32(_F32_QNAN).view(np.float32) if em >= nan_lo else v
    v = np.int32(_F32_INF).view(np.float32) if em == inf_code else v
    return -v if (ci >> s) & 1 else v


@njit
def _amax_bits(u):
    """max of the bits of |x| over one block (``u``: int32 view of its floats)."""
    amax = np.int64(0)
    for i in range(u.size):
        amax = max(amax, np.int64(u[i]) & 0x7FFFFFFF)
    return amax


@njit
def _scale_code(ua, rule, m, emax, fmax):
    """E8M0 code of the block scale from the bits ``ua`` of amax (minq.mx._scale_code)."""
    exp, man = ua >> 23, ua & 0x7FFFFF
    if rule == 0:                                                           # floor
        e = exp - 127 - emax
    elif rule == 2:                                                         # ceil
        e = exp - 127 + (1 if man > 0 else 0) - emax
    elif rule == 3:                                                         # even
        e = (((ua + (1 << (22 - m))) >> 23) & 0xFF) - 127 - emax
    else:                                                                   # rceil: d = fl32(amax / max)
        d = np.int64(np.float32(np.int32(ua).view(np.float32) / fmax).view(np.int32))
        dexp, dman = d >> 23, d & 0x7FFFFF
        e = (1 if dman > 0x400000 else 0) - 127 if dexp == 0 else dexp - 127 + (1 if dman > 0 else 0)
    return min(max(e, -127), 127) + 127


@njit(float_division=True)
def _mx_quantize_chunk(X, U, P, S, rule, emax, fmax, s, m, emin, rebias, max_mag):
    """Blocks ``X [nb, k]`` -> codes ``P``, scales ``S``; returns whether a block holds NaN/Inf."""
    nb = X.shape[0]
    ua = np.empty(nb, np.int64)
    for b in range(nb):
        ua[b] = _amax_bits(U[b])
    inv = np.empty(nb, np.float32)
    worst = np.int64(0)
    for b in range(nb):                            # the scales in a loop of their own, over the blocks
        c = _scale_code(ua[b], rule, m, emax, fmax)
        S[b] = c
        inv[b] = np.int32((254 - c) << 23 if c < 254 else 0x400000).view(np.float32)   # 2^(127 - c)
        worst = max(worst, ua[b])
    for b in range(nb):
        Xb, Pb, r = X[b], P[b], inv[b]            # row views: cheaper indexing than X[b, i]
        for i in range(Xb.size):
            Pb[i] = _encode_sat(Xb[i] * r, s, m, emin, rebias, max_mag)
    return worst >= _F32_INF


@njit(parallel=True, float_division=True)
def _mx_quantize(X, U, P, S, rule, emax, fmax, s, m, emin, rebias, max_mag):
    nb, step = X.shape[0], max(1, CHUNK // X.shape[1])
    bad = np.zeros(-(-nb // step), np.uint8)
    for j in prange(bad.size):
        lo, hi = j * step, min(nb, (j + 1) * step)
        bad[j] = _mx_quantize_chunk(X[lo:hi], U[lo:hi], P[lo:hi], S[lo:hi], rule, emax, fmax, s, m, emin, rebias,
                                    max_mag)
    return bad.any()


def mx_quantize(X, fmt, rule: str, emax: int):
    """float32 ``X [n_blocks, k]`` -> (codes uint8 [n_blocks, k], E8M0 scales uint8 [n_blocks]) in the
    element format ``fmt``; ValueError where X holds NaN/Inf (found in the same pass)."""
    X = np.require(X, F32, "C")
    P, S = np.empty(X.shape, np.uint8), np.empty(X.shape[0], np.uint8)
    s, m, emin, rebias, max_mag = encode_consts(fmt, True)[:5]
    if _mx_quantize(X, X.view(np.int32), P, S, RULES.index(rule), emax, F32(fmt.max), s, m, emin, rebias, max_mag):
        raise ValueError("x contains NaN or Inf")
    return P, S


@njit
def _mx_dequantize_chunk(P, S, Y, s, m, bias, inf_code, nan_lo):
    """Codes ``P [nb, k]``, scales ``S [nb]`` -> ``Y [nb, k]``; returns the OR of the codes."""
    nb = P.shape[0]
    X = np.empty(nb, np.float32)
    for b in range(nb):
        c = np.int64(S[b])
        X[b] = np.int32(0x400000 if c == 0 else c << 23).view(np.float32)  # 2^(c - 127)
    a = np.int64(0)
    for b in range(nb):
        Pb, Yb, sc = P[b], Y[b], X[b]
        for i in range(Pb.size):
            ci = np.int64(Pb[i])
            a |= ci
            Yb[i] = _decode_one(ci, s, m, bias, inf_code, nan_lo) * sc
    return a


@njit(parallel=True)
def _mx_dequantize(P, S, Y, s, m, bias, inf_code, nan_lo):
    nb, step = P.shape[0], max(1, CHUNK // P.shape[1])
    acc = np.zeros(-(-nb // step), np.int64)
    for j in prange(acc.size):
        lo, hi = j * step, min(nb, (j + 1) * step)
        acc[j] = _mx_dequantize_chunk(P[lo:hi], S[lo:hi], Y[lo:hi], s, m, bias, inf_code, nan_lo)
    a = 0
    for j in range(acc.size):
        a |= acc[j]
    return a


def mx_dequantize(t, fmt):
    """An ``MXTensor``'s values (element format ``fmt``), or None where the kernel does not apply: codes
    and scales not NumPy uint8 of the tensor's shapes, or a code out of range (the reference raises)."""
    k, shape = t.block_size, tuple(t.shape)
    if not (shape[-1] % k == 0 and _u8(t.codes, shape) and _u8(t.scales, (*shape[:-1], shape[-1] // k))):
        return None
    P, Y = t.codes.reshape(-1, k), np.empty(shape, F32)
    s, m, bias, inf_code, nan_lo, _ = decode_consts(fmt)
    seen = _mx_dequantize(P, t.scales.reshape(-1), Y.reshape(P.shape), s, m, bias, inf_code, nan_lo)
    return Y if seen <= fmt.max_code else None


def _u8(a, shape) -> bool:
    """A NumPy uint8 array of ``shape``: what the dequantize kernels take."""
    return isinstance(a, np.ndarray) and a.dtype == np.uint8 and tuple(a.shape) == tuple(shape)


# ---- NVFP4 -----------------------------------------------------------------------------------------

@njit(parallel=True)
def _nvfp4_amax(U, A):
    for b in prange(U.shape[0]):
        A[b] = _amax_bits(U[b])


def nvfp4_amax(X):
    """float32 ``X [n_blocks, 16]`` -> amax float32 [n_blocks]; ValueError where X holds NaN/Inf."""
    A = np.empty(X.shape[0], np.int32)
    _nvfp4_amax(X.view(np.int32), A)
    if A.max() >= _F32_INF:
        raise ValueError("x contains NaN or Inf")
    return A.view(F32)


@njit(float_division=True)
def _nvfp4_quantize_chunk(X, A, pts, two_level, P, S, e4, e2, d4):
    nb = X.shape[0]
    inv_pts = F32(1) / pts                                                 # Inf for pts < 2^-128, as torchao
    recip = np.empty(nb, np.float32)
    for b in range(nb):                            # the scales in a loop of their own (2x faster)
        bs = A[b] / F32(6)
        if two_level:
            bs = bs / pts
        c = _encode_sat(min(max(bs, F32(2.0**-6)), F32(448)), e4[0], e4[1], e4[2], e4[3], e4[4])
        S[b] = c
        s8f = _decode_one(c, d4[0], d4[1], d4[2], d4[3], d4[4])
        recip[b] = inv_pts / s8f if two_level else F32(1) / s8f
    n_nan = 0
    half = nb // 2                                 # pairs of blocks as rows of 32: 2x faster than rows of 16
    X2, P2 = X[:2 * half].reshape(half, 32), P[:2 * half].reshape(half, 32)
    for r in range(half):
        Xr, Pr, r0, r1 = X2[r], P2[r], recip[2 * r], recip[2 * r + 1]
        for i in range(Xr.size):
            v = Xr[i] * (r0 if i < 16 else r1)
            n_nan += v != v
            Pr[i] = _encode_sat(min(max(v, F32(-6)), F32(6)), e2[0], e2[1], e2[2], e2[3], e2[4])
    for b in range(2 * half, nb):                  # an odd block out
        for i in range(16):
            v = X[b, i] * recip[b]
            n_nan += v != v
            P[b, i] = _encode_sat(min(max(v, F32(-6)), F32(6)), e2[0], e2[1], e2[2], e2[3], e2[4])
    return n_nan


@njit(parallel=True, float_division=True)
def _nvfp4_quantize(X, A, pts, two_level, P, S, e4, e2, d4):
    nb, step = X.shape[0], CHUNK // 16
    n_nan = np.zeros(-(-nb // step), np.int64)
    for j in prange(n_nan.size):
        lo, hi = j * step, min(nb, (j + 1) * step)
        n_nan[j] = _nvfp4_quantize_chunk(X[lo:hi], A[lo:hi], pts, two_level, P[lo:hi], S[lo:hi], e4, e2, d4)
    return n_nan.sum()


def nvfp4_quantize(X, A, pts, e4m3, e2m1):
    """``X [n_blocks, 16]``, its amax ``A``, tensor scale ``pts`` (None: one level) -> (E2M1 codes uint8
    [n_blocks, 16], E4M3 block scale codes uint8 [n_blocks]). A NaN product (0 * Inf, pts < 2^-128)
    raises as ``e2m1.encode`` does."""
    P, S = np.empty(X.shape, np.uint8), np.empty(X.shape[0], np.uint8)
    n_nan = _nvfp4_quantize(X, A, F32(1 if pts is None else pts), pts is not None, P, S,
                            encode_consts(e4m3, True)[:5], encode_consts(e2m1, True)[:5], decode_consts(e4m3)[:5])
    e2m1._check_nan(n_nan > 0)
    return P, S


@njit
def _nvfp4_dequantize_chunk(P, S, ts, two_level, Y, d4, d2):
    nb = P.shape[0]
    scale = np.empty(nb, np.float32)
    for b in range(nb):
        sc = _decode_one(np.int64(S[b]), d4[0], d4[1], d4[2], d4[3], d4[4])
        scale[b] = ts * sc if two_level else sc
    a = np.int64(0)
    half = nb // 2                                 # pairs of blocks as rows of 32 (as in the quantizer)
    P2, Y2 = P[:2 * half].reshape(half, 32), Y[:2 * half].reshape(half, 32)
    for r in range(half):
        Pr, Yr, s0, s1 = P2[r], Y2[r], scale[2 * r], scale[2 * r + 1]
        for i in range(Pr.size):
            ci = np.int64(Pr[i])
            a |= ci
            Yr[i] = _decode_one(ci, d2[0], d2[1], d2[2], d2[3], d2[4]) * (s0 if i < 16 else s1)
    for b in range(2 * half, nb):
        for i in range(16):
            ci = np.int64(P[b, i])
            a |= ci
            Y[b, i] = _decode_one(ci, d2[0], d2[1], d2[2], d2[3], d2[4]) * scale[b]
    return a


@njit(parallel=True)
def _nvfp4_dequantize(P, S, ts, two_level, Y, d4, d2):
    nb, step = P.shape[0], CHUNK // 16
    acc = np.zeros(-(-nb // step), np.int64)
    for j in prange(acc.size):
        lo, hi = j * step, min(nb, (j + 1) * step)
        acc[j] = _nvfp4_dequantize_chunk(P[lo:hi], S[lo:hi], ts, two_level, Y[lo:hi], d4, d2)
    a = 0
    for j in range(acc.size):
        a |= acc[j]
    return a


def nvfp4_dequantize(t, e4m3, e2m1):
    """An ``NVFP4Tensor``'s values, or None where the kernel does not apply (as ``mx_dequantize``; also a
    tensor scale that is not a float32 NumPy scalar)."""
    shape, ts, k = tuple(t.shape), t.tensor_scale, 16
    if not (shape[-1] % k == 0 and _u8(t.codes, shape) and _u8(t.block_scales, (*shape[:-1], shape[-1] // k))
            and (ts is None or (isinstance(ts, (np.float32, np.ndarray)) and ts.dtype == F32 and ts.ndim == 0))):
        return None
    P, Y = t.codes.reshape(-1, k), np.empty(shape, F32)
    seen = _nvfp4_dequantize(P, t.block_scales.reshape(-1), F32(1 if ts is None else ts), ts is not None,
                             Y.reshape(P.shape), decode_consts(e4m3)[:5], decode_consts(e2m1)[:5])
    return Y if seen <= e2m1.max_code else None
