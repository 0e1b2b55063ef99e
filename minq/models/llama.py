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

Calibration (what PTQ, GPTQ and AWQ build on, without knowing Llama): every linear of the forward
runs through ``model._linear``, which calls *hooks* ``{name: fn}`` on its input::

    fn(name: str, X: float32 [tokens, in], read-only) -> None | replacement X' [tokens, in]

``tokens`` is ``B * T`` for ids ``[B, T]``. Returning ``None`` only observes (statistics, Hessians
``X^T X``); returning an array feeds that linear ``X'`` instead (simulated activation quantization).
Hooks are a keyword of ``logits``, ``run_block`` and ``block``. On top of them:

    model.capture_inputs(ids, names) -> {name: X [tokens, in]}        inputs of the chosen linears
    x = model.embed(ids)                        # [T, d] or [B, T, d]
    x = model.run_block(i, x, hooks=...)        # block i, positions 0 .. T-1
    logits = model.head(x)                      # equals model.logits(ids)
    model.block_linear_names(i)                 # ["blk.i.attn_q", ..., "blk.i.ffn_down"]

so a method can quantize block ``i`` from the outputs of the already quantized blocks before it.

Speed (``benchmarks/bench_forward.py``, against transformers on torch CPU): the linears that read the
same input run as one GEMM on their row-stacked weights (``[Wq; Wk; Wv]``, ``[Wgate; Wup]``; see
``GROUPS``). A block is three stages: RMSNorm + q/k/v + RoPE and Wo + MLP work token by token, so
each runs on pieces of the tokens, one piece a thread (``_token_pieces``); attention runs per KV head
as 2-D GEMMs ``[t·g, hd] x [hd, S]`` for tiles of ``t`` query positions, skipping the keys a tile cannot
see. The pieces and tiles run on as many Python threads as numpy's BLAS has, each with single-threaded
BLAS (``_parallel_for``; the output head's GEMM is cut the same way, ``_matmul_t``). The elementwise
work runs as Numba kernels, each beside its NumPy reference and tested against it: RoPE
(``_rope_kernel``, bit for bit; it writes q and k straight into the layout attention reads), RMSNorm
(``_rms_norm_kernel``, bit for bit), SwiGLU (``_swiglu_kernel``) and the masked softmax
(``_causal_softmax_kernel``), the last two with a vectorised float32 exp (``_exp_``, within 4e-7 of
``np.exp``). With ``NUMBA_DISABLE_JIT=1`` the forward runs the NumPy references. A hook on a block's
linear makes that block run its token stages as one piece, so the hook sees the linear's whole input.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from minq._checks import check_hooks
from minq._jit import JIT_ENABLED, njit

__all__ = ["LlamaConfig", "DenseWeight", "KVCache", "LlamaModel", "rms_norm", "rope", "LINEARS", "GROUPS"]

# The linears of one block, in the order the forward uses them.
LINEARS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
# The same linears grouped by the input they read: each group is one GEMM on its row-stacked weights.
GROUPS = (("attn_q", "attn_k", "attn_v"), ("attn_output",), ("ffn_gate", "ffn_up"), ("ffn_down",))
# Query positions per attention tile: bounds the scores to [tile * g, S] (cache-sized for 64) and
# skips the keys the tile cannot see.
QUERY_TILE = 64
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

    ``dequantize()`` returns the stored array itself (read-only), not a copy. ``copy=False`` stores a
    read-only view of a float32 C-contiguous ``W`` instead of a copy (``from_gguf`` uses it so that the
    weights are views of the row-stacked arrays the forward multiplies with, held once in memory).
    """

    def __init__(self, W, *, copy: bool = True):
        if copy:
            W = np.array(W, dtype=np.float32, order="C")  # own copy: freezing it touches no caller array
        elif not (isinstance(W, np.ndarray) and W.dtype == np.float32 and W.flags.c_contiguous):
            raise ValueError("DenseWeight(W, copy=False) needs a float32 C-contiguous array W")
        else:
            W = W.view()                                   # freezing the view leaves W itself alone
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


# --- threads -----------------------------------------------------------------------------------------
#
# The forward uses as many threads as numpy's BLAS has (``OPENBLAS_NUM_THREADS``; threadpoolctl reads
# it), all through ``_parallel_for``: it runs pieces of the work (row blocks, attention tiles, slices of
# a GEMM) as single-threaded ``nogil`` Numba kernels and single-threaded BLAS calls on a pool of Python
# threads, BLAS pinned to one thread meanwhile. Why not let BLAS thread its own GEMMs: OpenBLAS's worker
# threads spin for a while after every multi-threaded call (about 0.1 s), on the very cores the next
# attention or elementwise piece needs; measured on 2 cores, the attention then ran no faster on two
# threads than on one (170 ms vs 155 ms per 512-token forward; 100 ms once the GEMMs went through the
# pool too). Why not Numba's ``parallel=True``: its OpenMP threads spin in the same way (+50% CPU time
# for an RMSNorm + GEMM pair). The pool's threads sleep between pieces. A small GEMM (one token of
# generation) is not worth a thread hand-off (~0.1 ms here) and runs as one BLAS call.

_POOL = None            # ThreadPoolExecutor, made on first use
_BLAS = None            # threadpoolctl controller of the loaded BLAS libraries, made on first use
_POOL_LOCK = threading.Lock()   # one parallel region at a time (the BLAS thread count is process-wide)
# Below this much work (a rough count of float operations) threads cost more than they save: one token.
PARALLEL_MIN_WORK = 1 << 18
ROW_BLOCK = 64          # rows per piece of the row-wise kernels


def _blas():
    global _BLAS
    if _BLAS is None:
        from threadpoolctl import ThreadpoolController

        _BLAS = ThreadpoolController().select(user_api="blas")
    return _BLAS


def _threads() -> int:
    """Threads the forward may use: those of numpy's BLAS (``OPENBLAS_NUM_THREADS``, threadpoolctl)."""
    return max([lib.num_threads for lib in _blas().lib_controllers], default=1)


_LOCAL = threading.local()      # .inside: this thread is running an item of a parallel region


def _inside() -> bool:
    """Whether this thread is running an item of a parallel region."""
    return getattr(_LOCAL, "inside", False)


def _free_threads() -> int:
    """Threads a new parallel region may use here: 1 inside an item of a region (nested regions run
    serially, BLAS included), else ``_threads()``."""
    return 1 if _inside() else _threads()


def _parallel_for(fn, items, work: int):
    """``fn(item)`` for every item, on ``_threads()`` threads when ``work >= PARALLEL_MIN_WORK``.

    The items go to the threads one at a time, in order (list the costly ones first); BLAS runs on one
    thread meanwhile, and a ``_parallel_for`` inside ``fn`` runs serially. ``fn`` must write disjoint
    outputs; results do not depend on the thread count.
    """
    n = min(_free_threads(), len(items)) if work >= PARALLEL_MIN_WORK and len(items) > 1 else 1
    if n <= 1:
        for item in items:
            fn(item)
        return
    global _POOL
    with _POOL_LOCK, _blas().limit(limits=1):
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=os.cpu_count() or 2, thread_name_prefix="minq")
        todo, take = iter(items), threading.Lock()

        def worker():
            _LOCAL.inside = True
            try:
                while True:
                    with take:
                        item = next(todo, None)
                    if item is None:
                        return
                    fn(item)
            finally:
                _LOCAL.inside = False

        helpers = [_POOL.submit(worker) for _ in range(n - 1)]
        try:
            worker()                                   # the calling thread is one of the n
        finally:
            for f in helpers:
                f.result()


# Fewer rows than this (a token of generation, a short chunk): one plain BLAS call, not pieces.
GEMM_MIN_ROWS = 32


def _matmul_t(X, W):
    """``Y [M, N] = X [M, K] @ W [N, K]^T`` in float32, in pieces on ``_parallel_for``.

    A wide ``W`` (``N >= 2048``: the fused gate/up, the output head) is cut along its rows, so each
    thread reads its share of the weights once; a narrow one (q/k/v, o, down) along the rows of ``X``.
    Each piece is one single-threaded BLAS GEMM into its block of ``Y``. ``M < GEMM_MIN_ROWS``: one
    BLAS call. The pieces do not change the sums: the result equals ``X @ W.T``.
    """
    X = np.ascontiguousarray(X, dtype=np.float32)
    M, N = X.shape[0], W.shape[0]
    n = 1 if M < GEMM_MIN_ROWS else _free_threads()
    if n == 1:
        return X @ W.T
    Y = np.empty((M, N), np.float32)                                           # [M, N]
    if N >= 2048:                                                              # slices of W's rows
        step = -(-N // (n * 64)) * 64
        cols = [slice(a, min(a + step, N)) for a in range(0, N, step)]
        _parallel_for(lambda c: np.matmul(X, W[c].T, out=Y[:, c]), cols, work=M * N * X.shape[1])
    else:                                                                      # slices of X's rows
        step = -(-M // n)
        rows = [slice(a, min(a + step, M)) for a in range(0, M, step)]
        _parallel_for(lambda r: np.matmul(X[r], W.T, out=Y[r]), rows, work=M * N * X.shape[1])
    return Y


def _row_blocks(N: int):
    """``range(N)`` as slices of ``ROW_BLOCK`` rows: the pieces of a row-wise kernel (one slice of all
    rows where there is only this thread: inside an item of a parallel region)."""
    if _inside():
        return [slice(0, N)]
    return [slice(a, min(a + ROW_BLOCK, N)) for a in range(0, N, ROW_BLOCK)]


def rope_tables(positions, head_dim: int, theta: float):
    """cos, sin ``[T, head_dim/2]`` of the angles ``pos * theta^(-2i/head_dim)`` (computed in float64)."""
    inv_freq = theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)    # [hd/2]
    ang = np.asarray(positions, np.float64)[:, None] * inv_freq[None, :]              # [T, hd/2]
    return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)


def rope(x, cos, sin):
    """Rotate the half-split pairs ``(x[i], x[i + hd/2])`` of ``x [..., T, hd]`` by the angles of ``cos, sin [T, hd/2]``.

    ``cos, sin`` may be any shape that broadcasts against ``x[..., :hd/2]`` (``cos[:, None]`` for
    ``x [..., T, heads, hd]``). Returns a new C-contiguous float32 array of ``x``'s shape, so a
    transposed view ``x`` yields the rotated values in that transposed layout.
    """
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    out = np.empty(x.shape, np.float32)
    o1, o2 = out[..., :half], out[..., half:]
    np.multiply(x1, cos, out=o1)
    o1 -= x2 * sin                                                                  # x1 cos - x2 sin
    np.multiply(x2, cos, out=o2)
    o2 += x1 * sin                                                                  # x2 cos + x1 sin
    return out


def _rope_to(x, cos, sin, out, scale=1.0):
    """``out[...] = rope(x) * scale`` for ``x, out [B, T, H, G, hd]`` (any strides), ``cos, sin [T, hd/2]``.

    The Numba kernel when JIT is on (one pass, no temporaries), else the NumPy ``rope``: the same
    float32 operations in the same order, so the two agree bit for bit (tests/test_llama.py).
    """
    if JIT_ENABLED:                                    # blocks of positions on threads
        _parallel_for(lambda r: _rope_kernel(x[:, r], cos[r], sin[r], np.float32(scale), out[:, r]),
                      _row_blocks(x.shape[1]), work=x.size)
    else:
        out[...] = rope(x, cos[:, None, None], sin[:, None, None]) * np.float32(scale)


@njit
def _rope_kernel(x, cos, sin, scale, out):
    B, T, H, G, hd = x.shape
    half = hd // 2
    for b in range(B):
        for t in range(T):
            for h in range(H):
                for j in range(G):
                    for i in range(half):
                        x1, x2 = x[b, t, h, j, i], x[b, t, h, j, i + half]
                        out[b, t, h, j, i] = (x1 * cos[t, i] - x2 * sin[t, i]) * scale
                        out[b, t, h, j, i + half] = (x2 * cos[t, i] + x1 * sin[t, i]) * scale


# --- elementwise work: each NumPy reference with the Numba kernel the forward runs beside it ---------
#
# The forward's time is GEMMs plus this elementwise work (RMSNorm, SwiGLU, the softmax). NumPy runs it
# on one core; the kernels run in blocks of rows on all the cores BLAS uses (``_parallel_for``). Each
# dispatcher (``_rms_norm``, ``_silu_mul``, ``_softmax_tile``) runs its NumPy reference when JIT is off
# (``NUMBA_DISABLE_JIT=1``).


def rms_norm(x, gamma, eps: float):
    """``x [..., d] -> x / sqrt(mean(x^2) + eps) * gamma`` (float32)."""
    ms = np.mean(x * x, axis=-1, keepdims=True)                                    # [..., 1]
    y = x * (np.float32(1.0) / np.sqrt(ms + np.float32(eps)))
    y *= gamma
    return y


def _rms_norm(x, gamma, eps: float):
    """The forward's RMSNorm of a C-contiguous float32 ``x [..., d]``: ``_rms_norm_kernel`` when JIT is
    on, else ``rms_norm``; the two agree bit for bit (tests/test_llama.py)."""
    if not JIT_ENABLED:
        return rms_norm(x, gamma, eps)
    x = np.ascontiguousarray(x, dtype=np.float32)
    y = np.empty(x.shape, np.float32)
    x2, y2, eps = x.reshape(-1, x.shape[-1]), y.reshape(-1, x.shape[-1]), np.float32(eps)   # [N, d]
    _parallel_for(lambda r: _rms_norm_kernel(x2[r], gamma, eps, y2[r]), _row_blocks(len(x2)), work=x.size)
    return y


@njit
def _block_sum(a, lo, n):
    """``a[lo:lo + n].sum()``, ``n <= 128``, in NumPy's order: 8 running sums over the 8 columns, added
    pairwise, then the rest. The 8 independent sums also let the CPU overlap the additions."""
    if n < 8:
        s = np.float32(0.0)
        for i in range(lo, lo + n):
            s += a[i]
        return s
    s0, s1, s2, s3 = a[lo], a[lo + 1], a[lo + 2], a[lo + 3]
    s4, s5, s6, s7 = a[lo + 4], a[lo + 5], a[lo + 6], a[lo + 7]
    for i in range(lo + 8, lo + n - n % 8, 8):
        s0 += a[i]
        s1 += a[i + 1]
        s2 += a[i + 2]
        s3 += a[i + 3]
        s4 += a[i + 4]
        s5 += a[i + 5]
        s6 += a[i + 6]
        s7 += a[i + 7]
    s = ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))
    for i in range(lo + n - n % 8, lo + n):
        s += a[i]
    return s


@njit
def _pairwise_sum(a, n, todo, sums):
    """``a[:n].sum()`` of a float32 ``a`` in NumPy's (pairwise) order, so that kernels equal NumPy's sums
    bit for bit: ``sum(lo, n) = sum(lo, h) + sum(lo + h, n - h)``, ``h = n/2`` rounded down to a multiple
    of 8, down to ranges of at most 128 (``_block_sum``).

    Numba cannot cache a recursive function, so the recursion runs on two scratch stacks: ``todo``
    (int64 ``[64, 3]``: ranges ``lo, n`` and how far each got) and ``sums`` (float32 ``[64]``: finished
    sums, the left one of a pair below the right one).
    """
    if n <= 128:
        return _block_sum(a, 0, n)
    top, done = 0, 0                                   # the top entry of todo, entries in sums
    todo[0, 0], todo[0, 1], todo[0, 2] = 0, n, 0
    while top >= 0:
        lo, m, step = todo[top, 0], todo[top, 1], todo[top, 2]
        h = m // 2 - (m // 2) % 8
        if m <= 128:                                   # a leaf: its sum goes on the stack
            sums[done] = _block_sum(a, lo, m)
            done += 1
            top -= 1
        elif step < 2:                                 # step 0: the left half next, step 1: the right
            todo[top, 2] = step + 1
            top += 1
            todo[top, 0], todo[top, 1], todo[top, 2] = lo + step * h, h if step == 0 else m - h, 0
        else:                                          # both halves summed: add them
            sums[done - 2] = sums[done - 2] + sums[done - 1]
            done -= 1
            top -= 1
    return sums[0]


@njit
def _rms_norm_kernel(x, gamma, eps, y):
    """``y [N, d] = rms_norm(x [N, d], gamma, eps)``: the same float32 operations in the same order as
    the NumPy ``rms_norm``."""
    N, d = x.shape
    sq, todo, sums = np.empty(d, np.float32), np.empty((64, 3), np.int64), np.empty(64, np.float32)
    for i in range(N):
        for j in range(d):
            sq[j] = x[i, j] * x[i, j]
        ms = _pairwise_sum(sq, d, todo, sums) / np.float32(d)      # mean(x^2)
        r = np.float32(1.0) / np.sqrt(ms + eps)
        for j in range(d):
            y[i, j] = x[i, j] * r * gamma[j]


# exp(v) = 2^z * exp(r), z = round(v / ln 2), r = v - z ln 2 in [-ln2/2, ln2/2] (ln 2 in two parts, so
# that z ln 2 is exact: Cody and Waite): exp(r) is the polynomial of Cephes' expf, relative error ~1e-7,
# and 2^z is the float32 whose exponent bits are z + 127. Numba's own exp calls libm one value at a time
# (4x slower than np.exp); these plain loops the compiler vectorises.
_LOG2E = np.float32(1.4426950408889634)
_LN2_HI = np.float32(0.693359375)
_LN2_LO = np.float32(-2.12194440e-4)


@njit
def _exp_(v, bits):
    """``v[:] = exp(v)`` for a 1-D float32 ``v``, ``v`` clamped to [-87, 88] (float32's normal range);
    ``bits``: int32 scratch at least as long as ``v``. Equals ``np.exp`` to a relative 2e-7."""
    n = v.shape[0]
    for j in range(n):
        x = min(max(v[j], np.float32(-87.0)), np.float32(88.0))
        z = np.floor(x * _LOG2E + np.float32(0.5))                # nearest integer to x / ln 2
        r = x - z * _LN2_HI - z * _LN2_LO                          # |r| <= ln2 / 2
        p = np.float32(1.9875691500e-4)
        p = p * r + np.float32(1.3981999507e-3)
        p = p * r + np.float32(8.3334519073e-3)
        p = p * r + np.float32(4.1665795894e-2)
        p = p * r + np.float32(1.6666665459e-1)
        p = p * r + np.float32(5.0000001201e-1)
        v[j] = p * r * r + r + np.float32(1.0)                     # exp(r)
        bits[j] = (np.int32(z) + np.int32(127)) << np.int32(23)    # 2^z, as the bits of a float32
    two_z = bits.view(np.float32)
    for j in range(n):
        v[j] *= two_z[j]


def _swiglu(gate, up):
    """``silu(gate) * up = gate / (1 + exp(-gate)) * up`` as a new C-contiguous float32 array.

    ``gate, up`` may be strided views (the halves of the fused gate/up GEMM output); the temporary is
    contiguous, where numpy's exp is vectorised.
    """
    m = np.negative(gate)
    np.exp(m, out=m)
    m += np.float32(1.0)
    np.divide(gate, m, out=m)
    m *= up
    return m


def _silu_mul(gu, hidden: int):
    """``silu(gate) * up`` of the fused gate/up output ``gu [..., 2 hidden]`` (gate first) -> ``[..., hidden]``:
    ``_swiglu_kernel`` when JIT is on, else ``_swiglu``."""
    if not JIT_ENABLED:
        return _swiglu(gu[..., :hidden], gu[..., hidden:])
    gu = np.ascontiguousarray(gu, dtype=np.float32)
    m = np.empty((*gu.shape[:-1], hidden), np.float32)
    gu2, m2 = gu.reshape(-1, 2 * hidden), m.reshape(-1, hidden)                  # [N, 2 hidden], [N, hidden]
    _parallel_for(lambda r: _swiglu_kernel(gu2[r], m2[r]), _row_blocks(len(m2)), work=gu.size)
    return m


@njit(float_division=True)                                         # NumPy's division: the loop vectorises
def _swiglu_kernel(gu, m):
    """``m [N, H] = _swiglu(gu[:, :H], gu[:, H:])`` for ``gu [N, 2H]``: the same float32 operations in
    the same order, with ``_exp_`` for ``np.exp``."""
    N, H = m.shape
    bits = np.empty(H, np.int32)
    for i in range(N):
        mi = m[i]
        for j in range(H):
            mi[j] = -gu[i, j]
        _exp_(mi, bits)                                            # exp(-gate)
        for j in range(H):
            mi[j] = gu[i, j] / (mi[j] + np.float32(1.0)) * gu[i, H + j]


def causal_softmax_(s, first: int):
    """In place: the softmax over the keys ``0 .. first + r`` that query ``r`` sees, ``s [t, g, S]``.

    ``s[r, h]`` are the scores of query ``r`` (``g`` heads) against ``S`` keys; the keys after
    ``first + r`` get probability 0 (the causal mask). Returns ``s``.
    """
    t, S = s.shape[0], s.shape[-1]
    after = np.arange(S)[None, :] > first + np.arange(t)[:, None]         # key after query: [t, S]
    np.copyto(s, -np.inf, where=after[:, None, :])
    s -= s.max(axis=-1, keepdims=True)
    np.exp(s, out=s)
    s /= s.sum(axis=-1, keepdims=True)
    return s


@njit
def _causal_softmax_kernel(s, first):
    """``causal_softmax_(s, first)`` for a C-contiguous ``s [t, g, S]``, each row in one pass of the
    visible keys: max, ``_exp_``, sum (``_pairwise_sum``), scale by 1/sum. Single-threaded (``nogil``):
    the attention tiles run it on several Python threads."""
    t, g, S = s.shape
    bits, todo, sums = np.empty(S, np.int32), np.empty((64, 3), np.int64), np.empty(64, np.float32)
    for r in range(t):
        n = first + r + 1                                          # keys 0 .. first + r are visible
        for h in range(g):
            row = s[r, h]
            m0, m1, m2, m3 = row[0], row[0], row[0], row[0]        # 4 running maxima (see _block_sum)
            for j in range(0, n - n % 4, 4):
                m0 = max(m0, row[j])
                m1 = max(m1, row[j + 1])
                m2 = max(m2, row[j + 2])
                m3 = max(m3, row[j + 3])
            m = max(max(m0, m1), max(m2, m3))
            for j in range(n - n % 4, n):
                m = max(m, row[j])
            for j in range(n):
                row[j] -= m
            _exp_(row[:n], bits)
            inv = np.float32(1.0) / _pairwise_sum(row, n, todo, sums)
            for j in range(n):
                row[j] *= inv
            for j in range(n, S):
                row[j] = 0.0


def _softmax_tile(s, first: int):
    """``causal_softmax_(s, first)`` in place: ``_causal_softmax_kernel`` when JIT is on."""
    if JIT_ENABLED:
        _causal_softmax_kernel(s, first)
    else:
        causal_softmax_(s, first)
    return s


def _attend(q, k, v):
    """Causal attention of the last ``t`` positions of a sequence to all ``S`` of its positions.

    ``q [t, g, hd]``: the ``g`` query heads that share ``k, v [S, hd]``, already scaled by
    ``1/sqrt(hd)``; query ``r`` sits at position ``S - t + r`` and sees keys ``0 .. S - t + r``.
    Returns ``softmax(q k^T + mask) v`` as ``[t, g, hd]`` float32.
    """
    t, g, hd = q.shape
    S = k.shape[0]
    s = (q.reshape(t * g, hd) @ k.T).reshape(t, g, S)                     # scores [t, g, S], one GEMM
    _softmax_tile(s, S - t)                                                # probabilities, masked
    return (s.reshape(t * g, S) @ v).reshape(t, g, hd)                     # [t, g, hd]


def _linear_shape(c: LlamaConfig, linear: str) -> tuple:
    """``(out, in)`` of the linear ``linear`` (``attn_q``, ..., ``ffn_down``) of a block."""
    kv = c.n_kv_heads * c.head_dim
    return {"attn_q": (c.dim, c.dim), "attn_k": (kv, c.dim), "attn_v": (kv, c.dim),
            "attn_output": (c.dim, c.dim), "ffn_gate": (c.hidden_dim, c.dim),
            "ffn_up": (c.hidden_dim, c.dim), "ffn_down": (c.dim, c.hidden_dim)}[linear]


class LlamaModel:
    """A Llama decoder. ``logits(ids [T] or [B, T]) -> float32 [T, vocab] or [B, T, vocab]``.

    weights: {"blk.{i}.{linear}": quantized-weight object} for every linear of ``LINEARS``;
    norms:   {"blk.{i}.attn_norm" | "blk.{i}.ffn_norm" | "output_norm": float32 [d]};
    embedding: float32 [vocab, d] (also the output head unless ``output`` [vocab, d] is given).
    """

    def __init__(self, config: LlamaConfig, weights: dict, norms: dict, embedding, *, output=None,
                 tokenizer=None, _stacked=None):
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
        # {(name, ...): float32 [sum of out, in]}: the dense weights of each group of GROUPS, row-stacked.
        # Each weight is dequantized once, here; groups of an unchanged model are shared (with_weights).
        self._W = dict(_stacked or {})
        for i in range(config.n_layers):
            for group in GROUPS:
                key = tuple(f"blk.{i}.{n}" for n in group)
                if key not in self._W:
                    self._W[key] = _stack_rows([_dense_of(self.weights[n], n, self._expected_shape(n))
                                                for n in key])

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
            weights = {}
            for i in range(cfg.n_layers):
                for group in GROUPS:  # one row-stacked array per group; the weights are views of it
                    parts = [t.pop(f"blk.{i}.{n}.weight") for n in group]
                    for n, P in zip(group, parts):
                        if P.shape != _linear_shape(cfg, n):
                            raise ValueError(f"{path}: tensor 'blk.{i}.{n}.weight' has shape {P.shape}, "
                                             f"expected {_linear_shape(cfg, n)}")
                    W = np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)
                    W.setflags(write=False)
                    rows = np.cumsum([0] + [len(P) for P in parts])
                    for n, a, b in zip(group, rows, rows[1:]):
                        weights[f"blk.{i}.{n}"] = DenseWeight(W[a:b], copy=False)
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

    def block_linear_names(self, i: int) -> list[str]:
        """Names of the linears of block ``i``, in forward order: ``blk.{i}.attn_q``, ..., ``blk.{i}.ffn_down``."""
        self._check_block(i)
        return [f"blk.{i}.{n}" for n in LINEARS]

    def _expected_shape(self, name: str) -> tuple:
        return _linear_shape(self.config, name.split(".")[-1])

    def with_weights(self, new: dict) -> LlamaModel:
        """A new model whose weights ``new`` ({name: weight object}) replace the named ones; the others,
        the norms, the embedding and the tokenizer are shared. ``self`` is left unchanged.

        Raises ValueError naming unknown names or a weight whose ``shape`` does not match.
        """
        unknown = sorted(set(new) - set(self.weights))
        if unknown:
            raise ValueError(f"unknown weight names {unknown[:5]}; see model.linear_names()")
        unchanged = {key: W for key, W in self._W.items() if not set(key) & set(new)}
        return LlamaModel(self.config, {**self.weights, **new}, self.norms, self.embedding,
                          output=self.output, tokenizer=self.tokenizer, _stacked=unchanged)

    def with_norms(self, new: dict) -> LlamaModel:
        """A new model whose RMSNorm gammas ``new`` ({name: float32 [d]}, names of ``model.norms``) replace
        the named ones; everything else is shared. ``self`` is left unchanged (SmoothQuant folds its
        scales into the gammas with it).

        Raises ValueError naming unknown norm names, a gamma of the wrong shape or a non-finite one.
        """
        unknown = sorted(set(new) - set(self.norms))
        if unknown:
            raise ValueError(f"unknown norm names {unknown[:5]}; see model.norms")
        norms = dict(self.norms)
        for name, g in new.items():
            g = np.array(g, dtype=np.float32)
            if g.shape != (self.config.dim,) or not np.isfinite(g).all():
                raise ValueError(f"norm {name!r} must be a finite float32 [{self.config.dim}], got shape {g.shape}")
            g.setflags(write=False)
            norms[name] = g
        return LlamaModel(self.config, self.weights, norms, self.embedding, output=self.output,
                          tokenizer=self.tokenizer, _stacked=self._W)

    def new_cache(self) -> KVCache:
        return KVCache(self.config.n_layers)

    @property
    def nbytes(self) -> int:
        """Bytes of the linear weights as stored by their weight objects."""
        return sum(w.nbytes for w in self.weights.values())

    # --- checks -------------------------------------------------------------------------------------

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

    def _check_block(self, i):
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= i < self.config.n_layers:
            raise ValueError(f"block index i must be an int in [0, {self.config.n_layers}), got {i!r}")

    def _check_hooks(self, hooks):
        return check_hooks(hooks, self.weights)

    # --- forward ------------------------------------------------------------------------------------

    def _linear(self, names: tuple, x, hooks=None):
        """``x [..., in] -> x W^T [..., out]`` for the linears ``names`` (a group of ``GROUPS``) that read ``x``.

        Several names give their outputs side by side (``[..., out_1 + out_2 + ...]``), from one GEMM
        on the row-stacked weights. Each hook of ``hooks`` {name: fn} is called as ``fn(name, X)`` with
        ``X = x`` as a read-only ``[tokens, in]`` view; an array it returns replaces the input of that
        linear alone (then each linear of the group runs its own GEMM). Raises ValueError for a
        replacement of another shape.
        """
        X = x.reshape(-1, x.shape[-1])                                              # [tokens, in]
        W = self._W[names]                                                          # [out, in]
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
            Y = _matmul_t(X, W)                                                     # one GEMM per group
        else:
            rows = np.cumsum([0] + [self._expected_shape(n)[0] for n in names])
            Y = np.concatenate([_matmul_t(Xj, W[a:b]) for Xj, a, b in zip(Xs, rows, rows[1:])], axis=1)
        return Y.reshape(*x.shape[:-1], W.shape[0])

    def embed(self, ids):
        """``ids [T] or [B, T] -> x float32 [T, d] or [B, T, d]``, the input of block 0 (ids checked as in ``logits``)."""
        ids, _ = self._check_ids(ids, None)
        return self.embedding[ids]

    def block(self, i: int, x, cos, sin, cache=None, hooks=None):
        """Decoder block ``i``: ``x [B, T, d] -> [B, T, d]`` at the positions of ``cos, sin [T, hd/2]``.

        Without ``cache`` those positions are ``0 .. T-1``; with it, ``cache.length ...`` and the
        block's keys and values are appended to it. ``hooks``: see ``_linear``. ``x`` is not modified.

        Three stages: (1) RMSNorm, q/k/v and RoPE, (2) attention, (3) Wo, the residual, RMSNorm, the
        MLP and the residual. Stages 1 and 3 work token by token, so they run on pieces of the tokens
        (``_token_pieces``), one thread a piece; attention runs on tiles of queries.
        """
        c = self.config
        B, T, d = x.shape
        hd, nh, nkv = c.head_dim, c.n_heads, c.n_kv_heads
        g, kv = nh // nkv, nkv * hd                        # queries per KV head, width of k and v
        p = f"blk.{i}."
        # RoPE writes q and k in the layout attention reads: the g queries of KV head j token-major.
        q = np.empty((B, nkv, T, g, hd), np.float32)
        k = np.empty((B, nkv, T, hd), np.float32)
        v = np.empty((B, nkv, T, hd), np.float32)
        q_t, k_t, v_t = q.transpose(0, 2, 1, 3, 4), k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)   # [B, T, ...]
        pieces = self._token_pieces(i, B, T, hooks)

        def attention_inputs(piece):                       # tokens x[b, r] -> their q, k, v
            b, r = piece
            h = _rms_norm(x[b, r], self.norms[p + "attn_norm"], c.norm_eps)                    # [B', t, d]
            qkv = self._linear((p + "attn_q", p + "attn_k", p + "attn_v"), h, hooks)           # [B', t, d + 2 kv]
            Bp, t = qkv.shape[:2]
            _rope_to(qkv[..., :d].reshape(Bp, t, nkv, g, hd), cos[r], sin[r], q_t[b, r],
                     scale=1.0 / np.sqrt(hd))                                                  # q / sqrt(hd)
            _rope_to(qkv[..., d:d + kv].reshape(Bp, t, nkv, 1, hd), cos[r], sin[r], k_t[b, r][:, :, :, None])
            v_t[b, r] = qkv[..., d + kv:].reshape(Bp, t, nkv, hd)

        _parallel_for(attention_inputs, pieces, work=B * T * d * (d + 2 * kv))
        if cache is not None:
            k, v = cache.update(i, k, v)                                             # [B, nkv, S, hd]
        start = k.shape[2] - T                                                       # positions cached before
        a = np.empty((B, T, nkv, g * hd), np.float32)         # = [B, T, d], heads in Wo's input order

        def attend(tile):                                     # queries t0 .. t1-1 see keys < start + t1
            b, j, t0, t1 = tile
            o = _attend(q[b, j, t0:t1], k[b, j, :start + t1], v[b, j, :start + t1])  # [t, g, hd]
            a[b, t0:t1, j] = o.reshape(t1 - t0, g * hd)

        tiles = [(b, j, t0, min(t0 + QUERY_TILE, T)) for t0 in reversed(range(0, T, QUERY_TILE))
                 for b in range(B) for j in range(nkv)]       # the longest (latest) tiles first
        _parallel_for(attend, tiles, work=B * nh * T * (start + T) * hd)
        a = a.reshape(B, T, d)
        y = np.empty_like(x)

        def mlp(piece):                                       # tokens a[b, r], x[b, r] -> y[b, r]
            b, r = piece
            h = x[b, r] + self._linear((p + "attn_output",), a[b, r], hooks)                   # [B', t, d]
            y[b, r] = h
            h = _rms_norm(h, self.norms[p + "ffn_norm"], c.norm_eps)
            gu = self._linear((p + "ffn_gate", p + "ffn_up"), h, hooks)                      # [B', t, 2 hidden]
            m = _silu_mul(gu, c.hidden_dim)                                                  # [B', t, hidden]
            y[b, r] += self._linear((p + "ffn_down",), m, hooks)

        _parallel_for(mlp, pieces, work=B * T * (d * d + 3 * d * c.hidden_dim))
        return y                                                                     # [B, T, d]

    def _token_pieces(self, i: int, B: int, T: int, hooks) -> list:
        """The pieces ``(b, r)`` (slices of windows and of positions) that the token-wise stages of block
        ``i`` run on: every window cut into enough runs of positions for each thread to get one. When a
        hook watches a linear of block ``i``, one piece of all tokens: a hook sees a linear's whole input.
        """
        n = _free_threads()
        if n == 1 or (hooks and any(name in hooks for name in self.block_linear_names(i))):
            return [(slice(None), slice(None))]
        step = -(-T // -(-n // B))                            # ceil(T / ceil(n / B)) positions a piece
        return [(slice(b, b + 1), slice(t, min(t + step, T))) for b in range(B) for t in range(0, T, step)]

    def run_block(self, i: int, x, *, hooks=None):
        """Block ``i`` on a full window: ``x [T, d] or [B, T, d] -> same shape``, positions ``0 .. T-1``.

        ``head(run_block(L-1, ... run_block(0, embed(ids))))`` equals ``logits(ids)``. ``x`` is not
        modified. Raises ValueError for a bad block index, a bad ``x`` shape or unknown hook names.
        """
        self._check_block(i)
        hooks = self._check_hooks(hooks)
        x = np.asarray(x, dtype=np.float32)
        if x.ndim not in (2, 3) or x.shape[-1] != self.config.dim or x.shape[-2] == 0:
            raise ValueError(f"x must be [T, {self.config.dim}] or [B, T, {self.config.dim}] with T > 0, "
                             f"got shape {x.shape}")
        if x.shape[-2] > self.config.context_length:
            raise ValueError(f"x of {x.shape[-2]} positions exceeds the context length {self.config.context_length}")
        cos, sin = rope_tables(np.arange(x.shape[-2]), self.config.head_dim, self.config.rope_theta)
        y = self.block(i, x if x.ndim == 3 else x[None], cos, sin, None, hooks)
        return y if x.ndim == 3 else y[0]

    def head(self, x):
        """``x [..., d] -> logits [..., vocab]``: the final RMSNorm and the output projection."""
        x = _rms_norm(x, self.norms["output_norm"], self.config.norm_eps)
        E = self.embedding if self.output is None else self.output                  # [vocab, d]
        return _matmul_t(x.reshape(-1, x.shape[-1]), E).reshape(*x.shape[:-1], E.shape[0])

    def logits(self, ids, cache: KVCache | None = None, *, last_only: bool = False, hooks=None):
        """Next-token logits, float32 ``[T, vocab]`` for ``ids [T]`` or ``[B, T, vocab]`` for ``ids [B, T]``.

        With ``cache``, ``ids`` continue the cached sequence (positions ``cache.length ...``) and the
        cache is extended. ``last_only=True`` computes the logits of the last position only (shape
        ``[1, vocab]`` / ``[B, 1, vocab]``), as generation needs. ``hooks``: see the module docstring.
        Raises TypeError for non-integer ids, ValueError for empty ids, ids outside ``[0, vocab_size)``,
        a sequence longer than the context length or hooks naming unknown linears.
        """
        ids, start = self._check_ids(ids, cache)
        hooks = self._check_hooks(hooks)
        squeeze = ids.ndim == 1
        ids = ids[None] if squeeze else ids                                           # [B, T]
        T = ids.shape[1]
        cos, sin = rope_tables(np.arange(start, start + T), self.config.head_dim, self.config.rope_theta)
        x = self.embedding[ids]                                                       # [B, T, d]
        for i in range(self.config.n_layers):
            x = self.block(i, x, cos, sin, cache, hooks)
        out = self.head(x[:, -1:] if last_only else x)                                # [B, T or 1, vocab]
        return out[0] if squeeze else out

    def capture_inputs(self, ids, names) -> dict:
        """The inputs of the linears ``names`` in the forward of ``ids``: ``{name: X float32 [tokens, in]}``.

        ``tokens`` is ``T`` for ids ``[T]`` and ``B * T`` (window after window) for ``[B, T]``. The
        arrays are read-only (linears that share an input return the same array). The forward stops
        after the last block it needs. Raises ValueError for unknown names, and as ``logits`` for bad ids.
        """
        names = list(names)
        if not names:
            raise ValueError("names must name at least one linear; see model.linear_names()")
        X = {}

        def keep(name, X_in):
            X[name] = X_in

        hooks = self._check_hooks({n: keep for n in names})
        ids, _ = self._check_ids(ids, None)
        x = self.embedding[ids if ids.ndim == 2 else ids[None]]                       # [B, T, d]
        cos, sin = rope_tables(np.arange(x.shape[1]), self.config.head_dim, self.config.rope_theta)
        for i in range(1 + max(int(n.split(".")[1]) for n in names)):
            x = self.block(i, x, cos, sin, None, hooks)
        return {n: X[n] for n in names}


def _stack_rows(arrays):
    """``[W_1; W_2; ...]``, the float32 ``W_i [out_i, in]`` stacked along the rows — without a copy when
    they already are consecutive row blocks of one C-contiguous array (as ``from_gguf`` builds them)."""
    if len(arrays) == 1:
        return arrays[0]
    base, ptr = arrays[0].base, (lambda a: a.__array_interface__["data"][0])
    if (isinstance(base, np.ndarray) and base.dtype == np.float32 and base.flags.c_contiguous
            and base.shape == (sum(len(a) for a in arrays), arrays[0].shape[1]) and ptr(arrays[0]) == ptr(base)
            and all(b.base is base and ptr(b) == ptr(a) + a.nbytes for a, b in zip(arrays, arrays[1:]))):
        return base
    return np.concatenate(arrays)


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

