"""Chapter 05 — QAT of a whole Llama: end to end on minq's tiny model, block by block on SmolLM2.

Two ways to train a quantized Llama, both with ``minq.qat``'s fake quantizers in the forward:

**End to end** (``qat_finetune``; LLM-QAT, Liu et al. 2023, arXiv:2305.17888, distils from the float
model as here). Every linear of a trained ``TinyLlama`` becomes a ``QATLinear``; the whole network trains
on windows of the token stream with the loss

    "kd":  KL(p_float || p_quant) = sum_v p_float(v) (log p_float(v) - log p_quant(v))   per token
    "ce":  -log p_quant(next token)                                                   (pretraining's loss)

KD (the default) makes the float model the target, so QAT recovers the quantization gap and cannot
"win" by training the float model further on the same text (which CE also does).

**Block-wise** (``qat_blockwise``; the Block-AP of EfficientQAT, Chen et al. 2024, arXiv:2407.11062,
and OmniQuant's block reconstruction). A 135M model's full backward does not fit a 30-minute CPU budget;
one block's does. For block ``i = 0 .. L-1`` on cached calibration activations:

    X_fp   [n, T, d]   the float model's input to block i         Y = block_i(X_fp)   the target
    X_q    [n, T, d]   the *quantized* model's input (blocks < i already trained and quantized)
    train  W, s (, beta) of block i to minimise  mean (block_i^q(X_q) - Y)^2
    then   X_q <- block_i^q(X_q),  X_fp <- Y

Feeding ``X_q`` (not ``X_fp``) lets each block correct the error the blocks before it left, as GPTQ's
sequential mode does; the target stays the float model's own activation. Only linear weights and
quantizer parameters train (norms stay float and fixed), so the result is a ``model.with_weights(...)``.

Both end as minq's NumPy model with chapter 03's ``GroupedAffine`` weights (``quantized_llama`` converts
``qat_finetune``'s torch net; ``qat_blockwise`` returns the model; both via ``minq.qat.convert``): the
fake-quantized torch forward and the real quantized NumPy forward give the same logits (within float32
summation order; tests/test_qat_llama.py). ``act_int8=True`` trains W4A8 (int8 per-token inputs) and
returns chapter 04's ``ActQuantModel`` with ``Int8Activations("dynamic")`` hooks.

    qnet, losses = qat_finetune(net, ids, bits=3, group_size=64, method="lsq", steps=150)
    model_q = quantized_llama(qnet, tokenizer=tok)                         # a LlamaModel
    model_q, log = qat_blockwise(smollm2, calib_ids, bits=3, group_size=64, steps=200)     # calib_ids [n, T]

Torch is required. Notebook: ``notebooks/05_qat.ipynb``; SmolLM2 numbers: ``benchmarks/bench_qat.py``.
"""

from __future__ import annotations

import math
from dataclasses import asdict

import numpy as np

from minq._backend import require_torch
from minq._checks import check_bits, check_choice, check_int
from minq.models.llama import LlamaModel, rope_tables
from minq.models.tiny import TinyConfig, TinyLlama, _Block, to_numpy_llama
from minq.qat import LSQQuantizer, QATLinear, convert, prepare_qat

torch = require_torch()
nn, F = torch.nn, torch.nn.functional

__all__ = ["qat_finetune", "quantized_llama", "torch_block", "qat_blockwise", "LOSSES"]

LOSSES = ("kd", "ce")


def _check_lr(lr, name="lr"):
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {lr!r}")
    return float(lr)


def _optimizer(net, lr, lr_quant, steps):
    """Adam on the weights (``lr``) and the LSQ steps/offsets (``lr_quant``), cosine decay to 0."""
    quant = [p for n, p in net.named_parameters() if ".quantizer." in f".{n}"]
    ids = {id(p) for p in quant}
    weights = [p for p in net.parameters() if id(p) not in ids and p.requires_grad]
    groups = [{"params": weights, "lr": lr}] + ([{"params": quant, "lr": lr_quant}] if quant else [])
    opt = torch.optim.Adam(groups, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1 + math.cos(math.pi * t / max(1, steps))))
    return opt, sched


def _step(opt, sched, net):
    """One optimizer step; LSQ steps that Adam pushed to <= 0 are held at the smallest normal float32 (a
    step's update is ~lr whatever its size, so a rate too large for a small step would make it negative)."""
    opt.step()
    sched.step()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, LSQQuantizer):
                m.s.clamp_(min=float(np.finfo(np.float32).tiny))


def qat_finetune(net: TinyLlama, ids, *, bits: int, group_size=64, method: str = "lsq", steps: int = 150,
                 lr: float = 1e-4, lr_quant: float | None = None, loss: str = "kd", seq_len: int = 256,
                 batch: int = 8, seed: int = 0, progress: bool = True, **qat_kwargs):
    """Quantization-aware fine-tuning of the trained float ``net`` (left unchanged) on the token stream ``ids``.

    Every linear becomes a ``QATLinear(bits, group_size, method, **qat_kwargs)`` (``offset``, ``ste``,
    ``symmetric``, ``act_int8``); then ``steps`` steps of Adam (``lr`` for weights, ``lr_quant`` for LSQ's
    steps and offsets, default ``lr / 10``; cosine decay to 0; gradients clipped to norm 1; Adam moves
    every parameter by about its rate per step, so rates must be small against the grid's step ``s``:
    ~1e-4 for 4-bit weights of size ~0.05, more at fewer bits) on ``batch`` random windows of
    ``seq_len + 1`` tokens (starts from ``np.random.default_rng(seed)``), loss ``"kd"`` or ``"ce"`` (module
    docstring). ``steps=0`` is post-training quantization with the same grid (RTN for ``"ste"``).
    Returns ``(qnet, losses [steps])``: ``qnet`` is a TinyLlama of QATLinear layers (``quantized_llama``
    converts it). ValueError for bad arguments, before any training.
    """
    if not isinstance(net, TinyLlama):
        raise TypeError(f"net must be a minq.models.tiny.TinyLlama, got {type(net).__name__}")
    check_choice(loss, "loss", LOSSES)
    steps, lr = check_int(steps, "steps", lo=0), _check_lr(lr)
    batch, seed = check_int(batch, "batch", lo=1), check_int(seed, "seed", lo=0)
    seq_len = check_int(seq_len, "seq_len", lo=2)
    lr_quant = lr / 10 if lr_quant is None else _check_lr(lr_quant, "lr_quant")
    ids = np.asarray(ids)
    if ids.ndim != 1 or ids.dtype.kind not in "iu" or ids.size < seq_len + 2:
        raise ValueError(f"ids must be a 1-D integer token stream of > seq_len + 1 = {seq_len + 1} tokens, "
                         f"got shape {ids.shape} dtype {ids.dtype}")
    if ids.min() < 0 or ids.max() >= net.config.vocab_size:
        raise ValueError(f"ids must lie in [0, vocab_size={net.config.vocab_size})")
    if not 2 <= seq_len <= net.config.context_length:
        raise ValueError(f"seq_len must be in [2, context_length={net.config.context_length}], got {seq_len}")
    qnet = prepare_qat(net, bits=bits, group_size=group_size, method=method, **qat_kwargs)
    teacher, device = net.eval(), next(net.parameters()).device                # train where net lives (CPU, CUDA)
    opt, sched = _optimizer(qnet, lr, lr_quant, steps)
    rng, stream = np.random.default_rng(seed), torch.from_numpy(ids.astype(np.int64))
    offsets, losses = torch.arange(seq_len + 1), np.empty(steps)
    from tqdm.auto import tqdm

    qnet.train()
    for t in tqdm(range(steps), desc=f"QAT {method} W{bits}", disable=not progress, leave=False):
        w = stream[torch.from_numpy(rng.integers(0, ids.size - seq_len, size=batch))[:, None] + offsets].to(device)
        logits = qnet(w[:, :-1]).flatten(0, 1)                                 # [batch * seq_len, vocab]
        if loss == "ce":
            value = F.cross_entropy(logits, w[:, 1:].flatten())
        else:
            with torch.no_grad():
                target = F.log_softmax(teacher(w[:, :-1]).flatten(0, 1), -1)
            value = F.kl_div(F.log_softmax(logits, -1), target, log_target=True, reduction="batchmean")
        opt.zero_grad(set_to_none=True)
        value.backward()
        nn.utils.clip_grad_norm_(qnet.parameters(), 1.0)
        _step(opt, sched, qnet)
        losses[t] = value.item()
    return qnet.eval(), losses


def quantized_llama(qnet: TinyLlama, *, tokenizer=None):
    """The QAT-trained ``qnet`` as minq's NumPy model with real quantized weights (``GroupedAffine``):
    a ``LlamaModel``, or an ``ActQuantModel`` (int8 dynamic inputs) when its linears have ``act_int8``."""
    if not isinstance(qnet, TinyLlama):
        raise TypeError(f"qnet must be a TinyLlama, got {type(qnet).__name__}")
    model = to_numpy_llama(qnet, tokenizer=tokenizer).with_weights(convert(qnet))
    return _with_act(model, [n for n, m in qnet.named_modules() if isinstance(m, QATLinear) and m.act_int8])


def _with_act(model, names):
    if not names:
        return model
    from minq.w8a8 import ActQuantModel, Int8Activations

    return ActQuantModel(model, {n: Int8Activations("dynamic") for n in names})


# --- block-wise QAT ------------------------------------------------------------------------------------------


def torch_block(model: LlamaModel, i: int):
    """Block ``i`` of the NumPy ``model`` as a float32 torch module (``minq.models.tiny``'s block: the same
    math): ``forward(x [B, T, d], cos, sin) -> [B, T, d]``, its linears named as minq's weights."""
    if not isinstance(model, LlamaModel):
        raise TypeError(f"model must be a minq LlamaModel, got {type(model).__name__}")
    if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= i < model.config.n_layers:
        raise ValueError(f"i must be a block index in [0, {model.config.n_layers}), got {i!r}")
    block = _Block(TinyConfig(**asdict(model.config)))
    p = f"blk.{i}."
    with torch.no_grad():
        for name, m in block.named_children():
            m.weight.copy_(torch.as_tensor(np.array(model.weights[p + name].dequantize(), np.float32)))
        block.attn_norm.copy_(torch.as_tensor(np.array(model.norms[p + "attn_norm"])))
        block.ffn_norm.copy_(torch.as_tensor(np.array(model.norms[p + "ffn_norm"])))
    return block.requires_grad_(False)


def qat_blockwise(model: LlamaModel, ids, *, bits: int, group_size=64, method: str = "lsq", steps: int = 200,
                  lr: float = 2e-4, lr_quant: float = 1e-3, batch: int = 4, device=None, progress: bool = True,
                  **qat_kwargs):
    """Block-wise QAT of ``model`` (left unchanged; its weights dequantized as the float reference) on the
    calibration windows ``ids`` int ``[n, T]`` (module docstring). Per block, ``steps`` steps of Adam on
    ``batch`` windows drawn in order from a seeded permutation (``lr`` weights, ``lr_quant`` LSQ steps and
    offsets; cosine decay; the defaults are those of ``benchmarks/bench_qat.py`` on SmolLM2). ``steps=0``:
    RTN on the method's grid, block by block. ``device``: where the blocks train (a torch device, default
    CPU); the activations of all windows stay there too (``3 n T d`` float32).

    Returns ``(quantized model, log)``: the model with ``GroupedAffine`` weights (an ``ActQuantModel`` for
    ``act_int8``) and ``log`` a list of ``{"block", "mse_before", "mse_after"}`` (the block's output MSE on
    the first 16 calibration windows before and after training). ValueError for bad arguments, before training.
    """
    if not isinstance(model, LlamaModel):
        raise TypeError(f"model must be a minq LlamaModel, got {type(model).__name__}")
    check_bits(bits)
    check_choice(method, "method", ("ste", "lsq"))
    steps, lr, lr_quant = check_int(steps, "steps", lo=0), _check_lr(lr), _check_lr(lr_quant, "lr_quant")
    ids = np.asarray(ids)
    if ids.ndim != 2 or ids.dtype.kind not in "iu" or ids.shape[1] < 2 or ids.shape[0] < 1:
        raise ValueError(f"ids must be calibration windows int [n, T] with T >= 2, got shape {ids.shape}")
    batch = check_int(batch, "batch", lo=1, hi=ids.shape[0])
    from tqdm.auto import tqdm

    device = torch.device("cpu" if device is None else device)
    x_fp = torch.from_numpy(model.embed(ids)).to(device)                        # [n, T, d]
    x_q = x_fp.clone()
    cos, sin = (torch.from_numpy(np.asarray(a, np.float32)).to(device)
                for a in rope_tables(np.arange(ids.shape[1]), model.config.head_dim, model.config.rope_theta))
    rng, new, log, act = np.random.default_rng(0), {}, [], []

    def run(f, x):                                                              # [n, T, d] -> [n, T, d]
        with torch.no_grad():
            return torch.cat([f(x[j:j + batch], cos, sin) for j in range(0, len(x), batch)])

    for i in tqdm(range(model.config.n_layers), desc=f"block-wise QAT W{bits}", disable=not progress):
        block = torch_block(model, i).to(device)
        y = run(block, x_fp)                                                    # the target
        qblock = prepare_qat(block, bits=bits, group_size=group_size, method=method, **qat_kwargs)
        for m in qblock.modules():
            if isinstance(m, QATLinear):
                m.weight.requires_grad_(True)
        opt, sched = _optimizer(qblock, lr, lr_quant, steps)
        probe = slice(0, min(len(x_q), 16))                                     # the error, logged on 16 windows
        mse_before = F.mse_loss(run(qblock, x_q[probe]), y[probe]).item()
        order = np.concatenate([rng.permutation(len(x_q)) for _ in range(steps * batch // len(x_q) + 1)])
        for t in range(steps):
            j = torch.from_numpy(order[t * batch:(t + 1) * batch]).to(device)
            value = F.mse_loss(qblock(x_q[j], cos, sin), y[j])
            opt.zero_grad(set_to_none=True)
            value.backward()
            _step(opt, sched, qblock)
        x_q, x_fp = run(qblock, x_q), y
        log.append({"block": i, "mse_before": mse_before, "mse_after": F.mse_loss(x_q[probe], y[probe]).item()})
        for name, W in convert(qblock).items():
            new[f"blk.{i}.{name}"] = W
        act += [f"blk.{i}.{n}" for n, m in qblock.named_modules() if isinstance(m, QATLinear) and m.act_int8]
    return _with_act(model.with_weights(new), act), log
