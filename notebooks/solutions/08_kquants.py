"""Worked solutions of chapter 08's build exercises (notebooks/08_kquants.ipynb).

Each ``exercise_<k>`` passes ``minq.exercises.ch08.exercise_<k>``; tests/test_exercises.py runs them.
The answer key of the recall and derive questions is in 08_kquants.md.
"""

import numpy as np


def exercise_9(data):
    """Q4_0 bytes -> values: read the fp16 scale, split each byte into two nibbles, x_hat = d (q - 8)."""
    data = np.ascontiguousarray(data, np.uint8)                       # [nb, 18]
    d = data[:, :2].copy().view("<f2").astype(np.float32)             # [nb, 1]: bytes 0-1, little-endian fp16
    qs = data[:, 2:]                                                  # [nb, 16]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1)                  # low nibbles: e_0..15, high: e_16..31
    return (q.astype(np.float32) - np.float32(8)) * d                 # float32 throughout


def exercise_10(sc, m):
    """Q4_K's 6-bit scales and mins -> 12 bytes: j < 4 whole in bytes 0-7; j >= 4 split into a nibble
    (bytes 8-11) and two high bits parked in the unused top bits of bytes 0-7."""
    sc, m = np.asarray(sc, np.uint8), np.asarray(m, np.uint8)       # [nb, 8] each, values 0..63
    s = np.empty((len(sc), 12), np.uint8)
    s[:, 0:4] = sc[:, :4] | (sc[:, 4:] >> 4) << 6                   # sc_0..3, top bits: high 2 bits of sc_4..7
    s[:, 4:8] = m[:, :4] | (m[:, 4:] >> 4) << 6                     # m_0..3, top bits: high 2 bits of m_4..7
    s[:, 8:12] = (sc[:, 4:] & 0x0F) | (m[:, 4:] & 0x0F) << 4        # low nibbles of sc_4..7 and m_4..7
    return s


def exercise_11(x):
    """Q5_0: d = max / -16, q = min(31, trunc(x * (1/d) + 16.5)); fp16 d, the 32 fifth bits, 16 nibble bytes."""
    x = np.asarray(x, np.float32)                                     # [nb, 32]
    nb = len(x)
    mx = x[np.arange(nb), np.argmax(np.abs(x), axis=1)]               # signed value of largest |x| (first on ties)
    d = (mx / np.float32(-16)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
    v = x * inv[:, None] + np.float32(16.5)                           # float32, >= 0.5: trunc == floor
    q = np.minimum(31, v.astype(np.int32)).astype(np.uint32)          # [nb, 32] codes 0..31
    qh = ((q >> 4) << np.arange(32, dtype=np.uint32)).sum(axis=1, dtype=np.uint32)   # bit i = bit 4 of q_i
    qs = ((q[:, :16] & 15) | (q[:, 16:] & 15) << 4).astype(np.uint8)
    out = np.empty((nb, 22), np.uint8)
    out[:, 0:2] = d.astype("<f2").reshape(nb, 1).view(np.uint8)
    out[:, 2:6] = qh.astype("<u4").reshape(nb, 1).view(np.uint8)
    out[:, 6:] = qs
    return out


def exercise_12(v):
    """IQ4_NL's nearest table entry: the first entry above v (searchsorted), then the lower neighbour
    only when strictly nearer; the ends clamp."""
    T = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], np.float32)
    v = np.asarray(v, np.float32)
    up = np.clip(np.searchsorted(T, v, side="right"), 1, 15)           # T[up - 1] <= v < T[up]
    idx = np.where(v - T[up - 1] < T[up] - v, up - 1, up)               # float32 distances; a tie goes up
    return np.where(v <= T[0], 0, np.where(v >= T[15], 15, idx)).astype(np.uint8)
