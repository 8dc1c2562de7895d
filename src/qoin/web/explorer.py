"""The explorer: the home page (head, supply, mining figures, recent blocks updating live), block,
transaction, account and contract pages with their events, and search by height, hash, address or
name. Read-only: every page is a GET over the node's user RPC (and the consensus RPC's status when
known)."""

from __future__ import annotations

import re
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from qoin.crypto.address import Address, AddressError
from qoin.rpc.client import RpcCallError, RpcClient
from qoin.web.ui import Ui

RECENT_BLOCKS = 12
"""Blocks listed on the home page."""
LIVE_ROWS = 30
"""Rows the home page's live blocks table keeps (and fills, when heads arrive merged)."""
EVENT_BLOCKS = 5_000
"""How far back an account page looks for events (blocks)."""
MAX_EVENTS = 100
"""Events shown on a page."""
HEX64 = re.compile(r"^(0x)?[0-9a-fA-F]{64}$")


def ask(client: RpcClient | None, method: str, *params: Any) -> Any:
    """``method(params)`` on ``client``; HTTP 502 naming the problem if the node cannot answer
    (HTTP 404 for a -32602 invalid parameter: a malformed hash or address in a URL)."""
    if client is None:
        raise HTTPException(503, "this UI was started without the consensus client's RPC")
    try:
        return client.call(method, *params)
    except RpcCallError as exc:
        if exc.code == -32602:
            raise HTTPException(404, f"not found: {exc}") from None
        raise HTTPException(502, f"the node did not answer: {exc}") from None


def maybe(client: RpcClient | None, method: str, *params: Any) -> Any:
    """``method(params)`` or None when the node cannot answer (optional figures)."""
    if client is None:
        return None
    try:
        return client.call(method, *params)
    except RpcCallError:
        return None


def recent_blocks(ui: Ui, head: int, count: int = RECENT_BLOCKS) -> list[dict[str, Any]]:
    """The last ``count`` canonical blocks, newest first (their raw encodings dropped)."""
    blocks = []
    for height in range(head, max(-1, head - count), -1):
        block = maybe(ui.rpc, "qoin_getBlockByNumber", height)
        if isinstance(block, dict):
            block.pop("raw", None)
            blocks.append(block)
    return blocks


def overview(ui: Ui) -> dict[str, Any]:
    """What the home page and ``/api/overview`` show: head, supply, mining and network."""
    head = ask(ui.rpc, "qoin_blockNumber")
    return {
        "height": head,
        "supply": maybe(ui.rpc, "qoin_supply"),
        "fee": maybe(ui.rpc, "qoin_estimateFee"),
        "chainId": maybe(ui.rpc, "qoin_chainId"),
        "consensus": maybe(ui.consensus, "consensus_status"),
    }


def home(ui: Ui, request: Request) -> Response:
    info = overview(ui)
    return ui.render(
        request, "explorer_home.html", info=info, blocks=recent_blocks(ui, info["height"])
    )


def overview_json(ui: Ui, request: Request) -> Response:
    info = overview(ui)
    info["blocks"] = recent_blocks(ui, info["height"], 1)
    return JSONResponse(info)


def block_summary(block: dict[str, Any]) -> dict[str, Any]:
    """What the live blocks table shows of a block (the fields of a ``newHeads`` notification)."""
    transactions = block.get("transactions")
    return {
        "height": block.get("height"),
        "hash": block.get("hash"),
        "miner": block.get("miner"),
        "timestampMs": block.get("timestampMs"),
        "transactionCount": len(transactions) if isinstance(transactions, list) else None,
    }


def blocks_json(ui: Ui, request: Request) -> Response:
    """``GET /api/blocks?from=A&to=B``: the canonical blocks A..B (at most :data:`LIVE_ROWS`, the
    newest kept when more are asked), oldest first — what the home page fetches to fill the heights
    between two heads that arrived merged."""
    try:
        low = int(request.query_params.get("from", ""))
        high = int(request.query_params.get("to", ""))
    except ValueError:
        raise HTTPException(400, "from and to are block heights") from None
    if not 0 <= low <= high:
        raise HTTPException(400, "from and to are heights with from <= to")
    low = max(low, high - LIVE_ROWS + 1)
    found = []
    for height in range(low, high + 1):
        block = maybe(ui.rpc, "qoin_getBlockByNumber", height)
        if isinstance(block, dict):
            found.append(block_summary(block))
    return JSONResponse({"blocks": found})


def block_page(ui: Ui, request: Request) -> Response:
    key = request.path_params["key"]
    if key.isdigit():
        block = ask(ui.rpc, "qoin_getBlockByNumber", int(key))
    elif HEX64.match(key):
        block = ask(ui.rpc, "qoin_getBlockByHash", key.removeprefix("0x"))
    else:
        raise HTTPException(404, f"{key[:80]!r} is neither a height nor a block hash")
    if not isinstance(block, dict):
        raise HTTPException(404, f"no block {key[:80]}")
    block.pop("raw", None)
    head = ask(ui.rpc, "qoin_blockNumber")
    return ui.render(request, "explorer_block.html", block=block, head=head)


def tx_page(ui: Ui, request: Request) -> Response:
    key = request.path_params["key"]
    if not HEX64.match(key):
        raise HTTPException(404, f"{key[:80]!r} is not a transaction hash")
    tx = ask(ui.rpc, "qoin_getTransactionByHash", key.removeprefix("0x"))
    if not isinstance(tx, dict):
        raise HTTPException(404, f"no transaction {key[:80]}")
    tx.pop("raw", None)
    receipt = ask(ui.rpc, "qoin_getTransactionReceipt", key.removeprefix("0x"))
    return ui.render(request, "explorer_tx.html", tx=tx, receipt=receipt)


def account_events(ui: Ui, address: str, head: int) -> list[dict[str, Any]]:
    """The latest events emitted by ``address`` (a contract or actor), newest first."""
    found = maybe(
        ui.rpc,
        "qoin_getLogs",
        {"fromBlock": max(0, head - EVENT_BLOCKS + 1), "toBlock": head, "address": address},
    )
    logs = found if isinstance(found, list) else []
    return list(reversed(logs[-MAX_EVENTS:]))


def account_page(ui: Ui, request: Request) -> Response:
    key = request.path_params["key"]
    try:
        address = str(Address.from_text(key))
    except AddressError as exc:
        raise HTTPException(404, str(exc)) from None
    head = ask(ui.rpc, "qoin_blockNumber")
    account = ask(ui.rpc, "qoin_getAccount", address)
    code = maybe(ui.rpc, "qoin_getCode", address)
    return ui.render(
        request,
        "explorer_account.html",
        account_address=address,
        account=account,
        code_size=len(code) // 2 if isinstance(code, str) else None,
        events=account_events(ui, address, head),
        head=head,
    )


def search_target(ui: Ui, query: str) -> str:
    """Where a search for ``query`` leads: a block (height or hash), a transaction (hash), an
    account (address) or a name (its site, or the account it names); HTTP 404 if nothing."""
    text = query.strip()
    if text.isdigit():
        return f"/block/{int(text)}"
    if HEX64.match(text):
        hex_hash = text.removeprefix("0x").lower()
        if maybe(ui.rpc, "qoin_getBlockByHash", hex_hash):
            return f"/block/{hex_hash}"
        if maybe(ui.rpc, "qoin_getTransactionByHash", hex_hash):
            return f"/tx/{hex_hash}"
        raise HTTPException(404, f"no block or transaction has the hash {hex_hash}")
    if text.startswith("qoin1"):
        try:
            return f"/account/{Address.from_text(text)}"
        except AddressError as exc:
            raise HTTPException(404, str(exc)) from None
    return name_target(ui, text.lower())


def name_target(ui: Ui, name: str) -> str:
    """Where a name leads: its site (the name resolves to a content id)."""
    from qoin import sites  # noqa: PLC0415 (the site library: only for names)

    try:
        entry = sites.resolve(ui.rpc, name)
    except sites.SiteNotFound:
        raise HTTPException(404, f"nothing matches {name[:80]!r}") from None
    except sites.SiteError as exc:
        raise HTTPException(404, f"{name[:80]!r}: {exc}") from None
    return f"/site/{entry.name}/"


def search(ui: Ui, request: Request) -> Response:
    query = request.query_params.get("q", "")[:200]
    if not query.strip():
        return RedirectResponse("/", 303)
    return RedirectResponse(search_target(ui, query), 303)


def routes(ui: Ui) -> list[BaseRoute]:
    """The explorer's pages."""

    return [
        Route("/", ui.page(home)),
        Route("/api/overview", ui.page(overview_json)),
        Route("/api/blocks", ui.page(blocks_json)),
        Route("/block/{key}", ui.page(block_page)),
        Route("/tx/{key}", ui.page(tx_page)),
        Route("/account/{key}", ui.page(account_page)),
        Route("/contract/{key}", ui.page(account_page)),
        Route("/search", ui.page(search)),
    ]
