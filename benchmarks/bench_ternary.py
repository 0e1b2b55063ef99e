"""Speed of the ternary matrix-vector product (chapter 11) against float32 and packed int4, in one run.

    python benchmarks/bench_ternary.py [--threads 1] [--repeat 20]

For each weight shape (SmolLM2's q/o 576 x 576, gate/up 1536 x 576, down 576 x 1536, and a 4096 x 4096
layer), one token's product ``y = W x`` with each of ``k`` different matrices in turn, ``k`` chosen so
that the float32 matrices fill ``--mb`` MB (256: no cache holds them, as no cache holds a model's
layers when it decodes; one matrix multiplied again and again would sit in the L2 cache and flatter
float32). Per product, best of ``--repeat`` passes after a warm-up:

    float32     ``W @ x``, NumPy's BLAS (sgemv)                                       4 bytes a weight
    int4 g64    ``minq.runtime.gemv.Int4Gemv``: chapter 03's 4-bit codes, fused    0.5 + 8 / 64 bytes
    ternary     ``minq.ternary.matvec``: int8 inputs, 2-bit codes, adds and subtracts   0.25 bytes
    ternary-mul the same loop with a multiplication a weight (``kernel="mul"``)        0.25 bytes

Columns: microseconds, the bytes of weights read, GB/s, the fraction of this machine's memcpy bandwidth
(``memcpy_gbps``, read + write) and the speed relative to float32 on the same shape. The ternary rows
include quantizing ``x`` to int8 (NumPy, per call). The load average is printed before and after.
"""

# ruff: noqa: B023  (each lambda is timed inside the iteration that made it)
from __future__ import annotations

import argparse
import os

import numpy as np
from bench_kernels import best_time, memcpy_gbps  # the script's own folder, benchmarks/
from threadpoolctl import threadpool_limits

from minq import ternary
from minq.groups import quantize_groups
from minq.runtime.gemv import Int4Gemv

SHAPES = ((576, 576), (1536, 576), (576, 1536), (4096, 4096))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--mb", type=int, default=256, help="MB of float32 weights per shape")
    a = p.parse_args(argv)
    rng = np.random.default_rng(0)
    with threadpool_limits(a.threads):
        bw = memcpy_gbps(64 << 20, 5)
        print(f"ternary vs int4 vs float32 GEMV, one token, {a.mb} MB of float32 matrices a shape, "
              f"{a.threads} thread(s), best of {a.repeat}; "
              f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; memcpy {bw:.1f} GB/s")
        print(f"{'shape':>11s} {'kernel':>12s} {'us':>8s} {'MB read':>8s} {'GB/s':>6s} {'of memcpy':>9s} {'vs float32':>10s}")
        for out, n in SHAPES:
            k = -(-a.mb * 2**20 // (4 * out * n))                                 # matrices in the pass
            Ws = [rng.standard_normal((out, n)).astype(np.float32) for _ in range(k)]
            x = rng.standard_normal(n).astype(np.float32)
            i4 = [Int4Gemv(quantize_groups(W, bits=4, group_size=64)) for W in Ws]
            tw = [ternary.TernaryWeight.quantize(W) for W in Ws]
            rows = [("float32", lambda: [W @ x for W in Ws], Ws[0].nbytes),
                    ("int4 g64", lambda: [g(x) for g in i4], i4[0].nbytes),
                    ("ternary", lambda: [ternary.matvec(w, x) for w in tw], tw[0].nbytes),
                    ("ternary-mul", lambda: [ternary.matvec(w, x, kernel="mul") for w in tw], tw[0].nbytes)]
            t_float = None
            for name, fn, nbytes in rows:
                t = best_time(fn, a.repeat) / k
                t_float = t_float or t
                print(f"{out:>5d}x{n:<5d} {name:>12s} {t * 1e6:8.1f} {nbytes / 1e6:8.2f} {nbytes / t / 1e9:6.2f} "
                      f"{nbytes / t / 1e9 / bw:9.2f} {t_float / t:9.2f}x")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
