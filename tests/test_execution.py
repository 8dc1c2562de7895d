"""Executing blocks of transfers: every rule, with dict-backed pre-states."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qoin.chain.block import Block, Coinbase, Payout
from qoin.chain.transaction import Transaction, sign_transfer
from qoin.crypto.address import Address
from qoin.crypto.hybrid import HybridKeyPair
from qoin.encoding.codec import DecodeError, Reader, encode_varint
from qoin.execution.account import (
    EMPTY_ACCOUNT,
    Account,
    AccountLeaf,
    AccountLeavesInvalid,
    account_writes,
    keys_key,
    read_account,
    state_key,
)
from qoin.execution.receipt import Receipt, decode_receipts, encode_receipts
from qoin.execution.transition import (
    BadFeePayout,
    BadNonce,
    BadSignature,
    BalanceOverflow,
    InsufficientBalance,
    KeysMismatch,
    MissingPublicKey,
    execute_block,
    touched_addresses,
)
from tests.chainutil import test_genesis
from tests.keys import keypair_for
from tests.statetools import post_accounts, reader
from tests.strategies import HASHES

CHAIN = test_genesis().chain_id
MINER = keypair_for(index=5).address


def transfer(
    sender: HybridKeyPair,
    to: Address,
    amount: int,
    fee: int = 2,
    nonce: int = 0,
    reveal: bool = True,
) -> Transaction:
    return sign_transfer(
        sender,
        chain_id=CHAIN,
        nonce=nonce,
        recipient=to,
        amount=amount,
        fee=fee,
        reveal_keys=reveal,
    )


def block_of(*txs: Transaction, reward: int = 100, fees: int | None = None) -> Block:
    paid = sum(tx.fee for tx in txs) if fees is None else fees
    coinbase = Coinbase((Payout(MINER, reward), Payout(MINER, paid)))
    return Block(test_genesis().header, (), coinbase, tuple(txs))


def test_transfers_apply_in_order() -> None:
    alice, bob = keypair_for(index=2), keypair_for(index=3)
    state = {alice.address: Account(1_000)}
    txs = [
        transfer(alice, bob.address, 100, nonce=0),
        transfer(alice, bob.address, 50, nonce=1, reveal=False),  # keys revealed by tx 0
    ]
    outcome = execute_block(reader(state), block_of(*txs), workers=2)
    post = post_accounts(state, outcome, bob.address, MINER)
    assert post[alice.address] == Account(1_000 - 154, 2, alice.public)
    assert post[bob.address] == Account(150, 0, None)
    assert post[MINER] == Account(104)
    assert [r.revealed_keys for r in outcome.receipts] == [True, False]
    assert [r.fee for r in outcome.receipts] == [2, 2]
    assert touched_addresses(block_of(*txs)) == [alice.address, bob.address, MINER]


def test_revealed_keys_from_state() -> None:
    alice, bob = keypair_for(index=2), keypair_for(index=3)
    state = {alice.address: Account(500, 3, alice.public)}
    tx = transfer(alice, bob.address, 10, nonce=3, reveal=False)
    outcome = execute_block(reader(state), block_of(tx))
    assert post_accounts(state, outcome)[alice.address].nonce == 4
    assert outcome.receipts[0].revealed_keys is False


def test_missing_keys() -> None:
    alice, bob = keypair_for(index=2), keypair_for(index=3)
    tx = transfer(alice, bob.address, 10, reveal=False)
    with pytest.raises(MissingPublicKey):
        execute_block(reader({alice.address: Account(500)}), block_of(tx))


def test_keys_of_someone_else() -> None:
    alice, bob = keypair_for(index=2), keypair_for(index=3)
    tx = transfer(alice, bob.address, 10)
    forged = Transaction(**{**tx.__dict__, "public_keys": bob.public})
    with pytest.raises(KeysMismatch):
        execute_block(reader({alice.address: Account(500)}), block_of(forged))


def test_bad_signature() -> None:
    alice, bob = keypair_for(index=2), keypair_for(index=3)
    tx = transfer(alice, bob.address, 10)
    forged = Transaction(**{**tx.__dict__, "amount": 11})
    with pytest.raises(BadSignature, match="transaction 0"):
        execute_block(reader({alice.address: Account(500)}), block_of(forged))


def test_nonce_rules() -> None:
    alice, bob = keypair_for(index=2), keypair_for(index=3)
    state = {alice.address: Account(500, 1, alice.public)}
    with pytest.raises(BadNonce):
        execute_block(reader(state), block_of(transfer(alice, bob.address, 1, nonce=0)))
    with pytest.raises(BadNonce):
        execute_block(reader(state), block_of(transfer(alice, bob.address, 1, nonce=2)))


def test_double_spend_rejected() -> None:
    alice, bob, carol = keypair_for(index=2), keypair_for(index=3), keypair_for(index=4)
    state = {alice.address: Account(100)}
    txs = [
        transfer(alice, bob.address, 90, nonce=0),
        transfer(alice, carol.address, 90, nonce=1, reveal=False),
    ]
    with pytest.raises(InsufficientBalance, match="transaction 1"):
        execute_block(reader(state), block_of(*txs))


def test_fee_payout_must_match() -> None:
    alice, bob = keypair_for(index=2), keypair_for(index=3)
    tx = transfer(alice, bob.address, 10, fee=5)
    with pytest.raises(BadFeePayout):
        execute_block(reader({alice.address: Account(500)}), block_of(tx, fees=6))


def test_balance_overflow() -> None:
    alice, bob = keypair_for(index=2), keypair_for(index=3)
    state = {alice.address: Account(500), bob.address: Account(2**64 - 5)}
    with pytest.raises(BalanceOverflow):
        execute_block(reader(state), block_of(transfer(alice, bob.address, 10)))


def test_account_leaves_roundtrip() -> None:
    alice = keypair_for(index=2)
    for account in (EMPTY_ACCOUNT, Account(5, 7), Account(2**64 - 1, 1, alice.public)):
        assert AccountLeaf.decode(account.leaf.encode()) == account.leaf
        leaves = account_writes(alice.address, EMPTY_ACCOUNT, account)
        assert read_account(leaves.get, alice.address) == account
    # the keys leaf is written once, by the reveal, and never rewritten
    revealed = Account(5, 1, alice.public)
    assert list(account_writes(alice.address, revealed, replace(revealed, balance=9))) == [
        state_key(alice.address)
    ]
    assert account_writes(alice.address, revealed, revealed) == {}


def test_account_leaves_that_do_not_fit_together() -> None:
    alice, bob = keypair_for(index=2), keypair_for(index=3)
    leaves = account_writes(alice.address, EMPTY_ACCOUNT, Account(5, 1, alice.public))
    with pytest.raises(AccountLeavesInvalid, match="no keys leaf"):
        read_account(
            {state_key(alice.address): leaves[state_key(alice.address)]}.get, alice.address
        )
    with pytest.raises(AccountLeavesInvalid, match="holds keys of"):
        read_account({**leaves, keys_key(alice.address): bob.public.encode()}.get, alice.address)
    with pytest.raises(AccountLeavesInvalid, match="revealed flag"):
        read_account({state_key(alice.address): b"\x01\x05\x01\x02"}.get, alice.address)


def test_receipt_encoding_is_canonical() -> None:
    receipt = execute_block(
        reader({keypair_for(index=2).address: Account(1_000)}),
        block_of(transfer(keypair_for(index=2), keypair_for(index=3).address, 5, fee=300)),
    ).receipts[0]
    data = receipt.encode()
    parsed = Reader(data)
    assert parsed.u8() == 2  # receipt version
    assert parsed.varint() == 0
    assert parsed.fixed(32) == receipt.tx_id
    assert parsed.fixed(32) == receipt.sender.raw
    assert parsed.varint() == 300
    assert parsed.u8() == 1
    assert parsed.u8() == 0  # success
    assert parsed.varint() == 21_000  # a transfer's gas
    assert parsed.var_bytes(256) == b""  # no reason
    assert parsed.var_bytes(1 << 14) == b""  # no return data
    assert parsed.varint() == 0  # no events
    parsed.finish()


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(HASHES, HASHES, st.integers(0, 2**64 - 1), st.booleans()), max_size=12),
    st.binary(max_size=8),
)
def test_block_receipts_record_roundtrip_and_rejects_bad_input(
    fields: list[tuple[bytes, bytes, int, bool]], junk: bytes
) -> None:
    receipts = tuple(
        Receipt(i, tx_id, Address(sender), fee, revealed)
        for i, (tx_id, sender, fee, revealed) in enumerate(fields)
    )
    record = encode_receipts(receipts)
    assert decode_receipts(record) == receipts
    if junk:
        with pytest.raises(DecodeError):
            decode_receipts(record + junk)
    with pytest.raises(DecodeError):  # a count the record does not hold
        decode_receipts(encode_varint(len(receipts) + 1) + record[1:])
    if receipts:
        shifted = (replace(receipts[0], index=1), *receipts[1:])
        with pytest.raises(DecodeError, match="carries index"):
            decode_receipts(encode_receipts(shifted))
        flag_at = len(encode_varint(len(receipts))) + len(receipts[0].encode()) - 6
        bad_flag = record[:flag_at] + b"\x02" + record[flag_at + 1 :]
        with pytest.raises(DecodeError, match="flag"):
            decode_receipts(bad_flag)
