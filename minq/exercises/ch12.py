"""Chapter 12's build exercises (notebooks/12_rotations_and_hqq.ipynb): a fast Hadamard transform, a norm
folded and rotated away, and one step of HQQ, by hand.

Exercises 1-6 (recall, derive) have their answers in notebooks/solutions/12_rotations_and_hqq.md.
"""

from __future__ import annotations

import numpy as np

from minq import hqq, rotation
from minq.testing import check, library_functions

__all__ = ["exercise_7", "exercise_8", "exercise_9"]

_HADAMARD = library_functions("minq.rotation.hadamard_transform", "minq.rotation.hadamard", "minq.rotation.random_hadamard",
                              "minq.rotation._sylvester", "minq.rotation._paley", "minq.rotation.OnlineHadamard.__call__")
_FUSE = _HADAMARD + library_functions("minq.rotation.fold_norms", "minq.rotation.rotate")
_HQQ = library_functions("minq.hqq.solve", "minq.hqq.quantize", "minq.hqq._step_reference", "minq.hqq._step_kernel")


# --- exercise 7: the fast Walsh-Hadamard transform ----------------------------------------------------------


def _fwht_case(args):
    """float64 ``[n]`` or ``[rows, n]``, n = 1 .. 1024 a power of two; values of any magnitude, one outlier."""
    seed, m, rows = args
    r = np.random.default_rng(seed)
    n = 2 ** m
    x = r.standard_normal((rows, n) if seed % 3 else (n,)) * np.exp(r.uniform(-5, 5))
    if seed % 4 == 1:
        x.reshape(-1)[r.integers(0, x.size)] *= 1000.0
    return x


def fwht(x):
    """The reference of exercise 7: ``minq.rotation.hadamard_transform(x)`` (no signs)."""
    return rotation.hadamard_transform(np.asarray(x, np.float64))


def exercise_7(fn) -> bool:
    """The fast Walsh-Hadamard transform: ``fn(x) -> x H_n / sqrt(n)`` float64, ``x``'s shape, for ``x`` float64
    ``[n]`` or ``[rows, n]`` (along the last axis), ``n`` a power of two from 1 to 1024.

    ``H_n`` is Sylvester's: ``H_1 = [1]``, ``H_2m = [[H_m, H_m], [H_m, -H_m]]`` (so ``H_n[i, j] = (-1)^popcount(i & j)``).
    Write it in O(n log n): log2(n) stages, each replacing the pairs ``(a, b) = (y[i], y[i + h])`` of every
    block of ``2h`` by ``(a + b, a - b)``, ``h = 1, 2, 4, ...``; then divide by ``sqrt(n)``. Checked within
    1e-8 against ``minq.rotation.hadamard_transform``, which is off limits with the
    matrices behind it (``hadamard``, ``random_hadamard``).
    """
    st = _st()
    cases = st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 10), st.integers(1, 4)).map(_fwht_case)
    return check(fn, fwht, cases, n=40, atol=1e-8, forbid=_HADAMARD)


# --- exercise 8: fold a norm and rotate a linear ---------------------------------------------------------


def _fuse_case(args):
    """``(gamma [d], W [out, d], signs [d])`` float64, d a power of two from 2 to 256."""
    seed, m, out = args
    r = np.random.default_rng(seed)
    d = 2 ** m
    gamma = r.uniform(0.0, 3.0, d)
    if seed % 3 == 1:
        gamma[r.integers(0, d)] = 0.0                    # a channel the norm switches off
    signs = np.where(r.random(d) < 0.5, -1.0, 1.0)
    return gamma, r.standard_normal((out, d)), signs


def fuse(gamma, W, signs):
    """The reference of exercise 8: ``W diag(gamma) R`` by the matrix product."""
    n = len(signs)
    R = np.asarray(signs, np.float64)[:, None] * rotation.hadamard(n) / np.sqrt(n)
    return (np.asarray(W, np.float64) * np.asarray(gamma)[None, :]) @ R


def exercise_8(fn) -> bool:
    """Fold an RMSNorm's gamma into the linear that reads it, and rotate that linear's input:
    ``fn(gamma, W, signs) -> W'`` float64 ``[out, d]``.

    ``W [out, d]`` reads ``rms(x) * gamma`` (``Y = X W^T``). With ``R = diag(signs) H_d / sqrt(d)`` (Sylvester's
    ``H_d``, d a power of two), ``W' = W diag(gamma) R``: then ``rms(x R) W'^T = rms(x) diag(gamma) W^T``,
    the same output from the rotated stream ``x R`` and a norm without gamma. Checked within 1e-9 against
    the matrix product; ``minq.rotation``'s transforms and matrices are off limits (exercise 7's answer is
    yours to reuse).
    """
    st = _st()
    cases = st.tuples(st.integers(0, 2**32 - 1), st.integers(1, 8), st.integers(1, 6)).map(_fuse_case)
    return check(fn, fuse, cases, n=40, atol=1e-9, forbid=_FUSE)


# --- exercise 9: one HQQ step ----------------------------------------------------------------------------


def _hqq_case(args):
    """``(W [rows, g], s_inv [rows], z [rows], bits, beta)`` float32: HQQ's min-max start of one group per row,
    weights of LLM size (the shrink is 0) or of size 1 (the shrink acts), beta from 1 to 100."""
    seed, rows, g, bits = args
    r = np.random.default_rng(seed)
    scale = 0.02 if seed % 2 else 1.0
    W = (r.standard_normal((rows, g)) * scale).astype(np.float32)
    if seed % 5 == 2:
        W[:, 0] *= 8                                      # an outlier per row
    qmax = 2 ** bits - 1
    lo, hi = W.min(1), W.max(1)
    s_inv = (np.float32(qmax) / (hi - lo)).astype(np.float32)
    z = (-lo * s_inv).astype(np.float32)
    beta = np.float32(10.0 ** r.uniform(0, 2))
    return W, s_inv, z, bits, beta


def hqq_step(W, s_inv, z, bits, beta):
    """The reference of exercise 9: one iteration of ``minq.hqq``'s solver (``_step_reference``): the next z."""
    Wg = np.asarray(W, np.float32)[:, None, :]                                  # one group a row
    from minq._backend import NUMPY

    _, _, z_next = hqq._step_reference(Wg, s_inv[:, None], z[:, None], 2 ** bits - 1, float(np.float32(1 / beta)),
                                       0.7, True, NUMPY)
    return z_next[:, 0]


def exercise_9(fn) -> bool:
    """One HQQ iteration: ``fn(W, s_inv, z, bits, beta) -> z_next`` float32 ``[rows]``, one group a row:
    ``W`` float32 ``[rows, g]``, ``s_inv, z`` float32 ``[rows]``, p = 0.7.

    ``Wq = clip(round(W s_inv + z), 0, 2^bits - 1)`` (half to even), ``Wr = (Wq - z) / s_inv``; the shrink of
    the error ``e = W - Wr``: ``We = sign(e) max(|e| - |e|^(p-1) / beta, 0)`` (0 where e = 0); then
    ``z_next = mean over the row of (Wq - (W - We) s_inv)``. Checked within 1e-4 against ``minq.hqq``'s step
    (its solver and quantizer are off limits).
    """
    st = _st()
    cases = st.tuples(st.integers(0, 2**32 - 1), st.integers(1, 6), st.sampled_from([8, 32, 64]),
                      st.integers(2, 4)).map(_hqq_case)
    return check(fn, hqq_step, cases, n=40, atol=1e-4, forbid=_HQQ)


def _st():
    from minq.testing import _st as st

    return st()
