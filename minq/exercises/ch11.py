"""Chapter 11's build exercises (notebooks/11_ternary.ipynb): BitNet b1.58's ternary weights by hand.

Exercises 1-6 (recall, derive) have their answers in notebooks/solutions/11_ternary.md.
"""

from __future__ import annotations

import numpy as np

from minq import kquants, ternary
from minq.testing import check, library_functions

__all__ = ["exercise_7", "exercise_8", "exercise_9"]


# the one-call answers: the entry points and what is behind them
_ABSMEAN = library_functions("minq.ternary.quantize", "minq.ternary.dequantize", "minq.ternary.TernaryWeight.quantize",
                      "minq.ternary._gamma")
_TQ2_0 = library_functions("minq.kquants.quantize", "minq.kquants.quantize_reference", "minq.kquants.GGMLWeight.quantize",
                    "minq.kquants_legacy.quantize_blocks", "minq.kquants_legacy._quantize_tq2_0",
                    "minq.kquants_legacy._trits", "minq.kquants_kernels_legacy.quantize_legacy_kernel",
                    "minq.kquants_kernels_legacy._q_tq2_0", "minq.ternary.to_gguf")
_W158A8 = library_functions("minq.ternary.matvec", "minq.ternary.matvec_reference", "minq.ternary.dequantize",
                     "minq.ternary._act_int8", "minq.ternary_kernels.matvec_int",
                     "minq.w8a8.Int8Activations.quantize", "minq.w8a8.Int8Activations.fake_quantize",
                     "minq.w8a8.Int8Activations.scales")


# --- exercise 7: absmean ----------------------------------------------------------------------------------


def _at_ties(W, idx, k, with_eps):
    """``W`` with the elements ``idx`` set to ``k * base / 2`` (``k`` odd, signs alternating), where ``base``
    is float32(gamma) + float32(EPS) (the rounding ties of ``W / (gamma + EPS)``) or float32(gamma) itself.
    gamma depends on those elements: start from the solution of ``gamma = (S + K base) / N`` (S the sum of
    the other magnitudes, K = sum k / 2) and iterate to the float32 fixed point."""
    sign = np.where(np.arange(len(idx[0])) % 2 == 0, np.float32(1), np.float32(-1))
    rest = np.ones(W.shape, bool)
    rest[idx] = False
    S, K, N, eps = np.abs(W[rest]).sum(dtype=np.float64), float(k.sum()) / 2, W.size, ternary.EPS * with_eps
    W[idx] = sign * k * np.float32((S + K * eps) / (N - K) + eps) / np.float32(2)
    for _ in range(20):
        g = np.float32(np.abs(W).mean(dtype=np.float64))
        base = g + np.float32(ternary.EPS) if with_eps else g
        new = (sign * k * (base / np.float32(2))).astype(np.float32)
        if np.array_equal(W[idx], new):
            break
        W[idx] = new
    return W


def _weights(args):
    """float32 ``[n]`` or ``[rows, cols]``: Gaussian weights of any magnitude, an all-zero tensor, ties."""
    seed, rows, cols = args
    r = np.random.default_rng(seed)
    shape = (cols,) if seed % 5 == 0 else (rows, cols)
    W = (r.standard_normal(shape) * np.exp(r.uniform(-10, 6))).astype(np.float32)
    kind = seed % 7
    if kind == 1:
        W[...] = 0
    elif kind in (2, 3, 4) and W.size >= 4:                 # values on ties: (gamma + eps) / 2 and 3 (gamma + eps) / 2
        flat = W.reshape(-1)
        pick = r.choice(flat.size, max(1, flat.size // 8), replace=False)
        k = r.choice(np.array([1, 3], np.float32), len(pick))
        _at_ties(flat, (pick,), k, with_eps=kind != 4)      # kind 4: exact multiples of gamma / 2
    elif kind == 5:                                         # a heavy tail: a few weights far beyond 1.5 gamma
        W.reshape(-1)[r.integers(0, W.size, 3)] *= np.float32(30)
    return W


def absmean_ternary(W):
    """The reference of exercise 7: ``minq.ternary.dequantize(*minq.ternary.quantize(W))``."""
    return ternary.dequantize(*ternary.quantize(W))


def exercise_7(fn) -> bool:
    """Absmean ternary weights: ``fn(W) -> W_hat`` float32, ``W``'s shape, for ``W`` float32 ``[n]`` or ``[rows, cols]``.

    One scale for the whole tensor: ``gamma = mean |W|``, computed as the float64 mean of ``|W|`` and
    rounded once to float32. The codes ``codes = clip(round(W / d), -1, 1)``, integers in {-1, 0, 1}, with
    the float32 division by the float32 number ``d = float32(gamma) + float32(1e-5)`` (the paper's
    ``gamma + eps``) and rounding half to even (``np.rint``, like ``torch.round``: 0.5 -> 0). Then
    ``W_hat = gamma * codes`` in float32 (a zero code gives +0.0, also for a small negative weight; an
    all-zero ``W`` has gamma = 0 and ``W_hat = 0``). Checked bit for bit against
    ``minq.ternary.dequantize(*minq.ternary.quantize(W))``, which (with ``TernaryWeight.quantize``) is off limits.
    """
    st = _st()
    cases = st.tuples(st.integers(0, 2**32 - 1), st.integers(1, 40), st.integers(1, 80)).map(_weights)
    return check(fn, absmean_ternary, cases, n=40, forbid=_ABSMEAN)


# --- exercise 8: TQ2_0 ------------------------------------------------------------------------------------


def _ternary_blocks(args):
    """float32 ``[nb * 256]``: ``gamma * codes`` per block (gamma from 2^-30 to 2^13), zero blocks, one-sign
    blocks, and blocks with half-way values ``+-gamma / 2``, gamma a power of two: exact ties of lroundf."""
    seed, nb = args
    r = np.random.default_rng(seed)
    gamma = np.float32(2.0 ** r.uniform(-30, 13))
    codes = r.integers(-1, 2, (nb, 256)).astype(np.float32)
    kind = r.integers(0, 6, nb)                                  # per block
    codes[kind == 1] = 0                                         # all zero: d = 0, every t = 1
    codes[kind == 2] = np.abs(codes[kind == 2])                  # only 0 and +gamma
    codes[kind == 3] = -np.abs(codes[kind == 3])                 # only 0 and -gamma
    if seed % 3 == 2:                                            # ties: gamma a power of two, values +-gamma / 2
        gamma = np.float32(2.0 ** r.integers(-30, 13))           # (x * (1 / d) = x / d = +-0.5 exactly)
        kind[0] = max(kind[0], 4)
        half = kind >= 4
        codes[half] *= r.choice(np.array([0.5, 1], np.float32), codes[half].shape)
    return (codes * gamma).astype(np.float32).reshape(-1)


def tq2_0_bytes(x):
    """The reference of exercise 8: ``minq.kquants.quantize(x, "TQ2_0")`` as one row of bytes."""
    return kquants.quantize(x, "TQ2_0").reshape(-1)


def exercise_8(fn) -> bool:
    """llama.cpp's TQ2_0 bytes: ``fn(x) -> data`` uint8 ``[n / 256 * 66]`` for ``x`` float32 ``[n]``, n a multiple of 256.

    ``x`` holds ternary weights ``gamma * codes`` (some blocks also hold ``+-gamma / 2``, with gamma a power
    of two). Per block of 256 (``quantize_row_tq2_0_ref`` of ggml-quants.c): ``d = max |x|`` of the block
    (float32); ``t = lroundf(x * r) + 1`` in {0, 1, 2} with ``r = 1 / d`` in float32 (``r = 0``, so every
    ``t = 1``, when ``d = 0``); on these inputs ``x / d`` gives the same codes. C's ``lroundf`` rounds
    half AWAY from zero (0.5 -> 1, -0.5 -> -1; ``minq.kquants_search.roundf`` does it, ``np.rint`` does
    not). A block of 66 bytes: 64 code bytes ``qs``, then ``d`` as a
    little-endian float16 (``d.astype("<f2")``, round to nearest even), 2 bytes. The codes are
    interleaved: for ``c = 0, 1`` and ``m = 0 .. 31``, byte ``qs[32c + m]`` holds, in its bits
    ``2n .. 2n+1`` (``n = 0 .. 3``), the ``t`` of element ``128c + 32n + m`` of the block. Checked
    against ``minq.kquants.quantize(x, "TQ2_0")``, which is off limits with its NumPy reference, the
    block functions and kernel behind them (``minq.kquants_legacy``, ``minq.kquants_kernels_legacy``)
    and ``minq.ternary.to_gguf``.
    """
    st = _st()
    cases = st.tuples(st.integers(0, 2**32 - 1), st.integers(1, 4)).map(_ternary_blocks)
    return check(fn, tq2_0_bytes, cases, n=40, forbid=_TQ2_0)


# --- exercise 9: W1.58A8 --------------------------------------------------------------------------------


def _matvec_case(args):
    """``(codes int8 [out, in], gamma float32, x float32 [in])``: x of any magnitude, zeros, one huge entry,
    a tiny (subnormal) x."""
    seed, out, n = args
    r = np.random.default_rng(seed)
    codes = r.integers(-1, 2, (out, n)).astype(np.int8)
    if seed % 5 == 1:
        codes[0] = 0                                             # a row of zero codes
    gamma = np.float32(np.exp(r.uniform(-8, 4)))
    x = (r.standard_normal(n) * np.exp(r.uniform(-10, 10))).astype(np.float32)
    kind = seed % 6
    if kind == 1:
        x[:] = 0                                                 # sx = 1, y = 0
    elif kind == 2:
        x[r.integers(0, n)] = np.float32(r.choice([-1, 1]) * 1e30)   # one huge entry: the others round to 0
    elif kind == 3:
        x = (r.standard_normal(n) * 1e-40).astype(np.float32)          # subnormal: amax / 127 below 2^-126
    return codes, gamma, x


def w158a8_matvec(codes, gamma, x):
    """The reference of exercise 9: ``minq.ternary.matvec_reference(TernaryWeight.from_codes(codes, gamma), x)``."""
    return ternary.matvec_reference(ternary.TernaryWeight.from_codes(codes, gamma), x)


def exercise_9(fn) -> bool:
    """The W1.58A8 product: ``fn(codes, gamma, x) -> y`` float32 ``[out]``, for ``codes`` int8 ``[out, in]`` in
    {-1, 0, 1}, ``gamma`` a float32 scalar > 0 and ``x`` float32 ``[in]``.

    First ``x`` to int8, absmax per token (chapter 04's ``Int8Activations("dynamic")``): ``amax = max |x|``,
    ``sx = max(amax / 127, 2^-126)`` in float32 (``np.finfo(np.float32).tiny``; ``sx = 1`` when ``x`` is all
    zero), ``xq = clip(round(x / sx), -128, 127)`` rounding half to even. Then the integer sum
    ``acc[r] = sum_j codes[r, j] * xq[j]`` in int32 (adds and subtracts of ``xq``: no multiplication is
    needed), and ``y = (float32(acc) * sx) * gamma``, float32, multiplied in that order. Checked bit for
    bit against ``minq.ternary.matvec_reference``, which is off limits with ``matvec``, ``dequantize``,
    and ``Int8Activations``' ``quantize``, ``fake_quantize`` and ``scales``.
    """
    st = _st()
    cases = st.tuples(st.integers(0, 2**32 - 1), st.integers(1, 40), st.integers(1, 300)).map(_matvec_case)
    return check(fn, w158a8_matvec, cases, n=40, forbid=_W158A8)


def _st():
    from minq.testing import _st as st

    return st()
