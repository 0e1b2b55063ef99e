"""Calibration observers (min-max, percentile, MSE search) and RTN with an observer (``rtn-...-mse``)."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minq import affine, observers, registry
from minq.groups import quantize_groups
from minq.observers import (
    MinMaxObserver,
    MSEObserver,
    PercentileObserver,
    clip_error,
    make_observer,
    mse_search,
    mse_search_reference,
)
from minq.ptq import quantize_weight_observed
from minq.testing import assert_equal, float_arrays, weight_matrices


def _sq_error(x, qp):
    d = affine.fake_quantize(x, qp).astype(np.float64) - x
    return float(np.sum(d * d))


def _rows(draw_arr):
    return draw_arr if draw_arr.ndim == 2 else draw_arr[None]


@given(float_arrays(max_abs=1e3), st.integers(2, 8), st.booleans())
def test_mse_observer_range_is_the_grid_argmin(x, bits, sym):
    """The MSE range is the argmin of the squared error over the grid ``r * [min, max]``, ``r = 1 - i / 100``,
    ``i < 80``, searched here by brute force with chapter 02's ``choose_qparams`` / ``fake_quantize``.
    "Never worse than min-max" (checked too) holds by construction: ``r = 1`` is a candidate."""
    x = _rows(x)
    kw = dict(bits=bits, symmetric=sym, axis=1)
    mm = MinMaxObserver(**kw).update(x)
    mse = MSEObserver(**kw).update(x)
    qm, qs = mm.qparams(), mse.qparams()
    for r in range(x.shape[0]):              # per channel: every row on its own
        e_mm = _sq_error(x[r], affine.QParams(qm.s[r], qm.z[r], bits, sym))
        e_mse = _sq_error(x[r], affine.QParams(qs.s[r], qs.z[r], bits, sym))
        assert e_mse <= e_mm * (1 + 1e-12) + 1e-30
        lo, hi = x[r].min(), x[r].max()
        grid = [_sq_error(x[r], affine.choose_qparams(np.array([np.float32(1 - i / 100) * lo,
                                                                 np.float32(1 - i / 100) * hi]),
                                                       bits=bits, symmetric=sym)) for i in range(80)]
        # equal up to the order of the float64 sums (the search sums left to right)
        assert abs(e_mse - min(grid)) <= 1e-12 * min(grid) + 1e-30, (r, e_mse, min(grid), int(np.argmin(grid)))


@given(weight_matrices(), st.sampled_from([2, 3, 4]), st.booleans())
def test_rtn_mse_weight_error_never_worse_than_rtn_per_group(Wg, bits, sym):
    W, g = Wg
    ref = quantize_groups(W, bits=bits, group_size=g, symmetric=sym)
    got = quantize_weight_observed(W, bits=bits, group_size=g, symmetric=sym, observer="mse")
    err = lambda c: ((c.dequantize().astype(np.float64) - W) ** 2).reshape(W.shape[0], -1, g).sum(-1)  # noqa: E731
    assert (err(got) <= err(ref) * (1 + 1e-12) + 1e-30).all()
    assert got.bits_per_weight == ref.bits_per_weight


@given(weight_matrices(), st.integers(1, 8), st.booleans(), st.sampled_from([None, -1, "g"]))
def test_minmax_observer_reproduces_quantize_groups(Wg, bits, sym, gran):
    W, g = Wg
    if sym and bits < 2:
        bits = 2
    group = g if gran == "g" else gran
    ref = quantize_groups(W, bits=bits, group_size=group, symmetric=sym)
    got = quantize_weight_observed(W, bits=bits, group_size=group, symmetric=sym, observer="minmax")
    assert_equal(got.codes, ref.codes)
    assert_equal(got.s, ref.s)
    assert_equal(got.dequantize(), ref.dequantize())


@given(float_arrays(max_abs=1e3, dims=(2, 2)), st.integers(2, 8))
def test_minmax_qparams_equal_choose_qparams(x, bits):
    for sym in (True, False):
        for axis in (None, 0, 1):
            got = MinMaxObserver(bits=bits, symmetric=sym, axis=axis).update(x).qparams()
            want = affine.choose_qparams(x, bits=bits, symmetric=sym, axis=axis)
            assert_equal(got.s, want.s)
            assert_equal(got.z, want.z)


@given(float_arrays(max_abs=1e3), st.floats(50.01, 100), st.booleans())
def test_percentile_range_stays_inside_minmax(x, p, sym):
    o = PercentileObserver(p, symmetric=sym).update(x)
    lo, hi = o.range()
    assert lo <= hi
    if sym:
        assert 0 <= hi <= np.abs(x).max()
    else:
        assert x.min() <= lo and hi <= x.max()


def test_percentile_100_is_minmax_and_lower_percentiles_clip(rng):
    x = rng.standard_normal(10_000).astype(np.float32)
    x[7] = 50
    full = PercentileObserver(100, symmetric=False).update(x).range()
    assert_equal(np.array(full), np.array(MinMaxObserver(symmetric=False).update(x).range()))
    lo, hi = PercentileObserver(99.9, symmetric=False).update(x).range()
    assert hi < 5 and lo > -5                                  # the outlier is clipped away


def test_running_statistics_over_batches_equal_one_batch(rng):
    X = rng.standard_normal((300, 16)).astype(np.float32) * rng.uniform(0.1, 10, 16).astype(np.float32)
    for kind, kw in [("minmax", {}), ("percentile", {"percentile": 99.0})]:
        one = make_observer(kind, axis=0, symmetric=False, **kw).update(X)
        many = make_observer(kind, axis=0, symmetric=False, **kw)
        for a in range(0, 300, 70):
            many.update(X[a:a + 70])
        assert_equal(np.array(many.range()), np.array(one.range()))
        assert many.n == one.n == 300


def test_sample_is_capped_uniform_and_from_the_data(rng):
    o = MSEObserver(max_samples=1000, axis=0)
    X = rng.standard_normal((5000, 3)).astype(np.float32)
    for a in range(0, 5000, 1000):
        o.update(X[a:a + 1000])
    S = o.sample()                                             # [3 channels, 1000]
    assert S.shape == (3, 1000)
    rows = {tuple(r) for r in X}
    assert all(tuple(c) in rows for c in S.T)                  # whole token rows, kept together
    assert abs(float(S.mean())) < 0.1 and 0.9 < float(S.std()) < 1.1
    assert o.lo.shape == (1, 3) and o.n == 5000


def test_mse_search_prefers_clipping_with_an_outlier(rng):
    x = rng.standard_normal(4096).astype(np.float32)
    x[0] = 40
    o = MSEObserver(bits=4, symmetric=True).update(x)
    lo, hi = o.range()
    assert hi < 0.9 * 40                                       # clipped
    e = lambda lo, hi: float(clip_error(x[None], np.reshape(lo, (1, 1)), np.reshape(hi, (1, 1)), o)[0, 0])  # noqa: E731
    assert e(lo, hi) < e(-40, 40)
    assert o.ratios()[0] == 1 and len(o.ratios()) == 80


@pytest.mark.parametrize("make, match", [
    (lambda: PercentileObserver(50), "percentile"),
    (lambda: PercentileObserver(100.5), "percentile"),
    (lambda: PercentileObserver(float("nan")), "percentile"),
    (lambda: PercentileObserver(True), "percentile"),
    (lambda: MSEObserver(grid=0), "grid"),
    (lambda: MSEObserver(max_shrink=1.0), "max_shrink"),
    (lambda: MinMaxObserver(bits=9), "bits"),
    (lambda: MinMaxObserver(bits=1, symmetric=True), "bits"),
    (lambda: MinMaxObserver(max_samples=0), "max_samples"),
    (lambda: make_observer("histogram"), "kind"),
])
def test_bad_observer_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_observer_data():
    o = MinMaxObserver(axis=0)
    with pytest.raises(ValueError, match="no data"):
        o.qparams()
    with pytest.raises(ValueError, match="NaN"):
        o.update(np.array([[1.0, np.nan]], np.float32))
    with pytest.raises(TypeError, match="x"):
        o.update(np.array([[1, 2]]))
    o.update(np.ones((4, 3), np.float32))
    with pytest.raises(ValueError, match="channels"):
        o.update(np.ones((4, 5), np.float32))
    with pytest.raises(ValueError, match="sample"):
        o.sample()


def test_rtn_mse_schemes_are_registered(rng):
    W = rng.standard_normal((8, 128)).astype(np.float32)
    s = registry.get("rtn-w4g64-mse")
    assert "MSE" in s.description and not s.needs_calibration
    Wq = s.quantize_weight(W)
    assert Wq.bits == 4 and Wq.g == 64 and not Wq.symmetric
    assert registry.get("rtn-w3-sym-mse").quantize_weight(W).symmetric
    for bad in ("rtn-w9-mse", "rtn-w4g0-mse", "rtn-w1-sym-mse"):
        with pytest.raises(ValueError, match="scheme"):
            registry.get(bad)


# --- the Numba MSE search equals the NumPy reference ------------------------------------------------------


@given(float_arrays(max_abs=1e3, dims=(2, 2)), st.integers(2, 8), st.sampled_from(["sym", "int", "float"]),
       st.sampled_from(["float16", "float32"]), st.integers(1, 100))
def test_numba_mse_search_equals_the_numpy_reference(x, bits, grid_kind, scale_dtype, grid):
    """Same ranges, same errors, bit for bit: the kernel repeats fake_quantize's float32 operations and
    clip_error's left-to-right float64 sum."""
    kw = dict(bits=bits, symmetric=grid_kind == "sym", zero_point="int" if grid_kind == "sym" else grid_kind,
              scale_dtype=scale_dtype, axis=1, grid=grid)
    if scale_dtype == "float16" and np.abs(x).max() > 1e3:
        return
    obs = MSEObserver(**kw).update(x)
    lo, hi = obs.lo.reshape(-1, 1), obs.hi.reshape(-1, 1)
    r_ref, e_ref = mse_search_reference(obs.sample(), lo, hi, obs)
    r_fast, e_fast = mse_search(obs.sample(), lo, hi, obs)
    assert_equal(r_fast, r_ref)
    assert_equal(e_fast, e_ref)
    assert_equal(np.array(obs.range()), np.array([(r_ref * lo).reshape(obs.lo.shape), (r_ref * hi).reshape(obs.lo.shape)]))
    assert_equal(obs.qparams().s, _with_reference_search(lambda: MSEObserver(**kw).update(x).qparams().s))


def _with_reference_search(fn):
    """``fn()`` with the observers' MSE search swapped for the readable ``mse_search_reference``."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(observers, "mse_search", mse_search_reference)
        return fn()


@given(weight_matrices(), st.sampled_from([2, 3, 4, 8]), st.booleans())
def test_rtn_mse_weights_equal_with_either_search(Wg, bits, sym):
    W, g = Wg
    kw = dict(bits=bits, group_size=g, symmetric=sym, observer="mse")
    a = _with_reference_search(lambda: quantize_weight_observed(W, **kw))
    b = quantize_weight_observed(W, **kw)
    assert_equal(b.codes, a.codes)
    assert_equal(b.s, a.s)


def test_mse_search_on_real_weights_equal_and_clips(rng):
    """A SmolLM2-shaped layer (4-bit g64, heavy-tailed weights): both searches agree and clip some groups."""
    W = (rng.standard_t(3, (256, 576)) * 0.02).astype(np.float32)
    a = _with_reference_search(lambda: quantize_weight_observed(W, bits=4, group_size=64, observer="mse"))
    b = quantize_weight_observed(W, bits=4, group_size=64, observer="mse")
    assert_equal(b.codes, a.codes)
    assert_equal(b.s, a.s)
    assert (a.s < quantize_groups(W, bits=4, group_size=64).s).mean() > 0.5      # most groups clipped


def test_integer_arguments_must_be_ints():
    for make, match in ((lambda: MSEObserver(grid=10.0), "grid must be an int"),
                        (lambda: MinMaxObserver(max_samples=2.5), "max_samples must be an int")):
        with pytest.raises(TypeError, match=match):
            make()


# --- ragged last groups (rtn-w4g128-ragged on 576 inputs) ---------------------------------------------------


def _ragged_oracle(W, g, quantize):
    """Each group of g inputs (and the ragged tail) quantized on its own as one per-channel block."""
    return np.concatenate([quantize(W[:, a:a + g]).dequantize() for a in range(0, W.shape[1], g)], axis=1)


@given(st.integers(1, 6), st.integers(2, 40), st.integers(2, 39), st.integers(1, 8), st.booleans(),
       st.sampled_from(["int", "float"]), st.integers(0, 2**32 - 1))
def test_ragged_groups_equal_quantizing_each_group_alone(out, n_in, g, bits, sym, zp, seed):
    if g >= n_in or n_in % g == 0:
        g = max(1, n_in - 1) if n_in > 2 else 1
    if sym and (bits < 2 or zp == "float"):
        bits, zp = max(bits, 2), "int"
    W = np.random.default_rng(seed).standard_normal((out, n_in)).astype(np.float32)
    kw = dict(bits=bits, symmetric=sym, zero_point=zp)
    c = quantize_groups(W, group_size=g, ragged=True, **kw)
    want = _ragged_oracle(W, g, lambda Wp: quantize_groups(Wp, group_size=-1, **kw))
    assert_equal(c.dequantize(), want)
    if n_in % g:
        from math import gcd

        n_groups = -(-n_in // g)
        assert c.ragged_group_size == g and c.group_size == gcd(g, n_in)
        z_bytes = 0 if sym else (-(-out * n_groups * bits // 8) if zp == "int" else 2 * out * n_groups)
        assert c.nbytes == c.packed.nbytes + 2 * out * n_groups + z_bytes      # each group's s, z once


def test_ragged_is_opt_in_and_mse_ragged_never_worse(rng):
    W = (rng.standard_t(3, (64, 576)) * 0.02).astype(np.float32)
    with pytest.raises(ValueError, match="group_size=128 does not divide the input dimension 576"):
        quantize_groups(W, bits=4, group_size=128)                        # unchanged default
    with pytest.raises(ValueError, match="group_size=128 does not divide"):
        registry.get("rtn-w4g128").quantize_weight(W)
    c = quantize_groups(W, bits=4, group_size=128, ragged=True)
    assert c.bits_per_weight == 4 + 5 * (16 + 4) / 576                  # 4 groups of 128 + 1 of 64 per row
    same = quantize_groups(W, bits=4, group_size=64, ragged=True)         # 64 divides 576: the plain layout
    assert same.ragged_group_size is None
    assert_equal(same.codes, quantize_groups(W, bits=4, group_size=64).codes)
    mm = quantize_weight_observed(W, bits=4, group_size=128, observer="minmax", ragged=True)
    assert_equal(mm.dequantize(), c.dequantize())
    mse = quantize_weight_observed(W, bits=4, group_size=128, observer="mse", ragged=True)
    err = lambda q: ((q.dequantize().astype(np.float64) - W) ** 2).sum()  # noqa: E731
    assert err(mse) <= err(c) and mse.bits_per_weight == c.bits_per_weight
    for bad, exc, match in [(dict(group_size=1000, ragged=True), ValueError, "larger than the input dimension"),
                            (dict(group_size=128, ragged=1), TypeError, "ragged must be a bool")]:
        with pytest.raises(exc, match=match):
            quantize_groups(W, bits=4, **bad)


def test_ragged_schemes_are_registered(rng):
    W = rng.standard_normal((8, 576)).astype(np.float32)
    s = registry.get("rtn-w4g128-ragged")
    assert "ragged" in s.description and not s.needs_calibration
    assert_equal(s.quantize_weight(W).dequantize(), quantize_groups(W, bits=4, group_size=128, ragged=True).dequantize())
    m = registry.get("rtn-w3g128-sym-ragged-mse")
    assert "MSE" in m.description and m.quantize_weight(W).symmetric and m.quantize_weight(W).ragged_group_size == 128
    for bad in ("rtn-w9g128-ragged", "rtn-w4g0-ragged", "rtn-w4-ragged"):
        with pytest.raises(ValueError, match="scheme"):
            registry.get(bad)
