"""Regenerate ``data/kquants/golden.npz``: llama.cpp's own bytes for its block quantization types.

What it does. For each of Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, TQ1_0 and TQ2_0
it calls llama.cpp's reference quantizer ``quantize_row_<type>_ref(const float *x, block_<type> *y,
int64_t k)`` through ctypes, one row at a time, on four deterministic input sets (seeded Gaussian,
Student-t, hand-made edge cases, real SmolLM2 weight rows), and writes the float32 inputs and the
bytes to one compressed ``.npz`` (atomically: a temporary file in the same folder, then ``os.replace``).
Without an imatrix these ``*_ref`` functions are exactly what ``llama-quantize`` runs for these types,
so the bytes are what llama.cpp writes into a GGUF file.

Where the oracle comes from. ``libggml-base.so`` built from the llama.cpp tree vendored in the PyPI
sdist ``llama-cpp-python==0.3.36`` (``vendor/llama.cpp/``, ggml-org/llama.cpp commit ``0c1e57098``).
Only the ``ggml-base`` CMake target is needed (about 20 s on 2 cores); it is compiled without
``-march``, so there is no FMA contraction on x86-64 and the bytes do not depend on the CPU.

CI never runs this script: the tests read the committed ``.npz`` and need neither a compiler nor
llama.cpp. Run it only to change the fixtures on purpose, then commit the new file.

How to run (from a checkout)::

    # build the oracle into a scratch folder (pip download of the sdist, cmake, ninja/make), then generate
    python scripts/make_kquant_golden.py --build /tmp/llamacpp

    # or with a libggml-base.so you built yourself
    python scripts/make_kquant_golden.py --lib /tmp/llamacpp/build/bin/libggml-base.so

The same build by hand::

    pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36 -d /tmp/llamacpp
    tar xzf /tmp/llamacpp/llama_cpp_python-0.3.36.tar.gz -C /tmp/llamacpp
    cmake -S /tmp/llamacpp/llama_cpp_python-0.3.36/vendor/llama.cpp -B /tmp/llamacpp/build -G Ninja \\
        -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF -DBUILD_SHARED_LIBS=ON -DLLAMA_BUILD_TESTS=OFF \\
        -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \\
        -DLLAMA_BUILD_COMMON=OFF -DLLAMA_CURL=OFF
    cmake --build /tmp/llamacpp/build --target ggml-base -j2    # -> /tmp/llamacpp/build/bin/libggml-base.so

After writing, the script cross-checks the file with gguf-py (``pip install gguf``), which quantizes
the legacy and TQ types bit-exactly and dequantizes every type: it prints the number of bytes that
differ from ``gguf.quants.quantize`` (expected 0) and checks that ``gguf.quants.dequantize`` of every
fixture equals llama.cpp's own ``dequantize_row_<type>`` and is finite. ``--check-only`` runs just
this on the committed file; ``--bench`` times the single-threaded C quantizers (benchmark baselines).

File layout (all arrays load with ``np.load(path)``, no pickle):

- ``x_<set>``: float32 ``[rows, n]``, n a multiple of 256 so every type's block size divides it;
- ``q_<set>_<TYPE>``: uint8 ``[rows, n / block_elems * block_bytes]``, row ``r`` is the C quantizer's
  output for ``x_<set>[r]``;
- ``meta``: a JSON string (llama.cpp commit, sdist, block sizes, input-set recipes, row labels of the
  edge set, SmolLM2 row indices, numpy version, date).

Re-running gives identical arrays (seeded numpy ``Generator`` streams); only ``meta``'s date changes.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "data" / "kquants" / "golden.npz"

SDIST_NAME = "llama-cpp-python"
SDIST_VERSION = "0.3.36"
SDIST_FILE = "llama_cpp_python-0.3.36.tar.gz"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
# the sdist's CHANGELOG: "update llama.cpp to ggml-org/llama.cpp@0c1e57098"; the sdist also carries the
# submodule's git metadata, whose HEAD is this commit
LLAMA_CPP_COMMIT = "0c1e57098bba43ac29e6e3b677cdceebdd22334f"

# type: (elements per block, bytes per block, ggml type id); from ggml/src/ggml-common.h at that commit
TYPES = {
    "Q4_0": (32, 18, 2),
    "Q4_1": (32, 20, 3),
    "Q5_0": (32, 22, 6),
    "Q5_1": (32, 24, 7),
    "Q8_0": (32, 34, 8),
    "Q2_K": (256, 84, 10),
    "Q3_K": (256, 110, 11),
    "Q4_K": (256, 144, 12),
    "Q5_K": (256, 176, 13),
    "Q6_K": (256, 210, 14),
    "TQ1_0": (256, 54, 34),
    "TQ2_0": (256, 66, 35),
}
# gguf-py quantizes these bit-exactly; it raises NotImplementedError for the K types
GGUF_PY_QUANTIZES = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "TQ1_0", "TQ2_0")

SEEDS = {"gauss": 20261127, "student": 20261128, "edge": 20261129, "smollm2": 20261130}
SMOLLM2_TENSORS = ("blk.0.ffn_down", "blk.29.ffn_down")
SMOLLM2_ROWS_PER_TENSOR = 8


# ----------------------------------------------------------------------------------------------------
# The oracle: build and load libggml-base.so

CMAKE_FLAGS = [
    "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=OFF", "-DBUILD_SHARED_LIBS=ON",
    "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_TOOLS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_COMMON=OFF", "-DLLAMA_CURL=OFF",
]


def _run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def build_lib(workdir: Path, jobs: int = 2) -> Path:
    """Download the pinned sdist into ``workdir``, unpack it, build the ``ggml-base`` target; the .so path."""
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    sdist = workdir / SDIST_FILE
    if not sdist.exists():
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
              f"{SDIST_NAME}=={SDIST_VERSION}", "-d", str(workdir)])
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        raise RuntimeError(f"{sdist}: sha256 {digest}, expected {SDIST_SHA256}")
    src = workdir / f"llama_cpp_python-{SDIST_VERSION}" / "vendor" / "llama.cpp"
    if not src.is_dir():
        with tarfile.open(sdist) as tf:
            tf.extractall(workdir, filter="data")
    build = workdir / "build"
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    _run(["cmake", "-S", str(src), "-B", str(build), *generator, *CMAKE_FLAGS])
    _run(["cmake", "--build", str(build), "--target", "ggml-base", "-j", str(jobs)])
    found = sorted(build.rglob("libggml-base.so"))
    if not found:
        raise RuntimeError(f"no libggml-base.so under {build}")
    return found[0]


def load_lib(path: Path) -> ctypes.CDLL:
    """``libggml-base.so`` with argtypes set for every ``quantize_row_<t>_ref`` and ``dequantize_row_<t>``."""
    lib = ctypes.CDLL(str(path))
    for t in TYPES:
        for name in (f"quantize_row_{_c_name(t)}_ref", f"dequantize_row_{_c_name(t)}"):
            fn = getattr(lib, name)                 # AttributeError if the symbol is not exported
            fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
            fn.restype = None
    return lib


def _c_name(t: str) -> str:
    """``Q4_K`` -> ``q4_K``, ``TQ1_0`` -> ``tq1_0`` (the C spelling)."""
    return t[:-1].lower() + t[-1]


def row_bytes(t: str, n: int) -> int:
    elems, nbytes, _ = TYPES[t]
    assert n % elems == 0, (t, n)
    return n // elems * nbytes


def c_quantize(lib: ctypes.CDLL, x: np.ndarray, t: str) -> np.ndarray:
    """``quantize_row_<t>_ref`` on each row of float32 ``x`` [rows, n]: uint8 [rows, bytes per row]."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    rows, n = x.shape
    out = np.zeros((rows, row_bytes(t, n)), dtype=np.uint8)
    fn = getattr(lib, f"quantize_row_{_c_name(t)}_ref")
    for r in range(rows):
        fn(x[r].ctypes.data, out[r].ctypes.data, n)
    return out


def c_dequantize(lib: ctypes.CDLL, q: np.ndarray, t: str) -> np.ndarray:
    """``dequantize_row_<t>`` on each row of uint8 ``q``: float32 [rows, n]."""
    q = np.ascontiguousarray(q, dtype=np.uint8)
    elems, nbytes, _ = TYPES[t]
    rows, nb = q.shape
    out = np.zeros((rows, nb // nbytes * elems), dtype=np.float32)
    fn = getattr(lib, f"dequantize_row_{_c_name(t)}")
    for r in range(rows):
        fn(q[r].ctypes.data, out[r].ctypes.data, out.shape[1])
    return out


# ----------------------------------------------------------------------------------------------------
# Inputs

def gauss_set() -> tuple[np.ndarray, str]:
    rng = np.random.default_rng(SEEDS["gauss"])
    x = rng.standard_normal((16, 1024))
    x[8:10] *= 1e-3                         # small scales: d far below 1
    x[10:12] *= 1e3                         # large scales (max |x| about 4e3, d well inside fp16)
    x[12:14] += 0.75                        # a mean offset: the min of the type-1 formats is not ~ -max
    x[14:16] = x[14:16] * 0.25 - 1.0        # all (or almost all) negative
    return x.astype(np.float32), ("default_rng(seed).standard_normal((16, 1024)); rows 8-9 x1e-3, "
                                  "10-11 x1e3, 12-13 +0.75, 14-15 x0.25-1")


def student_set() -> tuple[np.ndarray, str]:
    rng = np.random.default_rng(SEEDS["student"])
    return (rng.standard_t(3, (16, 1024)).astype(np.float32),
            "default_rng(seed).standard_t(3, (16, 1024)): heavy tails")


def edge_set() -> tuple[np.ndarray, list[str]]:
    """Hand-made rows of 1024 (four 256-element super-blocks, 32 blocks of 32), each with a label.

    Left out on purpose: NaN/inf, and blocks whose largest |x| is below about 4e-37 (subnormal-only
    blocks). There the legacy and TQ quantizers compute ``1/d = inf`` and convert inf or NaN to an
    integer, which is undefined behaviour in C: the bytes would depend on the compiler and CPU.
    Subnormals appear here only next to a normal value in the same block.
    """
    n = 1024
    rng = np.random.default_rng(SEEDS["edge"])
    g = rng.standard_normal(n)
    i = np.arange(n)
    rows: dict[str, np.ndarray] = {}

    rows["zeros"] = np.zeros(n)
    rows["const_pos_0.7"] = np.full(n, 0.7)
    rows["const_neg_0.7"] = np.full(n, -0.7)
    rows["const_pos_1"] = np.ones(n)
    rows["tiny_1e-30"] = g * 1e-30
    rows["tiny_1e-20"] = g * 1e-20                # x*x is subnormal in float32
    sub_f = rng.integers(-(2 ** 20), 2 ** 20, n) * 2.0 ** -149     # float32 subnormals (< 2**-126)
    r = sub_f.copy()
    r[::32] = np.where(np.arange(n // 32) % 2 == 0, 1e-30, -1e-30)   # one normal value per block
    rows["subnormal_with_1e-30"] = r
    r = sub_f.copy()
    r[::8] = g[::8]                                                  # normal values of order 1
    rows["subnormal_with_gauss"] = r
    rows["huge_1e4"] = g * 1e4
    r = np.clip(g * 2e4, -6e4, 6e4)
    r[::64] = 6e4
    r[32::64] = -6e4
    rows["huge_6e4"] = r                          # max |x| = 6e4: d, dmin and TQ's d = amax stay in fp16
    r = np.zeros(n)
    r[100] = 5.0
    rows["outlier_pos_in_zeros"] = r
    r = np.zeros(n)
    r[700] = -3.0
    rows["outlier_neg_in_zeros"] = r
    r = g * 0.01
    r[::37] = 8.0                                 # outliers in small noise
    rows["outliers_in_noise"] = r

    # ties on the grids: blocks of 32 whose extreme sets d = 1 exactly, the rest on half-integers
    blocks = n // 32
    r = np.tile(np.arange(-16, 16) / 2.0, blocks)                 # Q4_0: max = -8 -> d = 1, x + 8.5 exact
    rows["ties_half_q4"] = r
    r = np.tile(np.arange(-32, 32, 2) / 2.0 + 0.5, blocks)       # Q5_0/Q5_1-ish: half-integers in [-15.5, 15.5]
    r[::32] = -16.0                                               # Q5_0: max = -16 -> d = 1
    rows["ties_half_q5"] = r
    r = rng.integers(-254, 255, n) / 2.0                          # Q8_0: d = 127/127 = 1, roundf of k+0.5
    r[::32] = 127.0
    rows["ties_half_q8"] = r
    r = np.tile(np.array([1.0, -1.0, 0.5, -0.5, 0.0, 0.25, -0.75, 0.49999997]), n // 8)
    rows["ties_ternary"] = r                                      # TQ: amax = 1, lroundf(+-0.5) = +-1
    rows["int_grid_0_15"] = (i % 16).astype(np.float64)           # exactly on a 4-bit unsigned grid
    rows["int_grid_m4_3"] = (i % 8 - 4).astype(np.float64)        # exactly on Q3_K's [-4, 3]
    rows["int_grid_m32_31"] = (i * 7 % 64 - 32).astype(np.float64)  # Q6_K's [-32, 31]

    # the signed extreme and its first occurrence
    r = g.copy()
    r[5::32] = -6.0
    rows["max_abs_negative"] = r
    rows["all_negative"] = -1.0 - rng.random(n)
    r = g * 0.5
    r[3::32], r[20::32] = 4.0, -4.0               # +4 comes first: it is the one kept
    rows["abs_tie_pos_first"] = r
    r = g * 0.5
    r[3::32], r[20::32] = -4.0, 4.0
    rows["abs_tie_neg_first"] = r

    rows["alternating"] = np.where(i % 2 == 0, 1.0, -1.0) * (1.0 + (i % 7) * 0.1)
    rows["ramp_pm1"] = np.linspace(-1.0, 1.0, n)
    rows["ramp_int"] = i.astype(np.float64)

    # per-block and per-sub-block scale contrasts: tiny sub-blocks get a sub-scale of 0 after the
    # 4/6-bit scale quantization (the "d * sc == 0 keeps the search's L" path of the K types)
    r = g.copy()
    r[0:256] = 0.0
    r[256:512] *= 1e-3
    r[512:768] *= 1e3
    r[768:1024] = 0.3
    rows["blocks_mixed"] = r
    r = g.copy()
    r[0:16] = 0.0
    r[288:320] = 0.0
    rows["subblock_zero"] = r
    r = g * np.repeat(10.0 ** -(np.arange(n // 16) % 16 / 3.0), 16)   # 16-element sub-blocks 1 .. 1e-5
    rows["subblock_decades_16"] = r
    r = g * np.repeat(10.0 ** -(np.arange(n // 32) % 8 / 2.0), 32)    # 32-element sub-blocks 1 .. 3e-4
    rows["subblock_decades_32"] = r
    r = np.abs(g) + 2.0
    rows["positive_offset"] = r                    # min(x) > 0: the type-1 searches start from min = 0

    labels = list(rows)
    x = np.stack([rows[k] for k in labels]).astype(np.float32)
    assert x.shape[1] % 256 == 0 and np.isfinite(x).all() and np.abs(x).max() <= 6e4
    return x, labels


def smollm2_set() -> tuple[np.ndarray, dict[str, list[int]]]:
    """8 seeded rows of each of SmolLM2's blk.0 and blk.29 ffn_down (1536 wide), as minq loads them."""
    sys.path.insert(0, str(ROOT))
    import minq

    m = minq.load_model("smollm2", progress=False)
    rng = np.random.default_rng(SEEDS["smollm2"])
    parts, picked = [], {}
    for name in SMOLLM2_TENSORS:
        W = np.asarray(m.weights[name].dequantize(), dtype=np.float32)     # [out, in] = [576, 1536]
        rows = np.sort(rng.choice(W.shape[0], SMOLLM2_ROWS_PER_TENSOR, replace=False))
        parts.append(W[rows])
        picked[name] = [int(v) for v in rows]
    return np.concatenate(parts), picked


# ----------------------------------------------------------------------------------------------------
# Fixture

def make_golden(lib: ctypes.CDLL) -> dict[str, np.ndarray]:
    x_gauss, gauss_recipe = gauss_set()
    x_student, student_recipe = student_set()
    x_edge, edge_labels = edge_set()
    x_smol, smol_rows = smollm2_set()
    inputs = {"gauss": x_gauss, "student": x_student, "edge": x_edge, "smollm2": x_smol}
    arrays: dict[str, np.ndarray] = {}
    for s, x in inputs.items():
        arrays[f"x_{s}"] = x
        for t in TYPES:
            arrays[f"q_{s}_{t}"] = c_quantize(lib, x, t)
    meta = {
        "oracle": "quantize_row_<type>_ref from libggml-base.so (ggml-base target only, GGML_NATIVE=OFF)",
        "llama_cpp_commit": LLAMA_CPP_COMMIT,
        "sdist": f"{SDIST_NAME}=={SDIST_VERSION}",
        "sdist_sha256": SDIST_SHA256,
        "types": {t: {"block_elems": e, "block_bytes": b, "ggml_type": i} for t, (e, b, i) in TYPES.items()},
        "sets": {
            "gauss": {"seed": SEEDS["gauss"], "recipe": gauss_recipe},
            "student": {"seed": SEEDS["student"], "recipe": student_recipe},
            "edge": {"seed": SEEDS["edge"], "row_labels": edge_labels},
            "smollm2": {"seed": SEEDS["smollm2"], "model": "minq.load_model('smollm2')",
                        "rows": smol_rows, "recipe": "W = weights[name].dequantize(); W[rows]"},
        },
        "layout": "x_<set>: float32 [rows, n]; q_<set>_<type>: uint8 [rows, n/block_elems*block_bytes]",
        "numpy": np.__version__,
        "date": datetime.date.today().isoformat(),
        "script": "scripts/make_kquant_golden.py",
    }
    arrays["meta"] = np.array(json.dumps(meta, indent=1))
    return arrays


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez_compressed`` to a temporary file in the same folder, then ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, **arrays)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)               # mkstemp makes it 0600; a normal file instead
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def check_with_gguf(path: Path, lib: ctypes.CDLL | None) -> bool:
    """Cross-check ``path`` with gguf-py; True when every count is 0. Prints one table."""
    from gguf import GGMLQuantizationType, quants

    z = np.load(path)
    sets = [k[2:] for k in z.files if k.startswith("x_")]
    ok = True
    print(f"{'set':8} {'type':6} {'gguf-py quantize: bytes differing':>34} "
          f"{'dequantize: gguf-py vs C':>25} {'non-finite':>10}")
    for s in sets:
        x = z[f"x_{s}"]
        for t in TYPES:
            q = z[f"q_{s}_{t}"]
            qt = GGMLQuantizationType[t]
            if t in GGUF_PY_QUANTIZES:
                with np.errstate(all="ignore"):
                    diff = int(np.count_nonzero(quants.quantize(x, qt) != q))
            else:
                diff = None
            dq = quants.dequantize(q, qt)
            assert dq.shape == x.shape, (s, t, dq.shape)
            nonfinite = int(np.count_nonzero(~np.isfinite(dq)))
            cdiff = None
            if lib is not None:
                cdq = c_dequantize(lib, q, t)
                cdiff = int(np.count_nonzero(cdq.view(np.uint32) != dq.astype(np.float32).view(np.uint32)))
            ok &= diff in (None, 0) and cdiff in (None, 0) and nonfinite == 0
            print(f"{s:8} {t:6} {'n/a (K type)' if diff is None else diff:>34} "
                  f"{'n/a (no --lib)' if cdiff is None else cdiff:>25} {nonfinite:>10}")
    return ok


def bench(lib: ctypes.CDLL, repeats: int = 5) -> None:
    """Single-threaded C throughput on 256*4096 N(0,1) float32 elements (one call), median of ``repeats``."""
    n = 256 * 4096
    x = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    q4 = np.zeros(row_bytes("Q4_K", n), np.uint8)
    q6 = np.zeros(row_bytes("Q6_K", n), np.uint8)
    y = np.zeros(n, np.float32)
    cases = [
        ("quantize_row_q4_K_ref", lambda: lib.quantize_row_q4_K_ref(x.ctypes.data, q4.ctypes.data, n)),
        ("quantize_row_q6_K_ref", lambda: lib.quantize_row_q6_K_ref(x.ctypes.data, q6.ctypes.data, n)),
        ("dequantize_row_q4_K", lambda: lib.dequantize_row_q4_K(q4.ctypes.data, y.ctypes.data, n)),
    ]
    for name, fn in cases:
        fn()                                            # warm-up (and q4 filled before dequantizing)
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        med = float(np.median(ts))
        print(f"{name:24} median {med * 1e3:8.2f} ms  {n / med / 1e6:8.2f} M elements/s  "
              f"(runs: {', '.join(f'{t * 1e3:.1f}' for t in ts)} ms)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--lib", type=Path, help="path to libggml-base.so")
    g.add_argument("--build", type=Path, metavar="DIR",
                   help="download the pinned sdist into DIR and build libggml-base.so there")
    ap.add_argument("--out", type=Path, default=OUT, help=f"output file (default {OUT.relative_to(ROOT)})")
    ap.add_argument("--jobs", type=int, default=2, help="build jobs for --build (default 2)")
    ap.add_argument("--check-only", action="store_true", help="only cross-check the existing --out file")
    ap.add_argument("--no-check", action="store_true", help="skip the gguf-py cross-check")
    ap.add_argument("--bench", action="store_true", help="also time the C quantizers (single thread)")
    args = ap.parse_args()

    lib_path = build_lib(args.build, args.jobs) if args.build else args.lib
    print(f"oracle: {lib_path}")
    lib = load_lib(lib_path)
    if not args.check_only:
        arrays = make_golden(lib)
        write_npz(args.out, arrays)
        print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes, {len(arrays)} arrays)")
    ok = True
    if not args.no_check:
        ok = check_with_gguf(args.out, lib)
        print("gguf-py cross-check:", "OK" if ok else "MISMATCH")
    if args.bench:
        bench(lib)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
