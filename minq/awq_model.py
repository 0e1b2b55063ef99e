"""Chapter 07 — AWQ on a whole Llama model: which linears share a scale, what each search measures.

The layer algorithm (the scale grid ``s(alpha) = x_bar^alpha / sqrt(max * min)``, the clipping grid,
``awq_quantize``) is ``minq.awq``. A model adds three questions the reference (mit-han-lab/llm-awq
``auto_scale.py`` / ``auto_clip.py``) answers per decoder block, and minq with it:

1. **Which linears share a scale.** The linears that read one input share one ``s``, and ``1 / s`` is
   folded into the operation that produces that input (``model.fold_targets()``), so the float model
   is unchanged:

       "qkv"      attn_q, attn_k, attn_v   <- attn_norm    loss: attention output (after attn_output, float)
       "o"        attn_output              <- attn_v rows  loss: attn_output's output; only without GQA
       "gate_up"  ffn_gate, ffn_up         <- ffn_norm     loss: MLP output (after ffn_down, float)
       "down"     ffn_down                 <- ffn_up rows  loss: ffn_down's output

2. **What each search measures.** ``x_bar`` (mean ``|x|`` per input channel) over every calibration
   token; the losses on the first ``search_windows`` windows: through attention for q/k/v (the
   context's error times ``W_o``, the forward stopped at attn_output's input:
   ``minq.calibration.linear_input``), through the MLP for gate/up, and for a single linear
   ``tr(dW H dW^T) / (tokens * out)`` with ``H = X^T X`` (``minq.calibration.Hessian``).
3. **Where clipping applies.** Every linear but attn_q and attn_k (their errors pass through
   softmax; the reference skips them too), on the inputs scaled by ``1 / s``: ``H / (s s^T)``.

Block ``i``'s inputs come from the *float* blocks before it (the scaled float model equals the float
model). Schemes: ``awq-w{bits}g{group}`` (AWQ then RTN) and ``awq+gptq-w{bits}g{group}`` (AWQ's scales
folded in, then GPTQ quantizes), on the first ``AWQ_SAMPLES`` calibration windows.

Notebook: ``notebooks/07_awq.ipynb``.
"""

from __future__ import annotations

import time

import numpy as np

from minq import registry
from minq._checks import check_bits, check_group_size, check_int
from minq.awq import ALPHAS, SHRINKS, clip_weight, output_error, search_clip, search_scale
from minq.calibration import Hessian, check_blocks, check_calibration, forward_block, linear_input
from minq.folding import fold_scales
from minq.groups import quantize_groups

__all__ = ["awq_block", "awq_model", "NO_CLIP", "AWQ_SAMPLES", "SEARCH_WINDOWS"]

NO_CLIP = ("attn_q", "attn_k")
AWQ_SAMPLES = 32          # calibration windows the awq-* schemes use (of the 128 minq.quantize gives)
SEARCH_WINDOWS = 4        # windows on which the searches measure output errors (x_bar: all windows)


def _mlp(X, W_gate, W_up, W_down):
    """``ffn_down(silu(ffn_gate(X)) * ffn_up(X))`` for ``X [tokens, d]``."""
    g, u = X @ W_gate.T, X @ W_up.T
    return (g / (1.0 + np.exp(-g)) * u) @ W_down.T


def awq_block(model, i, x, *, bits: int, group_size, alphas=ALPHAS, clip: bool = True, shrinks=SHRINKS,
              scale_dtype: str = "float16", search_windows: int = SEARCH_WINDOWS, batch_size: int = 8):
    """AWQ on block ``i`` of a Llama ``model`` for its float inputs ``x [n, T, d]``.

    Returns ``(W, norms, y, info)``: ``W`` ``{name: float32 [out, in]}`` the block's weights with the
    scales folded in (and clipped), not yet quantized; ``norms`` ``{name: gamma [d]}`` its RMSNorm
    gammas divided by the scales; ``y [n, T, d]`` the block's float outputs (the next block's inputs);
    ``info`` ``{target: (alpha, losses)}``.
    """
    from minq.models.weights import DenseWeight

    c = model.config
    p = f"blk.{i}."
    targets = model.fold_targets()                       # qkv, gate_up, down, o: what reads each input
    first = {t: ft.consumers[0] for t, ft in targets.items()}
    n_search = check_int(search_windows, "search_windows", lo=1) * x.shape[1]      # search tokens
    # per target input: sum |x| over all tokens (x_bar), H = X^T X over the first n_search tokens
    abs_sum = {t: np.zeros(model.weights[p + n].shape[1], np.float64) for t, n in first.items()}
    n_tokens = dict.fromkeys(first, 0)
    hess = {t: Hessian(model.weights[p + n].shape[1]) for t, n in first.items()}
    kept = {"o": [], "gate_up": []}           # the first n_search tokens of these inputs, for the searches

    def hook(name, X):
        t = next(t for t, n in first.items() if name == p + n)
        abs_sum[t] += np.abs(X).sum(0, dtype=np.float64)
        n_tokens[t] += X.shape[0]
        if hess[t].n < n_search:
            hess[t].add_batch(X[: n_search - hess[t].n])
        if t in kept and sum(len(a) for a in kept[t]) < n_search:
            kept[t].append(np.array(X))

    y = forward_block(model, i, x, hooks={p + n: hook for n in first.values()}, batch_size=batch_size)  # [n, T, d]
    x_bar = {t: (abs_sum[t] / n_tokens[t]).astype(np.float32) for t in first}
    H = {t: h.H for t, h in hess.items()}                                         # float32 [in, in]
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
        d = (linear_input(trial, i, xs, p + "attn_output") - ctx_fp) @ W["attn_output"].T
        return float(np.mean(np.square(d, dtype=np.float64)))

    def loss_gate_up(W_hat):
        h = len(W["ffn_gate"])
        d = _mlp(X_gu, W_hat[:h], W_hat[h:], W["ffn_down"]) - y_mlp
        return float(np.mean(np.square(d, dtype=np.float64)))

    def loss_linear(W0, t):
        return lambda W_hat: output_error(W_hat - W0, H[t], hess[t].n)

    searches = {
        "qkv": (np.concatenate([W["attn_q"], W["attn_k"], W["attn_v"]]), loss_qkv),
        "gate_up": (np.concatenate([W["ffn_gate"], W["ffn_up"]]), loss_gate_up),
        "down": (W["ffn_down"], loss_linear(W["ffn_down"], "down")),
    }
    if c.n_kv_heads == c.n_heads:            # v -> o only without GQA (the reference's shape check)
        searches["o"] = (W["attn_output"], loss_linear(W["attn_output"], "o"))
    s_in, info = {}, {}
    for t, (Wt, loss) in searches.items():
        s_in[t], alpha, losses = search_scale(x_bar[t], Wt, loss, bits=bits, group_size=group_size,
                                              alphas=alphas, scale_dtype=scale_dtype)
        info[t] = (alpha, losses)
    folded = fold_scales(model, {p + t: s for t, s in s_in.items()})   # this block's scales folded in
    W = {n: np.array(folded.weights[p + n].dequantize(), np.float32) for n in W}
    norms = {p + n: folded.norms[p + n] for n in ("attn_norm", "ffn_norm")}
    if clip:
        inputs = {n: t for t, ft in targets.items() for n in ft.consumers}         # linear -> its input
        for n, t in inputs.items():
            if n in NO_CLIP:
                continue
            Ht = H[t]
            if t in s_in:
                Ht = Ht / (s_in[t][:, None] * s_in[t][None, :])                  # inputs X diag(s)^-1
            max_val, _ = search_clip(W[n], Ht, bits=bits, group_size=group_size, shrinks=shrinks,
                                     scale_dtype=scale_dtype)
            W[n] = clip_weight(W[n], max_val, group_size)
    return {p + n: Wn for n, Wn in W.items()}, norms, y, info


def awq_model(model, calibration, *, bits: int, group_size, alphas=ALPHAS, clip: bool = True, shrinks=SHRINKS,
              scale_dtype: str = "float16", quantize: bool = True, search_windows: int = SEARCH_WINDOWS, batch_size: int = 8,
              blocks=None, progress: bool = True, stats: dict | None = None):
    """A new model: AWQ scales folded into the norms and linears, weights clipped and quantized.

    calibration: int token ids ``[n_samples, seq_len]`` (``minq.calibration.check_calibration``). Block
    ``i``'s inputs come from the *float* blocks before it (as in the reference: the scaled float model
    equals the float model). ``x_bar`` is measured on every calibration token; the searches score their
    candidates on the first ``search_windows`` windows (the reference's clip search samples 512 tokens;
    its scale search uses all of them — minq trades that for speed, and AWQ's few parameters need few
    tokens). quantize=False returns the scaled (and clipped) float model, for GPTQ to quantize
    (``awq+gptq``). blocks: the block indices to process (default all; the others keep their float
    weights). ``stats`` receives ``{"seconds", "tokens", "layers": [{target: (alpha, losses)}]}``.
    """
    from tqdm.auto import tqdm

    from minq.models.base import Decoder, require
    from minq.models.weights import DenseWeight

    require(model, Decoder, "awq_model")
    if not model.fold_targets():
        raise TypeError(f"awq_model folds its scales into the model: a {type(model).__name__} has no place to "
                        f"fold them (model.fold_targets() is empty)")
    ids = check_calibration(calibration)
    bits = check_bits(bits)
    check_group_size(group_size, model.config.dim)
    check_group_size(group_size, model.config.hidden_dim)
    blocks = check_blocks(blocks, model.config.n_layers)
    batch_size = check_int(batch_size, "batch_size", lo=1)
    t0 = time.perf_counter()
    x = model.embed(ids)                                                          # [n, T, d]
    norms, weights, layers = {}, {}, []
    for i in tqdm(range(blocks[-1] + 1), desc=f"AWQ w{bits}", unit="layer", disable=not progress):
        if i not in blocks:
            x = forward_block(model, i, x, batch_size=batch_size)
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
    gptq = m.groupdict().get("gptq") is not None

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


# The AWQ schemes of chapter 07's table: the full report runs them, the quick one the 4-bit one.
registry.register_family("awq", r"awq-w(?P<bits>\d+)g(?P<group>\d+)", _awq, "awq-w{bits}g{group}",
                         defaults=("awq-w4g64", "awq-w3g64"), quick=("awq-w4g64",))
registry.register_family("awq+gptq", r"awq(?P<gptq>\+gptq)-w(?P<bits>\d+)g(?P<group>\d+)", _awq,
                         "awq+gptq-w{bits}g{group}")
