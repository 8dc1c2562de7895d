"""The compute provider daemon against a real mining node, through its HTTP API: what it posts
(its ask, a mediator's record), the offers it refuses and why, an acceptance the actor takes, its
authenticated per-job endpoints, a job whose staging fails (no commitment, the reason shown), a
restart that keeps serving, and one job run end to end (logs over the WebSocket, commit, reveal,
paid, outputs served by the provider while one storage provider cannot store them, then stored
and fetched from the storage market; the log and the outputs on the wire are ciphertext under
keys derived from the job key, a changed frame is refused, a follower resumes with ``from``).

One network for the module (:func:`tests.computeutil.compute_network`). The full client flow
(``qoin compute run``) and the replicated, cheating and mediated cases are the client's
end-to-end tests, on the helpers of :mod:`tests.computeutil`.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import shutil
import struct
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from qoin.ai import runtime as runtimes
from qoin.ai.job import tensorfile
from qoin.ai.runtime import RuntimeInfo
from qoin.cli.compute_provider import parse_executors, parse_mediators, parse_multiple
from qoin.compute import client, keys, market, transit
from qoin.compute.executors import StopReason, executor_for
from qoin.compute.jobspec import Executor, Input, JobSpec, Verification, wrap_input_key
from qoin.compute.market import EVENT_NAMES, ComputeMarketView, VerdictKind
from qoin.compute.provider import jobs
from qoin.compute.provider.daemon import (
    _HANDLERS,
    Machine,
    capacity_problem,
    detect,
    due_for_removal,
    log_filter,
)
from qoin.compute.provider.jobs import (
    Job,
    JobContext,
    JobError,
    JobLog,
    JobState,
    JobStatus,
    OfferRefused,
    Offers,
    PendingOffer,
    keep_job,
    read_status,
    same_job_key,
    write_status,
)
from qoin.compute.provider.mediator import (
    Decision,
    OwnRun,
    Revealed,
    bounded_json,
    decide,
    needs_second_run,
)
from qoin.compute.provider.server import Capacity
from qoin.crypto import hybrid
from qoin.crypto.hashing import sha3_256
from qoin.crypto.hybrid import HybridKeyPair
from qoin.rpc.serve import BackgroundServer
from qoin.storage import crypt
from qoin.storage.provider.daemon import kem_key, kem_private_key
from qoin.wallet import Wallet
from tests.aiutil import ai_runtime  # noqa: F401 (a fixture)
from tests.computeutil import (
    COMPUTE,
    FEE,
    MEMORY,
    ComputeProvider,
    authed,
    compute_network,
    events,
    form_deal,
    job_spec,
    kem_key_of,
    offer,
    place_bid,
    provider_argv,
    restart,
    run_deal,
    start_compute_provider,
    wait_state,
)
from tests.framework import Network, Node, genesis, wait_until
from tests.keys import keypair_for
from tests.storageutil import fund, start_provider

PROVIDER, MEDIATOR, CLIENT, STRANGER = (keypair_for(index=60 + i) for i in range(4))
AI_PROVIDER = keypair_for(index=70)
STORERS = (keypair_for(index=64), keypair_for(index=65))
EXECUTORS = "sandbox,wasm"
NOWHERE = "127.0.0.1:9"
"""An endpoint nothing answers at."""


@dataclass(frozen=True)
class World:
    net: Network
    node: Node
    provider: ComputeProvider
    mediator: ComputeProvider

    @property
    def url(self) -> str:
        return self.node.user.url


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """A node, a mediator (also a provider) and a provider that accepts it."""
    workdir = tmp_path_factory.mktemp("compute-provider")
    with pytest.MonkeyPatch.context() as patch, compute_network(workdir, patch) as (net, node):
        fund(node, PROVIDER, MEDIATOR, CLIENT, STRANGER, *STORERS)
        url = node.user.url
        mediator = start_compute_provider(
            net, url, MEDIATOR, name="mediator", mediator=True, executors=EXECUTORS
        )
        provider = start_compute_provider(net, url, PROVIDER, name="provider", executors=EXECUTORS)
        yield World(net, node, provider, mediator)


def executor_of(provider: ComputeProvider) -> Executor:
    """An executor the provider offers (sandbox first)."""
    offered = provider.ready["executors"]
    for kind in (Executor.SANDBOX, Executor.WASM):
        if offered[kind.name.lower()] is None:
            return kind
    pytest.fail(f"the provider offers no executor: {offered}")


def sealed_for(world: World, provider: ComputeProvider, job_key: bytes, job: bytes) -> bytes:
    return keys.seal_job_key(kem_key_of(world.node, provider.address), job_key, job)


def test_option_parsers() -> None:
    assert parse_multiple("1") == 1_000_000 and parse_multiple("2.5") == 2_500_000
    assert parse_multiple("0.000001") == 1
    for bad in ("", "-1", "1.1234567", "one"):
        with pytest.raises(ValueError):
            parse_multiple(bad)
    assert parse_executors("wasm, sandbox,wasm") == (Executor.WASM, Executor.SANDBOX)
    with pytest.raises(ValueError, match="unknown executor"):
        parse_executors("sandbox,vm")
    address = keypair_for(index=60).address
    assert parse_mediators(f"{address},{keypair_for(index=61).address.raw.hex()}") == (
        address,
        keypair_for(index=61).address,
    )
    with pytest.raises(ValueError):
        parse_mediators(f"{address},{address}")


def test_saved_log_replays_by_offset(tmp_path: Path) -> None:
    log = JobLog(tmp_path, limit=100)
    log.reset()
    log.write("stdout", b"hello ")
    log.write("stderr", b"oops\n")
    log.write("stdout", b"world\n" * 20)  # cut at the limit
    assert log.size == 100
    pieces = log.read(0)
    assert [(p.stream, p.offset) for p in pieces] == [("stdout", 0), ("stderr", 6), ("stdout", 11)]
    assert b"".join(p.data for p in pieces) == (b"hello oops\n" + b"world\n" * 20)[:100]
    assert [(p.stream, p.offset, p.data) for p in log.read(8)][:1] == [("stderr", 8, b"ps\n")]
    assert (tmp_path / "stdout").read_bytes() == (b"hello " + b"world\n" * 20)[:100]
    again = JobLog(tmp_path, limit=100)  # a restarted daemon reads it back
    assert again.size == 100 and again.read(0) == pieces


def test_saved_log_bounds_its_stream_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jobs, "MAX_STREAM_CHANGES", 4)
    log = JobLog(tmp_path, limit=1000)
    log.reset()
    for _ in range(5):
        log.write("stdout", b"o")
        log.write("stderr", b"e")
    log.close()
    assert [p.data for p in log.read(0)] == [b"o", b"e", b"o", b"eeee"]  # stdout left out
    assert (tmp_path / "stdout").read_bytes() == b"ooooo"  # the result keeps all of stdout


@pytest.mark.slow
def test_posts_its_ask_and_mediator_record(world: World) -> None:
    info = world.provider.info()
    assert info["address"] == str(PROVIDER.address)
    assert (info["cpus"], info["memory"], info["mediator"]) == (1, MEMORY, False)
    assert info["executors"]["docker"] == "not offered by this provider (--executors)"
    assert world.mediator.info()["mediator"] is True
    with ComputeMarketView(world.url) as view:
        ask = view.get_ask(PROVIDER.address)
        record = view.get_mediator(MEDIATOR.address)
        mediator_ask = view.get_ask(MEDIATOR.address)
    assert ask is not None and ask.active
    assert (ask.cpus, ask.memory, ask.gpus, ask.price_cpu) == (1, MEMORY, 0, 1_000)
    offered = [k for k in Executor if info["executors"][k.name.lower()] is None]
    assert ask.executors == sum(k.bit for k in offered) and offered
    assert ask.endpoint == world.provider.endpoint
    assert ask.kem_key == kem_key(world.provider.datadir)
    assert ask.mediators == (MEDIATOR.address,)  # every active mediator but itself
    assert ask.free_collateral >= market.collateral_for(
        market.max_payment(1, 0, COMPUTE.max_timeout, 1_000, 0), COMPUTE.min_collateral_ppm
    )
    assert record is not None and record.active and record.fee == FEE
    assert record.stake == COMPUTE.min_mediator_stake
    assert mediator_ask is not None and MEDIATOR.address not in mediator_ask.mediators


@pytest.mark.slow
def test_refuses_more_than_the_machine_has(world: World) -> None:
    machine = Machine(cpus=2, memory=1 << 30, gpus=1, gpu_model="H100")
    assert capacity_problem(Capacity(2, 1 << 30, 1, "H100"), machine) is None
    for capacity, reason in (
        (Capacity(3, 1 << 20), "--cpus 3: this machine has 2"),
        (Capacity(1, (1 << 30) + 1), "bytes of memory"),
        (Capacity(1, 1 << 20, 2), "--gpus 2: this machine has 1"),
        (Capacity(1, 1 << 20, 1, "A100"), "this machine's GPU is 'H100'"),
        (Capacity(1, 1 << 20, 0, "H100"), "--gpu-model needs --gpus"),
    ):
        problem = capacity_problem(capacity, machine)
        assert problem is not None and reason in problem
    provider = world.provider
    args = [
        "--datadir", str(provider.home / "other"), "--key", str(provider.key),
        "--password-file", str(provider.password_file), "--rpc", world.url, "--price", "1",
        "--cpus", str(detect().cpus + 1), "--memory", "1MiB",
    ]  # fmt: skip
    done = subprocess.run(
        provider_argv(*args), capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2, done.stderr
    assert "CPU(s) to offer" in done.stderr and not (provider.home / "other" / "jobs").exists()


@pytest.mark.slow
def test_offers_are_refused_with_their_reasons(world: World) -> None:
    node, provider = world.node, world.provider
    kind = executor_of(provider)
    spec = job_spec(executor=kind, command=("true",))
    job_key = os.urandom(32)
    sealed = sealed_for(world, provider, job_key, spec.job_hash)
    bid = place_bid(node, CLIENT, spec)
    other = job_spec(executor=kind, command=("false",))
    big = job_spec(executor=kind, command=("true",), cpus=2)
    big_bid = place_bid(node, CLIENT, big)
    stranger_kem = keys.seal_job_key(kem_key(provider.home / "stranger"), job_key, spec.job_hash)
    cid = sha3_256(b"an input")
    wrong_input = job_spec(
        executor=kind,
        command=("true",),
        inputs=[Input(cid, "/inputs/x", wrap_input_key(os.urandom(32), cid, "/inputs/x", b"k"))],
    )
    wrong_input_bid = place_bid(node, CLIENT, wrong_input)
    spot = job_spec(executor=kind, command=("true",), verification=Verification.SPOT)
    nobody = keypair_for(index=69).address
    spot_bid = place_bid(node, CLIENT, spot, mediators=[nobody], max_fee=FEE)
    refusals = [
        (offer(provider, bid + 1000, spec, sealed), 409, "is not open"),
        (offer(provider, bid, other, sealed), 422, f"is not bid {bid}'s job"),
        (offer(provider, bid, spec, sealed, replica=1), 422, "no replica 1"),
        (
            offer(provider, big_bid, big, sealed_for(world, provider, job_key, big.job_hash)),
            409,
            "too big",
        ),
        (offer(provider, bid, spec, stranger_kem), 422, "does not open"),
        (offer(provider, bid, spec, b"\x01" * keys.SEALED_JOB_KEY_SIZE), 422, "does not open"),
        (
            offer(
                provider,
                wrong_input_bid,
                wrong_input,
                sealed_for(world, provider, job_key, wrong_input.job_hash),
            ),
            422,
            "does not open with this job key",
        ),
        (
            offer(
                provider,
                spot_bid,
                spot,
                sealed_for(world, provider, job_key, spot.job_hash),
                mediator=nobody,
            ),
            409,
            "unknown mediator",
        ),
        (offer(provider, bid, spec, sealed, mediator=MEDIATOR.address), 422, "no mediator"),
    ]
    for answer, status, reason in refusals:
        assert answer.status_code == status, answer.text
        assert reason in answer.json()["error"], answer.text
    garbage = httpx.post(f"{provider.url}/offer", content=b"{not json", timeout=30)
    assert garbage.status_code == 400
    assert httpx.post(f"{provider.url}/mediate", json={}, timeout=30).status_code == 404
    assert not (provider.datadir / "jobs" / f"bid-{bid}").exists()


@dataclass(frozen=True)
class LogSession:
    """One connection of ``WS /jobs/{deal}/logs`` read with a raw client: what came on the wire
    (the greeting, then the sealed frames) and the frames opened with the job key."""

    wire: list[bytes]
    key: bytes
    frames: list[transit.LogFrame]

    def data(self, stream: str) -> bytes:
        return b"".join(f.data for f in self.frames if f.kind == stream)


def logs_frames(
    provider: ComputeProvider,
    signer: Any,
    deal: int,
    job_key: bytes,
    replica: int = 0,
    start: int = 0,
) -> LogSession:
    """Every frame of ``WS /jobs/{deal}/logs?from=start`` until the end frame."""
    nonce = transit.client_nonce()
    url = provider.url.replace("http://", "ws://")
    url += f"/jobs/{deal}/logs?from={start}&nonce={nonce.hex()}"
    header = keys.auth_header(signer, provider.address, deal)
    with connect(url, additional_headers={keys.AUTH_HEADER: header}, open_timeout=30) as ws:
        greeting = ws.recv(timeout=120)
        assert isinstance(greeting, bytes)
        key = keys.log_key(job_key, deal, replica, nonce, transit.parse_hello(greeting))
        opener = transit.LogOpener(key)
        session = LogSession([greeting], key, [])
        while len(session.frames) < 10_000:
            message = ws.recv(timeout=120)
            assert isinstance(message, bytes)
            session.wire.append(message)
            session.frames.append(opener.open(message))
            if session.frames[-1].kind == "end":
                return session
    raise AssertionError("no end frame")


@pytest.mark.slow
def test_an_accepted_offer_forms_a_deal_and_its_job_answers_only_its_client(
    world: World,
) -> None:
    """The acceptance verifies and the actor takes it; the job (whose input is not in the
    storage market) fails staging and commits nothing; its endpoints answer its client and
    mediator only; a restarted provider still serves it."""
    node, provider = world.node, world.provider
    kind = executor_of(provider)
    missing = sha3_256(b"never stored")
    spec = job_spec(
        executor=kind,
        command=("cat", "/inputs/x"),
        inputs=[Input(missing, "/inputs/x")],
        verification=Verification.SPOT,
    )
    job_key = os.urandom(32)
    bid = place_bid(node, CLIENT, spec, mediators=[MEDIATOR.address], max_fee=FEE)
    answer = offer(
        provider,
        bid,
        spec,
        sealed_for(world, provider, job_key, spec.job_hash),
        mediator=MEDIATOR.address,
    )
    assert answer.status_code == 200, answer.text
    terms = answer.json()
    collateral = market.collateral_for(market.max_payment(1, 0, spec.timeout, 1_000, 0), 10**6)
    assert (terms["price_cpu"], terms["price_gpu"], terms["collateral"]) == (1_000, 0, collateral)
    message = market.acceptance_message(
        genesis().chain_id,
        bid,
        0,
        spec.job_hash,
        1_000,
        0,
        collateral,
        MEDIATOR.address,
        PROVIDER.address,
    )
    signature = hybrid.HybridSignature.decode(bytes.fromhex(terms["acceptance"]))
    assert hybrid.is_valid(PROVIDER.public, message, signature)
    deal = form_deal(
        node, CLIENT, bid, [provider], [bytes.fromhex(terms["acceptance"])], MEDIATOR.address
    )
    sealed = sealed_for(world, world.mediator, job_key, spec.job_hash)
    kept = httpx.post(
        f"{world.mediator.url}/mediate",
        json={"deal": deal, "spec": spec.encode().hex(), "job_key": sealed.hex()},
        timeout=30,
    )
    assert kept.status_code == 200, kept.text
    swapped = sealed_for(world, world.mediator, os.urandom(32), spec.job_hash)
    body = {"deal": deal, "spec": spec.encode().hex(), "job_key": swapped.hex()}
    hijack = httpx.post(f"{world.mediator.url}/mediate", json=body, timeout=30)
    assert hijack.status_code == 409 and "another job key" in hijack.json()["error"]
    vouched = httpx.post(
        f"{world.mediator.url}/mediate",
        json=body,
        headers=vouch(CLIENT, "mediate", world.mediator, deal, swapped),
        timeout=30,
    )
    assert vouched.status_code == 200, vouched.text

    failed = wait_state(provider, CLIENT, deal, ["failed"])
    assert failed["reason"] == "staging-failed" and "/inputs/x" in failed["detail"]
    assert failed["root"] is None and failed["cid"] is None
    assert events(node, "ResultCommitted", deal) == []
    assert authed(provider, MEDIATOR, deal).status_code == 200
    refused = [
        (authed(provider, STRANGER, deal), 403, "neither"),
        (authed(provider, CLIENT, deal, now=time.time() - 1_000), 401, "fresh"),
        (authed(provider, CLIENT, deal + 1), 404, "no job"),
        (httpx.get(f"{provider.url}/jobs/{deal}", timeout=30), 401, "X-Qoin-Auth"),
        (authed(provider, CLIENT, deal, "/result"), 409, "not revealed"),
    ]
    for response, status, reason in refused:
        assert response.status_code == status, response.text
        assert reason in response.json()["error"]
    with pytest.raises(InvalidStatus) as denied:
        logs_frames(provider, STRANGER, deal, job_key)
    assert denied.value.response.status_code == 403
    no_nonce = provider.url.replace("http://", "ws://") + f"/jobs/{deal}/logs?from=0"
    header = {keys.AUTH_HEADER: keys.auth_header(CLIENT, provider.address, deal)}
    with pytest.raises(InvalidStatus) as denied:
        connect(no_nonce, additional_headers=header, open_timeout=30)
    assert denied.value.response.status_code == 400
    end = logs_frames(provider, CLIENT, deal, job_key).frames[-1].end
    assert end is not None and end["reason"] == "staging-failed"

    again = restart(world.net, provider, world.url, executors=EXECUTORS)
    object.__setattr__(world, "provider", again)
    assert again.info()["address"] == str(PROVIDER.address)
    after = authed(again, CLIENT, deal)
    assert after.status_code == 200 and after.json()["state"] == "failed"


@pytest.mark.slow
def test_a_job_runs_commits_reveals_and_delivers_its_outputs_with_one_storage_provider(
    world: World, tmp_path: Path
) -> None:
    """A sandbox job (verification none) while only one storage provider runs (the storage
    market keeps a file on two): its output reaches a WebSocket follower, it commits and reveals
    its root and is paid at once; its outputs are served by the provider itself (``GET
    /jobs/{deal}/outputs``, verified against the revealed root) while its status says why they
    are not stored yet; once a second storage provider comes they are stored, and a client whose
    provider does not answer gets them from the storage market by their CID."""
    provider = world.mediator  # a provider too, and its CPU is free
    if provider.ready["executors"]["sandbox"] is not None:
        pytest.skip(f"no sandbox here: {provider.ready['executors']['sandbox']}")
    start_provider(world.net, world.node, "storage-0", STORERS[0])
    script = f"echo {HELLO}; echo {SECRET} > /outputs/x; echo {WARN} >&2"
    spec = job_spec(("sh", "-c", script), timeout=20)
    deal, job_key = run_deal(world.node, CLIENT, [provider], spec)
    session = logs_frames(provider, CLIENT, deal, job_key)
    data = {stream: session.data(stream) for stream in ("stdout", "stderr")}
    assert data == {"stdout": f"{HELLO}\n".encode(), "stderr": f"{WARN}\n".encode()}
    end = session.frames[-1].end
    assert end is not None and end["reason"] == "exited" and end["exit_code"] == 0
    check_log_in_transit(provider, deal, job_key, session)

    def no_room() -> bool:
        detail = str(authed(provider, CLIENT, deal).json()["detail"])
        return "no storage provider has room yet" in detail

    assert wait_until(no_room, 120, 0.2, "the provider says it cannot store the outputs yet")
    revealed = events(world.node, "ResultRevealed", deal)
    root = bytes(revealed[0][1][2])
    assert [d[1] for _, d in events(world.node, "ProviderPaid", deal)] == [0]
    result = authed(provider, CLIENT, deal, "/result").json()
    assert (result["root"], result["cid"]) == (root.hex(), None)
    assert authed(provider, STRANGER, deal, "/outputs").status_code == 403
    with httpx.Client(timeout=30) as http:

        def fetch(endpoint: str, out: str, **options: Any) -> client.SavedOutputs:
            api = client.ProviderApi(http, CLIENT, provider.address, endpoint)
            return client.fetch_outputs(
                world.url, api, deal, 0, root, job_key, tmp_path / out, **options
            )

        def fetch_with(key: bytes, out: str, **options: Any) -> client.SavedOutputs:
            api = client.ProviderApi(http, CLIENT, provider.address, provider.endpoint)
            return client.fetch_outputs(
                world.url, api, deal, 0, root, key, tmp_path / out, **options
            )

        direct = fetch(provider.endpoint, "direct")
        assert (direct.source, direct.cid, direct.root) == ("provider", "", root)
        assert (direct.files, direct.reason, direct.exit_code) == (("x",), "exited", 0)
        assert (tmp_path / "direct" / "outputs" / "x").read_text() == f"{SECRET}\n"
        assert (tmp_path / "direct" / "stdout").read_bytes() == f"{HELLO}\n".encode()
        # On the wire: ciphertext under the replica's transit key, a fresh salt each time.
        wire = authed(provider, CLIENT, deal, "/outputs").content
        again = authed(provider, CLIENT, deal, "/outputs").content
        assert wire != again and len(wire) == len(again)
        for marker in (SECRET, HELLO):
            assert marker.encode() not in wire
        archive = crypt.decrypt(wire, keys.outputs_transit_master(job_key, deal, 0))
        assert SECRET.encode() in archive and HELLO.encode() in archive
        with pytest.raises(client.ComputeClientError, match="does not open with the job key"):
            fetch_with(os.urandom(32), "wrong-key", wait_s=0.5)
        assert not (tmp_path / "wrong-key").exists()
        said: list[str] = []
        with pytest.raises(client.ComputeClientError, match="qoin compute get") as failed:
            fetch(NOWHERE, "nothing", wait_s=0.5, on_wait=said.append)
        assert "did not hand them over" in str(failed.value) and said
        assert not (tmp_path / "nothing").exists()

        start_provider(world.net, world.node, "storage-1", STORERS[1])
        stored = wait_state(provider, CLIENT, deal, ["stored", "settled"], timeout=180)
        assert stored["cid"] and stored["usage_cpu"] <= 1 and stored["exit_code"] == 0
        assert "outputs stored" in stored["detail"]
        result = authed(provider, CLIENT, deal, "/result")
        assert result.status_code == 200, result.text
        assert result.json()["cid"] == stored["cid"]
        # A provider that does not answer: the copy in the storage market, by its CID.
        copy = fetch(NOWHERE, "stored", cid=stored["cid"])
        assert (copy.source, copy.cid, copy.root) == ("storage", stored["cid"], root)
        assert (tmp_path / "stored" / "outputs" / "x").read_text() == f"{SECRET}\n"


HELLO, SECRET, WARN = "hello-7f3a9c", "weights-51d0e2", "warn-c4b18e"
"""What the job prints and leaves (none of it may be on the wire in clear)."""


def check_log_in_transit(
    provider: ComputeProvider, deal: int, job_key: bytes, session: LogSession
) -> None:
    """The log's bytes on the wire hold none of the job's output; a changed frame is refused; a
    follower resumes with ``from``; a follower with another job key is refused, not retried."""
    wire = b"".join(session.wire)
    for marker in (HELLO, WARN):
        assert marker.encode() not in wire
    assert session.wire[0].startswith(transit.LOG_MAGIC) and len(session.wire[0]) == 24
    for index in range(1, len(session.wire)):
        opener = transit.LogOpener(session.key)
        for earlier in session.wire[1:index]:
            opener.open(earlier)
        message = session.wire[index]
        changed = message[:-1] + bytes([message[-1] ^ 1])
        with pytest.raises(transit.TransitError, match="does not authenticate"):
            opener.open(changed)
    log = b"".join(f.data for f in sorted(session.frames[:-1], key=lambda f: f.offset))
    skip = len(HELLO) + 3
    resumed = logs_frames(provider, CLIENT, deal, job_key, start=skip)
    assert resumed.frames[0].offset == skip and resumed.key != session.key
    assert b"".join(f.data for f in resumed.frames[:-1]) == log[skip:]
    with httpx.Client(timeout=30) as http:
        api = client.ProviderApi(http, CLIENT, provider.address, provider.endpoint)
        got: list[bytes] = []
        stream = client.LogStream(api, deal, job_key, 0, lambda _s, d: got.append(d), start=skip)
        stream.start().join(60)
        assert stream.end is not None and stream.end.reason == "exited"
        assert b"".join(got) == log[skip:]
        refused: list[str] = []
        stranger = client.LogStream(
            api, deal, os.urandom(32), 0, lambda _s, _d: None, on_refused=refused.append
        )
        stranger.start().join(60)
        assert stranger.done and stranger.end is None and stranger.reconnects == 0
        assert refused and "does not authenticate" in stranger.error


# -- what an unauthenticated party can make a provider keep, and bounds ----------------------------


def vouch(
    signer: HybridKeyPair, purpose: str, to: ComputeProvider, number: int, sealed: bytes
) -> dict[str, str]:
    return {keys.AUTH_HEADER: keys.key_auth_header(signer, purpose, to.address, number, sealed)}


def free_provider(world: World) -> ComputeProvider:
    """The provider or the mediator, whichever has a CPU free (earlier tests' deals hold some)."""

    def free() -> ComputeProvider | None:
        with ComputeMarketView(world.url) as view:
            for candidate in (world.provider, world.mediator):
                ask = view.get_ask(candidate.address)
                if ask is not None and ask.free_cpus >= 1:
                    return candidate
        return None

    found = wait_until(free, 120, 0.5, "a provider with a free CPU")
    assert found is not None
    return found


def seal(kem: MLKEM768PrivateKey, job_key: bytes, spec: JobSpec) -> bytes:
    return keys.seal_job_key(kem.public_key().public_bytes_raw(), job_key, spec.job_hash)


def test_offers_are_bounded_keep_their_first_job_key_and_fall_due(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kem, spec = MLKEM768PrivateKey.generate(), job_spec()
    raw, first, second = spec.encode(), os.urandom(32), os.urandom(32)
    book = Offers(tmp_path)

    def keep(
        bid: int, key: bytes, client: str = "c", vouched: bool = False, deadline: int = 50
    ) -> bool:
        offer = PendingOffer(bid, client, deadline, len(raw))
        return book.keep(offer, raw, seal(kem, key, spec), key, kem, {}, vouched=vouched)

    assert keep(1, first) and not keep(1, first)  # the same key sealed again: nothing written
    with pytest.raises(OfferRefused, match="another job key"):
        keep(1, second)  # whoever knows the spec cannot swap the key
    assert same_job_key(kem, book.path(1), first)
    assert keep(1, second, vouched=True) and same_job_key(kem, book.path(1), second)
    monkeypatch.setattr(jobs, "MAX_OFFERS_PER_CLIENT", 2)
    assert keep(2, first, deadline=40)
    with pytest.raises(OfferRefused, match="pending offers here, the most"):
        keep(3, first)
    monkeypatch.setattr(jobs, "MAX_OFFERS", 3)
    assert keep(3, first, client="d")
    with pytest.raises(OfferRefused, match="too many pending offers"):
        keep(4, first, client="e")
    monkeypatch.setattr(jobs, "MAX_OFFERS", 100)
    monkeypatch.setattr(jobs, "MAX_OFFER_BYTES", 3 * len(raw) + 1)
    with pytest.raises(OfferRefused, match="bytes of specs"):
        keep(4, first, client="e")
    again = Offers(tmp_path)  # a restarted daemon reads them back, deadlines included
    assert again.bids() == [1, 2, 3]
    assert (again.due(39), again.due(40), again.due(50)) == ([], [2], [1, 2, 3])
    assert again.drop(2) and not again.drop(2) and not again.path(2).exists()
    assert again.take(1, tmp_path / "deal-1") and 1 not in again
    assert (tmp_path / "deal-1" / jobs.SPEC_FILE).exists()


def test_mediator_verdicts_follow_the_table() -> None:
    """docs/spec/compute.md §3.6 and §5.5, including the mediator's own run stopped by a limit
    or not started: it never fines a replica on a run of its own that proves nothing."""
    a, b, c = (bytes([n]) * 32 for n in (1, 2, 3))
    zero = bytes(32)
    one = [Revealed(0, PROVIDER.address, a)]
    two = [Revealed(0, PROVIDER.address, a), Revealed(1, STRANGER.address, b)]

    def run(root: bytes, reason: StopReason = StopReason.EXITED) -> OwnRun:
        return OwnRun(root, reason)

    cases: list[tuple[Any, tuple[VerdictKind, bytes] | None]] = [
        (decide(run(a), one, delivered=True), (VerdictKind.CORRECT_RESULT, a)),
        (decide(run(a), two, delivered=True), (VerdictKind.WRONG_RESULT, a)),
        (decide(run(a), two, delivered=False), (VerdictKind.NOT_DELIVERED, zero)),
        (decide(run(c), two, second=run(c)), (VerdictKind.WRONG_RESULT, c)),
        (decide(run(c), two, second=run(b)), (VerdictKind.NON_DETERMINISTIC, zero)),
        (decide(run(c, StopReason.MEMORY), two, second=run(c)), (VerdictKind.WRONG_RESULT, c)),
        # a run that timed out on the mediator's machine and matches nobody: speed decides it
        (decide(run(c, StopReason.TIMEOUT), two), (VerdictKind.NON_DETERMINISTIC, zero)),
        # a timeout every honest replica also reached is an ordinary result
        (decide(run(a, StopReason.TIMEOUT), one, delivered=True), (VerdictKind.CORRECT_RESULT, a)),
        # the job fails to start everywhere alike (a bad image): that is the result
        (decide(run(a, StopReason.FAILED), one, delivered=True), (VerdictKind.CORRECT_RESULT, a)),
        # no verdict without a result of its own that can be trusted
        (decide(None, two), None),
        (decide(run(c, StopReason.FAILED), two), None),
        (decide(run(c), two, second=None), None),
        (decide(run(c), two, second=run(c, StopReason.FAILED)), None),
        (decide(run(a), [], delivered=True), None),
    ]
    for decision, expected in cases:
        if expected is None:
            assert isinstance(decision, str), decision
        else:
            assert isinstance(decision, Decision), decision
            assert (decision.kind, decision.root) == expected, decision
    assert needs_second_run(run(c), two) and not needs_second_run(run(a), two)
    assert not needs_second_run(run(c, StopReason.TIMEOUT), two)
    assert not needs_second_run(run(c, StopReason.FAILED), two)


def test_a_replica_result_answer_is_bounded_in_size_and_time() -> None:
    """The mediator reads a provider's ``/result`` (untrusted) at most so many bytes, so long."""

    async def huge() -> AsyncIterator[bytes]:
        for _ in range(32):  # 2 MiB
            yield b" " * 65536

    async def trickle() -> AsyncIterator[bytes]:
        for _ in range(40):  # a byte every 50 ms for 2 s
            yield b" "
            await asyncio.sleep(0.05)

    async def answer(request: Request) -> Any:
        name = request.path_params["name"]
        if name == "ok":
            return JSONResponse({"cid": "ab" * 32})
        return StreamingResponse(huge() if name == "huge" else trickle())

    app = Starlette(routes=[Route("/{name}", answer)])
    with BackgroundServer(app) as server:
        assert bounded_json(f"{server.url}ok", {}, 1000, 10) == (200, {"cid": "ab" * 32})
        started = time.monotonic()
        with pytest.raises(ValueError, match="took over 1 s"):
            bounded_json(f"{server.url}trickle", {}, 1_000_000, 1.0)
        assert time.monotonic() - started < 10
        with pytest.raises(ValueError, match="over 1000000 bytes"):
            bounded_json(f"{server.url}huge", {}, 1_000_000, 30)


def test_the_daemon_reads_only_the_events_it_handles() -> None:
    """Topic 1 of DealFormed and PhaseStarted is the client, so other deals' events come too;
    the daemon filters on topic 0 (no BidPlaced, AskPosted ... spam reaches it)."""
    found = log_filter()
    assert found["address"] == str(market.COMPUTE_MARKET)
    assert found["topics"] == [sorted(market.event_topic(name).hex() for name in _HANDLERS)]
    assert set(_HANDLERS) <= set(EVENT_NAMES)
    assert not {"BidPlaced", "AskPosted", "ResultCommitted"} & set(_HANDLERS)


@pytest.mark.slow
def test_an_offer_keeps_its_job_key_unless_its_client_vouches_and_leaves_with_its_bid(
    world: World,
) -> None:
    node, provider = world.node, free_provider(world)
    spec = job_spec(executor=executor_of(provider), command=("true",), timeout=5)
    bid = place_bid(node, CLIENT, spec)
    first, second = os.urandom(32), os.urandom(32)
    for _ in range(2):  # sealed anew each time: the same job key is the same offer
        again = offer(provider, bid, spec, sealed_for(world, provider, first, spec.job_hash))
        assert again.status_code == 200, again.text
    swapped = sealed_for(world, provider, second, spec.job_hash)
    hijack = offer(provider, bid, spec, swapped)
    assert hijack.status_code == 409 and "another job key" in hijack.json()["error"]
    body = {"bid": bid, "replica": 0, "mediator": "", "spec": spec.encode().hex()}
    body["job_key"] = swapped.hex()
    url = f"{provider.url}/offer"
    for signer, status in ((STRANGER, 403), (CLIENT, 200)):
        headers = vouch(signer, "offer", provider, bid, swapped)
        answer = httpx.post(url, json=body, headers=headers, timeout=60)
        assert answer.status_code == status, answer.text
    kept = provider.datadir / "jobs" / f"bid-{bid}"
    opened = keys.open_job_key(
        kem_private_key(provider.datadir), (kept / jobs.KEY_FILE).read_bytes(), spec.job_hash
    )
    assert opened == second
    with Wallet(node.user.url, CLIENT) as wallet:
        market.cancel_bid(bid).transact(wallet)
    wait_until(lambda: not kept.exists(), 30, 0.2, f"offer of bid {bid} dropped")


def offline_job(world: World, directory: Path, spec: JobSpec, height: list[int]) -> Job:
    """A job of this process (not the daemons'), on its own KEM key, at height ``height[0]``."""
    kem, job_key = MLKEM768PrivateKey.generate(), os.urandom(32)
    sealed = seal(kem, job_key, spec)
    keep_job(directory, spec.encode(), sealed, {})
    status = JobStatus(int(directory.name.removeprefix("deal-")), 0, str(CLIENT.address))
    write_status(directory, status)
    ctx = JobContext(
        keypair=STRANGER,
        rpc=world.url,
        params=COMPUTE,
        wallet=Wallet(world.url, STRANGER),
        view=ComputeMarketView(world.url),
        kem=kem,
        log=lambda _line: None,
        height=lambda: height[0],
    )
    return Job(ctx, directory, status, spec, sealed)


@pytest.mark.slow
def test_job_status_changes_apply_in_turn_and_a_salt_is_saved_before_use(
    world: World, tmp_path: Path
) -> None:
    job = offline_job(world, tmp_path / "deal-1", job_spec(), [0])
    try:

        def bump() -> None:
            for _ in range(50):
                job.change(lambda s: replace(s, log_bytes=s.log_bytes + 1))

        threads = [threading.Thread(target=bump) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert job.status.log_bytes == 200 == read_status(job.directory).log_bytes
        job.update(detail="x" * (jobs.MAX_STATUS_FILE + 1))  # a long message stays readable
        assert read_status(job.directory).detail == "x" * (jobs.MAX_DETAIL - 3) + "..."
        job.update(state=JobState.REVEALED, revealed=True)
        job.on_settled(10, "completed")  # a revealed job goes on storing
        assert (job.status.state, job.status.settled_height) == (JobState.REVEALED, 10)
        job.change(functools.partial(jobs._stored, cid="ab" * 32, size=5, upload=0.1))
        saved = read_status(job.directory)
        assert (saved.state, saved.cid, saved.settled_height) == (JobState.SETTLED, "ab" * 32, 10)
        shutil.rmtree(job.directory)
        job.directory.write_bytes(b"")  # the disk refuses the next status
        with pytest.raises(JobError, match="cannot save"):
            job.change(lambda s: replace(s, salt="00" * 32), must_persist=True)
        assert job.status.salt == ""  # not used: no commitment goes out with it
    finally:
        job.ctx.wallet.close()
        job.ctx.view.close()


@pytest.mark.slow
def test_a_run_that_can_no_longer_be_committed_is_not_started_or_is_stopped(
    world: World, tmp_path: Path
) -> None:
    problem = executor_for(Executor.SANDBOX).problem()
    if problem is not None:
        pytest.skip(f"no sandbox here: {problem}")
    spec = job_spec(("sleep", "60"), timeout=60)
    height = [100]
    late = offline_job(world, tmp_path / "deal-1", spec, height)
    running = offline_job(world, tmp_path / "deal-2", spec, height)
    try:
        late.update(run_deadline=100)  # staged at the deadline: never started
        late.start()
        wait_until(lambda: not late.alive, 60, 0.1, "the late job ends")
        assert (late.status.state, late.status.reason) == (JobState.FAILED, "too-late")
        assert "not running it" in late.status.detail and not late.status.root
        running.update(run_deadline=150)
        running.start()
        wait_until(lambda: running.status.state is JobState.RUNNING, 60, 0.1, "it runs")
        running.on_head(149)
        assert running.alive
        height[0] = 150
        running.on_head(150)  # the deadline: stopped, nothing to commit
        wait_until(lambda: not running.alive, 60, 0.1, "the run stops")
        assert (running.status.state, running.status.reason) == (JobState.FAILED, "too-late")
        assert not running.status.root and running.status.run < 50
    finally:
        for job in (late, running):
            job.stop()
            job.ctx.wallet.close()
            job.ctx.view.close()


def test_fewer_epochs_makes_every_epochs_argument_one() -> None:
    """TEST ONLY ``--misbehave fewer-epochs``: the lazy trainer's command."""
    assert "fewer-epochs" in jobs.MISBEHAVIOURS
    command = ("/runtime/bin/python", "-m", "qoin_ai_job", "train", "--epochs", "5", "--lr", "1")
    assert jobs.fewer_epochs(command) == (*command[:5], "1", "--lr", "1")
    assert jobs.fewer_epochs(("x", "--epochs=12", "--epochs")) == ("x", "--epochs=1", "--epochs")
    assert jobs.fewer_epochs(("sh", "-c", "echo --epochs 5")) == ("sh", "-c", "echo --epochs 5")
    with pytest.raises(JobError, match=r"runtime a@0+ not offered here \(this provider has: b@"):
        jobs.runtime_dir(
            JobSpec(command=("true",), runtime="a@" + "0" * 32), {"b@" + "1" * 32: Path("/")}
        )


def fake_runtime(place: Path, torch: str) -> str:
    """A directory :func:`qoin.ai.runtime.load` accepts (this Qoin's job program, a record that
    adds up; no PyTorch: nothing runs from it here); its ref."""
    files = runtimes.program_files()
    package = place / "lib" / "python3.12" / "site-packages" / runtimes.PACKAGE
    package.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (package / name).write_bytes(content)
    (place / "bin").mkdir(exist_ok=True)
    (place / "bin" / "python").touch()
    digest = runtimes.program_digest(files)
    ident = runtimes.runtime_id(runtimes.NAME, torch, "3.12.3", "AVX2", digest)
    info = RuntimeInfo(runtimes.NAME, ident, torch, "3.12.3", "AVX2", digest, place)
    (place / runtimes.INFO_FILE).write_text(json.dumps(info.record()))
    return info.ref


def test_a_runtime_changed_since_the_start_runs_no_job(tmp_path: Path) -> None:
    """The runtime a job names is loaded again for each job (and offer): a directory installed
    again since the provider started (another ref), or broken, refuses the job rather than run
    it on another runtime than its spec names."""
    place = tmp_path / "runtime"
    ref = fake_runtime(place, "2.13.0")
    spec = JobSpec(command=("/runtime/bin/python", "-c", "pass"), runtime=ref)
    offered = {ref: place}
    assert jobs.runtime_dir(spec, offered) == place
    newer = fake_runtime(place, "2.14.0")
    with pytest.raises(JobError, match=f"runtime {ref} is no longer at .*, which holds {newer}"):
        jobs.runtime_dir(spec, offered)
    (place / runtimes.INFO_FILE).unlink()
    with pytest.raises(JobError, match=f"runtime {ref}: no AI runtime at"):
        jobs.runtime_dir(spec, offered)


@pytest.mark.slow
def test_runtimes_are_listed_and_offers_naming_others_refused(
    world: World,
    ai_runtime: RuntimeInfo,  # noqa: F811 (the fixture)
    tmp_path: Path,
) -> None:
    """A provider started with ``--runtime`` lists it (``/info``, its ready line) and accepts a
    job naming it; one without refuses such a job, saying what it has; a runtime directory that
    does not load stops the provider at its start with the reason."""
    fund(world.node, AI_PROVIDER)
    runtime = ["--runtime", str(ai_runtime.path)]
    with_ai = start_compute_provider(
        world.net, world.url, AI_PROVIDER, name="ai-provider", extra=runtime
    )
    assert ai_runtime.ref in with_ai.ready["runtimes"]
    info = httpx.get(f"{with_ai.url}/info", timeout=30).json()
    listed = {"ref": ai_runtime.ref, "torch": ai_runtime.torch}
    assert {**listed, "cpuCapability": ai_runtime.cpu_capability} in info["runtimes"]
    has = ", ".join(sorted(entry["ref"] for entry in info["runtimes"]))
    job_key = os.urandom(32)
    named = replace(job_spec(command=("/runtime/bin/python", "-c", "pass")), runtime=ai_runtime.ref)
    other = replace(named, runtime="qoin-ai@" + "f" * 32)  # a runtime nobody has
    bids = {spec: place_bid(world.node, CLIENT, spec) for spec in (named, other)}
    refused = offer(
        with_ai, bids[other], other, sealed_for(world, with_ai, job_key, other.job_hash)
    )
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"] == (
        f"runtime {other.runtime} not offered here (this provider has: {has})"
    )
    provider = world.provider
    plain = offer(
        provider, bids[other], other, sealed_for(world, provider, job_key, other.job_hash)
    )
    assert plain.status_code == 409 and "not offered here" in plain.json()["error"], plain.text
    taken = offer(with_ai, bids[named], named, sealed_for(world, with_ai, job_key, named.job_hash))
    assert taken.status_code == 200, taken.text
    stale = tmp_path / "stale"
    stale.mkdir()
    args = [
        "--datadir", str(tmp_path / "data"), "--key", str(with_ai.key),
        "--password-file", str(with_ai.password_file), "--rpc", world.url, "--price", "1",
        "--cpus", "1", "--memory", "1MiB", "--executors", "sandbox", "--runtime", str(stale),
    ]  # fmt: skip
    done = subprocess.run(
        provider_argv(*args), capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode != 0 and f"--runtime {stale}" in done.stderr, done.stderr


def test_random_weights_replaces_every_model_files_parameters(tmp_path: Path) -> None:
    """TEST ONLY ``--misbehave random-weights``: each ``*.qm`` under the outputs is written again
    as a valid model file with the same metadata, names, dtypes and shapes, its float32 arrays
    random (other arrays and files that are not models kept as they were)."""
    assert "random-weights" in jobs.MISBEHAVIOURS
    meta = {"format": "qoin-model", "version": 1, "arch": "mlp", "trained": {"epochs": 3}}
    arrays = [
        tensorfile.Array("w", "float32", (3, 4), struct.pack("<12f", *range(12))),
        tensorfile.Array("b", "float32", (4,), bytes(16)),
        tensorfile.Array("steps", "int64", (1,), struct.pack("<q", 7)),
    ]
    (tmp_path / "sub").mkdir()
    for name in ("model.qm", "sub/other.qm"):
        tensorfile.write(tmp_path / name, meta, arrays)
    (tmp_path / "junk.qm").write_bytes(b"not a model")
    (tmp_path / "metrics.json").write_text("{}")
    assert jobs.random_weights(tmp_path, 1 << 20) == ["model.qm", "sub/other.qm"]
    for name in ("model.qm", "sub/other.qm"):
        found = tensorfile.read(tmp_path / name, 1 << 20)
        assert found.meta == meta
        assert [(a.name, a.dtype, a.shape) for a in found.arrays] == [
            (a.name, a.dtype, a.shape) for a in arrays
        ]
        for before, after in zip(arrays, found.arrays, strict=True):
            assert (after.data == before.data) is (before.dtype != "float32"), before.name
    assert (tmp_path / "junk.qm").read_bytes() == b"not a model"
    assert jobs.random_weights(tmp_path / "sub", 16) == []  # over the bound: left as it is


def test_gpus_are_assigned_to_one_run_at_a_time_and_given_back() -> None:
    """Two runs get disjoint GPUs (the lowest free first); a third that wants more than are free
    waits until one gives its GPUs back, or until it is cancelled (then it holds none); a run
    that ends by an error gives its GPUs back too; more GPUs than the provider has is refused
    at once."""
    pool = jobs.GpuPool((5, 2, 7, 3))
    assert pool.gpus == (2, 3, 5, 7)
    never = threading.Event()
    first = pool.take(2, never)
    second = pool.take(1, never)
    assert (first, second) == ((2, 3), (5,)) and pool.free() == (7,)
    said: list[str] = []
    got: list[tuple[int, ...]] = []
    waiter = threading.Thread(target=lambda: got.append(pool.take(3, never, said.append)))
    waiter.start()
    wait_until(lambda: bool(said), timeout=10, what="the third run waits")
    assert said == ["waiting for 3 GPU(s): 1 of 4 free, the others held by other runs"]
    assert not got
    pool.give_back(first)
    waiter.join(10)
    assert got == [(2, 3, 7)] and pool.free() == ()
    pool.give_back(got[0])
    cancel = threading.Event()
    failed: list[JobError] = []

    def cancelled_wait() -> None:
        try:
            pool.take(4, cancel)
        except JobError as exc:
            failed.append(exc)

    waiter = threading.Thread(target=cancelled_wait)
    waiter.start()
    cancel.set()
    waiter.join(10)
    assert [exc.reason for exc in failed] == ["cancelled"] and pool.free() == (2, 3, 7)
    with pytest.raises(RuntimeError), pool.assigned(3, never) as held:
        assert held == (2, 3, 7) and pool.free() == ()
        raise RuntimeError("the run failed")
    assert pool.free() == (2, 3, 7)
    pool.give_back(second)
    with pytest.raises(JobError, match=r"asks for 5 GPU.*assigns 4") as refused:
        pool.take(5, never)
    assert refused.value.reason == "executor-failed" and pool.free() == (2, 3, 5, 7)
    assert jobs.GpuPool().take(0, never) == ()


def test_a_gpu_run_that_cannot_start_gives_its_gpu_back(tmp_path: Path) -> None:
    """Through :func:`jobs.execute`: a sandbox job asking for a GPU gets one assigned (here, on a
    machine without the NVIDIA driver, its run then fails as the provider's fault) and the GPU
    is free again afterwards; waiting for a GPU another run holds, it stops when cancelled."""
    executor = executor_for(Executor.SANDBOX)
    if executor.problem() is not None or Path("/dev/nvidia0").exists():
        pytest.skip("needs the sandbox and a machine without NVIDIA GPUs")
    spec = replace(job_spec(command=("true",)), resources=replace(job_spec().resources, gpus=1))
    pool = jobs.GpuPool((0,))
    log = JobLog(tmp_path, 1 << 16)
    with pytest.raises(JobError, match=r"/nvidia0 are missing") as failed:
        jobs.execute(spec, os.urandom(32), tmp_path, NOWHERE, log, threading.Event(), gpus=pool)
    assert failed.value.reason == "executor-failed" and pool.free() == (0,)
    held = pool.take(1, threading.Event())
    cancel = threading.Event()
    said: list[str] = []

    def stop_when_waiting(text: str) -> None:
        said.append(text)
        cancel.set()

    with pytest.raises(JobError, match="waiting for 1 GPU") as stopped:
        jobs.execute(
            spec, os.urandom(32), tmp_path, NOWHERE, log, cancel, gpus=pool,
            on_wait=stop_when_waiting,
        )  # fmt: skip
    assert stopped.value.reason == "cancelled" and len(said) == 1 and pool.free() == ()
    pool.give_back(held)
    with pytest.raises(JobError, match=r"asks for 1 GPU.*assigns 0"):
        jobs.execute(spec, os.urandom(32), tmp_path, NOWHERE, log, threading.Event())


def test_a_job_is_kept_for_keep_blocks_after_it_is_done_not_only_after_settlement() -> None:
    """A ``none`` deal settles at its reveal; its outputs may be stored much later. Its files
    must stay ``keep`` blocks after that, or the client's ``GET /result`` finds nothing (found as
    a flaky end-to-end test on a loaded machine: the job was deleted the moment it was stored)."""
    keep = 1000
    assert not due_for_removal(-1, None, 5_000, keep)  # not settled
    assert not due_for_removal(10, None, 5_000, keep)  # settled, still storing
    assert not due_for_removal(10, 4_000, 4_000, keep)  # done just now, settled long ago
    assert not due_for_removal(10, 4_000, 4_999, keep)
    assert due_for_removal(10, 4_000, 5_000, keep)
    assert not due_for_removal(4_500, 4_500, 5_000, keep)  # settled and done recently
