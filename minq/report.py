"""The main job: quantize with every registered scheme, measure, write a table and a plot.

Until the real-model testbed lands, the report quantizes a fixed set of synthetic, LLM-shaped
weight matrices (the shapes of one SmolLM2-135M decoder block, Gaussian rows with log-normal row
scales and a few outlier input channels) and measures the weight reconstruction error:

    relative MSE = ||W - W_hat||^2 / ||W||^2          SQNR = -10 log10(relative MSE)  [dB]

Output: ``<out>/report.md`` (scheme, bits per weight, size MB, relative MSE, SQNR, time) and
``<out>/report.png`` (bits per weight vs relative MSE), both written atomically.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from minq import registry
from minq._io import atomic_path, atomic_write_text

__all__ = ["llm_like_weights", "run_report"]

# (name, [out, in]) of one SmolLM2-135M decoder block (hidden 576, 9 heads / 3 KV heads, MLP 1536)
BLOCK_SHAPES = [
    ("attn_q", (576, 576)), ("attn_k", (192, 576)), ("attn_v", (192, 576)), ("attn_output", (576, 576)),
    ("ffn_gate", (1536, 576)), ("ffn_up", (1536, 576)), ("ffn_down", (576, 1536)),
]


def llm_like_weights(seed: int = 0) -> dict[str, np.ndarray]:
    """Synthetic float32 weights with the shapes of one SmolLM2 block and LLM-like structure:
    per-row scales spread over ~1.5 decades and ~0.5% of input channels scaled 10-30x (outliers)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, (n_out, n_in) in BLOCK_SHAPES:
        W = rng.standard_normal((n_out, n_in)).astype(np.float32) * np.float32(0.02)
        W *= np.exp(rng.normal(0.0, 0.4, size=(n_out, 1))).astype(np.float32)
        cols = rng.choice(n_in, size=max(1, n_in // 200), replace=False)
        W[:, cols] *= rng.uniform(10, 30, size=cols.size).astype(np.float32)
        out[name] = W
    return out


def run_report(schemes=None, out_dir="minq-report", seed: int = 0, progress: bool = True) -> list[dict]:
    """Quantize the synthetic weights with each scheme; write report.md and report.png into
    ``out_dir``; return the rows. ``schemes`` defaults to ``registry.SCHEMES``."""
    schemes = list(registry.SCHEMES if schemes is None else schemes)
    if not schemes:
        raise ValueError("schemes is empty")
    resolved = [registry.get(name) for name in schemes]  # unknown names fail before any work
    weights = llm_like_weights(seed)
    n_params = sum(W.size for W in weights.values())
    rows = []
    for scheme in tqdm(resolved, desc="minq report", unit="scheme", disable=not progress):
        t0 = time.perf_counter()
        err = ref = nbytes = 0.0
        for W in weights.values():
            Wq = scheme.quantize_weight(W)
            d = W.astype(np.float64) - Wq.dequantize()
            err += float(np.sum(d * d))
            ref += float(np.sum(W.astype(np.float64) ** 2))
            nbytes += Wq.nbytes
        rel = err / ref
        rows.append({
            "scheme": scheme.name, "bits_per_weight": 8.0 * nbytes / n_params, "size_mb": nbytes / 1e6,
            "rel_mse": rel, "sqnr_db": -10 * np.log10(rel), "seconds": time.perf_counter() - t0,
        })
    out_dir = Path(out_dir)
    atomic_write_text(out_dir / "report.md", _markdown(rows, n_params))
    _plot(rows, out_dir / "report.png")
    return rows


def _markdown(rows, n_params) -> str:
    lines = [
        "# minq report",
        "",
        f"Synthetic LLM-shaped weights: one SmolLM2-135M decoder block, {n_params:,} parameters "
        f"(float32: {4 * n_params / 1e6:.2f} MB). Error is the weight reconstruction error; the "
        "real-model perplexity report replaces this once the testbed lands.",
        "",
        "| scheme | bits/weight | size MB | relative MSE | SQNR dB | time s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['scheme']} | {r['bits_per_weight']:.3f} | {r['size_mb']:.3f} | "
                     f"{r['rel_mse']:.3e} | {r['sqnr_db']:.2f} | {r['seconds']:.3f} |")
    return "\n".join(lines) + "\n"


def _plot(rows, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover
        raise ImportError('the report plot needs matplotlib: pip install "minq[notebooks]"') from e
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        ax.scatter(r["bits_per_weight"], r["rel_mse"], s=30)
        ax.annotate(r["scheme"], (r["bits_per_weight"], r["rel_mse"]), fontsize=7,
                    xytext=(4, 2), textcoords="offset points")
    ax.set_yscale("log")
    ax.set_xlabel("bits per weight (scales and zero points included)")
    ax.set_ylabel("relative MSE of the weights")
    ax.set_title("minq report: bits per weight vs error")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
