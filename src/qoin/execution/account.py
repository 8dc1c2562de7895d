"""Accounts: balance, nonce and the public keys revealed by the first outgoing transaction.

Encoding, version 1 (the value stored in the state tree under ``state_key(address)``)::

    version      u8        = 1
    balance      varint64  Shor
    nonce        varint64  transactions sent
    has_keys     u8        0 or 1
    [keys]       hybrid public key, once revealed

An account that was never touched is *absent* from the tree; it reads as balance 0, nonce 0, no keys.
"""

from __future__ import annotations

from dataclasses import dataclass

from qoin.crypto.address import Address
from qoin.crypto.hashing import sha3_256
from qoin.crypto.hybrid import HybridPublicKey
from qoin.encoding.codec import NonCanonicalInteger, Reader, UnknownVersion, Writer

ACCOUNT_VERSION = 1


@dataclass(frozen=True)
class Account:
    """The state of one address."""

    balance: int = 0
    """Shor held."""
    nonce: int = 0
    """Number of transactions this account has sent."""
    public_keys: HybridPublicKey | None = None
    """Keys revealed by the first outgoing transaction (their hash is the address)."""

    def encode(self) -> bytes:
        """Canonical encoding."""
        writer = Writer().u8(ACCOUNT_VERSION).varint(self.balance).varint(self.nonce)
        if self.public_keys is None:
            return writer.u8(0).bytes()
        return writer.u8(1).raw(self.public_keys.encode()).bytes()

    @classmethod
    def decode(cls, data: bytes) -> Account:
        """Decode, rejecting anything that is not canonical."""
        reader = Reader(data)
        version = reader.u8()
        if version != ACCOUNT_VERSION:
            raise UnknownVersion(f"unknown account version {version}")
        balance, nonce = reader.varint(), reader.varint()
        flag = reader.u8()
        if flag > 1:
            raise NonCanonicalInteger(f"public-key flag must be 0 or 1, got {flag}")
        keys = HybridPublicKey.read(reader) if flag else None
        reader.finish()
        return cls(balance, nonce, keys)


EMPTY_ACCOUNT = Account()


def state_key(address: Address) -> bytes:
    """Where an address's account lives in the state tree: SHA3-256 of the address."""
    return sha3_256(address.raw)
