"""Headers-first sync, the parts that need no network: block locators, answering ``GetHeaders``,
and checking a ``Headers`` reply before any body is downloaded (``docs/spec/p2p.md`` §10).

A *locator* names blocks of the requester's canonical chain, newest first: the ten most recent,
then exponentially spaced back, always ending with genesis. The answerer finds the first locator
hash on its own canonical chain (the fork point) and returns its canonical headers after it.
A reply is checked link by link: the first header's parent must be known (stored, or checked
earlier in this sync), and each header must pass every header rule as the child of the header
before it (:func:`qoin.chain.validation.validate_header`: chain id, height, MQ parameters,
timestamp against the median of its ancestors and the local clock, the difficulty rule's target,
proof-of-work). The body and its execution are checked when the block is imported.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from qoin.chain.block import Header
from qoin.chain.genesis import Genesis
from qoin.chain.validation import HeaderAncestry, UnknownParent, validate_header
from qoin.p2p.messages import MAX_LOCATOR_HASHES

RECENT_LOCATOR_HASHES = 10
"""Locator entries one height apart before the spacing starts doubling."""


class HeadersNotConnected(UnknownParent):
    """A ``Headers`` reply whose first header's parent is unknown, or whose headers do not chain."""


def locator_heights(head_height: int) -> list[int]:
    """The heights a locator names for a chain whose head is at ``head_height``: the ten most
    recent, then doubling steps back, then 0 (genesis); at most :data:`MAX_LOCATOR_HASHES`."""
    heights: list[int] = []
    height, step = head_height, 1
    while height > 0 and len(heights) < MAX_LOCATOR_HASHES - 1:
        heights.append(height)
        if len(heights) >= RECENT_LOCATOR_HASHES:
            step *= 2
        height -= step
    heights.append(0)
    return heights


def block_locator(head_height: int, canonical_hash: Callable[[int], bytes | None]) -> list[bytes]:
    """The locator of a canonical chain (``canonical_hash(height)`` reads it), newest first."""
    found = (canonical_hash(height) for height in locator_heights(head_height))
    return [block_hash for block_hash in found if block_hash is not None]


def fork_height(
    locator: Sequence[bytes],
    height_of: Callable[[bytes], int | None],
    canonical_hash: Callable[[int], bytes | None],
) -> int:
    """The height of the first locator hash on our canonical chain (0, genesis, if none is)."""
    for block_hash in locator:
        height = height_of(block_hash)
        if height is not None and canonical_hash(height) == block_hash:
            return height
    return 0


def check_headers(
    genesis: Genesis,
    headers: Sequence[Header],
    parent_of_first: Header | None,
    header_of: Callable[[bytes], Header | None],
    now_ms: int,
) -> None:
    """Check a ``Headers`` reply (see the module docstring); raise :class:`InvalidBlock` (or
    :class:`HeadersNotConnected` when it does not attach) naming the first bad header.
    ``header_of`` finds the headers before the reply (stored, or checked earlier in this sync)
    whose timestamps the median-time-past rule reads; ``now_ms`` is the local clock."""
    if not headers:
        return
    if parent_of_first is None:
        raise HeadersNotConnected(
            f"the first header's parent {headers[0].parent_hash.hex()} is unknown"
        )
    ancestry = HeaderAncestry(header_of, headers)
    parent = parent_of_first
    for index, header in enumerate(headers):
        what = f"header {index} ({header.block_hash.hex()[:16]})"
        try:
            validate_header(genesis, parent, header, ancestry, now_ms, what)
        except UnknownParent as exc:
            raise HeadersNotConnected(f"{what} does not follow the previous header") from exc
        parent = header


def headers_after(
    locator: Sequence[bytes],
    stop: bytes,
    max_count: int,
    head_height: int,
    height_of: Callable[[bytes], int | None],
    canonical_hash: Callable[[int], bytes | None],
    header_of: Callable[[bytes], Header | None],
) -> list[Header]:
    """The answer to ``GetHeaders``: canonical headers after the fork point (:func:`fork_height`),
    at most ``max_count``, ending with ``stop`` if it is met."""
    start = fork_height(locator, height_of, canonical_hash) + 1
    headers: list[Header] = []
    for height in range(start, min(head_height, start + max_count - 1) + 1):
        block_hash = canonical_hash(height)
        header = None if block_hash is None else header_of(block_hash)
        if header is None:
            break
        headers.append(header)
        if block_hash == stop:
            break
    return headers
