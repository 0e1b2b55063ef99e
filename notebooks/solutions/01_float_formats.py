"""Worked solutions of chapter 01's build exercises (notebooks/01_float_formats.ipynb).

Each ``exercise_<k>`` passes ``minq.exercises.ch01.exercise_<k>``; tests/test_exercises.py runs them.
The answer key of the recall and derive questions is in 01_float_formats.md.
"""

import numpy as np

# The 8 non-negative E2M1 magnitudes, indexed by the low 3 bits: exponent field (2 bits, bias 1) and
# mantissa bit. E = 0 is subnormal: 0 and 0.5; then 1, 1.5 (E = 1), 2, 3 (E = 2), 4, 6 (E = 3).
E2M1_TABLE = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6], np.float32)


def exercise_7(codes):
    """FP4 E2M1 decoder: look the magnitude up with bits 2..0, apply the sign bit 3."""
    codes = np.asarray(codes, np.uint8)
    mag = E2M1_TABLE[codes & 0b0111]
    return np.where(codes & 0b1000, -mag, mag).astype(np.float32)        # -0.0 for code 8


def exercise_8(x):
    """FP4 E2M1 encoder for |x| <= 6: the nearest table value, ties to the even code, sign in bit 3."""
    x = np.asarray(x, np.float32)
    mag = np.abs(x).astype(np.float64)
    d = np.abs(mag[..., None] - E2M1_TABLE)                 # [..., 8] distance to each magnitude
    best = d == d.min(axis=-1, keepdims=True)               # one nearest value, or two on a tie
    even = best & (np.arange(8) % 2 == 0)                   # the even code among them (mantissa bit 0)
    code = np.where(even.any(axis=-1), even.argmax(axis=-1), best.argmax(axis=-1))
    return (code | np.where(np.signbit(x), 0b1000, 0)).astype(np.uint8)   # -0.1 -> code 8 (-0)


def exercise_9(x):
    """float32 -> BF16 codes: round the low 16 bits of the float32 pattern to nearest, ties to even.

    Adding 0x7FFF rounds up every remainder above one half (0x8000); adding the lowest kept bit too
    makes an exact half round up only when that bit is 1, i.e. to the even result. A carry out of the
    mantissa moves into the exponent, which is right (1.99.. -> 2.0), and past the largest exponent
    gives 0x7F80 = Inf. Subnormals need no special case: BF16 keeps float32's exponent field.
    """
    u = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)     # room for the carry
    lsb = (u >> 16) & 1
    return ((u + 0x7FFF + lsb) >> 16).astype(np.uint16)
