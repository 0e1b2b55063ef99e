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

Faithful to the reference (mit-han-lab/llm-awq ``auto_scale.py``/``auto_clip.py``; the notes in
gptq_awq.md §2): x-only scales (llm-awq's formula; AutoAWQ's default "duo" scaling also divides by a
weight statistic), the 20-point alpha grid without 1, the 10-point shrink grid, symmetric clipping
even for asymmetric quantization, no clipping of q/k, trial weights ``Q(W s) / s``. minq's choice: the
quantizer is chapter 03's ``quantize_groups`` (asymmetric integer zero point, range always includes 0,
float16 scales) — so a group whose values share one sign keeps its spread, where the reference's
quantizer collapses ``[0.5, 0.6, 0.8, 1.0]`` to ``[0.5, 0.5, 0.5, 0.5]``.

Single layer: ``awq_quantize(W, X, bits=4, group_size=64)`` (NumPy or torch). Whole Llama model
(which layers share a scale, what each scale search measures): ``awq_model``, schemes ``awq-w{b}g{g}``.
Notebook: ``notebooks/07_awq.ipynb``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields

import numpy as np

from minq import affine, registry
from minq._backend import is_torch
from minq._checks import check_bits, check_float_array
from minq.folding import fold_scales
from minq.groups import GroupedAffine, quantize_groups, resolve_group_size

__all__ = ["ALPHAS", "SHRINKS", "AWQWeight", "act_mean", "awq_scales", "fake_quantize_groups", "scaled_fake_quantize",
           "search_scale", "awq_block", "awq_model",
           "search_clip", "clip_weight", "awq_quantize", "output_error"]

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
    s = (x_bar ** float(alpha)).clip(1e-4)
    return s / (s.max() * s.min()) ** 0.5


def fake_quantize_groups(W, *, bits: int, group_size, scale_dtype: str = "float32"):
    """``quantize_groups(W, ...).dequantize()`` without building the packed container (the searches
    call it hundreds of times): chapter 02's ``choose_qparams`` + ``fake_quantize`` on ``group(W)``."""
    out, n_in = W.shape
    g = resolve_group_size(group_size, n_in)
    Wg = W.reshape(out, n_in // g, g)                                         # [out, G, g]
    qp = affine.choose_qparams(Wg, bits=bits, axis=-1, scale_dtype=scale_dtype)
    return affine.fake_quantize(Wg, qp).reshape(out, n_in)


def scaled_fake_quantize(W, s, *, bits: int, group_size, scale_dtype: str = "float32"):
    """``Q(W diag(s)) diag(s)^-1`` float32 ``[out, in]``: the trial weight of scale ``s``."""
    return fake_quantize_groups(W * s[None, :], bits=bits, group_size=group_size,
                                scale_dtype=scale_dtype) / s[None, :]


def output_error(dW, H, n_tokens: int) -> float:
    """``mean over tokens and outputs of (X dW^T)^2 = tr(dW H dW^T) / (tokens * out)``, ``H = X^T X``."""
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
    g = resolve_group_size(group_size, n_in)
    G = n_in // g
    Wg = W.reshape(out, G, g)                                                 # [out, G, g]
    amax = abs(Wg).amax(-1, keepdim=True) if is_torch(W) else np.abs(Wg).max(-1, keepdims=True)  # [out, G, 1]
    Hb = [H[k * g:(k + 1) * g, k * g:(k + 1) * g] for k in range(G)]         # diagonal blocks [g, g]
    best = err_best = None
    for shrink in shrinks:
        max_val = amax * shrink
        dW = fake_quantize_groups(Wg.clip(-max_val, max_val).reshape(out, n_in), bits=bits, group_size=group_size,
                                  scale_dtype=scale_dtype).reshape(out, G, g) - Wg
        # one GEMM per group (a batched 3-D matmul is far slower with threaded BLAS)
        err = _stack([((dW[:, k] @ Hb[k]) * dW[:, k]).sum(-1) for k in range(G)])   # [out, G]
        if best is None:
            best, err_best = max_val, err
        else:
            better = (err < err_best)[..., None]
            best = _where(better, max_val, best)
            err_best = _where(better[..., 0], err, err_best)
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
    resolve_group_size(group_size, n_in)
    shrinks = _check_shrinks(shrinks)
    W, X = _f32(W), _f32(X)
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


def _f32(a):
    return a.float() if is_torch(a) else np.asarray(a, dtype=np.float32)


def _stack(columns):
    """``[out]`` arrays -> ``[out, n]``."""
    if is_torch(columns[0]):
        import torch

        return torch.stack(columns, 1)
    return np.stack(columns, 1)


def _where(cond, a, b):
    if is_torch(cond):
        import torch

        return torch.where(cond, a, b)
    return np.where(cond, a, b)


# --- a whole Llama model ------------------------------------------------------------------------------

# Which linears share a scale, what absorbs 1/s (minq.folding.TARGETS) and what the search measures:
#   "qkv"      attn_q, attn_k, attn_v   <- attn_norm    loss: attention output (after attn_output, float)
#   "o"        attn_output              <- attn_v rows  loss: attn_output's output; only without GQA
#   "gate_up"  ffn_gate, ffn_up         <- ffn_norm     loss: MLP output (after ffn_down, float)
#   "down"     ffn_down                 <- ffn_up rows  loss: ffn_down's output
# Clipping skips attn_q and attn_k (their errors pass through softmax; the reference skips them too).
NO_CLIP = ("attn_q", "attn_k")
AWQ_SAMPLES = 32          # calibration windows the awq-* schemes use (of the 128 minq.quantize gives)
SEARCH_WINDOWS = 4        # windows on which the searches measure output errors (x_bar: all windows)


class _Stop(Exception):
    """Raised by a hook to end a block's forward once the input it wanted is seen."""


def _attention_context(model, i, x):
    """The input of ``blk.i.attn_output`` (the attention context, ``[tokens, d]``) for block input ``x``."""
    name = f"blk.{i}.attn_output"
    box = {}

    def stop(_, X):
        box["X"] = X
        raise _Stop

    try:
        model.run_block(i, x, hooks={name: stop})
    except _Stop:
        pass
    return box["X"]


def _mlp(X, W_gate, W_up, W_down):
    """``ffn_down(silu(ffn_gate(X)) * ffn_up(X))`` for ``X [tokens, d]``."""
    g, u = X @ W_gate.T, X @ W_up.T
    return (g / (1.0 + np.exp(-g)) * u) @ W_down.T


class _Stats:
    """One linear input over calibration batches: ``sum |x|`` over all tokens (for ``x_bar``), and
    ``H = X^T X`` over the first ``max_tokens`` of them (the search tokens)."""

    def __init__(self, n_in, max_tokens):
        self.abs_sum = np.zeros(n_in, np.float64)
        self.H = np.zeros((n_in, n_in), np.float32)
        self.n = self.n_H = 0
        self.max_tokens = max_tokens

    def add(self, X):
        self.abs_sum += np.abs(X).sum(0, dtype=np.float64)
        self.n += X.shape[0]
        Xh = X[: self.max_tokens - self.n_H]
        if len(Xh):
            self.H += Xh.T @ Xh
            self.n_H += len(Xh)

    @property
    def x_bar(self):
        return (self.abs_sum / self.n).astype(np.float32)


def awq_block(model, i, x, *, bits: int, group_size, alphas=ALPHAS, clip: bool = True, shrinks=SHRINKS,
              scale_dtype: str = "float16", search_windows: int = SEARCH_WINDOWS, batch_size: int = 8):
    """AWQ on block ``i`` of a Llama ``model`` for its float inputs ``x [n, T, d]``.

    Returns ``(W, norms, y, info)``: ``W`` ``{name: float32 [out, in]}`` the block's weights with the
    scales folded in (and clipped), not yet quantized; ``norms`` ``{name: gamma [d]}`` its RMSNorm
    gammas divided by the scales; ``y [n, T, d]`` the block's float outputs (the next block's inputs);
    ``info`` ``{target: (alpha, losses)}``.
    """
    from minq.models.llama import DenseWeight

    c = model.config
    p = f"blk.{i}."
    first = {"qkv": "attn_q", "o": "attn_output", "gate_up": "ffn_gate", "down": "ffn_down"}
    n_search = search_windows * x.shape[1]                                        # search tokens
    stats = {t: _Stats(model.weights[p + n].shape[1], n_search) for t, n in first.items()}
    kept = {"o": [], "gate_up": []}           # the first n_search tokens of these inputs, for the searches

    def hook(name, X):
        t = next(t for t, n in first.items() if name == p + n)
        stats[t].add(X)
        if t in kept and sum(len(a) for a in kept[t]) < n_search:
            kept[t].append(np.array(X))

    y = np.concatenate([model.run_block(i, x[a:a + batch_size], hooks={p + n: hook for n in first.values()})
                        for a in range(0, len(x), batch_size)])                  # [n, T, d]
    W = {n: np.array(model.weights[p + n].dequantize(), np.float32) for n in
         ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")}
    xs = x[:search_windows]
    ctx_fp = np.concatenate(kept["o"])[:n_search]               # float attention context of xs [tokens, d]
    X_gu = np.concatenate(kept["gate_up"])[:n_search]
    y_mlp = _mlp(X_gu, W["ffn_gate"], W["ffn_up"], W["ffn_down"])

    def loss_qkv(W_hat):
        rows = np.cumsum([0, len(W["attn_q"]), len(W["attn_k"])])
        trial = model.with_weights({p + n: DenseWeight(W_hat[a:b], copy=False) for n, a, b in
                                    zip(("attn_q", "attn_k", "attn_v"), rows, list(rows[1:]) + [len(W_hat)])})
        d = (_attention_context(trial, i, xs) - ctx_fp) @ W["attn_output"].T
        return float(np.mean(np.square(d, dtype=np.float64)))

    def loss_gate_up(W_hat):
        h = len(W["ffn_gate"])
        d = _mlp(X_gu, W_hat[:h], W_hat[h:], W["ffn_down"]) - y_mlp
        return float(np.mean(np.square(d, dtype=np.float64)))

    def loss_linear(W0, st):
        return lambda W_hat: output_error(W_hat - W0, st.H, st.n_H)

    searches = {
        "qkv": (np.concatenate([W["attn_q"], W["attn_k"], W["attn_v"]]), loss_qkv),
        "gate_up": (np.concatenate([W["ffn_gate"], W["ffn_up"]]), loss_gate_up),
        "down": (W["ffn_down"], loss_linear(W["ffn_down"], stats["down"])),
    }
    if c.n_kv_heads == c.n_heads:            # v -> o only without GQA (the reference's shape check)
        searches["o"] = (W["attn_output"], loss_linear(W["attn_output"], stats["o"]))
    s_in, info = {}, {}
    for t, (Wt, loss) in searches.items():
        s_in[t], alpha, losses = search_scale(stats[t].x_bar, Wt, loss, bits=bits, group_size=group_size,
                                              alphas=alphas, scale_dtype=scale_dtype)
        info[t] = (alpha, losses)
    folded = fold_scales(model, {p + t: s for t, s in s_in.items()})   # this block's scales folded in
    W = {n: np.array(folded.weights[p + n].dequantize(), np.float32) for n in W}
    norms = {p + n: folded.norms[p + n] for n in ("attn_norm", "ffn_norm")}
    if clip:
        inputs = {"attn_q": "qkv", "attn_k": "qkv", "attn_v": "qkv", "attn_output": "o", "ffn_gate": "gate_up",
                  "ffn_up": "gate_up", "ffn_down": "down"}
        for n, t in inputs.items():
            if n in NO_CLIP:
                continue
            H = stats[t].H
            if t in s_in:
                H = H / (s_in[t][:, None] * s_in[t][None, :])                    # inputs X diag(s)^-1
            max_val, _ = search_clip(W[n], H, bits=bits, group_size=group_size, shrinks=shrinks,
                                     scale_dtype=scale_dtype)
            W[n] = clip_weight(W[n], max_val, group_size)
    return {p + n: Wn for n, Wn in W.items()}, norms, y, info


def awq_model(model, calibration, *, bits: int, group_size, alphas=ALPHAS, clip: bool = True, shrinks=SHRINKS,
              scale_dtype: str = "float16", quantize: bool = True, search_windows: int = SEARCH_WINDOWS, batch_size: int = 8,
              blocks=None, progress: bool = True, stats: dict | None = None):
    """A new model: AWQ scales folded into the norms and linears, weights clipped and quantized.

    calibration: int token ids ``[n_samples, seq_len]``. Block ``i``'s inputs come from the *float*
    blocks before it (as in the reference: the scaled float model equals the float model). ``x_bar``
    is measured on every calibration token; the searches score their candidates on the first
    ``search_windows`` windows (the reference's clip search samples 512 tokens; its scale search uses
    all of them — minq trades that for speed, and AWQ's few parameters need few tokens).
    quantize=False returns the scaled (and clipped) float model, for GPTQ to quantize (``awq+gptq``).
    blocks: the block indices to process (default all; the others keep their float weights).
    ``stats`` receives ``{"seconds", "tokens", "layers": [{target: (alpha, losses)}]}``.
    """
    from tqdm.auto import tqdm

    from minq.gptq_model import _check_calibration
    from minq.models.llama import DenseWeight, LlamaModel

    if not isinstance(model, LlamaModel):
        raise TypeError(f"awq_model needs a Llama model (minq.load_model('smollm2')), got {type(model).__name__}")
    ids = _check_calibration(calibration)
    bits = check_bits(bits)
    resolve_group_size(group_size, model.config.dim)
    resolve_group_size(group_size, model.config.hidden_dim)
    n_layers = model.config.n_layers
    blocks = list(range(n_layers)) if blocks is None else sorted(set(int(b) for b in blocks))
    if not blocks or not all(0 <= b < n_layers for b in blocks):
        raise ValueError(f"blocks must be a non-empty list of block indices in [0, {n_layers}), got {blocks!r}")
    t0 = time.perf_counter()
    x = model.embed(ids)                                                          # [n, T, d]
    norms, weights, layers = {}, {}, []
    for i in tqdm(range(blocks[-1] + 1), desc=f"AWQ w{bits}", unit="layer", disable=not progress):
        if i not in blocks:
            x = np.concatenate([model.run_block(i, x[a:a + batch_size]) for a in range(0, len(x), batch_size)])
            continue
        W, g, x, info = awq_block(model, i, x, bits=bits, group_size=group_size, alphas=alphas, clip=clip,
                                  shrinks=shrinks, scale_dtype=scale_dtype, search_windows=search_windows,
                                  batch_size=batch_size)
        norms.update(g)
        weights.update({n: quantize_groups(Wn, bits=bits, group_size=group_size, scale_dtype=scale_dtype)
                        if quantize else DenseWeight(Wn) for n, Wn in W.items()})
        layers.append(info)
    # the folded gammas, and the weights that already hold the scales (producer rows / s, columns * s)
    new = model.with_norms(norms).with_weights(weights)
    if stats is not None:
        stats.update(seconds=time.perf_counter() - t0, tokens=int(ids.size), layers=layers)
    return new


# --- the awq-* schemes ------------------------------------------------------------------------------

def _awq(m) -> registry.Scheme:
    bits, group = int(m["bits"]), int(m["group"])
    if not 2 <= bits <= 8:
        raise ValueError(f"scheme {m.string!r}: bits must be in 2..8")
    if group <= 0:
        raise ValueError(f"scheme {m.string!r}: group size must be > 0")
    gptq = m["gptq"] is not None

    def quantize_model(model, calibration, progress=True):
        cal = None if calibration is None else calibration[:AWQ_SAMPLES]
        if not gptq:
            return awq_model(model, cal, bits=bits, group_size=group, progress=progress)
        from minq.gptq_model import gptq_model

        scaled = awq_model(model, cal, bits=bits, group_size=group, clip=False, quantize=False, progress=progress)
        return gptq_model(scaled, calibration, bits=bits, group_size=group, progress=progress)

    desc = (f"AWQ {bits}-bit, groups of {group}, asymmetric: activation-aware scales + clipping"
            if not gptq else f"AWQ scales, then GPTQ {bits}-bit, groups of {group}, asymmetric")
    return registry.Scheme(m.string, desc, quantize_model=quantize_model, needs_calibration=True)


registry.register_family(r"awq(?P<gptq>\+gptq)?-w(?P<bits>\d+)g(?P<group>\d+)", _awq, "awq[+gptq]-w{bits}g{group}")

# The AWQ schemes of chapter 07's table (the default `minq report` runs them).
SCHEMES = ["awq-w4g64", "awq-w3g64"]
