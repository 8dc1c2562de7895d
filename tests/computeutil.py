"""What the compute tests with real processes share: a mining node whose genesis carries the
compute market's fast test parameters (and the storage market's of :mod:`tests.storageutil`),
compute providers and mediators started as real daemons, job specs, bids, offers and deals driven
through a provider's HTTP API, its authenticated endpoints, and the actor's events.

The chain: a block every ~100 ms (``--block-interval-ms 100``) and :data:`COMPUTE`, whose
``block_ms`` of 100 makes a job's run budget about its timeout in seconds plus
``staging_blocks`` (10 s).

A compute provider runs as ``python -m qoin.cli.compute_provider`` (the same command function
``qoin compute provider`` runs) and is stopped with its network.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from qoin.compute import keys, market
from qoin.compute.jobspec import (
    Determinism,
    Executor,
    Input,
    JobSpec,
    OutputLimits,
    Resources,
    Verification,
)
from qoin.compute.market import COMPUTE_MARKET, ComputeMarketView
from qoin.compute.params import ComputeParams
from qoin.crypto.address import Address
from qoin.crypto.hybrid import HybridKeyPair
from qoin.execution.abi import decode_value
from qoin.process import Child
from qoin.wallet import Wallet
from tests.framework import START_S, Network, Node, genesis, wait_until
from tests.storageutil import PARAMS as STORAGE_PARAMS
from tests.storageutil import write_keystore

COMPUTE = ComputeParams(
    block_ms=100,
    staging_blocks=100,
    reveal_blocks=30,
    dispute_blocks=30,
    mediation_blocks=200,
    max_bid_blocks=300,
    max_timeout=600,
    min_mediator_stake=1_000_000,
    mediator_exit_blocks=50,
)
"""The compute market's test parameters (blocks of ~100 ms)."""
PRICE_CPU = 1_000
"""Shor per CPU-second each test provider asks."""
FEE = 10_000
"""The test mediators' fee."""
READY = r'^\{"ready": true.*\}$'
"""A compute provider's ready line."""
MEMORY = 256 << 20


@dataclass(frozen=True, eq=False)
class ComputeProvider:
    """A compute provider daemon started by a test."""

    keypair: HybridKeyPair
    child: Child
    ready: dict[str, Any]
    """Its ready line."""
    home: Path
    """Its keystore, password file and data directory."""

    @property
    def proc(self) -> Any:
        return self.child.proc

    @property
    def address(self) -> Address:
        return self.keypair.address

    @property
    def endpoint(self) -> str:
        """``host:port`` as posted in its ask."""
        return str(self.ready["endpoint"])

    @property
    def url(self) -> str:
        """Its API's base URL (``http://host:port/compute/v1``)."""
        return str(self.ready["url"])

    @property
    def datadir(self) -> Path:
        return self.home / "data"

    @property
    def key(self) -> Path:
        return self.home / "key.json"

    @property
    def password_file(self) -> Path:
        return self.home / "password"

    def info(self) -> dict[str, Any]:
        answer: dict[str, Any] = httpx.get(f"{self.url}/info", timeout=30).json()
        return answer


def provider_argv(*args: str) -> list[str]:
    """The command line of a compute provider with ``args``."""
    return [sys.executable, "-m", "qoin.cli.compute_provider", *args]


def start_compute_provider(
    net: Network,
    url: str,
    keystore: HybridKeyPair,
    *,
    name: str | None = None,
    mediator: bool = False,
    misbehave: str | None = None,
    executors: str = "sandbox",
    cpus: int = 1,
    memory: str = "256MiB",
    price: int = PRICE_CPU,
    fee: int = FEE,
    extra: Sequence[str] = (),
) -> ComputeProvider:
    """Write a keystore for ``keystore`` in ``WORKDIR/NAME`` (once: a restart finds its files)
    and start a compute provider with it against the node at ``url`` (its user RPC); wait for
    its ready line. Stopped with the network. ``name`` defaults to ``compute-<address prefix>``."""
    home = net.workdir / (name or f"compute-{str(keystore.address)[5:13]}")
    key, password = write_keystore(home, keystore)
    args = [
        "--datadir", str(home / "data"), "--key", str(key), "--password-file", str(password),
        "--rpc", url, "--cpus", str(cpus), "--memory", memory, "--price", str(price),
        "--executors", executors, "--keep-blocks", "50", *extra,
    ]  # fmt: skip
    if mediator:
        args += ["--mediator", "--fee", str(fee)]
    if misbehave is not None:
        args += ["--misbehave", misbehave]
    child = Child.spawn(home.name, provider_argv(*args))
    net.children.append(child)
    _, found, _ = child.wait_for(READY, START_S)
    ready = json.loads(found[0])
    assert ready["address"] == str(keystore.address)
    return ComputeProvider(keystore, child, ready, home)


def restart(net: Network, provider: ComputeProvider, url: str, **options: Any) -> ComputeProvider:
    """Stop ``provider`` (it must exit 0) and start it again on its files."""
    assert provider.child.stop() == 0, provider.child.tail()
    net.children.remove(provider.child)
    return start_compute_provider(net, url, provider.keypair, name=provider.home.name, **options)


@contextmanager
def compute_network(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, compute: ComputeParams = COMPUTE
) -> Iterator[tuple[Network, Node]]:
    """A mining node (a block every ~100 ms) with the compute market's ``compute`` parameters
    and the storage market's test parameters; every process stopped at the end."""
    monkeypatch.setenv("QOIN_HOME", str(workdir / "home"))
    monkeypatch.delenv("QOIN_PASSWORD", raising=False)
    net = Network(workdir, replace(genesis(), storage=STORAGE_PARAMS, compute=compute))
    try:
        node = net.node("miner", "--block-interval-ms", "100", p2p=False, mine=True)
        yield net, node
    finally:
        net.stop_all()


# -- jobs, bids and offers -----------------------------------------------------------------------


def job_spec(
    command: Sequence[str] = ("sh", "-c", "echo hello"),
    *,
    executor: Executor = Executor.SANDBOX,
    inputs: Sequence[Input] = (),
    cpus: int = 1,
    memory: int = MEMORY,
    timeout: int = 30,
    verification: Verification = Verification.NONE,
    determinism: Determinism = Determinism.EXACT,
) -> JobSpec:
    """A small job spec."""
    return JobSpec(
        executor=executor,
        command=tuple(command),
        inputs=tuple(inputs),
        resources=Resources(cpus=cpus, memory=memory),
        timeout=timeout,
        verification=verification,
        determinism=determinism,
        outputs=OutputLimits(max_bytes=16 << 20, max_files=100, max_log_bytes=1 << 20),
    )


def place_bid(
    node: Node,
    client: HybridKeyPair,
    spec: JobSpec,
    *,
    max_price: int = PRICE_CPU,
    mediators: Sequence[Address] = (),
    max_fee: int = 0,
    blocks: int = 200,
) -> int:
    """Place a bid for ``spec`` from ``client``; its id."""
    head = int(node.user.call("qoin_blockNumber"))
    call = market.place_bid(
        spec,
        max_price_cpu=max_price,
        max_price_gpu=0,
        deadline=head + blocks,
        mediators=mediators,
        max_fee=max_fee,
    )
    with Wallet(node.user.url, client) as wallet:
        receipt = call.transact(wallet)
    bid = decode_value(bytes.fromhex(receipt["returnData"]))
    assert isinstance(bid, int)
    return bid


def kem_key_of(node: Node, provider: Address) -> bytes:
    """The KEM key of ``provider``'s ask (or mediator record)."""
    with ComputeMarketView(node.user.url) as view:
        ask = view.get_ask(provider)
        if ask is not None:
            return ask.kem_key
        record = view.get_mediator(provider)
        assert record is not None, f"{provider} has neither an ask nor a mediator record"
        return record.kem_key


def offer(
    provider: ComputeProvider,
    bid: int,
    spec: JobSpec,
    sealed: bytes,
    *,
    replica: int = 0,
    mediator: Address | None = None,
) -> httpx.Response:
    """``POST /offer`` to ``provider``."""
    body = {
        "bid": bid,
        "replica": replica,
        "mediator": "" if mediator is None else mediator.raw.hex(),
        "spec": spec.encode().hex(),
        "job_key": sealed.hex(),
    }
    return httpx.post(f"{provider.url}/offer", json=body, timeout=60)


def form_deal(
    node: Node,
    client: HybridKeyPair,
    bid: int,
    providers: Sequence[ComputeProvider],
    acceptances: Sequence[bytes],
    mediator: Address | None = None,
) -> int:
    """``deal(bid, providers, acceptances, mediator)`` from ``client``; the deal id."""
    call = market.form_deal(bid, [p.address for p in providers], acceptances, mediator)
    with Wallet(node.user.url, client) as wallet:
        receipt = call.transact(wallet)
    deal = decode_value(bytes.fromhex(receipt["returnData"]))
    assert deal == bid
    return bid


def run_deal(
    node: Node,
    client: HybridKeyPair,
    providers: Sequence[ComputeProvider],
    spec: JobSpec,
    *,
    mediator: ComputeProvider | None = None,
    job_key: bytes | None = None,
) -> tuple[int, bytes]:
    """Bid for ``spec``, get each provider's acceptance (``POST /offer``), form the deal, send
    the mediator its spec (``POST /mediate``); (deal id, job key)."""
    job_key = job_key or os.urandom(keys.JOB_KEY_SIZE)
    mediators = [mediator.address] if mediator is not None else []
    fee = FEE if mediator is not None else 0
    bid = place_bid(node, client, spec, mediators=mediators, max_fee=fee)
    acceptances = []
    for index, provider in enumerate(providers):
        sealed = keys.seal_job_key(kem_key_of(node, provider.address), job_key, spec.job_hash)
        answer = offer(
            provider,
            bid,
            spec,
            sealed,
            replica=index,
            mediator=None if mediator is None else mediator.address,
        )
        assert answer.status_code == 200, answer.text
        acceptances.append(bytes.fromhex(answer.json()["acceptance"]))
    deal = form_deal(
        node,
        client,
        bid,
        providers,
        acceptances,
        None if mediator is None else mediator.address,
    )
    if mediator is not None:
        sealed = keys.seal_job_key(kem_key_of(node, mediator.address), job_key, spec.job_hash)
        answer = httpx.post(
            f"{mediator.url}/mediate",
            json={"deal": deal, "spec": spec.encode().hex(), "job_key": sealed.hex()},
            timeout=60,
        )
        assert answer.status_code == 200, answer.text
    return deal, job_key


def authed(
    provider: ComputeProvider,
    signer: HybridKeyPair,
    deal: int,
    path: str = "",
    now: float | None = None,
) -> httpx.Response:
    """``GET /jobs/{deal}{path}`` on ``provider`` signed by ``signer``."""
    header = keys.auth_header(signer, provider.address, deal, now)
    return httpx.get(
        f"{provider.url}/jobs/{deal}{path}", headers={keys.AUTH_HEADER: header}, timeout=30
    )


def job_status(provider: ComputeProvider, client: HybridKeyPair, deal: int) -> dict[str, Any]:
    """``GET /jobs/{deal}`` as the client (it must answer 200)."""
    answer = authed(provider, client, deal)
    assert answer.status_code == 200, answer.text
    status: dict[str, Any] = answer.json()
    return status


def wait_state(
    provider: ComputeProvider,
    client: HybridKeyPair,
    deal: int,
    states: Sequence[str],
    timeout: float = 120,
) -> dict[str, Any]:
    """Wait until the job of ``deal`` on ``provider`` is in one of ``states``; its status."""

    def reached() -> dict[str, Any] | None:
        status = job_status(provider, client, deal)
        return status if status["state"] in states else None

    found = wait_until(
        reached, timeout, 0.2, f"deal {deal} on {provider.home.name} in {'/'.join(states)}"
    )
    assert found is not None
    return found


def events(node: Node, name: str, deal: int | None = None) -> list[tuple[str, tuple[Any, ...]]]:
    """(topic 1 as hex, data) of every ``name`` event of the compute market (of ``deal``)."""
    logs = node.user.call(
        "qoin_getLogs",
        {
            "fromBlock": 0,
            "toBlock": "latest",
            "address": str(COMPUTE_MARKET),
            "topics": [market.event_topic(name).hex()],
        },
    )
    found = []
    for log in logs:
        decoded = market.decode_event(log)
        assert decoded is not None and isinstance(decoded[1], tuple)
        if deal is None or decoded[1][0] == deal:
            found.append((str(log["topics"][1]), decoded[1]))
    return found
