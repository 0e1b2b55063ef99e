"""minq.rotation and minq.rotation_model: Hadamard matrices of every size SmolLM2 needs, the fast transform
against the matrix product, the fused rotations of a Llama (logits unchanged), the schemes, bad inputs."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import minq
from minq import registry, rotation
from minq.models.llama import LlamaConfig, LlamaModel
from minq.models.llama_weights import _linear_shape
from minq.models.weights import DenseWeight
from minq.rotation_model import quantize_wa
from minq.w8a8 import ActQuantModel, Int8Activations

F32 = np.float32
SIZES = rotation.hadamard_sizes(256)


def random_llama(dim=48, n_heads=3, n_kv_heads=1, hidden=96, n_layers=2, seed=0, tied=True):
    """A random Llama whose gammas are far from 1 (some near 0, some large), so folding matters."""
    c = LlamaConfig(vocab_size=50, dim=dim, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv_heads,
                    hidden_dim=hidden, norm_eps=1e-5, rope_theta=10000.0, context_length=64)
    r = np.random.default_rng(seed)
    weights = {}
    for i in range(n_layers):
        for n in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"):
            out, inp = _linear_shape(c, n)
            weights[f"blk.{i}.{n}"] = DenseWeight(r.standard_normal((out, inp)) / np.sqrt(inp))
    norms = {f"blk.{i}.{n}": r.uniform(0.01, 3.0, dim).astype(F32) for i in range(n_layers) for n in ("attn_norm", "ffn_norm")}
    norms["output_norm"] = r.uniform(0.5, 2.0, dim).astype(F32)
    E = (0.5 * r.standard_normal((c.vocab_size, dim))).astype(F32)
    E[:, 3] *= 20                                                     # an outlier channel in the residual stream
    out = None if tied else (0.5 * r.standard_normal((c.vocab_size, dim))).astype(F32)
    return LlamaModel(c, weights, norms, E, output=out)


IDS = np.array([[1, 7, 3, 9, 4, 4, 0, 12, 33, 49, 2, 8], [5, 5, 6, 1, 0, 3, 2, 40, 41, 8, 9, 10]])


# --- Hadamard matrices ------------------------------------------------------------------------------


@pytest.mark.parametrize("n", SIZES)
def test_hadamard_is_hadamard(n):
    H = rotation.hadamard(n)
    assert H.shape == (n, n) and np.isin(H, (-1, 1)).all()
    assert (H @ H.T == n * np.eye(n, dtype=np.int64)).all()


def test_sizes_smollm2_needs():
    assert {64, 576, 1536} <= set(rotation.hadamard_sizes(2048))     # head, dim = 36 * 16, hidden = 12 * 128
    assert rotation._split(576) == (36, 16) and rotation._split(1536) == (12, 128)


@pytest.mark.parametrize("n", [0, -4, 9, 10, 18, 100, 2.0, "8", True])
def test_hadamard_bad_n(n):
    with pytest.raises((ValueError, TypeError), match="n"):
        rotation.hadamard(n)


@pytest.mark.parametrize("n", [12, 64, 96, 576])
def test_random_hadamard_is_orthogonal_and_seeded(n):
    R = rotation.random_hadamard(n, seed=5)
    assert np.abs(R @ R.T - np.eye(n)).max() < 1e-12
    assert np.array_equal(R, rotation.random_hadamard(n, seed=5))
    assert not np.array_equal(R, rotation.random_hadamard(n, seed=6))
    assert np.allclose(np.abs(R), 1 / np.sqrt(n))                    # every input reaches every output


# --- the fast transform -------------------------------------------------------------------------------


@st.composite
def transform_input(draw, dtype=F32):
    n = draw(st.sampled_from(SIZES))
    lead = draw(hnp.array_shapes(min_dims=0, max_dims=2, max_side=5))
    x = draw(hnp.arrays(dtype, (*lead, n), elements=st.floats(-1e3, 1e3, width=32)))
    seed = draw(st.integers(0, 2 ** 16))
    return x, seed


def _bound(x):
    n = x.shape[-1]
    return 2.0 ** -19 * np.sqrt(n) * max(float(np.abs(x).max()), 1e-30)


@given(transform_input())
def test_fast_transform_equals_matrix_product(args):
    x, seed = args
    n = x.shape[-1]
    y = rotation.hadamard_transform(x, rotation.random_signs(n, seed))
    ref = x.astype(np.float64) @ rotation.random_hadamard(n, seed)
    assert y.dtype == F32 and y.shape == x.shape
    assert np.abs(y - ref).max(initial=0) <= _bound(x)


@given(transform_input(), st.booleans())
def test_kernel_equals_reference(args, f64):
    """The Numba kernel runs the reference's butterflies in the same order: bit-identical when n is a power
    of two; with a Paley factor its H_K sums may run in another order than BLAS's (within the bound)."""
    x, seed = args
    x = x.astype(np.float64) if f64 else x
    s = rotation.random_signs(x.shape[-1], seed)
    a, b = rotation.hadamard_transform(x, s), rotation.hadamard_transform(x, s, kernel=False)
    assert a.dtype == b.dtype == x.dtype and a.shape == b.shape == x.shape
    if rotation._split(x.shape[-1])[0] == 1:
        assert np.array_equal(a, b)
    else:
        assert np.abs(a - b).max(initial=0) <= _bound(x)


def test_kernel_pure_python_body(rng):
    from minq._jit import py_func

    X = rng.standard_normal((3, 96)).astype(F32)
    s = rotation.random_signs(96, 4)
    out = np.empty_like(X)
    py_func(rotation._fwht_kernel)(X, s, rotation._paley(12).astype(F32), np.full(1, 1 / np.sqrt(96), F32), out)
    assert np.abs(out - rotation.hadamard_transform(X, s, kernel=False)).max() <= _bound(X)


@given(transform_input(np.float64))
def test_fast_transform_float64(args):
    x, seed = args
    y = rotation.hadamard_transform(x, rotation.random_signs(x.shape[-1], seed))
    ref = x @ rotation.random_hadamard(x.shape[-1], seed)
    assert y.dtype == np.float64 and np.abs(y - ref).max(initial=0) <= 1e-12 * max(np.abs(x).max(initial=0), 1) * x.shape[-1]


def test_transform_without_signs_is_plain_hadamard(rng):
    x = rng.standard_normal((3, 96)).astype(F32)
    assert np.abs(rotation.hadamard_transform(x) - x @ (rotation.hadamard(96) / np.sqrt(96))).max() < 1e-5


def test_transform_is_inverted_by_its_transpose(rng):
    x = rng.standard_normal((4, 576))
    y = rotation.hadamard_transform(x, rotation.random_signs(576, 1))
    assert np.abs(y @ rotation.random_hadamard(576, 1).T - x).max() < 1e-12     # R orthogonal: x R R^T = x


@given(transform_input())
def test_torch_transform_equals_numpy(args):
    x, seed = args
    s = rotation.random_signs(x.shape[-1], seed)
    y = rotation.hadamard_transform(x, s)
    yt = rotation.hadamard_transform(torch.from_numpy(x.copy()), s)
    assert isinstance(yt, torch.Tensor) and yt.dtype == torch.float32
    assert np.abs(yt.numpy() - y).max(initial=0) <= _bound(x)


def test_torch_transform_on_device(device):
    x = torch.randn(7, 1536, device=device)
    s = rotation.random_signs(1536, 2)
    y = rotation.hadamard_transform(x, s)
    assert y.device == x.device
    ref = x.cpu().double().numpy() @ rotation.random_hadamard(1536, 2)
    assert np.abs(y.cpu().numpy() - ref).max() <= _bound(x.cpu().numpy())


def test_online_hook_shares_one_transform(rng):
    h = rotation.OnlineHadamard(rotation.random_signs(96, 0))
    X = rng.standard_normal((5, 96)).astype(F32)
    Y = h("a", X)
    assert h("b", X) is Y and np.array_equal(Y, rotation.hadamard_transform(X, h.signs))
    assert "96" in repr(h)


@pytest.mark.parametrize("bad, err, match", [
    (np.ones(12, np.int32), TypeError, "x"), (np.full(12, np.nan, F32), ValueError, "x"),
    (np.ones((), F32), ValueError, "x"), (np.ones((2, 10), F32), ValueError, "n = 10"),
    (np.ones((2, 0), F32), ValueError, "x"), ([1.0] * 12, TypeError, "x")])
def test_transform_bad_x(bad, err, match):
    with pytest.raises(err, match=match):
        rotation.hadamard_transform(bad)


@pytest.mark.parametrize("signs", [np.ones(11), np.full(12, 2.0), np.ones((2, 6)) * 0.5])
def test_transform_bad_signs(signs):
    with pytest.raises(ValueError, match="signs"):
        rotation.hadamard_transform(np.ones((2, 12), F32), signs)


def test_kurtosis():
    r = np.random.default_rng(0)
    g = r.standard_normal(200_000)
    assert abs(rotation.kurtosis(g) - 3) < 0.1
    W = r.standard_normal((64, 64))
    W[:, 5] *= 30                                                      # one outlier input channel
    Wr = W @ rotation.random_hadamard(64, 0)
    assert rotation.kurtosis(W) > 20 and rotation.kurtosis(Wr) < 3.5   # rotation spreads it
    assert rotation.kurtosis(np.zeros(5)) == 0


# --- the fused model --------------------------------------------------------------------------------


@pytest.mark.parametrize("kw", [dict(), dict(tied=False), dict(dim=64, n_heads=4, n_kv_heads=2, hidden=128),
                                dict(dim=48, n_heads=1, n_kv_heads=1, hidden=48, n_layers=1)])
@pytest.mark.parametrize("r2, online", [(True, True), (True, False), (False, False)])
def test_rotated_model_gives_the_same_logits(kw, r2, online):
    model = random_llama(**kw)
    L = model.logits(IDS)
    rot = rotation.rotate(model, seed=3, r2=r2, online=online)
    assert isinstance(rot, ActQuantModel) == online
    Lr = rot.logits(IDS)
    assert np.abs(Lr - L).max() <= 1e-4 * max(1.0, np.abs(L).max())
    inner = rot.model if online else rot
    assert all(np.array_equal(g, np.ones_like(g)) for g in inner.norms.values())
    assert inner.output is not None                                   # the head is untied
    # the weights really changed (R1 mixes every input channel)
    W0, W1 = model.weights["blk.0.attn_q"].dequantize(), inner.weights["blk.0.attn_q"].dequantize()
    assert np.abs(W1 - W0).max() > 0.1


def test_rotated_model_decodes_with_a_cache():
    model = random_llama()
    rot = rotation.rotate(model)
    c = rot.new_cache()
    first = rot.logits(IDS[0, :7], cache=c)
    nxt = rot.logits(IDS[0, 7:], cache=c)
    assert np.abs(np.concatenate([first, nxt]) - model.logits(IDS[0])).max() < 1e-4


def test_writers_keep_their_norm_and_fold_is_exact():
    model = random_llama()
    folded = rotation.fold_norms(model)
    assert np.abs(folded.logits(IDS) - model.logits(IDS)).max() < 1e-4
    rot = rotation.rotate(model, online=False, r2=False)
    for n in ("blk.0.attn_output", "blk.1.ffn_down"):                # R1^T W: the columns keep their norms
        a, b = model.weights[n].dequantize(), rot.weights[n].dequantize()
        assert np.allclose(np.linalg.norm(a, axis=0), np.linalg.norm(b, axis=0), rtol=1e-5)


def test_rotation_spreads_an_activation_outlier_for_int4_inputs():
    """The point of it all: a linear whose input has one outlier channel, inputs quantized per token to
    4 bits. Rotated, the same product loses far less."""
    r = np.random.default_rng(1)
    X = r.standard_normal((64, 576)).astype(F32)
    X[:, 17] *= 50
    W = (r.standard_normal((32, 576)) / 24).astype(F32)
    Y = X @ W.T
    q = Int8Activations("dynamic", bits=4)
    s = rotation.random_signs(576, 0)
    err_plain = np.linalg.norm(q.fake_quantize(X) @ W.T - Y)
    Xr, Wr = rotation.hadamard_transform(X, s), rotation.hadamard_transform(W, s)
    assert np.abs(Xr @ Wr.T - Y).max() < 1e-3                          # the rotation itself changes nothing
    err_rot = np.linalg.norm(q.fake_quantize(Xr) @ Wr.T - Y)
    assert err_rot < 0.25 * err_plain


def test_rotate_bad_models():
    from minq.models.bert import BertEncoder

    with pytest.raises(TypeError, match="Llama"):
        rotation.rotate(object.__new__(BertEncoder))
    with pytest.raises(TypeError, match="Llama"):
        rotation.rotate(rotation.rotate(random_llama()))               # already wrapped: give the float model
    with pytest.raises(ValueError, match="dim = 52"):
        rotation.rotate(random_llama(dim=52, n_heads=2, n_kv_heads=1, hidden=96))
    with pytest.raises(ValueError, match="head_dim = 10"):
        rotation.rotate(random_llama(dim=20, n_heads=2, n_kv_heads=1, hidden=96))
    with pytest.raises(ValueError, match="hidden_dim = 100"):
        rotation.rotate(random_llama(hidden=100))
    rotation.rotate(random_llama(hidden=100), online=False)           # no online R4: any hidden size
    with pytest.raises(ValueError, match="seed"):
        rotation.rotate(random_llama(), seed=-1)


# --- activation bits and the schemes ----------------------------------------------------------------------


@given(hnp.arrays(F32, st.tuples(st.integers(1, 6), st.integers(1, 40)), elements=st.floats(-1e3, 1e3, width=32)),
       st.integers(2, 8))
def test_activation_bits(X, bits):
    q = Int8Activations("dynamic", bits=bits)
    Xq, sx, _ = q.quantize(X)
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    assert Xq.min() >= lo and Xq.max() <= hi
    X_hat = q.fake_quantize(X)
    assert np.array_equal(X_hat, (sx * Xq).astype(F32))
    assert (np.abs(X_hat - X) <= sx / 2 * (1 + 2 ** -20) + 1e-30).all()   # absmax maps to hi: nothing clips


def test_activation_bits_bad():
    with pytest.raises(ValueError, match="bits"):
        Int8Activations("dynamic", bits=1)
    with pytest.raises(ValueError, match="bits"):
        Int8Activations("outlier", bits=4)
    assert repr(Int8Activations("dynamic", bits=4)) == "Int8Activations('dynamic', bits=4)"


def test_wa_and_rot_schemes():
    model = random_llama(dim=64, n_heads=4, n_kv_heads=2, hidden=128)
    L = model.logits(IDS)
    w4 = minq.quantize(model, "rtn-w4", progress=False)
    w4a8, w4a4 = (minq.quantize(model, n, progress=False) for n in ("w4a8", "w4a4"))
    assert isinstance(w4a8, ActQuantModel) and w4a8.act["blk.0.attn_q"].bits == 8
    e = {n: np.abs(m.logits(IDS) - L).mean() for n, m in (("w4", w4), ("w4a8", w4a8), ("w4a4", w4a4))}
    assert abs(e["w4a8"] - e["w4"]) < 0.1 * e["w4"] and e["w4a4"] > 1.2 * e["w4a8"]   # int8 inputs ~ free, int4 not
    assert np.array_equal(quantize_wa(model, a_bits=8).logits(IDS), w4a8.logits(IDS))
    rot = minq.quantize(model, "rot-fp", progress=False)
    assert np.abs(rot.logits(IDS) - L).max() < 1e-4
    rw4a4 = minq.quantize(model, "rot-w4a4", progress=False)          # online R4, then int4 inputs
    assert isinstance(rw4a4, ActQuantModel) and isinstance(rw4a4.model, ActQuantModel)
    assert np.abs(rw4a4.logits(IDS) - L).mean() < e["w4a4"]           # the residual outlier channel is spread


def test_rot_scheme_names():
    assert registry.family_of("rot-rtn-w4g64") == "rot"
    assert registry.family_of("rot-rtn-w4g64+kv-int4") == "rot+kv"
    assert registry.get("rot-gptq-w4").needs_calibration and not registry.get("rot-rtn-w4").needs_calibration
    assert "GPTQ" in registry.get("rot-gptq-w3g64").description
    for name in ("rot-fp", "rot-rtn-w4", "w4a8", "w4a4", "rot-w4a4"):
        assert name in registry.known()
    with pytest.raises(ValueError, match="rotate once"):
        registry.get("rot-rot-rtn-w4")
    with pytest.raises(ValueError, match="stacks"):
        registry.get("rot-kv-int4")
    with pytest.raises(ValueError):
        registry.get("rot-nonsense")
    with pytest.raises(ValueError):
        registry.get("w4a2")


def test_smollm2_rotated_logits(smollm2):
    """SmolLM2: the rotated float model (R1 through 30 blocks, R2, online R4) gives the original logits:
    the largest difference is float32 rounding, below 1e-5 of the largest logit."""
    ids = np.array(smollm2.tokenizer.encode("To be, or not to be, that is the question: whether 'tis nobler"))
    L = smollm2.logits(ids)
    Lr = minq.quantize(smollm2, "rot-fp", progress=False).logits(ids)
    assert np.abs(Lr - L).max() <= 1e-5 * np.abs(L).max()
    assert (Lr.argmax(-1) == L.argmax(-1)).all()


# --- the KV cache stored rotated (-had) ------------------------------------------------------------------


def test_kv_hadamard_spec_and_names():
    from minq.kvcache_model import spec_of
    from minq.kvcache_quant import KVSpec

    assert spec_of("kv-int4-had").hadamard and not spec_of("kv-int4").hadamard
    assert spec_of("kv-int4-kivi-prerope-had").pre_rope
    assert "Hadamard" in registry.get("kv-int4-had").description
    with pytest.raises(ValueError, match="power of two"):
        KVSpec("int", 4, hadamard=True, group=16).check_head_dim(48)
    with pytest.raises(TypeError, match="hadamard"):
        KVSpec(hadamard=1)


def test_kv_hadamard_spreads_an_outlier_channel(rng):
    from minq.kvcache_quant import KVSpec, fake_quantize_kv

    k = rng.standard_normal((1, 2, 16, 64)).astype(F32)
    k[..., 5] *= 40                                                   # one outlier channel per head
    plain, had = KVSpec("int", 4, group=64), KVSpec("int", 4, group=64, hadamard=True)
    e_plain = np.linalg.norm(fake_quantize_kv(k, plain, "token") - k)
    e_had = np.linalg.norm(fake_quantize_kv(k, had, "token") - k)
    assert e_had < 0.5 * e_plain
    kt = fake_quantize_kv(torch.from_numpy(k), had, "token")           # the torch path: same values
    assert np.abs(kt.numpy() - fake_quantize_kv(k, had, "token")).max() <= 1e-5 * np.abs(k).max()


@pytest.mark.parametrize("name", ["kv-int4-g16-had", "kv-int4-kivi-g4-r4-had", "kv-int8-g16-prerope-had"])
def test_kv_hadamard_cache_decodes_as_one_forward(name):
    """A chunked forward on a fresh cache equals decoding token by token (the cache's decode-exactness),
    and the rotated cache stays close to the float model."""
    model = random_llama(dim=64, n_heads=4, n_kv_heads=2, hidden=128)
    q = minq.quantize(model, name, progress=False)
    ids = IDS[0]
    full = q.logits(ids)
    c = q.new_cache()
    steps = np.concatenate([q.logits(ids[t:t + 1], cache=c) for t in range(len(ids))])
    assert np.abs(full - steps).max() < 1e-4
    assert np.abs(full - model.logits(ids)).mean() < 0.5 * np.abs(model.logits(ids)).mean()


def test_input_bits_stack_on_any_weight_scheme():
    model = random_llama(dim=64, n_heads=4, n_kv_heads=2, hidden=128)
    assert np.array_equal(minq.quantize(model, "w4a4", progress=False).logits(IDS),
                          minq.quantize(model, "rtn-w4+a4", progress=False).logits(IDS))
    assert registry.family_of("rot-gptq-w4+a4") == "rot+act" and registry.get("rot-gptq-w4+a4").needs_calibration
    q = minq.quantize(model, "rot-rtn-w4g64+a8", progress=False)
    assert isinstance(q, ActQuantModel) and q.act["blk.1.ffn_down"].bits == 8
    assert np.abs(q.logits(IDS) - model.logits(IDS)).mean() < 0.5 * np.abs(model.logits(IDS)).mean()
    for bad in ("a1", "a9"):
        with pytest.raises(ValueError, match="2..8"):
            registry.get(bad)
    with pytest.raises(ValueError, match="does not stack"):
        registry.get("a4+rtn-w4")


def test_small_functions_bad_inputs():
    with pytest.raises(ValueError, match="seed"):
        rotation.random_signs(8, seed=-1)
    with pytest.raises(ValueError, match="n"):
        rotation.random_hadamard(0)
    with pytest.raises(TypeError, match="n"):
        rotation.random_signs(8.0)
    with pytest.raises(ValueError, match="n = 10"):
        rotation.OnlineHadamard(np.ones(10))
    with pytest.raises(TypeError, match="Llama"):
        rotation.fold_norms({"not": "a model"})
    with pytest.raises(ValueError, match="limit"):
        rotation.hadamard_sizes(0)
    assert rotation.hadamard_sizes(12) == [1, 2, 4, 8, 12]
    s = rotation.random_signs(64, 3)
    assert s.dtype == F32 and set(np.unique(s)) <= {-1.0, 1.0} and np.array_equal(s, rotation.random_signs(64, 3))
