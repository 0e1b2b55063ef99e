"""The runtime's threads: ``_parallel_for`` (each item once, BLAS pinned and restored, errors raised) and
the threaded GEMM ``_matmul_t`` (its pieces equal one GEMM bit for bit)."""

import threading

import numpy as np
import pytest

from minq.runtime import parallel as P


def test_matmul_t_pieces_equal_one_gemm(monkeypatch, rng):
    """``_matmul_t`` cut by W's rows (wide W) or by X's rows (narrow W) equals ``X @ W.T`` bit for bit."""
    monkeypatch.setattr(P, "_threads", lambda: 2)
    for M, N, K in [(512, 3072, 64), (512, 960, 64), (100, 2050, 33), (33, 7, 5), (1, 4096, 16)]:
        X = rng.standard_normal((M, K)).astype(np.float32)
        W = rng.standard_normal((N, K)).astype(np.float32)
        assert np.array_equal(P._matmul_t(X, W), X @ W.T), (M, N, K)
        Xr = X[:, ::-1]                                                              # a strided X: copied
        assert np.array_equal(P._matmul_t(Xr, W), np.ascontiguousarray(Xr) @ W.T)


def test_parallel_for(monkeypatch):
    from threadpoolctl import threadpool_info

    blas = lambda: [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]  # noqa: E731
    before = blas()
    seen, inside = [], []

    def fn(item):
        seen.append(item)
        inside.append((threading.get_ident(), blas(), P._inside()))

    monkeypatch.setattr(P, "_threads", lambda: 2)
    P._parallel_for(fn, list(range(40)), work=P.PARALLEL_MIN_WORK)
    assert sorted(seen) == list(range(40))                          # each item once
    assert all(b == [1] * len(before) for _, b, _ in inside)        # BLAS pinned to 1 thread inside
    assert all(flag for _, _, flag in inside) and not P._inside()   # items know they are inside a region
    assert blas() == before                                          # and restored after
    inside.clear()
    P._parallel_for(fn, [1, 2, 3], work=P.PARALLEL_MIN_WORK - 1)     # too little work: the caller alone
    assert {tid for tid, _, _ in inside} == {threading.get_ident()}

    def boom(item):
        if item == 7:
            raise RuntimeError("tile 7")

    with pytest.raises(RuntimeError, match="tile 7"):
        P._parallel_for(boom, list(range(20)), work=P.PARALLEL_MIN_WORK)
    assert blas() == before


def test_nested_regions_run_serially(monkeypatch):
    """Inside an item of a region, a new region (and ``_matmul_t``, ``_row_blocks``) uses one thread."""
    monkeypatch.setattr(P, "_threads", lambda: 2)
    seen = {}

    def outer(item):
        ids = set()
        P._parallel_for(lambda _: ids.add(threading.get_ident()), list(range(8)), work=P.PARALLEL_MIN_WORK)
        seen[item] = (ids, threading.get_ident(), P._free_threads(), len(P._row_blocks(1000)))

    P._parallel_for(outer, [0, 1], work=P.PARALLEL_MIN_WORK)
    for ids, tid, free, blocks in seen.values():
        assert ids == {tid} and free == 1 and blocks == 1
    assert len(P._row_blocks(1000)) == -(-1000 // P.ROW_BLOCK)      # outside a region: blocks of rows
