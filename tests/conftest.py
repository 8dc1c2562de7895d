"""Shared fixtures: key pairs are slow to make (Falcon), so each suite's is made once per session."""

from __future__ import annotations

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
