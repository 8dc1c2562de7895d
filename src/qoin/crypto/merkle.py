"""Binary Merkle roots over 32-byte leaves (transaction ids, header hashes).

    leaf node  = tagged_hash("QOIN/merkle-leaf/v1", leaf)
    inner node = tagged_hash("QOIN/merkle-node/v1", left ‖ right)
    empty root = tagged_hash("QOIN/merkle-empty/v1")

Levels are built left to right; an odd node at the end of a level is promoted unchanged to the next
level (never paired with itself, which is what made Bitcoin's tree ambiguous, CVE-2012-2459). Leaf and
inner hashes carry different tags, so a leaf can never pass for an inner node.
"""

from __future__ import annotations

from collections.abc import Sequence

from qoin.crypto.hashing import tagged_hash

TAG_MERKLE_LEAF = b"QOIN/merkle-leaf/v1"
TAG_MERKLE_NODE = b"QOIN/merkle-node/v1"
TAG_MERKLE_EMPTY = b"QOIN/merkle-empty/v1"
EMPTY_ROOT = tagged_hash(TAG_MERKLE_EMPTY)


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """The Merkle root of ``leaves`` (in order)."""
    if not leaves:
        return EMPTY_ROOT
    level = [tagged_hash(TAG_MERKLE_LEAF, leaf) for leaf in leaves]
    while len(level) > 1:
        paired = [
            tagged_hash(TAG_MERKLE_NODE, level[i], level[i + 1])
            for i in range(0, len(level) - 1, 2)
        ]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]
