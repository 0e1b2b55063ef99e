"""Chapter 09's build exercises (notebooks/09_kv_cache.ipynb): the quantized cache by hand.

Exercises 1-6 (recall, derive) have their answers in notebooks/solutions/09_kv_cache.md.
"""

from __future__ import annotations

import numpy as np

from minq import kvcache_quant
from minq.kvcache_quant import KVSpec, fake_quantize_kv
from minq.testing import check

__all__ = ["exercise_7", "exercise_8", "exercise_9"]

_QUANTIZERS = (kvcache_quant.fake_quantize_kv, kvcache_quant._Store._quantize, kvcache_quant._Store.read,
               kvcache_quant._Store.append)


def _keys(args):
    """float32 keys ``[T, hd]`` with outlier channels, an all-equal group, values on a coarse grid."""
    seed, T, bits = args
    r = np.random.default_rng(seed)
    x = r.standard_normal((T, 64)) * np.exp(r.uniform(-2, 2.5, 64))          # channels of very different size
    if seed % 3 == 0:
        x[:, :32] = 1.5                                                      # a flat group: range 0
    if seed % 3 == 1:
        x = np.round(x * 4) / 4
    return x.astype(np.float32), bits


def per_token(x, bits):
    """The reference of exercise 7: ``fake_quantize_kv`` per token, groups of 32 channels."""
    return fake_quantize_kv(x[None, None], KVSpec("int", bits, group=32), "token")[0, 0]


def exercise_7(fn) -> bool:
    """Per-token int quantization of keys as the cache stores them: ``fn(x, bits) -> x_hat`` float32 ``[T, 64]``.

    Groups of 32 channels of one token: ``lo, hi`` = the group's min and max; ``m`` = ``lo`` as float16,
    moved one float16 step down if it came out above ``lo``; ``s = (hi - m) / (2^bits - 1)`` computed in
    float32, at least 2^-14, rounded *up* to float16; ``q = clip(rint((x - m) / s), 0, 2^bits - 1)`` (with
    ``m`` and ``s`` as float32), ``x_hat = q s + m``. Checked bit for bit against
    ``minq.kvcache_quant.fake_quantize_kv``, which is off limits.
    """
    st = _st()
    cases = st.tuples(st.integers(0, 2**32 - 1), st.integers(1, 40), st.sampled_from([2, 4, 8])).map(_keys)
    return check(fn, per_token, cases, n=30, forbid=_QUANTIZERS)


def per_channel(x, bits):
    """The reference of exercise 8: ``fake_quantize_kv`` per channel, groups of 32 positions."""
    return fake_quantize_kv(x[None, None], KVSpec("int", bits, group=32), "channel")[0, 0]


def exercise_8(fn) -> bool:
    """Per-channel int quantization (KIVI's keys): ``fn(x, bits) -> x_hat`` for ``x`` float32 ``[T, 64]``,
    T a multiple of 32: the same rule as exercise 7, on groups of 32 *positions* of one channel. Checked
    against ``minq.kvcache_quant.fake_quantize_kv(..., "channel")``, which is off limits."""
    st = _st()
    cases = st.tuples(st.integers(0, 2**32 - 1), st.integers(1, 3).map(lambda n: 32 * n),
                      st.sampled_from([2, 4])).map(_keys)
    return check(fn, per_channel, cases, n=30, forbid=_QUANTIZERS)


def reads_quantized(T, window, group):
    """The reference of exercise 9: ``[T, T]`` bool, query t reads key j quantized."""
    spec = KVSpec("int", 4, "channel", "token", group, window)
    j = np.arange(T)
    return np.stack([(j < spec.quantized_prefix(t + 1)) & (j <= t) for t in range(T)])


def exercise_9(fn) -> bool:
    """Which keys does each query read quantized? ``fn(T, window, group) -> M`` bool ``[T, T]`` for a KIVI-style
    cache (keys per channel in groups of ``group`` positions, the last ``window`` positions in float):
    ``M[t, j]`` is True when the token at position ``t``, decoded with positions ``0 .. t`` in the cache,
    reads key ``j`` dequantized (False for the keys it reads in float and for the later ones it cannot
    see). Checked against ``KVSpec.quantized_prefix``, which is off limits."""
    st = _st()
    cases = st.tuples(st.integers(1, 70), st.integers(0, 40), st.sampled_from([1, 4, 8, 32]))
    return check(fn, reads_quantized, cases, n=40, forbid=(KVSpec.quantized_prefix,))


def _st():
    from minq.testing import _st as st

    return st()
