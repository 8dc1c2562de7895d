"""TEST ONLY: an execution client that lies to its consensus client in one chosen way.

``qoin execution --dishonest MODE`` (a hidden option) serves the engine API through
:class:`DishonestClient`, so that tests can run a real consensus process against a real lying
execution process and check that every lie is caught (docs/spec/sampling.md). Modes:

* ``wrong-state-root`` — calls every valid block INVALID, claiming another state root;
* ``valid-for-invalid`` — calls every invalid block (a double spend, say) VALID;
* ``wrong-balance-proof`` — judges honestly but serves post-state proofs with a balance off by one;
* ``garbled-proof`` — judges honestly but serves post-state proofs that do not decode;
* ``omit-transaction`` — builds payloads that leave out their last transaction but keep the state
  and receipts roots of the full set (and calls its own payloads VALID);
* ``silent`` — stops answering engine calls (they hang until the caller gives up).

Nothing here runs unless that option is given; it is not a feature.
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import replace
from typing import Any

from qoin.chain.block import Block, Coinbase, Payout, transactions_root
from qoin.crypto.address import Address
from qoin.execution.account import AccountLeaf
from qoin.execution.client import ExecutionClient
from qoin.state.smt import Proof

MODES = (
    "wrong-state-root",
    "valid-for-invalid",
    "wrong-balance-proof",
    "garbled-proof",
    "omit-transaction",
    "silent",
)
SILENCE_S = 3600.0


class DishonestClient(ExecutionClient):
    """An :class:`ExecutionClient` whose engine answers lie in the way ``mode`` names."""

    def __init__(self, *args: Any, mode: str, **kwargs: Any) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown dishonest mode {mode!r}; one of {', '.join(MODES)}")
        super().__init__(*args, **kwargs)
        self.mode = mode
        self._silence = threading.Event()
        self._own_payloads: set[bytes] = set()

    def _hang_if_silent(self) -> None:
        if self.mode == "silent":
            self._silence.wait(SILENCE_S)

    def new_payload(self, block: Block) -> dict[str, Any]:
        self._hang_if_silent()
        answer = super().new_payload(block)
        if self.mode == "wrong-state-root" and answer["status"] == "VALID":
            return {
                "status": "INVALID",
                "validationError": f"StateRootMismatch: execution gives {secrets.token_hex(32)}",
            }
        if self.mode == "valid-for-invalid" and answer["status"] == "INVALID":
            return {"status": "VALID", "validationError": None}
        if self.mode == "omit-transaction" and _unsealed(block) in self._own_payloads:
            return {"status": "VALID", "validationError": None}
        return answer

    def forkchoice_updated(self, head: bytes, template: Block | None = None) -> dict[str, Any]:
        self._hang_if_silent()
        return super().forkchoice_updated(head, template)

    def build_payload(self, template: Block) -> Block:
        payload = super().build_payload(template)
        if self.mode != "omit-transaction" or not payload.transactions:
            return payload
        kept = payload.transactions[:-1]
        payouts = list(payload.coinbase.payouts)
        payouts[-1] = Payout(payouts[-1].recipient, sum(tx.fee for tx in kept))
        coinbase = Coinbase(tuple(payouts))
        header = replace(payload.header, transactions_root=transactions_root(coinbase, kept))
        lying = replace(payload, header=header, coinbase=coinbase, transactions=kept)
        self._own_payloads.add(_unsealed(lying))
        return lying

    def get_proofs(self, block_hash: bytes, addresses: list[Address]) -> dict[str, Any]:
        self._hang_if_silent()
        answer = super().get_proofs(block_hash, addresses)
        if self.mode == "wrong-balance-proof":
            for entry in answer["proofs"]:
                entry["post"] = _richer(entry["post"])
        if self.mode == "garbled-proof":
            for entry in answer["proofs"]:
                entry["post"] = "ff" * 40  # hex, but no proof
        return answer

    def get_witness(self, block_hash: bytes, block: Block | None = None) -> str:
        self._hang_if_silent()
        return super().get_witness(block_hash, block)

    def close(self) -> None:
        """Release hanging calls."""
        self._silence.set()


def _unsealed(block: Block) -> bytes:
    """What identifies a payload before and after mining: its transactions root."""
    return block.header.transactions_root


def _richer(proof_hex: str) -> str:
    """The same proof with the account's balance one Shor higher (it no longer verifies)."""
    proof = Proof.decode(bytes.fromhex(proof_hex))
    if proof.value is None:
        return proof_hex
    leaf = AccountLeaf.decode(proof.value)
    richer = replace(leaf, balance=leaf.balance + 1)
    return replace(proof, value=richer.encode()).encode().hex()
