"""minq.kquants_mix and minq.gguf_write: llama.cpp's per-tensor mixes, the q4_k_m-style schemes, and GGUF
files written tensor by tensor that gguf-py, minq and transformers read back."""

from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest

import minq
from minq import registry
from minq.kquants import GGMLWeight, dequantize, quantize
from minq.kquants_mix import FALLBACK, MIXES, mix_types, tensor_type, use_more_bits
from minq.models import assets


def smollm2_like():
    """SmolLM2-135M's 210 linears by name and shape, without its weights (30 blocks, 9 / 3 heads)."""
    shapes = {"attn_q": (576, 576), "attn_k": (192, 576), "attn_v": (192, 576), "attn_output": (576, 576),
              "ffn_gate": (1536, 576), "ffn_up": (1536, 576), "ffn_down": (576, 1536)}
    weights = {f"blk.{i}.{k}": SimpleNamespace(shape=s) for i in range(30) for k, s in shapes.items()}
    return SimpleNamespace(linear_names=lambda: list(weights), weights=weights)


def test_use_more_bits_picks_about_half():
    assert sum(use_more_bits(i, 30) for i in range(30)) == 14
    assert sum(use_more_bits(i, 32) for i in range(32)) == 16
    assert [i for i in range(30) if use_more_bits(i, 30)] == [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]


# What llama-quantize writes for SmolLM2-135M's linears (its files, token_embd left out), per mix.
LLAMA_CPP = {
    "Q4_K_M": {"Q4_K": 16, "Q6_K": 14, "Q5_0": 166, "Q8_0": 14},
    "Q5_K_M": {"Q5_K": 16, "Q6_K": 14, "Q5_1": 166, "Q8_0": 14},
    "Q3_K_M": {"Q4_K": 29, "Q5_K": 1, "Q4_0": 120, "Q5_0": 58, "Q5_1": 2},
    "Q2_K": {"Q3_K": 30, "Q4_0": 180},
    "Q6_K": {"Q6_K": 30, "Q8_0": 180},
    "Q8_0": {"Q8_0": 210},
}


@pytest.mark.parametrize("mix", LLAMA_CPP)
def test_smollm2_types_equal_llama_quantize(mix):
    assert Counter(mix_types(smollm2_like(), mix).values()) == LLAMA_CPP[mix]


def test_only_ffn_down_holds_k_types_on_576_wide_rows():
    types = mix_types(smollm2_like(), "q4_k_s")
    for name, t in types.items():
        assert (t.endswith("_K")) == name.endswith("ffn_down"), (name, t)
    assert tensor_type("blk.0.attn_v", 576, "Q6_K", n_blocks=30) == FALLBACK["Q6_K"] == "Q8_0"
    assert tensor_type("blk.3.attn_v", 512, "Q2_K", n_blocks=30, n_gqa=4) == "Q4_K"     # n_gqa >= 4
    with pytest.raises(ValueError, match="no block type"):
        tensor_type("blk.0.ffn_up", 100, "Q4_K_M", n_blocks=30)
    with pytest.raises(ValueError, match=r"\bmix\b"):
        tensor_type("blk.0.ffn_up", 256, "Q4_K_X", n_blocks=30)


def test_schemes_are_registered():
    for mix in MIXES:
        assert registry.family_of(mix.lower()) == "gguf"
    assert "q4_k_m" in registry.default_schemes() and "q4_k_m" in registry.default_schemes(quick=True)


@pytest.fixture(scope="module")
def smollm2():
    return minq.load_model("smollm2", progress=False)


def test_scheme_quantizes_every_linear_to_its_type(smollm2):
    q = minq.quantize(smollm2, "q4_k_m", progress=False)
    types = mix_types(smollm2, "q4_k_m")
    for name in ("blk.0.ffn_down", "blk.3.ffn_down", "blk.0.attn_v", "blk.7.attn_q"):
        w = q.weights[name]
        assert isinstance(w, GGMLWeight) and w.qtype == types[name]
        W = smollm2.weights[name].dequantize()
        assert np.array_equal(w.data, quantize(W, types[name]))
    n = sum(w.shape[0] * w.shape[1] for w in smollm2.weights.values())
    assert 5.0 < 8 * q.nbytes / n < 5.6                       # Q5_0 (5.5 bits) on most linears, Q4_K on some


# --- writing GGUF ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def q4_k_m_file(tmp_path_factory):
    from minq.gguf_write import quantize_gguf

    src = assets.fetch("smollm2")
    dst = tmp_path_factory.mktemp("gguf") / "smollm2.Q4_K_M.gguf"
    plan = quantize_gguf(src, dst, "Q4_K_M", progress=False)
    return src, dst, plan


def test_written_file_has_llama_quantize_types(q4_k_m_file):
    _, _, plan = q4_k_m_file
    c = Counter(plan.values())
    # llama-quantize's Q4_K_M of this file: 16 Q4_K + 14 Q6_K + 166 Q5_0 + 15 Q8_0 (token_embd copied) + norms
    assert (c["Q4_K"], c["Q6_K"], c["Q5_0"], c["Q8_0"], c["F32"]) == (16, 14, 166, 15, 61)


def test_written_file_reads_back_tensor_for_tensor(q4_k_m_file):
    import gguf

    src, dst, plan = q4_k_m_file
    r_src, r_dst = gguf.GGUFReader(src), gguf.GGUFReader(dst)
    assert [t.name for t in r_src.tensors] == [t.name for t in r_dst.tensors]
    assert r_dst.fields["general.file_type"].contents() == int(gguf.LlamaFileType.MOSTLY_Q4_K_M)
    assert r_dst.fields["tokenizer.ggml.tokens"].contents() == r_src.fields["tokenizer.ggml.tokens"].contents()
    for a, b in zip(r_src.tensors, r_dst.tensors):
        assert b.tensor_type.name == plan[a.name] and list(a.shape) == list(b.shape)
        if b.name in ("blk.4.ffn_down.weight", "blk.5.ffn_down.weight", "blk.4.attn_k.weight", "token_embd.weight",
                      "blk.9.attn_norm.weight"):
            shape = tuple(int(n) for n in reversed(a.shape))
            if a.tensor_type == b.tensor_type:
                assert np.array_equal(np.asarray(a.data), np.asarray(b.data))
            else:
                W = dequantize(np.asarray(a.data), a.tensor_type.name, shape)
                assert np.array_equal(np.asarray(b.data), quantize(W, b.tensor_type.name))


def test_written_file_loads_with_the_same_perplexity(q4_k_m_file, smollm2):
    _, dst, _ = q4_k_m_file
    from minq.data import eval_tokens

    ids = eval_tokens(smollm2.tokenizer, max_tokens=512)
    loaded = minq.load_model(dst, progress=False)
    in_memory = minq.quantize(smollm2, "q4_k_m", progress=False)
    # the in-memory scheme leaves the embedding as loaded: so does the file (Q8_0 copied), so equal
    assert minq.perplexity(loaded, ids, 256) == pytest.approx(minq.perplexity(in_memory, ids, 256), rel=1e-5)


def test_transformers_loads_the_written_file(q4_k_m_file):
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    _, dst, _ = q4_k_m_file
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(dst.parent), gguf_file=dst.name,
                                                           torch_dtype=torch.float32)
    ids = np.arange(100, 164)[None]
    with torch.no_grad():
        want = hf(torch.from_numpy(ids)).logits.numpy()
    got = minq.load_model(dst, progress=False).logits(ids)
    assert np.abs(got - want).max() <= 1e-3 * np.abs(want).max()


def test_writer_bad_inputs_and_interruption(q4_k_m_file, tmp_path, monkeypatch):
    from minq import gguf_write

    src, _, _ = q4_k_m_file
    with pytest.raises(ValueError, match=r"\bdst\b.*input"):
        gguf_write.quantize_gguf(src, src, "Q4_K_M", progress=False)
    with pytest.raises(ValueError, match=r"\bdst\b.*folder"):
        gguf_write.quantize_gguf(src, tmp_path, "Q4_K_M", progress=False)
    with pytest.raises(ValueError, match=r"\bmix\b"):
        gguf_write.quantize_gguf(src, tmp_path / "x.gguf", "Q4_K_Z", progress=False)
    with pytest.raises(FileNotFoundError, match=r"\bsrc\b"):
        gguf_write.quantize_gguf(tmp_path / "missing.gguf", tmp_path / "x.gguf", "Q8_0", progress=False)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 20)
    with pytest.raises(ValueError, match=r"\bsrc\b"):
        gguf_write.quantize_gguf(bad, tmp_path / "x.gguf", "Q8_0", progress=False)
    # a failure (or Ctrl-C) half-way leaves the user's file as it was and no temporary behind
    dst = tmp_path / "keep.gguf"
    dst.write_bytes(b"the user's file")
    calls = {"n": 0}

    def failing(x, qtype, imatrix=None):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return quantize(x, qtype, imatrix)

    monkeypatch.setattr(gguf_write, "quantize", failing)
    with pytest.raises(KeyboardInterrupt):
        gguf_write.quantize_gguf(src, dst, "Q8_0", progress=False)
    assert dst.read_bytes() == b"the user's file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.gguf", "keep.gguf"]


def test_cli_quantize(q4_k_m_file, tmp_path, capsys):
    from minq.cli import main

    src, _, _ = q4_k_m_file
    assert main(["quantize", str(src), "--type", "Q9_K", "-o", str(tmp_path / "o.gguf")]) == 2
    assert "mix" in capsys.readouterr().err
    assert main(["quantize", str(src), "--type", "q8_0", "-o", str(tmp_path / "o.gguf")]) == 0
    assert "272 tensors (211 Q8_0, 61 F32), 138.1 MiB" in capsys.readouterr().out     # llama.cpp: 138.1 MiB


def test_mix_bad_inputs():
    with pytest.raises(ValueError, match=r"\bi\b"):
        use_more_bits(-1, 30)
    with pytest.raises(ValueError, match=r"\bi\b"):
        use_more_bits(30, 30)
    with pytest.raises(TypeError, match=r"\bi\b"):
        use_more_bits(1.5, 30)
    with pytest.raises(ValueError, match=r"\bn_in\b"):
        tensor_type("blk.0.ffn_up", 0, "Q4_K_M", n_blocks=30)
    with pytest.raises(ValueError, match=r"\bn_blocks\b"):
        tensor_type("blk.40.ffn_up", 256, "Q4_K_M", n_blocks=30)
    with pytest.raises(ValueError, match=r"\bn_gqa\b"):
        tensor_type("blk.0.attn_v", 256, "Q2_K", n_blocks=30, n_gqa=0)
    with pytest.raises(TypeError, match=r"\bname\b"):
        tensor_type(None, 256, "Q4_K_M", n_blocks=30)
    with pytest.raises(TypeError, match=r"\bmodel\b"):
        mix_types(None, "Q4_K_M")


def _tiny_llama_gguf(path, W_raw, qtype):
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_head_count(2)
    w.add_head_count_kv(1)
    w.add_tensor("blk.0.ffn_up.weight", W_raw, raw_dtype=gguf.GGMLQuantizationType[qtype])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_writer_corrupt_tensor_and_stale_temporaries(tmp_path):
    from minq.gguf_write import quantize_gguf

    raw = quantize(np.random.default_rng(0).standard_normal((4, 256)).astype(np.float32), "Q8_0")
    src = tmp_path / "tiny.gguf"
    _tiny_llama_gguf(src, raw, "Q8_0")
    stale = tmp_path / ".out.gguf.999999999.abcdefgh.tmp.gguf"          # a killed run's temporary (dead pid)
    stale.write_bytes(b"x" * 100)
    plan = quantize_gguf(src, tmp_path / "out.gguf", "Q4_K_M", progress=False)
    assert plan == {"blk.0.ffn_up.weight": "Q4_K"} and not stale.exists()
    raw.reshape(-1, 34)[3, 0:2] = np.frombuffer(np.float16(np.nan).tobytes(), np.uint8)
    bad = tmp_path / "bad.gguf"
    _tiny_llama_gguf(bad, raw, "Q8_0")
    dst = tmp_path / "keep.gguf"
    dst.write_bytes(b"mine")
    with pytest.raises(ValueError, match=r"src .*bad\.gguf: tensor 'blk\.0\.ffn_up\.weight'.*NaN or Inf scale"):
        quantize_gguf(bad, dst, "Q4_K_M", progress=False)
    assert dst.read_bytes() == b"mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.gguf", "keep.gguf", "out.gguf", "tiny.gguf"]
