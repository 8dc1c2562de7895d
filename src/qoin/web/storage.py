"""The storage pages: upload a file with a progress bar, the wallet's files (deals) with their shards,
providers, proofs and payments, download, cancel. Also the background tasks the market pages share
(:class:`Tasks`: a store, a compute job, an AI training run, a site's publication), followed live by
the task page (``/tasks/ID``) over polling.

Upload: the browser streams the file's bytes as the body of ``POST /api/storage/upload`` (the
session token in its header; at most :data:`MAX_UPLOAD` bytes, counted as they arrive) into a
temporary file under the UI's data directory; a task then stores it with
:func:`qoin.storage.client.put` under the session's unlocked key (encrypted to it unless told not
to), reporting each stage (hashing, every shard's upload) as a bar the task page polls.

Every state-changing or key-using request is a POST passing :meth:`~qoin.web.ui.Ui.unlocked`
(the session token header, this origin); downloads too (the page fetches them and saves the blob),
since they use the session's key to decrypt. GET pages only read the chain.
"""

from __future__ import annotations

import secrets
import tempfile
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from qoin.crypto.hybrid import HybridKeyPair
from qoin.errors import QoinError
from qoin.files import FileReadError, read_bounded
from qoin.storage import client, crypt, retrieve
from qoin.storage.client import PutOptions, StorageClientError
from qoin.storage.market import MarketView
from qoin.wallet import Wallet
from qoin.web.ui import Session, Ui

MAX_UPLOAD: Final = 256 * 1024 * 1024
"""The largest file the UI stores (bytes; ``qoin storage put`` takes up to 1 GiB)."""
MAX_DOWNLOAD: Final = 256 * 1024 * 1024
"""The largest file the UI retrieves (bytes)."""
MAX_TASKS: Final = 200
"""Tasks remembered; the oldest finished ones are forgotten first."""
MAX_OUTPUT: Final = 256 * 1024
"""Bytes of a task's live output kept (the latest)."""
MAX_PHASES: Final = 500
"""Phase lines a task keeps (the latest)."""
MAX_NAME: Final = 200
"""The longest file name shown for an upload."""
UPLOADS: Final = "uploads"
"""Where uploads are spooled, under the UI's data directory."""


# -- background tasks ------------------------------------------------------------------------------


@dataclass
class Bar:
    """One progress bar of a task (a :class:`~qoin.storage.client.ProgressTask`)."""

    description: str
    total: int
    done: int = 0
    note: str = ""
    finished: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def advance(self, amount: int) -> None:
        """``amount`` more units done."""
        with self._lock:
            self.done = min(self.total, self.done + amount)

    def reset(self) -> None:
        """Start over (a retried upload)."""
        with self._lock:
            self.done, self.note = 0, "retrying"

    def done_(self, note: str = "") -> None:
        with self._lock:
            self.finished, self.note = True, note
            if not note:
                self.done = self.total

    def to_json(self) -> dict[str, Any]:
        """The bar in JSON."""
        with self._lock:
            return {
                "description": self.description,
                "total": self.total,
                "done": self.done,
                "note": self.note,
                "finished": self.finished,
            }


class _BarHandle:
    """The :class:`~qoin.storage.client.ProgressTask` face of a :class:`Bar`."""

    def __init__(self, bar: Bar) -> None:
        self._bar = bar

    def advance(self, amount: int) -> None:
        self._bar.advance(amount)

    def reset(self) -> None:
        self._bar.reset()

    def done(self, note: str = "") -> None:
        self._bar.done_(note)


class Task:
    """Work run in a thread for one session: its phases, progress bars, live output, the epochs
    of a training run, and its result or error. It is a :class:`~qoin.storage.client.Progress`
    and a :class:`~qoin.compute.client.Watcher`."""

    def __init__(self, task_id: str, owner: str, kind: str, title: str) -> None:
        self.id = task_id
        self.owner = owner
        """The session token it belongs to."""
        self.kind = kind
        """``storage``, ``compute``, ``train`` or ``site``."""
        self.title = title
        self.started = time.time()
        self.state = "running"
        """``running``, ``done`` or ``failed``."""
        self.result: dict[str, Any] | None = None
        self.error = ""
        self.files: dict[str, Path] = {}
        """Result files the session may download (name -> path)."""
        self._phases: list[dict[str, Any]] = []
        self._bars: list[Bar] = []
        self._output = bytearray()
        self._output_start = 0
        self.history: list[dict[str, Any]] = []
        """Epochs of a training run (``{"epoch", "loss", ...}``)."""
        self._lock = threading.Lock()

    # Progress
    def task(self, description: str, total: int) -> _BarHandle:
        """A new progress bar."""
        bar = Bar(description, max(0, total))
        with self._lock:
            self._bars.append(bar)
            del self._bars[:-64]
        return _BarHandle(bar)

    # Watcher
    def phase(self, phase: str, message: str) -> None:
        """A phase line."""
        with self._lock:
            self._phases.append({"phase": phase, "message": message[:2000], "at": time.time()})
            del self._phases[:-MAX_PHASES]

    def output(self, stream: str, data: bytes) -> None:
        """Live output of the job (``stream`` is stdout or stderr)."""
        with self._lock:
            self._output += data
            extra = len(self._output) - MAX_OUTPUT
            if extra > 0:
                del self._output[:extra]
                self._output_start += extra

    def to_json(self, since: int = 0) -> dict[str, Any]:
        """The task as the page polls it: its output from byte ``since`` on."""
        with self._lock:
            start = max(since, self._output_start)
            offset = start - self._output_start
            return {
                "id": self.id,
                "kind": self.kind,
                "title": self.title,
                "state": self.state,
                "started": self.started,
                "phases": list(self._phases),
                "bars": [bar.to_json() for bar in self._bars],
                "output": bytes(self._output[offset:]).decode("utf-8", "replace"),
                "outputFrom": start,
                "outputEnd": self._output_start + len(self._output),
                "history": list(self.history),
                "result": self.result,
                "error": self.error or None,
                "files": sorted(self.files),
            }


class Tasks:
    """The tasks of every session (thread-safe, bounded)."""

    def __init__(self) -> None:
        self._tasks: OrderedDict[str, Task] = OrderedDict()
        self._lock = threading.Lock()

    def start(
        self, owner: Session, kind: str, title: str, work: Callable[[Task], dict[str, Any]]
    ) -> Task:
        """Run ``work(task)`` in a thread; its answer becomes the task's result, a
        :class:`QoinError` (or ``OSError``) its error."""
        task = Task(secrets.token_urlsafe(12), owner.token, kind, title)
        with self._lock:
            self._tasks[task.id] = task
            finished = [k for k, t in self._tasks.items() if t.state != "running"]
            while len(self._tasks) > MAX_TASKS and finished:
                self._tasks.pop(finished.pop(0), None)

        def run() -> None:
            try:
                result = work(task)
            except (QoinError, OSError) as exc:
                task.error, task.state = str(exc) or type(exc).__name__, "failed"
                task.phase("failed", task.error)
            except Exception as exc:  # a task must end, and say how, whatever went wrong
                task.error, task.state = f"{type(exc).__name__}: {exc}", "failed"
                task.phase("failed", task.error)
            else:  # a work that set an error (a job that failed) ends failed, with its result
                task.result, task.state = result, "failed" if task.error else "done"

        threading.Thread(target=run, name=f"task-{kind}", daemon=True).start()
        return task

    def get(self, task_id: str, owner: Session) -> Task:
        """The session's task; HTTP 404 if there is none by that id."""
        with self._lock:
            task = self._tasks.get(task_id)
        if task is None or not secrets.compare_digest(task.owner, owner.token):
            raise HTTPException(404, f"no task {task_id[:40]!r} in this session")
        return task

    def of(self, owner: Session | None, kind: str | None = None) -> list[Task]:
        """The session's tasks (of ``kind``), newest first."""
        if owner is None:
            return []
        with self._lock:
            found = [t for t in self._tasks.values() if t.owner == owner.token]
        return [t for t in reversed(found) if kind is None or t.kind == kind]


_REGISTRIES: weakref.WeakKeyDictionary[Ui, Tasks] = weakref.WeakKeyDictionary()
_REGISTRIES_LOCK = threading.Lock()


def tasks_of(ui: Ui) -> Tasks:
    """The tasks of ``ui`` (one registry per UI, shared by its page modules)."""
    with _REGISTRIES_LOCK:
        found = _REGISTRIES.get(ui)
        if found is None:
            found = _REGISTRIES[ui] = Tasks()
        return found


def int_field(body: dict[str, Any], key: str, default: int, low: int, high: int) -> int:
    """``body[key]`` as an integer in [low, high] (a form sends strings); HTTP 400 otherwise."""
    value = body.get(key, default)
    if value in (None, ""):
        return default
    try:
        number = int(str(value).strip())
    except ValueError:
        raise HTTPException(400, f"{key} is a whole number, not {str(value)[:40]!r}") from None
    if not low <= number <= high:
        raise HTTPException(400, f"{key} is {low} to {high}, got {number}")
    return number


def code_fields(raw: dict[str, Any]) -> tuple[int, int, int]:
    """The ``shards``, ``needed`` and ``duration`` fields of an upload's query: the shards (one
    provider each), the shards that rebuild the content and the periods it is kept for."""
    return (
        int_field(raw, "shards", client.DEFAULT_SHARDS, client.MIN_SHARDS, client.MAX_SHARDS),
        int_field(raw, "needed", client.DEFAULT_NEEDED, 1, client.MAX_SHARDS - 1),
        int_field(raw, "duration", client.DEFAULT_DURATION, 1, 2**32),
    )


def flag(value: Any) -> bool:
    """A checkbox or JSON boolean."""
    return value is True or str(value).lower() in {"1", "true", "on", "yes"}


# -- storing ---------------------------------------------------------------------------------------


def _put(
    ui: Ui, keypair: HybridKeyPair, spool: Path, options: PutOptions, task: Task
) -> dict[str, Any]:
    try:
        data = read_bounded(spool, MAX_UPLOAD, "upload")
    except FileReadError as exc:
        raise StorageClientError(str(exc)) from None
    finally:
        spool.unlink(missing_ok=True)
    task.phase("store", f"storing {len(data)} bytes with the market's providers")
    with MarketView(ui.config.rpc) as view, Wallet(ui.config.rpc, keypair) as wallet:
        client.check_options(options, view.params())
        result = client.put(wallet, view, data, options, task)
    answer = result.to_json()
    task.phase("store", f"stored as {result.cid.hex()} (deal {result.deal})")
    for index, reason in result.failed:
        task.phase("store", f"shard {index} was not uploaded: {reason}")
    return answer


async def spool_body(request: Request, folder: Path, limit: int, suffix: str = "") -> Path:
    """The request's body in a new file in ``folder``, its name ending in ``suffix`` (HTTP 413
    past ``limit`` bytes)."""
    folder.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(  # noqa: SIM115 (closed below, kept on success)
        dir=folder, prefix="upload-", suffix=suffix, delete=False
    )
    path = Path(handle.name)
    size = 0
    try:
        with handle:
            async for piece in request.stream():
                size += len(piece)
                if size > limit:
                    raise HTTPException(413, f"the file is over {limit} bytes")
                handle.write(piece)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


class _Pages:
    """The storage pages' handlers."""

    def __init__(self, ui: Ui) -> None:
        self.ui = ui
        self.tasks = tasks_of(ui)
        self.spool_dir = ui.config.datadir / UPLOADS

    def page(self, ui: Ui, request: Request) -> Response:
        """``GET /storage``: the upload form, the session's uploads, the wallet's deals."""
        session = ui.session(request)
        listing, error = None, ""
        if session is not None and session.address is not None:
            try:
                with MarketView(ui.config.rpc) as view:
                    listing = client.client_deals(view.client, view, session.address)
            except QoinError as exc:
                error = str(exc)
        return ui.render(
            request,
            "storage.html",
            listing=listing,
            error=error,
            tasks=self.tasks.of(session, "storage"),
            defaults={
                "duration": client.DEFAULT_DURATION,
                "shards": client.DEFAULT_SHARDS,
                "needed": client.DEFAULT_NEEDED,
            },
            max_upload=MAX_UPLOAD,
        )

    def content(self, ui: Ui, request: Request) -> Response:
        """``GET /storage/CID``: the deal shard by shard."""
        try:
            cid = client.parse_cid(request.path_params["cid"])
            with MarketView(ui.config.rpc) as view:
                status = client.content_status(view.client, view, cid)
        except client.NotFound as exc:
            raise HTTPException(404, str(exc)) from None
        except StorageClientError as exc:
            raise HTTPException(400, str(exc)) from None
        except QoinError as exc:
            raise HTTPException(502, str(exc)) from None
        session = ui.session(request)
        mine = session is not None and status.client == session.address
        return ui.render(request, "storage_content.html", status=status, mine=mine)

    async def upload(self, request: Request) -> Response:
        """``POST /api/storage/upload?name=&duration=&shards=&needed=&public=``: the body is the
        file; answers the task storing it."""
        ui = self.ui
        session = ui.require_session(request)
        keypair = ui.unlocked(request)
        raw = dict(request.query_params)
        name = raw.get("name", "file")[:MAX_NAME]
        n, k, duration = code_fields(raw)
        options = PutOptions(n=n, k=k, duration=duration, encrypt=not flag(raw.get("public", "")))
        try:
            client.check_code(options.n, options.k)
        except StorageClientError as exc:
            raise HTTPException(400, str(exc)) from None
        spool = await spool_body(request, self.spool_dir, MAX_UPLOAD)
        task = self.tasks.start(
            session, "storage", f"store {name}", lambda t: _put(ui, keypair, spool, options, t)
        )
        return JSONResponse({"task": task.id, "redirect": f"/tasks/{task.id}"})

    def cancel(self, request: Request, body: dict[str, Any]) -> Response:
        """``POST /api/storage/cancel {cid}``."""
        ui = self.ui
        keypair = ui.unlocked(request)
        try:
            cid = client.parse_cid(str(body.get("cid", "")))
            with MarketView(ui.config.rpc) as view, Wallet(ui.config.rpc, keypair) as wallet:
                done = client.cancel(wallet, view, cid)
        except client.NotFound as exc:
            raise HTTPException(404, str(exc)) from None
        except QoinError as exc:
            raise HTTPException(400, str(exc)) from None
        message = f"cancelled {done.kind} {done.id}: {done.refund} Shor refunded"
        return JSONResponse({**done.to_json(), "message": message, "reload": True})

    def download(self, request: Request, body: dict[str, Any]) -> Response:
        """``POST /api/storage/download {cid}``: the file, verified (decrypted with the session's
        key when encrypted)."""
        ui = self.ui
        session = ui.require_session(request)
        try:
            cid = client.parse_cid(str(body.get("cid", "")))
            with MarketView(ui.config.rpc) as view:
                found = retrieve.locate(view, cid)
            if found.size > crypt.encrypted_size(MAX_DOWNLOAD):
                raise StorageClientError(
                    f"{cid.hex()} stores {found.size} bytes: the UI retrieves at most "
                    f"{MAX_DOWNLOAD} (use qoin storage get)"
                )
            master = None
            if found.encrypted:
                if session.keypair is None:
                    raise HTTPException(403, "the file is encrypted: unlock the wallet first")
                master = crypt.master_key(ui.unlocked(request))
            got = retrieve.download(found, master)
        except client.NotFound as exc:
            raise HTTPException(404, str(exc)) from None
        except QoinError as exc:
            raise HTTPException(502, str(exc)) from None
        return attachment(got.data, f"{cid.hex()}.bin")

    def task_page(self, ui: Ui, request: Request) -> Response:
        """``GET /tasks/ID``: a task of this session, followed live."""
        session = ui.session(request)
        if session is None:
            raise HTTPException(404, "no such task in this session")
        task = self.tasks.get(request.path_params["task"], session)
        return ui.render(request, "storage_task.html", task=task)

    def task_state(self, request: Request, body: dict[str, Any]) -> Response:
        """``POST /api/tasks/ID {since}``: the task, its output from byte ``since``."""
        session = self.ui.require_session(request)
        task = self.tasks.get(request.path_params["task"], session)
        return JSONResponse(task.to_json(int_field(body, "since", 0, 0, 2**62)))

    def task_file(self, request: Request, body: dict[str, Any]) -> Response:
        """``POST /api/tasks/ID/file {name}``: one of the task's result files."""
        session = self.ui.require_session(request)
        task = self.tasks.get(request.path_params["task"], session)
        name = str(body.get("name", ""))
        path = task.files.get(name)
        if path is None or not path.is_file():
            raise HTTPException(404, f"the task has no file {name[:80]!r}")
        try:
            data = read_bounded(path, MAX_DOWNLOAD, "result file")
        except FileReadError as exc:
            raise HTTPException(413, str(exc)) from None
        return attachment(data, Path(name).name)


def attachment(data: bytes, filename: str) -> Response:
    """``data`` as a download named ``filename``."""
    safe = "".join(c for c in filename if c.isalnum() or c in "._-")[:100] or "download"
    return Response(
        data,
        media_type="application/octet-stream",
        headers={"content-disposition": f'attachment; filename="{safe}"'},
    )


def routes(ui: Ui) -> list[BaseRoute]:
    """The storage pages, the upload API and the task pages."""
    ui.allow_body("/api/storage/upload", MAX_UPLOAD)
    pages = _Pages(ui)
    return [
        Route("/storage", ui.page(pages.page), methods=["GET"]),
        Route("/storage/{cid}", ui.page(pages.content), methods=["GET"]),
        Route("/api/storage/upload", pages.upload, methods=["POST"]),
        Route("/api/storage/cancel", posted(ui, pages.cancel), methods=["POST"]),
        Route("/api/storage/download", posted(ui, pages.download), methods=["POST"]),
        Route("/tasks/{task}", ui.page(pages.task_page), methods=["GET"]),
        Route("/api/tasks/{task}", posted(ui, pages.task_state), methods=["POST"]),
        Route("/api/tasks/{task}/file", posted(ui, pages.task_file), methods=["POST"]),
    ]


def posted(
    ui: Ui, handler: Callable[[Request, dict[str, Any]], Response]
) -> Callable[[Request], Awaitable[Response]]:
    """A POST endpoint: the session token and origin checked and the JSON body read
    (:meth:`~qoin.web.ui.Ui.json_body`), then ``handler(request, body)`` run on a worker thread
    (it may call the node and the providers) and its response answered as it is (a download's
    bytes, or JSON)."""

    async def endpoint(request: Request) -> Response:
        body = await ui.json_body(request)
        return await run_in_threadpool(handler, request, body)

    endpoint.__name__ = getattr(handler, "__name__", "endpoint")
    return endpoint
