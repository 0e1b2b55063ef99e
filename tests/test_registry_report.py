"""The method registry, the main job (`minq report`) and the CLI."""

import numpy as np
import pytest

from minq import registry
from minq.cli import main
from minq.groups import GroupedAffine, quantize_groups
from minq.report import llm_like_weights, run_report
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
    for name in registry.SCHEMES:
        s = registry.get(name)
        assert s.name == name and s.description
        Wq = s.quantize_weight(W)
        assert Wq.shape == W.shape and Wq.dequantize().dtype == np.float32


@pytest.mark.parametrize("bad", ["rtn-w9", "rtn-w0", "rtn-w1-sym", "rtn-w4g0", "gptq-w4", "rtn-w4g", ""])
def test_unknown_or_invalid_scheme_names(bad):
    with pytest.raises(ValueError, match="scheme"):
        registry.get(bad)


def test_unknown_scheme_lists_known_ones():
    with pytest.raises(ValueError, match="rtn-w4g64"):
        registry.get("awq-w4")
    with pytest.raises(TypeError, match="scheme"):
        registry.get(4)


def test_llm_like_weights_are_seeded_and_shaped():
    a, b = llm_like_weights(0), llm_like_weights(0)
    assert a.keys() == b.keys()
    for k in a:
        assert_equal(a[k], b[k], name=k)
    assert a["ffn_down"].shape == (576, 1536)


def test_report_writes_table_and_plot(tmp_path):
    rows = run_report(["rtn-w8", "rtn-w4g64", "rtn-w2g64"], out_dir=tmp_path, progress=False)
    md = (tmp_path / "report.md").read_text()
    assert "| rtn-w4g64 |" in md and "bits/weight" in md
    assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    by = {r["scheme"]: r for r in rows}
    # more bits -> less error, and the accounting includes scale overhead
    assert by["rtn-w8"]["rel_mse"] < by["rtn-w4g64"]["rel_mse"] < by["rtn-w2g64"]["rel_mse"]
    assert by["rtn-w4g64"]["bits_per_weight"] == pytest.approx(4 + 20 / 64)
    assert not list(tmp_path.glob(".*tmp*")), "no temporary files left behind"


def test_report_rejects_unknown_scheme_before_touching_files(tmp_path):
    (tmp_path / "report.md").write_text("previous report")
    with pytest.raises(ValueError, match="unknown scheme"):
        run_report(["rtn-w4g64", "nope"], out_dir=tmp_path, progress=False)
    assert (tmp_path / "report.md").read_text() == "previous report"
    with pytest.raises(ValueError, match="schemes"):
        run_report([], out_dir=tmp_path, progress=False)


def test_cli_report_and_schemes(tmp_path, capsys):
    assert main(["report", "--schemes", "rtn-w8,rtn-w4g64", "--out", str(tmp_path)]) == 0
    assert "rtn-w4g64" in capsys.readouterr().out
    assert main(["report", "--schemes", "bogus", "--out", str(tmp_path)]) == 2
    assert "unknown scheme" in capsys.readouterr().err
    assert main(["schemes"]) == 0
    assert "rtn-w3g64-sym" in capsys.readouterr().out
