"""Chapter 08 — llama.cpp's scale searches, the part of the k-quants that is not bit packing.

A k-quant block stores small integer codes ``L`` and, per sub-block of 16 or 32 weights, a scale
``d`` (and for the "type-1" formats a min ``m``): ``x_hat = d * L`` or ``x_hat = d * L - m``. Plain
round-to-nearest would set ``d`` from the sub-block's extreme value; llama.cpp instead *searches* a
few candidate scales and keeps the one with the smallest weighted squared (or absolute) error

    E(d, m) = sum_i w_i (d L_i - m - x_i)^2          L_i = clamp(nearest_int((x_i + m) / d), 0, nmax)

and, for a fixed set of codes, solves for the best ``d`` (and ``m``) in closed form (weighted least
squares). The searches, after ggml-quants.c (llama.cpp); without an importance matrix the weights
are ``x^2`` or ``|x|``-based, with one (``minq.kquants_weighted``) they are ``imatrix``-based:

    make_qx_quants    symmetric, x_hat = d L, L in [-nmax, nmax-1]: 19 trial scales around -nmax/max  (Q6_K)
    make_q3_quants    symmetric, then coordinate descent on each L_i (up to 5 sweeps)                 (Q3_K)
    make_qkx2_quants  asymmetric, x_hat = d L - m: nstep + 1 trial scales, least-squares d and m     (Q2/4/5_K)
    make_qkx3_quants  make_qkx2_quants' search with squared error, from C's first minimum  (imatrix: Q4_1 ...)
    make_qp_quants    positive, x_hat = d L, L <= nmax: 9 trial scales, then coordinate descent
                      (imatrix: the sub-block scales and mins of Q2_K, Q4_K, Q5_K)

Bit-exact means doing the float32 arithmetic in ggml's order: every sum accumulates left to right in
float32 (``_seq_sum``; NumPy's ``sum`` is pairwise and rounds differently), every product is
evaluated as written (``w * l * x`` is ``(w * l) * x``), integers enter products as float32 (NumPy
would promote int32 * float32 to float64), and ``nearest_int`` is round-half-to-even of the float32
value (``np.rint``). The functions below run the search for many sub-blocks at once: ``X [N, n]``
holds N sub-blocks of n values, and every loop over i = 0..n-1 is sequential, as in C, while each
step is vectorised over the N sub-blocks. The Numba kernels of ``minq.kquants_k`` are proven equal
to them by tests/test_kquants.py. Notebook: ``notebooks/08_kquants.ipynb``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["nearest_int", "roundf", "signed_max", "make_qx_quants", "make_q3_quants", "make_qkx2_quants",
           "make_qkx3_quants", "make_qp_quants", "GROUP_MAX_EPS"]

F32 = np.float32
GROUP_MAX_EPS = F32(1e-15)      # a sub-block with max |x| below this is all zero


def nearest_int(f):
    """ggml's ``nearest_int`` of float32 values, as int32: add 1.5 * 2^23, so that the float32 sum's last
    mantissa bits hold the rounded integer (the addition itself rounds half to even), and read them.
    Equals ``np.rint(f)`` for |f| <= 2^22 - 1, the range ggml asserts; done the same way here so that
    values outside it give ggml's bytes too."""
    v = np.asarray(f, F32) + F32(12582912.0)
    return (v.view(np.int32) & 0x7FFFFF) - 0x400000


def roundf(f):
    """C's ``roundf``: round half away from zero, exactly (``floor(|f| + 0.5)`` would round 0.49999997
    up in float32 arithmetic). Returns float32."""
    f = np.asarray(f, F32)
    a = np.abs(f)
    fl = np.floor(a)
    return np.copysign(fl + np.floor(F32(2) * (a - fl)), f).astype(F32)


def _seq_sum(terms):
    """Left-to-right float32 sum over the first axis: ``terms [n, N] -> [N]`` (C's ``s += t_i`` loop)."""
    acc = np.zeros(terms.shape[1:], F32)
    for t in terms:
        acc += t
    return acc


def signed_max(X):
    """Per row of ``X [N, n]``: ``(max, amax)``, the value with the largest |x| (the first one on ties,
    sign kept) and that |x|. As ggml's loops, which start from 0.0 and keep a value only when its |x|
    is strictly larger: a row of zeros (-0.0 included) gives +0.0, and NaN is never kept (``NaN > amax``
    is false), so a row of only NaN (and zeros) gives +0.0 too. NaN appears among the sub-block scales
    when float32 sums overflow (inf / inf), e.g. Q6_K with an imatrix near 1e37."""
    A = np.abs(X)
    i = np.argmax(np.where(np.isnan(A), F32(-1), A), axis=1)
    mx = X[np.arange(len(X)), i]
    mx = np.where((mx == 0) | np.isnan(mx), F32(0), mx).astype(F32)
    return mx, np.abs(mx)


def make_qx_quants(X, nmax: int, Wt=None):
    """Symmetric search of ``make_qx_quants(n, nmax, x, L, rmse_type=1, qw)``: ``X [N, n]`` float32
    -> ``(d [N] float32, L [N, n] int32 in 0..2 nmax - 1)``, ``x_hat = d (L - nmax)``; weights ``x^2``,
    or ``Wt [N, n]`` when given (C's ``qw``, the importance weights).

    Start at ``iscale = -nmax / max`` (``max`` the signed extreme value, so it lands on ``-nmax``); try
    ``iscale = -(nmax + 0.1 is) / max`` for is = -9..9; keep a candidate when its least-squares fit
    ``(sum w x l)^2 / sum w l^2`` is larger (the error ``sum w x^2 - fit`` smaller)."""
    mx, amax = signed_max(X)
    zero = amax < GROUP_MAX_EPS
    mx = np.where(zero, F32(1), mx)
    Xt = np.ascontiguousarray(X.T)                                        # [n, N]: row i = element i
    W = Xt * Xt if Wt is None else np.ascontiguousarray(Wt.T, dtype=F32)

    def trial(iscale):
        l = np.clip(nearest_int(iscale * Xt), -nmax, nmax - 1)           # [n, N]
        lf = l.astype(F32)
        return l, _seq_sum(W * Xt * lf), _seq_sum(W * lf * lf)

    L, sumlx, suml2 = trial(F32(-nmax) / mx)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(suml2 != 0, sumlx / suml2, F32(0)).astype(F32)
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        l, sumlx, suml2 = trial(-(F32(nmax) + F32(0.1) * F32(step)) / mx)
        better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        L = np.where(better, l, L)
        with np.errstate(divide="ignore", invalid="ignore"):
            scale = np.where(better, sumlx / suml2, scale).astype(F32)
        best = np.where(better, scale * sumlx, best)
    L = np.where(zero, -nmax, L).T + nmax                                 # [N, n]; all-zero rows: L = 0
    return np.where(zero, F32(0), scale).astype(F32), np.ascontiguousarray(L)


def make_q3_quants(X, nmax: int):
    """Symmetric search with coordinate descent, ``make_q3_quants(n, nmax, x, L, do_rmse=true)``:
    ``X [N, n]`` -> ``(d [N], L [N, n] in 0..2 nmax - 1)``, ``x_hat = d (L - nmax)``; weights ``x^2``.

    Round at ``iscale = -nmax / max``, then sweep i = 0..n-1 up to 5 times: take element i out of the
    sums, re-round it at the scale the others imply, keep it if the fit improves; a row stops at the
    first sweep that changes nothing."""
    mx, amax = signed_max(X)
    zero = amax < GROUP_MAX_EPS
    mx = np.where(zero, F32(1), mx)
    Xt = np.ascontiguousarray(X.T)                                        # [n, N]
    W = Xt * Xt
    L = np.clip(nearest_int((F32(-nmax) / mx) * Xt), -nmax, nmax - 1)
    Lf = L.astype(F32)
    sumlx, suml2 = _seq_sum(W * Xt * Lf), _seq_sum(W * Lf * Lf)
    active = ~zero
    for _ in range(5):
        changed = np.zeros(len(X), bool)
        for i in range(Xt.shape[0]):
            w, x, li = W[i], Xt[i], L[i].astype(F32)
            slx = sumlx - w * x * li
            sl2 = suml2 - w * li * li
            ok = active & (slx > 0)
            with np.errstate(divide="ignore", invalid="ignore"):
                new_l = np.clip(nearest_int(np.where(ok, x * sl2 / slx, F32(0))), -nmax, nmax - 1)
            nl = new_l.astype(F32)
            slx, sl2 = slx + w * x * nl, sl2 + w * nl * nl
            take = ok & (new_l != L[i]) & (sl2 > 0) & (slx * slx * suml2 > sumlx * sumlx * sl2)
            L[i] = np.where(take, new_l, L[i])
            sumlx, suml2 = np.where(take, slx, sumlx), np.where(take, sl2, suml2)
            changed |= take
        active &= changed
        if not active.any():
            break
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.where(suml2 > 0, sumlx / suml2, F32(0)).astype(F32)
    L = np.where(zero, -nmax, L).T + nmax
    return np.where(zero, F32(0), d).astype(F32), np.ascontiguousarray(L)


def make_qkx2_quants(X, Wt, nmax: int, rmin: float, rdelta: float, nstep: int, use_mad: bool):
    """Asymmetric search of ``make_qkx2_quants``: ``X [N, n]``, weights ``Wt [N, n]`` -> ``(d [N],
    m [N] >= 0, L [N, n] in 0..nmax)``, ``x_hat = d L - m``.

    The range is ``[min(x, 0), max(x)]``; trial ``iscale = (rmin + rdelta is + nmax) / (max - min)``
    for is = 0..nstep, each followed by the weighted least-squares ``d`` and ``min`` of its codes
    (``min`` clamped to <= 0); the smallest weighted error (|err| if ``use_mad``, else err^2) wins,
    and a winner's ``min`` becomes the offset of the later trials (as in C)."""
    Xt = np.ascontiguousarray(X.T)                                        # [n, N]
    return _qkx_search(Xt, np.minimum(Xt.min(axis=0), F32(0)), Wt, nmax, rmin, rdelta, nstep, use_mad)


def make_qkx3_quants(X, Wt, nmax: int, rmin: float, rdelta: float, nstep: int):
    """``make_qkx3_quants`` with weights ``Wt [N, n]`` (the importance-matrix searches): the search of
    ``make_qkx2_quants`` with the squared error, -> ``(d [N], m [N], L [N, n] in 0..nmax)``.

    The start ``min`` is the first smallest x as C's loop finds it (its sign kept: a row whose
    minimum is -0.0 returns ``m = +0.0``, which Q4_1 / Q5_1 store as ``-m``, an fp16 -0.0)."""
    Xt = np.ascontiguousarray(X.T)                                        # [n, N]
    mn = Xt[np.argmin(Xt, axis=0), np.arange(Xt.shape[1])]
    return _qkx_search(Xt, np.where(mn > 0, F32(0), mn), Wt, nmax, rmin, rdelta, nstep, False)


def _qkx_search(Xt, mn, Wt, nmax, rmin, rdelta, nstep, use_mad):
    """The trials of ``make_qkx2_quants`` / ``make_qkx3_quants`` on ``Xt [n, N]`` from the start ``mn [N]``."""
    W = np.ascontiguousarray(Wt.T)                                        # [n, N]
    mx = Xt.max(axis=0)
    flat = mx == mn
    sum_w, sum_x = W[0].copy(), W[0] * Xt[0]
    for i in range(1, len(Xt)):
        sum_w += W[i]
        sum_x += W[i] * Xt[i]

    def codes(iscale, mn):
        return np.clip(nearest_int(iscale * (Xt - mn)), 0, nmax)        # [n, N]

    def error(d, m, L):
        diff = d * L.astype(F32) + m - Xt
        return _seq_sum(W * (np.abs(diff) if use_mad else diff * diff))

    rng = np.where(flat, F32(1), mx - mn)
    iscale = F32(nmax) / rng
    scale = F32(1) / iscale
    L = codes(iscale, mn)
    best = error(scale, mn, L)
    for step in range(nstep + 1):
        rng = np.where(flat, F32(1), mx - mn)                             # a winner's min moved mn:
        with np.errstate(divide="ignore", invalid="ignore"):              # max - min may be 0 now, as in C
            La = codes((F32(rmin) + F32(rdelta) * F32(step) + F32(nmax)) / rng, mn)
        lf = La.astype(F32)
        sum_l, sum_l2, sum_xl = _seq_sum(W * lf), _seq_sum(W * lf * lf), _seq_sum(W * lf * Xt)
        D = sum_w * sum_l2 - sum_l * sum_l
        with np.errstate(divide="ignore", invalid="ignore"):
            d_new = (sum_w * sum_xl - sum_x * sum_l) / D
            m_new = (sum_l2 * sum_x - sum_l * sum_xl) / D
            pos = m_new > 0
            d_new = np.where(pos, sum_xl / sum_l2, d_new).astype(F32)
        m_new = np.where(pos, F32(0), m_new).astype(F32)
        ok = (D > 0) & ~flat
        cur = error(np.where(ok, d_new, F32(0)), np.where(ok, m_new, F32(0)), La)
        better = ok & (cur < best)
        L = np.where(better, La, L)
        best = np.where(better, cur, best)
        scale, mn = np.where(better, d_new, scale), np.where(better, m_new, mn)
    L = np.where(flat, 0, L)
    return (np.where(flat, F32(0), scale).astype(F32), (-mn).astype(F32),
            np.ascontiguousarray(L.T))


def make_qp_quants(X, Wt, nmax: int):
    """Positive search of ``make_qp_quants`` (the super-block scales of Q2_K, Q4_K, Q5_K with an
    importance matrix): ``X [N, n]``, weights ``Wt [N, n]`` -> ``(d [N], L [N, n])``, ``x_hat = d L``,
    ``L <= nmax``.

    Round at ``iscale = nmax / max`` (``max = max(0, max x)``), try ``iscale = (nmax + 0.1 is) / max``
    for is = -4..4 and keep the smallest ``sum w (x - L / iscale)^2``; then coordinate descent on each
    ``L_i`` as ``make_q3_quants`` (up to 5 sweeps), and ``d = sum w x L / sum w L^2``. ``L`` is C's
    ``uint8_t``: a negative code (a negative x) is stored as ``L + 256``, and the sweeps read it so."""
    Xt, W = np.ascontiguousarray(X.T), np.ascontiguousarray(Wt.T)         # [n, N]
    mx = np.maximum(Xt.max(axis=0), F32(0))
    zero = mx < GROUP_MAX_EPS
    mx = np.where(zero, F32(1), mx)

    def mse(iscale, L):
        diff = Xt - (F32(1) / iscale) * L.astype(F32)
        return _seq_sum(W * diff * diff)

    iscale = F32(nmax) / mx
    best = mse(iscale, nearest_int(iscale * Xt) & 0xFF)                  # no clamp to nmax here
    for step in range(-4, 5):
        if step == 0:
            continue
        trial = (F32(0.1) * F32(step) + F32(nmax)) / mx
        cur = mse(trial, np.minimum(nmax, nearest_int(trial * Xt)))
        better = cur < best
        iscale, best = np.where(better, trial, iscale), np.where(better, cur, best)
    l = np.minimum(nmax, nearest_int(iscale * Xt))                        # [n, N], may be < 0
    lf = l.astype(F32)
    sumlx, suml2 = _seq_sum(W * Xt * lf), _seq_sum(W * lf * lf)
    L = l & 0xFF                                                          # as stored (uint8_t)
    active = ~zero
    for _ in range(5):
        changed = np.zeros(len(X), bool)
        for i in range(Xt.shape[0]):
            w, x, li = W[i], Xt[i], L[i].astype(F32)
            slx = sumlx - w * x * li
            sl2 = suml2 - w * li * li
            ok = active & (slx > 0) & (sl2 > 0)
            with np.errstate(divide="ignore", invalid="ignore"):
                new_l = np.minimum(nmax, nearest_int(np.where(ok, x * sl2 / slx, F32(0))))
            nl = new_l.astype(F32)
            slx, sl2 = slx + w * x * nl, sl2 + w * nl * nl
            take = ok & (new_l != L[i]) & (slx * slx * suml2 > sumlx * sumlx * sl2)
            L[i] = np.where(take, new_l & 0xFF, L[i])
            sumlx, suml2 = np.where(take, slx, sumlx), np.where(take, sl2, suml2)
            changed |= take
        active &= changed
        if not active.any():
            break
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.where(suml2 > 0, sumlx / suml2, F32(0)).astype(F32)
    L = np.where(zero, 0, L).T                                            # [N, n]
    return np.where(zero, F32(0), d).astype(F32), np.ascontiguousarray(L)
