"""Peer bookkeeping: known addresses and dialling, connection limits, misbehaviour scores and timed
bans.

Pure and deterministic: no sockets, no files, no threads. Time comes from an injected monotonic
``clock``; the networking code calls :class:`PeerManager` when something happens (a TCP
connection arrives, a handshake completes, a dial fails, a peer sends something invalid or
useful) and asks it what to do next (accept this connection? which addresses to dial?).

Limits
    At most ``max_inbound`` inbound and ``max_outbound`` outbound connections, counted
    separately so that inbound connections (which an attacker controls) can never take the
    outbound slots (which we choose), the usual defence against eclipse attacks. One connection
    per node id; never a connection to ourselves.

Duplicates
    Two nodes that dial each other at the same moment end up with two connections, one in each
    direction. Both ends must close the same one, so the rule depends only on facts both ends
    share: **keep the connection initiated by the node with the lower node id** (bytes compared).
    Two connections in the same direction (one peer dialled twice) keep the first; only a
    misbehaving dialler does that, and if its two ends disagree both connections close and it
    dials again.

Scores
    Each peer has a misbehaviour score, 0 for a clean peer. :meth:`PeerManager.penalise` adds the
    :class:`Misbehaviour`'s penalty (table :data:`~qoin.p2p.misbehaviour.PENALTIES`); when the score reaches
    ``ban_threshold`` the peer is banned and forgotten as a connection (the caller closes it).
    :meth:`PeerManager.reward` takes :data:`REWARD_POINTS` off for each useful message, never
    below 0: a peer cannot bank credit in advance to pay for later misbehaviour. Scores outlive a
    disconnection (for the last :data:`MAX_REMEMBERED_SCORES` node ids) so that reconnecting does
    not wipe them.

Bans
    A ban lasts ``ban_duration_s`` by the clock and covers the node id **and** the host it was
    connected from (an IPv4 address, or the IPv6 /64, since one IPv6 host usually owns a whole
    /64). A node id ban refuses every connection. A host ban refuses **inbound** connections only,
    whatever key they present: a fresh identity key costs an attacker milliseconds, a fresh IP
    address does not. It does not refuse outbound ones: those go to addresses we picked, and
    refusing them would cut us off from honest nodes that share a host or NAT with the offender
    (several nodes behind one carrier-grade NAT, a hosting provider's shared address). The
    trade-off that remains is that such honest nodes cannot dial *us* during the ban. Loopback
    hosts are never host-banned nor rate-limited by default (``trusted_loopback``): several nodes
    on one machine (tests, devnets) share 127.0.0.1, and a local process is already inside the
    machine's trust boundary; their node ids are still banned. Bans are persisted by the node with
    :mod:`qoin.p2p.bans`, which stores wall-clock expiry times.

Dialling
    :meth:`PeerManager.want_outbound` proposes addresses to dial for the free outbound slots:
    bootnodes first (in configured order), then known addresses (fewest recent failures first,
    then oldest first), skipping addresses whose node is banned or connected, addresses being
    dialled, our own address, and addresses still backing off. Each failure doubles the wait
    (:data:`DIAL_BACKOFF_BASE_S`, then twice, four times, … up to :data:`DIAL_BACKOFF_MAX_S`); a completed
    handshake resets it. A known (gossiped) address that failed :data:`FORGET_AFTER_FAILURES`
    times in a row is dropped; bootnodes are never dropped. The known-address table holds at most
    ``max_known`` addresses; when full the oldest is dropped.

Inbound handshakes
    A responder spends a signature on any initiator that completes the key exchange (spec §7),
    so :meth:`PeerManager.allow_inbound_handshake` rate-limits new inbound TCP connections per
    host with a token bucket (:data:`HANDSHAKE_BURST` at once, then one per
    :data:`HANDSHAKE_REFILL_S`) before the handshake starts, and all hosts together, trusted
    loopback included, with another (:data:`ALL_HANDSHAKES_BURST` at once, then
    :data:`ALL_HANDSHAKES_PER_S` a second): a flood of handshakes cannot take more than a bounded
    share of a core from mining and import. (The listener also caps the handshakes in flight.)

Every table is bounded; every bad input raises a :class:`PeerError` subclass (a malformed
address :class:`~qoin.p2p.addresses.PeerAddressError`, a malformed restored ban
:class:`~qoin.p2p.bans.BanListError`).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from itertools import chain
from typing import Final, TypeVar

from qoin.crypto.address import Address, AddressError
from qoin.errors import QoinError
from qoin.p2p.addresses import (
    Endpoint,
    PeerAddress,
    PeerAddressError,
    host_key,
    is_loopback,
    parse_host_key,
)
from qoin.p2p.bans import MAX_DETAIL_CHARS, BanEntry, BanKind, BanListError
from qoin.p2p.misbehaviour import Misbehaviour
from qoin.ratelimit import TokenBucket

# --- constants -------------------------------------------------------------------------------

DEFAULT_MAX_INBOUND: Final = 32
"""Inbound connections a node accepts by default."""
DEFAULT_MAX_OUTBOUND: Final = 8
"""Outbound connections a node keeps by default."""
DEFAULT_BAN_THRESHOLD: Final = 100
"""Misbehaviour score at which a peer is banned; :data:`PENALTIES` are scaled to it."""
DEFAULT_BAN_DURATION_S: Final = 24 * 3600.0
"""How long a ban lasts by default: a day, long enough to make an attack expensive and short
enough that an honest node that ran a buggy release, or shares an address with an offender, comes
back without an operator."""
MAX_KNOWN_ADDRESSES: Final = 1_000
"""Default bound of the known-address table (bootnodes are kept apart and not counted)."""
MAX_REMEMBERED_SCORES: Final = 4_096
"""Scores of disconnected peers kept, least recently seen dropped first."""
MAX_BANS: Final = 10_000
"""Bans kept per kind (node ids, hosts); beyond it the one expiring soonest is dropped."""
REWARD_POINTS: Final = 1
"""Score healed by one useful message."""
DIAL_BACKOFF_BASE_S: Final = 1.0
"""Wait after the first failed dial; doubled after each further failure."""
DIAL_BACKOFF_MAX_S: Final = 600.0
"""Longest wait between two dials of one address."""
DIAL_RESERVATION_S: Final = 30.0
"""An address handed out by ``want_outbound`` is not handed out again for this long unless the
dial is reported (longer than the transport's 10 s handshake timeout)."""
FORGET_AFTER_FAILURES: Final = 10
"""Consecutive failed dials after which a known (non-bootnode) address is dropped."""
HANDSHAKE_BURST: Final = 5
"""Inbound handshakes one host may start at once."""
HANDSHAKE_REFILL_S: Final = 2.0
"""One more inbound handshake per host is allowed every this many seconds."""
ALL_HANDSHAKES_BURST: Final = 64
"""Inbound handshakes all hosts together may start at once."""
ALL_HANDSHAKES_PER_S: Final = 16.0
"""Inbound handshakes all hosts together may start per second after the burst (each costs the
responder a hybrid signature and a key exchange, ≈ 10 ms of a core: at most ≈ 16 % of one)."""
MAX_RATE_LIMITED_HOSTS: Final = 1_024
"""Hosts whose handshake rate is tracked, least recently seen dropped first."""

_K = TypeVar("_K", str, Address)

# --- errors ----------------------------------------------------------------------------------


class PeerError(QoinError):
    """Invalid input to the peer bookkeeping."""


class PeerConfigError(PeerError):
    """An invalid peer-manager setting (a negative limit, a non-finite duration, …)."""


class ConnectionRefusal(StrEnum):
    """Why :meth:`PeerManager.on_connected` refused a connection."""

    SELF = "self"
    """The peer is this node."""
    WRONG_NODE_ID = "wrong-node-id"
    """The dialled address expects another node id."""
    BANNED = "banned"
    """The node id is banned."""
    HOST_BANNED = "host-banned"
    """An inbound connection from a banned host."""
    DUPLICATE = "duplicate"
    """Already connected to this node id, and the existing connection is kept."""
    INBOUND_FULL = "inbound-full"
    """No inbound slot free."""
    OUTBOUND_FULL = "outbound-full"
    """No outbound slot free."""


# --- results and snapshots -------------------------------------------------------------------


@dataclass(frozen=True)
class Admission:
    """The answer of :meth:`PeerManager.on_connected`; true exactly when the connection is kept."""

    accepted: bool
    reason: ConnectionRefusal | None = None
    """Why it was refused; ``None`` when accepted."""
    detail: str = ""
    """A sentence for the log."""
    connection_id: int | None = None
    """When accepted: the id to pass to :meth:`PeerManager.on_disconnected`."""
    replaced_id: int | None = None
    """When accepted in place of an earlier connection to the same node (the duplicate rule): that
    connection's id. The manager has already forgotten it; the caller must close it."""

    def __bool__(self) -> bool:
        return self.accepted


@dataclass(frozen=True)
class PeerStatus:
    """One connected peer, as shown by :meth:`PeerManager.snapshot`."""

    connection_id: int
    node_id: Address
    address: PeerAddress
    """For outbound peers the dialled address; for inbound ones the remote socket address."""
    inbound: bool
    score: int
    """Misbehaviour score, from 0 up to the ban threshold minus 1."""
    connected_since: float
    """Clock reading when the connection was accepted."""


@dataclass(frozen=True)
class PeerSnapshot:
    """The peer manager's state for status pages and monitoring."""

    peers: tuple[PeerStatus, ...]
    """Connected peers, in the order they connected."""
    bans: tuple[BanEntry, ...]
    """Active bans, node ids first, each kind sorted by subject."""
    inbound: int
    outbound: int
    max_inbound: int
    max_outbound: int
    ban_threshold: int
    known_addresses: int
    """Known (non-bootnode) addresses."""
    dialling: int
    """Addresses handed out by ``want_outbound`` and not yet reported."""


# --- internal records ------------------------------------------------------------------------


@dataclass
class _Connection:
    connection_id: int
    node_id: Address
    address: PeerAddress
    inbound: bool
    since: float
    score: int


@dataclass
class _Remembered:
    score: int
    host: str | None


@dataclass
class _Ban:
    expires_at: float
    reason: Misbehaviour
    detail: str


@dataclass
class _DialState:
    address: PeerAddress
    bootnode: bool
    learned_id: Address | None = None
    failures: int = 0
    next_attempt: float = -math.inf
    is_self: bool = False

    @property
    def node_id(self) -> Address | None:
        return self.address.node_id if self.address.node_id is not None else self.learned_id


def _check_limit(name: str, value: int, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise PeerConfigError(f"{name} must be an integer ≥ {minimum}, got {value!r}")


def _check_duration(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PeerConfigError(f"{name} must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise PeerConfigError(f"{name} must be finite and positive, got {value!r}")


# --- the manager -----------------------------------------------------------------------------


class PeerManager:
    """Connections, known addresses, scores and bans of one node (module docstring for the rules).

    ``own_id`` is this node's id (connections to it are refused). ``max_inbound`` and
    ``max_outbound`` may be 0 (no inbound: a node behind a firewall; no outbound: a seed that only
    answers). ``ban_threshold`` ≥ 1, ``ban_duration_s`` > 0. ``bootnodes`` are dialled first and
    never forgotten; one carrying ``own_id`` (a shared list that names this node too) is ignored.
    ``clock`` must be monotonic. Raises :class:`PeerConfigError`. Not thread-safe: call it from
    the event loop that owns the connections.
    """

    def __init__(
        self,
        own_id: Address,
        *,
        max_inbound: int = DEFAULT_MAX_INBOUND,
        max_outbound: int = DEFAULT_MAX_OUTBOUND,
        ban_threshold: int = DEFAULT_BAN_THRESHOLD,
        ban_duration_s: float = DEFAULT_BAN_DURATION_S,
        clock: Callable[[], float] = time.monotonic,
        bootnodes: Iterable[PeerAddress] = (),
        max_known: int = MAX_KNOWN_ADDRESSES,
        trusted_loopback: bool = True,
    ) -> None:
        if not isinstance(own_id, Address):
            raise PeerConfigError(f"own_id must be an Address, got {own_id!r}")
        _check_limit("max_inbound", max_inbound, 0)
        _check_limit("max_outbound", max_outbound, 0)
        _check_limit("ban_threshold", ban_threshold, 1)
        _check_limit("max_known", max_known, 0)
        _check_duration("ban_duration_s", ban_duration_s)
        self._own_id = own_id
        self._max_inbound = max_inbound
        self._max_outbound = max_outbound
        self._ban_threshold = ban_threshold
        self._ban_duration_s = float(ban_duration_s)
        self._clock = clock
        self._max_known = max_known
        self._trusted_loopback = trusted_loopback
        self._connections: dict[int, _Connection] = {}
        self._by_node: dict[Address, int] = {}
        self._next_connection_id = 1
        self._remembered: OrderedDict[Address, _Remembered] = OrderedDict()
        self._node_bans: dict[Address, _Ban] = {}
        self._host_bans: dict[str, _Ban] = {}
        self._next_expiry = math.inf
        self._bootnodes: dict[Endpoint, _DialState] = {}
        self._known: OrderedDict[Endpoint, _DialState] = OrderedDict()
        self._dialling: dict[Endpoint, float] = {}
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self._all_handshakes = TokenBucket.full(ALL_HANDSHAKES_BURST, ALL_HANDSHAKES_PER_S, clock())
        for address in bootnodes:
            if not isinstance(address, PeerAddress):
                raise PeerConfigError(f"a bootnode is a PeerAddress, got {address!r}")
            if address.node_id != own_id and address.endpoint not in self._bootnodes:
                self._bootnodes[address.endpoint] = _DialState(address, bootnode=True)

    # -- properties ---------------------------------------------------------------------------

    @property
    def own_id(self) -> Address:
        """This node's id."""
        return self._own_id

    @property
    def ban_threshold(self) -> int:
        """Score at which a peer is banned."""
        return self._ban_threshold

    @property
    def ban_duration_s(self) -> float:
        """How long a ban lasts."""
        return self._ban_duration_s

    # -- time and bans ------------------------------------------------------------------------

    def _now(self) -> float:
        """Read the clock and drop the bans that have expired."""
        now = self._clock()
        if now >= self._next_expiry:
            self._node_bans = {k: b for k, b in self._node_bans.items() if b.expires_at > now}
            self._host_bans = {k: b for k, b in self._host_bans.items() if b.expires_at > now}
            self._next_expiry = min(
                (b.expires_at for b in chain(self._node_bans.values(), self._host_bans.values())),
                default=math.inf,
            )
        return now

    def _host_exempt(self, host: str) -> bool:
        return self._trusted_loopback and is_loopback(host)

    def _host_banned(self, host: str) -> bool:
        return not self._host_exempt(host) and host_key(host) in self._host_bans

    def _add_ban(self, table: dict[_K, _Ban], key: _K, ban: _Ban) -> None:
        existing = table.get(key)
        if existing is not None and existing.expires_at >= ban.expires_at:
            return
        table[key] = ban
        self._next_expiry = min(self._next_expiry, ban.expires_at)
        while len(table) > MAX_BANS:
            soonest = min(table, key=lambda k: table[k].expires_at)
            del table[soonest]

    def _ban_node(self, node_id: Address, ban: _Ban) -> None:
        self._add_ban(self._node_bans, node_id, ban)

    def _ban_host(self, host: str, ban: _Ban) -> None:
        if not self._host_exempt(host):
            self._add_ban(self._host_bans, host_key(host), ban)

    def is_banned(self, node_id: Address | None = None, host: str | None = None) -> bool:
        """Whether ``node_id`` or ``host`` is banned now (give at least one).

        A host counts as banned when its :func:`host_key` is (never a trusted loopback host).
        Raises :class:`PeerError` when neither is given, :class:`PeerAddressError` for a bad host.
        """
        if node_id is None and host is None:
            raise PeerError("is_banned needs a node id or a host")
        self._now()
        if node_id is not None and node_id in self._node_bans:
            return True
        return host is not None and self._host_banned(host)

    def bans(self) -> tuple[BanEntry, ...]:
        """The active bans: node ids first, each kind sorted by subject."""
        now = self._now()
        nodes = sorted((str(node), ban) for node, ban in self._node_bans.items())
        hosts = sorted(self._host_bans.items())
        return tuple(
            BanEntry(kind, subject, ban.reason, ban.detail, ban.expires_at - now)
            for kind, entries in ((BanKind.NODE, nodes), (BanKind.HOST, hosts))
            for subject, ban in entries
        )

    def restore_bans(self, entries: Iterable[BanEntry]) -> int:
        """Re-impose saved bans (from :func:`bans_from_json`); return how many were imposed.

        Each lasts its ``remaining_s``, but never longer than ``ban_duration_s`` (a clock that
        jumped back, or a hand-edited file, cannot make a ban permanent). Entries already expired
        are skipped (a host ban of a loopback host is kept but has no effect while
        ``trusted_loopback``); a peer connected under a restored
        node-id ban is forgotten as a connection (the caller should restore bans before it
        listens). Raises :class:`BanListError` for an entry whose subject is malformed.
        """
        now = self._now()
        imposed = 0
        for entry in entries:
            if entry.remaining_s <= 0:
                continue
            ban = _Ban(
                now + min(entry.remaining_s, self._ban_duration_s),
                entry.reason,
                entry.detail[:MAX_DETAIL_CHARS],
            )
            try:
                if entry.kind is BanKind.NODE:
                    node_id = Address.from_text(entry.subject)
                    self._ban_node(node_id, ban)
                    self._forget_connection_of(node_id)
                else:
                    self._add_ban(self._host_bans, parse_host_key(entry.subject), ban)
            except (AddressError, PeerAddressError) as exc:
                raise BanListError(f"bad {entry.kind} ban {entry.subject!r}: {exc}") from None
            imposed += 1
        return imposed

    # -- connections --------------------------------------------------------------------------

    def _counts(self, excluding: _Connection | None = None) -> tuple[int, int]:
        inbound = outbound = 0
        for connection in self._connections.values():
            if connection is excluding:
                continue
            if connection.inbound:
                inbound += 1
            else:
                outbound += 1
        return inbound, outbound

    def can_accept_inbound(self) -> bool:
        """Whether an inbound slot is free (the number of peers is bounded)."""
        return self._counts()[0] < self._max_inbound

    def allow_inbound_handshake(self, host: str) -> bool:
        """Whether to start a handshake with a new inbound TCP connection from ``host``.

        False when no inbound slot is free, the host is banned, the host has started more than
        :data:`HANDSHAKE_BURST` handshakes recently (one more per :data:`HANDSHAKE_REFILL_S`;
        trusted loopback is exempt), or all hosts together more than :data:`ALL_HANDSHAKES_BURST`
        (:data:`ALL_HANDSHAKES_PER_S` more a second; nobody is exempt). Each true answer uses up
        one token of each bucket that applies. Call it before the handshake, so that a
        refused host costs no signature; ``on_connected`` still decides after the handshake.
        """
        now = self._now()
        if not self.can_accept_inbound() or self._host_banned(host):
            return False
        host_bucket = None
        if not self._host_exempt(host):
            key = host_key(host)
            host_bucket = self._buckets.pop(key, None)
            if host_bucket is None:
                host_bucket = TokenBucket.full(HANDSHAKE_BURST, 1 / HANDSHAKE_REFILL_S, now)
            self._buckets[key] = host_bucket
            while len(self._buckets) > MAX_RATE_LIMITED_HOSTS:
                self._buckets.popitem(last=False)
        buckets = (
            [self._all_handshakes] if host_bucket is None else [self._all_handshakes, host_bucket]
        )
        if any(bucket.refill(now) < 1 for bucket in buckets):
            return False
        for bucket in buckets:
            bucket.tokens -= 1
        return True

    def _dial_state(self, endpoint: Endpoint) -> _DialState | None:
        state = self._bootnodes.get(endpoint)
        return state if state is not None else self._known.get(endpoint)

    def _identity_refusal(
        self, node_id: Address, address: PeerAddress, inbound: bool
    ) -> tuple[ConnectionRefusal, str] | None:
        """Refusals that do not depend on the other connections."""
        if node_id == self._own_id:
            return ConnectionRefusal.SELF, f"{address} is this node"
        if not inbound:
            state = self._dial_state(address.endpoint)
            expected = address.node_id
            if expected is None and state is not None and state.bootnode:
                expected = state.address.node_id
            if expected is not None and expected != node_id:
                return (
                    ConnectionRefusal.WRONG_NODE_ID,
                    f"expected {expected} at {address}, got {node_id}",
                )
        if node_id in self._node_bans:
            return ConnectionRefusal.BANNED, f"{node_id} is banned"
        if inbound and self._host_banned(address.host):
            return ConnectionRefusal.HOST_BANNED, f"host {host_key(address.host)} is banned"
        return None

    def _after_handshake(
        self, node_id: Address, address: PeerAddress, refusal: ConnectionRefusal | None, now: float
    ) -> None:
        """Dial bookkeeping for an outbound handshake that completed (refused or not)."""
        self._dialling.pop(address.endpoint, None)
        state = self._dial_state(address.endpoint)
        if state is None:
            return
        if refusal is ConnectionRefusal.SELF:
            state.is_self = True
        elif refusal is ConnectionRefusal.WRONG_NODE_ID:
            self._record_failure(state, now)
        else:
            state.learned_id = node_id
            state.failures = 0
            state.next_attempt = -math.inf

    def _new_connection_wins(self, inbound: bool, node_id: Address) -> bool:
        """The duplicate rule: keep the connection initiated by the lower node id."""
        we_initiated = not inbound
        we_are_lower = self._own_id.raw < node_id.raw
        return we_initiated == we_are_lower

    def on_connected(self, node_id: Address, address: PeerAddress, inbound: bool) -> Admission:
        """Decide whether to keep a connection whose handshake has just completed.

        ``address`` is the dialled address for an outbound connection, the remote socket address
        for an inbound one. Refused, in this order: a connection to ourselves; an outbound one
        whose node id differs from the one expected at that address (``address.node_id``, or the
        bootnode's configured id); a banned node id; an inbound one from a banned host; a second
        connection to a connected node id, unless it wins the duplicate rule (then the earlier one
        is replaced, see :attr:`Admission.replaced_id`); one with no free slot in its direction.
        A refused connection must be closed and never reported to :meth:`on_disconnected`.
        An outbound handshake also updates the dial state of its address: success resets the
        backoff, a wrong node id counts as a failed dial, and reaching ourselves means that
        address is never dialled again.
        """
        now = self._now()
        refusal = self._identity_refusal(node_id, address, inbound)
        if not inbound:
            self._after_handshake(node_id, address, refusal[0] if refusal else None, now)
        if refusal is not None:
            return Admission(False, refusal[0], refusal[1])
        replaced: _Connection | None = None
        existing_id = self._by_node.get(node_id)
        if existing_id is not None:
            existing = self._connections[existing_id]
            if existing.inbound == inbound or not self._new_connection_wins(inbound, node_id):
                return Admission(
                    False,
                    ConnectionRefusal.DUPLICATE,
                    f"already connected to {node_id} (connection {existing_id}); keeping that one",
                )
            replaced = existing
        inbound_count, outbound_count = self._counts(excluding=replaced)
        if inbound and inbound_count >= self._max_inbound:
            return Admission(
                False, ConnectionRefusal.INBOUND_FULL, f"{inbound_count} inbound peers"
            )
        if not inbound and outbound_count >= self._max_outbound:
            return Admission(
                False, ConnectionRefusal.OUTBOUND_FULL, f"{outbound_count} outbound peers"
            )
        if replaced is not None:
            score = replaced.score
            self._drop_connection(replaced)
        else:
            remembered = self._remembered.pop(node_id, None)
            score = 0 if remembered is None else remembered.score
        connection_id = self._next_connection_id
        self._next_connection_id += 1
        self._connections[connection_id] = _Connection(
            connection_id, node_id, address, inbound, now, score
        )
        self._by_node[node_id] = connection_id
        detail = f"{'inbound' if inbound else 'outbound'} peer {node_id} at {address}"
        if replaced is not None:
            detail += f", replacing connection {replaced.connection_id}"
        return Admission(
            True,
            None,
            detail,
            connection_id,
            None if replaced is None else replaced.connection_id,
        )

    def _drop_connection(self, connection: _Connection) -> None:
        del self._connections[connection.connection_id]
        del self._by_node[connection.node_id]

    def _forget_connection_of(self, node_id: Address) -> None:
        connection_id = self._by_node.get(node_id)
        if connection_id is not None:
            self._drop_connection(self._connections[connection_id])

    def _remember(self, node_id: Address, score: int, host: str | None) -> None:
        self._remembered.pop(node_id, None)
        self._remembered[node_id] = _Remembered(score, host)
        while len(self._remembered) > MAX_REMEMBERED_SCORES:
            self._remembered.popitem(last=False)

    def on_disconnected(self, connection_id: int) -> bool:
        """Forget an accepted connection that has closed; False if it was not (or no longer) kept.

        The peer's score is remembered. An outbound address is not dialled again for
        :data:`DIAL_BACKOFF_BASE_S`, so that a peer which accepts and at once hangs up cannot make
        us dial it in a tight loop.
        """
        now = self._now()
        connection = self._connections.get(connection_id)
        if connection is None:
            return False
        self._drop_connection(connection)
        self._remember(connection.node_id, connection.score, connection.address.host)
        if not connection.inbound:
            state = self._dial_state(connection.address.endpoint)
            if state is not None:
                state.next_attempt = max(state.next_attempt, now + DIAL_BACKOFF_BASE_S)
        return True

    def is_connected(self, node_id: Address) -> bool:
        """Whether a connection to ``node_id`` is kept."""
        return node_id in self._by_node

    def connection_id(self, node_id: Address) -> int | None:
        """The id of the kept connection to ``node_id``, if any."""
        return self._by_node.get(node_id)

    # -- scores -------------------------------------------------------------------------------

    def score(self, node_id: Address) -> int:
        """The misbehaviour score of ``node_id`` (0 when unknown or banned)."""
        connection_id = self._by_node.get(node_id)
        if connection_id is not None:
            return self._connections[connection_id].score
        remembered = self._remembered.get(node_id)
        return 0 if remembered is None else remembered.score

    def penalise(self, node_id: Address, kind: Misbehaviour, detail: str = "") -> bool:
        """Add ``kind``'s penalty to the peer's score; True when the peer is (now) banned.

        At ``ban_threshold`` the node id is banned for ``ban_duration_s``, and so is the host of
        its connection (or of its last connection, if it has already gone), unless that is a
        trusted loopback host. The banned peer's connection is forgotten at once (the caller
        closes it; a later :meth:`on_disconnected` for it returns False) and its score is dropped,
        so that it starts from 0 when the ban ends. Other connections from the same host are left
        alone: each is judged by its own behaviour. ``detail`` (cut to :data:`MAX_DETAIL_CHARS`)
        is kept with the ban. A node id already banned is not banned longer.
        """
        if not isinstance(kind, Misbehaviour):
            raise PeerError(f"not a Misbehaviour: {kind!r}")
        now = self._now()
        if node_id in self._node_bans:
            self._forget_connection_of(node_id)
            return True
        connection_id = self._by_node.get(node_id)
        connection = None if connection_id is None else self._connections[connection_id]
        remembered = self._remembered.get(node_id)
        host: str | None
        if connection is not None:
            score, host = connection.score, connection.address.host
        elif remembered is not None:
            score, host = remembered.score, remembered.host
        else:
            score, host = 0, None
        score = min(self._ban_threshold, score + kind.penalty)
        if score < self._ban_threshold:
            if connection is not None:
                connection.score = score
            else:
                self._remember(node_id, score, host)
            return False
        ban = _Ban(now + self._ban_duration_s, kind, str(detail)[:MAX_DETAIL_CHARS])
        self._ban_node(node_id, ban)
        if host is not None:
            self._ban_host(host, ban)
        if connection is not None:
            self._drop_connection(connection)
        self._remembered.pop(node_id, None)
        return True

    def reward(self, node_id: Address) -> int:
        """Heal the peer's score by :data:`REWARD_POINTS` for useful data, never below 0.

        Returns the new score. Unknown and banned node ids are left alone (score 0).
        """
        connection_id = self._by_node.get(node_id)
        if connection_id is not None:
            connection = self._connections[connection_id]
            connection.score = max(0, connection.score - REWARD_POINTS)
            return connection.score
        remembered = self._remembered.get(node_id)
        if remembered is None:
            return 0
        remembered.score = max(0, remembered.score - REWARD_POINTS)
        return remembered.score

    # -- addresses and dialling ---------------------------------------------------------------

    def add_known(self, addresses: Iterable[PeerAddress]) -> int:
        """Add addresses learnt from peers; return how many were new.

        Bootnode addresses, addresses already known (even with another node id: gossip does not
        overwrite what we have) and addresses naming this node are skipped. Beyond ``max_known``
        the oldest additions are dropped.
        """
        added = 0
        for address in addresses:
            if not isinstance(address, PeerAddress):
                raise PeerAddressError(f"not a PeerAddress: {address!r}")
            endpoint = address.endpoint
            if (
                address.node_id == self._own_id
                or endpoint in self._bootnodes
                or endpoint in self._known
            ):
                continue
            self._known[endpoint] = _DialState(address, bootnode=False)
            added += 1
            while len(self._known) > self._max_known:
                self._known.popitem(last=False)
        return added

    def forget(self, node_id: Address) -> int:
        """Stop dialling ``node_id``: drop every bootnode and known address naming it (an operator
        removing a peer); return how many were dropped. Its score, bans and any open connection
        are left as they are: the caller closes the connection."""
        dropped = 0
        for table in (self._bootnodes, self._known):
            for endpoint in [e for e, state in table.items() if state.address.node_id == node_id]:
                del table[endpoint]
                self._dialling.pop(endpoint, None)
                dropped += 1
        return dropped

    def known_addresses(self) -> tuple[PeerAddress, ...]:
        """Bootnodes, then known addresses, oldest first."""
        return tuple(s.address for s in chain(self._bootnodes.values(), self._known.values()))

    def _dialable(self, state: _DialState, now: float, connected: set[Endpoint]) -> bool:
        endpoint = state.address.endpoint
        if state.is_self or now < state.next_attempt:
            return False
        if endpoint in self._dialling or endpoint in connected:
            return False
        node_id = state.node_id
        return node_id is None or not (
            node_id == self._own_id or node_id in self._node_bans or node_id in self._by_node
        )

    def want_outbound(self) -> list[PeerAddress]:
        """Addresses to dial now, at most one per free outbound slot.

        Bootnodes first, then known addresses with the fewest consecutive failures (oldest first
        among equals). Skipped: addresses whose node id (expected or learnt) is banned, connected
        or ours; addresses already connected outbound; addresses still backing off; addresses
        handed out earlier and not yet reported. The addresses returned are reserved (not handed
        out again) until :meth:`on_connected` or :meth:`on_dial_failed` reports them, or for
        :data:`DIAL_RESERVATION_S`. Dial each with ``expected_peer`` = its ``node_id``.
        """
        now = self._now()
        self._dialling = {e: until for e, until in self._dialling.items() if until > now}
        free = self._max_outbound - self._counts()[1] - len(self._dialling)
        if free <= 0:
            return []
        connected = {c.address.endpoint for c in self._connections.values() if not c.inbound}
        known = sorted(self._known.values(), key=lambda state: state.failures)
        chosen: list[PeerAddress] = []
        for state in chain(self._bootnodes.values(), known):
            if len(chosen) >= free:
                break
            if self._dialable(state, now, connected):
                chosen.append(state.address)
                self._dialling[state.address.endpoint] = now + DIAL_RESERVATION_S
        return chosen

    def _record_failure(self, state: _DialState, now: float) -> float:
        state.failures += 1
        delay = min(DIAL_BACKOFF_MAX_S, DIAL_BACKOFF_BASE_S * 2.0 ** min(state.failures - 1, 32))
        state.next_attempt = now + delay
        return delay

    def on_dial_failed(self, address: PeerAddress) -> float | None:
        """Record a failed dial (TCP connect or handshake); return the wait before the next one.

        The wait doubles with each consecutive failure, from :data:`DIAL_BACKOFF_BASE_S` up to
        :data:`DIAL_BACKOFF_MAX_S`. Returns None for an address not in the tables (a manual dial)
        and for a known address dropped after :data:`FORGET_AFTER_FAILURES` failures.
        """
        now = self._now()
        endpoint = address.endpoint
        self._dialling.pop(endpoint, None)
        state = self._dial_state(endpoint)
        if state is None:
            return None
        delay = self._record_failure(state, now)
        if not state.bootnode and state.failures >= FORGET_AFTER_FAILURES:
            del self._known[endpoint]
            return None
        return delay

    def dial_failures(self, address: PeerAddress) -> int:
        """Consecutive failed dials of ``address`` (0 when unknown)."""
        state = self._dial_state(address.endpoint)
        return 0 if state is None else state.failures

    # -- monitoring ---------------------------------------------------------------------------

    def snapshot(self) -> PeerSnapshot:
        """The current state, for status pages and monitoring."""
        now = self._now()
        peers = tuple(
            PeerStatus(c.connection_id, c.node_id, c.address, c.inbound, c.score, c.since)
            for c in sorted(self._connections.values(), key=lambda c: c.connection_id)
        )
        inbound, outbound = self._counts()
        return PeerSnapshot(
            peers=peers,
            bans=self.bans(),
            inbound=inbound,
            outbound=outbound,
            max_inbound=self._max_inbound,
            max_outbound=self._max_outbound,
            ban_threshold=self._ban_threshold,
            known_addresses=len(self._known),
            dialling=sum(1 for until in self._dialling.values() if until > now),
        )
