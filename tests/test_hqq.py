"""minq.hqq: HQQ's half-quadratic zero-point search. Oracles: HQQ 0.2.8's own codes, scales and zero points
(data/hqq/golden.npz, scripts/make_hqq_golden.py), a hand-worked example, the loop written out here from
the formulas, and minq's RTN for the iters=0 start."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import minq
from minq import hqq, registry
from minq._jit import py_func
from minq.groups import GroupedAffine, quantize_groups

F32 = np.float32
GOLDEN = Path(__file__).resolve().parents[1] / "data" / "hqq" / "golden.npz"
DISTS = ("normal", "student3", "cauchy", "uniform", "lognormal", "outliers", "shifted")


def make_W(seed, dist, rows, n_in, scale):
    r = np.random.default_rng(seed)
    shape = (rows, n_in)
    W = {"normal": lambda: r.standard_normal(shape), "student3": lambda: r.standard_t(3, shape),
         "cauchy": lambda: r.standard_cauchy(shape), "uniform": lambda: r.uniform(-1, 1, shape),
         "lognormal": lambda: r.lognormal(0, 1, shape) * r.choice([-1, 1], shape),
         "outliers": lambda: r.standard_normal(shape) * np.where(r.random(shape) < 0.01, 50, 1),
         "shifted": lambda: r.standard_normal(shape) + 4}[dist]()
    return (scale * W).astype(F32)


@st.composite
def matrices(draw, max_rows=12, widths=(64, 128, 192), dists=DISTS):
    return make_W(draw(st.integers(0, 2**32 - 1)), draw(st.sampled_from(dists)), draw(st.integers(1, max_rows)),
                  draw(st.sampled_from(widths)), draw(st.sampled_from((1e-3, 0.02, 1.0, 30.0))))


bits_st = st.integers(1, 8)
groups_st = st.sampled_from((-1, 8, 32, 64))


def error(W, q, s_inv, z, g):
    """mean |W - Wr| with float32 s_inv, z: HQQ's measure, written out here."""
    out, n_in = W.shape
    Wr = (q.reshape(out, -1, g).astype(F32) - z[..., None]) / s_inv[..., None]
    return float(np.abs(W.reshape(out, -1, g) - Wr).astype(np.float64).mean())


# --- the algorithm --------------------------------------------------------------------------------------


def test_hand_worked_example():
    """W = [0, .25, .5, 1.5], 2 bits: s_inv = 3 / 1.5 = 2, z = 0, codes [0, 0, 1, 3] (0.5 ties to 0), Wr =
    [0, 0, .5, 1.5], error 0.25 / 4. Step 1: We = shrink(.25) = .25 - .25^-0.3 / 10 = .0984, z = -2 * .1516
    / 4 = -.0758; its error .0814 is worse: HQQ stops and returns the z computed from it, -.0986 (error .0871)."""
    W = np.array([[0, 0.25, 0.5, 1.5]], F32)
    q, s_inv, z, errors = hqq.solve(W, 2, 4)
    assert q.tolist() == [[0, 0, 1, 3]] and s_inv.tolist() == [[2.0]] and z.tolist() == [[0.0]]
    np.testing.assert_allclose(errors, [0.0625, 0.08144646, 0.08714076], rtol=1e-6)
    ql, _, zl, errors_l = hqq.solve(W, 2, 4, keep="last")
    assert errors_l == errors and ql.tolist() == [[0, 0, 1, 3]]
    np.testing.assert_allclose(zl, [[-0.09856302]], rtol=1e-6)                 # HQQ's answer: worse than its start


def reference_loop(W, bits, g, iters, p, beta, kappa, round_zero):
    """HQQ's loop from the formulas, float32 like HQQ, sums in float64: the z of every step and each error."""
    qmax = 2**bits - 1
    Wg = W.reshape(W.shape[0], -1, g)
    lo, hi = Wg.min(-1, keepdims=True), Wg.max(-1, keepdims=True)
    with np.errstate(divide="ignore"):
        s_inv = np.minimum(np.where(hi - lo <= F32(1e-4), F32(1), (F32(1) / (hi - lo)) * F32(qmax)), F32(2e4))
    z = -lo * s_inv
    z = np.rint(z) if round_zero else z
    zs, errors = [z], []
    for _ in range(iters):
        Wq = np.clip(np.rint(Wg * s_inv + z), 0, qmax)
        E = Wg - (Wq - z) / s_inv
        errors.append(float(np.abs(E).astype(np.float64).mean()))
        with np.errstate(divide="ignore"):
            t = (np.abs(E).astype(np.float64) ** (p - 1)).astype(F32) * F32(1 / beta)
        We = np.sign(E) * np.maximum(np.abs(E) - t, F32(0))
        z = ((Wq - (Wg - We) * s_inv).astype(np.float64).mean(-1, keepdims=True)).astype(F32)
        zs.append(z)                                    # also after the error that stops the loop (HQQ's answer)
        if len(errors) > 1 and not errors[-1] < min(errors[:-1]):
            break
        beta *= kappa
    return s_inv[..., 0], [z[..., 0] for z in zs], errors


@given(matrices(), bits_st, groups_st, st.sampled_from((1.0, 1.05)), st.booleans())
def test_solve_is_the_loop_of_the_formulas(W, bits, group, kappa, round_zero):
    g = W.shape[1] if group == -1 else group
    s_inv, zs, errors = reference_loop(W, bits, g, 20, 0.7, 10.0, kappa, round_zero)
    for kernel in (False, True):
        _, s, z, got = hqq.solve(W, bits, group, kappa=kappa, round_zero=round_zero, keep="last", kernel=kernel)
        assert np.array_equal(s, s_inv) and got[:-1] == errors and np.array_equal(z, zs[-1])


def test_beta_is_fixed_by_default_as_in_hqqs_legacy_solver():
    W = make_W(3, "student3", 16, 128, 0.02)
    assert hqq.solve(W)[3] == hqq.solve(W, kappa=1.0)[3] != hqq.solve(W, kappa=1.3)[3]


@given(matrices(), bits_st, groups_st, st.booleans())
def test_iters0_is_hqqs_min_max_start(W, bits, group, round_zero):
    """iters=0 is HQQ's ``optimize=False``: codes round(W s_inv + z) of the min-max start, nothing else."""
    g = W.shape[1] if group == -1 else group
    s_inv, (z,), _ = reference_loop(W, bits, g, 0, 0.7, 10.0, 1.0, round_zero)
    q, s, zz, errors = hqq.solve(W, bits, group, iters=0, round_zero=round_zero)
    Wq = np.clip(np.rint(W.reshape(W.shape[0], -1, g) * s_inv[..., None] + z[..., None]), 0, 2**bits - 1)
    assert np.array_equal(s, s_inv) and np.array_equal(zz, z) and np.array_equal(q, Wq.reshape(W.shape))
    assert len(errors) == 1 and errors[0] == error(W, q, s, zz, g)


@given(matrices(dists=("normal", "student3", "uniform", "outliers", "shifted")), bits_st, groups_st)
def test_iters0_equals_minqs_rtn_except_at_ties(W, bits, group):
    """With iters=0, round_zero=False, codes equal ``quantize_groups(W, zero_point="float",
    scale_dtype="float32")``'s in every group of range > max(1e-4, qmax / 2e4) (below, HQQ's start sets
    s_inv = 1 or clamps it), except where the exact position t = (W - min) qmax / (max - min) lies within
    float32 rounding (2^-19 (1 + (|W| + |min|) qmax / range)) of a rounding tie; there by at most 1.
    (The same grid, computed as W s_inv + z by HQQ and as W / s + z by minq; the stored scales differ:
    HQQ rounds 1 / s_inv to float16, minq's RTN rounds its s up.)"""
    g, qmax = (W.shape[1] if group == -1 else group), 2**bits - 1
    q = hqq.solve(W, bits, group, iters=0, round_zero=False)[0].astype(int)
    rtn = quantize_groups(W, bits=bits, group_size=group, zero_point="float", scale_dtype="float32").codes
    Wg = W.reshape(W.shape[0], -1, g).astype(np.float64)
    lo, r = Wg.min(-1, keepdims=True), np.ptp(Wg, -1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (Wg - lo) * qmax / r
        tie = np.abs(t - np.floor(t) - 0.5) < 2.0**-19 * (1 + (np.abs(Wg) + np.abs(lo)) * qmax / r)
    plain = np.broadcast_to(r > max(1e-4, qmax / 2e4), Wg.shape).reshape(W.shape)
    diff = np.abs(q - rtn)[plain]
    assert (diff <= tie.reshape(W.shape)[plain]).all()


@given(matrices(), bits_st, groups_st, st.sampled_from((0.5, 0.7, 1.0)), st.sampled_from((0.5, 10.0, 1e3)))
def test_never_worse_than_the_start_and_the_trace_stops_at_the_first_non_improvement(W, bits, group, p, beta):
    g = W.shape[1] if group == -1 else group
    iters = 20
    q, s_inv, z, errors = hqq.solve(W, bits, group, p=p, beta=beta)
    loop = errors[:-1]
    assert 1 <= len(loop) <= iters
    assert all(b < a for a, b in zip(loop[:-2], loop[1:-1]))           # accepted: strictly decreasing
    if len(loop) < iters:
        assert len(loop) >= 2 and loop[-1] >= loop[-2]                  # stopped at a non-improvement
    else:
        assert len(loop) < 2 or loop[-1] < loop[-2]
    e = error(W, q, s_inv, z, g)
    assert e == min(errors) and e <= errors[0]                         # keep="best": the lowest measured
    ql, sl, zl, errors_l = hqq.solve(W, bits, group, p=p, beta=beta, keep="last")
    assert errors_l == errors and np.array_equal(sl, s_inv) and error(W, ql, sl, zl, g) == errors[-1]


def test_keep_last_is_hqqs_answer_and_can_be_worse():
    d = np.load(GOLDEN)
    W = d["W_normal"]
    qb, s, zb, errors = hqq.solve(W, 4, -1)
    ql, _, zl, _ = hqq.solve(W, 4, -1, keep="last")
    assert errors[-1] > min(errors) and (qb != ql).sum() > 0
    assert error(W, ql, s, zl, 128) == errors[-1] > error(W, qb, s, zb, 128) == min(errors)
    assert np.array_equal(ql, d["normal_w4g0.q"])


# --- HQQ's own numbers ----------------------------------------------------------------------------------


def golden_cases():
    meta = json.loads(str(np.load(GOLDEN)["meta"]))
    return [(name, bits, group) for name in meta["sets"] for bits, group in meta["cases"]]


# A code at a rounding tie in step 13 goes the other way in HQQ (its float32 power and sums round
# differently), and the two z trajectories of that one group part by up to 0.01, to land on the same codes.
SPLIT = {("student1", 4, 64): 1}


@pytest.mark.parametrize("name, bits, group", golden_cases())
@pytest.mark.parametrize("kernel", [True, False])
def test_reproduces_hqq(name, bits, group, kernel):
    """HQQ 0.2.8 (``Quantizer.quantize``, its default ``optimize_weights_proximal_legacy``, CPU float32,
    round_zero for 4 bits): the same codes (all 2048 of a case), the same float32 scale 1 / s_inv bit for
    bit, zero points within 4 float32 ulps (of the case's largest |z|) in every group but the one of
    ``SPLIT``, which is within 0.02 (HQQ's float32 power and sums against minq's float64 ones)."""
    d = np.load(GOLDEN)
    W, case = d[f"W_{name}"], f"{name}_w{bits}g{group}"
    q, s_inv, z, _ = hqq.solve(W, bits, group or -1, keep="last", kernel=kernel)
    assert np.array_equal(q, d[f"{case}.q"])
    assert np.array_equal(F32(1) / s_inv, d[f"{case}.scale"])
    dz = np.abs(z - d[f"{case}.zero"])
    assert (dz > 4 * np.spacing(np.abs(d[f"{case}.zero"]).max())).sum() == SPLIT.get((name, bits, group), 0)
    assert dz.max() < 0.02
    c = hqq.quantize(W, bits, group or -1, keep="last", kernel=kernel)    # HQQ's meta as its float16 casts
    assert np.array_equal(c.s, d[f"{case}.scale"].astype(np.float16))


# --- kernel, torch, the pure-Python kernel ---------------------------------------------------------------


finite = st.floats(-1e4, 1e4, width=32)


@given(st.one_of(matrices(), hnp.arrays(F32, st.tuples(st.integers(1, 6), st.sampled_from((8, 16, 64))),
                                        elements=finite)),
       bits_st, st.sampled_from((-1, 8, None)), st.sampled_from((0.3, 0.7, 1.0)), st.sampled_from((0.1, 10.0)))
def test_kernel_equals_reference(W, bits, group, p, beta):
    """kernel=True == kernel=False: the same codes, z within 4 float32 ulps, errors within 1e-6 relative
    (the two do the same float32 operations; only float64 sums are ordered differently)."""
    a = hqq.solve(W, bits, group, p=p, beta=beta, kernel=True)
    b = hqq.solve(W, bits, group, p=p, beta=beta, kernel=False)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    np.testing.assert_allclose(a[2], b[2], rtol=0, atol=4 * np.spacing(np.abs(b[2]).max() + F32(1)))
    assert len(a[3]) == len(b[3]) and np.allclose(a[3], b[3], rtol=1e-6, atol=0)


def test_pure_python_kernel_equals_the_jitted_one():
    W = make_W(5, "outliers", 4, 64, 1.0)
    q, s_inv, z, _ = hqq.solve(W, 3, 16, iters=0, round_zero=False)
    outs = []
    for f in (hqq._step_kernel, py_func(hqq._step_kernel)):
        zz, qq, err = z.copy(), np.empty_like(q), np.empty(4)
        f(W, s_inv, zz, F32(0.5), -0.3, hqq._a_skip(F32(0.5), 0.7), F32(7), True, qq, err)
        outs.append((zz, qq, err))
    assert all(np.array_equal(u, v) for u, v in zip(*outs))


@given(matrices(max_rows=6, widths=(64, 128)), bits_st, groups_st)
def test_torch_equals_numpy(W, bits, group):
    """A torch tensor runs the reference on torch: the same codes, s_inv, z within 4 ulps, errors 1e-6."""
    a = hqq.solve(torch.from_numpy(W), bits, group)
    b = hqq.solve(W, bits, group)
    assert a[0].dtype == torch.uint8 and a[2].dtype == torch.float32
    assert np.array_equal(a[0].numpy(), b[0]) and np.array_equal(a[1].numpy(), b[1])
    np.testing.assert_allclose(a[2].numpy(), b[2], rtol=0, atol=4 * np.spacing(np.abs(b[2]).max() + F32(1)))
    assert len(a[3]) == len(b[3]) and np.allclose(a[3], b[3], rtol=1e-6, atol=0)


def test_torch_on_every_device(device):
    W = make_W(7, "student3", 32, 128, 0.02)
    c, ct = hqq.quantize(W), hqq.quantize(torch.from_numpy(W).to(device))
    assert ct.s.device.type == device and ct.s.dtype == torch.float16
    assert np.array_equal(ct.codes.cpu().numpy(), c.codes)
    assert np.array_equal(ct.s.cpu().numpy(), c.s) and np.array_equal(ct.z.cpu().numpy(), c.z)
    assert np.array_equal(ct.dequantize().cpu().numpy(), c.dequantize())


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_other_float_dtypes_round_to_float32_first(dtype):
    W = make_W(2, "normal", 4, 64, 1.0).astype(dtype)
    a, b = hqq.solve(W, 3, 32), hqq.solve(W.astype(F32), 3, 32)
    assert all(np.array_equal(u, v) for u, v in zip(a[:3], b[:3])) and a[3] == b[3]


# --- the container and the scheme ------------------------------------------------------------------------


@given(matrices(dists=("normal", "student3", "uniform", "outliers")), bits_st, st.sampled_from((-1, 32, 64, None)))
def test_container_round_trip(W, bits, group):
    """Codes from float32 s_inv, z (as HQQ); stored s = float16(1 / s_inv) and z = float16(z) (HQQ's meta
    dtype); dequantize() = s (q - z) in float32; bits + 32 / g bits a weight."""
    c = hqq.quantize(W, bits, group)
    q, s_inv, z, _ = hqq.solve(W, bits, group)
    assert isinstance(c, GroupedAffine) and c.zero_point == "float" and c.shape == W.shape
    assert c.s.dtype == np.float16 and c.z.dtype == np.float16
    assert np.array_equal(c.codes, q) and np.array_equal(c.s, (F32(1) / s_inv).astype(np.float16))
    assert np.array_equal(c.z, z.astype(np.float16))
    W_hat = c.dequantize()
    assert W_hat.dtype == np.float32 and W_hat.shape == W.shape
    s, zz = (np.broadcast_to(np.repeat(x.astype(F32), W.shape[1] // x.shape[1], axis=1), W.shape) for x in (c.s, c.z))
    assert np.array_equal(W_hat, s * (q.astype(F32) - zz))
    g = W.size if group is None else W.shape[1] if group == -1 else group
    assert c.bits_per_weight == pytest.approx(bits + 32 / g, rel=1e-12)       # rows of whole packing chunks
    assert c.nbytes == c.packed.nbytes + 4 * c.s.size


def test_bits_per_weight_counts_two_float16_a_group():
    W = make_W(0, "normal", 16, 128, 0.02)
    assert hqq.quantize(W).bits_per_weight == 4 + 32 / 64 == 4.5
    assert hqq.quantize(W, 3, 64).bits_per_weight == 3.5 and hqq.quantize(W, 2, -1).bits_per_weight == 2.25


def test_group_far_from_zero_overflows_float16():
    W = np.full((2, 64), 1000, F32) + np.linspace(0, 0.01, 64, dtype=F32)        # z = -1000 * 1500
    assert np.isfinite(hqq.solve(W)[2]).all()
    with pytest.raises(ValueError, match=r"\bW\b.*float16"):
        hqq.quantize(W)


def test_scheme_through_the_registry():
    W = make_W(1, "student3", 32, 128, 0.02)
    for name, bits, group in (("hqq-w4g64", 4, 64), ("hqq-w3g64", 3, 64), ("hqq-w2", 2, -1)):
        w = registry.get(name).quantize_weight(W)
        ref = hqq.quantize(W, bits, group)
        assert isinstance(w, GroupedAffine) and np.array_equal(w.codes, ref.codes) and np.array_equal(w.z, ref.z)
        assert registry.family_of(name) == "hqq"
    fam = next(f for f in registry.families() if f.name == "hqq")
    assert fam.defaults == ("hqq-w4g64", "hqq-w3g64", "hqq-w2g64") and fam.quick == ()
    for bad in ("hqq-w9g64", "hqq-w4g0", "hqq-w0"):
        with pytest.raises(ValueError, match="bits|group"):
            registry.get(bad)


def test_tiny_model():
    from minq.models.tiny import TinyConfig, TinyLlama, to_numpy_llama

    torch.manual_seed(0)
    model = to_numpy_llama(TinyLlama(TinyConfig(vocab_size=64, dim=64, n_layers=1, n_heads=2, n_kv_heads=1,
                                                hidden_dim=128)))
    q = minq.quantize(model, "hqq-w4g64", progress=False)
    for n in q.linear_names():
        W = model.weights[n].dequantize()
        assert isinstance(q.weights[n], GroupedAffine) and q.weights[n].bits_per_weight == 4.5
        assert np.abs(q.weights[n].dequantize() - W).mean() < 0.1 * np.abs(W).mean()
    assert np.isfinite(q.logits(np.arange(16)[None])).all()


# --- bad input: a clear error naming the parameter, before any work ---------------------------------------

X = make_W(0, "normal", 4, 64, 1.0)
NAN, INF = X.copy(), X.copy()
NAN[0, 0], INF[1, 1] = np.nan, np.inf


@pytest.mark.parametrize("fn", [hqq.solve, hqq.quantize])
@pytest.mark.parametrize("args, kw, err, match", [
    ((NAN,), {}, ValueError, r"\bW\b.*NaN"),
    ((INF,), {}, ValueError, r"\bW\b.*Inf"),
    ((np.zeros((0, 64), F32),), {}, ValueError, r"\bW\b.*empty"),
    ((X[0],), {}, ValueError, r"\bW\b must be 2-D"),
    ((X[None],), {}, ValueError, r"\bW\b must be 2-D"),
    ((X.astype(np.int32),), {}, TypeError, r"\bW\b"),
    ((X.tolist(),), {}, TypeError, r"\bW\b"),
    ((np.full((2, 64), 1e39),), {}, ValueError, r"\bW\b.*float32"),
    ((X, 0), {}, ValueError, "bits"),
    ((X, 9), {}, ValueError, "bits"),
    ((X, 4.0), {}, TypeError, "bits"),
    ((X, 4, 24), {}, ValueError, "group_size"),
    ((X, 4, -2), {}, ValueError, "group_size"),
    ((X, 4, 1.5), {}, ValueError, "group_size"),
    ((X,), {"iters": -1}, ValueError, "iters"),
    ((X,), {"iters": 2.0}, TypeError, "iters"),
    ((X,), {"p": 0.0}, ValueError, r"\bp\b"),
    ((X,), {"p": 1.5}, ValueError, r"\bp\b"),
    ((X,), {"p": float("nan")}, ValueError, r"\bp\b"),
    ((X,), {"p": "0.7"}, TypeError, r"\bp\b"),
    ((X,), {"beta": 0.0}, ValueError, "beta"),
    ((X,), {"beta": float("inf")}, ValueError, "beta"),
    ((X,), {"kappa": 0.99}, ValueError, "kappa"),
    ((X,), {"keep": "median"}, ValueError, "keep"),
    ((X,), {"round_zero": 1}, TypeError, "round_zero"),
    ((X,), {"kernel": "yes"}, TypeError, "kernel"),
])
def test_bad_input_is_rejected(fn, args, kw, err, match):
    with pytest.raises(err, match=match):
        fn(*args, **kw)
