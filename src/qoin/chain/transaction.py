"""Transactions: v1 transfers and call transactions; canonical encoding, signing, id, signature.

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

Encoding of a call transaction (type 2), which calls a contract or built-in actor, or deploys a
contract when ``to`` is the zero address (docs/spec/contracts.md §1)::

    tx_type        u8        = 2
    chain_id       varint64
    sender         32 bytes
    nonce          varint64
    to             32 bytes  callee; 32 zero bytes: deploy the module in ``data``
    value          varint64  Shor moved with the call
    data           varbytes  at most MAX_CALL_DATA bytes (method and arguments, or module and
                             init arguments: :mod:`qoin.execution.abi`)
    gas_limit      varint64  most gas the call may use (at least its intrinsic gas)
    fee_per_gas    varint64  Shor paid per gas used
    has_keys, [public_keys], signature   as for a transfer

Signing message, id and commitment are computed as for transfers, over this body (the type byte
keeps the two kinds apart). Both kinds answer the same questions (:data:`AnyTransaction`): the most
they may pay (``max_fee``), the gas they reserve in a block (``gas_limit``), the value they move
(``value``) and their priority (``fee_rate``, Shor per gas).
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
from qoin.encoding.codec import NonCanonicalInteger, OversizeField, Reader, UnknownVersion, Writer

TX_TYPE_TRANSFER_V1 = 1
TX_TYPE_CALL = 2
MAX_PAYLOAD_SIZE = 4096
"""Largest free-form payload a transfer may carry, in bytes."""
TRANSFER_GAS = 21_000
"""Gas a v1 transfer uses and reserves (:data:`qoin.execution.gas.TRANSFER_GAS` is this value)."""
MAX_CALL_DATA = 320 * 1024
"""Largest ``data`` of a call transaction (a module of up to 256 KiB and its init arguments)."""
MAX_GAS_LIMIT = 2**40
"""Largest gas limit a call transaction may name (larger than any block's)."""
DEPLOY_ADDRESS = Address(bytes(ADDRESS_SIZE))
"""The ``to`` of a deployment."""


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
        return _encode_signed(self.body, self.public_keys, self.signature)

    @property
    def value(self) -> int:
        """Shor moved to the recipient."""
        return self.amount

    @property
    def gas_limit(self) -> int:
        """Gas the transfer reserves in a block (and uses): :data:`TRANSFER_GAS`."""
        return TRANSFER_GAS

    @property
    def max_fee(self) -> int:
        """The most the transaction pays the miner: its fixed fee."""
        return self.fee

    @property
    def fee_rate(self) -> float:
        """Priority: Shor per gas."""
        return self.fee / TRANSFER_GAS

    @classmethod
    def read(cls, reader: Reader) -> Transaction:
        """Decode one transfer from a reader (:func:`read_transaction` reads either kind)."""
        start = reader.position
        tx_type = reader.u8()
        if tx_type != TX_TYPE_TRANSFER_V1:
            raise UnknownVersion(f"unknown transaction type {tx_type}")
        return cls._read_rest(reader, start)

    @classmethod
    def _read_rest(cls, reader: Reader, start: int) -> Transaction:
        chain_id = reader.varint()
        sender = Address(reader.fixed(ADDRESS_SIZE))
        nonce = reader.varint()
        recipient = Address(reader.fixed(ADDRESS_SIZE))
        amount = reader.varint()
        fee = reader.varint()
        payload = reader.var_bytes(MAX_PAYLOAD_SIZE)
        body = reader.consumed_since(start)
        public_keys, signature = _read_signed(reader)
        tx = cls(chain_id, sender, nonce, recipient, amount, fee, payload, public_keys, signature)
        # Canonical decoding: the input bytes are exactly the encoding (and the body its prefix).
        tx.__dict__["encoded"] = reader.consumed_since(start)
        tx.__dict__["body"] = body
        return tx

    @classmethod
    def decode(cls, data: bytes) -> Transaction:
        """Decode a standalone transfer; trailing bytes are an error."""
        reader = Reader(data)
        tx = cls.read(reader)
        reader.finish()
        return tx


@dataclass(frozen=True)
class CallTransaction:
    """A signed call of a contract or built-in actor, or a deployment (``to`` = zero address)."""

    chain_id: int
    """Network id; the signature commits to it."""
    sender: Address
    """Address of the signing account."""
    nonce: int
    """Number of transactions the sender sent before this one."""
    to: Address
    """The callee; :data:`DEPLOY_ADDRESS` deploys the module carried in ``data``."""
    value: int
    """Shor moved to the callee with the call (undone if the call fails)."""
    data: bytes
    """Method and arguments, or module and init arguments (:mod:`qoin.execution.abi`)."""
    gas_limit: int
    """Most gas the call may use; reserved in the block."""
    fee_per_gas: int
    """Shor paid per gas used."""
    public_keys: HybridPublicKey | None
    """The sender's keys, carried only by an account's first outgoing transaction."""
    signature: HybridSignature
    """Hybrid signature over :attr:`signing_hash`."""

    @cached_property
    def body(self) -> bytes:
        """Canonical encoding of the signed fields."""
        return encode_call_body(
            self.chain_id,
            self.sender,
            self.nonce,
            self.to,
            self.value,
            self.data,
            self.gas_limit,
            self.fee_per_gas,
        )

    @cached_property
    def signing_hash(self) -> bytes:
        """The 32-byte message the sender signs."""
        return tagged_hash(TAG_TX_SIGNING, self.body)

    @cached_property
    def tx_id(self) -> bytes:
        """The transaction id (the signed body only, as for transfers)."""
        return tagged_hash(TAG_TX_ID, self.body)

    @cached_property
    def commitment(self) -> bytes:
        """Hash of the whole encoding, revealed keys included (what a block commits to)."""
        return tagged_hash(TAG_TX_COMMITMENT, self.encode())

    def encode(self) -> bytes:
        """Canonical encoding of the whole transaction."""
        return self.encoded

    @cached_property
    def encoded(self) -> bytes:
        """The canonical encoding, computed once (taken from the input when decoded)."""
        return _encode_signed(self.body, self.public_keys, self.signature)

    @property
    def recipient(self) -> Address:
        """The callee (what a transfer calls its recipient)."""
        return self.to

    @property
    def is_deploy(self) -> bool:
        """Whether this deploys a contract."""
        return self.to == DEPLOY_ADDRESS

    @property
    def max_fee(self) -> int:
        """The most the call can pay: ``gas_limit x fee_per_gas``."""
        return self.gas_limit * self.fee_per_gas

    @property
    def fee_rate(self) -> float:
        """Priority: Shor per gas."""
        return float(self.fee_per_gas)

    @classmethod
    def read(cls, reader: Reader) -> CallTransaction:
        """Decode one call transaction from a reader."""
        start = reader.position
        tx_type = reader.u8()
        if tx_type != TX_TYPE_CALL:
            raise UnknownVersion(f"unknown transaction type {tx_type}")
        return cls._read_rest(reader, start)

    @classmethod
    def _read_rest(cls, reader: Reader, start: int) -> CallTransaction:
        chain_id = reader.varint()
        sender = Address(reader.fixed(ADDRESS_SIZE))
        nonce = reader.varint()
        to = Address(reader.fixed(ADDRESS_SIZE))
        value = reader.varint()
        data = reader.var_bytes(MAX_CALL_DATA)
        gas_limit = reader.varint()
        if gas_limit > MAX_GAS_LIMIT:
            raise OversizeField(f"gas limit {gas_limit} exceeds {MAX_GAS_LIMIT}")
        fee_per_gas = reader.varint()
        body = reader.consumed_since(start)
        public_keys, signature = _read_signed(reader)
        tx = cls(
            chain_id, sender, nonce, to, value, data, gas_limit, fee_per_gas, public_keys, signature
        )
        tx.__dict__["encoded"] = reader.consumed_since(start)
        tx.__dict__["body"] = body
        return tx

    @classmethod
    def decode(cls, data: bytes) -> CallTransaction:
        """Decode a standalone call transaction; trailing bytes are an error."""
        reader = Reader(data)
        tx = cls.read(reader)
        reader.finish()
        return tx


AnyTransaction = Transaction | CallTransaction
"""Either kind of transaction, as blocks, the mempool and the RPC carry them."""


def read_transaction(reader: Reader) -> AnyTransaction:
    """Decode one transaction of either kind from a reader (by its type byte)."""
    start = reader.position
    tx_type = reader.u8()
    if tx_type == TX_TYPE_TRANSFER_V1:
        return Transaction._read_rest(reader, start)
    if tx_type == TX_TYPE_CALL:
        return CallTransaction._read_rest(reader, start)
    raise UnknownVersion(f"unknown transaction type {tx_type}")


def decode_transaction(data: bytes) -> AnyTransaction:
    """Decode a standalone transaction of either kind; trailing bytes are an error."""
    reader = Reader(data)
    tx = read_transaction(reader)
    reader.finish()
    return tx


def _encode_signed(
    body: bytes, public_keys: HybridPublicKey | None, signature: HybridSignature
) -> bytes:
    writer = Writer().raw(body)
    if public_keys is None:
        writer.u8(0)
    else:
        writer.u8(1).raw(public_keys.encode())
    return writer.raw(signature.encode()).bytes()


def _read_signed(reader: Reader) -> tuple[HybridPublicKey | None, HybridSignature]:
    has_keys = reader.u8()
    if has_keys > 1:
        raise NonCanonicalInteger(f"public-key flag must be 0 or 1, got {has_keys}")
    public_keys = HybridPublicKey.read(reader) if has_keys else None
    return public_keys, HybridSignature.read(reader)


def encode_call_body(
    chain_id: int,
    sender: Address,
    nonce: int,
    to: Address,
    value: int,
    data: bytes,
    gas_limit: int,
    fee_per_gas: int,
) -> bytes:
    """Canonical encoding of a call transaction's signed fields."""
    if gas_limit > MAX_GAS_LIMIT:
        raise OversizeField(f"gas limit {gas_limit} exceeds {MAX_GAS_LIMIT}")
    return (
        Writer()
        .u8(TX_TYPE_CALL)
        .varint(chain_id)
        .fixed(sender.raw, ADDRESS_SIZE)
        .varint(nonce)
        .fixed(to.raw, ADDRESS_SIZE)
        .varint(value)
        .var_bytes(data, MAX_CALL_DATA)
        .varint(gas_limit)
        .varint(fee_per_gas)
        .bytes()
    )


def sign_call(
    keypair: HybridKeyPair,
    *,
    chain_id: int,
    nonce: int,
    to: Address,
    data: bytes,
    gas_limit: int,
    fee_per_gas: int,
    value: int = 0,
    reveal_keys: bool = True,
) -> CallTransaction:
    """Build and sign a call (or, with ``to=DEPLOY_ADDRESS``, a deployment) from ``keypair``."""
    body = encode_call_body(
        chain_id, keypair.address, nonce, to, value, data, gas_limit, fee_per_gas
    )
    signature = sign(keypair, tagged_hash(TAG_TX_SIGNING, body))
    return CallTransaction(
        chain_id,
        keypair.address,
        nonce,
        to,
        value,
        data,
        gas_limit,
        fee_per_gas,
        keypair.public if reveal_keys else None,
        signature,
    )


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
    tx: AnyTransaction, revealed: HybridPublicKey | None = None
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
