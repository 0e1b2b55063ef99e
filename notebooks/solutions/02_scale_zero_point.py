"""Worked solutions of chapter 02's build exercises (notebooks/02_scale_zero_point.ipynb).

Each ``exercise_<k>`` passes ``minq.exercises.ch02.exercise_<k>``; tests/test_exercises.py runs them.
The answer key of the recall and derive questions is in 02_scale_zero_point.md.
"""

import numpy as np


def exercise_7(W, b):
    """Per-channel symmetric: one scale per row, s = max|row| / (2^(b-1) - 1), x_hat = s (q - z)."""
    W = np.asarray(W, np.float32)
    half = 2 ** (b - 1) - 1
    z = np.float32(2 ** (b - 1))                                      # the fixed zero point
    amax = np.abs(W).max(axis=1, keepdims=True)                       # [out, 1]
    s = np.where(amax > 0, amax / np.float32(half), np.float32(1))    # an all-zero row: s = 1
    q = np.rint(W / s) + z                                            # |W / s| <= half: no clipping
    return (s * (q - z)).astype(np.float32)                           # q - z = 0 gives +0, never -0


def exercise_8(x, b):
    """Asymmetric quantization with an integer zero point, x_hat = s (q - z)."""
    x = np.asarray(x, np.float32)
    qmax = 2**b - 1
    lo = np.minimum(x.min(), np.float32(0))    # the range always contains 0 ...
    hi = np.maximum(x.max(), np.float32(0))
    s = (hi - lo) / np.float32(qmax) if hi > lo else np.float32(1)
    z = np.clip(np.rint(-lo / s), 0, qmax)      # ... and 0 lands on the integer code z
    q = np.clip(np.rint(x / s) + z, 0, qmax)
    return s * (q - z)


def exercise_9(x, b, ratios):
    """MSE of 'clip at c max|x|, then round symmetrically' for each clip ratio c."""
    x = np.asarray(x, np.float32)
    half = 2 ** (b - 1) - 1
    amax = np.abs(x).max()
    mse = []
    for c in ratios:
        t = np.float32(c * amax)                      # the clip threshold
        s = t / np.float32(half)                      # the clipped range fills the grid
        x_hat = s * np.rint(np.clip(x, -t, t) / s)    # clip, then round half to even
        mse.append(np.mean((x.astype(np.float64) - x_hat) ** 2))
    return np.array(mse)
