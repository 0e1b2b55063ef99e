"""Chapter 11's failure case: SmolLM2-135M ternarized after training (post-training, no data).

    python scripts/ternary_smollm2.py               # -> notebooks/data/ternary_smollm2.json (about 5 minutes)

Perplexity on the report's protocol (``minq.report``: the first 16,384 tokens of minq's evaluation text,
windows of 512) of the float model and of the schemes

    ternary        every linear absmean-ternary per tensor, inputs int8 per token (W1.58A8, BitNet's form)
    ternary-a32    the same weights, float inputs (weights alone)
    rtn-w2g64      2-bit round-to-nearest in groups of 64 (chapter 03): the nearest integer neighbour

and, for every linear, the relative weight error ``||W_hat - W|| / ||W||`` of ternary and of rtn-w2g64 /
rtn-w4g64, with the fraction of codes that are 0. The load average is recorded.
"""

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

import minq
from minq._io import atomic_path
from minq.data import eval_tokens
from minq.eval import perplexity
from minq.groups import quantize_groups
from minq.ternary import quantize

ROOT = Path(__file__).resolve().parents[1]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--max-tokens", type=int, default=16384)
    p.add_argument("--out", type=Path, default=ROOT / "notebooks" / "data" / "ternary_smollm2.json")
    a = p.parse_args()
    load = os.getloadavg()[0]
    model = minq.load_model("smollm2", progress=False)
    ev = eval_tokens(model.tokenizer, max_tokens=a.max_tokens)
    ppl = {}
    for name in ("float", "ternary", "ternary-a32", "rtn-w2g64"):
        t0 = time.perf_counter()
        m = model if name == "float" else minq.quantize(model, name, progress=False)
        ppl[name] = float(perplexity(m, ev, window=512, progress=False))
        print(f"{name}: perplexity {ppl[name]:.2f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    layers = {}
    for name in model.linear_names():
        W = np.asarray(model.weights[name].dequantize(), np.float32)
        norm = np.linalg.norm(W)
        codes, gamma = quantize(W)

        def err(W_hat, W=W, norm=norm):
            return float(np.linalg.norm(W_hat - W) / norm)

        layers[name] = {"ternary": err(gamma * codes.astype(np.float32)), "zeros": float((codes == 0).mean()),
                        "rtn-w2g64": err(quantize_groups(W, bits=2, group_size=64).dequantize()),
                        "rtn-w4g64": err(quantize_groups(W, bits=4, group_size=64).dequantize())}
    result = {"model": "smollm2", "eval_tokens": int(ev.size), "window": 512, "perplexity": ppl,
              "layers": layers, "load_average": round(load, 2), "load_after": round(os.getloadavg()[0], 2)}
    with atomic_path(a.out) as tmp:
        Path(tmp).write_text(json.dumps(result, indent=1) + "\n")
    med = {k: float(np.median([v[k] for v in layers.values()])) for k in ("ternary", "zeros", "rtn-w2g64", "rtn-w4g64")}
    print(json.dumps({"perplexity": ppl, "median over layers": med}, indent=1))


if __name__ == "__main__":
    main()
