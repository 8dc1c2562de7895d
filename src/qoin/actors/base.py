"""A small base for built-in actors: method dispatch, argument checks, typed storage, event topics.

A built-in actor is Python code at ``actor_address(name)``, called like a contract (see
:class:`qoin.execution.vm.Actor`). It keeps *no* state in Python: everything it knows lives in its
storage, read and written through the frame's :class:`~qoin.execution.vm.Context`, so every step is
charged the host costs a WebAssembly contract would pay, and a failed frame undoes it all. An actor
object is therefore shared freely between blocks, machines and threads.

Conventions every actor here follows:

* a wrong argument count or type (including a byte string of the wrong length, whose type is
  "``n`` bytes") is :class:`~qoin.execution.vm.CallFailed` (status FAILED): the caller sent
  something that is not a call of this method;
* well-typed arguments that break a rule of the actor (a malformed name, a short payment, a caller
  who may not do this) are :class:`~qoin.execution.vm.Revert` (status REVERTED) with a reason the
  caller reads in its receipt;
* a method that takes no payment reverts if the call moves a value, so no Shor is lost by mistake.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TypeVar

from qoin.crypto.hashing import sha3_256
from qoin.encoding.codec import DecodeError
from qoin.execution.abi import Value
from qoin.execution.account import actor_address
from qoin.execution.vm import CallFailed, Context, Revert, actor_method_error

Handler = Callable[[Context, tuple[Value, ...]], bytes]
"""An actor method: runs against the frame's context with the decoded arguments, returns the
return data (by convention one encoded value, or nothing)."""

T = TypeVar("T")


class BuiltinActor:
    """An actor whose methods are a fixed table of handlers (satisfies :class:`Actor`)."""

    __slots__ = ("_methods", "address", "name")

    def __init__(self, name: str, methods: Mapping[str, Handler]) -> None:
        self.name = name
        """The actor's name; its address is ``actor_address(name)``."""
        self.address = actor_address(name)
        """Where it lives."""
        self._methods: Mapping[str, Handler] = MappingProxyType(dict(methods))

    @property
    def methods(self) -> tuple[str, ...]:
        """The names of its methods, sorted."""
        return tuple(sorted(self._methods))

    def call(self, ctx: Context, method: str, args: tuple[Value, ...]) -> bytes:
        """Run ``method``'s handler; :class:`CallFailed` if there is no such method."""
        handler = self._methods.get(method)
        if handler is None:
            raise actor_method_error(method, self.name)
        return handler(ctx, args)


def topic(name: str) -> bytes:
    """The topic naming an event: SHA3-256 of its name (a constant, so not charged)."""
    return sha3_256(name.encode())


def fixed_bytes(value: Value, size: int, position: int) -> bytes:
    """``value`` as a byte string of exactly ``size`` bytes; :class:`CallFailed` otherwise."""
    if not isinstance(value, bytes) or len(value) != size:
        got = f"{len(value)} bytes" if isinstance(value, bytes) else type(value).__name__
        raise CallFailed(f"argument {position} must be {size} bytes, got {got}")
    return value


def no_value(ctx: Context, method: str) -> None:
    """:class:`Revert` if the call moved a value to a method that takes none."""
    if ctx.value:
        raise Revert(f"{method} takes no payment, {ctx.value} Shor sent")


def load(ctx: Context, key: bytes, decode: Callable[[bytes], T]) -> T | None:
    """Read and decode the record under ``key`` of this actor's storage (None if absent). Only
    the actor writes its storage, so a record that does not decode is a broken state:
    :class:`CallFailed`."""
    raw = ctx.storage_get(key)
    if raw is None:
        return None
    try:
        return decode(raw)
    except DecodeError as exc:
        raise CallFailed(f"the record under {key.hex()} does not decode: {exc}") from None


def store(ctx: Context, key: bytes, encoded: bytes) -> None:
    """Write an encoded record under ``key`` of this actor's storage."""
    ctx.storage_set(key, encoded)


def erase(ctx: Context, key: bytes) -> None:
    """Delete the record under ``key`` of this actor's storage."""
    ctx.storage_delete(key)
