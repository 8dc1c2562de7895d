"""Deciding a block's execution validity with untrusted execution clients.

For each block (whose consensus rules already passed) the consensus client:

1. asks every usable execution client for its verdict, in parallel (``engine_newPayload``; a
   remote node over p2p is asked by block hash first, ``engine_getVerdict``, and sent the block
   only if it lacks it: :mod:`qoin.consensus.remote`);
2. if they all answer VALID, samples each one (:mod:`qoin.consensus.sampling`): fetches its trace
   summary of the block (``engine_getTrace``: every step's keys, values as references) and checks
   it against the block, draws keys the trace accessed with a fresh draw of its own CSPRNG, made
   after the answers, fetches their pre and post proofs (``engine_getProofs``), walks their
   histories, fetches the full records of the steps to re-execute (``engine_getSteps``), checks
   them against the summary and re-executes them;
3. on anything else — an INVALID verdict, disagreement, a timeout or error, a failed sample —
   fetches the full witness from a client, checks it against the parent's state root, runs
   :func:`~qoin.execution.witness.execute_stateless` itself and takes that verdict;
4. drops every client whose answer contradicts the verdict it established, or that served a bad
   proof or witness (one that does not verify, or does not even decode), records it in the data
   directory so that it stays dropped across restarts, and logs why.

A client that gives no verdict (it timed out, is unreachable, refused the call or answered
nonsense) is not lying: it is *quarantined* (:class:`Quarantine`) — not asked anything until its
retry time, which backs off exponentially from :data:`QUARANTINE_FIRST_S` to
:data:`QUARANTINE_MAX_S` while it keeps failing — and is back as soon as it answers a call again
(the node then brings it to the head, replaying blocks it lacks). A failure within
:data:`QUARANTINE_MAX_S` of that answer continues the row, so a client that answers one call and
times out on the next is asked once per backoff period, not at every block.

ACCEPTED (a client stored a deep side-branch block without executing it) and SYNCING (it lacks the
parent) are not verdicts: such a block goes to re-execution too, and with no witness to be had
(nobody holds its parent's state), :class:`ExecutionUnavailable` says it cannot be decided now,
which is not the same as invalid. A client that serves no trace, no proofs or no step records for a
VALID block (it may not keep a side block's post-state) is not suspected for that alone:
re-execution decides. One that serves a trace, proofs or records that do not decode, or that fail
the checks (a record missing from its answer or not matching the summary included), is caught
lying.

The clients may change at run time (:meth:`ExecutionJudge.add_client`: remote execution nodes over
p2p, :mod:`qoin.consensus.remote`); the rules are the same for all. The sample itself is
:func:`sample_client`, which also replays a fraud report's statements (:mod:`qoin.consensus.fraud`).
"""

from __future__ import annotations

import json
import logging
import math
import random
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qoin.chain.block import Block
from qoin.consensus.engine import (
    ClientUnavailable,
    EngineClient,
    EngineError,
    MalformedAnswer,
    PayloadVerdict,
)
from qoin.consensus.sampling import (
    DEFAULT_SAMPLES,
    SampleFailed,
    check_sample,
    check_trace,
    draw_sample,
)
from qoin.crypto.batch import default_workers
from qoin.errors import QoinError
from qoin.execution.overlay import StepAccess
from qoin.execution.trace import TraceSummary
from qoin.execution.transition import InvalidExecution, Platform
from qoin.execution.witness import InvalidWitness, execute_stateless
from qoin.files import FileReadError, read_bounded, write_atomically

log = logging.getLogger(__name__)

DROPPED_FILE = "dropped-execution-clients.json"
MAX_DROPPED_FILE = 1024 * 1024
"""The dropped-clients file is read only up to this size (it lists a handful of URLs)."""
QUARANTINE_FIRST_S = 1.0
"""How long a client that failed once is left alone before it is tried again."""
QUARANTINE_MAX_S = 60.0
"""The longest wait between two tries of a client that keeps failing."""


class ExecutionUnavailable(QoinError):
    """No execution client could give a verdict or a witness for the block: undecided."""


def utc_now() -> str:
    """The time now, UTC, as the files and the status show it."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass(frozen=True)
class Judgement:
    """The consensus client's verdict on a block's execution."""

    valid: bool
    """Whether the block executes to the roots its header claims."""
    reason: str | None
    """Why it is invalid."""
    how: str
    """``sampled`` (clients agreed, samples confirmed) or ``stateless`` (decided by
    re-execution from a witness)."""


DropHook = Callable[[EngineClient, str, Block | None], None]
"""Told about a client dropped: the client, why, and the block it lied about (None for a payload
it built)."""
KeyChoice = Callable[[TraceSummary], Sequence[bytes]]
"""Which keys to sample, given the trace summary the client served."""


def sample_client(
    client: EngineClient,
    block: Block,
    parent_root: bytes,
    choose: KeyChoice,
    platform: Platform | None = None,
) -> tuple[bool, str]:
    """Sample ``client``'s VALID for ``block``: fetch its trace summary and check it against the
    block, choose keys (``choose``: a fresh draw, made after the answer; or, to check a fraud
    report, the keys its statements name), fetch their proofs and the step records and check them
    (:func:`~qoin.consensus.sampling.check_sample`). ``(False, "")`` if the sample held;
    ``(True, why)`` if the trace, the proofs or the step records contradict the VALID or do not
    decode (a lie); ``(False, why)`` if the client served no trace, proofs or records (not a lie
    by itself: it may not keep the post-state of a side-branch block, or it did not answer)."""
    what = f"sample of block {block.block_hash.hex()[:16]}"
    block_hash = block.block_hash

    def fetch(indexes: Sequence[int]) -> dict[int, StepAccess]:
        return client.get_steps(block_hash, indexes)

    try:
        summary = client.get_trace(block_hash)
        check_trace(block, summary)  # before any key is drawn or proof asked for
        chosen = list(choose(summary))
        proofs = client.get_proofs(block_hash, chosen).proofs if chosen else {}
        check_sample(parent_root, block, summary, chosen, proofs, platform, fetch, checked=True)
    except MalformedAnswer as exc:
        return True, f"{what}: served a trace, proofs or records that do not decode: {exc}"
    except EngineError as exc:
        return False, f"{what}: no trace, proofs or records: {exc}"
    except SampleFailed as exc:
        return True, f"{what} failed: {exc}"
    return False, ""


class DroppedClients:
    """The execution clients this consensus client caught lying, kept in a JSON file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, dict[str, str]] = {}
        if path.exists():
            try:
                loaded = json.loads(read_bounded(path, MAX_DROPPED_FILE, "dropped-clients file"))
            except (FileReadError, ValueError, RecursionError) as exc:
                raise QoinError(f"cannot read {path}: {exc}") from None
            if not isinstance(loaded, dict) or not all(
                isinstance(entry, dict) for entry in loaded.values()
            ):
                raise QoinError(f"{path} is not a JSON object of URL -> {{reason, at}}")
            self.entries = {
                str(url): {str(k): str(v) for k, v in entry.items()}
                for url, entry in loaded.items()
            }

    def __contains__(self, url: str) -> bool:
        return url in self.entries

    def drop(self, url: str, reason: str) -> None:
        """Remember ``url`` as dropped (written atomically before returning)."""
        self.entries[url] = {"reason": reason, "at": utc_now()}
        write_atomically(self.path, (json.dumps(self.entries, indent=2) + "\n").encode())


@dataclass(frozen=True)
class Quarantined:
    """An execution client left alone for a while because it did not answer."""

    reason: str
    """Its last failure."""
    failures: int
    """Failures in a row (each doubles the wait, up to :data:`QUARANTINE_MAX_S`)."""
    since: str
    """When it first failed in this row (UTC)."""
    retry_at: float
    """When it may be asked again, on the quarantine's clock."""


class Quarantine:
    """Execution clients that did not answer, by URL, each with its next retry time. Bookkeeping
    only (no I/O, an injected clock), safe to use from several threads."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        first_s: float = QUARANTINE_FIRST_S,
        max_s: float = QUARANTINE_MAX_S,
    ) -> None:
        self.clock = clock
        self.first_s = first_s
        self.max_s = max_s
        self._entries: dict[str, Quarantined] = {}
        self._released: dict[str, tuple[float, Quarantined]] = {}
        """Clients that answered again, with when and their last row: a failure within
        ``max_s`` of that answer continues the row (a client that answers one call and times out
        on the next must not be asked at full rate). One entry per client URL at most."""
        self._lock = threading.Lock()

    def fail(self, url: str, reason: str) -> Quarantined:
        """Record a failure of ``url``: quarantined (again), for twice as long as last time (also
        when it answered in between, unless it then stayed well for ``max_s``)."""
        with self._lock:
            last = self._entries.get(url)
            released = self._released.pop(url, None)
            if last is None and released is not None and self.clock() - released[0] < self.max_s:
                last = released[1]
            failures = 1 if last is None else last.failures + 1
            wait = min(self.max_s, self.first_s * 2 ** min(failures - 1, 32))
            entry = Quarantined(
                reason, failures, utc_now() if last is None else last.since, self.clock() + wait
            )
            self._entries[url] = entry
            return entry

    def release(self, url: str) -> bool:
        """``url`` answered: no longer quarantined. Whether it was."""
        with self._lock:
            entry = self._entries.pop(url, None)
            if entry is not None:
                self._released[url] = (self.clock(), entry)
            return entry is not None

    def forget(self, url: str) -> None:
        """Forget ``url``'s failures altogether (a remote node that went away: when it connects
        again it starts afresh, not at the backoff its calls after leaving ran up)."""
        with self._lock:
            self._entries.pop(url, None)
            self._released.pop(url, None)

    def holds(self, url: str) -> bool:
        """Whether ``url`` is quarantined and its retry time has not come."""
        with self._lock:
            entry = self._entries.get(url)
            return entry is not None and self.clock() < entry.retry_at

    def entries(self) -> dict[str, Quarantined]:
        """The quarantined clients now (a copy)."""
        with self._lock:
            return dict(self._entries)

    def retry_in(self, entry: Quarantined) -> float:
        """Seconds until ``entry``'s client may be asked again (0 once due)."""
        return max(0.0, entry.retry_at - self.clock())


class ExecutionJudge:
    """Judges blocks with a set of execution clients (see the module docstring), and keeps track
    of which of them may be asked: not dropped, not quarantined."""

    def __init__(
        self,
        clients: list[EngineClient],
        dropped: DroppedClients,
        samples: int = DEFAULT_SAMPLES,
        rng: random.Random | None = None,
        quarantine: Quarantine | None = None,
        platform: Platform | None = None,
        more_clients: int = 0,
    ) -> None:
        self.clients = list(clients)
        """The clients in use now; replaced whole (never changed in place) when one is added or
        removed, so a reader iterates a consistent list without the lock."""
        self.dropped = dropped
        self.samples = samples
        self.rng = rng or secrets.SystemRandom()
        self.platform = platform
        """What re-executes sampled steps' calls (None: the node's actors and runtime)."""
        self.quarantine = quarantine or Quarantine()
        self._lock = threading.Lock()
        """Guards the dropped list and :attr:`_returned` (status readers run on other threads)."""
        self._returned: set[str] = set()
        """Clients that answered again after a quarantine, not yet brought to the head."""
        self.on_drop: DropHook | None = None
        """Told about every client dropped (e.g. to report a remote one's lie to the network)."""
        self._calls = ThreadPoolExecutor(
            max(1, len(clients) + more_clients), thread_name_prefix="engine"
        )
        self._verify = ThreadPoolExecutor(default_workers(), thread_name_prefix="verify")
        for client in clients:
            client.on_outcome = self._outcome

    @property
    def verifier(self) -> ThreadPoolExecutor:
        """The threads that re-execute blocks statelessly (also used to check fraud reports)."""
        return self._verify

    def add_client(self, client: EngineClient) -> None:
        """Use ``client`` too, from the next block on (e.g. a remote execution node)."""
        client.on_outcome = self._outcome
        with self._lock:
            self.clients = [*self.clients, client]

    def remove_client(self, client: EngineClient) -> None:
        """Stop using ``client`` (a call under way finishes; it is not closed here)."""
        with self._lock:
            self.clients = [c for c in self.clients if c is not client]

    @property
    def active(self) -> list[EngineClient]:
        """The clients that may be asked now: not dropped, and not quarantined (or due for a
        retry)."""
        with self._lock:
            dropped = set(self.dropped.entries)
            clients = self.clients
        return [
            client
            for client in clients
            if client.url not in dropped and not self.quarantine.holds(client.url)
        ]

    def _outcome(self, client: EngineClient, failure: ClientUnavailable | None) -> None:
        """Every engine call's outcome: a failure quarantines the client, an answer ends its
        quarantine."""
        if failure is not None:
            self._quarantine(client, str(failure))
        elif self.quarantine.release(client.url):
            log.warning("execution client %s answers again: back in use", client.url)
            with self._lock:
                self._returned.add(client.url)

    def _quarantine(self, client: EngineClient, why: str) -> None:
        with self._lock:
            if client.url in self.dropped:
                return
        entry = self.quarantine.fail(client.url, why)
        log.warning(
            "quarantining execution client %s for %.0f s (failure %d in a row): %s",
            client.url,
            self.quarantine.retry_in(entry),
            entry.failures,
            why,
        )

    def take_returned(self) -> list[EngineClient]:
        """The clients back from quarantine since the last call (to be brought to the head)."""
        with self._lock:
            returned, self._returned = self._returned, set()
        return [client for client in self.clients if client.url in returned]

    def report(self) -> dict[str, Any]:
        """What ``consensus_status`` shows of the clients: each one's state (``active``,
        ``quarantined`` or ``dropped``), why each dropped one was dropped, when each
        quarantined one is tried again, and each one's calls and bytes (``engineTraffic``)."""
        with self._lock:
            dropped = {url: dict(entry) for url, entry in self.dropped.entries.items()}
        held = self.quarantine.entries()
        states = []
        for client in self.clients:
            state = (
                "dropped"
                if client.url in dropped
                else "quarantined"
                if client.url in held
                else "active"
            )
            states.append({"url": client.url, "active": state == "active", "state": state})
        quarantined = {
            url: {
                "reason": entry.reason,
                "failures": entry.failures,
                "since": entry.since,
                "retryInS": math.ceil(self.quarantine.retry_in(entry) * 10) / 10,  # 0: due now
            }
            for url, entry in held.items()
            if url not in dropped
        }
        return {
            "executionClients": states,
            "dropped": dropped,
            "quarantined": quarantined,
            "engineTraffic": {client.url: client.traffic() for client in self.clients},
        }

    def usable(self) -> dict[str, Any]:
        """What the status shows of the execution clients as a whole: whether one may be asked
        now, else why not."""
        if self.active:
            return {"usable": True, "reason": None}
        return {"usable": False, "reason": self._none_usable()}

    def _none_usable(self) -> str:
        """Why no client can be asked now."""
        if not self.clients:
            return "no execution client is in use (no remote execution node found yet)"
        held = self.quarantine.entries()
        if not held:
            return "every execution client has been dropped"
        soonest = min(self.quarantine.retry_in(entry) for entry in held.values())
        return (
            f"no execution client answers: every one is dropped or quarantined (the next retry "
            f"in {soonest:.0f} s)"
        )

    def judge(self, block: Block, parent_root: bytes) -> Judgement:
        """Decide whether ``block`` executes correctly on the state with root ``parent_root``."""
        clients = self.active
        if not clients:
            raise ExecutionUnavailable(self._none_usable())
        answers = self._verdicts(clients, block)
        decided = {c: a for c, a in answers.items() if a.status in ("VALID", "INVALID")}
        statuses = {answer.status for answer in decided.values()}
        suspects: dict[EngineClient, str] = {}
        if decided and statuses == {"VALID"} and len(answers) == len(clients):
            unconfirmed = False
            for client in decided:
                lie, problem = self._sample(client, block, parent_root)
                if lie:
                    suspects[client] = problem
                elif problem:  # e.g. a side-branch block whose post-state is not materialised
                    log.info("sample of %s unavailable: %s", client.url, problem)
                    unconfirmed = True
            if not suspects and not unconfirmed:
                return Judgement(True, None, "sampled")
        try:
            judgement = self._reexecute(block, parent_root, list(answers), suspects)
        finally:
            for client, why in suspects.items():  # caught lying even if nothing was decided
                self._drop(client, why, block)
        for client, answer in decided.items():
            if (answer.status == "VALID") != judgement.valid and client not in suspects:
                self._drop(
                    client,
                    f"answered {answer.status} ({answer.reason or 'no reason'}) for block "
                    f"{block.block_hash.hex()[:16]}, which is "
                    f"{'valid' if judgement.valid else 'invalid: ' + str(judgement.reason)}",
                    block,
                )
        return judgement

    def _verdicts(
        self, clients: list[EngineClient], block: Block
    ) -> dict[EngineClient, PayloadVerdict]:
        """``engine_newPayload`` to every client in parallel; the answers of those that gave one
        (the others are quarantined)."""
        futures = {client: self._calls.submit(client.new_payload, block) for client in clients}
        answers: dict[EngineClient, PayloadVerdict] = {}
        for client, future in futures.items():
            try:
                answers[client] = future.result()
            except ClientUnavailable:  # quarantined already (by its outcome)
                pass
            except EngineError as exc:  # it refused, or answered nonsense: no verdict either
                self._quarantine(client, f"no verdict: {exc}")
        return answers

    def _sample(self, client: EngineClient, block: Block, parent_root: bytes) -> tuple[bool, str]:
        """Sample ``client``'s VALID with keys drawn after its trace came (:func:`sample_client`)."""

        def draw(summary: TraceSummary) -> list[bytes]:
            return draw_sample(summary.keys(), self.samples, self.rng)

        return sample_client(client, block, parent_root, draw, self.platform)

    def _reexecute(
        self,
        block: Block,
        parent_root: bytes,
        clients: list[EngineClient],
        suspects: dict[EngineClient, str],
    ) -> Judgement:
        """The verdict of stateless re-execution, with a witness from the first client that
        serves a good one (clients not yet suspected first). A client that serves a witness that
        does not prove the parent state, or does not decode, becomes a suspect; one that serves
        none does not."""
        for client in sorted(clients, key=lambda c: c in suspects):
            try:
                witness = client.get_witness(block.block_hash, block)
            except MalformedAnswer as exc:
                suspects.setdefault(client, f"served a witness that does not decode: {exc}")
                continue
            except EngineError as exc:  # e.g. it lacks the parent's state: not a lie
                log.info("no witness from %s: %s", client.url, exc)
                continue
            try:
                post_root, receipts_root = execute_stateless(
                    parent_root, block, witness, self._verify
                )
            except InvalidWitness as exc:
                suspects.setdefault(client, f"served a bad witness: {exc}")
                continue
            except InvalidExecution as exc:
                return Judgement(False, f"{type(exc).__name__}: {exc}", "stateless")
            if post_root != block.header.state_root:
                return Judgement(False, "state root mismatch (stateless re-execution)", "stateless")
            if receipts_root != block.header.receipts_root:
                return Judgement(
                    False, "receipts root mismatch (stateless re-execution)", "stateless"
                )
            return Judgement(True, None, "stateless")
        raise ExecutionUnavailable(
            f"no execution client served a usable witness for block {block.block_hash.hex()}"
        )

    def drop_url(self, url: str, why: str) -> None:
        """Record ``url`` as dropped without telling :attr:`on_drop` (a lie another node proved
        and reported already)."""
        log.warning("dropping execution client %s: %s", url, why)
        with self._lock:
            self.dropped.drop(url, why)
        self.quarantine.release(url)

    def drop(self, client: EngineClient, why: str, block: Block | None = None) -> None:
        """Drop ``client`` for good (logged, and recorded in the data directory); ``block``: the
        block it lied about, if any."""
        self._drop(client, why, block)

    def _drop(self, client: EngineClient, why: str, block: Block | None = None) -> None:
        log.warning("dropping execution client %s: %s", client.url, why)
        with self._lock:
            self.dropped.drop(client.url, why)
        self.quarantine.release(client.url)
        if self.on_drop is not None:
            self.on_drop(client, why, block)

    def close(self) -> None:
        """Stop the worker threads and close the connections."""
        self._calls.shutdown(wait=False, cancel_futures=True)
        self._verify.shutdown(wait=True)
        for client in self.clients:
            client.close()
