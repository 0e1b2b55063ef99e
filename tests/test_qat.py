"""Chapter 05 — quantization-aware training (minq/qat.py).

Properties: the fake-quant forward equals chapter 03's ``quantize_groups(...).dequantize()`` bit for bit
(hypothesis: shapes, bits, every granularity, symmetric or not, ties, outliers; NumPy and torch paths);
the STE backward is the identity (plain) or the mask of the grid's range (clipped); LSQ's gradients
equal the published formula with the gradient scale and the finite differences of the surrogate with
rounding held fixed; LSQ at init is symmetric RTN; a seeded training loop lowers the loss below
RTN-then-freeze; ``convert`` reproduces the QAT forward; bad inputs raise errors naming the parameter.
"""

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minq import affine
from minq import testing as mt
from minq.groups import GroupedAffine, quantize_groups
from minq.testing import assert_bound, assert_close, assert_equal

torch = pytest.importorskip("torch")
qat = pytest.importorskip("minq.qat")

_with_fixture = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
                         deadline=None)
GRANULARITIES = (lambda g: None, lambda g: 0, lambda g: -1, lambda g: g)


@st.composite
def configs(draw, W_strategy=None):
    """(W float32 [out, in], group_size, bits, symmetric)."""
    if W_strategy is None:
        W, g = draw(mt.weight_matrices())
    else:
        W, g = draw(W_strategy)
    gs = draw(st.sampled_from(GRANULARITIES))(g)
    symmetric = draw(st.booleans())
    bits = draw(mt.bits(2 if symmetric else 1, 8))
    return W, gs, bits, symmetric


@st.composite
def ties(draw):
    """4-bit configs on a half-integer grid whose ranges are pinned so that s = m 2^e exactly (symmetric:
    max|W| = 7 s; asymmetric: [-8 s, 7 s], z = 8): about half of all x / s land on k + 1/2, where
    round half to even decides (and where ``x * (1 / s)`` can land one ulp off the tie)."""
    g = draw(st.sampled_from((2, 4, 8)))
    out, G = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    symmetric = draw(st.booleans())
    k = draw(st.lists(st.integers(-14, 14), min_size=out * G * g, max_size=out * G * g))
    W = np.asarray(k, np.float32).reshape(out, G * g) / 2
    W[:, ::g] = 7.0
    if not symmetric:
        W[:, 1::g] = -8.0
    gs = draw(st.sampled_from(GRANULARITIES))(g)
    m = draw(st.sampled_from((1, 3, 5, 7, 13)))                         # s = m 2^e: 1 / s is inexact for m = 7, 13
    return W * np.float32(m * 2.0 ** draw(st.integers(-8, 8))), gs, 4, symmetric


@st.composite
def outliers(draw):
    """float32 matrices from ``mt.float_arrays`` (hypothesis mixes tiny values and a few up to 1e4)."""
    g = draw(st.sampled_from((1, 2, 4, 8)))
    out, G = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    return draw(mt.float_arrays((out, G * g))), g


def _check_forward_equals_chapter03(cfg, device):
    W, gs, bits, symmetric = cfg
    Wt = torch.tensor(W, device=device, requires_grad=True)
    W_hat = qat.fake_quantize(Wt, bits=bits, group_size=gs, symmetric=symmetric)
    assert W_hat.dtype == torch.float32 and W_hat.device.type == device
    ref = quantize_groups(W, bits=bits, group_size=gs, symmetric=symmetric)       # NumPy (Numba kernels)
    assert_equal(W_hat, ref.dequantize(), name="fake_quantize vs quantize_groups")
    ref_t = quantize_groups(Wt.detach(), bits=bits, group_size=gs, symmetric=symmetric)  # torch path
    assert_equal(W_hat, ref_t.dequantize(), name="fake_quantize vs torch quantize_groups")


@_with_fixture
@given(cfg=configs())
def test_fake_quantize_equals_quantize_groups(cfg, device):
    _check_forward_equals_chapter03(cfg, device)


@_with_fixture
@given(cfg=ties())
def test_fake_quantize_equals_quantize_groups_ties(cfg, device):
    _check_forward_equals_chapter03(cfg, device)


@_with_fixture
@given(cfg=configs(outliers()))
def test_fake_quantize_equals_quantize_groups_outliers(cfg, device):
    _check_forward_equals_chapter03(cfg, device)


def test_the_reciprocal_trap_is_caught():
    """torchao's trap (pytorch/ao#229): ``round(x * (1 / s))`` instead of ``round(x / s)``. At the ties
    drawn above, with s = 7, it rounds differently from chapter 03; ``fake_quantize`` does not."""
    W = np.array([[7.0, 3.5, -3.5, 10.5, -10.5, 17.5, 24.5, 0.0]], np.float32) * 7
    s = np.float32(7.0)
    naive = s * np.clip(np.rint(W * (np.float32(1) / s)), -8, 7)
    want = quantize_groups(W, bits=4, group_size=-1, symmetric=True).dequantize()
    assert (naive != want).any()
    assert_equal(qat.fake_quantize(torch.tensor(W), bits=4, symmetric=True), want)


# --- the straight-through estimator ---------------------------------------------------------------------


@pytest.mark.parametrize("gs", [-1, 4, None])
def test_ste_min_max_grid(device, gs):
    """Min-max scales: symmetric, every W lies in [s (0 - z), s (qmax - z)] and both STEs pass dL/dW_hat
    unchanged. Asymmetric, z = round(-lo / s) can move the grid by up to s/2, so a few extreme W lie
    just beyond an end: clipped STE gives them 0 (they sit on the end code), plain STE passes them."""
    W = torch.randn(5, 16, generator=torch.Generator().manual_seed(1)).to(device)
    dY = torch.randn(5, 16, generator=torch.Generator().manual_seed(2)).to(device)
    for symmetric in (True, False):
        for ste in qat.STE:
            Wp = W.clone().requires_grad_()
            qat.fake_quantize(Wp, bits=3, group_size=gs, symmetric=symmetric, ste=ste).backward(dY)
            if symmetric or ste == "plain":
                assert_equal(Wp.grad, dY)
                continue
            c = quantize_groups(W.cpu().numpy(), bits=3, group_size=gs)
            qp = c.qparams()                                             # s, z [out, G, 1] (or [1, 1, 1])
            Wg = W.cpu().numpy().reshape(5, c.n_groups if gs is not None else 1, -1)
            s = qp.s.astype(np.float32)
            lo, hi = s * (0 - qp.z), s * (7 - qp.z)
            inside = (Wg >= lo) & (Wg <= hi)
            assert_bound(np.maximum(lo - Wg, Wg - hi), np.broadcast_to(s / 2, Wg.shape))  # within s/2
            assert_equal(Wp.grad, dY.cpu().numpy() * inside.reshape(5, 16))


@pytest.mark.parametrize("symmetric", [True, False])
def test_ste_given_grid_plain_and_clipped(device, symmetric):
    """A given (small) grid: the forward is chapter 02's fake_quantize with it; plain STE passes the
    gradient everywhere, clipped STE exactly inside [s (0 - z), s (qmax - z)] and 0 outside."""
    gen = torch.Generator().manual_seed(3)
    W = (3 * torch.randn(4, 12, generator=gen)).to(device)
    bits, G = 4, 3
    s = torch.full((4, G), 0.25, device=device)
    z = None if symmetric else torch.randint(0, 16, (4, G), generator=gen).float().to(device)
    z_full = torch.full((4, G), 8.0, device=device) if symmetric else z
    qp = affine.QParams(s[..., None], z_full[..., None], bits, symmetric)
    want = affine.fake_quantize(W.reshape(4, G, 4), qp).reshape(4, 12)
    lo, hi = (s * (0 - z_full)).repeat_interleave(4, 1), (s * (15 - z_full)).repeat_interleave(4, 1)
    inside = (W >= lo) & (W <= hi)
    assert inside.any() and not inside.all()
    dY = torch.randn(4, 12, generator=gen).to(device)
    for ste, mask in (("plain", torch.ones_like(inside)), ("clipped", inside)):
        Wp = W.clone().requires_grad_()
        W_hat = qat.fake_quantize(Wp, bits=bits, group_size=4, symmetric=symmetric, ste=ste, s=s, z=z)
        assert_equal(W_hat, want)
        W_hat.backward(dY)
        assert_equal(Wp.grad, dY * mask)


# --- LSQ ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("offset", [False, True])
@pytest.mark.parametrize("gs", [4, -1, None])
def test_lsq_gradients_match_formula_and_finite_differences(device, offset, gs):
    gen = torch.Generator().manual_seed(4)
    W = torch.randn(3, 8, generator=gen)
    bits = 3
    lsq = qat.LSQQuantizer(W, bits=bits, group_size=gs, offset=offset).to(device)
    with torch.no_grad():
        lsq.s.mul_(0.6)                                                  # a tighter grid: some W outside
    Wd = W.clone().to(device).requires_grad_()
    dY = torch.randn(3, 8, generator=gen).to(device)
    lsq(Wd).backward(dY)
    # the formula by hand
    Wn, dYn = W.double().numpy(), dY.double().cpu().numpy()
    s = lsq.s.detach().double().cpu().numpy()
    beta = np.zeros_like(s) if not offset else lsq.beta.detach().double().cpu().numpy()
    Q_N, Q_P = 2 ** (bits - 1), 2 ** (bits - 1) - 1
    G = 2 if gs == 4 else 1
    Wg, dYg = Wn.reshape(3, G, -1), dYn.reshape(3, G, -1)                # [out, G, g]
    v = (Wg - beta[..., None]) / s[..., None]
    inside = (v > -Q_N) & (v < Q_P)
    assert inside.any() and not inside.all()
    g = 1 / math.sqrt(3 * 8 / s.size * Q_P)                              # N = weights per step
    assert lsq.grad_scale == pytest.approx(g, rel=1e-12)
    dW_want = (dYg * inside).reshape(3, 8)
    ds_want = (dYg * np.where(inside, np.round(v) - v, np.clip(np.round(v), -Q_N, Q_P))).sum(-1)
    db_want = (dYg * ~inside).sum(-1)
    if gs is None:                                                       # one step for the whole tensor
        ds_want, db_want = ds_want.sum(keepdims=True), db_want.sum(keepdims=True)
    assert_equal(Wd.grad, dW_want.astype(np.float32))
    assert_close(lsq.s.grad, g * ds_want, rtol=1e-5, atol=1e-6)
    if offset:
        assert_close(lsq.beta.grad, g * db_want, rtol=1e-5, atol=1e-6)
    # finite differences of the surrogate with rounding held fixed at this point:
    # inside W_hat = s (v + c) + beta with c = round(v0) - v0 constant; outside s v_bar + beta
    c, v_bar = np.round(v) - v, np.clip(np.round(v), -Q_N, Q_P)

    def L(Wx, sx, bx):
        vx = (Wx.reshape(Wg.shape) - bx[..., None]) / sx[..., None]
        f = np.where(inside, sx[..., None] * (vx + c), sx[..., None] * v_bar) + bx[..., None]
        return float((dYg * f).sum())

    eps = 1e-6
    fd_s = np.zeros_like(s)
    for idx in np.ndindex(*s.shape):
        e = np.zeros_like(s)
        e[idx] = eps
        fd_s[idx] = (L(Wn, s + e, beta) - L(Wn, s - e, beta)) / (2 * eps)
    assert_close(lsq.s.grad, g * fd_s, rtol=1e-4, atol=1e-5)
    fd_W = np.zeros_like(Wn)
    for idx in np.ndindex(*Wn.shape):
        e = np.zeros_like(Wn)
        e[idx] = eps
        fd_W[idx] = (L(Wn + e, s, beta) - L(Wn - e, s, beta)) / (2 * eps)
    assert_close(Wd.grad, fd_W, rtol=1e-4, atol=1e-5)
    if offset:
        fd_b = np.zeros_like(beta)
        for idx in np.ndindex(*beta.shape):
            e = np.zeros_like(beta)
            e[idx] = eps
            fd_b[idx] = (L(Wn, s, beta + e) - L(Wn, s, beta - e)) / (2 * eps)
        assert_close(lsq.beta.grad, g * fd_b, rtol=1e-4, atol=1e-5)


@_with_fixture
@given(cfg=configs())
def test_lsq_at_init_is_symmetric_rtn_and_converts_exactly(cfg, device):
    W, gs, bits, _ = cfg
    bits = max(bits, 2)
    Wt = torch.tensor(W, device=device)
    lsq = qat.LSQQuantizer(Wt, bits=bits, group_size=gs)
    W_hat = lsq(Wt)
    assert_equal(W_hat, quantize_groups(W, bits=bits, group_size=gs, symmetric=True).dequantize())
    c = lsq.to_grouped(Wt)
    assert isinstance(c, GroupedAffine) and c.symmetric
    assert_equal(c.dequantize(), W_hat)


@_with_fixture
@given(cfg=configs())
def test_lsq_plus_at_init_is_asymmetric_rtn(cfg, device):
    """LSQ+ starts on chapter 03's asymmetric grid (beta = s (Q_N - z)): the codes are RTN's except where
    (W - beta) / s lands within float32 rounding of a tie (then a neighbour), the values equal RTN's
    within float32 rounding wherever the codes agree."""
    W, gs, bits, _ = cfg
    bits = max(bits, 2)
    Wt = torch.tensor(W, device=device)
    c = qat.LSQQuantizer(Wt, bits=bits, group_size=gs, offset=True).to_grouped(Wt)
    rtn = quantize_groups(W, bits=bits, group_size=gs, symmetric=False)
    q, q_rtn = c.codes.astype(int), rtn.codes.astype(int)
    assert np.abs(q - q_rtn).max() <= 1 and (q == q_rtn).mean() >= 0.99
    same = q == q_rtn
    R = rtn.dequantize()
    assert np.allclose(c.dequantize()[same], R[same], rtol=1e-5, atol=1e-5 * np.abs(R).max())


def test_lsq_init_lsq_formula():
    W = torch.randn(2, 8, generator=torch.Generator().manual_seed(5))
    lsq = qat.LSQQuantizer(W, bits=4, group_size=4, init="lsq")
    want = 2 * W.reshape(2, 2, 4).abs().mean(-1) / math.sqrt(7)
    assert_close(lsq.s.detach(), want, rtol=1e-6)


# --- training, prepare / convert ------------------------------------------------------------------------


def _regression(device, n=512, d_in=32, d_out=8):
    """Correlated inputs X [n, in] (singular values 1 .. 0.01) and a noisy linear target Y [n, out], seeded.
    With correlated inputs, rounding errors can compensate one another: QAT finds codes that RTN does not.
    (With isotropic X, RTN is close to the best grid point and STE training oscillates around the
    rounding boundaries, ending *above* RTN: Nagel et al. 2022, "Overcoming oscillations in QAT".)"""
    gen = torch.Generator().manual_seed(6)
    U, _ = torch.linalg.qr(torch.randn(d_in, d_in, generator=gen))
    A = (U * torch.logspace(0, -2, d_in)) @ U.T
    X = torch.randn(n, d_in, generator=gen) @ A
    W_true = torch.randn(d_out, d_in, generator=gen) / math.sqrt(d_in)
    Y = X @ W_true.T + 0.01 * torch.randn(n, d_out, generator=gen)
    return X.to(device), Y.to(device)


@pytest.mark.parametrize("method", ["ste", "lsq"])
def test_training_loop_beats_rtn_then_freeze(device, method):
    X, Y = _regression(device)
    float_model = torch.nn.Linear(32, 8, bias=False).to(device)
    with torch.no_grad():                                                # the float model: least squares
        float_model.weight.copy_(torch.linalg.lstsq(X.cpu(), Y.cpu()).solution.T.to(device))
    kw = dict(bits=4, group_size=16, method=method)
    sym = method == "lsq"                                                # LSQ starts at symmetric RTN
    rtn = quantize_groups(float_model.weight.detach().cpu().numpy(), bits=4, group_size=16, symmetric=sym)
    loss_rtn = torch.mean((X @ torch.tensor(rtn.dequantize(), device=device).T - Y) ** 2).item()
    model = qat.prepare_qat(float_model, **kw)
    assert isinstance(model, qat.QATLinear)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 50)      # a decaying rate lets the codes settle
    losses = []
    for _ in range(50):
        loss = torch.mean((model(X) - Y) ** 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(loss_rtn, rel=1e-5)              # step 0 is RTN
    final = torch.mean((model(X) - Y) ** 2).item()
    assert final < 0.9 * loss_rtn, (method, loss_rtn, losses[::10], final)  # about 0.5 (STE), 0.75 (LSQ)
    (c,) = qat.convert(model).values()
    with torch.no_grad():
        assert_equal(c.dequantize(), model.weight_hat())
        converted = torch.mean((X @ torch.tensor(c.dequantize(), device=device).T - Y) ** 2).item()
    assert converted == pytest.approx(final, rel=1e-6)


@pytest.mark.parametrize("method, kw", [("ste", {}), ("ste", dict(symmetric=True, ste="clipped")),
                                        ("lsq", {}), ("lsq", dict(offset=True))])
def test_prepare_and_convert_a_module(device, method, kw):
    torch.manual_seed(7)
    model = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(),
                                torch.nn.Sequential(torch.nn.Linear(8, 4))).to(device)
    q = qat.prepare_qat(model, bits=4, group_size=8, method=method, **kw)
    assert isinstance(model[0], torch.nn.Linear)                         # the input model is unchanged
    assert isinstance(q[0], qat.QATLinear) and isinstance(q[2][0], qat.QATLinear)
    x = torch.randn(5, 16, device=device)
    q(x).sum().backward()
    assert q[0].weight.grad is not None
    conv = qat.convert(q)
    assert set(conv) == {"0", "2.0"}
    for name, m in (("0", q[0]), ("2.0", q[2][0])):
        W_hat = m.weight_hat().detach()
        if kw.get("offset"):  # LSQ+: float zero point z = Q_N - beta / s, equal within float32 rounding
            assert conv[name].zero_point == "float"
            s, beta = (p.detach().repeat_interleave(8, 1) for p in (m.quantizer.s, m.quantizer.beta))
            bound = 4 * np.finfo(np.float32).eps * (W_hat.abs() + 16 * s + beta.abs())
            mt.assert_bound(np.abs(conv[name].dequantize() - W_hat.cpu().numpy()), bound.cpu().numpy())
        else:
            assert_equal(conv[name].dequantize(), W_hat)


# --- bad inputs -----------------------------------------------------------------------------------------


def test_bad_inputs_name_the_parameter():
    W = torch.randn(4, 8)
    cases = [
        (dict(bits=0), ValueError, "bits"), (dict(bits=9), ValueError, "bits"),
        (dict(bits=4, group_size=3), ValueError, "group_size"),
        (dict(bits=4, ste="smooth"), ValueError, "ste"),
        (dict(bits=4, s=torch.ones(4, 2)), ValueError, "s"),
        (dict(bits=4, s=torch.zeros(4, 1), z=torch.zeros(4, 1)), ValueError, "s"),
        (dict(bits=4, s=torch.ones(4, 1)), ValueError, "z"),
        (dict(bits=4, s=torch.ones(4, 1), z=torch.zeros(4, 2)), ValueError, "z"),
        (dict(bits=4, s=torch.ones(4, 1), z=torch.full((4, 1), 0.5)), ValueError, "z"),
        (dict(bits=4, s=torch.full((4, 1), float("nan")), z=torch.zeros(4, 1)), ValueError, "s"),
        (dict(bits=1, symmetric=True), ValueError, "bits"),
    ]
    for kw, err, name in cases:
        with pytest.raises(err, match=name):
            qat.fake_quantize(W, **kw)
    for bad, err in ((torch.tensor([[1.0, float("nan")]]), ValueError), (torch.tensor([[1.0, float("inf")]]), ValueError),
                     (torch.ones(2, 2, dtype=torch.int32), TypeError), (torch.ones(4), ValueError)):
        with pytest.raises(err, match="W"):
            qat.fake_quantize(bad, bits=4)
        with pytest.raises(err, match="W"):
            qat.LSQQuantizer(bad, bits=4)
    with pytest.raises(ValueError, match="bits"):
        qat.LSQQuantizer(W, bits=1)
    with pytest.raises(ValueError, match="init"):
        qat.LSQQuantizer(W, bits=4, init="mse")
    lin = torch.nn.Linear(8, 4)
    with pytest.raises(ValueError, match="method"):
        qat.prepare_qat(lin, bits=4, method="pact")
    with pytest.raises(ValueError, match="group_size"):
        qat.prepare_qat(lin, bits=4, group_size=3)
    with pytest.raises(ValueError, match="bits"):
        qat.prepare_qat(lin, bits=12)
    with pytest.raises(TypeError, match="model"):
        qat.prepare_qat(W, bits=4)
    with pytest.raises(TypeError, match="linear"):
        qat.QATLinear(torch.nn.ReLU(), bits=4)
    with pytest.raises(ValueError, match="QATLinear"):
        qat.convert(lin)
    lsq = qat.QATLinear(lin, bits=4, method="lsq")
    with torch.no_grad():
        lsq.quantizer.s[0] = -1.0
    with pytest.raises(ValueError, match="s must be > 0"):
        qat.convert(lsq)
