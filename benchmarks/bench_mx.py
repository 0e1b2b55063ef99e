"""Speed of MX / NVFP4 (chapter 10), as ratios against baselines measured in the same run.

    python benchmarks/bench_mx.py [--rows 1024] [--cols 4096] [--repeat 10] [--no-torch]

On ``--rows x --cols`` N(0, 1) float32 weights (best of ``--repeat`` after a warm-up, in which Numba
compiles), for ``quantize`` (FLOOR) / ``quantize_nvfp4`` (two-level) and ``dequantize`` of each format:

- the Numba kernels (``minq.mx_kernels``, what NumPy input runs) in GB/s, counting bytes read + written
  (4 n float32, n code bytes, n / block scale bytes), and as a fraction of this machine's memcpy moving
  as many bytes (``np.copyto`` of half of them: half read, half written, so both see the same caches),
  measured in this run — goal (issue 16): quantize >= 0.2x, dequantize >= 0.5x;
- the speedup over the readable NumPy reference (``quantize_reference`` / ``quantize_nvfp4_reference`` /
  ``dequantize_reference``) and the torch (CPU) path's time over the kernel's.

The load average is printed before and after: on a busy machine (load above the number of cores) the
parallel kernels wait for a core and the ratios drift.
"""

# ruff: noqa: B023  (each lambda is timed inside the iteration that made it)
from __future__ import annotations

import argparse
import os

import numpy as np
from bench_kernels import best_time  # the script's own folder, benchmarks/

from minq import mx


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1024)
    p.add_argument("--cols", type=int, default=4096)
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--no-torch", action="store_true", help="skip the torch (CPU) column")
    args = p.parse_args(argv)
    x = np.random.default_rng(0).standard_normal((args.rows, args.cols)).astype(np.float32)
    n = x.size
    torch = None
    if not args.no_torch:
        try:
            import torch
        except ImportError:  # pragma: no cover
            torch = None
    print(f"x [{args.rows}, {args.cols}] float32, best of {args.repeat}; {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"{'format':11s} {'op':10s} {'ms':>6s} {'GB/s':>6s} {'memcpy GB/s':>11s} {'of memcpy':>9s} {'goal':>5s} "
          f"{'vs NumPy ref':>12s} {'torch/np':>8s}")
    memcpy = {}
    for fmt in [*sorted(mx.MX_FORMATS), "nvfp4"]:
        block = 16 if fmt == "nvfp4" else 32
        moved = 4 * n + n + n // block
        if moved not in memcpy:
            src = np.ones(moved // 2, np.uint8)
            dst = np.empty_like(src)
            memcpy[moved] = best_time(lambda: np.copyto(dst, src), max(10, args.repeat))
        t_m = memcpy[moved]
        q, q_ref = ((mx.quantize_nvfp4, mx.quantize_nvfp4_reference) if fmt == "nvfp4" else
                    (lambda a: mx.quantize(a, fmt), lambda a: mx.quantize_reference(a, fmt)))
        t = q(x)
        rows = (("quantize", 0.2, q, q_ref, x), ("dequantize", 0.5, mx.dequantize, mx.dequantize_reference, t))
        for op, goal, fast, ref, arg in rows:
            sec = best_time(lambda: fast(arg), args.repeat)
            sec_ref = best_time(lambda: ref(arg), max(1, args.repeat // 3))
            ratio = f"{'-':>8s}"
            if torch is not None:
                targ = torch.from_numpy(x) if op == "quantize" else q(torch.from_numpy(x))
                ratio = f"{best_time(lambda: fast(targ), max(1, args.repeat // 3)) / sec:8.1f}"
            print(f"{fmt:11s} {op:10s} {sec * 1e3:6.2f} {moved / sec / 1e9:6.2f} {moved / t_m / 1e9:11.1f} "
                  f"{t_m / sec:8.2f}x {goal:4.1f}x {sec_ref / sec:11.1f}x {ratio}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
