"""Speed of the FP8 codecs (chapter 01), as ratios against baselines measured in the same run.

    python benchmarks/bench_fp8.py [--n 4194304] [--repeat 10]

On ``--n`` float32 values N(0, (max / 4)^2) (a few beyond the format's max; best of ``--repeat`` after a
warm-up, in which Numba compiles), for FP8 E4M3 (``float8_e4m3fn``) and E5M2 (``float8_e5m2``):
``encode`` (saturate False and True) and ``decode`` through ``FloatFormat`` (the Numba kernels):

- GB/s counting bytes read + written (4 n float32 and n code bytes);
- the fraction of this machine's memcpy moving as many bytes (``np.copyto`` of half of them: half read,
  half written, so both see the same caches), measured in this run — goal (issue 16): decode >= 0.5x,
  encode >= 0.2x;
- the speedup over the readable NumPy reference (``encode_reference`` / ``decode_reference``).

The load average is printed before and after: on a busy machine (load above the number of cores) the
parallel kernels wait for a core and the ratios drift.
"""

# ruff: noqa: B023  (each lambda is timed inside the iteration that made it)
from __future__ import annotations

import argparse
import os

import numpy as np
from bench_kernels import best_time  # the script's own folder, benchmarks/

from minq.formats import FORMATS, decode_reference, encode_reference


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=4 << 20)
    p.add_argument("--repeat", type=int, default=10)
    args = p.parse_args(argv)
    n = args.n
    moved = 4 * n + n
    src = np.ones(moved // 2, np.uint8)
    dst = np.empty_like(src)
    print(f"{n} float32 values, best of {args.repeat}; {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.2f}")
    t_m = best_time(lambda: np.copyto(dst, src), args.repeat)
    print(f"memcpy of {moved / 1e6:.1f} MB (read + written): {moved / t_m / 1e9:.2f} GB/s")
    print(f"{'format':15s} {'op':16s} {'ms':>7s} {'GB/s':>6s} {'of memcpy':>9s} {'goal':>5s} {'vs NumPy ref':>12s}")
    rng = np.random.default_rng(0)
    for name in ("float8_e4m3fn", "float8_e5m2"):
        f = FORMATS[name]
        x = (rng.standard_normal(n) * (f.max / 4)).astype(np.float32)
        codes = f.encode(x)
        rows = [(f"encode sat={sat}", 0.2, lambda sat=sat: f.encode(x, saturate=sat),
                 lambda sat=sat: encode_reference(x, f, saturate=sat)) for sat in (False, True)]
        rows.append(("decode", 0.5, lambda: f.decode(codes), lambda: decode_reference(codes, f)))
        for op, goal, fast, ref in rows:
            t = best_time(fast, args.repeat)
            t_r = best_time(ref, max(1, args.repeat // 3))
            print(f"{name:15s} {op:16s} {t * 1e3:7.2f} {moved / t / 1e9:6.2f} {t_m / t:8.2f}x {goal:4.1f}x "
                  f"{t_r / t:11.1f}x")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
