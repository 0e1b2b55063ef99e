"""QAT of a whole Llama (minq.qat_llama) and W4A8's activation fake quantizer (minq.qat.fake_quantize_act):
the trained fake-quantized torch model and the converted NumPy model agree, zero steps is RTN, block-wise
training lowers each block's error, and bad arguments are refused before any training."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

torch = pytest.importorskip("torch")  # a dev dependency

from minq import quantize  # noqa: E402
from minq.models.tiny import TinyConfig, TinyLlama, to_numpy_llama  # noqa: E402
from minq.qat import QATLinear, fake_quantize_act  # noqa: E402
from minq.qat_llama import qat_blockwise, qat_finetune, quantized_llama, torch_block  # noqa: E402
from minq.w8a8 import ActQuantModel, Int8Activations  # noqa: E402

MICRO = TinyConfig(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=64, context_length=64)


def random_net(seed=0, std=0.2):
    torch.manual_seed(seed)
    net = TinyLlama(MICRO)
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.normal_(0, std)
            if name.endswith("_norm"):
                p.add_(1.0)
    return net.eval()


def stream(n=600, seed=0):
    return np.random.default_rng(seed).integers(0, MICRO.vocab_size, size=n)


def close(a, b, rtol=1e-4):
    return np.abs(a - b).max() <= rtol * max(1.0, np.abs(b).max())


# --- the activation fake quantizer ------------------------------------------------------------------------


@settings(deadline=None)
@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=2, max_side=12),
                  elements=st.floats(-1e4, 1e4, width=32)))
def test_fake_quantize_act_equals_w8a8_dynamic(X):
    """Bit for bit chapter 04's per-token int8 (ties, zero rows, tiny values included), |X_hat - X| <= sx/2."""
    got = fake_quantize_act(torch.from_numpy(X)).numpy()
    want = Int8Activations("dynamic").fake_quantize(X)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    sx = np.abs(X).max(1, keepdims=True) / np.float32(127)
    sx = np.maximum(sx, np.finfo(np.float32).tiny)   # rows of subnormal values keep a normal scale
    assert np.isfinite(got).all() and (np.abs(got - X) <= sx / 2 * (1 + 1e-6)).all()


def test_fake_quantize_act_straight_through_and_bad_inputs():
    X = torch.randn(3, 8, requires_grad=True)
    g = torch.randn(3, 8)
    fake_quantize_act(X).backward(g)
    assert torch.equal(X.grad, g)                                            # the identity backward
    with pytest.raises(ValueError, match="X"):
        fake_quantize_act(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(ValueError, match="X"):
        fake_quantize_act(torch.tensor(1.0))
    with pytest.raises(TypeError, match="X"):
        fake_quantize_act(torch.ones(2, 2, dtype=torch.int32))


# --- end-to-end QAT -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kw", [dict(method="ste"), dict(method="ste", ste="clipped", loss="ce"),
                                dict(method="lsq"), dict(method="lsq", offset=True),
                                dict(method="lsq", act_int8=True)])
def test_finetune_converts_to_the_same_model(kw, device):
    """After training (on every device present), the converted NumPy model (real codes) gives the
    fake-quantized torch logits."""
    net = random_net().to(device)
    qnet, losses = qat_finetune(net, stream(), bits=3, group_size=16, steps=4, seq_len=16, batch=4,
                                lr=1e-2, progress=False, **kw)
    assert losses.shape == (4,) and np.isfinite(losses).all()
    assert next(qnet.parameters()).device.type == device
    ids = np.random.default_rng(1).integers(0, MICRO.vocab_size, size=(2, 20))
    with torch.no_grad():
        ref = qnet(torch.from_numpy(ids).to(device)).cpu().numpy()
    model = quantized_llama(qnet)
    assert isinstance(model, ActQuantModel) == bool(kw.get("act_int8"))
    assert close(model.logits(ids), ref)
    for name in model.linear_names():                                    # the weights did train
        assert not np.array_equal(model.weights[name].dequantize(), to_numpy_llama(net.cpu()).weights[name].dequantize())


def test_finetune_leaves_the_float_model_and_zero_steps_is_rtn():
    net = random_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    qnet, losses = qat_finetune(net, stream(), bits=4, group_size=16, method="ste", steps=0, seq_len=16,
                                progress=False)
    assert losses.shape == (0,)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    rtn = quantize(to_numpy_llama(net), "rtn-w4g16", progress=False)
    got = quantized_llama(qnet)
    for name in rtn.linear_names():
        assert np.array_equal(got.weights[name].dequantize(), rtn.weights[name].dequantize()), name


def test_finetune_lowers_the_distillation_loss():
    """W2 on a random model: 60 KD steps bring the quantized model's KL to the float model down."""
    net = random_net(std=0.3)
    _, losses = qat_finetune(net, stream(2000), bits=2, group_size=16, method="lsq", offset=True, steps=60,
                             seq_len=32, batch=8, lr=3e-3, progress=False)
    assert losses[-5:].mean() < 0.7 * losses[:5].mean()


def test_finetune_bad_arguments():
    net = random_net()
    ok = dict(bits=4, group_size=16, seq_len=16, progress=False)
    with pytest.raises(TypeError, match="net"):
        qat_finetune(to_numpy_llama(net), stream(), **ok)
    for bad, match in [(dict(steps=-1), "steps"), (dict(batch=0), "batch"), (dict(seed=-1), "seed"), (dict(lr=0.0), "lr"), (dict(lr=float("nan")), "lr"),
                       (dict(lr_quant=-1.0), "lr_quant"), (dict(loss="mse"), "loss"), (dict(bits=9), "bits"),
                       (dict(group_size=12), "group"), (dict(method="pact"), "method"),
                       (dict(seq_len=65), "seq_len")]:
        with pytest.raises(ValueError, match=match):
            qat_finetune(net, stream(), **{**ok, **bad})
    for ids, match in [(stream()[None], "ids"), (stream(10), "ids"), (stream() + 64, "ids"),
                       (stream().astype(np.float32), "ids")]:
        with pytest.raises(ValueError, match=match):
            qat_finetune(net, ids, **ok)
    with pytest.raises(TypeError, match="qnet"):
        quantized_llama(QATLinear(torch.nn.Linear(16, 4), bits=4))


# --- block-wise QAT ---------------------------------------------------------------------------------------


def test_torch_block_equals_the_numpy_block():
    model = to_numpy_llama(random_net())
    x = np.random.default_rng(0).standard_normal((2, 12, MICRO.dim)).astype(np.float32)
    from minq.models.llama import rope_tables

    cos, sin = (torch.from_numpy(np.asarray(a, np.float32)) for a in rope_tables(np.arange(12), MICRO.head_dim,
                                                                                 MICRO.rope_theta))
    for i in range(MICRO.n_layers):
        with torch.no_grad():
            got = torch_block(model, i)(torch.from_numpy(x), cos, sin).numpy()
        assert close(got, model.run_block(i, x), 1e-5)
    with pytest.raises(ValueError, match="i must"):
        torch_block(model, 2)
    with pytest.raises(TypeError, match="model"):
        torch_block(random_net(), 0)


def calib(n=8, T=16):
    return np.random.default_rng(3).integers(0, MICRO.vocab_size, size=(n, T))


def test_blockwise_zero_steps_is_rtn_and_training_lowers_every_block():
    model = to_numpy_llama(random_net())
    q0, log0 = qat_blockwise(model, calib(), bits=3, group_size=16, method="ste", steps=0, progress=False)
    rtn = quantize(model, "rtn-w3g16", progress=False)
    for name in rtn.linear_names():
        assert np.array_equal(q0.weights[name].dequantize(), rtn.weights[name].dequantize()), name
    assert all(e["mse_before"] == e["mse_after"] for e in log0)
    q, log = qat_blockwise(model, calib(), bits=3, group_size=16, method="lsq", offset=True, steps=40, batch=4,
                           lr=1e-3, lr_quant=1e-3, progress=False)
    assert [e["block"] for e in log] == [0, 1]
    assert all(e["mse_after"] < 0.9 * e["mse_before"] for e in log), log
    assert all(e["mse_after"] < r["mse_after"] for e, r in zip(log, log0)), (log, log0)
    assert set(q.weights) == set(model.weights) and q.norms.keys() == model.norms.keys()


def test_blockwise_act_int8_on_each_device_and_bad_arguments(device):
    model = to_numpy_llama(random_net())
    q, _ = qat_blockwise(model, calib(), bits=4, group_size=16, steps=2, act_int8=True, device=device, progress=False)
    assert isinstance(q, ActQuantModel) and set(q.act) == set(model.linear_names())
    ok = dict(bits=4, group_size=16, steps=1, progress=False)
    with pytest.raises(TypeError, match="model"):
        qat_blockwise(random_net(), calib(), **ok)
    for bad, match in [(dict(steps=-1), "steps"), (dict(lr=-1.0), "lr"), (dict(batch=9), "batch"),
                       (dict(batch=0), "batch"), (dict(method="pact"), "method"), (dict(bits=0), "bits")]:
        with pytest.raises(ValueError, match=match):
            qat_blockwise(model, calib(), **{**ok, **bad})
    with pytest.raises(TypeError, match="steps"):
        qat_blockwise(model, calib(), **{**ok, "steps": 1.5})
    for ids in (calib()[0], calib(T=1), calib().astype(np.float64)):
        with pytest.raises(ValueError, match="ids"):
            qat_blockwise(model, ids, **ok)
