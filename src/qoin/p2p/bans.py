"""The ban list on disk: bans as JSON with wall-clock expiry, and the node's ban file.

The peer manager keeps bans by its monotonic clock (:meth:`PeerManager.bans`); across a restart
they are kept as wall-clock expiry times, ``{"version": 1, "bans": [...]}`` (:func:`bans_to_json`,
:func:`bans_from_json`). :class:`BanFile` reads and writes them in ``p2p-bans.json`` of a data
directory, bounded in size.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Final

from qoin.crypto.address import Address, AddressError
from qoin.errors import QoinError
from qoin.files import FileReadError, read_bounded, write_atomically
from qoin.p2p.addresses import PeerAddressError, parse_host_key
from qoin.p2p.misbehaviour import Misbehaviour

MAX_DETAIL_CHARS: Final = 200
"""A ban's free-text detail is cut to this length (it may quote attacker-chosen data)."""
BAN_LIST_VERSION: Final = 1
"""Version field of the JSON ban list."""
BANS_FILE: Final = "p2p-bans.json"
"""Where a node keeps its bans across restarts, in its data directory."""
MAX_BANS_FILE_BYTES: Final = 4 * 1024 * 1024
"""The largest ban file read (10,000 bans of each kind fit well within it)."""

log = logging.getLogger(__name__)


class BanListError(QoinError):
    """A saved ban list that cannot be read."""


class BanKind(StrEnum):
    """What a ban covers."""

    NODE = "node"
    """A node id, written as its bech32m address."""
    HOST = "host"
    """A :func:`host_key`: an IPv4 address, an IPv6 /64 or a host name."""


@dataclass(frozen=True)
class BanEntry:
    """A ban: who, why, and for how much longer."""

    kind: BanKind
    subject: str
    """The node id (bech32m) or the host key."""
    reason: Misbehaviour
    detail: str
    remaining_s: float
    """Seconds until the ban expires (positive)."""


def _check_wall_clock(wall_now: float) -> None:
    if isinstance(wall_now, bool) or not isinstance(wall_now, int | float):
        raise BanListError(f"wall_now must be a number, got {wall_now!r}")
    if not math.isfinite(wall_now):
        raise BanListError(f"wall_now must be finite, got {wall_now!r}")


def bans_to_json(bans: Iterable[BanEntry], wall_now: float) -> str:
    """Serialise bans with wall-clock expiry (``wall_now`` + remaining, seconds since the epoch).

    Format: ``{"version": 1, "bans": [{"kind", "subject", "reason", "detail", "expires_at"}]}``,
    entries sorted by kind and subject; expired entries are left out. Pass ``time.time()``.
    """
    _check_wall_clock(wall_now)
    entries = [
        {
            "kind": ban.kind.value,
            "subject": ban.subject,
            "reason": ban.reason.value,
            "detail": ban.detail,
            "expires_at": wall_now + ban.remaining_s,
        }
        for ban in sorted(bans, key=lambda b: (b.kind.value, b.subject))
        if ban.remaining_s > 0
    ]
    return json.dumps({"version": BAN_LIST_VERSION, "bans": entries}, indent=2, sort_keys=True)


def _reject_constant(name: str) -> object:
    raise BanListError(f"{name} is not a number")


def _text_field(item: Mapping[str, object], name: str, index: int) -> str:
    value = item.get(name)
    if not isinstance(value, str):
        raise BanListError(f"ban {index}: {name!r} must be a string, got {value!r}")
    return value


def _ban_from_json(item: object, index: int, wall_now: float) -> BanEntry | None:
    if not isinstance(item, dict):
        raise BanListError(f"ban {index}: expected an object, got {item!r}")
    kind_text = _text_field(item, "kind", index)
    subject = _text_field(item, "subject", index)
    reason_text = _text_field(item, "reason", index)
    detail = _text_field(item, "detail", index)
    expires_at = item.get("expires_at")
    if isinstance(expires_at, bool) or not isinstance(expires_at, int | float):
        raise BanListError(f"ban {index}: 'expires_at' must be a number, got {expires_at!r}")
    try:
        kind = BanKind(kind_text)
        reason = Misbehaviour(reason_text)
    except ValueError as exc:
        raise BanListError(f"ban {index}: {exc}") from None
    try:
        if kind is BanKind.NODE:
            subject = str(Address.from_text(subject))
        else:
            subject = parse_host_key(subject)
    except (AddressError, PeerAddressError) as exc:
        raise BanListError(f"ban {index}: {exc}") from None
    remaining = float(expires_at) - wall_now
    if remaining <= 0:
        return None
    return BanEntry(kind, subject, reason, detail[:MAX_DETAIL_CHARS], remaining)


def bans_from_json(text: str, wall_now: float) -> tuple[BanEntry, ...]:
    """Read a ban list written by :func:`bans_to_json`; bans expired by ``wall_now`` are dropped.

    Strict: unknown versions, missing or mistyped fields, unknown kinds or reasons, malformed
    subjects and non-finite numbers raise :class:`BanListError`. Feed the result to
    :meth:`PeerManager.restore_bans`, which caps each ban at the configured duration.
    """
    _check_wall_clock(wall_now)
    try:
        document = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, TypeError) as exc:
        raise BanListError(f"not a JSON ban list: {exc}") from None
    if not isinstance(document, dict):
        raise BanListError("a ban list is a JSON object")
    version = document.get("version")
    if version != BAN_LIST_VERSION or isinstance(version, bool):
        raise BanListError(f"unsupported ban list version {version!r}")
    items = document.get("bans")
    if not isinstance(items, list):
        raise BanListError("'bans' must be a list")
    entries = (_ban_from_json(item, index, wall_now) for index, item in enumerate(items, 1))
    return tuple(entry for entry in entries if entry is not None)


class BanFile:
    """The bans of a node in ``datadir/p2p-bans.json``, read at start-up and written when a peer
    is banned and on shutdown."""

    def __init__(self, datadir: Path) -> None:
        self.path = datadir / BANS_FILE

    def load(self, wall_now: float) -> tuple[BanEntry, ...]:
        """The saved bans not expired by ``wall_now`` (none if there is no file); raises
        :class:`BanListError` for a file that cannot be read, is too large or is damaged."""
        if not self.path.exists():
            return ()
        try:
            text = read_bounded(self.path, MAX_BANS_FILE_BYTES, "ban file")
        except FileReadError as exc:
            raise BanListError(str(exc)) from exc
        try:
            return bans_from_json(text.decode(), wall_now)
        except (BanListError, UnicodeDecodeError) as exc:
            raise BanListError(
                f"{self.path} is damaged ({exc}); remove it to start without bans"
            ) from exc

    def save(self, bans: Iterable[BanEntry], wall_now: float) -> None:
        """Replace the file with ``bans`` (atomically); a failure is logged, not raised: the bans
        still hold in memory."""
        try:
            write_atomically(self.path, bans_to_json(bans, wall_now).encode())
        except OSError as exc:
            log.warning("could not save the p2p bans to %s: %s", self.path, exc)
