"""A mediator's side of a mediation (docs/spec/compute.md §3.6, §5.5).

The client sends the mediator the spec and the job key right after the deal forms (``POST
/mediate``); they are kept in ``DATADIR/mediations/deal-<id>/`` (the first job key sent stays
unless the deal's client signs a replacement: anyone who knows the spec could otherwise swap in a
key under which no replica's outputs decrypt, and have every honest replica fined). When
``MediationStarted`` names the mediator (two revealed roots differ, or the client disputed), it:

1. re-runs the job itself (``run-1/``; staging retried while time is left; a run its executor
   could not start, that matches no revealed root, tried up to :data:`MAX_ATTEMPTS` times) -> R1;
2. if a revealed root equals R1, fetches that replica's outputs (``GET /jobs/{deal}/outputs``
   on its provider, authenticated as the mediator, decrypted with
   :func:`qoin.compute.keys.outputs_transit_master`; else the copy in the storage market by the
   CID ``GET /jobs/{deal}/result`` names, decrypted with :func:`qoin.compute.keys.output_master`;
   either verified with :func:`qoin.compute.outputs.unpack` against the revealed root):
   delivered -> **correct result** (every revealed root is R1) or **wrong result** (root R1: the
   others are fined); not delivered -> **not delivered** (zero root: every revealed replica is
   fined);
3. if no revealed root equals R1: R1 stopped at the job's timeout (wall clock: the machine's
   speed decides it) -> **non-deterministic**; else it runs the job again (``run-2/``) -> R2:
   R2 != R1 -> **non-deterministic** (the client's fault); R2 = R1 -> **wrong result** with R1.

The mediator never judges without a result of its own: no R1 in time, R1 from an executor that
could not start the job (reason ``failed``) that matches no revealed root, or no R2 in time when
one is needed: no verdict (the mediation times out: the mediator loses part of its stake, the
providers keep their collateral). Every run is stopped :func:`margin_blocks` before the mediation
deadline, and so are the fetches; the verdict is sent again until it is mined or the deadline
comes. :func:`decide` is the table; each step is logged with its reasoning.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import httpx

from qoin.actors.compute_market import ZERO_HASH
from qoin.compute import delivery, keys, market, outputs
from qoin.compute.executors import StopReason
from qoin.compute.jobspec import JobSpec
from qoin.compute.market import Phase, VerdictKind
from qoin.compute.provider.jobs import (
    SETTLING_GAS,
    SPEC_FILE,
    STOP_JOIN_S,
    JobContext,
    JobError,
    JobLog,
    OfferRefused,
    execute,
    keep_job,
    read_spec,
    same_job_key,
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
"""Seconds one ``GET /jobs/{deal}/result`` may take, answer included."""
MAX_RESULT_ANSWER: Final = 256 << 20
RETRY_S: Final = 2.0
"""Between attempts to fetch a replica's result (it may still be storing it)."""
MAX_ARCHIVE: Final = retrieve.MAX_STORED_SIZE
MAX_ATTEMPTS: Final = 3
"""Runs of the job whose executor could not start it, at most, before the mediator gives up."""
_CID: Final = re.compile(r"[0-9a-f]{64}")
NOT_VERIFIED: Final = "does not verify against its revealed root"


def margin_blocks(mediation_blocks: int) -> int:
    """Blocks before the mediation deadline at which the mediator stops its runs and its waiting
    for outputs, and sends its verdict."""
    return max(5, mediation_blocks // 4)


class _Stopped(Exception):
    pass


@dataclass(frozen=True)
class Revealed:
    """A revealed replica of the deal."""

    index: int
    provider: Address
    root: bytes


@dataclass(frozen=True)
class OwnRun:
    """One of the mediator's runs of the job."""

    root: bytes
    reason: StopReason
    detail: str = ""


@dataclass(frozen=True)
class Decision:
    """A verdict and why."""

    kind: VerdictKind
    root: bytes
    why: str


def _short(root: bytes) -> str:
    return root.hex()[:16]


def needs_second_run(first: OwnRun, revealed: Sequence[Revealed]) -> bool:
    """Whether :func:`decide` needs a second run: R1 equals no revealed root and is a result
    a second run can confirm (not a timeout, not an executor that could not start it)."""
    return not any(item.root == first.root for item in revealed) and first.reason not in (
        StopReason.TIMEOUT,
        StopReason.FAILED,
    )


def decide(  # noqa: PLR0911 (the verdict table, one return per row)
    first: OwnRun | None,
    revealed: Sequence[Revealed],
    delivered: bool = False,
    second: OwnRun | None = None,
) -> Decision | str:
    """The verdict of docs/spec/compute.md §3.6 / §5.5 from the mediator's own runs (``first``;
    ``second`` where :func:`needs_second_run`), the revealed replicas and whether a replica whose
    root equals R1 delivered its outputs; or why no verdict can be given (a str)."""
    if not revealed:
        return "no replica revealed a root: nothing to judge"
    if first is None:
        return "the mediator has no result of its own in time: it cannot judge"
    if any(item.root == first.root for item in revealed):
        if not delivered:
            return Decision(
                VerdictKind.NOT_DELIVERED,
                ZERO_HASH,
                f"the replica(s) that revealed the mediator's root {_short(first.root)} did not "
                "deliver outputs that verify against it",
            )
        if all(item.root == first.root for item in revealed):
            return Decision(
                VerdictKind.CORRECT_RESULT,
                first.root,
                f"every revealed root equals the mediator's {_short(first.root)}, outputs verified",
            )
        return Decision(
            VerdictKind.WRONG_RESULT,
            first.root,
            f"a revealed root differs from the mediator's {_short(first.root)} (outputs of a "
            "matching replica verified)",
        )
    if first.reason is StopReason.FAILED:
        return (
            f"the mediator's executor could not run the job ({first.detail}) and no replica "
            "revealed that failure: it cannot judge"
        )
    if first.reason is StopReason.TIMEOUT:
        return Decision(
            VerdictKind.NON_DETERMINISTIC,
            ZERO_HASH,
            "the mediator's run reached the job's timeout and equals no revealed root: the "
            "result depends on the machine's speed",
        )
    if second is None:
        return (
            "no revealed root equals the mediator's and a second run did not finish in time: it "
            "cannot tell a wrong result from a non-deterministic job"
        )
    if second.reason is StopReason.FAILED:
        return f"the mediator's second run could not be started ({second.detail}): it cannot judge"
    if second.root != first.root:
        return Decision(
            VerdictKind.NON_DETERMINISTIC,
            ZERO_HASH,
            f"two runs by the mediator gave different roots ({_short(first.root)}, "
            f"{_short(second.root)})",
        )
    return Decision(
        VerdictKind.WRONG_RESULT,
        first.root,
        f"two runs by the mediator agree on {_short(first.root)} and no revealed root equals it",
    )


def bounded_json(
    url: str, headers: dict[str, str], bound: int, timeout_s: float
) -> tuple[int, object]:
    """``GET url`` and its JSON answer, read at most ``bound`` bytes within ``timeout_s``
    seconds in all; (status, answer) as a tuple. :class:`ValueError` if it is longer, slower or
    not JSON; :class:`httpx.HTTPError` if it does not answer."""
    deadline = time.monotonic() + timeout_s
    with httpx.stream(
        "GET", url, headers=headers, timeout=timeout_s, follow_redirects=False
    ) as answer:
        raw = bytearray()
        for piece in answer.iter_bytes():
            raw += piece
            if len(raw) > bound:
                raise ValueError(f"its answer is over {bound} bytes")
            if time.monotonic() > deadline:
                raise ValueError(f"its answer took over {timeout_s:g} s")
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):
            raise ValueError(f"HTTP {answer.status_code}, not JSON") from None
        return answer.status_code, body


class Mediation:
    """One mediation, on its own thread."""

    def __init__(self, ctx: JobContext, directory: Path, deal: int) -> None:
        self.ctx = ctx
        self.directory = directory
        self.deal = deal
        self.stop_event = threading.Event()
        self.run_cancel = threading.Event()
        """Set to stop a run: the daemon stops, or the time for runs is over."""
        self.give_up: int | None = None
        """Height from which runs and fetches stop (known once the deal is read)."""
        self._thread = threading.Thread(target=self._main, name=f"mediation {deal}", daemon=True)

    def say(self, text: str) -> None:
        self.ctx.log(f"mediation of deal {self.deal}: {text}")

    def start(self) -> None:
        self._thread.start()

    def signal_stop(self) -> None:
        self.stop_event.set()
        self.run_cancel.set()

    def stop(self) -> None:
        self.signal_stop()
        self._thread.join(STOP_JOIN_S)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def on_head(self, height: int) -> None:
        """Stop a run once the time for runs is over."""
        if self.give_up is not None and height >= self.give_up and not self.run_cancel.is_set():
            self.say(
                f"height {self.give_up} reached: no more runs or fetches (a run going is "
                "stopped), judging with what it has"
            )
            self.run_cancel.set()

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
            self.say(f"gave up, no verdict: {exc}")

    def _mediate(self) -> None:
        spec, sealed = read_spec(self.directory)
        job_key = keys.open_job_key(self.ctx.kem, sealed, spec.job_hash)
        found = self.ctx.view.get_deal(self.deal)
        if found is None or found.phase is not Phase.MEDIATION:
            self.say("the deal is not in mediation any more")
            return
        give_up = found.deadline - margin_blocks(self.ctx.params.mediation_blocks)
        self.give_up = give_up
        self.say(
            f"re-running the job (runs and fetches stop at height {give_up}, the verdict is due "
            f"before {found.deadline})"
        )
        self.on_head(self.ctx.height())
        revealed = [
            Revealed(r.index, r.provider, r.root) for r in found.replicas if r.root is not None
        ]
        roots = {item.root for item in revealed}
        first = self._own_run(1, spec, job_key, roots)
        delivered = False
        second: OwnRun | None = None
        if first is not None:
            for item in revealed:
                same = "equals" if item.root == first.root else "differs from"
                self.say(
                    f"replica {item.index} ({item.provider}) revealed {_short(item.root)}: it "
                    f"{same} the mediator's result"
                )
            for item in (r for r in revealed if r.root == first.root):
                problem = self._fetch(item, job_key, give_up)
                if problem is None:
                    self.say(f"replica {item.index}'s outputs were fetched and verified")
                    delivered = True
                    break
                self.say(f"replica {item.index}'s outputs could not be had: {problem}")
            if needs_second_run(first, revealed):
                self.say("no revealed root equals the mediator's: running the job again")
                second = self._own_run(2, spec, job_key, roots)
        decision = decide(first, revealed, delivered, second)
        if isinstance(decision, str):
            self.say(f"no verdict: {decision}")
            return
        self._verdict(decision, found.deadline)

    def _own_run(
        self, number: int, spec: JobSpec, job_key: bytes, revealed: set[bytes]
    ) -> OwnRun | None:
        """Run the job in ``run-<number>/``; None if no result came before the runs' time was
        over. Staging is retried while there is time; a run its executor could not start
        (``failed``) whose root no replica revealed, up to :data:`MAX_ATTEMPTS` times."""
        directory = self.directory / f"run-{number}"
        attempts = 0
        while True:
            self._check()
            if self.run_cancel.is_set():
                self.say(f"run {number}: no time left for it")
                return None
            directory.mkdir(parents=True, exist_ok=True)
            log = JobLog(directory, spec.outputs.max_log_bytes)
            self.say(f"run {number}: staging and running the job")
            try:
                done = execute(
                    spec,
                    job_key,
                    directory,
                    self.ctx.rpc,
                    log,
                    self.run_cancel,
                    runtimes=self.ctx.runtimes,
                    gpus=self.ctx.gpus,
                    on_wait=self.say,
                )
            except JobError as exc:
                self._check()
                if exc.reason == "cancelled":
                    self.say(f"run {number}: stopped before a result (no time left)")
                    return None
                if exc.reason != "staging-failed":
                    raise
                self.say(f"run {number}: {exc}; trying again")
                self.run_cancel.wait(RETRY_S)
                continue
            self._check()
            result = done.result
            if result.reason is StopReason.CANCELLED:
                self.say(f"run {number}: stopped before its end (no time left): not a result")
                return None
            self.say(
                f"run {number}: {result.reason} (exit {result.exit_code}), root {_short(done.root)}"
            )
            own = OwnRun(done.root, result.reason, result.detail)
            attempts += 1
            if (
                result.reason is StopReason.FAILED
                and done.root not in revealed
                and attempts < MAX_ATTEMPTS
            ):
                self.say(f"run {number}: its executor could not start it ({result.detail}); again")
                self.run_cancel.wait(RETRY_S)
                continue
            return own

    def _stored_cid(self, url: str, provider: Address) -> bytes | str:
        """The content id of a replica's outputs stored in the storage market (``GET
        /jobs/{deal}/result`` on its provider, once), or why there is none (yet)."""
        header = keys.auth_header(self.ctx.keypair, provider, self.deal)
        try:
            status, body = bounded_json(
                f"{url}/result", {keys.AUTH_HEADER: header}, MAX_RESULT_ANSWER, RESULT_TIMEOUT_S
            )
        except (httpx.HTTPError, ValueError) as exc:
            return f"its result: {exc}"
        body = body if isinstance(body, dict) else {}
        if status != 200:
            return f"its result: HTTP {status}: {str(body.get('error', ''))[:300]}"
        text = body.get("cid")
        if isinstance(text, str) and _CID.fullmatch(text):
            return bytes.fromhex(text)
        return "its outputs are not stored in the storage market (yet)"

    def _direct(self, url: str, item: Revealed, job_key: bytes, scratch: Path) -> str | None:
        """Fetch a replica's outputs archive from its provider (``GET /jobs/{deal}/outputs``,
        sent encrypted under the replica's transit key), decrypt and verify it; None if
        delivered, else why not."""
        header = keys.auth_header(self.ctx.keypair, item.provider, self.deal)
        archive = scratch / "archive"
        master = keys.outputs_transit_master(job_key, self.deal, item.index)
        try:
            delivery.download(
                f"{url}/outputs", {keys.AUTH_HEADER: header}, archive, MAX_ARCHIVE, master
            )
        except delivery.NotServed as exc:
            return f"its provider did not serve them: {exc}"
        except OSError as exc:
            return f"cannot write them here: {exc}"
        try:
            outputs.unpack(archive, scratch / "direct", item.root)
        except QoinError as exc:
            return f"what its provider served {NOT_VERIFIED}: {exc}"
        return None

    def _stored(self, cid: bytes, item: Revealed, job_key: bytes, scratch: Path) -> str | None:
        """Fetch a replica's outputs from the storage market by ``cid``, decrypt and verify
        them; None if delivered, else why not."""
        master = keys.output_master(job_key, self.deal, item.index)
        try:
            archive = retrieve.fetch(self.ctx.rpc, cid, master=master, max_size=MAX_ARCHIVE)
        except QoinError as exc:
            return f"its stored outputs {_short(cid)} cannot be retrieved: {exc}"
        try:
            outputs.unpack(archive, scratch / "stored", item.root)
        except QoinError as exc:
            return f"its stored outputs {NOT_VERIFIED}: {exc}"
        return None

    def _fetch(self, item: Revealed, job_key: bytes, give_up: int) -> str | None:
        """Fetch and verify a replica's outputs: from its provider first, else from the storage
        market by the CID it names; asked again (every :data:`RETRY_S`) until ``give_up``, or
        until both copies were had and neither verifies. None if delivered, else why not."""
        ask = self.ctx.view.get_ask(item.provider)
        if ask is None:
            return "its provider has no ask (no endpoint)"
        url = f"{endpoint_url(ask.endpoint)}/compute/v1/jobs/{self.deal}"
        last = "no answer"
        tried: set[bytes] = set()
        direct_bad = False
        while self.ctx.height() < give_up:
            self._check()
            scratch = Path(tempfile.mkdtemp(prefix="unpack-", dir=self.directory))
            try:
                problems = []
                if not direct_bad:
                    problem = self._direct(url, item, job_key, scratch)
                    if problem is None:
                        return None
                    direct_bad = NOT_VERIFIED in problem
                    problems.append(problem)
                cid = self._stored_cid(url, item.provider)
                if isinstance(cid, str):
                    problems.append(cid)
                elif cid not in tried:
                    tried.add(cid)
                    problem = self._stored(cid, item, job_key, scratch)
                    if problem is None:
                        return None
                    problems.append(problem)
                last = "; ".join(problems) or last
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
            if direct_bad and tried:
                return last  # both copies were had: neither verifies
            self.stop_event.wait(RETRY_S)
        return f"no outputs by height {give_up} ({last})"

    def _verdict(self, decision: Decision, deadline: int) -> None:
        """Send the verdict, again while it is not mined and the deadline has not come."""
        name = decision.kind.name.lower().replace("_", " ")
        self.say(f"verdict: {name} ({decision.why}); root {_short(decision.root)}")
        while True:
            self._check()
            try:
                send(
                    self.ctx.wallet,
                    market.verdict(self.deal, decision.kind, decision.root),
                    SETTLING_GAS,
                )
                break
            except CallReverted as exc:
                found = self.ctx.view.get_deal(self.deal)
                if found is None or found.phase is not Phase.MEDIATION:
                    self.say("the deal left its mediation (a verdict of ours was mined first)")
                    break
                self.say(f"the verdict was refused: {exc}")
                return
            except WalletError as exc:
                if self.ctx.height() >= deadline:
                    self.say(f"the verdict was not mined before the deadline {deadline}: {exc}")
                    return
                self.say(f"the verdict is not mined yet ({exc}); sending it again")
                self.stop_event.wait(RETRY_S)
        write_atomically(
            self.directory / VERDICT_FILE,
            json.dumps(
                {
                    "kind": name,
                    "root": decision.root.hex(),
                    "why": decision.why,
                    "time": time.time(),
                }
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

    def keep(self, deal: int, spec: bytes, sealed: bytes, job_key: bytes, vouched: bool) -> None:
        """``POST /mediate``: keep the spec and key (start at once if the mediation has). The
        first job key sent stays: :class:`~qoin.compute.provider.jobs.OfferRefused` for another
        one unless the deal's client vouched for it (``vouched``) before the mediation began."""
        path = self._path(deal)
        with self._lock:
            if (path / SPEC_FILE).exists():
                if same_job_key(self.ctx.kem, path, job_key):
                    return
                if not vouched:
                    raise OfferRefused(
                        f"deal {deal}'s spec and job key are kept here already, with another job "
                        "key; to replace it, sign this one as the deal's client (X-Qoin-Auth, "
                        "qoin.compute.keys.key_auth_header)"
                    )
                current = self._running.get(deal)
                if current is not None and current.alive:
                    raise OfferRefused(
                        f"the mediation of deal {deal} is under way with the job key first sent"
                    )
            keep_job(path, spec, sealed, {"deal": deal})
            waiting = deal in self._waiting
            self._waiting.discard(deal)
        self.ctx.log(
            f"kept the spec and job key of deal {deal} for a mediation"
            + (" (replaced, vouched for by its client)" if vouched else "")
        )
        if waiting:
            self.start(deal)

    def on_head(self, height: int) -> None:
        """Stop the runs of mediations whose time for runs is over."""
        with self._lock:
            running = list(self._running.values())
        for mediation in running:
            mediation.on_head(height)

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
            mediation.signal_stop()

    def clean(self, height: int, keep_blocks: int) -> None:
        """Delete the files of mediations settled ``keep_blocks`` ago."""
        with self._lock:
            old = [d for d, h in self._settled.items() if h + keep_blocks <= height]
            for deal in old:
                del self._settled[deal]
        for deal in old:
            shutil.rmtree(self._path(deal), ignore_errors=True)

    def stop_all(self) -> None:
        """Stop every mediation: all told at once, then waited for (:data:`STOP_JOIN_S` in all)."""
        with self._lock:
            running = list(self._running.values())
        for mediation in running:
            mediation.signal_stop()
        deadline = time.monotonic() + STOP_JOIN_S
        for mediation in running:
            mediation.join(max(0.0, deadline - time.monotonic()))
