"""Worked solutions of chapter 14's build exercises (notebooks/14_quantized_runtime.ipynb).

Each ``exercise_<k>`` passes ``minq.exercises.ch14.exercise_<k>``; tests/test_exercises.py runs them.
The answer key of the recall and derive questions is in 14_quantized_runtime.md.
"""

import numpy as np


def exercise_6(x):
    """Blocks of 64: the step from the largest magnitude, codes rounded half to even, then step times code."""
    xb = np.asarray(x, np.float32).reshape(-1, 64)                       # [blocks, 64]
    dx = np.abs(xb).max(axis=1) / np.float32(127)                        # float32 steps
    safe = np.where(dx > 0, dx, np.float32(1))                           # an all-zero block: codes 0
    x8 = np.clip(np.rint(xb / safe[:, None]), -127, 127)                 # np.rint: half to even
    return (x8 * dx[:, None]).astype(np.float32).reshape(-1)


def exercise_7(P, s, m, x):
    """Nibbles split per block (low: the block's first 32 codes, high: its last 32), one dot product per group
    of 64, scaled; the offsets meet the group sums of x, computed once."""
    P = np.asarray(P, np.uint8)
    out, nb = P.shape[0], P.shape[1] // 32                               # rows, groups of 64
    b = P.reshape(out, nb, 32)
    q = np.concatenate([b & 15, b >> 4], axis=2).astype(np.float64)      # [out, groups, 64] codes
    xg = np.asarray(x, np.float64).reshape(nb, 64)                       # [groups, 64]
    dots = np.einsum("rgj,gj->rg", q, xg)                                # sum_j q x per group
    return (np.asarray(s, np.float64) * dots + np.asarray(m, np.float64) * xg.sum(axis=1)).sum(axis=1)
