"""Fraud reports: a remote execution node's lie, shown to third parties by its own signed words.

Every answer of a node that serves execution over p2p is a
:class:`~qoin.p2p.statements.SignedStatement` (the network, the method, the params as received,
the answer as sent, signed by the node's identity). When the judge (:mod:`qoin.consensus.judge`)
catches a remote node lying, the consensus client builds a :class:`FraudReport` — the block and
the liar's statements about it, the fewest that show the lie (:func:`build_report`) — bans the node
on its p2p service and sends the report to its peers (``ExecutionFraud``). A peer that receives
one checks it (:func:`verify_report`, through ``NodeAccess.judge_fraud``) before it believes
it: every signature, one signer, this network; then each statement by its kind:

* ``engine_newPayload`` or ``engine_getVerdict`` (a verdict; the latter names the block by hash,
  and the report's block field carries the block, its hash checked): VALID or INVALID against this
  node's own verdict on the block (stored: valid; rejected by the execution check, or found so by
  importing it now: invalid). A block that breaks a consensus rule proves nothing (no execution
  verdict exists).
* ``engine_getTrace`` / ``engine_getProofs`` / ``engine_getSteps`` (a sample): replayed through
  the judge's own sampling code (:func:`~qoin.consensus.judge.sample_client`) with the keys the
  proofs statement names, answers taken from the statements (:class:`StatementReplay`). The keys
  must be keys of the served trace (an honest node's answers about keys of the reporter's choice
  outside it would fail the sample without a lie).
* ``engine_getWitness`` (one per report: each costs a re-execution): checked against the parent's
  state root by stateless re-execution; a witness that does not decode or does not prove the
  parent state is a lie.
* ``engine_buildPayload``: the payload against its template (:func:`payload_problem`).

The verdict is ``PROVEN`` (with the accused node id), ``FALSE`` (nothing shows a lie: the
reporter is penalised) or ``UNDECIDED`` (this node cannot judge now, e.g. it lacks the parent).

Encoding (every count and length bounded before use)::

    report = version u8 (1) ‖ block: varint length (<= MAX_BLOCK_SIZE, 0: carried by a statement)
             ‖ count: varint (1 ..= MAX_REPORT_STATEMENTS) ‖ count signed statements
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, Protocol

from qoin.chain.block import MAX_BLOCK_SIZE, Block
from qoin.chain.chain import ExecutionRejected, ExecutionUndecided
from qoin.chain.validation import BadTimestamp, InvalidBlock
from qoin.consensus.engine import EngineClient, EngineError, MalformedAnswer, payload_verdict
from qoin.consensus.judge import sample_client
from qoin.crypto.hybrid import SignatureError
from qoin.encoding.codec import Reader, Writer
from qoin.errors import QoinError
from qoin.execution.trace import TraceSummary
from qoin.execution.transition import InvalidExecution, Platform
from qoin.execution.witness import InvalidWitness, execute_stateless
from qoin.p2p.access import FraudJudgement, FraudVerdict
from qoin.p2p.messages import MAX_FRAUD_REPORT
from qoin.p2p.statements import SignedStatement

if TYPE_CHECKING:
    from qoin.consensus.node import ConsensusNode

log = logging.getLogger(__name__)

REPORT_VERSION = 1
MAX_REPORT_STATEMENTS = 64
"""Statements in one report (a sample of many steps takes a trace, a proofs and a few steps
statements)."""
SAMPLE_METHODS = ("engine_getTrace", "engine_getProofs", "engine_getSteps")
NEW_PAYLOAD = "engine_newPayload"
"""A verdict on a block sent whole (its params carry the block)."""
VERDICT_BY_HASH = "engine_getVerdict"
"""A verdict on a block asked by hash (the report's block field carries the block)."""
VERDICT_METHODS = (NEW_PAYLOAD, VERDICT_BY_HASH)
"""The statements that give a verdict (one per report)."""
WITNESS_METHOD = "engine_getWitness"
BUILD_METHOD = "engine_buildPayload"


class FraudError(QoinError):
    """Bytes that are not a fraud report, or a report over its bounds."""


@dataclass(frozen=True)
class FraudReport:
    """A block (or none, when a statement carries it) and a node's signed statements about it."""

    block: bytes
    """The block's encoding; empty when an ``engine_newPayload`` or ``engine_getWitness``
    statement carries it, and for a report about a payload (``engine_buildPayload``)."""
    statements: tuple[SignedStatement, ...]
    """The accused node's statements (all signed by it)."""

    def encode(self) -> bytes:
        """The canonical encoding (module docstring)."""
        if not 1 <= len(self.statements) <= MAX_REPORT_STATEMENTS:
            raise FraudError(f"a report has 1 to {MAX_REPORT_STATEMENTS} statements")
        writer = Writer().u8(REPORT_VERSION).var_bytes(self.block, MAX_BLOCK_SIZE)
        writer.varint(len(self.statements))
        for signed in self.statements:
            writer.raw(signed.encode())
        return writer.bytes()

    @classmethod
    def decode(cls, data: bytes) -> FraudReport:
        """Decode a report of at most :data:`~qoin.p2p.messages.MAX_FRAUD_REPORT` bytes."""
        if len(data) > MAX_FRAUD_REPORT:
            raise FraudError(f"a report of {len(data)} bytes exceeds {MAX_FRAUD_REPORT}")
        try:
            reader = Reader(data)
            version = reader.u8()
            if version != REPORT_VERSION:
                raise FraudError(f"unknown fraud report version {version}")
            block = reader.var_bytes(MAX_BLOCK_SIZE)
            count = reader.varint()
            if not 1 <= count <= MAX_REPORT_STATEMENTS:
                raise FraudError(f"a report has 1 to {MAX_REPORT_STATEMENTS} statements")
            statements = tuple(SignedStatement.read(reader) for _ in range(count))
            reader.finish()
        except FraudError:
            raise
        except QoinError as exc:
            raise FraudError(f"not a fraud report: {exc}") from None
        return cls(block, statements)


def _params(signed: SignedStatement) -> list[Any] | None:
    """A statement's params as JSON (None if they are not a JSON array)."""
    try:
        params = json.loads(signed.statement.params)
    except (ValueError, RecursionError):
        return None
    return params if isinstance(params, list) else None


def _canonical(params: Any) -> str:
    return json.dumps(params, sort_keys=True, separators=(",", ":"))


class StatementReplay(EngineClient):
    """An engine client that answers from signed statements, as their signer answered: the judge's
    own parsing and checks run on them unchanged. A call no statement answers is an
    :class:`~qoin.consensus.engine.EngineError` (the evidence lacks it: not a lie)."""

    def __init__(self, statements: Sequence[SignedStatement]) -> None:
        signer = statements[0].signer.address if statements else "nobody"
        self._setup(f"report:{signer}", 0.0)
        self._answers: dict[tuple[str, str], SignedStatement] = {}
        for signed in statements:
            params = _params(signed)
            if params is not None:
                self._answers[(signed.statement.method, _canonical(params))] = signed

    def _send(self, method: str, params: list[Any]) -> Any:
        signed = self._answers.get((method, _canonical(params)))
        if signed is None:
            raise EngineError(f"{method}: the report holds no such statement")
        statement = signed.statement
        if statement.error:
            raise EngineError(f"{method} refused: {statement.answer.decode(errors='replace')}")
        try:
            return json.loads(statement.answer)
        except (ValueError, RecursionError):
            raise MalformedAnswer(f"malformed answer: {method} is not JSON") from None


class OwnVerdict(Enum):
    """This node's verdict on a block's execution."""

    VALID = "valid"
    INVALID = "invalid"
    BREAKS_RULES = "breaks consensus rules"
    UNDECIDED = "undecided"


class FraudContext(Protocol):
    """What checking a report needs of the node."""

    @property
    def genesis_hash(self) -> bytes:
        """The network's genesis hash."""

    @property
    def platform(self) -> Platform | None:
        """What re-executes sampled steps' calls (None: the node's own)."""

    @property
    def verifier(self) -> ThreadPoolExecutor:
        """Threads for stateless re-execution."""

    def parent_root(self, block: Block) -> bytes | None:
        """The state root of the block's parent, or None if the parent is not stored here."""

    def verdict(self, block: Block) -> tuple[OwnVerdict, str]:
        """This node's verdict on ``block`` (importing it if need be), and why."""


class NodeContext:
    """A :class:`FraudContext` over a consensus node. ``imports``: a block it has no verdict on
    yet is imported (judged) to get one; without, it is undecided (the reporting side, which
    judged the block just before)."""

    def __init__(self, node: ConsensusNode, imports: bool = True) -> None:
        self.node = node
        self.imports = imports

    @property
    def genesis_hash(self) -> bytes:
        return self.node.chain.genesis.genesis_hash

    @property
    def platform(self) -> Platform | None:
        return self.node.judge.platform

    @property
    def verifier(self) -> ThreadPoolExecutor:
        return self.node.judge.verifier

    def parent_root(self, block: Block) -> bytes | None:
        with self.node.lock:
            parent_hash = block.header.parent_hash
            if parent_hash == self.genesis_hash:
                return self.node.genesis_root
            header = self.node.chain.store.header(parent_hash)
            return None if header is None else header.state_root

    def verdict(self, block: Block) -> tuple[OwnVerdict, str]:
        node = self.node
        block_hash, parent_hash = block.block_hash, block.header.parent_hash
        with node.lock:
            chain = node.chain
            if chain.has_block(block_hash):
                return OwnVerdict.VALID, "stored here"
            for known in (block_hash, parent_hash):
                if known in chain.invalid:
                    return OwnVerdict.INVALID, f"rejected here: {chain.invalid[known]}"
            if not chain.has_block(parent_hash):
                return OwnVerdict.UNDECIDED, "its parent is not stored here"
            if not self.imports:
                return OwnVerdict.UNDECIDED, "not judged here"
            return self._imported(block)

    def _imported(self, block: Block) -> tuple[OwnVerdict, str]:
        """The verdict of importing ``block`` (its parent is stored) here now."""
        try:
            self.node.import_block(block)
        except ExecutionRejected as exc:
            return OwnVerdict.INVALID, f"found invalid here: {exc}"
        except BadTimestamp as exc:
            # The future-drift rule depends on this node's clock: the relay that found the report
            # proven may have judged the block under another one. Not a reason to punish it.
            return OwnVerdict.UNDECIDED, f"its timestamp is not acceptable here now: {exc}"
        except InvalidBlock as exc:
            return OwnVerdict.BREAKS_RULES, f"{type(exc).__name__}: {exc}"
        except ExecutionUndecided as exc:
            return OwnVerdict.UNDECIDED, f"cannot be judged here now: {exc}"
        if self.node.chain.has_block(block.block_hash):
            return OwnVerdict.VALID, "judged valid here"
        return OwnVerdict.UNDECIDED, "kept undecided here (a side branch)"


def _judgement(
    verdict: FraudVerdict, detail: str, signer: SignedStatement | None = None
) -> FraudJudgement:
    accused = None if signer is None or verdict is not FraudVerdict.PROVEN else signer.node_id
    return FraudJudgement(verdict, accused, detail)


def _block_of(report: FraudReport) -> Block | None:
    """The report's block: its own field, else the one a newPayload or witness statement
    carries. :class:`FraudError` if what it carries does not decode or they differ."""
    carried: list[bytes] = [report.block] if report.block else []
    for signed in report.statements:
        params = _params(signed)
        method = signed.statement.method
        if method == NEW_PAYLOAD and params and isinstance(params[0], str):
            carried.append(_hex(params[0]))
        elif (
            method == WITNESS_METHOD and params and len(params) == 2 and isinstance(params[1], str)
        ):
            carried.append(_hex(params[1]))
    if not carried:
        return None
    if any(encoding != carried[0] for encoding in carried):
        raise FraudError("the statements are about different blocks")
    try:
        return Block.decode(carried[0])
    except QoinError as exc:
        raise FraudError(f"the block does not decode: {exc}") from None


def _hex(text: str) -> bytes:
    if len(text) > 2 * MAX_BLOCK_SIZE:
        raise FraudError("a block over the size bound")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise FraudError("a block that is not hex") from None


class _Shown(Exception):
    """A verdict reached before every check ran (a report that shows nothing)."""

    def __init__(self, verdict: FraudVerdict, detail: str) -> None:
        super().__init__(detail)
        self.verdict = verdict
        self.detail = detail


def _false(detail: str) -> _Shown:
    return _Shown(FraudVerdict.FALSE, detail)


def verify_report(data: bytes, context: FraudContext) -> FraudJudgement:
    """Check a fraud report (module docstring): PROVEN, FALSE or UNDECIDED."""
    try:
        report = FraudReport.decode(data)
    except FraudError as exc:
        return _judgement(FraudVerdict.FALSE, f"malformed report: {exc}")
    first = report.statements[0]
    try:
        _check_signed(report, context)
        verdict, detail = _check_statements(report, context)
    except _Shown as shown:
        verdict, detail = shown.verdict, shown.detail
    return _judgement(verdict, detail, first)


def _check_signed(report: FraudReport, context: FraudContext) -> None:
    """One signer, this network, every signature good (else :class:`_Shown` FALSE)."""
    first = report.statements[0]
    for signed in report.statements:
        if signed.signer != first.signer:
            raise _false("statements by more than one node")
        if signed.statement.genesis_hash != context.genesis_hash:
            raise _false("a statement about another network")
        try:
            signed.verify()
        except SignatureError as exc:
            raise _false(f"a statement's signature: {exc}") from None


def _check_statements(report: FraudReport, context: FraudContext) -> tuple[FraudVerdict, str]:
    """The verdict of the statements, each kind by its check (module docstring)."""
    methods = {signed.statement.method for signed in report.statements}
    if methods == {BUILD_METHOD}:
        if report.block:
            raise _false("a payload report carries a block")
        return _check_payloads(report.statements)
    try:
        block = _block_of(report)
    except FraudError as exc:
        raise _false(str(exc)) from None
    if block is None:
        raise _false("the report names no block")
    wrong = _about_other_block(report.statements, block)
    if wrong is not None:
        raise _false(wrong)
    outcomes: list[Outcome] = []
    for check in (_check_sample, _check_witness, _check_verdict):  # any kind may prove it
        try:
            outcome = check(report.statements, block, context)
        except _Shown as shown:
            outcome = shown.verdict, shown.detail
        if outcome[0] is FraudVerdict.PROVEN:
            return outcome
        outcomes.append(outcome)
    undecided = [detail for verdict, detail in outcomes if verdict is FraudVerdict.UNDECIDED]
    if undecided:
        return FraudVerdict.UNDECIDED, undecided[0]
    said = "; ".join(detail for _, detail in outcomes if detail)
    return FraudVerdict.FALSE, f"the statements show no lie ({said or 'nothing'})"


Outcome = tuple[FraudVerdict, str]
NOTHING: Outcome = (FraudVerdict.FALSE, "")


def _about_other_block(statements: Sequence[SignedStatement], block: Block) -> str | None:
    """Why a statement is not about ``block`` (or about a payload), or None."""
    hash_hex = block.block_hash.hex()
    for signed in statements:
        method = signed.statement.method
        params = _params(signed)
        if method == NEW_PAYLOAD:
            continue  # the block was taken from it
        if method == BUILD_METHOD:
            return "a payload statement in a report about a block"
        if method not in (*SAMPLE_METHODS, WITNESS_METHOD, VERDICT_BY_HASH):
            return f"a statement of {method}, which shows nothing"
        if not params or params[0] != hash_hex:
            return f"a statement of {method} about another block"
    return None


def _check_verdict(
    statements: Sequence[SignedStatement], block: Block, context: FraudContext
) -> Outcome:
    verdicts = [s for s in statements if s.statement.method in VERDICT_METHODS]
    if not verdicts:
        return NOTHING
    if len(verdicts) > 1:
        raise _false("more than one verdict statement")
    replay = StatementReplay(verdicts)
    try:
        if verdicts[0].statement.method == VERDICT_BY_HASH:
            asked = replay.call(VERDICT_BY_HASH, block.block_hash.hex())
            answer = payload_verdict(VERDICT_BY_HASH, asked)
        else:
            answer = replay.new_payload(block)
    except EngineError as exc:  # refused, or not a verdict: not a lie (no verdict was given)
        raise _false(f"no verdict: {exc}") from None
    if answer.status not in ("VALID", "INVALID"):
        raise _false(f"answered {answer.status}, which is no verdict")
    own, why = context.verdict(block)
    if own is OwnVerdict.UNDECIDED:
        return FraudVerdict.UNDECIDED, f"block {block.block_hash.hex()[:16]}: {why}"
    if own is OwnVerdict.BREAKS_RULES:
        raise _false(f"block {block.block_hash.hex()[:16]} {own.value}: {why}")
    valid = own is OwnVerdict.VALID
    if (answer.status == "VALID") == valid:
        raise _false(f"answered {answer.status}, which is true")
    return FraudVerdict.PROVEN, (
        f"answered {answer.status} for block {block.block_hash.hex()[:16]}, which is "
        f"{'valid' if valid else 'invalid'} ({why})"
    )


def _check_sample(
    statements: Sequence[SignedStatement], block: Block, context: FraudContext
) -> Outcome:
    sample = [s for s in statements if s.statement.method in SAMPLE_METHODS]
    if not sample:
        return NOTHING
    keys = _named_keys(sample)
    parent_root = context.parent_root(block)
    if parent_root is None:
        return FraudVerdict.UNDECIDED, "the block's parent is not stored here"
    foreign: list[bytes] = []

    def named_keys(summary: TraceSummary) -> list[bytes]:
        population = set(summary.keys())
        if len(set(keys)) != len(keys) or not population.issuperset(keys):
            foreign.append(b"")
            raise EngineError("the keys named are not distinct keys of the trace")
        return keys

    lie, why = sample_client(
        StatementReplay(sample), block, parent_root, named_keys, context.platform
    )
    if foreign:
        raise _false("a sample of keys that are not distinct keys of the trace")
    if lie:
        return FraudVerdict.PROVEN, why
    return FraudVerdict.FALSE, why or "the sample holds"


def _named_keys(sample: Sequence[SignedStatement]) -> list[bytes]:
    """The keys the sample's one proofs statement names (none without one)."""
    proofs = [s for s in sample if s.statement.method == "engine_getProofs"]
    if len(proofs) > 1:
        raise _false("more than one proofs statement")
    if not proofs:
        return []
    params = _params(proofs[0])
    named = params[1] if params and len(params) == 2 else None
    if not isinstance(named, list) or not all(isinstance(key, str) for key in named):
        raise _false("a proofs statement that names no keys")
    try:
        return [bytes.fromhex(key) for key in named]
    except ValueError:
        raise _false("a proofs statement with keys that are not hex") from None


def _check_witness(
    statements: Sequence[SignedStatement], block: Block, context: FraudContext
) -> Outcome:
    witnesses = [s for s in statements if s.statement.method == WITNESS_METHOD]
    if not witnesses:
        return NOTHING
    if len(witnesses) > 1:  # each costs a re-execution of the block; one shows a lie
        raise _false("more than one witness statement")
    parent_root = context.parent_root(block)
    if parent_root is None:
        return FraudVerdict.UNDECIDED, "the block's parent is not stored here"
    for signed in witnesses:
        params = _params(signed) or []
        replay = StatementReplay([signed])
        try:
            witness = replay.get_witness(block.block_hash, block if len(params) == 2 else None)
        except MalformedAnswer as exc:
            return FraudVerdict.PROVEN, f"served a witness that does not decode: {exc}"
        except EngineError:
            continue
        try:
            execute_stateless(parent_root, block, witness, context.verifier)
        except InvalidWitness as exc:
            return FraudVerdict.PROVEN, f"served a bad witness: {exc}"
        except InvalidExecution:
            continue  # a good witness of an invalid block
    return FraudVerdict.FALSE, "the witness is good"


def _check_payloads(statements: Sequence[SignedStatement]) -> Outcome:
    from qoin.consensus.node import payload_problem  # noqa: PLC0415 (the node imports this)

    for signed in statements:
        params = _params(signed)
        if not params or len(params) != 1 or not isinstance(params[0], str):
            return FraudVerdict.FALSE, "a payload statement without a template"
        try:
            template = Block.decode(_hex(params[0]))
        except (FraudError, QoinError) as exc:
            return FraudVerdict.FALSE, f"a template that does not decode: {exc}"
        if signed.statement.error:
            continue
        try:
            answer = json.loads(signed.statement.answer)
            payload = Block.decode(_hex(answer)) if isinstance(answer, str) else None
        except (ValueError, RecursionError, QoinError):
            payload = None
        if payload is None:
            continue  # no payload: the judge's rules count it as none built, not a lie
        problem = payload_problem(template, payload)
        if problem is not None:
            return FraudVerdict.PROVEN, f"built a payload that {problem}"
    return FraudVerdict.FALSE, "the payloads keep to their templates"


# --- building a report ------------------------------------------------------------------------


def _fits(report: FraudReport) -> bytes | None:
    try:
        data = report.encode()
    except QoinError:
        return None
    return data if len(data) <= MAX_FRAUD_REPORT else None


def candidate_reports(
    transcript: Sequence[SignedStatement], block: Block | None
) -> list[FraudReport]:
    """The reports the statements of ``transcript`` could make about ``block`` (or, with None,
    about the payloads built), smallest kind first: a verdict, a witness, a sample; only those
    that fit one ``ExecutionFraud``."""
    if block is None:
        built = [s for s in transcript if s.statement.method == BUILD_METHOD]
        return [FraudReport(b"", (s,)) for s in reversed(built)]
    hash_hex = block.block_hash.hex()
    block_hex = block.encode().hex()
    about: dict[str, list[SignedStatement]] = {}
    for signed in transcript:
        params = _params(signed)
        method = signed.statement.method
        if not params:
            continue
        if method in VERDICT_METHODS and signed.statement.error:
            continue  # a refusal gives no verdict: it shows no lie
        if (method == NEW_PAYLOAD and params[0] == block_hex) or (
            method != NEW_PAYLOAD and params[0] == hash_hex
        ):
            about.setdefault(method, []).append(signed)
    encoding = block.encode()
    reports = [FraudReport(b"", (s,)) for s in reversed(about.get(NEW_PAYLOAD, []))]
    reports += [FraudReport(encoding, (s,)) for s in reversed(about.get(VERDICT_BY_HASH, []))]
    reports += [FraudReport(b"", (s,)) for s in reversed(about.get(WITNESS_METHOD, []))]
    traces = about.get("engine_getTrace", [])
    steps: dict[str, SignedStatement] = {}
    for signed in about.get("engine_getSteps", []):
        steps[signed.statement.params.decode(errors="replace")] = signed  # the latest of each
    if traces:
        trace = traces[-1]
        for proofs in reversed(about.get("engine_getProofs", [])):
            chosen = (trace, proofs, *steps.values())[:MAX_REPORT_STATEMENTS]
            reports.append(FraudReport(encoding, chosen))
        reports.append(FraudReport(encoding, (trace,)))
    return [report for report in reports if _fits(report) is not None]


def build_report(
    transcript: Sequence[SignedStatement], block: Block | None, context: FraudContext
) -> tuple[bytes, FraudJudgement] | None:
    """The first candidate report (:func:`candidate_reports`) that this node itself finds
    PROVEN, encoded, with its judgement; None if no statement kept shows the lie."""
    for report in candidate_reports(transcript, block):
        data = report.encode()
        judgement = verify_report(data, context)
        if judgement.verdict is FraudVerdict.PROVEN:
            return data, judgement
    return None
