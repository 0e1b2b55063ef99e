"""The Llama testbed: GGUF reading, tokenizer and NumPy forward against transformers (the oracle).

transformers reads the same GGUF file: ``AutoTokenizer.from_pretrained(dir, gguf_file=...)`` and
``AutoModelForCausalLM.from_pretrained(dir, gguf_file=..., dtype=float32)`` (gguf-py dequantize and its
own Q/K un-permutation; loading a GGUF needs ``accelerate``, a dev dependency).
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minq import assets
from minq.gguf import permute_qk, read_gguf, unpermute_qk
from minq.groups import quantize_groups
from minq.models import DenseWeight, load_model
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
        raw = gguf.quants.quantize(data, qtype)
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


def test_logits_match_transformers(model, hf):
    _, hf_logits = hf
    ids = _prompt_ids(model)
    logits = model.logits(ids)
    assert logits.dtype == np.float32 and logits.shape == (64, 49152)
    assert_close(logits, hf_logits(ids), atol=1e-3, name="minq vs transformers logits")


def test_incremental_equals_full(model):
    ids = _prompt_ids(model)
    full = model.logits(ids)
    cache = model.new_cache()
    parts = [model.logits(ids[a:b], cache=cache) for a, b in [(0, 40), (40, 41), (41, 42), (42, 64)]]
    assert cache.length == 64 and cache.nbytes == 30 * 2 * 3 * 64 * 64 * 4
    assert_close(np.concatenate(parts), full, atol=1e-4, name="incremental vs full")


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
        x0 = x.copy()
        x = model.run_block(i, x)
        assert_equal(x0, x0 if i else model.embed(ids))
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


def test_rope_kernel_equals_numpy_rope(rng, monkeypatch, threads):
    """The forward's RoPE (Numba kernel, strided in and out) is the NumPy ``rope`` times a scale, bit for bit."""
    from minq._jit import py_func
    from minq.models.llama import _rope_kernel, _rope_to, rope, rope_tables

    x = rng.standard_normal((2, 5, 3, 4, 16)).astype(np.float32)[:, :, :, 1:]   # [B, T, H, G, hd], strided
    cos, sin = rope_tables(np.arange(7, 12), 16, 10000.0)
    want = rope(x, cos[:, None, None], sin[:, None, None]) * np.float32(0.125)
    for kernel in (_rope_kernel, py_func(_rope_kernel)):
        out = np.empty((2, 3, 5, 3, 16), np.float32).transpose(0, 2, 1, 3, 4)   # a transposed view
        kernel(x, cos, sin, np.float32(0.125), out)
        assert_equal(out, want, name=str(kernel))
    for jit in (True, False):                                        # NUMBA_DISABLE_JIT=1: the NumPy rope
        monkeypatch.setattr("minq.models.llama.JIT_ENABLED", jit)
        out = np.empty(x.shape, np.float32)
        _rope_to(x, cos, sin, out, scale=0.125)
        assert_equal(out, want, name=f"jit={jit}")
    # rope rotates pairs: norms of (x[i], x[i + hd/2]) are kept
    r = rope(x, cos[:, None, None], sin[:, None, None])
    assert_close(r[..., :8] ** 2 + r[..., 8:] ** 2, x[..., :8] ** 2 + x[..., 8:] ** 2, atol=1e-5)


# --- the forward's elementwise kernels against their NumPy references -------------------------------

_rows = st.tuples(st.integers(1, 40), st.sampled_from([1, 5, 8, 9, 64, 127, 128, 129, 300, 576, 1000]),
                  st.floats(1e-3, 1e3), st.integers(0, 2**32 - 1))


@given(_rows)
def test_rms_norm_kernel_equals_numpy_bit_for_bit(args):
    """RMSNorm's kernel adds in NumPy's pairwise order: it equals ``rms_norm`` exactly, for any width."""
    from minq._jit import py_func
    from minq.models.llama import _rms_norm_kernel, rms_norm

    N, d, scale, seed = args
    r = np.random.default_rng(seed)
    x = (r.standard_normal((N, d)) * scale).astype(np.float32)
    gamma = r.standard_normal(d).astype(np.float32)
    want = rms_norm(x, gamma, 1e-5)
    for kernel in (_rms_norm_kernel, py_func(_rms_norm_kernel)):
        y = np.empty_like(x)
        kernel(x, gamma, np.float32(1e-5), y)
        assert_equal(y, want, name=str(kernel))


@pytest.fixture(params=["serial", "threads"])
def threads(request, monkeypatch):
    """Run the row-wise kernels in one piece, or in blocks of rows on 2 threads (whatever the machine)."""
    import minq.models.llama as L

    if request.param == "threads":
        monkeypatch.setattr(L, "PARALLEL_MIN_WORK", 0)
        monkeypatch.setattr(L, "_threads", lambda: 2)
        monkeypatch.setattr(L, "ROW_BLOCK", 2)                     # many blocks, also of tiny inputs
    else:
        monkeypatch.setattr(L, "PARALLEL_MIN_WORK", 2**62)
    return request.param


def test_rms_norm_dispatch(rng, monkeypatch, threads):
    from minq.models.llama import _rms_norm, rms_norm

    x = rng.standard_normal((2, 77, 576)).astype(np.float32)        # 154 rows
    gamma = rng.standard_normal(576).astype(np.float32)
    for jit in (True, False):                                        # NUMBA_DISABLE_JIT=1: the NumPy rms_norm
        monkeypatch.setattr("minq.models.llama.JIT_ENABLED", jit)
        assert_equal(_rms_norm(x, gamma, 1e-5), rms_norm(x, gamma, 1e-5), name=f"jit={jit}")
        assert_equal(_rms_norm(x[:, -1:], gamma, 1e-5), rms_norm(x[:, -1:], gamma, 1e-5))  # a strided view


@given(st.lists(st.floats(-120, 120, width=32), min_size=1, max_size=300))
def test_exp_kernel_close_to_numpy(values):
    """``_exp_`` is ``np.exp`` of its input clamped to [-87, 88], to 4e-7 relative (a few float32 ulps)."""
    from minq._jit import py_func
    from minq.models.llama import _exp_

    v = np.array(values, np.float32)
    want = np.exp(np.clip(v, -87, 88))
    for kernel in (_exp_, py_func(_exp_)):
        y = v.copy()
        kernel(y, np.empty(len(v), np.int32))
        assert_close(y, want, rtol=4e-7, name=str(kernel))


def test_exp_kernel_golden():
    from minq.models.llama import _exp_

    v = np.array([0.0, 1.0, -1.0, np.log(2.0), 10.0, -20.0, -87.0, 88.0, -1000.0, 1000.0], np.float32)
    _exp_(v, np.empty(len(v), np.int32))
    assert v[0] == 1.0 and v[3] == np.float32(2.0)
    assert_close(v[[1, 2, 4, 5]], np.exp([1.0, -1.0, 10.0, -20.0]), rtol=3e-7)
    assert v[8] == v[6] and v[9] == v[7] and np.isfinite(v).all()       # clamped, never 0 or inf


@given(_rows)
def test_swiglu_kernel_close_to_numpy(args):
    from minq._jit import py_func
    from minq.models.llama import _swiglu, _swiglu_kernel

    N, H, scale, seed = args
    r = np.random.default_rng(seed)
    gu = (r.standard_normal((N, 2 * H)) * min(scale, 50.0)).astype(np.float32)
    with np.errstate(over="ignore"):                                 # exp(-gate) = inf: silu = -0
        want = _swiglu(gu[:, :H], gu[:, H:])
    for kernel in (_swiglu_kernel, py_func(_swiglu_kernel)):
        m = np.empty((N, H), np.float32)
        kernel(gu, m)
        assert_close(m, want, rtol=1e-6, atol=1e-30, name=str(kernel))


def test_silu_mul_dispatch(rng, monkeypatch, threads):
    from minq.models.llama import _silu_mul, _swiglu

    gu = (rng.standard_normal((2, 75, 2 * 96)) * 10).astype(np.float32)
    gu[0, 0, :4] = [-100.0, 100.0, 0.0, -0.0]                         # exp(-gate) overflows / is 1
    with np.errstate(over="ignore"):
        want = _swiglu(gu[..., :96], gu[..., 96:])
    for jit in (True, False):
        monkeypatch.setattr("minq.models.llama.JIT_ENABLED", jit)
        with np.errstate(over="ignore"):
            m = _silu_mul(gu, 96)
        assert m.shape == (2, 75, 96) and m.dtype == np.float32
        assert_close(m, want, rtol=1e-6, atol=1e-30, name=f"jit={jit}")


@given(st.integers(1, 70), st.integers(0, 70), st.integers(1, 4), st.floats(0.1, 100.0),
       st.integers(0, 2**32 - 1))
def test_causal_softmax_kernel_close_to_numpy(t, first, g, scale, seed):
    """The fused mask + softmax kernel equals the NumPy ``causal_softmax_``; masked keys get exactly 0."""
    from minq._jit import py_func
    from minq.models.llama import _causal_softmax_kernel, causal_softmax_

    S = first + t
    s = (np.random.default_rng(seed).standard_normal((t, g, S)) * scale).astype(np.float32)
    want = causal_softmax_(s.copy(), first)
    masked = np.broadcast_to((np.arange(S)[None, :] > first + np.arange(t)[:, None])[:, None], s.shape)
    assert (want[masked] == 0).all()
    for kernel in (_causal_softmax_kernel, py_func(_causal_softmax_kernel)):
        p = s.copy()
        kernel(p, first)
        assert_close(p, want, rtol=1e-6, atol=1e-7, name=str(kernel))
        assert (p[masked] == 0).all()
        assert_close(p.sum(axis=-1), np.ones((t, g), np.float32), atol=1e-6)


def test_forward_without_jit_matches(model, monkeypatch):
    """NUMBA_DISABLE_JIT=1 runs the NumPy references: the same logits to float32 rounding."""
    ids = _prompt_ids(model, 24)
    with_jit = model.logits(ids)
    monkeypatch.setattr("minq.models.llama.JIT_ENABLED", False)
    assert_close(model.logits(ids), with_jit, atol=1e-4, name="JIT off vs on")


def test_parallel_forward_equals_serial(model, monkeypatch):
    """The token pieces and attention tiles on threads (BLAS at 1 thread) give the logits of the serial loop."""
    import minq.models.llama as L

    ids = _prompt_ids(model, 64).reshape(2, 32)
    tiles, pieces = [], []
    run = L._parallel_for

    def spy(fn, items, work):
        if not isinstance(items[0], tuple):                          # row blocks of a kernel or GEMM
            pass
        elif isinstance(items[0][0], slice):                         # token pieces (b, r)
            pieces.append([(b.indices(2), r.indices(32)) for b, r in items])
        else:                                                        # attention tiles (b, j, t0, t1)
            tiles.append((items, work))
        return run(fn, items, work)

    monkeypatch.setattr(L, "_parallel_for", spy)
    monkeypatch.setattr(L, "PARALLEL_MIN_WORK", 0)                  # threads for every block
    monkeypatch.setattr(L, "_threads", lambda: 2)
    threaded = model.logits(ids)
    assert len(tiles) == 30 and tiles[0] == ([(b, j, 0, 32) for b in range(2) for j in range(3)],
                                             2 * 9 * 32 * 32 * 64)   # B * n_kv tiles of 32 queries
    # two stages a block, each on one piece a window: (window b, positions 0..31)
    assert len(pieces) == 60 and all(p == [((0, 1, 1), (0, 32, 1)), ((1, 2, 1), (0, 32, 1))] for p in pieces)
    pieces.clear()
    one = model.logits(ids[:1])                                       # one window: cut in two runs of positions
    assert all(p == [((0, 1, 1), (0, 16, 1)), ((0, 1, 1), (16, 32, 1))] for p in pieces)
    monkeypatch.setattr(L, "PARALLEL_MIN_WORK", 2**62)              # never
    assert_close(model.logits(ids), threaded, atol=1e-5, name="serial vs threaded")
    assert_close(model.logits(ids[:1]), one, atol=1e-5, name="serial vs threaded, one window")
    assert_close(model.logits(ids[:, :16]), threaded[:, :16], atol=1e-4, name="shorter windows")  # other GEMM shapes


def test_hooks_see_whole_inputs_when_threaded(model, monkeypatch):
    """With threads, a hooked block still runs its token stages as one piece: each hook is called once
    per forward with all tokens, and the logits are those of the unhooked forward."""
    import minq.models.llama as L

    monkeypatch.setattr(L, "PARALLEL_MIN_WORK", 0)
    monkeypatch.setattr(L, "_threads", lambda: 2)
    ids = _prompt_ids(model, 64).reshape(2, 32)
    seen = []
    hooks = {n: (lambda name, X: seen.append((name, X.shape))) for n in ("blk.0.attn_q", "blk.5.ffn_down")}
    assert_close(model.logits(ids, hooks=hooks), model.logits(ids), atol=1e-5, name="hooked vs not")
    assert seen == [("blk.0.attn_q", (64, 576)), ("blk.5.ffn_down", (64, 1536))]


def test_matmul_t_pieces_equal_one_gemm(monkeypatch, rng):
    """``_matmul_t`` cut by W's rows (wide W) or by X's rows (narrow W) equals ``X @ W.T`` bit for bit."""
    import minq.models.llama as L

    monkeypatch.setattr(L, "_threads", lambda: 2)
    for M, N, K in [(512, 3072, 64), (512, 960, 64), (100, 2050, 33), (33, 7, 5), (1, 4096, 16)]:
        X = rng.standard_normal((M, K)).astype(np.float32)
        W = rng.standard_normal((N, K)).astype(np.float32)
        assert np.array_equal(L._matmul_t(X, W), X @ W.T), (M, N, K)
        Xr = X[:, ::-1]                                                              # a strided X: copied
        assert np.array_equal(L._matmul_t(Xr, W), np.ascontiguousarray(Xr) @ W.T)


def test_parallel_for(monkeypatch):
    import threading

    from threadpoolctl import threadpool_info

    import minq.models.llama as L

    blas = lambda: [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]  # noqa: E731
    before = blas()
    seen, inside = [], []

    def fn(item):
        seen.append(item)
        inside.append((threading.get_ident(), blas()))

    monkeypatch.setattr(L, "_threads", lambda: 2)
    L._parallel_for(fn, list(range(40)), work=L.PARALLEL_MIN_WORK)
    assert sorted(seen) == list(range(40))                          # each item once
    assert all(b == [1] * len(before) for _, b in inside)           # BLAS pinned to 1 thread inside
    assert blas() == before                                          # and restored after
    inside.clear()
    L._parallel_for(fn, [1, 2, 3], work=L.PARALLEL_MIN_WORK - 1)     # too little work: the caller alone
    assert {tid for tid, _ in inside} == {threading.get_ident()}

    def boom(item):
        if item == 7:
            raise RuntimeError("tile 7")

    with pytest.raises(RuntimeError, match="tile 7"):
        L._parallel_for(boom, list(range(20)), work=L.PARALLEL_MIN_WORK)
    assert blas() == before
