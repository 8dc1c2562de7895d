"""A state tree known only along proven paths: what stateless execution updates.

Built from proofs against one root, it holds the nodes on each proven key's path; every other subtree
is an opaque hash. Setting a proven key's value (insert or modify — accounts are never deleted) and
recomputing the root needs nothing more, because a compressed leaf met on the path of a new key is
itself known (its key and value hash are in the exclusion proof).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from qoin.crypto.hashing import sha3_256, tagged_hash
from qoin.errors import QoinError
from qoin.state.smt import (
    EMPTY,
    KEY_BITS,
    TAG_SMT_LEAF,
    Proof,
    leaf_hash,
    node_hash,
    verify_proof,
)


class WitnessIncomplete(QoinError):
    """A key that the witness does not prove was read or written."""


@dataclass
class _Opaque:
    digest: bytes


@dataclass
class _Leaf:
    key: bytes
    value_hash: bytes


@dataclass
class _Inner:
    left: _Node
    right: _Node


_Node = _Opaque | _Leaf | _Inner | None  # None: an empty subtree


def _bit(key: bytes, depth: int) -> int:
    return (key[depth >> 3] >> (7 - (depth & 7))) & 1


def _hash(node: _Node) -> bytes:
    if node is None:
        return EMPTY
    if isinstance(node, _Opaque):
        return node.digest
    if isinstance(node, _Leaf):
        return tagged_hash(TAG_SMT_LEAF, node.key, node.value_hash)
    return node_hash(_hash(node.left), _hash(node.right))


class PartialTree:
    """The proven part of a state tree."""

    def __init__(self, root: bytes) -> None:
        self._top: _Node = None if root == EMPTY else _Opaque(root)
        self._values: dict[bytes, bytes | None] = {}

    @classmethod
    def from_proofs(cls, root: bytes, proofs: Mapping[bytes, Proof]) -> PartialTree:
        """Verify every proof against ``root`` and keep the nodes on their paths."""
        tree = cls(root)
        for key, proof in proofs.items():
            tree._values[key] = verify_proof(root, key, proof)
            tree._graft(key, proof)
        return tree

    def value(self, key: bytes) -> bytes | None:
        """The proven pre-state value of ``key`` (None: absent)."""
        if key not in self._values:
            raise WitnessIncomplete(f"the witness has no proof for key {key.hex()}")
        return self._values[key]

    def _graft(self, key: bytes, proof: Proof) -> None:
        depth = len(proof.siblings)
        if proof.leaf_key is None:
            terminal: _Node = None
        elif proof.value is not None:
            terminal = _Leaf(key, sha3_256(proof.value))
        else:
            terminal = _Leaf(proof.leaf_key, proof.value_hash or EMPTY)
        # Hashes of the nodes on the key's path, from the terminal up.
        path = [_hash(terminal)]
        for index in range(depth - 1, -1, -1):
            sibling, below = proof.siblings[index], path[-1]
            path.append(
                node_hash(sibling, below) if _bit(key, index) else node_hash(below, sibling)
            )
        path.reverse()  # path[i] is the hash of the node at depth i
        node_ref: list[_Node] = [self._top]
        parent: _Inner | None = None
        side = 0
        for index in range(depth + 1):
            node = node_ref[0]
            if index == depth:
                if isinstance(node, _Opaque):
                    self._replace(parent, side, terminal)
                return
            if isinstance(node, _Opaque):
                bit = _bit(key, index)
                mine, other = _Opaque(path[index + 1]), _Opaque(proof.siblings[index])
                node = _Inner(other, mine) if bit else _Inner(mine, other)
                self._replace(parent, side, node)
            if not isinstance(node, _Inner):
                return  # already known further down by another proof
            side = _bit(key, index)
            parent = node
            node_ref = [node.right if side else node.left]

    def _replace(self, parent: _Inner | None, side: int, node: _Node) -> None:
        if parent is None:
            self._top = node
        elif side:
            parent.right = node
        else:
            parent.left = node

    def set(self, key: bytes, value: bytes) -> None:
        """Insert or change the value of a proven key."""
        if key not in self._values:
            raise WitnessIncomplete(f"the witness has no proof for key {key.hex()}")
        self._top = self._set(self._top, key, leaf_value_hash(value), 0)

    def _set(self, node: _Node, key: bytes, value_hash: bytes, depth: int) -> _Node:
        if node is None:
            return _Leaf(key, value_hash)
        if isinstance(node, _Opaque):
            raise WitnessIncomplete(f"path of key {key.hex()} leads into an unproven subtree")
        if isinstance(node, _Leaf):
            if node.key == key:
                return _Leaf(key, value_hash)
            return self._split(node, _Leaf(key, value_hash), depth)
        if _bit(key, depth):
            node.right = self._set(node.right, key, value_hash, depth + 1)
        else:
            node.left = self._set(node.left, key, value_hash, depth + 1)
        return node

    def _split(self, old: _Leaf, new: _Leaf, depth: int) -> _Node:
        if depth >= KEY_BITS:
            raise WitnessIncomplete("two different keys cannot share every bit")
        old_bit, new_bit = _bit(old.key, depth), _bit(new.key, depth)
        if old_bit == new_bit:
            below = self._split(old, new, depth + 1)
            return _Inner(None, below) if old_bit else _Inner(below, None)
        return _Inner(new, old) if new_bit == 0 else _Inner(old, new)

    def root(self) -> bytes:
        """The root of the tree as it is now."""
        return _hash(self._top)


def leaf_value_hash(value: bytes) -> bytes:
    """What a leaf commits to for ``value``."""
    return sha3_256(value)


__all__ = ["PartialTree", "WitnessIncomplete", "leaf_hash"]
