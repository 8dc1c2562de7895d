"""Pre-states for execution tests: accounts turned into state-tree leaves, and back."""

from __future__ import annotations

from collections.abc import Mapping

from qoin.crypto.address import Address
from qoin.execution.account import EMPTY_ACCOUNT, Account, account_writes, read_account
from qoin.execution.overlay import Read
from qoin.execution.transition import BlockOutcome


def leaves(accounts: Mapping[Address, Account]) -> dict[bytes, bytes]:
    """The state-tree leaves of ``accounts`` (account leaf, keys leaf once revealed)."""
    out: dict[bytes, bytes] = {}
    for address, account in accounts.items():
        out.update(account_writes(address, EMPTY_ACCOUNT, account))
    return out


def reader(accounts: Mapping[Address, Account]) -> Read:
    """A key-level pre-state holding ``accounts`` (every other key absent)."""
    return leaves(accounts).get


def post_accounts(
    accounts: Mapping[Address, Account], outcome: BlockOutcome, *more: Address
) -> dict[Address, Account]:
    """The post-state of ``accounts``' addresses and ``more`` after ``outcome``."""
    pre = leaves(accounts)

    def get(key: bytes) -> bytes | None:
        return outcome.changes.get(key, pre.get(key))

    return {address: read_account(get, address) for address in (*accounts, *more)}
