"""Regenerate the golden files under ``data/`` (run from a checkout: ``python scripts/make_golden_data.py``).

Each ``build_*`` function returns ``{relative path: bytes}``; ``tests/test_golden_data.py`` calls the
same functions and checks that the committed files equal what minq produces today, so a change of
behaviour shows up as a failing test (and is made deliberate by re-running this script). The files
are plain CSV / JSON / NumPy ``.npz``, readable without minq. What each holds: ``data/README.md``.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:                       # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

from minq.formats import FORMATS  # noqa: E402
from minq.packing import pack  # noqa: E402

# Formats of at most 8 bits: every code fits a small table.
SMALL_FORMATS = [n for n, f in FORMATS.items() if f.total_bits <= 8]
PACK_BITS = range(1, 9)


def _value_str(v: np.float32) -> str:
    """A float32 written exactly: ``nan``, ``inf``, ``-inf`` or the shortest decimal that reads back."""
    if np.isnan(v):
        return "nan"
    return repr(float(v)) if np.isfinite(v) else ("inf" if v > 0 else "-inf")


def build_format_tables() -> dict[str, bytes]:
    """``data/formats/<name>.csv``: every code of each format of at most 8 bits and its value."""
    out = {}
    for name in SMALL_FORMATS:
        fmt = FORMATS[name]
        codes = np.arange(fmt.max_code + 1, dtype=fmt.code_dtype)
        vals = fmt.decode(codes)
        lines = ["code,bits,value"]
        for c, v in zip(codes, vals):
            lines.append(f"{int(c)},{int(c):0{fmt.total_bits}b},{_value_str(v)}")
        out[f"formats/{name}.csv"] = ("\n".join(lines) + "\n").encode()
    return out


def encode_inputs(name: str) -> np.ndarray:
    """Boundary inputs for encoding into ``name``: every value and every midpoint between neighbouring
    values, each with its float32 neighbours one ulp either side, both signs, and overflow probes."""
    fmt = FORMATS[name]
    v = fmt.values().astype(np.float64)
    mid = (v[:-1] + v[1:]) / 2
    ulp_max = 2.0 ** (fmt.emax - fmt.man_bits)
    probes = fmt.max + np.array([ulp_max / 2, ulp_max, 4 * fmt.max])
    with np.errstate(over="ignore"):                # E8M0's probes beyond float32 become inf: kept
        core = np.concatenate([v, mid, probes]).astype(np.float32)
        core = np.concatenate([core, np.nextafter(core, np.float32(np.inf)),
                               np.nextafter(core, np.float32(-np.inf))])
    x = np.concatenate([core, -core])
    if fmt.convention == "fnu":                     # unsigned: keep the positive inputs
        x = x[x > 0]
    return np.unique(x.view(np.uint32)).view(np.float32)


def build_encode_cases() -> dict[str, bytes]:
    """``data/formats/encode/<name>.csv``: float32 inputs at the rounding boundaries and their codes,
    non-saturating and saturating."""
    out = {}
    for name in SMALL_FORMATS:
        fmt = FORMATS[name]
        x = encode_inputs(name)
        q, qs = fmt.encode(x), fmt.encode(x, saturate=True)
        lines = ["x_bits,x,code,code_saturate"]
        for xi, a, b in zip(x, q, qs):
            lines.append(f"0x{int(xi.view(np.uint32)):08x},{_value_str(xi)},{int(a)},{int(b)}")
        out[f"formats/encode/{name}.csv"] = ("\n".join(lines) + "\n").encode()
    return out


def build_packing_examples() -> dict[str, bytes]:
    """``data/packing/examples.json``: for 1..8 bits, rows of codes (lengths that need padding too) and
    their packed bytes in minq's layout (little-endian bit stream per row, see minq/packing.py)."""
    rng = np.random.default_rng(0)
    cases = []
    for bits in PACK_BITS:
        for n in (1, 8, 13, 64):
            q = rng.integers(0, 1 << bits, (2, n)).astype(np.uint8)
            cases.append({"bits": bits, "n": n, "codes": q.tolist(),
                          "packed_hex": [bytes(r).hex() for r in pack(q, bits)]})
    text = json.dumps({"layout": "code i of a row occupies stream bits [i*bits, (i+1)*bits), least "
                                 "significant bit first; rows padded with zero codes to whole chunks of "
                                 "8/gcd(bits, 8) codes", "cases": cases}, indent=1)
    return {"packing/examples.json": (text + "\n").encode()}


GPTQ_CONFIG = dict(bits=4, group_size=32, act_order=True)


def gptq_layer():
    """The GPTQ golden layer: a 64 x 128 slice of ``minq.testing.llm_like_layer`` and the Hessian
    ``H = X^T X / n`` of 512 of its input rows (float32)."""
    from minq.testing import llm_like_layer

    W, X = llm_like_layer(seed=0, n_tokens=512)
    W, X = W[:64, :128].copy(), X[:, :128].astype(np.float64)
    H = (X.T @ X / len(X)).astype(np.float32)
    return W, H


def build_gptq_layer() -> dict[str, bytes]:
    """``data/gptq/layer_w4g32_act.npz``: W, H and what ``gptq_quantize`` makes of them: codes ``q`` and
    per-group ``s, z`` in the stored (processing) order, whose column ``k`` is input ``perm[k]``, and
    ``W_hat = s * (q - z)`` back in the original column order."""
    from minq.gptq import gptq_quantize

    W, H = gptq_layer()
    c = gptq_quantize(W, H, **GPTQ_CONFIG)
    qp = c.qparams()
    buf = io.BytesIO()
    np.savez_compressed(buf, W=W, H=H, q=c.codes, s=np.asarray(qp.s[..., 0], np.float32),
                        z=np.asarray(qp.z[..., 0], np.float32), W_hat=c.dequantize(),
                        perm=np.arange(W.shape[1]) if c.perm is None else np.asarray(c.perm),
                        config=np.array(json.dumps(GPTQ_CONFIG)))
    return {"gptq/layer_w4g32_act.npz": buf.getvalue()}


BUILDERS = (build_format_tables, build_encode_cases, build_packing_examples, build_gptq_layer)


def main() -> None:
    for build in BUILDERS:
        for rel, data in build().items():
            path = ROOT / "data" / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(path.suffix + ".tmp")
            tmp.write_bytes(data)
            tmp.replace(path)                       # atomic: a failed run leaves the old file
            print(f"data/{rel}: {len(data):,} bytes")


if __name__ == "__main__":
    main()
