"""Account state sampling: checking an execution client's VALID from a few of the keys a block
touched (docs/spec/sampling.md).

After an execution client has called a block VALID, the consensus client asks it for the block's
*trace summary* (:class:`~qoin.execution.trace.TraceSummary`: what each step — the cron step,
every transaction, the payouts — read and wrote, each value as a reference: itself if at most 32
bytes, else its SHA3-256), checks it against the block alone (:func:`check_trace`), draws ``k`` of
the keys it accessed with its own CSPRNG (:func:`draw_sample`: account leaves, keys leaves,
contract code, contract and actor storage, the cron queue alike), and asks for each one's proofs
against the parent's state root (*pre*) and the block's state root (*post*). Then
:func:`check_sample`:

1. for each sampled key ``K`` (:func:`plan_sample`), walks the steps in order from the proven
   pre-value of ``K``: every step that accessed ``K`` must have recorded a reference to the running
   value as ``K``'s value before it (a value matches a reference by equality or by hash), and a
   step that changed ``K`` sets the running reference; at the end it must refer to the proven
   post-value;
2. fetches the full records (:class:`~qoin.execution.overlay.StepAccess`, ``engine_getSteps``) of
   exactly the steps to re-execute — every step that changed a sampled key, every step that
   accessed one and records no change at all, every step that records no access — except those
   whose summary carries every value itself, and checks that each matches its summary exactly;
3. re-executes each of them from its recorded pre-values alone
   (:func:`~qoin.execution.transition.replay_step`), which must reproduce the record exactly: the
   same keys with the same values before, the same changes, the same fee;
4. verifies a transaction's hybrid signature when a sampled key is its sender's account leaf or
   keys leaf and the step re-executed for it is that transaction's (so a block of many calls costs
   a few signature checks, not one per transaction).

Everything here is pure (the records are fetched through a callable); the engine calls and the
fallback live in :mod:`qoin.consensus.judge`.
"""

from __future__ import annotations

import bisect
import math
import random
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from qoin.chain.block import Block
from qoin.chain.transaction import Transaction
from qoin.crypto.hybrid import is_valid
from qoin.errors import QoinError
from qoin.execution.account import keys_key, state_key
from qoin.execution.overlay import StepAccess, TraceIncomplete
from qoin.execution.trace import (
    MAX_STEP_RECORDS,
    BlockTrace,
    StepSummary,
    TraceSummary,
    ref_matches,
    show_ref,
    value_ref,
)
from qoin.execution.transition import (
    InvalidExecution,
    Platform,
    decode_keys,
    replay_step,
)
from qoin.state.smt import Proof, ProofError, verify_proof

DEFAULT_SAMPLES = 16
"""Keys sampled per block unless configured otherwise (``--samples``)."""
MAX_SAMPLES = 1024
"""The most keys a consensus client asks proofs for in one call (the execution client's bound)."""


class SampleFailed(QoinError):
    """A sample does not confirm the execution client's verdict; the reason says how."""


class BadSampleProof(SampleFailed):
    """A proof does not verify against the root it must lead to, or is missing."""


class SampleMismatch(SampleFailed):
    """The trace does not fit the proven values, or a re-executed step does not reproduce its
    record (a trace that lacks a key the step reads included)."""


class SampleRuleBroken(SampleFailed):
    """The trace or a re-executed step breaks a rule of the block (a fee payout that is not the
    fees charged, a bad signature, a sender who cannot pay)."""


@dataclass(frozen=True)
class KeyProofs:
    """Proofs of one state key's value before and after a block."""

    pre: Proof
    """Against the parent's state root."""
    post: Proof
    """Against the block's state root."""


def draw_sample(keys: Sequence[bytes], k: int, rng: random.Random | None = None) -> list[bytes]:
    """``k`` distinct keys of ``keys`` (all of them if there are fewer), drawn uniformly; by
    default with the operating system's CSPRNG (a seeded ``random.Random`` is for tests)."""
    chooser = rng or secrets.SystemRandom()
    distinct = list(dict.fromkeys(keys))
    return chooser.sample(distinct, min(k, len(distinct)))


def _step_name(block: Block, index: int) -> str:
    """How a reason names step ``index`` of ``block``."""
    count = len(block.transactions)
    if index == 0:
        return "step 0 (cron)"
    if index <= count:
        return f"step {index} (transaction {index - 1})"
    return f"step {index} (payouts)"


V = TypeVar("V")
AnyTrace = BlockTrace | TraceSummary
"""A full trace or its summary: :func:`check_trace` needs only the keys and fees of each step."""
StepFetch = Callable[[Sequence[int]], Mapping[int, StepAccess]]
"""Fetches the full records of steps by index (``engine_getSteps``, at most
:data:`~qoin.execution.trace.MAX_STEP_RECORDS` a call); a record it does not return fails the
sample."""


def trace_fees(trace: AnyTrace) -> int:
    """The fees the trace says the block's steps charged."""
    return sum(step.fee for step in trace.steps)


def _find(items: Sequence[tuple[bytes, V]], key: bytes) -> tuple[bytes, V] | None:
    """The item of ``key`` in ``items`` (sorted by key, each key once), or None."""
    position = bisect.bisect_left(items, (key,))
    if position < len(items) and items[position][0] == key:
        return items[position]
    return None


def check_trace(block: Block, trace: AnyTrace) -> None:
    """The checks a trace (or its summary) must pass against the block alone, before anything is
    sampled:

    * one step per transaction, plus the cron step and the payout step;
    * the cron and payout steps charge no fee;
    * each transaction's step accesses its sender's account leaf, a transfer's step the
      recipient's account leaf if it moves a value, and the payout step the account leaf of every
      payout recipient paid a non-zero amount (these keys are then in the population sampled);
    * the last coinbase payout is the sum of the fees the steps charged (a lie in a step's fee is
      caught when that step is re-executed).

    Raises :class:`SampleFailed` (a subclass says which)."""
    txs = block.transactions
    steps = trace.steps
    if len(steps) != len(txs) + 2:
        raise SampleMismatch(
            f"the trace has {len(steps)} steps; a block of {len(txs)} transactions has "
            f"{len(txs) + 2}"
        )
    if steps[0].fee or steps[-1].fee:
        raise SampleMismatch("the trace charges a fee in the cron or payout step")
    leaves: dict[bytes, bytes] = {}  # address -> account leaf key (senders recur in a block)
    for index, tx in enumerate(txs, start=1):
        accessed = steps[index].pre
        needed = [(tx.sender, "sender")]
        if isinstance(tx, Transaction) and tx.amount:  # a call need not read its callee's leaf
            needed.append((tx.recipient, "recipient"))
        for address, role in needed:
            leaf = leaves.get(address.raw)
            if leaf is None:
                leaf = leaves[address.raw] = state_key(address)
            if _find(accessed, leaf) is None:
                raise SampleMismatch(
                    f"{_step_name(block, index)} does not access the account leaf of its {role} "
                    f"{address}"
                )
    paid = steps[-1].pre
    for payout in block.coinbase.payouts:
        if payout.amount and _find(paid, state_key(payout.recipient)) is None:
            raise SampleMismatch(
                f"the payout step does not access the account leaf of {payout.recipient}"
            )
    fees = trace_fees(trace)
    payouts = block.coinbase.payouts
    if not payouts or payouts[-1].amount != fees:
        raise SampleRuleBroken(
            f"the last coinbase payout must be the {fees} Shor of fees the trace charges"
        )


def _proven(root: bytes, key: bytes, proof: Proof, when: str) -> bytes | None:
    try:
        return verify_proof(root, key, proof)
    except ProofError as exc:
        raise BadSampleProof(f"{when} proof of key {key.hex()} does not verify: {exc}") from None


def _show(value: bytes | None) -> str:
    """A value in a reason (absent, or its first bytes in hex)."""
    if value is None:
        return "absent"
    text = value[:16].hex()
    return f"{text}... ({len(value)} bytes)" if len(value) > 16 else f"{text or 'empty'}"


def _difference(recorded: StepAccess, replayed: StepAccess) -> str:
    """The first difference between a step's record and its re-execution, in words."""
    if recorded.fee != replayed.fee:
        return f"it charges {replayed.fee} Shor, the trace says {recorded.fee}"
    for what, left, right in (
        ("before", dict(recorded.pre), dict(replayed.pre)),
        ("after", dict(recorded.post), dict(replayed.post)),
    ):
        for key in sorted(left.keys() | right.keys()):
            if key not in right:
                return f"it does not access key {key.hex()}, which the trace records"
            if key not in left:
                verb = "changes" if what == "after" else "accesses"
                return f"it {verb} key {key.hex()}, which the trace does not record"
            if left[key] != right[key]:
                return (
                    f"key {key.hex()} {what} it is {_show(right[key])}, the trace says "
                    f"{_show(left[key])}"
                )
    return "its record differs"  # pragma: no cover - equal records never get here


@dataclass(frozen=True)
class SamplePlan:
    """What the sampled keys need once their histories fit their proven values."""

    rerun: tuple[int, ...]
    """The steps to re-execute, in order: those that changed a sampled key, those that accessed
    one and record no change at all, and those that record no access."""
    signed: tuple[int, ...]
    """The transaction steps among them whose signature is verified: re-executed for their
    sender's account leaf or keys leaf."""

    def to_fetch(self, summary: TraceSummary) -> list[int]:
        """The steps of :attr:`rerun` whose full record must be fetched: those whose summary
        refers to a value by its hash (the others carry their whole record)."""
        return [index for index in self.rerun if summary.steps[index].full() is None]


def plan_sample(
    parent_root: bytes,
    block: Block,
    summary: TraceSummary,
    sample: Sequence[bytes],
    proofs: Mapping[bytes, KeyProofs],
    checked: bool = False,
) -> SamplePlan:
    """Check ``summary`` (:func:`check_trace`, unless ``checked``: the caller did, before drawing
    the sample), then each sampled key in sample order: it is a key of the summary, its proofs
    verify (the pre proof against ``parent_root``, the post proof against the block header's state
    root), and its history walks from its proven pre-value to its proven post-value; return the
    steps to re-execute. :class:`SampleFailed` at the first thing that does not fit."""
    if not checked:
        check_trace(block, summary)
    steps = summary.steps
    wanted = set(sample)
    touching: dict[bytes, list[int]] = {key: [] for key in wanted}
    rerun = {index for index, step in enumerate(steps) if not step.pre}
    for index, step in enumerate(steps):
        for key, _ in step.pre:
            if key in wanted:
                touching[key].append(index)
    txs = block.transactions
    signed: set[int] = set()
    signers: dict[bytes, tuple[bytes, bytes]] = {}  # sender -> its account and keys leaf keys
    post_root = block.header.state_root
    for key in sample:
        indexes = touching[key]
        if not indexes:
            raise SampleFailed(f"sampled key {key.hex()} is not in the trace")
        found = proofs.get(key)
        if found is None:
            raise BadSampleProof(f"no proofs for sampled key {key.hex()}")
        pre = _proven(parent_root, key, found.pre, "pre-state")
        post = _proven(post_root, key, found.post, "post-state")
        for index in _history(block, key, pre, post, [(i, steps[i]) for i in indexes]):
            rerun.add(index)
            if 1 <= index <= len(txs):
                sender = txs[index - 1].sender
                leaves = signers.get(sender.raw)
                if leaves is None:
                    leaves = signers[sender.raw] = (state_key(sender), keys_key(sender))
                if key in leaves:
                    signed.add(index)
    return SamplePlan(tuple(sorted(rerun)), tuple(sorted(signed)))


def _history(
    block: Block,
    key: bytes,
    pre: bytes | None,
    post: bytes | None,
    steps: Sequence[tuple[int, StepSummary]],
) -> list[int]:
    """Walk ``key``'s recorded references (``steps``: those that accessed it, in order) from its
    proven ``pre``-value to its proven ``post``-value (:class:`SampleMismatch` where they do not
    fit); return the steps to re-execute for it: those that changed it, and those that accessed it
    and record no change at all."""
    running = value_ref(pre)
    rerun: list[int] = []
    for index, step in steps:
        found = _find(step.pre, key)
        recorded = None if found is None else found[1]
        if recorded != running:
            raise SampleMismatch(
                f"key {key.hex()}: {_step_name(block, index)} records it as "
                f"{'unread' if recorded is None else show_ref(recorded)} before the step, but it is "
                f"{show_ref(running)} there"
            )
        written = _find(step.post, key)
        if written is not None:
            running = written[1]
            rerun.append(index)
        elif not step.post:
            rerun.append(index)
    if not ref_matches(running, post):
        raise SampleMismatch(
            f"key {key.hex()}: the trace leaves it {show_ref(running)}; the proven post-state has "
            f"{_show(post)}"
        )
    return rerun


class _Replays:
    """Re-executes steps of one block from their full records, checked against the summary."""

    def __init__(
        self,
        block: Block,
        summary: TraceSummary,
        platform: Platform | None,
        own: BlockTrace | None = None,
    ) -> None:
        self.block = block
        self.summary = summary
        self.fees = trace_fees(summary)
        self.platform = platform
        self.own = own
        """The full trace ``summary`` was made from, if the caller holds it."""

    def record(self, index: int, records: Mapping[int, StepAccess]) -> StepAccess:
        """Step ``index``'s full record: the full trace's own (it matches its summary by
        construction), else rebuilt from the summary when that carries every value, else the
        fetched one, which must match the summary exactly (:class:`SampleMismatch` if it is
        missing or does not)."""
        if self.own is not None:
            return self.own.steps[index]
        summary = self.summary.steps[index]
        name = _step_name(self.block, index)
        full = summary.full()
        if full is not None:
            return full
        fetched = records.get(index)
        if fetched is None:
            raise SampleMismatch(f"{name}: the execution client did not serve its record")
        why = summary.mismatch(fetched)
        if why is not None:
            raise SampleMismatch(f"{name}: the record served does not match the trace: {why}")
        return fetched

    def check(self, index: int, recorded: StepAccess) -> None:
        """Re-execute step ``index``; :class:`SampleFailed` unless it reproduces ``recorded``."""
        name = _step_name(self.block, index)
        try:
            replayed = replay_step(self.block, index, recorded, self.fees, self.platform)
        except TraceIncomplete as exc:
            raise SampleMismatch(f"{name} re-executed: {exc}") from None
        except InvalidExecution as exc:
            raise SampleRuleBroken(f"{name} re-executed: {type(exc).__name__}: {exc}") from None
        except (QoinError, ValueError, OverflowError) as exc:  # pre-values the trace made up
            raise SampleMismatch(
                f"{name} cannot be re-executed from its record: {type(exc).__name__}: {exc}"
            ) from None
        if replayed != recorded:
            raise SampleMismatch(f"{name} re-executed: {_difference(recorded, replayed)}")

    def verify_signature(self, index: int, recorded: StepAccess) -> None:
        """Verify the hybrid signature of the transaction of step ``index``, with the keys it
        carries, else those its record read."""
        tx = self.block.transactions[index - 1]
        name = _step_name(self.block, index)
        keys = tx.public_keys
        if keys is None:
            raw = dict(recorded.pre).get(keys_key(tx.sender))
            if raw is None:
                raise SampleRuleBroken(
                    f"{name}: the sender {tx.sender} has no revealed keys and the transaction "
                    "does not carry them"
                )
            try:
                keys = decode_keys(raw)
            except InvalidExecution as exc:
                raise SampleRuleBroken(f"{name}: {exc}") from None
        if keys.address != tx.sender:
            raise SampleRuleBroken(f"{name}: its keys belong to {keys.address}, not {tx.sender}")
        if not is_valid(keys, tx.signing_hash, tx.signature):
            raise SampleRuleBroken(f"{name}: bad signature")


def fetch_records(fetch: StepFetch, indexes: Sequence[int]) -> dict[int, StepAccess]:
    """The records of ``indexes`` through ``fetch``, at most
    :data:`~qoin.execution.trace.MAX_STEP_RECORDS` a call; only the ones asked for are kept."""
    records: dict[int, StepAccess] = {}
    for start in range(0, len(indexes), MAX_STEP_RECORDS):
        batch = indexes[start : start + MAX_STEP_RECORDS]
        answer = fetch(batch)
        records.update((index, answer[index]) for index in batch if index in answer)
    return records


def check_sample(
    parent_root: bytes,
    block: Block,
    trace: AnyTrace,
    sample: Sequence[bytes],
    proofs: Mapping[bytes, KeyProofs],
    platform: Platform | None = None,
    fetch: StepFetch | None = None,
    checked: bool = False,
) -> SamplePlan:
    """Check ``trace`` (:func:`check_trace`) and every sampled key (module docstring); raise
    :class:`SampleFailed` (the subclass says why) at the first thing that does not confirm the
    block, else return what was re-executed. ``trace`` is a full trace (its records are at hand,
    unless ``fetch`` is given: then fetched records are checked against its summary) or a summary,
    whose records ``fetch`` fetches (required then). ``parent_root`` is the parent's
    state root as the caller knows it; post proofs are checked against the block header's state
    root. ``platform`` runs re-executed calls (by default the node's actors and WebAssembly
    runtime). ``checked``: the caller has run :func:`check_trace` on ``trace`` already (before
    drawing the sample from it), so it is not run again."""
    own = trace if isinstance(trace, BlockTrace) and fetch is None else None
    summary = trace.summary() if isinstance(trace, BlockTrace) else trace
    if fetch is None and own is None:
        raise ValueError("checking a trace summary needs a way to fetch step records")
    plan = plan_sample(parent_root, block, summary, sample, proofs, checked)
    wanted = [] if fetch is None else plan.to_fetch(summary)
    records = fetch_records(fetch, wanted) if fetch is not None and wanted else {}
    replays = _Replays(block, summary, platform, own)
    signed = set(plan.signed)
    for index in plan.rerun:
        recorded = replays.record(index, records)
        replays.check(index, recorded)
        if index in signed:
            replays.verify_signature(index, recorded)
    return plan


def detection_probability(n: int, m: int, k: int) -> float:
    """The probability that a sample of ``k`` distinct keys, drawn uniformly without replacement
    from the ``n`` keys a block's trace accessed, includes at least one of the ``m`` whose check
    fails: ``1 - C(n - m, k) / C(n, k)`` (hypergeometric, exact), with ``k`` capped at ``n``
    (every key is checked). A failing key is always caught once sampled, so this is the chance
    that :func:`check_sample` fails (docs/spec/sampling.md: a wrong post-state leaves m >= 1)."""
    if n < 0 or not 0 <= m <= n or k < 0:
        raise ValueError(f"need 0 <= m <= n and k >= 0, got n={n}, m={m}, k={k}")
    drawn = min(k, n)
    return 1 - math.comb(n - m, drawn) / math.comb(n, drawn)
