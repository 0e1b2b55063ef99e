"""Fused dequantize-GEMV for table-coded weights: NF4 (a 16-entry codebook) and FP8 (a 256-entry table).

Chapter 10's two table formats decode a code by looking it up, not by scaling an integer:

    NF4   w_hat_j = CODEBOOK[q_j] * absmax_b          q 4 bits, two a byte (element 2u in the HIGH nibble
                                                      of byte u), one absmax per block of B weights
    FP8   w_hat_j = value(q_j) * s_j                  q 8 bits (E4M3 or E5M2), s per tensor, row or block

and ``y_r = sum_b scale_rb * sum_{j in b} table[q_rj] x_j`` over the 64-code blocks ``b`` of row ``r``
(``gidx[b]``: the scale column of block ``b``). The loops are those of ``minq.runtime.gemv`` (superblocks
of 4 x 64 codes, a trip count fixed at compile time, ``max(j, 0)`` indices); the lookup is what differs.
A lookup in a vectorised loop is a gather (``vgatherdps``): measured here, 2 G weights/s a core, 8x below
the integer kernels. So neither kernel gathers:

- NF4: the 16 codebook values fit one AVX-512 register, and ``vpermps`` looks 16 codes up in one
  instruction. Numba cannot spell it, so ``_nf4_dot`` is a small LLVM intrinsic (``numba.extending``): per
  block it loads 32 code bytes, splits the nibbles, and builds each looked-up vector from
  ``extractelement``s with variable indices, the pattern LLVM's x86 backend lowers to ``vpermps`` (without
  AVX-512, to other shuffles: the same values); it returns the scaled dot product of 1 or 4 blocks. Without
  Numba it is the NumPy function of that name (``NUMBA_DISABLE_JIT=1``). 18 G weights/s (1 thread, in L3).
- FP8: an FP8 value is a float32 bit pattern shifted into place: for E4M3, ``(q << 20) & 0x87F00000`` (``q``
  the code as int8: the mask keeps its sign at bit 31 and its 7 bits of exponent and mantissa) is the float32
  ``value * 2^-120`` (exponent bias 7 vs 127; subnormals land on float32 subnormals), so ``value =
  view_f32(bits) * 2^120`` exactly (E5M2: shift 21, ``2^112``). The kernels are compiled once per format,
  the shift a constant (a run-time shift kept the decode on 64-bit lanes). This is the 256-entry table
  ``minq.fp8.decode(arange(256))`` for every finite code (tests/runtime/test_gemv_lut.py checks all 256);
  a weight holding a NaN/Inf code has no kernel (``fp8.quantize`` saturates: it never writes them).

NF4 blocks run over the flattened weight (bitsandbytes' layout) and may span rows: the kernel takes rows of
a multiple of the block size, blocks of a multiple of 64 (SmolLM2's 576 and 1536 rows, blocks of 64); other
NF4 weights stay float32. A double-quantized absmax is decoded to float32 once, when the kernel is made
(4 bytes a block in ``nbytes``). FP8 takes any row length, and blocks of a multiple of 64 columns.

Both equal ``X @ w.dequantize().T`` within the float32 error of their sums, every table value being exact:
tests/runtime/test_gemv_lut.py bounds it by ``(256 + in / 64 + 8) eps32 sum_j |scale_j table_j x_j|`` (sums
in any order of a superblock, then of the blocks of a row, with the product roundings). From memory, 4096 x
4096 on 2 threads (Zen 4): NF4 0.6, FP8 0.65 of memcpy's bandwidth (read + write bytes).
"""

from __future__ import annotations

import numpy as np

from minq._checks import check_float_array
from minq._jit import JIT_ENABLED, njit

__all__ = ["NF4Gemv", "FP8Gemv", "nf4_linear", "fp8_linear"]

U32, F32 = np.uint32, np.float32
_FP8 = {"e4m3": (20, 2.0 ** 120), "e5m2": (21, 2.0 ** 112)}    # shift into float32, the power of 2 that rebiases
SUPER = 4                       # blocks of 64 codes per inner loop, as minq.runtime.gemv


# --- NF4: blocks of 32 code bytes (64 codes) looked up in the 16-entry codebook ---------------------------

def _nf4_dot(cb, p, xa, xb, u, scales):
    """``sum_i scales[i] sum_{k < 32} cb[p[v + k] >> 4] xa[v + k] + cb[p[v + k] & 15] xb[v + k]`` with
    ``v = u + 32 i`` (float32): the dot products of ``len(scales)`` consecutive blocks, scaled. This NumPy
    body is what runs without Numba; compiled kernels get the intrinsic below (one horizontal sum in all)."""
    t = 0.0
    for i, s in enumerate(scales):
        b, v = p[u + 32 * i:u + 32 * i + 32], u + 32 * i
        t += s * (cb[b >> 4] @ xa[v:v + 32] + cb[b & 15] @ xb[v:v + 32])
    return F32(t)


if JIT_ENABLED:
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.core.errors import TypingError
    from numba.extending import intrinsic, overload

    @intrinsic
    def _nf4_dot_ir(typingctx, cb, p, xa, xb, u, scales):
        for name, a, dt in (("cb", cb, types.float32), ("p", p, types.uint8), ("xa", xa, types.float32),
                            ("xb", xb, types.float32)):
            if not (isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C" and a.dtype == dt):
                raise TypingError(f"_nf4_dot: {name} must be a contiguous 1-D {dt} array, got {a}")
        if not (isinstance(scales, types.UniTuple) and scales.dtype == types.float32):
            raise TypingError(f"_nf4_dot: scales must be a tuple of float32, got {scales}")

        def codegen(context, builder, sig, args):
            f32, i32, i64 = ir.FloatType(), ir.IntType(32), ir.IntType(64)
            vi, vf = ir.VectorType(i32, 32), ir.VectorType(f32, 32)
            flags = ("reassoc", "contract")

            def load(k, vty, offset):                             # vty at element `offset` of array arg k
                data = cgutils.create_struct_proxy(sig.args[k])(context, builder, value=args[k]).data
                return builder.load(builder.bitcast(builder.gep(data, [offset]), vty.as_pointer()), align=1)

            def lookup(idx):                                       # -> vpermps (two, for 32 lanes)
                v = ir.Constant(vf, ir.Undefined)
                for i in range(32):
                    lane = ir.Constant(i32, i)
                    v = builder.insert_element(v, builder.extract_element(table, builder.extract_element(idx, lane)),
                                               lane)
                return v

            table = load(0, ir.VectorType(f32, 16), ir.Constant(i64, 0))                 # <16 x float>
            acc = None
            for i in range(sig.args[5].count):                                           # block i of the call
                v = builder.add(args[4], ir.Constant(i64, 32 * i))
                code = builder.zext(load(1, ir.VectorType(ir.IntType(8), 32), v), vi)    # <32 x i32>
                hi = lookup(builder.lshr(code, ir.Constant(vi, [4] * 32)))
                lo = lookup(builder.and_(code, ir.Constant(vi, [15] * 32)))
                d = builder.fadd(builder.fmul(hi, load(2, vf, v), flags=flags), builder.fmul(lo, load(3, vf, v),
                                 flags=flags), flags=flags)
                s = builder.insert_element(ir.Constant(vf, ir.Undefined), builder.extract_value(args[5], i),
                                           ir.Constant(i32, 0))
                s = builder.shuffle_vector(s, s, ir.Constant(vi, [0] * 32))             # broadcast the scale
                d = builder.fmul(d, s, flags=flags)
                acc = d if acc is None else builder.fadd(acc, d, flags=flags)
            reduce = cgutils.get_or_insert_function(builder.module, ir.FunctionType(f32, [f32, vf]),
                                                    "llvm.vector.reduce.fadd.v32f32")
            return builder.call(reduce, [ir.Constant(f32, 0.0), acc], fastmath=flags)

        return types.float32(cb, p, xa, xb, types.intp, scales), codegen

    @overload(_nf4_dot, inline="always")
    def _nf4_dot_jit(cb, p, xa, xb, u, scales):
        return lambda cb, p, xa, xb, u, scales: _nf4_dot_ir(cb, p, xa, xb, u, scales)


@njit(fastmath=True)
def _rows_nf4(P, a, gidx, cb, X, y):
    """``y[r] = sum_b a[r, gidx[b]] (sum_{j in b} cb[q_rj] x_j)``: ``P [R, in / 2]`` NF4 bytes (high nibble
    first), ``a [R, in / B]`` float32 absmax, ``X [2, in / 2]`` the even and odd inputs; 4 blocks a call."""
    nb = gidx.shape[0]
    xa, xb = X[0], X[1]
    for r in range(P.shape[0]):
        p, ar = P[r], a[r]
        acc = F32(0)
        for b in range(0, nb // SUPER * SUPER, SUPER):
            s = (ar[gidx[b]], ar[gidx[b + 1]], ar[gidx[b + 2]], ar[gidx[b + 3]])
            acc += _nf4_dot(cb, p, xa, xb, max(b * 32, 0), s)
        for b in range(nb // SUPER * SUPER, nb):
            acc += _nf4_dot(cb, p, xa, xb, max(b * 32, 0), (ar[gidx[b]],))
        y[r] = acc


@njit
def _dequant_rows_nf4(P, a, gidx, cb, out):
    """``out[r, j] = cb[q_rj] * a[r, gidx[j // 64]]``: NF4's dequantize, bit for bit (a prefill tile)."""
    for r in range(P.shape[0]):
        p, o = P[r], out[r]
        for b in range(gidx.shape[0]):
            s, u0 = a[r, gidx[b]], max(b * 32, 0)
            for k in range(32):
                c = p[u0 + k]
                o[2 * (u0 + k)], o[2 * (u0 + k) + 1] = cb[c >> 4] * s, cb[c & 15] * s


# --- FP8: codes decoded by shifting their bits into a float32 -------------------------------------------

def _fp8_kernels(shift: int, two_k: float):
    """``value``, the GEMV ``rows`` and the tile ``dequant`` of one FP8 format, its shift a constant."""
    mask, two_k = 0x80000000 | (0x7F << shift), F32(two_k)

    @njit(fastmath=True)
    def value(q):
        return U32((np.int64(q) << shift) & mask).view(np.float32) * two_k

    @njit(fastmath=True)
    def rows(P, s, r0, br, gidx, x, y):
        """``y[r] = sum_b s[(r0 + r) // br, gidx[b]] (sum_{j in b} value(q_rj) x_j)`` for the codes ``P [R, in]``
        (int8), ``s`` the scale grid (``br`` rows a scale row), ``gidx [ceil(in / 64)]`` each block's column."""
        n, nb = P.shape[1], gidx.shape[0]
        for r in range(P.shape[0]):
            p, sr = P[r], s[(r0 + r) // br]
            acc = F32(0)
            for sb in range(n // 64 // SUPER):
                u0, b = max(sb * SUPER * 64, 0), sb * SUPER
                s0, s1, s2, s3 = sr[gidx[b]], sr[gidx[b + 1]], sr[gidx[b + 2]], sr[gidx[b + 3]]
                t = F32(0)
                for k in range(SUPER * 64):                      # the select folds: k is a constant, unrolled
                    sk = s0 if k < 64 else (s1 if k < 128 else (s2 if k < 192 else s3))
                    t += sk * (value(p[u0 + k]) * x[u0 + k])
                acc += t
            for b in range(n // 64 // SUPER * SUPER, n // 64):
                u0, t = max(b * 64, 0), F32(0)
                for k in range(64):
                    t += value(p[u0 + k]) * x[u0 + k]
                acc += sr[gidx[b]] * t
            t = F32(0)
            for j in range(n // 64 * 64, n):                          # a row of in % 64 != 0: its tail
                t += value(p[j]) * x[j]
            y[r] = acc + (sr[gidx[nb - 1]] * t if n % 64 else F32(0))

    @njit
    def dequant(P, s, r0, br, gidx, out):
        """``out[r, j] = value(q_rj) * s[(r0 + r) // br, gidx[j // 64]]``: ``FP8Tensor.dequantize``, bit for bit."""
        n = P.shape[1]
        for r in range(P.shape[0]):
            p, o, sr = P[r], out[r], s[(r0 + r) // br]
            for b in range(n // 64):
                sb, j = sr[gidx[b]], max(b * 64, 0)
                for k in range(64):
                    o[j + k] = value(p[j + k]) * sb
            for j in range(n // 64 * 64, n):
                o[j] = value(p[j]) * sr[gidx[j >> 6]]

    return value, rows, dequant


_FP8_KERNELS = {fmt: _fp8_kernels(shift, two_k) for fmt, (shift, two_k) in _FP8.items()}


# --- the kernels and packed linears ---------------------------------------------------------------------

class _LutLinear:
    """A packed linear (``minq.runtime.packed``): ``product`` per token for decode (T <= DECODE_TOKENS),
    dequantized row tiles + BLAS for prefill; ``rows(lo, hi)`` the dequantized rows ``lo:hi``."""

    def __call__(self, x) -> np.ndarray:
        """``W_hat x -> y [out]`` for a finite float NumPy vector ``x [in]`` (TypeError / ValueError naming ``x``)."""
        check_float_array(x, "x", ndim=1)
        if x.shape[0] != self.shape[1] or not isinstance(x, np.ndarray):
            raise ValueError(f"x must be a NumPy vector of {self.shape[1]} inputs, got shape {tuple(x.shape)}")
        return self.product(self._parts(np.ascontiguousarray(x, np.float32)))

    def _run(self, kernel_rows, rows) -> np.ndarray:
        """``kernel_rows(slice, y)`` over the output rows ``rows`` (a range; None: all), a slice a thread."""
        from minq.runtime.parallel import _parallel_for, _row_slices

        rows = range(self.shape[0]) if rows is None else rows
        y = np.empty(len(rows), np.float32)
        work = len(rows) * self.shape[1]
        _parallel_for(lambda r: kernel_rows(slice(rows.start + r.start, rows.start + r.stop), y[r]),
                      _row_slices(len(rows), work), work=work)
        return y

    def matmul(self, X, rows=slice(None), parts=None):
        """``X [T, in] @ W_hat[rows]^T -> [T, len(rows)]`` float32; ``parts``: the group's shared dict."""
        from minq.runtime.packed import DECODE_TOKENS, TILE, _prefill

        r = range(self.shape[0])[rows]
        if len(X) <= DECODE_TOKENS:
            parts = {} if parts is None else parts
            key = (type(self).__name__, "input")
            if key not in parts:
                parts[key] = [self._parts(x) for x in X]
            return np.stack([self.product(p, r) for p in parts[key]])                 # [T, rows]
        buf = np.empty((min(TILE, len(r)), self.shape[1]), np.float32)
        return _prefill(X, r, lambda lo, hi: self.rows(lo, hi, buf[:hi - lo]))

    def rows(self, lo: int, hi: int, out=None) -> np.ndarray:
        """The dequantized rows ``lo:hi``, float32 ``[hi - lo, in]`` (into ``out`` if given), bit for bit."""
        out = np.empty((hi - lo, self.shape[1]), np.float32) if out is None else out
        self._tile(lo, hi, out)
        return out

    @property
    def nbytes(self) -> int:
        """Bytes one product reads: the codes, the scales as float32, the block index (NF4: the codebook)."""
        return int(sum(a.nbytes for a in self._read))


class NF4Gemv(_LutLinear):
    """An ``NF4Weight [out, in]`` kept packed (rows a multiple of ``block_size``, blocks a multiple of 64
    codes, NumPy storage; ValueError otherwise). ``NF4Gemv(w)(x)`` equals ``w.dequantize() @ x`` within the
    module's bound."""

    def __init__(self, w):
        from minq.nf4 import CODEBOOK, NF4Weight

        if not isinstance(w, NF4Weight):
            raise TypeError(f"w must be an NF4Weight, got {type(w).__name__}")
        out, n = w.shape
        B = w.block_size
        if n % B or B % 64 or not isinstance(w.packed, np.ndarray):
            raise ValueError(f"NF4Gemv needs NumPy rows of a multiple of block_size and blocks of a multiple "
                             f"of 64, got shape {w.shape}, block_size={B}")
        absmax = w.absmax
        if w.double_quant:                                        # the 8-bit absmax codes, decoded once
            from minq.nf4 import dequantize_absmax

            absmax = dequantize_absmax(w.absmax_codes, w.absmax2, w.offset, w.absmax_codes.size)
        self.P = np.ascontiguousarray(w.packed).reshape(out, n // 2)                  # [out, in / 2]
        self.a = np.ascontiguousarray(absmax, np.float32).reshape(out, n // B)        # [out, in / B]
        self.gidx = (np.arange(n // 64) * 64 // B).astype(np.int32)                   # [in / 64]
        self.cb, self.shape = CODEBOOK.copy(), (out, n)
        self._read = (self.P, self.a, self.gidx, self.cb)

    def _parts(self, x):
        return np.ascontiguousarray(x.reshape(-1, 2).T)                               # [2, in / 2]

    def product(self, X, rows=None) -> np.ndarray:
        """``y [len(rows)]`` (a range of output rows; None: all) from ``X = x.reshape(-1, 2).T`` (unchecked)."""
        return self._run(lambda r, y: _rows_nf4(self.P[r], self.a[r], self.gidx, self.cb, X, y), rows)

    def _tile(self, lo, hi, out):
        _dequant_rows_nf4(self.P[lo:hi], self.a[lo:hi], self.gidx, self.cb, out)


class FP8Gemv(_LutLinear):
    """An ``FP8Weight`` / ``FP8Tensor [out, in]`` kept as its codes (per tensor, row, or blocks of a multiple
    of 64 columns; NumPy storage; no NaN/Inf code; ValueError otherwise). ``FP8Gemv(w)(x)`` equals
    ``w.dequantize() @ x`` within the module's bound."""

    def __init__(self, w):
        from minq.fp8 import FP8Tensor, decode

        t = getattr(w, "q", w)
        if not isinstance(t, FP8Tensor) or len(t.shape) != 2:
            raise TypeError(f"w must be a 2-D FP8Weight or FP8Tensor, got {type(w).__name__}")
        out, n = t.shape
        bc = t.block[1] if t.granularity == "block" else n
        if not isinstance(t.q, np.ndarray) or (t.granularity == "block" and bc % 64):
            raise ValueError(f"FP8Gemv needs NumPy codes and blocks of a multiple of 64 columns, got {t.block}")
        if not np.isfinite(decode(np.arange(256, dtype=np.uint8), t.fmt))[t.q].all():
            raise ValueError("FP8Gemv: w holds NaN/Inf codes, which the kernel does not decode")
        self.P = np.ascontiguousarray(t.q).view(np.int8)                               # [out, in]
        self.s = np.ascontiguousarray(t.s, np.float32).reshape(-1, t.s.shape[-1])     # the scale grid
        self.br = t.block[0] if t.granularity == "block" else (1 if t.granularity == "row" else out)
        self.gidx = (np.arange(-(-n // 64)) * 64 // bc).astype(np.int32)             # [ceil(in / 64)]
        _, self._rows, self._dequant = _FP8_KERNELS[t.fmt]
        self.shape = (out, n)
        self._read = (self.P, self.s, self.gidx)

    def _parts(self, x):
        return x

    def product(self, x, rows=None) -> np.ndarray:
        """``y [len(rows)]`` (a range of output rows; None: all) from float32 ``x [in]`` (unchecked)."""
        return self._run(lambda r, y: self._rows(self.P[r], self.s, r.start, self.br, self.gidx, x, y), rows)

    def _tile(self, lo, hi, out):
        self._dequant(self.P[lo:hi], self.s, lo, self.br, self.gidx, out)


def _kernel_or_none(kernel, w):
    try:
        return kernel(w)
    except ValueError:                                            # a layout it does not take
        return None


def nf4_linear(w):
    """The packed kernel of an ``NF4Weight`` it can take, else None (the weight stays float32)."""
    from minq.nf4 import NF4Weight

    return _kernel_or_none(NF4Gemv, w) if isinstance(w, NF4Weight) else None


def fp8_linear(w):
    """The packed kernel of an ``FP8Weight`` it can take, else None (the weight stays float32)."""
    from minq.fp8_model import FP8Weight

    return _kernel_or_none(FP8Gemv, w) if isinstance(w, FP8Weight) else None
