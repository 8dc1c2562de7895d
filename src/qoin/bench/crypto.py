"""``qoin bench crypto``: hybrid signing and verification through Qoin's API and the raw libraries.

For each suite the same message is signed and verified (a) through :mod:`qoin.crypto.hybrid`, which
builds the domain-separated message, encodes and checks sizes, and (b) by calling the library
functions directly on a precomputed message. Their ratio is Qoin's overhead (goal >= 0.9). Then the
default suite's verification is run on one thread and on every core (goal >= 1.8x on 2 cores).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.asymmetric import mldsa
from pqcrypto.sign import falcon_padded_512, falcon_padded_1024, sphincs_sha2_128s_simple

from qoin.bench.timing import best_rates, machine_info
from qoin.crypto.batch import default_workers, verify_many
from qoin.crypto.hybrid import generate_keypair, is_valid, sign, signing_message
from qoin.crypto.suites import DEFAULT_SUITE, SUITES, Suite

SignFn = Callable[[], object]
_MESSAGE = bytes(range(32))


def raw_component(name: str, pk: bytes, sk: bytes, msg: bytes) -> tuple[SignFn, SignFn]:
    """(sign, verify) closures calling the library directly for one component."""
    if name.startswith("mldsa"):
        private = (
            mldsa.MLDSA44PrivateKey if name == "mldsa44" else mldsa.MLDSA87PrivateKey
        ).from_seed_bytes(sk)
        public = private.public_key()
        sig = private.sign(msg)
        return (lambda: private.sign(msg)), (lambda: public.verify(sig, msg))
    module: Any = {
        "falcon512": falcon_padded_512,
        "falcon1024": falcon_padded_1024,
        "slhdsa-sha2-128s": sphincs_sha2_128s_simple,
    }[name]
    fsig = module.sign(sk, msg)
    return (lambda: module.sign(sk, msg)), (lambda: module.verify(pk, msg, fsig))


def bench_suite(suite: Suite, seconds: float) -> dict[str, Any]:
    """Sign/s and verify/s of one suite, through Qoin and raw."""
    keypair = generate_keypair(suite)
    bound = signing_message(keypair.public, _MESSAGE)
    raw = [
        raw_component(c.name, pk, sk, bound)
        for c, pk, sk in zip(suite.components, keypair.public.keys, keypair.secrets, strict=True)
    ]
    signature = sign(keypair, _MESSAGE)

    def raw_sign() -> None:
        for sign_fn, _ in raw:
            sign_fn()

    def raw_verify() -> None:
        for _, verify_fn in raw:
            verify_fn()

    signs = best_rates({"qoin": lambda: sign(keypair, _MESSAGE), "raw": raw_sign}, seconds)
    verifies = best_rates(
        {"qoin": lambda: is_valid(keypair.public, _MESSAGE, signature), "raw": raw_verify},
        seconds,
    )
    return {
        "suite": suite.name,
        "signature_bytes": suite.signature_size,
        "public_key_bytes": suite.public_key_size,
        "sign_per_s": {**signs, "ratio": signs["qoin"] / signs["raw"]},
        "verify_per_s": {**verifies, "ratio": verifies["qoin"] / verifies["raw"]},
    }


def bench_parallel_verify(suite: Suite, seconds: float) -> dict[str, Any]:
    """Hybrid verify/s on one thread versus one thread per core."""
    keypair = generate_keypair(suite)
    signature = sign(keypair, _MESSAGE)
    workers = default_workers()
    items = [(keypair.public, _MESSAGE, signature)] * 2000
    rates = best_rates(
        {
            "one_core": lambda: verify_many(items, workers=1),
            "all_cores": lambda: verify_many(items, workers=workers),
        },
        seconds,
    )
    one, every = rates["one_core"] * len(items), rates["all_cores"] * len(items)
    return {
        "suite": suite.name,
        "workers": workers,
        "one_core_verify_per_s": one,
        "all_cores_verify_per_s": every,
        "speedup": every / one,
    }


def run(seconds: float = 1.5, suites: tuple[Suite, ...] = SUITES) -> dict[str, Any]:
    """The whole crypto benchmark as one JSON-ready object."""
    return {
        "benchmark": "crypto",
        "machine": machine_info(),
        "suites": [bench_suite(suite, seconds) for suite in suites],
        "parallel_verify": bench_parallel_verify(DEFAULT_SUITE, seconds * 2),
        "goals": {"qoin_vs_raw_ratio": 0.9, "parallel_speedup_on_2_cores": 1.8},
    }
