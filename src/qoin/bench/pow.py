"""``qoin bench pow``: header PoW verification, MQ evaluators, and mining against raw signing.

Figures (one JSON document):

* ``header_verify``: full header PoW checks per second on one core for each allowed ``nbits`` — MQ
  coefficients expanded anew for every header (the cache is cleared), both signature verifies, hashes
  and the MQ evaluation. Goal >= 1,000/s at the default ``nbits``.
* ``mq``: evaluations per second of the plain-Python reference and the vectorised evaluator.
* ``mining``: attempts per second in one process and with the multi-process miner on every core,
  next to the raw hybrid-sign rate (the libraries called directly) measured in the same run; signing
  dominates an attempt, so the per-core ratio should be >= 0.8.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from functools import partial
from typing import Any

from qoin.bench.crypto import raw_component
from qoin.bench.timing import best_rates, machine_info, rate
from qoin.chain.block import Header
from qoin.crypto.hashing import HASH_SIZE
from qoin.crypto.hybrid import HybridKeyPair, generate_keypair, signing_message
from qoin.pow.miner import Miner, Template
from qoin.pow.mq import evaluate, evaluate_reference, expand_coefficients, x_from_nonce
from qoin.pow.proof import (
    ALLOWED_NBITS,
    DEFAULT_NBITS,
    make_attempt,
    max_target,
    mine_in_process,
    mq_system,
    params_of,
    prefix_hash,
    unsealed_header,
    verify_header_pow,
)


def sample_header(keypair: HybridKeyPair, nbits: int, target: int) -> Header:
    """An unsealed header with realistic (random) roots and parent."""
    header = unsealed_header(
        keypair.public,
        target=target,
        nbits=nbits,
        parent_hash=os.urandom(HASH_SIZE),
        timestamp_ms=int(time.time() * 1000),
    )
    return replace(
        header,
        transactions_root=os.urandom(HASH_SIZE),
        siblings_root=os.urandom(HASH_SIZE),
        state_root=os.urandom(HASH_SIZE),
        receipts_root=os.urandom(HASH_SIZE),
    )


def _verify_cold(header: Header) -> None:
    mq_system.cache_clear()  # a cold header: its coefficients are expanded on every check
    verify_header_pow(header, header.target)


def bench_header_verify(keypair: HybridKeyPair, seconds: float) -> dict[str, float]:
    """Full header PoW verifications per second, per allowed nbits."""
    out = {}
    for nbits in sorted(ALLOWED_NBITS):
        header = mine_in_process(keypair, sample_header(keypair, nbits, max_target(nbits)), 1)
        if header is None:  # max target: the first attempt always wins
            raise RuntimeError("mining at the maximum target failed")
        out[f"n{nbits >> 8}_m{nbits & 0xFF}"] = rate(partial(_verify_cold, header), seconds)
    return out


def bench_mq(seconds: float) -> dict[str, dict[str, float]]:
    """Reference vs vectorised MQ evaluations per second, per allowed nbits."""
    out = {}
    for nbits in sorted(ALLOWED_NBITS):
        params = params_of(nbits)
        system = expand_coefficients(params, os.urandom(32))
        x = x_from_nonce(params, os.urandom(32))
        rates = best_rates(
            {
                "reference": partial(evaluate_reference, system, x),
                "vectorised": partial(evaluate, system, x),
            },
            seconds,
        )
        seed = os.urandom(32)
        expand = rate(partial(expand_coefficients, params, seed), seconds / 3)
        out[f"n{nbits >> 8}_m{nbits & 0xFF}"] = {
            **rates,
            "speedup": rates["vectorised"] / rates["reference"],
            "expand_per_s": expand,
        }
    return out


def bench_mining(keypair: HybridKeyPair, seconds: float, workers: int | None) -> dict[str, Any]:
    """Attempts/s in-process and multi-process, against the raw hybrid-sign rate."""
    header = sample_header(keypair, DEFAULT_NBITS, 0)  # target 0: attempts (almost) never win
    digest = prefix_hash(header.pow_prefix)
    system = mq_system(header.nbits, digest)
    bound = signing_message(keypair.public, os.urandom(32))
    raw = [
        raw_component(c.name, pk, sk, bound)
        for c, pk, sk in zip(
            keypair.suite.components, keypair.public.keys, keypair.secrets, strict=True
        )
    ]

    def raw_sign() -> None:
        for sign_fn, _ in raw:
            sign_fn()

    single = best_rates(
        {
            "raw_sign": raw_sign,
            "attempt": lambda: make_attempt(keypair, system, digest, os.urandom(32)),
        },
        seconds,
    )
    with Miner(keypair, workers) as miner:
        miner.set_template(Template(1, header.pow_prefix, header.nbits, header.target))
        deadline = time.monotonic() + 30
        while miner.attempts < 2 * miner.workers and time.monotonic() < deadline:
            time.sleep(0.05)  # wait for the spawned workers to import and start attempting
        miner.attempts_per_second()
        time.sleep(seconds)
        multi = miner.attempts_per_second()
        count = miner.workers
    return {
        "suite": keypair.suite.name,
        "raw_hybrid_sign_per_s_one_core": single["raw_sign"],
        "attempts_per_s_one_core": single["attempt"],
        "ratio_one_core": single["attempt"] / single["raw_sign"],
        "miner_workers": count,
        "miner_attempts_per_s": multi,
        "miner_attempts_per_s_per_core": multi / count,
        "ratio_per_core_multiprocess": multi / count / single["raw_sign"],
    }


def run(seconds: float = 2.0, workers: int | None = None) -> dict[str, Any]:
    """The whole PoW benchmark as one JSON-ready object."""
    keypair = generate_keypair()
    header_verify = bench_header_verify(keypair, seconds)
    default_key = f"n{DEFAULT_NBITS >> 8}_m{DEFAULT_NBITS & 0xFF}"
    return {
        "benchmark": "pow",
        "machine": machine_info(),
        "default_nbits": {"n": DEFAULT_NBITS >> 8, "m": DEFAULT_NBITS & 0xFF},
        "header_verify_per_s_one_core": header_verify,
        "header_verify_per_s_default": header_verify[default_key],
        "mq_evaluations_per_s": bench_mq(seconds),
        "mining": bench_mining(keypair, seconds, workers),
        "goals": {
            "header_verify_per_s_default": 1000,
            "mining_ratio_per_core": 0.8,
        },
    }
