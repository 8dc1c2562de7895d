"""A wallet for programs: sign and send call transactions for one keypair, read calls without one.

Daemons (the storage provider), clients (``qoin storage put``) and tests talk to a node's user RPC
through one :class:`Wallet`: it estimates gas (``qoin_estimateGas``, so a call that would revert is
refused before it costs anything, with the node's reason), asks the fee per gas
(``qoin_estimateFee``), keeps the account's next nonce itself (re-read from the node after any
error, so a lost transaction never wedges it), reveals the public keys with the account's first
transaction, and waits for receipts with a time bound. Reads (``qoin_call``) are :func:`query`.

The CLI's one-off commands (``qoin contract call``) keep their own flow with prompts and spinners;
both sign with :func:`qoin.chain.transaction.sign_call`.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from qoin.chain.transaction import AnyTransaction, sign_call, sign_transfer
from qoin.crypto.address import Address
from qoin.crypto.hybrid import HybridKeyPair
from qoin.errors import QoinError
from qoin.execution.abi import Value, encode_call
from qoin.rpc.client import RpcCallError, RpcClient

GAS_FACTOR = 1.25
"""A transaction's gas limit is the node's estimate times this, plus :data:`GAS_MARGIN`: state can
move between the estimate and the block (the estimate runs on the head)."""
GAS_MARGIN = 20_000
NONCE_RETRIES = 3
"""Times a transaction is signed anew when another sender of the account took its nonce."""
RECEIPT_POLL_S = 0.1
"""How often :meth:`Wallet.wait` asks for a receipt."""
DEFAULT_TIMEOUT_S = 60.0
"""How long one RPC call may take."""


class WalletError(QoinError):
    """The node could not be asked, answered something unexpected, or a wait timed out."""


class CallReverted(WalletError):
    """A call did not succeed (estimate, read or mined transaction); :attr:`reason` says why."""

    def __init__(self, method: str, status: str, reason: str) -> None:
        super().__init__(f"{method}: {status}: {reason}")
        self.status = status
        """``reverted``, ``outOfGas`` or ``failed``."""
        self.reason = reason
        """The callee's reason."""


def _int(answer: Any, key: str, method: str) -> int:
    value = answer.get(key) if isinstance(answer, dict) else answer if key == "" else None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise WalletError(f"{method} answered no usable {key or 'number'}: {answer!r:.200}")
    return value


def _request(sender: Address | None, to: Address, value: int, data: bytes) -> dict[str, Any]:
    request: dict[str, Any] = {"to": str(to), "value": value, "data": data.hex()}
    if sender is not None:
        request["from"] = str(sender)
    return request


def _ask(client: RpcClient, method: str, *params: Any) -> Any:
    try:
        return client.call(method, *params)
    except RpcCallError as exc:
        raise WalletError(str(exc)) from None


def _returned(answer: Any, method: str) -> bytes:
    if not isinstance(answer, dict):
        raise WalletError(f"qoin_call answered {answer!r:.200}")
    status = str(answer.get("status"))
    if status != "success":
        raise CallReverted(method, status, str(answer.get("reason") or "no reason given"))
    try:
        return bytes.fromhex(str(answer.get("returnData") or ""))
    except ValueError:
        raise WalletError("qoin_call answered return data that is not hex") from None


def query(
    url: str | RpcClient,
    to: Address,
    method: str,
    args: Sequence[Value] = (),
    *,
    value: int = 0,
    sender: Address | None = None,
) -> bytes:
    """Run ``to.method(args)`` read-only on the node's head (``qoin_call``); its return data.
    :class:`CallReverted` with the callee's reason if it does not succeed."""
    request = _request(sender, to, value, encode_call(method, args))
    if isinstance(url, RpcClient):
        return _returned(_ask(url, "qoin_call", request), method)
    with RpcClient(url, timeout=DEFAULT_TIMEOUT_S) as client:
        return _returned(_ask(client, "qoin_call", request), method)


def balance(client: RpcClient, address: Address) -> int:
    """``address``'s balance on the node's head."""
    return _int(_ask(client, "qoin_getAccount", str(address)), "balance", "balance")


class Wallet:
    """Sends call transactions for ``keypair`` through the node at ``url`` (thread-safe: one
    transaction is prepared at a time, so nonces never collide)."""

    def __init__(self, url: str, keypair: HybridKeyPair, *, timeout: float = DEFAULT_TIMEOUT_S):
        self.url = url
        self.keypair = keypair
        self.address = keypair.address
        """The account that signs and pays."""
        self.client = RpcClient(url, timeout=timeout)
        """The node's user RPC."""
        self.chain_id = _int(_ask(self.client, "qoin_chainId"), "", "qoin_chainId")
        """The network's chain id (asked once)."""
        self._lock = threading.Lock()
        self._nonce: int | None = None
        self._revealed = False

    def close(self) -> None:
        """Close the connection to the node."""
        self.client.close()

    def __enter__(self) -> Wallet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def balance(self) -> int:
        """The account's balance on the node's head."""
        return balance(self.client, self.address)

    def query(
        self, to: Address, method: str, args: Sequence[Value] = (), *, value: int = 0
    ) -> bytes:
        """:func:`query` from this account."""
        return query(self.client, to, method, args, value=value, sender=self.address)

    def estimate(self, to: Address, method: str, args: Sequence[Value], value: int) -> int:
        """The gas limit to send ``to.method(args)`` with (the estimate with a margin, at most the
        block's); :class:`CallReverted` with the reason if the call would not succeed now."""
        request = _request(self.address, to, value, encode_call(method, args))
        try:
            answer = self.client.call("qoin_estimateGas", request)
        except RpcCallError as exc:
            if exc.code is None:
                raise WalletError(str(exc)) from None
            raise CallReverted(method, "refused", str(exc)) from None
        estimate = _int(answer, "gas", "qoin_estimateGas")
        limit = _int(answer, "blockGasLimit", "qoin_estimateGas")
        return max(estimate, min(math.ceil(estimate * GAS_FACTOR) + GAS_MARGIN, limit))

    def _submit(self, build: Callable[[int, bool], AnyTransaction]) -> str:
        """Sign with the next nonce (``build(nonce, reveal_keys)``) and submit; the id (hex).
        When another sender of the same account took the nonce (the node answers
        ``NonceTooLow``), the nonce is read again and the transaction signed anew, up to
        :data:`NONCE_RETRIES` times."""
        with self._lock:
            retries = NONCE_RETRIES
            while True:
                if self._nonce is None:
                    account = _ask(self.client, "qoin_getAccount", str(self.address))
                    self._nonce = _int(account, "nextNonce", "qoin_getAccount")
                    self._revealed = account.get("publicKeysRevealed") is True
                tx = build(self._nonce, not self._revealed)
                try:
                    tx_id = _ask(self.client, "qoin_sendRawTransaction", tx.encode().hex())
                except WalletError as exc:
                    self._nonce = None  # re-read: the node knows what it has
                    if retries and "NonceTooLow" in str(exc):
                        retries -= 1
                        continue
                    raise
                self._nonce += 1
                self._revealed = True
                return str(tx_id)

    def pay(self, to: Address, amount: int) -> str:
        """Sign and submit a plain transfer of ``amount`` Shor to ``to``; the transaction id."""
        fee = _int(_ask(self.client, "qoin_estimateFee"), "fee", "qoin_estimateFee")
        return self._submit(
            lambda nonce, reveal: sign_transfer(
                self.keypair,
                chain_id=self.chain_id,
                nonce=nonce,
                recipient=to,
                amount=amount,
                fee=fee,
                reveal_keys=reveal,
            )
        )

    def send(
        self,
        to: Address,
        method: str,
        args: Sequence[Value] = (),
        *,
        value: int = 0,
        gas: int | None = None,
    ) -> str:
        """Sign and submit ``to.method(args)`` moving ``value``; returns the transaction id (hex).
        :class:`CallReverted` if the estimate says it would fail; :class:`WalletError` if the node
        refuses it (the nonce is then re-read from the node)."""
        limit = gas if gas is not None else self.estimate(to, method, args, value)
        rate = _int(_ask(self.client, "qoin_estimateFee", limit), "feePerGas", "qoin_estimateFee")
        data = encode_call(method, args)
        return self._submit(
            lambda nonce, reveal: sign_call(
                self.keypair,
                chain_id=self.chain_id,
                nonce=nonce,
                to=to,
                data=data,
                gas_limit=limit,
                fee_per_gas=rate,
                value=value,
                reveal_keys=reveal,
            )
        )

    def wait(self, tx_id: str, timeout: float = 120.0) -> dict[str, Any]:
        """The receipt of ``tx_id`` once mined; :class:`WalletError` after ``timeout`` seconds
        (the transaction may still be mined later)."""
        deadline = time.monotonic() + timeout
        while True:
            receipt = _ask(self.client, "qoin_getTransactionReceipt", tx_id)
            if isinstance(receipt, dict):
                return receipt
            if time.monotonic() > deadline:
                with self._lock:
                    self._nonce = None
                raise WalletError(f"transaction {tx_id} not mined after {timeout:g} s")
            time.sleep(RECEIPT_POLL_S)

    def transact(
        self,
        to: Address,
        method: str,
        args: Sequence[Value] = (),
        *,
        value: int = 0,
        gas: int | None = None,
        timeout: float = 120.0,
    ) -> dict[str, Any]:
        """:meth:`send` then :meth:`wait`; :class:`CallReverted` unless the mined call
        succeeded."""
        receipt = self.wait(self.send(to, method, args, value=value, gas=gas), timeout)
        status = str(receipt.get("status"))
        if status != "success":
            raise CallReverted(method, status, str(receipt.get("reason") or "no reason given"))
        return receipt
