"""Chapter 07's build exercises (notebooks/07_awq.ipynb): AWQ's scales, trial weights and alpha search.

Exercises 1-6 (recall, derive) have their answers in notebooks/solutions/07_awq.md.
"""

from __future__ import annotations

import numpy as np

from minq.awq import ALPHAS, awq_quantize, awq_scales, scaled_fake_quantize, search_scale
from minq.testing import check

__all__ = ["exercise_7", "exercise_8", "exercise_9"]


def _x_bar_alpha(args):
    seed, n, alpha = args
    r = np.random.default_rng(seed)
    x_bar = np.abs(r.standard_normal(n) * np.exp(r.uniform(-2, 2, n))).astype(np.float32)
    if seed % 6 == 0:
        x_bar[0] = 0                                       # a dead channel: the clamp at 1e-4
    return x_bar, alpha


def exercise_7(fn) -> bool:
    """AWQ's scale: ``fn(x_bar, alpha) -> s`` float32 ``[in]`` for ``x_bar [in]`` (mean ``|x|`` per channel).

    ``s = max(x_bar^alpha, 1e-4)``, then divided by ``sqrt(max(s) * min(s))`` so that the largest and the
    smallest scale are reciprocal. Checked to a relative 1e-5 against ``minq.awq.awq_scales``, which is
    off limits.
    """
    st = _st()
    cases = st.tuples(st.integers(0, 2**32 - 1), st.integers(1, 64), st.sampled_from(ALPHAS)).map(_x_bar_alpha)
    return check(fn, awq_scales, cases, rtol=1e-5, n=50, forbid=(awq_scales,))


def trial_weight(W, X):
    """The reference of exercise 8: ``awq_quantize`` at the one grid point ``alpha = 0.5``, no clipping."""
    return awq_quantize(W, X, bits=4, group_size=16, alphas=(0.5,), clip=False).dequantize()


def _layer(args):
    seed, out, n_groups, tokens = args
    r = np.random.default_rng(seed)
    n = 16 * n_groups
    W = r.standard_normal((out, n)).astype(np.float32)
    X = r.standard_normal((tokens, n)) * np.exp(r.uniform(-1, 1, n))      # channels of different sizes
    X[:, r.choice(n, max(1, n // 32), replace=False)] *= 20               # salient channels
    return W, X.astype(np.float32)


def exercise_8(fn) -> bool:
    """The trial weight of one scale: ``fn(W, X) -> W_hat`` float32 ``[out, in]``.

    ``x_bar = mean_t |X_tj|``, ``s`` = exercise 7's scale at ``alpha = 0.5``,
    ``W_hat = Q(W diag(s)) diag(s)^-1`` with ``Q`` chapter 03's 4-bit asymmetric RTN in groups of 16,
    float32 scales (``minq.awq.fake_quantize_groups(..., bits=4, group_size=16)``, the same numbers as
    ``quantize_groups(..., scale_dtype="float32").dequantize()`` without packing the codes). Checked to
    1e-6 against ``awq_quantize(W, X, bits=4, group_size=16, alphas=(0.5,), clip=False).dequantize()``;
    ``awq_quantize`` and ``scaled_fake_quantize`` are off limits.
    """
    st = _st()
    cases = st.tuples(st.integers(0, 2**32 - 1), st.integers(1, 8), st.integers(1, 4), st.integers(8, 64)).map(_layer)
    return check(fn, trial_weight, cases, rtol=1e-6, atol=1e-6, n=20, forbid=(awq_quantize, scaled_fake_quantize))


def chosen_alpha(W, X, bits, group_size):
    """The reference of exercise 9: the alpha ``awq_quantize``'s grid search picks (no clipping)."""
    return np.float64(awq_quantize(W, X, bits=bits, group_size=group_size, clip=False).alpha)


def _search_case(args):
    seed, out, n_groups, g, bits = args
    W, X = _layer((seed, out, max(1, n_groups * g // 16), 48))
    n = n_groups * g
    return W[:, :n], X[:, :n], bits, g


def exercise_9(fn) -> bool:
    """AWQ's scale search: ``fn(W, X, bits, group_size) -> alpha``, the grid point it picks.

    For each ``alpha`` of ``minq.awq.ALPHAS`` (0, 0.05, ..., 0.95): ``s = awq_scales(mean_t |X|, alpha)``,
    the trial weight ``W_hat = Q(W s) / s`` (``fake_quantize_groups(W * s, bits=bits,
    group_size=group_size) / s``, ``minq.awq``'s group RTN with float32 scales) and its loss ``output_error(W_hat - W, H, tokens)`` with
    ``H = X.T @ X`` in float32 (``minq.awq.output_error``: the mean squared error of the layer's output
    on ``X``). Return the alpha of the smallest loss, the first one on a tie. Checked against the alpha
    ``awq_quantize(W, X, bits=bits, group_size=group_size, clip=False)`` chooses; ``search_scale`` and
    ``awq_quantize`` are off limits.
    """
    st = _st()
    cases = st.tuples(st.integers(0, 2**32 - 1), st.integers(1, 8), st.integers(1, 3),
                      st.sampled_from([8, 16, 32]), st.integers(2, 4)).map(_search_case)
    return check(fn, chosen_alpha, cases, n=20, forbid=(search_scale, awq_quantize))


def _st():
    from hypothesis import strategies as st

    return st
