"""State-tree benchmark: build, block-sized batch updates, get, prove and verify; prints JSON.

    .venv/bin/python benchmarks/bench_smt.py [--sizes 10000 1000000] [--store sqlite|memory]

For each tree size: build the tree with one batched update (version 0), then apply blocks of 1,000 and
4,000 changes (three quarters update existing keys, one quarter inserts new ones), each in its own
SQLite transaction (update and commit timed separately), then time ``get``, ``prove`` and
``verify_proof`` on random keys. Peak RSS is the process's (``resource.getrusage``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

from qoin.crypto.hashing import sha3_256
from qoin.state.nodestore import (
    DEFAULT_CACHE_NODES,
    MemoryNodeStore,
    NodeStore,
    SqliteNodeStore,
)
from qoin.state.smt import SparseMerkleTree, verify_proof

VALUE_SIZE = 48
BLOCKS_PER_SIZE = 5


def key_of(i: int) -> bytes:
    return sha3_256(i.to_bytes(8, "big"))


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def open_store(
    kind: str, directory: Path, name: str, cache_nodes: int
) -> tuple[NodeStore, sqlite3.Connection | None]:
    if kind == "memory":
        return MemoryNodeStore(), None
    connection = sqlite3.connect(directory / f"{name}.sqlite3", isolation_level=None)
    SqliteNodeStore.tune(connection)
    connection.execute("PRAGMA synchronous=NORMAL")
    return SqliteNodeStore(connection, cache_nodes=cache_nodes), connection


def timed_update(
    tree: SparseMerkleTree,
    changes: dict[bytes, bytes | None],
    version: int,
    connection: sqlite3.Connection | None,
) -> tuple[float, float]:
    if connection is not None:
        connection.execute("BEGIN")
    start = time.perf_counter()
    tree.update(changes, version)
    middle = time.perf_counter()
    if connection is not None:
        connection.execute("COMMIT")
    return middle - start, time.perf_counter() - middle


def bench_size(
    size: int, kind: str, directory: Path, rng: random.Random, cache_nodes: int
) -> dict[str, object]:
    store, connection = open_store(kind, directory, f"tree{size}", cache_nodes)
    tree = SparseMerkleTree(store)
    genesis: dict[bytes, bytes | None] = {key_of(i): rng.randbytes(VALUE_SIZE) for i in range(size)}
    build_s, build_commit_s = timed_update(tree, genesis, 0, connection)
    del genesis
    result: dict[str, object] = {
        "leaves": size,
        "build_s": round(build_s, 3),
        "build_commit_s": round(build_commit_s, 3),
        "nodes": store.node_count(),
    }
    if connection is not None:
        files = directory.glob(f"tree{size}.sqlite3*")
        result["db_mib"] = round(sum(path.stat().st_size for path in files) / 2**20, 1)
    next_key = size
    version = 1
    for batch in (1000, 4000):
        update_times: list[float] = []
        commit_times: list[float] = []
        for _ in range(BLOCKS_PER_SIZE):
            changes: dict[bytes, bytes | None] = {}
            for _ in range(batch * 3 // 4):
                changes[key_of(rng.randrange(next_key))] = rng.randbytes(VALUE_SIZE)
            while len(changes) < batch:
                changes[key_of(next_key)] = rng.randbytes(VALUE_SIZE)
                next_key += 1
            update_s, commit_s = timed_update(tree, changes, version, connection)
            version += 1
            update_times.append(update_s)
            commit_times.append(commit_s)
        median = statistics.median(update_times)
        result[f"batch_{batch}"] = {
            "update_s_median": round(median, 4),
            "update_s_max": round(max(update_times), 4),
            "commit_s_median": round(statistics.median(commit_times), 4),
            "updates_per_s": round(batch / median),
        }
    keys = [key_of(rng.randrange(next_key)) for _ in range(20_000)]
    start = time.perf_counter()
    for key in keys:
        tree.get(key)
    result["get_per_s"] = round(len(keys) / (time.perf_counter() - start))
    start = time.perf_counter()
    proofs = [tree.prove(key) for key in keys]
    result["prove_per_s"] = round(len(keys) / (time.perf_counter() - start))
    root = tree.root
    start = time.perf_counter()
    for key, proof in zip(keys, proofs, strict=True):
        verify_proof(root, key, proof)
    result["verify_per_s"] = round(len(keys) / (time.perf_counter() - start))
    result["proof_bytes_mean"] = round(statistics.mean(len(p.encode()) for p in proofs[:2000]))
    result["nodes_after"] = store.node_count()
    start = time.perf_counter()
    if connection is not None:
        connection.execute("BEGIN")
    result["pruned_nodes"] = tree.prune(version - 1)
    if connection is not None:
        connection.execute("COMMIT")
    result["prune_s"] = round(time.perf_counter() - start, 3)
    result["peak_rss_mib"] = round(peak_rss_mib(), 1)
    if connection is not None:
        connection.close()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument("--store", choices=["sqlite", "memory"], default="sqlite")
    parser.add_argument("--cache-nodes", type=int, default=DEFAULT_CACHE_NODES)
    args = parser.parse_args()
    rng = random.Random(2024)
    results = []
    with tempfile.TemporaryDirectory() as directory:
        for size in args.sizes:
            results.append(bench_size(size, args.store, Path(directory), rng, args.cache_nodes))
    document = {
        "store": args.store,
        "cache_nodes": args.cache_nodes if args.store == "sqlite" else None,
        "value_size": VALUE_SIZE,
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "sizes": results,
    }
    print(json.dumps(document, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
