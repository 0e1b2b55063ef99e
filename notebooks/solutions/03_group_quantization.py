"""Worked solutions of chapter 03's build exercises (notebooks/03_group_quantization.ipynb).

Each ``exercise_<k>`` passes ``minq.exercises.ch03.exercise_<k>``; tests/test_exercises.py runs them.
The answer key of the recall and derive questions is in 03_group_quantization.md.
"""

import numpy as np


def exercise_6(q):
    """4-bit packing: even codes in the low nibble, odd codes in the high nibble of each byte."""
    q = np.asarray(q, np.uint8)
    return (q[0::2] | (q[1::2] << 4)).astype(np.uint8)


def exercise_7(W, bits, g):
    """Symmetric groups of g: one float32 scale per group, codes offset by z = 2^(bits-1)."""
    W = np.asarray(W, np.float32)
    out, n_in = W.shape
    Wg = W.reshape(out, n_in // g, g)                                 # [out, in] -> [out, in/g, g]
    half = np.float32(2 ** (bits - 1) - 1)
    amax = np.abs(Wg).max(axis=-1, keepdims=True)                     # [out, in/g, 1]
    s = np.where(amax > 0, amax / half, np.float32(1)).astype(np.float32)
    z = np.float32(2 ** (bits - 1))
    q = np.clip(np.rint(Wg / s) + z, 0, 2**bits - 1)
    return (s * (q - z)).reshape(out, n_in)                           # -> [out, in]


def exercise_8(packed, bits, n):
    """Unpack one row: read the bytes as a little-endian bit stream and cut it into codes of `bits`."""
    stream = np.unpackbits(np.asarray(packed, np.uint8), bitorder="little")   # bit i of the stream
    codes = stream[: n * bits].reshape(n, bits)                       # row i = bits of code i, LSB first
    weights = (1 << np.arange(bits)).astype(np.uint16)                # 1, 2, 4, ...
    return (codes @ weights).astype(np.uint8)
