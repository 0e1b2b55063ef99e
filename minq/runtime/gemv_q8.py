"""The llama.cpp way: 8-bit activations and integer dot products for chapter 03's 4-bit groups.

``minq.runtime.gemv`` multiplies the 4-bit codes by the float32 input: each code is converted to float and
multiplied, two instructions a weight, and the kernel reads about 5 GB/s a core, far from the memory's
speed. llama.cpp first rounds the input vector to 8 bits, in blocks, and multiplies integers:

    x_hat_j = dx_b * x8_j,   x8_j = round(x_j / dx_b) in [-127, 127],   dx_b = max_{j in b} |x_j| / 127
    y_r     = sum_g s_rg * sum_{b in g} dx_b * (sum_{j in b} q_rj x8_j)  +  m_rg * sum_{j in g} x_hat_j

with ``b`` the blocks of ``BLOCK`` = 64 inputs, ``g`` the weight's groups (a multiple of 64) and
``m = -s z``. In exact arithmetic ``y = W_hat @ x_hat``: the product of the dequantized weight with the
rounded input (``gemv_q8_reference``). The integer sums ``sum q x8`` (4-bit times 8-bit, at most 64 terms)
fit an int32 exactly; LLVM turns them into AVX-512 VNNI ``vpdpwssd`` (16-bit pairs multiplied and added
into 32-bit lanes, 32 products an instruction) when the input is stored as int16. The kernel reads
twice as fast as the float one (tests/runtime/test_gemv_q8.py bounds the float32 rounding of the scaled
sums; benchmarks/bench_gemv.py races them). The price is the input's rounding: ``|x_j - x_hat_j| <= dx_b / 2``.

The codes are repacked once, when the model is built, so that the two nibbles of a byte meet two
contiguous halves of the input (ggml's Q4_0 order) instead of an even and an odd input:

    block b of a row (64 codes q_0 .. q_63) -> 32 bytes:   byte k = q_{k+32} << 4 | q_k
        bytes  0 .. 31 :  low nibbles  q_0  .. q_31   x  x8[64b      .. 64b + 31]
                          high nibbles q_32 .. q_63   x  x8[64b + 32 .. 64b + 63]

Rounding is half to even (minq's one convention), where llama.cpp's ``roundf`` rounds half away from
zero; the two agree except on exact halves.
"""

from __future__ import annotations

import threading

import numpy as np

from minq._checks import check_float_array
from minq._jit import JIT_ENABLED, njit, prange
from minq.groups import GroupedAffine
from minq.runtime.gemv import group_scales

__all__ = ["quantize_input", "repack_halves", "gemv_q8_reference", "Int4GemvQ8", "BLOCK"]

BLOCK = 64                      # inputs per activation scale, codes per inner loop (32 bytes)
_HALF = BLOCK // 2
THREAD_MIN_WORK = 1 << 18       # codes: smaller products run on the calling thread
_NUMBA_THREADS = threading.Lock()   # held while a product runs on Numba's threads


def quantize_input(x, block: int = BLOCK):
    """``(x8 int16 [n], dx float32 [n / block])`` of ``x float32 [n]``: symmetric 8-bit blocks, ``x_hat = dx x8``.

    An all-zero block gets ``dx = 0`` (and codes 0). ValueError naming ``x`` for a non-finite or
    non-vector input, or one whose length ``block`` does not divide."""
    if isinstance(block, bool) or not isinstance(block, (int, np.integer)) or block < 1:
        raise ValueError(f"block must be a positive int, got {block!r}")
    check_float_array(x, "x", ndim=1)
    x = np.asarray(x, np.float32)
    if x.shape[0] % block:
        raise ValueError(f"x must have a multiple of {block} entries, got {x.shape[0]}")
    xb = x.reshape(-1, block)                                                  # [n / block, block]
    dx = (np.abs(xb).max(axis=1) / np.float32(127)).astype(np.float32)         # [n / block]
    safe = np.where(dx > 0, dx, np.float32(1))
    x8 = np.clip(np.round(xb / safe[:, None]), -127, 127).astype(np.int16)     # [n / block, block]
    return x8.reshape(-1), dx


@njit
def _quantize_input_kernel(x, g, x8, dx, xs):
    """``quantize_input(x)`` into ``x8, dx`` and the sums of ``x_hat`` over groups of ``g`` into ``xs``, in one
    pass: the reference's float32 operations, so ``x8`` and ``dx`` are the same bit for bit."""
    for blk in range(x.shape[0] // BLOCK):
        xb = x[blk * BLOCK: (blk + 1) * BLOCK]
        amax = np.float32(0)
        for k in range(BLOCK):
            amax = max(amax, abs(xb[k]))
        d = amax / np.float32(127)
        dx[blk] = d
        inv = d if d > 0 else np.float32(1)
        t = np.int32(0)
        for k in range(BLOCK):
            v = min(max(np.round(xb[k] / inv), np.float32(-127)), np.float32(127))
            x8[blk * BLOCK + k] = np.int16(v)
            t += np.int32(v)
        xs[blk * BLOCK // g] += d * np.float32(t)


def dequantize_input(x8, dx, block: int = BLOCK) -> np.ndarray:
    """``x_hat = dx * x8``, float32 ``[n]``."""
    return (x8.reshape(-1, block).astype(np.float32) * dx[:, None]).reshape(-1)


def repack_halves(codes) -> np.ndarray:
    """4-bit codes ``[out, in]`` (values 0..15, ``in`` a multiple of 64) -> uint8 ``[out, in / 2]`` in the
    halves order of the module docstring. ValueError naming ``codes`` for another shape or a code above 15."""
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.shape[1] % BLOCK or codes.shape[1] == 0:
        raise ValueError(f"codes must be [out, in] with in a positive multiple of {BLOCK}, got shape {codes.shape}")
    if codes.size and (codes.min() < 0 or codes.max() > 15):
        raise ValueError("codes must be 4-bit values in 0..15")
    q = np.asarray(codes, np.uint8).reshape(codes.shape[0], -1, BLOCK)          # [out, in / 64, 64]
    return np.ascontiguousarray((q[..., :_HALF] | (q[..., _HALF:] << 4)).reshape(codes.shape[0], -1))


def unpack_halves(P) -> np.ndarray:
    """The inverse of ``repack_halves``: uint8 codes ``[out, in]``."""
    b = P.reshape(P.shape[0], -1, _HALF)                                       # [out, in / 64, 32]
    return np.concatenate([b & 15, b >> 4], axis=2).reshape(P.shape[0], -1)


def gemv_q8_reference(w, x) -> np.ndarray:
    """``w.dequantize() @ x_hat`` with ``x_hat`` the 8-bit rounding of ``x`` (``quantize_input``): what
    ``Int4GemvQ8`` computes, the readable way."""
    x8, dx = quantize_input(x)
    return w.dequantize() @ dequantize_input(x8, dx)


@njit(fastmath=True)
def _rows_int4_q8(P, s, m, x8, dx, xs, per_group, y):
    """``y[r] = sum_G s[r, G] sum_b dx[b] (sum_j q_rj x8_j) + m[r, G] xs[G]`` for the rows of ``P [R, in / 2]``
    (halves order), ``s, m [R, G]`` float32, ``x8`` int16 ``[in]``, ``dx [in / 64]``, ``xs [G]`` the sums of
    ``x_hat`` over each group. The block's integer sum is exact (int32); ``fastmath`` lets LLVM reorder it."""
    R, G = s.shape
    for r in range(R):
        p = P[r]
        acc = np.float32(0)
        for gi in range(G):
            f = np.float32(0)
            for blk in range(gi * per_group, (gi + 1) * per_group):
                pb = p[blk * _HALF: blk * _HALF + _HALF]                             # 32 bytes, 64 codes
                lo, hi = x8[blk * BLOCK: blk * BLOCK + _HALF], x8[blk * BLOCK + _HALF: (blk + 1) * BLOCK]
                t = np.int32(0)
                for k in range(_HALF):
                    b = np.int16(pb[k])
                    t = np.int32(t + np.int32(b & np.int16(15)) * np.int32(lo[k])
                                 + np.int32(b >> np.int16(4)) * np.int32(hi[k]))
                f += dx[blk] * np.float32(t)
            acc += s[r, gi] * f + m[r, gi] * xs[gi]
        y[r] = acc


@njit(parallel=True, fastmath=True)
def _rows_int4_q8_threads(P, s, m, x8, dx, xs, per_group, y, n):
    """``_rows_int4_q8`` on ``n`` slices of rows, on Numba's threads (a launch costs microseconds, where a
    hand-off to the runtime's Python pool costs ~0.1 ms: a one-token product of a small layer pays off)."""
    R = P.shape[0]
    step = (R + n - 1) // n
    for c in prange(n):
        a, b = c * step, min(R, (c + 1) * step)
        if a < b:
            _rows_int4_q8(P[a:b], s[a:b], m[a:b], x8, dx, xs, per_group, y[a:b])


@njit
def _dequant_rows_halves(P, s, m, g, out):
    """``out[r, j] = s[r, G] q[r, j] + m[r, G]`` (``G = j // g``) for the codes ``P`` in halves order."""
    R, G = s.shape
    for r in range(R):
        p, o = P[r], out[r]
        for blk in range(P.shape[1] // _HALF):
            gi = blk * BLOCK // g
            sg, mg = s[r, gi], m[r, gi]
            for k in range(_HALF):
                b = np.uint32(p[blk * _HALF + k])
                o[blk * BLOCK + k] = sg * np.float32(b & np.uint32(15)) + mg
                o[blk * BLOCK + _HALF + k] = sg * np.float32(b >> np.uint32(4)) + mg


class Int4GemvQ8:
    """``Int4GemvQ8(w)(x) -> y [out]``: a 4-bit ``GroupedAffine`` ``w [out, in]`` (integer or symmetric zero
    points, groups of a multiple of 64, not ragged, NumPy) times the 8-bit rounding of ``x float32 [in]``.

    Equal to ``gemv_q8_reference`` within float32 rounding of the scaled sums. ValueError for another
    container or a wrong ``x``. ``rows(lo, hi)`` dequantizes rows of ``W_hat`` (prefill tiles)."""

    def __init__(self, w: GroupedAffine):
        if not isinstance(w, GroupedAffine):
            raise TypeError(f"w must be a GroupedAffine, got {type(w).__name__}")
        if w.bits != 4 or w.zero_point != "int" or w.ragged_group_size is not None or not isinstance(w.packed, np.ndarray):
            raise ValueError("Int4GemvQ8 needs a NumPy 4-bit GroupedAffine with integer (or symmetric) zero points, "
                             f"not ragged; got bits={w.bits}, zero_point={w.zero_point!r}")
        if w.g % BLOCK:
            raise ValueError(f"Int4GemvQ8 needs groups of a multiple of {BLOCK} inputs, got g={w.g}")
        out, n_in = w.shape
        self.s, self.m = group_scales(w)                                                       # [out, G]
        self.P, self.g, self.shape = repack_halves(w.codes.reshape(out, n_in)), w.g, w.shape  # [out, in / 2]

    @classmethod
    def stack(cls, kernels: list):
        """One kernel for the row-stack of ``kernels`` (the linears of one input group: q/k/v, gate/up), so
        a token is one call; None when their inputs or groups differ."""
        first = kernels[0]
        if any(type(k) is not cls or k.g != first.g or k.shape[1] != first.shape[1] for k in kernels):
            return None
        k = cls.__new__(cls)
        k.P, k.s, k.m = (np.concatenate([getattr(j, a) for j in kernels]) for a in ("P", "s", "m"))
        k.g, k.shape = first.g, (sum(j.shape[0] for j in kernels), first.shape[1])
        return k

    @property
    def nbytes(self) -> int:
        """Bytes one product reads: the codes, and s and m as float32."""
        return int(self.P.nbytes + self.s.nbytes + self.m.nbytes)

    def __call__(self, x) -> np.ndarray:
        check_float_array(x, "x", ndim=1)
        if x.shape[0] != self.shape[1] or not isinstance(x, np.ndarray):
            raise ValueError(f"x must be a NumPy vector of {self.shape[1]} inputs, got shape {tuple(x.shape)}")
        return self.product(self.split(x))

    def split(self, x) -> tuple:
        """``(x8, dx, xs)`` of a float32 ``x [in]`` (unchecked): what ``product`` reads, from one kernel
        (``quantize_input``'s codes and scales; ``xs``: sums of ``x_hat`` over the groups of ``g``)."""
        n = self.shape[1]
        x8, dx, xs = np.empty(n, np.int16), np.empty(n // BLOCK, np.float32), np.zeros(n // self.g, np.float32)
        _quantize_input_kernel(np.ascontiguousarray(x, np.float32), self.g, x8, dx, xs)
        return x8, dx, xs

    def product(self, parts, rows=None) -> np.ndarray:
        """``y [len(rows)]`` from ``split(x)`` (unchecked), the rows on the runtime's threads when there is
        work for them (``THREAD_MIN_WORK`` codes) and this thread is not already one of a parallel region."""
        from minq.runtime.parallel import _free_threads

        x8, dx, xs = parts
        r = range(self.shape[0]) if rows is None else rows
        P, s, m = self.P[r.start:r.stop], self.s[r.start:r.stop], self.m[r.start:r.stop]
        y = np.empty(len(r), np.float32)
        n = _free_threads() if JIT_ENABLED and P.size * 2 >= THREAD_MIN_WORK else 1
        if n > 1 and _NUMBA_THREADS.acquire(blocking=False):   # Numba's default thread pool takes one
            try:                                                  # caller at a time (a second one would
                _rows_int4_q8_threads(P, s, m, x8, dx, xs, self.g // BLOCK, y, n)   # abort the process)
            finally:
                _NUMBA_THREADS.release()
        else:
            _rows_int4_q8(P, s, m, x8, dx, xs, self.g // BLOCK, y)
        return y

    def matmul(self, X, rows=slice(None), parts=None) -> np.ndarray:
        """The packed-linear protocol (``minq.runtime.packed``): ``X [T, in] -> [T, len(rows)]``. Decode
        (``T <= DECODE_TOKENS``) rounds each token to 8 bits (once per group of linears: ``parts``);
        prefill multiplies the float input by dequantized tiles (BLAS), as the float kernel does."""
        from minq.runtime.packed import DECODE_TOKENS, TILE, _prefill

        r = range(self.shape[0])[rows]
        if len(X) <= DECODE_TOKENS:
            parts = {} if parts is None else parts
            key = ("int8 input", self.g)                                      # shared by the group
            if key not in parts:
                parts[key] = [self.split(x) for x in X]
            Y = np.empty((len(X), len(r)), np.float32)                         # [T, rows]
            for t, p in enumerate(parts[key]):
                Y[t] = self.product(p, r)
            return Y
        buf = np.empty((min(TILE, len(r)), self.shape[1]), np.float32)
        return _prefill(X, r, lambda lo, hi: self.rows(lo, hi, buf[:hi - lo]))

    def rows(self, lo: int, hi: int, out=None) -> np.ndarray:
        """The dequantized rows ``lo:hi`` of ``W_hat``, float32 ``[hi - lo, in]`` (into ``out`` if given)."""
        out = np.empty((hi - lo, self.shape[1]), np.float32) if out is None else out
        _dequant_rows_halves(self.P[lo:hi], self.s[lo:hi], self.m[lo:hi], self.g, out)
        return out
