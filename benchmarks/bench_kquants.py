"""Speed of chapter 08's block types, as ratios against baselines measured in the same run.

    python benchmarks/bench_kquants.py [--rows 1024] [--cols 4096] [--repeat 5] [--lib libggml-base.so]
                                       [--imatrix] [--model]

For every type on ``--rows x --cols`` N(0, 1) float32 weights (best of ``--repeat`` after a warm-up):

- quantize and dequantize, in M weights/s, against gguf-py on the same array (gguf-py quantizes the
  legacy and ternary types only; it dequantizes all) — goal >= 20x;
- dequantize in GB/s (bytes read + written) against this machine's memcpy moving as many bytes
  (``np.copyto``) — goal >= 50%; "ceiling" is gguf-py's dequantize time over that memcpy's, the ratio
  a dequantize running at memcpy speed would reach (where it is under 20x, so is every kernel's);
- with ``--lib PATH`` (a ``libggml-base.so`` built as scripts/make_kquant_golden.py explains; never a
  dependency of minq), llama.cpp's single-threaded ``quantize_row_<type>_ref`` on the same rows.

``--imatrix`` also times the quantizers with an importance matrix (a log-normal one) against their NumPy
reference and, with ``--lib``, llama.cpp's ``quantize_<type>(..., imatrix)`` on one thread.
``--model`` also times requantizing SmolLM2-135M's GGUF to Q4_K_M with ``minq quantize`` (the whole
file: read, dequantize, quantize, write), to compare with llama-quantize's 2.9 s on 2 threads on this
machine class (goal: <= 2x). The machine's load average is printed: above 2 (the cores), ratios drift.
"""

# ruff: noqa: B023  (each lambda is timed inside the iteration that made it)
from __future__ import annotations

import argparse
import ctypes
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_kernels import best_time  # the script's own folder, benchmarks/

from minq.kquants import TYPES, dequantize, quantize, quantize_reference

WEIGHTED = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS")


def c_quantizer(lib, qtype):
    """llama.cpp's quantizer of ``qtype`` as ``f(x, out)``: ``quantize_row_<t>_ref``, or for the i-quants
    ``quantize_<t>(x, out, rows, n, NULL)`` (their ``_ref`` runs a different, shorter search)."""
    if qtype.startswith("IQ"):
        return c_weighted(lib, qtype, None)
    f = getattr(lib, f"quantize_row_{qtype.lower().replace('_k', '_K')}_ref", None)
    if f is None:
        return None
    f.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    return lambda x, out: f(x.ctypes.data, out.ctypes.data, x.size)


def c_weighted(lib, qtype, w):
    """``quantize_<t>(x, out, rows, n, imatrix)`` of llama.cpp as ``f(x, out)`` (``w`` None: no imatrix)."""
    name = qtype.lower() if qtype.startswith("IQ") else qtype.lower().replace("_k", "_K")
    f = getattr(lib, f"quantize_{name}", None)
    if f is None:
        return None
    f.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    f.restype = ctypes.c_size_t
    return lambda x, out: f(x.ctypes.data, out.ctypes.data, x.shape[0], x.shape[1], None if w is None else w.ctypes.data)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1024)
    p.add_argument("--cols", type=int, default=4096)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--lib", default=None, help="libggml-base.so for llama.cpp's own quantizers (optional)")
    p.add_argument("--model", action="store_true", help="also requantize SmolLM2's GGUF to Q4_K_M")
    p.add_argument("--imatrix", action="store_true", help="also time the quantizers with an importance matrix")
    args = p.parse_args(argv)
    import gguf

    lib = ctypes.CDLL(args.lib) if args.lib else None
    x = np.random.default_rng(0).standard_normal((args.rows, args.cols)).astype(np.float32)
    n = x.size
    src = np.ones(4 * n, np.uint8)
    dst = np.empty_like(src)
    print(f"{args.rows} x {args.cols} float32 weights, best of {args.repeat}, load average {os.getloadavg()[0]:.2f}")
    print(f"{'type':6s} {'quantize':>10s} {'vs gguf-py':>10s} {'vs C ref':>9s}   {'dequantize':>10s} "
          f"{'vs gguf-py':>10s} {'GB/s':>6s} {'of memcpy':>9s} {'ceiling':>8s}")
    for qtype in TYPES:
        gt = gguf.GGMLQuantizationType[qtype]
        data = quantize(x, qtype)
        t_q = best_time(lambda: quantize(x, qtype), args.repeat)
        try:
            t_gq = best_time(lambda: gguf.quants.quantize(x, gt), max(1, args.repeat // 2))
            vs_q = f"{t_gq / t_q:9.1f}x"
        except NotImplementedError:
            vs_q = f"{'-':>10s}"
        vs_c = f"{'-':>9s}"
        if lib is not None and (f := c_quantizer(lib, qtype)) is not None:
            out = np.empty_like(data)
            t_c = best_time(lambda: f(x, out), args.repeat)
            vs_c = f"{t_c / t_q:8.2f}x"
        t_d = best_time(lambda: dequantize(data, qtype, x.shape), args.repeat)
        t_gd = best_time(lambda: gguf.quants.dequantize(data, gt), args.repeat)
        moved = data.nbytes + 4 * n
        k = moved // 2
        t_m = best_time(lambda: np.copyto(dst[:k], src[:k]), args.repeat)
        print(f"{qtype:6s} {n / t_q / 1e6:7.1f} M/s {vs_q} {vs_c}   {n / t_d / 1e6:7.1f} M/s {t_gd / t_d:9.1f}x "
              f"{moved / t_d / 1e9:6.2f} {t_m / t_d:9.0%} {t_gd / t_m:7.1f}x")
    if args.imatrix:
        w = np.random.default_rng(1).lognormal(size=args.cols).astype(np.float32)
        print(f"\nwith an importance matrix (log-normal), load average {os.getloadavg()[0]:.2f}")
        print(f"{'type':6} {'quantize':>10} {'vs NumPy ref':>12} {'vs C':>8}")
        for qtype in WEIGHTED:
            data = quantize(x, qtype, imatrix=w)
            t_q = best_time(lambda: quantize(x, qtype, imatrix=w), args.repeat)
            xs = x[: max(1, len(x) // 16)]                                   # the reference is slow: 1/16 of the rows
            t_r = best_time(lambda: quantize_reference(xs, qtype, imatrix=w), 1) * len(x) / len(xs)
            vs_c = f"{'-':>8}"
            if lib is not None and (f := c_weighted(lib, qtype, w)) is not None:
                out = np.empty_like(data)
                t_c = best_time(lambda: f(x, out), args.repeat)
                vs_c = f"{t_c / t_q:7.2f}x"
            print(f"{qtype:6} {n / t_q / 1e6:7.1f} M/s {t_r / t_q:11.1f}x {vs_c}")
    if args.model:
        from minq.gguf_write import quantize_gguf
        from minq.models import assets

        path = assets.fetch("smollm2")
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            quantize_gguf(path, Path(tmp) / "q4_k_m.gguf", "Q4_K_M", progress=False)
            t = time.perf_counter() - t0
        print(f"SmolLM2 GGUF -> Q4_K_M: {t:.2f} s (llama-quantize: 2.9 s on 2 threads, measured separately: "
              f"{t / 2.9:.2f}x); load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
