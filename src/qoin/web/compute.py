"""The compute and AI pages: submit a compute job (command, inputs, resources, verification) or an AI
training run (model, dataset, epochs) with the session's unlocked key, then follow it on the task
page: the market's phases (match, stage, run, commit, verify, settle), the live output, a training
run's loss epoch by epoch, the verification and settlement, and the verified result files to
download. *Prepare a dataset* turns an uploaded CSV, text file or zip of an image folder (or
``sklearn:digits``) into a dataset stored encrypted to the session's key, as ``qoin ai prepare``
does (:func:`qoin.ai.jobs.prepare`); the training form offers the datasets and models of the AI
catalog.

A job runs through the compute client exactly as ``qoin compute run`` does
(:func:`qoin.compute.client.prepare`, :func:`~qoin.compute.client.submit`,
:func:`~qoin.compute.client.follow`); a training run as ``qoin ai train`` does
(:func:`qoin.ai.jobs.train`): each in a background task (:mod:`qoin.web.storage`), whose watcher
records the phases and the output. Outputs are saved under the UI's data directory
(``compute/TASK``); job records and the AI catalog live in ``$QOIN_HOME`` as for the commands, so
``qoin compute get`` and ``qoin ai models`` see what the UI ran.
"""

from __future__ import annotations

import dataclasses
import re
import secrets
import shlex
import shutil
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any, Final

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from qoin.ai import catalog
from qoin.ai import jobs as ai_jobs
from qoin.ai.client import (
    ARCHS,
    DEFAULT_BATCH,
    DEFAULT_EPOCHS,
    DEFAULT_LR,
    Resources,
    TrainOptions,
    parse_cid,
)
from qoin.cli.compute import job_options, parse_duration
from qoin.cli.node import qoin_home
from qoin.compute import client as compute
from qoin.compute.client import BadOptions, MarketOptions
from qoin.compute.jobspec import Verification
from qoin.compute.market import ComputeMarketView
from qoin.crypto.hybrid import HybridKeyPair
from qoin.errors import QoinError
from qoin.storage.market import MarketView
from qoin.wallet import Wallet
from qoin.web.storage import UPLOADS, Task, int_field, posted, spool_body, tasks_of
from qoin.web.ui import Session, Ui

OUTPUTS: Final = "compute"
"""Where job outputs are saved, under the UI's data directory (one folder per task)."""
MAX_FILES_LISTED: Final = 1_000
"""Result files a task offers for download at most."""
MAX_LINES: Final = 64
"""Input or environment lines a form may carry."""
VERIFICATIONS: Final = tuple(v.name.lower() for v in Verification)
SOURCES: Final = ("sklearn:digits",)
"""Built-in dataset sources the prepare form offers (besides an uploaded file)."""
MAX_PREPARE_UPLOAD: Final = 256 * 1024 * 1024
"""The largest file the prepare form takes (bytes; larger: ``qoin ai prepare``)."""
MAX_UNZIPPED: Final = 1 << 30
"""The most bytes a zip of images may unpack to."""
MAX_ZIP_FILES: Final = 200_000
"""The most files a zip of images may hold."""
MAX_CATALOG_LISTED: Final = 200
"""Datasets (and models) the training form offers at most, newest first."""
UPLOAD_SUFFIXES: Final = (".csv", ".zip", ".txt")
"""What an uploaded file is: CSV, a zip of an image folder, anything else text."""


class _Watcher:
    """A compute watcher writing into a task."""

    def __init__(self, task: Task) -> None:
        self.task = task

    def phase(self, phase: str, message: str) -> None:
        self.task.phase(phase, message)

    def output(self, stream: str, data: bytes) -> None:
        self.task.output(stream, data)


_EPOCH: Final = re.compile(
    r"epoch (\d+)/(\d+)(?:\s+loss (\S+))?(?:\s+test loss (\S+))?(?:\s+accuracy (\S+))?\s*"
)
"""An epoch line as :func:`qoin.ai.output.describe` words it."""


def _number(text: str | None) -> float | None:
    try:
        return None if text is None else float(text)
    except ValueError:
        return None


class _Training(_Watcher):
    """The watcher of a training run: :func:`qoin.ai.jobs.train` shows each epoch as a line
    (:class:`qoin.ai.output.LossWatcher`); the epochs are kept in the task as they come, for the
    page's loss chart."""

    def __init__(self, task: Task) -> None:
        super().__init__(task)
        self._pending = b""

    def output(self, stream: str, data: bytes) -> None:
        super().output(stream, data)
        if stream != "stdout":
            return
        *lines, rest = (self._pending + data).split(b"\n")
        self._pending = rest[-4096:]
        for line in lines:
            found = _EPOCH.fullmatch(line.decode("utf-8", "replace"))
            if found is not None:
                epoch = {
                    "epoch": int(found[1]),
                    "epochs": int(found[2]),
                    "loss": _number(found[3]),
                    "testLoss": _number(found[4]),
                    "accuracy": _number(found[5]),
                }
                self.task.history = [*self.task.history, epoch][-10_000:]


def _offer_files(task: Task, folder: Path) -> None:
    """Let the session download the files under ``folder``."""
    if not folder.is_dir():
        return
    for path in sorted(folder.rglob("*"))[:MAX_FILES_LISTED]:
        if path.is_file() and not path.is_symlink():
            task.files[str(path.relative_to(folder))] = path


def _lines(value: Any, what: str) -> list[str]:
    text = str(value or "")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) > MAX_LINES:
        raise HTTPException(400, f"at most {MAX_LINES} {what}")
    return lines


def _verification(value: Any) -> str:
    text = str(value or "none").strip().lower()
    if text not in VERIFICATIONS:
        raise HTTPException(400, f"verification is one of {', '.join(VERIFICATIONS)}")
    return text


def _run(
    ui: Ui,
    keypair: HybridKeyPair,
    options: compute.JobOptions,
    market: MarketOptions,
    out: Path,
    task: Task,
) -> dict[str, Any]:
    watcher = _Watcher(task)
    jobs = compute.jobs_dir(qoin_home())
    with (
        ComputeMarketView(ui.config.rpc) as view,
        MarketView(ui.config.rpc) as storage,
        Wallet(ui.config.rpc, keypair) as wallet,
    ):
        task.phase("match", f"reading the book for a job of {len(options.inputs)} input(s)")
        prepared = compute.prepare(view, options, market, keypair, storage)
        task.phase(
            "match",
            f"{len(prepared.ranking.candidates)} provider(s) can take it, "
            f"{len(prepared.ranking.refused)} refused",
        )
        submitted = compute.submit(wallet, view, prepared, jobs, watcher)
        for index, candidate in enumerate(submitted.providers):
            task.phase("match", f"replica {index}: {candidate.provider} ({candidate.ask.endpoint})")
        task.phase("match", f"deal {submitted.deal} formed: {submitted.escrow} Shor held")
        outcome = compute.follow(wallet, submitted, out, jobs, watcher, task)
    _offer_files(task, out)
    task.phase("settle", outcome.message)
    answer = outcome.to_json()
    answer["providers"] = [str(c.provider) for c in submitted.providers]
    if outcome.exit_code:
        task.error = outcome.message
    return answer


def _train(
    ui: Ui,
    keypair: HybridKeyPair,
    options: TrainOptions,
    resources: Resources,
    market: MarketOptions,
    out: Path,
    duration: int,
    task: Task,
) -> dict[str, Any]:
    ctx = ai_jobs.Context(ui.config.rpc, keypair, qoin_home(), _Training(task), task)
    if options.base is not None:
        options = dataclasses.replace(options, arch=ai_jobs.base_arch(ctx, options.base))
    ai_jobs.check_train(ctx, options)
    planned = ai_jobs.plan(ctx, resources, market)
    job = ai_jobs.train_job(ctx, options, resources, planned)
    ai_jobs.check_market(ctx, job, market)
    trained = ai_jobs.train(
        ctx, options, resources, job, market, out, lambda _: out, duration, None
    )
    _offer_files(task, out)
    return trained.to_json()


def _unzip(archive: Path, folder: Path) -> Path:
    """The image folder a zip holds, unpacked into ``folder``: every path checked (relative, no
    ``..``), the files and bytes bounded before anything is written; hidden files and macOS
    metadata left out. A zip of one folder gives that folder. :class:`BadOptions` if it is not
    a zip one can use."""
    try:
        with zipfile.ZipFile(archive) as opened:
            members = [m for m in opened.infolist() if not m.is_dir()]
            if len(members) > MAX_ZIP_FILES:
                raise BadOptions(f"the zip holds over {MAX_ZIP_FILES} files")
            if sum(m.file_size for m in members) > MAX_UNZIPPED:
                raise BadOptions(f"the zip unpacks to over {MAX_UNZIPPED} bytes")
            written = 0
            for member in members:
                name = member.filename
                parts = PurePosixPath(name).parts
                if not parts or name.startswith("/") or "\\" in name or ".." in parts:
                    raise BadOptions(f"the zip holds a path that leaves its folder: {name[:200]!r}")
                if parts[0] == "__MACOSX" or any(part.startswith(".") for part in parts):
                    continue
                target = folder.joinpath(*parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                with opened.open(member) as source, target.open("xb") as out:
                    while piece := source.read(1 << 20):
                        written += len(piece)
                        if written > MAX_UNZIPPED:
                            raise BadOptions(f"the zip unpacks to over {MAX_UNZIPPED} bytes")
                        out.write(piece)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, RuntimeError, EOFError) as exc:
        raise BadOptions(f"the file is not a zip one can unpack: {exc}") from None
    except FileExistsError as exc:
        raise BadOptions(f"the zip holds {exc.filename} twice") from None
    root = folder
    for _ in range(8):  # a zip of one folder (or a folder in a folder): that folder
        inside = list(root.iterdir())
        if len(inside) != 1 or not inside[0].is_dir():
            break
        root = inside[0]
    if not any(path.is_dir() for path in root.iterdir()):
        raise BadOptions(
            "the zip holds no folders: put each class's images in a folder named after it"
        )
    return root


def _prepare(
    ui: Ui,
    keypair: HybridKeyPair,
    source: str,
    name: str | None,
    test_fraction: float,
    seed: int,
    duration: int,
    work: Path,
    task: Task,
) -> dict[str, Any]:
    """Prepare ``source`` (``sklearn:…``, or an uploaded file in ``work``) and store it; ``work``
    is removed at the end."""
    try:
        if source.endswith(".zip") and not source.startswith("sklearn:"):
            task.phase("prepare", "unpacking the zip of images")
            source = str(_unzip(Path(source), work / "images"))
        ctx = ai_jobs.Context(ui.config.rpc, keypair, qoin_home(), _Watcher(task), task)
        task.phase("prepare", f"preparing {name or Path(source).name}")
        prepared = ai_jobs.prepare(ctx, source, name, test_fraction, seed, duration)
    finally:
        if work.name.startswith("prepare-"):
            shutil.rmtree(work, ignore_errors=True)
    task.phase("prepare", f"dataset {prepared.cid} recorded in the catalog")
    return {**prepared.to_json(), "train": f"/compute?data={prepared.cid}"}


def catalog_entries(kind: catalog.Kind) -> tuple[list[catalog.Entry], str]:
    """The catalog's ``kind`` entries, newest first (at most :data:`MAX_CATALOG_LISTED`), and an
    error message when the catalog cannot be read."""
    try:
        entries = catalog.load(catalog.catalog_path(qoin_home()))
    except catalog.CatalogError as exc:
        return [], str(exc)
    found = [e for e in entries if e.kind == kind]
    found.sort(key=lambda e: e.created, reverse=True)
    return found[:MAX_CATALOG_LISTED], ""


def _safe_filename(name: str) -> str:
    """An uploaded file's name, reduced to what a path may hold here."""
    base = PurePosixPath(name.replace("\\", "/")).name
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._")[:100]
    return cleaned or "data"


class _Pages:
    """The compute pages' handlers."""

    def __init__(self, ui: Ui) -> None:
        self.ui = ui
        self.tasks = tasks_of(ui)
        self.outputs = ui.config.datadir / OUTPUTS

    def page(self, ui: Ui, request: Request) -> Response:
        """``GET /compute``: the job and training forms, the session's runs."""
        session = ui.session(request)
        runs = [t for t in self.tasks.of(session) if t.kind in ("compute", "train", "prepare")]
        datasets, error = catalog_entries("dataset")
        models, _ = catalog_entries("model")
        chosen = request.query_params.get("data", "")[:80].strip().lower()
        return ui.render(
            request,
            "compute.html",
            tasks=runs,
            archs=ARCHS,
            verifications=VERIFICATIONS,
            defaults={"epochs": DEFAULT_EPOCHS, "lr": DEFAULT_LR, "batch": DEFAULT_BATCH},
            datasets=datasets,
            models=models,
            catalog_error=error,
            chosen=chosen,
            sources=SOURCES,
            max_prepare=MAX_PREPARE_UPLOAD,
        )

    def _out(self, task_hint: str) -> Path:
        folder = self.outputs / task_hint
        folder.parent.mkdir(parents=True, exist_ok=True)
        return folder

    def run(self, request: Request, body: dict[str, Any]) -> Response:
        """``POST /api/compute/run {command, inputs, env, cpus, memory, gpus, timeout,
        verification, determinism, runtime, executor, image}``."""
        ui = self.ui
        session = ui.require_session(request)
        keypair = ui.unlocked(request)
        try:
            command = shlex.split(str(body.get("command", "")))
        except ValueError as exc:
            raise HTTPException(400, f"the command does not parse: {exc}") from None
        try:
            options = job_options(
                command,
                str(body.get("executor") or "sandbox"),
                str(body.get("image") or ""),
                _lines(body.get("inputs"), "inputs"),
                _lines(body.get("env"), "environment variables"),
                int_field(body, "cpus", 1, 1, 1024),
                str(body.get("memory") or "1GiB"),
                int_field(body, "gpus", 0, 0, 64),
                str(body.get("gpu_model") or ""),
                str(body.get("timeout") or "600"),
                False,
                _verification(body.get("verification")),
                str(body.get("determinism") or "exact"),
                "1GiB",
                10_000,
                "16MiB",
                runtime=str(body.get("runtime") or ""),
            )
            with ComputeMarketView(ui.config.rpc) as view:
                compute.check_options(options.spec(), MarketOptions(), view.params())
        except BadOptions as exc:
            raise HTTPException(400, str(exc)) from None
        except QoinError as exc:
            raise HTTPException(502, str(exc)) from None
        title = f"job: {shlex.join(command)[:80]}"
        task = self.tasks.start(
            session,
            "compute",
            title,
            lambda t: _run(ui, keypair, options, MarketOptions(), self._out(t.id), t),
        )
        return JSONResponse({"task": task.id, "redirect": f"/tasks/{task.id}"})

    def train(self, request: Request, body: dict[str, Any]) -> Response:
        """``POST /api/compute/train {model, data, epochs, lr, batch, seed, cpus, memory,
        timeout, gpu, verification, duration}``."""
        ui = self.ui
        session = ui.require_session(request)
        keypair = ui.unlocked(request)
        try:
            lr = float(str(body.get("lr") or DEFAULT_LR))
        except ValueError:
            raise HTTPException(400, "lr is a number") from None
        typed = str(body.get("data_cid") or "").strip()
        base_text = str(body.get("base") or "").strip()
        try:
            base = parse_cid(base_text, "base model") if base_text else None
            options = TrainOptions(
                # fine-tuning: the architecture is the base model's (read in the task)
                arch="mlp" if base else str(body.get("model") or "").strip().lower(),
                data=parse_cid(typed or str(body.get("data") or ""), "dataset"),
                base=base,
                epochs=int_field(body, "epochs", DEFAULT_EPOCHS, 1, 10**6),
                lr=lr,
                batch=int_field(body, "batch", DEFAULT_BATCH, 1, 10**6),
                seed=int_field(body, "seed", 0, 0, 2**63),
            )
            options.check()
            memory_mib = int_field(body, "memory", 1024, 16, 1 << 30)
            resources = Resources(
                cpus=int_field(body, "cpus", 1, 1, 1024),
                memory=memory_mib << 20,
                timeout=parse_duration(str(body.get("timeout") or "30m")),
                gpu=str(body.get("gpu", "")).lower() in {"1", "true", "on", "yes"},
                verification=Verification[_verification(body.get("verification")).upper()],
            )
        except BadOptions as exc:
            raise HTTPException(400, str(exc)) from None
        duration = int_field(body, "duration", ai_jobs.DEFAULT_DURATION, 1, 2**32)
        what = f"fine-tune {options.base[:12]}…" if options.base else f"train {options.arch}"
        task = self.tasks.start(
            session,
            "train",
            f"{what} on {options.data[:12]}…",
            lambda t: _train(
                ui, keypair, options, resources, MarketOptions(), self._out(t.id), duration, t
            ),
        )
        return JSONResponse({"task": task.id, "redirect": f"/tasks/{task.id}"})

    async def prepare(self, request: Request) -> Response:
        """``POST /api/compute/prepare?source=&filename=&name=&test=&seed=&duration=``:
        ``source`` is ``sklearn:digits`` or ``file`` (the body is then the file: ``.csv``, a
        ``.zip`` of an image folder, else text); answers the task preparing it."""
        ui = self.ui
        session = ui.require_session(request)
        keypair = ui.unlocked(request)
        raw = dict(request.query_params)
        source = raw.get("source", "file")
        name = raw.get("name", "").strip()[:100] or None
        try:
            test_fraction = float(raw.get("test") or 0.2)
        except ValueError:
            raise HTTPException(400, "the test fraction is a number") from None
        if not 0 < test_fraction < 1:
            raise HTTPException(400, f"the test fraction is between 0 and 1, not {test_fraction}")
        seed = int_field(raw, "seed", 0, 0, 2**63)
        duration = int_field(raw, "duration", ai_jobs.DEFAULT_DURATION, 1, 2**32)
        work = ui.config.datadir / UPLOADS / f"prepare-{secrets.token_hex(8)}"
        if source in SOURCES:
            title = source
        elif source == "file":
            filename = _safe_filename(raw.get("filename", ""))
            suffix = Path(filename).suffix.lower()
            if suffix not in UPLOAD_SUFFIXES:
                suffix = ".txt"
            if name is None:
                name = Path(filename).stem[:100] or None
            uploaded = await spool_body(request, work, MAX_PREPARE_UPLOAD, suffix)
            if uploaded.stat().st_size == 0:
                shutil.rmtree(work, ignore_errors=True)
                raise HTTPException(400, "the file is empty: choose a file to prepare")
            source, title = str(uploaded), filename
        else:
            raise HTTPException(400, f"the source is a file or one of {', '.join(SOURCES)}")
        return self._start_prepare(
            session, keypair, source, title, name, test_fraction, seed, duration, work
        )

    def _start_prepare(
        self,
        session: Session,
        keypair: HybridKeyPair,
        source: str,
        title: str,
        name: str | None,
        test_fraction: float,
        seed: int,
        duration: int,
        work: Path,
    ) -> Response:
        ui = self.ui
        task = self.tasks.start(
            session,
            "prepare",
            f"prepare {title[:80]}",
            lambda t: _prepare(ui, keypair, source, name, test_fraction, seed, duration, work, t),
        )
        return JSONResponse({"task": task.id, "redirect": f"/tasks/{task.id}"})


def routes(ui: Ui) -> list[BaseRoute]:
    """The compute page and its APIs (the task page is :mod:`qoin.web.storage`'s)."""
    ui.allow_body("/api/compute/prepare", MAX_PREPARE_UPLOAD)
    pages = _Pages(ui)
    return [
        Route("/compute", ui.page(pages.page), methods=["GET"]),
        Route("/api/compute/prepare", pages.prepare, methods=["POST"]),
        Route("/api/compute/run", posted(ui, pages.run), methods=["POST"]),
        Route("/api/compute/train", posted(ui, pages.train), methods=["POST"]),
    ]
