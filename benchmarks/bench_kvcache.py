"""Speed of the quantized KV cache (chapter 09) against the float cache, measured in the same run.

    python benchmarks/bench_kvcache.py [--context 2048] [--steps 8] [--repeat 3]

Two measurements on SmolLM2's shapes (30 layers, 3 KV heads of 64):

1. The cache alone, one layer: ``append`` of one new position to a cache holding ``--context`` positions
   (what a decode step does), for the float ``KVCache`` and each ``KVSpec``; time per call and the
   ratio to the float cache.
2. Decoding: ``--steps`` tokens after a prompt of ``--context`` tokens (prefilled in one forward), with
   each cache: tokens/s and the ratio to the float cache. The quantized caches dequantize what they hold
   on every read (NumPy, no fused kernel), so they are slower than the float one; the point of chapter
   09 is memory, and the runtime's fused kernels are where speed is won.

Best of ``--repeat``; the load average is printed before and after (run it on a quiet machine).
"""

# ruff: noqa: B023  (each closure is timed inside the iteration that made it)
from __future__ import annotations

import argparse
import os
import time

import numpy as np

import minq
from minq.data import eval_tokens
from minq.kvcache import KVCache
from minq.kvcache_model import KVQuantModel
from minq.kvcache_quant import KVSpec, QuantizedKVCache

SPECS = {"int8 per token": KVSpec("int", 8), "fp8 e4m3 per token": KVSpec("e4m3"), "int4 per token": KVSpec("int", 4),
         "int4 KIVI (R=128)": KVSpec.kivi(4), "int2 KIVI (R=128)": KVSpec.kivi(2)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--context", type=int, default=2048)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args(argv)
    print(f"load average before: {os.getloadavg()}")
    model = minq.load_model("smollm2", progress=False)
    c = model.config
    rng = np.random.default_rng(0)
    k = rng.standard_normal((1, c.n_kv_heads, a.context, c.head_dim)).astype(np.float32)
    k1 = rng.standard_normal((1, c.n_kv_heads, 1, c.head_dim)).astype(np.float32)

    print(f"\n1. append one position to a cache of {a.context} (one layer)")
    caches = {"float": lambda: KVCache(1), **{n: (lambda s=s: QuantizedKVCache(1, s)) for n, s in SPECS.items()}}
    base = None
    for name, make in caches.items():
        def run():
            cache = make()
            cache.append(0, k, k)
            t0 = time.perf_counter()
            for _ in range(16):
                cache.append(0, k1, k1)
            run.t = (time.perf_counter() - t0) / 16
        ts = []
        for _ in range(a.repeat):
            run()
            ts.append(run.t)
        t = min(ts)
        base = base or t
        print(f"   {name:20s} {t * 1e3:8.3f} ms   x{t / base:6.1f} the float cache")

    ids = eval_tokens(model.tokenizer, max_tokens=a.context + a.steps)
    print(f"\n2. decode {a.steps} tokens after {a.context} (SmolLM2, fast engine)")
    models = {"float": model, **{n: KVQuantModel(model, s) for n, s in SPECS.items()}}
    base = None
    for name, m in models.items():
        def decode():
            cache = m.new_cache()
            m.logits(ids[:a.context], cache=cache, last_only=True)
            t0 = time.perf_counter()
            for t in range(a.context, a.context + a.steps):
                m.logits(ids[t:t + 1], cache=cache, last_only=True)
            decode.t = time.perf_counter() - t0
        ts = []
        for _ in range(a.repeat):
            decode()
            ts.append(decode.t)
        tps = a.steps / min(ts)
        base = base or tps
        print(f"   {name:20s} {tps:8.2f} tokens/s   x{tps / base:5.2f} the float cache")
    print(f"\nload average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
