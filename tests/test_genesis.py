"""Genesis files: checked-in networks load; bad files are refused with a clear reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qoin.chain.genesis import GenesisError, builtin, from_json, load_file, to_json
from qoin.chain.issuance import GENESIS_ALLOCATION
from qoin.compute import params as compute_params
from qoin.execution.account import COMPUTE_MARKET_ADDRESS, genesis_state, storage_key
from qoin.storage import params as storage_params


@pytest.mark.parametrize("network", ["mainnet", "devnet"])
def test_builtin_networks(network: str) -> None:
    genesis = builtin(network)
    assert sum(a.amount for a in genesis.allocation) == GENESIS_ALLOCATION
    assert from_json(to_json(genesis)) == genesis
    assert genesis.header.height == 0


def test_genesis_hash_commits_to_every_parameter() -> None:
    base = to_json(builtin("devnet"))
    hashes = {from_json(base).genesis_hash}
    for key, value in [
        ("block_time_ms", 3000),
        ("asert_halflife_ms", 400_000),
        ("max_future_drift_ms", 1),
        ("network", "other"),
        ("chain_id", 9),
        ("timestamp_ms", 1),
        ("initial_target", "0x10"),
        ("storage_market", {**base["storage_market"], "window": 7}),
        ("compute_market", {**base["compute_market"], "reveal_blocks": 7}),
    ]:
        hashes.add(from_json({**base, key: value}).genesis_hash)
    assert len(hashes) == 10


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("chain_id", 2**70, "chain_id"),
        ("block_time_ms", 0, "block_time_ms"),
        ("block_time_ms", 10**15, "block_time_ms"),
        ("asert_halflife_ms", 1, "asert_halflife_ms"),
        ("initial_target", "0x0", "initial_target"),
        ("initial_target", "zz", "initial_target"),
        ("nbits", {"n": 64, "m": 32}, "nbits"),
        ("network", "", "network"),
        ("allocation", [], "exactly"),
        ("storage_market", {"period": 10, "window": 10}, "window"),
        ("storage_market", {"samples": "8"}, "samples"),
        ("storage_market", {"nope": 1}, "unknown"),
        ("storage_market", [], "object"),
        ("compute_market", {"block_ms": 0}, "block_ms"),
        ("compute_market", {"fine_client_ppm": 1_000_001}, "fine_client_ppm"),
        ("compute_market", {"reveal_blocks": True}, "reveal_blocks"),
        ("compute_market", {"nope": 1}, "unknown"),
        ("compute_market", 3, "object"),
    ],
)
def test_bad_fields_refused(key: str, value: object, message: str) -> None:
    with pytest.raises(GenesisError, match=message):
        from_json({**to_json(builtin("devnet")), key: value})


def test_duplicate_allocation_refused() -> None:
    obj = to_json(builtin("devnet"))
    entry = obj["allocation"][0]
    half = {"address": entry["address"], "amount": GENESIS_ALLOCATION // 2}
    with pytest.raises(GenesisError, match="twice"):
        from_json({**obj, "allocation": [half, half]})


def test_load_file_errors(tmp_path: Path) -> None:
    with pytest.raises(GenesisError, match="cannot read"):
        load_file(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(GenesisError, match="not JSON"):
        load_file(tmp_path / "bad.json")
    (tmp_path / "ok.json").write_text(json.dumps(to_json(builtin("devnet"))))
    assert load_file(tmp_path / "ok.json") == builtin("devnet")


def test_storage_market_parameters() -> None:
    devnet = builtin("devnet")
    assert devnet.storage == storage_params.DEVNET
    assert from_json(to_json(devnet)) == devnet
    obj = to_json(devnet)
    del obj["storage_market"]
    assert from_json(obj).storage == storage_params.MAINNET


def test_compute_market_parameters() -> None:
    devnet = builtin("devnet")
    assert devnet.compute == compute_params.DEVNET
    assert builtin("mainnet").compute == compute_params.MAINNET
    obj = to_json(devnet)
    assert obj["compute_market"] == compute_params.to_json(compute_params.DEVNET)
    del obj["compute_market"]
    assert from_json(obj).compute == compute_params.MAINNET
    partial = from_json({**to_json(devnet), "compute_market": {"reveal_blocks": 9}})
    assert partial.compute.reveal_blocks == 9
    assert partial.compute.block_ms == compute_params.MAINNET.block_ms
    leaves = genesis_state(devnet)
    key = storage_key(COMPUTE_MARKET_ADDRESS, compute_params.PARAMS_KEY)
    assert compute_params.ComputeParams.decode(leaves[key]) == compute_params.DEVNET
