"""Chapter 01's build exercises (notebooks/01_float_formats.ipynb): float formats by hand.

Exercises 1-6 (recall, derive) have their answers in notebooks/solutions/01_float_formats.md.
"""

from __future__ import annotations

import numpy as np

from minq.formats import FORMATS, FloatFormat, decode_reference, encode_reference
from minq.testing import check

__all__ = ["exercise_7", "exercise_8", "exercise_9"]

_DECODERS = (FloatFormat.decode, decode_reference)
_ENCODERS = (FloatFormat.encode, encode_reference)


def decode_e2m1(codes):
    """The reference of exercise 7: minq's FP4 E2M1 decoder."""
    return FORMATS["float4_e2m1fn"].decode(codes)


def exercise_7(fn) -> bool:
    """An FP4 E2M1 decoder: ``fn(codes) -> values``, uint8 codes 0..15 -> float32, same shape.

    Bit 3 is the sign, bits 2-1 the exponent (bias 1), bit 0 the mantissa; no Inf, no NaN. Build the
    8 magnitudes as a lookup table. Checked bit for bit (``-0`` included) against
    ``FORMATS["float4_e2m1fn"].decode``; minq's decoders are off limits.
    """
    st, hnp = _st()
    codes = hnp.arrays(np.uint8, hnp.array_shapes(min_dims=1, max_dims=2, max_side=16),
                       elements=st.integers(0, 15))
    return check(fn, decode_e2m1, codes, n=40, forbid=_DECODERS)


def encode_e2m1(x):
    """The reference of exercise 8: minq's FP4 E2M1 encoder (round to nearest, ties to even)."""
    return FORMATS["float4_e2m1fn"].encode(x)


def exercise_8(fn) -> bool:
    """An FP4 E2M1 encoder for float32 values in ``[-6, 6]``: ``fn(x) -> codes`` (uint8 0..15, same shape).

    The nearest of the 8 magnitudes ``0, 0.5, 1, 1.5, 2, 3, 4, 6``; on a tie the even code (mantissa
    bit 0) wins; the sign goes to bit 3, so a small negative becomes ``-0`` (code 8). Checked bit for
    bit against ``FORMATS["float4_e2m1fn"].encode`` on random values and on every tie; minq's encoders
    are off limits.
    """
    st, hnp = _st()
    ties = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0]
    elements = st.one_of(st.floats(-6, 6, width=32), st.sampled_from(ties + [-t for t in ties]))
    x = hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=2, max_side=16), elements=elements)
    return check(fn, encode_e2m1, x, n=60, forbid=_ENCODERS)


def encode_bfloat16(x):
    """The reference of exercise 9: minq's BF16 encoder (codes as uint16)."""
    return FORMATS["bfloat16"].encode(x)


def exercise_9(fn) -> bool:
    """float32 -> BF16 with integer arithmetic on the bits: ``fn(x) -> codes`` (uint16, same shape).

    BF16 is the top half of a float32. Round the low 16 bits away to nearest, ties to even, by
    adding ``0x7FFF`` plus the lowest kept bit to the float32 bits (``x.view(np.uint32)``) and
    shifting right by 16. Finite inputs of any size, subnormals and ``-0`` included; values that
    round past BF16's max become Inf (``0x7F80``), as they must. Checked bit for bit against
    ``FORMATS["bfloat16"].encode``; minq's encoders are off limits.
    """
    st, hnp = _st()
    finite = st.floats(width=32, allow_nan=False, allow_infinity=False)
    near_max = st.sampled_from([3.3895314e38, 3.3961e38, 3.4e38, -3.39e38, 1e-40, -1e-45, 1.00390625])
    x = hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=2, max_side=16),
                   elements=st.one_of(finite, near_max))
    return check(fn, encode_bfloat16, x, n=60, forbid=_ENCODERS)


def _st():
    from hypothesis import strategies as st
    from hypothesis.extra import numpy as hnp

    return st, hnp
