"""The one container format of AI jobs: datasets, inference inputs and models (docs/ai.md).

Pure Python (neither PyTorch nor numpy), used by the client and by the job program. A file is::

    b"QOINTF1\\n"                       magic, 8 bytes
    u32 big-endian                      the header's length in bytes (at most 1 MiB)
    header                              canonical JSON (sorted keys, no spaces, UTF-8):
                                        {"arrays": [{"name", "dtype", "shape", "offset",
                                        "length"}...], "meta": {...}}
    array bytes                         each array's raw little-endian bytes, one after the
                                        other in the header's order, from offset 0

Only one encoding of given contents is valid (canonical header, arrays packed in order, nothing
after the last one), so the same contents always give the same bytes. Every length is checked
against the file's size before anything is read or allocated. No pickle: a file is data, never
code.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAGIC = b"QOINTF1\n"
HEADER_LIMIT = 1 << 20
"""The largest header, in bytes."""
DTYPES = {"float32": 4, "int64": 8, "uint8": 1}
"""The array element types and their sizes in bytes."""
MAX_DIMS = 8
MAX_ARRAYS = 4096
MAX_NAME = 200
PREFIX = len(MAGIC) + 4


class TensorFileError(ValueError):
    """A file is not a valid tensor file (the message says why), or cannot be read."""


@dataclass(frozen=True)
class Array:
    """One named array: its element type, shape and raw little-endian bytes."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    data: bytes

    @property
    def count(self) -> int:
        """Its number of elements."""
        return math.prod(self.shape)


@dataclass(frozen=True)
class TensorFile:
    """A file's metadata and arrays."""

    meta: dict[str, Any]
    arrays: tuple[Array, ...]

    def get(self, name: str) -> Array | None:
        """The array called ``name``, if there is one."""
        for array in self.arrays:
            if array.name == name:
                return array
        return None

    def names(self) -> list[str]:
        return [array.name for array in self.arrays]


def canonical(value: object) -> bytes:
    """``value`` as canonical JSON (sorted keys, no spaces, UTF-8; no NaN or infinity)."""
    try:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TensorFileError(f"the metadata is not plain JSON: {exc}") from exc
    return text.encode()


def _check_array(array: Array) -> None:
    if not isinstance(array.name, str) or not 0 < len(array.name) <= MAX_NAME:
        raise TensorFileError(f"an array name must be 1 to {MAX_NAME} characters")
    if array.dtype not in DTYPES:
        raise TensorFileError(
            f"array {array.name!r}: dtype {array.dtype!r} is not one of {sorted(DTYPES)}"
        )
    shape = array.shape
    if not isinstance(shape, tuple) or len(shape) > MAX_DIMS:
        raise TensorFileError(f"array {array.name!r}: a shape is a tuple of at most {MAX_DIMS}")
    for dim in shape:
        if type(dim) is not int or dim < 0:
            raise TensorFileError(f"array {array.name!r}: shape {list(shape)} is not sizes >= 0")
    if len(array.data) != math.prod(shape) * DTYPES[array.dtype]:
        raise TensorFileError(
            f"array {array.name!r}: {len(array.data)} bytes do not hold {array.dtype} "
            f"of shape {list(shape)}"
        )


def encode(meta: dict[str, Any], arrays: Sequence[Array]) -> bytes:
    """The file holding ``meta`` and ``arrays``."""
    if not isinstance(meta, dict):
        raise TensorFileError("the metadata must be a JSON object")
    if len(arrays) > MAX_ARRAYS:
        raise TensorFileError(f"at most {MAX_ARRAYS} arrays in a file")
    entries = []
    offset = 0
    seen: set[str] = set()
    for array in arrays:
        _check_array(array)
        if array.name in seen:
            raise TensorFileError(f"array {array.name!r} appears twice")
        seen.add(array.name)
        entries.append(
            {
                "dtype": array.dtype,
                "length": len(array.data),
                "name": array.name,
                "offset": offset,
                "shape": list(array.shape),
            }
        )
        offset += len(array.data)
    header = canonical({"arrays": entries, "meta": meta})
    if len(header) > HEADER_LIMIT:
        raise TensorFileError(f"the header is {len(header)} bytes, over {HEADER_LIMIT}")
    parts = [MAGIC, struct.pack(">I", len(header)), header]
    parts += [array.data for array in arrays]
    return b"".join(parts)


def write(path: Path, meta: dict[str, Any], arrays: Sequence[Array]) -> None:
    """Write the file holding ``meta`` and ``arrays`` to ``path`` (through a temporary file
    beside it, renamed into place)."""
    data = encode(meta, arrays)
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(temporary, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise TensorFileError(f"cannot write {path}: {exc}") from exc


def _header(prefix: bytes, size: int) -> int:
    """The header length that a file of ``size`` bytes starting with ``prefix`` declares."""
    if size < PREFIX or prefix[: len(MAGIC)] != MAGIC:
        raise TensorFileError("not a Qoin tensor file (the magic QOINTF1 is missing)")
    length = int.from_bytes(prefix[len(MAGIC) : PREFIX], "big")
    if length > HEADER_LIMIT:
        raise TensorFileError(f"the header claims {length} bytes, over {HEADER_LIMIT}")
    if PREFIX + length > size:
        raise TensorFileError(
            f"the file is truncated: the header claims {length} bytes, {size - PREFIX} follow"
        )
    return length


def _parse_header(raw: bytes) -> tuple[dict[str, Any], list[tuple[str, str, tuple[int, ...]]]]:
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise TensorFileError(f"the header is not JSON: {exc}") from exc
    if not isinstance(header, dict) or set(header) != {"arrays", "meta"}:
        raise TensorFileError("the header must be an object with exactly 'arrays' and 'meta'")
    meta, entries = header["meta"], header["arrays"]
    if not isinstance(meta, dict):
        raise TensorFileError("the header's 'meta' must be an object")
    if not isinstance(entries, list) or len(entries) > MAX_ARRAYS:
        raise TensorFileError(f"the header's 'arrays' must be a list of at most {MAX_ARRAYS}")
    found = []
    offset = 0
    for index, entry in enumerate(entries):
        keys = {"name", "dtype", "shape", "offset", "length"}
        if not isinstance(entry, dict) or set(entry) != keys:
            raise TensorFileError(f"array entry {index} must have exactly {sorted(keys)}")
        name, dtype, shape = entry["name"], entry["dtype"], entry["shape"]
        if not isinstance(name, str) or dtype not in DTYPES or not isinstance(shape, list):
            raise TensorFileError(f"array entry {index} has a bad name, dtype or shape")
        if len(shape) > MAX_DIMS or any(type(dim) is not int or dim < 0 for dim in shape):
            raise TensorFileError(f"array {name!r}: shape {shape} is not sizes >= 0")
        length = entry["length"]
        if type(length) is not int or length != math.prod(shape) * DTYPES[dtype]:
            raise TensorFileError(f"array {name!r}: length {length!r} does not fit its shape")
        if entry["offset"] != offset:
            raise TensorFileError(f"array {name!r}: offset {entry['offset']!r}, expected {offset}")
        offset += length
        found.append((name, dtype, tuple(shape)))
    if canonical(header) != raw:
        raise TensorFileError("the header is not in canonical form")
    return meta, found


def decode(data: bytes) -> TensorFile:
    """The contents of a whole file given as bytes."""
    length = _header(data[:PREFIX], len(data))
    meta, entries = _parse_header(data[PREFIX : PREFIX + length])
    position = PREFIX + length
    total = sum(math.prod(shape) * DTYPES[dtype] for _, dtype, shape in entries)
    if position + total != len(data):
        raise TensorFileError(
            f"the file is {len(data)} bytes, its header describes {position + total}"
            + (" (truncated)" if position + total > len(data) else "")
        )
    arrays = []
    names: set[str] = set()
    for name, dtype, shape in entries:
        if name in names or not 0 < len(name) <= MAX_NAME:
            raise TensorFileError(f"array name {name!r} is empty, too long or repeated")
        names.add(name)
        size = math.prod(shape) * DTYPES[dtype]
        arrays.append(Array(name, dtype, shape, data[position : position + size]))
        position += size
    return TensorFile(meta, tuple(arrays))


def read(path: Path, max_bytes: int) -> TensorFile:
    """The file at ``path``, refused if it is over ``max_bytes`` or not a valid tensor file."""
    try:
        with open(path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            if size > max_bytes:
                raise TensorFileError(f"{path} is {size} bytes, over the limit of {max_bytes}")
            prefix = file.read(PREFIX)
            _header(prefix, size)
            data = prefix + file.read(size - len(prefix))
    except OSError as exc:
        raise TensorFileError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if len(data) != size:
        raise TensorFileError(f"{path} changed while it was read")
    return decode(data)


def read_meta(path: Path) -> dict[str, Any]:
    """Only the metadata of the file at ``path`` (the arrays are not read, but their lengths
    are checked against the file's size)."""
    try:
        with open(path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            length = _header(file.read(PREFIX), size)
            raw = file.read(length)
    except OSError as exc:
        raise TensorFileError(f"cannot read {path}: {exc.strerror or exc}") from exc
    meta, entries = _parse_header(raw)
    total = sum(math.prod(shape) * DTYPES[dtype] for _, dtype, shape in entries)
    described = PREFIX + length + total
    if described != size:
        cut = " (truncated)" if described > size else ""
        raise TensorFileError(f"{path} is {size} bytes, its header describes {described}{cut}")
    return meta
