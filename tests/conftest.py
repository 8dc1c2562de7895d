"""Shared fixtures: key pairs are slow to make (Falcon), so each suite's is made once per session."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from qoin.crypto.hybrid import HybridKeyPair, generate_keypair
from qoin.crypto.suites import FALCON512_MLDSA44, SUITES, Suite

_CACHE: dict[tuple[int, int], HybridKeyPair] = {}


def keypair_for(suite: Suite = FALCON512_MLDSA44, index: int = 0) -> HybridKeyPair:
    """The ``index``-th session-wide key pair of ``suite``."""
    key = (suite.suite_id, index)
    if key not in _CACHE:
        _CACHE[key] = generate_keypair(suite)
    return _CACHE[key]


WAIT_S = 30.0
"""How long wait_until polls by default before failing the test."""


def wait_until(condition: Callable[[], bool], timeout: float = WAIT_S, poll: float = 0.01) -> None:
    """Poll ``condition`` until it holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s")
        time.sleep(poll)


@pytest.fixture(params=SUITES, ids=lambda s: s.name)
def any_suite(request: pytest.FixtureRequest) -> Suite:
    suite: Suite = request.param
    return suite


@pytest.fixture
def alice() -> HybridKeyPair:
    return keypair_for(index=0)


@pytest.fixture
def bob() -> HybridKeyPair:
    return keypair_for(index=1)
