"""Hybrid signatures: every component must verify, over a message bound to suite and keys."""

from __future__ import annotations

import pytest

from qoin.crypto.hybrid import (
    AddressMismatch,
    ComponentInvalid,
    HybridKeyPair,
    HybridPublicKey,
    HybridSignature,
    SuiteMismatch,
    sign,
    signing_message,
    verify,
    verify_for_address,
)
from qoin.crypto.suites import (
    FALCON512_MLDSA44,
    FALCON512_MLDSA44_SLHDSA,
    FALCON1024_MLDSA87,
    Suite,
    UnknownSuite,
    suite_by_id,
    suite_by_name,
)
from qoin.encoding.codec import DecodeError, TrailingBytes, TruncatedInput, UnknownVersion
from tests.keys import keypair_for

MESSAGE = b"pay bob 5 shor"


def test_sign_verify_every_suite(any_suite: Suite) -> None:
    keypair = keypair_for(any_suite)
    signature = sign(keypair, MESSAGE)
    assert len(signature.encode()) == 2 + any_suite.signature_size
    verify(keypair.public, MESSAGE, signature)
    assert HybridSignature.decode(signature.encode()) == signature
    assert HybridPublicKey.decode(keypair.public.encode()) == keypair.public
    with pytest.raises(ComponentInvalid):
        verify(keypair.public, MESSAGE + b"!", signature)


def test_default_suite_and_names() -> None:
    assert suite_by_name("falcon512+mldsa44") is FALCON512_MLDSA44
    assert suite_by_id(0x0002) is FALCON1024_MLDSA87
    with pytest.raises(UnknownSuite, match="known suites"):
        suite_by_name("rsa2048")


@pytest.mark.parametrize("component", [0, 1])
def test_tampered_component_rejected(alice: HybridKeyPair, component: int) -> None:
    signature = sign(alice, MESSAGE)
    parts = list(signature.parts)
    flipped = bytearray(parts[component])
    flipped[len(flipped) // 3] ^= 0x01
    parts[component] = bytes(flipped)
    with pytest.raises(ComponentInvalid, match=f"component {component}"):
        verify(alice.public, MESSAGE, HybridSignature(signature.suite, tuple(parts)))


@pytest.mark.parametrize("component", [0, 1])
def test_component_from_another_keys_signature_rejected(
    alice: HybridKeyPair, bob: HybridKeyPair, component: int
) -> None:
    # Even when Bob signs the very same message, his components signed *his* address.
    mine, theirs = sign(alice, MESSAGE), sign(bob, MESSAGE)
    parts = list(mine.parts)
    parts[component] = theirs.parts[component]
    with pytest.raises(ComponentInvalid):
        verify(alice.public, MESSAGE, HybridSignature(mine.suite, tuple(parts)))


def test_component_signed_raw_message_rejected(alice: HybridKeyPair) -> None:
    # A component that signed the bare message (no domain, suite or address binding) is refused.
    falcon = alice.suite.components[0]
    signature = sign(alice, MESSAGE)
    bare = falcon.sign(alice.secrets[0], MESSAGE)
    forged = HybridSignature(alice.suite, (bare, signature.parts[1]))
    with pytest.raises(ComponentInvalid, match="component 0"):
        verify(alice.public, MESSAGE, forged)


def test_dropped_component_rejected() -> None:
    # A three-component signature with the SLH-DSA part cut off, presented as the two-component
    # suite: the encoding no longer decodes under the three-component suite, and re-labelled as
    # falcon512+mldsa44 it fails because every component signed suite id 0x0101.
    keypair = keypair_for(FALCON512_MLDSA44_SLHDSA)
    signature = sign(keypair, MESSAGE)
    truncated = signature.encode()[: 2 + FALCON512_MLDSA44.signature_size]
    with pytest.raises(TruncatedInput):
        HybridSignature.decode(truncated)
    relabelled = HybridSignature(FALCON512_MLDSA44, signature.parts[:2])
    two_component_key = HybridPublicKey(FALCON512_MLDSA44, keypair.public.keys[:2])
    with pytest.raises(ComponentInvalid):
        verify(two_component_key, MESSAGE, relabelled)
    with pytest.raises(SuiteMismatch):
        verify(keypair.public, MESSAGE, relabelled)


def test_signature_under_another_suite_rejected(alice: HybridKeyPair) -> None:
    signature = sign(alice, MESSAGE)
    raw = bytearray(signature.encode())
    raw[0:2] = FALCON1024_MLDSA87.suite_id.to_bytes(2, "big")
    # Claimed as falcon1024+mldsa87 the sizes no longer add up ...
    with pytest.raises(DecodeError):
        HybridSignature.decode(bytes(raw))
    # ... and a genuine signature of another suite is refused for this key.
    other = sign(keypair_for(FALCON1024_MLDSA87), MESSAGE)
    with pytest.raises(SuiteMismatch):
        verify(alice.public, MESSAGE, other)


def test_unknown_suite_id_rejected(alice: HybridKeyPair) -> None:
    raw = bytearray(sign(alice, MESSAGE).encode())
    raw[0:2] = b"\x7f\x7f"
    with pytest.raises(UnknownVersion):
        HybridSignature.decode(bytes(raw))


def test_truncated_and_overlong_input_rejected(alice: HybridKeyPair) -> None:
    encoded = sign(alice, MESSAGE).encode()
    for cut in (0, 1, 2, 500, len(encoded) - 1):
        with pytest.raises(TruncatedInput):
            HybridSignature.decode(encoded[:cut])
    with pytest.raises(TrailingBytes):
        HybridSignature.decode(encoded + b"\x00")
    key = alice.public.encode()
    with pytest.raises(TruncatedInput):
        HybridPublicKey.decode(key[:-1])
    with pytest.raises(TrailingBytes):
        HybridPublicKey.decode(key + b"\x00")


def test_public_key_not_matching_address_rejected(alice: HybridKeyPair, bob: HybridKeyPair) -> None:
    signature = sign(bob, MESSAGE)
    with pytest.raises(AddressMismatch):
        verify_for_address(alice.address, bob.public, MESSAGE, signature)
    verify_for_address(bob.address, bob.public, MESSAGE, signature)


def test_signing_message_binds_suite_and_address(alice: HybridKeyPair, bob: HybridKeyPair) -> None:
    bound = signing_message(alice.public, MESSAGE)
    assert alice.address.raw in bound
    assert bound.endswith(MESSAGE)
    assert bound != signing_message(bob.public, MESSAGE)


def test_keypair_repr_hides_secrets(alice: HybridKeyPair) -> None:
    text = repr(alice)
    assert str(alice.address) in text
    assert alice.secrets[0].hex()[:16] not in text
