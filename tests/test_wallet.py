"""`qoin.wallet`: transfers, calls, reads and refusals against a real mining node."""

from __future__ import annotations

import pytest

from qoin.actors import NAMES_ADDRESS
from qoin.actors.names import term_fee
from qoin.crypto.address import Address
from qoin.execution.abi import decode_value
from qoin.wallet import CallReverted, Wallet, WalletError, query
from tests.framework import FUNDED, Network, wait_until
from tests.keys import keypair_for

PAID = keypair_for(index=31)


@pytest.mark.slow
def test_wallet_pays_calls_and_reads(net: Network) -> None:
    node = net.node("miner", "--block-interval-ms", "100", p2p=False, mine=True)
    url = node.user.url
    with Wallet(url, FUNDED) as wallet:
        # A transfer, then a call, in a row: the wallet keeps the nonce itself.
        paid = wallet.pay(PAID.address, 5_000_000)
        receipt = wallet.transact(
            NAMES_ADDRESS, "register", ["wallet-test", bytes(32), 100], value=term_fee(100)
        )
        assert receipt["status"] == "success"
        assert wallet.wait(paid)["status"] == "success"
        wait_until(lambda: Wallet(url, PAID).balance() == 5_000_000, 30, 0.2, "the payment")
        owner, value, _expiry = decode_value(query(url, NAMES_ADDRESS, "resolve", ["wallet-test"]))
        assert (owner, value) == (FUNDED.address, bytes(32))
        # A call that would revert is refused before it is sent, with the actor's reason.
        with pytest.raises(CallReverted, match="held by"):
            wallet.send(NAMES_ADDRESS, "register", ["wallet-test", bytes(32), 100], value=1_000)
        with pytest.raises(CallReverted, match="not registered"):
            wallet.query(NAMES_ADDRESS, "resolve", ["nobody-here"])
        # The nonce survives a refusal: the next transaction goes through.
        assert (
            wallet.transact(NAMES_ADDRESS, "renew", ["wallet-test", 100], value=term_fee(100))[
                "status"
            ]
            == "success"
        )


def test_wallet_without_a_node_says_so() -> None:
    with pytest.raises(WalletError, match=r"127\.0\.0\.1:9"):
        Wallet("http://127.0.0.1:9/", FUNDED, timeout=2.0)
    with pytest.raises(WalletError):
        query("http://127.0.0.1:9/", Address(bytes(32)), "get")
