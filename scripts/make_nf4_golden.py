"""Regenerate ``data/nf4/golden.npz``: bitsandbytes' own NF4 bytes, absmax, dequantized values and
double-quantization state, the oracle of tests/test_nf4.py (CI has no bitsandbytes; it reads this file).

How to run (from a checkout; bitsandbytes is never a dependency of minq)::

    PIP_FIND_LINKS=/opt/wheels pip install bitsandbytes==0.50.2   # CPU backend; keeps the installed torch
    python scripts/make_nf4_golden.py                              # -> data/nf4/golden.npz

(a separate ``python -m venv --system-site-packages`` environment keeps the main one clean.) The file
is written atomically (a temporary file in the same folder, then ``os.replace``); re-running gives the
same arrays (seeded NumPy streams), only ``meta``'s date changes.

What bitsandbytes 0.50.2 runs on a CPU, and so what the file holds:

- ``quantize_4bit(x, blocksize, quant_type="nf4")`` has no CPU kernel: its pure-torch "default"
  backend runs (``backends/default/ops.py``): absmax per block of the flattened x, full blocks
  ``clamp(x * (1 / max(absmax, 1e-38)), -1, 1)``, a partial last block ``clamp(x / am, -1, 1)`` with
  ``am = max(absmax, 1e-38)`` (stored clamped), ``torch.bucketize`` on the 15 midpoints, pack
  ``q[0::2] << 4 | q[1::2]``. ``dequantize_4bit`` runs the C++ CPU kernel (an even last dimension) or
  the default one (odd): ``code[q] * absmax`` in float32. Both are stored: ``<case>.packed``,
  ``<case>.absmax``, ``<case>.xhat`` (float32, x's shape).
- Double quantization (``compress_statistics=True``): ``offset = absmax.mean()`` (torch's float32
  mean: its summation order depends on the CPU's vector width) and ``quantize_blockwise(absmax -
  offset, blocksize=256)`` with ``create_dynamic_map()``. On a CPU that call runs a C++ kernel that
  looks the code up in a 65536-bin table (``build_quantize_lut`` in ``csrc/cpu_ops.cpp``), which
  picks a neighbouring code for values within a bin of a midpoint and gives a zero block the codes 0;
  the default backend (the rule of the CUDA kernel: nearest code, midpoints ``(c_i + c_i+1) / 2``,
  ties to the lower code) is what minq follows. The file holds both: ``<case>.dq_codes`` /
  ``dq_absmax2`` (default backend, run through ``OpOverload.redispatch`` to
  CompositeExplicitAutograd) and ``dq_codes_cpu`` / ``dq_absmax2_cpu`` (the C++ LUT kernel, what
  ``quantize_4bit`` returned), with ``dq_offset``, ``dq_absmax_hat`` (``dequantize_blockwise`` +
  offset of the default-backend state) and ``dq_xhat`` (``dequantize_4bit`` with that nested state).
  ``dq_in`` is the absmax vector that was double-quantized.

Cases (``<set>_b<block>``): ``gauss`` N(0,1) [8, 256] at blocks 32, 64, 128, 256; ``rows`` [6, 100],
rows scaled 1e-3 .. 1e2 (blocks span rows, a partial last block); ``zeros`` [202] with zero blocks and a
zero partial block; ``odd`` [357] (odd length: a pad nibble) at 64 and 128; ``ties`` [366] values on the
midpoints times absmax 1, 2, 3, 0.1, 7.3 and one float32 step either side (the last block partial);
``extreme`` [468] absmax up to float32 max, 1e30 next to 1e-30, subnormals down to 1.4e-45; ``half``
float16 [4, 64]. DQ-only case ``stats``: 1000 absmax values of a [1000, 64] weight with log-normal row
scales and zero rows (3 full blocks of 256 and a partial one); its weight is not stored.
Also ``code_nf4`` (``get_4bit_type("nf4")``), ``code_dynamic`` (``create_dynamic_map()``) and ``meta``.
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
OUT = ROOT / "data" / "nf4" / "golden.npz"
SEED = 20261001
F32 = np.float32


def inputs() -> dict:
    """The input sets: name -> (array, block sizes)."""
    rng = np.random.default_rng(SEED)
    gauss = rng.standard_normal((8, 256)).astype(F32)
    rows = (rng.standard_normal((6, 100)) * 10.0 ** np.arange(-3, 3)[:, None]).astype(F32)
    zeros = rng.standard_normal(202).astype(F32)
    zeros[64:128] = 0
    zeros[192:] = 0                                      # the partial last block of 10
    zeros[:30] = 0
    odd = rng.standard_normal(357).astype(F32)
    code = _nf4_code()
    mid = ((code[:-1] + code[1:]) / F32(2)).astype(F32)
    blocks = []
    for a in (1.0, 2.0, 3.0, 0.1, 7.3, 3.0):            # the last one becomes the partial block
        a = F32(a)
        on = (a * mid).astype(F32)
        blk = np.concatenate([[a], on, np.nextafter(on, F32(np.inf)), np.nextafter(on, F32(-np.inf)),
                              (a * code).astype(F32), [0, -a]]).astype(F32)
        blocks.append(blk if len(blocks) < 5 else blk[:46])
    ties = np.concatenate(blocks).astype(F32)            # 5 * 64 + 46
    tiny = np.float32(1.4e-45)
    extreme = np.concatenate([
        rng.uniform(-3e38, 3e38, 64), np.r_[3.4028235e38, -3.4028235e38, rng.standard_normal(62)],
        np.r_[1e30, rng.standard_normal(63) * 1e-30], rng.standard_normal(64) * 1e-39,
        np.arange(-32, 32) * tiny, np.r_[1e20, rng.standard_normal(63)], rng.standard_normal(64) * 3e-38,
        rng.standard_normal(20) * 1e-41]).astype(F32)   # 7 * 64 + 20
    half = (rng.standard_normal((4, 64)) * 3).astype(np.float16)
    half[0, :8] = np.float16(6e-8)                       # float16 subnormals
    return {"gauss": (gauss, (32, 64, 128, 256)), "rows": (rows, (64,)), "zeros": (zeros, (64,)),
            "odd": (odd, (64, 128)), "ties": (ties, (64,)), "extreme": (extreme, (64,)), "half": (half, (64,))}


def _nf4_code():
    import bitsandbytes.functional as F

    return F.get_4bit_type("nf4", device="cpu").numpy().astype(F32)


def double_quant(absmax, out: dict, key: str):
    """bitsandbytes' double quantization of the float32 torch vector ``absmax`` into ``out``."""
    import bitsandbytes.functional as F
    import torch

    op = torch.ops.bitsandbytes.quantize_blockwise.default
    default = torch._C.DispatchKeySet(torch._C.DispatchKey.CompositeExplicitAutograd)
    dyn = F.create_dynamic_map()
    offset = absmax.mean()                                # as quantize_4bit(compress_statistics=True)
    shifted = absmax - offset
    codes_cpu, state_cpu = F.quantize_blockwise(shifted, blocksize=256)      # the CPU's C++ LUT kernel
    codes, absmax2 = op.redispatch(default, shifted, dyn, 256)             # the pure-torch default backend
    state2 = F.QuantState(absmax=absmax2, code=dyn, blocksize=256, dtype=torch.float32)
    absmax_hat = F.dequantize_blockwise(codes, state2) + offset
    out.update({f"{key}.dq_in": absmax.numpy(), f"{key}.dq_offset": offset.numpy(),
                f"{key}.dq_codes": codes.numpy(), f"{key}.dq_absmax2": absmax2.numpy(),
                f"{key}.dq_codes_cpu": codes_cpu.numpy(), f"{key}.dq_absmax2_cpu": state_cpu.absmax.numpy(),
                f"{key}.dq_absmax_hat": absmax_hat.numpy()})
    return codes, state2, offset


def generate() -> tuple[dict, dict]:
    import bitsandbytes
    import bitsandbytes.functional as F
    import torch

    out = {"code_nf4": _nf4_code(), "code_dynamic": F.create_dynamic_map().numpy()}
    cases = {}
    for name, (x, sizes) in inputs().items():
        out[f"x_{name}"] = x
        for bs in sizes:
            key = f"{name}_b{bs}"
            packed, state = F.quantize_4bit(torch.from_numpy(x), blocksize=bs, quant_type="nf4")
            state.dtype = torch.float32                  # dequantize to float32 (bnb: the input's dtype)
            xhat = F.dequantize_4bit(packed, state)
            out.update({f"{key}.packed": packed.numpy().reshape(-1), f"{key}.absmax": state.absmax.numpy(),
                        f"{key}.xhat": xhat.numpy().reshape(x.shape)})    # a 1-D even x comes back [1, n]
            codes, state2, offset = double_quant(state.absmax, out, key)
            nested = F.QuantState(absmax=codes, shape=state.shape, dtype=torch.float32, blocksize=bs,
                                  code=state.code, quant_type="nf4", offset=offset, state2=state2)
            out[f"{key}.dq_xhat"] = F.dequantize_4bit(packed, nested).numpy().reshape(x.shape)
            _, pub = F.quantize_4bit(torch.from_numpy(x), blocksize=bs, quant_type="nf4", compress_statistics=True)
            assert np.array_equal(pub.absmax.numpy(), out[f"{key}.dq_codes_cpu"])   # the public call's state
            cases[key] = {"set": name, "block": bs, "shape": list(x.shape), "dtype": str(x.dtype)}
    rng = np.random.default_rng(SEED + 1)
    w = rng.standard_normal((1000, 64)) * rng.lognormal(0.0, 1.0, (1000, 1))
    w[rng.choice(1000, 5, replace=False)] = 0
    _, st = F.quantize_4bit(torch.from_numpy(w.astype(F32)), blocksize=64, quant_type="nf4")
    double_quant(st.absmax, out, "stats")
    meta = {"bitsandbytes": bitsandbytes.__version__, "torch": torch.__version__, "numpy": np.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "machine": platform.machine(),
            "seed": SEED, "cases": cases, "date": datetime.date.today().isoformat(),
            "dq_codes": "default (pure-torch) backend via redispatch; dq_codes_cpu: the C++ LUT kernel"}
    out["meta"] = np.array(json.dumps(meta))
    return out, meta


def write_atomic(path: Path, arrays: dict) -> None:
    """``np.savez_compressed`` to a temporary file in the same folder, then ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, **arrays)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main() -> None:
    arrays, meta = generate()
    write_atomic(OUT, arrays)
    n_cpu = sum(int((arrays[k] != arrays[k.replace("_cpu", "")]).sum()) for k in arrays if k.endswith("dq_codes_cpu"))
    print(f"wrote {OUT.relative_to(ROOT)}: {len(arrays)} arrays, {OUT.stat().st_size} bytes; bitsandbytes "
          f"{meta['bitsandbytes']}, torch {meta['torch']} ({meta['cpu_capability']}); the CPU LUT kernel's "
          f"double-quant codes differ from the default backend's in {n_cpu} places")


if __name__ == "__main__":
    main()
