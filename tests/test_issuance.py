"""Tests of exact token issuance (``qoin.chain.issuance``) and the ``qoin supply`` command."""

from __future__ import annotations

import json

import pytest
import typer
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from qoin.chain.issuance import (
    ERA_COUNT,
    GENESIS_ALLOCATION,
    JULIAN_YEAR_MS,
    MAIN_BLOCK_TIME_MS,
    MAIN_SCHEDULE,
    MINING_TOTAL,
    SUPPLY_CAP,
    IssuanceError,
    IssuanceSchedule,
    block_subsidy,
    era_budget,
    era_of,
    mined_through,
    schedule_for_block_time,
    supply_info,
    total_supply_through,
)
from qoin.cli import supply

BLOCK_TIMES_MS = (1, 1_000, MAIN_BLOCK_TIME_MS, 600_000, JULIAN_YEAR_MS)
"""1 ms, 1 s, 10 s (main network), 10 min, and one block a year (4 blocks an era)."""

SCHEDULES = tuple(schedule_for_block_time(ms) for ms in BLOCK_TIMES_MS)

MAIN_B = 12_623_040


def schedule_and_height(past_end: int = 10) -> st.SearchStrategy[tuple[IssuanceSchedule, int]]:
    """Draw a schedule and a height from 0 up to ``past_end`` eras past the last one."""
    return st.sampled_from(SCHEDULES).flatmap(
        lambda s: st.tuples(
            st.just(s),
            st.integers(min_value=0, max_value=(ERA_COUNT + past_end) * s.blocks_per_era),
        )
    )


def boundary_height() -> st.SearchStrategy[tuple[IssuanceSchedule, int]]:
    """Draw a schedule and a height within two blocks of an era boundary."""
    return st.sampled_from(SCHEDULES).flatmap(
        lambda s: st.tuples(
            st.just(s),
            st.builds(
                lambda k, d: max(0, k * s.blocks_per_era + d),
                st.integers(min_value=0, max_value=ERA_COUNT + 1),
                st.integers(min_value=-2, max_value=2),
            ),
        )
    )


# --- constants and schedule ----------------------------------------------------------------------


def test_genesis_allocation_is_ten_percent_of_cap() -> None:
    assert GENESIS_ALLOCATION * 10 == SUPPLY_CAP
    assert MINING_TOTAL == 108_000_000_000_000
    assert GENESIS_ALLOCATION + MINING_TOTAL == SUPPLY_CAP


def test_main_network_schedule() -> None:
    assert schedule_for_block_time(MAIN_BLOCK_TIME_MS) == MAIN_SCHEDULE
    assert IssuanceSchedule.for_block_time(MAIN_BLOCK_TIME_MS) == MAIN_SCHEDULE
    assert MAIN_SCHEDULE.blocks_per_year == 3_155_760
    assert MAIN_SCHEDULE.blocks_per_era == MAIN_B
    assert MAIN_SCHEDULE.last_height == ERA_COUNT * MAIN_B
    assert len(MAIN_SCHEDULE.era_budgets) == ERA_COUNT
    assert len(MAIN_SCHEDULE.era_prefix) == ERA_COUNT + 1
    assert MAIN_SCHEDULE.era_prefix[0] == 0
    assert MAIN_SCHEDULE.era_prefix[ERA_COUNT] == MINING_TOTAL


@pytest.mark.parametrize("ms", [0, -1, -10_000, JULIAN_YEAR_MS + 1, 10**20])
def test_bad_block_time_raises(ms: int) -> None:
    with pytest.raises(IssuanceError):
        schedule_for_block_time(ms)


def test_inconsistent_schedule_is_rejected() -> None:
    s = MAIN_SCHEDULE
    with pytest.raises(IssuanceError):
        IssuanceSchedule(
            s.block_time_ms, s.blocks_per_year, s.blocks_per_era + 1, s.era_budgets, s.era_prefix
        )
    with pytest.raises(IssuanceError):
        IssuanceSchedule(0, 1, 4, s.era_budgets, s.era_prefix)


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("height", [-1, -2, -(10**30)])
def test_negative_height_raises(schedule: IssuanceSchedule, height: int) -> None:
    for query in (era_of, block_subsidy, mined_through, total_supply_through, supply_info):
        with pytest.raises(IssuanceError):
            query(schedule, height)


@pytest.mark.parametrize("era", [-1, ERA_COUNT, ERA_COUNT + 1])
def test_era_budget_out_of_range_raises(era: int) -> None:
    with pytest.raises(IssuanceError):
        era_budget(MAIN_SCHEDULE, era)


# --- era budgets ---------------------------------------------------------------------------------


def test_era_budgets_halve_and_last_era_takes_the_remainder() -> None:
    budgets = [era_budget(MAIN_SCHEDULE, k) for k in range(ERA_COUNT)]
    assert budgets[0] == 54_000_000_000_000
    for k in range(ERA_COUNT - 2):  # k = 0 .. 31
        assert budgets[k + 1] == budgets[k] // 2
    assert budgets[ERA_COUNT - 1] == MINING_TOTAL - sum(budgets[: ERA_COUNT - 1])
    assert sum(budgets) == MINING_TOTAL
    # The integer rule makes the last era differ from a plain halving: era 32 is
    # 54e12 // 2**32 = 12,572, and halving again would give 6,286. Instead era 33 takes everything
    # the halving series never reaches (the tail 54e12/2**33 + 54e12/2**34 + ... ~ 12,572.5) plus
    # every Shor the 32 floor divisions dropped: 12,583 Shor, slightly more than era 32 itself.
    assert budgets[ERA_COUNT - 2] == 12_572
    assert budgets[ERA_COUNT - 1] == 12_583
    assert budgets[ERA_COUNT - 1] != budgets[ERA_COUNT - 2] // 2


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_budgets_do_not_depend_on_block_time(schedule: IssuanceSchedule) -> None:
    assert schedule.era_budgets == MAIN_SCHEDULE.era_budgets
    assert schedule.era_prefix == MAIN_SCHEDULE.era_prefix


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_era_sums_equal_budgets_closed_form(schedule: IssuanceSchedule) -> None:
    b = schedule.blocks_per_era
    for k in range(ERA_COUNT):
        assert mined_through(schedule, (k + 1) * b) - mined_through(schedule, k * b) == (
            era_budget(schedule, k)
        )
        assert era_of(schedule, 1 + k * b) == k
        assert era_of(schedule, (k + 1) * b) == k
    assert era_of(schedule, ERA_COUNT * b + 1) == ERA_COUNT


@pytest.mark.parametrize("ms", [JULIAN_YEAR_MS, JULIAN_YEAR_MS // 4, JULIAN_YEAR_MS // 3 + 7])
def test_brute_force_tiny_schedule(ms: int) -> None:
    """Loop over every height of a tiny schedule and compare with the closed forms."""
    schedule = schedule_for_block_time(ms)
    b = schedule.blocks_per_era
    if ms == JULIAN_YEAR_MS:
        assert schedule.blocks_per_year == 1
        assert b == 4
    assert block_subsidy(schedule, 0) == 0
    running = 0
    era_sums = [0] * ERA_COUNT
    for height in range(1, ERA_COUNT * b + 3 * b + 1):
        subsidy = block_subsidy(schedule, height)
        era = (height - 1) // b
        if era < ERA_COUNT:
            budget = era_budget(schedule, era)
            index = height - 1 - era * b
            assert subsidy == budget // b + (1 if index < budget % b else 0)
            era_sums[era] += subsidy
        else:
            assert subsidy == 0
        assert era_of(schedule, height) == min(era, ERA_COUNT)
        running += subsidy
        assert mined_through(schedule, height) == running
        assert total_supply_through(schedule, height) == GENESIS_ALLOCATION + running
    assert era_sums == list(schedule.era_budgets)
    assert running == MINING_TOTAL


# --- caps ----------------------------------------------------------------------------------------


@given(schedule_and_height())
def test_never_exceeds_cap(case: tuple[IssuanceSchedule, int]) -> None:
    schedule, height = case
    mined = mined_through(schedule, height)
    assert 0 <= mined <= MINING_TOTAL
    assert GENESIS_ALLOCATION <= total_supply_through(schedule, height) <= SUPPLY_CAP
    assert block_subsidy(schedule, height) >= 0


@given(schedule_and_height(past_end=1))
def test_mined_is_monotone_and_below_cap_before_last_era(
    case: tuple[IssuanceSchedule, int],
) -> None:
    schedule, height = case
    assert mined_through(schedule, height) <= mined_through(schedule, height + 1)
    # Era 33 holds only 12,583 Shor; with B > 12,583 its later heights mint 0, so the cap can be
    # reached inside the last era. Before the last era starts, it is never reached.
    if height <= (ERA_COUNT - 1) * schedule.blocks_per_era:
        assert mined_through(schedule, height) < MINING_TOTAL
        assert total_supply_through(schedule, height) < SUPPLY_CAP


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_exactly_cap_at_last_height(schedule: IssuanceSchedule) -> None:
    last = schedule.last_height
    assert mined_through(schedule, last) == MINING_TOTAL
    assert total_supply_through(schedule, last) == SUPPLY_CAP
    assert block_subsidy(schedule, last + 1) == 0
    assert era_of(schedule, last) == ERA_COUNT - 1
    assert era_of(schedule, last + 1) == ERA_COUNT


@given(
    st.sampled_from(SCHEDULES),
    st.integers(min_value=0, max_value=10**30),
)
def test_exactly_cap_after_last_height(schedule: IssuanceSchedule, offset: int) -> None:
    height = schedule.last_height + offset
    assert mined_through(schedule, height) == MINING_TOTAL
    assert total_supply_through(schedule, height) == SUPPLY_CAP
    if offset > 0:
        assert block_subsidy(schedule, height) == 0
        assert era_of(schedule, height) == ERA_COUNT
        info = supply_info(schedule, height)
        assert (info.era, info.subsidy, info.era_budget) == (ERA_COUNT, 0, 0)


# --- genesis and consistency ---------------------------------------------------------------------


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_genesis(schedule: IssuanceSchedule) -> None:
    assert block_subsidy(schedule, 0) == 0
    assert mined_through(schedule, 0) == 0
    assert total_supply_through(schedule, 0) == GENESIS_ALLOCATION
    assert era_of(schedule, 0) is None
    info = supply_info(schedule, 0)
    assert (info.era, info.subsidy, info.mined, info.supply, info.era_budget) == (
        None,
        0,
        0,
        GENESIS_ALLOCATION,
        0,
    )


@given(schedule_and_height())
def test_mined_difference_is_subsidy(case: tuple[IssuanceSchedule, int]) -> None:
    schedule, height = case
    if height >= 1:
        assert mined_through(schedule, height) - mined_through(schedule, height - 1) == (
            block_subsidy(schedule, height)
        )


@given(boundary_height())
def test_mined_difference_is_subsidy_at_boundaries(case: tuple[IssuanceSchedule, int]) -> None:
    schedule, height = case
    if height >= 1:
        assert mined_through(schedule, height) - mined_through(schedule, height - 1) == (
            block_subsidy(schedule, height)
        )


@given(schedule_and_height())
def test_supply_info_agrees(case: tuple[IssuanceSchedule, int]) -> None:
    schedule, height = case
    info = supply_info(schedule, height)
    assert info.height == height
    assert info.era == era_of(schedule, height)
    assert info.subsidy == block_subsidy(schedule, height)
    assert info.mined == mined_through(schedule, height)
    assert info.supply == total_supply_through(schedule, height) == GENESIS_ALLOCATION + info.mined
    assert info.blocks_per_era == schedule.blocks_per_era


# --- main-network numbers ------------------------------------------------------------------------


def test_era0_reward_at_ten_seconds() -> None:
    # 54,000,000,000,000 = 4,277,891 * 12,623,040 + 10,791,360: the first 10,791,360 heights of
    # era 0 mint 4,277,892 Shor, the remaining 1,831,680 mint 4,277,891.
    reward, extra = divmod(54_000_000_000_000, MAIN_B)
    assert (reward, extra) == (4_277_891, 10_791_360)
    assert block_subsidy(MAIN_SCHEDULE, 1) == 4_277_892
    assert block_subsidy(MAIN_SCHEDULE, extra) == 4_277_892
    assert block_subsidy(MAIN_SCHEDULE, extra + 1) == 4_277_891
    assert block_subsidy(MAIN_SCHEDULE, MAIN_B) == 4_277_891
    assert block_subsidy(MAIN_SCHEDULE, MAIN_B + 1) == 27_000_000_000_000 // MAIN_B + 1


def test_first_year_issuance_at_ten_seconds() -> None:
    year = MAIN_SCHEDULE.blocks_per_year
    # One quarter of era 0 is 13.5e12 on average: the four years of era 0 mint exactly 54e12.
    assert mined_through(MAIN_SCHEDULE, 4 * year) == 4 * 13_500_000_000_000
    # The +1 Shor remainder is front-loaded (10,791,360 > 3,155,760 heights), so year 1 itself
    # mints 13.5e12 plus 457,920 Shor: 3,155,760 * 4,277,892 = 13,500,000,457,920.
    first_year = mined_through(MAIN_SCHEDULE, year)
    assert first_year == year * 4_277_892 == 13_500_000_000_000 + 457_920
    assert abs(first_year - 13_500_000_000_000) <= year  # within 1 Shor a block of 13.5e12


# --- CLI -----------------------------------------------------------------------------------------


def make_app() -> typer.Typer:
    """A throwaway app with ``supply`` and a dummy command (so sub-commands are not collapsed)."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    supply.register(app)

    @app.command()
    def dummy() -> None:
        """Keep the app a group."""

    return app


RUNNER = CliRunner()


def test_cli_genesis_json() -> None:
    result = RUNNER.invoke(make_app(), ["supply", "--height", "0", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "height": 0,
        "era": None,
        "subsidy": 0,
        "mined": 0,
        "supply": GENESIS_ALLOCATION,
        "era_budget": 0,
        "blocks_per_era": MAIN_B,
        "block_time_ms": MAIN_BLOCK_TIME_MS,
        "cap": SUPPLY_CAP,
    }


def test_cli_mid_era_json() -> None:
    height = 3 * MAIN_B + MAIN_B // 2
    result = RUNNER.invoke(make_app(), ["supply", "--height", str(height), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    budget = 54_000_000_000_000 // 8
    assert divmod(budget, MAIN_B) == (534_736, 6_082_560)
    expected_mined = (
        54_000_000_000_000
        + 27_000_000_000_000
        + 13_500_000_000_000
        + (MAIN_B // 2) * 534_736  # MAIN_B // 2 heights into era 3 ...
        + 6_082_560  # ... all of the +1 Shor heights of era 3 are among them
    )
    assert data == {
        "height": height,
        "era": 3,
        "subsidy": budget // MAIN_B,  # index MAIN_B // 2 - 1 >= 6,082,560: no +1
        "mined": expected_mined,
        "supply": GENESIS_ALLOCATION + expected_mined,
        "era_budget": budget,
        "blocks_per_era": MAIN_B,
        "block_time_ms": MAIN_BLOCK_TIME_MS,
        "cap": SUPPLY_CAP,
    }
    assert all(type(v) is int for v in data.values())


def test_cli_block_time_option_and_plain_output() -> None:
    result = RUNNER.invoke(
        make_app(), ["supply", "--height", "5", "--block-time-ms", str(JULIAN_YEAR_MS)]
    )
    assert result.exit_code == 0, result.output
    assert "height:          5" in result.stdout
    assert "era:             1 of 34" in result.stdout
    assert "120,000,000,000,000" in result.stdout
    assert "blocks per era:  4 " in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--height", "-5"], "height must not be negative"),
        (["--height=-1", "--json"], "height must not be negative"),
        (["--height", "3", "--block-time-ms", "0"], "block time must be a positive"),
        (
            ["--height", "3", "--block-time-ms", str(JULIAN_YEAR_MS + 1)],
            "longer than a Julian year",
        ),
    ],
)
def test_cli_bad_input_exits_2(args: list[str], message: str) -> None:
    result = RUNNER.invoke(make_app(), ["supply", *args])
    assert result.exit_code == 2
    assert message in result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.output
    assert not isinstance(result.exception, IssuanceError)
