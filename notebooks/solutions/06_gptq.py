"""Worked solutions of chapter 06's build exercises (notebooks/06_gptq.ipynb).

Each ``exercise_<k>`` passes ``minq.exercises.ch06.exercise_<k>``; tests/test_exercises.py runs them.
The answer key of the recall and derive questions is in 06_gptq.md.
"""

import numpy as np

from minq import affine
from minq.gptq import inverse_cholesky


def exercise_7(batches):
    """H = sum over all tokens of x x^T: flatten each batch to [tokens, in], add X^T X in float64."""
    n_in = batches[0].shape[-1]
    total = np.zeros((n_in, n_in), np.float64)
    for Xb in batches:
        Xf = np.asarray(Xb, np.float64).reshape(-1, n_in)                  # [b, seq, in] -> [b * seq, in]
        total += Xf.T @ Xf
    return total.astype(np.float32)


def exercise_8(W, H, bits, group_size):
    """GPTQ, one column at a time: quantize column j, then let the columns after it absorb its error."""
    W = np.array(W, np.float32)                                             # a copy: it is updated in place
    U = inverse_cholesky(H, 0.01)[0].astype(np.float32)                     # U^T U = (H + lambda I)^-1
    qmax = 2**bits - 1
    out, n = W.shape
    Q = np.zeros((out, n), np.uint8)
    for j in range(n):
        if j % group_size == 0:                                             # a group starts: its grid from
            p = affine.choose_qparams(W[:, j:j + group_size], bits=bits, axis=1)   # the updated weights
            s, z = p.s[:, 0], p.z[:, 0]                                     # [out] each
        q = np.clip(np.rint(W[:, j] / s) + z, 0, qmax)                      # chapter 02's quantize
        Q[:, j] = q
        err = (W[:, j] - s * (q - z)) / U[j, j]                             # the OBS step, in units of U
        W[:, j + 1:] -= np.outer(err, U[j, j + 1:])                         # feed the error forward
    return Q
