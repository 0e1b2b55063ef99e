"""minq.runtime.gemv: the fused 4-bit dequantize-GEMV equals dequantize-then-matmul within the float32
error of its dot products, for every container it accepts; the others are refused by name."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from minq.groups import quantize_groups
from minq.runtime.gemv import BLOCK, Int4Gemv, gemv_reference

F32 = np.float32
EPS = np.finfo(F32).eps


def _bound(w, x):
    """``2 (BLOCK + n / BLOCK + 2) eps`` times the sum of the magnitudes that enter the sums (the codes
    term ``|s q x|`` and the zero-point term ``|s z| |x|`` of each group), plus ``eta = 2^-149`` (the
    smallest subnormal) for each of the ``4 n`` float operations, whose error below the normal range is
    absolute, not relative."""
    qp = w.qparams()
    out, n = w.shape
    q = w.codes.reshape(out, -1, w.g).astype(np.float64)                     # [out, G, g]
    s, z = np.float64(qp.s), np.float64(qp.z)                                 # [out or 1, G or 1, 1]
    ax = np.abs(x.astype(np.float64)).reshape(1, -1, w.g)
    mag = (np.abs(s) * (q * ax + np.abs(z) * ax)).sum(axis=(1, 2))           # [out]
    return 2 * (BLOCK + n / BLOCK + 2) * EPS * mag + 4 * n * 2.0**-149


@given(data=st.data())
def test_int4_gemv_equals_dequantize_then_matmul(data):
    out = data.draw(st.integers(1, 70))
    n = BLOCK * data.draw(st.integers(1, 6))
    group = data.draw(st.sampled_from([g for g in (64, 128, 192, -1) if g == -1 or n % g == 0]))
    symmetric = data.draw(st.booleans())
    el = st.floats(-100, 100, width=32)
    W = data.draw(hnp.arrays(F32, (out, n), elements=el))
    x = data.draw(hnp.arrays(F32, (n,), elements=el))
    w = quantize_groups(W, bits=4, group_size=group, symmetric=symmetric)
    y = Int4Gemv(w)(x)
    ref = w.dequantize().astype(np.float64) @ x.astype(np.float64)
    assert y.dtype == F32 and y.shape == (out,)
    assert (np.abs(y - ref) <= _bound(w, x)).all()
    assert np.allclose(gemv_reference(w, x), ref, rtol=1e-4, atol=1e-3 * (1 + np.abs(ref).max()))


def test_int4_gemv_on_a_model_sized_layer(rng):
    W, x = rng.standard_normal((1536, 576)).astype(F32), rng.standard_normal(576).astype(F32)
    w = quantize_groups(W, bits=4, group_size=64)
    k = Int4Gemv(w)
    ref = w.dequantize().astype(np.float64) @ x.astype(np.float64)
    assert (np.abs(k(x) - ref) <= _bound(w, x)).all()
    assert k.nbytes == 1536 * 576 // 2 + 2 * 4 * 1536 * 9                   # codes + float32 s and m


def test_int4_gemv_bad_inputs(rng):
    W = rng.standard_normal((8, 128)).astype(F32)
    for w, match in [(quantize_groups(W, bits=3, group_size=64), "4-bit"),
                     (quantize_groups(W, bits=4, group_size=32), "multiple of 64"),
                     (quantize_groups(W, bits=4, group_size=64, zero_point="float"), "integer")]:
        with pytest.raises(ValueError, match=match):
            Int4Gemv(w)
    with pytest.raises(TypeError, match="GroupedAffine"):
        Int4Gemv(W)
    k = Int4Gemv(quantize_groups(W, bits=4, group_size=64))
    with pytest.raises(ValueError, match="x must be"):
        k(np.ones(64, F32))
    with pytest.raises(ValueError, match="x"):
        k(np.full(128, np.inf, F32))
