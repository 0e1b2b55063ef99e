"""A quantized output head: ``with_head`` and the ``head-*`` schemes. A tied head is one tensor with the
embedding, so both read the quantized values; a packed model multiplies and looks up rows through the
head's kernel and never builds its float32 table."""

import numpy as np
import pytest

import minq
from minq.groups import GroupedAffine, quantize_groups
from minq.models.llama import LlamaModel

F32 = np.float32




def _float_twin(model, E):
    """The same model with the float32 array ``E`` as its (tied) embedding and head."""
    return LlamaModel(model.config, model.weights, model.norms, E, tokenizer=model.tokenizer)


def test_tied_head_quantized_everywhere(tiny_llama):
    q = minq.quantize(tiny_llama, "rtn-w4g64+head-rtn-w4g64", progress=False)
    w = q.head_weight
    assert isinstance(w, GroupedAffine) and w.shape == tiny_llama.embedding.shape and q.output is None
    assert np.array_equal(q.embedding, w.dequantize())                       # lookups read the same values
    assert not np.array_equal(q.embedding, tiny_llama.embedding)
    twin = _float_twin(minq.quantize(tiny_llama, "rtn-w4g64", progress=False), w.dequantize())
    ids = np.arange(30) % 96
    for engine in ("fast", "reference"):
        assert np.array_equal(q.logits(ids, engine=engine), twin.logits(ids, engine=engine))
    assert q.nbytes == twin.nbytes                                          # nbytes: the linears


def test_packed_head_kernel(tiny_llama):
    q = minq.quantize(tiny_llama, "rtn-w4g64+head-rtn-w4g64", progress=False)
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


def test_untied_head_replaces_output_only(tiny_llama):
    rng = np.random.default_rng(0)
    t = tiny_llama
    out = (0.05 * rng.standard_normal(t.embedding.shape)).astype(F32)
    m = LlamaModel(t.config, t.weights, t.norms, t.embedding, output=out, tokenizer=t.tokenizer)
    h = minq.quantize(m, "head-rtn-w8", progress=False)
    assert h.embedding is tiny_llama.embedding and isinstance(h.head_weight, GroupedAffine)
    assert np.array_equal(h.output, h.head_weight.dequantize())
    ids = np.arange(12) % 96
    want = LlamaModel(t.config, t.weights, t.norms, t.embedding, output=h.output).logits(ids)
    assert np.array_equal(h.logits(ids), want)


def test_head_stacks_with_other_schemes(tiny_llama):
    q = minq.quantize(tiny_llama, "rtn-w4g64+head-rtn-w8+kv-int8", progress=False)
    assert isinstance(q.head_weight, GroupedAffine) and q.head_weight.bits == 8
    ids = np.arange(20) % 96
    assert np.isfinite(q.logits(ids)).all()
    assert minq.registry.family_of("rtn-w4g64+head-rtn-w8") == "rtn+head"
    act = minq.quantize(tiny_llama, "w4a8+head-rtn-w4g64", progress=False)
    assert isinstance(act.head_weight, GroupedAffine) and np.isfinite(act.logits(ids)).all()


def test_bad_heads(tiny_llama):
    w = quantize_groups(tiny_llama.embedding[:, :64], bits=4, group_size=64)
    with pytest.raises(ValueError, match="head's shape"):
        tiny_llama.with_head(w)
    with pytest.raises(TypeError, match="w must be"):
        tiny_llama.with_head("q4")
    with pytest.raises(ValueError, match="quantizes each weight on its own"):
        minq.registry.get("head-gptq-w4g64")
    with pytest.raises(ValueError, match="does not stack"):
        minq.registry.get("head-rtn-w8+rtn-w4")
    with pytest.raises(ValueError):
        minq.registry.get("head-nonsense")
