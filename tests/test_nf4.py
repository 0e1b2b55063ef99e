"""minq.nf4: NF4 (QLoRA / bitsandbytes), its Numba kernels, torch path, double quantization and schemes.

Oracle: data/nf4/golden.npz, bitsandbytes 0.50.2's own bytes, absmax, dequantized values and double-quant
state on a CPU (scripts/make_nf4_golden.py; CI has no bitsandbytes). Every comparison is bit for bit.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from minq import nf4, nf4_kernels, registry
from minq.nf4 import (
    CODEBOOK,
    DYNAMIC_MAP,
    MIDPOINTS,
    NF4Weight,
    dequantize,
    dequantize_absmax,
    dequantize_reference,
    quantize,
    quantize_absmax,
    quantize_reference,
)

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "nf4" / "golden.npz"
Z = np.load(GOLDEN)
META = json.loads(str(Z["meta"]))
CASES = sorted(META["cases"])
DQ_CASES = [c for c in CASES if np.isfinite(Z[f"{c}.dq_offset"])] + ["stats"]
F32 = np.float32
MAX_HALF_GAP = float(np.max(np.diff(CODEBOOK)) / 2)                  # 0.152: between -1 and -0.696


def bits(a):
    a = np.asarray(a)
    return a.view(np.uint32) if a.dtype == F32 else a


def mismatches(got, want) -> int:
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype, (got.shape, got.dtype, want.shape, want.dtype)
    return int((bits(got) != bits(want)).sum())


def case(name):
    c = META["cases"][name]
    return Z[f"x_{c['set']}"], c["block"]


# ---- bitsandbytes' tables and bytes -----------------------------------------------------------------

def test_golden_file_is_complete():
    assert META["bitsandbytes"] == "0.50.2" and len(CASES) == 11
    for c in CASES:
        assert all(f"{c}.{k}" in Z.files for k in ("packed", "absmax", "xhat", "dq_offset", "dq_codes", "dq_xhat"))


def test_tables_equal_bitsandbytes():
    """The hard-coded codebook and dynamic map are bitsandbytes' float32 values; the midpoints its CUDA
    kernel's decision thresholds (dQuantizeNF4)."""
    assert mismatches(CODEBOOK, Z["code_nf4"]) == 0 and mismatches(DYNAMIC_MAP, Z["code_dynamic"]) == 0
    cuda = [-0.8480964004993439, -0.6106329262256622, -0.4599952697753906, -0.33967943489551544,
            -0.23460740596055984, -0.13791173323988914, -0.045525018125772476, 0.03979014977812767,
            0.1202552504837513, 0.2035212516784668, 0.2920137718319893, 0.3893125355243683,
            0.5016634166240692, 0.6427869200706482, 0.8614784181118011]
    assert mismatches(MIDPOINTS, np.array(cuda, F32)) == 0
    assert CODEBOOK[7] == 0 and (np.diff(CODEBOOK) > 0).all() and (np.diff(DYNAMIC_MAP) > 0).all()


@pytest.mark.parametrize("path", ["kernel", "reference", "torch"])
@pytest.mark.parametrize("name", CASES)
def test_nf4_equals_bitsandbytes(name, path):
    """Packed bytes, absmax and dequantized values of bitsandbytes, 0 mismatches, on every path."""
    x, bs = case(name)
    packed, absmax, xhat = Z[f"{name}.packed"], Z[f"{name}.absmax"], Z[f"{name}.xhat"]
    if path == "torch":
        torch = pytest.importorskip("torch")
        p, a = (t.numpy() for t in quantize(torch.from_numpy(x), bs))
        y = dequantize(torch.from_numpy(packed), torch.from_numpy(absmax), x.shape, bs).numpy()
    else:
        q, d = (quantize, dequantize) if path == "kernel" else (quantize_reference, dequantize_reference)
        (p, a), y = q(x, bs), d(packed, absmax, x.shape, bs)
    assert (mismatches(p, packed), mismatches(a, absmax), mismatches(y, xhat)) == (0, 0, 0)


@pytest.mark.parametrize("name", DQ_CASES)
def test_double_quant_equals_bitsandbytes(name):
    """Given bitsandbytes' offset: its codes (default backend), absmax2, dequantized absmax and values."""
    offset = Z[f"{name}.dq_offset"]
    codes, absmax2, off = quantize_absmax(Z[f"{name}.dq_in"], offset=offset)
    assert (mismatches(codes, Z[f"{name}.dq_codes"]), mismatches(absmax2, Z[f"{name}.dq_absmax2"])) == (0, 0)
    assert bits(off) == bits(offset)
    n = len(codes)
    absmax_hat = dequantize_absmax(Z[f"{name}.dq_codes"], Z[f"{name}.dq_absmax2"], offset, n)
    assert mismatches(absmax_hat, Z[f"{name}.dq_absmax_hat"]) == 0
    if name != "stats":
        x, bs = case(name)
        assert mismatches(dequantize(Z[f"{name}.packed"], absmax_hat, x.shape, bs), Z[f"{name}.dq_xhat"]) == 0


def test_offset_within_one_float32_step_of_bitsandbytes():
    """minq's offset is the float64 mean rounded once; bitsandbytes' torch's float32 mean (its order
    depends on the CPU): at most one float32 step apart."""
    steps = [int(bits(quantize_absmax(Z[f"{c}.dq_in"])[2]).astype(np.int64) - bits(Z[f"{c}.dq_offset"]))
             for c in DQ_CASES]
    assert max(map(abs, steps)) <= 1, steps


def test_offset_of_huge_absmax_stays_finite():
    """absmax near float32's max: bitsandbytes' float32 mean overflows to inf (its state is NaN); minq's
    float64 mean does not, and the absmax values come back finite."""
    a = Z["extreme_b64.dq_in"]
    assert np.isinf(Z["extreme_b64.dq_offset"])
    codes, absmax2, offset = quantize_absmax(a)
    assert np.isfinite(offset) and offset <= a.max()
    assert np.isfinite(dequantize_absmax(codes, absmax2, offset, len(a))).all()


def test_cpu_lut_kernel_differences_are_near_midpoints():
    """bitsandbytes' C++ CPU kernel looks codes up in 65536 bins over [-1, 1]: where it differs from the
    nearest code (minq, its default backend, its CUDA rule) the codes are neighbours and the scaled value
    lies within a bin of their midpoint."""
    mid = (DYNAMIC_MAP[:-1] + DYNAMIC_MAP[1:]) / F32(2)
    total = 0
    for c in DQ_CASES:
        got, cpu = Z[f"{c}.dq_codes"].astype(int), Z[f"{c}.dq_codes_cpu"].astype(int)
        where = np.flatnonzero(got != cpu)
        total += len(where)
        s = (Z[f"{c}.dq_in"][where] - Z[f"{c}.dq_offset"]) * (F32(1) / Z[f"{c}.dq_absmax2"][where // 256])
        assert (abs(got[where] - cpu[where]) == 1).all()
        assert (abs(s - mid[np.minimum(got[where], cpu[where])]) <= 1.5 / 65535).all()
    assert total > 0


@pytest.mark.torch
def test_torch_on_every_device_equals_bitsandbytes(device):
    """The torch path on each device present (CPU; CUDA where there is one) gives bitsandbytes' bytes."""
    torch = pytest.importorskip("torch")
    for name in CASES:
        x, bs = case(name)
        p, a = quantize(torch.from_numpy(x).to(device), bs)
        assert p.device.type == device and a.dtype == torch.float32
        y = dequantize(p, a, x.shape, bs)
        assert mismatches(p.cpu().numpy(), Z[f"{name}.packed"]) == 0
        assert mismatches(y.cpu().numpy(), Z[f"{name}.xhat"]) == 0


# ---- properties -------------------------------------------------------------------------------------

blocks = st.sampled_from([2, 4, 32, 64, 100, 128, 256])
scales = st.sampled_from([1e-30, 1e-3, 1.0, 1e3, 1e30])
vectors = st.integers(1, 700).flatmap(lambda n: hnp.arrays(F32, n, elements=st.floats(-1e4, 1e4, width=32)))


@given(x=vectors, scale=scales, block=blocks)
def test_kernel_equals_reference(x, scale, block):
    x = x * F32(scale)
    p, a = quantize(x, block)
    pr, ar = quantize_reference(x, block)
    assert (mismatches(p, pr), mismatches(a, ar)) == (0, 0)
    assert mismatches(dequantize(p, a, x.shape, block), dequantize_reference(p, a, x.shape, block)) == 0


@pytest.mark.torch
@given(x=vectors, scale=scales, block=blocks)
def test_torch_cpu_equals_numpy(x, scale, block):
    torch = pytest.importorskip("torch")
    x = x * F32(scale)
    p, a = quantize(x, block)
    pt, at = quantize(torch.from_numpy(x), block)
    assert (mismatches(pt.numpy(), p), mismatches(at.numpy(), a)) == (0, 0)
    assert mismatches(dequantize(pt, at, x.shape, block).numpy(), dequantize(p, a, x.shape, block)) == 0
    c, a2, off = quantize_absmax(a, 16)
    ct, a2t, offt = quantize_absmax(at, 16)
    assert (mismatches(ct.numpy(), c), mismatches(a2t.numpy(), a2), mismatches(offt.numpy(), np.asarray(off))) == (0,) * 3
    assert mismatches(dequantize_absmax(ct, a2t, offt, len(a), 16).numpy(), dequantize_absmax(c, a2, off, len(a), 16)) == 0


def _per_value_absmax(a, n, block):
    return np.repeat(a, block)[:n]


@given(x=vectors, scale=scales, block=blocks)
def test_round_trip_error_bound(x, scale, block):
    """|x - x_hat| <= absmax * (the largest half-gap of the codebook), per block whose absmax >= 1e-38
    (a smaller one is scaled by 1e38, not 1 / absmax, as in bitsandbytes)."""
    x = x * F32(scale)
    p, a = quantize(x, block)
    err = np.abs(x.astype(np.float64) - dequantize(p, a, x.shape, block))
    am = _per_value_absmax(a, x.size, block).astype(np.float64)
    ok = am >= 1e-38
    assert (err[ok] <= am[ok] * MAX_HALF_GAP * (1 + 1e-5)).all()


@given(x=vectors, scale=scales, block=blocks)
def test_dequantized_values_lie_on_the_grid(x, scale, block):
    """dequantize(quantize(x)) quantizes to the same bytes and absmax: idempotent on its own grid."""
    x = x * F32(scale)
    p, a = quantize(x, block)
    assume(((a == 0) | (a >= 1e-30)).all())
    y = dequantize(p, a, x.shape, block)
    p2, a2 = quantize(y, block)
    assert (mismatches(p2, p), mismatches(a2, a)) == (0, 0)


def test_layout_first_element_in_the_high_nibble():
    x = np.array([1.0, -1.0, 0.0, 0.5, -0.3], F32)                   # codes 15, 0, 7, 12, 4 (+ pad 7)
    p, a = quantize(x, 6)
    assert p.tolist() == [0xF0, 0x7C, 0x47] and a.tolist() == [1.0]
    assert dequantize(p, a, 5, 6).tolist() == [1.0, -1.0, 0.0, float(CODEBOOK[12]), float(CODEBOOK[4])]


def test_ties_go_to_the_lower_code():
    """x on a midpoint (absmax 1, so the scaled value is x itself) takes the lower of the two codes."""
    x = np.concatenate([[1.0], MIDPOINTS]).astype(F32)
    p, _ = quantize(x, 16)
    q = np.stack([p >> 4, p & 15], 1).reshape(-1)
    assert q[1:16].tolist() == list(range(15))
    assert quantize(np.nextafter(x, F32(2)), 16)[0].tolist() != p.tolist()


def test_zero_blocks():
    """A zero block: codes 7 (0.0); a full block stores absmax 0, the partial one the clamp 1e-38."""
    p, a = quantize(np.zeros(70, F32), 64)
    assert (p == 0x77).all() and a[0] == 0 and a[1] == F32(1e-38)
    assert (dequantize(p, a, 70, 64) == 0).all()


def test_kernels_run_as_plain_python():
    """NUMBA_DISABLE_JIT=1 runs the kernels' Python bodies (a learner's debugger): the same bytes."""
    from minq._jit import py_func

    x = np.random.default_rng(3).standard_normal(4 * 64).astype(F32).reshape(4, 64)
    x[1] = 0
    P, a = np.zeros((4, 32), np.uint8), np.empty(4, F32)
    assert not py_func(nf4_kernels._quantize_full)(x, x.view(np.int32), MIDPOINTS, P, a)
    p_ref, a_ref = quantize_reference(x, 64)
    assert np.array_equal(P.reshape(-1), p_ref) and mismatches(a, a_ref) == 0
    Y = np.empty((4, 64), F32)
    py_func(nf4_kernels._dequantize_full)(P, a, CODEBOOK, Y)
    assert mismatches(Y.reshape(-1), dequantize_reference(p_ref, a_ref, 256, 64)) == 0
    x[2, 5] = np.inf
    assert py_func(nf4_kernels._quantize_full)(x, x.view(np.int32), MIDPOINTS, P, a)


@pytest.mark.parametrize("where", [0, 1000, 64 * 40 + 63, 64 * 50 + 3])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_kernel_finds_nan_and_inf_in_its_own_pass(where, bad):
    """float32 input is checked inside the kernel (full blocks and the partial last one): the same
    error as the reference path's scan, and before a bad block_size, as there."""
    x = np.random.default_rng(4).standard_normal(64 * 50 + 10).astype(F32)
    x[where] = bad
    for q in (quantize, quantize_reference):
        with pytest.raises(ValueError, match="x contains NaN or Inf"):
            q(x)
        with pytest.raises(ValueError, match="x contains NaN or Inf"):
            q(x, 3)


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_other_float_dtypes_round_to_float32_first(dtype):
    x = np.random.default_rng(1).standard_normal((3, 50)).astype(dtype)
    assert all(np.array_equal(u, v) for u, v in zip(quantize(x), quantize(x.astype(F32))))


# ---- the quantized-weight protocol and the registry --------------------------------------------------

def test_nf4_weight_protocol_and_bits():
    W = np.random.default_rng(2).standard_normal((32, 100)).astype(F32)
    w = NF4Weight.quantize(W)
    assert w.shape == (32, 100) and not w.double_quant
    assert mismatches(w.dequantize(), dequantize(*quantize(W), W.shape)) == 0
    assert w.nbytes == 1600 + 4 * 50 and w.bits_per_weight == 4.5        # codes + a float32 absmax per 64
    d = NF4Weight.quantize(W, double_quant=True)
    assert d.nbytes == 1600 + 50 + 4 + 4                                  # + 8-bit codes, absmax2, offset
    assert np.abs(d.dequantize() - W).max() <= np.abs(w.dequantize() - W).max() * 1.5
    big = NF4Weight.quantize(np.ones((256, 1024), F32), double_quant=True)
    assert abs(big.bits_per_weight - (4 + 8 / 64 + 32 / (64 * 256) + 32 / 262144)) < 1e-12   # QLoRA's 4.127
    assert NF4Weight.quantize(W, 128).nbytes == 1600 + 4 * 25


@pytest.mark.torch
def test_nf4_weight_of_a_torch_tensor():
    torch = pytest.importorskip("torch")
    W = np.random.default_rng(2).standard_normal((8, 64)).astype(F32)
    for dq in (False, True):
        w, wt = NF4Weight.quantize(W, double_quant=dq), NF4Weight.quantize(torch.from_numpy(W), double_quant=dq)
        assert torch.is_tensor(wt.dequantize()) and wt.nbytes == w.nbytes
        assert mismatches(wt.dequantize().numpy(), w.dequantize()) == 0


def test_schemes_resolve():
    for name, block, dq in (("nf4", 64, False), ("nf4-dq", 64, True), ("nf4-b128", 128, False),
                            ("nf4-b32-dq", 32, True)):
        s = registry.get(name)
        w = s.quantize_weight(np.ones((4, 64), F32))
        assert isinstance(w, NF4Weight) and (w.block_size, w.double_quant) == (block, dq)
        assert registry.family_of(name) == "nf4"
    fam = next(f for f in registry.families() if f.name == "nf4")
    assert fam.defaults == ("nf4", "nf4-dq") and fam.quick == ()
    with pytest.raises(ValueError, match="even"):
        registry.get("nf4-b3")


# ---- bad input: a clear error naming the parameter ---------------------------------------------------

X = np.ones(10, F32)
P, A = quantize(X)


@pytest.mark.parametrize("call, err, word", [
    (lambda: quantize(np.array([1.0, np.nan], F32)), ValueError, "x"),
    (lambda: quantize(np.array([1.0, np.inf], F32)), ValueError, "x"),
    (lambda: quantize(np.zeros(0, F32)), ValueError, "x is empty"),
    (lambda: quantize(np.array(1.0, F32)), ValueError, "x must have at least one dimension"),
    (lambda: quantize(np.ones(4, np.int32)), TypeError, "x must have a floating"),
    (lambda: quantize([1.0, 2.0]), TypeError, "x must be a numpy array"),
    (lambda: quantize(np.array([1e39]), 64), ValueError, "float32"),
    (lambda: quantize(X, 3), ValueError, "block_size must be even"),
    (lambda: quantize(X, 0), ValueError, "block_size"),
    (lambda: quantize(X, -64), ValueError, "block_size"),
    (lambda: quantize(X, 64.0), TypeError, "block_size"),
    (lambda: quantize(X, True), TypeError, "block_size"),
    (lambda: dequantize(P[:-1], A, 10), ValueError, "packed holds 4"),
    (lambda: dequantize(P, A, 11), ValueError, "packed"),
    (lambda: dequantize(P, np.ones(2, F32), 10), ValueError, "absmax holds 2"),
    (lambda: dequantize(P, A, 10, 4), ValueError, "absmax"),
    (lambda: dequantize(P.astype(np.int8), A, 10), TypeError, "packed must be uint8"),
    (lambda: dequantize(P, A.astype(np.float64), 10), TypeError, "absmax must be float32"),
    (lambda: dequantize(P, np.array([np.nan], F32), 10), ValueError, "absmax contains NaN"),
    (lambda: dequantize(P, A, (0,)), ValueError, "shape"),
    (lambda: dequantize(P, A, (2.5, 4)), ValueError, "shape"),
    (lambda: dequantize(P, A, ()), ValueError, "shape"),
    (lambda: dequantize(P, A, 10, 7), ValueError, "block_size"),
    (lambda: dequantize(bytes(P), A, 10), TypeError, "packed"),
    (lambda: quantize_absmax(np.array([1.0, np.nan], F32)), ValueError, "absmax"),
    (lambda: quantize_absmax(A, 0), ValueError, "block_size"),
    (lambda: quantize_absmax(np.array([1e39])), ValueError, "absmax has values beyond float32"),
    (lambda: quantize_absmax(A, offset="0"), TypeError, "offset"),
    (lambda: quantize_absmax(A, offset=np.inf), ValueError, "offset"),
    (lambda: quantize_absmax(A, offset=np.ones(2, F32)), ValueError, "offset"),
    (lambda: dequantize_absmax(np.zeros(3, np.uint8), A, 0.0, 4), ValueError, "codes holds 3"),
    (lambda: dequantize_absmax(np.zeros(4, np.uint8), np.ones(2, F32), 0.0, 4), ValueError, "absmax2"),
    (lambda: dequantize_absmax(np.zeros(4, np.uint8), A, 0.0, 0), ValueError, "n must be"),
    (lambda: dequantize_absmax(np.zeros(4, F32), A, 0.0, 4), TypeError, "codes must be uint8"),
    (lambda: NF4Weight.quantize(X), ValueError, "W must be a 2-D"),
    (lambda: NF4Weight.quantize(X.reshape(2, 5), double_quant="yes"), TypeError, "double_quant"),
    (lambda: NF4Weight(P, (10,), absmax=A), ValueError, "shape"),
])
def test_bad_input_names_the_parameter(call, err, word):
    with pytest.raises(err, match=word):
        call()


@pytest.mark.torch
def test_mixed_libraries_rejected():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="absmax must be a torch tensor like packed"):
        dequantize(torch.from_numpy(P), A, 10)
    assert nf4.__doc__ and "notebooks/10_fp8_and_block_formats.ipynb" in nf4.__doc__
