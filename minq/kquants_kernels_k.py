"""Chapter 08 — Numba kernels of the k-quant quantizers (Q2_K ... Q6_K), one super-block per loop step.

They equal the NumPy reference of ``minq.kquants_k`` / ``minq.kquants_search`` byte for byte (tests/
test_kquants.py), and follow ggml's C loop by loop: the scale searches (``_qkx2``, ``_qx``, ``_q3``)
run on one sub-block at a time with float32 accumulators in C's order. Numba has no float16, so each
type runs in two kernels with NumPy's fp16 rounding between them:

    _search_<type>(B [nb, 256]) -> search codes L [nb, 256], quantized sub-block scales, d (and dmin)
                                    in float32                                        (parallel over blocks)
    d16 = d.astype(float16)                                                            (NumPy, RNE)
    _pack_<type>(B, L, scales, float32(d16), ...) -> raw [nb, nbytes]: codes re-rounded with the stored
                                    scales (a sub-block whose scale is 0 keeps its search codes), packed

Every constant is a float32 (``F32(0.1)``) and every integer enters a product as ``F32(l)``: Numba
would otherwise compute in float64 and round differently from ggml.
"""

from __future__ import annotations

import numpy as np

from minq._jit import njit, prange
from minq.kquants_k import LAYOUTS

__all__ = ["quantize_k_kernel"]

F32 = np.float32
_EPS = F32(1e-15)


@njit
def _nearest_int(f):
    """ggml's ``nearest_int``: round half to even in range; outside it, the same bit trick as ggml."""
    if abs(f) <= F32(4194303.0):
        return np.int64(np.rint(f))
    buf = np.empty(1, np.float32)
    buf[0] = f + F32(12582912.0)
    return np.int64(buf.view(np.int32)[0] & 0x7FFFFF) - 0x400000


@njit
def _qkx2(x, w, nmax, rmin, rdelta, nstep, use_mad, L, Laux):
    """``make_qkx2_quants`` on one sub-block ``x [n]`` with weights ``w``: (scale, the_min); codes in ``L``."""
    n = x.shape[0]
    mn, mx = x[0], x[0]
    sum_w = w[0]
    sum_x = sum_w * x[0]
    for i in range(1, n):
        if x[i] < mn:
            mn = x[i]
        if x[i] > mx:
            mx = x[i]
        sum_w += w[i]
        sum_x += w[i] * x[i]
    if mn > 0:
        mn = F32(0)
    if mx == mn:
        for i in range(n):
            L[i] = 0
        return F32(0), -mn
    iscale = F32(nmax) / (mx - mn)
    scale = F32(1) / iscale
    best = F32(0)
    for i in range(n):
        L[i] = max(0, min(nmax, _nearest_int(iscale * (x[i] - mn))))
        diff = scale * F32(L[i]) + mn - x[i]
        best += w[i] * (abs(diff) if use_mad else diff * diff)
    for step in range(nstep + 1):
        iscale = (rmin + rdelta * F32(step) + F32(nmax)) / (mx - mn)
        sum_l, sum_l2, sum_xl = F32(0), F32(0), F32(0)
        for i in range(n):
            l = max(0, min(nmax, _nearest_int(iscale * (x[i] - mn))))
            Laux[i] = l
            lf = F32(l)
            sum_l += w[i] * lf
            sum_l2 += w[i] * lf * lf
            sum_xl += w[i] * lf * x[i]
        D = sum_w * sum_l2 - sum_l * sum_l
        if D > 0:
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            if this_min > 0:
                this_min = F32(0)
                this_scale = sum_xl / sum_l2
            cur = F32(0)
            for i in range(n):
                diff = this_scale * F32(Laux[i]) + this_min - x[i]
                cur += w[i] * (abs(diff) if use_mad else diff * diff)
            if cur < best:
                for i in range(n):
                    L[i] = Laux[i]
                best, scale, mn = cur, this_scale, this_min
    return scale, -mn


@njit
def _signed_max(x):
    """ggml's ``if (ax > amax)`` loop from 0 (``signed_max``): NaN never wins; all zero / NaN: (+0.0, 0)."""
    mx, amax = F32(0), F32(0)
    for i in range(x.shape[0]):
        if abs(x[i]) > amax:
            amax, mx = abs(x[i]), x[i]
    return mx, amax


@njit
def _first_round(x, nmax, L, shift):
    """The start both symmetric searches share: round at ``iscale = -nmax / max`` (``max`` the signed
    largest |x|), codes ``l + shift`` into ``L``, and the weighted sums with w = x^2. Returns
    ``(max, sumlx, suml2)``; ``max == 0`` for an all-zero sub-block (|x| < 1e-15), whose codes are 0."""
    n = x.shape[0]
    mx, amax = _signed_max(x)
    if amax < _EPS:
        for i in range(n):
            L[i] = 0
        return F32(0), F32(0), F32(0)
    iscale = F32(-nmax) / mx
    sumlx, suml2 = F32(0), F32(0)
    for i in range(n):
        l = max(-nmax, min(nmax - 1, _nearest_int(iscale * x[i])))
        L[i] = l + shift
        w = x[i] * x[i]
        sumlx += w * x[i] * F32(l)
        suml2 += w * F32(l) * F32(l)
    return mx, sumlx, suml2


@njit
def _qx(x, nmax, L):
    """``make_qx_quants(n, nmax, x, L, rmse_type=1, NULL)``: scale; codes ``L`` in 0..2 nmax - 1."""
    n = x.shape[0]
    mx, sumlx, suml2 = _first_round(x, nmax, L, nmax)
    if mx == 0:
        return F32(0)
    scale = sumlx / suml2 if suml2 != 0 else F32(0)
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        iscale = -(F32(nmax) + F32(0.1) * F32(step)) / mx
        sumlx, suml2 = F32(0), F32(0)
        for i in range(n):
            l = max(-nmax, min(nmax - 1, _nearest_int(iscale * x[i])))
            w = x[i] * x[i]
            sumlx += w * x[i] * F32(l)
            suml2 += w * F32(l) * F32(l)
        if suml2 > 0 and sumlx * sumlx > best * suml2:
            for i in range(n):
                L[i] = nmax + max(-nmax, min(nmax - 1, _nearest_int(iscale * x[i])))
            scale = sumlx / suml2
            best = scale * sumlx
    return scale


@njit
def _q3(x, nmax, L):
    """``make_q3_quants(n, nmax, x, L, do_rmse=true)``: scale; codes ``L`` in 0..2 nmax - 1."""
    n = x.shape[0]
    mx, sumlx, suml2 = _first_round(x, nmax, L, 0)
    if mx == 0:
        return F32(0)
    for _ in range(5):
        changed = 0
        for i in range(n):
            w = x[i] * x[i]
            slx = sumlx - w * x[i] * F32(L[i])
            if slx > 0:
                sl2 = suml2 - w * F32(L[i]) * F32(L[i])
                new_l = max(-nmax, min(nmax - 1, _nearest_int(x[i] * sl2 / slx)))
                if new_l != L[i]:
                    slx += w * x[i] * F32(new_l)
                    sl2 += w * F32(new_l) * F32(new_l)
                    if sl2 > 0 and slx * slx * suml2 > sumlx * sumlx * sl2:
                        L[i] = new_l
                        sumlx, suml2 = slx, sl2
                        changed += 1
        if changed == 0:
            break
    for i in range(n):
        L[i] += nmax
    return sumlx / suml2 if suml2 > 0 else F32(0)


@njit(parallel=True, float_division=True)
def _search(B, kind, L, S, M, d, dmin):
    """Stage 1 for every super-block: the search codes ``L``, the quantized sub-block scales ``S`` (and
    mins ``M``), the float32 super-scales ``d`` (and ``dmin``). kind: 2..6 = Q2_K..Q6_K."""
    for i in prange(B.shape[0]):
        nsub = 8 if kind in (4, 5) else 16
        n = 256 // nsub
        s = np.zeros(nsub, np.float32)
        m = np.zeros(nsub, np.float32)
        w = np.empty(n, np.float32)
        Lb = np.zeros(n, np.int64)
        Laux = np.zeros(n, np.int64)
        for j in range(nsub):
            x = B[i, n * j:n * (j + 1)]
            if kind == 2:
                for k in range(n):
                    w[k] = abs(x[k])
                s[j], m[j] = _qkx2(x, w, 3, F32(-0.5), F32(0.1), 15, True, Lb, Laux)
            elif kind in (4, 5):
                sum_x2 = F32(0)
                for k in range(n):
                    sum_x2 += x[k] * x[k]
                av_x = np.sqrt(sum_x2 / F32(32))
                for k in range(n):
                    w[k] = av_x + abs(x[k])
                if kind == 4:
                    s[j], m[j] = _qkx2(x, w, 15, F32(-1.0), F32(0.1), 20, False, Lb, Laux)
                else:
                    s[j], m[j] = _qkx2(x, w, 31, F32(-0.5), F32(0.1), 15, False, Lb, Laux)
            elif kind == 3:
                s[j] = _q3(x, 4, Lb)
            else:
                s[j] = _qx(x, 32, Lb)
            for k in range(n):
                L[i, n * j + k] = Lb[k]
        if kind in (3, 6):                                   # symmetric: the signed largest |scale|
            mx, amax = _signed_max(s)
            if kind == 3:
                iscale = F32(-32) / mx if mx != 0 else F32(0)
                for j in range(16):                                             # all-zero scales: bytes 0
                    l = ((_nearest_int(iscale * s[j]) + 128) & 0xFF) - 128       # int8_t
                    S[i, j] = max(-32, min(31, l)) + 32 if mx != 0 else 0
                d[i] = F32(1) / iscale if mx != 0 else F32(0)
            elif amax < _EPS:
                d[i] = F32(0)
                for j in range(16):
                    S[i, j] = 0
                for k in range(256):
                    L[i, k] = 0                                                # ggml zeroes the whole block
            else:
                iscale = F32(-128) / mx
                d[i] = F32(1) / iscale
                for j in range(16):
                    S[i, j] = min(127, _nearest_int(iscale * s[j]))
            continue
        top = F32(15) if kind == 2 else F32(63)
        max_s, max_m = F32(0), F32(0)
        for j in range(nsub):
            if s[j] > max_s:
                max_s = s[j]
            if m[j] > max_m:
                max_m = m[j]
        inv_s = top / max_s if max_s > 0 else F32(0)
        inv_m = top / max_m if max_m > 0 else F32(0)
        for j in range(nsub):
            ls, lm = _nearest_int(inv_s * s[j]) & 0xFF, _nearest_int(inv_m * m[j]) & 0xFF
            S[i, j], M[i, j] = (ls, lm) if kind == 2 else (min(63, ls), min(63, lm))
        d[i], dmin[i] = max_s / top, max_m / top


@njit(parallel=True, float_division=True)
def _pack(B, kind, L, S, M, d, dmin, raw):
    """Stage 2: re-round with the stored scales (``d``, ``dmin`` already fp16-rounded) and pack ``raw``."""
    for i in prange(B.shape[0]):
        nsub = 8 if kind in (4, 5) else 16
        n = 256 // nsub
        lo, hi = (0, 3) if kind == 2 else (-4, 3) if kind == 3 else (0, 15) if kind == 4 else \
            (0, 31) if kind == 5 else (-32, 31)
        off = 0 if kind in (2, 4, 5) else -lo                   # search codes are stored + nmax for Q3/Q6
        q = np.empty(256, np.int64)
        for j in range(nsub):
            if kind == 2:
                dd, dm = d[i] * F32(S[i, j] & 0xF), dmin[i] * F32((S[i, j] | M[i, j] << 4) >> 4 & 0xF)
            elif kind in (4, 5):
                dd, dm = d[i] * F32(S[i, j]), dmin[i] * F32(M[i, j])
            else:
                dd, dm = d[i] * F32(S[i, j] - (32 if kind == 3 else 0)), F32(0)
            for k in range(n):
                e = n * j + k
                if dd == 0:
                    q[e] = L[i, e]
                elif kind in (3, 6):
                    q[e] = max(lo, min(hi, _nearest_int(B[i, e] / dd))) + off
                else:
                    q[e] = max(lo, min(hi, _nearest_int((B[i, e] + dm) / dd)))
        if kind == 2:                                    # [scales:16][qs:64][d][dmin]
            for j in range(16):
                raw[i, j] = (S[i, j] | M[i, j] << 4) & 0xFF
            _pack2(q, raw, i, 16)
        elif kind == 3:                                  # [hmask:32][qs:64][scales:12][d]
            for e in range(256):
                if q[e] > 3:
                    raw[i, e % 32] |= 1 << (e // 32)
                    q[e] -= 4
            _pack2(q, raw, i, 32)
            for j in range(16):
                l = S[i, j]
                if j < 8:
                    raw[i, 96 + j] |= l & 0xF
                else:
                    raw[i, 96 + j - 8] |= (l & 0xF) << 4
                raw[i, 104 + j % 4] |= (l >> 4) << (2 * (j // 4))
        elif kind == 6:                                  # [ql:128][qh:64][scales:16][d]
            for h in range(2):
                for l in range(32):
                    a, b, c, e4 = q[128 * h + l], q[128 * h + l + 32], q[128 * h + l + 64], q[128 * h + l + 96]
                    raw[i, 64 * h + l] = (a & 0xF) | (c & 0xF) << 4
                    raw[i, 64 * h + 32 + l] = (b & 0xF) | (e4 & 0xF) << 4
                    raw[i, 128 + 32 * h + l] = (a >> 4) | (b >> 4) << 2 | (c >> 4) << 4 | (e4 >> 4) << 6
            for j in range(16):
                raw[i, 192 + j] = S[i, j] & 0xFF
        else:                                            # Q4_K / Q5_K: [d][dmin][scales:12](qh:32)[qs:128]
            for j in range(8):
                ls, lm = S[i, j], M[i, j]
                if j < 4:
                    raw[i, 4 + j] = ls
                    raw[i, 8 + j] = lm
                else:
                    raw[i, 8 + j] = (ls & 0xF) | (lm & 0xF) << 4
                    raw[i, 4 + j - 4] |= (ls >> 4) << 6
                    raw[i, 4 + j] |= (lm >> 4) << 6
            qs = 16 if kind == 4 else 48
            for c in range(4):
                for l in range(32):
                    a, b = q[64 * c + l], q[64 * c + 32 + l]
                    if kind == 5:
                        raw[i, 16 + l] |= ((a >> 4) & 1) << (2 * c) | ((b >> 4) & 1) << (2 * c + 1)
                    raw[i, qs + 32 * c + l] = (a & 0xF) | (b & 0xF) << 4


@njit
def _pack2(q, raw, i, o):
    """2-bit planes: ``raw[i, o + 32h + l]`` bits 2k = ``q[128h + 32k + l] & 3``."""
    for h in range(2):
        for l in range(32):
            raw[i, o + 32 * h + l] = (q[128 * h + l] & 3) | (q[128 * h + l + 32] & 3) << 2 | \
                (q[128 * h + l + 64] & 3) << 4 | (q[128 * h + l + 96] & 3) << 6


def quantize_k_kernel(B, qtype: str):
    """``B [nb, 256]`` float32 -> ``raw [nb, nbytes]`` of ``qtype``; equals ``kquants_k.quantize_blocks``."""
    kind = int(qtype[1])
    nb = B.shape[0]
    B = np.ascontiguousarray(B, F32)
    L = np.zeros((nb, 256), np.int64)
    S, M = np.zeros((nb, 16), np.int64), np.zeros((nb, 16), np.int64)
    d, dmin = np.zeros(nb, F32), np.zeros(nb, F32)
    _search(B, kind, L, S, M, d, dmin)
    d16, dmin16 = d.astype(np.float16), dmin.astype(np.float16)
    layout = LAYOUTS[qtype]
    raw = np.zeros((nb, layout.itemsize), np.uint8)
    _pack(B, kind, L, S, M, d16.astype(F32), dmin16.astype(F32), raw)
    y = raw.reshape(-1).view(layout)
    y["d"] = d16
    if "dmin" in layout.names:
        y["dmin"] = dmin16
    return raw
