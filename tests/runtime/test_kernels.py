"""The fast runtime's Numba kernels against the NumPy references of ``minq.models.llama`` they replace.

Each kernel runs twice: compiled, and as its pure-Python body (``py_func``, what ``NUMBA_DISABLE_JIT=1``
gives). The dispatchers run once with JIT on and once off (then they call the reference itself), in one
piece and in many row blocks on 2 threads (the ``threads`` fixture).
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minq._jit import py_func
from minq.models.llama import causal_mask, rms_norm, rope, rope_tables, softmax, swiglu
from minq.runtime import kernels as K
from minq.runtime import parallel as P
from minq.testing import assert_close, assert_equal

_rows = st.tuples(st.integers(1, 40), st.sampled_from([1, 5, 8, 9, 64, 127, 128, 129, 300, 576, 1000]),
                  st.floats(1e-3, 1e3), st.integers(0, 2**32 - 1))


@pytest.fixture(params=["serial", "threads"])
def threads(request, monkeypatch):
    """Run the row-wise kernels in one piece, or in blocks of rows on 2 threads (whatever the machine)."""
    if request.param == "threads":
        monkeypatch.setattr(P, "PARALLEL_MIN_WORK", 0)
        monkeypatch.setattr(P, "_threads", lambda: 2)
        monkeypatch.setattr(P, "ROW_BLOCK", 2)                     # many blocks, also of tiny inputs
    else:
        monkeypatch.setattr(P, "PARALLEL_MIN_WORK", 2**62)
    return request.param


def test_rope_kernel_equals_numpy_rope(rng, monkeypatch, threads):
    """The fast RoPE (Numba kernel, strided in and out) is the NumPy ``rope`` times a scale, bit for bit."""
    x = rng.standard_normal((2, 5, 3, 4, 16)).astype(np.float32)[:, :, :, 1:]   # [B, T, H, G, hd], strided
    cos, sin = rope_tables(np.arange(7, 12), 16, 10000.0)
    want = rope(x, cos[:, None, None], sin[:, None, None]) * np.float32(0.125)
    for kernel in (K._rope_kernel, py_func(K._rope_kernel)):
        out = np.empty((2, 3, 5, 3, 16), np.float32).transpose(0, 2, 1, 3, 4)   # a transposed view
        kernel(x, cos, sin, np.float32(0.125), out)
        assert_equal(out, want, name=str(kernel))
    for jit in (True, False):                                        # NUMBA_DISABLE_JIT=1: the NumPy rope
        monkeypatch.setattr(K, "JIT_ENABLED", jit)
        out = np.empty(x.shape, np.float32)
        K._rope_to(x, cos, sin, out, scale=0.125)
        assert_equal(out, want, name=f"jit={jit}")
    # rope rotates pairs: norms of (x[i], x[i + hd/2]) are kept
    r = rope(x, cos[:, None, None], sin[:, None, None])
    assert_close(r[..., :8] ** 2 + r[..., 8:] ** 2, x[..., :8] ** 2 + x[..., 8:] ** 2, atol=1e-5)


@given(_rows)
def test_rms_norm_kernel_equals_numpy_bit_for_bit(args):
    """RMSNorm's kernel adds in NumPy's pairwise order: it equals ``rms_norm`` exactly, for any width."""
    N, d, scale, seed = args
    r = np.random.default_rng(seed)
    x = (r.standard_normal((N, d)) * scale).astype(np.float32)
    gamma = r.standard_normal(d).astype(np.float32)
    want = rms_norm(x, gamma, 1e-5)
    for kernel in (K._rms_norm_kernel, py_func(K._rms_norm_kernel)):
        y = np.empty_like(x)
        kernel(x, gamma, np.float32(1e-5), y)
        assert_equal(y, want, name=str(kernel))


def test_rms_norm_dispatch(rng, monkeypatch, threads):
    x = rng.standard_normal((2, 77, 576)).astype(np.float32)        # 154 rows
    gamma = rng.standard_normal(576).astype(np.float32)
    for jit in (True, False):                                        # NUMBA_DISABLE_JIT=1: the NumPy rms_norm
        monkeypatch.setattr(K, "JIT_ENABLED", jit)
        assert_equal(K._rms_norm(x, gamma, 1e-5), rms_norm(x, gamma, 1e-5), name=f"jit={jit}")
        assert_equal(K._rms_norm(x[:, -1:], gamma, 1e-5), rms_norm(x[:, -1:], gamma, 1e-5))  # a strided view


@given(st.lists(st.floats(-120, 120, width=32), min_size=1, max_size=300))
def test_exp_kernel_close_to_numpy(values):
    """``_exp_`` is ``np.exp`` of its input clamped to [-87, 88], to 4e-7 relative (a few float32 ulps)."""
    v = np.array(values, np.float32)
    want = np.exp(np.clip(v, -87, 88))
    for kernel in (K._exp_, py_func(K._exp_)):
        y = v.copy()
        kernel(y, np.empty(len(v), np.int32))
        assert_close(y, want, rtol=4e-7, name=str(kernel))


def test_exp_kernel_golden():
    v = np.array([0.0, 1.0, -1.0, np.log(2.0), 10.0, -20.0, -87.0, 88.0, -1000.0, 1000.0], np.float32)
    K._exp_(v, np.empty(len(v), np.int32))
    assert v[0] == 1.0 and v[3] == np.float32(2.0)
    assert_close(v[[1, 2, 4, 5]], np.exp([1.0, -1.0, 10.0, -20.0]), rtol=3e-7)
    assert v[8] == v[6] and v[9] == v[7] and np.isfinite(v).all()       # clamped, never 0 or inf


@given(_rows)
def test_swiglu_kernel_close_to_numpy(args):
    N, H, scale, seed = args
    r = np.random.default_rng(seed)
    gu = (r.standard_normal((N, 2 * H)) * min(scale, 50.0)).astype(np.float32)
    with np.errstate(over="ignore"):                                 # exp(-gate) = inf: silu = -0
        want = swiglu(gu[:, :H], gu[:, H:])
    for kernel in (K._swiglu_kernel, py_func(K._swiglu_kernel)):
        m = np.empty((N, H), np.float32)
        kernel(gu, m)
        assert_close(m, want, rtol=1e-6, atol=1e-30, name=str(kernel))


def test_silu_mul_dispatch(rng, monkeypatch, threads):
    gu = (rng.standard_normal((2, 75, 2 * 96)) * 10).astype(np.float32)
    gu[0, 0, :4] = [-100.0, 100.0, 0.0, -0.0]                         # exp(-gate) overflows / is 1
    with np.errstate(over="ignore"):
        want = swiglu(gu[..., :96], gu[..., 96:])
    for jit in (True, False):
        monkeypatch.setattr(K, "JIT_ENABLED", jit)
        with np.errstate(over="ignore"):
            m = K._silu_mul(gu, 96)
        assert m.shape == (2, 75, 96) and m.dtype == np.float32
        assert_close(m, want, rtol=1e-6, atol=1e-30, name=f"jit={jit}")


@given(st.integers(1, 70), st.integers(0, 70), st.integers(1, 4), st.floats(0.1, 100.0),
       st.integers(0, 2**32 - 1))
def test_causal_softmax_kernel_close_to_numpy(t, first, g, scale, seed):
    """The fused mask + softmax kernel equals the masked ``softmax`` of ``attention``; masked keys get 0."""
    S = first + t
    s = (np.random.default_rng(seed).standard_normal((t, g, S)) * scale).astype(np.float32)
    masked = np.broadcast_to(causal_mask(t, S)[:, None], s.shape)    # [t, g, S]
    want = softmax(np.where(masked, -np.inf, s))
    assert (want[masked] == 0).all()
    for kernel in (K._causal_softmax_kernel, py_func(K._causal_softmax_kernel)):
        p = s.copy()
        kernel(p, first)
        assert_close(p, want, rtol=1e-6, atol=1e-7, name=str(kernel))
        assert (p[masked] == 0).all()
        assert_close(p.sum(axis=-1), np.ones((t, g), np.float32), atol=1e-6)


def test_softmax_tile_dispatch(rng, monkeypatch):
    s = (rng.standard_normal((5, 3, 12)) * 4).astype(np.float32)     # the last 5 of 12 positions
    want = softmax(np.where(causal_mask(5, 12)[:, None], -np.inf, s))
    for jit in (True, False):
        monkeypatch.setattr(K, "JIT_ENABLED", jit)
        p = s.copy()
        assert K._softmax_tile(p) is p
        assert_close(p, want, rtol=1e-6, atol=1e-7, name=f"jit={jit}")
