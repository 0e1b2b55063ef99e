"""Worked solutions of chapter 07's build exercises (notebooks/07_awq.ipynb).

Each ``exercise_<k>`` passes ``minq.exercises.ch07.exercise_<k>``; tests/test_exercises.py runs them.
The answer key of the recall and derive questions is in 07_awq.md.
"""

import numpy as np

from minq.awq import ALPHAS, fake_quantize_groups, output_error


def exercise_7(x_bar, alpha):
    """s = x_bar^alpha (at least 1e-4), normalised so that max(s) * min(s) = 1."""
    s = np.maximum(np.asarray(x_bar, np.float32) ** np.float32(alpha), np.float32(1e-4))
    return s / np.sqrt(s.max() * s.min())


def exercise_8(W, X):
    """The trial weight Q(W diag(s)) diag(s)^-1 of the scale at alpha = 0.5."""
    x_bar = np.abs(X).mean(axis=0, dtype=np.float64).astype(np.float32)    # [in] mean |x| per channel
    s = exercise_7(x_bar, 0.5)
    Ws = W * s[None, :]                                                     # scale the columns up ...
    return fake_quantize_groups(Ws, bits=4, group_size=16) / s[None, :]   # ... round, and scale back


def exercise_9(W, X, bits, group_size):
    """The grid search: the alpha whose trial weight has the smallest output error on X (first on a tie)."""
    W, X = np.asarray(W, np.float32), np.asarray(X, np.float32)
    x_bar = np.abs(X).mean(axis=0, dtype=np.float64).astype(np.float32)
    H = X.T @ X                                                             # [in, in]: ||X dW^T||^2 = tr(dW H dW^T)
    best_alpha, best_loss = None, np.inf
    for alpha in ALPHAS:
        s = exercise_7(x_bar, alpha)
        W_hat = fake_quantize_groups(W * s, bits=bits, group_size=group_size) / s   # the trial weight
        loss = output_error(W_hat - W, H, X.shape[0])
        if loss < best_loss:                                                # strict: the first minimum wins
            best_alpha, best_loss = alpha, loss
    return np.float64(best_alpha)
