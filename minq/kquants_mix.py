"""Chapter 08 — llama.cpp's per-tensor mixes (Q4_K_M and friends) and the ``q4_k_m``-style schemes.

A GGUF "file type" such as Q4_K_M is not one type for every tensor. ``llama-quantize`` picks a type per
tensor (``llama_tensor_get_type_impl`` in llama.cpp's src/llama-quant.cpp): a default type, raised to
more bits for the tensors a model is most sensitive to, then lowered to a type that fits when a row
is not a whole number of blocks. For a dense Llama-architecture model without an importance matrix:

    mix      default   attn_v                          ffn_down                          attn_output
    Q2_K     Q2_K      Q4_K if n_gqa >= 4 else Q3_K    Q3_K                              Q3_K
    Q3_K_S   Q3_K      -                               -                                 -
    Q3_K_M   Q3_K      Q5_K for the first 2, else Q4_K Q5_K if i < n/16, else Q4_K       Q4_K
    Q3_K_L   Q3_K      Q5_K                            Q5_K                              Q5_K
    Q4_K_S   Q4_K      Q5_K for the first 4            Q5_K if i < n/8                   -
    Q4_K_M   Q4_K      Q6_K if use_more_bits(i, n)     Q6_K if use_more_bits(i, n)       -
    Q5_K_S   Q5_K      -                               -                                 -
    Q5_K_M   Q5_K      Q6_K if use_more_bits(i, n)     Q6_K if use_more_bits(i, n)       -
    IQ4_NL   IQ4_NL    Q5_K if n_gqa >= 4              Q5_K if i < n/8, without imatrix  -
    IQ4_XS   IQ4_XS    Q5_K if n_gqa >= 4              Q5_K if i < n/8, without imatrix  -
    Q6_K, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1: every tensor the default; with an imatrix, Q4_0 / Q5_0 give
    ffn_down Q4_1 / Q5_1 for i < n/8 (llama.cpp's guard against "craziness" in the first layers)

    use_more_bits(i, n) = i < n/8  or  i >= 7n/8  or  (i - n/8) % 3 == 2      (integer division: about half)
    fallback when a row of `in` weights is not a whole number of blocks:
        Q2_K, Q3_K, TQ1_0, TQ2_0 -> Q4_0    Q4_K -> Q5_0    Q5_K -> Q5_1    Q6_K -> Q8_0    IQ4_XS -> IQ4_NL

``i`` is the block (layer) index, ``n`` the number of blocks, ``n_gqa`` query heads per key/value head.
SmolLM2-135M has ``in = 576`` for every linear but ``ffn_down`` (1536), and 576 is not a multiple of
256: only its 30 ``ffn_down`` tensors can hold a k-quant, all others fall back to a legacy type.

The output head and the token embedding get their own rules in llama.cpp (Q6_K, or Q8_0 when the row
does not fit). minq's schemes quantize the decoder linears (``model.linear_names()``) and keep the
embedding as loaded, like every other scheme in the report, so bits per weight count those linears.

Schemes: ``q2_k``, ``q3_k_s``, ``q3_k_m``, ``q3_k_l``, ``q4_k_s``, ``q4_k_m``, ``q5_k_s``, ``q5_k_m``,
``q6_k``, ``q8_0``, ``q4_0``, ``q4_1``, ``q5_0``, ``q5_1``, ``iq4_nl``, ``iq4_xs``, each also with
``-imat``: an importance matrix collected on the calibration windows (``minq.imatrix``), as
``llama-imatrix`` then ``llama-quantize --imatrix`` would. Notebook: ``notebooks/08_kquants.ipynb``.
"""

from __future__ import annotations

import hashlib
import re
import weakref

from minq._checks import check_int
from minq.kquants import TYPES, GGMLWeight
from minq.registry import Scheme, register_family

__all__ = ["MIXES", "FALLBACK", "use_more_bits", "tensor_type", "mix_types", "quantize_mix"]

MIXES = {"Q2_K": "Q2_K", "Q3_K_S": "Q3_K", "Q3_K_M": "Q3_K", "Q3_K_L": "Q3_K", "Q4_K_S": "Q4_K",
         "Q4_K_M": "Q4_K", "Q5_K_S": "Q5_K", "Q5_K_M": "Q5_K", "Q6_K": "Q6_K", "Q8_0": "Q8_0",
         "Q4_0": "Q4_0", "Q4_1": "Q4_1", "Q5_0": "Q5_0", "Q5_1": "Q5_1",
         "IQ4_NL": "IQ4_NL", "IQ4_XS": "IQ4_XS"}                                     # mix -> default type
FALLBACK = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "TQ1_0": "Q4_0", "TQ2_0": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1",
            "Q6_K": "Q8_0", "IQ4_XS": "IQ4_NL"}


def use_more_bits(i: int, n: int) -> bool:
    """llama.cpp's choice of the layers that get more bits: the first and last eighth, every third between."""
    n = check_int(n, "n", lo=1)
    i = check_int(i, "i", lo=0, hi=n - 1)
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def _raise(kind: str, mix: str, i: int, n: int, n_gqa: int, default: str, imatrix: bool) -> str:
    """The type of a tensor of ``kind`` ("attn_v", "ffn_down", "attn_output", other) in block ``i`` of ``n``."""
    iq = mix in ("IQ4_NL", "IQ4_XS")
    if kind == "attn_v":
        if iq:
            return "Q5_K" if n_gqa >= 4 else default
        return {"Q2_K": "Q4_K" if n_gqa >= 4 else "Q3_K",
                "Q3_K_M": "Q5_K" if i < 2 else "Q4_K",
                "Q3_K_L": "Q5_K",
                "Q4_K_S": "Q5_K" if i < 4 else default,
                "Q4_K_M": "Q6_K" if use_more_bits(i, n) else default,
                "Q5_K_M": "Q6_K" if use_more_bits(i, n) else default}.get(mix, default)
    if kind == "ffn_down":
        if iq:
            return "Q5_K" if i < n // 8 and not imatrix else default
        if mix in ("Q4_0", "Q5_0") and imatrix:
            return {"Q4_0": "Q4_1", "Q5_0": "Q5_1"}[mix] if i < n // 8 else default
        return {"Q2_K": "Q3_K",
                "Q3_K_M": "Q5_K" if i < n // 16 else "Q4_K",
                "Q3_K_L": "Q5_K",
                "Q4_K_S": "Q5_K" if i < n // 8 else default,
                "Q4_K_M": "Q6_K" if use_more_bits(i, n) else default,
                "Q5_K_M": "Q6_K" if use_more_bits(i, n) else default}.get(mix, default)
    if kind == "attn_output":
        return {"Q2_K": "Q3_K", "Q3_K_M": "Q4_K", "Q3_K_L": "Q5_K"}.get(mix, default)
    return default


def tensor_type(name: str, n_in: int, mix: str, *, n_blocks: int, n_gqa: int = 1, imatrix: bool = False) -> str:
    """The ggml type llama-quantize gives the linear ``name`` (``blk.{i}.{kind}``) with rows of ``n_in``;
    ``imatrix``: whether an importance matrix is given (two rules depend on it)."""
    mix = _mix(mix)
    if not isinstance(name, str):
        raise TypeError(f"name must be a tensor name such as 'blk.0.attn_v', got {type(name).__name__}")
    n_in, n_blocks = check_int(n_in, "n_in", lo=1), check_int(n_blocks, "n_blocks", lo=1)
    n_gqa = check_int(n_gqa, "n_gqa", lo=1)
    m = re.match(r"blk\.(\d+)\.(\w+?)(?:\.weight)?$", name)
    i, kind = (int(m[1]), m[2]) if m else (0, name)
    if i >= n_blocks:
        raise ValueError(f"name {name!r}: block {i} but n_blocks = {n_blocks}")
    qtype = _raise(kind, mix, i, n_blocks, n_gqa, MIXES[mix], bool(imatrix))
    if n_in % TYPES[qtype].block:
        qtype = FALLBACK.get(qtype, qtype)
        if n_in % TYPES[qtype].block:
            raise ValueError(f"{name}: rows of {n_in} weights fit no block type of {mix} (llama.cpp keeps them F16)")
    return qtype


def _mix(mix) -> str:
    if not isinstance(mix, str) or mix.upper() not in MIXES:
        raise ValueError(f"mix must be one of {', '.join(MIXES)}, got {mix!r}")
    return mix.upper()


def mix_types(model, mix: str, *, imatrix: bool = False) -> dict:
    """``{linear name: ggml type}`` of ``mix`` for every linear of ``model`` (the model protocol only).

    ``n_blocks`` is the number of distinct ``blk.{i}`` prefixes; ``n_gqa`` is read from the shapes of
    block 0's ``attn_q`` and ``attn_k`` (rows: heads x head size), 1 when the model has no such names."""
    if not (hasattr(model, "linear_names") and hasattr(model, "weights")):
        raise TypeError(f"model must be a minq model (linear_names(), weights), got {type(model).__name__}")
    names = model.linear_names()
    blocks = {m[1] for m in (re.match(r"blk\.(\d+)\.", n) for n in names) if m}
    W = model.weights
    n_gqa = W["blk.0.attn_q"].shape[0] // W["blk.0.attn_k"].shape[0] if {"blk.0.attn_q", "blk.0.attn_k"} <= set(W) else 1
    return {n: tensor_type(n, W[n].shape[1], mix, n_blocks=max(1, len(blocks)), n_gqa=n_gqa, imatrix=imatrix)
            for n in names}


def quantize_mix(model, mix: str, *, imatrix=None, progress: bool = True):
    """``model`` with every linear quantized to its ``mix`` type (``GGMLWeight``); ``model`` is unchanged.

    ``imatrix``: ``None`` or a ``minq.imatrix.IMatrix`` with an entry for every linear (its importances
    weight each linear's rounding error, and two mix rules change, as in llama-quantize)."""
    from tqdm.auto import tqdm

    if imatrix is not None:
        missing = [n for n in model.linear_names() if n not in imatrix.sums]
        if missing:
            raise ValueError(f"imatrix has no entry for {missing[0]} (and {len(missing) - 1} more): another model's?")
    types = mix_types(model, mix, imatrix=imatrix is not None)
    new = {n: GGMLWeight.quantize(model.weights[n].dequantize(), t,
                                  None if imatrix is None else imatrix.importance(n))
           for n, t in tqdm(types.items(), desc=mix.lower(), unit="linear", disable=not progress, leave=False)}
    return model.with_weights(new)


_LAST = [None]          # (weakref to the model, calibration digest, IMatrix) of the last -imat scheme


def _imatrix_of(model, calibration, progress):
    """``collect_imatrix(model, calibration)``, reused while the model and the windows stay the same (the
    -imat schemes of one ``minq report`` share one collection, as one llama-imatrix file serves many mixes)."""
    from minq.calibration import check_calibration
    from minq.imatrix import collect_imatrix

    ids = check_calibration(calibration)
    key = hashlib.sha256(ids.tobytes()).hexdigest() + str(ids.shape)
    last = _LAST[0]
    if last is not None and last[0]() is model and last[1] == key:
        return last[2]
    im = collect_imatrix(model, ids, progress=progress)
    _LAST[0] = (weakref.ref(model), key, im)
    return im


def _scheme(m: re.Match) -> Scheme:
    mix, imat = m["mix"].upper(), m["imat"] is not None
    desc = (f"llama.cpp's {mix} mix (default {MIXES[mix]}; more bits for attn_v / ffn_down; fallback where rows "
            f"do not fit)" + (", with an importance matrix from the calibration windows" if imat else ""))

    def quantize_model(model, calibration=None, progress=True):
        im = _imatrix_of(model, calibration, progress) if imat else None
        return quantize_mix(model, mix, imatrix=im, progress=progress)

    return Scheme(m.string, desc, quantize_model=quantize_model, needs_calibration=imat)


_NAMES = "|".join(re.escape(k.lower()) for k in sorted(MIXES, key=len, reverse=True))
register_family("gguf", rf"(?P<mix>{_NAMES})(?P<imat>-imat)?", _scheme,
                "q{2..6}_k[_s|_m|_l] | q{4,5}_{0,1} | q8_0 | iq4_{nl,xs}, each [-imat]",
                defaults=("q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_k_m-imat", "q4_0", "q4_0-imat", "iq4_nl",
                          "iq4_nl-imat", "iq4_xs-imat", "q3_k_m", "q3_k_m-imat", "q2_k", "q2_k-imat"),
                quick=("q8_0", "q4_k_m"))
