"""The MiniLM testbed: NumPy BERT encoder and sentence embeddings against transformers (the oracle).

The oracle is ``transformers.BertModel`` loaded from the same cached folder (float32, offline), its
last hidden state mean-pooled over the attention mask and L2-normalised: the sentence-transformers
pipeline of all-MiniLM-L6-v2 (Transformer -> Pooling(mean) -> Normalize), written out here.
Acceptance bar: cosine > 0.99999 for every sentence.
"""

import json
import math

import numpy as np
import pytest

from minq.groups import quantize_groups
from minq.models import BertEncoder, DenseWeight, assets, load_model
from minq.models.bert import erf, gelu, l2_normalize, mean_pool
from minq.testing import assert_close, assert_equal

LONG = ("Quantization trades precision for memory and speed: every weight of a network is stored with "
        "fewer bits, and the question is always which digits matter. ") * 12      # > 256 tokens

TEXTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "In 2024, 3.14159 and 1,000,000 people said 42!!! (really?) -- yes; #tags @names <b>html</b>",
    "Ünïcödé café naïve façade, 日本語のテキスト, Ελληνικά, русский, 🙂🚀",
    "   leading spaces\tand tabs\nand newlines   ",
    "a",
    "Sentence embeddings map text to vectors whose cosine similarity reflects meaning; quantized "
    "weights should move them as little as possible.",
    LONG,
]


@pytest.fixture(scope="module")
def folder():
    return assets.fetch("minilm").parent


@pytest.fixture(scope="module")
def model():
    return load_model("minilm")


@pytest.fixture(scope="module")
def embedded(model):
    """``model.embed(TEXTS)``, computed once for the tests that compare against it."""
    return model.embed(TEXTS)


@pytest.fixture(scope="module")
def hf(folder):
    torch = pytest.importorskip("torch")  # a dev dependency: never actually skipped in CI
    mp = pytest.MonkeyPatch()             # module scope: the monkeypatch fixture is function-scoped
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setenv("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoTokenizer, BertModel

    tok = AutoTokenizer.from_pretrained(folder)
    m = BertModel.from_pretrained(folder, dtype=torch.float32)
    m.eval()

    def forward(texts):
        """(last hidden state [N, T, d], mask [N, T], mean-pooled [N, d]) as sentence-transformers does."""
        enc = tok(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
        with torch.no_grad():
            y = m(**enc).last_hidden_state
        mask = enc["attention_mask"][..., None].to(y.dtype)
        pooled = (y * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return y.numpy(), enc["attention_mask"].numpy().astype(bool), pooled.numpy()

    yield tok, forward
    mp.undo()


# --- pieces -------------------------------------------------------------------------------------------


def test_erf_and_gelu():
    x = np.linspace(-8, 8, 20001)
    want = np.array([math.erf(v) for v in x])
    assert np.abs(erf(x) - want).max() < 1.5e-7
    assert_equal(erf(-x), -erf(x))
    x32 = x.astype(np.float32)
    g = gelu(x32)
    assert g.dtype == np.float32
    x64 = x32.astype(np.float64)
    exact = 0.5 * x64 * (1 + np.array([math.erf(v / math.sqrt(2)) for v in x64]))
    # |error| <= |x|/2 * (A&S's 1.5e-7 + float32 roundings of x/sqrt 2 and 1 + erf): ~1e-6 at |x| = 8
    err = np.abs(g - exact) / (1 + np.abs(x64))
    assert err.max() < 2e-7, err.max()


def test_config(model):
    c = model.config
    assert (c.vocab_size, c.dim, c.n_layers, c.n_heads, c.head_dim, c.hidden_dim) == (30522, 384, 6, 12, 32, 1536)
    assert c.max_seq_length == 256 and c.max_position == 512 and c.norm_eps == 1e-12
    assert len(model.linear_names()) == 36 and model.linear_names()[0] == "layer.0.attention.query"
    assert model.weights["layer.5.intermediate"].shape == (1536, 384)
    assert model.weights["layer.5.output"].shape == (384, 1536)
    assert all(isinstance(w, DenseWeight) for w in model.weights.values())
    assert model.biases["layer.0.attention.query"].shape == (384,)


# --- tokenizer ----------------------------------------------------------------------------------------


def test_tokenizer_matches_transformers(model, hf):
    tok, _ = hf
    for text in TEXTS:
        ids = model.tokenizer.encode(text)
        assert ids == tok(text, truncation=True, max_length=256)["input_ids"], text
        assert ids[0] == 101 and ids[-1] == 102
    assert len(model.tokenizer.encode(LONG)) == 256                    # truncated, [SEP] kept last
    assert model.tokenizer.decode(model.tokenizer.encode("Hello World")) == "hello world"
    ids, mask = model.tokenizer.batch(TEXTS)
    assert ids.shape == mask.shape == (8, 256) and ids.dtype == np.int64
    assert_equal(mask.sum(1), np.array([len(model.tokenizer.encode(t)) for t in TEXTS]))
    assert (ids[~mask] == 0).all()                                     # [PAD]


def test_tokenizer_bad_input(model):
    with pytest.raises(ValueError, match="empty"):
        model.tokenizer.encode("")
    with pytest.raises(TypeError, match="text"):
        model.tokenizer.encode(b"bytes")
    with pytest.raises(ValueError, match="ids"):
        model.tokenizer.decode([1, 30522])


# --- forward and embeddings ---------------------------------------------------------------------------


def test_embeddings_match_transformers(model, hf, embedded):
    _, forward = hf
    y_hf, mask_hf, pooled_hf = forward(TEXTS)
    ids, mask = model.tokenizer.batch(TEXTS)
    assert_equal(mask, mask_hf)
    y = model.forward(ids, mask)
    assert y.dtype == np.float32 and y.shape == (8, 256, 384)
    assert_close(y[mask], y_hf[mask_hf], atol=5e-5, name="last hidden state, real tokens")

    raw = mean_pool(y, mask)                                           # what embed(normalize=False) returns
    assert_close(raw, pooled_hf, atol=1e-5, name="mean-pooled, not normalised")
    assert_close(model.embed(TEXTS[:3], normalize=False), raw[:3], atol=2e-6, name="embed(normalize=False)")

    e = embedded
    assert_close(e, l2_normalize(raw), atol=2e-7, name="embed = l2_normalize(mean_pool(forward))")
    e_hf = pooled_hf / np.maximum(np.linalg.norm(pooled_hf, axis=1, keepdims=True), 1e-12)
    assert e.dtype == np.float32 and e.shape == (8, 384)
    assert_close(np.linalg.norm(e, axis=1), np.ones(8, np.float32), atol=1e-6, name="unit norm")
    cos = (e.astype(np.float64) * e_hf).sum(1) / np.linalg.norm(e_hf, axis=1)
    diff = np.abs(e - e_hf).max()
    print(f"\nminq vs transformers: cosine min {cos.min():.9f}, max abs diff {diff:.3g} "
          f"(hidden states max abs diff {np.abs(y[mask] - y_hf[mask_hf]).max():.3g})")
    assert (cos > 0.99999).all(), cos
    assert diff < 2e-6


def test_padding_and_batching_do_not_change_embeddings(model, embedded):
    """One sentence alone, in a padded batch, and with a small batch_size: the same embedding."""
    together = embedded
    alone = np.stack([model.embed(t)[0] for t in TEXTS[:4]])
    assert_close(together[:4], alone, atol=2e-6, name="batched vs alone")
    assert_close(model.embed(TEXTS, batch_size=3), together, atol=2e-6, name="batch_size 3")
    # ids of the first sentence alone, [T] -> [T, d]
    ids = np.array(model.tokenizer.encode(TEXTS[0]))
    assert model.forward(ids).shape == (len(ids), 384)


def test_semantics_sanity(model):
    e = model.embed(["A man is playing a guitar.", "Someone plays an instrument.", "The stock market fell."])
    assert e[0] @ e[1] > e[0] @ e[2] + 0.2


def test_with_weights_quantized_and_input_unchanged(model):
    texts = TEXTS[:4]
    before = model.embed(texts)
    name = "layer.2.intermediate"
    Wq = quantize_groups(model.weights[name].dequantize(), bits=4, group_size=32)
    swaps = {name: Wq, "layer.0.attention.value": quantize_groups(
        model.weights["layer.0.attention.value"].dequantize(), bits=4, group_size=32)}
    q = model.with_weights(swaps)
    after = q.embed(texts)
    cos = (before * after).sum(1)
    assert (cos < 1 - 1e-7).all() and (cos > 0.9).all(), cos         # a little change, not a broken one
    assert isinstance(model.weights[name], DenseWeight) and q.weights[name] is Wq
    assert_equal(model.embed(texts), before)                           # the input model is unchanged
    assert q.nbytes < model.nbytes and q.tokenizer is model.tokenizer
    assert isinstance(q, BertEncoder) and q._dense["layer.0.attention.query"] is model._dense["layer.0.attention.query"]


def test_with_weights_bad(model):
    with pytest.raises(ValueError, match="unknown weight names"):
        model.with_weights({"layer.9.attention.query": model.weights["layer.0.attention.query"]})
    with pytest.raises(ValueError, match="layer.0.intermediate.*shape"):
        model.with_weights({"layer.0.intermediate": model.weights["layer.0.attention.query"]})
    with pytest.raises(TypeError, match="quantized-weight protocol"):
        model.with_weights({"layer.0.output": np.zeros((384, 1536), np.float32)})


def test_embed_bad_input(model):
    with pytest.raises(ValueError, match="texts is empty"):
        model.embed([])
    with pytest.raises(ValueError, match=r"texts\[1\].*empty"):
        model.embed(["fine", ""])
    with pytest.raises(ValueError, match=r"texts\[0\].*empty"):
        model.embed("")
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        model.embed(["fine", 3])
    with pytest.raises(TypeError, match="texts"):
        model.embed(None)
    with pytest.raises(TypeError, match="texts"):
        model.embed(b"bytes")
    with pytest.raises(ValueError, match="batch_size"):
        model.embed(["fine"], batch_size=0)


def test_forward_bad_input(model):
    with pytest.raises(ValueError, match=r"ids out of range.*30522"):
        model.forward([101, 30522, 102])
    with pytest.raises(ValueError, match="non-empty"):
        model.forward([])
    with pytest.raises(TypeError, match="integer"):
        model.forward([1.0, 2.0])
    with pytest.raises(ValueError, match="512 positions"):
        model.forward(np.ones(513, np.int64))
    with pytest.raises(ValueError, match="mask must have the shape"):
        model.forward(np.ones((2, 4), np.int64), np.ones((2, 3), bool))
    with pytest.raises(ValueError, match="no real token"):
        model.forward(np.ones((2, 4), np.int64), np.array([[1, 1, 0, 0], [0, 0, 0, 0]]))


def test_from_safetensors_bad_files(tmp_path, folder):
    with pytest.raises(FileNotFoundError, match="config.json"):
        BertEncoder.from_safetensors(tmp_path / "model.safetensors")
    from safetensors.numpy import save_file

    for f in ("config.json", "tokenizer.json"):
        (tmp_path / f).write_bytes((folder / f).read_bytes())
    save_file({"embeddings.word_embeddings.weight": np.zeros((4, 384), np.float32)},
              str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="not a complete BERT"):
        BertEncoder.from_safetensors(tmp_path / "model.safetensors")
    (tmp_path / "pooling_config.json").write_text('{"pooling_mode_cls_token": true, "pooling_mode_mean_tokens": false}')
    with pytest.raises(ValueError, match="mean pooling"):
        BertEncoder.from_safetensors(tmp_path / "model.safetensors")


def test_max_seq_length_comes_from_sentence_bert_config(tmp_path, folder):
    assert json.loads((folder / "sentence_bert_config.json").read_text())["max_seq_length"] == 256
    for f in ("config.json", "tokenizer.json", "model.safetensors"):
        (tmp_path / f).symlink_to(folder / f)
    (tmp_path / "sentence_bert_config.json").write_text('{"max_seq_length": 16}')
    m = BertEncoder.from_safetensors(tmp_path / "model.safetensors")
    assert m.config.max_seq_length == 16 and len(m.tokenizer.encode(LONG)) == 16
    (tmp_path / "sentence_bert_config.json").write_text('{"max_seq_length": "long"}')
    with pytest.raises(ValueError, match="max_seq_length"):
        BertEncoder.from_safetensors(tmp_path / "model.safetensors")


def test_load_model_lists_minilm():
    with pytest.raises(ValueError, match="minilm"):
        load_model("bert-large")
