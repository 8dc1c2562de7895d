"""Execution nodes of other operators, used over p2p and trusted only through sampling.

A consensus client started with ``--remote-execution N`` judges blocks with N execution nodes that
peers serve (``--serve-execution``), besides or instead of its own execution clients:

* :class:`RemoteEngineClient` is an :class:`~qoin.consensus.engine.EngineClient` whose calls go
  over the p2p network (``P2PService.engine_call``); every answer comes back signed by the serving
  node (:class:`~qoin.p2p.statements.SignedStatement`), and the client keeps the recent ones, the
  evidence a fraud report is made of (:mod:`qoin.consensus.fraud`). It asks a block's verdict by
  hash (``engine_getVerdict``) and sends the block only to a node that does not hold it. Its URL
  is ``p2p:`` and the node id, the key of the dropped list: a liar cannot come back at another
  address.
* :class:`RemotePool` keeps N of them in use: connected serving peers that are neither dropped nor
  banned, picked for diversity (:func:`pick_nodes`), a dropped, long-quarantined or disconnected
  one replaced by another, discovery asked for more.

The judge treats them as it treats local clients (:mod:`qoin.consensus.judge`): the rules are the
same, only the transport and the consequences of a lie differ (a proven lie bans the node on the
whole network).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import secrets
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from qoin.chain.block import Block
from qoin.consensus.engine import (
    DEFAULT_TIMEOUT_S,
    MAX_ANSWER_BYTES,
    ClientUnavailable,
    EngineClient,
    EngineError,
    MalformedAnswer,
    PayloadVerdict,
    payload_verdict,
)
from qoin.consensus.fraud import VERDICT_BY_HASH, VERDICT_METHODS
from qoin.crypto.address import Address
from qoin.errors import QoinError
from qoin.execution.client import UNKNOWN_BLOCK
from qoin.p2p.statements import EngineCallError, ExecutionNode, SignedStatement
from qoin.ratelimit import TokenBucket

if TYPE_CHECKING:
    from qoin.consensus.node import ConsensusNode

log = logging.getLogger(__name__)

URL_PREFIX = "p2p:"
"""A remote client's URL is this and the serving node's id."""
MAX_TRANSCRIPT = 256
"""Signed statements a remote client keeps (the most recent ones)."""
MAX_TRANSCRIPT_BYTES = 64 * 1024 * 1024
"""Bytes of params and answers a remote client keeps in its transcript."""
MAX_BUILT_PAYLOADS = 8
"""Payloads a remote client keeps for ``get_payload`` (the latest ones)."""
REFRESH_S = 1.0
"""How often the pool looks for nodes to replace or add (and, while fewer than wanted are in use,
before each block is judged: :meth:`RemotePool.fill`)."""
LONG_QUARANTINE = 4
"""Failures in a row after which a quarantined remote node is replaced (about 15 s of backoff)."""
LONG_NO_VERDICT = 8
"""Answers in a row to verdict requests (``engine_getVerdict``, then ``engine_newPayload`` if the
node lacks the block) without a verdict (SYNCING, ACCEPTED, a refusal such as
"rate limited") after which a remote node is replaced: it answers, so it is never quarantined,
yet it judges nothing (every block then needs a witness, or stays undecided)."""
BENCH_S = 120.0
"""How long a node replaced for giving no verdicts is not picked again."""
VERDICT_ANSWER_BYTES = 64 * 1024
"""The largest ``engine_newPayload`` or ``engine_getVerdict`` answer taken (a status and a
reason): a serving node cannot make this node hold more for the calls made on every block."""
PACE_PER_S = 30.0
PACE_BURST = 60.0
"""A remote client paces its calls to each node (a token bucket) under the serving side's default
limits (32 a second, bursts of 64), so that catching up on many blocks is not refused as "rate
limited" — a refusal that would quarantine the node."""


class EngineNetwork(Protocol):
    """What the remote execution side needs of the p2p service (``P2PService``)."""

    def engine_call(
        self, node_id: Address, method: str, params: bytes, *, timeout: float, max_answer: int
    ) -> SignedStatement:
        """One engine call to a connected serving peer; its signed answer."""

    def execution_nodes(self) -> list[ExecutionNode]:
        """The connected peers that serve execution."""

    def want_execution_nodes(self, n: int) -> None:
        """Look for more serving peers while fewer than ``n`` are connected."""

    def ban_node(self, node_id: Address, reason: str) -> None:
        """Ban a node on the whole network (a proven lie)."""

    def broadcast_fraud(self, report: bytes, skip: Address | None = None) -> None:
        """Send a fraud report to every connected peer but ``skip``."""


def remote_url(node_id: Address) -> str:
    """The URL (and dropped-list key) of a remote execution node."""
    return f"{URL_PREFIX}{node_id}"


class RemoteEngineClient(EngineClient):
    """An engine client whose calls go to a peer's execution node over p2p (module docstring)."""

    def __init__(
        self, node: ExecutionNode, network: EngineNetwork, timeout: float = DEFAULT_TIMEOUT_S
    ) -> None:
        self._setup(remote_url(node.node_id), timeout)
        self.node = node
        self.network = network
        self._transcript: deque[SignedStatement] = deque()
        self._transcript_bytes = 0
        self._payloads: OrderedDict[str, Block] = OrderedDict()
        self._lock = threading.Lock()
        self._pacing = TokenBucket.full(PACE_BURST, PACE_PER_S, time.monotonic())
        self.no_verdicts = 0
        """Verdict requests in a row answered without a verdict (see :data:`LONG_NO_VERDICT`)."""

    def new_payload(self, block: Block) -> PayloadVerdict:
        """The node's verdict on ``block``: asked by hash first (``engine_getVerdict``: a full
        node of the same network usually holds the block already), the block itself sent
        (``engine_newPayload``) only when the node says it does not hold it ("unknown block").
        Answers without a verdict are counted (:attr:`no_verdicts`)."""
        try:
            verdict = self._verdict(block)
        except ClientUnavailable:
            raise  # quarantined: the pool replaces a node quarantined for long
        except EngineError:
            self.no_verdicts += 1
            raise
        self.no_verdicts = 0 if verdict.status in ("VALID", "INVALID") else self.no_verdicts + 1
        return verdict

    def _verdict(self, block: Block) -> PayloadVerdict:
        block_hash = block.block_hash.hex()
        try:
            answer = self.call(VERDICT_BY_HASH, block_hash)
        except (ClientUnavailable, MalformedAnswer):
            raise  # no answer, or one that does not parse: as it is
        except EngineError as refused:
            if f"{UNKNOWN_BLOCK} {block_hash}" not in str(refused):
                raise  # refused otherwise (e.g. rate limited): no verdict
            return super().new_payload(block)
        return payload_verdict(VERDICT_BY_HASH, answer)

    def _pace(self) -> None:
        """Wait for a token of the pacing bucket (:data:`PACE_PER_S`), at most the call timeout."""
        with self._lock:
            wait = self._pacing.reserve(time.monotonic())
        if wait > 0:
            time.sleep(min(wait, self.timeout))

    @property
    def node_id(self) -> Address:
        """The serving node's id."""
        return self.node.node_id

    def _send(self, method: str, params: list[Any]) -> Any:
        """The call over p2p: the signed answer is kept, an error answer is
        :class:`~qoin.consensus.engine.EngineError`, an answer that is not JSON
        :class:`~qoin.consensus.engine.MalformedAnswer`, no answer
        :class:`~qoin.consensus.engine.ClientUnavailable`."""
        data = json.dumps(params).encode()
        limit = VERDICT_ANSWER_BYTES if method in VERDICT_METHODS else MAX_ANSWER_BYTES
        self._pace()
        try:
            signed = self.network.engine_call(
                self.node.node_id, method, data, timeout=self.timeout, max_answer=limit
            )
        except EngineCallError as exc:
            self._count(len(data), 0)
            raise ClientUnavailable(f"{method}: no answer from {self.url}: {exc}") from None
        statement = signed.statement
        self._count(len(data), len(statement.answer))
        self._keep(signed)
        if statement.error:
            text = statement.answer.decode("utf-8", errors="replace")
            raise EngineError(f"{method} refused by {self.url}: {text}")
        try:
            return json.loads(statement.answer)
        except (ValueError, RecursionError):
            raise MalformedAnswer(
                f"malformed answer: {method} from {self.url} is not JSON"
            ) from None

    def _keep(self, signed: SignedStatement) -> None:
        size = len(signed.statement.params) + len(signed.statement.answer)
        with self._lock:
            self._transcript.append(signed)
            self._transcript_bytes += size
            while self._transcript and (
                len(self._transcript) > MAX_TRANSCRIPT
                or self._transcript_bytes > MAX_TRANSCRIPT_BYTES
            ):
                old = self._transcript.popleft().statement
                self._transcript_bytes -= len(old.params) + len(old.answer)

    def transcript(self) -> list[SignedStatement]:
        """The signed statements kept, oldest first."""
        with self._lock:
            return list(self._transcript)

    def forkchoice_updated(self, head: bytes, template: Block | None = None) -> str | None:
        """A remote node follows its own operator's head: without a template nothing is sent;
        with one, ``engine_buildPayload`` builds a payload (without moving its head), kept here
        under a local payload id."""
        if template is None:
            return None
        answer = self.call("engine_buildPayload", template.encode().hex())
        if not isinstance(answer, str) or len(answer) > 2 * MAX_ANSWER_BYTES:
            raise MalformedAnswer("malformed answer: engine_buildPayload is not a hex string")
        try:
            payload = Block.decode(bytes.fromhex(answer))
        except (ValueError, QoinError) as exc:
            raise MalformedAnswer(f"malformed answer: payload: {exc}") from None
        payload_id = secrets.token_hex(8)
        with self._lock:
            self._payloads[payload_id] = payload
            while len(self._payloads) > MAX_BUILT_PAYLOADS:
                self._payloads.popitem(last=False)
        return payload_id

    def get_payload(self, payload_id: str) -> Block:
        """The payload built under ``payload_id`` (here, not asked again)."""
        with self._lock:
            payload = self._payloads.pop(payload_id, None)
        if payload is None:
            raise EngineError(f"unknown payload id {payload_id}")
        return payload

    def close(self) -> None:
        """Nothing to close: the p2p service owns the connection."""


def netgroup(host: str, port: int) -> str:
    """The network group of an address, as Bitcoin Core groups peers: an IPv4 /16, an IPv6 /32
    (an IPv4-mapped one as its IPv4); on loopback each host:port is its own group (a devnet on one
    machine); a name that is not an IP address is its own group."""
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return f"name {host.lower()}"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return f"loopback {host}:{port}"
    if isinstance(ip, ipaddress.IPv4Address):
        return f"ipv4 {ipaddress.ip_network(f'{ip}/16', strict=False)}"
    return f"ipv6 {ipaddress.ip_network(f'{ip}/32', strict=False)}"


def pick_nodes(
    candidates: Sequence[ExecutionNode], n: int, in_use: Sequence[ExecutionNode]
) -> tuple[list[ExecutionNode], str | None]:
    """The candidates to add to ``in_use`` so that ``n`` are used, picked for diversity: one per
    network group not used yet first, then from groups already used, but never all ``n`` from one
    group when ``n >= 2`` (fewer are used then). Also why fewer than ``n`` are used, or None."""
    using = {node.node_id for node in in_use}
    groups = Counter(netgroup(node.host, node.port) for node in in_use)
    free = sorted(
        (node for node in candidates if node.node_id not in using),
        key=lambda node: (netgroup(node.host, node.port), str(node.node_id)),
    )
    picked: list[ExecutionNode] = []
    for node in free:  # one per new group
        group = netgroup(node.host, node.port)
        if len(in_use) + len(picked) < n and group not in groups:
            picked.append(node)
            groups[group] += 1
    held_back = False
    for node in free:  # then from groups in use, never all n in one group
        if len(in_use) + len(picked) >= n or node in picked:
            continue
        group = netgroup(node.host, node.port)
        if n >= 2 and len(in_use) + len(picked) + 1 == n and len(groups) == 1:
            held_back = True
            continue
        picked.append(node)
        groups[group] += 1
    total = len(in_use) + len(picked)
    if total >= n:
        return picked, None
    if held_back:
        return picked, (
            f"using {total} of {n} remote execution nodes: the other candidates are all in one "
            f"network group ({next(iter(groups))}), and not all {n} may come from one"
        )
    return picked, (
        f"using {total} of {n} remote execution nodes: no other connected peer serves execution "
        "(looking for more)"
    )


class RemotePool:
    """Keeps ``wanted`` remote execution nodes in the node's judge (module docstring)."""

    def __init__(
        self,
        node: ConsensusNode,
        network: EngineNetwork,
        wanted: int,
        timeout: float = DEFAULT_TIMEOUT_S,
        refresh_s: float = REFRESH_S,
    ) -> None:
        self.node = node
        self.network = network
        self.wanted = wanted
        self.timeout = timeout
        self.refresh_s = refresh_s
        self.problem: str | None = None
        """Why fewer than ``wanted`` are used, or None."""
        self.candidates = 0
        """Connected serving peers that could be used (not dropped), at the last refresh."""
        self._using: dict[Address, RemoteEngineClient] = {}
        self._benched: dict[Address, float] = {}
        """Nodes replaced for giving no verdicts, and until when they are not picked."""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def using(self) -> list[RemoteEngineClient]:
        """The remote clients in use now."""
        with self._lock:
            return list(self._using.values())

    def client_of(self, node_id: Address) -> RemoteEngineClient | None:
        """The client of ``node_id``, if it is in use."""
        with self._lock:
            return self._using.get(node_id)

    def _long_quarantined(self, client: RemoteEngineClient) -> bool:
        entry = self.node.judge.quarantine.entries().get(client.url)
        return entry is not None and entry.failures >= LONG_QUARANTINE

    def refresh(self) -> None:
        """One round: let go of the nodes dropped, long quarantined or disconnected, add others
        (:func:`pick_nodes`), and ask discovery for more."""
        judge = self.node.judge
        connected = {node.node_id: node for node in self.network.execution_nodes()}
        now = time.monotonic()
        with self._lock:
            self._benched = {n: until for n, until in self._benched.items() if until > now}
            for node_id, client in list(self._using.items()):
                why = (
                    "dropped"
                    if client.url in self.node.dropped
                    else "disconnected"
                    if node_id not in connected
                    else "quarantined for long"
                    if self._long_quarantined(client)
                    else f"no verdict in its last {client.no_verdicts} answers"
                    if client.no_verdicts >= LONG_NO_VERDICT
                    else None
                )
                if why is not None:
                    log.info("remote execution node %s no longer used: %s", client.url, why)
                    del self._using[node_id]
                    judge.remove_client(client)
                    if node_id not in connected:  # its calls since it left failed, no fault
                        judge.quarantine.forget(client.url)
                    if client.no_verdicts >= LONG_NO_VERDICT:
                        self._benched[node_id] = now + BENCH_S
            usable = [
                node
                for node in connected.values()
                if remote_url(node.node_id) not in self.node.dropped
            ]
            self.candidates = len(usable)
            held = judge.quarantine.entries()
            fresh = [
                node
                for node in usable
                if node.node_id not in self._using
                and node.node_id not in self._benched
                and not (  # not back while it keeps failing
                    (entry := held.get(remote_url(node.node_id))) is not None
                    and entry.failures >= LONG_QUARANTINE
                    and judge.quarantine.holds(remote_url(node.node_id))
                )
            ]
            in_use = [client.node for client in self._using.values()]
            picked, self.problem = pick_nodes(fresh, self.wanted, in_use)
            if self.problem is not None and self._benched:
                self.problem += (
                    f"; {len(self._benched)} set aside for a while: they answered without a "
                    "verdict (SYNCING, ACCEPTED or refused) too often"
                )
            for node in picked:
                client = RemoteEngineClient(node, self.network, self.timeout)
                self._using[node.node_id] = client
                judge.add_client(client)
                log.info(
                    "using remote execution node %s at %s:%d", client.url, node.host, node.port
                )
        self.network.want_execution_nodes(self.wanted + 2)

    def fill(self) -> None:
        """Refresh now if fewer than ``wanted`` nodes are in use. The node calls it before it
        judges a block: serving peers that have just connected start a sync within milliseconds
        of their Status, well before the next refresh, and their first blocks would otherwise
        come back undecided (the peers then rest 10 s) or be judged by fewer nodes than could
        judge them. While enough are in use it costs a lock."""
        with self._lock:
            short = len(self._using) < self.wanted
        if short:
            try:
                self.refresh()
            except QoinError as exc:  # e.g. the p2p loop did not answer in time: no node now
                log.info("looking for remote execution nodes failed: %s", exc)

    def forget(self, node_id: Address) -> None:
        """Stop using ``node_id`` now (it was caught lying); the next refresh replaces it."""
        with self._lock:
            client = self._using.pop(node_id, None)
        if client is not None:
            self.node.judge.remove_client(client)

    def report(self) -> dict[str, Any]:
        """What ``consensus_status`` shows as ``remoteExecution``; ``problem`` also says when no
        node in use answers now (before the next refresh replaces them)."""
        held = self.node.judge.quarantine.entries()
        with self._lock:
            clients = list(self._using.values())
            problem = self.problem
        using = [
            {
                "node": str(client.node_id),
                "address": f"{client.node.host}:{client.node.port}",
                "state": "dropped"
                if client.url in self.node.dropped
                else "quarantined"
                if client.url in held
                else "active",
                "traffic": client.traffic(),
            }
            for client in clients
        ]
        if problem is None and not any(entry["state"] == "active" for entry in using):
            problem = f"none of the {len(using)} remote execution nodes in use answers now"
        return {
            "wanted": self.wanted,
            "using": using,
            "candidates": self.candidates,
            "problem": problem,
        }

    def start(self) -> None:
        """Refresh now, then every ``refresh_s`` on a thread of its own, until :meth:`close`."""
        self.refresh()
        self._thread = threading.Thread(target=self._run, name="remote-execution", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.refresh_s):
            try:
                self.refresh()
            except Exception:  # keep looking; say why
                log.exception("refreshing the remote execution nodes failed")

    def close(self) -> None:
        """Stop refreshing."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
