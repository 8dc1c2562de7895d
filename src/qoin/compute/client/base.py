"""What every part of the compute client shares (docs/spec/compute.md §6): ``run``'s exit
statuses, bounds and waits, the errors, the JSON requests to a provider, the head, the watcher
that is told what happens, and the parsers of a deal id and an address.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Final, Protocol

import httpx

from qoin.crypto.address import Address, AddressError
from qoin.encoding.codec import DecodeError
from qoin.errors import QoinError
from qoin.execution.abi import decode_value
from qoin.rpc.client import RpcCallError, RpcClient

EXIT_NO_MATCH: Final = 120
"""``run``: no deal formed (no provider matched, or none accepted); the bid, if placed, was
cancelled."""
EXIT_UNDELIVERED: Final = 121
"""``run``: the deal settled without a result (no provider revealed one in time, or the mediation
timed out); the client was refunded."""
EXIT_NO_OUTPUTS: Final = 122
"""``run``: a result was revealed but its outputs could not be fetched or did not verify."""
EXIT_NON_DETERMINISTIC: Final = 123
"""``run``: the mediator judged the job non-deterministic (its results differ from run to run)."""
EXIT_TIMEOUT: Final = 124
"""The job ran past its timeout (as coreutils' ``timeout``)."""
EXIT_LIMIT: Final = 125
"""The job broke a limit: memory, processes, output size or count, log size, wasm fuel."""
EXIT_NOT_RUN: Final = 126
"""The executor could not start the job, or the provider cancelled it."""
REASON_EXIT: Final = {
    "timeout": EXIT_TIMEOUT,
    "memory": EXIT_LIMIT,
    "processes": EXIT_LIMIT,
    "output-limit": EXIT_LIMIT,
    "log-limit": EXIT_LIMIT,
    "fuel": EXIT_LIMIT,
    "cancelled": EXIT_NOT_RUN,
    "failed": EXIT_NOT_RUN,
}
"""The exit status of a job that did not exit by itself, by its stop reason."""


DEFAULT_DEADLINE_BLOCKS: Final = 200
"""Blocks a bid stays open by default (at most the network's ``max_bid_blocks``): the deal forms
within seconds, or the bid is cancelled."""
HTTP_CONNECT_S: Final = 10.0
HTTP_ANSWER_S: Final = 60.0
"""Seconds a provider may take to answer an offer (it reads the chain, opens the keys)."""
OFFER_ATTEMPTS: Final = 8
"""Tries of one offer while the provider's node has not seen the bid yet (404, 425, 503)."""
OFFER_BACKOFF_S: Final = 0.25
RETRY_STATUSES: Final = frozenset({404, 425, 429, 502, 503, 504})
MAX_JSON_ANSWER: Final = 64 * 1024
"""The largest JSON answer read from a provider (an offer, a job's state)."""
MAX_RESULT_ANSWER: Final = 8 << 20
"""The largest ``/result`` answer (it carries the manifest)."""
MAX_LOG_FRAME: Final = 1 << 20
"""The largest WebSocket frame of a log stream."""
MAX_LOG_QUERIES: Final = 1_000
"""Log queries of :data:`MAX_LOG_RANGE` blocks one look-up makes at most."""
POLL_S: Final = 0.5
"""How often the provider's job state is asked while the job runs."""
EVENT_WAIT_S: Final = 0.25
"""How long one read of the deal's subscription waits."""
HEAD_CHECK_S: Final = 2.0
"""How often the node's head is read while following a deal."""
STALL_S: Final = 300.0
"""Seconds without a new block after which following a deal gives up (the node is stuck)."""
RECONNECT_S: Final = (0.2, 0.5, 1.0, 2.0, 5.0)
"""Waits before successive reconnections of a log stream or the subscription (the last repeats)."""
OUTPUTS_WAIT_S: Final = 180.0
"""Seconds ``run`` waits for the outputs of a revealed result, at most."""
GET_WAIT_S: Final = 30.0
"""Seconds ``get`` waits for them, at most."""
CID_POLL_S: Final = 1.0
"""Between two questions for the CID of the outputs' stored copy while the deal is open."""
MAX_OUTPUT_ARCHIVE: Final = 1 << 31
"""The largest outputs archive fetched (2 GiB)."""

RECEIPT_TIMEOUT_S: Final = 120.0
OUTPUTS_DIR: Final = "outputs"
"""Where the job's output files are saved, under ``--out``."""
STDOUT_FILE: Final = "stdout"
"""Where the job's stdout (part of its result) is saved, under ``--out``."""
PHASES: Final = ("match", "stage", "run", "commit", "verify", "settle", "outputs")
"""The phases ``run`` shows, in order (``outputs``: what the fetch of the outputs waits for, once
the result is final, beside ``verify`` and ``settle``)."""

_ENDPOINT = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,253})|\[[0-9A-Fa-f:.]{2,45}\]):\d{1,5}")


class ComputeClientError(QoinError):
    """A compute client operation that cannot go on; the message says why and what to do."""


class BadOptions(ComputeClientError):
    """Options no job can have: the command's input must change (exit 2)."""


class NotFound(ComputeClientError):
    """No deal (open or settled) or bid has that id."""


def endpoint_url(endpoint: str) -> str:
    """The compute API base URL of a provider's ``host:port``."""
    if not _ENDPOINT.fullmatch(endpoint):
        raise ComputeClientError(f"provider endpoint {endpoint[:80]!r} is not host:port")
    return f"http://{endpoint}/compute/v1"


def _bounded_json(response: httpx.Response, what: str, bound: int = MAX_JSON_ANSWER) -> Any:
    raw = bytearray()
    for piece in response.iter_bytes():
        raw += piece
        if len(raw) > bound:
            raise ComputeClientError(f"{what}: answer over {bound} bytes")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise ComputeClientError(f"{what}: HTTP {response.status_code}, not JSON") from None


def _reason(answer: Any, status: int) -> str:
    if isinstance(answer, dict) and isinstance(answer.get("error"), str):
        return f"HTTP {status}: {answer['error'][:300]}"
    return f"HTTP {status}"


def _request(
    http: httpx.Client,
    method: str,
    url: str,
    what: str,
    *,
    body: Any = None,
    headers: Mapping[str, str] | None = None,
    bound: int = MAX_JSON_ANSWER,
) -> tuple[int, Any]:
    """One JSON request; (status, answer). :class:`ComputeClientError` if it gets no answer."""
    try:
        with http.stream(method, url, json=body, headers=dict(headers or {})) as response:
            return response.status_code, _bounded_json(response, what, bound)
    except httpx.HTTPError as exc:
        raise ComputeClientError(f"{what} did not answer: {exc or type(exc).__name__}") from None


def _hex(answer: Mapping[str, Any], key: str, what: str) -> bytes:
    value = answer.get(key)
    try:
        if isinstance(value, str):
            return bytes.fromhex(value)
    except ValueError:
        pass
    raise ComputeClientError(f"{what}: {key} is not hex")


def _int_field(answer: Mapping[str, Any], key: str, what: str) -> int:
    value = answer.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ComputeClientError(f"{what}: {key} is not a number")
    return value


def head(client: RpcClient) -> int:
    """The node's head height."""
    try:
        height = client.call("qoin_blockNumber")
    except RpcCallError as exc:
        raise ComputeClientError(f"cannot ask the node for its head: {exc}") from None
    if not isinstance(height, int) or isinstance(height, bool) or height < 0:
        raise ComputeClientError(f"qoin_blockNumber answered {height!r:.80}")
    return height


class Watcher(Protocol):
    """Where ``run`` reports what happens."""

    def phase(self, phase: str, message: str) -> None:
        """``phase`` (one of :data:`PHASES`) moved on; ``message`` says how."""

    def output(self, stream: str, data: bytes) -> None:
        """A piece of the job's ``stdout`` or ``stderr``, live."""


class NoWatcher:
    """Reports nothing."""

    def phase(self, phase: str, message: str) -> None:
        """Nothing."""

    def output(self, stream: str, data: bytes) -> None:
        """Nothing."""


NO_WATCHER: Final = NoWatcher()


def _fee(receipt: Mapping[str, Any]) -> int:
    fee = receipt.get("fee")
    return fee if isinstance(fee, int) and not isinstance(fee, bool) else 0


def _returned_int(receipt: Mapping[str, Any], method: str) -> int:
    try:
        value = decode_value(bytes.fromhex(str(receipt.get("returnData") or "")))
    except (ValueError, DecodeError):
        value = None
    if not isinstance(value, int) or isinstance(value, bool):
        raise ComputeClientError(f"{method} returned {receipt.get('returnData')!r:.80}, no id")
    return value


def parse_deal(text: str) -> int:
    """A deal id (a positive integer)."""
    try:
        value = int(text.strip())
    except ValueError:
        value = 0
    if not 1 <= value < 2**64:
        raise BadOptions(f"a job is named by its deal id (a positive number), not {text[:40]!r}")
    return value


def parse_address(text: str) -> Address:
    try:
        return Address.from_text(text)
    except AddressError as exc:
        raise BadOptions(str(exc)) from None
