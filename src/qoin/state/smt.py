"""The account-state tree: a compressed binary sparse Merkle tree over SHA3-256.

Definition (consensus)
----------------------

* A *key* is 32 bytes (the caller passes ``SHA3-256(address)``). Bit ``i`` of a key (``i = 0..255``)
  is bit ``7 - i % 8`` of byte ``i // 8`` (most significant bit first). At depth ``i`` a key whose bit
  ``i`` is 0 goes left, 1 goes right.
* A *value* is a byte string of at most :data:`MAX_VALUE_SIZE` bytes (the caller's canonical account
  encoding). The empty string is a value; absence is not a value.
* The hash of a subtree (the set of keys sharing its position's prefix) is:

  - ``EMPTY`` = 32 zero bytes if it holds no key;
  - if it holds exactly one key, the *leaf hash*
    ``tagged_hash("QOIN/smt-leaf/v1", key ‖ sha3_256(value))``: the leaf sits at the top of its
    otherwise empty subtree (the tree is *compressed*);
  - otherwise ``tagged_hash("QOIN/smt-node/v1", left_hash ‖ right_hash)``.

* The *root* is the hash of the whole tree (``EMPTY`` when it holds no key).

The root is a function of the set of ``(key, value)`` pairs only: the order of insertions and
deletions does not matter (a deletion collapses a node left with one leaf back into that leaf). A leaf
for random keys sits at depth about ``log2(number of keys)``. Two distinct keys share at most 255
leading bits, so no leaf is deeper than 256 and no inner node deeper than 255.

Proofs
------

A :class:`Proof` for ``key`` against ``root`` lists the sibling hashes from the root down to the depth
``d`` where the walk for ``key`` ends, and the *terminal* found there:

* ``EMPTY``: the key is absent (the subtree at that position is empty);
* the leaf of ``key`` itself, **with the full value** (inclusion: :func:`verify_proof` returns the
  value);
* the leaf of another key, as ``(leaf_key, sha3_256(value))``, that shares the first ``d`` bits of
  ``key``: it occupies the compressed position, so ``key`` is absent (exclusion).

Encoding (see :mod:`qoin.encoding.codec`)::

    count     varint     number of siblings, at most 256
    siblings  count * 32 bytes, from the root down
    terminal  u8         0 = empty, 1 = leaf of the key (inclusion), 2 = leaf of another key
    [leaf_key 32 bytes]                   terminals 1 and 2
    [value    varbytes ≤ MAX_VALUE_SIZE]  terminal 1
    [value_hash 32 bytes]                 terminal 2

For a given root and key at most one proof verifies (short of a hash collision), so flipping any byte
of a valid proof makes it fail to decode or fail to verify.

Storage
-------

Nodes are stored content-addressed (hash → encoding) in a :class:`~qoin.state.nodestore.NodeStore`::

    inner node  0x00 ‖ left_hash ‖ right_hash   (65 bytes)
    leaf node   0x01 ‖ key ‖ value              (the tree alone answers ``get``)

``EMPTY`` is never stored. :meth:`SparseMerkleTree.update` applies a whole batch (one block) at once:
it walks the union of the touched paths level by level (one batched store read per level), computes
each touched inner node once, writes the new nodes and journals, for the version, the nodes the new
tree dropped. Old roots stay readable and provable (:meth:`SparseMerkleTree.prove_at`,
:meth:`SparseMerkleTree.with_root`) until pruned: :meth:`SparseMerkleTree.prune` keeps every version
``>= keep_from_version`` fully readable and deletes what only older versions needed; **roots older than
the retention window cannot be served after pruning**. Applying a version that is not newer than the
newest recorded one rolls back the versions it replaces (a reorg); see
:meth:`SparseMerkleTree.update`.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast

from qoin.crypto.hashing import sha3_256, tagged_hash
from qoin.encoding.codec import Reader, UnknownVersion, Writer
from qoin.errors import QoinError
from qoin.state.nodestore import NodeStore, WriteBatch, split_hashes

TAG_SMT_LEAF = b"QOIN/smt-leaf/v1"
TAG_SMT_NODE = b"QOIN/smt-node/v1"

KEY_SIZE = 32
"""Keys are SHA3-256 digests of addresses."""
KEY_BITS = 256
MAX_VALUE_SIZE = 65_536
"""Largest value (account encoding) the tree accepts, in bytes."""
MAX_PROOF_SIBLINGS = 256
"""A walk ends at depth 256 at the latest (a leaf below the deepest possible inner node)."""
EMPTY = bytes(32)
"""Hash of an empty subtree, and root of the empty tree."""

NODE_INNER = 0
NODE_LEAF = 1
"""First byte of a stored node's encoding."""

TERMINAL_EMPTY = 0
TERMINAL_INCLUSION = 1
TERMINAL_EXCLUSION = 2
"""The terminal byte of an encoded proof."""


class SmtError(QoinError):
    """A state-tree operation failed."""


class InvalidChange(SmtError):
    """An update names a key that is not 32 bytes or a value over :data:`MAX_VALUE_SIZE`."""


class MissingNode(SmtError):
    """The store lacks a node the walk needs (a pruned or unknown root, or a damaged store)."""


class CorruptNode(SmtError):
    """A stored node's encoding is not an inner node or a leaf."""


class VersionError(SmtError):
    """An update's version does not follow the recorded history of the tree."""


class ProofError(SmtError):
    """A proof is malformed or does not lead to the root it is checked against."""


# --- Hash functions ---------------------------------------------------------------------------


def leaf_hash(key: bytes, value: bytes) -> bytes:
    """The hash of a subtree holding the single pair ``(key, value)``."""
    return tagged_hash(TAG_SMT_LEAF, key, sha3_256(value))


def node_hash(left: bytes, right: bytes) -> bytes:
    """The hash of a subtree holding at least two keys, from its two halves' hashes."""
    return tagged_hash(TAG_SMT_NODE, left, right)


# The hot paths inline tagged_hash as one SHA3 call over prefix ‖ data (same bytes hashed; a test
# checks the equivalence).
_sha3 = hashlib.sha3_256
_LEAF_PREFIX = bytes((len(TAG_SMT_LEAF),)) + TAG_SMT_LEAF
_NODE_PREFIX = bytes((len(TAG_SMT_NODE),)) + TAG_SMT_NODE
_INNER_TAG = bytes((NODE_INNER,))
_LEAF_TAG = bytes((NODE_LEAF,))


def _leaf_from_hash(key: bytes, value_hash: bytes) -> bytes:
    return _sha3(_LEAF_PREFIX + key + value_hash).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return _sha3(_NODE_PREFIX + left + right).digest()


def compute_root(pairs: Mapping[bytes, bytes]) -> bytes:
    """The root of the tree holding exactly ``pairs``, straight from the definition (slow, simple).

    This is the executable specification the incremental :class:`SparseMerkleTree` is tested against.
    """
    for key, value in pairs.items():
        _check_change(key, value)
    keyed = sorted((int.from_bytes(key, "big"), key, value) for key, value in pairs.items())

    def subtree(depth: int, items: list[tuple[int, bytes, bytes]]) -> bytes:
        if not items:
            return EMPTY
        if len(items) == 1:
            return leaf_hash(items[0][1], items[0][2])
        shift = KEY_BITS - 1 - depth
        left = [item for item in items if not (item[0] >> shift) & 1]
        right = [item for item in items if (item[0] >> shift) & 1]
        return node_hash(subtree(depth + 1, left), subtree(depth + 1, right))

    return subtree(0, keyed)


def _check_change(key: bytes, value: bytes | None) -> None:
    if len(key) != KEY_SIZE:
        raise InvalidChange(f"state keys are {KEY_SIZE} bytes, got {len(key)}")
    if value is not None and len(value) > MAX_VALUE_SIZE:
        raise InvalidChange(f"value of {len(value)} bytes exceeds the bound of {MAX_VALUE_SIZE}")


# --- Proofs -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Proof:
    """A Merkle proof of the value of a key, or of its absence (see the module docstring).

    Exactly one of three shapes: ``leaf_key is None`` (empty terminal); ``value`` set (inclusion: the
    leaf is the proved key's own); ``value_hash`` set (exclusion: the leaf of another key).
    """

    siblings: tuple[bytes, ...]
    """Sibling hashes from the root down to the terminal's depth."""
    leaf_key: bytes | None = None
    """Key of the leaf at the terminal, or None if the terminal is an empty subtree."""
    value: bytes | None = None
    """The proved key's value (inclusion proofs only)."""
    value_hash: bytes | None = None
    """``sha3_256`` of the other key's value (exclusion by another leaf only)."""

    @property
    def terminal(self) -> int:
        """The terminal kind (:data:`TERMINAL_EMPTY`, ``_INCLUSION`` or ``_EXCLUSION``)."""
        if self.leaf_key is None:
            if self.value is not None or self.value_hash is not None:
                raise ProofError("an empty terminal carries no value")
            return TERMINAL_EMPTY
        if (self.value is None) == (self.value_hash is None):
            raise ProofError("a leaf terminal carries either the value or its hash")
        return TERMINAL_INCLUSION if self.value is not None else TERMINAL_EXCLUSION

    def encode(self) -> bytes:
        """Canonical encoding."""
        terminal = self.terminal
        if len(self.siblings) > MAX_PROOF_SIBLINGS:
            raise ProofError(f"{len(self.siblings)} siblings exceed {MAX_PROOF_SIBLINGS}")
        writer = Writer().varint(len(self.siblings))
        for sibling in self.siblings:
            writer.fixed(sibling, 32)
        writer.u8(terminal)
        if self.leaf_key is not None:
            writer.fixed(self.leaf_key, KEY_SIZE)
        if self.value is not None:
            writer.var_bytes(self.value, MAX_VALUE_SIZE)
        if self.value_hash is not None:
            writer.fixed(self.value_hash, 32)
        return writer.bytes()

    @classmethod
    def read(cls, reader: Reader) -> Proof:
        """Decode one proof from a reader."""
        count = reader.count(MAX_PROOF_SIBLINGS)
        siblings = tuple(reader.fixed(32) for _ in range(count))
        terminal = reader.u8()
        if terminal == TERMINAL_EMPTY:
            return cls(siblings)
        if terminal == TERMINAL_INCLUSION:
            leaf_key = reader.fixed(KEY_SIZE)
            return cls(siblings, leaf_key, value=reader.var_bytes(MAX_VALUE_SIZE))
        if terminal == TERMINAL_EXCLUSION:
            leaf_key = reader.fixed(KEY_SIZE)
            return cls(siblings, leaf_key, value_hash=reader.fixed(32))
        raise UnknownVersion(f"unknown proof terminal {terminal}")

    @classmethod
    def decode(cls, data: bytes) -> Proof:
        """Decode a standalone proof; trailing bytes are an error."""
        reader = Reader(data)
        proof = cls.read(reader)
        reader.finish()
        return proof


def verify_proof(root: bytes, key: bytes, proof: Proof) -> bytes | None:
    """Check ``proof`` for ``key`` against ``root``; return the value, or None if ``key`` is absent.

    Pure (no store). Raises :class:`ProofError` with the reason if the proof is malformed or does not
    lead to ``root``. Note that an inclusion proof may return the empty value ``b""``.
    """
    if len(root) != 32:
        raise ProofError(f"roots are 32 bytes, got {len(root)}")
    if len(key) != KEY_SIZE:
        raise ProofError(f"keys are {KEY_SIZE} bytes, got {len(key)}")
    siblings = proof.siblings
    depth = len(siblings)
    if depth > MAX_PROOF_SIBLINGS:
        raise ProofError(f"{depth} siblings exceed {MAX_PROOF_SIBLINGS}")
    for sibling in siblings:
        if len(sibling) != 32:
            raise ProofError(f"sibling hashes are 32 bytes, got {len(sibling)}")
    if depth and siblings[-1] == EMPTY:
        raise ProofError("a terminal beside an empty sibling would have been compressed")
    key_int = int.from_bytes(key, "big")
    current, result = _terminal_hash(proof, key, key_int, depth)
    for index in range(depth - 1, -1, -1):
        sibling = siblings[index]
        if (key_int >> (KEY_BITS - 1 - index)) & 1:
            current = node_hash(sibling, current)
        else:
            current = node_hash(current, sibling)
    if current != root:
        raise ProofError("the proof does not lead to the root")
    return result


def _terminal_hash(
    proof: Proof, key: bytes, key_int: int, depth: int
) -> tuple[bytes, bytes | None]:
    """The hash of a proof's terminal at ``depth`` on the path of ``key``, and the proved value."""
    terminal = proof.terminal
    if terminal == TERMINAL_EMPTY:
        return EMPTY, None
    leaf_key = proof.leaf_key
    if leaf_key is None or len(leaf_key) != KEY_SIZE:
        raise ProofError("leaf keys are 32 bytes")
    if terminal == TERMINAL_INCLUSION:
        value = proof.value
        if value is None or leaf_key != key:
            raise ProofError("an inclusion terminal must be the leaf of the proved key")
        if len(value) > MAX_VALUE_SIZE:
            raise ProofError(f"value of {len(value)} bytes exceeds {MAX_VALUE_SIZE}")
        return leaf_hash(key, value), value
    value_hash = proof.value_hash
    if value_hash is None or len(value_hash) != 32:
        raise ProofError("value hashes are 32 bytes")
    if leaf_key == key:
        raise ProofError("a proof of the key's own leaf must carry the value")
    if (int.from_bytes(leaf_key, "big") ^ key_int) >> (KEY_BITS - depth):
        raise ProofError(f"the leaf does not share the first {depth} bits of the key")
    return tagged_hash(TAG_SMT_LEAF, leaf_key, value_hash), None


# --- The tree ---------------------------------------------------------------------------------


class SparseMerkleTree:
    """A view of the state tree at one root, over a node store (see the module docstring)."""

    def __init__(self, store: NodeStore, root: bytes = EMPTY) -> None:
        if len(root) != 32:
            raise SmtError(f"roots are 32 bytes, got {len(root)}")
        self._store = store
        self._root = root

    @classmethod
    def open_latest(cls, store: NodeStore) -> SparseMerkleTree:
        """The tree at the newest recorded version of ``store`` (empty if none)."""
        latest = store.latest_version()
        return cls(store, EMPTY if latest is None else _root_of(store, latest))

    @property
    def root(self) -> bytes:
        """The current root."""
        return self._root

    @property
    def store(self) -> NodeStore:
        """The node store."""
        return self._store

    def with_root(self, root: bytes) -> SparseMerkleTree:
        """A tree over the same store at another retained ``root`` (e.g. a reorg's fork point)."""
        if len(root) != 32:
            raise SmtError(f"roots are 32 bytes, got {len(root)}")
        if root != EMPTY and self._store.get(root) is None:
            raise MissingNode(f"root {root.hex()} is not in the store (unknown or pruned)")
        return SparseMerkleTree(self._store, root)

    def at_version(self, version: int) -> SparseMerkleTree:
        """A tree at the root recorded for ``version`` (which must be retained)."""
        return self.with_root(_root_of(self._store, version))

    def get(self, key: bytes) -> bytes | None:
        """The value of ``key``, or None if absent."""
        return self.get_at(self._root, key)

    def get_at(self, root: bytes, key: bytes) -> bytes | None:
        """The value of ``key`` in the retained tree ``root``, or None if absent."""
        if len(key) != KEY_SIZE:
            raise InvalidChange(f"state keys are {KEY_SIZE} bytes, got {len(key)}")
        key_int = int.from_bytes(key, "big")
        get = self._store.get
        current = root
        shift = KEY_BITS - 1
        while current != EMPTY:
            data = get(current)
            if data is None:
                raise MissingNode(f"node {current.hex()} is not in the store")
            tag = data[0]
            if tag == NODE_LEAF:
                return data[33:] if data[1:33] == key else None
            if tag != NODE_INNER or len(data) != 65 or shift < 0:
                raise CorruptNode(f"node {current.hex()} is not a valid inner node")
            current = data[33:65] if (key_int >> shift) & 1 else data[1:33]
            shift -= 1
        return None

    def prove(self, key: bytes) -> Proof:
        """A proof of the value (or absence) of ``key`` under the current root."""
        return self.prove_at(self._root, key)

    def prove_at(self, root: bytes, key: bytes) -> Proof:
        """A proof of the value (or absence) of ``key`` under the retained root ``root``."""
        if len(key) != KEY_SIZE:
            raise InvalidChange(f"state keys are {KEY_SIZE} bytes, got {len(key)}")
        key_int = int.from_bytes(key, "big")
        get = self._store.get
        siblings: list[bytes] = []
        current = root
        shift = KEY_BITS - 1
        while current != EMPTY:
            data = get(current)
            if data is None:
                raise MissingNode(f"node {current.hex()} is not in the store")
            tag = data[0]
            if tag == NODE_LEAF:
                leaf_key = data[1:33]
                if leaf_key == key:
                    return Proof(tuple(siblings), leaf_key, value=data[33:])
                return Proof(tuple(siblings), leaf_key, value_hash=sha3_256(data[33:]))
            if tag != NODE_INNER or len(data) != 65 or shift < 0:
                raise CorruptNode(f"node {current.hex()} is not a valid inner node")
            if (key_int >> shift) & 1:
                siblings.append(data[1:33])
                current = data[33:65]
            else:
                siblings.append(data[33:65])
                current = data[1:33]
            shift -= 1
        return Proof(tuple(siblings))

    def update(self, changes: Mapping[bytes, bytes | None], version: int) -> bytes:
        """Apply one version's changes (``None`` deletes a key); move to and return the new root.

        Normally ``version`` is newer than every recorded version and the tree is at the newest
        recorded root. For a reorg, move the tree to the root of the fork point
        (:meth:`with_root` / :meth:`at_version`) and apply the next version: recorded versions from
        ``version`` on are rolled back first (what only they wrote is journaled as orphaned, to be
        pruned). In both cases the tree must be at the root recorded for the newest version below
        ``version`` (:class:`VersionError` otherwise). Nothing is written if the update fails; the
        store writes without committing (see :class:`~qoin.state.nodestore.SqliteNodeStore`).
        """
        if version < 0:
            raise VersionError(f"versions are non-negative, got {version}")
        store = self._store
        latest = store.latest_version()
        base: int | None = latest
        rollback = latest is not None and version <= latest
        if rollback:
            base = store.version_before(version)
            if base is None:
                raise VersionError(
                    f"cannot rewrite version {version}: no older version is retained"
                )
        if base is not None and _root_of(store, base) != self._root:
            raise VersionError(
                f"version {version} must be applied on the root of version {base}, "
                f"but the tree is at {self._root.hex()}"
            )
        for key, value in changes.items():
            _check_change(key, value)
        batch = _BatchUpdate(changes, store)
        new_root = batch.run(self._root)
        built, visited = batch.built, batch.visited
        stale = visited.difference(built)
        new_nodes = {h: data for h, data in built.items() if h not in visited}
        orphaned: list[bytes] = []
        rewound: list[bytes] = []
        if rollback and base is not None:
            orphaned, rewound = _plan_rollback(store, base)
            store.set_node_versions(orphaned + rewound, base)
            store.discard_versions_after(base)
        store.write_batch(
            WriteBatch(
                version,
                new_root,
                new_nodes,
                b"".join(stale),
                b"".join(orphaned),
                b"".join(rewound),
                keep_created=base is not None,
            )
        )
        self._root = new_root
        return new_root

    def prune(self, keep_from_version: int) -> int:
        """Keep versions ``>= keep_from_version`` servable, delete what only older ones needed.

        Returns the number of nodes deleted. Roots of older versions cannot be read or proved after
        this, and the tree can no longer be rolled back below ``keep_from_version``.
        """
        return self._store.prune(keep_from_version)


def _root_of(store: NodeStore, version: int) -> bytes:
    record = store.record(version)
    if record is None:
        raise VersionError(f"version {version} is not retained")
    return record.root


def _plan_rollback(store: NodeStore, base: int) -> tuple[list[bytes], list[bytes]]:
    """What rolling back to ``base`` orphans and rewinds.

    Undoing the versions above ``base`` newest first, each version ``u`` tells the membership of the
    nodes it lists in the tree it was built on: its stale and rewound nodes were in it, its created
    and orphaned ones were not. The membership left at the end is the one in ``base``'s tree. Every
    node an undone version wrote, orphaned or rewound gets ``base`` as its node version; those out of
    ``base``'s tree are *orphaned* (journaled at the new version, above ``base``, so prune collects
    them unless re-created), the others are *rewound* (journaled so that a later, deeper rollback
    rewinds them again). Invariants this keeps: every retained stale entry of a node in a retained tree
    is at a version not above the node version (so prune never deletes a live node); every node out of
    the newest tree has a retained entry above its node version (so nothing leaks); and a node in a
    retained tree ``w`` with a node version above ``w`` is listed by a version after ``w``.
    """
    alive: dict[bytes, bool] = {}
    written: set[bytes] = set()  # nodes whose node version an undone version set
    for version in store.versions_after(base):
        record = store.record(version)
        if record is None:
            raise VersionError(f"version {version} vanished during a rollback")
        for node in split_hashes(record.stale):
            alive[node] = True
        for listed, live in (
            (record.rewound, True),
            (record.created, False),
            (record.orphaned, False),
        ):
            nodes = split_hashes(listed)
            written.update(nodes)
            for node in nodes:
                alive[node] = live
    orphaned = sorted(node for node in written if not alive[node])
    rewound = sorted(node for node in written if alive[node])
    return orphaned, rewound


_EMPTY_KIND = 0
_LEAF_KIND = 1
_INNER_KIND = 2
_UNKNOWN_KIND = 3
"""What a subtree computed during an update is (an untouched subtree's kind is unknown)."""

_Pending = tuple[int, int, bytes, int, bytes]
"""An expanded inner node: its index in its level, then per side the child task (or -1) and hash."""


class _BatchUpdate:
    """One batch of changes applied to one root, touching each node on the union of paths once.

    Top-down, level by level, the old inner nodes on the touched paths are read in one batch per level
    and split the sorted keys by bit; a position holding nothing or a single leaf is rebuilt directly
    from the changes (and that leaf). Bottom-up, the expanded inner nodes are re-hashed from their
    children; an inner node left with one leaf and an empty side becomes that leaf (compression).
    """

    __slots__ = ("_get", "_get_many", "_ints", "_keys", "_values", "built", "visited")

    def __init__(self, changes: Mapping[bytes, bytes | None], store: NodeStore) -> None:
        items = sorted(changes.items())
        self._keys = [key for key, _ in items]
        self._values = [value for _, value in items]
        self._ints = [int.from_bytes(key, "big") for key in self._keys]
        self._get = store.get
        self._get_many = store.get_many
        self.built: dict[bytes, bytes] = {}
        """Every node built on the touched paths (some may equal old nodes), hash to encoding."""
        self.visited: set[bytes] = set()
        """The old nodes expanded on the touched paths."""

    def run(self, root: bytes) -> bytes:
        """The new root."""
        if not self._keys:
            return root
        levels = self._expand(root)
        return self._hash_up(levels)

    def _expand(self, root: bytes) -> list[tuple[list[bytes], list[int], list[_Pending]]]:
        """Top-down pass: per level, the result hashes and kinds so far and the pending inner nodes."""
        ints, visited, place = self._ints, self.visited, self._place
        bisect = bisect_left
        levels: list[tuple[list[bytes], list[int], list[_Pending]]] = []
        tasks: list[tuple[bytes, int, int]] = [(root, 0, len(ints))]
        shift = KEY_BITS - 1  # of the bit that splits the keys at the current depth
        while tasks:
            fetched = self._get_many([task[0] for task in tasks if task[0] != EMPTY])
            visited.update(fetched)
            hashes: list[bytes] = [EMPTY] * len(tasks)
            kinds: list[int] = [_UNKNOWN_KIND] * len(tasks)
            pending: list[_Pending] = []
            next_tasks: list[tuple[bytes, int, int]] = []
            add_pending, add_task = pending.append, next_tasks.append
            for index, (old, lo, hi) in enumerate(tasks):
                data = fetched.get(old)
                if data is not None and data[0] == NODE_INNER and len(data) == 65 and shift >= 0:
                    left, right = data[1:33], data[33:65]
                    if hi - lo == 1:  # most tasks below the top levels: one key, one side
                        if (ints[lo] >> shift) & 1:
                            add_pending((index, -1, left, len(next_tasks), right))
                            add_task((right, lo, hi))
                        else:
                            add_pending((index, len(next_tasks), left, -1, right))
                            add_task((left, lo, hi))
                        continue
                    mid = bisect(ints, ((ints[lo] >> shift) | 1) << shift, lo, hi)
                    left_task = right_task = -1
                    if mid > lo:
                        left_task = len(next_tasks)
                        add_task((left, lo, mid))
                    if hi > mid:
                        right_task = len(next_tasks)
                        add_task((right, mid, hi))
                    add_pending((index, left_task, left, right_task, right))
                    continue
                if old != EMPTY:
                    if data is None:
                        raise MissingNode(f"node {old.hex()} is not in the store")
                    if data[0] != NODE_LEAF or len(data) < 33:
                        raise CorruptNode(f"node {old.hex()} is neither an inner node nor a leaf")
                hashes[index], kinds[index] = place(KEY_BITS - 1 - shift, lo, hi, data)
            levels.append((hashes, kinds, pending))
            tasks = next_tasks
            shift -= 1
        return levels

    def _hash_up(self, levels: list[tuple[list[bytes], list[int], list[_Pending]]]) -> bytes:
        """Bottom-up pass: hash the pending inner nodes from their children; return the root."""
        join, built, sha3 = self._join, self.built, _sha3
        prefix, tag, inner = _NODE_PREFIX, _INNER_TAG, _INNER_KIND
        below_hashes: list[bytes] = []
        below_kinds: list[int] = []
        for hashes, kinds, pending in reversed(levels):
            for index, left_task, left_old, right_task, right_old in pending:
                left = below_hashes[left_task] if left_task >= 0 else left_old
                right = below_hashes[right_task] if right_task >= 0 else right_old
                if EMPTY not in (left, right):  # the common case, inlined
                    pair = left + right
                    current = sha3(prefix + pair).digest()
                    built[current] = tag + pair
                    hashes[index], kinds[index] = current, inner
                    continue
                left_kind = below_kinds[left_task] if left_task >= 0 else _UNKNOWN_KIND
                right_kind = below_kinds[right_task] if right_task >= 0 else _UNKNOWN_KIND
                hashes[index], kinds[index] = join(left, left_kind, right, right_kind)
            below_hashes, below_kinds = hashes, kinds
        return levels[0][0][0]

    def _join(
        self, left: bytes, left_kind: int, right: bytes, right_kind: int
    ) -> tuple[bytes, int]:
        """The subtree with the given halves, compressed if it holds a single leaf."""
        if EMPTY in (left, right):
            other, kind = (right, right_kind) if left == EMPTY else (left, left_kind)
            if other == EMPTY:
                return EMPTY, _EMPTY_KIND
            if kind == _UNKNOWN_KIND:  # an untouched sibling: is it a lone leaf?
                data = self._get(other)
                if data is None:
                    raise MissingNode(f"node {other.hex()} is not in the store")
                kind = _LEAF_KIND if data[0] == NODE_LEAF else _INNER_KIND
            if kind == _LEAF_KIND:
                return other, _LEAF_KIND
        pair = left + right
        current = _sha3(_NODE_PREFIX + pair).digest()
        self.built[current] = _INNER_TAG + pair
        return current, _INNER_KIND

    def _leaf(self, key: bytes, value: bytes) -> bytes:
        current = _sha3(_LEAF_PREFIX + key + _sha3(value).digest()).digest()
        self.built[current] = _LEAF_TAG + key + value
        return current

    def _place(self, depth: int, lo: int, hi: int, old_leaf: bytes | None) -> tuple[bytes, int]:
        """The new subtree at a position that held nothing or only ``old_leaf``."""
        keys, values = self._keys, self._values
        if hi - lo == 1 and (old_leaf is None or keys[lo] == old_leaf[1:33]):
            value = values[lo]  # the common cases: a new key, a key's own value changes or goes
            if value is None:
                return EMPTY, _EMPTY_KIND
            return self._leaf(keys[lo], value), _LEAF_KIND
        if old_leaf is None and None not in values[lo:hi]:
            # No deletion in range (e.g. building a tree from scratch): use the sorted lists as is.
            m_ints, m_keys, m_values = self._ints, keys, cast(list[bytes], values)
        else:
            m_ints, m_keys, m_values = self._merge(lo, hi, old_leaf)
            lo, hi = 0, len(m_ints)
        if hi == lo:
            return EMPTY, _EMPTY_KIND
        if hi - lo == 1:
            return self._leaf(m_keys[lo], m_values[lo]), _LEAF_KIND
        return self._build(depth, m_ints, m_keys, m_values, lo, hi), _INNER_KIND

    def _merge(
        self, lo: int, hi: int, old_leaf: bytes | None
    ) -> tuple[list[int], list[bytes], list[bytes]]:
        """The sorted entries at a position: changes ``lo:hi`` that set a value, plus the old leaf
        unless a change replaces or deletes it."""
        m_ints: list[int] = []
        m_keys: list[bytes] = []
        m_values: list[bytes] = []
        ints, keys, values = self._ints, self._keys, self._values
        old_key = old_leaf[1:33] if old_leaf is not None else None
        old_int = int.from_bytes(old_key, "big") if old_key is not None else -1
        if old_leaf is not None and old_key is not None:
            at = bisect_left(ints, old_int, lo, hi)
            if at == hi or ints[at] != old_int:
                m_ints.append(old_int)
                m_keys.append(old_key)
                m_values.append(old_leaf[33:])
        for index in range(lo, hi):
            value = values[index]
            if value is not None:
                m_ints.append(ints[index])
                m_keys.append(keys[index])
                m_values.append(value)
        if len(m_ints) > 1 and old_int >= 0:
            order = sorted(range(len(m_ints)), key=m_ints.__getitem__)
            m_ints = [m_ints[i] for i in order]
            m_keys = [m_keys[i] for i in order]
            m_values = [m_values[i] for i in order]
        return m_ints, m_keys, m_values

    def _build(
        self,
        depth: int,
        ints: list[int],
        keys: list[bytes],
        values: list[bytes],
        lo: int,
        hi: int,
    ) -> bytes:
        """Hash (and record) the subtree at ``depth`` holding the sorted entries ``lo:hi`` (>= 2)."""
        first = ints[lo]
        split = KEY_BITS - (first ^ ints[hi - 1]).bit_length()  # the first bit where they differ
        shift = KEY_BITS - 1 - split
        mid = bisect_left(ints, ((first >> shift) | 1) << shift, lo, hi)
        if mid - lo == 1:
            left = self._leaf(keys[lo], values[lo])
        else:
            left = self._build(split + 1, ints, keys, values, lo, mid)
        if hi - mid == 1:
            right = self._leaf(keys[mid], values[mid])
        else:
            right = self._build(split + 1, ints, keys, values, mid, hi)
        built, sha3, prefix, tag = self.built, _sha3, _NODE_PREFIX, _INNER_TAG
        pair = left + right
        current = sha3(prefix + pair).digest()
        built[current] = tag + pair
        for level in range(split - 1, depth - 1, -1):  # the chain of one-sided nodes up to depth
            pair = EMPTY + current if (first >> (KEY_BITS - 1 - level)) & 1 else current + EMPTY
            current = sha3(prefix + pair).digest()
            built[current] = tag + pair
        return current
