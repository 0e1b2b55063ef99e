"""Chapter 03 — group quantization: one (s, z) per group of g weights along the input dimension.

The granularity descriptor of all of minq (README.md, "Conventions") is ``group_size``:

    None or 0   per tensor    one (s, z) for the whole W [out, in]
    -1          per channel   one (s, z) per output row:            s [out, 1]
    g > 0       per group     one (s, z) per g inputs of each row:  s [out, in / g]

A group size that does not divide ``in`` is rejected, unless asked for: ``quantize_groups(...,
ragged=True)`` (and ``quantize_ragged`` for any per-group quantizer) makes the last group of each row
the ``in mod g`` inputs that remain, stored as ``minq.gptq`` stores its ragged groups: at width
``gcd(g, in)``, each group's parameters repeated (``ragged_group_size`` records ``g``; ``nbytes``
counts each group's parameters once, as a ragged layout stores them). Smaller groups follow
the local range more closely — the error bound ``|w - w_hat| <= s/2`` only shrinks from per tensor to
per channel to per group — but every group stores its own scale (and zero point):

    bits_per_weight = bits + (scale_bits + zero_bits) / g        e.g. 4 + (16 + 4) / 64 = 4.31

``GroupedAffine`` is the container that RTN, GPTQ and AWQ all produce. It implements the quantized
weight protocol: ``dequantize() -> float32 [out, in]``, ``shape``, ``nbytes``, ``bits_per_weight``.
Codes and integer zero points are stored bit-packed (``minq.packing``), scales as float16 by
default (rounded *up*, so the bound holds with the stored scale).

Reference: Dettmers & Zettlemoyer, "The case for 4-bit precision" (2023) on group size; GPTQ and
AWQ both use this layout. Notebook: ``notebooks/03_group_quantization.ipynb``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from minq import affine
from minq._backend import is_torch, namespace
from minq._checks import (
    check_bits,
    check_choice,
    check_float_array,
    check_group_size,
    check_uint_array,
    is_int,
    ragged_layout,
)
from minq._jit import njit, prange
from minq.packing import pack, unpack, unpack_reference

__all__ = ["resolve_group_size", "group", "ungroup", "quantize_groups", "quantize_ragged", "GroupedAffine",
           "quantize_codes_reference", "dequantize_reference"]


def resolve_group_size(group_size, n_in: int) -> int:
    """The group width along the input dimension: ``n_in`` for per channel and per tensor, else ``g``.

    Raises ValueError naming ``group_size`` when it is not None/0/-1/positive or does not divide ``n_in``
    (``minq._checks.check_group_size``, the one validator of the descriptor).
    """
    return check_group_size(group_size, n_in)


def _per_tensor(group_size) -> bool:
    return group_size is None or group_size == 0


def group(W, group_size):
    """``W [out, in] -> [out, in / g, g]`` (a view): row r, group j holds ``W[r, j*g:(j+1)*g]``."""
    check_float_array(W, "W", ndim=2, finite=False)
    g = resolve_group_size(group_size, W.shape[1])
    return W.reshape(W.shape[0], W.shape[1] // g, g)


def ungroup(Wg):
    """``[out, in / g, g] -> W [out, in]``, the inverse of ``group``."""
    check_float_array(Wg, "Wg", ndim=3, finite=False)
    return Wg.reshape(Wg.shape[0], Wg.shape[1] * Wg.shape[2])


@dataclass(frozen=True)
class GroupedAffine:
    """A weight ``W [out, in]`` quantized as ``w_hat = s * (q - z)`` per group.

    packed: uint8 [out, in * bits / 8]    codes q, bit-packed along each row (minq.packing)
    s:      float16/32 [out, n_groups]    scales ([1, 1] per tensor)
    z:      None (symmetric: z = 2^(bits-1), not stored)
            | uint8 [out * n_groups * bits / 8] integer zero points, packed as one stream
            | float16/32 [out, n_groups] float zero points
    ragged_group_size: None, or the group size ``g`` the parameters were chosen for when ``g`` does
        not divide ``in`` (``quantize_ragged``): groups ``[j g, (j+1) g)`` and a last one of ``in mod g``
        inputs, stored at width ``group_size = gcd(g, in)`` with each group's parameters repeated.
    """

    packed: object
    s: object
    z: object
    shape: tuple
    bits: int
    group_size: object
    symmetric: bool = False
    zero_point: str = "int"
    ragged_group_size: object = None

    @classmethod
    def from_codes(cls, q, s, z, *, bits: int, group_size, zero_point: str = "int") -> GroupedAffine:
        """Build the container from unpacked parts (what GPTQ/AWQ produce).

        q [out, in] uint8 codes; s [out, n_groups] (or [1, 1] per tensor) float16/float32 scales,
        all > 0; z None (symmetric, z = 2^(bits-1)), or [out, n_groups] zero points: integers
        in [0, 2^bits - 1] for ``zero_point="int"`` (packed on storage), stored in ``s``'s dtype
        for ``zero_point="float"``.
        """
        bits = check_bits(bits)
        check_uint_array(q, "q")
        if q.ndim != 2:
            raise ValueError(f"q must be 2-D [out, in], got shape {tuple(q.shape)}")
        check_choice(zero_point, "zero_point", affine.ZERO_POINT)
        out, n_in = q.shape
        g = resolve_group_size(group_size, n_in)
        want = (1, 1) if _per_tensor(group_size) else (out, n_in // g)
        check_float_array(s, "s")
        if tuple(s.shape) != want:
            raise ValueError(f"s must have shape {want} for group_size={group_size!r}, got {tuple(s.shape)}")
        if bool((s <= 0).any()):
            raise ValueError("s must be > 0 everywhere")
        if z is not None:
            if zero_point == "int" and (is_torch(z) and not z.is_floating_point()
                                        or not is_torch(z) and np.asarray(z).dtype.kind in "ui"):
                z = namespace(z).f32(z)  # integer zero points may come as integer arrays
            check_float_array(z, "z")
            if tuple(z.shape) != want:
                raise ValueError(f"z must have shape {want}, got {tuple(z.shape)}")
            if zero_point == "int":
                zf = z
                if bool(((zf < 0) | (zf > (1 << bits) - 1) | (zf != zf.round())).any()):
                    raise ValueError(f"z must hold integers in [0, {(1 << bits) - 1}] for zero_point='int'")
                z = pack(namespace(z).to_uint8(z).reshape(-1), bits)  # [out, G] -> one packed stream
            else:
                z = z.to(s.dtype) if is_torch(z) else z.astype(s.dtype)
        return cls(pack(q, bits), s, z, (out, n_in), bits, group_size, z is None, zero_point)

    @property
    def n_groups(self) -> int:
        return self.s.shape[1]

    @property
    def g(self) -> int:
        """Group width along the input dimension."""
        return resolve_group_size(self.group_size, self.shape[1])

    @property
    def nbytes(self) -> int:
        """Bytes of storage: packed codes + scales + stored zero points (ragged groups: the parameters
        of each group counted once, ``ceil(in / g)`` per row, not the repeats of this container)."""
        xp = namespace(self.packed)
        if self.ragged_group_size is not None:
            out, n_in = self.shape
            n = out * -(-n_in // self.ragged_group_size)                # parameters of a ragged layout
            z_bytes = 0 if self.z is None else (-(-n * self.bits // 8) if self.zero_point == "int"
                                                else n * xp.itemsize(self.z))
            return xp.nbytes(self.packed) + n * xp.itemsize(self.s) + z_bytes
        z_bytes = 0 if self.z is None else xp.nbytes(self.z)
        return xp.nbytes(self.packed) + xp.nbytes(self.s) + z_bytes

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.nbytes / (self.shape[0] * self.shape[1])

    @property
    def codes(self):
        """Unpacked codes q [out, in] (uint8)."""
        return unpack(self.packed, self.bits, self.shape[1])

    def qparams(self) -> affine.QParams:
        """Per-group ``(s, z)`` as ``affine.QParams`` broadcastable to ``group(W)`` [out, n_groups, 1]."""
        s = self.s[..., None]
        xp = namespace(s)
        if self.z is None:
            z = xp.full(s.shape, float(1 << (self.bits - 1)), s)
        elif self.zero_point == "int":
            z = xp.f32(unpack(self.z, self.bits, xp.size(self.s))).reshape(*self.s.shape, 1)
        else:
            z = xp.f32(self.z)[..., None]
        return affine.QParams(s, z, self.bits, self.symmetric, self.zero_point)

    def dequantize(self):
        """``w_hat [out, in]`` float32: NumPy through one fused Numba unpack+dequantize pass, torch
        through ``dequantize_reference`` (the two equal bit for bit, tests/test_groups.py)."""
        if is_torch(self.packed):
            return dequantize_reference(self)
        qp = self.qparams()
        out, n_in = self.shape
        s = np.ascontiguousarray(np.broadcast_to(qp.s[..., 0], (out, n_in // self.g)), dtype=np.float32)
        z = np.ascontiguousarray(np.broadcast_to(qp.z[..., 0], s.shape), dtype=np.float32)
        W_hat = np.empty(self.shape, np.float32)
        _dequantize_kernel(self.packed, s, z, self.bits, self.g, W_hat)
        return W_hat


def group_codes(q, g, out):
    """Codes ``[out, in] -> [out, in / g, g]``."""
    return q.reshape(out, -1, g)


def ungroup_codes(qg):
    """Codes ``[out, in / g, g] -> [out, in]``."""
    return qg.reshape(qg.shape[0], -1)


# --- the readable reference: chapter 02's quantize / dequantize on the grouped weight ---------------


def quantize_codes_reference(Wg, qp: affine.QParams):
    """Codes ``q [out, in]`` of ``Wg [out, G, g]`` with one ``(s, z)`` per group (``qp``: s, z ``[out, G, 1]``):
    ``affine.quantize`` on the grouped weight, ungrouped. The Numba ``_quantize_kernel`` equals it."""
    return ungroup_codes(affine.quantize(Wg, qp))                       # [out, G, g] -> [out, in]


def dequantize_reference(c: GroupedAffine):
    """``w_hat [out, in] = s * (q - z)`` of a ``GroupedAffine``, group by group, with ``unpack_reference``
    and ``affine.dequantize``. The fused Numba unpack+dequantize of ``c.dequantize()`` equals it."""
    out, n_in = c.shape
    q = group_codes(unpack_reference(c.packed, c.bits, n_in), c.g, out)  # [out, in] -> [out, G, g]
    return ungroup(affine.dequantize(q, c.qparams()))


def quantize_groups(W, *, bits: int, group_size=-1, symmetric: bool = False, zero_point: str = "int",
                    scale_dtype: str = "float16", ragged: bool = False) -> GroupedAffine:
    """Round-to-nearest min-max quantization of ``W [out, in]`` per tensor / channel / group.

    Returns a ``GroupedAffine``. Guarantee (tests/test_groups.py): ``|W - W_hat| <= s/2 + 2^-22 (|W| + s)``
    elementwise, with ``s`` the stored scale of the element's group (float zero points: for
    elements inside the stored grid's range). The codes equal ``affine.quantize(group(W), c.qparams())``
    exactly: quantization uses the parameters as stored (a float zero point rounded to the scale dtype).

    ragged: when ``group_size`` does not divide ``in``, quantize with a ragged last group
    (``quantize_ragged``) instead of raising.
    """
    check_float_array(W, "W", ndim=2)
    bits = check_bits(bits)
    check_choice(zero_point, "zero_point", affine.ZERO_POINT)
    if not isinstance(ragged, bool):
        raise TypeError(f"ragged must be a bool, got {type(ragged).__name__}")
    out, n_in = W.shape
    if ragged and _is_ragged(group_size, n_in):
        return quantize_ragged(W, group_size, lambda Wp, g: quantize_groups(
            Wp, bits=bits, group_size=g, symmetric=symmetric, zero_point=zero_point, scale_dtype=scale_dtype))
    g = resolve_group_size(group_size, n_in)
    Wg = W.reshape(out, n_in // g, g)                                    # [out, in] -> [out, G, g]
    axis = None if _per_tensor(group_size) else -1
    qp = affine.choose_qparams(Wg, bits=bits, symmetric=symmetric, axis=axis, zero_point=zero_point,
                               scale_dtype=scale_dtype)                  # s, z [out, G, 1] (or [1, 1, 1])
    if zero_point == "float":  # quantize with the zero point as stored
        z = namespace(W).f32(qp.z.to(qp.s.dtype) if is_torch(W) else qp.z.astype(qp.s.dtype))
        qp = affine.QParams(qp.s, z, bits, False, "float")
    if is_torch(W):
        q = quantize_codes_reference(Wg, qp)
    else:
        s = np.ascontiguousarray(np.broadcast_to(qp.s[..., 0], (out, n_in // g)), dtype=np.float32)
        z = np.ascontiguousarray(np.broadcast_to(qp.z[..., 0], s.shape), dtype=np.float32)
        q = np.empty((out, n_in), np.uint8)
        _quantize_kernel(np.ascontiguousarray(W, dtype=np.float32), s, z, bits, g, zero_point == "float", q)
    z = None if symmetric else qp.z[..., 0]
    return GroupedAffine.from_codes(q, qp.s[..., 0], z, bits=bits, group_size=group_size,
                                    zero_point=zero_point)

def _is_ragged(group_size, n_in) -> bool:
    """A positive int group size that does not divide ``n_in`` (anything else: ``resolve_group_size``)."""
    return is_int(group_size) and group_size > 0 and n_in % group_size != 0


def quantize_ragged(W, group_size: int, quantize) -> GroupedAffine:
    """``W [out, in]`` in groups of ``g = group_size`` inputs and a ragged last group of ``in mod g``.

    quantize(W_part, group_size) -> GroupedAffine is any per-group quantizer (``quantize_groups``, an
    observer's RTN): it runs on ``W[:, :k g]`` with ``g`` (``k = in // g``) and on the remaining
    ``W[:, k g:]`` with ``-1`` (that tail is one group per row). The parts are joined in the layout of
    ``minq.gptq``'s ragged groups: codes side by side, parameters at width ``gcd(g, in)``, each
    repeated, ``ragged_group_size = g``. A ``g`` that divides ``in`` is passed through unchanged.
    """
    from dataclasses import replace

    check_float_array(W, "W", ndim=2)
    out, n_in = W.shape
    if not _is_ragged(group_size, n_in):
        return quantize(W, group_size)
    g = check_group_size(group_size, n_in, ragged=True)                  # g <= in
    k = n_in // g
    gs, reps = ragged_layout(g, n_in)                                     # stored width, columns per group
    head, tail = quantize(W[:, :k * g], g), quantize(W[:, k * g:], -1)
    for part in (head, tail):
        if not isinstance(part, GroupedAffine) or part.symmetric != head.symmetric \
                or part.zero_point != head.zero_point or part.bits != head.bits:
            raise ValueError("quantize must return GroupedAffine parts of one kind (bits, symmetry, zero point)")
    xp = namespace(W)
    cat, rep = xp.cat, xp.repeat
    q = cat([head.codes, tail.codes], axis=1)                             # [out, in]
    s = rep(cat([head.s, tail.s], axis=1), reps, axis=1)                  # [out, in / gs]
    z = None
    if not head.symmetric:
        z = rep(cat([head.qparams().z[..., 0], tail.qparams().z[..., 0]], axis=1), reps, axis=1)
    c = GroupedAffine.from_codes(q, s, z, bits=head.bits, group_size=gs, zero_point=head.zero_point)
    return replace(c, ragged_group_size=g)


# --- fast path (numba): fused quantize and fused unpack+dequantize, rows in parallel -----------------


@njit(parallel=True)
def _quantize_kernel(W, s, z, bits, g, float_zero_point, q):
    # W [out, in] float32, s/z [out, in/g] float32 -> q [out, in] uint8
    out, n_in = W.shape
    qmax = np.float32((1 << bits) - 1)
    for r in prange(out):
        for j in range(n_in // g):
            sj, zj = s[r, j], z[r, j]
            z_frac = np.float32(0.0)
            if float_zero_point:  # as affine.quantize: only the fraction of z joins the rounding
                z_frac = zj - np.floor(zj)
                zj = np.floor(zj)
            for i in range(j * g, (j + 1) * g):
                v = np.rint(W[r, i] / sj + z_frac) + zj
                q[r, i] = np.uint8(min(max(v, np.float32(0.0)), qmax))


@njit
def _dequantize_row_aligned(prow, s, z, g, wrow, c, bits):
    # bits in (1, 2, 4, 8), g % c == 0: a group starts on a byte boundary
    mask = np.uint8((1 << bits) - 1)
    for j in range(wrow.shape[0] // g):
        sj, zj = s[j], z[j]
        base = j * g
        for t in range(g // c):
            b = prow[base // c + t]
            for k in range(c):
                wrow[base + t * c + k] = sj * (np.float32((b >> np.uint8(k * bits)) & mask) - zj)


@njit
def _dequantize_row_stream(prow, s, z, g, wrow, bits):
    mask = np.uint64((1 << bits) - 1)
    acc = np.uint64(0)
    filled = 0
    k = 0
    for i in range(wrow.shape[0]):
        while filled < bits:
            acc |= np.uint64(prow[k]) << np.uint64(filled)
            filled += 8
            k += 1
        j = i // g
        wrow[i] = s[j] * (np.float32(acc & mask) - z[j])
        acc >>= np.uint64(bits)
        filled -= bits


@njit(parallel=True)
def _dequantize_kernel(packed, s, z, bits, g, W_hat):
    # packed [out, in*bits/8] uint8, s/z [out, in/g] float32 -> W_hat [out, in] float32
    for r in prange(W_hat.shape[0]):
        if bits == 4 and g % 2 == 0:
            _dequantize_row_aligned(packed[r], s[r], z[r], g, W_hat[r], 2, 4)
        elif bits == 8:
            _dequantize_row_aligned(packed[r], s[r], z[r], g, W_hat[r], 1, 8)
        elif bits == 2 and g % 4 == 0:
            _dequantize_row_aligned(packed[r], s[r], z[r], g, W_hat[r], 4, 2)
        else:
            _dequantize_row_stream(packed[r], s[r], z[r], g, W_hat[r], bits)
