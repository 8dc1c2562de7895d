"""Shard trees, Merkle paths, challenges and content ids (docs/spec/storage.md §2, §4.3).

A shard of ``L = shard_size / leaf_size`` leaves is committed by the root of a binary tree padded to
``2^d`` leaves with *padding subtrees* (``pad[0] = tagged_hash("QOIN/storage/pad/v1")``,
``pad[i+1] = node(pad[i], pad[i])``): a subtree lying wholly beyond the last leaf is ``pad[level]``.

Retrieval and proving work by *chunks* of ``CHUNK_SIZE`` bytes (``2^c`` leaves, ``c =
chunk_level(leaf_size, d)``): a chunk is checked against its level-c node, and the level-c nodes
against the root. A :class:`ShardTree` keeps only the levels ``c .. d`` (a 1 GiB shard of 256-byte
leaves holds 16,384 level-c nodes, not 4 M leaf hashes); a path's in-chunk siblings are recomputed
from the chunk's bytes. A tree is built from bytes in memory, from a file (streamed) or from a
stream of pieces (:class:`ShardTreeBuilder`), and persisted with :meth:`ShardTree.encode`.

Every function here is pure; malformed inputs raise :class:`StorageMerkleError`, except the
``verify_*`` functions, which answer False for anything that does not verify (wrong sizes and
indices included) and never raise.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from qoin.crypto.hashing import HASH_SIZE, tagged_hash
from qoin.errors import QoinError
from qoin.storage.params import MAX_LEAF_SIZE, MAX_SAMPLES, MIN_LEAF_SIZE

CHUNK_SIZE: Final = 65_536
"""Bytes per retrieval chunk (fewer for a shard's last chunk or a shard smaller than a chunk)."""
MAX_LEAF_COUNT: Final = 1 << 40
"""The most leaves a shard tree may have."""
MAX_DEPTH: Final = 40
"""The depth of a tree of :data:`MAX_LEAF_COUNT` leaves."""
MAX_SHARDS: Final = 256
"""The most shard roots a content id combines (the index is one byte)."""

TAG_LEAF: Final = b"QOIN/storage/leaf/v1"
TAG_NODE: Final = b"QOIN/storage/node/v1"
TAG_PAD: Final = b"QOIN/storage/pad/v1"
TAG_CID_LEAF: Final = b"QOIN/storage/cid-leaf/v1"
TAG_CHALLENGE: Final = b"QOIN/storage/challenge/v1"
TAG_SAMPLE: Final = b"QOIN/storage/sample/v1"

_TREE_MAGIC: Final = b"QTREE1"
_TREE_HEADER: Final = len(_TREE_MAGIC) + 4 + 8 + HASH_SIZE
_READ_BLOCK: Final = 1 << 20
"""Bytes read and hashed per step (a whole number of chunks)."""

_LEAF_HASHER: Final = hashlib.sha3_256(bytes((len(TAG_LEAF),)) + TAG_LEAF)
_NODE_HASHER: Final = hashlib.sha3_256(bytes((len(TAG_NODE),)) + TAG_NODE)

BytesLike = bytes | bytearray | memoryview
"""Anything bytes-like these functions hash."""


class StorageMerkleError(QoinError):
    """A shard tree, path or challenge input out of its bounds (sizes, counts, indices)."""


def leaf_hash(data: BytesLike) -> bytes:
    """``tagged_hash("QOIN/storage/leaf/v1", data)``."""
    hasher = _LEAF_HASHER.copy()
    hasher.update(data)
    return hasher.digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``tagged_hash("QOIN/storage/node/v1", left || right)``."""
    hasher = _NODE_HASHER.copy()
    hasher.update(left)
    hasher.update(right)
    return hasher.digest()


def _pad_table() -> tuple[bytes, ...]:
    table = [tagged_hash(TAG_PAD)]
    for _ in range(MAX_DEPTH):
        table.append(node_hash(table[-1], table[-1]))
    return tuple(table)


_PAD: Final = _pad_table()


def pad_hash(level: int) -> bytes:
    """The root of an all-padding subtree of height ``level`` (0 .. :data:`MAX_DEPTH`)."""
    if not 0 <= level <= MAX_DEPTH:
        raise StorageMerkleError(f"padding level {level} is not 0 to {MAX_DEPTH}")
    return _PAD[level]


def tree_depth(leaf_count: int) -> int:
    """``ceil(log2(leaf_count))``: 0 for one leaf."""
    _check_leaf_count(leaf_count)
    return (leaf_count - 1).bit_length()


def shard_size_for(size: int, k: int, leaf_size: int) -> int:
    """Bytes per shard of a ``size``-byte file cut into k data shards: ``ceil(size / k)`` rounded
    up to a whole number of leaves, and at least one leaf (an empty file has one zero leaf)."""
    _check_leaf_size(leaf_size)
    if size < 0:
        raise StorageMerkleError(f"file size {size} is negative")
    if not 1 <= k <= MAX_SHARDS:
        raise StorageMerkleError(f"k = {k} is not 1 to {MAX_SHARDS}")
    per_shard = max(1, -(-size // k))
    shard_size = -(-per_shard // leaf_size) * leaf_size
    _check_leaf_count(shard_size // leaf_size)
    return shard_size


def chunk_level(leaf_size: int, depth: int) -> int:
    """c = ``min(log2(CHUNK_SIZE / leaf_size), depth)``: the tree level of a chunk's node."""
    _check_leaf_size(leaf_size)
    if not 0 <= depth <= MAX_DEPTH:
        raise StorageMerkleError(f"tree depth {depth} is not 0 to {MAX_DEPTH}")
    return min((CHUNK_SIZE // leaf_size).bit_length() - 1, depth)


def chunk_count(leaf_count: int, leaf_size: int) -> int:
    """How many chunks (level-c nodes) a shard of ``leaf_count`` leaves has."""
    level = chunk_level(leaf_size, tree_depth(leaf_count))
    return -(-leaf_count >> level)


def chunk_bounds(chunk: int, leaf_count: int, leaf_size: int) -> tuple[int, int]:
    """Byte offsets ``[start, end)`` of ``chunk`` in a shard of ``leaf_count`` leaves."""
    level = chunk_level(leaf_size, tree_depth(leaf_count))
    count = -(-leaf_count >> level)
    if not 0 <= chunk < count:
        raise StorageMerkleError(f"chunk {chunk} is not 0 to {count - 1}")
    span = leaf_size << level
    return chunk * span, min((chunk + 1) * span, leaf_count * leaf_size)


def _check_leaf_size(leaf_size: int) -> None:
    if not (MIN_LEAF_SIZE <= leaf_size <= MAX_LEAF_SIZE and leaf_size & (leaf_size - 1) == 0):
        raise StorageMerkleError(
            f"leaf size {leaf_size} is not a power of two from {MIN_LEAF_SIZE} to {MAX_LEAF_SIZE}"
        )


def _check_leaf_count(leaf_count: int) -> None:
    if not 1 <= leaf_count <= MAX_LEAF_COUNT:
        raise StorageMerkleError(f"leaf count {leaf_count} is not 1 to 2^40")


def _leaf_hashes(data: BytesLike, leaf_size: int) -> bytes:
    """The leaf hashes of ``data`` (a whole number of leaves), concatenated."""
    view = memoryview(data)
    copy = _LEAF_HASHER.copy
    out: list[bytes] = []
    append = out.append
    for start in range(0, len(view), leaf_size):
        hasher = copy()
        hasher.update(view[start : start + leaf_size])
        append(hasher.digest())
    return b"".join(out)


def _parents(nodes: bytes, level: int) -> bytes:
    """The level ``level + 1`` nodes over ``nodes`` (level ``level``, concatenated; a subtree
    whose right half lies beyond the end pairs with ``pad[level]``)."""
    if len(nodes) % (2 * HASH_SIZE):
        nodes += _PAD[level]
    view = memoryview(nodes)
    copy = _NODE_HASHER.copy
    out: list[bytes] = []
    append = out.append
    for start in range(0, len(view), 2 * HASH_SIZE):
        hasher = copy()
        hasher.update(view[start : start + 2 * HASH_SIZE])
        append(hasher.digest())
    return b"".join(out)


def _subtree_nodes(data: BytesLike, leaf_size: int, levels: int) -> bytes:
    """The level-``levels`` nodes over ``data`` (leaves from a level-``levels`` boundary on; any
    missing right part of the last subtree is padding)."""
    nodes = _leaf_hashes(data, leaf_size)
    for level in range(levels):
        nodes = _parents(nodes, level)
    return nodes


def _upper_levels(chunk_nodes: bytes, level: int, depth: int) -> tuple[bytes, ...]:
    """Levels ``level .. depth`` from the level-``level`` nodes."""
    levels = [chunk_nodes]
    for current in range(level, depth):
        levels.append(_parents(levels[-1], current))
    return tuple(levels)


def _node_at(nodes: bytes, position: int, level: int) -> bytes:
    """Node ``position`` of a level's concatenated nodes, or ``pad[level]`` past their end."""
    start = position * HASH_SIZE
    if start >= len(nodes):
        return _PAD[level]
    return nodes[start : start + HASH_SIZE]


@dataclass(frozen=True)
class ShardTree:
    """A shard's Merkle tree, kept from the chunk level up (bounded memory).

    Build it with :meth:`from_bytes`, :meth:`from_file` or a :class:`ShardTreeBuilder`; persist it
    with :meth:`encode`.
    """

    leaf_size: int
    """Bytes per leaf."""
    leaf_count: int
    """Leaves L of the shard (before padding)."""
    depth: int
    """d = ceil(log2 L)."""
    level: int
    """c: the chunk level (a chunk is ``2^c`` leaves)."""
    levels: tuple[bytes, ...]
    """The nodes of levels c .. d, each level's real (non-padding) nodes concatenated."""

    def __post_init__(self) -> None:
        _check_leaf_size(self.leaf_size)
        _check_leaf_count(self.leaf_count)
        if self.depth != tree_depth(self.leaf_count):
            raise StorageMerkleError("shard tree: depth does not match the leaf count")
        if self.level != chunk_level(self.leaf_size, self.depth):
            raise StorageMerkleError("shard tree: chunk level does not match the leaf size")
        if len(self.levels) != self.depth - self.level + 1:
            raise StorageMerkleError("shard tree: wrong number of levels")
        for offset, nodes in enumerate(self.levels):
            count = -(-self.leaf_count >> (self.level + offset))
            if len(nodes) != count * HASH_SIZE:
                raise StorageMerkleError("shard tree: a level has the wrong number of nodes")

    @property
    def root(self) -> bytes:
        """The shard root (the node at level d)."""
        return self.levels[-1]

    @property
    def shard_size(self) -> int:
        """Bytes of the shard."""
        return self.leaf_count * self.leaf_size

    @property
    def chunks(self) -> int:
        """How many chunks the shard has."""
        return len(self.levels[0]) // HASH_SIZE

    @classmethod
    def from_bytes(cls, data: BytesLike, leaf_size: int) -> ShardTree:
        """The tree of a shard held in memory (``len(data)`` a positive multiple of ``leaf_size``)."""
        builder = ShardTreeBuilder(len(data), leaf_size)
        builder.update(data)
        return builder.finish()

    @classmethod
    def from_file(cls, path: Path, leaf_size: int) -> ShardTree:
        """The tree of the shard stored in ``path``, read a block at a time (never whole)."""
        try:
            with path.open("rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                if size == 0 or size % leaf_size:
                    raise StorageMerkleError(
                        f"shard file {path} of {size} bytes is not a positive multiple of the "
                        f"leaf size {leaf_size}"
                    )
                builder = ShardTreeBuilder(size, leaf_size)
                block = bytearray(_READ_BLOCK)
                view = memoryview(block)
                done = 0
                while done < size:
                    got = handle.readinto(view[: min(len(block), size - done)])
                    if not got:
                        break
                    builder.update(view[:got])
                    done += got
                if done != size or handle.read(1):
                    raise StorageMerkleError(f"shard file {path} changed while read")
        except OSError as exc:
            raise StorageMerkleError(f"cannot read shard file {path}: {exc.strerror}") from None
        return builder.finish()

    def chunk_nodes(self) -> bytes:
        """The level-c nodes, 32 bytes each, concatenated (what a provider serves for retrieval)."""
        return self.levels[0]

    def chunk_span(self, chunk: int) -> tuple[int, int]:
        """Byte offsets ``[start, end)`` of ``chunk`` in the shard."""
        return chunk_bounds(chunk, self.leaf_count, self.leaf_size)

    def chunk_of(self, index: int) -> int:
        """The chunk holding leaf ``index``."""
        self._check_index(index)
        return index >> self.level

    def _check_index(self, index: int) -> None:
        if not 0 <= index < self.leaf_count:
            raise StorageMerkleError(f"leaf index {index} is not 0 to {self.leaf_count - 1}")

    def path(self, index: int, chunk: BytesLike) -> bytes:
        """The Merkle path of leaf ``index`` (d x 32 bytes, bottom-up), given the bytes of the
        chunk holding it. :class:`StorageMerkleError` if the chunk does not hash to its node (the
        stored shard is damaged)."""
        number = self.chunk_of(index)
        start, end = self.chunk_span(number)
        if len(chunk) != end - start:
            raise StorageMerkleError(
                f"chunk {number} has {len(chunk)} bytes, expected {end - start}"
            )
        siblings = []
        nodes = _leaf_hashes(chunk, self.leaf_size)
        local = index - (number << self.level)
        for level in range(self.level):
            siblings.append(_node_at(nodes, (local >> level) ^ 1, level))
            nodes = _parents(nodes, level)
        if nodes != _node_at(self.levels[0], number, self.level):
            raise StorageMerkleError(f"chunk {number} does not hash to its node: the shard changed")
        for offset, level_nodes in enumerate(self.levels[:-1]):
            level = self.level + offset
            siblings.append(_node_at(level_nodes, (index >> level) ^ 1, level))
        return b"".join(siblings)

    def encode(self) -> bytes:
        """``b"QTREE1" || leaf_size (4) || leaf_count (8) || root || level-c nodes``."""
        return b"".join(
            (
                _TREE_MAGIC,
                self.leaf_size.to_bytes(4, "big"),
                self.leaf_count.to_bytes(8, "big"),
                self.root,
                self.levels[0],
            )
        )

    @classmethod
    def decode(cls, data: bytes) -> ShardTree:
        """Inverse of :meth:`encode`; the levels above c are recomputed and must give the root."""
        if len(data) < _TREE_HEADER or not data.startswith(_TREE_MAGIC):
            raise StorageMerkleError("not an encoded shard tree")
        offset = len(_TREE_MAGIC)
        leaf_size = int.from_bytes(data[offset : offset + 4], "big")
        leaf_count = int.from_bytes(data[offset + 4 : offset + 12], "big")
        root = data[offset + 12 : _TREE_HEADER]
        _check_leaf_size(leaf_size)
        depth = tree_depth(leaf_count)
        level = chunk_level(leaf_size, depth)
        count = -(-leaf_count >> level)
        if len(data) != _TREE_HEADER + count * HASH_SIZE:
            raise StorageMerkleError("encoded shard tree has the wrong length")
        tree = cls(
            leaf_size, leaf_count, depth, level, _upper_levels(data[_TREE_HEADER:], level, depth)
        )
        if tree.root != root:
            raise StorageMerkleError("encoded shard tree: its nodes do not give its root")
        return tree


class ShardTreeBuilder:
    """Builds a :class:`ShardTree` from a shard's bytes given piece by piece (pieces of any
    size), holding at most one chunk of them: for shards produced or received as a stream."""

    def __init__(self, shard_size: int, leaf_size: int) -> None:
        _check_leaf_size(leaf_size)
        if shard_size <= 0 or shard_size % leaf_size:
            raise StorageMerkleError(
                f"shard of {shard_size} bytes is not a positive multiple of the leaf size "
                f"{leaf_size}"
            )
        self._shard_size = shard_size
        self._leaf_size = leaf_size
        self._leaf_count = shard_size // leaf_size
        self._depth = tree_depth(self._leaf_count)
        self._level = chunk_level(leaf_size, self._depth)
        self._chunk = leaf_size << self._level
        self._block = max(_READ_BLOCK, self._chunk)
        self._pending = bytearray()
        self._parts: list[bytes] = []
        self._hashed = 0

    def _hash(self, data: memoryview) -> None:
        """Hash whole chunks (or the shard's last, short one)."""
        for start in range(0, len(data), self._block):
            self._parts.append(
                _subtree_nodes(data[start : start + self._block], self._leaf_size, self._level)
            )
        self._hashed += len(data)

    def update(self, data: BytesLike) -> None:
        """Add the shard's next bytes. :class:`StorageMerkleError` past the shard's size."""
        view = memoryview(data)
        if self._hashed + len(self._pending) + len(view) > self._shard_size:
            raise StorageMerkleError(f"more than the shard's {self._shard_size} bytes given")
        if self._pending:
            take = min(len(view), self._chunk - len(self._pending))
            self._pending += view[:take]
            view = view[take:]
            if len(self._pending) < self._chunk:
                return
            self._hash(memoryview(self._pending))
            self._pending = bytearray()
        whole = len(view) - len(view) % self._chunk
        if whole:
            self._hash(view[:whole])
        self._pending += view[whole:]

    def finish(self) -> ShardTree:
        """The tree, once every byte of the shard was given."""
        if self._pending:
            self._hash(memoryview(self._pending))
            self._pending = bytearray()
        if self._hashed != self._shard_size:
            raise StorageMerkleError(
                f"the shard has {self._shard_size} bytes, {self._hashed} were given"
            )
        levels = _upper_levels(b"".join(self._parts), self._level, self._depth)
        return ShardTree(self._leaf_size, self._leaf_count, self._depth, self._level, levels)


def shard_root(data: BytesLike, leaf_size: int) -> bytes:
    """The root of a shard held in memory."""
    return ShardTree.from_bytes(data, leaf_size).root


def _fold(node: bytes, index: int, path: bytes) -> bytes:
    """Hash ``node`` (a leaf hash, leaf ``index``) up along ``path``."""
    copy = _NODE_HASHER.copy
    for offset in range(0, len(path), HASH_SIZE):
        sibling = path[offset : offset + HASH_SIZE]
        hasher = copy()
        if index & 1:
            hasher.update(sibling)
            hasher.update(node)
        else:
            hasher.update(node)
            hasher.update(sibling)
        node = hasher.digest()
        index >>= 1
    return node


def verify_path(root: bytes, depth: int, index: int, leaf: bytes, path: bytes) -> bool:
    """Whether ``leaf`` is leaf ``index`` of a depth-``depth`` tree with this root."""
    if (
        not 0 <= depth <= MAX_DEPTH
        or not 0 <= index < (1 << depth)
        or len(path) != depth * HASH_SIZE
        or len(root) != HASH_SIZE
    ):
        return False
    return _fold(leaf_hash(leaf), index, path) == root


def challenge_seed(beacon: bytes, deal: int, shard: int, period: int) -> bytes:
    """``tagged_hash("QOIN/storage/challenge/v1", beacon || deal (8) || shard (1) || period (8))``."""
    if len(beacon) != HASH_SIZE:
        raise StorageMerkleError(f"beacon has {len(beacon)} bytes, expected {HASH_SIZE}")
    if not 0 <= deal < 1 << 64 or not 0 <= period < 1 << 64:
        raise StorageMerkleError("deal id and period are 0 to 2^64 - 1")
    if not 0 <= shard < MAX_SHARDS:
        raise StorageMerkleError(f"shard index {shard} is not 0 to {MAX_SHARDS - 1}")
    return tagged_hash(
        TAG_CHALLENGE,
        beacon,
        deal.to_bytes(8, "big"),
        bytes((shard,)),
        period.to_bytes(8, "big"),
    )


def challenge_indices(seed: bytes, leaf_count: int, samples: int) -> list[int]:
    """The ``samples`` challenged leaves: leaf j is
    ``int(tagged_hash("QOIN/storage/sample/v1", seed || j (1))[:8], BE) mod leaf_count``."""
    _check_leaf_count(leaf_count)
    if not 1 <= samples <= MAX_SAMPLES:
        raise StorageMerkleError(f"samples {samples} is not 1 to {MAX_SAMPLES}")
    if len(seed) != HASH_SIZE:
        raise StorageMerkleError(f"challenge seed has {len(seed)} bytes, expected {HASH_SIZE}")
    return [
        int.from_bytes(tagged_hash(TAG_SAMPLE, seed, bytes((j,)))[:8], "big") % leaf_count
        for j in range(samples)
    ]


def verify_proof(
    root: bytes,
    leaf_count: int,
    leaf_size: int,
    indices: Sequence[int],
    leaves: Sequence[bytes],
    paths: bytes,
) -> bool:
    """Whether ``leaves`` (each ``leaf_size`` bytes) are leaves ``indices`` of the shard with this
    root, by their paths (``paths``: one d x 32-byte path per leaf, concatenated). False for an
    empty proof and for any wrong count, size or index."""
    if (
        not 1 <= leaf_count <= MAX_LEAF_COUNT
        or not MIN_LEAF_SIZE <= leaf_size <= MAX_LEAF_SIZE
        or leaf_size & (leaf_size - 1)
        or not 1 <= len(indices) <= MAX_SAMPLES
        or len(leaves) != len(indices)
        or len(root) != HASH_SIZE
    ):
        return False
    depth = (leaf_count - 1).bit_length()
    step = depth * HASH_SIZE
    if len(paths) != step * len(indices):
        return False
    for number, (index, leaf) in enumerate(zip(indices, leaves, strict=True)):
        if not 0 <= index < leaf_count or len(leaf) != leaf_size:
            return False
        path = paths[number * step : (number + 1) * step]
        if _fold(leaf_hash(leaf), index, path) != root:
            return False
    return True


def proof_hash_count(samples: int, depth: int) -> int:
    """The hashes :func:`verify_proof` computes at most for ``samples`` leaves of a depth-``depth``
    tree (one leaf hash and d node hashes each): what the actor charges gas for."""
    return samples * (depth + 1)


def content_id(shard_roots: Sequence[bytes]) -> bytes:
    """The CID: the root of a tree over ``tagged_hash("QOIN/storage/cid-leaf/v1", index (1) ||
    root)`` for the shards in order, padded like a shard tree."""
    if not 1 <= len(shard_roots) <= MAX_SHARDS:
        raise StorageMerkleError(f"a content id combines 1 to {MAX_SHARDS} shard roots")
    leaves = []
    for index, root in enumerate(shard_roots):
        if len(root) != HASH_SIZE:
            raise StorageMerkleError(f"shard root {index} has {len(root)} bytes, expected 32")
        leaves.append(tagged_hash(TAG_CID_LEAF, bytes((index,)), root))
    nodes = b"".join(leaves)
    for level in range((len(shard_roots) - 1).bit_length()):
        nodes = _parents(nodes, level)
    return nodes


def verify_chunk_nodes(root: bytes, nodes: bytes, leaf_count: int, leaf_size: int) -> bool:
    """Whether ``nodes`` are the level-c nodes of the shard with this root."""
    try:
        depth = tree_depth(leaf_count)
        level = chunk_level(leaf_size, depth)
    except StorageMerkleError:
        return False
    if len(nodes) != (-(-leaf_count >> level)) * HASH_SIZE or len(root) != HASH_SIZE:
        return False
    return _upper_levels(bytes(nodes), level, depth)[-1] == root


def verify_chunk(
    nodes: bytes, chunk: int, data: BytesLike, leaf_count: int, leaf_size: int
) -> bool:
    """Whether ``data`` is chunk ``chunk`` of the shard whose level-c nodes are ``nodes`` (checked
    against the root first with :func:`verify_chunk_nodes`)."""
    try:
        level = chunk_level(leaf_size, tree_depth(leaf_count))
        start, end = chunk_bounds(chunk, leaf_count, leaf_size)
    except StorageMerkleError:
        return False
    if len(data) != end - start or len(nodes) != (-(-leaf_count >> level)) * HASH_SIZE:
        return False
    return (
        _subtree_nodes(data, leaf_size, level) == nodes[chunk * HASH_SIZE : (chunk + 1) * HASH_SIZE]
    )


def build_proof(
    tree: ShardTree, indices: Sequence[int], read_chunk: Callable[[int], bytes]
) -> tuple[list[bytes], bytes]:
    """The challenged leaves and their paths (concatenated), reading each needed chunk once with
    ``read_chunk(chunk)`` (which returns the chunk's bytes, :meth:`ShardTree.chunk_span`)."""
    if not 1 <= len(indices) <= MAX_SAMPLES:
        raise StorageMerkleError(f"a proof has 1 to {MAX_SAMPLES} leaves")
    chunks: dict[int, bytes] = {}
    leaves = []
    paths = []
    for index in indices:
        number = tree.chunk_of(index)
        if number not in chunks:
            chunks[number] = read_chunk(number)
        chunk = chunks[number]
        paths.append(tree.path(index, chunk))
        local = (index - (number << tree.level)) * tree.leaf_size
        leaves.append(bytes(chunk[local : local + tree.leaf_size]))
    return leaves, b"".join(paths)
