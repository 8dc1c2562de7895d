"""Cron: calls that built-in actors schedule for the start of a future block.

An actor schedules ``method(args)`` on itself for height ``h`` (``Context.schedule``; ``h`` must be
above the current height and at most :data:`MAX_HORIZON` ahead). At the start of every block, before
its transactions, the due entries run in canonical order — by height, then by the order they were
scheduled — each as a call from the cron actor with :data:`~qoin.execution.gas.CRON_CALL_GAS` gas and
its own receipt. At most :data:`MAX_CRON_CALLS` run per block and at most :data:`MAX_CRON_HEIGHTS`
heights are looked at; what is left carries over to the next block, first in line.

Everything lives in the cron actor's storage, under the state root (docs/spec/contracts.md §9)::

    "cursor"                      varint: the lowest height that may still hold entries to run
    "count" ‖ h (8 bytes, BE)     varint: entries ever scheduled for height h
    "done" ‖ h (8 bytes, BE)      varint: entries of height h already run (a height cut short)
    "entry" ‖ h ‖ seq (4 bytes)   target (32) ‖ varbytes method ‖ varbytes args; emptied once run

The cron actor has no methods: calling it fails like calling a missing method.
"""

from __future__ import annotations

from qoin.crypto.address import ADDRESS_SIZE, Address
from qoin.crypto.hashing import tagged_hash
from qoin.encoding.codec import Reader, Writer, encode_varint
from qoin.execution import gas as costs
from qoin.execution.abi import MAX_METHOD_SIZE
from qoin.execution.account import MAX_STORAGE_VALUE, actor_address, storage_key
from qoin.execution.receipt import CallStatus, Receipt
from qoin.execution.vm import CallFailed, Machine

CRON_ADDRESS = actor_address("cron")
"""The cron actor: owner of the queue, caller of every cron call."""
TAG_CRON_ENTRY = b"QOIN/cron-entry/v1"
MAX_CRON_CALLS = 256
"""Cron calls one block runs at most."""
MAX_CRON_HEIGHTS = 1024
"""Heights one block's cron step looks at, at most (each costs one storage read)."""
MAX_PER_HEIGHT = 1 << 20
"""Entries one height may hold."""
MAX_HORIZON = 1 << 32
"""How far ahead an entry may be scheduled, in blocks."""
MAX_CRON_ARGS = MAX_STORAGE_VALUE - ADDRESS_SIZE - MAX_METHOD_SIZE - 8


def _key(name: bytes, height: int, seq: int | None = None) -> bytes:
    tail = b"" if seq is None else seq.to_bytes(4, "big")
    return storage_key(CRON_ADDRESS, name + height.to_bytes(8, "big") + tail)


def _read_int(machine: Machine, key: bytes, default: int = 0) -> int:
    raw = machine.state.get(key)
    if not raw:
        return default
    reader = Reader(raw)
    value = reader.varint()
    reader.finish()
    return value


def _write_int(machine: Machine, key: bytes, value: int) -> None:
    machine.state.set(key, encode_varint(value))


CURSOR_KEY = storage_key(CRON_ADDRESS, b"cursor")


def entry_id(height: int, seq: int) -> bytes:
    """The id of a cron entry (what its receipt carries as ``tx_id``)."""
    return tagged_hash(TAG_CRON_ENTRY, height.to_bytes(8, "big"), seq.to_bytes(4, "big"))


def schedule(machine: Machine, target: Address, height: int, method: str, args: bytes) -> None:
    """Append an entry for ``target.method(args)`` at ``height`` (gas is the caller's to charge)."""
    now = machine.env.height
    if not now < height <= now + MAX_HORIZON:
        raise CallFailed(
            f"cron calls are scheduled for heights {now + 1} to {now + MAX_HORIZON}, not {height}"
        )
    name = method.encode()
    if not 1 <= len(name) <= MAX_METHOD_SIZE or len(args) > MAX_CRON_ARGS:
        raise CallFailed("a cron call's method or arguments are too long")
    count = _read_int(machine, _key(b"count", height))
    if count >= MAX_PER_HEIGHT:
        raise CallFailed(f"height {height} already holds {MAX_PER_HEIGHT} cron entries")
    entry = (
        Writer()
        .fixed(target.raw, ADDRESS_SIZE)
        .var_bytes(name, MAX_METHOD_SIZE)
        .var_bytes(args, MAX_CRON_ARGS)
        .bytes()
    )
    machine.state.set(_key(b"entry", height, count), entry)
    _write_int(machine, _key(b"count", height), count + 1)


def _decode_entry(raw: bytes) -> tuple[Address, str, bytes]:
    reader = Reader(raw)
    target = Address(reader.fixed(ADDRESS_SIZE))
    method = reader.var_bytes(MAX_METHOD_SIZE).decode()
    args = reader.var_bytes(MAX_CRON_ARGS)
    reader.finish()
    return target, method, args


def run_due(machine: Machine, first_index: int) -> list[Receipt]:
    """Run the due entries (module docstring); their receipts are numbered from ``first_index``."""
    height = machine.env.height
    cursor = _read_int(machine, CURSOR_KEY, height)
    receipts: list[Receipt] = []
    scanned = 0
    while cursor <= height and len(receipts) < MAX_CRON_CALLS and scanned < MAX_CRON_HEIGHTS:
        count = _read_int(machine, _key(b"count", cursor))
        done = _read_int(machine, _key(b"done", cursor)) if count else 0
        while done < count and len(receipts) < MAX_CRON_CALLS:
            key = _key(b"entry", cursor, done)
            raw = machine.state.get(key)
            machine.state.set(key, b"")
            receipts.append(_run_entry(machine, raw, cursor, done, first_index + len(receipts)))
            done += 1
        if done < count:
            _write_int(machine, _key(b"done", cursor), done)
            break
        cursor += 1
        scanned += 1
    _write_int(machine, CURSOR_KEY, cursor)
    return receipts


def _run_entry(machine: Machine, raw: bytes | None, height: int, seq: int, index: int) -> Receipt:
    machine.begin_step()
    if not raw:  # cannot happen in a state this code wrote; a clear receipt if it does
        return Receipt(
            index, entry_id(height, seq), CRON_ADDRESS, 0, False, CallStatus.FAILED, 0, "no entry"
        )
    target, method, args = _decode_entry(raw)
    result = machine.call(
        caller=CRON_ADDRESS,
        origin=CRON_ADDRESS,
        to=target,
        value=0,
        method=method,
        args=args,
        gas=costs.CRON_CALL_GAS,
        depth=1,
    )
    events = tuple(machine.events) if result.succeeded else ()
    machine.events.clear()
    return Receipt(
        index,
        entry_id(height, seq),
        CRON_ADDRESS,
        0,
        False,
        result.status,
        result.gas_used,
        result.reason,
        result.return_data,
        events,
    )
