"""Accounts and the other leaves of the state tree: keys, contract code, contract storage.

An account occupies up to two leaves of the state tree:

* under ``state_key(address) = SHA3-256(address)``, the *account leaf*, version 1 (no code) or 2
  (a contract)::

      version      u8        = 1 or 2
      balance      varint64  Shor
      nonce        varint64  transactions sent (deployments made, for a contract)
      revealed     u8        0 or 1: whether the keys leaf exists
      [code_hash]  32 bytes  version 2 only: SHA3-256 of the contract's WebAssembly module

* under ``keys_key(address) = tagged_hash("QOIN/state/keys/v1", address)``, once revealed, the
  *keys leaf*: the hybrid public key's encoding (whose hash is the address). It is written once, by the
  first outgoing transaction, and never changes.

Three more kinds of leaf hold what contracts and built-in actors keep (docs/spec/contracts.md §2):

* ``code_key(code_hash) = tagged_hash("QOIN/state/code/v1", code_hash)``: a module, stored once
  however many contracts run it;
* ``storage_key(address, key) = tagged_hash("QOIN/state/storage/v1", address ‖ key)``: one storage
  value of a contract or actor (a deleted value is the empty leaf, see docs/decisions.md #22);
* contract addresses are ``tagged_hash("QOIN/contract-address/v1", deployer ‖ nonce as 8 bytes
  big-endian)`` and built-in actors live at ``tagged_hash("QOIN/actor/v1", name)``.

Keeping the 2 kB of keys out of the leaf that every transfer rewrites makes a block's tree update
and its stored versions small (docs/decisions.md #15). An address that was never touched has no
leaves; it reads as balance 0, nonce 0, no keys.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from qoin.crypto.address import Address
from qoin.crypto.hashing import sha3_256, tagged_hash
from qoin.crypto.hybrid import HybridPublicKey
from qoin.encoding.codec import DecodeError, NonCanonicalInteger, Reader, UnknownVersion, Writer
from qoin.errors import QoinError

ACCOUNT_VERSION = 1
CONTRACT_VERSION = 2
TAG_KEYS_LEAF = b"QOIN/state/keys/v1"
TAG_CODE_LEAF = b"QOIN/state/code/v1"
TAG_STORAGE_LEAF = b"QOIN/state/storage/v1"
TAG_CONTRACT_ADDRESS = b"QOIN/contract-address/v1"
TAG_ACTOR_ADDRESS = b"QOIN/actor/v1"
MAX_STORAGE_KEY = 128
"""Longest storage key a contract or actor may use, in bytes."""
MAX_STORAGE_VALUE = 16 * 1024
"""Largest storage value, in bytes."""

if TYPE_CHECKING:
    from qoin.chain.genesis import Genesis


@dataclass(frozen=True)
class AccountLeaf:
    """The account leaf: what the tree holds under ``state_key(address)``."""

    balance: int = 0
    """Shor held."""
    nonce: int = 0
    """Number of transactions this account has sent."""
    revealed: bool = False
    """Whether the account's keys leaf exists."""
    code_hash: bytes | None = None
    """SHA3-256 of the contract's module (contracts only)."""

    def encode(self) -> bytes:
        """Canonical encoding."""
        version = ACCOUNT_VERSION if self.code_hash is None else CONTRACT_VERSION
        writer = Writer().u8(version).varint(self.balance).varint(self.nonce)
        writer.u8(1 if self.revealed else 0)
        if self.code_hash is not None:
            writer.fixed(self.code_hash, 32)
        return writer.bytes()

    @classmethod
    def decode(cls, data: bytes) -> AccountLeaf:
        """Decode, rejecting anything that is not canonical."""
        reader = Reader(data)
        version = reader.u8()
        if version not in (ACCOUNT_VERSION, CONTRACT_VERSION):
            raise UnknownVersion(f"unknown account version {version}")
        balance, nonce = reader.varint(), reader.varint()
        flag = reader.u8()
        if flag > 1:
            raise NonCanonicalInteger(f"revealed flag must be 0 or 1, got {flag}")
        code_hash = reader.fixed(32) if version == CONTRACT_VERSION else None
        reader.finish()
        return cls(balance, nonce, flag == 1, code_hash)


@dataclass(frozen=True)
class Account:
    """The state of one address, keys included (read from both of its leaves)."""

    balance: int = 0
    """Shor held."""
    nonce: int = 0
    """Number of transactions this account has sent."""
    public_keys: HybridPublicKey | None = None
    """Keys revealed by the first outgoing transaction (their hash is the address)."""
    code_hash: bytes | None = None
    """SHA3-256 of the contract's module (contracts only)."""

    @property
    def leaf(self) -> AccountLeaf:
        """The account leaf of this state."""
        return AccountLeaf(self.balance, self.nonce, self.public_keys is not None, self.code_hash)


EMPTY_ACCOUNT = Account()


class AccountLeavesInvalid(DecodeError):
    """The leaves of an account do not decode or do not fit together."""


def state_key(address: Address) -> bytes:
    """Where an address's account leaf lives in the state tree: SHA3-256 of the address."""
    return sha3_256(address.raw)


def keys_key(address: Address) -> bytes:
    """Where an address's keys leaf lives in the state tree."""
    return tagged_hash(TAG_KEYS_LEAF, address.raw)


def code_key(code_hash: bytes) -> bytes:
    """Where a contract module lives in the state tree (once per distinct module)."""
    return tagged_hash(TAG_CODE_LEAF, code_hash)


def storage_key(address: Address, key: bytes) -> bytes:
    """Where the storage value ``key`` of the contract or actor ``address`` lives."""
    return tagged_hash(TAG_STORAGE_LEAF, address.raw, key)


def contract_address(deployer: Address, nonce: int) -> Address:
    """The address of the contract ``deployer`` creates with its transaction number ``nonce``."""
    return Address(tagged_hash(TAG_CONTRACT_ADDRESS, deployer.raw, nonce.to_bytes(8, "big")))


def actor_address(name: str) -> Address:
    """The fixed address of the built-in actor ``name``."""
    return Address(tagged_hash(TAG_ACTOR_ADDRESS, name.encode()))


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
        return Account(leaf.balance, leaf.nonce, None, leaf.code_hash)
    raw = get(keys_key(address))
    if raw is None:
        raise AccountLeavesInvalid(f"{address} has revealed its keys but has no keys leaf")
    try:
        keys = HybridPublicKey.decode(raw)
    except QoinError as exc:
        raise AccountLeavesInvalid(f"the keys leaf of {address} is invalid: {exc}") from None
    if keys.address != address:
        raise AccountLeavesInvalid(f"the keys leaf of {address} holds keys of {keys.address}")
    return Account(leaf.balance, leaf.nonce, keys, leaf.code_hash)


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


STORAGE_MARKET_ADDRESS = actor_address("storage-market")
"""Where the ``storage-market`` actor lives (its genesis parameters are in its storage)."""
COMPUTE_MARKET_ADDRESS = actor_address("compute-market")
"""Where the ``compute-market`` actor lives (its genesis parameters are in its storage)."""


def genesis_state(genesis: Genesis) -> dict[bytes, bytes]:
    """The whole genesis state: the allocation's accounts, and the storage and compute markets'
    parameters under their ``params`` keys (docs/spec/storage.md §1, docs/spec/compute.md §1)."""
    from qoin.compute.params import PARAMS_KEY as COMPUTE_KEY  # noqa: PLC0415 - as below
    from qoin.storage.params import PARAMS_KEY  # noqa: PLC0415 - keeps account.py's imports small

    leaves = genesis_leaves((a.address, a.amount) for a in genesis.allocation)
    leaves[storage_key(STORAGE_MARKET_ADDRESS, PARAMS_KEY)] = genesis.storage.encode()
    leaves[storage_key(COMPUTE_MARKET_ADDRESS, COMPUTE_KEY)] = genesis.compute.encode()
    return leaves
