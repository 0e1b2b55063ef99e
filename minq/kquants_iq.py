"""Chapter 08 — llama.cpp's non-linear 4-bit types IQ4_NL and IQ4_XS: a 16-entry codebook, not a grid.

Every type before this one puts its codes on an evenly spaced grid, ``x_hat = d q (- m)``. IQ4_NL
keeps 4-bit codes and one fp16 scale per block of 32 (the size of Q4_0) but maps each code through
a fixed table of 16 signed integers, denser near zero, where most weights of a trained model lie:

    x_hat = d * T[q]      T = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113]

IQ4_XS is the same codebook in super-blocks of 256: each sub-block of 32 has a 6-bit scale
``ls - 32`` against one fp16 ``d`` (as the k-quants store theirs), 4.25 bits per weight.

The quantizer (both types, per sub-block of 32): with weights ``w_i`` — ``x_i^2``, or with an
importance matrix ``imatrix_i * sqrt(sigma^2 + x_i^2)``, ``sigma^2 = 2 sum(x^2) / S`` over the super-block
of S weights — start from ``d = max / 127`` (``max`` the signed value of largest |x|), give every
value the nearest table entry to ``x / d`` (ties go up), and set ``d = sum w q x / sum w q^2``, the
weighted least-squares scale for those codes. Then try the 15 scales ``d = max / (t - 127)``,
t = -7..7, and keep the codes and scale with the largest ``(sum w q x)^2 / sum w q^2`` (the smallest
weighted error). IQ4_NL stores that ``d`` and the codes of ``x / d``; IQ4_XS quantizes the eight scales
to ``l = nearest_int(scale / d)`` in [-32, 31], ``d = -max_scale / 32``, then re-rounds the codes.

Byte layouts (little-endian, ``d`` fp16):

    IQ4_NL  [d:2][qs:16]                                  qs[j] = q_j | q_{j+16} << 4     18 bytes / 32 = 4.5 bits
    IQ4_XS  [d:2][scales_h:2][scales_l:4][qs:128]          136 bytes / 256 = 4.25 bits
              sub-block b (32 weights) holds ls_b = l_b + 32 in 0..63:
              low 4 bits in nibble b % 2 of scales_l[b // 2], high 2 bits at bits 2b..2b+1 of scales_h;
              its codes in qs[16b .. 16b + 15] as IQ4_NL's

After llama.cpp's ``quantize_iq4_nl`` / ``quantize_iq4_xs`` (what ``llama-quantize`` runs, with or
without an imatrix; the ``*_ref`` variant of IQ4_NL skips the 15 trial scales) and
``dequantize_row_iq4_nl`` / ``_xs`` (ggml-quants.c). Float32 arithmetic in C's order, sums left to
right (``minq.kquants_search``'s conventions). Notebook: ``notebooks/08_kquants.ipynb``.
"""

from __future__ import annotations

import numpy as np

from minq.kquants_search import GROUP_MAX_EPS, _seq_sum, nearest_int, signed_max

__all__ = ["LAYOUTS", "BLOCK", "CODEBOOK", "quantize_blocks", "dequantize_blocks", "best_index"]

F32, F16 = np.float32, np.float16

CODEBOOK = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], np.int8)
_T = CODEBOOK.astype(F32)
NTRY = 7                        # trial scales max / (t - 127), t = -7..7

LAYOUTS = {
    "IQ4_NL": np.dtype([("d", "<f2"), ("qs", "u1", 16)]),
    "IQ4_XS": np.dtype([("d", "<f2"), ("scales_h", "<u2"), ("scales_l", "u1", 4), ("qs", "u1", 128)]),
}
BLOCK = {"IQ4_NL": 32, "IQ4_XS": 256}


def best_index(v):
    """Index of the table entry nearest to each float32 ``v`` (ggml's ``best_index_int8``): below the
    first entry 0, above the last 15, else the lower of the two neighbours only when strictly nearer."""
    v = np.asarray(v, F32)
    mu = np.clip(np.searchsorted(_T, v, side="right"), 1, 15)         # first entry > v
    i = np.where(v - _T[mu - 1] < _T[mu] - v, mu - 1, mu)
    return np.where(v <= _T[0], 0, np.where(v >= _T[15], 15, i)).astype(np.uint8)


def _fit(X, W, inv):
    """Codes ``L = best_index(inv x)`` of sub-blocks ``X [N, 32]`` and their sums ``sum w q x``, ``sum w q^2``."""
    L = best_index(inv[:, None] * X)
    q = _T[L]
    wq = W * q
    return L, _seq_sum((wq * X).T), _seq_sum((wq * q).T)


def _scales(X, W):
    """The search of the module docstring on sub-blocks ``X [N, 32]`` with weights ``W``: float32 scales
    ``[N]`` (0 for a sub-block whose max |x| is below GROUP_MAX_EPS)."""
    mx, amax = signed_max(X)
    live = amax >= GROUP_MAX_EPS
    mx = np.where(live, mx, F32(1))                                     # dead rows: any finite value
    d = -mx / _T[0]
    _, sqx, sq2 = _fit(X, W, F32(1) / d)
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.where(sq2 > 0, sqx / sq2, F32(0)).astype(F32)
        best = d * sqx
        for t in range(-NTRY, NTRY + 1):
            _, sqx, sq2 = _fit(X, W, F32(t + int(CODEBOOK[0])) / mx)
            better = (sq2 > 0) & (sqx * sqx > best * sq2)
            d = np.where(better, sqx / sq2, d).astype(F32)
            best = np.where(better, d * sqx, best).astype(F32)
    return np.where(live, d, F32(0)).astype(F32)


def _nibbles(L):
    """Codes ``[N, 32]`` -> ``[N, 16]`` bytes: element j low nibble, element j + 16 high."""
    return (L[:, :16] | (L[:, 16:] << 4)).astype(np.uint8)


def quantize_blocks(B, qtype: str, imatrix=None):
    """``B [nb, BLOCK[qtype]]`` float32 -> structured blocks ``[nb]``. ``imatrix``: ``None`` or float32
    importances ``[nb, BLOCK[qtype]]`` of the same positions (a row's imatrix repeated per block)."""
    S = BLOCK[qtype]
    nb, nsub = len(B), S // 32
    sigma2 = _seq_sum((B * B).T) * F32(2.0 / S)                         # [nb]
    X = B.reshape(-1, 32)                                               # [nb * nsub, 32]
    if imatrix is None:
        W = X * X
    else:
        W = imatrix.reshape(-1, 32) * np.sqrt(np.repeat(sigma2, nsub)[:, None] + X * X)
    s = _scales(X, W)                                                   # [nb * nsub]
    y = np.zeros(nb, LAYOUTS[qtype])
    if qtype == "IQ4_NL":
        y["d"] = s.astype(F16)
        with np.errstate(divide="ignore"):
            inv = np.where(s != 0, F32(1) / s, F32(0)).astype(F32)
        y["qs"] = _nibbles(best_index(inv[:, None] * X))
        return y
    s = s.reshape(nb, nsub)
    max_scale, _ = signed_max(s)                                        # first largest |scale|
    d = -max_scale / F32(32)                                            # a zero super-block: -0.0
    with np.errstate(divide="ignore"):
        inv = np.where(d != 0, F32(1) / d, F32(0)).astype(F32)
        l = np.clip(nearest_int(inv[:, None] * s), -32, 31)             # [nb, nsub]
        dl = d[:, None] * l.astype(F32)
        idl = np.where(dl != 0, F32(1) / dl, F32(0)).astype(F32)
    L = best_index(idl.reshape(-1, 1) * X)                              # [nb * nsub, 32]
    ls = (l + 32).astype(np.uint16)
    y["d"] = d.astype(F16)
    y["scales_l"] = (ls[:, 0::2] & 0xF) | ((ls[:, 1::2] & 0xF) << 4)
    y["scales_h"] = ((ls >> 4) << (2 * np.arange(nsub, dtype=np.uint16))).sum(axis=1, dtype=np.uint16)
    y["qs"] = _nibbles(L).reshape(nb, -1)
    return y


def dequantize_blocks(y, qtype: str):
    """Structured blocks ``[nb]`` -> float32 ``[nb, BLOCK[qtype]]`` (gguf-py's and ggml's values, bit for bit)."""
    d = y["d"].astype(F32)
    qs = y["qs"].reshape(len(y), -1, 16)                                 # [nb, nsub, 16]
    T = _T[np.concatenate([qs & 0xF, qs >> 4], axis=2)]                 # [nb, nsub, 32]
    if qtype == "IQ4_NL":
        return (d[:, None, None] * T).reshape(len(y), -1)
    b = np.arange(8)
    ls = ((y["scales_l"][:, b // 2] >> (4 * (b % 2))) & 0xF) | (((y["scales_h"][:, None] >> (2 * b)) & 3) << 4)
    dl = d[:, None] * (ls.astype(np.int32) - 32).astype(F32)            # [nb, 8]
    return (dl[:, :, None] * T).reshape(len(y), -1)
