"""The account-state sparse Merkle tree: definition, batches, proofs, stores, versions and pruning."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qoin.crypto.hashing import sha3_256, tagged_hash
from qoin.encoding.codec import DecodeError
from qoin.state.nodestore import MemoryNodeStore, NodeCache, NodeStore, SqliteNodeStore
from qoin.state.smt import (
    EMPTY,
    MAX_VALUE_SIZE,
    NODE_INNER,
    NODE_LEAF,
    CorruptNode,
    InvalidChange,
    MissingNode,
    Proof,
    ProofError,
    SparseMerkleTree,
    VersionError,
    _leaf_from_hash,
    _node,
    compute_root,
    leaf_hash,
    node_hash,
    verify_proof,
)


def key_of(i: int) -> bytes:
    return sha3_256(b"key", i.to_bytes(4, "big"))


def flip_bit(key: bytes, bit: int) -> bytes:
    data = bytearray(key)
    data[bit // 8] ^= 0x80 >> (bit % 8)
    return bytes(data)


# A small universe with random keys and keys sharing long prefixes (deep chains, depth-256 leaves).
UNIVERSE = [key_of(i) for i in range(24)]
UNIVERSE += [flip_bit(UNIVERSE[0], 255), flip_bit(UNIVERSE[0], 254), flip_bit(UNIVERSE[1], 200)]
UNIVERSE += [flip_bit(UNIVERSE[2], 9), flip_bit(UNIVERSE[2], 10), bytes(32), b"\xff" * 32]

keys_st = st.sampled_from(UNIVERSE)
values_st = st.binary(max_size=40)
batches_st = st.dictionaries(keys_st, st.none() | values_st, max_size=12)
# Few keys and values: nodes are often re-created after going stale (the hard case for pruning).
small_batches_st = st.dictionaries(
    st.sampled_from(UNIVERSE[:6] + UNIVERSE[-6:]),
    st.sampled_from([None, b"", b"a", b"b"]),
    max_size=6,
)


def bits_of(key: bytes) -> str:
    return bin(int.from_bytes(key, "big"))[2:].zfill(256)


def reachable(store: NodeStore, root: bytes) -> set[bytes]:
    """Every node of the tree ``root``, checking that each is present and hashes to its name."""
    seen: set[bytes] = set()
    stack = [root] if root != EMPTY else []
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        data = store.get(current)
        assert data is not None, f"missing node {current.hex()}"
        seen.add(current)
        if data[0] == NODE_LEAF:
            assert leaf_hash(data[1:33], data[33:]) == current
        else:
            assert data[0] == NODE_INNER and len(data) == 65
            assert node_hash(data[1:33], data[33:65]) == current
            stack.extend(h for h in (data[1:33], data[33:65]) if h != EMPTY)
    return seen


def apply_model(model: dict[bytes, bytes], batch: dict[bytes, bytes | None]) -> None:
    for key, value in batch.items():
        if value is None:
            model.pop(key, None)
        else:
            model[key] = value


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[SqliteNodeStore]:
    """A store on a file in autocommit mode, as the tests use it (no enclosing transaction): each
    write is its own commit, so the file is not synced (durability is not what they check; with
    syncing, these commits took most of a minute on a busy disk)."""
    connection = sqlite3.connect(tmp_path / "state.sqlite3", isolation_level=None)
    connection.execute("PRAGMA synchronous=OFF")
    yield SqliteNodeStore(connection, cache_nodes=64)
    connection.close()


# --- Definition and known vectors -------------------------------------------------------------


def test_empty_tree() -> None:
    assert compute_root({}) == bytes(32) == EMPTY
    tree = SparseMerkleTree(MemoryNodeStore())
    assert tree.root == EMPTY
    assert tree.get(key_of(1)) is None
    proof = tree.prove(key_of(1))
    assert proof == Proof(())
    assert verify_proof(EMPTY, key_of(1), proof) is None


def test_single_leaf_root_is_its_leaf_hash() -> None:
    key, value = key_of(7), b"account"
    expected = tagged_hash(b"QOIN/smt-leaf/v1", key + sha3_256(value))
    assert leaf_hash(key, value) == expected
    assert compute_root({key: value}) == expected
    tree = SparseMerkleTree(MemoryNodeStore())
    assert tree.update({key: value}, 1) == expected
    proof = tree.prove(key)
    assert proof.siblings == ()
    assert verify_proof(expected, key, proof) == value


def test_fast_hashes_match_tagged_hash() -> None:
    left, right = key_of(1), key_of(2)
    assert _node(left, right) == tagged_hash(b"QOIN/smt-node/v1", left, right)
    assert _leaf_from_hash(left, sha3_256(b"v")) == leaf_hash(left, b"v")


def test_bit_order_and_chains() -> None:
    zero, top = bytes(32), b"\x80" + bytes(31)  # differ at bit 0: zero left, top right
    assert compute_root({top: b"b", zero: b"a"}) == node_hash(
        leaf_hash(zero, b"a"), leaf_hash(top, b"b")
    )
    one = b"\x20" + bytes(31)  # differs from zero at bit 2: two chain nodes above the split
    inner = node_hash(leaf_hash(zero, b"a"), leaf_hash(one, b"c"))
    expected = node_hash(node_hash(inner, EMPTY), EMPTY)
    assert compute_root({zero: b"a", one: b"c"}) == expected
    last = bytes(31) + b"\x01"  # differs at bit 255: leaves at depth 256
    deep = node_hash(leaf_hash(zero, b"a"), leaf_hash(last, b"d"))
    for _ in range(255):
        deep = node_hash(deep, EMPTY)
    tree = SparseMerkleTree(MemoryNodeStore())
    assert (
        tree.update({zero: b"a", last: b"d"}, 1) == deep == compute_root({zero: b"a", last: b"d"})
    )
    proof = tree.prove(last)
    assert len(proof.siblings) == 256
    assert verify_proof(deep, last, proof) == b"d"
    assert verify_proof(deep, last, Proof.decode(proof.encode())) == b"d"
    # Deleting one collapses the whole chain back into the other leaf.
    assert tree.update({zero: None}, 2) == leaf_hash(last, b"d")


def test_invalid_changes() -> None:
    tree = SparseMerkleTree(MemoryNodeStore())
    with pytest.raises(InvalidChange):
        tree.update({b"short": b"v"}, 1)
    with pytest.raises(InvalidChange):
        tree.update({key_of(1): bytes(MAX_VALUE_SIZE + 1)}, 1)
    assert tree.update({key_of(1): bytes(MAX_VALUE_SIZE)}, 1) != EMPTY
    with pytest.raises(InvalidChange):
        tree.get(b"short")


# --- Batches against the definition ------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.lists(batches_st, min_size=1, max_size=8))
def test_batches_match_rebuild(batches: list[dict[bytes, bytes | None]]) -> None:
    store = MemoryNodeStore()
    tree = SparseMerkleTree(store)
    model: dict[bytes, bytes] = {}
    for version, batch in enumerate(batches):
        apply_model(model, batch)
        root = tree.update(batch, version)
        assert root == compute_root(model)
        reachable(store, root)
    for key in UNIVERSE:
        assert tree.get(key) == model.get(key)
    # The same final set inserted in one batch, in another store, gives the same root.
    fresh = SparseMerkleTree(MemoryNodeStore())
    assert fresh.update(dict(model), 0) == tree.root


@settings(max_examples=30, deadline=None)
@given(st.dictionaries(keys_st, values_st, max_size=20), st.randoms(use_true_random=False))
def test_order_independence(pairs: dict[bytes, bytes], rng: random.Random) -> None:
    expected = compute_root(pairs)
    tree = SparseMerkleTree(MemoryNodeStore())
    extra = {key: b"temporary" for key in UNIVERSE if key not in pairs}
    items = list(pairs.items()) + list(extra.items())
    rng.shuffle(items)
    version = 0
    while items:  # insert everything (plus extras) in random chunks, then delete the extras
        size = rng.randint(1, 5)
        chunk, items = items[:size], items[size:]
        tree.update(dict(chunk), version)
        version += 1
    doomed = list(extra)
    rng.shuffle(doomed)
    for start in range(0, len(doomed), 3):
        tree.update(dict.fromkeys(doomed[start : start + 3]), version)
        version += 1
    assert tree.root == expected


def test_large_random_batches_match_rebuild() -> None:
    rng = random.Random(1)
    tree = SparseMerkleTree(MemoryNodeStore())
    model: dict[bytes, bytes] = {}
    keys = [key_of(i) for i in range(3000)]
    for version in range(6):
        batch: dict[bytes, bytes | None] = {}
        for key in rng.sample(keys, 700):
            batch[key] = None if rng.random() < 0.3 else rng.randbytes(rng.randint(0, 50))
        apply_model(model, batch)
        assert tree.update(batch, version) == compute_root(model)
    assert all(tree.get(key) == model.get(key) for key in keys)


def test_noop_update_keeps_root_and_writes_nothing() -> None:
    store = MemoryNodeStore()
    tree = SparseMerkleTree(store)
    pairs = {key_of(i): b"v%d" % i for i in range(50)}
    root = tree.update(pairs, 1)
    count = store.node_count()
    assert tree.update({key_of(3): b"v3", key_of(1000): None}, 2) == root
    assert store.node_count() == count
    record = store.record(2)
    assert record is not None and record.stale == b"" and record.created == b""


# --- Proofs -------------------------------------------------------------------------------------


def check_all_proofs(tree: SparseMerkleTree, model: dict[bytes, bytes]) -> None:
    for key in UNIVERSE + [key_of(i) for i in range(100, 120)]:
        proof = tree.prove(key)
        decoded = Proof.decode(proof.encode())
        assert decoded == proof
        assert verify_proof(tree.root, key, decoded) == model.get(key)


@settings(max_examples=40, deadline=None)
@given(st.lists(batches_st, min_size=1, max_size=4))
def test_proofs_verify_for_present_and_absent_keys(
    batches: list[dict[bytes, bytes | None]],
) -> None:
    tree = SparseMerkleTree(MemoryNodeStore())
    model: dict[bytes, bytes] = {}
    for version, batch in enumerate(batches):
        apply_model(model, batch)
        tree.update(batch, version)
    check_all_proofs(tree, model)


def mutations(encoded: bytes, limit: int = 400) -> Iterator[bytes]:
    step = max(1, len(encoded) // limit)
    for index in range(0, len(encoded), step):
        for mask in (0x01, 0x80):
            data = bytearray(encoded)
            data[index] ^= mask
            yield bytes(data)
    yield encoded[:-1]
    yield encoded + b"\x00"


def assert_rejected(root: bytes, key: bytes, encoded: bytes) -> None:
    try:
        proof = Proof.decode(encoded)
    except DecodeError:
        return
    with pytest.raises(ProofError):
        verify_proof(root, key, proof)


def test_mutated_proofs_fail() -> None:
    rng = random.Random(2)
    tree = SparseMerkleTree(MemoryNodeStore())
    pairs = {key_of(i): rng.randbytes(rng.randint(0, 60)) for i in range(300)}
    pairs[flip_bit(key_of(0), 255)] = b"deep"
    tree.update(pairs, 1)
    other_root = SparseMerkleTree(MemoryNodeStore()).update({key_of(1): b"x"}, 1)
    kinds = set()
    for key in [key_of(0), flip_bit(key_of(0), 255), key_of(5), key_of(1000), key_of(1001)]:
        proof = tree.prove(key)
        kinds.add(proof.terminal)
        encoded = proof.encode()
        assert verify_proof(tree.root, key, proof) == pairs.get(key)
        for mutated in mutations(encoded):
            assert_rejected(tree.root, key, mutated)
        with pytest.raises(ProofError):
            verify_proof(other_root, key, proof)
        if proof.leaf_key != flip_bit(key, 3):
            with pytest.raises(ProofError):
                verify_proof(tree.root, flip_bit(key, 3), proof)
    # Absent keys ending on an empty subtree and on another key's leaf, and inclusion: all covered.
    assert kinds == {0, 1, 2}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(keys_st, values_st, min_size=1, max_size=10), keys_st)
def test_mutated_proofs_fail_property(pairs: dict[bytes, bytes], key: bytes) -> None:
    tree = SparseMerkleTree(MemoryNodeStore())
    tree.update(pairs, 0)
    encoded = tree.prove(key).encode()
    for mutated in mutations(encoded, limit=60):
        assert_rejected(tree.root, key, mutated)


def test_malformed_proofs() -> None:
    tree = SparseMerkleTree(MemoryNodeStore())
    a, b = bytes(32), b"\x80" + bytes(31)
    root = tree.update({a: b"A", b: b"B"}, 1)
    good = tree.prove(a)
    assert verify_proof(root, a, good) == b"A"
    leaf_b = good.siblings[0]
    bad = [
        Proof(good.siblings, a, value_hash=sha3_256(b"A")),  # own leaf without its value
        Proof(good.siblings, a, value=b"A", value_hash=sha3_256(b"A")),  # both
        Proof((), a, value=b"B"),  # wrong value
        Proof((b"\x00" * 31,), a, value=b"A"),  # short sibling
        Proof((leaf_b, EMPTY), a, value=b"A"),  # terminal beside an empty sibling
        Proof((EMPTY,) * 257),  # too many siblings
        Proof((), None, value=b"A"),  # empty terminal with a value
    ]
    for proof in bad:
        with pytest.raises(ProofError):
            verify_proof(root, a, proof)
    # An exclusion leaf must share the walked prefix with the key.
    c = b"\x40" + bytes(31)  # goes left at depth 0 like a, then differs at bit 1
    proof_c = tree.prove(c)
    assert proof_c.leaf_key == a and verify_proof(root, c, proof_c) is None
    with pytest.raises(ProofError):
        verify_proof(root, b, Proof(proof_c.siblings, a, value_hash=sha3_256(b"A")))
    with pytest.raises(ProofError):
        verify_proof(root[:31], a, good)
    with pytest.raises(ProofError):
        Proof(good.siblings, a, value=b"A", value_hash=EMPTY).encode()
    with pytest.raises(DecodeError):
        Proof.decode(b"\x81\x02" + bytes(32 * 257) + b"\x00")  # 257 siblings
    with pytest.raises(DecodeError):
        Proof.decode(b"\x00\x03")  # unknown terminal


# --- Stores ------------------------------------------------------------------------------------


def run_store_scenario(store: NodeStore) -> None:
    rng = random.Random(3)
    tree = SparseMerkleTree(store)
    model: dict[bytes, bytes] = {}
    roots = {}
    keys = [key_of(i) for i in range(400)]
    for version in range(1, 8):
        batch: dict[bytes, bytes | None] = {
            key: (None if rng.random() < 0.25 else rng.randbytes(8))
            for key in rng.sample(keys, 120)
        }
        apply_model(model, batch)
        roots[version] = (tree.update(batch, version), dict(model))
        assert tree.root == compute_root(model)
    for version, (root, snapshot) in roots.items():
        old = tree.with_root(root)
        assert old.root == tree.at_version(version).root
        for key in keys[:60]:
            assert old.get(key) == snapshot.get(key)
            assert verify_proof(root, key, tree.prove_at(root, key)) == snapshot.get(key)


def test_memory_store() -> None:
    run_store_scenario(MemoryNodeStore())


def test_sqlite_store_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    connection = sqlite3.connect(path, isolation_level=None)
    store = SqliteNodeStore(connection, cache_nodes=100)
    connection.execute("BEGIN")
    run_store_scenario(store)
    connection.execute("COMMIT")
    root, count = SparseMerkleTree.open_latest(store).root, store.node_count()
    connection.close()
    reopened = sqlite3.connect(path, isolation_level=None)
    store2 = SqliteNodeStore(reopened)
    tree = SparseMerkleTree.open_latest(store2)
    assert tree.root == root and store2.node_count() == count
    assert len(reachable(store2, root)) > 0
    reopened.close()


def test_sqlite_store_never_commits(sqlite_store: SqliteNodeStore, tmp_path: Path) -> None:
    db = sqlite_store._db
    db.execute("BEGIN")
    SparseMerkleTree(sqlite_store).update({key_of(1): b"a", key_of(2): b"b"}, 1)
    assert sqlite_store.node_count() == 3
    db.execute("ROLLBACK")
    sqlite_store.clear_cache()
    assert sqlite_store.node_count() == 0
    assert sqlite_store.latest_version() is None


def test_sqlite_matches_memory(sqlite_store: SqliteNodeStore) -> None:
    rng = random.Random(4)
    memory = MemoryNodeStore()
    a, b = SparseMerkleTree(memory), SparseMerkleTree(sqlite_store)
    for version in range(5):
        batch: dict[bytes, bytes | None] = {
            key_of(rng.randrange(500)): (None if rng.random() < 0.2 else rng.randbytes(5))
            for _ in range(150)
        }
        assert a.update(batch, version) == b.update(batch, version)
        assert memory.node_count() == sqlite_store.node_count()
        if version == 2:
            sqlite_store.clear_cache()
    memory.prune(3)
    sqlite_store.prune(3)
    assert set(memory.nodes) == {
        row[0] for row in sqlite_store._db.execute("SELECT hash FROM smt_nodes")
    }


# --- Versions, pruning, rollback ----------------------------------------------------------------


def test_missing_root_and_version_errors() -> None:
    store = MemoryNodeStore()
    tree = SparseMerkleTree(store)
    with pytest.raises(MissingNode):
        tree.with_root(key_of(99))
    tree.update({key_of(1): b"a"}, 5)
    with pytest.raises(VersionError):
        tree.update({key_of(2): b"b"}, 5)  # rewriting the only version: nothing older retained
    with pytest.raises(VersionError):
        tree.with_root(EMPTY).update({key_of(2): b"b"}, 6)  # not on the newest root
    with pytest.raises(VersionError):
        tree.at_version(4)
    root = tree.root
    tree.update({key_of(2): b"b"}, 6)
    with pytest.raises(VersionError):
        tree.update({key_of(3): b"c"}, 6)  # reorg of 6 must start from version 5's root
    assert store.latest_version() == 6 and tree.at_version(5).root == root


def test_prune_keeps_window_and_shrinks() -> None:
    rng = random.Random(5)
    store = MemoryNodeStore()
    tree = SparseMerkleTree(store)
    keys = [key_of(i) for i in range(600)]
    snapshots: dict[int, tuple[bytes, dict[bytes, bytes]]] = {}
    model: dict[bytes, bytes] = {}
    for version in range(1, 21):
        batch: dict[bytes, bytes | None] = {}
        for key in rng.sample(keys, 80):
            batch[key] = None if rng.random() < 0.2 else rng.choice([b"x", b"y", b"z"])
        apply_model(model, batch)
        snapshots[version] = (tree.update(batch, version), dict(model))
    before = store.node_count()
    deleted = tree.prune(14)
    assert deleted > 0 and store.node_count() == before - deleted
    live: set[bytes] = set()
    for version in range(14, 21):
        root, snapshot = snapshots[version]
        live |= reachable(store, root)
        for key in rng.sample(keys, 40):
            assert verify_proof(root, key, tree.prove_at(root, key)) == snapshot.get(key)
    assert set(store.nodes) == live  # exactly the retained versions' nodes remain
    assert snapshots[5][0] not in live
    with pytest.raises(MissingNode):
        tree.with_root(snapshots[5][0])
    with pytest.raises(VersionError):
        tree.at_version(13)


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_random_history_with_reorgs_and_pruning(data: st.DataObject) -> None:
    store = MemoryNodeStore()
    tree = SparseMerkleTree(store)
    genesis: dict[bytes, bytes] = {}
    apply_model(genesis, data.draw(small_batches_st))
    chain = [(tree.update(dict(genesis), 0), genesis)]  # index = version
    floor = 0  # oldest retained version
    for _ in range(data.draw(st.integers(4, 14))):
        action = data.draw(st.sampled_from(["apply", "apply", "reorg", "prune"]))
        if action == "reorg" and len(chain) - 1 > floor + 1:
            back = data.draw(st.integers(floor + 1, len(chain) - 1))
            del chain[back:]
            tree = tree.with_root(chain[-1][0])
            action = "apply"
        if action == "apply":
            batch = data.draw(small_batches_st)
            model = dict(chain[-1][1])
            apply_model(model, batch)
            root = tree.update(batch, len(chain))
            assert root == compute_root(model)
            chain.append((root, model))
        elif action == "prune":
            floor = data.draw(st.integers(floor, len(chain) - 1))
            tree.prune(floor)
        for version in range(floor, len(chain)):
            root, model = chain[version]
            assert tree.at_version(version).root == root
            reachable(store, root)
            for key in UNIVERSE[:8]:
                assert tree.get_at(root, key) == model.get(key)
    # Pruning everything but the head leaves exactly the head's nodes: nothing leaked.
    tree.prune(len(chain) - 1)
    assert set(store.nodes) == reachable(store, chain[-1][0])


def test_rollback_with_root_and_reapply(sqlite_store: SqliteNodeStore) -> None:
    tree = SparseMerkleTree(sqlite_store)
    keys = [key_of(i) for i in range(200)]
    tree.update(dict.fromkeys(keys, b"genesis"), 0)
    roots = [tree.root]
    for version in range(1, 6):
        roots.append(tree.update({key: b"v%d" % version for key in keys[: 40 * version]}, version))
    fork = tree.with_root(roots[2])  # reorg: back to version 2, then a different version 3
    assert fork.get(keys[0]) == b"v2" and fork.get(keys[100]) == b"genesis"
    new3 = fork.update({keys[0]: b"fork", keys[199]: None}, 3)
    assert sqlite_store.latest_version() == 3
    assert fork.get(keys[0]) == b"fork" and fork.get(keys[199]) is None
    assert fork.get(keys[150]) == b"genesis"
    assert tree.with_root(roots[1]).get(keys[0]) == b"v1"
    fork.prune(3)
    nodes = {row[0] for row in sqlite_store._db.execute("SELECT hash FROM smt_nodes")}
    assert nodes == reachable(sqlite_store, new3)
    with pytest.raises(MissingNode):
        fork.with_root(roots[5])


# --- Cache and damaged stores -------------------------------------------------------------------


def test_node_cache_is_bounded_and_keeps_recent_entries() -> None:
    cache = NodeCache(100)
    for i in range(1000):
        cache.put(key_of(i), b"%d" % i)
        cache.get(key_of(0))  # used all along: never evicted
        assert len(cache) <= 100
    assert cache.get(key_of(0)) == b"0" and cache.get(key_of(999)) == b"999"
    assert cache.get(key_of(500)) is None
    cache.put_many({key_of(i): b"x" for i in range(2000, 2500)})  # a batch bigger than the cache
    assert len(cache) <= 100 and cache.get(key_of(2499)) == b"x"
    found, missing = cache.get_many([key_of(2499), key_of(1)])
    assert found == {key_of(2499): b"x"} and missing == [key_of(1)]
    disabled = NodeCache(0)
    disabled.put(key_of(1), b"x")
    assert len(disabled) == 0


def test_damaged_store_raises_typed_errors() -> None:
    store = MemoryNodeStore()
    tree = SparseMerkleTree(store)
    root = tree.update({key_of(i): b"v" for i in range(10)}, 1)
    store.nodes[root] = b"\x07garbage"
    with pytest.raises(CorruptNode):
        tree.get(key_of(1))
    with pytest.raises(CorruptNode):
        tree.update({key_of(1): b"w"}, 2)
    del store.nodes[root]
    with pytest.raises(MissingNode):
        tree.prove(key_of(1))
    with pytest.raises(MissingNode):
        tree.update({key_of(1): b"w"}, 2)
    assert store.latest_version() == 1  # failed updates wrote nothing


def test_open_latest() -> None:
    store = MemoryNodeStore()
    assert SparseMerkleTree.open_latest(store).root == EMPTY
    tree = SparseMerkleTree(store)
    tree.update({key_of(1): b"a"}, 0)
    root = tree.update({key_of(2): b"b"}, 1)
    assert SparseMerkleTree.open_latest(store).root == root
