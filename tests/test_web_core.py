"""The web UI's security rules and wallet against a real node: state-changing requests without the
session token, or from another origin, are refused; bodies are bounded; the session cookie is
HttpOnly and SameSite=Strict; a wallet created, unlocked and used through the UI never writes its
password anywhere; a transfer sent from the UI is mined; ``qoin node`` starts the UI and prints its
URL."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from qoin.crypto import keystore
from qoin.web.ui import MAX_BODY, SESSION_COOKIE, SESSION_HEADER
from tests.framework import FUNDED, RPC_POLL_S, SUPERVISOR, Network, Node, wait_until
from tests.keys import keypair_for
from tests.webutil import ORIGIN, mining_node, ui_client

PASSWORD = "correct horse battery staple 42"
BOB = keypair_for(index=4)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    with mining_node(tmp_path_factory.mktemp("web-core")) as made:
        yield made


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The UI's keystore and data directories; FUNDED's keystore in it (cheap scrypt)."""
    made = tmp_path_factory.mktemp("web-core-ui")
    store = keystore.encrypt_keypair(FUNDED, PASSWORD, keystore.MIN_SCRYPT_LOG_N)
    keystore.save(store, made / "keystore" / f"{FUNDED.address}.json")
    return made


@pytest.fixture(scope="module")
def app_client(node: Node, home: Path) -> Iterator[TestClient]:
    with ui_client(node.user.url, node.rpc.url, home) as made:
        yield made


def token_of(client: TestClient) -> str:
    """Load a page (a session is made) and read the token it carries."""
    page = client.get("/wallet")
    assert page.status_code == 200, page.text
    found = re.search(r'<meta name="qoin-session" content="([^"]+)">', page.text)
    assert found is not None
    return found[1]


def post(
    client: TestClient, path: str, body: object, token: str | None, origin: str | None = ORIGIN
) -> httpx.Response:
    headers = {} if token is None else {SESSION_HEADER: token}
    if origin is not None:
        headers["origin"] = origin
    return client.post(path, json=body, headers=headers)


def test_session_cookie_and_headers(app_client: TestClient) -> None:
    fresh = TestClient(app_client.app, base_url=ORIGIN)
    page = fresh.get("/wallet")
    cookie = page.headers["set-cookie"].lower()
    assert f"{SESSION_COOKIE}=" in cookie and "httponly" in cookie and "samesite=strict" in cookie
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert page.headers["x-content-type-options"] == "nosniff"


def test_forged_requests_are_refused(app_client: TestClient) -> None:
    token = token_of(app_client)
    body = {"address": str(FUNDED.address), "password": "x"}
    assert post(app_client, "/api/wallet/unlock", body, None).status_code == 403
    assert post(app_client, "/api/wallet/unlock", body, "0" * 43).status_code == 403
    evil = post(app_client, "/api/wallet/unlock", body, token, "http://evil.example")
    assert evil.status_code == 403 and "origin" in evil.json()["error"]
    assert post(app_client, "/api/wallet/unlock", body, token, origin=None).status_code == 403
    # Another browser (no cookie of ours) with a stolen token is refused too.
    stranger = TestClient(app_client.app, base_url=ORIGIN)
    assert post(stranger, "/api/wallet/lock", {}, token).status_code == 403
    # The real page's request gets through (and the wrong password is refused as such).
    wrong = post(app_client, "/api/wallet/unlock", body, token)
    assert wrong.status_code == 403 and wrong.json()["error"] == "wrong password"
    # A GET never changes state.
    assert app_client.get("/api/wallet/lock").status_code == 405


def test_bodies_are_bounded(app_client: TestClient) -> None:
    token = token_of(app_client)
    big = app_client.post(
        "/api/wallet/import",
        content=b"x" * (MAX_BODY + 1),
        headers={SESSION_HEADER: token, "origin": ORIGIN, "content-type": "application/json"},
    )
    assert big.status_code == 413


def test_wallet_create_unlock_send_never_writes_the_password(
    app_client: TestClient, node: Node, home: Path
) -> None:
    token = token_of(app_client)
    created = post(
        app_client, "/api/wallet/create", {"password": PASSWORD, "confirm": PASSWORD}, token
    )
    assert created.status_code == 200, created.text
    address = created.json()["address"]
    assert (home / "keystore" / f"{address}.json").is_file()
    assert address in app_client.get("/wallet").text  # unlocked for the session
    assert post(app_client, "/api/wallet/lock", {}, token).status_code == 200
    locked = post(app_client, "/api/wallet/send", {"to": str(BOB.address), "amount": 5}, token)
    assert locked.status_code == 403 and "locked" in locked.json()["error"]

    unlocked = post(
        app_client,
        "/api/wallet/unlock",
        {"address": str(FUNDED.address), "password": PASSWORD},
        token,
    )
    assert unlocked.status_code == 200, unlocked.text
    sent = post(app_client, "/api/wallet/send", {"to": str(BOB.address), "amount": "777"}, token)
    assert sent.status_code == 200, sent.text
    tx_id = sent.json()["txId"]
    wait_until(
        lambda: node.user.call("qoin_getTransactionReceipt", tx_id),
        60,
        RPC_POLL_S,
        "the UI's transfer to be mined",
    )
    assert node.user.call("qoin_getBalance", str(BOB.address)) == 777
    page = app_client.get("/wallet")
    assert tx_id[:6] in page.text and "sent" in page.text
    for path in home.rglob("*"):
        if path.is_file():
            assert PASSWORD.encode() not in path.read_bytes(), path


def test_pages_render_at_a_real_node(app_client: TestClient) -> None:
    for path in ("/", "/wallet", "/mining", "/static/qoin.css", "/static/qoin.js"):
        assert app_client.get(path).status_code == 200, path


def test_set_mining_over_rpc_and_ui(app_client: TestClient, node: Node) -> None:
    """``consensus_setMining`` stops and starts the miner; the UI's switch calls it."""
    wait_until(lambda: node.rpc.call("consensus_status")["mining"]["blocksMined"] > 0, 60, 0.2)
    stopped = node.rpc.call("consensus_setMining", False)
    assert stopped["changed"] and not stopped["active"]
    height = node.user.call("qoin_blockNumber")
    assert node.rpc.call("consensus_setMining", False)["changed"] is False
    page = app_client.get("/mining")
    assert "Start mining" in page.text and "Blocks mined" in page.text
    token = token_of(app_client)
    assert post(app_client, "/api/mining/set", {"on": "true"}, None).status_code == 403
    started = post(app_client, "/api/mining/set", {"on": "true"}, token)
    assert started.status_code == 200 and started.json()["active"], started.text
    wait_until(lambda: node.user.call("qoin_blockNumber") > height, 60, RPC_POLL_S)
    status = app_client.get("/api/mining/status").json()
    assert status["mining"]["active"] and status["mining"]["blocksMined"] > 0


def test_the_consensus_rpc_refuses_browsers(node: Node) -> None:
    """Any page the user visits could otherwise switch mining (or dial peers) with a cross-site
    POST that needs no preflight, or after rebinding its name to 127.0.0.1."""
    active = node.rpc.call("consensus_status")["mining"]["active"]
    call = {"jsonrpc": "2.0", "id": 1, "method": "consensus_setMining", "params": [not active]}
    for browser in ({"origin": "http://evil.example"}, {"sec-fetch-site": "same-origin"}):
        headers = {"content-type": "text/plain", **browser}
        answer = httpx.post(node.rpc.url, content=json.dumps(call), headers=headers, timeout=30)
        assert answer.status_code == 401 and "browsers" in answer.text, answer.text
    assert node.rpc.call("consensus_status")["mining"]["active"] == active


@pytest.mark.slow
def test_node_starts_the_ui(net: Network) -> None:
    node = net.add("dev")
    node.start_supervisor("--dev", "--rpc-port", "0", "--ui-port", "0")
    url = node.child(SUPERVISOR).wait_for(r"web UI: (http://\S+)", 60)[1][1]
    page = httpx.get(url, timeout=30)
    assert page.status_code == 200 and "Explorer" in page.text
