"""Packed linears: a model's quantized weights kept as their codes and multiplied without a float32 copy.

A model built as usual dequantizes every weight once into float32 (``minq.models.llama_weights``): a 4-bit
model then reads as many bytes per token as the float one and decodes no faster. ``model.packed()``
keeps the weights that have a kernel here as they are stored and multiplies through it:

    weight                                  one token (decode)                 many tokens (prefill)
    GroupedAffine, 8/4/3/2-bit, groups of   GroupedGemv: fused dequantize-     row tiles dequantized into a
      64k inputs or whole rows              GEMV (minq.runtime.gemv)           small buffer, then BLAS
    NF4Weight (rows of whole blocks)        NF4Gemv: codebook in registers     the same
                                            (minq.runtime.gemv_lut)
    FP8Weight (E4M3 / E5M2)                 FP8Gemv: codes shifted into        the same
                                            float32 bits (minq.runtime.gemv_lut)
    TernaryWeight (chapter 11)              2-bit codes times float inputs     the same
                                            (minq.ternary_kernels.matvec_float)
    anything else                           float32, as before

``PackedGroup`` is one group of linears that read the same input (q/k/v, gate/up: ``GROUPS``): its
``matmul(X)`` returns their outputs side by side, as the dense path's one GEMM on row-stacked weights
does, and ``rows(a, b)`` the group restricted to output rows ``a:b`` (a hook gave one linear its own
input). Every product equals ``X @ W_hat^T`` of the dequantized weight within float32 rounding of its
sums (tests/runtime/test_packed.py), not bit for bit: the sums run in another order.

``DECODE_TOKENS``: up to this many rows of ``X`` go through the GEMV one token at a time; more are a
prefill. ``TILE``: rows of ``W_hat`` dequantized at a time (256 x 1536 float32 = 1.5 MB, within L2/L3).
"""

from __future__ import annotations

import numpy as np

from minq.groups import GroupedAffine
from minq.runtime.gemv import BITS, BLOCK, GroupedGemv, dequant_rows, split_input

__all__ = ["PackedGroup", "packed_linear", "ACTIVATIONS", "DECODE_TOKENS", "TILE"]

DECODE_TOKENS = 4
TILE = 256


def _prefill(X, r: range, tile):
    """``X [T, in] @ W_hat[r]^T -> [T, len(r)]`` with ``tile(lo, hi)`` giving the float32 rows ``lo:hi`` of
    ``W_hat``, ``TILE`` rows at a time: one BLAS product per tile, no full float32 matrix."""
    Y = np.empty((len(X), len(r)), np.float32)
    for a in range(0, len(r), TILE):
        lo, hi = r.start + a, min(r.start + a + TILE, r.stop)
        np.matmul(X, tile(lo, hi).T, out=Y[:, a:a + hi - lo])                  # [T, tile]
    return Y


class _GroupedLinear:
    """A ``GroupedAffine`` of 8, 4, 3 or 2 bits kept packed: GEMV per token for decode (``GroupedGemv``),
    dequantized tiles for prefill (``minq.runtime.gemv.dequant_rows``)."""

    def __init__(self, w: GroupedAffine):
        self.gemv = GroupedGemv(w)
        self.shape = w.shape

    @property
    def nbytes(self) -> int:
        return self.gemv.nbytes

    def matmul(self, X, rows=slice(None), parts=None):
        """``X [T, in] @ W_hat[rows]^T -> [T, len(rows)]`` float32; ``parts``: a dict the linears of one
        group share, so each token's input is split (``split_input``) once per group width and code layout."""
        k = self.gemv
        r = range(self.shape[0])[rows]
        if len(X) <= DECODE_TOKENS:
            parts = {} if parts is None else parts
            key = ("split_input", k.g, k.ways)                                  # shared by the group
            if key not in parts:
                parts[key] = [split_input(x, k.g, k.ways) for x in X]
            return np.stack([k.product(p, slice(r.start, r.stop)) for p in parts[key]])   # [T, rows]
        buf = np.empty((min(TILE, len(r)), self.shape[1]), np.float32)
        return _prefill(X, r, lambda lo, hi: self.rows(lo, hi, buf[:hi - lo]))

    def rows(self, lo: int, hi: int, out=None) -> np.ndarray:
        """The dequantized rows ``lo:hi`` of ``W_hat``, float32 ``[hi - lo, in]`` (into ``out`` if given)."""
        k = self.gemv
        out = np.empty((hi - lo, self.shape[1]), np.float32) if out is None else out
        dequant_rows(k.P[lo:hi], k.s[lo:hi], k.m[lo:hi], k.gidx, k.bits, out)
        return out


class _TernaryLinear:
    """A ``TernaryWeight`` kept packed (2 bits a weight): ``gamma * (X @ codes^T)`` from the 2-bit codes per
    token (``minq.ternary_kernels.matvec_float``: float inputs, the weights-only product), dequantized row
    tiles + BLAS for prefill. Under BitNet's int8 input hooks ``X`` is already ``x_hat``."""

    def __init__(self, w):
        self.w, self.shape = w, w.shape

    @property
    def nbytes(self) -> int:
        return self.w.nbytes

    def matmul(self, X, rows=slice(None), parts=None):
        from minq import ternary_kernels

        w = self.w
        r = range(self.shape[0])[rows]
        if len(X) <= DECODE_TOKENS:
            Y = ternary_kernels.matvec_float(w.packed[r.start:r.stop], X) * w.gamma     # [T, rows]
            return Y
        return _prefill(X, r, self.rows)

    def rows(self, lo: int, hi: int, out=None) -> np.ndarray:
        """The dequantized rows ``lo:hi``, float32 ``[hi - lo, in]``: ``gamma * (codes - 1)``."""
        from minq.packing import unpack

        W = (unpack(self.w.packed[lo:hi], 2, self.shape[1]).astype(np.float32) - 1) * self.w.gamma   # [rows, in]
        if out is None:
            return W
        out[...] = W
        return out


def _grouped_linear(w, bits=BITS, zero_points=("int", "float")):
    if (isinstance(w, GroupedAffine) and w.bits in bits and w.zero_point in zero_points
            and w.ragged_group_size is None and isinstance(w.packed, np.ndarray) and w.g % BLOCK == 0):
        return _GroupedLinear(w)
    return None


def _int4_linear(w):
    """4-bit groups with integer (or symmetric) zero points: what ``minq.runtime.gemv_q8`` takes too."""
    return _grouped_linear(w, (4,), ("int",))


def _nf4_linear(w):
    from minq.runtime.gemv_lut import nf4_linear

    return nf4_linear(w)


def _fp8_linear(w):
    from minq.runtime.gemv_lut import fp8_linear

    return fp8_linear(w)


def _ternary_linear(w):
    from minq.ternary import TernaryWeight

    return _TernaryLinear(w) if isinstance(w, TernaryWeight) else None


def _factories() -> list:
    """The packed kernels, each a function ``w -> packed linear or None`` (None: not its kind of weight).

    A packed linear has ``shape`` (``[out, in]``), ``nbytes`` (the bytes one product reads) and
    ``matmul(X [T, in], rows=slice(None), parts=None) -> [T, len(rows)]`` float32, ``parts`` being a dict
    the linears of one group share (each kernel caches there what it derives from ``X`` once per group),
    and ``rows(lo, hi, out=None) -> float32 [hi - lo, in]``, the dequantized rows ``lo:hi`` (prefill tiles,
    and the embedding lookups of a quantized tied head)."""
    from minq.runtime.gemv_ggml import ggml_linear

    return [_grouped_linear, _ternary_linear, ggml_linear, _nf4_linear, _fp8_linear]


def _int4_q8_linear(w):
    from minq.runtime.gemv_q8 import Int4GemvQ8

    return Int4GemvQ8(w) if _int4_linear(w) is not None else None


def _int8_input_factories() -> list:
    """Kernels that round each decoded token to 8 bits and multiply integers (``activations="int8"``):
    chapter 03's 4-bit groups (``minq.runtime.gemv_q8``), Q8_0 and Q4_0 blocks (``minq.runtime.gemv_ggml``)."""
    from minq.runtime.gemv_ggml import Q8_TYPES, ggml_linear

    def ggml_q8(w):
        return ggml_linear(w, "int8") if getattr(w, "qtype", None) in Q8_TYPES else None

    return [_int4_q8_linear, ggml_q8]


ACTIVATIONS = ("float", "int8")


def packed_linear(w, activations: str = "float"):
    """The packed kernel of weight object ``w``, or None when there is none (the weight stays float32).

    ``activations``: ``"float"`` multiplies the float32 input (equal to dequantize-then-matmul within
    float32 rounding); ``"int8"`` decodes the llama.cpp way where a kernel exists (``minq.runtime.gemv_q8``:
    the input rounded to 8-bit blocks, integer dot products), the float kernel elsewhere."""
    if activations not in ACTIVATIONS:
        raise ValueError(f"activations must be one of {ACTIVATIONS}, got {activations!r}")
    for make in (_int8_input_factories() if activations == "int8" else []) + _factories():
        lin = make(w)
        if lin is not None:
            return lin
    return None


class PackedGroup:
    """The linears of one input group, packed: ``matmul(X [T, in]) -> [T, sum of out]``.

    ``linears``: one packed kernel (``packed_linear``) per weight, in the group's order. Kernels whose
    class has ``stack(kernels) -> kernel or None`` become one kernel of the row-stacked weights (one call
    a token for q/k/v, one for gate/up)."""

    def __init__(self, linears: list, rows=None):
        self.linears = list(linears)
        stack = getattr(type(self.linears[0]), "stack", None)
        if len(self.linears) > 1 and stack is not None:             # one kernel for the group, where it can
            fused = stack(self.linears)
            self.linears = self.linears if fused is None else [fused]
        outs = [lin.shape[0] for lin in self.linears]
        self._starts = np.cumsum([0] + outs)
        self._rows = slice(0, int(self._starts[-1])) if rows is None else rows
        self.shape = (self._rows.stop - self._rows.start, self.linears[0].shape[1])

    def __getitem__(self, rows: slice) -> PackedGroup:
        """Output rows ``a:b`` of the group (within it), as the dense path slices ``W[a:b]``."""
        a, b, _ = rows.indices(self.shape[0])
        return PackedGroup(self.linears, slice(self._rows.start + a, self._rows.start + b))

    def matmul(self, X):
        """``X [T, in] -> [T, rows]`` float32; ValueError naming ``X`` for another shape."""
        if getattr(X, "ndim", 0) != 2 or X.shape[1] != self.shape[1]:
            raise ValueError(f"X must be [tokens, {self.shape[1]}], got shape {getattr(X, 'shape', None)}")
        X = np.ascontiguousarray(X, np.float32)
        outs, shared = [], {}
        for lin, lo, hi in zip(self.linears, self._starts, self._starts[1:]):
            a, b = max(lo, self._rows.start), min(hi, self._rows.stop)
            if a < b:
                outs.append(lin.matmul(X, slice(a - lo, b - lo), shared))
        return outs[0] if len(outs) == 1 else np.concatenate(outs, axis=1)

    @property
    def nbytes(self) -> int:
        return sum(lin.nbytes for lin in self.linears)
