"""``qoin bench contracts``: what contracts and actors cost against plain transfers, in one run.

Setup (not timed): ``senders`` fresh key pairs are funded at genesis (as in ``qoin bench import``).
Two setup blocks, built on a scratch database, reveal every sender's keys (a transfer each), deploy
:data:`COUNTERS` copies of ``examples/contracts/counter.wasm`` and one ``token.wasm`` (its whole
supply minted to the first sender), and fund every other sender with token transfers. Then, for each
workload, ``blocks`` blocks of ``txs_per_block`` transactions are built on their own branch from the
setup head (a fresh scratch database that imports the setup blocks), the senders taking turns, nonces
in order, no keys carried:

* ``transfer``: v1 transfers to the miner (the baseline: the workload of ``qoin bench import``);
* ``counter``: ``increment()`` on the counters in turn;
* ``token``: token ``transfer(next sender, 1)``;
* ``names``: ``names.register`` of a distinct name for :data:`~qoin.actors.names.MIN_TERM` blocks;
* ``mixed`` (for sampling only): transfers, counter increments and token transfers in turn.

Each block's roots and fee payout come from :meth:`ExecutionState.fill_roots`. After building, the
effects are checked on the scratch state (every counter's count, every token balance, every name's
owner): a call that reverted would void the figures.

Measured, in one process, interleaved (the workload order rotating from round to round), the
medians compared:

1. **Import rate**: a fresh execution database imports the setup blocks (not timed), then the
   workload's blocks are decoded and imported with ``new_payload`` and ``forkchoice_updated``, as
   the execution client does for the engine API, timed; transactions per second per workload, and
   the ratios counter/transfer and token/transfer (goal >= :data:`CONTRACT_GOAL`) and
   names/transfer (goal >= :data:`ACTOR_GOAL`).
2. **WebAssembly execution alone**: a deployed loop contract (:data:`SPIN_WAT`) called through
   :meth:`Machine.call` on an in-memory state (no signatures, no database): gas per second; the
   same for a loop of host calls (:data:`HOSTS_WAT`): microseconds per host call, gas per second;
   and ``counter.increment`` through :meth:`Machine.call` in a tight loop: microseconds per call.
3. **Sampling against stateless re-execution** on the ``mixed`` blocks, exactly as ``qoin bench
   sampling`` measures it (:func:`qoin.bench.sampling.measure`): an execution client serving its
   engine API imports the blocks; the consensus side's sampling (trace summary, ``samples`` keys,
   proofs, step records, re-execution) against fetching the witness and re-executing statelessly,
   engine calls included (goal: sampling at least :data:`SAMPLING_GOAL` times cheaper).

Peak RSS of the process is reported too.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import wasmtime

from qoin.actors import NAMES_ADDRESS
from qoin.actors.names import MIN_TERM, NameRecord, record_key, term_fee
from qoin.bench import sampling as bench_sampling
from qoin.bench.importing import CHAIN_ID, bench_genesis
from qoin.bench.timing import BenchmarkCheckFailed, machine_info, peak_rss_bytes
from qoin.chain.block import Block
from qoin.chain.builder import next_block
from qoin.chain.genesis import Genesis
from qoin.chain.transaction import DEPLOY_ADDRESS, AnyTransaction, sign_call, sign_transfer
from qoin.consensus.sampling import DEFAULT_SAMPLES
from qoin.crypto.address import Address
from qoin.crypto.batch import default_workers, favour_verifier_threads
from qoin.crypto.hashing import sha3_256
from qoin.crypto.hybrid import HybridKeyPair, generate_keypair
from qoin.execution.abi import encode_args, encode_call, encode_deploy
from qoin.execution.account import AccountLeaf, contract_address, state_key
from qoin.execution.overlay import StateOverlay
from qoin.execution.receipt import CallStatus
from qoin.execution.state import ExecutionState, PayloadStatus
from qoin.execution.transition import default_platform
from qoin.execution.vm import BlockEnv, Machine

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "contracts"
"""Where the example contracts are (the benchmark runs from a source checkout)."""
WORKLOADS = ("transfer", "counter", "token", "names")
"""The workloads whose import rates are compared."""
MIXED = "mixed"
"""The workload sampling is measured on (transfers, counter increments, token transfers)."""
COUNTERS = 4
"""Counter contracts deployed; the increments go to each in turn."""
ROUNDS = 5
"""Each workload is imported into a fresh database this many times; the medians are compared."""
WASM_ROUNDS = 5
"""Rounds of the WebAssembly measurements (medians)."""
COUNTER_CALLS = 500
"""``counter.increment`` calls per WebAssembly round."""
SPIN_ITERATIONS = 2_000_000
"""Loop iterations of one :data:`SPIN_WAT` call (about 8 gas each)."""
CONTRACT_GOAL = 0.5
"""Goal for the import rate of contract calls over that of transfers."""
SAMPLING_BLOCKS = 2
"""Mixed blocks sampling is measured on (of ``sampling_txs_per_block`` transactions: as many as
``qoin bench sampling``'s blocks of transfers by default, so the two ratios compare)."""
ACTOR_GOAL = 0.8
"""Goal for the import rate of actor calls over that of transfers."""
SAMPLING_GOAL = 10.0
"""Goal for stateless re-execution time over sampling time."""
MAX_SENDERS = 4_000
"""Most senders (the setup block funding them with tokens stays under the block size limit)."""
MAX_BLOCKS = 100
"""Most measured blocks per workload."""
MAX_TXS_PER_BLOCK = 4_000
"""Most transactions per block (about 3.2 kB each: under the block size limit)."""

TRANSFER_AMOUNT = 1_000
TRANSFER_FEE = 10
FEE_PER_GAS = 1
COUNTER_GAS = 60_000
TOKEN_GAS = 100_000
NAMES_GAS = 150_000
DEPLOY_GAS = 3_000_000
TOKEN_FUNDING = 10**9
"""Tokens each sender starts with."""
SPIN_GAS = 10**9

SPIN_WAT = f"""
(module
  (memory (export "memory") 1)
  (func (export "spin")
    (local $i i32) (local $acc i64)
    (local.set $i (i32.const {SPIN_ITERATIONS}))
    (loop $again
      (local.set $acc
        (i64.add (i64.mul (local.get $acc) (i64.const 6364136223846793005))
                 (i64.const 1442695040888963407)))
      (local.set $i (i32.sub (local.get $i) (i32.const 1)))
      (br_if $again (local.get $i)))
    (i64.store (i32.const 0) (local.get $acc))))
"""
"""A contract whose ``spin()`` runs a multiply-add loop :data:`SPIN_ITERATIONS` times."""
HOST_CALLS = 10_000
"""Host calls one :data:`HOSTS_WAT` call makes."""
HOSTS_WAT = f"""
(module
  (import "qoin" "gas_left" (func $gas_left (result i64)))
  (memory (export "memory") 1)
  (func (export "hosts")
    (local $i i32)
    (local.set $i (i32.const {HOST_CALLS}))
    (loop $again
      (drop (call $gas_left))
      (local.set $i (i32.sub (local.get $i) (i32.const 1)))
      (br_if $again (local.get $i)))))
"""
"""A contract whose ``hosts()`` calls the cheapest host import, ``gas_left``, :data:`HOST_CALLS`
times: the gas per second of code that does little but cross into the host."""


@dataclass(frozen=True)
class Job:
    """One transaction to sign."""

    kind: str
    """``transfer``, ``counter``, ``token``, ``names``, or ``deploy``, ``fund`` in the setup."""
    sender: int
    """Index of the sender."""
    nonce: int
    """Its nonce."""
    index: int
    """Its position in the workload (picks the counter, the token recipient, the name)."""


@dataclass(frozen=True)
class Setup:
    """The prepared chain: genesis, keys, contracts, encoded setup blocks."""

    genesis: Genesis
    """Funds every sender."""
    miner: HybridKeyPair
    """Mines every block; receives the transfers."""
    senders: tuple[HybridKeyPair, ...]
    """Funded senders."""
    counters: tuple[Address, ...]
    """The deployed counters."""
    token: Address
    """The deployed token."""
    blocks: tuple[bytes, ...]
    """The setup blocks, encoded."""
    nonces: tuple[int, ...]
    """Each sender's nonce after the setup blocks."""


def example(name: str) -> bytes:
    """An example contract's module; :class:`BenchmarkCheckFailed` outside a source checkout."""
    path = EXAMPLES / name
    try:
        return path.read_bytes()
    except OSError as exc:
        raise BenchmarkCheckFailed(
            f"cannot read {path} (run the benchmark from a source checkout): {exc}"
        ) from None


def name_of(index: int) -> str:
    """The name the ``names`` workload registers at ``index``."""
    return f"bench-{index}"


def _sign(setup: Setup, jobs: Sequence[Job], token_code: bytes) -> list[AnyTransaction]:
    """Sign ``jobs`` on every core (the signing libraries release the GIL)."""
    senders = setup.senders

    def sign(job: Job) -> AnyTransaction:
        keypair = senders[job.sender]
        if job.kind == "transfer":
            return sign_transfer(
                keypair,
                chain_id=CHAIN_ID,
                nonce=job.nonce,
                recipient=setup.miner.address,
                amount=TRANSFER_AMOUNT,
                fee=TRANSFER_FEE,
                reveal_keys=job.nonce == 0,
            )
        to, data, gas, value = _call(setup, job, token_code)
        return sign_call(
            keypair,
            chain_id=CHAIN_ID,
            nonce=job.nonce,
            to=to,
            data=data,
            gas_limit=gas,
            fee_per_gas=FEE_PER_GAS,
            value=value,
            reveal_keys=False,
        )

    with ThreadPoolExecutor(default_workers()) as pool:
        return list(pool.map(sign, jobs))


def _call(setup: Setup, job: Job, token_code: bytes) -> tuple[Address, bytes, int, int]:
    """(to, data, gas limit, value) of a call job."""
    count = len(setup.senders)
    if job.kind == "counter":
        return setup.counters[job.index % COUNTERS], encode_call("increment"), COUNTER_GAS, 0
    if job.kind in ("token", "fund"):
        recipient = setup.senders[(job.sender + 1) % count if job.kind == "token" else job.index]
        amount = 1 if job.kind == "token" else TOKEN_FUNDING
        data = encode_call("transfer", [recipient.address, amount])
        return setup.token, data, TOKEN_GAS, 0
    if job.kind == "names":
        name = name_of(job.index)
        data = encode_call("register", [name, sha3_256(name.encode()), MIN_TERM])
        return NAMES_ADDRESS, data, NAMES_GAS, term_fee(MIN_TERM)
    if job.kind == "deploy":
        supply = TOKEN_FUNDING * count
        data = (
            encode_deploy(token_code, [supply])
            if job.index == COUNTERS
            else encode_deploy(example("counter.wasm"))
        )
        return DEPLOY_ADDRESS, data, DEPLOY_GAS, 0
    raise ValueError(f"unknown job kind {job.kind!r}")


def _build(
    workdir: Path,
    genesis: Genesis,
    miner: HybridKeyPair,
    before: Sequence[bytes],
    batches: Sequence[Sequence[AnyTransaction]],
) -> tuple[ExecutionState, list[bytes]]:
    """On a fresh scratch database: import ``before``, then build (roots filled) and import one
    block per batch; return the open scratch state and the new blocks, encoded."""
    scratch = ExecutionState.open(workdir, genesis)
    try:
        parent = genesis.block.header
        for raw in before:
            block = Block.decode(raw)
            _import(scratch, block)
            parent = block.header
        encoded = []
        for batch in batches:
            block = next_block(genesis, parent, miner, batch, execution=scratch, sealed=False)
            _import(scratch, block)
            encoded.append(block.encode())
            parent = block.header
    except BaseException:
        scratch.close()
        raise
    return scratch, encoded


def _import(state: ExecutionState, block: Block) -> None:
    """``new_payload`` then ``forkchoice_updated``, as the execution client's engine API does."""
    verdict = state.new_payload(block)
    if verdict.status is not PayloadStatus.VALID:
        raise BenchmarkCheckFailed(
            f"block {block.header.height} is {verdict.status.value}: {verdict.reason}"
        )
    state.forkchoice_updated(block.block_hash)


def prepare_setup(senders: int, workdir: Path) -> Setup:
    """Keys, genesis, and the two setup blocks (module docstring)."""
    with ThreadPoolExecutor(default_workers()) as pool:
        keys = list(pool.map(lambda _: generate_keypair(), range(senders + 1)))
    miner, funded = keys[0], tuple(keys[1:])
    genesis = bench_genesis(list(funded), "bench-contracts")
    deployer = funded[0].address
    counters = tuple(contract_address(deployer, 1 + index) for index in range(COUNTERS))
    token = contract_address(deployer, 1 + COUNTERS)
    setup = Setup(genesis, miner, funded, counters, token, (), ())
    token_code = example("token.wasm")
    reveal = [Job("transfer", index, 0, index) for index in range(senders)]
    deploys = [Job("deploy", 0, 1 + index, index) for index in range(COUNTERS + 1)]
    funding = [Job("fund", 0, 1 + COUNTERS + i, i) for i in range(1, senders)]
    first = _sign(setup, reveal, token_code)
    second = _sign(setup, deploys + funding, token_code)
    scratch, encoded = _build(workdir, genesis, miner, (), (first, second))
    scratch.close()
    nonces = [1] * senders
    nonces[0] = 2 + COUNTERS + len(funding)
    return Setup(genesis, miner, funded, counters, token, tuple(encoded), tuple(nonces))


def workload_jobs(kind: str, setup: Setup, count: int) -> list[Job]:
    """The ``count`` jobs of a workload: senders in turn, nonces from their post-setup ones."""
    senders = len(setup.senders)
    jobs = []
    for index in range(count):
        sender = index % senders
        job_kind = ("transfer", "counter", "token")[index % 3] if kind == MIXED else kind
        jobs.append(Job(job_kind, sender, setup.nonces[sender] + index // senders, index))
    return jobs


def check_effects(state: ExecutionState, setup: Setup, jobs: Sequence[Job]) -> None:
    """:class:`BenchmarkCheckFailed` unless every call of ``jobs`` took effect: each counter's
    count, each sender's token balance, each name's owner."""
    increments = Counter(
        setup.counters[job.index % COUNTERS] for job in jobs if job.kind == "counter"
    )
    for address in setup.counters:
        raw = state.storage(address, b"count")
        count = int.from_bytes(raw, "big") if raw else 0
        if count != increments[address]:
            raise BenchmarkCheckFailed(
                f"counter {address}: count {count}, {increments[address]} calls"
            )
    senders = len(setup.senders)
    balances = [TOKEN_FUNDING] * senders
    for job in jobs:
        if job.kind == "token":
            balances[job.sender] -= 1
            balances[(job.sender + 1) % senders] += 1
    for index, keypair in enumerate(setup.senders):
        raw = state.storage(setup.token, b"b" + keypair.address.raw)
        if int.from_bytes(raw, "big") != balances[index]:
            raise BenchmarkCheckFailed(f"sender {index}: unexpected token balance")
    for job in jobs:
        if job.kind == "names":
            raw = state.storage(NAMES_ADDRESS, record_key(name_of(job.index)))
            owner = NameRecord.decode(raw).owner if raw else None
            if owner != setup.senders[job.sender].address:
                raise BenchmarkCheckFailed(f"name {name_of(job.index)!r} was not registered")


@dataclass(frozen=True)
class Workload:
    """A workload's encoded blocks and what building them showed."""

    blocks: tuple[bytes, ...]
    """Its blocks, encoded, each a child of the previous (the first of the setup head)."""
    gas_per_tx: float
    """Mean gas a transaction used (fees at one Shor per gas; transfers: 21,000)."""


def prepare_workload(
    kind: str, setup: Setup, blocks: int, txs_per_block: int, workdir: Path
) -> Workload:
    """Sign and build a workload's blocks on their own scratch database; check their effects."""
    jobs = workload_jobs(kind, setup, blocks * txs_per_block)
    txs = _sign(setup, jobs, example("token.wasm"))
    batches = [txs[index * txs_per_block : (index + 1) * txs_per_block] for index in range(blocks)]
    scratch, encoded = _build(workdir, setup.genesis, setup.miner, setup.blocks, batches)
    try:
        check_effects(scratch, setup, jobs)
    finally:
        scratch.close()
    shutil.rmtree(workdir, ignore_errors=True)
    if kind == "transfer":
        gas = 21_000.0
    else:  # every call pays one Shor per gas: the fee payout is the gas used
        fees = sum(Block.decode(raw).coinbase.payouts[-1].amount for raw in encoded)
        gas = fees / len(jobs) if kind != MIXED else 0.0
    return Workload(tuple(encoded), gas)


def time_import(setup: Setup, workload: Workload, workdir: Path) -> float:
    """Seconds a fresh database takes to import the workload's blocks (after the setup's)."""
    state = ExecutionState.open(workdir, setup.genesis)
    try:
        for raw in setup.blocks:
            _import(state, Block.decode(raw))
        start = time.perf_counter()
        for raw in workload.blocks:
            _import(state, Block.decode(raw))
        elapsed = time.perf_counter() - start
    finally:
        state.close()
    shutil.rmtree(workdir, ignore_errors=True)
    return elapsed


# -- WebAssembly alone ---------------------------------------------------------------------------


def wasm_figures(rounds: int = WASM_ROUNDS) -> dict[str, Any]:
    """Gas per second of a loop contract and of a loop of host calls, and microseconds per
    ``counter.increment``, all through :meth:`Machine.call` on an in-memory state."""
    platform = default_platform()
    caller = Address(sha3_256(b"bench-contracts caller"))
    base = {state_key(caller): AccountLeaf(10**15, 0, True, None).encode()}
    machine = Machine(
        StateOverlay(base.get),
        BlockEnv(CHAIN_ID, 1, 0, bytes(32)),
        platform.actors,
        platform.runtime,
    )
    spin = _deploy(machine, caller, 0, bytes(wasmtime.wat2wasm(SPIN_WAT)))
    counter = _deploy(machine, caller, 1, example("counter.wasm"))
    hosts = _deploy(machine, caller, 2, bytes(wasmtime.wat2wasm(HOSTS_WAT)))
    no_args = encode_args([])

    def call(to: Address, method: str, gas: int) -> int:
        result = machine.call(
            caller=caller, origin=caller, to=to, value=0, method=method, args=no_args, gas=gas,
            depth=1,
        )  # fmt: skip
        machine.events.clear()
        if result.status is not CallStatus.SUCCESS:
            raise BenchmarkCheckFailed(f"{method}: {result.status.name} {result.reason}")
        return result.gas_used

    spin_runs: list[tuple[int, float]] = []
    host_runs: list[tuple[int, float]] = []
    counter_runs: list[float] = []
    counter_gas = 0
    for _ in range(rounds):
        start = time.perf_counter()
        used = call(spin, "spin", SPIN_GAS)
        spin_runs.append((used, time.perf_counter() - start))
        start = time.perf_counter()
        used = call(hosts, "hosts", SPIN_GAS)
        host_runs.append((used, time.perf_counter() - start))
        start = time.perf_counter()
        for _ in range(COUNTER_CALLS):
            counter_gas = call(counter, "increment", COUNTER_GAS)
        counter_runs.append((time.perf_counter() - start) / COUNTER_CALLS)
        machine.state.end_step()  # keep the step record small
    spin_rates = [used / seconds for used, seconds in spin_runs]
    host_rates = [used / seconds for used, seconds in host_runs]
    host_us = statistics.median(seconds for _, seconds in host_runs) / HOST_CALLS * 1e6
    counter_us = statistics.median(counter_runs) * 1e6
    return {
        "spin_gas_per_call": spin_runs[0][0],
        "spin_ms_per_call": statistics.median(s for _, s in spin_runs) * 1e3,
        "spin_gas_per_s": statistics.median(spin_rates),
        "spin_runs_gas_per_s": spin_rates,
        "host_call_us": host_us,
        "host_call_gas": host_runs[0][0] / HOST_CALLS,
        "host_gas_per_s": statistics.median(host_rates),
        "counter_call_us": counter_us,
        "counter_runs_us": [run * 1e6 for run in counter_runs],
        "counter_gas_per_call": counter_gas,
        "counter_gas_per_s": counter_gas / counter_us * 1e6,
        "rounds": rounds,
    }


def _deploy(machine: Machine, deployer: Address, nonce: int, code: bytes) -> Address:
    result = machine.deploy(
        deployer=deployer, nonce=nonce, data=encode_deploy(code), value=0, gas=DEPLOY_GAS * 10
    )
    if result.status is not CallStatus.SUCCESS:
        raise BenchmarkCheckFailed(f"deployment failed: {result.status.name} {result.reason}")
    return Address(result.return_data)


# -- sampling against stateless re-execution -----------------------------------------------------


# -- the run -------------------------------------------------------------------------------------


def _ratio(rate: float, baseline: float, goal: float) -> dict[str, Any]:
    value = rate / baseline
    return {"ratio": value, "goal": goal, "goal_met": value >= goal}


def run(
    senders: int = 500,
    blocks: int = 3,
    txs_per_block: int = 300,
    samples: int = DEFAULT_SAMPLES,
    progress: Callable[[str], None] | None = None,
    sampling_txs_per_block: int = 1_000,
) -> dict[str, Any]:
    """The contracts benchmark as one JSON-ready object; ``progress`` hears what it is doing."""
    for what, value, most in (
        ("senders", senders, MAX_SENDERS),
        ("blocks", blocks, MAX_BLOCKS),
        ("txs_per_block", txs_per_block, MAX_TXS_PER_BLOCK),
    ):
        if not 1 <= value <= most:
            raise ValueError(f"{what} must be between 1 and {most}, got {value}")
    say = progress or (lambda _: None)
    favour_verifier_threads()  # as the execution client process does
    with tempfile.TemporaryDirectory(prefix="qoin-bench-contracts-") as tmp:
        workdir = Path(tmp)
        started = time.perf_counter()
        say("setup: keys, genesis, contracts")
        setup = prepare_setup(senders, workdir / "setup")
        workloads = {}
        for kind in WORKLOADS:
            say(f"setup: signing and building the {kind} blocks")
            workloads[kind] = prepare_workload(kind, setup, blocks, txs_per_block, workdir / kind)
        say("setup: signing and building the mixed blocks")
        workloads[MIXED] = prepare_workload(
            MIXED, setup, SAMPLING_BLOCKS, sampling_txs_per_block, workdir / MIXED
        )
        setup_s = time.perf_counter() - started
        runs: dict[str, list[float]] = {kind: [] for kind in WORKLOADS}
        for round_ in range(ROUNDS):
            say(f"import round {round_ + 1} of {ROUNDS}")
            shift = round_ % len(WORKLOADS)
            for kind in WORKLOADS[shift:] + WORKLOADS[:shift]:
                seconds = time_import(setup, workloads[kind], workdir / f"measured-{kind}")
                runs[kind].append(seconds)
        say("WebAssembly alone")
        wasm = wasm_figures()
        say("sampling against stateless re-execution")
        sampled = bench_sampling.measure(
            setup.genesis,
            [*setup.blocks, *workloads[MIXED].blocks],
            len(setup.blocks),
            samples,
            workdir / "sampling",
        )
        sampling = {
            **sampled,
            "goal": SAMPLING_GOAL,
            "goal_met": sampled["ratio"] >= SAMPLING_GOAL,
        }
    transactions = blocks * txs_per_block
    imports: dict[str, dict[str, Any]] = {
        kind: {
            "tx_per_s": transactions / statistics.median(runs[kind]),
            "seconds": statistics.median(runs[kind]),
            "runs_tx_per_s": [transactions / seconds for seconds in runs[kind]],
            "gas_per_tx": workloads[kind].gas_per_tx,
        }
        for kind in WORKLOADS
    }
    baseline = imports["transfer"]["tx_per_s"]
    return {
        "benchmark": "contracts",
        "machine": machine_info(),
        "senders": senders,
        "blocks": blocks,
        "transactions_per_block": txs_per_block,
        "transactions": transactions,
        "counters": COUNTERS,
        "rounds": ROUNDS,
        "setup_seconds": round(setup_s, 2),
        "import": imports,
        "ratios": {
            "counter_to_transfer": _ratio(imports["counter"]["tx_per_s"], baseline, CONTRACT_GOAL),
            "token_to_transfer": _ratio(imports["token"]["tx_per_s"], baseline, CONTRACT_GOAL),
            "names_to_transfer": _ratio(imports["names"]["tx_per_s"], baseline, ACTOR_GOAL),
        },
        "wasm": wasm,
        "sampling": sampling,
        "workers": default_workers(),
        "peak_rss_bytes": peak_rss_bytes(),
    }


def table(report: dict[str, Any]) -> str:
    """The report as a small human-readable table."""
    lines = [
        f"{report['blocks']} blocks x {report['transactions_per_block']} transactions per "
        f"workload, {report['senders']} senders, median of {report['rounds']} rounds",
        "",
        f"{'workload':<10} {'tx/s':>10} {'gas/tx':>9} {'vs transfer':>12} {'goal':>6}  met",
    ]
    ratios = report["ratios"]
    for kind, figures in report["import"].items():
        found = ratios.get(f"{kind}_to_transfer")
        versus = f"{found['ratio']:.2f}" if found else "1.00"
        goal = f"{found['goal']:.2f}" if found else ""
        met = ("yes" if found["goal_met"] else "NO") if found else ""
        lines.append(
            f"{kind:<10} {figures['tx_per_s']:>10,.0f} {figures['gas_per_tx']:>9,.0f} "
            f"{versus:>12} {goal:>6}  {met}"
        )
    wasm = report["wasm"]
    lines += [
        "",
        f"WebAssembly loop: {wasm['spin_gas_per_s'] / 1e6:,.1f} M gas/s "
        f"({wasm['spin_gas_per_call']:,} gas in {wasm['spin_ms_per_call']:.1f} ms)",
        f"host calls (gas_left in a loop): {wasm['host_call_us']:.1f} us each "
        f"({wasm['host_call_gas']:.0f} gas, {wasm['host_gas_per_s'] / 1e6:.1f} M gas/s)",
        f"counter.increment via Machine.call: {wasm['counter_call_us']:.0f} us "
        f"({wasm['counter_gas_per_call']:,} gas, {wasm['counter_gas_per_s'] / 1e6:.1f} M gas/s)",
    ]
    sampling = report["sampling"]
    if sampling:
        lines += [
            "",
            f"sampling k={sampling['samples']}: mean {sampling['sampling']['mean_ms']:.2f} ms, "
            f"worst {sampling['sampling']['worst_ms']:.2f} ms; stateless mean "
            f"{sampling['stateless']['mean_ms']:.1f} ms; ratio {sampling['ratio']:.1f} "
            f"(worst draw {sampling['ratio_worst']:.1f}; goal {sampling['goal']:.0f}: "
            f"{'met' if sampling['goal_met'] else 'NOT met'})",
        ]
    lines.append(f"peak RSS {report['peak_rss_bytes'] / 2**20:.0f} MiB")
    return "\n".join(lines)
