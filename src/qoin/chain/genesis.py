"""Genesis files: a network's identity, consensus parameters and initial allocation.

A genesis file is JSON::

    {
      "network": "devnet",
      "chain_id": 1337,
      "timestamp_ms": 1764000000000,
      "block_time_ms": 2000,
      "asert_halflife_ms": 40000,
      "max_future_drift_ms": 15000,
      "nbits": {"n": 64, "m": 64},
      "initial_target": "0x...",                      # hex, the anchor target of ASERT
      "block_gas_limit": 60000000,                    # optional (this default): gas per block
      "storage_market": {"period": 360, ...},         # optional (mainnet values): spec/storage.md §1
      "compute_market": {"block_ms": 5000, ...},      # optional (mainnet values): spec/compute.md §1
      "allocation": [{"address": "qoin1...", "amount": 12000000000000}, ...]
    }

The allocation must total exactly 10 % of the cap (docs/architecture.md §5), with no address twice.
The genesis *header* is derived from the file: height 0, zero parent, the file's chain id, timestamp,
``nbits`` and target, an empty body, ``state_root = tagged_hash("QOIN/genesis/v1", network name ‖
block time ‖ half-life ‖ drift ‖ block gas limit ‖ allocation ‖ storage market parameters ‖
compute market parameters)`` (so the genesis hash commits to every parameter; the
execution layer's state root will take this place once it exists), and an all-zero miner key and
proof (genesis is accepted by its hash, not by proof-of-work). Its hash identifies the network.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any

from qoin.chain.block import Block, Coinbase, Header, siblings_root, transactions_root
from qoin.chain.issuance import GENESIS_ALLOCATION, IssuanceSchedule, schedule_for_block_time
from qoin.compute import params as compute_params
from qoin.compute.params import ComputeParams, ComputeParamsError
from qoin.crypto.address import ADDRESS_SIZE, Address, AddressError
from qoin.crypto.hashing import HASH_SIZE, tagged_hash
from qoin.crypto.hybrid import HybridPublicKey
from qoin.crypto.suites import DEFAULT_SUITE
from qoin.encoding.codec import Writer
from qoin.errors import QoinError
from qoin.execution.gas import DEFAULT_BLOCK_GAS_LIMIT, MAX_BLOCK_GAS_LIMIT, MIN_BLOCK_GAS_LIMIT
from qoin.files import FileReadError, read_bounded
from qoin.pow.difficulty import Anchor, DifficultyParams
from qoin.pow.mq import MQError, MQParams
from qoin.pow.proof import NbitsNotAllowed, max_target, nbits_of, params_of, placeholder_proof
from qoin.rpc.jwt import create_secret
from qoin.storage import params as storage_params
from qoin.storage.params import StorageParams, StorageParamsError

TAG_GENESIS = b"QOIN/genesis/v1"
MAX_NETWORK_NAME = 64
MAX_PARAMS_SIZE = 256
MAX_GENESIS_FILE_SIZE = 512 * 1024 * 1024
NETWORKS = ("mainnet", "devnet")
"""Networks whose genesis files ship with Qoin (``src/qoin/chain/networks/NAME.json``)."""


class GenesisError(QoinError):
    """A genesis file that cannot be used."""


@dataclass(frozen=True)
class Allocation:
    """Shor credited to an address at genesis."""

    address: Address
    """Recipient."""
    amount: int
    """Shor."""


@dataclass(frozen=True)
class Genesis:
    """A network: its parameters and its genesis block."""

    network: str
    """Human name of the network."""
    chain_id: int
    """Chain id that every transaction and header carries."""
    timestamp_ms: int
    """Genesis timestamp (ASERT anchor time)."""
    block_time_ms: int
    """Target block time."""
    asert_halflife_ms: int
    """ASERT half-life."""
    max_future_drift_ms: int
    """How far ahead of the local clock a block may be."""
    nbits: int
    """MQ parameters every header of this network uses."""
    initial_target: int
    """ASERT anchor target."""
    allocation: tuple[Allocation, ...]
    """Initial balances (10 % of the cap)."""
    block_gas_limit: int = DEFAULT_BLOCK_GAS_LIMIT
    """The most gas a block's transactions may reserve together (sum of their gas limits)."""
    storage: StorageParams = storage_params.MAINNET
    """The storage market's parameters (written into the genesis state; docs/spec/storage.md)."""
    compute: ComputeParams = compute_params.MAINNET
    """The compute market's parameters (written into the genesis state; docs/spec/compute.md)."""

    @cached_property
    def difficulty(self) -> DifficultyParams:
        """ASERT and timestamp parameters."""
        return DifficultyParams(
            block_time_ms=self.block_time_ms,
            halflife_ms=self.asert_halflife_ms,
            max_target=max_target(self.nbits),
            max_future_drift_ms=self.max_future_drift_ms,
        )

    @cached_property
    def anchor(self) -> Anchor:
        """The ASERT anchor: the genesis block."""
        return Anchor(0, self.timestamp_ms, self.initial_target)

    @cached_property
    def issuance(self) -> IssuanceSchedule:
        """The subsidy schedule for this network's block time."""
        return schedule_for_block_time(self.block_time_ms)

    @cached_property
    def commitment(self) -> bytes:
        """Hash of every parameter the header does not carry, and of the allocation list, so that
        the genesis hash identifies the whole network configuration."""
        writer = (
            Writer()
            .var_bytes(self.network.encode(), MAX_NETWORK_NAME)
            .varint(self.block_time_ms)
            .varint(self.asert_halflife_ms)
            .varint(self.max_future_drift_ms)
            .varint(self.block_gas_limit)
            .varint(len(self.allocation))
        )
        for entry in self.allocation:
            writer.fixed(entry.address.raw, ADDRESS_SIZE).varint(entry.amount)
        writer.var_bytes(self.storage.encode(), MAX_PARAMS_SIZE)
        writer.var_bytes(self.compute.encode(), MAX_PARAMS_SIZE)
        return tagged_hash(TAG_GENESIS, writer.bytes())

    @cached_property
    def block(self) -> Block:
        """The genesis block (empty body)."""
        miner = HybridPublicKey(
            DEFAULT_SUITE, tuple(bytes(c.public_key_size) for c in DEFAULT_SUITE.components)
        )
        coinbase = Coinbase(())
        header = Header(
            chain_id=self.chain_id,
            height=0,
            parent_hash=bytes(HASH_SIZE),
            timestamp_ms=self.timestamp_ms,
            nbits=self.nbits,
            target=self.initial_target,
            transactions_root=transactions_root(coinbase, ()),
            siblings_root=siblings_root(()),
            state_root=self.commitment,
            receipts_root=bytes(HASH_SIZE),
            coinbase=miner.address,
            miner=miner,
            pow_r=bytes(32),
            pow_nonce=bytes(HASH_SIZE),
            pow_proof=placeholder_proof(DEFAULT_SUITE),
        )
        return Block(header, (), coinbase, ())

    @property
    def header(self) -> Header:
        """The genesis header."""
        return self.block.header

    @property
    def genesis_hash(self) -> bytes:
        """The network's identity."""
        return self.block.block_hash


def to_json(genesis: Genesis) -> dict[str, Any]:
    """The JSON object of a genesis file (inverse of :func:`from_json`)."""
    params = params_of(genesis.nbits)
    return {
        "network": genesis.network,
        "chain_id": genesis.chain_id,
        "timestamp_ms": genesis.timestamp_ms,
        "block_time_ms": genesis.block_time_ms,
        "asert_halflife_ms": genesis.asert_halflife_ms,
        "max_future_drift_ms": genesis.max_future_drift_ms,
        "nbits": {"n": params.n, "m": params.m},
        "initial_target": hex(genesis.initial_target),
        "block_gas_limit": genesis.block_gas_limit,
        "storage_market": storage_params.to_json(genesis.storage),
        "compute_market": compute_params.to_json(genesis.compute),
        "allocation": [{"address": str(a.address), "amount": a.amount} for a in genesis.allocation],
    }


U64_MAX = 2**64 - 1
YEAR_MS = 31_557_600_000


def _int(obj: dict[str, Any], key: str, minimum: int = 0, maximum: int = U64_MAX) -> int:
    value = obj.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value <= maximum:
        raise GenesisError(f"genesis field {key!r} must be an integer in [{minimum}, {maximum}]")
    return value


def from_json(obj: Any) -> Genesis:
    """Parse and check a genesis JSON object."""
    if not isinstance(obj, dict):
        raise GenesisError("a genesis file holds a JSON object")
    name = obj.get("network")
    if not isinstance(name, str) or not 0 < len(name.encode()) <= MAX_NETWORK_NAME:
        raise GenesisError(f"genesis field 'network' must be a name of 1..{MAX_NETWORK_NAME} bytes")
    nbits_obj = obj.get("nbits")
    if not isinstance(nbits_obj, dict):
        raise GenesisError("genesis field 'nbits' must be an object {n, m}")
    try:
        nbits = nbits_of(MQParams(_int(nbits_obj, "n"), _int(nbits_obj, "m")))
        params_of(nbits)
    except (MQError, NbitsNotAllowed) as exc:
        raise GenesisError(f"genesis nbits: {exc}") from None
    target_text = obj.get("initial_target")
    try:
        target = int(target_text, 16) if isinstance(target_text, str) else -1
    except ValueError:
        target = -1
    if not 1 <= target <= max_target(nbits):
        raise GenesisError("genesis 'initial_target' must be a hex integer in [1, 2^m - 1]")
    entries = obj.get("allocation")
    if not isinstance(entries, list):
        raise GenesisError("genesis field 'allocation' must be a list")
    allocation = []
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("address"), str):
            raise GenesisError("each allocation needs an 'address' string and an 'amount'")
        try:
            address = Address.from_text(entry["address"])
        except AddressError as exc:
            raise GenesisError(f"allocation: {exc}") from None
        allocation.append(Allocation(address, _int(entry, "amount", 1, GENESIS_ALLOCATION)))
    if len({a.address for a in allocation}) != len(allocation):
        raise GenesisError("an address appears twice in the genesis allocation")
    total = sum(a.amount for a in allocation)
    if total != GENESIS_ALLOCATION:
        raise GenesisError(
            f"genesis allocation totals {total:,} Shor; it must be exactly {GENESIS_ALLOCATION:,}"
        )
    block_time = _int(obj, "block_time_ms", 1, YEAR_MS)
    return Genesis(
        network=name,
        chain_id=_int(obj, "chain_id"),
        timestamp_ms=_int(obj, "timestamp_ms"),
        block_time_ms=block_time,
        asert_halflife_ms=_int(obj, "asert_halflife_ms", block_time, 100 * YEAR_MS),
        max_future_drift_ms=_int(obj, "max_future_drift_ms", 0, 86_400_000),
        nbits=nbits,
        initial_target=target,
        allocation=tuple(allocation),
        block_gas_limit=(
            _int(obj, "block_gas_limit", MIN_BLOCK_GAS_LIMIT, MAX_BLOCK_GAS_LIMIT)
            if "block_gas_limit" in obj
            else DEFAULT_BLOCK_GAS_LIMIT
        ),
        storage=_storage(obj),
        compute=_compute(obj),
    )


def _storage(obj: dict[str, Any]) -> StorageParams:
    """The ``storage_market`` object's parameters (the mainnet values when it is absent)."""
    if "storage_market" not in obj:
        return storage_params.MAINNET
    try:
        return storage_params.from_json(obj["storage_market"])
    except StorageParamsError as exc:
        raise GenesisError(f"genesis {exc}") from None


def _compute(obj: dict[str, Any]) -> ComputeParams:
    """The ``compute_market`` object's parameters (the mainnet values when it is absent)."""
    if "compute_market" not in obj:
        return compute_params.MAINNET
    try:
        return compute_params.from_json(obj["compute_market"])
    except ComputeParamsError as exc:
        raise GenesisError(f"genesis {exc}") from None


def load_file(path: Path) -> Genesis:
    """Read a genesis file from disk."""
    try:
        raw = read_bounded(path, MAX_GENESIS_FILE_SIZE, "genesis file")
    except FileReadError as exc:
        raise GenesisError(str(exc)) from None
    try:
        return from_json(json.loads(raw))
    except (ValueError, UnicodeDecodeError):
        raise GenesisError(f"genesis file {path} is not JSON") from None


def write_network_files(workdir: Path, genesis: Genesis) -> tuple[Path, Path]:
    """Write the files every process of a local network shares into ``workdir``: the genesis
    (``genesis.json``) and the engine API's JWT secret (``jwt.hex``, a fresh one unless it exists);
    their paths (for ``--genesis`` and ``--jwt-secret``)."""
    genesis_file, jwt_file = workdir / "genesis.json", workdir / "jwt.hex"
    genesis_file.write_text(json.dumps(to_json(genesis)))
    create_secret(jwt_file)
    return genesis_file, jwt_file


def builtin_json(name: str) -> Any:
    """A JSON file shipped in ``qoin/chain/networks`` (a genesis file or the devnet key)."""
    return json.loads(resources.files("qoin.chain.networks").joinpath(f"{name}.json").read_text())


def builtin(network: str) -> Genesis:
    """The genesis of a network that ships with Qoin (``mainnet`` or ``devnet``)."""
    if network not in NETWORKS:
        raise GenesisError(f"unknown network {network!r}; built in: {', '.join(NETWORKS)}")
    return from_json(builtin_json(network))
