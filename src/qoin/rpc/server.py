"""A JSON-RPC 2.0 server over HTTP (Starlette/uvicorn) with OpenRPC discovery.

Methods are registered with a typed parameter list; the server validates requests before a handler
runs, so handlers receive checked Python values. Errors follow JSON-RPC 2.0:

======= ================================= ===============================================
code    meaning                           when
======= ================================= ===============================================
-32700  parse error                       the body is not JSON (or not UTF-8)
-32600  invalid request                   not a JSON-RPC 2.0 request object; batch too big
-32601  method not found                  unknown method
-32602  invalid params                    missing, extra or mistyped parameters
-32603  internal error                    a handler failed unexpectedly (logged)
-32000  server error (application)        the request is valid but cannot be served
======= ================================= ===============================================

Bodies above ``max_body`` bytes are refused with HTTP 413 before being read in full. The bodies
of all requests in flight together may hold at most ``body_budget`` bytes (by default two maximal
bodies): a request whose declared length does not fit is answered HTTP 503 at once, unread, and one
without a declared length when it outgrows what is left; what a request holds is given back once it
is answered. Bodies of at most ``small_body`` bytes (64 KiB: every call but a block's) are not
counted, so large requests holding the budget cannot stop the everyday small ones. A body is
parsed only if it holds at most ``max_values`` JSON values (counted before parsing, from the bytes
that open a value: ``[``, ``{``, ``,`` and ``:``), else it is answered HTTP 413: each value costs
tens of bytes once parsed whatever its size in the body (a 5 MiB ``[[],[],…]`` would take
120 MiB), so the budget bounds the memory of requests only with this bound. A request ``id`` or
``method`` that is not valid Unicode (a lone UTF-16 surrogate such as ``"\\ud800"``) is an invalid
request; answers are always UTF-8 (a surrogate a handler echoes back is replaced). A client that
disconnects mid-request is no error of ours: nothing is logged. ``rpc.discover`` returns the
OpenRPC document describing every method.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp

from qoin.errors import QoinError

LOG = logging.getLogger(__name__)

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
SERVER_ERROR = -32000
MAX_BATCH = 100
DEFAULT_MAX_BODY = 5 * 1024 * 1024
DEFAULT_MAX_VALUES = 64 * 1024
"""JSON values one body may hold (the largest call, ``engine_submitTransactions``, holds ~4,100)."""
DEFAULT_SMALL_BODY = 64 * 1024
"""Bodies up to this size are outside the body budget (a transaction is at most 32 KiB, 64 KiB
in hex)."""
_MAX_LENGTH_DIGITS = 20
"""A Content-Length longer than this is refused unread (never parsed as a number)."""


class RpcError(QoinError):
    """An error to return to the caller as a JSON-RPC error object."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data


def invalid_params(message: str) -> RpcError:
    """A -32602 error."""
    return RpcError(INVALID_PARAMS, f"invalid params: {message}")


@dataclass(frozen=True)
class Param:
    """One method parameter."""

    name: str
    """Name (for by-name calls and the OpenRPC document)."""
    schema: Mapping[str, Any]
    """JSON Schema of the value (checked for type; see :func:`check_value`)."""
    parse: Callable[[Any], Any] = lambda value: value
    """Turn the JSON value into the handler's argument; raise ValueError/QoinError if invalid."""
    required: bool = True
    """Whether the parameter may be left out (then the handler's default applies)."""
    description: str = ""
    """Human description."""


Handler = Callable[..., Any] | Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class Method:
    """A JSON-RPC method."""

    name: str
    """Method name."""
    handler: Handler
    """Called with the parsed parameters as keyword arguments."""
    params: Sequence[Param] = ()
    """Parameters, in positional order."""
    result: Mapping[str, Any] = field(default_factory=dict)
    """JSON Schema of the result."""
    summary: str = ""
    """One line for the OpenRPC document."""
    is_async: bool = False
    """Whether the handler is a coroutine function."""


_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
    "null": (type(None),),
}


def check_value(schema: Mapping[str, Any], value: Any, name: str) -> None:
    """Check a parameter against the subset of JSON Schema the methods use: ``type``,
    ``minimum``/``maximum`` (integers), ``maxLength`` (strings) and ``maxItems`` (arrays)."""
    kinds = schema.get("type")
    if kinds is None:
        return
    allowed = [kinds] if isinstance(kinds, str) else list(kinds)
    for kind in allowed:
        types = _JSON_TYPES.get(kind, ())
        if isinstance(value, types) and not (kind == "integer" and isinstance(value, bool)):
            break
    else:
        raise invalid_params(f"{name} must be of type {' or '.join(allowed)}")
    if isinstance(value, int) and not isinstance(value, bool):
        if value < schema.get("minimum", value):
            raise invalid_params(f"{name} must be >= {schema['minimum']}")
        if value > schema.get("maximum", value):
            raise invalid_params(f"{name} must be <= {schema['maximum']}")
    if isinstance(value, str) and len(value) > schema.get("maxLength", len(value)):
        raise invalid_params(f"{name} is longer than {schema['maxLength']} characters")
    if isinstance(value, list) and len(value) > schema.get("maxItems", len(value)):
        raise invalid_params(f"{name} holds more than {schema['maxItems']} items")


def _bind(method: Method, params: Any) -> dict[str, Any]:
    """Validate and parse the request's params into keyword arguments."""
    if params is None:
        params = []
    if isinstance(params, list):
        if len(params) > len(method.params):
            raise invalid_params(f"{method.name} takes at most {len(method.params)} parameters")
        given = dict(zip((p.name for p in method.params), params, strict=False))
    elif isinstance(params, dict):
        unknown = set(params) - {p.name for p in method.params}
        if unknown:
            raise invalid_params(f"unknown parameter(s) {', '.join(sorted(unknown))}")
        given = params
    else:
        raise RpcError(INVALID_REQUEST, "params must be an array or an object")
    kwargs = {}
    for param in method.params:
        if param.name not in given:
            if param.required:
                raise invalid_params(f"missing parameter {param.name}")
            continue
        value = given[param.name]
        check_value(param.schema, value, param.name)
        try:
            kwargs[param.name] = param.parse(value)
        except (ValueError, QoinError) as exc:
            raise invalid_params(f"{param.name}: {exc}") from None
    return kwargs


class BodyRefused(QoinError):
    """A request body not read (too large, or over what the bodies in flight may hold)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class _BodyClaim:
    """The part of a server's body budget one request holds (all on the server's event loop)."""

    server: RpcServer
    held: int = 0

    def grow_to(self, size: int) -> None:
        """Hold ``size`` bytes in all, or raise :class:`BodyRefused` (503) if they do not fit
        (nothing is held while ``size`` is small)."""
        if size <= self.server.small_body:
            return
        extra = size - self.held
        if extra <= 0:
            return
        if self.server.bodies_held + extra > self.server.body_budget:
            raise BodyRefused(
                503,
                f"server busy: the request bodies in flight would exceed "
                f"{self.server.body_budget} bytes; retry later",
            )
        self.server.bodies_held += extra
        self.held = size

    def release(self) -> None:
        self.server.bodies_held -= self.held
        self.held = 0


class JsonAnswer(JSONResponse):
    """A JSON response that is always UTF-8, even if the content holds a lone surrogate."""

    def render(self, content: Any) -> bytes:
        text = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        try:
            return text.encode()
        except UnicodeEncodeError:  # a surrogate echoed from the request: not encodable
            return text.encode(errors="replace")


def _is_unicode(text: str) -> bool:
    """Whether ``text`` is valid Unicode (JSON's ``\\ud800`` escapes decode to lone surrogates)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _error(request_id: Any, error: RpcError) -> dict[str, Any]:
    body: dict[str, Any] = {"code": error.code, "message": error.message}
    if error.data is not None:
        body["data"] = error.data
    return {"jsonrpc": "2.0", "id": request_id, "error": body}


class RpcServer:
    """A set of methods served at ``POST /`` as JSON-RPC 2.0."""

    def __init__(
        self,
        title: str,
        methods: Sequence[Method],
        authenticate: Callable[[Request], None] | None = None,
        max_body: int = DEFAULT_MAX_BODY,
        body_budget: int | None = None,
        max_values: int = DEFAULT_MAX_VALUES,
        small_body: int = DEFAULT_SMALL_BODY,
    ) -> None:
        self.title = title
        self.methods = {m.name: m for m in methods}
        self.authenticate = authenticate
        self.max_body = max_body
        self.body_budget = 2 * max_body if body_budget is None else body_budget
        """Bytes the bodies of the requests in flight may hold together."""
        self.bodies_held = 0
        """Bytes they hold now."""
        self.max_values = max_values
        """JSON values one body may hold (an upper bound, counted before parsing)."""
        self.small_body = small_body
        """Bodies of at most this many bytes are not counted in the budget: whoever holds the
        budget with large requests (even heads whose body never comes) cannot stop the small
        ones, the everyday calls; they are bounded by the connection cap instead."""
        discover = Method("rpc.discover", self.openrpc, (), {"type": "object"}, "OpenRPC document")
        self.methods.setdefault(discover.name, discover)
        self.app = Starlette(routes=[Route("/", self.endpoint, methods=["POST"])])

    def add_websocket(self, path: str, endpoint: ASGIApp) -> None:
        """Serve the WebSocket ``endpoint`` (an ASGI app) at ``path`` on this server's port, next
        to ``POST /`` (an HTTP request never reaches it, nor a WebSocket the JSON-RPC route)."""
        self.app.router.routes.append(WebSocketRoute(path, endpoint))

    def openrpc(self) -> dict[str, Any]:
        """The OpenRPC document of this server."""
        return {
            "openrpc": "1.2.6",
            "info": {"title": self.title, "version": "1"},
            "methods": [
                {
                    "name": m.name,
                    "summary": m.summary,
                    "params": [
                        {
                            "name": p.name,
                            "required": p.required,
                            "schema": dict(p.schema),
                            "description": p.description,
                        }
                        for p in m.params
                    ],
                    "result": {"name": "result", "schema": dict(m.result)},
                }
                for m in self.methods.values()
            ],
        }

    async def _call(self, request: Any) -> dict[str, Any] | None:
        if not isinstance(request, dict) or request.get("jsonrpc") != "2.0":
            return _error(
                None, RpcError(INVALID_REQUEST, "invalid request: not a JSON-RPC 2.0 object")
            )
        request_id = request.get("id")
        notification = "id" not in request
        if (
            not isinstance(request_id, str | int | type(None))
            or isinstance(request_id, bool)
            or (isinstance(request_id, str) and not _is_unicode(request_id))
        ):
            error = RpcError(INVALID_REQUEST, "invalid request: id must be a Unicode string or int")
            return _error(None, error)
        name = request.get("method")
        try:
            if not isinstance(name, str):
                raise RpcError(INVALID_REQUEST, "invalid request: method must be a string")
            if not _is_unicode(name):
                raise RpcError(INVALID_REQUEST, "invalid request: method name is not Unicode")
            method = self.methods.get(name)
            if method is None:
                raise RpcError(METHOD_NOT_FOUND, f"method not found: {name}")
            kwargs = _bind(method, request.get("params"))
            if method.is_async:
                result = await method.handler(**kwargs)
            else:
                # Blocking work (executing a block, proofs) must not stall the event loop.
                result = await run_in_threadpool(method.handler, **kwargs)
        except RpcError as exc:
            return None if notification else _error(request_id, exc)
        except QoinError as exc:
            error = RpcError(SERVER_ERROR, f"{type(exc).__name__}: {exc}")
            return None if notification else _error(request_id, error)
        except Exception:  # a bug: log it, answer without leaking internals
            LOG.exception("internal error in %s", name)
            return (
                None
                if notification
                else _error(request_id, RpcError(INTERNAL_ERROR, "internal error"))
            )
        return None if notification else {"jsonrpc": "2.0", "id": request_id, "result": result}

    async def _read_body(self, request: Request, claim: _BodyClaim) -> bytearray:
        """The request body, held in ``claim``; :class:`BodyRefused` if it is (or claims to be)
        larger than ``max_body``, or does not fit in the body budget."""
        too_large = BodyRefused(413, "request body too large")
        declared = request.headers.get("content-length")
        if declared is not None:
            digits = declared.isascii() and declared.isdigit()
            if not digits or len(declared) > _MAX_LENGTH_DIGITS or int(declared) > self.max_body:
                raise too_large
            claim.grow_to(int(declared))
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > self.max_body:
                raise too_large
            claim.grow_to(len(body))
        values = 1 + sum(body.count(opener) for opener in b"[{,:")  # strings' bytes count too
        if values > self.max_values:
            raise BodyRefused(413, f"request body holds over {self.max_values} JSON values")
        return body

    async def endpoint(self, request: Request) -> Response:
        """HTTP handler: authentication, size bounds, parsing, single or batch dispatch."""
        if self.authenticate is not None:
            try:
                self.authenticate(request)
            except QoinError as exc:
                return JsonAnswer(
                    _error(None, RpcError(INVALID_REQUEST, f"unauthorized: {exc}")), 401
                )
        claim = _BodyClaim(self)
        try:
            body = await self._read_body(request, claim)
            try:
                payload = json.loads(body)
            except (ValueError, UnicodeDecodeError, RecursionError):
                return JsonAnswer(
                    _error(None, RpcError(PARSE_ERROR, "parse error: body is not JSON"))
                )
            del body  # the parsed payload is what the answer needs
            return await self._dispatch(payload)
        except BodyRefused as exc:
            headers = {"retry-after": "1"} if exc.status == 503 else None
            return JsonAnswer(
                _error(None, RpcError(INVALID_REQUEST, str(exc))), exc.status, headers
            )
        except ClientDisconnect:  # gone before its body arrived: nobody to answer
            return Response(status_code=400)
        finally:
            claim.release()

    async def _dispatch(self, payload: Any) -> Response:
        """Answer one request or a batch (notifications get no answer: HTTP 204 if none is left)."""
        if isinstance(payload, list):
            if not payload or len(payload) > MAX_BATCH:
                error = RpcError(INVALID_REQUEST, f"a batch holds 1 to {MAX_BATCH} requests")
                return JsonAnswer(_error(None, error))
            answers = [answer for item in payload if (answer := await self._call(item)) is not None]
            return JsonAnswer(answers) if answers else Response(status_code=204)
        answer = await self._call(payload)
        return JsonAnswer(answer) if answer is not None else Response(status_code=204)
