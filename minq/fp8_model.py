"""Chapter 10 — FP8 on a model: FP8 weights (weight-only) and FP8 W8A8 (FP8 weights *and* FP8 linear inputs).

Weight-only: every linear's ``W [out, in]`` becomes an ``FP8Weight`` (``minq.fp8.quantize``, E4M3 or
E5M2, one scale per output channel or per 128x128 block) and the runtime decodes it
(the quantized-weight protocol: ``dequantize``, ``shape``, ``nbytes``, ``bits_per_weight``).

W8A8: the inputs ``X [tokens, in]`` of every linear are quantized too, *dynamically*: their scales are
computed from ``X`` at run time, one per token (``act="row"``, what vLLM / torchao call per-token
dynamic FP8) or one per 1x128 tile (``act="block"``, DeepSeek-V3's recipe with 128x128 weight blocks).
The runtime computes ``X_hat @ W_hat^T`` in float32 — ``FP8Activations`` is a runtime hook that
replaces ``X`` by ``X_hat`` (``minq.w8a8.ActQuantModel``, as chapter 04's int8 activations), and
``minq.fp8.fp8_matmul`` is the FP8 GEMM it stands for: tests/test_fp8.py proves the two equal within
float32 summation order on real layers.

Schemes (``minq report``): ``fp8-{e4m3|e5m2}[-tensor|-block][-w8a8]`` —

    fp8-e4m3            E4M3 weights, one scale per output channel (weight-only)
    fp8-e4m3-tensor     one scale for the whole weight
    fp8-e4m3-block      128x128 blocks
    fp8-e5m2            E5M2 weights per channel (one mantissa bit fewer: range the weights do not need)
    fp8-e4m3-w8a8       per-channel weights, per-token dynamic activations
    fp8-e4m3-block-w8a8 128x128 weight blocks, 1x128 activation tiles (DeepSeek-V3)

Notebook: notebooks/10_fp8_and_block_formats.ipynb.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from minq import fp8
from minq._checks import _all_finite, check_choice, check_int
from minq.models.weights import TensorWeight
from minq.registry import Scheme, quantize_linears, register_family
from minq.w8a8 import ActQuantModel

__all__ = ["FP8Weight", "FP8Activations", "quantize_fp8", "quantize_fp8_w8a8"]


@dataclass
class FP8Weight(TensorWeight):
    """A weight ``W [out, in]`` as an ``FP8Tensor`` (the quantized-weight protocol)."""

    q: fp8.FP8Tensor

    @classmethod
    def quantize(cls, W, fmt: str = "e4m3", granularity: str = "row", *, block=None) -> FP8Weight:
        if getattr(W, "ndim", None) != 2:
            raise ValueError(f"W must be a 2-D weight [out, in], got shape {getattr(W, 'shape', None)}")
        return cls(fp8.quantize(W, fmt, granularity, block=block))


class FP8Activations:
    """Dynamic FP8 quantizer of linear inputs ``X [tokens, in]``, and a runtime hook ``fn(name, X)``.

    granularity: ``"row"`` (one scale per token), ``"block"`` (1 x ``tile`` tiles along ``in``) or
    ``"tensor"`` (one scale per call). The hook returns ``X_hat`` and remembers the last input, so the
    linears that read the same ``X`` (q/k/v, gate/up) share one quantization.
    """

    def __init__(self, fmt: str = "e4m3", granularity: str = "row", *, tile: int = 128):
        fp8.encode(np.zeros(1, np.float32), fmt)                       # checks fmt
        self.fmt = fmt
        self.granularity = check_choice(granularity, "granularity", fp8.GRANULARITIES)
        self.block = (1, check_int(tile, "tile", lo=1)) if granularity == "block" else None
        self._x = self._x_hat = None

    def __repr__(self):
        return f"FP8Activations({self.fmt!r}, {self.granularity!r}{f', tile={self.block[1]}' if self.block else ''})"

    def quantize(self, X) -> fp8.FP8Tensor:
        """``X [tokens, in]`` as an ``FP8Tensor`` (NaN / Inf in X: ValueError)."""
        if not _all_finite(X):
            raise ValueError("X contains NaN or Inf (an activation overflowed float32?): no FP8 scale can hold it")
        return fp8.quantize(X, self.fmt, self.granularity, block=self.block)

    def __call__(self, name, X):
        if X is not self._x:
            self._x, self._x_hat = X, self.quantize(X).dequantize()
        return self._x_hat


def quantize_fp8(model, fmt: str = "e4m3", granularity: str = "row", *, block=None, progress: bool = False):
    """Every linear as an ``FP8Weight`` (weight-only FP8)."""
    return quantize_linears(model, lambda W: FP8Weight.quantize(W, fmt, granularity, block=block),
                            desc=f"fp8 {fmt}", progress=progress)


def quantize_fp8_w8a8(model, fmt: str = "e4m3", *, weights: str = "row", block=None, act: str = "row",
                      tile: int = 128, progress: bool = False) -> ActQuantModel:
    """FP8 weights (``weights`` granularity) and dynamic FP8 inputs (``act``: "row" per token, "block"
    1 x ``tile``) for every linear; one stateless-per-call quantizer object for all linears."""
    q = FP8Activations(fmt, act, tile=tile)
    return ActQuantModel(quantize_fp8(model, fmt, weights, block=block, progress=progress),
                         {n: q for n in model.linear_names()})


def _scheme(m: re.Match) -> Scheme:
    fmt, gran, w8a8 = m["fmt"], m["gran"] or "row", m["w8a8"] is not None
    where = {"row": "one scale per output channel", "tensor": "one scale per tensor",
             "block": "128x128 blocks"}[gran]
    if not w8a8:
        return Scheme(m.string, f"FP8 {fmt.upper()} weights, {where} (weight-only)",
                      quantize_weight=lambda W: FP8Weight.quantize(W, fmt, gran))
    act = "block" if gran == "block" else "row"
    desc = (f"FP8 {fmt.upper()} W8A8: weights {where}, activations dynamic "
            f"{'per 1x128 tile' if act == 'block' else 'per token'} (FP8 GEMM simulated in float32)")

    def quantize_model(model, calibration, progress=True):
        return quantize_fp8_w8a8(model, fmt, weights=gran, act=act, progress=progress)

    return Scheme(m.string, desc, quantize_model=quantize_model)


register_family("fp8", r"fp8-(?P<fmt>e4m3|e5m2)(?:-(?P<gran>tensor|block))?(?P<w8a8>-w8a8)?", _scheme,
                "fp8-{e4m3|e5m2}[-tensor|-block][-w8a8]",
                defaults=("fp8-e4m3", "fp8-e4m3-block", "fp8-e5m2", "fp8-e4m3-w8a8", "fp8-e4m3-block-w8a8"),
                quick=())
