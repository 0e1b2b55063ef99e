"""The fast Llama forward (``engine="fast"``, the default): ``LlamaModel.block`` and ``head`` on threads.

The math is that of ``minq.models.llama`` (read it there; tests/runtime/test_llama_fast.py proves the
two engines equal); this module only arranges the work so that it runs fast on a few CPU cores
(``benchmarks/bench_forward.py`` measures it against transformers on torch CPU):

- Fused GEMMs: the linears that read the same input run as one GEMM on their row-stacked weights
  (``[Wq; Wk; Wv]``, ``[Wgate; Wup]``; ``GROUPS``, stacked once when the model is built), through the
  threaded ``_matmul_t`` (``minq.runtime.parallel``).
- Three parallel regions a block: (1) RMSNorm, q/k/v and RoPE, (2) attention, (3) Wo, the residual,
  RMSNorm, the MLP and the residual. Stages 1 and 3 work token by token, so each runs on pieces of
  the tokens, one piece a thread (``_token_pieces``); inside a piece, kernels and GEMMs run serially.
- Attention per KV head as 2-D GEMMs ``[t·g, hd] x [hd, S]`` for tiles of ``t = QUERY_TILE`` query
  positions: the ``g`` queries that share a KV head are one matrix, the scores of a tile stay
  cache-sized (``[64·g, S]``), and a tile skips the keys it cannot see. The latest (longest) tiles go
  to the threads first.
- Layouts: RoPE (``_rope_kernel``) writes q and k straight into the layout attention reads — q as
  ``[B, n_kv, T, g, hd]``, already scaled by ``1/sqrt(hd)``; k, v as ``[B, n_kv, T, hd]``, the
  ``KVCache`` layout — and attention writes its output in Wo's input order ``[B, T, n_kv, g·hd]``.
- The elementwise work runs as Numba kernels (``minq.runtime.kernels``), each beside the NumPy
  reference it equals; with ``NUMBA_DISABLE_JIT=1`` the dispatchers run those references.

Hooks: a hook on a linear of a block makes that block run its token stages as one piece, so the hook
sees the linear's whole input, once per forward (as with the reference engine).
"""

from __future__ import annotations

import numpy as np

from minq.runtime.kernels import _rms_norm, _rope_to, _silu_mul, _softmax_tile
from minq.runtime.parallel import _free_threads, _matmul_t, _parallel_for

__all__ = ["QUERY_TILE"]

# Query positions per attention tile: bounds the scores to [tile * g, S] (cache-sized for 64) and
# skips the keys the tile cannot see.
QUERY_TILE = 64


def block(model, i: int, x, cos, sin, cache=None, hooks=None):
    """``model.block(i, x, cos, sin, cache, hooks)`` (``minq.models.llama``), fast: ``x [B, T, d] -> [B, T, d]``.

    Without ``cache`` the positions of ``cos, sin [T, hd/2]`` are ``0 .. T-1``; with it, ``cache.length
    ...`` and the block's keys and values are appended to it. ``x`` is not modified.
    """
    c = model.config
    B, T, d = x.shape
    hd, nh, nkv = c.head_dim, c.n_heads, c.n_kv_heads
    g, kv = nh // nkv, nkv * hd                        # queries per KV head, width of k and v
    p = f"blk.{i}."

    def linear(names, x_in):                           # model._linear (hooks included), threaded GEMM
        return model._linear(names, x_in, hooks, matmul=_matmul_t)

    # RoPE writes q and k in the layout attention reads: the g queries of KV head j token-major.
    q = np.empty((B, nkv, T, g, hd), np.float32)
    k = np.empty((B, nkv, T, hd), np.float32)
    v = np.empty((B, nkv, T, hd), np.float32)
    q_t, k_t, v_t = q.transpose(0, 2, 1, 3, 4), k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)   # [B, T, ...]
    pieces = _token_pieces(model, i, B, T, hooks)

    def attention_inputs(piece):                       # tokens x[b, r] -> their q, k, v
        b, r = piece
        h = _rms_norm(x[b, r], model.norms[p + "attn_norm"], c.norm_eps)                   # [B', t, d]
        qkv = linear((p + "attn_q", p + "attn_k", p + "attn_v"), h)                        # [B', t, d + 2 kv]
        Bp, t = qkv.shape[:2]
        _rope_to(qkv[..., :d].reshape(Bp, t, nkv, g, hd), cos[r], sin[r], q_t[b, r],
                 scale=1.0 / np.sqrt(hd))                                                  # q / sqrt(hd)
        _rope_to(qkv[..., d:d + kv].reshape(Bp, t, nkv, 1, hd), cos[r], sin[r], k_t[b, r][:, :, :, None])
        v_t[b, r] = qkv[..., d + kv:].reshape(Bp, t, nkv, hd)

    _parallel_for(attention_inputs, pieces, work=B * T * d * (d + 2 * kv))
    kq = vq = qstart = None
    if cache is not None:
        k, v, kq, vq, qstart = cache.append(i, k, v)                             # [B, nkv, S, hd]
    start = k.shape[2] - T                                                       # positions cached before
    a = np.empty((B, T, nkv, g * hd), np.float32)         # = [B, T, d], heads in Wo's input order

    def attend(tile):                                     # queries t0 .. t1-1 see keys < start + t1
        b, j, t0, t1 = tile
        if kq is None:
            o = _attend(q[b, j, t0:t1], k[b, j, :start + t1], v[b, j, :start + t1])       # [t, g, hd]
        else:
            o = _attend_quantized(q[b, j, t0:t1], k[b, j, :start + t1], v[b, j, :start + t1], kq[b, j],
                                  vq[b, j], qstart[t0:t1])
        a[b, t0:t1, j] = o.reshape(t1 - t0, g * hd)

    tiles = [(b, j, t0, min(t0 + QUERY_TILE, T)) for t0 in reversed(range(0, T, QUERY_TILE))
             for b in range(B) for j in range(nkv)]       # the longest (latest) tiles first
    _parallel_for(attend, tiles, work=B * nh * T * (start + T) * hd)
    a = a.reshape(B, T, d)
    y = np.empty_like(x)

    def mlp(piece):                                       # tokens a[b, r], x[b, r] -> y[b, r]
        b, r = piece
        h = x[b, r] + linear((p + "attn_output",), a[b, r])                              # [B', t, d]
        y[b, r] = h
        h = _rms_norm(h, model.norms[p + "ffn_norm"], c.norm_eps)
        gu = linear((p + "ffn_gate", p + "ffn_up"), h)                                   # [B', t, 2 hidden]
        m = _silu_mul(gu, c.hidden_dim)                                                  # [B', t, hidden]
        y[b, r] += linear((p + "ffn_down",), m)

    _parallel_for(mlp, pieces, work=B * T * (d * d + 3 * d * c.hidden_dim))
    return y                                                                     # [B, T, d]


def _token_pieces(model, i: int, B: int, T: int, hooks) -> list:
    """The pieces ``(b, r)`` (slices of windows and of positions) that the token-wise stages of block
    ``i`` run on: every window cut into enough runs of positions for each thread to get one. When a
    hook watches a linear of block ``i``, one piece of all tokens: a hook sees a linear's whole input.
    """
    n = _free_threads()
    if n == 1 or (hooks and any(name in hooks for name in model.block_linear_names(i))):
        return [(slice(None), slice(None))]
    step = -(-T // -(-n // B))                            # ceil(T / ceil(n / B)) positions a piece
    return [(slice(b, b + 1), slice(t, min(t + step, T))) for b in range(B) for t in range(0, T, step)]


def _attend(q, k, v):
    """Causal attention of the last ``t`` positions of a sequence to all ``S`` of its positions, for the
    ``g`` query heads that share one KV head: ``attention`` of ``minq.models.llama`` on one tile.

    ``q [t, g, hd]``, already scaled by ``1/sqrt(hd)``; ``k, v [S, hd]``; query ``r`` sits at position
    ``S - t + r`` and sees keys ``0 .. S - t + r``. Returns ``softmax(q k^T + mask) v`` as ``[t, g, hd]``.
    """
    t, g, hd = q.shape
    S = k.shape[0]
    if t * g < 16:                 # a decoded token: OpenBLAS runs [S, hd] x [hd, g] 2x faster than its transpose
        s = np.ascontiguousarray((k @ q.reshape(t * g, hd).T).T).reshape(t, g, S)          # scores [t, g, S]
    else:
        s = (q.reshape(t * g, hd) @ k.T).reshape(t, g, S)                 # scores [t, g, S], one GEMM
    _softmax_tile(s)                                                       # probabilities, masked
    return (s.reshape(t * g, S) @ v).reshape(t, g, hd)                     # [t, g, hd]


def _attend_quantized(q, k, v, kq, vq, qs):
    """``_attend`` reading a quantized cache (``minq.kvcache.KVRead``): query ``r`` reads keys and values
    ``j < qs[r]`` from ``kq, vq [Q, hd]`` and the others from ``k, v [S, hd]``. Keys below every boundary
    come from ``kq`` alone and keys at or above every boundary from ``k`` alone; only the columns between
    the tile's smallest and largest boundary are chosen per query."""
    t, g, hd = q.shape
    S = k.shape[0]
    lo, hi = int(qs.min()), int(qs.max())
    q2 = q.reshape(t * g, hd)
    s = np.empty((t * g, S), np.float32)
    s[:, :hi] = q2 @ kq[:hi].T
    s[:, hi:] = q2 @ k[hi:].T
    use_f = np.arange(lo, hi)[None, :] >= np.repeat(qs, g)[:, None]              # [t·g, hi - lo]
    s[:, lo:hi] = np.where(use_f, q2 @ k[lo:hi].T, s[:, lo:hi])
    _softmax_tile(s.reshape(t, g, S))                                             # probabilities, masked
    out = s[:, :lo] @ vq[:lo] + s[:, hi:] @ v[hi:]
    mid = s[:, lo:hi]
    out += np.where(use_f, 0, mid) @ vq[lo:hi] + np.where(use_f, mid, 0) @ v[lo:hi]
    return out.reshape(t, g, hd)


def head(model, x):
    """``model.head(x, engine="reference")``, fast: ``x [..., d] -> logits [..., vocab]`` (RMSNorm kernel,
    the output projection through ``_matmul_t``)."""
    x = _rms_norm(x, model.norms["output_norm"], model.config.norm_eps)
    return model._head_matmul(x.reshape(-1, x.shape[-1]), _matmul_t).reshape(*x.shape[:-1], -1)   # [..., vocab]
