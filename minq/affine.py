"""Chapter 02 — scale and zero point: affine integer quantization.

The one convention of minq, stated once (README.md, "Conventions", repeats it):

    q     = clip(round(x / s) + z, qmin, qmax)       codes are unsigned: qmin = 0, qmax = 2^bits - 1
    x_hat = s * (q - z)

- **symmetric**: ``z = 2^(bits-1)`` (fixed, never stored) and the seed's ``s = max|x| / (2^(bits-1) - 1)``.
  ``q - z`` is the signed integer of the seed, in ``[-(2^(bits-1) - 1), 2^(bits-1) - 1]``.
- **asymmetric**, integer zero point (default): the range ``[lo, hi] = [min(x, 0), max(x, 0)]`` is mapped
  onto ``[0, 2^bits - 1]``: ``s = (hi - lo) / (2^bits - 1)``, ``z = round(-lo / s)``. Zero is exactly
  representable (``x = 0 -> q = z -> x_hat = 0``), which keeps padding and ReLU zeros exact.
- **asymmetric, float zero point** (``zero_point="float"``, the ggml Q4_1 / k-quant style
  ``x_hat = d * q + m``): ``lo, hi = min(x), max(x)``, ``s = (hi - lo) / (2^bits - 1)``, ``z = -lo / s``
  not rounded, and ``q = clip(round(x / s + z), qmin, qmax)``. Zero is not exactly representable.

The seed writes ``x_quant = round((x - z') / s)``, ``x_dequant = x_quant * s + z'`` with a zero point
``z'`` in the float domain; minq's integer ``z`` is ``-z' / s``: the same map, with zero on the grid.

Rounding: ``"nearest_even"`` (``np.rint``, ties to even; the default) or ``"stochastic"``
(``floor(x / s + u)``, ``u ~ U[0, 1)``, unbiased: E[x_hat] = x inside the range; used by QAT).

Error guarantee (tests/test_affine.py): for ``x`` inside the representable range
``[s (qmin - z), s (qmax - z)]``, nearest rounding gives ``|x - x_hat| <= s/2 + 2^-22 (|x| + s)``.
The second term is float32 arithmetic: ``x / s`` and ``s * (q - z)`` are each rounded once with
relative error <= 2^-24, and ``|x / s| <= 2^bits``. Stochastic rounding gives ``|x - x_hat| < s``.

Everything is computed in float32. The same functions take torch tensors (any device) and return
torch tensors; the tests prove the two paths equal on CPU.

Notebook: ``notebooks/02_scale_zero_point.ipynb``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from minq._backend import is_torch, namespace
from minq._checks import _all_finite, check_bits, check_choice, check_float_array, check_uint_array

__all__ = ["QParams", "choose_qparams", "quantize", "dequantize", "fake_quantize", "ROUNDING"]

ROUNDING = ("nearest_even", "stochastic")
ZERO_POINT = ("int", "float")
SCALE_DTYPES = ("float32", "float16")


@dataclass(frozen=True)
class QParams:
    """Quantization parameters: ``x_hat = s * (q - z)`` with ``q`` in ``[0, 2^bits - 1]``.

    ``s`` (float32 or float16, the storage dtype) and ``z`` (float32) broadcast against ``x``.
    ``zero_point`` is ``"int"`` when ``z`` holds integers (symmetric or integer asymmetric) and
    ``"float"`` for a fractional zero point.
    """

    s: object
    z: object
    bits: int
    symmetric: bool = False
    zero_point: str = "int"

    def __post_init__(self):
        # plain numbers (QParams(s=0.1, z=8, bits=4)) become 0-d float32 arrays
        for name in ("s", "z"):
            v = getattr(self, name)
            if isinstance(v, (int, float, np.generic)) and not isinstance(v, bool):
                object.__setattr__(self, name, np.asarray(v, dtype=np.float32))
        check_bits(self.bits, "bits")
        check_choice(self.zero_point, "zero_point", ZERO_POINT)
        if self.zero_point == "int" and (isinstance(self.z, np.ndarray) or is_torch(self.z)):
            z = namespace(self.z).f32(self.z)          # (NaN / Inf: reported as qp.z by quantize)
            if _all_finite(z) and bool(((z < 0) | (z > self.qmax) | (z != namespace(z).rint(z))).any()):
                raise ValueError(f"z must hold integers in [0, {self.qmax}] for zero_point='int' "
                                 f"(bits={self.bits}); use zero_point='float' for a fractional zero point")

    @property
    def qmin(self) -> int:
        return 0

    @property
    def qmax(self) -> int:
        return (1 << self.bits) - 1


def _round_scale_up(xp, s, scale_dtype):
    """Round ``s`` up to the storage dtype, so the stored scale still covers the range."""
    if scale_dtype == "float32":
        return s
    if bool((s > 65504.0).any()):
        raise ValueError("x is too large for float16 scales (s > 65504); use scale_dtype='float32'")
    return xp.float16_up(s)


def _check_axis(axis, ndim):
    axes = (axis,) if isinstance(axis, (int, np.integer)) else axis
    if axes is None:
        return None
    try:
        axes = tuple(int(a) for a in axes)
    except (TypeError, ValueError):
        raise TypeError(f"axis must be None, an int or a tuple of ints, got {axis!r}") from None
    for a in axes:
        if not -ndim <= a < ndim:
            raise ValueError(f"axis {a} is out of range for x with {ndim} dimensions")
    return axes


# --- the three steps ---------------------------------------------------------------------------------


def choose_qparams(x, *, bits: int, symmetric: bool = False, axis=None, zero_point: str = "int",
                   scale_dtype: str = "float32") -> QParams:
    """Min-max quantization parameters for ``x``.

    x: float array (NumPy or torch), finite, non-empty.
    axis: the axes reduced over to get one (s, z) per slice: ``None`` = one pair for the whole
        tensor; ``axis=1`` on ``W [out, in]`` = one pair per output row (per channel). ``s`` and
        ``z`` keep the reduced axes with size 1, so they broadcast against ``x``.
    symmetric: ``z = 2^(bits-1)``, ``s = max|x| / (2^(bits-1) - 1)``; needs bits >= 2.
    zero_point: ``"int"`` (zero exactly representable) or ``"float"`` (asymmetric only).
    scale_dtype: storage of ``s``; ``"float16"`` rounds ``s`` *up* to the next float16 so the
        stored scale still covers the range and the error bound holds with the stored value.

    A slice whose range is 0 (all zero; or all equal with a float zero point) gets ``s = 1``:
    every value of it is then reproduced exactly. Scales are at least 2^-126, the smallest normal
    float32 (a subnormal scale would lose the precision of ``x / s``).
    """
    check_float_array(x, "x")
    bits = check_bits(bits)
    check_choice(zero_point, "zero_point", ZERO_POINT)
    check_choice(scale_dtype, "scale_dtype", SCALE_DTYPES)
    if symmetric and bits < 2:
        raise ValueError("bits must be >= 2 for symmetric quantization (2^(bits-1) - 1 = 0 levels)")
    if symmetric and zero_point == "float":
        raise ValueError("zero_point='float' needs symmetric=False (a symmetric z is fixed)")
    axes = _check_axis(axis, x.ndim)
    xp = namespace(x)
    with np.errstate(over="ignore"):  # float64 beyond float32 becomes inf: rejected just below
        x = xp.f32(x)
    if not _all_finite(x):
        raise ValueError("x has values beyond the float32 range (computations are in float32)")
    if symmetric:
        half = (1 << (bits - 1)) - 1
        amax = xp.amax(abs(x), axes)
        s = xp.where(amax > 0, amax / half, amax * 0 + 1)
        s = _round_scale_up(xp, _valid_scale(xp, s, half), scale_dtype)
        z = xp.f32(s) * 0 + float(1 << (bits - 1))
        return QParams(s, z, bits, True, "int")
    lo, hi = xp.amin(x, axes), xp.amax(x, axes)
    if zero_point == "int":
        lo, hi = xp.minimum(lo, 0.0), xp.maximum(hi, 0.0)
    qmax = (1 << bits) - 1
    with np.errstate(over="ignore"):  # a range beyond float32 gives s = inf: _valid_scale rejects it
        s = xp.where(hi > lo, (hi - lo) / qmax, lo * 0 + 1)
    s = _round_scale_up(xp, _valid_scale(xp, s, qmax), scale_dtype)
    s32 = xp.f32(s)
    z = (0.0 - lo) / s32  # 0.0 - lo, not -lo: a zero minimum gives z = +0, not -0
    if zero_point == "int":
        z = xp.clip(xp.rint(z), 0, qmax)
    return QParams(s, z, bits, False, zero_point)


_F32_TINY = float(np.finfo(np.float32).tiny)  # 2^-126, the smallest normal float32


def _valid_scale(xp, s, steps: int):
    """Scales are normal float32 numbers: at least 2^-126 (a subnormal or zero s loses the
    precision of x / s), and finite (a range beyond float32 is an error, not s = inf). The grid's far
    end ``s * steps`` (``steps`` = codes from z to the end) must be finite too: for ``x`` reaching the
    float32 maximum, ``max / 127`` rounded up times 127 is ``inf``, so such an ``s`` steps one float32
    down (its end then lands within a few ulps of the maximum, far inside ``s / 2``)."""
    if not _all_finite(s):
        raise ValueError("x spans a range too large for a float32 scale (max - min overflows)")
    s = xp.maximum(s, _F32_TINY)
    with np.errstate(over="ignore"):
        over = xp.isinf(s * float(steps))
    return xp.where(over, xp.next_down(s), s) if bool(over.any()) else s


def _check_qparams(qp, x):
    if not isinstance(qp, QParams):
        raise TypeError(f"qp must be a QParams (from choose_qparams), got {type(qp).__name__}")
    check_bits(qp.bits, "qp.bits")
    check_float_array(qp.s, "qp.s")
    check_float_array(qp.z, "qp.z")
    if bool((qp.s <= 0).any()):
        raise ValueError("qp.s must be > 0 everywhere")
    if is_torch(x) != is_torch(qp.s):
        raise TypeError("x and qp must both be NumPy arrays or both be torch tensors")
    check_choice(qp.zero_point, "qp.zero_point", ZERO_POINT)
    shape = tuple(x.shape)
    try:
        ok = np.broadcast_shapes(shape, tuple(qp.s.shape), tuple(qp.z.shape)) == shape
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"qp.s {tuple(qp.s.shape)} and qp.z {tuple(qp.z.shape)} must broadcast to the "
                         f"shape of the input {shape}")


def quantize(x, qp: QParams, *, rounding: str = "nearest_even", rng=None):
    """Codes ``q = clip(round(x / s) + z, 0, 2^bits - 1)`` as uint8, same shape as ``x``.

    rounding: ``"nearest_even"`` or ``"stochastic"`` (then ``rng`` is required: a
    ``numpy.random.Generator`` for NumPy input, a ``torch.Generator`` for torch input).
    """
    check_float_array(x, "x")
    _check_qparams(qp, x)
    check_choice(rounding, "rounding", ROUNDING)
    xp = namespace(x)
    x = xp.f32(x)
    s = xp.f32(qp.s)
    v = x / s
    z = qp.z
    if qp.zero_point == "float":
        # add only the fraction of z before rounding: x / s + z in float32 would carry a rounding
        # error of the size of z (up to 2^bits), z - floor(z) is exact and small
        z_int = xp.floor(z)
        v, z = v + (z - z_int), z_int
    if rounding == "stochastic":
        if rng is None:
            raise ValueError("rng is required for rounding='stochastic' (pass a seeded generator)")
        # round up with probability frac(v); floor(v + u) in float32 could overshoot ceil(v)
        r = xp.floor(v)
        r = r + xp.f32(xp.uniform(tuple(x.shape), rng, x) < v - r)
    else:
        r = xp.rint(v)
    r = r + z  # with an integer z, round(x / s) + z: the DESIGN convention
    return xp.to_uint8(xp.clip(r, qp.qmin, qp.qmax))


def dequantize(q, qp: QParams):
    """``x_hat = s * (q - z)`` as float32, same shape as ``q``."""
    check_uint_array(q, "q")
    _check_qparams(qp, q)
    if bool((q > qp.qmax).any()):
        raise ValueError(f"q has codes above qmax = {qp.qmax} for bits={qp.bits}")
    xp = namespace(q)
    return xp.f32(qp.s) * (xp.f32(q) - qp.z)


def fake_quantize(x, qp: QParams, *, rounding: str = "nearest_even", rng=None):
    """``dequantize(quantize(x, qp), qp)``: x rounded onto the grid, float32."""
    return dequantize(quantize(x, qp, rounding=rounding, rng=rng), qp)
