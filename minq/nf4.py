"""Chapter 10 — NF4, the 4-bit NormalFloat of QLoRA: 16 quantiles of N(0, 1), one absmax per block.

NF4 (Dettmers et al., "QLoRA", arXiv:2305.14314; the format of bitsandbytes' ``quantize_4bit(...,
quant_type="nf4")``) maps each weight to the nearest of 16 fixed values, quantiles of a standard normal
scaled to [-1, 1] (8 positive, 7 negative and an exact 0), after dividing its block by the block's
largest |x|. Over the flattened weight, per block of B values (64 by default; the last may be shorter):

    absmax_b = max |x_i|                               (float32, stored)
    s_i      = clamp(x_i * (1 / max(absmax_b, 1e-38)), -1, 1)      (the last, partial block: x_i / am,
    q_i      = #{k : MIDPOINTS[k] < s_i}                             am = max(absmax_b, 1e-38) stored)
    x_hat_i  = CODEBOOK[q_i] * absmax_b                (float32)

``q_i`` is the nearest codebook entry, ties to the lower one (``MIDPOINTS[k] = (c_k + c_k+1) / 2`` in
float32, bitsandbytes' ``torch.bucketize``). The 16 values are hard-coded from bitsandbytes (a
scipy re-derivation differs in 3 entries by one float32 step). Byte layout, two codes a byte over the
flattened tensor, the FIRST element in the HIGH nibble (an odd n pads the last low nibble with the code
of 0.0, 7); ``absmax`` is a separate float32 array, one per block:

    packed[j] = q_2j << 4 | q_2j+1        bit  7 6 5 4 | 3 2 1 0
                                                q_2j    |  q_2j+1

Double quantization (QLoRA section 3) stores the absmax values themselves in 8 bits: ``offset =
mean(absmax)``, then ``absmax - offset`` blockwise (256 a block, a float32 absmax2 each) with
bitsandbytes' signed dynamic map (``create_dynamic_map``: 256 values, an exponent that shrinks by
powers of 10 and a linear fraction), the same nearest-code rule. Constants per weight: 32 / 64 = 0.5
bits, with it 8 / 64 + 32 / (64 * 256) = 0.127 bits.

After bitsandbytes 0.50.2 (``functional.py`` and the pure-torch backend ``backends/default/ops.py``,
what runs on a CPU; tests/test_nf4.py compares with its own bytes in data/nf4/golden.npz, written by
scripts/make_nf4_golden.py). Two places where its CPU build differs and minq does not follow: the
double-quant codes of its C++ CPU kernel come from a 65536-bin table (a neighbouring code near a
midpoint), and its offset is torch's float32 mean, whose summation order depends on the CPU (minq:
the float64 mean rounded to float32; ``offset=`` takes bitsandbytes' value). ``quantize`` and
``dequantize`` run the Numba kernels of ``minq.nf4_kernels`` on NumPy input, torch ops on a torch
tensor (CPU or CUDA); ``*_reference`` run the readable NumPy code below, with the same bytes and values.
Notebook: notebooks/10_fp8_and_block_formats.ipynb.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from minq import nf4_kernels
from minq._backend import is_torch, namespace
from minq._checks import _all_finite, check_float_array, check_int, is_int
from minq.registry import Scheme, register_family

__all__ = ["CODEBOOK", "MIDPOINTS", "DYNAMIC_MAP", "quantize", "dequantize", "quantize_reference",
           "dequantize_reference", "quantize_absmax", "dequantize_absmax", "NF4Weight"]

F32 = np.float32


def _f32(hexes: str) -> np.ndarray:
    return np.array([int(h, 16) for h in hexes.split()], np.uint32).view(F32)


CODEBOOK = _f32("bf800000 bf3239b1 bf066b30 beca32a0 be91a24d be3d353f bdba7871 00000000 "
                "3da2faff 3e24cae3 3e7c04dd 3ead033a 3ee1a4b8 3f1007ab 3f3913b3 3f800000")      # [16]
MIDPOINTS = (CODEBOOK[:-1] + CODEBOOK[1:]) / F32(2)                                             # [15]
_DYN_POS = _f32(   # create_dynamic_map(signed=True)'s 127 positive values below 1 (torch.linspace-made)
    "3513a3b7 365a1a94 370205ff 37b24206 38378034 388aefb3 38ba1f4b 3923d70b 398ce705 39c7e283 3a016f01 "
    "3a1eecc1 3a3c6a80 3a59e83e 3a7765ff 3aa7ef9d 3af1a9fc 3b1db22d 3b428f5c 3b676c8a 3b8624dd 3b989374 "
    "3bab020d 3bbd70a4 3bcfdf3b 3be24dd3 3bf4bc6a 3c039581 3c0ccccd 3c160418 3c1f3b64 3c3ae148 3c68f5c3 "
    "3c8b851f 3ca28f5d 3cb9999a 3cd0a3d7 3ce7ae15 3cfeb852 3d0ae148 3d166667 3d21eb85 3d2d70a3 3d38f5c3 "
    "3d447ae1 3d500000 3d5b851f 3d670a3d 3d728f5d 3d7e147b 3d84cccd 3d8a8f5d 3d9051eb 3d96147b 3d9bd70a "
    "3da1999a 3da75c2a 3dad1eb8 3db2e148 3db8a3d7 3dbe6667 3dc428f7 3dc9eb85 3ddb3334 3df80000 3e0a6666 "
    "3e18cccd 3e273333 3e35999a 3e440000 3e526666 3e60cccd 3e6f3333 3e7d9999 3e860000 3e8d3334 3e946666 "
    "3e9b999a 3ea2cccc 3eaa0000 3eb13333 3eb86666 3ebf999a 3ec6cccc 3ece0000 3ed53333 3edc6666 3ee3999a "
    "3eeacccc 3ef20000 3ef93332 3f003333 3f03cccc 3f076666 3f0b0000 3f0e999a 3f123334 3f15cccd 3f196666 "
    "3f1d0000 3f20999a 3f243334 3f27cccd 3f2b6666 3f2f0000 3f32999a 3f363334 3f39cccd 3f3d6666 3f410000 "
    "3f44999a 3f483333 3f4bcccd 3f4f6666 3f530000 3f56999a 3f5a3333 3f5dcccd 3f616666 3f650000 3f68999a "
    "3f6c3333 3f6fcccd 3f736666 3f770000 3f7a999a 3f7e3333")
DYNAMIC_MAP = np.concatenate([-_DYN_POS[::-1], [0], _DYN_POS, [1]]).astype(F32)                # [256]
_DYN_MID = (DYNAMIC_MAP[:-1] + DYNAMIC_MAP[1:]) / F32(2)                                        # [255]
TINY = nf4_kernels.TINY                       # absmax.clamp(min=1e-38) as float32


# ---- input checks (each error names the parameter, before any work) ----

def _check_x(x, name="x", scan=True):
    """``scan=False`` (float32 NumPy input to the kernel): NaN/Inf are found by the kernel's own pass."""
    check_float_array(x, name, finite=False)
    if (scan or x.ndim == 0) and not _all_finite(x):
        raise ValueError(f"{name} contains NaN or Inf")
    if x.ndim == 0:
        raise ValueError(f"{name} must have at least one dimension, got a 0-d array")
    return x


def _check_block(block_size, even=True) -> int:
    b = check_int(block_size, "block_size", lo=2 if even else 1)
    if even and b % 2:
        raise ValueError(f"block_size must be even (two 4-bit codes a byte, every block starting on one), got {b}")
    return b


def _check_shape(shape) -> tuple:
    shape = tuple(shape) if isinstance(shape, (tuple, list)) else (shape,)
    if not shape or not all(is_int(s) and s > 0 for s in shape):
        raise ValueError(f"shape must be positive integers, got {shape!r}")
    return tuple(int(s) for s in shape)


def _check_store(a, name, kind, size, like=None, like_name=""):
    """``a``: a NumPy array or torch tensor (the library of ``like``) of dtype ``kind`` with ``size`` values."""
    if not (isinstance(a, np.ndarray) or is_torch(a)):
        raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(a).__name__}")
    if like is not None and is_torch(a) != is_torch(like):
        raise TypeError(f"{name} must be a {'torch tensor' if is_torch(like) else 'numpy array'} like {like_name}")
    if str(a.dtype).removeprefix("torch.") != kind:
        raise TypeError(f"{name} must be {kind}, got {a.dtype}")
    xp = namespace(a)
    if xp.size(a) != size:
        raise ValueError(f"{name} holds {xp.size(a)} values, {size} expected (another shape or block_size?)")
    if kind == "float32" and not _all_finite(a):
        raise ValueError(f"{name} contains NaN or Inf")
    return a.reshape(-1)


# ---- NF4: the NumPy reference, the torch path, the kernels ----

def _scale_blocks(x, block, xp):
    """float32 ``x [n]`` -> (``s [n]`` in [-1, 1], ``absmax [n_blocks]``): full blocks times the float32
    reciprocal of ``max(absmax, 1e-38)``, the partial last block divided by ``am`` (which it stores)."""
    n = xp.size(x)
    full = n - n % block
    X = x[:full].reshape(-1, block)                                          # [full / block, block]
    absmax = xp.amax(abs(X), 1)[:, 0] if full else x[:0]
    s = xp.clip(X * (1.0 / xp.maximum(absmax, float(TINY)))[:, None], -1, 1).reshape(-1)
    if full < n:
        am = xp.maximum(xp.amax(abs(x[full:]), None), float(TINY))         # [1]
        absmax = xp.cat([absmax, am], 0)
        s = xp.cat([s, xp.clip(x[full:] / am, -1, 1)], 0)
    return s, absmax


def _nearest(s, midpoints, xp):
    """Index of the nearest code, ties to the lower one: the number of midpoints ``< s``."""
    if xp.name == "torch":
        return xp.t.bucketize(s, xp.asarray(midpoints, s), right=False)
    return np.searchsorted(midpoints, s, side="left")


def _quantize(x, block_size, *, kernel: bool):
    fast = kernel and isinstance(x, np.ndarray)
    _check_x(x, scan=not (fast and x.dtype == F32))
    try:
        block = _check_block(block_size)
    except (TypeError, ValueError):
        _check_x(x)                                                          # a NaN/Inf is reported first
        raise
    xp = namespace(x)
    if fast and x.dtype == F32:                                              # checked inside the kernel
        packed, absmax, finite = nf4_kernels.quantize_kernel(x.reshape(-1), block, MIDPOINTS)
        if not finite:
            raise ValueError("x contains NaN or Inf")
        return packed, absmax
    with np.errstate(over="ignore"):                                         # checked just below
        x = xp.f32(x).reshape(-1)                                            # float16/64 -> float32
    if not _all_finite(x):
        raise ValueError("x has values beyond float32's range (float64 input rounds them to Inf)")
    if fast:
        return nf4_kernels.quantize_kernel(x, block, MIDPOINTS)[:2]
    s, absmax = _scale_blocks(x, block, xp)
    q = xp.int64(_nearest(s, MIDPOINTS, xp))
    if xp.size(q) % 2:
        q = xp.cat([q, q[:1] * 0 + nf4_kernels.ZERO_CODE], 0)                 # pad: the code of 0.0
    return xp.to_uint8((q[0::2] << 4) | q[1::2]), xp.f32(absmax)


def quantize(x, block_size: int = 64):
    """``x`` (any shape, float16/32/64, NumPy or torch) -> ``(packed uint8 [ceil(n / 2)], absmax float32
    [ceil(n / block_size)])`` over the flattened x, bitsandbytes' bytes. Torch in, torch out (same device).

    Raises TypeError / ValueError naming ``x`` (not a float array, empty, 0-d, NaN/Inf, beyond float32)
    or ``block_size`` (not an int, < 2, odd). Error per block of absmax >= 1e-38 (tests/test_nf4.py):
    ``|x - x_hat| <= absmax * max half-gap of CODEBOOK`` (0.152, between -1 and -0.696)."""
    return _quantize(x, block_size, kernel=True)


def quantize_reference(x, block_size: int = 64):
    """``quantize`` through the readable NumPy code (the same bytes as the Numba kernel)."""
    return _quantize(x, block_size, kernel=False)


def _dequantize(packed, absmax, shape, block_size, *, kernel: bool):
    shape, block = _check_shape(shape), _check_block(block_size)
    n = int(np.prod(shape, dtype=np.int64))
    packed = _check_store(packed, "packed", "uint8", (n + 1) // 2)
    absmax = _check_store(absmax, "absmax", "float32", -(-n // block), like=packed, like_name="packed")
    xp = namespace(packed)
    if kernel and xp.name == "numpy":
        return nf4_kernels.dequantize_kernel(packed, absmax, n, block, CODEBOOK).reshape(shape)
    p = xp.int64(packed)
    q = xp.cat([(p >> 4)[:, None], (p & 15)[:, None]], 1).reshape(-1)[:n]    # high nibble first
    scale = xp.repeat(absmax, block, 0)[:n]              # absmax of each value
    return (xp.asarray(CODEBOOK, p)[q] * scale).reshape(shape)


def dequantize(packed, absmax, shape, block_size: int = 64):
    """``x_hat = CODEBOOK[q] * absmax`` in float32, of ``shape`` (torch in, torch out). Raises naming
    ``shape``, ``block_size``, ``packed`` (not uint8, not ceil(n / 2) bytes) or ``absmax`` (not float32,
    not one per block, NaN/Inf, another library than packed)."""
    return _dequantize(packed, absmax, shape, block_size, kernel=True)


def dequantize_reference(packed, absmax, shape, block_size: int = 64):
    """``dequantize`` through the readable NumPy code (the same values bit for bit)."""
    return _dequantize(packed, absmax, shape, block_size, kernel=False)


# ---- double quantization of the absmax values ----

def quantize_absmax(absmax, block_size: int = 256, offset=None):
    """float32 ``absmax [n]`` -> ``(codes uint8 [n], absmax2 float32 [ceil(n / block_size)], offset
    float32)``: ``absmax - offset`` in bitsandbytes' 8-bit blockwise dynamic code. ``offset``: None for
    ``mean(absmax)`` (the float64 mean rounded to float32), or a given float32 value (bitsandbytes')."""
    _check_x(absmax, "absmax")
    block = _check_block(block_size, even=False)
    if offset is not None:
        offset = _check_offset(offset, absmax)
    xp = namespace(absmax)
    with np.errstate(over="ignore"):
        a = xp.f32(absmax).reshape(-1)                                        # [n]
    if not _all_finite(a):
        raise ValueError("absmax has values beyond float32's range")
    if offset is None:
        mean = xp.f64(a).sum() / xp.size(a)                                   # float64, then float32
        offset = xp.f32(mean) if xp.name == "torch" else np.float32(mean)
    s, absmax2 = _scale_blocks(a - offset, block, xp)
    return xp.to_uint8(_nearest(s, _DYN_MID, xp)), xp.f32(absmax2), offset


def _check_offset(offset, like):
    """One finite float (Python, NumPy scalar, 1-value array or tensor) as float32, in ``like``'s library."""
    if is_torch(offset) or isinstance(offset, np.ndarray):
        if int(np.prod(tuple(offset.shape))) != 1:
            raise ValueError(f"offset must be one value, got shape {tuple(offset.shape)}")
        offset = offset.reshape(-1)[0].item()
    elif not (isinstance(offset, (float, np.floating)) or is_int(offset)):
        raise TypeError(f"offset must be a float, got {type(offset).__name__}")
    value = np.float32(offset)
    if not np.isfinite(value):
        raise ValueError(f"offset must be finite (as float32), got {offset!r}")
    return namespace(like).asarray(value, like) if is_torch(like) else value


def dequantize_absmax(codes, absmax2, offset, n: int, block_size: int = 256):
    """``DYNAMIC_MAP[codes] * absmax2 + offset`` (float32 ``[n]``): the absmax values back. Raises naming
    ``n``, ``block_size``, ``codes`` (not uint8 ``[n]``), ``absmax2`` (not float32, one per block) or ``offset``."""
    n, block = check_int(n, "n", lo=1), _check_block(block_size, even=False)
    codes = _check_store(codes, "codes", "uint8", n)
    absmax2 = _check_store(absmax2, "absmax2", "float32", -(-n // block), like=codes, like_name="codes")
    xp = namespace(codes)
    offset = _check_offset(offset, codes)
    scale = xp.repeat(absmax2, block, 0)[:n]
    return xp.asarray(DYNAMIC_MAP, codes)[xp.int64(codes)] * scale + offset


# ---- the quantized-weight protocol and the schemes ----

@dataclass
class NF4Weight:
    """A weight ``W [out, in]`` as NF4 over its flattened values (blocks may span rows, as in
    bitsandbytes): ``packed`` uint8 and either ``absmax`` float32 (one per block) or, with double
    quantization, ``absmax_codes`` uint8 + ``absmax2`` float32 (one per 256) + ``offset`` float32."""

    packed: object
    shape: tuple
    block_size: int = 64
    absmax: object = None
    absmax_codes: object = None
    absmax2: object = None
    offset: object = None

    def __post_init__(self):
        self.shape = _check_shape(self.shape)
        if len(self.shape) != 2:
            raise ValueError(f"shape must be [out, in], got {self.shape}")
        if (self.absmax is None) == (self.absmax_codes is None):
            raise ValueError("give absmax (float32) or, with double quantization, absmax_codes + absmax2 + offset")

    @classmethod
    def quantize(cls, W, block_size: int = 64, double_quant: bool = False) -> NF4Weight:
        if getattr(W, "ndim", None) != 2:
            raise ValueError(f"W must be a 2-D weight [out, in], got shape {getattr(W, 'shape', None)}")
        if not isinstance(double_quant, bool):
            raise TypeError(f"double_quant must be a bool, got {type(double_quant).__name__}")
        packed, absmax = quantize(W, block_size)
        if not double_quant:
            return cls(packed, tuple(W.shape), block_size, absmax=absmax)
        codes, absmax2, offset = quantize_absmax(absmax)
        return cls(packed, tuple(W.shape), block_size, absmax_codes=codes, absmax2=absmax2, offset=offset)

    @property
    def double_quant(self) -> bool:
        return self.absmax_codes is not None

    def dequantize(self):
        absmax = self.absmax
        if self.double_quant:
            n_blocks = namespace(self.absmax_codes).size(self.absmax_codes)
            absmax = dequantize_absmax(self.absmax_codes, self.absmax2, self.offset, n_blocks)
        return dequantize(self.packed, absmax, self.shape, self.block_size)

    @property
    def nbytes(self) -> int:
        """Codes and every constant: absmax (4 bytes a block), or 1 byte a block + 4 per 256 + the offset."""
        xp = namespace(self.packed)
        if not self.double_quant:
            return xp.nbytes(self.packed) + xp.nbytes(self.absmax)
        return xp.nbytes(self.packed) + xp.nbytes(self.absmax_codes) + xp.nbytes(self.absmax2) + 4

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.nbytes / (self.shape[0] * self.shape[1])


def _scheme(m: re.Match) -> Scheme:
    block, dq = int(m["block"] or 64), m["dq"] is not None
    if block < 2 or block % 2:
        raise ValueError(f"scheme {m.string!r}: the block size must be even and >= 2")
    desc = (f"NF4 (QLoRA / bitsandbytes), blocks of {block} with a float32 absmax"
            + (", double-quantized to 8 bits per 256 blocks" if dq else ""))
    return Scheme(m.string, desc, quantize_weight=lambda W: NF4Weight.quantize(W, block, dq))


register_family("nf4", r"nf4(?:-b(?P<block>\d+))?(?P<dq>-dq)?", _scheme, "nf4[-b{block}][-dq]",
                defaults=("nf4", "nf4-dq"), quick=())
