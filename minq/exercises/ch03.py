"""Chapter 03's build exercises (notebooks/03_group_quantization.ipynb): groups and bit packing by hand.

Exercises 1-5 (recall, derive) have their answers in notebooks/solutions/03_group_quantization.md.
"""

from __future__ import annotations

import numpy as np

from minq.affine import choose_qparams, dequantize, fake_quantize, quantize
from minq.groups import GroupedAffine, dequantize_reference, quantize_groups, quantize_ragged
from minq.packing import pack, pack_reference, unpack, unpack_reference
from minq.testing import check

__all__ = ["exercise_6", "exercise_7", "exercise_8"]

_PACKERS = (pack, pack_reference)
_UNPACKERS = (unpack, unpack_reference)
# the one-call answers to exercise 7: minq's grouped quantizer, and chapter 02's affine functions
_QUANTIZERS = (quantize_groups, quantize_ragged, GroupedAffine.dequantize, dequantize_reference,
               choose_qparams, quantize, dequantize, fake_quantize)


def pack4(q):
    """The reference of exercise 6: ``minq.packing.pack(q, 4)``."""
    return pack(q, 4)


def exercise_6(fn) -> bool:
    """4-bit packing: ``fn(q) -> bytes`` for a row ``q`` of an even number of 4-bit codes (uint8).

    Code ``2i`` goes to the low nibble of byte ``i``, code ``2i + 1`` to the high nibble. Checked
    against ``minq.packing.pack(q, 4)``; minq's packers are off limits.
    """
    st, hnp = _st()
    rows = st.integers(1, 32).flatmap(lambda n: hnp.arrays(np.uint8, 2 * n, elements=st.integers(0, 15)))
    return check(fn, pack4, rows, n=40, forbid=_PACKERS)


def group_symmetric(W, bits, g):
    """The reference of exercise 7: symmetric groups of ``g`` with float32 scales, dequantized."""
    return quantize_groups(W, bits=bits, group_size=g, symmetric=True, scale_dtype="float32").dequantize()


def _random_weights(args):
    seed, out, n_groups, g, bits = args
    r = np.random.default_rng(seed)
    W = r.standard_normal((out, n_groups * g)) * np.exp(r.uniform(-3, 3, (out, 1)))
    W[r.integers(0, out), r.integers(0, n_groups * g)] *= 30               # one outlier
    if n_groups > 1 and seed % 5 == 0:
        W[:, :g] = 0                                                      # an all-zero group
    return W.astype(np.float32), bits, g


def exercise_7(fn) -> bool:
    """Group-wise symmetric quantize-dequantize: ``fn(W, bits, g) -> W_hat`` (float32 ``[out, in]``).

    For each group of ``g`` consecutive weights of a row (``g`` divides ``in``):
    ``s = max|w| / (2^(bits-1) - 1)`` (``s = 1`` for an all-zero group),
    ``q = clip(round(w / s) + 2^(bits-1), 0, 2^bits - 1)``, ``w_hat = s * (q - 2^(bits-1))``, all in
    float32, rounding half to even. Checked bit for bit against
    ``quantize_groups(W, bits=bits, group_size=g, symmetric=True, scale_dtype="float32").dequantize()``;
    minq's quantizers (chapter 02's and this chapter's) are off limits, ``group`` / ``ungroup`` are not.
    """
    st, _ = _st()
    cases = st.tuples(st.integers(0, 2**32 - 1), st.integers(1, 8), st.integers(1, 4),
                      st.sampled_from([1, 2, 4, 8, 16, 32]), st.integers(2, 8)).map(_random_weights)
    return check(fn, group_symmetric, cases, n=40, forbid=_QUANTIZERS)


def _packed_rows(args):
    seed, n, bits = args
    q = np.random.default_rng(seed).integers(0, 2**bits, n).astype(np.uint8)
    return pack(q, bits), bits, n


def unpack_row(packed, bits, n):
    """The reference of exercise 8: ``minq.packing.unpack``."""
    return unpack(packed, bits, n)


def exercise_8(fn) -> bool:
    """Unpacking any bit width: ``fn(packed, bits, n) -> q`` (uint8 ``[n]``), ``bits`` in 1..8.

    ``packed`` is one row written by ``minq.packing.pack``: a little-endian bit stream where code ``i``
    occupies stream bits ``[i * bits, (i + 1) * bits)``, least significant bit first, padded with zero
    codes to whole bytes; return the first ``n`` codes. Checked against ``minq.packing.unpack``;
    minq's unpackers are off limits.
    """
    st, _ = _st()
    rows = st.tuples(st.integers(0, 2**32 - 1), st.integers(1, 70), st.integers(1, 8)).map(_packed_rows)
    return check(fn, unpack_row, rows, n=40, forbid=_UNPACKERS)


def _st():
    from hypothesis import strategies as st
    from hypothesis.extra import numpy as hnp

    return st, hnp
