"""Checking helpers shared by minq's tests and by the notebook exercises.

- ``assert_equal`` / ``assert_close`` / ``assert_bound``: assertions whose failure message prints the
  shapes, the number of mismatches, the max difference and the first mismatching positions
  (llm.c's ``check_tensor`` style), so a failing test says *where* and *by how much*.
- Hypothesis strategies (``floats32``, ``float_arrays``, ``weight_matrices``, ``bits``) used by
  ``tests/`` and by ``check`` alike: there is one test suite, not two.
- ``check(fn, reference, ...)``: the exercise checker. It runs your function and the reference on
  many generated inputs and prints one line ``exact | allclose | maxdiff | shape ok``; on failure it
  raises with the (shrunk) counterexample, target vs yours. A stub (``raise NotImplementedError``)
  returns False with a one-line note; ``forbid=`` refuses answers that call the function under test.
  The chapters' exercises (``minq.exercises``) are built on it.

Hypothesis is imported lazily: ``import minq.testing`` works without it, the strategies need it
(it comes with ``minq[notebooks]`` and ``minq[dev]``).
"""

from __future__ import annotations

import contextlib
import sys

import numpy as np

from minq._backend import is_torch

__all__ = [
    "assert_equal", "assert_close", "assert_bound", "check", "library_functions",
    "floats32", "float_arrays", "weight_matrices", "bits", "llm_like_layer", "rel_output_error",
]


def _to_numpy(a):
    if is_torch(a):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def _report(actual, expected, bad, name, extra=""):
    idx = np.argwhere(bad)
    lines = [f"{name or 'arrays'}: {int(bad.sum())} of {bad.size} elements differ{extra}"]
    for i in idx[:5]:
        i = tuple(int(v) for v in i)
        lines.append(f"  at {i}: actual {actual[i]!r}, expected {expected[i]!r}")
    if len(idx) > 5:
        lines.append(f"  ... and {len(idx) - 5} more")
    return "\n".join(lines)


def _same_shape(actual, expected, name):
    if actual.shape != expected.shape:
        raise AssertionError(f"{name or 'arrays'}: shape {actual.shape} != expected {expected.shape}")


def assert_equal(actual, expected, *, name: str = "") -> None:
    """Exact equality. Floats are compared by value with NaN == NaN and +0 != -0 (bit-faithful
    for every non-NaN value); integers by value."""
    a, e = _to_numpy(actual), _to_numpy(expected)
    _same_shape(a, e, name)
    if a.dtype.kind == "f" or e.dtype.kind == "f":
        af, ef = a.astype(np.float64), e.astype(np.float64)
        both_nan = np.isnan(af) & np.isnan(ef)
        bad = ~both_nan & ((af != ef) | (np.signbit(af) != np.signbit(ef)))
    else:
        bad = a != e
    if bad.any():
        diff = np.abs(a.astype(np.float64) - e.astype(np.float64))
        maxdiff = np.nanmax(np.where(bad, diff, 0.0))
        raise AssertionError(_report(a, e, bad, name, f", maxdiff = {maxdiff:.6g}"))


def assert_close(actual, expected, *, atol: float = 0.0, rtol: float = 0.0, name: str = "") -> None:
    """``|actual - expected| <= atol + rtol * |expected|`` everywhere (NaN only matches NaN)."""
    a, e = _to_numpy(actual).astype(np.float64), _to_numpy(expected).astype(np.float64)
    _same_shape(a, e, name)
    diff = np.abs(a - e)
    both_nan = np.isnan(a) & np.isnan(e)
    bad = ~both_nan & ~(diff <= atol + rtol * np.abs(e))
    if bad.any():
        maxdiff = np.nanmax(np.where(both_nan, 0.0, diff))
        raise AssertionError(_report(a, e, bad, name, f", maxdiff = {maxdiff:.6g} (atol={atol}, rtol={rtol})"))


def assert_bound(err, bound, *, name: str = "error") -> None:
    """``err <= bound`` elementwise (``bound`` broadcasts); the message shows the worst violations."""
    err, bound = _to_numpy(err).astype(np.float64), _to_numpy(bound).astype(np.float64)
    bound = np.broadcast_to(bound, err.shape)
    bad = ~(err <= bound)
    if bad.any():
        worst = np.nanmax(np.where(bad, err - bound, -np.inf))
        raise AssertionError(_report(err, bound, bad, name, f", worst excess = {worst:.6g}"))


# --- hypothesis strategies -----------------------------------------------------------------------------


def _st():
    try:
        from hypothesis import strategies as st
    except ImportError as e:  # pragma: no cover
        raise ImportError('the strategies need hypothesis: pip install "minq[notebooks]"') from e
    return st


def floats32(max_abs: float = 1e4):
    """Finite float32 scalars in [-max_abs, max_abs], subnormals included."""
    return _st().floats(-max_abs, max_abs, width=32, allow_nan=False, allow_infinity=False)


def float_arrays(shape=None, *, max_abs: float = 1e4, max_side: int = 16, dims=(1, 2)):
    """float32 arrays of the given shape (or a random one with ``dims`` dimensions and sides up to
    ``max_side``), finite, in ``[-max_abs, max_abs]``. Outliers to stress min-max scales come from
    hypothesis itself (nothing is injected): its arrays mix a fill value with a few drawn elements, and
    its floats favour 0, small values and the bounds, so some 10-20% of the draws hold one or two values
    >= max_abs / 2 over a median <= max_abs / 100 (tests/test_infra.py checks the share)."""
    st = _st()
    from hypothesis.extra import numpy as hnp

    shapes = st.just(tuple(shape)) if shape is not None else hnp.array_shapes(
        min_dims=dims[0], max_dims=dims[-1], min_side=1, max_side=max_side)
    return hnp.arrays(np.float32, shapes, elements=floats32(max_abs))


def weight_matrices(*, max_rows: int = 8, max_groups: int = 4, group_sizes=(1, 2, 4, 8, 16, 32)):
    """``(W, g)`` pairs: W float32 ``[out, in]`` with ``in`` a multiple of the group size ``g``,
    drawn like real weights (Gaussian rows with random per-row scale and a few outliers)."""
    st = _st()

    @st.composite
    def draw(draw):
        g = draw(st.sampled_from(group_sizes))
        out = draw(st.integers(1, max_rows))
        n_groups = draw(st.integers(1, max_groups))
        seed = draw(st.integers(0, 2**32 - 1))
        rng = np.random.default_rng(seed)
        W = rng.standard_normal((out, g * n_groups)).astype(np.float32)
        W *= np.exp(rng.uniform(-3, 3, size=(out, 1))).astype(np.float32)
        n_out = draw(st.integers(0, 3))
        if n_out:
            r, c = rng.integers(0, out, n_out), rng.integers(0, g * n_groups, n_out)
            W[r, c] *= np.float32(rng.uniform(5, 50))
        return W, g

    return draw()


def bits(lo: int = 1, hi: int = 8):
    """Bit widths in [lo, hi]."""
    return _st().integers(lo, hi)


# --- the exercise checker ------------------------------------------------------------------------------


class _NotAttempted(BaseException):
    """Raised inside the hypothesis run when the answer is still the stub. A BaseException (not an
    Exception) so that hypothesis does not treat it as a failure to shrink: it stops the run at once."""


class _Refused(AssertionError):
    """What a forbidden function raises while the answer runs."""


class _Abort(BaseException):
    """Carries a refusal out of the hypothesis run at once (no shrinking: every input would fail)."""


def _owner_and_name(f):
    """Where ``f`` is reachable by name in its defining module: ``(owner, attribute)``, where ``owner``
    is the module or, for a method (qualname ``Class.method``), the class; None if it is not there."""
    module = sys.modules.get(getattr(f, "__module__", None) or "")
    path = (getattr(f, "__qualname__", None) or getattr(f, "__name__", "")).split(".")
    if module is None or "<locals>" in path or not path[-1]:
        return None
    owner = module
    for part in path[:-1]:
        owner = getattr(owner, part, None)
        if owner is None:
            return None
    attr = owner.__dict__.get(path[-1]) if hasattr(owner, "__dict__") else None
    return (owner, path[-1]) if attr is f or getattr(attr, "__func__", None) is f else None


def _qualname(f) -> str:
    return f"{getattr(f, '__module__', '?')}.{getattr(f, '__qualname__', getattr(f, '__name__', repr(f)))}"


def library_functions(*paths) -> tuple:
    """The library objects named by the dotted ``paths`` that exist (``"minq.ternary.quantize"``,
    ``"minq.kquants.GGMLWeight.quantize"``), for an exercise's ``forbid=``: a path whose module cannot be
    imported or whose attribute is missing (an optional Numba kernel) is left out."""
    import importlib

    found = []
    for path in paths:
        module, _, name = path.rpartition(".")
        while module:                                          # the longest importable prefix
            try:
                obj = importlib.import_module(module)
                break
            except ImportError:
                module, _, head = module.rpartition(".")
                name = f"{head}.{name}"
        else:
            continue
        for part in name.split("."):
            obj = getattr(obj, part, None)
        if obj is not None:
            found.append(obj)
    return tuple(found)


def _refusal(f):
    """A function that stands in for the forbidden ``f`` while the answer runs."""
    message = f"this exercise asks you to write {_qualname(f)} yourself; the check compares against it"

    def refused(*args, **kwargs):
        raise _Refused(message)

    refused.__name__ = getattr(f, "__name__", "refused")
    refused.__qualname__ = getattr(f, "__qualname__", refused.__name__)
    return refused


@contextlib.contextmanager
def _forbidding(fn, forbid):
    """While the block runs, every name bound to a function of ``forbid`` in ``fn.__globals__`` and the
    attribute of its defining module (or class) raise AssertionError; all are restored afterwards, also
    when the block raises."""
    saved = []                                      # (namespace setter, name, original)
    try:
        for f in forbid:
            refused = _refusal(f)
            namespace = getattr(fn, "__globals__", None)
            if namespace is not None:
                for name, value in list(namespace.items()):
                    if value is f:
                        saved.append((namespace.__setitem__, name, value))
                        namespace[name] = refused
            where = _owner_and_name(f)
            if where is not None:
                owner, name = where
                original = owner.__dict__[name]
                saved.append((lambda n, v, o=owner: setattr(o, n, v), name, original))
                setattr(owner, name, refused)
        yield
    finally:
        for put, name, original in reversed(saved):
            put(name, original)


def check(fn, reference, strategy=None, *, atol: float = 0.0, rtol: float = 0.0, n: int = 50,
          verbose: bool = True, forbid=()) -> bool:
    """Check ``fn`` against ``reference`` on ``n`` inputs drawn from ``strategy``: the exercise checker.

    strategy: a hypothesis strategy producing one argument, or a tuple of arguments (default:
        ``float_arrays()``). Both functions are called as ``f(*args)``.
    atol, rtol: 0 means exact (``assert_equal``); otherwise ``assert_close``.
    forbid: the library functions the exercise asks you to write yourself (function objects). While
        *your* function runs, every name bound to one of them in ``fn.__globals__`` and the attribute
        of its defining module (``sys.modules[f.__module__]``, or the class for a method) is replaced
        by a function that raises AssertionError, so an answer that merely calls the function under
        test fails; all are restored afterwards, also on error. The reference runs unrestricted.

    Prints ``exact | allclose | maxdiff | shape ok`` and returns True, or raises AssertionError with
    the smallest failing input hypothesis found, target vs yours. A stub -- ``fn`` raising
    NotImplementedError on the first input -- prints ``not attempted yet: ...`` and returns False
    without raising, so a notebook of unsolved exercises runs top to bottom.
    """
    from hypothesis import HealthCheck, given, settings

    strategy = float_arrays() if strategy is None else strategy
    forbid = tuple(forbid)
    stats = {"exact": True, "close": True, "maxdiff": 0.0, "shape": True, "count": 0, "calls": 0}
    # an answer that *is* a forbidden function is called through its refusal
    answer = next((_refusal(f) for f in forbid if fn is f or getattr(fn, "__func__", None) is f), fn)
    fn_name = getattr(fn, "__name__", repr(fn))

    def as_args(v):
        return v if isinstance(v, tuple) else (v,)

    @settings(max_examples=n, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck), print_blob=False)
    @given(strategy)
    def run(v):
        args = as_args(v)
        first = stats["calls"] == 0
        stats["calls"] += 1
        with _forbidding(fn, forbid):
            try:
                got = answer(*args)
            except NotImplementedError:
                if first:
                    raise _NotAttempted from None
                raise
            except _Refused as e:
                raise _Abort(e) from None
        got, want = _to_numpy(got), _to_numpy(reference(*args))
        stats["count"] += 1
        if got.shape != want.shape:
            stats["shape"] = False
            raise AssertionError(f"shape {got.shape} != target {want.shape}\ninput: {args!r}")
        d = np.abs(got.astype(np.float64) - want.astype(np.float64))
        d = d[~(np.isnan(d) & np.isnan(want.astype(np.float64)))] if want.dtype.kind == "f" else d
        stats["maxdiff"] = max(stats["maxdiff"], float(np.nanmax(d)) if d.size else 0.0)
        try:
            assert_equal(got, want, name="yours vs target")
        except AssertionError:
            stats["exact"] = False
            if atol == 0 and rtol == 0:
                stats["close"] = False
                raise AssertionError(f"input: {args!r}\ntarget: {want!r}\nyours:  {got!r}") from None
        try:
            assert_close(got, want, atol=atol, rtol=rtol, name="yours vs target")
        except AssertionError as e:
            stats["close"] = False
            raise AssertionError(f"{e}\ninput: {args!r}\ntarget: {want!r}\nyours:  {got!r}") from None

    try:
        run()
    except _NotAttempted:
        if verbose:
            print(f"not attempted yet: {fn_name} raises NotImplementedError (the stub)")
        return False
    except _Abort as abort:
        raise abort.args[0] from None
    finally:
        if verbose and stats["count"]:
            print(f"exact: {stats['exact']} | allclose: {stats['close']} | maxdiff: {stats['maxdiff']:.3g}"
                  f" | shape ok: {stats['shape']} | examples: {stats['count']}")
    if verbose:
        print("Correct!")
    return True


# --- the synthetic layer of the GPTQ/AWQ chapters ------------------------------------------------------


def llm_like_layer(seed: int = 0, n_tokens: int = 5120):
    """``W [1536, 576]`` and ``X [n_tokens, 576]`` float32: a ``Linear(576, 1536)`` with LLM-like inputs.

    The recipe of the runs of the reference code (IST-DASLab/gptq, AutoAWQ) that the chapters compare
    against (notebooks/06_gptq.ipynb section 3, notebooks/07_awq.ipynb section 5),
    drawn in its order from ``np.random.default_rng(seed)``: X mixes its channels (``Z (0.5 I + A)``),
    gives each channel its own scale (``exp(N(0, 1))``), and multiplies 6 channels by 20 (outliers).
    The reference used the first 4096 rows for calibration and the last 1024 as held-out data.
    """
    rng = np.random.default_rng(seed)
    W = (rng.standard_normal((1536, 576)) / np.sqrt(576)).astype(np.float32)
    A = rng.standard_normal((576, 576)) / np.sqrt(576)
    Z = rng.standard_normal((n_tokens, 576))
    X = Z @ (0.5 * np.eye(576) + A)                                        # [tokens, 576]
    X *= np.exp(rng.normal(0, 1, 576))
    X[:, rng.choice(576, 6, replace=False)] *= 20
    return W, X.astype(np.float32)


def rel_output_error(W, W_hat, X) -> float:
    """``||(W - W_hat) X^T||_F^2 / ||W X^T||_F^2`` in float64: the layer error the GPTQ/AWQ references report."""
    W, W_hat, X = (_to_numpy(a).astype(np.float64) for a in (W, W_hat, X))
    return float(np.linalg.norm((W - W_hat) @ X.T) ** 2 / np.linalg.norm(W @ X.T) ** 2)
