"""Chapter 10 — scaled FP8: one float32 scale per tensor, per row or per block, and the FP8 matmul.

FP8 has a fixed range (E4M3: ±448, E5M2: ±57344) and a precision that is *relative* (3 or 2 mantissa
bits at every magnitude), so a tensor is stored as codes plus a float32 scale ``s`` that maps its
largest magnitude onto the format's largest value (Micikevicius et al., "FP8 Formats for Deep
Learning", arXiv:2209.05433):

    s     = amax / fmax                 amax = max |x| over the scale's region, fmax = 448 or 57344
    q     = fp8(x / s)                  round to nearest even, saturating (chapter 01's encoder)
    x_hat = decode(q) * s               float32

    fmt    element (minq.formats)   fmax     bits  relative step   use
    e4m3   float8_e4m3fn            448       1+4+3  2^-3          weights and activations
    e5m2   float8_e5m2              57344     1+5+2  2^-2          gradients (range over precision)

``granularity`` — the region one scale covers, for ``x [..., R, C]`` (a weight ``W [out, in]`` or the
inputs ``X [tokens, in]`` of a linear):

    "tensor"   one s                                     s shape [1, ..., 1]
    "row"      one s per row (a weight's output channel,  s shape [..., R, 1]
               an activation's token)
    "block"    one s per block of ``block = (br, bc)``:  s shape [..., ceil(R/br), ceil(C/bc)]
               DeepSeek-V3 (arXiv:2412.19437 §3.3): 128x128 weight blocks, 1x128 activation tiles;
               edge blocks may be partial (their own amax), as in DeepSeek's ``weight_quant`` kernel

Current vs delayed scaling. *Current* scaling takes amax from the tensor being quantized: exact, but a
reduction over the data must finish before the cast can start. *Delayed* scaling (Transformer Engine's
``DelayedScaling`` recipe) takes it from a history of earlier steps' amaxes (``amax_compute_algo``
"max" over ``history_len`` steps, or "most_recent"), so the cast fuses with the producer; a tensor that
grew since then saturates at ±fmax. ``quantize(x, amax=...)`` takes a given amax; ``DelayedScaling``
keeps the history and counts the saturated values.

The FP8 matmul (``fp8_matmul``): FP8 x FP8 products are exact in float32 (4-bit x 4-bit significands);
they are summed in float32 and rescaled: ``Y = (q_x @ q_w^T) * s_x * s_w^T``. With blocks along the
input axis (1x128 / 128x128) each 128-wide slice of the sum is rescaled on its own and the slices added
in float32 — DeepSeek-V3's "promotion to CUDA cores", because H800 tensor cores keep only about 14 bits
while accumulating FP8 products. ``torch._scaled_mm`` is the hardware op (per-tensor or row-wise scales);
tests/test_fp8.py compares the two.

Scale details: amax is clamped below at ``AMAX_EPS = 1e-12`` (torchao's ``EPS``), so an all-zero region
gets a tiny positive scale and zero codes. The division ``x / s`` follows DeepSeek-V3's kernels
(``s = amax / 448; y = x / s``); Transformer Engine multiplies by ``fmax / amax`` instead, which can
differ in the last bit of ``x / s`` and so, rarely, in a code. Inputs must be finite: NaN and ±Inf
have no scale (E4M3 has no Inf code either).

The torch path: the same functions on torch tensors; the cast is ``clamp(±fmax)`` then torch's
``float8_e4m3fn`` / ``float8_e5m2`` dtype, which agrees with minq's saturating encoder on every finite
float32 (tests/test_fp8.py). Where torch's float8 dtypes and chapter 01 (ml_dtypes' rules) disagree,
measured on torch 2.13 over all float32 inputs in the reference notes and pinned by tests/test_fp8.py:
(1) ``x.to(float8_e4m3fn)`` saturates finite overflow and ±Inf to ±448 (ml_dtypes: NaN, 0x7F);
(2) NaN to ``float8_e5m2`` is 0x7F (ml_dtypes 0x7E); (3) ``float8_e8m0fnu`` encodes 0 as 2^-127 and a
negative x as |x| (ml_dtypes: NaN). None of the three reaches this module: x / s is finite and within
±fmax*(1 + 2^-24) and scales are float32, not E8M0.

Notebook: notebooks/10_fp8_and_block_formats.ipynb. Model schemes (``fp8-e4m3``, ``fp8-e4m3-w8a8``, ...):
``minq.fp8_model``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from minq._backend import is_torch, namespace
from minq._checks import _all_finite, check_choice, check_float_array, check_int
from minq.formats import FORMATS

__all__ = ["FP8_FORMATS", "GRANULARITIES", "AMAX_EPS", "FP8Tensor", "quantize", "dequantize", "amax_of",
           "DelayedScaling", "fp8_matmul", "encode", "decode"]

FP8_FORMATS = {"e4m3": "float8_e4m3fn", "e5m2": "float8_e5m2"}
GRANULARITIES = ("tensor", "row", "block")
AMAX_EPS = 1e-12
_TORCH_DTYPE = {"e4m3": "float8_e4m3fn", "e5m2": "float8_e5m2"}


def _fmt(fmt):
    check_choice(fmt, "fmt", tuple(FP8_FORMATS))
    return FORMATS[FP8_FORMATS[fmt]]


def _check_block(block, granularity):
    if granularity != "block":
        if block is not None:
            raise ValueError(f"block is only for granularity='block', got block={block!r} with {granularity!r}")
        return None
    if block is None:
        return (128, 128)
    if not (isinstance(block, (tuple, list)) and len(block) == 2):
        raise ValueError(f"block must be a pair (rows, cols) such as (128, 128) or (1, 128), got {block!r}")
    return (check_int(block[0], "block[0]", lo=1), check_int(block[1], "block[1]", lo=1))


# --- the cast: float32 -> FP8 codes (saturating) and back ------------------------------------------


def encode(y, fmt: str = "e4m3"):
    """FP8 codes (uint8, same shape) of already-scaled values ``y``: RNE, saturating at ±fmax."""
    f = _fmt(fmt)
    if is_torch(y):
        import torch

        fmax = float(f.max)
        return y.float().clamp(-fmax, fmax).to(getattr(torch, _TORCH_DTYPE[fmt])).view(torch.uint8)
    return f.encode(np.asarray(y, np.float32), saturate=True)


def decode(q, fmt: str = "e4m3"):
    """float32 values of FP8 codes ``q`` (uint8)."""
    f = _fmt(fmt)
    if is_torch(q):
        import torch

        return q.view(getattr(torch, _TORCH_DTYPE[fmt])).float()
    return f.decode(q)


# --- scales ---------------------------------------------------------------------------------------


def _grid(shape, granularity, block):
    """The scale's shape for ``x`` of ``shape``."""
    if granularity == "tensor":
        return (1,) * len(shape)
    if granularity == "row":
        return (*shape[:-1], 1)
    (R, C), (br, bc) = shape[-2:], block
    return (*shape[:-2], -(-R // br), -(-C // bc))


def _pad2(x, rows, cols, xp):
    """``x [..., R, C]`` with zero rows / columns appended up to ``[..., rows, cols]``."""
    R, C = x.shape[-2:]
    if cols > C:
        x = xp.cat([x, xp.full((*x.shape[:-1], cols - C), 0.0, like=x)], axis=-1)
    if rows > R:
        x = xp.cat([x, xp.full((*x.shape[:-2], rows - R, cols), 0.0, like=x)], axis=-2)
    return x


def amax_of(x, granularity: str = "tensor", *, block=None):
    """``max |x|`` over each scale region, float32, in the scale's shape (see the module docstring)."""
    check_choice(granularity, "granularity", GRANULARITIES)
    block = _check_block(block, granularity)
    xp = namespace(x)
    a = abs(xp.f32(x))
    if granularity == "tensor":
        return xp.amax(a, None)
    if granularity == "row":
        return xp.amax(a, (-1,))
    grid = _grid(tuple(x.shape), granularity, block)
    (nr, nc), (br, bc) = grid[-2:], block
    a = _pad2(a, nr * br, nc * bc, xp).reshape(*grid[:-2], nr, br, nc, bc)   # zeros leave amax unchanged
    return xp.amax(a, (-3, -1)).reshape(grid)


def _expand(s, shape, granularity, block, xp):
    """The scale broadcast over ``shape`` (blocks repeated and cropped at the edges)."""
    if granularity != "block":
        return s
    R, C = shape[-2:]
    s = xp.repeat(xp.repeat(s, block[0], axis=-2), block[1], axis=-1)
    return s[..., :R, :C]


# --- the scaled tensor ----------------------------------------------------------------------------


@dataclass
class FP8Tensor:
    """FP8 codes ``q`` (uint8, the shape of x) with float32 scales ``s`` (``_grid``'s shape):
    ``x_hat = decode(q) * s`` (blocks of ``block`` expanded over q)."""

    q: object
    s: object
    fmt: str = "e4m3"
    granularity: str = "tensor"
    block: tuple | None = None

    def __post_init__(self):
        _fmt(self.fmt)
        check_choice(self.granularity, "granularity", GRANULARITIES)
        self.block = _check_block(self.block, self.granularity)
        want = _grid(tuple(self.q.shape), self.granularity, self.block)
        if tuple(self.s.shape) != want:
            raise ValueError(f"s has shape {tuple(self.s.shape)}, expected {want} for q {tuple(self.q.shape)} "
                             f"with granularity {self.granularity!r}")
        xp = namespace(self.s)
        if not _all_finite(self.s) or not bool((self.s > 0).all()):
            raise ValueError("s must hold finite scales > 0 (a scale of 0 has underflowed: nothing decodes)")
        if xp.itemsize(self.s) != 4:
            raise TypeError(f"s must be float32, got {self.s.dtype}")

    @property
    def shape(self) -> tuple:
        return tuple(self.q.shape)

    def scale(self):
        """``s`` broadcast to the codes' shape (float32)."""
        return _expand(self.s, self.shape, self.granularity, self.block, namespace(self.s))

    def dequantize(self):
        return decode(self.q, self.fmt) * self.scale()

    @property
    def nbytes(self) -> int:
        """One byte a code plus 4 a scale."""
        xp = namespace(self.q)
        return xp.nbytes(self.q) + xp.nbytes(self.s)


def quantize(x, fmt: str = "e4m3", granularity: str = "tensor", *, block=None, amax=None) -> FP8Tensor:
    """``x`` (float, NumPy or torch, >= 1-D; 2-D or more for ``"block"``) -> ``FP8Tensor``.

    fmt: ``"e4m3"`` or ``"e5m2"``; granularity: ``"tensor"``, ``"row"`` or ``"block"`` (``block``, default
    (128, 128)); amax: None = current scaling (from ``x``), or the amax to scale by (delayed scaling:
    a number or an array in the scale's shape, finite and > 0); values beyond it saturate.
    Raises ValueError / TypeError naming ``x`` (not float, empty, NaN/Inf, too few axes), ``fmt``,
    ``granularity``, ``block`` or ``amax``. Error bound with current scaling (tests/test_fp8.py):
    ``|x_hat - x| <= s h(x / s) (1 + 2^-20) + 2^-22 |x|``, ``h`` half the format's spacing at ``x / s``
    (``2^-(m+1) |x / s|`` for normals, ``2^(emin - m - 1)`` below), ``s`` the element's scale.
    """
    check_float_array(x, "x")
    f = _fmt(fmt)
    check_choice(granularity, "granularity", GRANULARITIES)
    block = _check_block(block, granularity)
    if x.ndim < (2 if granularity == "block" else 1):
        raise ValueError(f"x must be at least {2 if granularity == 'block' else 1}-D for granularity "
                         f"{granularity!r}, got shape {tuple(x.shape)}")
    xp = namespace(x)
    x = xp.f32(x)
    grid = _grid(tuple(x.shape), granularity, block)
    if amax is None:
        amax = amax_of(x, granularity, block=block)
    else:
        amax = _check_amax(amax, grid, x)
    s = xp.maximum(amax, xp.full(grid, AMAX_EPS, like=x)) / float(f.max)       # float32, the scale's shape
    q = encode(x / _expand(s, tuple(x.shape), granularity, block, xp), fmt)
    return FP8Tensor(q, s, fmt, granularity, block)


def _check_amax(amax, grid, like):
    """``amax`` (a number, or an array / tensor of the scale's shape) as float32 of the scale's shape."""
    xp = namespace(like)
    a = xp.f32(xp.asarray(amax.cpu() if is_torch(amax) else np.asarray(amax, np.float32), like=like))
    if tuple(a.shape) not in ((), grid):
        raise ValueError(f"amax must be a number or have the scale's shape {grid}, got shape {tuple(a.shape)}")
    if not _all_finite(a) or not bool((a > 0).all()):
        raise ValueError("amax must be finite and > 0 (the largest magnitude the scale must hold)")
    return a + xp.full(grid, 0.0, like=like)                                   # broadcast to the scale's shape


def dequantize(t: FP8Tensor):
    """``x_hat = decode(q) * s`` float32."""
    if not isinstance(t, FP8Tensor):
        raise TypeError(f"t must be an FP8Tensor, got {type(t).__name__}")
    return t.dequantize()


# --- delayed scaling ------------------------------------------------------------------------------


class DelayedScaling:
    """Per-tensor scaling from the amax history of earlier calls (Transformer Engine's recipe).

    ``ds.quantize(x)`` scales ``x`` by ``algo`` ("max" or "most_recent") over the last ``history_len``
    amaxes, times ``2**margin``, then records ``amax(x)``. The first call has no history and uses
    ``amax(x)`` (Transformer Engine starts from scale 1 instead). ``saturated`` counts the values that
    were beyond the scale's range and became ±fmax; ``calls`` the calls. Defaults are TE's (1024, "max", 0).
    """

    def __init__(self, fmt: str = "e4m3", *, history_len: int = 1024, algo: str = "max", margin: int = 0):
        _fmt(fmt)
        self.fmt, self.history_len = fmt, check_int(history_len, "history_len", lo=1)
        self.algo = check_choice(algo, "algo", ("max", "most_recent"))
        self.margin = check_int(margin, "margin", lo=0, hi=64)
        self.history: list[float] = []
        self.saturated = self.calls = 0

    def __repr__(self):
        return (f"DelayedScaling({self.fmt!r}, history_len={self.history_len}, algo={self.algo!r}, "
                f"margin={self.margin}; {self.calls} calls, {self.saturated} saturated)")

    def amax(self) -> float | None:
        """The amax the next call scales by (None before the first call)."""
        if not self.history:
            return None
        a = max(self.history) if self.algo == "max" else self.history[-1]
        return a * 2.0 ** self.margin

    def quantize(self, x) -> FP8Tensor:
        check_float_array(x, "x")
        now = float(amax_of(x).reshape(-1)[0])
        used = self.amax()
        t = quantize(x, self.fmt, "tensor", amax=max(used if used is not None else now, AMAX_EPS))
        fmax = np.float32(_fmt(self.fmt).max)
        self.saturated += int((abs(namespace(x).f32(x)) / t.s > fmax).sum())
        self.history = (self.history + [now])[-self.history_len:]
        self.calls += 1
        return t


# --- the FP8 matmul -------------------------------------------------------------------------------


def _k_scales(t: FP8Tensor, xp):
    """``(codes as float32 [rows, K], scales [rows, n_k], k-slice width or None)`` of a 2-D FP8Tensor."""
    R, K = t.shape
    if t.granularity == "block":
        s = xp.repeat(t.s, t.block[0], axis=0)[:R]                              # [rows, ceil(K / bc)]
        return decode(t.q, t.fmt), s, t.block[1]
    s = t.s if t.granularity == "row" else xp.full((R, 1), float(t.s.reshape(-1)[0]), like=t.s)
    return decode(t.q, t.fmt), s, None


def fp8_matmul(x: FP8Tensor, w: FP8Tensor):
    """``Y [tokens, out] = X_hat @ W_hat^T`` the way FP8 hardware computes it, float32.

    x: ``FP8Tensor [tokens, in]`` (tensor / row / block with ``(1, bk)`` tiles); w: ``FP8Tensor [out, in]``
    (tensor / row / block ``(bn, bk)``). Exact FP8 products, float32 sums; with blocks along ``in`` each
    ``bk``-wide slice is rescaled by its two scales and the slices summed in float32 (both operands'
    ``bk`` must then agree). Equals ``x.dequantize() @ w.dequantize().T`` up to float32 summation order.
    """
    for name, t in (("x", x), ("w", w)):
        if not isinstance(t, FP8Tensor) or len(t.shape) != 2:
            raise TypeError(f"{name} must be a 2-D FP8Tensor, got {type(t).__name__} {getattr(t, 'shape', '')}")
    if x.shape[1] != w.shape[1]:
        raise ValueError(f"x [tokens, in] {x.shape} and w [out, in] {w.shape} differ in 'in'")
    if x.granularity == "block" and x.block[0] != 1:
        raise ValueError(f"x's blocks must be 1 x bk tiles (one token each), got {x.block}")
    xp = namespace(x.q)
    qx, sx, kx = _k_scales(x, xp)                                               # [T, K], [T, nk]
    qw, sw, kw = _k_scales(w, xp)                                               # [N, K], [N, nk]
    if kx is not None and kw is not None and kx != kw:
        raise ValueError(f"x's tiles ({kx} wide) and w's blocks ({kw} wide) must split 'in' alike")
    bk = kx or kw or x.shape[1]
    Y = None
    for j, k0 in enumerate(range(0, x.shape[1], bk)):                           # one slice of 'in' at a time
        part = qx[:, k0:k0 + bk] @ qw[:, k0:k0 + bk].T                          # [T, N], float32 sums
        part = part * sx[:, j if kx else 0][:, None] * sw[:, j if kw else 0][None, :]
        Y = part if Y is None else Y + part
    return Y
