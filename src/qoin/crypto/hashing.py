"""Hash functions and the domain tags that keep every hashed context apart.

Every hash Qoin computes starts with a domain tag, so that bytes hashed for one purpose can never be
mistaken for bytes hashed for another (a transaction id for a block id, a signing message for a
proof-of-work input). Tags are ASCII, versioned, and listed here in one place.
"""

from __future__ import annotations

import hashlib

HASH_SIZE = 32
"""SHA3-256 output size in bytes; also the size of addresses, block and transaction hashes."""

TAG_HYBRID_SIGNATURE = b"QOIN/hybrid-signature/v1"
TAG_TX_SIGNING = b"QOIN/tx-signing/v1"
TAG_TX_ID = b"QOIN/tx-id/v1"
TAG_TX_COMMITMENT = b"QOIN/tx-commitment/v1"
TAG_BLOCK_HASH = b"QOIN/block-hash/v1"
TAG_MESSAGE = b"QOIN/message/v1"


def sha3_256(*parts: bytes) -> bytes:
    """SHA3-256 of the concatenation of ``parts``."""
    hasher = hashlib.sha3_256()
    for part in parts:
        hasher.update(part)
    return hasher.digest()


def tagged_hash(tag: bytes, *parts: bytes) -> bytes:
    """SHA3-256 of a length-prefixed domain tag followed by ``parts``.

    The one-byte length in front of the tag makes the tag boundary unambiguous even if one tag were a
    prefix of another.
    """
    return sha3_256(bytes((len(tag),)), tag, *parts)


def shake_256(data: bytes, size: int) -> bytes:
    """``size`` bytes of SHAKE256 output over ``data``."""
    return hashlib.shake_256(data).digest(size)
