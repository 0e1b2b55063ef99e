"""Chapter 11 — ternary weights: BitNet b1.58's absmean quantizer, W1.58A8, and llama.cpp's TQ packings.

BitNet b1.58 (Ma et al., "The Era of 1-bit LLMs", arXiv:2402.17764) gives every weight one of three
values, ``{-gamma, 0, +gamma}``, with one scale per weight tensor, the mean magnitude ("absmean"):

    gamma   = mean_ij |W_ij|                                  float32 (the float64 mean, rounded once)
    codes   = clip(round(W / (gamma + eps)), -1, 1)           int8 in {-1, 0, 1}, round half to even
    W_hat   = gamma * codes                                   float32

``eps = 1e-5`` (``EPS``): the paper writes ``W / (gamma + eps)`` without a value; its released training
code clamps instead, ``W / max(gamma, 1e-5)``. For any real weight gamma is far above 1e-5 and the two
differ only for a weight within a relative 1e-5 of a rounding tie (``|W| ~ gamma / 2``); minq follows
the paper's formula with the code's constant. Why absmean and not absmax: with ``gamma = max|W|`` almost
every weight of a bell-shaped tensor rounds to 0 (|W| < max / 2); the mean puts the threshold at
``gamma / 2``, so roughly a third of a Gaussian's weights become 0 and two thirds +-gamma.

Activations (the "A8" of W1.58A8): 8-bit absmax per token, chapter 04's ``Int8Activations("dynamic")``:
``sx = max_j |x_j| / 127``, ``xq = clip(round(x / sx), -128, 127)``. (The released code multiplies by
``127 / max(max|x|, 1e-5)``; it differs only at exact ties and for rows below 1e-5.) A linear then is

    y = W_hat x_hat = gamma * sx * sum_j codes_j * xq_j       an integer sum of +-xq_j: no multiplications

which ``matvec`` computes (``minq.ternary_kernels``: the inner loop adds and subtracts int8 values).

Bits. A trit holds log2(3) = 1.585 bits; storing it costs more:

    TernaryWeight   2 bits a weight (2-bit codes t = code + 1, chapter 03's packing) + one float32
    TQ2_0           2.0625 bpw: 256 weights in 64 bytes of 2-bit codes + a float16 d    (llama.cpp)
    TQ1_0           1.6875 bpw: 5 trits a byte (3^5 = 243 <= 256) + 4 bytes for the last 16 + d

``to_gguf`` writes llama.cpp's blocks through chapter 08 (``minq.kquants``, byte-identical to gguf-py):
those quantizers set ``d = max|x|`` per block of 256, which for ``gamma * codes`` is gamma itself (stored
as float16), so the codes pass through unchanged. ggml needs rows that are a multiple of 256: SmolLM2
(576-wide rows) and minq's tiny Llama (128) cannot hold TQ blocks; ``TernaryWeight`` packs any width.

Training (``BitLinear``, ``prepare_bitnet``: ``minq.bitnet``, needs torch, reachable as
``minq.ternary.BitLinear``) keeps float "latent" weights and runs the forward through ``quantize`` with
straight-through gradients; ``scripts/ternary_tiny.py`` trains minq's tiny Llama both ways.
Post-training ternarization (scheme ``ternary``) is the failure case the paper's from-scratch training
avoids. ``quantize``/``dequantize`` take NumPy arrays or torch tensors (CPU or CUDA) and agree bit for bit.
Notebook: ``notebooks/11_ternary.ipynb``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from minq import packing
from minq._backend import is_torch
from minq._checks import check_choice, check_float_array
from minq.registry import Scheme, register_family

__all__ = ["EPS", "quantize", "dequantize", "TernaryWeight", "to_gguf", "from_gguf", "matvec", "matvec_reference",
           "quantize_bitnet", "BITS"]          # and BitLinear, prepare_bitnet (minq.bitnet, torch), by __getattr__

EPS = 1e-5
BITS = {"log2(3)": float(np.log2(3)), "TernaryWeight": 2.0, "TQ2_0": 66 * 8 / 256, "TQ1_0": 54 * 8 / 256}


def _gamma(W) -> float:
    """``mean |W|`` as a float32 number: the float64 mean of the magnitudes, rounded to float32 once."""
    if is_torch(W):
        return float(np.float32(W.detach().abs().double().mean().item()))
    return float(np.float32(np.abs(W).mean(dtype=np.float64)))


def quantize(W):
    """``(codes, gamma)``: the ternary codes of ``W`` (int8, ``W``'s shape, each -1, 0 or 1) and its absmean
    scale ``gamma = mean|W|`` (float32; a 0-d array, or a 0-d float32 tensor on ``W``'s device).

    ``codes = clip(round(W / (gamma + EPS)), -1, 1)``; ``|gamma * codes - W| <= gamma / 2`` wherever
    ``|W| <= 1.5 gamma`` (weights beyond are clipped to +-gamma). NumPy arrays and torch tensors give the
    same codes and gamma. ValueError for NaN/Inf, an empty or 0-d ``W``; TypeError for a non-float one.
    """
    check_float_array(W, "W")
    if W.ndim == 0:
        raise ValueError("W must have at least one dimension (a weight tensor), got a 0-d array")
    gamma = _gamma(W)
    d = float(np.float32(gamma) + np.float32(EPS))               # a float32 number: the same division in both
    if is_torch(W):
        import torch

        codes = torch.clamp(torch.round(W.detach().float() / d), -1, 1).to(torch.int8)
        return codes, torch.tensor(gamma, dtype=torch.float32, device=W.device)
    codes = np.clip(np.rint(np.asarray(W, np.float32) / np.float32(d)), -1, 1).astype(np.int8)
    return codes, np.float32(gamma)


def _check_codes(codes, gamma):
    if is_torch(codes):
        import torch

        ok, lib = codes.dtype == torch.int8, "torch"
    else:
        if not isinstance(codes, np.ndarray):
            raise TypeError(f"codes must be a numpy array or torch tensor, got {type(codes).__name__}")
        ok, lib = codes.dtype == np.int8, "numpy"
    if not ok:
        raise TypeError(f"codes must be int8 ({lib}), got {codes.dtype}")
    n = codes.numel() if is_torch(codes) else codes.size
    if codes.ndim == 0 or n == 0:
        raise ValueError(f"codes must be a non-empty array with at least one dimension, got shape {tuple(codes.shape)}")
    if bool((codes < -1).any()) or bool((codes > 1).any()):
        raise ValueError("codes must lie in {-1, 0, 1}")
    try:
        g = float(gamma) if getattr(gamma, "ndim", 0) == 0 and not isinstance(gamma, (bool, str)) else None
    except (TypeError, ValueError):
        g = None
    if g is None:
        raise ValueError(f"gamma must be one number (the tensor's mean |W|), got {gamma!r}")
    if not np.isfinite(g) or g < 0:
        raise ValueError(f"gamma must be finite and >= 0 (the tensor's mean |W|), got {g}")
    return np.float32(g)


def dequantize(codes, gamma):
    """``W_hat = gamma * codes`` (float32, ``codes``' shape and library). TypeError for non-int8 codes,
    ValueError for codes outside {-1, 0, 1} or a negative / non-finite / non-scalar gamma."""
    g = _check_codes(codes, gamma)
    if is_torch(codes):
        return codes.float() * float(g)
    return codes.astype(np.float32) * g


# --- the weight protocol: 2-bit codes, one scale -------------------------------------------------------


@dataclass
class TernaryWeight:
    """A ternary weight ``W_hat = gamma * codes`` of shape ``[out, in]``, in the quantized-weight protocol.

    packed: uint8 ``[out, ceil(in / 4)]`` the codes as ``t = code + 1`` in {0, 1, 2}, 2 bits each,
            chapter 03's packing (``minq.packing``: four codes a byte, the first in the low bits):

                byte j of row r   bit  7 6 | 5 4 | 3 2 | 1 0
                                      t4j+3 t4j+2 t4j+1 t4j       (t = 3 never occurs)
    gamma:  float32, the absmean scale.
    """

    packed: np.ndarray
    gamma: np.float32
    shape: tuple

    @classmethod
    def quantize(cls, W) -> TernaryWeight:
        """``quantize(W)`` packed; ``W`` float ``[out, in]`` (NumPy, or a torch tensor on any device: the
        same codes and gamma, stored as NumPy)."""
        check_float_array(W, "W", ndim=2)
        codes, gamma = quantize(W)
        if is_torch(codes):
            codes, gamma = codes.cpu().numpy(), np.float32(gamma.item())
        return cls.from_codes(codes, gamma)

    @classmethod
    def from_codes(cls, codes, gamma) -> TernaryWeight:
        g = _check_codes(codes, gamma)
        if is_torch(codes) or codes.ndim != 2:
            raise ValueError(f"codes must be a 2-D numpy array [out, in], got shape {tuple(codes.shape)}")
        return cls(packing.pack((codes + 1).astype(np.uint8), 2), g, tuple(codes.shape))

    @property
    def codes(self) -> np.ndarray:
        """int8 ``[out, in]`` in {-1, 0, 1}."""
        return (packing.unpack(self.packed, 2, self.shape[1]).astype(np.int8) - 1).astype(np.int8)

    def dequantize(self) -> np.ndarray:
        return dequantize(self.codes, self.gamma)

    @property
    def nbytes(self) -> int:
        return int(self.packed.nbytes) + 4

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.nbytes / (self.shape[0] * self.shape[1])

    def __repr__(self):
        return f"TernaryWeight(shape={self.shape}, gamma={self.gamma:.4g}, {self.bits_per_weight:.3f} bpw)"


# --- llama.cpp's blocks ---------------------------------------------------------------------------------


def to_gguf(codes, gamma, qtype: str = "TQ2_0") -> np.ndarray:
    """llama.cpp's ``TQ1_0`` or ``TQ2_0`` bytes (uint8 ``[rows, n / 256 * block bytes]``, as ``minq.kquants``
    writes them) of the ternary weight ``gamma * codes`` (``codes`` int8 ``[n]`` or ``[rows, n]``, ``n`` a
    multiple of 256, as ggml requires of a row), through chapter 08's quantizer (byte-identical to
    gguf-py): each block's ``d`` is float16(gamma), its codes ``codes`` (a block of zeros: d = 0).
    ``from_gguf`` inverts it. ValueError for rows that are not a multiple of 256."""
    from minq import kquants

    check_choice(qtype, "qtype", ("TQ1_0", "TQ2_0"))
    g = _check_codes(codes, gamma)
    if is_torch(codes):
        codes = codes.cpu().numpy()
    if codes.ndim > 2 or codes.shape[-1] % 256:
        raise ValueError(f"codes must be [n] or [rows, n] with n a multiple of 256 for {qtype} (ggml blocks "
                         f"per row), got shape {codes.shape}")
    return kquants.quantize(dequantize(codes, g), qtype)


def from_gguf(data, qtype: str, shape) -> tuple[np.ndarray, np.ndarray]:
    """``(codes int8 [shape], d float32 [n_blocks])`` of ``TQ1_0``/``TQ2_0`` bytes (``to_gguf``'s, or a
    GGUF file's tensor): the ternary codes and each block's float16 scale, as llama.cpp stores them.
    ValueError when the bytes do not fit ``shape`` or a block is not ternary."""
    from minq import kquants, kquants_legacy

    check_choice(qtype, "qtype", ("TQ1_0", "TQ2_0"))
    x = kquants.dequantize(data, qtype, shape).reshape(-1)                   # d * (t - 1), float32 [n]
    blocks = np.ascontiguousarray(data, np.uint8).reshape(-1).view(kquants_legacy.LAYOUTS[qtype])
    d = blocks["d"].astype(np.float32)                                         # [n_blocks]
    db = np.repeat(d, 256)
    codes = np.where(db != 0, x / np.where(db != 0, db, 1), 0)
    if not np.isin(codes, (-1, 0, 1)).all():
        raise ValueError(f"data does not hold ternary blocks of {qtype} (a code outside -1, 0, 1)")
    return codes.astype(np.int8).reshape(shape), d


# --- the product: integer sums of +-xq -------------------------------------------------------------------


def _act_int8(x):
    """``(xq int8 [T, in], sx float32 [T, 1])``: chapter 04's per-token absmax int8 of ``x [in]`` or ``[T, in]``."""
    from minq.w8a8 import Int8Activations

    xq, sx, _ = Int8Activations("dynamic").quantize(np.atleast_2d(np.asarray(x, np.float32)))
    return xq, sx


def _check_x(w: TernaryWeight, x):
    if not isinstance(w, TernaryWeight):
        raise TypeError(f"w must be a TernaryWeight, got {type(w).__name__}")
    check_float_array(x, "x")
    if x.ndim not in (1, 2) or x.shape[-1] != w.shape[1]:
        raise ValueError(f"x must be [in] or [tokens, in] with in = {w.shape[1]}, got shape {tuple(x.shape)}")


def _matvec_torch(w: TernaryWeight, x):
    """The torch path (``x`` a tensor, CPU or CUDA): the same int8 inputs (``minq.qat.fake_quantize_act``'s
    scales), the integer sums as a float32 product of small integers (exact while ``|acc| < 2^24``, i.e.
    ``in <= 131072``), then ``(acc * sx) * gamma``: NumPy's values bit for bit."""
    import torch

    from minq.qat import _int8_scales

    X = torch.atleast_2d(x.detach().float())                                   # [T, in]
    sx = _int8_scales(X)                                                        # [T, 1], as Int8Activations
    xq = torch.clamp(torch.round(X / sx), -128, 127)                           # integers, float32
    C = torch.from_numpy(w.codes).to(device=x.device, dtype=torch.float32)    # [out, in]
    y = (xq @ C.T) * sx * float(w.gamma)                                       # exact integer sums
    return y[0] if x.ndim == 1 else y


def matvec_reference(w: TernaryWeight, x):
    """The readable product ``y = W_hat x_hat`` (``x [in]`` -> ``y [out]``; ``x [T, in]`` -> ``y [T, out]``):

        xq, sx = int8 per token (x)                              # [T, in], [T, 1]
        acc    = xq @ codes^T                                    # int32 [T, out], exact
        y      = (acc * sx) * gamma                              # float32

    Equal to ``dequantize() @ x_hat`` within float32 rounding of a dot product; ``matvec`` equals it
    bit for bit, and so does a torch ``x`` (the result a tensor on its device)."""
    _check_x(w, x)
    if is_torch(x):
        return _matvec_torch(w, x)
    xq, sx = _act_int8(x)
    acc = xq.astype(np.int32) @ w.codes.astype(np.int32).T                    # [T, out]
    y = acc.astype(np.float32) * sx * w.gamma
    return y[0] if x.ndim == 1 else y


def matvec(w: TernaryWeight, x, *, kernel: str = "addsub"):
    """``matvec_reference`` through the Numba kernel (``minq.ternary_kernels``: the packed bytes, adds and
    subtracts only, rows in slices on the runtime's threads); the same values bit for bit. A torch ``x``
    takes the torch path of ``matvec_reference``."""
    from minq import ternary_kernels

    _check_x(w, x)
    if is_torch(x):
        return _matvec_torch(w, x)
    xq, sx = _act_int8(x)
    acc = ternary_kernels.matvec_int(w.packed, xq, kernel)                    # int32 [T, out]
    y = acc.astype(np.float32) * sx * w.gamma
    return y[0] if x.ndim == 1 else y


# --- the model: every linear ternary, its inputs int8 per token -------------------------------------------


def quantize_bitnet(model, *, act: bool = True, progress: bool = False):
    """BitNet b1.58's inference form of ``model``: every linear a ``TernaryWeight``, and (``act``) every
    linear input int8 per token (chapter 04's ``ActQuantModel`` with ``Int8Activations("dynamic")``).
    Embeddings, norms and the head stay float, as in the paper."""
    from minq.registry import quantize_linears
    from minq.w8a8 import ActQuantModel, Int8Activations

    qmodel = quantize_linears(model, TernaryWeight.quantize, desc="ternary", progress=progress)
    if not act:
        return qmodel
    a8 = Int8Activations("dynamic")
    return ActQuantModel(qmodel, {n: a8 for n in qmodel.linear_names()})


def _scheme(m: re.Match) -> Scheme:
    act = m["a32"] is None
    desc = ("ternary absmean weights per tensor (BitNet b1.58), " +
            ("int8 activations per token (W1.58A8)" if act else "float activations"))

    def quantize_model(model, calibration, progress=True):
        return quantize_bitnet(model, act=act, progress=progress)

    return Scheme(m.string, desc, quantize_model=quantize_model)


register_family("ternary", r"ternary(?P<a32>-a32)?", _scheme, "ternary[-a32]", defaults=("ternary",), quick=())


def __getattr__(name):                     # BitLinear, prepare_bitnet: torch needed, loaded on first use
    if name in ("BitLinear", "prepare_bitnet"):
        from minq import bitnet

        return getattr(bitnet, name)
    raise AttributeError(f"module 'minq.ternary' has no attribute {name!r}")
