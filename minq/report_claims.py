"""The seed's claims, judged by the report's rows (chapter 13).

Each claim gets minq's measurement from the rows present and a verdict: ``holds``, ``partly`` (some
rows agree, others do not), ``does not hold``, or ``not measured`` (with the rows that are missing).
Nothing here is a number typed in from a past run: every figure is computed from ``rows`` (the dicts
of ``minq.report.run_report``), so the verdicts follow whatever was measured.

Thresholds, stated once: "nearly lossless" is a perplexity change below +0.1%; the 4-bit claim is the
band +0.5% .. +2%; "noticeable" is more than +2% (beyond the 4-bit band); "impractical" is at least
twice the float perplexity (+100%). A row is *broken* when its perplexity exceeds ``BROKEN_FACTOR``
times the float one (an encoder's: cosine to the float embeddings below ``BROKEN_COSINE``); the plot
shows broken rows apart.
"""

from __future__ import annotations

import re

__all__ = ["seed_claims", "is_broken", "BROKEN_FACTOR", "BROKEN_COSINE", "HOLDS", "PARTLY", "FAILS", "UNMEASURED"]

BROKEN_FACTOR = 10
BROKEN_COSINE = 0.9
HOLDS, PARTLY, FAILS, UNMEASURED = "holds", "partly", "does not hold", "not measured"
PARAMS_70B = 70e9


def is_broken(row: dict, ref: dict) -> bool:
    """Perplexity above ``BROKEN_FACTOR`` x the float row's, or (encoder) cosine mean below ``BROKEN_COSINE``."""
    if "perplexity" in row:
        return row["perplexity"] > BROKEN_FACTOR * ref["perplexity"]
    return "cosine_mean" in row and row["cosine_mean"] < BROKEN_COSINE


def _quantized(rows):
    return [r for r in rows[1:] if "skipped" not in r]


def _verdict(n_ok: int, n: int) -> str:
    return HOLDS if n_ok == n else FAILS if n_ok == 0 else PARTLY


def _pct(r) -> str:
    return f"{r['scheme']} {r['change_pct']:+.2f}%"


def _band(rows, bits: int, ok, rule: str, example: str) -> tuple[str, str]:
    """(measured, verdict) of a claim about every quantized row with ``bits``-bit weights."""
    sel = sorted((r for r in rows if r.get("weight_bits") == bits), key=lambda r: r["change_pct"])
    if not sel:
        return f"no {bits}-bit row (run e.g. {example})", UNMEASURED
    good = [r for r in sel if ok(r["change_pct"])]
    shown = ", ".join(_pct(r) for r in sel) if len(sel) <= 4 else f"best {_pct(sel[0])}, worst {_pct(sel[-1])}"
    return f"{len(good)} of {len(sel)} {bits}-bit rows {rule}: {shown}", _verdict(len(good), len(sel))


def _group(name: str):
    m = re.search(r"w(\d+)g(\d+)", name)
    return (int(m[1]), int(m[2])) if m else None


def _awq_vs_gptq(rows) -> tuple[str, str]:
    awq = {_group(r["scheme"]): r for r in rows if r["family"] == "awq" and _group(r["scheme"])}
    gptq = {_group(r["scheme"]): r for r in rows if r["family"] == "gptq" and _group(r["scheme"])}
    pairs = [(awq[k], gptq[k]) for k in sorted(set(awq) & set(gptq))]
    if not pairs:
        have = ", ".join(r["scheme"] for r in [*awq.values(), *gptq.values()]) or "neither"
        return (f"needs an awq-w{{b}}g{{g}} and a gptq-w{{b}}g{{g}}... row at the same bits and group "
                f"(present: {have})"), UNMEASURED
    parts, score = [], 0
    for a, g in pairs:
        better, faster = a["perplexity"] < g["perplexity"], a["quantize_s"] < g["quantize_s"]
        score += better + faster
        parts.append(f"{a['scheme']} perplexity {a['perplexity']:.3f} vs {g['scheme']} {g['perplexity']:.3f} "
                     f"({'better' if better else 'worse'}), quantize {a['quantize_s']:.0f} s vs "
                     f"{g['quantize_s']:.0f} s ({'faster' if faster else 'slower'})")
    return "; ".join(parts), _verdict(score, 2 * len(pairs))


def _memory_70b(rows) -> tuple[str, str]:
    four = [r for r in rows if r.get("weight_bits") == 4 and _group(r["scheme"])]
    four.sort(key=lambda r: (r["family"] != "rtn", r["scheme"] != "rtn-w4g64"))
    if not four:
        return "no 4-bit group scheme measured (run e.g. rtn-w4g64)", UNMEASURED
    r = four[0]
    gb = PARAMS_70B * r["bits_per_weight"] / 8 / 1e9
    extra = 100 * (gb / 35 - 1)
    text = (f"70e9 x {r['bits_per_weight']:.4f} bits ({r['scheme']}, scales and zero points included) / 8 = "
            f"{gb:.1f} GB ({extra:+.1f}% over 35 GB, the codes alone)")
    return text, HOLDS if abs(extra) <= 2 else PARTLY


def seed_claims(rows: list[dict]) -> list[dict]:
    """The seed's claims with minq's measurement and a verdict: a list of {claim, measured, verdict}.

    ``rows[0]`` is the float reference; rows with ``skipped`` are left out. Decoder rows carry
    ``perplexity`` / ``change_pct``; an encoder's (no perplexity) leave the perplexity claims unmeasured.
    """
    q = _quantized(rows)
    decoder = "perplexity" in rows[0]
    out = []

    def add(claim, measured_verdict):
        out.append({"claim": claim, "measured": measured_verdict[0], "verdict": measured_verdict[1]})

    no_ppl = ("perplexity does not apply to an encoder (see the SmolLM2 report)", UNMEASURED)
    add("8-bit: nearly lossless (< 0.1% perplexity change)",
        _band(q, 8, lambda c: c < 0.1, "below +0.1%", "rtn-w8") if decoder else no_ppl)
    add("4-bit: 0.5-2% degradation",
        _band(q, 4, lambda c: 0.5 <= c <= 2.0, "within +0.5..+2%", "rtn-w4g64") if decoder else no_ppl)
    add("3-bit: noticeable degradation",
        _band(q, 3, lambda c: c > 2.0, "above +2%", "rtn-w3g64") if decoder else no_ppl)
    add("2-bit: impractical", _band(q, 2, lambda c: c >= 100.0, "at least 2x the float perplexity", "rtn-w2g64")
        if decoder else no_ppl)
    add("AWQ: slightly better than GPTQ, and faster", _awq_vs_gptq(q) if decoder else no_ppl)
    add("70B parameters x 4 bits = 35 GB", _memory_70b(q))
    add("4-bit decode is faster than float", ("not measured yet (the runtime issue)", UNMEASURED))
    return out
