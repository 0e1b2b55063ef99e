"""The golden files under ``data/`` are current (equal to what ``scripts/make_golden_data.py`` builds
today) and correct by an oracle that does not share minq's code: ml_dtypes for the float formats, a
bit-by-bit packer written here for the packed layouts, and the file's own q, s, z for the GPTQ layer."""

import importlib.util
import io
import json
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"


def _script():
    spec = importlib.util.spec_from_file_location("make_golden_data", ROOT / "scripts" / "make_golden_data.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


GOLD = _script()


def _csv(path):
    lines = path.read_text().splitlines()
    return lines[0].split(","), [line.split(",") for line in lines[1:]]


@pytest.mark.parametrize("build", [GOLD.build_format_tables, GOLD.build_encode_cases, GOLD.build_packing_examples])
def test_text_files_are_current(build):
    for rel, data in build().items():
        assert (DATA / rel).read_bytes() == data, f"data/{rel} is stale: run python scripts/make_golden_data.py"


@pytest.mark.parametrize("name", GOLD.SMALL_FORMATS)
def test_format_tables_match_ml_dtypes(name):
    head, rows = _csv(DATA / "formats" / f"{name}.csv")
    assert head == ["code", "bits", "value"]
    codes = np.array([int(r[0]) for r in rows], np.uint8)
    assert list(codes) == list(range(len(rows))) and all(int(r[1], 2) == int(r[0]) for r in rows)
    want = codes.view(getattr(ml_dtypes, name)).astype(np.float32)
    got = np.array([float(r[2]) for r in rows], np.float32)
    assert np.array_equal(got, want, equal_nan=True)
    num = ~np.isnan(want)
    assert np.array_equal(np.signbit(got[num]), np.signbit(want[num]))          # -0 is written as -0.0


@pytest.mark.parametrize("name", GOLD.SMALL_FORMATS)
def test_encode_cases_match_ml_dtypes(name):
    head, rows = _csv(DATA / "formats" / "encode" / f"{name}.csv")
    assert head == ["x_bits", "x", "code", "code_saturate"] and len(rows) > 100
    x = np.array([int(r[0], 16) for r in rows], np.uint32).view(np.float32)
    assert np.array_equal(x, np.array([float(r[1]) for r in rows], np.float32), equal_nan=True)
    code = np.array([int(r[2]) for r in rows], np.uint8)
    dt = getattr(ml_dtypes, name)
    with np.errstate(over="ignore", invalid="ignore"):
        want = x.astype(dt)
    got = code.view(dt)
    nan = np.isnan(want.astype(np.float32))
    assert np.array_equal(np.isnan(got.astype(np.float32)), nan)
    assert np.array_equal(code[~nan], want.view(np.uint8)[~nan])
    sat = np.array([int(r[3]) for r in rows], np.uint8).view(dt).astype(np.float32)
    finite_in = np.isfinite(x) if name != "float8_e8m0fnu" else (x > 0)
    assert np.isfinite(sat[finite_in & ~np.isnan(x)]).all()              # saturating: never Inf/NaN


def _pack_bits_by_hand(row, bits):
    """Little-endian bit stream: code i at stream bits [i*bits, (i+1)*bits), padded to whole chunks."""
    from math import gcd

    c = 8 // gcd(bits, 8)
    row = list(row) + [0] * (-len(row) % c)
    stream = sum(int(q) << (i * bits) for i, q in enumerate(row))
    return stream.to_bytes(len(row) * bits // 8, "little")


def test_packing_examples_match_a_bit_by_bit_packer():
    doc = json.loads((DATA / "packing" / "examples.json").read_text())
    assert {c["bits"] for c in doc["cases"]} == set(range(1, 9))
    for case in doc["cases"]:
        for row, hexed in zip(case["codes"], case["packed_hex"]):
            assert len(row) == case["n"]
            assert bytes.fromhex(hexed) == _pack_bits_by_hand(row, case["bits"]), case


def test_gptq_layer_is_current_and_self_consistent():
    f = np.load(DATA / "gptq" / "layer_w4g32_act.npz")
    W, H = GOLD.gptq_layer()
    assert np.array_equal(f["W"], W) and np.array_equal(f["H"], H)
    assert json.loads(str(f["config"])) == GOLD.GPTQ_CONFIG
    # readable without minq: W_hat = s * (q - z) per group of 32 stored columns, then un-permuted
    q, s, z, perm = f["q"].astype(np.float32), f["s"], f["z"], f["perm"]
    W_stored = np.repeat(s, 32, axis=1) * (q - np.repeat(z, 32, axis=1))
    W_hat = np.empty_like(W_stored)
    W_hat[:, perm] = W_stored
    assert np.array_equal(W_hat, f["W_hat"])
    # current: today's gptq_quantize gives the same codes. LAPACK/BLAS builds differ in the last bits of
    # the Cholesky factor, which can flip a code that sits at a rounding tie on another machine: allow
    # 0.1% of the codes (8 of 8192) to differ, and print the count (0 on the machine that wrote the file).
    new = np.load(io.BytesIO(GOLD.build_gptq_layer()["gptq/layer_w4g32_act.npz"]))
    n_bad = int((new["q"] != f["q"]).sum())
    print(f"GPTQ golden layer: {n_bad} of {f['q'].size} codes differ")
    assert n_bad <= f["q"].size // 1000, "data/gptq is stale: run python scripts/make_golden_data.py"
    assert np.array_equal(new["perm"], perm)
