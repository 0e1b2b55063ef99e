"""Chapter 09 — the quantized KV cache: keys and values stored as int8 / int4 / int2 or FP8 codes.

A decoder's cache grows by ``2 · n_layers · n_kv · hd`` numbers a token (SmolLM2: 30 x 2 x 3 x 64 float32 =
46 KB a token). ``QuantizedKVCache`` stores them in fewer bits. A ``KVSpec`` says how:

    fmt     "int" (asymmetric min-max per group, ``x_hat = s q + m`` with the group's minimum ``m`` and
            ``s = (max - m) / (2^bits - 1)``, both float16: KIVI's storage) with ``bits`` 2..8, or "e4m3" / "e5m2" (FP8 codes, a float32 scale ``amax / fmax``; ``minq.fp8``)
    axis    per quantized tensor (``key_axis``, ``value_axis``):
            "token"    one scale (and m) per token, head and ``group`` channels    groups along hd
            "channel"  one scale (and m) per channel, head and ``group`` tokens    groups along the positions
    window  R: the most recent positions stay float (KIVI's residual); older ones are quantized as they
            leave it. Per-channel groups need ``group`` whole positions, so positions of an unfinished
            group stay float too: positions ``0 .. qp(L) - 1`` are quantized once the cache holds L,
            ``qp(L) = max(0, floor((L - R) / G) · G)`` with ``G = group`` if an axis is "channel", else 1.
    pre_rope  keys are quantized before RoPE (KVQuant, Hooper et al. 2024): RoPE rotates channel pairs
            by position and smears a key's outlier channels over their pair; the cache un-rotates them,
            stores, and rotates the dequantized keys back when attention reads them.
    hadamard  keys and values are stored rotated by the head-dim Hadamard ``H / sqrt(hd)`` (QuaRot's online
            Q/K rotation, chapter 12): ``q k^T = (q H)(k H)^T / hd`` and ``p V = (p V H) H^T / hd``, so
            rotating what is stored and rotating back what is read changes nothing but the rounding —
            an outlier channel is spread over the head before its group's range is taken. The
            head size must be a power of two (``H`` symmetric, ``H H / hd = I``).

KIVI (Liu et al., ICML 2024, arXiv:2402.02750) = keys per channel, values per token, groups of 32,
R = 128: ``KVSpec.kivi(bits)``.

Decode-exact reads. A position's codes are a fixed function of its own group (they do not depend on
when they are computed), so what changes with time is only *which* positions a query reads quantized:
query ``p`` (the token at position p, decoded with positions 0..p in the cache) reads ``j < qp(p + 1)``
quantized. ``append`` returns exactly that (``minq.kvcache.KVRead``): a chunk of T tokens appended at
once attends as T one-token steps would, so ``model.logits(ids, cache=fresh)`` is token-by-token decoding
in one forward (tests/test_kvcache.py compares it with a literal decode loop).

Storage per layer: packed codes and scales of the quantized positions, float32 keys and values of the
rest (``nbytes`` counts exactly these; ``kv_bytes`` computes the same from a spec, for any model). The
cache runs with minq's NumPy runtime; its quantizer, ``fake_quantize_kv``, also takes torch tensors (CPU
or CUDA) and gives the same values (tests/test_kvcache.py).
Notebook: notebooks/09_kv_cache.ipynb.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from minq import fp8
from minq._backend import is_torch, namespace
from minq._checks import _all_finite, check_choice, check_float_array, check_int
from minq.kvcache import KVCache, KVRead
from minq.packing import nbytes_per_row, pack, unpack

__all__ = ["KVSpec", "QuantizedKVCache", "kv_bytes", "fake_quantize_kv"]

FORMATS = ("int", "e4m3", "e5m2")
AXES = ("token", "channel")


@dataclass(frozen=True)
class KVSpec:
    """How a ``QuantizedKVCache`` stores keys and values (see the module docstring)."""

    fmt: str = "int"
    bits: int = 8
    key_axis: str = "token"
    value_axis: str = "token"
    group: int = 32
    window: int = 0
    pre_rope: bool = False
    hadamard: bool = False

    def __post_init__(self):
        check_choice(self.fmt, "fmt", FORMATS)
        if self.fmt == "int":
            check_int(self.bits, "bits", lo=2, hi=8)
        elif self.bits != 8:
            raise ValueError(f"bits must be 8 for fmt={self.fmt!r} (FP8), got {self.bits!r}")
        check_choice(self.key_axis, "key_axis", AXES)
        check_choice(self.value_axis, "value_axis", AXES)
        check_int(self.group, "group", lo=1)
        check_int(self.window, "window", lo=0)
        if not isinstance(self.pre_rope, bool):
            raise TypeError(f"pre_rope must be a bool, got {type(self.pre_rope).__name__}")
        if not isinstance(self.hadamard, bool):
            raise TypeError(f"hadamard must be a bool, got {type(self.hadamard).__name__}")

    @classmethod
    def kivi(cls, bits: int = 4, *, group: int = 32, window: int = 128) -> KVSpec:
        """KIVI: keys per channel, values per token, groups of 32, the last 128 positions in float."""
        return cls("int", bits, "channel", "token", group, window)

    @property
    def token_group(self) -> int:
        """Positions are quantized in runs of this many (``group`` when an axis is per channel)."""
        return self.group if "channel" in (self.key_axis, self.value_axis) else 1

    def quantized_prefix(self, length: int) -> int:
        """``qp(L)``: how many of the first positions are quantized when the cache holds ``length``."""
        G = self.token_group
        return max(0, (length - self.window) // G * G)

    def check_head_dim(self, hd: int) -> None:
        if "token" in (self.key_axis, self.value_axis) and hd % self.group:
            raise ValueError(f"group = {self.group} must divide the head size {hd} for per-token scales")
        if self.hadamard and hd & (hd - 1):
            raise ValueError(f"hadamard=True needs a head size that is a power of two, got {hd}")


# --- one tensor (keys or values) of one layer, quantized ---------------------------------------------


def _f16(x):
    """``x`` rounded to float16 (to nearest), NumPy or torch."""
    if is_torch(x):
        return x.to(x.new_empty(0).half().dtype)
    return x.astype(np.float16)


def _f16_down(m):
    """The next float16 below ``m`` (a float16 array or tensor)."""
    if is_torch(m):
        import torch

        return torch.nextafter(m, torch.full_like(m, -float("inf")))
    return np.nextafter(m, np.float16(-np.inf))


def _groups(x, axis, G):
    """``x [B, nkv, T, hd]`` -> ``[B, nkv, T', n, G]``: groups of G along hd ("token") or along the
    positions ("channel": T' = T / G position groups, n = hd channels)."""
    B, nkv, T, hd = x.shape
    if axis == "token":
        return x.reshape(B, nkv, T, hd // G, G)
    return x.reshape(B, nkv, T // G, G, hd).swapaxes(-1, -2)


def _ungroup(xg, axis):
    B, nkv, Tp, n, G = xg.shape
    if axis == "token":
        return xg.reshape(B, nkv, Tp, n * G)
    return xg.swapaxes(-1, -2).reshape(B, nkv, Tp * G, n)


class _Store:
    """The quantized positions of one tensor: codes (packed along each group) and scales, grown by
    doubling along the position axis. ``append(x)`` takes float32 ``[B, nkv, T, hd]`` (T a multiple of the
    position group), ``read()`` gives all stored positions dequantized."""

    def __init__(self, spec: KVSpec, axis: str):
        self.spec, self.axis, self.n = spec, axis, 0
        self.codes = self.s = self.z = None

    def _quantize(self, xg):
        """Groups ``[..., G]`` -> (packed codes, s, m or None), the stored dtypes (NumPy or torch)."""
        sp, xp = self.spec, namespace(xg)
        if sp.fmt == "int":
            qmax = (1 << sp.bits) - 1
            lo, hi = xp.amin(xg, (-1,)), xp.amax(xg, (-1,))                 # [..., 1]
            if max(float(abs(lo).max()), float(abs(hi).max())) > 65504:
                raise ValueError("k or v has values beyond float16's range: the cache's float16 scales cannot hold them")
            m = _f16(lo)                                                    # stored as float16, used as stored
            m = xp.where(xp.f32(m) > lo, _f16_down(m), m)                   # m <= min
            span = (hi - xp.f32(m)) / float(qmax)
            s = xp.float16_up(xp.maximum(span, 2.0**-14))                  # float16, rounded up: covers max
            q = xp.to_uint8(xp.clip(xp.rint((xg - xp.f32(m)) / xp.f32(s)), 0, qmax))
            return (q if sp.bits == 8 else pack(q, sp.bits)), s[..., 0], m[..., 0]
        t = fp8.quantize(xg, sp.fmt, "row")                                 # one scale per group
        return t.q, t.s[..., 0], None

    def _dequantize(self, codes, s, z):
        sp, xp = self.spec, namespace(codes)
        if sp.fmt == "int":
            q = xp.f32(codes if sp.bits == 8 else unpack(codes, sp.bits, sp.group))        # [..., G]
            return q * xp.f32(s)[..., None] + xp.f32(z)[..., None]
        return fp8.decode(codes, sp.fmt) * s[..., None]

    def append(self, x):
        parts = self._quantize(_groups(x, self.axis, self.spec.group))
        step = parts[0].shape[2]                                            # positions (or position groups)
        if self.codes is None or self._count + step > self.codes.shape[2]:
            cap = max(2 * (self._count + step), 4)
            grown = [None if p is None else np.empty((*p.shape[:2], cap, *p.shape[3:]), p.dtype) for p in parts]
            if self.codes is not None:
                for new, old in zip(grown, (self.codes, self.s, self.z)):
                    if new is not None:
                        new[:, :, :self._count] = old[:, :, :self._count]
            self.codes, self.s, self.z = grown
        for buf, p in zip((self.codes, self.s, self.z), parts):
            if buf is not None:
                buf[:, :, self._count:self._count + step] = p
        self.n += x.shape[2]

    @property
    def _count(self) -> int:
        return self.n if self.axis == "token" else self.n // self.spec.group

    def read(self):
        c = self._count
        if c == 0:
            return None
        z = None if self.z is None else self.z[:, :, :c]
        return _ungroup(self._dequantize(self.codes[:, :, :c], self.s[:, :, :c], z), self.axis)

    @property
    def nbytes(self) -> int:
        c = self._count
        return sum(int(a[:, :, :c].nbytes) for a in (self.codes, self.s, self.z) if a is not None)


def fake_quantize_kv(x, spec: KVSpec, axis: str):
    """``x [B, n_kv, T, hd]`` as the cache stores it once quantized (dequantized, float32): groups of
    ``spec.group`` along hd (``axis="token"``) or along the positions (``"channel"``, T a multiple of the group).
    NumPy or torch (any device): the same values (the cache itself runs with the NumPy runtime). Raises
    ValueError naming ``x``, ``axis`` or the group. Error bound for "int" (tests/test_kvcache.py): each
    value is within half a step of its group, ``|x_hat - x| <= s / 2 + 2^-22 |x|`` with
    ``s <= (max - min + 2^-10 |min|) (1 + 2^-10) / (2^bits - 1) + 2^-14``, the group's stored scale."""
    check_choice(axis, "axis", AXES)
    if getattr(x, "ndim", None) != 4:
        raise ValueError(f"x must be [B, n_kv, T, hd], got shape {getattr(x, 'shape', None)}")
    if axis == "channel" and x.shape[2] % spec.group:
        raise ValueError(f"per-channel groups of {spec.group} positions need T a multiple of it, got T = {x.shape[2]}")
    if axis == "token" and x.shape[3] % spec.group:
        raise ValueError(f"group = {spec.group} must divide the head size {x.shape[3]} for per-token scales")
    check_float_array(x, "x")
    store = _Store(spec, axis)
    if spec.hadamard:
        spec.check_head_dim(x.shape[3])
    x = _hadamard(namespace(x).f32(x), spec)
    return _hadamard(_ungroup(store._dequantize(*store._quantize(_groups(x, axis, spec.group))), axis), spec)


def _hadamard(x, spec: KVSpec):
    """``x H / sqrt(hd)`` along the head axis when ``spec.hadamard`` (its own inverse: H symmetric), else x."""
    if not spec.hadamard:
        return x
    from minq.rotation import hadamard_transform

    return hadamard_transform(x)


# --- the cache --------------------------------------------------------------------------------------


class QuantizedKVCache(KVCache):
    """A ``KVCache`` storing keys and values as ``spec`` says; ``rope=(head_dim, theta)`` is needed for
    ``spec.pre_rope`` (the positions' rotation)."""

    def __init__(self, n_layers: int, spec: KVSpec, *, rope: tuple | None = None):
        super().__init__(n_layers)
        if not isinstance(spec, KVSpec):
            raise TypeError(f"spec must be a KVSpec, got {type(spec).__name__}")
        if spec.pre_rope and rope is None:
            raise ValueError("spec.pre_rope needs rope=(head_dim, theta) to un-rotate and rotate the keys")
        self.spec, self.rope = spec, rope
        self._kq = [_Store(spec, spec.key_axis) for _ in range(n_layers)]
        self._vq = [_Store(spec, spec.value_axis) for _ in range(n_layers)]
        self._kf = [None] * n_layers               # float32 [B, nkv, n - qp, hd]: the positions not quantized
        self._vf = [None] * n_layers

    def __repr__(self):
        return f"QuantizedKVCache({self.spec}, {self.length} positions, {self.nbytes} bytes)"

    def _rotate(self, k, start: int, inverse: bool):
        from minq.models.llama import rope, rope_tables

        cos, sin = rope_tables(np.arange(start, start + k.shape[2]), *self.rope)
        return rope(k, cos, -sin if inverse else sin)

    def append(self, layer: int, k, v) -> KVRead:
        sp, n, T = self.spec, self._len[layer], k.shape[2]
        if not (_all_finite(k) and _all_finite(v)):
            raise ValueError(f"k or v of layer {layer} contains NaN or Inf: a quantized cache cannot store it")
        sp.check_head_dim(k.shape[3])
        qp0, qp1 = sp.quantized_prefix(n), sp.quantized_prefix(n + T)
        if self._kf[layer] is not None and self._kf[layer].shape[:2] != k.shape[:2]:
            raise ValueError(f"cache holds batch/heads {self._kf[layer].shape[:2]}, got k of shape {k.shape}")
        kf = k if self._kf[layer] is None else np.concatenate([self._kf[layer], k], axis=2)   # [.., n+T-qp0, hd]
        vf = v if self._vf[layer] is None else np.concatenate([self._vf[layer], v], axis=2)
        if qp1 > qp0:                                                       # positions leaving the float window
            new_k = kf[:, :, :qp1 - qp0]
            new_k = self._rotate(new_k, qp0, True) if sp.pre_rope else new_k
            self._kq[layer].append(_hadamard(new_k, sp))
            self._vq[layer].append(_hadamard(vf[:, :, :qp1 - qp0], sp))
        kq, vq = self._dequantized(layer)                                    # [B, nkv, qp1, hd] or None
        self._kf[layer], self._vf[layer] = kf[:, :, qp1 - qp0:], vf[:, :, qp1 - qp0:]
        self._len[layer] = n + T
        if kq is None:                                                      # nothing quantized yet
            return KVRead(kf, vf)
        k_all = np.concatenate([kq[:, :, :qp0], kf], axis=2)                # [B, nkv, n + T, hd]
        v_all = np.concatenate([vq[:, :, :qp0], vf], axis=2)
        qstart = np.array([sp.quantized_prefix(n + r + 1) for r in range(T)], np.int64)
        return KVRead(k_all, v_all, kq, vq, qstart)

    def _dequantized(self, layer: int):
        """The quantized positions of layer ``layer`` as attention reads them (keys rotated back when stored
        before RoPE): ``(kq, vq)`` float32 ``[B, n_kv, qp, hd]``, or ``(None, None)``."""
        kq, vq = self._kq[layer].read(), self._vq[layer].read()
        if kq is not None:
            kq, vq = _hadamard(kq, self.spec), _hadamard(vq, self.spec)
        if kq is not None and self.spec.pre_rope:
            kq = self._rotate(kq, 0, False)
        return kq, vq

    def update(self, layer: int, k, v):
        """Append; all positions as stored now (quantized ones dequantized): what a next token reads."""
        r = self.append(layer, k, v)
        if r.kq is None:
            return r.k, r.v
        Q = r.kq.shape[2]
        return np.concatenate([r.kq, r.k[:, :, Q:]], axis=2), np.concatenate([r.vq, r.v[:, :, Q:]], axis=2)

    def read(self, layer: int):
        """``(k, v)`` float32 ``[B, n_kv, S, hd]`` as stored: the quantized positions dequantized, the rest."""
        if self._kf[layer] is None:
            raise ValueError(f"layer {layer} holds no positions yet")
        kq, vq = self._dequantized(layer)
        if kq is None:
            return self._kf[layer], self._vf[layer]
        return np.concatenate([kq, self._kf[layer]], axis=2), np.concatenate([vq, self._vf[layer]], axis=2)

    @property
    def nbytes(self) -> int:
        """Bytes held: the codes and scales of the quantized positions, the float32 rest."""
        stored = sum(s.nbytes for s in self._kq + self._vq)
        return stored + sum(int(a.nbytes) for a in self._kf + self._vf if a is not None)


def kv_bytes(spec: KVSpec | None, *, n_layers: int, n_kv_heads: int, head_dim: int, tokens: int,
             batch: int = 1, float_bytes: int = 4) -> int:
    """Bytes a cache of ``tokens`` positions holds: ``spec`` None = float (``float_bytes`` a number);
    else the quantized prefix ``qp(tokens)`` as codes + scales, the rest in float. Equals
    ``QuantizedKVCache.nbytes`` for ``float_bytes=4`` (tests/test_kvcache.py)."""
    check_int(tokens, "tokens", lo=0)
    per_pos = batch * n_layers * n_kv_heads * head_dim                       # numbers per position, K or V
    if spec is None:
        return 2 * per_pos * tokens * float_bytes
    spec.check_head_dim(head_dim)
    qp = spec.quantized_prefix(tokens)
    scale_bytes = 4                                                          # int: s and m float16; FP8: s float32
    total = 2 * per_pos * (tokens - qp) * float_bytes
    groups = per_pos * qp // spec.group                  # groups of `group` numbers, K or V (either axis)
    return total + 2 * groups * (nbytes_per_row(spec.group, spec.bits) + scale_bytes)
