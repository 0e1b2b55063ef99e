"""Input validation shared by every public function.

Bad input gets a clear error that names the parameter, never silent garbage:
TypeError for a wrong type or dtype, ValueError for a wrong value (NaN/Inf, empty, shape, range).
Works on NumPy arrays and torch tensors alike. Also here, because every integer method needs them:
``check_int`` (one integer check), ``check_group_size`` (the ``group_size`` descriptor of README.md,
"Conventions") and ``ragged_layout`` (how a ragged last group is stored).
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


def is_int(value) -> bool:
    """A Python or NumPy integer, not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_int(value, name: str, lo: int | None = None, hi: int | None = None) -> int:
    """Check that ``value`` is an integer (not a bool) in ``[lo, hi]`` (either bound may be None); returns
    it as an ``int``. TypeError for a non-integer, ValueError outside the bounds, each naming ``name``."""
    if not is_int(value):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        want = f">= {lo}" if hi is None else f"<= {hi}" if lo is None else f"in {lo}..{hi}"
        raise ValueError(f"{name} must be {want}, got {value}")
    return int(value)


def check_bits(bits, name: str = "bits", lo: int = 1, hi: int = 8) -> int:
    """Check that ``bits`` is an integer in [lo, hi]."""
    return check_int(bits, name, lo, hi)


def check_group_size(group_size, n_in: int, *, ragged: bool = False) -> int:
    """The group width ``g`` of minq's granularity descriptor ``group_size`` for ``n_in`` inputs.

    ``None`` or 0: per tensor, -1: per channel (row) — both give ``g = n_in``; ``g > 0``: groups of ``g``
    inputs, which must divide ``n_in``, or (``ragged=True``) be at most ``n_in``, the last group holding
    the ``n_in mod g`` inputs that remain (stored as ``ragged_layout`` says). Raises ValueError naming
    ``group_size`` for anything else (a bool, a float, a string, -2, ...).
    """
    if group_size is not None and (not is_int(group_size) or group_size < -1):
        raise ValueError(f"group_size must be None/0 (per tensor), -1 (per channel) or > 0, got {group_size!r}")
    if group_size is None or group_size in (0, -1):
        return int(n_in)
    if ragged and group_size > n_in:
        raise ValueError(f"group_size={group_size} is larger than the input dimension {n_in}")
    if not ragged and n_in % group_size:
        raise ValueError(f"group_size={group_size} does not divide the input dimension {n_in} "
                         f"(a ragged last group only where asked for: ragged=True)")
    return int(group_size)


def ragged_layout(g: int, n_in: int) -> tuple[int, list[int]]:
    """How groups of ``g`` inputs (the last one ragged: ``n_in mod g``) are stored: ``(gs, reps)``.

    The grouped container keeps one width for all groups, ``gs = gcd(g, n_in)``; group ``j`` of the
    ragged layout spans ``reps[j]`` stored groups of that width, each holding a copy of the group's
    parameters (``[g // gs] * (n_in // g)``, then ``(n_in mod g) // gs``). SmolLM2's 576 inputs in groups
    of 128: ``gs = 64``, ``reps = [2, 2, 2, 2, 1]``. A ``g`` that divides ``n_in`` gives ``(g, [1, ...])``.
    """
    from math import gcd

    gs = gcd(g, n_in)
    k, tail = divmod(n_in, g)
    return gs, [g // gs] * k + ([tail // gs] if tail else [])


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
