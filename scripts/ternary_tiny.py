"""Chapter 11: minq's tiny Llama trained from scratch in float and as BitNet b1.58, on the same tokens.

    python scripts/ternary_tiny.py                   # -> notebooks/data/ternary_tiny.json (about 30 minutes, one thread)
    python scripts/ternary_tiny.py --steps 20 --out /tmp/t.json          # a quick look

Runs (``minq.models.tiny.train_tiny``, seed 0, the shipped checkpoint's recipe: 600 steps of 8 windows of
256 tokens from the calibration text, AdamW, warmup + cosine; the same initial weights and batches):

    float           the float model (the recipe of minq/data/tiny_llama.npz, learning rate 3e-3)
    bitnet          BitNet b1.58: every block linear a ``minq.bitnet.BitLinear`` (ternary weights, int8
                    inputs, STE), the same learning rate
    *-lr2, *-lr0.5  each at twice and half the rate (the paper's training notes: ternary models want a
                    larger one; a fair comparison tunes both)

Evaluation in minq's NumPy runtime on the first 8192 tokens of the evaluation text, windows of 512:
the float model as it is; each BitNet model as ``minq.ternary.quantize_bitnet`` of its latent weights
(what it was trained to be); and, the failure case, the float model ternarized after training (PTQ,
scheme ``ternary``) and with int8 inputs only (``w8a8-dynamic``-style inputs, float weights) to separate
the two. Losses are recorded every step. One thread (reproducible on a machine); the load is recorded.
A rerun keeps the runs already in ``--out`` (same ``--steps``) and adds the missing ones.
"""

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from minq._io import atomic_path
from minq.bitnet import prepare_bitnet
from minq.data import calibration_text, eval_tokens
from minq.eval import perplexity
from minq.models.tiny import (
    TinyConfig,
    VocabTokenizer,
    build_vocab,
    smollm2_tokenizer,
    to_numpy_llama,
    train_tiny,
)
from minq.ternary import BITS, quantize_bitnet
from minq.w8a8 import ActQuantModel, Int8Activations

ROOT = Path(__file__).resolve().parents[1]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--out", type=Path, default=ROOT / "notebooks" / "data" / "ternary_tiny.json")
    a = p.parse_args()
    torch.set_num_threads(1)
    load = os.getloadavg()[0]
    base = smollm2_tokenizer()
    vocab = build_vocab(base)
    tok = VocabTokenizer(base, vocab)
    ids = np.asarray(tok.encode(calibration_text()), np.int64)
    ev = eval_tokens(tok, max_tokens=8192)
    config = TinyConfig(vocab_size=len(vocab))

    def ppl(model):
        return float(perplexity(model, ev, window=512, progress=False))

    runs, evals = {}, {}
    if a.out.exists():
        old = json.loads(a.out.read_text())
        if old.get("steps") == a.steps:
            runs = {k: v for k, v in old["runs"].items() if isinstance(v, dict)}      # training runs only
            evals = old["perplexity"]
    grid = [(kind + suffix, prep, a.lr * f) for kind, prep in (("float", None), ("bitnet", prepare_bitnet))
            for suffix, f in (("", 1.0), ("-lr2", 2.0), ("-lr0.5", 0.5))]
    for name, prep, lr in grid:
        if name in runs:
            continue
        t0 = time.perf_counter()
        net, losses = train_tiny(config, ids, steps=a.steps, lr=lr, prepare=prep, log_every=max(1, a.steps // 10))
        seconds = time.perf_counter() - t0
        model = to_numpy_llama(net, tokenizer=tok)
        if prep is None:
            evals[name] = ppl(model)
            if name == "float":
                evals["float, ternarized after training (PTQ: ternary)"] = ppl(quantize_bitnet(model))
                evals["float, ternary weights only (ternary-a32)"] = ppl(quantize_bitnet(model, act=False))
                evals["float, int8 inputs only"] = ppl(ActQuantModel(model, {n: Int8Activations("dynamic")
                                                                             for n in model.linear_names()}))
        else:
            evals[name] = ppl(quantize_bitnet(model))
            evals[f"{name}, latent float weights"] = ppl(model)
        runs[name] = {"lr": lr, "seconds": round(seconds, 1), "losses": [round(float(v), 4) for v in losses]}
        print(f"{name}: {seconds:.0f} s, last-50 loss {losses[-50:].mean():.4f}; perplexity {evals[name]:.1f}", flush=True)
        write(a, runs, evals, load, ids, ev, net, vocab)


def write(a, runs, evals, load, ids, ev, net, vocab):
    """The results so far, atomically (a later run resumes from them)."""
    n_lin = sum(p.numel() for n, p in net.named_parameters() if p.ndim == 2 and "blk" in n)
    n_all = sum(p.numel() for p in net.parameters())
    result = {"steps": a.steps, "tokens_per_step": 8 * 256, "train_tokens": int(ids.size), "eval_tokens": int(ev.size),
              "params": int(n_all), "linear_params": int(n_lin), "vocab": int(len(vocab)), "threads": 1,
              "load_average": round(load, 2), "runs": runs, "perplexity": evals, "bits": BITS}
    with atomic_path(a.out) as tmp:
        Path(tmp).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
