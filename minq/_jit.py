"""The one Numba shim every kernel in minq goes through.

    from minq._jit import njit, prange

    @njit
    def _kernel(x): ...

- With Numba installed, ``njit`` is ``numba.njit(cache=True, nogil=True)``.
- With ``NUMBA_DISABLE_JIT=1`` or without Numba, ``njit`` returns the plain Python function, so
  every kernel can be stepped through in a debugger and measured by coverage.
- ``py_func(f)`` gives the pure-Python body of a kernel either way.

Caching caveat (numba "Notes on Caching"): ``cache=True`` does not notice edits to jitted helpers
that live in *another* file, so a kernel may keep running a stale copy of a helper. minq keeps every
jitted helper in the same module as its callers; if you move one, clear ``__pycache__``.
"""

from __future__ import annotations

import os

__all__ = ["HAVE_NUMBA", "JIT_ENABLED", "njit", "prange", "py_func"]

try:  # pragma: no cover - depends on the environment
    import numba as _numba

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover
    _numba = None
    HAVE_NUMBA = False

JIT_ENABLED = HAVE_NUMBA and os.environ.get("NUMBA_DISABLE_JIT", "0") not in ("1", "true", "True")


def njit(fn=None, *, parallel: bool = False, float_division: bool = False, fastmath: bool = False):
    """Compile ``fn`` with Numba (nopython, cached) or return it unchanged when JIT is off.

    ``float_division=True``: division follows NumPy (x / 0 is inf or nan) instead of raising
    ZeroDivisionError; without the check per division, a loop that divides can be vectorised.
    ``fastmath=True``: float sums may be reassociated (and a * b + c fused), so a float reduction loop
    vectorises; its rounding then differs from a sequential sum (NaN and Inf keep their meaning).
    """

    def wrap(f):
        if not JIT_ENABLED:
            return f
        return _numba.njit(cache=True, nogil=True, parallel=parallel,
                           error_model="numpy" if float_division else "python",
                           fastmath={"reassoc", "contract"} if fastmath else False)(f)

    return wrap(fn) if fn is not None else wrap


if JIT_ENABLED:
    prange = _numba.prange
else:
    prange = range


def py_func(f):
    """The pure-Python function behind a kernel (the kernel itself when JIT is off)."""
    return getattr(f, "py_func", f)
