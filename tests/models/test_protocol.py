"""The model protocol (minq.models.base) over both real models: generic code calls these methods
instead of asking which class it has, so each must behave the same way on the decoder and the encoder."""

import numpy as np
import pytest

from minq.models import load_model
from minq.models.base import Decoder, FoldTarget, Model, require


@pytest.fixture(scope="module")
def minilm():
    return load_model("minilm")


@pytest.fixture(params=["smollm2", "minilm"])
def model(request, smollm2, minilm):
    return smollm2 if request.param == "smollm2" else minilm


def test_both_models_are_models_and_only_the_decoder_a_decoder(smollm2, minilm):
    assert isinstance(smollm2, Model) and isinstance(minilm, Model)
    assert isinstance(smollm2, Decoder) and not isinstance(minilm, Decoder)
    assert require(smollm2, Decoder, "GPTQ") is smollm2
    with pytest.raises(TypeError, match=r"GPTQ needs a decoder .* got a BertEncoder without .*run_block"):
        require(minilm, Decoder, "GPTQ")
    with pytest.raises(TypeError, match=r"minq.quantize needs a minq model \(minq.load_model\); got a dict without"):
        require({}, Model, "minq.quantize")


def test_calibration_ids_are_integer_windows_in_the_models_form(model):
    ids = model.calibration_ids(n_samples=3, seq_len=32, seed=0)
    assert ids.dtype == np.int64 and ids.ndim == 2 and len(ids) == 3
    assert np.array_equal(ids, model.calibration_ids(n_samples=3, seq_len=32, seed=0))      # seeded


def test_run_linears_calls_each_hooked_linear_once_with_its_input(model):
    ids = model.calibration_ids(n_samples=2, seq_len=16, seed=1)
    names = model.linear_names()
    first, last = names[0], names[len(names) // 2]
    seen = {}

    def hook(name, X):
        assert X.ndim == 2 and X.dtype == np.float32 and not X.flags.writeable
        seen[name] = seen.get(name, 0) + 1

    model.run_linears(ids, {first: hook, last: hook})
    assert seen == {first: 1, last: 1}


def test_input_groups_cover_each_block_once(model):
    n_blocks = model.config.n_layers
    groups = [g for i in range(n_blocks) for g in model.input_groups(i)]
    assert [n for g in groups for n in g] == model.linear_names()
    assert any(len(g) == 3 for g in model.input_groups(0))                  # q, k, v read one input
    with pytest.raises(ValueError, match="index i must be an int"):
        model.input_groups(n_blocks)


def test_fold_targets(smollm2, minilm):
    t = smollm2.fold_targets()
    assert set(t) == {"qkv", "gate_up", "down", "o"} and all(isinstance(v, FoldTarget) for v in t.values())
    assert t["qkv"].kind == "norm" and t["down"].producer == "ffn_up" and t["o"].channel_map is not None
    names = set(smollm2.block_linear_names(0))
    assert {f"blk.0.{n}" for v in t.values() for n in v.consumers} <= names
    assert minilm.fold_targets() == {}                                      # post-LN: nowhere to fold
