"""A readable NumPy Llama: token ids -> logits, with pluggable weights, calibration hooks and a KV cache.

One decoder block (Touvron et al., "LLaMA", 2023), for hidden states ``x [T, d]``:

    h = x + Wo · attention(RoPE(Wq · rms(x)), RoPE(Wk · rms(x)), Wv · rms(x))     causal, GQA
    y = h + Wdown · (silu(Wgate · rms(h)) * (Wup · rms(h)))                          SwiGLU MLP

    rms(x) = x / sqrt(mean(x^2) + eps) * gamma                                       RMSNorm
    attention(q, k, v) = softmax(q k^T / sqrt(hd) + mask) v       mask: -inf where a key comes later
    logits = rms(x_L) · E^T                       tied embeddings: the output head is E [vocab, d]

RoPE (Su et al., "RoFormer", 2021) rotates, in every head, the pair ``(x[i], x[i + hd/2])`` (the
*half-split* convention of Hugging Face checkpoints; ``minq.gguf`` converts GGUF's interleaved rows
to it) by the angle ``pos * theta^(-2i/hd)``. Grouped-query attention (Ainslie et al., 2023): the
``n_head`` query heads share ``n_kv_head`` key/value heads, ``g = n_head / n_kv_head`` queries each.
SwiGLU: Shazeer, "GLU Variants Improve Transformer", 2020.

Engines (``engine=`` of ``logits``, ``run_block``, ``head``, ``capture_inputs``): ``"reference"`` runs
the functions of this file, plain NumPy on one Python thread — the code to read and to step through in
a debugger; ``"fast"`` (the default: calibration and the benchmarks run it) runs ``minq.runtime.
llama_fast``, the same math on fused layouts, threads and Numba kernels. tests/runtime/ proves them equal.

Weights: every linear ``W [out, in]`` is ``model.weights["blk.3.attn_q"]`` (..., ``"blk.3.ffn_down"``),
an object of the quantized-weight protocol (``minq.models.weights``; ``DenseWeight`` for float32).
``model.with_weights({name: Wq})`` is the same model with other weight objects — a quantized model is
nothing more. The config, loading and weight swaps live in ``minq.models.llama_weights``
(``LlamaWeights``, this model's base class); the linears that read one input are one matmul on their
row-stacked weights (``[Wq; Wk; Wv]``, ``[Wgate; Wup]``: ``GROUPS``), dequantized once at model build.

KV cache (``minq.kvcache.KVCache``, shared by both engines): ``model.logits(chunk, cache=c)``
continues the cached sequence, and equals the full forward on the concatenated ids.

Calibration (PTQ, GPTQ and AWQ build on it without knowing Llama): every linear runs through
``model._linear``, which calls *hooks* ``{name: fn}`` on its input, once per forward::

    fn(name: str, X: float32 [tokens, in], read-only) -> None | replacement X' [tokens, in]

``tokens`` is ``B * T`` for ids ``[B, T]``. ``None`` only observes (statistics, Hessians ``X^T X``); an
array feeds that linear ``X'`` instead (simulated activation quantization). On top of them,
``model.capture_inputs(ids, names) -> {name: X}``, and block by block (GPTQ's sequential order)::

    x = model.embed(ids); x = model.run_block(i, x, hooks=...); logits = model.head(x)

Notebooks 04 (PTQ), 06 (GPTQ) and 07 (AWQ) quantize SmolLM2 through this model.
"""

from __future__ import annotations

import numpy as np

from minq._checks import check_hooks
from minq.kvcache import KVCache
from minq.models.base import capturing_hooks
from minq.models.llama_weights import GROUPS, LINEARS, LlamaConfig, LlamaWeights
from minq.models.weights import DenseWeight

__all__ = ["LlamaConfig", "DenseWeight", "KVCache", "LlamaModel", "rms_norm", "rope_tables", "rope", "swiglu",
           "softmax", "causal_mask", "attention", "split_heads", "LINEARS", "GROUPS", "ENGINES"]

ENGINES = ("fast", "reference")     # the values of engine=: "fast" is minq.runtime.llama_fast


# --- the pieces of a block ---------------------------------------------------------------------------


def rms_norm(x, gamma, eps: float):
    """``x [..., d] -> x / sqrt(mean(x^2) + eps) * gamma`` (float32)."""
    ms = np.mean(x * x, axis=-1, keepdims=True)                                    # [..., 1]
    return x * (np.float32(1.0) / np.sqrt(ms + np.float32(eps))) * gamma


def rope_tables(positions, head_dim: int, theta: float):
    """cos, sin ``[T, head_dim/2]`` of the angles ``pos * theta^(-2i/head_dim)`` (computed in float64)."""
    inv_freq = theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)    # [hd/2]
    ang = np.asarray(positions, np.float64)[:, None] * inv_freq[None, :]              # [T, hd/2]
    return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)


def rope(x, cos, sin):
    """Rotate the half-split pairs ``(x[i], x[i + hd/2])`` of ``x [..., T, hd]`` by the angles of ``cos, sin [T, hd/2]``.

    ``cos, sin`` may be any shape that broadcasts against ``x[..., :hd/2]``. Returns a new C-contiguous
    float32 array of ``x``'s shape (so a transposed view ``x`` gives the rotated values in that layout).
    """
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def swiglu(gate, up):
    """``silu(gate) * up = gate / (1 + exp(-gate)) * up``, elementwise (float32)."""
    return gate / (np.float32(1.0) + np.exp(-gate)) * up


def softmax(s):
    """Softmax over the last axis (float32); ``-inf`` scores get probability 0."""
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def causal_mask(T: int, S: int):
    """``[T, S]`` True where key ``j`` comes after query ``i``, for queries at the last ``T`` of ``S`` positions."""
    return np.arange(S)[None, :] > np.arange(S - T, S)[:, None]


def split_heads(x, n: int):
    """``x [B, T, n * hd] -> [B, n, T, hd]`` (a view): the ``n`` heads side by side in ``x``, one by one."""
    B, T, _ = x.shape
    return x.reshape(B, T, n, -1).transpose(0, 2, 1, 3)


def attention(q, k, v, kq=None, vq=None, qstart=None):
    """Causal grouped-query attention ``softmax(q k^T / sqrt(hd) + mask) v`` of ``T`` queries to ``S`` keys.

    ``q [B, n_head, T, hd]``: the last ``T`` positions of the sequence; ``k, v [B, n_kv, S, hd]``: all
    ``S >= T`` of them. Query head ``h`` reads KV head ``h // g``, ``g = n_head / n_kv``. Returns
    ``[B, n_head, T, hd]`` float32. From a quantized cache (``minq.kvcache.KVRead``): query ``r`` reads
    keys and values ``j < qstart[r]`` from ``kq, vq [B, n_kv, Q, hd]`` instead of ``k, v``.
    """
    B, nh, T, hd = q.shape
    nkv, S = k.shape[1], k.shape[2]
    g = nh // nkv
    q = q.reshape(B, nkv, g * T, hd)                     # the g query heads of each KV head, stacked
    s = (q @ k.swapaxes(-1, -2)).reshape(B, nkv, g, T, S) * np.float32(1.0 / np.sqrt(hd))   # scores
    if kq is not None:                                   # quantized below each query's boundary
        Q = kq.shape[2]
        use_q = np.arange(Q)[None, :] < np.asarray(qstart)[:, None]                         # [T, Q]
        sq = (q @ kq.swapaxes(-1, -2)).reshape(B, nkv, g, T, Q) * np.float32(1.0 / np.sqrt(hd))
        s[..., :Q] = np.where(use_q, sq, s[..., :Q])
    s = np.where(causal_mask(T, S), -np.inf, s)          # no query sees a later key
    p = softmax(s)                                       # probabilities [B, nkv, g, T, S]
    if vq is None:
        return (p.reshape(B, nkv, g * T, S) @ v).reshape(B, nh, T, hd)    # [B, nkv, g·T, hd] -> [B, nh, T, hd]
    pq, pf = np.where(use_q, p[..., :Q], 0), p.copy()
    pf[..., :Q] = np.where(use_q, 0, p[..., :Q])         # p split: read quantized | read float
    out = pq.reshape(B, nkv, g * T, Q) @ vq + pf.reshape(B, nkv, g * T, S) @ v
    return out.reshape(B, nh, T, hd)


def _matmul(X, W):
    """``X [tokens, in] @ W [out, in]^T`` (the reference engine's linear)."""
    return X @ W.T


def _packed_matmul(X, W):
    """``X @ W_hat^T`` of a packed group (``minq.runtime.packed.PackedGroup``), through its kernels."""
    return W.matmul(X)


class LlamaModel(LlamaWeights):
    """A Llama decoder. ``logits(ids [T] or [B, T]) -> float32 [T, vocab] or [B, T, vocab]``.

    Its parameters (``config``, ``weights``, ``norms``, ``embedding``, ``output``, ``tokenizer``; loading
    with ``from_gguf``, swapping with ``with_weights`` / ``with_norms``) are those of ``LlamaWeights``
    (``minq.models.llama_weights``); this class is the forward.
    """

    # --- the reference engine: one block, the head, a linear ---------------------------------------

    def block(self, i: int, x, cos, sin, cache=None, hooks=None):
        """Decoder block ``i``: ``x [B, T, d] -> [B, T, d]`` at the positions of ``cos, sin [T, hd/2]``.

        Without ``cache`` those positions are ``0 .. T-1``; with it, ``cache.length ...`` and the
        block's keys and values are appended to it. ``hooks``: see ``_linear``. ``x`` is not modified.
        """
        c, p = self.config, f"blk.{i}."
        B, T, d = x.shape
        n = rms_norm(x, self.norms[p + "attn_norm"], c.norm_eps)
        qkv = self._linear((p + "attn_q", p + "attn_k", p + "attn_v"), n, hooks)   # [B, T, d + 2 kv]
        q, k, v = np.split(qkv, [d, d + c.n_kv_heads * c.head_dim], axis=-1)
        q = rope(split_heads(q, c.n_heads), cos, sin)                         # [B, nh, T, hd]
        k = rope(split_heads(k, c.n_kv_heads), cos, sin)                      # [B, nkv, T, hd]
        v = split_heads(v, c.n_kv_heads)
        kq = vq = qstart = None
        if cache is not None:
            k, v, kq, vq, qstart = cache.append(i, k, v)                      # [B, nkv, S, hd]: with the cached
        a = attention(q, k, v, kq, vq, qstart)                                # [B, nh, T, hd]
        a = a.transpose(0, 2, 1, 3).reshape(B, T, d)                          # -> [B, T, d]
        h = x + self._linear((p + "attn_output",), a, hooks)
        n = rms_norm(h, self.norms[p + "ffn_norm"], c.norm_eps)
        gu = self._linear((p + "ffn_gate", p + "ffn_up"), n, hooks)            # [B, T, 2 hidden]
        m = swiglu(gu[..., :c.hidden_dim], gu[..., c.hidden_dim:])            # [B, T, hidden]
        return h + self._linear((p + "ffn_down",), m, hooks)                  # [B, T, d]

    def _head(self, x):
        """``x [..., d] -> logits [..., vocab]``: the final RMSNorm and the output projection."""
        n = rms_norm(x, self.norms["output_norm"], self.config.norm_eps)             # [..., d]
        return self._head_matmul(n.reshape(-1, n.shape[-1]), _matmul).reshape(*n.shape[:-1], -1)   # [..., vocab]

    def _linear(self, names: tuple, x, hooks=None, *, matmul=_matmul):
        """``x [..., in] -> x W^T [..., out]`` for the linears ``names`` (a group of ``GROUPS``) that read ``x``.

        Several names give their outputs side by side (``[..., out_1 + out_2 + ...]``), from one GEMM
        on the row-stacked weights (``matmul(X, W)``: the fast engine passes its threaded GEMM). Each
        hook of ``hooks`` {name: fn} is called as ``fn(name, X)`` with ``X = x`` as a read-only
        ``[tokens, in]`` view; an array it returns replaces the input of that linear alone (then each
        linear of the group runs its own GEMM). Raises ValueError for a replacement of another shape.
        """
        X = x.reshape(-1, x.shape[-1])                                              # [tokens, in]
        W = self._W[names]                                                          # [out, in]
        if not isinstance(W, np.ndarray):         # a packed group (model.packed()): its own kernels
            matmul = _packed_matmul
        Xs = [X] * len(names)
        if hooks:
            X.flags.writeable = False  # a hook sees, and may keep, the input; it must not change it
            for j, name in enumerate(names):
                if name in hooks:
                    r = hooks[name](name, X)
                    if r is not None:
                        Xs[j] = np.asarray(r, dtype=np.float32)
                        if Xs[j].shape != X.shape:
                            raise ValueError(f"hook for {name!r} returned shape {Xs[j].shape}, "
                                             f"expected the input's {X.shape}")
        if all(Xj is X for Xj in Xs):
            Y = matmul(X, W)                                                        # one GEMM per group
        else:
            rows = np.cumsum([0] + [self._expected_shape(n)[0] for n in names])
            Y = np.concatenate([matmul(Xj, W[a:b]) for Xj, a, b in zip(Xs, rows, rows[1:])], axis=1)
        return Y.reshape(*x.shape[:-1], W.shape[0])

    # --- the forward, on either engine ----------------------------------------------------------------

    def embed(self, ids):
        """``ids [T] or [B, T] -> x float32 [T, d] or [B, T, d]``, the input of block 0 (ids checked as in ``logits``)."""
        ids, _ = self._check_ids(ids, None)
        return self._embed_rows(ids)

    def run_block(self, i: int, x, *, hooks=None, engine: str = "fast"):
        """Block ``i`` on a full window: ``x [T, d] or [B, T, d] -> same shape``, positions ``0 .. T-1``.

        ``head(run_block(L-1, ... run_block(0, embed(ids))))`` equals ``logits(ids)``. ``x`` is not
        modified. Raises ValueError for a bad block index, a bad ``x`` shape, unknown hook names or an
        unknown ``engine``.
        """
        block, _ = self._engine(engine)
        self._check_block(i)
        hooks = self._check_hooks(hooks)
        x = np.asarray(x, dtype=np.float32)
        if x.ndim not in (2, 3) or x.shape[-1] != self.config.dim or x.shape[-2] == 0:
            raise ValueError(f"x must be [T, {self.config.dim}] or [B, T, {self.config.dim}] with T > 0, "
                             f"got shape {x.shape}")
        if x.shape[-2] > self.config.context_length:
            raise ValueError(f"x of {x.shape[-2]} positions exceeds the context length {self.config.context_length}")
        cos, sin = rope_tables(np.arange(x.shape[-2]), self.config.head_dim, self.config.rope_theta)
        y = block(i, x if x.ndim == 3 else x[None], cos, sin, None, hooks)
        return y if x.ndim == 3 else y[0]

    def head(self, x, *, engine: str = "fast"):
        """``x [..., d] -> logits [..., vocab]``: the final RMSNorm and the output projection (``engine``: as
        in ``logits``)."""
        return self._engine(engine)[1](x)

    def logits(self, ids, cache: KVCache | None = None, *, last_only: bool = False, hooks=None,
               engine: str = "fast"):
        """Next-token logits, float32 ``[T, vocab]`` for ``ids [T]`` or ``[B, T, vocab]`` for ``ids [B, T]``.

        With ``cache``, ``ids`` continue the cached sequence (positions ``cache.length ...``) and the
        cache is extended. ``last_only=True`` computes the logits of the last position only (shape
        ``[1, vocab]`` / ``[B, 1, vocab]``), as generation needs. ``hooks``: see the module docstring.
        ``engine``: ``"fast"`` or ``"reference"`` (see the module docstring). Raises TypeError for
        non-integer ids, ValueError for empty ids, ids outside ``[0, vocab_size)``, a sequence longer than
        the context length, hooks naming unknown linears or an unknown engine.
        """
        block, head = self._engine(engine)
        ids, start = self._check_ids(ids, cache)
        hooks = self._check_hooks(hooks)
        squeeze = ids.ndim == 1
        ids = ids[None] if squeeze else ids                                           # [B, T]
        T = ids.shape[1]
        cos, sin = rope_tables(np.arange(start, start + T), self.config.head_dim, self.config.rope_theta)
        x = self._embed_rows(ids)                                                     # [B, T, d]
        for i in range(self.config.n_layers):
            x = block(i, x, cos, sin, cache, hooks)
        out = head(x[:, -1:] if last_only else x)                                     # [B, T or 1, vocab]
        return out[0] if squeeze else out

    def capture_inputs(self, ids, names, *, hooks=None, engine: str = "fast") -> dict:
        """The inputs of the linears ``names`` in the forward of ``ids``: ``{name: X float32 [tokens, in]}``.

        ``tokens`` is ``T`` for ids ``[T]`` and ``B * T`` (window after window) for ``[B, T]``. The
        arrays are read-only (linears that share an input return the same array). The forward stops
        after the last block it needs. ``hooks`` run first (what they return is what is captured: an
        activation quantizer's output). ``engine``: as in ``logits``. Raises ValueError for unknown names
        or engine, and as ``logits`` for bad ids.
        """
        block, _ = self._engine(engine)
        names = list(names)
        if not names:
            raise ValueError("names must name at least one linear; see model.linear_names()")
        self._check_hooks(hooks)
        hooks, X = capturing_hooks(names, hooks)
        hooks = self._check_hooks(hooks)
        ids, _ = self._check_ids(ids, None)
        x = self._embed_rows(ids if ids.ndim == 2 else ids[None])                     # [B, T, d]
        cos, sin = rope_tables(np.arange(x.shape[1]), self.config.head_dim, self.config.rope_theta)
        for i in range(1 + max(int(n.split(".")[1]) for n in names)):
            x = block(i, x, cos, sin, None, hooks)
        return {n: X[n] for n in names}

    def run_linears(self, ids, hooks) -> None:
        """The model protocol's calibration forward: ``embed`` and the blocks up to the last one with a
        hooked linear (fast engine), calling ``hooks`` on the linears' inputs; no output head."""
        hooks = self._check_hooks(hooks)
        if not hooks:
            raise ValueError("hooks must name at least one linear; see model.linear_names()")
        x = self.embed(ids if np.ndim(ids) == 2 else np.asarray(ids)[None])                   # [B, T, d]
        for i in range(1 + max(int(n.split(".")[1]) for n in hooks)):
            x = self.run_block(i, x, hooks=hooks)

    def new_cache(self) -> KVCache:
        return KVCache(self.config.n_layers)

    # --- plumbing: checks, engines -------------------------------------------------------------------

    def _check_ids(self, ids, cache):
        ids = np.asarray(ids)
        if ids.ndim not in (1, 2) or ids.size == 0:
            raise ValueError(f"ids must be a non-empty [T] or [B, T] array of token ids, got shape {ids.shape}")
        if ids.dtype.kind not in "iu":
            raise TypeError(f"ids must be integer token ids, got dtype {ids.dtype}")
        bad = (ids < 0) | (ids >= self.config.vocab_size)
        if bad.any():
            raise ValueError(f"ids out of range [0, {self.config.vocab_size}): {ids[bad][:5].tolist()}")
        start = 0 if cache is None else cache.length
        if start + ids.shape[-1] > self.config.context_length:
            raise ValueError(f"sequence of {start + ids.shape[-1]} positions (ids length {ids.shape[-1]}"
                             f" + {start} cached) exceeds the context length {self.config.context_length}")
        return ids.astype(np.int64), start

    def _check_hooks(self, hooks):
        return check_hooks(hooks, self.weights)

    def _engine(self, engine):
        """``(block, head)``: the functions ``engine`` (one of ``ENGINES``) runs the forward with."""
        if engine == "reference":
            return self.block, self._head
        if engine == "fast":
            from minq.runtime import llama_fast  # on first use: the reference never loads the runtime

            return (lambda *args: llama_fast.block(self, *args)), (lambda x: llama_fast.head(self, x))
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
