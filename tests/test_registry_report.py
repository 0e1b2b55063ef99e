"""The method registry, ``minq.quantize``, the main job (``minq report``) and the CLI."""

import re

import numpy as np
import pytest

import minq
from minq import registry
from minq.api import calibration_ids
from minq.cli import main
from minq.data import eval_tokens
from minq.groups import GroupedAffine, quantize_groups
from minq.models.llama import DenseWeight
from minq.report import run_report
from minq.testing import assert_equal


@pytest.mark.parametrize("name, bits, group, sym", [
    ("rtn-w8", 8, -1, False), ("rtn-w4g64", 4, 64, False), ("rtn-w3g64-sym", 3, 64, True),
    ("rtn-w2g32", 2, 32, False), ("rtn-w1", 1, -1, False),
])
def test_rtn_names_parse_to_quantize_groups(name, bits, group, sym, rng):
    W = rng.standard_normal((8, 128)).astype(np.float32)
    Wq = registry.get(name).quantize_weight(W)
    assert isinstance(Wq, GroupedAffine)
    want = quantize_groups(W, bits=bits, group_size=group, symmetric=sym)
    assert_equal(Wq.dequantize(), want.dequantize())
    assert Wq.bits_per_weight == want.bits_per_weight


def test_every_default_scheme_round_trips_through_the_registry(rng):
    W = rng.standard_normal((4, 192)).astype(np.float32)
    rel = {}
    rtn = {f.name: f for f in registry.families()}["rtn"]
    for name in rtn.defaults:
        s = registry.get(name)
        assert s.name == name and s.description and not s.needs_calibration
        Wq = s.quantize_weight(W)
        assert Wq.shape == W.shape and Wq.dequantize().dtype == np.float32
        # the name's bits / group / symmetry, read here: the same weights as quantize_groups, the storage
        # of the formula (codes + a float16 scale, + a b-bit zero point if asymmetric, per group; the packed
        # zero points pad to a whole chunk of codes, 3-bit: 8 in 3 bytes, < 0.05 bits per weight here)
        m = re.fullmatch(r"rtn-w(\d+)(?:g(\d+))?(-sym)?", name)
        assert m, name
        bits, g, sym = int(m[1]), int(m[2] or W.shape[1]), bool(m[3])
        want = quantize_groups(W, bits=bits, group_size=g, symmetric=sym)
        assert_equal(Wq.dequantize(), want.dequantize(), name=name)
        ideal = bits + (16 + (0 if sym else bits)) / g
        assert ideal <= Wq.bits_per_weight < ideal + 0.05, (name, Wq.bits_per_weight, ideal)
        # not float, and the error of uniform rounding: RMS step / sqrt(12) with the range of 192 Gaussian
        # values ~5.5 sigma gives rel ~1.6 / (2^b - 1); measured rel * (2^b - 1) in [1.22 (w4g32),
        # 2.04 (w4-sym)], so [0.8, 2.5] holds with >= 20% to spare and a wrong bit width leaves it
        W_hat = Wq.dequantize()
        assert not np.array_equal(W_hat, W), name
        rel[name] = float(np.linalg.norm(W_hat - W) / np.linalg.norm(W))
        assert 0.8 < rel[name] * (2 ** bits - 1) < 2.5, (name, rel[name])
    # fewer bits lose more, finer groups lose less (measured w8 0.0064, w4 0.108, w4g64 0.093, w4g32 0.081,
    # w3g64 0.205, w2g64 0.477)
    for order in (["rtn-w8", "rtn-w4"], ["rtn-w8-sym", "rtn-w4-sym"], ["rtn-w4g64", "rtn-w3g64", "rtn-w2g64"],
                  ["rtn-w4g64-sym", "rtn-w3g64-sym"], ["rtn-w4g32", "rtn-w4g64", "rtn-w4"]):
        errs = [rel[n] for n in order]
        assert errs == sorted(errs) and len(set(errs)) == len(errs), dict(zip(order, errs))


@pytest.mark.parametrize("bad", ["rtn-w9", "rtn-w0", "rtn-w1-sym", "rtn-w4g0", "gptq-w9", "rtn-w4g", "awq-w4", ""])
def test_unknown_or_invalid_scheme_names(bad):
    with pytest.raises(ValueError, match="scheme"):
        registry.get(bad)


def test_unknown_scheme_lists_known_ones():
    with pytest.raises(ValueError, match="rtn-w4g64"):
        registry.get("awq-w4")
    with pytest.raises(TypeError, match="scheme"):
        registry.get(4)


class TinyModel:
    """The part of the model protocol a weight-only scheme relies on (minq.models.base.Weights)."""

    def __init__(self, weights):
        self.weights = weights

    def linear_names(self):
        return sorted(self.weights)

    def with_weights(self, new):
        return TinyModel({**self.weights, **new})


def test_quantize_swaps_every_linear_and_leaves_the_input_alone(rng):
    W = {f"blk.0.{n}": DenseWeight(rng.standard_normal((8, 64)).astype(np.float32)) for n in ("a", "b")}
    model = TinyModel(W)
    q = minq.quantize(model, "rtn-w4g32", progress=False)
    assert all(isinstance(w, DenseWeight) for w in model.weights.values()), "input model unchanged"
    for name, w in q.weights.items():
        assert isinstance(w, GroupedAffine)
        want = quantize_groups(model.weights[name].dequantize(), bits=4, group_size=32)
        assert_equal(w.dequantize(), want.dequantize(), name=name)
    with pytest.raises(ValueError, match="unknown scheme"):
        minq.quantize(model, "rtn-w4x")
    with pytest.raises(TypeError, match="model"):
        minq.quantize(object(), "rtn-w4")


class _Tok:
    def encode(self, text):
        return [ord(c) % 50 for c in text]


class _M:
    tokenizer = _Tok()


def test_calibration_ids_from_text_ids_and_errors():
    ids = calibration_ids(_M(), "abc" * 400, seq_len=512)
    assert ids.shape == (2, 512) and ids.dtype == np.int64
    assert calibration_ids(_M(), np.arange(10), seq_len=4).shape == (2, 4)
    assert calibration_ids(_M(), np.ones((3, 7), np.int32)).shape == (3, 7)
    with pytest.raises(ValueError, match="calibration"):
        calibration_ids(_M(), "   ")
    with pytest.raises(TypeError, match="calibration"):
        calibration_ids(_M(), np.ones(4, np.float32))
    with pytest.raises(ValueError, match="calibration"):
        calibration_ids(_M(), np.ones((2, 2, 2), np.int64))


# --- the main job on the real model (small: 2 windows) -------------------------------------------------


def test_report_writes_table_and_plot(tmp_path, smollm2):
    rows = run_report(smollm2, ["rtn-w8", "rtn-w3g64", "rtn-w2g64"], out_dir=tmp_path, max_tokens=1024,
                      progress=False)
    md = (tmp_path / "report.md").read_text()
    assert "| rtn-w3g64 |" in md and "perplexity" in md and "Q4_1" in md
    assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    by = {r["scheme"]: r for r in rows}
    assert rows[0]["scheme"] == "float32" and rows[0]["change_pct"] == 0.0
    # 8 bits is close to the reference; fewer bits lose more (2-bit RTN is far worse)
    assert abs(by["rtn-w8"]["change_pct"]) < 2.0
    assert by["rtn-w8"]["perplexity"] < by["rtn-w3g64"]["perplexity"] < by["rtn-w2g64"]["perplexity"]
    assert by["rtn-w3g64"]["bits_per_weight"] == pytest.approx(3 + (16 + 3) / 64, abs=1e-3)
    assert not list(tmp_path.glob(".*tmp*")), "no temporary files left behind"


def test_report_rejects_bad_arguments_before_touching_files(tmp_path, smollm2):
    (tmp_path / "report.md").write_text("previous report")
    with pytest.raises(ValueError, match="unknown scheme"):
        run_report(smollm2, ["rtn-w4g64", "nope"], out_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="schemes"):
        run_report(smollm2, [], out_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="max_tokens"):
        run_report(smollm2, ["rtn-w8"], out_dir=tmp_path, max_tokens=100, progress=False)
    assert (tmp_path / "report.md").read_text() == "previous report"


def test_cli(tmp_path, capsys, smollm2):
    # the printed perplexities are minq.perplexity on the same tokens, computed here (printed to 3 / 4 decimals)
    ids = eval_tokens(smollm2.tokenizer, max_tokens=512)
    ppl = {name: minq.perplexity(minq.quantize(smollm2, name, progress=False) if name else smollm2, ids, 512,
                                 progress=False) for name in ("", "rtn-w8", "rtn-w4g64")}
    assert main(["report", "--schemes", "rtn-w8", "--max-tokens", "512", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for name, key in (("float32", ""), ("rtn-w8", "rtn-w8")):
        m = re.search(rf"^\| {name} \|(?:[^|]*\|){{2}} ([0-9.]+) \|", out, re.M)
        assert m and float(m[1]) == pytest.approx(ppl[key], abs=5e-4 + 1e-9), (name, out)
    assert main(["eval", "--scheme", "rtn-w4g64", "--max-tokens", "512"]) == 0
    m = re.search(r"perplexity ([0-9.]+) ", capsys.readouterr().out)
    assert m and float(m[1]) == pytest.approx(ppl["rtn-w4g64"], abs=5e-5 + 1e-9)
    assert ppl[""] < ppl["rtn-w4g64"]
    assert main(["report", "--schemes", "bogus", "--out", str(tmp_path)]) == 2
    assert "unknown scheme" in capsys.readouterr().err
    assert main(["eval", "--model", "nope"]) == 2
    assert "unknown model" in capsys.readouterr().err
    assert main(["fetch", "--model", "smollm2"]) == 0
    assert "SmolLM2-135M-Instruct.Q4_1.gguf" in capsys.readouterr().out
    assert main(["schemes"]) == 0
    assert "rtn-w3g64-sym" in capsys.readouterr().out


def test_default_schemes_gather_every_method_module_without_repeats():
    import importlib

    names = registry.default_schemes()
    fams = registry.families()
    assert names == [n for f in fams for n in f.defaults] and len(names) == len(set(names))
    assert [f.name for f in fams][:1] == ["rtn"] and names[:10] == list(fams[0].defaults)
    for mod in registry.METHOD_MODULES:
        importlib.import_module(mod)
    for name in names:
        assert registry.get(name).name == name
