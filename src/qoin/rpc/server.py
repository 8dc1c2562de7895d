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

Bodies above ``max_body`` bytes are refused with HTTP 413 before being read in full. ``rpc.discover``
returns the OpenRPC document describing every method.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

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
    ) -> None:
        self.title = title
        self.methods = {m.name: m for m in methods}
        self.authenticate = authenticate
        self.max_body = max_body
        discover = Method("rpc.discover", self.openrpc, (), {"type": "object"}, "OpenRPC document")
        self.methods.setdefault(discover.name, discover)
        self.app = Starlette(routes=[Route("/", self.endpoint, methods=["POST"])])

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
        if not isinstance(request_id, str | int | type(None)) or isinstance(request_id, bool):
            return _error(None, RpcError(INVALID_REQUEST, "invalid request: bad id"))
        name = request.get("method")
        try:
            if not isinstance(name, str):
                raise RpcError(INVALID_REQUEST, "invalid request: method must be a string")
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

    async def _read_body(self, request: Request) -> bytes | None:
        """The request body, or None if it is (or claims to be) larger than ``max_body``."""
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body):
            return None
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > self.max_body:
                return None
        return bytes(body)

    async def endpoint(self, request: Request) -> Response:
        """HTTP handler: authentication, size bound, parsing, single or batch dispatch."""
        if self.authenticate is not None:
            try:
                self.authenticate(request)
            except QoinError as exc:
                return JSONResponse(
                    _error(None, RpcError(INVALID_REQUEST, f"unauthorized: {exc}")), 401
                )
        body = await self._read_body(request)
        if body is None:
            return JSONResponse(
                _error(None, RpcError(INVALID_REQUEST, "request body too large")), 413
            )
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            return JSONResponse(
                _error(None, RpcError(PARSE_ERROR, "parse error: body is not JSON"))
            )
        return await self._dispatch(payload)

    async def _dispatch(self, payload: Any) -> Response:
        """Answer one request or a batch (notifications get no answer: HTTP 204 if none is left)."""
        if isinstance(payload, list):
            if not payload or len(payload) > MAX_BATCH:
                error = RpcError(INVALID_REQUEST, f"a batch holds 1 to {MAX_BATCH} requests")
                return JSONResponse(_error(None, error))
            answers = [answer for item in payload if (answer := await self._call(item)) is not None]
            return JSONResponse(answers) if answers else Response(status_code=204)
        answer = await self._call(payload)
        return JSONResponse(answer) if answer is not None else Response(status_code=204)
