"""Accounts: balance, nonce and the public keys revealed by the first outgoing transaction.

An account occupies up to two leaves of the state tree:

* under ``state_key(address) = SHA3-256(address)``, the *account leaf*, version 1::

      version      u8        = 1
      balance      varint64  Shor
      nonce        varint64  transactions sent
      revealed     u8        0 or 1: whether the keys leaf exists

* under ``keys_key(address) = tagged_hash("QOIN/state/keys/v1", address)``, once revealed, the
  *keys leaf*: the hybrid public key's encoding (whose hash is the address). It is written once, by the
  first outgoing transaction, and never changes.

Keeping the 2 kB of keys out of the leaf that every transfer rewrites makes a block's tree update
and its stored versions small (docs/decisions.md #15). An address that was never touched has no
leaves; it reads as balance 0, nonce 0, no keys.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from qoin.crypto.address import Address
from qoin.crypto.hashing import sha3_256, tagged_hash
from qoin.crypto.hybrid import HybridPublicKey
from qoin.encoding.codec import DecodeError, NonCanonicalInteger, Reader, UnknownVersion, Writer
from qoin.errors import QoinError

ACCOUNT_VERSION = 1
TAG_KEYS_LEAF = b"QOIN/state/keys/v1"


@dataclass(frozen=True)
class AccountLeaf:
    """The account leaf: what the tree holds under ``state_key(address)``."""

    balance: int = 0
    """Shor held."""
    nonce: int = 0
    """Number of transactions this account has sent."""
    revealed: bool = False
    """Whether the account's keys leaf exists."""

    def encode(self) -> bytes:
        """Canonical encoding."""
        writer = Writer().u8(ACCOUNT_VERSION).varint(self.balance).varint(self.nonce)
        return writer.u8(1 if self.revealed else 0).bytes()

    @classmethod
    def decode(cls, data: bytes) -> AccountLeaf:
        """Decode, rejecting anything that is not canonical."""
        reader = Reader(data)
        version = reader.u8()
        if version != ACCOUNT_VERSION:
            raise UnknownVersion(f"unknown account version {version}")
        balance, nonce = reader.varint(), reader.varint()
        flag = reader.u8()
        if flag > 1:
            raise NonCanonicalInteger(f"revealed flag must be 0 or 1, got {flag}")
        reader.finish()
        return cls(balance, nonce, flag == 1)


@dataclass(frozen=True)
class Account:
    """The state of one address, keys included (read from both of its leaves)."""

    balance: int = 0
    """Shor held."""
    nonce: int = 0
    """Number of transactions this account has sent."""
    public_keys: HybridPublicKey | None = None
    """Keys revealed by the first outgoing transaction (their hash is the address)."""

    @property
    def leaf(self) -> AccountLeaf:
        """The account leaf of this state."""
        return AccountLeaf(self.balance, self.nonce, self.public_keys is not None)


EMPTY_ACCOUNT = Account()


class AccountLeavesInvalid(DecodeError):
    """The leaves of an account do not decode or do not fit together."""


def state_key(address: Address) -> bytes:
    """Where an address's account leaf lives in the state tree: SHA3-256 of the address."""
    return sha3_256(address.raw)


def keys_key(address: Address) -> bytes:
    """Where an address's keys leaf lives in the state tree."""
    return tagged_hash(TAG_KEYS_LEAF, address.raw)


def read_account(get: Callable[[bytes], bytes | None], address: Address) -> Account:
    """The account of ``address`` from a tree lookup ``get(key) -> value | None`` (a database, a
    partial tree of proofs); absent reads as empty. :class:`AccountLeavesInvalid` if a leaf does
    not decode, or the keys leaf is missing or does not hash to the address."""
    value = get(state_key(address))
    if value is None:
        return EMPTY_ACCOUNT
    try:
        leaf = AccountLeaf.decode(value)
    except DecodeError as exc:
        raise AccountLeavesInvalid(f"the account leaf of {address} is invalid: {exc}") from None
    if not leaf.revealed:
        return Account(leaf.balance, leaf.nonce)
    raw = get(keys_key(address))
    if raw is None:
        raise AccountLeavesInvalid(f"{address} has revealed its keys but has no keys leaf")
    try:
        keys = HybridPublicKey.decode(raw)
    except QoinError as exc:
        raise AccountLeavesInvalid(f"the keys leaf of {address} is invalid: {exc}") from None
    if keys.address != address:
        raise AccountLeavesInvalid(f"the keys leaf of {address} holds keys of {keys.address}")
    return Account(leaf.balance, leaf.nonce, keys)


def account_writes(address: Address, before: Account, after: Account) -> dict[bytes, bytes]:
    """The tree writes that turn ``before`` into ``after`` (empty if nothing changed)."""
    writes: dict[bytes, bytes] = {}
    if after.leaf != before.leaf:
        writes[state_key(address)] = after.leaf.encode()
    if after.public_keys is not None and before.public_keys is None:
        writes[keys_key(address)] = after.public_keys.encode()
    return writes


def genesis_leaves(allocation: Iterable[tuple[Address, int]]) -> dict[bytes, bytes]:
    """The state tree of a genesis allocation, as key → leaf value (accounts without keys)."""
    return {state_key(address): AccountLeaf(amount).encode() for address, amount in allocation}
