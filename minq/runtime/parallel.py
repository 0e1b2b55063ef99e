"""Threads for the fast runtime: one pool of Python threads, BLAS pinned to one thread meanwhile.

The fast Llama forward (``minq.runtime.llama_fast``) uses as many threads as numpy's BLAS has
(``OPENBLAS_NUM_THREADS``; threadpoolctl reads it, and ``threadpoolctl.threadpool_limits`` changes it),
all through ``_parallel_for``: it runs pieces of the work (row blocks, attention tiles, slices of a
GEMM) as single-threaded ``nogil`` Numba kernels and single-threaded BLAS calls on a pool of Python
threads, BLAS pinned to one thread meanwhile.

Why not let BLAS thread its own GEMMs: OpenBLAS's worker threads spin for a while after every
multi-threaded call (about 0.1 s), on the very cores the next attention or elementwise piece needs;
measured on 2 cores, the attention then ran no faster on two threads than on one (170 ms vs 155 ms
per 512-token forward; 100 ms once the GEMMs went through the pool too). Why not Numba's
``parallel=True``: its OpenMP threads spin in the same way (+50% CPU time for an RMSNorm + GEMM pair).
The pool's threads sleep between pieces. A small GEMM (one token of generation) is not worth a thread
hand-off (~0.1 ms here) and runs as one BLAS call (``GEMM_MIN_ROWS``); too little work of any kind
(``PARALLEL_MIN_WORK``) runs on the calling thread alone.

Nested regions: an item of a parallel region that starts another region (a kernel's row blocks inside
a token piece) runs it serially, BLAS included (``_inside``). The BLAS thread count (``_threads``, a
threadpoolctl query) is asked for only where a region could use threads: decoding paid ~2 ms a token
for ~360 queries when every region asked.

Nothing here changes a result: ``_matmul_t``'s pieces equal one GEMM bit for bit, and every
``_parallel_for`` writes disjoint outputs (tests/runtime/test_parallel.py).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

__all__ = ["PARALLEL_MIN_WORK", "GEMM_MIN_ROWS", "ROW_BLOCK"]

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


_GETTERS = None         # the BLAS libraries' own thread-count functions (C calls), found on first use


def _threads() -> int:
    """Threads the forward may use: those of numpy's BLAS (``OPENBLAS_NUM_THREADS``, threadpoolctl). Asked
    of the libraries directly (``get_num_threads``, a C call each), not through threadpoolctl's
    properties: a decoded token asks ~150 times, and the properties cost ~7 us a question."""
    global _GETTERS
    if _GETTERS is None:
        _GETTERS = [lib.get_num_threads for lib in _blas().lib_controllers]
    return max([g() or 1 for g in _GETTERS], default=1)


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


def _row_slices(N: int, work: int, min_work: int = 1 << 22):
    """``range(N)`` as one slice per thread a region may use (``_free_threads``), or one slice when the
    work is below ``min_work``: the pieces of a matrix-vector kernel. A hand-off to the pool costs about
    0.1 ms, as much as a one-token product with a 1536 x 576 weight takes alone, so such products run on
    the calling thread (the default ``min_work``, 4 M weights, is a 4096 x 1024 layer); and each kernel
    call pays Numba's argument checks (~20 us for eight arrays), so there is one slice per thread, not
    blocks of rows (64-row blocks made a 576 x 576 product 10x slower)."""
    n = _free_threads() if work >= min_work else 1
    step = -(-N // max(1, n))
    return [slice(a, min(a + step, N)) for a in range(0, N, step)]
