"""Chapter 11 — the ternary matrix-vector kernel: integer sums of +-x, no multiplications.

``matvec_int(packed, xq)`` equals ``xq @ codes^T`` in int32 exactly (tests/test_ternary.py), where
``codes = t - 1`` are the 2-bit codes of ``minq.ternary.TernaryWeight`` (chapter 03's packing, four a
byte, the first in the low bits) and ``xq`` the int8 activations; ``minq.ternary.matvec_reference`` is
the readable NumPy product. Per weight, the code ``t`` in {0, 1, 2} selects what happens to ``v = xq_j``:

    t = 2 (+1)   acc += v
    t = 1 ( 0)   nothing                  acc += v if t == 2 else (-v if t == 0 else 0)
    t = 0 (-1)   acc -= v

an add or a subtract per weight, chosen by compares: no multiplication (LLVM turns the choice into
vector compares and selects). ``kernel="mul"`` runs the same loop with ``acc += v * (t - 1)`` instead,
to measure what the multiplication costs: on this CPU (AVX-512, a vector multiply an instruction) the
multiply loop is the faster one, 1.5x to 2.5x (benchmarks/bench_ternary.py): a multiply is cheap where it
is one SIMD instruction, and the three-way choice takes several. Multiplication-free pays in energy and
in hardware built for it (the paper's argument) and in lookup-table kernels (bitnet.cpp's TL1/TL2), not
in a plain CPU loop.

Padding codes (a row not a multiple of 4) meet zero activations (``xq`` is padded), so they add 0.
Rows run as one slice per thread of the runtime (``minq.runtime.parallel._row_slices``); each slice is
one single-threaded ``nogil`` call.
"""

from __future__ import annotations

import numpy as np

from minq._jit import njit

__all__ = ["matvec_int", "matvec_float", "KERNELS"]

KERNELS = ("addsub", "mul")


@njit
def _rows_addsub(P, X, acc):
    """``acc[t, r] = sum_j code_rj X[t, j]`` for the rows of ``P [R, nb]`` (uint8 codes ``t = code + 1``,
    four a byte) and ``X [T, 4 nb]`` (int32, zero-padded), ``acc [T, R]`` int32: adds and subtracts only."""
    R, nb = P.shape
    for t in range(X.shape[0]):
        x = X[t]
        for r in range(R):
            p = P[r]
            s = np.int32(0)
            for j in range(nb):
                b = p[j]
                for k in range(4):
                    c = (b >> np.uint8(2 * k)) & np.uint8(3)
                    v = x[4 * j + k]
                    s += v if c == 2 else (-v if c == 0 else np.int32(0))
            acc[t, r] = s


@njit
def _rows_mul(P, X, acc):
    """``_rows_addsub`` with one multiplication a weight: ``s += v * (t - 1)`` (``X`` int16)."""
    R, nb = P.shape
    for t in range(X.shape[0]):
        x = X[t]
        for r in range(R):
            p = P[r]
            s = np.int32(0)
            for j in range(nb):
                b = np.int32(p[j])
                s += (x[4 * j] * ((b & 3) - 1) + x[4 * j + 1] * (((b >> 2) & 3) - 1)
                      + x[4 * j + 2] * (((b >> 4) & 3) - 1) + x[4 * j + 3] * (((b >> 6) & 3) - 1))
            acc[t, r] = s


@njit(fastmath=True)
def _rows_float(P, X, out):
    """``out[t, r] = sum_j code_rj X[t, j]`` in float32 for float32 ``X [T, 4 nb]`` (zero-padded): the
    packed runtime's product with float inputs (weights-only ternary), sums reassociated."""
    R, nb = P.shape
    one, three = np.float32(1), np.uint32(3)
    for t in range(X.shape[0]):
        x = X[t]
        for r in range(R):
            p = P[r]
            s = np.float32(0)
            for j in range(nb):
                b = np.uint32(p[j])
                s += (x[4 * j] * (np.float32(b & three) - one) + x[4 * j + 1] * (np.float32((b >> 2) & three) - one)
                      + x[4 * j + 2] * (np.float32((b >> 4) & three) - one)
                      + x[4 * j + 3] * (np.float32(b >> 6) - one))
            out[t, r] = s


def _by_rows(rows, P, X, dtype, out_dtype):
    """Run the row kernel ``rows(P[r], Xp, out[:, r])`` on the runtime's threads: ``X [T, in]`` copied into
    ``Xp [T, 4 nb]`` of ``dtype``, zero-padded (padding codes then add 0); returns ``out [T, out]``."""
    from minq.runtime.parallel import _parallel_for, _row_slices

    R, nb = P.shape
    T, n = X.shape
    Xp = np.zeros((T, 4 * nb), dtype)                                          # [T, 4 nb]
    Xp[:, :n] = X
    out = np.empty((T, R), out_dtype)
    P = np.ascontiguousarray(P)
    work = T * R * n
    _parallel_for(lambda r: rows(P[r], Xp, out[:, r]), _row_slices(R, work), work=work)
    return out


def matvec_float(P, X):
    """``float32 [T, out] = X [T, in] @ codes^T`` for the packed ternary codes ``P uint8 [out, ceil(in / 4)]``
    and float32 ``X``: equal to the float64 product within float32 rounding of sums of ``in`` terms."""
    return _by_rows(_rows_float, P, X, np.float32, np.float32)


def matvec_int(P, xq, kernel: str = "addsub"):
    """``int32 [T, out] = xq [T, in] @ codes^T`` for the packed ternary codes ``P uint8 [out, ceil(in / 4)]``
    and int8 ``xq``; ``kernel`` ``"addsub"`` (no multiplications) or ``"mul"``: the same integers."""
    from minq._checks import check_choice

    check_choice(kernel, "kernel", KERNELS)
    if kernel == "addsub":
        return _by_rows(_rows_addsub, P, xq, np.int32, np.int32)
    return _by_rows(_rows_mul, P, xq, np.int16, np.int32)
