"""Train minq's tiny Llama (``minq.models.tiny``) from scratch and write the shipped checkpoint.

    python scripts/train_tiny.py                      # -> minq/data/tiny_llama.npz, prints the loss and perplexity
    python scripts/train_tiny.py --steps 50 --out /tmp/t.npz

Vocabulary: ``build_vocab`` (SmolLM2 ids of minq's texts). Training data: the whole calibration text.
Evaluation: ``minq.eval.perplexity`` of the float16-stored model (as loaded back) on the first 8192
tokens of the evaluation text, windows of 512 (the chapters' protocol), both NumPy engines agreeing.
Deterministic for a given seed, machine and thread count (``--threads``, default 1: one thread is
reproducible on any machine, and on 2 shared cores it was 5x faster than two).
"""

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from minq.data import calibration_text, eval_tokens
from minq.eval import perplexity
from minq.models.tiny import (
    TinyConfig,
    TinyLlama,
    VocabTokenizer,
    build_vocab,
    load_checkpoint,
    save_checkpoint,
    smollm2_tokenizer,
    to_numpy_llama,
    train_tiny,
)

OUT = Path(__file__).resolve().parents[1] / "minq" / "data" / "tiny_llama.npz"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=OUT)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    base = smollm2_tokenizer()
    vocab = build_vocab(base)
    tok = VocabTokenizer(base, vocab)
    ids = np.asarray(tok.encode(calibration_text()), np.int64)
    config = TinyConfig(vocab_size=len(vocab))
    n_params = sum(p.numel() for p in TinyLlama(config).parameters())
    print(f"{config}\n{n_params:,} parameters, {ids.size:,} training tokens, vocab {len(vocab):,}")
    t0 = time.perf_counter()
    net, losses = train_tiny(config, ids, steps=a.steps, seed=a.seed, seq_len=a.seq_len, batch=a.batch, lr=a.lr,
                             log_every=max(1, a.steps // 20))
    print(f"trained in {time.perf_counter() - t0:.1f} s; last-50-step mean loss {losses[-50:].mean():.4f}")
    save_checkpoint(a.out, net, vocab)
    net16, _ = load_checkpoint(a.out)
    model = to_numpy_llama(net16, tokenizer=tok)
    ev = eval_tokens(tok, max_tokens=8192)
    ppl = perplexity(model, ev, window=512, progress=False)
    print(f"{a.out}: {a.out.stat().st_size / 1e6:.2f} MB; eval perplexity {ppl:.2f} "
          f"(8192 tokens, windows of 512; uniform over the vocab: {len(vocab)})")


if __name__ == "__main__":
    main()
