"""The main job (chapter 13): quantize one real model with many schemes, measure each, compare them,
and check the seed's claims against the measurements.

For each scheme: quantize the model (``minq.quantize``), then measure

- a decoder (SmolLM2, any Llama .gguf): perplexity (``minq.eval.perplexity``) over the first
  ``max_tokens`` tokens of minq's evaluation text, non-overlapping windows of ``window`` tokens;
- an encoder (MiniLM): embedding fidelity (``minq.eval.embedding_fidelity``: cosine to the float
  embeddings and nearest-neighbour agreement) over ``N_SENTENCES`` lines of the evaluation text;

and record bits per weight of the quantized linears (scales and zero points included), their size,
and the wall time of quantizing and of evaluating. The first row is the unquantized model.

Each row is printed as soon as it is measured and cached: one JSON file per (model file sha256,
scheme, evaluation settings, minq version) in ``minq.models.assets.cache_dir() / "report"``, so an
interrupted run resumes where it stopped and a repeated run is instant (``fresh=True`` recomputes).
After every newly measured row the output set is rewritten (``minq.report_files``): report.md,
report.png, report.html and report.json, committed together so that an interruption leaves either
the previous complete set or the new one. The seed's claims are judged in ``minq.report_claims``.

Caveat the table repeats: SmolLM2's decoder weights were published as Q4_1 (asymmetric 4-bit, float
minimum, groups of 32), so minq's "full precision" is that file dequantized to float32, and 4-bit
asymmetric groups of 32 would reproduce it almost exactly: that is not a method result.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import re
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

from minq import registry
from minq._io import atomic_write_text, remove_stale_temporaries
from minq.api import calibration_ids, quantize
from minq.report_claims import is_broken
from minq.report_files import check_out_dir, write_report_set

__all__ = ["run_report", "DEFAULT_MAX_TOKENS", "QUICK_MAX_TOKENS", "N_SENTENCES", "FULL"]

DEFAULT_MAX_TOKENS = 16384  # the full report: 32 windows of 512 tokens, 25-35 s per scheme on 2 cores
QUICK_MAX_TOKENS = 4096     # the quick run: 8 windows
N_SENTENCES = 256           # encoder rows: lines of the evaluation text
QUICK_CALIBRATION = 32      # the quick run calibrates on 32 samples (minq.quantize's default: 128)
_DEFAULT_CALIBRATION = inspect.signature(calibration_ids).parameters["n_samples"].default   # minq.quantize's
FULL = "float32"


def run_report(model="smollm2", schemes=None, out_dir="minq-report", *, quick: bool = False,
               max_tokens: int | None = None, window: int = 512, fresh: bool = False, cache=None,
               model_id: str | None = None, progress: bool = True, verbose: bool = True) -> list[dict]:
    """Quantize ``model`` with each scheme, measure it, write the report set into ``out_dir``; return the rows.

    model: a name (``"smollm2"``, ``"minilm"``), a .gguf path, or a loaded model (then its rows are
        cached only under ``model_id``, e.g. the sha256 of its file).
    schemes: scheme names; None: ``registry.default_schemes(quick=quick)``. quick: also evaluate on
        ``QUICK_MAX_TOKENS`` (4,096) tokens instead of ``DEFAULT_MAX_TOKENS`` (16,384) unless
        ``max_tokens`` is given. cache: a folder, None (``cache_dir() / "report"``) or False (no cache).
    Rows are dicts: scheme, family, weight_bits, bits_per_weight, linears_mb, perplexity and change_pct
    (decoder) or cosine_mean, cosine_min, nn_agreement (encoder), quantize_s, eval_s, cached.

    Every argument is checked before the model is loaded: ValueError / TypeError naming ``schemes``
    (empty, unknown names), ``max_tokens`` (not an int >= ``window``), ``window``, ``out_dir`` (a file,
    one of its report files a folder, not writable) or ``model``.
    """
    names = _check_schemes(schemes, quick)
    source = _Source(model, model_id)
    settings = _check_settings(source, window, max_tokens, quick)
    out_dir = check_out_dir(out_dir)
    source.hash_file()
    store = _Cache(cache, source.sha256, settings)
    note = (f"the quick run: {len(names)} schemes, one per method family at 8 and 4 bits, calibrated on "
            f"{QUICK_CALIBRATION} samples; `minq report --all` runs all {len(registry.default_schemes())} default "
            f"schemes" + (f" on {DEFAULT_MAX_TOKENS:,} tokens" if source.kind == "decoder" else "")
            + f", calibrated on {_DEFAULT_CALIBRATION}") if quick else ""
    meta = {"model": source.label, "model_sha256": source.sha256, "kind": source.kind, "quick": quick, "note": note,
            "schemes": names, "settings": settings, "cache": str(store.folder) if store.folder else None}
    if verbose:
        _say(_header(source, names, settings, note, store, out_dir))
    rows, written = [], 0
    todo = [FULL, *names]
    for i, name in enumerate(tqdm(todo, desc="minq report", unit="scheme", disable=not progress)):
        row = None if fresh else store.get(name)
        if row is None:
            row = _measure(source, name, settings, progress)
            if "skipped" not in row:
                store.put(name, row)
        rows.append(row)
        _relative(rows)
        if verbose:
            _say(_line(rows[-1], rows[0], i, len(todo)))
        if not row["cached"]:                         # cached rows wait for the next new one (or the end)
            write_report_set(out_dir, rows, meta)
            written = len(rows)
    if written < len(rows):
        write_report_set(out_dir, rows, meta)
    return rows


# --- arguments, checked before any expensive work ---------------------------------------------------------


def _check_schemes(schemes, quick: bool) -> list[str]:
    if isinstance(schemes, str):
        raise TypeError(f"schemes must be a list of scheme names, got the str {schemes!r} (use [{schemes!r}])")
    names = list(registry.default_schemes(quick=quick) if schemes is None else schemes)
    if not names:
        raise ValueError("schemes is empty: name at least one scheme (minq schemes lists them)")
    for name in names:                                # unknown names fail before any work
        registry.get(name)
    if FULL in names or len(set(names)) != len(names):
        raise ValueError(f"schemes must be distinct scheme names (the {FULL} row is always measured), got {names}")
    return names


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class _Source:
    """Where the model comes from, what identifies it in the cache, and (loaded on demand) the model."""

    def __init__(self, model, model_id):
        from minq.models import _ENCODERS, MODELS, assets

        self._model = self._path = self._cal = None
        if isinstance(model, (str, Path)):
            self.label = str(model)
            if str(model) in MODELS:
                a = assets.ASSETS[str(model)]
                self.sha256, self.kind = a.files[a.main][1], "encoder" if model in _ENCODERS else "decoder"
            else:
                path = Path(model)
                if path.suffix != ".gguf":
                    raise ValueError(f"unknown model {self.label!r}: known names {', '.join(MODELS)}, or a path "
                                     f"to a Llama-architecture .gguf file")
                if not path.is_file():
                    raise FileNotFoundError(f"model {self.label!r}: no such .gguf file")
                self.sha256, self.kind, self._path = None, "decoder", path   # hashed once out_dir is checked
        else:
            self._model = model
            self.label = model_id or type(model).__name__
            self.sha256 = model_id
            self.kind = "decoder" if hasattr(model, "logits") else "encoder"
            if not hasattr(model, "tokenizer") or not hasattr(model, "weights"):
                raise TypeError(f"model must be a name, a .gguf path or a loaded minq model, got {type(model).__name__}")
        self._inputs = None

    def hash_file(self) -> None:
        """The sha256 of a .gguf path (for the cache key)."""
        if self._path is not None and self.sha256 is None:
            from minq.models import assets

            self.sha256 = assets.sha256_file(self._path)

    def model(self, progress: bool):
        if self._model is None:
            import minq

            self._model = minq.load_model(self.label, progress=progress)
        return self._model

    def calibration(self, name, settings):
        """None (``minq.quantize``'s default calibration), or ``calibration_samples`` of it, computed once."""
        n = settings["calibration_samples"]
        if n is None or not registry.get(name).needs_calibration:
            return None
        if self._cal is None:
            self._cal = self._model.calibration_ids(n_samples=n)
        return self._cal

    def inputs(self, settings, progress: bool):
        """Token ids (decoder) or sentences (encoder), computed once."""
        if self._inputs is None:
            m = self.model(progress)
            if self.kind == "decoder":
                from minq.data import eval_tokens

                self._inputs = eval_tokens(m.tokenizer, max_tokens=settings["max_tokens"])
            else:
                self._inputs = _sentences(settings["sentences"])
        return self._inputs


def _sentences(n: int) -> list[str]:
    from minq.data import eval_text

    return [t.strip() for t in eval_text().splitlines() if len(t.strip()) >= 40][:n]


def _check_settings(source, window, max_tokens, quick) -> dict:
    """The evaluation settings (they are part of the cache key)."""
    from minq.data import eval_text

    text_sha = hashlib.sha256(eval_text().encode("utf-8")).hexdigest()
    if source.kind == "encoder":
        if max_tokens is not None:
            raise ValueError(f"max_tokens (--max-tokens) does not apply to an encoder: {source.label} is evaluated "
                             f"on {N_SENTENCES} sentences of the evaluation text")
        return {"metric": "embedding", "sentences": N_SENTENCES, "eval_text_sha256": text_sha,
                "calibration_samples": QUICK_CALIBRATION if quick else None}
    if not _is_int(window) or window < 2:
        raise ValueError(f"window must be an int >= 2, got {window!r}")
    if max_tokens is None:
        max_tokens = QUICK_MAX_TOKENS if quick else DEFAULT_MAX_TOKENS
    if not _is_int(max_tokens) or max_tokens < window:
        raise ValueError(f"max_tokens (--max-tokens) must be an int >= window ({window}), got {max_tokens!r}")
    return {"metric": "perplexity", "max_tokens": max_tokens, "window": window, "eval_text_sha256": text_sha,
            "calibration_samples": QUICK_CALIBRATION if quick else None}       # None: minq.quantize's default


# --- the cache: one JSON file per (model sha256, scheme, evaluation settings, minq version) ---------------


class _Cache:
    def __init__(self, cache, model_sha256, settings):
        import minq
        from minq.models import assets

        self.folder = None if cache is False or model_sha256 is None else \
            Path(assets.cache_dir() / "report" if cache is None else cache)
        self._base = {"model_sha256": model_sha256, "settings": settings, "minq": minq.__version__}
        if self.folder is not None and self.folder.is_dir():
            remove_stale_temporaries(self.folder)

    def _key(self, scheme) -> dict:
        """The cache key's fields; the calibration setting only for the schemes that calibrate."""
        if scheme == FULL or not registry.get(scheme).needs_calibration:
            settings = {k: v for k, v in self._base["settings"].items() if k != "calibration_samples"}
            return {**self._base, "settings": settings, "scheme": scheme}
        return {**self._base, "scheme": scheme}

    def _path(self, scheme):
        text = json.dumps(self._key(scheme), sort_keys=True)
        key = hashlib.sha256(text.encode()).hexdigest()
        return self.folder / f"{re.sub(r'[^A-Za-z0-9.+_-]', '_', scheme)}-{key[:32]}.json", key

    def get(self, scheme):
        if self.folder is None:
            return None
        path, key = self._path(scheme)
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):                 # missing, or not JSON: measure again
            return None
        if entry.get("key") != key or not isinstance(entry.get("row"), dict):
            return None
        return {**entry["row"], "cached": True}

    def put(self, scheme, row):
        if self.folder is None:
            return
        path, key = self._path(scheme)
        keep = {k: v for k, v in row.items() if k not in ("cached", "change_pct")}
        atomic_write_text(path, json.dumps({"key": key, **self._key(scheme), "row": keep}, indent=1))


# --- measuring one row ------------------------------------------------------------------------------------


def _weight_bits(name: str, bpw: float) -> int:
    """The nominal bits of a weight code: ``w{bits}`` of the name, else the whole part of bits per weight."""
    m = re.search(r"(?:^|[-+])w(\d+)", name)
    return 32 if name == FULL else int(m[1]) if m else int(bpw)


def _measure(source, name, settings, progress) -> dict:
    from minq.eval import embedding_fidelity, perplexity

    base = source.model(progress)
    inputs = source.inputs(settings, progress)
    family = "float" if name == FULL else registry.family_of(name)
    t0 = time.perf_counter()
    try:
        m = base if name == FULL else quantize(base, name, source.calibration(name, settings), progress=progress)
    except TypeError as e:                            # an encoder: a method that needs a decoder does not apply
        if source.kind != "encoder":
            raise
        return {"scheme": name, "family": family, "skipped": str(e), "cached": False}
    t_quant = time.perf_counter() - t0
    n_weights = sum(w.shape[0] * w.shape[1] for w in base.weights.values())
    bpw = 8.0 * m.nbytes / n_weights
    row = {"scheme": name, "family": family, "weight_bits": _weight_bits(name, bpw), "bits_per_weight": bpw,
           "linears_mb": m.nbytes / 1e6, "quantize_s": t_quant}
    t0 = time.perf_counter()
    if source.kind == "decoder":
        try:
            row["perplexity"] = perplexity(m, inputs, settings["window"], progress=progress)
        except ValueError as e:
            raise ValueError(f"model {source.label}, scheme {name}: {e}") from e
        row["eval_tokens"] = int(len(inputs))
    else:
        f = embedding_fidelity(base, m, inputs)
        row.update(cosine_mean=f["cosine_mean"], cosine_min=f["cosine_min"], nn_agreement=f["nn_agreement"],
                   sentences=len(inputs))
    row["eval_s"] = time.perf_counter() - t0
    row["cached"] = False
    return row


def _relative(rows):
    ref = rows[0].get("perplexity")
    for r in rows:
        if ref is not None and "perplexity" in r:
            r["change_pct"] = 100.0 * (r["perplexity"] / ref - 1.0)


# --- what the run prints ----------------------------------------------------------------------------------


def _say(text: str) -> None:
    tqdm.write(text, file=sys.stdout)


def _header(source, names, settings, note, store, out_dir) -> str:
    what = (f"{settings['max_tokens']:,} evaluation tokens (windows of {settings['window']})"
            if source.kind == "decoder" else f"{settings['sentences']} sentences (embedding fidelity)")
    if settings["calibration_samples"]:
        what += f", calibration on {settings['calibration_samples']} samples"
    cache = f"rows cached in {store.folder} (--fresh measures again)" if store.folder else "no cache"
    return (f"minq report: {source.label}, {len(names)} schemes + {FULL}, on {what}" + (f"\n  {note}" if note else "")
            + f"\n  {cache}; {out_dir}/ is rewritten after every scheme")


def _line(r, ref, i, n) -> str:
    head = f"[{i + 1:2d}/{n}] {r['scheme']:26s} {r['family']:12s}"
    if "skipped" in r:
        return f"{head} does not apply: {r['skipped']}"
    text = f"{head} {r['bits_per_weight']:6.3f} bits/w {r['linears_mb']:7.1f} MB"
    if "perplexity" in r:
        text += f"  perplexity {r['perplexity']:10.3f} ({r['change_pct']:+8.2f}%)"
    else:
        text += f"  cosine {r['cosine_mean']:.4f} (min {r['cosine_min']:.4f})  NN agreement {r['nn_agreement']:.3f}"
    text += f"  quantize {r['quantize_s']:6.1f} s  eval {r['eval_s']:5.1f} s"
    text += "  BROKEN" if is_broken(r, ref) else ""
    return text + ("  (cached)" if r["cached"] else "")
