"""PQC proof-of-work: header-bound signature attempts through an MQ hash (docs/spec/pow.md).

One attempt, for a header whose PoW prefix is ``prefix``::

    prefix_hash = tagged_hash("QOIN/pow/prefix/v1", prefix)
    system      = MQ system of header.nbits with coefficients SHAKE256("QOIN/pow/mq-coefficients/v1"
                  ‖ prefix_hash)                                         (once per template/header)
    R           = 32 fresh random bytes
    input       = tagged_hash("QOIN/pow/attempt/v1", prefix_hash ‖ R)
    proof       = hybrid signature of ``input`` by the miner key named in the header
    nonce       = tagged_hash("QOIN/pow/nonce/v1", proof encoding)
    x           = first n bits of SHAKE256("QOIN/pow/mq-input/v1" ‖ nonce)
    y           = MQ(x), m bits;   the attempt wins when int(y) <= header.target

*On the word "VRF".* The whitepaper calls ``hash(signature)`` a verifiable random function. It is
verifiable (anyone checks the signature with the public key in the header) and pseudorandom (nobody
can predict the nonce before signing), but it is **not unique**: Falcon and ML-DSA signatures are
randomised, so the key holder can produce many valid proofs, hence many nonces, for one input. For
proof-of-work that is exactly what is wanted: every fresh signature is one more attempt, and the cost
of an attempt is the cost of signing. What the construction does guarantee is that only the holder of
the secret key can make attempts for a header that pays that key's address, so a pool operator cannot
farm out the work without handing every worker the private key that receives the reward.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from functools import lru_cache

from qoin.chain.block import Header
from qoin.crypto.hashing import tagged_hash
from qoin.crypto.hybrid import (
    HybridKeyPair,
    HybridPublicKey,
    HybridSignature,
    SignatureError,
    sign,
    verify,
)
from qoin.crypto.suites import Suite
from qoin.errors import QoinError
from qoin.pow.mq import (
    MQError,
    MQParams,
    MQSystem,
    evaluate,
    expand_coefficients,
    output_int,
    x_from_nonce,
)

TAG_POW_PREFIX = b"QOIN/pow/prefix/v1"
TAG_POW_ATTEMPT = b"QOIN/pow/attempt/v1"
TAG_POW_NONCE = b"QOIN/pow/nonce/v1"

DEFAULT_NBITS = (64 << 8) | 64
"""n = 64 variables, m = 64 equations (see docs/spec/pow.md for why)."""
ALLOWED_NBITS = frozenset({(64 << 8) | 64, (96 << 8) | 64, (128 << 8) | 64, (128 << 8) | 128})
"""The (n, m) pairs consensus allows, as ``n << 8 | m``."""


class PowError(QoinError):
    """A header's proof-of-work is invalid; subclasses name the failed check."""


class NbitsNotAllowed(PowError):
    """``nbits`` names MQ parameters consensus does not allow."""


class TargetMismatch(PowError):
    """The header's target is not the one the difficulty rule gives."""


class ProofSignatureInvalid(PowError):
    """The proof is not a valid hybrid signature of the attempt input by the header's miner key."""


class NonceMismatch(PowError):
    """The header's nonce is not the hash of its proof."""


class TargetNotMet(PowError):
    """The MQ output of the nonce is above the target."""


class CoinbaseMismatch(PowError):
    """The coinbase does not pay the address of the key that did the work."""


def nbits_of(params: MQParams) -> int:
    """Encode MQ parameters as the header's ``nbits``."""
    return (params.n << 8) | params.m


def params_of(nbits: int) -> MQParams:
    """Decode ``nbits`` into MQ parameters, refusing values consensus does not allow."""
    if nbits not in ALLOWED_NBITS:
        allowed = ", ".join(f"(n={v >> 8}, m={v & 0xFF})" for v in sorted(ALLOWED_NBITS))
        raise NbitsNotAllowed(
            f"nbits 0x{nbits:04x} (n={nbits >> 8}, m={nbits & 0xFF}) is not allowed; "
            f"allowed: {allowed}"
        )
    return MQParams(n=nbits >> 8, m=nbits & 0xFF)


def max_target(nbits: int) -> int:
    """The easiest target for these parameters: every MQ output meets it."""
    return (1 << params_of(nbits).m) - 1


def prefix_hash(prefix: bytes) -> bytes:
    """Hash of the header's PoW prefix; seeds the MQ system and every attempt input."""
    return tagged_hash(TAG_POW_PREFIX, prefix)


def attempt_input(prefix_digest: bytes, r: bytes) -> bytes:
    """What the miner signs for the attempt with random ``r``."""
    return tagged_hash(TAG_POW_ATTEMPT, prefix_digest, r)


def nonce_of(proof: HybridSignature) -> bytes:
    """The nonce of a proof: the hash of its encoding."""
    return tagged_hash(TAG_POW_NONCE, proof.encode())


@lru_cache(maxsize=64)
def mq_system(nbits: int, prefix_digest: bytes) -> MQSystem:
    """The MQ system of a header (cached: a miner and a verifier reuse it for one template)."""
    return expand_coefficients(params_of(nbits), prefix_digest)


def pow_output(system: MQSystem, nonce: bytes) -> int:
    """``int(MQ(x))`` for the nonce's input bits ``x``."""
    return output_int(evaluate(system, x_from_nonce(system.params, nonce)))


@dataclass(frozen=True)
class Attempt:
    """One mining attempt's result."""

    r: bytes
    """The random R signed."""
    proof: HybridSignature
    """The miner's signature of the attempt input."""
    nonce: bytes
    """Hash of the proof."""
    output: int
    """MQ output as an integer; the attempt wins when it is <= the target."""


def make_attempt(
    keypair: HybridKeyPair, system: MQSystem, prefix_digest: bytes, r: bytes
) -> Attempt:
    """Run one attempt with random ``r`` (the caller draws it from a CSPRNG)."""
    proof = sign(keypair, attempt_input(prefix_digest, r))
    nonce = nonce_of(proof)
    return Attempt(r, proof, nonce, pow_output(system, nonce))


def placeholder_proof(suite: Suite) -> HybridSignature:
    """An all-zero proof of the right size, for a header that is not sealed yet."""
    return HybridSignature(suite, tuple(bytes(c.signature_size) for c in suite.components))


def unsealed_header(
    miner: HybridPublicKey,
    *,
    target: int,
    nbits: int = DEFAULT_NBITS,
    chain_id: int = 1,
    height: int = 1,
    parent_hash: bytes = bytes(32),
    timestamp_ms: int = 0,
) -> Header:
    """A header paying ``miner``'s address with empty roots and a placeholder proof: what mining
    starts from in tests, benchmarks and tools (nodes build templates with ``chain.producer``)."""
    zero = bytes(32)
    return Header(
        chain_id=chain_id,
        height=height,
        parent_hash=parent_hash,
        timestamp_ms=timestamp_ms,
        nbits=nbits,
        target=target,
        transactions_root=zero,
        siblings_root=zero,
        state_root=zero,
        receipts_root=zero,
        coinbase=miner.address,
        miner=miner,
        pow_r=zero,
        pow_nonce=zero,
        pow_proof=placeholder_proof(miner.suite),
    )


def seal(header: Header, attempt: Attempt) -> Header:
    """``header`` with the PoW fields of a winning attempt filled in (the prefix is unchanged)."""
    return replace(header, pow_r=attempt.r, pow_nonce=attempt.nonce, pow_proof=attempt.proof)


def mine_in_process(keypair: HybridKeyPair, header: Header, max_attempts: int) -> Header | None:
    """Mine ``header`` on the calling thread; ``None`` if no attempt of ``max_attempts`` wins.

    For tests, benchmarks and single-core tools; nodes use :class:`qoin.pow.miner.Miner`.
    """
    digest = prefix_hash(header.pow_prefix)
    system = mq_system(header.nbits, digest)
    for _ in range(max_attempts):
        attempt = make_attempt(keypair, system, digest, os.urandom(32))
        if attempt.output <= header.target:
            return seal(header, attempt)
    return None


def verify_header_pow(header: Header, expected_target: int) -> None:
    """Check a header's proof-of-work, in the order of docs/spec/pow.md, raising a :class:`PowError`.

    ``expected_target`` is what the difficulty rule gives for this header's parent.
    """
    # 1. The MQ parameters are ones consensus allows.
    params_of(header.nbits)
    # 2. The target is the one the difficulty rule gives.
    if header.target != expected_target:
        raise TargetMismatch(
            f"header target {header.target:#x} differs from the difficulty rule's "
            f"{expected_target:#x}"
        )
    # 3. The proof is the miner key's signature of this header's attempt input with R.
    digest = prefix_hash(header.pow_prefix)
    try:
        verify(header.miner, attempt_input(digest, header.pow_r), header.pow_proof)
    except SignatureError as exc:
        raise ProofSignatureInvalid(f"proof-of-work signature invalid: {exc}") from None
    # 4. The nonce is the hash of the proof.
    if header.pow_nonce != nonce_of(header.pow_proof):
        raise NonceMismatch("header nonce is not the hash of its proof")
    # 5. The MQ output of the nonce meets the target.
    try:
        output = pow_output(mq_system(header.nbits, digest), header.pow_nonce)
    except MQError as exc:  # cannot happen for allowed nbits; kept typed all the same
        raise NbitsNotAllowed(str(exc)) from None
    if output > header.target:
        raise TargetNotMet(f"MQ output {output:#x} is above the target {header.target:#x}")
    # 6. The coinbase pays the key that did the work.
    if header.coinbase != header.miner.address:
        raise CoinbaseMismatch(
            f"coinbase {header.coinbase} is not the miner key's address {header.miner.address}"
        )
