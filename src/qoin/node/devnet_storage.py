"""The devnet's storage providers and its ``devnet.json`` description.

``qoin devnet --storage-providers N`` runs N ``qoin storage provider`` daemons beside the nodes.
Provider i has its own key (a keystore made on the first start, under the devnet's password), is
funded from the devnet allocation before the devnet's transfers start, talks to node ``i mod
nodes``'s execution client, and listens on a port the system picks. Files::

    devnet.json               what runs where (see :func:`describe`), rewritten at each start
    client-key.json           a funded key for the user's commands (``qoin storage put --key``)
    devnet-key.json           the published devnet key's keystore (it also sends the devnet's
                              transfers: use client-key.json, whose nonces nothing else takes)
    password.txt              the password of every keystore here ("devnet")
    provider<i>/key.json      provider i's keystore
    provider<i>/data/         its data directory (shards, index, ML-KEM key)
    provider<i>.log           its output

What every daemon of the devnet shares (the compute providers' too) is here as well: its start
(:func:`start_daemon`), the wait for its ready line (:func:`ready_lines`) and its entry in
``devnet.json`` (:func:`daemon_entry`).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from qoin.crypto import keystore
from qoin.crypto.address import Address
from qoin.crypto.hybrid import HybridKeyPair, generate_keypair
from qoin.errors import QoinError
from qoin.process import Child, Line, Output
from qoin.wallet import Wallet

PASSWORD = "devnet"  # noqa: S105 - the published password of the devnet's keys
FUNDING = 100_000_000_000
"""Shor each provider receives from the devnet allocation (its collateral and fees)."""
CLIENT_FUNDING = 10 * FUNDING
"""Shor the client key receives (deposits of many deals)."""
CAPACITY = "4GiB"
PRICE = 1_000_000
"""Shor per GiB per period each devnet provider asks."""
COLLATERAL = 20_000_000
"""Shor per GiB of collateral each devnet provider puts up."""
READY = r"listening on (http://\S+)"
"""The provider daemon's ready line (its endpoint)."""
START_TIMEOUT_S = 120.0
FUND_TIMEOUT_S = 120.0


class DevnetDaemon(Protocol):
    """A daemon of the devnet beside its nodes (a storage or compute provider, a mediator): its
    name, ``home`` (``key.json`` and ``data/``; its log is ``NAME.log`` beside it), key, node,
    process and API."""

    @property
    def name(self) -> str: ...

    @property
    def home(self) -> Path: ...

    @property
    def address(self) -> str: ...

    @property
    def rpc(self) -> str: ...

    @property
    def child(self) -> Child | None: ...

    @property
    def endpoint(self) -> str: ...

    @property
    def url(self) -> str: ...


DaemonT = TypeVar("DaemonT", bound=DevnetDaemon)


def daemon_entry(daemon: DevnetDaemon) -> dict[str, Any]:
    """A daemon's entry in ``devnet.json``."""
    return {
        "name": daemon.name,
        "address": daemon.address,
        "endpoint": daemon.endpoint,
        "url": daemon.url,
        "pid": None if daemon.child is None else daemon.child.proc.pid,
        "datadir": str(daemon.home / "data"),
        "keystore": str(daemon.home / "key.json"),
        "rpc": daemon.rpc,
        "log": str(daemon.home.parent / f"{daemon.name}.log"),
    }


def start_daemon(
    daemon: DevnetDaemon,
    command: Sequence[str],
    options: Sequence[str],
    ready: str,
    on_line: Callable[[Line], None] | None = None,
) -> Child:
    """Start ``qoin COMMAND`` for ``daemon`` with its data directory, keystore (the devnet's
    password file beside its home) and node, then ``options``; its output goes to its log
    (``on_line`` sees each line), ``ready`` (its ready line) watched."""
    root = daemon.home.parent
    args = [*command, "--datadir", str(daemon.home / "data"),
            "--key", str(daemon.home / "key.json"), "--password-file", str(password_file(root)),
            "--rpc", daemon.rpc, *options]  # fmt: skip
    output = Output(keep=False, watch=(ready,), log=root / f"{daemon.name}.log", on_line=on_line)
    return Child.start(f"{command[0]} {daemon.name}", args, output)


def ready_lines(
    daemons: Sequence[DaemonT], ready: str, cancel: threading.Event
) -> Iterator[tuple[DaemonT, re.Match[str]]]:
    """Each started daemon of ``daemons`` with its ready line, waited for in turn (at most
    :data:`START_TIMEOUT_S` each; :class:`~qoin.process.ChildFailed` if one exits or takes
    longer), until ``cancel`` is set."""
    for daemon in daemons:
        if daemon.child is None:
            continue
        found = daemon.child.first_match(ready, START_TIMEOUT_S, cancel)
        if found is None:
            return
        yield daemon, found[0]


@dataclass
class Provider:
    """One storage provider of the devnet."""

    index: int
    home: Path
    address: str
    rpc: str
    child: Child | None = None
    url: str = ""
    """Its HTTP API (``http://host:port``), once it listens."""

    @property
    def endpoint(self) -> str:
        """``host:port`` as posted in its ask."""
        return self.url.removeprefix("http://")

    @property
    def name(self) -> str:
        return f"provider{self.index}"

    def json(self) -> dict[str, Any]:
        """Its entry in ``devnet.json``."""
        return daemon_entry(self)


def password_file(root: Path) -> Path:
    """The devnet's password file (written once)."""
    path = root / "password.txt"
    if not path.exists():
        path.write_text(PASSWORD + "\n")
    return path


def dev_keystore(root: Path, keypair: HybridKeyPair) -> Path:
    """The devnet key's keystore file, so that the client commands can use it."""
    path = root / "devnet-key.json"
    if not path.exists():
        keystore.save(keystore.encrypt_keypair(keypair, PASSWORD), path)
    return path


def made_keypair(path: Path) -> HybridKeyPair:
    """The keypair of the keystore at ``path``: made and saved on the devnet's first start (under
    :data:`PASSWORD`), read back afterwards."""
    if path.exists():
        return keystore.decrypt_keypair(keystore.load(path), PASSWORD)
    path.parent.mkdir(parents=True, exist_ok=True)
    keypair = generate_keypair()
    keystore.save(keystore.encrypt_keypair(keypair, PASSWORD), path)
    return keypair


def client_keystore(root: Path) -> Path:
    """The user's funded keystore (made on the first start)."""
    return root / "client-key.json"


def fund(url: str, funder: HybridKeyPair, amounts: dict[str, int], cancel: threading.Event) -> int:
    """Pay each address its amount unless it holds half of it already; wait until mined. How many
    transfers it sent."""
    with Wallet(url, funder) as wallet:
        sent = []
        for address, amount in amounts.items():
            account = wallet.client.call("qoin_getAccount", address)
            if int(account["balance"]) < amount // 2:
                sent.append(wallet.pay(Address.from_text(address), amount))
        deadline = time.monotonic() + FUND_TIMEOUT_S
        for tx_id in sent:
            left = deadline - time.monotonic()
            if cancel.is_set() or left <= 0:
                raise QoinError("the devnet's accounts were not funded in time")
            wallet.wait(tx_id, left)
        return len(sent)


class StorageProviders:
    """Makes, funds, starts and stops the devnet's providers."""

    def __init__(self, root: Path, count: int) -> None:
        self.root = root
        self.count = count
        self.providers: list[Provider] = []

    def prepare(self, node_rpcs: Sequence[str]) -> None:
        """Each provider's key (made on the first start) and node."""
        for i in range(self.count):
            home = self.root / f"provider{i}"
            keypair = made_keypair(home / "key.json")
            self.providers.append(
                Provider(i, home, str(keypair.address), node_rpcs[i % len(node_rpcs)])
            )

    def funding(self) -> dict[str, int]:
        """What each provider is paid from the devnet allocation."""
        return {provider.address: FUNDING for provider in self.providers}

    def start(self, on_line: Callable[[Provider], Callable[[Line], None]] | None = None) -> None:
        """Start every provider daemon (see the module docstring)."""
        for provider in self.providers:
            options = ["--capacity", CAPACITY, "--price", str(PRICE),
                       "--collateral", str(COLLATERAL), "--endpoint", "127.0.0.1:0"]  # fmt: skip
            provider.child = start_daemon(
                provider,
                ("storage", "provider"),
                options,
                READY,
                on_line(provider) if on_line is not None else None,
            )

    def await_ready(self, cancel: threading.Event) -> None:
        """Wait for every provider's ready line (its endpoint)."""
        for provider, found in ready_lines(self.providers, READY, cancel):
            provider.url = found[1]

    def children(self) -> list[Child]:
        """The running daemons."""
        return [p.child for p in self.providers if p.child is not None]


def describe(
    root: Path,
    genesis_hash: str,
    nodes: Sequence[dict[str, Any]],
    providers: Sequence[Provider],
    devnet_key: Path,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``devnet.json``: each node's URLs, each provider, the keystores, and ``extra``'s
    entries (the compute daemons); its path."""
    path = root / "devnet.json"
    obj = {
        "genesis": genesis_hash,
        "nodes": list(nodes),
        "storage_providers": [p.json() for p in providers],
        "keystore": str(client_keystore(root)),
        "devnet_keystore": str(devnet_key),
        "password_file": str(password_file(root)),
        **(extra or {}),
    }
    temp = path.with_suffix(".tmp")
    temp.write_text(json.dumps(obj, indent=2) + "\n")
    temp.replace(path)
    return path
