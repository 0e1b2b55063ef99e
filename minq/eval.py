"""What quantization costs, measured: perplexity of a language model, fidelity of an embedding model.

Perplexity is the exponential of the mean negative log-likelihood of the text under the model:

    NLL_t = -log softmax(logits_{t-1})[x_t] = logsumexp(z) - z[x_t],  z = logits_{t-1}
    PPL   = exp( (1/N) * sum_t NLL_t )           over the N predicted tokens

A model that spreads its mass uniformly over V tokens has PPL = V; a model that always puts all its
mass on the true next token has PPL = 1. Lower is better; the *relative* change against the float
model is what the quantization chapters report (the anchor is a reference measurement of
SmolLM2-135M, first 16 x 512 tokens of Hamlet, PPL 41.948 with transformers as the runtime).

Window protocol (``nll`` / ``perplexity``, the same as the reference measurement):

1. The text is tokenized once, whole (``model.tokenizer.encode``, which prepends a BOS only where the
   model file says so; SmolLM2 does not). Windows get no BOS of their own.
2. The ids are cut into non-overlapping windows of ``window`` tokens: ``ids[k*window:(k+1)*window]``.
   A final partial window is **dropped**, so every window has the same length (batches need no
   padding) and every token is scored with the same amount of context as in every other run.
3. Each window is scored from scratch (positions 0..window-1, no KV cache, no context carried over
   from the previous window). Its first token is context only: ``window - 1`` tokens are predicted.
4. NLLs are computed in float64 (logits cast up, the max subtracted before exp), and
   PPL = exp(sum NLL / (n_windows * (window - 1))).

A quantized KV cache (chapter 09, ``minq.kvcache_model``) is scored the way decoding sees it: a model of
a ``kv-*`` scheme runs ``logits(window)`` on a fresh quantized cache, and ``minq.kvcache_quant`` makes
that one forward *decode-exact* — each position attends to the keys and values as the cache would hold
them had the window been decoded one token at a time from its first position (older positions
quantized, the recent window and the token itself as the scheme says). Chunked prefill, where a chunk
attends to its own keys in float, would hide most of the error. tests/test_kvcache.py compares the
forward with a literal decode loop.

KL divergence to the float model (``kl_divergence``, as llama.cpp's ``perplexity --kl-divergence``):
the mean over the same predicted positions of ``KL(p_ref || p) = sum_v p_ref(v) (log p_ref(v) - log p(v))``,
in nats. It is 0 only when the quantized model predicts exactly the reference's distribution, so it
measures the quantization gap alone, where perplexity can even *improve* under quantization noise on a
small model that overfits its training text (chapter 05's tiny model does).

Embedding fidelity (``embedding_fidelity``) compares sentence embeddings of a quantized encoder with
the reference one: per-sentence cosine similarity, and whether each sentence's nearest neighbour
among the others stays the same.
"""

from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

__all__ = ["nll", "perplexity", "token_nll", "kl_divergence", "embedding_fidelity"]


def token_nll(logits, targets) -> np.ndarray:
    """``-log softmax(logits)[targets]`` in float64: ``logits [T, V]``, ``targets [T]`` -> ``[T]``.

    Computed as ``logsumexp(z) - z[target]`` with the row max subtracted first (no overflow for any
    finite logits), in blocks of 128 rows so the float64 copy stays small (128 x 49152 x 8 B = 50 MB).
    """
    out = np.empty(len(targets), np.float64)
    rows = np.arange(len(targets))
    for a in range(0, len(targets), 128):
        z = np.asarray(logits[a:a + 128], dtype=np.float64)             # [t, V] float64 copy
        z -= z.max(axis=-1, keepdims=True)
        picked = z[rows[: len(z)], targets[a:a + 128]]                   # z[target] - max   [t]
        np.exp(z, out=z)
        out[a:a + 128] = np.log(z.sum(axis=-1)) - picked
    return out


def _check_window(model, window) -> int:
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)):
        raise TypeError(f"window must be an int, got {type(window).__name__}")
    ctx = int(model.config.context_length)
    if not 2 <= window <= ctx:
        raise ValueError(f"window must be in 2..{ctx} (the model's context length), got {window}")
    return int(window)


def _check_ids(model, ids) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim != 1 or ids.size == 0:
        raise ValueError(f"ids must be a non-empty 1-D array of token ids, got shape {ids.shape}")
    if ids.dtype.kind not in "iu":
        raise TypeError(f"ids must be integer token ids, got dtype {ids.dtype}")
    V = int(model.config.vocab_size)
    bad = (ids < 0) | (ids >= V)
    if bad.any():
        raise ValueError(f"ids out of range [0, {V}): {ids[bad][:5].tolist()}")
    return ids.astype(np.int64)


def _windows(model, ids, window, batch_size) -> np.ndarray:
    """The checked ids cut into ``[n, window]`` non-overlapping windows (the partial tail dropped); ValueError
    naming ``window``, ``ids`` or ``batch_size``, or when fewer than one window of tokens is given."""
    window = _check_window(model, window)
    ids = _check_ids(model, ids)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    n = ids.size // window
    if n == 0:
        raise ValueError(f"ids has {ids.size} tokens, fewer than one window of {window}")
    return ids[: n * window].reshape(n, window)


def nll(model, ids, window: int = 512, *, batch_size: int = 4, progress: bool = False) -> np.ndarray:
    """Per-token NLL (nats, float64) of ``ids [T]`` under ``model``: ``[n_windows, window - 1]``,
    ``n_windows = T // window``; row ``k`` scores ``ids[k*window + 1 : (k+1)*window]`` given the
    tokens before it in window ``k`` (the module docstring has the protocol).

    ``model`` needs ``config.vocab_size``, ``config.context_length`` and ``logits(ids [B, T]) ->
    [B, T, V]``. ``batch_size`` windows go through one ``model.logits`` call; it does not change the
    result. Peak extra memory is about ``batch_size * window * V * 4`` bytes for the logits (8 x 512 x
    49152 -> 0.8 GB for SmolLM2) plus 50 MB; lower ``batch_size`` to use less.

    Raises TypeError / ValueError naming ``window`` (not in 2..context length), ``ids`` (empty, not
    1-D, not integer, out of range, fewer than ``window`` tokens) or ``batch_size``, and ValueError
    naming ``model`` when its logits make an NLL NaN or infinite (never returned as a result).
    """
    W = _windows(model, ids, window, batch_size)                            # [n, window]
    n, window = W.shape
    out = np.empty((n, window - 1), np.float64)
    with tqdm(total=n, desc="perplexity", unit="window", disable=not progress) as bar:
        for a in range(0, n, batch_size):
            batch = W[a:a + batch_size]                                     # [B, window]
            logits = model.logits(batch)                                    # [B, window, V]
            for b in range(len(batch)):                                     # position t predicts token t+1
                out[a + b] = token_nll(logits[b, :-1], batch[b, 1:])
                if not np.isfinite(out[a + b]).all():
                    raise ValueError(f"model returned NaN or Inf logits in window {a + b} (tokens "
                                     f"{(a + b) * window}..{(a + b + 1) * window - 1}): the NLL, and so the "
                                     f"perplexity, is undefined")
            del logits
            bar.update(len(batch))
    return out


def perplexity(model, text_or_ids, window: int = 512, *, max_tokens: int | None = None, batch_size: int = 4,
               progress: bool = True) -> float:
    """Perplexity of ``model`` on a text (``str``, tokenized with ``model.tokenizer``) or on token ids
    ``[T]``: ``exp(mean NLL)`` over the ``n_windows * (window - 1)`` predicted tokens of the first
    ``max_tokens`` tokens (all when None), with the window protocol of the module docstring.

    Raises TypeError / ValueError for an empty text, ``window`` < 2 or beyond the model's context
    length, ``max_tokens`` < ``window``, fewer tokens than one window, and ids out of range; ValueError
    naming ``model`` when the perplexity is not finite (NaN or Inf logits, or a mean NLL so large that
    ``exp`` overflows float64): a non-finite perplexity is never returned.
    """
    window = _check_window(model, window)
    if isinstance(text_or_ids, str):
        if not text_or_ids:
            raise ValueError("text_or_ids is an empty text")
        ids = model.tokenizer.encode(text_or_ids)
    else:
        ids = text_or_ids
    if max_tokens is not None:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, (int, np.integer)):
            raise TypeError(f"max_tokens must be an int or None, got {type(max_tokens).__name__}")
        if max_tokens < window:
            raise ValueError(f"max_tokens={max_tokens} is less than one window of {window} tokens")
        ids = np.asarray(ids)[:max_tokens]
    per_token = nll(model, ids, window, batch_size=batch_size, progress=progress)
    mean = float(per_token.mean())
    if mean > np.log(np.finfo(np.float64).max):
        raise ValueError(f"model's mean NLL is {mean:.1f} nats: the perplexity exp({mean:.1f}) overflows float64")
    return float(np.exp(mean))


def _log_softmax(z):
    """float64 ``log softmax`` along the last axis (the max subtracted before exp)."""
    z = np.asarray(z, np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def kl_divergence(model_ref, model, ids, window: int = 512, *, batch_size: int = 4, progress: bool = False) -> float:
    """Mean ``KL(p_ref || p)`` (nats, >= 0) of ``model``'s next-token distributions from ``model_ref``'s
    over the predicted positions of ``ids [T]``, windows as ``nll`` (module docstring).

    Raises ValueError when the two models' vocabularies differ, for the arguments ``nll`` refuses (naming
    ``window``, ``ids``, ``batch_size``), and naming ``model`` when either model's logits are not finite.
    """
    if model_ref.config.vocab_size != model.config.vocab_size:
        raise ValueError(f"model_ref and model must share a vocabulary, got {model_ref.config.vocab_size} "
                         f"and {model.config.vocab_size} tokens")
    _check_window(model_ref, window)
    W = _windows(model, ids, window, batch_size)                            # [n, window]
    n, window = W.shape
    total = 0.0
    for a in tqdm(range(0, n, batch_size), desc="KL divergence", unit="batch", disable=not progress):
        batch = W[a:a + batch_size]
        for lr, lq in zip(model_ref.logits(batch), model.logits(batch)):     # [window, V] each
            p_log, q_log = _log_softmax(lr[:-1]), _log_softmax(lq[:-1])     # the positions that predict
            kl = (np.exp(p_log) * (p_log - q_log)).sum(-1)                  # [window - 1]
            if not np.isfinite(kl).all():
                raise ValueError("model or model_ref returned NaN or Inf logits: the KL divergence is undefined")
            total += kl.sum()
    return max(0.0, total / (n * (window - 1)))


def embedding_fidelity(model_ref, model_q, sentences) -> dict:
    """How well ``model_q``'s sentence embeddings match ``model_ref``'s, for a list of N >= 2 strings.

    Both models need ``embed(list[str]) -> [N, d]``. Returns

    - ``cosine``: float64 ``[N]``, cosine of each sentence's embedding under ``model_q`` to its
      embedding under ``model_ref``; ``cosine_mean``, ``cosine_min``: their mean and minimum;
    - ``nn_agreement``: the fraction of sentences whose nearest *other* sentence (highest cosine,
      first index on a tie) is the same under both models; 1.0 for a perfect copy.

    Raises TypeError for ``sentences`` not a list of str, ValueError for fewer than 2 sentences, a
    shape mismatch between the two embeddings, a non-finite or all-zero embedding.
    """
    if not isinstance(sentences, (list, tuple)) or not all(isinstance(s, str) for s in sentences):
        raise TypeError("sentences must be a list of str")
    if len(sentences) < 2:
        raise ValueError(f"sentences must hold at least 2 sentences (nearest neighbours), got {len(sentences)}")
    E = {}
    for name, m in (("model_ref", model_ref), ("model_q", model_q)):
        X = np.asarray(m.embed(list(sentences)), dtype=np.float64)                      # [N, d]
        if X.ndim != 2 or X.shape[0] != len(sentences):
            raise ValueError(f"{name}.embed returned shape {X.shape}, expected [{len(sentences)}, d]")
        if not np.isfinite(X).all():
            raise ValueError(f"{name}.embed returned NaN or Inf")
        norms = np.linalg.norm(X, axis=1, keepdims=True)
        if (norms == 0).any():
            raise ValueError(f"{name}.embed returned an all-zero embedding (cosine undefined)")
        E[name] = X / norms                                                             # unit rows
    A, B = E["model_ref"], E["model_q"]
    if A.shape != B.shape:
        raise ValueError(f"embedding shapes differ: model_ref {A.shape}, model_q {B.shape}")
    cos = np.sum(A * B, axis=1)                                                        # [N]

    def nearest(U):
        S = U @ U.T                                                                    # [N, N] cosines
        np.fill_diagonal(S, -np.inf)                                                   # not itself
        return S.argmax(axis=1)

    agree = nearest(A) == nearest(B)
    return {"cosine": cos, "cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
            "nn_agreement": float(agree.mean())}
