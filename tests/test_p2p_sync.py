"""Headers-first sync without the network: locators, the answerer's fork point, header checks."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qoin.chain.block import Header
from qoin.chain.chain import Chain
from qoin.chain.validation import BadHeight, BadNbits, BadProofOfWork, BadTimestamp, WrongChain
from qoin.p2p.messages import MAX_LOCATOR_HASHES
from qoin.p2p.sync import (
    HeadersNotConnected,
    block_locator,
    check_headers,
    fork_height,
    headers_after,
    locator_heights,
)
from tests.chainutil import mine_next, on_schedule, test_genesis

NOW = on_schedule(test_genesis(), 100)


@given(st.integers(min_value=0, max_value=2**62))
def test_locator_heights_are_bounded_recent_first_and_end_at_genesis(head: int) -> None:
    heights = locator_heights(head)
    assert len(heights) <= MAX_LOCATOR_HASHES
    assert heights[-1] == 0
    assert heights == sorted(set(heights), reverse=True)  # strictly newest first
    assert heights[0] == head
    recent = min(head, 10)
    assert heights[:recent] == list(range(head, head - recent, -1))


def test_locator_of_a_short_chain_names_every_block() -> None:
    assert locator_heights(3) == [3, 2, 1, 0]
    assert locator_heights(0) == [0]
    assert locator_heights(12)[:10] == list(range(12, 2, -1))


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[Chain]:
    """A chain of six blocks."""
    made = Chain.open(tmp_path, test_genesis())
    for _ in range(6):
        made.import_block(mine_next(made))
    yield made
    made.close()


def headers_of(chain: Chain) -> list[Header]:
    hashes = [chain.store.canonical_hash(h) for h in range(1, chain.head_header.height + 1)]
    found = [chain.store.header(h) for h in hashes if h is not None]
    return [h for h in found if h is not None]


def test_fork_height_finds_the_first_locator_hash_on_the_canonical_chain(chain: Chain) -> None:
    locator = block_locator(chain.head_header.height, chain.store.canonical_hash)
    assert len(locator) == 7 and locator[-1] == chain.genesis.genesis_hash

    def height_of(block_hash: bytes) -> int | None:
        meta = chain.forks.blocks.get(block_hash)
        return None if meta is None else meta.height

    assert fork_height(locator, height_of, chain.store.canonical_hash) == 6
    assert fork_height([bytes(32), locator[3]], height_of, chain.store.canonical_hash) == 3
    assert fork_height([bytes(32)], height_of, chain.store.canonical_hash) == 0


def test_a_valid_header_chain_passes(chain: Chain) -> None:
    headers = headers_of(chain)
    check_headers(chain.genesis, headers, chain.genesis.header, chain.store.header, NOW)
    check_headers(chain.genesis, headers[3:], headers[2], chain.store.header, NOW)
    check_headers(chain.genesis, [], None, chain.store.header, NOW)
    # the timestamps of earlier headers not stored yet come from ``header_of`` too
    unstored = {h.block_hash: h for h in headers[:3]}
    check_headers(chain.genesis, headers[3:], headers[2], unstored.get, NOW)


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"chain_id": 1}, WrongChain),
        ({"nbits": 0x1234}, BadNbits),
        ({"height": 9}, BadHeight),
        ({"timestamp_ms": 1}, BadTimestamp),
        ({"timestamp_ms": NOW + 60_000}, BadTimestamp),
        ({"state_root": b"\x01" * 32}, BadProofOfWork),  # the proof signs the header
    ],
)
def test_a_bad_header_is_refused(chain: Chain, change: dict[str, object], error: type) -> None:
    headers = headers_of(chain)
    headers[2] = replace(headers[2], **change)  # type: ignore[arg-type]
    with pytest.raises(error):
        check_headers(chain.genesis, headers[:3], chain.genesis.header, chain.store.header, NOW)


def test_headers_that_do_not_connect_are_refused(chain: Chain) -> None:
    headers = headers_of(chain)
    with pytest.raises(HeadersNotConnected):
        check_headers(chain.genesis, headers[1:], None, chain.store.header, NOW)
    with pytest.raises(HeadersNotConnected):
        check_headers(
            chain.genesis, [headers[0], headers[2]], chain.genesis.header, chain.store.header, NOW
        )
    with pytest.raises(HeadersNotConnected):
        check_headers(chain.genesis, headers[1:], chain.genesis.header, chain.store.header, NOW)


def test_headers_after_answers_from_the_fork_point(chain: Chain) -> None:
    store = chain.store

    def height_of(block_hash: bytes) -> int | None:
        meta = chain.forks.blocks.get(block_hash)
        return None if meta is None else meta.height

    def answer(locator: list[bytes], stop: bytes = bytes(32), count: int = 2000) -> list[int]:
        found = headers_after(
            locator, stop, count, 6, height_of, store.canonical_hash, store.header
        )
        return [header.height for header in found]

    hashes = [store.canonical_hash(height) or b"" for height in range(7)]
    assert answer([chain.genesis.genesis_hash]) == [1, 2, 3, 4, 5, 6]
    assert answer([bytes(32), hashes[3]]) == [4, 5, 6]  # an unknown hash is skipped
    assert answer([hashes[6]]) == []
    assert answer([hashes[1]], count=2) == [2, 3]
    assert answer([hashes[1]], stop=hashes[4]) == [2, 3, 4]
    assert answer([]) == [1, 2, 3, 4, 5, 6]  # no common block: from genesis
