"""Security review fixes of the web UI and of ``consensus_setMining`` (no node needed): an unlocked
key is dropped once idle even if its browser never comes back; requests another site makes the
browser send (no cookie of ours) cannot push a real session out; the miner the RPC switches never
runs twice at once, keeps ``--blocks``' limit across restarts, and cannot be started once the node
is stopping."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.requests import Request
from starlette.routing import WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from qoin.chain.chain import Chain
from qoin.node.mining import MinedBlock, MiningControl, MiningLoop, MiningOff
from qoin.web.ui import MAX_SESSIONS, SESSION_COOKIE, UNLOCK_IDLE_S, Session, Ui
from tests.chainutil import test_genesis
from tests.framework import wait_until
from tests.keys import keypair_for
from tests.webutil import ORIGIN, ui_client


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    """The UI against no node at all (the pages used here never ask one)."""
    with ui_client("http://127.0.0.1:9/", None, tmp_path) as made:
        yield made


def session_of(client: TestClient) -> Session:
    page = client.get("/wallet")
    found = re.search(r'<meta name="qoin-session" content="([^"]+)">', page.text)
    assert found is not None
    cookie = f"{SESSION_COOKIE}={found[1]}".encode()
    ui: Ui = client.app.state.ui  # type: ignore[attr-defined]
    session = ui.session(Request({"type": "http", "headers": [(b"cookie", cookie)]}))
    assert session is not None
    return session


def test_an_idle_key_is_dropped_without_any_request(client: TestClient) -> None:
    ui: Ui = client.app.state.ui  # type: ignore[attr-defined]
    session = session_of(client)
    ui.unlock(session, keypair_for(index=1))
    assert session.keypair is not None
    session.unlocked_at -= UNLOCK_IDLE_S + 1  # as if unused for that long
    wait_until(lambda: session.keypair is None, 15, 0.1, "the idle key to be dropped")


def test_cross_site_requests_do_not_evict_a_real_session(client: TestClient) -> None:
    session = session_of(client)  # its cookie came back: a browser of ours holds it
    stranger = TestClient(client.app, base_url=ORIGIN)
    for _ in range(MAX_SESSIONS + 5):  # an <img> on another site: no cookie, a session each time
        stranger.get("/no-such-page")
        stranger.cookies.clear()
    assert session_of_token(client, session.token) is session


def session_of_token(client: TestClient, token: str) -> Session | None:
    ui: Ui = client.app.state.ui  # type: ignore[attr-defined]
    cookie = f"{SESSION_COOKIE}={token}".encode()
    return ui.session(Request({"type": "http", "headers": [(b"cookie", cookie)]}))


def test_mining_control_limit_restart_and_close(tmp_path: Path) -> None:
    chain = Chain.open(tmp_path, test_genesis())
    mined: list[MinedBlock] = []
    control = MiningControl(
        lambda: MiningLoop(chain, keypair_for(index=1), 1, block_interval_ms=300),
        mined.append,
        lambda _: None,
    )
    try:
        assert control.start(3)  # --mine --blocks 3
        assert control.start() is False  # already running
        wait_until(lambda: control.blocks_mined >= 1, 60, 0.02)
        assert control.stop()  # SIGUSR1 or consensus_setMining(false)
        assert not control.active and not control.ended.is_set()
        assert control.start()  # consensus_setMining(true): the rest of the 3, not forever
        wait_until(control.ended.is_set, 60, 0.05, "the miner to end after --blocks")
        wait_until(lambda: not control.active, 30, 0.05)
        assert control.blocks_mined == 3 == len(mined)
        control.close()
        with pytest.raises(MiningOff, match="stopping"):
            control.start()
        assert not control.active
    finally:
        control.close()
        chain.close()


def test_every_state_changing_route_wants_the_token_and_our_origin(client: TestClient) -> None:
    """Every POST route (the ones added later too) refuses a request without the session token,
    or with it from another origin, before it reads a body or asks the node; every WebSocket
    route refuses another origin."""
    token = session_of(client).token
    routes = client.app.routes  # type: ignore[attr-defined]
    posts = [r for r in routes if "POST" in (getattr(r, "methods", None) or ())]
    assert len(posts) >= 10
    for route in posts:
        path = re.sub(r"\{[^}]+\}", "x", route.path)
        for headers in (
            {"origin": ORIGIN},
            {"origin": "http://evil.example", "x-qoin-session": token},
            {"x-qoin-session": token},  # no origin at all
        ):
            answer = client.post(path, content=b"{}", headers=headers)
            assert answer.status_code == 403, (path, headers, answer.text)
    sockets = [r for r in routes if isinstance(r, WebSocketRoute)]
    assert sockets
    evil = {"origin": "http://evil.example"}
    for socket in sockets:
        with (
            pytest.raises(WebSocketDisconnect),
            client.websocket_connect(socket.path, headers=evil),
        ):
            pass
