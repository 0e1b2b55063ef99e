"""Chapter 11 — BitLinear: training BitNet b1.58 from scratch, in torch (``minq.ternary`` holds the math).

A ``BitLinear`` keeps a float "latent" weight ``W`` for the optimizer and computes its forward with the
quantized weight and inputs of "The Era of 1-bit LLMs" (arXiv:2402.17764), gradients passing straight
through both roundings (STE, as the paper's released training code does with ``.detach()``):

    W_hat = gamma * codes,  (codes, gamma) = minq.ternary.quantize(W)       absmean ternary, per tensor
    x_hat = minq.qat.fake_quantize_act(x)                                   int8 absmax per token
    y     = x_hat W_hat^T                                                   no bias
    dL/dW = dL/dW_hat,  dL/dx = dL/dx_hat                                   straight-through

The forward is exactly what the NumPy model of ``minq.ternary.quantize_bitnet`` computes (the same codes,
gamma and int8 inputs, bit for bit; the products agree within float32 rounding of the sums), so a model
trained here runs in minq's runtime unchanged: ``to_numpy_llama(net)`` then ``quantize_bitnet``.

One difference from the paper's BitLinear: it normalises its input inside the layer (an RMSNorm, "SubLN")
before quantizing it. minq's Llama already normalises the inputs of q/k/v and gate/up (the block's
pre-norms); the inputs of ``attn_output`` and ``ffn_down`` go in as they are, so the model stays minq's
Llama architecture (and per-token absmax scaling makes the int8 grid follow each token's range anyway).

    net = TinyLlama(config); prepare_bitnet(net)            # every block linear a BitLinear, in place
    net, losses = train_tiny(config, ids, prepare=prepare_bitnet)        # trained from scratch as BitNet

Torch is required. Notebook: ``notebooks/11_ternary.ipynb``.
"""

from __future__ import annotations

from minq import ternary
from minq._backend import require_torch
from minq.models.llama_weights import LINEARS
from minq.qat import fake_quantize_act

torch = require_torch()
nn, F = torch.nn, torch.nn.functional

__all__ = ["BitLinear", "prepare_bitnet"]


class _TernarySTE(torch.autograd.Function):
    """Forward ``gamma * codes`` (exactly ``minq.ternary.dequantize(*quantize(W))``); backward the identity."""

    @staticmethod
    def forward(ctx, W):
        codes, gamma = ternary.quantize(W.detach())
        return ternary.dequantize(codes, gamma).to(W.dtype)

    @staticmethod
    def backward(ctx, dW_hat):
        return dW_hat


class BitLinear(nn.Linear):
    """``nn.Linear`` (no bias) whose forward uses ternary weights and int8 inputs, with STE gradients.

    ``act=False`` leaves the inputs in float (W1.58A16-style, for experiments). ``weight_hat()`` is the
    ternary weight the forward uses (float32 ``[out, in]``, values ``{-gamma, 0, gamma}``)."""

    def __init__(self, in_features: int, out_features: int, *, act: bool = True, device=None, dtype=None):
        super().__init__(in_features, out_features, bias=False, device=device, dtype=dtype)
        self.act = bool(act)

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, act: bool = True) -> BitLinear:
        """A ``BitLinear`` sharing ``linear``'s weight Parameter (the optimizer's latent weight)."""
        if not isinstance(linear, nn.Linear) or linear.bias is not None:
            raise TypeError(f"linear must be an nn.Linear without bias, got {linear!r}")
        new = cls(linear.in_features, linear.out_features, act=act, device="meta")
        new.weight = linear.weight
        return new

    def weight_hat(self):
        return _TernarySTE.apply(self.weight)

    def forward(self, x):
        x_hat = fake_quantize_act(x) if self.act else x
        return F.linear(x_hat, self.weight_hat())

    def extra_repr(self):
        return f"{super().extra_repr()}, ternary weights, {'int8' if self.act else 'float'} inputs"


def prepare_bitnet(net, *, act: bool = True):
    """Replace, in place, each block linear of ``net`` (the seven ``LINEARS`` of every ``net.blk[i]``,
    minq's tiny Llama) with a ``BitLinear`` sharing its weight; embeddings, norms and the tied head stay
    float. Returns ``net``. TypeError when ``net`` has no such blocks."""
    blocks = getattr(net, "blk", None)
    if blocks is None or not all(isinstance(getattr(b, n, None), nn.Linear) for b in blocks for n in LINEARS):
        raise TypeError(f"net must be a model with blocks net.blk[i] holding the linears {LINEARS}")
    for b in blocks:
        for n in LINEARS:
            lin = getattr(b, n)
            if not isinstance(lin, BitLinear):
                setattr(b, n, BitLinear.from_linear(lin, act=act))
    return net
