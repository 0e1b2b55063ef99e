"""Chapter 04's build exercises (notebooks/04_ptq.ipynb): int8 activations and SmoothQuant by hand.

Exercises 1-6 (recall, derive) have their answers in notebooks/solutions/04_ptq.md.
"""

from __future__ import annotations

import numpy as np

from minq.groups import quantize_groups
from minq.smoothquant import smooth_scales
from minq.testing import check, float_arrays
from minq.w8a8 import Int8Activations

__all__ = ["exercise_7", "exercise_8", "exercise_9"]

# the one-call answers to exercise 7: the per-token quantizer and its parts
_INT8 = (Int8Activations.fake_quantize, Int8Activations.quantize, Int8Activations.scales)


def dynamic_int8(X):
    """The reference of exercise 7: ``Int8Activations("dynamic").fake_quantize``."""
    return Int8Activations("dynamic").fake_quantize(X)


def _rows_ok(X):
    """No row whose largest magnitude is a tiny subnormal: there ``max / 127`` underflows to 0."""
    amax = np.abs(X).max(axis=1)
    return not ((amax > 0) & (amax < 1e-30)).any()


def exercise_7(fn) -> bool:
    """Per-token dynamic int8: ``fn(X) -> X_hat`` for ``X [tokens, in]`` float32.

    One scale per row ``t``: ``s_t = max_j |X_tj| / 127`` in float32 (``s_t = 1`` for an all-zero
    row), ``X_hat = s_t * clip(round(X / s_t), -128, 127)``, rounding half to even, float32. Checked
    bit for bit against ``Int8Activations("dynamic").fake_quantize``, which (with its ``quantize`` and
    ``scales``) is off limits.
    """
    rows = float_arrays(dims=(2, 2), max_abs=1e3).filter(_rows_ok)
    return check(fn, dynamic_int8, rows, n=50, forbid=_INT8)


def smooth_scales_one(act_absmax, W, alpha):
    """The reference of exercise 8: ``smooth_scales(act_absmax, [W], alpha)``."""
    return smooth_scales(act_absmax, [W], alpha)


def _activations_weights_alpha(args):
    seed, n_in, alpha = args
    r = np.random.default_rng(seed)
    a = np.abs(r.standard_normal(n_in) * np.exp(r.uniform(-2, 4, n_in))).astype(np.float32)
    W = (r.standard_normal((8, n_in)) * 0.05).astype(np.float32)
    if seed % 7 == 0:
        a[0], W[:, -1] = 0, 0                  # a dead channel and a zero column: the clamps at 1e-5
    return a, W, alpha


def exercise_8(fn) -> bool:
    """SmoothQuant's per-channel scale: ``fn(act_absmax, W, alpha) -> s`` float32 ``[in]``.

    ``act_absmax [in]`` = ``max_t |X_tj|`` of the calibration inputs, ``W [out, in]``, ``alpha`` in
    [0, 1]: ``s_j = max|X_j|^alpha / max_i |W_ij|^(1 - alpha)``, with both maxima and the result
    clamped to at least 1e-5. Checked to a relative 1e-6 against
    ``minq.smoothquant.smooth_scales(act_absmax, [W], alpha)``, which is off limits.
    """
    st = _st()
    cases = st.tuples(st.integers(0, 2**32 - 1), st.integers(1, 64), st.floats(0, 1)).map(_activations_weights_alpha)
    return check(fn, smooth_scales_one, cases, rtol=1e-6, n=50, forbid=(smooth_scales,))


def alpha_sweep(X, W, alphas):
    """The reference of exercise 9: the relative output error of static W8A8 after smoothing, per alpha."""
    X, W = np.asarray(X, np.float32), np.asarray(W, np.float32)
    Y = X.astype(np.float64) @ W.astype(np.float64).T                        # [tokens, out]
    out = []
    for alpha in alphas:
        s = smooth_scales(np.abs(X).max(axis=0), [W], alpha)                # [in]
        Xs, Ws = X / s, W * s                                               # the product is unchanged
        X_hat = Int8Activations("static", s=np.abs(Xs).max() / np.float32(127)).fake_quantize(Xs)
        W_hat = quantize_groups(Ws, bits=8, group_size=-1, symmetric=True, scale_dtype="float32").dequantize()
        Y_hat = X_hat.astype(np.float64) @ W_hat.astype(np.float64).T
        out.append(np.linalg.norm(Y_hat - Y) / np.linalg.norm(Y))
    return np.array(out)


def _layer_with_outliers(args):
    seed, tokens, n_in, out, n_alphas = args
    r = np.random.default_rng(seed)
    X = r.standard_normal((tokens, n_in)) * np.exp(r.uniform(-1, 1, n_in))  # channels of different sizes
    hot = r.choice(n_in, max(1, n_in // 16), replace=False)
    X[:, hot] *= r.uniform(10, 300, len(hot))                               # a few outlier channels
    W = r.standard_normal((out, n_in)) / np.sqrt(n_in)
    alphas = np.round(np.linspace(0, 1, n_alphas), 6)
    return X.astype(np.float32), W.astype(np.float32), alphas


def exercise_9(fn) -> bool:
    """The SmoothQuant alpha sweep on one layer: ``fn(X, W, alphas) -> err`` float64 ``[len(alphas)]``.

    For each ``alpha``: ``s`` = exercise 8's scale of ``act_absmax = max_t |X_tj|`` and ``W``;
    ``X_s = X / s``, ``W_s = W * s`` (float32); ``X_hat = s_x * clip(round(X_s / s_x), -128, 127)`` with
    *one* scale ``s_x = max|X_s| / 127``; ``W_hat`` = ``W_s`` quantized per output row, symmetric int8
    (``s_w = max_j |W_s[i, j]| / 127``, ``clip(round(.), -128, 127)``); the error is
    ``||X_hat W_hat^T - X W^T||_F / ||X W^T||_F`` in float64. Checked to a relative 1e-3 against a
    reference built on ``smooth_scales``, which is off limits.
    """
    st = _st()
    cases = st.tuples(st.integers(0, 2**32 - 1), st.integers(4, 48), st.integers(2, 32), st.integers(1, 12),
                      st.integers(1, 6)).map(_layer_with_outliers)
    return check(fn, alpha_sweep, cases, rtol=1e-3, n=25, forbid=(smooth_scales,))


def _st():
    from hypothesis import strategies as st

    return st
