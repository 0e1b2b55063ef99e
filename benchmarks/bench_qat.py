"""Block-wise QAT of SmolLM2-135M within a fixed CPU budget (chapter 05): how much of the PTQ gap it recovers.

    python benchmarks/bench_qat.py                        # W3 g64 and W2 g64 -> notebooks/data/qat_smollm2.json
    python benchmarks/bench_qat.py --bits 3 --steps 50    # a quicker look (not written unless --out)
    python benchmarks/bench_qat.py --only baselines       # RTN and GPTQ alone (then --only qat: the budget run)

Why block-wise (``minq.qat_llama.qat_blockwise``) and not end to end: a full backward through 30
blocks and a 49,152-token head costs about 3x a forward of the whole model per step; on 2 cores that
leaves a few hundred windows in 30 minutes, too little to move 135 M weights. Block by block, each
step is one block's forward and backward on cached activations, so the same budget buys ~200 steps
for *every* block, and the target (the float block's output) is dense, not one token per position.
The price: no block sees the final loss, and errors that only matter downstream are weighted like
the rest (EfficientQAT follows Block-AP with an end-to-end stage for that; not here).

For each ``--bits`` (groups of ``--group``, asymmetric): perplexity of

    float       the model as loaded (the Q4_1 file's weights dequantized: minq's float reference)
    rtn         chapter 03's round-to-nearest                                   minq.quantize(model, "rtn-w3g64")
    gptq        chapter 06's GPTQ on its default calibration (128 x 512 tokens)  minq.quantize(model, "gptq-w3g64")
    qat-lsq     block-wise QAT, LSQ+ (learned step and offset per group, from RTN's grid), ``--steps`` steps
                of Adam per block on ``--windows`` calibration windows of 256 tokens (4 per step)

and the share of the gap QAT recovers: ``(ppl_rtn - ppl_qat) / (ppl_rtn - ppl_float)``, and the same
against GPTQ. Perplexity: the first ``--eval-tokens`` tokens of the evaluation text, windows of 512
(minq's report protocol). Times are wall clock with ``--threads`` torch/NumPy threads; the load
average before and after is recorded (run it on a quiet machine: it is the budget that is measured).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

import minq
from minq._io import atomic_path
from minq.data import calibration_tokens, eval_tokens
from minq.eval import perplexity
from minq.models import load_model
from minq.qat_llama import qat_blockwise

OUT = Path(__file__).resolve().parents[1] / "notebooks" / "data" / "qat_smollm2.json"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bits", type=int, nargs="+", default=[3, 2])
    p.add_argument("--group", type=int, default=64)
    p.add_argument("--steps", type=int, default=200, help="Adam steps per block")
    p.add_argument("--windows", type=int, default=128, help="calibration windows of 256 tokens")
    p.add_argument("--lr", type=float, default=2e-4, help="weights")
    p.add_argument("--lr-quant", type=float, default=1e-3, help="LSQ+ steps and offsets")
    p.add_argument("--eval-tokens", type=int, default=16384)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-gptq", action="store_true", help="skip the GPTQ baseline")
    p.add_argument("--only", choices=("all", "baselines", "qat"), default="all",
                   help="run part of it; the JSON keeps what an earlier run of the other part wrote")
    p.add_argument("--out", type=Path, default=None, help=f"JSON results (default {OUT} for the full run)")
    a = p.parse_args(argv)
    out_path = a.out or (OUT if (a.steps, a.windows, a.bits) == (200, 128, [3, 2]) else None)
    old = json.loads(out_path.read_text()) if out_path is not None and out_path.exists() and a.only != "all" else {}
    torch.set_num_threads(a.threads)
    load_before = os.getloadavg()
    print(f"load average before: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}", flush=True)

    model = load_model("smollm2")
    ev = eval_tokens(model.tokenizer, max_tokens=a.eval_tokens)
    calib = calibration_tokens(model.tokenizer, a.windows, 256)

    def ppl(m):
        return perplexity(m, ev, 512, progress=False)

    results = old.get("results", {})
    if a.only != "qat" or "float" not in results:
        t0 = time.perf_counter()
        results["float"] = {"ppl": ppl(model), "seconds": 0.0}
        print(f"float  ppl {results['float']['ppl']:.3f}  (eval {time.perf_counter() - t0:.0f} s)", flush=True)
    for bits in a.bits:
        name = f"w{bits}g{a.group}"
        row = results.setdefault(name, {})
        for method in ("rtn",) + (() if a.no_gptq else ("gptq",)):
            if a.only == "qat" and method in row:
                continue
            t0 = time.perf_counter()
            q = minq.quantize(model, f"{method}-{name}")
            row[method] = {"seconds": time.perf_counter() - t0, "ppl": ppl(q), "threads": a.threads,
                           "load_before": os.getloadavg()[0]}
            print(f"{name} {method:8s} ppl {row[method]['ppl']:.3f}  ({row[method]['seconds']:.0f} s)", flush=True)
        if a.only == "baselines":
            continue
        t0 = time.perf_counter()
        q, log = qat_blockwise(model, calib, bits=bits, group_size=a.group, method="lsq", offset=True,
                               steps=a.steps, lr=a.lr, lr_quant=a.lr_quant)
        seconds = time.perf_counter() - t0
        row["qat-lsq"] = {"seconds": seconds, "ppl": ppl(q), "blocks": log, "threads": a.threads}
        f, r = results["float"]["ppl"], row["rtn"]["ppl"]
        row["qat-lsq"]["recovered_vs_rtn"] = (r - row["qat-lsq"]["ppl"]) / (r - f)
        if "gptq" in row:
            g = row["gptq"]["ppl"]
            row["qat-lsq"]["recovered_vs_gptq"] = (g - row["qat-lsq"]["ppl"]) / (g - f)
        print(f"{name} qat-lsq  ppl {row['qat-lsq']['ppl']:.3f}  ({seconds / 60:.1f} min); recovers "
              f"{row['qat-lsq']['recovered_vs_rtn']:.0%} of RTN's gap"
              + (f", {row['qat-lsq']['recovered_vs_gptq']:.0%} of GPTQ's" if "gptq" in row else ""), flush=True)
    load_after = os.getloadavg()
    print(f"load average after: {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    if out_path is not None:
        doc = {"model": "SmolLM2-135M-Instruct (Q4_1 file, dequantized)", "group": a.group, "steps": a.steps,
               "windows": a.windows, "window_tokens": 256, "lr": a.lr, "lr_quant": a.lr_quant,
               "eval_tokens": int(ev.size), "threads": a.threads, "load_before": load_before[0],
               "load_after": load_after[0], "results": results}
        if a.only == "baselines" and old:                      # the QAT run's own figures stay
            doc.update({k: old[k] for k in ("threads", "load_before", "load_after") if k in old})
        out_path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out_path) as tmp:
            Path(tmp).write_text(json.dumps(doc, indent=1))
        print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
