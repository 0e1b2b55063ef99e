"""Weights as the models hold them: the quantized-weight protocol, float32 weights, row-stacking.

Every linear ``W [out, in]`` of a minq model is an object of the quantized-weight protocol (README.md,
"Conventions"): anything with ``dequantize() -> float32 [out, in]``, ``shape``, ``nbytes`` and
``bits_per_weight``. RTN, GPTQ and AWQ give grouped affine containers, the GGUF chapter ggml blocks;
``DenseWeight`` is the float32 one (32 bits per weight). A model dequantizes each weight once, when
it is built (``_dense_of`` checks the protocol and the shape), and stacks the rows of the linears that
read one input (``_stack_rows``: ``[Wq; Wk; Wv]`` of a Llama block is one GEMM).
"""

from __future__ import annotations

import numpy as np

__all__ = ["DenseWeight", "TensorWeight"]


class DenseWeight:
    """A float32 weight ``W [out, in]`` in the quantized-weight protocol (32 bits per weight).

    ``dequantize()`` returns the stored array itself (read-only), not a copy. ``copy=False`` stores a
    read-only view of a float32 C-contiguous ``W`` instead of a copy (``from_gguf`` uses it so that the
    weights are views of the row-stacked arrays the forward multiplies with, held once in memory).
    """

    def __init__(self, W, *, copy: bool = True):
        if copy:
            W = np.array(W, dtype=np.float32, order="C")  # own copy: freezing it touches no caller array
        elif not (isinstance(W, np.ndarray) and W.dtype == np.float32 and W.flags.c_contiguous):
            raise ValueError("DenseWeight(W, copy=False) needs a float32 C-contiguous array W")
        else:
            W = W.view()                                   # freezing the view leaves W itself alone
        if W.ndim != 2:
            raise ValueError(f"W must be 2-D [out, in], got shape {W.shape}")
        W.setflags(write=False)
        self.W = W

    def dequantize(self):
        return self.W

    @property
    def shape(self):
        return self.W.shape

    @property
    def nbytes(self) -> int:
        return int(self.W.nbytes)

    @property
    def bits_per_weight(self) -> float:
        return 32.0

    def __repr__(self):
        return f"DenseWeight(shape={self.W.shape})"


class TensorWeight:
    """The quantized-weight protocol for a weight ``W [out, in]`` held as one quantized tensor ``self.q``
    (anything with ``shape``, ``dequantize()`` and ``nbytes``: ``minq.fp8.FP8Tensor``, ``minq.mx.MXTensor``,
    ...). Subclasses are dataclasses with the field ``q`` and a ``quantize`` classmethod."""

    @property
    def shape(self) -> tuple:
        return tuple(self.q.shape)

    def dequantize(self):
        return self.q.dequantize()

    @property
    def nbytes(self) -> int:
        return self.q.nbytes

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.nbytes / (self.shape[0] * self.shape[1])


def _stack_rows(arrays):
    """``[W_1; W_2; ...]``, the float32 ``W_i [out_i, in]`` stacked along the rows — without a copy when
    they already are consecutive row blocks of one C-contiguous array (as ``from_gguf`` builds them)."""
    if len(arrays) == 1:
        return arrays[0]
    base, ptr = arrays[0].base, (lambda a: a.__array_interface__["data"][0])
    if (isinstance(base, np.ndarray) and base.dtype == np.float32 and base.flags.c_contiguous
            and base.shape == (sum(len(a) for a in arrays), arrays[0].shape[1]) and ptr(arrays[0]) == ptr(base)
            and all(b.base is base and ptr(b) == ptr(a) + a.nbytes for a, b in zip(arrays, arrays[1:]))):
        return base
    return np.concatenate(arrays)


def _dense_of(w, name, shape):
    """The float32 ``[out, in]`` array of weight object ``w``, checked against the expected shape."""
    for attr in ("dequantize", "shape", "nbytes", "bits_per_weight"):
        if not hasattr(w, attr):
            raise TypeError(f"weight {name!r} ({type(w).__name__}) lacks {attr!r} of the quantized-weight protocol")
    if tuple(w.shape) != shape:
        raise ValueError(f"weight {name!r} has shape {tuple(w.shape)}, expected {shape}")
    W = w.dequantize()
    if hasattr(W, "detach"):  # a torch tensor from the torch path
        W = W.detach().cpu().numpy()
    W = np.ascontiguousarray(W, dtype=np.float32)
    if W.shape != shape:
        raise ValueError(f"weight {name!r}.dequantize() returned shape {W.shape}, expected {shape}")
    if not np.isfinite(W).all():                  # a NaN weight would turn every output into NaN, silently
        raise ValueError(f"weight {name!r} has NaN or Inf values")
    return W


def check_weight_names(weights: dict, names: list, *, new: bool = False) -> dict:
    """``weights`` checked against a model's linear ``names``: exactly those (a model's own weights), or
    (``new=True``, a ``with_weights`` swap) a subset of them. ValueError naming what is missing or unknown."""
    unknown = sorted(set(weights) - set(names))
    if new and unknown:
        raise ValueError(f"unknown weight names {unknown[:5]}; see model.linear_names()")
    if not new and set(weights) != set(names):
        raise ValueError(f"weights must hold exactly the linears {names[:7]}...; missing "
                         f"{sorted(set(names) - set(weights))[:5]}, unknown {unknown[:5]}")
    return dict(weights)
