"""Storage proofs of held shards (docs/spec/storage.md §4.3): the challenged leaves of a period and
their Merkle paths, batched into ``prove`` transactions of bounded size, and the :class:`Prover`
that sends them on each head of a period's proof window and reads their receipts on later heads."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from qoin.execution.abi import MAX_ARGS, AbiError, Value, decode_value
from qoin.rpc.client import RpcCallError
from qoin.storage import market
from qoin.storage.market import STORAGE_MARKET, DealInfo, MarketView
from qoin.storage.merkle import (
    StorageMerkleError,
    build_proof,
    challenge_indices,
    challenge_seed,
)
from qoin.storage.params import StorageParams
from qoin.storage.provider.store import ShardState, ShardStore, StoredShard, StoreError
from qoin.wallet import CallReverted, Wallet, WalletError

MAX_PROVE_BYTES: Final = 80 * 1024
"""Bytes of proofs (leaves and paths) one ``prove`` transaction carries at most (a transaction is
at most 96 KiB)."""
MAX_PROVE_ATTEMPTS: Final = 3
"""``prove`` transactions sent for one shard and period at most."""
MAX_PROVE_ITEMS: Final = MAX_ARGS
"""Items one ``prove`` transaction carries at most (an ABI list holds 64 values)."""
ITEM_OVERHEAD: Final = 64
"""Bytes an item's encoding adds to its leaves and paths (tags, lengths, deal and shard)."""
DISHONEST_MODES: Final = ("wrong-leaf", "deleted-part")
"""TEST ONLY ways to lie: ``wrong-leaf`` proves with one byte of the first leaf flipped;
``deleted-part`` is a provider that deleted part of its shards and hides it: a shard it cannot
prove from its file (shorter than indexed, or the challenged chunk no longer hashes to the tree) is
neither marked lost nor fetched again; the period is skipped (a miss), in the hope that the next
challenge falls on the part it kept."""


@dataclass(frozen=True)
class Proof:
    """One shard's proof for one period."""

    deal: int
    """The deal id."""
    shard: int
    """The shard's index."""
    leaves: tuple[bytes, ...]
    """The challenged leaves, in challenge order."""
    paths: bytes
    """Their Merkle paths, concatenated."""

    @property
    def size(self) -> int:
        """Bytes the proof adds to a transaction (about)."""
        return sum(len(leaf) for leaf in self.leaves) + len(self.paths) + ITEM_OVERHEAD

    def item(self) -> Value:
        """The ``prove`` argument item."""
        return market.proof_item(self.deal, self.shard, self.leaves, self.paths)


def prove(
    store: ShardStore,
    deal: int,
    shard: int,
    beacon: bytes,
    period: int,
    samples: int,
    dishonest: str | None = None,
) -> Proof:
    """The proof of a stored shard for ``period`` (whose beacon is ``beacon``), read from disk
    (:class:`~qoin.storage.provider.store.StoreError` if it cannot be read;
    :class:`~qoin.storage.merkle.StorageMerkleError` if the file no longer hashes to its tree)."""
    tree = store.tree(deal, shard)
    indices = challenge_indices(
        challenge_seed(beacon, deal, shard, period), tree.leaf_count, samples
    )
    leaves, paths = build_proof(tree, indices, lambda chunk: store.read_chunk(deal, shard, chunk))
    if dishonest == "wrong-leaf":
        first = bytearray(leaves[0])
        first[0] ^= 0x01
        leaves[0] = bytes(first)
    return Proof(deal, shard, tuple(leaves), paths)


def batches(proofs: Sequence[Proof]) -> list[list[Proof]]:
    """``proofs`` cut into consecutive batches of at most :data:`MAX_PROVE_ITEMS` items and
    :data:`MAX_PROVE_BYTES` bytes each (a single larger proof goes alone)."""
    out: list[list[Proof]] = []
    current: list[Proof] = []
    size = 0
    for proof in proofs:
        if current and (size + proof.size > MAX_PROVE_BYTES or len(current) >= MAX_PROVE_ITEMS):
            out.append(current)
            current, size = [], 0
        current.append(proof)
        size += proof.size
    if current:
        out.append(current)
    return out


@dataclass
class _Pending:
    """A transaction sent and not yet seen in a block."""

    tx_id: str
    what: str
    sent_at: int
    period: int = 0
    proofs: list[Proof] = field(default_factory=list)


class Prover:
    """Proves the held shards of a store: :meth:`on_head` for every new head (main loop only)."""

    def __init__(
        self,
        store: ShardStore,
        view: MarketView,
        wallet: Wallet,
        params: StorageParams,
        lost: Callable[[int, int], None],
        log: Callable[[str], None],
        dishonest: str | None = None,
    ) -> None:
        self.store, self.view, self.wallet, self.params = store, view, wallet, params
        self.address = wallet.address
        self._lost, self.log, self.dishonest = lost, log, dishonest
        self.height = 0
        self._pending: list[_Pending] = []
        self._sent: dict[tuple[int, int], int] = {}
        """Shard -> the period a proof of it is in flight for."""
        self._attempts: dict[tuple[int, int, int], int] = {}
        self._beacons: dict[int, bytes] = {}
        self._idle: dict[tuple[int, int], int] = {}
        """Shard -> the first period it may be due in (not asked about before)."""

    def track(self, tx_id: str, what: str) -> None:
        """Watch another transaction's receipt (its failure is logged)."""
        self._pending.append(_Pending(tx_id, what, self.height))

    def on_head(self, height: int) -> None:
        """Read the receipts in flight, then prove what is due while the window is open."""
        self.height = height
        period = self.params.period_of(height)
        self._attempts = {k: v for k, v in self._attempts.items() if k[2] >= period}
        self._beacons = {t: b for t, b in self._beacons.items() if t >= period - 1}
        self._idle = {key: first for key, first in self._idle.items() if first > period}
        self._check_pending()
        if self.params.period_start(period) + 1 <= height <= self.params.window_end(period):
            self._prove(period)

    def _beacon(self, period: int) -> bytes | None:
        if period not in self._beacons:
            found = self.view.get_beacon(period)
            if found is None:
                return None
            self._beacons[period] = found
        return self._beacons[period]

    def _due(self, period: int) -> list[StoredShard]:
        """The held shards not proved for ``period`` and not in flight (nor tried too often)."""
        return [
            row
            for row in self.store.shards()
            if row.state is ShardState.HELD
            and row.proved <= period
            and self._sent.get(row.key) != period
            and self._attempts.get((*row.key, period), 0) < MAX_PROVE_ATTEMPTS
            and self._idle.get(row.key, 0) <= period
        ]

    def _prove(self, period: int) -> None:
        """Send the proofs of the shards due in ``period``."""
        rows = self._due(period)
        beacon = self._beacon(period) if rows else None
        if beacon is None:
            return
        deals: dict[int, DealInfo | None] = {}
        proofs: list[Proof] = []
        for row in rows:
            if row.deal not in deals:
                deals[row.deal] = self.view.get_deal(row.deal)
            deal = deals[row.deal]
            if deal is None or row.shard >= len(deal.shards):
                self._idle[row.key] = period + 1  # over: the daemon deletes it
                continue
            info = deal.shards[row.shard]
            if info.provider != self.address or not info.first_due <= period < deal.end:
                self._idle[row.key] = max(info.first_due, period + 1)  # look again then
                continue
            if info.last_proved == period + 1:
                self.store.set_proved(row.deal, row.shard, period)
                continue
            try:
                proofs.append(
                    prove(
                        self.store,
                        row.deal,
                        row.shard,
                        beacon,
                        period,
                        self.params.samples,
                        self.dishonest,
                    )
                )
            except (StoreError, StorageMerkleError) as exc:
                if self.dishonest == "deleted-part":
                    self.log(
                        f"deal {row.deal} shard {row.shard} cannot be proved for period {period}: "
                        f"{exc}; hiding it (TEST ONLY: dishonest)"
                    )
                    self._idle[row.key] = period + 1
                    continue
                self.log(f"deal {row.deal} shard {row.shard} lost: {exc}; fetching it again")
                self.store.set_state(row.deal, row.shard, ShardState.LOST)
                self._lost(row.deal, row.shard)
        for batch in batches(proofs):
            self._send(period, batch)

    def _send(self, period: int, batch: list[Proof]) -> None:
        keys = [(proof.deal, proof.shard) for proof in batch]
        for deal, shard in keys:
            self._attempts[(deal, shard, period)] = self._attempts.get((deal, shard, period), 0) + 1
        shown = ", ".join(f"{deal}/{shard}" for deal, shard in keys)
        try:
            tx_id = self.wallet.send(
                STORAGE_MARKET, "prove", [period, tuple(proof.item() for proof in batch)]
            )
        except CallReverted as exc:
            self.log(f"cannot prove period {period} for {shown}: {exc.reason}")
            return
        except WalletError as exc:
            self.log(f"cannot send the proofs of period {period} for {shown}: {exc}")
            return
        for key in keys:
            self._sent[key] = period
        self._pending.append(
            _Pending(tx_id, f"prove period {period} ({shown})", self.height, period, batch)
        )
        self.log(f"sent proofs of period {period} for {shown} (tx {tx_id[:16]})")

    def _check_pending(self) -> None:
        """Look at the receipts of the transactions in flight."""
        still: list[_Pending] = []
        for pending in self._pending:
            try:
                receipt = self.wallet.client.call("qoin_getTransactionReceipt", pending.tx_id)
            except RpcCallError as exc:
                self.log(f"cannot read the receipt of {pending.what}: {exc}")
                still.append(pending)
                continue
            if isinstance(receipt, dict):
                self._receipt(pending, receipt)
            elif self.height - pending.sent_at > self.params.period:
                self.log(f"{pending.what}: not mined in {self.params.period} blocks")
                self._forget(pending)
            else:
                still.append(pending)
        self._pending = still

    def _forget(self, pending: _Pending) -> None:
        for proof in pending.proofs:
            if self._sent.get((proof.deal, proof.shard)) == pending.period:
                del self._sent[(proof.deal, proof.shard)]

    def _receipt(self, pending: _Pending, receipt: dict[str, Any]) -> None:
        status = receipt.get("status")
        if status != "success":
            self.log(f"{pending.what} failed: {status}: {receipt.get('reason')}")
            self._forget(pending)
            return
        if not pending.proofs:
            return
        try:
            accepted = decode_value(bytes.fromhex(str(receipt.get("returnData", ""))))
        except (AbiError, ValueError):
            accepted = ()
        if not isinstance(accepted, tuple) or len(accepted) != len(pending.proofs):
            self.log(f"{pending.what}: unexpected return value")
            return
        block = receipt.get("blockHeight")
        for proof, ok in zip(pending.proofs, accepted, strict=True):
            if ok is True:
                self.store.set_proved(proof.deal, proof.shard, pending.period)
                self.log(
                    f"proved deal {proof.deal} shard {proof.shard} for period {pending.period} "
                    f"(block {block})"
                )
            else:
                self.log(
                    f"proof of deal {proof.deal} shard {proof.shard} for period "
                    f"{pending.period} refused as invalid (block {block})"
                )
