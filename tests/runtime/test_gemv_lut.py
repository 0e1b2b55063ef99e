"""minq.runtime.gemv_lut: the NF4 (codebook in registers) and FP8 (codes shifted into float32 bits) GEMVs and
packed linears equal dequantize-then-matmul within the float32 error of their sums, decode and prefill, on
any row range; FP8's decode is its 256-entry table; a wrong code or scale falls outside the bound; the
weights they do not take stay float32, and bad inputs are refused by name."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import minq
from minq import fp8
from minq._jit import py_func
from minq.fp8_model import FP8Weight
from minq.nf4 import CODEBOOK, NF4Weight
from minq.runtime.gemv_lut import _FP8_KERNELS, FP8Gemv, NF4Gemv, _rows_nf4, fp8_linear, nf4_linear
from minq.runtime.packed import DECODE_TOKENS, TILE, PackedGroup, packed_linear

F32 = np.float32
EPS = np.finfo(F32).eps


def _bound(W_hat, X):
    """``(256 + n / 64 + 8) eps |X| @ |W_hat|^T``: the float32 error of the kernels' sums in any order (a
    superblock of 4 x 64 codes or an NF4 block, then the blocks of a row), with the product roundings, plus
    ``2^-149`` for each of ``4 n`` operations (subnormals). Every table value is exact, so ``|W_hat|`` (the
    dequantized weight, float32) holds the magnitudes of the terms; a BLAS prefill of rows of <= 576 inputs
    is within it too."""
    n = W_hat.shape[1]
    depth = 256 + n / 64 + 8
    return depth * EPS * (np.abs(np.float64(X)) @ np.abs(np.float64(W_hat)).T) + 4 * n * 2.0**-149


def _ref(W_hat, X):
    return np.float64(X) @ np.float64(W_hat).T


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
def test_fp8_decode_is_the_256_entry_table(fmt):
    """Every finite code decodes to ``minq.fp8.decode``'s value bit for bit (signed zeros and subnormals
    included); the NaN / Inf codes are the ones a weight must not hold."""
    value, _, _ = _FP8_KERNELS[fmt]
    table = fp8.decode(np.arange(256, dtype=np.uint8), fmt)
    codes = np.arange(256, dtype=np.uint8).view(np.int8)
    got = np.array([value(c) for c in codes], F32)
    finite = np.isfinite(table)
    assert (got[finite].view(np.uint32) == table[finite].view(np.uint32)).all()
    assert (~finite).sum() == (2 if fmt == "e4m3" else 8)
    assert (np.array([py_func(value)(c) for c in codes], F32)[finite] == table[finite]).all()


@given(data=st.data())
def test_nf4_gemv_property(data):
    """Rows of whole blocks (64 or 128), plain or double-quantized absmax: ``W_hat[rows] x`` within the bound."""
    B = data.draw(st.sampled_from([64, 128]))
    out, n = data.draw(st.integers(1, 70)), B * data.draw(st.integers(1, 6))
    el = st.floats(-100, 100, width=32)
    W = data.draw(hnp.arrays(F32, (out, n), elements=el))
    x = data.draw(hnp.arrays(F32, (n,), elements=el))
    w = NF4Weight.quantize(W, B, double_quant=data.draw(st.booleans()))
    k = NF4Gemv(w)
    W_hat = w.dequantize()
    assert (np.abs(k(x) - _ref(W_hat, x)) <= _bound(W_hat, x)).all()
    a = data.draw(st.integers(0, out - 1))
    b = data.draw(st.integers(a + 1, out))
    part = k.product(k._parts(x), range(a, b))
    assert part.shape == (b - a,) and (np.abs(part - _ref(W_hat, x)[a:b]) <= _bound(W_hat, x)[a:b]).all()
    assert (k.rows(0, out) == W_hat).all()                                     # the prefill tiles: bit for bit


@given(data=st.data())
def test_fp8_gemv_property(data):
    """E4M3 / E5M2, per tensor / row / block (blocks of 64k columns, any rows), any row length (a tail of
    ``in % 64`` codes): ``W_hat[rows] x`` within the bound."""
    fmt = data.draw(st.sampled_from(["e4m3", "e5m2"]))
    gran = data.draw(st.sampled_from(["tensor", "row", "block"]))
    out, n = data.draw(st.integers(1, 70)), data.draw(st.integers(1, 700))
    block = (data.draw(st.sampled_from([1, 16, 128])), data.draw(st.sampled_from([64, 128, 256]))) \
        if gran == "block" else None
    el = st.floats(-100, 100, width=32)
    W = data.draw(hnp.arrays(F32, (out, n), elements=el))
    x = data.draw(hnp.arrays(F32, (n,), elements=el))
    w = FP8Weight.quantize(W, fmt, gran, block=block)
    k = FP8Gemv(w)
    W_hat = w.dequantize()
    assert (np.abs(k(x) - _ref(W_hat, x)) <= _bound(W_hat, x)).all()
    a = data.draw(st.integers(0, out - 1))
    b = data.draw(st.integers(a + 1, out))
    part = k.product(x, range(a, b))
    assert part.shape == (b - a,) and (np.abs(part - _ref(W_hat, x)[a:b]) <= _bound(W_hat, x)[a:b]).all()
    assert (k.rows(a, b) == W_hat[a:b]).all()


def _weights(W):
    return {"nf4": NF4Weight.quantize(W), "nf4-dq": NF4Weight.quantize(W, double_quant=True),
            "fp8-e4m3": FP8Weight.quantize(W, "e4m3"), "fp8-e5m2-block": FP8Weight.quantize(W, "e5m2", "block")}


@pytest.mark.parametrize("T", [1, DECODE_TOKENS, DECODE_TOKENS + 1, TILE + 7])
def test_packed_linears_decode_and_prefill(T, rng):
    """``matmul`` through ``packed_linear``: decode (T <= DECODE_TOKENS, a GEMV a token) and prefill (tiles of
    TILE rows; 300 > TILE), all rows and a row range, within the bound."""
    W = rng.standard_normal((300, 576)).astype(F32)
    X = rng.standard_normal((T, 576)).astype(F32)
    for name, w in _weights(W).items():
        lin = packed_linear(w)
        assert isinstance(lin, NF4Gemv if name.startswith("nf4") else FP8Gemv)
        W_hat = w.dequantize()
        ref, tol = _ref(W_hat, X), _bound(W_hat, X)
        assert (np.abs(lin.matmul(X) - ref) <= tol).all(), name
        assert (np.abs(lin.matmul(X, slice(17, 290)) - ref[:, 17:290]) <= tol[:, 17:290]).all(), name


def test_model_sized_layer_and_what_the_bound_catches(rng):
    """SmolLM2's gate/up shape: within the bound, which is < 1% of a typical |y|; a permuted codebook, an FP8
    code with its top exponent bit flipped (at the largest input), or the neighbour block's scale is not."""
    W, x = rng.standard_normal((1536, 576)).astype(F32), rng.standard_normal(576).astype(F32)
    for name, w in _weights(W).items():
        k = packed_linear(w)
        W_hat = w.dequantize()
        ref, bound = _ref(W_hat, x), _bound(W_hat, x)
        assert (np.abs(k(x) - ref) <= bound).all(), name
        assert bound.max() < 0.01 * np.median(np.abs(ref)), name
        if name.startswith("nf4"):
            assert k.nbytes == 1536 * 576 // 2 + 4 * 1536 * 9 + 4 * 9 + 64      # codes, float32 absmax, gidx, codebook
        wrong = [("gidx", np.roll(k.gidx, 1))] if k.gidx.max() > 0 else []        # the neighbour block's scale
        if name.startswith("nf4"):
            wrong.append(("cb", CODEBOOK[::-1].copy()))
        else:
            wrong.append(("P", k.P ^ np.int8(0x40) * (np.arange(576) == np.argmax(np.abs(x))).astype(np.int8)))
        for attr, value in wrong:
            good = getattr(k, attr)
            setattr(k, attr, value)
            assert (np.abs(k(x) - ref) > bound).mean() > 0.9, (name, attr)
            setattr(k, attr, good)


def test_python_bodies(rng):
    """The kernels' pure-Python bodies (NUMBA_DISABLE_JIT=1; NF4's block product is then NumPy, not the LLVM
    intrinsic) give the same products within the bound."""
    W, x = rng.standard_normal((5, 384)).astype(F32), rng.standard_normal(384).astype(F32)
    w = NF4Weight.quantize(W)
    k = NF4Gemv(w)
    y = np.empty(5, F32)
    py_func(_rows_nf4)(k.P, k.a, k.gidx, k.cb, k._parts(x), y)
    assert (np.abs(y - _ref(w.dequantize(), x)) <= _bound(w.dequantize(), x)).all()
    w = FP8Weight.quantize(W[:, :300], "e4m3", "block", block=(2, 64))
    k = FP8Gemv(w)
    py_func(k._rows)(k.P, k.s, 0, k.br, k.gidx, x[:300], y)
    assert (np.abs(y - _ref(w.dequantize(), x[:300])) <= _bound(w.dequantize(), x[:300])).all()




@pytest.mark.parametrize("scheme", ["nf4", "nf4-dq", "fp8-e4m3", "fp8-e5m2", "fp8-e4m3-block"])
def test_packed_model_logits(tiny_llama, scheme):
    """Every linear packed; the logits equal the dequantized model's within float32 rounding, for a prefill
    and for tokens decoded one at a time."""
    q = minq.quantize(tiny_llama, scheme, progress=False)
    p = q.packed()
    assert all(isinstance(W, PackedGroup) for W in p._W.values())
    ids = np.arange(24) % 96
    want = q.logits(ids)
    assert np.allclose(p.logits(ids), want, rtol=1e-4, atol=1e-4)
    cache = p.new_cache()
    p.logits(ids[:20], cache=cache)
    steps = [p.logits(ids[t:t + 1], cache=cache)[-1] for t in range(20, 24)]
    assert np.allclose(np.stack(steps), want[20:24], rtol=1e-4, atol=1e-4)


def test_what_has_no_kernel_and_bad_inputs(rng):
    W = rng.standard_normal((8, 128)).astype(F32)
    assert nf4_linear(NF4Weight.quantize(W[:, :96], 64)) is None              # blocks span rows
    assert nf4_linear(NF4Weight.quantize(W, 32)) is None                       # blocks of 32
    assert nf4_linear(NF4Weight.quantize(torch.from_numpy(W))) is None        # torch storage
    assert nf4_linear(W) is None and fp8_linear(W) is None
    assert fp8_linear(FP8Weight.quantize(W, "e4m3", "block", block=(1, 32))) is None
    nan = FP8Weight.quantize(W, "e4m3")
    nan.q.q[0, 0] = 0x7F                                                       # E4M3's NaN code
    assert fp8_linear(nan) is None
    with pytest.raises(ValueError, match="NaN"):
        FP8Gemv(nan)
    with pytest.raises(ValueError, match="block"):
        NF4Gemv(NF4Weight.quantize(W, 32))
    with pytest.raises(TypeError, match="NF4Weight"):
        NF4Gemv(FP8Weight.quantize(W))
    with pytest.raises(TypeError, match="FP8"):
        FP8Gemv(NF4Weight.quantize(W))
    for k in (NF4Gemv(NF4Weight.quantize(W)), FP8Gemv(FP8Weight.quantize(W))):
        for bad in (np.ones(64, F32), np.ones((1, 128), F32), torch.ones(128)):
            with pytest.raises(ValueError, match="x must be"):
                k(bad)
        for bad in (np.ones(128, np.int32), [1.0] * 128):
            with pytest.raises(TypeError, match="x must"):
                k(bad)
        with pytest.raises(ValueError, match="x contains NaN"):
            k(np.full(128, np.nan, F32))
        with pytest.raises(ValueError, match="X must be"):
            PackedGroup([k]).matmul(np.ones((2, 64), F32))
