"""Transfer transactions: canonical encoding, domain-separated hashes, signature checks."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qoin.chain.transaction import (
    MAX_PAYLOAD_SIZE,
    PublicKeysUnavailable,
    Transaction,
    sign_transfer,
    verify_transaction_signature,
)
from qoin.crypto.hybrid import AddressMismatch, ComponentInvalid, HybridKeyPair
from qoin.encoding.codec import (
    DecodeError,
    NonCanonicalInteger,
    OversizeField,
    TrailingBytes,
    TruncatedInput,
    UnknownVersion,
    encode_varint,
)
from tests.strategies import transactions


@given(transactions)
def test_roundtrip(tx: Transaction) -> None:
    assert Transaction.decode(tx.encode()) == tx


@settings(max_examples=300)
@given(transactions, st.data())
def test_decoding_is_canonical_under_mutation(tx: Transaction, data: st.DataObject) -> None:
    encoded = bytearray(tx.encode())
    position = data.draw(st.integers(min_value=0, max_value=len(encoded) - 1))
    encoded[position] = data.draw(st.integers(min_value=0, max_value=255))
    cut = data.draw(st.integers(min_value=0, max_value=4))
    mutated = bytes(encoded[: len(encoded) - cut])
    try:
        decoded = Transaction.decode(mutated)
    except DecodeError:
        return
    assert decoded.encode() == mutated


@given(st.binary(max_size=200))
def test_random_bytes_decode_canonically_or_fail(raw: bytes) -> None:
    try:
        decoded = Transaction.decode(b"\x01" + raw)
    except DecodeError:
        return
    assert decoded.encode() == b"\x01" + raw


def _transfer(keypair: HybridKeyPair, recipient: HybridKeyPair, **kw: object) -> Transaction:
    fields: dict[str, object] = {
        "chain_id": 7,
        "nonce": 0,
        "recipient": recipient.address,
        "amount": 1_000,
        "fee": 10,
    }
    fields.update(kw)
    return sign_transfer(keypair, **fields)  # type: ignore[arg-type]


def test_signed_transfer_verifies(alice: HybridKeyPair, bob: HybridKeyPair) -> None:
    tx = _transfer(alice, bob, payload=b"memo")
    assert verify_transaction_signature(tx) == alice.public
    decoded = Transaction.decode(tx.encode())
    assert decoded.tx_id == tx.tx_id
    verify_transaction_signature(decoded)


def test_keys_not_carried_use_revealed_keys(alice: HybridKeyPair, bob: HybridKeyPair) -> None:
    tx = _transfer(alice, bob, nonce=1, reveal_keys=False)
    assert tx.public_keys is None
    with pytest.raises(PublicKeysUnavailable):
        verify_transaction_signature(tx)
    verify_transaction_signature(tx, revealed=alice.public)
    with pytest.raises(AddressMismatch):
        verify_transaction_signature(tx, revealed=bob.public)


def test_tx_id_ignores_revealed_keys(alice: HybridKeyPair, bob: HybridKeyPair) -> None:
    tx = _transfer(alice, bob)
    stripped = Transaction(**{**tx.__dict__, "public_keys": None})
    assert stripped.tx_id == tx.tx_id
    assert len(stripped.encode()) < len(tx.encode())


def test_public_key_not_matching_sender_rejected(alice: HybridKeyPair, bob: HybridKeyPair) -> None:
    tx = _transfer(alice, bob)
    forged = Transaction(**{**tx.__dict__, "public_keys": bob.public})
    with pytest.raises(AddressMismatch):
        verify_transaction_signature(forged)


def test_no_cross_chain_replay(alice: HybridKeyPair, bob: HybridKeyPair) -> None:
    tx = _transfer(alice, bob, chain_id=1)
    replayed = Transaction(**{**tx.__dict__, "chain_id": 2})
    assert replayed.signing_hash != tx.signing_hash
    assert replayed.tx_id != tx.tx_id
    with pytest.raises(ComponentInvalid):
        verify_transaction_signature(replayed)


@pytest.mark.parametrize("field", ["nonce", "amount", "fee"])
def test_changed_field_invalidates_signature(
    alice: HybridKeyPair, bob: HybridKeyPair, field: str
) -> None:
    tx = _transfer(alice, bob)
    changed = Transaction(**{**tx.__dict__, field: getattr(tx, field) + 1})
    with pytest.raises(ComponentInvalid):
        verify_transaction_signature(changed)


def test_signing_hash_and_id_are_domain_separated(alice: HybridKeyPair, bob: HybridKeyPair) -> None:
    tx = _transfer(alice, bob)
    assert tx.signing_hash != tx.tx_id
    assert len(tx.tx_id) == 32


def test_decode_rejections(alice: HybridKeyPair, bob: HybridKeyPair) -> None:
    encoded = _transfer(alice, bob).encode()
    with pytest.raises(TrailingBytes):
        Transaction.decode(encoded + b"\x00")
    with pytest.raises(TruncatedInput):
        Transaction.decode(encoded[:-1])
    with pytest.raises(UnknownVersion):
        Transaction.decode(b"\x02" + encoded[1:])
    # chain id 7 written as the non-minimal varint 0x87 0x00
    with pytest.raises(NonCanonicalInteger):
        Transaction.decode(encoded[:1] + b"\x87\x00" + encoded[2:])


def test_oversize_payload_rejected(alice: HybridKeyPair, bob: HybridKeyPair) -> None:
    with pytest.raises(OversizeField):
        _transfer(alice, bob, payload=bytes(MAX_PAYLOAD_SIZE + 1))
    tx = _transfer(alice, bob)
    body_without_payload = tx.body[:-1]  # empty payload is the single length byte 0x00
    forged = body_without_payload + encode_varint(MAX_PAYLOAD_SIZE + 1)
    with pytest.raises(OversizeField):
        Transaction.decode(forged + bytes(MAX_PAYLOAD_SIZE + 1))


def test_bad_key_flag_rejected(alice: HybridKeyPair, bob: HybridKeyPair) -> None:
    tx = _transfer(alice, bob, reveal_keys=False)
    encoded = bytearray(tx.encode())
    encoded[len(tx.body)] = 2
    with pytest.raises(NonCanonicalInteger):
        Transaction.decode(bytes(encoded))
