"""The WebAssembly contract runtime: deterministic wasmtime, fuel as gas, the host ABI.

A contract is a WebAssembly module (docs/spec/contracts.md §4, §6) that

* exports its linear memory as ``memory`` (at most :data:`MAX_MEMORY_PAGES` pages, however far
  ``memory.grow`` is asked to go) and each method as a function of type ``() -> ()``;
* imports only functions of module ``"qoin"`` (:mod:`qoin.contracts.host`), each with exactly its
  signature. A start function is allowed: it runs, metered, at the start of every call.

Each call instantiates the module afresh in a new store whose fuel is the frame's remaining gas:
one fuel is one gas (about one per WebAssembly instruction). Before every host import the fuel
consumed so far is charged to the frame's gas, and afterwards the store is refuelled with what
remains, so host costs and instructions draw on the same budget. Running out of fuel is
:class:`~qoin.execution.vm.OutOfGas`; any other trap (``unreachable``, an out-of-bounds access, a
division by zero, a stack overflow...) or a host import that refuses its arguments is
:class:`~qoin.execution.vm.CallFailed`; both use all of the frame's gas. A host import's
:class:`~qoin.execution.vm.Revert` (``revert``, a short ``transfer``) surfaces as itself and uses
only the gas used so far. No wasmtime exception escapes as anything but these.

Compiled modules are cached by code hash (least recently used first out); the engine and the linker
holding the host imports are shared by every call.
"""

from __future__ import annotations

import ctypes
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from functools import cache
from typing import cast

from wasmtime import (
    Config,
    Engine,
    FuncType,
    Instance,
    InstancePre,
    Linker,
    Memory,
    MemoryType,
    Module,
    Store,
    Trap,
    TrapCode,
    WasmtimeError,
)
from wasmtime import _ffi as ffi  # the C API, as wasmtime-py uses it (wasmtime is pinned)
from wasmtime._func import enter_wasm

from qoin.contracts import host
from qoin.crypto.hashing import sha3_256
from qoin.execution.abi import MAX_CODE_SIZE
from qoin.execution.vm import CallFailed, Context, OutOfGas

PAGE_SIZE = 64 * 1024
"""A WebAssembly page."""
MAX_MEMORY_PAGES = 256
"""Most linear memory a contract may have: 256 pages, 16 MiB."""
MAX_MEMORY_BYTES = MAX_MEMORY_PAGES * PAGE_SIZE
MAX_TABLE_ELEMENTS = 10_000
"""Most elements a contract's table may hold."""
MAX_WASM_STACK = 256 * 1024
"""Native stack one frame's WebAssembly may use, in bytes (16 nested frames stay within 8 MiB)."""
MODULE_CACHE_SIZE = 128
"""Compiled modules kept by a runtime."""
MAX_ERROR_TEXT = 160
"""Longest error text a failure reason quotes from wasmtime."""

_LOCK = threading.RLock()
"""Serialises contract execution in the process: the host imports find their frame on one stack,
and wasmtime-py passes a host function's exception to the caller through one global."""


def engine_config() -> Config:
    """The deterministic engine configuration (docs/spec/contracts.md §6): fuel metering, NaN
    canonicalisation, a bounded stack, and only the deterministic, single-memory, 32-bit
    WebAssembly 2.0 features (no threads, SIMD, memory64, multi-memory, tail calls, exceptions,
    GC)."""
    config = Config()
    config.consume_fuel = True
    config.cranelift_nan_canonicalization = True
    config.max_wasm_stack = MAX_WASM_STACK
    config.wasm_threads = False
    config.shared_memory = False
    config.wasm_simd = False
    config.wasm_relaxed_simd = False
    config.wasm_multi_memory = False
    config.wasm_memory64 = False
    config.wasm_reference_types = True  # wasmtime 51 cannot turn it off; one table at most
    config.wasm_tail_call = False
    config.wasm_exceptions = False
    config.wasm_function_references = False
    config.wasm_gc = False
    config.wasm_wide_arithmetic = False
    config.wasm_custom_page_sizes = False
    config.wasm_stack_switching = False
    config.wasm_component_model = False
    config.wasm_bulk_memory = True
    config.wasm_multi_value = True
    config.epoch_interruption = False
    config.debug_info = False
    return config


@dataclass(frozen=True)
class CompiledModule:
    """A module that passed validation, compiled and linked against the host imports."""

    module: Module
    """The compiled module."""
    pre: InstancePre
    """The module with its imports resolved (instantiated once per call)."""
    methods: frozenset[str]
    """Its callable methods: exported functions of type ``() -> ()`` not starting with ``_``."""


def _short(error: Exception) -> str:
    """The gist of a wasmtime message: its first line and its root cause, trimmed."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    text = lines[0] if len(lines) == 1 else f"{lines[0].rstrip(':')}: {lines[-1]}"
    return text[:MAX_ERROR_TEXT]


def _check_imports(module: Module) -> None:
    """:class:`CallFailed` unless every import is a host function with its exact signature."""
    for item in module.imports:
        name = item.name or ""
        if item.module != host.HOST_MODULE:
            raise CallFailed(
                f"import {item.module}.{name}: contracts import only from module "
                f"{host.HOST_MODULE!r}"
            )
        spec = host.IMPORTS.get(name)
        if spec is None:
            raise CallFailed(f"unknown import {host.HOST_MODULE}.{name}")
        kind = item.type
        if (
            not isinstance(kind, FuncType)
            or tuple(map(str, kind.params)) != spec.params
            or tuple(map(str, kind.results)) != spec.results
        ):
            raise CallFailed(
                f"import {host.HOST_MODULE}.{name} must be a function {spec.signature}"
            )


def _methods(module: Module) -> frozenset[str]:
    """The module's methods; :class:`CallFailed` unless it exports a memory as ``memory`` that
    starts within the bound."""
    memory: MemoryType | None = None
    methods: set[str] = set()
    for export in module.exports:
        kind = export.type
        if export.name == "memory" and isinstance(kind, MemoryType):
            memory = kind
        elif (
            isinstance(kind, FuncType)
            and not kind.params
            and not kind.results
            and not export.name.startswith("_")
        ):
            methods.add(export.name)
    if memory is None:
        raise CallFailed("a contract must export its memory as 'memory'")
    if memory.limits.min > MAX_MEMORY_PAGES:
        raise CallFailed(
            f"the memory starts at {memory.limits.min} pages, more than {MAX_MEMORY_PAGES}"
        )
    return frozenset(methods)


class WasmRuntime:
    """Runs WebAssembly contracts (:class:`qoin.execution.vm.Runtime`)."""

    def __init__(self, cache_size: int = MODULE_CACHE_SIZE) -> None:
        self.engine = Engine(engine_config())
        """The shared engine (one configuration for every module)."""
        if not self.engine.ptr():  # wasmtime refuses a configuration by handing back nothing
            raise RuntimeError("wasmtime rejected the engine configuration")
        self.cache_size = cache_size
        """Compiled modules kept."""
        self._linker = Linker(self.engine)
        self._import_types = host.define_imports(self._linker)
        self._cache: OrderedDict[bytes, CompiledModule] = OrderedDict()
        # wasmtime's objects free their native side in __del__, which fails once the interpreter
        # is shutting down ("Exception ignored ... 'NoneType' object is not callable"): free them
        # while it still runs — when the runtime goes, or at exit, whichever comes first.
        weakref.finalize(self, _free, self._cache, self._import_types, self._linker, self.engine)

    # -- modules -----------------------------------------------------------------------------------

    def validate(self, code: bytes) -> None:
        """:class:`CallFailed` (saying why) unless ``code`` is a module the chain accepts."""
        self.compiled(sha3_256(code), code)

    def compiled(self, code_hash: bytes, code: bytes) -> CompiledModule:
        """The compiled form of ``code`` (whose SHA3-256 is ``code_hash``), from the cache or
        checked and compiled now; :class:`CallFailed` if the module is not acceptable."""
        with _LOCK:
            found = self._cache.get(code_hash)
            if found is not None:
                self._cache.move_to_end(code_hash)
                return found
            made = self._compile(code)
            self._cache[code_hash] = made
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
            return made

    def _compile(self, code: bytes) -> CompiledModule:
        if len(code) > MAX_CODE_SIZE:
            raise CallFailed(f"a module is at most {MAX_CODE_SIZE} bytes, got {len(code)}")
        try:
            module = Module(self.engine, code)
        except WasmtimeError as exc:
            raise CallFailed(f"invalid module: {_short(exc)}") from None
        _check_imports(module)
        methods = _methods(module)
        try:
            pre = self._linker.instantiate_pre(module)
        except WasmtimeError as exc:  # pragma: no cover - the imports were checked above
            raise CallFailed(f"cannot link the module: {_short(exc)}") from None
        return CompiledModule(module, pre, methods)

    def has_method(self, code_hash: bytes, code: bytes, method: str) -> bool:
        """Whether the module exports a callable method ``method``."""
        return method in self.compiled(code_hash, code).methods

    # -- calls -------------------------------------------------------------------------------------

    def run(self, ctx: Context, code_hash: bytes, code: bytes, method: str, args: bytes) -> bytes:
        """Run export ``method`` with ``args`` against ``ctx``; return the data it set with
        ``return_data``. Charges ``ctx.gas``; raises :class:`~qoin.execution.vm.Revert`,
        :class:`OutOfGas` or :class:`CallFailed`, never anything from wasmtime."""
        compiled = self.compiled(code_hash, code)
        if method not in compiled.methods:
            raise CallFailed(f"the contract has no method {method!r}")
        with _LOCK:
            store = Store(self.engine)
            store.set_limits(
                memory_size=MAX_MEMORY_BYTES,
                table_elements=MAX_TABLE_ELEMENTS,
                instances=1,
                tables=1,
                memories=1,
            )
            frame = host.Frame(ctx, store, args)
            frame.refuel()
            host.push(frame)
            try:
                try:
                    _call_export(frame, compiled.pre.instantiate(store), method)
                except Trap as trap:
                    raise _trap_error(frame, trap) from None
                except WasmtimeError as exc:
                    ctx.gas.used = ctx.gas.limit
                    raise CallFailed(f"cannot run the contract: {_short(exc)}") from None
                except CallFailed:  # a host import refused: like a trap, it uses all the gas
                    ctx.gas.used = ctx.gas.limit
                    raise
                frame.settle()
                return frame.output
            finally:
                host.pop()


def _call_export(frame: host.Frame, instance: Instance, method: str) -> None:
    """Call the instance's export ``method`` (a validated ``() -> ()`` function).

    Straight through wasmtime's C API (as wasmtime-py's own ``Instance.exports`` and ``Func.__call__``
    do, less their generality): looking up one export rather than listing them all, and calling
    without re-reading the function's type, saves a fifth of a counter call. The memory (an export
    every accepted module has) is looked up the same way and handed to the frame, which would
    otherwise look it up through the first import that needs it (:meth:`host.Frame.check`).
    """
    store = frame.store
    context = store._context()
    memory = ffi.wasmtime_extern_t()
    if (
        ffi.wasmtime_instance_export_get(
            context, ctypes.byref(instance._instance), b"memory", 6, ctypes.byref(memory)
        )
        and cast(int, memory.kind) == ffi.WASMTIME_EXTERN_MEMORY.value
    ):
        frame.memory = Memory._from_raw(memory.of.memory)
    name = method.encode()
    item = ffi.wasmtime_extern_t()
    found = ffi.wasmtime_instance_export_get(
        context, ctypes.byref(instance._instance), name, len(name), ctypes.byref(item)
    )
    if not found or cast(int, item.kind) != ffi.WASMTIME_EXTERN_FUNC.value:
        raise CallFailed(f"the contract has no method {method!r}")
    with enter_wasm(store) as trap:
        error = ffi.wasmtime_func_call(context, ctypes.byref(item.of.func), None, 0, None, 0, trap)
        if error:
            raise WasmtimeError._from_ptr(error)


def _trap_error(frame: host.Frame, trap: Trap) -> CallFailed | OutOfGas:
    """The error a trap ends the frame with. A trap uses all of the frame's gas: how far the
    code got before it trapped is then never part of the result (nor is how deep the native stack
    went, which depends on the machine code, before it overflowed)."""
    gas = frame.ctx.gas
    gas.used = gas.limit
    code = trap.trap_code
    if code is TrapCode.OUT_OF_FUEL:
        return OutOfGas(f"out of gas: {gas.limit} given")
    if code is TrapCode.STACK_OVERFLOW:
        return CallFailed("trap: call stack exhausted")
    lines = [line.strip() for line in trap.message.splitlines() if line.strip()]
    cause = lines[-1] if lines else "trap"
    cause = cause.split(": ", 1)[1] if cause[:1].isdigit() and ": " in cause else cause
    return CallFailed(cause.removeprefix("wasm ")[:MAX_ERROR_TEXT])


def _free(
    cache: OrderedDict[bytes, CompiledModule],
    import_types: list[FuncType],
    linker: Linker,
    engine: Engine,
) -> None:
    """Free a runtime's native objects, modules before the engine they were compiled by."""
    with _LOCK:
        for compiled in cache.values():
            compiled.pre.close()
            compiled.module.close()
        cache.clear()
        for func_type in import_types:
            func_type.close()
        linker.close()
        engine.close()


@cache
def default_runtime() -> WasmRuntime:
    """The process-wide runtime (one engine, one module cache)."""
    return WasmRuntime()
