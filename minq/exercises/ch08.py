"""Chapter 08's build exercises (notebooks/08_kquants.ipynb): ggml's block bytes by hand.

Exercises 1-8 (recall, derive) have their answers in notebooks/solutions/08_kquants.md.
"""

from __future__ import annotations

import numpy as np

from minq import kquants_iq, kquants_k
from minq.kquants import dequantize, quantize
from minq.testing import check, library_functions

__all__ = ["exercise_9", "exercise_10", "exercise_11", "exercise_12"]


# the one-call answers: minq's entry points, their NumPy references and the block functions or kernels behind
# them (GGMLWeight.quantize / .dequantize call the entry points by name, so they are refused too)
_DEQUANTIZERS = library_functions("minq.kquants.dequantize", "minq.kquants.dequantize_reference",
                           "minq.kquants_legacy.dequantize_blocks", "minq.kquants_kernels.dequantize_kernel")
_SCALE_PACKERS = (kquants_k._pack_scale_min_k4,)
_QUANTIZERS = library_functions("minq.kquants.quantize", "minq.kquants.quantize_reference",
                         "minq.kquants_legacy.quantize_blocks", "minq.kquants_legacy._quantize_q45",
                         "minq.kquants_kernels_legacy.quantize_legacy_kernel")


def _float_blocks(seed: int, nb: int, n: int = 32) -> np.ndarray:
    """``[nb, n]`` float32 blocks of very different magnitudes, some with an outlier, a zero block, ties."""
    r = np.random.default_rng(seed)
    x = r.standard_normal((nb, n)) * np.exp(r.uniform(-6, 6, (nb, 1)))
    x[r.integers(0, nb), r.integers(0, n)] *= 20                            # one outlier
    if seed % 4 == 0:
        x[0] = 0                                                            # an all-zero block
    if seed % 4 == 1:
        x[-1] = r.integers(-16, 16, n) * 0.25                               # on a grid: ties of x / d + 0.5
        x[-1, 0] = -4.0
    return x.astype(np.float32)


def _q4_0_case(args):
    seed, nb = args
    r = np.random.default_rng(seed)
    data = quantize(_float_blocks(seed, nb), "Q4_0").reshape(nb, 18).copy()
    if seed % 2:                                                           # every nibble value, any byte
        data[:, 2:] = r.integers(0, 256, (nb, 16), dtype=np.uint8)
    return data


def q4_0_values(data):
    """The reference of exercise 9: ``minq.kquants.dequantize(data, "Q4_0", (nb, 32))``."""
    return dequantize(np.ascontiguousarray(data), "Q4_0", (len(data), 32))


def exercise_9(fn) -> bool:
    """Q4_0 bytes -> values: ``fn(data) -> x_hat`` float32 ``[nb, 32]`` for ``data`` uint8 ``[nb, 18]``.

    Each row is one block: bytes 0-1 the float16 scale ``d`` (little-endian), bytes 2-17 the codes
    ``qs[j] = q_j | q_{j+16} << 4`` (element ``j`` in the low nibble, element ``j + 16`` in the high
    one). ``x_hat = d * (q - 8)`` in float32. Checked bit for bit against
    ``minq.kquants.dequantize(data, "Q4_0", (nb, 32))``; minq's dequantizers are off limits.
    """
    st = _st()
    cases = st.tuples(st.integers(0, 2**32 - 1), st.integers(1, 12)).map(_q4_0_case)
    return check(fn, q4_0_values, cases, n=40, forbid=_DEQUANTIZERS)


def _scale_codes(args):
    seed, nb = args
    r = np.random.default_rng(seed)
    if seed % 2:                                                           # any 6-bit codes
        return (r.integers(0, 64, (nb, 8)).astype(np.uint8), r.integers(0, 64, (nb, 8)).astype(np.uint8))
    x = _float_blocks(seed, nb, 256)                                        # or the codes of real Q4_K blocks
    return kquants_k._unpack_scale_min_k4(quantize(x, "Q4_K").reshape(nb, 144)[:, 4:16])


def q4_k_scale_bytes(sc, m):
    """The reference of exercise 10: ``minq.kquants_k._pack_scale_min_k4``."""
    return kquants_k._pack_scale_min_k4(sc, m)


def exercise_10(fn) -> bool:
    """Q4_K's scales and mins -> their 12 bytes: ``fn(sc, m) -> s`` uint8 ``[nb, 12]``.

    ``sc`` and ``m`` are uint8 ``[nb, 8]`` in 0..63 (the 6-bit scale and min of each sub-block of 32).
    Sub-blocks ``j < 4``: ``sc_j`` in the low 6 bits of byte ``j``, ``m_j`` in the low 6 bits of byte
    ``j + 4``. Sub-blocks ``j >= 4``: the low 4 bits of ``sc_j`` in the low nibble of byte ``j + 4``,
    the low 4 bits of ``m_j`` in its high nibble; the high 2 bits of ``sc_j`` in the top 2 bits of
    byte ``j - 4``, those of ``m_j`` in the top 2 bits of byte ``j``. Checked against
    ``minq.kquants_k._pack_scale_min_k4``, which is off limits.
    """
    st = _st()
    cases = st.tuples(st.integers(0, 2**32 - 1), st.integers(1, 12)).map(_scale_codes)
    return check(fn, q4_k_scale_bytes, cases, n=40, forbid=_SCALE_PACKERS)


def q5_0_bytes(x):
    """The reference of exercise 11: ``minq.kquants.quantize(x, "Q5_0")`` as ``[nb, 22]``."""
    return quantize(x, "Q5_0").reshape(len(x), 22)


def exercise_11(fn) -> bool:
    """Q5_0 by hand: ``fn(x) -> data`` uint8 ``[nb, 22]`` for ``x`` float32 ``[nb, 32]`` (one block a row).

    ``max`` = the block's value of largest ``|x|`` (the first one on ties, sign kept), ``d = max / -16``
    in float32, ``inv = 1 / d`` (0 when ``d == 0``), ``q = min(31, trunc(x * inv + 16.5))`` in float32
    (multiply by ``inv``, as ggml does: ``x / d`` can differ in the last bit, which moves a value that
    sits next to a rounding boundary). Bytes: the float16 ``d``
    (little-endian), then ``qh``, a little-endian uint32 whose bit ``i`` is bit 4 of ``q_i``, then
    16 bytes ``qs[j] = (q_j & 15) | (q_{j+16} & 15) << 4``. Checked bit for bit against
    ``minq.kquants.quantize(x, "Q5_0")``; minq's quantizers are off limits.
    """
    st = _st()
    cases = st.tuples(st.integers(0, 2**32 - 1), st.integers(1, 12)).map(lambda a: _float_blocks(*a))
    return check(fn, q5_0_bytes, cases, n=40, forbid=_QUANTIZERS)


def _table_values(args):
    """float32 values around IQ4_NL's table: uniform, exact entries, exact midpoints, beyond both ends."""
    seed, n = args
    r = np.random.default_rng(seed)
    T = kquants_iq.CODEBOOK.astype(np.float32)
    v = r.uniform(-140, 130, n).astype(np.float32)
    k = r.integers(0, 15, n)
    v[::3] = ((T[k] + T[k + 1]) / 2)[::3]                                   # ties: the upper entry wins
    v[1::5] = T[r.integers(0, 16, n)][1::5]                                 # on an entry
    return v


def iq4_nl_index(v):
    """The reference of exercise 12: ``minq.kquants_iq.best_index(v)``."""
    return kquants_iq.best_index(v)


def exercise_12(fn) -> bool:
    """IQ4_NL's nearest table entry: ``fn(v) -> idx`` uint8 ``[n]`` for float32 values ``v [n]``.

    The table ``T = minq.kquants_iq.CODEBOOK`` holds 16 increasing integers, -127 ... 113. Return for each
    value the index of the nearest entry: 0 for ``v <= T[0]``, 15 for ``v >= T[15]``; otherwise, with
    ``T[i] <= v < T[i + 1]``, ``i`` only when ``v - T[i] < T[i + 1] - v`` in float32, else ``i + 1`` (a
    value exactly halfway goes up), as ggml's ``best_index_int8``. Checked against
    ``minq.kquants_iq.best_index``, which is off limits.
    """
    st = _st()
    cases = st.tuples(st.integers(0, 2**32 - 1), st.integers(1, 64)).map(_table_values)
    return check(fn, iq4_nl_index, cases, n=40, forbid=(kquants_iq.best_index,))


def _st():
    from hypothesis import strategies as st

    return st
