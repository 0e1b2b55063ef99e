"""minq.kquants: llama.cpp's block types, byte for byte.

Oracles: llama.cpp's own quantizers (``quantize_row_<type>_ref`` of libggml-base, through the golden
file data/kquants/golden.npz that scripts/make_kquant_golden.py regenerates), gguf-py (quantizes the
legacy and ternary types bit-exactly, dequantizes every type), and the error figures that
llama.cpp's tests/test-quantize-fns.cpp prints, reproduced to all six printed digits.
"""

import json
import platform
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as GT
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from minq.kquants import (
    TYPES,
    GGMLWeight,
    dequantize,
    dequantize_reference,
    quantize,
    quantize_reference,
    row_bytes,
)

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "kquants" / "golden.npz"
LEGACY = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "TQ1_0", "TQ2_0")     # gguf-py quantizes these exactly
ALL = tuple(TYPES)
IQ = ("IQ4_NL", "IQ4_XS")


def _golden_cases():
    g = np.load(GOLDEN)
    return [(k.split("_", 2)[1], k.split("_", 2)[2]) for k in sorted(g.files) if k.startswith("q_")]


def test_golden_file_covers_every_type_and_set():
    """golden.npz: every type without an importance matrix, except the i-quants (their bytes, with and
    without one, are in golden_imatrix.npz: tests/test_kquants_imatrix.py)."""
    g = np.load(GOLDEN)
    meta = json.loads(str(g["meta"]))
    assert set(meta["types"]) == set(ALL) - set(IQ)
    assert {s for s, _ in _golden_cases()} == {"gauss", "student", "edge", "smollm2"}
    assert {t for _, t in _golden_cases()} == set(ALL) - set(IQ)
    for t, m in meta["types"].items():                   # the layouts agree with llama.cpp's block sizes
        assert (TYPES[t].block, TYPES[t].nbytes) == (m["block_elems"], m["block_bytes"])


@pytest.mark.parametrize("dataset, qtype", _golden_cases())
def test_bytes_equal_llama_cpp(dataset, qtype):
    g = np.load(GOLDEN)
    x, want = g[f"x_{dataset}"], g[f"q_{dataset}_{qtype}"]
    got = quantize(x, qtype)
    t = TYPES[qtype]
    differing = int((got.reshape(-1, t.nbytes) != want.reshape(-1, t.nbytes)).any(axis=1).sum())
    assert differing == 0, f"{differing} of {want.size // t.nbytes} {qtype} blocks differ from llama.cpp's"


@pytest.mark.parametrize("qtype", ALL)
def test_sizes_equal_gguf_py(qtype):
    assert (TYPES[qtype].block, TYPES[qtype].nbytes) == gguf.constants.GGML_QUANT_SIZES[getattr(GT, qtype)]
    assert row_bytes(qtype, 4 * TYPES[qtype].block) == 4 * TYPES[qtype].nbytes


# test-quantize-fns.cpp: data 0.1 + 2 cos(i), n = 4096, error sqrt(sum d^2) / n, as printed by llama.cpp
QUANTIZE_FNS = {"Q4_0": 0.001121, "Q4_1": 0.001144, "Q5_0": 0.000591, "Q5_1": 0.000556, "Q8_0": 0.000074,
                "Q2_K": 0.004672, "Q3_K": 0.002510, "Q4_K": 0.000982, "Q5_K": 0.000531, "Q6_K": 0.000261,
                "TQ1_0": 0.008681, "TQ2_0": 0.008681}


@pytest.mark.parametrize("qtype", QUANTIZE_FNS)      # IQ4_NL's figure there is its *_ref variant's, not minq's
def test_quantize_fns_error_figures(qtype):
    n = 4096
    x = (0.1 + 2 * np.cos(np.arange(n, dtype=np.float32))).astype(np.float32)
    x_hat = dequantize(quantize(x, qtype), qtype, x.shape)
    err = np.sqrt(((x_hat.astype(np.float64) - x) ** 2).sum()) / n
    assert round(err, 6) == QUANTIZE_FNS[qtype]


rows_of_blocks = st.integers(1, 3).flatmap(lambda r: st.integers(1, 2).flatmap(lambda k: hnp.arrays(
    np.float32, (r, 256 * k), elements=st.floats(-1e3, 1e3, width=32))))


@pytest.mark.parametrize("qtype", LEGACY)
@given(x=rows_of_blocks)
def test_legacy_bytes_equal_gguf_py(qtype, x):
    """gguf-py follows ggml except where ggml's own result is undefined or gguf-py slips: a block whose
    1 / d overflows (amax ~1e-38 and below: C converts inf to an integer) and a block of -0.0 (ggml
    starts its max at +0.0; gguf-py takes the -0.0). Those are left out here; test_zeros_... pins -0.0."""
    x = np.where(np.abs(x) < 1e-30, np.float32(0), x) + np.float32(0)          # no tiny values, no -0.0
    assert np.array_equal(quantize(x, qtype), gguf.quants.quantize(x, getattr(GT, qtype)))


@pytest.mark.parametrize("qtype", ALL)
@given(x=rows_of_blocks, scale=st.sampled_from([1e-4, 1.0, 50.0]))
def test_dequantize_equals_gguf_py(qtype, x, scale):
    data = quantize(x * np.float32(scale), qtype)
    got = dequantize(data, qtype, x.shape)
    want = gguf.quants.dequantize(data, getattr(GT, qtype)).reshape(x.shape)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("qtype", ALL)
def test_dequantize_of_arbitrary_bytes_equals_gguf_py(qtype):
    """Every code and scale byte, not only what the quantizer writes (fp16 scales kept finite)."""
    t = TYPES[qtype]
    rng = np.random.default_rng(1)
    y = np.frombuffer(rng.integers(0, 256, 64 * t.nbytes, dtype=np.uint8).tobytes(), t.layout).copy()
    for f in ("d", "dmin", "m"):
        if f in t.layout.names:
            y[f] = rng.standard_normal(len(y)).astype(np.float16)
    data = y.view(np.uint8).reshape(4, -1)
    shape = (4, 16 * t.block)
    want = gguf.quants.dequantize(data, getattr(GT, qtype)).reshape(shape)
    assert np.array_equal(dequantize(data, qtype, shape).view(np.uint32), want.view(np.uint32))


# --- the Numba kernels equal the readable NumPy code ----------------------------------------------

@pytest.mark.parametrize("qtype", ALL)
@given(x=rows_of_blocks, scale=st.sampled_from([1e-6, 1.0, 30.0]))
def test_kernels_equal_reference(qtype, x, scale):
    x = x * np.float32(scale)
    data = quantize_reference(x, qtype)
    assert np.array_equal(quantize(x, qtype), data)
    assert np.array_equal(dequantize(data, qtype, x.shape).view(np.uint32),
                          dequantize_reference(data, qtype, x.shape).view(np.uint32))


@pytest.mark.parametrize("qtype", ALL)
@given(x=hnp.arrays(np.float32, (2, 256), elements=st.sampled_from([0.0, -0.0, 1.0, -1.0, 2.5, -2.5, 1e-3])))
def test_kernels_keep_the_first_of_equal_extremes(qtype, x):
    """Ties of |x| with both signs, -0.0 beside +0.0: the kernels find extremes on integer keys of the
    float bits, which must keep the element C's strict comparisons keep (the first of equals)."""
    assert np.array_equal(quantize(x, qtype), quantize_reference(x, qtype))


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="C's undefined case, pinned on x86-64")
def test_subnormal_only_blocks_as_llama_cpp_on_x86_64():
    """amax below ~3e-39 makes 1 / d = inf and C converts inf / NaN to an integer (undefined behaviour,
    left out of the golden file). The bytes llama.cpp's libggml-base wrote on x86-64 for such blocks
    (measured with scripts/make_kquant_golden.py's build): every ternary code is t = 1. The kernels and
    the NumPy reference both follow it, for every type (all 12 equal that build's bytes here)."""
    x = np.where(np.arange(512) % 3 == 0, 0, 1e-45).astype(np.float32).reshape(2, 256)
    tq2 = quantize(x, "TQ2_0").reshape(2, 66)
    tq1 = quantize(x, "TQ1_0").reshape(2, 54)
    assert (tq2[:, :64] == 0b01010101).all()                            # four t = 1 a byte
    assert (tq1[:, :48] == 128).all() and (tq1[:, 48:52] == 127).all()  # ceil(121 * 256 / 243), ceil(120 * ...)
    for qtype in ALL:
        assert np.array_equal(quantize(x, qtype), quantize_reference(x, qtype)), qtype


@pytest.mark.parametrize("qtype", ALL)
def test_kernels_run_as_plain_python(qtype):
    """NUMBA_DISABLE_JIT=1 runs each kernel's Python body (a learner's debugger): the same bytes."""
    from minq import kquants_kernels as K
    from minq import kquants_kernels_legacy as KL
    from minq._jit import py_func

    t = TYPES[qtype]
    B = np.random.default_rng(3).standard_normal((3, t.block)).astype(np.float32)
    B[1] = -0.0
    data = quantize(B, qtype).reshape(3, -1)
    if qtype in KL._QUANT:
        raw = np.zeros((3, t.nbytes), np.uint8)
        d, m = np.empty(3, np.float32), np.empty(3, np.float32)
        py_func(KL._QUANT[qtype])(B, B.view(np.uint32), raw, d, m)
        want, y = data.reshape(-1).view(t.layout), raw.reshape(-1).view(t.layout)
        assert np.array_equal(d.astype(np.float16).view(np.uint16), want["d"].view(np.uint16))
        assert np.array_equal(y["qs"], want["qs"])
    out = np.empty((3, t.block), np.float32)
    py_func(K._DEQ[qtype])(data, K._F16, out)
    assert np.array_equal(out.view(np.uint32), K.dequantize_kernel(data, qtype).view(np.uint32))


@pytest.mark.parametrize("dataset, qtype", _golden_cases())
def test_reference_bytes_equal_llama_cpp(dataset, qtype):
    g = np.load(GOLDEN)
    assert np.array_equal(quantize_reference(g[f"x_{dataset}"], qtype), g[f"q_{dataset}_{qtype}"])


# --- error bounds ---------------------------------------------------------------------------------

@pytest.mark.parametrize("qtype, steps, rounding", [("Q4_0", 8, 1.0), ("Q5_0", 16, 1.0), ("Q8_0", 127, 0.5)])
@given(x=rows_of_blocks)
def test_symmetric_block_error_bound(qtype, steps, rounding, x):
    """Type-0 blocks of 32, d = amax / steps: |x - x_hat| <= rounding * d + steps * |d - fp16(d)|.
    Q4_0 / Q5_0 round half up and clamp the value opposite the extreme to steps - 1: one step;
    Q8_0 rounds to nearest and never clamps: half a step. |d - fp16(d)| <= max(2^-11 d, 2^-25)."""
    x_hat = dequantize(quantize(x, qtype), qtype, x.shape).reshape(-1, 32).astype(np.float64)
    xb = x.reshape(-1, 32).astype(np.float64)
    d = np.abs(xb).max(axis=1, keepdims=True) / steps
    bound = rounding * d + steps * np.maximum(d * 2.0 ** -11, 2.0 ** -25)
    assert (np.abs(x_hat - xb) <= bound * (1 + 1e-5)).all()


# relative RMSE on N(0, 1) rows: each family loses error as it gains bits
ORDERS = [("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_0"), ("Q4_0", "Q5_0", "Q8_0"), ("Q4_1", "Q5_1"),
          ("TQ1_0", "Q2_K")]


@pytest.mark.parametrize("order", ORDERS, ids="<".join)
def test_more_bits_less_error(order):
    x = np.random.default_rng(3).standard_normal((8, 1024)).astype(np.float32)

    def err(t):
        return np.sqrt(((dequantize(quantize(x, t), t, x.shape) - x) ** 2).mean() / (x ** 2).mean())

    errs = [err(t) for t in order]
    assert all(a > b for a, b in zip(errs, errs[1:])), dict(zip(order, errs))
    assert errs[-1] < 2.0 ** -(TYPES[order[-1]].bits_per_weight - 2)    # within ~6 dB per bit of ideal


def test_zeros_and_constants():
    # ggml: max starts at +0.0 and only a strictly larger |x| replaces it, so d = +0.0 / -8 = -0.0 (0x8000),
    # for a block of +0.0 and of -0.0 alike; Q4_1's min is the first of equal minima (-0.0 here)
    for z in (0.0, -0.0):
        assert quantize(np.full((1, 32), z, np.float32), "Q4_0")[0, :2].tolist() == [0x00, 0x80]
        assert quantize_reference(np.full((1, 32), z, np.float32), "Q4_0")[0, :2].tolist() == [0x00, 0x80]
    for qtype in ALL:
        z = np.zeros((2, 256), np.float32)
        assert np.array_equal(dequantize(quantize(z, qtype), qtype, z.shape), z)
        c = np.full((1, 256), -0.75, np.float32)
        c_hat = dequantize(quantize(c, qtype), qtype, c.shape)
        assert np.abs(c_hat - c).max() <= 0.75 * 2.0 ** -8, qtype   # the extreme lands on a code


# --- the torch path and the weight protocol ------------------------------------------------------

@pytest.mark.torch
@pytest.mark.parametrize("qtype", ALL)
def test_torch_dequantize_equals_numpy(qtype, device):
    """minq.kquants_torch on the tensor's device: golden inputs and arbitrary bytes, bit for bit."""
    torch = pytest.importorskip("torch")
    g = np.load(GOLDEN)
    for dataset in ("gauss", "edge", "smollm2"):
        x = g[f"x_{dataset}"]
        data = quantize(x, qtype)
        got = dequantize(torch.from_numpy(data).to(device), qtype, x.shape)
        assert got.device.type == device and got.dtype == torch.float32
        assert np.array_equal(got.cpu().numpy().view(np.uint32), dequantize(data, qtype, x.shape).view(np.uint32))
    with pytest.raises(TypeError, match=r"\bdata\b"):
        dequantize(torch.zeros(4, dtype=torch.int16), qtype, (1, TYPES[qtype].block))
    with pytest.raises(ValueError, match=r"\bdata\b"):
        dequantize(torch.zeros(3, dtype=torch.uint8), qtype, (1, TYPES[qtype].block))


@pytest.mark.torch
@pytest.mark.parametrize("qtype", ("Q4_0", "Q4_K", "Q6_K", "TQ2_0"))
def test_torch_tensors(qtype):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(4).standard_normal((3, 512)).astype(np.float32)
    data = quantize(torch.from_numpy(x), qtype)
    assert isinstance(data, torch.Tensor) and data.dtype == torch.uint8
    assert np.array_equal(data.numpy(), quantize(x, qtype))
    x_hat = dequantize(data, qtype, x.shape)
    assert isinstance(x_hat, torch.Tensor)
    assert np.array_equal(x_hat.numpy(), dequantize(quantize(x, qtype), qtype, x.shape))
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    assert quantize(torch.from_numpy(x).to(dev), qtype).device.type == dev


def test_ggml_weight_is_a_quantized_weight():
    W = np.random.default_rng(5).standard_normal((6, 512)).astype(np.float32)
    w = GGMLWeight.quantize(W, "q4_k")
    assert w.qtype == "Q4_K" and w.shape == (6, 512)
    assert w.nbytes == 6 * 2 * 144 and w.bits_per_weight == 4.5
    assert np.array_equal(w.dequantize(), dequantize(quantize(W, "Q4_K"), "Q4_K", W.shape))


def test_one_row_and_bytes_input():
    x = np.random.default_rng(6).standard_normal(64).astype(np.float32)
    data = quantize(x, "Q8_0")
    assert data.shape == (68,)
    assert np.array_equal(dequantize(data.tobytes(), "Q8_0", 64), dequantize(data, "Q8_0", (64,)))


# --- bad input -----------------------------------------------------------------------------------

@pytest.mark.parametrize("x, qtype, err, word", [
    (np.zeros((2, 48), np.float32), "Q4_0", ValueError, "x"),                # 48 is not a whole block
    (np.zeros((2, 288), np.float32), "Q4_K", ValueError, "x"),               # 288 % 256
    (np.array([[np.nan] * 32], np.float32), "Q8_0", ValueError, "x"),
    (np.array([[np.inf] * 32], np.float32), "Q8_0", ValueError, "x"),
    (np.zeros((0, 32), np.float32), "Q8_0", ValueError, "x"),
    (np.zeros((2, 2, 32), np.float32), "Q8_0", ValueError, "x"),
    (np.zeros((2, 32), np.int32), "Q8_0", TypeError, "x"),
    ([0.0] * 32, "Q8_0", TypeError, "x"),
    (np.full((1, 32), 1e38, np.float32), "Q4_0", ValueError, "x"),           # d overflows fp16
    (np.zeros((1, 32), np.float32), "Q4_X", ValueError, "qtype"),
    (np.zeros((1, 32), np.float32), 4, TypeError, "qtype"),
])
def test_quantize_bad_input(x, qtype, err, word):
    with pytest.raises(err, match=rf"\b{word}\b"):
        quantize(x, qtype)


def test_dequantize_bad_input():
    data = quantize(np.ones((2, 256), np.float32), "Q4_K")
    with pytest.raises(ValueError, match=r"\bdata\b.*truncated"):
        dequantize(data.reshape(-1)[:-1], "Q4_K", (2, 256))
    with pytest.raises(ValueError, match=r"\bdata\b"):
        dequantize(np.concatenate([data.reshape(-1), data.reshape(-1)[:1]]), "Q4_K", (2, 256))
    with pytest.raises(TypeError, match=r"\bdata\b"):
        dequantize(data.astype(np.int16), "Q4_K", (2, 256))
    with pytest.raises(ValueError, match=r"\bshape\b"):
        dequantize(data, "Q4_K", (2, -256))
    with pytest.raises(ValueError, match="Q4_K blocks"):
        dequantize(data, "Q4_K", (4, 128))
    with pytest.raises(ValueError, match=r"\bqtype\b"):
        dequantize(data, "IQ9_Z", (2, 256))


def test_dequantize_rejects_corrupt_scales():
    data = quantize(np.ones((2, 256), np.float32), "Q4_K")
    data.reshape(-1, 144)[1, 0:2] = np.frombuffer(np.float16(np.nan).tobytes(), np.uint8)
    with pytest.raises(ValueError, match=r"\bdata\b: block 1 .*NaN or Inf scale d"):
        dequantize(data, "Q4_K", (2, 256))
    q8 = quantize(np.ones((1, 32), np.float32), "Q8_0")
    q8[0, 0:2] = np.frombuffer(np.float16(np.inf).tobytes(), np.uint8)
    with pytest.raises(ValueError, match=r"\bdata\b"):
        dequantize_reference(q8, "Q8_0", (1, 32))


def test_more_bad_inputs():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match=r"\bx\b"):
        quantize(torch.ones(2, 256, dtype=torch.int32), "Q4_K")
    with pytest.raises(TypeError, match=r"\bx\b"):
        quantize(torch.ones(2, 256, dtype=torch.complex64), "Q4_K")
    w = GGMLWeight.quantize(torch.ones(2, 256), "Q4_K")
    assert w.nbytes == 288 and w.bits_per_weight == 4.5
    with pytest.raises(ValueError, match=r"\bW\b"):
        GGMLWeight.quantize(np.ones(256, np.float32), "Q4_K")
    with pytest.raises(ValueError, match=r"\bqtype\b"):
        GGMLWeight(np.zeros((2, 144), np.uint8), "bogus", (2, 256))
    with pytest.raises(ValueError, match=r"\bdata\b"):
        GGMLWeight(np.zeros((2, 143), np.uint8), "Q4_K", (2, 256))
    with pytest.raises(ValueError, match=r"\bn\b"):
        row_bytes("Q4_K", 0)
    with pytest.raises(TypeError, match=r"\bn\b"):
        row_bytes("Q4_K", 256.0)
    data = quantize(np.ones((2, 256), np.float32), "Q4_K")
    with pytest.raises(ValueError, match=r"\bshape\b"):
        dequantize(data, "Q4_K", (True, 512))
