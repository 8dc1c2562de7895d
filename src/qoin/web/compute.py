"""The compute and AI pages: submit a compute job (command, inputs, resources, verification) or an AI
training run (model, dataset, epochs) with the session's unlocked key, then follow it on the task
page: the market's phases (match, stage, run, commit, verify, settle), the live output, a training
run's loss epoch by epoch, the verification and settlement, and the verified result files to
download.

A job runs through the compute client exactly as ``qoin compute run`` does
(:func:`qoin.compute.client.prepare`, :func:`~qoin.compute.client.submit`,
:func:`~qoin.compute.client.follow`); a training run as ``qoin ai train`` does
(:func:`qoin.ai.jobs.train`): each in a background task (:mod:`qoin.web.storage`), whose watcher
records the phases and the output. Outputs are saved under the UI's data directory
(``compute/TASK``); job records and the AI catalog live in ``$QOIN_HOME`` as for the commands, so
``qoin compute get`` and ``qoin ai models`` see what the UI ran.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any, Final

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

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
from qoin.web.storage import Task, int_field, posted, tasks_of
from qoin.web.ui import Ui

OUTPUTS: Final = "compute"
"""Where job outputs are saved, under the UI's data directory (one folder per task)."""
MAX_FILES_LISTED: Final = 1_000
"""Result files a task offers for download at most."""
MAX_LINES: Final = 64
"""Input or environment lines a form may carry."""
VERIFICATIONS: Final = tuple(v.name.lower() for v in Verification)


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
    ai_jobs.check_train(ctx, options)
    planned = ai_jobs.plan(ctx, resources, market)
    job = ai_jobs.train_job(ctx, options, resources, planned)
    ai_jobs.check_market(ctx, job, market)
    trained = ai_jobs.train(
        ctx, options, resources, job, market, out, lambda _: out, duration, None
    )
    _offer_files(task, out)
    return trained.to_json()


class _Pages:
    """The compute pages' handlers."""

    def __init__(self, ui: Ui) -> None:
        self.ui = ui
        self.tasks = tasks_of(ui)
        self.outputs = ui.config.datadir / OUTPUTS

    def page(self, ui: Ui, request: Request) -> Response:
        """``GET /compute``: the job and training forms, the session's runs."""
        session = ui.session(request)
        runs = [t for t in self.tasks.of(session) if t.kind in ("compute", "train")]
        return ui.render(
            request,
            "compute.html",
            tasks=runs,
            archs=ARCHS,
            verifications=VERIFICATIONS,
            defaults={"epochs": DEFAULT_EPOCHS, "lr": DEFAULT_LR, "batch": DEFAULT_BATCH},
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
        try:
            options = TrainOptions(
                arch=str(body.get("model") or "").strip().lower(),
                data=parse_cid(str(body.get("data") or ""), "dataset"),
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
        task = self.tasks.start(
            session,
            "train",
            f"train {options.arch} on {options.data[:12]}…",
            lambda t: _train(
                ui, keypair, options, resources, MarketOptions(), self._out(t.id), duration, t
            ),
        )
        return JSONResponse({"task": task.id, "redirect": f"/tasks/{task.id}"})


def routes(ui: Ui) -> list[BaseRoute]:
    """The compute page and its APIs (the task page is :mod:`qoin.web.storage`'s)."""
    pages = _Pages(ui)
    return [
        Route("/compute", ui.page(pages.page), methods=["GET"]),
        Route("/api/compute/run", posted(ui, pages.run), methods=["POST"]),
        Route("/api/compute/train", posted(ui, pages.train), methods=["POST"]),
    ]
