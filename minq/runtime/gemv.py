"""Fused dequantize-GEMV for chapter 03's grouped integer weights: ``y = W_hat x`` read from the packed codes.

Decoding one token multiplies every weight matrix by one vector, so its time is the time to read the
weights. A float32 ``W`` is 4 bytes a weight; chapter 03's container (``GroupedAffine``: b-bit codes
bit-packed along each row, one scale and zero point per group of ``g`` inputs) is ``b / 8 + 8 / g`` bytes
here (the kernel reads the scales as float32 ``s`` and ``m = -s z``). This kernel reads those bytes and
never builds ``W_hat``, for b = 8, 4, 3 and 2:

    y_r = sum_G [ s_rG * sum_{j in G} q_rj x_j  +  m_rG * sum_{j in G} x_j ],      m_rG = -s_rG z_rG

``sum_{j in G} x_j`` is computed once per call (it does not depend on the row). Each packed row is a run of
*units* (``minq.packing``: one little-endian bit stream, code ``i`` at bits ``[i b, (i + 1) b)``):

    8-bit  unit = 1 byte,  1 code      byte 0 = q0
    4-bit  unit = 1 byte,  2 codes     byte 0 = q1 q1 q1 q1 q0 q0 q0 q0
    2-bit  unit = 1 byte,  4 codes     byte 0 = q3 q3 q2 q2 q1 q1 q0 q0
    3-bit  unit = 3 bytes, 8 codes     byte 0 = q2 q2 q1 q1 q1 q0 q0 q0     (bit 7 ... bit 0)
                                       byte 1 = q5 q4 q4 q4 q3 q3 q3 q2
                                       byte 2 = q7 q7 q7 q6 q6 q6 q5 q5

and code ``k`` of unit ``u`` multiplies ``x[c u + k]`` (``c`` codes a unit). ``split_input`` stores ``x`` as
``X [c, in / c]``, ``X[k, u] = x[c u + k]``, so every load in the loop is unit-stride: ``p[u]``, ``X[k, u]``.
The codes are cut out with byte operations (``U8(b >> 4)``, ``U8((b0 >> 6) | ((b1 & 1) << 2))``): Numba
widens integer arithmetic to int64, and the truncation back to uint8 lets LLVM work on bytes and 32-bit
lanes (half the vector instructions of int64 lanes; the first int4 kernel ran on int64 lanes).

The inner loop runs over a *superblock* of ``SUPER`` = 4 blocks of ``BLOCK`` = 64 codes, a trip count fixed
when the kernel compiles: LLVM unrolls it and vectorises it (16 float32 lanes with AVX-512), with one
accumulator and one horizontal sum per 256 codes. The scale is picked per block inside the loop
(``s0 .. s3``; ``k // units`` is a constant once unrolled), each block's group coming from ``gidx``
(``gidx[b] = 64 b // g``), so groups may be any multiple of 64 inputs (64, 128, a whole row of 576); the
blocks left over (``in / 64`` mod 4) run one at a time. A 3-bit block is only 8 units, too few lanes for the
vectoriser alone (a lone block ran 12x slower), so 3 bits go by pairs of blocks, an odd last block paired
with the one before it, whose scale is then 0. Indices are written ``max(j, 0)``: Numba wraps negative
indices, and without a proof that ``j >= 0`` LLVM turned the loads into gathers (6x slower).

The sums are reassociated (``fastmath``), so their rounding differs from ``W_hat @ x``'s:
``gemv_reference`` is that product, and tests/runtime/test_gemv.py bounds the difference by
``(SUPER BLOCK + in / BLOCK + G + 8) eps32 sum_j (|s| q_j + |s z|) |x_j|``: float32 sums in any order of
a superblock, then of the superblocks and blocks of a row, then of its groups, with the product roundings
(measured: ~1/2500 of it; it is ~0.4% of a typical |y| of a 1536 x 576 layer, and a code with its top bit
flipped, or a block read with its neighbour's scale, falls outside it). ``GroupedGemv(w)`` converts the
scales to float32 and ``m`` once, when a model is built: 8 bytes a group (``nbytes``). ``dequant_rows``
gives the float32 rows of ``W_hat`` for a prefill (tiles, then BLAS).

Speed, one token (AMD EPYC Zen 4, AVX-512): 1 thread, weights in L3, 8, 4 and 2 bits 16-19 G weights/s, 3
bits 10-12 (the first int4 kernel: 8-9, on int64 lanes); from memory, 4096 x 4096 on 2 threads, 0.75 / 0.62
/ 0.35 / 0.42 of memcpy's bandwidth (read + write bytes) for 8 / 4 / 3 / 2 bits (first int4: 0.34). 3 and 2
bits are instruction-bound: more decode work per byte read.

The kernels are in ``minq.runtime.gemv_int``. Rows run as one slice per thread of the runtime
(``minq.runtime.parallel._row_slices``); the kernels are serial (no ``parallel=True`` inside that pool).
NF4 and FP8 weights: ``minq.runtime.gemv_lut``; chapter 11's ternary kernel (``minq.ternary_kernels``) is
the 2-bit sibling; benchmarks/bench_gemv.py races every kernel against float32 BLAS and memcpy.
"""

from __future__ import annotations

import numpy as np

from minq._checks import check_float_array
from minq.groups import GroupedAffine
from minq.runtime.gemv_int import BLOCK, ROWS, SUPER, dequant_rows

__all__ = ["GroupedGemv", "Int4Gemv", "gemv_reference", "split_input", "dequant_rows", "BITS", "BLOCK",
           "SUPER"]

WAYS = {8: 1, 4: 2, 3: 8, 2: 4}  # codes a unit: the rows of split_input's X
BITS = tuple(WAYS)
_ROWS = ROWS                    # the kernel of each width (minq.runtime.gemv_int)


def group_scales(w: GroupedAffine) -> tuple:
    """``(s, m)`` float32 ``[out, G]`` of a ``GroupedAffine``: each group's scale and offset ``m = -s z``, so that
    ``w_hat = s q + m`` (what every grouped kernel reads, converted once when a model is built)."""
    qp = w.qparams()
    out, n_in = w.shape
    G = n_in // w.g
    s = np.ascontiguousarray(np.broadcast_to(qp.s[..., 0], (out, G)), np.float32)
    return s, -s * np.broadcast_to(qp.z[..., 0], (out, G)).astype(np.float32)


class GroupedGemv:
    """``GroupedGemv(w)(x) -> y [out]``: the product of a ``GroupedAffine`` ``w [out, in]`` of 8, 4, 3 or 2
    bits (integer, symmetric or float zero points, groups of a multiple of 64 inputs or whole rows, not
    ragged, NumPy storage) with ``x float32 [in]``.

    ValueError for another container or a wrong ``x``; equal to ``gemv_reference`` within the module's
    bound. ``Int4Gemv`` is the same class (its first name, when it took 4 bits only)."""

    def __init__(self, w: GroupedAffine):
        if not isinstance(w, GroupedAffine):
            raise TypeError(f"w must be a GroupedAffine, got {type(w).__name__}")
        if w.bits not in WAYS or w.ragged_group_size is not None or not isinstance(w.packed, np.ndarray):
            raise ValueError(f"GroupedGemv needs a NumPy GroupedAffine of {BITS} bits, not ragged; got "
                             f"bits={w.bits}, ragged_group_size={w.ragged_group_size}, {type(w.packed).__name__}")
        if w.g % BLOCK:
            raise ValueError(f"GroupedGemv needs groups of a multiple of {BLOCK} inputs, got g={w.g}")
        n_in = w.shape[1]
        self.s, self.m = group_scales(w)                                                       # [out, G]
        self.gidx = (np.arange(n_in // BLOCK) * BLOCK // w.g).astype(np.int32)                # [in / 64]
        self.P, self.g, self.bits, self.shape = np.ascontiguousarray(w.packed), w.g, w.bits, w.shape

    @property
    def ways(self) -> int:
        """Codes a unit: the rows of ``split_input``'s ``X`` this kernel reads."""
        return WAYS[self.bits]

    @property
    def nbytes(self) -> int:
        """Bytes one product reads: the codes, s and m as float32, the block-to-group index."""
        return int(self.P.nbytes + self.s.nbytes + self.m.nbytes + self.gidx.nbytes)

    def __call__(self, x) -> np.ndarray:
        check_float_array(x, "x", ndim=1)
        if x.shape[0] != self.shape[1] or not isinstance(x, np.ndarray):
            raise ValueError(f"x must be a NumPy vector of {self.shape[1]} inputs, got shape {tuple(x.shape)}")
        return self.product(split_input(np.ascontiguousarray(x, np.float32), self.g, self.ways))

    def product(self, parts, rows=slice(None)) -> np.ndarray:
        """``y [len(rows)]`` (output rows ``rows`` of ``W_hat x``) from ``split_input(x, self.g, self.ways)``
        (unchecked: the packed model's path, which splits each input once for all the linears that read it)."""
        from minq.runtime.parallel import _parallel_for, _row_slices

        X, xs = parts
        a, b, _ = rows.indices(self.shape[0])
        P, s, m = self.P[a:b], self.s[a:b], self.m[a:b]
        y = np.empty(b - a, np.float32)
        kernel, work = _ROWS[self.bits], (b - a) * self.shape[1]
        _parallel_for(lambda r: kernel(P[r], s[r], m[r], self.gidx, X, xs, y[r]), _row_slices(b - a, work),
                      work=work)
        return y


Int4Gemv = GroupedGemv


def split_input(x, g: int, ways: int = 2) -> tuple:
    """``(X, xs)`` of a float32 vector ``x [in]``: ``X [ways, in / ways]`` with ``X[k, u] = x[ways u + k]``
    (the input of code ``k`` of unit ``u``) and ``xs [in / g]``, the sums over groups of ``g`` inputs."""
    return np.ascontiguousarray(x.reshape(-1, ways).T), x.reshape(-1, g).sum(axis=1, dtype=np.float32)


def gemv_reference(w, x) -> np.ndarray:
    """``w.dequantize() @ x``: what every fused kernel is measured against."""
    return w.dequantize() @ np.asarray(x, np.float32)
