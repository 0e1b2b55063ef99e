"""The fast runtime's Numba kernels, each equal to a reference function of ``minq.models.llama``.

The forward's time is GEMMs plus elementwise work (RMSNorm, RoPE, SwiGLU, the softmax). NumPy runs the
elementwise work on one core, in several passes with temporaries; these kernels run it in one pass, in
blocks of rows on all the cores BLAS uses (``minq.runtime.parallel._parallel_for``; each kernel is
single-threaded and ``nogil``). Each kernel's docstring names the reference it equals and how:

    kernel                      reference (minq.models.llama)                 equal
    _rope_kernel                rope(x, cos, sin) * scale                     bit for bit
    _rms_norm_kernel            rms_norm(x, gamma, eps)                       bit for bit (NumPy's pairwise sum)
    _swiglu_kernel              swiglu(gate, up)                              to 1e-6 relative (``_exp_``)
    _causal_softmax_kernel      softmax(where(causal_mask, -inf, s))          to 1e-6 relative (``_exp_``)
    _exp_                       np.exp (of v clamped to [-87, 88])            to 4e-7 relative

(tests/runtime/test_kernels.py). The dispatchers (``_rope_to``, ``_rms_norm``, ``_silu_mul``,
``_softmax_tile``) run the kernel when JIT is on and the NumPy reference when it is off
(``NUMBA_DISABLE_JIT=1``). Numba's on-disk cache does not notice edits to jitted helpers in other
files, so the helpers (``_block_sum``, ``_pairwise_sum``, ``_exp_``) live here, beside their callers.
"""

from __future__ import annotations

import numpy as np

from minq._jit import JIT_ENABLED, njit
from minq.models.llama import causal_mask, rms_norm, rope, softmax, swiglu
from minq.runtime.parallel import _parallel_for, _row_blocks

__all__: list[str] = []


# --- RoPE --------------------------------------------------------------------------------------------


def _rope_to(x, cos, sin, out, scale=1.0):
    """``out[...] = rope(x) * scale`` for ``x, out [B, T, H, G, hd]`` (any strides), ``cos, sin [T, hd/2]``.

    ``_rope_kernel`` on blocks of positions when JIT is on (one pass, no temporaries: the fast block
    writes q and k straight into the layout its attention reads), else the reference ``rope``.
    """
    if JIT_ENABLED:                                    # blocks of positions on threads
        _parallel_for(lambda r: _rope_kernel(x[:, r], cos[r], sin[r], np.float32(scale), out[:, r]),
                      _row_blocks(x.shape[1]), work=x.size)
    else:
        out[...] = rope(x, cos[:, None, None], sin[:, None, None]) * np.float32(scale)


@njit
def _rope_kernel(x, cos, sin, scale, out):
    """``out = rope(x, cos[:, None, None], sin[:, None, None]) * scale`` for ``x, out [B, T, H, G, hd]``,
    ``cos, sin [T, hd/2]``: the float32 operations of ``minq.models.llama.rope`` in its order, so the
    two agree bit for bit."""
    B, T, H, G, hd = x.shape
    half = hd // 2
    for b in range(B):
        for t in range(T):
            for h in range(H):
                for j in range(G):
                    for i in range(half):
                        x1, x2 = x[b, t, h, j, i], x[b, t, h, j, i + half]
                        out[b, t, h, j, i] = (x1 * cos[t, i] - x2 * sin[t, i]) * scale
                        out[b, t, h, j, i + half] = (x2 * cos[t, i] + x1 * sin[t, i]) * scale


# --- RMSNorm -----------------------------------------------------------------------------------------


def _rms_norm(x, gamma, eps: float):
    """``rms_norm(x, gamma, eps)`` of a float32 ``x [..., d]`` as a new C-contiguous array:
    ``_rms_norm_kernel`` on blocks of rows when JIT is on, else the reference; bit for bit the same."""
    if not JIT_ENABLED:
        return rms_norm(x, gamma, eps)
    x = np.ascontiguousarray(x, dtype=np.float32)
    y = np.empty(x.shape, np.float32)
    x2, y2, eps = x.reshape(-1, x.shape[-1]), y.reshape(-1, x.shape[-1]), np.float32(eps)   # [N, d]
    _parallel_for(lambda r: _rms_norm_kernel(x2[r], gamma, eps, y2[r]), _row_blocks(len(x2)), work=x.size)
    return y


@njit
def _block_sum(a, lo, n):
    """``a[lo:lo + n].sum()``, ``n <= 128``, in NumPy's order: 8 running sums over the 8 columns, added
    pairwise, then the rest. The 8 independent sums also let the CPU overlap the additions."""
    if n < 8:
        s = np.float32(0.0)
        for i in range(lo, lo + n):
            s += a[i]
        return s
    s0, s1, s2, s3 = a[lo], a[lo + 1], a[lo + 2], a[lo + 3]
    s4, s5, s6, s7 = a[lo + 4], a[lo + 5], a[lo + 6], a[lo + 7]
    for i in range(lo + 8, lo + n - n % 8, 8):
        s0 += a[i]
        s1 += a[i + 1]
        s2 += a[i + 2]
        s3 += a[i + 3]
        s4 += a[i + 4]
        s5 += a[i + 5]
        s6 += a[i + 6]
        s7 += a[i + 7]
    s = ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))
    for i in range(lo + n - n % 8, lo + n):
        s += a[i]
    return s


@njit
def _pairwise_sum(a, n, todo, sums):
    """``a[:n].sum()`` of a float32 ``a`` in NumPy's (pairwise) order, so that kernels equal NumPy's sums
    bit for bit: ``sum(lo, n) = sum(lo, h) + sum(lo + h, n - h)``, ``h = n/2`` rounded down to a multiple
    of 8, down to ranges of at most 128 (``_block_sum``).

    Numba cannot cache a recursive function, so the recursion runs on two scratch stacks: ``todo``
    (int64 ``[64, 3]``: ranges ``lo, n`` and how far each got) and ``sums`` (float32 ``[64]``: finished
    sums, the left one of a pair below the right one).
    """
    if n <= 128:
        return _block_sum(a, 0, n)
    top, done = 0, 0                                   # the top entry of todo, entries in sums
    todo[0, 0], todo[0, 1], todo[0, 2] = 0, n, 0
    while top >= 0:
        lo, m, step = todo[top, 0], todo[top, 1], todo[top, 2]
        h = m // 2 - (m // 2) % 8
        if m <= 128:                                   # a leaf: its sum goes on the stack
            sums[done] = _block_sum(a, lo, m)
            done += 1
            top -= 1
        elif step < 2:                                 # step 0: the left half next, step 1: the right
            todo[top, 2] = step + 1
            top += 1
            todo[top, 0], todo[top, 1], todo[top, 2] = lo + step * h, h if step == 0 else m - h, 0
        else:                                          # both halves summed: add them
            sums[done - 2] = sums[done - 2] + sums[done - 1]
            done -= 1
            top -= 1
    return sums[0]


@njit
def _rms_norm_kernel(x, gamma, eps, y):
    """``y [N, d] = rms_norm(x [N, d], gamma, eps)`` of ``minq.models.llama``, bit for bit: the same
    float32 operations in the same order, the mean's sum in NumPy's pairwise order (``_pairwise_sum``)."""
    N, d = x.shape
    sq, todo, sums = np.empty(d, np.float32), np.empty((64, 3), np.int64), np.empty(64, np.float32)
    for i in range(N):
        for j in range(d):
            sq[j] = x[i, j] * x[i, j]
        ms = _pairwise_sum(sq, d, todo, sums) / np.float32(d)      # mean(x^2)
        r = np.float32(1.0) / np.sqrt(ms + eps)
        for j in range(d):
            y[i, j] = x[i, j] * r * gamma[j]


# --- exp, SwiGLU -------------------------------------------------------------------------------------

# exp(v) = 2^z * exp(r), z = round(v / ln 2), r = v - z ln 2 in [-ln2/2, ln2/2] (ln 2 in two parts, so
# that z ln 2 is exact: Cody and Waite): exp(r) is the polynomial of Cephes' expf, relative error ~1e-7,
# and 2^z is the float32 whose exponent bits are z + 127. Numba's own exp calls libm one value at a time
# (4x slower than np.exp); these plain loops the compiler vectorises.
_LOG2E = np.float32(1.4426950408889634)
_LN2_HI = np.float32(0.693359375)
_LN2_LO = np.float32(-2.12194440e-4)


@njit
def _exp_(v, bits):
    """``v[:] = exp(v)`` for a 1-D float32 ``v``, ``v`` clamped to [-87, 88] (float32's normal range);
    ``bits``: int32 scratch at least as long as ``v``. Equals ``np.exp`` to a relative 2e-7."""
    n = v.shape[0]
    for j in range(n):
        x = min(max(v[j], np.float32(-87.0)), np.float32(88.0))
        z = np.floor(x * _LOG2E + np.float32(0.5))                # nearest integer to x / ln 2
        r = x - z * _LN2_HI - z * _LN2_LO                          # |r| <= ln2 / 2
        p = np.float32(1.9875691500e-4)
        p = p * r + np.float32(1.3981999507e-3)
        p = p * r + np.float32(8.3334519073e-3)
        p = p * r + np.float32(4.1665795894e-2)
        p = p * r + np.float32(1.6666665459e-1)
        p = p * r + np.float32(5.0000001201e-1)
        v[j] = p * r * r + r + np.float32(1.0)                     # exp(r)
        bits[j] = (np.int32(z) + np.int32(127)) << np.int32(23)    # 2^z, as the bits of a float32
    two_z = bits.view(np.float32)
    for j in range(n):
        v[j] *= two_z[j]


def _silu_mul(gu, hidden: int):
    """``swiglu(gate, up)`` of the fused gate/up output ``gu [..., 2 hidden]`` (gate first) ->
    ``[..., hidden]``: ``_swiglu_kernel`` on blocks of rows when JIT is on, else the reference."""
    if not JIT_ENABLED:
        return swiglu(gu[..., :hidden], gu[..., hidden:])
    gu = np.ascontiguousarray(gu, dtype=np.float32)
    m = np.empty((*gu.shape[:-1], hidden), np.float32)
    gu2, m2 = gu.reshape(-1, 2 * hidden), m.reshape(-1, hidden)                  # [N, 2 hidden], [N, hidden]
    _parallel_for(lambda r: _swiglu_kernel(gu2[r], m2[r]), _row_blocks(len(m2)), work=gu.size)
    return m


@njit(float_division=True)                                         # NumPy's division: the loop vectorises
def _swiglu_kernel(gu, m):
    """``m [N, H] = swiglu(gu[:, :H], gu[:, H:])`` of ``minq.models.llama`` for ``gu [N, 2H]``, to 1e-6
    relative: the same float32 operations in the same order, with ``_exp_`` for ``np.exp``."""
    N, H = m.shape
    bits = np.empty(H, np.int32)
    for i in range(N):
        mi = m[i]
        for j in range(H):
            mi[j] = -gu[i, j]
        _exp_(mi, bits)                                            # exp(-gate)
        for j in range(H):
            mi[j] = gu[i, j] / (mi[j] + np.float32(1.0)) * gu[i, H + j]


# --- the causal softmax of an attention tile ---------------------------------------------------------


def _softmax_tile(s):
    """In place, for the scores ``s [t, g, S]`` of the last ``t`` of ``S`` positions (``g`` query heads):
    ``softmax(np.where(causal_mask(t, S)[:, None], -inf, s))``. ``_causal_softmax_kernel`` when JIT is on,
    else that reference expression. Returns ``s``."""
    t, S = s.shape[0], s.shape[-1]
    if JIT_ENABLED:
        _causal_softmax_kernel(s, S - t)
    else:
        s[...] = softmax(np.where(causal_mask(t, S)[:, None], -np.inf, s))
    return s


@njit
def _causal_softmax_kernel(s, first):
    """In place, for a C-contiguous ``s [t, g, S]`` whose query ``r`` sees keys ``0 .. first + r``:
    ``softmax(np.where(causal_mask(t, first + t)[:, None], -inf, s))`` of ``minq.models.llama`` to 1e-6
    relative (``_exp_`` for ``np.exp``); masked keys get exactly 0. Each row in one pass of the visible
    keys: max, ``_exp_``, sum (``_pairwise_sum``), scale by 1/sum. Single-threaded (``nogil``): the
    attention tiles run it on several Python threads."""
    t, g, S = s.shape
    bits, todo, sums = np.empty(S, np.int32), np.empty((64, 3), np.int64), np.empty(64, np.float32)
    for r in range(t):
        n = first + r + 1                                          # keys 0 .. first + r are visible
        for h in range(g):
            row = s[r, h]
            m0, m1, m2, m3 = row[0], row[0], row[0], row[0]        # 4 running maxima (see _block_sum)
            for j in range(0, n - n % 4, 4):
                m0 = max(m0, row[j])
                m1 = max(m1, row[j + 1])
                m2 = max(m2, row[j + 2])
                m3 = max(m3, row[j + 3])
            m = max(max(m0, m1), max(m2, m3))
            for j in range(n - n % 4, n):
                m = max(m, row[j])
            for j in range(n):
                row[j] -= m
            _exp_(row[:n], bits)
            inv = np.float32(1.0) / _pairwise_sum(row, n, todo, sums)
            for j in range(n):
                row[j] *= inv
            for j in range(n, S):
                row[j] = 0.0
