"""Chapter 03 — bit packing (minq/packing.py).

Oracles: an independent bit-stream packer written here with ``np.packbits(bitorder="little")``,
the chunk reference ``pack_reference``/``unpack_reference`` vs the Numba kernels behind ``pack``/``unpack``
(bit for bit), golden bytes derived by hand from the layout diagram in the module docstring, and
the torch path vs the NumPy path.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from minq.packing import chunk_codes, nbytes_per_row, pack, pack_reference, unpack, unpack_reference
from minq.testing import assert_equal

try:
    import torch
except ImportError:  # pragma: no cover - torch is in the dev install; the `device` tests then have no params
    torch = None

# function-scoped `device` fixture inside @given: the fixture value does not change between examples
_with_fixture = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@st.composite
def codes_and_bits(draw, max_lead_dims=2, max_n=40):
    """``(q, bits)``: uint8 codes ``q [..., n]`` with every code < 2^bits, 0-2 leading dims."""
    bits = draw(st.integers(1, 8))
    lead = draw(hnp.array_shapes(min_dims=0, max_dims=max_lead_dims, min_side=1, max_side=4))
    n = draw(st.integers(1, max_n))
    q = draw(hnp.arrays(np.uint8, (*lead, n), elements=st.integers(0, (1 << bits) - 1)))
    return q, bits


def pack_bits_oracle(q, bits):
    """Independent oracle: write each code's ``bits`` low bits, LSB first, into one bit stream per
    row (padded with zero codes to a whole chunk), then cut the stream into bytes, LSB first."""
    n = q.shape[-1]
    c = chunk_codes(bits)
    q = np.concatenate([q, np.zeros((*q.shape[:-1], -n % c), np.uint8)], axis=-1)  # pad to whole chunks
    stream = (q[..., None] >> np.arange(bits)) & 1                                  # [..., n, bits] LSB first
    stream = stream.reshape(*q.shape[:-1], -1).astype(np.uint8)                      # [..., n * bits]
    return np.packbits(stream, axis=-1, bitorder="little")                          # [..., n * bits / 8]


# --- layout: golden bytes, derived by hand from the docstring diagram ----------------------------------


def test_chunk_codes_table():
    # c = 8 / gcd(bits, 8): the smallest number of codes that fills whole bytes
    assert [chunk_codes(b) for b in range(1, 9)] == [8, 4, 8, 2, 8, 4, 8, 1]


@pytest.mark.parametrize(
    "codes, bits, golden",
    [
        # 4-bit: q0 in the low nibble.  [1, 2] -> 0010 0001
        ([1, 2], 4, [0b0010_0001]),
        ([15, 0], 4, [0b0000_1111]),
        ([0, 15], 4, [0b1111_0000]),
        # odd row length: the missing q1 is a zero pad code -> 0000 0011
        ([1, 2, 3], 4, [0b0010_0001, 0b0000_0011]),
        # 2-bit: byte = q3 q3 q2 q2 q1 q1 q0 q0 -> 11 10 01 00
        ([0, 1, 2, 3], 2, [0b11_10_01_00]),
        ([3, 0, 0, 0, 2], 2, [0b00_00_00_11, 0b00_00_00_10]),
        # 3-bit, codes 0..7 (q_i = i), stream bit k of the row is bit (k - 3i) of q_i:
        #   byte 0 = q2[1:0] q1 q0       = 10 001 000
        #   byte 1 = q5[0] q4 q3 q2[2]   = 1 100 011 0
        #   byte 2 = q7 q6 q5[2:1]       = 111 110 10
        (list(range(8)), 3, [0b10_001_000, 0b1_100_011_0, 0b111_110_10]),
        # one 3-bit code still takes a whole 3-byte chunk (zero padded)
        ([5], 3, [0b00000_101, 0, 0]),
        # 1-bit: bit i of the byte is q_i
        ([1, 0, 1, 1, 0, 0, 0, 1], 1, [0b1000_1101]),
        # 8-bit: a copy
        ([0, 7, 200, 255], 8, [0, 7, 200, 255]),
    ],
)
def test_golden_bytes(codes, bits, golden):
    q = np.array(codes, np.uint8)
    want = np.array(golden, np.uint8)
    assert_equal(pack(q, bits), want, name="pack (numba)")
    assert_equal(pack_reference(q, bits), want, name="pack_reference")
    assert_equal(pack_bits_oracle(q, bits), want, name="oracle")
    assert_equal(unpack(want, bits, len(codes)), q, name="unpack")


def test_golden_hex_of_docstring_examples():
    assert pack(np.array([1, 2], np.uint8), 4).tolist() == [0x21]
    assert pack(np.arange(4, dtype=np.uint8), 2).tolist() == [0xE4]
    assert pack(np.arange(8, dtype=np.uint8), 3).tolist() == [0x88, 0xC6, 0xFA]


@pytest.mark.parametrize(
    "n, bits, nbytes",
    [(1, 4, 1), (2, 4, 1), (3, 4, 2), (1, 3, 3), (8, 3, 3), (9, 3, 6), (1, 8, 1), (5, 8, 5),
     (5, 1, 1), (9, 1, 2), (3, 2, 1), (5, 2, 2), (1, 6, 3), (4, 6, 3), (5, 6, 6), (1, 5, 5),
     (8, 5, 5), (7, 7, 7), (128, 4, 64), (128, 3, 48), (128, 2, 32)],
)
def test_nbytes_per_row_table(n, bits, nbytes):
    assert nbytes_per_row(n, bits) == nbytes
    assert pack(np.zeros(n, np.uint8), bits).shape == (nbytes,)


@given(st.integers(1, 300), st.integers(1, 8))
def test_nbytes_per_row_formula(n, bits):
    c = chunk_codes(bits)
    nb = nbytes_per_row(n, bits)
    assert nb == -(-n // c) * c * bits // 8
    assert nb >= -(-n * bits // 8)                  # never fewer bytes than the bits need
    assert nb - -(-n * bits // 8) < c * bits // 8   # and less than one chunk of padding
    if n % c == 0:
        assert nb * 8 == n * bits                   # no padding at all


# --- round trip and fast path == reference == oracle ----------------------------------------------------


@given(codes_and_bits())
def test_round_trip(qb):
    q, bits = qb
    packed = pack(q, bits)
    assert packed.dtype == np.uint8
    assert packed.shape == (*q.shape[:-1], nbytes_per_row(q.shape[-1], bits))
    assert_equal(unpack(packed, bits, q.shape[-1]), q, name="unpack(pack(q))")


@given(codes_and_bits())
def test_numba_equals_reference_and_oracle(qb):
    q, bits = qb
    n = q.shape[-1]
    packed = pack(q, bits)
    assert_equal(packed, pack_reference(q, bits), name="pack (numba) vs pack_reference")
    assert_equal(packed, pack_bits_oracle(q, bits), name="pack vs bit-stream oracle")
    assert_equal(unpack(packed, bits, n), unpack_reference(packed, bits, n), name="unpack (numba) vs unpack_reference")


@given(codes_and_bits(max_lead_dims=2))
def test_leading_dims_are_rows(qb):
    q, bits = qb
    n = q.shape[-1]
    packed = pack(q, bits)
    rows = np.stack([pack(r, bits) for r in q.reshape(-1, n)])       # one row at a time
    assert_equal(packed.reshape(-1, packed.shape[-1]), rows, name="N-D vs row by row")


@given(st.integers(1, 8), st.integers(1, 40), st.integers(0, 2**32 - 1))
def test_every_byte_pattern_round_trips(bits, n_bytes_chunks, seed):
    # unpack then pack is the identity on any bytes when the row has no padding
    c, nb = chunk_codes(bits), chunk_codes(bits) * bits // 8
    packed = np.random.default_rng(seed).integers(0, 256, (3, n_bytes_chunks * nb), dtype=np.uint8)
    q = unpack(packed, bits, n_bytes_chunks * c)
    assert int(q.max()) < 1 << bits
    assert_equal(pack(q, bits), packed, name="pack(unpack(bytes))")


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32, np.uint64])
def test_wider_unsigned_codes_pack_the_same(dtype):
    q = np.random.default_rng(0).integers(0, 8, (4, 13)).astype(np.uint8)
    assert_equal(pack(q.astype(dtype), 3), pack(q, 3))


def test_non_contiguous_input():
    q = np.random.default_rng(0).integers(0, 16, (10, 12)).astype(np.uint8)
    assert_equal(pack(q.T, 4), pack(np.ascontiguousarray(q.T), 4))
    assert_equal(pack(q[:, ::2], 4), pack(q[:, ::2].copy(), 4))
    packed = pack(q, 4)
    assert_equal(unpack(np.asfortranarray(packed), 4, 12), q)


# --- torch path ------------------------------------------------------------------------------------------


@_with_fixture
@given(codes_and_bits())
def test_torch_equals_numpy(device, qb):
    q, bits = qb
    n = q.shape[-1]
    qt = torch.as_tensor(q, device=device)
    packed_t = pack(qt, bits)
    assert isinstance(packed_t, torch.Tensor) and packed_t.dtype == torch.uint8
    assert packed_t.device.type == device
    assert_equal(packed_t, pack(q, bits), name="torch pack vs numpy")
    unpacked_t = unpack(packed_t, bits, n)
    assert unpacked_t.dtype == torch.uint8 and unpacked_t.device.type == device
    assert_equal(unpacked_t, q, name="torch unpack")


@pytest.mark.parametrize("dtype", ["int16", "int32", "int64"])
def test_torch_signed_dtypes_with_valid_codes(device, dtype):
    # torch had no uint16/32 for long: minq accepts its signed integer dtypes for codes
    q = np.random.default_rng(0).integers(0, 4, (3, 7)).astype(np.uint8)
    qt = torch.as_tensor(q.astype(np.int64), device=device).to(getattr(torch, dtype))
    assert_equal(pack(qt, 2), pack(q, 2))


# --- bad inputs: a clear error naming the parameter ----------------------------------------------------


@pytest.mark.parametrize(
    "q, bits, exc, match",
    [
        (np.array([16], np.uint8), 4, ValueError, r"q has codes >= 2\^bits"),
        (np.array([0, 4], np.uint8), 2, ValueError, r"q has codes >= 2\^bits"),
        (np.array([2], np.uint8), 1, ValueError, r"q has codes >= 2\^bits"),
        (np.array([0, 300], np.uint16), 4, ValueError, r"q has codes >= 2\^bits"),
        (np.array([1, 2], np.int8), 4, TypeError, "q must have an unsigned integer dtype"),
        (np.array([1, 2], np.int64), 4, TypeError, "q must have an unsigned integer dtype"),
        (np.array([1.0, 2.0], np.float32), 4, TypeError, "q must have an unsigned integer dtype"),
        (np.array([True, False]), 1, TypeError, "q must have an unsigned integer dtype"),
        ([1, 2], 4, TypeError, "q must be a numpy array or torch tensor"),
        (np.zeros(0, np.uint8), 4, ValueError, "q is empty"),
        (np.zeros((3, 0), np.uint8), 4, ValueError, "q is empty"),
        (np.array(3, np.uint8), 4, ValueError, "q must have at least one dimension"),
        (np.array([1], np.uint8), 0, ValueError, "bits must be in 1..8"),
        (np.array([1], np.uint8), 9, ValueError, "bits must be in 1..8"),
        (np.array([1], np.uint8), 4.0, TypeError, "bits must be an int"),
        (np.array([1], np.uint8), True, TypeError, "bits must be an int"),
    ],
)
def test_pack_rejects(q, bits, exc, match):
    with pytest.raises(exc, match=match):
        pack(q, bits)


def test_torch_pack_rejects_codes_too_large(device):
    with pytest.raises(ValueError, match=r"q has codes >= 2\^bits"):
        pack(torch.tensor([0, 16], dtype=torch.uint8, device=device), 4)
    with pytest.raises(TypeError, match="q must have an unsigned integer dtype"):
        pack(torch.tensor([0.0, 1.0], device=device), 4)


def test_pack_rejects_wide_codes_at_8_bits():
    with pytest.raises(ValueError, match=r"q has codes >= 2\^bits"):
        pack(np.array([300, 1], np.uint16), 8)


def test_torch_pack_rejects_negative_codes(device):
    # torch codes may be signed dtypes (no uint16/32), but never negative: [-1, 2] once packed to 0x1F
    with pytest.raises(ValueError, match="q has negative codes"):
        pack(torch.tensor([-1, 2], device=device), 4)


_P4 = pack(np.arange(10, dtype=np.uint8), 4)  # 10 4-bit codes -> 5 bytes


@pytest.mark.parametrize(
    "packed, bits, n, exc, match",
    [
        (_P4, 4, 12, ValueError, r"packed rows have 5 bytes, but n=12"),     # wrong n
        (_P4[:4], 4, 10, ValueError, r"packed rows have 4 bytes, but n=10"),  # truncated row
        (_P4, 3, 10, ValueError, r"packed rows have 5 bytes, but n=10 codes of 3 bits"),  # wrong bits
        (_P4, 4, 0, ValueError, "n must be >= 1"),
        (_P4, 4, -1, ValueError, "n must be >= 1"),
        (_P4, 4, 10.0, TypeError, "n must be an int"),
        (_P4, 4, True, TypeError, "n must be an int"),
        (_P4.astype(np.uint16), 4, 10, TypeError, "packed must be uint8"),
        (_P4.astype(np.int8), 4, 10, TypeError, "packed must have an unsigned integer dtype"),
        (_P4.astype(np.float32), 4, 10, TypeError, "packed must have an unsigned integer dtype"),
        (_P4.tolist(), 4, 10, TypeError, "packed must be a numpy array or torch tensor"),
        (np.zeros(0, np.uint8), 4, 1, ValueError, "packed is empty"),
        (_P4, 0, 10, ValueError, "bits must be in 1..8"),
        (_P4, 9, 10, ValueError, "bits must be in 1..8"),
    ],
)
def test_unpack_rejects(packed, bits, n, exc, match):
    with pytest.raises(exc, match=match):
        unpack(packed, bits, n)


def test_torch_unpack_rejects(device):
    p = torch.as_tensor(_P4, device=device)
    with pytest.raises(ValueError, match="packed rows have 4 bytes"):
        unpack(p[:4], 4, 10)
    with pytest.raises(TypeError, match="packed must be uint8"):
        unpack(p.to(torch.int16), 4, 10)
