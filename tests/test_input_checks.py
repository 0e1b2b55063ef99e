"""Regressions from an adversarial pass over the public API: each input once gave garbage (inf, a
truncated token, a formatting error) or a raw IndexError; now it gets a clear error naming the
parameter, or a correct result."""

import numpy as np
import pytest

from minq import affine
from minq.formats import FloatFormat
from minq.packing import unpack

F32_MAX = float(np.finfo(np.float32).max)


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
def test_grid_reaching_float32_max_stays_finite(bits, symmetric, device):
    """Symmetric 8-bit of +-max(float32) used to dequantize to +-inf (s = max/127 rounded up, times 127)."""
    torch = pytest.importorskip("torch")
    x = np.array([F32_MAX, -F32_MAX, 1.0], np.float32) if symmetric else np.array([F32_MAX, 0.0, 1.0], np.float32)
    for xi in (x, torch.tensor(x, device=device)):
        qp = affine.choose_qparams(xi, bits=bits, symmetric=symmetric)
        x_hat = affine.fake_quantize(xi, qp)
        x_hat = x_hat.cpu().numpy() if hasattr(x_hat, "cpu") else x_hat
        assert np.isfinite(x_hat).all()
        s = float(np.asarray(qp.s.cpu() if hasattr(qp.s, "cpu") else qp.s).max())
        x64 = x.astype(np.float64)
        assert np.all(np.abs(x_hat.astype(np.float64) - x64) <= s / 2 + 2.0**-22 * (np.abs(x64) + s))


@pytest.mark.parametrize("z", [-1.0, 2.5, 16.0])
def test_qparams_rejects_bad_integer_zero_points(z):
    with pytest.raises(ValueError, match=r"z must hold integers in \[0, 15\]"):
        affine.QParams(np.float32(0.1), np.float32(z), 4)
    affine.QParams(np.float32(0.1), np.float32(2.5), 4, zero_point="float")     # fine as a float zero point


@pytest.mark.parametrize("bits, match", [(0, "bits must be in 1..8"), (9, "bits must be in 1..8")])
def test_qparams_rejects_bad_bits(bits, match):
    with pytest.raises(ValueError, match=match):
        affine.QParams(np.float32(0.1), np.float32(0), bits)


@pytest.mark.parametrize("fields, match", [
    ((1, 0, 3, 7, "fn"), "exp_bits must be an int in 1..8"),
    ((1, 9, 2, 15, "ieee"), "exp_bits must be an int in 1..8"),
    ((1, 8, 31, 127, "ieee"), "man_bits must be an int in 0..23"),          # a 40-bit format
    ((2, 4, 3, 7, "fn"), "sign_bits must be an int in 0..1"),
    ((1, 4, 3, 7.5, "fn"), "bias must be an int"),
    ((0, 8, 0, 127, "ieee"), "convention must be 'fnu'"),
    ((1, 8, 0, 127, "fnu"), "convention must be 'fnu' exactly"),
    ((1, 4, 0, 7, "fn"), "needs man_bits >= 1"),
])
def test_float_format_rejects_impossible_layouts(fields, match):
    with pytest.raises(ValueError, match=match):
        FloatFormat("x", *fields)


def test_unpack_of_a_0d_array():
    with pytest.raises(ValueError, match="packed must have at least one dimension"):
        unpack(np.array(3, np.uint8), 4, 2)


def test_tokenizer_decode_rejects_non_integer_ids(smollm2):
    tok = smollm2.tokenizer
    with pytest.raises(TypeError, match="ids must be integer token ids"):
        tok.decode([1.7])
    with pytest.raises(TypeError, match="ids must be integer token ids"):
        tok.decode(np.array([1.0, 2.0]))
    assert tok.decode(np.array([tok.encode("Hello")[0]])) == tok.decode(tok.encode("Hello")[:1])


def test_bert_tokenizer_rejects_a_corrupt_file(tmp_path):
    from minq.models.tokenizer import BertTokenizer

    bad = tmp_path / "tokenizer.json"
    bad.write_text('{"version": "1.0", "model": ')
    with pytest.raises(ValueError, match="not a readable tokenizer.json"):
        BertTokenizer(bad)
