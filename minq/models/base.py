"""The model protocol: what generic code (``minq.quantize``, PTQ, GPTQ, AWQ, SmoothQuant, the report)
may ask of a model, so that it never asks which model class it has.

Every minq model (``LlamaModel``, ``BertEncoder``) is a ``Model``; a weight-only scheme (RTN) needs only
the first three lines (``Weights``: any object with named linears and ``with_weights`` will do)::

    model.weights                      {linear name: weight object}  (the quantized-weight protocol:
                                       dequantize(), shape, nbytes, bits_per_weight)
    model.linear_names()               every linear, in forward order
    model.with_weights({name: Wq})     the same model with other weight objects (self unchanged)
    model.nbytes                       bytes of the linears as stored
    model.tokenizer                    encode / decode
    model.calibration_ids(n, seq, seed)  default calibration ids in the model's own form (a decoder:
                                       windows of one long text; a sentence encoder: padded sentences)
    model.run_linears(ids, hooks)      one forward of ids [B, T] that runs every linear the hooks name,
                                       calling ``fn(name, X [tokens, in])`` on its input (padding left out;
                                       stops after the last hooked block; no output head)
    model.input_groups(i)              the linears of block i grouped by the input they read
    model.fold_targets()               {target: FoldTarget}: where a per-input-channel scale s can be
                                       folded away (SmoothQuant, AWQ); {} where the architecture has none

A ``Decoder`` (``LlamaModel``) also runs block by block, which GPTQ and AWQ need::

    model.config.n_layers, model.block_linear_names(i), model.embed(ids) -> x, model.run_block(i, x,
    hooks=...), model.head(x), model.logits(ids, ...), model.with_norms({name: gamma})

``require(model, Decoder, "GPTQ")`` is how a method states what it needs: a TypeError naming the method,
the missing methods and the model's class, before any work. ``tests/test_protocol.py`` runs the
protocol over both models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["Weights", "Model", "Decoder", "FoldTarget", "require", "capturing_hooks"]


@dataclass(frozen=True)
class FoldTarget:
    """A place where a scale ``s`` on the input channels of ``consumers`` folds into the model.

    ``Y = X W^T = (X / s) (W * s)^T``: the consumers' columns are multiplied by ``s`` and the operation
    that produces ``X`` is divided by it — ``kind="norm"``: the norm gamma ``producer``; ``kind="rows"``:
    the output rows of the linear ``producer``. Names are local to a block (``"attn_norm"``, ``"attn_q"``).
    ``channel_map``: None when consumer input channel ``j`` is producer channel ``j``; else an int array
    ``[consumer inputs]`` naming the producer channel each one reads (grouped-query attention: the query
    heads that share a KV head read one V channel), so ``s`` lives on the producer's channels and the
    consumers get ``s[channel_map]``.
    """

    kind: str
    producer: str
    consumers: tuple[str, ...]
    channel_map: object = None

    def consumer_scale(self, s):
        """The scale of the consumers' input channels, from ``s`` on the producer's channels."""
        return s if self.channel_map is None else s[np.asarray(self.channel_map)]


@runtime_checkable
class Weights(Protocol):
    """The least a weight-only scheme (RTN) needs: named linears and a way to swap them."""

    weights: dict

    def linear_names(self) -> list[str]: ...

    def with_weights(self, new: dict) -> Weights: ...


@runtime_checkable
class Model(Weights, Protocol):
    """Any minq model (see the module docstring)."""

    tokenizer: object

    @property
    def nbytes(self) -> int: ...

    def calibration_ids(self, n_samples: int = 128, seq_len: int = 512, seed: int = 0): ...

    def run_linears(self, ids, hooks) -> None: ...

    def input_groups(self, i: int) -> list[tuple[str, ...]]: ...

    def fold_targets(self) -> dict: ...


@runtime_checkable
class Decoder(Model, Protocol):
    """A model that also runs block by block (see the module docstring)."""

    config: object

    def block_linear_names(self, i: int) -> list[str]: ...

    def embed(self, ids): ...

    def run_block(self, i: int, x, *, hooks=None): ...

    def head(self, x): ...

    def logits(self, ids, cache=None, *, last_only: bool = False, hooks=None): ...

    def with_norms(self, new: dict) -> Decoder: ...


def capturing_hooks(names, hooks=None):
    """``(hooks', X)``: hooks that store in ``X[name]`` what each linear of ``names`` reads — after the
    given ``hooks`` (``{name: fn}``, e.g. activation quantizers) had their say: a replacement a hook
    returns is what is stored, and what the linear reads. ``capture_inputs`` of every model uses it."""
    hooks = dict(hooks or {})
    X = {}

    def keep(name, X_in, fn=None):
        r = fn(name, X_in) if fn is not None else None
        X[name] = X_in if r is None else r
        return r

    for n in names:
        fn = hooks.get(n)
        hooks[n] = keep if fn is None else (lambda name, X_in, fn=fn: keep(name, X_in, fn))
    return hooks, X


def _members(protocol) -> list[str]:
    """The public methods and attributes a protocol class declares (its own and its bases')."""
    names = set()
    for cls in protocol.__mro__:
        if cls in (Protocol, object) or not getattr(cls, "_is_protocol", False):
            continue
        names |= {n for n in (*vars(cls), *getattr(cls, "__annotations__", {})) if not n.startswith("_")}
    return sorted(names)


def require(model, protocol, what: str):
    """``model`` if it implements ``protocol`` (``Model`` or ``Decoder``); else a TypeError that names
    ``what`` needs it, the missing methods and the model's class."""
    if isinstance(model, protocol):
        return model
    names = [n for n in _members(protocol) if not hasattr(model, n)]
    kind = {Decoder: "a decoder that runs block by block (a Llama: minq.load_model('smollm2'))",
            Model: "a minq model (minq.load_model)"}.get(protocol, "a model with weights, linear_names() and "
                                                                   "with_weights()")
    raise TypeError(f"{what} needs {kind}; got a {type(model).__name__}"
                    + (f" without {', '.join(sorted(names))}" if names else ""))
