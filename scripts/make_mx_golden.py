"""Regenerate ``data/mx/golden.npz``: torchao's own MX and NVFP4 codes, scales and dequantized values, the
oracle of tests/test_mx.py (CI has no torchao; it reads this file).

How to run (from a checkout; torchao is never a dependency of minq)::

    python -m venv --system-site-packages /tmp/aoenv
    PIP_FIND_LINKS=/opt/wheels /tmp/aoenv/bin/pip install --no-deps torchao==0.18.0   # keeps torch 2.13.0
    /tmp/aoenv/bin/python scripts/make_mx_golden.py                                  # -> data/mx/golden.npz

Written atomically (a temporary file in the same folder, then ``os.replace``); seeded, so re-running gives
the same arrays (only ``meta``'s date changes). What torchao 0.18 runs (CPU, eager):

- MX: ``torchao.prototype.mx_formats.mx_tensor.to_mx(x, elem_dtype, 32, scaling_mode)`` for the five
  element formats and the four modes FLOOR, RCEIL, CEIL, EVEN, and ``to_dtype(...)`` back to float32.
  Stored per case, format and rule: ``<case>.<fmt>.<rule>.codes`` (uint8 element codes, one a byte;
  MXFP4 unpacked from torchao's bytes, element 2i in the low nibble), ``.scales`` (E8M0 codes, uint8),
  ``.xhat`` (float32).
- NVFP4: ``nvfp4_quantize(x, 16, per_tensor_scale)`` with ``per_tensor_scale = None`` (one level) and
  ``per_tensor_amax_to_scale(max |x|)`` (two level), dequantized as ``NVFP4Tensor.dequantize`` does
  (``e2m1 * (pts * s8)``): ``<case>.nvfp4.<1l|2l>.packed`` (torchao's bytes), ``.scales`` (E4M3 codes),
  ``.pts`` (float32; NaN for one level), ``.xhat``.

Cases (float32, last axis in blocks): ``gauss`` [8, 256] N(0,1) rows times e^U(-4,4); ``binades`` [32, 64]
N(0,1) blocks times 2^k, k in -60..60; ``zeros`` [4, 64] zero blocks next to N(0,1) ones; ``clip`` [16, 32]
blocks whose max has the mantissas 1, 1.5, 1.5 + 2^-23, 1.75, 1.75 +- 2^-23, 1.875, 1.9375, 1.99,
2 - 2^-23 (where FLOOR clips FP4/FP6/FP8) at several binades; ``extreme`` [4, 64] block maxima near float32's
max, 1e-30 and 2^-110 blocks (non-zero scale codes). ``tiny`` [2, 64]: blocks with E8M0 code 0 and non-zero
values (amax ~1e-38), where torchao departs from OCP (documented in minq/mx.py; not a bit-exact case).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "data" / "mx" / "golden.npz"
SEED = 20261010
F32 = np.float32
MX = {"mxfp8_e4m3": "float8_e4m3fn", "mxfp8_e5m2": "float8_e5m2", "mxfp6_e2m3": "fp6_e2m3",
      "mxfp6_e3m2": "fp6_e3m2", "mxfp4": "float4_e2m1fn_x2"}
RULES = ("floor", "rceil", "ceil", "even")


def cases() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(SEED)
    out = {"gauss": (rng.standard_normal((8, 256)) * np.exp(rng.uniform(-4, 4, (8, 1)))).astype(F32)}
    b = rng.standard_normal((32, 2, 32)) * 2.0 ** rng.integers(-60, 61, (32, 2, 1))
    out["binades"] = b.reshape(32, 64).astype(F32)
    z = rng.standard_normal((4, 64)).astype(F32)
    z[0] = 0
    z[1, :32] = 0
    z[2, 32:] = 0
    out["zeros"] = z
    mants = np.array([1, 1.5, 1.5 + 2**-23, 1.75, 1.75 - 2**-23, 1.75 + 2**-23, 1.875, 1.9375, 1.99,
                      2 - 2**-23, 1.25, 1.625, 1.8125, 1.96875, 1.5625, 1.4375], np.float64)
    c = rng.uniform(-1, 1, (16, 32)) * mants[:, None]
    c[:, 7] = mants * np.where(np.arange(16) % 2, -1, 1)
    c = c * 2.0 ** rng.integers(-10, 11, (16, 1))
    out["clip"] = c.astype(F32)
    e = rng.standard_normal((4, 64)).astype(np.float64)
    e[0, :32] *= 3.0e38 / np.abs(e[0, :32]).max()
    e[1, :32] *= 1e-30
    e[2, 32:] *= 2.0**-110
    e[3, :32] = np.array([3.4028235e38, -3.0e38] + [1.0] * 30)
    out["extreme"] = e.astype(F32)
    out["tiny"] = (rng.standard_normal((2, 64)) * 1e-38).astype(F32)
    return out


def main() -> None:
    import torch
    import torchao
    from torchao.prototype.mx_formats.config import ScaleCalculationMode as M
    from torchao.prototype.mx_formats.mx_tensor import to_dtype, to_mx
    from torchao.prototype.mx_formats.nvfp4_tensor import nvfp4_quantize, per_tensor_amax_to_scale

    modes = {"floor": M.FLOOR, "rceil": M.RCEIL, "ceil": M.CEIL, "even": M.EVEN}
    arrays, xs = {}, cases()
    for name, x in xs.items():
        arrays[f"x_{name}"] = x
        t = torch.from_numpy(x)
        for fmt, dt in MX.items():
            elem = getattr(torch, dt) if dt.startswith("float") else dt
            for rule in RULES:
                scale, data = to_mx(t, elem, 32, modes[rule])
                xhat = to_dtype(data, scale, elem, 32, torch.float32)
                d = data.view(torch.uint8).numpy()
                if fmt == "mxfp4":
                    d = np.stack([d & 15, d >> 4], -1).reshape(x.shape)
                key = f"{name}.{fmt}.{rule}"
                arrays[f"{key}.codes"] = d.astype(np.uint8)
                arrays[f"{key}.scales"] = scale.view(torch.uint8).numpy().copy()
                arrays[f"{key}.xhat"] = xhat.numpy().astype(F32)
        for lv in ("1l", "2l"):
            pts = per_tensor_amax_to_scale(t.abs().max()) if lv == "2l" else None
            s8, packed = nvfp4_quantize(t, 16, pts)
            codes = packed.view(torch.uint8)
            q = torch.stack([codes & 15, codes >> 4], -1).reshape(x.shape)
            from torchao.prototype.mx_formats.kernels import f4_unpacked_to_f32

            s = s8.to(torch.float32) if pts is None else pts * s8.to(torch.float32)
            xhat = (f4_unpacked_to_f32(q).reshape(x.shape[0], -1, 16) * s.reshape(x.shape[0], -1, 1))
            key = f"{name}.nvfp4.{lv}"
            arrays[f"{key}.packed"] = codes.numpy().copy()
            arrays[f"{key}.scales"] = s8.view(torch.uint8).numpy().copy()
            arrays[f"{key}.pts"] = np.array(np.nan if pts is None else float(pts), F32)
            arrays[f"{key}.xhat"] = xhat.reshape(x.shape).numpy().astype(F32)
    meta = {"torchao": torchao.__version__, "torch": torch.__version__, "cases": sorted(xs),
            "formats": sorted(MX), "rules": list(RULES), "seed": SEED, "python": platform.python_version(),
            "date": datetime.date.today().isoformat(), "script": "scripts/make_mx_golden.py"}
    arrays["meta"] = np.array(json.dumps(meta))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=OUT.parent, suffix=".npz")
    os.close(fd)
    try:
        np.savez_compressed(tmp, **arrays)
        os.replace(tmp, OUT)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes, {len(arrays)} arrays, torchao {torchao.__version__})")


if __name__ == "__main__":
    main()
