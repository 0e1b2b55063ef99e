"""Input validation shared by every public function.

Bad input gets a clear error that names the parameter, never silent garbage:
TypeError for a wrong type or dtype, ValueError for a wrong value (NaN/Inf, empty, shape, range).
Works on NumPy arrays and torch tensors alike.
"""

from __future__ import annotations

import numpy as np

from minq._backend import is_torch

_FLOAT_DTYPES = (np.float16, np.float32, np.float64)


def _np_dtype(x):
    """NumPy dtype of an array, or of a torch tensor (bfloat16 maps to float32 for the checks)."""
    if is_torch(x):
        import torch

        return {
            torch.float16: np.dtype(np.float16),
            torch.bfloat16: np.dtype(np.float32),
            torch.float32: np.dtype(np.float32),
            torch.float64: np.dtype(np.float64),
        }.get(x.dtype, None)
    return x.dtype


def check_float_array(x, name: str, *, finite: bool = True, ndim: int | None = None, allow_empty=False):
    """Check that ``x`` is a real floating-point array (NumPy or torch) and return it.

    Raises TypeError (not an array, or not a float dtype) or ValueError (empty, wrong ndim,
    NaN/Inf when ``finite``), each naming ``name``.
    """
    if not (isinstance(x, np.ndarray) or is_torch(x)):
        raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}")
    dt = _np_dtype(x)
    if dt is None or dt.type not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must have a floating-point dtype (float16/32/64), got {x.dtype}")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(x.shape)}")
    if not allow_empty and _numel(x) == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)})")
    if finite and not _all_finite(x):
        raise ValueError(f"{name} contains NaN or Inf")
    return x


def check_uint_array(q, name: str, *, allow_empty=False):
    """Check that ``q`` holds unsigned integer codes (NumPy uint8/16/32 or torch uint8)."""
    if is_torch(q):
        import torch

        ok = q.dtype in (torch.uint8, torch.int16, torch.int32, torch.int64)
    elif isinstance(q, np.ndarray):
        ok = q.dtype.kind == "u"
    else:
        raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(q).__name__}")
    if not ok:
        raise TypeError(f"{name} must have an unsigned integer dtype, got {q.dtype}")
    if not allow_empty and _numel(q) == 0:
        raise ValueError(f"{name} is empty (shape {tuple(q.shape)})")
    if is_torch(q) and _numel(q) and bool((q < 0).any()):  # torch lacks uint16/32: signed codes allowed if >= 0
        raise ValueError(f"{name} has negative codes")
    return q


def check_bits(bits, name: str = "bits", lo: int = 1, hi: int = 8) -> int:
    """Check that ``bits`` is an integer in [lo, hi]."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(bits).__name__}")
    if not lo <= int(bits) <= hi:
        raise ValueError(f"{name} must be in {lo}..{hi}, got {bits}")
    return int(bits)


def check_choice(value, name: str, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {sorted(choices)}, got {value!r}")
    return value


def _numel(x) -> int:
    return int(x.numel()) if is_torch(x) else int(x.size)


def _all_finite(x) -> bool:
    if is_torch(x):
        import torch

        return bool(torch.isfinite(x).all())
    return bool(np.isfinite(x).all())


def check_hooks(hooks, linear_names):
    """Calibration hooks of a minq model: None, or ``{linear name: fn(name, X)}`` naming known linears.

    Raises TypeError (not a dict, a value not callable) or ValueError (unknown names), naming ``hooks``.
    """
    if hooks is None:
        return None
    if not isinstance(hooks, dict):
        raise TypeError(f"hooks must be a dict {{linear name: fn(name, X)}}, got {type(hooks).__name__}")
    unknown = sorted(set(hooks) - set(linear_names))
    if unknown:
        raise ValueError(f"hooks name unknown linears {unknown[:5]}; see model.linear_names()")
    for name, fn in hooks.items():
        if not callable(fn):
            raise TypeError(f"hooks[{name!r}] must be callable fn(name, X), got {type(fn).__name__}")
    return hooks
