"""Regenerate ``data/kquants/golden_imatrix.npz``: llama.cpp's bytes with an importance matrix, and its i-quants.

What it does. On the four input sets of ``data/kquants/golden.npz`` (read from that file, so the two
fixtures share their inputs) it calls llama.cpp's public quantizers ``quantize_<type>(const float *src,
void *dst, int64_t nrow, int64_t n_per_row, const float *imatrix)`` through ctypes — what
``llama-quantize`` runs, through ``ggml_quantize_chunk`` — and stores:

- ``w_<set>``: float32 ``[n]``, the importance of each input column used for that set (seeded
  log-normal values, one column in ten set to 0, a few columns 100x larger);
- ``q_<set>_<type>``: the bytes with that imatrix, for Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K,
  Q6_K (each type's ``quantize_row_<type>_impl``) and IQ4_NL, IQ4_XS;
- ``q_<set>_<type>_none``: IQ4_NL and IQ4_XS without an imatrix (the other types' no-imatrix bytes are
  ``golden.npz``'s, since ``quantize_<type>`` then calls the ``*_ref`` functions; the script checks that);
- overflow cases, where float32 sums overflow, sub-block scales become NaN and ggml's ``if (ax > amax)``
  loops skip them (``HUGE``): ``w_gauss_huge``, ``w_gauss`` with 8 columns set to 1e37,
  and ``q_gauss_<type>_huge``, the nine weighted types with it; ``x_huge``, float32 ``[8, n]``, four
  student and four gauss rows times 1e15, and ``q_huge_<type>_none`` for Q3_K, Q6_K without an imatrix.
  Blocks whose scales overflow fp16 are stored as llama.cpp writes them (NaN / inf bytes included).

The file is written atomically. CI never runs this script; the tests read the committed file.

How to run (from a checkout; the oracle as in scripts/make_kquant_golden.py)::

    python scripts/make_imatrix_golden.py --build /tmp/llamacpp       # download, build, generate
    python scripts/make_imatrix_golden.py --lib /tmp/llamacpp/build/bin/libggml-base.so
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_kquant_golden as base  # noqa: E402  (the oracle's build and the shared inputs)

OUT = base.ROOT / "data" / "kquants" / "golden_imatrix.npz"
# type: (elements per block, bytes per block); the C function is quantize_<c name>
WEIGHTED = {t: base.TYPES[t][:2] for t in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")}
IQ = {"IQ4_NL": (32, 18), "IQ4_XS": (256, 136)}
SEED = 20261207
# overflow cases: (sets, columns, importance) of w_<set>_huge; x_huge = rows of x_student, x_gauss * 1e15
HUGE = {"sets": ("gauss",), "columns": 8, "importance": 1e37, "x_scale": 1e15, "x_rows": 4,
        "types_none": ("Q3_K", "Q6_K")}


def _c_name(t: str) -> str:
    return t.lower() if t.startswith("IQ") else base._c_name(t)


def c_quantize(lib: ctypes.CDLL, x: np.ndarray, t: str, imatrix: np.ndarray | None) -> np.ndarray:
    """``quantize_<t>(x, dst, rows, n, imatrix)``: uint8 [rows, bytes per row]."""
    x = np.ascontiguousarray(x, np.float32)
    rows, n = x.shape
    elems, nbytes = {**WEIGHTED, **IQ}[t]
    out = np.zeros((rows, n // elems * nbytes), np.uint8)
    fn = getattr(lib, f"quantize_{_c_name(t)}")
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    fn.restype = ctypes.c_size_t
    w = None if imatrix is None else np.ascontiguousarray(imatrix, np.float32)
    written = fn(x.ctypes.data, out.ctypes.data, rows, n, None if w is None else w.ctypes.data)
    assert written == out.size, (t, written, out.size)
    return out


def importance(n: int, rng: np.random.Generator) -> np.ndarray:
    """Seeded importances ``[n]``: log-normal, every tenth column 0, a few columns 100x larger."""
    w = np.exp(rng.standard_normal(n))
    w[::10] = 0.0
    w[rng.choice(n, 4, replace=False)] *= 100.0
    return w.astype(np.float32)


def make(lib: ctypes.CDLL, golden: Path) -> dict[str, np.ndarray]:
    g = np.load(golden)
    sets = [k[2:] for k in g.files if k.startswith("x_")]
    rng = np.random.default_rng(SEED)
    arrays: dict[str, np.ndarray] = {}
    for s in sets:
        x = g[f"x_{s}"]
        w = importance(x.shape[1], rng)
        arrays[f"w_{s}"] = w
        for t in (*WEIGHTED, *IQ):
            arrays[f"q_{s}_{t}"] = c_quantize(lib, x, t, w)
        for t in IQ:
            arrays[f"q_{s}_{t}_none"] = c_quantize(lib, x, t, None)
        for t in WEIGHTED:                  # without an imatrix the public quantizer is the *_ref one
            assert np.array_equal(c_quantize(lib, x, t, None), g[f"q_{s}_{t}"]), (s, t)
    huge = np.random.default_rng(SEED + 1)    # its own stream: the arrays above do not change
    for s in HUGE["sets"]:
        w = arrays[f"w_{s}"].copy()
        w[huge.choice(len(w), HUGE["columns"], replace=False)] = HUGE["importance"]
        arrays[f"w_{s}_huge"] = w
        for t in WEIGHTED:
            arrays[f"q_{s}_{t}_huge"] = c_quantize(lib, g[f"x_{s}"], t, w)
    k = HUGE["x_rows"]
    xh = (np.concatenate([g["x_student"][:k], g["x_gauss"][:k]]) * np.float32(HUGE["x_scale"])).astype(np.float32)
    arrays["x_huge"] = xh
    for t in HUGE["types_none"]:
        arrays[f"q_huge_{t}_none"] = c_quantize(lib, xh, t, None)
    meta = {
        "oracle": "quantize_<type>(src, dst, nrow, n_per_row, imatrix) from libggml-base.so",
        "llama_cpp_commit": base.LLAMA_CPP_COMMIT,
        "sdist": f"{base.SDIST_NAME}=={base.SDIST_VERSION}",
        "inputs": "x_<set> of data/kquants/golden.npz",
        "imatrix": f"default_rng({SEED}); per set in file order: exp(N(0,1)) [n], w[::10] = 0, 4 columns x100",
        "layout": "w_<set>: float32 [n]; q_<set>_<type>[_none]: uint8 [rows, n/block_elems*block_bytes]",
        "huge": f"default_rng({SEED + 1}): w_<set>_huge = w_<set> with {HUGE['columns']} columns = "
                f"{HUGE['importance']:g} for {list(HUGE['sets'])}; x_huge = [x_student[:{HUGE['x_rows']}], "
                f"x_gauss[:{HUGE['x_rows']}]] * {HUGE['x_scale']:g}, q_huge_<type>_none for "
                f"{list(HUGE['types_none'])}",
        "types": {t: {"block_elems": e, "block_bytes": b} for t, (e, b) in {**WEIGHTED, **IQ}.items()},
        "numpy": np.__version__,
        "date": datetime.date.today().isoformat(),
        "script": "scripts/make_imatrix_golden.py",
    }
    arrays["meta"] = np.array(json.dumps(meta, indent=1))
    return arrays


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--lib", type=Path, help="path to libggml-base.so")
    g.add_argument("--build", type=Path, metavar="DIR", help="download the pinned sdist into DIR and build there")
    ap.add_argument("--golden", type=Path, default=base.OUT, help="the inputs (default data/kquants/golden.npz)")
    ap.add_argument("--out", type=Path, default=OUT, help="output file (default data/kquants/golden_imatrix.npz)")
    args = ap.parse_args()
    lib_path = base.build_lib(args.build) if args.build else args.lib
    lib = base.load_lib(lib_path)
    arrays = make(lib, args.golden)
    base.write_npz(args.out, arrays)
    print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes, {len(arrays)} arrays)")


if __name__ == "__main__":
    main()
