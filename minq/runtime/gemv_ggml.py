"""Fused dequantize-GEMV for llama.cpp's block formats (chapter 08): ``y = W_hat x`` read from the ggml bytes.

A ``GGMLWeight`` (``minq.kquants``) keeps a weight ``[out, in]`` as the bytes llama.cpp writes, row by row
in blocks; ``GGMLLinear`` multiplies them without building a float32 matrix. Per block of a row:

    Q8_0   y += d sum_k q_k x_k                                        q int8, blocks of 32
    Q4_0   y += d sum_k (q_k - 8) x_k                                  q 0..15, blocks of 32
    Q4_1   y += d sum_k (q_k - 8) x_k  +  (m + 8 d) sum_k x_k          (= d q + m), q 0..15
    Q5_0   y += d sum_k q_k x_k  -  16 d sum_k x_k                     q 0..31: bit 4 from the u32 qh
    Q5_1   y += d sum_k q_k x_k  +  m sum_k x_k                        q 0..31
    Q4_K   y += sum_j ( d sc_j sum_{k in j} q_k x_k  -  dmin m_j sum_{k in j} x_k )   8 sub-blocks j of 32
    Q5_K   the same with q 0..31 (a fifth bit from qh)
    Q6_K   y += sum_j d sc_j sum_{k in j} (q_k - 32) x_k                16 sub-blocks of 16, sc int8

``sum_{k in j} x_k`` does not depend on the row: it is computed once per token (``_inputs``), and the
offset terms (``- 16 d``, ``m``, ``- dmin m_j``) go through it. The layouts are those of
``minq.kquants_legacy`` / ``minq.kquants_k``. A Q4_0 block and a Q4_K super-block:

    Q4_0   byte 0-1: d (fp16)   bytes 2..17: byte 2 + k = q_k | q_{k+16} << 4
    Q4_K   byte  0-1   2-3    4 ........... 15    16 .......................................... 143
                 d     dmin   sc_0..7, m_0..7     4 runs of 32 bytes; run c, byte l =
                 fp16  fp16   6-bit, packed       e_{64c+l} (low nibble) | e_{64c+32+l} (high) << 4

so a Q4_K run of 32 bytes meets ``x[64c : 64c+32]`` and ``x[64c+32 : 64c+64]`` (sub-blocks 2c, 2c+1): a loop
of 32 steps whose length is fixed when the kernel compiles, so that LLVM vectorises it (``minq.runtime.gemv``).

Exact and bounded. Each weight ggml's ``dequantize_row_*`` gives is ``d sc (q - z)``, exact in float32 (an
fp16 significand times integers of at most 13 bits), plus ``m`` / less ``dmin m_j`` (Q4_1, Q5_1, Q4_K, Q5_K)
in one rounding, which the kernels keep apart (Q4_1's ``m + 8 d`` is rounded once more, to float32).
``rows(lo, hi)`` (the prefill tiles) equals ``w.dequantize()[lo:hi]`` bit for bit. The GEMV's sums are
reassociated (``fastmath``): tests/runtime/test_gemv_ggml.py bounds ``|y - W_hat x|`` by
``2 (n / 8 + 96) eps32 sum_k (|w_k| + 2 |min_k|) |x_k|`` (``min_k``: the offset term the kernel keeps apart),
the float32 error of sums of that length; it is below 1% of the typical ``|y|``, so a swapped nibble, a
wrong scale or sign breaks it (the tests corrupt blocks to show it).

What the speed took (measured on one AVX-512 core, 4096 x 4096): integer work kept 8 bits wide (Numba widens
integer arithmetic to 64 bits; ``U8(...)`` / ``np.int8(...)`` around a bit expression lets LLVM narrow it
again: 1.5x for Q4_K, 1.9x for Q6_K); accumulators ``lanes`` in 2-4 sets that blocks take in turn, so one
block's sum does not wait for the last (1.2x); legacy blocks of 32 keep their fp16 scales as float32
``d [out, nb]`` (``(d, m) [out, nb, 2]``), converted once as llama.cpp's repacking does (a table lookup per
block cost 1.3x; counted in ``nbytes``); k-quants decode theirs in the kernel (two per 256 weights). LLVM is
fickle at 16 steps: ``F32(U8(q))`` there vectorises 5x worse than ``F32(np.int8(q - 8))`` (so Q4_1 runs as
``d (q - 8) + (m + 8 d)``), and a ``mins +=`` in the block loop 2-4x worse than a loop of its own.

``activations="int8"`` (Q8_0, Q4_0): llama.cpp's product. The input is rounded to Q8_0 blocks
(``quantize_activations``: ``d_x = amax / 127``, stored fp16, ``q_x = roundf(x / d_x)``) and each block is an
integer dot ``sum_k q_k q_xk`` (exact in int32; LLVM emits AVX-512 VNNI ``vpdpwssd`` when four blocks' dots
run in one loop) times ``d_w d_x``: 1.4x (Q4_0) and 2.3x (Q8_0) faster than the float kernels. It equals
``W_hat x_hat`` within float32 rounding (``gemv_q8_reference``) and differs from the float product by the
input's rounding, at most ``sum_b |d_w| sum_k |q_k| (d_x / 2 + 127 |d_x - fp16(d_x)|)`` per output.
The float path's readable reference is ``minq.runtime.gemv.gemv_reference`` (``w.dequantize() @ x``).
The kernels live in ``minq.runtime.gemv_ggml_kernels``; this module holds the input rounding, the class and
the factory.
"""

from __future__ import annotations

import numpy as np

from minq._checks import check_float_array
from minq._jit import njit
from minq.kquants import TYPES, GGMLWeight
from minq.runtime.gemv_ggml_kernels import _GEMV, _GEMV_Q8, _rows_dm, _rows_k, _rows_legacy

__all__ = ["GGMLLinear", "ggml_linear", "quantize_activations", "gemv_q8_reference", "SUPPORTED", "Q8_TYPES"]

F32, U8, I16, I32, U32 = np.float32, np.uint8, np.int16, np.int32, np.uint32
SUPPORTED = ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K")
Q8_TYPES = ("Q8_0", "Q4_0")                  # with activations="int8"
_LEGACY = SUPPORTED[:5]                      # blocks of 32: fp16 d (and m) kept as float32 [out, nb (, 2)]
_F16 = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(F32)   # every fp16, as f32


@njit
def _quantize_q8(x, d, xq, xs):
    """Per block of 32: ``d = amax / 127`` (float32), ``xq = roundf(x / d)`` (``1 / d``, 0 where ``d == 0``;
    C's round half away from zero, exactly, as ``minq.kquants_search.roundf``), ``xs = 8 sum xq``."""
    for b in range(d.shape[0]):
        d[b] = np.abs(x[32 * b: 32 * b + 32]).max() / F32(127)
        inv = F32(1) / d[b] if d[b] != 0 else F32(0)
        t = 0
        for k in range(32):
            v = x[32 * b + k] * inv
            a = abs(v)
            q = np.floor(a) + np.floor(F32(2) * (a - np.floor(a)))               # roundf(|v|)
            xq[32 * b + k] = I16(q if v >= 0 else -q)
            t += xq[32 * b + k]
        xs[b] = 8 * t


def _quantize_padded(x):
    """``quantize_activations`` into arrays padded with zero blocks to a multiple of 4 blocks (what the q8
    kernels read), ``dx`` still float32 (not yet rounded to fp16)."""
    nb = x.shape[0] // 32
    d, xq, xs = np.zeros(-(-nb // 4) * 4, F32), np.zeros(-(-nb // 4) * 128, I16), np.zeros(-(-nb // 4) * 4, I32)
    _quantize_q8(x, d[:nb], xq, xs)
    return xq, d, xs


def quantize_activations(x):
    """``(xq int16 [n], dx float32 [n / 32], xs int32 [n / 32])``: ``x float32 [n]`` as llama.cpp's Q8_0
    blocks, the values of ``minq.kquants.quantize(x, "Q8_0")`` (``dx`` = fp16 of ``d = amax / 127``,
    ``xq = roundf(x / d)``), and ``xs = 8 sum xq`` per block (Q4_0's offset). ValueError naming ``x`` for
    NaN/Inf, or a length that is not a multiple of 32."""
    check_float_array(x, "x", ndim=1)
    x = np.ascontiguousarray(x, F32)
    if x.shape[0] % 32:
        raise ValueError(f"x must have a multiple of 32 entries, got {x.shape[0]}")
    xq, d, xs = _quantize_padded(x)
    n = x.shape[0]
    return xq[:n], d[:n // 32].astype(np.float16).astype(F32), xs[:n // 32]   # codes from d, product fp16(d)


def gemv_q8_reference(w, x) -> np.ndarray:
    """``w.dequantize() @ x_hat``, ``x_hat = dx xq`` (``quantize_activations``): what ``activations="int8"``
    computes, the readable way. (The float path's reference is ``minq.runtime.gemv.gemv_reference``.)"""
    xq, dx, _ = quantize_activations(x)
    return w.dequantize() @ (xq.reshape(-1, 32) * dx[:, None]).reshape(-1).astype(F32)


class GGMLLinear:
    """``GGMLLinear(w, activations="float")``: a NumPy ``GGMLWeight`` of a ``SUPPORTED`` type kept as its bytes.

    The packed-linear protocol of ``minq.runtime.packed``: ``matmul(X [T, in], rows=slice(None), parts=None)``
    (a GEMV per token up to ``DECODE_TOKENS``, dequantized tiles and BLAS beyond), ``rows(lo, hi)``,
    ``shape``, ``nbytes``; ``self(x)`` is one checked GEMV. ``activations="int8"`` (``Q8_TYPES`` only) rounds
    each decoded token to Q8_0 blocks, as llama.cpp does (``"int8"``, ``minq.runtime.packed``'s name, is the
    same); prefill multiplies the float input either way."""

    def __init__(self, w: GGMLWeight, activations: str = "float"):
        if not isinstance(w, GGMLWeight):
            raise TypeError(f"w must be a GGMLWeight, got {type(w).__name__}")
        if w.qtype not in SUPPORTED:
            raise ValueError(f"w.qtype {w.qtype!r} has no GEMV kernel; supported: {', '.join(SUPPORTED)}")
        if not isinstance(w.data, np.ndarray):
            raise TypeError(f"w.data must be a NumPy uint8 array, got {type(w.data).__name__} (torch storage?)")
        if activations not in ("float", "int8") or (activations == "int8" and w.qtype not in Q8_TYPES):
            raise ValueError(f"activations must be 'float' or 'int8' (int8 for {', '.join(Q8_TYPES)}), "
                             f"got {activations!r} for {w.qtype}")
        out, n = self.shape = w.shape
        t = TYPES[w.qtype]
        self.qtype, self.activations = w.qtype, activations
        self.P = np.ascontiguousarray(w.data).reshape(out, n // t.block, t.nbytes)   # [out, nb, bytes]
        for o in [t.layout.fields[f][1] for f in ("d", "dmin", "m") if f in t.layout.names]:     # fp16 offsets
            if not np.isfinite(self.P[:, :, o:o + 2].copy().view(np.float16)).all():
                raise ValueError(f"w.data has a NaN or Inf fp16 scale (corrupt bytes?) in a {w.qtype} block")
        if w.qtype in ("Q8_0", "Q4_0"):
            self.s = self.P[:, :, :2].copy().view(np.float16)[..., 0].astype(F32)   # d [out, nb]
            self.P = self.P.view(np.int8) if w.qtype == "Q8_0" else self.P
        elif w.qtype in _LEGACY:                                                    # (d, m) [out, nb, 2]
            self.s = np.empty(self.P.shape[:2] + (2,), F32)
            self.s[..., 0] = self.P[:, :, :2].copy().view(np.float16)[..., 0]
            d = self.s[..., 0].astype(np.float64)
            m = self.P[:, :, 2:4].copy().view(np.float16)[..., 0] if w.qtype != "Q5_0" else -16 * d
            self.s[..., 1] = m + 8 * d if w.qtype == "Q4_1" else m       # Q5_0: d (q - 16) = d q - 16 d
        else:
            self.s = _F16                                                          # the fp16 table

    @property
    def nbytes(self) -> int:
        """Bytes one product reads: the blocks, and the float32 scales of the legacy types."""
        return int(self.P.nbytes + (self.s.nbytes if self.qtype in _LEGACY else 0))

    def _inputs(self, x) -> tuple:
        """What the kernel reads of one float32 token ``x [in]``: ``(x, sums over 32)`` or, for q8,
        ``(xq, dx, 8 sum xq per block)``."""
        if self.activations == "int8":
            check_float_array(x, "x")
            xq, d, xs = _quantize_padded(x)
            return xq, d.astype(np.float16).astype(F32), xs
        return x, x.reshape(-1, 32).sum(axis=1, dtype=F32)

    def product(self, parts, rows=None) -> np.ndarray:
        """``y [len(rows)]`` (a ``range``; None: all) from ``_inputs(x)`` (unchecked), rows over the runtime's
        threads (``_parallel_for``: one slice per thread, as ``minq.runtime.gemv``)."""
        from minq.runtime.parallel import _parallel_for, _row_slices

        r = range(self.shape[0]) if rows is None else rows
        P, s = self.P[r.start:r.stop], self.s[r.start:r.stop] if self.qtype in _LEGACY else self.s
        P = P[:, :, 2:] if self.qtype == "Q5_1" else P                   # Q5_1's qh and codes where Q5_0's are
        y = np.empty(len(r), F32)
        if self.activations == "int8":
            kernel, P = _GEMV_Q8[self.qtype], P.reshape(len(r), -1)
        else:
            kernel = _GEMV[self.qtype]
        work = len(r) * self.shape[1]
        _parallel_for(lambda q: kernel(P[q], s[q] if self.qtype in _LEGACY else s, *parts, y[q]),
                      _row_slices(len(r), work), work=work)
        return y

    def __call__(self, x) -> np.ndarray:
        check_float_array(x, "x", ndim=1)
        if x.shape[0] != self.shape[1] or not isinstance(x, np.ndarray):
            raise ValueError(f"x must be a NumPy vector of {self.shape[1]} inputs, got shape {tuple(x.shape)}")
        return self.product(self._inputs(np.ascontiguousarray(x, F32)))

    def matmul(self, X, rows=slice(None), parts=None) -> np.ndarray:
        """``X [T, in] @ W_hat[rows]^T -> [T, len(rows)]`` float32; ``parts``: a dict the linears of one group
        share, so each token's inputs (``_inputs``) are prepared once per group."""
        from minq.runtime.packed import DECODE_TOKENS, TILE, _prefill

        check_float_array(X, "X", ndim=2, finite=False)
        if X.shape[1] != self.shape[1] or not isinstance(X, np.ndarray):
            raise ValueError(f"X must be a NumPy [tokens, {self.shape[1]}] array, got shape {tuple(X.shape)}")
        X = np.ascontiguousarray(X, F32)
        r = range(self.shape[0])[rows]
        if r.step != 1 or not len(r):
            raise ValueError(f"rows must be a non-empty slice with step 1, got {rows}")
        if len(X) <= DECODE_TOKENS:
            parts = {} if parts is None else parts
            key = ("ggml", self.activations)
            if key not in parts:
                parts[key] = [self._inputs(x) for x in X]
            return np.stack([self.product(p, r) for p in parts[key]])                # [T, rows]
        buf = np.empty((min(TILE, len(r)), self.shape[1]), F32)
        return _prefill(X, r, lambda lo, hi: self.rows(lo, hi, buf[:hi - lo]))

    def rows(self, lo: int, hi: int, out=None) -> np.ndarray:
        """The dequantized rows ``lo:hi`` of ``W_hat``, float32 ``[hi - lo, in]``: ``w.dequantize()[lo:hi]``
        bit for bit (into ``out`` if given)."""
        out = np.empty((hi - lo, self.shape[1]), F32) if out is None else out
        if self.qtype in ("Q8_0", "Q4_0"):
            _rows_legacy(self.P[lo:hi], self.s[lo:hi], out)
        elif self.qtype in _LEGACY:
            _rows_dm(self.P[lo:hi], _F16, out)
        else:
            _rows_k(self.P[lo:hi], self.s, out)
        return out


def ggml_linear(w, activations: str = "float"):
    """``GGMLLinear(w, activations)`` for a NumPy ``GGMLWeight`` of a supported type (for q8: of
    ``Q8_TYPES``), else None: the factory ``minq.runtime.packed`` lists."""
    if (isinstance(w, GGMLWeight) and isinstance(w.data, np.ndarray)
            and w.qtype in (Q8_TYPES if activations == "int8" else SUPPORTED)):
        return GGMLLinear(w, activations)
    return None
