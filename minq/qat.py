"""Chapter 05 — quantization-aware training: fake quantization in the forward, gradients through it.

QAT trains the float weight ``W [out, in]`` while the forward already uses its quantized value
``W_hat``, so training sees (and compensates) the quantization error. Rounding has zero gradient almost
everywhere; the **straight-through estimator** (STE, Bengio et al. 2013, arXiv:1308.3432) pretends it
is the identity in the backward pass:

    forward   W_hat = s (clip(round(W / s) + z, 0, 2^bits - 1) - z)      chapter 03's min-max s, z per group
    backward  dL/dW = dL/dW_hat                                         ste="plain"
              dL/dW = dL/dW_hat * 1[s (0 - z) <= W <= s (qmax - z)]     ste="clipped" (0 outside the grid)

The forward is *exactly* ``quantize_groups(W, ...).dequantize()`` (float16 scales rounded up, as chapter
03 stores them), so the trained model converts to real codes with no change in its output. The trap
(torchao, pytorch/ao#229): a fake quantizer of its own (``round(W * (1 / s))``, another zero-point
arithmetic) differs from the real quantizer's ``round(W / s)`` at ties, ~0.1% of elements there. Here the
forward *calls* chapter 02's ``fake_quantize``; only the backward is custom (a ``torch.autograd.Function``).

**LSQ** (Esser et al. 2020, "Learned Step Size Quantization", arXiv:1902.08153) learns the step ``s``
(one per group) in minq's symmetric form, ``z = 2^(bits-1)``, so ``q - z`` is LSQ's signed integer:

    v = (W - beta) / s,   v_bar = clip(round(v), -Q_N, Q_P),   W_hat = s v_bar + beta
    Q_N = 2^(bits-1),  Q_P = 2^(bits-1) - 1                       (bits >= 2)
    dW_hat/dW    = 1 if -Q_N < v < Q_P else 0
    dW_hat/ds    = round(v) - v inside,  -Q_N below,  Q_P above      (= v_bar - v * 1[inside])
    gradient scale: dL/ds (and dL/dbeta) times g = 1 / sqrt(N Q_P),  N = weights per step (group width)

LSQ itself has ``beta = 0``. **LSQ+** (Bhalgat et al. 2020, arXiv:2004.09576) adds a learnable offset
``beta`` per group for asymmetric ranges: ``dW_hat/dbeta = 0 inside, 1 outside``. Initialisation here:
chapter 03's min-max grid, so training starts from RTN: LSQ takes the symmetric scale ``s`` (``max|W| /
Q_P`` rounded up to float16; ``beta = 0``) and its step-0 forward *is* symmetric RTN, bit for bit; LSQ+
takes the asymmetric ``s, z`` and ``beta = s (Q_N - z)`` (code ``q = v_bar + Q_N`` then means chapter 03's
``q``), so its step-0 forward is asymmetric RTN within float32 rounding. (LSQ's own init, ``2 mean|W -
beta| / sqrt(Q_P)`` with ``beta`` the mid-range, is ``init="lsq"``.) ``convert`` gives chapter 03's
``GroupedAffine``: exactly for STE and LSQ; for LSQ+ ``s v_bar + beta`` becomes ``s (q - z)`` with a float
zero point ``z = Q_N - beta / s``, equal within float32 rounding (not bit for bit).

Torch is required (``pip install "minq[torch]"``); the rest of minq imports without it.
Notebook: ``notebooks/05_qat.ipynb``.
"""

from __future__ import annotations

import copy
import math

import numpy as np

from minq import affine
from minq._backend import require_torch
from minq._checks import check_bits, check_choice, check_float_array, check_group_size
from minq.groups import GroupedAffine, quantize_groups

torch = require_torch()
nn = torch.nn

__all__ = ["fake_quantize", "fake_quantize_act", "LSQQuantizer", "QATLinear", "prepare_qat", "convert", "STE",
           "METHODS"]

STE = ("plain", "clipped")
METHODS = ("ste", "lsq")


def _grouped(W, group_size):
    """``W [out, in] -> [out, G, g]`` and the reduced axes of chapter 03 (None per tensor, -1 per group)."""
    out, n_in = W.shape
    g = check_group_size(group_size, n_in)
    per_tensor = group_size is None or group_size == 0
    return W.reshape(out, n_in // g, g), (None if per_tensor else -1)


class _StraightThrough(torch.autograd.Function):
    """Forward: chapter 02's ``fake_quantize`` on the grouped weight. Backward: the gradient unchanged
    (``clipped`` False) or times ``inside``, the mask of the grid's range ``[s (0 - z), s (qmax - z)]``."""

    @staticmethod
    def forward(ctx, W, qp, group_size, clipped):
        Wg, _ = _grouped(W.detach().float(), group_size)                 # [out, G, g]
        W_hat = affine.fake_quantize(Wg, qp).reshape(W.shape)            # [out, G, g] -> [out, in]
        inside = None
        if clipped:
            s = qp.s.float()                                             # s, z [out, G, 1] (or [1, 1, 1])
            inside = ((Wg >= s * (0.0 - qp.z)) & (Wg <= s * (qp.qmax - qp.z))).reshape(W.shape)
        ctx.save_for_backward(inside)
        ctx.dtype = W.dtype
        return W_hat

    @staticmethod
    def backward(ctx, dW_hat):
        (inside,) = ctx.saved_tensors
        dW = dW_hat if inside is None else dW_hat * inside
        return dW.to(ctx.dtype), None, None, None


def fake_quantize(W, *, bits: int, group_size=-1, symmetric: bool = False, ste: str = "plain",
                  s=None, z=None):
    """``W_hat [out, in]`` float32 = ``quantize_groups(W, ...).dequantize()`` bit for bit, with an STE backward.

    W: float torch tensor [out, in] (any device), finite. The scales are chapter 03's defaults: min-max
    per group, integer zero point, float16 storage rounded up. Or a given grid: ``s [out, G]`` (``[1, 1]``
    per tensor) and ``z`` of the same shape (integers in [0, 2^bits - 1]; None when ``symmetric``).
    ste: ``"plain"`` (gradient passes unchanged) or ``"clipped"`` (0 outside ``[s (0 - z), s (qmax - z)]``,
    the derivative of the clip with round taken as the identity). With min-max scales every W is inside
    when symmetric; an asymmetric ``z = round(-lo / s)`` can shift the grid by up to ``s/2``, so extreme
    weights (on an end code) may lie just outside. It matters most with a given (or learned) ``s``.
    """
    check_float_array(W, "W", ndim=2)
    bits = check_bits(bits)
    check_choice(ste, "ste", STE)
    Wg, axis = _grouped(W.detach(), group_size)                          # [out, G, g]
    if s is None:
        qp = affine.choose_qparams(Wg, bits=bits, symmetric=symmetric, axis=axis, scale_dtype="float16")
    else:
        want = (1, 1) if axis is None else tuple(Wg.shape[:2])
        check_float_array(s, "s")
        if tuple(s.shape) != want or bool((s <= 0).any()):
            raise ValueError(f"s must be > 0 with shape {want} for group_size={group_size!r}, got {tuple(s.shape)}")
        if z is None and not symmetric:
            raise ValueError("z is required with s when symmetric=False")
        if z is not None and tuple(z.shape) != want:
            raise ValueError(f"z must have the shape of s {want}, got {tuple(z.shape)}")
        z = torch.full_like(s, 2.0 ** (bits - 1), dtype=torch.float32) if z is None else z
        qp = affine.QParams(s.detach()[..., None], z.detach().float()[..., None], bits, symmetric)
    return _StraightThrough.apply(W, qp, group_size, ste == "clipped")


def _int8_scales(Xf):
    """Per-token int8 scales of a float32 tensor ``Xf [..., in]``: ``sx = max(max|X_t| / 127, 2^-126)``, 1 for
    a row of zeros — ``minq.w8a8.Int8Activations("dynamic")``'s NumPy scales bit for bit. ``[..., 1]``."""
    amax = Xf.abs().amax(-1, keepdim=True)                                  # [..., 1]
    sx = torch.clamp(amax / 127.0, min=float(np.finfo(np.float32).tiny))    # float32, as w8a8's numpy scales
    return torch.where(amax > 0, sx, torch.ones_like(amax))


class _ActInt8(torch.autograd.Function):
    """Per-token symmetric int8 of ``X [..., in]``, as chapter 04's ``Int8Activations("dynamic")``; STE backward."""

    @staticmethod
    def forward(ctx, X):
        Xf = X.detach().float()
        sx = _int8_scales(Xf)                                                # [..., 1]
        return (torch.clamp(torch.round(Xf / sx), -128, 127) * sx).to(X.dtype)

    @staticmethod
    def backward(ctx, dX_hat):
        return dX_hat


def fake_quantize_act(X):
    """``X_hat``: the linear input ``X [..., in]`` quantized to int8 per token and back (``sx = max(max|X_t| /
    127, 2^-126)``), equal bit for bit to ``minq.w8a8.Int8Activations("dynamic").fake_quantize`` on float32;
    the backward is the straight-through identity. ``|X_hat - X| <= sx / 2`` elementwise. ValueError for a non-finite ``X`` (int8 cannot hold it)."""
    check_float_array(X, "X")
    if X.ndim < 1 or X.shape[-1] == 0:
        raise ValueError(f"X must have a non-empty last axis (the linear's input features), got shape {tuple(X.shape)}")
    return _ActInt8.apply(X)


class _LSQ(torch.autograd.Function):
    """``W_hat = s v_bar + beta`` with LSQ's gradients for W, s and beta (``beta`` None for LSQ)."""

    @staticmethod
    def forward(ctx, W, s, beta, Q_N, Q_P, grad_scale, group_size):
        Wg, _ = _grouped(W.detach().float(), group_size)                 # [out, G, g]
        sb = s.detach()[..., None]                                       # [out, G, 1] (or [1, 1, 1])
        v = (Wg if beta is None else Wg - beta.detach()[..., None]) / sb
        q = torch.clamp(torch.round(v) + Q_N, 0, Q_N + Q_P)             # codes, as chapter 02: round half to even
        v_bar = q - Q_N                                                  # (not clamp(round(v)): -0.0 would stay -0.0)
        W_hat = sb * v_bar if beta is None else sb * v_bar + beta.detach()[..., None]
        ctx.save_for_backward(v, v_bar)
        ctx.grad_scale, ctx.Q_N, ctx.Q_P, ctx.s_shape, ctx.dtype = grad_scale, Q_N, Q_P, s.shape, W.dtype
        return W_hat.reshape(W.shape)

    @staticmethod
    def backward(ctx, dW_hat):
        v, v_bar = ctx.saved_tensors
        dWg = dW_hat.reshape(v.shape)
        inside = (v > -ctx.Q_N) & (v < ctx.Q_P)
        dW = (dWg * inside).reshape(dW_hat.shape).to(ctx.dtype)
        ds = (dWg * (v_bar - v * inside)).sum(-1).sum_to_size(ctx.s_shape) * ctx.grad_scale
        dbeta = None
        if ctx.needs_input_grad[2]:                                      # LSQ+: 0 inside, 1 outside
            dbeta = (dWg * ~inside).sum(-1).sum_to_size(ctx.s_shape) * ctx.grad_scale
        return dW, ds, dbeta, None, None, None, None


class LSQQuantizer(nn.Module):
    """Learned step size per group: ``s [out, G]`` (a Parameter), and ``beta [out, G]`` for LSQ+ (``offset``).

    W: the weight it is initialised from [out, in]; init: ``"minmax"`` (chapter 03's symmetric scale, the
    default) or ``"lsq"`` (``2 mean|W - beta| / sqrt(Q_P)``). ``forward(W)`` returns ``W_hat [out, in]``.
    """

    def __init__(self, W, *, bits: int, group_size=-1, offset: bool = False, init: str = "minmax"):
        super().__init__()
        check_float_array(W, "W", ndim=2)
        self.bits = check_bits(bits)
        if bits < 2:
            raise ValueError("bits must be >= 2 for LSQ (Q_P = 2^(bits-1) - 1 = 0 levels)")
        check_choice(init, "init", ("minmax", "lsq"))
        self.group_size, self.offset = group_size, bool(offset)
        self.Q_N, self.Q_P = 2 ** (bits - 1), 2 ** (bits - 1) - 1
        Wg, axis = _grouped(W.detach().float(), group_size)               # [out, G, g]
        red = (0, 1, 2) if axis is None else -1                            # per tensor: one step for all
        if init == "minmax":                # chapter 03's grid: symmetric (LSQ), or asymmetric (LSQ+), where
            qp = affine.choose_qparams(Wg, bits=bits, symmetric=not offset, axis=axis, scale_dtype="float16")
            s = qp.s.float()                                               # [out, G, 1] (or [1, 1, 1])
            beta = s * (self.Q_N - qp.z.float()) if offset else torch.zeros_like(s)   # beta = s (Q_N - z)
        else:
            lo, hi = Wg.amin(red, keepdim=True), Wg.amax(red, keepdim=True)
            beta = (lo + hi) / 2 if offset else torch.zeros_like(lo)       # the mid-range, or 0 (LSQ)
            s = 2 * (Wg - beta).abs().mean(red, keepdim=True) / math.sqrt(self.Q_P)
        s = s.float().clamp(min=float(np.finfo(np.float32).tiny))[..., 0]  # [out, G, 1] -> [out, G]
        self.s = nn.Parameter(s.clone())
        self.beta = nn.Parameter(beta[..., 0].clone()) if offset else None
        self.grad_scale = 1.0 / math.sqrt(Wg.numel() / s.numel() * self.Q_P)  # N = weights per step

    def forward(self, W):
        check_float_array(W, "W", ndim=2)
        return _LSQ.apply(W, self.s, self.beta, self.Q_N, self.Q_P, self.grad_scale, self.group_size)

    def to_grouped(self, W) -> GroupedAffine:
        """The codes and learned steps as a NumPy ``GroupedAffine`` (symmetric; LSQ+: float zero point)."""
        s = self.s.detach().float()
        if not bool((s > 0).all()):
            raise ValueError("s must be > 0 everywhere to convert (a learned step went <= 0)")
        Wg, _ = _grouped(W.detach().float(), self.group_size)
        beta = None if self.beta is None else self.beta.detach().float()[..., None]
        v = (Wg if beta is None else Wg - beta) / s[..., None]
        q = torch.clamp(torch.round(v) + self.Q_N, 0, self.Q_N + self.Q_P).reshape(W.shape)  # as _LSQ.forward
        z = None if beta is None else (self.Q_N - beta[..., 0] / s).cpu().numpy()
        return GroupedAffine.from_codes(q.to(torch.uint8).cpu().numpy(), s.cpu().numpy(), z, bits=self.bits,
                                        group_size=self.group_size, zero_point="int" if z is None else "float")


class QATLinear(nn.Module):
    """An ``nn.Linear`` whose forward uses the fake-quantized weight: ``y = x W_hat^T + b``.

    method: ``"ste"`` (chapter 03's min-max grid every step, ``symmetric`` and ``ste`` as in
    ``fake_quantize``) or ``"lsq"`` (an ``LSQQuantizer``; ``offset=True`` for LSQ+). The weight and
    bias are the linear's own Parameters. ``act_int8``: the input is fake-quantized too, int8 per token
    (``fake_quantize_act``; W4A8 as chapter 04's ``w8a8-dynamic`` runs it: ``y = X_hat W_hat^T + b``).
    """

    def __init__(self, linear, *, bits: int, group_size=-1, method: str = "ste", symmetric: bool = False,
                 ste: str = "plain", offset: bool = False, act_int8: bool = False):
        super().__init__()
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be a torch.nn.Linear, got {type(linear).__name__}")
        check_choice(method, "method", METHODS)
        check_choice(ste, "ste", STE)
        self.weight, self.bias = linear.weight, linear.bias
        self.bits, self.group_size, self.method = check_bits(bits), group_size, method
        self.symmetric, self.ste, self.act_int8 = symmetric, ste, bool(act_int8)
        check_group_size(group_size, self.weight.shape[1])
        self.quantizer = LSQQuantizer(self.weight, bits=bits, group_size=group_size, offset=offset) \
            if method == "lsq" else None

    def weight_hat(self):
        """``W_hat [out, in]``, the weight the forward uses."""
        if self.quantizer is not None:
            return self.quantizer(self.weight)
        return fake_quantize(self.weight, bits=self.bits, group_size=self.group_size,
                             symmetric=self.symmetric, ste=self.ste)

    def forward(self, x):
        x = fake_quantize_act(x) if self.act_int8 else x
        return nn.functional.linear(x, self.weight_hat().to(x.dtype), self.bias)

    def to_grouped(self) -> GroupedAffine:
        """The real quantized weight: a NumPy ``GroupedAffine`` whose ``dequantize()`` is ``weight_hat()``."""
        if self.quantizer is not None:
            return self.quantizer.to_grouped(self.weight)
        return quantize_groups(self.weight.detach().float().cpu().numpy(), bits=self.bits,
                               group_size=self.group_size, symmetric=self.symmetric)


def prepare_qat(model, *, bits: int, group_size=-1, method: str = "ste", **kwargs):
    """A copy of the torch module ``model`` with every ``nn.Linear`` replaced by a ``QATLinear``
    (``model`` is left unchanged). ``kwargs``: ``symmetric``, ``ste``, ``offset``, ``act_int8`` of ``QATLinear``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_bits(bits)
    check_choice(method, "method", METHODS)
    model = copy.deepcopy(model)
    if isinstance(model, nn.Linear):
        return QATLinear(model, bits=bits, group_size=group_size, method=method, **kwargs)
    for name, child in list(model.named_modules()):
        for attr, sub in list(child.named_children()):
            if isinstance(sub, nn.Linear):
                full = f"{name}.{attr}" if name else attr
                try:
                    q = QATLinear(sub, bits=bits, group_size=group_size, method=method, **kwargs)
                except ValueError as e:
                    raise ValueError(f"linear {full!r}: {e}") from None
                setattr(child, attr, q)
    return model


def convert(model) -> dict:
    """``{name: GroupedAffine}`` for every ``QATLinear`` of ``model`` (name ``""`` for a bare one):
    the real codes and scales, as NumPy containers of chapter 03."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    out = {name: m.to_grouped() for name, m in model.named_modules() if isinstance(m, QATLinear)}
    if not out:
        raise ValueError("model has no QATLinear layers (run prepare_qat first)")
    return out
