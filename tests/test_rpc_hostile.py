"""Hostile HTTP clients against real servers on 127.0.0.1: lone UTF-16 surrogates, malformed
engine tokens, clients that disconnect mid-request, slowloris connections, and bodies over the
server's budget. Each gets its JSON-RPC or HTTP error, none reaches a traceback, and none holds the
server (small limits, so each test takes about a second)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import select
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import httpx
import pytest
from starlette.requests import Request

from qoin.errors import QoinError
from qoin.rpc.client import RpcClient
from qoin.rpc.jwt import JwtError, encode, load_secret, verify
from qoin.rpc.serve import BackgroundServer, HttpLimits
from qoin.rpc.server import INVALID_REQUEST, SERVER_ERROR, Method, Param, RpcServer
from tests.framework import Network, read_to_end, wait_until

SECRET = bytes(range(32))
WAIT_S = 10.0
"""How long anything here may take on a busy machine (each bound is well under it)."""
SHORT = HttpLimits(max_connections=4, header_timeout=1.0, idle_timeout=0.5)
"""The limits under test where connections are held."""
LOOSE = HttpLimits(header_timeout=WAIT_S, idle_timeout=WAIT_S)
"""Timeouts that a slow test machine cannot reach (where the test holds a request open)."""


class Refused(QoinError):
    pass


def refuse(text: str) -> None:
    raise Refused(f"no such thing: {text}")  # echoes the caller's text back in the error


METHODS = [
    Method("add", lambda a, b: a + b, (Param("a", {"type": "integer"}), Param("b", {})), {}),
    Method("refuse", refuse, (Param("text", {"type": "string"}),)),
]


def authenticate(request: Request) -> None:
    """The engine API's check (as :meth:`qoin.execution.client.ExecutionClient.engine_server`)."""
    header = request.headers.get("authorization", "")
    if not header.startswith("Bearer "):
        raise JwtError("missing bearer token")
    verify(SECRET, header.removeprefix("Bearer "))


@contextmanager
def serving(
    server: RpcServer, caplog: pytest.LogCaptureFixture, limits: HttpLimits = LOOSE
) -> Iterator[BackgroundServer]:
    """``server`` on a free port; uvicorn's log (which does not reach the root logger) is captured
    too, and nothing at all may be logged at ERROR or with a traceback."""
    running = BackgroundServer(server.app, limits=limits)
    uvicorn_log = logging.getLogger("uvicorn")  # configured by the server: add ours after it
    uvicorn_log.addHandler(caplog.handler)
    try:
        with running:
            yield running
    finally:
        uvicorn_log.removeHandler(caplog.handler)
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, [f"{r.name}: {r.getMessage()}" for r in bad]


def post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """Send raw ``body``; the status and the answer, which must be strict UTF-8 JSON."""
    response = httpx.post(url, content=body, headers=headers, timeout=WAIT_S)
    return response.status_code, json.loads(response.content.decode("utf-8"))


def connect(server: BackgroundServer, head: bytes = b"") -> socket.socket:
    """A raw connection that has sent ``head`` (so far)."""
    sock = socket.create_connection((server.host, server.port), timeout=WAIT_S)
    if head:
        sock.sendall(head)
    return sock


def read_answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (bounded by the socket's timeout)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server has closed ``sock`` (without waiting)."""
    if not select.select([sock], [], [], 0)[0]:
        return False
    try:
        return sock.recv(65536, socket.MSG_PEEK) == b""
    except ConnectionError:
        return True


def head(length: int | None) -> bytes:
    """A request head asking the server to close after answering (so answers read to the end);
    a chunked body when ``length`` is None."""
    framing = "Transfer-Encoding: chunked" if length is None else f"Content-Length: {length}"
    return f"POST / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{framing}\r\n\r\n".encode()


def address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rstrip("/").rsplit(":", 1)
    return host, int(port)


# -- bad input ------------------------------------------------------------------------------------


def test_lone_surrogates_get_json_rpc_errors_in_utf8(caplog: pytest.LogCaptureFixture) -> None:
    """A ``method`` or ``id`` holding ``"\\ud800"`` made the answer unencodable: HTTP 500 and a
    traceback. Now: an invalid request (id null when the id is the culprit), in valid UTF-8."""
    with serving(RpcServer("test", METHODS), caplog) as server:
        status, answer = post(server.url, b'{"jsonrpc":"2.0","id":7,"method":"\\ud800"}')
        assert (status, answer["id"], answer["error"]["code"]) == (200, 7, INVALID_REQUEST)
        status, answer = post(server.url, b'{"jsonrpc":"2.0","id":"\\ud800","method":"add"}')
        assert (status, answer["id"], answer["error"]["code"]) == (200, None, INVALID_REQUEST)
        batch = b'[{"jsonrpc":"2.0","id":"a\\udfff","method":"add"},'
        batch += b'{"jsonrpc":"2.0","id":2,"method":"add","params":[1,2]}]'
        status, answers = post(server.url, batch)
        assert [a.get("result") for a in answers] == [None, 3]
        # A handler echoing a surrogate it was given: the answer is still UTF-8.
        status, answer = post(
            server.url, b'{"jsonrpc":"2.0","id":1,"method":"refuse","params":["\\ud800"]}'
        )
        assert (status, answer["error"]["code"]) == (200, SERVER_ERROR)
        assert answer["error"]["message"].endswith("no such thing: ?")


def _token(header: bytes, claims: bytes, secret: bytes | None = SECRET) -> str:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing = f"{b64(header)}.{b64(claims)}"
    mac = b"" if secret is None else hmac.new(secret, signing.encode(), hashlib.sha256).digest()
    return f"{signing}.{b64(mac)}"


def test_malformed_engine_tokens_get_401(caplog: pytest.LogCaptureFixture) -> None:
    """Deep JSON in an unsigned token's header or claims (parsed before the signature was checked)
    and a signed ``iat`` of 2,000 digits answered HTTP 500; a valid signature followed by ``!!``
    or ``==`` was accepted. Each now gets 401."""
    hs256 = b'{"alg":"HS256","typ":"JWT"}'
    good = encode(SECRET)
    tokens = {
        "deep header": _token(b"[" * 2500, b'{"iat":1}', secret=None),
        "deep claims": _token(hs256, b"[" * 2500, secret=None),
        "deep signed claims": _token(hs256, b"[" * 2500),
        "iat of 2000 digits": _token(hs256, b'{"iat":%s}' % (b"9" * 2000)),
        "junk after signature": good + "!!",
        "padded signature": good + "==",
    }
    request = b'{"jsonrpc":"2.0","id":1,"method":"add","params":[1,2]}'
    with serving(RpcServer("engine", METHODS, authenticate=authenticate), caplog) as server:
        for name, token in tokens.items():
            status, answer = post(server.url, request, {"Authorization": f"Bearer {token}"})
            assert status == 401, (name, answer)
            assert answer["error"]["message"].startswith("unauthorized"), (name, answer)
        status, answer = post(server.url, request, {"Authorization": f"Bearer {good}"})
        assert (status, answer["result"]) == (200, 3)


def test_client_gone_mid_body_is_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    """A client that closed before its body arrived was logged as "Exception in ASGI application"
    with a traceback (starlette's ClientDisconnect)."""
    rpc = RpcServer("test", METHODS, small_body=10)  # so that bodies_held shows the reading
    with serving(rpc, caplog) as server:
        for _ in range(3):
            sock = connect(server, head(1000) + b'{"jsonrpc"')
            wait_until(lambda: rpc.bodies_held == 1000, WAIT_S)  # the app is reading the body
            sock.close()
            wait_until(lambda: server.connections == 0 and rpc.bodies_held == 0, WAIT_S)
        with RpcClient(server.url, timeout=WAIT_S) as client:
            assert client.call("add", 1, 2) == 3


# -- bounded connections, heads, idle bodies and bodies in flight ---------------------------------


def test_slowloris_connections_are_capped_and_timed_out(caplog: pytest.LogCaptureFixture) -> None:
    """200 connections sending a header line every few seconds were all held open indefinitely.
    Now one over the cap is answered 503 at once, and a head that is not complete within the
    header timeout is closed, however steadily it trickles."""
    with serving(RpcServer("test", METHODS), caplog, SHORT) as server:
        started = time.monotonic()
        silent = connect(server)
        slow = [connect(server, b"POST / HTTP/1.1\r\n") for _ in range(SHORT.max_connections - 1)]
        wait_until(lambda: server.connections == SHORT.max_connections, WAIT_S)
        with connect(server) as extra:
            assert read_answer(extra).startswith(b"HTTP/1.1 503")
        deadline = time.monotonic() + WAIT_S
        while not all(closed_by_server(sock) for sock in slow):  # one header line per 50 ms
            assert time.monotonic() < deadline, "slow heads still open"
            for sock in slow:
                with suppress(OSError):  # closed: the loop's condition notices
                    sock.sendall(b"X-Slow: 1\r\n")
            select.select(slow, [], [], 0.05)
        elapsed = time.monotonic() - started
        assert SHORT.header_timeout <= elapsed < WAIT_S
        wait_until(lambda: closed_by_server(silent), WAIT_S)
        wait_until(lambda: server.connections == 0, WAIT_S)
        for sock in [silent, *slow]:
            sock.close()
        with RpcClient(server.url, timeout=WAIT_S) as client:
            assert client.call("add", 1, 2) == 3


def test_a_stalled_body_is_closed_after_the_idle_timeout(caplog: pytest.LogCaptureFixture) -> None:
    """A head followed by part of a body and then silence held the connection (and the body
    budget) forever."""
    rpc = RpcServer("test", METHODS)
    with serving(rpc, caplog, SHORT) as server:
        started = time.monotonic()
        with connect(server, head(100) + b"[") as sock:
            wait_until(lambda: closed_by_server(sock), WAIT_S)
        assert time.monotonic() - started >= SHORT.idle_timeout
        wait_until(lambda: server.connections == 0 and rpc.bodies_held == 0, WAIT_S)


def test_a_trickled_body_is_closed_once_behind_the_body_rate(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A body trickled a byte at a time, never idle long enough to time out, held its share of the
    body budget for ever: two such connections declaring ``max_body`` each answered every other
    request 503. Now a body that falls behind ``body_rate`` after its first ``idle_timeout``
    seconds is closed, and what it held is given back."""
    limits = HttpLimits(max_connections=4, header_timeout=1.0, idle_timeout=0.5, body_rate=100)
    rpc = RpcServer("test", METHODS, max_body=1000, body_budget=2000, small_body=10)
    with serving(rpc, caplog, limits) as server:
        started = time.monotonic()
        trickles = [connect(server, head(1000)) for _ in range(2)]
        wait_until(lambda: rpc.bodies_held == 2000, WAIT_S)  # the whole budget
        deadline = time.monotonic() + WAIT_S
        while not all(closed_by_server(sock) for sock in trickles):  # 10 bytes/s, never idle
            assert time.monotonic() < deadline, "trickled bodies still open"
            for sock in trickles:
                with suppress(OSError):
                    sock.sendall(b" ")
            select.select(trickles, [], [], 0.1)
        assert time.monotonic() - started >= limits.idle_timeout
        wait_until(lambda: server.connections == 0 and rpc.bodies_held == 0, WAIT_S)
        for sock in trickles:
            sock.close()
        with RpcClient(server.url, timeout=WAIT_S) as client:
            assert client.call("add", 1, 2) == 3


def test_an_unread_answer_does_not_hold_the_connection(caplog: pytest.LogCaptureFixture) -> None:
    """A client that asked for large answers and never read them held its connection for ever
    (uvicorn waits for the send buffer to drain with no timeout): 128 of them filled the
    connection cap. Now a send buffer not drained within ``idle_timeout`` aborts the connection."""
    big = Method("big", lambda: "x" * 4_000_000, (), {"type": "string"})
    limits = HttpLimits(max_connections=4, header_timeout=WAIT_S, idle_timeout=0.5)
    request = b'{"jsonrpc":"2.0","id":1,"method":"big"}'
    pipelined = (
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s" % (len(request), request)
    ) * 4
    with serving(RpcServer("test", [*METHODS, big]), caplog, limits) as server:
        readers = []
        for _ in range(limits.max_connections):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting
            sock.connect((server.host, server.port))
            sock.sendall(pipelined)  # and never read
            readers.append(sock)
        wait_until(lambda: server.connections == 0, WAIT_S)
        for sock in readers:
            sock.close()
        with RpcClient(server.url, timeout=WAIT_S) as client:
            assert client.call("add", 1, 2) == 3


def test_a_body_of_many_small_values_is_refused_unparsed(caplog: pytest.LogCaptureFixture) -> None:
    """5 MiB of ``[[],[],…]`` took 120 MiB once parsed (empty lists cost ~70 bytes each), so the
    body budget did not bound memory: 48 MiB bodies on the consensus RPC would take over 1 GiB
    each. Now a body holding more than ``max_values`` JSON values is refused before parsing."""
    rpc = RpcServer("test", METHODS, max_values=100)
    call = {"jsonrpc": "2.0", "id": 1, "method": "add", "params": [1, 2]}
    with serving(rpc, caplog) as server:
        status, answer = post(server.url, b"[" + b"[]," * 100 + b"[]]")
        assert status == 413 and "over 100 JSON values" in answer["error"]["message"]
        status, answer = post(server.url, json.dumps([call] * 9).encode())  # 9 x 10 values
        assert status == 200 and [a["result"] for a in answer] == [3] * 9
        status, answer = post(server.url, json.dumps([call] * 11).encode())
        assert status == 413
        wait_until(lambda: rpc.bodies_held == 0, WAIT_S)


def test_bodies_in_flight_share_one_budget(caplog: pytest.LogCaptureFixture) -> None:
    """8 concurrent 45 MiB bodies took the consensus RPC from 114 to 495 MiB: nothing bounded the
    bodies of concurrent requests together. Now a request that does not fit in what the others
    leave is answered 503 before its body is read; small requests still pass; what a request held
    is given back once it is answered."""
    rpc = RpcServer("test", METHODS, max_body=1000, body_budget=1500, small_body=10)
    call = b'{"jsonrpc":"2.0","id":1,"method":"add","params":[1,2]}'
    with serving(rpc, caplog) as server:
        first = connect(server, head(1000) + call[:10])
        wait_until(lambda: rpc.bodies_held == 1000, WAIT_S)
        with connect(server, head(1000)) as second:  # its body is never sent
            answer = read_answer(second)
            assert answer.startswith(b"HTTP/1.1 503"), answer
            assert b"retry-after: 1" in answer.lower()
            assert b"in flight would exceed 1500 bytes" in answer
        with connect(server, head(None)) as chunked:
            chunked.sendall(b"258\r\n" + b" " * 600 + b"\r\n")  # 600 bytes: more than is left
            assert read_answer(chunked).startswith(b"HTTP/1.1 503")
        with RpcClient(server.url, timeout=WAIT_S) as client:
            assert client.call("add", 1, 2) == 3  # small: fits in the 500 bytes left
        first.sendall(call[10:] + b" " * (1000 - len(call)))
        answer = read_answer(first)
        assert answer.startswith(b"HTTP/1.1 200") and b'"result":3' in answer
        first.close()
        wait_until(lambda: rpc.bodies_held == 0, WAIT_S)
        with connect(server, head(10**9)) as huge:  # over max_body: refused unread
            assert read_answer(huge).startswith(b"HTTP/1.1 413")


def test_large_requests_holding_the_budget_cannot_stop_small_ones(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Heads declaring large bodies that never come hold the whole budget (until the idle
    timeout), but a call whose body is at most ``small_body`` bytes is outside the budget and is
    answered all the same; a large one is refused 503."""
    rpc = RpcServer("test", METHODS, max_body=1000, body_budget=2000, small_body=100)
    with serving(rpc, caplog) as server:
        holders = [connect(server, head(1000)) for _ in range(2)]
        try:
            wait_until(lambda: rpc.bodies_held == 2000, WAIT_S)
            with RpcClient(server.url, timeout=WAIT_S) as client:
                assert client.call("add", 1, 2) == 3
            with connect(server, head(500)) as large:
                assert read_answer(large).startswith(b"HTTP/1.1 503")
            assert rpc.bodies_held == 2000
        finally:
            for holder in holders:
                holder.close()
        wait_until(lambda: rpc.bodies_held == 0, WAIT_S)


# -- real processes -----------------------------------------------------------------------------


@pytest.mark.slow
def test_real_node_answers_hostile_requests_without_traceback(net: Network) -> None:
    """The same hostile requests against a running ``qoin execution`` (user RPC and engine API)
    and ``qoin consensus`` (its RPC): JSON-RPC errors and 401s, and no traceback in either log."""
    node = net.node("a", p2p=False)
    good = encode(load_secret(net.jwt_file))
    surrogate = b'{"jsonrpc":"2.0","id":"\\ud800","method":"\\ud800"}'
    for url in (node.user.url, node.rpc.url):
        status, answer = post(url, surrogate)
        assert (status, answer["error"]["code"]) == (200, INVALID_REQUEST), (url, answer)
        with socket.create_connection(address(url), timeout=WAIT_S) as sock:
            sock.sendall(head(1000) + b"{")  # and gone
    engine = str(node.engine)
    request = b'{"jsonrpc":"2.0","id":1,"method":"engine_pendingTransactions","params":[0]}'
    for token in (
        _token(b"[" * 2500, b"{}", secret=None),
        _token(b'{"alg":"HS256"}', b"[" * 2500, secret=None),
        good + "!!",
        good + "==",
    ):
        status, answer = post(engine, request, {"Authorization": f"Bearer {token}"})
        assert status == 401, answer
    assert post(engine, request, {"Authorization": f"Bearer {good}"})[0] == 200
    assert node.rpc.call("consensus_status")  # still serving
    node.stop()
    logs = "".join(line.text for child in net.children for line in read_to_end(child))
    assert "Traceback" not in logs and "Exception in ASGI" not in logs, logs[-4000:]
