"""A payload from an execution client may change only its transactions, the fee payout and the
roots of its template: anything else is refused before proof-of-work is spent on it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from qoin.chain.block import Block, Coinbase, Payout, transactions_root
from qoin.chain.chain import Chain
from qoin.chain.producer import build_template
from qoin.chain.transaction import sign_transfer
from qoin.consensus.node import payload_problem
from tests.chainutil import on_schedule, test_genesis
from tests.keys import keypair_for

MINER, PAYER = keypair_for(index=5), keypair_for(index=9)


@pytest.fixture(scope="module")
def template_and_payload(tmp_path_factory: pytest.TempPathFactory) -> tuple[Block, Block]:
    chain = Chain.open(Path(tmp_path_factory.mktemp("chain")), test_genesis())
    try:
        template = build_template(chain, MINER.public, on_schedule(chain.genesis, 1))
    finally:
        chain.close()
    tx = sign_transfer(
        PAYER, chain_id=test_genesis().chain_id, nonce=0, recipient=MINER.address, amount=5,
        fee=7, reveal_keys=True,
    )  # fmt: skip
    payouts = (*template.coinbase.payouts[:-1], Payout(template.coinbase.payouts[-1].recipient, 7))
    coinbase = Coinbase(payouts)
    header = replace(
        template.header,
        transactions_root=transactions_root(coinbase, (tx,)),
        state_root=b"\x01" * 32,
        receipts_root=b"\x02" * 32,
    )
    return template, replace(template, header=header, coinbase=coinbase, transactions=(tx,))


def test_an_honest_payload_passes(template_and_payload: tuple[Block, Block]) -> None:
    template, payload = template_and_payload
    assert payload_problem(template, payload) is None
    assert payload_problem(template, template) is None  # an empty payload is fine too


def test_every_other_change_is_refused(template_and_payload: tuple[Block, Block]) -> None:
    template, payload = template_and_payload
    later = replace(
        payload, header=replace(payload.header, timestamp_ms=payload.header.timestamp_ms + 1)
    )
    assert "header fields" in (payload_problem(template, later) or "")
    robbed = Coinbase(
        (Payout(PAYER.address, payload.coinbase.payouts[0].amount), *payload.coinbase.payouts[1:])
    )
    assert "reward payouts" in (payload_problem(template, replace(payload, coinbase=robbed)) or "")
    greedy = Coinbase((*payload.coinbase.payouts[:-1], Payout(MINER.address, 8)))
    assert "fee payout" in (payload_problem(template, replace(payload, coinbase=greedy)) or "")
    hidden = replace(payload, transactions=())
    assert "fee payout" in (payload_problem(template, hidden) or "")
    fees_kept = replace(hidden, coinbase=template.coinbase)
    assert "transactions root" in (payload_problem(template, fees_kept) or "")
