"""Chapter 04 on the real model: int8 activations (static, dynamic, LLM.int8), the integer matmul,
SmoothQuant's float equivalence, the registered schemes, and ``LlamaModel.with_norms``."""

import numpy as np
import pytest

import minq
import minq.smoothquant  # noqa: F401  (registers smoothquant-w8a8)
from minq import affine, registry
from minq.calibration import calibrate
from minq.data import calibration_tokens, eval_tokens
from minq.groups import quantize_groups
from minq.observers import MinMaxObserver
from minq.smoothquant import quantize_smoothquant, smooth, smooth_scales
from minq.testing import assert_bound, assert_close, assert_equal
from minq.w8a8 import ActQuantModel, Int8Activations, int8_matmul, int8_weight


@pytest.fixture(scope="module")
def model():
    return minq.load_model("smollm2", progress=False)


@pytest.fixture(scope="module")
def cal(model):
    return calibration_tokens(model.tokenizer, n_samples=1, seq_len=256, seed=0)       # [1, 256]


@pytest.fixture(scope="module")
def ids(model):
    return eval_tokens(model.tokenizer, max_tokens=256)


@pytest.fixture(scope="module")
def absmax(model, cal):
    obs = calibrate(model, cal, lambda name: MinMaxObserver(axis=0))
    return {n: o.absmax().reshape(-1) for n, o in obs.items()}


# --- int8 activations and the integer matmul ------------------------------------------------------------


def _X(rng, tokens=64, n_in=96):
    X = rng.standard_normal((tokens, n_in)).astype(np.float32)
    X[:, 5] *= 30                                               # an outlier channel, as in real models
    X[3] = 0                                                    # an all-zero token
    return X


def test_static_and_dynamic_fake_quantization_equal_affine(rng):
    X = _X(rng)
    s = np.float32(np.abs(X).max() / 127 * 0.5)                 # a static scale that clips
    got = Int8Activations("static", s=s).fake_quantize(X)
    # equal in value (a rounded -0.3 gives -0 here, +0 through the codes of affine: the same number)
    assert_close(got, affine.fake_quantize(X, affine.QParams(np.full((1, 1), s), np.float32(128), 8, True)))
    assert np.abs(got).max() <= 128 * s
    q = Int8Activations("dynamic")
    sx, cols = q.scales(X)
    assert cols is None and sx.shape == (64, 1) and sx[3, 0] == 1
    assert_close(q.fake_quantize(X), affine.fake_quantize(X, affine.QParams(sx, np.float32(128), 8, True)))
    Xq, sx2, _ = q.quantize(X)
    assert_close(Xq.astype(np.float32) * sx2, q.fake_quantize(X))
    assert np.abs(Xq).max() == 127 and (Xq[3] == 0).all()


def test_outlier_mode_keeps_outlier_columns_in_float(rng):
    X = _X(rng)
    q = Int8Activations("outlier", threshold=6.0)
    X_hat = q.fake_quantize(X)
    cols = (np.abs(X) >= 6).any(axis=0)
    assert cols[5] and cols.sum() < 10
    assert_equal(X_hat[:, cols], X[:, cols])                    # float
    sx, _ = q.scales(X)
    rest = np.where(cols, 0, X)
    assert_close(sx[:, 0], np.where(np.abs(rest).max(1) > 0, np.abs(rest).max(1) / 127, 1), rtol=1e-7)
    assert_bound(np.abs(X_hat - X)[:, ~cols], sx / 2 * (1 + 1e-6))
    Xq, _, cols2 = q.quantize(X)
    assert_equal(cols2, cols)
    assert (Xq[:, cols] == 0).all()
    assert_close(np.where(cols, X, Xq * sx), X_hat)


@pytest.mark.parametrize("tokens, n_in, out", [(1, 1, 1), (17, 64, 9), (64, 1536, 40)])
def test_int8_matmul_equals_dequantized_float_matmul_within_bound(rng, tokens, n_in, out):
    Xq = rng.integers(-128, 128, (tokens, n_in)).astype(np.int8)
    Wq = rng.integers(-128, 128, (out, n_in)).astype(np.int8)
    sx = rng.uniform(1e-3, 1, (tokens, 1)).astype(np.float32)
    sw = rng.uniform(1e-3, 1, (out, 1)).astype(np.float32)
    Y = int8_matmul(Xq, sx, Wq, sw)
    X_hat, W_hat = Xq * sx, Wq * sw                             # float32
    bound = (n_in + 2) * 2.0 ** -24 * (np.abs(X_hat) @ np.abs(W_hat).T)
    assert_bound(np.abs(Y - X_hat @ W_hat.T), bound, name="|int8_matmul - X_hat W_hat^T|")
    exact = (Xq.astype(np.float64) @ Wq.astype(np.float64).T) * sx * sw.T          # the int32 sum is exact
    assert_bound(np.abs(Y - exact), 2.0 ** -22 * np.abs(exact))


def test_int8_matmul_bad_inputs():
    a = np.zeros((2, 3), np.int8)
    with pytest.raises(TypeError, match="Xq"):
        int8_matmul(a.astype(np.int16), 1.0, a, 1.0)
    with pytest.raises(ValueError, match="differ"):
        int8_matmul(a, 1.0, np.zeros((2, 4), np.int8), 1.0)
    with pytest.raises(ValueError, match="per-channel"):
        int8_weight(quantize_groups(np.ones((2, 8), np.float32), bits=4, group_size=-1, symmetric=True))


@pytest.mark.parametrize("mode", ["static", "dynamic", "outlier"])
def test_hook_simulation_equals_the_integer_path_on_real_layers(model, ids, absmax, mode):
    """The runtime hook's X_hat @ W_hat^T is the int8 GEMM with float32 rescale (+ float outlier columns)."""
    names = ["blk.2.attn_q", "blk.11.ffn_down"]
    X = model.capture_inputs(ids[:64], names)
    for n in names:
        q = Int8Activations(mode, s=absmax[n].max() / 127 if mode == "static" else None)
        w = quantize_groups(model.weights[n].dequantize(), bits=8, group_size=-1, symmetric=True)
        Wq, sw = int8_weight(w)
        W_hat = w.dequantize()
        Xq, sx, cols = q.quantize(X[n])
        Y = int8_matmul(Xq, sx, Wq, sw)
        if cols is not None:
            Y += X[n][:, cols] @ W_hat[:, cols].T
        X_hat = q(n, X[n])
        Y_sim = X_hat @ W_hat.T
        bound = (X_hat.shape[1] + 4) * 2.0 ** -23 * (np.abs(X_hat) @ np.abs(W_hat).T)
        assert_bound(np.abs(Y - Y_sim), bound, name=f"{n} {mode}")


def test_bad_int8_activation_arguments():
    for kw, match in [(dict(mode="int4"), "mode"), (dict(mode="static"), "scale"), (dict(mode="static", s=0.0), "scale"),
                      (dict(mode="static", s=np.inf), "scale"), (dict(mode="dynamic", s=1.0), "static"),
                      (dict(mode="outlier", threshold=0.0), "threshold")]:
        with pytest.raises(ValueError, match=match):
            Int8Activations(**kw)


# --- the quantized-activation model -------------------------------------------------------------------------


def test_act_quant_model_hooks_compose_and_runtime_is_unchanged(model, ids):
    q = Int8Activations("dynamic")
    m = ActQuantModel(model, {n: q for n in model.linear_names()})
    seen = {}
    m.logits(ids[:16], hooks={"blk.0.attn_k": lambda n, X: seen.setdefault(n, X.copy())})
    X = model.capture_inputs(ids[:16], ["blk.0.attn_k"])["blk.0.attn_k"]
    assert_equal(seen["blk.0.attn_k"], q.fake_quantize(X))      # a user hook sees the quantized input
    assert_equal(m.capture_inputs(ids[:16], ["blk.0.attn_k"])["blk.0.attn_k"], q.fake_quantize(X))
    assert m.config is model.config and m.nbytes == model.nbytes
    m2 = m.with_weights({"blk.0.attn_q": model.weights["blk.0.attn_q"]})
    assert isinstance(m2, ActQuantModel) and m2.act == m.act
    with pytest.raises(ValueError, match="unknown"):
        ActQuantModel(model, {"blk.99.attn_q": q})


def test_calibrate_shares_observers_between_linears_that_read_one_input(model, cal):
    obs = calibrate(model, cal[:, :32], lambda name: MinMaxObserver(axis=0), names=model.block_linear_names(0))
    assert obs["blk.0.attn_q"] is obs["blk.0.attn_k"] is obs["blk.0.attn_v"]
    assert obs["blk.0.ffn_gate"] is obs["blk.0.ffn_up"]
    assert len({id(o) for o in obs.values()}) == 4
    assert obs["blk.0.ffn_down"].lo.shape == (1, model.config.hidden_dim) and obs["blk.0.attn_q"].n == 32
    with pytest.raises(TypeError, match="calibration must be integer token ids"):
        calibrate(model, np.zeros((2, 4), np.float32), lambda name: MinMaxObserver())
    with pytest.raises(ValueError, match="calibration must be windows"):          # minq.calibration's one check
        calibrate(model, np.zeros(8, np.int64), lambda name: MinMaxObserver())


# --- SmoothQuant ---------------------------------------------------------------------------------------------


def test_smooth_scales_formula():
    a, W = np.array([4.0, 1.0, 0.0], np.float32), np.array([[1.0, -4.0, 2.0]], np.float32)
    assert_close(smooth_scales(a, [W], 0.5), np.sqrt([4.0, 0.25, 1e-5 / 2]), rtol=1e-6)
    assert_close(smooth_scales(a, [W], 1.0), [4.0, 1.0, 1e-5], rtol=1e-6)      # X max becomes 1
    assert_close(smooth_scales(a, [W], 0.0), [1.0, 0.25, 0.5], rtol=1e-6)      # 1 / max|W_j|
    assert_close(smooth_scales(a, [W, 3 * W], 0.0), [1 / 3, 1 / 12, 1 / 6], rtol=1e-6)   # shared max


def test_o_proj_scales_follow_the_kv_head_of_each_query_head(model):
    c = model.config
    kv = model.fold_targets()["o"].channel_map                # 9 query heads, 3 KV heads of 64
    assert kv.shape == (c.dim,) and kv.max() == c.n_kv_heads * c.head_dim - 1
    assert kv[0] == 0 and kv[3 * 64] == 64 and kv[3 * 64 - 1] == 63 and kv[8 * 64 + 5] == 2 * 64 + 5


@pytest.mark.parametrize("targets", [("qkv", "gate_up"), ("qkv", "gate_up", "down", "o")])
def test_smoothquant_leaves_the_float_model_unchanged(model, ids, absmax, targets):
    sm, scales = smooth(model, absmax, 0.5, targets)
    assert len(scales) == model.config.n_layers * len(targets)
    assert any(np.abs(np.log(s)).max() > 1 for s in scales.values())          # the scales are not ~1
    a, b = model.logits(ids[:64]), sm.logits(ids[:64])
    assert np.linalg.norm(b - a) / np.linalg.norm(a) < 1e-5
    assert np.abs(b - a).max() / np.abs(a).max() < 1e-5
    assert sm.norms["blk.0.attn_norm"] is not model.norms["blk.0.attn_norm"]


def test_smoothquant_static_scales_equal_observing_the_smoothed_model(model, cal):
    cal = cal[:, :64]
    qm = quantize_smoothquant(model, cal, alpha=0.5, progress=False)
    obs = calibrate(model, cal, lambda name: MinMaxObserver(axis=0))
    sm, _ = smooth(model, {n: o.absmax() for n, o in obs.items()}, 0.5)
    obs = calibrate(sm, cal, lambda name: MinMaxObserver(symmetric=True))
    for n in ["blk.0.attn_q", "blk.5.attn_output", "blk.11.ffn_up", "blk.28.ffn_down"]:
        assert_close(qm.act[n].s, obs[n].qparams().s.reshape(()), rtol=1e-5, name=n)


def test_smoothing_flattens_the_outlier_channels(model, absmax):
    s = smooth_scales(absmax["blk.11.ffn_down"], [model.weights["blk.11.ffn_down"].dequantize()], 0.5)
    before = absmax["blk.11.ffn_down"]
    after = before / s
    ratio = lambda a: a.max() / np.median(a)  # noqa: E731
    assert ratio(before) > 100 and ratio(after) < ratio(before) / 5


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), True])
def test_alpha_outside_0_1_is_rejected(model, absmax, bad):
    with pytest.raises(ValueError, match="alpha"):
        smooth_scales(np.ones(3), [np.ones((2, 3))], bad)
    with pytest.raises(ValueError, match="alpha"):
        smooth(model, absmax, bad)


def test_bad_smoothquant_arguments(model, cal, absmax):
    with pytest.raises(ValueError, match="alpha"):
        registry.get("smoothquant-w8a8-a1.5")
    with pytest.raises(ValueError, match="targets"):
        smooth(model, absmax, 0.5, ("qkv", "lm_head"))
    with pytest.raises(ValueError, match="mode"):
        quantize_smoothquant(model, cal, mode="outlier")
    with pytest.raises(ValueError, match="channels"):
        smooth_scales(np.ones(4), [np.ones((2, 3))])


# --- the registry ---------------------------------------------------------------------------------------------

CALIBRATED = ["w8a8", "w8a8-mse", "w8a8-p99.9", "smoothquant-w8a8", "smoothquant-w8a8-dynamic",
              "smoothquant-w8a8-norms-a0.8"]
DYNAMIC = ["w8a8-dynamic", "llmint8", "llmint8-t4"]


def test_scheme_names_and_calibration_flags():
    for name in CALIBRATED + DYNAMIC:
        s = registry.get(name)
        assert s.name == name and s.description and s.quantize_model is not None
        assert s.needs_calibration == (name in CALIBRATED)
    for bad in ["w8a8-p50", "w8a8-p101", "w8a8-static", "llmint8-t0", "smoothquant-w8a8-a2", "w4a2", "w2a8"]:
        with pytest.raises(ValueError, match="scheme|percentile|threshold|alpha"):
            registry.get(bad)


@pytest.mark.parametrize("name", ["w8a8", "smoothquant-w8a8"])
def test_calibrated_schemes_without_calibration_fail_clearly(model, name):
    with pytest.raises(ValueError, match="calibration"):
        registry.get(name).apply(model, None, progress=False)
    with pytest.raises(TypeError, match="calibration must be integer token ids"):
        registry.get(name).apply(model, np.ones((2, 8), np.float32), progress=False)


@pytest.fixture(scope="module")
def ref_ppl(model, ids):
    return minq.perplexity(model, ids, 256, progress=False)


# perplexity / float on these 256 tokens (one window, float 15.645), calibration cal[:, :128], measured:
# w8a8 2.29, w8a8-dynamic 1.065, w8a8-mse 1.548, smoothquant-w8a8 1.396, llmint8 1.047 (the full protocol
# of the chapter, 16 x 512 tokens: +129%, +4.0%, +40%, +32%, +2.7%). Bounds: the per-token schemes close to
# float (1.15, 8-10% above the measurement), the static ones within a factor about 30% above theirs; a
# quantizer that breaks the model lands far beyond (hundreds). 1 and 2 BLAS threads give the same values.
W8A8_PPL_RATIO_BOUND = {"w8a8": 3.0, "w8a8-dynamic": 1.15, "w8a8-mse": 2.0, "smoothquant-w8a8": 1.8, "llmint8": 1.15}


@pytest.fixture(scope="module")
def scheme_ppl():
    """{scheme: perplexity on ``ids``}, filled by the round-trip tests, shared with the ordering test."""
    return {}


def _scheme_ppl(scheme_ppl, model, cal, ids, name):
    if name not in scheme_ppl:
        q = minq.quantize(model, name, cal[:, :128], progress=False)
        scheme_ppl[name] = minq.perplexity(q, ids, 256, progress=False)
    return scheme_ppl[name]


@pytest.mark.parametrize("name", list(W8A8_PPL_RATIO_BOUND))
def test_every_scheme_round_trips_through_minq_quantize(model, cal, ids, ref_ppl, scheme_ppl, name):
    q = minq.quantize(model, name, cal[:, :128], progress=False)
    assert isinstance(q, ActQuantModel)
    assert 8 < 8 * q.nbytes / sum(w.shape[0] * w.shape[1] for w in q.weights.values()) < 8.1
    ppl = scheme_ppl[name] = minq.perplexity(q, ids, 256, progress=False)        # one window of 256 tokens
    assert np.isfinite(ppl) and ref_ppl * 0.9 < ppl < ref_ppl * W8A8_PPL_RATIO_BOUND[name], (ppl, ref_ppl)
    assert q.logits(ids[:8]).shape == (8, model.config.vocab_size)


def test_w8a8_orderings_the_chapter_claims(model, cal, ids, scheme_ppl):
    """Per-token scales beat one static scale, and so do SmoothQuant, the MSE observer and LLM.int8
    (measured above: 16.7, 21.8, 24.2, 16.4 vs static 35.8; each pair is 1.5x apart or more)."""
    ppl = {n: _scheme_ppl(scheme_ppl, model, cal, ids, n) for n in W8A8_PPL_RATIO_BOUND}
    for better in ("w8a8-dynamic", "smoothquant-w8a8", "w8a8-mse", "llmint8"):
        assert ppl[better] < ppl["w8a8"], (better, ppl)
    assert ppl["w8a8-dynamic"] < ppl["smoothquant-w8a8"], ppl        # per-token scales beat static SmoothQuant


# --- LlamaModel.with_norms --------------------------------------------------------------------------------


def test_with_norms_replaces_gammas_and_leaves_the_input_model_alone(model, ids):
    g = model.norms["blk.3.ffn_norm"]
    m2 = model.with_norms({"blk.3.ffn_norm": g * 2})
    assert_equal(m2.norms["blk.3.ffn_norm"], g * 2)
    assert model.norms["blk.3.ffn_norm"] is g and m2.norms["blk.0.attn_norm"] is model.norms["blk.0.attn_norm"]
    assert m2.weights == model.weights and all(m2._W[k] is W for k, W in model._W.items())   # shared
    assert not np.allclose(m2.logits(ids[:8]), model.logits(ids[:8]))
    assert_equal(model.with_norms({"blk.3.ffn_norm": g}).logits(ids[:8]), model.logits(ids[:8]))
    assert not m2.norms["blk.3.ffn_norm"].flags.writeable
    with pytest.raises(ValueError, match="unknown norm"):
        model.with_norms({"blk.3.mlp_norm": g})
    with pytest.raises(ValueError, match="blk.3.ffn_norm"):
        model.with_norms({"blk.3.ffn_norm": g[:5]})
    with pytest.raises(ValueError, match="finite"):
        model.with_norms({"output_norm": g * np.nan})


# --- W8A8 on the MiniLM encoder (the same hooks; padding rows unseen) ----------------------------------------

SENTENCES = ["The cat sat on the mat.", "Stock markets fell sharply on Monday after a long week of rumours.",
             "Quantization stores weights in fewer bits.", "To be, or not to be, that is the question.",
             "Rain is expected tomorrow afternoon."]


@pytest.fixture(scope="module")
def encoder():
    return minq.load_model("minilm", progress=False)


@pytest.fixture(scope="module")
def enc_cal(encoder):
    from minq.calibration import sentence_calibration

    return sentence_calibration(encoder, n_samples=16, seed=0)                       # [16, T] padded


def test_encoder_hooks_see_real_tokens_only_and_identity_hooks_change_nothing(encoder):
    ids, mask = encoder.tokenizer.batch(SENTENCES)                                   # padded: [5, T]
    names = ["layer.0.attention.query", "layer.0.attention.key", "layer.3.intermediate", "layer.5.output"]
    X = encoder.capture_inputs(ids, names, mask)
    assert X["layer.0.attention.query"] is X["layer.0.attention.key"]                # one array, shared
    assert X["layer.3.intermediate"].shape == (mask.sum(), 384) and X["layer.5.output"].shape == (mask.sum(), 1536)
    assert not X["layer.3.intermediate"].flags.writeable
    alone = encoder.capture_inputs(ids[1][mask[1]], ["layer.3.intermediate"])["layer.3.intermediate"]
    row0 = mask[0].sum()
    assert_close(X["layer.3.intermediate"][row0:row0 + len(alone)], alone, rtol=1e-4, atol=1e-5)
    same = encoder.forward(ids, mask, hooks={n: (lambda name, X: X.copy()) for n in encoder.linear_names()})
    assert_equal(same, encoder.forward(ids, mask))
    with pytest.raises(ValueError, match="unknown linears"):
        encoder.forward(ids, mask, hooks={"layer.9.output": lambda n, X: None})
    with pytest.raises(ValueError, match="returned shape"):
        encoder.forward(ids, mask, hooks={"layer.0.output": lambda n, X: X[:1]})


def test_encoder_dynamic_w8a8_is_per_token_so_batching_does_not_matter(encoder):
    """Per-token scales: a sentence's embedding is the same alone or in a padded batch (an oracle for
    the real-rows plumbing: quantizing padding rows, or mixing rows, would break it)."""
    q = minq.quantize(encoder, "w8a8-dynamic", progress=False)
    assert isinstance(q, ActQuantModel)
    batch = q.embed(SENTENCES)
    alone = np.concatenate([q.embed([s]) for s in SENTENCES])
    assert_close(batch, alone, rtol=1e-4, atol=1e-5)
    assert not np.allclose(batch, encoder.embed(SENTENCES), atol=1e-4)             # it is quantized


@pytest.mark.parametrize("name", ["w8a8", "w8a8-dynamic", "llmint8", "w8a8-mse"])
def test_w8a8_schemes_run_on_minilm(encoder, enc_cal, name):
    from minq.eval import embedding_fidelity

    q = minq.quantize(encoder, name, enc_cal, progress=False)
    assert isinstance(q, ActQuantModel) and set(q.act) == set(encoder.linear_names())
    f = embedding_fidelity(encoder, q, SENTENCES)
    assert 0.9 < f["cosine_min"] < 1.0                       # close to, but not, the float embeddings
    ids, mask = encoder.tokenizer.batch(SENTENCES[:2])
    X = q.capture_inputs(ids, ["layer.2.output"], mask)["layer.2.output"]
    if name != "llmint8":                                    # every input on its int8 grid
        sx = q.act["layer.2.output"].scales(X)[0]
        assert_close(np.rint(X / sx) * sx, X, rtol=1e-6, atol=0)


def test_minilm_default_calibration_is_sentences(encoder):
    from minq.api import calibration_ids
    from minq.calibration import sentence_calibration

    ids = calibration_ids(encoder)
    assert_equal(ids, sentence_calibration(encoder, n_samples=128, seed=0))
    q = minq.quantize(encoder, "w8a8-dynamic", progress=False)                      # no calibration given
    assert isinstance(q, ActQuantModel)


def test_minilm_bad_calibration_and_smoothquant_rejected(encoder):
    with pytest.raises(ValueError, match="calibration"):
        registry.get("w8a8").apply(encoder, None, progress=False)
    with pytest.raises(TypeError, match="SmoothQuant"):
        quantize_smoothquant(encoder, np.ones((2, 8), np.int64))
    with pytest.raises(AttributeError, match="forward"):            # a decoder has logits / run_block
        ActQuantModel(minq.load_model("smollm2", progress=False), {}).forward(np.ones((1, 4), np.int64))
    from minq.calibration import sentence_calibration

    with pytest.raises(ValueError, match="n_samples"):
        sentence_calibration(encoder, n_samples=0)


def test_default_report_schemes_include_chapter_04():
    names = registry.default_schemes()
    fams = {f.name: f for f in registry.families()}
    for fam in ("rtn-mse", "rtn-ragged", "w8a8", "llmint8", "smoothquant"):
        for n in fams[fam].defaults:
            assert n in names and registry.family_of(n) == fam
    assert {"rtn-w4g128-ragged", "w8a8", "w8a8-dynamic", "smoothquant-w8a8", "llmint8"} <= set(names)
