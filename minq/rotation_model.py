"""Chapter 12 — the rotation schemes: any scheme on a rotated model, and W4A8 / W4A4 with and without it.

    rot-fp          the rotated float model (``minq.rotation.rotate``): no quantization, the equivalence made
                    visible (its perplexity is the float model's)
    rot-<S>         rotate, then apply the weight scheme ``S`` to the rotated model: ``rot-rtn-w4``,
                    ``rot-rtn-w4g64``, ``rot-rtn-w3g64``, ``rot-gptq-w4``, ``rot-gptq-w3g64``, ``rot-hqq-w4g64``, ...
                    (QuaRot-RTN and QuaRot-GPTQ); ``rot-w4a8`` / ``rot-w4a4`` for the activation schemes below
    w4a8, w4a4      4-bit weights (RTN per output channel, asymmetric) and the input of every linear quantized
                    dynamically per token, symmetric, to 8 / 4 bits (``minq.w8a8.Int8Activations(bits=...)``)
    WEIGHTS+a4      the inputs alone, on top of any weight scheme: ``rot-gptq-w4+a4`` (QuaRot's W4A4 with
                    GPTQ weights); ``w4a4`` is ``rtn-w4+a4``

What the rotation is (R1 on the residual stream, R2 per head on V/O, R4 online on the down projection's
input) is ``minq.rotation``'s docstring. A KV-cache scheme stacks as everywhere: ``rot-rtn-w4g64+kv-int4``
(values already rotated by R2; ``kv-int4-had`` rotates the keys too, QuaRot's online Q/K rotation).
Seed 0 draws the signs; the model the scheme receives must be the float model.

Notebook: notebooks/12_rotations_and_hqq.ipynb.
"""

from __future__ import annotations

import re

from minq import registry
from minq.registry import Scheme, register_family
from minq.rotation import rotate

__all__ = ["quantize_wa", "quantize_inputs"]


def quantize_wa(model, *, w_bits: int = 4, a_bits: int = 8, progress: bool = False):
    """``model`` with RTN ``w_bits``-bit weights per output channel (asymmetric min-max) whose linears read
    their inputs quantized per token to ``a_bits`` (symmetric, dynamic): an ``ActQuantModel``."""
    from minq.groups import quantize_groups

    qmodel = registry.quantize_linears(model, lambda W: quantize_groups(W, bits=w_bits, group_size=-1),
                                       desc=f"w{w_bits}a{a_bits}", progress=progress)
    return quantize_inputs(qmodel, a_bits)


def quantize_inputs(model, a_bits: int):
    """``model`` (weights as they are) whose every linear reads its input quantized per token to ``a_bits``
    (``Int8Activations("dynamic", bits=a_bits)``): the ``a{bits}`` scheme, which stacks on any weight scheme."""
    from minq.w8a8 import ActQuantModel, Int8Activations

    act = Int8Activations("dynamic", bits=a_bits)                    # stateless per call: one for every linear
    return ActQuantModel(model, {n: act for n in model.linear_names()})


def _wa(m: re.Match) -> Scheme:
    a = int(m["a"])

    def quantize_model(model, calibration, progress=True):
        return quantize_wa(model, w_bits=4, a_bits=a, progress=progress)

    return Scheme(m.string, f"4-bit weights per channel (RTN), {a}-bit inputs per token (dynamic, symmetric)",
                  quantize_model=quantize_model)


def _act(m: re.Match) -> Scheme:
    a = int(m["a"])
    if not 2 <= a <= 8:
        raise ValueError(f"scheme {m.string!r}: input bits must be in 2..8")
    return Scheme(m.string, f"inputs of every linear quantized per token to {a} bits (dynamic, symmetric)",
                  quantize_model=lambda model, calibration, progress=True: quantize_inputs(model, a), stacks=True)


def _rot(m: re.Match) -> Scheme:
    inner = m["inner"]
    if inner == "fp":
        return Scheme(m.string, "rotated (QuaRot R1 + R2 + online R4), not quantized",
                      quantize_model=lambda model, calibration, progress=True: rotate(model, progress=progress))
    if inner.startswith("rot-"):
        raise ValueError(f"scheme {m.string!r}: rotate once (rot-{inner[4:]})")
    s = registry.get(inner)
    if s.stacks:
        raise ValueError(f"scheme {m.string!r}: {inner!r} stacks on a weight scheme; write rot-WEIGHTS+{inner}")

    def quantize_model(model, calibration, progress=True):
        return s.apply(rotate(model, progress=progress), calibration if s.needs_calibration else None,
                       progress=progress)

    return Scheme(m.string, f"rotated (QuaRot R1 + R2 + online R4), then {s.description}",
                  quantize_model=quantize_model, needs_calibration=s.needs_calibration)


register_family("rot", r"rot-(?P<inner>[^+]+)", _rot, "rot-{fp | a weight scheme}",
                defaults=("rot-fp", "rot-rtn-w4", "rot-rtn-w4g64", "rot-rtn-w3g64", "rot-gptq-w4", "rot-gptq-w3g64",
                          "rot-w4a8", "rot-w4a4"))
register_family("w4a", r"w4a(?P<a>4|8)", _wa, "w4a{4|8}", defaults=("w4a8", "w4a4"))
register_family("act", r"a(?P<a>\d)", _act, "a{bits} (stacks: WEIGHTS+a4)")
