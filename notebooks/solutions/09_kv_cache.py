"""Worked solutions of chapter 09's build exercises (notebooks/09_kv_cache.ipynb).

Each ``exercise_<k>`` passes ``minq.exercises.ch09.exercise_<k>``; tests/test_exercises.py runs them.
The answer key of the recall and derive questions is in 09_kv_cache.md.
"""

import numpy as np


def _groups_last(xg, bits):
    """Min-max int quantization of each group on the last axis, stored as KIVI stores it (float16 s, m)."""
    qmax = 2**bits - 1
    lo, hi = xg.min(axis=-1, keepdims=True), xg.max(axis=-1, keepdims=True)
    m = lo.astype(np.float16)
    m = np.where(m.astype(np.float32) > lo, np.nextafter(m, np.float16(-np.inf)), m)   # m <= lo after rounding
    s = np.maximum((hi - m.astype(np.float32)) / np.float32(qmax), np.float32(2.0**-14))
    s16 = s.astype(np.float16)
    s16 = np.where(s16.astype(np.float32) < s, np.nextafter(s16, np.float16(np.inf)), s16)  # round up: covers hi
    m32, s32 = m.astype(np.float32), s16.astype(np.float32)
    q = np.clip(np.rint((xg - m32) / s32), 0, qmax)
    return q * s32 + m32


def exercise_7(x, bits):
    """Per token: groups of 32 channels of one position."""
    T, hd = x.shape
    return _groups_last(x.reshape(T, hd // 32, 32), bits).reshape(T, hd)


def exercise_8(x, bits):
    """Per channel: groups of 32 positions of one channel (transpose so the positions are the last axis)."""
    T, hd = x.shape
    xg = x.reshape(T // 32, 32, hd).transpose(0, 2, 1)                  # [T/32, hd, 32]
    return _groups_last(xg, bits).transpose(0, 2, 1).reshape(T, hd)


def exercise_9(T, window, group):
    """Query t reads key j quantized when j < qp(t + 1), the positions quantized once t is in the cache."""
    t = np.arange(T)
    qp = np.maximum(0, (t + 1 - window) // group * group)               # [T]
    j = np.arange(T)
    return (j[None, :] < qp[:, None]) & (j[None, :] <= t[:, None])
