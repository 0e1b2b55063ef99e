"""Worked solutions of chapter 10's build exercises (notebooks/10_fp8_and_block_formats.ipynb).

Each ``exercise_<k>`` passes ``minq.exercises.ch10.exercise_<k>``; tests/test_exercises.py runs them.
The answer key of the recall and derive questions is in 10_fp8_and_block_formats.md.
"""

import numpy as np

from minq.formats import FORMATS
from minq.nf4 import MIDPOINTS

E4M3 = FORMATS["float8_e4m3fn"]


def exercise_7(x):
    """Per-row E4M3: one float32 scale per row maps the row's largest magnitude onto 448."""
    x = np.asarray(x, np.float32)                                     # [rows, cols]
    amax = np.abs(x).max(axis=1, keepdims=True)                       # [rows, 1]
    s = np.maximum(amax, np.float32(1e-12)) / np.float32(448)         # float32; an all-zero row: a tiny scale
    q = E4M3.encode(x / s, saturate=True)                             # uint8 codes, RNE (x / s <= 448 anyway)
    return E4M3.decode(q) * s


def exercise_8(x):
    """MXFP4 scales from the exponent bits: code = biased exponent of amax - emax(E2M1) = e + 127 - 2."""
    x = np.asarray(x, np.float32).reshape(-1, 32)                     # [nb, 32]
    amax = np.abs(x).max(axis=1)                                      # [nb] float32
    biased = (amax.view(np.uint32) >> 23).astype(np.int64) & 0xFF     # e + 127 (0 for zero / subnormal amax)
    return np.clip(biased - 2, 0, 254).astype(np.uint8)


def exercise_9(x):
    """NF4: absmax per 64, multiply by the float32 reciprocal, count the midpoints below, pack high-first."""
    x = np.asarray(x, np.float32).reshape(-1, 64)                     # [nb, 64]
    absmax = np.abs(x).max(axis=1)                                    # [nb]
    r = np.float32(1) / np.maximum(absmax, np.float32(1e-38))         # float32 reciprocal
    v = np.clip(x * r[:, None], -1, 1).reshape(-1)
    q = np.searchsorted(MIDPOINTS, v, side="left").astype(np.uint8)   # midpoints strictly below v: ties go low
    return (q[0::2] << 4) | q[1::2]                                  # [n / 2]: first element high
