"""TEST ONLY: an execution client that lies to its consensus client in one chosen way.

``qoin execution --dishonest MODE`` (a hidden option) serves the engine API through
:class:`DishonestClient`, so that tests can run a real consensus process against a real lying
execution process and check that every lie is caught (docs/spec/sampling.md). Modes:

* ``wrong-state-root`` — calls every valid block INVALID, claiming another state root;
* ``valid-for-invalid`` — calls every invalid block (a double spend, say) VALID;
* ``wrong-balance-proof`` — judges honestly but serves post-state proofs whose value is altered (an
  account leaf's balance one Shor higher, any other value one byte longer): they do not verify;
* ``garbled-proof`` — judges honestly but serves post-state proofs that do not decode;
* ``omit-transaction`` — builds payloads that leave out their last transaction but keep the state
  and receipts roots of the full set (and calls its own payloads VALID);
* ``wrong-storage-value`` — builds payloads whose state root has one storage value changed (of a
  contract, an actor or the cron queue: the first in key order that the block changes, the cron
  cursor aside), calls its own payloads VALID and serves, for them, the honest trace with proofs
  against the parent state and against that falsified post-state (all of which verify): only
  sampling the changed key shows the lie;
* ``wrong-step-record`` — judges honestly and serves the honest trace summary and proofs, but full
  step records (``engine_getSteps``) that charge one Shor more than the summary says;
* ``silent`` — stops answering engine calls (they hang until the caller gives up).

A verdict lie is told alike to ``engine_newPayload`` and to ``engine_getVerdict`` (the verdict asked
by hash): of a block held executed, or of one lied about before (remembered by hash).

Nothing here runs unless that option is given; it is not a feature.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
from collections import OrderedDict
from collections.abc import Collection
from dataclasses import dataclass, replace
from typing import Any

from qoin.chain.block import Block, Coinbase, Payout, transactions_root
from qoin.chain.transaction import CallTransaction
from qoin.crypto.address import Address
from qoin.crypto.hashing import sha3_256
from qoin.encoding.codec import DecodeError
from qoin.execution.abi import decode_deploy
from qoin.execution.account import (
    AccountLeaf,
    code_key,
    contract_address,
    keys_key,
    state_key,
)
from qoin.execution.client import ExecutionClient
from qoin.execution.cron import CRON_ADDRESS, CURSOR_KEY
from qoin.execution.trace import BlockTrace, decode_step_records, encode_step_records
from qoin.execution.transition import execute_block
from qoin.state.nodestore import MemoryNodeStore, NodeStore
from qoin.state.smt import Proof, SparseMerkleTree

MODES = (
    "wrong-state-root",
    "valid-for-invalid",
    "wrong-balance-proof",
    "garbled-proof",
    "omit-transaction",
    "wrong-storage-value",
    "wrong-step-record",
    "silent",
)
SILENCE_S = 3600.0
MAX_TOLD = 256


class DishonestClient(ExecutionClient):
    """An :class:`ExecutionClient` whose engine answers lie in the way ``mode`` names."""

    def __init__(self, *args: Any, mode: str, **kwargs: Any) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown dishonest mode {mode!r}; one of {', '.join(MODES)}")
        super().__init__(*args, **kwargs)
        self.mode = mode
        self._silence = threading.Event()
        self._own_payloads: set[bytes] = set()
        self._lies: dict[bytes, _Lie] = {}
        """Falsified payloads by transactions root (``wrong-storage-value``)."""
        self._lying_blocks: dict[bytes, _Lie] = {}
        """The same, by the hash of the block as it came back (sealed)."""
        self._told: OrderedDict[bytes, Block] = OrderedDict()
        """Blocks whose verdict was a lie, by hash (the latest :data:`MAX_TOLD`)."""

    def _hang_if_silent(self) -> None:
        if self.mode == "silent":
            self._silence.wait(SILENCE_S)

    def new_payload(self, block: Block) -> dict[str, Any]:
        self._hang_if_silent()
        return self._verdict_lie(block, super().new_payload(block))

    def get_verdict(self, block_hash: bytes) -> dict[str, Any]:
        """As ``engine_newPayload`` would answer (the mode's lie included) for a block held
        executed or lied about before; "unknown block" for any other."""
        self._hang_if_silent()
        with self.lock:
            held = self.state.block(block_hash) if self.state.executed(block_hash) else None
            block = held or self._told.get(block_hash)
        if block is None:
            return super().get_verdict(block_hash)
        return self.new_payload(block)  # known here: its verdict is not re-executed

    def _verdict_lie(self, block: Block, answer: dict[str, Any]) -> dict[str, Any]:
        """The verdict the mode says on ``block`` instead of the honest ``answer``: the one place
        where verdict lies are told, to ``engine_newPayload`` and ``engine_getVerdict`` alike
        (the blocks lied about are remembered, so that asked by hash the lie is told again)."""
        lie = self._mode_verdict(block, answer)
        if lie is not answer:
            self._told[block.block_hash] = block
            while len(self._told) > MAX_TOLD:
                self._told.popitem(last=False)
        return lie

    def _mode_verdict(self, block: Block, answer: dict[str, Any]) -> dict[str, Any]:
        if self.mode == "wrong-state-root" and answer["status"] == "VALID":
            return {
                "status": "INVALID",
                "validationError": f"StateRootMismatch: execution gives {secrets.token_hex(32)}",
            }
        if self.mode == "valid-for-invalid" and answer["status"] == "INVALID":
            return {"status": "VALID", "validationError": None}
        if self.mode == "omit-transaction" and _unsealed(block) in self._own_payloads:
            return {"status": "VALID", "validationError": None}
        lie = self._lies.get(_unsealed(block))
        if lie is not None and block.header.state_root == lie.tree.root:
            self._lying_blocks[block.block_hash] = lie
            return {"status": "VALID", "validationError": None}
        return answer

    def forkchoice_updated(self, head: bytes, template: Block | None = None) -> dict[str, Any]:
        self._hang_if_silent()
        return super().forkchoice_updated(head, template)

    def build_payload_now(self, template: Block) -> str:
        self._hang_if_silent()  # the payload lies reach it through build_payload
        return super().build_payload_now(template)

    def build_payload(self, template: Block) -> Block:
        payload = super().build_payload(template)
        if self.mode == "wrong-storage-value":
            return self._falsify_storage(payload)
        if self.mode != "omit-transaction" or not payload.transactions:
            return payload
        kept = payload.transactions[:-1]
        payouts = list(payload.coinbase.payouts)
        payouts[-1] = Payout(payouts[-1].recipient, sum(tx.max_fee for tx in kept))
        coinbase = Coinbase(tuple(payouts))
        header = replace(payload.header, transactions_root=transactions_root(coinbase, kept))
        lying = replace(payload, header=header, coinbase=coinbase, transactions=kept)
        self._own_payloads.add(_unsealed(lying))
        return lying

    def _falsify_storage(self, payload: Block) -> Block:
        """``payload`` with a state root in which one storage value it writes is changed (the
        payload itself if it writes none)."""
        parent_root = self.state.state_root(payload.header.parent_hash)
        base = self.state.tree
        outcome = execute_block(lambda key: base.get_at(parent_root, key), payload)
        spared = _account_keys(payload) | {CURSOR_KEY}
        storage = sorted(key for key in outcome.changes if key not in spared)
        if not storage:
            return payload
        changes = dict(outcome.changes)
        changes[storage[0]] = changes[storage[0]] + b"\x01"
        tree = SparseMerkleTree(_Layered(base.store), parent_root)
        tree.update(changes, 1)
        lying = replace(payload, header=replace(payload.header, state_root=tree.root))
        self._lies[_unsealed(lying)] = _Lie(parent_root, tree, outcome.trace)
        return lying

    def get_trace(self, block_hash: bytes) -> str:
        self._hang_if_silent()
        lie = self._lying_blocks.get(block_hash)
        if lie is not None:
            return lie.trace.encode_summary().hex()
        return super().get_trace(block_hash)

    def get_steps(self, block_hash: bytes, indexes: list[int]) -> str:
        self._hang_if_silent()
        lie = self._lying_blocks.get(block_hash)
        if lie is not None:
            steps = lie.trace.steps
            return encode_step_records({i: steps[i] for i in indexes if i < len(steps)}).hex()
        answer = super().get_steps(block_hash, indexes)
        if self.mode != "wrong-step-record":
            return answer
        records = decode_step_records(bytes.fromhex(answer))
        return encode_step_records(
            {index: replace(record, fee=record.fee + 1) for index, record in records.items()}
        ).hex()

    def get_proofs(self, block_hash: bytes, keys: list[bytes]) -> dict[str, Any]:
        self._hang_if_silent()
        lie = self._lying_blocks.get(block_hash)
        if lie is not None:
            with self.lock:
                return lie.answer(keys)
        answer = super().get_proofs(block_hash, keys)
        if self.mode == "wrong-balance-proof":
            for entry in answer["proofs"]:
                entry["post"] = _altered(entry["post"])
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


def _altered(proof_hex: str) -> str:
    """The same proof with its value altered (it no longer verifies): an account leaf's balance
    one Shor higher, any other value one byte longer; a proof of absence as it is."""
    proof = Proof.decode(bytes.fromhex(proof_hex))
    if proof.value is None:
        return proof_hex
    try:
        leaf = AccountLeaf.decode(proof.value)
    except DecodeError:
        value = proof.value + b"\x00"
    else:
        value = replace(leaf, balance=leaf.balance + 1).encode()
    return replace(proof, value=value).encode().hex()


def _account_keys(block: Block) -> set[bytes]:
    """The account leaves, keys leaves and code leaves a block may write: of every address it
    names, of the contracts its deployments create, and of the modules they carry."""
    addresses: set[Address] = {CRON_ADDRESS}
    codes: set[bytes] = set()
    for tx in block.transactions:
        addresses.update((tx.sender, tx.recipient))
        if isinstance(tx, CallTransaction) and tx.is_deploy:
            addresses.add(contract_address(tx.sender, tx.nonce))
            with contextlib.suppress(DecodeError):
                codes.add(code_key(sha3_256(decode_deploy(tx.data).code)))
    addresses.update(payout.recipient for payout in block.coinbase.payouts)
    return codes | {state_key(a) for a in addresses} | {keys_key(a) for a in addresses}


class _Layered(MemoryNodeStore):
    """Nodes written here, read from here first and then from ``base`` (which is never written):
    a falsified tree on top of the client's real one."""

    def __init__(self, base: NodeStore) -> None:
        super().__init__()
        self.base = base

    def get(self, node_hash: bytes) -> bytes | None:
        """The node from here, else from the base."""
        return self.nodes.get(node_hash) or self.base.get(node_hash)

    def get_many(self, node_hashes: Collection[bytes]) -> dict[bytes, bytes]:
        """The nodes from here, the rest from the base."""
        found = super().get_many(node_hashes)
        missing = [h for h in node_hashes if h not in found]
        if missing:
            found.update(self.base.get_many(missing))
        return found


@dataclass(frozen=True)
class _Lie:
    """A falsified payload: its parent's root, the falsified post-state tree, the honest trace."""

    parent_root: bytes
    tree: SparseMerkleTree
    trace: BlockTrace

    def answer(self, keys: list[bytes]) -> dict[str, Any]:
        """An ``engine_getProofs`` answer against the parent state and the falsified tree."""
        tree = self.tree
        return {
            "parentStateRoot": self.parent_root.hex(),
            "stateRoot": tree.root.hex(),
            "proofs": [
                {
                    "key": key.hex(),
                    "pre": tree.prove_at(self.parent_root, key).encode().hex(),
                    "post": tree.prove_at(tree.root, key).encode().hex(),
                }
                for key in keys
            ],
        }
