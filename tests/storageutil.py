"""What the storage tests with real processes share: the market's test parameters, a mining node
with them, provider daemons started as ``qoin storage provider``, funding, keystores for the
``qoin storage`` client commands, and the actor's events.

The chain: the test network with a block every ~100 ms (``--block-interval-ms``) and storage
periods of :data:`PARAMS` (40 blocks, proofs accepted in the first 28): a provider sees each head
within milliseconds and a proof is mined within a block or two, so a window of ~3 s leaves it
room even on a loaded machine. Tests that only wait for the market's events (no command or restart
that must fit in a period) use :data:`QUICK` periods of 24 blocks, 16 in the window.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from qoin.crypto import keystore
from qoin.crypto.hybrid import HybridKeyPair
from qoin.process import Child
from qoin.storage import market
from qoin.storage.market import STORAGE_MARKET
from qoin.storage.params import StorageParams
from qoin.storage.provider.store import SHARDS_DIR
from qoin.wallet import Wallet
from tests.cliutil import run_qoin
from tests.framework import FUNDED, START_S, Network, Node, genesis, wait_until
from tests.keys import keypair_for

PARAMS = StorageParams(
    period=40,
    window=28,
    samples=4,
    leaf_size=256,
    max_misses=2,
    grace_periods=1,
    max_bid_blocks=400,
    max_duration=1_000,
)
"""Storage periods of about 4 s at ~10 blocks per second; M = 2 missed periods fail a shard."""
QUICK = replace(PARAMS, period=24, window=16)
"""Periods of about 2.4 s, proofs accepted in the first 16 blocks (a provider's proof lands a block
or two into the window), for the tests none of whose steps must happen within a period: those that
wait for the market's events and never race its clock with a command or a restart."""
PRICE = 10**9
"""Shor per GiB per period each provider asks (a 16 KiB shard: 15,259 Shor per period)."""
COLLATERAL = 2 * 10**9
"""Shor of collateral per GiB each provider holds."""
CAPACITY = "1MiB"
PASSWORD = "provider-test"
READY = r"storage provider (\S+) listening on (\S+) \(ask posted\)"
CLIENT = keypair_for(index=40)
"""The client of the tests' deals."""
FUNDS = 10**11
"""Shor each test account is given."""


@dataclass(frozen=True, eq=False)
class RunningProvider:
    """A provider daemon started by a test (one object per start: compared by identity)."""

    keypair: HybridKeyPair
    child: Child
    url: str
    """Its HTTP API."""
    home: Path
    """Its keystore, password file and data directory."""

    @property
    def datadir(self) -> Path:
        return self.home / "data"

    @property
    def key(self) -> Path:
        return self.home / "key.json"

    @property
    def password_file(self) -> Path:
        return self.home / "password"

    @property
    def address(self) -> str:
        return str(self.keypair.address)

    def shard_file(self, deal: int, shard: int) -> Path:
        """Where it keeps shard ``shard`` of ``deal``."""
        return self.datadir / SHARDS_DIR / f"{deal}-{shard}.shard"


def provider_command(*args: str) -> list[str]:
    """The ``qoin`` arguments of ``qoin storage provider ARGS`` (for :meth:`Network.spawn`)."""
    return ["storage", "provider", *args]


def write_keystore(home: Path, keypair: HybridKeyPair) -> tuple[Path, Path]:
    """A keystore of ``keypair`` and its password file in ``home`` (kept if there already)."""
    key, password = home / "key.json", home / "password"
    if not key.exists():
        home.mkdir(parents=True, exist_ok=True)
        keystore.save(keystore.encrypt_keypair(keypair, PASSWORD, log_n=14), key)
        password.write_text(PASSWORD)
    return key, password


@dataclass(frozen=True)
class StartingProvider:
    """A provider daemon spawned by :func:`spawn_provider`, its ready line not yet seen."""

    keypair: HybridKeyPair
    child: Child
    home: Path

    def ready(self) -> RunningProvider:
        """Wait for its ready line (it posted its ask): the running provider."""
        _, found, _ = self.child.wait_for(READY, START_S)
        assert found[1] == str(self.keypair.address)
        return RunningProvider(self.keypair, self.child, found[2], self.home)


def spawn_provider(
    net: Network,
    node: Node,
    name: str,
    keypair: HybridKeyPair,
    *extra: str,
    capacity: str = CAPACITY,
    price: int = PRICE,
    collateral: int = COLLATERAL,
) -> StartingProvider:
    """Write a keystore for ``keypair`` (once: a restart finds its files) and start ``qoin storage
    provider`` with it in ``WORKDIR/NAME`` (stopped with the network), without waiting for it."""
    home = net.workdir / name
    key, password = write_keystore(home, keypair)
    child = net.spawn(
        name,
        provider_command(
            "--datadir", str(home / "data"), "--key", str(key), "--password-file", str(password),
            "--rpc", node.user.url, "--capacity", capacity, "--price", str(price),
            "--collateral", str(collateral), *extra,
        ),
    )  # fmt: skip
    return StartingProvider(keypair, child, home)


def start_provider(
    net: Network,
    node: Node,
    name: str,
    keypair: HybridKeyPair,
    *extra: str,
    capacity: str = CAPACITY,
    price: int = PRICE,
    collateral: int = COLLATERAL,
) -> RunningProvider:
    """:func:`spawn_provider`, then wait for its ready line."""
    return spawn_provider(
        net, node, name, keypair, *extra, capacity=capacity, price=price, collateral=collateral
    ).ready()


def start_providers(
    net: Network,
    node: Node,
    named: Sequence[tuple[str, HybridKeyPair]],
    *extra: str,
    capacity: str = CAPACITY,
) -> list[RunningProvider]:
    """Start a provider per (name, key pair) at once (they start and post their asks side by
    side), then wait for each one's ready line; in the order given."""
    starting = [
        spawn_provider(net, node, name, keypair, *extra, capacity=capacity)
        for name, keypair in named
    ]
    return [provider.ready() for provider in starting]


@contextmanager
def storage_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, params: StorageParams = PARAMS
) -> Iterator[tuple[Network, Node]]:
    """A mining node (a block every ~100 ms) on the test network with the storage market's
    ``params``; every process stopped at the end. ``QOIN_HOME`` points into ``tmp_path`` and
    ``QOIN_PASSWORD`` is unset."""
    monkeypatch.setenv("QOIN_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("QOIN_PASSWORD", raising=False)
    net = Network(tmp_path, replace(genesis(), storage=params))
    try:
        node = net.node("miner", "--block-interval-ms", "100", p2p=False, mine=True)
        yield net, node
    finally:
        net.stop_all()


def fund(node: Node, *keypairs: HybridKeyPair, amount: int = FUNDS) -> None:
    """Pay ``amount`` to each of ``keypairs`` from the funded account; wait until they hold it."""
    with Wallet(node.user.url, FUNDED) as funder:
        for keypair in keypairs:
            funder.pay(keypair.address, amount)
    for keypair in keypairs:
        wait_until(
            lambda k=keypair: balance(node, k) >= amount,  # type: ignore[misc]
            30,
            0.2,
            f"{keypair.address} funded",
        )


def balance(node: Node, keypair: HybridKeyPair) -> int:
    with Wallet(node.user.url, keypair) as wallet:
        return wallet.balance()


def events(node: Node, name: str, deal: int) -> list[tuple[str, tuple[Any, ...]]]:
    """(topic 1 as hex, data) of every ``name`` event of ``deal`` so far."""
    logs = node.user.call(
        "qoin_getLogs",
        {
            "fromBlock": 0,
            "toBlock": "latest",
            "address": str(STORAGE_MARKET),
            "topics": [market.event_topic(name).hex()],
        },
    )
    found = []
    for log in logs:
        decoded = market.decode_event(log)
        assert decoded is not None and isinstance(decoded[1], tuple)
        if decoded[1][0] == deal:
            found.append((str(log["topics"][1]), decoded[1]))
    return found


def stored_files(provider: RunningProvider) -> list[str]:
    return sorted(os.listdir(provider.datadir / SHARDS_DIR))


def info(provider: RunningProvider) -> dict[str, Any]:
    answer: dict[str, Any] = httpx.get(f"{provider.url}/v1/info").json()
    return answer


# -- the client commands ---------------------------------------------------------------------------


@dataclass(frozen=True)
class StorageCli:
    """``qoin storage`` run as a subprocess against one node, with one client keystore."""

    rpc: str
    key: Path
    password_file: Path

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """``qoin storage ARGS --rpc URL`` (whatever its exit status)."""
        return run_qoin("storage", *args, "--rpc", self.rpc, timeout=timeout)

    def ok(self, *args: str, timeout: float = 120) -> Any:
        """``qoin storage ARGS --rpc URL --json``: it must exit 0; its JSON answer."""
        done = self.run(*args, "--json", timeout=timeout)
        assert done.returncode == 0, f"qoin storage {' '.join(args)}: {done.stderr}{done.stdout}"
        return json.loads(done.stdout)

    def keyed(self) -> tuple[str, ...]:
        """``--key KEYSTORE --password-file FILE``."""
        return ("--key", str(self.key), "--password-file", str(self.password_file))

    def put(self, path: Path, *args: str, timeout: float = 180) -> Any:
        """``qoin storage put PATH ARGS`` (quiet); its JSON answer."""
        return self.ok("put", str(path), *self.keyed(), "--quiet", *args, timeout=timeout)

    def get(self, cid: str, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
        """``qoin storage get CID --out OUT --json --quiet`` with the keystore."""
        return self.run("get", cid, "--out", str(out), *self.keyed(), "--json", "--quiet", *args)

    def status(self, cid: str) -> Any:
        """``qoin storage status CID --json``."""
        return self.ok("status", cid)


def storage_cli(net: Network, node: Node, keypair: HybridKeyPair = CLIENT) -> StorageCli:
    """The client commands for ``keypair`` (its keystore written in ``WORKDIR/client``)."""
    key, password = write_keystore(net.workdir / "client", keypair)
    return StorageCli(node.user.url, key, password)
