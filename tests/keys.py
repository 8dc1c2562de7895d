"""Session-wide test key pairs: Falcon keys are slow to make, so each suite's is made once."""

from __future__ import annotations

from qoin.crypto.hybrid import HybridKeyPair, generate_keypair
from qoin.crypto.suites import FALCON512_MLDSA44, Suite

_CACHE: dict[tuple[int, int], HybridKeyPair] = {}


def keypair_for(suite: Suite = FALCON512_MLDSA44, index: int = 0) -> HybridKeyPair:
    """The ``index``-th session-wide key pair of ``suite``."""
    key = (suite.suite_id, index)
    if key not in _CACHE:
        _CACHE[key] = generate_keypair(suite)
    return _CACHE[key]
