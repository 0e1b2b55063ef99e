"""Decode speed of SmolLM2-135M: float32 against 4-bit weights, dequantized and kept packed, in one run.

    python benchmarks/bench_decode.py [--threads 2] [--tokens 64] [--prompt 32] [--repeat 3]

For each model, a prompt of ``--prompt`` tokens is run into a KV cache, then ``--tokens`` tokens are
decoded one at a time (the next input is the argmax of the last logits: greedy); tokens/s is measured
over the decode steps (best of ``--repeat``). Models:

    float32             the model as loaded (minq's float reference)
    rtn-w4g64           4-bit groups of 64 (chapter 03), dequantized to float32 when built: today's default
    rtn-w4g64 packed    the same weights kept packed (``model.packed()``): one fused dequantize-GEMV a linear
                        (``minq.runtime.gemv.Int4Gemv``); embeddings and the tied head stay float32
    ternary-a32 packed  chapter 11's 2-bit ternary codes kept packed (``ternary_kernels.matvec_float``): the
                        speed of reading 2 bits a weight (its text is garbage: SmolLM2 was not trained ternary)

Also printed: the bytes of linear weights each reads per token, the greedy tokens of the packed model
against the dequantized one (equal, or the first position where float32 rounding made them differ), and
the load average before and after. The seed's claim under test: "a 4-bit model reads 4x less data per
forward pass, directly translating to faster token generation during the decode phase".
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from threadpoolctl import threadpool_limits

import minq


def decode(model, prompt, n):
    """Greedy: ``(tokens [n], seconds of the n decode steps)``."""
    cache = model.new_cache()
    logits = model.logits(prompt, cache=cache, last_only=True)
    out = []
    t0 = time.perf_counter()
    for _ in range(n):
        tok = int(np.argmax(logits[-1]))
        out.append(tok)
        logits = model.logits(np.array([tok]), cache=cache, last_only=True)
    return out, time.perf_counter() - t0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--prompt", type=int, default=32)
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args(argv)
    load = os.getloadavg()[0]
    model = minq.load_model("smollm2", progress=False)
    q = minq.quantize(model, "rtn-w4g64", progress=False)
    models = {"float32": model, "rtn-w4g64": q, "rtn-w4g64 packed": q.packed(),
              "ternary-a32 packed": minq.quantize(model, "ternary-a32", progress=False).packed()}
    prompt = np.asarray(model.tokenizer.encode("The history of the printing press begins"), np.int64)
    prompt = np.resize(prompt, a.prompt)
    n_lin = sum(int(np.prod(model.weights[n].shape)) for n in model.linear_names())
    read = {"float32": 4 * n_lin, "rtn-w4g64": 4 * n_lin,
            **{k: sum(W.nbytes for W in models[k]._W.values()) for k in ("rtn-w4g64 packed", "ternary-a32 packed")}}
    print(f"SmolLM2-135M decode, {a.threads} thread(s), prompt {a.prompt} + {a.tokens} tokens, best of {a.repeat}; "
          f"{os.cpu_count()} cores, load average {load:.2f}")
    print(f"{'model':>18s} {'tokens/s':>9s} {'ms/token':>9s} {'linear MB/token':>15s} {'vs float32':>10s}")
    tokens, base = {}, None
    with threadpool_limits(a.threads):
        for name, m in models.items():
            best = float("inf")
            for _ in range(a.repeat):
                tokens[name], t = decode(m, prompt, a.tokens)
                best = min(best, t)
            base = base or best
            print(f"{name:>18s} {a.tokens / best:9.1f} {1e3 * best / a.tokens:9.2f} {read[name] / 1e6:15.1f} "
                  f"{base / best:9.2f}x")
    same = tokens["rtn-w4g64"] == tokens["rtn-w4g64 packed"]
    first = next((i for i, (x, y) in enumerate(zip(tokens["rtn-w4g64"], tokens["rtn-w4g64 packed"])) if x != y), None)
    print(f"greedy tokens, packed vs dequantized: {'equal' if same else f'differ from position {first}'} "
          f"({a.tokens} tokens)")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
