"""Call data and values: how a call names its method and carries its arguments (canonical).

A call's ``data`` is::

    method   varbytes   UTF-8 name, 1 to MAX_METHOD_SIZE bytes
    args     varint count (<= MAX_ARGS), then that many values

A deployment's ``data`` (a call transaction to the zero address) is::

    code     varbytes   the WebAssembly module, at most MAX_CODE_SIZE bytes
    args     varint count, then values (passed to the module's ``init`` export, if any)

A *value* is a tag byte and its payload, each canonical as in :mod:`qoin.encoding.codec`::

    0x00 uint      varint64
    0x01 bytes     varbytes (<= MAX_VALUE_BYTES)
    0x02 string    varbytes of UTF-8 (<= MAX_VALUE_BYTES)
    0x03 address   32 bytes
    0x04 bool      u8, 0 or 1
    0x05 list      varint count (<= MAX_ARGS), then values (nested at most MAX_NESTING deep)

Return data is free-form bytes; by convention one value (the CLI shows it decoded when it is one).
Built-in actors take and return values; WebAssembly contracts read the raw argument bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from qoin.crypto.address import ADDRESS_SIZE, Address
from qoin.encoding.codec import DecodeError, NonCanonicalInteger, Reader, UnknownVersion, Writer

MAX_METHOD_SIZE = 64
MAX_ARGS = 64
MAX_VALUE_BYTES = 64 * 1024
MAX_NESTING = 8
MAX_CODE_SIZE = 256 * 1024
"""Largest WebAssembly module a deployment may carry."""

TAG_UINT, TAG_BYTES, TAG_STRING, TAG_ADDRESS, TAG_BOOL, TAG_LIST = range(6)

Value = int | bytes | str | Address | bool | tuple["Value", ...]
"""What a value decodes to (``bool`` is checked before ``int``: it is its subclass)."""


class AbiError(DecodeError):
    """Call data or a value that is not canonical, or a value that cannot be encoded."""


@dataclass(frozen=True)
class Call:
    """A decoded call: the method and its arguments."""

    method: str
    """Name of the method (a WebAssembly export, or a built-in actor's method)."""
    args: bytes
    """The canonical encoding of the argument list (count, then values)."""

    def values(self) -> tuple[Value, ...]:
        """The arguments, decoded."""
        return decode_args(self.args)


@dataclass(frozen=True)
class Deploy:
    """A decoded deployment: the module and the arguments of its ``init``."""

    code: bytes
    """The WebAssembly module."""
    args: bytes
    """Encoded argument list for ``init``."""


def _write_value(writer: Writer, value: Value, depth: int) -> None:
    if depth > MAX_NESTING:
        raise AbiError(f"values nest at most {MAX_NESTING} deep")
    if isinstance(value, bool):
        writer.u8(TAG_BOOL).u8(1 if value else 0)
    elif isinstance(value, int):
        writer.u8(TAG_UINT).varint(value)
    elif isinstance(value, bytes):
        writer.u8(TAG_BYTES).var_bytes(value, MAX_VALUE_BYTES)
    elif isinstance(value, str):
        writer.u8(TAG_STRING).var_bytes(value.encode(), MAX_VALUE_BYTES)
    elif isinstance(value, Address):
        writer.u8(TAG_ADDRESS).fixed(value.raw, ADDRESS_SIZE)
    elif isinstance(value, tuple):
        if len(value) > MAX_ARGS:
            raise AbiError(f"a list holds at most {MAX_ARGS} values")
        writer.u8(TAG_LIST).varint(len(value))
        for item in value:
            _write_value(writer, item, depth + 1)
    else:
        raise AbiError(f"cannot encode a {type(value).__name__} as a value")


def _read_value(reader: Reader, depth: int) -> Value:
    if depth > MAX_NESTING:
        raise AbiError(f"values nest at most {MAX_NESTING} deep")
    tag = reader.u8()
    if tag == TAG_UINT:
        return reader.varint()
    if tag == TAG_BYTES:
        return reader.var_bytes(MAX_VALUE_BYTES)
    if tag == TAG_STRING:
        raw = reader.var_bytes(MAX_VALUE_BYTES)
        try:
            return raw.decode()
        except UnicodeDecodeError:
            raise AbiError("a string value is not UTF-8") from None
    if tag == TAG_ADDRESS:
        return Address(reader.fixed(ADDRESS_SIZE))
    if tag == TAG_BOOL:
        flag = reader.u8()
        if flag > 1:
            raise NonCanonicalInteger(f"a bool is 0 or 1, got {flag}")
        return flag == 1
    if tag == TAG_LIST:
        return tuple(_read_value(reader, depth + 1) for _ in range(reader.count(MAX_ARGS)))
    raise UnknownVersion(f"unknown value tag {tag}")


def encode_value(value: Value) -> bytes:
    """Canonical encoding of one value."""
    writer = Writer()
    _write_value(writer, value, 0)
    return writer.bytes()


def decode_value(data: bytes) -> Value:
    """Inverse of :func:`encode_value`; trailing bytes are an error."""
    reader = Reader(data)
    value = _read_value(reader, 0)
    reader.finish()
    return value


def encode_args(values: Sequence[Value]) -> bytes:
    """Canonical encoding of an argument list."""
    if len(values) > MAX_ARGS:
        raise AbiError(f"at most {MAX_ARGS} arguments, got {len(values)}")
    writer = Writer().varint(len(values))
    for value in values:
        _write_value(writer, value, 1)
    return writer.bytes()


def read_args(reader: Reader) -> tuple[Value, ...]:
    """Read an argument list from a reader."""
    return tuple(_read_value(reader, 1) for _ in range(reader.count(MAX_ARGS)))


def decode_args(data: bytes) -> tuple[Value, ...]:
    """Inverse of :func:`encode_args`."""
    reader = Reader(data)
    values = read_args(reader)
    reader.finish()
    return values


def encode_call(method: str, values: Sequence[Value] = ()) -> bytes:
    """Call data for ``method(*values)``."""
    name = method.encode()
    if not 1 <= len(name) <= MAX_METHOD_SIZE:
        raise AbiError(f"a method name is 1 to {MAX_METHOD_SIZE} bytes, got {len(name)}")
    return Writer().var_bytes(name, MAX_METHOD_SIZE).raw(encode_args(values)).bytes()


def decode_call(data: bytes) -> Call:
    """Split call data into method and (checked, still encoded) arguments."""
    reader = Reader(data)
    raw = reader.var_bytes(MAX_METHOD_SIZE)
    if not raw:
        raise AbiError("the method name is empty")
    try:
        method = raw.decode()
    except UnicodeDecodeError:
        raise AbiError("the method name is not UTF-8") from None
    start = reader.position
    read_args(reader)
    args = reader.consumed_since(start)
    reader.finish()
    return Call(method, args)


def encode_deploy(code: bytes, values: Sequence[Value] = ()) -> bytes:
    """Deployment data for ``code`` with ``init`` arguments ``values``."""
    return Writer().var_bytes(code, MAX_CODE_SIZE).raw(encode_args(values)).bytes()


def decode_deploy(data: bytes) -> Deploy:
    """Split deployment data into module and (checked, still encoded) ``init`` arguments."""
    reader = Reader(data)
    code = reader.var_bytes(MAX_CODE_SIZE)
    start = reader.position
    read_args(reader)
    args = reader.consumed_since(start)
    reader.finish()
    return Deploy(code, args)
