"""Chapter 01 tests: minq.formats against ml_dtypes / numpy, exhaustively, plus properties.

Oracles: ``ml_dtypes`` casts (``x.astype(ml_dtype)``) and views (``codes.view(ml_dtype)``) for the
small formats and bfloat16, numpy's float16 for float16, the identity for float32. NaN results
are compared by NaN-ness, never by payload bits. The encode input set is boundary-dense
(``boundary_set`` below): every representable value ±, every midpoint, one float32 ulp either
side of both, the overflow tie and probes, all 65,536 bfloat16 patterns, specials, random bits and
random values, and the float32 subnormals (exponent field 0) densely.
Exact against ml_dtypes 0.7 (the dev extra pins the range; ml_dtypes 0.5/0.6 rounded float32
subnormals into E8M0 differently, see minq/formats.py).
"""

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from minq import formats
from minq import formats_kernels as fk
from minq._jit import py_func
from minq.formats import FORMATS, FloatFormat, decode_reference, encode_reference
from minq.testing import assert_equal

# the oracles' own casts warn on overflow and NaN; that is the behaviour under test
pytestmark = pytest.mark.filterwarnings("ignore:.*encountered in cast:RuntimeWarning")

NAMES = list(FORMATS)
SMALL = [n for n in NAMES if FORMATS[n].total_bits <= 16]


def np_dtype(name):
    """The oracle's dtype for a format name."""
    return {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16)}.get(name) or np.dtype(
        getattr(ml_dtypes, name))


def oracle_decode(name, codes):
    return np.asarray(codes, FORMATS[name].code_dtype).view(np_dtype(name)).astype(np.float32)


def oracle_encode(name, x):
    return x.astype(np_dtype(name)).view(FORMATS[name].code_dtype)


def f32(*vals):
    return np.array(vals, dtype=np.float64).astype(np.float32)


def bits_f32(*u):
    return np.array(u, dtype=np.uint32).view(np.float32)


def boundary_set(name, seed=0):
    """The boundary-dense encode input set for one format (float32, deduplicated by bit pattern)."""
    fmt, rng = FORMATS[name], np.random.default_rng(seed)
    parts = []
    if fmt.total_bits <= 16:
        v = fmt.values().astype(np.float64)                            # a. every finite value
        mid = (v[:-1] + v[1:]) / 2                                     # b. every midpoint (exact)
        ulp_max = 2.0 ** (fmt.emax - fmt.man_bits)
        probes = fmt.max + np.array([ulp_max / 2, ulp_max, fmt.max])   # c. overflow tie and beyond
        core = np.concatenate([v, mid, probes]).astype(np.float32)
        core = np.concatenate([core, -core])
        with np.errstate(over="ignore"):
            parts += [core, np.nextafter(core, np.float32(np.inf)),   # d. one ulp either side
                      np.nextafter(core, np.float32(-np.inf))]
    parts.append((np.arange(2**16, dtype=np.uint32) << 16).view(np.float32))   # e. all bfloat16
    parts.append(f32(0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan))              # f. specials
    parts.append(bits_f32(0x7F800001, 0xFF800001, 0x7FC00001, 0x00000001, 0x80000001, 0x007FFFFF))
    parts.append(rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32).view(np.float32))  # g.
    top = min(2 * fmt.max, 3e38)
    parts.append(rng.uniform(-top, top, 200_000).astype(np.float32))
    lo, hi = np.log2(fmt.smallest_subnormal) - 2, min(np.log2(fmt.max) + 2, 127.9)
    parts.append((rng.choice([-1, 1], 200_000) * 2 ** rng.uniform(lo, hi, 200_000)).astype(np.float32))
    parts.append(f32_subnormal_set(rng))                                                  # h.
    x = np.concatenate(parts)
    x = np.unique(x.view(np.uint32)).view(np.float32)
    if fmt.convention == "none":                                       # no NaN code: encode raises
        x = x[~np.isnan(x)]
    return x


def f32_subnormal_set(rng, n_random=200_000):
    """h. Float32 subnormals and their edge (exponent field 0, bit patterns 0x1 .. 0x7FFFFF), both signs:
    every power of two 2^-149 .. 2^-126 (the last is the smallest normal), one float32 ulp either side
    of each, the midpoints between neighbouring powers (1.5 * 2^k, exact from k = -148 on) with their
    ulp neighbours, and a dense random sample of exponent-field-0 patterns. ml_dtypes 0.7 changed how
    exactly this range rounds into E8M0; before this set no format's test looked at it closely."""
    p = 2.0 ** np.arange(-149, -125)                                   # 24 powers of two
    core = np.concatenate([p, 1.5 * p[:-1]]).astype(np.float32)        # the powers and their midpoints
    core = np.concatenate([core, np.nextafter(core, np.float32(0)), np.nextafter(core, np.float32(1))])
    rand = rng.integers(1, 0x800000, n_random, dtype=np.uint32).view(np.float32)
    x = np.concatenate([core, rand])
    return np.concatenate([x, -x])


_SETS = {}


def encode_set(name):
    if name not in _SETS:
        _SETS[name] = boundary_set(name)
    return _SETS[name]


def count_code_mismatches(name, got, want):
    """Mismatches: NaN-ness must agree; non-NaN codes must be equal. Asserts 0 and returns 0."""
    nan_got, nan_want = np.isnan(oracle_decode(name, got)), np.isnan(oracle_decode(name, want))
    assert_equal(nan_got, nan_want, name=f"{name}: NaN-ness of codes")
    assert_equal(got[~nan_want], want[~nan_want], name=f"{name}: codes")
    return int((nan_got != nan_want).sum() + (got[~nan_want] != want[~nan_want]).sum())


def sample_f32_codes(n=1_000_000, seed=1):
    rng = np.random.default_rng(seed)
    specials = np.array([0, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00000, 0x7F800001,
                         0x00000001, 0x807FFFFF, 0x7F7FFFFF, 0xFF7FFFFF, 0x00800000, 0xFFFFFFFF],
                        dtype=np.uint32)
    return np.concatenate([rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32), specials])


def all_codes(name):
    fmt = FORMATS[name]
    if fmt.total_bits > 16:
        return sample_f32_codes()
    return np.arange(fmt.max_code + 1, dtype=fmt.code_dtype)


# --- decode: every code -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_decode_every_code_matches_oracle(name):
    codes = all_codes(name)
    got = FORMATS[name].decode(codes)
    assert got.dtype == np.float32 and got.shape == codes.shape
    assert_equal(got, oracle_decode(name, codes), name=f"{name} decode")  # by value + sign bit, NaN==NaN
    print(f"{name}: decode {codes.size} codes, 0 mismatches")


@pytest.mark.parametrize("name", NAMES)
def test_format_constants_match_finfo(name):
    fmt = FORMATS[name]
    fi = np.finfo(np.float32) if name == "float32" else np.finfo(np.float16) if name == "float16" else \
        ml_dtypes.finfo(np_dtype(name))
    assert fmt.max == float(fi.max)
    assert fmt.smallest_normal == float(fi.smallest_normal)
    assert fmt.smallest_subnormal == float(fi.smallest_subnormal)
    assert fmt.total_bits == fi.bits                               # 4 and 6 for FP4/FP6, not the 8-bit storage
    assert fmt.max_code == 2**fmt.total_bits - 1
    assert FORMATS[name].decode(np.array([fmt.max_mag], fmt.code_dtype))[0] == fmt.max


# --- encode: the boundary-dense set -----------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_encode_matches_oracle(name):
    x = encode_set(name)
    got = FORMATS[name].encode(x)
    assert got.dtype == FORMATS[name].code_dtype and got.shape == x.shape
    n_bad = count_code_mismatches(name, got, oracle_encode(name, x))
    print(f"{name}: encode {x.size} inputs, {n_bad} mismatches")


def saturating_oracle(name, x):
    """OCP OFP8's SAT column differs from the non-saturating cast only where that cast turns a
    non-NaN input into Inf or NaN (finite overflow, ±Inf); there SAT gives ±max. So: take the
    ml_dtypes cast and replace exactly those results by the sign of x joined to the largest finite
    magnitude. E8M0 is unsigned: only positive inputs overflow (0 and negatives stay NaN)."""
    fmt = FORMATS[name]
    want = oracle_encode(name, x)
    over = ~np.isnan(x) & ~np.isfinite(oracle_decode(name, want))
    if fmt.convention == "fnu":
        over &= x > 0
    sat = (np.signbit(x).astype(np.int64) << (fmt.total_bits - 1)) * fmt.sign_bits | fmt.max_mag
    return np.where(over, sat, want).astype(fmt.code_dtype)


@pytest.mark.parametrize("name", NAMES)
def test_encode_saturating_matches_its_oracle(name):
    x = encode_set(name)
    got = FORMATS[name].encode(x, saturate=True)
    count_code_mismatches(name, got, saturating_oracle(name, x))
    finite = ~np.isnan(x) if FORMATS[name].convention != "fnu" else x > 0
    assert np.isfinite(FORMATS[name].decode(got[finite])).all()


def test_encode_known_values():
    """Hand-checked codes from the OCP OFP8 specification's format tables and rounding rules."""
    e4, e5 = FORMATS["float8_e4m3fn"], FORMATS["float8_e5m2"]
    assert list(e4.encode(f32(1.0, 448, 464, 464.01, -np.inf, 2**-10, 3 * 2**-10))) == \
        [0x38, 0x7E, 0x7E, 0x7F, 0xFF, 0x00, 0x02]
    assert list(e4.encode(f32(464.01, np.inf, -1e9), saturate=True)) == [0x7E, 0x7E, 0xFE]
    assert list(e5.encode(f32(1.0, 57344, 61439, 61440, np.nan))) == [0x3C, 0x7B, 0x7B, 0x7C, 0x7E]
    assert list(FORMATS["float8_e4m3fnuz"].encode(f32(-0.0, 241, 1e9, np.nan))) == [0x00, 0x7F, 0x80, 0x80]
    assert list(FORMATS["float4_e2m1fn"].encode(f32(0.25, 0.75, 2.5, 5, 7, -1e9, np.inf))) == \
        [0x0, 0x2, 0x4, 0x6, 0x7, 0xF, 0x7]
    e8 = FORMATS["float8_e8m0fnu"]
    assert list(e8.encode(f32(1, 1.5, 3, 0.75, 1.4999999, 0, -1, np.inf))) == \
        [127, 128, 129, 127, 127, 255, 255, 255]
    assert list(e8.encode(f32(np.inf, 3.4e38, -np.inf), saturate=True)) == [254, 254, 255]
    # float32 subnormals: nearest of 2^-127 (code 0) and 2^-126 (code 1), the tie 1.5 * 2^-127 up
    assert list(e8.encode(bits_f32(0x1, 0x400000, 0x400001, 0x5FFFFF, 0x600000, 0x7FFFFF))) == \
        [0, 0, 0, 0, 1, 1]


@pytest.mark.parametrize("name", ["float8_e4m3fn", "float8_e5m2", "float4_e2m1fn", "float6_e2m3fn"])
def test_suite_catches_a_ties_away_encoder(name, monkeypatch):
    """Mutation check: round half *away from zero* instead of to even, and the oracle comparison
    must fail. (The reference calls ``_round_shift`` by name, so the patch reaches it.)"""

    def ties_away(sig, k):
        q = sig >> k
        half = (1 << k) >> 1
        return q + ((sig - (q << k) >= half) & (half > 0))

    x = encode_set(name)
    want = oracle_encode(name, x)
    monkeypatch.setattr(formats, "_round_shift", ties_away)
    wrong = encode_reference(x, FORMATS[name]).astype(want.dtype)
    n_bad = int((wrong != want).sum())
    print(f"{name}: ties-away encoder, {n_bad} mismatches")
    assert n_bad > 0
    with pytest.raises(AssertionError, match="differ"):
        count_code_mismatches(name, wrong, want)


def test_suite_catches_the_old_e8m0_subnormal_rule(monkeypatch):
    """Mutation check: ml_dtypes < 0.7 rounded every float32 subnormal above 2^-127 up to 2^-126
    (code 1). The boundary set's subnormal part (h.) must catch that rule in the reference."""

    def old_rule(sign, a, exp, man, saturate, op):
        q = op.where(exp != 0, exp + (man >= 0x400000), op.where(man > 0x400000, 1, 0))
        q = op.where(q >= 255, 254 if saturate else 255, q)
        return op.where((sign == 1) | (a == 0) | (a > formats._F32_INF), 255, q)

    x = encode_set("float8_e8m0fnu")
    want = oracle_encode("float8_e8m0fnu", x)
    monkeypatch.setattr(formats, "_encode_e8m0_reference", old_rule)
    wrong = encode_reference(x, FORMATS["float8_e8m0fnu"]).astype(want.dtype)
    n_bad = int((wrong != want).sum())
    print(f"float8_e8m0fnu: old subnormal rule, {n_bad} mismatches")
    assert n_bad > 0
    with pytest.raises(AssertionError, match="differ"):
        count_code_mismatches("float8_e8m0fnu", wrong, want)


def test_suite_catches_a_saturating_e4m3fn():
    x = encode_set("float8_e4m3fn")
    wrong = FORMATS["float8_e4m3fn"].encode(x, saturate=True)
    with pytest.raises(AssertionError, match="differ"):
        count_code_mismatches("float8_e4m3fn", wrong, oracle_encode("float8_e4m3fn", x))


# --- Numba kernel == NumPy reference, bit for bit ----------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_kernels_equal_reference(name):
    fmt = FORMATS[name]
    x = encode_set(name)
    for saturate in (False, True):
        want = encode_reference(x, fmt, saturate=saturate).astype(fmt.code_dtype)
        assert_equal(fmt.encode(x, saturate=saturate), want, name=f"{name} encode")
    codes = all_codes(name)
    assert_equal(fmt.decode(codes).view(np.uint32), decode_reference(codes, fmt).view(np.uint32),
                 name=f"{name} decode bits")


@pytest.mark.parametrize("name", ["float8_e4m3fn", "float8_e5m2fnuz", "float4_e2m1fn", "float8_e8m0fnu",
                                  "bfloat16", "float32"])
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")   # NaN in NumPy scalar math
def test_python_body_of_kernels_equals_reference(name):
    """The kernels' pure-Python bodies (what runs under NUMBA_DISABLE_JIT=1) on a slice: the generic
    scalar kernels for every format, the fast chunk kernels where ``fast_ok``."""
    fmt, conv = FORMATS[name], formats.CONVENTIONS.index(FORMATS[name].convention)
    x = encode_set(name)[::200]
    codes = all_codes(name)[:4096]
    for sat in (False, True):
        want = encode_reference(x, fmt, saturate=sat)
        q = np.empty(x.size, np.uint32)
        n_nan = py_func(fk._encode_kernel)(x.view(np.uint32), q, fmt.exp_bits, fmt.man_bits, fmt.bias, conv,
                                           fmt.max_mag, sat)
        assert_equal(q, want.astype(np.uint32))
        assert n_nan == np.isnan(x).sum()
        if fk.fast_ok(fmt, encode=True):
            q = np.empty(x.size, fmt.code_dtype)
            n_nan = py_func(fk._encode_chunk)(x.view(np.int32), q, *fk.encode_consts(fmt, sat))
            assert_equal(q, want.astype(fmt.code_dtype))
            assert n_nan == np.isnan(x).sum()
    want = decode_reference(codes, fmt).view(np.uint32)
    bits = np.empty(codes.size, np.uint32)
    py_func(fk._decode_kernel)(codes.astype(np.uint32), bits, fmt.exp_bits, fmt.man_bits, fmt.bias, conv)
    assert_equal(bits, want)
    if fk.fast_ok(fmt, encode=False):
        y = np.empty(codes.size, np.float32)
        assert py_func(fk._decode_chunk)(codes, y, *fk.decode_consts(fmt)) == np.bitwise_or.reduce(codes)
        assert_equal(y.view(np.uint32), want)


def test_fast_kernels_cover_the_formats():
    """Every format but E8M0 encodes through the fast kernel (float32: decode only)."""
    assert [n for n in NAMES if not fk.fast_ok(FORMATS[n], encode=True)] == ["float32", "float8_e8m0fnu"]
    assert [n for n in NAMES if not fk.fast_ok(FORMATS[n], encode=False)] == ["float8_e8m0fnu"]


# custom layouts outside ``fast_ok`` (no mantissa bits, bias above 127) and inside it (chapter 10's clip
# check widens the exponent by one bit), each equal to the reference through whichever kernel runs
CUSTOM = [FloatFormat("e4m0", 1, 4, 0, 7, "fnuz"), FloatFormat("e3m0", 1, 3, 0, 3, "none"),
          FloatFormat("e5m2_b140", 1, 5, 2, 140, "ieee"), FloatFormat("e3m1_ext", 1, 3, 1, 1, "none"),
          FloatFormat("e6m2_ext", 1, 6, 2, 15, "none"), FloatFormat("e5m3_ext", 1, 5, 3, 7, "none")]


@pytest.mark.parametrize("fmt", CUSTOM, ids=lambda f: f.name)
def test_custom_formats_equal_reference(fmt):
    x = encode_set("float8_e4m3fn")
    x = x[~np.isnan(x)]
    for sat in (False, True):
        assert_equal(fmt.encode(x, saturate=sat), encode_reference(x, fmt, saturate=sat).astype(fmt.code_dtype))
    c = np.arange(fmt.max_code + 1, dtype=fmt.code_dtype)
    assert_equal(fmt.decode(c).view(np.uint32), decode_reference(c, fmt).view(np.uint32))


def edge_floats(fmt):
    """float32 values at a format's edges: its values and midpoints (ties), one float32 ulp either side,
    zeros, the overflow tie, float32 subnormals, ±Inf, NaN where the format has a NaN, any bit pattern."""
    grid = fmt.values().astype(np.float64)
    ulp_max = 2.0 ** (fmt.emax - fmt.man_bits)
    core = np.concatenate([grid, (grid[:-1] + grid[1:]) / 2, [fmt.max + ulp_max / 2, 0.0]]).astype(np.float32)
    core = np.concatenate([core, -core])
    with np.errstate(over="ignore"):
        core = np.concatenate([core, np.nextafter(core, np.float32(np.inf)), np.nextafter(core, np.float32(-np.inf))])
    if core.size > 4096:                                           # 16-bit formats: a sample
        core = np.random.default_rng(0).choice(core, 4096, replace=False)
    special = [np.inf, -np.inf] + ([np.nan, -np.nan] if fmt.convention != "none" else [])
    top = float(np.float32(min(2 * fmt.max, 3e38)))
    bits = st.integers(0, 2**32 - 1).map(lambda u: np.uint32(u).view(np.float32))
    sub = st.integers(0, 0x7FFFFF).map(lambda u: np.uint32(u).view(np.float32))
    if fmt.convention == "none":
        bits = bits.filter(lambda v: not np.isnan(v))
    return st.one_of(st.sampled_from(list(core) + [np.float32(v) for v in special]), bits, sub,
                     st.floats(-top, top, width=32))


@pytest.mark.parametrize("name", [n for n in SMALL if FORMATS[n].convention != "fnu"])
def test_fast_kernels_equal_reference_on_edges(name):
    """Property: the fast encode (both saturate modes) and decode equal the reference bit for bit on
    arrays of edge values, of any length (across chunk boundaries in test_kernels_equal_reference)."""
    fmt = FORMATS[name]

    @settings(deadline=None)
    @given(hnp.arrays(np.float32, st.integers(1, 300), elements=edge_floats(fmt)), st.booleans(),
           hnp.arrays(np.uint8 if fmt.total_bits <= 8 else np.uint16, st.integers(1, 300),
                      elements=st.integers(0, fmt.max_code)))
    def prop(x, saturate, codes):
        assert_equal(fmt.encode(x, saturate=saturate),
                     encode_reference(x, fmt, saturate=saturate).astype(fmt.code_dtype))
        assert_equal(fmt.decode(codes).view(np.uint32), decode_reference(codes, fmt).view(np.uint32))

    prop()


# --- torch path == NumPy path ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_torch_equals_numpy(name, device):
    torch = pytest.importorskip("torch")
    fmt = FORMATS[name]
    x = encode_set(name)
    xt = torch.from_numpy(x).to(device)
    want_dtype = torch.uint8 if fmt.total_bits <= 8 else torch.int32 if fmt.total_bits == 16 else torch.int64
    for saturate in (False, True):
        qt = fmt.encode(xt, saturate=saturate)
        assert qt.dtype == want_dtype and qt.device.type == device
        assert_equal(qt.cpu().numpy().astype(np.int64), fmt.encode(x, saturate=saturate).astype(np.int64),
                     name=f"{name} torch encode")
    codes = all_codes(name)
    ct = torch.from_numpy(codes.astype(np.int64)).to(device)
    if fmt.total_bits <= 8:
        ct = ct.to(torch.uint8)
    dt = fmt.decode(ct)
    assert dt.dtype == torch.float32 and dt.device.type == device
    assert_equal(dt.cpu().numpy().view(np.uint32), fmt.decode(codes).view(np.uint32),
                 name=f"{name} torch decode")
    # float16 / bfloat16 tensors are widened to float32 first; tensors that require grad are fine
    assert_equal(fmt.encode(xt[:1000].clone().requires_grad_(True)).cpu(), fmt.encode(xt[:1000]).cpu())
    assert_equal(fmt.encode(xt[:1000].to(torch.bfloat16)).cpu(),
                 fmt.encode(xt[:1000].to(torch.bfloat16).float()).cpu())


# --- properties --------------------------------------------------------------------------------------------


def floats_in_range(fmt):
    """float32 values inside the finite range (E8M0: positive normal float32 up to max)."""
    boundary = encode_set(fmt.name)
    if fmt.convention == "fnu":
        lo = 2.0**-126
        inside = boundary[(boundary >= lo) & (boundary <= fmt.max)]
        return st.one_of(st.floats(lo, fmt.max, width=32), st.sampled_from(list(inside[::50])))
    inside = boundary[np.abs(boundary) <= fmt.max]
    bits = st.integers(0, 2**32 - 1).map(lambda u: np.uint32(u).view(np.float32)).filter(
        lambda v: abs(float(v)) <= fmt.max)
    return st.one_of(st.floats(-fmt.max, fmt.max, width=32), bits, st.sampled_from(list(inside[::50])))


def as_array(elements):
    return hnp.arrays(np.float32, st.integers(1, 32), elements=elements)


@pytest.mark.parametrize("name", NAMES)
def test_roundtrip_is_nearest(name):
    fmt = FORMATS[name]
    grid = fmt.values().astype(np.float64) if fmt.total_bits <= 16 else None

    @given(as_array(floats_in_range(fmt)))
    def prop(x):
        x_hat = fmt.decode(fmt.encode(x)).astype(np.float64)
        x64 = x.astype(np.float64)
        err = np.abs(x64 - x_hat)
        binade = np.maximum(np.frexp(x64)[1] - 1, fmt.emin)          # floor(log2|x|), at least emin
        half_ulp = 2.0 ** (binade - fmt.man_bits - 1)
        assert (err <= half_ulp).all(), (x[err > half_ulp], x_hat[err > half_ulp])
        if grid is not None:                                       # and no representable value is closer
            best = np.abs(x64[:, None] - grid[None, :]).min(axis=1)
            assert (err <= best).all()

    prop()


@pytest.mark.parametrize("name", NAMES)
def test_encode_decode_code_roundtrip(name):
    fmt = FORMATS[name]

    @given(hnp.arrays(np.uint64, st.integers(1, 32), elements=st.integers(0, fmt.max_code)))
    def prop(c):
        c = c.astype(fmt.code_dtype)
        v = fmt.decode(c)
        keep = ~np.isnan(v)
        assert_equal(keep, ~np.isnan(oracle_decode(name, c)), name="which codes are NaN")
        if keep.any():
            assert_equal(fmt.encode(v[keep]), c[keep])

    prop()
    if fmt.total_bits <= 16:                                        # and exhaustively
        c = all_codes(name)
        v = fmt.decode(c)
        keep = ~np.isnan(v)
        assert_equal(fmt.encode(v[keep]), c[keep], name=f"{name} encode(decode(c))")


@pytest.mark.parametrize("name", NAMES)
def test_monotone(name):
    fmt = FORMATS[name]
    if fmt.convention == "fnu":
        elems = st.floats(0, None, exclude_min=True, width=32)
    else:
        elems = st.one_of(st.floats(width=32, allow_nan=False), floats_in_range(fmt))

    @given(as_array(elems), st.booleans())
    def prop(x, saturate):
        x = np.sort(x)
        if not saturate:                                            # overflow would give NaN
            x = x[np.abs(x) <= fmt.max]
            if x.size == 0:
                return
        x_hat = fmt.decode(fmt.encode(x, saturate=saturate))
        assert (np.diff(x_hat.astype(np.float64)) >= 0).all(), (x, x_hat)

    prop()


# --- shapes, dtypes and bad inputs -----------------------------------------------------------------------


def test_shapes_and_input_dtypes():
    fmt = FORMATS["float8_e4m3fn"]
    x = np.random.default_rng(0).standard_normal((3, 4, 5)).astype(np.float32) * 100
    q = fmt.encode(x)
    assert q.shape == (3, 4, 5) and q.dtype == np.uint8
    assert fmt.decode(q).shape == (3, 4, 5)
    assert fmt.encode(x[:, ::2].T).shape == (5, 2, 3)             # non-contiguous
    assert_equal(fmt.encode(x.astype(np.float64)), q)             # float64 -> float32 first
    h = x.astype(np.float16)
    assert_equal(fmt.encode(h), fmt.encode(h.astype(np.float32)))
    assert fmt.encode(np.array(1.0, np.float32)).shape == ()
    assert FORMATS["float16"].encode(x).dtype == np.uint16 and FORMATS["float32"].encode(x).dtype == np.uint32
    assert_equal(FORMATS["float32"].encode(x), x.view(np.uint32))
    assert_equal(fmt.decode(q.astype(np.uint32)), fmt.decode(q))  # wider code dtypes are fine
    assert_equal(fmt.decode(q[:, ::2].T), fmt.decode(q)[:, ::2].T)  # non-contiguous codes


def test_values_lists_the_grid():
    e2m1 = [-6, -4, -3, -2, -1.5, -1, -0.5, 0, 0.5, 1, 1.5, 2, 3, 4, 6]
    assert list(FORMATS["float4_e2m1fn"].values()) == e2m1
    assert FORMATS["float8_e4m3fn"].values().size == 253                  # 256 - 2 NaN - (-0)
    assert FORMATS["float8_e8m0fnu"].values().size == 255
    with pytest.raises(ValueError, match="16 bits"):
        FORMATS["float32"].values()


@pytest.mark.parametrize("bad, err, match", [
    (np.array([1, 2], np.int32), TypeError, "x must have a floating-point dtype"),
    ([1.0, 2.0], TypeError, "x must be a numpy array"),
    (np.array([], np.float32), ValueError, "x is empty"),
])
def test_encode_bad_x(bad, err, match):
    with pytest.raises(err, match=match):
        FORMATS["float8_e4m3fn"].encode(bad)


@pytest.mark.parametrize("name", ["float4_e2m1fn", "float6_e2m3fn", "float6_e3m2fn"])
def test_encode_nan_into_format_without_nan(name, device):
    torch = pytest.importorskip("torch")
    for x in (f32(1.0, np.nan), torch.tensor([np.nan], device=device)):
        with pytest.raises(ValueError, match="x contains NaN"):
            FORMATS[name].encode(x)


def test_encode_bad_saturate():
    with pytest.raises(TypeError, match="saturate"):
        FORMATS["float8_e4m3fn"].encode(f32(1.0), saturate="yes")


@pytest.mark.parametrize("bad, err, match", [
    (np.array([1.0], np.float32), TypeError, "codes must have an unsigned integer dtype"),
    (np.array([1], np.int8), TypeError, "codes must have an unsigned integer dtype"),
    (np.array([], np.uint8), ValueError, "codes is empty"),
    (np.array([0, 16], np.uint8), ValueError, "codes must be in 0..15"),
    (np.array([3, 300], np.uint16), ValueError, r"codes must be in 0..15 .* got values in 3..300"),
    (np.array([2**40, 1], np.uint64), ValueError, "codes must be in 0..15"),
    (np.array([[1, 2], [3, 17]], np.uint32)[:, ::-1], ValueError, "got values in 1..17"),
    ((1, 2), TypeError, "codes must be a numpy array"),
])
def test_decode_bad_codes(bad, err, match):
    with pytest.raises(err, match=match):
        FORMATS["float4_e2m1fn"].decode(bad)


def test_decode_bad_torch_codes(device):
    torch = pytest.importorskip("torch")
    with pytest.raises(ValueError, match="codes has negative codes"):
        FORMATS["float8_e5m2"].decode(torch.tensor([-1, 3], dtype=torch.int32, device=device))
    with pytest.raises(ValueError, match="codes must be in 0..255"):
        FORMATS["float8_e5m2"].decode(torch.tensor([0, 256], dtype=torch.int32, device=device))
    with pytest.raises(TypeError, match="codes"):
        FORMATS["float8_e5m2"].decode(torch.tensor([1.0], device=device))
    with pytest.raises(TypeError, match="x must have a floating-point dtype"):
        FORMATS["float8_e5m2"].encode(torch.tensor([1], device=device))


def test_unknown_format_and_convention():
    with pytest.raises(KeyError, match="known formats: float32, float16"):
        FORMATS["float8"]
    with pytest.raises(ValueError, match="convention must be one of"):
        FloatFormat("x", 1, 4, 3, 7, "ocp")
