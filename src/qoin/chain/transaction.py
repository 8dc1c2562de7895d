"""Transfer transactions: fields, canonical encoding, signing message, id, signature check.

Encoding of a version-1 transfer (see :mod:`qoin.encoding.codec` for the primitives)::

    tx_type        u8        = 1 (transfer, version 1); anything else is an unknown version
    chain_id       varint64  network the transaction is valid on (no cross-chain replay)
    sender         32 bytes  sender address
    nonce          varint64  sender's transaction count before this one
    recipient      32 bytes  recipient address
    amount         varint64  Shor moved to the recipient
    fee            varint64  Shor paid to the block's miner
    payload        varbytes  at most MAX_PAYLOAD_SIZE bytes of free data (memo)
    has_keys       u8        0 or 1
    [public_keys]  hybrid public key of the sender, present only when has_keys = 1
    signature      hybrid signature

The first eight fields form the *body*. The signed message is
``tagged_hash("QOIN/tx-signing/v1", body)``; the transaction id is ``tagged_hash("QOIN/tx-id/v1",
body)``. Like segwit's txid, the id leaves out the witness data — the revealed public keys, fully
determined by the sender address, and the signature — so no relay can change a transaction's id. Blocks, however, commit to
``tagged_hash("QOIN/tx-commitment/v1", whole encoding)``, keys included, so that a relay cannot strip
the keys from a block's first-spend transaction (which would make the body unexecutable) while the
block hash stays the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from qoin.crypto.address import ADDRESS_SIZE, Address
from qoin.crypto.hashing import TAG_TX_COMMITMENT, TAG_TX_ID, TAG_TX_SIGNING, tagged_hash
from qoin.crypto.hybrid import (
    HybridKeyPair,
    HybridPublicKey,
    HybridSignature,
    SignatureError,
    sign,
    verify_for_address,
)
from qoin.encoding.codec import NonCanonicalInteger, Reader, UnknownVersion, Writer

TX_TYPE_TRANSFER_V1 = 1
MAX_PAYLOAD_SIZE = 4096
"""Largest free-form payload a transfer may carry, in bytes."""


class PublicKeysUnavailable(SignatureError):
    """The sender has not revealed its public keys and the transaction does not carry them."""


@dataclass(frozen=True)
class Transaction:
    """A signed transfer of Shor from ``sender`` to ``recipient``."""

    chain_id: int
    """Network id; the signature commits to it."""
    sender: Address
    """Address of the signing account."""
    nonce: int
    """Number of transactions the sender sent before this one."""
    recipient: Address
    """Address credited with ``amount``."""
    amount: int
    """Shor moved to the recipient."""
    fee: int
    """Shor paid to the miner of the block that includes the transaction."""
    payload: bytes
    """Free-form data, at most :data:`MAX_PAYLOAD_SIZE` bytes."""
    public_keys: HybridPublicKey | None
    """The sender's keys, carried only by an account's first outgoing transaction."""
    signature: HybridSignature
    """Hybrid signature over :attr:`signing_hash`."""

    @cached_property
    def body(self) -> bytes:
        """Canonical encoding of the signed fields."""
        return encode_body(
            self.chain_id,
            self.sender,
            self.nonce,
            self.recipient,
            self.amount,
            self.fee,
            self.payload,
        )

    @cached_property
    def signing_hash(self) -> bytes:
        """The 32-byte message the sender signs."""
        return tagged_hash(TAG_TX_SIGNING, self.body)

    @cached_property
    def tx_id(self) -> bytes:
        """The transaction id: a hash of the signed body only (like segwit's txid), so neither the
        revealed keys nor the signature bytes can change it."""
        return tagged_hash(TAG_TX_ID, self.body)

    @cached_property
    def commitment(self) -> bytes:
        """Hash of the whole encoding, revealed keys included: what a block commits to, so that
        stripping or adding keys changes the block (unlike the id, which must not change)."""
        return tagged_hash(TAG_TX_COMMITMENT, self.encode())

    def encode(self) -> bytes:
        """Canonical encoding of the whole transaction."""
        return self.encoded

    @cached_property
    def encoded(self) -> bytes:
        """The canonical encoding, computed once (taken from the input when decoded)."""
        writer = Writer().raw(self.body)
        if self.public_keys is None:
            writer.u8(0)
        else:
            writer.u8(1).raw(self.public_keys.encode())
        return writer.raw(self.signature.encode()).bytes()

    @classmethod
    def read(cls, reader: Reader) -> Transaction:
        """Decode one transaction from a reader (inside a block)."""
        start = reader.position
        tx_type = reader.u8()
        if tx_type != TX_TYPE_TRANSFER_V1:
            raise UnknownVersion(f"unknown transaction type {tx_type}")
        chain_id = reader.varint()
        sender = Address(reader.fixed(ADDRESS_SIZE))
        nonce = reader.varint()
        recipient = Address(reader.fixed(ADDRESS_SIZE))
        amount = reader.varint()
        fee = reader.varint()
        payload = reader.var_bytes(MAX_PAYLOAD_SIZE)
        body = reader.consumed_since(start)
        has_keys = reader.u8()
        if has_keys > 1:
            raise NonCanonicalInteger(f"public-key flag must be 0 or 1, got {has_keys}")
        public_keys = HybridPublicKey.read(reader) if has_keys else None
        signature = HybridSignature.read(reader)
        tx = cls(chain_id, sender, nonce, recipient, amount, fee, payload, public_keys, signature)
        # Canonical decoding: the input bytes are exactly the encoding (and the body its prefix).
        tx.__dict__["encoded"] = reader.consumed_since(start)
        tx.__dict__["body"] = body
        return tx

    @classmethod
    def decode(cls, data: bytes) -> Transaction:
        """Decode a standalone transaction; trailing bytes are an error."""
        reader = Reader(data)
        tx = cls.read(reader)
        reader.finish()
        return tx


def encode_body(
    chain_id: int,
    sender: Address,
    nonce: int,
    recipient: Address,
    amount: int,
    fee: int,
    payload: bytes,
) -> bytes:
    """Canonical encoding of a transfer's signed fields."""
    return (
        Writer()
        .u8(TX_TYPE_TRANSFER_V1)
        .varint(chain_id)
        .fixed(sender.raw, ADDRESS_SIZE)
        .varint(nonce)
        .fixed(recipient.raw, ADDRESS_SIZE)
        .varint(amount)
        .varint(fee)
        .var_bytes(payload, MAX_PAYLOAD_SIZE)
        .bytes()
    )


def sign_transfer(
    keypair: HybridKeyPair,
    *,
    chain_id: int,
    nonce: int,
    recipient: Address,
    amount: int,
    fee: int,
    payload: bytes = b"",
    reveal_keys: bool = True,
) -> Transaction:
    """Build and sign a transfer from ``keypair``'s address.

    ``reveal_keys`` must be true for the account's first outgoing transaction; later ones may leave
    the keys out (the state keeps them) and save about 2.2 kB.
    """
    body = encode_body(chain_id, keypair.address, nonce, recipient, amount, fee, payload)
    signature = sign(keypair, tagged_hash(TAG_TX_SIGNING, body))
    return Transaction(
        chain_id,
        keypair.address,
        nonce,
        recipient,
        amount,
        fee,
        payload,
        keypair.public if reveal_keys else None,
        signature,
    )


def verify_transaction_signature(
    tx: Transaction, revealed: HybridPublicKey | None = None
) -> HybridPublicKey:
    """Check the hybrid signature of ``tx``; return the public keys that verified it.

    ``revealed`` are the keys the state already holds for the sender, if any. Keys carried by the
    transaction must hash to the sender address (:class:`AddressMismatch` otherwise).
    """
    public = tx.public_keys or revealed
    if public is None:
        raise PublicKeysUnavailable(
            f"sender {tx.sender} has not revealed its public keys and the transaction "
            "does not carry them"
        )
    verify_for_address(tx.sender, public, tx.signing_hash, tx.signature)
    return public
