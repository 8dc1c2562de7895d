"""Canonical binary encoding primitives.

Every consensus object (transactions, headers, blocks, signatures, public keys) is encoded with these
primitives and nothing else, so that the rules hold everywhere:

* integers are unsigned LEB128 *varints* that must be minimal (no redundant ``0x80``/``0x00``
  continuation bytes) and must fit the field's declared bit width;
* byte strings are either fixed-size (no length prefix) or length-prefixed with a minimal varint whose
  value is checked against the field's maximum *before* anything is allocated;
* a decoder consumes the whole input: trailing bytes are an error.

Together these make decoding injective: for every ``b`` that decodes, ``encode(decode(b)) == b``.
"""

from __future__ import annotations

from qoin.errors import QoinError

MAX_VARINT_BYTES_64 = 10
"""A 64-bit value needs at most ten 7-bit groups."""


class DecodeError(QoinError):
    """The input is not the canonical encoding of the expected object."""


class TruncatedInput(DecodeError):
    """The input ended before the object was complete."""


class TrailingBytes(DecodeError):
    """Bytes remain after the object was decoded."""


class NonCanonicalInteger(DecodeError):
    """An integer was not encoded in its unique minimal form."""


class OversizeField(DecodeError):
    """A length or integer exceeds the bound its field allows."""


class UnknownVersion(DecodeError):
    """A version or type byte names something this node does not know."""


def encode_varint(value: int, bits: int = 64) -> bytes:
    """Encode ``value`` (``0 <= value < 2**bits``) as a minimal unsigned LEB128 varint."""
    if value < 0 or value >> bits:
        raise OversizeField(f"integer {value} does not fit in {bits} bits")
    out = bytearray()
    while True:
        group = value & 0x7F
        value >>= 7
        if value:
            out.append(group | 0x80)
        else:
            out.append(group)
            return bytes(out)


class Writer:
    """Accumulates the canonical encoding of an object, field by field."""

    __slots__ = ("_parts",)

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def varint(self, value: int, bits: int = 64) -> Writer:
        """Append an unsigned integer of at most ``bits`` bits."""
        self._parts.append(encode_varint(value, bits))
        return self

    def u8(self, value: int) -> Writer:
        """Append one byte (versions, type tags, flags)."""
        if not 0 <= value <= 0xFF:
            raise OversizeField(f"byte value {value} out of range")
        self._parts.append(bytes((value,)))
        return self

    def u16(self, value: int) -> Writer:
        """Append a 16-bit big-endian integer (suite ids, ``nbits``)."""
        if not 0 <= value <= 0xFFFF:
            raise OversizeField(f"16-bit value {value} out of range")
        self._parts.append(value.to_bytes(2, "big"))
        return self

    def fixed(self, data: bytes, size: int) -> Writer:
        """Append exactly ``size`` bytes with no length prefix."""
        if len(data) != size:
            raise OversizeField(f"expected {size} bytes, got {len(data)}")
        self._parts.append(data)
        return self

    def var_bytes(self, data: bytes, max_size: int) -> Writer:
        """Append a varint length followed by ``data`` (at most ``max_size`` bytes)."""
        if len(data) > max_size:
            raise OversizeField(f"{len(data)} bytes exceed the bound of {max_size}")
        self._parts.append(encode_varint(len(data)))
        self._parts.append(data)
        return self

    def raw(self, data: bytes) -> Writer:
        """Append bytes that are already a canonical encoding (a nested object)."""
        self._parts.append(data)
        return self

    def bytes(self) -> bytes:
        """Return the accumulated encoding."""
        return b"".join(self._parts)


class Reader:
    """Decodes canonical fields from a byte string, refusing anything non-canonical."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = bytes(data)
        self._pos = 0

    @property
    def remaining(self) -> int:
        """Number of bytes not yet consumed."""
        return len(self._data) - self._pos

    @property
    def position(self) -> int:
        """Offset of the next byte to read."""
        return self._pos

    def consumed_since(self, start: int) -> bytes:
        """The bytes read since offset ``start`` (the exact encoding of what was decoded)."""
        return self._data[start : self._pos]

    def _take(self, size: int) -> bytes:
        pos = self._pos
        end = pos + size
        if size < 0 or end > len(self._data):
            raise TruncatedInput(f"need {size} bytes at offset {pos}, only {self.remaining} left")
        self._pos = end
        return self._data[pos:end]

    def varint(self, bits: int = 64) -> int:
        """Read a minimal unsigned LEB128 varint that fits in ``bits`` bits."""
        data, pos = self._data, self._pos
        if pos < len(data) and data[pos] < 0x80 and bits >= 7:  # one byte: always minimal
            self._pos = pos + 1
            return data[pos]
        max_len = (bits + 6) // 7
        value = 0
        for index in range(max_len):
            byte = self.u8()
            value |= (byte & 0x7F) << (7 * index)
            if not byte & 0x80:
                if byte == 0 and index > 0:
                    raise NonCanonicalInteger("varint has a redundant trailing zero group")
                if value >> bits:
                    raise OversizeField(f"integer does not fit in {bits} bits")
                return value
        raise OversizeField(f"varint longer than {max_len} bytes for a {bits}-bit field")

    def u8(self) -> int:
        """Read one byte."""
        pos = self._pos
        if pos >= len(self._data):
            raise TruncatedInput(f"need 1 byte at offset {pos}, none left")
        self._pos = pos + 1
        return self._data[pos]

    def u16(self) -> int:
        """Read a 16-bit big-endian integer."""
        return int.from_bytes(self._take(2), "big")

    def fixed(self, size: int) -> bytes:
        """Read exactly ``size`` bytes."""
        return self._take(size)

    def var_bytes(self, max_size: int) -> bytes:
        """Read a length-prefixed byte string of at most ``max_size`` bytes."""
        size = self.varint()
        if size > max_size:
            raise OversizeField(f"length {size} exceeds the bound of {max_size}")
        return self._take(size)

    def count(self, max_count: int) -> int:
        """Read the element count of a list, bounded before any element is decoded."""
        size = self.varint()
        if size > max_count:
            raise OversizeField(f"{size} elements exceed the bound of {max_count}")
        return size

    def finish(self) -> None:
        """Require that the whole input was consumed."""
        if self.remaining:
            raise TrailingBytes(f"{self.remaining} trailing bytes after the object")
