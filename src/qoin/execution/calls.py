"""Read-only calls and gas estimates on a state, and the JSON forms of receipts and events.

``simulate`` runs a call (or a deployment) exactly as a call transaction's frame would — same
machine, same gas, same host costs — on a throw-away overlay over a state (the head, for the user
RPC), without a signature, a nonce or a fee: ``qoin_call`` answers with it and ``qoin_estimateGas``
returns the gas a transaction needs to succeed (intrinsic gas plus the frame's). The block it runs
in is the next one: the head's height + 1, the head's timestamp, the head as parent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qoin.chain.transaction import DEPLOY_ADDRESS
from qoin.crypto.address import Address
from qoin.encoding.codec import DecodeError
from qoin.execution import cron
from qoin.execution import gas as costs
from qoin.execution.abi import decode_call
from qoin.execution.account import AccountLeaf
from qoin.execution.overlay import Read, StateOverlay
from qoin.execution.receipt import CallStatus, Event, Receipt
from qoin.execution.transition import Platform, default_platform
from qoin.execution.vm import MAX_BALANCE, BlockEnv, CallResult, Machine

STATUS_NAMES = {
    CallStatus.SUCCESS: "success",
    CallStatus.REVERTED: "reverted",
    CallStatus.OUT_OF_GAS: "outOfGas",
    CallStatus.FAILED: "failed",
}
"""How statuses read on the wire."""


@dataclass(frozen=True)
class Simulation:
    """What a simulated call did."""

    result: CallResult
    """The frame's outcome."""
    gas_used: int
    """Intrinsic gas plus the frame's: what a transaction would use."""
    events: tuple[Event, ...]
    """Events it would emit (none if it did not succeed)."""
    contract: Address | None = None
    """The address a deployment would create."""


def simulate(
    read: Read,
    env: BlockEnv,
    *,
    sender: Address,
    to: Address,
    value: int,
    data: bytes,
    gas: int,
    nonce: int = 0,
    platform: Platform | None = None,
) -> Simulation:
    """Run a call (``to`` = :data:`DEPLOY_ADDRESS`: a deployment) from ``sender`` with ``gas``
    (intrinsic gas included) on the state ``read``; nothing is kept. The sender is credited the
    value first if it lacks it, so a query needs no funded account."""
    chosen = platform or default_platform()
    state = StateOverlay(read)
    machine = Machine(state, env, chosen.actors, chosen.runtime, cron.schedule)
    intrinsic = costs.call_intrinsic_gas(len(data))
    if gas < intrinsic:
        reason = f"gas {gas} is below the intrinsic gas {intrinsic}"
        return Simulation(CallResult(CallStatus.OUT_OF_GAS, b"", gas, reason), gas, ())
    leaf = machine.leaf(sender)
    if leaf.balance < value:
        machine.set_leaf(
            sender, AccountLeaf(min(value, MAX_BALANCE), leaf.nonce, leaf.revealed, leaf.code_hash)
        )
    budget = gas - intrinsic
    contract = None
    if to == DEPLOY_ADDRESS:
        result = machine.deploy(deployer=sender, nonce=nonce, data=data, value=value, gas=budget)
        if result.succeeded:
            contract = Address(result.return_data)
    else:
        try:
            call = decode_call(data)
        except DecodeError as exc:
            result = CallResult(CallStatus.FAILED, b"", 0, f"bad call data: {exc}")
        else:
            result = machine.call(
                caller=sender,
                origin=sender,
                to=to,
                value=value,
                method=call.method,
                args=call.args,
                gas=budget,
                depth=1,
            )
    events = tuple(machine.events) if result.succeeded else ()
    return Simulation(result, intrinsic + result.gas_used, events, contract)


def event_json(event: Event) -> dict[str, Any]:
    """An event on the wire."""
    return {
        "address": str(event.emitter),
        "topics": [topic.hex() for topic in event.topics],
        "data": event.data.hex(),
    }


def receipt_json(receipt: Receipt) -> dict[str, Any]:
    """The execution part of a receipt on the wire (the caller adds where it is)."""
    answer: dict[str, Any] = {
        "index": receipt.index,
        "from": str(receipt.sender),
        "fee": receipt.fee,
        "revealedKeys": receipt.revealed_keys,
        "status": STATUS_NAMES[receipt.status],
        "gasUsed": receipt.gas_used,
        "reason": receipt.reason or None,
        "returnData": receipt.return_data.hex(),
        "events": [event_json(event) for event in receipt.events],
        "receiptHash": receipt.receipt_hash.hex(),
    }
    return answer


def simulation_json(simulation: Simulation) -> dict[str, Any]:
    """A simulated call on the wire."""
    result = simulation.result
    return {
        "status": STATUS_NAMES[result.status],
        "returnData": result.return_data.hex(),
        "gasUsed": simulation.gas_used,
        "reason": result.reason or None,
        "events": [event_json(event) for event in simulation.events],
        "contractAddress": None if simulation.contract is None else str(simulation.contract),
    }
