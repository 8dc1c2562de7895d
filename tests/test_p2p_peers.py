"""Peer bookkeeping: limits, duplicates, scores, bans, dialling, persistence (addresses are in
tests/test_p2p_addresses.py, the ban file in tests/test_p2p_bans.py).

Pure unit tests: the manager's clock is a mutable counter advanced by hand, so ban expiry and
dial backoff are exact. A hypothesis test drives random sequences of events and checks the
invariants after each one.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qoin.crypto.address import Address
from qoin.p2p import peers
from qoin.p2p.addresses import (
    PeerAddress,
    PeerAddressError,
)
from qoin.p2p.bans import (
    MAX_DETAIL_CHARS,
    BanEntry,
    BanKind,
    BanListError,
    bans_from_json,
    bans_to_json,
)
from qoin.p2p.misbehaviour import PENALTIES, Misbehaviour
from qoin.p2p.peers import (
    ALL_HANDSHAKES_BURST,
    ALL_HANDSHAKES_PER_S,
    DIAL_BACKOFF_BASE_S,
    DIAL_BACKOFF_MAX_S,
    DIAL_RESERVATION_S,
    FORGET_AFTER_FAILURES,
    HANDSHAKE_BURST,
    HANDSHAKE_REFILL_S,
    REWARD_POINTS,
    ConnectionRefusal,
    PeerConfigError,
    PeerError,
    PeerManager,
)

BAN_S = 3600.0


class FakeClock:
    """The manager's ``clock`` parameter: a number the test moves forward by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def node(n: int) -> Address:
    """A node id whose bytes are all ``n`` (so node(1) < node(2) < …)."""
    return Address(bytes([n]) * 32)


OWN = node(0x80)
LOW = node(0x10)  # sorts below OWN
HIGH = node(0xF0)  # sorts above OWN


def addr(host: str, port: int = 9000, node_id: Address | None = None) -> PeerAddress:
    return PeerAddress(host, port, node_id)


def manager(
    clock: FakeClock | None = None,
    *,
    max_inbound: int = 4,
    max_outbound: int = 2,
    ban_threshold: int = 100,
    bootnodes: tuple[PeerAddress, ...] = (),
    max_known: int = 1000,
    trusted_loopback: bool = True,
) -> PeerManager:
    return PeerManager(
        OWN,
        max_inbound=max_inbound,
        max_outbound=max_outbound,
        ban_threshold=ban_threshold,
        ban_duration_s=BAN_S,
        clock=clock or FakeClock(),
        bootnodes=bootnodes,
        max_known=max_known,
        trusted_loopback=trusted_loopback,
    )


# --- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_inbound": -1},
        {"max_outbound": 1.5},
        {"ban_threshold": 0},
        {"ban_duration_s": 0},
        {"ban_duration_s": float("inf")},
        {"ban_duration_s": float("nan")},
        {"max_known": -1},
    ],
)
def test_bad_config(kwargs: dict[str, object]) -> None:
    with pytest.raises(PeerConfigError):
        PeerManager(OWN, **kwargs)  # type: ignore[arg-type]


def test_bad_config_types() -> None:
    with pytest.raises(PeerConfigError):
        PeerManager(b"\x00" * 32)  # type: ignore[arg-type]
    with pytest.raises(PeerConfigError):
        PeerManager(OWN, bootnodes=["192.0.2.1:9000"])  # type: ignore[list-item]
    with pytest.raises(BanListError):
        bans_to_json((), float("nan"))
    with pytest.raises(BanListError):
        bans_from_json("{}", "now")  # type: ignore[arg-type]


# --- limits, self, duplicates ----------------------------------------------------------------


def test_inbound_and_outbound_limits_are_separate() -> None:
    m = manager(max_inbound=2, max_outbound=1)
    assert m.can_accept_inbound()
    assert m.on_connected(node(1), addr("192.0.2.1", 40001), inbound=True)
    assert m.on_connected(node(2), addr("192.0.2.2", 40002), inbound=True)
    assert not m.can_accept_inbound()
    full = m.on_connected(node(3), addr("192.0.2.3", 40003), inbound=True)
    assert not full and full.reason is ConnectionRefusal.INBOUND_FULL
    assert m.on_connected(node(4), addr("192.0.2.4"), inbound=False)
    full = m.on_connected(node(5), addr("192.0.2.5"), inbound=False)
    assert full.reason is ConnectionRefusal.OUTBOUND_FULL
    snap = m.snapshot()
    assert (snap.inbound, snap.outbound) == (2, 1)
    assert [p.node_id for p in snap.peers] == [node(1), node(2), node(4)]
    # a slot frees up when a peer leaves
    first = m.connection_id(node(1))
    assert first is not None and m.on_disconnected(first)
    assert not m.on_disconnected(first)
    assert m.can_accept_inbound()
    assert m.on_connected(node(3), addr("192.0.2.3", 40003), inbound=True)


def test_zero_inbound_accepts_none() -> None:
    m = manager(max_inbound=0)
    assert not m.can_accept_inbound()
    assert not m.allow_inbound_handshake("192.0.2.1")
    assert (
        m.on_connected(node(1), addr("192.0.2.1"), inbound=True).reason
        is ConnectionRefusal.INBOUND_FULL
    )


def test_self_connection_refused_and_address_never_dialled_again() -> None:
    clock = FakeClock()
    me = addr("192.0.2.9")
    m = manager(clock, bootnodes=(me,))
    assert m.want_outbound() == [me]
    refused = m.on_connected(OWN, me, inbound=False)
    assert refused.reason is ConnectionRefusal.SELF
    assert (
        m.on_connected(OWN, addr("192.0.2.9", 50000), inbound=True).reason is ConnectionRefusal.SELF
    )
    clock.advance(10 * DIAL_BACKOFF_MAX_S)
    assert m.want_outbound() == []
    assert m.snapshot().peers == ()


def test_bootnode_naming_ourselves_is_ignored() -> None:
    m = manager(bootnodes=(addr("192.0.2.9", node_id=OWN), addr("192.0.2.8")))
    assert m.known_addresses() == (addr("192.0.2.8"),)
    assert m.add_known([addr("192.0.2.7", node_id=OWN)]) == 0


def test_duplicate_cross_connection_keeps_the_one_initiated_by_lower_id() -> None:
    # We (OWN) are lower than HIGH: keep our outbound connection, whichever arrived first.
    for first_inbound in (True, False):
        m = manager()
        first = m.on_connected(
            HIGH, addr("192.0.2.1", 9000 if not first_inbound else 40000), first_inbound
        )
        second = m.on_connected(
            HIGH, addr("192.0.2.1", 9000 if first_inbound else 40000), not first_inbound
        )
        assert first
        kept = m.snapshot().peers
        assert len(kept) == 1 and kept[0].inbound is False
        if first_inbound:  # the outbound one came second and replaces the inbound one
            assert second and second.replaced_id == first.connection_id
            assert not m.on_disconnected(first.connection_id or 0)  # already forgotten
            assert m.is_connected(HIGH)
        else:
            assert not second and second.reason is ConnectionRefusal.DUPLICATE
    # LOW is lower than us: keep LOW's outbound connection, i.e. our inbound one.
    for first_inbound in (True, False):
        m = manager()
        m.on_connected(LOW, addr("192.0.2.1", 9000 if not first_inbound else 40000), first_inbound)
        m.on_connected(LOW, addr("192.0.2.1", 9000 if first_inbound else 40000), not first_inbound)
        kept = m.snapshot().peers
        assert len(kept) == 1 and kept[0].inbound is True


def test_duplicate_same_direction_keeps_the_first() -> None:
    m = manager()
    first = m.on_connected(HIGH, addr("192.0.2.1", 40000), inbound=True)
    second = m.on_connected(HIGH, addr("192.0.2.1", 40001), inbound=True)
    assert first and not second and second.reason is ConnectionRefusal.DUPLICATE
    assert m.connection_id(HIGH) == first.connection_id


def test_replacement_keeps_the_score() -> None:
    m = manager()
    m.on_connected(HIGH, addr("192.0.2.1", 40000), inbound=True)
    m.penalise(HIGH, Misbehaviour.PROTOCOL_VIOLATION)
    assert m.on_connected(HIGH, addr("192.0.2.1"), inbound=False)
    assert m.score(HIGH) == PENALTIES[Misbehaviour.PROTOCOL_VIOLATION]


# --- scores and bans -------------------------------------------------------------------------


def test_penalty_table_orders_harm() -> None:
    p = PENALTIES
    assert set(p) == set(Misbehaviour)
    assert p[Misbehaviour.INVALID_BLOCK] >= 100 and p[Misbehaviour.INVALID_HEADER] >= 100
    assert (
        p[Misbehaviour.INVALID_BLOCK]
        > p[Misbehaviour.MALFORMED_MESSAGE]
        > p[Misbehaviour.INVALID_TRANSACTION]
        > p[Misbehaviour.PROTOCOL_VIOLATION]
        > p[Misbehaviour.UNSOLICITED]
        > p[Misbehaviour.TIMEOUT]
        > 0
    )
    assert Misbehaviour.TIMEOUT.penalty == p[Misbehaviour.TIMEOUT]


def test_penalties_accumulate_to_a_ban_at_the_threshold() -> None:
    m = manager()
    peer = node(1)
    m.on_connected(peer, addr("192.0.2.1", 40000), inbound=True)
    for expected in range(20, 100, 20):  # four protocol violations: 80, still connected
        assert not m.penalise(peer, Misbehaviour.PROTOCOL_VIOLATION, "bad order")
        assert m.score(peer) == expected
    assert not m.penalise(peer, Misbehaviour.UNSOLICITED)  # 90
    assert not m.is_banned(peer)
    assert m.penalise(peer, Misbehaviour.UNSOLICITED, "block 12 not requested")  # 100: banned
    assert m.is_banned(peer) and m.is_banned(host="192.0.2.1")
    assert not m.is_connected(peer)
    assert m.snapshot().peers == ()
    (node_ban, host_ban) = m.bans()
    assert node_ban == BanEntry(
        BanKind.NODE, str(peer), Misbehaviour.UNSOLICITED, "block 12 not requested", BAN_S
    )
    assert (host_ban.kind, host_ban.subject) == (BanKind.HOST, "192.0.2.1")
    assert m.penalise(peer, Misbehaviour.TIMEOUT)  # still banned, not banned longer
    assert m.bans()[0].remaining_s == BAN_S


def test_one_invalid_block_bans() -> None:
    m = manager()
    m.on_connected(node(1), addr("192.0.2.1"), inbound=False)
    assert m.penalise(node(1), Misbehaviour.INVALID_BLOCK, "bad state root")


def test_banned_node_and_host_refused_until_the_ban_expires() -> None:
    clock = FakeClock()
    m = manager(clock)
    bad, other, fresh_key = node(1), node(2), node(3)
    m.on_connected(other, addr("192.0.2.1", 40001), inbound=True)  # same host, behaves
    m.on_connected(bad, addr("192.0.2.1", 40000), inbound=True)
    assert m.penalise(bad, Misbehaviour.INVALID_HEADER)
    assert m.is_connected(other)  # judged by its own behaviour
    # the node id, under any address and direction
    assert (
        m.on_connected(bad, addr("198.51.100.1"), inbound=False).reason is ConnectionRefusal.BANNED
    )
    assert (
        m.on_connected(bad, addr("198.51.100.1", 4), inbound=True).reason
        is ConnectionRefusal.BANNED
    )
    # the host, inbound, under a new key
    refused = m.on_connected(fresh_key, addr("192.0.2.1", 40002), inbound=True)
    assert refused.reason is ConnectionRefusal.HOST_BANNED
    assert not m.allow_inbound_handshake("192.0.2.1")
    # but we may still dial a node on that host (NAT, shared hosting)
    assert m.on_connected(fresh_key, addr("192.0.2.1", 9000), inbound=False)
    clock.advance(BAN_S - 1)
    assert m.is_banned(bad) and m.bans()[0].remaining_s == 1
    clock.advance(1)
    assert not m.is_banned(bad) and not m.is_banned(host="192.0.2.1")
    assert m.bans() == ()
    assert m.on_connected(bad, addr("192.0.2.1", 40003), inbound=True)
    assert m.score(bad) == 0  # starts afresh


def test_ipv6_ban_covers_the_slash_64() -> None:
    m = manager()
    m.on_connected(node(1), addr("2001:db8:1:2::5", 40000), inbound=True)
    assert m.penalise(node(1), Misbehaviour.INVALID_BLOCK)
    assert m.is_banned(host="2001:db8:1:2:ffff::9")
    assert not m.is_banned(host="2001:db8:1:3::5")
    refused = m.on_connected(node(2), addr("2001:db8:1:2::77", 1), inbound=True)
    assert refused.reason is ConnectionRefusal.HOST_BANNED


def test_loopback_hosts_are_not_host_banned_by_default() -> None:
    # Several nodes on one machine: banning the offender's node id must not lock the honest ones out.
    m = manager()
    m.on_connected(node(1), addr("127.0.0.1", 40000), inbound=True)
    assert m.penalise(node(1), Misbehaviour.INVALID_BLOCK)
    assert m.is_banned(node(1)) and not m.is_banned(host="127.0.0.1")
    assert m.on_connected(node(2), addr("127.0.0.1", 40001), inbound=True)
    assert (
        m.on_connected(node(1), addr("127.0.0.1", 40002), inbound=True).reason
        is ConnectionRefusal.BANNED
    )
    strict = manager(trusted_loopback=False)
    strict.on_connected(node(1), addr("127.0.0.1", 40000), inbound=True)
    assert strict.penalise(node(1), Misbehaviour.INVALID_BLOCK)
    assert strict.is_banned(host="127.0.0.1")


def test_penalty_after_disconnect_still_counts_and_bans_the_last_host() -> None:
    m = manager()
    first = m.on_connected(node(1), addr("192.0.2.1", 40000), inbound=True)
    m.penalise(node(1), Misbehaviour.MALFORMED_MESSAGE)
    assert m.on_disconnected(first.connection_id or 0)
    assert m.score(node(1)) == 50  # a reconnect does not wipe the score
    again = m.on_connected(node(1), addr("192.0.2.1", 40001), inbound=True)
    assert m.score(node(1)) == 50
    assert m.on_disconnected(again.connection_id or 0)
    assert m.penalise(node(1), Misbehaviour.MALFORMED_MESSAGE)  # its validation finished late
    assert m.is_banned(host="192.0.2.1")
    assert m.penalise(node(9), Misbehaviour.INVALID_BLOCK)  # never connected: node id only
    assert [b.kind for b in m.bans()] == [BanKind.NODE, BanKind.NODE, BanKind.HOST]


def test_rewards_heal_but_are_bounded() -> None:
    m = manager()
    peer = node(1)
    m.on_connected(peer, addr("192.0.2.1"), inbound=False)
    assert m.reward(peer) == 0  # no credit in advance
    m.penalise(peer, Misbehaviour.TIMEOUT)
    m.penalise(peer, Misbehaviour.TIMEOUT)
    assert m.score(peer) == 10
    for expected in range(10 - REWARD_POINTS, -1, -REWARD_POINTS):
        assert m.reward(peer) == expected
    for _ in range(50):
        assert m.reward(peer) == 0
    # 50 rewards banked nothing: a full threshold of penalties still bans
    for _ in range(19):
        assert not m.penalise(peer, Misbehaviour.TIMEOUT)
    assert m.penalise(peer, Misbehaviour.TIMEOUT)
    assert m.reward(node(77)) == 0  # unknown peers are ignored


def test_penalise_rejects_unknown_kinds_and_bounds_details() -> None:
    m = manager()
    with pytest.raises(PeerError):
        m.penalise(node(1), "invalid-block")  # type: ignore[arg-type]
    with pytest.raises(PeerError):
        m.is_banned()
    assert m.penalise(node(1), Misbehaviour.INVALID_BLOCK, "x" * 10_000)
    assert len(m.bans()[0].detail) == MAX_DETAIL_CHARS


def test_inbound_handshakes_are_rate_limited_per_host() -> None:
    clock = FakeClock()
    m = manager(clock, max_inbound=100)
    for _ in range(HANDSHAKE_BURST):
        assert m.allow_inbound_handshake("192.0.2.1")
    assert not m.allow_inbound_handshake("192.0.2.1")
    assert m.allow_inbound_handshake("192.0.2.2")  # other hosts are unaffected
    assert not m.allow_inbound_handshake("2001:db8::1") or m.allow_inbound_handshake("2001:db8::2")
    clock.advance(HANDSHAKE_REFILL_S)
    assert m.allow_inbound_handshake("192.0.2.1")
    assert not m.allow_inbound_handshake("192.0.2.1")
    for _ in range(3 * HANDSHAKE_BURST):  # loopback is trusted
        assert m.allow_inbound_handshake("127.0.0.1")


def test_inbound_handshakes_are_rate_limited_for_all_hosts_together() -> None:
    """~300 forced handshakes a second from 127.0.0.1 (exempt from the per-host limit) cut mining
    from 474 to 109 attempts/s: all hosts together, loopback included, get one bucket."""
    clock = FakeClock()
    m = manager(clock, max_inbound=100)
    for _ in range(ALL_HANDSHAKES_BURST):
        assert m.allow_inbound_handshake("127.0.0.1")
    assert not m.allow_inbound_handshake("127.0.0.1")
    assert not m.allow_inbound_handshake("192.0.2.9")  # a fresh host too: the bucket is shared
    clock.advance(1 / ALL_HANDSHAKES_PER_S)
    assert m.allow_inbound_handshake("192.0.2.9")
    assert not m.allow_inbound_handshake("127.0.0.1")
    clock.advance(1.0)  # a second's worth, no more
    allowed = sum(m.allow_inbound_handshake("127.0.0.1") for _ in range(100))
    assert allowed == ALL_HANDSHAKES_PER_S


# --- dialling --------------------------------------------------------------------------------


def test_bootnodes_first_then_known_and_reservations() -> None:
    clock = FakeClock()
    boot = addr("192.0.2.100", node_id=HIGH)
    m = manager(clock, max_outbound=2, bootnodes=(boot,))
    assert m.add_known([addr("198.51.100.1"), addr("198.51.100.2"), addr("198.51.100.3")]) == 3
    assert m.add_known([addr("198.51.100.1"), boot.with_node_id(None)]) == 0
    assert m.want_outbound() == [boot, addr("198.51.100.1")]
    assert m.want_outbound() == []  # both slots reserved by dials in flight
    assert m.snapshot().dialling == 2
    assert m.on_connected(HIGH, boot, inbound=False)
    assert m.want_outbound() == []  # one connected, one dialling
    assert m.on_dial_failed(addr("198.51.100.1")) == DIAL_BACKOFF_BASE_S
    assert m.want_outbound() == [addr("198.51.100.2")]  # .1 backs off, .2 is next
    m.on_dial_failed(addr("198.51.100.2"))
    clock.advance(DIAL_BACKOFF_BASE_S)
    assert m.want_outbound() == [addr("198.51.100.3")]  # fewest failures first
    m.on_dial_failed(addr("198.51.100.3"))
    clock.advance(DIAL_BACKOFF_BASE_S)
    assert m.want_outbound() == [addr("198.51.100.1")]  # then the oldest


def test_a_forgotten_node_is_not_dialled_bootnode_included() -> None:
    boot = addr("192.0.2.100", node_id=HIGH)
    m = manager(max_outbound=4, bootnodes=(boot,))
    m.add_known([addr("198.51.100.1", node_id=HIGH), addr("198.51.100.2", node_id=LOW)])
    assert m.forget(HIGH) == 2  # the bootnode and the known address naming it
    assert m.known_addresses() == (addr("198.51.100.2", node_id=LOW),)
    assert m.want_outbound() == [addr("198.51.100.2", node_id=LOW)]
    assert m.forget(HIGH) == 0
    assert m.add_known([boot]) == 1  # added again (consensus_addPeer), dialled again
    assert m.want_outbound() == [boot]


def test_reservation_expires_when_a_dial_is_never_reported() -> None:
    clock = FakeClock()
    m = manager(clock, max_outbound=1)
    m.add_known([addr("198.51.100.1")])
    assert m.want_outbound() == [addr("198.51.100.1")]
    clock.advance(DIAL_RESERVATION_S - 1)
    assert m.want_outbound() == []
    clock.advance(1)
    assert m.want_outbound() == [addr("198.51.100.1")]


def test_expected_node_id_mismatch_is_reported_and_backs_off() -> None:
    clock = FakeClock()
    boot = addr("192.0.2.100", node_id=HIGH)
    m = manager(clock, bootnodes=(boot,))
    assert m.want_outbound() == [boot]
    refused = m.on_connected(LOW, boot, inbound=False)
    assert not refused and refused.reason is ConnectionRefusal.WRONG_NODE_ID
    assert str(HIGH) in refused.detail and str(LOW) in refused.detail
    assert m.dial_failures(boot) == 1
    # the configured id applies even if the caller forgets to pass it
    refused = m.on_connected(LOW, boot.with_node_id(None), inbound=False)
    assert refused.reason is ConnectionRefusal.WRONG_NODE_ID
    assert m.dial_failures(boot) == 2
    assert not m.is_connected(LOW)


def test_dial_backoff_grows_and_resets_on_success() -> None:
    clock = FakeClock()
    target = addr("198.51.100.1")
    m = manager(clock, bootnodes=(target,))
    delays = []
    for _ in range(14):
        assert m.want_outbound() == [target]
        delay = m.on_dial_failed(target)
        assert delay is not None
        delays.append(delay)
        clock.advance(delay - 0.5)
        assert m.want_outbound() == []  # still backing off
        clock.advance(0.5)
    assert delays[:4] == [1.0, 2.0, 4.0, 8.0]
    assert delays[-1] == DIAL_BACKOFF_MAX_S and max(delays) == DIAL_BACKOFF_MAX_S
    assert all(b >= a for a, b in itertools.pairwise(delays))
    assert m.want_outbound() == [target]
    connected = m.on_connected(HIGH, target, inbound=False)
    assert connected and m.dial_failures(target) == 0
    assert m.want_outbound() == []  # connected: not dialled twice
    assert m.on_disconnected(connected.connection_id or 0)
    assert m.want_outbound() == []  # a short pause after a disconnect
    clock.advance(DIAL_BACKOFF_BASE_S)
    assert m.want_outbound() == [target]
    assert m.on_dial_failed(target) == DIAL_BACKOFF_BASE_S  # the backoff starts over


def test_known_address_forgotten_after_repeated_failures_bootnode_never() -> None:
    clock = FakeClock()
    boot, known = addr("192.0.2.100"), addr("198.51.100.1")
    m = manager(clock, bootnodes=(boot,))
    m.add_known([known])
    for _ in range(FORGET_AFTER_FAILURES - 1):
        assert m.on_dial_failed(known) is not None
        assert m.on_dial_failed(boot) is not None
    assert m.on_dial_failed(known) is None
    assert m.on_dial_failed(boot) is not None
    assert m.known_addresses() == (boot,)
    assert m.on_dial_failed(addr("203.0.113.1")) is None  # never known


def test_banned_or_connected_nodes_are_not_dialled() -> None:
    clock = FakeClock()
    m = manager(clock, max_outbound=4)
    m.add_known([addr("198.51.100.1", node_id=node(1)), addr("198.51.100.2", node_id=node(2))])
    m.add_known([addr("198.51.100.3")])
    m.on_connected(node(1), addr("203.0.113.1", 40000), inbound=True)
    m.penalise(node(2), Misbehaviour.INVALID_BLOCK)
    assert m.want_outbound() == [addr("198.51.100.3")]
    # a learnt node id counts too: after a ban it is skipped even without an id in the address
    assert m.on_connected(node(3), addr("198.51.100.3"), inbound=False)
    assert m.penalise(node(3), Misbehaviour.INVALID_BLOCK)
    clock.advance(DIAL_RESERVATION_S + DIAL_BACKOFF_MAX_S)
    assert m.want_outbound() == []


def test_known_address_table_is_bounded_oldest_dropped() -> None:
    m = manager(max_known=5)
    m.add_known(addr("198.51.100.1", port) for port in range(1, 9))
    assert m.known_addresses() == tuple(addr("198.51.100.1", port) for port in range(4, 9))
    assert m.snapshot().known_addresses == 5
    with pytest.raises(PeerAddressError):
        m.add_known(["198.51.100.1:1"])  # type: ignore[list-item]


def test_every_table_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(peers, "MAX_BANS", 3)
    monkeypatch.setattr(peers, "MAX_REMEMBERED_SCORES", 2)
    monkeypatch.setattr(peers, "MAX_RATE_LIMITED_HOSTS", 2)
    clock = FakeClock()
    m = manager(clock, max_inbound=10)
    for n in range(1, 6):  # five bans, a second apart: the two expiring soonest are dropped
        assert m.penalise(node(n), Misbehaviour.INVALID_BLOCK)
        clock.advance(1)
    assert [b.subject for b in m.bans()] == sorted(str(node(n)) for n in (3, 4, 5))
    for n in range(10, 13):  # scores of disconnected peers: the least recent is forgotten
        m.penalise(node(n), Misbehaviour.TIMEOUT)
    assert [m.score(node(n)) for n in range(10, 13)] == [0, 5, 5]
    for _ in range(HANDSHAKE_BURST):  # the busy host's bucket is dropped once two others arrive
        assert m.allow_inbound_handshake("192.0.2.1")
    assert not m.allow_inbound_handshake("192.0.2.1")
    assert m.allow_inbound_handshake("192.0.2.2")
    assert m.allow_inbound_handshake("192.0.2.3")
    assert m.allow_inbound_handshake("192.0.2.1")


# --- snapshot and persistence ----------------------------------------------------------------


def test_snapshot() -> None:
    clock = FakeClock(50.0)
    m = manager(clock)
    m.on_connected(node(1), addr("192.0.2.1"), inbound=False)
    clock.advance(5)
    m.on_connected(node(2), addr("192.0.2.2", 40000), inbound=True)
    m.penalise(node(2), Misbehaviour.UNSOLICITED)
    m.penalise(node(3), Misbehaviour.INVALID_BLOCK)
    clock.advance(10)
    snap = m.snapshot()
    assert [(p.node_id, p.inbound, p.score, p.connected_since) for p in snap.peers] == [
        (node(1), False, 0, 50.0),
        (node(2), True, 10, 55.0),
    ]
    assert snap.bans == (
        BanEntry(BanKind.NODE, str(node(3)), Misbehaviour.INVALID_BLOCK, "", BAN_S - 10),
    )
    assert (snap.max_inbound, snap.max_outbound, snap.ban_threshold) == (4, 2, 100)
    with pytest.raises(AttributeError):
        snap.inbound = 9  # type: ignore[misc]


def test_ban_json_round_trip_drops_expired() -> None:
    clock = FakeClock()
    m = manager(clock)
    m.on_connected(node(1), addr("2001:db8::5", 40000), inbound=True)
    m.penalise(node(1), Misbehaviour.INVALID_BLOCK, "bad root")
    clock.advance(1000)
    m.penalise(node(2), Misbehaviour.INVALID_HEADER, "bad pow")
    wall = 1_700_000_000.0
    text = bans_to_json(m.bans(), wall)
    document = json.loads(text)
    assert document["version"] == 1
    assert {b["subject"] for b in document["bans"]} == {str(node(1)), str(node(2)), "2001:db8::/64"}
    # later, restarted: the first two bans (node(1), its host) expire 1000 s before node(2)'s
    restored = bans_from_json(text, wall + BAN_S - 500)
    assert [(b.kind, b.subject, b.remaining_s) for b in restored] == [
        (BanKind.NODE, str(node(2)), 500.0)
    ]
    assert bans_from_json(text, wall + BAN_S + 1) == ()
    fresh_clock = FakeClock(7.0)
    fresh = manager(fresh_clock)
    assert fresh.restore_bans(bans_from_json(text, wall)) == 3
    assert fresh.is_banned(node(1)) and fresh.is_banned(host="2001:db8::99")
    assert bans_from_json(bans_to_json(fresh.bans(), wall), wall) == bans_from_json(text, wall)
    fresh_clock.advance(BAN_S - 1000)
    assert not fresh.is_banned(node(1)) and fresh.is_banned(node(2))


def test_restored_bans_are_capped_at_the_configured_duration() -> None:
    m = manager()
    entry = BanEntry(BanKind.NODE, str(node(1)), Misbehaviour.INVALID_BLOCK, "", 10 * BAN_S)
    assert m.restore_bans([entry]) == 1
    assert m.bans()[0].remaining_s == BAN_S
    shorter = BanEntry(BanKind.NODE, str(node(1)), Misbehaviour.TIMEOUT, "", 5.0)
    expired = BanEntry(BanKind.NODE, str(node(2)), Misbehaviour.TIMEOUT, "", 0.0)
    assert m.restore_bans([shorter, expired]) == 1
    assert m.bans()[0].remaining_s == BAN_S  # a ban is never shortened
    assert not m.is_banned(node(2))
    bad = BanEntry(BanKind.HOST, "2001:db8::1/64", Misbehaviour.INVALID_BLOCK, "", 5.0)
    with pytest.raises(BanListError):
        m.restore_bans([bad])


def test_restored_ban_disconnects_a_connected_peer() -> None:
    m = manager()
    m.on_connected(node(1), addr("192.0.2.1"), inbound=False)
    m.restore_bans([BanEntry(BanKind.NODE, str(node(1)), Misbehaviour.INVALID_BLOCK, "", 5.0)])
    assert not m.is_connected(node(1))


# --- invariants under random events ----------------------------------------------------------

NODES = [node(n) for n in (0x01, 0x40, 0x80, 0xC0, 0xF0)]  # includes OWN (0x80)
HOSTS = ["192.0.2.1", "192.0.2.2", "2001:db8::1", "127.0.0.1"]


@dataclass(frozen=True)
class Connect:
    node: int
    host: int
    inbound: bool


@dataclass(frozen=True)
class Disconnect:
    pick: int


@dataclass(frozen=True)
class Penalise:
    node: int
    kind: Misbehaviour


@dataclass(frozen=True)
class Reward:
    node: int


@dataclass(frozen=True)
class Advance:
    seconds: float


@dataclass(frozen=True)
class Dial:
    fail: bool


Op = Connect | Disconnect | Penalise | Reward | Advance | Dial

OPS = st.one_of(
    st.builds(
        Connect, st.integers(0, len(NODES) - 1), st.integers(0, len(HOSTS) - 1), st.booleans()
    ),
    st.builds(Disconnect, st.integers(0, 10)),
    st.builds(Penalise, st.integers(0, len(NODES) - 1), st.sampled_from(Misbehaviour)),
    st.builds(Reward, st.integers(0, len(NODES) - 1)),
    st.builds(Advance, st.sampled_from([0.5, 10.0, 500.0, BAN_S / 2, BAN_S])),
    st.builds(Dial, st.booleans()),
)


def check_invariants(m: PeerManager, limits: tuple[int, int]) -> None:
    snap = m.snapshot()
    inbound = [p for p in snap.peers if p.inbound]
    outbound = [p for p in snap.peers if not p.inbound]
    assert len(inbound) == snap.inbound <= limits[0]
    assert len(outbound) == snap.outbound <= limits[1]
    ids = [p.node_id for p in snap.peers]
    assert len(ids) == len(set(ids))
    assert OWN not in ids
    for peer in snap.peers:
        assert not m.is_banned(peer.node_id)
        assert 0 <= peer.score < m.ban_threshold
        assert m.connection_id(peer.node_id) == peer.connection_id
    for ban in snap.bans:
        assert 0 < ban.remaining_s <= BAN_S
    assert snap.dialling <= limits[1]


@settings(max_examples=150, deadline=None)
@given(
    ops=st.lists(OPS, max_size=60),
    max_inbound=st.integers(0, 3),
    max_outbound=st.integers(0, 2),
)
def test_invariants_hold_for_random_events(
    ops: list[Op], max_inbound: int, max_outbound: int
) -> None:
    clock = FakeClock()
    m = PeerManager(
        OWN,
        max_inbound=max_inbound,
        max_outbound=max_outbound,
        ban_threshold=100,
        ban_duration_s=BAN_S,
        clock=clock,
        bootnodes=(addr("198.51.100.1", node_id=NODES[0]),),
        trusted_loopback=False,
    )
    m.add_known(addr(host, 9000 + i) for i, host in enumerate(HOSTS))
    port = 40000
    for op in ops:
        if isinstance(op, Connect):
            port += 1
            peer = NODES[op.node]
            admission = m.on_connected(peer, addr(HOSTS[op.host], port), op.inbound)
            if admission:
                assert m.connection_id(peer) == admission.connection_id
        elif isinstance(op, Disconnect):
            peers = m.snapshot().peers
            if peers:
                m.on_disconnected(peers[op.pick % len(peers)].connection_id)
        elif isinstance(op, Penalise):
            banned = m.penalise(NODES[op.node], op.kind)
            assert banned == m.is_banned(NODES[op.node])
        elif isinstance(op, Reward):
            m.reward(NODES[op.node])
        elif isinstance(op, Advance):
            clock.advance(op.seconds)
        else:
            for target in m.want_outbound():
                if op.fail:
                    m.on_dial_failed(target)
                else:
                    m.on_connected(target.node_id or NODES[1], target, inbound=False)
        check_invariants(m, (max_inbound, max_outbound))
