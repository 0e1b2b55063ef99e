"""minq.kquants with an importance matrix, and the i-quants IQ4_NL / IQ4_XS: llama.cpp's bytes.

Oracle: data/kquants/golden_imatrix.npz, written by scripts/make_imatrix_golden.py from llama.cpp's own
``quantize_<type>(src, dst, nrow, n_per_row, imatrix)`` on the inputs of data/kquants/golden.npz;
gguf-py dequantizes both i-quants bit-exactly.
"""

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as GT
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from minq import kquants_iq
from minq.kquants import TYPES, dequantize, dequantize_reference, quantize, quantize_reference

DATA = Path(__file__).resolve().parents[1] / "data" / "kquants"
WEIGHTED = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
IQ = ("IQ4_NL", "IQ4_XS")
SETS = ("gauss", "student", "edge", "smollm2")


def _differing(got, want, qtype):
    n = TYPES[qtype].nbytes
    return int((got.reshape(-1, n) != want.reshape(-1, n)).any(axis=1).sum())


def test_golden_file_is_complete():
    z = np.load(DATA / "golden_imatrix.npz")
    meta = json.loads(str(z["meta"]))
    assert set(meta["types"]) == set(WEIGHTED) | set(IQ)
    for t, m in meta["types"].items():
        assert (TYPES[t].block, TYPES[t].nbytes) == (m["block_elems"], m["block_bytes"])
    for s in SETS:
        assert f"w_{s}" in z.files and all(f"q_{s}_{t}" in z.files for t in (*WEIGHTED, *IQ))


@pytest.mark.parametrize("qtype", (*WEIGHTED, *IQ))
@pytest.mark.parametrize("dataset", SETS)
def test_imatrix_bytes_equal_llama_cpp(dataset, qtype):
    x = np.load(DATA / "golden.npz")[f"x_{dataset}"]
    z = np.load(DATA / "golden_imatrix.npz")
    got, want = quantize(x, qtype, imatrix=z[f"w_{dataset}"]), z[f"q_{dataset}_{qtype}"]
    assert _differing(got, want, qtype) == 0, f"{_differing(got, want, qtype)} {qtype} blocks differ from llama.cpp's"


@pytest.mark.parametrize("qtype", IQ)
@pytest.mark.parametrize("dataset", SETS)
def test_iquant_bytes_equal_llama_cpp_without_imatrix(dataset, qtype):
    x = np.load(DATA / "golden.npz")[f"x_{dataset}"]
    want = np.load(DATA / "golden_imatrix.npz")[f"q_{dataset}_{qtype}_none"]
    assert _differing(quantize(x, qtype), want, qtype) == 0


rows = st.integers(1, 3).flatmap(lambda r: hnp.arrays(np.float32, (r, 512), elements=st.floats(-1e3, 1e3, width=32)))


@pytest.mark.parametrize("qtype", IQ)
@given(x=rows, scale=st.sampled_from([1e-4, 1.0, 30.0]))
def test_iquant_dequantize_equals_gguf_py_and_reference(qtype, x, scale):
    data = quantize(x * np.float32(scale), qtype)
    got = dequantize(data, qtype, x.shape)
    want = gguf.quants.dequantize(data, getattr(GT, qtype)).reshape(x.shape)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    assert np.array_equal(got.view(np.uint32), dequantize_reference(data, qtype, x.shape).view(np.uint32))


@pytest.mark.parametrize("qtype", IQ)
@given(x=rows, scale=st.sampled_from([1e-6, 1.0, 30.0]), weighted=st.booleans())
def test_iquant_kernel_equals_reference(qtype, x, scale, weighted):
    """The Numba kernel (minq.kquants_kernels_iq) writes the NumPy reference's bytes."""
    x = x * np.float32(scale)
    w = np.random.default_rng(x.shape[0]).lognormal(size=x.shape[1]).astype(np.float32) if weighted else None
    assert np.array_equal(quantize(x, qtype, w), quantize_reference(x, qtype, w))


def test_iquant_kernel_runs_as_plain_python():
    """NUMBA_DISABLE_JIT=1 runs the kernel's Python body (a learner's debugger): the same bytes."""
    from minq import kquants_kernels_iq as K
    from minq._jit import py_func

    B = np.random.default_rng(8).standard_normal((2, 256)).astype(np.float32)
    B[1, :40] = 0
    raw, d = np.zeros((2, 136), np.uint8), np.empty(2, np.float32)
    py_func(K._q_iq4)(B, np.zeros((1, 1), np.float32), False, raw, d)
    raw.reshape(-1).view(TYPES["IQ4_XS"].layout)["d"] = d.astype(np.float16)
    assert np.array_equal(raw.reshape(-1), quantize(B, "IQ4_XS").reshape(-1))


@pytest.mark.parametrize("qtype", IQ)
def test_iquant_dequantize_of_arbitrary_bytes(qtype):
    """Every code and 6-bit scale, not only what the quantizer writes (fp16 scales kept finite)."""
    t = TYPES[qtype]
    rng = np.random.default_rng(2)
    y = np.frombuffer(rng.integers(0, 256, 64 * t.nbytes, dtype=np.uint8).tobytes(), t.layout).copy()
    y["d"] = rng.standard_normal(len(y)).astype(np.float16)
    data, shape = y.view(np.uint8).reshape(4, -1), (4, 16 * t.block)
    want = gguf.quants.dequantize(data, getattr(GT, qtype)).reshape(shape)
    assert np.array_equal(dequantize(data, qtype, shape).view(np.uint32), want.view(np.uint32))


@pytest.mark.torch
@pytest.mark.parametrize("qtype", IQ)
def test_iquant_torch_dequantize_equals_numpy(qtype):
    import torch

    x = np.random.default_rng(4).standard_normal((3, 512)).astype(np.float32)
    data = quantize(x, qtype)
    got = dequantize(torch.from_numpy(data), qtype, x.shape).numpy()
    assert np.array_equal(got.view(np.uint32), dequantize(data, qtype, x.shape).view(np.uint32))


def test_codebook_search_is_llama_cpp_best_index():
    """Nearest table entry; below the first or above the last entry the end; a tie goes up."""
    T = kquants_iq.CODEBOOK.astype(np.float32)
    v = np.array([-200, -127, -115.5, -115.6, 0.0, -4.5, -4.6, 1.0, 113, 500], np.float32)
    assert kquants_iq.best_index(v).tolist() == [0, 0, 1, 0, 8, 8, 7, 8, 15, 15]
    mid = (T[:-1] + T[1:]) / 2                                     # exact midpoints: the upper entry
    assert kquants_iq.best_index(mid).tolist() == list(range(1, 16))


def test_iquants_zero_blocks_as_llama_cpp():
    """All-zero input: IQ4_NL codes 8 (the entry nearest 0) and d = +0; IQ4_XS d = -0.0 (-max_scale / 32)."""
    z = np.zeros((1, 256), np.float32)
    nl = quantize(z, "IQ4_NL").reshape(-1, 18)
    assert (nl[:, 2:] == 0x88).all() and (nl[:, :2] == 0).all()
    xs = quantize(z, "IQ4_XS").reshape(-1, 136)
    assert xs[0, :2].tolist() == [0x00, 0x80] and (xs[0, 8:] == 0x88).all()


@pytest.mark.parametrize("qtype", ("Q4_0", "Q4_1", "Q4_K", "Q6_K", "IQ4_NL", "IQ4_XS"))
def test_imatrix_lowers_the_weighted_error(qtype):
    """What an importance matrix is for: on columns it weights 100x, the weighted squared error drops."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((64, 512)).astype(np.float32)
    w = np.where(rng.random(512) < 0.25, 100.0, 1.0).astype(np.float32)

    def weighted_error(data):
        return float((w * (dequantize(data, qtype, x.shape) - x) ** 2).sum())

    assert weighted_error(quantize(x, qtype, imatrix=w)) < 0.9 * weighted_error(quantize(x, qtype))


@pytest.mark.parametrize("qtype", ("Q8_0", "TQ1_0", "TQ2_0"))
def test_types_without_a_weighted_search_ignore_the_imatrix(qtype):
    x = np.random.default_rng(5).standard_normal((2, 512)).astype(np.float32)
    w = np.random.default_rng(6).random(512).astype(np.float32)
    assert np.array_equal(quantize(x, qtype, imatrix=w), quantize(x, qtype))


@pytest.mark.parametrize("imatrix, err, word", [
    (np.ones(256, np.float32), ValueError, "shape"),
    (np.ones((2, 512), np.float32), ValueError, "shape"),
    (np.full(512, -1.0, np.float32), ValueError, "negative"),
    (np.full(512, np.nan, np.float32), ValueError, "NaN"),
    (np.ones(512, np.int32), TypeError, "floating"),
    ([1.0] * 512, TypeError, "array"),
])
def test_bad_imatrix(imatrix, err, word):
    x = np.ones((2, 512), np.float32)
    with pytest.raises(err, match=word) as e:
        quantize(x, "Q4_K", imatrix=imatrix)
    assert "imatrix" in str(e.value)
