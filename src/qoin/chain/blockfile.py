"""Block files: a sequence of ``varint(length) ‖ block encoding`` records (``qoin chain
import/export``). Every length is bounded by the block size limit before it is read."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import BinaryIO

from qoin.chain.block import MAX_BLOCK_SIZE, Block
from qoin.encoding.codec import (
    NonCanonicalInteger,
    OversizeField,
    TruncatedInput,
    encode_varint,
)

_MAX_LENGTH_BYTES = 4


def write_blocks(handle: BinaryIO, blocks: Iterable[Block]) -> int:
    """Append blocks to an open file; return how many were written."""
    count = 0
    for block in blocks:
        data = block.encode()
        handle.write(encode_varint(len(data)) + data)
        count += 1
    return count


def _read_length(handle: BinaryIO) -> int | None:
    value = 0
    for index in range(_MAX_LENGTH_BYTES):
        byte = handle.read(1)
        if not byte:
            if index == 0:
                return None
            raise TruncatedInput("block file ends inside a length prefix")
        value |= (byte[0] & 0x7F) << (7 * index)
        if not byte[0] & 0x80:
            if byte[0] == 0 and index > 0:
                raise NonCanonicalInteger("non-minimal length prefix in block file")
            return value
    raise OversizeField("length prefix too long in block file")


def read_blocks(handle: BinaryIO) -> Iterator[Block]:
    """Decode the blocks of a block file one by one (any DecodeError names the problem)."""
    while (length := _read_length(handle)) is not None:
        if length > MAX_BLOCK_SIZE:
            raise OversizeField(f"block record of {length} bytes exceeds {MAX_BLOCK_SIZE}")
        data = handle.read(length)
        if len(data) != length:
            raise TruncatedInput("block file ends inside a block")
        yield Block.decode(data)
