"""The state transition of a block, as a function of the pre-state of the keys it touches.

``execute_block(read, block)`` is shared by the stateful execution client (``read`` backed by the
state database) and by stateless re-execution from a witness (``read`` backed by proven values), so
both compute the same post-state by construction:

1. Resolve each transaction's public keys: the keys it carries (its sender's first outgoing
   transaction), else keys revealed earlier in this block, else the keys the state holds.
2. Verify every hybrid signature, in parallel on all cores (the libraries release the GIL).
3. The *cron step*: run the due cron calls (:mod:`qoin.execution.cron`).
4. One step per transaction, in order:

   * a v1 transfer: nonce equal to the account's, balance covering amount plus fee, debit, nonce + 1,
     first-spend key reveal, credit the recipient (no code runs, whoever the recipient is); it uses
     :data:`~qoin.execution.gas.TRANSFER_GAS`;
   * a call: nonce, intrinsic gas within the gas limit, balance covering value plus the most it can
     pay (``gas_limit x fee_per_gas``); the sender pays that up front, the call (or deployment) runs
     in a frame with what gas is left (:mod:`qoin.execution.vm`), and the unused gas is refunded. A
     call that reverts, runs out of gas or fails is still included: its receipt says why, its fee
     is charged and nothing else it did stands.

5. The *payout step*: credit the coinbase payouts; the last one (the fees) must equal the fees the
   transactions were charged.
6. One receipt per transaction, then one per cron call, and their root.

A broken rule in 4 or 5 (a bad nonce, a sender who cannot pay, intrinsic gas above the limit, a wrong
fee payout) makes the whole block invalid with a typed reason; a call's own failure does not.
Every step's reads and writes are recorded (:class:`~qoin.execution.trace.BlockTrace`): what
witnesses prove and what account state sampling re-executes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from qoin.chain.block import Block, Coinbase, Payout
from qoin.chain.transaction import AnyTransaction, CallTransaction
from qoin.crypto.address import Address
from qoin.crypto.batch import start_verifying, verify_many
from qoin.crypto.hybrid import HybridPublicKey, is_valid
from qoin.encoding.codec import DecodeError
from qoin.errors import QoinError
from qoin.execution import cron
from qoin.execution import gas as costs
from qoin.execution.abi import decode_call
from qoin.execution.account import AccountLeaf, keys_key
from qoin.execution.overlay import Read, StateOverlay, StepAccess, step_reader
from qoin.execution.receipt import CallStatus, Receipt, receipts_root
from qoin.execution.trace import BlockTrace
from qoin.execution.vm import MAX_BALANCE, Actor, BlockEnv, CallResult, Machine, Runtime


class InvalidExecution(QoinError):
    """A block cannot be executed on its parent state; the subclass names the rule."""


class MissingPublicKey(InvalidExecution):
    """A sender has not revealed its keys and its transaction does not carry them."""


class KeysMismatch(InvalidExecution):
    """Carried public keys do not hash to the sender address."""


class BadSignature(InvalidExecution):
    """A transaction's hybrid signature does not verify."""


class BadNonce(InvalidExecution):
    """A transaction's nonce is not the sender's next nonce."""


class InsufficientBalance(InvalidExecution):
    """The sender cannot pay amount plus fee (a call: value plus its gas limit's worth)."""


class BalanceOverflow(InvalidExecution):
    """A credit would push a balance past 2^64 - 1 Shor."""


class IntrinsicGasTooLow(InvalidExecution):
    """A call's gas limit does not cover its intrinsic gas."""


class BadFeePayout(InvalidExecution):
    """The coinbase's fee payout is not the sum of the fees the transactions were charged."""


class BadState(InvalidExecution):
    """A leaf of the pre-state does not decode (a corrupt database or a lying witness)."""


@dataclass(frozen=True)
class BlockOutcome:
    """The result of executing a block."""

    changes: Mapping[bytes, bytes]
    """Every state key the block changed, with its new value (the tree update)."""
    touched: Mapping[bytes, bytes | None]
    """The post-state value of every key the block read or wrote (None: absent)."""
    receipts: tuple[Receipt, ...]
    """One per transaction, in order, then one per cron call."""
    receipts_root: bytes
    """Root of the receipts."""
    trace: BlockTrace
    """What each step read and wrote."""
    fees: int
    """Fees the transactions were charged (what the last coinbase payout pays)."""
    coinbase: Coinbase
    """The coinbase as executed (with the fee payout filled in, when asked to fill it)."""
    gas_used: int
    """Gas the transactions used."""


@dataclass(frozen=True)
class Platform:
    """What executes contract and actor code: the built-in actors and the WebAssembly runtime."""

    actors: Mapping[Address, Actor]
    """Built-in actors by address."""
    runtime: Runtime
    """The WebAssembly runtime (with its compiled-module cache)."""


_PLATFORM: list[Platform] = []


def default_platform() -> Platform:
    """The node's actors and runtime (built on first use: importing the runtime loads wasmtime)."""
    if not _PLATFORM:
        from qoin.actors import builtin_actors  # noqa: PLC0415 - deferred: loads every actor
        from qoin.contracts.wasm import default_runtime  # noqa: PLC0415 - deferred: wasmtime

        _PLATFORM.append(Platform(builtin_actors(), default_runtime()))
    return _PLATFORM[0]


def touched_addresses(block: Block) -> list[Address]:
    """Every account the block's transactions and payouts name, in first-touch order (the keys a
    block reads go beyond these: see :class:`~qoin.execution.trace.BlockTrace`)."""
    seen: dict[Address, None] = {}
    for tx in block.transactions:
        seen.setdefault(tx.sender)
        seen.setdefault(tx.recipient)
    for payout in block.coinbase.payouts:
        seen.setdefault(payout.recipient)
    return list(seen)


def block_env(block: Block) -> BlockEnv:
    """What the calls of ``block`` may know about it."""
    header = block.header
    return BlockEnv(header.chain_id, header.height, header.timestamp_ms, header.parent_hash)


_KEYS_CACHE: dict[bytes, HybridPublicKey] = {}
_KEYS_CACHE_SIZE = 65_536


def decode_keys(raw: bytes) -> HybridPublicKey:
    """A keys leaf's public key (decoded once per process: a leaf never changes)."""
    found = _KEYS_CACHE.get(raw)
    if found is None:
        try:
            found = HybridPublicKey.decode(raw)
        except QoinError as exc:
            raise BadState(f"a keys leaf does not decode: {exc}") from None
        if len(_KEYS_CACHE) >= _KEYS_CACHE_SIZE:
            _KEYS_CACHE.clear()
        _KEYS_CACHE[raw] = found
    return found


def resolve_keys(transactions: Sequence[AnyTransaction], read: Read) -> list[HybridPublicKey]:
    """The keys each transaction must be verified with (step 1)."""
    revealed: dict[Address, HybridPublicKey] = {}
    keys = []
    for index, tx in enumerate(transactions):
        public = tx.public_keys or revealed.get(tx.sender)
        if public is None:
            raw = read(keys_key(tx.sender))
            public = None if raw is None else decode_keys(raw)
        if public is None:
            raise MissingPublicKey(
                f"transaction {index} ({tx.tx_id.hex()[:16]}): sender {tx.sender} has not "
                "revealed its public keys and the transaction does not carry them"
            )
        if public.address != tx.sender:
            raise KeysMismatch(
                f"transaction {index}: public keys belong to {public.address}, not {tx.sender}"
            )
        revealed.setdefault(tx.sender, public)
        keys.append(public)
    return keys


def _leaf(machine: Machine, address: Address) -> AccountLeaf:
    try:
        return machine.leaf(address)
    except DecodeError as exc:
        raise BadState(f"the account leaf of {address} is invalid: {exc}") from None


def _debit_sender(
    machine: Machine,
    tx: AnyTransaction,
    index: int,
    keys: HybridPublicKey,
    cost: int,
    need: int | None = None,
) -> bool:
    """Nonce check, the balance check (covering ``need``, by default ``cost``), the debit of
    ``cost``, nonce + 1 and the key reveal; returns whether this transaction revealed the
    sender's keys."""
    sender = _leaf(machine, tx.sender)
    if tx.nonce != sender.nonce:
        raise BadNonce(f"transaction {index}: nonce {tx.nonce}, account expects {sender.nonce}")
    needed = cost if need is None else need
    if needed > sender.balance:
        raise InsufficientBalance(
            f"transaction {index}: {tx.sender} has {sender.balance} Shor, needs {needed}"
        )
    reveals = not sender.revealed
    if reveals:
        machine.state.set(keys_key(tx.sender), keys.encode())
    elif tx.public_keys is None:
        machine.state.get(keys_key(tx.sender))  # the keys the signature was checked with
    machine.set_leaf(
        tx.sender, AccountLeaf(sender.balance - cost, sender.nonce + 1, True, sender.code_hash)
    )
    return reveals


def _credit(machine: Machine, address: Address, amount: int, what: str) -> None:
    """Credit ``amount`` (nothing at all for 0: an absent account that receives nothing stays
    absent)."""
    if not amount:
        return
    leaf = _leaf(machine, address)
    if leaf.balance + amount > MAX_BALANCE:
        raise BalanceOverflow(f"{what} would overflow the balance of {address}")
    machine.set_leaf(
        address, AccountLeaf(leaf.balance + amount, leaf.nonce, leaf.revealed, leaf.code_hash)
    )


def apply_transaction(
    machine: Machine, tx: AnyTransaction, index: int, keys: HybridPublicKey
) -> Receipt:
    """Step 4 for one transaction (its signature is checked apart); raises
    :class:`InvalidExecution` if the transaction cannot be in the block."""
    if isinstance(tx, CallTransaction):
        return _apply_call(machine, tx, index, keys)
    reveals = _debit_sender(machine, tx, index, keys, tx.amount + tx.fee)
    _credit(machine, tx.recipient, tx.amount, f"transaction {index}")
    return Receipt(index, tx.tx_id, tx.sender, tx.fee, reveals, gas_used=costs.TRANSFER_GAS)


def _apply_call(
    machine: Machine, tx: CallTransaction, index: int, keys: HybridPublicKey
) -> Receipt:
    intrinsic = costs.call_intrinsic_gas(len(tx.data))
    if tx.gas_limit < intrinsic:
        raise IntrinsicGasTooLow(
            f"transaction {index}: gas limit {tx.gas_limit} is below its intrinsic gas {intrinsic}"
        )
    # The sender must hold the value too, but it moves inside the frame (undone if the call fails).
    reveals = _debit_sender(machine, tx, index, keys, tx.max_fee, need=tx.value + tx.max_fee)
    machine.begin_step()
    budget = tx.gas_limit - intrinsic
    if tx.is_deploy:
        result = machine.deploy(
            deployer=tx.sender, nonce=tx.nonce, data=tx.data, value=tx.value, gas=budget
        )
    else:
        try:
            call = decode_call(tx.data)
        except DecodeError as exc:
            result = CallResult(CallStatus.FAILED, b"", 0, f"bad call data: {exc}")
        else:
            result = machine.call(
                caller=tx.sender,
                origin=tx.sender,
                to=tx.to,
                value=tx.value,
                method=call.method,
                args=call.args,
                gas=budget,
                depth=1,
            )
    gas_used = intrinsic + result.gas_used
    refund = (tx.gas_limit - gas_used) * tx.fee_per_gas
    _credit(machine, tx.sender, refund, f"transaction {index}'s refund")
    events = tuple(machine.events) if result.succeeded else ()
    machine.events.clear()
    return Receipt(
        index,
        tx.tx_id,
        tx.sender,
        gas_used * tx.fee_per_gas,
        reveals,
        result.status,
        gas_used,
        result.reason,
        result.return_data,
        events,
    )


def apply_payouts(machine: Machine, payouts: Sequence[Payout], fees: int) -> None:
    """Step 5: credit the payouts; the last must pay exactly ``fees``."""
    if not payouts or payouts[-1].amount != fees:
        raise BadFeePayout(f"the last coinbase payout must be the {fees} Shor of fees charged")
    for payout in payouts:
        _credit(machine, payout.recipient, payout.amount, "a coinbase payout")


def _check_verdicts(verdicts: list[bool], txs: Sequence[AnyTransaction]) -> None:
    for index, ok in enumerate(verdicts):
        if not ok:
            raise BadSignature(
                f"transaction {index} ({txs[index].tx_id.hex()[:16]}): bad signature"
            )


def _verify_txs(chunk: Sequence[tuple[HybridPublicKey, AnyTransaction]]) -> list[bool]:
    """Signature verdicts of a chunk (signing hashes computed on the worker thread too)."""
    return [is_valid(key, tx.signing_hash, tx.signature) for key, tx in chunk]


def new_machine(read: Read, block: Block, platform: Platform | None = None) -> Machine:
    """A machine executing ``block`` over the pre-state ``read``."""
    chosen = platform or default_platform()
    return Machine(
        StateOverlay(read), block_env(block), chosen.actors, chosen.runtime, cron.schedule
    )


def _run(
    machine: Machine, block: Block, keys: list[HybridPublicKey], fill_fee_payout: bool
) -> BlockOutcome:
    """Steps 3 to 6 (signatures are checked apart)."""
    txs = block.transactions
    state = machine.state
    cron_receipts = cron.run_due(machine, len(txs))
    state.end_step()
    receipts: list[Receipt] = []
    for index, tx in enumerate(txs):
        receipt = apply_transaction(machine, tx, index, keys[index])
        receipts.append(receipt)
        state.end_step(receipt.fee)
    fees = sum(receipt.fee for receipt in receipts)
    payouts = list(block.coinbase.payouts)
    if fill_fee_payout and payouts:
        payouts[-1] = Payout(payouts[-1].recipient, fees)
    apply_payouts(machine, payouts, fees)
    state.end_step()
    receipts.extend(cron_receipts)
    all_receipts = tuple(receipts)
    return BlockOutcome(
        changes=state.changes(),
        touched=state.values(),
        receipts=all_receipts,
        receipts_root=receipts_root(all_receipts),
        trace=BlockTrace(state.steps),
        fees=fees,
        coinbase=Coinbase(tuple(payouts)),
        gas_used=sum(receipt.gas_used for receipt in all_receipts[: len(txs)]),
    )


def execute_block(
    read: Read,
    block: Block,
    executor: ThreadPoolExecutor | None = None,
    workers: int | None = None,
    then: Callable[[BlockOutcome], None] | None = None,
    fill_fee_payout: bool = False,
    platform: Platform | None = None,
    on_machine: Callable[[Machine], None] | None = None,
) -> BlockOutcome:
    """Execute ``block`` on the pre-state given by ``read`` (a state-tree lookup).

    With an ``executor``, signatures are verified on its threads *while* the block is applied (and
    while ``then`` — e.g. the state-tree update — runs); the verdicts are joined before returning. A
    bad signature is reported in preference to any other error of the same block. With
    ``fill_fee_payout`` the last coinbase payout is set to the fees charged instead of checked (a
    block builder's mode; the outcome's ``coinbase`` is the one to put in the block).
    ``on_machine`` sees the machine before it runs (to learn what a failing block touched).
    """
    txs = block.transactions
    keys = resolve_keys(txs, read)
    machine = new_machine(read, block, platform)
    if on_machine is not None:
        on_machine(machine)
    if executor is None:
        items = [(key, tx.signing_hash, tx.signature) for key, tx in zip(keys, txs, strict=True)]
        _check_verdicts(verify_many(items, workers=workers), txs)
        outcome = _run(machine, block, keys, fill_fee_payout)
        if then is not None:
            then(outcome)
        return outcome
    pending = start_verifying(_verify_txs, list(zip(keys, txs, strict=True)), executor, workers)
    try:
        outcome = _run(machine, block, keys, fill_fee_payout)
        if then is not None:
            then(outcome)
    except InvalidExecution:
        _check_verdicts(pending(), txs)
        raise
    _check_verdicts(pending(), txs)
    return outcome


def touched_keys(read: Read, block: Block, platform: Platform | None = None) -> list[bytes]:
    """Every state key executing ``block`` reads, in first-read order — up to the broken rule for
    an invalid block, which is what re-executing it needs to find the same rule broken."""
    machines: list[Machine] = []
    with contextlib.suppress(InvalidExecution):
        execute_block(read, block, platform=platform, on_machine=machines.append)
    keys = machines[0].state.touched() if machines else []
    for tx in block.transactions:  # resolve_keys reads these before any machine exists
        if tx.public_keys is None and keys_key(tx.sender) not in keys:
            keys.append(keys_key(tx.sender))
    return keys


def replay_step(
    block: Block,
    step: int,
    access: StepAccess,
    fees: int,
    platform: Platform | None = None,
) -> StepAccess:
    """Re-execute step ``step`` of ``block`` (0: cron, 1..n: transaction ``step - 1``, n + 1:
    payouts with ``fees``) from its recorded pre-values alone; return what it really accessed and
    changed. Signatures are not checked here (the caller checks the ones it must). Raises
    :class:`InvalidExecution` if the step breaks a rule, and
    :class:`~qoin.execution.overlay.TraceIncomplete` if it reads a key ``access`` lacks."""
    machine = new_machine(step_reader(access), block, platform)
    txs = block.transactions
    fee = 0
    if step == 0:
        cron.run_due(machine, len(txs))
    elif step <= len(txs):
        tx = txs[step - 1]
        keys = tx.public_keys
        if keys is None:
            raw = machine.state.get(keys_key(tx.sender))
            if raw is None:
                raise MissingPublicKey(f"transaction {step - 1}: the sender has no keys")
            keys = decode_keys(raw)
        fee = apply_transaction(machine, tx, step - 1, keys).fee
    elif step == len(txs) + 1:
        apply_payouts(machine, block.coinbase.payouts, fees)
    else:
        raise ValueError(f"block has {len(txs) + 2} steps, not {step + 1}")
    return machine.state.end_step(fee)


def empty_reader(key: bytes) -> bytes | None:
    """A pre-state in which every key is absent."""
    return None
