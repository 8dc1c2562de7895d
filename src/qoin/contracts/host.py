"""The host ABI: the functions a WebAssembly contract imports from module ``"qoin"``.

Each import is a thin layer over the frame's :class:`~qoin.execution.vm.Context` (so a contract pays
exactly what a built-in actor pays for the same step), plus the copies between the host and the
contract's linear memory. docs/spec/contracts.md §4 specifies every import byte for byte:

* pointers and lengths are ``i32`` read as unsigned; a range outside the memory is
  :class:`~qoin.execution.vm.CallFailed` (the frame fails);
* amounts and other u64 values travel as ``i64`` (two's complement);
* every import costs :data:`HOST_CALL_GAS`, every copy between host and memory
  :data:`~qoin.execution.gas.COPY_WORD_GAS` per started 32 bytes, and the :class:`Context`
  operation it performs its own cost (:mod:`qoin.execution.gas`).

Every import enters through one callback registered with wasmtime's C API (``_trampoline``: the
raw parameters, no per-value boxing), which finds the frame it serves with :func:`current`: the
runtime pushes a :class:`Frame` before it enters a contract and pops it when the contract returns,
so a nested call (a contract calling a contract) pushes its own frame over its caller's. The
runtime serialises all contract execution in the process (one frame stack, and wasmtime-py hands a
host function's exception back through one global).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import wasmtime._func as _wasmtime_func
from wasmtime import (
    Caller,
    FuncType,
    Linker,
    Memory,
    Store,
    Trap,
    ValType,
    WasmtimeError,
    _ffi,  # the C API, as wasmtime-py uses it (wasmtime is pinned)
)

from qoin.crypto.address import ADDRESS_SIZE, Address
from qoin.execution import gas as costs
from qoin.execution.abi import MAX_METHOD_SIZE, MAX_VALUE_BYTES
from qoin.execution.account import MAX_STORAGE_KEY, MAX_STORAGE_VALUE
from qoin.execution.receipt import (
    MAX_EVENT_DATA,
    MAX_REASON,
    MAX_RETURN_DATA,
    MAX_TOPICS,
    TOPIC_SIZE,
)
from qoin.execution.vm import CallFailed, Context, Revert

HOST_MODULE = "qoin"
"""The module name every import of a contract must use."""
HOST_CALL_GAS = costs.HOST_CALL_GAS
"""What every host import costs before its own work (a host call takes the node about 10 us)."""
MAX_CALL_ARGS = MAX_VALUE_BYTES
"""Largest argument data a contract may pass to a nested call, in bytes."""
HASH_SIZE = 32
"""Size of an address, a block hash and a SHA3-256 digest."""

_MASK32 = 0xFFFF_FFFF
_MASK64 = 0xFFFF_FFFF_FFFF_FFFF


@dataclass(frozen=True)
class HostImport:
    """One function of the host ABI: its name and its exact WebAssembly signature."""

    name: str
    """The import's field name (its module is :data:`HOST_MODULE`)."""
    params: tuple[str, ...]
    """Parameter types, ``"i32"`` or ``"i64"``."""
    results: tuple[str, ...]
    """Result types (none or one)."""

    def func_type(self) -> FuncType:
        """The wasmtime function type."""
        return FuncType([_valtype(p) for p in self.params], [_valtype(r) for r in self.results])

    @property
    def signature(self) -> str:
        """The signature as text, e.g. ``(i32, i32) -> i32``."""
        result = f" -> {self.results[0]}" if self.results else ""
        return f"({', '.join(self.params)}){result}"


def _valtype(name: str) -> ValType:
    return ValType.i32() if name == "i32" else ValType.i64()


class Frame:
    """What the imports of one running contract share: its context, store, memory, data."""

    __slots__ = ("args", "ctx", "fresh", "fuel", "memory", "output", "result", "store", "view")

    def __init__(self, ctx: Context, store: Store, args: bytes) -> None:
        self.ctx = ctx
        """The frame's host interface."""
        self.store = store
        """The contract's store (its fuel is the frame's remaining gas)."""
        self.args = args
        """The call's argument bytes (read by ``input_read``)."""
        self.memory: Memory | None = None
        """The contract's exported memory (set once instantiated)."""
        self.fuel = 0
        """The store's fuel when it was last set: fuel consumed since is gas not yet charged."""
        self.output = b""
        """Return data set by ``return_data``."""
        self.result = b""
        """Return data of the last nested call (read by ``result_read``)."""
        self.view: tuple[int, int] | None = None
        """The memory's address and size when last looked up (None: not yet)."""
        self.fresh = True
        """Whether the current import has not checked :attr:`view` yet."""

    # -- gas ---------------------------------------------------------------------------------------

    def refuel(self) -> None:
        """Give the store the frame's remaining gas as fuel."""
        self.fuel = self.ctx.gas.remaining
        self.store.set_fuel(self.fuel)

    def settle(self) -> None:
        """Charge the fuel consumed since the store's fuel was last set."""
        left = self.store.get_fuel()
        self.ctx.gas.charge(self.fuel - left)
        self.fuel = left

    def charge_copy(self, size: int) -> None:
        """Charge a copy of ``size`` bytes between host and memory."""
        if size:
            self.ctx.gas.charge(costs.COPY_WORD_GAS * costs.words(size))

    # -- memory ------------------------------------------------------------------------------------

    def _view(self, caller: Caller) -> tuple[int, int]:
        """The memory's address in this process and its size. Kept from import to import: the
        memory moves only when it grows (``memory.grow`` in the contract, never an import), and
        growing changes its size, so the size is checked once per import (``fresh``)."""
        view = self.view
        memory = self.memory
        if memory is None:
            found = caller.get("memory")
            if not isinstance(found, Memory):
                raise CallFailed("the contract has no memory")
            memory = self.memory = found
        if view is not None and not self.fresh:
            return view
        size = memory.data_len(caller)
        if view is None or view[1] != size:
            view = self.view = (ctypes.addressof(memory.data_ptr(caller).contents), size)
        self.fresh = False
        return view

    def check(self, caller: Caller, ptr: int, size: int) -> int:
        """:class:`CallFailed` unless ``size`` bytes at ``ptr`` lie in memory; their address."""
        base, length = self._view(caller)
        if ptr + size > length:
            raise CallFailed(f"out-of-bounds memory access: {size} bytes at {ptr}")
        return base + ptr

    def peek(self, caller: Caller, ptr: int, size: int) -> bytes:
        """``size`` bytes at ``ptr`` (bounds checked, nothing charged)."""
        return ctypes.string_at(self.check(caller, ptr, size), size)

    def read(self, caller: Caller, ptr: int, size: int) -> bytes:
        """Copy ``size`` bytes at ``ptr`` out of memory (bounds checked, copy charged)."""
        address = self.check(caller, ptr, size)
        self.charge_copy(size)
        return ctypes.string_at(address, size)

    def write(self, caller: Caller, ptr: int, data: bytes) -> None:
        """Copy ``data`` into memory at ``ptr`` (bounds checked, copy charged)."""
        address = self.check(caller, ptr, len(data))
        self.charge_copy(len(data))
        ctypes.memmove(address, data, len(data))


def _u32(value: int) -> int:
    return value & _MASK32


def _i64(value: int) -> int:
    """A u64 as the signed i64 that carries it."""
    value &= _MASK64
    return value - (1 << 64) if value >> 63 else value


def _address(frame: Frame, caller: Caller, ptr: int) -> Address:
    return Address(frame.read(caller, _u32(ptr), ADDRESS_SIZE))


# -- the imports -----------------------------------------------------------------------------------
# Each takes the frame, the wasmtime caller and the wasm parameters, and returns the wasm result.
# The wrapper has already charged the fuel used so far and HOST_CALL_GAS. Each import then checks its
# sizes and every memory range it touches (CallFailed), before any other charge: which of FAILED and
# OUT_OF_GAS a bad call ends in never depends on the order of its charges.


def _input_size(frame: Frame, caller: Caller) -> int:
    return len(frame.args)


def _input_read(frame: Frame, caller: Caller, ptr: int) -> None:
    frame.write(caller, _u32(ptr), frame.args)


def _return_data(frame: Frame, caller: Caller, ptr: int, size: int) -> None:
    size = _u32(size)
    if size > MAX_RETURN_DATA:
        raise CallFailed(f"return data exceeds {MAX_RETURN_DATA} bytes")
    frame.output = frame.read(caller, _u32(ptr), size)


def _revert(frame: Frame, caller: Caller, ptr: int, size: int) -> None:
    raw = frame.read(caller, _u32(ptr), min(_u32(size), MAX_REASON))
    raise Revert(raw.decode(errors="replace"))


def _check_key(size: int) -> int:
    size = _u32(size)
    if size > MAX_STORAGE_KEY:
        raise CallFailed(f"storage keys are at most {MAX_STORAGE_KEY} bytes")
    return size


def _storage_read(
    frame: Frame, caller: Caller, key_ptr: int, key_len: int, out_ptr: int, out_cap: int
) -> int:
    key_ptr, key_len = _u32(key_ptr), _check_key(key_len)
    out_ptr, out_cap = _u32(out_ptr), _u32(out_cap)
    frame.check(caller, out_ptr, out_cap)
    value = frame.ctx.storage_get(frame.read(caller, key_ptr, key_len))
    if value is None:
        return -1
    frame.write(caller, out_ptr, value[:out_cap])
    return len(value)


def _storage_write(
    frame: Frame, caller: Caller, key_ptr: int, key_len: int, val_ptr: int, val_len: int
) -> None:
    key_ptr, key_len = _u32(key_ptr), _check_key(key_len)
    val_ptr, val_len = _u32(val_ptr), _u32(val_len)
    if val_len > MAX_STORAGE_VALUE:
        raise CallFailed(f"storage values are at most {MAX_STORAGE_VALUE} bytes")
    frame.check(caller, key_ptr, key_len)
    frame.check(caller, val_ptr, val_len)
    key = frame.read(caller, key_ptr, key_len)
    frame.ctx.storage_set(key, frame.read(caller, val_ptr, val_len))


def _storage_delete(frame: Frame, caller: Caller, key_ptr: int, key_len: int) -> None:
    key_len = _check_key(key_len)
    frame.ctx.storage_delete(frame.read(caller, _u32(key_ptr), key_len))


def _emit(
    frame: Frame, caller: Caller, topics_ptr: int, count: int, data_ptr: int, data_len: int
) -> None:
    topics_ptr, count = _u32(topics_ptr), _u32(count)
    data_ptr, data_len = _u32(data_ptr), _u32(data_len)
    if count > MAX_TOPICS:
        raise CallFailed(f"an event has at most {MAX_TOPICS} topics, got {count}")
    if data_len > MAX_EVENT_DATA:
        raise CallFailed(f"event data is at most {MAX_EVENT_DATA} bytes")
    frame.check(caller, topics_ptr, TOPIC_SIZE * count)
    frame.check(caller, data_ptr, data_len)
    raw = frame.read(caller, topics_ptr, TOPIC_SIZE * count)
    data = frame.read(caller, data_ptr, data_len)
    topics = [raw[i : i + TOPIC_SIZE] for i in range(0, len(raw), TOPIC_SIZE)]
    frame.ctx.emit(topics, data)


def _caller(frame: Frame, caller: Caller, out_ptr: int) -> None:
    frame.write(caller, _u32(out_ptr), frame.ctx.caller.raw)


def _origin(frame: Frame, caller: Caller, out_ptr: int) -> None:
    frame.write(caller, _u32(out_ptr), frame.ctx.origin.raw)


def _self_address(frame: Frame, caller: Caller, out_ptr: int) -> None:
    frame.write(caller, _u32(out_ptr), frame.ctx.address.raw)


def _value(frame: Frame, caller: Caller) -> int:
    return _i64(frame.ctx.value)


def _balance(frame: Frame, caller: Caller, addr_ptr: int) -> int:
    return _i64(frame.ctx.balance(_address(frame, caller, addr_ptr)))


def _self_balance(frame: Frame, caller: Caller) -> int:
    return _i64(frame.ctx.balance(frame.ctx.address))


def _transfer(frame: Frame, caller: Caller, addr_ptr: int, amount: int) -> None:
    frame.ctx.transfer(_address(frame, caller, addr_ptr), amount & _MASK64)


def _call(
    frame: Frame,
    caller: Caller,
    addr_ptr: int,
    method_ptr: int,
    method_len: int,
    args_ptr: int,
    args_len: int,
    value: int,
    gas: int,
) -> int:
    addr_ptr, method_ptr, method_len = _u32(addr_ptr), _u32(method_ptr), _u32(method_len)
    args_ptr, args_len = _u32(args_ptr), _u32(args_len)
    if not 1 <= method_len <= MAX_METHOD_SIZE:
        raise CallFailed(f"a method name is 1 to {MAX_METHOD_SIZE} bytes, got {method_len}")
    if args_len > MAX_CALL_ARGS:
        raise CallFailed(f"call arguments are at most {MAX_CALL_ARGS} bytes")
    frame.check(caller, addr_ptr, ADDRESS_SIZE)
    frame.check(caller, method_ptr, method_len)
    frame.check(caller, args_ptr, args_len)
    try:
        method = bytes(frame.peek(caller, method_ptr, method_len)).decode()
    except UnicodeDecodeError:
        raise CallFailed("the method name is not UTF-8") from None
    to = _address(frame, caller, addr_ptr)
    frame.charge_copy(method_len)
    args = frame.read(caller, args_ptr, args_len)
    result = frame.ctx.call(to, method, args, value & _MASK64, (gas & _MASK64) or None)
    frame.result = result.return_data
    return int(result.status)


def _result_size(frame: Frame, caller: Caller) -> int:
    return len(frame.result)


def _result_read(frame: Frame, caller: Caller, ptr: int) -> None:
    frame.write(caller, _u32(ptr), frame.result)


def _block_height(frame: Frame, caller: Caller) -> int:
    return _i64(frame.ctx.env.height)


def _block_time(frame: Frame, caller: Caller) -> int:
    return _i64(frame.ctx.env.timestamp_ms)


def _block_hash(frame: Frame, caller: Caller, out_ptr: int) -> None:
    frame.write(caller, _u32(out_ptr), frame.ctx.env.parent_hash)


def _chain_id(frame: Frame, caller: Caller) -> int:
    return _i64(frame.ctx.env.chain_id)


def _sha3(frame: Frame, caller: Caller, ptr: int, size: int, out_ptr: int) -> None:
    ptr, size, out_ptr = _u32(ptr), _u32(size), _u32(out_ptr)
    frame.check(caller, ptr, size)
    frame.check(caller, out_ptr, HASH_SIZE)
    frame.write(caller, out_ptr, frame.ctx.sha3(frame.read(caller, ptr, size)))


def _shake(frame: Frame, caller: Caller, ptr: int, size: int, out_ptr: int, out_len: int) -> None:
    ptr, size, out_ptr, out_len = _u32(ptr), _u32(size), _u32(out_ptr), _u32(out_len)
    frame.check(caller, ptr, size)
    frame.check(caller, out_ptr, out_len)
    frame.write(caller, out_ptr, frame.ctx.shake(frame.read(caller, ptr, size), out_len))


def _verify_signature(
    frame: Frame,
    caller: Caller,
    pk_ptr: int,
    pk_len: int,
    msg_ptr: int,
    msg_len: int,
    sig_ptr: int,
    sig_len: int,
) -> int:
    ranges = [(_u32(pk_ptr), _u32(pk_len)), (_u32(msg_ptr), _u32(msg_len))]
    ranges.append((_u32(sig_ptr), _u32(sig_len)))
    for ptr, size in ranges:
        frame.check(caller, ptr, size)
    public_key, message, signature = (frame.read(caller, ptr, size) for ptr, size in ranges)
    frame.ctx.charge(costs.HASH_WORD_GAS * costs.words(len(message)))
    return 1 if frame.ctx.verify_signature(public_key, message, signature) else 0


def _gas_left(frame: Frame, caller: Caller) -> int:
    return _i64(frame.ctx.gas.remaining)


_I32, _I64 = "i32", "i64"

_TABLE: tuple[tuple[HostImport, Callable[..., int | None]], ...] = (
    (HostImport("input_size", (), (_I32,)), _input_size),
    (HostImport("input_read", (_I32,), ()), _input_read),
    (HostImport("return_data", (_I32, _I32), ()), _return_data),
    (HostImport("revert", (_I32, _I32), ()), _revert),
    (HostImport("storage_read", (_I32, _I32, _I32, _I32), (_I32,)), _storage_read),
    (HostImport("storage_write", (_I32, _I32, _I32, _I32), ()), _storage_write),
    (HostImport("storage_delete", (_I32, _I32), ()), _storage_delete),
    (HostImport("emit", (_I32, _I32, _I32, _I32), ()), _emit),
    (HostImport("caller", (_I32,), ()), _caller),
    (HostImport("origin", (_I32,), ()), _origin),
    (HostImport("self_address", (_I32,), ()), _self_address),
    (HostImport("value", (), (_I64,)), _value),
    (HostImport("balance", (_I32,), (_I64,)), _balance),
    (HostImport("self_balance", (), (_I64,)), _self_balance),
    (HostImport("transfer", (_I32, _I64), ()), _transfer),
    (
        HostImport("call", (_I32, _I32, _I32, _I32, _I32, _I64, _I64), (_I32,)),
        _call,
    ),
    (HostImport("result_size", (), (_I32,)), _result_size),
    (HostImport("result_read", (_I32,), ()), _result_read),
    (HostImport("block_height", (), (_I64,)), _block_height),
    (HostImport("block_time", (), (_I64,)), _block_time),
    (HostImport("block_hash", (_I32,), ()), _block_hash),
    (HostImport("chain_id", (), (_I64,)), _chain_id),
    (HostImport("sha3", (_I32, _I32, _I32), ()), _sha3),
    (HostImport("shake", (_I32, _I32, _I32, _I32), ()), _shake),
    (
        HostImport("verify_signature", (_I32, _I32, _I32, _I32, _I32, _I32), (_I32,)),
        _verify_signature,
    ),
    (HostImport("gas_left", (), (_I64,)), _gas_left),
)

IMPORTS: dict[str, HostImport] = {spec.name: spec for spec, _ in _TABLE}
"""Every import a contract may declare, by name."""

_frames: list[Frame] = []


def push(frame: Frame) -> None:
    """Make ``frame`` the one the imports serve (the runtime holds its lock)."""
    _frames.append(frame)


def pop() -> None:
    """Return to the frame below (the caller's, in a nested call)."""
    _frames.pop()


def current() -> Frame:
    """The frame the imports serve now."""
    return _frames[-1]


def _trampoline(env: int | None, caller_ptr: Any, values: Any, count: int) -> int:
    """Every import enters here, straight from wasmtime's C API (wasmtime-py's own trampoline,
    less the boxing of each value): ``env`` picks the import, ``values`` holds its parameters and
    receives its result. A Python exception becomes a trap and is raised again where the contract
    was entered, as wasmtime-py does it."""
    caller = Caller(caller_ptr)
    try:
        spec, impl = _TABLE[(env or 0) - 1]
        frame = _frames[-1]
        frame.fresh = True
        frame.settle()
        frame.ctx.gas.charge(HOST_CALL_GAS)
        params = [
            values[i].i32 if kind == "i32" else values[i].i64 for i, kind in enumerate(spec.params)
        ]
        result = impl(frame, caller, *params)
        frame.refuel()
        if spec.results == ("i32",):
            values[0].i32 = result
        elif spec.results == ("i64",):
            values[0].i64 = result
        return 0
    except BaseException as exc:  # even KeyboardInterrupt: the contract must not go on
        _wasmtime_func.LAST_EXCEPTION = cast(Exception, exc)
        trap = Trap("python exception")._consume()
        return cast(int, ctypes.cast(trap, ctypes.c_void_p).value)
    finally:
        caller._invalidate()


def _no_finalizer(env: int | None) -> None:
    """The imports hold no per-definition state to free."""


_TRAMPOLINE = _ffi.wasmtime_func_unchecked_callback_t(_trampoline)
_NO_FINALIZER = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(_no_finalizer)


def define_imports(linker: Linker) -> list[FuncType]:
    """Define every import on ``linker`` (usable by any store of its engine). Returns the
    imports' types, which belong to the linker's engine from then on: keep them as long as it."""
    module = HOST_MODULE.encode()
    types = [spec.func_type() for spec, _ in _TABLE]
    for index, ((spec, _), func_type) in enumerate(zip(_TABLE, types, strict=True), 1):
        name = spec.name.encode()
        error = _ffi.wasmtime_linker_define_func_unchecked(
            linker.ptr(),
            ctypes.create_string_buffer(module),
            len(module),
            ctypes.create_string_buffer(name),
            len(name),
            func_type.ptr(),
            _TRAMPOLINE,
            index,
            _NO_FINALIZER,
        )
        if error:
            raise WasmtimeError._from_ptr(error)
    return types
