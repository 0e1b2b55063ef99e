"""Regenerate ``data/hqq/golden.npz``: what HQQ's own quantizer (mobiusml/hqq) makes of seeded float32
matrices, the oracle of tests/test_hqq.py (CI has no hqq; it reads this file).

How to run (from a checkout; hqq is never a dependency of minq, and nothing here installs it)::

    pip install --target /tmp/hqqpkg --no-deps hqq==0.2.8.post1   # pure Python; uses the installed torch
    python scripts/make_hqq_golden.py --hqq /tmp/hqqpkg            # -> data/hqq/golden.npz

``hqq.core.quantize`` imports ``termcolor`` for its warnings only; when it is missing this script puts a
stand-in (``colored`` returns its text) in ``sys.modules``. Nothing else of hqq's dependencies is used.

What runs: ``hqq.core.quantize.Quantizer.quantize(W, nbits, channel_wise=True, group_size, optimize=True,
round_zero=(nbits == 4), axis=1, bitpack=False, device="cpu")``, the settings of HQQ's
``hqq_base_quant_config`` (group 64, ``axis=1``, ``round_zero`` only for 4 bits) on a CPU, where the
solver (``optimize_weights_proximal_legacy``, HQQ's default) iterates in float32. Stored per case
``<set>_w<bits>g<group>`` (``g0``: ``group_size=None``, one group per row):

    <case>.q      uint8 [16, 128]     the codes (HQQ returns them as W's dtype, [-1, group] shaped)
    <case>.scale  float32 [16, 128/g] HQQ's meta["scale"] = 1 / s_inv, float32 (before any float16 cast)
    <case>.zero   float32 [16, 128/g] meta["zero"], float32

Sets (``W_<set>`` float32 [16, 128], ``numpy.random.default_rng(seed)``): ``normal`` N(0, 0.02) (seed 0),
``student`` Student-t with 3 degrees of freedom times 0.02 (seed 1, heavy tails), ``uniform`` U(-0.05,
0.05) (seed 2); ``normal1`` N(0, 1) (seed 3) and ``student1`` Student-t(3) (seed 4). At the 0.02 scale of
LLM weights every error stays below ``beta^(-1 / (2 - p)) = 0.17`` and HQQ's shrink is 0; at scale 1 the
lp shrink acts. Cases: bits 4, 3, 2 at group 64 and 4 bits per row. ``meta`` is a JSON string: versions,
seeds, the call. Re-running on one machine gives the same arrays (only ``meta``'s date changes); torch's
float32 sums may be ordered differently on another CPU.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import types
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "data" / "hqq" / "golden.npz"
SETS = {"normal": 0, "student": 1, "uniform": 2, "normal1": 3, "student1": 4}
CASES = [(4, 64), (3, 64), (2, 64), (4, 0)]           # (bits, group); group 0: group_size=None (per row)


def make_sets() -> dict[str, np.ndarray]:
    out = {}
    for name, seed in SETS.items():
        r = np.random.default_rng(seed)
        if name.startswith("normal"):
            W = (1.0 if name == "normal1" else 0.02) * r.standard_normal((16, 128))
        elif name.startswith("student"):
            W = (1.0 if name == "student1" else 0.02) * r.standard_t(3, (16, 128))
        else:
            W = r.uniform(-0.05, 0.05, (16, 128))
        out[name] = W.astype(np.float32)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hqq", required=True, help="folder holding the hqq package (pip install --target DIR)")
    args = ap.parse_args()
    sys.path.insert(0, args.hqq)
    try:
        import termcolor  # noqa: F401
    except ImportError:
        stand_in = types.ModuleType("termcolor")
        stand_in.colored = lambda text, *a, **k: text
        sys.modules["termcolor"] = stand_in
    import hqq
    import torch
    from hqq.core.quantize import Quantizer

    arrays = {}
    for name, W in make_sets().items():
        arrays[f"W_{name}"] = W
        for bits, group in CASES:
            Wq, meta = Quantizer.quantize(torch.from_numpy(W), nbits=bits, channel_wise=True,
                                          group_size=group or None, optimize=True, round_zero=bits == 4,
                                          axis=1, bitpack=False, device="cpu")
            assert meta["scale"].dtype == torch.float32 and meta["zero"].dtype == torch.float32
            case = f"{name}_w{bits}g{group}"
            arrays[f"{case}.q"] = Wq.reshape(W.shape).numpy().astype(np.uint8)
            arrays[f"{case}.scale"] = meta["scale"].reshape(16, -1).numpy()
            arrays[f"{case}.zero"] = meta["zero"].reshape(16, -1).numpy()
    arrays["meta"] = np.array(json.dumps({
        "hqq": hqq.__version__, "torch": torch.__version__, "numpy": np.__version__,
        "call": "Quantizer.quantize(W, nbits, channel_wise=True, group_size=group or None, optimize=True, "
                "round_zero=nbits == 4, axis=1, bitpack=False, device='cpu')",
        "solver": Quantizer.optimize_weights.__name__, "sets": SETS, "cases": CASES,
        "date": datetime.date.today().isoformat()}))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    tmp = OUT.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, OUT)
    print(f"wrote {OUT.relative_to(ROOT)} ({OUT.stat().st_size} bytes, {len(arrays)} arrays)")


if __name__ == "__main__":
    main()
