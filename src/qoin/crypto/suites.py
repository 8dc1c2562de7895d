"""Hybrid signature suites: named, versioned AND-combinations of signature schemes.

A suite id is part of every address and every signing message, so new suites can be added later
without a new chain (crypto agility) and a signature can never be re-labelled as another suite's.

====== ====================================== ===================
id     name                                   NIST level
====== ====================================== ===================
0x0001 ``falcon512+mldsa44`` (default)        1
0x0002 ``falcon1024+mldsa87``                 5
0x0101 ``falcon512+mldsa44+slhdsa-sha2-128s`` 1, hash-based backstop
0x0102 ``falcon1024+mldsa87+slhdsa-sha2-128s`` 5 / 1, hash-based backstop
====== ====================================== ===================
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from qoin.crypto.schemes import (
    FALCON512,
    FALCON1024,
    MLDSA44,
    MLDSA87,
    SLHDSA_SHA2_128S,
    SignatureScheme,
)
from qoin.errors import QoinError


class UnknownSuite(QoinError):
    """A suite id or name that this node does not know."""


@dataclass(frozen=True)
class Suite:
    """A hybrid signature suite: every component must verify."""

    suite_id: int
    """16-bit identifier, encoded big-endian in keys, signatures and addresses."""
    name: str
    """Human name: component names joined by ``+``."""
    components: tuple[SignatureScheme, ...]
    """The schemes, in the order their keys and signatures are encoded."""

    @cached_property
    def public_key_sizes(self) -> tuple[int, ...]:
        """Each component's public key size, in order (read on every decode)."""
        return tuple(c.public_key_size for c in self.components)

    @cached_property
    def signature_sizes(self) -> tuple[int, ...]:
        """Each component's signature size, in order."""
        return tuple(c.signature_size for c in self.components)

    @property
    def public_key_size(self) -> int:
        """Size of all component public keys together."""
        return sum(c.public_key_size for c in self.components)

    @property
    def secret_key_size(self) -> int:
        """Size of all component secret keys together."""
        return sum(c.secret_key_size for c in self.components)

    @property
    def signature_size(self) -> int:
        """Size of all component signatures together."""
        return sum(c.signature_size for c in self.components)


def _suite(suite_id: int, *components: SignatureScheme) -> Suite:
    return Suite(suite_id, "+".join(c.name for c in components), components)


FALCON512_MLDSA44 = _suite(0x0001, FALCON512, MLDSA44)
FALCON1024_MLDSA87 = _suite(0x0002, FALCON1024, MLDSA87)
FALCON512_MLDSA44_SLHDSA = _suite(0x0101, FALCON512, MLDSA44, SLHDSA_SHA2_128S)
FALCON1024_MLDSA87_SLHDSA = _suite(0x0102, FALCON1024, MLDSA87, SLHDSA_SHA2_128S)

DEFAULT_SUITE = FALCON512_MLDSA44

SUITES: tuple[Suite, ...] = (
    FALCON512_MLDSA44,
    FALCON1024_MLDSA87,
    FALCON512_MLDSA44_SLHDSA,
    FALCON1024_MLDSA87_SLHDSA,
)
_BY_ID = {s.suite_id: s for s in SUITES}
_BY_NAME = {s.name: s for s in SUITES}


def suite_by_id(suite_id: int) -> Suite:
    """The suite with this id, or :class:`UnknownSuite`."""
    try:
        return _BY_ID[suite_id]
    except KeyError:
        raise UnknownSuite(f"unknown signature suite id 0x{suite_id:04x}") from None


def suite_by_name(name: str) -> Suite:
    """The suite with this name, or :class:`UnknownSuite` listing the known ones."""
    try:
        return _BY_NAME[name]
    except KeyError:
        known = ", ".join(_BY_NAME)
        raise UnknownSuite(f"unknown signature suite {name!r}; known suites: {known}") from None
