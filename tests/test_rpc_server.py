"""The JSON-RPC 2.0 server over a real socket on 127.0.0.1: every error code and batches."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import pytest
from starlette.requests import Request

from qoin.errors import QoinError
from qoin.rpc.jwt import encode, verify
from qoin.rpc.serve import BackgroundServer
from qoin.rpc.server import Method, Param, RpcServer

SECRET = bytes(32)


class Refused(QoinError):
    pass


def add(a: int, b: int = 0) -> int:
    return a + b


def boom() -> None:
    raise RuntimeError("secret internals")


def refuse() -> None:
    raise Refused("no such block")


METHODS = [
    Method(
        "add",
        add,
        (
            Param("a", {"type": "integer"}),
            Param("b", {"type": "integer", "minimum": 0}, required=False),
        ),
        {"type": "integer"},
        "Add",
    ),
    Method("boom", boom),
    Method("refuse", refuse),
    Method(
        "hex",
        lambda value: bytes.fromhex(value).hex(),
        (Param("value", {"type": "string"}, parse=lambda v: bytes.fromhex(v).hex()),),
    ),
]


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with BackgroundServer(RpcServer("test", METHODS, max_body=4096).app) as server:
        yield server.url


def call(url: str, payload: object) -> httpx.Response:
    return httpx.post(url, json=payload, timeout=10)


def test_call_by_position_and_name(url: str) -> None:
    assert (
        call(url, {"jsonrpc": "2.0", "id": 1, "method": "add", "params": [2, 3]}).json()["result"]
        == 5
    )
    answer = call(url, {"jsonrpc": "2.0", "id": "x", "method": "add", "params": {"a": 2}}).json()
    assert answer == {"jsonrpc": "2.0", "id": "x", "result": 2}


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ({"jsonrpc": "2.0", "id": 1, "method": "nope"}, -32601),
        ({"jsonrpc": "2.0", "id": 1, "method": "add", "params": ["2"]}, -32602),
        ({"jsonrpc": "2.0", "id": 1, "method": "add", "params": [True]}, -32602),
        ({"jsonrpc": "2.0", "id": 1, "method": "add", "params": [1, -1]}, -32602),
        ({"jsonrpc": "2.0", "id": 1, "method": "add", "params": [1, 2, 3]}, -32602),
        ({"jsonrpc": "2.0", "id": 1, "method": "add", "params": {"c": 1, "a": 1}}, -32602),
        ({"jsonrpc": "2.0", "id": 1, "method": "add"}, -32602),
        ({"jsonrpc": "2.0", "id": 1, "method": "hex", "params": ["zz"]}, -32602),
        ({"jsonrpc": "1.0", "id": 1, "method": "add"}, -32600),
        ({"jsonrpc": "2.0", "id": 1, "method": 5}, -32600),
        ({"jsonrpc": "2.0", "id": 1, "method": "add", "params": 5}, -32600),
        ([], -32600),
        ({"jsonrpc": "2.0", "id": 1, "method": "refuse"}, -32000),
        ({"jsonrpc": "2.0", "id": 1, "method": "boom"}, -32603),
    ],
)
def test_errors(url: str, payload: object, code: int) -> None:
    answer = call(url, payload).json()
    assert answer["error"]["code"] == code, answer
    assert "secret internals" not in answer["error"]["message"]


def test_parse_error_and_oversize(url: str) -> None:
    assert httpx.post(url, content=b"{nope", timeout=10).json()["error"]["code"] == -32700
    assert httpx.post(url, content=b"\xff\xfe", timeout=10).json()["error"]["code"] == -32700
    big = httpx.post(url, content=b"[" + b" " * 5000 + b"]", timeout=10)
    assert big.status_code == 413
    assert big.json()["error"]["code"] == -32600


def test_batch_and_notifications(url: str) -> None:
    answers = call(
        url,
        [
            {"jsonrpc": "2.0", "id": 1, "method": "add", "params": [1, 1]},
            {"jsonrpc": "2.0", "method": "add", "params": [1, 1]},  # notification: no answer
            {"jsonrpc": "2.0", "id": 2, "method": "nope"},
        ],
    ).json()
    assert [a["id"] for a in answers] == [1, 2]
    assert call(url, {"jsonrpc": "2.0", "method": "add", "params": [1]}).status_code == 204


def test_openrpc_discover(url: str) -> None:
    document = call(url, {"jsonrpc": "2.0", "id": 1, "method": "rpc.discover"}).json()["result"]
    names = {m["name"] for m in document["methods"]}
    assert {"add", "rpc.discover"} <= names
    assert document["openrpc"].startswith("1.")


def test_authentication() -> None:
    def authenticate(request: Request) -> None:
        header = request.headers.get("authorization", "")
        if not header.startswith("Bearer "):
            raise Refused("missing bearer token")
        verify(SECRET, header.removeprefix("Bearer "))

    server = RpcServer("engine", METHODS, authenticate=authenticate)
    with BackgroundServer(server.app) as running:
        payload = {"jsonrpc": "2.0", "id": 1, "method": "add", "params": [1]}
        assert httpx.post(running.url, json=payload, timeout=10).status_code == 401
        token = encode(SECRET)
        ok = httpx.post(
            running.url, json=payload, headers={"Authorization": f"Bearer {token}"}, timeout=10
        )
        assert ok.json()["result"] == 1
        bad = encode(bytes([1] * 32))
        assert (
            httpx.post(
                running.url, json=payload, headers={"Authorization": f"Bearer {bad}"}, timeout=10
            ).status_code
            == 401
        )


def test_bounds_and_deep_json(url: str) -> None:
    negative = call(url, {"jsonrpc": "2.0", "id": 1, "method": "add", "params": [1, -5]}).json()
    assert negative["error"]["code"] == -32602
    deep = httpx.post(url, content=b"[" * 3000, timeout=10)
    assert deep.json()["error"]["code"] == -32700


def test_listening_socket_says_tcp_so_connections_get_nodelay() -> None:
    """asyncio sets TCP_NODELAY on accepted connections only if the listening socket's protocol
    is IPPROTO_TCP; with protocol 0 every small answer waited ~40 ms for a delayed ACK."""
    with BackgroundServer(RpcServer("test", METHODS).app) as server:
        listening = server._socket  # the cause is a property of this socket
        assert listening.proto == socket.IPPROTO_TCP
        assert listening.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        assert httpx.post(server.url, json={"jsonrpc": "2.0", "id": 1, "method": "nope"}).json()
