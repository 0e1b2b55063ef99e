"""Chapter 14's build exercises (notebooks/14_quantized_runtime.ipynb): the llama.cpp input rounding and a
4-bit matrix-vector product read from the packed bytes, by hand.

Exercises 1-5 (recall, derive) have their answers in notebooks/solutions/14_quantized_runtime.md.
"""

from __future__ import annotations

import numpy as np

from minq.runtime import gemv_q8
from minq.testing import check, library_functions

__all__ = ["exercise_6", "exercise_7"]

_ROUND = library_functions("minq.runtime.gemv_q8.quantize_input", "minq.runtime.gemv_q8.dequantize_input",
                           "minq.runtime.gemv_q8._quantize_input_kernel", "minq.runtime.gemv_q8.Int4GemvQ8.split",
                           "minq.runtime.gemv_ggml.quantize_activations")
_GEMV = library_functions("minq.runtime.gemv_q8.unpack_halves", "minq.runtime.gemv_q8._dequant_rows_halves",
                          "minq.runtime.gemv_q8.Int4GemvQ8.rows", "minq.runtime.gemv_q8.Int4GemvQ8.product",
                          "minq.runtime.gemv_q8._rows_int4_q8", "minq.packing.unpack")


# --- exercise 6: an input rounded to 8-bit blocks -------------------------------------------------------


def _input_case(args):
    """float32 ``[64 k]``, k = 1..6, magnitudes 1e-3 .. 1e3, exact halves and an all-zero block now and then."""
    seed, k = args
    r = np.random.default_rng(seed)
    x = (r.standard_normal(64 * k) * 10.0 ** r.uniform(-3, 3)).astype(np.float32)
    if seed % 3 == 1:                                          # values on the grid's halves: ties
        x[:64] = np.float32(0.5) * r.integers(-254, 255, 64)
        x[0] = 127.0
    if seed % 4 == 2:
        x[-64:] = 0.0
    return (x,)


def round_input(x):
    """The reference of exercise 6: ``x_hat`` of ``minq.runtime.gemv_q8.quantize_input``."""
    return gemv_q8.dequantize_input(*gemv_q8.quantize_input(x))


def exercise_6(fn) -> bool:
    """The llama.cpp input: ``fn(x) -> x_hat`` float32 ``[n]`` for ``x`` float32 ``[n]``, ``n`` a multiple of 64.

    Per block of 64 inputs: ``dx = max |x| / 127`` (float32), ``x8 = round(x / dx)`` half to even (codes 0 and
    ``dx = 0`` for an all-zero block), and ``x_hat = dx * x8`` in float32. Checked within 1e-6 relative
    against ``minq.runtime.gemv_q8.quantize_input`` (off limits, with the kernels behind it): a tie rounded
    the other way is a whole step off.
    """
    st = _st()
    cases = st.tuples(st.integers(0, 2**32 - 1), st.integers(1, 6)).map(_input_case)
    return check(fn, round_input, cases, n=40, rtol=1e-6, forbid=_ROUND)


# --- exercise 7: the 4-bit product from the packed bytes ------------------------------------------------


def _gemv_case(args):
    """``(P uint8 [out, in / 2], s, m float32 [out, in / 64], x float32 [in])``: random codes in the halves
    order, scales and offsets of an LLM's size, groups of 64."""
    seed, out, k = args
    r = np.random.default_rng(seed)
    P = r.integers(0, 256, (out, 32 * k)).astype(np.uint8)
    s = (r.uniform(0.001, 0.01, (out, k))).astype(np.float32)
    m = (-8 * s * r.uniform(0.5, 1.5, (out, k))).astype(np.float32)
    x = r.standard_normal(64 * k).astype(np.float32)
    return P, s, m, x


def gemv(P, s, m, x):
    """The reference of exercise 7: the rows dequantized by minq's kernel, times ``x`` in float64."""
    W = np.empty((P.shape[0], 2 * P.shape[1]), np.float32)
    gemv_q8._dequant_rows_halves(P, s, m, 64, W)
    return W.astype(np.float64) @ np.asarray(x, np.float64)


def exercise_7(fn) -> bool:
    """A fused 4-bit GEMV: ``fn(P, s, m, x) -> y`` ``[out]`` for ``P`` uint8 ``[out, in / 2]`` in the halves order
    of ``minq.runtime.gemv_q8`` (block ``b`` of 64 codes is bytes ``32 b .. 32 b + 31``; byte ``k`` holds code
    ``64 b + k`` in its low nibble and code ``64 b + 32 + k`` in its high one), ``s, m`` float32 ``[out, in / 64]``
    (one scale and offset a group of 64: ``w = s q + m``) and ``x`` float32 ``[in]``.

    Compute ``y_r = sum_G s_rG (sum_{j in G} q_rj x_j) + m_rG (sum_{j in G} x_j)`` without building the float
    matrix (the sums of ``x`` once, not once per row). Checked within 1e-4 relative (plus 1e-5) against the
    dequantized rows times ``x``; minq's unpacking and kernels are off limits.
    """
    st = _st()
    cases = st.tuples(st.integers(0, 2**32 - 1), st.integers(1, 12), st.integers(1, 6)).map(_gemv_case)
    return check(fn, gemv, cases, n=40, rtol=1e-4, atol=1e-5, forbid=_GEMV)


def _st():
    from minq.testing import _st as st

    return st()
