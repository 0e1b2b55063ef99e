"""Chapter 10's build exercises (notebooks/10_fp8_and_block_formats.ipynb): scales of the float formats by hand.

Exercises 1-6 (recall, derive) have their answers in notebooks/solutions/10_fp8_and_block_formats.md.
"""

from __future__ import annotations

import numpy as np

from minq import fp8, mx, nf4
from minq.testing import check, library_functions

__all__ = ["exercise_7", "exercise_8", "exercise_9"]


# the one-call answers: the entry points and what is behind them
_FP8 = library_functions("minq.fp8.quantize", "minq.fp8.dequantize", "minq.fp8.amax_of",
                  "minq.fp8_model.FP8Weight.quantize", "minq.fp8_model.FP8Activations.quantize")
_MX = library_functions("minq.mx.quantize", "minq.mx._scale_code", "minq.mx.clip_fraction")
_NF4 = library_functions("minq.nf4.quantize", "minq.nf4.quantize_reference", "minq.nf4._quantize", "minq.nf4._nearest",
                  "minq.nf4.NF4Weight.quantize", "minq.nf4_kernels.quantize_kernel")


def _rows(args):
    """float32 ``[rows, cols]``: rows of very different magnitudes, an all-zero row, exact powers of two."""
    seed, rows, cols = args
    r = np.random.default_rng(seed)
    x = r.standard_normal((rows, cols)) * np.exp(r.uniform(-8, 8, (rows, 1)))
    if seed % 3 == 0:
        x[0] = 0
    if seed % 3 == 1:
        x[-1] = 2.0 ** r.integers(-10, 10, cols) * r.choice([-1, 1], cols)
    return x.astype(np.float32)


def fp8_rows(x):
    """The reference of exercise 7: ``minq.fp8.quantize(x, "e4m3", "row").dequantize()``."""
    return fp8.quantize(x, "e4m3", "row").dequantize()


def exercise_7(fn) -> bool:
    """Per-row scaled E4M3: ``fn(x) -> x_hat`` float32, same shape, for ``x`` float32 ``[rows, cols]``.

    Per row: ``amax = max |x|`` (at least ``1e-12``), ``s = amax / 448`` in float32, the codes
    ``q = e4m3(x / s)`` rounded to nearest even and saturating (chapter 01's
    ``FORMATS["float8_e4m3fn"].encode(..., saturate=True)`` may do the cast), ``x_hat = decode(q) * s``.
    Checked bit for bit against ``minq.fp8.quantize(x, "e4m3", "row")``, which is off limits.
    """
    st = _st()
    cases = st.tuples(st.integers(0, 2**32 - 1), st.integers(1, 6), st.integers(1, 80)).map(_rows)
    return check(fn, fp8_rows, cases, n=40, forbid=_FP8)


def _mx_blocks(args):
    seed, nb = args
    x = _rows((seed, nb, 32))
    if seed % 4 == 2:                                       # maxima with mantissas around 1.5 and 1.75
        x[:, 0] = np.float32(1.5 + 0.25 * (seed % 8 > 3)) * 2.0 ** np.arange(nb, dtype=np.float32)
    return x.reshape(-1)


def mxfp4_scale_codes(x):
    """The reference of exercise 8: the E8M0 codes of ``minq.mx.quantize(x, "mxfp4")``."""
    return mx.quantize(x, "mxfp4").scales


def exercise_8(fn) -> bool:
    """MXFP4's shared scales: ``fn(x) -> codes`` uint8 ``[n / 32]`` for ``x`` float32 ``[n]`` (n a multiple of 32).

    Per block of 32: ``amax = max |x|``; with ``e`` the unbiased exponent of amax (``floor(log2 amax)``,
    read from the float32 bits, not from a logarithm), the code is ``clip(e - 2 + 127, 0, 254)`` (2 is
    ``emax`` of E2M1, whose largest value is 6 = 1.5 x 2^2). A block of zeros, or of values so small
    that the code would be negative, gets code 0. Checked against the scales of
    ``minq.mx.quantize(x, "mxfp4")``, which is off limits.
    """
    st = _st()
    cases = st.tuples(st.integers(0, 2**32 - 1), st.integers(1, 8)).map(_mx_blocks)
    return check(fn, mxfp4_scale_codes, cases, n=40, forbid=_MX)


def nf4_bytes(x):
    """The reference of exercise 9: the packed bytes of ``minq.nf4.quantize(x, 64)``."""
    return nf4.quantize(x, 64)[0]


def _nf4_cases(args):
    seed, nb = args
    r = np.random.default_rng(seed)
    x = _rows((seed, nb, 64))
    if seed % 4 == 3:                                       # values on midpoints: the lower code wins
        mid = nf4.MIDPOINTS[r.integers(0, 15, (nb, 64))]
        x = (mid * np.float32(2)).astype(np.float32)
        x[:, 0] = 2
    return x.reshape(-1)


def exercise_9(fn) -> bool:
    """NF4 with absmax blocks of 64: ``fn(x) -> packed`` uint8 ``[n / 2]`` for ``x`` float32 ``[n]``, n a multiple of 64.

    Per block: ``absmax = max |x|`` (float32), ``v = x * r`` with ``r = 1 / max(absmax, 1e-38)`` computed
    in float32 (bitsandbytes multiplies by the reciprocal; ``x / absmax`` can differ in the last bit,
    which moves a value next to a midpoint), clipped to [-1, 1]; the code is the index of the nearest value of ``minq.nf4.CODEBOOK`` — compare ``v``
    with the 15 ``minq.nf4.MIDPOINTS``: the code is how many midpoints lie strictly below ``v`` (a tie
    goes to the lower code). ``packed``: element ``2i`` in the HIGH nibble, ``2i + 1`` in the low one.
    Checked against the bytes of ``minq.nf4.quantize(x, 64)`` (off limits, with its reference and kernel).
    """
    st = _st()
    cases = st.tuples(st.integers(0, 2**32 - 1), st.integers(1, 6)).map(_nf4_cases)
    return check(fn, nf4_bytes, cases, n=40, forbid=_NF4)


def _st():
    from minq.testing import _st as st

    return st()
