"""minq.ternary, minq.ternary_kernels, minq.bitnet: BitNet b1.58's absmean ternary weights, W1.58A8, the
multiply-free product, llama.cpp's TQ1_0/TQ2_0 bytes (oracle: gguf-py's own quantizer) and BitLinear."""

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from gguf import quants as gguf_quants
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import minq
from minq import registry, ternary, ternary_kernels
from minq.bitnet import BitLinear, prepare_bitnet
from minq.models.tiny import TinyConfig, TinyLlama, to_numpy_llama, train_tiny
from minq.w8a8 import Int8Activations

F32 = np.float32
finite = st.floats(-1e4, 1e4, width=32, allow_subnormal=False)


def weights(max_side=40):
    return hnp.arrays(F32, hnp.array_shapes(min_dims=1, max_dims=2, max_side=max_side), elements=finite)


# --- quantize / dequantize ------------------------------------------------------------------------------


def test_golden_values():
    """gamma = (0.3 + 0.05 + 1.2 + 0.6) / 4 = 0.5375; W / gamma = 0.558, -0.093, -2.23, 1.116."""
    W = np.array([[0.3, -0.05, -1.2, 0.6]], F32)
    codes, gamma = ternary.quantize(W)
    assert codes.dtype == np.int8 and codes.tolist() == [[1, 0, -1, 1]]
    assert gamma == F32(0.5375)
    assert ternary.dequantize(codes, gamma).tolist() == [[F32(0.5375), 0, -F32(0.5375), F32(0.5375)]]


def test_eps_is_the_papers_form():
    """W / (gamma + eps): a weight at exactly gamma / 2 rounds to 0 (half to even, and eps moves it below)."""
    W = np.array([1.0, -1.0, 0.0, 0.0], F32)                        # gamma = 0.5 = max / 2
    codes, gamma = ternary.quantize(W)
    assert gamma == 0.5 and codes.tolist() == [1, -1, 0, 0]
    codes, gamma = ternary.quantize(np.zeros((3, 4), F32))           # an all-zero tensor: eps, no 0 / 0
    assert gamma == 0 and (codes == 0).all()


@given(weights())
def test_codes_scale_and_error_bound(W):
    codes, gamma = ternary.quantize(W)
    assert codes.dtype == np.int8 and codes.shape == W.shape and np.isin(codes, (-1, 0, 1)).all()
    assert gamma == F32(np.abs(W.astype(np.float64)).mean())         # the scale is mean |W|
    W_hat = ternary.dequantize(codes, gamma)
    inside = np.abs(W) <= 1.5 * gamma
    bound = (gamma + ternary.EPS) / 2 + ternary.EPS + 1e-6 * gamma
    assert (np.abs(W_hat - W)[inside] <= bound).all()
    assert (np.sign(W_hat) * np.sign(W) >= 0).all()                  # never the wrong sign


@given(weights(max_side=24))
def test_torch_path_equals_numpy(W):
    codes, gamma = ternary.quantize(W)
    tc, tg = ternary.quantize(torch.from_numpy(W))
    assert tc.dtype == torch.int8 and np.array_equal(tc.numpy(), codes) and float(tg) == float(gamma)
    assert np.array_equal(ternary.dequantize(tc, tg).numpy(), ternary.dequantize(codes, gamma))


def test_torch_path_on_every_device(device, rng):
    W = rng.standard_normal((64, 96)).astype(F32)
    tc, tg = ternary.quantize(torch.from_numpy(W).to(device))
    codes, gamma = ternary.quantize(W)
    assert tc.device.type == device and np.array_equal(tc.cpu().numpy(), codes) and float(tg) == float(gamma)


def test_zero_fraction_of_a_gaussian(rng):
    """absmean puts the threshold at gamma / 2 = 0.399 sigma: P(|z| < 0.399) = 0.31 of the codes are 0."""
    codes, _ = ternary.quantize(rng.standard_normal((512, 512)).astype(F32))
    assert abs((codes == 0).mean() - 0.310) < 0.005


@pytest.mark.parametrize("W, err", [
    (np.array([1.0, np.nan], F32), ValueError), (np.zeros(0, F32), ValueError), (np.float32(1.0), ValueError),
    (np.ones(4, np.int32), TypeError), ([1.0, 2.0], TypeError)])
def test_quantize_bad_inputs(W, err):
    with pytest.raises(err, match="W"):
        ternary.quantize(np.asarray(W) if isinstance(W, np.float32) else W)


@pytest.mark.parametrize("codes, gamma, err, match", [
    (np.array([2, 0], np.int8), 1.0, ValueError, "codes"), (np.array([1, 0], np.int16), 1.0, TypeError, "codes"),
    (np.array([1, 0], np.int8), -1.0, ValueError, "gamma"), (np.array([1, 0], np.int8), np.nan, ValueError, "gamma"),
    (np.array([1, 0], np.int8), np.ones(2, F32), ValueError, "gamma"), (np.zeros(0, np.int8), 1.0, ValueError, "codes")])
def test_dequantize_bad_inputs(codes, gamma, err, match):
    with pytest.raises(err, match=match):
        ternary.dequantize(codes, gamma)


# --- the weight protocol and llama.cpp's bytes ------------------------------------------------------------


@given(hnp.arrays(F32, st.tuples(st.integers(1, 9), st.integers(1, 70)), elements=finite))
def test_ternary_weight_round_trip(W):
    w = ternary.TernaryWeight.quantize(W)
    codes, gamma = ternary.quantize(W)
    assert np.array_equal(w.codes, codes) and w.gamma == gamma and w.shape == W.shape
    assert np.array_equal(w.dequantize(), ternary.dequantize(codes, gamma))
    assert w.nbytes == W.shape[0] * -(-W.shape[1] // 4) + 4


def test_bits_per_weight_stated_honestly(rng):
    w = ternary.TernaryWeight.quantize(rng.standard_normal((256, 512)).astype(F32))
    assert w.bits_per_weight == pytest.approx(2 + 32 / (256 * 512))
    assert ternary.BITS == {"log2(3)": pytest.approx(1.58496, abs=1e-5), "TernaryWeight": 2.0,
                            "TQ2_0": 2.0625, "TQ1_0": 1.6875}
    codes, gamma = ternary.quantize(rng.standard_normal((4, 512)).astype(F32))
    for qtype in ("TQ1_0", "TQ2_0"):
        assert 8 * ternary.to_gguf(codes, gamma, qtype).nbytes / codes.size == ternary.BITS[qtype]


@pytest.mark.parametrize("qtype", ("TQ1_0", "TQ2_0"))
@given(data=st.data())
def test_gguf_bytes_equal_gguf_py_and_round_trip(qtype, data):
    rows, blocks = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    W = data.draw(hnp.arrays(F32, (rows, 256 * blocks), elements=finite))
    codes, gamma = ternary.quantize(W)
    b = ternary.to_gguf(codes, gamma, qtype)
    W_hat = ternary.dequantize(codes, gamma)
    assert np.array_equal(b, gguf_quants.quantize(W_hat, getattr(GGMLQuantizationType, qtype)))
    back, d = ternary.from_gguf(b, qtype, codes.shape)
    assert np.array_equal(back, codes)
    nz = np.abs(codes).reshape(-1, 256).any(axis=1)
    assert (d[nz] == F32(np.float16(gamma))).all() and (d[~nz] == 0).all()     # d = float16(gamma)


def test_gguf_rows_must_hold_whole_blocks(rng):
    codes, gamma = ternary.quantize(rng.standard_normal((4, 576)).astype(F32))      # SmolLM2's rows
    with pytest.raises(ValueError, match="multiple of 256"):
        ternary.to_gguf(codes, gamma, "TQ2_0")
    with pytest.raises(ValueError, match="qtype"):
        ternary.to_gguf(codes[:, :512], gamma, "Q4_0")
    not_ternary = minq.kquants.quantize(rng.standard_normal((1, 256)).astype(F32), "Q8_0")
    with pytest.raises(ValueError):
        ternary.from_gguf(not_ternary, "TQ2_0", (1, 256))


# --- the product ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", ternary_kernels.KERNELS)
@given(data=st.data())
def test_matvec_kernel_equals_reference(kernel, data):
    out, n, T = data.draw(st.integers(1, 80)), data.draw(st.integers(1, 300)), data.draw(st.integers(1, 3))
    W = data.draw(hnp.arrays(F32, (out, n), elements=finite))
    x = data.draw(hnp.arrays(F32, (T, n) if T > 1 else (n,), elements=finite))
    w = ternary.TernaryWeight.quantize(W)
    assert np.array_equal(ternary.matvec(w, x, kernel=kernel), ternary.matvec_reference(w, x))


@given(data=st.data())
def test_matvec_int_is_the_exact_integer_product(data):
    out, n = data.draw(st.integers(1, 70)), data.draw(st.integers(1, 200))
    codes = data.draw(hnp.arrays(np.int8, (out, n), elements=st.integers(-1, 1)))
    xq = data.draw(hnp.arrays(np.int8, (2, n)))
    w = ternary.TernaryWeight.from_codes(codes, F32(1))
    for kernel in ternary_kernels.KERNELS:
        got = ternary_kernels.matvec_int(w.packed, xq, kernel)
        assert np.array_equal(got, xq.astype(np.int32) @ codes.astype(np.int32).T), kernel


def test_matvec_equals_dequantize_then_matmul(rng):
    """y = gamma sx sum(codes xq) is W_hat @ x_hat within float32 rounding of the dot products."""
    W, x = rng.standard_normal((300, 576)).astype(F32), rng.standard_normal((4, 576)).astype(F32)
    w = ternary.TernaryWeight.quantize(W)
    x_hat = Int8Activations("dynamic").fake_quantize(x)
    ref = x_hat.astype(np.float64) @ w.dequantize().astype(np.float64).T
    bound = 4 * 576 * np.finfo(F32).eps * (np.abs(x_hat) @ np.abs(w.dequantize()).T)
    assert (np.abs(ternary.matvec(w, x) - ref) <= bound).all()


def test_matvec_bad_inputs(rng):
    w = ternary.TernaryWeight.quantize(rng.standard_normal((8, 16)).astype(F32))
    with pytest.raises(ValueError, match="x must be"):
        ternary.matvec(w, np.ones(15, F32))
    with pytest.raises(ValueError, match="x"):
        ternary.matvec(w, np.full(16, np.nan, F32))
    with pytest.raises(TypeError, match="w must be"):
        ternary.matvec(w.dequantize(), np.ones(16, F32))
    with pytest.raises(ValueError, match="kernel"):
        ternary.matvec(w, np.ones(16, F32), kernel="lut")


# --- BitLinear and the model ----------------------------------------------------------------------------


def test_bitlinear_forward_equals_numpy_path(rng):
    lin = BitLinear(96, 40)
    x = torch.from_numpy(rng.standard_normal((5, 96)).astype(F32))
    W = lin.weight.detach().numpy()
    codes, gamma = ternary.quantize(W)
    assert np.array_equal(lin.weight_hat().detach().numpy(), ternary.dequantize(codes, gamma))   # bit for bit
    x_hat = Int8Activations("dynamic").fake_quantize(x.numpy())
    y = lin(x).detach().numpy()
    assert np.allclose(y, x_hat @ ternary.dequantize(codes, gamma).T, rtol=1e-5, atol=1e-5)
    w = ternary.TernaryWeight.quantize(W)
    assert np.allclose(y, ternary.matvec(w, x.numpy()), rtol=1e-5, atol=1e-5)


def test_bitlinear_gradients_pass_straight_through(rng):
    lin = BitLinear(32, 8)
    x = torch.from_numpy(rng.standard_normal((3, 32)).astype(F32)).requires_grad_()
    g = torch.from_numpy(rng.standard_normal((3, 8)).astype(F32))
    (lin(x) * g).sum().backward()
    W_hat = lin.weight_hat().detach()
    assert torch.allclose(lin.weight.grad, g.T @ torch.from_numpy(
        Int8Activations("dynamic").fake_quantize(x.detach().numpy())), atol=1e-5)
    assert torch.allclose(x.grad, g @ W_hat, atol=1e-5)


def test_prepare_bitnet_shares_the_latent_weights():
    net = TinyLlama(TinyConfig(vocab_size=64, dim=32, n_layers=2, n_heads=2, n_kv_heads=1, hidden_dim=64))
    before = {n: p for n, p in net.named_parameters()}
    prepare_bitnet(net)
    assert all(isinstance(getattr(b, n), BitLinear) for b in net.blk for n in ("attn_q", "ffn_down"))
    after = dict(net.named_parameters())
    assert after.keys() == before.keys() and all(after[n] is before[n] for n in before)
    assert minq.ternary.BitLinear is BitLinear and minq.ternary.prepare_bitnet is prepare_bitnet
    with pytest.raises(TypeError, match="net"):
        prepare_bitnet(torch.nn.Linear(3, 3))
    with pytest.raises(TypeError, match="linear"):
        BitLinear.from_linear(torch.nn.Linear(3, 3, bias=True))


def test_trained_bitnet_runs_in_the_numpy_runtime():
    """A few BitNet training steps, then the NumPy model of quantize_bitnet gives the torch logits."""
    config = TinyConfig(vocab_size=64, dim=32, n_layers=2, n_heads=2, n_kv_heads=1, hidden_dim=64, context_length=64)
    ids = np.random.default_rng(0).integers(0, 64, 2000)
    net, losses = train_tiny(config, ids, steps=4, seq_len=32, batch=2, prepare=prepare_bitnet)
    assert np.isfinite(losses).all()
    qmodel = ternary.quantize_bitnet(to_numpy_llama(net))
    assert all(isinstance(qmodel.weights[n], ternary.TernaryWeight) for n in qmodel.linear_names())
    window = ids[:48][None]
    with torch.no_grad():
        want = net(torch.from_numpy(window)).numpy()
    assert np.allclose(qmodel.logits(window), want, rtol=1e-4, atol=1e-4)


def test_schemes(rng):
    assert registry.family_of("ternary") == "ternary" and registry.family_of("ternary-a32") == "ternary"
    assert "ternary" in registry.known()
    W = rng.standard_normal((16, 32)).astype(F32)
    config = TinyConfig(vocab_size=64, dim=32, n_layers=1, n_heads=2, n_kv_heads=1, hidden_dim=64)
    model = to_numpy_llama(TinyLlama(config))
    for name in ("ternary", "ternary-a32"):
        q = minq.quantize(model, name, progress=False)
        assert all(isinstance(q.weights[n], ternary.TernaryWeight) for n in q.linear_names())
    assert ternary.TernaryWeight.quantize(W).bits_per_weight < 2.1


def test_matvec_torch_path_equals_numpy(device, rng):
    W, x = rng.standard_normal((50, 300)).astype(F32), rng.standard_normal((3, 300)).astype(F32)
    x[1] = 0                                                           # a token of zeros: sx = 1
    w = ternary.TernaryWeight.quantize(W)
    assert np.array_equal(ternary.TernaryWeight.quantize(torch.from_numpy(W).to(device)).packed, w.packed)
    for xin in (x, x[2]):
        y = ternary.matvec(w, torch.from_numpy(xin).to(device))
        assert y.device.type == device
        assert np.array_equal(y.cpu().numpy(), ternary.matvec_reference(w, xin))
