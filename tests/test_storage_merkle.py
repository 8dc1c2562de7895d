"""Shard trees, paths, proofs, chunk checks and content ids (docs/spec/storage.md §2, §4.3).

* the root of :class:`ShardTree` (from bytes, from a file, decoded) equals a naive reference tree
  written here from the spec's words (a full 2^d list with padding subtrees);
* every leaf's path verifies and a flipped bit (leaf, path, root, index) fails;
* proofs from ``build_proof`` over challenge indices verify; a wrong leaf or index fails;
  ``verify_proof`` returns False (never raises) on wrong sizes and counts;
* chunk nodes and chunks verify (short last chunk, one-leaf shards, shards smaller than a chunk),
  a changed chunk or node fails; a damaged chunk given to ``path`` is refused;
* content ids are order-sensitive and match the reference; inputs out of bounds raise.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qoin.crypto.hashing import tagged_hash
from qoin.storage import merkle
from qoin.storage.merkle import (
    CHUNK_SIZE,
    ShardTree,
    StorageMerkleError,
    build_proof,
    challenge_indices,
    challenge_seed,
    content_id,
    verify_chunk,
    verify_chunk_nodes,
    verify_path,
    verify_proof,
)

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LEAF_SIZES = st.sampled_from([32, 64, 256, 4096])


def ref_node(left: bytes, right: bytes) -> bytes:
    return tagged_hash(b"QOIN/storage/node/v1", left + right)


def ref_root(leaves: list[bytes]) -> bytes:
    """The spec's tree, naively: pad the leaf list to 2^d with None; a pair of two padding
    subtrees is padding of the next level; the root is what is left."""
    pad = [tagged_hash(b"QOIN/storage/pad/v1")]
    depth = 0
    while (1 << depth) < len(leaves):
        depth += 1
    for _ in range(depth):
        pad.append(ref_node(pad[-1], pad[-1]))
    level: list[bytes | None] = [*leaves, *([None] * ((1 << depth) - len(leaves)))]
    for height in range(depth):
        level = [
            None if a is None and b is None else ref_node(a or pad[height], b or pad[height])
            for a, b in zip(level[0::2], level[1::2], strict=True)
        ]
    return level[0] or pad[depth]


def ref_shard_root(data: bytes, leaf_size: int) -> bytes:
    return ref_root(
        [
            tagged_hash(b"QOIN/storage/leaf/v1", data[i : i + leaf_size])
            for i in range(0, len(data), leaf_size)
        ]
    )


@st.composite
def shards(draw: st.DrawFn, max_leaves: int = 600) -> tuple[bytes, int]:
    leaf_size = draw(LEAF_SIZES)
    leaves = draw(st.integers(1, max(1, min(max_leaves, (1 << 20) // leaf_size))))
    seed = draw(st.binary(min_size=8, max_size=8))
    return shard_bytes(seed, leaves * leaf_size), leaf_size


def shard_bytes(seed: bytes, size: int) -> bytes:
    """Deterministic pseudo-random bytes (hypothesis-drawn seeds, cheap large data)."""
    return hashlib.shake_256(seed).digest(size)


def chunk_of(data: bytes, tree: ShardTree, index: int) -> bytes:
    start, end = tree.chunk_span(tree.chunk_of(index))
    return data[start:end]


def flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[(bit // 8) % len(out)] ^= 1 << (bit % 8)
    return bytes(out)


@FAST
@given(shards())
def test_root_matches_the_reference_tree(shard: tuple[bytes, int]) -> None:
    data, leaf_size = shard
    tree = ShardTree.from_bytes(data, leaf_size)
    assert tree.root == ref_shard_root(data, leaf_size)
    assert tree.leaf_count == len(data) // leaf_size
    assert tree.depth == (tree.leaf_count - 1).bit_length()
    assert ShardTree.decode(tree.encode()) == tree


def test_from_file_streams_to_the_same_tree(tmp_path: Path) -> None:
    # larger than one read block, not a whole number of chunks
    data = os.urandom((1 << 20) * 2 + 3 * CHUNK_SIZE + 5 * 256)
    path = tmp_path / "shard"
    path.write_bytes(data)
    tree = ShardTree.from_file(path, 256)
    assert tree == ShardTree.from_bytes(data, 256)
    assert tree.root == merkle.shard_root(data, 256)
    # bounded memory: only the chunk level and above are kept (not one hash per leaf)
    assert sum(len(level) for level in tree.levels) <= 32 * (2 * tree.chunks + tree.depth)
    path.write_bytes(data[:-1])
    with pytest.raises(StorageMerkleError, match="multiple of the leaf size"):
        ShardTree.from_file(path, 256)
    with pytest.raises(StorageMerkleError, match="cannot read"):
        ShardTree.from_file(tmp_path / "missing", 256)


@FAST
@given(shards(max_leaves=300), st.data())
def test_every_path_verifies_and_a_flipped_bit_fails(
    shard: tuple[bytes, int], data: st.DataObject
) -> None:
    content, leaf_size = shard
    tree = ShardTree.from_bytes(content, leaf_size)
    for index in range(tree.leaf_count):
        leaf = content[index * leaf_size : (index + 1) * leaf_size]
        path = tree.path(index, chunk_of(content, tree, index))
        assert len(path) == 32 * tree.depth
        assert verify_path(tree.root, tree.depth, index, leaf, path)
    index = data.draw(st.integers(0, tree.leaf_count - 1))
    leaf = content[index * leaf_size : (index + 1) * leaf_size]
    path = tree.path(index, chunk_of(content, tree, index))
    bit = data.draw(st.integers(0, 1 << 20))
    assert not verify_path(tree.root, tree.depth, index, flip(leaf, bit), path)
    assert not verify_path(flip(tree.root, bit), tree.depth, index, leaf, path)
    if tree.depth:
        assert not verify_path(tree.root, tree.depth, index, leaf, flip(path, bit))
        assert not verify_path(tree.root, tree.depth, index ^ 1, leaf, path)
    assert not verify_path(tree.root, tree.depth, index, leaf, path + bytes(32))
    assert not verify_path(tree.root, tree.depth, 1 << tree.depth, leaf, path)


@FAST
@given(shards(), st.binary(min_size=32, max_size=32), st.integers(1, 64))
def test_proofs_verify_and_wrong_leaves_or_indices_fail(
    shard: tuple[bytes, int], beacon: bytes, samples: int
) -> None:
    content, leaf_size = shard
    tree = ShardTree.from_bytes(content, leaf_size)
    seed = challenge_seed(beacon, 7, 3, 11)
    indices = challenge_indices(seed, tree.leaf_count, samples)
    assert all(0 <= index < tree.leaf_count for index in indices)
    reads: list[int] = []

    def read_chunk(chunk: int) -> bytes:
        reads.append(chunk)
        start, end = tree.chunk_span(chunk)
        return content[start:end]

    leaves, paths = build_proof(tree, indices, read_chunk)
    assert len(reads) == len(set(reads))  # each chunk read once
    args = (tree.root, tree.leaf_count, leaf_size)
    assert verify_proof(*args, indices, leaves, paths)
    assert len(paths) == samples * tree.depth * 32
    assert merkle.proof_hash_count(samples, tree.depth) == samples * (tree.depth + 1)
    wrong_leaf = [flip(leaves[0], 5), *leaves[1:]]
    assert not verify_proof(*args, indices, wrong_leaf, paths)
    if tree.leaf_count > 1:
        other = (indices[0] + 1) % tree.leaf_count
        if content[other * leaf_size : (other + 1) * leaf_size] != leaves[0]:
            assert not verify_proof(*args, [other, *indices[1:]], leaves, paths)
    # wrong sizes and counts: False, never an exception
    assert not verify_proof(*args, indices, leaves, paths + bytes(32))
    assert not verify_proof(*args, indices, leaves, paths[:-1] if paths else b"x")
    assert not verify_proof(*args, indices, leaves[:-1], paths)
    assert not verify_proof(*args, indices, [leaves[0] + b"\0", *leaves[1:]], paths)
    assert not verify_proof(*args, [tree.leaf_count, *indices[1:]], leaves, paths)
    assert not verify_proof(*args, [-1, *indices[1:]], leaves, paths)
    assert not verify_proof(*args, [], [], b"")
    assert not verify_proof(tree.root, tree.leaf_count, leaf_size + 1, indices, leaves, paths)
    assert not verify_proof(tree.root, 0, leaf_size, indices, leaves, paths)
    assert not verify_proof(tree.root[:31], tree.leaf_count, leaf_size, indices, leaves, paths)


def test_challenge_is_the_spec_formula() -> None:
    beacon = bytes(range(32))
    seed = challenge_seed(beacon, 5, 2, 9)
    expected_seed = tagged_hash(
        b"QOIN/storage/challenge/v1",
        beacon + (5).to_bytes(8, "big") + b"\x02" + (9).to_bytes(8, "big"),
    )
    assert seed == expected_seed
    assert challenge_indices(seed, 1000, 3) == [
        int.from_bytes(tagged_hash(b"QOIN/storage/sample/v1", seed + bytes((j,)))[:8], "big") % 1000
        for j in range(3)
    ]
    assert challenge_seed(beacon, 5, 2, 10) != seed
    assert challenge_seed(beacon, 5, 3, 9) != seed
    with pytest.raises(StorageMerkleError, match="beacon"):
        challenge_seed(beacon[:31], 5, 2, 9)
    with pytest.raises(StorageMerkleError, match="shard index"):
        challenge_seed(beacon, 5, 256, 9)
    with pytest.raises(StorageMerkleError, match="samples"):
        challenge_indices(seed, 10, 65)
    with pytest.raises(StorageMerkleError, match="leaf count"):
        challenge_indices(seed, 0, 8)


@FAST
@given(shards(max_leaves=2000), st.data())
def test_chunk_nodes_and_chunks_verify(shard: tuple[bytes, int], data: st.DataObject) -> None:
    content, leaf_size = shard
    tree = ShardTree.from_bytes(content, leaf_size)
    nodes = tree.chunk_nodes()
    count = merkle.chunk_count(tree.leaf_count, leaf_size)
    assert len(nodes) == 32 * count == 32 * tree.chunks
    assert verify_chunk_nodes(tree.root, nodes, tree.leaf_count, leaf_size)
    pieces = [content[slice(*tree.chunk_span(chunk))] for chunk in range(count)]
    assert b"".join(pieces) == content
    assert all(len(piece) <= CHUNK_SIZE for piece in pieces)
    for chunk, piece in enumerate(pieces):
        assert verify_chunk(nodes, chunk, piece, tree.leaf_count, leaf_size)
    chunk = data.draw(st.integers(0, count - 1))
    bit = data.draw(st.integers(0, 1 << 20))
    assert not verify_chunk(nodes, chunk, flip(pieces[chunk], bit), tree.leaf_count, leaf_size)
    assert not verify_chunk(nodes, chunk, pieces[chunk][:-1], tree.leaf_count, leaf_size)
    assert not verify_chunk(nodes, count, pieces[chunk], tree.leaf_count, leaf_size)
    assert not verify_chunk_nodes(tree.root, flip(nodes, bit), tree.leaf_count, leaf_size)
    assert not verify_chunk_nodes(tree.root, nodes + bytes(32), tree.leaf_count, leaf_size)
    assert not verify_chunk_nodes(tree.root, nodes, tree.leaf_count, leaf_size * 3)
    # a damaged chunk is refused when building a path: the stored shard changed
    index = data.draw(st.integers(0, tree.leaf_count - 1))
    damaged = flip(chunk_of(content, tree, index), bit)
    with pytest.raises(StorageMerkleError, match="does not hash to its node"):
        tree.path(index, damaged)


@FAST
@given(shards(max_leaves=1000), st.lists(st.integers(0, 100_000), max_size=8))
def test_builder_takes_pieces_of_any_size(shard: tuple[bytes, int], cuts: list[int]) -> None:
    content, leaf_size = shard
    builder = merkle.ShardTreeBuilder(len(content), leaf_size)
    offsets = sorted({0, len(content), *(cut % (len(content) + 1) for cut in cuts)})
    for start, end in itertools.pairwise(offsets):
        builder.update(content[start:end])
    builder.update(b"")
    assert builder.finish() == ShardTree.from_bytes(content, leaf_size)
    early = merkle.ShardTreeBuilder(len(content), leaf_size)
    early.update(content[:-1])
    with pytest.raises(StorageMerkleError, match="were given"):
        early.finish()
    with pytest.raises(StorageMerkleError, match="more than the shard's"):
        early.update(content[-2:])
    with pytest.raises(StorageMerkleError, match="multiple of the leaf size"):
        merkle.ShardTreeBuilder(len(content) + 1, leaf_size)


def test_short_last_chunk_and_tiny_shards() -> None:
    one = os.urandom(256)
    tree = ShardTree.from_bytes(one, 256)
    assert (tree.depth, tree.level, tree.chunks) == (0, 0, 1)
    assert tree.root == tagged_hash(b"QOIN/storage/leaf/v1", one) == tree.chunk_nodes()
    assert tree.path(0, one) == b""
    assert verify_proof(tree.root, 1, 256, [0], [one], b"")
    assert verify_chunk(tree.chunk_nodes(), 0, one, 1, 256)
    # 300 leaves of 256 bytes: one full chunk of 256 leaves and a short one of 44
    data = os.urandom(300 * 256)
    tree = ShardTree.from_bytes(data, 256)
    assert (tree.depth, tree.level, tree.chunks) == (9, 8, 2)
    assert tree.chunk_span(1) == (CHUNK_SIZE, 300 * 256)
    assert verify_chunk(tree.chunk_nodes(), 1, data[CHUNK_SIZE:], 300, 256)
    assert tree.root == ref_shard_root(data, 256)
    with pytest.raises(StorageMerkleError, match="chunk 2"):
        tree.chunk_span(2)
    with pytest.raises(StorageMerkleError, match="leaf index"):
        tree.path(300, data[CHUNK_SIZE:])
    with pytest.raises(StorageMerkleError, match="bytes, expected"):
        tree.path(299, data[CHUNK_SIZE:-1])


def test_sizes_and_bounds() -> None:
    assert merkle.tree_depth(1) == 0
    assert merkle.tree_depth(2) == 1
    assert merkle.tree_depth(5) == 3
    assert merkle.tree_depth(1 << 40) == 40
    with pytest.raises(StorageMerkleError, match="leaf count"):
        merkle.tree_depth((1 << 40) + 1)
    with pytest.raises(StorageMerkleError, match="leaf count"):
        merkle.tree_depth(0)
    assert merkle.shard_size_for(1000, 2, 256) == 512
    assert merkle.shard_size_for(1024, 2, 256) == 512
    assert merkle.shard_size_for(1025, 2, 256) == 768
    assert merkle.shard_size_for(0, 3, 256) == 256  # an empty file still has one leaf
    assert merkle.shard_size_for(1, 1, 32) == 32
    with pytest.raises(StorageMerkleError, match="leaf count"):
        merkle.shard_size_for(1 << 60, 1, 32)
    with pytest.raises(StorageMerkleError, match="leaf size"):
        merkle.shard_size_for(100, 2, 100)
    with pytest.raises(StorageMerkleError, match="k = 0"):
        merkle.shard_size_for(100, 0, 256)
    assert merkle.chunk_level(256, 20) == 8
    assert merkle.chunk_level(4096, 20) == 4
    assert merkle.chunk_level(256, 3) == 3
    assert merkle.pad_hash(1) == ref_node(merkle.pad_hash(0), merkle.pad_hash(0))
    assert merkle.pad_hash(0) == tagged_hash(b"QOIN/storage/pad/v1")
    with pytest.raises(StorageMerkleError, match="multiple"):
        ShardTree.from_bytes(b"", 256)
    with pytest.raises(StorageMerkleError, match="multiple"):
        ShardTree.from_bytes(bytes(300), 256)
    tree = ShardTree.from_bytes(bytes(1024), 256)
    encoded = tree.encode()
    with pytest.raises(StorageMerkleError, match="wrong length"):
        ShardTree.decode(encoded + b"\0")
    with pytest.raises(StorageMerkleError, match="do not give its root"):
        ShardTree.decode(encoded[:-1] + bytes((encoded[-1] ^ 1,)))
    with pytest.raises(StorageMerkleError, match="not an encoded"):
        ShardTree.decode(b"QTREE")


@given(st.lists(st.binary(min_size=32, max_size=32), min_size=1, max_size=20))
def test_content_id(roots: list[bytes]) -> None:
    cid = content_id(roots)
    leaves = [
        tagged_hash(b"QOIN/storage/cid-leaf/v1", bytes((i,)) + root) for i, root in enumerate(roots)
    ]
    assert cid == ref_root(leaves)
    if len(roots) > 1 and roots[0] != roots[1]:
        assert content_id([roots[1], roots[0], *roots[2:]]) != cid
    if len(roots) == 2:
        assert cid == ref_node(leaves[0], leaves[1])  # n = 2 gives depth 1


def test_content_id_bounds() -> None:
    with pytest.raises(StorageMerkleError, match="1 to 256"):
        content_id([])
    with pytest.raises(StorageMerkleError, match="has 31 bytes"):
        content_id([bytes(32), bytes(31)])
