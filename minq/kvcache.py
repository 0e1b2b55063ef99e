"""The KV cache: the keys and values of the positions a decoder has already processed.

Generating token ``t`` needs attention of its query to the keys and values of positions ``0 .. t``.
Those of ``0 .. t-1`` do not change once computed (causal attention: a position never sees later
ones), so a decoder keeps them, layer by layer, and computes only the new position's::

    k_all, v_all = cache.update(layer, k, v)     # k, v [B, n_kv, T, hd] -> [B, n_kv, S + T, hd]
    attention(q, k_all, v_all)                    # the T new queries see all S + T positions

Memory grows with the context: ``2 · n_layers · B · n_kv · S · hd`` floats (2 for k and v). Grouped-
query attention (``n_kv < n_heads``) already shrinks it by ``n_heads / n_kv``; chapter 09 shrinks it
further by storing ``k, v`` as int8 / int4 / FP8 codes (KIVI, Liu et al., 2024: keys per channel,
values per token). That chapter subclasses ``KVCache`` here.

Both engines of ``minq.models.llama`` (``engine="reference"`` and ``"fast"``) use this one object and
layout; ``model.new_cache()`` makes one, and ``model.logits(chunk, cache=c)`` continues from it. The
engines call ``append``, which returns a ``KVRead``: the keys and values the new queries attend to and,
from a quantized cache (``minq.kvcache_quant``), the quantized values each query reads instead below its
own boundary, so that a chunk of several tokens attends exactly as token-by-token decoding would.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["KVCache", "KVRead"]


class KVRead(NamedTuple):
    """What attention reads after ``cache.append(layer, k, v)`` of ``T`` new positions ``n .. n+T-1``.

    k, v:    float32 ``[B, n_kv, S, hd]``, all ``S = n + T`` positions (for a quantized cache: the
             positions already quantized before this append as their dequantized values, the rest as
             computed).
    kq, vq:  None for a float cache; else float32 ``[B, n_kv, Q, hd]``, the dequantized values of the
             first ``Q`` positions (those quantized once the last new position is appended).
    qstart:  None, or int ``[T]``: new query ``r`` reads keys and values ``j < qstart[r]`` from ``kq, vq``
             and ``j >= qstart[r]`` from ``k, v`` — the cache state that token-by-token decoding would
             have shown it (``attention`` of ``minq.models.llama`` and the fast engine follow it).
    """

    k: object
    v: object
    kq: object = None
    vq: object = None
    qstart: object = None


class KVCache:
    """Keys and values of the positions processed so far, per layer: ``k, v float32 [B, n_kv, S, hd]``.

    The interface a model uses (and all a subclass must keep):

    - ``update(layer, k, v) -> (k_all, v_all)``: append the new positions, return all of them;
    - ``length``: the number of cached positions; the next token's RoPE position is ``length``;
    - ``nbytes``: bytes of the cached keys and values as stored.

    Storage here is float32, grown by doubling (amortized O(1) per token). A quantized cache overrides
    ``update`` (store codes and scales of ``k, v``; return the dequantized float32 ``k_all, v_all``,
    which attention reads) and ``nbytes`` (count codes and scales), and keeps ``self._len[layer]``, the
    positions stored per layer, up to date so that ``length`` holds.
    """

    def __init__(self, n_layers: int):
        self.n_layers = n_layers
        self._k = [None] * n_layers       # per layer: float32 [B, n_kv, capacity, hd], or None
        self._v = [None] * n_layers
        self._len = [0] * n_layers        # per layer: positions stored

    @property
    def length(self) -> int:
        """Cached positions (of the last layer: a forward updates every layer before it reads this)."""
        return self._len[-1]

    def read(self, layer: int):
        """``(k, v)`` float32 ``[B, n_kv, S, hd]``: every position layer ``layer`` holds, as stored."""
        n = self._len[layer]
        if self._k[layer] is None:
            raise ValueError(f"layer {layer} holds no positions yet")
        return self._k[layer][:, :, :n], self._v[layer][:, :, :n]

    def append(self, layer: int, k, v) -> KVRead:
        """Append ``k, v [B, n_kv, T, hd]`` to layer ``layer``; what the new queries attend to (``KVRead``).
        A float cache: all positions, as stored."""
        return KVRead(*self.update(layer, k, v))

    def update(self, layer: int, k, v):
        """Append ``k, v [B, n_kv, T, hd]`` to layer ``layer``; return all of them ``[B, n_kv, S+T, hd]``.

        The returned arrays are views of the storage (valid until the next ``update`` of that layer).
        Raises ValueError when ``k``'s batch or head count is not that of the cached keys.
        """
        n, T = self._len[layer], k.shape[2]
        buf_k = self._k[layer]
        if buf_k is None or buf_k.shape[2] < n + T:
            cap = max(2 * (n + T), 16)
            new_k = np.empty((*k.shape[:2], cap, k.shape[3]), np.float32)      # [B, n_kv, cap, hd]
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
