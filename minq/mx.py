"""Chapter 10 — microscaling: OCP MX (MXFP8 / MXFP6 / MXFP4) and NVIDIA NVFP4 block formats.

A block format stores a small float per element and one shared scale per block of k values along
the LAST axis. MX (OCP Microscaling Formats v1.0, Sept 2023; Rouhani et al., "Microscaling Data
Formats for Deep Learning", arXiv:2310.10537, Algorithm 1): k = 32, an E8M0 scale X = 2^(c - 127):

    fmt          element (minq.formats)   emax  max_elem   bits / value
    mxfp8_e4m3   float8_e4m3fn             8     448        8 + 8/32 = 8.25
    mxfp8_e5m2   float8_e5m2              15     57344      8.25
    mxfp6_e2m3   float6_e2m3fn             2     7.5        6.25
    mxfp6_e3m2   float6_e3m2fn             4     28         6.25
    mxfp4        float4_e2m1fn             2     6          4.25

    E8M0 scale  [eeeeeeee]  X = 2^(c - 127), c in 0..254 (0xFF = NaN, never written here)
    element     e4m3 [s|eeee|mmm]  e5m2 [s|eeeee|mm]  e2m3 [0 0|s|ee|mmm]  e3m2 [0 0|s|eee|mm]
                e2m1 [0 0 0 0|s|ee|m]   (one code a uint8, low bits; ``pack_fp4`` packs two a byte)

    shared_exp = clamp(E(amax) - emax_elem, -127, 127),   amax = max_i |V_i| of the block
    P_i        = RNE(V_i / X) in the element format, normals beyond ±max_elem clamped (saturated)
    x_hat_i    = X * P_i

``scale_rule`` picks E(amax), all from the float32 bits of amax (integer exponent arithmetic, never an
E8M0 cast; torchao 0.18 ``ScaleCalculationMode``):

    "floor"  OCP v1.0 §6.3: floor(log2 amax) (the exponent field; an all-zero block gets c = 0, 2^-127)
    "ceil"   ceil(log2 amax): never clips, may waste a binade
    "even"   floor(log2 amax') with amax' = amax rounded at the element's mantissa width (half up)
    "rceil"  NVIDIA's MXFP8 recipe (cuBLAS/cuDNN, PTX cvt.rp.satfinite.ue8m0x2.f32; Mishra et al.
             arXiv:2506.08027): X = 2^ceil(log2 d), d = fl32(amax / max_elem); emax not used

The clipping problem: with amax = 2^e * m, m in [1, 2), FLOOR gives amax / X = 2^emax * m, which
exceeds max_elem when m > max_elem / 2^emax (FP4: m > 1.5 -> e.g. 3.5 is stored as 3; E4M3: m > 1.75).
``clip_fraction`` counts blocks whose max is clipped *beyond rounding*: RNE of amax / X in the element
format with an unbounded exponent range is above max_elem (FP4 from m >= 1.75 on, as 7 rounds to 8).

NVFP4 (NVIDIA; arXiv:2509.25149 App. B; torchao ``nvfp4_tensor.nvfp4_quantize``, followed op for op in
float32): E2M1 elements, blocks of 16, an E4M3 block scale (used as unsigned) and a float32 tensor
scale:

    pts   = amax(|x|) / (448 * 6)                  (two_level; one-level: pts = 1, not stored)
    s8_b  = e4m3(clamp(amax_b / 6 / pts, 2^-6, 448))                   (RNE)
    P_i   = e2m1(clamp(x_i * ((1 / pts) / s8_b), -6, 6))               (RNE)
    x_hat = P_i * (pts * s8_b)                     (4 + 8/16 = 4.5 bits a value + 32 bits a tensor)

torchao's packing (``pack_fp4``): element 2i in the LOW nibble, 2i+1 in the high one.

Where minq departs from torchao 0.18 (tests/test_mx.py counts it; everything else is bit-exact with
data/mx/golden.npz, written by scripts/make_mx_golden.py): (1) a block with scale code 0 (amax below
~2^-126 * 2^emax) — torchao divides by max(X, 2^-126) (FLOOR/CEIL/EVEN) or multiplies by 1.0 (RCEIL)
but decodes with 2^-127; minq uses X = 2^-127 both ways, as OCP does. (2) RCEIL: torchao's eager path
takes ceil(float32 log2(d)), which rounds d just above a power of two down (1 + 2^-23 at d ~ 2^4 and
up); minq rounds d up from its bits, as the PTX instruction does. (3) NVFP4 two-level on an all-zero
tensor: torchao gives NaN (0 / 0); minq sets pts = 1.

``quantize``, ``quantize_nvfp4`` and ``dequantize`` run the Numba kernels of ``minq.mx_kernels`` on NumPy
input (one fused pass per block: amax, scale, element codes; blocks in parallel), the code below on a
torch tensor; ``quantize_reference`` / ``quantize_nvfp4_reference`` / ``dequantize_reference`` run that
readable code on NumPy too (elements through chapter 01's ``encode_reference`` / ``decode_reference``),
with the same bytes and values (tests/test_mx.py).
The quantized-weight protocol and the ``mxfp*`` / ``nvfp4`` schemes: ``minq.mx_model``.
Notebook: notebooks/10_fp8_and_block_formats.ipynb.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from minq import mx_kernels
from minq._backend import namespace
from minq._checks import _all_finite, check_float_array, check_int
from minq.formats import FORMATS, FloatFormat

__all__ = ["MX_FORMATS", "SCALE_RULES", "MXTensor", "NVFP4Tensor", "quantize", "dequantize",
           "quantize_nvfp4", "quantize_reference", "quantize_nvfp4_reference", "dequantize_reference",
           "clip_fraction", "pack_fp4", "unpack_fp4"]

F32 = np.float32
MX_FORMATS = {"mxfp8_e4m3": ("float8_e4m3fn", 8), "mxfp8_e5m2": ("float8_e5m2", 15),  # element, emax
              "mxfp6_e2m3": ("float6_e2m3fn", 2), "mxfp6_e3m2": ("float6_e3m2fn", 4),
              "mxfp4": ("float4_e2m1fn", 2)}
SCALE_RULES = ("floor", "rceil", "ceil", "even")
NVFP4_BLOCK = 16
E2M1, E4M3 = FORMATS["float4_e2m1fn"], FORMATS["float8_e4m3fn"]


def _elem(fmt) -> FloatFormat:
    return FORMATS[MX_FORMATS[fmt][0]]


def _ext(f: FloatFormat) -> FloatFormat:
    """``f`` with one more exponent bit and no Inf/NaN: RNE without the top clamp (for clip checks)."""
    return FloatFormat(f.name + "_ext", 1, f.exp_bits + 1, f.man_bits, f.bias, "none")


# ---- input checks (each error names the parameter, before any work) ----

def _check_x(x, block_size, name="x", *, scan=True):
    """``x`` checked, as float32 blocks ``[..., n / block_size, block_size]``, and its namespace.
    ``scan=False`` (float32 NumPy input to the kernels): the NaN/Inf check is left to the kernel, which
    sees every value anyway; the errors and their order stay the same."""
    check_float_array(x, name, finite=False)
    if x.ndim == 0:
        raise ValueError(f"{name} must have at least one dimension, got a 0-d array")
    n = x.shape[-1]
    xp, xf = namespace(x), x
    if scan or n % block_size:                     # a NaN is reported before a block size that does not divide
        if not _all_finite(x):
            raise ValueError(f"{name} contains NaN or Inf")
        with np.errstate(over="ignore"):
            xf = xp.f32(x)
        if not _all_finite(xf):
            raise ValueError(f"{name} has values beyond float32's range (float64 input rounds them to Inf)")
    if n % block_size:
        raise ValueError(f"block_size={block_size} must divide the last axis of {name} (length {n})")
    return xf.reshape(*x.shape[:-1], n // block_size, block_size), xp


def _kernel_input(x, kernel):
    """(run the kernels?, scan for NaN/Inf before them?): kernels for NumPy input; float32 is scanned by them."""
    fast = kernel and isinstance(x, np.ndarray)
    return fast, not (fast and x.dtype == F32)


def _check_fmt(fmt):
    if fmt not in MX_FORMATS:
        raise ValueError(f"fmt must be one of {sorted(MX_FORMATS)}, got {fmt!r}")
    return fmt


def _check_rule(rule):
    if rule not in SCALE_RULES:
        raise ValueError(f"scale_rule must be one of {list(SCALE_RULES)}, got {rule!r}")
    return rule


# ---- MX: scale and elements ----

def _pow2(code, xp):
    """E8M0 code (int64) -> 2^(code - 127) as float32 (code 0: the float32 subnormal 2^-127)."""
    return xp.bits_float32(xp.where(code == 0, 0x400000, code << 23))


def _scale_code(amax, fmt, rule, xp):
    """int64 E8M0 codes of the blocks' shared scale from float32 ``amax [..., nb, 1]``."""
    f, emax = _elem(fmt), MX_FORMATS[fmt][1]
    u = xp.float32_bits(amax)
    exp, man = (u >> 23) & 0xFF, u & 0x7FFFFF
    if rule == "floor":
        e = exp - 127 - emax
    elif rule == "ceil":
        e = exp - 127 + xp.int64(man > 0) - emax
    elif rule == "even":                           # round amax at the element's mantissa width, half up
        e = (((u + (1 << (22 - f.man_bits))) >> 23) & 0xFF) - 127 - emax
    else:                                          # rceil: d = fl32(amax / max), rounded up to 2^k
        d = xp.float32_bits(amax / F32(f.max))
        dexp, dman = d >> 23, d & 0x7FFFFF
        e = xp.where(dexp == 0, xp.int64(dman > 0x400000) - 127, dexp - 127 + xp.int64(dman > 0))
    return xp.clip(e, -127, 127) + 127


@dataclass
class MXTensor:
    """An MX-quantized tensor: element ``codes`` uint8 ``[..., n]`` (one a byte, low bits), E8M0 ``scales``
    uint8 ``[..., n / block_size]``, of ``fmt`` (a key of MX_FORMATS) and ``shape``."""

    codes: object
    scales: object
    fmt: str
    shape: tuple
    block_size: int = 32
    scale_rule: str = "floor"

    def dequantize(self):
        """``X * P`` in float32, of ``shape`` (NumPy or torch, like the codes). NumPy uint8 codes and scales
        run the Numba kernel (``minq.mx_kernels``), anything else ``dequantize_reference``."""
        y = mx_kernels.mx_dequantize(self, _elem(self.fmt))
        return self._dequantize_reference() if y is None else y     # (codes out of range: raises there)

    def _dequantize_reference(self):
        xp = namespace(self.codes)
        P = _elem(self.fmt).decode(self.codes, kernel=False).reshape(*self.shape[:-1], -1, self.block_size)
        X = _pow2(xp.int64(self.scales), xp)[..., None]
        with np.errstate(over="ignore"):           # ceil/even/rceil may round amax ~ float32 max up to 2^128
            return (P * X).reshape(self.shape)

    @property
    def bits(self) -> int:
        return _elem(self.fmt).total_bits

    @property
    def nbytes(self) -> int:
        """Element bits (packed) plus one byte a block."""
        n = int(np.prod(self.shape))
        return -(-n * self.bits // 8) + n // self.block_size


def quantize(x, fmt: str, *, block_size: int | None = None, scale_rule: str = "floor") -> MXTensor:
    """``x`` (float16/32/64, NumPy or torch; blocks along the last axis) -> ``MXTensor``. Torch in, torch
    out (same device). Raises ValueError/TypeError naming ``x`` (not a float array, 0-d, empty, NaN/Inf),
    ``fmt``, ``scale_rule`` or ``block_size`` (not an int >= 1, not dividing the last axis). NumPy input
    runs the Numba kernel, torch input ``quantize_reference``'s code (the same bytes)."""
    return _quantize(x, fmt, block_size, scale_rule, kernel=True)


def quantize_reference(x, fmt: str, *, block_size: int | None = None, scale_rule: str = "floor") -> MXTensor:
    """``quantize`` through the readable NumPy (or torch) code below."""
    return _quantize(x, fmt, block_size, scale_rule, kernel=False)


def _quantize(x, fmt, block_size, scale_rule, *, kernel):
    _check_fmt(fmt)
    _check_rule(scale_rule)
    block = 32 if block_size is None else check_int(block_size, "block_size", lo=1)
    fast, scan = _kernel_input(x, kernel)
    xb, xp = _check_x(x, block, scan=scan)
    shape, nb_shape = tuple(x.shape), tuple(xb.shape[:-1])
    if fast:
        P, S = mx_kernels.mx_quantize(xb.reshape(-1, block), _elem(fmt), scale_rule, MX_FORMATS[fmt][1])
        return MXTensor(P.reshape(shape), S.reshape(nb_shape), fmt, shape, block, scale_rule)
    code = _scale_code(xp.amax(abs(xb), -1), fmt, scale_rule, xp)                     # [..., nb, 1]
    P = _elem(fmt).encode(xb / _pow2(code, xp), saturate=True, kernel=False)           # RNE, saturating
    return MXTensor(P.reshape(shape), xp.to_uint8(code[..., 0]), fmt, shape, block, scale_rule)


def dequantize(t):
    """``t.dequantize()`` for an ``MXTensor`` or ``NVFP4Tensor``."""
    if not isinstance(t, (MXTensor, NVFP4Tensor)):
        raise TypeError(f"t must be an MXTensor or NVFP4Tensor, got {type(t).__name__}")
    return t.dequantize()


def dequantize_reference(t):
    """``dequantize`` through the readable NumPy (or torch) code (the same values bit for bit)."""
    if not isinstance(t, (MXTensor, NVFP4Tensor)):
        raise TypeError(f"t must be an MXTensor or NVFP4Tensor, got {type(t).__name__}")
    return t._dequantize_reference()


# ---- NVFP4 ----

@dataclass
class NVFP4Tensor:
    """NVFP4: E2M1 ``codes`` uint8 ``[..., n]``, E4M3 ``block_scales`` codes uint8 ``[..., n / 16]`` and a
    float32 ``tensor_scale`` (0-d; None for one-level scaling)."""

    codes: object
    block_scales: object
    tensor_scale: object
    shape: tuple

    block_size = NVFP4_BLOCK

    def dequantize(self):
        """``P * (tensor_scale * s8f)`` in float32 (the Numba kernel on NumPy uint8 codes, as ``dequantize``)."""
        y = mx_kernels.nvfp4_dequantize(self, E4M3, E2M1)
        return self._dequantize_reference() if y is None else y

    def _dequantize_reference(self):
        s = E4M3.decode(self.block_scales, kernel=False)[..., None]          # [..., nb, 1] float32
        if self.tensor_scale is not None:
            s = self.tensor_scale * s
        P = E2M1.decode(self.codes, kernel=False).reshape(*self.shape[:-1], -1, NVFP4_BLOCK)
        return (P * s).reshape(self.shape)

    def packed(self):
        """torchao's bytes: element 2i in the low nibble."""
        return pack_fp4(self.codes)

    @property
    def nbytes(self) -> int:
        n = int(np.prod(self.shape))
        return n // 2 + n // NVFP4_BLOCK + (4 if self.tensor_scale is not None else 0)


def _tensor_scale(amax):
    """NVFP4's tensor scale from the tensor's 0-d amax: amax / (448 * 6); 1 for an all-zero tensor."""
    pts = amax / F32(448 * 6)
    if float(pts) == 0:
        pts = pts * 0 + 1                                                      # all-zero tensor (torchao: NaN)
    return pts


def _nvfp4_scales(xb, two_level, xp):
    """(s8 codes [..., nb, 1], 0-d pts or None, float32 reciprocal [..., nb, 1]) as torchao computes them."""
    amax = xp.amax(abs(xb), -1)
    block_scale = amax / F32(6)
    pts = None
    if two_level:
        pts = _tensor_scale(xp.amax(abs(xb), None).reshape(()))
        block_scale = block_scale / pts
    s8 = E4M3.encode(xp.clip(block_scale, 2.0**-6, 448.0), kernel=False)
    s8f = E4M3.decode(s8, kernel=False)
    with np.errstate(over="ignore"):               # pts below 2^-128 (amax ~1e-35): 1 / pts is Inf, as in torchao
        recip = (1.0 / pts) / s8f if two_level else 1.0 / s8f
    return s8, pts, xp.f32(recip)


def quantize_nvfp4(x, *, two_level: bool = True) -> NVFP4Tensor:
    """``x`` (last axis a multiple of 16) -> ``NVFP4Tensor``, torchao 0.18's ``nvfp4_quantize`` with
    ``per_tensor_scale = amax / (448 * 6)`` (``two_level``) or None. Torch in, torch out; NumPy input runs
    the Numba kernels (two passes: the blocks' amax, then scales and codes)."""
    return _quantize_nvfp4(x, two_level, kernel=True)


def quantize_nvfp4_reference(x, *, two_level: bool = True) -> NVFP4Tensor:
    """``quantize_nvfp4`` through the readable NumPy (or torch) code (the same bytes)."""
    return _quantize_nvfp4(x, two_level, kernel=False)


def _quantize_nvfp4(x, two_level, *, kernel):
    if not isinstance(two_level, bool):
        raise TypeError(f"two_level must be a bool, got {type(two_level).__name__}")
    fast, scan = _kernel_input(x, kernel)
    xb, xp = _check_x(x, NVFP4_BLOCK, scan=scan)
    shape, nb_shape = tuple(x.shape), tuple(xb.shape[:-1])
    if fast:
        X = np.require(xb, F32, "C").reshape(-1, NVFP4_BLOCK)
        A = mx_kernels.nvfp4_amax(X)                                           # pass 1 (NaN/Inf raise)
        pts = _tensor_scale(A.max(keepdims=True).reshape(())) if two_level else None
        P, S = mx_kernels.nvfp4_quantize(X, A, pts, E4M3, E2M1)                # pass 2
        return NVFP4Tensor(P.reshape(shape), S.reshape(nb_shape), pts, shape)
    s8, pts, recip = _nvfp4_scales(xb, two_level, xp)
    P = E2M1.encode(xp.clip(xb * recip, -6.0, 6.0), kernel=False)
    return NVFP4Tensor(P.reshape(shape), s8[..., 0], pts, shape)


def pack_fp4(codes):
    """uint8 4-bit codes ``[..., n]`` (n even) -> ``[..., n / 2]`` bytes, element 2i in the low nibble."""
    if codes.shape[-1] % 2:
        raise ValueError(f"codes must have an even last axis, got {tuple(codes.shape)}")
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def unpack_fp4(packed):
    """Inverse of ``pack_fp4``."""
    xp = namespace(packed)
    lo, hi = packed & 15, packed >> 4
    return xp.to_uint8(xp.cat([lo[..., None], hi[..., None]], -1).reshape(*packed.shape[:-1], -1))


# ---- how often the block max is clipped ----

def clip_fraction(x, fmt: str, scale_rule: str = "floor", *, block_size: int | None = None) -> float:
    """Fraction of non-zero blocks whose largest |x| is clipped beyond rounding: RNE(amax / X) in the
    element format with an unbounded exponent range exceeds max_elem. ``fmt`` is an MX format or
    "nvfp4" (two-level; ``scale_rule`` ignored)."""
    if fmt == "nvfp4":
        xb, xp = _check_x(x, NVFP4_BLOCK)
        f, v = E2M1, xp.amax(abs(xb), -1) * _nvfp4_scales(xb, True, xp)[2]
    else:
        _check_fmt(fmt)
        _check_rule(scale_rule)
        block = 32 if block_size is None else check_int(block_size, "block_size", lo=1)
        xb, xp = _check_x(x, block)
        f, amax = _elem(fmt), xp.amax(abs(xb), -1)
        v = amax / _pow2(_scale_code(amax, fmt, scale_rule, xp), xp)
    g = _ext(f)
    clipped = g.decode(g.encode(v)) > f.max
    nonzero = v > 0
    return float(clipped.sum()) / max(float(nonzero.sum()), 1.0)
