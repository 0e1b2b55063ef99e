"""The Numba kernels of ``minq.runtime.gemv_ggml`` (read its docstring first: the formulas, the layouts,
what is exact and what is bounded): one GEMV per block type with float32 inputs (``_GEMV``), the integer
block dots of Q8_0 and Q4_0 with 8-bit inputs (``_GEMV_Q8``), and the serial row dequantizers of the prefill
tiles (``_rows_legacy``, ``_rows_dm``, ``_rows_k``), each equal to ``minq.kquants``' dequantize of the rows."""

from __future__ import annotations

import numpy as np

from minq._jit import njit

F32, U8, I16, I32, U32 = np.float32, np.uint8, np.int16, np.int32, np.uint32

@njit
def _h(p, o, T):
    """The fp16 at bytes ``o, o + 1`` of ``p``, as float32 (through the table ``T``)."""
    return T[I32(p[o]) | I32(p[o + 1]) << 8]


@njit
def _scale_min(p, j):
    """ggml's ``get_scale_min_k4``: the 6-bit scale and min of sub-block ``j`` of a Q4_K / Q5_K block ``p``."""
    if j < 4:
        return F32(U8(p[4 + j] & U8(63))), F32(U8(p[8 + j] & U8(63)))
    return (F32(U8((p[8 + j] & U8(15)) | (p[j] >> U8(6)) << U8(4))),
            F32(U8((p[8 + j] >> U8(4)) | (p[4 + j] >> U8(6)) << U8(4))))


@njit
def _less8(q):
    """``q - 8`` of a 4-bit code ``q`` (uint8) as float32, through int8: LLVM keeps 8-bit lanes."""
    return F32(np.int8(np.int8(q) - np.int8(8)))


# ---- GEMV, float activations: y [R] from P [R, nb, block bytes], x float32 [in] -----------------------

@njit(fastmath=True)
def _gemv_q8_0(P, d, x, xs, y):
    """``y[r] = sum_b d[r, b] sum_k q_rbk x[32 b + k]`` (``P`` int8: codes at bytes 2..33 of a block)."""
    R, nb, _ = P.shape
    lanes = np.zeros(64, F32)                                     # two sets of 32, alternate blocks
    for r in range(R):
        lanes[:] = 0
        for b in range(nb):
            db, base = d[r, b], 32 * (b & 1)
            for k in range(32):
                lanes[base + k] += db * (F32(P[r, b, 2 + k]) * x[32 * b + k])
        y[r] = lanes.sum()


@njit(fastmath=True)
def _gemv_q4_0(P, d, x, xs, y):
    """``y[r] = sum_b d[r, b] sum_k (q_k - 8) x_k``; byte ``2 + k`` holds ``q_k | q_{k+16} << 4``."""
    R, nb, _ = P.shape
    lanes = np.zeros(64, F32)                                     # four sets of 16
    for r in range(R):
        lanes[:] = 0
        for b in range(nb):
            db, base, j = d[r, b], 16 * (b & 3), 32 * b
            for k in range(16):
                v = P[r, b, 2 + k]
                lanes[base + k] += db * (_less8(v & U8(15)) * x[j + k] + _less8(v >> U8(4)) * x[j + 16 + k])
        y[r] = lanes.sum()


@njit(fastmath=True)
def _gemv_q4_1(P, s, x, xs, y):
    """``y[r] = sum_b d_b sum_k (q_k - 8) x_k + (m_b + 8 d_b) xs[b]`` (= ``d q + m``), ``s [R, nb, 2] = (d, m + 8 d)``;
    codes at bytes 4..19. (Q4_0's loop: ``F32(U8(q))`` in its place vectorises 5x worse than ``_less8``.)"""
    R, nb, _ = P.shape
    lanes = np.zeros(64, F32)
    for r in range(R):
        lanes[:] = 0
        mins = F32(0)
        for b in range(nb):
            db, base, j = s[r, b, 0], 16 * (b & 3), 32 * b
            for k in range(16):
                v = P[r, b, 4 + k]
                lanes[base + k] += db * (_less8(v & U8(15)) * x[j + k] + _less8(v >> U8(4)) * x[j + 16 + k])
        for b in range(nb):                                       # apart: in the loop above, 2-4x slower
            mins += s[r, b, 1] * xs[b]
        y[r] = lanes.sum() + mins


@njit(fastmath=True)
def _gemv_q5(P, s, x, xs, y):
    """Q5_0, Q5_1: ``y[r] = sum_b d_b sum_k q_k x_k + m_b xs[b]`` with ``s [R, nb, 2] = (d, m)`` (Q5_0: ``m = -16 d``)
    and ``P`` from the u32 ``qh`` on: bit ``k`` of ``qh`` (bytes 2..5) is bit 4 of ``q_k``, codes at 6..21."""
    R, nb, _ = P.shape
    bit = np.empty(32, U32)                                       # a local table: LLVM tests 16 lanes at once
    for k in range(32):
        bit[k] = U32(1) << U32(k)
    lanes = np.zeros(64, F32)
    for r in range(R):
        lanes[:] = 0
        mins = F32(0)
        for b in range(nb):
            p, db, base, j = P[r, b], s[r, b, 0], 16 * (b & 3), 32 * b
            qh = U32(U32(p[2]) | U32(p[3]) << U32(8) | U32(p[4]) << U32(16) | U32(p[5]) << U32(24))
            for k in range(16):
                v = p[6 + k]
                q0 = F32(U8(v & U8(15))) + (F32(0) if U32(qh & bit[k]) == U32(0) else F32(16))
                q1 = F32(U8(v >> U8(4))) + (F32(0) if U32(qh & bit[16 + k]) == U32(0) else F32(16))
                lanes[base + k] += db * (q0 * x[j + k] + q1 * x[j + 16 + k])
        for b in range(nb):
            mins += s[r, b, 1] * xs[b]
        y[r] = lanes.sum() + mins


@njit(fastmath=True)
def _gemv_q4_k(P, T, x, xs, y):
    """``y[r] = sum_j d sc_j sum_k q_k x_k - dmin m_j xs[j]``, ``xs [in / 32]`` the sums of x over sub-blocks."""
    R, nb, _ = P.shape
    lanes = np.zeros(64, F32)                                     # two sets of 32: runs c even, odd
    for r in range(R):
        lanes[:] = 0
        mins = F32(0)
        for b in range(nb):
            p = P[r, b]
            d, dmin = _h(p, 0, T), _h(p, 2, T)
            for c in range(4):                                    # run c: sub-blocks 2c, 2c + 1
                s0, m0 = _scale_min(p, 2 * c)
                s1, m1 = _scale_min(p, 2 * c + 1)
                d0, d1, j, base = d * s0, d * s1, 256 * b + 64 * c, 32 * (c & 1)
                mins += dmin * (m0 * xs[8 * b + 2 * c] + m1 * xs[8 * b + 2 * c + 1])
                for l in range(32):
                    v = p[16 + 32 * c + l]
                    lanes[base + l] += d0 * F32(U8(v & U8(15))) * x[j + l] + d1 * F32(U8(v >> U8(4))) * x[j + 32 + l]
        y[r] = lanes.sum() - mins


@njit(fastmath=True)
def _gemv_q5_k(P, T, x, xs, y):
    """Q4_K's product with 5-bit codes: bit 4 of ``e_{64c+l}`` / ``e_{64c+32+l}`` is bit ``2c`` / ``2c + 1`` of
    ``qh[l]`` (bytes 16..47; the codes at 48..175)."""
    R, nb, _ = P.shape
    lanes = np.zeros(64, F32)
    for r in range(R):
        lanes[:] = 0
        mins = F32(0)
        for b in range(nb):
            p = P[r, b]
            d, dmin = _h(p, 0, T), _h(p, 2, T)
            for c in range(4):
                s0, m0 = _scale_min(p, 2 * c)
                s1, m1 = _scale_min(p, 2 * c + 1)
                d0, d1, j, base = d * s0, d * s1, 256 * b + 64 * c, 32 * (c & 1)
                mins += dmin * (m0 * xs[8 * b + 2 * c] + m1 * xs[8 * b + 2 * c + 1])
                k0, k1 = U8(1 << 2 * c), U8(2 << 2 * c)                  # the two bits of run c
                for l in range(32):
                    v, h = p[48 + 32 * c + l], p[16 + l]
                    h0, h1 = U8(h & k0), U8(h & k1)                       # a select on bytes, not a shift
                    q0 = F32(U8((v & U8(15)) | (U8(16) if h0 else U8(0))))
                    q1 = F32(U8((v >> U8(4)) | (U8(16) if h1 else U8(0))))
                    lanes[base + l] += d0 * q0 * x[j + l] + d1 * q1 * x[j + 32 + l]
        y[r] = lanes.sum() - mins


@njit(fastmath=True)
def _gemv_q6_k(P, T, x, xs, y):
    """``y[r] = sum d sc_j (q - 32) x``. For half h and l < 32 the bytes ``ql[64h + l]``, ``ql[64h + 32 + l]``
    and ``qh[32h + l]`` hold ``e_{128h + 32i + l}``, i = 0..3, whose scale is ``sc_{8h + 2i + (l >= 16)}``."""
    R, nb, _ = P.shape
    lanes = np.zeros(64, F32)
    for r in range(R):
        lanes[:] = 0
        for b in range(nb):
            p = P[r, b]
            d = _h(p, 208, T)
            for h in range(2):
                s = 192 + 8 * h                                   # the 8 int8 scales of this half
                a0, a1, b0, b1 = d * F32(np.int8(p[s])), d * F32(np.int8(p[s + 1])), \
                    d * F32(np.int8(p[s + 2])), d * F32(np.int8(p[s + 3]))
                c0, c1, e0, e1 = d * F32(np.int8(p[s + 4])), d * F32(np.int8(p[s + 5])), \
                    d * F32(np.int8(p[s + 6])), d * F32(np.int8(p[s + 7]))
                j, base = 256 * b + 128 * h, 32 * h
                for l in range(32):
                    u, v, w = p[64 * h + l], p[64 * h + 32 + l], p[128 + 32 * h + l]
                    first = l < 16
                    q0 = F32(U8((u & U8(15)) | (w & U8(3)) << U8(4))) - F32(32)
                    q1 = F32(U8((v & U8(15)) | (w & U8(12)) << U8(2))) - F32(32)
                    q2 = F32(U8((u >> U8(4)) | (w & U8(48)))) - F32(32)
                    q3 = F32(U8((v >> U8(4)) | (w & U8(192)) >> U8(2))) - F32(32)
                    lanes[base + l] += ((a0 if first else a1) * q0 * x[j + l]
                                        + (b0 if first else b1) * q1 * x[j + 32 + l]
                                        + (c0 if first else c1) * q2 * x[j + 64 + l]
                                        + (e0 if first else e1) * q3 * x[j + 96 + l])
        y[r] = lanes.sum()


# ---- GEMV, Q8_0 activations: integer block dots, four blocks a step (their sums stay in registers) -------
# ``xq, dx, xs`` come padded with zero blocks to a multiple of 4 (``_inputs``): the last step of a row reads
# its blocks ``min(b + i, nb - 1)`` of the weight, times zero inputs past the end.

@njit(fastmath=True)
def _dots_q8_0(p, xq, b, nb):
    """``sum_k q_k xq_k`` (int32) of blocks ``b .. b + 3`` of a Q8_0 row ``p`` (int8 ``[nb * 34]``)."""
    c1, c2, c3 = min(b + 1, nb - 1), min(b + 2, nb - 1), min(b + 3, nb - 1)
    p0, p1, p2, p3 = p[34 * b + 2:], p[34 * c1 + 2:], p[34 * c2 + 2:], p[34 * c3 + 2:]
    x0, x1, x2, x3 = xq[32 * b:], xq[32 * b + 32:], xq[32 * b + 64:], xq[32 * b + 96:]
    t0 = t1 = t2 = t3 = I32(0)
    for k in range(32):                                           # vpmaddwd / vpdpwssd
        t0 = I32(t0 + I32(p0[k]) * I32(x0[k]))
        t1 = I32(t1 + I32(p1[k]) * I32(x1[k]))
        t2 = I32(t2 + I32(p2[k]) * I32(x2[k]))
        t3 = I32(t3 + I32(p3[k]) * I32(x3[k]))
    return t0, t1, t2, t3


@njit(fastmath=True)
def _dots_q4_0(p, xq, b, nb):
    """``sum_k q_k xq_k`` (int32, without the -8) of blocks ``b .. b + 3`` of a Q4_0 row ``p`` (``[nb * 18]``)."""
    c1, c2, c3 = min(b + 1, nb - 1), min(b + 2, nb - 1), min(b + 3, nb - 1)
    p0, p1, p2, p3 = p[18 * b + 2:], p[18 * c1 + 2:], p[18 * c2 + 2:], p[18 * c3 + 2:]
    x0, x1, x2, x3 = xq[32 * b:], xq[32 * b + 32:], xq[32 * b + 64:], xq[32 * b + 96:]
    t0 = t1 = t2 = t3 = I32(0)
    for k in range(16):
        u0, u1, u2, u3 = I16(p0[k]), I16(p1[k]), I16(p2[k]), I16(p3[k])
        t0 = I32(t0 + I32(u0 & I16(15)) * I32(x0[k]) + I32(u0 >> I16(4)) * I32(x0[16 + k]))
        t1 = I32(t1 + I32(u1 & I16(15)) * I32(x1[k]) + I32(u1 >> I16(4)) * I32(x1[16 + k]))
        t2 = I32(t2 + I32(u2 & I16(15)) * I32(x2[k]) + I32(u2 >> I16(4)) * I32(x2[16 + k]))
        t3 = I32(t3 + I32(u3 & I16(15)) * I32(x3[k]) + I32(u3 >> I16(4)) * I32(x3[16 + k]))
    return t0, t1, t2, t3


@njit(fastmath=True)
def _gemv_q8_0_q8(P, d, xq, dx, xs, y):
    """``y[r] = sum_b d[r, b] dx[b] sum_k q_rbk xq_bk``: ``P`` int8 ``[R, nb * 34]``, ``xq`` int16 ``[in]``."""
    R, nb = d.shape
    for r in range(R):
        p, acc = P[r], F32(0)
        for b in range(0, nb - nb % 4, 4):                        # the body of _dots_q8_0: a call per step
            p0, p1, p2, p3 = p[34 * b + 2:], p[34 * b + 36:], p[34 * b + 70:], p[34 * b + 104:]   # costs 2x
            x0, x1, x2, x3 = xq[32 * b:], xq[32 * b + 32:], xq[32 * b + 64:], xq[32 * b + 96:]
            t0 = t1 = t2 = t3 = I32(0)
            for k in range(32):
                t0 = I32(t0 + I32(p0[k]) * I32(x0[k]))
                t1 = I32(t1 + I32(p1[k]) * I32(x1[k]))
                t2 = I32(t2 + I32(p2[k]) * I32(x2[k]))
                t3 = I32(t3 + I32(p3[k]) * I32(x3[k]))
            acc += (d[r, b] * dx[b] * F32(t0) + d[r, b + 1] * dx[b + 1] * F32(t1)
                    + d[r, b + 2] * dx[b + 2] * F32(t2) + d[r, b + 3] * dx[b + 3] * F32(t3))
        if nb % 4:
            b = nb - nb % 4
            t0, t1, t2, t3 = _dots_q8_0(p, xq, b, nb)
            acc += (d[r, b] * dx[b] * F32(t0) + d[r, min(b + 1, nb - 1)] * dx[b + 1] * F32(t1)
                    + d[r, min(b + 2, nb - 1)] * dx[b + 2] * F32(t2))
        y[r] = acc


@njit(fastmath=True)
def _gemv_q4_0_q8(P, d, xq, dx, xs, y):
    """``y[r] = sum_b d[r, b] dx[b] (sum_k q_k xq_k - xs[b])`` with ``xs[b] = 8 sum_k xq_bk`` (the -8)."""
    R, nb = d.shape
    for r in range(R):
        p, acc = P[r], F32(0)
        for b in range(0, nb - nb % 4, 4):                        # the body of _dots_q4_0
            p0, p1, p2, p3 = p[18 * b + 2:], p[18 * b + 20:], p[18 * b + 38:], p[18 * b + 56:]
            x0, x1, x2, x3 = xq[32 * b:], xq[32 * b + 32:], xq[32 * b + 64:], xq[32 * b + 96:]
            t0 = t1 = t2 = t3 = I32(0)
            for k in range(16):
                u0, u1, u2, u3 = I16(p0[k]), I16(p1[k]), I16(p2[k]), I16(p3[k])
                t0 = I32(t0 + I32(u0 & I16(15)) * I32(x0[k]) + I32(u0 >> I16(4)) * I32(x0[16 + k]))
                t1 = I32(t1 + I32(u1 & I16(15)) * I32(x1[k]) + I32(u1 >> I16(4)) * I32(x1[16 + k]))
                t2 = I32(t2 + I32(u2 & I16(15)) * I32(x2[k]) + I32(u2 >> I16(4)) * I32(x2[16 + k]))
                t3 = I32(t3 + I32(u3 & I16(15)) * I32(x3[k]) + I32(u3 >> I16(4)) * I32(x3[16 + k]))
            acc += (d[r, b] * dx[b] * F32(t0 - xs[b]) + d[r, b + 1] * dx[b + 1] * F32(t1 - xs[b + 1])
                    + d[r, b + 2] * dx[b + 2] * F32(t2 - xs[b + 2]) + d[r, b + 3] * dx[b + 3] * F32(t3 - xs[b + 3]))
        if nb % 4:
            b = nb - nb % 4
            t0, t1, t2, t3 = _dots_q4_0(p, xq, b, nb)
            acc += (d[r, b] * dx[b] * F32(t0 - xs[b]) + d[r, min(b + 1, nb - 1)] * dx[b + 1] * F32(t1 - xs[b + 1])
                    + d[r, min(b + 2, nb - 1)] * dx[b + 2] * F32(t2 - xs[b + 2]))
        y[r] = acc


# ---- dequantized rows (prefill tiles): serial, ggml's float32 operations, out [R, in] -----------------

@njit
def _rows_legacy(P, d, out):
    """Q8_0 (``P`` int8, 34 bytes a block): ``d q``; Q4_0 (uint8, 18 bytes): ``d (q - 8)``."""
    R, nb, nbytes = P.shape
    for r in range(R):
        for b in range(nb):
            o, db = out[r, 32 * b: 32 * b + 32], d[r, b]
            for k in range(16):
                v = P[r, b, 2 + k]
                if nbytes == 34:
                    o[k], o[16 + k] = db * F32(v), db * F32(P[r, b, 18 + k])
                else:
                    o[k], o[16 + k] = _less8(v & U8(15)) * db, _less8(v >> U8(4)) * db


@njit
def _rows_dm(P, T, out):
    """Q4_1 / Q5_1: ``d q + m``; Q5_0: ``d (q - 16)``; as ``minq.kquants_kernels`` (``P.shape[2]`` = 20, 24, 22)."""
    R, nb, nbytes = P.shape
    qs, z = nbytes - 16, 16 if nbytes == 22 else 0                # the codes' offset; qh: the 4 bytes before
    for r in range(R):
        for b in range(nb):
            p, d, m = P[r, b], _h(P[r, b], 0, T), _h(P[r, b], 2, T) if nbytes != 22 else F32(0)
            qh = 0 if nbytes == 20 else (np.int64(p[qs - 4]) | np.int64(p[qs - 3]) << 8 | np.int64(p[qs - 2]) << 16
                                         | np.int64(p[qs - 1]) << 24)
            for k in range(16):
                v = np.int64(p[qs + k])
                q0, q1 = (v & 15) | ((qh >> k) & 1) << 4, (v >> 4) | ((qh >> (k + 16)) & 1) << 4
                out[r, 32 * b + k], out[r, 32 * b + 16 + k] = F32(q0 - z) * d + m, F32(q1 - z) * d + m


@njit
def _rows_k(P, T, out):
    """Q4_K / Q5_K: ``d sc q - dmin m``; Q6_K: ``d sc (q - 32)``; as ``minq.kquants_kernels``."""
    R, nb, nbytes = P.shape
    for r in range(R):
        for b in range(nb):
            p, o = P[r, b], out[r, 256 * b: 256 * b + 256]
            if nbytes == 210:                                     # Q6_K: e = 128h + 32i + l
                d = _h(p, 208, T)
                for h in range(2):
                    for i in range(4):
                        sh_lo, sh_hi, ql = U8(4 * (i // 2)), U8(2 * i), 64 * h + 32 * (i % 2)
                        dl0, dl1 = d * F32(np.int8(p[192 + 8 * h + 2 * i])), d * F32(np.int8(p[193 + 8 * h + 2 * i]))
                        for l in range(32):
                            q = U8(((p[ql + l] >> sh_lo) & U8(15)) | ((p[128 + 32 * h + l] >> sh_hi) & U8(3)) << U8(4))
                            o[128 * h + 32 * i + l] = (dl0 if l < 16 else dl1) * F32(np.int8(np.int8(q) - np.int8(32)))
                continue
            d, dmin, qs = _h(p, 0, T), _h(p, 2, T), 16 if nbytes == 144 else 48
            for j in range(8):
                sc, mn = _scale_min(p, j)
                dl, ml, sh = d * sc, dmin * mn, U8(4 * (j % 2))
                for l in range(32):
                    q = U8((p[qs + 32 * (j // 2) + l] >> sh) & U8(15))
                    if nbytes == 176:
                        q = U8(q | ((p[16 + l] >> U8(j)) & U8(1)) << U8(4))
                    o[32 * j + l] = dl * F32(q) - ml


_GEMV = {"Q8_0": _gemv_q8_0, "Q4_0": _gemv_q4_0, "Q4_1": _gemv_q4_1, "Q5_0": _gemv_q5, "Q5_1": _gemv_q5,
         "Q4_K": _gemv_q4_k, "Q5_K": _gemv_q5_k, "Q6_K": _gemv_q6_k}
_GEMV_Q8 = {"Q8_0": _gemv_q8_0_q8, "Q4_0": _gemv_q4_0_q8}
