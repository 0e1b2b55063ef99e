"""The method registry: a scheme name maps to a quantizer (DESIGN.md §2).

    scheme = minq.registry.get("rtn-w4g64")
    Wq = scheme.quantize_weight(W)          # W float32 [out, in] -> a quantized weight
    Wq.dequantize(), Wq.bits_per_weight     # the quantized-weight protocol
    qmodel = minq.quantize(model, "rtn-w4g64")   # every linear of a model (input model unchanged)

A scheme quantizes a model through ``quantize_model(model, calibration)``; weight-only schemes get
the default, which quantizes each linear of ``model.linear_names()`` on its own and swaps it in with
``model.with_weights``. Methods that need calibration data (GPTQ, AWQ, activation quantization)
set ``needs_calibration`` and supply their own ``quantize_model``. Embeddings and norms stay in float.

Names are parsed, not listed one by one: ``rtn-w{bits}`` is round-to-nearest per output channel,
``rtn-w{bits}g{group}`` per group of ``group`` inputs; asymmetric (integer zero point) by default,
``-sym`` for symmetric. ``SCHEMES`` holds the RTN names the report runs by default; each method module adds its own
``SCHEMES`` list (``default_schemes()`` gathers them). Later chapters
register their own families with ``register_family``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from minq.groups import quantize_groups

__all__ = ["Scheme", "get", "register_family", "quantize_linears", "SCHEMES", "known", "default_schemes"]


@dataclass(frozen=True)
class Scheme:
    """A named quantization scheme.

    quantize_weight(W) -> an object of the quantized-weight protocol (``dequantize()``, ``shape``,
        ``nbytes``, ``bits_per_weight``), for schemes that quantize each weight on its own.
    quantize_model(model, calibration, progress) -> a new model; None means "each linear with
        ``quantize_weight``" (``quantize_linears``).
    needs_calibration: ``minq.quantize`` supplies calibration token ids [n, seq] when True.
    """

    name: str
    description: str
    quantize_weight: Callable | None = None
    quantize_model: Callable | None = None
    needs_calibration: bool = False

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


# family pattern -> builder(match) -> Scheme
_FAMILIES: list[tuple[re.Pattern, Callable, str]] = []


def register_family(pattern: str, builder: Callable, example: str) -> None:
    """Register a family of scheme names: ``builder(match)`` returns the ``Scheme`` for a name that
    fully matches ``pattern``; ``example`` is shown in error messages."""
    _FAMILIES.append((re.compile(pattern), builder, example))


# Chapter modules that register scheme families when imported (imported on first lookup, so that
# ``import minq`` stays light and a method module can import the registry without a cycle).
METHOD_MODULES: tuple[str, ...] = ("minq.ptq", "minq.smoothquant", "minq.gptq_model", "minq.awq_model")


def _load_methods() -> None:
    import importlib

    for mod in METHOD_MODULES:
        importlib.import_module(mod)


def get(name: str) -> Scheme:
    """The scheme called ``name``; ValueError listing the known names and patterns otherwise."""
    if not isinstance(name, str):
        raise TypeError(f"scheme must be a str, got {type(name).__name__}")
    _load_methods()
    for pat, builder, _ in _FAMILIES:
        m = pat.fullmatch(name)
        if m:
            return builder(m)
    raise ValueError(f"unknown scheme {name!r}; known: {', '.join(known())} "
                     f"(patterns: {', '.join(ex for _, _, ex in _FAMILIES)})")


def known() -> list[str]:
    return list(SCHEMES)


def default_schemes() -> list[str]:
    """The schemes ``minq report`` runs by default: the RTN ``SCHEMES`` here, then each method module's
    own ``SCHEMES`` list (chapter order of ``METHOD_MODULES``), without repeats."""
    import importlib

    _load_methods()
    names = list(SCHEMES)
    for mod in METHOD_MODULES:
        names += [n for n in getattr(importlib.import_module(mod), "SCHEMES", []) if n not in names]
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


register_family(r"rtn-w(?P<bits>\d+)(?:g(?P<group>\d+))?(?P<sym>-sym)?", _rtn, "rtn-w{bits}[g{group}][-sym]")

# The schemes the report runs by default, widest to narrowest.
SCHEMES = [
    "rtn-w8", "rtn-w8-sym", "rtn-w4", "rtn-w4-sym", "rtn-w4g64", "rtn-w4g32", "rtn-w4g64-sym",
    "rtn-w3g64", "rtn-w3g64-sym", "rtn-w2g64",
]
