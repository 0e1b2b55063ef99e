"""minq.imatrix: collection as llama-imatrix does it, llama.cpp's two file formats, and its use in
GGUF writing, the mixes and the CLI."""

import struct
from collections import Counter

import gguf
import numpy as np
import pytest

from minq import registry
from minq.calibration import Hessian, calibrate
from minq.cli import main
from minq.imatrix import IMatrix, collect_imatrix, read_imatrix, write_imatrix
from minq.kquants import quantize
from minq.kquants_mix import mix_types, tensor_type
from minq.models import assets


@pytest.fixture(scope="module")
def im(smollm2, smollm2_cal):
    return collect_imatrix(smollm2, smollm2_cal, progress=False, dataset="test windows")


def test_collects_every_linear_of_the_blocks(smollm2, smollm2_cal, im):
    assert set(im.sums) == set(smollm2.linear_names())                     # the blocks' linears, no head
    assert set(im.counts.values()) == {smollm2_cal.size}                     # every token counts once
    assert (im.chunk_size, im.chunk_count) == (smollm2_cal.shape[1], len(smollm2_cal))
    for name in ("blk.0.attn_q", "blk.0.ffn_down", "blk.29.ffn_down"):
        w = im.importance(name)
        assert w.dtype == np.float32 and w.shape == (smollm2.weights[name].shape[1],) and (w > 0).all()


def test_importance_is_the_diagonal_of_gptqs_hessian(smollm2, smollm2_cal, im):
    """The imatrix is diag(H) / tokens, H = X^T X of chapter 06 on the same calibration tokens."""
    names = ["blk.3.attn_output", "blk.3.ffn_down"]
    H = calibrate(smollm2, smollm2_cal, lambda n: _H(smollm2.weights[n].shape[1]), names=names)
    for n in names:
        diag = np.diagonal(H[n].h.XtX) / H[n].h.n
        np.testing.assert_allclose(im.importance(n), diag, rtol=1e-5)


class _H:
    def __init__(self, n_in):
        self.h = Hessian(n_in)

    def update(self, X):
        self.h.add_batch(X)


@pytest.mark.parametrize("suffix", [".gguf", ".dat"])
def test_file_round_trip(smollm2, im, tmp_path, suffix):
    path = write_imatrix(im, tmp_path / f"smollm2.imatrix{suffix}")
    back = read_imatrix(path, smollm2)
    assert set(back.sums) == set(im.sums) and back.chunk_count == im.chunk_count
    for n in im.sums:
        np.testing.assert_allclose(back.importance(n), im.importance(n), rtol=1e-6)


def test_gguf_file_is_llama_cpps_layout(im, tmp_path):
    r = gguf.GGUFReader(write_imatrix(im, tmp_path / "m.gguf"))
    assert r.fields["general.type"].contents() == "imatrix"
    assert r.fields["imatrix.chunk_size"].contents() == 64 and r.fields["imatrix.chunk_count"].contents() == 4
    assert r.fields["imatrix.datasets"].contents() == ["test windows"]
    t = {x.name: x for x in r.tensors}
    assert len(t) == 2 * len(im.sums)
    s, c = t["blk.0.ffn_down.weight.in_sum2"], t["blk.0.ffn_down.weight.counts"]
    assert s.tensor_type == c.tensor_type == gguf.GGMLQuantizationType.F32
    assert tuple(s.shape) == (1536,) and tuple(c.shape) == (1,)                  # as llama-imatrix writes them
    np.testing.assert_allclose(np.asarray(s.data).reshape(-1), im.sums["blk.0.ffn_down"], rtol=1e-6)
    assert float(np.asarray(c.data).reshape(-1)[0]) == 256


def test_legacy_dat_layout(im, tmp_path):
    b = write_imatrix(im, tmp_path / "m.dat").read_bytes()
    (n,) = struct.unpack_from("<i", b, 0)
    (length,) = struct.unpack_from("<i", b, 4)
    name = b[8:8 + length].decode()
    ncall, nval = struct.unpack_from("<ii", b, 8 + length)
    v = np.frombuffer(b, "<f4", nval, 16 + length)
    assert n == len(im.sums) and name == sorted(im.sums)[0] + ".weight" and ncall == 4
    np.testing.assert_allclose(v, im.importance(name.removesuffix(".weight")) * 4, rtol=1e-6)
    assert struct.unpack_from("<ii", b, len(b) - 8 - len("test windows")) == (4, len("test windows"))


def test_bad_files(smollm2, im, tmp_path):
    with pytest.raises(FileNotFoundError, match="path"):
        read_imatrix(tmp_path / "missing.gguf")
    dat = write_imatrix(im, tmp_path / "m.dat")
    (tmp_path / "cut.dat").write_bytes(dat.read_bytes()[:1000])
    with pytest.raises(ValueError, match="truncated"):
        read_imatrix(tmp_path / "cut.dat")
    with pytest.raises(ValueError, match="not an imatrix"):
        read_imatrix(assets.fetch("smollm2"), format="gguf")
    other = IMatrix({"blk.0.attn_q": np.ones(100)}, {"blk.0.attn_q": 10}, chunk_size=10)
    with pytest.raises(ValueError, match="another model"):
        read_imatrix(write_imatrix(other, tmp_path / "other.gguf"), smollm2)
    neg = IMatrix({"blk.0.attn_q": -np.ones(576)}, {"blk.0.attn_q": 10}, chunk_size=10)
    with pytest.raises(ValueError, match="negative"):
        read_imatrix(write_imatrix(neg, tmp_path / "neg.gguf"))
    with pytest.raises(ValueError, match="format"):
        write_imatrix(im, tmp_path / "x.gguf", format="csv")
    with pytest.raises(KeyError, match="name"):
        im.importance("output")


def test_mix_rules_that_depend_on_an_imatrix():
    # llama.cpp: Q4_0 / Q5_0 with an imatrix raise the first n/8 ffn_down to Q4_1 / Q5_1; IQ4_NL / IQ4_XS
    # raise them to Q5_K only without one; IQ4_XS falls back to IQ4_NL on rows of 576
    assert tensor_type("blk.0.ffn_down", 1536, "Q4_0", n_blocks=30, imatrix=True) == "Q4_1"
    assert tensor_type("blk.3.ffn_down", 1536, "Q4_0", n_blocks=30, imatrix=True) == "Q4_0"
    assert tensor_type("blk.0.ffn_down", 1536, "Q4_0", n_blocks=30) == "Q4_0"
    assert tensor_type("blk.0.ffn_down", 1536, "IQ4_XS", n_blocks=30) == "Q5_K"
    assert tensor_type("blk.0.ffn_down", 1536, "IQ4_XS", n_blocks=30, imatrix=True) == "IQ4_XS"
    assert tensor_type("blk.5.attn_q", 576, "IQ4_XS", n_blocks=30) == "IQ4_NL"
    assert tensor_type("blk.5.attn_v", 576, "IQ4_NL", n_blocks=30, n_gqa=4) == "Q5_1"   # Q5_K, then fallback


def test_mix_types_of_smollm2_with_imatrix(smollm2):
    nl = Counter(mix_types(smollm2, "IQ4_NL", imatrix=True).values())
    assert nl == {"IQ4_NL": 210}
    xs = Counter(mix_types(smollm2, "IQ4_XS", imatrix=True).values())
    assert xs == {"IQ4_XS": 30, "IQ4_NL": 180}


def test_imat_schemes_are_registered():
    s = registry.get("q4_k_m-imat")
    assert s.needs_calibration and "importance matrix" in s.description
    assert not registry.get("iq4_nl").needs_calibration


def test_quantize_gguf_with_imatrix(im, tmp_path):
    from minq.gguf_write import quantize_gguf

    src = assets.fetch("smollm2")
    path = write_imatrix(im, tmp_path / "m.gguf")
    dst = tmp_path / "iq4_nl.gguf"
    plan = quantize_gguf(src, dst, "IQ4_NL", imatrix=path, progress=False)
    r = gguf.GGUFReader(dst)
    assert r.fields["quantize.imatrix.entries_count"].contents() == 210
    t = {x.name: x for x in r.tensors}
    name = "blk.7.ffn_down.weight"
    assert plan[name] == "IQ4_NL"
    src_t = {x.name: x for x in gguf.GGUFReader(src).tensors}[name]
    from minq.gguf import _to_float32

    W = _to_float32(src_t.data, src_t.tensor_type.name, tuple(reversed(src_t.shape)))
    want = quantize(W, "IQ4_NL", imatrix=im.importance("blk.7.ffn_down"))
    assert np.array_equal(np.asarray(t[name].data).reshape(want.shape), want)
    with pytest.raises(ValueError, match="imatrix"):
        other = IMatrix({"blk.0.attn_q": np.ones(100)}, {"blk.0.attn_q": 10}, chunk_size=10)
        quantize_gguf(src, tmp_path / "o.gguf", "Q4_K_M", imatrix=other, progress=False)
    assert not (tmp_path / "o.gguf").exists()


def test_cli_imatrix_and_quantize(tmp_path, capsys):
    out = tmp_path / "s.imatrix.gguf"
    assert main(["imatrix", "smollm2", "-o", str(out), "--chunks", "2", "--seq-len", "32"]) == 0
    assert "210 entries, 2 chunks of 32 tokens" in capsys.readouterr().out
    assert main(["imatrix", "smollm2", "-o", str(tmp_path / "x.txt"), "--chunks", "2"]) == 2
    q = tmp_path / "q.gguf"
    assert main(["quantize", str(assets.fetch("smollm2")), "--type", "IQ4_XS", "--imatrix", str(out), "-o", str(q)]) == 0
    assert "IQ4_NL" in capsys.readouterr().out and q.is_file()
