"""Reading GGUF files: metadata and float32 tensors of a Llama-architecture checkpoint.

GGUF (llama.cpp's file format) is a header of typed key/value metadata (``llama.block_count``,
``tokenizer.ggml.tokens``, ...) followed by tensors, each stored as F32/F16/BF16 or in ggml's block
quantized types (Q8_0, Q4_0, Q4_1, the k-quants ...). ``read_gguf`` parses the file with the
``gguf`` package (gguf-py) and dequantizes every tensor to float32 with minq's own ``minq.kquants``
(chapter 08; gguf-py's dequantizer only for the types minq does not implement yet, the i-quants).

The Q/K row permutation. llama.cpp applies RoPE to *interleaved* pairs ``(x[2i], x[2i+1])`` of each
head, while Hugging Face checkpoints rotate the *two halves* ``(x[i], x[i + d/2])``. The HF->GGUF
converter therefore reorders the rows of ``attn_q`` and ``attn_k`` within each head:

    HF row  h*d + j*(d/2) + i     (head h, half j in {0, 1}, index i < d/2)
    GGUF row h*d + 2*i + j

``read_gguf`` undoes it (``unpermute_qk``), so the weights minq holds are in the Hugging Face layout
for every checkpoint format, and ``minq.models.llama`` implements one RoPE: the half-split one. (Only
the *order of output rows* changes; quantization along the input dimension is unaffected.)
Writing a GGUF (chapter 08) must apply the permutation again.

Reference: the GGUF specification in the ggml repository (docs/gguf.md). Notebook: chapter 08.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["GGUFFile", "read_gguf", "unpermute_qk", "permute_qk", "SUPPORTED_ARCHITECTURES"]

SUPPORTED_ARCHITECTURES = ("llama",)


@dataclass
class GGUFFile:
    """A parsed GGUF file.

    metadata: {key: value} (strings, numbers, lists) — e.g. ``metadata["llama.block_count"] == 30``.
    tensors:  {name: float32 array} in NumPy order, a linear weight ``W [out, in]``; attn_q/attn_k
              rows already in the Hugging Face (half-split RoPE) order. Read with ``dequantize=False``,
              a tensor of a ggml block type minq implements is a ``minq.kquants.GGMLWeight`` instead
              (its bytes, rows in the same order).
    types:    {name: ggml type name as stored, e.g. "Q4_1"}.
    """

    path: Path
    metadata: dict
    tensors: dict = field(repr=False)
    types: dict = field(repr=False)

    @property
    def architecture(self) -> str:
        return self.metadata["general.architecture"]


def permute_qk(W, n_head: int):
    """HF rows -> GGUF rows within each head: ``[n_head * d, in]``, pairs (i, i + d/2) become (2i, 2i+1)."""
    out = W.shape[0]
    d = out // n_head
    return W.reshape(n_head, 2, d // 2, *W.shape[1:]).swapaxes(1, 2).reshape(W.shape)


def unpermute_qk(W, n_head: int):
    """GGUF rows -> HF rows (the inverse of ``permute_qk``); ``n_head`` is the KV head count for attn_k."""
    out = W.shape[0]
    if n_head <= 0 or out % (2 * n_head):
        raise ValueError(f"n_head={n_head} does not split {out} rows into heads of even size")
    d = out // n_head
    return W.reshape(n_head, d // 2, 2, *W.shape[1:]).swapaxes(1, 2).reshape(W.shape)


def read_gguf(path, *, progress: bool = True, dequantize: bool = True) -> GGUFFile:
    """Parse the GGUF file at ``path``: metadata and every tensor dequantized to float32 (``dequantize=False``:
    the 2-D tensors of ggml block types that ``minq.kquants`` implements kept as ``GGMLWeight`` blocks).

    Raises FileNotFoundError (no such file), ValueError naming the file when it is not a valid GGUF
    (bad magic, truncated, corrupt, a tensor type neither minq nor gguf-py dequantizes) or when its
    ``general.architecture`` is not one of ``SUPPORTED_ARCHITECTURES``.
    """
    import gguf
    from tqdm.auto import tqdm

    if not isinstance(dequantize, bool):
        raise TypeError(f"dequantize must be a bool, got {type(dequantize).__name__}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {path}")
    try:
        reader = gguf.GGUFReader(path)
    except Exception as e:  # gguf-py raises ValueError/IndexError/... on bad files
        raise ValueError(f"{path} is not a valid GGUF file (truncated or corrupt?): "
                         f"{type(e).__name__}: {e}") from e
    try:
        metadata = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    except Exception as e:
        raise ValueError(f"{path}: corrupt GGUF metadata: {type(e).__name__}: {e}") from e
    arch = metadata.get("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ValueError(f"{path}: unsupported architecture {arch!r} (general.architecture); "
                         f"minq runs {', '.join(SUPPORTED_ARCHITECTURES)}")
    n_head = metadata.get(f"{arch}.attention.head_count")
    n_kv = metadata.get(f"{arch}.attention.head_count_kv", n_head)

    tensors, types = {}, {}
    for t in tqdm(reader.tensors, desc=f"read {path.name}", disable=not progress, leave=False):
        shape = [int(n) for n in reversed(t.shape)]          # ggml [in, out] -> NumPy [out, in]
        try:
            if not dequantize and len(shape) == 2 and _is_blocks(t.tensor_type.name):
                W = _blocks(t.data, t.tensor_type.name, shape, t.name, n_head, n_kv)
                tensors[t.name], types[t.name] = W, t.tensor_type.name
                continue
            W = _to_float32(t.data, t.tensor_type.name, shape)
        except Exception as e:
            raise ValueError(f"{path}: cannot dequantize tensor {t.name!r} of type "
                             f"{t.tensor_type.name}: {type(e).__name__}: {e}") from e
        if t.name.endswith("attn_q.weight"):
            W = unpermute_qk(W, n_head)
        elif t.name.endswith("attn_k.weight"):
            W = unpermute_qk(W, n_kv)
        tensors[t.name] = np.ascontiguousarray(W)
        types[t.name] = t.tensor_type.name
    return GGUFFile(path, metadata, tensors, types)


def _is_blocks(qtype: str) -> bool:
    from minq import kquants

    return qtype in kquants.TYPES and qtype not in ("F32", "F16", "BF16")


def _blocks(data, qtype: str, shape, name: str, n_head, n_kv):
    """A 2-D tensor's ggml blocks as a ``GGMLWeight`` (a copy, not a view of the file's map), the rows of
    attn_q / attn_k put back in the Hugging Face order: a row of blocks moves as a whole."""
    from minq.kquants import GGMLWeight

    raw = np.array(data, np.uint8).reshape(shape[0], -1)                    # [out, row bytes]
    if name.endswith("attn_q.weight"):
        raw = np.ascontiguousarray(unpermute_qk(raw, n_head))
    elif name.endswith("attn_k.weight"):
        raw = np.ascontiguousarray(unpermute_qk(raw, n_kv))
    return GGMLWeight(raw, qtype, tuple(shape))


def _to_float32(data, qtype: str, shape):
    """A tensor's stored values as float32 ``shape``: plain floats converted, ggml's block types through
    minq's own ``minq.kquants.dequantize``; gguf-py dequantizes only the types minq does not implement
    yet (the i-quants), so that such files still load."""
    import gguf

    from minq import kquants

    if qtype in ("F32", "F16"):                             # a copy: no view keeps the file's map alive
        return np.array(data, np.float32).reshape(shape)
    if qtype == "BF16":                                   # the top 16 bits of a float32
        return (np.asarray(data).view(np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(shape)
    if qtype in kquants.TYPES:
        return kquants.dequantize(np.asarray(data), qtype, shape)
    return np.asarray(gguf.quants.dequantize(data, getattr(gguf.GGMLQuantizationType, qtype)),
                      np.float32).reshape(shape)
