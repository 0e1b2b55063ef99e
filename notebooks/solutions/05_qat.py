"""Worked solutions of chapter 05's build exercises (notebooks/05_qat.ipynb).

Each ``exercise_<k>`` passes ``minq.exercises.ch05.exercise_<k>``; tests/test_exercises.py runs them.
The answer key of the recall and derive questions is in 05_qat.md.
"""

import numpy as np


def exercise_7(W, g, s, z, bits):
    """Clipped STE: the gradient passes where W lies on the grid's range, and is 0 beyond its ends."""
    qmax = 2**bits - 1
    inside = (W >= s * (0.0 - z)) & (W <= s * (qmax - z))         # [out, in]; s, z [out, 1] broadcast
    return (g * inside).astype(np.float32)                          # g * 0 keeps the sign of g (-0.0)


def exercise_8(W, g, s, bits):
    """LSQ's step gradient: (v_bar - v) inside the grid, the end codes outside, summed per row and scaled."""
    Q_N, Q_P = 2 ** (bits - 1), 2 ** (bits - 1) - 1
    v = W / s                                                      # [out, in]
    v_bar = np.clip(np.rint(v), -Q_N, Q_P)                         # round half to even, as the forward
    inside = (v > -Q_N) & (v < Q_P)
    dv = np.where(inside, v_bar - v, v_bar)                        # -Q_N below, Q_P above
    grad_scale = 1.0 / np.sqrt(W.shape[1] * Q_P)
    ds = (g.astype(np.float64) * dv).sum(1, keepdims=True) * grad_scale
    return ds.astype(np.float32)


def _round_up_f16(s):
    """float32 -> the nearest float16 at or above it, back in float32."""
    h = s.astype(np.float16)
    h = np.where(h.astype(np.float32) < s, np.nextafter(h, np.float16(np.inf)), h)
    return h.astype(np.float32)


def exercise_9(W, bits):
    """Chapter 03's asymmetric grid per row (range including 0), then beta = s (Q_N - z)."""
    qmax, Q_N = 2**bits - 1, 2 ** (bits - 1)
    lo = np.minimum(W.min(1, keepdims=True), np.float32(0))
    hi = np.maximum(W.max(1, keepdims=True), np.float32(0))
    s = np.where(hi > lo, (hi - lo) / np.float32(qmax), np.float32(1)).astype(np.float32)
    s = _round_up_f16(s)
    z = np.clip(np.rint((np.float32(0) - lo) / s), 0, qmax).astype(np.float32)
    return s, (s * (np.float32(Q_N) - z)).astype(np.float32)
