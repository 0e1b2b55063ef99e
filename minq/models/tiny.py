"""A small Llama of minq's own, in torch: trained from scratch on minq's calibration text, run by the NumPy runtime.

The architecture is ``minq.models.llama``'s, line for line (its module docstring has the math):

    x = E[ids]                                                      E [vocab, d], tied: also the output head
    h = x + Wo · attention(RoPE(Wq · rms(x)), RoPE(Wk · rms(x)), Wv · rms(x))     causal, GQA
    y = h + Wdown · (silu(Wgate · rms(h)) * (Wup · rms(h)))                          SwiGLU
    logits = rms(x_L) · E^T

RMSNorm ``x / sqrt(mean(x^2) + eps) * gamma``; RoPE rotates the half-split pairs ``(x[i], x[i + hd/2])``
of each head by ``pos * theta^(-2i/hd)`` (cos/sin computed in float64, as ``rope_tables``); query head
``h`` reads KV head ``h // g``, ``g = n_heads / n_kv_heads``. Module names are minq's weight names
(``blk.3.attn_q``, ``token_embd``, ``output_norm``), so ``to_numpy_llama`` is a rename, not a conversion,
and ``minq.qat.prepare_qat`` finds the seven ``nn.Linear`` of every block.

Vocabulary. SmolLM2's tokenizer has 49152 tokens; a tied ``[49152, 128]`` float32 embedding alone is
25 MB. minq's texts use 12,703 of them, so the model keeps only those (``build_vocab``: the ids of the
calibration and evaluation texts, plus id 0 ``<|endoftext|>``, which stands for any other token);
``VocabTokenizer`` is SmolLM2's tokenizer followed by the remapping table. The evaluation text has no
unknown token, so its perplexity is over real tokens. Stored in float16 (``save_checkpoint``) the
default model is 2.4 M parameters, < 5 MB.

    net, tok = load_tiny()                             # the shipped checkpoint and its VocabTokenizer
    net, losses = train_tiny(TinyConfig(vocab_size=V), ids, steps=600, seed=0)      # ids: int64 [N]
    save_checkpoint("tiny.npz", net, vocab)                                       # atomic, float16
    net, vocab = load_checkpoint("tiny.npz")                                      # ValueError if corrupt
    model = to_numpy_llama(net, tokenizer=VocabTokenizer(smollm2_tokenizer(), vocab))   # a LlamaModel

``scripts/train_tiny.py`` trains and writes the shipped checkpoint, ``minq/data/tiny_llama.npz`` (600
steps, 8 min on one thread; evaluation perplexity 297 over the 12,704-token vocabulary: a small model on
204k training tokens, which it overfits, so held-out perplexity is a weak signal for it; chapter 05
measures quantization by the KL divergence to the float model, ``minq.eval.kl_divergence``). Torch is
required.
Notebook: ``notebooks/05_qat.ipynb`` (quantization-aware training of this model).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

import numpy as np

from minq._backend import require_torch
from minq._io import atomic_path
from minq.models.llama import LlamaModel
from minq.models.llama_weights import LINEARS, LlamaConfig
from minq.models.weights import DenseWeight

torch = require_torch()
nn, F = torch.nn, torch.nn.functional

__all__ = ["TinyConfig", "TinyLlama", "train_tiny", "to_numpy_llama", "save_checkpoint", "load_checkpoint",
           "VocabTokenizer", "build_vocab", "smollm2_tokenizer", "load_tiny", "SHIPPED"]

SHIPPED = "tiny_llama.npz"       # the trained checkpoint, package data of minq.data (scripts/train_tiny.py)


@dataclass(frozen=True)
class TinyConfig:
    vocab_size: int = 12704       # minq's texts in SmolLM2 tokens (build_vocab)
    dim: int = 128                # d; head_dim = dim / n_heads
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 2
    hidden_dim: int = 384         # 3 d: a multiple of 128, so every linear splits into groups of 32..128
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    context_length: int = 512

    def __post_init__(self):
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "hidden_dim", "context_length"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"TinyConfig {name} must be a positive int, got {v!r}")
        if self.dim % self.n_heads:
            raise ValueError(f"TinyConfig n_heads={self.n_heads} must divide dim={self.dim}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"TinyConfig n_kv_heads={self.n_kv_heads} must divide n_heads={self.n_heads}")
        if self.head_dim % 2:
            raise ValueError(f"TinyConfig head_dim = dim / n_heads = {self.head_dim} must be even (RoPE pairs)")
        self.llama()                                  # eps, theta: LlamaConfig's own checks

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    def llama(self) -> LlamaConfig:
        return LlamaConfig(**asdict(self))


def _rms(x, gamma, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * gamma


def _rope(x, cos, sin):
    """``x [B, n, T, hd]``: rotate the pairs ``(x[i], x[i + hd/2])`` by ``cos, sin [T, hd/2]``."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class _Block(nn.Module):
    def __init__(self, c: TinyConfig):
        super().__init__()
        kv = c.n_kv_heads * c.head_dim
        self.c = c
        self.attn_norm, self.ffn_norm = nn.Parameter(torch.ones(c.dim)), nn.Parameter(torch.ones(c.dim))
        shapes = {"attn_q": (c.dim, c.dim), "attn_k": (kv, c.dim), "attn_v": (kv, c.dim),
                  "attn_output": (c.dim, c.dim), "ffn_gate": (c.hidden_dim, c.dim),
                  "ffn_up": (c.hidden_dim, c.dim), "ffn_down": (c.dim, c.hidden_dim)}
        for name in LINEARS:
            out, n_in = shapes[name]
            setattr(self, name, nn.Linear(n_in, out, bias=False))

    def forward(self, x, cos, sin):                                            # x [B, T, d]
        c = self.c
        B, T, _ = x.shape
        n = _rms(x, self.attn_norm, c.norm_eps)
        heads = lambda y, k: y.view(B, T, k, c.head_dim).transpose(1, 2)      # noqa: E731 [B, k, T, hd]
        q = _rope(heads(self.attn_q(n), c.n_heads), cos, sin)                  # [B, nh, T, hd]
        k = _rope(heads(self.attn_k(n), c.n_kv_heads), cos, sin)               # [B, nkv, T, hd]
        v = heads(self.attn_v(n), c.n_kv_heads)
        g = c.n_heads // c.n_kv_heads                                          # query head h reads KV head h // g
        k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)    # [B, nh, T, hd]
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)            # softmax(q k^T / sqrt(hd) + mask) v
        h = x + self.attn_output(a.transpose(1, 2).reshape(B, T, c.dim))
        n = _rms(h, self.ffn_norm, c.norm_eps)
        return h + self.ffn_down(F.silu(self.ffn_gate(n)) * self.ffn_up(n))   # [B, T, d]


class TinyLlama(nn.Module):
    """``forward(ids int64 [B, T]) -> logits float32 [B, T, vocab]``; parameters named as minq's weights."""

    def __init__(self, config: TinyConfig):
        super().__init__()
        if not isinstance(config, TinyConfig):
            raise TypeError(f"config must be a TinyConfig, got {type(config).__name__}")
        self.config = c = config
        self.token_embd = nn.Embedding(c.vocab_size, c.dim)                    # E [vocab, d], tied head
        self.blk = nn.ModuleList(_Block(c) for _ in range(c.n_layers))
        self.output_norm = nn.Parameter(torch.ones(c.dim))
        inv_freq = c.rope_theta ** (-np.arange(0, c.head_dim, 2, dtype=np.float64) / c.head_dim)
        ang = np.arange(c.context_length, dtype=np.float64)[:, None] * inv_freq    # [ctx, hd/2]
        self.register_buffer("cos", torch.from_numpy(np.cos(ang).astype(np.float32)), persistent=False)
        self.register_buffer("sin", torch.from_numpy(np.sin(ang).astype(np.float32)), persistent=False)

    def forward(self, ids):
        T = ids.shape[-1]
        if T > self.config.context_length:
            raise ValueError(f"ids of {T} positions exceed the context length {self.config.context_length}")
        x = self.token_embd(ids)                                               # [B, T, d]
        for block in self.blk:
            x = block(x, self.cos[:T], self.sin[:T])
        return _rms(x, self.output_norm, self.config.norm_eps) @ self.token_embd.weight.T   # [B, T, vocab]

    def arrays(self) -> dict:
        """``{minq name: float32 array}``: ``token_embd``, ``output_norm``, ``blk.{i}.{norm or linear}``."""
        return {k.removesuffix(".weight"): v.detach().cpu().float().numpy().copy()
                for k, v in self.state_dict().items()}

    @classmethod
    def from_arrays(cls, config: TinyConfig, arrays: dict) -> TinyLlama:
        """The model with the parameters ``arrays`` (the names and shapes of ``arrays()``); ValueError naming
        a missing, unknown or misshapen one."""
        net = cls(config)
        want = {k.removesuffix(".weight"): (k, tuple(v.shape)) for k, v in net.state_dict().items()}
        bad = sorted(set(want) ^ set(arrays))
        if bad:
            raise ValueError(f"arrays must hold exactly the parameters of {config}; missing or unknown: {bad[:5]}")
        state = {}
        for name, (key, shape) in want.items():
            a = np.asarray(arrays[name], dtype=np.float32)
            if a.shape != shape or not np.isfinite(a).all():
                raise ValueError(f"parameter {name!r} must be finite with shape {shape}, got shape {a.shape}")
            state[key] = torch.from_numpy(a.copy())
        net.load_state_dict(state)
        return net


def to_numpy_llama(net: TinyLlama, *, tokenizer=None) -> LlamaModel:
    """``net``'s float32 weights as minq's NumPy ``LlamaModel`` (``DenseWeight`` linears, tied head), which
    every chapter's method quantizes (``minq.quantize(model, "rtn-w4g64")``, GPTQ, AWQ, ...)."""
    A, c = net.arrays(), net.config
    weights = {f"blk.{i}.{n}": DenseWeight(A[f"blk.{i}.{n}"]) for i in range(c.n_layers) for n in LINEARS}
    norms = {k: A[k] for k in A if k.endswith("_norm")}
    return LlamaModel(c.llama(), weights, norms, A["token_embd"], tokenizer=tokenizer)


def train_tiny(config: TinyConfig, ids, *, steps: int = 600, seed: int = 0, seq_len: int = 256, batch: int = 8,
               lr: float = 3e-3, warmup: int = 30, weight_decay: float = 0.1, log_every: int = 0, prepare=None):
    """Train a ``TinyLlama(config)`` from scratch on the token stream ``ids`` (int64 ``[N]``, ids < vocab).

    Next-token cross-entropy on ``batch`` random windows of ``seq_len + 1`` tokens per step (starts drawn
    by ``np.random.default_rng(seed)``), AdamW (betas 0.9, 0.95; no decay on norms and the embedding),
    linear warmup then cosine decay to ``lr / 10``, gradients clipped to norm 1. Init: ``torch.manual_seed
    (seed)``, normal std 0.02, the two output projections of each block ``0.02 / sqrt(2 n_layers)``.
    ``prepare(net)``, when given, changes the initialised model before training (in place, or returning
    the new model; the optimizer sees its parameters): ``minq.bitnet.prepare_bitnet`` makes it BitNet
    b1.58, from the same initial weights.
    The same arguments give the same model on the same machine and thread count (CPU kernels are
    deterministic; a different thread count may change float sums). Returns ``(net, losses [steps])``.
    """
    ids = np.asarray(ids)
    if ids.ndim != 1 or ids.dtype.kind not in "iu" or ids.size < seq_len + 2:
        raise ValueError(f"ids must be a 1-D integer token stream of > seq_len + 1 = {seq_len + 1} tokens, "
                         f"got shape {ids.shape} dtype {ids.dtype}")
    if ids.min() < 0 or ids.max() >= config.vocab_size:
        raise ValueError(f"ids must lie in [0, vocab_size={config.vocab_size}), got [{ids.min()}, {ids.max()}]")
    if not 2 <= seq_len <= config.context_length:
        raise ValueError(f"seq_len must be in [2, context_length={config.context_length}], got {seq_len}")
    if prepare is not None and not callable(prepare):
        raise TypeError(f"prepare must be a function net -> net, got {type(prepare).__name__}")
    torch.manual_seed(seed)
    net = TinyLlama(config)
    for name, p in net.named_parameters():
        if p.ndim == 2:
            std = 0.02 / math.sqrt(2 * config.n_layers) if name.endswith(("attn_output.weight", "ffn_down.weight")) else 0.02
            nn.init.normal_(p, std=std)
    if prepare is not None:
        net = prepare(net) or net                                              # None: changed in place
    decay = [p for n, p in net.named_parameters() if p.ndim == 2 and n != "token_embd.weight"]
    rest = [p for n, p in net.named_parameters() if not (p.ndim == 2 and n != "token_embd.weight")]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: (t + 1) / warmup if t < warmup else
                                              0.1 + 0.45 * (1 + math.cos(math.pi * (t - warmup) / max(1, steps - warmup))))
    rng, stream = np.random.default_rng(seed), torch.from_numpy(ids.astype(np.int64))
    offsets = torch.arange(seq_len + 1)
    losses = np.empty(steps)
    net.train()
    for t in range(steps):
        starts = torch.from_numpy(rng.integers(0, ids.size - seq_len, size=batch))
        w = stream[starts[:, None] + offsets]                                  # [batch, seq_len + 1]
        loss = F.cross_entropy(net(w[:, :-1]).flatten(0, 1), w[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
        losses[t] = loss.item()
        if log_every and (t % log_every == 0 or t == steps - 1):
            print(f"step {t:5d}  loss {losses[t]:.4f}  lr {sched.get_last_lr()[0]:.2e}", flush=True)
    net.eval()
    return net, losses


# --- the checkpoint ---------------------------------------------------------------------------------------


def save_checkpoint(path, net: TinyLlama, vocab=None, *, dtype: str = "float16") -> None:
    """Write ``net`` (and ``vocab``, the SmolLM2 ids of its tokens) to the ``.npz`` file ``path``, atomically:
    ``config`` (JSON), ``vocab`` and each parameter as ``dtype`` (float16 or float32)."""
    if dtype not in ("float16", "float32"):
        raise ValueError(f"dtype must be 'float16' or 'float32', got {dtype!r}")
    A = {k: v.astype(dtype) for k, v in net.arrays().items()}
    if not all(np.isfinite(v).all() for v in A.values()):
        raise ValueError(f"a parameter overflows {dtype}: save with dtype='float32'")
    vocab = np.arange(net.config.vocab_size) if vocab is None else np.asarray(vocab, np.int64)
    if vocab.shape != (net.config.vocab_size,):
        raise ValueError(f"vocab must hold vocab_size={net.config.vocab_size} ids, got shape {vocab.shape}")
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, config=np.array(json.dumps(asdict(net.config))), vocab=vocab, **A)


def load_checkpoint(path):
    """``(net, vocab)`` from a ``save_checkpoint`` file (float32 parameters). FileNotFoundError for a
    missing file, ValueError naming the file when it is truncated, corrupt or not a tiny checkpoint."""
    try:
        with np.load(path, allow_pickle=False) as z:
            A = {k: z[k] for k in z.files}                                      # reads (and CRC-checks) each member
        config = TinyConfig(**json.loads(str(A.pop("config"))))
        vocab = A.pop("vocab")
        return TinyLlama.from_arrays(config, A), vocab
    except FileNotFoundError:
        raise
    except Exception as e:
        raise ValueError(f"{path} is not a valid tiny Llama checkpoint (truncated or corrupt?): "
                         f"{type(e).__name__}: {e}") from e


def load_tiny():
    """``(net, tokenizer)``: the shipped trained model (``minq/data/tiny_llama.npz``, float32 in eval mode)
    and its ``VocabTokenizer`` over SmolLM2's tokenizer (which needs the SmolLM2 asset: ``minq fetch``)."""
    from importlib import resources

    with resources.as_file(resources.files("minq.data") / SHIPPED) as path:
        net, vocab = load_checkpoint(path)
    return net.eval(), VocabTokenizer(smollm2_tokenizer(), vocab)


# --- the vocabulary -----------------------------------------------------------------------------------------


def smollm2_tokenizer():
    """SmolLM2's tokenizer (``minq.models.tokenizer.Tokenizer``), from the metadata of the GGUF asset alone."""
    import gguf

    from minq.models import assets
    from minq.models.tokenizer import Tokenizer

    reader = gguf.GGUFReader(assets.fetch("smollm2"))
    return Tokenizer.from_gguf_metadata({k: f.contents() for k, f in reader.fields.items()
                                         if k.startswith("tokenizer.")})


def build_vocab(tokenizer) -> np.ndarray:
    """The sorted SmolLM2 ids of minq's calibration and evaluation texts, and id 0: int64 ``[V]``."""
    from minq.data import calibration_text, eval_text

    ids = [np.asarray(tokenizer.encode(t)) for t in (calibration_text(), eval_text())]
    return np.union1d(np.union1d(*ids), [0]).astype(np.int64)


class VocabTokenizer:
    """``base`` followed by the remapping ``base id -> position in vocab``; a token outside ``vocab`` becomes
    ``unk_id`` 0 (``vocab[0]``: SmolLM2's ``<|endoftext|>``). ``decode`` maps back and decodes with ``base``."""

    unk_id = 0

    def __init__(self, base, vocab):
        vocab = np.asarray(vocab, np.int64)
        if vocab.ndim != 1 or vocab.size == 0 or (np.diff(vocab) <= 0).any() or vocab[0] < 0:
            raise ValueError("vocab must be a non-empty, strictly increasing array of base token ids")
        self.base, self.vocab = base, vocab
        self.index = np.full(max(int(vocab[-1]) + 1, base.vocab_size), self.unk_id, np.int64)
        self.index[vocab] = np.arange(vocab.size)                              # base id -> tiny id
        self.tokens = [base.tokens[i] for i in vocab]

    @property
    def vocab_size(self) -> int:
        return int(self.vocab.size)

    def encode(self, text: str) -> list[int]:
        return self.index[np.asarray(self.base.encode(text), np.int64)].tolist()

    def decode(self, ids) -> str:
        ids = np.asarray(ids)
        if ids.dtype.kind not in "iu" or ((ids < 0) | (ids >= self.vocab_size)).any():
            raise ValueError(f"ids must be integer token ids in [0, {self.vocab_size})")
        return self.base.decode(self.vocab[ids.reshape(-1)].tolist())
