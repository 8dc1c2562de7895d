"""The storage provider daemon against a real mining node: it posts its ask, signs acceptances,
refuses hostile uploads (keeping nothing), stores the client's shard, serves it back verifiably,
and proves it every period, paid from the escrow.

The chain and the helpers: :mod:`tests.storageutil`. The whole path through the ``qoin storage``
client commands (put, get, status, a provider killed, a liar with part of its shard deleted, erasure
coding): :mod:`tests.test_storage_e2e`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from qoin.cli.storage_provider import parse_endpoint, parse_size
from qoin.crypto import hybrid
from qoin.crypto.hybrid import HybridKeyPair
from qoin.execution.abi import decode_value
from qoin.storage import erasure, market
from qoin.storage.market import STORAGE_MARKET, MarketView
from qoin.storage.merkle import (
    ShardTree,
    content_id,
    shard_root,
    shard_size_for,
    verify_chunk,
    verify_chunk_nodes,
)
from qoin.storage.provider.daemon import KEM_FILE, kem_key
from qoin.storage.provider.prover import MAX_PROVE_BYTES, MAX_PROVE_ITEMS, Proof, batches
from qoin.storage.provider.server import Refused, parse_range
from qoin.wallet import Wallet
from tests.framework import Network, Node, genesis, wait_until
from tests.keys import keypair_for
from tests.storageutil import (
    CLIENT,
    COLLATERAL,
    PARAMS,
    PRICE,
    QUICK,
    RunningProvider,
    events,
    fund,
    info,
    provider_command,
    spawn_provider,
    start_provider,
    start_providers,
    storage_network,
    stored_files,
)


@pytest.fixture
def chain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Network, Node]]:
    """A mining node on the test network with :data:`~tests.storageutil.QUICK` periods
    (:func:`storage_network`)."""
    with storage_network(tmp_path, monkeypatch, QUICK) as made:
        yield made


def put(
    url: str, deal: int, shard: int, body: bytes, signer: HybridKeyPair, root: bytes, **extra: str
) -> httpx.Response:
    signature = hybrid.sign(signer, market.upload_message(genesis().chain_id, deal, shard, root))
    headers = {
        "x-qoin-public-key": signer.public.encode().hex(),
        "x-qoin-signature": signature.encode().hex(),
        "content-length": str(len(body)),
        **extra,
    }
    return httpx.put(f"{url}/v1/shards/{deal}/{shard}", content=body, headers=headers, timeout=30)


def form_deal(
    node: Node, client: Wallet, providers: list[RunningProvider], shards: list[bytes], size: int
) -> int:
    """Bid for ``shards`` (k = 1), get each provider's acceptance over HTTP, form the deal."""
    roots = tuple(shard_root(shard, PARAMS.leaf_size) for shard in shards)
    shard_size = len(shards[0])
    duration = 30
    head = int(node.user.call("qoin_blockNumber"))
    deposit = len(shards) * duration * market.shard_price(PRICE, shard_size)
    receipt = client.transact(
        STORAGE_MARKET,
        "bid",
        [content_id(roots), size, shard_size, 1, roots, duration, PRICE, head + 300, 0],
        value=deposit,
    )
    bid = decode_value(bytes.fromhex(receipt["returnData"]))
    assert isinstance(bid, int)
    signatures = []
    for index, provider in enumerate(providers):
        answer = httpx.post(f"{provider.url}/v1/accept", json={"bid": bid, "shard": index}).json()
        assert answer["provider"] == str(provider.keypair.address)
        assert answer["price"] == market.shard_price(PRICE, shard_size)
        signatures.append(bytes.fromhex(answer["signature"]))
    refused = httpx.post(f"{providers[0].url}/v1/accept", json={"bid": bid + 99, "shard": 0})
    assert refused.status_code == 409 and "not open" in refused.json()["error"]
    receipt = client.transact(
        STORAGE_MARKET,
        "deal",
        [bid, tuple(p.keypair.address for p in providers), tuple(signatures)],
    )
    assert decode_value(bytes.fromhex(receipt["returnData"])) == bid
    return bid


def open_deal(
    node: Node, providers: list[RunningProvider], size: int = 50_000
) -> tuple[int, list[bytes]]:
    """A deal of a random file (k = 1) with ``providers``, every shard uploaded."""
    data = os.urandom(size)
    shards = erasure.encode(data, len(providers), 1, PARAMS.leaf_size)
    with Wallet(node.user.url, CLIENT) as client:
        deal = form_deal(node, client, providers, shards, len(data))
    for index, provider in enumerate(providers):
        root = shard_root(shards[index], PARAMS.leaf_size)
        assert put(provider.url, deal, index, shards[index], CLIENT, root).status_code == 201
    return deal, shards


def test_sizes_endpoints_and_ranges_parse() -> None:
    assert [parse_size(t) for t in ("1000000", "512MiB", "10GiB", "2 TB", "3kb")] == [
        1_000_000,
        512 << 20,
        10 << 30,
        2 * 10**12,
        3000,
    ]
    for bad in ("", "1.5GiB", "-1", "10 parsecs", "99999999999999999999GiB"):
        with pytest.raises(ValueError):
            parse_size(bad)
    assert parse_endpoint("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_endpoint("[::1]:8700") == ("::1", 8700)
    for bad in ("localhost", "host:99999", "a b:1", ":80"):
        with pytest.raises(ValueError):
            parse_endpoint(bad)
    assert parse_range(None, 100) is None
    assert parse_range("bytes=10-19", 100) == (10, 20)
    assert parse_range("bytes=90-", 100) == (90, 100)
    assert parse_range("bytes=95-500", 100) == (95, 100)
    assert parse_range("bytes=-30", 100) == (70, 100)
    for bad in ("bytes=100-", "bytes=5-4", "bytes=-0", "bytes=1-2,4-5", "items=1-2", "bytes=-"):
        with pytest.raises(Refused) as refused:
            parse_range(bad, 100)
        assert refused.value.status == 416


def test_proofs_are_batched_within_bounds() -> None:
    small = Proof(1, 0, (bytes(256),) * 8, bytes(8 * 10 * 32))
    assert [len(b) for b in batches([small] * 100)] == [17, 17, 17, 17, 17, 15]
    assert all(sum(p.size for p in b) <= MAX_PROVE_BYTES for b in batches([small] * 100))
    tiny = Proof(1, 0, (bytes(32),), b"")
    assert [len(b) for b in batches([tiny] * 130)] == [MAX_PROVE_ITEMS, MAX_PROVE_ITEMS, 2]
    huge = Proof(2, 1, (bytes(4096),) * 64, bytes(64 * 30 * 32))
    assert [len(b) for b in batches([small, huge, small])] == [1, 1, 1]
    assert batches([]) == []


def test_kem_key_is_made_once(tmp_path: Path) -> None:
    first = kem_key(tmp_path)
    assert len(first) == 1184 and kem_key(tmp_path) == first
    assert (tmp_path / KEM_FILE).stat().st_mode & 0o777 == 0o600


@pytest.mark.slow
def test_provider_stores_refuses_and_proves(chain: tuple[Network, Node]) -> None:
    net, node = chain
    a_key, b_key = keypair_for(index=41), keypair_for(index=42)
    fund(node, a_key, b_key, CLIENT)
    a, b = start_providers(net, node, [("provider-a", a_key), ("provider-b", b_key)])
    view = MarketView(node.user.url)
    ask = view.get_ask(a_key.address)
    assert ask is not None and ask.active
    assert (ask.capacity, ask.price, ask.collateral) == (1 << 20, PRICE, COLLATERAL)
    assert f"http://{ask.endpoint}" == a.url
    assert ask.free_collateral >= market.shard_collateral(COLLATERAL, 1 << 20)
    assert info(a)["address"] == str(a_key.address) and info(a)["shards"] == 0

    data = os.urandom(3 * 65_536 + 1000)
    shards = erasure.encode(data, 2, 1, PARAMS.leaf_size)
    assert len(shards[0]) == shard_size_for(len(data), 1, PARAMS.leaf_size)
    root = shard_root(shards[0], PARAMS.leaf_size)
    with Wallet(node.user.url, CLIENT) as client:
        deal = form_deal(node, client, [a, b], shards, len(data))

    # Hostile uploads: each refused with its status, nothing kept.
    stranger = keypair_for(index=43)
    wrong = bytearray(shards[0])
    wrong[12_345] ^= 0x01
    refusals = [
        (put(a.url, deal, 0, shards[0], stranger, root), 403, "client"),
        (put(a.url, deal, 1, shards[1], CLIENT, root), 403, "not this provider's"),
        (put(a.url, deal + 5, 0, shards[0], CLIENT, root), 404, "no deal"),
        (put(a.url, deal, 0, shards[0] + b"extra", CLIENT, root), 413, "more than"),
        (put(a.url, deal, 0, shards[0][:-256], CLIENT, root), 400, "not the shard's"),
        (put(a.url, deal, 0, bytes(wrong), CLIENT, root), 422, "not the committed"),
        (put(a.url, deal, 0, shards[0], CLIENT, bytes(32)), 403, "signature"),
    ]
    for response, status, reason in refusals:
        assert response.status_code == status, response.text
        assert reason in response.json()["error"]
    unsized = httpx.put(
        f"{a.url}/v1/shards/{deal}/0",
        content=iter([shards[0]]),  # chunked: no Content-Length
        headers={
            "x-qoin-public-key": CLIENT.public.encode().hex(),
            "x-qoin-signature": hybrid.sign(
                CLIENT, market.upload_message(genesis().chain_id, deal, 0, root)
            )
            .encode()
            .hex(),
        },
    )
    assert unsized.status_code == 411
    assert stored_files(a) == [] and info(a)["shards"] == 0
    assert httpx.get(f"{a.url}/v1/shards/{deal}/0").status_code == 404

    # The real uploads; a repeat is harmless.
    for index, provider in enumerate((a, b)):
        shard_root_i = shard_root(shards[index], PARAMS.leaf_size)
        assert (
            put(provider.url, deal, index, shards[index], CLIENT, shard_root_i).status_code == 201
        )
    assert put(a.url, deal, 0, shards[0], CLIENT, root).status_code == 200
    assert info(a)["shards"] == 1 and info(a)["used"] == len(shards[0])

    # Served back verifiably: nodes against the root, chunks against the nodes, ranges.
    nodes = httpx.get(f"{a.url}/v1/shards/{deal}/0/nodes").content
    tree = ShardTree.from_bytes(shards[0], PARAMS.leaf_size)
    assert verify_chunk_nodes(root, nodes, tree.leaf_count, PARAMS.leaf_size)
    whole = httpx.get(f"{a.url}/v1/shards/{deal}/0")
    assert whole.status_code == 200 and whole.content == shards[0]
    start, end = tree.chunk_span(1)
    part = httpx.get(f"{a.url}/v1/shards/{deal}/0", headers={"range": f"bytes={start}-{end - 1}"})
    assert part.status_code == 206
    assert part.headers["content-range"] == f"bytes {start}-{end - 1}/{len(shards[0])}"
    assert verify_chunk(nodes, 1, part.content, tree.leaf_count, PARAMS.leaf_size)
    bad_range = httpx.get(f"{a.url}/v1/shards/{deal}/0", headers={"range": "bytes=999999999-"})
    assert bad_range.status_code == 416

    # Proved and paid, period after period, by both providers.
    def paid_periods() -> dict[str, set[int]]:
        periods: dict[str, set[int]] = {}
        for provider, data in events(node, "ProofAccepted", deal):
            periods.setdefault(provider, set()).add(int(data[2]))
        return periods

    wanted = {a_key.address.raw.hex(), b_key.address.raw.hex()}

    def two_each() -> dict[str, set[int]] | None:
        periods = paid_periods()
        return (
            periods
            if set(periods) == wanted and all(len(s) >= 2 for s in periods.values())
            else None
        )

    found = wait_until(
        two_each,
        90,
        0.5,
        "two paid periods for each provider",
    )
    assert found is not None
    first = min(found[a_key.address.raw.hex()])
    deal_info = view.get_deal(deal)
    assert deal_info is not None and first == deal_info.first
    a.child.wait_for(rf"proved deal {deal} shard 0 for period {first}", 10)
    a.child.wait_for(rf"paid \d+ Shor for deal {deal} shard 0 period {first}", 10)
    view.close()


@pytest.mark.slow
def test_a_lying_provider_fails_and_another_repairs_its_shard(
    chain: tuple[Network, Node],
) -> None:
    """A provider that proves with a flipped leaf byte (``--dishonest wrong-leaf``) fails at its
    first proof; an idle provider takes the re-listed shard, rebuilds it from the honest one's
    replica (checked against the committed root) and proves it."""
    net, node = chain
    honest, liar, idle = keypair_for(index=44), keypair_for(index=45), keypair_for(index=46)
    fund(node, honest, liar, idle, CLIENT)
    starting = [
        spawn_provider(net, node, "honest", honest),
        spawn_provider(net, node, "idle", idle),
    ]
    lying = start_provider(net, node, "liar", liar, "--dishonest", "wrong-leaf")
    a, c = (provider.ready() for provider in starting)
    deal, shards = open_deal(node, [a, lying])
    lying.child.wait_for(rf"proof of deal {deal} shard 1 period \d+ found invalid", 60)
    assert [data[1] for _, data in events(node, "ShardFailed", deal)] == [1]
    c.child.wait_for(rf"took deal {deal} shard 1", 30)
    c.child.wait_for(rf"rebuilt deal {deal} shard 1 from shards \[0\]", 30)
    c.child.wait_for(rf"proved deal {deal} shard 1 for period \d+", 60)
    view = MarketView(node.user.url)
    deal_info = view.get_deal(deal)
    view.close()
    assert deal_info is not None
    assert deal_info.shards[1].provider == idle.address
    assert deal_info.shards[1].state is market.ShardState.ACTIVE
    served = httpx.get(f"{c.url}/v1/shards/{deal}/1")
    assert served.content == shards[1]
    lying.child.wait_for(rf"deal {deal} is over: deleted shard 1|released deal {deal} shard 1", 30)
    assert stored_files(lying) == []


@pytest.mark.slow
def test_exit_hands_every_shard_to_another_provider(chain: tuple[Network, Node]) -> None:
    """``exit`` cancels the ask and leaves the shard; the daemon keeps serving it, another
    provider takes it and copies it from the leaver, proves it, and the leaver's collateral
    comes back; the leaver's daemon then deletes its copy."""
    net, node = chain
    leaver, keeper, taker = keypair_for(index=47), keypair_for(index=48), keypair_for(index=49)
    fund(node, leaver, keeper, taker, CLIENT)
    a, b = start_providers(net, node, [("leaver", leaver), ("keeper", keeper)])
    deal, shards = open_deal(node, [a, b])
    a.child.wait_for(rf"proved deal {deal} shard 0 for period \d+", 60)
    c = start_provider(net, node, "taker", taker)
    leaving = net.spawn(
        "exit",
        provider_command(
            "exit", "--datadir", str(a.datadir), "--key", str(a.key),
            "--password-file", str(a.password_file), "--rpc", node.user.url, "--timeout", "90",
        ),
    )  # fmt: skip
    leaving.wait_for("ask cancelled", 30)
    leaving.wait_for(rf"left deal {deal} shard 0", 30)
    leaving.wait_for(r"waiting for 1 shard\(s\)", 30)
    a.child.wait_for(rf"left deal {deal} shard 0: serving it", 30)
    c.child.wait_for(rf"took deal {deal} shard 0", 30)
    c.child.wait_for(rf"rebuilt deal {deal} shard 0 from shards \[0\]", 30)
    _, done, _ = leaving.wait_for(r"all shards handed off; (\d+) Shor of collateral came back", 90)
    assert int(done[1]) >= market.shard_collateral(COLLATERAL, len(shards[0]))
    assert leaving.proc.wait(10) == 0
    a.child.wait_for(rf"released deal {deal} shard 0", 30)
    assert stored_files(a) == []
    view = MarketView(node.user.url)
    ask = view.get_ask(leaver.address)
    deal_info = view.get_deal(deal)
    view.close()
    assert ask is not None and not ask.active and ask.locked_collateral == 0
    assert deal_info is not None and deal_info.shards[0].provider == taker.address
    assert deal_info.shards[0].leaver is None


@pytest.mark.slow
def test_provider_survives_the_node_and_its_own_restart(chain: tuple[Network, Node]) -> None:
    """The node goes away and comes back (on the same port): a provider says so, reconnects and
    keeps proving. A provider restarted with a damaged shard file marks the shard lost, fetches
    it again from the other provider (checked against its root) and proves it."""
    net, node = chain
    a_key, b_key = keypair_for(index=50), keypair_for(index=51)
    fund(node, a_key, b_key, CLIENT)
    a, b = start_providers(net, node, [("restarted", a_key), ("steady", b_key)])
    deal, _shards = open_deal(node, [a, b])
    a.child.wait_for(rf"proved deal {deal} shard 0 for period \d+", 60)
    assert a.child.stop() == 0
    shard_file = a.shard_file(deal, 0)
    damaged = bytearray(shard_file.read_bytes())
    damaged[777] ^= 0x80
    shard_file.write_bytes(damaged)

    port = node.user.url.rstrip("/").rsplit(":", 1)[1]
    node.stop()
    b.child.wait_for("lost the node", 30)
    node.start_execution("--rpc-port", port)
    node.engines = [str(node.engine)]
    node.start_consensus("--mine", "--workers", "1", "--block-interval-ms", "100")
    index, _, _ = b.child.wait_for("reconnected to the node", 60)
    b.child.wait_for(rf"proved deal {deal} shard 1 for period \d+", 60, after=index)

    again = start_provider(net, node, "restarted", a_key)
    again.child.wait_for(rf"deal {deal} shard 0 lost: its bytes hash to", 5)
    again.child.wait_for(rf"rebuilt deal {deal} shard 0 from shards \[1\]", 60)
    again.child.wait_for(rf"proved deal {deal} shard 0 for period \d+", 60)
