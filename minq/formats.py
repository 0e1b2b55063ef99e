"""Chapter 01 — float formats: the bit fields of FP32 ... FP4 and E8M0, encode and decode.

A float format with ``e`` exponent bits, ``m`` mantissa bits and bias ``b`` reads a code as

    [ sign | E (e bits) | M (m bits) ]
    normal    (E >= 1):  x = (-1)^sign * 2^(E - b)  * (1 + M / 2^m)
    subnormal (E == 0):  x = (-1)^sign * 2^(1 - b)  * (M / 2^m)        (gradual underflow to 0)

and the formats differ in how they spend the top codes (``FloatFormat.convention``):

    "ieee"  E all ones: M == 0 is ±Inf, M != 0 is NaN             float32, float16, bfloat16, e5m2
    "fn"    no Inf; only S.1111.111 is NaN, so E all ones is finite float8_e4m3fn (max 448)
    "fnuz"  no Inf, no -0; the code 0x80 ("-0") is the one NaN    float8_e4m3fnuz, float8_e5m2fnuz
    "none"  no Inf, no NaN: every code is a number                FP6 E2M3/E3M2, FP4 E2M1
    "fnu"   unsigned, no zero, 8 exponent bits: x = 2^(c - 127),  float8_e8m0fnu (the MX block scale)
            code 0xFF is NaN

Encoding float32 -> code rounds to nearest, ties to even, with subnormals, decided on the exact
integer significand of the input (never by casting through ml_dtypes, torch or numpy float16).
Overflow is decided *after* rounding (e4m3fn: 464 = 448 + half an ulp is a tie -> 448; 465 -> overflow).
By default overflow behaves like ml_dtypes' cast: ieee -> ±Inf, fn -> NaN, fnuz -> NaN (0x80),
none -> ±max (FP6/FP4 always saturate). ``saturate=True`` sends finite overflow *and* ±Inf to ±max
(OCP OFP8 "SAT" mode); NaN stays NaN where the format has one. A NaN input to FP6/FP4 (no NaN
code) raises ValueError: ml_dtypes turns it into the -0 code, which silently hides a bug. NaN
payloads are not kept: encode writes the format's canonical NaN (ieee: sign, E all ones, top
mantissa bit — so float32 encode is the identity except on NaN payloads), decode returns a quiet
float32 NaN.

E8M0 has no standard rounding from an arbitrary float. minq rounds by value to the nearest power of
two, in the linear domain, ties *up*: 2^k * (1 + f) goes to 2^(k+1) when f >= 1/2 (1.5 -> 2, 3 -> 4,
0.75 -> 1), as ml_dtypes >= 0.7 and torch do; gfloat rounds ties to the even code (3 -> 2). The same
rule holds for float32-subnormal inputs: below 1.5 * 2^-127 (bit pattern 0x00600000) they round to
2^-127 (code 0x00, the smallest value: there is no zero), from 1.5 * 2^-127 up to 2^-126 (0x01).
History: ml_dtypes 0.5 and 0.6 rounded every subnormal above 2^-127 up to 2^-126, which is not
round-to-nearest for [2^-127, 1.5 * 2^-127); minq copied that until ml_dtypes 0.7 fixed it, and the
test suite is now exact against 0.7. 0, negatives and NaN give NaN.
MX block scales (chapter 10) are therefore not computed by encoding a float into E8M0: OCP MX v1.0
§6.3 takes ``floor(log2(amax)) - emax_elem`` straight from the exponent bits.

Guarantees (tests/test_formats.py): ``decode`` equals ml_dtypes / numpy for every code of every
format (a 1M sample for float32); ``encode`` equals the ml_dtypes (0.7) / numpy cast on a
boundary-dense set of 1.05M-1.43M inputs per format, float32 subnormals densely included, with 0
mismatches (NaN codes compared by NaN-ness); the Numba kernels of ``minq.formats_kernels`` (what
``encode`` / ``decode`` run on NumPy arrays: one parallel pass writing the codes or float32 values
directly, the NaN and range checks counted inside it) equal the readable reference bit for bit; the
torch path runs the reference and equals the NumPy path.

Papers / specs: IEEE 754-2019; Micikevicius et al., "FP8 Formats for Deep Learning" (arXiv:2209.05433);
OCP 8-bit Floating Point Specification (OFP8) v1.0; OCP Microscaling Formats (MX) v1.0.
Notebook: ``notebooks/01_float_formats.ipynb``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from minq import formats_kernels as fk
from minq._backend import is_torch, namespace
from minq._checks import check_float_array, check_uint_array
from minq.formats_kernels import _F32_INF, _F32_QNAN

__all__ = ["FloatFormat", "FORMATS", "CONVENTIONS", "encode_reference", "decode_reference"]

CONVENTIONS = ("ieee", "fn", "fnuz", "none", "fnu")   # their ints, in this order, are the kernels' (0-4)

# Bit layouts (most significant bit first). FP6 and FP4 codes sit in the low bits of a uint8, the
# unused high bits are 0 (ml_dtypes' storage too):
#
#   float32     [s|eeeeeeee|mmmmmmmmmmmmmmmmmmmmmmm]  1/8/23  bias 127   uint32
#   float16     [s|eeeee|mmmmmmmmmm]                  1/5/10  bias 15    uint16
#   bfloat16    [s|eeeeeeee|mmmmmmm]                  1/8/7   bias 127   uint16  (float32's top half)
#   FP8 e4m3    [s|eeee|mmm]                          1/4/3   bias 7 (fn) / 8 (fnuz)
#   FP8 e5m2    [s|eeeee|mm]                          1/5/2   bias 15 (ieee) / 16 (fnuz)
#   FP6 e2m3    [0 0|s|ee|mmm]                        1/2/3   bias 1
#   FP6 e3m2    [0 0|s|eee|mm]                        1/3/2   bias 3
#   FP4 e2m1    [0 0 0 0|s|ee|m]                      1/2/1   bias 1
#   E8M0        [eeeeeeee]                            0/8/0   bias 127   (no sign, no mantissa)


@dataclass(frozen=True)
class FloatFormat:
    """One binary float format: bit fields, bias and its Inf/NaN ``convention`` (see module docstring)."""

    name: str
    sign_bits: int
    exp_bits: int
    man_bits: int
    bias: int
    convention: str

    def __post_init__(self):
        if self.convention not in CONVENTIONS:
            raise ValueError(f"convention must be one of {CONVENTIONS}, got {self.convention!r}")
        for name, lo, hi in (("sign_bits", 0, 1), ("exp_bits", 1, 8), ("man_bits", 0, 23)):
            v = getattr(self, name)             # encode works on float32 inputs: no field wider than its own
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise ValueError(f"{name} must be an int in {lo}..{hi}, got {v!r}")
        if isinstance(self.bias, bool) or not isinstance(self.bias, int):
            raise ValueError(f"bias must be an int, got {self.bias!r}")
        if (self.convention == "fnu") != (self.sign_bits == 0 and self.man_bits == 0):
            raise ValueError("convention must be 'fnu' exactly for the unsigned exponent-only layout "
                             f"(sign_bits = man_bits = 0); got {self.convention!r} with sign_bits="
                             f"{self.sign_bits}, man_bits={self.man_bits}")
        if self.convention in ("ieee", "fn") and self.man_bits == 0:
            raise ValueError(f"convention {self.convention!r} needs man_bits >= 1 (its NaN has mantissa bits)")

    # --- derived constants ---------------------------------------------------------------------------
    @property
    def total_bits(self) -> int:
        return self.sign_bits + self.exp_bits + self.man_bits

    @property
    def max_code(self) -> int:
        """Largest valid code (all bits of the format set)."""
        return (1 << self.total_bits) - 1

    @property
    def code_dtype(self):
        """NumPy dtype of the codes: uint8 up to 8 bits, else uint16 / uint32."""
        n = self.total_bits
        return np.dtype(np.uint8 if n <= 8 else np.uint16 if n <= 16 else np.uint32)

    @property
    def max_mag(self) -> int:
        """Magnitude code (sign bit clear) of the largest finite value."""
        e, m = self.exp_bits, self.man_bits
        return {"ieee": (((1 << e) - 1) << m) - 1,   # the code below +Inf
                "fn": (1 << (e + m)) - 2,            # the code below NaN (S.1111.111)
                "fnuz": (1 << (e + m)) - 1, "none": (1 << (e + m)) - 1,
                "fnu": 254}[self.convention]

    @property
    def emin(self) -> int:
        """Exponent of the smallest normal value (E8M0: of its smallest value, code 0)."""
        return -self.bias if self.convention == "fnu" else 1 - self.bias

    @property
    def emax(self) -> int:
        """Exponent of the largest finite value."""
        return (self.max_mag >> self.man_bits) - self.bias

    @property
    def max(self) -> float:
        """Largest finite value (448 for e4m3fn, 6 for e2m1, 65504 for float16)."""
        frac = self.max_mag & ((1 << self.man_bits) - 1)
        return 2.0**self.emax * (1 + frac / 2**self.man_bits)

    @property
    def smallest_normal(self) -> float:
        return 2.0**self.emin

    @property
    def smallest_subnormal(self) -> float:
        """Smallest positive value (E8M0 has no subnormals: its smallest value, 2^-127)."""
        return 2.0 ** (self.emin - self.man_bits)

    # --- encode / decode -----------------------------------------------------------------------------
    def encode(self, x, saturate: bool = False, *, kernel: bool = True):
        """float32 values -> codes of this format, same shape as ``x``.

        x: NumPy array or torch tensor (any device) of float32; float16/float64/bfloat16 are first
           converted to float32 (float64 -> float32 -> format is a double rounding, as in ml_dtypes).
           NaN and ±Inf follow the format's rules (a NaN into FP6/FP4 raises ValueError).
        saturate: False = ml_dtypes' cast (see module docstring); True = finite overflow and ±Inf
           become ±max (E8M0: +max; negatives stay NaN).
        kernel: False runs ``encode_reference`` on NumPy input too (what torch input always runs).
        Returns NumPy ``code_dtype`` codes, or a torch tensor: uint8 for <= 8 bits, int32 for the
        16-bit formats and int64 for float32 (torch lacks most ops on uint16/uint32), holding the
        same code values.
        """
        check_float_array(x, "x", finite=False)
        if not isinstance(saturate, (bool, np.bool_)):
            raise TypeError(f"saturate must be a bool, got {type(saturate).__name__}")
        saturate = bool(saturate)
        if is_torch(x) or not kernel:                      # the readable reference
            self._check_nan(self.convention == "none" and bool(namespace(x).isnan(x).any()))
            q = encode_reference(x, self, saturate=saturate)
            if not is_torch(x):
                return q.astype(self.code_dtype)
            import torch

            bits = self.total_bits
            return q.to(torch.uint8 if bits <= 8 else torch.int32 if bits <= 16 else torch.int64)
        x = np.require(x, np.float32, "C")                  # float16/64 -> float32; contiguous
        q = np.empty(x.shape, self.code_dtype)             # written directly, no astype copy
        if fk.fast_ok(self, encode=True):
            n_nan = fk.encode_fast(x.reshape(-1), q.reshape(-1), self, saturate)
        else:
            n_nan = fk._encode_kernel(x.reshape(-1).view(np.uint32), q.reshape(-1), self.exp_bits, self.man_bits,
                                      self.bias, CONVENTIONS.index(self.convention), self.max_mag, saturate)
        self._check_nan(n_nan > 0)                         # counted inside the kernel: no extra pass
        return q

    def _check_nan(self, has_nan: bool):
        if has_nan and self.convention == "none":
            raise ValueError(f"x contains NaN, which {self.name} cannot represent (it has no NaN code)")

    def decode(self, codes, *, kernel: bool = True):
        """Codes -> float32 values, same shape. NaN codes give a quiet NaN (payload not kept).

        codes: NumPy unsigned array or torch integer tensor with values in ``0 .. max_code``.
        kernel: False runs ``decode_reference`` on NumPy input too (what torch input always runs).
        """
        check_uint_array(codes, "codes")
        if is_torch(codes) or not kernel:
            self._check_range(codes)
            return decode_reference(codes, self)
        if codes.dtype == np.uint64 or not fk.fast_ok(self, encode=False):
            self._check_range(codes)
            bits = np.empty(codes.shape, np.uint32)
            fk._decode_kernel(codes.reshape(-1).astype(np.uint32), bits.reshape(-1), self.exp_bits, self.man_bits,
                              self.bias, CONVENTIONS.index(self.convention))
            return bits.view(np.float32)
        c = np.require(codes, None, "C")
        y = np.empty(c.shape, np.float32)
        if fk.decode_fast(c.reshape(-1), y.reshape(-1), self) > self.max_code:   # the range check,
            self._check_range(codes)                                             # fused: OR of the codes
        return y

    def _check_range(self, codes):
        lo, hi = int(codes.min()), int(codes.max())
        if lo < 0 or hi > self.max_code:
            raise ValueError(f"codes must be in 0..{self.max_code} for {self.name} "
                             f"({self.total_bits} bits), got values in {lo}..{hi}")

    def values(self):
        """All distinct finite values, ascending, float32 (-0 merged into +0). Formats up to 16 bits."""
        if self.total_bits > 16:
            raise ValueError(f"{self.name} has 2^{self.total_bits} codes; "
                             "values() lists formats of up to 16 bits")
        v = self.decode(np.arange(self.max_code + 1, dtype=self.code_dtype))
        return np.unique(v[np.isfinite(v)] + np.float32(0))  # -0 + 0 = +0


# --- the readable reference (NumPy or torch arrays, vectorised) ------------------------------------------


def encode_reference(x, fmt: FloatFormat, *, saturate: bool = False):
    """Reference encoder: float32 array (NumPy or torch) -> int64 codes, integer arithmetic only.

    Every finite float32 is exactly ``sig * 2^e2`` with an integer ``sig < 2^24``. The format's
    quantum at x's exponent is ``2^(eq - m)``, so the mantissa count is ``n = sig * 2^e2 / 2^(eq - m)``,
    an integer division by ``2^shift`` rounded to nearest-even. Then ``(eq - emin) * 2^m + n`` is the
    magnitude code directly: for a normal n includes the implicit 1, a carry out of the mantissa
    bumps the exponent field, and subnormals are the ``eq == emin`` codes with ``n < 2^m``.
    """
    xp = namespace(x)
    e, m = fmt.exp_bits, fmt.man_bits
    u = xp.float32_bits(x)                         # x [...] -> float32 bit patterns, int64 [...]
    sign, a = u >> 31, u & 0x7FFFFFFF             # a = the bits of |x|
    exp, man = a >> 23, a & 0x7FFFFF
    is_nan, is_inf = a > _F32_INF, a == _F32_INF
    if fmt.convention == "fnu":
        return _encode_e8m0_reference(sign, a, exp, man, saturate, xp)

    normal = exp != 0
    sig = xp.where(normal, man | 0x800000, man)    # |x| = sig * 2^e2 exactly
    e2 = xp.where(normal, exp - 150, -149)
    # floor(log2|x|) for a normal float32. Float32 subnormals lie below every format's smallest
    # normal (emin >= -126), so any exponent below -126 (here -127) puts them on the subnormal grid.
    ex = xp.where(normal, exp - 127, -127)
    eq = xp.clip(ex, fmt.emin, None)              # values below the normal range share the quantum of emin
    shift = xp.clip(eq - m - e2, 0, 40)           # low bits of sig below the quantum; >= 25 rounds sig to 0
    n = _round_shift(sig, shift)                  # round(sig / 2^shift), ties to even
    mag = (eq - fmt.emin) * 2**m + n              # magnitude code E * 2^m + M

    over = (mag > fmt.max_mag) | is_inf           # decided after rounding: e4m3fn 464 -> 448, 465 overflows
    if saturate or fmt.convention == "none":
        mag = xp.where(over, fmt.max_mag, mag)     # clamp to ±max
    elif fmt.convention == "ieee":
        mag = xp.where(over, ((1 << e) - 1) << m, mag)  # ±Inf
    else:
        is_nan = is_nan | over                     # fn, fnuz: no Inf, so overflow is NaN
    q = (sign << (e + m)) | mag

    if fmt.convention == "ieee":                   # quiet NaN: E all ones and the top mantissa bit
        q = xp.where(is_nan, (sign << (e + m)) | (((1 << e) - 1) << m) | (1 << (m - 1)), q)
    elif fmt.convention == "fn":                   # S.1111.111
        q = xp.where(is_nan, (sign << (e + m)) | ((1 << (e + m)) - 1), q)
    elif fmt.convention == "fnuz":                 # no -0 (-0 -> +0); the "-0" code is the one NaN
        q = xp.where(mag == 0, 0, q)
        q = xp.where(is_nan, 1 << (e + m), q)
    return q


def _round_shift(sig, k):
    """``sig / 2^k`` rounded to the nearest integer, ties to even (k >= 0, elementwise)."""
    q = sig >> k                                  # truncated quotient
    r = sig - (q << k)                            # remainder, 0 <= r < 2^k
    half = (1 << k) >> 1                          # 2^(k-1); 0 when k == 0 (exact, nothing to round)
    return q + ((r > half) | ((r == half) & (half > 0) & ((q & 1) == 1)))


def _encode_e8m0_reference(sign, a, exp, man, saturate, xp):
    """E8M0: the nearest power of two, in the linear domain, ties up (1.5 -> 2)."""
    # normal 2^(exp-127) * (1 + man/2^23): round up from 1.5 * 2^k on (man >= 2^22).
    # float32 subnormal man * 2^-149: the candidates are 2^-127 (man = 2^22, code 0) and 2^-126
    # (code 1), their midpoint 1.5 * 2^-127 is man = 0x600000, ties up; everything below -> code 0.
    q = xp.where(exp != 0, exp + (man >= 0x400000),
                 xp.where(man >= 0x600000, 1, 0))
    q = xp.where(q >= 255, 254 if saturate else 255, q)   # overflow (and +Inf)
    return xp.where((sign == 1) | (a == 0) | (a > _F32_INF), 255, q)  # negative, zero, NaN -> NaN


def decode_reference(codes, fmt: FloatFormat):
    """Reference decoder: integer codes (NumPy or torch) -> float32, built as float32 bit patterns."""
    xp = namespace(codes)
    e, m = fmt.exp_bits, fmt.man_bits
    c = xp.int64(codes)
    if fmt.convention == "fnu":                    # 2^(c - 127); 2^-127 is a float32 subnormal
        bits = xp.where(c == 0, 0x400000, c << 23)
        return xp.bits_float32(xp.where(c == 255, _F32_QNAN, bits))

    sign = (c >> (e + m)) & 1
    E, M = (c >> m) & ((1 << e) - 1), c & ((1 << m) - 1)
    normal = ((E - fmt.bias + 127) << 23) | (M << (23 - m))   # re-bias E, left-align M in 23 bits
    # subnormal M * 2^(1 - bias - m): normalise on the leading bit p of M ...
    p = xp.clip(_bit_length(M) - 1, 0, None)
    f_exp = 1 - fmt.bias - m + p + 127
    sub = (f_exp << 23) | ((M - (1 << p)) << (23 - p))
    # ... unless that is below float32's normal range (bias 127: bfloat16, float32), where the
    # float32 subnormal field is M shifted into place.
    sub = xp.where(f_exp >= 1, sub, M << (150 - fmt.bias - m))
    bits = xp.where(E != 0, normal, xp.where(M == 0, 0, sub))

    top = E == (1 << e) - 1
    if fmt.convention == "ieee":
        bits = xp.where(top, xp.where(M == 0, _F32_INF, _F32_QNAN), bits)
    elif fmt.convention == "fn":
        bits = xp.where(top & (M == (1 << m) - 1), _F32_QNAN, bits)
    bits = bits | (sign << 31)
    if fmt.convention == "fnuz":
        bits = xp.where(c == 1 << (e + m), _F32_QNAN, bits)  # the "-0" code is the NaN
    return xp.bits_float32(bits)


def _bit_length(a):
    """Number of significant bits of each non-negative ``a < 2^32`` (0 for 0), by binary search."""
    n = a * 0
    for k in (16, 8, 4, 2, 1):
        big = a >= (1 << k)
        n = n + big * k
        a = a >> (big * k)
    return n + (a > 0)


# --- the formats, keyed by their ml_dtypes names ---------------------------------------------------------


class _Formats(dict):
    def __missing__(self, name):
        raise KeyError(f"unknown float format {name!r}; known formats: {', '.join(self)}")


FORMATS: dict[str, FloatFormat] = _Formats({f.name: f for f in [
    FloatFormat("float32", 1, 8, 23, 127, "ieee"),
    FloatFormat("float16", 1, 5, 10, 15, "ieee"),
    FloatFormat("bfloat16", 1, 8, 7, 127, "ieee"),
    FloatFormat("float8_e4m3fn", 1, 4, 3, 7, "fn"),
    FloatFormat("float8_e5m2", 1, 5, 2, 15, "ieee"),
    FloatFormat("float8_e4m3fnuz", 1, 4, 3, 8, "fnuz"),
    FloatFormat("float8_e5m2fnuz", 1, 5, 2, 16, "fnuz"),
    FloatFormat("float6_e2m3fn", 1, 2, 3, 1, "none"),
    FloatFormat("float6_e3m2fn", 1, 3, 2, 3, "none"),
    FloatFormat("float4_e2m1fn", 1, 2, 1, 1, "none"),
    FloatFormat("float8_e8m0fnu", 0, 8, 0, 127, "fnu"),
]})
