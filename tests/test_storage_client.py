"""The ``qoin storage`` client commands (put, get, ls, status, cancel), run in this process (fast)
against a real network: a mining node and provider daemons (``qoin storage provider``).

Unusable input exits 2 with one line saying why, before any node is asked; an unknown content id
exits 1; ``put --dry-run`` shows the asks and the cost and sends nothing; ``put`` replaces a
provider that does not answer by a spare; ``ls`` and ``status`` show the deals; ``get`` of
encrypted content without its keystore says so; ``cancel`` refunds the periods not yet begun; a
``get`` that cannot be had whole leaves no file. The same commands as subprocesses, with the
market running on its own after ``put``: :mod:`tests.test_storage_e2e`.
"""

from __future__ import annotations

import functools
import json
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from qoin.cli.main import app
from qoin.storage import market
from qoin.storage.client import shard_words
from qoin.storage.market import MarketView, ShardState
from tests.framework import Network, Node, test_seed, wait_until
from tests.keys import keypair_for
from tests.storageutil import (
    CLIENT,
    PARAMS,
    PRICE,
    balance,
    fund,
    spawn_provider,
    start_providers,
    storage_network,
    write_keystore,
)

RUNNER = CliRunner()
NOWHERE = "http://127.0.0.1:9"
"""An RPC URL nothing answers at: a command given it that exits 2 asked no node."""
UNKNOWN = "ab" * 32
"""A content id nothing stores."""


def storage(*args: str) -> Result:
    """``qoin storage ARGS`` in this process (no ``QOIN_PASSWORD``)."""
    return RUNNER.invoke(app, ["storage", *args], env={"QOIN_PASSWORD": None})


def refused(result: Result, code: int, reason: str) -> None:
    """The command exited ``code`` with one error line containing ``reason`` (no traceback)."""
    assert result.exit_code == code, (result.exit_code, result.output)
    assert reason in result.stderr, result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception


@pytest.fixture
def chain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Network, Node]]:
    with storage_network(tmp_path, monkeypatch) as made:
        yield made


def test_shard_states_in_words() -> None:
    words = functools.partial(shard_words, params=PARAMS)
    assert words(ShardState.PENDING, 0, taken=False, left=False) == "uploading"
    assert words(ShardState.PENDING, 1, taken=False, left=False) == "uploading, missed 1 of 2"
    assert words(ShardState.PENDING, 0, taken=True, left=False) == "repairing"
    assert words(ShardState.PENDING, 1, taken=True, left=False) == "repairing, missed 1 of 2"
    assert words(ShardState.ACTIVE, 0, taken=True, left=False) == "active"
    assert words(ShardState.ACTIVE, 1, taken=False, left=False) == "missed 1 of 2"
    assert words(ShardState.RELISTED, 2, taken=False, left=False) == "failed, re-listed"
    assert words(ShardState.RELISTED, 0, taken=False, left=True) == "left, re-listed"


def test_unusable_input_exits_2_before_asking_a_node(tmp_path: Path) -> None:
    key, password = write_keystore(tmp_path / "client", CLIENT)
    keyed = ["--key", str(key), "--password-file", str(password)]
    file = tmp_path / "file.bin"
    file.write_bytes(b"x" * 1000)
    missing = str(tmp_path / "missing.bin")
    cases: list[tuple[list[str], str]] = [
        (["get", "12", "--out", str(tmp_path / "out")], "64 hex digits"),
        (["status", "zz" * 32], "64 hex digits"),
        (["cancel", "0x" + UNKNOWN[:-2], *keyed], "64 hex digits"),
        (["put", missing, *keyed], "cannot read"),
        (["put", missing, *keyed, "--dry-run"], "cannot read"),
        (["put", str(file), "--key", missing], "cannot read keystore"),
        (["put", str(file), *keyed, "--shards", "3", "--needed", "3"], "--needed is 1 to"),
        (["put", str(file), *keyed, "--shards", "17"], "--shards is 2 to 16"),
        (["put", str(file), *keyed, "--shards", "2", "--needed", "0", "--dry-run"], "--needed"),
        (["get", UNKNOWN, "--out", str(tmp_path)], "is a directory"),
        (["get", UNKNOWN, "--out", str(tmp_path / "no" / "out")], "is not a directory"),
        (["ls"], "give --key or --address"),
        (["ls", "--address", "qoin1nothing"], "invalid address"),
    ]
    for args, reason in cases:
        refused(storage(*args, "--rpc", NOWHERE), 2, reason)
    range_error = storage("put", str(file), *keyed, "--duration", "0", "--rpc", NOWHERE)
    assert range_error.exit_code == 2 and "--duration" in range_error.output
    unreachable = storage("status", UNKNOWN, "--rpc", NOWHERE)
    refused(unreachable, 1, f"the execution client at {NOWHERE}")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_client_commands_against_a_network(chain: tuple[Network, Node], tmp_path: Path) -> None:
    net, node = chain
    rng = random.Random(test_seed())
    cheap, p1, p2 = (keypair_for(index=80 + i) for i in range(3))
    fund(node, cheap, p1, p2, CLIENT)
    starting = spawn_provider(net, node, "cheap", cheap, price=PRICE // 2)
    live = start_providers(net, node, [(f"provider-{i}", k) for i, k in enumerate((p1, p2))])
    gone = starting.ready()
    gone.child.proc.kill()  # its ask stays on chain, cheapest: put must fall back on a spare
    key, password = write_keystore(tmp_path / "client", CLIENT)
    rpc = ["--rpc", node.user.url]
    keyed = ["--key", str(key), "--password-file", str(password), *rpc]
    file = tmp_path / "file.bin"
    data = rng.randbytes(50_000)
    file.write_bytes(data)

    # A dry run lists the asks that would take the shards and the cost, and sends nothing.
    before = balance(node, CLIENT)
    dry = storage("put", str(file), *keyed, "--duration", "20", "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    estimate: dict[str, Any] = json.loads(dry.stdout)
    shard_size = estimate["shardSize"]
    assert estimate["encrypted"] and estimate["storedSize"] > len(data)
    assert estimate["offers"][0]["provider"] == str(cheap.address)
    assert {o["provider"] for o in estimate["offers"] + estimate["spares"]} == {
        str(k.address) for k in (cheap, p1, p2)
    }
    prices = [o["price"] for o in estimate["offers"]]
    assert prices[0] == market.shard_price(PRICE // 2, shard_size)
    assert estimate["cost"] == 20 * sum(prices)
    assert estimate["maxPrice"] == PRICE
    assert estimate["deposit"] == 2 * 20 * market.shard_price(PRICE, shard_size)
    assert estimate["balance"] == before and estimate["enough"]
    text = storage("put", str(file), *keyed, "--duration", "20", "--dry-run")
    assert text.exit_code == 0 and f"cost: {estimate['cost']} Shor" in text.stdout
    listed = storage("ls", "--key", str(key), *rpc, "--json")
    assert listed.exit_code == 0 and '"deals": []' in listed.stdout
    assert balance(node, CLIENT) == before
    with MarketView(node.user.url) as view:
        assert view.totals().escrow == 0

    # Options the network refuses exit 2 (the dry run says so too).
    for extra in ([], ["--dry-run"]):
        refused(storage("put", str(file), *keyed, "--duration", "5000", *extra), 2, "1000")

    # put: the dead provider's shard goes to the spare; ls and status show the deal.
    put = storage("put", str(file), *keyed, "--duration", "20", "--json", "--quiet")
    assert put.exit_code == 0, put.output
    stored: dict[str, Any] = json.loads(put.stdout)
    cid, deal = stored["cid"], stored["deal"]
    assert {p["provider"] for p in stored["providers"]} == {p.address for p in live}
    assert stored["failedUploads"] == []
    listed = storage("ls", "--key", str(key), *rpc, "--json")
    deals = json.loads(listed.stdout)["deals"]
    assert [(d["deal"], d["cid"], d["state"], d["encrypted"]) for d in deals] == [
        (deal, cid, "open", True)
    ]
    status = json.loads(storage("status", cid, *rpc, "--json").stdout)
    assert status["kind"] == "deal" and status["id"] == deal
    assert [s["state"] for s in status["shards"]] in (
        ["uploading", "uploading"],
        ["active", "active"],
        ["active", "uploading"],
        ["uploading", "active"],
    )

    # get: encrypted content needs its keystore; an unknown content id exits 1.
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    out = downloads / "got.bin"
    refused(storage("get", cid, "--out", str(out), *rpc), 2, "is encrypted")
    assert not out.exists()
    refused(storage("get", UNKNOWN, "--out", str(out), *keyed), 1, "no open deal stores")
    refused(storage("status", UNKNOWN, *rpc), 1, "no deal or bid")
    refused(storage("cancel", UNKNOWN, *keyed), 1, "no open deal or bid")
    got = storage("get", cid, "--out", str(out), *keyed, "--quiet")
    assert got.exit_code == 0, got.output
    assert out.read_bytes() == data

    # Public content (no encryption) is had without a keystore.
    plain = tmp_path / "plain.bin"
    plain.write_bytes(rng.randbytes(20_000))
    put = storage("put", str(plain), *keyed, "--duration", "20", "--no-encrypt", "--quiet")
    assert put.exit_code == 0, put.output
    plain_cid = put.stdout.split("content id: ")[1].split()[0]
    again = storage("put", str(plain), *keyed, "--duration", "20", "--no-encrypt", "--quiet")
    refused(again, 1, "an open deal stores")
    got = storage("get", plain_cid, "--out", str(out), *rpc, "--quiet")
    assert got.exit_code == 0, got.output
    assert out.read_bytes() == plain.read_bytes()

    # cancel refunds the periods not yet begun, at once.
    before = balance(node, CLIENT)
    cancelled = storage("cancel", cid, *keyed, "--json")
    assert cancelled.exit_code == 0, cancelled.output
    answer = json.loads(cancelled.stdout)
    assert answer["cancelled"] == "deal" and answer["id"] == deal and answer["refund"] > 0
    refunds = [e[1] for e in _events(node, "DealCancelled") if e[0] == deal]
    assert refunds == [answer["refund"]]
    assert 0 < balance(node, CLIENT) - before <= answer["refund"]  # less the transaction fee

    # The cancelled deal settles at the end of the current period: status and ls say so.
    def settled() -> dict[str, Any] | None:
        found: dict[str, Any] = json.loads(storage("status", cid, *rpc, "--json").stdout)
        return found if found["kind"] == "settled" else None

    past = wait_until(settled, 60, 0.5, "the cancelled deal settled")
    assert past["id"] == deal and past["shards"] == []
    deals = json.loads(storage("ls", "--key", str(key), *rpc, "--json").stdout)["deals"]
    assert [(d["deal"], d["state"]) for d in deals] == [(deal, "settled"), (deal + 1, "open")]

    # A get that cannot be had whole (every holder down) writes nothing.
    for provider in live:
        provider.child.proc.kill()
    out.write_bytes(b"kept")
    refused(storage("get", plain_cid, "--out", str(out), *rpc, "--quiet"), 1, "only 0 of the 1")
    assert out.read_bytes() == b"kept"
    fresh = downloads / "fresh.bin"
    refused(storage("get", plain_cid, "--out", str(fresh), *rpc, "--quiet"), 1, "unreachable")
    assert os.listdir(downloads) == ["got.bin"]  # no partial or temporary file


def _events(node: Node, name: str) -> list[tuple[Any, ...]]:
    logs = node.user.call(
        "qoin_getLogs",
        {
            "fromBlock": 0,
            "toBlock": "latest",
            "address": str(market.STORAGE_MARKET),
            "topics": [market.event_topic(name).hex()],
        },
    )
    found = []
    for log in logs:
        decoded = market.decode_event(log)
        assert decoded is not None and isinstance(decoded[1], tuple)
        found.append(decoded[1])
    return found
