from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qoin.encoding.codec import (
    NonCanonicalInteger,
    OversizeField,
    Reader,
    TrailingBytes,
    TruncatedInput,
    Writer,
    encode_varint,
)


@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_varint_roundtrip(value: int) -> None:
    reader = Reader(encode_varint(value))
    assert reader.varint() == value
    reader.finish()


@given(st.binary(max_size=12))
def test_varint_decoding_is_canonical(data: bytes) -> None:
    reader = Reader(data)
    try:
        value = reader.varint()
    except (NonCanonicalInteger, OversizeField, TruncatedInput):
        return
    consumed = len(data) - reader.remaining
    assert encode_varint(value) == data[:consumed]


def test_varint_known_encodings() -> None:
    assert encode_varint(0) == b"\x00"
    assert encode_varint(127) == b"\x7f"
    assert encode_varint(128) == b"\x80\x01"
    assert encode_varint(300) == b"\xac\x02"


@pytest.mark.parametrize("data", [b"\x80\x00", b"\xff\x00", b"\x80\x80\x00"])
def test_non_minimal_varint_rejected(data: bytes) -> None:
    with pytest.raises(NonCanonicalInteger):
        Reader(data).varint()


def test_varint_over_width_rejected() -> None:
    with pytest.raises(OversizeField):
        Reader(encode_varint(2**64, bits=65)).varint(64)
    with pytest.raises(OversizeField):
        Reader(b"\xff" * 11).varint(64)
    with pytest.raises(OversizeField):
        encode_varint(2**64)
    with pytest.raises(OversizeField):
        encode_varint(-1)


def test_truncated_and_trailing() -> None:
    with pytest.raises(TruncatedInput):
        Reader(b"\x80").varint()
    with pytest.raises(TruncatedInput):
        Reader(b"\x05abc").var_bytes(10)
    reader = Reader(b"\x00\x01")
    reader.u8()
    with pytest.raises(TrailingBytes):
        reader.finish()


def test_length_bound_checked_before_reading() -> None:
    # A claimed length of 2^40 must be refused from the prefix alone.
    data = encode_varint(2**40) + b"x"
    with pytest.raises(OversizeField):
        Reader(data).var_bytes(1024)
    with pytest.raises(OversizeField):
        Reader(encode_varint(10**9)).count(100)


def test_writer_bounds() -> None:
    with pytest.raises(OversizeField):
        Writer().var_bytes(b"abc", 2)
    with pytest.raises(OversizeField):
        Writer().fixed(b"abc", 4)
    assert Writer().u16(0x0102).var_bytes(b"ab", 2).bytes() == b"\x01\x02\x02ab"
