"""Shared test setup: hypothesis profiles and the torch device fixture.

Profiles (select with HYPOTHESIS_PROFILE or ``pytest --hypothesis-profile``):
- ``dev``: 25 examples, quick local runs;
- ``ci``: 100 examples, derandomized (reproducible), the default when CI=true.
Both use ``deadline=None``: Numba compiles inside the first ``@given`` example.
"""

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("dev", max_examples=25, deadline=None)
settings.register_profile("ci", max_examples=100, deadline=None, derandomize=True, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


# The versions the suite's oracles and tools ran as, in pytest's header (the dev extra pins them).
_REPORTED = ("numpy", "numba", "torch", "ml_dtypes", "gguf", "transformers", "tokenizers", "hypothesis",
             "nbmake")


def pytest_report_header(config):
    from importlib.metadata import PackageNotFoundError, version

    def v(name):
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    return "minq oracles and tools: " + ", ".join(f"{n} {v(n)}" for n in _REPORTED)


def _devices():
    try:
        import torch
    except ImportError:  # pragma: no cover
        return []
    devs = ["cpu"]
    if torch.cuda.is_available():  # pragma: no cover - GPU machines only
        devs.append("cuda")
    return devs


@pytest.fixture(params=_devices())
def device(request):
    """Every torch device present: cpu always (torch is a dev dependency), cuda where it exists."""
    return request.param


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M-Instruct as minq loads it (fetched into the cache once), shared by every test module."""
    import minq

    return minq.load_model("smollm2", progress=False)


@pytest.fixture(scope="session")
def smollm2_cal(smollm2):
    """4 calibration windows of 64 tokens of minq's calibration text: enough for the method tests."""
    from minq.data import calibration_tokens

    return calibration_tokens(smollm2.tokenizer, n_samples=4, seq_len=64)


@pytest.fixture(scope="session")
def tiny_llama():
    """minq's tiny torch Llama (2 blocks, d 128, vocab 96) with weights of a trained model's scale (not the
    init's zeros and ones), as a NumPy ``LlamaModel``: the packed-runtime and head tests' model."""
    import torch

    from minq.models.tiny import TinyConfig, TinyLlama, to_numpy_llama

    torch.manual_seed(0)
    config = TinyConfig(vocab_size=96, dim=128, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=384,
                        context_length=64)
    net = TinyLlama(config)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return to_numpy_llama(net)
