"""Hypothesis strategies for consensus objects (with structurally valid, unsigned signatures)."""

from __future__ import annotations

import hashlib

from hypothesis import strategies as st

from qoin.chain.block import MAX_PAYOUTS, MAX_SIBLINGS, Block, Coinbase, Header, Payout
from qoin.chain.transaction import MAX_PAYLOAD_SIZE, Transaction
from qoin.crypto.address import Address
from qoin.crypto.hybrid import HybridPublicKey, HybridSignature
from qoin.crypto.suites import SUITES, Suite

U64 = st.integers(min_value=0, max_value=2**64 - 1)
HASHES = st.binary(min_size=32, max_size=32)
addresses = HASHES.map(Address)
suites = st.sampled_from(SUITES)


def sized_bytes(size: int) -> st.SearchStrategy[bytes]:
    """``size`` pseudo-random bytes grown from a small drawn seed (keeps examples small)."""
    return st.binary(min_size=1, max_size=8).map(lambda seed: hashlib.shake_256(seed).digest(size))


@st.composite
def public_keys(draw: st.DrawFn, suite: Suite | None = None) -> HybridPublicKey:
    chosen = suite or draw(suites)
    keys = tuple(draw(sized_bytes(c.public_key_size)) for c in chosen.components)
    return HybridPublicKey(chosen, keys)


@st.composite
def signatures(draw: st.DrawFn, suite: Suite | None = None) -> HybridSignature:
    chosen = suite or draw(suites)
    parts = tuple(draw(sized_bytes(c.signature_size)) for c in chosen.components)
    return HybridSignature(chosen, parts)


transactions = st.builds(
    Transaction,
    chain_id=U64,
    sender=addresses,
    nonce=U64,
    recipient=addresses,
    amount=U64,
    fee=U64,
    payload=st.binary(max_size=MAX_PAYLOAD_SIZE // 8),
    public_keys=st.none() | public_keys(),
    signature=signatures(),
)

headers = st.builds(
    Header,
    chain_id=U64,
    height=U64,
    parent_hash=HASHES,
    timestamp_ms=U64,
    nbits=st.integers(min_value=0, max_value=0xFFFF),
    target=st.integers(min_value=0, max_value=2**256 - 1),
    transactions_root=HASHES,
    siblings_root=HASHES,
    state_root=HASHES,
    receipts_root=HASHES,
    coinbase=addresses,
    miner=public_keys(),
    pow_r=HASHES,
    pow_nonce=HASHES,
    pow_proof=signatures(),
)

coinbases = st.lists(st.builds(Payout, addresses, U64), max_size=MAX_PAYOUTS).map(
    lambda payouts: Coinbase(tuple(payouts))
)

blocks = st.builds(
    Block,
    header=headers,
    siblings=st.lists(headers, max_size=MAX_SIBLINGS).map(tuple),
    coinbase=coinbases,
    transactions=st.lists(transactions, max_size=3).map(tuple),
)
