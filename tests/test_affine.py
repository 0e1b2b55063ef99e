"""Chapter 02 — scale and zero point: the guarantees of ``minq.affine``.

Properties (hypothesis, profiles from conftest), for every mode — symmetric, asymmetric with an
integer zero point, asymmetric with a float zero point — bits 1..8 (symmetric 2..8), per-tensor and
per-axis, float32 and float16 scales:

- inside the representable range ``[s (qmin - z), s (qmax - z)]`` nearest rounding gives
  ``|x - x_hat| <= s/2 + 2^-22 (|x| + s)`` (the float32 term is derived in minq/affine.py's docstring);
- min-max parameters cover the data: every x, not only those inside, meets that bound;
- ``quantize(dequantize(q)) == q`` for every code, monotonicity, codes in ``[qmin, qmax]`` as uint8;
- zero is exact where promised (symmetric and integer zero point);
- stochastic rounding picks floor or ceil and is unbiased;
- the torch path equals the NumPy path bit for bit (on every device the ``device`` fixture gives);
- golden values (the seed's ``s = max|x| / (2^(b-1) - 1)``, hand-computed 4-bit and tie cases);
- a bad-input matrix: each public function raises TypeError/ValueError naming the parameter.

Bugs this suite found in minq/affine.py and minq/_checks.py are pinned by ``test_regression_*``
tests, each with the input that exposed it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from minq import testing as mt
from minq.affine import QParams, choose_qparams, dequantize, fake_quantize, quantize

MODES = {
    "symmetric": {"symmetric": True},
    "asym_int": {"symmetric": False, "zero_point": "int"},
    "asym_float": {"symmetric": False, "zero_point": "float"},
}
TINY = float(np.finfo(np.float32).tiny)  # smallest normal float32, 2^-126
FLOAT_SLACK = 2.0**-22  # the float32 term of the bound: 2^-22 (|x| + s)


# --- helpers -------------------------------------------------------------------------------------------


def f64(a):
    """float64 NumPy copy of an array or tensor (s may be float16: this is exact)."""
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=np.float64)


def bound(x, s):
    """The nearest-rounding bound ``s/2 + 2^-22 (|x| + s)``, in float64."""
    x, s = f64(x), f64(s)
    return s / 2 + FLOAT_SLACK * (np.abs(x) + s)


def representable_range(qp):
    """``[s (qmin - z), s (qmax - z)]`` in float64, shaped like ``qp.s``."""
    s, z = f64(qp.s), f64(qp.z)
    return s * (qp.qmin - z), s * (qp.qmax - z)


def _inside(x, qp):
    """Which elements of x lie inside the representable range."""
    lo, hi = representable_range(qp)
    return (f64(x) >= lo) & (f64(x) <= hi)


def _assume_distinct_grid(qp):
    """A float zero point far from the codes (data far from 0 relative to its range, e.g.
    [1000, 1000.001]) makes the 2^bits grid values ``s (q - z)`` collide in float32: then no
    implementation can give back every code. This is a float32 limit, not a bug; ``|z| <= 2^16``
    keeps ``q - z`` exact to 2^-8."""
    assume(bool(np.all(np.abs(f64(qp.z)) <= 2.0**16)))


@st.composite
def setups(draw, modes=tuple(MODES), shape=None, scale_dtypes=("float32", "float16")):
    """``(x, kwargs)`` for choose_qparams: a mode, bits valid for it, per-tensor or per-axis, a scale dtype."""
    mode = draw(st.sampled_from(modes))
    b = draw(mt.bits(2 if mode == "symmetric" else 1, 8))
    x = draw(mt.float_arrays(shape))
    axes = [None, *range(-x.ndim, x.ndim)] + ([(0, 1)] if x.ndim == 2 else [])
    axis = draw(st.sampled_from(axes))
    scale_dtype = draw(st.sampled_from(scale_dtypes))
    return x, {"bits": b, "axis": axis, "scale_dtype": scale_dtype, **MODES[mode]}


def qparams(x, kw):
    qp = choose_qparams(x, **kw)
    assert np.all(f64(qp.s) >= TINY), "scales are normal float32 numbers"
    return qp


def seeds():
    return st.integers(0, 2**32 - 1)


# --- nearest rounding: the error bound -------------------------------------------------------------------


@given(setups(), st.data())
def test_nearest_error_bound_inside_range(case, data):
    """|x - x_hat| <= s/2 + 2^-22 (|x| + s) for every x inside [s (qmin - z), s (qmax - z)]: the data's own
    values and points spread uniformly over the range."""
    x, kw = case
    qp = qparams(x, kw)
    lo, hi = representable_range(qp)
    t = data.draw(hnp.arrays(np.float64, x.shape, elements=st.floats(0, 1)))
    y = (lo + t * (hi - lo)).astype(np.float32)
    pts = np.stack([x, y])  # [2, *x.shape]; s and z broadcast
    inside = (f64(pts) >= lo) & (f64(pts) <= hi)
    err = np.abs(f64(pts) - f64(fake_quantize(pts, qp)))
    mt.assert_bound(np.where(inside, err, 0.0), bound(pts, qp.s), name="|x - x_hat| inside the range")


@given(setups(), st.data())
def test_nearest_error_bound_at_ties(case, data):
    """The bound where rounding is hardest: points within a few ulps of the midpoints s (k + 1/2 - z)
    (test_regression_float_zero_point_breaks_the_bound_near_ties is the case that found a bug)."""
    x, kw = case
    qp = qparams(x, kw)
    s, z = np.broadcast_to(f64(qp.s), x.shape), np.broadcast_to(f64(qp.z), x.shape)
    k = data.draw(hnp.arrays(np.int64, x.shape, elements=st.integers(0, qp.qmax - 1)))
    ulps = data.draw(hnp.arrays(np.int64, x.shape, elements=st.integers(-4, 4)))
    mid = (s * (k + 0.5 - z)).astype(np.float32)
    y = (mid + ulps * np.spacing(mid)).astype(np.float32)  # ties and their float32 neighbours
    inside = _inside(y, qp)
    err = np.abs(f64(y) - f64(fake_quantize(y, qp)))
    mt.assert_bound(np.where(inside, err, 0.0), bound(y, qp.s), name="|x - x_hat| near ties")


@given(setups())
def test_min_max_params_cover_the_data(case):
    """With min-max parameters every x of the data, inside the grid or not, meets the bound (an integer
    zero point may leave the extremes up to s/2 outside the grid: then they clip by at most s/2)."""
    x, kw = case
    qp = qparams(x, kw)
    err = np.abs(f64(x) - f64(fake_quantize(x, qp)))
    mt.assert_bound(err, bound(x, qp.s), name="|x - x_hat| with min-max qparams")


def test_error_bound_is_tight():
    """The bound is attained: a point half-way between two grid values errs by s/2 (up to float32)."""
    x = np.array([-1.0, 3.0], np.float32)
    qp = choose_qparams(x, bits=4)
    s = f64(qp.s)[0]
    mid = np.array([s * 0.5, s * 1.5, s * 2.5], np.float32)
    err = np.abs(f64(mid) - f64(fake_quantize(mid, qp)))
    np.testing.assert_allclose(err, s / 2, rtol=1e-6)


# --- idempotence, monotonicity, codes ----------------------------------------------------------------


@given(setups())
def test_quantize_dequantize_is_idempotent(case):
    """quantize(dequantize(q)) == q for every code q in [0, 2^bits - 1], in every slice."""
    x, kw = case
    qp = qparams(x, kw)
    _assume_distinct_grid(qp)
    s_shape = tuple(qp.s.shape)
    codes = np.arange(qp.qmax + 1, dtype=np.uint8).reshape(-1, *([1] * len(s_shape)))
    q = np.ascontiguousarray(np.broadcast_to(codes, (qp.qmax + 1, *s_shape)))  # [2^bits, *s.shape]
    mt.assert_equal(quantize(dequantize(q, qp), qp), q, name="quantize(dequantize(q))")


@given(setups(shape=None), st.data())
def test_monotone(case, data):
    """x sorted along an axis (inside and outside the grid) -> q and x_hat sorted along it."""
    x, kw = case
    qp = qparams(x, kw)
    axis = kw["axis"]
    reduced = list(range(x.ndim)) if axis is None else [a % x.ndim for a in np.atleast_1d(axis)]
    a = data.draw(st.sampled_from(reduced))  # a reduced axis: one (s, z) along it
    y = np.sort(np.concatenate([x, np.float32(3) * x], axis=a), axis=a)  # 3x: clipped values too
    q = quantize(y, qp)
    assert np.all(np.diff(q.astype(np.int64), axis=a) >= 0), "codes not monotone"
    assert np.all(np.diff(f64(dequantize(q, qp)), axis=a) >= 0), "x_hat not monotone"


@given(setups(), seeds(), st.sampled_from(["nearest_even", "stochastic"]))
def test_codes_in_range_and_uint8(case, seed, rounding):
    x, kw = case
    qp = qparams(x, kw)
    y = np.stack([x, np.float32(5) * x])  # values far outside the grid must clip
    q = quantize(y, qp, rounding=rounding, rng=np.random.default_rng(seed))
    assert q.dtype == np.uint8
    assert q.shape == y.shape
    assert int(q.min()) >= qp.qmin and int(q.max()) <= qp.qmax


# --- zero ------------------------------------------------------------------------------------------


@given(setups(modes=("symmetric", "asym_int")), st.data())
def test_zero_is_exact_with_integer_zero_point(case, data):
    """Symmetric and integer-zero-point grids hold 0 exactly: q(0) = z and x_hat(0) = +0.0, also inside
    arrays with other values (zeros put at random places in x)."""
    x, kw = case
    mask = data.draw(hnp.arrays(np.bool_, x.shape))
    x = np.where(mask, np.float32(0), x).astype(np.float32)
    qp = qparams(x, kw)
    q = quantize(x, qp)
    z = np.broadcast_to(f64(qp.z), x.shape).astype(np.int64)  # z may be stored as -0.0: compare values
    mt.assert_equal(q[mask].astype(np.int64), z[mask], name="q(0) == z")
    mt.assert_equal(dequantize(q, qp)[mask], np.zeros(int(mask.sum()), np.float32), name="x_hat(0)")
    zeros = np.zeros(x.shape, np.float32)
    mt.assert_equal(fake_quantize(zeros, qp), zeros, name="fake_quantize(0)")


def test_zero_is_not_exact_with_float_zero_point():
    """The float zero point (ggml Q4_1 style) trades exact zero for a grid that fits [min, max]."""
    x = np.array([-1.0, 3.0], np.float32)
    qp = choose_qparams(x, bits=4, zero_point="float")
    x_hat0 = float(fake_quantize(np.zeros(1, np.float32), qp)[0])
    assert x_hat0 != 0.0
    assert abs(x_hat0) <= f64(qp.s)[0] / 2


# --- golden values ---------------------------------------------------------------------------------


def test_golden_symmetric_scale_from_the_seed():
    """The seed: s = max|x| / (2^(b-1) - 1). x = [-1, 0.5, 2], 8 bits -> s = 2/127, z = 128."""
    x = np.array([-1.0, 0.5, 2.0], np.float32)
    qp = choose_qparams(x, bits=8, symmetric=True)
    assert qp.s.dtype == np.float32 and qp.s.shape == (1,)
    assert qp.s[0] == np.float32(2) / np.float32(127)
    assert abs(float(qp.s[0]) - 2 / 127) <= 2 / 127 * 2.0**-24
    assert qp.z[0] == 128 and qp.symmetric and qp.zero_point == "int"
    q = quantize(x, qp)
    mt.assert_equal(q, np.array([128 - 64, 128 + 32, 128 + 127], np.uint8))  # -63.5 -> -64 (even), 31.75 -> 32
    mt.assert_equal(q.astype(np.int64) - 128, np.rint(np.array([-1, 0.5, 2]) * 127 / 2).astype(np.int64))


@given(setups(modes=("symmetric",)))
def test_symmetric_scale_is_the_seed_formula(case):
    """s == max(max|x| / (2^(b-1) - 1), 2^-126) in float32, per slice (scales are kept normal: see
    test_regression_tiny_range_*); a float16 scale is the smallest float16 >= it."""
    x, kw = case
    qp = choose_qparams(x, **kw)
    axis = kw["axis"]
    axes = None if axis is None else tuple(np.atleast_1d(axis))
    amax = np.max(np.abs(x), axis=axes, keepdims=True)
    half = np.float32(2 ** (kw["bits"] - 1) - 1)
    s = np.where(amax > 0, amax / half, np.float32(1)).astype(np.float32)
    s = np.maximum(s, np.float32(TINY))
    mt.assert_equal(qp.z, np.full(s.shape, 2 ** (kw["bits"] - 1), np.float32), name="z")
    if kw["scale_dtype"] == "float32":
        assert qp.s.dtype == np.float32
        mt.assert_equal(qp.s, s, name="s")
    else:
        assert qp.s.dtype == np.float16
        s16 = f64(qp.s)
        below = f64(np.nextafter(qp.s, np.float16(0)))
        assert np.all(s16 >= s) and np.all((below < s) | (qp.s == 0)), "not the next float16 up"


def test_golden_asymmetric_4bit():
    """Hand-computed: [-1, 3] on 4 bits. s = 4/15, z = round(1 / (4/15)) = round(3.75) = 4.
    x = -1 -> -3.75 -> -4 -> q 0; 0 -> q 4; 1 -> 3.75 -> 4 -> q 8; 3 -> 11.25 -> 11 -> q 15."""
    x = np.array([-1.0, 0.0, 1.0, 3.0], np.float32)
    qp = choose_qparams(x, bits=4)
    assert qp.s[0] == np.float32(4) / np.float32(15) and qp.z[0] == 4
    q = quantize(x, qp)
    mt.assert_equal(q, np.array([0, 4, 8, 15], np.uint8))
    np.testing.assert_allclose(dequantize(q, qp), np.array([-16, 0, 16, 44]) / 15, rtol=1e-6)
    assert dequantize(q, qp)[1] == 0.0


def test_golden_asymmetric_4bit_float_zero_point():
    """Same data with a float zero point: z = 1 / (4/15) = 3.75 (float32 3.7499998), grid exactly [-1, 3]."""
    x = np.array([-1.0, 0.0, 1.0, 3.0], np.float32)
    qp = choose_qparams(x, bits=4, zero_point="float")
    assert abs(float(qp.z[0]) - 3.75) < 1e-6 and qp.zero_point == "float"
    q = quantize(x, qp)
    # 0 -> rint(3.75) = 4; 1 -> 3.75 + 3.75 = 7.5 exactly, but in float32 1/s + z = 7.4999995 -> 7
    mt.assert_equal(q, np.array([0, 4, 7, 15], np.uint8))
    np.testing.assert_allclose(dequantize(q, qp), [-1.0, 1 / 15, 13 / 15, 3.0], rtol=1e-6, atol=1e-6)


def test_golden_ties_round_to_even():
    """2-bit symmetric on [-3, 3]: s = 3, z = 2; x/s = -1, -0.5, 0.5, 1 -> -1, -0, 0, 1 (ties to even).
    1-bit asymmetric on [0, 1]: s = 1, z = 0; 0.5 -> 0 (even), 0.6 -> 1."""
    x = np.array([-3.0, -1.5, 1.5, 3.0], np.float32)
    qp = choose_qparams(x, bits=2, symmetric=True)
    assert qp.s[0] == 3 and qp.z[0] == 2
    mt.assert_equal(quantize(x, qp), np.array([1, 2, 2, 3], np.uint8))
    mt.assert_equal(fake_quantize(x, qp), np.array([-3, 0, 0, 3], np.float32))
    x = np.array([0.0, 0.4, 0.5, 0.6, 1.0], np.float32)
    qp = choose_qparams(x, bits=1)
    assert qp.s[0] == 1 and qp.z[0] == 0
    mt.assert_equal(quantize(x, qp), np.array([0, 0, 0, 1, 1], np.uint8))


def test_golden_per_axis_and_special_slices():
    """Per-row symmetric scales on W [out, in] (axis=1 reduces `in`); an all-zero row gets s = 1; a
    constant row with a float zero point is reproduced exactly."""
    W = np.array([[-1.0, 2.0], [0.0, 4.0], [0.0, 0.0]], np.float32)
    qp = choose_qparams(W, bits=8, symmetric=True, axis=1)
    assert qp.s.shape == (3, 1)
    mt.assert_equal(qp.s, np.array([[2 / 127], [4 / 127], [1]], np.float32))
    assert np.all(fake_quantize(W, qp)[2] == 0)
    c = np.array([[5.0, 5.0, 5.0], [-2.0, 1.0, 7.0]], np.float32)
    qp = choose_qparams(c, bits=3, axis=-1, zero_point="float")
    assert qp.s[0, 0] == 1
    mt.assert_equal(fake_quantize(c, qp)[0], c[0], name="constant row")


def test_float16_scale_rounds_up_and_still_covers():
    """s = 1/127 is not a float16; the stored scale is the next float16 up, so max|x| stays on the grid."""
    x = np.array([-1.0, 1.0], np.float32)
    qp = choose_qparams(x, bits=8, symmetric=True, scale_dtype="float16")
    assert qp.s.dtype == np.float16
    assert float(qp.s[0]) >= 1 / 127 and float(np.nextafter(qp.s[0], np.float16(0))) < np.float32(1) / 127
    assert quantize(x, qp)[1] == 255  # +1 -> 127 levels up (rint(127 - eps))
    mt.assert_bound(np.abs(f64(x) - f64(fake_quantize(x, qp))), bound(x, qp.s))


def test_other_float_inputs_and_integer_bits():
    """float16/float64 input is computed in float32 (same parameters); NumPy integer bits are accepted."""
    x = np.array([-1.5, 0.25, 3.0], np.float32)
    ref = choose_qparams(x, bits=4)
    for xx in (x.astype(np.float16), x.astype(np.float64)):
        qp = choose_qparams(xx, bits=np.int64(4))
        mt.assert_equal(qp.s, ref.s)
        mt.assert_equal(qp.z, ref.z)
        mt.assert_equal(quantize(xx, qp), quantize(x, ref))
        assert fake_quantize(xx, qp).dtype == np.float32


# --- stochastic rounding -----------------------------------------------------------------------------


def _floor_ceil_codes(x, qp):
    """The two candidate codes: floor and ceil of x/s (+ z), computed in float32 like quantize."""
    s, z = np.asarray(qp.s, np.float32), np.asarray(qp.z, np.float32)
    v = x / s + z if qp.zero_point == "float" else x / s
    lo, hi = np.floor(v), np.ceil(v)
    if qp.zero_point == "int":
        lo, hi = lo + z, hi + z
    return np.clip(lo, qp.qmin, qp.qmax), np.clip(hi, qp.qmin, qp.qmax)


@given(setups(), seeds())
def test_stochastic_picks_floor_or_ceil(case, seed):
    """Stochastic codes are floor or ceil of x/s + z (then clipped), and inside the range |x - x_hat| < s
    (up to the same float32 term as the nearest bound)."""
    x, kw = case
    qp = qparams(x, kw)
    y = np.stack([x, np.float32(3) * x])
    q = quantize(y, qp, rounding="stochastic", rng=np.random.default_rng(seed))
    lo, hi = _floor_ceil_codes(y, qp)
    ok = (q == lo) | (q == hi)
    mt.assert_equal(ok, np.ones_like(ok), name="stochastic code is floor or ceil")
    a, b = representable_range(qp)
    inside = (f64(y) >= a) & (f64(y) <= b)
    err = np.abs(f64(y) - f64(dequantize(q, qp)))
    s = np.broadcast_to(f64(qp.s), y.shape)
    mt.assert_bound(np.where(inside, err, 0.0), s + FLOAT_SLACK * (np.abs(f64(y)) + s) - 2.0**-30 * s,
                    name="|x - x_hat| < s")


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("scale_dtype", ["float32", "float16"])
def test_stochastic_is_unbiased(mode, scale_dtype):
    """E[x_hat] = x inside the range. For each of 64 points, the mean of N = 20000 draws has standard
    deviation <= s / (2 sqrt(N)) (a Bernoulli step of size s); the test allows 6 of those, which a
    correct implementation exceeds with probability < 64 * 2e-9 — and the rng is seeded, so the
    outcome is fixed. Nearest rounding fails the same check (its bias is up to s/2): the test has power."""
    W = np.random.default_rng(1).standard_normal((4, 16)).astype(np.float32)
    qp = choose_qparams(W, bits=3, axis=1, scale_dtype=scale_dtype, **MODES[mode])
    n = 20_000
    X = np.broadcast_to(W, (n, *W.shape))  # [N, 4, 16]: N draws of every point
    x_hat = fake_quantize(X, qp, rounding="stochastic", rng=np.random.default_rng(2))
    s = np.broadcast_to(f64(qp.s), W.shape)
    tol = 6 * s / (2 * np.sqrt(n)) + FLOAT_SLACK * (np.abs(f64(W)) + s)
    inside = _inside(W, qp)  # an integer z can leave the extremes up to s/2 outside: those clip
    assert inside.sum() >= 64 - 8  # at most the min and max of each row
    bias = np.abs(f64(x_hat).mean(axis=0) - f64(W))
    mt.assert_bound(np.where(inside, bias, 0.0), tol, name="|mean(x_hat) - x| inside the range")
    nearest_bias = np.abs(f64(fake_quantize(W, qp)) - f64(W))
    assert np.any(inside & (nearest_bias > tol)), "the unbiasedness check has no power"


def test_stochastic_needs_rng():
    x = np.array([0.1, 0.7], np.float32)
    qp = choose_qparams(x, bits=4)
    with pytest.raises(ValueError, match="rng"):
        quantize(x, qp, rounding="stochastic")
    with pytest.raises(ValueError, match="rng"):
        fake_quantize(x, qp, rounding="stochastic")
    for bad in (0, np.random.RandomState(0), torch.Generator()):
        with pytest.raises(TypeError, match="rng"):
            quantize(x, qp, rounding="stochastic", rng=bad)
    # the same seed gives the same codes
    a = quantize(x, qp, rounding="stochastic", rng=np.random.default_rng(5))
    b = quantize(x, qp, rounding="stochastic", rng=np.random.default_rng(5))
    mt.assert_equal(a, b)


# --- torch path = NumPy path --------------------------------------------------------------------------


def _qp_to_numpy(qp):
    return QParams(qp.s.cpu().numpy(), qp.z.cpu().numpy(), qp.bits, qp.symmetric, qp.zero_point)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=setups())
def test_torch_matches_numpy(device, case):
    """Same s, z (and storage dtype), same codes, same x_hat, bit for bit — data and clipped values."""
    x, kw = case
    qp = qparams(x, kw)
    xt = torch.from_numpy(x).to(device)
    qpt = choose_qparams(xt, **kw)
    assert str(qpt.s.dtype).removeprefix("torch.") == qp.s.dtype.name
    assert qpt.s.device.type == device and (qpt.symmetric, qpt.zero_point) == (qp.symmetric, qp.zero_point)
    mt.assert_equal(qpt.s, qp.s, name="s")
    # z by value: NumPy stores z = -0.0 when min(x) >= 0 (rint(-0 / s)), torch's clamp gives +0.0
    mt.assert_equal(f64(qpt.z) + 0.0, f64(qp.z) + 0.0, name="z")
    y = np.stack([x, np.float32(3) * x])
    yt = torch.from_numpy(y).to(device)
    q, qt = quantize(y, qp), quantize(yt, qpt)
    assert qt.dtype == torch.uint8 and qt.device.type == device
    mt.assert_equal(qt, q, name="codes")
    x_hat_t = dequantize(qt, qpt)
    assert x_hat_t.dtype == torch.float32
    mt.assert_equal(x_hat_t, dequantize(q, qp), name="x_hat")
    mt.assert_equal(fake_quantize(yt, qpt), fake_quantize(y, qp), name="fake_quantize")


def test_torch_rounds_ties_to_even_like_numpy(device):
    """Exact ties (power-of-two scales): symmetric 3 bits on [-3, 3] (s = 1) and asymmetric 4 bits on
    [0, 3.75] (s = 1/4, z = 0); both paths give the even neighbour."""
    ties = np.arange(-3.5, 4.0, 1.0, dtype=np.float32)  # -3.5 .. 3.5: x/s = k + 1/2
    x = np.concatenate([[-3.0, 3.0], ties[1:-1]]).astype(np.float32)
    qp = choose_qparams(x, bits=3, symmetric=True)
    assert qp.s[0] == 1 and qp.z[0] == 4
    want = np.rint(x).astype(np.int64) + 4  # -2.5 -> -2, -1.5 -> -2, -0.5 -> -0, 0.5 -> 0, 1.5 -> 2, 2.5 -> 2
    mt.assert_equal(quantize(x, qp).astype(np.int64), want)
    y = np.concatenate([[3.75], (np.arange(15) + 0.5) / 4]).astype(np.float32)
    qp2 = choose_qparams(y, bits=4)
    assert qp2.s[0] == 0.25 and qp2.z[0] == 0
    mt.assert_equal(quantize(y, qp2).astype(np.int64), np.rint(y * 4).astype(np.int64))
    for v, p in ((x, qp), (y, qp2)):
        vt = torch.from_numpy(v).to(device)
        mt.assert_equal(quantize(vt, choose_qparams(vt, bits=p.bits, symmetric=p.symmetric)), quantize(v, p))


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=setups(), seed=seeds())
def test_torch_stochastic_picks_floor_or_ceil(device, case, seed):
    x, kw = case
    qp = qparams(x, kw)
    qpt = choose_qparams(torch.from_numpy(x).to(device), **kw)
    g = torch.Generator(device=device).manual_seed(seed)
    q = quantize(torch.from_numpy(x).to(device), qpt, rounding="stochastic", rng=g).cpu().numpy()
    lo, hi = _floor_ceil_codes(x, qp)
    ok = (q == lo) | (q == hi)
    mt.assert_equal(ok, np.ones_like(ok), name="stochastic code is floor or ceil")


def test_torch_stochastic_is_unbiased(device):
    W = np.random.default_rng(1).standard_normal((4, 16)).astype(np.float32)
    qp = choose_qparams(torch.from_numpy(W).to(device), bits=3, axis=1)
    n = 20_000
    X = torch.from_numpy(W).to(device).expand(n, *W.shape)
    g = torch.Generator(device=device).manual_seed(2)
    x_hat = fake_quantize(X, qp, rounding="stochastic", rng=g)
    s = np.broadcast_to(f64(qp.s), W.shape)
    tol = 6 * s / (2 * np.sqrt(n)) + FLOAT_SLACK * (np.abs(f64(W)) + s)  # see test_stochastic_is_unbiased
    bias = np.abs(f64(x_hat).mean(axis=0) - f64(W))
    mt.assert_bound(np.where(_inside(W, qp), bias, 0.0), tol, name="|mean(x_hat) - x| inside the range")


def test_torch_bad_inputs(device):
    xt = torch.tensor([-1.0, 2.0], device=device)
    qpt = choose_qparams(xt, bits=4)
    with pytest.raises(TypeError, match=r"\bx\b"):
        choose_qparams(torch.tensor([1, 2], device=device), bits=4)
    with pytest.raises(ValueError, match=r"\bx\b"):
        choose_qparams(torch.tensor([1.0, float("nan")], device=device), bits=4)
    with pytest.raises(TypeError, match="rng"):
        quantize(xt, qpt, rounding="stochastic", rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="rng"):
        quantize(xt, qpt, rounding="stochastic")
    with pytest.raises(TypeError, match=r"\bqp\b"):
        quantize(xt.cpu().numpy(), qpt)  # NumPy x with torch qp
    with pytest.raises(ValueError, match=r"\bq\b"):
        dequantize(torch.tensor([16], dtype=torch.uint8, device=device), qpt)
    with pytest.raises(TypeError, match=r"\bq\b"):
        dequantize(torch.tensor([1.0], device=device), qpt)


# --- bad inputs ----------------------------------------------------------------------------------------

X = np.array([[-1.0, 0.5], [2.0, -3.0]], np.float32)
QP = choose_qparams(X, bits=4)
Q = quantize(X, QP)


def _qp(**kw):
    return QParams(**{"s": QP.s, "z": QP.z, "bits": 4, **kw})


def _x_cases():
    """Bad x for choose_qparams, quantize and fake_quantize."""
    return {
        "nan": (np.array([[1.0, np.nan]], np.float32), ValueError),
        "inf": (np.array([[1.0, np.inf]], np.float32), ValueError),
        "-inf": (np.array([[-np.inf, 1.0]], np.float32), ValueError),
        "empty": (np.zeros((0, 3), np.float32), ValueError),
        "int dtype": (np.array([[1, 2]], np.int32), TypeError),
        "bool dtype": (np.array([[True]]), TypeError),
        "complex dtype": (np.array([[1j]], np.complex64), TypeError),
        "list": ([[1.0, 2.0]], TypeError),
        "scalar": (1.0, TypeError),
    }


def _bad_cases():
    cases = []
    x_fns = {
        "choose_qparams": lambda x: choose_qparams(x, bits=4),
        "quantize": lambda x: quantize(x, QP),
        "fake_quantize": lambda x: fake_quantize(x, QP),
    }
    for fname, fn in x_fns.items():
        for cname, (x, exc) in _x_cases().items():
            cases.append((f"{fname}-x-{cname}", (lambda fn=fn, x=x: fn(x)), exc, r"\bx\b"))
    for b, exc in [(0, ValueError), (9, ValueError), (-1, ValueError), (2.5, TypeError), (True, TypeError),
                   ("4", TypeError), (None, TypeError)]:
        cases.append((f"choose_qparams-bits-{b!r}", (lambda b=b: choose_qparams(X, bits=b)), exc, "bits"))
        for fname, fn in [("quantize", lambda qp: quantize(X, qp)), ("dequantize", lambda qp: dequantize(Q, qp)),
                          ("fake_quantize", lambda qp: fake_quantize(X, qp))]:
            cases.append((f"{fname}-qp.bits-{b!r}", (lambda fn=fn, b=b: fn(_qp(bits=b))), exc, "bits"))
    cases += [
        ("choose_qparams-symmetric-bits-1", lambda: choose_qparams(X, bits=1, symmetric=True), ValueError, "bits"),
        ("choose_qparams-zero_point-unknown", lambda: choose_qparams(X, bits=4, zero_point="uint"), ValueError,
         "zero_point"),
        ("choose_qparams-zero_point-float-symmetric",
         lambda: choose_qparams(X, bits=4, symmetric=True, zero_point="float"), ValueError, "zero_point"),
        ("choose_qparams-scale_dtype-unknown", lambda: choose_qparams(X, bits=4, scale_dtype="bfloat16"),
         ValueError, "scale_dtype"),
        ("choose_qparams-scale_dtype-float16-overflow",
         lambda: choose_qparams(np.array([-6e4, 6e4], np.float32), bits=1, scale_dtype="float16"),
         ValueError, "scale_dtype"),
        ("choose_qparams-axis-2", lambda: choose_qparams(X, bits=4, axis=2), ValueError, "axis"),
        ("choose_qparams-axis--3", lambda: choose_qparams(X, bits=4, axis=-3), ValueError, "axis"),
        ("choose_qparams-axis-tuple", lambda: choose_qparams(X, bits=4, axis=(0, 5)), ValueError, "axis"),
        ("choose_qparams-axis-float", lambda: choose_qparams(X, bits=4, axis=1.5), TypeError, "axis"),
        ("quantize-rounding-unknown", lambda: quantize(X, QP, rounding="half_up"), ValueError, "rounding"),
        ("fake_quantize-rounding-unknown", lambda: fake_quantize(X, QP, rounding="floor"), ValueError, "rounding"),
        ("quantize-rng-missing", lambda: quantize(X, QP, rounding="stochastic"), ValueError, "rng"),
        ("quantize-rng-wrong-type", lambda: quantize(X, QP, rounding="stochastic", rng=42), TypeError, "rng"),
        ("fake_quantize-rng-wrong-type", lambda: fake_quantize(X, QP, rounding="stochastic", rng="seed"),
         TypeError, "rng"),
        ("dequantize-q-above-qmax", lambda: dequantize(np.array([[3, 16]], np.uint8), QP), ValueError, r"\bq\b"),
        ("dequantize-q-int8", lambda: dequantize(np.array([[1]], np.int8), QP), TypeError, r"\bq\b"),
        ("dequantize-q-int64", lambda: dequantize(np.array([[1]], np.int64), QP), TypeError, r"\bq\b"),
        ("dequantize-q-float", lambda: dequantize(np.array([[1.0]], np.float32), QP), TypeError, r"\bq\b"),
        ("dequantize-q-list", lambda: dequantize([[1, 2]], QP), TypeError, r"\bq\b"),
        ("dequantize-q-empty", lambda: dequantize(np.zeros((0, 2), np.uint8), QP), ValueError, r"\bq\b"),
    ]
    qp_fns = [("quantize", lambda qp: quantize(X, qp)), ("dequantize", lambda qp: dequantize(Q, qp)),
              ("fake_quantize", lambda qp: fake_quantize(X, qp))]
    bad_qps = {
        "s-zero": (lambda: _qp(s=np.zeros(1, np.float32)), ValueError, r"qp\.s"),
        "s-negative": (lambda: _qp(s=-QP.s), ValueError, r"qp\.s"),
        "s-nan": (lambda: _qp(s=np.full(1, np.nan, np.float32)), ValueError, r"qp\.s"),
        "s-inf": (lambda: _qp(s=np.full(1, np.inf, np.float32)), ValueError, r"qp\.s"),
        "s-int": (lambda: _qp(s=np.ones(1, np.int32)), TypeError, r"qp\.s"),
        "z-nan": (lambda: _qp(z=np.full(1, np.nan, np.float32)), ValueError, r"qp\.z"),
        "not-qparams": (lambda: (QP.s, QP.z, 4), TypeError, r"\bqp\b"),
        "torch-qp": (lambda: _qp(s=torch.from_numpy(QP.s), z=torch.from_numpy(QP.z)), TypeError, r"\bqp\b"),
    }
    for fname, fn in qp_fns:
        for cname, (make, exc, match) in bad_qps.items():
            cases.append((f"{fname}-qp-{cname}", (lambda fn=fn, make=make: fn(make())), exc, match))
    return cases


BAD_CASES = _bad_cases()


@pytest.mark.parametrize(("fn", "exc", "match"), [c[1:] for c in BAD_CASES], ids=[c[0] for c in BAD_CASES])
def test_bad_input_raises_naming_the_parameter(fn, exc, match):
    with pytest.raises(exc, match=match):
        fn()


# --- regressions: bugs this suite found in affine.py, each pinned by its original input -------------------


@pytest.mark.parametrize("kw", [{"symmetric": True}, {"zero_point": "int"}, {"zero_point": "float"}])
def test_regression_tiny_range_gives_zero_scale(kw):
    """x = [1e-45] (the smallest float32 subnormal): expected s > 0 and x_hat within s/2; got s = 0
    (z = NaN for asymmetric) and quantize raises 'qp.s must be > 0'. Fix: keep s >= 2^-126
    (``s = maximum(s, finfo(float32).tiny)``)."""
    x = np.array([1e-45, 0.0], np.float32)
    qp = choose_qparams(x, bits=8, **kw)
    assert np.all(qp.s > 0) and np.all(np.isfinite(qp.z))
    mt.assert_bound(np.abs(f64(x) - f64(fake_quantize(x, qp))), bound(x, qp.s))


def test_regression_tiny_range_subnormal_scale_does_not_cover():
    """x = [300 * 2^-149] symmetric 8 bits: s = 300/127 * 2^-149 rounds to 2 * 2^-149, the grid ends at
    254 * 2^-149 < x: expected |x - x_hat| <= s/2 = 2^-149, got 46 * 2^-149. Same fix (s >= 2^-126)."""
    x = np.array([300 * 2.0**-149], np.float32)
    qp = choose_qparams(x, bits=8, symmetric=True)
    mt.assert_bound(np.abs(f64(x) - f64(fake_quantize(x, qp))), bound(x, qp.s))


def test_regression_float_zero_point_breaks_the_bound_near_ties():
    """zero_point='float', 8 bits, data [-9.778417, 9.046179]: s = 0.07382195, z = 132.45947.
    x = -0.14465153 (inside the range): exact x/s + z = 130.5000075 -> code 131; float32 x/s + z rounds
    to 130.5, a tie -> 130. |x - x_hat| = s/2 + 5.1e-7 > s/2 + 2^-22 (|x| + s) = s/2 + 5.2e-8.
    The rounding error of the sum is relative to |x/s + z| ~ 2^bits, not to |x/s|.
    Fix: round with the integer part of z taken out, ``zi = floor(z)``,
    ``q = rint(x / s + (z - zi)) + zi`` (z - zi is exact), or form x/s + z in float64."""
    base = np.array([-9.778417, 9.046179], np.float32)
    qp = choose_qparams(base, bits=8, zero_point="float")
    x = np.array([-0.14465153], np.float32)
    assert representable_range(qp)[0][0] <= x[0] <= representable_range(qp)[1][0]
    err = np.abs(f64(x) - f64(fake_quantize(x, qp)))
    mt.assert_bound(err, bound(x, qp.s))


def test_regression_stochastic_rounds_an_exact_grid_point_away():
    """x = 100 s exactly (symmetric 8 bits, s = 0.01): v = x/s = 100.0, so floor(v) = ceil(v) = 100 and
    every draw must give q - z = 100. Got 101 in ~1 of 2^18 draws: for u >= 1 - 2^-18, fl(100 + u) = 101.
    Then |x - x_hat| = s (the '< s' guarantee fails) and E[x_hat] is biased by ~s * 2^-18 * |v|/64.
    Fix: ``r = floor(v); q = r + (u < v - r)`` (v - r is exact) instead of ``floor(v + u)``."""
    qp = choose_qparams(np.array([-1.27, 1.27], np.float32), bits=8, symmetric=True)
    x = np.full(4_000_000, np.float32(100) * qp.s[0], np.float32)
    assert x[0] / qp.s[0] == 100
    q = quantize(x, qp, rounding="stochastic", rng=np.random.default_rng(0)).astype(np.int64) - 128
    mt.assert_equal(q, np.full(x.shape, 100), name="stochastic code of an exact grid point")


@pytest.mark.parametrize("x", [np.array([-3e38, 3e38], np.float32), np.array([1e300, 1.0], np.float64)],
                         ids=["float32-range-overflow", "float64-beyond-float32"])
def test_regression_range_overflow_returns_infinite_scale(x):
    """[-3e38, 3e38] asymmetric: hi - lo overflows, s = inf, z = NaN/0 returned silently; float64 1e300 casts to
    inf. Expected a ValueError naming x (never an invalid QParams). Fix: check that s (and x after the
    cast to float32) is finite in choose_qparams and raise 'x is too large ...'."""
    with pytest.raises(ValueError, match=r"\bx\b"):
        choose_qparams(x, bits=8)


def test_regression_qparams_shape_not_checked():
    """Per-row qp of W [4, 3] applied to W[:1] ([1, 3]): expected ValueError naming qp; got codes of shape
    [4, 3] (and for W[:2] a raw NumPy broadcast error that names no parameter). Fix: in _check_qparams,
    require np.broadcast_shapes(x.shape, s.shape) == x.shape."""
    W = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    qp = choose_qparams(W, bits=4, axis=1)
    with pytest.raises(ValueError, match=r"\bqp\b"):
        quantize(W[:1], qp)


def test_regression_unknown_qparams_zero_point_is_silently_dropped():
    """QParams(zero_point='bogus'): quantize neither adds z before nor after rounding, so codes come out
    without the zero point (q = clip(rint(x/s))). Expected ValueError naming zero_point. Fix: check_choice(
    qp.zero_point, 'qp.zero_point', ZERO_POINT) in _check_qparams."""
    with pytest.raises(ValueError, match="zero_point"):
        quantize(X, _qp(zero_point="bogus"))


def test_regression_axis_string_message():
    """axis='a': expected TypeError naming axis; got ValueError "invalid literal for int() with base 10: 'a'".
    Fix: in _check_axis reject str (and catch ValueError) with the 'axis must be ...' message."""
    with pytest.raises(TypeError, match="axis"):
        choose_qparams(X, bits=4, axis="a")


def test_regression_torch_signed_codes_accepted(device):
    """dequantize(torch.tensor([-1, 3], dtype=torch.int64), qp) returns s * (-1 - z) (garbage) instead of
    raising; check_uint_array's docstring says torch uint8 only, the code also accepts int16/32/64.
    Fix: accept torch.uint8 only (or check q >= 0 too), and raise TypeError naming q."""
    qpt = choose_qparams(torch.tensor([-1.0, 3.0], device=device), bits=4)
    with pytest.raises((TypeError, ValueError), match=r"\bq\b"):
        dequantize(torch.tensor([-1, 3], dtype=torch.int64, device=device), qpt)
