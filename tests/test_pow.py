"""Header proof-of-work verification: every check, in order, with its typed reason."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

from qoin.chain.block import Header
from qoin.crypto.hashing import HASH_SIZE
from qoin.crypto.hybrid import HybridKeyPair, sign
from qoin.pow.mq import MQParams
from qoin.pow.proof import (
    ALLOWED_NBITS,
    DEFAULT_NBITS,
    CoinbaseMismatch,
    NbitsNotAllowed,
    NonceMismatch,
    ProofSignatureInvalid,
    TargetMismatch,
    TargetNotMet,
    attempt_input,
    make_attempt,
    max_target,
    mine_in_process,
    mq_system,
    nbits_of,
    nonce_of,
    params_of,
    prefix_hash,
    seal,
    unsealed_header,
    verify_header_pow,
)
from tests.keys import keypair_for

EASY = max_target(DEFAULT_NBITS)


def unsealed(keypair: HybridKeyPair, target: int = EASY, nbits: int = DEFAULT_NBITS) -> Header:
    return unsealed_header(
        keypair.public,
        target=target,
        nbits=nbits,
        chain_id=1337,
        parent_hash=b"\x11" * HASH_SIZE,
        timestamp_ms=1_700_000_000_000,
    )


@pytest.fixture(scope="module")
def sealed() -> Header:
    # target = max/4: a real search (a few attempts), not a formality
    header = mine_in_process(keypair_for(), unsealed(keypair_for(), target=EASY >> 2), 500)
    assert header is not None
    return header


def test_valid_header_passes(sealed: Header) -> None:
    verify_header_pow(sealed, sealed.target)
    assert Header.decode(sealed.encode()) == sealed


def test_nbits_checked_first(sealed: Header) -> None:
    # Not allowed nbits fails before anything else, even with every other field wrong too.
    bad = replace(sealed, nbits=(64 << 8) | 32, target=0, pow_nonce=bytes(32))
    with pytest.raises(NbitsNotAllowed, match="not allowed"):
        verify_header_pow(bad, sealed.target)


def test_target_checked_second(sealed: Header) -> None:
    with pytest.raises(TargetMismatch):
        verify_header_pow(sealed, sealed.target - 1)


def test_proof_signature_checked_third(sealed: Header) -> None:
    parts = list(sealed.pow_proof.parts)
    parts[1] = bytes(len(parts[1]))
    forged = replace(sealed, pow_proof=replace(sealed.pow_proof, parts=tuple(parts)))
    with pytest.raises(ProofSignatureInvalid, match="component 1"):
        verify_header_pow(forged, sealed.target)


def test_proof_bound_to_header(sealed: Header) -> None:
    # The same proof under a header with another timestamp (another prefix) does not verify.
    moved = replace(sealed, timestamp_ms=sealed.timestamp_ms + 1)
    with pytest.raises(ProofSignatureInvalid):
        verify_header_pow(moved, sealed.target)
    # Nor with another R.
    with pytest.raises(ProofSignatureInvalid):
        verify_header_pow(replace(sealed, pow_r=b"\x01" * 32), sealed.target)


def test_proof_by_another_key_rejected(sealed: Header) -> None:
    other = keypair_for(index=1)
    digest = prefix_hash(sealed.pow_prefix)
    stolen = sign(other, attempt_input(digest, sealed.pow_r))
    with pytest.raises(ProofSignatureInvalid):
        verify_header_pow(
            replace(sealed, pow_proof=stolen, pow_nonce=nonce_of(stolen)), sealed.target
        )


def test_nonce_checked_fourth(sealed: Header) -> None:
    with pytest.raises(NonceMismatch):
        verify_header_pow(replace(sealed, pow_nonce=b"\x00" * 32), sealed.target)


def test_target_checked_fifth() -> None:
    # Target = half the output range: about every second attempt loses. Seal a losing one.
    keypair = keypair_for()
    header = unsealed(keypair, target=EASY >> 1)
    digest = prefix_hash(header.pow_prefix)
    system = mq_system(header.nbits, digest)
    for _ in range(64):  # P(no losing attempt in 64) = 2^-64
        attempt = make_attempt(keypair, system, digest, os.urandom(32))
        if attempt.output > header.target:
            break
    losing = seal(header, attempt)
    with pytest.raises(TargetNotMet, match="above the target"):
        verify_header_pow(losing, losing.target)


def test_coinbase_checked_last() -> None:
    keypair, thief = keypair_for(), keypair_for(index=1)
    header = mine_in_process(keypair, replace(unsealed(keypair), coinbase=thief.address), 1)
    assert header is not None
    with pytest.raises(CoinbaseMismatch, match="not the miner key's address"):
        verify_header_pow(header, header.target)


def test_nbits_encoding() -> None:
    for nbits in ALLOWED_NBITS:
        assert nbits_of(params_of(nbits)) == nbits
    assert params_of(DEFAULT_NBITS) == MQParams(n=64, m=64)
    with pytest.raises(NbitsNotAllowed):
        params_of(0)
