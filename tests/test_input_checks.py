"""Regressions from an adversarial pass over the public API: each input once gave garbage (inf, a
truncated token, a formatting error) or a raw IndexError; now it gets a clear error naming the
parameter, or a correct result."""

import numpy as np
import pytest

from minq import affine
from minq.formats import FloatFormat
from minq.packing import unpack

F32_MAX = float(np.finfo(np.float32).max)


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
def test_grid_reaching_float32_max_stays_finite(bits, symmetric, device):
    """Symmetric 8-bit of +-max(float32) used to dequantize to +-inf (s = max/127 rounded up, times 127)."""
    torch = pytest.importorskip("torch")
    x = np.array([F32_MAX, -F32_MAX, 1.0], np.float32) if symmetric else np.array([F32_MAX, 0.0, 1.0], np.float32)
    for xi in (x, torch.tensor(x, device=device)):
        qp = affine.choose_qparams(xi, bits=bits, symmetric=symmetric)
        x_hat = affine.fake_quantize(xi, qp)
        x_hat = x_hat.cpu().numpy() if hasattr(x_hat, "cpu") else x_hat
        assert np.isfinite(x_hat).all()
        s = float(np.asarray(qp.s.cpu() if hasattr(qp.s, "cpu") else qp.s).max())
        x64 = x.astype(np.float64)
        assert np.all(np.abs(x_hat.astype(np.float64) - x64) <= s / 2 + 2.0**-22 * (np.abs(x64) + s))


@pytest.mark.parametrize("z", [-1.0, 2.5, 16.0])
def test_qparams_rejects_bad_integer_zero_points(z):
    with pytest.raises(ValueError, match=r"z must hold integers in \[0, 15\]"):
        affine.QParams(np.float32(0.1), np.float32(z), 4)
    affine.QParams(np.float32(0.1), np.float32(2.5), 4, zero_point="float")     # fine as a float zero point


@pytest.mark.parametrize("bits, match", [(0, "bits must be in 1..8"), (9, "bits must be in 1..8")])
def test_qparams_rejects_bad_bits(bits, match):
    with pytest.raises(ValueError, match=match):
        affine.QParams(np.float32(0.1), np.float32(0), bits)


@pytest.mark.parametrize("fields, match", [
    ((1, 0, 3, 7, "fn"), "exp_bits must be an int in 1..8"),
    ((1, 9, 2, 15, "ieee"), "exp_bits must be an int in 1..8"),
    ((1, 8, 31, 127, "ieee"), "man_bits must be an int in 0..23"),          # a 40-bit format
    ((2, 4, 3, 7, "fn"), "sign_bits must be an int in 0..1"),
    ((1, 4, 3, 7.5, "fn"), "bias must be an int"),
    ((0, 8, 0, 127, "ieee"), "convention must be 'fnu'"),
    ((1, 8, 0, 127, "fnu"), "convention must be 'fnu' exactly"),
    ((1, 4, 0, 7, "fn"), "needs man_bits >= 1"),
])
def test_float_format_rejects_impossible_layouts(fields, match):
    with pytest.raises(ValueError, match=match):
        FloatFormat("x", *fields)


def test_unpack_of_a_0d_array():
    with pytest.raises(ValueError, match="packed must have at least one dimension"):
        unpack(np.array(3, np.uint8), 4, 2)


def test_tokenizer_decode_rejects_non_integer_ids(smollm2):
    tok = smollm2.tokenizer
    with pytest.raises(TypeError, match="ids must be integer token ids"):
        tok.decode([1.7])
    with pytest.raises(TypeError, match="ids must be integer token ids"):
        tok.decode(np.array([1.0, 2.0]))
    assert tok.decode(np.array([tok.encode("Hello")[0]])) == tok.decode(tok.encode("Hello")[:1])


def test_bert_tokenizer_rejects_a_corrupt_file(tmp_path):
    from minq.models.tokenizer import BertTokenizer

    bad = tmp_path / "tokenizer.json"
    bad.write_text('{"version": "1.0", "model": ')
    with pytest.raises(ValueError, match="not a readable tokenizer.json"):
        BertTokenizer(bad)


# --- models: invalid checkpoints are rejected at load, not at the first forward ---------------------

def _tiny_gguf(**changes):
    """Metadata and tensors of a 1-block Llama (d 8, 2 heads, 1 KV head), as minq.gguf.read_gguf returns them."""
    from types import SimpleNamespace

    rng = np.random.default_rng(0)
    md = {"general.architecture": "llama", "llama.attention.head_count": 2, "llama.attention.head_count_kv": 1,
          "llama.embedding_length": 8, "llama.block_count": 1, "llama.feed_forward_length": 16,
          "llama.attention.layer_norm_rms_epsilon": 1e-5, "llama.rope.freq_base": 10000.0,
          "llama.context_length": 64, "llama.vocab_size": 32}
    shapes = {"attn_q": (8, 8), "attn_k": (4, 8), "attn_v": (4, 8), "attn_output": (8, 8), "ffn_gate": (16, 8),
              "ffn_up": (16, 8), "ffn_down": (8, 16)}
    t = {f"blk.0.{n}.weight": rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}
    t |= {"blk.0.attn_norm.weight": np.ones(8, np.float32), "blk.0.ffn_norm.weight": np.ones(8, np.float32),
          "output_norm.weight": np.ones(8, np.float32),
          "token_embd.weight": rng.standard_normal((32, 8)).astype(np.float32)}
    for k, v in changes.items():
        if k in md or k.startswith("llama."):
            md.pop(k) if v is None else md.__setitem__(k, v)
        else:
            t[k] = v
    return SimpleNamespace(metadata=md, tensors=t)


@pytest.mark.parametrize("changes, match", [
    ({"blk.0.attn_norm.weight": np.array([1, np.nan, 1, 1, 1, 1, 1, 1], np.float32)}, "'blk.0.attn_norm' has NaN"),
    ({"blk.0.ffn_up.weight": np.full((16, 8), np.inf, np.float32)}, "weight 'blk.0.ffn_up' has NaN or Inf"),
    ({"token_embd.weight": np.zeros((16, 8), np.float32)}, "'token_embd' has shape \\(16, 8\\)"),   # < vocab_size
    ({"llama.attention.layer_norm_rms_epsilon": -1e-5}, "norm_eps must be a finite number > 0"),
    ({"llama.rope.freq_base": 0.0}, "rope_theta must be a finite number > 0"),
    ({"llama.context_length": None}, "metadata key 'llama.context_length' is missing"),
    ({"llama.attention.head_count": 3}, "must split into n_heads 3 heads"),
])
def test_llama_checkpoint_rejected_at_load(monkeypatch, changes, match):
    import minq.gguf
    from minq.models.llama import LlamaModel
    from minq.models.tokenizer import Tokenizer

    monkeypatch.setattr(minq.gguf, "read_gguf", lambda path, progress=True, dequantize=True: _tiny_gguf(**changes))
    monkeypatch.setattr(Tokenizer, "from_gguf_metadata", staticmethod(lambda md: None))
    with pytest.raises(ValueError, match=match):
        LlamaModel.from_gguf("tiny.gguf", progress=False)


def test_tiny_checkpoint_loads(monkeypatch):
    import minq.gguf
    from minq.models.llama import LlamaModel
    from minq.models.tokenizer import Tokenizer

    monkeypatch.setattr(minq.gguf, "read_gguf", lambda path, progress=True, dequantize=True: _tiny_gguf())
    monkeypatch.setattr(Tokenizer, "from_gguf_metadata", staticmethod(lambda md: None))
    m = LlamaModel.from_gguf("tiny.gguf", progress=False)
    assert np.isfinite(m.logits(np.arange(5))).all()


def test_nan_dense_weight_is_rejected_when_swapped_in(smollm2):
    from minq.models import DenseWeight

    W = np.array(smollm2.weights["blk.0.attn_q"].dequantize())
    W[3, 4] = np.nan
    with pytest.raises(ValueError, match="weight 'blk.0.attn_q' has NaN or Inf"):
        smollm2.with_weights({"blk.0.attn_q": DenseWeight(W)})


# --- methods ---------------------------------------------------------------------------------------

def test_observer_axis_is_checked():
    from minq.observers import MinMaxObserver

    with pytest.raises(ValueError, match="axis 5 is out of range for x with 2 dimensions"):
        MinMaxObserver(bits=8, axis=5).update(np.ones((3, 4), np.float32))
    with pytest.raises(TypeError, match="axis must be None, an int or a tuple of ints"):
        MinMaxObserver(bits=8, axis="a")


def test_observed_rtn_takes_torch_tensors(device):
    torch = pytest.importorskip("torch")
    from minq.ptq import quantize_weight_observed

    W = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    c = quantize_weight_observed(torch.tensor(W, device=device), bits=4, group_size=32)
    assert c.dequantize().device.type == device
    assert np.array_equal(c.dequantize().cpu().numpy(), quantize_weight_observed(W, bits=4, group_size=32).dequantize())


def test_nan_and_inf_inputs_to_the_methods():
    from minq import awq, gptq, smoothquant, w8a8

    with pytest.raises(ValueError, match="X contains NaN or Inf"):
        w8a8.Int8Activations("dynamic").fake_quantize(np.array([[1.0, np.inf]], np.float32))
    with pytest.raises(ValueError, match="act_absmax contains NaN or Inf"):
        smoothquant.smooth_scales(np.array([np.nan, 1.0]), [np.ones((2, 2))])
    with pytest.raises(ValueError, match="x_bar contains NaN or Inf"):
        awq.awq_scales(np.array([np.nan, 1.0], np.float32), 0.5)
    with pytest.raises(ValueError, match="H contains NaN or Inf"):
        gptq.inverse_cholesky(np.full((3, 3), np.nan, np.float32))


def test_gptq_with_an_all_zero_hessian():
    from minq.gptq import gptq_quantize

    with pytest.raises(ValueError, match="no calibration token reached this layer"):
        gptq_quantize(np.ones((2, 4), np.float32), np.zeros((4, 4), np.float32), bits=4)
