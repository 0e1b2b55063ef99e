"""One bad-input matrix over every public function of chapters 01-03 and the registry.

Each row: a call with one bad argument, the exception type, and a regex that must name the
parameter in the message (a one-letter name as a word, ``\\bx\\b``: a bare "x" or "s" is found in
"max" or "must"). Bad input never returns garbage.
"""

import numpy as np
import pytest

from minq import affine, packing, registry
from minq.formats import FORMATS
from minq.groups import GroupedAffine, group, quantize_groups, resolve_group_size, ungroup

X = np.linspace(-1, 1, 16, dtype=np.float32).reshape(2, 8)
QP = affine.choose_qparams(X, bits=4)
Q = affine.quantize(X, QP)
NAN = X.copy()
NAN[0, 0] = np.nan
INF = X.copy()
INF[1, 1] = np.inf
EMPTY = np.zeros((0, 8), np.float32)
BAD_QP = affine.QParams(np.float32(0.0), np.float32(0.0), 4)
NAN_QP = affine.QParams(np.float32(np.nan), np.float32(0.0), 4)

CASES = [
    # chapter 02: affine
    ("choose_qparams NaN", lambda: affine.choose_qparams(NAN, bits=4), ValueError, r"\bx\b.*NaN"),
    ("choose_qparams Inf", lambda: affine.choose_qparams(INF, bits=4), ValueError, r"\bx\b.*Inf"),
    ("choose_qparams empty", lambda: affine.choose_qparams(EMPTY, bits=4), ValueError, r"\bx\b.*empty"),
    ("choose_qparams int dtype", lambda: affine.choose_qparams(X.astype(np.int32), bits=4), TypeError, r"\bx\b"),
    ("choose_qparams list", lambda: affine.choose_qparams([1.0, 2.0], bits=4), TypeError, r"\bx\b"),
    ("choose_qparams bits 0", lambda: affine.choose_qparams(X, bits=0), ValueError, "bits"),
    ("choose_qparams bits 9", lambda: affine.choose_qparams(X, bits=9), ValueError, "bits"),
    ("choose_qparams bits float", lambda: affine.choose_qparams(X, bits=4.0), TypeError, "bits"),
    ("choose_qparams bits bool", lambda: affine.choose_qparams(X, bits=True), TypeError, "bits"),
    ("choose_qparams sym 1 bit", lambda: affine.choose_qparams(X, bits=1, symmetric=True), ValueError, "bits"),
    ("choose_qparams zero_point", lambda: affine.choose_qparams(X, bits=4, zero_point="half"), ValueError,
     "zero_point"),
    ("choose_qparams scale_dtype", lambda: affine.choose_qparams(X, bits=4, scale_dtype="int8"), ValueError,
     "scale_dtype"),
    ("choose_qparams axis", lambda: affine.choose_qparams(X, bits=4, axis=2), ValueError, "axis"),
    ("choose_qparams fp16 overflow", lambda: affine.choose_qparams(X * 1e30, bits=4, scale_dtype="float16"),
     ValueError, "float16"),
    ("quantize NaN", lambda: affine.quantize(NAN, QP), ValueError, r"\bx\b"),
    ("quantize zero scale", lambda: affine.quantize(X, BAD_QP), ValueError, r"\bqp\.s\b"),
    ("quantize NaN scale", lambda: affine.quantize(X, NAN_QP), ValueError, r"\bqp\.s\b"),
    ("quantize not QParams", lambda: affine.quantize(X, (1.0, 0.0)), TypeError, "qp"),
    ("quantize rounding", lambda: affine.quantize(X, QP, rounding="up"), ValueError, "rounding"),
    ("quantize stochastic no rng", lambda: affine.quantize(X, QP, rounding="stochastic"), ValueError, "rng"),
    ("quantize stochastic bad rng", lambda: affine.quantize(X, QP, rounding="stochastic", rng=0), TypeError,
     "rng"),
    ("dequantize float codes", lambda: affine.dequantize(Q.astype(np.float32), QP), TypeError, r"\bq\b"),
    ("dequantize signed codes", lambda: affine.dequantize(Q.astype(np.int8), QP), TypeError, r"\bq\b"),
    ("dequantize codes > qmax", lambda: affine.dequantize(Q + 16, QP), ValueError, r"\bq\b"),
    ("dequantize empty", lambda: affine.dequantize(Q[:0], QP), ValueError, r"\bq\b"),
    ("fake_quantize Inf", lambda: affine.fake_quantize(INF, QP), ValueError, r"\bx\b"),
    # chapter 03: groups and packing
    ("quantize_groups NaN", lambda: quantize_groups(NAN, bits=4), ValueError, r"\bW\b"),
    ("quantize_groups Inf", lambda: quantize_groups(INF, bits=4), ValueError, r"\bW\b"),
    ("quantize_groups empty", lambda: quantize_groups(EMPTY, bits=4), ValueError, r"\bW\b"),
    ("quantize_groups 1-D", lambda: quantize_groups(X.ravel(), bits=4), ValueError, r"\bW\b"),
    ("quantize_groups 3-D", lambda: quantize_groups(X[None], bits=4), ValueError, r"\bW\b"),
    ("quantize_groups int", lambda: quantize_groups(X.astype(np.int64), bits=4), TypeError, r"\bW\b"),
    ("quantize_groups bits 9", lambda: quantize_groups(X, bits=9), ValueError, "bits"),
    ("quantize_groups g not dividing", lambda: quantize_groups(X, bits=4, group_size=3), ValueError,
     "group_size"),
    ("quantize_groups g negative", lambda: quantize_groups(X, bits=4, group_size=-2), ValueError, "group_size"),
    ("quantize_groups g float", lambda: quantize_groups(X, bits=4, group_size=1.5), ValueError, "group_size"),
    ("quantize_groups zero_point", lambda: quantize_groups(X, bits=4, zero_point="x"), ValueError, "zero_point"),
    ("resolve_group_size 576/128", lambda: resolve_group_size(128, 576), ValueError, "group_size"),
    ("group 1-D", lambda: group(X.ravel(), 4), ValueError, r"\bW\b"),
    ("ungroup 2-D", lambda: ungroup(X), ValueError, "Wg"),
    ("from_codes s shape", lambda: GroupedAffine.from_codes(Q, np.ones((2, 3), np.float32), None, bits=4,
                                                             group_size=4), ValueError, r"\bs\b"),
    ("from_codes s zero", lambda: GroupedAffine.from_codes(Q, np.zeros((2, 2), np.float32), None, bits=4,
                                                            group_size=4), ValueError, r"\bs\b"),
    ("from_codes z range", lambda: GroupedAffine.from_codes(Q, np.ones((2, 2), np.float32),
                                                             np.full((2, 2), 16.0, np.float32), bits=4,
                                                             group_size=4), ValueError, r"\bz\b"),
    ("from_codes q 1-D", lambda: GroupedAffine.from_codes(Q.ravel(), np.ones((1, 1), np.float32), None, bits=4,
                                                           group_size=None), ValueError, r"\bq\b"),
    ("pack codes too large", lambda: packing.pack(np.array([16], np.uint8), 4), ValueError, r"\bq\b"),
    ("pack signed", lambda: packing.pack(np.array([1], np.int8), 4), TypeError, r"\bq\b"),
    ("pack float", lambda: packing.pack(np.array([1.0]), 4), TypeError, r"\bq\b"),
    ("pack empty", lambda: packing.pack(np.zeros(0, np.uint8), 4), ValueError, r"\bq\b"),
    ("pack bits 0", lambda: packing.pack(np.array([0], np.uint8), 0), ValueError, "bits"),
    ("unpack truncated", lambda: packing.unpack(np.zeros(3, np.uint8), 4, 8), ValueError, "packed"),
    ("unpack n", lambda: packing.unpack(np.zeros(3, np.uint8), 4, 0), ValueError, r"\bn\b"),
    ("unpack dtype", lambda: packing.unpack(np.zeros(4, np.uint16), 4, 8), TypeError, "packed"),
    # chapter 01: float formats
    ("FORMATS unknown", lambda: FORMATS["float7_e3m3"], (KeyError, ValueError), "float8_e4m3fn"),
    ("encode int dtype", lambda: FORMATS["float8_e4m3fn"].encode(np.array([1, 2])), TypeError, r"\bx\b"),
    ("encode empty", lambda: FORMATS["float8_e4m3fn"].encode(np.zeros(0, np.float32)), ValueError, r"\bx\b"),
    ("encode list", lambda: FORMATS["float8_e4m3fn"].encode([1.0]), TypeError, r"\bx\b"),
    ("decode float codes", lambda: FORMATS["float8_e4m3fn"].decode(np.array([1.0])), TypeError, "codes"),
    ("decode signed codes", lambda: FORMATS["float8_e4m3fn"].decode(np.array([1], np.int8)), TypeError, "codes"),
    ("decode code too large", lambda: FORMATS["float4_e2m1fn"].decode(np.array([16], np.uint8)), ValueError,
     "codes"),
    ("decode empty", lambda: FORMATS["float8_e5m2"].decode(np.zeros(0, np.uint8)), ValueError, "codes"),
    # registry
    ("registry unknown", lambda: registry.get("rtn-w4x"), ValueError, "scheme"),
    ("registry bits", lambda: registry.get("rtn-w12"), ValueError, "bits"),
]


@pytest.mark.parametrize("call, exc, match", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_rejected_with_a_clear_error(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
