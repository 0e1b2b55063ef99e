"""Perplexity, embedding fidelity and the evaluation/calibration text.

Fake models with known logits pin the formula (uniform -> PPL = V, an oracle -> PPL = 1) and the window
protocol; the real SmolLM2 check compares minq's perplexity with one computed from transformers' logits
(the oracle runtime, loading the same GGUF) on the same windows.
"""

import hashlib
from types import SimpleNamespace

import numpy as np
import pytest

from minq import data
from minq.eval import embedding_fidelity, kl_divergence, nll, perplexity, token_nll

# sha256 of the shipped text files (minq/data/README.md records the same values)
SHA256 = {
    "calibration.txt": "b90d406dd9f7717a29a3f4ee08cc8cbf9e92f3a89eed799c32a8ccd327b75991",
    "eval.txt": "4a7c123abc01f4deff48887dbd447600e2fcf5eecaa9f1b1852fd249b691b91a",
}


class FakeModel:
    """A stand-in for LlamaModel with logits we can write down.

    kind="uniform": all logits equal. kind="oracle": a huge logit on ``(id + 1) % V``, the true next
    token of the sequences the tests feed it. kind="context": logits depend on the current token, on the
    first token of the window and on the position in the window, so carrying context from one window to
    the next, or shifting positions, would change them.
    """

    def __init__(self, V=50, ctx=64, kind="context", seed=0):
        self.config = SimpleNamespace(vocab_size=V, context_length=ctx)
        self.kind = kind
        if kind == "context":
            rng = np.random.default_rng(seed)
            self.table = rng.standard_normal((V, V)).astype(np.float32) * 3     # [V, V]
            self.pos = rng.standard_normal((ctx, V)).astype(np.float32)         # [ctx, V]
        self.calls = []
        self.tokenizer = SimpleNamespace(encode=lambda s: [ord(c) % V for c in s])

    def logits(self, ids):
        ids = np.asarray(ids)
        self.calls.append(ids.shape)
        V = self.config.vocab_size
        if ((ids < 0) | (ids >= V)).any():
            raise ValueError("ids out of range")
        B, T = ids.shape
        if self.kind == "uniform":
            return np.zeros((B, T, V), np.float32)
        if self.kind == "oracle":
            z = np.zeros((B, T, V), np.float32)
            z[np.arange(B)[:, None], np.arange(T)[None, :], (ids + 1) % V] = 1e4
            return z
        return self.table[ids] + 0.5 * self.table[ids[:, :1]] + self.pos[None, :T]   # [B, T, V]


def _reference_nll(model, ids, window):
    """Independent float64 NLL with torch.log_softmax, window by window, one window per forward."""
    torch = pytest.importorskip("torch")
    n = len(ids) // window
    rows = []
    for k in range(n):
        w = np.asarray(ids[k * window:(k + 1) * window])
        z = torch.from_numpy(np.asarray(model.logits(w[None])[0, :-1], np.float64))
        lp = torch.log_softmax(z, dim=-1)
        rows.append(-lp[torch.arange(window - 1), torch.from_numpy(w[1:])].numpy())
    return np.stack(rows)


# --- formula ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("V", [2, 50, 49152])
def test_uniform_logits_give_ppl_equal_to_vocab_size(V):
    m = FakeModel(V=V, ctx=16, kind="uniform")
    ids = np.arange(48) % V
    assert perplexity(m, ids, 16, progress=False) == pytest.approx(V, rel=1e-12)


def test_oracle_gives_ppl_one():
    m = FakeModel(V=50, ctx=32, kind="oracle")
    ids = np.arange(200) % 50                       # the next token is always id + 1
    assert perplexity(m, ids, 32, progress=False) == 1.0


def test_token_nll_matches_torch_and_survives_huge_logits(rng):
    torch = pytest.importorskip("torch")
    z = (rng.standard_normal((300, 70)) * 30).astype(np.float32)
    t = rng.integers(0, 70, 300)
    want = -torch.log_softmax(torch.from_numpy(z.astype(np.float64)), -1)[torch.arange(300), torch.from_numpy(t)]
    np.testing.assert_allclose(token_nll(z, t), want.numpy(), rtol=1e-12, atol=1e-12)
    big = np.array([[3e38, 0.0, -3e38]], np.float32)          # max subtraction: no overflow
    assert token_nll(big, np.array([0]))[0] == 0.0
    assert np.isfinite(token_nll(big, np.array([2]))).all()


# --- window protocol --------------------------------------------------------------------------------


def test_nll_shape_and_values_match_independent_computation(rng):
    m = FakeModel()
    ids = rng.integers(0, 50, 1000)
    out = nll(m, ids, 64, batch_size=3)
    assert out.shape == (1000 // 64, 63) and out.dtype == np.float64   # 15 windows x 63 predicted tokens
    np.testing.assert_allclose(out, _reference_nll(m, ids, 64), rtol=1e-12)
    assert perplexity(m, ids, 64, progress=False) == pytest.approx(np.exp(out.mean()), rel=1e-14)


def test_partial_window_is_dropped_and_max_tokens_cuts(rng):
    m = FakeModel()
    ids = rng.integers(0, 50, 640)
    p = perplexity(m, ids, 64, progress=False)
    assert perplexity(m, np.concatenate([ids, rng.integers(0, 50, 63)]), 64, progress=False) == p
    assert perplexity(m, np.concatenate([ids, rng.integers(0, 50, 500)]), 64, max_tokens=640 + 63,
                      progress=False) == p
    assert perplexity(m, ids, 64, max_tokens=128, progress=False) == pytest.approx(
        np.exp(nll(m, ids[:128], 64).mean()), rel=1e-14)


def test_windows_are_independent_and_batch_size_does_not_matter(rng):
    m = FakeModel()
    ids = rng.integers(0, 50, 10 * 32)
    base = nll(m, ids, 32, batch_size=1)
    perm = rng.permutation(10)
    shuffled = ids.reshape(10, 32)[perm].ravel()
    np.testing.assert_array_equal(nll(m, shuffled, 32, batch_size=4), base[perm])
    assert perplexity(m, shuffled, 32, progress=False) == pytest.approx(
        perplexity(m, ids, 32, progress=False), rel=1e-14)
    for bs in (2, 3, 7, 10, 64):
        m.calls.clear()
        np.testing.assert_array_equal(nll(m, ids, 32, batch_size=bs), base)
        assert all(1 <= B <= bs and T == 32 for B, T in m.calls)       # batched [B, window] calls
        assert sum(B for B, _ in m.calls) == 10


def test_perplexity_of_text_uses_the_tokenizer():
    m = FakeModel(V=50)
    text = "the quick brown fox jumps over the lazy dog " * 10
    assert perplexity(m, text, 16, progress=False) == perplexity(m, m.tokenizer.encode(text), 16, progress=False)


# --- bad inputs -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(text_or_ids=""), ValueError, "empty"),
    (dict(window=1), ValueError, "window"),
    (dict(window=65), ValueError, "window"),
    (dict(window=8.0), TypeError, "window"),
    (dict(text_or_ids=np.arange(10) % 50), ValueError, "fewer than one window"),
    (dict(text_or_ids=np.array([1, 2, 50] * 20)), ValueError, "out of range"),
    (dict(text_or_ids=np.array([-1] * 40)), ValueError, "out of range"),
    (dict(text_or_ids=np.ones(40)), TypeError, "integer"),
    (dict(text_or_ids=np.ones((2, 40), int)), ValueError, "1-D"),
    (dict(text_or_ids=np.array([], int)), ValueError, "non-empty"),
    (dict(max_tokens=10), ValueError, "max_tokens"),
    (dict(max_tokens=20.0), TypeError, "max_tokens"),
    (dict(batch_size=0), ValueError, "batch_size"),
])
def test_perplexity_bad_inputs(kwargs, exc, match):
    args = dict(text_or_ids=np.arange(100) % 50, window=16, progress=False) | kwargs
    with pytest.raises(exc, match=match):
        perplexity(FakeModel(), **args)


# --- embedding fidelity -----------------------------------------------------------------------------


class FakeEmbedder:
    def __init__(self, table):
        self.table = {k: np.asarray(v, np.float32) for k, v in table.items()}

    def embed(self, texts):
        return np.stack([self.table[t] for t in texts])


def test_kl_divergence_zero_for_itself_and_matches_torch(rng):
    torch = pytest.importorskip("torch")
    ref, other = FakeModel(seed=0), FakeModel(seed=1)
    ids = rng.integers(0, 50, size=70)
    assert kl_divergence(ref, ref, ids, window=16) == 0.0
    got = kl_divergence(ref, other, ids, window=16, batch_size=3)
    W = ids[:64].reshape(4, 16)
    p = torch.log_softmax(torch.from_numpy(ref.logits(W)[:, :-1].astype(np.float64)), -1)
    q = torch.log_softmax(torch.from_numpy(other.logits(W)[:, :-1].astype(np.float64)), -1)
    want = torch.nn.functional.kl_div(q, p, log_target=True, reduction="sum").item() / (4 * 15)
    assert got == pytest.approx(want, rel=1e-12) and got > 0
    uniform = FakeModel(kind="uniform")                                # KL(uniform || p) = -log V - mean log p
    z = torch.from_numpy(ref.logits((np.arange(32) % 50).reshape(2, 16))[:, :-1].astype(np.float64))
    want_u = (-np.log(50) - torch.log_softmax(z, -1).mean(-1)).mean().item()
    assert kl_divergence(uniform, ref, np.arange(32) % 50, window=16) == pytest.approx(want_u, rel=1e-12)


def test_kl_divergence_bad_inputs():
    ref = FakeModel()
    with pytest.raises(ValueError, match="vocabulary"):
        kl_divergence(ref, FakeModel(V=51), np.arange(40) % 50, window=16)
    with pytest.raises(ValueError, match="window"):
        kl_divergence(ref, FakeModel(seed=1), np.arange(40) % 50, window=1)
    with pytest.raises(ValueError, match="fewer than one window"):
        kl_divergence(ref, FakeModel(seed=1), np.arange(10), window=16)
    with pytest.raises(ValueError, match="batch_size"):
        kl_divergence(ref, FakeModel(seed=1), np.arange(40) % 50, window=16, batch_size=0)
    bad = FakeModel(seed=1)
    bad.table[:] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        kl_divergence(ref, bad, np.arange(40) % 50, window=16)


def test_embedding_fidelity_known_values():
    s = ["a", "b", "c"]
    ref = FakeEmbedder({"a": [1, 0], "b": [0.9, 0.1], "c": [0, 1]})
    q = FakeEmbedder({"a": [2, 0], "b": [0.1, 0.9], "c": [0, 3]})     # scale does not matter
    r = embedding_fidelity(ref, q, s)
    np.testing.assert_allclose(r["cosine"], [1.0, 0.18 / 0.82, 1.0], rtol=1e-6)
    assert r["cosine_min"] == pytest.approx(0.18 / 0.82, rel=1e-6)
    assert r["cosine_mean"] == pytest.approx((2 + 0.18 / 0.82) / 3, rel=1e-6)
    # nearest other sentence: ref a->b, b->a, c->b; q a->b, b->c, c->b
    assert r["nn_agreement"] == pytest.approx(2 / 3)
    same = embedding_fidelity(ref, ref, s)
    assert same["cosine_min"] == pytest.approx(1.0) and same["nn_agreement"] == 1.0


def test_embedding_fidelity_bad_inputs():
    ref = FakeEmbedder({"a": [1, 0], "b": [0, 1], "z": [0, 0], "n": [np.nan, 1]})
    wide = FakeEmbedder({"a": [1, 0, 0], "b": [0, 1, 0]})
    with pytest.raises(ValueError, match="at least 2"):
        embedding_fidelity(ref, ref, ["a"])
    with pytest.raises(TypeError, match="sentences"):
        embedding_fidelity(ref, ref, "ab")
    with pytest.raises(TypeError, match="sentences"):
        embedding_fidelity(ref, ref, ["a", 1])
    with pytest.raises(ValueError, match="shapes differ"):
        embedding_fidelity(ref, wide, ["a", "b"])
    with pytest.raises(ValueError, match="all-zero"):
        embedding_fidelity(ref, ref, ["a", "z"])
    with pytest.raises(ValueError, match="NaN"):
        embedding_fidelity(ref, ref, ["a", "n"])
    with pytest.raises(ValueError, match="model_q.embed returned shape"):
        embedding_fidelity(ref, SimpleNamespace(embed=lambda t: np.ones(2)), ["a", "b"])


# --- data -------------------------------------------------------------------------------------------

BYTES = SimpleNamespace(encode=lambda s: list(s.encode("utf-8")))   # a tokenizer: one id per byte


def test_data_files_are_the_documented_ones():
    for name, text in (("calibration.txt", data.calibration_text()), ("eval.txt", data.eval_text())):
        assert hashlib.sha256(text.encode("utf-8")).hexdigest() == SHA256[name], name
        assert len(text) > 500_000 and text.isascii()
    assert data.eval_text().startswith("HAMLET, PRINCE OF DENMARK")
    assert data.calibration_text().startswith("MACBETH")


def test_calibration_and_eval_never_overlap():
    """No substring of 200 characters occurs in both splits (checked exhaustively, not on a sample):
    a common substring of length >= K + S contains an eval window of K characters starting at a multiple
    of S, so hashing every K-window of the calibration text and the eval windows at stride S finds it."""
    cal, ev = data.calibration_text(), data.eval_text()
    K, S = 150, 50                                                       # K + S = 200
    seen = {cal[i:i + K] for i in range(len(cal) - K + 1)}
    shared = [j for j in range(0, len(ev) - K + 1, S) if ev[j:j + K] in seen]
    assert shared == [], ev[shared[0]:shared[0] + K] if shared else None


def test_calibration_tokens_seeded_and_shaped():
    ids = np.asarray(BYTES.encode(data.calibration_text()))
    X = data.calibration_tokens(BYTES, n_samples=16, seq_len=64, seed=3)
    assert X.shape == (16, 64) and X.dtype == np.int64
    np.testing.assert_array_equal(X, data.calibration_tokens(BYTES, n_samples=16, seq_len=64, seed=3))
    assert not np.array_equal(X, data.calibration_tokens(BYTES, n_samples=16, seq_len=64, seed=4))
    starts = np.random.default_rng(3).integers(0, len(ids) - 64 + 1, size=16)    # the documented draw
    for row, s in zip(X, starts):
        np.testing.assert_array_equal(row, ids[s:s + 64])
    assert data.calibration_tokens(BYTES).shape == (128, 512)


def test_eval_tokens_prefix():
    full = data.eval_tokens(BYTES)
    assert full.dtype == np.int64 and len(full) == len(data.eval_text().encode())
    np.testing.assert_array_equal(data.eval_tokens(BYTES, max_tokens=1000), full[:1000])


@pytest.mark.parametrize("call, exc, match", [
    (lambda: data.calibration_tokens(BYTES, n_samples=0), ValueError, "n_samples"),
    (lambda: data.calibration_tokens(BYTES, seq_len=1), ValueError, "seq_len"),
    (lambda: data.calibration_tokens(BYTES, seq_len=10**7), ValueError, "seq_len"),
    (lambda: data.calibration_tokens(BYTES, seq_len=64.0), TypeError, "seq_len"),
    (lambda: data.calibration_tokens(BYTES, seed=-1), ValueError, "seed"),
    (lambda: data.calibration_tokens(object()), TypeError, "tokenizer"),
    (lambda: data.eval_tokens(BYTES, max_tokens=0), ValueError, "max_tokens"),
    (lambda: data.eval_tokens(SimpleNamespace(encode=lambda s: [])), ValueError, "no tokens"),
])
def test_data_bad_inputs(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# --- real model: SmolLM2, minq's runtime vs transformers' logits ----------------------------------------


def test_smollm2_perplexity_matches_transformers():
    """First 2 x 512 eval tokens (the opening of Hamlet): minq's PPL is finite, in a sane range for a
    135M model on play text, and equals the PPL computed from transformers' logits within 1e-3."""
    torch = pytest.importorskip("torch")  # dev dependencies: never actually skipped in CI
    from transformers import AutoModelForCausalLM

    from minq.models import assets, load_model

    path = assets.fetch("smollm2")
    model = load_model(path, progress=False)
    ids = data.eval_tokens(model.tokenizer, max_tokens=2 * 512)
    got = nll(model, ids, 512)
    ppl = float(np.exp(got.mean()))
    print(f"SmolLM2 PPL, first 2 x 512 eval tokens: {ppl:.4f}")
    assert np.isfinite(ppl) and 5 < ppl < 200

    hf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    W = torch.from_numpy(ids.reshape(2, 512))
    with torch.no_grad():
        z = hf(W, use_cache=False).logits[:, :-1].double()                           # [2, 511, V]
    want = -torch.log_softmax(z, -1).gather(-1, W[:, 1:, None])[..., 0].numpy()     # [2, 511]
    ppl_hf = float(np.exp(want.mean()))
    print(f"transformers: {ppl_hf:.4f}; max |NLL difference| {np.abs(got - want).max():.2e}")
    assert ppl == pytest.approx(ppl_hf, rel=1e-3)
    np.testing.assert_allclose(got, want, atol=1e-3)   # measured max 2.6e-5
