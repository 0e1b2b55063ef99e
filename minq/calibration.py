"""Calibration: what GPTQ, AWQ and the PTQ observers learn from, and how they collect it.

Chapters 04, 06 and 07 all calibrate the same way: run the model on a few windows of text and, at
each linear ``y = x W^T``, look at its inputs ``X [tokens, in]``. This module holds what they share:

- ``check_calibration``: the one check of calibration token ids ``[n_samples, seq_len]``.
- ``forward_block``: block ``i`` of a model over calibration windows, a batch of windows per call,
  with hooks; ``stop_at`` ends each forward right after that linear's hook (the GPTQ reference's
  ``Catcher``: what comes after is not needed). ``linear_input`` captures one linear's input that way.
- ``calibrate``: every linear's input over the whole model, into observers (chapter 04).
- ``Hessian``: the running ``X^T X`` of a linear's inputs, in float64, counting tokens.

The matrix that GPTQ and AWQ share. For a weight ``W [out, in]``, any ``W_hat`` and ``dW = W - W_hat``,
the squared output error on the calibration tokens is a quadratic form in ``dW``:

    || (W - W_hat) X^T ||_F^2 = sum_t || dW x_t ||^2 = tr(dW H dW^T)      H = X^T X = sum_t x_t x_t^T   [in, in]

(tests/test_calibration.py checks it numerically for the ``H`` that ``Hessian`` builds). GPTQ
(Frantar et al., 2023; chapter 06) minimises it column by column — the Hessian of the error is ``2 H``;
the factor, like the number of tokens, changes nothing, since GPTQ's damping is relative to
``mean(diag H)``. AWQ (Lin et al., 2024; chapter 07) scores its candidates by the mean over tokens and
outputs, ``tr(dW H dW^T) / (tokens * out)``.

Notebooks: ``notebooks/04_ptq.ipynb``, ``06_gptq.ipynb``, ``07_awq.ipynb``.
"""

from __future__ import annotations

import numpy as np

from minq._checks import check_float_array, check_int, is_int

__all__ = ["check_calibration", "check_blocks", "forward_block", "linear_input", "calibrate", "Hessian",
           "sentence_calibration"]


def check_calibration(calibration) -> np.ndarray:
    """Calibration token ids ``[n_samples, seq_len]`` (any integer dtype) -> int64 ``[n_samples, seq_len]``.

    The methods take windows, already cut: text or one flat sequence ``[T]`` is turned into windows by
    ``minq.api.calibration_ids`` (which ``minq.quantize`` calls), not guessed here. Raises ValueError
    (None, a flat sequence, empty, not 2-D) or TypeError (not integer ids), each naming ``calibration``.
    """
    if calibration is None:
        raise ValueError("calibration is required: token ids [n_samples, seq_len] (no calibration data given; "
                         "minq.quantize(model, scheme) supplies minq.data.calibration_tokens by default)")
    try:
        ids = np.asarray(calibration)
    except ValueError as e:                                               # ragged nested lists
        raise ValueError(f"calibration must be token ids [n_samples, seq_len] of one length: {e}") from None
    if ids.dtype.kind not in "iu":
        raise TypeError(f"calibration must be integer token ids [n_samples, seq_len], got dtype {ids.dtype} "
                        f"(text: minq.api.calibration_ids(model, text))")
    if ids.ndim == 1:
        raise ValueError(f"calibration must be windows [n_samples, seq_len], got one flat sequence of shape "
                         f"{ids.shape}: cut it with minq.api.calibration_ids(model, ids, seq_len=...)")
    if ids.ndim != 2 or ids.size == 0:
        raise ValueError(f"calibration must be non-empty token ids [n_samples, seq_len], got shape {ids.shape}")
    return ids.astype(np.int64)


def check_blocks(blocks, n_layers: int) -> list:
    """``blocks`` (None: all) as a sorted list of distinct block indices in ``[0, n_layers)``."""
    blocks = list(range(n_layers)) if blocks is None else list(blocks)
    if not blocks or not all(is_int(b) and 0 <= b < n_layers for b in blocks):
        raise ValueError(f"blocks must be a non-empty list of block indices in [0, {n_layers}), got {blocks!r}")
    return sorted({int(b) for b in blocks})


class _Stop(Exception):
    """Raised by the ``stop_at`` hook: the rest of the block's forward is not needed."""


def forward_block(model, i: int, x, *, hooks=None, stop_at: str | None = None, batch_size: int = 8):
    """Block ``i`` of ``model`` on the windows ``x [n, T, d]``, ``batch_size`` windows per call.

    hooks: ``{linear name: fn(name, X)}`` as ``model.run_block`` takes them (``X [tokens, in]``).
    stop_at: a linear of block ``i``; each forward ends right after its hook (its own hook, if any,
    runs first), so nothing after that linear is computed. Returns ``y [n, T, d]``, or None with
    ``stop_at``. Raises ValueError when a forward finishes without reaching ``stop_at``.
    """
    batch_size = check_int(batch_size, "batch_size", lo=1)
    hooks = dict(hooks or {})
    if stop_at is not None:
        inner = hooks.get(stop_at)

        def stop(name, X):
            if inner is not None:
                inner(name, X)
            raise _Stop

        hooks[stop_at] = stop
    ys = []
    for a in range(0, len(x), batch_size):
        try:
            ys.append(model.run_block(i, x[a:a + batch_size], hooks=hooks or None))
        except _Stop:
            continue
        if stop_at is not None:
            raise ValueError(f"stop_at={stop_at!r} is not a linear that block {i}'s forward reaches")
    return None if stop_at is not None else np.concatenate(ys)


def linear_input(model, i: int, x, name: str):
    """The input ``X [tokens, in]`` of the linear ``name`` of block ``i``, for the block input ``x [n, T, d]``
    (or ``[T, d]``); the forward stops there. A copy (float32), the runtime's buffers stay its own."""
    x = x if np.ndim(x) == 3 else np.asarray(x)[None]                     # [n, T, d]
    box = {}

    def keep(_, X):
        box["X"] = np.array(X, dtype=np.float32)

    forward_block(model, i, x, hooks={name: keep}, stop_at=name, batch_size=max(len(x), 1))   # one call
    return box["X"]


def calibrate(model, ids, make, *, names=None, batch_size: int = 4, progress: bool = False) -> dict:
    """Observe the input of every linear over the calibration windows ``ids [n, seq]`` (chapter 04).

    make(name) -> a fresh observer (``minq.observers``, anything with ``update(X)``); linears that read
    the same input (the runtime hands them the same array: q/k/v, gate/up) share one observer. The
    forward is the model protocol's ``run_linears`` (a decoder: the blocks without the output head; an
    encoder: with its padding mask, the hooks see the real tokens only). Returns ``{name: observer}`` for
    every name of ``names`` (default all linears).
    """
    from tqdm.auto import tqdm

    ids = check_calibration(ids)
    batch_size = check_int(batch_size, "batch_size", lo=1)
    names = list(model.linear_names() if names is None else names)
    obs, leader, last = {}, {}, [None, None]

    def hook(name, X):
        if name not in leader:                  # first call: does it read the previous linear's X?
            leader[name] = leader[last[1]] if X is last[0] else name
            if leader[name] == name:
                obs[name] = make(name)
        last[:] = [X, name]
        if leader[name] == name:
            obs[name].update(X)

    hooks = {n: hook for n in names}
    for a in tqdm(range(0, len(ids), batch_size), desc="calibrate", unit="batch", disable=not progress,
                  leave=False):
        model.run_linears(ids[a:a + batch_size], hooks)                     # a batch of windows [B, T]
    return {n: obs[leader[n]] for n in names}


class Hessian:
    """The running ``H = X^T X = sum_t x_t x_t^T`` of one linear's inputs (float32 ``.H [in, in]``).

    ``add_batch(X)``: ``X [tokens, in]`` or ``[b, seq, in]`` (``b * seq`` tokens). Each batch's ``X^T X`` is
    one float32 BLAS product (a SYRK: NumPy sees ``X.T @ X``), added to a float64 total ``XtX``; ``n``
    counts the tokens. ``.H`` is that total in float32 — a sum, not a mean: then
    ``||dW X^T||_F^2 = tr(dW H dW^T)`` holds with no factor (see the module docstring). The GPTQ
    reference keeps the float32 running mean ``(2 / sequences) sum X^T X`` instead: the same matrix up
    to a positive factor (which GPTQ's result does not depend on) and float rounding (minq's is the
    more accurate). Raises ValueError for NaN/Inf inputs (or squares that overflow float32).
    """

    def __init__(self, n_in: int):
        n_in = check_int(n_in, "n_in", lo=1)
        self.XtX = np.zeros((n_in, n_in), np.float64)                      # sum of X^T X   [in, in]
        self.n = 0                                                         # tokens seen

    def add_batch(self, X) -> None:
        check_float_array(X, "X", finite=False)                            # finiteness: checked on X^T X
        X = np.asarray(X, dtype=np.float32)
        n_in = self.XtX.shape[0]
        if X.ndim not in (2, 3) or X.shape[-1] != n_in:
            raise ValueError(f"X must be [tokens, {n_in}] or [b, seq, {n_in}], got {X.shape}")
        X = X.reshape(-1, n_in)                                            # [tokens, in]
        XtX = X.T @ X                                                      # [in, in] float32
        # diag = sum of squares: NaN/Inf anywhere in X (or a square overflowing float32) shows up here
        if not np.isfinite(np.diagonal(XtX)).all():
            raise ValueError("X contains NaN or Inf (or values whose squares overflow float32)")
        self.XtX += XtX
        self.n += X.shape[0]

    @property
    def H(self):
        """``X^T X`` summed over every token seen, float32 [in, in] (zeros before the first batch)."""
        return self.XtX.astype(np.float32)


def sentence_calibration(encoder, n_samples: int = 128, seed: int = 0):
    """Calibration ids for an encoder: ``n_samples`` lines of minq's calibration text (lines of at least
    40 characters, drawn without replacement by ``default_rng(seed)``), tokenized as sentences
    (``[CLS] ... [SEP]``) and padded with ``[PAD]``: int64 ``[n_samples, T]``. ``minq.quantize``'s
    default (windows of 512 tokens of one long text) does not suit a sentence encoder."""
    from minq.data import calibration_text

    lines = [t.strip() for t in calibration_text().splitlines() if len(t.strip()) >= 40]
    n_samples = check_int(n_samples, "n_samples", lo=1, hi=len(lines))
    pick = np.random.default_rng(seed).choice(len(lines), size=n_samples, replace=False)
    ids, _ = encoder.tokenizer.batch([lines[i] for i in sorted(pick)])
    return ids
