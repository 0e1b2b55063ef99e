"""The report's plot: bits per weight vs quality, one colour and marker per method family (chapter 13).

Question it answers: for a budget of bits per weight, how good can the model be, and which method
gets there? The main panel shows every working row (perplexity, lower is better; an encoder's cosine
to the float embeddings, higher is better), the float model as a dashed line, and the Pareto front
(the best quality at or below each bit budget) as a step line. Only the Pareto points are labelled,
placed so that no two labels overlap (the table lists every row). Broken rows (``report_claims
.is_broken``: perplexity above 10x float) would stretch the axis over orders of magnitude and squash
everything else, so they are written out, with their values, in a strip beside the main panel.
"""

from __future__ import annotations

import io

from minq.report_claims import BROKEN_COSINE, BROKEN_FACTOR, is_broken

__all__ = ["draw", "png_bytes", "pareto"]

MARKERS = "osD^vP*Xph<>"


def _metric(ref):
    if "perplexity" in ref:
        return "perplexity", True, "perplexity (lower is better)"
    return "cosine_mean", False, "cosine to the float embeddings, mean (higher is better)"


def pareto(rows, key: str, lower_is_better: bool) -> list[dict]:
    """The rows no other row beats with at most as many bits per weight, by increasing bits per weight."""
    front = []
    sign = 1 if lower_is_better else -1
    for r in sorted(rows, key=lambda r: (r["bits_per_weight"], sign * r[key])):
        if not front or sign * r[key] < sign * front[-1][key]:
            front.append(r)
    return front


def _overlaps(b, boxes) -> float:
    return sum(max(0, min(b.x1, o.x1) - max(b.x0, o.x0)) * max(0, min(b.y1, o.y1) - max(b.y0, o.y0)) for o in boxes)


def _place_labels(ax, points, others):
    """Annotate ``points`` [(x, y, text)], trying offsets around each until the label overlaps no label
    placed before it and no marker; the least-overlapping offset if none is free."""
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    marks = []
    for x, y in others:
        px, py = ax.transData.transform((x, y))
        from matplotlib.transforms import Bbox

        marks.append(Bbox([[px - 4, py - 4], [px + 4, py + 4]]))
    placed = []
    steps = [(7, 4), (7, -11), (-7, 4), (-7, -11), (0, 12), (0, -18)]
    tries = [(dx * k, dy * k, "left" if dx >= 0 else "right") for k in (1, 2, 3, 4) for dx, dy in steps]
    axbox = ax.get_window_extent(renderer)
    for x, y, text in points:
        best = None
        for dx, dy, ha in tries:
            t = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=7, ha=ha,
                            gid="pareto-label", arrowprops=None if abs(dx) + abs(dy) < 20 else
                            {"arrowstyle": "-", "lw": 0.5, "color": "0.5"})
            b = t.get_window_extent(renderer)
            cost = _overlaps(b, placed) + _overlaps(b, marks) + (0 if axbox.contains(b.x0, b.y0) and
                                                                 axbox.contains(b.x1, b.y1) else 1e6)
            if best is None or cost < best[0]:
                if best is not None:
                    best[1].remove()
                best = (cost, t, b)
            else:
                t.remove()
            if cost == 0:
                break
        placed.append(best[2])


def draw(rows: list[dict], title: str):
    """The figure of the report (matplotlib ``Figure``); ``rows[0]`` is the float reference."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover
        raise ImportError('the report plot needs matplotlib: pip install "minq[notebooks]"') from e
    ref = rows[0]
    key, lower, ylabel = _metric(ref)
    q = [r for r in rows[1:] if "skipped" not in r]
    good = [r for r in q if not is_broken(r, ref)]
    broken = [r for r in q if is_broken(r, ref)]
    families = list(dict.fromkeys(r["family"] for r in q))
    style = {f: (f"C{i % 10}", MARKERS[i % len(MARKERS)]) for i, f in enumerate(families)}
    fig = plt.figure(figsize=(10.5, 5))
    grid = fig.add_gridspec(2, 2, width_ratios=[3, 1], height_ratios=[1.1, 1])
    ax, side = fig.add_subplot(grid[:, 0]), fig.add_subplot(grid[0, 1])   # the legend sits beside the data
    side.axis("off")
    side.set_gid("legend")
    ax.set_gid("main")
    ax.axhline(ref[key], color="0.4", ls="--", lw=1, label=f"{ref['scheme']} ({ref[key]:.4g})")
    for f in families:
        pts = [r for r in good if r["family"] == f]
        c, m = style[f]
        ax.scatter([r["bits_per_weight"] for r in pts], [r[key] for r in pts], color=c, marker=m, s=36, zorder=3,
                   label=f"{f} ({len(pts)})" + ("" if len(pts) == len([r for r in q if r["family"] == f])
                                                else f" + {len([r for r in broken if r['family'] == f])} broken"))
    front = pareto(good, key, lower)
    if front:
        xs = [r["bits_per_weight"] for r in front]
        ax.step(xs + [max(xs) + 0.25], [r[key] for r in front] + [front[-1][key]], where="post", color="k", lw=1,
                alpha=0.6, zorder=2, label="Pareto front (best at <= bits)")
    ys = [r[key] for r in good] + [ref[key]]
    if lower and max(ys) / min(ys) > 3:
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 1.5, 2.0, 3.0, 5.0, 7.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
    xs_all = [r["bits_per_weight"] for r in good] or [ref.get("bits_per_weight", 32)]
    ax.set_xlim(min(xs_all) - 0.4, max(xs_all) + 0.9)
    lo, hi = min(ys), max(ys)
    pad = (hi - lo) * 0.12 or abs(hi) * 0.01
    ax.set_ylim(lo / 1.08 if ax.get_yscale() == "log" else lo - pad, hi * 1.12 if ax.get_yscale() == "log" else hi + pad)
    ax.set_xlabel("bits per weight of the linears (scales and zero points included)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.25)
    side.legend(*ax.get_legend_handles_labels(), loc="upper left", fontsize=7.5, title="method family (schemes)",
                title_fontsize=7.5, frameon=False)
    if broken:
        strip = fig.add_subplot(grid[1, 1])
        strip.set_gid("broken")
        strip.axis("off")
        rule = f"perplexity > {BROKEN_FACTOR}x {ref['scheme']}" if lower else f"cosine < {BROKEN_COSINE}"
        strip.text(0, 1, f"broken ({rule}),\nnot on the axes:", va="top", fontsize=8, weight="bold",
                   transform=strip.transAxes)
        step = min(0.15, 0.82 / len(broken))
        for i, r in enumerate(sorted(broken, key=lambda r: r["bits_per_weight"])):
            c, _ = style[r["family"]]
            strip.text(0, 0.82 - step * i, f"{r['scheme']}\n  {r['bits_per_weight']:.2f} bits/w, {key.split('_')[0]} "
                       f"{r[key]:.4g}", va="top", fontsize=7.5, color=c, transform=strip.transAxes)
    fig.tight_layout()
    if front:
        fig.canvas.draw()
        _place_labels(ax, [(r["bits_per_weight"], r[key], r["scheme"]) for r in front],
                      [(r["bits_per_weight"], r[key]) for r in good])
    return fig


def png_bytes(rows: list[dict], title: str, set_id: str) -> bytes:
    """The plot as PNG bytes (the set id in the PNG's Description text chunk)."""
    import matplotlib.pyplot as plt

    fig = draw(rows, title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, metadata={"Description": f"minq report set {set_id}"})
    plt.close(fig)
    return buf.getvalue()
