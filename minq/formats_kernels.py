"""Chapter 01 — the Numba kernels of the float-format codecs: the steps of ``minq.formats``'
``encode_reference`` / ``decode_reference``, one scalar at a time.

``FloatFormat.encode`` / ``decode`` run these on NumPy arrays; tests/test_formats.py proves them equal
to the readable references bit for bit (also as plain Python, through ``minq._jit.py_func``). The
formats' conventions enter as ints, in the order of ``minq.formats.CONVENTIONS``.
"""

from __future__ import annotations

import numpy as np

from minq._jit import njit

_IEEE, _FN, _FNUZ, _NONE, _FNU = range(5)      # minq.formats.CONVENTIONS, as ints
_F32_INF, _F32_QNAN = 0x7F800000, 0x7FC00000    # float32 bit patterns of +Inf and the quiet NaN


@njit
def _encode_kernel(u, q, e, m, bias, conv, max_mag, saturate):
    """u [n] uint32 float32 bit patterns -> q [n] uint32 codes (see encode_reference)."""
    for i in range(u.size):
        b = np.int64(u[i])
        sign, a = b >> 31, b & 0x7FFFFFFF
        exp, man = a >> 23, a & 0x7FFFFF
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
