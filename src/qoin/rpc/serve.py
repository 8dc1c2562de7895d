"""Running an ASGI app with uvicorn on a background thread (for nodes embedding servers, and tests).

Every server is bounded in what one client can hold (:class:`HttpLimits`): at most
``max_connections`` open connections (one more is answered ``503`` and closed at once); a request's
head (request line and headers, at most 16 KiB: h11's bound) must arrive within ``header_timeout``
seconds of the connection opening, or of the first byte of a later request on it; its body may not
go ``idle_timeout`` seconds without a byte, and must average ``body_rate`` bytes per second after
its first ``idle_timeout`` seconds (a body trickled a byte at a time would otherwise hold its share
of the body budget for ever); an answer the client does not read may not stay stuck in the send
buffer ``idle_timeout`` seconds; between requests a connection stays open ``keep_alive`` seconds. A
connection over a bound is closed; the application sees a disconnect. (uvicorn alone times out
neither heads, bodies nor answers, and its ``limit_concurrency`` answers 503 only once a head has
arrived: a client sending a header line every few seconds, or never reading what it asked for,
would hold its connection for ever.) How much memory the bodies in flight may take is the
application's bound (see :mod:`qoin.rpc.server`).

WebSocket upgrades are refused unless a server is given ``websocket_max_frame``: then an upgrade
becomes a WebSocket connection (counted in ``max_connections`` like any other) whose incoming
messages are at most that many bytes, uncompressed, and whose outgoing buffer may not stay full
(the client not reading) ``idle_timeout`` seconds: such a connection is aborted. What an application
queues for it is the application's bound (see :mod:`qoin.rpc.subscriptions`).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from qoin.errors import QoinError

_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 21\r\nconnection: close\r\n\r\ntoo many connections\n"
)


class ServeError(QoinError):
    """A server could not be started."""


@dataclass(frozen=True)
class HttpLimits:
    """What one server lets its clients hold (see the module docstring)."""

    max_connections: int = 128
    """Open connections at most."""
    header_timeout: float = 10.0
    """Seconds a request's head may take to arrive."""
    idle_timeout: float = 30.0
    """Seconds a request's body may go without a byte arriving, or an answer without the client
    reading from it."""
    body_rate: int = 64 * 1024
    """Bytes per second a body must average once its first ``idle_timeout`` seconds are past."""
    keep_alive: int = 5
    """Seconds a connection may stay idle between requests (uvicorn's keep-alive timeout)."""

    def __post_init__(self) -> None:
        if min(self.max_connections, self.body_rate) < 1:
            raise ValueError("HTTP limits must be positive")
        if min(self.header_timeout, self.idle_timeout) <= 0:
            raise ValueError("HTTP limits must be positive")
        if self.keep_alive < 1:
            raise ValueError("the keep-alive timeout is at least 1 s")


class _BoundedH11(H11Protocol):
    """uvicorn's HTTP/1.1 connection with the bounds of :class:`HttpLimits` (set per server by
    :func:`_bounded_protocol`).

    One timer per connection: while h11 waits for a request head (``IDLE``) it fires at the head's
    deadline; while it reads a body (``SEND_BODY``), ``idle_timeout`` after the last byte or when
    the body falls behind ``body_rate``, whichever comes first; otherwise (the application is
    answering) there is none of ours. A second timer runs while the transport's send buffer is
    full (the client is not reading): if it is not drained within ``idle_timeout``, the
    connection is aborted (closing would wait for the buffer to drain).
    """

    limits: ClassVar[HttpLimits] = HttpLimits()

    _timer: asyncio.TimerHandle | None = None
    _write_timer: asyncio.TimerHandle | None = None
    _head_deadline: float | None = None
    _last_data = 0.0
    _body_started: float | None = None
    """When the current body started (shifted forward while the application is behind)."""
    _body_bytes = 0
    """Bytes of the current body received so far."""

    _upgraded = False
    """Whether the connection became a WebSocket (its transport is another protocol's now)."""

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        super().handle_websocket_upgrade(event)
        self._upgraded = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._cancel_write_timer()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            transport.write(_BUSY)
            transport.close()
            return
        self._last_data = self.loop.time()
        self._watch()

    def data_received(self, data: bytes) -> None:
        self._last_data = self.loop.time()
        self._deadline()  # a new request's head is timed from its first byte
        if self._body_started is not None:
            self._body_bytes += len(data)
        super().data_received(data)
        self._watch()

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_timer is None:
            self._write_timer = self.loop.call_later(self.limits.idle_timeout, self._write_stalled)

    def resume_writing(self) -> None:
        self._cancel_write_timer()
        super().resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._cancel_write_timer()
        super().connection_lost(exc)

    def _cancel_write_timer(self) -> None:
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _write_stalled(self) -> None:
        self._write_timer = None
        self.transport.abort()

    def _deadline(self) -> float | None:
        """When the connection is closed unless something happens (None: no bound of ours)."""
        state = self.conn.their_state
        if state is h11.IDLE:
            self._body_started = None
            if self._head_deadline is None:
                self._head_deadline = self.loop.time() + self.limits.header_timeout
            return self._head_deadline
        self._head_deadline = None
        if state is not h11.SEND_BODY:
            self._body_started = None
            return None
        now = self.loop.time()
        if self._body_started is None:
            self._body_started, self._body_bytes = now, 0
        if self.flow.read_paused:  # the application is behind, not the client: on schedule now
            self._last_data = now
            self._body_started = now - self._body_bytes / self.limits.body_rate
        on_schedule = self._body_started + self._body_bytes / self.limits.body_rate
        return min(self._last_data, on_schedule) + self.limits.idle_timeout

    def _watch(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._upgraded:  # the WebSocket protocol bounds the connection now
            return
        deadline = self._deadline()
        if deadline is not None and not self.transport.is_closing():
            self._timer = self.loop.call_at(deadline, self._expire)

    def _expire(self) -> None:
        self._timer = None
        deadline = self._deadline()
        if deadline is not None and self.loop.time() >= deadline:
            self.transport.close()
        else:
            self._watch()


def _bounded_protocol(limits: HttpLimits) -> type[_BoundedH11]:
    """The connection class of one server."""
    return type("BoundedH11", (_BoundedH11,), {"limits": limits})


def _bounded_websocket(limits: HttpLimits) -> type[asyncio.Protocol]:
    """The WebSocket connection class of one server: uvicorn's (websockets, sans-I/O), aborted
    when its outgoing buffer stays full ``limits.idle_timeout`` seconds (uvicorn's own close then
    waits for the buffer to drain, for ever if the client never reads)."""
    from uvicorn.protocols.websockets.websockets_sansio_impl import (  # noqa: PLC0415
        WebSocketsSansIOProtocol,
    )

    class BoundedWebSocket(WebSocketsSansIOProtocol):
        _write_timer: asyncio.TimerHandle | None = None

        def pause_writing(self) -> None:
            super().pause_writing()
            if self._write_timer is None:
                self._write_timer = self.loop.call_later(limits.idle_timeout, self._stalled)

        def resume_writing(self) -> None:
            self._cancel_write_timer()
            super().resume_writing()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_write_timer()
            super().connection_lost(exc)

        def _cancel_write_timer(self) -> None:
            if self._write_timer is not None:
                self._write_timer.cancel()
                self._write_timer = None

        def _stalled(self) -> None:
            self._write_timer = None
            self.transport.abort()

    return BoundedWebSocket


class BackgroundServer:
    """uvicorn serving ``app`` on ``host:port`` in a daemon thread; ``port=0`` picks a free one.
    WebSocket connections are served only with ``websocket_max_frame`` (the largest message a
    client may send, in bytes; see the module docstring)."""

    def __init__(
        self,
        app: Any,
        host: str = "127.0.0.1",
        port: int = 0,
        limits: HttpLimits = HttpLimits(),
        websocket_max_frame: int | None = None,
    ) -> None:
        # Protocol IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say TCP, and
        # without it every answer uvicorn writes in two parts waits ~40 ms for a delayed ACK.
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self._socket.bind((host, port))
        except OSError as exc:
            self._socket.close()
            raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
        self.host, self.port = self._socket.getsockname()[:2]
        self.limits = limits
        # Without a bound for WebSockets, an Upgrade is not honoured (no route takes it).
        websocket: dict[str, Any] = {"ws": "none"}
        if websocket_max_frame is not None:
            websocket = {
                "ws": _bounded_websocket(limits),
                "ws_max_size": websocket_max_frame,
                "ws_per_message_deflate": False,  # a compressor per connection, and its work
            }
        config = uvicorn.Config(
            app,
            log_level="warning",
            lifespan="off",
            access_log=False,
            http=_bounded_protocol(limits),
            **websocket,
            timeout_keep_alive=limits.keep_alive,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )

    @property
    def url(self) -> str:
        """Base URL of the server."""
        return f"http://{self.host}:{self.port}/"

    @property
    def connections(self) -> int:
        """How many connections are open now."""
        return len(self._server.server_state.connections)

    def start(self, timeout: float = 10.0) -> BackgroundServer:
        """Start serving; wait until the server accepts connections."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise ServeError(f"server on {self.url} did not start")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving and wait for the thread."""
        self._server.should_exit = True
        self._thread.join(timeout)
        self._socket.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
