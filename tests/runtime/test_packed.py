"""minq.runtime.packed and ``model.packed()``: grouped 8/4/3/2-bit weights kept packed give the dequantized
model's logits within float32 rounding, on both engines, with a KV cache, with hooks, one token or many."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import minq
from minq.groups import quantize_groups
from minq.runtime.gemv import BITS, BLOCK, SUPER
from minq.runtime.packed import DECODE_TOKENS, TILE, PackedGroup, packed_linear

F32 = np.float32




@pytest.mark.parametrize("T", [1, DECODE_TOKENS, DECODE_TOKENS + 1, TILE + 7])
def test_packed_linear_equals_dequantized(T, rng):
    W = rng.standard_normal((300, 576)).astype(F32)
    w = quantize_groups(W, bits=4, group_size=64)
    lin = packed_linear(w)
    X = rng.standard_normal((T, 576)).astype(F32)
    ref = X.astype(np.float64) @ w.dequantize().astype(np.float64).T
    tol = 1e-5 * (np.abs(X) @ np.abs(w.dequantize()).T) + 1e-6
    assert (np.abs(lin.matmul(X) - ref) <= tol).all()
    assert (np.abs(lin.matmul(X, slice(17, 290)) - ref[:, 17:290]) <= tol[:, 17:290]).all()


def _grouped_bound(w, X):
    """The float32 error of ``X @ W_hat^T`` summed in any order (superblocks of 256 in the GEMV, BLAS for a
    prefill of rows of <= 256): ``(SUPER BLOCK + n / BLOCK + G + 8) eps`` times ``|X| @ (|s| (q + |z|))^T``."""
    qp = w.qparams()
    out, n = w.shape
    q = w.codes.astype(np.float64).reshape(out, -1, w.g)
    Wmag = np.broadcast_to(np.abs(np.float64(qp.s)) * (q + np.abs(np.float64(qp.z))), q.shape).reshape(out, n)
    depth = SUPER * BLOCK + n / BLOCK + n / w.g + 8
    return depth * np.finfo(F32).eps * (np.abs(X).astype(np.float64) @ Wmag.T) + 8 * n * 2.0**-149


@pytest.mark.parametrize("bits", [8, 3])
@pytest.mark.parametrize("T", [1, DECODE_TOKENS, DECODE_TOKENS + 1, TILE + 7])
def test_packed_grouped_linear_int8_int3(bits, T, rng):
    """8- and 3-bit groups, per group and per channel: decode (GEMV a token) and prefill (tiles of TILE rows,
    300 > TILE) equal ``X @ W_hat^T`` within the bound, on all rows and on a row range."""
    W = rng.standard_normal((300, 576)).astype(F32)
    X = rng.standard_normal((T, 576)).astype(F32)
    for group in (64, -1):
        w = quantize_groups(W, bits=bits, group_size=group)
        lin = packed_linear(w)
        ref, tol = X.astype(np.float64) @ w.dequantize().astype(np.float64).T, _grouped_bound(w, X)
        assert (np.abs(lin.matmul(X) - ref) <= tol).all()
        assert (np.abs(lin.matmul(X, slice(17, 290)) - ref[:, 17:290]) <= tol[:, 17:290]).all()
        assert np.allclose(lin.rows(5, 9), w.dequantize()[5:9], rtol=1e-6, atol=1e-6 * np.abs(W).max())


@given(data=st.data())
def test_packed_linear_property(data):
    """Any width, shape, group width, token count (decode or prefill) and row range: X @ W_hat[rows]^T within
    the float32 error of the sums."""
    bits = data.draw(st.sampled_from(BITS))
    out, n = data.draw(st.integers(1, 300)), 64 * data.draw(st.integers(1, 4))
    group = data.draw(st.sampled_from([g for g in (64, 128, -1) if g == -1 or n % g == 0]))
    T = data.draw(st.sampled_from([1, 2, DECODE_TOKENS, DECODE_TOKENS + 1, 40]))
    el = st.floats(-100, 100, width=32)
    W = data.draw(hnp.arrays(F32, (out, n), elements=el))
    X = data.draw(hnp.arrays(F32, (T, n), elements=el))
    a = data.draw(st.integers(0, out - 1))
    b = data.draw(st.integers(a + 1, out))
    w = quantize_groups(W, bits=bits, group_size=group, symmetric=data.draw(st.booleans()))
    ref = X.astype(np.float64) @ w.dequantize().astype(np.float64).T                 # [T, out]
    tol = _grouped_bound(w, X)
    got = packed_linear(w).matmul(X, slice(a, b))
    assert got.shape == (T, b - a) and (np.abs(got - ref[:, a:b]) <= tol[:, a:b]).all()


def test_packed_group_rows_and_kernels(rng):
    ws = [quantize_groups(rng.standard_normal((o, 128)).astype(F32), bits=4, group_size=64) for o in (64, 32, 32)]
    g = PackedGroup([packed_linear(w) for w in ws])
    X = rng.standard_normal((2, 128)).astype(F32)
    W = np.concatenate([w.dequantize() for w in ws])
    assert g.shape == (128, 128) and np.allclose(g.matmul(X), X @ W.T, rtol=1e-5, atol=1e-5)
    assert g[50:100].shape == (50, 128) and np.allclose(g[50:100].matmul(X), X @ W[50:100].T, rtol=1e-5, atol=1e-5)
    assert packed_linear(quantize_groups(ws[0].dequantize(), bits=5, group_size=64)) is None      # no kernel
    assert packed_linear(quantize_groups(ws[0].dequantize(), bits=4, group_size=32)) is None
    assert packed_linear(ws[0].dequantize()) is None
    with pytest.raises(ValueError, match="X must be"):
        g.matmul(np.ones((2, 64), F32))


@pytest.mark.parametrize("engine", ["fast", "reference"])
def test_packed_model_logits(tiny_llama, engine):
    q = minq.quantize(tiny_llama, "rtn-w4g64", progress=False)
    p = q.packed()
    assert p.is_packed and not q.is_packed and p.dequantized().is_packed is False
    assert all(isinstance(W, PackedGroup) for W in p._W.values())
    ids = np.arange(40) % 96
    want = q.logits(ids, engine=engine)
    assert np.allclose(p.logits(ids, engine=engine), want, rtol=1e-4, atol=1e-4)
    cache = p.new_cache()                                                  # prefill, then decode token by token
    p.logits(ids[:30], cache=cache, engine=engine)
    steps = [p.logits(ids[t:t + 1], cache=cache, engine=engine)[-1] for t in range(30, 40)]
    assert np.allclose(np.stack(steps), want[30:40], rtol=1e-4, atol=1e-4)


def test_packed_model_with_hooks_and_wrappers(tiny_llama):
    q = minq.quantize(tiny_llama, "rtn-w4g64", progress=False)
    p = q.packed()
    ids = np.arange(20) % 96
    seen = {}
    hooks = {"blk.0.attn_k": lambda name, X: X * 0.5, "blk.1.ffn_up": lambda name, X: seen.update({name: X.shape})}
    assert np.allclose(p.logits(ids, hooks=hooks), q.logits(ids, hooks=hooks), rtol=1e-4, atol=1e-4)
    assert seen == {"blk.1.ffn_up": (20, 128)}
    from minq.w8a8 import ActQuantModel, Int8Activations

    act = ActQuantModel(q, {n: Int8Activations("dynamic") for n in q.linear_names()})
    assert act.packed().model.is_packed
    assert np.allclose(act.packed().logits(ids), act.logits(ids), rtol=1e-4, atol=1e-4)
    mixed = q.with_weights({"blk.0.ffn_down": quantize_groups(q.weights["blk.0.ffn_down"].dequantize(), bits=5,
                                                                group_size=64)}).packed()
    assert isinstance(mixed._W[("blk.0.ffn_down",)], np.ndarray)          # no 5-bit kernel: float32, as before
    assert np.allclose(mixed.logits(ids), mixed.dequantized().logits(ids), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("scheme", ["rtn-w8g64", "rtn-w3g64", "rtn-w8", "rtn-w2g64-sym"])
def test_packed_model_logits_grouped_schemes(tiny_llama, scheme):
    """Every linear of these schemes is packed; the logits equal the dequantized model's within float32
    rounding, for a prefill and for tokens decoded one at a time."""
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


@given(data=st.data())
def test_packed_ternary_linear_property(data):
    from minq.ternary import TernaryWeight

    out, n = data.draw(st.integers(1, 80)), data.draw(st.integers(1, 300))
    T = data.draw(st.sampled_from([1, DECODE_TOKENS, DECODE_TOKENS + 1]))
    el = st.floats(-100, 100, width=32)
    w = TernaryWeight.quantize(data.draw(hnp.arrays(F32, (out, n), elements=el)))
    X = data.draw(hnp.arrays(F32, (T, n), elements=el))
    a = data.draw(st.integers(0, out - 1))
    b = data.draw(st.integers(a + 1, out))
    W_hat = w.dequantize().astype(np.float64)
    ref = X.astype(np.float64) @ W_hat.T
    tol = 2 * (n + 4) * np.finfo(F32).eps * (np.abs(X).astype(np.float64) @ np.abs(W_hat).T) + 4 * n * 2.0**-149
    got = packed_linear(w).matmul(X, slice(a, b))
    assert got.shape == (T, b - a) and (np.abs(got - ref[:, a:b]) <= tol[:, a:b]).all()


@pytest.mark.parametrize("scheme", ["ternary", "ternary-a32"])
def test_packed_ternary_models(tiny_llama, scheme):
    """BitNet's W1.58A8 (int8 input hooks, then the packed 2-bit product) and weights-only ternary."""
    q = minq.quantize(tiny_llama, scheme, progress=False)
    p = q.packed()
    inner = p.model if scheme == "ternary" else p                          # ActQuantModel wraps the model
    assert all(isinstance(W, PackedGroup) for W in inner._W.values())
    ids = np.arange(40) % 96
    want = q.logits(ids)
    assert np.allclose(p.logits(ids), want, rtol=1e-4, atol=1e-4)
    cache = p.new_cache()
    p.logits(ids[:36], cache=cache)
    steps = [p.logits(ids[t:t + 1], cache=cache)[-1] for t in range(36, 40)]
    assert np.allclose(np.stack(steps), want[36:40], rtol=1e-4, atol=1e-4)
