"""Calls: frames, gas, the host interface shared by WebAssembly contracts and built-in actors.

A *call* runs code at an address with a gas budget in a *frame* (docs/spec/contracts.md §3):

* the value moves from the caller to the callee first; then a built-in actor's Python method, or the
  contract's WebAssembly export named by the method, runs against a :class:`Context` — the host
  interface: storage, events, balances, transfers, nested calls, hashing, signature checks;
* the frame's writes and events stand if it returns; if it reverts, runs out of gas or fails, every
  write it made (and every write of the calls it made) is undone and its events dropped, and the
  caller gets a :class:`CallResult` saying why — a failure never propagates as an exception;
* frames nest at most :data:`MAX_CALL_DEPTH` deep; a nested call's gas is taken from its caller's.

The same host costs (:mod:`qoin.execution.gas`) are charged whoever calls: a WebAssembly contract
through its host functions, or a built-in actor through the same :class:`Context` methods, so callers
cannot tell the two apart.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from qoin.crypto.address import Address
from qoin.crypto.hashing import sha3_256, shake_256
from qoin.crypto.hybrid import HybridPublicKey, HybridSignature, is_valid
from qoin.encoding.codec import DecodeError
from qoin.errors import QoinError
from qoin.execution import gas as costs
from qoin.execution.abi import Value, decode_args, decode_deploy
from qoin.execution.account import (
    MAX_STORAGE_KEY,
    MAX_STORAGE_VALUE,
    AccountLeaf,
    code_key,
    contract_address,
    state_key,
    storage_key,
)
from qoin.execution.overlay import StateOverlay
from qoin.execution.receipt import (
    MAX_EVENTS,
    MAX_REASON,
    MAX_RETURN_DATA,
    CallStatus,
    Event,
)

MAX_CALL_DEPTH = 16
"""Frames nest at most this deep (a transaction's own call is depth 1)."""
MAX_BALANCE = 2**64 - 1
INIT_METHOD = "init"
"""The export a deployment runs (if the module has it); never callable afterwards."""


_EMPTY_LEAF = AccountLeaf()
_LEAVES: dict[bytes, AccountLeaf] = {}
"""Decoded account leaves by encoding (a leaf is a pure function of its bytes)."""
_LEAVES_SIZE = 65_536


class CallError(QoinError):
    """Ends a frame (never a block): the subclass says how, the message why."""


class Revert(CallError):
    """The callee asked to revert (its message is the reason it gave)."""

    def __init__(self, reason: str, data: bytes = b"") -> None:
        super().__init__(reason)
        self.data = data


class OutOfGas(CallError):
    """The frame used all the gas it was given."""


class CallFailed(CallError):
    """The call could not run or trapped: no code there, no such method, bad arguments, a trap,
    an out-of-bounds access, memory past its bound, too deep, a module that does not validate."""


class GasMeter:
    """Gas given to a frame and gas it has used."""

    __slots__ = ("limit", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    @property
    def remaining(self) -> int:
        """Gas still available."""
        return self.limit - self.used

    def charge(self, amount: int) -> None:
        """Use ``amount`` gas; :class:`OutOfGas` (with all of it used) if there is not enough."""
        if amount > self.limit - self.used:
            self.used = self.limit
            raise OutOfGas(f"out of gas: {amount} more needed, {self.limit} given")
        self.used += amount


@dataclass(frozen=True)
class BlockEnv:
    """What a call may know about the block it runs in."""

    chain_id: int
    """Network id."""
    height: int
    """Height of the block being executed."""
    timestamp_ms: int
    """Its timestamp."""
    parent_hash: bytes
    """Hash of its parent (the block's own hash depends on its execution)."""


@dataclass(frozen=True)
class CallResult:
    """How a frame ended."""

    status: CallStatus
    """SUCCESS, REVERTED, OUT_OF_GAS or FAILED."""
    return_data: bytes
    """What it returned (a revert: the data it gave)."""
    gas_used: int
    """Gas it used (all it was given, if it ran out)."""
    reason: str = ""
    """Why it did not succeed."""

    @property
    def succeeded(self) -> bool:
        """Whether the frame's effects stand."""
        return self.status is CallStatus.SUCCESS


class Runtime(Protocol):
    """Runs contract code (:class:`qoin.contracts.wasm.WasmRuntime`)."""

    def validate(self, code: bytes) -> None:
        """Raise :class:`CallFailed` unless ``code`` is a module the chain accepts."""

    def run(self, ctx: Context, code_hash: bytes, code: bytes, method: str, args: bytes) -> bytes:
        """Run export ``method`` of the module with ``args``; return its return data. Charges
        ``ctx.gas``; raises :class:`Revert`, :class:`OutOfGas` or :class:`CallFailed`."""

    def has_method(self, code_hash: bytes, code: bytes, method: str) -> bool:
        """Whether the module exports a callable method ``method``."""


class Actor(Protocol):
    """A built-in actor: Python code at a fixed address, called like a contract."""

    name: str
    """Its name (its address is ``actor_address(name)``)."""

    def call(self, ctx: Context, method: str, args: tuple[Value, ...]) -> bytes:
        """Run ``method``; return its return data. Raise :class:`Revert` (or let the
        :class:`Context` raise :class:`OutOfGas`) to fail; a bad method or argument is
        :class:`CallFailed`."""


@dataclass
class Machine:
    """Everything the calls of one block share: its state, environment, actors, runtime, events."""

    state: StateOverlay
    """The block's journaled state."""
    env: BlockEnv
    """The block."""
    actors: Mapping[Address, Actor]
    """Built-in actors by address."""
    runtime: Runtime
    """The WebAssembly runtime."""
    schedule: Callable[[Machine, Address, int, str, bytes], None] | None = None
    """How an actor's :meth:`Context.schedule` enqueues a cron call (set by the executor)."""
    events: list[Event] = field(default_factory=list)
    """Events of the current step's frames that have not been undone."""
    loaded: set[bytes] = field(default_factory=set)
    """Code hashes the current transaction (or cron call) has run: each pays
    :data:`~qoin.execution.gas.CODE_LOAD_BYTE_GAS` once per transaction."""

    def begin_step(self) -> None:
        """Start a transaction or cron call: no events yet, no module loaded."""
        self.events.clear()
        self.loaded.clear()

    # -- accounts ----------------------------------------------------------------------------------

    def leaf(self, address: Address) -> AccountLeaf:
        """The account leaf of ``address`` (empty if absent)."""
        raw = self.state.get(state_key(address))
        if raw is None:
            return _EMPTY_LEAF
        found = _LEAVES.get(raw)
        if found is None:
            found = AccountLeaf.decode(raw)
            if len(_LEAVES) >= _LEAVES_SIZE:
                _LEAVES.clear()
            _LEAVES[raw] = found
        return found

    def set_leaf(self, address: Address, leaf: AccountLeaf) -> None:
        """Write an account leaf."""
        self.state.set(state_key(address), leaf.encode())

    def move(self, source: Address, target: Address, amount: int) -> None:
        """Move ``amount`` Shor; :class:`Revert` if ``source`` lacks it (or ``target`` would
        overflow)."""
        if amount == 0 or source == target:
            if amount and self.leaf(source).balance < amount:
                raise Revert(f"{source} has less than {amount} Shor")
            return
        payer = self.leaf(source)
        if payer.balance < amount:
            raise Revert(f"{source} has {payer.balance} Shor, cannot send {amount}")
        payee = self.leaf(target)
        if payee.balance + amount > MAX_BALANCE:
            raise Revert(f"the balance of {target} would overflow")
        self.set_leaf(source, _with_balance(payer, payer.balance - amount))
        self.set_leaf(target, _with_balance(payee, payee.balance + amount))

    def code(self, code_hash: bytes) -> bytes:
        """A stored module; :class:`CallFailed` if it is missing (a broken state)."""
        code = self.state.get(code_key(code_hash))
        if code is None:
            raise CallFailed(f"module {code_hash.hex()} is not stored")
        return code

    # -- frames ------------------------------------------------------------------------------------

    def checkpoint(self) -> tuple[int, int]:
        """A mark covering state writes and events."""
        return self.state.checkpoint(), len(self.events)

    def revert(self, mark: tuple[int, int]) -> None:
        """Undo writes and events since ``mark``."""
        self.state.revert(mark[0])
        del self.events[mark[1] :]

    def call(
        self,
        *,
        caller: Address,
        origin: Address,
        to: Address,
        value: int,
        method: str,
        args: bytes,
        gas: int,
        depth: int,
    ) -> CallResult:
        """Run one frame (module docstring); never raises a :class:`CallError`."""
        meter = GasMeter(gas)
        if depth > MAX_CALL_DEPTH:
            return CallResult(CallStatus.FAILED, b"", 0, f"calls nest at most {MAX_CALL_DEPTH}")

        def body() -> bytes:
            self.move(caller, to, value)
            ctx = Context(self, caller, origin, to, value, meter, depth)
            actor = self.actors.get(to)
            if actor is not None:
                meter.charge(costs.ACTOR_CALL_GAS)
                try:
                    values = decode_args(args)
                except DecodeError as exc:
                    raise CallFailed(f"bad arguments: {exc}") from None
                return actor.call(ctx, method, values)
            code_hash = self.leaf(to).code_hash
            if code_hash is None:
                raise CallFailed(f"{to} holds no contract")
            if method == INIT_METHOD:
                raise CallFailed(f"{INIT_METHOD!r} runs only when the contract is deployed")
            code = self.code(code_hash)
            if code_hash not in self.loaded:
                meter.charge(costs.CODE_LOAD_BYTE_GAS * len(code))
                self.loaded.add(code_hash)
            return self.runtime.run(ctx, code_hash, code, method, args)

        return self._frame(meter, body)

    def deploy(
        self, *, deployer: Address, nonce: int, data: bytes, value: int, gas: int
    ) -> CallResult:
        """Deploy the module in ``data`` as the contract ``contract_address(deployer, nonce)``:
        validate it, store it (once per module), move the value, run its ``init`` export if it
        has one. Returns the new address as return data."""
        meter = GasMeter(gas)

        def body() -> bytes:
            try:
                deployment = decode_deploy(data)
            except DecodeError as exc:
                raise CallFailed(f"bad deployment data: {exc}") from None
            code = deployment.code
            meter.charge(costs.VALIDATE_BYTE_GAS * len(code))
            self.runtime.validate(code)
            meter.charge(costs.DEPLOY_BYTE_GAS * len(code))
            code_hash = sha3_256(code)
            self.loaded.add(code_hash)  # validating compiled it
            address = contract_address(deployer, nonce)
            if address in self.actors or self.leaf(address).code_hash is not None:
                raise CallFailed(f"{address} already holds code")
            if self.state.get(code_key(code_hash)) is None:
                self.state.set(code_key(code_hash), code)
            leaf = self.leaf(address)
            self.set_leaf(address, AccountLeaf(leaf.balance, leaf.nonce, leaf.revealed, code_hash))
            self.move(deployer, address, value)
            if self.runtime.has_method(code_hash, code, INIT_METHOD):
                ctx = Context(self, deployer, deployer, address, value, meter, 1)
                self.runtime.run(ctx, code_hash, code, INIT_METHOD, deployment.args)
            return address.raw

        return self._frame(meter, body)

    def _frame(self, meter: GasMeter, body: Callable[[], bytes]) -> CallResult:
        """Run ``body`` as a frame charged to ``meter``: its writes and events stand if it
        returns (its return data, bounded), and are undone if it reverts, runs out of gas or
        fails, which the result says."""
        mark = self.checkpoint()
        try:
            returned = body()
            if len(returned) > MAX_RETURN_DATA:
                raise CallFailed(f"return data exceeds {MAX_RETURN_DATA} bytes")
            return CallResult(CallStatus.SUCCESS, returned, meter.used)
        except Revert as exc:
            self.revert(mark)
            return CallResult(CallStatus.REVERTED, exc.data, meter.used, _reason(exc))
        except OutOfGas as exc:
            self.revert(mark)
            return CallResult(CallStatus.OUT_OF_GAS, b"", meter.limit, _reason(exc))
        except CallFailed as exc:
            self.revert(mark)
            return CallResult(CallStatus.FAILED, b"", meter.used, _reason(exc))


class Context:
    """The host interface of one frame: what contract code and actors may do, each step charged
    to the frame's gas (docs/spec/contracts.md §4 gives the WebAssembly imports over these)."""

    __slots__ = ("address", "caller", "depth", "gas", "machine", "origin", "value")

    def __init__(
        self,
        machine: Machine,
        caller: Address,
        origin: Address,
        address: Address,
        value: int,
        gas: GasMeter,
        depth: int,
    ) -> None:
        self.machine = machine
        self.caller = caller
        """Who called this frame (an account, a contract or an actor)."""
        self.origin = origin
        """The account that signed the transaction (the cron actor for a cron call)."""
        self.address = address
        """The contract or actor running."""
        self.value = value
        """Shor the caller moved with the call."""
        self.gas = gas
        """The frame's gas."""
        self.depth = depth
        """1 for a transaction's own call."""

    @property
    def env(self) -> BlockEnv:
        """The block being executed."""
        return self.machine.env

    def charge(self, amount: int) -> None:
        """Use ``amount`` gas (raises :class:`OutOfGas`)."""
        self.gas.charge(amount)

    # -- storage -----------------------------------------------------------------------------------

    def storage_get(self, key: bytes) -> bytes | None:
        """This account's storage value under ``key`` (None if absent or deleted)."""
        if len(key) > MAX_STORAGE_KEY:
            raise CallFailed(f"storage keys are at most {MAX_STORAGE_KEY} bytes")
        self.gas.charge(costs.STORAGE_READ_GAS)
        value = self.machine.state.get(storage_key(self.address, key))
        return value or None

    def storage_set(self, key: bytes, value: bytes) -> None:
        """Write this account's storage value under ``key`` (the empty value deletes it)."""
        if len(key) > MAX_STORAGE_KEY:
            raise CallFailed(f"storage keys are at most {MAX_STORAGE_KEY} bytes")
        if len(value) > MAX_STORAGE_VALUE:
            raise CallFailed(f"storage values are at most {MAX_STORAGE_VALUE} bytes")
        self.gas.charge(costs.STORAGE_WRITE_GAS + costs.STORAGE_BYTE_GAS * (len(key) + len(value)))
        self.machine.state.set(storage_key(self.address, key), value)

    def storage_delete(self, key: bytes) -> None:
        """Delete this account's storage value under ``key``."""
        self.storage_set(key, b"")

    # -- events, balances, value -------------------------------------------------------------------

    def emit(self, topics: Sequence[bytes], data: bytes) -> None:
        """Announce an event from this account (kept only if the frame succeeds)."""
        try:
            event = Event(self.address, tuple(topics), data)
        except DecodeError as exc:
            raise CallFailed(f"bad event: {exc}") from None
        self.gas.charge(
            costs.EVENT_GAS + costs.EVENT_TOPIC_GAS * len(topics) + costs.EVENT_BYTE_GAS * len(data)
        )
        if len(self.machine.events) >= MAX_EVENTS:
            raise CallFailed(f"a transaction emits at most {MAX_EVENTS} events")
        self.machine.events.append(event)

    def balance(self, address: Address) -> int:
        """The balance of any account."""
        self.gas.charge(costs.BALANCE_GAS)
        return self.machine.leaf(address).balance

    def transfer(self, to: Address, amount: int) -> None:
        """Send ``amount`` Shor from this account to ``to`` (no code runs); :class:`Revert` if the
        balance is short."""
        if amount:
            self.gas.charge(costs.VALUE_TRANSFER_GAS)
        self.machine.move(self.address, to, amount)

    # -- calls -------------------------------------------------------------------------------------

    def call(
        self, to: Address, method: str, args: bytes, value: int = 0, gas: int | None = None
    ) -> CallResult:
        """Call another contract or actor with at most ``gas`` (default: all that is left); its
        gas used is charged here. Its failure is returned, not raised."""
        self.gas.charge(costs.NESTED_CALL_GAS + (costs.VALUE_TRANSFER_GAS if value else 0))
        budget = self.gas.remaining if gas is None else min(gas, self.gas.remaining)
        result = self.machine.call(
            caller=self.address,
            origin=self.origin,
            to=to,
            value=value,
            method=method,
            args=args,
            gas=budget,
            depth=self.depth + 1,
        )
        self.gas.charge(result.gas_used)
        return result

    def schedule(self, height: int, method: str, args: bytes) -> None:
        """Have the cron run ``method(args)`` on this actor at the start of block ``height``
        (built-in actors only)."""
        if self.address not in self.machine.actors or self.machine.schedule is None:
            raise CallFailed("only built-in actors can schedule cron calls")
        self.gas.charge(costs.CRON_SCHEDULE_GAS)
        self.machine.schedule(self.machine, self.address, height, method, args)

    # -- cryptography ------------------------------------------------------------------------------

    def sha3(self, data: bytes) -> bytes:
        """SHA3-256 of ``data``."""
        self.gas.charge(costs.HASH_GAS + costs.HASH_WORD_GAS * costs.words(len(data)))
        return sha3_256(data)

    def shake(self, data: bytes, size: int) -> bytes:
        """``size`` bytes of SHAKE256 of ``data``."""
        self.gas.charge(
            costs.HASH_GAS + costs.HASH_WORD_GAS * (costs.words(len(data)) + costs.words(size))
        )
        return shake_256(data, size)

    def verify_signature(self, public_key: bytes, message: bytes, signature: bytes) -> bool:
        """Whether ``signature`` is a valid hybrid signature of ``message`` by ``public_key``
        (encodings as in transactions; undecodable inputs are simply not valid)."""
        self.gas.charge(costs.SIGNATURE_VERIFY_GAS)
        try:
            public = HybridPublicKey.decode(public_key)
            parsed = HybridSignature.decode(signature)
        except QoinError:
            return False
        return is_valid(public, message, parsed)


def _with_balance(leaf: AccountLeaf, balance: int) -> AccountLeaf:
    return AccountLeaf(balance, leaf.nonce, leaf.revealed, leaf.code_hash)


def _reason(exc: CallError) -> str:
    text = str(exc) or type(exc).__name__
    raw = text.encode()[:MAX_REASON]
    return raw.decode(errors="ignore")


def actor_method_error(method: str, name: str) -> CallFailed:
    """The failure for a method an actor does not have."""
    return CallFailed(f"the {name} actor has no method {method!r}")


def check_args(args: tuple[Value, ...], *types: type) -> None:
    """:class:`CallFailed` unless ``args`` has exactly these types (``bool`` is not ``int``)."""
    if len(args) != len(types):
        raise CallFailed(f"expected {len(types)} arguments, got {len(args)}")
    for position, (value, expected) in enumerate(zip(args, types, strict=True)):
        if isinstance(value, bool) and expected is not bool:
            raise CallFailed(f"argument {position} must be {expected.__name__}, got bool")
        if not isinstance(value, expected):
            raise CallFailed(
                f"argument {position} must be {expected.__name__}, got {type(value).__name__}"
            )
