"""minq.runtime.gemv_q8: the 8-bit-input integer GEMV equals the dequantized weight times the rounded
input within the float32 error of its scaled sums; the input's rounding is within half a step; a packed
model with ``activations="int8"`` decodes as the float model whose decoded inputs are rounded the same way."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import minq
from minq.groups import quantize_groups
from minq.runtime.gemv_q8 import (
    BLOCK,
    Int4GemvQ8,
    dequantize_input,
    gemv_q8_reference,
    quantize_input,
    repack_halves,
    unpack_halves,
)
from minq.runtime.packed import DECODE_TOKENS, TILE, PackedGroup, packed_linear

F32 = np.float32
EPS = np.finfo(F32).eps
ETA = 2.0**-149


def _bound(w, x_hat):
    """``2 (n / BLOCK + 8) eps`` times the magnitudes that enter the float sums (``|s q x_hat|`` and
    ``|s z| |x_hat|`` per group), plus ``eta`` per float operation: the block sums are exact integers, the
    rest is ``n / BLOCK`` scaled block sums and one zero-point term a group, in float32."""
    qp = w.qparams()
    out, n = w.shape
    q = w.codes.reshape(out, -1, w.g).astype(np.float64)                     # [out, G, g]
    s, z = np.float64(qp.s), np.float64(qp.z)
    ax = np.abs(x_hat.astype(np.float64)).reshape(1, -1, w.g)
    mag = (np.abs(s) * (q * ax + np.abs(z) * ax)).sum(axis=(1, 2))           # [out]
    return 2 * (n / BLOCK + 8) * EPS * mag + 8 * n * ETA


def _finite_x(data, n):
    scale = data.draw(st.sampled_from([1e-30, 1e-3, 1.0, 1e3, 1e30]))
    x = data.draw(hnp.arrays(F32, (n,), elements=st.floats(-1, 1, width=32))) * F32(scale)
    if data.draw(st.booleans()):                                             # exact halves: ties to even
        x[: n // 2] = F32(0.5) * np.round(x[: n // 2] * 8)
    return x


@given(data=st.data())
def test_quantize_input_within_half_a_step(data):
    n = BLOCK * data.draw(st.integers(1, 5))
    x = _finite_x(data, n)
    x8, dx = quantize_input(x)
    assert x8.dtype == np.int16 and dx.dtype == F32 and x8.shape == (n,) and dx.shape == (n // BLOCK,)
    assert (np.abs(x8) <= 127).all()
    x_hat = dequantize_input(x8, dx).astype(np.float64)
    step = np.repeat(dx.astype(np.float64), BLOCK)
    # a subnormal step is itself rounded, by up to eta / 2, which 127 codes multiply
    assert (np.abs(x.astype(np.float64) - x_hat) <= step / 2 * (1 + 4 * EPS) + 128 * ETA).all()
    # the block's largest magnitude is a full-scale code
    big = np.abs(x).reshape(-1, BLOCK).max(axis=1) > 0
    assert (np.abs(x8.reshape(-1, BLOCK)).max(axis=1)[big] == 127).all()


@given(data=st.data())
def test_input_kernel_equals_quantize_input(data):
    """``Int4GemvQ8.split`` (one Numba pass) gives ``quantize_input``'s codes and scales bit for bit, and
    the sums of ``x_hat`` over each group."""
    n = BLOCK * data.draw(st.integers(1, 4))
    g = data.draw(st.sampled_from([gg for gg in (64, 128, n) if n % gg == 0]))
    x = _finite_x(data, n)
    k = Int4GemvQ8(quantize_groups(np.ones((2, n), F32), bits=4, group_size=g))
    x8, dx, xs = k.split(x)
    r8, rdx = quantize_input(x)
    assert (x8 == r8).all() and (dx == rdx).all()
    want = dequantize_input(r8, rdx).astype(np.float64).reshape(-1, g).sum(axis=1)
    assert np.allclose(xs, want, rtol=BLOCK * EPS * g, atol=g * ETA * 4 + 1e-300)


def test_quantize_input_zero_block_and_bad_inputs():
    x = np.zeros(128, F32)
    x[70] = 3.0
    x8, dx = quantize_input(x)
    assert dx[0] == 0 and (x8[:64] == 0).all() and x8[70] == 127
    with pytest.raises(ValueError, match="x"):
        quantize_input(np.ones(100, F32))
    with pytest.raises(ValueError, match="x"):
        quantize_input(np.full(64, np.nan, F32))
    with pytest.raises(ValueError, match="x"):
        quantize_input(np.ones((2, 64), F32))
    with pytest.raises(ValueError, match="block"):
        quantize_input(np.ones(64, F32), block=0)
    with pytest.raises(ValueError, match="codes"):
        repack_halves(np.ones((2, 100), np.uint8))
    with pytest.raises(ValueError, match="codes"):
        repack_halves(np.full((2, 64), 16))


def test_repack_halves_roundtrip(rng):
    q = rng.integers(0, 16, (5, 192)).astype(np.uint8)
    P = repack_halves(q)
    assert P.shape == (5, 96) and (P[:, 0] == q[:, 0] | (q[:, 32] << 4)).all()
    assert (unpack_halves(P) == q).all()


@given(data=st.data())
def test_int4_q8_gemv_equals_reference(data):
    out = data.draw(st.integers(1, 70))
    n = BLOCK * data.draw(st.integers(1, 6))
    group = data.draw(st.sampled_from([g for g in (64, 128, 192, -1) if g == -1 or n % g == 0]))
    el = st.floats(-100, 100, width=32)
    W = data.draw(hnp.arrays(F32, (out, n), elements=el))
    x = _finite_x(data, n)
    w = quantize_groups(W, bits=4, group_size=group, symmetric=data.draw(st.booleans()))
    x_hat = dequantize_input(*quantize_input(x))
    ref = w.dequantize().astype(np.float64) @ x_hat.astype(np.float64)
    got = Int4GemvQ8(w)(x)
    assert got.dtype == F32 and got.shape == (out,)
    assert (np.abs(got - ref) <= _bound(w, x_hat)).all()
    assert np.allclose(gemv_q8_reference(w, x), ref, rtol=1e-4, atol=1e-3 * (1 + np.abs(ref).max()))


def test_bound_catches_a_wrong_kernel(rng):
    """The bound is far below what a swapped nibble or a dropped zero point would change."""
    W = rng.standard_normal((64, 576)).astype(F32)
    w = quantize_groups(W, bits=4, group_size=64)
    x = rng.standard_normal(576).astype(F32)
    x_hat = dequantize_input(*quantize_input(x))
    tol = _bound(w, x_hat)
    k = Int4GemvQ8(w)
    y = k(x)
    k.P = np.ascontiguousarray((k.P >> 4) | (k.P << 4))                       # nibbles swapped
    assert (np.abs(k(x) - y) > 100 * tol).mean() > 0.9
    assert np.median(np.abs(y)) > 1e3 * np.median(tol)


def test_rows_and_matmul(rng):
    w = quantize_groups(rng.standard_normal((300, 576)).astype(F32), bits=4, group_size=64)
    k = Int4GemvQ8(w)
    W_hat = w.dequantize()
    assert np.allclose(k.rows(0, 300), W_hat, rtol=2 * EPS, atol=1e-6) and k.rows(17, 18).shape == (1, 576)
    for T in (1, DECODE_TOKENS, DECODE_TOKENS + 1, TILE + 7):
        X = rng.standard_normal((T, 576)).astype(F32)
        if T <= DECODE_TOKENS:                                             # decode: the rounded input
            ref = np.stack([W_hat.astype(np.float64) @ dequantize_input(*quantize_input(x)) for x in X])
        else:                                                              # prefill: float tiles + BLAS
            ref = X.astype(np.float64) @ W_hat.T.astype(np.float64)
        tol = 1e-5 * (np.abs(X) @ np.abs(W_hat).T) + 1e-5
        assert (np.abs(k.matmul(X) - ref) <= tol).all()
        assert (np.abs(k.matmul(X, slice(17, 290)) - ref[:, 17:290]) <= tol[:, 17:290]).all()
    assert k.nbytes == 300 * 288 + 2 * 300 * 9 * 4


def test_refuses_other_containers(rng):
    W = rng.standard_normal((8, 128)).astype(F32)
    with pytest.raises(TypeError, match="w must be"):
        Int4GemvQ8(W)
    with pytest.raises(ValueError, match="bits=3"):
        Int4GemvQ8(quantize_groups(W, bits=3, group_size=64))
    with pytest.raises(ValueError, match="g=32"):
        Int4GemvQ8(quantize_groups(W, bits=4, group_size=32))
    k = Int4GemvQ8(quantize_groups(W, bits=4, group_size=64))
    with pytest.raises(ValueError, match="x must be"):
        k(np.ones(64, F32))
    with pytest.raises(ValueError, match="x"):
        k(np.ones((1, 128), F32))
    with pytest.raises(ValueError, match="activations"):
        packed_linear(quantize_groups(W, bits=4, group_size=64), "int4")




def _round_decoded(name, X):
    """The float model's stand-in for the int8 kernel: decoded tokens' inputs rounded to 8-bit blocks."""
    if len(X) > DECODE_TOKENS:
        return None
    return np.stack([dequantize_input(*quantize_input(x)) for x in X])


def test_packed_int8_model_decodes_as_rounded_inputs(tiny_llama):
    q = minq.quantize(tiny_llama, "rtn-w4g64", progress=False)
    p = q.packed("int8")
    assert p.activations == "int8" and all(isinstance(W, PackedGroup) for W in p._W.values())
    assert isinstance(p._W[("blk.0.attn_output",)].linears[0], Int4GemvQ8)
    ids = np.arange(40) % 96
    assert np.allclose(p.logits(ids), q.logits(ids), rtol=1e-4, atol=1e-4)      # prefill: float tiles
    hooks = {n: _round_decoded for n in q.linear_names()}
    for engine in ("fast", "reference"):
        cp, cq = p.new_cache(), q.new_cache()
        p.logits(ids[:30], cache=cp, engine=engine)
        q.logits(ids[:30], cache=cq, engine=engine)
        for t in range(30, 40):
            a = p.logits(ids[t:t + 1], cache=cp, engine=engine)
            b = q.logits(ids[t:t + 1], cache=cq, engine=engine, hooks=hooks)
            assert np.allclose(a, b, rtol=1e-4, atol=1e-4)
    assert p.dequantized().is_packed is False and q.packed().activations == "float"
    with pytest.raises(ValueError, match="activations"):
        q.packed("int4")


def test_products_from_several_python_threads(rng):
    """Products from several Python threads at once (one takes Numba's threads, the others run serially):
    the same results, and no abort of Numba's thread pool."""
    from concurrent.futures import ThreadPoolExecutor

    w = quantize_groups(rng.standard_normal((2048, 576)).astype(F32), bits=4, group_size=64)
    k = Int4GemvQ8(w)
    xs = [rng.standard_normal(576).astype(F32) for _ in range(16)]
    want = [k(x) for x in xs]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(k, xs * 4))
    assert all(np.array_equal(g, want[i % 16]) for i, g in enumerate(got))
