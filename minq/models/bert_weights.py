"""The parameters of a BERT encoder: its config, the names and shapes of its linears, safetensors
loading, weight swaps and the model protocol (``minq.models.base``).

``minq.models.bert.BertEncoder`` (the forward a learner reads) is a ``BertWeights``: this class holds
what the forward multiplies with and how it got there, none of the math. Each weight is dequantized once,
when the model is built (``_dense``); ``with_weights`` returns a new model sharing everything unchanged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from minq._checks import check_hooks
from minq.models.tokenizer import BertTokenizer
from minq.models.weights import DenseWeight, _dense_of, check_weight_names

__all__ = ["BertConfig", "BertWeights", "LINEARS", "MAX_SEQ_LENGTH"]

# The linears of one layer, in the order the forward uses them: name -> (out, in) in config terms.
LINEARS = ("attention.query", "attention.key", "attention.value", "attention.output",
           "intermediate", "output")

# The truncation length when no sentence_bert_config.json lies beside the weights (all-MiniLM-L6-v2's
# own file, cached by minq.models.assets, says {"max_seq_length": 256}; it is read, this is only the fallback).
MAX_SEQ_LENGTH = 256

# safetensors name of each linear in layer i (the bias is the same name with ".bias").
_HF_LINEAR = {"attention.query": "attention.self.query", "attention.key": "attention.self.key",
              "attention.value": "attention.self.value", "attention.output": "attention.output.dense",
              "intermediate": "intermediate.dense", "output": "output.dense"}


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int
    dim: int                  # d, hidden size
    n_layers: int
    n_heads: int
    hidden_dim: int           # MLP width ("intermediate_size")
    norm_eps: float
    max_position: int         # rows of the position embedding
    type_vocab_size: int
    max_seq_length: int       # truncation length of the sentence-embedding pipeline

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @classmethod
    def from_json(cls, cfg: dict, max_seq_length: int = MAX_SEQ_LENGTH) -> BertConfig:
        """From a Hugging Face BERT ``config.json`` dict. ValueError for what this forward does not do."""
        if cfg.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"config.json: hidden_act {cfg['hidden_act']!r} unsupported (only exact 'gelu')")
        if cfg.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"config.json: position_embedding_type {cfg['position_embedding_type']!r} "
                             f"unsupported (only 'absolute')")
        max_pos = int(cfg["max_position_embeddings"])
        return cls(vocab_size=int(cfg["vocab_size"]), dim=int(cfg["hidden_size"]),
                   n_layers=int(cfg["num_hidden_layers"]), n_heads=int(cfg["num_attention_heads"]),
                   hidden_dim=int(cfg["intermediate_size"]), norm_eps=float(cfg.get("layer_norm_eps", 1e-12)),
                   max_position=max_pos, type_vocab_size=int(cfg.get("type_vocab_size", 2)),
                   max_seq_length=min(int(max_seq_length), max_pos))



class BertWeights:
    """The parameters of a BERT encoder (the base of ``minq.models.bert.BertEncoder``).

    weights:    {"layer.{i}.{linear}": quantized-weight object} for every linear of ``LINEARS``;
    biases:     {"layer.{i}.{linear}": float32 [out]}, the same names;
    norms:      {"embeddings" | "layer.{i}.attention" | "layer.{i}.output": (gamma, beta) float32 [d]};
    embeddings: {"word": [vocab, d], "position": [max_position, d], "token_type": [types, d]} float32.
    """

    def __init__(self, config: BertConfig, weights: dict, biases: dict, norms: dict, embeddings: dict, *,
                 tokenizer=None, _dense=None):
        self.config = config
        self.tokenizer = tokenizer
        self.biases = biases
        self.norms = norms
        self.embeddings = embeddings
        names = self.linear_names()
        self.weights = check_weight_names(weights, names)
        dense = dict(_dense or {})
        for name in names:  # dequantize once; reuse what an unchanged weight object already produced
            if name not in dense:
                dense[name] = _dense_of(self.weights[name], name, self._expected_shape(name))
        self._dense = dense

    # --- construction -------------------------------------------------------------------------------

    @classmethod
    def from_safetensors(cls, path) -> BertWeights:
        """Load ``model.safetensors`` with ``config.json``, ``tokenizer.json`` and ``pooling_config.json``
        beside it (the layout ``minq.models.assets.fetch("minilm")`` caches), as a float32 model.

        Raises FileNotFoundError for a missing file, ValueError for a checkpoint that is not a complete
        BERT or a pooling this encoder does not do (only mean pooling).
        """
        from safetensors.numpy import load_file

        path = Path(path)
        folder = path.parent
        for f in (path, folder / "config.json", folder / "tokenizer.json"):
            if not f.is_file():
                raise FileNotFoundError(f"{f} not found (a BERT checkpoint needs model.safetensors, "
                                        f"config.json and tokenizer.json in one folder)")
        pooling = folder / "pooling_config.json"
        if pooling.is_file():
            p = json.loads(pooling.read_text())
            others = [k for k, v in p.items() if k.startswith("pooling_mode") and v and k != "pooling_mode_mean_tokens"]
            if not p.get("pooling_mode_mean_tokens", False) or others:
                raise ValueError(f"{pooling}: only mean pooling is supported, got {p}")
        max_seq = MAX_SEQ_LENGTH
        sbert = folder / "sentence_bert_config.json"
        if sbert.is_file():
            max_seq = json.loads(sbert.read_text()).get("max_seq_length", max_seq)
            if isinstance(max_seq, bool) or not isinstance(max_seq, int) or max_seq < 2:
                raise ValueError(f"{sbert}: max_seq_length must be an int >= 2 ([CLS] and [SEP]), got {max_seq!r}")
        cfg = BertConfig.from_json(json.loads((folder / "config.json").read_text()), max_seq)

        t = load_file(str(path))
        t = {k.removeprefix("bert."): v for k, v in t.items()}   # BertForX checkpoints prefix "bert."
        try:
            weights, biases, norms = {}, {}, {}
            for i in range(cfg.n_layers):
                p = f"encoder.layer.{i}."
                for n, hf in _HF_LINEAR.items():
                    weights[f"layer.{i}.{n}"] = DenseWeight(t[p + hf + ".weight"])    # [out, in]
                    biases[f"layer.{i}.{n}"] = _f32(t[p + hf + ".bias"])              # [out]
                norms[f"layer.{i}.attention"] = _ln(t, p + "attention.output.LayerNorm")
                norms[f"layer.{i}.output"] = _ln(t, p + "output.LayerNorm")
            norms["embeddings"] = _ln(t, "embeddings.LayerNorm")
            embeddings = {"word": _f32(t["embeddings.word_embeddings.weight"]),            # [vocab, d]
                          "position": _f32(t["embeddings.position_embeddings.weight"]),    # [max_pos, d]
                          "token_type": _f32(t["embeddings.token_type_embeddings.weight"])}  # [types, d]
        except KeyError as e:
            raise ValueError(f"{path}: tensor {e.args[0]!r} missing: not a complete BERT checkpoint") from e
        tok = BertTokenizer(folder / "tokenizer.json", max_length=cfg.max_seq_length)
        arrays = [*biases.items(), *((f"{k}.{j}", v) for k, gb in norms.items() for j, v in zip("gb", gb)),
                  *embeddings.items()]
        bad = [name for name, a in arrays if not np.isfinite(a).all()]
        if bad:
            raise ValueError(f"{path}: tensors {bad[:5]} have NaN or Inf values")
        return cls(cfg, weights, biases, norms, embeddings, tokenizer=tok)

    def linear_names(self) -> list[str]:
        """Names of every linear weight, layer by layer: ``layer.0.attention.query``, ..., ``layer.{L-1}.output``."""
        return [f"layer.{i}.{n}" for i in range(self.config.n_layers) for n in LINEARS]

    def _expected_shape(self, name: str) -> tuple:
        c = self.config
        kind = name.split(".", 2)[2]
        return {"intermediate": (c.hidden_dim, c.dim), "output": (c.dim, c.hidden_dim)}.get(kind, (c.dim, c.dim))

    def with_weights(self, new: dict) -> BertWeights:
        """A new model whose weights ``new`` ({name: weight object}) replace the named ones; the others,
        the biases, norms, embeddings and tokenizer are shared. ``self`` is left unchanged.

        Raises ValueError naming unknown names or a weight whose ``shape`` does not match, TypeError for
        an object outside the quantized-weight protocol.
        """
        check_weight_names(new, self.linear_names(), new=True)
        dense = {n: a for n, a in self._dense.items() if n not in new}
        return type(self)(self.config, {**self.weights, **new}, self.biases, self.norms, self.embeddings,
                           tokenizer=self.tokenizer, _dense=dense)

    @property
    def nbytes(self) -> int:
        """Bytes of the linear weights as stored by their weight objects."""
        return sum(w.nbytes for w in self.weights.values())

    # --- the model protocol (minq.models.base) --------------------------------------------------------

    def calibration_ids(self, n_samples: int = 128, seq_len: int = 512, seed: int = 0):
        """Default calibration for a sentence encoder: ``n_samples`` lines of minq's calibration text as
        padded sentences (``minq.calibration.sentence_calibration``; ``seq_len`` does not apply)."""
        from minq.calibration import sentence_calibration

        return sentence_calibration(self, n_samples=n_samples, seed=seed)

    def run_linears(self, ids, hooks) -> None:
        """The model protocol's calibration forward: ``forward`` with the mask ``ids != [PAD]``, so the
        hooks see the real tokens only."""
        ids = np.asarray(ids)
        self.forward(ids, ids != self.tokenizer.pad_id, hooks=hooks)

    def input_groups(self, i: int) -> list[tuple[str, ...]]:
        """The linears of layer ``i`` grouped by the input they read: (query, key, value), output,
        intermediate, output."""
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= i < self.config.n_layers:
            raise ValueError(f"layer index i must be an int in [0, {self.config.n_layers}), got {i!r}")
        p = f"layer.{i}."
        return [(p + "attention.query", p + "attention.key", p + "attention.value"), (p + "attention.output",),
                (p + "intermediate",), (p + "output",)]

    def fold_targets(self) -> dict:
        """None: a post-LN encoder has nowhere to fold an input scale without changing the float model (the
        normed ``h`` feeds both the next linears and the residual), so SmoothQuant and AWQ do not apply."""
        return {}

    def _check_hooks(self, hooks):
        return check_hooks(hooks, self.weights)


def _f32(a):
    return np.ascontiguousarray(a, dtype=np.float32)


def _ln(t, prefix):
    """(gamma, beta) of the LayerNorm ``prefix`` of a safetensors dict."""
    return _f32(t[prefix + ".weight"]), _f32(t[prefix + ".bias"])
