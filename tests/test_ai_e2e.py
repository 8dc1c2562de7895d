"""AI jobs end to end, with real processes only: one mining node (a block every ~100 ms), two
storage providers, four compute providers offering the real AI runtime (PyTorch and the job
program, from the ``ai_runtime`` fixture: two honest, one lazy on purpose with the test-only
``--misbehave fewer-epochs``, one that swaps the trained weights for random ones with
``--misbehave random-weights``) and a mediator with the runtime too; the client is the real ``qoin
ai`` command run as a subprocess with a keystore and a password file, as a user runs it.

One network serves the whole module: every job names its providers (``--provider``). What each
test shows:

1. ``sklearn:digits`` prepared and stored encrypted, an ``mlp`` trained with ``--verify
   replicated`` (both providers' roots equal: the training is bit-identical on the two) to a test
   accuracy of at least 0.9, the live loss shown per epoch, the model stored and in the catalog;
   held-out samples classified mostly right; the stored model fine-tuned (the epochs add up).
2. A ``charlm`` on a small text: the loss falls, generation runs.
3. A replicated training with a lazy provider (it trains one epoch and says it did them all): the
   roots differ, the mediator re-runs the job, the lazy one is fined and the honest one paid; the
   client gets the honest model.
4. The same with a provider that returns random weights (a valid model file of the right shapes,
   not the trained one): caught by the mediator the same way.
5. A dataset CID the user never stored fails before any money moves (exit 2, no bid placed).
6. ``qoin ai runtime show`` and ``install`` (already current: only checked) give the ref the
   providers list in their ``/info``.

Fast checks without a market: :mod:`tests.test_ai_client`.
"""

from __future__ import annotations

import csv
import functools
import json
import struct
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from qoin.ai import datasets
from qoin.ai.job import tensorfile
from qoin.ai.runtime import RuntimeInfo
from tests.aiutil import ai_runtime  # noqa: F401 (the fixture)
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
from tests.storageutil import CLIENT, fund, start_provider, write_keystore

PARAMS = replace(COMPUTE, staging_blocks=40, reveal_blocks=20, dispute_blocks=20)
"""Run budgets of the timeout plus ~4 s, reveal phases and dispute windows of ~2 s."""
HONEST = [keypair_for(index=140 + i) for i in range(2)]
LAZY = keypair_for(index=142)
MEDIATOR = keypair_for(index=143)
STORAGE = [keypair_for(index=144 + i) for i in range(2)]
RANDOM = keypair_for(index=146)
RUN_S = 240.0
"""The longest a ``qoin ai`` command may take."""
JOB = ("--memory", "1GiB", "--timeout", "120", "--cpus", "1")
"""Every job's resources (the providers offer 2 GiB each)."""
TEXT = (
    "the quick brown fox jumps over the lazy dog. "
    "a lazy dog sleeps in the sun while the quick fox runs. "
    "the sun is warm and the fox is quick. "
) * 40

pytestmark = pytest.mark.slow


@dataclass
class Market:
    """The module's network and the client's commands."""

    net: Network
    node: Node
    honest: list[ComputeProvider]
    lazy: ComputeProvider
    random: ComputeProvider
    """Returns random weights (``--misbehave random-weights``)."""
    mediator: ComputeProvider
    key: Path
    password: Path
    digits: dict[str, Any] | None = None
    """``qoin ai prepare sklearn:digits``'s answer, once a test made it."""

    @property
    def rpc(self) -> str:
        return self.node.user.url

    def run(self, *args: str) -> tuple[int, Any, str]:
        """``qoin ai ARGS --json`` with the client's keystore: exit status, answer, stderr."""
        done = run_qoin(
            "ai", *args, "--json", "--key", str(self.key), "--password-file", str(self.password),
            "--rpc", self.rpc, timeout=RUN_S,
        )  # fmt: skip
        try:
            answer = json.loads(done.stdout) if done.stdout.strip() else None
        except ValueError:
            pytest.fail(f"qoin ai {args[0]} answered no JSON ({done.returncode}):\n{done.stderr}")
        return done.returncode, answer, done.stderr

    def ok(self, *args: str) -> tuple[dict[str, Any], str]:
        """``qoin ai ARGS --json``: it must exit 0; (answer, stderr)."""
        code, answer, stderr = self.run(*args)
        assert code == 0, f"qoin ai {' '.join(args)} exited {code}:\n{stderr}"
        assert isinstance(answer, dict)
        return answer, stderr

    def providers(self, *chosen: ComputeProvider) -> list[str]:
        return [arg for p in chosen for arg in ("--provider", str(p.address))]

    def prepared_digits(self) -> dict[str, Any]:
        if self.digits is None:
            self.digits, _ = self.ok("prepare", "sklearn:digits", "--quiet")
        return self.digits


@pytest.fixture(scope="module")
def market(
    tmp_path_factory: pytest.TempPathFactory,
    ai_runtime: RuntimeInfo,  # noqa: F811 (the fixture)
) -> Iterator[Market]:
    workdir = tmp_path_factory.mktemp("ai-e2e")
    with (
        pytest.MonkeyPatch.context() as patch,
        compute_network(workdir, patch, PARAMS) as (net, node),
    ):
        fund(node, *HONEST, LAZY, RANDOM, MEDIATOR, *STORAGE, CLIENT)
        url = node.user.url
        start = functools.partial(
            start_compute_provider, memory="2GiB", extra=("--runtime", str(ai_runtime.path))
        )
        with ThreadPoolExecutor(max_workers=5) as pool:
            stored = [
                pool.submit(start_provider, net, node, f"storage-{i}", keypair, capacity="32MiB")
                for i, keypair in enumerate(STORAGE)
            ]
            # The mediator first: the providers accept the mediators registered when they start.
            mediator = start(net, url, MEDIATOR, name="mediator", mediator=True)
            started = [
                pool.submit(start, net, url, keypair, name=f"honest-{i}")
                for i, keypair in enumerate(HONEST)
            ]
            started.append(
                pool.submit(start, net, url, LAZY, name="lazy", misbehave="fewer-epochs")
            )
            started.append(
                pool.submit(start, net, url, RANDOM, name="random", misbehave="random-weights")
            )
            *honest, lazy, random = [future.result() for future in started]
            for future in stored:
                future.result()
        key, password = write_keystore(workdir / "client", CLIENT)
        yield Market(net, node, honest, lazy, random, mediator, key, password)


def topic(provider: ComputeProvider) -> str:
    return provider.address.raw.hex()


def paid(market: Market, deal: int) -> set[str]:
    return {who for who, _ in events(market.node, "ProviderPaid", deal)}


def fined(market: Market, deal: int) -> dict[str, int]:
    return {who: data[3] for who, data in events(market.node, "ProviderFined", deal)}


def held_out_csv(tmp_path: Path, rows: int) -> tuple[Path, list[str]]:
    """The last ``rows`` held-out samples of the digits dataset (prepared here the same way:
    the same seed gives the same file) as a CSV, and their labels."""
    info = datasets.prepare("sklearn:digits", tmp_path / "digits.qtf")
    found = tensorfile.read(info.path, 1 << 24)
    arrays = {a.name: a for a in found.arrays}
    x, y = arrays["x"], arrays["y"]
    features = len(x.data) // 4 // x.shape[0]
    values = struct.unpack(f"<{x.shape[0] * features}f", x.data)
    labels = struct.unpack(f"<{y.shape[0]}q", y.data)
    classes = found.meta["classes"]
    path = tmp_path / "held-out.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        for row in range(x.shape[0] - rows, x.shape[0]):
            writer.writerow([repr(v) for v in values[row * features : (row + 1) * features]])
    return path, [classes[labels[row]] for row in range(x.shape[0] - rows, x.shape[0])]


def test_digits_trained_replicated_then_run_and_fine_tuned(market: Market, tmp_path: Path) -> None:
    prepared = market.prepared_digits()
    assert prepared["samples"] == 1797 and prepared["task"] == "classification"
    assert prepared["classes"] == [str(i) for i in range(10)] and prepared["shape"] == [1, 8, 8]
    data = prepared["cid"]
    listed = run_qoin("ai", "datasets", "--json")
    assert data in [d["cid"] for d in json.loads(listed.stdout)], listed.stderr
    a, b = market.honest
    trained, stderr = market.ok(
        "train", "--model", "mlp", "--data", data, "--epochs", "4", "--lr", "0.01",
        "--verify", "replicated", *market.providers(a, b), *JOB, "--out", str(tmp_path / "m"),
    )  # fmt: skip
    # The live loss, per epoch, as the job printed it.
    for epoch in range(1, 5):
        assert f"epoch {epoch}/4  loss " in stderr, stderr
    verification = trained["verification"]
    assert verification["mode"] == "replicated" and verification["outcome"] == "completed"
    roots = verification["roots"]
    assert len(roots) == 2 and roots["0"] == roots["1"], roots  # bit-identical on both
    assert trained["accuracy"] >= 0.9, trained
    assert trained["epochs"] == 4 and len(trained["history"]) == 4
    assert trained["cost"]["paid"] > 0 and trained["cost"]["storage"] > 0
    assert (tmp_path / "m" / "outputs" / "model.qm").is_file()
    assert paid(market, trained["deal"]) == {topic(a), topic(b)}
    model = trained["model"]
    models = json.loads(run_qoin("ai", "models", "--json").stdout)
    (entry,) = [m for m in models if m["cid"] == model]
    assert entry["arch"] == "mlp" and entry["epochs"] == 4 and entry["dataset"] == data
    # Held-out samples, classified by the stored model on the other provider.
    source, labels = held_out_csv(tmp_path, 30)
    inferred, _ = market.ok(
        "infer", "--model", model, "--input", str(source), *market.providers(b), *JOB,
        "--out", str(tmp_path / "i"),
    )  # fmt: skip
    assert inferred["event"] == "predictions" and len(inferred["labels"]) == 30
    right = sum(p == t for p, t in zip(inferred["labels"], labels, strict=True))
    assert right >= 24, (inferred["labels"], labels)
    # Fine-tuned from the stored model: the same arch, the epochs add up.
    tuned, stderr = market.ok(
        "finetune", "--base", model, "--data", data, "--epochs", "2", *market.providers(a),
        *JOB, "--out", str(tmp_path / "f"),
    )  # fmt: skip
    assert tuned["arch"] == "mlp" and tuned["epochs"] == 6, tuned
    assert "epoch 2/2" in stderr and tuned["accuracy"] >= 0.9
    models = json.loads(run_qoin("ai", "models", "--json").stdout)
    (entry,) = [m for m in models if m["cid"] == tuned["model"]]
    assert entry["base"] == model and entry["epochs"] == 6


def test_a_char_model_learns_a_text_and_generates(market: Market, tmp_path: Path) -> None:
    text = tmp_path / "fox.txt"
    text.write_text(TEXT)
    prepared, _ = market.ok("prepare", str(text), "--name", "fox", "--quiet")
    assert prepared["task"] == "text" and prepared["name"] == "fox"
    a, b = market.honest
    trained, _ = market.ok(
        "train", "--model", "charlm", "--data", prepared["cid"], "--epochs", "3",
        "--lr", "0.01", *market.providers(b), *JOB, "--out", str(tmp_path / "m"),
    )  # fmt: skip
    history = trained["history"]
    assert len(history) == 3 and history[-1]["loss"] < history[0]["loss"], history
    assert trained["accuracy"] is None
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("the quick ")
    generated, _ = market.ok(
        "infer", "--model", trained["model"], "--input", str(prompt), "--tokens", "40",
        *market.providers(a), *JOB, "--out", str(tmp_path / "g"),
    )  # fmt: skip
    assert generated["event"] == "generated" and len(generated["text"]) >= 40, generated


def test_a_lazy_trainer_is_caught_by_the_mediator(market: Market, tmp_path: Path) -> None:
    data = market.prepared_digits()["cid"]
    honest = market.honest[0]
    trained, _ = market.ok(
        "train", "--model", "mlp", "--data", data, "--epochs", "3", "--verify", "replicated",
        *market.providers(honest, market.lazy), *JOB, "--out", str(tmp_path / "m"),
    )  # fmt: skip
    deal = trained["deal"]
    verification = trained["verification"]
    assert verification["outcome"] == "mediated" and verification["verdict"] == "wrong-result"
    roots = verification["roots"]
    assert len(set(roots.values())) == 2, roots  # the lazy root differs
    assert fined(market, deal) == {topic(market.lazy): 1}  # a wrong result
    assert paid(market, deal) == {topic(honest)}
    assert trained["epochs"] == 3 and len(trained["history"]) == 3  # the honest model
    assert trained["accuracy"] >= 0.85


def test_random_weights_are_caught_by_the_mediator(market: Market, tmp_path: Path) -> None:
    """A provider that runs the training, then puts random values in the model file (a valid
    model of the same shapes) and commits that: the roots differ, the mediator's re-run agrees
    with the honest one, the cheater is fined, the client gets the trained model."""
    data = market.prepared_digits()["cid"]
    honest = market.honest[1]
    trained, _ = market.ok(
        "train", "--model", "mlp", "--data", data, "--epochs", "3", "--verify", "replicated",
        *market.providers(honest, market.random), *JOB, "--out", str(tmp_path / "m"),
    )  # fmt: skip
    deal = trained["deal"]
    verification = trained["verification"]
    assert verification["outcome"] == "mediated" and verification["verdict"] == "wrong-result"
    assert len(set(verification["roots"].values())) == 2, verification["roots"]
    assert fined(market, deal) == {topic(market.random): 1}  # a wrong result
    assert paid(market, deal) == {topic(honest)}
    assert trained["epochs"] == 3 and trained["accuracy"] >= 0.85  # the honest model
    model = tensorfile.read(tmp_path / "m" / "outputs" / "model.qm", 1 << 24)
    assert model.meta["trained"]["epochs"] == 3 and model.arrays


def test_a_dataset_never_stored_fails_before_any_money_moves(market: Market) -> None:
    bids = len(events(market.node, "BidPlaced"))
    code, _, stderr = market.run(
        "train", "--model", "mlp", "--data", "ee" * 32, *market.providers(*market.honest), *JOB
    )
    assert code == 2, stderr
    assert "is not a dataset in the catalog" in stderr and "cannot be fetched" in stderr
    assert len(events(market.node, "BidPlaced")) == bids


def test_the_runtime_commands_give_the_ref_the_providers_offer(
    market: Market,
    ai_runtime: RuntimeInfo,  # noqa: F811 (the fixture)
) -> None:
    shown = run_qoin("ai", "runtime", "show", "--dir", str(ai_runtime.path), "--json")
    assert shown.returncode == 0, shown.stderr
    answer = json.loads(shown.stdout)
    assert answer["ref"] == ai_runtime.ref and answer["torch"].startswith("2.13.0")
    offered = market.honest[0].info()["runtimes"]
    assert [r["ref"] for r in offered] == [ai_runtime.ref]
    again = run_qoin("ai", "runtime", "install", "--dir", str(ai_runtime.path), "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["ref"] == ai_runtime.ref and "up to date" in again.stderr
    missing = run_qoin("ai", "runtime", "show", "--dir", str(market.net.workdir / "none"))
    assert missing.returncode == 1 and "qoin ai runtime install" in missing.stderr
