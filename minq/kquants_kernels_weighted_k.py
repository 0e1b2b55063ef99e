"""Chapter 08 — the super-block stage of the k-quant kernels with an importance matrix (Q2_K ... Q6_K).

``minq.kquants_kernels_weighted`` searches every sub-block (codes ``L``, scale, min, sum of weights
``sw``); this module does, per super-block and after llama.cpp's ``quantize_row_<type>_impl``
(ggml-quants.c), the rest: the sub-block scales quantized against one super-scale, then, with the
super-scales rounded to fp16 by NumPy in between (Numba has no float16), the codes rounded again
with the scales as stored and packed:

    _scales_k(kind, s, m, sw) -> S, M (the sub-block scales and mins as C stores them), d, dmin
        Q2_K, Q4_K, Q5_K   make_qp_quants(15 / 63, sw) on the scales and on the mins     (``_qp``)
        Q3_K               make_qx_quants(32, sw) on the scales                           (``_qx``)
        Q6_K               -128 / the signed largest scale, as without an imatrix (NaN skipped)
    d16 = d.astype(float16)                                                   (NumPy, RNE)
    _pack_k(B, L, S, M, float32(d16), ...) -> raw [nb, nbytes]

Both kernels run one super-block per step of a parallel loop, in float32 and C's order of operations;
the bytes equal ``minq.kquants_weighted``'s (tests/test_kquants_weighted.py). Layouts: ``minq.kquants_k``.
"""

from __future__ import annotations

import numpy as np

from minq._jit import njit, prange

__all__ = ["superblock_stage"]

F32 = np.float32
_EPS = F32(1e-15)                                   # GROUP_MAX_EPS: below it a sub-block is all zero


@njit
def _nearest_int(f):
    """ggml's ``nearest_int``: round half to even in range; outside it, the same bit trick as ggml."""
    if abs(f) <= F32(4194303.0):
        return np.int64(np.rint(f))
    buf = np.empty(1, np.float32)
    buf[0] = f + F32(12582912.0)
    return np.int64(buf.view(np.int32)[0] & 0x7FFFFF) - 0x400000


@njit
def _signed_max(x):
    """(the first value of largest |x|, that |x|), as ggml's ``if (ax > amax)`` loop: NaN never wins,
    all zeros (or all NaN) give (0, 0)."""
    mx, amax = F32(0), F32(0)
    for i in range(x.shape[0]):
        if abs(x[i]) > amax:
            amax, mx = abs(x[i]), x[i]
    return mx, amax


@njit(float_division=True)
def _qx(x, w, nmax, L):
    """``make_qx_quants(n, nmax, x, L, 1, w)``: the scale; codes ``L`` in 0..2 nmax - 1."""
    n = x.shape[0]
    mx, amax = _signed_max(x)
    if amax < _EPS:
        L[:n] = 0
        return F32(0)
    iscale = F32(-nmax) / mx
    sumlx, suml2 = F32(0), F32(0)
    for i in range(n):
        l = max(-nmax, min(nmax - 1, _nearest_int(iscale * x[i])))
        L[i] = l + nmax
        sumlx += w[i] * x[i] * F32(l)
        suml2 += w[i] * F32(l) * F32(l)
    scale = sumlx / suml2 if suml2 != 0 else F32(0)
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        iscale = -(F32(nmax) + F32(0.1) * F32(step)) / mx
        sumlx, suml2 = F32(0), F32(0)
        for i in range(n):
            l = max(-nmax, min(nmax - 1, _nearest_int(iscale * x[i])))
            sumlx += w[i] * x[i] * F32(l)
            suml2 += w[i] * F32(l) * F32(l)
        if suml2 > 0 and sumlx * sumlx > best * suml2:
            for i in range(n):
                L[i] = nmax + max(-nmax, min(nmax - 1, _nearest_int(iscale * x[i])))
            scale = sumlx / suml2
            best = scale * sumlx
    return scale


@njit(float_division=True)
def _qp(x, w, nmax, L):
    """``make_qp_quants(n, nmax, x, L, w)``: the scale ``d``, ``x_hat = d L``; codes ``L`` as C's uint8_t."""
    n = x.shape[0]
    mx = F32(0)
    for i in range(n):
        mx = mx if mx > x[i] else x[i]                                  # C's MAX(max, x[i])
    if mx < _EPS:
        L[:n] = 0
        return F32(0)
    iscale = F32(nmax) / mx
    scale = F32(1) / iscale
    best = F32(0)
    for i in range(n):
        L[i] = _nearest_int(iscale * x[i]) & 0xFF                         # no clamp to nmax here
        diff = x[i] - scale * F32(L[i])
        best += w[i] * diff * diff
    for step in range(-4, 5):
        if step == 0:
            continue
        iscale_is = (F32(0.1) * F32(step) + F32(nmax)) / mx
        scale_is = F32(1) / iscale_is
        mse = F32(0)
        for i in range(n):
            diff = x[i] - scale_is * F32(min(nmax, _nearest_int(iscale_is * x[i])))
            mse += w[i] * diff * diff
        if mse < best:
            best, iscale = mse, iscale_is
    sumlx, suml2 = F32(0), F32(0)
    for i in range(n):
        l = min(nmax, _nearest_int(iscale * x[i]))                      # may be < 0: stored + 256
        L[i] = l & 0xFF
        sumlx += w[i] * x[i] * F32(l)
        suml2 += w[i] * F32(l) * F32(l)
    for _ in range(5):
        changed = 0
        for i in range(n):
            slx = sumlx - w[i] * x[i] * F32(L[i])
            sl2 = suml2 - w[i] * F32(L[i]) * F32(L[i])
            if slx > 0 and sl2 > 0:
                new_l = min(nmax, _nearest_int(x[i] * sl2 / slx))
                if new_l != L[i]:
                    slx += w[i] * x[i] * F32(new_l)
                    sl2 += w[i] * F32(new_l) * F32(new_l)
                    if slx * slx * suml2 > sumlx * sumlx * sl2:
                        L[i] = new_l & 0xFF
                        sumlx, suml2 = slx, sl2
                        changed += 1
        if changed == 0:
            break
    return sumlx / suml2 if suml2 > 0 else F32(0)


@njit(parallel=True, float_division=True)
def _scales_k(kind, s, mins, sw, L, S, M, d, dmin):
    """The sub-block scales ``s [nb, nsub]`` (and mins) of every super-block -> ``S``, ``M`` as C
    stores them, float32 ``d``, ``dmin``; a Q6_K block of zero scales also zeroes its codes ``L``."""
    for i in prange(s.shape[0]):
        nsub = s.shape[1]
        Ls, Lm = np.zeros(nsub, np.int64), np.zeros(nsub, np.int64)
        if kind == 3:                                       # codes 0..63: sc_j = Ls_j - 32
            d[i] = _qx(s[i], sw[i], 32, Ls)
            S[i, :nsub] = Ls
        elif kind == 6:
            mx, amax = _signed_max(s[i])
            if amax < _EPS:                                 # ggml zeroes the whole block
                d[i] = F32(0)
                L[i] = 0
            else:
                iscale = F32(-128) / mx
                d[i] = F32(1) / iscale
                for j in range(16):
                    S[i, j] = ((min(127, _nearest_int(iscale * s[i, j])) + 128) & 0xFF) - 128     # int8_t
        else:
            top = 15 if kind == 2 else 63
            d[i] = _qp(s[i], sw[i], top, Ls)
            dmin[i] = _qp(mins[i], sw[i], top, Lm)
            for j in range(nsub):                           # only Q5_K clamps to 63 (uint8_t MIN)
                S[i, j], M[i, j] = (min(63, Ls[j]), min(63, Lm[j])) if kind == 5 else (Ls[j], Lm[j])


@njit(parallel=True, float_division=True)
def _pack_k(B, kind, L, S, M, d, dmin, raw):
    """Stage 2: the stored scales into ``raw``, re-round with them (``d``, ``dmin`` already fp16-rounded),
    pack the codes. Layouts: ``minq.kquants_k``."""
    for i in prange(B.shape[0]):
        nsub = 8 if kind in (4, 5) else 16
        n = 256 // nsub
        lo, hi = (0, 3) if kind == 2 else (-4, 3) if kind == 3 else (0, 15) if kind == 4 else \
            (0, 31) if kind == 5 else (-32, 31)
        q = L[i].copy()                                     # search codes (Q3_K, Q6_K: + 4, + 32)
        sc = raw[i, 4:16] if kind in (4, 5) else raw[i, 96:108]
        for j in range(nsub):                               # the scale bytes, as C writes them
            if kind == 2:
                raw[i, j] = (S[i, j] | M[i, j] << 4) & 0xFF
            elif kind == 3:
                sc[j % 8] |= (S[i, j] & 0xF) << (4 * (j // 8))
                sc[8 + j % 4] |= (S[i, j] >> 4) << (2 * (j // 4))
            elif kind == 6:
                raw[i, 192 + j] = S[i, j] & 0xFF
            elif j < 4:
                sc[j], sc[j + 4] = S[i, j] & 0xFF, M[i, j] & 0xFF
            else:
                sc[j + 4] = (S[i, j] & 0xF) | (M[i, j] & 0xF) << 4
                sc[j - 4] |= (S[i, j] >> 4 << 6) & 0xFF
                sc[j] |= (M[i, j] >> 4 << 6) & 0xFF
        dd, dm = np.zeros(nsub, F32), np.zeros(nsub, F32)
        for j in range(nsub):                               # the scales read back, as C reads them
            if kind == 2:
                dd[j], dm[j] = d[i] * F32(raw[i, j] & 0xF), dmin[i] * F32(raw[i, j] >> 4)
            elif kind == 3:                                 # int64: in plain Python uint8 - 32 would wrap
                ls = np.int64(sc[j % 8] >> (4 * (j // 8)) & 0xF) | np.int64(sc[8 + j % 4] >> (2 * (j // 4)) & 3) << 4
                dd[j] = d[i] * F32(ls - 32)
            elif kind == 6:
                dd[j] = d[i] * F32(S[i, j])
            elif j < 4:
                dd[j], dm[j] = d[i] * F32(sc[j] & 63), dmin[i] * F32(sc[j + 4] & 63)
            else:
                dd[j] = d[i] * F32((sc[j + 4] & 0xF) | (sc[j - 4] >> 6) << 4)
                dm[j] = dmin[i] * F32((sc[j + 4] >> 4) | (sc[j] >> 6) << 4)
        buf = np.empty(256, F32)
        bits = buf.view(np.int32)
        for k in range(256):                                # nearest_int((x + dm) / d) where d != 0; Q3_K,
            j = k // n                                      # Q6_K: x / d, the same with dm = 0
            buf[k] = (B[i, k] + dm[j]) / dd[j] + F32(12582912.0)
            l = max(lo, min(hi, (bits[k] & 0x7FFFFF) - 0x400000)) - lo
            q[k] = l if dd[j] != 0 else q[k]
        if kind == 2:                                       # [scales:16][qs:64][d][dmin]
            _pack2(q, raw, i, 16)
        elif kind == 3:                                     # [hmask:32][qs:64][scales:12][d]
            for k in range(256):                            # bit 2 of q (C: if L > 3, L -= 4)
                raw[i, k % 32] |= (q[k] >> 2 & 1) << (k // 32)
            _pack2(q, raw, i, 32)                           # the low two bits
        elif kind == 6:                                     # [ql:128][qh:64][scales:16][d]
            for h in range(2):
                for l in range(32):
                    a, b, c, e = q[128 * h + l], q[128 * h + l + 32], q[128 * h + l + 64], q[128 * h + l + 96]
                    raw[i, 64 * h + l] = (a & 0xF) | (c & 0xF) << 4
                    raw[i, 64 * h + 32 + l] = (b & 0xF) | (e & 0xF) << 4
                    raw[i, 128 + 32 * h + l] = (a >> 4) | (b >> 4) << 2 | (c >> 4) << 4 | (e >> 4) << 6
        else:                                               # [d][dmin][scales:12](qh:32)[qs:128]
            qs = 16 if kind == 4 else 48
            for c in range(4):
                for l in range(32):
                    a, b = q[64 * c + l], q[64 * c + 32 + l]
                    if kind == 5:
                        raw[i, 16 + l] |= (a >> 4 & 1) << (2 * c) | (b >> 4 & 1) << (2 * c + 1)
                    raw[i, qs + 32 * c + l] = (a & 0xF) | (b & 0xF) << 4


@njit
def _pack2(q, raw, i, o):
    """2-bit planes: ``raw[i, o + 32h + l]`` bits 2k = ``q[128h + 32k + l] & 3``."""
    for h in range(2):
        for l in range(32):
            raw[i, o + 32 * h + l] = (q[128 * h + l] & 3) | (q[128 * h + l + 32] & 3) << 2 | \
                (q[128 * h + l + 64] & 3) << 4 | (q[128 * h + l + 96] & 3) << 6


def superblock_stage(B, kind: int, L, s, mins, sw):
    """``B [nb, 256]`` with the sub-block search results (codes ``L [nb, 256]``, scales and mins
    ``[nb, nsub]``, weight sums ``sw [nb, nsub]``) -> ``(raw [nb, nbytes], d16, dmin16)`` without the
    fp16 fields, which the caller writes."""
    nb = B.shape[0]
    S, M = np.zeros((nb, 16), np.int64), np.zeros((nb, 16), np.int64)
    d, dmin = np.zeros(nb, F32), np.zeros(nb, F32)
    _scales_k(kind, s, mins, sw, L, S, M, d, dmin)
    d16, dmin16 = d.astype(np.float16), dmin.astype(np.float16)
    raw = np.zeros((nb, {2: 84, 3: 110, 4: 144, 5: 176, 6: 210}[kind]), np.uint8)
    _pack_k(B, kind, L, S, M, d16.astype(F32), dmin16.astype(F32), raw)
    return raw, d16, dmin16
