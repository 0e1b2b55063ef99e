"""Chapter 12's measurements on SmolLM2-135M: rotations (QuaRot-style) and HQQ against RTN / GPTQ / AWQ.

    python scripts/rotations_smollm2.py                  # -> notebooks/data/rotations_smollm2.json (about an hour)
    python scripts/rotations_smollm2.py --only rtn-w4 rot-rtn-w4     # some schemes (the others are kept)

Perplexity on the report's protocol (``minq.report``: the first 16,384 tokens of minq's evaluation text,
windows of 512) and the quantize time (seconds, wall clock, this machine's threads) of each scheme, plus

- ``fold+<scheme>``: the RMSNorm gammas folded into the linears (``minq.rotation.fold_norms``) and no
  rotation, then the scheme: what folding alone does;
- kurtosis of every linear's weight (original vs rotated) and of every linear's input on 4 calibration
  windows of 256 tokens (original vs rotated model);
- the load average before and after.

Resumable: a scheme already in the output file is not run again unless named in ``--only``.
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
from minq.rotation import fold_norms, kurtosis, rotate

ROOT = Path(__file__).resolve().parents[1]

SCHEMES = ("float", "rot-fp",
           "rtn-w4", "rot-rtn-w4", "fold+rtn-w4", "rtn-w4g64", "rot-rtn-w4g64", "fold+rtn-w4g64",
           "rtn-w3g64", "rot-rtn-w3g64",
           "hqq-w4g64", "hqq-w3g64", "hqq-w2g64", "rot-hqq-w4g64", "rot-hqq-w3g64", "rtn-w2g64",
           "w4a8", "rot-w4a8", "w4a4", "rot-w4a4", "gptq-w4+a4", "rot-gptq-w4+a4", "rtn-w4g32",
           "rtn-w4g64+kv-int4", "rot-rtn-w4g64+kv-int4", "rot-rtn-w4g64+kv-int4-had",
           "kv-int4", "kv-int4-had", "rot-fp+kv-int4", "rot-fp+kv-int4-had",
           "gptq-w4", "rot-gptq-w4", "gptq-w3g64", "rot-gptq-w3g64", "awq-w4g64", "awq-w3g64")


def _save(out, result):
    with atomic_path(out) as tmp:
        Path(tmp).write_text(json.dumps(result, indent=1) + "\n")


def kurtosis_table(model, rotated):
    """``{linear: {"w": [orig, rot], "x": [orig, rot]}}``: kurtosis of weights and of inputs."""
    ids = model.calibration_ids(4, 256)
    names = model.linear_names()
    X0 = model.capture_inputs(ids, names)
    X1 = rotated.capture_inputs(ids, names)
    return {n: {"w": [float(kurtosis(model.weights[n].dequantize())), float(kurtosis(rotated.weights[n].dequantize()))],
                "x": [float(kurtosis(X0[n])), float(kurtosis(X1[n]))]} for n in names}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--max-tokens", type=int, default=16384)
    p.add_argument("--only", nargs="*", default=None, help="run these schemes (again)")
    p.add_argument("--out", type=Path, default=ROOT / "notebooks" / "data" / "rotations_smollm2.json")
    a = p.parse_args()
    result = json.loads(a.out.read_text()) if a.out.exists() else {}
    result.update({"model": "smollm2", "window": 512})
    result.setdefault("schemes", {})
    result["load_average"] = round(os.getloadavg()[0], 2)
    model = minq.load_model("smollm2", progress=False)
    ev = eval_tokens(model.tokenizer, max_tokens=a.max_tokens)
    result["eval_tokens"] = int(ev.size)
    todo = [s for s in a.only if s != "kurtosis"] if a.only is not None else \
        [s for s in SCHEMES if s not in result["schemes"]]
    for name in todo:
        t0 = time.perf_counter()
        if name == "float":
            m = model
        elif name.startswith("fold+"):
            m = minq.quantize(fold_norms(model), name[5:], progress=False)
        else:
            m = minq.quantize(model, name, progress=False)
        t1 = time.perf_counter()
        ppl = float(perplexity(m, ev, window=512, progress=False))
        result["schemes"][name] = {"perplexity": ppl, "quantize_s": round(t1 - t0, 1),
                                   "bits_per_weight": float(8 * m.nbytes / sum(np.prod(w.shape) for w in m.weights.values())),
                                   "load": round(os.getloadavg()[0], 2)}
        print(f"{name}: perplexity {ppl:.3f}, quantize {t1 - t0:.0f} s, eval {time.perf_counter() - t1:.0f} s", flush=True)
        _save(a.out, result)
    if "kurtosis" not in result or "kurtosis" in (a.only or ()):
        result["kurtosis"] = kurtosis_table(model, rotate(model))
        _save(a.out, result)
    result["load_after"] = round(os.getloadavg()[0], 2)
    _save(a.out, result)


if __name__ == "__main__":
    main()
