"""The parameters of a Llama: its config, the names and shapes of its linears, GGUF loading, weight swaps.

``minq.models.llama.LlamaModel`` (the forward a learner reads) is a ``LlamaWeights``: this class holds
what the forward multiplies with and how it got there, none of the math.

- ``config``: a ``LlamaConfig`` (dimensions, RMSNorm eps, RoPE base, context length);
- ``weights``: ``{"blk.{i}.{linear}": weight object}`` of the quantized-weight protocol
  (``minq.models.weights``), for the ``LINEARS`` of every block;
- ``norms``: the RMSNorm gammas ``{"blk.{i}.attn_norm" | "blk.{i}.ffn_norm" | "output_norm": [d]}``;
- ``embedding [vocab, d]`` (also the output head unless ``output [vocab, d]`` is given), ``tokenizer``.

Each weight is dequantized once, when the model is built, into ``_W``: one float32 array per group of
``GROUPS`` (the linears that read one input, row-stacked: ``[Wq; Wk; Wv]``, ``[Wgate; Wup]``), so each
group is one GEMM. ``model.packed()`` keeps the weights packed instead where ``minq.runtime.packed`` has
a kernel for them (a ``PackedGroup`` in ``_W``); ``model.dequantized()`` is the float32 twin. ``with_weights`` / ``with_norms`` return a new model sharing everything unchanged —
a quantized model is the same model with other weight objects.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from minq.models.base import FoldTarget
from minq.models.weights import DenseWeight, _dense_of, _stack_rows, check_weight_names

__all__ = ["LlamaConfig", "LlamaWeights", "LINEARS", "GROUPS", "fold_targets"]

# The linears of one block, in the order the forward uses them.
LINEARS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
# The same linears grouped by the input they read: each group is one GEMM on its row-stacked weights.
GROUPS = (("attn_q", "attn_k", "attn_v"), ("attn_output",), ("ffn_gate", "ffn_up"), ("ffn_down",))


@dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int
    dim: int              # d, hidden size
    n_layers: int
    n_heads: int
    n_kv_heads: int
    hidden_dim: int       # MLP width
    norm_eps: float
    rope_theta: float
    context_length: int

    def __post_init__(self):
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "hidden_dim", "context_length"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"config {name} must be a positive int, got {v!r}")
        if self.dim % self.n_heads or self.n_heads % self.n_kv_heads or (self.dim // self.n_heads) % 2:
            raise ValueError(f"config: dim {self.dim} must split into n_heads {self.n_heads} heads of even size, "
                             f"and n_heads into n_kv_heads {self.n_kv_heads} groups")
        for name in ("norm_eps", "rope_theta"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float, np.floating)) and np.isfinite(v) and v > 0):
                raise ValueError(f"config {name} must be a finite number > 0, got {v!r}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @classmethod
    def from_gguf_metadata(cls, md: dict) -> LlamaConfig:
        """The config from a GGUF's metadata; ValueError naming a missing key or an invalid value."""
        try:
            return cls._from_metadata(md)
        except KeyError as e:
            raise ValueError(f"GGUF metadata key {e.args[0]!r} is missing: not a complete Llama checkpoint") from None

    @classmethod
    def _from_metadata(cls, md: dict) -> LlamaConfig:
        a = md["general.architecture"]
        n_heads = int(md[f"{a}.attention.head_count"])
        tokens = md.get("tokenizer.ggml.tokens")
        return cls(
            vocab_size=int(md.get(f"{a}.vocab_size", len(tokens) if tokens is not None else 0)),
            dim=int(md[f"{a}.embedding_length"]),
            n_layers=int(md[f"{a}.block_count"]),
            n_heads=n_heads,
            n_kv_heads=int(md.get(f"{a}.attention.head_count_kv", n_heads)),
            hidden_dim=int(md[f"{a}.feed_forward_length"]),
            norm_eps=float(md[f"{a}.attention.layer_norm_rms_epsilon"]),
            rope_theta=float(md.get(f"{a}.rope.freq_base", 10000.0)),
            context_length=int(md[f"{a}.context_length"]),
        )


def fold_targets(c: LlamaConfig) -> dict:
    """Where a per-input-channel scale folds into a Llama block (``minq.models.base.FoldTarget``):

        "qkv"      attn_norm gamma / s   ->  attn_q, attn_k, attn_v columns * s
        "gate_up"  ffn_norm gamma / s    ->  ffn_gate, ffn_up columns * s
        "down"     ffn_up rows / s       ->  ffn_down columns * s    silu(g) * (u / s) = (silu(g) * u) / s
        "o"        attn_v rows / s       ->  attn_output columns * s  softmax(.) (V / s) = (softmax(.) V) / s

    For "o" the scale lives on V's channels: with grouped-query attention the query heads that share a
    KV head read the same V channel, so attn_output's input channel ``(head h, dim d)`` takes the scale of
    V row ``(kv head of h, d)`` (the ``channel_map``).
    """
    hd, g = c.head_dim, c.n_heads // c.n_kv_heads
    ch = np.arange(c.n_heads * hd)
    v_row = (ch // (g * hd)) * hd + ch % hd                                   # attn_output input -> attn_v row
    return {"qkv": FoldTarget("norm", "attn_norm", ("attn_q", "attn_k", "attn_v")),
            "gate_up": FoldTarget("norm", "ffn_norm", ("ffn_gate", "ffn_up")),
            "down": FoldTarget("rows", "ffn_up", ("ffn_down",)),
            "o": FoldTarget("rows", "attn_v", ("attn_output",), channel_map=v_row)}


def _linear_shape(c: LlamaConfig, linear: str) -> tuple:
    """``(out, in)`` of the linear ``linear`` (``attn_q``, ..., ``ffn_down``) of a block."""
    kv = c.n_kv_heads * c.head_dim
    return {"attn_q": (c.dim, c.dim), "attn_k": (kv, c.dim), "attn_v": (kv, c.dim),
            "attn_output": (c.dim, c.dim), "ffn_gate": (c.hidden_dim, c.dim),
            "ffn_up": (c.hidden_dim, c.dim), "ffn_down": (c.dim, c.hidden_dim)}[linear]


class LlamaWeights:
    """The parameters of a Llama decoder (the base of ``minq.models.llama.LlamaModel``).

    weights: {"blk.{i}.{linear}": quantized-weight object} for every linear of ``LINEARS``;
    norms:   {"blk.{i}.attn_norm" | "blk.{i}.ffn_norm" | "output_norm": float32 [d]};
    embedding: float32 [vocab, d] (also the output head unless ``output`` [vocab, d] is given), or a
               weight object of the protocol (a quantized head: ``with_head``);
    output:    None (tied) or the untied head, float32 [vocab, d] or a weight object.
    """

    def __init__(self, config: LlamaConfig, weights: dict, norms: dict, embedding, *, output=None,
                 tokenizer=None, packed: bool = False, _stacked=None):
        self.config = config
        self.tokenizer = tokenizer
        self.norms = norms
        self._embedding, self._output = embedding, output     # as given: float32 arrays or weight objects
        self._floats = {}                                     # their dequantized float32, made on first use
        self._head_kernel = None                              # packed: the head's kernel (runtime.packed)
        names = self.linear_names()
        self.weights = check_weight_names(weights, names)
        # {(name, ...): float32 [sum of out, in]}: the dense weights of each group of GROUPS, row-stacked.
        # Each weight is dequantized once, here; groups of an unchanged model are shared (with_weights).
        # packed: a group whose weights all have a packed kernel keeps them packed (``PackedGroup``).
        self.is_packed = bool(packed)
        self.activations = packed if isinstance(packed, str) else "float"   # packed: True or "float" | "int8"
        self._W = {k: W for k, W in (_stacked or {}).items() if isinstance(W, np.ndarray) or self.is_packed}
        for i in range(config.n_layers):
            for group in GROUPS:
                key = tuple(f"blk.{i}.{n}" for n in group)
                if key not in self._W:
                    self._W[key] = self._group(key)
        if self.is_packed and not isinstance(self.head_weight, np.ndarray):
            from minq.runtime.packed import packed_linear

            self._head_kernel = packed_linear(self.head_weight, self.activations)

    # --- the embedding and the head -----------------------------------------------------------------

    def _float(self, key: str, a):
        if a is None or isinstance(a, np.ndarray):
            return a
        if key not in self._floats:
            self._floats[key] = _dense_of(a, key, tuple(a.shape))       # dequantized once, read-only
        return self._floats[key]

    @property
    def embedding(self):
        """The token embedding, float32 ``[vocab, d]`` (dequantized once if it is a quantized tied head)."""
        return self._float("token_embd", self._embedding)

    @property
    def output(self):
        """The untied output head, float32 ``[vocab, d]``, or None when the head is the embedding (tied)."""
        return self._float("output", self._output)

    @property
    def head_weight(self):
        """The output projection as stored: the embedding when tied (a float32 array or a weight object)."""
        return self._embedding if self._output is None else self._output

    def with_head(self, w) -> LlamaWeights:
        """A new model whose output head is ``w`` (a weight object of the protocol, ``[vocab, d]``, e.g. a
        quantized copy of ``head_weight``). Tied embeddings are one tensor, so a tied model's embedding
        lookups read ``w`` too (as llama.cpp's quantized ``token_embd`` does). ``self`` is left unchanged.

        Raises ValueError for a ``w`` of another shape, TypeError for an object without ``dequantize``."""
        want = tuple(self.head_weight.shape)
        if not callable(getattr(w, "dequantize", None)) and not isinstance(w, np.ndarray):
            raise TypeError(f"w must be a weight object (dequantize(), shape) or a float32 array, got {type(w).__name__}")
        if tuple(getattr(w, "shape", ())) != want:
            raise ValueError(f"w must have the head's shape {want}, got {tuple(getattr(w, 'shape', ()))}")
        if self._output is None:
            return self._rebuild(embedding=w)
        return self._rebuild(output=w)

    def _rebuild(self, **changes) -> LlamaWeights:
        """A model of ``self``'s class with ``changes`` (constructor arguments) and the rest shared."""
        kw = dict(config=self.config, weights=self.weights, norms=self.norms, embedding=self._embedding,
                  output=self._output, tokenizer=self.tokenizer,
                  packed=self.activations if self.is_packed else False, _stacked=self._W)
        kw.update(changes)
        config, weights, norms, embedding = (kw.pop(k) for k in ("config", "weights", "norms", "embedding"))
        return type(self)(config, weights, norms, embedding, **kw)

    def _embed_rows(self, ids):
        """``embedding[ids]`` float32 ``[..., d]``: rows of the packed head's kernel in a packed model with a
        quantized tied head (no float32 table), else rows of the float32 embedding."""
        k = self._head_kernel
        if k is None or self._output is not None:
            return self.embedding[ids]
        flat = np.asarray(ids).reshape(-1)
        x = np.empty((flat.size, self.config.dim), np.float32)                     # [tokens, d]
        for j, t in enumerate(flat):
            x[j] = k.rows(int(t), int(t) + 1)[0]
        return x.reshape(*np.shape(ids), self.config.dim)

    def _head_matmul(self, x, matmul):
        """``x [N, d] @ head^T -> [N, vocab]``: the packed head's kernel, or ``matmul(x, E)`` of the float32 head."""
        if self._head_kernel is not None:
            return self._head_kernel.matmul(np.ascontiguousarray(x, np.float32))
        return matmul(x, self.embedding if self._output is None else self.output)

    def _group(self, key: tuple):
        """The float32 row-stack of the weights ``key``, or their ``PackedGroup`` in a packed model."""
        if self.is_packed:
            from minq.runtime.packed import PackedGroup, packed_linear

            for n in key:                                  # the protocol's checks, without dequantizing
                w = self.weights[n]
                if tuple(getattr(w, "shape", ())) != self._expected_shape(n):
                    _dense_of(w, n, self._expected_shape(n))
            kernels = [packed_linear(self.weights[n], self.activations) for n in key]
            if all(k is not None for k in kernels):
                return PackedGroup(kernels)
        return _stack_rows([_dense_of(self.weights[n], n, self._expected_shape(n)) for n in key])

    # --- construction -------------------------------------------------------------------------------

    @classmethod
    def from_gguf(cls, path, *, progress: bool = True, dequantize: bool = True) -> LlamaWeights:
        """Load a Llama-architecture GGUF (any type gguf-py dequantizes) as a float32 model, or, with
        ``dequantize=False``, with its ggml-block tensors (linears, embedding, head) kept as
        ``minq.kquants.GGMLWeight``: the file's own quantized model, packed (``model.packed()``; no float32
        copy is built: ``model.dequantized()`` is its float twin)."""
        from minq.gguf import read_gguf
        from minq.models.tokenizer import Tokenizer

        g = read_gguf(path, progress=progress, dequantize=dequantize)
        cfg = LlamaConfig.from_gguf_metadata(g.metadata)
        t = g.tensors
        try:
            weights = {}
            for i in range(cfg.n_layers):
                for group in GROUPS:  # one row-stacked array per group; the weights are views of it
                    parts = [t.pop(f"blk.{i}.{n}.weight") for n in group]
                    for n, P in zip(group, parts):
                        if tuple(P.shape) != _linear_shape(cfg, n):
                            raise ValueError(f"{path}: tensor 'blk.{i}.{n}.weight' has shape {tuple(P.shape)}, "
                                             f"expected {_linear_shape(cfg, n)}")
                    if not all(isinstance(P, np.ndarray) for P in parts):     # blocks kept (dequantize=False)
                        weights.update({f"blk.{i}.{n}": P if not isinstance(P, np.ndarray) else DenseWeight(P)
                                        for n, P in zip(group, parts)})
                        continue
                    W = np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)
                    W.setflags(write=False)
                    rows = np.cumsum([0] + [len(P) for P in parts])
                    for n, a, b in zip(group, rows, rows[1:]):
                        weights[f"blk.{i}.{n}"] = DenseWeight(W[a:b], copy=False)
            norms = {f"blk.{i}.{n}": t.pop(f"blk.{i}.{n}.weight")
                     for i in range(cfg.n_layers) for n in ("attn_norm", "ffn_norm")}
            norms["output_norm"] = t.pop("output_norm.weight")
            embedding = t.pop("token_embd.weight")                                 # [vocab, d]
        except KeyError as e:
            raise ValueError(f"{path}: tensor {e.args[0]!r} missing: not a complete Llama checkpoint") from e
        output = t.pop("output.weight", None)                                      # untied head, if any
        for name, a in [*norms.items(), ("token_embd", embedding), ("output", output)]:
            if a is None:
                continue
            shape = tuple(a.shape)
            rows = shape[0] >= cfg.vocab_size if name in ("token_embd", "output") else shape[0] == cfg.dim
            if len(shape) != (2 if name in ("token_embd", "output") else 1) or shape[-1] != cfg.dim or not rows:
                raise ValueError(f"{path}: tensor {name!r} has shape {shape}; vocab_size {cfg.vocab_size} "
                                 f"and dim {cfg.dim} need [{cfg.dim}] for a norm, [>= vocab_size, dim] for the embedding")
            if isinstance(a, np.ndarray) and not np.isfinite(a).all():   # blocks: checked when dequantized
                raise ValueError(f"{path}: tensor {name!r} has NaN or Inf values")
        tok = Tokenizer.from_gguf_metadata(g.metadata)
        # blocks kept: packed from the start, so that no float32 copy of the weights is ever built
        return cls(cfg, weights, norms, embedding, output=output, tokenizer=tok, packed=not dequantize)

    def linear_names(self) -> list[str]:
        """Names of every linear weight, block by block: ``blk.0.attn_q``, ..., ``blk.{L-1}.ffn_down``."""
        return [f"blk.{i}.{n}" for i in range(self.config.n_layers) for n in LINEARS]

    def block_linear_names(self, i: int) -> list[str]:
        """Names of the linears of block ``i``, in forward order: ``blk.{i}.attn_q``, ..., ``blk.{i}.ffn_down``."""
        self._check_block(i)
        return [f"blk.{i}.{n}" for n in LINEARS]

    def _expected_shape(self, name: str) -> tuple:
        return _linear_shape(self.config, name.split(".")[-1])

    def with_weights(self, new: dict) -> LlamaWeights:
        """A new model (of ``self``'s class) whose weights ``new`` ({name: weight object}) replace the named ones; the others,
        the norms, the embedding and the tokenizer are shared. ``self`` is left unchanged.

        Raises ValueError naming unknown names or a weight whose ``shape`` does not match.
        """
        check_weight_names(new, self.linear_names(), new=True)
        unchanged = {key: W for key, W in self._W.items() if not set(key) & set(new)}
        return self._rebuild(weights={**self.weights, **new}, _stacked=unchanged)

    def packed(self, activations: str = "float") -> LlamaWeights:
        """This model with its quantized weights kept packed where ``minq.runtime.packed`` has a kernel for
        them (the others stay float32): the same logits within float32 rounding, fewer bytes read per token.
        ``activations="int8"`` decodes the llama.cpp way where a kernel exists: each token's input to a
        linear rounded to 8-bit blocks, integer dot products (faster; the logits move by that rounding).
        ``self`` is left unchanged."""
        from minq.runtime.packed import ACTIVATIONS

        if activations not in ACTIVATIONS:
            raise ValueError(f"activations must be one of {ACTIVATIONS}, got {activations!r}")
        return self._rebuild(packed=activations, _stacked=None)

    def dequantized(self) -> LlamaWeights:
        """This model with every weight dequantized to float32 once (the default build): its float twin."""
        if not self.is_packed:
            return self
        return self._rebuild(packed=False, _stacked=None)

    def with_norms(self, new: dict) -> LlamaWeights:
        """A new model whose RMSNorm gammas ``new`` ({name: float32 [d]}, names of ``model.norms``) replace
        the named ones; everything else is shared. ``self`` is left unchanged (SmoothQuant folds its
        scales into the gammas with it).

        Raises ValueError naming unknown norm names, a gamma of the wrong shape or a non-finite one.
        """
        unknown = sorted(set(new) - set(self.norms))
        if unknown:
            raise ValueError(f"unknown norm names {unknown[:5]}; see model.norms")
        norms = dict(self.norms)
        for name, g in new.items():
            g = np.array(g, dtype=np.float32)
            if g.shape != (self.config.dim,) or not np.isfinite(g).all():
                raise ValueError(f"norm {name!r} must be a finite float32 [{self.config.dim}], got shape {g.shape}")
            g.setflags(write=False)
            norms[name] = g
        return self._rebuild(norms=norms)

    @property
    def nbytes(self) -> int:
        """Bytes of the linear weights as stored by their weight objects."""
        return sum(w.nbytes for w in self.weights.values())

    # --- the model protocol (minq.models.base) --------------------------------------------------------

    def calibration_ids(self, n_samples: int = 128, seq_len: int = 512, seed: int = 0):
        """Default calibration: ``n_samples`` windows of ``seq_len`` tokens of minq's calibration text
        (``minq.data.calibration_tokens``), int64 ``[n_samples, seq_len]``."""
        from minq.data import calibration_tokens

        return calibration_tokens(self.tokenizer, n_samples=n_samples, seq_len=seq_len, seed=seed)

    def input_groups(self, i: int) -> list[tuple[str, ...]]:
        """The linears of block ``i`` grouped by the input they read: ``GROUPS`` (q/k/v, o, gate/up, down)."""
        self._check_block(i)
        return [tuple(f"blk.{i}.{n}" for n in group) for group in GROUPS]

    def fold_targets(self) -> dict:
        """``{target: FoldTarget}`` of every block (``fold_targets``; names local to a block)."""
        return fold_targets(self.config)

    def _check_block(self, i):
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= i < self.config.n_layers:
            raise ValueError(f"block index i must be an int in [0, {self.config.n_layers}), got {i!r}")
