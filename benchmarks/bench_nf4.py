"""Speed of NF4 (chapter 10), as ratios against baselines measured in the same run.

    python benchmarks/bench_nf4.py [--rows 1024] [--cols 4096] [--block 64] [--repeat 5]

On ``--rows x --cols`` N(0, 1) float32 weights (best of ``--repeat`` after a warm-up; Numba compiles in
the warm-up), for ``quantize`` and ``dequantize``:

- the Numba kernel (``minq.nf4.quantize`` / ``dequantize`` on NumPy arrays) in GB/s (bytes read +
  written: 4 n float32, n / 2 packed bytes, 4 n / block absmax bytes) and as a fraction of this
  machine's memcpy moving as many bytes (``np.copyto`` of half of them: half read, half written) —
  goal (the issue): quantize >= 0.2x, dequantize >= 0.5x of memcpy;
- the speedup over the readable NumPy reference (``quantize_reference`` / ``dequantize_reference``)
  and over the torch path (CPU tensors), on the same array.

The machine's load average is printed before and after: above the number of cores, ratios drift.
"""

# ruff: noqa: B023  (each lambda is timed inside the iteration that made it)
from __future__ import annotations

import argparse
import os

import numpy as np
from bench_kernels import best_time  # the script's own folder, benchmarks/

from minq import nf4


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1024)
    p.add_argument("--cols", type=int, default=4096)
    p.add_argument("--block", type=int, default=64)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--no-torch", action="store_true", help="skip the torch (CPU) column")
    args = p.parse_args(argv)
    x = np.random.default_rng(0).standard_normal((args.rows, args.cols)).astype(np.float32)
    n, b = x.size, args.block
    packed, absmax = nf4.quantize(x, b)
    moved = 4 * n + packed.nbytes + absmax.nbytes
    src = np.ones(moved // 2, np.uint8)
    dst = np.empty_like(src)
    print(f"NF4, {args.rows} x {args.cols} float32 weights, block {b}, best of {args.repeat}; "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}")
    t_m = best_time(lambda: np.copyto(dst, src), max(10, args.repeat))
    print(f"memcpy of {moved / 1e6:.1f} MB (read + written): {moved / t_m / 1e9:.2f} GB/s")
    print(f"{'':11s} {'ms':>6s} {'kernel':>10s} {'GB/s':>6s} {'of memcpy':>9s} {'goal':>5s} {'vs NumPy ref':>12s} "
          f"{'vs torch':>9s}")
    torch_x = None
    if not args.no_torch:
        try:
            import torch

            torch_x = torch.from_numpy(x)
            torch_p, torch_a = torch.from_numpy(packed), torch.from_numpy(absmax)
        except ImportError:  # pragma: no cover
            pass
    rows = (("quantize", 0.2, lambda: nf4.quantize(x, b), lambda: nf4.quantize_reference(x, b),
             lambda: nf4.quantize(torch_x, b)),
            ("dequantize", 0.5, lambda: nf4.dequantize(packed, absmax, x.shape, b),
             lambda: nf4.dequantize_reference(packed, absmax, x.shape, b),
             lambda: nf4.dequantize(torch_p, torch_a, x.shape, b)))
    for name, goal, fast, ref, tor in rows:
        t = best_time(fast, args.repeat)
        t_r = best_time(ref, max(1, args.repeat // 2))
        vs_t = f"{best_time(tor, max(1, args.repeat // 2)) / t:8.1f}x" if torch_x is not None else f"{'-':>9s}"
        print(f"{name:11s} {t * 1e3:6.2f} {n / t / 1e6:6.0f} M/s {moved / t / 1e9:6.2f} {t_m / t:8.2f}x {goal:4.1f}x "
              f"{t_r / t:11.1f}x {vs_t}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
