"""The Numba kernels of the importance-matrix quantizers equal the NumPy reference, and both equal llama.cpp
where float32 sums overflow (NaN sub-block scales, which ggml's ``if (ax > amax)`` loops skip).

Oracles: ``minq.kquants_weighted.quantize_weighted`` (the reference, itself checked against llama.cpp by
tests/test_kquants_imatrix.py) and the overflow cases of data/kquants/golden_imatrix.npz
(``w_gauss_huge``, ``x_huge``: scripts/make_imatrix_golden.py).
"""

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from minq import (
    kquants_k,
    kquants_kernels_k,
    kquants_kernels_weighted,
    kquants_kernels_weighted_k,
    kquants_search,
    kquants_weighted,
)
from minq._jit import py_func
from minq.kquants import TYPES, quantize, quantize_reference
from minq.kquants_kernels_weighted import quantize_weighted_kernel
from minq.kquants_weighted import quantize_weighted

DATA = Path(__file__).resolve().parents[1] / "data" / "kquants"
WEIGHTED = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
IMATRIX = ("lognormal", "zeros", "skewed", "huge")


def _imatrix(kind, n, seed):
    """log-normal; with zeros (single columns and whole blocks of 32); skewed (a few columns 1e4 x);
    huge (a few columns 1e37: float32 sums overflow, sub-block scales become NaN)."""
    rng = np.random.default_rng(seed)
    w = rng.lognormal(size=n)
    if kind == "zeros":
        w[rng.random(n) < 0.3] = 0.0
        b = rng.integers(0, n // 32)
        w[32 * b:32 * b + 32] = 0.0
    elif kind == "skewed":
        w[rng.choice(n, 4, replace=False)] *= 1e4
    elif kind == "huge":
        w[rng.choice(n, 3, replace=False)] = 1e37
    return w.astype(np.float32)


rows = st.tuples(st.integers(1, 3), st.integers(1, 3)).flatmap(
    lambda s: hnp.arrays(np.float32, (s[0], 256 * s[1]), elements=st.floats(-1, 1, width=32)))


def _differing(got, want, qtype):
    n = TYPES[qtype].nbytes
    return int((got.view(np.uint8).reshape(-1, n) != want.view(np.uint8).reshape(-1, n)).any(axis=1).sum())


@pytest.mark.parametrize("qtype", WEIGHTED)
@given(x=rows, scale=st.sampled_from([1e-6, 1e-3, 1.0, 30.0, 1e3]), kind=st.sampled_from(IMATRIX),
       seed=st.integers(0, 2**32 - 1))
def test_kernel_equals_reference(qtype, x, scale, kind, seed):
    x = x * np.float32(scale)
    w = _imatrix(kind, x.shape[1], seed)
    with np.errstate(all="ignore"):
        got, want = quantize_weighted_kernel(x, qtype, w), quantize_weighted(x, qtype, w)
    assert got.dtype == want.dtype and got.tobytes() == want.tobytes()


def test_quantize_runs_the_kernel_and_quantize_reference_the_reference(monkeypatch):
    x = np.random.default_rng(3).standard_normal((2, 512)).astype(np.float32)
    w = _imatrix("lognormal", 512, 4)
    want = quantize_weighted(x, "Q4_K", w).view(np.uint8).reshape(2, -1)

    def not_this_one(*args):
        raise AssertionError("the wrong quantizer ran")

    with monkeypatch.context() as m:
        m.setattr(kquants_weighted, "quantize_weighted", not_this_one)
        assert np.array_equal(quantize(x, "Q4_K", w), want)
    with monkeypatch.context() as m:
        m.setattr(kquants_kernels_weighted, "quantize_weighted_kernel", not_this_one)
        assert np.array_equal(quantize_reference(x, "Q4_K", w), want)


@pytest.mark.parametrize("qtype", WEIGHTED)
def test_kernels_run_as_plain_python(qtype, monkeypatch):
    """NUMBA_DISABLE_JIT=1 runs every kernel's Python body (a learner's debugger): the same bytes."""
    for mod in (kquants_kernels_weighted, kquants_kernels_weighted_k):
        for name, f in list(vars(mod).items()):
            if py_func(f) is not f:
                monkeypatch.setattr(mod, name, py_func(f))
    rng = np.random.default_rng(8)
    x = rng.standard_normal((1, 256)).astype(np.float32)
    x[0, :40] = 0                                            # an all-zero sub-block
    x[0, 64:96] *= np.float32(1e-41)                         # subnormal: 1 / range overflows (``_wide``)
    x[0, 200:232] = -np.abs(x[0, 200:232]) - np.float32(3)   # all negative
    w = _imatrix("zeros", 256, 9)
    with np.errstate(all="ignore"):
        got, want = kquants_kernels_weighted.quantize_weighted_kernel(x, qtype, w), quantize_weighted(x, qtype, w)
    assert got.tobytes() == want.tobytes()


@pytest.mark.parametrize("qtype", WEIGHTED)
def test_tiny_flat_and_negative_sub_blocks(qtype):
    """Sub-blocks where ggml's 1 / (max - min) overflows or the rounding leaves 2^22: the bit trick path."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 512)).astype(np.float32)
    x[0, :64] = rng.standard_normal(64).astype(np.float32) * np.float32(1e-41)
    x[1, 32:64] = -3.0
    x[2, :256] = -np.abs(x[2, :256]) - np.float32(5)
    x[3, ::2], x[3, 1::2] = 1e-44, 0.0
    x[4] = np.float32(1e-45) * rng.integers(-3, 4, 512).astype(np.float32)
    x[5, 100:140] = 2e-38
    w = _imatrix("lognormal", 512, 1)
    with np.errstate(all="ignore"):
        assert quantize_weighted_kernel(x, qtype, w).tobytes() == quantize_weighted(x, qtype, w).tobytes()


def test_signed_max_skips_nan_as_ggml():
    """C's ``if (fabsf(x) > amax)`` from 0: NaN is never kept, ties keep the first, zeros give +0.0."""
    nan = np.float32("nan")
    X = np.array([[nan, 1, -2, 2], [nan, nan, nan, nan], [0, -0.0, nan, -0.0], [-0.0, -0.0, -0.0, -0.0],
                  [1, nan, -np.inf, np.inf]], np.float32)
    mx, amax = kquants_search.signed_max(X)
    assert mx.tolist() == [-2, 0, 0, 0, -np.inf] and amax.tolist() == [2, 0, 0, 0, np.inf]
    assert not np.signbit(mx[1:4]).any()                    # +0.0, never -0.0
    for f in (kquants_kernels_k._signed_max, py_func(kquants_kernels_k._signed_max)):
        got = [f(r) for r in X]
        assert [float(m) for m, _ in got] == mx.tolist() and [float(a) for _, a in got] == amax.tolist()


def _finite(want, qtype, rows):
    """Per row: are all of the row's stored fp16 scales finite in llama.cpp's bytes?"""
    y = want.reshape(-1).view(TYPES[qtype].layout)
    ok = np.ones(len(y), bool)
    for f in ("d", "dmin", "m"):
        if f in y.dtype.names:
            ok &= np.isfinite(y[f])
    return ok.reshape(rows, -1).all(axis=1)


@pytest.mark.parametrize("qtype", WEIGHTED)
def test_overflowing_imatrix_bytes_equal_llama_cpp(qtype):
    """Importances of 1e37: sums overflow to inf, inf / inf scales are NaN. The kernel and the reference
    write llama.cpp's bytes for every block (NaN and inf scales included); ``quantize`` does for the
    rows whose scales llama.cpp stores finite, and raises ValueError for the others."""
    x = np.load(DATA / "golden.npz")["x_gauss"]
    z = np.load(DATA / "golden_imatrix.npz")
    w, want = z["w_gauss_huge"], z[f"q_gauss_{qtype}_huge"]
    with np.errstate(all="ignore"):
        assert _differing(quantize_weighted_kernel(x, qtype, w), want, qtype) == 0
        assert _differing(quantize_weighted(x, qtype, w), want, qtype) == 0
    finite = _finite(want, qtype, len(x))
    assert finite.any()
    for q in (quantize, quantize_reference):
        assert _differing(q(x[finite], qtype, w), want[finite], qtype) == 0
    if not finite.all():
        with pytest.raises(ValueError, match="too large"):
            quantize(x[~finite][:1], qtype, w)


@pytest.mark.parametrize("qtype", ("Q3_K", "Q6_K"))
def test_overflowing_values_without_imatrix_bytes_equal_llama_cpp(qtype):
    """|x| ~ 1e15 without an imatrix: the x^2-weighted sums overflow, NaN sub-block scales are skipped
    (a Q3_K block of only NaN scales stores d = 0); the kernel and the reference write llama.cpp's bytes."""
    z = np.load(DATA / "golden_imatrix.npz")
    x, want = z["x_huge"], z[f"q_huge_{qtype}_none"]
    with np.errstate(all="ignore"):
        assert _differing(kquants_k.quantize_blocks(x.reshape(-1, 256), qtype), want, qtype) == 0
        assert _differing(kquants_kernels_k.quantize_k_kernel(x.reshape(-1, 256), qtype), want, qtype) == 0
    finite = _finite(want, qtype, len(x))
    if finite.any():
        for q in (quantize, quantize_reference):
            assert _differing(q(x[finite], qtype), want[finite], qtype) == 0
