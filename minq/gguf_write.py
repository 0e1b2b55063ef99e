"""Chapter 08 — writing GGUF files: requantize a Llama GGUF to a llama.cpp mix, as ``llama-quantize`` does.

    minq.gguf_write.quantize_gguf("SmolLM2.Q4_1.gguf", "SmolLM2.Q4_K_M.gguf", "Q4_K_M")
    minq quantize SmolLM2.Q4_1.gguf --type Q4_K_M -o SmolLM2.Q4_K_M.gguf          # the same, from the shell
    minq quantize SmolLM2.Q4_1.gguf --type IQ4_NL --imatrix smollm2.imatrix.gguf -o SmolLM2.IQ4_NL.gguf

With an importance matrix (``minq.imatrix``: minq's ``minq imatrix`` or llama-imatrix's file), each
linear found in it is quantized with its importances (``minq.kquants.quantize(..., imatrix=)``); the
output head and the embedding, which llama-imatrix does not collect, are quantized without, as in
llama-quantize, and the file records the imatrix in ``quantize.imatrix.*`` keys.

A GGUF file is a header (magic, version, counts), typed key/value metadata, a table of tensor infos
(name, dimensions in ggml order ``[in, out]``, type, offset) and the tensor data, each tensor aligned
to ``general.alignment`` bytes (32). The file is written in that order, so every tensor's type and
size must be known before the first byte of data: the plan (``plan_types``) comes first, then the
tensors are *streamed*: each is read from the memory-mapped input, dequantized to float32
(``minq.kquants``), quantized to its new type and written before the next is read. Peak memory is
about one tensor in float32, not the model, so a model larger than RAM can be requantized.

Which type each tensor gets (llama.cpp's ``llama_tensor_get_type``, dense Llama models):
- 1-D tensors (norms) and names not ending in ``weight`` are copied unchanged;
- the output head — or ``token_embd`` when the model ties it to the output (no ``output.weight``) —
  becomes Q6_K, or Q8_0 when the mix is Q8_0 or its rows are not a multiple of 256; an untied
  ``token_embd`` takes the mix's default type;
- every other weight gets ``minq.kquants_mix.tensor_type`` (more bits for attn_v / ffn_down, fallback);
- a tensor already stored in its new type is copied byte for byte (no requantization).

Rows of attn_q / attn_k are in the GGUF's interleaved-RoPE order here (``minq.gguf``'s permutation
is not applied): each row is quantized on its own, so the order of rows does not change any byte.
The output is written to a temporary file beside ``dst`` and renamed over it at the end, so a failure
or Ctrl-C leaves ``dst`` as it was; ``dst`` may not be ``src``. Notebook: ``notebooks/08_kquants.ipynb``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from minq._io import atomic_path, remove_stale_temporaries
from minq.kquants import TYPES, quantize, row_bytes
from minq.kquants_mix import MIXES, _mix, tensor_type

__all__ = ["plan_types", "quantize_gguf"]


def _dims(t) -> tuple[int, ...]:
    """NumPy shape of a reader tensor: ggml lists ``[in, out]``, NumPy ``[out, in]``."""
    return tuple(int(n) for n in reversed(t.shape))


def plan_types(reader, mix: str, *, imatrix: bool = False) -> dict:
    """``{tensor name: new ggml type name}`` for every tensor of a ``gguf.GGUFReader`` (see the module);
    ``imatrix``: whether an importance matrix will be used (two mix rules depend on it)."""
    mix = _mix(mix)
    names = [t.name for t in reader.tensors]
    arch = reader.fields["general.architecture"].contents()
    field = reader.fields.get(f"{arch}.attention.head_count")
    kv = reader.fields.get(f"{arch}.attention.head_count_kv")
    n_head = int(np.asarray(field.contents()).max()) if field else 1
    n_gqa = n_head // int(np.asarray(kv.contents()).max()) if kv else 1
    n_blocks = len({n.split(".")[1] for n in names if n.startswith("blk.")})
    tied = "output.weight" not in names
    plan = {}
    for t in reader.tensors:
        dims = _dims(t)
        if len(dims) < 2 or not t.name.endswith("weight") or "norm" in t.name:
            plan[t.name] = t.tensor_type.name                          # copied as is
        elif t.name == "output.weight" or (tied and t.name == "token_embd.weight"):
            plan[t.name] = "Q8_0" if MIXES[mix] == "Q8_0" or dims[-1] % 256 else "Q6_K"
        elif t.name == "token_embd.weight":
            plan[t.name] = tensor_type("token_embd", dims[-1], mix, n_blocks=n_blocks, n_gqa=n_gqa, imatrix=imatrix)
        else:
            plan[t.name] = tensor_type(t.name, dims[-1], mix, n_blocks=n_blocks, n_gqa=n_gqa, imatrix=imatrix)
    return plan


def _float32(t) -> np.ndarray:
    from minq.gguf import _to_float32

    return _to_float32(t.data, t.tensor_type.name, _dims(t))


def _imatrix(imatrix, reader):
    """``imatrix`` as an ``IMatrix`` checked against the tensors of ``reader`` (None stays None)."""
    from minq.imatrix import IMatrix, read_imatrix

    if imatrix is None:
        return None
    im = imatrix if isinstance(imatrix, IMatrix) else read_imatrix(imatrix)
    widths = {t.name.removesuffix(".weight"): _dims(t)[-1] for t in reader.tensors if len(t.shape) == 2}
    for name, s in im.sums.items():
        if widths.get(name) != len(s):
            raise ValueError(f"imatrix: entry {name} ({len(s)} columns) is not a linear of this model "
                             f"({'absent' if name not in widths else f'{widths[name]} columns'}): another model's imatrix?")
    return im


def _check_paths(src, dst) -> tuple[Path, Path]:
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise FileNotFoundError(f"src: no such GGUF file {src}")
    if dst.exists() and (dst.is_dir() or os.path.samefile(src, dst)):
        raise ValueError(f"dst {dst} is {'a folder' if dst.is_dir() else 'the input file'}: choose another output path")
    if not dst.parent.is_dir() or not os.access(dst.parent, os.W_OK):
        raise ValueError(f"dst: cannot write into {dst.parent} (not a writable folder)")
    return src, dst


def quantize_gguf(src, dst, mix: str, *, imatrix=None, progress: bool = True) -> dict:
    """Write ``src`` (a Llama-architecture GGUF) requantized to ``mix`` into ``dst``; returns the plan.

    ``imatrix``: ``None``, a ``minq.imatrix.IMatrix`` or the path of an imatrix file (GGUF or ``.dat``);
    its entries must be linears of ``src`` with the right widths (ValueError naming ``imatrix``).

    Metadata is copied (``general.file_type`` set to the mix, ``general.quantization_version`` 2).
    Raises FileNotFoundError (``src``), ValueError naming ``dst`` (the input itself, a folder, an
    unwritable place), ``mix`` (unknown) or ``src`` (not a valid GGUF, not Llama, a row no block type
    fits) before anything is written; a tensor found corrupt while streaming (NaN scales, NaN or Inf
    values) raises ValueError naming ``src`` and the tensor, and ``dst`` stays as it was."""
    import gguf
    from tqdm.auto import tqdm

    mix = _mix(mix)
    src, dst = _check_paths(src, dst)
    try:
        reader = gguf.GGUFReader(src)
    except Exception as e:
        raise ValueError(f"src {src} is not a valid GGUF file: {type(e).__name__}: {e}") from e
    arch = reader.fields["general.architecture"].contents() if "general.architecture" in reader.fields else None
    if arch != "llama":
        raise ValueError(f"src {src}: architecture {arch!r}, minq requantizes llama")
    im = _imatrix(imatrix, reader)
    plan = plan_types(reader, mix, imatrix=im is not None)
    remove_stale_temporaries(dst.parent)             # what a killed earlier run left beside dst
    with atomic_path(dst) as tmp:
        w = gguf.GGUFWriter(tmp, arch)
        for key, f in reader.fields.items():
            if key.startswith("GGUF.") or key in ("general.architecture", "general.file_type",
                                                  "general.quantization_version"):
                continue
            w.add_key_value(key, f.contents(), f.types[0], f.types[-1] if len(f.types) > 1 else None)
        w.add_file_type(int(gguf.LlamaFileType[f"MOSTLY_{mix}"]))
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        if im is not None:                                                 # as llama-quantize records it
            w.add_string("quantize.imatrix.file", str(imatrix) if isinstance(imatrix, (str, os.PathLike)) else "")
            if im.datasets:
                w.add_string("quantize.imatrix.dataset", im.datasets[-1])
            w.add_int32("quantize.imatrix.entries_count", len(im.sums))
            w.add_int32("quantize.imatrix.chunks_count", im.chunk_count)
        for t in reader.tensors:
            new, dims = plan[t.name], _dims(t)
            if new in TYPES:
                w.add_tensor_info(t.name, (*dims[:-1], row_bytes(new, dims[-1])), np.dtype(np.uint8),
                                  int(np.prod(dims[:-1])) * row_bytes(new, dims[-1]), raw_dtype=gguf.GGMLQuantizationType[new])
            else:
                w.add_tensor_info(t.name, dims, t.data.dtype, t.data.nbytes, raw_dtype=t.tensor_type)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for t in tqdm(reader.tensors, desc=f"quantize {src.name} -> {mix}", unit="tensor", disable=not progress):
            new = plan[t.name]
            try:
                if new == t.tensor_type.name:
                    data = np.ascontiguousarray(t.data)                           # copied byte for byte
                else:
                    key = t.name.removesuffix(".weight")
                    w_in = im.importance(key) if im is not None and key in im.sums else None
                    data = quantize(_float32(t), new, imatrix=w_in)              # one tensor at a time
            except ValueError as e:
                raise ValueError(f"src {src}: tensor {t.name!r} ({t.tensor_type.name} -> {new}): {e}") from e
            w.write_tensor_data(data)
        w.close()
    return plan
