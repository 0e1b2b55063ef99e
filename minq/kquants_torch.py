"""Chapter 08 — dequantizing ggml blocks with torch, on the tensor's device (CPU or CUDA).

The same formulas as the NumPy references (``minq.kquants_legacy.dequantize_blocks``,
``minq.kquants_k.dequantize_blocks``, ``minq.kquants_iq.dequantize_blocks``), written on raw bytes ``[nb, nbytes]`` uint8 because torch has no
structured dtypes: a float16 field is two bytes viewed as ``torch.float16``; codes are cut out of
their bytes with shifts and masks. Each float32 product is its own elementwise operation, in ggml's
order (``(d * sc) * q - dmin * m``), so the values equal the NumPy path bit for bit on any IEEE device
(tests/test_kquants.py compares them on CPU torch). Quantizing stays on the CPU (``minq.kquants``):
it is done once per model, and the scale searches are sequential per block.
"""

from __future__ import annotations

from minq.kquants_iq import CODEBOOK
from minq.kquants_iq import LAYOUTS as IQ_LAYOUTS
from minq.kquants_k import LAYOUTS as K_LAYOUTS
from minq.kquants_legacy import LAYOUTS as L_LAYOUTS

__all__ = ["dequantize_blocks_torch"]

_LAYOUTS = {**L_LAYOUTS, **K_LAYOUTS, **IQ_LAYOUTS}


def _f16(raw, qtype, field):
    """The float16 field ``field`` of every block, as float32 ``[nb, 1]``."""
    import torch

    o = _LAYOUTS[qtype].fields[field][1]
    return raw[:, o:o + 2].contiguous().view(torch.float16).float()


def _bytes(raw, qtype, field):
    o = _LAYOUTS[qtype].fields[field][1]
    n = _LAYOUTS[qtype].fields[field][0].itemsize
    return raw[:, o:o + n]


def _bits(b, shifts, mask):
    """``(b[:, None, :] >> shifts[:, None]) & mask`` as int32: ``[nb, len(shifts), width]``."""
    import torch

    s = torch.tensor(shifts, dtype=torch.int32, device=b.device)
    return (b.int()[:, None, :] >> s[None, :, None]) & mask


def _legacy(raw, qtype):
    import torch

    d = _f16(raw, qtype, "d")
    qs = _bytes(raw, qtype, "qs")
    if qtype == "Q8_0":
        return qs.view(torch.int8).float() * d
    if qtype in ("TQ1_0", "TQ2_0"):
        if qtype == "TQ2_0":
            t = _bits(qs.reshape(-1, 32), (0, 2, 4, 6), 3).reshape(-1, 2, 4, 32).reshape(-1, 256)
        else:
            def trits(b, k):                                  # ((b * 3^k mod 256) * 3) >> 8, k = 0 first
                return torch.stack([(((b.int() * 3 ** n) & 0xFF) * 3) >> 8 for n in range(k)], 1).reshape(len(b), -1)
            qh = _bytes(raw, qtype, "qh")
            t = torch.cat([trits(qs[:, :32], 5), trits(qs[:, 32:], 5), trits(qh, 4)], 1)
        return (t - 1).float() * d
    q = torch.cat([qs.int() & 0xF, qs.int() >> 4], 1)                         # [nb, 32]
    if qtype in ("Q5_0", "Q5_1"):
        h = _bytes(raw, qtype, "qh").int()
        qh = h[:, 0] | h[:, 1] << 8 | h[:, 2] << 16 | h[:, 3] << 24
        q = q | ((qh[:, None] >> torch.arange(32, device=raw.device, dtype=torch.int32)) & 1) << 4
    if qtype in ("Q4_0", "Q5_0"):
        return (q - (8 if qtype == "Q4_0" else 16)).float() * d
    return q.float() * d + _f16(raw, qtype, "m")


def _planes2(qs):
    """2-bit planes ``[nb, 64]`` -> codes ``[nb, 256]``: ``qs[32h + l]`` bits 2k = ``e_{128h + 32k + l}``."""
    return _bits(qs.reshape(-1, 32), (0, 2, 4, 6), 3).reshape(qs.shape[0], 256)


def _scale_min_k4(s):
    import torch

    s = s.int()
    sc = torch.cat([s[:, 0:4] & 63, (s[:, 8:12] & 0xF) | (s[:, 0:4] >> 6) << 4], 1)
    m = torch.cat([s[:, 4:8] & 63, (s[:, 8:12] >> 4) | (s[:, 4:8] >> 6) << 4], 1)
    return sc, m


def _k(raw, qtype):
    import torch

    nb = raw.shape[0]
    d = _f16(raw, qtype, "d")
    sc = _bytes(raw, qtype, "scales")
    if qtype == "Q2_K":
        dl = d * (sc.int() & 0xF).float()
        ml = _f16(raw, qtype, "dmin") * (sc.int() >> 4).float()
        q = _planes2(_bytes(raw, qtype, "qs")).reshape(nb, 16, 16).float()
        return (dl[..., None] * q - ml[..., None]).reshape(nb, 256)
    if qtype == "Q3_K":
        s = sc.int()
        low = torch.cat([s[:, :8] & 0xF, s[:, :8] >> 4], 1)
        high = ((s[:, None, 8:] >> torch.tensor([0, 2, 4, 6], device=raw.device, dtype=torch.int32)[None, :, None]) & 3)
        dl = d * ((low | high.reshape(nb, 16) << 4) - 32).float()
        hbit = _bits(_bytes(raw, qtype, "hmask"), tuple(range(8)), 1).reshape(nb, 256)
        q = _planes2(_bytes(raw, qtype, "qs")) + 4 * hbit - 4
        return (dl[..., None] * q.reshape(nb, 16, 16).float()).reshape(nb, 256)
    if qtype == "Q6_K":
        dl = d * sc.view(torch.int8).float()
        ql = _bytes(raw, qtype, "ql").int().reshape(nb, 2, 2, 32)
        lo = torch.stack([ql[:, :, 0] & 0xF, ql[:, :, 1] & 0xF, ql[:, :, 0] >> 4, ql[:, :, 1] >> 4], 2)
        hi = _bits(_bytes(raw, qtype, "qh").reshape(-1, 32), (0, 2, 4, 6), 3).reshape(nb, 2, 4, 32)
        q = ((lo | hi << 4) - 32).reshape(nb, 16, 16).float()
        return (dl[..., None] * q).reshape(nb, 256)
    s, m = _scale_min_k4(sc)                                                   # Q4_K, Q5_K
    dl, ml = d * s.float(), _f16(raw, qtype, "dmin") * m.float()
    qs = _bytes(raw, qtype, "qs").int().reshape(nb, 4, 32)
    q = torch.stack([qs & 0xF, qs >> 4], 2).reshape(nb, 256)
    if qtype == "Q5_K":
        q = q | _bits(_bytes(raw, qtype, "qh"), tuple(range(8)), 1).reshape(nb, 256) << 4
    return (dl[..., None] * q.reshape(nb, 8, 32).float() - ml[..., None]).reshape(nb, 256)


def _iq(raw, qtype):
    """IQ4_NL / IQ4_XS: codes through the 16-entry table, ``d T[q]`` or ``(d (ls - 32)) T[q]``."""
    import torch

    nb = raw.shape[0]
    d = _f16(raw, qtype, "d")
    T = torch.tensor(CODEBOOK.tolist(), dtype=torch.float32, device=raw.device)
    qs = _bytes(raw, qtype, "qs").int().reshape(nb, -1, 16)                   # [nb, nsub, 16]
    t = T[torch.cat([qs & 0xF, qs >> 4], 2).long()]                             # [nb, nsub, 32]
    if qtype == "IQ4_NL":
        return (d[..., None] * t).reshape(nb, -1)
    sl = _bytes(raw, qtype, "scales_l").int()
    h = _bytes(raw, qtype, "scales_h").int()
    sh = h[:, 0] | h[:, 1] << 8
    b = torch.arange(8, device=raw.device, dtype=torch.int32)
    ls = ((sl[:, b // 2] >> (4 * (b % 2))) & 0xF) | (((sh[:, None] >> (2 * b)) & 3) << 4)
    dl = d * (ls - 32).float()                                                 # [nb, 8]
    return (dl[..., None] * t).reshape(nb, 256)


def dequantize_blocks_torch(raw, qtype: str):
    """``raw [nb, nbytes]`` torch uint8 blocks of ``qtype`` -> float32 ``[nb, block]`` on ``raw``'s device."""
    if qtype in IQ_LAYOUTS:
        return _iq(raw, qtype)
    return _legacy(raw, qtype) if qtype in L_LAYOUTS else _k(raw, qtype)
