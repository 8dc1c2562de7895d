"""The one JSON-RPC 2.0 client: the CLI, the devnet, the benchmarks, the tests and the consensus
client's engine calls all call servers through :class:`RpcClient`.

Every call is bounded: the answer in bytes (read as a stream, so a huge or trickling answer is cut
off) and the whole call in time, not just each read: a call ends within about twice its bound (an
answer still arriving once the bound has passed is cut off at its next chunk, which the per-read
timeout, the bound itself, waits for). An optional token source adds
``Authorization: Bearer <token>`` to every request (a fresh engine JWT per call). Whatever goes
wrong (unreachable, timed out, not JSON, an error object, no result) is one :class:`RpcCallError`
whose message names the method and the URL; an error object's code and data are kept.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable
from typing import Any

import httpx

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
