"""Chapter 06's build exercises (notebooks/06_gptq.ipynb): the Hessian and GPTQ's column loop by hand.

Exercises 1-6 (recall, derive) have their answers in notebooks/solutions/06_gptq.md.
"""

from __future__ import annotations

import numpy as np

import minq.gptq
from minq.calibration import Hessian
from minq.gptq import gptq_quantize, gptq_quantize_reference
from minq.testing import check

__all__ = ["exercise_7", "exercise_8"]

# the one-call answers to exercise 8: both GPTQ entry points and the function behind them
_GPTQ = (gptq_quantize, gptq_quantize_reference, minq.gptq._gptq)


def hessian_of_batches(batches):
    """The reference of exercise 7: ``minq.calibration.Hessian`` fed batch by batch."""
    h = Hessian(batches[0].shape[-1])
    for Xb in batches:
        h.add_batch(Xb)
    return h.H


def _random_batches(args):
    seed, n_in, n_batches = args
    r = np.random.default_rng(seed)
    return ([r.standard_normal((int(r.integers(1, 4)), 16, n_in)).astype(np.float32) for _ in range(n_batches)],)


def exercise_7(fn) -> bool:
    """The Hessian of a linear's inputs: ``fn(batches) -> H`` float32 ``[in, in]``.

    ``batches`` is a list of calibration batches ``X_b [b, seq, in]`` (float32);
    ``H = sum_b X_b^T X_b`` summed over every token of every batch. Checked to 1e-4 (relative and
    absolute: the order of the float sums may differ) against ``minq.calibration.Hessian``, whose
    ``add_batch`` is off limits.
    """
    st = _st()
    cases = st.tuples(st.integers(0, 2**32 - 1), st.integers(1, 12), st.integers(1, 4)).map(_random_batches)
    return check(fn, hessian_of_batches, cases, rtol=1e-4, atol=1e-4, n=40, forbid=(Hessian.add_batch,))


def gptq_codes(W, H, bits, group_size):
    """The reference of exercise 8: GPTQ's codes, one column at a time (``block_size=1``), damp 0.01, by the
    readable loop (``gptq_quantize_reference``, bit for bit ``gptq_quantize``)."""
    return gptq_quantize_reference(W, H, bits=bits, group_size=group_size, block_size=1).codes


def _layer(args):
    seed, out, n_groups, g, bits = args
    r = np.random.default_rng(seed)
    n = n_groups * g
    W = (r.standard_normal((out, n)) * np.exp(r.uniform(-1, 1, (out, 1)))).astype(np.float32)
    tokens = 2 * n + 8                                                      # more tokens than inputs
    X = r.standard_normal((tokens, n)) @ (0.5 * np.eye(n) + r.standard_normal((n, n)) / np.sqrt(n))
    X *= np.exp(r.normal(0, 1, n))                                          # LLM-like: mixed, scaled channels
    X = X.astype(np.float32)
    return W, X.T @ X, bits, g


def exercise_8(fn) -> bool:
    """GPTQ's column loop with groups: ``fn(W, H, bits, group_size) -> Q`` uint8 ``[out, in]``.

    ``W [out, in]`` float32, ``H = X^T X [in, in]`` float32 (no dead inputs), ``group_size`` divides
    ``in``; asymmetric grid, damp 0.01, columns left to right, no lazy batches. Take
    ``U = inverse_cholesky(H, 0.01)[0].astype(np.float32)`` (``minq.gptq``) and a float32 copy of ``W``;
    for each column ``j``: when a group starts (``j % group_size == 0``), its parameters come from the
    *current* (already updated) weights, ``p = minq.affine.choose_qparams(W[:, j:j + g], bits=bits,
    axis=1)`` (``s = p.s[:, 0]``, ``z = p.z[:, 0]``); then ``q = clip(round(w_j / s) + z, 0, 2^bits - 1)``,
    ``err = (w_j - s (q - z)) / U[j, j]`` and ``W[:, j+1:] -= outer(err, U[j, j+1:])``, all float32.
    Checked bit for bit against ``gptq_quantize(W, H, bits=bits, group_size=g, block_size=1).codes``
    (computed by ``gptq_quantize_reference``, its readable twin); both are off limits.
    """
    st = _st()
    cases = st.tuples(st.integers(0, 2**32 - 1), st.integers(1, 12), st.integers(1, 4),
                      st.sampled_from([4, 8, 16, 32]), st.integers(2, 8)).map(_layer)
    return check(fn, gptq_codes, cases, n=25, forbid=_GPTQ)


def _st():
    from hypothesis import strategies as st

    return st
