"""What the execution client's RPC methods share: its error, and the parameters every method
checks the same way (hashes, addresses, block tags)."""

from __future__ import annotations

from qoin.crypto.address import Address
from qoin.errors import QoinError
from qoin.rpc.server import Param


class ExecutionError(QoinError):
    """A request the execution client cannot serve (unknown block, payload, ...)."""


def hex_bytes(value: str, size: int | None = None) -> bytes:
    """The bytes of a hex string (``0x`` optional), of ``size`` bytes if given."""
    data = bytes.fromhex(value.removeprefix("0x"))
    if size is not None and len(data) != size:
        raise ValueError(f"expected {size} bytes")
    return data


HASH = Param("hash", {"type": "string", "maxLength": 66}, parse=lambda v: hex_bytes(v, 32))
ADDRESS = Param("address", {"type": "string", "maxLength": 90}, parse=Address.from_text)
MAX_HEIGHT = 2**63 - 1
BLOCK_TAG = Param(
    "block",
    {"type": ["string", "integer", "null"], "maxLength": 66, "minimum": 0, "maximum": MAX_HEIGHT},
    required=False,
    description="block hash (hex), height, or 'latest' (default)",
)
