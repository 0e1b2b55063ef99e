"""Chapter 09 — a decoder whose KV cache is quantized, and the ``kv-*`` schemes.

    q = minq.quantize(model, "rtn-w4g64+kv-int4-kivi")    # 4-bit weights, then a KIVI 4-bit cache
    c = q.new_cache()                                      # a QuantizedKVCache
    q.logits(prompt, cache=c); q.logits(next_id, cache=c)  # decoding reads the quantized cache
    q.logits(ids)                                          # = token-by-token decoding of ids, in one forward

``KVQuantModel(model, spec)`` is ``model`` (any decoder of the model protocol with ``new_cache`` and a
``logits(ids, cache=...)``; its weights quantized or not) with two changes: ``new_cache()`` gives a
``QuantizedKVCache`` of ``spec``, and ``logits(ids)`` without a cache runs on a fresh one — which
``minq.kvcache_quant`` makes *decode-exact*: every position attends to the keys and values as the
cache would hold them had the tokens been decoded one at a time (its own and the recent ones in float,
older ones quantized). ``minq.eval.perplexity`` therefore scores a KV scheme the way decoding sees it,
with one forward per window.

Scheme names (``registry.get``): ``kv-{int8|int4|int2|fp8-e4m3|fp8-e5m2}`` with options
``-kivi`` (keys per channel, values per token, a window of 128 float positions), ``-k{token|channel}``
(the keys' axis), ``-g{group}``, ``-r{window}``, ``-prerope``, ``-had`` (stored rotated by a head-size
Hadamard: chapter 12). A ``kv-*`` scheme stacks on a weight
scheme: ``WEIGHTS+KV`` quantizes the weights, then the cache.

Notebook: notebooks/09_kv_cache.ipynb.
"""

from __future__ import annotations

import re

from minq.kvcache_quant import KVSpec, QuantizedKVCache
from minq.registry import Scheme, register_family

__all__ = ["KVQuantModel", "spec_of"]


class KVQuantModel:
    """``model`` with a quantized KV cache (``spec``); every other attribute is ``model``'s."""

    def __init__(self, model, spec: KVSpec):
        if not (callable(getattr(model, "new_cache", None)) and hasattr(model, "config")
                and hasattr(model.config, "n_layers")):
            raise TypeError(f"a KV-cache scheme needs a decoder with a KV cache (new_cache()); "
                            f"{type(model).__name__} has none")
        if not isinstance(spec, KVSpec):
            raise TypeError(f"spec must be a KVSpec, got {type(spec).__name__}")
        spec.check_head_dim(model.config.head_dim)
        self.model, self.spec = model, spec

    def __getattr__(self, name):
        if name in ("model", "spec"):                     # not yet set (copy, pickle): no recursion
            raise AttributeError(name)
        return getattr(self.model, name)

    def __repr__(self):
        return f"KVQuantModel({type(self.model).__name__}, {self.spec})"

    def new_cache(self) -> QuantizedKVCache:
        c = self.model.config
        return QuantizedKVCache(c.n_layers, self.spec, rope=(c.head_dim, c.rope_theta))

    def logits(self, ids, cache=None, **kw):
        """``model.logits`` on ``cache``, or on a fresh quantized cache: decode-exact logits."""
        return self.model.logits(ids, cache=self.new_cache() if cache is None else cache, **kw)

    def with_weights(self, new: dict):
        return KVQuantModel(self.model.with_weights(new), self.spec)

    def with_norms(self, new: dict):
        return KVQuantModel(self.model.with_norms(new), self.spec)

    def with_head(self, w):
        return KVQuantModel(self.model.with_head(w), self.spec)

    def packed(self, activations: str = "float"):
        return KVQuantModel(self.model.packed(activations), self.spec)

    def dequantized(self):
        return KVQuantModel(self.model.dequantized(), self.spec)


_FMT = {"int8": ("int", 8), "int4": ("int", 4), "int2": ("int", 2), "fp8-e4m3": ("e4m3", 8), "fp8-e5m2": ("e5m2", 8)}
PATTERN = (r"kv-(?P<fmt>int8|int4|int2|fp8-e4m3|fp8-e5m2)(?P<kivi>-kivi)?(?:-k(?P<axis>token|channel))?"
           r"(?:-g(?P<group>\d+))?(?:-r(?P<window>\d+))?(?P<prerope>-prerope)?(?P<had>-had)?")


def spec_of(name: str) -> KVSpec:
    """The ``KVSpec`` of a ``kv-*`` scheme name (ValueError for another name)."""
    m = re.fullmatch(PATTERN, name)
    if m is None:
        raise ValueError(f"{name!r} is not a KV-cache scheme (kv-{{int8|int4|int2|fp8-e4m3|fp8-e5m2}}[-kivi]...)")
    fmt, bits = _FMT[m["fmt"]]
    kivi = m["kivi"] is not None
    key_axis = m["axis"] or ("channel" if kivi else "token")
    group = int(m["group"]) if m["group"] else 32
    window = int(m["window"]) if m["window"] else (128 if kivi else 0)
    return KVSpec(fmt, bits, key_axis, "token", group, window, m["prerope"] is not None, m["had"] is not None)


def _scheme(m: re.Match) -> Scheme:
    spec = spec_of(m.string)
    where = {"token": "per token", "channel": "per channel"}
    desc = (f"KV cache {spec.fmt}{spec.bits if spec.fmt == 'int' else ''}: keys {where[spec.key_axis]}"
            f"{' (before RoPE)' if spec.pre_rope else ''}, values {where[spec.value_axis]}, groups of {spec.group}"
            + (f", the last {spec.window} positions in float" if spec.window else "")
            + (", stored rotated by a head-size Hadamard" if spec.hadamard else ""))

    def quantize_model(model, calibration, progress=True):
        return KVQuantModel(model, spec)

    return Scheme(m.string, desc, quantize_model=quantize_model, stacks=True)


register_family("kv", PATTERN, _scheme, "kv-{int8|int4|int2|fp8-e4m3|fp8-e5m2}[-kivi][-k{axis}][-g{G}][-r{R}][-prerope][-had]",
                defaults=("kv-int8", "kv-fp8-e4m3", "kv-int4", "kv-int4-kchannel", "kv-int4-kivi", "kv-int2-kivi"),
                quick=())
