"""Speed of chapter 04 on SmolLM2-135M: calibration throughput and the cost of activation-quantization hooks.

    python benchmarks/bench_ptq.py [--windows 2] [--seq 512] [--repeat 5]

Everything is measured in one run, interleaved (a load spike from another process hits every variant of
a round alike), and reported as the minimum over ``--repeat`` rounds:

1. Calibration: ``minq.calibration.calibrate`` with per-input-channel max|x| observers (what SmoothQuant collects)
   and with per-tensor MSE observers (``w8a8-mse``) over ``--windows`` windows of ``--seq`` tokens,
   against the plain forward of the same blocks (``embed`` + ``run_block``, no hooks):

       calibration tokens/s,   ratio = calibrate_time / plain_blocks_time     (1.0 = free observers)

2. Hooks: ``model.logits`` of the W8A8 models (int8 weights; inputs quantized by the runtime hooks: static
   per tensor, dynamic per token, LLM.int8 outlier split) against the *same* int8-weight model without
   hooks (``qmodel.model``, so only the hooks differ):

       extra = hooked_time / plain_time - 1          goal: < 30 %

   and, within one hooked forward, the share of its time spent inside the hooks (timed around each call:
   less sensitive to other processes than the end-to-end difference).

3. The MSE weight search (``rtn-w4g64-mse``, ``rtn-w3g64-mse``): ``quantize_weight_observed`` on the linears of
   the first ``--mse-blocks`` blocks with the NumPy reference search and with the Numba kernel (same codes,
   checked here too), and min-max RTN (``quantize_groups``) as the floor:

       speed-up = numpy_time / numba_time,   whole model ~ numba_time * n_layers / mse_blocks
"""

from __future__ import annotations

import argparse
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--windows", type=int, default=2, help="calibration / forward windows (default 2)")
    p.add_argument("--seq", type=int, default=512, help="tokens per window (default 512)")
    p.add_argument("--repeat", type=int, default=5, help="rounds; the minimum is reported (default 5)")
    p.add_argument("--mse-blocks", type=int, default=2, help="blocks whose linears the MSE search times (default 2)")
    p.add_argument("--only-mse", action="store_true", help="run part 3 only")
    a = p.parse_args(argv)

    import minq
    import minq.smoothquant  # noqa: F401  (registers smoothquant-w8a8)
    from minq.calibration import calibrate
    from minq.data import calibration_tokens
    from minq.observers import MinMaxObserver, MSEObserver
    from minq.w8a8 import ActQuantModel

    model = minq.load_model("smollm2", progress=False)
    if a.only_mse:
        return bench_mse(model, a)
    ids = calibration_tokens(model.tokenizer, n_samples=a.windows, seq_len=a.seq, seed=0)   # [windows, seq]
    n_tok = ids.size
    L = model.config.n_layers

    def plain_blocks():
        for w in range(0, len(ids), 2):
            x = model.embed(ids[w:w + 2])
            for i in range(L):
                x = model.run_block(i, x)

    calib = {
        "calibrate max|x_j| (SmoothQuant)": lambda: calibrate(model, ids, lambda n: MinMaxObserver(axis=0),
                                                              batch_size=2),
        "calibrate MSE per tensor (w8a8-mse)": lambda: calibrate(model, ids, lambda n: MSEObserver(), batch_size=2),
    }
    print(f"quantizing (int8 weights, calibration {a.windows} x {a.seq}) ...", flush=True)
    qmodels = {name: minq.quantize(model, name, ids, progress=False)
               for name in ("w8a8", "w8a8-dynamic", "llmint8", "smoothquant-w8a8")}
    x = ids[:1]                                                              # one window: the eval batch unit

    plain_blocks()                                                           # warm-up (Numba, caches)
    for qm in qmodels.values():
        qm.logits(x)

    t = {k: [] for k in ["plain blocks", *calib, *(f"plain {n}" for n in qmodels), *qmodels]}
    for _ in range(a.repeat):
        t0 = time.perf_counter()
        plain_blocks()
        t["plain blocks"].append(time.perf_counter() - t0)
        for k, f in calib.items():
            t0 = time.perf_counter()
            f()
            t[k].append(time.perf_counter() - t0)
        for n, qm in qmodels.items():
            for key, fn in ((f"plain {n}", qm.model.logits), (n, qm.logits)):
                t0 = time.perf_counter()
                fn(x)
                t[key].append(time.perf_counter() - t0)
    best = {k: min(v) for k, v in t.items()}

    # inside one hooked forward: the time spent in the hooks themselves (robust to load from elsewhere)
    share = {}
    for n, qm in qmodels.items():
        spent = [0.0]

        def timed(q, spent=spent):
            def hook(name, X):
                t0 = time.perf_counter()
                r = q(name, X)
                spent[0] += time.perf_counter() - t0
                return r
            return hook

        timed_model = ActQuantModel(qm.model, {k: timed(q) for k, q in qm.act.items()})
        runs = []
        for _ in range(a.repeat):
            spent[0] = 0.0
            t0 = time.perf_counter()
            timed_model.logits(x)
            runs.append(spent[0] / (time.perf_counter() - t0))
        share[n] = min(runs)

    print(f"\nSmolLM2-135M, numpy BLAS threads as configured; min of {a.repeat} interleaved rounds")
    print(f"\n1. calibration over {a.windows} x {a.seq} = {n_tok} tokens")
    print(f"   {'plain blocks (no hooks)':38s} {best['plain blocks']:7.2f} s  {n_tok / best['plain blocks']:8.0f} tokens/s")
    for k in calib:
        print(f"   {k:38s} {best[k]:7.2f} s  {n_tok / best[k]:8.0f} tokens/s   ratio {best[k] / best['plain blocks']:.2f}")
    print(f"\n2. activation-quantization hooks, logits of 1 x {a.seq} tokens (goal: extra < 30 %)")
    for n in qmodels:
        plain, hooked = best[f"plain {n}"], best[n]
        print(f"   {n:24s} plain {plain:6.2f} s   hooked {hooked:6.2f} s   extra {100 * (hooked / plain - 1):+6.1f} %"
              f"   time inside the hooks {100 * share[n]:4.1f} % of the hooked forward")
    bench_mse(model, a)
    return 0


def bench_mse(model, a) -> int:
    from unittest import mock

    import numpy as np

    from minq import observers
    from minq.groups import quantize_groups
    from minq.ptq import quantize_weight_observed

    names = [n for i in range(a.mse_blocks) for n in model.block_linear_names(i)]
    Ws = [model.weights[n].dequantize() for n in names]
    n_w = sum(W.size for W in Ws)
    L = model.config.n_layers
    for bits in (4, 3):
        def run(impl, bits=bits):                       # "numpy": the observers' search is the readable reference
            search = observers.mse_search_reference if impl == "numpy" else observers.mse_search
            with mock.patch.object(observers, "mse_search", search):
                return [quantize_weight_observed(W, bits=bits, group_size=64, observer="mse") for W in Ws]

        def rtn(bits=bits):
            return [quantize_groups(W, bits=bits, group_size=64) for W in Ws]

        ref, fast = run("numpy"), run("numba")                   # warm-up (compilation) and the equality check
        for r, f in zip(ref, fast):
            assert np.array_equal(r.codes, f.codes) and np.array_equal(r.s, f.s), "numba != numpy"
        t = {"numpy": [], "numba": [], "min-max RTN": []}
        for _ in range(a.repeat):
            for k, fn in (("numpy", lambda: run("numpy")), ("numba", lambda: run("numba")), ("min-max RTN", rtn)):
                t0 = time.perf_counter()
                fn()
                t[k].append(time.perf_counter() - t0)
        best = {k: min(v) for k, v in t.items()}
        print(f"\n3. rtn-w{bits}g64-mse on the {len(names)} linears of {a.mse_blocks} blocks ({n_w / 1e6:.1f} M weights), "
              f"min of {a.repeat}; codes equal")
        for k, v in best.items():
            print(f"   {k:12s} {v:7.3f} s  {n_w / v / 1e6:7.1f} M weights/s   whole model ~{v * L / a.mse_blocks:6.1f} s")
        print(f"   speed-up numba vs numpy reference: {best['numpy'] / best['numba']:.1f}x; "
              f"numba / min-max RTN: {best['numba'] / best['min-max RTN']:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
