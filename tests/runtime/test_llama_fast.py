"""The fast Llama forward (``engine="fast"``, minq.runtime.llama_fast) equals the readable one
(``engine="reference"``, minq.models.llama): logits, incremental decoding through one shared KV cache,
and what calibration hooks see — on tiny random Llamas of every shape the runtime cuts differently, and
on SmolLM2.
"""

import contextlib
import subprocess
import sys
import textwrap
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from threadpoolctl import threadpool_limits

from minq.data import eval_tokens
from minq.models.llama import LlamaConfig, LlamaModel
from minq.models.llama_weights import _linear_shape
from minq.models.weights import DenseWeight
from minq.runtime import kernels as K
from minq.runtime import llama_fast
from minq.runtime import parallel as P
from minq.testing import assert_close

# Fast vs reference on the tiny models: max |logits diff| <= REL_TOL * max |reference logits|. The two
# engines add in different orders (GEMMs on token pieces and query tiles, attention sums over the
# visible keys only, Numba's exp within 4e-7 of np.exp, pairwise sums of other lengths), so they differ
# by float32 rounding, amplified a little by each block. Measured over ~3500 random configs of the
# strategy below (1-2 blocks, T 1-130, batch 1-3, up to 4 cache splits with the engine drawn per chunk,
# 1 or 2 threads): at most 2.2e-6 of the logits' scale (about 20 float32 ulps of it). REL_TOL = 1e-5
# leaves a margin of 4.5x, and is still far below a real disagreement (a wrong mask, head order or
# cache position moves the logits by ~1e-2 of their scale or more). Hidden sizes below 8 are left out:
# the RMSNorm of 2 or 4 numbers that happen to cancel to near 0 amplifies rounding ~100x (measured
# 2.6e-5 at d = 2) — a property of such a model, not of the runtime.
REL_TOL = 1e-5


def tiny_llama(n_kv_heads: int, g: int, head_dim: int, n_layers: int, hidden: int, seed: int, untied: bool):
    """A random-weight Llama with ``n_kv_heads * g`` query heads of ``head_dim``, vocabulary 50."""
    nh = n_kv_heads * g
    c = LlamaConfig(vocab_size=50, dim=nh * head_dim, n_layers=n_layers, n_heads=nh, n_kv_heads=n_kv_heads,
                    hidden_dim=hidden, norm_eps=1e-5, rope_theta=10000.0, context_length=256)
    r = np.random.default_rng(seed)
    weights = {}
    for i in range(n_layers):
        for n in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"):
            out, inp = _linear_shape(c, n)
            weights[f"blk.{i}.{n}"] = DenseWeight(r.standard_normal((out, inp)) / np.sqrt(inp))
    norms = {f"blk.{i}.{n}": (1 + 0.2 * r.standard_normal(c.dim)).astype(np.float32)
             for i in range(n_layers) for n in ("attn_norm", "ffn_norm")}
    norms["output_norm"] = (1 + 0.2 * r.standard_normal(c.dim)).astype(np.float32)
    E = r.standard_normal((50, c.dim)).astype(np.float32)
    output = r.standard_normal((50, c.dim)).astype(np.float32) if untied else None
    return LlamaModel(c, weights, norms, E, output=output)


configs = st.fixed_dictionaries({
    "n_kv_heads": st.integers(1, 3), "g": st.sampled_from([1, 2, 3]),      # g = 1: MHA, g > 1: GQA
    "head_dim": st.sampled_from([2, 4, 8]), "n_layers": st.integers(1, 2), "hidden": st.integers(1, 24),
    "seed": st.integers(0, 2**32 - 1), "untied": st.booleans()}
).filter(lambda c: c["n_kv_heads"] * c["g"] * c["head_dim"] >= 8)                   # d >= 8


@contextlib.contextmanager
def threads(n: int):
    """BLAS, and so the runtime's pool, at ``n`` threads; even a tiny model's work goes on them."""
    with threadpool_limits(limits=n, user_api="blas"), mock.patch.object(P, "PARALLEL_MIN_WORK", 0):
        assert P._threads() == n
        yield


def rel_diff(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


@given(configs, st.integers(1, 3), st.integers(1, 130), st.sampled_from([1, 2]), st.data())
def test_fast_equals_reference(cfg, B, T, n, data):
    """Full forward, last-only logits and incremental decoding (chunks through one cache, each chunk on a
    drawn engine) agree with the reference forward; T crosses GEMM_MIN_ROWS (32) and QUERY_TILE (64)."""
    model = tiny_llama(**cfg)
    ids = np.random.default_rng(cfg["seed"]).integers(0, 50, (B, T))
    cuts = sorted(data.draw(st.sets(st.integers(1, T - 1), max_size=4), label="cache splits") if T > 1 else [])
    engines = data.draw(st.lists(st.sampled_from(["fast", "reference"]), min_size=len(cuts) + 1,
                                 max_size=len(cuts) + 1), label="engine of each chunk")
    with threads(n):
        ref = model.logits(ids, engine="reference")                            # [B, T, vocab]
        fast = model.logits(ids)
        assert fast.shape == ref.shape == (B, T, 50) and fast.dtype == np.float32
        assert rel_diff(fast, ref) <= REL_TOL, rel_diff(fast, ref)
        assert rel_diff(model.logits(ids, last_only=True), ref[:, -1:]) <= REL_TOL
        cache = model.new_cache()
        parts = [model.logits(ids[:, a:b], cache=cache, engine=e)
                 for (a, b), e in zip(zip([0, *cuts], [*cuts, T]), engines)]
        assert cache.length == T
        assert rel_diff(np.concatenate(parts, axis=1), ref) <= REL_TOL


@settings(max_examples=10)
@given(configs, st.integers(1, 3), st.integers(1, 80), st.sampled_from([1, 2]))
def test_hooks_see_the_same_inputs(cfg, B, T, n):
    """Both engines call each hook once per forward with the linear's whole input [B * T, in], and
    ``capture_inputs`` gives the same arrays (shapes exactly, values to float32 rounding)."""
    model = tiny_llama(**cfg)
    ids = np.random.default_rng(cfg["seed"]).integers(0, 50, (B, T))
    names = model.linear_names()
    with threads(n):
        seen = {"fast": [], "reference": []}
        for engine, calls in seen.items():
            model.logits(ids, hooks={m: (lambda name, X, calls=calls: calls.append((name, X.shape))) for m in names},
                         engine=engine)
        assert seen["fast"] == seen["reference"]                               # order, count, shapes
        assert sorted(seen["fast"]) == sorted((m, (B * T, model._expected_shape(m)[1])) for m in names)
        X = {e: model.capture_inputs(ids, names, engine=e) for e in ("fast", "reference")}
    for m in names:
        assert X["fast"][m].shape == X["reference"][m].shape
        assert rel_diff(X["fast"][m], X["reference"][m]) <= REL_TOL, m


def test_bad_engine():
    model = tiny_llama(1, 2, 4, 1, 8, 0, False)
    ids = np.array([1, 2, 3])
    x = model.embed(ids)
    for call in (lambda e: model.logits(ids, engine=e), lambda e: model.run_block(0, x, engine=e),
                 lambda e: model.head(x, engine=e), lambda e: model.capture_inputs(ids, ["blk.0.attn_q"], engine=e)):
        for bad in ("Fast", "numba", None, 1):
            with pytest.raises(ValueError, match=r"engine must be one of \('fast', 'reference'\)"):
                call(bad)


def test_reference_never_touches_the_runtime():
    """``engine="reference"`` is plain NumPy: a fresh process running it never imports ``minq.runtime``
    nor threadpoolctl, and starts no thread."""
    code = textwrap.dedent("""
        import sys, threading
        import numpy as np
        from minq.models.llama import DenseWeight, LlamaConfig, LlamaModel
        c = LlamaConfig(vocab_size=10, dim=8, n_layers=2, n_heads=2, n_kv_heads=1, hidden_dim=6,
                        norm_eps=1e-5, rope_theta=1e4, context_length=64)
        r = np.random.default_rng(0)
        shapes = {"attn_q": (8, 8), "attn_k": (4, 8), "attn_v": (4, 8), "attn_output": (8, 8),
                  "ffn_gate": (6, 8), "ffn_up": (6, 8), "ffn_down": (8, 6)}
        W = {f"blk.{i}.{n}": DenseWeight(r.standard_normal(s)) for i in range(2) for n, s in shapes.items()}
        norms = {k: np.ones(8, np.float32) for k in ["output_norm"] + [f"blk.{i}.{n}" for i in range(2)
                                                                        for n in ("attn_norm", "ffn_norm")]}
        m = LlamaModel(c, W, norms, r.standard_normal((10, 8)).astype(np.float32))
        ids = np.arange(40).reshape(2, 20) % 10
        cache = m.new_cache()
        m.logits(ids[:, :12], cache=cache, engine="reference"); m.logits(ids[:, 12:], cache=cache, engine="reference")
        m.capture_inputs(ids, ["blk.1.ffn_down"], engine="reference")
        m.head(m.run_block(0, m.embed(ids), engine="reference"), engine="reference")
        print(sorted(k for k in sys.modules if k.startswith(("minq.runtime", "threadpoolctl"))), threading.active_count())
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["[]", "1"], out.stdout


def test_smollm2_engines_agree(smollm2):
    """SmolLM2, a 512-token window: the two engines' logits within 1e-4 (max abs; logits of scale ~40)."""
    ids = eval_tokens(smollm2.tokenizer, max_tokens=512)
    fast, ref = smollm2.logits(ids), smollm2.logits(ids, engine="reference")
    diff = float(np.abs(fast - ref).max())
    print(f"SmolLM2, 512 tokens: max |fast - reference| logits = {diff:.2e} (max |logits| {np.abs(ref).max():.1f})")
    assert diff < 1e-4


# --- the fast forward's own structure, on SmolLM2 (30 blocks, d 576, 9 heads / 3 KV heads) -----------


def test_forward_without_jit_matches(smollm2, monkeypatch):
    """NUMBA_DISABLE_JIT=1 runs the kernels' NumPy references: the same logits to float32 rounding."""
    ids = eval_tokens(smollm2.tokenizer, max_tokens=24)
    with_jit = smollm2.logits(ids)
    monkeypatch.setattr(K, "JIT_ENABLED", False)
    assert_close(smollm2.logits(ids), with_jit, atol=1e-4, name="JIT off vs on")


def test_parallel_forward_equals_serial(smollm2, monkeypatch):
    """The token pieces and attention tiles on threads (BLAS at 1 thread) give the logits of the serial loop."""
    ids = eval_tokens(smollm2.tokenizer, max_tokens=64).reshape(2, 32)
    tiles, pieces = [], []
    run = llama_fast._parallel_for

    def spy(fn, items, work):
        if isinstance(items[0][0], slice):                           # token pieces (b, r)
            pieces.append([(b.indices(2), r.indices(32)) for b, r in items])
        else:                                                        # attention tiles (b, j, t0, t1)
            tiles.append((items, work))
        return run(fn, items, work)

    monkeypatch.setattr(llama_fast, "_parallel_for", spy)
    monkeypatch.setattr(P, "PARALLEL_MIN_WORK", 0)                  # threads for every block
    monkeypatch.setattr(P, "_threads", lambda: 2)
    threaded = smollm2.logits(ids)
    assert len(tiles) == 30 and tiles[0] == ([(b, j, 0, 32) for b in range(2) for j in range(3)],
                                             2 * 9 * 32 * 32 * 64)   # B * n_kv tiles of 32 queries
    # two stages a block, each on one piece a window: (window b, positions 0..31)
    assert len(pieces) == 60 and all(p == [((0, 1, 1), (0, 32, 1)), ((1, 2, 1), (0, 32, 1))] for p in pieces)
    pieces.clear()
    one = smollm2.logits(ids[:1])                                     # one window: cut in two runs of positions
    assert all(p == [((0, 1, 1), (0, 16, 1)), ((0, 1, 1), (16, 32, 1))] for p in pieces)
    monkeypatch.setattr(P, "PARALLEL_MIN_WORK", 2**62)              # never
    assert_close(smollm2.logits(ids), threaded, atol=1e-5, name="serial vs threaded")
    assert_close(smollm2.logits(ids[:1]), one, atol=1e-5, name="serial vs threaded, one window")
    assert_close(smollm2.logits(ids[:, :16]), threaded[:, :16], atol=1e-4, name="shorter windows")  # other GEMM shapes


def test_hooks_see_whole_inputs_when_threaded(smollm2, monkeypatch):
    """With threads, a hooked block still runs its token stages as one piece: each hook is called once
    per forward with all tokens, and the logits are those of the unhooked forward."""
    monkeypatch.setattr(P, "PARALLEL_MIN_WORK", 0)
    monkeypatch.setattr(P, "_threads", lambda: 2)
    ids = eval_tokens(smollm2.tokenizer, max_tokens=64).reshape(2, 32)
    seen = []
    hooks = {n: (lambda name, X: seen.append((name, X.shape))) for n in ("blk.0.attn_q", "blk.5.ffn_down")}
    assert_close(smollm2.logits(ids, hooks=hooks), smollm2.logits(ids), atol=1e-5, name="hooked vs not")
    assert seen == [("blk.0.attn_q", (64, 576)), ("blk.5.ffn_down", (64, 1536))]
