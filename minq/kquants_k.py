"""Chapter 08 — the k-quants: super-blocks of 256 weights with quantized sub-block scales (Q2_K ... Q6_K).

A super-block of 256 weights is cut into sub-blocks of 16 (Q2_K, Q3_K, Q6_K) or 32 (Q4_K, Q5_K).
Each sub-block j gets its own scale ``s_j`` (and min ``m_j``) from a search (``minq.kquants_search``);
then the scales themselves are quantized — to 4, 6 or 8 bits against one fp16 super-scale ``d`` (and
``dmin``) — and the weights are rounded again with the scales as stored:

    Q2_K  x_hat = d sc_j q - dmin m_j    q in 0..3,   sc_j, m_j 4-bit     16 x 16    84 bytes  2.625 bits
    Q3_K  x_hat = d (sc_j - 32) q        q in -4..3,  sc_j 6-bit          16 x 16   110 bytes  3.4375 bits
    Q4_K  x_hat = d sc_j q - dmin m_j    q in 0..15,  sc_j, m_j 6-bit      8 x 32   144 bytes  4.5 bits
    Q5_K  x_hat = d sc_j q - dmin m_j    q in 0..31,  sc_j, m_j 6-bit      8 x 32   176 bytes  5.5 bits
    Q6_K  x_hat = d sc_j (q - 32)        q in 0..63,  sc_j int8           16 x 16   210 bytes  6.5625 bits

Byte layouts (``e_k`` = element k of the super-block; d/dmin fp16, little-endian):

    Q2_K  [scales:16][qs:64][d:2][dmin:2]     scales[j] = sc_j | m_j << 4
    Q3_K  [hmask:32][qs:64][scales:12][d:2]   bit k//32 of hmask[k % 32] = bit 2 of q_k + 4
    Q4_K  [d:2][dmin:2][scales:12][qs:128]
    Q5_K  [d:2][dmin:2][scales:12][qh:32][qs:128]   qh[l] bit 2c / 2c+1 = bit 4 of e_{64c+l} / e_{64c+32+l}
    Q6_K  [ql:128][qh:64][scales:16 int8][d:2]

    2-bit planes (Q2_K qs, Q3_K's low bits):  qs[32h + l] bits 2k..2k+1 = e_{128h + 32k + l}
    4-bit planes (Q4_K, Q5_K):                qs[32c + l] = e_{64c + l} | e_{64c + 32 + l} << 4
    Q6_K: for half h, l < 32:  ql[64h + l]      = lo4(e_{128h+l})    | lo4(e_{128h+64+l}) << 4
                               ql[64h + 32 + l] = lo4(e_{128h+32+l}) | lo4(e_{128h+96+l}) << 4
                               qh[32h + l]      = hi2 of e_{128h+l}, +32, +64, +96 at bits 0, 2, 4, 6

    6-bit scales and mins of Q4_K / Q5_K in 12 bytes (j < 4 plain; j >= 4 split in a low nibble
    and two high bits parked in the top of bytes 0-7):
        byte:  0..3   sc_0..3 | (sc_4..7 >> 4) << 6       4..7   m_0..3 | (m_4..7 >> 4) << 6
               8..11  (sc_4..7 & 15) | (m_4..7 & 15) << 4
    Q3_K's 16 6-bit scales (biased by 32) in 12 bytes:
        byte:  0..7   low nibble of sc_0..7 | low nibble of sc_8..15 << 4
               8..11  byte 8 + i holds the high two bits of sc_i, sc_{i+4}, sc_{i+8}, sc_{i+12} at bits 0, 2, 4, 6

After llama.cpp's ``quantize_row_q{2..6}_K_ref`` (without an importance matrix, what ``llama-quantize``
runs) and ``dequantize_row_q*_K`` (ggml-quants.c); tests/test_kquants.py checks the bytes against
llama.cpp's own (data/kquants/golden.npz) and the values against gguf-py. A sub-block whose stored
scale is 0 keeps the codes of its search, as in llama.cpp. Notebook: ``notebooks/08_kquants.ipynb``.
"""

from __future__ import annotations

import numpy as np

from minq.kquants_search import (
    GROUP_MAX_EPS,
    make_q3_quants,
    make_qkx2_quants,
    make_qx_quants,
    nearest_int,
    signed_max,
)

__all__ = ["LAYOUTS", "BLOCK", "quantize_blocks", "dequantize_blocks"]

F32, F16 = np.float32, np.float16
QK_K = 256

LAYOUTS = {
    "Q2_K": np.dtype([("scales", "u1", 16), ("qs", "u1", 64), ("d", "<f2"), ("dmin", "<f2")]),
    "Q3_K": np.dtype([("hmask", "u1", 32), ("qs", "u1", 64), ("scales", "u1", 12), ("d", "<f2")]),
    "Q4_K": np.dtype([("d", "<f2"), ("dmin", "<f2"), ("scales", "u1", 12), ("qs", "u1", 128)]),
    "Q5_K": np.dtype([("d", "<f2"), ("dmin", "<f2"), ("scales", "u1", 12), ("qh", "u1", 32), ("qs", "u1", 128)]),
    "Q6_K": np.dtype([("ql", "u1", 128), ("qh", "u1", 64), ("scales", "i1", 16), ("d", "<f2")]),
}
BLOCK = dict.fromkeys(LAYOUTS, QK_K)


# --- bit planes and scale packing -------------------------------------------------------------------


def _pack2(L):
    """Codes ``L [nb, 256]`` in 0..3 -> ``qs [nb, 64]``: ``qs[32h + l]`` bits 2k = ``e_{128h + 32k + l}``."""
    L = L.reshape(-1, 2, 4, 32).astype(np.uint8)                       # [nb, h, k, l]
    return (L[:, :, 0] | L[:, :, 1] << 2 | L[:, :, 2] << 4 | L[:, :, 3] << 6).reshape(-1, 64)


def _unpack2(qs):
    """Inverse of ``_pack2``: ``[nb, 64] -> [nb, 256]`` codes 0..3."""
    shifts = np.array([0, 2, 4, 6], np.uint8)[None, None, :, None]
    return ((qs.reshape(-1, 2, 1, 32) >> shifts) & 3).reshape(-1, QK_K)


def _pack4(L):
    """Codes ``[nb, 256]`` in 0..15 -> ``[nb, 128]``: ``qs[32c + l] = e_{64c + l} | e_{64c + 32 + l} << 4``."""
    L = L.reshape(-1, 4, 2, 32).astype(np.uint8)                       # [nb, c, half, l]
    return (L[:, :, 0] | L[:, :, 1] << 4).reshape(-1, 128)


def _unpack4(qs):
    return np.stack([qs.reshape(-1, 4, 32) & 0xF, qs.reshape(-1, 4, 32) >> 4], axis=2).reshape(-1, QK_K)


def _pack_scale_min_k4(ls, lm):
    """6-bit ``ls, lm [nb, 8]`` -> the 12 bytes of Q4_K / Q5_K (see the module docstring)."""
    s = np.zeros((len(ls), 12), np.uint8)
    s[:, 0:4] = ls[:, :4] | (ls[:, 4:] >> 4) << 6
    s[:, 4:8] = lm[:, :4] | (lm[:, 4:] >> 4) << 6
    s[:, 8:12] = (ls[:, 4:] & 0xF) | (lm[:, 4:] & 0xF) << 4
    return s


def _unpack_scale_min_k4(s):
    """The 12 bytes -> ``(sc, m)``, each ``[nb, 8]`` uint8 in 0..63 (ggml's ``get_scale_min_k4``)."""
    sc = np.concatenate([s[:, 0:4] & 63, (s[:, 8:12] & 0xF) | (s[:, 0:4] >> 6) << 4], axis=1)
    m = np.concatenate([s[:, 4:8] & 63, (s[:, 8:12] >> 4) | (s[:, 4:8] >> 6) << 4], axis=1)
    return sc, m


def _pack_q3_scales(l):
    """Sixteen 6-bit scales ``l [nb, 16]`` (0..63) -> 12 bytes (see the module docstring)."""
    s = np.zeros((len(l), 12), np.uint8)
    s[:, :8] = (l[:, :8] & 0xF) | (l[:, 8:] & 0xF) << 4
    hi = (l >> 4).reshape(-1, 4, 4)                                    # [nb, j // 4, j % 4]
    s[:, 8:] = hi[:, 0] | hi[:, 1] << 2 | hi[:, 2] << 4 | hi[:, 3] << 6
    return s


def _unpack_q3_scales(s):
    low = np.concatenate([s[:, :8] & 0xF, s[:, :8] >> 4], axis=1)      # [nb, 16]
    high = (s[:, None, 8:] >> np.array([0, 2, 4, 6], np.uint8)[None, :, None]) & 3   # [nb, j // 4, j % 4]
    return (low | high.reshape(-1, 16) << 4).astype(np.int32)


# --- quantize -------------------------------------------------------------------------------------


def _requantize(x, dd, dm, lo, hi, L):
    """Round ``x [nb, nsub, n]`` again with the stored scales: ``clamp(nearest_int((x + dm) / dd), lo, hi)``,
    where ``dd [nb, nsub, 1]`` is not 0; elsewhere keep ``L`` (the search's codes, in ``lo..hi``)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.clip(nearest_int((x + dm) / dd if dm is not None else x / dd), lo, hi)
    return np.where(dd != 0, q, L)


def _max_positive(v):
    """``max(0, max_j v_j)`` per row: the C loops start from 0 and keep strictly larger values."""
    return np.maximum(v.max(axis=1), F32(0))


def _quantize_q2_k(B):
    nb = len(B)
    S = B.reshape(nb * 16, 16)
    s, m, L = make_qkx2_quants(S, np.abs(S), 3, -0.5, 0.1, 15, use_mad=True)
    s, m, L = s.reshape(nb, 16), m.reshape(nb, 16), L.reshape(nb, 16, 16)
    max_s, max_m = _max_positive(s), _max_positive(m)
    y = np.zeros(nb, LAYOUTS["Q2_K"])
    with np.errstate(divide="ignore"):
        ls = np.where((max_s > 0)[:, None], nearest_int((F32(15) / max_s)[:, None] * s), 0)
        lm = np.where((max_m > 0)[:, None], nearest_int((F32(15) / max_m)[:, None] * m), 0)
    y["scales"] = ((ls | lm << 4) & 0xFF).astype(np.uint8)
    y["d"], y["dmin"] = (max_s / F32(15)).astype(F16), (max_m / F32(15)).astype(F16)
    sc = y["scales"]
    dd = (y["d"].astype(F32)[:, None] * (sc & 0xF).astype(F32))[..., None]    # [nb, 16, 1]
    dm = (y["dmin"].astype(F32)[:, None] * (sc >> 4).astype(F32))[..., None]
    L = _requantize(B.reshape(nb, 16, 16), dd, dm, 0, 3, L)
    y["qs"] = _pack2(L.reshape(nb, QK_K))
    return y


def _quantize_q3_k(B):
    nb = len(B)
    s, L = make_q3_quants(B.reshape(nb * 16, 16), 4)
    s, L = s.reshape(nb, 16), L.reshape(nb, 16, 16)
    max_s = signed_max(s)[0]
    y = np.zeros(nb, LAYOUTS["Q3_K"])
    has = max_s != 0
    with np.errstate(divide="ignore"):
        iscale = np.where(has, F32(-32) / np.where(has, max_s, F32(1)), F32(0)).astype(F32)
    l = ((nearest_int(iscale[:, None] * s) + 128) & 0xFF) - 128                 # int8_t, as in C
    l = np.clip(l, -32, 31) + 32
    y["scales"] = np.where(has[:, None], _pack_q3_scales(l.astype(np.uint8)), 0)
    with np.errstate(divide="ignore"):
        y["d"] = np.where(has, F32(1) / iscale, F32(0)).astype(F16)
    dd = (y["d"].astype(F32)[:, None] * (_unpack_q3_scales(y["scales"]) - 32).astype(F32))[..., None]
    L = _requantize(B.reshape(nb, 16, 16), dd, None, -4, 3, L - 4) + 4            # [nb, 16, 16] in 0..7
    L = L.reshape(nb, QK_K)
    high = (L > 3).reshape(nb, 8, 32)                                           # [nb, k // 32, k % 32]
    y["hmask"] = (high.astype(np.uint8) << np.arange(8, dtype=np.uint8)[None, :, None]).sum(axis=1, dtype=np.uint8)
    y["qs"] = _pack2(L & 3)
    return y


def _quantize_q45_k(B, qtype):
    nb = len(B)
    nmax, rmin, nstep = (15, -1.0, 20) if qtype == "Q4_K" else (31, -0.5, 15)
    S = B.reshape(nb * 8, 32)
    sum_x2 = np.zeros(len(S), F32)
    for k in range(32):                                                         # sequential, as in C
        sum_x2 += S[:, k] * S[:, k]
    W = np.sqrt(sum_x2 / F32(32))[:, None] + np.abs(S)                          # av_x + |x|
    s, m, L = make_qkx2_quants(S, W, nmax, rmin, 0.1, nstep, use_mad=False)
    s, m, L = s.reshape(nb, 8), m.reshape(nb, 8), L.reshape(nb, 8, 32)
    max_s, max_m = _max_positive(s), _max_positive(m)
    with np.errstate(divide="ignore"):
        inv_s = np.where(max_s > 0, F32(63) / max_s, F32(0)).astype(F32)
        inv_m = np.where(max_m > 0, F32(63) / max_m, F32(0)).astype(F32)
    ls = np.minimum(63, nearest_int(inv_s[:, None] * s) & 0xFF).astype(np.uint8)   # uint8_t, then MIN(63, .)
    lm = np.minimum(63, nearest_int(inv_m[:, None] * m) & 0xFF).astype(np.uint8)
    y = np.zeros(nb, LAYOUTS[qtype])
    y["scales"] = _pack_scale_min_k4(ls, lm)
    y["d"], y["dmin"] = (max_s / F32(63)).astype(F16), (max_m / F32(63)).astype(F16)
    sc, mn = _unpack_scale_min_k4(y["scales"])
    dd = (y["d"].astype(F32)[:, None] * sc.astype(F32))[..., None]             # [nb, 8, 1]
    dm = (y["dmin"].astype(F32)[:, None] * mn.astype(F32))[..., None]
    L = _requantize(B.reshape(nb, 8, 32), dd, dm, 0, nmax, L).reshape(nb, QK_K)
    if qtype == "Q5_K":
        high = (L >> 4).reshape(nb, 4, 2, 32).astype(np.uint8)                  # [nb, c, half, l]
        y["qh"] = (high << (2 * np.arange(4, dtype=np.uint8)[None, :, None, None]
                            + np.arange(2, dtype=np.uint8)[None, None, :, None])).sum(axis=(1, 2), dtype=np.uint8)
    y["qs"] = _pack4(L & 0xF)
    return y


def _quantize_q6_k(B):
    nb = len(B)
    s, L = make_qx_quants(B.reshape(nb * 16, 16), 32)
    s, L = s.reshape(nb, 16), L.reshape(nb, 16, 16)
    max_s = signed_max(s)[0]
    zero = np.abs(max_s) < GROUP_MAX_EPS
    iscale = (F32(-128) / np.where(zero, F32(1), max_s)).astype(F32)
    y = np.zeros(nb, LAYOUTS["Q6_K"])
    y["d"] = np.where(zero, F32(0), F32(1) / iscale).astype(F16)
    y["scales"] = np.where(zero[:, None], 0, np.minimum(127, nearest_int(iscale[:, None] * s))).astype(np.int8)
    dd = (y["d"].astype(F32)[:, None] * y["scales"].astype(F32))[..., None]     # [nb, 16, 1]
    L = _requantize(B.reshape(nb, 16, 16), dd, None, -32, 31, L - 32) + 32
    L = np.where(zero[:, None, None], 0, L).reshape(nb, 2, 4, 32).astype(np.uint8)   # [nb, h, k, l]: e_{128h+32k+l}
    lo, hi = L & 0xF, L >> 4
    y["ql"] = np.concatenate([lo[:, :, 0] | lo[:, :, 2] << 4, lo[:, :, 1] | lo[:, :, 3] << 4], axis=2).reshape(nb, 128)
    y["qh"] = (hi[:, :, 0] | hi[:, :, 1] << 2 | hi[:, :, 2] << 4 | hi[:, :, 3] << 6).reshape(nb, 64)
    return y


def quantize_blocks(B, qtype: str):
    """``B [nb, 256]`` float32 -> structured super-blocks ``[nb]`` of ``LAYOUTS[qtype]``."""
    if qtype == "Q2_K":
        return _quantize_q2_k(B)
    if qtype == "Q3_K":
        return _quantize_q3_k(B)
    if qtype == "Q6_K":
        return _quantize_q6_k(B)
    return _quantize_q45_k(B, qtype)


# --- dequantize -----------------------------------------------------------------------------------


def dequantize_blocks(y, qtype: str):
    """Structured super-blocks ``[nb]`` -> float32 ``[nb, 256]``, ggml's (and gguf-py's) values bit for bit."""
    nb = len(y)
    d = y["d"].astype(F32)[:, None]                                              # [nb, 1]
    if qtype == "Q2_K":
        dl = d * (y["scales"] & 0xF).astype(F32)                                 # [nb, 16]
        ml = y["dmin"].astype(F32)[:, None] * (y["scales"] >> 4).astype(F32)
        q = _unpack2(y["qs"]).reshape(nb, 16, 16).astype(F32)
        return (dl[..., None] * q - ml[..., None]).reshape(nb, QK_K)
    if qtype == "Q3_K":
        dl = d * (_unpack_q3_scales(y["scales"]) - 32).astype(F32)               # [nb, 16]
        hbit = (y["hmask"][:, None, :] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1   # [nb, 8, 32]
        q = _unpack2(y["qs"]).astype(np.int32) + 4 * hbit.reshape(nb, QK_K).astype(np.int32) - 4
        return (dl[..., None] * q.reshape(nb, 16, 16).astype(F32)).reshape(nb, QK_K)
    if qtype == "Q6_K":
        dl = d * y["scales"].astype(F32)                                         # [nb, 16]
        ql, qh = y["ql"].reshape(nb, 2, 2, 32), y["qh"].reshape(nb, 2, 1, 32)    # [nb, h, ., l]
        lo = np.stack([ql[:, :, 0] & 0xF, ql[:, :, 1] & 0xF, ql[:, :, 0] >> 4, ql[:, :, 1] >> 4], axis=2)
        hi = (qh >> np.array([0, 2, 4, 6], np.uint8)[None, None, :, None]) & 3   # [nb, h, k, l]
        q = (lo | hi << 4).astype(np.int32) - 32
        return (dl[..., None] * q.reshape(nb, 16, 16).astype(F32)).reshape(nb, QK_K)
    sc, mn = _unpack_scale_min_k4(y["scales"])                                   # Q4_K, Q5_K
    dl = d * sc.astype(F32)
    ml = y["dmin"].astype(F32)[:, None] * mn.astype(F32)
    q = _unpack4(y["qs"]).astype(np.int32)
    if qtype == "Q5_K":
        shifts = (2 * np.arange(4, dtype=np.uint8)[:, None] + np.arange(2, dtype=np.uint8)[None, :])   # [c, half]
        q |= (((y["qh"][:, None, None, :] >> shifts[None, :, :, None]) & 1).astype(np.int32) << 4).reshape(nb, QK_K)
    return (dl[..., None] * q.reshape(nb, 8, 32).astype(F32) - ml[..., None]).reshape(nb, QK_K)
