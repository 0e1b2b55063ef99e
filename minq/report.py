"""The main job: quantize the default real model with every registered scheme, measure, write a
table and a plot.

For each scheme: quantize SmolLM2-135M (``minq.quantize``), measure perplexity on the evaluation
text (``minq.eval.perplexity``, non-overlapping windows of 512 tokens, the first ``max_tokens``
tokens of ``data/``), and record bits per weight of the quantized linears (scales and zero points
included), their size, and the wall time of quantizing and evaluating.

Output (written atomically): ``<out>/report.md`` — scheme, bits/weight, linears MB, perplexity,
change vs full precision, times — and ``<out>/report.png`` — bits per weight vs perplexity.

Caveat the table repeats: SmolLM2's decoder weights were published as Q4_1 (asymmetric 4-bit, float
minimum, groups of 32), so minq's "full precision" is that file dequantized to float32, and 4-bit
asymmetric groups of 32 would reproduce it almost exactly: that is not a method result.
"""

from __future__ import annotations

import time
from pathlib import Path

from tqdm.auto import tqdm

from minq import registry
from minq._io import atomic_path, atomic_write_text

__all__ = ["run_report", "DEFAULT_MAX_TOKENS"]

DEFAULT_MAX_TOKENS = 16384  # 32 windows of 512 tokens: about 1 s per window on 2 cores
FULL = "float32"


def run_report(model="smollm2", schemes=None, out_dir="minq-report", *, max_tokens: int = DEFAULT_MAX_TOKENS,
               window: int = 512, progress: bool = True) -> list[dict]:
    """Quantize ``model`` (a name, a .gguf path or a loaded model) with each scheme and evaluate it.

    schemes: scheme names (default ``registry.default_schemes()``); unknown names fail before any work.
    Returns the rows (the first one is the unquantized reference) and writes report.md / report.png.
    """
    import minq
    from minq.data import eval_tokens
    from minq.eval import perplexity

    schemes = list(registry.default_schemes() if schemes is None else schemes)
    if not schemes:
        raise ValueError("schemes is empty")
    for name in schemes:  # unknown names fail before any work
        registry.get(name)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < window:
        raise ValueError(f"max_tokens must be an int >= window ({window}), got {max_tokens!r}")
    base = minq.load_model(model, progress=progress) if isinstance(model, (str, Path)) else model
    ids = eval_tokens(base.tokenizer, max_tokens=max_tokens)
    n_weights = sum(w.shape[0] * w.shape[1] for w in base.weights.values())

    def measure(name, m, t_quant):
        t0 = time.perf_counter()
        ppl = perplexity(m, ids, window, progress=progress)
        return {"scheme": name, "bits_per_weight": 8.0 * m.nbytes / n_weights, "linears_mb": m.nbytes / 1e6,
                "perplexity": ppl, "quantize_s": t_quant, "eval_s": time.perf_counter() - t0}

    rows = [measure(FULL, base, 0.0)]
    for name in tqdm(schemes, desc="minq report", unit="scheme", disable=not progress):
        t0 = time.perf_counter()
        qm = minq.quantize(base, name, progress=progress)
        rows.append(measure(name, qm, time.perf_counter() - t0))
    ref = rows[0]["perplexity"]
    for r in rows:
        r["change_pct"] = 100.0 * (r["perplexity"] / ref - 1.0)
    out_dir = Path(out_dir)
    atomic_write_text(out_dir / "report.md", markdown(rows, len(ids), window))
    _plot(rows, out_dir / "report.png")
    return rows


def markdown(rows, n_tokens: int, window: int) -> str:
    lines = [
        "# minq report: SmolLM2-135M-Instruct",
        "",
        f"Perplexity over the first {n_tokens:,} tokens of minq's evaluation text, non-overlapping windows "
        f"of {window} tokens. Bits per weight and size cover the decoder linears (scales and zero points "
        "included); embeddings and norms stay in float.",
        "",
        "| scheme | bits/weight | linears MB | perplexity | change vs float32 | quantize s | eval s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['scheme']} | {r['bits_per_weight']:.3f} | {r['linears_mb']:.1f} | "
                     f"{r['perplexity']:.3f} | {r['change_pct']:+.2f}% | {r['quantize_s']:.1f} | {r['eval_s']:.1f} |")
    lines += [
        "",
        "float32 is the published Q4_1 checkpoint dequantized (minq's full-precision reference): "
        "4-bit asymmetric groups of 32 with a float minimum reproduce it almost exactly, so compare "
        "methods at settings that do not align with it (symmetric, per channel, groups of 64, 3 and 2 bits).",
    ]
    return "\n".join(lines) + "\n"


def _plot(rows, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover
        raise ImportError('the report plot needs matplotlib: pip install "minq[notebooks]"') from e
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ref = rows[0]
    ax.axhline(ref["perplexity"], color="gray", ls="--", lw=1, label=f"{ref['scheme']} ({ref['perplexity']:.2f})")
    for r in rows[1:]:
        ax.scatter(r["bits_per_weight"], r["perplexity"], s=30)
        ax.annotate(r["scheme"], (r["bits_per_weight"], r["perplexity"]), fontsize=7,
                    xytext=(4, 2), textcoords="offset points")
    ax.set_yscale("log")
    ax.set_xlabel("bits per weight of the decoder linears (scales and zero points included)")
    ax.set_ylabel("perplexity (log scale)")
    ax.set_title("minq report: SmolLM2-135M, bits per weight vs perplexity")
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
