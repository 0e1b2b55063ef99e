"""Resident memory of a decoding process: does a packed 4-bit model stay 4-bit in RAM?

    python benchmarks/bench_memory.py                 # SmolLM2-135M, one fresh process per configuration

Each configuration runs in its own Python process (so that nothing of another one stays resident):
import minq (the baseline), load SmolLM2 (float32), quantize with the scheme, pack it (``model.packed()``)
or not, drop the float model, hand the freed heap back (``minq.runtime.memory.release_memory``), decode
16 tokens greedily. It reports the resident set size (RSS, from /proc/self/statm) after loading, after
quantizing (float model dropped), after the release and after decoding, the peak RSS (``ru_maxrss``)
and the bits-per-weight arithmetic: what the parameters must take,

    linears  model.nbytes (the weight objects as stored: codes, scales, zero points)
    rest     the embedding (float32 [vocab, d]), an untied head if any, the norms

``resident over the arithmetic`` is (RSS after decoding - the baseline) / (linears + rest): 1.0 would be
the parameters and nothing else (the KV cache of 16 tokens and the activations are a few MB; Numba's
LLVM and the compiled kernels, the tokenizer's vocabulary and merges add a fixed ~130 MB that a bigger
model would not grow).
"""

import json
import os
import subprocess
import sys

CONFIGS = [("float32", None, False), ("rtn-w4g64", "rtn-w4g64", False), ("rtn-w4g64 packed", "rtn-w4g64", True),
           ("ternary-a32 packed", "ternary-a32", True)]

CHILD = r"""
import gc, json, resource, sys
import numpy as np
import minq
from minq.generate import generate
from minq.runtime.memory import release_memory, rss

base = rss()
model = minq.load_model("smollm2", progress=False)
loaded = rss()
scheme, packed = sys.argv[1], sys.argv[2] == "1"
q = model if scheme == "None" else minq.quantize(model, scheme, progress=False)
if packed:
    q = q.packed()
rest = model.embedding.nbytes + (0 if model.output is None else model.output.nbytes) \
    + sum(g.nbytes for g in model.norms.values())
del model
gc.collect()
steady = rss()
release_memory()
released = rss()
ids = np.array(q.tokenizer.encode("The quality of mercy is not strained;"))
generate(q, ids, 16)
print(json.dumps({"base": base, "loaded": loaded, "steady": steady, "released": released, "decoded": rss(),
                  "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "linears": int(q.nbytes), "rest": int(rest)}))
"""


def main():
    rows = {}
    for label, scheme, packed in CONFIGS:
        out = subprocess.run([sys.executable, "-c", CHILD, str(scheme), "1" if packed else "0"],
                             capture_output=True, text=True, check=True)
        rows[label] = json.loads(out.stdout.strip().splitlines()[-1])
    mb = 1e6
    print(f"load average {os.getloadavg()[0]:.2f}; MB (10^6 bytes); baseline = after `import minq`")
    print(f"{'configuration':20s} {'baseline':>8s} {'loaded':>7s} {'steady':>7s} {'released':>8s} {'decoded':>8s} "
          f"{'peak':>6s} {'linears':>8s} {'rest':>6s} {'resident / arithmetic':>22s}")
    for label, r in rows.items():
        arith = r["linears"] + r["rest"]
        print(f"{label:20s} {r['base'] / mb:8.0f} {r['loaded'] / mb:7.0f} {r['steady'] / mb:7.0f} "
              f"{r['released'] / mb:8.0f} {r['decoded'] / mb:8.0f} {r['peak'] / mb:6.0f} {r['linears'] / mb:8.1f} {r['rest'] / mb:6.1f} "
              f"{(r['decoded'] - r['base']) / arith:22.2f}")


if __name__ == "__main__":
    main()
