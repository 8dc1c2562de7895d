"""Block headers and blocks: fields and canonical encoding.

Header, version 1::

    version            u8        = 1
    chain_id           varint64
    height             varint64  genesis is 0
    parent_hash        32 bytes  all zero for genesis
    timestamp_ms       varint64  milliseconds since the Unix epoch
    nbits              u16       MQ parameters: n variables (high byte), m equations (low byte)
    target             varint256 proof-of-work target: the MQ output must be <= target
    transactions_root  32 bytes  commitment to the body's transactions
    siblings_root      32 bytes  commitment to the body's referenced sibling headers
    state_root         32 bytes  account state after the block (execution layer)
    receipts_root      32 bytes  receipts of the block's transactions (execution layer)
    coinbase           32 bytes  address paid the block reward; must be the miner key's address
    miner              hybrid public key of the miner
    pow_r              32 bytes  the miner's random R for this attempt
    pow_nonce          32 bytes  hash of pow_proof (see docs/spec/pow.md)
    pow_proof          hybrid signature: the proof-of-work attempt

Every field up to and including ``miner`` is the PoW *prefix*: what an attempt is bound to. The block
hash is ``tagged_hash("QOIN/block-hash/v1", header encoding)``.

Block::

    header
    sibling_count  varint (<= MAX_SIBLINGS), then that many headers
    coinbase       payout_count varint (<= MAX_PAYOUTS), then that many (address 32 bytes, varint64)
    tx_count       varint (<= MAX_BLOCK_TRANSACTIONS), then that many transactions

and the whole encoding is at most :data:`MAX_BLOCK_SIZE` bytes, checked before decoding.

Body commitments in the header::

    transactions_root = merkle_root([coinbase hash] + [commitment of each transaction])
    siblings_root     = merkle_root([block hash of each sibling header])

with ``coinbase hash = tagged_hash("QOIN/coinbase/v1", coinbase encoding)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from qoin.chain.transaction import AnyTransaction, read_transaction
from qoin.crypto.address import ADDRESS_SIZE, Address
from qoin.crypto.hashing import HASH_SIZE, TAG_BLOCK_HASH, tagged_hash
from qoin.crypto.hybrid import HybridPublicKey, HybridSignature
from qoin.crypto.merkle import merkle_root
from qoin.encoding.codec import OversizeField, Reader, UnknownVersion, Writer

HEADER_VERSION = 1
POW_R_SIZE = 32
TARGET_BITS = 256
MAX_SIBLINGS = 4
"""Most sibling headers (other members of the parent's generation) one block may reference."""
MAX_PAYOUTS = MAX_SIBLINGS + 2
"""A coinbase pays the parent's miner, each referenced sibling's miner and this block's miner."""
MAX_BLOCK_TRANSACTIONS = 8192
MAX_BLOCK_SIZE = 16 * 1024 * 1024
"""Upper bound of an encoded block, in bytes, checked before anything is decoded."""
ZERO_HASH = bytes(HASH_SIZE)
TAG_COINBASE = b"QOIN/coinbase/v1"


@dataclass(frozen=True)
class Header:
    """A block header (see the module docstring for the encoding)."""

    chain_id: int
    """Network id."""
    height: int
    """Distance from genesis."""
    parent_hash: bytes
    """Hash of the parent header."""
    timestamp_ms: int
    """Miner's clock, milliseconds since the Unix epoch."""
    nbits: int
    """MQ parameters: ``n << 8 | m``."""
    target: int
    """PoW target: an attempt succeeds when its MQ output, as an integer, is <= target."""
    transactions_root: bytes
    """Commitment to the transactions in the body."""
    siblings_root: bytes
    """Commitment to the sibling headers in the body."""
    state_root: bytes
    """Account state root after this block."""
    receipts_root: bytes
    """Root of this block's receipts."""
    coinbase: Address
    """Address credited with the block reward and fees: the miner key's address."""
    miner: HybridPublicKey
    """The miner's public keys."""
    pow_r: bytes
    """The random R of the winning attempt."""
    pow_nonce: bytes
    """Hash of ``pow_proof``: the input of the MQ hash."""
    pow_proof: HybridSignature
    """The miner's signature over the attempt input."""

    @cached_property
    def pow_prefix(self) -> bytes:
        """Canonical encoding of every field before ``pow_r``: what an attempt is bound to."""
        return (
            Writer()
            .u8(HEADER_VERSION)
            .varint(self.chain_id)
            .varint(self.height)
            .fixed(self.parent_hash, HASH_SIZE)
            .varint(self.timestamp_ms)
            .u16(self.nbits)
            .varint(self.target, TARGET_BITS)
            .fixed(self.transactions_root, HASH_SIZE)
            .fixed(self.siblings_root, HASH_SIZE)
            .fixed(self.state_root, HASH_SIZE)
            .fixed(self.receipts_root, HASH_SIZE)
            .fixed(self.coinbase.raw, ADDRESS_SIZE)
            .raw(self.miner.encode())
            .bytes()
        )

    @cached_property
    def encoded(self) -> bytes:
        """The canonical encoding of the whole header, computed once."""
        return (
            Writer()
            .raw(self.pow_prefix)
            .fixed(self.pow_r, POW_R_SIZE)
            .fixed(self.pow_nonce, HASH_SIZE)
            .raw(self.pow_proof.encode())
            .bytes()
        )

    def encode(self) -> bytes:
        """Canonical encoding of the header."""
        return self.encoded

    @cached_property
    def block_hash(self) -> bytes:
        """The block's identity: a tagged SHA3-256 of the header encoding."""
        return tagged_hash(TAG_BLOCK_HASH, self.encoded)

    @classmethod
    def read(cls, reader: Reader) -> Header:
        """Decode one header from a reader."""
        version = reader.u8()
        if version != HEADER_VERSION:
            raise UnknownVersion(f"unknown header version {version}")
        return cls(
            chain_id=reader.varint(),
            height=reader.varint(),
            parent_hash=reader.fixed(HASH_SIZE),
            timestamp_ms=reader.varint(),
            nbits=reader.u16(),
            target=reader.varint(TARGET_BITS),
            transactions_root=reader.fixed(HASH_SIZE),
            siblings_root=reader.fixed(HASH_SIZE),
            state_root=reader.fixed(HASH_SIZE),
            receipts_root=reader.fixed(HASH_SIZE),
            coinbase=Address(reader.fixed(ADDRESS_SIZE)),
            miner=HybridPublicKey.read(reader),
            pow_r=reader.fixed(POW_R_SIZE),
            pow_nonce=reader.fixed(HASH_SIZE),
            pow_proof=HybridSignature.read(reader),
        )

    @classmethod
    def decode(cls, data: bytes) -> Header:
        """Decode a standalone header; trailing bytes are an error."""
        reader = Reader(data)
        header = cls.read(reader)
        reader.finish()
        return header


@dataclass(frozen=True)
class Payout:
    """One coinbase payment."""

    recipient: Address
    """Who is paid."""
    amount: int
    """Shor paid."""


@dataclass(frozen=True)
class Coinbase:
    """New Shor minted and fees paid by a block (see docs/spec/chain.md for the exact rule)."""

    payouts: tuple[Payout, ...]
    """Parent's miner, each referenced sibling's miner, then this block's miner."""

    def encode(self) -> bytes:
        """Canonical encoding: a count, then (address, amount) pairs."""
        if len(self.payouts) > MAX_PAYOUTS:
            raise OversizeField(f"{len(self.payouts)} payouts exceed {MAX_PAYOUTS}")
        writer = Writer().varint(len(self.payouts))
        for payout in self.payouts:
            writer.fixed(payout.recipient.raw, ADDRESS_SIZE).varint(payout.amount)
        return writer.bytes()

    @cached_property
    def coinbase_hash(self) -> bytes:
        """The coinbase's leaf in the transactions root."""
        return tagged_hash(TAG_COINBASE, self.encode())

    @property
    def total(self) -> int:
        """Sum of all payouts."""
        return sum(p.amount for p in self.payouts)

    @classmethod
    def read(cls, reader: Reader) -> Coinbase:
        """Decode from a reader."""
        count = reader.count(MAX_PAYOUTS)
        return cls(
            tuple(
                Payout(Address(reader.fixed(ADDRESS_SIZE)), reader.varint()) for _ in range(count)
            )
        )


def transactions_root(coinbase: Coinbase, transactions: tuple[AnyTransaction, ...]) -> bytes:
    """The header commitment to a body's coinbase and transactions."""
    return merkle_root([coinbase.coinbase_hash, *(tx.commitment for tx in transactions)])


def siblings_root(siblings: tuple[Header, ...]) -> bytes:
    """The header commitment to a body's referenced sibling headers."""
    return merkle_root([sibling.block_hash for sibling in siblings])


@dataclass(frozen=True)
class Block:
    """A header and its body: referenced sibling headers, coinbase and transactions."""

    header: Header
    """The block header."""
    siblings: tuple[Header, ...]
    """Other members of the parent's generation that this block references (uncles)."""
    coinbase: Coinbase
    """Subsidy and fee payouts."""
    transactions: tuple[AnyTransaction, ...]
    """The transactions, in execution order."""

    @property
    def block_hash(self) -> bytes:
        """The header's hash."""
        return self.header.block_hash

    def encode(self) -> bytes:
        """Canonical encoding of the block."""
        return self.encoded

    @cached_property
    def encoded(self) -> bytes:
        """The canonical encoding, computed once (taken from the input when decoded)."""
        if len(self.siblings) > MAX_SIBLINGS:
            raise OversizeField(f"{len(self.siblings)} siblings exceed {MAX_SIBLINGS}")
        if len(self.transactions) > MAX_BLOCK_TRANSACTIONS:
            raise OversizeField(
                f"{len(self.transactions)} transactions exceed {MAX_BLOCK_TRANSACTIONS}"
            )
        writer = Writer().raw(self.header.encode()).varint(len(self.siblings))
        for sibling in self.siblings:
            writer.raw(sibling.encode())
        writer.raw(self.coinbase.encode()).varint(len(self.transactions))
        for tx in self.transactions:
            writer.raw(tx.encode())
        data = writer.bytes()
        if len(data) > MAX_BLOCK_SIZE:
            raise OversizeField(f"block of {len(data)} bytes exceeds {MAX_BLOCK_SIZE}")
        return data

    @classmethod
    def decode(cls, data: bytes) -> Block:
        """Decode a block, bounding its size and element counts before allocating."""
        if len(data) > MAX_BLOCK_SIZE:
            raise OversizeField(f"block of {len(data)} bytes exceeds {MAX_BLOCK_SIZE}")
        reader = Reader(data)
        header = Header.read(reader)
        siblings = tuple(Header.read(reader) for _ in range(reader.count(MAX_SIBLINGS)))
        coinbase = Coinbase.read(reader)
        transactions = tuple(
            read_transaction(reader) for _ in range(reader.count(MAX_BLOCK_TRANSACTIONS))
        )
        reader.finish()
        block = cls(header, siblings, coinbase, transactions)
        block.__dict__["encoded"] = bytes(data)  # canonical: the input is the encoding
        return block
