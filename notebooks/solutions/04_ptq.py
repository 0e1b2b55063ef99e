"""Worked solutions of chapter 04's build exercises (notebooks/04_ptq.ipynb).

Each ``exercise_<k>`` passes ``minq.exercises.ch04.exercise_<k>``; tests/test_exercises.py runs them.
The answer key of the recall and derive questions is in 04_ptq.md.
"""

import numpy as np


def exercise_7(X):
    """Per-token dynamic int8: one scale per row, s_t = max_j |X_tj| / 127, 128 levels each side."""
    X = np.asarray(X, np.float32)
    amax = np.abs(X).max(axis=1, keepdims=True)                             # [tokens, 1]
    s = np.where(amax > 0, amax / np.float32(127), np.float32(1)).astype(np.float32)   # zero row: s = 1
    return (s * np.clip(np.rint(X / s), -128, 127)).astype(np.float32)      # rint: half to even


def exercise_8(act_absmax, W, alpha):
    """SmoothQuant's scale s_j = max|X_j|^alpha / max|W_j|^(1 - alpha), both maxima and s clamped >= 1e-5."""
    a = np.maximum(np.asarray(act_absmax, np.float64), 1e-5)                # [in]
    w = np.maximum(np.abs(np.asarray(W, np.float64)).max(axis=0), 1e-5)     # [in]: max over the rows
    return np.maximum(a**alpha / w ** (1 - alpha), 1e-5).astype(np.float32)


def exercise_9(X, W, alphas):
    """Static W8A8 after smoothing, for each alpha: the relative error of the layer's output."""
    X, W = np.asarray(X, np.float32), np.asarray(W, np.float32)
    Y = X.astype(np.float64) @ W.astype(np.float64).T                        # the float output [tokens, out]
    errors = []
    for alpha in alphas:
        s = exercise_8(np.abs(X).max(axis=0), W, alpha)                     # [in]
        Xs, Ws = X / s, W * s                                               # (X / s) (W s)^T = X W^T
        sx = np.abs(Xs).max() / np.float32(127)                             # one activation scale
        X_hat = sx * np.clip(np.rint(Xs / sx), -128, 127)
        sw = np.abs(Ws).max(axis=1, keepdims=True) / np.float32(127)        # one weight scale per row
        sw = np.where(sw > 0, sw, np.float32(1))
        W_hat = sw * np.clip(np.rint(Ws / sw), -128, 127)
        Y_hat = X_hat.astype(np.float64) @ W_hat.astype(np.float64).T
        errors.append(np.linalg.norm(Y_hat - Y) / np.linalg.norm(Y))
    return np.array(errors)
