"""Mining and network: peers, the miner's rate in attempts per second, blocks mined and side blocks,
and a start/stop switch (``consensus_setMining``), from the consensus client's RPC."""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from qoin.web.explorer import ask, maybe
from qoin.web.ui import Session, Ui


def mining_page(ui: Ui, request: Request) -> Response:
    status = maybe(ui.consensus, "consensus_status")
    return ui.render(request, "mining.html", status=status, supply=maybe(ui.rpc, "qoin_supply"))


def status_json(ui: Ui, request: Request) -> Response:
    status = ask(ui.consensus, "consensus_status")
    p2p = status.get("p2p") or {}
    return JSONResponse(
        {
            "height": status.get("height"),
            "head": status.get("head"),
            "mining": status.get("mining"),
            "peers": len(p2p.get("peers") or ()),
        }
    )


async def set_mining(
    ui: Ui, request: Request, session: Session, body: dict[str, Any]
) -> dict[str, Any]:
    on = body.get("on")
    if isinstance(on, str):
        on = {"true": True, "false": False}.get(on)
    if not isinstance(on, bool):
        raise HTTPException(400, "'on' is true or false")
    answer = await run_in_threadpool(ask, ui.consensus, "consensus_setMining", on)
    return {**answer, "message": "mining started" if on else "mining stopped", "reload": True}


def routes(ui: Ui) -> list[BaseRoute]:
    """The mining and network page and its switch."""
    return [
        Route("/mining", ui.page(mining_page)),
        Route("/api/mining/status", ui.page(status_json)),
        Route("/api/mining/set", ui.action(set_mining), methods=["POST"]),
    ]
