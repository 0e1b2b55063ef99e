"""Chapter 07 — AWQ: protect the weights that meet large activations by scaling them up before rounding.

Lin et al., "AWQ: Activation-aware Weight Quantization for LLM Compression and Acceleration"
(MLSys 2024, arXiv:2306.00978). Rounding error hurts a linear ``y = x W^T`` in proportion to the
input it multiplies: an error ``dW[:, c]`` costs ``|x_c| |dW[:, c]|``. A few input channels ("salient")
carry activations many times larger than the rest. AWQ multiplies column ``c`` of W by ``s_c > 1``
before quantizing (its relative rounding error shrinks) and divides the input by ``s_c`` (folded into
the operation before, so the float model is unchanged: ``minq.folding``):

    x_bar_c = mean_t |X[t, c]|                                      per input channel, calibration X
    s(alpha) = x_bar^alpha / sqrt(max(x_bar^alpha) * min(x_bar^alpha))    x_bar^alpha clamped >= 1e-4
    W_hat(alpha) = Q(W diag(s)) diag(s)^-1                          Q: group min-max RTN (chapter 03)
    alpha* = argmin over alpha in {0, 0.05, ..., 0.95} of  L(alpha) = mean (y - y_hat)^2

``L`` is the output error of the module the scale feeds, on calibration inputs. ``alpha = 0`` gives
``s = 1``: plain RTN. Then **clipping**: per output row and group, the range ``max_val = shrink *
max|W_g|`` with shrink in {1.00, 0.95, ..., 0.55} (the reference's 10 steps) that minimises the group's
own output error ``mean_t (X_g (Q(clip(W_g)) - W_g)^T)^2``; ``clip(w) = min(max(w, -max_val), max_val)``.

Both errors are quadratic forms in ``dW = W_hat - W`` with ``H = X^T X`` (the matrix GPTQ uses):
``sum_t (X dW^T)^2 = tr(dW H dW^T)``, and for one group only H's diagonal block enters. minq scores
single linears that way — the same numbers as multiplying out ``X W_hat^T``, several times cheaper,
and with every calibration token instead of the reference clip search's 512 sampled ones.

Faithful to the reference (mit-han-lab/llm-awq ``auto_scale.py``/``auto_clip.py``; checked in
notebooks/07_awq.ipynb): x-only scales (llm-awq's formula; AutoAWQ's default "duo" scaling also divides by a
weight statistic), the 20-point alpha grid without 1, the 10-point shrink grid, symmetric clipping
even for asymmetric quantization, no clipping of q/k, trial weights ``Q(W s) / s``. minq's choice: the
quantizer is chapter 03's ``quantize_groups`` (asymmetric integer zero point, range always includes 0,
float16 scales) — so a group whose values share one sign keeps its spread, where the reference's
quantizer collapses ``[0.5, 0.6, 0.8, 1.0]`` to ``[0.5, 0.5, 0.5, 0.5]``.

Single layer (this module): ``awq_quantize(W, X, bits=4, group_size=64)`` (NumPy or torch). Whole
Llama model (which layers share a scale, what each scale search measures; the ``awq-w{b}g{g}``
schemes): ``minq.awq_model`` (``awq_model`` and ``awq_block`` are importable from here too).
Notebook: ``notebooks/07_awq.ipynb``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from minq import affine
from minq._backend import is_torch, namespace
from minq._checks import check_bits, check_float_array, check_group_size
from minq.groups import GroupedAffine, quantize_groups

__all__ = ["ALPHAS", "SHRINKS", "AWQWeight", "act_mean", "awq_scales", "fake_quantize_groups", "scaled_fake_quantize",
           "search_scale", "search_clip", "clip_weight", "awq_quantize", "output_error"]

ALPHAS = tuple(i / 20 for i in range(20))          # 0, 0.05, ..., 0.95 (alpha = 1 is never tried)
SHRINKS = tuple(1 - i / 20 for i in range(10))     # 1.00, 0.95, ..., 0.55


@dataclass(frozen=True)
class AWQWeight(GroupedAffine):
    """``Q(W diag(s))`` as chapter 03's container, plus the input scale ``s`` it was quantized with.

    ``dequantize()`` returns the effective weight ``Q(W diag(s)) diag(s)^-1 [out, in]`` (so that
    ``X @ W_hat.T`` approximates ``X @ W.T``). A model folds ``s^-1`` into the previous operation and
    stores only the container; a lone layer must keep ``s`` (float32 ``[in]``, counted in ``nbytes``).
    alpha: the chosen grid point; losses: ``L(alpha)`` over the grid (float64, not part of the storage).
    """

    in_scale: object = None
    alpha: float = 0.0
    losses: object = None

    @property
    def nbytes(self) -> int:
        return super().nbytes + 4 * self.shape[1]

    def dequantize(self):
        return super().dequantize() / self.in_scale[None, :]


def act_mean(X):
    """``x_bar [in]`` float32: mean over tokens of ``|X|``, for ``X [tokens, in]`` (or ``[..., in]``)."""
    X = check_float_array(X, "X")
    X = X.reshape(-1, X.shape[-1])
    return abs(X).float().mean(0) if is_torch(X) else np.abs(X).mean(0, dtype=np.float64).astype(np.float32)


def awq_scales(x_bar, alpha: float):
    """``s [in]`` float32: ``x_bar^alpha`` clamped to >= 1e-4, divided by ``sqrt(max * min)`` of itself."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.floating)) or not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
    check_float_array(x_bar, "x_bar")                     # finite, non-empty
    s = (x_bar ** float(alpha)).clip(1e-4)
    return s / (s.max() * s.min()) ** 0.5


def fake_quantize_groups(W, *, bits: int, group_size, scale_dtype: str = "float32"):
    """``quantize_groups(W, ...).dequantize()`` without building the packed container (the searches
    call it hundreds of times): chapter 02's ``choose_qparams`` + ``fake_quantize`` on ``group(W)``."""
    out, n_in = W.shape
    g = check_group_size(group_size, n_in)
    Wg = W.reshape(out, n_in // g, g)                                         # [out, G, g]
    qp = affine.choose_qparams(Wg, bits=bits, axis=-1, scale_dtype=scale_dtype)
    return affine.fake_quantize(Wg, qp).reshape(out, n_in)


def scaled_fake_quantize(W, s, *, bits: int, group_size, scale_dtype: str = "float32"):
    """``Q(W diag(s)) diag(s)^-1`` float32 ``[out, in]``: the trial weight of scale ``s``."""
    return fake_quantize_groups(W * s[None, :], bits=bits, group_size=group_size,
                                scale_dtype=scale_dtype) / s[None, :]


def output_error(dW, H, n_tokens: int) -> float:
    """``mean over tokens and outputs of (X dW^T)^2 = tr(dW H dW^T) / (tokens * out)``, ``H = X^T X``
    (``minq.calibration.Hessian``: ``.H`` and ``.n``)."""
    return float(((dW @ H) * dW).sum()) / (n_tokens * dW.shape[0])


def search_scale(x_bar, W, loss, *, bits: int, group_size, alphas=ALPHAS, scale_dtype: str = "float32"):
    """The grid search: ``(s*, alpha*, L over the grid)``.

    x_bar [in]: mean |x| of the input that ``W`` reads; W [out, in]: the row-stacked weights of every
    linear that reads it (they share one scale); loss(W_hat [out, in]) -> float: the output error of
    the module the scale feeds, with ``W_hat`` the trial weights ``Q(W s) / s``. The first grid
    minimum wins (so a flat curve keeps ``alpha = 0``, RTN). Raises ValueError when every loss is
    NaN/Inf (the reference raises too).
    """
    alphas = _check_alphas(alphas)
    check_float_array(x_bar, "x_bar", ndim=1)
    check_float_array(W, "W", ndim=2)
    if x_bar.shape[0] != W.shape[1]:
        raise ValueError(f"x_bar must have {W.shape[1]} entries (W's input width), got {x_bar.shape[0]}")
    losses = np.array([loss(scaled_fake_quantize(W, awq_scales(x_bar, a), bits=bits, group_size=group_size,
                                                 scale_dtype=scale_dtype)) for a in alphas], dtype=np.float64)
    if not np.isfinite(losses).any():
        raise ValueError("every AWQ scale candidate gave a NaN/Inf loss; check the calibration inputs")
    k = int(np.nanargmin(np.where(np.isfinite(losses), losses, np.nan)))
    return awq_scales(x_bar, alphas[k]), alphas[k], losses


def search_clip(W, H, *, bits: int, group_size, shrinks=SHRINKS, scale_dtype: str = "float32"):
    """Per (row, group) clip range: ``max_val [out, G, 1]`` = best ``shrink * max|W_g|``, and its error.

    H [in, in] = X^T X of the (already scaled) inputs; only its diagonal blocks enter: the error of
    candidate ``c`` in row ``o``, group ``k`` is ``dW_ok H_kk dW_ok^T`` with ``dW = Q(clip(W)) - W``.
    The first candidate (no clipping) wins ties. Raises ValueError/TypeError naming ``W``, ``H``,
    ``group_size`` or ``shrinks``.
    """
    check_float_array(W, "W", ndim=2)
    check_float_array(H, "H", ndim=2)
    if tuple(H.shape) != (W.shape[1], W.shape[1]):
        raise ValueError(f"H must be [{W.shape[1]}, {W.shape[1]}] (W's input width squared), got {tuple(H.shape)}")
    shrinks = _check_shrinks(shrinks)
    out, n_in = W.shape
    g = check_group_size(group_size, n_in)
    G = n_in // g
    Wg = W.reshape(out, G, g)                                                 # [out, G, g]
    xp = namespace(W)
    amax = xp.amax(abs(Wg), (-1,))                                            # [out, G, 1]
    Hb = [H[k * g:(k + 1) * g, k * g:(k + 1) * g] for k in range(G)]         # diagonal blocks [g, g]
    best = err_best = None
    for shrink in shrinks:
        max_val = amax * shrink
        dW = fake_quantize_groups(Wg.clip(-max_val, max_val).reshape(out, n_in), bits=bits, group_size=group_size,
                                  scale_dtype=scale_dtype).reshape(out, G, g) - Wg
        # one GEMM per group (a batched 3-D matmul is far slower with threaded BLAS)
        err = xp.cat([((dW[:, k] @ Hb[k]) * dW[:, k]).sum(-1)[:, None] for k in range(G)], 1)   # [out, G]
        if best is None:
            best, err_best = max_val, err
        else:
            better = (err < err_best)[..., None]
            best = xp.where(better, max_val, best)
            err_best = xp.where(better[..., 0], err, err_best)
    return best, err_best


def clip_weight(W, max_val, group_size):
    """``W`` with each group clipped to ``[-max_val, max_val]`` (``max_val [out, G, 1]``)."""
    out, n_in = W.shape
    G = max_val.shape[1]
    return W.reshape(out, G, -1).clip(-max_val, max_val).reshape(out, n_in)


def awq_quantize(W, X, *, bits: int, group_size, alphas=ALPHAS, clip: bool = True, shrinks=SHRINKS,
                 scale_dtype: str = "float32") -> AWQWeight:
    """AWQ for one linear layer: scale search, then clip search, then chapter 03's RTN.

    W float ``[out, in]``, X float ``[tokens, in]`` (calibration inputs); NumPy arrays or torch tensors
    (the result lives where W does). Returns an ``AWQWeight`` whose ``dequantize()`` is the effective
    ``W_hat [out, in]``. ``alphas=(0,)`` and ``clip=False`` give exactly RTN (``quantize_groups``).
    scale_dtype: of the group scales, in the search and the result ("float32" as the reference's
    pseudo-quantization; "float16" as stored by the model-level schemes). Raises ValueError/TypeError naming ``W``, ``X``, ``bits``, ``group_size``, ``alphas``, ``shrinks``.
    """
    W = check_float_array(W, "W", ndim=2)
    X = check_float_array(X, "X", ndim=2)
    if is_torch(W) != is_torch(X):
        raise TypeError("W and X must both be numpy arrays or both torch tensors")
    if X.shape[1] != W.shape[1]:
        raise ValueError(f"X must be [tokens, {W.shape[1]}] (W's input width), got {tuple(X.shape)}")
    bits = check_bits(bits)
    out, n_in = W.shape
    check_group_size(group_size, n_in)
    shrinks = _check_shrinks(shrinks)
    W, X = namespace(W).f32(W), namespace(X).f32(X)
    H = X.T @ X                                                              # [in, in]
    n = X.shape[0]

    def loss(W_hat):
        return output_error(W_hat - W, H, n)

    kw = dict(bits=bits, group_size=group_size, scale_dtype=scale_dtype)
    s, alpha, losses = search_scale(act_mean(X), W, loss, alphas=alphas, **kw)
    Ws = W * s[None, :]                                                      # W diag(s)
    if clip:
        Hs = H / (s[:, None] * s[None, :])                                   # inputs X diag(s)^-1
        max_val, _ = search_clip(Ws, Hs, shrinks=shrinks, **kw)
        Ws = clip_weight(Ws, max_val, group_size)
    base = quantize_groups(Ws, **kw)
    return AWQWeight(**{f.name: getattr(base, f.name) for f in fields(GroupedAffine)}, in_scale=s, alpha=alpha,
                     losses=losses)


def _check_alphas(alphas) -> tuple:
    try:
        alphas = tuple(float(a) for a in alphas)
    except TypeError as e:
        raise TypeError(f"alphas must be a sequence of numbers, got {alphas!r}") from e
    if not alphas or not all(0 <= a <= 1 for a in alphas):
        raise ValueError(f"alphas must be a non-empty sequence of numbers in [0, 1], got {alphas!r}")
    return alphas


def _check_shrinks(shrinks) -> tuple:
    try:
        shrinks = tuple(float(c) for c in shrinks)
    except TypeError as e:
        raise TypeError(f"shrinks must be a sequence of numbers, got {shrinks!r}") from e
    if not shrinks or not all(0 < c <= 1 for c in shrinks):
        raise ValueError(f"shrinks must be a non-empty sequence of numbers in (0, 1], got {shrinks!r}")
    return shrinks


def __getattr__(name):
    """``awq_model`` and ``awq_block`` live in ``minq.awq_model`` (the model level); importable from here."""
    if name in ("awq_model", "awq_block"):
        import minq.awq_model

        return getattr(minq.awq_model, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
