"""Chapter 05's build exercises (notebooks/05_qat.ipynb): the gradients of QAT by hand, in NumPy.

Exercises 1-6 (recall, derive) have their answers in notebooks/solutions/05_qat.md.
"""

from __future__ import annotations

import numpy as np

from minq.testing import check

__all__ = ["exercise_7", "exercise_8", "exercise_9"]


def _torch():
    from minq._backend import require_torch

    return require_torch()


def _qat():
    from minq import qat

    return qat


def _forbidden():
    q = _qat()
    return (q.fake_quantize, q._StraightThrough.forward, q._StraightThrough.backward, q.LSQQuantizer.forward,
            q._LSQ.forward, q._LSQ.backward, q.LSQQuantizer.__init__, q.LSQQuantizer.to_grouped)


def _weights(args):
    """float32 ``W [out, in]`` (rows of very different size, some on a coarse grid) and a gradient ``g``."""
    seed, out, n_in, bits = args
    r = np.random.default_rng(seed)
    W = r.standard_normal((out, n_in)) * np.exp(r.uniform(-3, 1, (out, 1)))
    if seed % 3 == 0:
        W = np.round(W * 8) / 8
    g = r.standard_normal((out, n_in))
    return W.astype(np.float32), g.astype(np.float32), bits


def ste_backward(W, g, s, z, bits):
    """The reference of exercise 7: ``dL/dW`` of chapter 05's clipped STE, by torch autograd."""
    torch = _torch()
    Wt = torch.tensor(W, requires_grad=True)
    W_hat = _qat().fake_quantize(Wt, bits=bits, group_size=-1, s=torch.tensor(s), z=torch.tensor(z), ste="clipped")
    W_hat.backward(torch.tensor(g))
    return Wt.grad.numpy()


def _ste_case(args):
    W, g, bits = _weights(args)
    qmax = 2**bits - 1
    lo, hi = W.min(1, keepdims=True), W.max(1, keepdims=True)
    s = np.maximum((hi - lo) / qmax * np.float32(0.8), np.float32(1e-3)).astype(np.float32)   # a tight grid:
    z = np.clip(np.rint(-lo / s), 0, qmax).astype(np.float32)                                    # some W outside
    return W, g, s, z, bits


def exercise_7(fn) -> bool:
    """The clipped straight-through estimator: ``fn(W, g, s, z, bits) -> dW`` float32 ``[out, in]``.

    ``W`` float32 ``[out, in]``, ``g = dL/dW_hat`` of the same shape, a given grid per row: ``s, z``
    float32 ``[out, 1]`` (``z`` an integer in ``[0, 2^bits - 1]``). The forward is ``W_hat = s (clip(round(W
    / s) + z, 0, qmax) - z)``; the clipped STE treats ``round`` as the identity and keeps the clip's
    derivative: ``dW = g * 1[s (0 - z) <= W <= s (qmax - z)]`` (a product: ``-0.0`` where a negative ``g`` is
    cut). Checked exactly against
    ``minq.qat.fake_quantize(..., ste="clipped")``'s autograd, which is off limits.
    """
    st = _st()
    cases = st.tuples(st.integers(0, 2**32 - 1), st.integers(1, 6), st.integers(1, 24),
                      st.sampled_from([2, 3, 4, 8])).map(_ste_case)
    return check(fn, ste_backward, cases, n=30, forbid=_forbidden())


def lsq_gradients(W, g, s, bits):
    """The reference of exercise 8: ``ds`` of LSQ (``beta = 0``, one step per row), by torch autograd."""
    torch = _torch()
    Wt = torch.tensor(W, requires_grad=True)
    lsq = _qat().LSQQuantizer(Wt.detach(), bits=bits, group_size=-1)
    with torch.no_grad():
        lsq.s.copy_(torch.tensor(s))
    lsq(Wt).backward(torch.tensor(g))
    return lsq.s.grad.numpy()


def _lsq_case(args):
    W, g, bits = _weights(args)
    Q_P = 2 ** (bits - 1) - 1
    s = (np.abs(W).max(1, keepdims=True) / Q_P * np.float32(0.7) + np.float32(1e-3)).astype(np.float32)
    return W, g, s, bits


def exercise_8(fn) -> bool:
    """LSQ's gradient for the step: ``fn(W, g, s, bits) -> ds`` float32 ``[out, 1]``.

    One learned step per row, ``s`` float32 ``[out, 1]``, no offset: ``v = W / s``, ``Q_N = 2^(bits-1)``,
    ``Q_P = 2^(bits-1) - 1``, ``W_hat = s clip(round(v), -Q_N, Q_P)`` and, with ``g = dL/dW_hat``,

        ds = sum over the row of g * (round(v) - v inside, -Q_N below, Q_P above), times 1 / sqrt(in * Q_P)

    ("inside": ``-Q_N < v < Q_P``; ``1 / sqrt(in * Q_P)`` is LSQ's gradient scale, ``N = in`` weights per
    step). Checked against ``minq.qat.LSQQuantizer``'s autograd within float32 summation order (rtol
    1e-5), which is off limits.
    """
    st = _st()
    cases = st.tuples(st.integers(0, 2**32 - 1), st.integers(1, 6), st.integers(1, 24),
                      st.sampled_from([2, 3, 4, 8])).map(_lsq_case)
    return check(fn, lsq_gradients, cases, n=30, rtol=1e-5, atol=1e-6, forbid=_forbidden())


def lsq_plus_init(W, bits):
    """The reference of exercise 9: LSQ+'s starting ``(s, beta)`` per row, each float32 ``[out, 1]``."""
    torch = _torch()
    lsq = _qat().LSQQuantizer(torch.tensor(W), bits=bits, group_size=-1, offset=True)
    return lsq.s.detach().numpy(), lsq.beta.detach().numpy()


def exercise_9(fn) -> bool:
    """LSQ+ starts on chapter 03's asymmetric grid: ``fn(W, bits) -> (s, beta)``, float32 ``[out, 1]`` each.

    Per row: chapter 03's asymmetric min-max scale (``lo = min(W, 0)``, ``hi = max(W, 0)``, ``s = (hi -
    lo) / (2^bits - 1)`` in float32, rounded *up* to float16 and back, 1 where the row is all zeros) and
    zero point ``z = clip(round(-lo / s), 0, 2^bits - 1)``; then ``beta = s (Q_N - z)`` with ``Q_N =
    2^(bits-1)``, so that LSQ's code ``v_bar = -Q_N`` sits at chapter 03's code 0. Checked exactly against
    ``minq.qat.LSQQuantizer(W, offset=True)``, which is off limits.
    """
    st = _st()
    cases = st.tuples(st.integers(0, 2**32 - 1), st.integers(1, 6), st.integers(1, 24),
                      st.sampled_from([2, 3, 4, 8])).map(lambda a: _weights(a)[::2])
    return check(fn, lsq_plus_init, cases, n=30, forbid=_forbidden())


def _st():
    from minq.testing import _st as st

    return st()
