"""Chapter 01 — the Numba kernels of the float-format codecs.

``FloatFormat.encode`` / ``decode`` run these on NumPy arrays; tests/test_formats.py proves them equal to
the readable ``minq.formats.encode_reference`` / ``decode_reference`` bit for bit (also as plain Python,
through ``minq._jit.py_func``). Two kinds:

Fast kernels, for every format that ``fast_ok`` accepts (all of minq's but E8M0; float32 decode only):
one pass, in parallel over chunks of ``CHUNK`` values, writing the codes (uint8 / uint16) or the
float32 values directly, the format's constants precomputed (``encode_consts`` / ``decode_consts``):

    encode, a = bits of |x| (31 bits), k = 23 - m:
      |x| >= 2^emin:  mag = RNE(a / 2^k) - (127 - bias) * 2^m
                      RNE by integer add-and-shift, (a + 2^(k-1) - 1 + bit k of a) >> k: the exponent field
                      rides along, so a carry out of the mantissa bumps it, as in the reference
      |x| <  2^emin:  mag = bits(|x| + 2^(emin - m + 23)) - bits(2^(emin - m + 23))
                      the float32 adder rounds |x| to a multiple of the format's smallest subnormal
                      2^(emin - m) (ties to even), the result's low mantissa bits count them
      then overflow (mag > max_mag, or ±Inf), NaN and the sign as in the reference; the number of NaN
      inputs is returned (a format without NaN raises afterwards: one pass, no separate isnan scan)
    decode, c = [s|E|M]:
      x = float32 with bits (E|M) << (23 - m), times 2^(127 - bias): a normal is re-biased, a subnormal
      (E = 0: a float32 subnormal M * 2^(-126 - m)) lands on M * 2^(1 - bias - m), both exactly;
      then the Inf/NaN codes, and the sign by negation (a sign-bit flip, NaN included), selects on
      float32 values rather than on bit patterns (1.4x faster: Numba does integer math in 64 bits).
      The OR of all codes is returned, for the range check.

Both are integer/float32 arithmetic without branches, which LLVM vectorises (a 256-entry table lookup
does not vectorise in Numba: measured 1.4x slower than this decode). The chunks are slices: a loop over
``range(a.size)`` of a slice vectorises, one over ``range(lo, hi)`` of the whole array did not.

Generic scalar kernels (``_encode_kernel`` / ``_decode_kernel``) follow the reference step by step for
everything else: float32 encode, E8M0 and custom formats outside ``fast_ok``. Conventions enter as ints,
in the order of ``minq.formats.CONVENTIONS``.
"""

from __future__ import annotations

import numpy as np

from minq._jit import njit, prange

_IEEE, _FN, _FNUZ, _NONE, _FNU = range(5)      # minq.formats.CONVENTIONS, as ints
_F32_INF, _F32_QNAN = 0x7F800000, 0x7FC00000    # float32 bit patterns of +Inf and the quiet NaN
CHUNK = 1 << 16                                 # values a parallel loop step


def fast_ok(fmt, encode: bool) -> bool:
    """Whether the fast kernels apply to ``fmt``: not E8M0, 1..22 mantissa bits (decode: up to 23),
    0 <= bias <= 127 and every finite value a float32 (emax <= 127): all of minq's formats but E8M0,
    and float32 for decode. (With no mantissa bit the add-and-shift would break ties towards an even
    exponent, the reference towards an even count: they differ.)"""
    return (fmt.convention != "fnu" and 1 <= fmt.man_bits <= (22 if encode else 23)
            and 0 <= fmt.bias <= 127 and fmt.emax <= 127)


# ---- fast encode ------------------------------------------------------------------------------------

@njit
def _encode_chunk(u, q, s, m, emin, rebias, max_mag, over_mag, over_nan, nan_pos, nan_neg, fnuz):
    """u [n] int32 float32 bits -> q [n] codes (see the module docstring); returns the NaN count."""
    k = 23 - m
    round_half = (1 << (k - 1)) - 1
    sub_bits = (emin + 127) << 23                                  # bits of 2^emin
    magic_bits = (emin - m + 23 + 127) << 23                      # bits of 2^(emin - m + 23)
    magic = np.int32(magic_bits).view(np.float32)
    n_nan = 0
    for i in range(u.size):
        b = np.int64(u[i])
        sign, a = (b >> 31) & 1, b & 0x7FFFFFFF
        mag = ((a + round_half + ((a >> k) & 1)) >> k) - rebias    # |x| >= 2^emin
        sub = np.int64(np.float32(np.int32(a).view(np.float32) + magic).view(np.int32)) - magic_bits
        mag = sub if a < sub_bits else mag                          # |x| < 2^emin
        over = (mag > max_mag) | (a == _F32_INF)
        is_nan = a > _F32_INF
        n_nan += is_nan
        mag = over_mag if over else mag
        is_nan = is_nan | (over & over_nan)
        c = (sign << s) | mag
        c = 0 if fnuz and mag == 0 else c                          # fnuz: -0 -> +0
        c = (nan_neg if sign else nan_pos) if is_nan else c
        q[i] = c
    return n_nan


@njit(parallel=True)
def _encode_fast(u, q, s, m, emin, rebias, max_mag, over_mag, over_nan, nan_pos, nan_neg, fnuz):
    n_chunks = -(-u.size // CHUNK)
    n_nan = np.zeros(n_chunks, np.int64)
    for j in prange(n_chunks):
        lo = j * CHUNK
        n_nan[j] = _encode_chunk(u[lo:lo + CHUNK], q[lo:lo + CHUNK], s, m, emin, rebias, max_mag,
                                 over_mag, over_nan, nan_pos, nan_neg, fnuz)
    return n_nan.sum()


def encode_fast(x, q, fmt, saturate: bool) -> int:
    """float32 ``x [n]`` -> codes ``q [n]`` (code dtype) for a ``fast_ok`` format; returns the NaN count."""
    return int(_encode_fast(x.view(np.int32), q, *encode_consts(fmt, saturate)))


def encode_consts(fmt, saturate: bool) -> tuple:
    """The constants of ``_encode_chunk`` (after ``u, q``) for ``fmt``."""
    e, m, s = fmt.exp_bits, fmt.man_bits, fmt.exp_bits + fmt.man_bits
    inf_mag = ((1 << e) - 1) << m
    if saturate or fmt.convention == "none":
        over_mag, over_nan = fmt.max_mag, False                    # ±max
    elif fmt.convention == "ieee":
        over_mag, over_nan = inf_mag, False                        # ±Inf
    else:
        over_mag, over_nan = fmt.max_mag, True                     # fn, fnuz: NaN
    nan_mag = {"ieee": inf_mag | (1 << (m - 1)), "fn": (1 << s) - 1}.get(fmt.convention, 0)
    nan_pos, nan_neg = (1 << s, 1 << s) if fmt.convention == "fnuz" else (nan_mag, (1 << s) | nan_mag)
    return (s, m, fmt.emin, (127 - fmt.bias) << m, fmt.max_mag, over_mag, over_nan, nan_pos, nan_neg,
            fmt.convention == "fnuz")


# ---- fast decode ------------------------------------------------------------------------------------

@njit
def _decode_chunk(c, y, s, m, bias, inf_code, nan_lo, nan_code):
    """c [n] codes -> y [n] float32 values; returns the OR of the codes."""
    scale = np.int32((254 - bias) << 23).view(np.float32)          # 2^(127 - bias)
    inf, qnan = np.int32(_F32_INF).view(np.float32), np.int32(_F32_QNAN).view(np.float32)
    mask = (1 << s) - 1
    acc = 0
    for i in range(c.size):
        ci = np.int64(c[i])
        acc |= ci
        em = ci & mask                                              # [E|M]
        v = np.int32(em << (23 - m)).view(np.float32) * scale
        v = qnan if em >= nan_lo else v
        v = inf if em == inf_code else v
        v = -v if (ci >> s) & 1 else v                              # the sign bit (of a NaN too)
        y[i] = qnan if ci == nan_code else v                        # fnuz: the "-0" code
    return acc


@njit(parallel=True)
def _decode_fast(c, y, s, m, bias, inf_code, nan_lo, nan_code):
    n_chunks = -(-c.size // CHUNK)
    acc = np.zeros(n_chunks, np.int64)
    for j in prange(n_chunks):
        lo = j * CHUNK
        acc[j] = _decode_chunk(c[lo:lo + CHUNK], y[lo:lo + CHUNK], s, m, bias, inf_code, nan_lo, nan_code)
    a = 0
    for j in range(n_chunks):
        a |= acc[j]
    return a


def decode_fast(c, y, fmt) -> int:
    """Codes ``c [n]`` (uint8/16/32) -> float32 values ``y [n]`` for a ``fast_ok`` format; returns the OR
    of all codes (a code above ``max_code`` sets a bit above it)."""
    return int(_decode_fast(c, y, *decode_consts(fmt)))


def decode_consts(fmt) -> tuple:
    """The constants of ``_decode_chunk`` (after ``c, bits``) for ``fmt``."""
    e, m, s = fmt.exp_bits, fmt.man_bits, fmt.exp_bits + fmt.man_bits
    inf_mag, never = ((1 << e) - 1) << m, 1 << s                   # ``never``: no [E|M] reaches it
    inf_code, nan_lo, nan_code = {"ieee": (inf_mag, inf_mag + 1, -1), "fn": (-1, (1 << s) - 1, -1),
                                  "fnuz": (-1, never, 1 << s)}.get(fmt.convention, (-1, never, -1))
    return s, m, fmt.bias, inf_code, nan_lo, nan_code


# ---- generic scalar kernels ---------------------------------------------------------------------------

@njit
def _encode_kernel(u, q, e, m, bias, conv, max_mag, saturate):
    """u [n] uint32 float32 bit patterns -> q [n] codes (see encode_reference); returns the NaN count."""
    n_nan = 0
    for i in range(u.size):
        b = np.int64(u[i])
        sign, a = b >> 31, b & 0x7FFFFFFF
        exp, man = a >> 23, a & 0x7FFFFF
        n_nan += a > _F32_INF
        if conv == _FNU:
            if exp != 0:
                c = exp + (1 if man >= 0x400000 else 0)
            else:
                c = 1 if man >= 0x600000 else 0
            if c >= 255:
                c = 254 if saturate else 255
            if sign == 1 or a == 0 or a > _F32_INF:
                c = 255
            q[i] = c
            continue
        if exp != 0:
            sig, e2, ex = man | 0x800000, exp - 150, exp - 127
        else:
            sig, e2, ex = man, -149, -127
        emin = 1 - bias
        eq = max(ex, emin)
        k = min(max(eq - m - e2, 0), 40)
        n = sig >> k
        r = sig - (n << k)
        half = (1 << k) >> 1
        if r > half or (r == half and half > 0 and (n & 1) == 1):
            n += 1
        mag = (eq - emin) * (1 << m) + n
        is_nan = a > _F32_INF
        if mag > max_mag or a == _F32_INF:
            if saturate or conv == _NONE:
                mag = max_mag
            elif conv == _IEEE:
                mag = ((1 << e) - 1) << m
            else:
                is_nan = True
        c = (sign << (e + m)) | mag
        if is_nan:
            if conv == _IEEE:
                c = (sign << (e + m)) | (((1 << e) - 1) << m) | (1 << (m - 1))
            elif conv == _FN:
                c = (sign << (e + m)) | ((1 << (e + m)) - 1)
            elif conv == _FNUZ:
                c = 1 << (e + m)
        elif conv == _FNUZ and mag == 0:
            c = 0
        q[i] = c
    return n_nan


@njit
def _decode_kernel(c, bits, e, m, bias, conv):
    """c [n] uint32 codes -> bits [n] uint32 float32 bit patterns (see decode_reference)."""
    for i in range(c.size):
        ci = np.int64(c[i])
        if conv == _FNU:
            bits[i] = _F32_QNAN if ci == 255 else 0x400000 if ci == 0 else ci << 23
            continue
        sign = (ci >> (e + m)) & 1
        E, M = (ci >> m) & ((1 << e) - 1), ci & ((1 << m) - 1)
        top = E == (1 << e) - 1
        if conv == _IEEE and top:
            b = _F32_INF if M == 0 else _F32_QNAN
        elif conv == _FN and top and M == (1 << m) - 1:
            b = _F32_QNAN
        elif E != 0:
            b = ((E - bias + 127) << 23) | (M << (23 - m))
        elif M == 0:
            b = 0
        else:
            p = 0
            while (M >> (p + 1)) != 0:
                p += 1
            f_exp = 1 - bias - m + p + 127
            b = (f_exp << 23) | ((M - (1 << p)) << (23 - p)) if f_exp >= 1 else M << (150 - bias - m)
        b |= sign << 31
        if conv == _FNUZ and ci == 1 << (e + m):
            b = _F32_QNAN
        bits[i] = b
