"""The one JSON-RPC client against a real server on 127.0.0.1 that answers well, badly, hugely or
slowly: every failure is one :class:`RpcCallError` naming the method and the URL, the answer is
bounded in bytes and the whole call in time, and the token source signs every request."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from qoin.rpc.client import RpcCallError, RpcClient, RpcTimeout, call
from qoin.rpc.serve import BackgroundServer


async def _answer(request: Request) -> Response:
    body = await request.json()
    method = body["method"]
    if method == "echo":
        return JSONResponse({"jsonrpc": "2.0", "id": body["id"], "result": body["params"]})
    if method == "whoami":
        auth = request.headers.get("authorization")
        return JSONResponse({"jsonrpc": "2.0", "id": body["id"], "result": auth})
    if method == "refuse":
        error = {"code": -32000, "message": "no funds", "data": {"refusal": "stateful"}}
        return JSONResponse({"jsonrpc": "2.0", "id": body["id"], "error": error})
    if method == "noresult":
        return JSONResponse({"jsonrpc": "2.0", "id": body["id"]})
    if method == "html":
        return Response(b"<html>busy</html>", status_code=502)
    if method == "huge":
        return Response(b'"' + b"x" * 70_000 + b'"', media_type="application/json")
    if method == "trickle":

        async def drip() -> AsyncIterator[bytes]:
            for _ in range(100):
                yield b" "
                await asyncio.sleep(0.05)

        return StreamingResponse(drip(), media_type="application/json")
    return JSONResponse({"jsonrpc": "2.0", "id": body["id"], "error": {"code": -32601}})


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with BackgroundServer(Starlette(routes=[Route("/", _answer, methods=["POST"])])) as server:
        yield server.url


def test_results_and_error_objects(url: str) -> None:
    assert call(url, "echo", 1, "two") == [1, "two"]
    with pytest.raises(RpcCallError) as refused:
        call(url, "refuse")
    assert refused.value.code == -32000 and refused.value.data == {"refusal": "stateful"}
    assert "refuse" in str(refused.value) and url in str(refused.value)
    with pytest.raises(RpcCallError, match="no result"):
        call(url, "noresult")
    with pytest.raises(RpcCallError, match="HTTP 502, not JSON") as html:
        call(url, "html")
    assert html.value.code is None


def test_every_request_carries_a_fresh_token(url: str) -> None:
    tokens = iter(["first", "second"])
    with RpcClient(url, token=lambda: next(tokens)) as client:
        assert client.call("whoami") == "Bearer first"
        assert client.call("whoami") == "Bearer second"
    assert call(url, "whoami") is None


def test_answers_are_bounded_in_bytes_and_time(url: str) -> None:
    with RpcClient(url, max_answer=65_536) as client, pytest.raises(RpcCallError, match="over"):
        client.call("huge")
    started = time.monotonic()
    with RpcClient(url, timeout=0.5) as client, pytest.raises(RpcTimeout, match="trickle"):
        client.call("trickle")  # a byte every 50 ms never trips a per-read timeout
    assert time.monotonic() - started < 3


def test_an_unreachable_server_is_a_clear_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed once the block ends: nothing listens there
    with pytest.raises(RpcCallError, match="unreachable") as failed:
        call(f"http://127.0.0.1:{port}/", "echo", timeout=5)
    assert failed.value.code is None
