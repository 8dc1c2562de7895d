"""Account addresses: the full SHA3-256 of (suite id ‖ public keys), shown as bech32m ``qoin1…``.

32 bytes rather than 20: a quantum collision search (BHT) on a 160-bit hash costs about 2^53, on a
256-bit hash about 2^85. Because the suite id is hashed in, an address names its signature suite, so
accounts can migrate to new suites without a new chain.
"""

from __future__ import annotations

from dataclasses import dataclass

from qoin.crypto import bech32m
from qoin.crypto.hashing import HASH_SIZE
from qoin.errors import QoinError

ADDRESS_HRP = "qoin"
ADDRESS_SIZE = HASH_SIZE


class AddressError(QoinError):
    """A malformed address, in binary or text form."""


@dataclass(frozen=True, order=True)
class Address:
    """A 32-byte account address."""

    raw: bytes
    """The SHA3-256 digest of the suite id and public keys."""

    def __post_init__(self) -> None:
        if len(self.raw) != ADDRESS_SIZE:
            raise AddressError(f"an address is {ADDRESS_SIZE} bytes, got {len(self.raw)}")

    # Addresses key most of the execution client's dicts: hash and compare the bytes directly
    # rather than through the generated tuple-building methods (same results, a third the cost).
    def __hash__(self) -> int:
        return hash(self.raw)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is Address:
            return self.raw == other.raw
        return NotImplemented

    def __str__(self) -> str:
        return bech32m.encode(ADDRESS_HRP, self.raw)

    @classmethod
    def from_text(cls, text: str) -> Address:
        """Parse the bech32m form; every failure is an :class:`AddressError` saying why."""
        try:
            raw = bech32m.decode(ADDRESS_HRP, text.strip())
        except bech32m.Bech32Error as exc:
            raise AddressError(f"invalid address {text!r}: {exc}") from None
        if len(raw) != ADDRESS_SIZE:
            raise AddressError(
                f"invalid address {text!r}: payload is {len(raw)} bytes, expected {ADDRESS_SIZE}"
            )
        return cls(raw)
