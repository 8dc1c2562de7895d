"""The WebAssembly runtime, driven through ``Machine.call`` / ``Machine.deploy``: example contracts,
the host ABI, gas and fuel, traps, validation, nested calls, and hostile modules."""

from __future__ import annotations

import struct
import threading
from pathlib import Path

import pytest
import wasmtime
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qoin.contracts import default_runtime
from qoin.contracts.host import HOST_CALL_GAS, IMPORTS
from qoin.contracts.wasm import MAX_MEMORY_PAGES, WasmRuntime
from qoin.crypto.address import Address
from qoin.crypto.hashing import sha3_256, shake_256
from qoin.crypto.hybrid import sign
from qoin.execution import gas as costs
from qoin.execution.abi import MAX_CODE_SIZE, decode_value, encode_args, encode_deploy
from qoin.execution.account import AccountLeaf, state_key, storage_key
from qoin.execution.overlay import StateOverlay
from qoin.execution.receipt import CallStatus
from qoin.execution.vm import MAX_CALL_DEPTH, BlockEnv, CallResult, Machine
from tests.keys import keypair_for

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "contracts"
DEPLOYER = Address(sha3_256(b"deployer"))
BOB = Address(sha3_256(b"bob"))
FUNDS = 10**12
ENV = BlockEnv(1337, 42, 1_700_000_000_000, bytes(range(32)))
NO_ARGS = encode_args([])
WASM_HEADER = b"\x00asm\x01\x00\x00\x00"


def wat(text: str) -> bytes:
    return bytes(wasmtime.wat2wasm(text))


def machine(runtime: WasmRuntime | None = None) -> Machine:
    """A machine over an empty state with a funded deployer."""
    base = {state_key(DEPLOYER): AccountLeaf(FUNDS).encode()}
    return Machine(StateOverlay(base.get), ENV, {}, runtime or default_runtime())


def deploy(m: Machine, code: bytes, args: bytes = NO_ARGS, value: int = 0) -> Address:
    nonce = m.leaf(DEPLOYER).nonce
    result = m.deploy(
        deployer=DEPLOYER, nonce=nonce, data=_deploy_data(code, args), value=value, gas=10**8
    )
    assert result.status is CallStatus.SUCCESS, result.reason
    leaf = m.leaf(DEPLOYER)
    m.set_leaf(DEPLOYER, AccountLeaf(leaf.balance, leaf.nonce + 1, leaf.revealed, leaf.code_hash))
    return Address(result.return_data)


def _deploy_data(code: bytes, args: bytes) -> bytes:
    return encode_deploy(code)[: -len(NO_ARGS)] + args


def call(
    m: Machine,
    to: Address,
    method: str,
    args: bytes = NO_ARGS,
    *,
    gas: int = 10**6,
    value: int = 0,
    caller: Address = DEPLOYER,
) -> CallResult:
    return m.call(
        caller=caller,
        origin=caller,
        to=to,
        value=value,
        method=method,
        args=args,
        gas=gas,
        depth=1,
    )


def try_deploy(code: bytes, gas: int = 10**8) -> CallResult:
    return machine().deploy(deployer=DEPLOYER, nonce=0, data=encode_deploy(code), value=0, gas=gas)


COUNTER = (EXAMPLES / "counter.wasm").read_bytes()
TOKEN = (EXAMPLES / "token.wasm").read_bytes()

TRAPS = wat("""
(module
  (import "qoin" "return_data" (func $return_data (param i32 i32)))
  (memory (export "memory") 1)
  (func $rec (param i32) (result i32)
    (i32.add (call $rec (i32.add (local.get 0) (i32.const 1))) (i32.const 1)))
  (func (export "unreachable") unreachable)
  (func (export "load_oob") (drop (i32.load (i32.const 65534))))
  (func (export "div_zero") (drop (i32.div_u (i32.const 1) (i32.const 0))))
  (func (export "recurse") (drop (call $rec (i32.const 0))))
  (func (export "spin") (loop $l (br $l)))
  (func (export "grow_past")
    (i32.store (i32.const 0) (memory.grow (i32.const 256)))
    (call $return_data (i32.const 0) (i32.const 4)))
  (func (export "grow_to_bound")
    (i32.store (i32.const 0) (memory.grow (i32.const 255)))
    (i32.store (i32.const 4) (memory.size))
    (call $return_data (i32.const 0) (i32.const 8)))
  (func (export "grow_or_trap")
    (if (i32.eq (memory.grow (i32.const 1000)) (i32.const -1)) (then unreachable)))
  (func (export "_hidden"))
  (func (export "takes_a_param") (param i32))
  (func (export "ok"))
)
""")

PROBE = wat("""
(module
  (import "qoin" "input_size" (func $input_size (result i32)))
  (import "qoin" "input_read" (func $input_read (param i32)))
  (import "qoin" "return_data" (func $return_data (param i32 i32)))
  (import "qoin" "revert" (func $revert (param i32 i32)))
  (import "qoin" "caller" (func $caller (param i32)))
  (import "qoin" "origin" (func $origin (param i32)))
  (import "qoin" "self_address" (func $self_address (param i32)))
  (import "qoin" "value" (func $value (result i64)))
  (import "qoin" "balance" (func $balance (param i32) (result i64)))
  (import "qoin" "self_balance" (func $self_balance (result i64)))
  (import "qoin" "transfer" (func $transfer (param i32 i64)))
  (import "qoin" "block_height" (func $block_height (result i64)))
  (import "qoin" "block_time" (func $block_time (result i64)))
  (import "qoin" "block_hash" (func $block_hash (param i32)))
  (import "qoin" "chain_id" (func $chain_id (result i64)))
  (import "qoin" "sha3" (func $sha3 (param i32 i32 i32)))
  (import "qoin" "shake" (func $shake (param i32 i32 i32 i32)))
  (import "qoin" "verify_signature"
    (func $verify (param i32 i32 i32 i32 i32 i32) (result i32)))
  (import "qoin" "gas_left" (func $gas_left (result i64)))
  (import "qoin" "storage_read" (func $storage_read (param i32 i32 i32 i32) (result i32)))
  (import "qoin" "storage_write" (func $storage_write (param i32 i32 i32 i32)))
  (import "qoin" "storage_delete" (func $storage_delete (param i32 i32)))
  (import "qoin" "emit" (func $emit (param i32 i32 i32 i32)))
  (memory (export "memory") 2)
  (data (i32.const 200) "key")
  (data (i32.const 300) "nope, not today")
  (func $input (result i32)
    (local $n i32)
    (local.set $n (call $input_size))
    (call $input_read (i32.const 4096))
    (local.get $n))
  (func (export "env")
    (i64.store (i32.const 0) (call $block_height))
    (i64.store (i32.const 8) (call $block_time))
    (i64.store (i32.const 16) (call $chain_id))
    (i64.store (i32.const 24) (call $value))
    (call $caller (i32.const 32))
    (call $origin (i32.const 64))
    (call $self_address (i32.const 96))
    (call $block_hash (i32.const 128))
    (i64.store (i32.const 160) (call $self_balance))
    (i64.store (i32.const 168) (call $balance (i32.const 32)))
    (i64.store (i32.const 176) (call $gas_left))
    (i64.store (i32.const 184) (call $gas_left))
    (call $return_data (i32.const 0) (i32.const 192)))
  (func (export "echo")
    (call $return_data (i32.const 4096) (call $input)))
  (func (export "hash")
    (local $n i32)
    (local.set $n (call $input))
    (call $sha3 (i32.const 4096) (local.get $n) (i32.const 0))
    (call $shake (i32.const 4096) (local.get $n) (i32.const 32) (i32.const 64))
    (call $return_data (i32.const 0) (i32.const 96)))
  (func (export "pay")
    (drop (call $input))
    (call $caller (i32.const 0))
    (call $transfer (i32.const 0) (i64.load (i32.const 4096))))
  (func (export "verify")
    (local $n i32) (local $pk i32) (local $msg i32)
    (local.set $n (call $input))
    (local.set $pk (i32.load (i32.const 4096)))
    (local.set $msg (i32.load (i32.const 4100)))
    (i32.store8 (i32.const 0)
      (call $verify
        (i32.const 4104) (local.get $pk)
        (i32.add (i32.const 4104) (local.get $pk)) (local.get $msg)
        (i32.add (i32.add (i32.const 4104) (local.get $pk)) (local.get $msg))
        (i32.sub (i32.sub (i32.sub (local.get $n) (i32.const 8)) (local.get $pk))
                 (local.get $msg))))
    (call $return_data (i32.const 0) (i32.const 1)))
  (func (export "store")
    (local $n i32)
    (local.set $n (call $input))
    (call $storage_write (i32.const 200) (i32.const 3) (i32.const 4096) (local.get $n)))
  (func (export "load4")
    (i32.store (i32.const 0)
      (call $storage_read (i32.const 200) (i32.const 3) (i32.const 4) (i32.const 4)))
    (call $return_data (i32.const 0) (i32.const 8)))
  (func (export "erase") (call $storage_delete (i32.const 200) (i32.const 3)))
  (func (export "emit_topics")
    (call $emit (i32.const 4096) (i32.div_u (call $input) (i32.const 32))
                (i32.const 0) (i32.const 3)))
  (func (export "say_no") (call $revert (i32.const 300) (i32.const 15)))
  (func (export "oob_write") (drop (call $input_size)) (call $input_read (i32.const 131070)))
  (func (export "oob_read") (call $return_data (i32.const 131000) (i32.const 100)))
  (func (export "negative_ptr") (call $caller (i32.const -1)))
  (func (export "huge_return") (call $return_data (i32.const 0) (i32.const 16385)))
  (func (export "long_key")
    (call $storage_write (i32.const 0) (i32.const 129) (i32.const 0) (i32.const 1)))
  (func (export "spin_host") (loop $l (drop (call $gas_left)) (br $l)))
)
""")

# Input: gas (8 bytes LE) ‖ value (8 bytes LE) ‖ target (32 bytes) ‖ method. Writes "before" and
# "after" around a call of target.method with the same input as arguments; returns the call's
# status byte ‖ its return data.
PROXY = wat("""
(module
  (import "qoin" "input_size" (func $input_size (result i32)))
  (import "qoin" "input_read" (func $input_read (param i32)))
  (import "qoin" "call" (func $call (param i32 i32 i32 i32 i32 i64 i64) (result i32)))
  (import "qoin" "result_size" (func $result_size (result i32)))
  (import "qoin" "result_read" (func $result_read (param i32)))
  (import "qoin" "storage_read" (func $storage_read (param i32 i32 i32 i32) (result i32)))
  (import "qoin" "storage_write" (func $storage_write (param i32 i32 i32 i32)))
  (import "qoin" "return_data" (func $return_data (param i32 i32)))
  (import "qoin" "revert" (func $revert (param i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "before")
  (data (i32.const 8) "after")
  (data (i32.const 24) "x")
  (data (i32.const 32) "undo")
  (func $forward
    (local $n i32) (local $status i32)
    (local.set $n (call $input_size))
    (call $input_read (i32.const 1024))
    (call $storage_write (i32.const 0) (i32.const 6) (i32.const 24) (i32.const 1))
    (local.set $status
      (call $call (i32.const 1040) (i32.const 1072) (i32.sub (local.get $n) (i32.const 48))
                  (i32.const 1024) (local.get $n)
                  (i64.load (i32.const 1032)) (i64.load (i32.const 1024))))
    (call $storage_write (i32.const 8) (i32.const 5) (i32.const 24) (i32.const 1))
    (i32.store8 (i32.const 8192) (local.get $status))
    (call $result_read (i32.const 8193))
    (call $return_data (i32.const 8192) (i32.add (call $result_size) (i32.const 1))))
  (func (export "forward") (call $forward))
  (func (export "forward_then_revert") (call $forward) (call $revert (i32.const 32) (i32.const 4)))
)
""")

REVERTER = wat("""
(module
  (import "qoin" "storage_write" (func $storage_write (param i32 i32 i32 i32)))
  (import "qoin" "revert" (func $revert (param i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "k")
  (data (i32.const 8) "nope")
  (func (export "write_and_revert")
    (call $storage_write (i32.const 0) (i32.const 1) (i32.const 8) (i32.const 4))
    (call $revert (i32.const 8) (i32.const 4)))
  (func (export "write")
    (call $storage_write (i32.const 0) (i32.const 1) (i32.const 8) (i32.const 4)))
  (func (export "spin") (loop $l (br $l)))
)
""")


def proxy_input(target: Address, method: str, gas: int = 0, value: int = 0) -> bytes:
    return struct.pack("<QQ", gas, value) + target.raw + method.encode()


# -- the example contracts -------------------------------------------------------------------------


def test_counter_increments_and_emits() -> None:
    m = machine()
    counter = deploy(m, COUNTER)
    results = [call(m, counter, "increment") for _ in range(3)]
    assert all(r.status is CallStatus.SUCCESS for r in results)
    # The first finds no count (less to copy and decode); then each does the same work.
    assert results[0].gas_used < results[1].gas_used == results[2].gas_used
    assert m.state.get(storage_key(counter, b"count")) == (3).to_bytes(8, "big")
    assert [e.data for e in m.events] == [n.to_bytes(8, "big") for n in (1, 2, 3)]
    assert all(e.emitter == counter for e in m.events)
    assert all(e.topics == (sha3_256(b"Incremented"),) for e in m.events)
    got = call(m, counter, "get")
    assert got.status is CallStatus.SUCCESS
    assert decode_value(got.return_data) == 3


def test_counter_get_encodes_large_counts() -> None:
    m = machine()
    counter = deploy(m, COUNTER)
    m.state.set(storage_key(counter, b"count"), (2**64 - 1).to_bytes(8, "big"))
    assert decode_value(call(m, counter, "get").return_data) == 2**64 - 1
    m.state.set(storage_key(counter, b"count"), b"\x01")
    bad = call(m, counter, "get")
    assert bad.status is CallStatus.REVERTED
    assert bad.reason == "the stored count is not 8 bytes"


def test_token_mints_transfers_and_reverts_with_a_reason() -> None:
    m = machine()
    token = deploy(m, TOKEN, encode_args([1000]))
    mint = m.events[-1]
    assert mint.topics == (sha3_256(b"Transfer"), bytes(32), DEPLOYER.raw)
    assert mint.data == (1000).to_bytes(8, "big")

    def balance(who: Address) -> object:
        return decode_value(call(m, token, "balance_of", encode_args([who])).return_data)

    assert balance(DEPLOYER) == 1000
    assert decode_value(call(m, token, "total_supply").return_data) == 1000
    moved = call(m, token, "transfer", encode_args([BOB, 300]))
    assert moved.status is CallStatus.SUCCESS, moved.reason
    assert (balance(DEPLOYER), balance(BOB)) == (700, 300)
    event = m.events[-1]
    assert event.topics == (sha3_256(b"Transfer"), DEPLOYER.raw, BOB.raw)
    assert event.data == (300).to_bytes(8, "big")

    events = len(m.events)
    short = call(m, token, "transfer", encode_args([DEPLOYER, 301]), caller=BOB)
    assert short.status is CallStatus.REVERTED
    assert short.reason == "insufficient balance"
    assert len(m.events) == events
    assert (balance(DEPLOYER), balance(BOB)) == (700, 300)
    to_self = call(m, token, "transfer", encode_args([BOB, 300]), caller=BOB)
    assert to_self.status is CallStatus.SUCCESS
    assert balance(BOB) == 300


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (encode_args([BOB]), "wrong number of arguments"),
        (encode_args([5, BOB]), "expected an address"),
        (encode_args([BOB, "x"]), "expected a uint argument"),
        (encode_args([BOB, 1]) + b"\x00", "trailing argument bytes"),
        (encode_args([BOB, 1])[:-1], "truncated arguments"),
    ],
)
def test_token_rejects_bad_arguments(args: bytes, reason: str) -> None:
    m = machine()
    token = deploy(m, TOKEN, encode_args([10]))
    result = call(m, token, "transfer", args)
    assert (result.status, result.reason) == (CallStatus.REVERTED, reason)


def test_token_init_runs_once() -> None:
    m = machine()
    token = deploy(m, TOKEN, encode_args([10]))
    again = call(m, token, "init", encode_args([10**9]))
    assert again.status is CallStatus.FAILED
    assert "only when the contract is deployed" in again.reason
    failed = m.deploy(
        deployer=DEPLOYER, nonce=7, data=_deploy_data(TOKEN, encode_args(["x"])), value=0, gas=10**7
    )
    assert (failed.status, failed.reason) == (CallStatus.REVERTED, "expected a uint argument")
    assert m.leaf(Address(sha3_256(b"nothing"))).code_hash is None


# -- the host ABI ----------------------------------------------------------------------------------


def test_host_environment_imports() -> None:
    m = machine()
    probe = deploy(m, PROBE, value=5000)
    result = call(m, probe, "env", value=77, gas=500_000)
    assert result.status is CallStatus.SUCCESS, result.reason
    raw = result.return_data
    height, time, chain, value = struct.unpack_from("<qqqq", raw, 0)
    assert (height, time, chain, value) == (42, ENV.timestamp_ms, 1337, 77)
    assert raw[32:64] == DEPLOYER.raw
    assert raw[64:96] == DEPLOYER.raw
    assert raw[96:128] == probe.raw
    assert raw[128:160] == ENV.parent_hash
    self_balance, caller_balance, gas1, gas2 = struct.unpack_from("<qqqq", raw, 160)
    assert self_balance == 5077
    assert caller_balance == FUNDS - 5077
    # Between the two gas_left calls: one host call and a handful of instructions.
    assert HOST_CALL_GAS < gas1 - gas2 < HOST_CALL_GAS + 20
    assert 0 <= gas2 - (500_000 - result.gas_used) < 500


def test_u64_values_travel_as_i64() -> None:
    m = machine()
    probe = deploy(m, PROBE)
    m.set_leaf(BOB, AccountLeaf(2**64 - 2))
    result = call(m, probe, "env", caller=BOB, value=2**63 + 5)
    assert result.status is CallStatus.SUCCESS, result.reason
    (value,) = struct.unpack_from("<Q", result.return_data, 24)
    (balance,) = struct.unpack_from("<Q", result.return_data, 168)
    assert (value, balance) == (2**63 + 5, 2**64 - 2 - (2**63 + 5))
    (self_balance,) = struct.unpack_from("<Q", result.return_data, 160)
    assert self_balance == 2**63 + 5


def test_host_hashes() -> None:
    m = machine()
    probe = deploy(m, PROBE)
    data = bytes(range(200))
    result = call(m, probe, "hash", data)
    assert result.return_data == sha3_256(data) + shake_256(data, 64)


def test_host_storage_roundtrip_and_partial_reads() -> None:
    m = machine()
    probe = deploy(m, PROBE)
    assert call(m, probe, "load4").return_data == struct.pack("<i", -1) + bytes(4)
    assert call(m, probe, "store", b"abcdefgh").status is CallStatus.SUCCESS
    assert m.state.get(storage_key(probe, b"key")) == b"abcdefgh"
    assert call(m, probe, "load4").return_data == struct.pack("<i", 8) + b"abcd"
    assert call(m, probe, "erase").status is CallStatus.SUCCESS
    assert call(m, probe, "load4").return_data == struct.pack("<i", -1) + bytes(4)


def test_host_transfer_and_value() -> None:
    m = machine()
    probe = deploy(m, PROBE, value=1000)
    paid = call(m, probe, "pay", struct.pack("<Q", 400), caller=BOB, value=10)
    assert paid.status is CallStatus.REVERTED  # BOB has nothing to send the value with
    paid = call(m, probe, "pay", struct.pack("<Q", 400), caller=BOB)
    assert paid.status is CallStatus.SUCCESS, paid.reason
    assert (m.leaf(probe).balance, m.leaf(BOB).balance) == (600, 400)
    short = call(m, probe, "pay", struct.pack("<Q", 601), caller=BOB)
    assert short.status is CallStatus.REVERTED
    assert (m.leaf(probe).balance, m.leaf(BOB).balance) == (600, 400)


def test_host_verify_signature_with_a_real_keypair() -> None:
    keypair = keypair_for(index=0)
    message = b"qoin contracts verify hybrid signatures"
    public = keypair.public.encode()
    signature = sign(keypair, message).encode()
    m = machine()
    probe = deploy(m, PROBE)

    def verify(msg: bytes, sig: bytes, pk: bytes = public) -> CallResult:
        data = struct.pack("<II", len(pk), len(msg)) + pk + msg + sig
        return call(m, probe, "verify", data)

    good = verify(message, signature)
    assert good.return_data == b"\x01"
    assert good.gas_used > costs.SIGNATURE_VERIFY_GAS
    assert verify(message + b"!", signature).return_data == b"\x00"
    assert verify(message, signature[:-1]).return_data == b"\x00"
    assert verify(message, signature, pk=b"not a key").return_data == b"\x00"


def test_host_revert_reason_and_bounds_failures() -> None:
    m = machine()
    probe = deploy(m, PROBE)
    said = call(m, probe, "say_no")
    assert (said.status, said.reason) == (CallStatus.REVERTED, "nope, not today")
    for method, args, words in [
        ("oob_write", b"abc", "out-of-bounds"),
        ("oob_read", NO_ARGS, "out-of-bounds"),
        ("negative_ptr", NO_ARGS, "out-of-bounds"),
        ("huge_return", NO_ARGS, "return data exceeds"),
        ("long_key", NO_ARGS, "storage keys are at most"),
        ("emit_topics", bytes(32 * 5), "at most 4 topics"),
    ]:
        result = call(m, probe, method, args)
        assert result.status is CallStatus.FAILED, method
        assert words in result.reason, (method, result.reason)
        assert result.gas_used == 10**6  # a failure uses all the frame's gas
    emitted = call(m, probe, "emit_topics", bytes(range(64)))
    assert emitted.status is CallStatus.SUCCESS
    assert m.events[-1].topics == (bytes(range(32)), bytes(range(32, 64)))


def test_gas_used_counts_instructions_and_host_costs() -> None:
    m = machine()
    probe = deploy(m, PROBE)
    small = call(m, probe, "echo", b"x")
    large = call(m, probe, "echo", bytes(32 * 100 + 1))
    # input_read and return_data each copy 100 more words.
    assert large.gas_used - small.gas_used == 2 * costs.COPY_WORD_GAS * 100
    stored = call(m, probe, "store", b"abcd")
    assert stored.gas_used > costs.STORAGE_WRITE_GAS + costs.STORAGE_BYTE_GAS * 7


# -- gas, traps, bounds ----------------------------------------------------------------------------


def test_bulk_memory_costs_a_gas_per_byte() -> None:
    filler = wat("""(module (memory (export "memory") 256)
      (func (export "fill") (memory.fill (i32.const 0) (i32.const 7) (i32.const 1000000)))
      (func (export "copy") (memory.copy (i32.const 0) (i32.const 8000000) (i32.const 1000000))))""")
    m = machine()
    contract = deploy(m, filler)
    for method in ("fill", "copy"):
        result = call(m, contract, method, gas=2 * 10**6)
        assert result.status is CallStatus.SUCCESS
        assert 10**6 <= result.gas_used < 10**6 + 100
        starved = call(m, contract, method, gas=999_000)
        assert starved.status is CallStatus.OUT_OF_GAS


def test_endless_loop_runs_out_of_gas_deterministically() -> None:
    used = []
    for _ in range(2):
        m = machine()
        traps = deploy(m, TRAPS)
        result = call(m, traps, "spin", gas=300_000)
        assert result.status is CallStatus.OUT_OF_GAS
        used.append(result.gas_used)
    assert used == [300_000, 300_000]
    m = machine()
    probe = deploy(m, PROBE)
    in_host = call(m, probe, "spin_host", gas=300_000)
    assert (in_host.status, in_host.gas_used) == (CallStatus.OUT_OF_GAS, 300_000)


@pytest.mark.parametrize(
    ("method", "words"),
    [
        ("unreachable", "unreachable"),
        ("load_oob", "out of bounds"),
        ("div_zero", "divide by zero"),
        ("grow_or_trap", "unreachable"),
    ],
)
def test_traps_fail_the_call(method: str, words: str) -> None:
    m = machine()
    traps = deploy(m, TRAPS)
    result = call(m, traps, method)
    assert result.status is CallStatus.FAILED
    assert result.reason.startswith("trap: ")
    assert words in result.reason
    assert result.gas_used == 10**6  # a trap uses all the frame's gas


def test_stack_overflow_fails_and_uses_all_gas() -> None:
    m = machine()
    traps = deploy(m, TRAPS)
    result = call(m, traps, "recurse", gas=10**7)
    assert (result.status, result.gas_used) == (CallStatus.FAILED, 10**7)
    assert "stack" in result.reason


def test_memory_is_bounded() -> None:
    m = machine()
    traps = deploy(m, TRAPS)
    past = call(m, traps, "grow_past")
    assert past.status is CallStatus.SUCCESS
    assert struct.unpack("<i", past.return_data) == (-1,)
    bound = call(m, traps, "grow_to_bound")
    assert struct.unpack("<ii", bound.return_data) == (1, MAX_MEMORY_PAGES)


def test_only_exported_unit_functions_are_methods() -> None:
    m = machine()
    traps = deploy(m, TRAPS)
    for method in ("_hidden", "takes_a_param", "missing", "memory"):
        result = call(m, traps, method)
        assert result.status is CallStatus.FAILED
        assert "no method" in result.reason
    assert call(m, traps, "ok").status is CallStatus.SUCCESS
    runtime = default_runtime()
    code_hash = sha3_256(TRAPS)
    assert runtime.has_method(code_hash, TRAPS, "ok")
    assert not runtime.has_method(code_hash, TRAPS, "_hidden")


def test_start_function_is_metered() -> None:
    looping = wat(
        '(module (memory (export "memory") 1) (func $s (loop $l (br $l))) (start $s)'
        ' (func (export "f")))'
    )
    m = machine()
    contract = deploy(m, looping)
    result = call(m, contract, "f", gas=50_000)
    assert (result.status, result.gas_used) == (CallStatus.OUT_OF_GAS, 50_000)
    writing = wat("""(module
      (import "qoin" "storage_write" (func $w (param i32 i32 i32 i32)))
      (memory (export "memory") 1) (data (i32.const 0) "started")
      (func $s (call $w (i32.const 0) (i32.const 7) (i32.const 0) (i32.const 1)))
      (start $s) (func (export "f")))""")
    contract = deploy(m, writing)
    assert call(m, contract, "f").status is CallStatus.SUCCESS
    assert m.state.get(storage_key(contract, b"started")) == b"s"


# -- validation ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (b"garbage bytes, not a module", "invalid module"),
        (wat("(module)"), "must export its memory"),
        (wat('(module (memory (export "mem") 1))'), "must export its memory"),
        (wat('(module (memory (export "memory") 257))'), "257 pages"),
        (
            wat('(module (import "qoin" "steal" (func)) (memory (export "memory") 1))'),
            "unknown import qoin.steal",
        ),
        (
            wat('(module (import "env" "abort" (func)) (memory (export "memory") 1))'),
            "import only from module 'qoin'",
        ),
        (
            wat(
                '(module (import "qoin" "value" (func (result i32))) (memory (export "memory") 1))'
            ),
            "qoin.value must be a function () -> i64",
        ),
        (
            wat('(module (import "qoin" "value" (global i64)) (memory (export "memory") 1))'),
            "qoin.value must be a function",
        ),
        (
            wat(
                '(module (memory (export "memory") 1) (func (export "f") v128.const i64x2 0 0 drop))'
            ),
            "invalid module",
        ),
        (
            wat('(module (memory (export "memory") 1 1 shared))'),
            "invalid module",
        ),
    ],
)
def test_invalid_modules_cannot_be_deployed(code: bytes, words: str) -> None:
    result = try_deploy(code)
    assert result.status is CallStatus.FAILED
    assert words in result.reason, result.reason


def test_oversized_module_is_refused() -> None:
    runtime = WasmRuntime()
    code = COUNTER + bytes(MAX_CODE_SIZE)  # never even parsed
    with pytest.raises(Exception, match="at most"):
        runtime.validate(code)


def test_every_import_the_examples_use_is_known() -> None:
    for code in (COUNTER, TOKEN, PROBE, PROXY):
        module = wasmtime.Module(default_runtime().engine, code)
        assert {item.name for item in module.imports} <= set(IMPORTS)


def test_compiled_modules_are_cached_and_evicted() -> None:
    runtime = WasmRuntime(cache_size=2)
    modules = [COUNTER, TOKEN, TRAPS]
    first = runtime.compiled(sha3_256(COUNTER), COUNTER)
    assert runtime.compiled(sha3_256(COUNTER), COUNTER) is first
    for code in modules:
        runtime.compiled(sha3_256(code), code)
    assert runtime.compiled(sha3_256(COUNTER), COUNTER) is not first  # evicted, recompiled
    m = machine(runtime)
    counter = deploy(m, COUNTER)
    assert call(m, counter, "increment").status is CallStatus.SUCCESS


# -- nested calls ----------------------------------------------------------------------------------


def test_contract_calls_contract() -> None:
    m = machine()
    proxy, counter = deploy(m, PROXY), deploy(m, COUNTER)
    result = call(m, proxy, "forward", proxy_input(counter, "increment"))
    assert result.status is CallStatus.SUCCESS, result.reason
    assert result.return_data == bytes([CallStatus.SUCCESS])
    assert m.state.get(storage_key(counter, b"count")) == (1).to_bytes(8, "big")
    assert m.events[-1].emitter == counter
    got = call(m, proxy, "forward", proxy_input(counter, "get"))
    assert got.return_data == bytes([CallStatus.SUCCESS, 0, 1])
    assert got.gas_used > costs.NESTED_CALL_GAS


def test_revert_in_callee_undoes_only_the_callee() -> None:
    m = machine()
    proxy, reverter = deploy(m, PROXY), deploy(m, REVERTER)
    result = call(m, proxy, "forward", proxy_input(reverter, "write_and_revert"))
    assert result.status is CallStatus.SUCCESS
    assert result.return_data == bytes([CallStatus.REVERTED])
    assert m.state.get(storage_key(reverter, b"k")) is None
    assert m.state.get(storage_key(proxy, b"before")) == b"x"
    assert m.state.get(storage_key(proxy, b"after")) == b"x"
    # A caller's revert undoes its callee's successful writes too.
    undone = call(m, proxy, "forward_then_revert", proxy_input(reverter, "write"))
    assert (undone.status, undone.reason) == (CallStatus.REVERTED, "undo")
    assert m.state.get(storage_key(reverter, b"k")) is None


def test_out_of_gas_in_a_nested_call() -> None:
    m = machine()
    proxy, reverter = deploy(m, PROXY), deploy(m, REVERTER)
    result = call(m, proxy, "forward", proxy_input(reverter, "spin", gas=50_000), gas=10**6)
    assert result.status is CallStatus.SUCCESS
    assert result.return_data == bytes([CallStatus.OUT_OF_GAS])
    assert 50_000 + costs.NESTED_CALL_GAS < result.gas_used < 50_000 + 30_000
    assert m.state.get(storage_key(proxy, b"after")) == b"x"
    # With all the gas forwarded, the caller has none left to finish with.
    starved = call(m, proxy, "forward", proxy_input(reverter, "spin"), gas=10**6)
    assert (starved.status, starved.gas_used) == (CallStatus.OUT_OF_GAS, 10**6)


def test_nested_value_and_failures() -> None:
    m = machine()
    proxy, probe = deploy(m, PROXY, value=1000), deploy(m, PROBE)
    paid = call(m, proxy, "forward", proxy_input(probe, "ok_missing", value=10))
    assert paid.return_data == bytes([CallStatus.FAILED])
    assert m.leaf(proxy).balance == 1000
    sent = call(m, proxy, "forward", proxy_input(probe, "erase", value=10))
    assert sent.return_data == bytes([CallStatus.SUCCESS])
    assert (m.leaf(proxy).balance, m.leaf(probe).balance) == (990, 10)
    bad_method = call(m, proxy, "forward", proxy_input(probe, ""))
    assert bad_method.status is CallStatus.FAILED
    assert "method name" in bad_method.reason


def test_calls_nest_to_the_depth_bound() -> None:
    m = machine()
    proxy = deploy(m, PROXY)
    result = call(m, proxy, "forward", proxy_input(proxy, "forward"), gas=10**7)
    assert result.status is CallStatus.SUCCESS, result.reason
    # Frame d returns frame d+1's status then its data; frame MAX_CALL_DEPTH + 1 cannot run.
    assert result.return_data == bytes(MAX_CALL_DEPTH - 1) + bytes([CallStatus.FAILED])


DIVER = wat("""
(module
  (import "qoin" "input_size" (func $input_size (result i32)))
  (import "qoin" "input_read" (func $input_read (param i32)))
  (import "qoin" "self_address" (func $self_address (param i32)))
  (import "qoin" "call" (func $call (param i32 i32 i32 i32 i32 i64 i64) (result i32)))
  (import "qoin" "storage_read" (func $storage_read (param i32 i32 i32 i32) (result i32)))
  (import "qoin" "storage_write" (func $storage_write (param i32 i32 i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "dive")
  (data (i32.const 72) "levels")
  ;; Recurse `n` deep (a native frame each), then call `dive` on this contract.
  (func $down (param $n i32) (param $nest i32) (result i64)
    (local $a i64) (local $b i64) (local $c i64)
    (if (result i64) (i32.eqz (local.get $n))
      (then
        (if (local.get $nest)
          (then (call $self_address (i32.const 0))
                (drop (call $call (i32.const 0) (i32.const 64) (i32.const 4) (i32.const 1024)
                                  (i32.const 4) (i64.const 0) (i64.const 0)))))
        (i64.const 1))
      (else
        (local.set $a (i64.extend_i32_u (local.get $n)))
        (local.set $b (call $down (i32.sub (local.get $n) (i32.const 1)) (local.get $nest)))
        (local.set $c (i64.mul (local.get $a) (local.get $b)))
        (i64.add (local.get $c) (local.get $b)))))
  (func $depth (result i32)
    (drop (call $input_size))
    (call $input_read (i32.const 1024))
    (i32.load (i32.const 1024)))
  (func (export "probe") (drop (call $down (call $depth) (i32.const 0))))
  (func (export "dive")
    (drop (call $down (call $depth) (i32.const 1)))
    ;; levels += 1 (a frame that failed has its write undone)
    (i32.store (i32.const 128) (i32.const 0))
    (drop (call $storage_read (i32.const 72) (i32.const 6) (i32.const 128) (i32.const 4)))
    (i32.store (i32.const 128) (i32.add (i32.load (i32.const 128)) (i32.const 1)))
    (call $storage_write (i32.const 72) (i32.const 6) (i32.const 128) (i32.const 4)))
)
""")


def test_every_nested_frame_may_use_its_whole_stack() -> None:
    m = machine()
    diver = deploy(m, DIVER)

    def fits(depth: int) -> bool:
        result = call(m, diver, "probe", struct.pack("<I", depth), gas=10**7)
        return result.status is CallStatus.SUCCESS

    low, high = 1, 1 << 17
    assert fits(low) and not fits(high)
    while high - low > 64:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    result = call(m, diver, "dive", struct.pack("<I", low * 9 // 10), gas=10**8)
    assert result.status is CallStatus.SUCCESS, result.reason
    levels = m.state.get(storage_key(diver, b"levels"))
    assert levels is not None
    assert int.from_bytes(levels, "little") == MAX_CALL_DEPTH


def test_threads_share_the_runtime_safely() -> None:
    """Host exceptions travel through one wasmtime-py global; the runtime serialises calls."""
    deployed = machine()
    probe = deploy(deployed, PROBE)
    base = {state_key(DEPLOYER): AccountLeaf(FUNDS).encode(), **deployed.state.changes()}
    outcomes: list[tuple[CallStatus, str]] = []

    def work() -> None:
        m = Machine(StateOverlay(base.get), ENV, {}, default_runtime())
        for i in range(60):
            method = "say_no" if i % 2 else "env"
            result = call(m, probe, method)
            outcomes.append((result.status, result.reason))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(outcomes) == 240
    assert outcomes.count((CallStatus.REVERTED, "nope, not today")) == 120
    assert outcomes.count((CallStatus.SUCCESS, "")) == 120


# -- hostile modules -------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400) | st.binary(max_size=400).map(lambda tail: WASM_HEADER + tail))
def test_arbitrary_bytes_are_a_clean_failure(code: bytes) -> None:
    result = try_deploy(code)
    assert result.status in (CallStatus.FAILED, CallStatus.SUCCESS)
    if result.status is CallStatus.FAILED:
        assert result.reason


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, len(TOKEN) - 1), st.integers(0, 255)), max_size=4))
def test_mutated_modules_never_raise(edits: list[tuple[int, int]]) -> None:
    code = bytearray(TOKEN)
    for position, byte in edits:
        code[position] = byte
    m = machine()
    result = m.deploy(
        deployer=DEPLOYER,
        nonce=0,
        data=_deploy_data(bytes(code), encode_args([100])),
        value=0,
        gas=10**7,
    )
    if result.status is CallStatus.SUCCESS:
        token = Address(result.return_data)
        for method, args in (
            ("transfer", encode_args([BOB, 1])),
            ("balance_of", encode_args([DEPLOYER])),
            ("total_supply", NO_ARGS),
        ):
            assert isinstance(call(m, token, method, args, gas=200_000), CallResult)
