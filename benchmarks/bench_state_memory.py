"""Memory of an execution client holding 1,000,000 funded accounts; prints JSON.

    .venv/bin/python benchmarks/bench_state_memory.py [--accounts 1000000] [--blocks 3]

1. Generates a genesis file allocating the genesis supply evenly to ``--accounts`` addresses (ten of
   them are real key pairs, so blocks can spend from them).
2. Starts a real ``qoin execution`` process on it (loopback ports chosen by the OS).
3. Serves balances and Merkle proofs of random accounts over the user RPC and checks every proof.
4. Imports ``--blocks`` blocks of transfers through the engine API (JWT).
5. Reads the process's peak RSS (``VmHWM``) and stops it with SIGTERM.

Goal (issue 5): peak RSS under 2 GiB.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from qoin.chain.block import Block, Coinbase, Payout, siblings_root, transactions_root
from qoin.chain.genesis import builtin, to_json
from qoin.chain.issuance import GENESIS_ALLOCATION
from qoin.chain.transaction import sign_transfer
from qoin.crypto.address import Address
from qoin.crypto.hashing import sha3_256
from qoin.crypto.hybrid import generate_keypair
from qoin.execution.account import AccountLeaf, state_key
from qoin.pow.proof import placeholder_proof
from qoin.process import Child, ChildFailed
from qoin.rpc.client import RpcClient
from qoin.rpc.jwt import encode, load_secret
from qoin.state.smt import Proof, verify_proof

STARTUP_TIMEOUT_S = 1800
RPC_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 120.0


def write_genesis(path: Path, accounts: int, funded: list[Address]) -> None:
    """Stream a genesis file (the JSON of a million accounts is ~90 MB)."""
    base = to_json(builtin("devnet"))
    base["network"] = "bench-memory"
    share = GENESIS_ALLOCATION // accounts
    rest = GENESIS_ALLOCATION - share * accounts
    with path.open("w") as out:
        head = {k: v for k, v in base.items() if k != "allocation"}
        out.write(json.dumps(head)[:-1] + ', "allocation": [')
        for index in range(accounts):
            address = (
                funded[index]
                if index < len(funded)
                else Address(sha3_256(index.to_bytes(8, "big")))
            )
            amount = share + (rest if index == 0 else 0)
            out.write(
                ("," if index else "") + json.dumps({"address": str(address), "amount": amount})
            )
        out.write("]}")


def peak_rss(pid: int) -> int:
    """VmHWM of a process, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--accounts", type=int, default=1_000_000)
    parser.add_argument("--blocks", type=int, default=3)
    parser.add_argument("--queries", type=int, default=500)
    args = parser.parse_args()
    keys = [generate_keypair() for _ in range(10)]
    with tempfile.TemporaryDirectory(prefix="qoin-bench-memory-") as tmp:
        workdir = Path(tmp)
        genesis_file = workdir / "genesis.json"
        started = time.perf_counter()
        write_genesis(genesis_file, args.accounts, [k.address for k in keys])
        genesis_s = time.perf_counter() - started
        execution = Child.start(
            "execution client",
            ["execution", "--datadir", str(workdir / "data"), "--genesis", str(genesis_file),
             "--rpc-port", "0", "--engine-port", "0"],
        )  # fmt: skip
        started = time.perf_counter()
        try:
            _, found, _ = execution.wait_for(r"user RPC (\S+), engine API (\S+)", STARTUP_TIMEOUT_S)
        except ChildFailed as exc:
            execution.stop(STOP_TIMEOUT_S)
            print(json.dumps({"error": f"execution client did not start: {exc}"}))
            return 1
        startup_s = time.perf_counter() - started
        user_url, engine_url = found[1], found[2]
        token_secret = load_secret(workdir / "data" / "jwt.hex")
        user = RpcClient(user_url, timeout=RPC_TIMEOUT_S)
        engine = RpcClient(engine_url, timeout=RPC_TIMEOUT_S, token=lambda: encode(token_secret))
        try:
            rng = random.Random(1)
            started = time.perf_counter()
            for _ in range(args.queries):
                index = rng.randrange(10, args.accounts)
                address = Address(sha3_256(index.to_bytes(8, "big")))
                proof = user.call("qoin_getProof", str(address))
                value = verify_proof(
                    bytes.fromhex(proof["stateRoot"]),
                    state_key(address),
                    Proof.decode(bytes.fromhex(proof["proof"])),
                )
                if (
                    value is None
                    or AccountLeaf.decode(value).balance != proof["account"]["balance"]
                ):
                    raise RuntimeError("a served proof does not match the served balance")
            query_s = time.perf_counter() - started
            started = time.perf_counter()
            parent = Block.decode(bytes.fromhex(user.call("qoin_getBlockByNumber", 0)["raw"]))
            for height in range(1, args.blocks + 1):
                for key in keys:
                    tx = sign_transfer(
                        key,
                        chain_id=parent.header.chain_id,
                        nonce=height - 1,
                        recipient=keys[0].address,
                        amount=1,
                        fee=1,
                        reveal_keys=height == 1,
                    )
                    user.call("qoin_sendRawTransaction", tx.encode().hex())
                coinbase = Coinbase((Payout(keys[0].address, 0), Payout(keys[0].address, 0)))
                header = replace(
                    parent.header,
                    height=height,
                    parent_hash=parent.block_hash,
                    timestamp_ms=parent.header.timestamp_ms + 1000,
                    transactions_root=transactions_root(coinbase, ()),
                    siblings_root=siblings_root(()),
                    coinbase=keys[0].address,
                    miner=keys[0].public,
                    pow_proof=placeholder_proof(keys[0].suite),
                )
                built = engine.call(
                    "engine_forkchoiceUpdated",
                    parent.block_hash.hex(),
                    Block(header, (), coinbase, ()).encode().hex(),
                )
                raw = engine.call("engine_getPayload", built["payloadId"])
                verdict = engine.call("engine_newPayload", raw)
                if verdict["status"] != "VALID":
                    raise RuntimeError(f"block {height}: {verdict}")
                parent = Block.decode(bytes.fromhex(raw))
                engine.call("engine_forkchoiceUpdated", parent.block_hash.hex())
            import_s = time.perf_counter() - started
            rss = peak_rss(execution.proc.pid)
        finally:
            user.close()
            engine.close()
            execution.stop(STOP_TIMEOUT_S)
    print(
        json.dumps(
            {
                "benchmark": "state-memory",
                "accounts": args.accounts,
                "genesis_file_seconds": round(genesis_s, 1),
                "startup_seconds": round(startup_s, 1),
                "proof_queries": args.queries,
                "proof_queries_per_s": round(args.queries / query_s, 1),
                "blocks_imported": args.blocks,
                "block_seconds": round(import_s / max(1, args.blocks), 2),
                "peak_rss_bytes": rss,
                "peak_rss_gib": round(rss / 2**30, 3),
                "goal_peak_rss_gib": 2.0,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
