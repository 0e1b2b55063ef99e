"""The Numba kernels of ``minq.runtime.gemv`` (chapter 03's grouped integer weights of 8, 4, 3 and 2 bits):
the unit decoders (``_q8 .. _q3``: a unit's codes as float32), the GEMV of each width (``ROWS[bits]``: rows
of ``W_hat x``) and the prefill tiles (``dequant_rows``: rows of ``W_hat``). The formula, the byte layouts,
the loop design and the error bound are in ``minq.runtime.gemv``'s docstring. Every jitted helper lives
here, next to its callers (Numba's cache does not see edits to helpers in another file).
"""

from __future__ import annotations

import numpy as np

from minq._jit import njit

__all__ = ["ROWS", "dequant_rows", "BLOCK", "SUPER"]

BLOCK = 64                      # codes per scale pick: a group is a whole number of blocks
SUPER = 4                       # blocks per inner loop: 256 codes, a compile-time trip count
U8, F32 = np.uint8, np.float32


@njit
def _pick(i, s0, s1, s2, s3):
    """``(s0, s1, s2, s3)[i]`` for a constant ``i``: a select LLVM folds once the loop is unrolled."""
    return s0 if i == 0 else (s1 if i == 1 else (s2 if i == 2 else s3))


@njit(fastmath=True)
def _zero_points(mr, xs):
    """``sum_G m[G] xs[G]``: the zero points' share of one row."""
    z = F32(0)
    for G in range(mr.shape[0]):
        z += mr[G] * xs[G]
    return z


# --- one unit: its codes (float32), and its codes times their inputs (the decode each kernel vectorises) --

@njit
def _q8(p, u):
    return (F32(p[u]),)


@njit
def _q4(p, u):
    b = p[u]
    return F32(U8(b & 15)), F32(U8(b >> 4))


@njit
def _q2(p, u):
    b = p[u]
    return F32(U8(b & 3)), F32(U8((b >> 2) & 3)), F32(U8((b >> 4) & 3)), F32(U8(b >> 6))


@njit
def _q3(p, u):
    b0, b1, b2 = p[3 * u], p[3 * u + 1], p[3 * u + 2]
    return (F32(U8(b0 & 7)), F32(U8((b0 >> 3) & 7)), F32(U8((b0 >> 6) | ((b1 & 1) << 2))), F32(U8((b1 >> 1) & 7)),
            F32(U8((b1 >> 4) & 7)), F32(U8((b1 >> 7) | ((b2 & 3) << 1))), F32(U8((b2 >> 2) & 7)), F32(U8(b2 >> 5)))


@njit(fastmath=True)
def _unit8(p, X, u):
    return _q8(p, u)[0] * X[0, u]


@njit(fastmath=True)
def _unit4(p, X, u):
    q0, q1 = _q4(p, u)
    return q0 * X[0, u] + q1 * X[1, u]


@njit(fastmath=True)
def _unit2(p, X, u):
    q0, q1, q2, q3 = _q2(p, u)
    return q0 * X[0, u] + q1 * X[1, u] + q2 * X[2, u] + q3 * X[3, u]


@njit(fastmath=True)
def _unit3(p, X, u):
    q0, q1, q2, q3, q4, q5, q6, q7 = _q3(p, u)
    return (q0 * X[0, u] + q1 * X[1, u] + q2 * X[2, u] + q3 * X[3, u]
            + q4 * X[4, u] + q5 * X[5, u] + q6 * X[6, u] + q7 * X[7, u])


# --- the kernels: rows of P [R, in b / 8], s, m [R, G] float32, gidx [in / 64], X, xs [G] -> y [R] -------
# One per width: the unit function and the units per block (64 / c) are constants of each loop.

@njit(fastmath=True)
def _rows8(P, s, m, gidx, X, xs, y):
    """8-bit: ``y[r] = sum_b s[r, gidx[b]] (sum_{j in b} q_rj x_j) + sum_G m[r, G] xs[G]``."""
    nb = gidx.shape[0]
    for r in range(P.shape[0]):
        p, sr = P[r], s[r]
        acc = F32(0)
        for sb in range(nb // SUPER):
            u0, b = max(sb * SUPER * 64, 0), sb * SUPER
            s0, s1, s2, s3 = sr[gidx[b]], sr[gidx[b + 1]], sr[gidx[b + 2]], sr[gidx[b + 3]]
            t = F32(0)
            for k in range(SUPER * 64):
                t += _pick(k // 64, s0, s1, s2, s3) * _unit8(p, X, u0 + k)
            acc += t
        for b in range(nb // SUPER * SUPER, nb):                   # the blocks left over, one at a time
            u0, t = max(b * 64, 0), F32(0)
            for k in range(64):
                t += _unit8(p, X, u0 + k)
            acc += sr[gidx[b]] * t
        y[r] = acc + _zero_points(m[r], xs)


@njit(fastmath=True)
def _rows4(P, s, m, gidx, X, xs, y):
    """4-bit (32 bytes a block): as ``_rows8``."""
    nb = gidx.shape[0]
    for r in range(P.shape[0]):
        p, sr = P[r], s[r]
        acc = F32(0)
        for sb in range(nb // SUPER):
            u0, b = max(sb * SUPER * 32, 0), sb * SUPER
            s0, s1, s2, s3 = sr[gidx[b]], sr[gidx[b + 1]], sr[gidx[b + 2]], sr[gidx[b + 3]]
            t = F32(0)
            for k in range(SUPER * 32):
                t += _pick(k // 32, s0, s1, s2, s3) * _unit4(p, X, u0 + k)
            acc += t
        for b in range(nb // SUPER * SUPER, nb):                   # the blocks left over, one at a time
            u0, t = max(b * 32, 0), F32(0)
            for k in range(32):
                t += _unit4(p, X, u0 + k)
            acc += sr[gidx[b]] * t
        y[r] = acc + _zero_points(m[r], xs)


@njit(fastmath=True)
def _rows2(P, s, m, gidx, X, xs, y):
    """2-bit (16 bytes a block): as ``_rows8``."""
    nb = gidx.shape[0]
    for r in range(P.shape[0]):
        p, sr = P[r], s[r]
        acc = F32(0)
        for sb in range(nb // SUPER):
            u0, b = max(sb * SUPER * 16, 0), sb * SUPER
            s0, s1, s2, s3 = sr[gidx[b]], sr[gidx[b + 1]], sr[gidx[b + 2]], sr[gidx[b + 3]]
            t = F32(0)
            for k in range(SUPER * 16):
                t += _pick(k // 16, s0, s1, s2, s3) * _unit2(p, X, u0 + k)
            acc += t
        for b in range(nb // SUPER * SUPER, nb):                   # the blocks left over, one at a time
            u0, t = max(b * 16, 0), F32(0)
            for k in range(16):
                t += _unit2(p, X, u0 + k)
            acc += sr[gidx[b]] * t
        y[r] = acc + _zero_points(m[r], xs)


@njit(fastmath=True)
def _rows3(P, s, m, gidx, X, xs, y):
    """3-bit: as ``_rows8``, over pairs of blocks (16 units of 3 bytes: one vector of units). A block has only
    8 units, too few for the vectoriser, so an odd last block is the second of a pair that overlaps the one
    before (its first block's scale set to 0: counted already); a row of one block runs alone (slowly)."""
    nb = gidx.shape[0]
    for r in range(P.shape[0]):
        p, sr = P[r], s[r]
        acc = F32(0)
        for w in range((nb + 1) // 2 if nb > 1 else 0):
            b = min(2 * w, nb - 2)
            s0, s1 = (sr[gidx[b]] if b == 2 * w else F32(0)), sr[gidx[b + 1]]
            u0, t = max(b * 8, 0), F32(0)
            for k in range(16):
                t += (s0 if k < 8 else s1) * _unit3(p, X, u0 + k)
            acc += t
        if nb == 1:
            t = F32(0)
            for k in range(8):
                t += _unit3(p, X, k)
            acc += sr[gidx[0]] * t
        y[r] = acc + _zero_points(m[r], xs)


ROWS = {8: _rows8, 4: _rows4, 3: _rows3, 2: _rows2}


@njit
def _dequant3(p, sr, mr, gidx, o):
    """``dequant_rows`` of one 3-bit row, by pairs of blocks as ``_rows3`` (an odd last block: a pair that
    overlaps the one before, whose outputs are written twice, the same); a row of one block alone."""
    nb = gidx.shape[0]
    for w in range((nb + 1) // 2 if nb > 1 else 0):
        b = min(2 * w, nb - 2)
        s0, m0, s1, m1, j = sr[gidx[b]], mr[gidx[b]], sr[gidx[b + 1]], mr[gidx[b + 1]], max(b * 64, 0)
        for k in range(16):
            sg, mg = (s0, m0) if k < 8 else (s1, m1)
            _store8(o, j + 8 * k, _q3(p, j // 8 + k), sg, mg)
    if nb == 1:
        for k in range(8):
            _store8(o, 8 * k, _q3(p, k), sr[gidx[0]], mr[gidx[0]])


@njit
def _store8(o, j, q, sg, mg):
    """``o[j + k] = sg q[k] + mg`` for the 8 codes ``q`` of a 3-bit unit."""
    q0, q1, q2, q3, q4, q5, q6, q7 = q
    o[j], o[j + 1], o[j + 2], o[j + 3] = sg * q0 + mg, sg * q1 + mg, sg * q2 + mg, sg * q3 + mg
    o[j + 4], o[j + 5], o[j + 6], o[j + 7] = sg * q4 + mg, sg * q5 + mg, sg * q6 + mg, sg * q7 + mg


@njit
def dequant_rows(P, s, m, gidx, bits, out):
    """``out[r, j] = s[r, G] q[r, j] + m[r, G]`` (``G = gidx[j // 64]``) for the packed rows ``P`` of any
    width: chapter 03's ``s (q - z)`` within one rounding (``m = -s z``), the tiles of a prefill. A block
    of 64 codes at a time, with the unit decoders of the GEMV. Serial: chapter 03's own dequantize kernel
    is ``parallel=True``, which must not run inside the runtime's pool."""
    for r in range(P.shape[0]):
        p, o = P[r], out[r]
        if bits == 3:
            _dequant3(p, s[r], m[r], gidx, o)
            continue
        for b in range(gidx.shape[0]):
            sg, mg, j = s[r, gidx[b]], m[r, gidx[b]], max(b * 64, 0)
            if bits == 8:
                for k in range(64):
                    o[j + k] = sg * _q8(p, j + k)[0] + mg
            elif bits == 4:
                for k in range(32):
                    q0, q1 = _q4(p, j // 2 + k)
                    o[j + 2 * k], o[j + 2 * k + 1] = sg * q0 + mg, sg * q1 + mg
            else:
                for k in range(16):
                    q0, q1, q2, q3 = _q2(p, j // 4 + k)
                    o[j + 4 * k], o[j + 4 * k + 1] = sg * q0 + mg, sg * q1 + mg
                    o[j + 4 * k + 2], o[j + 4 * k + 3] = sg * q2 + mg, sg * q3 + mg
