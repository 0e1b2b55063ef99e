"""minq.runtime.gemv: the fused grouped-int dequantize-GEMV (8, 4, 3 and 2 bits) equals dequantize-then-matmul
within the float32 error of its sums, for every container it accepts; a wrong code or scale is outside that
bound; the others are refused by name."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from minq._jit import py_func
from minq.groups import quantize_groups
from minq.runtime.gemv import (
    _ROWS,
    BITS,
    BLOCK,
    SUPER,
    GroupedGemv,
    Int4Gemv,
    dequant_rows,
    gemv_reference,
    split_input,
)

F32 = np.float32
EPS = np.finfo(F32).eps


def _bound(w, X):
    """``(SUPER BLOCK + n / BLOCK + G + 8) eps`` times the sum of the magnitudes that enter the sums (the codes
    term ``|s q x|`` and the zero-point term ``|s z| |x|`` of each group): the float32 error of summing, in
    any order, a superblock (256 terms), then the superblocks and blocks of a row (``n / 64``), then its ``G``
    groups, plus the product roundings and the group sums of ``x`` (pairwise). Plus ``eta = 2^-149`` (the
    smallest subnormal) for each of the ``4 n`` float operations, whose error is absolute below the normal
    range. ``X [T, n]`` -> ``[T, out]`` (or ``x [n]`` -> ``[out]``)."""
    qp = w.qparams()
    out, n = w.shape
    q = w.codes.reshape(out, -1, w.g).astype(np.float64)                     # [out, G, g]
    s, z = np.abs(np.float64(qp.s)), np.abs(np.float64(qp.z))                 # [out or 1, G or 1, 1]
    Wmag = np.broadcast_to(s * (q + z), q.shape).reshape(out, n)               # |s| (q + |z|) [out, n]
    mag = np.abs(np.float64(X)) @ Wmag.T                                       # [T, out] or [out]
    depth = SUPER * BLOCK + n / BLOCK + n / w.g + 8
    return depth * EPS * mag + 4 * n * 2.0**-149


def _ref(w, X):
    return np.float64(X) @ w.dequantize().astype(np.float64).T


@given(data=st.data())
def test_grouped_gemv_equals_dequantize_then_matmul(data):
    """Any width, shape, group (64k inputs, whole rows, per tensor), zero point (int, symmetric, float) and row
    range: ``W_hat[rows] x`` within ``_bound``."""
    bits = data.draw(st.sampled_from(BITS))
    out = data.draw(st.integers(1, 70))
    n = BLOCK * data.draw(st.integers(1, 10))
    group = data.draw(st.sampled_from([g for g in (64, 128, 192, -1, None) if g in (-1, None) or n % g == 0]))
    symmetric = data.draw(st.booleans())
    zero_point = "int" if symmetric else data.draw(st.sampled_from(["int", "float"]))
    el = st.floats(-100, 100, width=32)
    W = data.draw(hnp.arrays(F32, (out, n), elements=el))
    x = data.draw(hnp.arrays(F32, (n,), elements=el))
    w = quantize_groups(W, bits=bits, group_size=group, symmetric=symmetric, zero_point=zero_point,
                        scale_dtype="float32" if zero_point == "float" else "float16")   # a float16 z overflows
    k = GroupedGemv(w)
    y, ref = k(x), _ref(w, x)
    assert y.dtype == F32 and y.shape == (out,)
    assert (np.abs(y - ref) <= _bound(w, x)).all()
    a = data.draw(st.integers(0, out - 1))
    b = data.draw(st.integers(a + 1, out))
    part = k.product(split_input(x, k.g, k.ways), slice(a, b))
    assert part.shape == (b - a,) and (np.abs(part - ref[a:b]) <= _bound(w, x)[a:b]).all()
    assert np.allclose(gemv_reference(w, x), ref, rtol=1e-4, atol=1e-3 * (1 + np.abs(ref).max()))


@pytest.mark.parametrize("bits", BITS)
def test_model_sized_layer_and_what_the_bound_catches(bits, rng):
    """SmolLM2's gate/up shape: within the bound, which is < 1% of a typical |y|; one code with its top bit
    flipped (at the largest input of its row), or each block scaled by its neighbour group's scale, is not."""
    W, x = rng.standard_normal((1536, 576)).astype(F32), rng.standard_normal(576).astype(F32)
    w = quantize_groups(W, bits=bits, group_size=64)
    k = GroupedGemv(w)
    ref, bound = _ref(w, x), _bound(w, x)
    assert (np.abs(k(x) - ref) <= bound).all()
    assert bound.max() < 0.01 * np.median(np.abs(ref))
    assert k.nbytes == 1536 * 576 * bits // 8 + 2 * 4 * 1536 * 9 + 4 * 9     # codes, float32 s and m, gidx
    q = w.codes.copy()
    j = int(np.argmax(np.abs(x)))
    q[:, j] ^= np.uint8(1 << (bits - 1))                                       # a wrong code in every row
    bad = type(w).from_codes(q, w.s, w.qparams().z[..., 0], bits=bits, group_size=64)
    assert (np.abs(k(x) - _ref(bad, x)) > _bound(bad, x)).mean() > 0.99
    k.gidx = np.roll(k.gidx, 1)                                                # each block: another group's s
    assert (np.abs(k(x) - ref) > bound).mean() > 0.9


@pytest.mark.parametrize("bits", BITS)
def test_python_bodies_and_tiles(bits, rng):
    """The kernels' pure-Python bodies (what runs under NUMBA_DISABLE_JIT=1) give the same products within the
    bound (a layer with superblocks and leftover blocks: 5 blocks a row); ``dequant_rows`` is chapter 03's
    ``s (q - z)`` within one rounding of ``s q`` and ``m``."""
    W, x = rng.standard_normal((6, 320)).astype(F32), rng.standard_normal(320).astype(F32)
    w = quantize_groups(W, bits=bits, group_size=64)
    k = GroupedGemv(w)
    X, xs = split_input(x, k.g, k.ways)
    for kernel in (_ROWS[bits], py_func(_ROWS[bits])):
        y = np.empty(6, F32)
        kernel(k.P, k.s, k.m, k.gidx, X, xs, y)
        assert (np.abs(y - _ref(w, x)) <= _bound(w, x)).all()
    W_hat = w.dequantize()
    for kernel in (dequant_rows, py_func(dequant_rows)):
        out = np.empty_like(W_hat)
        kernel(k.P, k.s, k.m, k.gidx, bits, out)
        assert np.allclose(out, W_hat, rtol=2 * EPS, atol=4 * EPS * np.abs(k.m).max())


def test_int4_gemv_is_the_grouped_kernel(rng):
    W = rng.standard_normal((20, 128)).astype(F32)
    assert Int4Gemv is GroupedGemv
    x = rng.standard_normal(128).astype(F32)
    w = quantize_groups(W, bits=4, group_size=64)
    assert (np.abs(Int4Gemv(w)(x) - _ref(w, x)) <= _bound(w, x)).all()


def test_grouped_gemv_bad_inputs(rng):
    W = rng.standard_normal((8, 128)).astype(F32)
    for w, match in [(quantize_groups(W, bits=5, group_size=64), "bits"),
                     (quantize_groups(W, bits=4, group_size=32), "multiple of 64"),
                     (quantize_groups(W[:, :100], bits=4, group_size=64, ragged=True), "ragged"),
                     (quantize_groups(torch.from_numpy(W), bits=4, group_size=64), "NumPy")]:
        with pytest.raises(ValueError, match=match):
            GroupedGemv(w)
    with pytest.raises(TypeError, match="GroupedAffine"):
        GroupedGemv(W)
    k = GroupedGemv(quantize_groups(W, bits=3, group_size=64))
    with pytest.raises(ValueError, match="x must be"):
        k(np.ones(64, F32))
    with pytest.raises(ValueError, match="x must be"):
        k(torch.ones(128))
    with pytest.raises(ValueError, match="x"):
        k(np.full(128, np.inf, F32))
    with pytest.raises(TypeError, match="x"):
        k(np.ones(128, np.int32))
    with pytest.raises(ValueError, match="x"):
        k(np.ones((1, 128), F32))
