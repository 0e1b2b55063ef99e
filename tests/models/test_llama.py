"""The Llama testbed: GGUF reading, tokenizer and NumPy forward against transformers (the oracle).

transformers reads the same GGUF file: ``AutoTokenizer.from_pretrained(dir, gguf_file=...)`` and
``AutoModelForCausalLM.from_pretrained(dir, gguf_file=..., dtype=float32)`` (gguf-py dequantize and its
own Q/K un-permutation; loading a GGUF needs ``accelerate``, a dev dependency).
"""

import numpy as np
import pytest

from minq.groups import quantize_groups
from minq.models import DenseWeight, assets, load_model
from minq.testing import assert_close, assert_equal

TEXTS = [
    "Hello world, the quick brown fox",
    "In 2024, 3.14159 and 1,000,000 people said 42!",
    "<|im_start|>user\nHi there<|im_end|>\n",
    "  spaces   and\ttabs\n\nnewlines",
    "Ünïcödé 日本語 🙂 café",
    "it's we'll I'M",
]

PROMPT = ("The history of numerical computing is a history of trading precision for speed. Early "
          "machines stored numbers in fixed point; floating point arrived with hardware that could "
          "afford an exponent. Today, language models are quantized to four bits or fewer, and the "
          "question is again which digits matter. Every bit removed from a weight must be paid for "
          "somewhere: in perplexity, in a calibration set, or in the engineer's patience.")


@pytest.fixture(scope="module")
def gguf_path():
    return assets.fetch("smollm2")


@pytest.fixture(scope="module")
def model(gguf_path):
    return load_model(gguf_path, progress=False)


@pytest.fixture(scope="module")
def hf(gguf_path):
    torch = pytest.importorskip("torch")  # a dev dependency: never actually skipped in CI
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d, f = gguf_path.parent, gguf_path.name
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    m = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    assert m.lm_head.weight.data_ptr() == m.model.embed_tokens.weight.data_ptr()  # tied
    m.eval()

    def logits(ids):
        with torch.no_grad():
            return m(torch.tensor(np.asarray(ids))[None]).logits[0].numpy()

    return tok, logits


# --- tokenizer ----------------------------------------------------------------------------------------


def test_tokenizer_matches_transformers(model, hf):
    tok, _ = hf
    for text in TEXTS + [PROMPT]:
        ids = model.tokenizer.encode(text)
        assert ids == tok(text)["input_ids"], text
        assert model.tokenizer.decode(ids) == text


def test_tokenizer_bad_input(model):
    with pytest.raises(ValueError, match="empty"):
        model.tokenizer.encode("")
    with pytest.raises(TypeError, match="text"):
        model.tokenizer.encode(b"bytes")
    with pytest.raises(ValueError, match="ids"):
        model.tokenizer.decode([1, 49152])


# --- forward ------------------------------------------------------------------------------------------


def _prompt_ids(model, n=64):
    ids = model.tokenizer.encode(PROMPT)
    assert len(ids) >= n
    return np.array(ids[:n])


@pytest.mark.parametrize("engine", ["fast", "reference"])
def test_logits_match_transformers(model, hf, engine):
    _, hf_logits = hf
    ids = _prompt_ids(model)
    logits = model.logits(ids, engine=engine)
    assert logits.dtype == np.float32 and logits.shape == (64, 49152)
    assert_close(logits, hf_logits(ids), atol=1e-3, name=f"minq ({engine}) vs transformers logits")


def test_incremental_equals_full(model):
    ids = _prompt_ids(model)
    full = model.logits(ids)
    cache = model.new_cache()
    parts = [model.logits(ids[a:b], cache=cache) for a, b in [(0, 40), (40, 41), (41, 42), (42, 64)]]
    assert cache.length == 64 and cache.nbytes == 30 * 2 * 3 * 64 * 64 * 4
    assert_close(np.concatenate(parts), full, atol=1e-4, name="incremental vs full")


def test_kv_cache():
    """The cache's interface: ``update`` appends and returns all positions, ``length``, ``nbytes``; one
    class, importable from where it lives and from the models."""
    import minq.models
    import minq.models.llama
    from minq.kvcache import KVCache

    assert minq.models.KVCache is minq.models.llama.KVCache is KVCache
    c = KVCache(n_layers=2)
    assert c.length == 0 and c.nbytes == 0
    k = np.arange(2 * 3 * 5 * 4, dtype=np.float32).reshape(2, 3, 5, 4)      # [B, n_kv, T, hd]
    for layer in range(2):
        k_all, v_all = c.update(layer, k, -k)
        assert_equal(k_all, k)
        assert_equal(v_all, -k)
    for step in range(20):                                           # one position at a time: grows
        k1 = np.full((2, 3, 1, 4), step, np.float32)
        for layer in range(2):
            k_all, v_all = c.update(layer, k1, k1)
    assert c.length == 25 and k_all.shape == (2, 3, 25, 4) and c.nbytes == 2 * 2 * k_all.nbytes
    assert_equal(k_all[:, :, :5], k)
    assert_equal(k_all[:, :, 5:, 0], np.broadcast_to(np.arange(20, dtype=np.float32), (2, 3, 20)))
    one = np.zeros((1, 3, 40, 4), np.float32)                        # another batch size, past the capacity
    with pytest.raises(ValueError, match="cache holds batch/heads"):
        c.update(0, one, one)


def test_batched_windows(model):
    ids = _prompt_ids(model, 48).reshape(2, 24)
    batched = model.logits(ids)                                     # [2, 24, vocab]
    assert batched.shape == (2, 24, 49152)
    for b in range(2):
        assert_close(batched[b], model.logits(ids[b]), atol=1e-4, name=f"window {b}")


def test_with_weights_swaps_and_leaves_input_unchanged(model):
    ids = _prompt_ids(model, 16)
    before = model.logits(ids)
    name = "blk.3.ffn_down"
    assert name in model.linear_names() and len(model.linear_names()) == 30 * 7
    W = model.weights[name].dequantize()
    Wq = quantize_groups(W, bits=2, group_size=64)

    calls = []

    class Counting:  # a protocol object that counts dequantize calls
        shape, nbytes, bits_per_weight = Wq.shape, Wq.nbytes, Wq.bits_per_weight

        def dequantize(self):
            calls.append(1)
            return Wq.dequantize()

    q = model.with_weights({name: Counting()})
    after = q.logits(ids)
    q.logits(ids)
    assert len(calls) == 1                                          # dequantized once, at with_weights
    assert np.abs(after - before).max() > 1e-3                      # the swap took effect
    assert isinstance(model.weights[name], DenseWeight)
    assert_equal(model.logits(ids), before)                         # the input model is unchanged
    assert q.nbytes < model.nbytes and q.tokenizer is model.tokenizer


def test_with_weights_bad(model):
    with pytest.raises(ValueError, match="unknown weight names"):
        model.with_weights({"blk.99.attn_q": model.weights["blk.0.attn_q"]})
    with pytest.raises(ValueError, match="blk.0.attn_k.*shape"):
        model.with_weights({"blk.0.attn_k": model.weights["blk.0.attn_q"]})
    with pytest.raises(TypeError, match="quantized-weight protocol"):
        model.with_weights({"blk.0.attn_q": np.zeros((576, 576), np.float32)})


def test_logits_bad_input(model):
    with pytest.raises(ValueError, match=r"ids out of range.*49152"):
        model.logits([1, 2, 49152])
    with pytest.raises(ValueError, match=r"ids out of range.*-1"):
        model.logits([-1, 2])
    with pytest.raises(ValueError, match="non-empty"):
        model.logits([])
    with pytest.raises(TypeError, match="integer"):
        model.logits([1.0, 2.0])
    with pytest.raises(ValueError, match="context length 8192"):
        model.logits(np.ones(8193, np.int64))
    cache = model.new_cache()
    model.logits([1, 2, 3], cache=cache)
    with pytest.raises(ValueError, match="3 cached.*context length"):
        model.logits(np.ones(8190, np.int64), cache=cache)


def test_load_model_unknown():
    with pytest.raises(ValueError, match="smollm2"):
        load_model("llama-70b")


def test_last_only(model):
    ids = _prompt_ids(model, 24)
    # one row through the head GEMM instead of 24: another BLAS kernel, other rounding
    assert_close(model.logits(ids, last_only=True), model.logits(ids)[-1:], atol=1e-4, name="last only")
    batch = ids.reshape(2, 12)
    assert_close(model.logits(batch, last_only=True), model.logits(batch)[:, -1:], atol=1e-4, name="batched")


# --- calibration hooks and block-by-block execution ------------------------------------------------


@pytest.mark.parametrize("batched", [False, True])
def test_blocks_one_by_one_equal_logits(model, batched):
    ids = _prompt_ids(model, 32)
    ids = ids.reshape(2, 16) if batched else ids
    x = model.embed(ids)
    assert x.shape == ids.shape + (576,)
    for i in range(model.config.n_layers):
        x_in, x0 = x, x.copy()                                      # the input, and a copy kept aside
        x = model.run_block(i, x_in)
        assert_equal(x_in, x0, name=f"block {i} input after run_block")   # every block leaves its input alone
    assert_equal(model.head(x), model.logits(ids))
    assert model.block_linear_names(2) == [f"blk.2.{n}" for n in
                                           ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")]


def test_run_block_leaves_input_unchanged(model):
    x = model.embed(_prompt_ids(model, 8))
    x0 = x.copy()
    model.run_block(0, x)
    assert_equal(x, x0)


def test_capture_inputs_equal_recomputed(model):
    from minq.models.llama import rms_norm

    ids = _prompt_ids(model, 20)
    names = ["blk.0.attn_q", "blk.0.attn_v", "blk.0.attn_output", "blk.0.ffn_down", "blk.2.attn_k"]
    X = model.capture_inputs(ids, names)
    assert list(X) == names
    assert [X[n].shape for n in names] == [(20, 576)] * 3 + [(20, 1536), (20, 576)]
    assert all(X[n].dtype == np.float32 and not X[n].flags.writeable for n in names)
    eps = model.config.norm_eps
    x0 = model.embed(ids)
    assert_equal(X["blk.0.attn_q"], rms_norm(x0, model.norms["blk.0.attn_norm"], eps))
    assert X["blk.0.attn_v"] is X["blk.0.attn_q"]                   # q, k, v read one input
    x2 = model.run_block(1, model.run_block(0, x0))
    assert_equal(X["blk.2.attn_k"], rms_norm(x2, model.norms["blk.2.attn_norm"], eps))
    # block 0 = x + attention output projection + MLP down projection, from the captured inputs
    Wo, Wd = (model.weights[f"blk.0.{n}"].dequantize() for n in ("attn_output", "ffn_down"))
    assert_close(model.run_block(0, x0), x0 + X["blk.0.attn_output"] @ Wo.T + X["blk.0.ffn_down"] @ Wd.T,
                 atol=1e-5, name="block 0 from captured inputs")


def test_capture_inputs_batched(model):
    ids = _prompt_ids(model, 32).reshape(2, 16)
    X = model.capture_inputs(ids, ["blk.1.ffn_gate"])["blk.1.ffn_gate"]
    assert X.shape == (32, 576)                                     # [B * T, in], window after window
    for b in range(2):
        assert_close(X[16 * b:16 * (b + 1)], model.capture_inputs(ids[b], ["blk.1.ffn_gate"])["blk.1.ffn_gate"],
                     atol=1e-5, name=f"window {b}")


def test_hooks_identity_and_observation(model):
    ids = _prompt_ids(model, 16).reshape(2, 8)
    before = model.logits(ids)
    seen = []

    def observe(name, X):
        seen.append((name, X.shape))
        return X                                                     # "replace" the input by itself

    hooks = {n: observe for n in model.linear_names()}
    assert_equal(model.logits(ids, hooks=hooks), before)             # bit for bit
    assert seen[:7] == [(f"blk.0.{n}", (16, 1536 if n == "ffn_down" else 576)) for n in
                        ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")]
    assert len(seen) == 30 * 7
    copies = {n: (lambda name, X: X.copy()) for n in model.linear_names()}  # one GEMM per linear
    assert_close(model.logits(ids, hooks=copies), before, atol=1e-5, name="copied inputs")


def test_hooks_replace_input(model):
    from minq.models import DenseWeight

    ids = _prompt_ids(model, 12)
    zeros = lambda name, X: np.zeros_like(X)                        # noqa: E731
    for name in ("blk.3.ffn_down", "blk.3.attn_q"):                  # alone, and in the q/k/v group
        W0 = DenseWeight(np.zeros(model.weights[name].shape, np.float32))
        assert_close(model.logits(ids, hooks={name: zeros}), model.with_weights({name: W0}).logits(ids),
                     atol=1e-5, name=f"zero input of {name} vs zero weight")
    # activation quantization, simulated: every linear of block 0 reads its input rounded to 1/8
    x = model.embed(ids)
    fq = lambda name, X: np.round(X * 8) / 8                         # noqa: E731
    y, y0 = model.run_block(0, x, hooks={n: fq for n in model.block_linear_names(0)}), model.run_block(0, x)
    assert np.isfinite(y).all() and 0 < np.abs(y - y0).max() < 0.5 * np.abs(y0).max()


def test_hooks_bad(model):
    ids = [1, 2, 3]
    with pytest.raises(ValueError, match="unknown linears.*blk.99.attn_q"):
        model.logits(ids, hooks={"blk.99.attn_q": lambda n, X: None})
    with pytest.raises(TypeError, match=r"hooks\['blk.0.attn_q'\] must be callable"):
        model.logits(ids, hooks={"blk.0.attn_q": 3})
    with pytest.raises(TypeError, match="hooks must be a dict"):
        model.logits(ids, hooks=[lambda n, X: None])
    with pytest.raises(ValueError, match="hook for 'blk.0.attn_k' returned shape"):
        model.logits(ids, hooks={"blk.0.attn_k": lambda n, X: X[:, :10]})

    def write(name, X):
        X[0, 0] = 1.0

    with pytest.raises(ValueError, match="read-only"):
        model.logits(ids, hooks={"blk.0.ffn_up": write})
    with pytest.raises(ValueError, match="unknown linears"):
        model.capture_inputs(ids, ["blk.0.attn_qq"])
    with pytest.raises(ValueError, match="at least one"):
        model.capture_inputs(ids, [])
    x = model.embed(ids)
    for i in (-1, 30, 1.0, True):
        with pytest.raises(ValueError, match="block index"):
            model.run_block(i, x)
    with pytest.raises(ValueError, match="block index"):
        model.block_linear_names(30)
    for bad in (x[:, :10], x[:0], x[None, None]):
        with pytest.raises(ValueError, match=r"x must be \[T, 576\]"):
            model.run_block(0, bad)
    with pytest.raises(ValueError, match="context length"):
        model.run_block(0, np.zeros((8193, 576), np.float32))


def test_weights_are_views_of_stacked_arrays(model):
    """from_gguf holds each weight once: the per-name weights are views of the arrays the forward uses."""
    from minq.models import DenseWeight

    qkv = model._W[("blk.0.attn_q", "blk.0.attn_k", "blk.0.attn_v")]
    assert qkv.shape == (576 + 2 * 192, 576)
    assert np.shares_memory(qkv, model.weights["blk.0.attn_k"].dequantize())
    gu = ("blk.0.ffn_gate", "blk.0.ffn_up")
    same = model.with_weights({"blk.0.ffn_up": model.weights["blk.0.ffn_up"]})
    assert same._W[gu] is model._W[gu]                              # the same views: no copy
    q = model.with_weights({"blk.0.ffn_up": DenseWeight(model.weights["blk.0.ffn_up"].dequantize())})
    assert q._W[gu] is not model._W[gu] and not np.shares_memory(q._W[gu], model._W[gu])
    assert_equal(q._W[gu], model._W[gu])                            # restacked: [gate; up]
    assert q._W[("blk.0.ffn_down",)] is model._W[("blk.0.ffn_down",)]  # unchanged groups are shared
    W = np.ones((4, 3), np.float32)
    w = DenseWeight(W, copy=False)
    assert np.shares_memory(w.dequantize(), W) and not w.dequantize().flags.writeable and W.flags.writeable
    with pytest.raises(ValueError, match="copy=False"):
        DenseWeight(np.ones((4, 3)), copy=False)
