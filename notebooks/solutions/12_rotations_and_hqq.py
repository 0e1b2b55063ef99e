"""Worked solutions of chapter 12's build exercises (notebooks/12_rotations_and_hqq.ipynb).

Each ``exercise_<k>`` passes ``minq.exercises.ch12.exercise_<k>``; tests/test_exercises.py runs them.
The answer key of the recall and derive questions is in 12_rotations_and_hqq.md.
"""

import numpy as np


def exercise_7(x):
    """FWHT: log2(n) butterfly stages over pairs h apart, then 1 / sqrt(n)."""
    y = np.array(x, np.float64)                        # a copy: the stages write into it
    n = y.shape[-1]
    h = 1
    while h < n:
        blocks = y.reshape(*y.shape[:-1], n // (2 * h), 2, h)     # [..., blocks, (a | b), h]
        a, b = blocks[..., 0, :].copy(), blocks[..., 1, :].copy()
        blocks[..., 0, :] = a + b
        blocks[..., 1, :] = a - b
        h *= 2
    return y / np.sqrt(n)


def exercise_8(gamma, W, signs):
    """W diag(gamma) R with R = diag(signs) H / sqrt(d), row by row through exercise 7's transform."""
    W = np.asarray(W, np.float64) * np.asarray(gamma, np.float64)[None, :]      # fold: W diag(gamma)
    return exercise_7(W * np.asarray(signs, np.float64)[None, :])              # (W D) H / sqrt(d) = W R


def exercise_9(W, s_inv, z, bits, beta):
    """One HQQ step on one group a row: quantize, shrink the error, the zero point as a mean."""
    W = np.asarray(W, np.float32)                              # [rows, g]
    s_inv, z = np.asarray(s_inv, np.float32)[:, None], np.asarray(z, np.float32)[:, None]
    p = 0.7
    Wq = np.clip(np.rint(W * s_inv + z), 0, 2 ** bits - 1)     # half to even
    Wr = (Wq - z) / s_inv
    e = W - Wr
    a = np.abs(e).astype(np.float64)
    with np.errstate(divide="ignore"):
        t = np.where(a > 0, a ** (p - 1), np.inf) / beta       # |e|^(p-1) / beta (inf at 0: shrinks to 0)
    We = np.sign(e) * np.maximum(a - t, 0.0)                   # the generalized soft-threshold
    return (Wq - (W - We) * s_inv).mean(axis=1).astype(np.float32)
