"""Text generation from any minq decoder: greedy, temperature and top-p (nucleus) sampling, with a KV cache.

    ids = model.tokenizer.encode("The printing press")
    new = generate(model, ids, max_new_tokens=64)                           # greedy: argmax each step
    new = generate(model, ids, 64, temperature=0.8, top_p=0.95, seed=0)     # sampled, reproducible
    text = model.tokenizer.decode(new)

One step (``sample_next``), from the last position's logits ``z [vocab]``:

    temperature == 0    t = argmax z                          (ties: the lowest id)
    temperature > 0     p = softmax(z / temperature)          (float64)
                        nucleus: the fewest most-probable tokens whose mass reaches top_p (at least one),
                        p renormalised over them; t drawn from p with ``np.random.default_rng(seed)``

The prompt runs once into the model's cache (``model.new_cache()``: a quantized KV cache when the scheme
stacks one), then each new token is one forward of one position (``last_only=True``). ``on_token(t)`` is
called as each token is chosen (streaming), and generation stops after a token of ``stop_ids``. A packed
model (``model.packed()``) generates greedily the tokens of its dequantized twin unless float32 rounding
of a near tie flips an argmax (tests/test_generate.py: SmolLM2 rtn-w4g64, 64 tokens, equal).
"""

from __future__ import annotations

import numpy as np

from minq._checks import check_int

__all__ = ["generate", "sample_next"]


def _check_sampling(temperature, top_p):
    t, p = float(temperature), float(top_p)
    if not (np.isfinite(t) and t >= 0):
        raise ValueError(f"temperature must be a finite number >= 0 (0: greedy), got {temperature!r}")
    if not (0 < p <= 1):
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
    return t, p


def sample_next(logits, *, temperature: float = 0.0, top_p: float = 1.0, rng=None) -> int:
    """The next token id from ``logits [vocab]`` (see the module docstring). ``rng``: a
    ``np.random.Generator`` (needed when ``temperature > 0``). ValueError for NaN logits, an empty vector,
    a negative temperature or ``top_p`` outside (0, 1]."""
    t, p = _check_sampling(temperature, top_p)
    z = np.asarray(logits, np.float64).reshape(-1)
    if z.size == 0 or np.isnan(z).any():
        raise ValueError("logits must be a non-empty vector without NaN")
    if t == 0:
        return int(np.argmax(z))
    if rng is None:
        raise ValueError("sampling (temperature > 0) needs rng=np.random.default_rng(seed)")
    w = np.exp((z - z.max()) / t)
    probs = w / w.sum()                                                      # softmax(z / t), float64
    order = np.argsort(-probs, kind="stable")                                # most probable first
    mass = np.cumsum(probs[order])
    keep = order[: int(np.searchsorted(mass, p * mass[-1])) + 1]             # the nucleus, >= 1 token
    q = probs[keep] / probs[keep].sum()
    return int(keep[rng.choice(len(keep), p=q)])


def generate(model, prompt, max_new_tokens: int = 64, *, temperature: float = 0.0, top_p: float = 1.0,
             seed: int = 0, stop_ids=(), on_token=None) -> list[int]:
    """Up to ``max_new_tokens`` new token ids after ``prompt`` (token ids ``[T]``), chosen by
    ``sample_next``; see the module docstring. Raises ValueError (before any forward) for an empty or
    non-integer prompt, ids outside the vocabulary, ``max_new_tokens`` < 0, a prompt plus new tokens
    longer than the context, or bad sampling settings."""
    ids = np.asarray(prompt)
    if ids.ndim != 1 or ids.size == 0 or ids.dtype.kind not in "iu":
        raise ValueError(f"prompt must be a non-empty 1-D array of token ids, got shape {ids.shape} dtype {ids.dtype}")
    n = check_int(max_new_tokens, "max_new_tokens", lo=0)
    _check_sampling(temperature, top_p)
    c = model.config
    if ids.min() < 0 or ids.max() >= c.vocab_size:
        raise ValueError(f"prompt ids must lie in [0, {c.vocab_size})")
    if ids.size + n > c.context_length:
        raise ValueError(f"prompt ({ids.size}) + max_new_tokens ({n}) exceeds the context length {c.context_length}")
    stop = {int(s) for s in stop_ids}
    rng = np.random.default_rng(seed)
    cache = model.new_cache()
    out: list[int] = []
    if n == 0:
        return out
    logits = model.logits(ids.astype(np.int64), cache=cache, last_only=True)   # [1, vocab]
    while True:
        tok = sample_next(logits[-1], temperature=temperature, top_p=top_p, rng=rng)
        out.append(tok)
        if on_token is not None:
            on_token(tok)
        if tok in stop or len(out) == n:
            return out
        logits = model.logits(np.array([tok], np.int64), cache=cache, last_only=True)
