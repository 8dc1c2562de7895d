"""The web UI's explorer against a real node (an execution and a consensus client mining the test
network): home with head, supply and recent blocks, the live head relay, block, transaction and
account pages, and search by height, hash and address."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from tests.framework import FUNDED, RPC_POLL_S, Node, pay, wait_until
from tests.keys import keypair_for
from tests.webutil import ORIGIN, mining_node, ui_client

WS = "ws://127.0.0.1:8680/ws/heads"
BOB = keypair_for(index=3)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """A mining node on the test network."""
    with mining_node(tmp_path_factory.mktemp("web-explorer")) as made:
        yield made


@pytest.fixture(scope="module")
def tx_id(node: Node) -> str:
    """A transfer of 1,234 Shor to Bob, mined."""
    raw = pay(FUNDED, 0, BOB, 1234, True).encode().hex()
    sent: str = node.user.call("qoin_sendRawTransaction", raw)
    wait_until(
        lambda: node.user.call("qoin_getTransactionReceipt", sent),
        60,
        RPC_POLL_S,
        "the transfer to be mined",
    )
    return sent


@pytest.fixture(scope="module")
def client(node: Node, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with ui_client(node.user.url, node.rpc.url, tmp_path_factory.mktemp("web-explorer-ui")) as made:
        yield made


def test_home_shows_head_supply_and_recent_blocks(client: TestClient, node: Node) -> None:
    # The node mines on while the page renders: its head then lies between these two heights.
    before = node.user.call("qoin_blockNumber")
    page = client.get("/")
    after = node.user.call("qoin_blockNumber")
    assert page.status_code == 200, page.text
    assert "Recent blocks" in page.text and "Supply" in page.text
    assert any(f'href="/block/{h}"' in page.text for h in range(before, after + 1))
    assert "content-security-policy" in page.headers
    overview = client.get("/api/overview").json()
    assert overview["height"] >= after and overview["supply"]["supply"] > 0


def test_block_tx_and_account_pages(client: TestClient, node: Node, tx_id: str) -> None:
    receipt = node.user.call("qoin_getTransactionReceipt", tx_id)
    block = client.get(f"/block/{receipt['blockHeight']}")
    assert block.status_code == 200 and tx_id[:8] in block.text
    by_hash = client.get(f"/block/{receipt['blockHash']}")
    assert by_hash.status_code == 200 and receipt["blockHash"] in by_hash.text
    tx = client.get(f"/tx/{tx_id}")
    assert tx.status_code == 200 and "success" in tx.text and "1,234 Shor" in tx.text
    account = client.get(f"/account/{BOB.address}")
    assert account.status_code == 200 and "1,234 Shor" in account.text
    names = client.get("/contract/" + str(node.user.call("qoin_getBlockByNumber", 1)["miner"]))
    assert names.status_code == 200
    missing = client.get("/block/" + "ab" * 32, headers={"accept": "application/json"})
    assert missing.status_code == 404 and "error" in missing.json()
    assert client.get("/account/qoin1nonsense").status_code == 404


def test_search(client: TestClient, tx_id: str) -> None:
    found = client.get("/search", params={"q": "1"}, follow_redirects=False)
    assert found.status_code == 303 and found.headers["location"] == "/block/1"
    found = client.get("/search", params={"q": tx_id}, follow_redirects=False)
    assert found.headers["location"] == f"/tx/{tx_id}"
    found = client.get("/search", params={"q": str(BOB.address)}, follow_redirects=False)
    assert found.headers["location"] == f"/account/{BOB.address}"
    assert client.get("/search", params={"q": "no-such-name"}).status_code == 404


def test_live_heads_are_relayed(client: TestClient, node: Node) -> None:
    start = node.user.call("qoin_blockNumber")
    with client.websocket_connect(WS, headers={"origin": ORIGIN}) as socket:
        head = json.loads(socket.receive_text())
    assert head["height"] > start and len(head["hash"]) == 64


def test_heads_refused_to_another_origin(client: TestClient) -> None:
    with (
        pytest.raises(WebSocketDisconnect) as refused,
        client.websocket_connect(WS, headers={"origin": "http://evil.example"}) as socket,
    ):
        socket.receive_text()
    assert refused.value.code == 1008


def test_unknown_host_refused(client: TestClient) -> None:
    """DNS rebinding: a page of another name that resolves to 127.0.0.1 is refused."""
    assert client.get("/", headers={"host": "evil.example:8680"}).status_code == 421
