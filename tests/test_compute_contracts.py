"""A contract that requests verified computation, end to end with real processes
(docs/spec/compute.md §3.12): a mining node, one compute provider daemon (sandbox), the example
contract ``examples/contracts/ai_oracle`` deployed with the real ``qoin contract deploy``, and an
agent account driving :mod:`qoin.compute.client.contract` (the contract bids with the agent's
deposit, the agent offers the job to the provider and forms the deal, then follows it as ``run``
does). The provider reveals its root with the manifest and stdout, the deal settles, the cron calls
the contract back, and ``answer(deal)`` returns the job's output.

The job is a plain sandbox job whose stdout is the answer (``sh -c 'echo 42'``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from qoin.compute.client import JobOptions, MarketOptions, follow, prepare
from qoin.compute.client.contract import submit_for_contract
from qoin.compute.client.ranking import NoMatch
from qoin.compute.jobspec import OutputLimits
from qoin.compute.market import ComputeMarketView
from qoin.crypto.address import Address
from qoin.execution.abi import decode_value
from qoin.wallet import CallReverted, Wallet
from tests.cliutil import run_qoin
from tests.computeutil import (
    ComputeProvider,
    compute_network,
    events,
    start_compute_provider,
)
from tests.framework import Network, Node, wait_until
from tests.keys import keypair_for
from tests.storageutil import fund, write_keystore

ORACLE = Path(__file__).resolve().parents[1] / "examples" / "contracts" / "ai_oracle.wasm"
PROVIDER, AGENT = keypair_for(index=140), keypair_for(index=141)

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class World:
    net: Network
    node: Node
    provider: ComputeProvider
    oracle: Address

    @property
    def url(self) -> str:
        return self.node.user.url


def deploy(net: Network, node: Node, wasm: Path) -> Address:
    """``qoin contract deploy`` from the agent; the contract's address."""
    key, password = write_keystore(net.workdir / "agent", AGENT)
    done = run_qoin(
        "contract", "deploy", str(wasm), "--key", str(key), "--password-file", str(password),
        "--rpc", node.user.url, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    fields = dict(line.split(": ", 1) for line in done.stdout.splitlines() if ": " in line)
    assert fields.get("status") == "success", done.stdout
    return Address.from_text(fields["contract"])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    workdir = tmp_path_factory.mktemp("compute-contracts")
    with pytest.MonkeyPatch.context() as patch, compute_network(workdir, patch) as (net, node):
        fund(node, PROVIDER, AGENT)
        provider = start_compute_provider(net, node.user.url, PROVIDER, name="provider")
        yield World(net, node, provider, deploy(net, node, ORACLE))


def answer_of(wallet: Wallet, oracle: Address, deal: int) -> bytes | None:
    try:
        found = decode_value(wallet.query(oracle, "answer", [deal]))
    except CallReverted:
        return None
    assert isinstance(found, bytes)
    return found


FEW_FILES = OutputLimits(max_files=1)
"""Output limits whose result manifest fits a reveal with an answer."""


def test_the_oracle_gets_the_verified_answer(world: World, tmp_path: Path) -> None:
    options = JobOptions(
        command=("sh", "-c", "echo 42"), cpus=1, memory=256 << 20, timeout=30, outputs=FEW_FILES
    )
    chosen = MarketOptions(providers=(world.provider.address,))
    with ComputeMarketView(world.url) as view, Wallet(world.url, AGENT) as wallet:
        prepared = prepare(view, options, chosen, AGENT)
        submitted = submit_for_contract(wallet, view, prepared, world.oracle, tmp_path / "jobs")
        deal = submitted.deal
        assert submitted.bid.client == world.oracle and submitted.bid.agent == AGENT.address
        outcome = follow(wallet, submitted, tmp_path / "out", tmp_path / "jobs")
        assert (tmp_path / "out" / "stdout").read_bytes() == b"42\n", outcome
        wait_until(
            lambda: answer_of(wallet, world.oracle, deal) is not None, 30, 0.2, "the callback"
        )
        assert answer_of(wallet, world.oracle, deal) == b"42\n"
        root = decode_value(wallet.query(world.oracle, "root", [deal]))
    revealed = events(world.node, "ResultRevealed", deal)
    assert revealed and revealed[0][1][2] == root
    done = events(world.node, "CallbackDone", deal)
    assert done and done[0][1][1:3] == ("on_compute_result", 0)


def test_the_provider_refuses_an_answer_its_manifest_could_not_carry(
    world: World, tmp_path: Path
) -> None:
    """A job asking for an answer that may leave more output files than a reveal's manifest can
    list is refused at the offer (the provider could not reveal it and would be fined); the
    agent's bid is cancelled, the deposit back with the contract."""
    options = JobOptions(command=("sh", "-c", "echo 42"), cpus=1, memory=256 << 20, timeout=30)
    chosen = MarketOptions(providers=(world.provider.address,))
    with ComputeMarketView(world.url) as view, Wallet(world.url, AGENT) as wallet:
        prepared = prepare(view, options, chosen, AGENT)
        with pytest.raises(NoMatch) as refused:
            submit_for_contract(wallet, view, prepared, world.oracle, tmp_path / "jobs")
    reasons = [refusal.reason for refusal in refused.value.refusals]
    assert any("allow at most 3 (--max-files 3)" in reason for reason in reasons), reasons
