"""Dapp sites in the web UI: a page to publish a folder and to browse the published sites, and the
routes that serve them, ``/site/NAME/...`` (the name resolved through the ``names`` actor) and
``/cid/CID/...`` (:mod:`qoin.sites`).

Publishing: the page packs the chosen folder into the site archive in the browser
(``static/sites.js``: the same canonical format :func:`qoin.sites.unpack` checks, so that the
server refuses anything else) and posts it as the body of ``POST /api/sites/publish``; a task then
stores it and names it with the session's unlocked key (:func:`qoin.sites.publish`), followed on
the task page.

Serving: the archive is fetched from its providers and every byte verified against the content id
(:class:`qoin.sites.SiteStore`, cached by content id under the UI's data directory); a file is
served with its content type, a folder with its ``index.html`` or a listing, a folder asked
without its ``/`` is redirected. The app sandboxes every answer under ``/site/`` and ``/cid/``
into an opaque origin (:data:`qoin.web.app.SITE_CSP`): a site's scripts can neither read the UI's
pages nor use its session. Listings and error pages are rendered without the UI's session or
scripts for the same reason.
"""

from __future__ import annotations

from typing import Any, Final
from urllib.parse import quote

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from qoin import sites
from qoin.crypto.hybrid import HybridKeyPair
from qoin.errors import QoinError
from qoin.sites import BadSite, PublishOptions, SiteNotFound, SiteStore, SiteUnavailable
from qoin.storage import client
from qoin.storage.market import MarketView
from qoin.wallet import Wallet
from qoin.web.storage import Task, code_fields, tasks_of
from qoin.web.ui import Ui

UPLOAD_SLACK: Final = 1024
"""Bytes a published archive's body may carry over :data:`qoin.sites.MAX_SITE_SIZE`."""


def _publish(
    ui: Ui, keypair: HybridKeyPair, archive: bytes, name: str, options: PublishOptions, task: Task
) -> dict[str, Any]:
    task.phase("publish", f"publishing {len(archive)} bytes as {name}")
    with MarketView(ui.config.rpc) as view, Wallet(ui.config.rpc, keypair) as wallet:
        done = sites.publish(wallet, view, archive, name, options, task)
    stored = f"stored as deal {done.deal}" if done.stored else f"stored already by deal {done.deal}"
    task.phase("publish", f"{stored}; name {name} {done.action} (held until {done.expiry})")
    task.phase("publish", f"served at /site/{name}/ and /cid/{done.cid.hex()}/")
    answer = done.to_json()
    answer["url"] = f"/site/{name}/"
    return answer


class _Pages:
    """The sites pages' handlers."""

    def __init__(self, ui: Ui) -> None:
        self.ui = ui
        self.tasks = tasks_of(ui)
        self.store = SiteStore(ui.config.rpc, ui.config.datadir / sites.CACHE_FOLDER)

    def page(self, ui: Ui, request: Request) -> Response:
        """``GET /sites``: the publish form, the sites, the unlocked wallet's names."""
        session = ui.session(request)
        listed: list[sites.SiteEntry] = []
        mine: list[sites.SiteEntry] = []
        error = ""
        try:
            with MarketView(ui.config.rpc) as view:
                _, listed = sites.list_sites(view)
                if session is not None and session.address is not None:
                    _, mine = sites.list_sites(view, session.address)
        except QoinError as exc:
            error = str(exc)
        return ui.render(
            request,
            "sites.html",
            sites=listed,
            mine=mine,
            error=error,
            tasks=self.tasks.of(session, "site"),
            duration=client.DEFAULT_DURATION,
            max_size=sites.MAX_SITE_SIZE,
        )

    async def publish(self, request: Request) -> Response:
        """``POST /api/sites/publish?name=&duration=&shards=&needed=``: the body is the site's
        archive; answers the task publishing it."""
        ui = self.ui
        session = ui.require_session(request)
        keypair = ui.unlocked(request)
        raw = dict(request.query_params)
        name = raw.get("name", "")
        n, k, duration = code_fields(raw)
        options = PublishOptions(n=n, k=k, duration=duration)
        archive = await request.body()
        try:
            sites.checked_name(name)
            client.check_code(options.n, options.k)
            site = sites.unpack(archive)
        except QoinError as exc:
            raise HTTPException(400, str(exc)) from None
        task = self.tasks.start(
            session,
            "site",
            f"publish {name} ({len(site.files)} files)",
            lambda t: _publish(ui, keypair, archive, name, options, t),
        )
        return JSONResponse({"task": task.id, "redirect": f"/tasks/{task.id}"})

    def by_name(self, request: Request) -> Response:
        """``GET /site/NAME/PATH``."""
        name = request.path_params["name"]
        try:
            cid = self.store.resolve(name)
        except QoinError as exc:
            return self._error(request, exc, f"site {name}")
        return self._serve(request, cid, f"site {name}", f"/site/{name}/")

    def by_cid(self, request: Request) -> Response:
        """``GET /cid/CID/PATH``."""
        text = request.path_params["cid"]
        try:
            cid = sites.parse_cid(text)
        except BadSite as exc:
            return self._error(request, exc, "content")
        return self._serve(request, cid, f"content {cid.hex()}", f"/cid/{cid.hex()}/")

    def _serve(self, request: Request, cid: bytes, what: str, root: str) -> Response:
        try:
            site = self.store.site(cid)
        except QoinError as exc:
            return self._error(request, exc, what)
        path = request.path_params.get("path", "")
        found = sites.lookup(site, path)
        if found.kind == "file":
            return Response(found.data, media_type=found.content_type)
        if found.kind == "redirect":
            return RedirectResponse(quote(found.path), status_code=301)
        if found.kind == "listing":
            folder = found.path
            return self.ui.templates.TemplateResponse(
                request,
                "sites_listing.html",
                {
                    "what": what,
                    "root": root,
                    "folder": folder,
                    "entries": [(quote(n), n, d, s) for n, d, s in site.entries(folder)],
                    "cid": cid.hex(),
                },
            )
        return self._page(request, 404, what, f"{path or '/'} is not in {what}")

    def _error(self, request: Request, exc: QoinError, what: str) -> Response:
        status = 502
        if isinstance(exc, SiteNotFound):
            status = 404
        elif isinstance(exc, BadSite):
            status = 400
        elif not isinstance(exc, SiteUnavailable):
            status = 503
        return self._page(request, status, what, str(exc))

    def _page(self, request: Request, status: int, what: str, message: str) -> Response:
        titles = {
            404: "Not found",
            400: "Not a site address",
            502: "Content unavailable",
            503: "Node unavailable",
        }
        return self.ui.templates.TemplateResponse(
            request,
            "sites_error.html",
            {"title": titles.get(status, "Error"), "what": what, "message": message},
            status_code=status,
        )


def routes(ui: Ui) -> list[BaseRoute]:
    """The sites page, the publish API and the routes serving sites."""
    ui.allow_body("/api/sites/publish", sites.MAX_SITE_SIZE + UPLOAD_SLACK)
    pages = _Pages(ui)

    def to_root(request: Request) -> Response:
        return RedirectResponse(quote(request.url.path) + "/", status_code=301)

    return [
        Route("/sites", ui.page(pages.page), methods=["GET"]),
        Route("/api/sites/publish", pages.publish, methods=["POST"]),
        Route("/site/{name}", to_root, methods=["GET"]),
        Route("/site/{name}/{path:path}", pages.by_name, methods=["GET"]),
        Route("/cid/{cid}", to_root, methods=["GET"]),
        Route("/cid/{cid}/{path:path}", pages.by_cid, methods=["GET"]),
    ]
