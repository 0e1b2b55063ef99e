"""The method registry: a scheme name maps to a quantizer (``minq schemes`` lists the default ones).

    scheme = minq.registry.get("rtn-w4g64")
    Wq = scheme.quantize_weight(W)          # W float32 [out, in] -> a quantized weight
    Wq.dequantize(), Wq.bits_per_weight     # the quantized-weight protocol
    qmodel = minq.quantize(model, "rtn-w4g64")   # every linear of a model (input model unchanged)

A scheme quantizes a model through ``quantize_model(model, calibration)``; weight-only schemes get
the default, which quantizes each linear of ``model.linear_names()`` on its own and swaps it in with
``model.with_weights``. Methods that need calibration data (GPTQ, AWQ, activation quantization)
set ``needs_calibration`` and supply their own ``quantize_model``. Embeddings and norms stay in float.

Names are parsed, not listed one by one: a *family* is a name pattern and a builder,
``register_family(family, pattern, builder, example, defaults=..., quick=...)``, registered by its
chapter's module when the registry first loads the chapters' method modules (``minq.CHAPTERS``). This
module registers RTN: ``rtn-w{bits}`` is round-to-nearest per output channel, ``rtn-w{bits}g{group}``
per group of ``group`` inputs; asymmetric (integer zero point) by default, ``-sym`` for symmetric.
A family's ``defaults`` are what ``minq report --all`` runs of it and ``quick`` what the quick default
run takes (``default_schemes(quick=...)`` gathers them in chapter order). Two families may never
claim one name: registering a family whose pattern matches another's listed names (or the reverse)
raises, and so does a lookup that two patterns match.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from minq.groups import quantize_groups

__all__ = ["Scheme", "Family", "get", "register_family", "quantize_linears", "family_of", "families",
           "known", "default_schemes", "METHOD_MODULES"]


@dataclass(frozen=True)
class Scheme:
    """A named quantization scheme.

    quantize_weight(W) -> an object of the quantized-weight protocol (``dequantize()``, ``shape``,
        ``nbytes``, ``bits_per_weight``), for schemes that quantize each weight on its own.
    quantize_model(model, calibration, progress) -> a new model; None means "each linear with
        ``quantize_weight``" (``quantize_linears``).
    needs_calibration: ``minq.quantize`` supplies calibration token ids [n, seq] when True.
    stacks: the scheme changes a model on top of another scheme's (a quantized KV cache): ``"A+B"``
        applies ``A`` then ``B`` when ``B`` stacks.
    """

    name: str
    description: str
    quantize_weight: Callable | None = None
    quantize_model: Callable | None = None
    needs_calibration: bool = False
    stacks: bool = False

    def apply(self, model, calibration=None, *, progress: bool = True):
        """The quantized model (``model`` is left unchanged)."""
        if self.quantize_model is not None:
            return self.quantize_model(model, calibration, progress=progress)
        return quantize_linears(model, self.quantize_weight, desc=self.name, progress=progress)


def quantize_linears(model, quantize_weight: Callable, *, desc: str = "quantize", progress: bool = True):
    """``model.with_weights({name: quantize_weight(W)})`` over every linear, with a progress bar."""
    from tqdm.auto import tqdm

    new = {}
    for name in tqdm(model.linear_names(), desc=desc, unit="linear", disable=not progress, leave=False):
        new[name] = quantize_weight(model.weights[name].dequantize())
    return model.with_weights(new)


@dataclass(frozen=True)
class Family:
    """A family of scheme names: ``builder(match)`` returns the ``Scheme`` of a name that fully matches
    ``pattern``. ``example`` is shown in error messages; ``defaults`` (what the full report runs) and
    ``quick`` (what the quick report runs) are names of this family."""

    name: str
    pattern: re.Pattern
    builder: Callable
    example: str
    defaults: tuple[str, ...] = ()
    quick: tuple[str, ...] = ()


_FAMILIES: dict[str, Family] = {}


def register_family(family: str, pattern: str, builder: Callable, example: str, *, defaults=(),
                    quick=()) -> Family:
    """Register the family ``family`` of scheme names (see ``Family``); returns it.

    Raises ValueError when ``family`` is taken, when a listed name does not match ``pattern``, or when
    ``pattern`` claims another family's listed names (or another family's pattern claims these).
    """
    if not isinstance(family, str) or not family:
        raise ValueError(f"family must be a non-empty str, got {family!r}")
    if family in _FAMILIES:
        raise ValueError(f"family {family!r} is already registered")
    f = Family(family, re.compile(pattern), builder, example, tuple(defaults), tuple(quick))
    for name in f.defaults + f.quick:
        if not f.pattern.fullmatch(name):
            raise ValueError(f"family {family!r}: listed scheme {name!r} does not match its pattern {pattern!r}")
    for other in _FAMILIES.values():
        clash = [n for n in other.defaults + other.quick if f.pattern.fullmatch(n)] + \
                [n for n in f.defaults + f.quick if other.pattern.fullmatch(n)]
        if clash:
            raise ValueError(f"families {family!r} and {other.name!r} both match {clash[0]!r}: make the "
                             f"patterns disjoint")
    _FAMILIES[family] = f
    return f


def _load_methods() -> None:
    import importlib

    for mod in METHOD_MODULES:
        importlib.import_module(mod)


def _match(name: str) -> tuple[Family, re.Match]:
    if not isinstance(name, str):
        raise TypeError(f"scheme must be a str, got {type(name).__name__}")
    _load_methods()
    hits = [(f, m) for f in _FAMILIES.values() if (m := f.pattern.fullmatch(name))]
    if len(hits) > 1:
        raise ValueError(f"scheme {name!r} matches the families {[f.name for f, _ in hits]}: their patterns "
                         f"overlap (a registry bug)")
    if not hits:
        raise ValueError(f"unknown scheme {name!r}; known: {', '.join(known())} "
                         f"(patterns: {', '.join(f.example for f in _FAMILIES.values())})")
    return hits[0]


def get(name: str) -> Scheme:
    """The scheme called ``name``; ValueError listing the known names and patterns otherwise.

    ``"A+B"``: scheme ``A``, then ``B`` on its model, where ``B`` stacks (a KV-cache scheme), e.g.
    ``"rtn-w4g64+kv-int4-kivi"``."""
    if _is_stacked(name):
        return _stacked(name)
    family, m = _match(name)
    return family.builder(m)


def _is_stacked(name) -> bool:
    """``A+B`` that no family claims whole (``awq+gptq-w4g64`` is one scheme of the awq family)."""
    if not (isinstance(name, str) and "+" in name):
        return False
    _load_methods()
    return not any(f.pattern.fullmatch(name) for f in _FAMILIES.values())


def _stacked(name: str) -> Scheme:
    parts = name.split("+")
    schemes = [get(p) for p in parts]
    for p, s in zip(parts[1:], schemes[1:]):
        if not s.stacks:
            raise ValueError(f"scheme {name!r}: {p!r} does not stack on another scheme (only KV-cache, input and "
                             f"head schemes do: kv-*, a{{bits}}, head-*)")
    if schemes[0].stacks and len(parts) > 1:
        raise ValueError(f"scheme {name!r}: give the weight scheme first ({parts[0]!r} stacks on one)")

    def quantize_model(model, calibration, progress=True):
        for s in schemes:
            model = s.apply(model, calibration if s.needs_calibration else None, progress=progress)
        return model

    return Scheme(name, "; then ".join(s.description for s in schemes), quantize_model=quantize_model,
                  needs_calibration=any(s.needs_calibration for s in schemes))


def family_of(name: str) -> str:
    """The family of scheme ``name`` (``"rtn"``, ``"gptq"``, ``"rtn+kv"`` for a stacked one, ...);
    ValueError for an unknown name."""
    if _is_stacked(name):
        get(name)
        return "+".join(_match(p)[0].name for p in name.split("+"))
    return _match(name)[0].name


def families() -> list[Family]:
    """Every registered family, in chapter order."""
    _load_methods()
    return list(_FAMILIES.values())


def known() -> list[str]:
    """Every family's listed scheme names (the full report's), in chapter order."""
    return default_schemes()


def default_schemes(quick: bool = False) -> list[str]:
    """What ``minq report`` runs: every family's ``defaults`` (``quick=False``, the full report) or its
    ``quick`` names (a newcomer's first run), in chapter order, without repeats."""
    names = []
    for f in families():
        names += [n for n in (f.quick if quick else f.defaults) if n not in names]
    return names


def _rtn(m: re.Match) -> Scheme:
    bits = int(m["bits"])
    group = int(m["group"]) if m["group"] else -1
    sym = m["sym"] is not None
    if not 1 <= bits <= 8 or (sym and bits < 2):
        raise ValueError(f"scheme {m.string!r}: bits must be in 1..8 (2..8 symmetric)")
    if m["group"] and group <= 0:
        raise ValueError(f"scheme {m.string!r}: group size must be > 0")
    gran = "per output channel" if group == -1 else f"groups of {group}"
    desc = f"round-to-nearest {bits}-bit, {gran}, {'symmetric' if sym else 'asymmetric'} min-max"

    def quantize_weight(W):
        return quantize_groups(W, bits=bits, group_size=group, symmetric=sym)

    return Scheme(m.string, desc, quantize_weight=quantize_weight)


# The RTN schemes the full report runs (widest to narrowest) and the quick run's two.
register_family("rtn", r"rtn-w(?P<bits>\d+)(?:g(?P<group>\d+))?(?P<sym>-sym)?", _rtn, "rtn-w{bits}[g{group}][-sym]",
                defaults=("rtn-w8", "rtn-w8-sym", "rtn-w4", "rtn-w4-sym", "rtn-w4g64", "rtn-w4g32", "rtn-w4g64-sym",
                          "rtn-w3g64", "rtn-w3g64-sym", "rtn-w2g64"),
                quick=("rtn-w8", "rtn-w4g64"))


def _head(m: re.Match) -> Scheme:
    inner = get(m["inner"])
    if inner.quantize_weight is None:
        raise ValueError(f"scheme {m.string!r}: the head takes a scheme that quantizes each weight on its own "
                         f"(rtn-*, q8_0, nf4, fp8-*, ...), not {m['inner']!r}")

    def quantize_model(model, calibration, progress=True):
        if not callable(getattr(model, "with_head", None)):
            raise TypeError(f"scheme {m.string!r} needs a decoder with an output head (with_head); "
                            f"{type(model).__name__} has none")
        W = model.head_weight
        W = W if isinstance(W, np.ndarray) else W.dequantize()                  # [vocab, d]
        return model.with_head(inner.quantize_weight(W))

    return Scheme(m.string, f"the output head (and a tied embedding) as {inner.name}: {inner.description}",
                  quantize_model=quantize_model, stacks=True)


# Stacks on a weight scheme: ``rtn-w4g64+head-rtn-w8`` also quantizes the head (21% of SmolLM2's parameters).
register_family("head", r"head-(?P<inner>[^+]+)", _head, "head-{weight scheme}")


def _method_modules() -> tuple[str, ...]:
    """The chapters' method modules (``minq.CHAPTERS``), in chapter order; this module itself excluded."""
    from minq.chapters import CHAPTERS

    return tuple(m for ch in CHAPTERS for m in ch.methods if m != __name__)


# Imported on first lookup (so that ``import minq`` stays light and a method module can import the
# registry without a cycle): the modules that register the other families.
METHOD_MODULES: tuple[str, ...] = _method_modules()
