"""minq.mx: OCP MX (MXFP8/6/4, four scale rules) and NVFP4, torch path, clip fraction and schemes.

Oracle: data/mx/golden.npz, torchao 0.18.0's own codes, scales and dequantized values on a CPU
(scripts/make_mx_golden.py; CI has no torchao). Every comparison is bit for bit; the two places where
minq departs from torchao on purpose (scale code 0, RCEIL's float32 log2) are pinned down exactly.
"""

import json
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from minq import mx, mx_kernels, registry
from minq._jit import py_func
from minq.formats import FORMATS, decode_reference, encode_reference
from minq.formats_kernels import decode_consts, encode_consts
from minq.mx import (
    MX_FORMATS,
    SCALE_RULES,
    MXTensor,
    NVFP4Tensor,
    clip_fraction,
    dequantize_reference,
    pack_fp4,
    quantize,
    quantize_nvfp4,
    quantize_nvfp4_reference,
    quantize_reference,
    unpack_fp4,
)
from minq.mx_model import MXWeight

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "mx" / "golden.npz"
Z = np.load(GOLDEN)
META = json.loads(str(Z["meta"]))
EXACT = [c for c in META["cases"] if c != "tiny"]
F32 = np.float32


def bits(a):
    a = np.asarray(a)
    return a.view(np.uint32) if a.dtype == F32 else a


def diff(got, want):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype, (got.shape, got.dtype, want.shape, want.dtype)
    return bits(got) != bits(want)


def _rceil_near_pow2(x, fmt):
    """Blocks where d = fl32(amax / max_elem) lies just above a power of two (within 2^-20): torchao's
    ceil(float32 log2(d)) may round those down; minq (and the PTX instruction) round them up."""
    amax = np.abs(x.reshape(*x.shape[:-1], -1, 32)).max(-1)
    d = (amax / F32(FORMATS[MX_FORMATS[fmt][0]].max)).astype(F32)
    man = d.view(np.uint32) & 0x7FFFFF
    return (man > 0) & (man < 8)


# ---- torchao's codes, scales and values -------------------------------------------------------------

def test_golden_file_is_complete():
    assert META["torchao"] == "0.18.0" and sorted(META["formats"]) == sorted(MX_FORMATS)
    assert list(META["rules"]) == list(SCALE_RULES) and len(META["cases"]) == 6
    for c in META["cases"]:
        for f in MX_FORMATS:
            for r in SCALE_RULES:
                assert all(f"{c}.{f}.{r}.{k}" in Z.files for k in ("codes", "scales", "xhat"))


@pytest.mark.parametrize("rule", SCALE_RULES)
@pytest.mark.parametrize("fmt", sorted(MX_FORMATS))
@pytest.mark.parametrize("case", EXACT)
def test_mx_equals_torchao(case, fmt, rule):
    """Element codes, E8M0 scales and dequantized values: 0 mismatches, except RCEIL blocks whose d sits
    just above a power of two (torchao's float32 log2), where minq's scale is one binade up."""
    x, key = Z[f"x_{case}"], f"{case}.{fmt}.{rule}"
    t = quantize(x, fmt, scale_rule=rule)
    ds, dc, dx = diff(t.scales, Z[f"{key}.scales"]), diff(t.codes, Z[f"{key}.codes"]), diff(t.dequantize(), Z[f"{key}.xhat"])
    known = _rceil_near_pow2(x, fmt) if rule == "rceil" else np.zeros_like(ds)
    assert not (ds & ~known).any()
    assert (t.scales[ds].astype(int) == Z[f"{key}.scales"][ds].astype(int) + 1).all()
    blk = np.repeat(known, 32, -1)
    assert not (dc & ~blk).any() and not (dx & ~blk).any()
    if case != "clip" or rule != "rceil":
        assert not ds.any() and not dc.any() and not dx.any()


@pytest.mark.parametrize("fmt", sorted(MX_FORMATS))
def test_scale_code_zero_follows_ocp_not_torchao(fmt):
    """Non-zero blocks with E8M0 code 0: torchao divides by max(X, 2^-126) (FLOOR/CEIL/EVEN) or by 1
    (RCEIL) but decodes with 2^-127; minq uses X = 2^-127 both ways. Only those blocks differ."""
    x = Z["x_tiny"]
    f = FORMATS[MX_FORMATS[fmt][0]]
    for rule in SCALE_RULES:
        key = f"tiny.{fmt}.{rule}"
        t = quantize(x, fmt, scale_rule=rule)
        assert not diff(t.scales, Z[f"{key}.scales"]).any() and (t.scales == 0).any()
        zero = np.repeat(t.scales == 0, 32, -1)
        want = f.encode(x / F32(2.0**-127), saturate=True)
        assert not diff(t.codes, want)[zero].any()
        assert not diff(t.codes, Z[f"{key}.codes"])[~zero].any()
        assert diff(t.codes, Z[f"{key}.codes"])[zero].any()
        tol = np.abs(x) * 2.0 ** -f.man_bits + 2.0 ** (f.emin - f.man_bits - 127)
        assert (np.abs(t.dequantize() - x)[zero] <= tol[zero]).all()


@pytest.mark.parametrize("level", ["1l", "2l"])
@pytest.mark.parametrize("case", META["cases"])
def test_nvfp4_equals_torchao(case, level):
    x, key = Z[f"x_{case}"], f"{case}.nvfp4.{level}"
    t = quantize_nvfp4(x, two_level=level == "2l")
    assert diff(t.packed(), Z[f"{key}.packed"]).sum() == 0
    assert diff(t.block_scales, Z[f"{key}.scales"]).sum() == 0
    assert diff(t.dequantize(), Z[f"{key}.xhat"]).sum() == 0
    if level == "2l":
        assert diff(np.asarray(t.tensor_scale, F32), Z[f"{key}.pts"]).sum() == 0
    else:
        assert t.tensor_scale is None


@pytest.mark.torch
@pytest.mark.parametrize("case", ["gauss", "clip", "extreme", "tiny"])
def test_torch_equals_numpy(case):
    torch = pytest.importorskip("torch")
    x = Z[f"x_{case}"]
    for fmt in MX_FORMATS:
        for rule in SCALE_RULES:
            a, b = quantize(x, fmt, scale_rule=rule), quantize(torch.from_numpy(x), fmt, scale_rule=rule)
            assert isinstance(b.codes, torch.Tensor) and b.codes.dtype == torch.uint8
            assert not diff(b.codes.numpy(), a.codes).any() and not diff(b.scales.numpy(), a.scales).any()
            assert not diff(b.dequantize().numpy(), a.dequantize()).any()
    for two in (True, False):
        a, b = quantize_nvfp4(x, two_level=two), quantize_nvfp4(torch.from_numpy(x), two_level=two)
        assert not diff(b.codes.numpy(), a.codes).any() and not diff(b.block_scales.numpy(), a.block_scales).any()
        assert not diff(b.dequantize().numpy(), a.dequantize()).any()
        assert not diff(b.packed().numpy(), a.packed()).any()


# ---- properties -------------------------------------------------------------------------------------

blocks = hnp.arrays(F32, st.tuples(st.integers(1, 3), st.sampled_from([32, 64])),
                    elements=st.floats(-1e6, 1e6, width=32, allow_subnormal=False)) \
    .flatmap(lambda a: st.integers(-40, 40).map(lambda k: (a * F32(2.0**k)).astype(F32)))


@settings(max_examples=60, deadline=None)
@given(x=blocks, fmt=st.sampled_from(sorted(MX_FORMATS)), rule=st.sampled_from(SCALE_RULES))
def test_error_within_half_ulp_unless_clipped(x, fmt, rule):
    """|x - x_hat| <= X * half an ulp of the element format at |x / X| for values not beyond max_elem;
    beyond it x_hat = ±X * max_elem; ceil and rceil never clip the block max."""
    f = FORMATS[MX_FORMATS[fmt][0]]
    t = quantize(x, fmt, scale_rule=rule)
    X = np.repeat((2.0 ** (t.scales.astype(np.float64) - 127)), 32, -1)
    v = np.abs(x.astype(np.float64)) / X
    e = np.maximum(np.floor(np.log2(np.maximum(v, 2.0**-300))), f.emin)
    half = 2.0 ** (e - f.man_bits - 1)
    err = np.abs(x.astype(np.float64) - t.dequantize())
    inside = v <= f.max
    assert (err[inside] <= X[inside] * half[inside]).all()
    assert (np.abs(t.dequantize()[~inside]) == (X * f.max)[~inside]).all()
    if rule in ("ceil", "rceil"):
        assert clip_fraction(x, fmt, rule) == 0


def test_clip_rule_examples():
    """FLOOR clips the FP4 block max from mantissa 1.75 on (7 rounds to 8), FP8 E4M3 from 1.875 (464 is a
    tie that goes to 448); CEIL never."""
    for fmt, m_ok, m_clip in (("mxfp4", 1.74, 1.75), ("mxfp8_e4m3", 1.8125, 1.875), ("mxfp6_e2m3", 1.90, 1.97)):
        for m, clipped in ((m_ok, 0.0), (m_clip, 1.0)):
            x = np.full((1, 32), 0.1, F32)
            x[0, 5] = -m * 8
            assert clip_fraction(x, fmt, "floor") == clipped, (fmt, m)
            assert clip_fraction(x, fmt, "ceil") == 0
            # EVEN bumps the exponent where the max rounds up to 2^(emax + 1): enough when max_elem has all
            # mantissa bits set (6, 7.5), not for E4M3, whose 1.111 x 2^8 is NaN (480 still clips to 448)
            assert clip_fraction(x, fmt, "even") == (clipped if fmt == "mxfp8_e4m3" else 0)
    assert clip_fraction(np.zeros((2, 32), F32), "mxfp4") == 0


def test_pack_fp4_roundtrip_low_nibble_first():
    c = np.arange(16, dtype=np.uint8).reshape(2, 8)
    p = pack_fp4(c)
    assert p[0, 0] == 0x10 and p[1, 3] == (15 << 4 | 14)
    assert (unpack_fp4(p) == c).all()


# ---- the Numba kernels equal the readable reference ---------------------------------------------------

def same(a, b):
    """Equal arrays of equal dtype, float32 compared by bit pattern."""
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and not (bits(a) != bits(b)).any()


def edge_values(fmt):
    """float32 values at an element format's edges, for blocks scaled by 2^k: its values, midpoints (ties)
    and one float32 step either side, max and beyond, zeros, float32 subnormals, a float32 max."""
    f = FORMATS[MX_FORMATS[fmt][0]] if fmt != "nvfp4" else mx.E2M1
    v = f.values().astype(np.float64)
    core = np.concatenate([v, (v[:-1] + v[1:]) / 2, [f.max * 1.0625, 0.0]]).astype(F32)
    core = np.concatenate([core, np.nextafter(core, F32(np.inf)), np.nextafter(core, F32(-np.inf))])
    return st.one_of(st.sampled_from(list(core)), st.sampled_from([F32(0), F32(-0.0), F32(1e-45), F32(-3e-39),
                                                                  F32(3.4e38), F32(-3.4e38)]),
                     st.floats(-1e4, 1e4, width=32))


def edge_blocks(fmt, block):
    """[rows, blocks * block] arrays of edge values, each block scaled by its own 2^k (k in -140..120),
    some blocks all zero."""
    return st.tuples(st.integers(1, 3), st.integers(1, 4)).flatmap(lambda rb: st.tuples(
        hnp.arrays(F32, (rb[0], rb[1] * block), elements=edge_values(fmt)),
        hnp.arrays(np.int64, (rb[0], rb[1]), elements=st.integers(-140, 120)),
        hnp.arrays(np.bool_, (rb[0], rb[1])))).map(lambda a: _scaled(*a, block))


def _scaled(x, k, zero, block):
    with np.errstate(over="ignore", under="ignore"):
        y = (x.astype(np.float64) * np.repeat(2.0 ** k, block, -1)).astype(F32)
    y[np.repeat(zero, block, -1)] = 0
    return np.where(np.isfinite(y), y, F32(3.4e38) * np.sign(y)).astype(F32)


@settings(deadline=None)
@given(data=st.data(), fmt=st.sampled_from(sorted(MX_FORMATS)), rule=st.sampled_from(SCALE_RULES),
       block=st.sampled_from([32, 16, 8, 1, 24]))
def test_mx_kernel_equals_reference(data, fmt, rule, block):
    """Codes, E8M0 scales and dequantized values, bit for bit, on edge values in every format, scale rule
    and block size (the torch path runs the reference, tested against NumPy above)."""
    x = data.draw(edge_blocks(fmt, block))
    t, r = quantize(x, fmt, scale_rule=rule, block_size=block), quantize_reference(x, fmt, scale_rule=rule,
                                                                                    block_size=block)
    assert same(t.codes, r.codes) and same(t.scales, r.scales)
    assert same(t.dequantize(), dequantize_reference(r))
    assert same(quantize(x.astype(np.float64), fmt, scale_rule=rule, block_size=block).codes, r.codes)


@settings(deadline=None)
@given(data=st.data(), two_level=st.booleans())
def test_nvfp4_kernel_equals_reference(data, two_level):
    x = data.draw(edge_blocks("nvfp4", 16))
    try:
        r = quantize_nvfp4_reference(x, two_level=two_level)
    except ValueError as e:                        # 0 * Inf on a tiny tensor (see the next test)
        with pytest.raises(ValueError, match=re.escape(str(e))):
            quantize_nvfp4(x, two_level=two_level)
        return
    t = quantize_nvfp4(x, two_level=two_level)
    assert same(t.codes, r.codes) and same(t.block_scales, r.block_scales)
    assert type(t.tensor_scale) is type(r.tensor_scale) and same(t.tensor_scale, r.tensor_scale)
    assert same(t.dequantize(), dequantize_reference(r))


def test_kernels_equal_reference_across_chunks():
    """Arrays of several parallel chunks (an odd number of NVFP4 blocks, a ragged last chunk)."""
    x = np.random.default_rng(3).standard_normal((3, 16 * 701)).astype(F32) * F32(30)
    x[1, 100:300] = 0
    for fmt in MX_FORMATS:
        t, r = quantize(x[:, :32 * 350], fmt, scale_rule="even"), quantize_reference(x[:, :32 * 350], fmt,
                                                                                       scale_rule="even")
        assert same(t.codes, r.codes) and same(t.scales, r.scales) and same(t.dequantize(), dequantize_reference(r))
    for two_level in (True, False):
        t, r = quantize_nvfp4(x, two_level=two_level), quantize_nvfp4_reference(x, two_level=two_level)
        assert same(t.codes, r.codes) and same(t.block_scales, r.block_scales)
        assert same(t.dequantize(), dequantize_reference(r))
    t = quantize_nvfp4(x[:1])                       # one row: 701 blocks, the last one unpaired
    assert same(t.dequantize(), dequantize_reference(t))


def test_nvfp4_tiny_tensor_raises_like_the_reference():
    """amax below 2688 * 2^-128: 1 / pts is Inf (as in torchao), and 0 * Inf is NaN, which E2M1 cannot
    hold: both paths raise the same error; without a zero both give ±6 codes."""
    x = np.full((1, 16), 1e-37, F32)
    assert same(quantize_nvfp4(x).codes, quantize_nvfp4_reference(x).codes)
    x[0, 3] = 0
    for q in (quantize_nvfp4, quantize_nvfp4_reference):
        with pytest.raises(ValueError, match="x contains NaN, which float4_e2m1fn cannot represent"):
            q(x)


@pytest.mark.parametrize("fmt", [*sorted(MX_FORMATS), "nvfp4"])
def test_dequantize_kernel_on_any_codes(fmt):
    """Every element code (NaN and Inf ones too) with every scale code (0: 2^-127, 255: Inf): the kernel
    equals the reference bit for bit; a code beyond the format raises the reference's error."""
    rng = np.random.default_rng(0)
    f = mx.E2M1 if fmt == "nvfp4" else FORMATS[MX_FORMATS[fmt][0]]
    k = 16 if fmt == "nvfp4" else 32
    codes = rng.integers(0, f.max_code + 1, (256, k)).astype(np.uint8)
    scales = np.arange(256, dtype=np.uint8)[:, None]
    if fmt == "nvfp4":
        ts = [None, F32(0.37), np.asarray(F32(3e-3))]
        tensors = [NVFP4Tensor(codes, scales, s, codes.shape) for s in ts]
    else:
        tensors = [MXTensor(codes, scales, fmt, codes.shape, k)]
    for t in tensors:
        with np.errstate(over="ignore", invalid="ignore"):
            assert same(t.dequantize(), dequantize_reference(t))
        if f.max_code < 255:
            codes[7, 3] = f.max_code + 1
            with pytest.raises(ValueError, match=f"codes must be in 0..{f.max_code}"):
                t.dequantize()
            codes[7, 3] = 0


@pytest.mark.parametrize("where", [0, 31, 32 * 7 + 5, -1])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_kernels_find_nan_and_inf_in_their_own_pass(where, bad):
    x = np.random.default_rng(1).standard_normal((4, 256)).astype(F32)
    x.reshape(-1)[where] = bad
    ragged = np.concatenate([x, x[:, :4]], 1)                             # 260: no block size divides it
    for q, a in ((lambda a: quantize(a, "mxfp4"), x), (quantize_nvfp4, x), (lambda a: quantize_reference(a, "mxfp4"), x),
                 (lambda a: quantize(a, "mxfp8_e4m3", block_size=24), ragged), (quantize_nvfp4, ragged)):
        with pytest.raises(ValueError, match="x contains NaN or Inf"):      # reported before the block size
            q(a)


def test_element_codecs_equal_chapter_01():
    """The kernels' element encoder (saturating) and decoder equal chapter 01's reference on the boundary
    values and every code of each element format (E4M3 also as NVFP4's block scale)."""
    enc, dec = py_func(mx_kernels._encode_sat), py_func(mx_kernels._decode_one)
    for name in {v[0] for v in MX_FORMATS.values()}:
        f = FORMATS[name]
        v = f.values().astype(np.float64)
        x = np.concatenate([v, (v[:-1] + v[1:]) / 2, [f.max * 2, 1e-40, 3e38]]).astype(F32)
        x = np.concatenate([x, -x, np.nextafter(x, F32(0))])
        want = encode_reference(x, f, saturate=True)
        got = [enc(F32(xi), *encode_consts(f, True)[:5]) for xi in x]
        assert got == want.tolist(), name
        c = np.arange(f.max_code + 1)
        got = np.array([dec(int(ci), *decode_consts(f)[:5]) for ci in c], F32)
        assert same(got, decode_reference(c, f)), name


def test_kernels_run_as_plain_python():
    """NUMBA_DISABLE_JIT=1 runs the kernels' Python bodies (a learner's debugger): the same bytes."""
    x = np.random.default_rng(2).standard_normal((2, 64)).astype(F32) * F32(10)
    x[1, :32] = 0
    X = x.reshape(-1, 32)
    f, r = mx.E2M1, quantize_reference(x, "mxfp4", scale_rule="rceil")
    P, S = np.empty(X.shape, np.uint8), np.empty(4, np.uint8)
    assert not py_func(mx_kernels._mx_quantize)(X, X.view(np.int32), P, S, 1, 2, F32(6), *encode_consts(f, True)[:5])
    assert same(P.reshape(x.shape), r.codes) and same(S.reshape(2, 2), r.scales)
    Y = np.empty(X.shape, F32)
    py_func(mx_kernels._mx_dequantize)(P, S, Y, *decode_consts(f)[:5])
    assert same(Y.reshape(x.shape), dequantize_reference(r))
    X = x.reshape(-1, 16)
    A = np.empty(8, np.int32)
    py_func(mx_kernels._nvfp4_amax)(X.view(np.int32), A)
    r = quantize_nvfp4_reference(x)
    P, S = np.empty(X.shape, np.uint8), np.empty(8, np.uint8)
    e4, e2 = mx.E4M3, mx.E2M1
    assert py_func(mx_kernels._nvfp4_quantize)(X, A.view(F32), r.tensor_scale, True, P, S, encode_consts(e4, True)[:5],
                                              encode_consts(e2, True)[:5], decode_consts(e4)[:5]) == 0
    assert same(P.reshape(x.shape), r.codes) and same(S.reshape(2, 4), r.block_scales)
    Y = np.empty(X.shape, F32)
    py_func(mx_kernels._nvfp4_dequantize)(P, S, r.tensor_scale, True, Y, decode_consts(e4)[:5], decode_consts(e2)[:5])
    assert same(Y.reshape(x.shape), dequantize_reference(r))


# ---- bad inputs -------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, match", [
    (dict(fmt="mxfp5"), "fmt"), (dict(scale_rule="round"), "scale_rule"), (dict(block_size=24), "block_size"),
    (dict(block_size=0), "block_size"), (dict(block_size=2.0), "block_size")])
def test_bad_arguments(kwargs, match):
    args = dict(fmt="mxfp4") | kwargs
    fmt = args.pop("fmt")
    with pytest.raises((ValueError, TypeError), match=match):
        quantize(np.ones((2, 64), F32), fmt, **args)


@pytest.mark.parametrize("x", [np.array([np.nan] * 32, F32), np.array([np.inf] + [1] * 31, F32),
                               np.zeros((0, 32), F32), np.array(1.0, F32), np.arange(32),
                               np.full(32, 1e300), [1.0] * 32])
def test_bad_x(x):
    with pytest.raises((ValueError, TypeError), match="x"):
        quantize(x, "mxfp8_e4m3")
    with pytest.raises((ValueError, TypeError), match="x"):
        quantize_nvfp4(x if not isinstance(x, np.ndarray) or x.ndim != 1 else x[:16])


def test_nvfp4_bad_inputs():
    with pytest.raises(ValueError, match="block_size"):
        quantize_nvfp4(np.ones((2, 24), F32))
    with pytest.raises(TypeError, match="two_level"):
        quantize_nvfp4(np.ones((2, 32), F32), two_level=1)
    with pytest.raises(TypeError, match="t must"):
        mx.dequantize(np.ones(3))


# ---- the weight protocol and the schemes ------------------------------------------------------------

@pytest.mark.parametrize("name, bpw", [("mxfp4", 4.25), ("mxfp6", 6.25), ("mxfp8", 8.25), ("mxfp8-e5m2-rceil", 8.25),
                                       ("mxfp6-e3m2", 6.25), ("mxfp4-rceil", 4.25), ("nvfp4", 4.5 + 32 / (64 * 128)),
                                       ("nvfp4-1l", 4.5)])
def test_schemes_and_bits_per_weight(name, bpw):
    W = np.random.default_rng(0).standard_normal((64, 128)).astype(F32)
    s = registry.get(name)
    Wq = s.quantize_weight(W)
    assert isinstance(Wq, MXWeight) and Wq.shape == (64, 128)
    assert Wq.bits_per_weight == pytest.approx(bpw) and Wq.nbytes == int(bpw * 64 * 128 / 8 + 0.5)
    rel = float(np.mean((Wq.dequantize() - W) ** 2) / np.mean(W**2))
    assert rel < {"mxfp8": 5e-3, "mxfp6": 1e-2}.get(name[:5], 3e-2)
    assert registry.family_of(name) == "mx"


def test_scheme_family_lists():
    fam = {f.name: f for f in registry.families()}["mx"]
    assert fam.defaults == ("mxfp8", "mxfp6", "mxfp4", "nvfp4") and fam.quick == ()
    with pytest.raises(ValueError, match="unknown scheme"):
        registry.get("mxfp5")
    with pytest.raises(ValueError, match="2-D"):
        MXWeight.quantize(np.ones(64, F32), "mxfp4")
