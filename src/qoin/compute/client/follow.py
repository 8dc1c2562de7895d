"""``run``'s follow (docs/spec/compute.md §6.2): the providers' job states, the live output, the
deal's events to its settlement, the outputs once the result is final, the exit status.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx

from qoin.compute.client.api import LogEnd, LogStream, ProviderApi
from qoin.compute.client.base import (
    CID_POLL_S,
    EXIT_NO_OUTPUTS,
    EXIT_NON_DETERMINISTIC,
    EXIT_UNDELIVERED,
    HEAD_CHECK_S,
    HTTP_ANSWER_S,
    HTTP_CONNECT_S,
    NO_WATCHER,
    POLL_S,
    STALL_S,
    ComputeClientError,
    Watcher,
    head,
)
from qoin.compute.client.records import JobRecord
from qoin.compute.client.results import SavedOutputs, _learn_cid, fetch_outputs
from qoin.compute.client.story import (
    OUTCOMES,
    Cost,
    DealEvent,
    DealFollower,
    DealStory,
    cost_of,
    describe_event,
    story_json,
)
from qoin.compute.client.submit import Submitted
from qoin.compute.jobspec import JobSpec
from qoin.compute.market import Outcome, Phase, VerdictKind
from qoin.errors import QoinError
from qoin.storage.client import NO_PROGRESS, Progress
from qoin.wallet import Wallet


@dataclass(frozen=True)
class RunOutcome:
    """How a job ended: its deal's story, its outputs, its cost and ``run``'s exit status."""

    deal: int
    job: bytes
    story: DealStory
    outputs: SavedOutputs | None
    outputs_error: str
    cost: Cost | None
    exit_code: int
    message: str
    transactions: tuple[str, ...]
    log_end: LogEnd | None
    mediator_error: str = ""

    def to_json(self) -> dict[str, Any]:
        end = self.log_end
        return {
            "deal": self.deal,
            "job": self.job.hex(),
            "exitCode": self.exit_code,
            "message": self.message,
            "events": story_json(self.story),
            "outputs": None if self.outputs is None else self.outputs.to_json(),
            "outputsError": self.outputs_error or None,
            "cost": None if self.cost is None else self.cost.to_json(),
            "transactions": list(self.transactions),
            "log": None
            if end is None
            else {"reason": end.reason, "exitCode": end.exit_code, "detail": end.detail},
            "mediatorError": self.mediator_error or None,
        }


class _Outputs:
    """Fetches the outputs in a thread once the result is final."""

    def __init__(self, target: Callable[[], SavedOutputs]) -> None:
        self.saved: SavedOutputs | None = None
        self.error = ""
        self.started = False
        self._target = target
        self._thread = threading.Thread(target=self._run, name="outputs", daemon=True)

    def start(self) -> None:
        if not self.started:
            self.started = True
            self._thread.start()

    def _run(self) -> None:
        try:
            self.saved = self._target()
        except (QoinError, OSError) as exc:
            self.error = str(exc)

    def join(self) -> None:
        if self.started:
            self._thread.join()


class _Following:
    """The state of :func:`follow` while the deal runs."""

    def __init__(
        self,
        wallet: Wallet,
        submitted: Submitted,
        out: Path,
        jobs: Path,
        watcher: Watcher,
        progress: Progress,
        http: httpx.Client,
    ) -> None:
        self.wallet = wallet
        self.submitted = submitted
        self.out = out
        self.jobs = jobs
        self.watcher = watcher
        self.progress = progress
        self.apis = [
            ProviderApi(http, wallet.keypair, c.provider, c.ask.endpoint)
            for c in submitted.providers
        ]
        self.follower = DealFollower(
            wallet.url, wallet.client, submitted.deal, submitted.formed_height
        )
        self.record = JobRecord(
            submitted.deal, submitted.spec.job_hash, submitted.spec_bytes, submitted.job_key
        )
        self.fetcher: _Outputs | None = None
        self.settled = threading.Event()
        """Set once the deal settled (the fetcher stops asking for the CID)."""
        self.shown: dict[int, set[str]] = {}
        self._lock = threading.Lock()
        self.last_poll = 0.0
        self.last_check = time.monotonic()
        self.last_block = (head(wallet.client), self.last_check)

    @property
    def story(self) -> DealStory:
        return self.follower.story

    def _who(self, index: int) -> str:
        provider = self.apis[index].provider
        return f"replica {index} ({provider})" if len(self.apis) > 1 else str(provider)

    def _shown(self, index: int, state: str) -> bool:
        """Whether ``state`` of replica ``index`` was shown already (it is, from now on)."""
        with self._lock:
            if state in self.shown.setdefault(index, set()):
                return True
            self.shown[index].add(state)
            return False

    def poll_states(self) -> None:
        """Show each replica's job state when it changes (staging, running, failed)."""
        for index, api in enumerate(self.apis):
            try:
                state = api.job(self.submitted.deal)
            except ComputeClientError:
                continue
            if self._shown(index, state.state):
                continue
            who = self._who(index)
            if state.state == "staging":
                self.watcher.phase("stage", f"{who} is staging the inputs")
            elif state.state == "running":
                staged = state.timings.get("stage")
                took = "" if staged is None else f" (staged in {staged:.2f} s)"
                self.watcher.phase("run", f"{who} is running the job{took}")
            elif state.state == "failed":
                detail = f": {state.detail}" if state.detail else ""
                self.watcher.phase("run", f"{who} failed: {state.reason}{detail}")

    def on_output(self, stream: str, data: bytes) -> None:
        """Replica 0's live output (the first piece says the job runs)."""
        if not self._shown(0, "running"):
            self.watcher.phase("run", f"{self._who(0)} is running the job; its output follows")
        self.watcher.output(stream, data)

    def on_end(self, end: LogEnd) -> None:
        """Replica 0's job ended (its log stream's last frame)."""
        if not self._shown(0, "running"):
            self.watcher.phase("run", f"{self._who(0)} ran the job")
        code = "" if end.exit_code is None else f", exit code {end.exit_code}"
        detail = f": {end.detail}" if end.detail and end.reason != "exited" else ""
        self.watcher.phase("run", f"{self._who(0)}: the job ended ({end.reason}{code}){detail}")

    def show(self, events: Iterable[DealEvent]) -> None:
        for event in events:
            described = describe_event(event, self.story)
            if described is not None:
                self.watcher.phase(*described)

    def fetch(self) -> None:
        """Start fetching the outputs once (when there is a final result)."""
        if self.fetcher is None and self.story.final_root() is not None:
            self.fetcher = _fetcher(
                self.wallet.url, self.apis, self.story, self.record, self.out, self.jobs,
                self.wallet, self.progress, self.on_wait, self.settled,
            )  # fmt: skip
            self.fetcher.start()

    def on_wait(self, message: str) -> None:
        """What the outputs' fetch waits for, and why."""
        self.watcher.phase("outputs", message)

    def step(self) -> None:
        """One round: new events, the providers' states, the node's progress."""
        self.show(self.follower.next())
        if self.story.phase is Phase.CHECK:
            self.fetch()
        now = time.monotonic()
        if self.story.phase is Phase.RUN and now - self.last_poll >= POLL_S:
            self.last_poll = now
            self.poll_states()
        if now - self.last_check >= HEAD_CHECK_S:
            self.last_check = now
            self.check_head(now)

    def check_head(self, now: float) -> None:
        """Read events the subscription may have missed once the phase's deadline has passed;
        give up when the node makes no block (or cannot be asked) for :data:`STALL_S`."""
        try:
            height = head(self.wallet.client)
            if height != self.last_block[0]:
                self.last_block = (height, now)
                if height > self.story.deadline + 2:
                    self.show(self.follower.catch_up())
                return
            why = "made no block"
        except ComputeClientError as exc:
            why = f"could not be asked ({exc})"
        if now - self.last_block[1] > STALL_S:
            raise ComputeClientError(
                f"the node at {self.wallet.url} {why} for {STALL_S:g} s while following deal "
                f"{self.submitted.deal} (qoin compute status {self.submitted.deal})"
            )


def follow(
    wallet: Wallet,
    submitted: Submitted,
    out: Path,
    jobs: Path,
    watcher: Watcher = NO_WATCHER,
    progress: Progress = NO_PROGRESS,
) -> RunOutcome:
    """Follow a formed deal to its settlement (see the module docstring): phases, live logs,
    outputs into ``out``, the cost."""
    deal_id = submitted.deal
    http = httpx.Client(
        timeout=httpx.Timeout(HTTP_ANSWER_S, connect=HTTP_CONNECT_S), follow_redirects=False
    )
    run = _Following(wallet, submitted, out, jobs, watcher, progress, http)
    stream = LogStream(
        run.apis[0],
        deal_id,
        submitted.job_key,
        0,
        run.on_output,
        on_end=run.on_end,
        on_refused=lambda why: watcher.phase("run", f"the live output stops: {why}"),
    ).start()
    try:
        while run.story.settled is None:
            run.step()
        run.settled.set()
        run.fetch()
        if run.fetcher is not None:
            run.fetcher.join()
        stream.join(timeout=2.0)
    finally:
        stream.stop()
        run.follower.close()
        http.close()
    story = run.story
    cost = cost_of(story, submitted.bid.deposit, submitted.tx_fees, submitted.params)
    saved = None if run.fetcher is None else run.fetcher.saved
    error = "" if run.fetcher is None else run.fetcher.error
    code, message = _ending(story, saved, error)
    return RunOutcome(
        deal=deal_id,
        job=submitted.spec.job_hash,
        story=story,
        outputs=saved,
        outputs_error=error,
        cost=cost,
        exit_code=code,
        message=message,
        transactions=submitted.transactions,
        log_end=stream.end,
        mediator_error=submitted.mediator_error,
    )


def _fetcher(
    rpc: str,
    apis: Sequence[ProviderApi],
    story: DealStory,
    record: JobRecord,
    out: Path,
    jobs: Path,
    wallet: Wallet,
    progress: Progress,
    on_wait: Callable[[str], None] | None = None,
    settled: threading.Event | None = None,
) -> _Outputs:
    """The thread that fetches the final result's outputs (:func:`fetch_outputs`) and keeps the
    CID of their copy in the storage market in the job record: once the provider names it, asked
    until ``settled`` is set (the deal settled), so that ``get`` can fetch them once the provider
    no longer keeps them."""
    final = story.final_root()
    if final is None:  # callers check first
        raise ComputeClientError("no result to fetch")
    replica, root = final

    def fetch() -> SavedOutputs:
        api = apis[replica]
        saved = fetch_outputs(
            rpc, api, story.deal_id, replica, root, record.job_key, out,
            progress=progress, limits=JobSpec.decode(record.spec).outputs, on_wait=on_wait,
        )  # fmt: skip
        while not saved.cid:
            cid, _ = _learn_cid(api, story.deal_id, root)
            if cid is not None:
                saved = replace(saved, cid=cid)
            elif settled is None or settled.wait(CID_POLL_S):
                break
        if saved.cid:
            updated = replace(record, outputs={**record.outputs, replica: saved.cid})
            with contextlib.suppress(OSError):
                updated.save(jobs, wallet.keypair)
        return saved

    return _Outputs(fetch)


def _ending(story: DealStory, saved: SavedOutputs | None, error: str) -> tuple[int, str]:
    """``run``'s exit status and last words."""
    settled = story.settled
    if settled is not None and settled[0] in (Outcome.UNDELIVERED, Outcome.MEDIATION_TIMED_OUT):
        return EXIT_UNDELIVERED, (
            f"no result: deal {story.deal_id} settled {OUTCOMES[settled[0]]}; "
            f"{settled[2]} Shor refunded"
        )
    if story.verdict is not None and story.verdict[0] is VerdictKind.NON_DETERMINISTIC:
        where = f"; replica outputs in {saved.out}" if saved is not None else ""
        return EXIT_NON_DETERMINISTIC, (
            "the mediator judged the job non-deterministic (its results differ from run to run): "
            f"the providers were paid{where}"
        )
    if saved is None:
        if not error:
            error = (
                "no result revealed"
                if story.final_root() is None
                else f"not fetched; try: qoin compute get {story.deal_id} --out DIR"
            )
        return EXIT_NO_OUTPUTS, f"the outputs could not be had: {error}"
    code = saved.job_exit
    how = (
        f"exited with {saved.exit_code}"
        if saved.reason == "exited"
        else f"stopped: {saved.reason} (exit status {code})"
    )
    return code, f"the job {how}; outputs in {saved.out}"
