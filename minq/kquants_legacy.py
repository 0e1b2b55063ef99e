"""Chapter 08 — ggml's blocks of 32 (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) and its ternary blocks (TQ1_0, TQ2_0).

The "legacy" types are chapter 03's group quantization with g = 32 and an fp16 scale, in ggml's byte
layout. Symmetric ("type-0") types take the block's signed extreme value ``max`` and set
``d = max / -2^(b-1)``, so that value lands exactly on the most negative code; asymmetric ("type-1")
types store the block minimum ``m``:

    Q4_0   x_hat = d (q - 8)     q = min(15, trunc(x / d + 8.5))          d = max / -8
    Q5_0   x_hat = d (q - 16)    q = min(31, trunc(x / d + 16.5))         d = max / -16
    Q4_1   x_hat = d q + m       q = min(15, trunc((x - m) / d + 0.5))    d = (max - min) / 15, m = min
    Q5_1   x_hat = d q + m       q = trunc((x - m) / d + 0.5)             d = (max - min) / 31
    Q8_0   x_hat = d q           q = roundf(x / d)                        d = amax / 127
    TQ1_0, TQ2_0 (blocks of 256, BitNet b1.58's ternary weights, chapter 11):
           x_hat = d (t - 1)     t = lroundf(x / d) + 1 in {0, 1, 2}       d = amax

``trunc(v + 8.5)`` is round-half-up, not the half-to-even of chapter 02; ``roundf`` rounds half away
from zero. The codes use the unrounded float32 ``d`` (through ``1 / d``); only the stored ``d`` is fp16.

Byte layouts (little-endian; ``d``/``m`` fp16; ``e_k`` is element k of the block):

    Q4_0  [d:2][qs:16]            qs[j] = e_j | e_{j+16} << 4                    18 bytes / 32 = 4.5 bits
    Q4_1  [d:2][m:2][qs:16]                                                        20 bytes = 5.0 bits
    Q5_0  [d:2][qh:4][qs:16]      qs as Q4_0 (low 4 bits); bit i of the u32 qh = bit 4 of e_i   5.5 bits
    Q5_1  [d:2][m:2][qh:4][qs:16]                                                  24 bytes = 6.0 bits
    Q8_0  [d:2][qs:32 int8]                                                        34 bytes = 8.5 bits
    TQ2_0 [qs:64][d:2]            qs[32c + m] bits 2n..2n+1 = t of e_{128c + m + 32n}   66 bytes / 256
    TQ1_0 [qs:48][qh:4][d:2]      five trits a byte, base 3, first trit most significant:
                                    qs[m]      <- e_{m + 32n},        m < 32, n = 0..4  (e_0..e_159)
                                    qs[32 + m] <- e_{160 + m + 16n},  m < 16            (e_160..e_239)
                                    qh[j]      <- e_{240 + j + 4n},   j < 4, n = 0..3, then x 3
                                  each byte stores ceil(v * 256 / 243), so that trit k is read back as
                                  ((byte * 3^k mod 256) * 3) >> 8                  54 bytes = 1.6875 bits

After llama.cpp's ``quantize_row_*_ref`` / ``dequantize_row_*`` (ggml-quants.c); tests/test_kquants.py
checks them byte for byte against gguf-py (which quantizes exactly these types) and llama.cpp's own
bytes (data/kquants/golden.npz). Notebook: ``notebooks/08_kquants.ipynb``.
"""

from __future__ import annotations

import numpy as np

from minq.kquants_search import roundf, signed_max

__all__ = ["LAYOUTS", "BLOCK", "quantize_blocks", "dequantize_blocks"]

F32, F16 = np.float32, np.float16

LAYOUTS = {
    "Q4_0": np.dtype([("d", "<f2"), ("qs", "u1", 16)]),
    "Q4_1": np.dtype([("d", "<f2"), ("m", "<f2"), ("qs", "u1", 16)]),
    "Q5_0": np.dtype([("d", "<f2"), ("qh", "<u4"), ("qs", "u1", 16)]),
    "Q5_1": np.dtype([("d", "<f2"), ("m", "<f2"), ("qh", "<u4"), ("qs", "u1", 16)]),
    "Q8_0": np.dtype([("d", "<f2"), ("qs", "i1", 32)]),
    "TQ1_0": np.dtype([("qs", "u1", 48), ("qh", "u1", 4), ("d", "<f2")]),
    "TQ2_0": np.dtype([("qs", "u1", 64), ("d", "<f2")]),
}
BLOCK = {"Q4_0": 32, "Q4_1": 32, "Q5_0": 32, "Q5_1": 32, "Q8_0": 32, "TQ1_0": 256, "TQ2_0": 256}

_BITS = {"Q4_0": 4, "Q5_0": 5, "Q4_1": 4, "Q5_1": 5}
_POW3 = np.array([81, 27, 9, 3, 1], np.uint16)          # Horner order: the first trit is the most significant


def _inverse(d):
    """``1 / d``, and 0 where ``d == 0`` (a block of zeros)."""
    with np.errstate(divide="ignore"):
        return np.where(d != 0, F32(1) / d, F32(0)).astype(F32)


def _nibbles(q):
    """``q [nb, 32]`` codes -> ``qs [nb, 16]``: element j in the low nibble, element j + 16 in the high."""
    return ((q[:, :16] & 0xF) | ((q[:, 16:] & 0xF) << 4)).astype(np.uint8)


def _quantize_q45(B, qtype):
    """Q4_0 / Q5_0 / Q4_1 / Q5_1 of ``B [nb, 32]`` float32 -> structured blocks ``[nb]``."""
    bits = _BITS[qtype]
    top = (1 << bits) - 1
    y = np.zeros(len(B), LAYOUTS[qtype])
    if qtype.endswith("_0"):
        d = signed_max(B)[0] / F32(-(1 << (bits - 1)))                      # [nb]
        v = B * _inverse(d)[:, None] + F32((1 << (bits - 1)) + 0.5)
        q = np.minimum(top, v.astype(np.int32))                           # trunc, then clamp
    else:
        rows = np.arange(len(B))                                            # first minimum / maximum, as
        mn, mx = B[rows, np.argmin(B, axis=1)], B[rows, np.argmax(B, axis=1)]   # C's strict < / > loop
        d = (mx - mn) / F32(top)
        v = (B - mn[:, None]) * _inverse(d)[:, None] + F32(0.5)
        q = v.astype(np.int32)
        q = np.minimum(top, q) if bits == 4 else q                         # Q5_1 does not clamp
        y["m"] = mn.astype(F16)
    y["d"] = d.astype(F16)
    y["qs"] = _nibbles(q)
    if bits == 5:
        y["qh"] = (((q >> 4) & 1).astype(np.uint32) << np.arange(32, dtype=np.uint32)).sum(axis=1, dtype=np.uint32)
    return y


def _quantize_q8_0(B):
    d = np.abs(B).max(axis=1) / F32(127)
    y = np.zeros(len(B), LAYOUTS["Q8_0"])
    y["d"] = d.astype(F16)
    y["qs"] = roundf(B * _inverse(d)[:, None]).astype(np.int8)
    return y


def _trits(B):
    """``(d [nb], t [nb, 256] in {0, 1, 2})`` of ternary blocks: d = amax, t = lroundf(x / d) + 1.

    A block whose amax is below ~3e-39 has ``1 / d = inf``: C then converts inf or NaN to an integer
    (undefined behaviour; on x86-64 ``lroundf`` gives LONG_MIN, so ``t = 1``, a zero). minq does as
    llama.cpp does on x86-64: the integer conversion of NumPy gives the same INT64_MIN there."""
    d = np.abs(B).max(axis=1)
    r = roundf(B * _inverse(d)[:, None])                                # inf / NaN in such a block
    return d, ((r.astype(np.int64) + 1) & 0xFF).astype(np.uint16)      # C keeps the low bits


def _base3(t):
    """Trits ``[..., 5]`` -> one byte each: ceil(v * 256 / 243), v = sum t_n 3^(4-n) in C's uint8."""
    v = (t * _POW3).sum(axis=-1, dtype=np.uint16) & 0xFF
    return ((v * 256 + 242) // 243).astype(np.uint8)


def _quantize_tq1_0(B):
    d, t = _trits(B)
    y = np.zeros(len(B), LAYOUTS["TQ1_0"])
    first = t[:, :160].reshape(-1, 5, 32).transpose(0, 2, 1)            # [nb, m, n] = e_{m + 32n}
    second = t[:, 160:240].reshape(-1, 5, 16).transpose(0, 2, 1)        # e_{160 + m + 16n}
    last = t[:, 240:].reshape(-1, 4, 4).transpose(0, 2, 1)              # e_{240 + j + 4n}, 4 trits
    y["qs"][:, :32], y["qs"][:, 32:] = _base3(first), _base3(second)
    y["qh"] = _base3(np.concatenate([last, np.zeros_like(last[..., :1])], axis=-1))   # x 3: a 5th trit of 0
    y["d"] = d.astype(F16)
    return y


def _quantize_tq2_0(B):
    d, t = _trits(B)
    y = np.zeros(len(B), LAYOUTS["TQ2_0"])
    t = t.reshape(-1, 2, 4, 32)                                          # [nb, c, n, m] = e_{128c + 32n + m}
    shifts = (2 * np.arange(4, dtype=np.uint16))[None, None, :, None]
    y["qs"] = ((t & 3) << shifts).sum(axis=2, dtype=np.uint16).reshape(-1, 64).astype(np.uint8)
    y["d"] = d.astype(F16)
    return y


def quantize_blocks(B, qtype: str):
    """``B [nb, BLOCK[qtype]]`` float32 -> structured blocks ``[nb]`` of ``LAYOUTS[qtype]``."""
    if qtype == "Q8_0":
        return _quantize_q8_0(B)
    if qtype == "TQ1_0":
        return _quantize_tq1_0(B)
    if qtype == "TQ2_0":
        return _quantize_tq2_0(B)
    return _quantize_q45(B, qtype)


def _unbase3(byte, k):
    """Trit ``k`` (0 = most significant) of base-3 bytes: ``((byte * 3^k mod 256) * 3) >> 8``."""
    return ((((byte.astype(np.uint16) * 3 ** k) & 0xFF) * 3) >> 8).astype(np.int16)


def dequantize_blocks(y, qtype: str):
    """Structured blocks ``[nb]`` -> float32 ``[nb, BLOCK[qtype]]`` (gguf-py's and ggml's values, bit for bit)."""
    d = y["d"].astype(F32)[:, None]
    if qtype == "Q8_0":
        return y["qs"].astype(F32) * d
    if qtype in ("TQ1_0", "TQ2_0"):
        if qtype == "TQ2_0":
            t = (y["qs"].reshape(-1, 2, 1, 32) >> (2 * np.arange(4, dtype=np.uint8))[None, None, :, None]) & 3
            t = t.reshape(-1, 256).astype(np.int16)
        else:
            qs, qh = y["qs"], y["qh"]
            t = np.concatenate([np.stack([_unbase3(qs[:, :32], k) for k in range(5)], 1).reshape(-1, 160),
                                np.stack([_unbase3(qs[:, 32:], k) for k in range(5)], 1).reshape(-1, 80),
                                np.stack([_unbase3(qh, k) for k in range(4)], 1).reshape(-1, 16)], axis=1)
        return (t - 1).astype(F32) * d
    q = np.concatenate([y["qs"] & 0xF, y["qs"] >> 4], axis=1).astype(np.int32)       # [nb, 32]
    if qtype in ("Q5_0", "Q5_1"):
        q |= ((y["qh"][:, None] >> np.arange(32, dtype=np.uint32)) & 1).astype(np.int32) << 4
    if qtype.endswith("_0"):
        return (q - (8 if qtype == "Q4_0" else 16)).astype(F32) * d
    return q.astype(F32) * d + y["m"].astype(F32)[:, None]
