"""Speed and memory of minq's NumPy Llama forward, against transformers (torch CPU) in the same run.

    python benchmarks/bench_forward.py [--tokens 512] [--repeat 7]

Both load the same GGUF (SmolLM2-135M-Instruct, fetched by ``minq.models.assets``) as float32 and run the same
``--tokens`` token ids on the same number of threads: the BLAS thread count numpy uses
(``OPENBLAS_NUM_THREADS`` sets it), which minq's forward threads follow (each running single-threaded
BLAS and Numba kernels); torch's intra-op threads are set to it. After a warm-up, the two forwards run
interleaved ``--repeat`` times (so a load spike from another process hits both), for all-position
logits (the perplexity workload) and for last-position logits only (generation:
``logits(ids, last_only=True)`` vs transformers' ``logits_to_keep=1``). The script prints min and
median times and the ratio

    ratio = transformers_time / minq_time          >= 1.0 means minq is faster     (goal: >= 1.0)

three ways: of the minimum times, of the median times, and the median over the interleaved pairs of
each pair's ratio (the two runs of a pair see about the same machine: the steadiest of the three when
the machine's speed drifts, as a shared VM's does by 10-15% over minutes); then the max abs difference
of the logits, and the peak RSS of a separate minq-only process doing load + one forward (goal: <= 1.5 GB).
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import os
import statistics
import subprocess
import sys
import time

import numpy as np

TEXT = ("The history of numerical computing is a history of trading precision for speed. Early machines "
        "stored numbers in fixed point; floating point arrived with hardware that could afford an exponent. "
        "Today, language models are quantized to four bits or fewer, and the question is again which digits "
        "matter. Every bit removed from a weight must be paid for somewhere: in perplexity, in a calibration "
        "set, or in the engineer's patience. ")

RSS_CHILD = """
import sys
import numpy as np
from minq.models import load_model
m = load_model("smollm2", progress=False)
n, text = int(sys.argv[1]), sys.argv[2]
m.logits(np.array(m.tokenizer.encode(text)[:n]))
# VmHWM: this process's own peak RSS (ru_maxrss would also count the parent's pages copied at fork)
print(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1])   # KiB
"""


def blas_threads() -> int:
    """Threads of numpy's BLAS: threadpoolctl when installed, else ask numpy's bundled OpenBLAS."""
    try:
        from threadpoolctl import threadpool_info

        return max(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")
    except (ImportError, ValueError):
        pass
    libs = glob.glob(os.path.join(os.path.dirname(np.__file__) + ".libs", "*openblas*"))
    for lib in libs:
        so = ctypes.CDLL(lib)
        for sym in ("scipy_openblas_get_num_threads64_", "openblas_get_num_threads64_", "openblas_get_num_threads"):
            if hasattr(so, sym):
                return int(getattr(so, sym)())
    return os.cpu_count() or 1


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=512)
    p.add_argument("--repeat", type=int, default=7)
    args = p.parse_args(argv)
    text = TEXT * (1 + 8 * args.tokens // len(TEXT))

    # memory first, from a process that never saw torch
    out = subprocess.run([sys.executable, "-c", RSS_CHILD, str(args.tokens), text],
                         capture_output=True, text=True, check=True)
    rss = int(out.stdout.split()[-1]) * 1024

    import numba
    import torch
    from transformers import AutoModelForCausalLM

    from minq.models import assets, load_model

    n = blas_threads()
    torch.set_num_threads(n)
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    path = assets.fetch("smollm2")
    model = load_model(path, progress=False)
    ids = np.array(model.tokenizer.encode(text)[:args.tokens])
    if ids.size != args.tokens:
        raise SystemExit(f"text too short for {args.tokens} tokens")
    hf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    x = torch.tensor(ids)[None]

    def hf_logits(keep=0):
        with torch.inference_mode():
            return hf(x, logits_to_keep=keep).logits[0].numpy()

    cases = {"all positions": (lambda: model.logits(ids), lambda: hf_logits(0)),
             "last position": (lambda: model.logits(ids, last_only=True), lambda: hf_logits(1))}
    print(f"SmolLM2-135M float32, {args.tokens} tokens, {n} BLAS / torch / Numba threads, "
          f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}, "
          f"load average {os.getloadavg()[0]:.2f}\n")
    for case, (minq_fn, hf_fn) in cases.items():
        a, b = minq_fn(), hf_fn()                                   # warm-up, and the logits to compare
        diff = float(np.abs(a - b).max())
        tm, th = [], []
        for _ in range(args.repeat):                                # interleaved
            tm.append(timed(minq_fn)[0])
            th.append(timed(hf_fn)[0])
        print(f"{case:14s} minq min {min(tm) * 1e3:7.1f} ms  median {statistics.median(tm) * 1e3:7.1f} ms | "
              f"transformers min {min(th) * 1e3:7.1f} ms  median {statistics.median(th) * 1e3:7.1f} ms | "
              f"ratio (min) {min(th) / min(tm):5.2f}  (median) {statistics.median(th) / statistics.median(tm):5.2f}"
              f"  (median of pairs) {statistics.median(h / m for h, m in zip(th, tm)):5.2f}"
              f" | max |logits diff| {diff:.2e}")

    print(f"\nload average at the end {os.getloadavg()[0]:.2f} (other processes share the cores: a load above "
          f"the core count ({os.cpu_count()}) makes both timings, and their ratio, unreliable)")
    print(f"peak RSS of a minq-only process (load + {args.tokens}-token forward): {rss / 1e9:.2f} GB "
          f"(goal <= 1.5 GB: {'met' if rss <= 1.5e9 else 'NOT met'})")


if __name__ == "__main__":
    main()
