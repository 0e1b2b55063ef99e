"""minq.generate: greedy and nucleus sampling (properties of ``sample_next``), generation with a cache equal
to a full forward, reproducible sampling, bad inputs; a packed 4-bit SmolLM2 generates its dequantized
twin's greedy tokens."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import minq
from minq.generate import generate, sample_next
from minq.models.tiny import TinyConfig, TinyLlama, to_numpy_llama

logit_vectors = hnp.arrays(np.float32, st.integers(1, 50), elements=st.floats(-30, 30, width=32))


@given(logit_vectors)
def test_greedy_is_argmax(z):
    assert sample_next(z) == int(np.argmax(z))


@given(logit_vectors, st.floats(0.05, 3.0), st.floats(0.01, 1.0), st.integers(0, 2**32 - 1))
def test_sample_stays_in_the_nucleus(z, t, p, seed):
    """The drawn token is among the fewest most-probable tokens whose mass reaches top_p."""
    tok = sample_next(z, temperature=t, top_p=p, rng=np.random.default_rng(seed))
    w = np.exp((z.astype(np.float64) - z.max()) / t)
    probs = w / w.sum()
    above = probs[probs > probs[tok]].sum()                   # mass of the strictly more probable tokens
    assert 0 <= tok < z.size and above < p + 1e-12


def test_sampling_follows_the_distribution():
    z = np.log(np.array([0.5, 0.3, 0.15, 0.05], np.float32))
    rng = np.random.default_rng(0)
    draws = np.bincount([sample_next(z, temperature=1.0, rng=rng) for _ in range(4000)], minlength=4) / 4000
    assert np.allclose(draws, [0.5, 0.3, 0.15, 0.05], atol=0.03)
    rng = np.random.default_rng(0)
    nucleus = {sample_next(z, temperature=1.0, top_p=0.75, rng=rng) for _ in range(500)}
    assert nucleus == {0, 1}                                   # 0.5 + 0.3 reach 0.75: tokens 2, 3 never


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    config = TinyConfig(vocab_size=64, dim=64, n_layers=2, n_heads=2, n_kv_heads=1, hidden_dim=128, context_length=96)
    net = TinyLlama(config)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return to_numpy_llama(net)


def test_generate_with_cache_equals_full_forward(tiny):
    prompt = np.array([3, 14, 15, 9, 2, 6])
    streamed = []
    new = generate(tiny, prompt, 20, on_token=streamed.append)
    assert new == streamed and len(new) == 20
    seq = list(prompt)
    for _ in range(20):                                       # greedy without a cache: the whole sequence each step
        seq.append(int(np.argmax(tiny.logits(np.array(seq))[-1])))
    assert new == seq[len(prompt):]
    assert generate(tiny, prompt, 20, stop_ids=[new[4]])[-1] == new[4]
    assert generate(tiny, prompt, 0) == []


def test_sampling_is_reproducible(tiny):
    prompt = np.array([1, 2, 3])
    a = generate(tiny, prompt, 30, temperature=1.0, top_p=0.9, seed=7)
    assert a == generate(tiny, prompt, 30, temperature=1.0, top_p=0.9, seed=7)
    assert a != generate(tiny, prompt, 30, temperature=1.0, top_p=0.9, seed=8)


@pytest.mark.parametrize("kw, match", [
    (dict(prompt=np.array([], np.int64)), "prompt"), (dict(prompt=np.array([1.0, 2.0])), "prompt"),
    (dict(prompt=np.array([70])), "prompt ids"), (dict(max_new_tokens=-1), "max_new_tokens"),
    (dict(max_new_tokens=200), "context length"), (dict(temperature=-1.0), "temperature"),
    (dict(temperature=float("nan")), "temperature"), (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p")])
def test_bad_inputs(tiny, kw, match):
    args = dict(prompt=np.array([1, 2]), max_new_tokens=4) | kw
    with pytest.raises(ValueError, match=match):
        generate(tiny, args.pop("prompt"), **args)


def test_sample_next_bad_inputs():
    with pytest.raises(ValueError, match="NaN"):
        sample_next(np.array([0.0, np.nan]))
    with pytest.raises(ValueError, match="rng"):
        sample_next(np.zeros(3), temperature=1.0)


def test_packed_smollm2_generates_its_dequantized_twins_tokens(smollm2):
    q = minq.quantize(smollm2, "rtn-w4g64", progress=False)
    prompt = np.asarray(smollm2.tokenizer.encode("The history of the printing press begins"), np.int64)
    assert generate(q.packed(), prompt, 64) == generate(q, prompt, 64)


# --- the chat template and `minq generate` ----------------------------------------------------------------


def test_chat_template_renders_as_transformers(smollm2):
    from transformers.utils.chat_template_utils import render_jinja_template

    tok = smollm2.tokenizer
    chats = [[{"role": "user", "content": "Hello"}],
             [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
              {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "2+2?"}]]
    for msgs in chats:
        for gen in (True, False):
            want = render_jinja_template(conversations=[msgs], chat_template=tok.chat_template,
                                         add_generation_prompt=gen, bos_token="<|im_start|>", eos_token="<|im_end|>")[0][0]
            assert tok.apply_chat_template(msgs, add_generation_prompt=gen) == want
    assert tok.apply_chat_template(chats[0]).endswith("<|im_start|>assistant\n")
    with pytest.raises(ValueError, match="role"):
        tok.apply_chat_template([{"role": "user"}])
    with pytest.raises(TypeError, match="messages"):
        tok.apply_chat_template("Hello")


def test_no_chat_template_is_a_clear_error(smollm2):
    import copy

    tok = copy.copy(smollm2.tokenizer)
    tok.chat_template = None
    with pytest.raises(ValueError, match="chat_template"):
        tok.apply_chat_template([{"role": "user", "content": "Hi"}])


def test_cli_generate_streams_the_greedy_reply(smollm2, capsys):
    from minq.cli import main

    assert main(["generate", "What is the capital of France?", "--max-tokens", "12"]) == 0
    out, err = capsys.readouterr()
    tok = smollm2.tokenizer
    prompt = tok.encode(tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}]))
    new = generate(smollm2, np.array(prompt), 12, stop_ids=(tok.eos_id,))
    want = tok.decode([t for t in new if t != tok.eos_id])
    assert out == want + "\n" and "Paris" in out
    assert "decode" in err and "tokens/s" in err and f"prompt {len(prompt)} tokens" in err


def test_cli_generate_raw_sampled_and_packed(capsys):
    from minq.cli import main

    args = ["generate", "Once upon a time", "--raw", "--max-tokens", "6", "--temperature", "0.8", "--seed", "3",
            "--scheme", "rtn-w4g64"]
    assert main(args) == 0
    first = capsys.readouterr()
    assert "packed" in first.err and first.out.strip()
    assert main(args) == 0
    assert capsys.readouterr().out == first.out                       # the seed makes it reproducible


def test_cli_generate_runs_a_gguf_files_own_blocks(smollm2, capsys):
    """A .gguf path without --scheme: the file's Q4_1/Q8_0 blocks, packed, reply as the float32 load's."""
    from minq.cli import main
    from minq.models import assets

    path = str(assets.fetch("smollm2"))
    assert main(["generate", "--model", path, "What is the capital of France?", "--max-tokens", "12"]) == 0
    out, err = capsys.readouterr()
    tok = smollm2.tokenizer
    prompt = tok.encode(tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}]))
    new = generate(smollm2, np.array(prompt), 12, stop_ids=(tok.eos_id,))
    assert out == tok.decode([t for t in new if t != tok.eos_id]) + "\n" and "packed" in err
    assert main(["generate", "Hi", "--scheme", "rtn-w4g64", "--activations", "int8", "--max-tokens", "3"]) == 0
    assert "int8 inputs" in capsys.readouterr().err


@pytest.mark.parametrize("args, match", [(["--max-tokens", "0"], "max-tokens"), (["--temperature", "-1"], "temperature"),
                                         (["--top-p", "0"], "top_p"), (["--scheme", "nope"], "unknown scheme")])
def test_cli_generate_bad_arguments(args, match, capsys):
    from minq.cli import main

    assert main(["generate", "Hi", *args]) == 2
    assert match in capsys.readouterr().err
