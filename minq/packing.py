"""Bit packing of b-bit integer codes (b = 1..8) into bytes — part of chapter 03.

Codes are packed along the last axis as one little-endian bit stream per row: code ``i`` of a row
occupies stream bits ``[i*b, (i+1)*b)``, least significant bit first. A chunk of
``c = 8 / gcd(b, 8)`` codes fills exactly ``c*b/8`` bytes:

    4-bit, 2 codes -> 1 byte           byte 0 = q1 q1 q1 q1 q0 q0 q0 q0    (q0 in the low nibble)
    2-bit, 4 codes -> 1 byte           byte 0 = q3 q3 q2 q2 q1 q1 q0 q0
    3-bit, 8 codes -> 3 bytes          byte 0 = q2 q2 q1 q1 q1 q0 q0 q0
                                       byte 1 = q5 q4 q4 q4 q3 q3 q3 q2
                                       byte 2 = q7 q7 q7 q6 q6 q6 q5 q5
    8-bit, 1 code  -> 1 byte           (a copy)

A row whose length is not a multiple of ``c`` is padded with zero codes; ``unpack`` takes the true
row length ``n`` and drops the padding. ``nbytes_per_row(n, bits) = ceil(n / c) * c * bits / 8``.

The readable reference (``pack_reference``, ``unpack_reference``) works on whole chunks with integer
shifts, on NumPy arrays and torch tensors alike; the Numba kernels behind ``pack``/``unpack`` walk the
bit stream with a 64-bit accumulator; tests prove all equal.
Notebook: ``notebooks/03_group_quantization.ipynb``.
"""

from __future__ import annotations

from math import gcd

import numpy as np

from minq._backend import is_torch, namespace
from minq._checks import check_bits, check_int, check_uint_array
from minq._jit import njit, prange

__all__ = ["pack", "unpack", "pack_reference", "unpack_reference", "chunk_codes", "nbytes_per_row"]


def chunk_codes(bits: int) -> int:
    """Codes per whole-byte chunk: ``8 / gcd(bits, 8)`` (4-bit: 2, 2-bit: 4, 3-bit: 8, 8-bit: 1)."""
    return 8 // gcd(bits, 8)


def nbytes_per_row(n: int, bits: int) -> int:
    """Bytes that a packed row of ``n`` codes takes (padding to a whole chunk included)."""
    c = chunk_codes(bits)
    return -(-n // c) * c * bits // 8


def _check_codes(q, bits, name="q"):
    check_uint_array(q, name)
    if q.ndim < 1:
        raise ValueError(f"{name} must have at least one dimension")
    if bool((q > (1 << bits) - 1).any()):
        raise ValueError(f"{name} has codes >= 2^bits = {1 << bits} (bits={bits})")


# --- reference: whole chunks with integer shifts (NumPy or torch) ------------------------------------


def pack_reference(q, bits: int):
    """The readable ``pack``: codes ``q [..., n]`` -> bytes, one chunk of ``c`` codes at a time.

    Each chunk's ``c`` codes shifted into place make one ``c * bits``-bit integer, which is cut into its
    ``c * bits / 8`` bytes. Runs on NumPy arrays and torch tensors; equals the Numba kernel byte for byte.
    """
    xp = namespace(q)
    c = chunk_codes(bits)
    nb = c * bits // 8                                    # bytes per chunk
    v = xp.pad_last(xp.int64(q), -q.shape[-1] % c)        # [..., n] zero-padded to whole chunks
    v = v.reshape(*q.shape[:-1], -1, c)                   # -> [..., n/c, c]
    word = (v << (xp.arange(c, q) * bits)).sum(-1)        # [..., n/c] one integer of c*bits bits per chunk
    out = (word[..., None] >> (xp.arange(nb, q) * 8)) & 0xFF   # [..., n/c, nb]
    return xp.to_uint8(out.reshape(*q.shape[:-1], -1))    # [..., n/c * nb]


def unpack_reference(packed, bits: int, n: int):
    """The readable ``unpack``: bytes ``[..., nbytes]`` -> codes ``[..., n]``, a chunk at a time."""
    xp = namespace(packed)
    c = chunk_codes(bits)
    nb = c * bits // 8
    v = xp.int64(packed).reshape(*packed.shape[:-1], -1, nb)      # [..., nbytes] -> [..., chunks, nb]
    word = (v << (xp.arange(nb, packed) * 8)).sum(-1)             # [..., chunks]
    q = (word[..., None] >> (xp.arange(c, packed) * bits)) & ((1 << bits) - 1)   # [..., chunks, c]
    return xp.to_uint8(q.reshape(*packed.shape[:-1], -1)[..., :n])               # [..., n]


# --- fast path (numba) --------------------------------------------------------------------------------
# Byte-aligned widths (1, 2, 4, 8 bits: c = 8 / bits codes per byte) get a per-byte loop whose
# constants LLVM sees, so it vectorises; 3, 5, 6 and 7 bits walk the bit stream with a 64-bit
# accumulator. Rows run in parallel.


@njit
def _pack_row_aligned(qrow, prow, c, bits):
    n = qrow.shape[0]
    full = n // c
    for j in range(full):
        b = np.uint8(0)
        for k in range(c):
            b |= qrow[j * c + k] << np.uint8(k * bits)
        prow[j] = b
    for i in range(full * c, n):  # a last, partial byte (zero padded)
        prow[full] |= qrow[i] << np.uint8((i - full * c) * bits)


@njit
def _unpack_row_aligned(prow, qrow, c, bits):
    mask = np.uint8((1 << bits) - 1)
    n = qrow.shape[0]
    full = n // c
    for j in range(full):
        b = prow[j]
        for k in range(c):
            qrow[j * c + k] = (b >> np.uint8(k * bits)) & mask
    for i in range(full * c, n):
        qrow[i] = (prow[full] >> np.uint8((i - full * c) * bits)) & mask


@njit
def _pack_row_stream(qrow, prow, bits):
    acc = np.uint64(0)
    filled = 0
    j = 0
    for i in range(qrow.shape[0]):
        acc |= np.uint64(qrow[i]) << np.uint64(filled)
        filled += bits
        while filled >= 8:
            prow[j] = np.uint8(acc & np.uint64(0xFF))
            acc >>= np.uint64(8)
            filled -= 8
            j += 1
    if filled > 0:
        prow[j] = np.uint8(acc & np.uint64(0xFF))


@njit
def _unpack_row_stream(prow, qrow, bits):
    mask = np.uint64((1 << bits) - 1)
    acc = np.uint64(0)
    filled = 0
    j = 0
    for i in range(qrow.shape[0]):
        while filled < bits:
            acc |= np.uint64(prow[j]) << np.uint64(filled)
            filled += 8
            j += 1
        qrow[i] = np.uint8(acc & mask)
        acc >>= np.uint64(bits)
        filled -= bits


@njit(parallel=True)
def _pack_kernel(q, bits, out):
    # q [rows, n] uint8 -> out [rows, nbytes] uint8 (zero-initialised)
    for r in prange(q.shape[0]):
        if bits == 8:
            out[r, :] = q[r, :]
        elif bits == 4:
            _pack_row_aligned(q[r], out[r], 2, 4)
        elif bits == 2:
            _pack_row_aligned(q[r], out[r], 4, 2)
        elif bits == 1:
            _pack_row_aligned(q[r], out[r], 8, 1)
        else:
            _pack_row_stream(q[r], out[r], bits)


@njit(parallel=True)
def _unpack_kernel(packed, bits, n, out):
    # packed [rows, nbytes] uint8 -> out [rows, n] uint8
    for r in prange(packed.shape[0]):
        if bits == 8:
            out[r, :] = packed[r, :n]
        elif bits == 4:
            _unpack_row_aligned(packed[r], out[r], 2, 4)
        elif bits == 2:
            _unpack_row_aligned(packed[r], out[r], 4, 2)
        elif bits == 1:
            _unpack_row_aligned(packed[r], out[r], 8, 1)
        else:
            _unpack_row_stream(packed[r], out[r], bits)


# --- public API ---------------------------------------------------------------------------------------


def pack(q, bits: int):
    """Pack codes ``q [..., n]`` (unsigned, each < 2^bits) into bytes ``[..., nbytes_per_row(n, bits)]``.

    NumPy arrays go through the Numba kernel, torch tensors through ``pack_reference``: same bytes.
    """
    bits = check_bits(bits)
    _check_codes(q, bits)
    if is_torch(q):
        return pack_reference(q, bits)
    n = q.shape[-1]
    q2 = np.ascontiguousarray(q.reshape(-1, n), dtype=np.uint8)      # [..., n] -> [rows, n]
    out = np.zeros((q2.shape[0], nbytes_per_row(n, bits)), np.uint8)
    _pack_kernel(q2, bits, out)
    return out.reshape(*q.shape[:-1], -1)


def unpack(packed, bits: int, n: int):
    """Inverse of ``pack``: bytes ``[..., nbytes]`` -> codes ``[..., n]`` uint8."""
    bits = check_bits(bits)
    check_uint_array(packed, "packed")
    if packed.ndim < 1:
        raise ValueError("packed must have at least one dimension (rows of bytes), got a 0-d array")
    if is_torch(packed):
        import torch

        if packed.dtype != torch.uint8:
            raise TypeError(f"packed must be uint8, got {packed.dtype}")
    elif packed.dtype != np.uint8:
        raise TypeError(f"packed must be uint8, got {packed.dtype}")
    n = check_int(n, "n", lo=1)
    need = nbytes_per_row(int(n), bits)
    if packed.shape[-1] != need:
        raise ValueError(f"packed rows have {packed.shape[-1]} bytes, but n={n} codes of {bits} bits "
                         f"take {need} (truncated or wrong n/bits)")
    if is_torch(packed):
        return unpack_reference(packed, bits, int(n))
    p2 = np.ascontiguousarray(packed.reshape(-1, need))
    out = np.empty((p2.shape[0], int(n)), np.uint8)
    _unpack_kernel(p2, bits, int(n), out)
    return out.reshape(*packed.shape[:-1], int(n))
