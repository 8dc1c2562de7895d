"""A contract requests an AI inference, end to end with real processes (docs/ai.md, "Contracts
that request inference"; docs/spec/compute.md §3.12): one mining node (a block every ~100 ms), two
storage providers, one compute provider offering the real AI runtime (the ``ai_runtime``
fixture), the example contract ``examples/contracts/ai_oracle`` deployed with ``qoin contract
deploy``, and the user running ``qoin ai infer --contract`` as a subprocess.

A small ``mlp`` is trained directly with the runtime's Python (no market: fast) and stored with
``qoin storage put``; one held-out digit goes in as a CSV. The contract bids with the user's
deposit (the user its agent), the provider runs ``infer --answer label``, reveals the root with
the stdout, the deal settles, the market calls ``on_compute_result`` back, and ``answer(deal)``
returns the predicted label: the very bytes the program prints for that input run directly. An
address that holds no contract is refused before any money moves; the job ``--contract`` builds
prints only the answer and leaves few enough files for a reveal that carries it (a fast check).

The plain-job path (``sh -c 'echo 42'``, no runtime) and the offer refused for too many output
files are in :mod:`tests.test_compute_contracts`.
"""

from __future__ import annotations

import csv
import json
import struct
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from qoin.ai import datasets, jobs
from qoin.ai.client import Resources
from qoin.ai.job import tensorfile
from qoin.ai.runtime import RuntimeInfo
from qoin.compute.provider.jobs import answer_manifest_problem
from qoin.crypto.address import Address
from qoin.execution.abi import decode_value
from qoin.wallet import Wallet
from tests import aiutil
from tests.aiutil import run_program
from tests.cliutil import run_qoin
from tests.computeutil import (
    COMPUTE,
    ComputeProvider,
    compute_network,
    events,
    start_compute_provider,
)
from tests.framework import Network, Node
from tests.keys import keypair_for
from tests.storageutil import CLIENT, StorageCli, fund, spawn_provider, storage_cli

ORACLE = Path(__file__).resolve().parents[1] / "examples" / "contracts" / "ai_oracle.wasm"
PARAMS = replace(COMPUTE, staging_blocks=40, reveal_blocks=20, dispute_blocks=20)
PROVIDER = keypair_for(index=150)
STORAGE = [keypair_for(index=151 + i) for i in range(2)]
TRAIN = ["--arch", "mlp", "--epochs", "2", "--lr", "0.01", "--batch", "64", "--seed", "1"]
RUN_S = 240.0

ai_runtime = aiutil.ai_runtime


@dataclass(frozen=True)
class World:
    net: Network
    node: Node
    provider: ComputeProvider
    cli: StorageCli
    oracle: Address
    model: Path
    """The model file, trained directly."""

    @property
    def rpc(self) -> str:
        return self.node.user.url


def train_directly(info: RuntimeInfo, work: Path) -> Path:
    """An mlp trained on sklearn:digits with the runtime's Python; the model file."""
    datasets.prepare("sklearn:digits", work / "digits.qd")
    args = ["train", *TRAIN, "--data", "digits.qd", "--threads", "1", "--out", "m"]
    run = run_program(info, args, work)
    assert run.code == 0, run.stdout + run.stderr
    return work / "m" / "model.qm"


def deploy(cli: StorageCli, wasm: Path) -> Address:
    """``qoin contract deploy`` from the user's keystore; the contract's address."""
    done = run_qoin("contract", "deploy", str(wasm), *cli.keyed(), "--rpc", cli.rpc, timeout=120)
    assert done.returncode == 0, done.stderr
    fields = dict(line.split(": ", 1) for line in done.stdout.splitlines() if ": " in line)
    assert fields.get("status") == "success", done.stdout
    return Address.from_text(fields["contract"])


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory,
    ai_runtime: RuntimeInfo,
) -> Iterator[World]:
    workdir = tmp_path_factory.mktemp("ai-oracle")
    (workdir / "train").mkdir()
    with (
        pytest.MonkeyPatch.context() as patch,
        compute_network(workdir, patch, PARAMS) as (net, node),
        ThreadPoolExecutor(max_workers=1) as pool,
    ):
        trained = pool.submit(train_directly, ai_runtime, workdir / "train")
        fund(node, PROVIDER, *STORAGE, CLIENT)
        storing = [
            spawn_provider(net, node, f"storage-{i}", keypair, capacity="32MiB")
            for i, keypair in enumerate(STORAGE)
        ]
        provider = start_compute_provider(
            net, node.user.url, PROVIDER, name="provider", memory="2GiB",
            extra=("--runtime", str(ai_runtime.path)),
        )  # fmt: skip
        for starting in storing:
            starting.ready()
        cli = storage_cli(net, node)
        yield World(net, node, provider, cli, deploy(cli, ORACLE), trained.result())


def held_out_csv(work: Path) -> Path:
    """The last sample of the digits dataset (held out from training) as a one-row CSV."""
    found = tensorfile.read(work / "train" / "digits.qd", 1 << 24)
    x = found.get("x")
    assert x is not None
    features = len(x.data) // 4 // x.shape[0]
    row = struct.unpack(f"<{features}f", x.data[-features * 4 :])
    path = work / "digit.csv"
    with path.open("w", newline="") as handle:
        csv.writer(handle).writerow([repr(v) for v in row])
    return path


def test_a_contracts_inference_fits_a_reveal_with_an_answer() -> None:
    """The job ``infer --contract`` runs prints the answer only and may leave few enough files
    for a reveal that carries it (a provider refuses an offer it could not reveal)."""
    planned = jobs.Planned("qoin-ai@" + "0" * 32, "")
    job = jobs.infer_job("aa" * 32, "bb" * 32, None, 0, Resources(), planned, answer=True)
    assert "--answer label" in " ".join(job.command)
    assert answer_manifest_problem(job.spec()) is None
    plain = jobs.infer_job("aa" * 32, "bb" * 32, None, 0, Resources(), planned)
    assert "--answer" not in plain.command and answer_manifest_problem(plain.spec()) is not None


@pytest.mark.slow
def test_a_contract_gets_the_inferred_label(
    world: World,
    ai_runtime: RuntimeInfo,
    tmp_path: Path,
) -> None:
    stored = world.cli.put(world.model, "--duration", "60")
    source = held_out_csv(world.net.workdir)
    # What the program answers for this input, run directly.
    meta = tensorfile.read(world.model, 1 << 24).meta
    (tmp_path / "digit.qi").write_bytes(datasets.prepare_input(str(source), meta))
    args = ["infer", "--model", str(world.model), "--input", "digit.qi", "--threads", "1"]
    direct = run_program(ai_runtime, [*args, "--answer", "label", "--out", "d"], tmp_path)
    assert direct.code == 0, direct.stdout + direct.stderr
    assert direct.stdout in {f"{i}\n" for i in range(10)}

    done = run_qoin(
        "ai", "infer", "--model", stored["cid"], "--input", str(source),
        "--contract", str(world.oracle), "--provider", str(world.provider.address),
        "--memory", "1GiB", "--timeout", "120", "--out", str(tmp_path / "out"),
        *world.cli.keyed(), "--rpc", world.rpc, "--json", timeout=RUN_S,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr + done.stdout
    answer = json.loads(done.stdout)
    deal = answer["deal"]
    assert answer["contract"] == str(world.oracle)
    assert answer["answer"] == direct.stdout, answer
    assert answer["labels"] == [direct.stdout.strip()]  # predictions.json: the whole object
    assert answer["callback"]["method"] == "on_compute_result"
    assert answer["callback"]["status"] == "success", answer["callback"]
    assert (tmp_path / "out" / "stdout").read_text() == direct.stdout

    # The contract bid (the user its agent), and what it keeps is the verified result.
    ((bidder, placed),) = events(world.node, "ContractBidPlaced", deal)
    assert bidder == world.oracle.raw.hex() and placed[1] == CLIENT.address
    with Wallet(world.rpc, CLIENT) as wallet:
        kept = decode_value(wallet.query(world.oracle, "answer", [deal]))
        root = decode_value(wallet.query(world.oracle, "root", [deal]))
    assert kept == direct.stdout.encode()
    revealed = events(world.node, "ResultRevealed", deal)
    assert revealed and revealed[0][1][2] == root


@pytest.mark.slow
def test_an_account_that_is_no_contract_is_refused_first(world: World) -> None:
    bids = len(events(world.node, "BidPlaced"))
    done = run_qoin(
        "ai", "infer", "--model", "ee" * 32, "--input", "unused.csv",
        "--contract", str(world.provider.address), *world.cli.keyed(), "--rpc", world.rpc,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "holds no contract" in done.stderr and "ai_oracle.wasm" in done.stderr
    assert len(events(world.node, "BidPlaced")) == bids
