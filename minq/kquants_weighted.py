"""Chapter 08 — llama.cpp's quantizers with an importance matrix ("imatrix"): the same bytes, better codes.

``llama-quantize --imatrix`` gives every column k of a weight matrix an importance ``imatrix_k >= 0``
(the mean squared activation that column met on calibration text) and the searches of
``minq.kquants_search`` then minimise the weighted error of each block

    E = sum_i w_i (x_i - x_hat_i)^2          w_i = imatrix_i * sqrt(sigma2 + x_i^2)

where ``sigma2`` is a mean square of the weights around x_i: over the whole row for the legacy types
(``sum x^2 / n``), over the super-block of 256 for the k-quants (``sum x^2 / 256`` for Q2_K,
``2 sum x^2 / 256`` for Q3_K, Q4_K, Q5_K); Q6_K takes ``w_i = imatrix_i`` as it is. The block
layouts are those of ``minq.kquants_legacy`` and ``minq.kquants_k``; only the searches change:

    Q4_0, Q5_0   make_qx_quants(nmax 8 / 16, w): 19 trial scales, least-squares d
    Q4_1, Q5_1   make_qkx3_quants(nmax 15 / 31, w, rmin -0.9, rdelta 0.05, 37 trials): d and min
    Q2_K         sub-blocks of 16: make_qkx3_quants(3, w); the 16 scales and the 16 mins each by
                 make_qp_quants(15, sw), sw_j = sum of sub-block j's weights, against fp16 d / dmin
    Q3_K         sub-blocks of 16: make_qx_quants(4, w); the 16 scales by make_qx_quants(32, sw)
    Q4_K, Q5_K   sub-blocks of 32: make_qkx3_quants(15 / 31, w); scales and mins by make_qp_quants(63, sw)
    Q6_K         sub-blocks of 16: make_qx_quants(32, imatrix); the scales as without an imatrix

then, as without an imatrix, every sub-block whose stored scale is not 0 is rounded again with the
scales as stored. Block b of a row uses ``imatrix[B b : B (b + 1)]`` (B the block size), the same
for every row. After llama.cpp's ``quantize_row_<type>_impl`` / ``quantize_<type>`` (ggml-quants.c),
in float32 and C's order of operations (``minq.kquants_search``'s conventions), so that the bytes
are llama.cpp's. ``minq.kquants.quantize(x, qtype, imatrix=w)`` runs the Numba kernels of
``minq.kquants_kernels_weighted``, proven equal to this code by tests/test_kquants_weighted.py;
``quantize_reference`` runs this. Notebook: ``notebooks/08_kquants.ipynb``.
"""

from __future__ import annotations

import numpy as np

from minq import kquants_k, kquants_legacy
from minq.kquants_k import (
    _pack2,
    _pack4,
    _pack_q3_scales,
    _pack_scale_min_k4,
    _requantize,
    _unpack_q3_scales,
    _unpack_scale_min_k4,
)
from minq.kquants_legacy import _nibbles
from minq.kquants_search import (
    GROUP_MAX_EPS,
    _seq_sum,
    make_qkx3_quants,
    make_qp_quants,
    make_qx_quants,
    nearest_int,
    signed_max,
)

__all__ = ["TYPES", "quantize_weighted"]

F32, F16 = np.float32, np.float16
QK_K = 256
TYPES = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")


def _sum_x2(X):
    """``sum_i x_i^2`` of each row of ``X [N, n]``, left to right in float32 -> ``[N]``."""
    Xt = X.T
    return _seq_sum(Xt * Xt)


def _weights(X, qw, sigma2):
    """``w = qw * sqrt(sigma2 + x^2)`` for ``X, qw [N, n]``, ``sigma2 [N]``."""
    return qw * np.sqrt(sigma2[:, None] + X * X)


def _bit4(L):
    """Bit 4 of the codes ``L [nb, 32]`` as the uint32 ``qh`` of Q5_0 / Q5_1 (bit i <- element i)."""
    return (((L >> 4) & 1).astype(np.uint32) << np.arange(32, dtype=np.uint32)).sum(axis=1, dtype=np.uint32)


def _legacy(x, qtype, imatrix):
    rows, n = x.shape
    sigma2 = np.repeat(_sum_x2(x) / F32(n), n // 32)                   # [rows * n / 32]: per row
    B = x.reshape(-1, 32)                                               # [nb, 32]
    W = _weights(B, np.tile(imatrix.reshape(-1, 32), (rows, 1)), sigma2)
    y = np.zeros(len(B), kquants_legacy.LAYOUTS[qtype])
    if qtype.endswith("_0"):
        d, L = make_qx_quants(B, 8 if qtype == "Q4_0" else 16, W)       # L in 0..15 / 0..31
    else:
        d, m, L = make_qkx3_quants(B, W, 15 if qtype == "Q4_1" else 31, -0.9, 0.05, 36)
        y["m"] = (-m).astype(F16)
    y["d"] = d.astype(F16)
    y["qs"] = _nibbles(L)
    if qtype.startswith("Q5"):
        y["qh"] = _bit4(L)
    return y


def _q2_k(B, QW, sigma2):
    nb = len(B)
    S = B.reshape(nb * 16, 16)                                          # [nb * 16, 16] sub-blocks
    W = _weights(S, QW.reshape(nb * 16, 16), np.repeat(sigma2, 16))
    sw = _seq_sum(W.T).reshape(nb, 16)                                  # [nb, 16]
    s, m, L = make_qkx3_quants(S, W, 3, -0.9, 0.05, 36)
    dm, Ls = make_qp_quants(s.reshape(nb, 16), sw, 15)
    mm, Lm = make_qp_quants(m.reshape(nb, 16), sw, 15)
    y = np.zeros(nb, kquants_k.LAYOUTS["Q2_K"])
    y["scales"] = (Ls | Lm << 4) & 0xFF                                 # uint8_t, as C stores it
    y["d"], y["dmin"] = dm.astype(F16), mm.astype(F16)
    sc = y["scales"]
    dd = (y["d"].astype(F32)[:, None] * (sc & 0xF).astype(F32))[..., None]    # [nb, 16, 1]
    dmin = (y["dmin"].astype(F32)[:, None] * (sc >> 4).astype(F32))[..., None]
    L = _requantize(B.reshape(nb, 16, 16), dd, dmin, 0, 3, L.reshape(nb, 16, 16))
    y["qs"] = _pack2(L.reshape(nb, QK_K))
    return y


def _q3_k(B, QW, sigma2):
    nb = len(B)
    S = B.reshape(nb * 16, 16)
    W = _weights(S, QW.reshape(nb * 16, 16), np.repeat(sigma2, 16))
    sw = _seq_sum(W.T).reshape(nb, 16)
    s, L = make_qx_quants(S, 4, W)                                      # L in 0..7
    d, Ls = make_qx_quants(s.reshape(nb, 16), 32, sw)                   # Ls in 0..63: sc_j = Ls_j - 32
    y = np.zeros(nb, kquants_k.LAYOUTS["Q3_K"])
    y["scales"] = _pack_q3_scales(Ls.astype(np.uint8))
    y["d"] = d.astype(F16)
    dd = (y["d"].astype(F32)[:, None] * (_unpack_q3_scales(y["scales"]) - 32).astype(F32))[..., None]
    L = _requantize(B.reshape(nb, 16, 16), dd, None, -4, 3, L.reshape(nb, 16, 16) - 4) + 4
    L = L.reshape(nb, QK_K)
    high = (L > 3).reshape(nb, 8, 32)                                   # [nb, k // 32, k % 32]
    shift = np.arange(8, dtype=np.uint8)[None, :, None]
    y["hmask"] = (high.astype(np.uint8) << shift).sum(axis=1, dtype=np.uint8)
    y["qs"] = _pack2(L & 3)
    return y


def _q45_k(B, QW, sigma2, qtype):
    nb = len(B)
    nmax = 15 if qtype == "Q4_K" else 31
    S = B.reshape(nb * 8, 32)                                           # [nb * 8, 32] sub-blocks
    W = _weights(S, QW.reshape(nb * 8, 32), np.repeat(sigma2, 8))
    sw = _seq_sum(W.T).reshape(nb, 8)
    s, m, L = make_qkx3_quants(S, W, nmax, -0.9, 0.05, 36)
    d, Ls = make_qp_quants(s.reshape(nb, 8), sw, 63)
    dmin, Lm = make_qp_quants(m.reshape(nb, 8), sw, 63)
    if qtype == "Q5_K":                                                 # only Q5_K clamps to 63
        Ls, Lm = np.minimum(63, Ls), np.minimum(63, Lm)
    y = np.zeros(nb, kquants_k.LAYOUTS[qtype])
    y["scales"] = _pack_scale_min_k4(Ls.astype(np.uint8), Lm.astype(np.uint8))
    y["d"], y["dmin"] = d.astype(F16), dmin.astype(F16)
    sc, mn = _unpack_scale_min_k4(y["scales"])
    dd = (y["d"].astype(F32)[:, None] * sc.astype(F32))[..., None]     # [nb, 8, 1]
    dm = (y["dmin"].astype(F32)[:, None] * mn.astype(F32))[..., None]
    L = _requantize(B.reshape(nb, 8, 32), dd, dm, 0, nmax, L.reshape(nb, 8, 32)).reshape(nb, QK_K)
    if qtype == "Q5_K":
        high = (L >> 4).reshape(nb, 4, 2, 32).astype(np.uint8)          # [nb, c, half, l]
        shift = (2 * np.arange(4, dtype=np.uint8)[:, None] + np.arange(2, dtype=np.uint8))[None, :, :, None]
        y["qh"] = (high << shift).sum(axis=(1, 2), dtype=np.uint8)     # bit 2c + half of qh[l]
    y["qs"] = _pack4(L & 0xF)
    return y


def _q6_k(B, QW):
    nb = len(B)
    s, L = make_qx_quants(B.reshape(nb * 16, 16), 32, QW.reshape(nb * 16, 16))  # w = the raw imatrix
    s, L = s.reshape(nb, 16), L.reshape(nb, 16, 16)
    max_s = signed_max(s)[0]
    zero = np.abs(max_s) < GROUP_MAX_EPS                                # the whole block stays 0
    iscale = (F32(-128) / np.where(zero, F32(1), max_s)).astype(F32)
    y = np.zeros(nb, kquants_k.LAYOUTS["Q6_K"])
    y["d"] = np.where(zero, F32(0), F32(1) / iscale).astype(F16)
    sc = np.minimum(127, nearest_int(iscale[:, None] * s))
    y["scales"] = np.where(zero[:, None], 0, sc).astype(np.int8)
    dd = (y["d"].astype(F32)[:, None] * y["scales"].astype(F32))[..., None]     # [nb, 16, 1]
    L = _requantize(B.reshape(nb, 16, 16), dd, None, -32, 31, L - 32) + 32
    L = np.where(zero[:, None, None], 0, L).reshape(nb, 2, 4, 32).astype(np.uint8)   # [nb, h, k, l]
    lo, hi = L & 0xF, L >> 4                                            # element 128h + 32k + l
    y["ql"] = np.concatenate([lo[:, :, 0] | lo[:, :, 2] << 4, lo[:, :, 1] | lo[:, :, 3] << 4],
                             axis=2).reshape(nb, 128)
    y["qh"] = (hi[:, :, 0] | hi[:, :, 1] << 2 | hi[:, :, 2] << 4 | hi[:, :, 3] << 6).reshape(nb, 64)
    return y


def quantize_weighted(x, qtype: str, imatrix):
    """``x [rows, n]`` float32 with importance ``imatrix [n] >= 0`` -> the structured blocks
    ``[rows * n / block]`` of ``LAYOUTS[qtype]``: the bytes of llama.cpp's ``quantize_<type>(x, ...,
    rows, n, imatrix)``. ``n`` a multiple of the block (32 for Q4_0 ... Q5_1, 256 for the k-quants)."""
    if qtype not in TYPES:
        raise ValueError(f"qtype must be one of {TYPES}, got {qtype!r}")
    if imatrix is None:
        raise ValueError("imatrix is required (without one llama.cpp runs the *_ref quantizers: minq.kquants)")
    x = np.ascontiguousarray(x, F32)
    imatrix = np.ascontiguousarray(imatrix, F32)
    block = 32 if qtype in kquants_legacy.LAYOUTS else QK_K
    if x.ndim != 2 or x.shape[1] % block or imatrix.shape != (x.shape[1],):
        raise ValueError(f"need x [rows, n] with n a multiple of {block} and imatrix [n], got {x.shape}, "
                         f"{imatrix.shape}")
    if block == 32:
        return _legacy(x, qtype, imatrix)
    B = x.reshape(-1, QK_K)                                             # [nb, 256] super-blocks
    QW = np.tile(imatrix.reshape(-1, QK_K), (x.shape[0], 1))           # [nb, 256]: each row's columns
    if qtype == "Q6_K":
        return _q6_k(B, QW)
    sum_x2 = _sum_x2(B)                                                 # [nb]
    if qtype == "Q2_K":
        return _q2_k(B, QW, sum_x2 / F32(QK_K))
    sigma2 = F32(2) * sum_x2 / F32(QK_K)
    if qtype == "Q3_K":
        return _q3_k(B, QW, sigma2)
    return _q45_k(B, QW, sigma2, qtype)
