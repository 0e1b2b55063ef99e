"""Chapter 04 — calibration observers: which range ``[lo, hi]`` should the quantization grid cover?

Chapter 02's ``choose_qparams`` maps the *whole* range ``[min(x), max(x)]`` onto the grid. One outlier
then stretches the step ``s`` for every other value. An observer watches the values a tensor takes
(a weight once, an activation over many calibration batches) and picks the range:

    min-max      lo, hi = min(x), max(x)                            nothing is clipped
    percentile   lo, hi = percentile(x, 100 - p), percentile(x, p)  the tails beyond p are clipped
    MSE          lo, hi = r * min(x), r * max(x), with r from the grid 1, 1 - 1/n, ..., 1 - max_shrink + 1/n
                 that minimises sum (x - x_hat)^2                   clipping error vs rounding error

The clipped range becomes ``affine.QParams`` through ``affine.choose_qparams`` itself (called on the
two-element range ``[lo, hi]``), so the convention ``x_hat = s (q - z)`` and the float16 scale rule
are chapter 02's. The MSE grid is the one of GPTQ's reference quantizer (``grid=100``,
``maxshrink=0.8``); ``r = 1`` is min-max, so the MSE observer is never worse than min-max on the data
it searched (tests/test_observers.py).

Running statistics: ``update(x)`` may be called once per calibration batch. Min and max are exact
running values. Percentile and MSE need the values themselves: the observer keeps a uniform random
sample of at most ``max_samples`` *positions* per channel (bottom-k sampling on seeded random keys, so
the sample is uniform over everything seen, whatever the batch sizes). While everything seen fits,
the sample is all of it and the result is exact.

Shapes: ``axis`` are the axes reduced over, as in ``choose_qparams``: ``axis=None`` per tensor,
``axis=1`` on ``W [out, in]`` per output channel, ``axis=-1`` on ``group(W) [out, G, g]`` per group,
``axis=0`` on ``X [tokens, in]`` per input channel (SmoothQuant's ``max|X_j|``). Later batches must
keep the non-reduced sides.

Notebook: ``notebooks/04_ptq.ipynb``. Percentile calibration: Wu et al., "Integer Quantization for
Deep Learning Inference" (NVIDIA, 2020); MSE search: Frantar et al., GPTQ reference code (2022).
"""

from __future__ import annotations

import numpy as np

from minq import affine
from minq._checks import check_bits, check_choice, check_float_array, check_int, is_int
from minq._jit import JIT_ENABLED, njit, prange

__all__ = ["Observer", "MinMaxObserver", "PercentileObserver", "MSEObserver", "make_observer", "OBSERVERS",
           "clip_error", "mse_search", "mse_search_reference"]

OBSERVERS = ("minmax", "percentile", "mse")


class Observer:
    """Running min / max (and, for subclasses, a sample) of the values seen by ``update``.

    bits, symmetric, zero_point, scale_dtype: the grid, as ``affine.choose_qparams`` takes them.
    axis: the axes reduced over (None: per tensor). ``qparams()`` has the shape of ``x`` with those
    axes of size 1, so it broadcasts against every batch.
    """

    kind = "minmax"

    def __init__(self, *, bits: int = 8, symmetric: bool = True, axis=None, zero_point: str = "int",
                 scale_dtype: str = "float32", max_samples: int = 1 << 16, seed: int = 0):
        self.bits = check_bits(bits)
        check_choice(zero_point, "zero_point", affine.ZERO_POINT)
        check_choice(scale_dtype, "scale_dtype", affine.SCALE_DTYPES)
        if symmetric and bits < 2:
            raise ValueError("bits must be >= 2 for a symmetric observer")
        max_samples = check_int(max_samples, "max_samples", lo=1)
        if axis is not None:                              # an int or a tuple of ints; range: at update()
            axes = (axis,) if is_int(axis) else axis
            if not isinstance(axes, tuple) or not axes or not all(is_int(a) for a in axes):
                raise TypeError(f"axis must be None, an int or a tuple of ints, got {axis!r}")
        self.symmetric, self.axis, self.zero_point, self.scale_dtype = symmetric, axis, zero_point, scale_dtype
        self.max_samples = max_samples
        self._rng = np.random.default_rng(seed)
        self.lo = self.hi = None           # running min / max, keepdims shape
        self.n = 0                         # values seen per channel
        self._keys = self._sample = None   # bottom-k sample: keys [k], values [C, k]

    # --- running statistics -----------------------------------------------------------------------

    def _axes(self, ndim):
        if self.axis is None:
            return tuple(range(ndim))
        axes = (self.axis,) if is_int(self.axis) else self.axis
        bad = [a for a in axes if not -ndim <= a < ndim]
        if bad:
            raise ValueError(f"axis {bad[0]} is out of range for x with {ndim} dimensions")
        return tuple(a % ndim for a in axes)

    def update(self, x) -> Observer:
        """Add a batch ``x`` (float, finite, NumPy); returns ``self``."""
        check_float_array(x, "x")
        x = np.asarray(x, dtype=np.float32)
        axes = self._axes(x.ndim)
        lo, hi = x.min(axis=axes, keepdims=True), x.max(axis=axes, keepdims=True)
        if self.lo is not None and lo.shape != self.lo.shape:
            raise ValueError(f"x of shape {x.shape} does not match the channels of earlier batches "
                             f"(statistics of shape {self.lo.shape})")
        self.lo = lo if self.lo is None else np.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else np.maximum(self.hi, hi)
        self._shape = x.shape
        if self.kind != "minmax":
            self._add_sample(x, axes)
        self.n += int(np.prod([x.shape[a] for a in axes]))
        return self

    def _add_sample(self, x, axes):
        kept = [a for a in range(x.ndim) if a not in axes]
        v = np.transpose(x, kept + list(axes)).reshape(int(np.prod([x.shape[a] for a in kept])), -1)  # [C, n]
        keys = self._rng.random(v.shape[1])                                                          # [n]
        if self._keys is not None:
            keys, v = np.concatenate([self._keys, keys]), np.concatenate([self._sample, v], axis=1)
        if keys.size > self.max_samples:
            keep = np.argpartition(keys, self.max_samples - 1)[: self.max_samples]  # the k smallest keys
            keys, v = keys[keep], v[:, keep]
        self._keys, self._sample = keys, v

    def _check_seen(self):
        if self.lo is None:
            raise ValueError("the observer has seen no data: call update(x) first")

    def sample(self):
        """The kept values ``[C, k]``: channel ``c`` (the non-reduced axes, C-order) in row ``c``."""
        self._check_seen()
        if self._sample is None:
            raise ValueError("a min-max observer keeps no sample")
        return self._sample

    # --- the range and the parameters -------------------------------------------------------------

    def range(self):
        """The chosen ``(lo, hi)``, each of the keepdims shape."""
        self._check_seen()
        return self.lo, self.hi

    def qparams(self) -> affine.QParams:
        """``affine.QParams`` of the chosen range, broadcastable against ``x``."""
        lo, hi = self.range()
        return _qparams_of_range(lo, hi, self)

    def absmax(self):
        """``max |x|`` over the reduced axes (keepdims shape): the running statistic SmoothQuant needs."""
        self._check_seen()
        return np.maximum(-self.lo, self.hi)


class MinMaxObserver(Observer):
    """``[lo, hi] = [min(x), max(x)]`` over every batch seen (exact)."""


class PercentileObserver(Observer):
    """``[lo, hi] = [percentile(x, 100 - p), percentile(x, p)]`` of the sample (symmetric: the ``p``-th
    percentile of ``|x|``). ``p`` in (50, 100]; ``p = 100`` is min-max. The range always lies inside
    ``[min(x), max(x)]``."""

    kind = "percentile"

    def __init__(self, percentile: float = 99.99, **kw):
        if isinstance(percentile, bool) or not isinstance(percentile, (int, float, np.floating)) \
                or not 50 < percentile <= 100:
            raise ValueError(f"percentile must be a number in (50, 100], got {percentile!r}")
        super().__init__(**kw)
        self.percentile = float(percentile)

    def range(self):
        self._check_seen()
        v = self._sample                                                   # [C, k]
        shape = self.lo.shape
        if self.symmetric:
            a = np.percentile(np.abs(v), self.percentile, axis=1).astype(np.float32).reshape(shape)
            a = np.minimum(a, self.absmax())
            return -a, a
        lo = np.percentile(v, 100 - self.percentile, axis=1).astype(np.float32).reshape(shape)
        hi = np.percentile(v, self.percentile, axis=1).astype(np.float32).reshape(shape)
        return np.maximum(lo, self.lo), np.minimum(hi, self.hi)            # inside the exact range


class MSEObserver(Observer):
    """The range ``r * [min, max]`` whose fake quantization of the sample has the least squared error,
    per channel, over ``r = 1 - i / grid`` for ``i = 0 .. grid * max_shrink - 1``. ``r = 1`` (min-max)
    is a candidate and wins ties, so the error is never above min-max's on the sample. The search is
    ``mse_search`` (a Numba kernel, bit for bit ``mse_search_reference``, the readable loop)."""

    kind = "mse"

    def __init__(self, *, grid: int = 100, max_shrink: float = 0.8, **kw):
        grid = check_int(grid, "grid", lo=1)
        if not 0 < max_shrink < 1:
            raise ValueError(f"max_shrink must be in (0, 1), got {max_shrink!r}")
        super().__init__(**kw)
        self.grid, self.max_shrink = grid, float(max_shrink)

    def ratios(self):
        """The candidate shrink factors ``r``, largest (1 = min-max) first."""
        return 1.0 - np.arange(max(1, int(self.grid * self.max_shrink))) / self.grid

    def range(self):
        self._check_seen()
        lo, hi = self.lo.reshape(-1, 1), self.hi.reshape(-1, 1)            # [C, 1]
        best_r, _ = mse_search(self._sample, lo, hi, self)                 # [C, 1]
        shape = self.lo.shape
        return (best_r * lo).reshape(shape), (best_r * hi).reshape(shape)


def mse_search_reference(v, lo, hi, obs):
    """The MSE search of ``MSEObserver``, readably: ``(best r [C, 1] float32, its error [C, 1] float64)`` for
    the values ``v [C, k]`` of each channel, the ranges ``r * [lo, hi]`` (``[C, 1]``) over ``obs.ratios()``,
    on ``obs``'s grid (bits, symmetry, zero point, scale dtype). One candidate at a time over all
    channels; the first (largest) ``r`` wins ties."""
    best_err = np.full(lo.shape, np.inf)
    best_r = np.ones(lo.shape, np.float32)
    for r in obs.ratios():                                                 # one candidate at a time: [C, k]
        err = clip_error(v, np.float32(r) * lo, np.float32(r) * hi, obs)   # [C, 1]
        better = err < best_err                                            # strict: r = 1 wins ties
        best_err, best_r = np.where(better, err, best_err), np.where(better, np.float32(r), best_r)
    return best_r, best_err


def mse_search(v, lo, hi, obs):
    """``mse_search_reference``, fast: the same arguments and results, bit for bit (tests/test_observers.py).

    The parameters of every candidate are computed the same way (``_qparams_of_range`` on ``[C, R]``
    ranges); ``_mse_search_kernel`` then makes one pass per channel over all candidates, channels in
    parallel, repeating ``affine.fake_quantize``'s float32 operations and summing the squared errors in
    float64 in the same (sequential) order as ``clip_error``. Without JIT (``NUMBA_DISABLE_JIT=1``) the
    kernel would run as slow Python: the reference runs instead.
    """
    if not JIT_ENABLED:
        return mse_search_reference(v, lo, hi, obs)
    r32 = obs.ratios().astype(np.float32)[None, :]                         # [1, R]
    qp = _qparams_of_range(r32 * lo, r32 * hi, obs)                        # s, z [C, R]
    s = np.ascontiguousarray(qp.s, dtype=np.float32)
    z = np.ascontiguousarray(np.broadcast_to(qp.z, s.shape), dtype=np.float32)
    best = np.empty(len(v), np.int64)
    best_err = np.empty(len(v), np.float64)
    _mse_search_kernel(np.ascontiguousarray(v, dtype=np.float32), s, z, np.float32(qp.qmax),
                       qp.zero_point == "float", best, best_err)
    return r32[0, best][:, None], best_err[:, None]


def _qparams_of_range(lo, hi, obs) -> affine.QParams:
    """``affine.choose_qparams`` on the two-element range ``[lo, hi]`` (stacked on a new first axis, reduced
    over it: the same values as a last axis of 2, without a slow length-2 reduction), squeezed back."""
    bounds = np.stack([np.asarray(lo, np.float32), np.asarray(hi, np.float32)])          # [2, ...]
    qp = affine.choose_qparams(bounds, bits=obs.bits, symmetric=obs.symmetric, axis=0,
                               zero_point="int" if obs.symmetric else obs.zero_point,
                               scale_dtype=obs.scale_dtype)                                  # [1, ...]
    return affine.QParams(qp.s[0], qp.z[0], qp.bits, qp.symmetric, qp.zero_point)


def clip_error(v, lo, hi, obs):
    """``sum (v - x_hat)^2`` per row (float64 ``[C, 1]``, summed left to right) of ``v [C, k]`` quantized
    on the grid of the range ``[lo, hi]`` (``[C, 1]``) with the observer's bits / symmetry / zero point /
    scale dtype."""
    qp = _qparams_of_range(lo, hi, obs)                                   # s, z [C, 1]
    d = (affine.fake_quantize(v, qp) - v).astype(np.float64)               # [C, k]; d * d is exact
    return np.cumsum(d * d, axis=1)[:, -1:]                                # summed left to right


@njit(parallel=True)
def _mse_search_kernel(v, s, z, qmax, float_zero_point, best, best_err):
    # v [C, k] float32; s, z [C, R] float32 (candidate r: column r) -> best [C] index, best_err [C]
    C, k = v.shape
    R = s.shape[1]
    for c in prange(C):
        sc = s[c]
        z_int = np.floor(z[c]) if float_zero_point else z[c].copy()   # as affine.quantize: only the
        z_frac = z[c] - z_int                                          # fraction of z joins the rounding
        err = np.zeros(R, np.float64)
        for i in range(k):                       # each candidate's sum runs left to right, as clip_error
            x = v[c, i]
            for r in range(R):                   # the candidates side by side (vectorised)
                q = np.rint(x / sc[r] + z_frac[r]) + z_int[r]
                q = min(max(q, np.float32(0.0)), qmax)
                d = sc[r] * (q - z[c, r]) - x    # x_hat - x, float32 as affine.fake_quantize
                err[r] += np.float64(d) * np.float64(d)
        b = 0
        for r in range(1, R):                    # strict: the first (largest) r wins ties
            if err[r] < err[b]:
                b = r
        best[c], best_err[c] = b, err[b]


def make_observer(kind: str = "minmax", **kw) -> Observer:
    """An observer by name: ``"minmax"``, ``"percentile"`` (``percentile=``) or ``"mse"``
    (``grid=``, ``max_shrink=``); the other keywords go to ``Observer``."""
    check_choice(kind, "kind", OBSERVERS)
    return {"minmax": MinMaxObserver, "percentile": PercentileObserver, "mse": MSEObserver}[kind](**kw)
