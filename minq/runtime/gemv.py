"""Fused dequantize-GEMV for chapter 03's grouped int4 weights: ``y = W_hat x`` read from the packed codes.

Decoding one token multiplies every weight matrix by one vector, so its time is the time to read the
weights. A float32 ``W`` is 4 bytes a weight; chapter 03's 4-bit container (``GroupedAffine``, codes
packed two a byte, a float16 scale and a 4-bit zero point per group of ``g``) is ``0.5 + 2.5 / g``. This
kernel reads those bytes and never builds ``W_hat``:

    y_r = sum_groups [ s_rg * sum_{j in g} q_rj x_j  +  m_rg * sum_{j in g} x_j ],     m_rg = -s_rg z_rg

``sum_{j in g} x_j`` is computed once per call (it does not depend on the row), and ``x`` is split into
its even and odd entries (``xe``, ``xo``: the low and high nibble of byte ``i`` multiply ``x[2i]`` and
``x[2i + 1]``), so every load is unit-stride. The inner loop runs over blocks of ``BLOCK`` = 64 codes
(32 bytes), a trip count fixed when the kernel compiles: LLVM then unrolls and vectorises it. (With the
group width as a run-time number, a loop of 32 iterations is too short for the vectoriser's main loop and
the kernel ran 5x slower.) Groups are therefore a multiple of 64 inputs (64, 128, a whole row of 576).
The sums are reassociated (``fastmath``), so their rounding differs from ``W_hat @ x``'s:
``gemv_reference`` is that product, and tests/runtime/test_gemv.py bounds the difference by
``2 (BLOCK + n / BLOCK) eps32 sum_j |s (q_j - z)| |x_j| + |z s| |sum_g x|`` terms, the error of float32
dot products of these lengths. ``Int4Gemv(w)`` converts the scales to float32 and ``m`` once, when a model
is built: 8 bytes a group, next to the ``g / 2`` code bytes.

Rows run as one slice per thread of the runtime (``minq.runtime.parallel._row_slices``). This is the first kernel of the
quantized runtime (grouped int4; the other formats follow); chapter 11's ternary kernel
(``minq.ternary_kernels``) is its 2-bit sibling, and benchmarks/bench_ternary.py races the two against
float32 BLAS.
"""

from __future__ import annotations

import numpy as np

from minq._checks import check_float_array
from minq._jit import njit
from minq.groups import GroupedAffine

__all__ = ["Int4Gemv", "gemv_reference", "split_input"]

BLOCK = 64                      # codes per inner loop: 32 bytes, a compile-time trip count
_HALF = BLOCK // 2


@njit(fastmath=True)
def _rows_int4(P, s, m, xe, xo, xs, per_group, y):
    """``y[r] = sum_G s[r, G] (sum_j q_rj x_j) + m[r, G] xs[G]`` for the rows of ``P [R, in / 2]`` (uint8,
    code ``2i`` in the low nibble of byte ``i``), ``s, m [R, G]`` float32, ``xe = x[0::2]``, ``xo = x[1::2]``,
    ``xs [G]``; each group is ``per_group`` blocks of ``BLOCK`` codes. ``lanes``: 32 running sums, one per
    byte position of a block, scaled group by group and added up once per row (no reduction per group)."""
    R, G = s.shape
    lanes = np.zeros(_HALF, np.float32)
    for r in range(R):
        p, sr, mr = P[r], s[r], m[r]
        lanes[:] = 0
        zero_points = np.float32(0)
        for gi in range(G):
            sg = sr[gi]
            for blk in range(gi * per_group, (gi + 1) * per_group):        # slices: LLVM then sees a
                j = blk * _HALF                                                # loop of exactly 32 steps
                pb, eb, ob = p[j: j + _HALF], xe[j: j + _HALF], xo[j: j + _HALF]
                for k in range(_HALF):
                    b = np.uint32(pb[k])
                    lanes[k] += sg * (np.float32(b & np.uint32(15)) * eb[k] + np.float32(b >> np.uint32(4)) * ob[k])
            zero_points += mr[gi] * xs[gi]
        y[r] = lanes.sum() + zero_points


class Int4Gemv:
    """``Int4Gemv(w)(x) -> y [out]``: the product of a 4-bit ``GroupedAffine`` ``w [out, in]`` (integer or
    symmetric zero points, groups of a multiple of 64 inputs, not ragged) with ``x float32 [in]``.

    ValueError for another container (bits, float zero points, ragged or odd groups, torch storage) or
    a wrong ``x``; equal to ``gemv_reference`` within the module's bound."""

    def __init__(self, w: GroupedAffine):
        if not isinstance(w, GroupedAffine):
            raise TypeError(f"w must be a GroupedAffine, got {type(w).__name__}")
        if w.bits != 4 or w.zero_point != "int" or w.ragged_group_size is not None or not isinstance(w.packed, np.ndarray):
            raise ValueError("Int4Gemv needs a NumPy 4-bit GroupedAffine with integer (or symmetric) zero points, "
                             f"not ragged; got bits={w.bits}, zero_point={w.zero_point!r}")
        if w.g % BLOCK:
            raise ValueError(f"Int4Gemv needs groups of a multiple of {BLOCK} inputs, got g={w.g}")
        qp = w.qparams()
        out, n_in = w.shape
        G = n_in // w.g
        self.s = np.ascontiguousarray(np.broadcast_to(qp.s[..., 0], (out, G)), np.float32)    # [out, G]
        self.m = -self.s * np.broadcast_to(qp.z[..., 0], (out, G)).astype(np.float32)         # [out, G]
        self.P, self.g, self.shape = np.ascontiguousarray(w.packed), w.g, w.shape

    @property
    def nbytes(self) -> int:
        """Bytes one product reads: the codes, and s and m as float32."""
        return int(self.P.nbytes + self.s.nbytes + self.m.nbytes)

    def __call__(self, x) -> np.ndarray:
        check_float_array(x, "x", ndim=1)
        if x.shape[0] != self.shape[1] or not isinstance(x, np.ndarray):
            raise ValueError(f"x must be a NumPy vector of {self.shape[1]} inputs, got shape {tuple(x.shape)}")
        return self.product(split_input(np.ascontiguousarray(x, np.float32), self.g))

    def product(self, parts) -> np.ndarray:
        """``y [out]`` from ``split_input(x, self.g)`` (unchecked: the packed model's path, which splits
        each input once for all the linears that read it)."""
        from minq.runtime.parallel import _parallel_for, _row_slices

        xe, xo, xs = parts
        y = np.empty(self.shape[0], np.float32)
        per_group, work = self.g // BLOCK, self.P.size * 2
        _parallel_for(lambda r: _rows_int4(self.P[r], self.s[r], self.m[r], xe, xo, xs, per_group, y[r]),
                      _row_slices(self.shape[0], work), work=work)
        return y


def split_input(x, g: int) -> tuple:
    """``(xe, xo, xs)`` of a float32 vector ``x [in]``: its even and odd entries and its sums over groups
    of ``g`` inputs, what ``Int4Gemv`` reads."""
    return (np.ascontiguousarray(x[0::2]), np.ascontiguousarray(x[1::2]),
            x.reshape(-1, g).sum(axis=1, dtype=np.float32))


def gemv_reference(w, x) -> np.ndarray:
    """``w.dequantize() @ x``: what every fused kernel is measured against."""
    return w.dequantize() @ np.asarray(x, np.float32)
