"""The report's files (chapter 13): report.md, report.png, report.html and report.json, written as one set.

    <out>/report.md     the table, the seed's claims with verdicts, the caveats (Markdown)
    <out>/report.png    bits per weight vs quality (``minq.report_plot``)
    <out>/report.html   the same table and claims with the plot inline (base64 PNG): one self-contained file
    <out>/report.json   every row, the machine, the versions, the settings, and the manifest of the set

How the set stays whole. ``out`` stays a plain folder that may hold the user's own files too, so the set
is not swapped in as a folder (that would move or delete the user's files, or turn ``out`` into a
symlink that a copy of the folder would not follow). Instead all four files are first rendered in
memory and written to temporaries beside their targets (``minq._io.atomic_path``: the user's
permissions kept); then each temporary is renamed over its target, report.json (the manifest) last.
During that commit, which takes milliseconds, SIGINT (Ctrl-C) and SIGTERM are held back and delivered
right after it. So Ctrl-C at any moment leaves either the previous complete set (before the commit;
the temporaries are removed) or the new one (a Ctrl-C during the commit acts after it). Only a hard
kill (SIGKILL, power loss) inside those milliseconds can leave some files new and others old; the
manifest (a set id and the sha256 of each file; each file also carries the set id) shows it:
``verify_report_set`` raises, and the next run rewrites the set (and ``remove_stale_temporaries``
clears the dead run's temporaries).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import html
import json
import os
import platform
import signal
import tempfile
import threading
import time
from pathlib import Path

from minq._io import atomic_path, remove_stale_temporaries, temp_prefix
from minq.report_claims import BROKEN_COSINE, BROKEN_FACTOR, is_broken, seed_claims
from minq.report_plot import png_bytes

__all__ = ["FILES", "check_out_dir", "write_report_set", "verify_report_set", "markdown", "html_page"]

FILES = ("report.md", "report.png", "report.html", "report.json")   # the commit order: the manifest last


def check_out_dir(out_dir) -> Path:
    """``out_dir`` as a Path, made if missing; ValueError naming ``out_dir`` (``--out``) if it is a file,
    one of the report files in it is a folder or not a plain file, or it cannot be written."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir (--out) {out} is a file, not a folder")
    for name in FILES:
        p = out / name
        if p.exists() and not p.is_file():
            raise ValueError(f"out_dir (--out): {p} is a {'folder' if p.is_dir() else 'special file'}; minq "
                             f"writes its {name} there: move it away or choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=temp_prefix("write-check"), suffix=".tmp", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ValueError(f"out_dir (--out) {out} cannot be written: {e.strerror or e}") from None
    remove_stale_temporaries(out)
    return out


@contextlib.contextmanager
def _signals_held():
    """SIGINT and SIGTERM wait until the block ends, then act (main thread; elsewhere Python gets none).

    The two signals are unblocked in this thread meanwhile (and the mask restored after): a library, or
    the parent of this process, may have left them blocked, and a blocked Ctrl-C would never act."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = (signal.SIGINT, signal.SIGTERM)
    mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, held)
    got = []
    old = {s: signal.signal(s, lambda n, _frame: got.append(n)) for s in held}
    try:
        yield
    finally:
        try:
            for s, h in old.items():
                signal.signal(s, signal.SIG_DFL if h is None else h)    # None: a handler not set from Python
            for s in dict.fromkeys(got):
                signal.raise_signal(s)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _machine() -> dict:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "load_average": None if load is None else [round(v, 2) for v in load]}


def _versions() -> dict:
    from importlib import metadata

    import minq

    out = {"minq": minq.__version__}
    for pkg in ("numpy", "numba", "torch"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[pkg] = metadata.version(pkg)
    return out


def _title(meta) -> str:
    return f"minq report: {meta['model']}" + (" (quick run)" if meta.get("quick") else "")


def _settings_text(meta, rows) -> str:
    s = meta["settings"]
    if s["metric"] == "perplexity":
        n = rows[0].get("eval_tokens", s["max_tokens"])
        text = (f"Perplexity over the first {n:,} tokens of minq's evaluation text, non-overlapping windows of "
                f"{s['window']} tokens")
    else:
        text = (f"Embedding fidelity over {s['sentences']} lines of minq's evaluation text: cosine of each "
                "sentence's embedding to the float one, and nearest-neighbour agreement")
    if meta.get("note"):
        text += f" ({meta['note']})"
    return text + (". Bits per weight and size cover the linears (scales and zero points included); embeddings "
                   "and norms stay in float.")


def _cells(r, ref) -> list[str]:
    """One table row: scheme, bits/weight, MB, metric(s), change, family, quantize s, eval s."""
    if "skipped" in r:
        return [r["scheme"], "", "", "does not apply", "", r["family"], "", ""]
    mark = " (broken)" if is_broken(r, ref) else ""
    cached = " (cached)" if r.get("cached") else ""
    if "perplexity" in r:
        metric = [f"{r['perplexity']:.3f}{mark}", f"{r['change_pct']:+.2f}%"]
    else:
        metric = [f"{r['cosine_mean']:.4f} / {r['cosine_min']:.4f}{mark}", f"{r['nn_agreement']:.3f}"]
    return [r["scheme"], f"{r['bits_per_weight']:.3f}", f"{r['linears_mb']:.1f}", *metric, r["family"],
            f"{r['quantize_s']:.1f}", f"{r['eval_s']:.1f}{cached}"]


def _header(ref) -> list[str]:
    m = ["perplexity", f"change vs {ref['scheme']}"] if "perplexity" in ref else ["cosine mean / min", "NN agreement"]
    return ["scheme", "bits/weight", "linears MB", *m, "family", "quantize s", "eval s"]


CAVEAT = ("float32 is the model file's weights dequantized (minq's full-precision reference). For SmolLM2, the "
          "default model, that file is the published Q4_1 checkpoint: 4-bit asymmetric groups of 32 with a float "
          "minimum reproduce it almost exactly, so compare methods at settings that do not align with it "
          "(symmetric, per channel, groups of 64, 3 and 2 bits).")


def _broken_rule(ref) -> str:
    if "perplexity" in ref:
        return f"perplexity above {BROKEN_FACTOR}x {ref['scheme']}"
    return f"cosine mean below {BROKEN_COSINE}"


def markdown(rows, meta, set_id: str = "") -> str:
    ref = rows[0]
    md = lambda cells: "| " + " | ".join(cells) + " |"   # noqa: E731
    lines = [f"<!-- minq report set {set_id} -->", f"# {_title(meta)}", "", _settings_text(meta, rows), "",
             md(_header(ref)), "|---|" + "---:|" * 4 + "---|---:|---:|", *(md(_cells(r, ref)) for r in rows), "",
             f"Broken (shown apart in the plot): {_broken_rule(ref)}. Times of cached rows are those of the run "
             "that measured them.", "", "## The seed's claims", "",
             "| claim | minq measured | verdict |", "|---|---|---|"]
    lines += [md([c["claim"], c["measured"], f"**{c['verdict']}**"]) for c in seed_claims(rows)]
    if meta["kind"] == "decoder":
        lines += ["", CAVEAT]
    m = _machine()
    lines += ["", f"Machine: {m['platform']}, {m['cpu_count']} CPUs, load average {m['load_average']}; "
              f"versions {_versions()}. Every row and setting: report.json.", ""]
    return "\n".join(lines)


def html_page(rows, meta, png: bytes, set_id: str = "") -> str:
    """One self-contained page: the table, the plot inline (base64 PNG), the claims."""
    ref = rows[0]
    e = html.escape

    def table(head, body):
        th = "".join(f"<th>{e(h)}</th>" for h in head)
        tr = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in cells) + "</tr>" for cells in body)
        return f"<table><thead><tr>{th}</tr></thead><tbody>{tr}</tbody></table>"

    claims = [[c["claim"], c["measured"], c["verdict"]] for c in seed_claims(rows)]
    img = base64.b64encode(png).decode("ascii")
    style = ("body{font-family:sans-serif;max-width:72em;margin:2em auto;padding:0 1em}table{border-collapse:"
             "collapse;font-size:90%}td,th{border:1px solid #ccc;padding:2px 6px}td{text-align:right}"
             "td:first-child{text-align:left}img{max-width:100%}")
    return (f"<!DOCTYPE html>\n<!-- minq report set {e(set_id)} -->\n<html><head><meta charset='utf-8'>"
            f"<title>{e(_title(meta))}</title><style>{style}</style></head><body>\n<h1>{e(_title(meta))}</h1>\n"
            f"<p>{e(_settings_text(meta, rows))}</p>\n<img alt='bits per weight vs quality' "
            f"src='data:image/png;base64,{img}'>\n{table(_header(ref), [_cells(r, ref) for r in rows])}\n"
            f"<p>Broken (shown apart in the plot): {e(_broken_rule(ref))}.</p>\n"
            f"<h2>The seed's claims</h2>\n{table(['claim', 'minq measured', 'verdict'], claims)}\n"
            + (f"<p>{e(CAVEAT)}</p>\n" if meta["kind"] == "decoder" else "") + "</body></html>\n")


def write_report_set(out_dir, rows: list[dict], meta: dict) -> str:
    """Write the four files into ``out_dir`` as one set (module docstring); return the set id."""
    out = Path(out_dir)
    set_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{os.urandom(3).hex()}"
    png = png_bytes(rows, _title(meta), set_id)
    data = {"report.md": markdown(rows, meta, set_id).encode(), "report.png": png,
            "report.html": html_page(rows, meta, png, set_id).encode()}
    manifest = {"set_id": set_id, "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **meta, "machine": _machine(),
                "versions": _versions(), "rows": rows, "claims": seed_claims(rows),
                "files": {n: hashlib.sha256(b).hexdigest() for n, b in data.items()}}
    data["report.json"] = (json.dumps(manifest, indent=1) + "\n").encode()
    with _signals_held(), contextlib.ExitStack() as stack:
        for name in reversed(FILES):                  # entered manifest first, so it is renamed into place last
            stack.enter_context(atomic_path(out / name)).write_bytes(data[name])
    return set_id


def verify_report_set(out_dir) -> str:
    """The set id of the complete set in ``out_dir``; ValueError if a file is missing or not of that set."""
    out = Path(out_dir)
    try:
        manifest = json.loads((out / "report.json").read_text(encoding="utf-8"))
        bad = [n for n, sha in manifest["files"].items() if hashlib.sha256((out / n).read_bytes()).hexdigest() != sha]
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"{out}: no complete minq report set ({err})") from None
    if bad:
        raise ValueError(f"{out}: {', '.join(bad)} do not belong to the set {manifest['set_id']} of report.json")
    return manifest["set_id"]
