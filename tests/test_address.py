"""Addresses: SHA3-256(suite id ‖ public keys); bech32m text form with hrp ``qoin``."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qoin.crypto import bech32m
from qoin.crypto.address import Address, AddressError
from qoin.crypto.hybrid import HybridKeyPair
from qoin.crypto.suites import SUITES

# Valid bech32m strings from BIP-350's test vectors.
BIP350_VALID = [
    "A1LQFN3A",
    "a1lqfn3a",
    "an83characterlonghumanreadablepartthatcontainsthetheexcludedcharactersbioandnumber11sg7hg6",
    "abcdef1l7aum6echk45nj3s0wdvt2fg8x9yrzpqzd3ryx",
    "split1checkupstagehandshakeupstreamerranterredcaperredlc445v",
    "?1v759aa",
]


@pytest.mark.parametrize("text", BIP350_VALID)
def test_bip350_vectors(text: str) -> None:
    hrp, _ = bech32m.decode_raw(text)
    assert hrp == text.lower()[: text.rfind("1")]


def test_address_is_sha3_of_suite_and_keys(alice: HybridKeyPair) -> None:
    expected = hashlib.sha3_256(
        alice.suite.suite_id.to_bytes(2, "big") + b"".join(alice.public.keys)
    ).digest()
    assert alice.address.raw == expected
    assert len(alice.address.raw) == 32


@given(st.binary(min_size=32, max_size=32))
def test_text_roundtrip(raw: bytes) -> None:
    text = str(Address(raw))
    assert text.startswith("qoin1")
    assert Address.from_text(text) == Address(raw)
    assert Address.from_text(text.upper()) == Address(raw)


def test_invalid_checksum_rejected(alice: HybridKeyPair) -> None:
    text = str(alice.address)
    last = "q" if text[-1] != "q" else "p"
    with pytest.raises(AddressError, match="checksum"):
        Address.from_text(text[:-1] + last)


def test_wrong_hrp_rejected() -> None:
    text = bech32m.encode("btc", bytes(32))
    with pytest.raises(AddressError, match="wrong prefix 'btc'"):
        Address.from_text(text)


@pytest.mark.parametrize("size", [0, 20, 31, 33])
def test_wrong_length_rejected(size: int) -> None:
    with pytest.raises(AddressError, match="expected 32"):
        Address.from_text(bech32m.encode("qoin", bytes(size)))
    with pytest.raises(AddressError):
        Address(bytes(size))


def test_mixed_case_rejected(alice: HybridKeyPair) -> None:
    text = str(alice.address)
    mixed = text[:10] + text[10:].upper()
    with pytest.raises(AddressError, match="mixed"):
        Address.from_text(mixed)


@pytest.mark.parametrize("text", ["", "qoin", "qoin1", "qoin1bbbbbb", "qoin1" + "q" * 90])
def test_garbage_rejected(text: str) -> None:
    with pytest.raises(AddressError):
        Address.from_text(text)


def test_suites_give_different_addresses_for_same_keys() -> None:
    # The suite id is hashed in: re-labelling keys under another suite gives another account.
    ids = {suite.suite_id for suite in SUITES}
    assert len(ids) == len(SUITES)
