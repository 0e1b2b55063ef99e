"""minq.runtime.gemv_ggml: the fused GEMV of llama.cpp's blocks equals dequantize-then-matmul within the float32
error of its sums, for every supported type, one token or many, any row range; prefill tiles are the
dequantized rows bit for bit; the llama.cpp product (8-bit input blocks) differs by the input's rounding only;
a packed ggml model gives the dequantized model's logits; bad inputs are refused by name."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import minq
from minq.kquants import TYPES, GGMLWeight, quantize
from minq.kquants_k import _unpack_scale_min_k4
from minq.models.tiny import TinyConfig, TinyLlama, to_numpy_llama
from minq.runtime.gemv_ggml import (
    Q8_TYPES,
    SUPPORTED,
    GGMLLinear,
    gemv_q8_reference,
    ggml_linear,
    quantize_activations,
)
from minq.runtime.packed import DECODE_TOKENS, TILE, PackedGroup, packed_linear

F32 = np.float32
EPS = np.finfo(F32).eps


def _mins(w):
    """The min term the kernel keeps apart, per weight ``[out, in]``: ``|dmin m_j|`` (Q4_K, Q5_K), ``|m|`` (Q5_1),
    ``|m + 8 d|`` (Q4_1 as ``d (q - 8) + (m + 8 d)``), ``16 |d|`` (Q5_0 as ``d q - 16 d``); 0 for the others."""
    y = w.data.reshape(-1).view(TYPES[w.qtype].layout)                        # [out * in / block] blocks
    if w.qtype in ("Q4_1", "Q5_0", "Q5_1"):
        d = y["d"].astype(np.float64)
        m = 16 * d if w.qtype == "Q5_0" else y["m"] + 8 * d if w.qtype == "Q4_1" else y["m"]
        return np.abs(np.repeat(m.astype(np.float64), 32)).reshape(w.shape)
    if w.qtype not in ("Q4_K", "Q5_K"):
        return 0.0
    ml = y["dmin"].astype(np.float64)[:, None] * _unpack_scale_min_k4(y["scales"])[1]   # [blocks, 8]
    return np.abs(np.repeat(ml, 32, axis=1)).reshape(w.shape)


def _bound(w, X, terms):
    """``2 terms eps32 sum_k (|w_k| + 2 |min_k|) |x_k|`` per output, plus ``8 n eta`` (eta = 2^-149: below the
    normal range the error of an operation is absolute). ``terms`` bounds the operations one result passes
    through: the GEMV adds about ``n / 32`` scaled block terms per lane, 64 lanes and the min terms
    (``n / 8 + 96`` leaves 4x room); BLAS's dot products of length n, ``n + 8``. A weight ``dl q - ml`` is
    within ``eps / 2 |w|`` of the exact value the kernel uses, and ``|dl q| <= |w| + |ml|``."""
    n = w.shape[1]
    mag = np.abs(np.asarray(X, np.float64)) @ (np.abs(w.dequantize().astype(np.float64)) + 2 * _mins(w)).T
    return 2 * terms * EPS * mag + 8 * n * 2.0**-149


def _check(w, X, got, a=0, b=None):
    """``got [T, b - a]`` equals ``X @ W_hat[a:b]^T`` (float64) within ``_bound``."""
    n = w.shape[1]
    terms = n / 8 + 96 if len(X) <= DECODE_TOKENS else n + 8
    ref = (X.astype(np.float64) @ w.dequantize().astype(np.float64).T)[:, a:b]
    assert got.dtype == F32 and got.shape == ref.shape
    assert (np.abs(got - ref) <= _bound(w, X, terms)[:, a:b]).all()
    return ref


@pytest.fixture(scope="module")
def layer():
    rng = np.random.default_rng(0)
    return rng.standard_normal((300, 512)).astype(F32), rng.standard_normal((TILE + 7, 512)).astype(F32)


@pytest.mark.parametrize("qtype", SUPPORTED)
@pytest.mark.parametrize("T", [1, 3, DECODE_TOKENS, DECODE_TOKENS + 1, TILE + 7])
def test_matmul_equals_dequantize_then_matmul(layer, qtype, T):
    W, X = layer
    w = GGMLWeight.quantize(W, qtype)
    lin = packed_linear(w)
    assert isinstance(lin, GGMLLinear) and lin.shape == (300, 512)
    ref = _check(w, X[:T], lin.matmul(X[:T]))
    _check(w, X[:T], lin.matmul(X[:T], slice(17, 290)), 17, 290)
    # the bound is tight: far below the outputs, so a wrong scale or nibble cannot hide in it
    assert _bound(w, X[:T], 512 / 8 + 96).max() < 1e-2 * np.abs(ref).mean()


@pytest.mark.parametrize("qtype", SUPPORTED)
def test_rows_are_the_dequantized_rows_bit_for_bit(layer, qtype):
    w = GGMLWeight.quantize(layer[0], qtype)
    lin = GGMLLinear(w)
    assert np.array_equal(lin.rows(0, 300), w.dequantize())
    out = np.zeros((40, 512), F32)
    assert lin.rows(100, 140, out) is out and np.array_equal(out, w.dequantize()[100:140])


@pytest.mark.parametrize("qtype, corrupt", [
    ("Q4_0", lambda P: P.__setitem__((slice(None), slice(2, 18)), (P[:, 2:18] >> 4) | (P[:, 2:18] << 4))),  # nibbles
    ("Q8_0", lambda P: P.__setitem__((slice(None), slice(2, 34)), P[:, 2:34][:, ::-1])),                    # order
    ("Q4_K", lambda P: P.__setitem__((slice(None), 3), P[:, 3] ^ 0x80)),                                 # -dmin
    ("Q5_1", lambda P: P.__setitem__((slice(None), 3), P[:, 3] ^ 0x80)),                                 # -m
    ("Q5_0", lambda P: P.__setitem__((slice(None), slice(2, 6)), ~P[:, 2:6])),                            # qh
    ("Q5_K", lambda P: P.__setitem__((slice(None), slice(16, 48)), ~P[:, 16:48])),                         # 5th bit
    ("Q6_K", lambda P: P.__setitem__((slice(None), slice(192, 208)), P[:, 192:208][:, ::-1])),           # scales
])
def test_a_corrupted_block_breaks_the_bound(layer, qtype, corrupt):
    """The bound catches the mistakes a kernel could make: a swapped nibble, a wrong min sign, a misread
    high bit or scale order (applied here to the bytes, read by the correct kernel)."""
    W, X = layer
    w = GGMLWeight.quantize(W, qtype)
    bad = w.data.copy().reshape(-1, TYPES[qtype].nbytes)
    corrupt(bad)
    got = GGMLLinear(GGMLWeight(bad.reshape(w.data.shape), qtype, w.shape)).matmul(X[:1])
    ref = X[:1].astype(np.float64) @ w.dequantize().astype(np.float64).T
    assert (np.abs(got - ref) > _bound(w, X[:1], 512 / 8 + 96)).mean() > 0.5


@given(data=st.data())
def test_gemv_property(data):
    """Any supported type, shape, token count and row range: ``X @ W_hat[a:b]^T`` within ``_bound``."""
    qtype = data.draw(st.sampled_from(SUPPORTED))
    block = TYPES[qtype].block
    out, n = data.draw(st.integers(1, 40)), block * data.draw(st.integers(1, 3 if block == 256 else 12))
    T = data.draw(st.sampled_from([1, 2, DECODE_TOKENS, DECODE_TOKENS + 1, 9]))
    el = st.floats(-100, 100, width=32)
    w = GGMLWeight.quantize(data.draw(hnp.arrays(F32, (out, n), elements=el)), qtype)
    X = data.draw(hnp.arrays(F32, (T, n), elements=el))
    a = data.draw(st.integers(0, out - 1))
    b = data.draw(st.integers(a + 1, out))
    _check(w, X, ggml_linear(w).matmul(X, slice(a, b)), a, b)


@given(data=st.data())
def test_q8_activations_property(data):
    """``activations="int8"``: the input as llama.cpp's Q8_0 bytes, ``W_hat x_hat`` within ``_bound``, and the
    float product within the input's rounding ``sum_b |d_w| sum_k |q_k| (d_x / 2 + 127 |d_x - fp16(d_x)|)``."""
    qtype = data.draw(st.sampled_from(Q8_TYPES))
    out, n = data.draw(st.integers(1, 40)), 32 * data.draw(st.integers(1, 12))
    el = st.floats(-100, 100, width=32)
    w = GGMLWeight.quantize(data.draw(hnp.arrays(F32, (out, n), elements=el)), qtype)
    x = data.draw(hnp.arrays(F32, (n,), elements=el | st.sampled_from([0.5, -2.5, 63.5])))
    xq, dx, _ = quantize_activations(x)
    y8 = quantize(x, "Q8_0").view(TYPES["Q8_0"].layout)                   # ggml's bytes, minq's quantizer
    assert np.array_equal(xq, y8["qs"].reshape(-1)) and np.array_equal(dx, y8["d"].astype(F32))
    x_hat = (xq.reshape(-1, 32) * dx[:, None]).reshape(-1).astype(F32)
    lin = GGMLLinear(w, activations="int8")
    got = lin(x)
    ref = w.dequantize().astype(np.float64) @ x_hat.astype(np.float64)
    assert (np.abs(got - ref) <= _bound(w, x_hat[None], n / 8 + 96)[0]).all()
    assert np.allclose(gemv_q8_reference(w, x), ref, rtol=1e-4, atol=1e-3 * (1 + np.abs(ref).max()))
    d = np.abs(x.reshape(-1, 32)).max(axis=1) / F32(127)                   # d_x before its fp16 rounding
    step = np.repeat(d / 2 + 127 * np.abs(d - dx), 32).astype(np.float64)  # |x - x_hat| per input
    assert (np.abs(x - x_hat) <= step).all()
    rounding = np.abs(w.dequantize().astype(np.float64)) @ step
    floats = _bound(w, x[None], n / 8 + 96)[0] + _bound(w, x_hat[None], n / 8 + 96)[0]
    assert (np.abs(got - GGMLLinear(w)(x)) <= rounding + floats).all()
    assert np.allclose(lin.matmul(np.stack([x, x]), slice(0, out))[1], got)


@pytest.fixture(scope="module")
def tiny256():
    """A tiny Llama whose linears have inputs of 256 and 512: whole k-quant super-blocks."""
    torch.manual_seed(0)
    config = TinyConfig(vocab_size=96, dim=256, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=512,
                        context_length=64)
    net = TinyLlama(config)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return to_numpy_llama(net)


@pytest.mark.parametrize("scheme, types", [("q4_k_m", {"Q4_K", "Q6_K"}), ("q5_k_s", {"Q5_K"}),
                                           ("q8_0", {"Q8_0"}), ("q4_0", {"Q4_0"}), ("q4_1", {"Q4_1"}),
                                           ("q5_1", {"Q5_1"})])
def test_packed_ggml_model_logits(tiny256, scheme, types):
    q = minq.quantize(tiny256, scheme, progress=False)
    assert {w.qtype for w in q.weights.values()} == types
    p = q.packed()
    assert all(isinstance(W, PackedGroup) for W in p._W.values())
    assert sum(W.nbytes for W in p._W.values()) < 0.4 * sum(w.shape[0] * w.shape[1] * 4 for w in q.weights.values())
    ids = np.arange(40) % 96
    want = q.logits(ids)                                                    # the dequantized model
    assert np.allclose(p.logits(ids), want, rtol=1e-4, atol=1e-4)          # prefill: tiles + BLAS
    cache = p.new_cache()
    p.logits(ids[:36], cache=cache)
    steps = [p.logits(ids[t:t + 1], cache=cache)[-1] for t in range(36, 40)]   # decode: the GEMV
    assert np.allclose(np.stack(steps), want[36:40], rtol=1e-4, atol=1e-4)


def test_bad_inputs(layer):
    W = layer[0][:8, :256]
    w = GGMLWeight.quantize(W, "Q4_K")
    with pytest.raises(TypeError, match="GGMLWeight"):
        GGMLLinear(W)
    with pytest.raises(ValueError, match="qtype 'Q2_K'"):
        GGMLLinear(GGMLWeight.quantize(W, "Q2_K"))
    with pytest.raises(TypeError, match="w.data.*torch"):
        GGMLLinear(GGMLWeight.quantize(torch.from_numpy(W), "Q4_K"))
    for act in ("int8", "q8", "int4"):                                      # int8: Q8_0 / Q4_0 only
        with pytest.raises(ValueError, match="activations"):
            GGMLLinear(w, activations=act)
    assert GGMLLinear(GGMLWeight.quantize(W, "Q8_0"), "int8").activations == "int8"
    bad = w.data.copy()
    bad[3, 0:2] = np.frombuffer(np.float16(np.nan).tobytes(), np.uint8)     # block (3, 0): d = NaN
    with pytest.raises(ValueError, match="NaN or Inf"):
        GGMLLinear(GGMLWeight(bad, "Q4_K", w.shape))
    assert ggml_linear(W) is None and ggml_linear(GGMLWeight.quantize(W, "Q2_K")) is None
    assert ggml_linear(GGMLWeight.quantize(torch.from_numpy(W), "Q4_K")) is None
    assert ggml_linear(w, "int8") is None and isinstance(ggml_linear(GGMLWeight.quantize(W, "Q4_0"), "int8"), GGMLLinear)
    lin = GGMLLinear(w)
    for X, err in [(np.ones(256, F32), ValueError), (np.ones((2, 128), F32), ValueError),
                   (np.ones((2, 256), np.int32), TypeError), (torch.ones(2, 256), ValueError)]:
        with pytest.raises(err, match="X"):
            lin.matmul(X)
    with pytest.raises(ValueError, match="rows"):
        lin.matmul(np.ones((1, 256), F32), slice(0, 8, 2))
    with pytest.raises(ValueError, match="x must be"):
        lin(np.ones(255, F32))
    with pytest.raises(ValueError, match="x"):
        quantize_activations(np.full(32, np.nan, F32))
    with pytest.raises(ValueError, match="multiple of 32"):
        quantize_activations(np.ones(33, F32))
