"""A readable NumPy BERT encoder: sentences -> sentence embeddings, with pluggable weights.

all-MiniLM-L6-v2 is minq's second real model and its *true* float32 one (SmolLM2's float32 weights
are dequantized from a 4-bit GGUF file): a 6-layer BERT (Devlin et al., "BERT: Pre-training of Deep
Bidirectional Transformers", 2019) of hidden size 384 and 12 heads, distilled as in Wang et al.,
"MiniLM: Deep Self-Attention Distillation" (2020) and trained as a sentence encoder the Sentence-BERT
way (Reimers & Gurevych, "Sentence-BERT", 2019).
The quantization chapters use it to measure *embedding fidelity*: the cosine between the embedding of
a sentence under quantized weights and under the original float32 ones.

Input, for token ids ``t [T]`` (``[CLS] ... [SEP]``), positions ``0..T-1`` and segment 0:

    x_0 = LN(E_word[t] + E_pos[0..T-1] + E_type[0])

One post-LN encoder layer (bidirectional attention: every token sees every real token, none of the
padding):

    h = LN(x + Wo · attention(Wq · x + bq, Wk · x + bk, Wv · x + bv) + bo)          12 heads of 32
    y = LN(h + Wout · gelu(Win · h + bin) + bout)                                      MLP 384 -> 1536 -> 384

    LN(x) = (x - mean(x)) / sqrt(var(x) + eps) * gamma + beta                          LayerNorm, eps 1e-12
    gelu(x) = x/2 · (1 + erf(x / sqrt(2)))                                             exact (erf) GELU

Sentence embedding (the sentence-transformers pipeline Transformer -> Pooling -> Normalize):

    e = sum_t mask[t] · y_L[t] / sum_t mask[t]        mean pooling over the real tokens
    e = e / max(||e||_2, 1e-12)                       L2 normalisation (``normalize=True``)

so that the cosine of two normalised embeddings is their dot product.

Weights: every linear ``W [out, in]`` lives in ``model.weights`` under a name like
``layer.0.attention.query`` (``query``, ``key``, ``value``, ``output`` of the attention;
``layer.0.intermediate`` and ``layer.0.output`` of the MLP), as an object of the quantized-weight
protocol (``DenseWeight`` for float32); its bias stays float32 in ``model.biases`` under the same
name. ``model.with_weights({name: Wq})`` returns the same model with other weight objects, exactly as
``LlamaModel.with_weights``; each weight is dequantized once, when the model is built.

Calibration hooks, the interface of ``minq.models.llama`` (PTQ's W8A8 and LLM.int8 run on it): every
linear runs through ``model._linear``, which calls hooks ``{name: fn}`` on its input::

    fn(name: str, X: float32 [real tokens, in], read-only) -> None | replacement X' [real tokens, in]

Unlike the decoder, a padded batch has rows that are no token: a hook sees the rows of the *real*
tokens only (batch after batch, position after position), so that calibration statistics and
per-batch decisions (LLM.int8's outlier columns) are those of the text; padding rows keep their float
input. ``forward``, ``embed`` and ``layer`` take ``hooks=``; ``capture_inputs(ids, names, mask)``
returns the inputs of the chosen linears. Linears that read the same input (query, key, value) are
handed the same array.

Tokenizer: WordPiece from ``tokenizer.json`` (the ``tokenizers`` library), lower-casing, ``[CLS]``
and ``[SEP]`` added, truncated to ``max_seq_length`` tokens as sentence-transformers'
``sentence_bert_config.json`` says (256 for all-MiniLM-L6-v2; the file is one of the cached asset
files). tokenizer.json itself says 128 and pads to 128; both settings are replaced here — padding is
done per batch, to the longest sentence.
"""

from __future__ import annotations

import numpy as np

from minq._checks import check_int
from minq.models.base import capturing_hooks
from minq.models.bert_weights import LINEARS, MAX_SEQ_LENGTH, BertConfig, BertWeights
from minq.models.tokenizer import _check_texts

__all__ = ["BertConfig", "BertEncoder", "layer_norm", "softmax", "gelu", "erf", "mean_pool",
           "l2_normalize", "LINEARS", "MAX_SEQ_LENGTH"]


def layer_norm(x, gamma, beta, eps: float):
    """``x [..., d] -> (x - mean) / sqrt(var + eps) * gamma + beta`` (biased variance, float32)."""
    mu = x.mean(axis=-1, keepdims=True)
    xc = x - mu
    var = np.mean(xc * xc, axis=-1, keepdims=True)
    return xc / np.sqrt(var + np.float32(eps)) * gamma + beta


# Abramowitz & Stegun 7.1.26: erf(x) = 1 - (a1 t + a2 t^2 + ... + a5 t^5) e^{-x^2}, t = 1 / (1 + p x),
# for x >= 0, absolute error below 1.5e-7 (about one float32 ulp of values near 1).
_AS_P = 0.3275911
_AS_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)


def erf(x):
    """The error function, elementwise, with absolute error < 1.5e-7 (A&S 7.1.26; NumPy has no erf).

    Evaluated in float64, returned in ``x``'s float dtype; odd: ``erf(-x) = -erf(x)``.
    """
    x = np.asarray(x)
    a = np.abs(x).astype(np.float64)
    t = 1.0 / (1.0 + _AS_P * a)
    poly = t * (_AS_A[0] + t * (_AS_A[1] + t * (_AS_A[2] + t * (_AS_A[3] + t * _AS_A[4]))))  # Horner
    y = 1.0 - poly * np.exp(-a * a)
    return np.copysign(y, x).astype(x.dtype if x.dtype.kind == "f" else np.float64)


def softmax(s):
    """Softmax over the last axis (float32); ``-inf`` entries get probability 0."""
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def gelu(x):
    """Exact GELU ``x/2 · (1 + erf(x / sqrt 2))`` (Hendrycks & Gimpel, 2016), BERT's activation."""
    return np.float32(0.5) * x * (np.float32(1.0) + erf(x * np.float32(1.0 / np.sqrt(2.0))))


class BertEncoder(BertWeights):
    """A BERT sentence encoder. ``embed(texts) -> float32 [N, d]``; ``forward(ids, mask) -> [B, T, d]``.

    Its parameters (``config``, ``weights``, ``biases``, ``norms``, ``embeddings``, ``tokenizer``; loading
    with ``from_safetensors``, swapping with ``with_weights``) are those of ``BertWeights``
    (``minq.models.bert_weights``); this class is the forward.
    """

    # --- forward ------------------------------------------------------------------------------------

    def _linear(self, name: str, x, hooks=None, real=None, X_real=None):
        """``x [..., in] -> x · W^T + b  [..., out]`` (one 2-D BLAS matmul over all the rows).

        hooks {name: fn}: ``fn(name, X_real)`` sees the rows ``real`` (flat indices of the real tokens;
        None: all rows) of ``X = x`` as ``[tokens, in]``, read-only; an array it returns replaces those
        rows. ``X_real``: those rows already gathered (the linears that read one input share it).
        """
        W = self._dense[name]                                                      # [out, in]
        X = x.reshape(-1, x.shape[-1])                                             # [rows, in]
        if hooks and name in hooks:
            if X_real is None:
                X_real = _real_rows(X, real)
            r = hooks[name](name, X_real)
            if r is not None:
                r = np.asarray(r, dtype=np.float32)
                if r.shape != X_real.shape:
                    raise ValueError(f"hook for {name!r} returned shape {r.shape}, expected the input's {X_real.shape}")
                if real is None:
                    X = r
                else:
                    X = X.copy()
                    X[real] = r
        y = X @ W.T                                                                # [rows, out]
        y += self.biases[name]
        return y.reshape(*x.shape[:-1], W.shape[0])

    def layer(self, i: int, x, key_bias, hooks=None, real=None):
        """Encoder layer ``i``: ``x [B, T, d] -> [B, T, d]``; ``key_bias [B, 1, 1, T]`` is 0 on real
        tokens and -inf on padding (added to the attention scores). ``hooks``, ``real``: see ``_linear``."""
        c = self.config
        B, T, d = x.shape
        nh, hd = c.n_heads, c.head_dim
        p = f"layer.{i}."

        X_real = _real_rows(x.reshape(-1, d), real) if hooks else None            # shared by q, k, v
        q, k, v = (_heads(self._linear(p + n, x, hooks, real, X_real), nh)         # [B, nh, T, hd] each
                   for n in ("attention.query", "attention.key", "attention.value"))
        s = q @ k.swapaxes(-1, -2)                                                 # [B, nh, T, T]
        s *= np.float32(1.0 / np.sqrt(hd))
        s += key_bias                                                              # no token sees padding
        a = softmax(s) @ v                                                         # [B, nh, T, hd]
        a = a.transpose(0, 2, 1, 3).reshape(B, T, d)                               # [B, T, d]
        g, b = self.norms[p + "attention"]
        h = layer_norm(x + self._linear(p + "attention.output", a, hooks, real), g, b, c.norm_eps)  # post-LN

        m = gelu(self._linear(p + "intermediate", h, hooks, real))                 # [B, T, hidden]
        g, b = self.norms[p + "output"]
        return layer_norm(h + self._linear(p + "output", m, hooks, real), g, b, c.norm_eps)    # [B, T, d]

    def forward(self, ids, mask=None, *, hooks=None):
        """Last hidden states, float32 ``[B, T, d]``, of token ids ``ids [B, T]`` (or ``[T]`` -> ``[T, d]``).

        ``mask [B, T]`` (bool or 0/1) marks the real tokens; padding positions get outputs too, but no
        real token attends to them. ``hooks``: see the module docstring. Raises TypeError for
        non-integer ids, ValueError for empty ids, ids outside ``[0, vocab_size)``, more than
        ``max_position`` tokens, a mask of another shape or with a row of no real token, or hooks
        naming unknown linears.
        """
        hooks = self._check_hooks(hooks)
        ids = np.asarray(ids)
        if ids.ndim not in (1, 2) or ids.size == 0:
            raise ValueError(f"ids must be a non-empty [T] or [B, T] array of token ids, got shape {ids.shape}")
        if ids.dtype.kind not in "iu":
            raise TypeError(f"ids must be integer token ids, got dtype {ids.dtype}")
        c = self.config
        bad = (ids < 0) | (ids >= c.vocab_size)
        if bad.any():
            raise ValueError(f"ids out of range [0, {c.vocab_size}): {ids[bad][:5].tolist()}")
        if ids.shape[-1] > c.max_position:
            raise ValueError(f"ids has {ids.shape[-1]} tokens, more than the {c.max_position} positions")
        squeeze = ids.ndim == 1
        ids = ids[None] if squeeze else ids                                        # [B, T]
        mask = np.ones(ids.shape, bool) if mask is None else np.asarray(mask)
        mask = mask[None] if squeeze and mask.ndim == 1 else mask
        if mask.shape != ids.shape:
            raise ValueError(f"mask must have the shape of ids {ids.shape}, got {mask.shape}")
        mask = mask.astype(bool)
        if not mask.any(axis=1).all():
            raise ValueError("mask has a row with no real token")
        B, T = ids.shape

        e = self.embeddings
        x = e["word"][ids] + e["position"][:T] + e["token_type"][0]               # [B, T, d] (segment 0)
        x = layer_norm(x, *self.norms["embeddings"], c.norm_eps)
        key_bias = np.where(mask, np.float32(0), np.float32(-np.inf))[:, None, None, :]  # [B, 1, 1, T]
        real = None if mask.all() else np.flatnonzero(mask.reshape(-1))            # rows the hooks see
        for i in range(c.n_layers):
            x = self.layer(i, x, key_bias, hooks, real)
        return x[0] if squeeze else x

    def capture_inputs(self, ids, names, mask=None, *, hooks=None) -> dict:
        """The inputs of the linears ``names`` in the forward of ``ids [T]`` or ``[B, T]`` (``mask`` as in
        ``forward``): ``{name: X float32 [real tokens, in]}``, read-only; query/key/value share one
        array. ``hooks`` run first (what they return is captured). Raises ValueError for no or unknown
        names, and as ``forward``."""
        names = list(names)
        if not names:
            raise ValueError("names must name at least one linear; see model.linear_names()")
        self._check_hooks(hooks)
        hooks, X = capturing_hooks(names, hooks)
        self.forward(ids, mask, hooks=hooks)
        return {n: X[n] for n in names}

    def embed(self, texts, normalize: bool = True, batch_size: int = 32, *, hooks=None):
        """Sentence embeddings, float32 ``[N, d]``, of ``texts`` (a list of N str; one str gives N = 1).

        Each sentence is tokenized (truncated to ``config.max_seq_length`` tokens), encoded, mean-pooled
        over its real tokens and, with ``normalize`` (the default, as all-MiniLM-L6-v2's pipeline
        does), scaled to unit L2 norm. Sentences run in batches of ``batch_size`` of similar length
        (sorted, as sentence-transformers does, so little padding is computed); the result is in the
        order of ``texts``. ``hooks`` go to ``forward`` (batch by batch). Raises ValueError naming
        ``texts`` when it, or one of its strings, is empty, TypeError when it is not a str / list of str.
        """
        texts = _check_texts(texts)
        batch_size = check_int(batch_size, "batch_size", lo=1)
        order = np.argsort([-len(t) for t in texts], kind="stable")               # longest first
        out = np.empty((len(texts), self.config.dim), np.float32)                  # [N, d]
        for start in range(0, len(texts), batch_size):
            idx = order[start:start + batch_size]
            ids, mask = self.tokenizer.batch([texts[i] for i in idx])              # [B, T], [B, T]
            y = self.forward(ids, mask, hooks=hooks)                               # [B, T, d]
            out[idx] = mean_pool(y, mask)                                          # [B, d]
        return l2_normalize(out) if normalize else out


def _real_rows(X, real):
    """The rows ``real`` of ``X [rows, in]`` (all of them when None), as a read-only array for hooks."""
    Xr = X.view() if real is None else X[real]
    Xr.flags.writeable = False
    return Xr


def mean_pool(y, mask):
    """``y [B, T, d]``, ``mask [B, T]`` -> the mean of ``y`` over the real tokens, ``[B, d]``."""
    m = mask.astype(np.float32)[..., None]                                         # [B, T, 1]
    return (y * m).sum(axis=1) / np.maximum(m.sum(axis=1), np.float32(1e-9))


def l2_normalize(e):
    """Rows of ``e [N, d]`` scaled to unit L2 norm (a zero row stays zero)."""
    n = np.linalg.norm(e, axis=-1, keepdims=True)
    return (e / np.maximum(n, np.float32(1e-12))).astype(np.float32)


def _heads(y, nh: int):
    """``y [B, T, nh * hd] -> [B, nh, T, hd]``, made contiguous: NumPy's stacked matmul calls BLAS only
    on contiguous matrices (on the transposed view it runs a loop ~30x slower)."""
    B, T, d = y.shape
    return np.ascontiguousarray(y.reshape(B, T, nh, d // nh).transpose(0, 2, 1, 3))


