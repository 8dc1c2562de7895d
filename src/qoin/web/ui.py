"""What the web UI's page modules share: :class:`Ui` — the node's RPC clients, the templates, the
browser sessions and the security rules every state-changing request passes (docs/web.md,
"Security").

Sessions: the first page a browser loads gets a session — a random token (32 bytes) in a cookie
``qoin_session`` that is ``HttpOnly`` and ``SameSite=Strict``, and the same token in the page
(``<meta name="qoin-session">``), which ``static/qoin.js`` sends back as the ``X-Qoin-Session``
header. :meth:`Ui.require_session` lets a request change state only when that header equals the
cookie's token *and* its ``Origin`` (or, lacking one, its ``Referer``) is this server's own origin.
The cookie alone proves nothing (every port of 127.0.0.1 is the same *site*, so a page another local
program serves gets it sent along); what a foreign page lacks is the token (it cannot read our page)
and a way to set the header without a CORS preflight we never grant, and it cannot forge its Origin. Every request's ``Host`` must name this machine (127.0.0.1, localhost, ::1 or the configured
host), which defeats DNS rebinding. GET pages never change state.

A wallet unlocked in a session (:meth:`Ui.unlock`) keeps the decrypted key in this process's memory
only, attached to that session, and drops it on :meth:`Ui.lock`, after :data:`UNLOCK_IDLE_S`
seconds without a request from that session, or when the process exits; the password itself is
never kept. Nothing here reads a keystore's secret without its password.
"""

from __future__ import annotations

import hmac
import json
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jinja2
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.templating import Jinja2Templates

from qoin.crypto import keystore
from qoin.crypto.address import Address
from qoin.crypto.hybrid import HybridKeyPair
from qoin.errors import QoinError
from qoin.rpc.client import RpcClient

SESSION_COOKIE = "qoin_session"
"""The cookie holding the session token."""
SESSION_HEADER = "X-Qoin-Session"
"""The header a state-changing request repeats the token in."""
SESSION_IDLE_S = 12 * 3600.0
"""A session unused this long is forgotten."""
UNLOCK_IDLE_S = 15 * 60.0
"""An unlocked wallet unused this long is locked (its key dropped from memory)."""
SWEEP_S = 2.0
"""How often idle keys and sessions are looked for while a wallet is unlocked (seconds)."""
MAX_SESSIONS = 1024
"""Sessions held at most; the least recently used one whose cookie never came back (a request
another site made the browser send) is dropped first, then the least recently used."""
MAX_BODY = 1024 * 1024
"""The largest request body by default (bytes); a page module may allow more on its paths
(:meth:`Ui.allow_body`)."""
RPC_TIMEOUT_S = 15.0
"""How long one call to the node may take."""
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"
NAV: tuple[tuple[str, str], ...] = (
    ("/", "Explorer"),
    ("/wallet", "Wallet"),
    ("/storage", "Storage"),
    ("/compute", "Compute"),
    ("/sites", "Sites"),
    ("/mining", "Mining"),
)
"""The navigation bar: (path, label)."""


class WebError(QoinError):
    """The web UI cannot do what was asked (its message is shown to the user)."""


@dataclass(frozen=True)
class WebConfig:
    """How ``qoin web`` reaches the node and where it keeps things."""

    rpc: str
    """The node's user JSON-RPC URL (``http://127.0.0.1:8645/``)."""
    consensus_rpc: str | None
    """The consensus client's JSON-RPC URL (mining and network pages), if known."""
    keystore_dir: Path
    """Where wallets (keystore files, ``ADDRESS.json``) are created, imported and listed."""
    datadir: Path
    """The UI's own data (caches)."""
    host: str = "127.0.0.1"
    """The address the server listens on."""
    port: int = 0
    """Its port (0: any free port)."""


@dataclass
class Session:
    """One browser's session. Held in memory only."""

    token: str
    """The random token (cookie and header)."""
    last_seen: float
    """``time.monotonic()`` of its last request."""
    keypair: HybridKeyPair | None = None
    """The unlocked wallet's key, or None (locked)."""
    unlocked_at: float = 0.0
    """When the key was last used (monotonic), for the idle expiry."""
    data: dict[str, Any] = field(default_factory=dict)
    """What page modules keep for the session (small values)."""
    confirmed: bool = False
    """Whether its cookie came back (a browser of ours holds it)."""

    @property
    def address(self) -> Address | None:
        """The unlocked wallet's address, or None."""
        return None if self.keypair is None else self.keypair.address


@dataclass(frozen=True)
class KeystoreEntry:
    """A keystore file in the keystore directory (its public part only)."""

    address: Address
    path: Path


def shor(amount: Any) -> str:
    """An amount in Shor with thousands separators (templates: ``|shor``)."""
    if isinstance(amount, int) and not isinstance(amount, bool):
        return f"{amount:,} Shor"
    return "?"


def short(text: Any, keep: int = 10) -> str:
    """A long hash or address cut in the middle (templates: ``|short``)."""
    value = str(text)
    return value if len(value) <= 2 * keep + 1 else f"{value[:keep]}…{value[-keep:]}"


def when(ms: Any) -> str:
    """A timestamp in milliseconds as UTC (templates: ``|when``)."""
    if not isinstance(ms, int) or isinstance(ms, bool) or not 0 <= ms < 2**53:
        return "?"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.ChainableUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["shor"] = shor
    env.filters["short"] = short
    env.filters["when"] = when
    env.filters["tojson_compact"] = lambda v: json.dumps(v, sort_keys=True)
    return env


class Ui:
    """The context every page module's ``routes(ui)`` gets."""

    def __init__(self, config: WebConfig) -> None:
        self.config = config
        self.rpc = RpcClient(config.rpc, timeout=RPC_TIMEOUT_S)
        """The node's user JSON-RPC."""
        self.consensus = (
            RpcClient(config.consensus_rpc, timeout=RPC_TIMEOUT_S) if config.consensus_rpc else None
        )
        """The consensus client's JSON-RPC, or None when not given."""
        self.templates = Jinja2Templates(env=_environment())
        self.body_limits: dict[str, int] = {}
        """Path prefixes allowed a larger body than :data:`MAX_BODY` (:meth:`allow_body`)."""
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._sweeper: threading.Thread | None = None

    def close(self) -> None:
        """Close the RPC clients and drop every session (and its key)."""
        self.rpc.close()
        if self.consensus is not None:
            self.consensus.close()
        self._closed.set()
        with self._lock:
            for session in self._sessions.values():
                session.keypair = None
            self._sessions.clear()

    # -- templates -------------------------------------------------------------------------------

    def render(
        self, request: Request, template: str, status_code: int = 200, **ctx: Any
    ) -> Response:
        """Render ``template`` with ``ctx`` plus ``request``, ``session`` (the browser's,
        created if it has none: the cookie is set on the response), ``token``, ``nav``,
        ``config`` and ``address`` (the unlocked wallet's, or None)."""
        session = self.session(request)
        fresh = session is None
        if session is None:
            session = self._new_session()
        context = {
            "session": session,
            "token": session.token,
            "nav": NAV,
            "config": self.config,
            "address": session.address,
            "path": request.url.path,
            **ctx,
        }
        response = self.templates.TemplateResponse(request, template, context, status_code)
        if fresh:
            set_session_cookie(response, session.token)
        return response

    def error(self, request: Request, message: str, status_code: int = 400) -> Response:
        """The error page with ``message``."""
        return self.render(request, "error.html", status_code, message=message)

    def page(self, handler: Callable[[Ui, Request], Response]) -> Callable[[Request], Response]:
        """A Starlette endpoint calling ``handler(ui, request)`` (sync: run on a worker thread, so
        it may call the node's RPC)."""

        def endpoint(request: Request) -> Response:
            return handler(self, request)

        endpoint.__name__ = getattr(handler, "__name__", "page")
        return endpoint

    def action(
        self, handler: Callable[[Ui, Request, Session, dict[str, Any]], Awaitable[dict[str, Any]]]
    ) -> Callable[[Request], Awaitable[Response]]:
        """A POST endpoint for the API: the session token and origin checked
        (:meth:`require_session`), the JSON body read, ``handler(ui, request, session, body)``'s
        dict answered as JSON (an :class:`HTTPException` becomes ``{"error": ...}``)."""

        async def endpoint(request: Request) -> Response:
            body = await self.json_body(request)
            session = self.require_session(request)
            return JSONResponse(await handler(self, request, session, body))

        endpoint.__name__ = getattr(handler, "__name__", "action")
        return endpoint

    # -- sessions --------------------------------------------------------------------------------

    def _new_session(self) -> Session:
        session = Session(secrets.token_urlsafe(32), time.monotonic())
        with self._lock:
            self._sessions[session.token] = session
            while len(self._sessions) > MAX_SESSIONS:
                unconfirmed = (t for t, s in self._sessions.items() if not s.confirmed)
                victim = next(unconfirmed, None) or next(iter(self._sessions))
                self._sessions.pop(victim).keypair = None
        return session

    def session(self, request: HTTPConnection) -> Session | None:
        """The browser's session (from its cookie), or None; an unlocked key idle for
        :data:`UNLOCK_IDLE_S` is dropped here."""
        token = request.cookies.get(SESSION_COOKIE)
        if not token:
            return None
        now = time.monotonic()
        with self._lock:
            session = self._sessions.get(token)
            if session is None:
                return None
            if now - session.last_seen > SESSION_IDLE_S:
                del self._sessions[token]
                session.keypair = None
                return None
            if session.keypair is not None and now - session.unlocked_at > UNLOCK_IDLE_S:
                session.keypair = None
            session.last_seen, session.confirmed = now, True
            self._sessions.move_to_end(token)
            return session

    def require_session(self, request: HTTPConnection) -> Session:
        """The session of a state-changing request; HTTP 403 unless its ``X-Qoin-Session``
        header equals its session cookie's token and it comes from this server's own origin."""
        check_origin(request)
        session = self.session(request)
        header = request.headers.get(SESSION_HEADER, "")
        if session is None or not hmac.compare_digest(header.encode(), session.token.encode()):
            raise HTTPException(403, "refused: no valid session token (reload the page)")
        return session

    def unlocked(self, request: HTTPConnection) -> HybridKeyPair:
        """The unlocked wallet's key of the (checked) session; HTTP 403 when locked."""
        session = self.require_session(request)
        with self._lock:
            if session.keypair is None:
                raise HTTPException(403, "the wallet is locked: unlock it first")
            session.unlocked_at = time.monotonic()
            return session.keypair

    def unlock(self, session: Session, keypair: HybridKeyPair) -> None:
        """Hold ``keypair`` for ``session`` (in memory) until :meth:`lock` or the idle expiry."""
        with self._lock:
            session.keypair = keypair
            session.unlocked_at = time.monotonic()
            if self._sweeper is None and not self._closed.is_set():
                self._sweeper = threading.Thread(
                    target=self._sweep_until_closed, name="web-key-expiry", daemon=True
                )
                self._sweeper.start()

    def sweep(self) -> None:
        """Drop every key unused for :data:`UNLOCK_IDLE_S` and every session unused for
        :data:`SESSION_IDLE_S`, whether or not its browser ever comes back."""
        now = time.monotonic()
        with self._lock:
            for token, session in list(self._sessions.items()):
                if now - session.last_seen > SESSION_IDLE_S:
                    del self._sessions[token]
                    session.keypair = None
                elif session.keypair is not None and now - session.unlocked_at > UNLOCK_IDLE_S:
                    session.keypair = None

    def _sweep_until_closed(self) -> None:
        while not self._closed.wait(SWEEP_S):
            self.sweep()

    def lock(self, session: Session) -> None:
        """Drop the session's key."""
        with self._lock:
            session.keypair = None

    # -- keystores -------------------------------------------------------------------------------

    def keystores(self) -> list[KeystoreEntry]:
        """The keystore files in the keystore directory (public parts; unreadable ones are
        skipped), by address."""
        found: list[KeystoreEntry] = []
        directory = self.config.keystore_dir
        if not directory.is_dir():
            return found
        for path in sorted(directory.glob("*.json"))[:1000]:
            try:
                found.append(KeystoreEntry(keystore.load(path).address, path))
            except keystore.KeystoreError:
                continue
        return found

    def keystore_path(self, address: Address) -> Path:
        """Where the keystore of ``address`` is (or would be) kept."""
        return self.config.keystore_dir / f"{address}.json"

    # -- bodies ----------------------------------------------------------------------------------

    def allow_body(self, prefix: str, limit: int) -> None:
        """Let requests to paths under ``prefix`` carry bodies up to ``limit`` bytes."""
        self.body_limits[prefix] = limit

    async def json_body(self, request: Request) -> dict[str, Any]:
        """The JSON object a state-changing request carries, after :meth:`require_session`;
        HTTP 400 if it is not a JSON object (its size is bounded by the app)."""
        self.require_session(request)
        raw = await request.body()
        try:
            body = json.loads(raw or b"{}")
        except (ValueError, RecursionError):
            raise HTTPException(400, "the request body is not JSON") from None
        if not isinstance(body, dict):
            raise HTTPException(400, "the request body is not a JSON object")
        return body

    def body_limit(self, path: str) -> int:
        """The largest body a request to ``path`` may carry."""
        limits = [limit for prefix, limit in self.body_limits.items() if path.startswith(prefix)]
        return max(limits, default=MAX_BODY)


def set_session_cookie(response: Response, token: str) -> None:
    """The session cookie: HttpOnly, SameSite=Strict, for the whole site, ending with the
    browser session."""
    response.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="strict", path="/")


def host_allowed(host_header: str, configured: str) -> bool:
    """Whether a ``Host`` header names this machine (or the configured host)."""
    host = urlsplit(f"//{host_header}").hostname or ""
    return host in LOCAL_HOSTS or host in {"::1", configured}


def check_origin(request: HTTPConnection) -> None:
    """HTTP 403 unless the request's ``Origin`` (or ``Referer``) is this server's origin, as the
    browser addressed it (``Host``, itself checked to name this machine by the app)."""
    host = request.headers.get("host", "")
    expected = f"{request.url.scheme}://{host}".lower()
    origin = request.headers.get("origin")
    if origin is None:
        referer = request.headers.get("referer")
        if referer is None:
            raise HTTPException(403, "refused: the request names no origin")
        parts = urlsplit(referer)
        origin = f"{parts.scheme}://{parts.netloc}"
    if request.url.scheme in {"ws", "wss"}:
        expected = f"{'https' if request.url.scheme == 'wss' else 'http'}://{host}".lower()
    if origin.lower() != expected:
        raise HTTPException(403, "refused: the request comes from another origin")
