"""Chapter 06 — GPTQ: quantize a weight column by column, and let the later columns absorb the error.

A linear layer ``y = W x`` sees calibration inputs ``X [tokens, in]``. GPTQ (Frantar et al., "GPTQ:
Accurate Post-Training Quantization for Generative Pre-trained Transformers", ICLR 2023) minimises
the layer's output error, row by row, a quadratic form in ``dW = W - W_hat``:

    || (W - W_hat) X^T ||^2_F = tr(dW H dW^T)      H = X^T X = sum_tokens x x^T    [in, in]

(``minq.calibration.Hessian`` accumulates it. The paper's Hessian of the error is ``2 H``, the
reference's ``H`` the mean ``2 X^T X / sequences``: a positive factor, which leaves GPTQ's result
unchanged because its damping is relative to ``mean(diag H)``.)

It is OBQ (Optimal Brain Quantization) made fast. OBQ quantizes one weight ``w_j`` of a row and
moves the remaining weights by the optimal compensation ``-(w_j - q_j) / [H^-1]_jj * H^-1[j, :]``,
then removes ``j`` from ``H^-1``. GPTQ's three tricks:

1. **one order for all rows** (left to right, or by descending ``diag(H)`` with ``act_order``): every
   row shares the same sequence of ``H^-1`` updates, so they are computed once;
2. **the upper Cholesky factor** ``U`` of ``H^-1 = U^T U`` holds, in row ``j``, exactly the update
   ``H^-1[j, j:] / sqrt([H^-1]_jj)`` after the columns before ``j`` are removed: no inverse updates;
3. **lazy batches**: the error of a block of ``block_size`` columns is applied to the columns after
   the block in one GEMM ``W[:, i2:] -= Err @ U[i1:i2, i2:]``; inside the block, rank-1 updates.

The column loop (``err = (w_j - q_j) / U_jj;  W[:, k] -= err * U[j, k]  for k > j``) is written
readably in NumPy (``gptq_quantize_reference``), as a Numba kernel parallel over rows
(``gptq_quantize`` on NumPy arrays; tests prove the two equal bit for bit), and in torch
(``gptq_quantize`` on torch tensors, any device).

Faithful to the reference code (IST-DASLab/gptq ``fasterquant``): dead inputs (``diag(H) == 0`` ->
``H_ii = 1``, ``W[:, i] = 0``), damping ``lambda = damp * mean(diag(H))`` added after act-order,
dynamic group parameters computed when a group starts from the outer, error-updated ``W`` — which
lacks the updates of the current block (*stale* parameters, notebooks/06_gptq.ipynb section 5; ``group_params=
"fresh"`` starts a new block at each group instead), static groups (``static_groups``: parameters
of the original groups of ``W``, computed before any update), a ragged last group when ``group_size``
does not divide ``in``. minq's choices: the quantizer is chapter 02's min-max ``choose_qparams`` /
``quantize`` (asymmetric: the range includes 0, as the reference; symmetric: minq's
``s = max|w| / (2^(b-1) - 1)``, which never clips the largest weight — the reference's ``sym`` clips
rows without negative values to 7/15 of their max); per-channel parameters are computed after dead
columns are zeroed; the inverse factor is computed in float64, the loop in float32; a Cholesky
failure raises ValueError (raise ``damp``) rather than silently changing the damping.

Exact properties (tests/test_gptq.py): a diagonal H gives exactly RTN; ``4 H`` gives identical
codes (any power of 4: every float operation scales exactly; another factor changes codes only
through float rounding, tests/test_calibration.py); the per-column losses ``(w_j - q_j)^2 / U_jj^2`` sum to ``tr(dW (H + lambda I)
dW^T)``, the output error on the calibration tokens plus the damping term; dead inputs give zero
columns; the blocked loop equals the unblocked one per channel.

Notebook: ``notebooks/06_gptq.ipynb``. Model level (sequential over decoder blocks, the ``gptq-*``
schemes): ``minq.gptq_model``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np

from minq import affine
from minq._backend import is_torch, namespace
from minq._checks import (
    check_bits,
    check_choice,
    check_float_array,
    check_group_size,
    check_int,
    ragged_layout,
)
from minq._jit import njit, prange
from minq.calibration import Hessian  # chapter 06's X^T X accumulator, shared with AWQ
from minq.groups import GroupedAffine

__all__ = ["Hessian", "gptq_quantize", "gptq_quantize_reference", "GPTQWeight", "inverse_cholesky"]

GROUP_PARAMS = ("stale", "fresh")


@dataclass(frozen=True)
class GPTQWeight(GroupedAffine):
    """The grouped affine container of chapter 03, plus what GPTQ adds.

    perm: None, or int [in] when act-order reordered the groups (dynamic groups with ``act_order``):
        codes and parameters are stored in the processing order, column ``k`` of the stored matrix is
        input ``perm[k]`` (the exllama layout: a kernel permutes ``x`` instead of gathering groups).
        ``dequantize()`` returns ``W_hat`` in the original column order either way.
    losses: float64 [in], GPTQ's loss ``sum_rows (w_j - q_j)^2 / U_jj^2`` of each input column
        (original order): the output error that quantizing it added, ``losses.sum() = tr(dW (H + lambda I)
        dW^T)`` (``= ||dW X^T||^2 + lambda ||dW||^2`` for ``H = X^T X``). Not part of the storage.
    gptq_group_size: the group size GPTQ used. A ragged one (not dividing ``in``) is stored at the
        granularity ``gcd(g, in)``, each group's parameters repeated (``group_size`` is that width,
        ``ragged_group_size`` is ``g``: ``nbytes`` counts each group's parameters once).
    """

    perm: object = None
    losses: object = None
    gptq_group_size: object = None

    @property
    def nbytes(self) -> int:
        perm = 0 if self.perm is None else 2 * self.shape[1]               # int16 indices
        return super().nbytes + perm

    def dequantize(self):
        W_hat = super().dequantize()
        if self.perm is None:
            return W_hat
        inv = _inverse_perm(self.perm)
        return W_hat[:, inv]


def _inverse_perm(perm):
    if is_torch(perm):
        import torch

        return torch.argsort(perm)
    return np.argsort(perm)


def inverse_cholesky(H, damp: float = 0.01):
    """``U`` upper triangular with ``U^T U = (H + lambda I)^-1``, ``lambda = damp * mean(diag H)``.

    H float [n, n] symmetric positive semi-definite (dead inputs already fixed). Returns (U float64, lambda).
    The reference computes ``L = chol(H); H^-1 = L^-T L^-1; U = chol(H^-1)^T`` (two Cholesky
    factorisations, an inverse and a product: about ``4.3 n^3`` flops). minq gets the same unique factor
    in ``2/3 n^3``: ``U^T U = H^-1`` means ``H = U^-1 U^-T``, an "upper-lower" Cholesky factorisation, which
    is the ordinary one of the reversed matrix: with ``J`` the reversal permutation,

        J H J = L L^T  (lower L)   =>   U = J L^-1 J

    (``L^-1`` by blocks, ``_inv_lower``). Computed in float64; ``U^T U (H + lambda I)`` is within 1e-13 of
    ``I`` on SmolLM2-like Hessians (the reference's route: 1e-12). Raises ValueError when ``H + lambda I``
    is not positive definite.
    """
    H = np.array(H, dtype=np.float64)
    if not np.isfinite(H).all():
        raise ValueError("H contains NaN or Inf")
    lam = damp * float(np.mean(np.diag(H)))
    H[np.diag_indices_from(H)] += lam
    try:
        with _single_threaded_lapack():
            L = np.linalg.cholesky(H[::-1, ::-1])                         # J H J = L L^T
            U = np.ascontiguousarray(_inv_lower(L)[::-1, ::-1])            # J L^-1 J: H^-1 = U^T U
    except np.linalg.LinAlgError:
        raise ValueError(f"H + damp * mean(diag(H)) * I is not positive definite (damp={damp}): H must be a "
                         f"Gram matrix X^T X of calibration inputs; raise damp or use more calibration data") from None
    return U, lam


def _inv_lower(L):
    """``L^-1`` of a lower triangular ``L [n, n]``, by 2 x 2 blocks (the off-diagonal one is two GEMMs):

        [[A, 0], [C, D]]^-1 = [[A^-1, 0], [-D^-1 C A^-1, D^-1]]
    """
    n = len(L)
    if n <= 64:
        return np.tril(np.linalg.inv(L))                                   # exact zeros above the diagonal
    k = n // 2
    Ai, Di = _inv_lower(L[:k, :k]), _inv_lower(L[k:, k:])
    out = np.zeros_like(L)
    out[:k, :k], out[k:, k:] = Ai, Di
    out[k:, :k] = -Di @ (L[k:, :k] @ Ai)
    return out


_BLAS = None            # threadpoolctl controller of numpy's BLAS, made on first use


def _single_threaded_lapack():
    """A context in which NumPy's BLAS / LAPACK run on one thread (threadpoolctl, as ``minq.models.llama``).

    Speed only, not results: on a shared 2-core machine, multithreaded OpenBLAS ``potrf`` of a 576 x 576
    matrix took 0.03-1.4 s (its threads wait for each other at every step) against 5 ms single-threaded.
    """
    global _BLAS
    if _BLAS is None:
        from threadpoolctl import ThreadpoolController

        _BLAS = ThreadpoolController().select(user_api="blas")
    return _BLAS.limit(limits=1)


def gptq_quantize(W, H, *, bits: int, group_size=-1, symmetric: bool = False, act_order: bool = False,
                  static_groups: bool = False, damp: float = 0.01, block_size: int = 128,
                  group_params: str = "stale", scale_dtype: str = "float32") -> GPTQWeight:
    """GPTQ-quantize ``W`` float [out, in] for inputs with Hessian ``H`` float [in, in] (``X^T X``, any scale).

    bits 2..8; group_size: -1 per channel, None/0 per tensor, g > 0 groups of g inputs (a ragged last
    group when g does not divide in); symmetric: chapter 02's symmetric grid (z = 2^(bits-1), not stored);
    act_order: process inputs by descending diag(H); static_groups: group parameters from the original
    W and groups (contiguous in the original order even with act_order); damp: fraction of the mean
    diagonal added to H; block_size: columns per lazy batch; group_params: "stale" (reference) or
    "fresh" (see the module docstring); scale_dtype: "float32" or "float16" — the codes are computed with
    the stored scale, so ``dequantize()`` reproduces what the error feedback assumed.

    NumPy arrays run the Numba kernel (bit for bit ``gptq_quantize_reference``, the readable loop);
    torch tensors run that readable loop itself, on their device, and give torch tensors. Returns a ``GPTQWeight`` (a
    ``GroupedAffine``); ``dequantize()`` is ``W_hat [out, in]`` in the original column order. Raises
    TypeError / ValueError naming the parameter for bad input.
    """
    loop = _loop_reference if is_torch(W) else _loop_numba
    return _gptq(W, H, loop, bits=bits, group_size=group_size, symmetric=symmetric, act_order=act_order,
                 static_groups=static_groups, damp=damp, block_size=block_size, group_params=group_params,
                 scale_dtype=scale_dtype)


def gptq_quantize_reference(W, H, **kw) -> GPTQWeight:
    """``gptq_quantize`` (same arguments, same result bit for bit) with the readable column loop
    ``_loop_reference``: the specification of the Numba kernel, on NumPy arrays or torch tensors."""
    return _gptq(W, H, _loop_reference, **kw)


def _gptq(W, H, loop, *, bits: int, group_size=-1, symmetric: bool = False, act_order: bool = False,
          static_groups: bool = False, damp: float = 0.01, block_size: int = 128, group_params: str = "stale",
          scale_dtype: str = "float32") -> GPTQWeight:
    """Checks, preparation and the container around the column ``loop`` (the algorithm of the module docstring)."""
    torch_in = is_torch(W)
    check_float_array(W, "W", ndim=2)
    check_float_array(H, "H", ndim=2)
    if is_torch(H) != torch_in:
        raise TypeError("W and H must both be numpy arrays or both torch tensors")
    out, n = W.shape
    if tuple(H.shape) != (n, n):
        raise ValueError(f"H must be square [in, in] = [{n}, {n}] to match W [out, in] = {tuple(W.shape)}, "
                         f"got {tuple(H.shape)}")
    bits = check_bits(bits, lo=2, hi=8)
    g = check_group_size(group_size, n, ragged=True)
    check_choice(group_params, "group_params", GROUP_PARAMS)
    check_choice(scale_dtype, "scale_dtype", affine.SCALE_DTYPES)
    if isinstance(damp, bool) or not isinstance(damp, (int, float)) or not 0 <= damp < np.inf:
        raise ValueError(f"damp must be a finite number >= 0, got {damp!r}")
    block_size = check_int(block_size, "block_size", lo=1)

    # -- preparation (NumPy, float64 for the factor): dead inputs, order, damping, U ----------------
    Hd = (H.detach().cpu().numpy() if torch_in else H).astype(np.float64)
    if bool((np.diag(Hd) < 0).any()):
        raise ValueError("H has negative diagonal entries: it must be positive semi-definite (X^T X)")
    if not bool((np.diag(Hd) > 0).any()):      # every input dead: GPTQ would zero the whole weight
        raise ValueError("H has no positive diagonal entry (all zero: no calibration token reached this "
                         "layer); GPTQ would set every weight to 0")
    dead = np.diag(Hd) == 0
    Hd[dead, dead] = 1.0
    perm = np.argsort(-np.diag(Hd), kind="stable") if act_order else np.arange(n)
    U, _ = inverse_cholesky(Hd[perm][:, perm], damp)                       # in processing order
    if torch_in:
        import torch

        W = W.detach().to(torch.float32).clone()
        W[:, torch.as_tensor(dead, device=W.device)] = 0
    else:
        W = np.array(W, dtype=np.float32)
        W[:, dead] = 0

    # -- group layout: gidx[c] = group of processed column c; S, Z [out, G] filled before or during --
    xp = namespace(W)
    qp = dict(bits=bits, symmetric=symmetric, scale_dtype=scale_dtype)
    per_tensor = group_size is None or group_size == 0
    if per_tensor or g == n:                                               # one group, params from all of W
        p = affine.choose_qparams(W, axis=None if per_tensor else 1, **qp)
        S, Z = (xp.copy(a) if a.shape[0] == out else xp.repeat(a, [out], 0) for a in (p.s, p.z))  # -> [out, 1]
        gidx, dynamic = np.zeros(n, np.int64), False
    elif static_groups:                                                    # original groups, before any update
        ps = [affine.choose_qparams(W[:, a:a + g], axis=1, **qp) for a in range(0, n, g)]
        S, Z = xp.cat([p.s for p in ps], 1), xp.cat([p.z for p in ps], 1)
        gidx, dynamic = perm // g, False
    else:                                                                  # processed groups, filled as they start
        G = -(-n // g)
        S, Z = xp.empty((out, G), scale_dtype, W), xp.empty((out, G), "float32", W)
        gidx, dynamic = np.arange(n) // g, True
    W = W[:, xp.asarray(perm, W)] if act_order else W                       # processing order
    starts = range(0, n, g) if dynamic and group_params == "fresh" else ()
    blocks = _blocks(n, block_size, starts)
    Q, losses = loop(W, U.astype(np.float32), S, Z, gidx, g, dynamic, blocks, qp)

    # -- back to the original order (or keep the processing order with perm) and into the container --
    if act_order and not dynamic:
        Q = Q[:, xp.asarray(np.argsort(perm), Q)]
    keep_perm = act_order and dynamic
    losses_orig = np.empty(n, np.float64)
    losses_orig[perm] = losses
    ragged = not per_tensor and n % g != 0                                 # stored at width gs = gcd(g, n)
    if ragged:                                                             # repeat each group's params
        gs, reps = ragged_layout(g, n)
        S, Z = xp.repeat(S, reps, 1), xp.repeat(Z, reps, 1)
    if per_tensor:
        S, Z = S[:1, :1], Z[:1, :1]
    base = GroupedAffine.from_codes(Q, S, None if symmetric else Z, bits=bits,
                                    group_size=gs if ragged else group_size)
    if ragged:
        base = replace(base, ragged_group_size=g)                         # nbytes: each group's params once
    return GPTQWeight(**{f.name: getattr(base, f.name) for f in fields(GroupedAffine)},
                      perm=xp.asarray(perm, Q) if keep_perm else None, losses=losses_orig,
                      gptq_group_size=group_size)


def _blocks(n, block_size, starts):
    """Lazy-batch boundaries ``[(i1, i2), ...]``: every ``block_size`` columns, and at each of ``starts``."""
    cuts = sorted(set(range(0, n, block_size)) | set(starts) | {n})
    return list(zip(cuts[:-1], cuts[1:]))


def _group_params(Wslice, qp):
    """(s, z) [out] of one group from ``Wslice [out, g]``: s in the storage dtype, z float32."""
    p = affine.choose_qparams(Wslice, axis=1, **qp)
    return p.s[:, 0], p.z[:, 0]


# --- the readable loop ------------------------------------------------------------------------------


def _loop_reference(W, U, S, Z, gidx, g, dynamic, blocks, qp):
    """GPTQ's column loop, as in the paper, on NumPy arrays or torch tensors (``minq._backend``). W [out, n]
    float32 in processing order (modified), U [n, n] upper float32; S, Z [out, G]: group params (filled
    here, as each group of g columns starts, when ``dynamic``); gidx [n]: the group of each column.
    Returns codes Q [out, n] uint8 and the loss of each column, float64 [n] (NumPy)."""
    xp = namespace(W)
    out, n = W.shape
    qmax = (1 << qp["bits"]) - 1
    U = xp.asarray(U, W)
    Q = xp.empty((out, n), "uint8", W)
    Loss = xp.empty((out, n), "float64", W)
    for i1, i2 in blocks:
        W1 = xp.copy(W[:, i1:i2])                                          # the block, updated column by column
        Err1 = xp.empty(W1.shape, "float32", W)
        for j in range(i2 - i1):
            c = i1 + j
            if dynamic and c % g == 0:                                     # a group starts: params from W,
                S[:, c // g], Z[:, c // g] = _group_params(W[:, c:c + g], qp)   # not W1 (stale in-block)
            s, z = xp.f32(S[:, int(gidx[c])]), Z[:, int(gidx[c])]          # [out] each
            w = W1[:, j]
            q = xp.clip(xp.rint(w / s) + z, 0, qmax)                       # chapter 02's quantize
            wq = s * (q - z)
            d = U[c, c]
            err = (w - wq) / d                                             # [out]
            Q[:, c] = xp.to_uint8(q)
            diff = xp.f64(w - wq)
            Loss[:, c] = diff * diff / (xp.f64(d) * xp.f64(d))              # output error added
            W1[:, j + 1:] -= xp.outer(err, U[c, c + 1:i2])                 # OBS update inside the block
            Err1[:, j] = err
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]                                  # lazy batch update, one GEMM
    return Q, xp.to_numpy(Loss.sum(0))


# --- the fast loop: the same arithmetic, rows in parallel ------------------------------------------


def _loop_numba(W, U, S, Z, gidx, g, dynamic, blocks, qp):
    out, n = W.shape
    qmax = np.float32((1 << qp["bits"]) - 1)
    Q = np.empty((out, n), np.uint8)
    Loss = np.empty((out, n), np.float64)
    S32 = np.ascontiguousarray(S, dtype=np.float32)
    for i1, i2 in blocks:
        if dynamic:  # groups starting in this block: W[:, i1:] is not touched until the block ends
            for c in range(-(-i1 // g) * g, i2, g):
                S[:, c // g], Z[:, c // g] = _group_params(W[:, c:c + g], qp)
                S32[:, c // g] = S[:, c // g]
        W1 = np.ascontiguousarray(W[:, i1:i2])
        Err1 = np.empty_like(W1)
        _block_kernel(W1, np.ascontiguousarray(U[i1:i2, i1:i2]), S32, Z, gidx[i1:i2].copy(), qmax, i1, Q, Err1, Loss)
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]
    return Q, Loss.sum(axis=0)


@njit(parallel=True)
def _block_kernel(W1, U1, S, Z, gidx1, qmax, i1, Q, Err1, Loss):
    # W1 [out, B] float32, U1 [B, B], S/Z [out, G], gidx1 [B] -> Q/Loss [:, i1:i1+B], Err1 [out, B].
    # Tiles of TILE rows, transposed ([B, TILE]) so the rank-1 update runs over rows in SIMD lanes;
    # each element sees the same float32 operations, in the same order, as _loop_reference.
    out, B = W1.shape
    TILE = 16
    for tb in prange((out + TILE - 1) // TILE):
        r0 = tb * TILE
        nr = min(r0 + TILE, out) - r0
        tile = np.empty((B, TILE), np.float32)                         # W1[r0:r0+nr].T
        for k in range(B):
            for t in range(nr):
                tile[k, t] = W1[r0 + t, k]
        e = np.zeros(TILE, np.float32)
        for j in range(B):
            d = U1[j, j]
            for t in range(nr):
                r = r0 + t
                s, z = S[r, gidx1[j]], Z[r, gidx1[j]]
                w = tile[j, t]
                q = min(max(np.rint(w / s) + z, np.float32(0.0)), qmax)
                wq = s * (q - z)
                e[t] = (w - wq) / d
                Q[r, i1 + j] = np.uint8(q)
                diff = np.float64(w - wq)
                Loss[r, i1 + j] = diff * diff / (np.float64(d) * np.float64(d))
                Err1[r, j] = e[t]
            for k in range(j + 1, B):                                   # W1[:, k] -= err * U[j, k]
                u = U1[j, k]
                for t in range(nr):
                    tile[k, t] -= e[t] * u
