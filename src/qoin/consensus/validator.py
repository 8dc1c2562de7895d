"""Deciding a block's execution validity with untrusted execution clients.

For each block (whose consensus rules already passed) the consensus client:

1. sends ``engine_newPayload`` to every usable execution client, in parallel;
2. if they all answer VALID, samples each one (:mod:`qoin.consensus.sampling`) with a fresh draw
   of its own CSPRNG, made after the answer;
3. on anything else — an INVALID verdict, disagreement, a timeout or error, a failed sample —
   fetches the full witness from a client, checks it against the parent's state root, runs
   :func:`~qoin.execution.witness.execute_stateless` itself and takes that verdict;
4. drops every client whose answer contradicts the verdict it established (or that did not answer,
   or served a bad proof or witness), records it in the data directory so that it stays dropped
   across restarts, and logs why.

ACCEPTED (a client stored a deep side-branch block without executing it) and SYNCING (it lacks the
parent) are not verdicts: such a block goes to re-execution too, and with no witness to be had
(nobody holds its parent's state), :class:`ExecutionUnavailable` says it cannot be decided now,
which is not the same as invalid. A client that serves no proofs for a VALID block (it may not keep
a side block's post-state) is not suspected for that alone: re-execution decides.
"""

from __future__ import annotations

import json
import logging
import random
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from qoin.chain.block import Block
from qoin.consensus.engine import EngineClient, EngineError, PayloadVerdict
from qoin.consensus.sampling import DEFAULT_SAMPLES, SampleFailed, check_sample, draw_sample
from qoin.crypto.batch import default_workers
from qoin.errors import QoinError
from qoin.execution.transition import InvalidExecution, touched_addresses
from qoin.execution.witness import InvalidWitness, execute_stateless
from qoin.files import FileReadError, read_bounded, write_atomically

log = logging.getLogger(__name__)

DROPPED_FILE = "dropped-execution-clients.json"
MAX_DROPPED_FILE = 1024 * 1024
"""The dropped-clients file is read only up to this size (it lists a handful of URLs)."""


class ExecutionUnavailable(QoinError):
    """No execution client could give a verdict or a witness for the block: undecided."""


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
        self.entries[url] = {
            "reason": reason,
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        write_atomically(self.path, (json.dumps(self.entries, indent=2) + "\n").encode())


class ExecutionValidator:
    """Judges blocks with a set of execution clients (see the module docstring)."""

    def __init__(
        self,
        clients: list[EngineClient],
        dropped: DroppedClients,
        samples: int = DEFAULT_SAMPLES,
        rng: random.Random | None = None,
    ) -> None:
        self.clients = clients
        self.dropped = dropped
        self.samples = samples
        self.rng = rng or secrets.SystemRandom()
        self._calls = ThreadPoolExecutor(max(1, len(clients)), thread_name_prefix="engine")
        self._verify = ThreadPoolExecutor(default_workers(), thread_name_prefix="verify")

    @property
    def active(self) -> list[EngineClient]:
        """The clients not dropped."""
        return [client for client in self.clients if client.url not in self.dropped]

    def judge(self, block: Block, parent_root: bytes) -> Judgement:
        """Decide whether ``block`` executes correctly on the state with root ``parent_root``."""
        clients = self.active
        if not clients:
            raise ExecutionUnavailable("every execution client has been dropped")
        futures = {client: self._calls.submit(client.new_payload, block) for client in clients}
        answers: dict[EngineClient, PayloadVerdict] = {}
        suspects: dict[EngineClient, str] = {}
        for client, future in futures.items():
            try:
                answers[client] = future.result()
            except EngineError as exc:
                suspects[client] = f"no verdict: {exc}"
        decided = {c: a for c, a in answers.items() if a.status in ("VALID", "INVALID")}
        statuses = {answer.status for answer in decided.values()}
        unconfirmed = False
        if decided and statuses == {"VALID"} and not suspects:
            for client in decided:
                lie, problem = self._sample(client, block, parent_root)
                if lie:
                    suspects[client] = problem
                elif problem:  # e.g. a side-branch block whose post-state is not materialised
                    log.info("sample of %s unavailable: %s", client.url, problem)
                    unconfirmed = True
            if not suspects and not unconfirmed:
                return Judgement(True, None, "sampled")
        judgement = self._reexecute(block, parent_root, clients, suspects)
        for client, answer in decided.items():
            if (answer.status == "VALID") != judgement.valid and client not in suspects:
                suspects[client] = (
                    f"answered {answer.status} ({answer.reason or 'no reason'}) for block "
                    f"{block.block_hash.hex()[:16]}, which is "
                    f"{'valid' if judgement.valid else 'invalid: ' + str(judgement.reason)}"
                )
        for client, why in suspects.items():
            self._drop(client, why)
        return judgement

    def _sample(self, client: EngineClient, block: Block, parent_root: bytes) -> tuple[bool, str]:
        """Sample ``client``'s VALID: ``(False, "")`` if it held; ``(True, why)`` if the proofs
        contradict it (a lie); ``(False, why)`` if the client served no proofs (not a lie by
        itself: it may not keep the post-state of a side-branch block — re-execution decides)."""
        chosen = draw_sample(touched_addresses(block), self.samples, self.rng)
        if not chosen:
            return False, ""
        what = f"sample of block {block.block_hash.hex()[:16]}"
        try:
            answer = client.get_proofs(block.block_hash, chosen)
        except EngineError as exc:
            return False, f"{what}: no proofs: {exc}"
        try:
            check_sample(parent_root, block, chosen, answer.proofs)
        except SampleFailed as exc:
            return True, f"{what} failed: {exc}"
        return False, ""

    def _reexecute(
        self,
        block: Block,
        parent_root: bytes,
        clients: list[EngineClient],
        suspects: dict[EngineClient, str],
    ) -> Judgement:
        """The verdict of stateless re-execution, with a witness from the first client that
        serves a good one (clients not yet suspected first). A client that serves a witness that
        does not prove the parent state becomes a suspect; one that serves none does not."""
        for client in sorted(clients, key=lambda c: c in suspects):
            try:
                witness = client.get_witness(block.block_hash, block)
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

    def drop(self, client: EngineClient, why: str) -> None:
        """Drop ``client`` for good (logged, and recorded in the data directory)."""
        self._drop(client, why)

    def _drop(self, client: EngineClient, why: str) -> None:
        log.warning("dropping execution client %s: %s", client.url, why)
        self.dropped.drop(client.url, why)

    def close(self) -> None:
        """Stop the worker threads and close the connections."""
        self._calls.shutdown(wait=False, cancel_futures=True)
        self._verify.shutdown(wait=True)
        for client in self.clients:
            client.close()
