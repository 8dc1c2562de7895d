"""Shared fixtures: session-wide key pairs (see :mod:`tests.keys`) and ``net``, a test's network
of real ``qoin`` processes (see :mod:`tests.framework`, whose :func:`~tests.framework.wait_until`
is the tests' one bounded wait)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from qoin.crypto.hybrid import HybridKeyPair
from qoin.crypto.suites import SUITES, Suite
from tests.framework import Network
from tests.keys import keypair_for


@pytest.fixture
def net(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Network]:
    """A network in ``tmp_path`` (genesis and engine secret written once); every process it
    starts is stopped when the test ends, passed or failed. ``QOIN_HOME`` points into
    ``tmp_path`` and ``QOIN_PASSWORD`` is unset for the processes."""
    monkeypatch.setenv("QOIN_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("QOIN_PASSWORD", raising=False)
    made = Network(tmp_path)
    try:
        yield made
    finally:
        made.stop_all()


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
