"""Account state sampling (docs/spec/sampling.md), on real blocks, trees and proofs.

* ``replay_account`` agrees with ``execute_block`` account by account, on random blocks;
* ``check_sample`` confirms an honest block and names each kind of lie;
* the detection rate measured over seeded trials matches the exact hypergeometric probability
  (set ``QOIN_SAMPLING_SEED`` to replay a run: the seed is printed).
"""

from __future__ import annotations

import itertools
import math
import os
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from qoin.chain.block import Block, Coinbase, Payout
from qoin.chain.transaction import Transaction, sign_transfer
from qoin.consensus.sampling import (
    AccountProofs,
    BadSampleProof,
    SampleFailed,
    SampleMismatch,
    SampleRuleBroken,
    check_fee_payout,
    check_sample,
    detection_probability,
    draw_sample,
    replay_account,
)
from qoin.crypto.address import Address
from qoin.crypto.hashing import tagged_hash
from qoin.crypto.hybrid import HybridKeyPair
from qoin.errors import QoinError
from qoin.execution.account import (
    EMPTY_ACCOUNT,
    Account,
    AccountLeaf,
    account_writes,
    keys_key,
    state_key,
)
from qoin.execution.transition import (
    MAX_BALANCE,
    BadFeePayout,
    BadNonce,
    BadSignature,
    BalanceOverflow,
    InsufficientBalance,
    InvalidExecution,
    KeysMismatch,
    MissingPublicKey,
    execute_block,
    touched_addresses,
)
from qoin.execution.witness import execute_on_tree
from qoin.state.nodestore import MemoryNodeStore
from qoin.state.smt import Proof, SparseMerkleTree
from tests.chainutil import test_genesis
from tests.keys import keypair_for

GENESIS = test_genesis()
CHAIN = GENESIS.chain_id
FEE = 1
REWARD = 77

State = Mapping[Address, Account]


def fresh(index: int) -> Address:
    """An address nobody holds keys for (a recipient that is new to the state)."""
    return Address(tagged_hash(b"QOIN/test/fresh", index.to_bytes(4, "big")))


_SIGNED: dict[tuple[bytes, int, bytes, int, bool], Transaction] = {}


def signed(
    sender: HybridKeyPair, nonce: int, to: Address, amount: int, reveal: bool
) -> Transaction:
    """Transfers are cached by content: signing costs milliseconds."""
    key = (sender.address.raw, nonce, to.raw, amount, reveal)
    if key not in _SIGNED:
        _SIGNED[key] = sign_transfer(
            sender,
            chain_id=CHAIN,
            nonce=nonce,
            recipient=to,
            amount=amount,
            fee=FEE,
            reveal_keys=reveal,
        )
    return _SIGNED[key]


def make_block(
    txs: Sequence[Transaction],
    miner: Address,
    state_root: bytes = bytes(32),
    fees: int | None = None,
) -> Block:
    """A block paying ``miner`` a reward and the fees (or ``fees``), claiming ``state_root``."""
    paid = sum(tx.fee for tx in txs) if fees is None else fees
    header = replace(GENESIS.header, state_root=state_root)
    return Block(header, (), Coinbase((Payout(miner, REWARD), Payout(miner, paid))), tuple(txs))


def with_root(block: Block, state_root: bytes) -> Block:
    return replace(block, header=replace(block.header, state_root=state_root))


def parent_tree(pre: State) -> SparseMerkleTree:
    """A tree holding ``pre`` and 64 unrelated accounts at random-looking keys, so that every
    proof has some depth (about 6)."""
    tree = SparseMerkleTree(MemoryNodeStore())
    changes = {
        tagged_hash(b"QOIN/test/filler", bytes([i])): AccountLeaf(i).encode() for i in range(64)
    }
    for address, account in pre.items():
        changes.update(account_writes(address, EMPTY_ACCOUNT, account))
    tree.update(changes, 1)
    return tree


def committed(pre: State, post: State) -> SparseMerkleTree:
    """What a lying execution client builds: the parent's tree with ``post`` written over it, as
    version 2. Its proofs verify against its root, whatever ``post`` says."""
    tree = parent_tree(pre)
    changes: dict[bytes, bytes] = {}
    for address, account in post.items():
        changes.update(account_writes(address, pre.get(address, EMPTY_ACCOUNT), account))
    tree.update(changes, 2)
    return tree


def proofs_of(
    tree: SparseMerkleTree, parent_root: bytes, addresses: Sequence[Address]
) -> dict[Address, AccountProofs]:
    """Every account's four proofs: pre at ``parent_root``, post at the tree's current root."""
    post_root = tree.root
    return {
        a: AccountProofs(
            pre=tree.prove_at(parent_root, state_key(a)),
            post=tree.prove_at(post_root, state_key(a)),
            pre_keys=tree.prove_at(parent_root, keys_key(a)),
            post_keys=tree.prove_at(post_root, keys_key(a)),
        )
        for a in addresses
    }


def reader(state: State) -> Callable[[Address], Account]:
    return lambda address: state.get(address, EMPTY_ACCOUNT)


def fails(address: Address, pre: State, block: Block) -> bool:
    try:
        replay_account(address, pre.get(address, EMPTY_ACCOUNT), block)
    except SampleRuleBroken:
        return True
    return False


# --- replay_account agrees with execute_block ----------------------------------------------------

SENDERS = [keypair_for(index=i) for i in range(20, 24)]
PEOPLE = [k.address for k in SENDERS] + [fresh(0), fresh(1)]
BALANCES = (0, 30, 1_000, MAX_BALANCE - 20)
AMOUNTS = (0, 10, 25, 600)


@st.composite
def blocks(draw: st.DrawFn) -> tuple[dict[Address, Account], Block]:
    """A pre-state of six accounts (some rich, poor, near the balance bound, revealed or not)
    and a block of up to five transfers among them, now and then breaking a rule."""
    pre: dict[Address, Account] = {}
    for index, address in enumerate(PEOPLE):
        if draw(st.booleans()):
            known = index < len(SENDERS) and draw(st.booleans())
            keys = SENDERS[index].public if known else None
            pre[address] = Account(draw(st.sampled_from(BALANCES)), draw(st.integers(0, 1)), keys)
    nonces = {k.address: pre.get(k.address, EMPTY_ACCOUNT).nonce for k in SENDERS}
    revealed = {a for a, account in pre.items() if account.public_keys is not None}
    txs = []
    for _ in range(draw(st.integers(0, 5))):
        sender = draw(st.sampled_from(SENDERS))
        # mostly by the rules: the right nonce, keys carried by the first spend
        nonce = nonces[sender.address] + draw(st.sampled_from((0,) * 6 + (1,)))
        reveal = draw(
            st.sampled_from((False,) * 4 + (True,))
            if sender.address in revealed
            else st.sampled_from((True,) * 9 + (False,))
        )
        if reveal:
            revealed.add(sender.address)
        tx = signed(
            sender, nonce, draw(st.sampled_from(PEOPLE)), draw(st.sampled_from(AMOUNTS)), reveal
        )
        tamper = draw(st.sampled_from(("none",) * 18 + ("signature", "keys")))
        if tamper == "signature":  # the body no longer matches the signature
            tx = replace(tx, amount=tx.amount + 1)
        elif tamper == "keys":  # keys of someone else
            other = SENDERS[(SENDERS.index(sender) + 1) % len(SENDERS)]
            tx = replace(tx, public_keys=other.public)
        txs.append(tx)
        nonces[sender.address] += 1
    miner = draw(st.sampled_from(PEOPLE))
    fees = sum(tx.fee for tx in txs) + draw(st.sampled_from((0,) * 9 + (1,)))
    return pre, make_block(txs, miner, fees=fees)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blocks())
def test_replay_matches_execute_block(case: tuple[dict[Address, Account], Block]) -> None:
    pre, block = case
    touched = touched_addresses(block)
    try:
        outcome = execute_block(reader(pre), block, workers=1)
    except BadFeePayout:
        event("BadFeePayout")
        with pytest.raises(SampleRuleBroken, match="fees"):
            check_fee_payout(block)
        return
    except InvalidExecution as exc:
        event(type(exc).__name__)
        # some account's own re-execution breaks the rule (a sender's transaction, or a credit)
        assert any(fails(a, pre, block) for a in touched), exc
        return
    event("valid")
    check_fee_payout(block)
    for address in touched:
        replayed = replay_account(address, pre.get(address, EMPTY_ACCOUNT), block)
        assert replayed == outcome.post_accounts[address]


def rule_cases() -> dict[str, tuple[State, Transaction, type[InvalidExecution], str]]:
    """One transfer breaking each rule a sampled account can break: (pre-state, the transfer,
    what execute_block raises, what the guilty account's replay says)."""
    alice, bob = SENDERS[0], SENDERS[1]
    known = {alice.address: Account(100, 2, alice.public)}
    new = {alice.address: Account(100, 2)}
    ok = signed(alice, 2, bob.address, 10, False)
    return {
        "no keys": (new, ok, MissingPublicKey, "has no revealed keys"),
        "keys of another": (
            new,
            replace(ok, public_keys=bob.public),
            KeysMismatch,
            "keys belong to",
        ),
        "bad signature": (known, replace(ok, amount=11), BadSignature, "bad signature"),
        "nonce reused": (known, signed(alice, 1, bob.address, 10, False), BadNonce, "nonce 1"),
        "nonce skipped": (known, signed(alice, 3, bob.address, 10, False), BadNonce, "nonce 3"),
        "overspend": (
            known,
            signed(alice, 2, bob.address, 100, False),
            InsufficientBalance,
            "has 100 Shor, needs 101",
        ),
        "overflow": (
            {**known, bob.address: Account(MAX_BALANCE - 5)},
            ok,
            BalanceOverflow,
            "overflow",
        ),
    }


@pytest.mark.parametrize("rule", list(rule_cases()))
def test_replay_pins_each_rule_on_the_guilty_account(rule: str) -> None:
    pre, tx, error, reason = rule_cases()[rule]
    block = make_block([tx], MINER)
    with pytest.raises(error):
        execute_block(reader(pre), block)
    guilty = SENDERS[1].address if error is BalanceOverflow else tx.sender
    with pytest.raises(SampleRuleBroken, match=reason):
        replay_account(guilty, pre.get(guilty, EMPTY_ACCOUNT), block)
    for innocent in set(touched_addresses(block)) - {guilty}:
        replay_account(innocent, pre.get(innocent, EMPTY_ACCOUNT), block)


def test_replay_follows_block_order() -> None:
    """A sender may spend what an earlier transaction of the block paid it, not what a later one
    pays it; credits from other senders are taken as the block says."""
    alice, bob = SENDERS[0], SENDERS[1]
    pre = {alice.address: Account(10, 0, alice.public), bob.address: Account(1_000)}
    paid_first = make_block(
        [signed(bob, 0, alice.address, 600, True), signed(alice, 0, fresh(0), 600, False)],
        fresh(1),
    )
    assert replay_account(alice.address, pre[alice.address], paid_first) == Account(
        10 + 600 - 600 - FEE, 1, alice.public
    )
    paid_after = replace(paid_first, transactions=paid_first.transactions[::-1])
    with pytest.raises(SampleRuleBroken, match="has 10 Shor, needs 601"):
        replay_account(alice.address, pre[alice.address], paid_after)
    with pytest.raises(InsufficientBalance):
        execute_block(reader(pre), paid_after)


# --- check_sample on honest and lying proofs -----------------------------------------------------

ALICE, BOB = SENDERS[0], SENDERS[1]
MINER = fresh(9)
PRE = {ALICE.address: Account(1_000, 0, ALICE.public), BOB.address: Account(500)}


def scenario_txs() -> list[Transaction]:
    return [
        signed(ALICE, 0, fresh(0), 100, False),  # revealed before
        signed(BOB, 0, ALICE.address, 50, True),  # first spend: reveals
        signed(ALICE, 1, BOB.address, 10, False),
    ]


def honest() -> tuple[bytes, Block, SparseMerkleTree]:
    """(parent root, block, tree after executing it) of an honest execution client."""
    tree = parent_tree(PRE)
    parent_root = tree.root
    block = make_block(scenario_txs(), MINER)
    post_root, _ = execute_on_tree(tree, block, 2)
    return parent_root, with_root(block, post_root), tree


def test_honest_block_passes() -> None:
    parent_root, block, tree = honest()
    touched = touched_addresses(block)
    assert len(touched) == 4
    proofs = proofs_of(tree, parent_root, touched)
    check_sample(parent_root, block, touched, proofs)
    for address in touched:
        check_sample(parent_root, block, [address], proofs)
    check_sample(parent_root, block, [], {})  # only the fee payout is checked
    # the liar's machinery builds the honest tree when it does not lie
    post = execute_block(reader(PRE), block).post_accounts
    assert committed(PRE, post).root == block.header.state_root


def test_sampled_account_must_be_touched_and_proven() -> None:
    parent_root, block, tree = honest()
    proofs = proofs_of(tree, parent_root, [*touched_addresses(block), fresh(5)])
    with pytest.raises(SampleFailed, match="not touched"):
        check_sample(parent_root, block, [fresh(5)], proofs)
    with pytest.raises(BadSampleProof, match="no proofs"):
        check_sample(parent_root, block, [ALICE.address], {})


def flipped(proof: Proof) -> list[Proof]:
    """Every decodable proof that differs from ``proof`` in one byte of its encoding."""
    data = proof.encode()
    out = []
    for position in range(len(data)):
        altered = bytearray(data)
        altered[position] ^= 0x01
        try:
            out.append(Proof.decode(bytes(altered)))
        except QoinError:
            continue
    return out


@pytest.mark.parametrize("field", ["pre", "post", "pre_keys", "post_keys"])
def test_proof_altered_in_a_byte(field: str) -> None:
    parent_root, block, tree = honest()
    proofs = proofs_of(tree, parent_root, [ALICE.address])
    good = proofs[ALICE.address]
    original: Proof = getattr(good, field)
    variants = flipped(original)
    assert len(variants) > len(original.encode()) // 2  # most still decode: they must not verify
    for proof in variants:
        forged = {ALICE.address: replace(good, **{field: proof})}
        with pytest.raises(BadSampleProof, match="does not verify"):
            check_sample(parent_root, block, [ALICE.address], forged)


def test_post_proof_against_another_root() -> None:
    parent_root, block, tree = honest()
    proofs = proofs_of(tree, parent_root, [ALICE.address])
    good = proofs[ALICE.address]
    # the pre-state proof passed off as the post-state
    stale = {ALICE.address: replace(good, post=good.pre)}
    with pytest.raises(BadSampleProof, match="post-state proof"):
        check_sample(parent_root, block, [ALICE.address], stale)
    # right proofs, but the header claims another root
    with pytest.raises(BadSampleProof, match="post-state proof"):
        check_sample(parent_root, with_root(block, bytes(32)), [ALICE.address], proofs)
    # pre proofs checked against another parent root
    with pytest.raises(BadSampleProof, match="pre-state proof"):
        check_sample(block.header.state_root, block, [ALICE.address], proofs)


def test_falsified_but_consistent_post_state() -> None:
    """The lying client commits to a tree in which Alice got one Shor more, and the header claims
    its root: every proof verifies, and only sampling Alice shows the lie."""
    parent_root, block, _ = honest()
    post = dict(execute_block(reader(PRE), block).post_accounts)
    post[ALICE.address] = replace(post[ALICE.address], balance=post[ALICE.address].balance + 1)
    lying = committed(PRE, post)
    block = with_root(block, lying.root)
    touched = touched_addresses(block)
    proofs = proofs_of(lying, parent_root, touched)
    with pytest.raises(SampleMismatch, match=r"balance 938, .* has balance 939"):
        check_sample(parent_root, block, [ALICE.address], proofs)
    with pytest.raises(SampleMismatch):
        check_sample(parent_root, block, touched, proofs)
    others = [a for a in touched if a != ALICE.address]
    check_sample(parent_root, block, others, proofs)  # not caught without Alice
    # a lie about the keys: Bob's first spend did not reveal them, says the liar
    post[ALICE.address] = execute_block(reader(PRE), block).post_accounts[ALICE.address]
    post[BOB.address] = replace(post[BOB.address], public_keys=None)
    lying = committed(PRE, post)
    block = with_root(block, lying.root)
    proofs = proofs_of(lying, parent_root, touched)
    with pytest.raises(SampleMismatch, match=r"keys revealed; the proven .* keys not revealed"):
        check_sample(parent_root, block, [BOB.address], proofs)
    check_sample(parent_root, block, [ALICE.address], proofs)


def test_double_spend() -> None:
    """Alice spends 2 x 81 of her 100 Shor; the liar's tree shows her at 0, both payees paid."""
    pre = {ALICE.address: Account(100, 0, ALICE.public)}
    txs = [signed(ALICE, 0, fresh(0), 80, False), signed(ALICE, 1, fresh(1), 80, False)]
    block = make_block(txs, MINER)
    with pytest.raises(InsufficientBalance):
        execute_block(reader(pre), block)
    post = {
        ALICE.address: Account(0, 2, ALICE.public),
        fresh(0): Account(80),
        fresh(1): Account(80),
        MINER: Account(REWARD + 2 * FEE),
    }
    lying = committed(pre, post)
    parent_root = parent_tree(pre).root
    block = with_root(block, lying.root)
    touched = touched_addresses(block)
    proofs = proofs_of(lying, parent_root, touched)
    with pytest.raises(SampleRuleBroken, match="has 19 Shor, needs 81"):
        check_sample(parent_root, block, [ALICE.address], proofs)
    # the payees' credits are taken as the block says: only sampling the spender catches it
    check_sample(parent_root, block, [fresh(0), fresh(1), MINER], proofs)


def test_wrong_fee_payout() -> None:
    """The miner pays itself 5 Shor of fees more than the block's: caught whatever is sampled."""
    block = make_block(scenario_txs(), MINER, fees=3 * FEE + 5)
    with pytest.raises(BadFeePayout):
        execute_block(reader(PRE), block)
    post = dict(execute_block(reader(PRE), make_block(scenario_txs(), MINER)).post_accounts)
    post[MINER] = Account(REWARD + 3 * FEE + 5)
    lying = committed(PRE, post)
    parent_root = parent_tree(PRE).root
    block = with_root(block, lying.root)
    proofs = proofs_of(lying, parent_root, touched_addresses(block))
    for sample in ([], [MINER], touched_addresses(block)):
        with pytest.raises(SampleRuleBroken, match="3 Shor of fees"):
            check_sample(parent_root, block, sample, proofs)


# --- draw_sample ---------------------------------------------------------------------------------


def sampling_seed() -> int:
    seed = int(os.environ.get("QOIN_SAMPLING_SEED", "20240917"))
    print(f"QOIN_SAMPLING_SEED={seed}")
    return seed


def test_draw_sample_distinct_and_uniform() -> None:
    rng = random.Random(sampling_seed())
    touched = [fresh(i) for i in range(20)]
    for k in (0, 1, 5, 19):
        sample = draw_sample(touched, k, rng)
        assert len(sample) == k == len(set(sample))
        assert set(sample) <= set(touched)
    for k in (20, 21, 1_000):
        assert sorted(draw_sample(touched, k, rng)) == sorted(touched)
    assert draw_sample([], 16) == []
    system = draw_sample(touched, 7)  # the default CSPRNG
    assert len(set(system)) == 7 and set(system) <= set(touched)
    # each account is in a sample of k with probability k/n
    trials, k = 4_000, 5
    counts = dict.fromkeys(touched, 0)
    for _ in range(trials):
        for address in draw_sample(touched, k, rng):
            counts[address] += 1
    p = k / len(touched)
    bound = 4.5 * math.sqrt(p * (1 - p) / trials)
    assert all(abs(count / trials - p) <= bound for count in counts.values()), counts


# --- the detection probability -------------------------------------------------------------------


def test_detection_probability_formula() -> None:
    # by enumeration of every sample, for small blocks
    for n in range(7):
        for m in range(n + 1):
            bad = set(range(m))
            for k in range(n + 2):
                samples = list(itertools.combinations(range(n), min(k, n)))
                caught = sum(1 for s in samples if bad.intersection(s))
                assert detection_probability(n, m, k) == pytest.approx(caught / len(samples))
    # and by the product form for a larger one
    for m, k in ((10, 16), (50, 64), (1, 999)):
        missed = math.prod((1_000 - m - i) / (1_000 - i) for i in range(k))
        assert detection_probability(1_000, m, k) == pytest.approx(1 - missed, rel=1e-12)
    # close to 1 - (1 - f)^k when n >> k, and never below it (no replacement)
    for f, k in itertools.product((0.01, 0.1, 0.5), (1, 16, 64)):
        exact = detection_probability(100_000, int(f * 100_000), k)
        assert exact == pytest.approx(1 - (1 - f) ** k, abs=2e-3)
        assert exact >= 1 - (1 - f) ** k - 1e-12
    assert detection_probability(40, 1, 40) == 1.0
    assert detection_probability(40, 0, 16) == 0.0
    for bad_args in ((3, 4, 1), (3, -1, 1), (3, 1, -1), (-1, 0, 0)):
        with pytest.raises(ValueError):
            detection_probability(*bad_args)


DETECTION_SENDERS = [keypair_for(index=i) for i in range(30, 45)]
"""15 senders, each paying one new account: with the miner, 31 touched accounts."""
TRIALS = 2_000
"""Trials per (k, m) pair whose outcome is random; 200 where the formula gives 0 or 1."""
PAIRS = ((1, 4), (4, 2), (8, 2), (16, 1), (16, 4), (16, 0), (31, 1), (64, 2))
"""(k sampled, m falsified) pairs measured."""


def test_detection_rate_matches_formula() -> None:
    seed = sampling_seed()
    rng = random.Random(seed)
    senders = DETECTION_SENDERS
    pre = {
        k.address: Account(1_000 + i, i % 3, k.public if i % 2 else None)
        for i, k in enumerate(senders)
    }
    txs = [
        signed(k, i % 3, fresh(100 + i), 10 + i, reveal=not i % 2) for i, k in enumerate(senders)
    ]
    block = make_block(txs, MINER)
    touched = touched_addresses(block)
    n = len(touched)
    assert n == 31
    honest_post = execute_block(reader(pre), block).post_accounts
    parent_root = parent_tree(pre).root
    order = rng.sample(touched, n)  # which accounts the liar falsifies, first m of these
    for m in sorted({m for _, m in PAIRS}):
        falsified = set(order[:m])
        post = dict(honest_post)
        for i, address in enumerate(order[:m]):
            right = post[address]
            post[address] = (
                replace(right, balance=right.balance + 1)
                if i % 2
                else replace(right, nonce=right.nonce + 1)
            )
        lying = committed(pre, post)
        claimed = with_root(block, lying.root)
        proofs = proofs_of(lying, parent_root, touched)
        # every proof verifies; exactly the falsified accounts fail when sampled alone
        for address in touched:
            if address in falsified:
                with pytest.raises(SampleMismatch):
                    check_sample(parent_root, claimed, [address], proofs)
            else:
                check_sample(parent_root, claimed, [address], proofs)
        for k in sorted({k for k, pm in PAIRS if pm == m}):
            expected = detection_probability(n, m, k)
            trials = 200 if expected in (0.0, 1.0) else TRIALS
            detected = 0
            for _ in range(trials):
                try:
                    check_sample(parent_root, claimed, draw_sample(touched, k, rng), proofs)
                except SampleMismatch:
                    detected += 1
            measured = detected / trials
            print(f"n={n} m={m} k={k}: detected {measured:.4f}, formula {expected:.4f}")
            if expected in (0.0, 1.0):
                assert measured == expected, (seed, n, m, k)
            else:
                bound = max(4 * math.sqrt(expected * (1 - expected) / trials), 0.005)
                assert abs(measured - expected) <= bound, (seed, n, m, k, measured, expected)


def test_stray_keys_leaf_of_an_unrevealed_account() -> None:
    """The liar's tree gives a payee that never spent a keys leaf (here: somebody else's keys):
    the keys proof must be an exclusion proof for an account that has not revealed its keys."""
    parent_root, block, _ = honest()
    post = dict(execute_block(reader(PRE), block).post_accounts)
    payees = [a for a in touched_addresses(block) if post[a].public_keys is None]
    assert payees
    lying = committed(PRE, post)
    lying.update({keys_key(payees[0]): ALICE.public.encode()}, 3)
    block = with_root(block, lying.root)
    proofs = proofs_of(lying, parent_root, touched_addresses(block))
    with pytest.raises(BadSampleProof, match="a keys leaf, but keys not revealed"):
        check_sample(parent_root, block, [payees[0]], proofs)
