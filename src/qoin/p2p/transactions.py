"""Transaction relay: announcing what the execution clients admitted, fetching announced
transactions, handing them to the execution clients, and blaming a peer that relayed one that can
never be valid (``docs/spec/p2p.md`` §10.4).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence

from qoin.chain.transaction import AnyTransaction
from qoin.errors import QoinError
from qoin.p2p.access import ChainWorker, TxVerdict
from qoin.p2p.messages import (
    MAX_ANNOUNCED_TRANSACTIONS,
    GetTransactions,
    InventoryKind,
    NewTransactionHashes,
    NotFound,
    Transactions,
    split_transactions,
)
from qoin.p2p.misbehaviour import Misbehaviour
from qoin.p2p.session import ConnectedPeers, Counters, PeerSession

log = logging.getLogger(__name__)

TX_CACHE_SIZE = 16_384
"""Recently seen transactions kept to answer ``GetTransactions``."""
MAX_REQUESTED_TXS = 16_384
"""Transaction ids asked of one peer and not yet answered; announcements beyond are ignored."""


class TransactionRelay:
    """Relays transactions between the peers and the node's execution clients."""

    def __init__(self, peers: ConnectedPeers, chain: ChainWorker, counters: Counters) -> None:
        self.peers = peers
        self.chain = chain
        self.counters = counters
        self._cache: OrderedDict[bytes, AnyTransaction] = OrderedDict()

    def _remember(self, tx: AnyTransaction) -> None:
        self._cache[tx.tx_id] = tx
        self._cache.move_to_end(tx.tx_id)
        while len(self._cache) > TX_CACHE_SIZE:
            self._cache.popitem(last=False)

    def _announce(self, peer: PeerSession, txs: Sequence[AnyTransaction]) -> None:
        fresh = tuple(tx.tx_id for tx in txs if tx.tx_id not in peer.known_txs)
        for start in range(0, len(fresh), MAX_ANNOUNCED_TRANSACTIONS):
            batch = fresh[start : start + MAX_ANNOUNCED_TRANSACTIONS]
            for tx_id in batch:
                peer.known_txs.add(tx_id)
            peer.send(NewTransactionHashes(batch))

    async def announce_pending(self, peer: PeerSession) -> None:
        """Tell a new peer what our mempools hold: the periodic announcements carry only what is
        new, and a sender's later transactions are stuck behind one a peer never heard of."""
        try:
            txs = await self.chain.call(self.chain.access.pending_transactions)
        except QoinError as exc:
            log.info("could not read the pending transactions: %s", exc)
            return
        for tx in txs:
            self._remember(tx)
        self._announce(peer, txs)

    async def gossip(self) -> None:
        """Announce what the execution clients admitted since the last poll."""
        txs = await self.chain.call(self.chain.access.new_transactions)
        for tx in txs:
            self._remember(tx)
        if not txs:
            return
        for peer in self.peers.sessions():
            if peer.status is not None:
                self._announce(peer, txs)

    async def on_new_transaction_hashes(
        self, peer: PeerSession, message: NewTransactionHashes
    ) -> None:
        """Ask the announcer for the ids not seen and not yet asked of it."""
        tx_ids = message.tx_ids
        for tx_id in tx_ids:
            peer.known_txs.add(tx_id)
        wanted = tuple(i for i in tx_ids if i not in self._cache and i not in peer.tx_requested)
        if wanted and len(peer.tx_requested) + len(wanted) <= MAX_REQUESTED_TXS:
            peer.tx_requested.update(wanted)
            if not peer.send(GetTransactions(wanted)):
                peer.tx_requested.difference_update(wanted)

    async def on_get_transactions(self, peer: PeerSession, message: GetTransactions) -> None:
        """Send what the cache holds; the rest in ``NotFound``."""
        found = [tx for i in message.tx_ids if (tx := self._cache.get(i)) is not None]
        for reply in split_transactions(found) if found else []:
            peer.send(reply)
        missing = tuple(i for i in message.tx_ids if i not in self._cache)
        if missing:
            peer.send(NotFound(InventoryKind.TRANSACTION, missing))

    def on_not_found(self, peer: PeerSession, tx_ids: Sequence[bytes]) -> None:
        """The peer lacks transactions we asked for: they are no longer awaited from it."""
        peer.tx_requested.difference_update(tx_ids)

    async def on_transactions(self, peer: PeerSession, message: Transactions) -> None:
        """Hand the transactions we asked for to the execution clients; punish the sender for
        those not asked for, and for those that can never be valid."""
        txs = message.transactions
        asked = [tx for tx in txs if tx.tx_id in peer.tx_requested]
        if len(asked) < len(txs):
            await self.peers.punish(peer, Misbehaviour.UNSOLICITED, "transactions not asked for")
        peer.tx_requested.difference_update(tx.tx_id for tx in asked)
        fresh = [tx for tx in asked if tx.tx_id not in self._cache]
        if not fresh:
            return
        self.counters.transactions_received += len(fresh)
        for tx in fresh:
            peer.known_txs.add(tx.tx_id)
        verdicts = await self.chain.call(self.chain.access.submit_transactions, fresh)
        # Only admitted or known transactions are remembered and served. A stateful refusal costs
        # the peer nothing (a nonce used meanwhile, our pool full, a fee below ours: honest
        # relays meet them); one that can never be valid costs it, once per message.
        invalid = [tx for tx, v in zip(fresh, verdicts, strict=False) if v is TxVerdict.INVALID]
        for tx, verdict in zip(fresh, verdicts, strict=False):
            if verdict in (TxVerdict.ADDED, TxVerdict.KNOWN):
                self._remember(tx)
        if invalid:
            await self.peers.punish(
                peer,
                Misbehaviour.INVALID_TRANSACTION,
                f"{len(invalid)} transactions that can never be valid, the first "
                f"{invalid[0].tx_id.hex()[:16]}",
            )
