"""The compute client (:mod:`qoin.compute.client`, ``qoin compute``) where no provider is needed:
option checks (exit 2 before any node is asked), the ranking of the book and the reason each
refused provider is given, the plans for replicated jobs (two providers with a common mediator),
a deal's story folded from its events and what it cost, the job records, ``local`` (the spec run
twice with the sandbox executor), and the commands against a node with an empty book. The whole
market with real providers: :mod:`tests.test_compute_e2e`.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from qoin.actors.compute_market import KEM_KEY_SIZE, Outcome, Phase, VerdictKind
from qoin.ai.runtime import RuntimeInfo
from qoin.cli.compute import parse_duration
from qoin.cli.main import app
from qoin.compute import client, jobspec
from qoin.compute.client import (
    BadOptions,
    DealEvent,
    DealStory,
    JobOptions,
    JobRecord,
    MarketOptions,
)
from qoin.compute.jobspec import Executor, Verification
from qoin.compute.market import AskInfo, ComputeMarketView, MediatorInfo
from qoin.compute.params import DEVNET, ComputeParams
from qoin.crypto.address import Address
from qoin.node import devnet_storage
from qoin.node.devnet_compute import ComputeProviders
from qoin.process import stop_all
from qoin.storage.params import PPM
from tests.aiutil import ai_runtime  # noqa: F401 (a fixture)
from tests.framework import FUNDED, Network, Node
from tests.keys import keypair_for
from tests.storageutil import storage_network, write_keystore

RUNNER = CliRunner()
NOWHERE = "http://127.0.0.1:9"
"""An RPC URL nothing answers at: a command given it that exits 2 asked no node."""
CLIENT = keypair_for(index=90)
PARAMS = replace(DEVNET, min_mediator_stake=1_000)
SPEC = JobOptions(command=("true",), cpus=2, memory=1 << 28, timeout=10).spec()


def compute(*args: str) -> Result:
    """``qoin compute ARGS`` in this process (no ``QOIN_PASSWORD``)."""
    return RUNNER.invoke(app, ["compute", *args], env={"QOIN_PASSWORD": None})


def refused(result: Result, code: int, reason: str) -> None:
    """The command exited ``code`` with one error line containing ``reason`` (no traceback)."""
    assert result.exit_code == code, (result.exit_code, result.output)
    assert reason in result.stderr, result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception


def address(n: int) -> Address:
    return Address(bytes([n]) * 32)


def ask(n: int, **changes: object) -> AskInfo:
    """An ask of provider ``address(n)``: 4 CPUs, 1 GiB, sandbox and wasm, 10 Shor per
    CPU-second, k = 1, plenty of collateral, mediator ``address(100)`` accepted."""
    made = AskInfo(
        provider=address(n),
        cpus=4,
        memory=1 << 30,
        gpus=0,
        gpu_model="",
        executors=Executor.SANDBOX.bit | Executor.WASM.bit,
        used_cpus=0,
        used_memory=0,
        used_gpus=0,
        price_cpu=10,
        price_gpu=0,
        collateral_ppm=PPM,
        mediators=(address(100),),
        endpoint=f"127.0.0.1:{9000 + n}",
        kem_key=bytes(KEM_KEY_SIZE),
        free_collateral=10**9,
        locked_collateral=0,
        active=True,
        settled=0,
        fined=0,
        not_delivered=0,
    )
    return replace(made, **changes)  # type: ignore[arg-type]


def mediator(n: int, fee: int = 5, **changes: object) -> MediatorInfo:
    made = MediatorInfo(address(n), fee, 10**6, 0, True, 0, f"127.0.0.1:{9500 + n}",
                        bytes(KEM_KEY_SIZE), 0, 0)  # fmt: skip
    return replace(made, **changes)  # type: ignore[arg-type]


# -- options ---------------------------------------------------------------------------------------


def test_inputs_envs_and_durations_parse() -> None:
    cid = "ab" * 32
    assert client.parse_input(f"{cid}:/inputs/x") == client.InputRef(
        "/inputs/x", bytes.fromhex(cid)
    )
    assert client.parse_input(f"0x{cid}:/a b") == client.InputRef("/a b", bytes.fromhex(cid))
    local = client.parse_input("data/file.txt:/inputs/f", local=True)
    assert local == client.InputRef("/inputs/f", file=Path("data/file.txt"))
    for bad in ("abc:/x", f"{cid}/x", f"{cid}:relative"):
        with pytest.raises(BadOptions, match="is not CID:/path"):
            client.parse_input(bad)
    assert client.parse_env("A_1=x=y") == ("A_1", "x=y")
    with pytest.raises(BadOptions, match="NAME=VALUE"):
        client.parse_env("1A=x")
    assert [parse_duration(t) for t in ("30", "90s", "5m", "2h", "1d")] == [
        30, 90, 300, 7200, 86400,
    ]  # fmt: skip
    with pytest.raises(BadOptions, match="not a duration"):
        parse_duration("5 minutes")
    assert client.parse_deal("17") == 17
    with pytest.raises(BadOptions, match="deal id"):
        client.parse_deal("0")


def test_unusable_input_exits_2_before_asking_a_node(tmp_path: Path) -> None:
    key, password = write_keystore(tmp_path / "client", CLIENT)
    keyed = ["--key", str(key), "--password-file", str(password), "--rpc", NOWHERE]
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "file").write_text("x")
    cases: list[tuple[list[str], str]] = [
        (["run", *keyed, "--", ""], "needs a command"),
        (["run", *keyed], "needs a command"),
        (["run", *keyed, "--timeout", "5x", "--", "true"], "not a duration"),
        (["run", *keyed, "--memory", "lots", "--", "true"], "--memory"),
        (["run", *keyed, "--executor", "vm", "--", "true"], "--executor is one of"),
        (["run", *keyed, "--verify", "twice", "--", "true"], "--verify is one of"),
        (["run", *keyed, "--input", "x:/y", "--", "true"], "is not CID:/path"),
        (["run", *keyed, "--input", "ab" * 32 + ":/outputs/x", "--", "true"], "lies in /outputs"),
        (["run", *keyed, "--env", "=x", "--", "true"], "NAME=VALUE"),
        (["run", *keyed, "--runtime", "qoin-ai", "--", "true"], "not a runtime ref"),
        (
            ["run", *keyed, "--executor", "wasm", "--runtime", "a@" + "0" * 32, "--", "x"],
            "only sandbox jobs name a runtime",
        ),
        (["run", *keyed, "--executor", "docker", "--image", "busybox", "--", "x"], "by digest"),
        (
            ["run", *keyed, "--verify", "replicated", "--determinism", "none", "--", "true"],
            "cannot be verified by replication",
        ),
        (["run", *keyed, "--out", str(taken), "--", "true"], "is not empty"),
        (["run", *keyed, "--provider", "qoin1nothing", "--", "true"], "invalid address"),
        (["run", "--key", str(tmp_path / "missing.json"), "--", "true"], "cannot read keystore"),
        (["status", "first", "--rpc", NOWHERE], "deal id"),
        (["get", "3", "--out", str(taken), *keyed], "is not empty"),
        (["local", "--input", "nowhere:x", "--", "true"], "FILE:/path"),
    ]
    for args, reason in cases:
        refused(compute(*args), 2, reason)
    unreachable = compute("asks", "--rpc", NOWHERE)
    assert unreachable.exit_code == 1 and NOWHERE.removeprefix("http://") in unreachable.stderr


# -- ranking ---------------------------------------------------------------------------------------


def test_each_refused_provider_says_why() -> None:
    gpu_spec = JobOptions(command=("true",), gpus=1, gpu_model="A100", memory=1 << 20).spec()
    wasm_only = ask(1, executors=Executor.WASM.bit)
    cases = [
        (wasm_only, SPEC, MarketOptions(), "executor sandbox not offered (it offers wasm)"),
        (ask(2, price_cpu=50), SPEC, MarketOptions(max_price=20), "over --max-price 20"),
        (ask(3, used_cpus=3), SPEC, MarketOptions(), "1 of 4 CPUs free, the job needs 2"),
        (
            ask(4, memory=1 << 20),
            SPEC,
            MarketOptions(),
            "1 MiB of 1 MiB of memory free, the job needs",
        ),
        (ask(5), gpu_spec, MarketOptions(), "0 of 0 GPUs free, the job needs 1"),
        (ask(6, gpus=1, gpu_model="T4"), gpu_spec, MarketOptions(), "GPU model 'T4'"),
        (ask(7), SPEC, MarketOptions(min_collateral_ppm=2 * PPM), "k too low"),
        (ask(8, free_collateral=10), SPEC, MarketOptions(), "this job locks 200"),
        (ask(9), SPEC, MarketOptions(providers=(address(1),)), "not one of --provider"),
        (ask(10), SPEC, MarketOptions(), None),
    ]
    for made, spec, options, reason in cases:
        found = client.refusal_reason(made, spec, options, CLIENT.address)
        assert (found is None) == (reason is None), (made.provider, found)
        if reason is not None:
            assert reason in str(found), found
    own = ask(11, provider=CLIENT.address)
    assert client.refusal_reason(own, SPEC, MarketOptions(), CLIENT.address) == (
        "it is the client itself"
    )


def test_ranking_is_price_then_free_capacity_then_reputation() -> None:
    asks = [
        ask(1, price_cpu=20),
        ask(2, used_cpus=2),
        ask(3, settled=5, fined=5),
        ask(4, settled=5),
        ask(5, price_cpu=5, executors=Executor.WASM.bit),
    ]
    ranking = client.rank(asks, [], SPEC, MarketOptions(), PARAMS, CLIENT.address)
    assert [c.provider for c in ranking.candidates] == [
        address(4),
        address(3),
        address(2),
        address(1),
    ]
    assert [c.cost for c in ranking.candidates] == [200, 200, 200, 400]  # 2 CPUs x 10 s x price
    assert [r.provider for r in ranking.refused] == [address(5)]
    (plan,) = client.plans(ranking, SPEC)
    assert plan.mediator is None and plan.providers == ranking.candidates


def test_replicated_needs_two_providers_with_a_common_mediator() -> None:
    spec = replace(SPEC, verification=Verification.REPLICATED)
    cheap, dear = mediator(100, fee=5), mediator(101, fee=50)
    asks = [
        ask(1, mediators=(address(100),)),
        ask(2, mediators=(address(101),)),
        ask(3, mediators=(address(101),), price_cpu=11),
        ask(4, mediators=()),
        ask(5, mediators=(address(102),)),
    ]
    ranking = client.rank(asks, [dear, cheap], spec, MarketOptions(), PARAMS, CLIENT.address)
    reasons = {r.provider: r.reason for r in ranking.refused}
    assert reasons == {
        address(4): "it accepts no mediator (spot and replicated need one)",
        address(5): "mediator sets disjoint: it accepts none of the usable mediators",
    }
    (plan,) = client.plans(ranking, spec)  # only mediator 101 has two providers
    assert plan.mediator == dear
    assert [c.provider for c in plan.providers] == [address(2), address(3)]
    # With a fee limit the only mediator with two providers is unusable: no plan, and why.
    capped = client.rank(asks, [dear, cheap], spec, MarketOptions(max_fee=10), PARAMS)
    assert client.plans(capped, spec) == []
    message = client.no_match_message(spec, capped, capped.refused)
    assert "the job needs 2 providers" in message
    assert f"{address(2)} (127.0.0.1:9002): mediator sets disjoint" in message
    # A provider never mediates its own deal; a mediator short of stake is unusable.
    assert client.usable_mediators([mediator(1, stake=10)], PARAMS, MarketOptions(), None) == []
    selfish = client.rank([ask(100), ask(1)], [cheap], spec, MarketOptions(), PARAMS)
    assert [r.provider for r in selfish.refused] == [address(100)]


def test_no_asks_at_all_says_so() -> None:
    ranking = client.rank([], [], SPEC, MarketOptions(), PARAMS)
    assert client.plans(ranking, SPEC) == []
    assert "no provider has an ask in the book" in client.no_match_message(SPEC, ranking, [])


# -- a deal's story and its cost -------------------------------------------------------------------


def event(name: str, height: int, *data: object) -> DealEvent:
    return DealEvent(name, height, tuple(data), (f"block{height}", name, height))  # type: ignore[arg-type]


def test_a_story_of_a_mediated_deal_and_what_it_cost() -> None:
    params = ComputeParams(fine_client_ppm=500_000)
    good, bad = b"\x01" * 32, b"\x02" * 32
    story = DealStory(7)
    events = [
        event("DealFormed", 10, 7, b"\x09" * 32, (address(1), address(2)), address(100), 30, 1_005),
        event("ResultCommitted", 12, 7, 0),
        event("ResultCommitted", 13, 7, 1),
        event("PhaseStarted", 13, 7, int(Phase.REVEAL), 33),
        event("ResultRevealed", 14, 7, 0, good, 3, 0),
        event("ResultRevealed", 15, 7, 1, bad, 2, 0),
        event("PhaseStarted", 15, 7, int(Phase.MEDIATION), 60),
        event("MediationStarted", 15, 7, 60, False),
        event("Verdict", 20, 7, int(VerdictKind.WRONG_RESULT), good, 100),
        event("ProviderPaid", 20, 7, 0, 30),
        event("ProviderFined", 20, 7, 1, 500, 1),
        event("DealSettled", 20, 7, int(Outcome.MEDIATED), 30, 975 + 200, 500, 200),
    ]
    assert all(story.add(e) for e in events)
    assert not story.add(events[3])  # the same log twice is one event
    assert not story.add(event("ResultCommitted", 12, 8, 0))  # another deal's
    assert story.providers == (address(1), address(2)) and story.mediator == address(100)
    assert story.final_root() == (0, good)
    assert story.phase is Phase.MEDIATION and story.committed == {0, 1}
    cost = client.cost_of(story, deposit=1_505, tx_fees=7, params=params)
    assert cost is not None
    # The fee came from the fine (500): 400 left, half to the client; the client paid 30.
    assert (cost.paid, cost.mediation_fee, cost.fines_received) == (30, 0, 200)
    assert cost.refunded == 500 + 975  # at the deal, and at the settlement
    assert cost.total == 30 - 200 + 7
    shown = client.story_json(story)
    assert shown["verdict"] == {"kind": "wrong-result", "root": good.hex(), "fee": 100}
    assert shown["fined"] == {"1": {"collateral": 500, "reason": "wrong result"}}
    words = [client.describe_event(e, story) for e in events]
    assert words[1] == ("commit", f"replica 0 ({address(1)}) committed its result at height 12")
    assert words[8] == ("verify", f"verdict: wrong-result (root {good.hex()[:16]}..., fee 100)")
    assert words[11] == ("settle", "settled (mediated) at height 20")


def test_a_disputed_correct_result_costs_the_client_the_fee() -> None:
    root = b"\x05" * 32
    story = DealStory(3)
    for e in [
        event("DealFormed", 1, 3, b"\x09" * 32, (address(1),), address(100), 30, 505),
        event("ResultRevealed", 5, 3, 0, root, 2, 0),
        event("Verdict", 9, 3, int(VerdictKind.CORRECT_RESULT), root, 100),
        event("DealSettled", 9, 3, int(Outcome.MEDIATED), 20, 385, 0, 0),
    ]:
        story.add(e)
    cost = client.cost_of(story, deposit=505, tx_fees=0, params=ComputeParams())
    assert cost is not None and (cost.paid, cost.mediation_fee, cost.refunded) == (20, 100, 385)
    assert client.DealStory(4).final_root() is None


def test_job_records_are_sealed_under_the_keystore(tmp_path: Path) -> None:
    spec_bytes = SPEC.encode()
    record = JobRecord(5, SPEC.job_hash, spec_bytes, b"\x07" * 32, {0: "ab" * 32})
    path = record.save(tmp_path, CLIENT)
    assert b"\x07" * 32 not in path.read_bytes() and ("07" * 32) not in path.read_text()
    assert client.load_record(tmp_path, 5, SPEC.job_hash, CLIENT) == record
    assert client.load_record(tmp_path, 6, SPEC.job_hash, CLIENT) is None
    with pytest.raises(client.ComputeClientError, match="another keystore"):
        client.load_record(tmp_path, 5, SPEC.job_hash, keypair_for(index=91))
    path.write_text(
        path.read_text().replace(spec_bytes.hex(), jobspec.JobSpec(command=("x",)).encode().hex())
    )
    with pytest.raises(client.ComputeClientError, match="spec of another job"):
        client.load_record(tmp_path, 5, SPEC.job_hash, CLIENT)


def test_exit_statuses_of_results() -> None:
    def saved(reason: str, code: int | None) -> client.SavedOutputs:
        return client.SavedOutputs(0, address(1), b"", "", Path("."), reason, code, (), 0)

    assert saved("exited", 3).job_exit == 3
    assert saved("exited", 137).job_exit == 137
    assert saved("timeout", None).job_exit == client.EXIT_TIMEOUT == 124
    assert saved("memory", None).job_exit == client.EXIT_LIMIT == 125
    assert saved("output-limit", None).job_exit == client.EXIT_LIMIT
    assert saved("failed", None).job_exit == client.EXIT_NOT_RUN == 126


# -- local -----------------------------------------------------------------------------------------


def _sandbox_problem() -> str | None:
    try:
        from qoin.compute import executors  # noqa: PLC0415
    except ImportError as exc:
        return f"no executors: {exc}"
    return executors.executor_for(Executor.SANDBOX).problem()


@pytest.fixture
def sandbox() -> None:
    problem = _sandbox_problem()
    if problem is not None:
        pytest.skip(f"the sandbox executor cannot run here: {problem}")


@pytest.mark.usefixtures("sandbox")
def test_local_says_whether_a_job_is_deterministic(tmp_path: Path) -> None:
    data = tmp_path / "data.txt"
    data.write_text("hello\n")
    same = compute(
        "local", "--json", "--timeout", "20", "--memory", "256MiB", "--input",
        f"{data}:/inputs/d", "--", "sh", "-c", "echo out; sha256sum /inputs/d > /outputs/h",
    )  # fmt: skip
    assert same.exit_code == 0, same.output
    answer = json.loads(same.stdout)
    assert answer["deterministic"] is True and answer["differences"] == []
    assert len(set(answer["roots"])) == 1 and answer["runs"][0]["files"] == 1
    differ = compute(
        "local", "--json", "--timeout", "20", "--memory", "256MiB", "--",
        "sh", "-c", "echo same > /outputs/s; head -c 16 /dev/urandom > /outputs/r",
    )  # fmt: skip
    assert differ.exit_code == 1, differ.output
    answer = json.loads(differ.stdout)
    assert answer["deterministic"] is False and answer["differences"] == ["/outputs/r"]
    text = compute("local", "--memory", "256MiB", "--", "sh", "-c", "date +%N")
    assert text.exit_code == 1 and "NOT deterministic: the runs differ in stdout" in text.stderr


# -- against a node with an empty book --------------------------------------------------------------


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Network, Node]]:
    """One mining node for the tests below (none of them changes what another reads)."""
    workdir = tmp_path_factory.mktemp("chain")
    with pytest.MonkeyPatch.context() as patch, storage_network(workdir, patch) as made:
        yield made


@pytest.mark.slow
def test_commands_against_an_empty_market(chain: tuple[Network, Node], tmp_path: Path) -> None:
    """No provider: ``run`` exits 120 saying so (and spends nothing), ``asks`` lists nothing,
    ``status`` of a deal nobody formed exits 1."""
    _, node = chain
    key, password = write_keystore(tmp_path / "client", CLIENT)
    rpc = ["--rpc", node.user.url]
    keyed = ["--key", str(key), "--password-file", str(password), *rpc]
    empty = compute("run", *keyed, "--json", "--quiet", "--", "true")
    assert empty.exit_code == client.EXIT_NO_MATCH, empty.output
    assert "no provider has an ask in the book" in empty.stderr
    assert json.loads(empty.stdout)["refused"] == []
    book = compute("asks", "--json", *rpc)
    assert book.exit_code == 0 and json.loads(book.stdout)["asks"] == []
    missing = compute("status", "99", *rpc)
    refused(missing, 1, "no bid or deal 99")
    too_long = compute("run", *keyed, "--timeout", "2d", "--", "true")
    refused(too_long, 2, "--timeout is at most")


# -- the devnet's daemons --------------------------------------------------------------------------


@pytest.mark.slow
def test_devnet_starts_mediators_then_providers(
    chain: tuple[Network, Node],
    tmp_path: Path,
    ai_runtime: RuntimeInfo,  # noqa: F811 (the fixture)
) -> None:
    """What ``qoin devnet --compute-providers 1 --mediators 1`` runs (:mod:`qoin.node.devnet_compute`),
    on the tests' fast chain: the mediator registered first, the provider's ask accepting it, both
    described for ``devnet.json`` with their endpoints and the AI runtime both offer, both stopping
    cleanly."""
    _, node = chain
    root = tmp_path / "devnet"
    daemons = ComputeProviders(root, providers=1, mediators=1, ai_runtime_dir=ai_runtime.path)
    daemons.prepare([node.user.url])
    devnet_storage.fund(node.user.url, FUNDED, daemons.funding(), threading.Event())
    try:
        daemons.start(threading.Event())
        described = json.loads(json.dumps(daemons.description()))
        (mediator,) = described["mediators"]
        (provider,) = described["compute_providers"]
        assert (mediator["name"], mediator["mediator"]) == ("mediator0", True)
        assert (provider["name"], provider["mediator"]) == ("compute0", False)
        with ComputeMarketView(node.user.url) as view:
            record = view.get_mediator(Address.from_text(mediator["address"]))
            ask = view.get_ask(Address.from_text(provider["address"]))
        assert record is not None and record.active and record.endpoint == mediator["endpoint"]
        assert ask is not None and ask.active and ask.endpoint == provider["endpoint"]
        assert ask.mediators == (record.mediator,)
        for entry in (mediator, provider):
            assert entry["url"] == f"http://{entry['endpoint']}/compute/v1"
            assert Path(entry["log"]).is_file() and entry["pid"] > 0
            assert ai_runtime.ref in entry["runtimes"]
        assert described["ai_runtime"]["ref"] == ai_runtime.ref
    finally:
        codes = stop_all(daemons.children())
    assert codes == [0, 0]
