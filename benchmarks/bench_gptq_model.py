"""Whole-model GPTQ on SmolLM2: wall time per phase, the load of the machine, and the perplexity.

    python benchmarks/bench_gptq_model.py [--scheme gptq-w4g64] [--samples 128] [--seq-len 512]
                                          [--eval-tokens 16384] [--rtn rtn-w4g64]

Calibration: ``--samples`` windows of ``--seq-len`` tokens of minq's calibration text (the default
128 x 512 is what ``minq.quantize(model, "gptq-...")`` uses). Printed: the total GPTQ time and its
phases (``forward``: the block forwards, Hessian pass and output pass; ``hessian``: accumulating
``X^T X``; ``gptq``: ``gptq_quantize`` of the 120 linears), the 1-minute load average sampled every 15 s
during the run (the machine is shared: a load above the 2 cores slows everything proportionally),
and the perplexity (``minq.eval.perplexity``, windows of 512) on the first 8192 and ``--eval-tokens``
tokens of the evaluation text, beside the RTN scheme ``--rtn`` at the same grid and the float model.
The goal of issue 5: under 10 minutes on 2 cores for 128 x 512 tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time

import numpy as np


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scheme", default="gptq-w4g64")
    p.add_argument("--samples", type=int, default=128)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--eval-tokens", type=int, default=16384)
    p.add_argument("--rtn", default=None, help="RTN scheme to compare with (default: none)")
    p.add_argument("--float", action="store_true", help="also evaluate the float model")
    p.add_argument("--json", default=None, help="also write the results to this file")
    args = p.parse_args(argv)

    import minq
    from minq.data import calibration_tokens, eval_tokens
    from minq.eval import perplexity
    from minq.gptq_model import gptq_model, scheme_kwargs

    model = minq.load_model("smollm2", progress=False)
    ids = calibration_tokens(model.tokenizer, n_samples=args.samples, seq_len=args.seq_len)
    loads, stop = [], threading.Event()

    def sample_load():
        while not stop.wait(15):
            loads.append(os.getloadavg()[0])

    threading.Thread(target=sample_load, daemon=True).start()
    load_start = os.getloadavg()[0]
    stats = {}
    t0 = time.perf_counter()
    q = gptq_model(model, ids, progress=True, stats=stats, **scheme_kwargs(args.scheme))
    seconds = time.perf_counter() - t0
    stop.set()
    ev = eval_tokens(model.tokenizer, max_tokens=args.eval_tokens)
    res = dict(scheme=args.scheme, calibration=[args.samples, args.seq_len], seconds=seconds,
               cpu_seconds=stats["cpu_seconds"],
               phases=stats["phases"], load_start=load_start,
               load_mean=float(np.mean(loads)) if loads else load_start, load_max=max(loads, default=load_start),
               ppl={})
    models = {args.scheme: q}
    if args.rtn:
        models[args.rtn] = minq.quantize(model, args.rtn, progress=False)
    if args.float:
        models["float32"] = model
    for name, m in models.items():
        res["ppl"][name] = {n: perplexity(m, ev[:n], 512, progress=False) for n in sorted({min(8192, len(ev)), len(ev)})}
    ph = res["phases"]
    print(f"\n{args.scheme}, {args.samples} x {args.seq_len} calibration tokens: {seconds:.0f} s "
          f"(forward {ph['forward']:.0f} s, X^T X {ph['hessian']:.0f} s, gptq_quantize {ph['gptq']:.0f} s, "
          f"rest {seconds - sum(ph.values()):.0f} s); CPU time {res['cpu_seconds']:.0f} s (all threads); "
          f"load average {res['load_mean']:.1f} mean, {res['load_max']:.1f} max (2 cores)")
    for name, d in res["ppl"].items():
        print(f"  {name:24s} " + "  ".join(f"ppl@{n}: {v:.3f}" for n, v in d.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
