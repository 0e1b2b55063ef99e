"""Chapter 10 — MX and NVFP4 weights on a model: ``MXWeight`` and the ``mxfp*`` / ``nvfp4`` schemes.

Every linear's ``W [out, in]`` becomes an ``MXTensor`` (``minq.mx.quantize``: OCP MX, blocks of 32 along
the input axis with an E8M0 scale) or an ``NVFP4Tensor`` (``minq.mx.quantize_nvfp4``: blocks of 16, E4M3
scales, a float32 tensor scale), held in the quantized-weight protocol (``minq.models.weights.TensorWeight``).

    mxfp8, mxfp8-e5m2, mxfp6, mxfp6-e3m2, mxfp4     OCP MX, FLOOR scale rule; -rceil / -ceil / -even for the others
    nvfp4, nvfp4-1l                                 NVFP4 two-level (tensor scale) or one-level

Notebook: notebooks/10_fp8_and_block_formats.ipynb.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from minq.models.weights import TensorWeight
from minq.mx import quantize, quantize_nvfp4
from minq.registry import Scheme, register_family

__all__ = ["MXWeight"]


@dataclass
class MXWeight(TensorWeight):
    """A weight ``W [out, in]`` in an MX format or NVFP4, blocks along the input axis."""

    q: object                                      # MXTensor | NVFP4Tensor

    @classmethod
    def quantize(cls, W, fmt: str, scale_rule: str = "floor", *, block_size: int | None = None) -> MXWeight:
        if getattr(W, "ndim", None) != 2:
            raise ValueError(f"W must be a 2-D weight [out, in], got shape {getattr(W, 'shape', None)}")
        if fmt == "nvfp4":
            return cls(quantize_nvfp4(W, two_level=scale_rule != "one-level"))
        return cls(quantize(W, fmt, block_size=block_size, scale_rule=scale_rule))


_SCHEME_FMT = {"mxfp8": "mxfp8_e4m3", "mxfp8-e5m2": "mxfp8_e5m2", "mxfp6": "mxfp6_e2m3",
               "mxfp6-e3m2": "mxfp6_e3m2", "mxfp4": "mxfp4"}


def _scheme(m: re.Match) -> Scheme:
    if m["nv"]:
        rule = "one-level" if m["one"] else "two-level"
        desc = f"NVFP4: E2M1, blocks of 16 with an E4M3 scale, {rule} (torchao nvfp4_quantize)"
        return Scheme(m.string, desc, quantize_weight=lambda W: MXWeight.quantize(W, "nvfp4", rule))
    fmt, rule = _SCHEME_FMT[m["mx"]], m["rule"] or "floor"
    desc = f"OCP {fmt.upper()}: blocks of 32 with an E8M0 scale, {rule.upper()} scale rule"
    return Scheme(m.string, desc, quantize_weight=lambda W: MXWeight.quantize(W, fmt, rule))


register_family("mx", r"(?P<mx>mxfp8(?:-e5m2)?|mxfp6(?:-e3m2)?|mxfp4)(?:-(?P<rule>rceil|ceil|even))?"
                r"|(?P<nv>nvfp4)(?P<one>-1l)?", _scheme, "mxfp{8,6,4}[-e5m2|-e3m2][-rceil|-ceil|-even] | nvfp4[-1l]",
                defaults=("mxfp8", "mxfp6", "mxfp4", "nvfp4"), quick=())
