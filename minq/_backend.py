"""One array namespace for the NumPy and the torch paths, so that one readable reference loop runs on both.

    xp = namespace(x)              # NUMPY for a NumPy array, a TorchNamespace for a torch tensor
    s = xp.amax(abs(xp.f32(x)), axes)
    q = xp.to_uint8(xp.clip(xp.rint(x / s) + z, 0, qmax))

Only what the two libraries spell differently lives here (dtype casts, keep-dims reductions, clip with
an open side, round half to even, concatenate/repeat along an axis, bit reinterpretation, byte
counts, the random source); arithmetic operators, ``abs``, slicing and reshapes are the same in both
and are written directly. Each method returns an array of the input's library (and torch device).
Torch is optional (``pip install "minq[torch]"``) and imported only when a torch tensor arrives.
"""

from __future__ import annotations

import sys

import numpy as np

__all__ = ["is_torch", "require_torch", "namespace", "NUMPY"]


def is_torch(x) -> bool:
    """True when ``x`` is a torch tensor (without importing torch when it was never imported)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def require_torch():
    """Import torch or raise an ImportError that says how to install it."""
    try:
        import torch
    except ImportError as e:  # pragma: no cover - torch is in the dev install
        raise ImportError('this needs torch: pip install "minq[torch]"') from e
    return torch


class NumpyNamespace:
    """The namespace of NumPy arrays."""

    name = "numpy"
    where = staticmethod(np.where)
    rint = staticmethod(np.rint)                 # round half to even
    floor = staticmethod(np.floor)
    isnan = staticmethod(np.isnan)
    isinf = staticmethod(np.isinf)
    maximum = staticmethod(np.maximum)
    minimum = staticmethod(np.minimum)

    @staticmethod
    def f32(a):
        return np.asarray(a, dtype=np.float32)

    @staticmethod
    def int64(a):
        return np.asarray(a).astype(np.int64)

    @staticmethod
    def to_uint8(a):
        return np.asarray(a).astype(np.uint8)

    @staticmethod
    def amax(a, axes):
        """Maximum over ``axes`` (None: all), the reduced axes kept with size 1."""
        return np.max(a, axis=axes, keepdims=True)

    @staticmethod
    def amin(a, axes):
        return np.min(a, axis=axes, keepdims=True)

    @staticmethod
    def clip(a, lo, hi):
        """``min(max(a, lo), hi)``; ``lo`` or ``hi`` may be None (that side open)."""
        return np.clip(a, lo, hi)

    @staticmethod
    def cat(parts, axis):
        return np.concatenate(parts, axis=axis)

    @staticmethod
    def repeat(a, reps, axis):
        """Slice ``j`` along ``axis`` repeated ``reps[j]`` times."""
        return np.repeat(a, reps, axis=axis)

    @staticmethod
    def full(shape, value, like):
        """A float32 array of ``shape`` filled with ``value``."""
        return np.full(shape, value, np.float32)

    @staticmethod
    def arange(n, like):
        """``0 .. n-1`` as int64."""
        return np.arange(n, dtype=np.int64)

    @staticmethod
    def pad_last(a, n):
        """``a`` with ``n`` zeros appended along its last axis."""
        return np.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, n)])

    @staticmethod
    def float32_bits(x):
        """The bit patterns of ``x`` as float32, as int64 in ``0 .. 2^32 - 1``."""
        return np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.int64)

    @staticmethod
    def bits_float32(bits):
        """int64 bit patterns ``0 .. 2^32 - 1`` -> the float32 numbers they encode."""
        return bits.astype(np.uint32).view(np.float32)

    @staticmethod
    def next_down(a):
        """The next float32 towards zero of each positive ``a``."""
        return np.nextafter(a, np.float32(0))

    @staticmethod
    def float16_up(s):
        """``s >= 0`` (float32) rounded *up* to float16: the smallest float16 >= s, as float16."""
        s16 = s.astype(np.float16)
        return np.where(s16.astype(np.float32) < s, np.nextafter(s16, np.float16(np.inf)), s16)

    @staticmethod
    def uniform(shape, rng, like):
        """U[0, 1) float32 of ``shape`` from ``rng``, a ``numpy.random.Generator``."""
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy.random.Generator for NumPy input, got {type(rng).__name__}")
        return rng.random(shape, dtype=np.float32)

    @staticmethod
    def empty(shape, dtype: str, like):
        """An uninitialised array of ``shape`` and ``dtype`` (a name: "float32", "uint8", ...)."""
        return np.empty(shape, dtype)

    @staticmethod
    def asarray(a, like):
        """``a`` (a NumPy array) as an array of ``like``'s library (and device)."""
        return np.asarray(a)

    @staticmethod
    def copy(a):
        return a.copy()

    @staticmethod
    def f64(a):
        return np.asarray(a, dtype=np.float64)

    outer = staticmethod(np.outer)

    @staticmethod
    def to_numpy(a):
        return np.asarray(a)

    @staticmethod
    def nbytes(a) -> int:
        return int(a.nbytes)

    @staticmethod
    def itemsize(a) -> int:
        return int(a.itemsize)

    @staticmethod
    def size(a) -> int:
        return int(a.size)


class TorchNamespace:
    """The namespace of torch tensors (results on the input's device)."""

    name = "torch"

    def __init__(self):
        import torch

        self.t = torch
        self.where, self.floor, self.isnan, self.isinf = torch.where, torch.floor, torch.isnan, torch.isinf

    def rint(self, a):
        return self.t.round(a)                   # round half to even, like np.rint

    def f32(self, a):
        return a.to(self.t.float32)

    def int64(self, a):
        return a.to(self.t.int64)

    def to_uint8(self, a):
        return a.to(self.t.uint8)

    def amax(self, a, axes):
        return self.t.amax(a, dim=tuple(range(a.ndim)) if axes is None else axes, keepdim=True)

    def amin(self, a, axes):
        return self.t.amin(a, dim=tuple(range(a.ndim)) if axes is None else axes, keepdim=True)

    def maximum(self, a, b):
        return self.t.maximum(a, self.t.as_tensor(b, dtype=a.dtype, device=a.device))

    def minimum(self, a, b):
        return self.t.minimum(a, self.t.as_tensor(b, dtype=a.dtype, device=a.device))

    def clip(self, a, lo, hi):
        return self.t.clamp(a, min=lo, max=hi)

    def cat(self, parts, axis):
        return self.t.cat(parts, dim=axis)

    def repeat(self, a, reps, axis):
        return self.t.repeat_interleave(a, self.t.as_tensor(reps, device=a.device), dim=axis)

    def full(self, shape, value, like):
        return self.t.full(tuple(shape), value, dtype=self.t.float32, device=like.device)

    def arange(self, n, like):
        return self.t.arange(n, device=like.device, dtype=self.t.int64)

    def pad_last(self, a, n):
        return self.t.nn.functional.pad(a, (0, n))

    def float32_bits(self, x):
        return x.detach().to(self.t.float32).contiguous().view(self.t.int32).to(self.t.int64) & 0xFFFFFFFF

    def bits_float32(self, bits):
        # int64 0 .. 2^32-1 -> the same 32 bits as int32 (two's complement), then reinterpret
        return self.t.where(bits >= 2**31, bits - 2**32, bits).to(self.t.int32).view(self.t.float32)

    def next_down(self, a):
        return self.t.nextafter(a, self.t.zeros_like(a))

    def float16_up(self, s):
        s16 = s.to(self.t.float16)
        up = (s16.view(self.t.int16) + 1).view(self.t.float16)   # s16 >= 0: the next bit pattern is larger
        return self.t.where(s16.float() < s, up, s16)

    def uniform(self, shape, rng, like):
        if not isinstance(rng, self.t.Generator):
            raise TypeError(f"rng must be a torch.Generator for torch input, got {type(rng).__name__}")
        return self.t.rand(shape, generator=rng, device=rng.device).to(like.device)

    def empty(self, shape, dtype: str, like):
        return self.t.empty(tuple(shape), dtype=getattr(self.t, dtype), device=like.device)

    def asarray(self, a, like):
        return self.t.as_tensor(a, device=like.device)

    def copy(self, a):
        return a.clone()

    def f64(self, a):
        return a.to(self.t.float64)

    def outer(self, a, b):
        return self.t.outer(a, b)

    def to_numpy(self, a):
        return a.detach().cpu().numpy()

    def nbytes(self, a) -> int:
        return int(a.numel() * a.element_size())

    def itemsize(self, a) -> int:
        return int(a.element_size())

    def size(self, a) -> int:
        return int(a.numel())


NUMPY = NumpyNamespace()
_TORCH = []


def namespace(x):
    """The array namespace of ``x``: ``NUMPY`` for NumPy arrays (and scalars), the torch one for tensors."""
    if not is_torch(x):
        return NUMPY
    if not _TORCH:
        _TORCH.append(TorchNamespace())
    return _TORCH[0]
