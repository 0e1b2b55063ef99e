"""Decode and prefill speed of SmolLM2-135M in every weight format minq runs packed, against float32 and
llama.cpp, in one run: the seed's "4-bit reads 4x less data, so decoding is faster", measured.

    python benchmarks/bench_decode.py [--threads 2] [--tokens 32] [--contexts 32,2048] [--repeat 2]
                                      [--models float32,int4,...] [--llama-cpp] [--out results.json]

For each model and context length ``S``: a prompt of ``S`` tokens (minq's evaluation text) is run into a KV
cache (prefill tokens/s), then ``--tokens`` tokens are decoded one at a time, greedily (decode tokens/s, the
best of ``--repeat``). Models (``model.packed()`` keeps the weights as stored; the head, SmolLM2's tied
embedding and 21% of its parameters, is quantized with them, in 8 bits, except in float32):

    float32         minq's float reference (the GGUF's Q4_1 weights dequantized)
    int8            rtn-w8g64 + head-rtn-w8g64: chapter 03's 8-bit groups
    int4            rtn-w4g64 + head-rtn-w8g64: 4-bit groups of 64, float inputs (the exact product)
    int4-q8         the same, decoded the llama.cpp way: inputs rounded to 8 bits, integer dot products
    int4-q8-h4      int4-q8 with a 4-bit head too (head-rtn-w4g64): every weight 4-bit
    int4-kv8        int4-q8 with chapter 09's int8 KV cache (kv-int8)
    nf4             nf4 + head-rtn-w8g64 (chapter 10)
    ternary         ternary-a32 + head-rtn-w8g64 (chapter 11; its text is garbage: SmolLM2 is not ternary)
    q8_0, q4_0, q4_k_m   GGUF files minq writes (``minq quantize --type``), read with their blocks kept
                    (``load_model(path, dequantize=False)``), float inputs; ``-q8``: 8-bit inputs
    q4_1            SmolLM2's own GGUF (Q4_1 linears, Q8_0 embedding), its blocks kept

Printed per row: tokens/s, ms/token, the bytes one decoded token reads (weights as stored + the KV cache at
that context), those bytes times tokens/s as a fraction of this machine's memcpy bandwidth (``np.copyto`` of
256 MB, bytes read + written), the speedup over float32 at the same context, prefill tokens/s, and the
first greedy tokens (a packed model's equal its dequantized twin's; see tests/test_generate.py).

``--llama-cpp``: the same GGUF files (and the F32 model) through llama.cpp (llama-cpp-python, built from its
sdist for this benchmark only, never a dependency: ``CMAKE_ARGS="-DGGML_NATIVE=ON" pip install
llama-cpp-python`` in a separate venv, whose site-packages ``--llama-cpp-path`` names), same threads,
same prompt, same greedy loop.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

import minq
import minq.data
import minq.models.assets

HEAD = "+head-rtn-w8g64"
SCHEMES = {"int8": ("rtn-w8g64" + HEAD, "float"), "int4": ("rtn-w4g64" + HEAD, "float"),
           "int4-q8": ("rtn-w4g64" + HEAD, "int8"), "int4-q8-h4": ("rtn-w4g64+head-rtn-w4g64", "int8"),
           "int4-kv8": ("rtn-w4g64" + HEAD + "+kv-int8", "int8"),
           "nf4": ("nf4" + HEAD, "float"), "ternary": ("ternary-a32" + HEAD, "float")}
FILES = {"q8_0": "Q8_0", "q4_0": "Q4_0", "q4_k_m": "Q4_K_M", "q4_1": None}     # None: the asset's own file
MODELS = ("float32", "int8", "int4", "int4-q8", "int4-q8-h4", "int4-kv8", "nf4", "ternary", "q8_0", "q8_0-q8", "q4_0", "q4_0-q8",
          "q4_k_m", "q4_k_m-q8", "q4_1")


def weight_bytes(model) -> int:
    """Bytes of weights one decoded token reads: every linear group and the head, as the model holds them."""
    inner = getattr(model, "model", model)                       # through ActQuantModel / KVQuantModel
    lin = sum(W.nbytes for W in inner._W.values())               # packed groups, or float32 arrays
    head = inner._head_kernel.nbytes if inner._head_kernel is not None else 4 * np.prod(inner.head_weight.shape)
    return int(lin + head)


def run_minq(model, prompt, n: int):
    """``(prefill seconds, decode seconds, tokens, kv bytes)`` of one greedy run."""
    cache = model.new_cache()
    t0 = time.perf_counter()
    logits = model.logits(prompt, cache=cache, last_only=True)
    t1 = time.perf_counter()
    out = []
    for _ in range(n):
        out.append(int(np.argmax(logits[-1])))
        logits = model.logits(np.array([out[-1]]), cache=cache, last_only=True)
    return t1 - t0, time.perf_counter() - t1, out, cache.nbytes


def run_llama_cpp(path, prompt, n: int, threads: int):
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=len(prompt) + n + 8, n_threads=threads, n_threads_batch=threads,
                n_batch=512, verbose=False)
    n_vocab = llm.n_vocab()

    def last_logits():                          # the context's logits of the last token (llama.cpp's buffer)
        return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(n_vocab,))

    llm.reset()
    t0 = time.perf_counter()
    llm.eval(list(map(int, prompt)))
    t1 = time.perf_counter()
    out = []
    for _ in range(n):
        out.append(int(np.argmax(last_logits())))
        llm.eval([out[-1]])
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, out


def memcpy_gbps() -> float:
    src = np.ones(128 << 20, np.uint8)
    dst = np.empty_like(src)
    best = min(_timed(lambda: np.copyto(dst, src)) for _ in range(5))
    return 2 * src.nbytes / best / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def build(name, base, files):
    """The model of row ``name``."""
    if name == "float32":
        return base
    if name in SCHEMES:
        scheme, act = SCHEMES[name]
        return minq.quantize(base, scheme, progress=False).packed(act)
    stem, _, q8 = name.partition("-")
    m = minq.load_model(files[stem], progress=False, dequantize=False)
    return m.packed("int8" if q8 else "float")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--contexts", default="32,2048")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--llama-cpp", action="store_true")
    p.add_argument("--llama-cpp-path", default=None, help="site-packages of a venv with llama-cpp-python")
    p.add_argument("--out", default=None, help="also write the rows as JSON here")
    a = p.parse_args(argv)
    names = a.models.split(",")
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        p.error(f"unknown models {unknown}; choose from {','.join(MODELS)}")
    if a.llama_cpp_path:
        sys.path.append(a.llama_cpp_path)
    contexts = [int(c) for c in a.contexts.split(",")]
    load = os.getloadavg()[0]
    base = minq.load_model("smollm2", progress=False)
    text = minq.data.eval_tokens(base.tokenizer)
    mc = memcpy_gbps()
    tmp = Path(tempfile.mkdtemp(prefix="minq-bench-"))
    files = {}
    src = minq.models.assets.fetch("smollm2")
    for stem, mix in FILES.items():
        if any(n.partition("-")[0] == stem for n in names) or a.llama_cpp:
            from minq.gguf_write import quantize_gguf

            files[stem] = src if mix is None else tmp / f"smollm2-{stem}.gguf"
            if mix is not None:
                quantize_gguf(src, files[stem], mix, progress=False)
    print(f"SmolLM2-135M, {a.threads} thread(s), {a.tokens} decoded tokens, best of {a.repeat}; {os.cpu_count()} cores, "
          f"load average {load:.2f}; memcpy {mc:.2f} GB/s (read + write)")
    print(f"{'model':12s} {'ctx':>5s} {'tok/s':>7s} {'ms/tok':>7s} {'MB/tok':>7s} {'of memcpy':>9s} {'vs f32':>7s} "
          f"{'prefill tok/s':>13s}  first tokens")
    rows, base_rate = [], {}
    with threadpool_limits(a.threads):
        for name in names:
            model = build(name, base, files)
            wb = weight_bytes(model)
            for S in contexts:
                prompt = np.resize(text, S).astype(np.int64)
                best = None
                for _ in range(a.repeat):
                    r = run_minq(model, prompt, a.tokens)
                    best = r if best is None or r[1] < best[1] else best
                t_pre, t_dec, toks, kv = best
                rate = a.tokens / t_dec
                base_rate.setdefault(S, rate)
                row = dict(engine="minq", model=name, context=S, tokens_per_s=rate, bytes_per_token=wb + kv,
                           prefill_tokens_per_s=S / t_pre, tokens=toks[:8])
                rows.append(row)
                print(f"{name:12s} {S:5d} {rate:7.1f} {1e3 / rate:7.2f} {(wb + kv) / 1e6:7.1f} "
                      f"{(wb + kv) * rate / 1e9 / mc:9.0%} {rate / base_rate[S]:6.2f}x {S / t_pre:13.0f}  {toks[:6]}")
            del model
        if a.llama_cpp:
            for stem, path in files.items():
                for S in contexts:
                    prompt = np.resize(text, S).astype(np.int64)
                    best = min((run_llama_cpp(path, prompt, a.tokens, a.threads) for _ in range(a.repeat)),
                               key=lambda r: r[1])
                    rate = a.tokens / best[1]
                    rows.append(dict(engine="llama.cpp", model=stem, context=S, tokens_per_s=rate,
                                     prefill_tokens_per_s=S / best[0], tokens=best[2][:8]))
                    print(f"{'llama.cpp ' + stem:12s} {S:5d} {rate:7.1f} {1e3 / rate:7.2f} {'':7s} {'':9s} "
                          f"{rate / base_rate.get(S, rate):6.2f}x {S / best[0]:13.0f}  {best[2][:6]}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    if a.out:
        Path(a.out).write_text(json.dumps(dict(threads=a.threads, tokens=a.tokens, memcpy_gbps=mc, load=load,
                                               rows=rows), indent=1))


if __name__ == "__main__":
    main()
