"""minq.calibration: the X^T X accumulator and its identity, the calibration check, the block forward that
stops at a linear; and the shared validators of minq._checks (ints, group sizes, the ragged layout)."""

import numpy as np
import pytest

from minq._checks import check_group_size, check_int, ragged_layout
from minq.api import calibration_ids
from minq.calibration import Hessian, check_blocks, check_calibration, forward_block, linear_input
from minq.gptq import gptq_quantize
from minq.groups import quantize_groups
from minq.testing import assert_close, assert_equal, llm_like_layer

# --- H = X^T X: the identity ||(W - W_hat) X^T||_F^2 = tr(dW H dW^T), for the H that Hessian builds -------


@pytest.fixture(scope="module")
def layer():
    W, X = llm_like_layer(0)                   # W [1536, 576], X [5120, 576] with outlier channels
    return W[:256], X[:4096]                   # GPTQ's rows are independent: 256 keep the tests quick


def _hessian(X, batch_tokens):
    h = Hessian(X.shape[1])
    for a in range(0, len(X), batch_tokens):
        h.add_batch(X[a:a + batch_tokens])
    return h


@pytest.mark.parametrize("method", ["gptq", "rtn"])
def test_output_error_is_the_quadratic_form_of_H(layer, method):
    """For the H accumulated batch by batch (float64 total, float32 read-out), and any W_hat (GPTQ's and
    RTN's here), the squared output error on the calibration tokens equals tr(dW H dW^T): no factor."""
    W, X = layer
    h = _hessian(X, 1000)                                                  # uneven batches: 4 x 1000 + 96
    assert h.n == len(X)
    W_hat = (gptq_quantize(W, h.H, bits=3, group_size=64) if method == "gptq"
             else quantize_groups(W, bits=3, group_size=64)).dequantize()
    dW = W.astype(np.float64) - W_hat
    lhs = np.sum((dW @ X.T.astype(np.float64)) ** 2)                     # ||(W - W_hat) X^T||_F^2
    for H in (h.XtX, h.H.astype(np.float64)):                            # measured: 1e-8 and 3e-10 off
        assert_close(np.trace(dW @ H @ dW.T), lhs, rtol=1e-6, name="tr(dW H dW^T)")


def test_gptq_losses_are_the_output_error_plus_damping(layer):
    """GPTQ's per-column losses sum to tr(dW (H + lambda I) dW^T) = ||dW X^T||^2 + lambda ||dW||^2."""
    W, X = layer
    h = _hessian(X, 2048)
    q = gptq_quantize(W, h.H, bits=4, group_size=64, damp=0.01)
    dW = W.astype(np.float64) - q.dequantize()
    lam = 0.01 * np.mean(np.diag(h.H).astype(np.float64))
    want = np.sum((dW @ X.T.astype(np.float64)) ** 2) + lam * np.sum(dW * dW)
    assert_close(q.losses.sum(), want, rtol=1e-6, name="sum of GPTQ losses")          # measured: 1e-8 off


def test_old_scale_and_new_scale_hessians_give_identical_codes(layer):
    """minq's H was the reference's mean 2 X^T X / sequences; now it is the sum X^T X. With the default
    128 calibration windows the two differ by 64 = 4^3, which every float operation of GPTQ carries
    exactly (damping is relative to mean(diag H), the factor U by 1/8): the same codes, bit for bit."""
    W, X = layer
    n_seq = 128
    h = Hessian(576)
    h.add_batch(X.reshape(n_seq, -1, 576))                                # 128 windows of 32 tokens
    H_old = (h.XtX * (2.0 / n_seq)).astype(np.float32)                   # the previous Hessian.H
    for cfg in (dict(bits=4), dict(bits=4, group_size=64, act_order=True), dict(bits=3, group_size=128)):
        a, b = gptq_quantize(W, H_old, **cfg), gptq_quantize(W, h.H, **cfg)
        assert_equal(b.codes, a.codes, name=f"codes {cfg}")
        assert_equal(b.s, a.s, name=f"scales {cfg}")
        assert_close(b.losses, a.losses * (n_seq / 2), rtol=1e-12, name="losses scale with H")


def test_hessian_counts_tokens_and_sums_in_float64():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((3, 50, 8)).astype(np.float32)
    h = Hessian(8)
    h.add_batch(X[:2])                                                    # [b, seq, in]: 100 tokens
    h.add_batch(X[2])                                                     # [tokens, in]: 50 tokens
    assert h.n == 150 and h.XtX.dtype == np.float64 and h.H.dtype == np.float32
    Xf = X.reshape(-1, 8).astype(np.float64)
    assert_close(h.XtX, Xf.T @ Xf, rtol=1e-6, atol=1e-5)
    assert_equal(h.H, h.XtX.astype(np.float32), name="H is the float32 sum")
    with pytest.raises(TypeError, match="n_in must be an int"):
        Hessian(8.0)


# --- the calibration check: windows [n, seq], consistent with minq.api.calibration_ids ----------------------


def test_check_calibration_accepts_windows_and_names_the_parameter():
    ids = check_calibration(np.arange(12, dtype=np.int32).reshape(3, 4))
    assert ids.dtype == np.int64 and ids.shape == (3, 4)
    assert check_calibration([[1, 2], [3, 4]]).shape == (2, 2)
    cases = [(None, ValueError, "calibration is required"),
             (np.ones((2, 4), np.float32), TypeError, "calibration must be integer token ids"),
             ("some text", TypeError, "calibration must be integer token ids.*calibration_ids"),
             (np.ones((2, 2), bool), TypeError, "calibration must be integer"),
             (np.arange(10), ValueError, "calibration must be windows.*calibration_ids"),
             (np.zeros((0, 16), np.int64), ValueError, "calibration must be non-empty"),
             (np.zeros((2, 2, 2), np.int64), ValueError, "calibration must be non-empty token ids"),
             ([[1, 2], [3]], ValueError, "calibration must be token ids")]
    for bad, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            check_calibration(bad)
    # a flat sequence is cut into windows by minq.api.calibration_ids (as minq.quantize does), then accepted
    flat = np.arange(1000)
    assert_equal(check_calibration(calibration_ids(None, flat, seq_len=100)), flat.reshape(10, 100))


def test_check_blocks():
    assert check_blocks(None, 3) == [0, 1, 2]
    assert check_blocks([2, np.int64(0), 2], 3) == [0, 2]
    assert check_blocks(range(2), 3) == [0, 1]
    for bad in ([], [3], [-1], [1.0], [True]):
        with pytest.raises(ValueError, match="blocks must be"):
            check_blocks(bad, 3)


# --- the block forward over windows, stopped at a linear ------------------------------------------------------


class _Model:
    """A fake block: ``a``, ``b``, ``c`` read ``x`` in that order; the output is ``x + 1``. Records calls."""

    def __init__(self):
        self.calls = []

    def run_block(self, i, x, *, hooks=None):
        self.calls.append(len(x))
        for n in ("a", "b", "c"):
            if hooks and f"blk.{i}.{n}" in hooks:
                hooks[f"blk.{i}.{n}"](f"blk.{i}.{n}", x.reshape(-1, x.shape[-1]) * {"a": 1, "b": 2, "c": 3}[n])
        return x + 1


def test_forward_block_batches_and_stops_at_a_linear():
    x = np.arange(5 * 2 * 3, dtype=np.float32).reshape(5, 2, 3)          # [n, T, d]
    m = _Model()
    assert_equal(forward_block(m, 0, x, batch_size=2), x + 1, name="y")
    assert m.calls == [2, 2, 1]
    seen = []
    out = forward_block(m, 0, x, hooks={n: lambda name, X: seen.append(name) for n in ("blk.0.a", "blk.0.b", "blk.0.c")},
                        stop_at="blk.0.b", batch_size=4)
    assert out is None and seen == ["blk.0.a", "blk.0.b"] * 2            # b's own hook runs, c is never reached
    assert_equal(linear_input(m, 0, x, "blk.0.b"), 2 * x.reshape(-1, 3), name="X of b")
    assert_equal(linear_input(m, 0, x[0], "blk.0.c"), 3 * x[0], name="X of c, one window [T, d]")
    with pytest.raises(ValueError, match="stop_at='blk.1.a' is not a linear that block 0"):
        forward_block(m, 0, x, stop_at="blk.1.a")
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        forward_block(m, 0, x, batch_size=0)


def test_linear_input_on_smollm2_equals_capture_inputs(smollm2, smollm2_cal):
    ids = smollm2_cal[:2]
    x = smollm2.embed(ids)
    for name in ("blk.0.attn_output", "blk.0.ffn_down"):
        assert_equal(linear_input(smollm2, 0, x, name), smollm2.capture_inputs(ids, [name])[name], name=name)


# --- minq._checks: integers, the group-size descriptor, the ragged layout ----------------------------------------


def test_check_int():
    assert check_int(3, "n") == 3 and type(check_int(np.int16(3), "n")) is int
    assert check_int(5, "n", lo=5, hi=5) == 5
    for bad, exc, msg in [(3.0, TypeError, "n must be an int, got float"), (True, TypeError, "n must be an int"),
                          ("3", TypeError, "n must be an int"), (np.bool_(True), TypeError, "n must be an int"),
                          (0, ValueError, "n must be >= 1, got 0")]:
        with pytest.raises(exc, match=msg):
            check_int(bad, "n", lo=1)
    with pytest.raises(ValueError, match=r"n must be in 1\.\.4, got 5"):
        check_int(5, "n", lo=1, hi=4)
    with pytest.raises(ValueError, match="n must be <= 4"):
        check_int(5, "n", hi=4)


def test_check_group_size():
    for gs, want in ((None, 576), (0, 576), (-1, 576), (64, 64), (np.int64(576), 576)):
        assert check_group_size(gs, 576) == want
    assert check_group_size(128, 576, ragged=True) == 128
    for bad in (-2, 1.5, 2.0, "64", True):
        with pytest.raises(ValueError, match="group_size must be None/0"):
            check_group_size(bad, 576, ragged=True)
    with pytest.raises(ValueError, match="group_size=128 does not divide the input dimension 576"):
        check_group_size(128, 576)
    with pytest.raises(ValueError, match="group_size=1000 does not divide"):
        check_group_size(1000, 576)
    with pytest.raises(ValueError, match="group_size=1000 is larger than the input dimension 576"):
        check_group_size(1000, 576, ragged=True)


def test_ragged_layout():
    assert ragged_layout(128, 576) == (64, [2, 2, 2, 2, 1])
    assert ragged_layout(40, 96) == (8, [5, 5, 2])
    assert ragged_layout(64, 576) == (64, [1] * 9)
    for g, n in ((128, 576), (40, 96), (7, 50), (64, 576), (576, 576)):
        gs, reps = ragged_layout(g, n)
        assert sum(reps) * gs == n and all(r * gs == g for r in reps[:n // g])
