"""The gas schedule: what each step of execution costs (docs/spec/contracts.md §5).

Gas measures work. A transaction names the most gas it may use (``gas_limit``) and the price it pays
per unit (``fee_per_gas``); it pays ``gas_used x fee_per_gas`` and the unused gas stays with the
sender. A block's transactions may together name at most the network's block gas limit (a genesis
parameter). WebAssembly instructions cost one gas each (wasmtime's fuel); host calls and built-in
actors are charged the same host costs below, so a caller cannot tell the two apart by price.
"""

from __future__ import annotations

from qoin.chain import transaction

TRANSFER_GAS = transaction.TRANSFER_GAS
"""What a v1 transfer uses and reserves, always (its fee stays the fixed ``fee`` it names)."""
CALL_GAS = 21_000
"""The intrinsic cost of a call transaction, before its data and its execution."""
DATA_BYTE_GAS = 16
"""Per byte of a call transaction's data."""
DEPLOY_BYTE_GAS = 200
"""Per byte of contract code stored by a deployment."""
VALIDATE_BYTE_GAS = 20
"""Per byte of a module checked and compiled at deployment."""

STORAGE_READ_GAS = 800
"""Reading one storage key (found or not)."""
STORAGE_WRITE_GAS = 5_000
"""Writing one storage key (a delete costs the same: it writes the empty value)."""
STORAGE_BYTE_GAS = 50
"""Per byte of key and value written."""
EVENT_GAS = 375
"""Emitting one event."""
EVENT_TOPIC_GAS = 375
"""Per topic of an event."""
EVENT_BYTE_GAS = 8
"""Per byte of an event's data."""
NESTED_CALL_GAS = 2_600
"""Calling another account from a contract or actor (before the callee's own gas)."""
VALUE_TRANSFER_GAS = 9_000
"""Moving a non-zero value with a call, or by the transfer host call."""
BALANCE_GAS = 400
"""Reading an account's balance."""
HASH_GAS = 30
"""A SHA3-256 or SHAKE256 call, plus :data:`HASH_WORD_GAS` per 32 bytes of input (and output)."""
HASH_WORD_GAS = 6
"""Per started 32 bytes hashed."""
SIGNATURE_VERIFY_GAS = 150_000
"""Verifying one hybrid post-quantum signature (Falcon + ML-DSA, about 1.5 ms of a core)."""
COPY_WORD_GAS = 3
"""Per started 32 bytes copied between the host and a contract's memory (input, return data)."""
ACTOR_CALL_GAS = 1_000
"""The base cost of entering a built-in actor's method (its storage and events cost as above)."""
HOST_CALL_GAS = 200
"""Every WebAssembly host import, before what it does (docs/spec/contracts.md §4)."""
CODE_LOAD_BYTE_GAS = 20
"""Per byte of a module, the first time a transaction (or cron call) runs it: loading and, when it
is not in the compiled-module cache, compiling it costs the node about 0.7 µs per byte, and a
transaction cycling through many contracts must pay for that whether or not they are cached (the
charge cannot depend on a node's cache, or nodes would disagree on gas)."""

DEFAULT_BLOCK_GAS_LIMIT = 60_000_000
"""The block gas limit of a genesis file that names none."""
MIN_BLOCK_GAS_LIMIT = TRANSFER_GAS
MAX_BLOCK_GAS_LIMIT = 2**40
"""Bounds a genesis file's block gas limit must lie in."""


def call_intrinsic_gas(data_size: int) -> int:
    """What a call transaction uses before it runs: :data:`CALL_GAS` plus its data bytes."""
    return CALL_GAS + DATA_BYTE_GAS * data_size


def words(size: int) -> int:
    """Started 32-byte words in ``size`` bytes."""
    return (size + 31) // 32


CRON_SCHEDULE_GAS = 20_000
"""An actor scheduling one cron call (the entry is stored until it runs)."""
CRON_CALL_GAS = 5_000_000
"""Gas each cron call runs with (cron calls are paid by the protocol, bounded per block)."""
