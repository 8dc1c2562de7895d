"""Blocks with call transactions for tests: signing (cached by content), building a block whose fee
payout comes from executing it, contracts from ``examples/contracts``."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from qoin.chain.block import Block, Coinbase, Payout, transactions_root
from qoin.chain.transaction import (
    DEPLOY_ADDRESS,
    AnyTransaction,
    CallTransaction,
    sign_call,
    sign_transfer,
)
from qoin.crypto.address import Address
from qoin.crypto.hybrid import HybridKeyPair
from qoin.execution.abi import Value, encode_call, encode_deploy
from qoin.execution.overlay import Read
from qoin.execution.transition import execute_block
from tests.chainutil import test_genesis

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "contracts"
CHAIN = test_genesis().chain_id
_SIGNED: dict[tuple[object, ...], AnyTransaction] = {}


def example(name: str) -> bytes:
    """A built example contract (``counter.wasm``, ``token.wasm``, ...)."""
    return (EXAMPLES / name).read_bytes()


def call_tx(
    sender: HybridKeyPair,
    nonce: int,
    to: Address,
    method: str,
    args: tuple[Value, ...] = (),
    *,
    value: int = 0,
    gas: int = 300_000,
    fee_per_gas: int = 1,
    reveal: bool = True,
) -> CallTransaction:
    """A signed call (cached by content: signing costs milliseconds)."""
    key = ("call", sender.address, nonce, to, method, args, value, gas, fee_per_gas, reveal)
    if key not in _SIGNED:
        _SIGNED[key] = sign_call(
            sender,
            chain_id=CHAIN,
            nonce=nonce,
            to=to,
            data=encode_call(method, args),
            gas_limit=gas,
            fee_per_gas=fee_per_gas,
            value=value,
            reveal_keys=reveal,
        )
    found = _SIGNED[key]
    assert isinstance(found, CallTransaction)
    return found


def deploy_tx(
    sender: HybridKeyPair,
    nonce: int,
    code: bytes,
    args: tuple[Value, ...] = (),
    *,
    gas: int = 2_000_000,
    reveal: bool = True,
) -> CallTransaction:
    """A signed deployment (cached by content)."""
    key = ("deploy", sender.address, nonce, code, args, gas, reveal)
    if key not in _SIGNED:
        _SIGNED[key] = sign_call(
            sender,
            chain_id=CHAIN,
            nonce=nonce,
            to=DEPLOY_ADDRESS,
            data=encode_deploy(code, args),
            gas_limit=gas,
            fee_per_gas=1,
            reveal_keys=reveal,
        )
    found = _SIGNED[key]
    assert isinstance(found, CallTransaction)
    return found


def transfer_tx(
    sender: HybridKeyPair, nonce: int, to: Address, amount: int, reveal: bool = True
) -> AnyTransaction:
    """A signed transfer with fee 1 (cached by content)."""
    key = ("transfer", sender.address, nonce, to, amount, reveal)
    if key not in _SIGNED:
        _SIGNED[key] = sign_transfer(
            sender,
            chain_id=CHAIN,
            nonce=nonce,
            recipient=to,
            amount=amount,
            fee=1,
            reveal_keys=reveal,
        )
    return _SIGNED[key]


def built_block(
    read: Read, txs: list[AnyTransaction], miner: Address, height: int = 1, reward: int = 77
) -> Block:
    """A block of ``txs`` at ``height`` over the pre-state ``read``, its fee payout filled in by
    executing it (as a block builder does). Raises what the execution raises for a bad block."""
    header = replace(test_genesis().header, height=height)
    template = Block(header, (), Coinbase((Payout(miner, reward), Payout(miner, 0))), tuple(txs))
    coinbase = execute_block(read, template, fill_fee_payout=True).coinbase
    header = replace(header, transactions_root=transactions_root(coinbase, tuple(txs)))
    return replace(template, header=header, coinbase=coinbase)
