"""Chapter 07: AWQ (minq/awq.py) and the scale folding it shares with SmoothQuant (minq/folding.py)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minq
from minq import registry
from minq.awq import (
    ALPHAS,
    SHRINKS,
    AWQWeight,
    act_mean,
    awq_model,
    awq_quantize,
    awq_scales,
    clip_weight,
    fake_quantize_groups,
    output_error,
    search_clip,
    search_scale,
)
from minq.folding import fold_scales
from minq.groups import GroupedAffine, quantize_groups
from minq.testing import assert_close, assert_equal, llm_like_layer, rel_output_error


@pytest.fixture(scope="module")
def layer():
    W, X = llm_like_layer(0)
    return W, X[:4096], X[4096:]


def _layer(seed, out=24, n_in=64, tokens=96, outliers=True):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((out, n_in)).astype(np.float32)
    X = rng.standard_normal((tokens, n_in)) * np.exp(rng.normal(0, 1, n_in))
    if outliers:
        X[:, rng.integers(n_in)] *= 30
    return W, X.astype(np.float32)


# --- the reference's figures (AutoAWQ's search run unmodified, llm-like layer, g64, calibration error) --

@pytest.mark.parametrize("bits,clip,want", [(4, False, 0.00316), (4, True, 0.00287), (3, False, 0.01457),
                                            (3, True, 0.01225)])
def test_llm_like_layer_matches_the_reference_within_3_percent(layer, bits, clip, want):
    W, cal, held = layer
    q = awq_quantize(W, cal, bits=bits, group_size=64, clip=clip)
    rel = rel_output_error(W, q.dequantize(), cal)
    assert abs(rel / want - 1) < 0.03, (rel, want)
    # AWQ generalises: held-out error within 3% of the calibration error (the reference: equal)
    assert abs(rel_output_error(W, q.dequantize(), held) / rel - 1) < 0.03
    # and beats RTN by a wide margin on this data (RTN 0.00792 / 0.03679)
    rtn = rel_output_error(W, quantize_groups(W, bits=bits, group_size=64, scale_dtype="float32").dequantize(), cal)
    assert rel < 0.5 * rtn


def test_llm_like_layer_search_picks_the_reference_alpha(layer):
    W, cal, _ = layer
    q = awq_quantize(W, cal, bits=4, group_size=64, clip=False)
    assert q.alpha == pytest.approx(0.35)
    s = q.in_scale
    assert 0.2 < float(s.min()) < 0.4 and 2.5 < float(s.max()) < 4.0           # reference: s in [0.30, 3.31]


# --- exact properties ----------------------------------------------------------------------------

@settings(max_examples=25)
@given(seed=st.integers(0, 2**32 - 1), bits=st.integers(2, 8), g=st.sampled_from([8, 16, 64]),
       dtype=st.sampled_from(["float32", "float16"]))
def test_alpha_zero_without_clipping_is_exactly_rtn(seed, bits, g, dtype):
    W, X = _layer(seed)
    q = awq_quantize(W, X, bits=bits, group_size=g, alphas=(0.0,), clip=False, scale_dtype=dtype)
    want = quantize_groups(W, bits=bits, group_size=g, scale_dtype=dtype)
    assert_equal(q.dequantize(), want.dequantize())
    assert_equal(q.codes, want.codes)
    assert_equal(q.in_scale, np.ones(W.shape[1], np.float32))


@settings(max_examples=20)
@given(seed=st.integers(0, 2**32 - 1), bits=st.integers(2, 6), g=st.sampled_from([16, 32]))
def test_scale_search_returns_the_grid_minimum_of_the_true_output_error(seed, bits, g):
    W, X = _layer(seed)
    q = awq_quantize(W, X, bits=bits, group_size=g, clip=False)
    assert q.losses.shape == (len(ALPHAS),)
    k = ALPHAS.index(q.alpha)
    assert q.losses[k] == q.losses.min() and np.argmin(q.losses) == k            # the first minimum
    # the H-form loss is the mean squared output error written out
    for a in (0.0, q.alpha, 0.5):
        s = awq_scales(act_mean(X), a)
        W_hat = quantize_groups(W * s, bits=bits, group_size=g, scale_dtype="float32").dequantize() / s
        direct = np.mean((X.astype(np.float64) @ (W - W_hat).T.astype(np.float64)) ** 2)
        assert q.losses[ALPHAS.index(a)] == pytest.approx(direct, rel=1e-4)
    assert_close(q.dequantize(), quantize_groups(W * q.in_scale, bits=bits, group_size=g,
                                                 scale_dtype="float32").dequantize() / q.in_scale, rtol=0)


@settings(max_examples=20)
@given(seed=st.integers(0, 2**32 - 1), bits=st.integers(2, 6), g=st.sampled_from([8, 32]))
def test_clip_search_is_the_per_group_minimum_of_partial_dot_product_errors(seed, bits, g):
    W, X = _layer(seed, tokens=40)
    max_val, err = search_clip(W, X.T @ X, bits=bits, group_size=g)
    out, n_in = W.shape
    G = n_in // g
    amax = np.abs(W.reshape(out, G, g)).max(-1, keepdims=True)
    Xg = X.reshape(-1, G, g).astype(np.float64)
    errs = []
    for c in SHRINKS:        # brute force: the reference's sum_group X_g * (q_g - w_g), squared, summed
        dW = (quantize_groups(clip_weight(W, amax * c, g), bits=bits, group_size=g, scale_dtype="float32")
              .dequantize() - W).reshape(out, G, g)
        errs.append(np.einsum("tgi,ogi->tog", Xg, dW.astype(np.float64)) ** 2)
    errs = np.array(errs).sum(1)                                                   # [candidates, out, G]
    k = np.argmin(errs, axis=0)                                                    # first minimum
    assert_close(err, errs.min(0), rtol=2e-3, atol=1e-6 * errs.max())
    near = np.isclose(errs.min(0), errs[np.argsort(errs, 0)[1], np.arange(out)[:, None], np.arange(G)], rtol=1e-3)
    ratio = max_val[..., 0] / amax[..., 0]
    want = np.asarray(SHRINKS, np.float32)[k]
    assert np.all((np.abs(ratio - want) < 1e-6) | near)           # same candidate unless a float near-tie
    assert np.all(err <= errs[0] * (1 + 1e-5) + 1e-9)                # never worse than no clipping


@settings(max_examples=30)
@given(seed=st.integers(0, 2**32 - 1), bits=st.integers(1, 8), g=st.sampled_from([1, 4, 16, 64]),
       dtype=st.sampled_from(["float32", "float16"]))
def test_fake_quantize_groups_equals_the_container(seed, bits, g, dtype):
    W = (np.random.default_rng(seed).standard_normal((8, 64)) * 3).astype(np.float32)
    want = quantize_groups(W, bits=bits, group_size=g, scale_dtype=dtype).dequantize()
    assert_equal(fake_quantize_groups(W, bits=bits, group_size=g, scale_dtype=dtype), want)


def test_one_sign_groups_do_not_collapse():
    """The reference's quantizer maps [0.5, 0.6, 0.8, 1.0] to 0.5 four times; minq's range includes 0."""
    W = np.tile(np.array([0.5, 0.6, 0.8, 1.0], np.float32), (2, 4))               # [2, 16], all positive
    X = np.ones((8, 16), np.float32)
    q = awq_quantize(W, X, bits=4, group_size=4, alphas=(0.0,), clip=False).dequantize()
    assert len(np.unique(q[0, :4])) == 4
    assert np.abs(q - W).max() <= 1.0 / 15 / 2 + 1e-6


def test_awq_weight_protocol_and_sizes(layer):
    W, cal, _ = layer
    q = awq_quantize(W, cal[:256], bits=4, group_size=64, alphas=(0.0, 0.5), shrinks=(1.0, 0.9))
    assert isinstance(q, AWQWeight) and isinstance(q, GroupedAffine)
    assert q.shape == W.shape and q.dequantize().dtype == np.float32
    base = quantize_groups(W, bits=4, group_size=64, scale_dtype="float32")
    assert q.nbytes == base.nbytes + 4 * W.shape[1]                                  # + float32 s [in]


def test_output_error_equals_the_mean_squared_output_difference(rng):
    X = rng.standard_normal((50, 12)).astype(np.float32)
    dW = rng.standard_normal((7, 12)).astype(np.float32)
    assert output_error(dW, X.T @ X, 50) == pytest.approx(np.mean((X @ dW.T) ** 2), rel=1e-5)


def test_search_scale_raises_when_every_loss_is_nan(rng):
    W, X = _layer(1)
    with pytest.raises(ValueError, match="NaN"):
        search_scale(act_mean(X), W, lambda W_hat: float("nan"), bits=4, group_size=16)


def test_torch_path_equals_numpy(device):
    torch = pytest.importorskip("torch")
    W, X = _layer(3, out=32, n_in=64, tokens=128)
    q = awq_quantize(W, X, bits=4, group_size=16)
    qt = awq_quantize(torch.tensor(W, device=device), torch.tensor(X, device=device), bits=4, group_size=16)
    assert qt.alpha == q.alpha
    assert_close(qt.in_scale.cpu().numpy(), q.in_scale, rtol=1e-5)
    # codes may flip where float summation order differs; the effective weights stay equally good
    e_np = rel_output_error(W, q.dequantize(), X)
    e_t = rel_output_error(W, qt.dequantize().cpu().numpy(), X)
    assert e_t == pytest.approx(e_np, rel=1e-2)
    assert np.mean(qt.codes.cpu().numpy() == q.codes) > 0.99


# --- bad input --------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw,match", [
    (dict(X=np.ones((10, 8), np.float32)), "X must be"),
    (dict(X=np.ones((0, 16), np.float32)), "X is empty"),
    (dict(X=np.full((10, 16), np.nan, np.float32)), "X contains NaN"),
    (dict(W=np.full((4, 16), np.inf, np.float32)), "W contains NaN"),
    (dict(W=np.ones((4, 16), np.int32)), "W must have a floating-point dtype"),
    (dict(bits=9), "bits"),
    (dict(bits=1.5), "bits"),
    (dict(group_size=5), "group_size"),
    (dict(alphas=(0.5, 1.5)), "alphas"),
    (dict(alphas=()), "alphas"),
    (dict(shrinks=(1.0, 0.0)), "shrinks"),
])
def test_bad_inputs(kw, match):
    args = dict(W=np.ones((4, 16), np.float32), X=np.ones((10, 16), np.float32), bits=4, group_size=8)
    args.update(kw)
    with pytest.raises((ValueError, TypeError), match=match):
        awq_quantize(args.pop("W"), args.pop("X"), **args)


def test_search_functions_bad_inputs(rng):
    W = rng.standard_normal((4, 16)).astype(np.float32)
    with pytest.raises(ValueError, match="H must be"):
        search_clip(W, np.eye(8, dtype=np.float32), bits=4, group_size=8)
    with pytest.raises(ValueError, match="H contains NaN"):
        search_clip(W, np.full((16, 16), np.nan, np.float32), bits=4, group_size=8)
    with pytest.raises(ValueError, match="shrinks"):
        search_clip(W, np.eye(16, dtype=np.float32), bits=4, group_size=8, shrinks=(1.5,))
    with pytest.raises(ValueError, match="x_bar must have"):
        search_scale(np.ones(8, np.float32), W, lambda W_hat: 0.0, bits=4, group_size=8)
    with pytest.raises(ValueError, match="group_size"):
        search_clip(W, np.eye(16, dtype=np.float32), bits=4, group_size=5)


def test_awq_scales_bad_alpha():
    with pytest.raises(ValueError, match="alpha"):
        awq_scales(np.ones(4, np.float32), 1.5)


# --- folding and the model level (SmolLM2) ----------------------------------------------------------

@pytest.fixture(scope="module")
def cal_ids(smollm2_cal):
    return smollm2_cal


def _rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_folding_leaves_the_float_model_unchanged(smollm2, rng):
    c = smollm2.config
    n_prev = {"qkv": c.dim, "gate_up": c.dim, "down": c.hidden_dim, "o": c.n_kv_heads * c.head_dim}
    scales = {f"blk.{i}.{t}": np.exp(rng.normal(0, 1, n_prev[t])).astype(np.float32)
              for i in (0, 5, 29) for t in smollm2.fold_targets()}
    folded = fold_scales(smollm2, scales)
    ids = np.arange(100, 164)
    assert _rel(folded.logits(ids), smollm2.logits(ids)) < 1e-5
    assert not np.array_equal(folded.weights["blk.5.ffn_down"].dequantize(), smollm2.weights["blk.5.ffn_down"].dequantize())
    with pytest.raises(ValueError, match="scales"):
        fold_scales(smollm2, {"blk.0.qkv": np.ones(3, np.float32)})
    with pytest.raises(ValueError, match="scales key"):
        fold_scales(smollm2, {"blk.0.nope": np.ones(c.dim, np.float32)})


def test_awq_model_scaled_float_model_is_unchanged(smollm2, cal_ids):
    """quantize=False, clip=False: the scales are searched and folded in, nothing else changes."""
    m = awq_model(smollm2, cal_ids, bits=3, group_size=64, clip=False, quantize=False, blocks=[0, 1],
                  progress=False)
    ids = np.arange(200, 264)
    assert _rel(m.logits(ids), smollm2.logits(ids)) < 1e-5
    assert not np.array_equal(m.norms["blk.1.ffn_norm"], smollm2.norms["blk.1.ffn_norm"])


def test_awq_model_blocks_and_stats(smollm2, cal_ids):
    stats = {}
    q = awq_model(smollm2, cal_ids, bits=4, group_size=64, blocks=[1], progress=False, stats=stats)
    assert isinstance(q.weights["blk.1.ffn_down"], GroupedAffine)
    assert q.weights["blk.0.attn_q"] is smollm2.weights["blk.0.attn_q"]               # other blocks untouched
    assert q.weights["blk.2.attn_q"] is smollm2.weights["blk.2.attn_q"]
    (info,) = stats["layers"]
    assert set(info) == {"qkv", "gate_up", "down"}                                   # v -> o skipped under GQA
    for alpha, losses in info.values():
        assert alpha in ALPHAS and losses[ALPHAS.index(alpha)] == losses.min()
    assert stats["tokens"] == cal_ids.size
    # RTN's loss computed here, apart from the search (4 windows = the search tokens; float16 scales as
    # awq_model): losses[0] (alpha = 0, s = 1) is it, and the chosen scales do better
    rtn = _rtn_block_losses(smollm2, cal_ids, 1)
    for t, (_, losses) in info.items():
        assert losses[0] == pytest.approx(rtn[t], rel=1e-5), t                      # measured: equal to 1e-7
        assert losses.min() < rtn[t], t              # measured min / RTN: qkv 0.26, gate_up 0.92, down 0.77


def _rtn_block_losses(model, ids, i):
    """The mean squared output error of RTN (g64, float16 scales) for each AWQ target of block ``i``:
    q/k/v through attention (at the ``attn_output`` input, times ``W_o``), gate/up through the MLP,
    ``ffn_down`` alone, each on the float inputs the block sees for ``ids``."""
    from minq.models.llama import DenseWeight

    p = f"blk.{i}."
    W = {n: np.array(model.weights[p + n].dequantize(), np.float32) for n in
         ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")}
    rtn = {n: quantize_groups(w, bits=4, group_size=64, scale_dtype="float16").dequantize() for n, w in W.items()}
    X = model.capture_inputs(ids, [p + "attn_output", p + "ffn_gate", p + "ffn_down"])

    def mlp(X, g, u, d):
        a, b = X @ g.T, X @ u.T
        return (a / (1 + np.exp(-a)) * b) @ d.T

    def mse(d):
        return float(np.mean(np.square(d, dtype=np.float64)))

    trial = model.with_weights({p + n: DenseWeight(rtn[n]) for n in ("attn_q", "attn_k", "attn_v")})
    ctx = trial.capture_inputs(ids, [p + "attn_output"])[p + "attn_output"]
    Xg = X[p + "ffn_gate"]
    return {"qkv": mse((ctx - X[p + "attn_output"]) @ W["attn_output"].T),
            "gate_up": mse(mlp(Xg, rtn["ffn_gate"], rtn["ffn_up"], W["ffn_down"])
                           - mlp(Xg, W["ffn_gate"], W["ffn_up"], W["ffn_down"])),
            "down": mse(X[p + "ffn_down"] @ (rtn["ffn_down"] - W["ffn_down"]).T)}


def test_awq_model_bad_inputs(smollm2, cal_ids):
    with pytest.raises(ValueError, match="calibration"):
        awq_model(smollm2, None, bits=4, group_size=64)
    with pytest.raises(ValueError, match="group_size"):
        awq_model(smollm2, cal_ids, bits=4, group_size=100)
    with pytest.raises(ValueError, match="blocks"):
        awq_model(smollm2, cal_ids, bits=4, group_size=64, blocks=[99])
    with pytest.raises(TypeError, match="Llama"):
        awq_model(object(), cal_ids, bits=4, group_size=64)
    with pytest.raises(ValueError, match="calibration must be windows"):           # a flat sequence
        awq_model(smollm2, cal_ids[0], bits=4, group_size=64)
    for kw in (dict(batch_size=0), dict(search_windows=0)):
        with pytest.raises(ValueError, match=f"{next(iter(kw))} must be >= 1"):
            awq_model(smollm2, cal_ids, bits=4, group_size=64, progress=False, **kw)


def test_awq_schemes_are_registered():
    for name in ("awq-w4g64", "awq-w3g64", "awq+gptq-w4g64"):
        s = registry.get(name)
        assert s.needs_calibration and s.quantize_model is not None and "AWQ" in s.description
    for bad in ("awq-w9g64", "awq-w4g0", "awq-w4"):
        with pytest.raises(ValueError, match="scheme"):
            registry.get(bad)
    assert {"awq-w4g64", "awq-w3g64"} <= set(registry.default_schemes())


def test_model_level_lives_in_awq_model_and_stays_importable_from_awq():
    import minq.awq
    import minq.awq_model

    assert awq_model is minq.awq_model.awq_model and minq.awq.awq_block is minq.awq_model.awq_block
    assert "minq.awq_model" in registry.METHOD_MODULES
    fam = {f.name: f for f in registry.families()}
    assert fam["awq"].defaults == ("awq-w4g64", "awq-w3g64") and fam["awq+gptq"].defaults == ()
    assert registry.family_of("awq+gptq-w4g64") == "awq+gptq" and registry.family_of("awq-w4g64") == "awq"
    with pytest.raises(AttributeError, match="no attribute 'awq_blocks'"):
        minq.awq.awq_blocks  # noqa: B018


def test_awq_then_gptq_on_one_block(smollm2, cal_ids):
    """awq+gptq: AWQ's scales folded into the float model, then GPTQ quantizes it."""
    from minq.gptq_model import gptq_model

    scaled = awq_model(smollm2, cal_ids, bits=4, group_size=64, clip=False, quantize=False, blocks=[0],
                       progress=False)
    q = gptq_model(scaled, cal_ids, bits=4, group_size=64, blocks=[0], progress=False)
    assert isinstance(q.weights["blk.0.ffn_up"], GroupedAffine)
    assert q.norms["blk.0.attn_norm"] is scaled.norms["blk.0.attn_norm"]           # the folded norm is kept
    x = smollm2.embed(cal_ids[:2])
    y, y_q, y_rtn = (m.run_block(0, x) for m in (smollm2, q, minq.quantize(smollm2, "rtn-w4g64", progress=False)))
    err, err_rtn = np.linalg.norm(y_q - y), np.linalg.norm(y_rtn - y)
    print(f"block 0 output error: awq+gptq {err:.4f}, rtn {err_rtn:.4f}")
    assert err < err_rtn                                                          # on its calibration windows
