"""A readable NumPy Llama forward pass: token ids -> logits, with pluggable weights and KV cache.

One decoder block (Touvron et al., "LLaMA", 2023), for hidden states ``x [T, d]``:

    h = x + Wo · attention(RoPE(Wq · rms(x)), RoPE(Wk · rms(x)), Wv · rms(x))     causal, GQA
    y = h + Wdown · (silu(Wgate · rms(h)) * (Wup · rms(h)))                          SwiGLU MLP

    rms(x) = x / sqrt(mean(x^2) + eps) * gamma                                       RMSNorm
    logits = rms(x_L) · E^T                       tied embeddings: the output head is E [vocab, d]

RoPE (Su et al., "RoFormer", 2021) rotates, in every head, the pair ``(x[i], x[i + d/2])`` (the
*half-split* convention of Hugging Face checkpoints; ``minq.gguf`` converts GGUF's interleaved rows
to it) by the angle ``pos * theta^(-2i/d)``. Grouped-query attention (Ainslie et al., 2023): the
``n_head`` query heads share ``n_kv_head`` key/value heads, ``n_head / n_kv_head`` queries each.

Weights: every linear ``W [out, in]`` lives in ``model.weights`` under a name like ``blk.3.attn_q`` or
``blk.3.ffn_down``, as an object of the quantized-weight protocol (``dequantize()``, ``shape``,
``nbytes``, ``bits_per_weight``; ``DenseWeight`` for float32). ``model.with_weights({name: Wq})``
returns the same model with other weight objects — a quantized model is nothing more. Each weight is
dequantized once, when the model is built, and the forward runs float32 BLAS matmuls.

KV cache: ``KVCache`` holds the keys/values of the tokens seen so far; ``model.logits(chunk, cache=c)``
continues from them, and equals the full forward on the concatenated ids (tests/test_llama.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["LlamaConfig", "DenseWeight", "KVCache", "LlamaModel", "rms_norm", "rope", "LINEARS"]

# The linears of one block, in the order the forward uses them.
LINEARS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


@dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int
    dim: int              # d, hidden size
    n_layers: int
    n_heads: int
    n_kv_heads: int
    hidden_dim: int       # MLP width
    norm_eps: float
    rope_theta: float
    context_length: int

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @classmethod
    def from_gguf_metadata(cls, md: dict) -> LlamaConfig:
        a = md["general.architecture"]
        n_heads = int(md[f"{a}.attention.head_count"])
        tokens = md.get("tokenizer.ggml.tokens")
        return cls(
            vocab_size=int(md.get(f"{a}.vocab_size", len(tokens) if tokens is not None else 0)),
            dim=int(md[f"{a}.embedding_length"]),
            n_layers=int(md[f"{a}.block_count"]),
            n_heads=n_heads,
            n_kv_heads=int(md.get(f"{a}.attention.head_count_kv", n_heads)),
            hidden_dim=int(md[f"{a}.feed_forward_length"]),
            norm_eps=float(md[f"{a}.attention.layer_norm_rms_epsilon"]),
            rope_theta=float(md.get(f"{a}.rope.freq_base", 10000.0)),
            context_length=int(md[f"{a}.context_length"]),
        )


class DenseWeight:
    """A float32 weight ``W [out, in]`` in the quantized-weight protocol (32 bits per weight).

    ``dequantize()`` returns the stored array itself (read-only), not a copy.
    """

    def __init__(self, W):
        W = np.array(W, dtype=np.float32, order="C")  # own copy, so freezing it touches no caller array
        if W.ndim != 2:
            raise ValueError(f"W must be 2-D [out, in], got shape {W.shape}")
        W.setflags(write=False)
        self.W = W

    def dequantize(self):
        return self.W

    @property
    def shape(self):
        return self.W.shape

    @property
    def nbytes(self) -> int:
        return int(self.W.nbytes)

    @property
    def bits_per_weight(self) -> float:
        return 32.0

    def __repr__(self):
        return f"DenseWeight(shape={self.W.shape})"


class KVCache:
    """Keys and values of the positions processed so far, per layer: ``k, v [B, n_kv, S, head_dim]``.

    Storage grows by doubling (amortized O(1) per token). ``length`` is the number of cached positions;
    the next token's RoPE position is ``length``. The KV-cache chapter swaps in quantized variants of
    ``update``.
    """

    def __init__(self, n_layers: int):
        self.n_layers = n_layers
        self._k = [None] * n_layers
        self._v = [None] * n_layers
        self._len = [0] * n_layers

    @property
    def length(self) -> int:
        return self._len[-1]

    def update(self, layer: int, k, v):
        """Append ``k, v [B, n_kv, T, hd]`` to layer ``layer``; return all of them ``[B, n_kv, S+T, hd]``."""
        n, T = self._len[layer], k.shape[2]
        buf_k = self._k[layer]
        if buf_k is None or buf_k.shape[2] < n + T:
            cap = max(2 * (n + T), 16)
            new_k = np.empty((*k.shape[:2], cap, k.shape[3]), np.float32)
            new_v = np.empty_like(new_k)
            if buf_k is not None:
                if buf_k.shape[:2] != k.shape[:2]:
                    raise ValueError(f"cache holds batch/heads {buf_k.shape[:2]}, got k of shape {k.shape}")
                new_k[:, :, :n], new_v[:, :, :n] = buf_k[:, :, :n], self._v[layer][:, :, :n]
            self._k[layer], self._v[layer] = new_k, new_v
        self._k[layer][:, :, n:n + T] = k
        self._v[layer][:, :, n:n + T] = v
        self._len[layer] = n + T
        return self._k[layer][:, :, :n + T], self._v[layer][:, :, :n + T]

    @property
    def nbytes(self) -> int:
        """Bytes of the cached keys and values (not of the spare capacity)."""
        return sum(2 * k[:, :, :n].nbytes for k, n in zip(self._k, self._len) if k is not None)


def rms_norm(x, gamma, eps: float):
    """``x [..., d] -> x / sqrt(mean(x^2) + eps) * gamma`` (float32)."""
    ms = np.mean(x * x, axis=-1, keepdims=True)
    return x / np.sqrt(ms + np.float32(eps)) * gamma


def rope_tables(positions, head_dim: int, theta: float):
    """cos, sin ``[T, head_dim/2]`` of the angles ``pos * theta^(-2i/head_dim)`` (computed in float64)."""
    inv_freq = theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)    # [hd/2]
    ang = np.asarray(positions, np.float64)[:, None] * inv_freq[None, :]              # [T, hd/2]
    return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)


def rope(x, cos, sin):
    """Rotate the half-split pairs ``(x[i], x[i + hd/2])`` of ``x [..., T, hd]`` by the angles of ``cos, sin [T, hd/2]``."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def _silu_(x):
    """``x * sigmoid(x)``, in place (x is a fresh matmul output)."""
    e = np.exp(-x)
    e += np.float32(1.0)
    x /= e
    return x


def _softmax_(s):
    """Softmax over the last axis, in place."""
    s -= s.max(axis=-1, keepdims=True)
    np.exp(s, out=s)
    s /= s.sum(axis=-1, keepdims=True)
    return s


class LlamaModel:
    """A Llama decoder. ``logits(ids [T] or [B, T]) -> float32 [T, vocab] or [B, T, vocab]``.

    weights: {"blk.{i}.{linear}": quantized-weight object} for every linear of ``LINEARS``;
    norms:   {"blk.{i}.attn_norm" | "blk.{i}.ffn_norm" | "output_norm": float32 [d]};
    embedding: float32 [vocab, d] (also the output head unless ``output`` [vocab, d] is given).
    """

    def __init__(self, config: LlamaConfig, weights: dict, norms: dict, embedding, *, output=None,
                 tokenizer=None, _dense=None):
        self.config = config
        self.tokenizer = tokenizer
        self.norms = norms
        self.embedding = embedding
        self.output = output
        names = self.linear_names()
        if set(weights) != set(names):
            raise ValueError(f"weights must hold exactly the linears {names[:7]}...; missing "
                             f"{sorted(set(names) - set(weights))[:5]}, unknown {sorted(set(weights) - set(names))[:5]}")
        self.weights = dict(weights)
        dense = dict(_dense or {})
        for name in names:  # dequantize once; reuse what an unchanged weight object already produced
            if name not in dense:
                dense[name] = _dense_of(self.weights[name], name, self._expected_shape(name))
        self._dense = dense

    # --- construction -------------------------------------------------------------------------------

    @classmethod
    def from_gguf(cls, path, *, progress: bool = True) -> LlamaModel:
        """Load a Llama-architecture GGUF (any type gguf-py dequantizes) as a float32 model."""
        from minq.gguf import read_gguf
        from minq.tokenizer import Tokenizer

        g = read_gguf(path, progress=progress)
        cfg = LlamaConfig.from_gguf_metadata(g.metadata)
        t = g.tensors
        try:
            weights = {f"blk.{i}.{n}": DenseWeight(t.pop(f"blk.{i}.{n}.weight"))
                       for i in range(cfg.n_layers) for n in LINEARS}
            norms = {f"blk.{i}.{n}": t.pop(f"blk.{i}.{n}.weight")
                     for i in range(cfg.n_layers) for n in ("attn_norm", "ffn_norm")}
            norms["output_norm"] = t.pop("output_norm.weight")
            embedding = t.pop("token_embd.weight")                                 # [vocab, d]
        except KeyError as e:
            raise ValueError(f"{path}: tensor {e.args[0]!r} missing: not a complete Llama checkpoint") from e
        output = t.pop("output.weight", None)                                      # untied head, if any
        tok = Tokenizer.from_gguf_metadata(g.metadata)
        return cls(cfg, weights, norms, embedding, output=output, tokenizer=tok)

    def linear_names(self) -> list[str]:
        """Names of every linear weight, block by block: ``blk.0.attn_q``, ..., ``blk.{L-1}.ffn_down``."""
        return [f"blk.{i}.{n}" for i in range(self.config.n_layers) for n in LINEARS]

    def _expected_shape(self, name: str) -> tuple:
        c, kv = self.config, self.config.n_kv_heads * self.config.head_dim
        out_in = {"attn_q": (c.dim, c.dim), "attn_k": (kv, c.dim), "attn_v": (kv, c.dim),
                  "attn_output": (c.dim, c.dim), "ffn_gate": (c.hidden_dim, c.dim),
                  "ffn_up": (c.hidden_dim, c.dim), "ffn_down": (c.dim, c.hidden_dim)}
        return out_in[name.split(".")[-1]]

    def with_weights(self, new: dict) -> LlamaModel:
        """A new model whose weights ``new`` ({name: weight object}) replace the named ones; the others,
        the norms, the embedding and the tokenizer are shared. ``self`` is left unchanged.

        Raises ValueError naming unknown names or a weight whose ``shape`` does not match.
        """
        unknown = sorted(set(new) - set(self.weights))
        if unknown:
            raise ValueError(f"unknown weight names {unknown[:5]}; see model.linear_names()")
        dense = {n: a for n, a in self._dense.items() if n not in new}
        return LlamaModel(self.config, {**self.weights, **new}, self.norms, self.embedding,
                          output=self.output, tokenizer=self.tokenizer, _dense=dense)

    def new_cache(self) -> KVCache:
        return KVCache(self.config.n_layers)

    @property
    def nbytes(self) -> int:
        """Bytes of the linear weights as stored by their weight objects."""
        return sum(w.nbytes for w in self.weights.values())

    # --- forward ------------------------------------------------------------------------------------

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

    def embed(self, ids):
        """``ids [B, T] -> x [B, T, d]``."""
        return self.embedding[ids]

    def block(self, i: int, x, cos, sin, cache=None):
        """Decoder block ``i``: ``x [B, T, d] -> [B, T, d]`` at the positions of ``cos, sin [T, hd/2]``."""
        c, W = self.config, self._dense
        B, T, d = x.shape
        hd, nh, nkv = c.head_dim, c.n_heads, c.n_kv_heads
        p = f"blk.{i}."

        h = rms_norm(x, self.norms[p + "attn_norm"], c.norm_eps)                    # [B, T, d]
        q = (h @ W[p + "attn_q"].T).reshape(B, T, nh, hd).transpose(0, 2, 1, 3)      # [B, nh, T, hd]
        k = (h @ W[p + "attn_k"].T).reshape(B, T, nkv, hd).transpose(0, 2, 1, 3)     # [B, nkv, T, hd]
        v = (h @ W[p + "attn_v"].T).reshape(B, T, nkv, hd).transpose(0, 2, 1, 3)     # [B, nkv, T, hd]
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(i, k, v)                                             # [B, nkv, S, hd]
        S = k.shape[2]
        q = q.reshape(B, nkv, nh // nkv, T, hd)                   # queries grouped by their KV head
        s = q @ k[:, :, None].swapaxes(-1, -2)                                       # [B, nkv, g, T, S]
        s *= np.float32(1.0 / np.sqrt(hd))
        # causal mask: query t (absolute position S - T + t) sees keys 0 .. S - T + t
        s[..., np.arange(S)[None, :] > (S - T + np.arange(T))[:, None]] = -np.inf  # mask [T, S]
        a = _softmax_(s) @ v[:, :, None]                                             # [B, nkv, g, T, hd]
        a = a.reshape(B, nh, T, hd).transpose(0, 2, 1, 3).reshape(B, T, d)           # [B, T, d]
        x = x + a @ W[p + "attn_output"].T

        h = rms_norm(x, self.norms[p + "ffn_norm"], c.norm_eps)
        m = _silu_(h @ W[p + "ffn_gate"].T)                                          # [B, T, hidden]
        m *= h @ W[p + "ffn_up"].T
        return x + m @ W[p + "ffn_down"].T                                           # [B, T, d]

    def head(self, x):
        """``x [B, T, d] -> logits [B, T, vocab]``."""
        x = rms_norm(x, self.norms["output_norm"], self.config.norm_eps)
        E = self.embedding if self.output is None else self.output
        return x @ E.T

    def logits(self, ids, cache: KVCache | None = None):
        """Next-token logits, float32 ``[T, vocab]`` for ``ids [T]`` or ``[B, T, vocab]`` for ``ids [B, T]``.

        With ``cache``, ``ids`` continue the cached sequence (positions ``cache.length ...``) and the
        cache is extended. Raises TypeError for non-integer ids, ValueError for empty ids, ids outside
        ``[0, vocab_size)`` or a sequence longer than the context length.
        """
        ids, start = self._check_ids(ids, cache)
        squeeze = ids.ndim == 1
        ids = ids[None] if squeeze else ids                                           # [B, T]
        T = ids.shape[1]
        cos, sin = rope_tables(np.arange(start, start + T), self.config.head_dim, self.config.rope_theta)
        x = self.embed(ids)                                                           # [B, T, d]
        for i in range(self.config.n_layers):
            x = self.block(i, x, cos, sin, cache)
        out = self.head(x)                                                            # [B, T, vocab]
        return out[0] if squeeze else out


def _dense_of(w, name, shape):
    """The float32 ``[out, in]`` array of weight object ``w``, checked against the expected shape."""
    for attr in ("dequantize", "shape", "nbytes", "bits_per_weight"):
        if not hasattr(w, attr):
            raise TypeError(f"weight {name!r} ({type(w).__name__}) lacks {attr!r} of the quantized-weight protocol")
    if tuple(w.shape) != shape:
        raise ValueError(f"weight {name!r} has shape {tuple(w.shape)}, expected {shape}")
    W = w.dequantize()
    if hasattr(W, "detach"):  # a torch tensor from the torch path
        W = W.detach().cpu().numpy()
    W = np.ascontiguousarray(W, dtype=np.float32)
    if W.shape != shape:
        raise ValueError(f"weight {name!r}.dequantize() returned shape {W.shape}, expected {shape}")
    return W

