"""Speed of every packed GEMV kernel (one token times a quantized weight), against float32 BLAS and memcpy.

    python benchmarks/bench_gemv.py [--threads 2] [--repeat 200] [--shapes smollm2|square] [--formats a,b,...]

For each weight format that ``minq.runtime.packed.packed_linear`` has a kernel for, and each shape (SmolLM2's
fused q/k/v 960 x 576, o 576 x 576, gate/up 3072 x 576, down 576 x 1536, the head 49152 x 576; or 4096 x 4096),
times ``kernel.matmul(x)`` for one token, with float inputs and with 8-bit inputs (the llama.cpp way) where
a kernel has them. As in decoding, the weights come from memory, not from a cache: each call reads the next
of enough copies of the weight to fill ``--pool`` MB (more than this machine's L3), as a model's 30 layers
do. Printed: microseconds a call (the mean over the pool, best of ``--repeat`` passes), GB/s on the bytes
the kernel reads (``nbytes``: codes and scales), that as a fraction of this machine's memcpy bandwidth
(``np.copyto`` of a ``--pool`` MB buffer, counting bytes read + written as the other benchmarks do), and the
speedup over ``x @ W^T`` with the float32 weight (BLAS, same threads, also cycled). The goal (issue 20):
every kernel at >= 50% of memcpy. Load average before and after: measure on a quiet machine.
"""

from __future__ import annotations

import argparse
import copy
import os
import time

import numpy as np
from threadpoolctl import threadpool_limits

from minq import registry
from minq.kquants import GGMLWeight
from minq.runtime.packed import packed_linear

SHAPES = {"smollm2": [("q/k/v", 960, 576), ("o", 576, 576), ("gate/up", 3072, 576), ("down", 576, 1536),
                      ("head", 49152, 576)],
          "square": [("4096^2", 4096, 4096)]}
FORMATS = ("rtn-w8g64", "rtn-w4g64", "rtn-w3g64", "rtn-w2g64", "q8_0", "q4_0", "q4_1", "q5_0", "q4_k", "q5_k", "q6_k",
           "nf4", "fp8-e4m3", "ternary-a32")


def quantizer(fmt: str):
    """``W -> weight object`` of a format: a ggml block type, or a registered scheme's ``quantize_weight``."""
    if fmt.startswith("q") and "_" in fmt:
        return lambda W: GGMLWeight.quantize(W, fmt.upper())
    if fmt == "ternary-a32":
        from minq.ternary import TernaryWeight

        return TernaryWeight.quantize
    return registry.get(fmt).quantize_weight


def best(fn, repeat: int) -> float:
    fn()
    t = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        t = min(t, time.perf_counter() - t0)
    return t


def per_call(fns: list, repeat: int) -> float:
    """Seconds a call: ``fns`` (one per copy of a weight) called in turn, the best of ``repeat`` passes."""
    def one_pass():
        for f in fns:
            f()
    return best(one_pass, repeat) / len(fns)


def memcpy_gbps(nbytes: int, repeat: int) -> float:
    src = np.ones(max(nbytes // 2, 1), np.uint8)
    dst = np.empty_like(src)
    return 2 * src.nbytes / best(lambda: np.copyto(dst, src), repeat) / 1e9


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--pool", type=int, default=256, help="MB of weight copies cycled through (default 256)")
    p.add_argument("--shapes", choices=sorted(SHAPES), default="smollm2")
    p.add_argument("--formats", default=",".join(FORMATS))
    a = p.parse_args(argv)
    rng = np.random.default_rng(0)
    pool = a.pool << 20
    memcpy = memcpy_gbps(pool, 5)
    print(f"GEMV, one token, {a.threads} thread(s), weights cycled through {a.pool} MB, best of {a.repeat}; "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; memcpy {memcpy:.2f} GB/s (read + write)")
    print(f"{'format':12s} {'shape':8s} {'inputs':6s} {'us':>8s} {'MB':>6s} {'GB/s':>6s} {'of memcpy':>9s} "
          f"{'vs f32 BLAS':>11s}")
    with threadpool_limits(a.threads):
        for name, out, n in SHAPES[a.shapes]:
            W = (0.05 * rng.standard_normal((out, n))).astype(np.float32)
            x = rng.standard_normal((1, n)).astype(np.float32)
            rows = []
            for fmt in a.formats.split(","):
                try:
                    w = quantizer(fmt)(W)
                except ValueError:                            # K-quants: rows of a multiple of 256 only
                    continue
                seen = set()
                for act in ("float", "int8"):
                    k = packed_linear(w, act)
                    kind = (type(k), getattr(k, "activations", "float"))
                    if k is None or kind in seen:             # no kernel, or no 8-bit-input one
                        continue
                    seen.add(kind)
                    ks = [k] + [copy.deepcopy(k) for _ in range(max(2, pool // k.nbytes) - 1)]
                    t = per_call([lambda kc=kc, x=x: kc.matmul(x) for kc in ks], a.repeat)
                    del ks
                    rows.append((fmt, act, t, k.nbytes))
            Ws = [W.copy() for _ in range(max(2, pool // W.nbytes))]    # BLAS last: OpenBLAS's threads spin
            t_blas = per_call([lambda Wc=Wc, x=x: x @ Wc.T for Wc in Ws], a.repeat)    # ~0.1 s after a call,
            del Ws                                                                      # taking the 2nd core
            time.sleep(0.3)
            print(f"{'float32':12s} {name:8s} {'float':6s} {1e6 * t_blas:8.1f} {W.nbytes / 1e6:6.2f} "
                  f"{W.nbytes / t_blas / 1e9:6.2f} {W.nbytes / t_blas / 1e9 / memcpy:9.0%}")
            for fmt, act, t, nbytes in rows:
                gbps = nbytes / t / 1e9
                print(f"{fmt:12s} {name:8s} {act:6s} {1e6 * t:8.1f} {nbytes / 1e6:6.2f} {gbps:6.2f} "
                      f"{gbps / memcpy:9.0%} {t_blas / t:10.2f}x")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
