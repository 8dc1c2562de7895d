"""The user RPC methods of the execution platform: read-only calls and gas estimates, contract code
and storage, and event logs (docs/spec/execution.md, "User JSON-RPC").

:class:`PlatformRpc` serves them for an :class:`~qoin.execution.client.ExecutionClient`, whose
state, lock and block-tag resolution it shares; the client adds :meth:`PlatformRpc.methods` to its
user server.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from qoin.chain.transaction import DEPLOY_ADDRESS, MAX_CALL_DATA, MAX_GAS_LIMIT
from qoin.crypto.address import Address
from qoin.execution.account import MAX_STORAGE_KEY
from qoin.execution.calls import STATUS_NAMES, Simulation, simulate, simulation_json
from qoin.execution.events import InvalidFilter, logs_json, parse_filter
from qoin.execution.rpc_params import ADDRESS, BLOCK_TAG, ExecutionError, hex_bytes
from qoin.execution.state import ExecutionState
from qoin.execution.vm import MAX_BALANCE, BlockEnv
from qoin.rpc.server import SERVER_ERROR, Method, Param, RpcError, invalid_params
from qoin.state.smt import SmtError


def _storage_key(text: Any) -> bytes:
    if not isinstance(text, str):
        raise ValueError("storage keys are hex strings")
    key = hex_bytes(text)
    if len(key) > MAX_STORAGE_KEY:
        raise ValueError(f"storage keys are at most {MAX_STORAGE_KEY} bytes")
    return key


STORAGE_KEY = Param(
    "key",
    {"type": "string", "maxLength": 2 * MAX_STORAGE_KEY + 2},
    parse=_storage_key,
    description="storage key (hex)",
)
STORAGE_KEYS = Param(
    "storageKeys",
    {"type": "array", "maxItems": 256, "items": {"type": "string"}},
    parse=lambda v: [_storage_key(k) for k in v],
    required=False,
    description="storage keys to prove (hex)",
)


@dataclass(frozen=True)
class CallRequest:
    """A call to run without a transaction (``qoin_call``, ``qoin_estimateGas``)."""

    sender: Address
    """Who calls (``from``; default the zero address)."""
    to: Address
    """The callee (``to``; absent: a deployment of the module in ``data``)."""
    value: int
    """Shor moved with the call."""
    data: bytes
    """Call data (method and arguments) or deployment data."""
    gas: int
    """Gas given, intrinsic included (0: the block gas limit)."""


def _call_request(obj: Any) -> CallRequest:
    if not isinstance(obj, dict):
        raise ValueError("the call is an object {from?, to?, value?, data, gas?}")
    unknown = set(obj) - {"from", "to", "value", "data", "gas"}
    if unknown:
        raise ValueError(f"unknown call fields {sorted(unknown)}")
    data = obj.get("data")
    if not isinstance(data, str) or len(data) > 2 * MAX_CALL_DATA + 2:
        raise ValueError(f"'data' must be hex of at most {MAX_CALL_DATA} bytes")
    value, gas = obj.get("value", 0), obj.get("gas", 0)
    for name, number, top in (("value", value, MAX_BALANCE), ("gas", gas, MAX_GAS_LIMIT)):
        if not isinstance(number, int) or isinstance(number, bool) or not 0 <= number <= top:
            raise ValueError(f"'{name}' must be an integer in [0, {top}]")
    sender, to = obj.get("from"), obj.get("to")
    return CallRequest(
        Address.from_text(sender) if isinstance(sender, str) else DEPLOY_ADDRESS,
        Address.from_text(to) if isinstance(to, str) else DEPLOY_ADDRESS,
        value,
        hex_bytes(data),
        gas,
    )


CALL_REQUEST = Param(
    "request",
    {"type": "object"},
    parse=_call_request,
    description="{from?, to? (absent: deploy), value?, data (hex), gas?}",
)


class PlatformRpc:
    """``qoin_call``, ``qoin_estimateGas``, ``qoin_getCode``, ``qoin_getStorageAt`` and
    ``qoin_getLogs`` over an execution client's state."""

    def __init__(
        self,
        state: ExecutionState,
        lock: threading.RLock,
        block_hash: Callable[[str | int | None], bytes],
    ) -> None:
        self.state = state
        self.lock = lock
        self._block_hash = block_hash

    def _simulate(self, request: CallRequest, block: str | int | None) -> Simulation:
        with self.lock:
            block_hash = self._block_hash(block)
            info = self.state.block_info(block_hash)
            stored = self.state.block(block_hash)
            if info is None or stored is None:
                raise ExecutionError(f"unknown block {block_hash.hex()}")
            root = info[2]
            tree = self.state.tree
            env = BlockEnv(
                self.state.genesis.chain_id,
                info[0] + 1,
                stored.header.timestamp_ms,
                block_hash,
            )
            nonce = self.state.account(request.sender, block_hash).nonce
            gas = request.gas or self.state.genesis.block_gas_limit
            try:
                return simulate(
                    lambda key: tree.get_at(root, key),
                    env,
                    sender=request.sender,
                    to=request.to,
                    value=request.value,
                    data=request.data,
                    gas=gas,
                    nonce=nonce,
                )
            except SmtError as exc:
                raise ExecutionError(f"state of that block is no longer retained: {exc}") from None

    def call(self, request: CallRequest, block: str | int | None = None) -> dict[str, Any]:
        """Run a call (or a deployment: no ``to``) on a block's state, keeping nothing."""
        return simulation_json(self._simulate(request, block))

    def estimate_gas(self, request: CallRequest, block: str | int | None = None) -> dict[str, Any]:
        """The gas a call transaction needs to succeed; a -32000 error with the call's reason if
        it would not succeed with the block gas limit."""
        simulation = self._simulate(request, block)
        if not simulation.result.succeeded:
            raise RpcError(
                SERVER_ERROR,
                f"the call would not succeed ({STATUS_NAMES[simulation.result.status]}): "
                f"{simulation.result.reason}",
                simulation_json(simulation),
            )
        return {"gas": simulation.gas_used, "blockGasLimit": self.state.genesis.block_gas_limit}

    def get_code(self, address: Address, block: str | int | None = None) -> str | None:
        """The module of a contract (hex), or None."""
        with self.lock:
            code = self.state.code(address, self._block_hash(block))
        return None if code is None else code.hex()

    def get_storage(self, address: Address, key: bytes, block: str | int | None = None) -> str:
        """A storage value of a contract or actor (hex; empty if unset)."""
        with self.lock:
            return self.state.storage(address, key, self._block_hash(block)).hex()

    def get_logs(self, filter: Any) -> list[dict[str, Any]]:
        """Logs of canonical blocks matching a filter (bounded: the error says how to narrow)."""
        with self.lock:
            try:
                parsed = parse_filter(filter, self.state.head_height())
            except InvalidFilter as exc:
                raise invalid_params(str(exc)) from None
            return logs_json(self.state.events.query(parsed))

    def methods(self) -> list[Method]:
        """The methods, for the user server."""
        return [
            Method(
                "qoin_getLogs",
                self.get_logs,
                (Param("filter", {"type": "object"}),),
                {"type": "array"},
                "Logs matching a filter",
            ),
            Method(
                "qoin_call",
                self.call,
                (CALL_REQUEST, BLOCK_TAG),
                {"type": "object"},
                "Run a call without a transaction",
            ),
            Method(
                "qoin_estimateGas",
                self.estimate_gas,
                (CALL_REQUEST, BLOCK_TAG),
                {"type": "object"},
                "Gas a call transaction needs",
            ),
            Method(
                "qoin_getCode",
                self.get_code,
                (ADDRESS, BLOCK_TAG),
                {"type": ["string", "null"]},
                "A contract's module (hex)",
            ),
            Method(
                "qoin_getStorageAt",
                self.get_storage,
                (ADDRESS, STORAGE_KEY, BLOCK_TAG),
                {"type": "string"},
                "A storage value (hex; empty if unset)",
            ),
        ]
