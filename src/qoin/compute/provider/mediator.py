"""A mediator's side of a mediation (docs/spec/compute.md §3.6, §5).

The client sends the mediator the spec and the job key right after the deal forms (``POST
/mediate``); they are kept in ``DATADIR/mediations/deal-<id>/``. When ``MediationStarted`` names
the mediator (two revealed roots differ, or the client disputed), it:

1. re-runs the job itself (``run-1/``; staging retried while the deadline allows) -> root R1;
2. if a revealed root equals R1, fetches that replica's outputs (``GET /jobs/{deal}/result`` on
   its provider, authenticated as the mediator; the archive from the storage market, decrypted
   with :func:`qoin.compute.keys.output_master`; :func:`qoin.compute.outputs.unpack` against the
   revealed root): delivered -> **correct result** (every revealed root is R1) or **wrong result**
   (root R1: the others are fined); not delivered -> **not delivered** (zero root: every revealed
   replica is fined);
3. if no revealed root equals R1, runs it again (``run-2/``) -> R2: R2 != R1 -> the job is
   **non-deterministic** (the client's fault); R2 = R1 -> **wrong result** with R1.

Each step is logged with its reasoning; the verdict is sent before the mediation deadline (the
fetches give up :func:`margin_blocks` before it).
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import httpx

from qoin.actors.compute_market import ZERO_HASH
from qoin.compute import keys, market, outputs
from qoin.compute.jobspec import JobSpec
from qoin.compute.market import Phase, VerdictKind
from qoin.compute.provider.jobs import (
    SETTLING_GAS,
    STOP_JOIN_S,
    JobContext,
    JobError,
    JobLog,
    execute,
    keep_job,
    read_spec,
    send,
)
from qoin.crypto.address import Address
from qoin.errors import QoinError
from qoin.files import write_atomically
from qoin.storage import retrieve
from qoin.storage.client import endpoint_url
from qoin.wallet import CallReverted, WalletError

VERDICT_FILE: Final = "verdict.json"
RESULT_TIMEOUT_S: Final = 30.0
"""Seconds one ``GET /jobs/{deal}/result`` may take."""
MAX_RESULT_ANSWER: Final = 256 << 20
RETRY_S: Final = 2.0
"""Between attempts to fetch a replica's result (it may still be storing it)."""
MAX_ARCHIVE: Final = retrieve.MAX_STORED_SIZE
_CID: Final = re.compile(r"[0-9a-f]{64}")


def margin_blocks(mediation_blocks: int) -> int:
    """Blocks before the mediation deadline at which the mediator stops waiting for outputs and
    sends its verdict."""
    return max(5, mediation_blocks // 4)


class _Stopped(Exception):
    pass


@dataclass(frozen=True)
class Revealed:
    """A revealed replica of the deal."""

    index: int
    provider: Address
    root: bytes


class Mediation:
    """One mediation, on its own thread."""

    def __init__(self, ctx: JobContext, directory: Path, deal: int) -> None:
        self.ctx = ctx
        self.directory = directory
        self.deal = deal
        self.stop_event = threading.Event()
        self._thread = threading.Thread(target=self._main, name=f"mediation {deal}", daemon=True)

    def say(self, text: str) -> None:
        self.ctx.log(f"mediation of deal {self.deal}: {text}")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        self._thread.join(STOP_JOIN_S)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _check(self) -> None:
        if self.stop_event.is_set():
            raise _Stopped

    def _main(self) -> None:
        try:
            self._mediate()
        except _Stopped:
            return
        except QoinError as exc:
            self.say(f"gave up: {exc}")

    def _mediate(self) -> None:
        spec, sealed = read_spec(self.directory)
        job_key = keys.open_job_key(self.ctx.kem, sealed, spec.job_hash)
        found = self.ctx.view.get_deal(self.deal)
        if found is None or found.phase is not Phase.MEDIATION:
            self.say("the deal is not in mediation any more")
            return
        give_up = found.deadline - margin_blocks(self.ctx.params.mediation_blocks)
        first = self._run(1, spec, job_key, give_up)
        revealed = [
            Revealed(r.index, r.provider, r.root) for r in found.replicas if r.root is not None
        ]
        for item in revealed:
            same = "equals" if item.root == first else "differs from"
            self.say(
                f"replica {item.index} ({item.provider}) revealed {item.root.hex()[:16]}: it "
                f"{same} the mediator's result"
            )
        matching = [item for item in revealed if item.root == first]
        if matching:
            delivered = False
            for item in matching:
                problem = self._fetch(item, job_key, give_up)
                if problem is None:
                    self.say(f"replica {item.index}'s outputs were fetched and verified")
                    delivered = True
                    break
                self.say(f"replica {item.index}'s outputs could not be had: {problem}")
            if not delivered:
                self._verdict(
                    VerdictKind.NOT_DELIVERED,
                    ZERO_HASH,
                    "the matching result's outputs could not be fetched and verified",
                )
            elif all(item.root == first for item in revealed):
                self._verdict(VerdictKind.CORRECT_RESULT, first, "every revealed root is correct")
            else:
                self._verdict(
                    VerdictKind.WRONG_RESULT, first, "a revealed root differs from the re-run's"
                )
            return
        second = self._run(2, spec, job_key, give_up)
        if second != first:
            self._verdict(
                VerdictKind.NON_DETERMINISTIC,
                ZERO_HASH,
                f"two re-runs gave different roots ({first.hex()[:16]}, {second.hex()[:16]})",
            )
        else:
            self._verdict(
                VerdictKind.WRONG_RESULT,
                first,
                "two re-runs agree and no revealed root equals them",
            )

    def _run(self, number: int, spec: JobSpec, job_key: bytes, give_up: int) -> bytes:
        """Run the job once in ``run-<number>/``; its root. Staging is retried while the
        deadline allows."""
        directory = self.directory / f"run-{number}"
        while True:
            self._check()
            directory.mkdir(parents=True, exist_ok=True)
            log = JobLog(directory, spec.outputs.max_log_bytes)
            self.say(f"re-run {number}: running the job")
            try:
                done = execute(spec, job_key, directory, self.ctx.rpc, log, self.stop_event)
            except JobError as exc:
                self._check()
                if exc.reason != "staging-failed" or self.ctx.height() >= give_up:
                    raise
                self.say(f"re-run {number}: {exc}; trying again")
                self.stop_event.wait(RETRY_S)
                continue
            self._check()
            self.say(
                f"re-run {number}: {done.result.reason} (exit {done.result.exit_code}), root "
                f"{done.root.hex()[:16]}"
            )
            return done.root

    def _result_cid(self, item: Revealed, give_up: int) -> bytes | str:
        """The content id of a replica's stored outputs (``GET /jobs/{deal}/result`` on its
        provider, asked again while it answers 409 and the deadline allows), or why not."""
        ask = self.ctx.view.get_ask(item.provider)
        if ask is None:
            return "its provider has no ask (no endpoint)"
        url = f"{endpoint_url(ask.endpoint)}/compute/v1/jobs/{self.deal}/result"
        last = "no answer"
        while self.ctx.height() < give_up:
            self._check()
            header = keys.auth_header(self.ctx.keypair, ask.provider, self.deal)
            try:
                answer = httpx.get(
                    url,
                    headers={keys.AUTH_HEADER: header},
                    timeout=RESULT_TIMEOUT_S,
                    follow_redirects=False,
                )
                body = answer.json() if len(answer.content) <= MAX_RESULT_ANSWER else {}
            except (httpx.HTTPError, ValueError) as exc:
                last = f"{url}: {exc}"
                self.stop_event.wait(RETRY_S)
                continue
            body = body if isinstance(body, dict) else {}
            text = body.get("cid")
            if answer.status_code == 200:
                if isinstance(text, str) and _CID.fullmatch(text):
                    return bytes.fromhex(text)
                return "its result names no content id"
            last = f"HTTP {answer.status_code}: {body.get('error', '')}"
            if answer.status_code != 409:
                return last
            self.stop_event.wait(RETRY_S)
        return f"no result by height {give_up} ({last})"

    def _fetch(self, item: Revealed, job_key: bytes, give_up: int) -> str | None:
        """Fetch and verify a replica's outputs; None if delivered, else why not."""
        cid = self._result_cid(item, give_up)
        if isinstance(cid, str):
            return cid
        master = keys.output_master(job_key, self.deal, item.index)
        try:
            archive = retrieve.fetch(self.ctx.rpc, cid, master=master, max_size=MAX_ARCHIVE)
        except QoinError as exc:
            return f"its outputs {cid.hex()[:16]} cannot be retrieved: {exc}"
        scratch = Path(tempfile.mkdtemp(prefix="unpack-", dir=self.directory))
        try:
            outputs.unpack(archive, scratch / "out", item.root)
        except QoinError as exc:
            return f"its outputs do not verify against its revealed root: {exc}"
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return None

    def _verdict(self, kind: VerdictKind, root: bytes, why: str) -> None:
        self._check()
        name = kind.name.lower().replace("_", " ")
        self.say(f"verdict: {name} ({why}); root {root.hex()[:16]}")
        try:
            send(self.ctx.wallet, market.verdict(self.deal, kind, root), SETTLING_GAS)
        except CallReverted as exc:
            self.say(f"the verdict was refused: {exc.reason}")
            return
        except WalletError as exc:
            self.say(f"the verdict was not mined: {exc}")
            return
        write_atomically(
            self.directory / VERDICT_FILE,
            json.dumps(
                {"kind": name, "root": root.hex(), "why": why, "time": time.time()}
            ).encode(),
        )
        self.say(f"verdict {name} given")


class Mediations:
    """The mediator's kept specs and running mediations (``DATADIR/mediations/``)."""

    def __init__(self, datadir: Path, ctx: JobContext) -> None:
        self.ctx = ctx
        self.dir = datadir / "mediations"
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._running: dict[int, Mediation] = {}
        self._waiting: set[int] = set()
        self._settled: dict[int, int] = {}
        self._lock = threading.Lock()

    def _path(self, deal: int) -> Path:
        return self.dir / f"deal-{deal}"

    def keep(self, deal: int, spec: bytes, sealed: bytes) -> None:
        """``POST /mediate``: keep the spec and key (start at once if the mediation has)."""
        keep_job(self._path(deal), spec, sealed, {"deal": deal})
        self.ctx.log(f"kept the spec of deal {deal} for a mediation")
        with self._lock:
            waiting = deal in self._waiting
            self._waiting.discard(deal)
        if waiting:
            self.start(deal)

    def start(self, deal: int) -> None:
        """``MediationStarted`` names this mediator: re-run and judge (once)."""
        path = self._path(deal)
        if (path / VERDICT_FILE).exists():
            return
        with self._lock:
            current = self._running.get(deal)
            if current is not None and current.alive:
                return
            if not path.exists():
                self._waiting.add(deal)
                self.ctx.log(
                    f"mediation of deal {deal} started, but its client has not sent the spec "
                    "(POST /mediate): waiting for it"
                )
                return
            mediation = Mediation(self.ctx, path, deal)
            self._running[deal] = mediation
        mediation.start()

    def reconcile(self) -> None:
        """After a (re)start: resume every mediation the chain still has open."""
        for path in sorted(self.dir.iterdir()):
            text = path.name.removeprefix("deal-")
            if not text.isdigit() or (path / VERDICT_FILE).exists():
                continue
            found = self.ctx.view.get_deal(int(text))
            if found is None:
                self.settled(int(text), self.ctx.height())
            elif found.phase is Phase.MEDIATION and found.mediator == self.ctx.keypair.address:
                self.start(int(text))

    def settled(self, deal: int, height: int) -> None:
        """The deal settled: stop its mediation; its files go after the grace period."""
        with self._lock:
            mediation = self._running.pop(deal, None)
            self._waiting.discard(deal)
            if self._path(deal).exists():
                self._settled[deal] = height
        if mediation is not None:
            mediation.stop_event.set()

    def clean(self, height: int, keep_blocks: int) -> None:
        """Delete the files of mediations settled ``keep_blocks`` ago."""
        with self._lock:
            old = [d for d, h in self._settled.items() if h + keep_blocks <= height]
            for deal in old:
                del self._settled[deal]
        for deal in old:
            shutil.rmtree(self._path(deal), ignore_errors=True)

    def stop_all(self) -> None:
        with self._lock:
            running = list(self._running.values())
        for mediation in running:
            mediation.stop()
