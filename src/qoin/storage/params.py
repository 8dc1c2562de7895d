"""The storage market's genesis parameters (docs/spec/storage.md §1).

They are part of a network's genesis (its ``"storage_market"`` object, committed by the genesis
hash) and of its genesis *state*: the execution layer writes :meth:`StorageParams.encode` under the
actor's storage key :data:`PARAMS_KEY`, and the actor reads them from there, so a stateless
re-execution reads the very same values from its witness.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any, Self, TypeVar

from qoin.encoding.codec import Reader, Writer
from qoin.errors import QoinError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

PARAMS_KEY = b"params"
"""The key of the parameters in the actor's storage."""
PPM = 1_000_000
"""Parts per million: the unit of the slash and bonus fractions."""
MAX_SAMPLES = 64
"""Leaves challenged per shard per period, at most (an ABI list holds at most 64 values)."""
MIN_LEAF_SIZE = 32
MAX_LEAF_SIZE = 4096
MAX_MISSES = 64
MAX_PERIOD = 1 << 20
MAX_BID_BLOCKS = 1 << 24
MAX_DURATION = 1 << 24

R = TypeVar("R", bound="DataclassInstance")


# -- records of integer fields (the markets' parameters, and the market actors' totals) --------


def int_fields(record: DataclassInstance) -> tuple[int, ...]:
    """The values of a dataclass of integer fields, in declaration order."""
    return tuple(getattr(record, f.name) for f in fields(record))


def encode_int_fields(record: DataclassInstance) -> bytes:
    """Every field as a varint, in declaration order."""
    writer = Writer()
    for value in int_fields(record):
        writer.varint(value)
    return writer.bytes()


def decode_int_fields(cls: type[R], data: bytes) -> R:
    """Inverse of :func:`encode_int_fields` (canonical; whatever ``cls`` raises if a value is out
    of its bounds)."""
    reader = Reader(data)
    values = [reader.varint() for _ in fields(cls)]
    reader.finish()
    return cls(*values)


def int_fields_from_json(obj: Any, cls: type[R], section: str, error: type[QoinError]) -> R:
    """Parse the genesis object ``section`` into ``cls``: known integer fields only; missing ones
    take their default. ``error`` on anything else (and whatever ``cls`` raises)."""
    if not isinstance(obj, dict):
        raise error(f"{section} must be an object")
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(obj) - names)
    if unknown:
        raise error(f"{section}: unknown field {unknown[0]!r}")
    values: dict[str, int] = {}
    for key, value in obj.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise error(f"{section}.{key} must be an integer")
        values[key] = value
    return cls(**values)


@dataclass(frozen=True)
class VarintRecord:
    """A record whose fields are all integers, stored as one varint each in declaration order
    (subclasses are frozen dataclasses of ``int`` fields)."""

    def values(self) -> tuple[int, ...]:
        """The fields' values in declaration order."""
        return int_fields(self)

    def encode(self) -> bytes:
        """Every field as a varint, in declaration order."""
        return encode_int_fields(self)

    @classmethod
    def decode(cls, data: bytes) -> Self:
        """Inverse of :meth:`encode` (canonical; whatever the class raises for a value out of its
        bounds)."""
        return decode_int_fields(cls, data)


@dataclass(frozen=True)
class MarketParams(VarintRecord):
    """A market's genesis parameters: a record of integer fields, checked against their bounds
    when made."""

    ERROR = QoinError
    """What a value out of bounds raises."""
    LABEL = "market"
    """Names the market in that error."""

    def __post_init__(self) -> None:
        problem = self.problem()
        if problem is not None:
            raise self.ERROR(f"{self.LABEL} parameters: {problem}")

    def checks(self) -> tuple[tuple[bool, str], ...]:
        """Every bound as ``(holds, what it is)``."""
        return ()

    def problem(self) -> str | None:
        """What is out of bounds, or None."""
        for ok, reason in self.checks():
            if not ok:
                return reason
        return None


class StorageParamsError(QoinError):
    """Storage market parameters out of their bounds."""


@dataclass(frozen=True)
class StorageParams(MarketParams):
    """The storage market's parameters (the table of docs/spec/storage.md §1)."""

    ERROR = StorageParamsError
    LABEL = "storage market"

    period: int = 360
    """Blocks per proving period P."""
    window: int = 120
    """Blocks after a period's start in which its proofs are accepted (1 <= W < P)."""
    samples: int = 8
    """Leaves s challenged per shard per period."""
    leaf_size: int = 256
    """Bytes per leaf of a shard tree (a power of two)."""
    max_misses: int = 3
    """M: consecutive missed periods that fail a shard."""
    miss_slash_ppm: int = 50_000
    """Share of a shard's collateral slashed (and burnt) per missed period."""
    repair_bonus_ppm: int = 500_000
    """Share of a failed shard's slashed collateral paid to the provider that repairs it."""
    grace_periods: int = 1
    """Periods between a shard's assignment and its first due proof (time to upload or rebuild)."""
    max_bid_blocks: int = 8_640
    """How far ahead of its height a bid's deadline may lie."""
    max_duration: int = 87_600
    """The longest deal, in periods."""

    def checks(self) -> tuple[tuple[bool, str], ...]:
        """Every bound as ``(holds, what it is)``."""
        return (
            (2 <= self.period <= MAX_PERIOD, f"period is 2 to {MAX_PERIOD} blocks"),
            (1 <= self.window < self.period, "window is 1 to period - 1 blocks"),
            (1 <= self.samples <= MAX_SAMPLES, f"samples is 1 to {MAX_SAMPLES}"),
            (
                MIN_LEAF_SIZE <= self.leaf_size <= MAX_LEAF_SIZE
                and self.leaf_size & (self.leaf_size - 1) == 0,
                f"leaf_size is a power of two from {MIN_LEAF_SIZE} to {MAX_LEAF_SIZE}",
            ),
            (1 <= self.max_misses <= MAX_MISSES, f"max_misses is 1 to {MAX_MISSES}"),
            (0 <= self.miss_slash_ppm <= PPM, f"miss_slash_ppm is 0 to {PPM}"),
            (0 <= self.repair_bonus_ppm <= PPM, f"repair_bonus_ppm is 0 to {PPM}"),
            (0 <= self.grace_periods <= 16, "grace_periods is 0 to 16"),
            (
                1 <= self.max_bid_blocks <= MAX_BID_BLOCKS,
                f"max_bid_blocks is 1 to {MAX_BID_BLOCKS}",
            ),
            (1 <= self.max_duration <= MAX_DURATION, f"max_duration is 1 to {MAX_DURATION}"),
        )

    def period_of(self, height: int) -> int:
        """The period holding ``height``."""
        return height // self.period

    def period_start(self, period: int) -> int:
        """The first height of ``period`` (its beacon is that block's hash)."""
        return period * self.period

    def window_end(self, period: int) -> int:
        """The last height at which proofs for ``period`` are accepted."""
        return period * self.period + self.window

    def check_height(self, period: int) -> int:
        """The height at which the cron checks ``period`` for missed proofs."""
        return self.window_end(period) + 1


def astuple_ints(params: StorageParams) -> tuple[int, ...]:
    """The parameters' values in declaration order."""
    return int_fields(params)


MAINNET = StorageParams()
"""The mainnet values."""
DEVNET = StorageParams(period=10, window=8, max_misses=2, max_bid_blocks=200, max_duration=100_000)
"""Values that make a devnet test of proofs, misses and repair run in minutes."""


def to_json(params: StorageParams) -> dict[str, int]:
    """The genesis file's ``"storage_market"`` object."""
    return asdict(params)


def from_json(obj: Any) -> StorageParams:
    """Parse a ``"storage_market"`` object: known integer fields only; missing ones take the
    mainnet value. :class:`StorageParamsError` on anything else."""
    return int_fields_from_json(obj, StorageParams, "storage_market", StorageParamsError)
