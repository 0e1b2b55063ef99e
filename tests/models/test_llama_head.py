"""A quantized output head: ``with_head`` and the ``head-*`` schemes. A tied head is one tensor with the
embedding, so both read the quantized values; a packed model multiplies and looks up rows through the
head's kernel and never builds its float32 table."""

import numpy as np
import pytest
import torch

import minq
from minq.groups import GroupedAffine, quantize_groups
from minq.models.llama import LlamaModel
from minq.models.tiny import TinyConfig, TinyLlama, to_numpy_llama

F32 = np.float32


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    config = TinyConfig(vocab_size=96, dim=128, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=384,
                        context_length=64)
    net = TinyLlama(config)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return to_numpy_llama(net)


def _float_twin(model, E):
    """The same model with the float32 array ``E`` as its (tied) embedding and head."""
    return LlamaModel(model.config, model.weights, model.norms, E, tokenizer=model.tokenizer)


def test_tied_head_quantized_everywhere(tiny):
    q = minq.quantize(tiny, "rtn-w4g64+head-rtn-w4g64", progress=False)
    w = q.head_weight
    assert isinstance(w, GroupedAffine) and w.shape == tiny.embedding.shape and q.output is None
    assert np.array_equal(q.embedding, w.dequantize())                       # lookups read the same values
    assert not np.array_equal(q.embedding, tiny.embedding)
    twin = _float_twin(minq.quantize(tiny, "rtn-w4g64", progress=False), w.dequantize())
    ids = np.arange(30) % 96
    for engine in ("fast", "reference"):
        assert np.array_equal(q.logits(ids, engine=engine), twin.logits(ids, engine=engine))
    assert q.nbytes == twin.nbytes                                          # nbytes: the linears


def test_packed_head_kernel(tiny):
    q = minq.quantize(tiny, "rtn-w4g64+head-rtn-w4g64", progress=False)
    for act in ("float", "int8"):
        p = q.packed(act)
        assert p._head_kernel is not None
        ids = np.arange(40) % 96
        assert np.allclose(p.embed(ids), q.embed(ids), rtol=1e-6, atol=1e-7)   # rows of the kernel
        assert "token_embd" not in p._floats                                    # no float32 table built
        if act == "float":
            for engine in ("fast", "reference"):
                assert np.allclose(p.logits(ids, engine=engine), q.logits(ids, engine=engine), rtol=1e-4, atol=1e-4)
        cache, cq = p.new_cache(), q.new_cache()
        p.logits(ids[:30], cache=cache)
        q.logits(ids[:30], cache=cq)
        a, b = p.logits(ids[30:31], cache=cache), q.logits(ids[30:31], cache=cq)
        assert np.allclose(a, b, rtol=1e-2, atol=2e-2 * np.abs(b).max())       # int8: the input's rounding
        assert p.dequantized()._head_kernel is None


def test_untied_head_replaces_output_only(tiny):
    rng = np.random.default_rng(0)
    out = (0.05 * rng.standard_normal(tiny.embedding.shape)).astype(F32)
    m = LlamaModel(tiny.config, tiny.weights, tiny.norms, tiny.embedding, output=out, tokenizer=tiny.tokenizer)
    h = minq.quantize(m, "head-rtn-w8", progress=False)
    assert h.embedding is tiny.embedding and isinstance(h.head_weight, GroupedAffine)
    assert np.array_equal(h.output, h.head_weight.dequantize())
    ids = np.arange(12) % 96
    want = LlamaModel(tiny.config, tiny.weights, tiny.norms, tiny.embedding, output=h.output).logits(ids)
    assert np.array_equal(h.logits(ids), want)


def test_head_stacks_with_other_schemes(tiny):
    q = minq.quantize(tiny, "rtn-w4g64+head-rtn-w8+kv-int8", progress=False)
    assert isinstance(q.head_weight, GroupedAffine) and q.head_weight.bits == 8
    ids = np.arange(20) % 96
    assert np.isfinite(q.logits(ids)).all()
    assert minq.registry.family_of("rtn-w4g64+head-rtn-w8") == "rtn+head"
    act = minq.quantize(tiny, "w4a8+head-rtn-w4g64", progress=False)
    assert isinstance(act.head_weight, GroupedAffine) and np.isfinite(act.logits(ids)).all()


def test_bad_heads(tiny):
    w = quantize_groups(tiny.embedding[:, :64], bits=4, group_size=64)
    with pytest.raises(ValueError, match="head's shape"):
        tiny.with_head(w)
    with pytest.raises(TypeError, match="w must be"):
        tiny.with_head("q4")
    with pytest.raises(ValueError, match="quantizes each weight on its own"):
        minq.registry.get("head-gptq-w4g64")
    with pytest.raises(ValueError, match="does not stack"):
        minq.registry.get("head-rtn-w8+rtn-w4")
    with pytest.raises(ValueError):
        minq.registry.get("head-nonsense")
