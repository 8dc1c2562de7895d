"""Headers and blocks: canonical encoding and bounds."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qoin.chain.block import MAX_BLOCK_SIZE, MAX_PAYOUTS, MAX_SIBLINGS, Block, Coinbase, Header
from qoin.encoding.codec import (
    DecodeError,
    OversizeField,
    TrailingBytes,
    UnknownVersion,
    encode_varint,
)
from tests.strategies import blocks, headers

SLOW = settings(
    max_examples=60, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


@given(headers)
def test_header_roundtrip(header: Header) -> None:
    assert Header.decode(header.encode()) == header
    assert header.encode().startswith(header.pow_prefix)
    assert len(header.block_hash) == 32


@SLOW
@given(blocks)
def test_block_roundtrip(block: Block) -> None:
    assert Block.decode(block.encode()) == block


@SLOW
@given(blocks, st.data())
def test_block_decoding_is_canonical_under_mutation(block: Block, data: st.DataObject) -> None:
    encoded = bytearray(block.encode())
    for _ in range(data.draw(st.integers(min_value=1, max_value=3))):
        position = data.draw(st.integers(min_value=0, max_value=len(encoded) - 1))
        encoded[position] = data.draw(st.integers(min_value=0, max_value=255))
    mutated = bytes(encoded)
    try:
        decoded = Block.decode(mutated)
    except DecodeError:
        return
    assert decoded.encode() == mutated


@given(headers)
def test_pow_fields_outside_prefix(header: Header) -> None:
    other = Header(**{**header.__dict__, "pow_r": bytes(32) if any(header.pow_r) else b"\x01" * 32})
    assert other.pow_prefix == header.pow_prefix
    assert other.block_hash != header.block_hash


@settings(max_examples=5)
@given(headers)
def test_header_rejections(header: Header) -> None:
    encoded = header.encode()
    with pytest.raises(UnknownVersion):
        Header.decode(b"\x02" + encoded[1:])
    with pytest.raises(TrailingBytes):
        Header.decode(encoded + b"\x00")


@settings(max_examples=5)
@given(headers)
def test_block_bounds(header: Header) -> None:
    too_many_siblings = header.encode() + encode_varint(MAX_SIBLINGS + 1)
    with pytest.raises(OversizeField):
        Block.decode(too_many_siblings)
    too_many_payouts = header.encode() + encode_varint(0) + encode_varint(MAX_PAYOUTS + 1)
    with pytest.raises(OversizeField):
        Block.decode(too_many_payouts)
    huge_count = header.encode() + encode_varint(0) + encode_varint(0) + encode_varint(2**40)
    with pytest.raises(OversizeField):
        Block.decode(huge_count)
    with pytest.raises(OversizeField):
        Block.decode(bytes(MAX_BLOCK_SIZE + 1))
    with pytest.raises(OversizeField):
        Block(header, (header,) * (MAX_SIBLINGS + 1), Coinbase(()), ()).encode()
