"""``minq.quantize(model, scheme, calibration=None)``: the one entry point of every method
(``minq.quantize`` is this module's ``quantize``).

The scheme name is looked up in the method registry (``minq.registry``); the model is any model of
the model protocol (``minq.models.base.Model``: the Llama and MiniLM testbeds).
The input model is never modified: the result is a new model that shares the unchanged parts.

calibration: for schemes that need it (``Scheme.needs_calibration``), text (str) or token ids
[n_samples, seq_len] (or one flat sequence); None means the calibration part of minq's ``data/``
(``model.calibration_ids()``: for a decoder 128 windows of 512 tokens, seeded; for a sentence encoder
such as MiniLM, 128 of its lines as padded sentences).
"""

from __future__ import annotations

import numpy as np

from minq import registry

__all__ = ["quantize", "calibration_ids"]


def calibration_ids(model, calibration=None, *, n_samples: int = 128, seq_len: int = 512, seed: int = 0):
    """Calibration token ids ``[n, seq_len]`` (int64) from text, ids, or minq's calibration text."""
    if calibration is None:                  # the model's own default (windows of text, or sentences)
        return model.calibration_ids(n_samples=n_samples, seq_len=seq_len, seed=seed)
    if isinstance(calibration, str):
        if not calibration.strip():
            raise ValueError("calibration text is empty")
        ids = np.asarray(model.tokenizer.encode(calibration), dtype=np.int64)
    else:
        ids = np.asarray(calibration)
        if ids.dtype.kind not in "iu":
            raise TypeError(f"calibration must be text or integer token ids, got dtype {ids.dtype}")
        ids = ids.astype(np.int64)
    if ids.ndim == 1:
        if ids.size < 2:
            raise ValueError("calibration has fewer than 2 tokens")
        n = max(1, ids.size // seq_len)
        ids = ids[: n * seq_len].reshape(n, -1) if ids.size >= seq_len else ids[None]   # [T] -> [n, seq]
    if ids.ndim != 2 or ids.size == 0:
        raise ValueError(f"calibration ids must be [n_samples, seq_len], got shape {ids.shape}")
    return ids


def quantize(model, scheme: str, calibration=None, *, progress: bool = True):
    """Quantize ``model`` with the registered ``scheme`` (e.g. ``"rtn-w4g64"``); returns a new model.

    Raises ValueError for an unknown scheme (listing the known ones) and for unusable calibration.
    """
    from minq.models.base import Model, Weights, require

    s = registry.get(scheme)
    require(model, Weights, "minq.quantize")
    if s.needs_calibration:                 # calibration runs the model: the whole protocol
        require(model, Model, f"scheme {scheme!r}")
    cal = calibration_ids(model, calibration) if s.needs_calibration else None
    return s.apply(model, cal, progress=progress)
