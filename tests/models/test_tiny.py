"""minq's tiny Llama (minq.models.tiny): the torch forward equals the NumPy Llama's, training is seeded
and learns, the checkpoint round-trips and refuses corrupt files. No download, no trained model needed."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")  # a dev dependency

from minq.models.tiny import (  # noqa: E402
    TinyConfig,
    TinyLlama,
    VocabTokenizer,
    load_checkpoint,
    save_checkpoint,
    to_numpy_llama,
    train_tiny,
)

MICRO = TinyConfig(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=64, context_length=64)


def random_net(config, seed, std=0.2):
    torch.manual_seed(seed)
    net = TinyLlama(config)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, std)
        for name, p in net.named_parameters():
            if name.endswith("_norm"):
                p.add_(1.0)                                    # gammas around 1, as trained ones are
    return net


def torch_logits(net, ids):
    with torch.no_grad():
        return net(torch.from_numpy(ids)).numpy()


@settings(max_examples=8, deadline=None)
@given(st.sampled_from([(4, 4), (4, 2), (4, 1), (2, 2), (6, 3)]), st.sampled_from([8, 16]),
       st.integers(1, 3), st.integers(2, 24), st.integers(0, 2**16))
def test_torch_equals_numpy(heads, head_dim, n_layers, T, seed):
    """Random configs (MHA, GQA, MQA), random weights: both NumPy engines give torch's logits."""
    n_heads, n_kv = heads
    c = TinyConfig(vocab_size=97, dim=n_heads * head_dim, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv,
                   hidden_dim=48, rope_theta=500.0, context_length=32)
    net = random_net(c, seed)
    ids = np.random.default_rng(seed).integers(0, c.vocab_size, size=(2, T))
    ref = torch_logits(net, ids)
    model = to_numpy_llama(net)
    for engine in ("reference", "fast"):
        got = model.logits(ids, engine=engine)
        assert got.shape == ref.shape == (2, T, c.vocab_size)
        assert np.abs(got - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max()), engine


def test_conventions_rope_pairs_and_gqa_groups():
    """RoPE rotates (i, i + hd/2) and query head h reads KV head h // g: checked against the NumPy model
    on a net whose later query heads differ only in which KV head they read."""
    c = TinyConfig(vocab_size=50, dim=32, n_layers=1, n_heads=4, n_kv_heads=2, hidden_dim=32, context_length=16)
    net = random_net(c, 1, std=0.5)
    with torch.no_grad():                                  # KV head 1 = -KV head 0: a swapped grouping shows
        k, v = net.blk[0].attn_k.weight, net.blk[0].attn_v.weight
        k[8:], v[8:] = -k[:8], -v[:8]
    ids = np.arange(12)[None] % c.vocab_size
    ref = torch_logits(net, ids)
    assert np.abs(to_numpy_llama(net).logits(ids, engine="reference") - ref).max() < 1e-4
    # the pairing itself: tiny's rope is minq's rope, and not the interleaved (2i, 2i+1) one
    from minq.models.llama import rope, rope_tables
    from minq.models.tiny import _rope
    x = np.random.default_rng(0).standard_normal((1, 2, 12, 8)).astype(np.float32)
    cos, sin = rope_tables(np.arange(12), 8, 10000.0)
    got = _rope(torch.from_numpy(x), torch.from_numpy(cos), torch.from_numpy(sin)).numpy()
    assert np.abs(got - rope(x, cos, sin)).max() < 1e-6
    assert np.allclose(got[..., 0] ** 2 + got[..., 4] ** 2, x[..., 0] ** 2 + x[..., 4] ** 2, atol=1e-5)


@pytest.fixture
def one_thread():
    """Tiny GEMMs: one thread is faster than several fighting over shared cores (restored after)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_training_is_seeded_and_learns(one_thread):
    ids = np.tile(np.random.default_rng(0).integers(0, MICRO.vocab_size, size=40), 30)   # a repeated phrase
    kw = dict(steps=20, seed=3, seq_len=32, batch=4, lr=1e-2, warmup=5)
    net_a, loss_a = train_tiny(MICRO, ids, **kw)
    net_b, loss_b = train_tiny(MICRO, ids, **kw)
    assert np.array_equal(loss_a, loss_b)
    assert all(np.array_equal(a, net_b.arrays()[k]) for k, a in net_a.arrays().items())
    assert loss_a[-5:].mean() < 0.7 * loss_a[:3].mean()
    assert not net_a.training
    _, loss_c = train_tiny(MICRO, ids, **{**kw, "seed": 4})
    assert not np.array_equal(loss_a, loss_c)


def test_checkpoint_round_trip(tmp_path):
    net = random_net(MICRO, 5, std=0.1)
    vocab = np.arange(0, 2 * MICRO.vocab_size, 2)
    for dtype, tol in (("float32", 0.0), ("float16", 1e-3)):
        path = tmp_path / f"tiny_{dtype}.npz"
        save_checkpoint(path, net, vocab, dtype=dtype)
        back, v = load_checkpoint(path)
        assert back.config == MICRO and np.array_equal(v, vocab)
        for k, a in net.arrays().items():
            assert np.abs(back.arrays()[k] - a).max() <= tol * max(1.0, np.abs(a).max()), k
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []    # no temporaries left


def test_corrupt_or_missing_checkpoint(tmp_path):
    path = tmp_path / "tiny.npz"
    save_checkpoint(path, random_net(MICRO, 0))
    data = path.read_bytes()
    for i, bad in enumerate([data[: len(data) // 2], data[:100] + b"\0" * 64 + data[164:], b"not a zip"]):
        p = tmp_path / f"bad{i}.npz"
        p.write_bytes(bad)
        with pytest.raises(ValueError, match="not a valid tiny Llama checkpoint"):
            load_checkpoint(p)
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="not a valid tiny Llama checkpoint"):
        load_checkpoint(tmp_path / "other.npz")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.npz")


@pytest.mark.parametrize("kw, name", [
    (dict(dim=30, n_heads=4), "n_heads"),
    (dict(n_heads=4, n_kv_heads=3), "n_kv_heads"),
    (dict(dim=36, n_heads=4, n_kv_heads=2), "head_dim"),
    (dict(vocab_size=0), "vocab_size"),
    (dict(n_layers=2.0), "n_layers"),
    (dict(norm_eps=-1.0), "norm_eps"),
])
def test_bad_config(kw, name):
    with pytest.raises(ValueError, match=name):
        TinyConfig(**{**MICRO.__dict__, **kw})


def test_bad_inputs():
    ids = np.arange(200) % MICRO.vocab_size
    with pytest.raises(ValueError, match="ids must lie"):
        train_tiny(MICRO, ids + 1, steps=1, seq_len=32)
    with pytest.raises(ValueError, match="seq_len"):
        train_tiny(MICRO, ids, steps=1, seq_len=MICRO.context_length + 1)
    with pytest.raises(ValueError, match="ids must be a 1-D"):
        train_tiny(MICRO, ids[:10], steps=1, seq_len=32)
    with pytest.raises(TypeError, match="prepare"):
        train_tiny(MICRO, ids, steps=1, seq_len=32, prepare="bitnet")
    with pytest.raises(TypeError, match="TinyConfig"):
        TinyLlama(MICRO.llama())
    with pytest.raises(ValueError, match="context length"):
        TinyLlama(MICRO)(torch.zeros(1, MICRO.context_length + 1, dtype=torch.long))
    with pytest.raises(ValueError, match="missing or unknown"):
        TinyLlama.from_arrays(MICRO, {"token_embd": np.zeros((64, 32))})


class _Base:
    """A stand-in for SmolLM2's tokenizer: one token per character code."""
    vocab_size = 200
    tokens = [chr(i) for i in range(200)]

    def encode(self, text):
        return [ord(ch) for ch in text]

    def decode(self, ids):
        return "".join(chr(i) for i in ids)


def test_vocab_tokenizer():
    vocab = np.array([0, *sorted({ord(ch) for ch in "hello world"})])
    tok = VocabTokenizer(_Base(), vocab)
    ids = tok.encode("hello world")
    assert tok.vocab_size == vocab.size and max(ids) < vocab.size and 0 not in ids
    assert tok.decode(ids) == "hello world"
    assert tok.encode("hex") == [ids[0], ids[1], VocabTokenizer.unk_id]      # 'x' is not kept
    with pytest.raises(ValueError, match="ids must be"):
        tok.decode([vocab.size])
    with pytest.raises(ValueError, match="strictly increasing"):
        VocabTokenizer(_Base(), [5, 3])


def test_the_shipped_checkpoint():
    """minq/data/tiny_llama.npz: its vocabulary is build_vocab's, torch and both NumPy engines agree on
    real text within 1e-4, and it has learned (evaluation perplexity far below the uniform 12,704)."""
    from minq.data import eval_tokens
    from minq.eval import perplexity
    from minq.models.tiny import build_vocab, load_tiny, smollm2_tokenizer

    net, tok = load_tiny()
    assert not net.training and net.config == TinyConfig() and tok.vocab_size == net.config.vocab_size
    assert np.array_equal(tok.vocab, build_vocab(smollm2_tokenizer()))
    assert sum(p.numel() for p in net.parameters()) < 2.5e6
    ids = eval_tokens(tok, max_tokens=1024)
    ref = torch_logits(net, ids[None, :256])
    model = to_numpy_llama(net, tokenizer=tok)
    for engine in ("reference", "fast"):
        assert np.abs(model.logits(ids[None, :256], engine=engine) - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())
    assert perplexity(model, ids, 512, progress=False) < 500
