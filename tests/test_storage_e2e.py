"""The storage market end to end, with real processes only: a mining node, provider daemons run
as ``qoin storage provider``, and the client commands ``qoin storage put/get/status`` run as
subprocesses with a keystore and a password file, as a user runs them.

Each test stores a file with ``put`` and then lets the market run by itself: providers prove every
period and are paid per proof; a provider that dies, or that deleted part of its shard, misses its
proofs, is slashed, and its shard is re-listed, taken by another provider, rebuilt from the live
shards and proved again. The client does nothing after ``put`` returned: no client process runs
between the commands the tests run, and ``get`` and ``status`` only read.

A provider that proves with a wrong leaf (``--dishonest wrong-leaf``) fails at its first proof and
is replaced: :func:`tests.test_storage_provider.test_a_lying_provider_fails_and_another_repairs_its_shard`.
The client commands' answers to bad input: :mod:`tests.test_storage_client`. The chain and the
helpers: :mod:`tests.storageutil` (storage periods of ~4 s, M = 2; the erasure-coded file's test,
which never races the market's clock, runs on ~2.4 s periods).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qoin.storage import market
from qoin.storage.market import MarketView, ShardState
from tests.framework import Network, Node, test_seed, wait_until
from tests.keys import keypair_for
from tests.storageutil import (
    CLIENT,
    PARAMS,
    QUICK,
    RunningProvider,
    StorageCli,
    events,
    fund,
    spawn_provider,
    start_provider,
    start_providers,
    storage_cli,
    storage_network,
)

WAIT_S = 90.0
"""How long a test waits for one stage of the market (a few periods)."""
POLL_S = 0.2
"""How often a wait asks the node."""


@pytest.fixture
def chain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Network, Node]]:
    """A mining node on the test network with :data:`~tests.storageutil.PARAMS`."""
    with storage_network(tmp_path, monkeypatch) as made:
        yield made


@pytest.fixture
def quick_chain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Network, Node]]:
    """The same with :data:`~tests.storageutil.QUICK` periods."""
    with storage_network(tmp_path, monkeypatch, QUICK) as made:
        yield made


def topic(provider: RunningProvider) -> str:
    """The provider's address as events' topic 1 shows it."""
    return provider.keypair.address.raw.hex()


def holders_of(providers: list[RunningProvider], stored: dict[str, Any]) -> list[RunningProvider]:
    """The providers of a ``put --json`` answer's shards, shard by shard."""
    named = {p.address: p for p in providers}
    return [named[entry["provider"]] for entry in stored["providers"]]


def paid_periods(node: Node, deal: int) -> dict[tuple[str, int], list[int]]:
    """(provider topic, shard) -> the periods it was paid for, in order."""
    found: dict[tuple[str, int], list[int]] = {}
    for provider, data in events(node, "ProofAccepted", deal):
        found.setdefault((provider, int(data[1])), []).append(int(data[2]))
    return found


def wait_paid(
    node: Node, deal: int, holders: dict[int, RunningProvider], periods: int, after: int = -1
) -> dict[tuple[str, int], list[int]]:
    """Wait until each ``holders[shard]`` has been paid for ``periods`` periods after ``after``
    for its shard; the payments so far."""

    def enough() -> dict[tuple[str, int], list[int]] | None:
        found = paid_periods(node, deal)
        done = all(
            len([t for t in found.get((topic(p), shard), []) if t > after]) >= periods
            for shard, p in holders.items()
        )
        return found if done else None

    shown = ", ".join(f"shard {s} by {p.child.name}" for s, p in holders.items())
    return wait_until(enough, WAIT_S, POLL_S, f"{periods} paid periods of {shown}")


def states(cli: StorageCli, cid: str) -> list[tuple[str, str | None]]:
    """(state, provider) of each shard, as ``qoin storage status --json`` shows them."""
    return [(shard["state"], shard["provider"]) for shard in cli.status(cid)["shards"]]


def get_verified(cli: StorageCli, cid: str, out: Path, expected: bytes) -> dict[str, Any]:
    """``qoin storage get``: it must exit 0 and write exactly ``expected``; its JSON answer."""
    done = cli.get(cid, out)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == expected
    out.unlink()
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


def put_file(cli: StorageCli, tmp_path: Path, data: bytes, *args: str) -> dict[str, Any]:
    """Store ``data`` with ``qoin storage put``; its JSON answer (every upload done)."""
    path = tmp_path / "file.bin"
    path.write_bytes(data)
    stored: dict[str, Any] = cli.put(path, "--duration", "60", *args)
    assert stored["size"] == len(data) and stored["encrypted"] and stored["failedUploads"] == []
    return stored


def shard_info(node: Node, deal: int, shard: int) -> market.ShardInfo:
    with MarketView(node.user.url) as view:
        found = view.get_deal(deal)
    assert found is not None
    return found.shards[shard]


def proof_transaction(node: Node, deal: int) -> tuple[int, int, int]:
    """(bytes, gas used, fee) of the transaction of the first accepted proof of ``deal``."""
    logs = node.user.call(
        "qoin_getLogs",
        {
            "fromBlock": 0,
            "toBlock": "latest",
            "address": str(market.STORAGE_MARKET),
            "topics": [market.event_topic("ProofAccepted").hex(), None, f"{deal:064x}"],
        },
    )
    tx_id = logs[0]["transactionHash"]
    receipt = node.user.call("qoin_getTransactionReceipt", tx_id)
    assert receipt["status"] == "success"
    tx = node.user.call("qoin_getTransactionByHash", tx_id)
    return len(tx["raw"]) // 2, int(receipt["gasUsed"]), int(receipt["fee"])


@pytest.mark.slow
def test_put_prove_kill_repair_get(chain: tuple[Network, Node], tmp_path: Path) -> None:
    """A 10 MiB file stored with n = 2 on a 3-provider network by ``qoin storage put``: both
    holders prove period after period and are paid per proof; ``get`` gives the same bytes. One
    holder is SIGKILLed: ``status`` shows its shard "missed 1 of 2", then it fails (slashed) and is
    re-listed; the third provider takes it, rebuilds it from the survivor's replica and proves it;
    ``status`` then shows 2 active shards on the 2 live providers. ``get`` works throughout, from
    the survivor. The client does nothing after ``put``."""
    net, node = chain
    rng = random.Random(test_seed())
    keys = [keypair_for(index=60 + i) for i in range(3)]
    fund(node, *keys, CLIENT)
    providers = start_providers(
        net, node, [(f"provider-{i}", key) for i, key in enumerate(keys)], capacity="16MiB"
    )
    cli = storage_cli(net, node)
    data = rng.randbytes(10 << 20)
    stored = put_file(cli, tmp_path, data, "--shards", "2")
    cid, deal = stored["cid"], stored["deal"]
    survivor, victim = holders_of(providers, stored)
    (idle,) = [p for p in providers if p not in (survivor, victim)]

    # Both holders prove, period after period, each paid its shard's price per proof; a proof
    # of a 10 MiB shard (4 leaves of 256 bytes and their 16-deep paths) costs far less in fees.
    paid = wait_paid(node, deal, {0: survivor, 1: victim}, 2)
    assert paid.keys() == {(topic(survivor), 0), (topic(victim), 1)}
    for _, proof in events(node, "ProofAccepted", deal):
        assert proof[3] == stored["providers"][proof[1]]["price"]
    assert all(periods == sorted(set(periods)) for periods in paid.values())
    size, gas, fee = proof_transaction(node, deal)
    print(f"a proof of a 10 MiB shard: {size} bytes, {gas} gas, fee {fee} Shor")
    assert size < 8_000 and fee < stored["providers"][0]["price"] // 10
    out = tmp_path / "got.bin"
    get_verified(cli, cid, out, data)
    assert states(cli, cid) == [("active", survivor.address), ("active", victim.address)]

    # SIGKILL one holder: get still works (from the survivor) before anything is repaired.
    victim.child.proc.kill()
    got = get_verified(cli, cid, out, data)
    assert [source["provider"] for source in got["from"]] == [survivor.address]
    wait_until(lambda: shard_info(node, deal, 1).misses == 1, WAIT_S, POLL_S, "a first miss")
    # The next check is a period away (40 blocks): status shows the miss meanwhile.
    assert states(cli, cid)[1] == ("missed 1 of 2", victim.address)

    # The second miss fails the shard: the rest of its collateral slashed, the shard re-listed.
    failed = wait_until(lambda: events(node, "ShardFailed", deal), WAIT_S, POLL_S, "ShardFailed")
    assert failed[0][0] == topic(victim) and failed[0][1][1] == 1 and failed[0][1][2] > 0
    missed = events(node, "ProofMissed", deal)
    assert [(who, m[1], m[3]) for who, m in missed] == [
        (topic(victim), 1, 1),
        (topic(victim), 1, 2),
    ]
    assert all(m[4] > 0 for _, m in missed)
    relisted = events(node, "ShardRelisted", deal)
    assert [(r[1], r[2], r[4]) for _, r in relisted] == [(1, stored["shardSize"], failed[0][1][3])]
    with MarketView(node.user.url) as view:
        ask = view.get_ask(victim.keypair.address)
    assert ask is not None and ask.locked_collateral == 0

    # The third provider takes it, rebuilds it from the survivor's replica and proves it.
    idle.child.wait_for(rf"took deal {deal} shard 1", 30)
    # Its first proof is due a period after the next (grace): status shows the repair meanwhile.
    assert states(cli, cid)[1] == ("repairing", idle.address)
    get_verified(cli, cid, out, data)
    idle.child.wait_for(rf"rebuilt deal {deal} shard 1 from shards \[0\]", 60)
    wait_paid(node, deal, {1: idle}, 1)
    assert states(cli, cid) == [("active", survivor.address), ("active", idle.address)]
    get_verified(cli, cid, out, data)


@pytest.mark.slow
def test_a_provider_that_deleted_part_of_its_shard_is_slashed_and_replaced(
    chain: tuple[Network, Node], tmp_path: Path
) -> None:
    """Three quarters of a holder's shard file are deleted on disk while it runs. An honest
    daemon notices at the first challenge that falls there and fetches the shard again from the
    other holder; this one (``--dishonest deleted-part``) hides the loss and skips the proofs it
    cannot make: it misses, is slashed, its shard fails after M = 2 misses and is re-listed, and
    the idle provider rebuilds and proves it. The file stays retrievable throughout."""
    net, node = chain
    rng = random.Random(test_seed())
    honest, liar, idle = (keypair_for(index=63 + i) for i in range(3))
    fund(node, honest, liar, idle, CLIENT)
    starting = spawn_provider(net, node, "honest", honest)
    lying = start_provider(net, node, "liar", liar, "--dishonest", "deleted-part")
    a = starting.ready()
    cli = storage_cli(net, node)
    data = rng.randbytes(200_000)
    stored = put_file(cli, tmp_path, data)
    cid, deal = stored["cid"], stored["deal"]
    by_shard = dict(enumerate(holders_of([a, lying], stored)))
    assert set(by_shard.values()) == {a, lying}
    shard = next(index for index, p in by_shard.items() if p is lying)
    c = start_provider(net, node, "idle", idle)  # after the put, so that it stays idle
    wait_paid(node, deal, by_shard, 1)

    with MarketView(node.user.url) as view:
        before = view.get_ask(liar.address)
    assert before is not None
    shard_file = lying.shard_file(deal, shard)
    with shard_file.open("r+b") as handle:
        handle.truncate(shard_file.stat().st_size // 4)
    lying.child.wait_for(rf"deal {deal} shard {shard} cannot be proved for period \d+", WAIT_S)
    get_verified(cli, cid, tmp_path / "got.bin", data)

    failed = wait_until(lambda: events(node, "ShardFailed", deal), WAIT_S, POLL_S, "ShardFailed")
    assert [(who, fail[1]) for who, fail in failed] == [(topic(lying), shard)]
    missed = [m for who, m in events(node, "ProofMissed", deal) if who == topic(lying)]
    assert [m[3] for m in missed][-2:] == [1, 2] and all(m[4] > 0 for m in missed)
    with MarketView(node.user.url) as view:
        after = view.get_ask(liar.address)
        totals = view.totals()
    assert after is not None
    slashed = sum(m[4] for m in missed) + failed[0][1][2]
    assert (before.free_collateral + before.locked_collateral) - (
        after.free_collateral + after.locked_collateral
    ) == slashed
    assert totals.burned > 0
    assert events(node, "ProofInvalid", deal) == []

    c.child.wait_for(rf"took deal {deal} shard {shard}", 30)
    c.child.wait_for(rf"rebuilt deal {deal} shard {shard} from shards \[{1 - shard}\]", 60)
    wait_paid(node, deal, {shard: c}, 1)
    info = shard_info(node, deal, shard)
    assert info.provider == idle.address and info.state is ShardState.ACTIVE
    bonus = [p[3] for who, p in events(node, "ProofAccepted", deal) if who == topic(c)]
    assert bonus[0] == stored["providers"][shard]["price"] + failed[0][1][3]

    # An honest daemon whose disk loses the same part fetches its shard again and goes on.
    honest_shard = 1 - shard
    honest_file = a.shard_file(deal, honest_shard)
    index = len(a.child.seen)
    with honest_file.open("r+b") as handle:
        handle.truncate(honest_file.stat().st_size // 4)
    a.child.wait_for(rf"deal {deal} shard {honest_shard} lost: ", WAIT_S, after=index)
    a.child.wait_for(rf"rebuilt deal {deal} shard {honest_shard} from shards \[{shard}\]", 60)
    assert honest_file.read_bytes() == c.shard_file(deal, shard).read_bytes()
    wait_paid(
        node,
        deal,
        {honest_shard: a},
        1,
        after=max(paid_periods(node, deal)[(topic(a), honest_shard)]),
    )
    assert [who for who, _ in events(node, "ProofMissed", deal)] == [topic(lying)] * len(missed)
    get_verified(cli, cid, tmp_path / "got.bin", data)


@pytest.mark.slow
def test_an_honest_provider_restarted_mid_period_is_not_slashed(
    chain: tuple[Network, Node], tmp_path: Path
) -> None:
    """A holder stopped (SIGTERM) in the middle of a period, after its proof, and started again:
    its shards are checked, its ask kept, and it proves the next periods; no miss is recorded and
    none of its collateral is slashed."""
    net, node = chain
    rng = random.Random(test_seed())
    keys = [keypair_for(index=66 + i) for i in range(2)]
    fund(node, *keys, CLIENT)
    providers = start_providers(net, node, [(f"provider-{i}", key) for i, key in enumerate(keys)])
    cli = storage_cli(net, node)
    stored = put_file(cli, tmp_path, rng.randbytes(100_000))
    deal = stored["deal"]
    holders = dict(enumerate(holders_of(providers, stored)))
    paid = wait_paid(node, deal, holders, 1)
    restarted = holders[0]
    period = max(paid[(topic(restarted), 0)])
    middle = PARAMS.period_start(period) + PARAMS.period // 2
    wait_until(lambda: int(node.user.call("qoin_blockNumber")) >= middle, WAIT_S, POLL_S)
    with MarketView(node.user.url) as view:
        before = view.get_ask(restarted.keypair.address)
    assert before is not None
    assert restarted.child.stop() == 0

    again = start_provider(net, node, restarted.child.name, restarted.keypair)
    wait_paid(node, deal, {0: again}, 2, after=period)
    assert events(node, "ProofMissed", deal) == []
    assert events(node, "ShardFailed", deal) == []
    with MarketView(node.user.url) as view:
        after = view.get_ask(restarted.keypair.address)
    assert after is not None
    assert (after.free_collateral, after.locked_collateral) == (
        before.free_collateral,
        before.locked_collateral,
    )
    again.child.wait_for(rf"proved deal {deal} shard 0 for period {period + 1}", 10)


@pytest.mark.slow
def test_erasure_coded_file_survives_two_dead_providers(
    quick_chain: tuple[Network, Node], tmp_path: Path
) -> None:
    """A file stored with n = 4, k = 2 on 6 providers: the holders of both data shards are
    SIGKILLed; ``get`` rebuilds the file from the two parity shards (verified), and both lost
    shards fail, are re-listed, taken by the two idle providers, rebuilt from the parity shards
    and proved; ``status`` then shows 4 active shards on 4 live providers."""
    net, node = quick_chain
    rng = random.Random(test_seed())
    keys = [keypair_for(index=70 + i) for i in range(6)]
    fund(node, *keys, CLIENT)
    providers = start_providers(net, node, [(f"provider-{i}", key) for i, key in enumerate(keys)])
    cli = storage_cli(net, node)
    data = rng.randbytes(300_000)
    stored = put_file(cli, tmp_path, data, "--shards", "4", "--needed", "2")
    cid, deal = stored["cid"], stored["deal"]
    assert (stored["n"], stored["k"]) == (4, 2)
    holders = holders_of(providers, stored)
    idle = [p for p in providers if p not in holders]
    wait_paid(node, deal, dict(enumerate(holders)), 1)

    for dead in holders[:2]:
        dead.child.proc.kill()
    out = tmp_path / "got.bin"
    got = get_verified(cli, cid, out, data)
    assert sorted(source["shard"] for source in got["from"]) == [2, 3]

    failed = wait_until(
        lambda: len(found := events(node, "ShardFailed", deal)) == 2 and found,
        WAIT_S,
        POLL_S,
        "both data shards failed",
    )
    assert sorted(f[1] for _, f in failed) == [0, 1]
    by_address = {p.keypair.address: p for p in idle}

    def takers() -> dict[int, RunningProvider] | None:
        found = {}
        for shard in (0, 1):
            provider = shard_info(node, deal, shard).provider
            if provider is None or provider not in by_address:
                return None
            found[shard] = by_address[provider]
        return found

    repaired = wait_until(takers, WAIT_S, POLL_S, "both shards taken by the idle providers")
    assert set(repaired.values()) == set(idle)
    for shard, taker in repaired.items():  # from two of the three other shards
        taker.child.wait_for(rf"rebuilt deal {deal} shard {shard} from shards \[\d, \d\]", 60)
    wait_paid(node, deal, repaired, 1)
    live = [repaired[0], repaired[1], holders[2], holders[3]]
    assert states(cli, cid) == [("active", p.address) for p in live]
    get_verified(cli, cid, out, data)
