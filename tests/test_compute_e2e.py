"""The compute market end to end, with real processes only: one mining node (a block every
~100 ms), two storage providers, three compute providers (two honest, one cheating on purpose with
the test-only ``--misbehave``) and one mediator, all real daemons; the client is the real ``qoin
compute`` command run as a subprocess with a keystore and a password file, as a user runs it.

One network serves the whole module: every test names its providers (``--provider``), so the
ranking never picks a provider another test left dead or cheating. What each test shows:

1. ``run`` of a job with an input from the storage market: its live output reaches the client
   before the result is even committed, the outputs are saved and verified (the real SHA-256 of
   the input), the provider is paid, and the client's balance drops by exactly the payment plus
   its transactions' fees. An offer someone raced in with another job key does not lock the
   client out (its own offer signs its key).
2. ``replicated`` with an honest provider and a cheater: a random result is caught by the mediator
   (verdict wrong-result, the cheater fined, the honest one paid); a cheater that copies the other's
   reveal, or withholds its own, is fined as not delivered and the honest one paid.
3. A client that disputes a correct result pays the mediator's fee (verdict correct-result).
4. A job whose results differ from run to run, replicated: verdict non-deterministic (exit 123).
5. A provider SIGKILLed mid-job: the deal settles undelivered at its run deadline, the client gets
   its deposit back (exit 121) and the provider's collateral is slashed.

The client commands' option checks and the ranking: :mod:`tests.test_compute_client`. The
provider daemon alone: :mod:`tests.test_compute_provider`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from qoin.cli.main import app
from qoin.compute import client, keys
from qoin.compute.jobspec import Verification
from qoin.compute.market import ComputeMarketView
from qoin.process import Child, Output
from qoin.wallet import Wallet
from tests.cliutil import run_qoin
from tests.computeutil import (
    COMPUTE,
    FEE,
    ComputeProvider,
    compute_network,
    events,
    kem_key_of,
    offer,
    restart,
    start_compute_provider,
)
from tests.framework import Network, Node, wait_until
from tests.keys import keypair_for
from tests.storageutil import (
    CLIENT,
    StorageCli,
    balance,
    fund,
    start_provider,
    storage_cli,
    write_keystore,
)

PARAMS = replace(COMPUTE, staging_blocks=40, reveal_blocks=20, dispute_blocks=30)
"""Run budgets of the timeout plus ~4 s, reveal phases of ~2 s and dispute windows of ~3 s."""
HONEST = [keypair_for(index=120 + i) for i in range(2)]
CHEATER = keypair_for(index=122)
MEDIATOR = keypair_for(index=123)
STORAGE = [keypair_for(index=124 + i) for i in range(2)]
RUNNER = CliRunner()
RUN_S = 120.0
"""The longest a ``qoin compute run`` may take."""
JOB = ("--memory", "256MiB", "--max-output", "1MiB", "--max-log", "64KiB")

pytestmark = pytest.mark.slow


@dataclass
class Market:
    """The module's network and the client's commands."""

    net: Network
    node: Node
    honest: list[ComputeProvider]
    cheater: ComputeProvider
    mediator: ComputeProvider
    storage: StorageCli
    key: Path
    password: Path

    @property
    def rpc(self) -> str:
        return self.node.user.url

    def keyed(self) -> list[str]:
        return ["--key", str(self.key), "--password-file", str(self.password), "--rpc", self.rpc]

    def run(self, out: Path, *args: str) -> tuple[int, dict[str, Any], str]:
        """``qoin compute run ARGS -- ...`` (args hold the ``--``): exit status, JSON answer,
        stderr."""
        done = run_qoin(
            "compute", "run", *self.keyed(), "--json", "--out", str(out), *JOB, *args,
            timeout=RUN_S,
        )  # fmt: skip
        try:
            answer: dict[str, Any] = json.loads(done.stdout)
        except ValueError:
            pytest.fail(f"qoin compute run answered no JSON ({done.returncode}):\n{done.stderr}")
        return done.returncode, answer, done.stderr

    def spawn_run(self, out: Path, *args: str) -> Child:
        """``qoin compute run`` in the background (its stderr lines watched)."""
        return self.net.spawn(
            "client",
            ["compute", "run", *self.keyed(), "--json", "--out", str(out), *JOB, *args],
            Output(split=True),
        )


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Market]:
    workdir = tmp_path_factory.mktemp("compute-e2e")
    with (
        pytest.MonkeyPatch.context() as patch,
        compute_network(workdir, patch, PARAMS) as (net, node),
    ):
        fund(node, *HONEST, CHEATER, MEDIATOR, *STORAGE, CLIENT)
        url = node.user.url
        with ThreadPoolExecutor(max_workers=4) as pool:  # the daemons start side by side
            stored = [
                pool.submit(start_provider, net, node, f"storage-{i}", keypair)
                for i, keypair in enumerate(STORAGE)
            ]
            # The mediator first: the providers accept the mediators registered when they start.
            mediator = start_compute_provider(net, url, MEDIATOR, name="mediator", mediator=True)
            # Settled jobs' files kept the whole module long (status and logs read them).
            keeping = functools.partial(start_compute_provider, extra=("--keep-blocks", "5000"))
            started = [
                pool.submit(keeping, net, url, keypair, name=f"honest-{i}")
                for i, keypair in enumerate(HONEST)
            ]
            cheating = functools.partial(
                start_compute_provider, name="cheater", misbehave="random-output"
            )
            started.append(pool.submit(cheating, net, url, CHEATER))
            *honest, cheater = [future.result() for future in started]
            for future in stored:
                future.result()
        key, password = write_keystore(workdir / "client", CLIENT)
        yield Market(net, node, honest, cheater, mediator, storage_cli(net, node), key, password)


def topic(provider: ComputeProvider) -> str:
    return provider.address.raw.hex()


def settled(market: Market, deal: int) -> tuple[Any, ...]:
    (found,) = events(market.node, "DealSettled", deal)
    return found[1]


def paid(market: Market, deal: int) -> dict[str, int]:
    return {who: data[2] for who, data in events(market.node, "ProviderPaid", deal)}


def fined(market: Market, deal: int) -> dict[str, tuple[int, int]]:
    return {who: (data[2], data[3]) for who, data in events(market.node, "ProviderFined", deal)}


def receipt_fees(market: Market, transactions: list[str]) -> int:
    return sum(
        int(market.node.user.call("qoin_getTransactionReceipt", tx)["fee"]) for tx in transactions
    )


def test_a_job_with_a_stored_input_streams_saves_and_pays(market: Market, tmp_path: Path) -> None:
    data = os.urandom(20_000)
    source = tmp_path / "x"
    source.write_bytes(data)
    cid = market.storage.put(source, "--duration", "60")["cid"]
    before = balance(market.node, CLIENT)
    provider = market.honest[0]
    out = tmp_path / "out"
    code, answer, stderr = market.run(
        out, "--timeout", "10", "--provider", str(provider.address), "--input", f"{cid}:/inputs/x",
        "--", "sh", "-c", "echo hello; sleep 2; sha256sum /inputs/x > /outputs/h",
    )  # fmt: skip
    assert code == 0, stderr
    # The job's stdout reached the client live: before the provider even committed its result
    # (the job runs on for two seconds after it prints: the order is the stream's, not luck).
    assert "hello\n" in stderr, stderr
    assert stderr.index("hello\n") < stderr.index("[commit]"), stderr
    for phase in ("[match]", "[run]", "[commit]", "[verify]", "[settle]"):
        assert phase in stderr, stderr
    saved = answer["outputs"]
    assert saved["reason"] == "exited" and saved["exitCode"] == 0 and saved["files"] == ["h"]
    assert saved["source"] == "provider"  # one hop, not waiting on the storage market
    expected = f"{hashlib.sha256(data).hexdigest()}  /inputs/x\n"
    assert [p.read_text() for p in out.rglob("h")] == [expected]
    deal = answer["deal"]
    assert paid(market, deal) == {topic(provider): answer["cost"]["paid"]}
    assert answer["cost"]["paid"] > 0 and settled(market, deal)[1] == 1  # completed
    fees = receipt_fees(market, answer["transactions"])
    assert fees == answer["cost"]["txFees"] > 0 and len(answer["transactions"]) == 2
    assert before - balance(market.node, CLIENT) == answer["cost"]["paid"] + fees
    # The chain and the provider both say how it went (the provider learns of the settlement by
    # following the chain, a moment after the client); its output can be read again.
    shown: dict[str, Any] = {}

    def provider_says_settled() -> bool:
        status = RUNNER.invoke(app, ["compute", "status", str(deal), "--json", *market.keyed()])
        assert status.exit_code == 0, status.output
        shown.update(json.loads(status.stdout))
        return bool(shown["replicas"][0]["providerState"]["state"] == "settled")

    wait_until(provider_says_settled, 20)
    assert shown["kind"] == "settled" and shown["events"]["settled"]["outcome"] == "completed"
    (replica,) = shown["replicas"]
    assert replica["root"] == saved["root"]
    words = RUNNER.invoke(app, ["compute", "status", str(deal), *market.keyed()])
    assert f"deal {deal}: settled (completed)" in words.stdout, words.output
    assert "provider says settled" in words.stdout, words.output
    logs = RUNNER.invoke(app, ["compute", "logs", str(deal), *market.keyed()])
    assert logs.exit_code == 0 and logs.stdout == "hello\n", logs.output
    # The outputs can be had again later, verified against the revealed root.
    again = run_qoin(
        "compute", "get", str(deal), "--out", str(tmp_path / "again"), "--json", *market.keyed()
    )
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["root"] == saved["root"]
    assert [p.read_text() for p in (tmp_path / "again").rglob("h")] == [expected]


def test_an_offer_raced_in_with_another_job_key_does_not_lock_the_client_out(
    market: Market, tmp_path: Path
) -> None:
    """Whoever knows a bid's spec may offer it to the provider first, with a job key of its own
    (the provider keeps it); the client's own offer signs its sealed key, which replaces that
    one, and the job runs and delivers (its ``/mediate`` is signed too)."""
    provider = market.honest[0]
    options = client.JobOptions(
        command=("sh", "-c", "echo 7 > /outputs/n"),
        memory=256 << 20,
        timeout=10,
        verification=Verification.SPOT,
    )
    raced: list[int] = []

    class Racer(client.NoWatcher):
        def phase(self, phase: str, message: str) -> None:
            placed = re.match(r"bid (\d+) placed", message)
            if placed is not None:  # before the client's offers go out
                sealed = keys.seal_job_key(kem_key_of(market.node, provider.address),
                                           os.urandom(32), spec.job_hash)  # fmt: skip
                answer = offer(provider, int(placed[1]), spec, sealed,
                               mediator=market.mediator.address)  # fmt: skip
                raced.append(answer.status_code)

    jobs = tmp_path / "jobs"
    with ComputeMarketView(market.rpc) as view, Wallet(market.rpc, CLIENT) as wallet:
        only = client.MarketOptions(providers=(provider.address,))
        prepared = client.prepare(view, options, only, CLIENT)
        spec = prepared.spec
        submitted = client.submit(wallet, view, prepared, jobs, Racer())
        outcome = client.follow(wallet, submitted, tmp_path / "out", jobs)
    assert raced == [200]  # the stranger's key was kept first
    assert submitted.mediator_error == ""
    assert outcome.exit_code == 0, outcome.message
    assert outcome.outputs is not None and outcome.outputs.source == "provider"
    assert (tmp_path / "out" / "outputs" / "n").read_text() == "7\n"


def test_no_match_lists_every_provider_with_its_reason(market: Market, tmp_path: Path) -> None:
    """Nothing is sent when no provider matches; each one is named with why (exit 120)."""
    refused = RUNNER.invoke(
        app, ["compute", "run", *market.keyed(), "--json", "--max-price", "10", "--", "true"],
    )  # fmt: skip
    assert refused.exit_code == 120, refused.output
    reasons = {r["provider"]: r["reason"] for r in json.loads(refused.stdout)["refused"]}
    providers = [*market.honest, market.cheater, market.mediator]
    assert set(reasons) == {str(p.address) for p in providers}
    assert all("over --max-price 10" in reason for reason in reasons.values()), reasons
    assert f"{market.honest[0].address} ({market.honest[0].endpoint}):" in refused.stderr
    replicated = RUNNER.invoke(
        app, ["compute", "run", *market.keyed(), *JOB, "--verify", "replicated", "--max-fee", "1",
              "--", "true"],
    )  # fmt: skip
    assert replicated.exit_code == 120, replicated.output
    assert "mediator sets disjoint" in replicated.stderr
    book = RUNNER.invoke(app, ["compute", "asks", "--rpc", market.rpc])
    assert book.exit_code == 0 and "4 ask(s)" in book.stdout and "1 mediator(s)" in book.stdout
    # A dry run shows the plan and the deposit, and sends nothing either.
    bids = len(events(market.node, "BidPlaced"))
    honest = market.honest[0]
    dry = RUNNER.invoke(
        app, ["compute", "run", *market.keyed(), *JOB, "--json", "--dry-run", "--verify", "spot",
              "--timeout", "10", "--provider", str(honest.address), "--", "true"],
    )  # fmt: skip
    assert dry.exit_code == 0, dry.output
    plan = json.loads(dry.stdout)
    assert plan["plans"] == [
        {"mediator": str(market.mediator.address), "providers": [str(honest.address)]}
    ]
    assert plan["deposit"] == 10 * plan["maxPriceCpu"] + plan["maxFee"] and plan["maxFee"] == FEE
    assert len(events(market.node, "BidPlaced")) == bids


def _replicated(market: Market, out: Path, *command: str) -> tuple[int, dict[str, Any], str]:
    honest = market.honest[0]
    return market.run(
        out, "--verify", "replicated", "--timeout", "10", "--provider", str(honest.address),
        "--provider", str(market.cheater.address), "--", *command,
    )  # fmt: skip


def test_replicated_catches_a_cheater_of_each_kind(market: Market, tmp_path: Path) -> None:
    honest = market.honest[0]
    command = ("sh", "-c", "echo 42 > /outputs/answer")
    # A random result: the roots differ, the mediator re-runs the job and finds the cheater.
    code, answer, stderr = _replicated(market, tmp_path / "random", *command)
    assert code == 0, stderr
    deal = answer["deal"]
    verdict = answer["events"]["verdict"]
    assert verdict is not None, stderr
    assert verdict["kind"] == "wrong-result" and verdict["root"] == answer["outputs"]["root"]
    assert answer["outputs"]["provider"] == str(honest.address)
    assert set(paid(market, deal)) == {topic(honest)}
    assert fined(market, deal)[topic(market.cheater)][1] == 1  # wrong result
    assert (tmp_path / "random").is_dir() and settled(market, deal)[1] == 2  # mediated
    # Copying the other's reveal, or withholding its own: not delivered.
    for mode in ("copy-reveal", "withhold"):
        market.cheater = restart(market.net, market.cheater, market.rpc, misbehave=mode)
        code, answer, stderr = _replicated(market, tmp_path / mode, *command)
        assert code == 0, f"{mode}: {stderr}"
        deal = answer["deal"]
        assert set(paid(market, deal)) == {topic(honest)}, mode
        assert fined(market, deal)[topic(market.cheater)][1] == 2, mode  # not delivered
        assert answer["outputs"]["provider"] == str(honest.address)


def test_disputing_a_correct_result_costs_the_mediation_fee(market: Market, tmp_path: Path) -> None:
    provider = market.honest[1]
    client = market.spawn_run(
        tmp_path / "out", "--verify", "spot", "--timeout", "10", "--provider",
        str(provider.address), "--", "sh", "-c", "echo fine > /outputs/f",
    )  # fmt: skip
    _, found, _ = client.wait_for(r"\(qoin compute dispute (\d+)\)", RUN_S)
    deal = int(found[1])
    # In this process (a subprocess's start-up would eat into the ~3 s window).
    disputed = RUNNER.invoke(app, ["compute", "dispute", str(deal), "--json", *market.keyed()])
    assert disputed.exit_code == 0, disputed.output
    assert json.loads(disputed.stdout)["fee"] == FEE
    code = client.finish(time.monotonic() + RUN_S)
    stdout = "".join(line.text for line in client.collect() if not line.stderr)
    answer = json.loads(stdout)
    assert code == 0, answer
    assert answer["events"]["disputed"] is True
    assert answer["events"]["verdict"]["kind"] == "correct-result"
    assert answer["cost"]["mediationFee"] == FEE
    assert set(paid(market, deal)) == {topic(provider)} and fined(market, deal) == {}
    mediator_paid = events(market.node, "Verdict", deal)
    assert mediator_paid[0][0] == topic(market.mediator) and mediator_paid[0][1][3] == FEE


def test_a_non_deterministic_job_is_judged_so(market: Market, tmp_path: Path) -> None:
    a, b = market.honest
    code, answer, stderr = market.run(
        tmp_path / "out", "--verify", "replicated", "--timeout", "10", "--provider",
        str(a.address), "--provider", str(b.address), "--",
        "sh", "-c", "head -c 16 /dev/urandom > /outputs/r",
    )  # fmt: skip
    assert code == 123, stderr
    deal = answer["deal"]
    assert answer["events"]["verdict"]["kind"] == "non-deterministic"
    assert set(paid(market, deal)) == {topic(a), topic(b)} and fined(market, deal) == {}
    assert answer["cost"]["mediationFee"] == FEE


def test_a_provider_killed_mid_job_is_slashed_and_the_client_refunded(
    market: Market, tmp_path: Path
) -> None:
    victim = market.honest[1]
    with ComputeMarketView(market.rpc) as view:
        before = view.get_ask(victim.address)
    assert before is not None
    client = market.spawn_run(
        tmp_path / "out", "--timeout", "3", "--provider", str(victim.address), "--",
        "sleep", "30",
    )  # fmt: skip
    client.wait_for(r"\[run\] .* is running the job", RUN_S)
    victim.proc.send_signal(signal.SIGKILL)
    code = client.finish(time.monotonic() + RUN_S)
    answer = json.loads("".join(line.text for line in client.collect() if not line.stderr))
    assert code == 121, answer
    deal = answer["deal"]
    outcome, payments, refund = settled(market, deal)[1:4]
    assert (outcome, payments) == (3, 0)  # undelivered
    slashed, reason = fined(market, deal)[topic(victim)]
    assert reason == 2 and slashed > 0  # not delivered
    # The whole escrow back, and half the slashed collateral (fine_client_ppm) on top.
    cost = answer["cost"]
    share = slashed * PARAMS.fine_client_ppm // 1_000_000
    assert refund == cost["escrow"] + share and cost["finesReceived"] == share
    assert cost["paid"] == 0 and cost["refunded"] == cost["deposit"]
    with ComputeMarketView(market.rpc) as view:
        after = view.get_ask(victim.address)
    assert after is not None and after.not_delivered == before.not_delivered + 1
    total = before.free_collateral + before.locked_collateral
    assert total - (after.free_collateral + after.locked_collateral) == slashed
    wait_until(lambda: client.exited() is not None, 10)
