"""PTQ against QAT on minq's tiny Llama (chapter 05): perplexity, KL to the float model, training time.

    python scripts/qat_tiny.py                       # -> notebooks/data/qat_tiny.json (about 25 minutes, one thread)
    python scripts/qat_tiny.py --steps 20 --bits 2 --out /tmp/q.json      # a quick look

For each weight width (``--bits``, per output channel, asymmetric: rows of 128 or 384 weights, the
group size real models use) and W4A8 (4-bit weights, int8 per-token inputs):

    rtn        round to nearest (chapter 03)                                 no data, no training
    gptq       GPTQ (chapter 06) on 64 calibration windows of 256 tokens      calibration, no training
    qat-ste    QAT, chapter 03's min-max grid every step, straight-through   ``--steps`` steps of KD
    qat-lsq    QAT, LSQ+ (learned step and offset per row), from RTN's grid  ``--steps`` steps of KD

QAT: ``minq.qat_llama.qat_finetune`` with the distillation loss (KL to the float model on windows of
the calibration text, the text the model was trained on), then ``quantized_llama``: the numbers are
those of the converted model (real codes, NumPy runtime). Evaluation: the first 8192 tokens of the
evaluation text, windows of 512 (perplexity and ``minq.eval.kl_divergence`` to the float model).
W4A8's PTQ baselines add chapter 04's dynamic int8 inputs to RTN's and GPTQ's weights. One thread
(seeded, reproducible on a machine); the load average is recorded.
"""

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

import minq
from minq._io import atomic_path
from minq.data import calibration_text, calibration_tokens, eval_tokens
from minq.eval import kl_divergence, perplexity
from minq.models.tiny import VocabTokenizer, load_checkpoint, smollm2_tokenizer, to_numpy_llama
from minq.qat_llama import qat_finetune, quantized_llama
from minq.w8a8 import ActQuantModel, Int8Activations

ROOT = Path(__file__).resolve().parents[1]
# Adam moves each weight by ~lr a step, so the rate follows the grid's step (~2x per bit removed): 40-step
# runs at W4 gave KL 0.00049 with 1e-4 and 0.0031 (RTN's) with 5e-4; at W2 0.025 and 0.0146.
LR = {8: 2e-5, 4: 1e-4, 3: 2.5e-4, 2: 5e-4}


def with_a8(model):
    return ActQuantModel(model, {n: Int8Activations("dynamic") for n in model.linear_names()})


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, default=ROOT / "minq" / "data" / "tiny_llama.npz")
    p.add_argument("--bits", type=int, nargs="+", default=[4, 3, 2])
    p.add_argument("--a8", action=argparse.BooleanOptionalAction, default=True, help="also W4A8")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--lr", type=float, default=None, help="Adam's rate for the weights (default: LR by width)")
    p.add_argument("--lr-quant", type=float, default=1e-5, help="for LSQ's steps and offsets")
    p.add_argument("--out", type=Path, default=ROOT / "notebooks" / "data" / "qat_tiny.json")
    a = p.parse_args()
    torch.set_num_threads(1)
    load = os.getloadavg()[0]
    net, vocab = load_checkpoint(a.checkpoint)
    tok = VocabTokenizer(smollm2_tokenizer(), vocab)
    ref = to_numpy_llama(net, tokenizer=tok)
    ev = eval_tokens(tok, max_tokens=8192)
    calib = calibration_tokens(tok, 64, 256)
    train_ids = np.asarray(tok.encode(calibration_text()), np.int64)

    def measure(model):
        return {"ppl": perplexity(model, ev, 512, progress=False), "kl": kl_divergence(ref, model, ev, 512)}

    rows = [{"bits": 16, "method": "float", **measure(ref), "seconds": 0.0}]
    print(rows[0], flush=True)
    configs = [(b, False) for b in a.bits] + ([(4, True)] if a.a8 else [])
    for bits, a8 in configs:
        label = f"W{bits}A8" if a8 else f"W{bits}"
        for method in ("rtn", "gptq"):
            t0 = time.perf_counter()
            scheme = f"{method}-w{bits}"
            q = minq.quantize(ref, scheme, calib if method == "gptq" else None, progress=False)
            q = with_a8(q) if a8 else q
            rows.append({"bits": label, "method": method, "seconds": time.perf_counter() - t0, **measure(q)})
            print(rows[-1], flush=True)
        for method, kw in (("qat-ste", dict(method="ste")), ("qat-lsq", dict(method="lsq", offset=True))):
            t0 = time.perf_counter()
            lr = a.lr or LR[bits]
            qnet, losses = qat_finetune(net, train_ids, bits=bits, group_size=-1, steps=a.steps, lr=lr,
                                        lr_quant=a.lr_quant, act_int8=a8, progress=False, **kw)
            seconds = time.perf_counter() - t0
            rows.append({"bits": label, "method": method, "seconds": seconds, "lr": lr,
                         **measure(quantized_llama(qnet, tokenizer=tok)), "losses": [round(x, 5) for x in losses.tolist()]})
            print({k: v for k, v in rows[-1].items() if k != "losses"}, flush=True)
    out = {"checkpoint": a.checkpoint.name, "steps": a.steps, "lr_quant": a.lr_quant, "eval_tokens": int(ev.size),
           "threads": 1, "load_before": load, "load_after": os.getloadavg()[0], "rows": rows}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(a.out) as tmp:
        Path(tmp).write_text(json.dumps(out, indent=1))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
