"""minq.mx: OCP MX (MXFP8/6/4, four scale rules) and NVFP4, torch path, clip fraction and schemes.

Oracle: data/mx/golden.npz, torchao 0.18.0's own codes, scales and dequantized values on a CPU
(scripts/make_mx_golden.py; CI has no torchao). Every comparison is bit for bit; the two places where
minq departs from torchao on purpose (scale code 0, RCEIL's float32 log2) are pinned down exactly.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from minq import mx, registry
from minq.formats import FORMATS
from minq.mx import (
    MX_FORMATS,
    SCALE_RULES,
    MXWeight,
    clip_fraction,
    pack_fp4,
    quantize,
    quantize_nvfp4,
    unpack_fp4,
)

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
