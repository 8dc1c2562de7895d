"""The web UI's Starlette app: :func:`create_app` assembles each page module's ``routes(ui)``, the
static files, the head subscription proxy (``/ws/heads``) and the rules every request passes
(docs/web.md, "Security"):

* the ``Host`` must name this machine (HTTP 421 otherwise: DNS rebinding);
* a body is at most :data:`qoin.web.ui.MAX_BODY` bytes unless a page module allowed its path more
  (HTTP 413), counted as it arrives, whatever ``Content-Length`` says;
* every answer carries a Content-Security-Policy (scripts, styles and connections from this
  origin only, no framing, no inline script), ``nosniff``, ``Referrer-Policy: same-origin``;
  published sites (``/site/``, ``/cid/``) are sandboxed into an opaque origin so that their
  scripts can never use the wallet's session;
* an :class:`HTTPException` becomes a JSON ``{"error": ...}`` under ``/api/`` and the error page
  elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket, WebSocketDisconnect

from qoin.rpc.client import websocket_url
from qoin.web.ui import STATIC, Ui, WebConfig, check_origin, host_allowed

__all__ = ["PAGE_MODULES", "WebConfig", "create_app"]

log = logging.getLogger(__name__)

PAGE_MODULES = (
    "qoin.web.explorer",
    "qoin.web.wallet",
    "qoin.web.mining",
    "qoin.web.storage",
    "qoin.web.compute",
    "qoin.web.sites",
)
"""The page modules, each with ``routes(ui) -> list[BaseRoute]`` (one not installed is skipped)."""
SANDBOXED = ("/site/", "/cid/")
"""Paths serving published content: sandboxed (an opaque origin, no access to the UI's)."""
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
SITE_CSP = (
    "sandbox allow-scripts allow-forms allow-popups allow-downloads; default-src 'self' "
    "'unsafe-inline' data: blob:; connect-src 'none'; frame-ancestors 'self'"
)
WS_MAX_MESSAGE = 1024 * 1024
"""The largest head notification relayed from the node."""

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Asgi = Callable[[Scope, Receive, Send], Awaitable[None]]


class Guard:
    """ASGI middleware: the Host check, the body bound and the security headers."""

    def __init__(self, app: Asgi, ui: Ui) -> None:
        self.app = app
        self.ui = ui

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in {"http", "websocket"}:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if not host_allowed(headers.get("host", ""), self.ui.config.host):
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            await PlainTextResponse("unknown host", 421)(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        limit = self.ui.body_limit(path)
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await _too_large(limit)(scope, receive, send)
            return
        received = 0

        async def bounded() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, f"request body over {limit} bytes")
            return message

        policy = SITE_CSP if path.startswith(SANDBOXED) else CSP

        async def secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = [
                    (b"content-security-policy", policy.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"same-origin"),
                    (b"cross-origin-opener-policy", b"same-origin"),
                ]
                if not path.startswith(SANDBOXED):
                    extra.append((b"x-frame-options", b"DENY"))
                if not path.startswith("/static/"):
                    extra.append((b"cache-control", b"no-store"))
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, bounded, secured)


def _too_large(limit: int) -> Response:
    return JSONResponse({"error": f"request body over {limit} bytes"}, 413)


def wants_json(request: Request) -> bool:
    """Whether an error answers JSON (the API) rather than a page."""
    return request.url.path.startswith("/api/") or "application/json" in request.headers.get(
        "accept", ""
    )


def _error_handler(ui: Ui) -> Callable[[Request, Exception], Awaitable[Response]]:
    async def handle(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        detail = exc.detail if isinstance(exc, HTTPException) else "internal error"
        if wants_json(request):
            return JSONResponse({"error": detail}, status)
        return ui.error(request, str(detail), status)

    return handle


async def heads_proxy(websocket: WebSocket) -> None:
    """``/ws/heads``: relay the node's ``newHeads`` subscription to a page of ours (same origin
    checked; read-only)."""
    ui: Ui = websocket.app.state.ui
    try:
        check_origin(websocket)
    except HTTPException:
        await websocket.close(1008)
        return
    from websockets.asyncio.client import connect  # noqa: PLC0415 (slow import)
    from websockets.exceptions import WebSocketException  # noqa: PLC0415

    await websocket.accept()
    request = {"jsonrpc": "2.0", "id": 1, "method": "qoin_subscribe", "params": ["newHeads"]}
    try:
        async with connect(
            websocket_url(ui.config.rpc),
            max_size=WS_MAX_MESSAGE,
            open_timeout=10,
            compression=None,
            proxy=None,
        ) as node:
            await node.send(json.dumps(request))
            closed = asyncio.ensure_future(_until_closed(websocket))
            try:
                while not closed.done():
                    receiving = asyncio.ensure_future(node.recv())
                    done, _ = await asyncio.wait(
                        {receiving, closed}, return_when=asyncio.FIRST_COMPLETED
                    )
                    if receiving not in done:
                        receiving.cancel()
                        break
                    message = json.loads(receiving.result())
                    if message.get("method") == "qoin_subscription":
                        await websocket.send_text(json.dumps(message["params"]["result"]))
            finally:
                closed.cancel()
    except (OSError, WebSocketException, ValueError, KeyError, TypeError) as exc:
        log.info("head subscription ended: %s", exc)
    except WebSocketDisconnect:
        return
    with contextlib.suppress(RuntimeError, WebSocketDisconnect):
        await websocket.close(1011)


async def _until_closed(websocket: WebSocket) -> None:
    with contextlib.suppress(WebSocketDisconnect):
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return


def page_routes(ui: Ui) -> list[BaseRoute]:
    """The routes of every installed page module, in :data:`PAGE_MODULES` order."""
    routes: list[BaseRoute] = []
    for name in PAGE_MODULES:
        if importlib.util.find_spec(name) is None:
            continue
        module = importlib.import_module(name)
        routes.extend(module.routes(ui))
    return routes


def create_app(config: WebConfig) -> Starlette:
    """The web UI for ``config``; ``app.state.ui`` is its :class:`Ui`."""
    ui = Ui(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            ui.close()

    routes: list[BaseRoute] = [
        *page_routes(ui),
        WebSocketRoute("/ws/heads", heads_proxy),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    handler = _error_handler(ui)
    app = Starlette(
        routes=routes,
        exception_handlers={HTTPException: handler, 500: handler},
        lifespan=lifespan,
    )
    app.state.ui = ui
    app.add_middleware(Guard, ui=ui)
    return app
