"""Following a node's chain from a daemon (the storage and compute providers): WebSocket
subscriptions to ``newHeads`` and an actor's logs, read on threads of their own into a bounded
queue and handed to the daemon's callbacks one at a time, on the thread that follows.

:class:`Follower` is the loop: it subscribes; when the node cannot be reached it says so and
tries again after a backoff growing from :data:`RECONNECT_MIN_S` to :data:`RECONNECT_MAX_S`;
after a reconnection it says so and calls ``reconcile`` (if any); once subscribed it calls
``catch_up`` (the daemon reads what it missed, :func:`read_logs` and :func:`catch_up_start`
help), then ``on_head`` for each head and ``on_log`` for each log as they come, until the stop
is asked or the connection is lost (then it reconnects). A :class:`~qoin.errors.QoinError` of a
callback (the node, the disk) is logged, not fatal (:func:`guarded`). :class:`SeenLogs` lets a
daemon skip a log it saw twice (once live, once caught up).
"""

from __future__ import annotations

import functools
import queue
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

from qoin.errors import QoinError
from qoin.execution.events import MAX_LOG_RANGE
from qoin.rpc.client import RpcCallError, RpcClient, RpcTimeout, Subscription, subscribe

RECONNECT_MIN_S: Final = 0.5
RECONNECT_MAX_S: Final = 30.0
"""The backoff between attempts to reach the node grows from the first to the second."""
SUBSCRIBE_TIMEOUT_S: Final = 10.0
MAX_QUEUED: Final = 10_000
"""Notifications waiting for the following thread at most (a reader blocks beyond)."""
MAX_SEEN_LOGS: Final = 4096
"""Logs remembered to skip a log seen twice (after a reconnection's catch-up)."""
CATCH_UP_BLOCKS: Final = 10_000
"""Blocks of logs read after a (re)connection, at most."""
CATCH_UP_CHUNK: Final = 1_000
"""Blocks of logs read by one catch-up query (a range with too many logs is halved)."""
POLL_S: Final = 0.5
"""How often the following thread looks at the stop while no notification comes."""
READ_S: Final = 1.0
"""How often a reader looks at the stop while its subscription is silent or the queue full."""
READER_JOIN_S: Final = 2.0
"""How long the readers may take to end once their subscriptions are closed."""


class _Lost(QoinError):
    """The connection to the node ended."""


def guarded(log: Callable[[str], None], what: str, work: Callable[[], None]) -> None:
    """Run ``work``; a Qoin error (the node, the disk) is logged (``error WHAT: ...``), not
    fatal."""
    try:
        work()
    except QoinError as exc:
        log(f"error {what}: {exc}")


class SeenLogs:
    """The last :data:`MAX_SEEN_LOGS` logs seen (block hash, transaction hash, log index)."""

    def __init__(self, limit: int = MAX_SEEN_LOGS) -> None:
        self.limit = limit
        self._seen: OrderedDict[tuple[str, str, int], None] = OrderedDict()

    def fresh(self, entry: Mapping[str, Any]) -> bool:
        """Whether ``entry`` is a log to act on: not ``removed`` (by a reorganisation) and not
        seen before (it is remembered now)."""
        if entry.get("removed"):
            return False
        index = entry.get("logIndex")
        identity = (
            str(entry.get("blockHash")),
            str(entry.get("transactionHash")),
            index if isinstance(index, int) else -1,
        )
        if identity in self._seen:
            return False
        self._seen[identity] = None
        while len(self._seen) > self.limit:
            self._seen.popitem(last=False)
        return True


def catch_up_start(last: int, head: int, rewind: int) -> int:
    """The first block a catch-up reads: ``rewind`` blocks before the last head seen (``last``,
    or ``head`` if lower), but at most :data:`CATCH_UP_BLOCKS` blocks back from ``head``."""
    return max(0, min(last, head) - rewind, head - CATCH_UP_BLOCKS + 1)


def read_logs(
    client: RpcClient,
    log_filter: Mapping[str, Any],
    start: int,
    end: int,
    on_log: Callable[[dict[str, Any]], None],
) -> None:
    """Hand ``on_log`` each log of blocks ``start`` to ``end`` that ``log_filter`` selects
    (``qoin_getLogs`` in ranges of :data:`CATCH_UP_CHUNK` blocks; a range the node refuses,
    e.g. for holding more logs than it returns, is halved, down to one block)."""
    chunk = CATCH_UP_CHUNK
    while start <= end:
        last = min(end, start + chunk - 1)
        try:
            logs = client.call("qoin_getLogs", {"fromBlock": start, "toBlock": last, **log_filter})
        except RpcCallError as exc:
            if exc.code is None or chunk == 1:
                raise
            chunk = max(1, chunk // 2)
            continue
        for entry in logs if isinstance(logs, list) else []:
            if isinstance(entry, dict):
                on_log(entry)
        start = last + 1


def logs_between(
    client: RpcClient, log_filter: Mapping[str, Any], start: int, end: int, max_queries: int
) -> Iterator[dict[str, Any]]:
    """The logs of blocks ``start`` to ``end`` that ``log_filter`` selects, oldest first, asked
    :data:`~qoin.execution.events.MAX_LOG_RANGE` blocks at a time (the most a node answers) in at
    most ``max_queries`` queries: the latest blocks, the oldest part of a longer range left out.
    :class:`~qoin.rpc.client.RpcCallError` as the node gives it."""
    first = max(start, end - max_queries * MAX_LOG_RANGE + 1, 0)
    for low in range(first, end + 1, MAX_LOG_RANGE):
        query = {"fromBlock": low, "toBlock": min(end, low + MAX_LOG_RANGE - 1), **log_filter}
        logs = client.call("qoin_getLogs", query)
        for entry in logs if isinstance(logs, list) else ():
            if isinstance(entry, dict):
                yield entry


def read_subscription(
    subscription: Subscription,
    kind: str,
    events: queue.Queue[tuple[str, Any]],
    stop: threading.Event,
) -> None:
    """Hand a subscription's notifications to the following thread as ``(kind, payload)``
    until it ends (then ``("lost", why)``) or ``stop`` is set."""
    while not stop.is_set():
        try:
            message: tuple[str, Any] = (kind, subscription.next(timeout=READ_S))
        except RpcTimeout:
            continue
        except RpcCallError as exc:
            message = ("lost", str(exc))
        while not stop.is_set():
            try:
                events.put(message, timeout=READ_S)
                break
            except queue.Full:
                continue
        if message[0] == "lost":
            return


@dataclass(frozen=True)
class Follower:
    """Follows the chain of the node at :attr:`url` (see the module docstring)."""

    url: str
    """The node's user RPC URL."""
    log_filter: Mapping[str, Any]
    """The logs subscribed to (``address``, ``topics``: as for ``qoin_getLogs``)."""
    on_head: Callable[[int], None]
    """Called with each new head's height."""
    on_log: Callable[[dict[str, Any]], None]
    """Called with each log notified."""
    catch_up: Callable[[], None]
    """Called once subscribed (the subscriptions' notifications wait meanwhile)."""
    log: Callable[[str], None]
    """Where the follower says what happens to the connection."""
    reconcile: Callable[[], None] | None = None
    """Called after each reconnection, before the catch-up."""
    name: str = "follower"
    """Its reader threads are named ``NAME head`` and ``NAME log``."""

    def run(self, stop: threading.Event) -> None:
        """Follow the chain until ``stop`` is set, reconnecting whenever the node goes away."""
        backoff = RECONNECT_MIN_S
        connected_before = False
        while not stop.is_set():
            try:
                subscriptions = self._subscribe()
            except RpcCallError as exc:
                self.log(f"cannot reach the node at {self.url} ({exc}); retrying in {backoff:g} s")
                stop.wait(backoff)
                backoff = min(2 * backoff, RECONNECT_MAX_S)
                continue
            if connected_before:
                self.log(f"reconnected to the node at {self.url}")
                if self.reconcile is not None:
                    guarded(self.log, "reconciling", self.reconcile)
            connected_before, backoff = True, RECONNECT_MIN_S
            try:
                self._follow(subscriptions, stop)
            except _Lost as exc:
                self.log(f"lost the node at {self.url} ({exc}); reconnecting")

    def _subscribe(self) -> list[Subscription]:
        """The head and log subscriptions (none left open if one fails)."""
        heads = subscribe(self.url, "newHeads", timeout=SUBSCRIBE_TIMEOUT_S)
        try:
            logs = subscribe(self.url, "logs", dict(self.log_filter), timeout=SUBSCRIBE_TIMEOUT_S)
        except BaseException:
            heads.close()
            raise
        return [heads, logs]

    def _follow(self, subscriptions: list[Subscription], stop: threading.Event) -> None:
        """Catch up, then dispatch notifications until ``stop`` or a lost connection
        (:class:`_Lost`); the subscriptions are closed and their readers ended on the way out."""
        events: queue.Queue[tuple[str, Any]] = queue.Queue(MAX_QUEUED)
        over = threading.Event()  # the readers' stop: ``stop``, or this connection's end
        readers = [
            threading.Thread(
                target=read_subscription,
                args=(subscription, kind, events, over),
                name=f"{self.name} {kind}",
                daemon=True,
            )
            for subscription, kind in zip(subscriptions, ("head", "log"), strict=True)
        ]
        for reader in readers:
            reader.start()
        try:
            guarded(self.log, "catching up", self.catch_up)
            while not stop.is_set():
                try:
                    kind, payload = events.get(timeout=POLL_S)
                except queue.Empty:
                    continue
                self._dispatch(kind, payload)
        finally:
            over.set()
            for subscription in subscriptions:
                subscription.close()
            for reader in readers:
                reader.join(READER_JOIN_S)

    def _dispatch(self, kind: str, payload: Any) -> None:
        if kind == "lost":
            raise _Lost(str(payload))
        if kind == "head" and isinstance(payload, dict):
            height = payload.get("height")
            if isinstance(height, int) and not isinstance(height, bool):
                guarded(self.log, "handling a head", functools.partial(self.on_head, height))
        elif kind == "log" and isinstance(payload, dict):
            guarded(self.log, "handling an event", functools.partial(self.on_log, payload))
