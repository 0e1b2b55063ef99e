"""Speed of the chapter 01-03 kernels, as ratios against baselines measured in the same run.

    python benchmarks/bench_kernels.py [--rows 4096] [--cols 4096] [--repeat 5]

Prints, for each kernel: GB/s (bytes read + bytes written per second), the fraction of this
machine's memcpy bandwidth (``np.copyto`` moving the same number of bytes as the kernel: half read,
half written, so both see the same caches), and the speedup of
minq's fast path over the readable NumPy reference. Best of ``--repeat`` runs, after one warm-up
(Numba compiles on first call). Goal (issue 2): dequantize and unpack at >= 50% of memcpy.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from minq import affine, formats, packing
from minq.formats import FORMATS
from minq.groups import group, quantize_groups


def best_time(fn, repeat):
    fn()  # warm-up: compile, fault pages in
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def memcpy_gbps(nbytes, repeat):
    src = np.ones(nbytes, np.uint8)
    dst = np.empty_like(src)
    t = best_time(lambda: np.copyto(dst, src), repeat)
    return 2 * nbytes / t / 1e9


_MEMCPY = {}


def row(name, moved, t_fast, t_ref, repeat):
    if moved not in _MEMCPY:
        _MEMCPY[moved] = memcpy_gbps(moved // 2, repeat)
    memcpy = _MEMCPY[moved]
    gbps = moved / t_fast / 1e9
    ref = f"{t_ref / t_fast:8.1f}x" if t_ref is not None else "       -"
    print(f"{name:34s} {gbps:8.2f} GB/s {gbps / memcpy:6.0%} of memcpy ({memcpy:5.1f} GB/s)"
          f"   speedup vs NumPy ref {ref}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=4096)
    p.add_argument("--cols", type=int, default=4096)
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    W = rng.standard_normal((args.rows, args.cols)).astype(np.float32)
    print(f"matrix {args.rows}x{args.cols} float32 ({W.nbytes / 1e6:.0f} MB); "
          f"memcpy {memcpy_gbps(W.nbytes, args.repeat):.2f} GB/s (read + write) at that size\n")

    # --- int4, groups of 64, asymmetric: quantize and dequantize ---------------------------------
    g, bits = 64, 4
    Wq = quantize_groups(W, bits=bits, group_size=g)
    qp = Wq.qparams()

    def quant_ref():
        Wg = group(W, g)
        qp_ref = affine.choose_qparams(Wg, bits=bits, axis=-1, scale_dtype="float16")
        return packing.pack_reference(affine.quantize(Wg, qp_ref).reshape(W.shape), bits)

    def dequant_ref():
        q = packing.unpack_reference(Wq.packed, bits, W.shape[1]).reshape(W.shape[0], -1, g)
        return affine.dequantize(q, qp)

    assert np.array_equal(quant_ref(), Wq.packed) and np.array_equal(dequant_ref().reshape(W.shape), Wq.dequantize())
    moved_q = W.nbytes + Wq.nbytes           # read float32, write packed codes + scales + zeros
    row("int4 g64 quantize (fused)", moved_q,
        best_time(lambda: quantize_groups(W, bits=bits, group_size=g), args.repeat),
        best_time(quant_ref, args.repeat), args.repeat)
    row("int4 g64 dequantize (fused unpack)", moved_q,
        best_time(Wq.dequantize, args.repeat), best_time(dequant_ref, args.repeat), args.repeat)

    # --- pack / unpack of 4-bit and 3-bit codes --------------------------------------------------
    for b in (4, 3, 2):
        q = rng.integers(0, 1 << b, size=W.shape).astype(np.uint8)
        pk = packing.pack(q, b)
        moved = q.nbytes + pk.nbytes
        row(f"pack {b}-bit", moved, best_time(lambda q=q, b=b: packing.pack(q, b), args.repeat),
            best_time(lambda q=q, b=b: packing.pack_reference(q, b), args.repeat), args.repeat)
        row(f"unpack {b}-bit", moved,
            best_time(lambda pk=pk, b=b: packing.unpack(pk, b, W.shape[1]), args.repeat),
            best_time(lambda pk=pk, b=b: packing.unpack_reference(pk, b, W.shape[1]), args.repeat), args.repeat)

    # --- FP8 E4M3 encode / decode ----------------------------------------------------------------
    f8 = FORMATS["float8_e4m3fn"]
    x = W * np.float32(50)
    codes = f8.encode(x)
    assert np.array_equal(formats.encode_reference(x, f8), codes)
    moved = x.nbytes + codes.nbytes
    row("fp8 e4m3fn encode", moved, best_time(lambda: f8.encode(x), args.repeat),
        best_time(lambda: formats.encode_reference(x, f8), args.repeat), args.repeat)
    row("fp8 e4m3fn decode", moved, best_time(lambda: f8.decode(codes), args.repeat),
        best_time(lambda: formats.decode_reference(codes, f8), args.repeat), args.repeat)

if __name__ == "__main__":
    main()
