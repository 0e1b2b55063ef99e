"""Resident memory of a decoding process: does a packed 4-bit model stay 4-bit in RAM?

    python benchmarks/bench_memory.py                 # SmolLM2-135M, one fresh process per configuration

Each configuration runs in its own Python process (so that nothing of another one stays resident):
import minq (the baseline), load SmolLM2 (float32), quantize with the scheme, pack it (``model.packed()``)
or not, drop the float model, hand the freed heap back (``minq.runtime.memory.release_memory``), decode
16 tokens greedily. The ``file`` configurations never hold a float32 model: a GGUF file minq wrote
(``quantize_gguf``, as ``minq quantize --type``) is read with its blocks kept (``load_model(path,
dequantize=False)``) and packed. It reports the resident set size (RSS, from /proc/self/statm) after loading, after
quantizing (float model dropped), after the release and after decoding, the peak RSS (``ru_maxrss``)
and the bits-per-weight arithmetic: what the parameters must take,

    linears  model.nbytes (the weight objects as stored: codes, scales, zero points)
    rest     the head as stored (the tied embedding: float32 [vocab, d], or its quantized blocks), the norms

``resident over the arithmetic`` is (RSS after decoding - the baseline) / (linears + rest), ``peak over`` the
same for the peak RSS (the issue's measure: what a machine must have free to load and decode), ``less
runtime`` the peak less the runtime's own fixed cost (a process that loads SmolLM2's tokenizer and compiles and
runs every kernel on a tiny model, measured the same way): 1.0 would be
the parameters and nothing else (the KV cache of 16 tokens and the activations are a few MB; Numba's
LLVM and the compiled kernels, the tokenizer's vocabulary and merges add a fixed ~130 MB that a bigger
model would not grow).
"""

import json
import os
import subprocess
import sys

CONFIGS = [("float32", None, False), ("rtn-w4g64", "rtn-w4g64", False), ("rtn-w4g64 packed", "rtn-w4g64", True),
           ("w4g64+head4 packed", "rtn-w4g64+head-rtn-w4g64", True), ("ternary-a32 packed", "ternary-a32", True),
           ("Q4_0 file, kept", "file:Q4_0", True), ("Q4_K_M file, kept", "file:Q4_K_M", True),
           ("Q8_0 file, kept", "file:Q8_0", True)]

CHILD = r"""
import gc, json, resource, sys
import numpy as np
import minq
from minq.generate import generate
from minq.runtime.memory import release_memory, rss

base = rss()
scheme, packed = sys.argv[1], sys.argv[2] == "1"
if scheme.startswith("file:"):             # a GGUF file minq wrote, read with its blocks kept: no float32 copy
    model = minq.load_model(sys.argv[3], progress=False, dequantize=False)
    loaded = rss()
    q = model
else:
    model = minq.load_model("smollm2", progress=False)
    loaded = rss()
    q = model if scheme == "None" else minq.quantize(model, scheme, progress=False)
if packed:
    q = q.packed()
head = q.head_weight
rest = (head.nbytes if not isinstance(head, np.ndarray) else 4 * head.size) \
    + sum(g.nbytes for g in q.norms.values())
del model
gc.collect()
steady = rss()
release_memory()
released = rss()
ids = np.array(q.tokenizer.encode("The quality of mercy is not strained;"))
generate(q, ids, 16)
print(json.dumps({"base": base, "loaded": loaded, "steady": steady, "released": released, "decoded": rss(),
                  "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "linears": int(q.nbytes), "rest": int(rest)}))
"""


FIXED = r"""
import json, sys
import numpy as np
import gguf
import minq
from minq.generate import generate
from minq.models import assets
from minq.models.llama import LlamaModel
from minq.models.llama_weights import LINEARS, LlamaConfig, _linear_shape
from minq.models.tokenizer import Tokenizer
from minq.models.weights import DenseWeight
from minq.runtime.memory import rss

base = rss()
r = gguf.GGUFReader(assets.fetch("smollm2"))                   # SmolLM2's tokenizer, from the metadata alone
tok = Tokenizer.from_gguf_metadata({k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")})
del r
rng = np.random.default_rng(0)
c = LlamaConfig(vocab_size=512, dim=256, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=512, norm_eps=1e-5,
                rope_theta=10000.0, context_length=64)
f32 = lambda *shape: (0.05 * rng.standard_normal(shape)).astype(np.float32)
tiny = LlamaModel(c, {f"blk.{i}.{n}": DenseWeight(f32(*_linear_shape(c, n))) for i in range(2) for n in LINEARS},
                  {**{f"blk.{i}.{n}": np.ones(256, np.float32) for i in range(2) for n in ("attn_norm", "ffn_norm")},
                   "output_norm": np.ones(256, np.float32)}, f32(512, 256))
for scheme in ("q4_k_m", "q4_0", "q8_0", "rtn-w4g64+head-rtn-w4g64", "rtn-w8g64+head-rtn-w8g64", "nf4", "ternary-a32"):
    q = minq.quantize(tiny, scheme, progress=False)
    for act in ("float", "int8"):
        generate(q.packed(act), np.arange(5), 16)              # every kernel compiled and run
print(json.dumps({"base": base, "fixed": rss() - base, "tokenizer": len(tok.vocab) if hasattr(tok, "vocab") else 0}))
"""


def main():
    import tempfile
    from pathlib import Path

    from minq.gguf_write import quantize_gguf
    from minq.models import assets

    tmp = Path(tempfile.mkdtemp(prefix="minq-memory-"))
    fixed = json.loads(subprocess.run([sys.executable, "-c", FIXED], capture_output=True, text=True,
                                      check=True).stdout.strip().splitlines()[-1])["fixed"]   # first: Numba's
    rows = {}                                                                                 # cache filled
    for label, scheme, packed in CONFIGS:
        path = ""
        if str(scheme).startswith("file:"):
            path = str(tmp / f"{scheme[5:]}.gguf")
            quantize_gguf(assets.fetch("smollm2"), path, scheme[5:], progress=False)
        out = subprocess.run([sys.executable, "-c", CHILD, str(scheme), "1" if packed else "0", path],
                             capture_output=True, text=True, check=True)
        rows[label] = json.loads(out.stdout.strip().splitlines()[-1])
    mb = 1e6
    print(f"load average {os.getloadavg()[0]:.2f}; MB (10^6 bytes); baseline = after `import minq`; the runtime "
          f"alone (SmolLM2's tokenizer, every kernel compiled and run on a tiny model) {fixed / mb:.0f} MB")
    print(f"{'configuration':20s} {'baseline':>8s} {'loaded':>7s} {'steady':>7s} {'released':>8s} {'decoded':>8s} "
          f"{'peak':>6s} {'linears':>8s} {'rest':>6s} {'resident / arith':>17s} {'peak / arith':>13s} "
          f"{'less runtime':>13s}")
    for label, r in rows.items():
        arith = r["linears"] + r["rest"]
        print(f"{label:20s} {r['base'] / mb:8.0f} {r['loaded'] / mb:7.0f} {r['steady'] / mb:7.0f} "
              f"{r['released'] / mb:8.0f} {r['decoded'] / mb:8.0f} {r['peak'] / mb:6.0f} {r['linears'] / mb:8.1f} {r['rest'] / mb:6.1f} "
              f"{(r['decoded'] - r['base']) / arith:17.2f} {(r['peak'] - r['base']) / arith:13.2f} "
              f"{(r['peak'] - r['base'] - fixed) / arith:13.2f}")


if __name__ == "__main__":
    main()
