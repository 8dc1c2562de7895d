"""Jobs requested by contracts (docs/spec/compute.md §3.12), the agent's side: call the
contract's request method (which bids at the compute market with the call's value as the deposit,
naming this wallet as its agent), then match, offer and form the deal for that bid exactly as
``run`` does for its own (:func:`qoin.compute.client.submit.submit`), and follow it as usual.

The contract's arguments depend on the contract; :func:`ai_oracle_args` builds those of the
example ``examples/contracts/ai_oracle`` (``request``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx

from qoin.compute.client.base import NO_WATCHER, RECEIPT_TIMEOUT_S, ComputeClientError, Watcher
from qoin.compute.client.submit import Prepared, Submitted, bid_deadline, placed_bid, submit
from qoin.compute.market import BidInfo, ComputeMarketView
from qoin.crypto.address import Address
from qoin.execution.abi import Value
from qoin.wallet import CallReverted, Wallet, WalletError

RequestArgs = Callable[[Prepared, int, Address], tuple[Value, ...]]
"""The contract's request arguments for a prepared job, the bid's deadline and the agent."""


def ai_oracle_args(prepared: Prepared, deadline: int, agent: Address) -> tuple[Value, ...]:
    """``ai_oracle.request(job, cpus, memory, timeout, max_price_cpu, max_price_gpu,
    verification, mediators, max_fee, deadline, agent)``."""
    spec = prepared.spec
    return (
        spec.job_hash,
        spec.resources.cpus,
        spec.resources.memory,
        spec.timeout,
        prepared.max_price_cpu,
        prepared.max_price_gpu,
        int(spec.verification),
        tuple(m.mediator for m in prepared.mediators),
        prepared.max_fee,
        deadline,
        agent,
    )


def request_bid(
    wallet: Wallet,
    view: ComputeMarketView,
    prepared: Prepared,
    contract: Address,
    method: str = "request",
    args: RequestArgs = ai_oracle_args,
) -> BidInfo:
    """Call ``contract.method`` with the bid's deposit; the bid it placed, checked: this
    wallet is its agent, its job is the prepared spec's. :class:`ComputeClientError` otherwise."""
    deadline = bid_deadline(wallet, prepared)
    call_args = args(prepared, deadline, wallet.address)
    try:
        receipt = wallet.transact(
            contract, method, call_args, value=prepared.deposit, timeout=RECEIPT_TIMEOUT_S
        )
    except CallReverted as exc:
        raise ComputeClientError(f"{contract}.{method} refused the request: {exc.reason}") from None
    except WalletError as exc:
        raise ComputeClientError(
            f"calling {contract}.{method} failed ({exc}); if it was mined after all, the bid's "
            f"deposit comes back to the contract when it expires at height {deadline}"
        ) from None
    bid = placed_bid(view, receipt, f"{contract}.{method}")
    if bid.client != contract or bid.agent != wallet.address:
        raise ComputeClientError(
            f"bid {bid.bid_id} is {bid.client}'s with agent {bid.agent}: not a bid of {contract} "
            f"that {wallet.address} may form"
        )
    if bid.job != prepared.spec.job_hash:
        raise ComputeClientError(
            f"bid {bid.bid_id} is for job {bid.job.hex()}, not the prepared one"
        )
    return bid


def submit_for_contract(
    wallet: Wallet,
    view: ComputeMarketView,
    prepared: Prepared,
    contract: Address,
    jobs: Path,
    *,
    method: str = "request",
    args: RequestArgs = ai_oracle_args,
    watcher: Watcher = NO_WATCHER,
    http: httpx.Client | None = None,
) -> Submitted:
    """Have ``contract`` bid for ``prepared`` (:func:`request_bid`), then form its deal as its
    agent (:func:`~qoin.compute.client.submit.submit`); follow the result with
    :func:`~qoin.compute.client.follow.follow` as for any deal. The contract gets the answer
    through its callback when the deal settles."""
    bid = request_bid(wallet, view, prepared, contract, method, args)
    watcher.phase(
        "match",
        f"{contract} placed bid {bid.bid_id}: deposit {bid.deposit} Shor, answer up to "
        f"{bid.max_answer} bytes, open until height {bid.deadline}",
    )
    return submit(wallet, view, prepared, jobs, watcher, http, placed=bid)
