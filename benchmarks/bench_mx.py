"""Speed of MX / NVFP4 (chapter 10), as ratios against baselines measured in the same run.

    python benchmarks/bench_mx.py [--rows 1024] [--cols 4096] [--repeat 3] [--no-torch]

On ``--rows x --cols`` N(0, 1) float32 weights (best of ``--repeat`` after a warm-up), for ``quantize``
(FLOOR) / ``quantize_nvfp4`` and ``dequantize`` of each format: GB/s (bytes read + written: 4 n float32,
n code bytes, n / block scale bytes), as a fraction of this machine's memcpy moving as many bytes
(``np.copyto`` of half of them), and the torch (CPU) path's time over the NumPy path's. minq.mx has no
Numba kernels of its own: the NumPy path is the readable reference, its element encode/decode run the
Numba kernels of minq.formats. The load average is printed before and after.
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
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--no-torch", action="store_true", help="skip the torch (CPU) column")
    args = p.parse_args(argv)
    x = np.random.default_rng(0).standard_normal((args.rows, args.cols)).astype(np.float32)
    n = x.size
    torch = None
    if not args.no_torch:
        try:
            import torch
        except ImportError:
            torch = None
    print(f"x [{args.rows}, {args.cols}] float32, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}")
    print(f"{'format':12} {'op':10} {'ms':>8} {'GB/s':>7} {'x memcpy':>9} {'torch/np':>9}")
    for fmt in [*sorted(mx.MX_FORMATS), "nvfp4"]:
        block = 16 if fmt == "nvfp4" else 32
        moved = 4 * n + n + n // block
        src = np.empty(moved // 2, np.uint8)
        dst = np.empty_like(src)
        t_copy = best_time(lambda: np.copyto(dst, src), args.repeat)
        q = (lambda a: mx.quantize_nvfp4(a)) if fmt == "nvfp4" else (lambda a: mx.quantize(a, fmt))
        t = q(x)
        for op, fn, arg in (("quantize", q, x), ("dequantize", lambda tt: tt.dequantize(), t)):
            sec = best_time(lambda: fn(arg), args.repeat)
            ratio = ""
            if torch is not None:
                targ = torch.from_numpy(x) if op == "quantize" else q(torch.from_numpy(x))
                ratio = f"{best_time(lambda: fn(targ), args.repeat) / sec:9.2f}"
            print(f"{fmt:12} {op:10} {sec * 1e3:8.1f} {moved / sec / 1e9:7.2f} {t_copy / sec:9.3f} {ratio}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
