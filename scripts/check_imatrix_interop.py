"""Check minq's imatrix files and GGUF writer against llama.cpp's own tools (by hand; CI never runs it).

1. ``llama-imatrix`` collects an imatrix of SmolLM2 on minq's calibration text: minq reads the file
   (``minq.imatrix.read_imatrix``) and compares it with its own collection on the same tokens (close,
   not equal: llama-imatrix puts a BOS token at the start of each chunk).
2. minq writes its imatrix as GGUF and as legacy ``.dat``; ``llama-quantize --imatrix`` requantizes
   SmolLM2 with each, and ``minq.gguf_write.quantize_gguf`` does the same with the same file: every
   tensor's type and bytes must be equal (Q4_K_M, IQ4_XS, Q4_0).

Build the two tools from the sdist the golden files pin (``scripts/make_kquant_golden.py``; about
10 minutes on 2 cores)::

    cmake -S /tmp/llamacpp/llama_cpp_python-0.3.36/vendor/llama.cpp -B /tmp/llamacpp/build2 -G Ninja \\
        -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF \\
        -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_COMMON=ON \\
        -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF
    cmake --build /tmp/llamacpp/build2 --target llama-quantize llama-imatrix -j2
    python scripts/check_imatrix_interop.py --bin /tmp/llamacpp/build2/bin

Measured 2026-12-07: 0 of 272 tensors differ for each mix and each file format; llama-imatrix's 210
entries read, correlation >= 0.9986 with minq's collection.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

import gguf
import numpy as np

import minq
from minq.data import calibration_text
from minq.gguf_write import quantize_gguf
from minq.imatrix import collect_imatrix, read_imatrix, write_imatrix
from minq.models import assets


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", type=Path, required=True, help="folder holding llama-imatrix and llama-quantize")
    ap.add_argument("--chunks", type=int, default=8)
    ap.add_argument("--ctx", type=int, default=128)
    args = ap.parse_args()
    src = str(assets.fetch("smollm2"))
    model = minq.load_model("smollm2", progress=False)
    tmp = Path(tempfile.mkdtemp(prefix="minq-interop-"))
    text = calibration_text()[:100_000]
    (tmp / "cal.txt").write_text(text)
    subprocess.run([str(args.bin / "llama-imatrix"), "-m", src, "-f", str(tmp / "cal.txt"), "-o", str(tmp / "llama.gguf"),
                    "-c", str(args.ctx), "-b", str(args.ctx), "--chunks", str(args.chunks), "-t", "2"],
                   check=True, capture_output=True)
    theirs = read_imatrix(tmp / "llama.gguf", model)
    ids = np.array(model.tokenizer.encode(text)[: args.chunks * args.ctx]).reshape(args.chunks, args.ctx)
    ours = collect_imatrix(model, ids, progress=False, dataset="cal.txt")
    corr = min(np.corrcoef(theirs.importance(k), ours.importance(k))[0, 1] for k in ours.sums)
    print(f"llama-imatrix: {len(theirs.sums)} entries, {theirs.chunk_count} chunks of {theirs.chunk_size}; "
          f"smallest correlation with minq's collection {corr:.6f}")
    bad = 0
    for fmt in ("gguf", "dat"):
        path = write_imatrix(ours, tmp / f"minq.{fmt}")
        for mix in ("Q4_K_M", "IQ4_XS", "Q4_0"):
            subprocess.run([str(args.bin / "llama-quantize"), "--allow-requantize", "--imatrix", str(path), src,
                            str(tmp / f"lq_{mix}.gguf"), mix, "2"], check=True, capture_output=True)
            quantize_gguf(src, tmp / f"mq_{mix}.gguf", mix, imatrix=path, progress=False)
            a = {t.name: t for t in gguf.GGUFReader(tmp / f"lq_{mix}.gguf").tensors}
            b = {t.name: t for t in gguf.GGUFReader(tmp / f"mq_{mix}.gguf").tensors}
            diff = [n for n in a if a[n].tensor_type != b[n].tensor_type
                    or not np.array_equal(np.asarray(a[n].data).view(np.uint8), np.asarray(b[n].data).view(np.uint8))]
            bad += len(diff)
            print(f"imatrix as .{fmt}, {mix}: {len(diff)} of {len(a)} tensors differ from llama-quantize's {diff[:3]}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
