"""Chapter 04 — W8A8: int8 weights *and* int8 linear inputs, so ``Y = X W^T`` can run as an integer GEMM.

W8A8 quantizes the *inputs* of every linear to int8 as well as the weights, so that ``Y = X W^T`` can
run as an integer GEMM (int8 x int8 products, int32 accumulation) and one float32 rescale:

    Xq = clip(round(X / sx), -128, 127)     Wq = clip(round(W / sw), -128, 127)   (symmetric int8)
    Y  = (Xq @ Wq^T) * sx * sw^T            int8_matmul; equals X_hat @ W_hat^T up to float32 rounding

Weights: int8 symmetric per output channel (``sw [out, 1]``, ``GroupedAffine``). Activation scales
``sx``, the ``mode`` of ``Int8Activations``:

    "static"    one sx per tensor, fixed from calibration (an observer: min-max by default)   w8a8
    "dynamic"   one sx per token, sx_t = max_j |X_tj| / 127, computed at run time          w8a8-dynamic
                (at least 2^-126, so a row of subnormal values keeps a usable scale)
    "outlier"   LLM.int8 (Dettmers et al., 2022): the input columns with any |X_tj| >= threshold  llmint8
                (6.0) in the token batch stay float; the rest are int8 per token (outliers excluded
                from the row absmax). Weights stay int8 in every column, as bitsandbytes does in
                inference (``has_fp16_weights=False``): Y = X[:, O] W_hat[:, O]^T + S (Xq Wq^T).

How it runs: the model is a ``ActQuantModel`` — the weight-quantized model plus one hook per linear
(the runtime hooks of the model protocol, ``minq.models.base``) that replaces the linear's input ``X``
by its fake-quantized version ``X_hat = sx * Xq`` (plus the float outlier columns). The runtime does
not know about it; ``int8_matmul`` is the true integer path, and tests/test_ptq.py proves the two equal
within float32 rounding on real layers. The outlier mode decides its columns per call, i.e. per batch
of windows ``minq.eval.nll`` sends (as bitsandbytes decides per batch): its perplexity can depend, very
slightly, on ``batch_size``.

Both testbeds: the Llama decoder, and the MiniLM encoder (``minq.models.bert``, the same hooks; its
hooks see the real tokens of a padded batch only). Calibration for the encoder is token ids
``[n, T]`` padded with ``[PAD]`` (``minq.calibration.sentence_calibration`` builds them from minq's
calibration text); ``ActQuantModel.embed(texts)`` then gives sentence embeddings through the quantized
inputs.

Weight-only PTQ (RTN with observers) is ``minq.ptq``; SmoothQuant (``smoothquant-w8a8``), which
rescales the inputs before this quantizer sees them, is ``minq.smoothquant``. Notebook:
``notebooks/04_ptq.ipynb``.
"""

from __future__ import annotations

import re

import numpy as np

from minq._checks import check_bits
from minq.calibration import calibrate, check_calibration
from minq.groups import GroupedAffine, quantize_groups
from minq.observers import make_observer
from minq.registry import Scheme, register_family

_F32_TINY = np.float32(np.finfo(np.float32).tiny)  # 2^-126: amax / 127 of a subnormal row would flush to 0

__all__ = ["Int8Activations", "int8_matmul", "int8_weight", "ActQuantModel", "quantize_w8a8",
           "quantize_int8_weights", "MODES"]

MODES = ("static", "dynamic", "outlier")


# --- activations: int8 per tensor (static), per token (dynamic), with outliers (LLM.int8) ----------


class Int8Activations:
    """Symmetric int8 quantizer of linear inputs ``X [tokens, in]``, and a runtime hook ``fn(name, X)``.

    mode: ``"static"`` (``s`` > 0, the per-tensor scale from calibration), ``"dynamic"`` (per token)
    or ``"outlier"`` (LLM.int8 with ``threshold``). Codes follow minq's convention with ``z = 128``:
    ``q - z = clip(round(X / s), -128, 127)`` (``affine.fake_quantize`` with ``QParams(s, 128, 8)``
    gives the same values bit for bit). A token whose row is all zero gets ``s = 1``.
    ``bits`` (2..8, default 8; "static" and "dynamic" only) narrows the grid to ``b``-bit signed codes:
    ``clip(round(X / s), -2^(b-1), 2^(b-1) - 1)`` with ``s = max|X| / (2^(b-1) - 1)`` — chapter 12's
    W4A4, where per-token int4 inputs break a model unless rotations spread its outliers.

    The hook returns ``X_hat`` and remembers the last input: the linears that read the same ``X``
    (q/k/v, gate/up) share one quantization. It is plain NumPy (four vectorised passes, two more for
    per-token scales); in a SmolLM2 forward the hooks take 5-12% of the time (benchmarks/bench_ptq.py).
    """

    def __init__(self, mode: str = "dynamic", *, s=None, threshold: float = 6.0, bits: int = 8):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")
        bits = check_bits(bits, lo=2)
        if bits != 8 and mode == "outlier":
            raise ValueError(f"bits must be 8 for mode='outlier' (LLM.int8), got {bits}")
        self.bits, self.qmax = bits, np.float32(2 ** (bits - 1) - 1)
        if mode == "static":
            if s is None or not np.isfinite(s) or not s > 0:
                raise ValueError(f"mode='static' needs a finite scale s > 0 (from calibration), got {s!r}")
            s = np.float32(s)
        elif s is not None:
            raise ValueError(f"s is only for mode='static' (mode={mode!r} computes its scales at run time)")
        if mode == "outlier" and not (np.isfinite(threshold) and threshold > 0):
            raise ValueError(f"threshold must be a finite number > 0, got {threshold!r}")
        self.mode, self.s, self.threshold = mode, s, float(threshold)
        self._x = self._x_hat = None

    def __repr__(self):
        extra = {"static": f", s={self.s:.4g}" if self.mode == "static" else "",
                 "outlier": f", threshold={self.threshold}"}.get(self.mode, "")
        return f"Int8Activations({self.mode!r}{extra}{'' if self.bits == 8 else f', bits={self.bits}'})"

    def scales(self, X):
        """``(sx, cols)``: ``sx`` float32 ``[1, 1]`` (static) or ``[tokens, 1]``; ``cols`` bool ``[in]``,
        the outlier columns kept in float (``None`` unless mode ``"outlier"``)."""
        if self.mode == "static":
            return np.full((1, 1), self.s, np.float32), None
        A = np.abs(X)                                                       # [tokens, in]
        cols = None
        if self.mode == "outlier":
            cols = (A >= np.float32(self.threshold)).any(axis=0)            # [in]
            if cols.any():
                A[:, cols] = 0                                              # outliers leave the row absmax
        amax = A.max(axis=1, keepdims=True)                                 # [tokens, 1]
        if not np.isfinite(amax).all():       # an Inf or NaN activation: no scale can hold it
            raise ValueError("X contains NaN or Inf (an activation overflowed float32?): int8 cannot hold it")
        sx = np.maximum(amax / self.qmax, _F32_TINY)             # a normal scale: no 0 / 0 for tiny rows
        return np.where(amax > 0, sx, np.float32(1)).astype(np.float32), cols

    def quantize(self, X):
        """``(Xq int8 [tokens, in], sx, cols)``; the outlier columns of ``Xq`` are 0."""
        X = np.asarray(X, np.float32)
        sx, cols = self.scales(X)
        Xq = np.clip(np.rint(X / sx), -self.qmax - 1, self.qmax).astype(np.int8)
        if cols is not None:
            Xq[:, cols] = 0
        return Xq, sx, cols

    def fake_quantize(self, X):
        """``X_hat = sx * Xq`` (outlier columns: ``X`` itself), float32 ``[tokens, in]``."""
        X = np.asarray(X, np.float32)
        sx, cols = self.scales(X)
        t = X / sx                                                          # fused: no int8 round trip
        np.rint(t, out=t)
        np.clip(t, -self.qmax - 1, self.qmax, out=t)
        t *= sx
        if cols is not None and cols.any():
            t[:, cols] = X[:, cols]
        return t

    def __call__(self, name, X):
        if X is not self._x:
            self._x, self._x_hat = X, self.fake_quantize(X)
        return self._x_hat


def int8_matmul(Xq, sx, Wq, sw):
    """``Y = (Xq @ Wq^T) * sx * sw^T`` float32 ``[tokens, out]``: int8 x int8 products summed in int32.

    Xq int8 ``[tokens, in]``, sx float32 ``[tokens, 1]`` or ``[1, 1]``; Wq int8 ``[out, in]``, sw float32
    ``[out, 1]`` or ``[1, 1]``. The int32 sum is exact for ``in <= 2^31 / 128^2 = 131072``. Guarantee
    (tests/test_ptq.py): ``|Y - X_hat W_hat^T| <= (in + 2) 2^-24 (|X_hat| |W_hat|^T)`` with
    ``X_hat = sx Xq``, ``W_hat = sw Wq`` and the right side in float32 arithmetic; the only roundings
    of ``Y`` itself are the two rescale products.
    """
    for name, a in (("Xq", Xq), ("Wq", Wq)):
        if not isinstance(a, np.ndarray) or a.dtype != np.int8 or a.ndim != 2:
            raise TypeError(f"{name} must be a 2-D int8 array, got {getattr(a, 'dtype', type(a).__name__)}")
    if Xq.shape[1] != Wq.shape[1]:
        raise ValueError(f"Xq [tokens, in] {Xq.shape} and Wq [out, in] {Wq.shape} differ in 'in'")
    if Xq.shape[1] > 131072:
        raise ValueError(f"in = {Xq.shape[1]} > 131072 could overflow the int32 accumulator")
    acc = Xq.astype(np.int32) @ Wq.astype(np.int32).T                      # [tokens, out] int32, exact
    sx, sw = np.asarray(sx, np.float32), np.asarray(sw, np.float32)
    return acc.astype(np.float32) * sx * sw.reshape(1, -1)


def int8_weight(w: GroupedAffine):
    """``(Wq int8 [out, in], sw float32 [out, 1])`` of an 8-bit symmetric per-channel ``GroupedAffine``."""
    if not (isinstance(w, GroupedAffine) and w.bits == 8 and w.symmetric and w.n_groups == 1):
        raise ValueError("int8_weight needs an 8-bit symmetric per-channel (or per-tensor) GroupedAffine")
    Wq = (w.codes.astype(np.int16) - 128).astype(np.int8)
    return Wq, np.asarray(w.s, np.float32).reshape(-1, 1)


# --- the model: weight-quantized linears reading quantized activations ----------------------------


class ActQuantModel:
    """``model`` (its linears already weight-quantized) whose linears read quantized inputs.

    act: {linear name: hook ``fn(name, X) -> X_hat``} (``Int8Activations``). Any model of the model
    protocol (``minq.models.base``): every method of ``model`` that takes ``hooks=`` (``logits``,
    ``run_block``, ``run_linears``, an encoder's ``forward`` and ``embed``) runs here with the
    quantizing hooks first and the caller's hooks after them (they see the quantized input); the rest
    (``config``, ``tokenizer``, ``weights``, ``nbytes``, a decoder's ``embed(ids)``, ...) is ``model``'s.
    """

    def __init__(self, model, act: dict):
        unknown = sorted(set(act) - set(model.linear_names()))
        if unknown:
            raise ValueError(f"act names unknown linears {unknown[:5]}")
        self.model, self.act = model, dict(act)

    def __getattr__(self, name):
        if name in ("model", "act"):           # not yet set (copy, pickle): no recursion
            raise AttributeError(name)
        attr = getattr(self.model, name)
        if not callable(attr) or "hooks" not in _parameters(attr):
            return attr

        def with_act(*args, hooks=None, **kw):
            return attr(*args, hooks=self._hooks(hooks), **kw)

        return with_act

    def __repr__(self):
        kinds = sorted({repr(a) for a in self.act.values()})[:3]
        return f"ActQuantModel({type(self.model).__name__}, {len(self.act)} quantized inputs: {', '.join(kinds)})"

    def _hooks(self, hooks):
        if not hooks:
            return self.act
        out = dict(self.act)
        for name, fn in hooks.items():
            q = self.act.get(name)
            out[name] = fn if q is None else _compose(q, fn)
        return out

    def with_weights(self, new: dict):
        return ActQuantModel(self.model.with_weights(new), self.act)

    def with_norms(self, new: dict):
        return ActQuantModel(self.model.with_norms(new), self.act)

    def with_head(self, w):
        return ActQuantModel(self.model.with_head(w), self.act)

    def packed(self, activations: str = "float"):
        return ActQuantModel(self.model.packed(activations), self.act)

    def dequantized(self):
        return ActQuantModel(self.model.dequantized(), self.act)


def _parameters(fn) -> tuple:
    import inspect

    try:
        return tuple(inspect.signature(fn).parameters)
    except (TypeError, ValueError):  # pragma: no cover - builtins
        return ()


def _compose(q, fn):
    def hook(name, X):
        X_hat = q(name, X)
        r = fn(name, X_hat)
        return X_hat if r is None else r
    return hook


# --- the model-level entry point and the schemes ----------------------------------------------------


def quantize_w8a8(model, calibration=None, *, mode: str = "static", observer: str = "minmax",
                  observer_kw=None, threshold: float = 6.0, static_absmax=None,
                  progress: bool = False) -> ActQuantModel:
    """W8A8: int8 symmetric per-channel weights, int8 inputs for every linear (``mode``, see module).

    ``mode="static"`` takes the per-tensor range of each input from ``observer`` (``"minmax"``,
    ``"percentile"``, ``"mse"``; ``observer_kw`` for it) over ``calibration`` (token ids ``[n, seq]``),
    or, without calibration, from ``static_absmax`` ``{name: max|X|}`` (``s = max|X| / 127``).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")
    names = model.linear_names()
    if mode == "static":
        if static_absmax is None:
            ids = check_calibration(calibration)
            kw = dict(observer_kw or {})
            obs = calibrate(model, ids, lambda name: make_observer(observer, bits=8, symmetric=True, **kw),
                            progress=progress)
            scale = {n: float(np.asarray(o.qparams().s).reshape(())) for n, o in obs.items()}
        else:
            scale = {n: float(np.float32(static_absmax[n]) / np.float32(127)) for n in names}
        by_s = {s: Int8Activations("static", s=s) for s in set(scale.values())}  # q/k/v share one
        act = {n: by_s[scale[n]] for n in names}
    else:
        q = Int8Activations(mode, threshold=threshold)       # stateless: one for all linears
        act = {n: q for n in names}
    return ActQuantModel(quantize_int8_weights(model, progress=progress), act)


def quantize_int8_weights(model, *, progress: bool = False):
    """Every linear as int8 symmetric per output channel (``rtn-w8-sym``)."""
    from minq.registry import quantize_linears

    return quantize_linears(model, lambda W: quantize_groups(W, bits=8, group_size=-1, symmetric=True),
                            desc="int8 weights", progress=progress)


def _w8a8(m: re.Match) -> Scheme:
    opt = m["opt"]
    if opt is None or opt in ("mse",):
        mode, observer, kw = "static", opt or "minmax", {}
    elif opt == "dynamic":
        mode, observer, kw = "dynamic", None, {}
    else:                                                           # p{percentile}
        pct = float(opt[1:])
        if not 50 < pct <= 100:
            raise ValueError(f"scheme {m.string!r}: the percentile must be in (50, 100]")
        mode, observer, kw = "static", "percentile", {"percentile": pct}
    desc = {"static": f"int8 weights per channel, int8 activations per tensor, static ({observer} calibration)",
            "dynamic": "int8 weights per channel, int8 activations per token, dynamic"}[mode]

    def quantize_model(model, calibration, progress=True):
        return quantize_w8a8(model, calibration, mode=mode, observer=observer or "minmax", observer_kw=kw,
                             progress=progress)

    return Scheme(m.string, desc, quantize_model=quantize_model, needs_calibration=mode == "static")


def _llmint8(m: re.Match) -> Scheme:
    t = float(m["t"]) if m["t"] else 6.0
    if not t > 0:
        raise ValueError(f"scheme {m.string!r}: the threshold must be > 0")

    def quantize_model(model, calibration, progress=True):
        return quantize_w8a8(model, mode="outlier", threshold=t, progress=progress)

    return Scheme(m.string, f"LLM.int8: int8 per channel / per token, input columns with |x| >= {t:g} in float",
                  quantize_model=quantize_model)


# What ``minq report`` runs of these families: ``defaults`` (the full report), ``quick`` (the first run).
register_family("w8a8", r"w8a8(?:-(?P<opt>dynamic|mse|p\d+(?:\.\d+)?))?", _w8a8, "w8a8[-dynamic|-mse|-p{percentile}]",
                defaults=("w8a8", "w8a8-dynamic"), quick=("w8a8-dynamic",))
register_family("llmint8", r"llmint8(?:-t(?P<t>\d+(?:\.\d+)?))?", _llmint8, "llmint8[-t{threshold}]",
                defaults=("llmint8",), quick=("llmint8",))

