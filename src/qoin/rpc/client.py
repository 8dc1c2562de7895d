"""The one JSON-RPC 2.0 client: the CLI, the devnet, the benchmarks, the tests and the consensus
client's engine calls all call servers through :class:`RpcClient`.

Every call is bounded: the answer in bytes (read as a stream, so a huge or trickling answer is cut
off) and the whole call in time, not just each read: a call ends within about twice its bound (an
answer still arriving once the bound has passed is cut off at its next chunk, which the per-read
timeout, the bound itself, waits for). An optional token source adds
``Authorization: Bearer <token>`` to every request (a fresh engine JWT per call). Whatever goes
wrong (unreachable, timed out, not JSON, an error object, no result) is one :class:`RpcCallError`
whose message names the method and the URL; an error object's code and data are kept.

:func:`subscribe` opens a WebSocket subscription (``qoin_subscribe``, see
:mod:`qoin.rpc.subscriptions`) and reads its notifications, each message bounded in size.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:  # websockets is imported by the subscription functions only (80 ms)
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import ClientConnection

from qoin.errors import QoinError

DEFAULT_TIMEOUT_S = 30.0
"""How long one call may take, answer included."""
DEFAULT_MAX_ANSWER = 16 * 1024 * 1024
"""The largest answer read by default."""


class RpcCallError(QoinError):
    """A JSON-RPC call failed; ``code`` and ``data`` are the server's when it answered an error
    object, ``code`` is None when there was no JSON-RPC answer at all (unreachable, timed out,
    not JSON, malformed)."""

    def __init__(self, message: str, code: int | None = None, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.data = data


class RpcTimeout(RpcCallError):
    """No complete answer within the call's time bound."""


class RpcClient:
    """Calls one JSON-RPC server over HTTP. Thread-safe (httpx's client is); close when done, or
    use as a context manager."""

    def __init__(
        self,
        url: str,
        timeout: float = DEFAULT_TIMEOUT_S,
        max_answer: int = DEFAULT_MAX_ANSWER,
        token: Callable[[], str] | None = None,
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.max_answer = max_answer
        self._token = token
        self._ids = itertools.count(1)
        self._http = httpx.Client(timeout=timeout)

    def __repr__(self) -> str:
        return f"RpcClient({self.url})"

    def __enter__(self) -> RpcClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def call(self, method: str, *params: Any, timeout: float | None = None) -> Any:
        """Call ``method`` with positional ``params``; its ``result``, or :class:`RpcCallError`."""
        return self.request(
            {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": list(params)},
            method,
            timeout,
        )

    def request(self, body: Any, label: str = "request", timeout: float | None = None) -> Any:
        """Send any JSON ``body`` (for tests of odd requests) and return the checked result."""
        answer = self.post(body, label, timeout)
        if not isinstance(answer, dict):
            raise RpcCallError(f"{label} at {self.url}: the answer is not a JSON-RPC object")
        if "error" in answer:
            error = answer["error"]
            if isinstance(error, dict):
                code = error.get("code")
                raise RpcCallError(
                    f"{label} refused by {self.url}: {error.get('message')}",
                    code if isinstance(code, int) else None,
                    error.get("data"),
                )
            raise RpcCallError(f"{label} refused by {self.url}: {error}")
        if "result" not in answer:
            raise RpcCallError(f"{label} at {self.url}: the answer has no result")
        return answer["result"]

    def post(self, body: Any, label: str = "request", timeout: float | None = None) -> Any:
        """Send ``body`` and return the decoded JSON answer, whatever its shape."""
        limit = self.timeout if timeout is None else timeout
        headers = {"Authorization": f"Bearer {self._token()}"} if self._token else {}
        deadline = time.monotonic() + limit
        raw = bytearray()
        try:
            with self._http.stream(
                "POST", self.url, json=body, headers=headers, timeout=limit
            ) as response:
                for chunk in response.iter_bytes():  # a trickling answer must not outlast us
                    raw += chunk
                    if len(raw) > self.max_answer:
                        raise RpcCallError(
                            f"{label} at {self.url}: answer over {self.max_answer} bytes"
                        )
                    if time.monotonic() > deadline:
                        raise httpx.ReadTimeout("answer too slow")
                status = response.status_code
        except httpx.TimeoutException:
            raise RpcTimeout(f"{label}: no answer from {self.url} in {limit:g} s") from None
        except httpx.HTTPError as exc:
            raise RpcCallError(f"{label}: {self.url} unreachable: {exc}") from None
        try:
            return json.loads(raw)
        except (ValueError, RecursionError):
            raise RpcCallError(f"{label} at {self.url}: HTTP {status}, not JSON") from None


def call(url: str, method: str, *params: Any, timeout: float = DEFAULT_TIMEOUT_S) -> Any:
    """One call on a fresh connection (for one-off CLI and test calls)."""
    with RpcClient(url, timeout=timeout) as client:
        return client.call(method, *params)


# -- subscriptions over WebSocket ------------------------------------------------------------------

DEFAULT_MAX_MESSAGE = 4 * 1024 * 1024
"""The largest WebSocket message a subscription reads by default (a bigger one ends it)."""
SUBSCRIPTION_NOTIFICATION = "qoin_subscription"
"""The method of the notifications a subscription receives."""


def websocket_url(url: str) -> str:
    """The WebSocket URL of a JSON-RPC server: ``http://`` becomes ``ws://``, ``https://``
    ``wss://``; a ``ws://`` or ``wss://`` URL is kept. :class:`RpcCallError` for another scheme."""
    for http, ws in (("http://", "ws://"), ("https://", "wss://")):
        if url.startswith(http):
            return ws + url.removeprefix(http)
    if url.startswith(("ws://", "wss://")):
        return url
    raise RpcCallError(f"{url!r} is not an http://, https://, ws:// or wss:// URL")


class Subscription:
    """One subscription on its own WebSocket connection (``qoin_subscribe``): iterate it for the
    ``result`` of each notification, in order, or call :meth:`next` with a time bound. Whatever
    goes wrong (the connection closed or cut, a message over the size bound or not JSON) is one
    :class:`RpcCallError` naming the URL. Close when done, or use as a context manager."""

    def __init__(self, connection: ClientConnection, subscription_id: str, url: str) -> None:
        self.id = subscription_id
        """The server's id of the subscription."""
        self.url = url
        """The WebSocket URL."""
        self._connection = connection

    def __repr__(self) -> str:
        return f"Subscription({self.id} at {self.url})"

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[Any]:
        while True:
            yield self.next()

    def close(self) -> None:
        """Close the connection (the server ends its subscriptions)."""
        self._connection.close()

    def next(self, timeout: float | None = None) -> Any:
        """The next notification's ``result``, waiting at most ``timeout`` seconds (None: for
        ever); :class:`RpcTimeout` if none came in time. Other messages are skipped."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            message = _receive(self._connection, self.url, left)
            if (
                isinstance(message, dict)
                and message.get("method") == SUBSCRIPTION_NOTIFICATION
                and isinstance(message.get("params"), dict)
                and message["params"].get("subscription") == self.id
                and "result" in message["params"]
            ):
                return message["params"]["result"]


def _receive(connection: ClientConnection, url: str, timeout: float | None) -> Any:
    """One JSON message from ``connection``."""
    from websockets.exceptions import ConnectionClosed  # noqa: PLC0415 (slow import)

    try:
        text = connection.recv(timeout=timeout)
    except TimeoutError:
        raise RpcTimeout(f"no message from {url} in {timeout:g} s") from None
    except ConnectionClosed as exc:
        raise RpcCallError(f"{url} closed the subscription: {_closed(exc)}") from None
    except OSError as exc:
        raise RpcCallError(f"{url} unreachable: {exc}") from None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise RpcCallError(f"{url} sent a message that is not JSON") from None


def _closed(exc: ConnectionClosed) -> str:
    close = exc.rcvd or exc.sent
    if close is None:
        return "connection lost"
    reason = f" ({close.reason})" if close.reason else ""
    return f"code {close.code}{reason}"


def subscribe(
    url: str,
    kind: str,
    *params: Any,
    timeout: float = DEFAULT_TIMEOUT_S,
    max_message: int = DEFAULT_MAX_MESSAGE,
) -> Subscription:
    """Open a WebSocket to the server at ``url`` (``http://`` or ``ws://``) and subscribe with
    ``qoin_subscribe([kind, *params])`` (e.g. ``subscribe(url, "logs", {"address": a})``).
    Opening and the answer take at most ``timeout`` seconds; messages are read up to
    ``max_message`` bytes. :class:`RpcCallError` (``code`` None: no JSON-RPC answer at all) if the
    server cannot be reached or refuses."""
    from websockets.exceptions import (  # noqa: PLC0415 (slow import)
        ConnectionClosed,
        InvalidHandshake,
        InvalidURI,
    )
    from websockets.sync.client import connect  # noqa: PLC0415

    target = websocket_url(url)
    try:
        connection = connect(
            target,
            open_timeout=timeout,
            close_timeout=min(timeout, 2.0),
            max_size=max_message,
            compression=None,
            proxy=None,
            legacy=True,
        )
    except InvalidURI as exc:
        raise RpcCallError(f"{target!r} is not a WebSocket URL: {exc}") from None
    except InvalidHandshake as exc:
        raise RpcCallError(f"{target} refused the WebSocket: {exc}") from None
    except TimeoutError:
        raise RpcTimeout(f"no WebSocket from {target} in {timeout:g} s") from None
    except OSError as exc:
        raise RpcCallError(f"{target} unreachable: {exc}") from None
    try:
        request = {"jsonrpc": "2.0", "id": 1, "method": "qoin_subscribe", "params": [kind, *params]}
        try:
            connection.send(json.dumps(request))
        except ConnectionClosed as exc:
            raise RpcCallError(f"{target} closed the connection: {_closed(exc)}") from None
        deadline = time.monotonic() + timeout
        while True:  # the answer comes before the subscription's first notification
            answer = _receive(connection, target, max(0.0, deadline - time.monotonic()))
            if isinstance(answer, dict) and answer.get("id") == 1:
                break
        if "error" in answer:
            error = answer["error"]
            code = error.get("code") if isinstance(error, dict) else None
            message = error.get("message") if isinstance(error, dict) else error
            raise RpcCallError(
                f"qoin_subscribe refused by {target}: {message}",
                code if isinstance(code, int) else None,
                error.get("data") if isinstance(error, dict) else None,
            )
        subscription_id = answer.get("result")
        if not isinstance(subscription_id, str):
            raise RpcCallError(f"qoin_subscribe at {target}: the answer has no subscription id")
    except BaseException:
        connection.close()
        raise
    return Subscription(connection, subscription_id, target)
