"""Exact token issuance: how many Shor each block may mint, and the supply at any height.

Rules (docs/architecture.md §5), all in integers of the base unit, the *Shor*:

* The supply cap is :data:`SUPPLY_CAP` = 120,000,000,000,000 Shor.
* :data:`GENESIS_ALLOCATION` (10% of the cap) exists at height 0. It is not mined: the genesis block
  has subsidy 0.
* The remaining :data:`MINING_TOTAL` = 108,000,000,000,000 Shor are mined over :data:`ERA_COUNT`
  eras of :data:`ERA_YEARS` years each. Years are Julian years counted in blocks::

      blocks_per_year = JULIAN_YEAR_MS // block_time_ms      (must be >= 1)
      blocks_per_era  = ERA_YEARS * blocks_per_year

* Era ``k`` (``0 <= k < ERA_COUNT``) covers heights ``1 + k * B`` through ``(k + 1) * B`` where
  ``B = blocks_per_era``. Its budget halves from era to era::

      budget(k) = ERA0_BUDGET // 2**k                        for k = 0 .. ERA_COUNT - 2
      budget(ERA_COUNT - 1) = MINING_TOTAL - sum(budget(0 .. ERA_COUNT - 2))

  The last era absorbs the geometric tail. A halving series starting at half of the mining total
  only approaches the total, and each floor division loses a little more, so instead of halving
  once more the last era takes exactly what is left. That makes the mined total exactly
  :data:`MINING_TOTAL`; as a consequence the last era's budget is *not* half of the one before it
  (it is about twice as large: the whole tail ``54e12 / 2**33 + 54e12 / 2**34 + ...`` plus every
  Shor lost to rounding).
* Within era ``k`` every height mints ``budget(k) // B`` Shor, and the first ``budget(k) % B``
  heights of the era mint one Shor more, so that the era mints exactly ``budget(k)``.
* Heights after the last era (``height > ERA_COUNT * B``) mint nothing; from the last height of the
  last era on, the supply is exactly :data:`SUPPLY_CAP`.

Everything below is closed form: no function loops over heights. Only the construction of a
schedule loops over the :data:`ERA_COUNT` eras to precompute budgets and their prefix sums.
"""

from __future__ import annotations

from dataclasses import dataclass

from qoin.errors import QoinError

SUPPLY_CAP = 120_000_000_000_000
"""The total number of Shor that will ever exist."""

GENESIS_ALLOCATION = 12_000_000_000_000
"""Shor allocated at height 0 (10% of :data:`SUPPLY_CAP`); not mined."""

MINING_TOTAL = SUPPLY_CAP - GENESIS_ALLOCATION
"""Shor minted by block subsidies over all eras: 108,000,000,000,000."""

ERA_COUNT = 34
"""Number of eras that mint a subsidy; eras are numbered ``0 .. ERA_COUNT - 1``."""

ERA_YEARS = 4
"""Length of one era, in Julian years (converted to blocks through the block time)."""

ERA0_BUDGET = MINING_TOTAL // 2
"""Budget of era 0: half of :data:`MINING_TOTAL`, i.e. 54,000,000,000,000 Shor."""

JULIAN_YEAR_MS = 31_557_600_000
"""One Julian year (365.25 days) in milliseconds."""

MAIN_BLOCK_TIME_MS = 10_000
"""Target block time of the main network: 10 seconds."""


class IssuanceError(QoinError):
    """An issuance query or schedule parameter is out of range."""


@dataclass(frozen=True)
class IssuanceSchedule:
    """
    The issuance schedule for one target block time.

    ``era_budgets[k]`` is the budget of era ``k``; ``era_prefix[k]`` is the number of Shor mined
    by all eras before era ``k`` (so ``era_prefix[0] == 0`` and
    ``era_prefix[ERA_COUNT] == MINING_TOTAL``). Build one with :func:`schedule_for_block_time`
    (or :meth:`IssuanceSchedule.for_block_time`); direct construction is checked for consistency.
    """

    block_time_ms: int
    blocks_per_year: int
    blocks_per_era: int
    era_budgets: tuple[int, ...]
    era_prefix: tuple[int, ...]

    def __post_init__(self) -> None:
        """Reject a schedule whose fields do not follow the issuance rules."""
        if (
            self.blocks_per_year != blocks_per_year_for(self.block_time_ms)
            or self.blocks_per_era != ERA_YEARS * self.blocks_per_year
            or self.era_budgets != _ERA_BUDGETS
            or self.era_prefix != _ERA_PREFIX
        ):
            raise IssuanceError("issuance schedule fields do not follow the issuance rules")

    @classmethod
    def for_block_time(cls, block_time_ms: int) -> IssuanceSchedule:
        """Return the schedule for a target block time of ``block_time_ms`` milliseconds."""
        return schedule_for_block_time(block_time_ms)

    @property
    def last_height(self) -> int:
        """The last height that can mint a subsidy: the end of the last era."""
        return ERA_COUNT * self.blocks_per_era


def compute_era_budgets() -> tuple[int, ...]:
    """
    Return the budgets of the :data:`ERA_COUNT` eras.

    Eras ``0 .. ERA_COUNT - 2`` get ``ERA0_BUDGET // 2**k``; the last era gets whatever is left of
    :data:`MINING_TOTAL`, so the budgets sum to exactly :data:`MINING_TOTAL`. The budgets do not
    depend on the block time.
    """
    halving = [ERA0_BUDGET >> k for k in range(ERA_COUNT - 1)]
    last = MINING_TOTAL - sum(halving)
    return (*halving, last)


def compute_era_prefix(budgets: tuple[int, ...]) -> tuple[int, ...]:
    """Return ``prefix`` with ``prefix[k] == sum(budgets[:k])`` for ``k = 0 .. len(budgets)``."""
    prefix = [0]
    for budget in budgets:
        prefix.append(prefix[-1] + budget)
    return tuple(prefix)


def blocks_per_year_for(block_time_ms: int) -> int:
    """
    Return the number of blocks in one Julian year at a block time of ``block_time_ms``.

    Raises :class:`IssuanceError` unless the block time is positive and at most one year (so that
    a year holds at least one block).
    """
    if block_time_ms <= 0:
        raise IssuanceError(f"block time must be a positive number of ms, got {block_time_ms}")
    blocks_per_year = JULIAN_YEAR_MS // block_time_ms
    if blocks_per_year < 1:
        raise IssuanceError(
            f"block time {block_time_ms} ms is longer than a Julian year ({JULIAN_YEAR_MS} ms)"
        )
    return blocks_per_year


_ERA_BUDGETS = compute_era_budgets()
_ERA_PREFIX = compute_era_prefix(_ERA_BUDGETS)


def schedule_for_block_time(block_time_ms: int) -> IssuanceSchedule:
    """Return the :class:`IssuanceSchedule` for a target block time of ``block_time_ms`` ms."""
    blocks_per_year = blocks_per_year_for(block_time_ms)
    return IssuanceSchedule(
        block_time_ms=block_time_ms,
        blocks_per_year=blocks_per_year,
        blocks_per_era=ERA_YEARS * blocks_per_year,
        era_budgets=_ERA_BUDGETS,
        era_prefix=_ERA_PREFIX,
    )


def check_height(height: int) -> None:
    """Raise :class:`IssuanceError` if ``height`` is negative."""
    if height < 0:
        raise IssuanceError(f"height must not be negative, got {height}")


def era_of(schedule: IssuanceSchedule, height: int) -> int | None:
    """
    Return the era that ``height`` belongs to.

    * ``None`` for the genesis height 0, which belongs to no era (it mints nothing);
    * ``k`` in ``0 .. ERA_COUNT - 1`` for ``1 + k * B <= height <= (k + 1) * B``;
    * :data:`ERA_COUNT` for every height after the last era (no subsidy).
    """
    check_height(height)
    if height == 0:
        return None
    return min((height - 1) // schedule.blocks_per_era, ERA_COUNT)


def era_budget(schedule: IssuanceSchedule, era: int) -> int:
    """Return the budget of era ``era``; raise :class:`IssuanceError` unless ``0 <= era < 34``."""
    if not 0 <= era < ERA_COUNT:
        raise IssuanceError(f"era must be in 0..{ERA_COUNT - 1}, got {era}")
    return schedule.era_budgets[era]


def mined_in_era_through(schedule: IssuanceSchedule, era: int, count: int) -> int:
    """
    Return the subsidy minted by the first ``count`` heights of era ``era``.

    ``0 <= count <= blocks_per_era``. Each height mints ``budget // B`` and the first
    ``budget % B`` heights one Shor more, so ``count`` heights mint
    ``count * (budget // B) + min(count, budget % B)``.
    """
    if not 0 <= count <= schedule.blocks_per_era:
        raise IssuanceError(f"count must be in 0..{schedule.blocks_per_era}, got {count}")
    reward, extra = divmod(era_budget(schedule, era), schedule.blocks_per_era)
    return count * reward + min(count, extra)


def block_subsidy(schedule: IssuanceSchedule, height: int) -> int:
    """Return the number of Shor the block at ``height`` may mint (0 at genesis and after)."""
    era = era_of(schedule, height)
    if era is None or era == ERA_COUNT:
        return 0
    reward, extra = divmod(era_budget(schedule, era), schedule.blocks_per_era)
    index = height - 1 - era * schedule.blocks_per_era
    return reward + 1 if index < extra else reward


def mined_through(schedule: IssuanceSchedule, height: int) -> int:
    """Return the total subsidy of heights ``1 .. height`` (0 for ``height == 0``)."""
    era = era_of(schedule, height)
    if era is None:
        return 0
    if era == ERA_COUNT:
        return MINING_TOTAL
    count = height - era * schedule.blocks_per_era
    return schedule.era_prefix[era] + mined_in_era_through(schedule, era, count)


def total_supply_through(schedule: IssuanceSchedule, height: int) -> int:
    """Return the supply once the block at ``height`` exists: genesis allocation plus mined."""
    return GENESIS_ALLOCATION + mined_through(schedule, height)


@dataclass(frozen=True)
class SupplyInfo:
    """
    A summary of issuance at one height.

    ``era`` is as returned by :func:`era_of` (``None`` at genesis, :data:`ERA_COUNT` after the last
    era); ``era_budget`` is that era's budget, or 0 when ``era`` is ``None`` or :data:`ERA_COUNT`.
    """

    height: int
    era: int | None
    subsidy: int
    mined: int
    supply: int
    era_budget: int
    blocks_per_era: int


def supply_info(schedule: IssuanceSchedule, height: int) -> SupplyInfo:
    """Return the :class:`SupplyInfo` of ``height`` under ``schedule``."""
    era = era_of(schedule, height)
    budget = 0 if era is None or era == ERA_COUNT else era_budget(schedule, era)
    mined = mined_through(schedule, height)
    return SupplyInfo(
        height=height,
        era=era,
        subsidy=block_subsidy(schedule, height),
        mined=mined,
        supply=GENESIS_ALLOCATION + mined,
        era_budget=budget,
        blocks_per_era=schedule.blocks_per_era,
    )


MAIN_SCHEDULE = schedule_for_block_time(MAIN_BLOCK_TIME_MS)
"""The schedule of the main network (10 s blocks: 3,155,760 blocks a year, 12,623,040 an era)."""
