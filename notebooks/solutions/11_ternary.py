"""Worked solutions of chapter 11's build exercises (notebooks/11_ternary.ipynb).

Each ``exercise_<k>`` passes ``minq.exercises.ch11.exercise_<k>``; tests/test_exercises.py runs them.
The answer key of the recall and derive questions is in 11_ternary.md.
"""

import numpy as np

EPS = np.float32(1e-5)                       # BitNet b1.58's eps (minq.ternary.EPS)
TINY = np.float32(np.finfo(np.float32).tiny)  # 2^-126: the smallest activation scale


def _roundf(v):
    """C's ``roundf``/``lroundf``: round half AWAY from zero (np.rint rounds half to even)."""
    a = np.abs(v)
    fl = np.floor(a)
    return np.copysign(fl + np.floor(np.float32(2) * (a - fl)), v)   # + 1 when the fraction is >= 0.5


def exercise_7(W):
    """Absmean: one float32 gamma = mean|W| for the tensor, codes = clip(rint(W / (gamma + eps)), -1, 1)."""
    W = np.asarray(W, np.float32)
    gamma = np.float32(np.abs(W).mean(dtype=np.float64))              # float64 mean, rounded once
    d = gamma + EPS                                                   # float32 + float32: a float32 number
    codes = np.clip(np.rint(W / d), -1, 1).astype(np.int8)           # ties to even; int8: no -0.0 codes
    return codes.astype(np.float32) * gamma


def exercise_8(x):
    """TQ2_0: d = amax per 256, t = lroundf(x / d) + 1, four 2-bit codes a byte (interleaved), then fp16 d."""
    B = np.asarray(x, np.float32).reshape(-1, 256)                    # [nb, 256]
    d = np.abs(B).max(axis=1)                                         # [nb] float32
    with np.errstate(divide="ignore"):
        r = np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)   # a zero block: t = 1
    t = (_roundf(B * r[:, None]) + 1).astype(np.uint8)                # [nb, 256] in {0, 1, 2}
    # element 128c + 32n + m of a block goes to byte 32c + m, bits 2n..2n+1
    t = t.reshape(-1, 2, 4, 32)                                       # [nb, c, n, m]
    qs = t[:, :, 0] | (t[:, :, 1] << 2) | (t[:, :, 2] << 4) | (t[:, :, 3] << 6)   # [nb, c, m]
    qs = qs.reshape(-1, 64)                                           # byte 32c + m
    dbytes = d.astype("<f2").view(np.uint8).reshape(-1, 2)            # float16, little-endian
    return np.concatenate([qs, dbytes], axis=1).reshape(-1)           # [nb * 66]


def exercise_9(codes, gamma, x):
    """W1.58A8: int8 absmax x per token, then per row the sum of the xq where the code is +1 minus where it is -1."""
    codes = np.asarray(codes, np.int8)                                # [out, in]
    x = np.asarray(x, np.float32)                                     # [in]
    amax = np.abs(x).max()
    sx = np.maximum(amax / np.float32(127), TINY) if amax > 0 else np.float32(1)
    xq = np.clip(np.rint(x / sx), -128, 127).astype(np.int32)        # int32: the sums do not overflow
    plus = np.where(codes == 1, xq, 0).sum(axis=1, dtype=np.int32)    # sum of xq[codes[r] == 1], every row r
    minus = np.where(codes == -1, xq, 0).sum(axis=1, dtype=np.int32)  # sum of xq[codes[r] == -1]
    acc = plus - minus                                                # [out] int32: no multiplication
    return acc.astype(np.float32) * np.float32(sx) * np.float32(gamma)   # (acc * sx) * gamma, float32
