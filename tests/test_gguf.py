"""minq.gguf: reading GGUF files (metadata, tensors of every type gguf-py dequantizes, the Q/K RoPE
permutation), checked against gguf-py and, apart from it, against blocks built byte by byte; truncated,
corrupt and foreign files rejected cleanly."""

import numpy as np
import pytest

from minq.gguf import permute_qk, read_gguf, unpermute_qk
from minq.models import assets
from minq.testing import assert_equal


@pytest.fixture(scope="module")
def gguf_path():
    return assets.fetch("smollm2")


# --- GGUF ---------------------------------------------------------------------------------------------


def test_qk_permutation_roundtrip_and_layout():
    W = np.arange(2 * 8 * 3, dtype=np.float32).reshape(16, 3)  # 2 heads of d=8, in=3
    P = permute_qk(W, 2)
    assert_equal(unpermute_qk(P, 2), W)
    # GGUF row h*d + 2i + j holds HF row h*d + j*d/2 + i
    for h in range(2):
        for i in range(4):
            for j in range(2):
                assert_equal(P[h * 8 + 2 * i + j], W[h * 8 + j * 4 + i])
    with pytest.raises(ValueError, match="n_head"):
        unpermute_qk(W, 3)


def test_read_gguf_metadata(gguf_path):
    g = read_gguf(gguf_path, progress=False)
    assert g.architecture == "llama" and g.metadata["llama.block_count"] == 30
    assert g.types["blk.0.attn_q.weight"] == "Q4_1" and g.types["token_embd.weight"] == "Q8_0"
    assert g.tensors["token_embd.weight"].shape == (49152, 576)
    assert g.tensors["blk.0.attn_k.weight"].shape == (192, 576)
    assert g.tensors["blk.0.ffn_down.weight"].shape == (576, 1536)
    assert all(t.dtype == np.float32 for t in g.tensors.values())


def _write_gguf(path, arch="llama", tensors=()):
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_head_count(2)
    w.add_head_count_kv(1)
    for name, data, qtype in tensors:
        raw = data if data.dtype == np.uint8 else gguf.quants.quantize(data, qtype)   # uint8: raw blocks
        w.add_tensor(name, raw, raw_dtype=qtype)  # shape inferred from the raw bytes
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("qtype", ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1"])
def test_read_gguf_types(tmp_path, rng, qtype):
    import gguf

    t = gguf.GGMLQuantizationType[qtype]
    W = rng.standard_normal((8, 64)).astype(np.float32)    # [out, in]
    Wk = rng.standard_normal((4, 64)).astype(np.float32)   # 1 KV head of d=4
    path = tmp_path / "tiny.gguf"
    _write_gguf(path, tensors=[("blk.0.ffn_up.weight", W, t), ("blk.0.attn_k.weight", Wk, t)])
    g = read_gguf(path, progress=False)
    assert g.types["blk.0.ffn_up.weight"] == qtype
    want = gguf.quants.dequantize(gguf.quants.quantize(W, t), t).reshape(W.shape)
    assert_equal(g.tensors["blk.0.ffn_up.weight"], want.astype(np.float32))
    want_k = gguf.quants.dequantize(gguf.quants.quantize(Wk, t), t).reshape(Wk.shape)
    assert_equal(g.tensors["blk.0.attn_k.weight"], unpermute_qk(want_k.astype(np.float32), 1))


@pytest.mark.parametrize("qtype", ["Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "TQ1_0", "TQ2_0"])
def test_read_gguf_ggml_types(tmp_path, rng, qtype):
    """Every block type minq implements is read through minq.kquants: the values equal gguf-py's."""
    import gguf

    from minq import kquants

    raw = kquants.quantize(rng.standard_normal((4, 512)).astype(np.float32), qtype)
    path = tmp_path / "k.gguf"
    _write_gguf(path, tensors=[("blk.0.ffn_down.weight", raw, gguf.GGMLQuantizationType[qtype])])
    g = read_gguf(path, progress=False)
    assert g.types["blk.0.ffn_down.weight"] == qtype
    want = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[qtype]).reshape(4, 512)
    assert_equal(g.tensors["blk.0.ffn_down.weight"], want.astype(np.float32))


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0", "Q4_K", "Q6_K", "F16"])
def test_read_gguf_keeps_blocks(tmp_path, rng, qtype):
    """``dequantize=False``: block tensors as ``GGMLWeight`` (rows of attn_k put back in the Hugging Face
    order, whole rows of blocks), the same values as the float32 read; float tensors stay float32."""
    import gguf

    from minq import kquants

    W = rng.standard_normal((8, 256)).astype(np.float32)                   # 1 KV head of 8 rows
    t = gguf.GGMLQuantizationType[qtype]
    raw = W if qtype == "F16" else kquants.quantize(W, qtype)
    path = tmp_path / "kept.gguf"
    _write_gguf(path, tensors=[("blk.0.attn_k.weight", raw, t), ("blk.0.ffn_up.weight", raw, t)])
    floats = read_gguf(path, progress=False)
    kept = read_gguf(path, progress=False, dequantize=False)
    with pytest.raises(TypeError, match="dequantize"):
        read_gguf(path, progress=False, dequantize="no")
    for name in ("blk.0.attn_k.weight", "blk.0.ffn_up.weight"):
        w = kept.tensors[name]
        if qtype == "F16":
            assert isinstance(w, np.ndarray) and (w == floats.tensors[name]).all()
            continue
        assert isinstance(w, kquants.GGMLWeight) and w.qtype == qtype and w.shape == (8, 256)
        assert isinstance(w.data, np.ndarray) and not isinstance(w.data, np.memmap)
        assert_equal(w.dequantize(), floats.tensors[name])


def test_model_keeps_blocks(gguf_path):
    """SmolLM2 read with its Q4_1 linears and Q8_0 embedding kept: the same logits as the float32 load."""
    from minq.kquants import GGMLWeight
    from minq.models import load_model

    ref = load_model(gguf_path, progress=False)
    m = load_model(gguf_path, progress=False, dequantize=False)
    assert isinstance(m.weights["blk.3.attn_q"], GGMLWeight) and m.weights["blk.3.attn_q"].qtype == "Q4_1"
    assert isinstance(m.head_weight, GGMLWeight) and m.head_weight.qtype == "Q8_0"
    assert m.nbytes < ref.nbytes / 5 and m.is_packed and m._head_kernel is not None
    ids = np.arange(1, 40)
    assert_equal(m.dequantized().logits(ids), ref.logits(ids))
    assert np.allclose(m.logits(ids), ref.logits(ids), rtol=1e-4, atol=1e-4)


def _blocks(qtype, rng, n_blocks):
    """Hand-built ggml blocks of 32 weights, raw bytes ``[n_blocks, bytes]``, and their values by the
    formula: Q8_0 ``d * q`` (q int8); Q4_0 ``d * (q - 8)``; Q4_1 ``d * q + m`` (q 4-bit: byte j holds
    weight j in its low nibble, weight j + 16 in its high one). d, m float16 with few mantissa bits, so
    every value is exact in float32."""
    d = rng.choice([0.5, 0.125, 2.0, -0.375, 0.0078125], n_blocks).astype(np.float16)
    m = rng.choice([-1.25, 0.75, -0.5, 3.0], n_blocks).astype(np.float16)
    if qtype == "Q8_0":
        q = rng.integers(-128, 128, (n_blocks, 32)).astype(np.int8)
        raw = np.concatenate([d.view(np.uint8).reshape(-1, 2), q.view(np.uint8)], axis=1)
        return raw, d.astype(np.float64)[:, None] * q
    q = rng.integers(0, 16, (n_blocks, 32)).astype(np.uint8)
    qs = q[:, :16] | (q[:, 16:] << 4)
    if qtype == "Q4_0":
        return np.concatenate([d.view(np.uint8).reshape(-1, 2), qs], axis=1), d.astype(np.float64)[:, None] * (q - 8.0)
    raw = np.concatenate([d.view(np.uint8).reshape(-1, 2), m.view(np.uint8).reshape(-1, 2), qs], axis=1)
    return raw, d.astype(np.float64)[:, None] * q + m.astype(np.float64)[:, None]


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0", "Q4_1"])
def test_read_gguf_blocks_by_the_formula(tmp_path, rng, qtype):
    """An oracle apart from gguf-py (which read_gguf calls): blocks built byte by byte, their values by the
    formula of the format."""
    import gguf

    raw, want = _blocks(qtype, rng, 6)                             # [out 3, in 64]: 2 blocks per row
    path = tmp_path / "blocks.gguf"
    _write_gguf(path, tensors=[("blk.0.ffn_up.weight", raw.reshape(3, -1), gguf.GGMLQuantizationType[qtype])])
    g = read_gguf(path, progress=False)
    assert g.types["blk.0.ffn_up.weight"] == qtype
    assert_equal(g.tensors["blk.0.ffn_up.weight"], want.reshape(3, 64).astype(np.float32))
    assert (want.astype(np.float32) == want).all()                 # exact in float32: the comparison is exact


def test_read_gguf_bad_files(tmp_path, gguf_path, rng):
    with pytest.raises(FileNotFoundError, match="nope.gguf"):
        read_gguf(tmp_path / "nope.gguf")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(ValueError, match="not a valid GGUF"):
        read_gguf(bad)
    for n in (1000, 50_000_000):  # truncated inside the metadata, and inside the tensor data
        cut = tmp_path / f"cut{n}.gguf"
        with open(gguf_path, "rb") as f:
            cut.write_bytes(f.read(n))
        with pytest.raises(ValueError, match="not a valid GGUF"):
            read_gguf(cut, progress=False)
    other = tmp_path / "gpt2.gguf"
    _write_gguf(other, arch="gpt2",
                tensors=[("x.weight", rng.standard_normal((2, 32)).astype(np.float32),
                          __import__("gguf").GGMLQuantizationType.F32)])
    with pytest.raises(ValueError, match="unsupported architecture 'gpt2'"):
        read_gguf(other)


