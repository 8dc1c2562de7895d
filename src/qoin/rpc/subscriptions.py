"""Subscriptions over WebSocket: new heads, logs and pending transactions, pushed as they happen.

A client opens a WebSocket on the user JSON-RPC port (``ws://host:port/``) and speaks JSON-RPC 2.0
in text frames, as with Ethereum's ``eth_subscribe``:

* ``qoin_subscribe`` with ``["newHeads"]``, ``["logs"]``, ``["logs", filter]`` (``address`` and
  ``topics`` as in ``qoin_getLogs``, see :mod:`qoin.execution.events`) or
  ``["pendingTransactions"]`` answers a subscription id (32 hex digits, random);
* ``qoin_unsubscribe`` with ``[id]`` answers whether the connection had that subscription;
* each event is a notification ``{"jsonrpc": "2.0", "method": "qoin_subscription", "params":
  {"subscription": id, "result": ...}}``: a head (the object the node publishes), a log (with
  ``removed: true`` when a reorganisation takes its block out of the chain; removed logs come
  before the added ones) or a transaction id. The answer to a subscribe comes before the
  subscription's first notification (not so within a batch, whose answers come together);
* any other method is handed to the :class:`~qoin.rpc.server.RpcServer` the endpoint serves
  with (method not found without one).

The node publishes to a :class:`SubscriptionHub` from any thread (``publish_head``,
``publish_logs``, ``publish_pending``); publishing never blocks on a client and never fails
because of one. Each connection has a queue of
encoded messages that one task per connection drains onto the socket, in order.

Bounds (:class:`HubLimits`, defaults in brackets) keep what clients can make the node hold small:

* incoming messages at most ``max_frame`` bytes [64 KiB] (the server refuses larger frames, see
  :class:`~qoin.rpc.serve.BackgroundServer`'s ``websocket_max_frame``; the endpoint checks again),
  handled one at a time per connection;
* at most ``max_connections`` WebSocket connections [256]: one more is refused before the upgrade
  with HTTP 503 (or closed at once with code 1013 where the server cannot answer so);
* at most ``max_subscriptions`` subscriptions per connection [32]: one more is a JSON-RPC error;
* a connection's queue holds at most ``max_queue_messages`` messages [4096] and
  ``max_queue_bytes`` bytes [4 MiB], each message counted as its length plus
  :data:`MESSAGE_OVERHEAD`; the queues together hold at most ``max_total_bytes`` [64 MiB]. A
  connection whose queue would go over its bound is *dropped*: its queue is emptied, its
  subscriptions end, and it is closed with code 1008 and the reason ``too slow: N notifications
  pending`` (sent once the socket drains; a client that never reads is aborted by the server's
  write timeout). When the total would go over its bound the connection holding most is dropped.
  A reader slower than what it subscribed to therefore loses its connection, never grows the
  node's memory: beyond the queues, a connection holds at most the socket's buffer (64 KiB, the
  transport's high-water mark) and the message being written;
* an answer larger than a queue may hold is replaced by an error telling the caller to use HTTP;
* a publisher encodes at most :data:`DELIVERY_BATCH` bytes of notifications [1 MiB] before
  queueing them, and skips the subscriptions of connections dropped meanwhile (a block full of
  logs costs the queues' bounds, not one copy per subscriber on top).

WebSocket connections count in the server's own connection bound
(:class:`~qoin.rpc.serve.HttpLimits`), which should exceed ``max_connections`` so that HTTP
clients always find room.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from qoin.errors import QoinError
from qoin.execution.events import Log, LogFilter, log_json, parse_live_filter
from qoin.rpc.server import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    MAX_BATCH,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    SERVER_ERROR,
    RpcServer,
)

LOG = logging.getLogger(__name__)

DELIVERY_BATCH = 1024 * 1024
"""Bytes of notifications a publisher encodes before queueing them (its transient memory)."""
MESSAGE_OVERHEAD = 128
"""Bytes a queued message is counted for beyond its text (the string object and its queue slot)."""
SUBSCRIBE, UNSUBSCRIBE, NOTIFICATION = "qoin_subscribe", "qoin_unsubscribe", "qoin_subscription"
"""The subscription methods and the notification's method."""
CLOSE_TOO_SLOW = 1008
"""Close code of a dropped connection (policy violation: it did not keep up)."""
CLOSE_TRY_LATER = 1013
"""Close code of a connection refused because the hub is full."""

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class Kind(Enum):
    """What a subscription follows."""

    NEW_HEADS = "newHeads"
    """Each new canonical head."""
    LOGS = "logs"
    """Logs of blocks joining (and leaving) the canonical chain, through a filter."""
    PENDING = "pendingTransactions"
    """Ids of transactions entering the mempool."""


@dataclass(frozen=True)
class HubLimits:
    """What the WebSocket clients of one hub may hold (see the module docstring)."""

    max_connections: int = 256
    """WebSocket connections at most."""
    max_subscriptions: int = 32
    """Subscriptions per connection."""
    max_frame: int = 64 * 1024
    """Bytes of one incoming message."""
    max_queue_messages: int = 4096
    """Messages one connection's queue may hold."""
    max_queue_bytes: int = 4 * 1024 * 1024
    """Bytes one connection's queue may hold (messages counted with :data:`MESSAGE_OVERHEAD`)."""
    max_total_bytes: int = 64 * 1024 * 1024
    """Bytes all the queues may hold together."""

    def __post_init__(self) -> None:
        if min(self.max_connections, self.max_subscriptions, self.max_queue_messages) < 1:
            raise ValueError("hub limits must be positive")
        if min(self.max_frame, self.max_queue_bytes, self.max_total_bytes) < 1:
            raise ValueError("hub limits must be positive")
        if self.max_queue_bytes > self.max_total_bytes:
            raise ValueError("one queue cannot hold more than all of them")


@dataclass(frozen=True)
class HubStats:
    """What a hub holds now, and its high-water marks."""

    connections: int
    """Open WebSocket connections."""
    subscriptions: int
    """Live subscriptions."""
    queued_messages: int
    """Messages queued, all connections together."""
    queued_bytes: int
    """Bytes queued (as counted against the bounds), all connections together."""
    peak_connection_bytes: int
    """The most bytes one connection's queue ever held."""
    peak_total_bytes: int
    """The most bytes all queues ever held together."""
    dropped: int
    """Connections dropped for not keeping up."""
    refused: int
    """Connections refused because the hub was full."""


@dataclass(eq=False)
class _Subscription:
    id: str
    kind: Kind
    connection: _Connection
    log_filter: LogFilter | None = None


@dataclass(eq=False)
class _Connection:
    """One WebSocket's state; every field but ``wake`` is guarded by the hub's lock."""

    loop: asyncio.AbstractEventLoop
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    """Set (on the loop) when the queue has something or the connection was dropped."""
    queue: deque[str] = field(default_factory=deque)
    queued_bytes: int = 0
    subscriptions: dict[str, _Subscription] = field(default_factory=dict)
    dropped: str | None = None
    """Why the connection was dropped (the close reason), once it was."""
    open: bool = True
    wake_pending: bool = False


def _cost(text: str) -> int:
    return len(text) + MESSAGE_OVERHEAD


def _encode(value: Any) -> str:
    """Compact JSON, ASCII only (so a message's length is its size in bytes)."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def _notification(subscription_id: str, result_json: str) -> str:
    return (
        f'{{"jsonrpc":"2.0","method":"{NOTIFICATION}",'
        f'"params":{{"subscription":"{subscription_id}","result":{result_json}}}}}'
    )


def _error(request_id: Any, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}


class SubscriptionHub:
    """The subscriptions of every WebSocket connection, and their outgoing queues (thread-safe:
    the node publishes from its worker threads, the connections live on the server's loop)."""

    def __init__(self, limits: HubLimits = HubLimits()) -> None:
        self.limits = limits
        self._lock = threading.Lock()
        self._connections: set[_Connection] = set()
        self._by_kind: dict[Kind, dict[str, _Subscription]] = {kind: {} for kind in Kind}
        self._queued_messages = 0
        self._queued_bytes = 0
        self._peak_connection_bytes = 0
        self._peak_total_bytes = 0
        self._dropped = 0
        self._refused = 0

    # -- publishing (any thread) ------------------------------------------------------------------

    def publish_head(self, head_json: dict[str, Any]) -> None:
        """Tell the ``newHeads`` subscribers of a new canonical head."""
        self._publish_one(Kind.NEW_HEADS, head_json)

    def publish_pending(self, tx_id_hex: str) -> None:
        """Tell the ``pendingTransactions`` subscribers of a transaction entering the mempool."""
        self._publish_one(Kind.PENDING, tx_id_hex)

    def publish_logs(self, logs: Sequence[Log]) -> None:
        """Tell the ``logs`` subscribers of the logs their filters match, in the order given (a
        reorganisation: the removed logs, ``removed=True``, then the added ones)."""
        subscriptions = self._subscribers(Kind.LOGS)
        if subscriptions and logs:
            self._deliver_all(self._log_messages(subscriptions, logs))

    def _publish_one(self, kind: Kind, result: Any) -> None:
        subscriptions = self._subscribers(kind)
        if subscriptions:
            text = _encode(result)
            self._deliver_all((s, _notification(s.id, text)) for s in subscriptions)

    def _subscribers(self, kind: Kind) -> list[_Subscription]:
        with self._lock:
            return list(self._by_kind[kind].values())

    @staticmethod
    def _log_messages(
        subscriptions: Sequence[_Subscription], logs: Sequence[Log]
    ) -> Iterator[tuple[_Subscription, str]]:
        """Each log's notifications, log by log (each log encoded once, if anyone wants it)."""
        for log in logs:
            result: str | None = None
            for subscription in subscriptions:
                if subscription.connection.dropped is not None:
                    continue
                log_filter = subscription.log_filter
                if log_filter is None or log_filter.matches(log.event):
                    if result is None:
                        result = _encode(log_json(log))
                    yield subscription, _notification(subscription.id, result)

    def _deliver_all(self, messages: Iterable[tuple[_Subscription, str]]) -> None:
        """Queue ``messages`` a batch at a time: what is encoded but not yet queued stays under
        :data:`DELIVERY_BATCH` bytes, and a connection dropped meanwhile is spared the rest."""
        batch: list[tuple[_Subscription, str]] = []
        size = 0
        for subscription, text in messages:
            batch.append((subscription, text))
            size += len(text)
            if size >= DELIVERY_BATCH:
                self._deliver(batch)
                batch, size = [], 0
        if batch:
            self._deliver(batch)

    def _deliver(self, messages: Sequence[tuple[_Subscription, str]]) -> None:
        woken: list[_Connection] = []
        with self._lock:
            for subscription, text in messages:
                connection = subscription.connection
                # A subscription ended since the snapshot: nothing more for it.
                if connection.subscriptions.get(subscription.id) is subscription:
                    self._push(connection, text, woken)
        self._wake(woken)

    # -- queues (under the lock) -------------------------------------------------------------------

    def _push(self, connection: _Connection, text: str, woken: list[_Connection]) -> bool:
        """Queue ``text`` for ``connection``, or drop it if its queue would overflow; whether it
        was queued."""
        if connection.dropped is not None or not connection.open:
            return False
        cost = _cost(text)
        limits = self.limits
        if (
            len(connection.queue) + 1 > limits.max_queue_messages
            or connection.queued_bytes + cost > limits.max_queue_bytes
        ):
            self._drop(connection, len(connection.queue) + 1, woken)
            return False
        while self._queued_bytes + cost > limits.max_total_bytes:
            largest = max(self._connections, key=lambda c: c.queued_bytes)
            if largest.queued_bytes == 0:
                break  # nothing to free: the total bound exceeds one queue's
            self._drop(largest, len(largest.queue), woken)
            if largest is connection:
                return False
        connection.queue.append(text)
        connection.queued_bytes += cost
        self._queued_messages += 1
        self._queued_bytes += cost
        self._peak_connection_bytes = max(self._peak_connection_bytes, connection.queued_bytes)
        self._peak_total_bytes = max(self._peak_total_bytes, self._queued_bytes)
        if not connection.wake_pending:
            connection.wake_pending = True
            woken.append(connection)
        return True

    def _drop(self, connection: _Connection, pending: int, woken: list[_Connection]) -> None:
        connection.dropped = f"too slow: {pending} notifications pending"
        self._dropped += 1
        self._clear(connection)
        if not connection.wake_pending:
            connection.wake_pending = True
            woken.append(connection)
        LOG.info("WebSocket client dropped: %s", connection.dropped)

    def _clear(self, connection: _Connection) -> None:
        """Forget a connection's queue and subscriptions."""
        self._queued_messages -= len(connection.queue)
        self._queued_bytes -= connection.queued_bytes
        connection.queue.clear()
        connection.queued_bytes = 0
        for subscription_id, subscription in connection.subscriptions.items():
            self._by_kind[subscription.kind].pop(subscription_id, None)
        connection.subscriptions.clear()

    @staticmethod
    def _wake(connections: Sequence[_Connection]) -> None:
        for connection in connections:
            # A closed loop (the server stopped) has nobody left to wake.
            with contextlib.suppress(RuntimeError):
                connection.loop.call_soon_threadsafe(connection.wake.set)

    # -- connections (the server's loop) -----------------------------------------------------------

    def _open(self, loop: asyncio.AbstractEventLoop) -> _Connection | None:
        with self._lock:
            if len(self._connections) >= self.limits.max_connections:
                self._refused += 1
                return None
            connection = _Connection(loop)
            self._connections.add(connection)
            return connection

    def _close(self, connection: _Connection) -> None:
        with self._lock:
            connection.open = False
            self._clear(connection)
            self._connections.discard(connection)

    def _next(self, connection: _Connection) -> str | None:
        """The next message to send, or None (then ``wake`` was cleared: wait on it)."""
        with self._lock:
            if connection.queue:
                text = connection.queue.popleft()
                cost = _cost(text)
                connection.queued_bytes -= cost
                self._queued_messages -= 1
                self._queued_bytes -= cost
                return text
            connection.wake_pending = False
            connection.wake.clear()
            return None

    def _answer(self, connection: _Connection, answer: Any) -> None:
        """Queue the answer to a request (an error in its place if it cannot fit a queue)."""
        request_id = answer.get("id") if isinstance(answer, dict) else None
        try:
            text = _encode(answer)
        except (TypeError, ValueError):  # a result JSON cannot carry (NaN, ...): a bug
            LOG.exception("an answer cannot be encoded")
            text = _encode(_error(request_id, INTERNAL_ERROR, "internal error"))
        if _cost(text) > self.limits.max_queue_bytes:
            text = _encode(
                _error(
                    request_id,
                    SERVER_ERROR,
                    f"answer too large for a WebSocket ({len(text)} bytes, at most "
                    f"{self.limits.max_queue_bytes}); ask over HTTP",
                )
            )
        self._send_all([text], connection)

    def _send_all(self, texts: Sequence[str], connection: _Connection) -> None:
        woken: list[_Connection] = []
        with self._lock:
            for text in texts:
                self._push(connection, text, woken)
        self._wake(woken)

    def _subscribe(
        self,
        connection: _Connection,
        kind: Kind,
        log_filter: LogFilter | None,
        answer_id: Any,
        answer: bool,
    ) -> str:
        """Add a subscription and (``answer``) queue the answer naming it, in one step: no
        notification of it can come before its answer. :class:`TooManySubscriptions` if the
        connection has its fill."""
        subscription = _Subscription(secrets.token_hex(16), kind, connection, log_filter)
        woken: list[_Connection] = []
        with self._lock:
            if len(connection.subscriptions) >= self.limits.max_subscriptions:
                raise TooManySubscriptions(
                    f"too many subscriptions on this connection: at most "
                    f"{self.limits.max_subscriptions}; unsubscribe first or open another connection"
                )
            if connection.dropped is None and connection.open:
                connection.subscriptions[subscription.id] = subscription
                self._by_kind[kind][subscription.id] = subscription
                if answer:
                    text = _encode({"jsonrpc": "2.0", "id": answer_id, "result": subscription.id})
                    self._push(connection, text, woken)
        self._wake(woken)
        return subscription.id

    def _unsubscribe(self, connection: _Connection, subscription_id: str) -> bool:
        with self._lock:
            subscription = connection.subscriptions.pop(subscription_id, None)
            if subscription is None:
                return False
            self._by_kind[subscription.kind].pop(subscription_id, None)
            return True

    # -- inspection --------------------------------------------------------------------------------

    def stats(self) -> HubStats:
        """What the hub holds now."""
        with self._lock:
            return HubStats(
                connections=len(self._connections),
                subscriptions=sum(len(subs) for subs in self._by_kind.values()),
                queued_messages=self._queued_messages,
                queued_bytes=self._queued_bytes,
                peak_connection_bytes=self._peak_connection_bytes,
                peak_total_bytes=self._peak_total_bytes,
                dropped=self._dropped,
                refused=self._refused,
            )


class TooManySubscriptions(QoinError):
    """A connection already has as many subscriptions as it may."""


class _AlreadyQueued:
    """The answer of a subscribe request, queued with the subscription itself."""


_QUEUED = _AlreadyQueued()


class SubscriptionEndpoint:
    """The WebSocket endpoint (a raw ASGI app, for :meth:`RpcServer.add_websocket
    <qoin.rpc.server.RpcServer.add_websocket>`): subscriptions of ``hub``, other methods handed
    to ``rpc``."""

    def __init__(self, hub: SubscriptionHub, rpc: RpcServer | None = None) -> None:
        self.hub = hub
        self.rpc = rpc

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one WebSocket connection."""
        if scope["type"] != "websocket" or (await receive())["type"] != "websocket.connect":
            return
        connection = self.hub._open(asyncio.get_running_loop())
        if connection is None:
            await self._refuse(scope, send)
            return
        try:
            await send({"type": "websocket.accept"})
            sender = asyncio.create_task(self._sender(connection, send))
            try:
                await self._receiver(connection, receive)
            finally:
                sender.cancel()
                await asyncio.gather(sender, return_exceptions=True)
        finally:
            self.hub._close(connection)

    async def _refuse(self, scope: Scope, send: Send) -> None:
        reason = (
            f"too many WebSocket connections (at most {self.hub.limits.max_connections}); "
            "retry later"
        )
        if "websocket.http.response" in scope.get("extensions", {}):
            body = reason.encode()
            headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"retry-after", b"1")]
            await send({"type": "websocket.http.response.start", "status": 503, "headers": headers})
            await send({"type": "websocket.http.response.body", "body": body})
        else:
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.close", "code": CLOSE_TRY_LATER, "reason": reason})

    async def _sender(self, connection: _Connection, send: Send) -> None:
        """Drain the connection's queue onto the socket; close it once it is dropped."""
        try:
            while True:
                text = self.hub._next(connection)
                if text is not None:
                    await send({"type": "websocket.send", "text": text})
                    continue
                if connection.dropped is not None:
                    reason = connection.dropped
                    await send(
                        {"type": "websocket.close", "code": CLOSE_TOO_SLOW, "reason": reason}
                    )
                    return
                await connection.wake.wait()
        except (OSError, RuntimeError):  # the client went away (uvicorn: ClientDisconnected)
            return

    async def _receiver(self, connection: _Connection, receive: Receive) -> None:
        """Answer requests, one at a time, until the client goes."""
        while True:
            message = await receive()
            if message["type"] != "websocket.receive":
                return  # websocket.disconnect
            if connection.dropped is not None:
                continue  # closing: requests are not answered any more
            text = message.get("text")
            if text is None:
                answer: Any = _error(None, INVALID_REQUEST, "send requests as JSON text frames")
            elif len(text.encode(errors="replace")) > self.hub.limits.max_frame:
                answer = _error(
                    None,
                    INVALID_REQUEST,
                    f"message too large: at most {self.hub.limits.max_frame} bytes",
                )
            else:
                answer = await self._handle(connection, text)
            if answer is not None:
                self.hub._answer(connection, answer)

    async def _handle(self, connection: _Connection, text: str) -> Any:
        """The answer to one message (None: nothing to send, or already queued)."""
        try:
            payload = json.loads(text)
        except (ValueError, RecursionError):
            return _error(None, PARSE_ERROR, "parse error: message is not JSON")
        if not isinstance(payload, list):
            answer = await self._call(connection, payload, batched=False)
            return None if answer is _QUEUED else answer
        if not payload or len(payload) > MAX_BATCH:
            return _error(None, INVALID_REQUEST, f"a batch holds 1 to {MAX_BATCH} requests")
        answers = [await self._call(connection, item, batched=True) for item in payload]
        return [answer for answer in answers if answer is not None] or None

    async def _call(self, connection: _Connection, request: Any, batched: bool) -> Any:
        """The answer to one request: a JSON-RPC response, None for a notification, or
        :data:`_QUEUED` when the hub queued it."""
        if not isinstance(request, dict) or request.get("jsonrpc") != "2.0":
            return _error(None, INVALID_REQUEST, "invalid request: not a JSON-RPC 2.0 object")
        method = request.get("method")
        if method in (SUBSCRIBE, UNSUBSCRIBE):
            answer = self._subscription_call(connection, request, batched)
            return None if "id" not in request and answer is not _QUEUED else answer
        if self.rpc is not None:
            # The same dispatch as over HTTP (the server's own request checks included).
            return await self.rpc._call(request)
        if "id" not in request:
            return None
        return _error(request.get("id"), METHOD_NOT_FOUND, f"method not found: {method}")

    def _subscription_call(
        self, connection: _Connection, request: dict[str, Any], batched: bool
    ) -> Any:
        """The answer to a subscribe or unsubscribe request (:data:`_QUEUED` for a subscribe
        outside a batch: the hub queued its answer with the subscription)."""
        request_id = request.get("id")
        if not isinstance(request_id, str | int | type(None)) or isinstance(request_id, bool):
            return _error(None, INVALID_REQUEST, "invalid request: id must be a string or int")
        params = request.get("params")
        try:
            if not isinstance(params, list):
                raise _Invalid(f"{request['method']} takes an array")
            if request["method"] == UNSUBSCRIBE:
                if len(params) != 1 or not isinstance(params[0], str):
                    raise _Invalid(f"{UNSUBSCRIBE} takes [subscription id]")
                result: Any = self.hub._unsubscribe(connection, params[0])
            else:
                kind, log_filter = _subscription_params(params)
                answer = not batched and "id" in request
                result = self.hub._subscribe(connection, kind, log_filter, request_id, answer)
                if not batched:
                    return _QUEUED
        except _Invalid as exc:
            return _error(request_id, INVALID_PARAMS, f"invalid params: {exc}")
        except TooManySubscriptions as exc:
            return _error(request_id, SERVER_ERROR, str(exc))
        return {"jsonrpc": "2.0", "id": request_id, "result": result}


class _Invalid(Exception):
    """Invalid subscription parameters (the message says why)."""


def _subscription_params(params: list[Any]) -> tuple[Kind, LogFilter | None]:
    kinds = ", ".join(kind.value for kind in Kind)
    if not params or not isinstance(params[0], str):
        raise _Invalid(f'{SUBSCRIBE} takes [kind] or ["logs", filter]; kinds: {kinds}')
    try:
        kind = Kind(params[0])
    except ValueError:
        raise _Invalid(f"unknown subscription kind {params[0][:40]!r}; kinds: {kinds}") from None
    if kind is Kind.LOGS:
        if len(params) > 2:
            raise _Invalid('logs takes ["logs"] or ["logs", filter]')
        try:
            return kind, parse_live_filter(params[1] if len(params) == 2 else None)
        except (ValueError, QoinError) as exc:
            raise _Invalid(f"filter: {exc}") from None
    if len(params) > 1:
        raise _Invalid(f"{kind.value} takes no filter")
    return kind, None
