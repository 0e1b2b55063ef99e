"""Tiny helpers shared by the NumPy and torch paths: which library a tensor belongs to, and the
lazy torch import (torch is an optional extra: ``pip install "minq[torch]"``)."""

from __future__ import annotations

import sys


def is_torch(x) -> bool:
    """True when ``x`` is a torch tensor (without importing torch when it was never imported)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def require_torch():
    """Import torch or raise an ImportError that says how to install it."""
    try:
        import torch
    except ImportError as e:  # pragma: no cover - torch is in the dev install
        raise ImportError('this needs torch: pip install "minq[torch]"') from e
    return torch
