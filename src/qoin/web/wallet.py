"""The wallet: create or import a keystore into the keystore directory, unlock one for the session
(the password opens the keystore once and is dropped; the key stays in this process's memory for
the session until it is locked or idle, see :mod:`qoin.web.ui`), lock, the balance, send a
transfer with the fee shown first, and the history of the session's account from recent blocks.

Pages are GETs; every action is a POST under ``/api/wallet/`` with the session token
(:meth:`~qoin.web.ui.Ui.require_session`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from qoin.chain.transaction import sign_transfer
from qoin.crypto import keystore
from qoin.crypto.address import Address, AddressError
from qoin.crypto.hybrid import HybridKeyPair, generate_keypair
from qoin.execution.vm import MAX_BALANCE
from qoin.web.explorer import ask, maybe
from qoin.web.ui import Session, Ui

HISTORY_BLOCKS = 200
"""How many recent blocks the history looks through."""
MIN_PASSWORD = 8
"""The shortest password a new keystore may have."""
MAX_PASSWORD = 1024


@dataclass(frozen=True)
class Entry:
    """One line of an account's history."""

    height: int
    tx: str | None
    """The transaction's hash (None: a coinbase payment)."""
    kind: str
    """``sent``, ``received`` or ``mined``."""
    counterparty: str
    amount: int
    fee: int


def _text(body: dict[str, Any], key: str, limit: int = 200) -> str:
    value = body.get(key)
    if not isinstance(value, str) or len(value) > limit:
        raise HTTPException(400, f"'{key}' must be a text of at most {limit} characters")
    return value


def _password(body: dict[str, Any]) -> str:
    password = _text(body, "password", MAX_PASSWORD)
    if not password:
        raise HTTPException(400, "give the keystore's password")
    return password


def _address(text: str, what: str) -> Address:
    try:
        return Address.from_text(text.strip())
    except AddressError as exc:
        raise HTTPException(400, f"{what}: {exc}") from None


def history(ui: Ui, address: Address, blocks: int = HISTORY_BLOCKS) -> list[Entry]:
    """What ``address`` sent, received and mined in the last ``blocks`` canonical blocks, newest
    first."""
    mine = str(address)
    head = ask(ui.rpc, "qoin_blockNumber")
    found: list[Entry] = []
    for height in range(head, max(-1, head - blocks), -1):
        block = maybe(ui.rpc, "qoin_getBlockByNumber", height)
        if not isinstance(block, dict):
            continue
        for pay in block.get("coinbase") or ():
            if pay.get("to") == mine and pay.get("amount"):
                found.append(Entry(height, None, "mined", "coinbase", pay["amount"], 0))
        for tx in block.get("transactions") or ():
            amount = tx.get("amount", tx.get("value", 0))
            fee = tx.get("fee", tx.get("gasLimit", 0) * tx.get("feePerGas", 0))
            if tx.get("from") == mine:
                found.append(Entry(height, tx["hash"], "sent", tx.get("to", ""), amount, fee))
            elif tx.get("to") == mine:
                found.append(Entry(height, tx["hash"], "received", tx.get("from", ""), amount, 0))
    return found


def wallet_page(ui: Ui, request: Request) -> Response:
    session = ui.session(request)
    address = None if session is None else session.address
    account = fee = entries = None
    if address is not None:
        account = maybe(ui.rpc, "qoin_getAccount", str(address))
        fee = maybe(ui.rpc, "qoin_estimateFee")
        entries = history(ui, address)
    return ui.render(
        request,
        "wallet.html",
        keystores=ui.keystores(),
        account=account,
        fee=fee,
        history=entries,
        history_blocks=HISTORY_BLOCKS,
        sent=(session.data.get("sent", []) if session else []),
    )


async def create(
    ui: Ui, request: Request, session: Session, body: dict[str, Any]
) -> dict[str, Any]:
    password = _password(body)
    if len(password) < MIN_PASSWORD:
        raise HTTPException(400, f"choose a password of at least {MIN_PASSWORD} characters")
    if body.get("confirm") != password:
        raise HTTPException(400, "the two passwords differ")

    def make() -> HybridKeyPair:
        keypair = generate_keypair()
        encrypted = keystore.encrypt_keypair(keypair, password)
        keystore.save(encrypted, ui.keystore_path(keypair.address))
        return keypair

    try:
        keypair = await run_in_threadpool(make)
    except keystore.KeystoreError as exc:
        raise HTTPException(400, str(exc)) from None
    ui.unlock(session, keypair)
    path = ui.keystore_path(keypair.address)
    return {
        "address": str(keypair.address),
        "message": f"created {keypair.address}, saved to {path}: back this file up",
        "reload": True,
    }


async def import_keystore(
    ui: Ui, request: Request, session: Session, body: dict[str, Any]
) -> dict[str, Any]:
    text = _text(body, "keystore", keystore.MAX_KEYSTORE_FILE_SIZE)
    password = _password(body)
    try:
        store = keystore.from_json(json.loads(text))
    except (ValueError, RecursionError):
        raise HTTPException(400, "that is not a JSON keystore") from None
    except keystore.KeystoreError as exc:
        raise HTTPException(400, str(exc)) from None
    try:
        keypair = await run_in_threadpool(keystore.decrypt_keypair, store, password)
    except keystore.KeystoreError as exc:
        raise HTTPException(400, str(exc)) from None
    path = ui.keystore_path(store.address)
    if not path.exists():
        try:
            keystore.save(store, path)
        except keystore.KeystoreError as exc:
            raise HTTPException(400, str(exc)) from None
    ui.unlock(session, keypair)
    return {"address": str(store.address), "message": f"imported {store.address}", "reload": True}


async def unlock(
    ui: Ui, request: Request, session: Session, body: dict[str, Any]
) -> dict[str, Any]:
    address = _address(_text(body, "address"), "address")
    password = _password(body)
    path = ui.keystore_path(address)
    if not path.is_file():
        raise HTTPException(404, f"no keystore for {address} in {ui.config.keystore_dir}")
    try:
        store = keystore.load(path)
        keypair = await run_in_threadpool(keystore.decrypt_keypair, store, password)
    except keystore.WrongPassword:
        raise HTTPException(403, "wrong password") from None
    except keystore.KeystoreError as exc:
        raise HTTPException(400, str(exc)) from None
    ui.unlock(session, keypair)
    return {"address": str(address), "message": f"unlocked {address}", "reload": True}


async def lock(ui: Ui, request: Request, session: Session, body: dict[str, Any]) -> dict[str, Any]:
    ui.lock(session)
    return {"message": "locked", "reload": True}


def _amount(body: dict[str, Any]) -> int:
    value = body.get("amount")
    text = str(value).replace(",", "").replace("_", "").strip()
    if not text.isdigit() or len(text) > 30 or not 0 < int(text) <= MAX_BALANCE:
        raise HTTPException(400, "the amount is a whole number of Shor above 0")
    return int(text)


def _send(ui: Ui, keypair: HybridKeyPair, to: Address, amount: int) -> dict[str, Any]:
    chain_id = ask(ui.rpc, "qoin_chainId")
    fee = ask(ui.rpc, "qoin_estimateFee")["fee"]
    account = ask(ui.rpc, "qoin_getAccount", str(keypair.address))
    if account["balance"] < amount + fee:
        raise HTTPException(
            400, f"the balance {account['balance']:,} Shor is less than {amount + fee:,} Shor"
        )
    tx = sign_transfer(
        keypair,
        chain_id=chain_id,
        nonce=account["nextNonce"],
        recipient=to,
        amount=amount,
        fee=fee,
        reveal_keys=not account["publicKeysRevealed"],
    )
    tx_id = ask(ui.rpc, "qoin_sendRawTransaction", tx.encode().hex())
    return {"txId": tx_id, "fee": fee}


async def send(ui: Ui, request: Request, session: Session, body: dict[str, Any]) -> dict[str, Any]:
    keypair = ui.unlocked(request)
    to = _address(_text(body, "to"), "recipient")
    amount = _amount(body)
    sent = await run_in_threadpool(_send, ui, keypair, to, amount)
    session.data.setdefault("sent", []).append(sent["txId"])
    del session.data["sent"][:-20]
    return {
        **sent,
        "message": f"sent {amount:,} Shor to {to} (fee {sent['fee']:,} Shor): "
        f"transaction {sent['txId']}",
        "redirect": f"/tx/{sent['txId']}",
    }


async def fee(ui: Ui, request: Request, session: Session, body: dict[str, Any]) -> dict[str, Any]:
    estimate = await run_in_threadpool(ask, ui.rpc, "qoin_estimateFee")
    return {"fee": estimate["fee"], "message": f"fee {estimate['fee']:,} Shor"}


def routes(ui: Ui) -> list[BaseRoute]:
    """The wallet's page and actions."""
    post = ["POST"]
    return [
        Route("/wallet", ui.page(wallet_page)),
        Route("/api/wallet/create", ui.action(create), methods=post),
        Route("/api/wallet/import", ui.action(import_keystore), methods=post),
        Route("/api/wallet/unlock", ui.action(unlock), methods=post),
        Route("/api/wallet/lock", ui.action(lock), methods=post),
        Route("/api/wallet/send", ui.action(send), methods=post),
        Route("/api/wallet/fee", ui.action(fee), methods=post),
    ]
