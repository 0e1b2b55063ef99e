"""Chapter 02's build exercises (notebooks/02_scale_zero_point.ipynb): scale and zero point by hand.

Exercises 1-6 (recall, derive) have their answers in notebooks/solutions/02_scale_zero_point.md.
"""

from __future__ import annotations

import numpy as np

from minq.affine import choose_qparams, dequantize, fake_quantize, quantize
from minq.testing import bits, check, float_arrays

__all__ = ["exercise_7", "exercise_8", "exercise_9"]

# Tensors whose largest magnitude is below 1e-30 are left out: there s = max / (2^b - 1) would be a
# float32 subnormal, which minq raises to 2^-126 (a subnormal scale cannot hold the range accurately).
_TINY = 1e-30
_AFFINE = (choose_qparams, quantize, dequantize, fake_quantize)


def _rows_ok(W):
    amax = np.abs(W).max(axis=1)
    return not ((amax > 0) & (amax < _TINY)).any()


def per_row_symmetric(W, b):
    """The reference of exercise 7: ``fake_quantize`` with one symmetric (s, z) per row."""
    return fake_quantize(W, choose_qparams(W, bits=b, symmetric=True, axis=1))


def exercise_7(fn) -> bool:
    """Per-channel symmetric quantization: ``fn(W, b) -> W_hat``, ``W [out, in]`` float32, ``b`` in 2..8.

    One scale per row, ``s = max|row| / (2^(b-1) - 1)`` in float32 (``s = 1`` for an all-zero row),
    minq's unsigned codes ``q = round(W / s) + z`` with ``z = 2^(b-1)`` (rounding half to even; no
    clipping needed), ``W_hat = s * (q - z)`` in float32 (so ``-0`` comes back as ``+0``). Checked bit
    for bit against ``fake_quantize(W, choose_qparams(W, bits=b, symmetric=True, axis=1))``; the
    functions of ``minq.affine`` are off limits.
    """
    matrices = float_arrays(dims=(2, 2)).filter(_rows_ok)
    return check(fn, per_row_symmetric, _st().tuples(matrices, bits(2, 8)), n=40, forbid=_AFFINE)


def asymmetric_int_zero(x, b):
    """The reference of exercise 8: min-max asymmetric quantization with an integer zero point."""
    return fake_quantize(x, choose_qparams(x, bits=b))


def exercise_8(fn) -> bool:
    """Asymmetric quantization with an integer zero point: ``fn(x, b) -> x_hat``, any float32 array,
    ``b`` in 1..8.

    The range always contains 0: ``lo = min(min(x), 0)``, ``hi = max(max(x), 0)``;
    ``s = (hi - lo) / (2^b - 1)`` in float32 (``s = 1`` when ``hi == lo``), ``z = round(-lo / s)``
    clipped to ``[0, 2^b - 1]``, ``q = clip(round(x / s) + z, 0, 2^b - 1)``, ``x_hat = s * (q - z)``;
    rounding half to even. Checked bit for bit against
    ``fake_quantize(x, choose_qparams(x, bits=b))``; the functions of ``minq.affine`` are off limits.
    """
    arrays = float_arrays().filter(lambda a: not 0 < np.abs(a).max() < _TINY)
    return check(fn, asymmetric_int_zero, _st().tuples(arrays, bits(1, 8)), n=50, forbid=_AFFINE)


def clip_mse_curve(x, b, ratios):
    """The reference of exercise 9: the MSE of clipping at ``c * max|x|`` then rounding, for each ``c``."""
    x = np.asarray(x, np.float32)
    amax = np.abs(x).max()
    out = []
    for c in ratios:
        t = np.float32(c * amax)
        x_clipped = np.clip(x, -t, t)
        qp = choose_qparams(x_clipped, bits=b, symmetric=True)          # s = t / (2^(b-1) - 1)
        err = x.astype(np.float64) - fake_quantize(x_clipped, qp)
        out.append(np.mean(err**2))
    return np.array(out)


def _clip_inputs():
    st = _st()
    from hypothesis.extra import numpy as hnp

    x = hnp.arrays(np.float32, st.integers(2, 300),
                   elements=st.floats(-100, 100, width=32)).filter(lambda a: np.abs(a).max() > 1e-3)
    ratios = st.lists(st.floats(0.05, 1.0), min_size=1, max_size=8, unique=True).map(sorted).map(np.array)
    return st.tuples(x, bits(2, 8), ratios)


def exercise_9(fn) -> bool:
    """The clipping trade-off: ``fn(x, b, ratios) -> mse`` (float64, one value per ratio).

    For each clip ratio ``c``: ``t = np.float32(c * max|x|)``, clip ``x`` to ``[-t, t]``, quantize the
    clipped values symmetrically with ``s = t / (2^(b-1) - 1)`` (float32, round half to even) and
    return ``mean((x - x_hat)^2)`` against the *unclipped* ``x``, in float64. Checked to a relative
    1e-6 (the order of a float64 sum may differ). Use it to find the best ratio of Student-t data.
    """
    return check(fn, clip_mse_curve, _clip_inputs(), rtol=1e-6, n=30)


def _st():
    from hypothesis import strategies as st

    return st
