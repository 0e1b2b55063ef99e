"""Perplexity of SmolLM2 against context length for KV-cache schemes (chapter 09's table).

    python scripts/kv_context_sweep.py [--tokens 8192] [--windows 512,1024,2048] [--schemes ...] [--json out.json]

For each window length W (the context a scored token can see, at most W - 1 positions) the same first
``--tokens`` tokens of minq's evaluation text are cut into windows of W and scored with ``minq.eval``'s
protocol; a KV scheme's windows are decode-exact (every token attends to the cache as token-by-token
decoding would hold it). Prints one row per scheme: perplexity per window length and its change against
float32 at that length, and the cache's bytes per token. Deterministic: the same numbers on any machine
up to float summation order.
"""

from __future__ import annotations

import argparse
import json
import time

import minq
from minq.data import eval_tokens
from minq.kvcache_model import spec_of
from minq.kvcache_quant import kv_bytes

DEFAULT = ("float32,kv-int8,kv-fp8-e4m3,kv-int4,kv-int4-kchannel,kv-int4-kchannel-prerope,kv-int4-kivi,"
           "kv-int2,kv-int2-kivi,rtn-w4g64,rtn-w4g64+kv-int4-kivi")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--windows", default="512,1024,2048")
    p.add_argument("--schemes", default=DEFAULT)
    p.add_argument("--json", default=None, help="write the table here as well")
    a = p.parse_args(argv)
    model = minq.load_model("smollm2", progress=False)
    c = model.config
    ids = eval_tokens(model.tokenizer, max_tokens=a.tokens)
    windows = [int(w) for w in a.windows.split(",")]
    rows = {}
    for name in a.schemes.split(","):
        q = model if name == "float32" else minq.quantize(model, name, progress=False)
        kv = name.split("+")[-1]
        spec = spec_of(kv) if kv.startswith("kv-") else None
        row = {"bytes_per_token": kv_bytes(spec, n_layers=c.n_layers, n_kv_heads=c.n_kv_heads,
                                          head_dim=c.head_dim, tokens=max(windows)) / max(windows)}
        for w in windows:
            t0 = time.perf_counter()
            row[w] = minq.perplexity(q, ids, w, progress=False)
            print(f"{name:28s} window {w:5d}  perplexity {row[w]:8.3f}  ({time.perf_counter() - t0:5.1f} s)",
                  flush=True)
        rows[name] = row
    print(f"\n{'scheme':28s} {'bytes/token':>11s} " + " ".join(f"{'W=' + str(w):>16s}" for w in windows))
    for name, row in rows.items():
        cells = " ".join(f"{row[w]:8.3f} ({row[w] / rows['float32'][w] - 1:+6.1%})" if "float32" in rows
                         else f"{row[w]:16.3f}" for w in windows)
        print(f"{name:28s} {row['bytes_per_token']:11.0f} {cells}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({n: {str(k): v for k, v in r.items()} for n, r in rows.items()}, f, indent=1)


if __name__ == "__main__":
    main()
