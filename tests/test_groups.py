"""Chapter 03 — group quantization (minq/groups.py).

Properties: group/ungroup round trip; the elementwise error bound with the *stored* scale of each
element's group, for every granularity, scheme, scale dtype and bit width; the fused Numba kernels
equal ``minq.affine`` applied per group (codes and dequantized values, exactly); the granularity
ordering of the bounds (group <= channel <= tensor); exact storage accounting; ``from_codes``;
torch == NumPy; and a bad-input matrix whose errors name the parameter.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minq import affine
from minq import testing as mt
from minq._backend import is_torch
from minq.groups import (
    GroupedAffine,
    dequantize_reference,
    group,
    quantize_codes_reference,
    quantize_groups,
    resolve_group_size,
    ungroup,
)
from minq.packing import nbytes_per_row, unpack
from minq.testing import assert_bound, assert_equal

try:
    import torch
except ImportError:  # pragma: no cover - torch is in the dev install; the `device` tests then have no params
    torch = None

_with_fixture = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

SCHEMES = {
    "sym": dict(symmetric=True, zero_point="int"),
    "asym_int": dict(symmetric=False, zero_point="int"),
    "asym_float": dict(symmetric=False, zero_point="float"),
}
# the granularity descriptor, as a function of the drawn group width g
GRANULARITIES = {
    "tensor_None": lambda g: None,
    "tensor_0": lambda g: 0,
    "channel": lambda g: -1,
    "group": lambda g: g,
}
SCALE_BITS = {"float16": 16, "float32": 32}


@given(mt.weight_matrices())
def test_library_weight_matrices_strategy(wg):
    W, g = wg
    assert W.dtype == np.float32 and W.ndim == 2 and W.shape[1] % g == 0


def _np(a):
    return a.detach().cpu().numpy() if is_torch(a) else np.asarray(a)


def per_element(c: GroupedAffine, a):
    """Broadcast a per-group array ``a`` ([out, G] or [1, 1]) to one value per weight [out, in], float64."""
    a = _np(a).astype(np.float64).reshape(c.s.shape)
    return np.broadcast_to(np.repeat(a, c.g, axis=1), c.shape)


def element_s_z(c: GroupedAffine):
    """Stored scale and zero point (as used by dequantize) of each element's group, float64 [out, in]."""
    qp = c.qparams()
    return per_element(c, qp.s[..., 0]), per_element(c, qp.z[..., 0])


def degenerate_groups(W, c: GroupedAffine):
    """True for elements whose group has zero range under the scheme (min-max convention: s = 1)."""
    Wg = group(W.astype(np.float64), c.group_size)
    if c.zero_point == "float":
        lo, hi = Wg.min(-1), Wg.max(-1)
    else:  # symmetric and integer zero point: the range always includes 0
        lo, hi = np.minimum(Wg.min(-1), 0), np.maximum(Wg.max(-1), 0)
    if c.group_size is None or c.group_size == 0:
        lo, hi = lo.min(keepdims=True), hi.max(keepdims=True)
    return per_element(c, (hi == lo).reshape(c.s.shape)) > 0


def bound(W, s):
    """The documented bound ``s/2 + 2^-22 (|W| + s)`` (float64)."""
    W = W.astype(np.float64)
    return s / 2 + 2.0**-22 * (np.abs(W) + s)


@st.composite
def configs(draw, schemes=tuple(SCHEMES)):
    """``(W, group_size, kwargs)``: a weight matrix, a granularity and a valid scheme/bits/scale dtype."""
    W, g = draw(mt.weight_matrices())
    gran = draw(st.sampled_from(tuple(GRANULARITIES)))
    scheme = draw(st.sampled_from(schemes))
    kw = dict(SCHEMES[scheme])
    kw["bits"] = draw(st.integers(2 if kw["symmetric"] else 1, 8))
    kw["scale_dtype"] = draw(st.sampled_from(("float16", "float32")))
    return W, GRANULARITIES[gran](g), kw


# --- group / ungroup ------------------------------------------------------------------------------------


@given(mt.weight_matrices(), st.sampled_from(tuple(GRANULARITIES)))
def test_group_ungroup_round_trip(wg, gran):
    W, g = wg
    gs = GRANULARITIES[gran](g)
    Wg = group(W, gs)
    width = g if gran == "group" else W.shape[1]
    assert Wg.shape == (W.shape[0], W.shape[1] // width, width)            # [out, in/g, g]
    assert np.shares_memory(Wg, W)                                           # a view, no copy
    for r in range(W.shape[0]):
        for j in range(Wg.shape[1]):
            assert_equal(Wg[r, j], W[r, j * width:(j + 1) * width], name=f"group row {r} group {j}")
    assert_equal(ungroup(Wg), W, name="ungroup(group(W))")


def test_group_content_by_hand():
    W = np.arange(12, dtype=np.float32).reshape(2, 6)
    assert_equal(group(W, 3), np.array([[[0, 1, 2], [3, 4, 5]], [[6, 7, 8], [9, 10, 11]]], np.float32))
    assert_equal(group(W, 2)[1, 2], np.array([10, 11], np.float32))
    assert group(W, -1).shape == group(W, None).shape == group(W, 0).shape == (2, 1, 6)
    assert group(W, 6).shape == (2, 1, 6) and group(W, 1).shape == (2, 6, 1)


def test_group_torch(device):
    W = torch.arange(24, dtype=torch.float32, device=device).reshape(3, 8)
    Wg = group(W, 4)
    assert Wg.shape == (3, 2, 4) and Wg.device.type == device
    assert_equal(Wg, group(W.cpu().numpy(), 4))
    assert_equal(ungroup(Wg), W)


def test_group_keeps_nan():
    # group/ungroup are pure reshapes: they check shape and dtype, not values
    W = np.full((2, 4), np.nan, np.float32)
    assert np.isnan(ungroup(group(W, 2))).all()


@pytest.mark.parametrize("n_in, group_size, g", [(64, None, 64), (64, 0, 64), (64, -1, 64), (64, 64, 64),
                                                 (64, 1, 1), (576, 64, 64), (576, 32, 32), (12, np.int64(4), 4)])
def test_resolve_group_size(n_in, group_size, g):
    out = resolve_group_size(group_size, n_in)
    assert out == g and type(out) is int


# --- the error bound -----------------------------------------------------------------------------------


@given(configs())
def test_error_bound_with_stored_scale(cfg):
    """|W - W_hat| <= s/2 + 2^-22 (|W| + s) elementwise with s the stored scale; codes in range;
    integer zero points are integers in [0, 2^bits - 1]; symmetric stores no z (z = 2^(bits-1))."""
    W, gs, kw = cfg
    c = quantize_groups(W, group_size=gs, **kw)
    assert c.s.dtype == np.dtype(kw["scale_dtype"])
    W_hat = c.dequantize()
    assert W_hat.dtype == np.float32 and W_hat.shape == W.shape
    q = c.codes
    assert q.dtype == np.uint8 and q.shape == W.shape and int(q.max()) < 1 << kw["bits"]
    if kw["zero_point"] == "int":
        zq = c.qparams().z
        assert_equal(zq, np.rint(zq), name="integer zero points")
        assert 0 <= zq.min() and zq.max() <= (1 << kw["bits"]) - 1
    if kw["symmetric"]:
        assert c.z is None and (c.qparams().z == 1 << (kw["bits"] - 1)).all()
    s, z = element_s_z(c)
    assert (s > 0).all()
    err = np.abs(W.astype(np.float64) - W_hat)
    if kw["zero_point"] == "float":
        # the zero point is stored rounded (to the scale dtype): the bound holds inside the stored
        # grid's range; outside it, the code sits at the clip end of the grid
        qmax = (1 << kw["bits"]) - 1
        W64 = W.astype(np.float64)
        below, above = W64 < s * (0 - z), W64 > s * (qmax - z)
        assert (q[below] == 0).all() and (q[above] == qmax).all()
        inside = ~(below | above)
        assert_bound(err[inside], bound(W, s)[inside], name="|W - W_hat| (float z, inside the grid)")
    else:
        assert_bound(err, bound(W, s), name="|W - W_hat|")


@pytest.mark.parametrize("scheme", ["sym", "asym_int"])
@pytest.mark.parametrize("group_size", [None, -1, 4])
def test_zero_group_is_exact(scheme, group_size):
    # a group (or row, or tensor) of zeros has range 0: s = 1 by convention, and zeros come back exactly
    W = np.zeros((3, 8), np.float32)
    if group_size == 4:
        W[1, 4:] = [1.0, -2.0, 0.5, 3.0]
    c = quantize_groups(W, bits=4, group_size=group_size, **SCHEMES[scheme])
    W_hat = c.dequantize()
    assert_equal(W_hat[W == 0], np.zeros(int((W == 0).sum()), np.float32))
    if group_size == 4:
        assert c.s[0, 0] == 1 and c.s[1, 0] == 1 and c.s[1, 1] < 1


# --- fused kernels == affine per group (the readable reference) ---------------------------------------


@given(configs())
def test_codes_and_dequantize_equal_affine_per_group(cfg):
    W, gs, kw = cfg
    c = quantize_groups(W, group_size=gs, **kw)
    qp = c.qparams()
    Wg = group(W, gs)                                                         # [out, G, g]
    qg = c.codes.reshape(Wg.shape)                                            # codes [out, in] -> [out, G, g]
    # the Numba fused quantize == affine.quantize with the container's (stored) parameters
    assert_equal(qg, affine.quantize(Wg, qp), name="codes vs affine.quantize per group")
    # the Numba fused unpack + dequantize == affine.dequantize per group
    assert_equal(c.dequantize(), ungroup(affine.dequantize(qg, qp)), name="dequantize vs affine")
    # and the stored parameters are affine's min-max choice (z rounded to storage for float z)
    per_tensor = gs is None or gs == 0
    ref = affine.choose_qparams(Wg, axis=None if per_tensor else -1, **kw)
    assert qp.s.dtype == ref.s.dtype
    assert_equal(qp.s, ref.s, name="s vs affine.choose_qparams")
    z_ref = ref.z.astype(kw["scale_dtype"]).astype(np.float32) if kw["zero_point"] == "float" else ref.z
    assert_equal(qp.z + 0.0, z_ref + 0.0, name="z vs affine.choose_qparams")  # + 0.0: -0 == +0 here
    # quantize_groups calls choose_qparams, so the lines above cannot catch a wrong min-max rule: the
    # formulas, written out (as tests/test_affine.py does for one slice)
    s_want, z_of = _minmax_formula(Wg, None if per_tensor else -1, **kw)
    if kw["scale_dtype"] == "float32":
        assert_equal(qp.s, s_want, name="s vs the min-max formula")
    else:                                                         # the smallest float16 >= the formula
        below = np.nextafter(qp.s, np.float16(0)).astype(np.float64)
        assert (qp.s.astype(np.float64) >= s_want).all() and ((below < s_want) | (qp.s == 0)).all(), \
            "s is not the next float16 up from the min-max formula"
    z_want = z_of(qp.s.astype(np.float32))                        # z from the stored scale, as choose_qparams
    if kw["zero_point"] == "float":
        z_want = z_want.astype(kw["scale_dtype"]).astype(np.float32)
    assert_equal(qp.z + 0.0, np.broadcast_to(z_want, qp.z.shape) + 0.0, name="z vs the min-max formula")


def _minmax_formula(Wg, axis, *, bits, symmetric, zero_point, scale_dtype):
    """Min-max ``s`` (float32, before rounding to the scale dtype) per slice of ``Wg``, and ``z`` as a
    function of the stored scale: symmetric ``s = max|w| / (2^(b-1) - 1)``, ``z = 2^(b-1)``; asymmetric
    ``s = (hi - lo) / (2^b - 1)`` over ``[lo, hi]`` (widened to hold 0 for an integer z), ``z = -lo / s``
    (rounded and clipped to ``[0, 2^b - 1]`` for an integer z). A zero range gives ``s = 1``; scales are
    at least 2^-126."""
    f32 = np.float32
    tiny = f32(np.finfo(f32).tiny)
    W = Wg.astype(f32)
    if symmetric:
        amax = np.abs(W).max(axis=axis, keepdims=True)
        s = np.where(amax > 0, amax / f32(2 ** (bits - 1) - 1), f32(1))
        return np.maximum(s, tiny).astype(f32), lambda s_stored: np.full(s_stored.shape, 2 ** (bits - 1), f32)
    lo, hi = W.min(axis=axis, keepdims=True), W.max(axis=axis, keepdims=True)
    if zero_point == "int":
        lo, hi = np.minimum(lo, f32(0)), np.maximum(hi, f32(0))
    qmax = f32(2 ** bits - 1)
    s = np.maximum(np.where(hi > lo, (hi - lo) / qmax, f32(1)), tiny).astype(f32)

    def z_of(s_stored):
        z = (f32(0) - lo) / s_stored
        return np.clip(np.rint(z), 0, qmax) if zero_point == "int" else z

    return s, z_of


def test_input_dtype_and_layout_do_not_matter():
    rng = np.random.default_rng(0)
    W = rng.standard_normal((16, 64)).astype(np.float32)
    ref = quantize_groups(W, bits=4, group_size=16)
    for other in (W.astype(np.float64), np.asfortranarray(W), W.T.copy().T):
        c = quantize_groups(other, bits=4, group_size=16)
        assert_equal(c.packed, ref.packed)
        assert_equal(c.s, ref.s)
        assert_equal(c.z, ref.z)
    W16 = W.astype(np.float16)
    assert_equal(quantize_groups(W16, bits=4, group_size=16).dequantize(),
                 quantize_groups(W16.astype(np.float32), bits=4, group_size=16).dequantize())


# --- granularity ordering ------------------------------------------------------------------------------


@given(configs())
def test_bound_ordering_group_channel_tensor(cfg):
    """The stored scale of every element (hence its bound s/2) only shrinks from per tensor to per
    channel to per group: a subset's range is inside the superset's, and rounding s up is monotone.
    Groups of zero range use the s = 1 convention (their values are reproduced instead), so they are
    left out."""
    W, gs, kw = cfg
    g = gs if isinstance(gs, int) and gs > 0 else W.shape[1]
    cg, cc, ct = (quantize_groups(W, group_size=x, **kw) for x in (g, -1, None))
    sg, sc, st_ = (per_element(c, c.s) for c in (cg, cc, ct))
    live = ~degenerate_groups(W, cg)
    assert_bound(sg[live], sc[live], name="group scale <= channel scale")
    assert_bound(sc[live], st_[live], name="channel scale <= tensor scale")
    bg, bc, bt = (bound(W, s) for s in (sg, sc, st_))
    assert_bound(bg[live], bc[live], name="group bound <= channel bound")
    assert_bound(bc[live], bt[live], name="channel bound <= tensor bound")


def test_realised_error_is_not_ordered_elementwise():
    # the *bound* shrinks with the group, the realised error need not: this row lies on the per-channel
    # grid (s = 1, z = 0), but the second group [1, 2] gets s = 2/3 and 1 falls between two codes
    W = np.array([[0.0, 3.0, 1.0, 2.0]], np.float32)
    kw = dict(bits=2, symmetric=False, zero_point="int")
    channel = quantize_groups(W, group_size=-1, **kw).dequantize()
    grouped = quantize_groups(W, group_size=2, **kw).dequantize()
    assert_equal(channel, W)
    assert np.abs(grouped - W).max() > 0.3


def outlier_weights(seed=0, out=64, n_in=512, n_outliers=4, factor=30.0):
    """LLM-like: Gaussian rows with log-normal row scales, a few input columns scaled x factor."""
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((out, n_in)) * np.exp(rng.normal(0, 0.5, (out, 1)))
    W[:, rng.choice(n_in, n_outliers, replace=False)] *= factor
    return W.astype(np.float32)


@pytest.mark.parametrize("scheme", list(SCHEMES))
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_realised_mse_ordered_on_outlier_channels(scheme, bits):
    W = outlier_weights()
    mse = [float(np.mean((W - quantize_groups(W, bits=bits, group_size=gs, **SCHEMES[scheme]).dequantize()) ** 2))
           for gs in (None, -1, 128, 32)]
    # not a theorem, but in practice (fixed seed; the smallest ratio measured is 1.44):
    # tensor > channel > group 128 > group 32
    assert mse[0] > 1.2 * mse[1] and mse[1] > 1.2 * mse[2] and mse[2] > 1.2 * mse[3], mse


# --- storage accounting ----------------------------------------------------------------------------------


def _arrays_nbytes(c):
    return sum(0 if a is None else a.nbytes for a in (c.packed, c.s, c.z))


def _scheme_bits(bits_list):
    """(scheme, bits) pairs that exist: symmetric needs bits >= 2."""
    return [(sch, b) for sch in SCHEMES for b in bits_list if b >= 2 or not SCHEMES[sch]["symmetric"]]


@pytest.mark.parametrize("scale_dtype", ["float16", "float32"])
@pytest.mark.parametrize("scheme, bits", _scheme_bits(range(1, 9)))
@pytest.mark.parametrize("group_size", [32, 64, 128, -1])
def test_bits_per_weight_exact(group_size, bits, scheme, scale_dtype):
    kw = SCHEMES[scheme]
    out, n_in = 8, 256                          # every size divides: no padding anywhere
    W = np.random.default_rng(bits).standard_normal((out, n_in)).astype(np.float32)
    c = quantize_groups(W, bits=bits, group_size=group_size, scale_dtype=scale_dtype, **kw)
    g = n_in if group_size == -1 else group_size
    s_bits = SCALE_BITS[scale_dtype]
    z_bits = 0 if kw["symmetric"] else (bits if kw["zero_point"] == "int" else s_bits)
    assert c.g == g and c.n_groups == n_in // g
    assert c.nbytes * 8 == out * n_in * bits + out * (n_in // g) * (s_bits + z_bits)
    assert c.bits_per_weight == bits + (s_bits + z_bits) / g      # exact: g is a power of two
    assert c.nbytes == _arrays_nbytes(c)
    assert c.packed.shape == (out, n_in * bits // 8) and c.packed.dtype == np.uint8
    assert c.s.shape == (out, n_in // g) and c.s.dtype == np.dtype(scale_dtype)


@pytest.mark.parametrize(
    "bits, group_size, scheme, bpw",
    [(4, 64, "asym_int", 4 + 20 / 64), (4, 128, "asym_int", 4 + 20 / 128), (4, 128, "sym", 4.125),
     (4, 32, "sym", 4.5),            # the size of ggml Q4_0 (fp16 scale per 32)
     (4, 32, "asym_float", 5.0),     # the size of ggml Q4_1 (fp16 scale + fp16 min per 32)
     (8, 32, "sym", 8.5),            # the size of ggml Q8_0
     (3, 128, "asym_int", 3 + 19 / 128), (2, 64, "asym_int", 2 + 18 / 64)],
)
def test_bits_per_weight_examples(bits, group_size, scheme, bpw):
    W = np.random.default_rng(0).standard_normal((8, 256)).astype(np.float32)
    assert quantize_groups(W, bits=bits, group_size=group_size, **SCHEMES[scheme]).bits_per_weight == bpw


@pytest.mark.parametrize("scale_dtype", ["float16", "float32"])
@pytest.mark.parametrize("scheme, bits", _scheme_bits([1, 3, 4, 8]))
def test_per_tensor_accounting(bits, scheme, scale_dtype):
    kw = SCHEMES[scheme]
    out, n_in = 8, 256
    W = np.random.default_rng(0).standard_normal((out, n_in)).astype(np.float32)
    c = quantize_groups(W, bits=bits, group_size=None, scale_dtype=scale_dtype, **kw)
    s_bytes = SCALE_BITS[scale_dtype] // 8
    z_bytes = 0 if kw["symmetric"] else (nbytes_per_row(1, bits) if kw["zero_point"] == "int" else s_bytes)
    assert c.s.shape == (1, 1)
    assert c.nbytes == out * n_in * bits // 8 + s_bytes + z_bytes == _arrays_nbytes(c)
    assert c.bits_per_weight == 8 * c.nbytes / (out * n_in)


@pytest.mark.parametrize("bits", range(1, 9))
def test_accounting_with_padding(bits):
    # rows of 12 codes and a zero-point stream of 9 codes: both padded to whole chunks
    out, n_in, g = 3, 12, 4
    W = np.random.default_rng(bits).standard_normal((out, n_in)).astype(np.float32)
    c = quantize_groups(W, bits=bits, group_size=g)
    assert c.packed.shape == (out, nbytes_per_row(n_in, bits))
    assert c.z.shape == (nbytes_per_row(out * n_in // g, bits),)
    assert c.nbytes == out * nbytes_per_row(n_in, bits) + out * (n_in // g) * 2 + nbytes_per_row(9, bits)
    assert c.nbytes == _arrays_nbytes(c)
    assert c.bits_per_weight == 8 * c.nbytes / (out * n_in)
    assert_equal(unpack(c.z, bits, 9).reshape(out, -1), c.qparams().z[..., 0].astype(np.uint8))


# --- from_codes ----------------------------------------------------------------------------------------


def _parts(c: GroupedAffine):
    """The unpacked (q, s, z) that GPTQ/AWQ would hand to from_codes."""
    if c.z is None:
        z = None
    elif c.zero_point == "int":
        z = c.qparams().z[..., 0]
    else:
        z = c.z
    return c.codes, c.s, z


@given(configs())
def test_from_codes_round_trip(cfg):
    W, gs, kw = cfg
    c = quantize_groups(W, group_size=gs, **kw)
    q, s, z = _parts(c)
    c2 = GroupedAffine.from_codes(q, s, z, bits=kw["bits"], group_size=gs, zero_point=kw["zero_point"])
    assert_equal(c2.packed, c.packed)
    assert_equal(c2.s, c.s)
    if c.z is None:
        assert c2.z is None
    else:
        assert c2.z.dtype == c.z.dtype
        assert_equal(c2.z, c.z)
    assert (c2.shape, c2.bits, c2.group_size, c2.symmetric, c2.zero_point) == \
        (c.shape, c.bits, c.group_size, c.symmetric, c.zero_point)
    assert c2.nbytes == c.nbytes and c2.bits_per_weight == c.bits_per_weight
    assert_equal(c2.dequantize(), c.dequantize())


def test_from_codes_float_zero_point_cast_to_scale_dtype():
    q = np.zeros((2, 4), np.uint8)
    s = np.ones((2, 1), np.float16)
    c = GroupedAffine.from_codes(q, s, np.array([[1.3], [-0.7]], np.float32), bits=4, group_size=-1,
                                 zero_point="float")
    assert c.z.dtype == np.float16
    assert_equal(c.dequantize(), np.repeat(-np.array([[1.3], [-0.7]], np.float16).astype(np.float32), 4, 1))


_Q = np.arange(32, dtype=np.uint8).reshape(4, 8) % 16
_S = np.full((4, 2), 0.1, np.float16)
_Z = np.full((4, 2), 8.0, np.float32)


@pytest.mark.parametrize(
    "changes, exc, match",
    [
        (dict(s=np.full((4, 1), 0.1, np.float16)), ValueError, r"s must have shape \(4, 2\)"),
        (dict(s=np.full((2, 4), 0.1, np.float16)), ValueError, r"s must have shape \(4, 2\)"),
        (dict(s=_S.reshape(-1)), ValueError, r"s must have shape"),
        (dict(s=np.zeros((4, 2), np.float16)), ValueError, "s must be > 0"),
        (dict(s=-_S), ValueError, "s must be > 0"),
        (dict(s=np.full((4, 2), np.nan, np.float16)), ValueError, "s contains NaN or Inf"),
        (dict(s=np.full((4, 2), np.inf, np.float32)), ValueError, "s contains NaN or Inf"),
        (dict(s=np.ones((4, 2), np.int32)), TypeError, "s must have a floating-point dtype"),
        (dict(z=np.full((4, 2), 16.0, np.float32)), ValueError, r"z must hold integers in \[0, 15\]"),
        (dict(z=np.full((4, 2), -1.0, np.float32)), ValueError, r"z must hold integers in \[0, 15\]"),
        (dict(z=np.full((4, 2), 2.5, np.float32)), ValueError, r"z must hold integers in \[0, 15\]"),
        (dict(z=np.full((4, 1), 8.0, np.float32)), ValueError, r"z must have shape \(4, 2\)"),
        (dict(z=np.full((4, 2), np.nan, np.float32)), ValueError, "z contains NaN or Inf"),
        (dict(q=_Q.reshape(-1)), ValueError, r"q must be 2-D"),
        (dict(q=_Q.reshape(2, 2, 8)), ValueError, r"q must be 2-D"),
        (dict(q=_Q + 16), ValueError, r"q has codes >= 2\^bits"),
        (dict(q=_Q.astype(np.int8)), TypeError, "q must have an unsigned integer dtype"),
        (dict(q=_Q.astype(np.float32)), TypeError, "q must have an unsigned integer dtype"),
        (dict(q=np.zeros((0, 8), np.uint8)), ValueError, "q is empty"),
        (dict(bits=0), ValueError, "bits must be in 1..8"),
        (dict(bits=9), ValueError, "bits must be in 1..8"),
        (dict(group_size=3), ValueError, "group_size=3 does not divide"),
        (dict(group_size=-2), ValueError, "group_size must be"),
        (dict(zero_point="half"), ValueError, "zero_point must be one of"),
    ],
)
def test_from_codes_rejects(changes, exc, match):
    parts = dict(q=_Q, s=_S, z=_Z, bits=4, group_size=4, zero_point="int")
    parts.update(changes)
    q, s, z = parts.pop("q"), parts.pop("s"), parts.pop("z")
    with pytest.raises(exc, match=match):
        GroupedAffine.from_codes(q, s, z, **parts)


def test_from_codes_valid_base_parts():
    # the base of the reject matrix above is itself valid
    c = GroupedAffine.from_codes(_Q, _S, _Z, bits=4, group_size=4)
    assert_equal(c.codes, _Q)


# --- torch path ------------------------------------------------------------------------------------------


@_with_fixture
@given(configs())
def test_torch_equals_numpy(device, cfg):
    W, gs, kw = cfg
    c = quantize_groups(W, group_size=gs, **kw)
    ct = quantize_groups(torch.as_tensor(W, device=device), group_size=gs, **kw)
    assert isinstance(ct.packed, torch.Tensor) and ct.packed.device.type == device
    assert str(ct.s.dtype) == f"torch.{kw['scale_dtype']}"
    assert_equal(ct.packed, c.packed, name="packed codes")
    assert_equal(ct.codes, c.codes, name="codes")
    assert_equal(ct.s, c.s, name="s")
    if c.z is None:
        assert ct.z is None
    else:
        assert_equal(ct.z, c.z, name="z (stored)")
    qp, qpt = c.qparams(), ct.qparams()
    assert_equal(qpt.s, qp.s)
    assert_equal(qpt.z, qp.z)
    W_hat = ct.dequantize()
    assert isinstance(W_hat, torch.Tensor) and W_hat.dtype == torch.float32 and W_hat.device.type == device
    assert_equal(W_hat, c.dequantize(), name="W_hat torch vs numpy")
    assert ct.nbytes == c.nbytes and ct.bits_per_weight == c.bits_per_weight


@given(configs())
def test_kernels_equal_the_readable_reference(cfg):
    """NumPy: the Numba quantize and fused unpack+dequantize kernels equal ``quantize_codes_reference`` and
    ``dequantize_reference`` (chapter 02's quantize/dequantize on the grouped weight) bit for bit."""
    W, gs, kw = cfg
    c = quantize_groups(W, group_size=gs, **kw)
    qp = c.qparams()
    if c.zero_point == "float":                      # quantize_groups quantizes with z as stored
        qp = affine.QParams(qp.s, qp.z, c.bits, False, "float")
    Wg = W.reshape(W.shape[0], -1, c.g)
    assert_equal(c.codes, quantize_codes_reference(Wg, qp), name="codes: kernel vs reference")
    assert_equal(c.dequantize(), dequantize_reference(c), name="W_hat: kernel vs reference")


# --- bad inputs: a clear error that names the parameter -----------------------------------------------

_W = np.random.default_rng(0).standard_normal((4, 576)).astype(np.float32)
_nan = _W.copy()
_nan[1, 2] = np.nan
_inf = _W.copy()
_inf[0, 0] = -np.inf


@pytest.mark.parametrize(
    "W, kw, exc, match",
    [
        (_nan, {}, ValueError, "W contains NaN or Inf"),
        (_inf, {}, ValueError, "W contains NaN or Inf"),
        (np.zeros((0, 8), np.float32), {}, ValueError, "W is empty"),
        (np.zeros((4, 0), np.float32), {}, ValueError, "W is empty"),
        (_W[0], {}, ValueError, "W must be 2-D"),
        (_W.reshape(2, 2, 576), {}, ValueError, "W must be 2-D"),
        (_W.astype(np.int32), {}, TypeError, "W must have a floating-point dtype"),
        (_W.tolist(), {}, TypeError, "W must be a numpy array or torch tensor"),
        (_W, dict(bits=0), ValueError, "bits must be in 1..8"),
        (_W, dict(bits=9), ValueError, "bits must be in 1..8"),
        (_W, dict(bits=4.0), TypeError, "bits must be an int"),
        (_W, dict(group_size=128), ValueError, "group_size=128 does not divide the input dimension 576"),
        (_W, dict(group_size=1000), ValueError, "group_size=1000 does not divide"),
        (_W, dict(group_size=-2), ValueError, "group_size must be"),
        (_W, dict(group_size=1.5), ValueError, "group_size must be"),
        (_W, dict(group_size="64"), ValueError, "group_size must be"),
        (_W, dict(group_size=True), ValueError, "group_size must be"),
        (_W, dict(zero_point="fp"), ValueError, "zero_point must be one of"),
        (_W, dict(symmetric=True, bits=1), ValueError, "bits must be >= 2 for symmetric"),
        (_W, dict(symmetric=True, zero_point="float"), ValueError, "zero_point='float' needs symmetric=False"),
        (_W, dict(scale_dtype="bfloat16"), ValueError, "scale_dtype must be one of"),
        (_W * 1e7, {}, ValueError, "scale_dtype='float32'"),                 # float16 scale overflow
    ],
)
def test_quantize_groups_rejects(W, kw, exc, match):
    kw = {"bits": 4, "group_size": 64, **kw}
    with pytest.raises(exc, match=match):
        quantize_groups(W, **kw)


def test_quantize_groups_torch_rejects(device):
    W = torch.as_tensor(_nan, device=device)
    with pytest.raises(ValueError, match="W contains NaN or Inf"):
        quantize_groups(W, bits=4, group_size=64)
    with pytest.raises(ValueError, match="group_size=128 does not divide"):
        quantize_groups(W.nan_to_num(), bits=4, group_size=128)


@pytest.mark.parametrize(
    "fn, exc, match",
    [
        (lambda: group(_W[0], 64), ValueError, "W must be 2-D"),
        (lambda: group(_W.astype(np.int64), 64), TypeError, "W must have a floating-point dtype"),
        (lambda: group(np.zeros((0, 4), np.float32), 2), ValueError, "W is empty"),
        (lambda: group(_W, 128), ValueError, "group_size=128 does not divide"),
        (lambda: group(_W, -2), ValueError, "group_size must be"),
        (lambda: ungroup(_W), ValueError, "Wg must be 3-D"),
        (lambda: ungroup(_W.astype(np.int32).reshape(4, 9, 64)), TypeError, "Wg must have a floating-point"),
        (lambda: resolve_group_size(128, 576), ValueError, "group_size=128 does not divide"),
        (lambda: resolve_group_size(-2, 64), ValueError, "group_size must be"),
        (lambda: resolve_group_size(1.5, 64), ValueError, "group_size must be"),
        (lambda: resolve_group_size(True, 64), ValueError, "group_size must be"),
        (lambda: resolve_group_size(2.0, 64), ValueError, "group_size must be"),
    ],
)
def test_group_helpers_reject(fn, exc, match):
    with pytest.raises(exc, match=match):
        fn()


def test_resolve_group_size_rejects_false():
    with pytest.raises(ValueError, match="group_size must be"):
        resolve_group_size(False, 64)


@pytest.mark.parametrize(
    "row, scale_dtype",
    [
        # x = 1.76e-8: x/s = 4.5e-6 vanishes in fl(x/s + 254.5) = 254.5, a tie -> 254 -> x_hat = -s/2
        ([-1.0, 0.0009985775, 1.7571105e-08], "float16"),
        # exact x/s + z = 254.5000047 rounds to the float32 254.5, a tie -> 254
        ([-1.0, 0.0009931873, -0.00096960727], "float32"),
    ],
)
def test_float_zero_point_bound_near_ties(row, scale_dtype):
    """Regression: rounding fl(fl(x/s) + z) put these on a tie (x/s vanished in the add), an excess of
    up to 2^(bits-24) s over the bound; the kernels now add only the fraction of z before rounding."""
    W = np.array([row], np.float32)          # min and max fix s and z; the last element is the victim
    c = quantize_groups(W, bits=8, group_size=-1, zero_point="float", scale_dtype=scale_dtype)
    s, z = element_s_z(c)
    W64 = W.astype(np.float64)
    inside = (W64 >= s * (0 - z)) & (W64 <= s * (255 - z))
    assert inside[0, 2]                      # the victim is inside the stored grid
    err = np.abs(W64 - c.dequantize())
    assert_bound(err[inside], bound(W, s)[inside], name="|W - W_hat| (float z)")


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("scale_dtype", ["float16", "float32"])
def test_subnormal_range_gets_a_positive_scale(symmetric, scale_dtype):
    # regression: s = range / qmax used to underflow to 0 and quantize_groups raised about `s`
    W = np.array([[1e-45, 0.0, 0.0, 0.0]], np.float32)     # the smallest float32 subnormal
    c = quantize_groups(W, bits=8, group_size=-1, symmetric=symmetric, scale_dtype=scale_dtype)
    s, _ = element_s_z(c)
    assert_bound(np.abs(W.astype(np.float64) - c.dequantize()), bound(W, s))
