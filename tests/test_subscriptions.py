"""WebSocket subscriptions on a real uvicorn server, with real ``websockets`` clients."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from qoin.crypto.address import Address
from qoin.execution.events import Log, log_json
from qoin.execution.receipt import Event
from qoin.rpc.client import call
from qoin.rpc.serve import BackgroundServer, HttpLimits
from qoin.rpc.server import Method, Param, RpcServer
from qoin.rpc.subscriptions import (
    CLOSE_TOO_SLOW,
    HubLimits,
    SubscriptionEndpoint,
    SubscriptionHub,
)
from tests.framework import wait_until

TIMEOUT = 10.0
"""Seconds any one receive may take."""


def h(label: str) -> bytes:
    return hashlib.sha3_256(label.encode()).digest()


A, B = Address(h("a")), Address(h("b"))
TRANSFER, APPROVAL = h("Transfer"), h("Approval")


def log(emitter: Address, topics: tuple[bytes, ...], data: bytes, removed: bool = False) -> Log:
    return Log(Event(emitter, topics, data), 7, h("block"), h("tx"), 0, 0, removed)


@dataclass
class Served:
    hub: SubscriptionHub
    server: BackgroundServer

    @property
    def ws_url(self) -> str:
        return f"ws://{self.server.host}:{self.server.port}/"

    def client(self, **options: Any) -> ClientConnection:
        options.setdefault("close_timeout", 2)
        return connect(self.ws_url, open_timeout=TIMEOUT, legacy=True, **options)


@contextmanager
def serve(
    hub_limits: HubLimits | None = None, limits: HttpLimits | None = None
) -> Iterator[Served]:
    hub_limits = hub_limits or HubLimits()
    hub = SubscriptionHub(hub_limits)
    rpc = RpcServer(
        "test",
        [
            Method("echo", lambda value: value, (Param("value", {"type": "string"}),)),
            Method(
                "big",
                lambda size: "x" * size,
                (Param("size", {"type": "integer", "minimum": 0, "maximum": 1 << 20}),),
            ),
        ],
    )
    rpc.add_websocket("/", SubscriptionEndpoint(hub, rpc))
    with BackgroundServer(
        rpc.app, limits=limits or HttpLimits(), websocket_max_frame=hub_limits.max_frame
    ) as server:
        yield Served(hub, server)


@pytest.fixture
def served() -> Iterator[Served]:
    with serve(HubLimits(max_subscriptions=3)) as running:
        yield running


def ask(ws: ClientConnection, method: str, params: Any, request_id: int = 1) -> dict[str, Any]:
    """Send a request and read the next message (its answer)."""
    ws.send(json.dumps({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}))
    return receive(ws)


def receive(ws: ClientConnection) -> dict[str, Any]:
    answer: dict[str, Any] = json.loads(ws.recv(timeout=TIMEOUT))
    return answer


def subscribe(ws: ClientConnection, *params: Any) -> str:
    answer = ask(ws, "qoin_subscribe", list(params))
    subscription: str = answer["result"]
    return subscription


def notification(ws: ClientConnection) -> tuple[str, Any]:
    message = receive(ws)
    assert message["jsonrpc"] == "2.0" and message["method"] == "qoin_subscription"
    assert "id" not in message
    return message["params"]["subscription"], message["params"]["result"]


def test_each_kind_notifies(served: Served) -> None:
    with served.client() as ws:
        heads = subscribe(ws, "newHeads")
        logs = subscribe(ws, "logs", {"address": str(A), "topics": [[TRANSFER.hex()]]})
        pending = subscribe(ws, "pendingTransactions")
        ids = {heads, logs, pending}
        assert len(ids) == 3 and all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
        assert served.hub.stats().subscriptions == 3

        served.hub.publish_head({"height": 8, "hash": h("8").hex()})
        assert notification(ws) == (heads, {"height": 8, "hash": h("8").hex()})

        removed = log(A, (TRANSFER,), b"old", removed=True)
        added = log(A, (TRANSFER, h("to")), b"new")
        other = [log(B, (TRANSFER,), b"b"), log(A, (APPROVAL,), b"a"), log(A, (), b"none")]
        served.hub.publish_logs([removed, *other, added])
        assert notification(ws) == (logs, log_json(removed))
        assert log_json(removed)["removed"] is True
        assert notification(ws) == (logs, log_json(added))

        served.hub.publish_pending(h("tx").hex())
        assert notification(ws) == (pending, h("tx").hex())
        # The JSON-RPC methods are served over the socket too, and over HTTP on the same port.
        assert ask(ws, "echo", ["hi"], 5) == {"jsonrpc": "2.0", "id": 5, "result": "hi"}
        assert call(served.server.url, "echo", "http") == "http"
    wait_until(lambda: served.hub.stats().connections == 0)
    assert served.hub.stats().subscriptions == 0


def test_logs_without_filter_and_many_subscribers(served: Served) -> None:
    with served.client() as first, served.client() as second:
        everything = subscribe(first, "logs")
        only_b = subscribe(second, "logs", {"address": [str(B)]})
        logs = [log(A, (), b"1"), log(B, (APPROVAL,), b"2")]
        served.hub.publish_logs(logs)
        assert [notification(first) for _ in logs] == [(everything, log_json(x)) for x in logs]
        assert notification(second) == (only_b, log_json(logs[1]))


def test_unsubscribe_stops_notifications(served: Served) -> None:
    with served.client() as ws:
        heads = subscribe(ws, "newHeads")
        pending = subscribe(ws, "pendingTransactions")
        assert ask(ws, "qoin_unsubscribe", [heads]) == {"jsonrpc": "2.0", "id": 1, "result": True}
        assert ask(ws, "qoin_unsubscribe", [heads])["result"] is False
        assert ask(ws, "qoin_unsubscribe", ["not one"])["result"] is False
        served.hub.publish_head({"height": 9})
        served.hub.publish_pending("ab")
        # Messages arrive in order: had the head been sent, it would come first.
        assert notification(ws) == (pending, "ab")
        # Another connection cannot end this one's subscription.
        with served.client() as other:
            assert ask(other, "qoin_unsubscribe", [pending])["result"] is False
        served.hub.publish_pending("cd")
        assert notification(ws) == (pending, "cd")
        assert served.hub.stats().subscriptions == 1


def test_bad_requests_get_errors(served: Served) -> None:
    with served.client() as ws:

        def error(message: str | bytes) -> dict[str, Any]:
            ws.send(message)
            answer = receive(ws)
            assert "result" not in answer
            found: dict[str, Any] = answer["error"]
            return found

        assert error("{nope")["code"] == -32700
        assert error('{"jsonrpc": "1.0", "id": 1, "method": "qoin_subscribe"}')["code"] == -32600
        assert error(b"\x00binary")["code"] == -32600
        assert error("[]")["code"] == -32600

        def request(params: Any) -> str:
            return json.dumps(
                {"jsonrpc": "2.0", "id": 3, "method": "qoin_subscribe", "params": params}
            )

        unknown = error(request(["newBlocks"]))
        assert (
            unknown["code"] == -32602
            and "unknown subscription kind 'newBlocks'" in unknown["message"]
        )
        assert error(request([]))["code"] == -32602
        assert error(request({"kind": "newHeads"}))["code"] == -32602
        assert "takes no filter" in error(request(["newHeads", {}]))["message"]
        bad_filter = error(request(["logs", {"topics": ["xyz"]}]))
        assert bad_filter["code"] == -32602
        assert "topic at position 0 must be 32 bytes" in bad_filter["message"]
        ranged = error(request(["logs", {"fromBlock": 1}]))
        assert "unknown filter field(s) fromBlock" in ranged["message"]
        assert "invalid address" in error(request(["logs", {"address": "qoin1x"}]))["message"]
        unsubscribe = json.dumps(
            {"jsonrpc": "2.0", "id": 4, "method": "qoin_unsubscribe", "params": [1]}
        )
        assert error(unsubscribe)["code"] == -32602
        missing = json.dumps({"jsonrpc": "2.0", "id": 5, "method": "qoin_nothing", "params": []})
        assert error(missing) == {"code": -32601, "message": "method not found: qoin_nothing"}
        assert served.hub.stats().subscriptions == 0

        # A batch: answers together (a notification request gets none).
        batch = [
            {"jsonrpc": "2.0", "id": 1, "method": "qoin_subscribe", "params": ["newHeads"]},
            {"jsonrpc": "2.0", "method": "qoin_subscribe", "params": ["pendingTransactions"]},
            {"jsonrpc": "2.0", "id": 2, "method": "echo", "params": ["x"]},
        ]
        ws.send(json.dumps(batch))
        answers = json.loads(ws.recv(timeout=TIMEOUT))
        assert [answer["id"] for answer in answers] == [1, 2] and answers[1]["result"] == "x"
        assert served.hub.stats().subscriptions == 2
        served.hub.publish_head({"height": 1})
        assert notification(ws) == (answers[0]["result"], {"height": 1})

        # Larger than a frame may be: the server closes the connection (1009: message too big).
        ws.send("x" * (HubLimits().max_frame + 1))
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=TIMEOUT)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    wait_until(lambda: served.hub.stats().connections == 0)


def test_subscriptions_per_connection_are_bounded(served: Served) -> None:
    with served.client() as ws:
        first = [subscribe(ws, "newHeads") for _ in range(3)]
        refused = ask(ws, "qoin_subscribe", ["pendingTransactions"])
        assert refused["error"]["code"] == -32000
        assert "too many subscriptions on this connection: at most 3" in refused["error"]["message"]
        assert served.hub.stats().subscriptions == 3
        assert ask(ws, "qoin_unsubscribe", [first[0]])["result"] is True
        assert subscribe(ws, "pendingTransactions")
        # A second connection has its own allowance.
        with served.client() as other:
            assert subscribe(other, "newHeads")
        served.hub.publish_head({"n": 1})
        assert sorted(notification(ws)[0] for _ in range(2)) == sorted(first[1:])


def test_connections_are_bounded() -> None:
    with serve(HubLimits(max_connections=2)) as served:
        with served.client() as first, served.client() as second:
            assert subscribe(first, "newHeads") and subscribe(second, "newHeads")
            with pytest.raises(InvalidStatus) as refused:
                served.client()
            assert refused.value.response.status_code == 503
            assert b"too many WebSocket connections (at most 2)" in refused.value.response.body
            assert served.hub.stats().refused == 1
        wait_until(lambda: served.hub.stats().connections == 0)
        with served.client() as third:
            assert subscribe(third, "newHeads")


def slow_client(served: Served) -> ClientConnection:
    """A client that will not read: a small receive buffer, and a reader that stops after one
    queued frame."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((served.server.host, served.server.port))
    # It closes without waiting for the server's close frame (it would have to read to see it).
    return served.client(sock=sock, max_queue=1, close_timeout=0.01)


@dataclass
class Reader:
    """A client reading notifications on a thread as fast as they come."""

    ws: ClientConnection
    received: list[Any] = field(default_factory=list)
    thread: threading.Thread | None = None

    def start(self) -> Reader:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        try:
            while True:
                self.received.append(notification(self.ws)[1])
        except (ConnectionClosed, TimeoutError):
            return


PAD = 16 * 1024
"""Bytes of padding in each head the drop tests publish."""


def flood(served: Served, reader: Reader, start: int, count: int) -> None:
    """Publish ``count`` large heads, each once the reading client has the previous one."""
    for sent in range(1, count + 1):
        served.hub.publish_head({"n": start + sent - 1, "pad": "p" * PAD})
        wait_until(
            lambda sent=sent: len(reader.received) >= sent,  # type: ignore[misc]
            poll=0.0005,
            what=f"head {start + sent - 1} at the reader",
        )
    assert [head["n"] for head in reader.received] == list(range(start, start + count))
    reader.received.clear()


def test_slow_subscriber_is_dropped() -> None:
    limits = HubLimits(max_queue_bytes=256 * 1024, max_queue_messages=1000)
    with serve(limits) as served:
        slow = slow_client(served)
        fast = served.client()
        subscribe(slow, "newHeads")
        subscribe(fast, "newHeads")
        reader = Reader(fast).start()
        for start in range(0, 2000, 50):  # until the slow one is dropped (~30 x 16 KiB queued)
            flood(served, reader, start, 50)
            if served.hub.stats().dropped:
                break
        stats = served.hub.stats()
        assert stats.dropped == 1
        assert stats.peak_connection_bytes <= limits.max_queue_bytes
        assert stats.queued_bytes <= 2 * (PAD + 1024)  # the reader's, at most what is in flight
        assert stats.subscriptions == 1 and stats.connections == 2
        # The reader keeps receiving everything, in order.
        flood(served, reader, 5000, 20)
        served.hub.publish_head({"n": "last"})
        wait_until(lambda: reader.received == [{"n": "last"}])
        # Once the slow client reads, it gets what was in flight, then the close with the reason.
        count = 0
        with pytest.raises(ConnectionClosed) as closed:
            while count < 10_000:
                slow.recv(timeout=TIMEOUT)
                count += 1
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == CLOSE_TOO_SLOW
        assert closed.value.rcvd.reason.startswith("too slow: ")
        assert "notifications pending" in closed.value.rcvd.reason
        assert 0 < count < 2000
        wait_until(lambda: served.hub.stats().connections == 1)
        fast.close()
        wait_until(lambda: served.hub.stats().connections == 0)
        assert served.hub.stats().queued_bytes == 0


def test_never_reading_client_is_aborted() -> None:
    """A dropped client that never reads cannot even be told: the server's write timeout aborts
    its connection. An idle subscriber outlives that timeout (it is no HTTP request)."""
    limits = HubLimits(max_queue_bytes=128 * 1024)
    http = HttpLimits(idle_timeout=0.5, header_timeout=0.5)
    with serve(limits, http) as served:
        slow = slow_client(served)
        fast = served.client()
        subscribe(slow, "newHeads")
        subscribe(fast, "newHeads")
        # Idle for longer than the HTTP timeouts: still served.
        with pytest.raises(TimeoutError):
            fast.recv(timeout=1.0)
        reader = Reader(fast).start()
        for start in range(0, 2000, 50):
            flood(served, reader, start, 50)
            if served.hub.stats().dropped:
                break
        assert served.hub.stats().dropped == 1
        wait_until(lambda: served.hub.stats().connections == 1, timeout=TIMEOUT)
        wait_until(lambda: served.server.connections == 1, timeout=TIMEOUT)
        flood(served, reader, 0, 5)
        assert served.hub.stats().peak_connection_bytes <= limits.max_queue_bytes
        slow.close()
        fast.close()


def test_total_queue_bound_drops_the_largest() -> None:
    """All queues together stay under their bound: the connection holding most goes first."""
    limits = HubLimits(max_queue_bytes=256 * 1024, max_total_bytes=300 * 1024)
    with serve(limits) as served:
        slow, other_slow = slow_client(served), slow_client(served)
        fast = served.client()
        for ws in (slow, other_slow, fast):
            subscribe(ws, "newHeads")
        reader = Reader(fast).start()
        for start in range(0, 2000, 50):
            flood(served, reader, start, 50)
            if served.hub.stats().dropped == 2:
                break
        stats = served.hub.stats()
        assert stats.dropped == 2
        assert stats.peak_total_bytes <= limits.max_total_bytes
        assert stats.peak_connection_bytes < limits.max_queue_bytes  # the total bound came first
        assert stats.subscriptions == 1
        for ws in (slow, other_slow, fast):
            ws.close()


def test_a_burst_beyond_a_queue_drops_even_a_reader() -> None:
    """One publish larger than a queue may hold (a block full of logs) drops the subscriber that
    wants it all, however fast it reads; one that wants a few logs of it gets them."""
    limits = HubLimits(max_queue_bytes=1024 * 1024)
    with serve(limits) as served, served.client() as greedy, served.client() as choosy:
        subscribe(greedy, "logs")
        wanted = subscribe(choosy, "logs", {"topics": [TRANSFER.hex()]})
        logs = [
            log(A, (TRANSFER if n % 100 == 0 else APPROVAL,), bytes([n % 256]) * 4096)
            for n in range(300)
        ]
        served.hub.publish_logs(logs)
        assert [notification(choosy) for _ in range(3)] == [
            (wanted, log_json(logs[n])) for n in (0, 100, 200)
        ]
        count = 0
        with pytest.raises(ConnectionClosed) as closed:
            while count < 300:
                notification(greedy)
                count += 1
        assert closed.value.rcvd is not None and closed.value.rcvd.code == CLOSE_TOO_SLOW
        assert count < 300
        stats = served.hub.stats()
        assert stats.dropped == 1 and stats.peak_connection_bytes <= limits.max_queue_bytes
        served.hub.publish_logs(logs[:1])
        assert notification(choosy) == (wanted, log_json(logs[0]))


def test_an_answer_too_large_is_refused() -> None:
    with serve(HubLimits(max_queue_bytes=64 * 1024)) as served, served.client() as ws:
        assert ask(ws, "big", [1000])["result"] == "x" * 1000
        refused = ask(ws, "big", [64 * 1024], 7)
        assert refused["id"] == 7 and refused["error"]["code"] == -32000
        assert "answer too large for a WebSocket" in refused["error"]["message"]
        assert "ask over HTTP" in refused["error"]["message"]
        assert ask(ws, "echo", ["still here"])["result"] == "still here"
