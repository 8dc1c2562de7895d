"""The compute market's genesis parameters (docs/spec/compute.md §1).

They are part of a network's genesis (its ``"compute_market"`` object, committed by the genesis
hash) and of its genesis *state*: the execution layer writes :meth:`ComputeParams.encode` under the
``compute-market`` actor's storage key :data:`PARAMS_KEY`, and the actor reads them from there, so a
stateless re-execution reads the very same values from its witness.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from qoin.errors import QoinError
from qoin.storage.params import PPM, MarketParams, int_fields, int_fields_from_json

PARAMS_KEY = b"params"
"""The key of the parameters in the actor's storage."""
MAX_PHASE_BLOCKS = 1 << 20
"""The longest fixed phase (staging, reveal, dispute window, mediation allowance), in blocks."""
MAX_BID_BLOCKS = 1 << 24
MAX_TIMEOUT = 30 * 86_400
"""The longest job timeout any network may allow, in seconds (30 days)."""
MAX_BLOCK_MS = 3_600_000
MAX_COLLATERAL_PPM = 100 * PPM
"""The largest collateral multiple k (100, in parts per million)."""
MAX_EXIT_BLOCKS = 1 << 24
MAX_STAKE = (1 << 63) - 1


class ComputeParamsError(QoinError):
    """Compute market parameters out of their bounds."""


@dataclass(frozen=True)
class ComputeParams(MarketParams):
    """The compute market's parameters (the table of docs/spec/compute.md §1)."""

    ERROR = ComputeParamsError
    LABEL = "compute market"

    block_ms: int = 5_000
    """Milliseconds per block assumed when a job's timeout becomes blocks: below the target block
    time, so that a run budget in blocks lasts at least the timeout even when blocks come fast."""
    staging_blocks: int = 60
    """Blocks added to every run budget for staging inputs, pulling an image and hashing outputs."""
    reveal_blocks: int = 30
    """Blocks of the reveal phase."""
    dispute_blocks: int = 60
    """Blocks of the dispute window after the results are revealed (spot and replicated)."""
    mediation_blocks: int = 120
    """Blocks a mediator has for its verdict, on top of the job's run budget (it re-runs it)."""
    max_bid_blocks: int = 8_640
    """How far ahead of its height a bid's deadline may lie."""
    max_timeout: int = 86_400
    """The longest job timeout a bid may ask for, in seconds."""
    min_collateral_ppm: int = PPM
    """The smallest collateral multiple k an ask may offer (ppm of its largest payment)."""
    fine_client_ppm: int = 500_000
    """Share of a fined provider's collateral (after the mediator's fee) paid to the client; the
    rest is burnt."""
    min_mediator_stake: int = 1_000_000_000
    """The least stake a registered mediator holds, in Shor."""
    mediator_exit_blocks: int = 8_640
    """Blocks from a mediator's ``unregister_mediator`` to the earliest return of its stake."""
    mediator_slash_ppm: int = 100_000
    """Share of a mediator's stake slashed (burnt) when its verdict does not come in time."""

    def checks(self) -> tuple[tuple[bool, str], ...]:
        """Every bound as ``(holds, what it is)``."""
        return (
            (1 <= self.block_ms <= MAX_BLOCK_MS, f"block_ms is 1 to {MAX_BLOCK_MS}"),
            (
                0 <= self.staging_blocks <= MAX_PHASE_BLOCKS,
                f"staging_blocks is 0 to {MAX_PHASE_BLOCKS}",
            ),
            (
                1 <= self.reveal_blocks <= MAX_PHASE_BLOCKS,
                f"reveal_blocks is 1 to {MAX_PHASE_BLOCKS}",
            ),
            (
                1 <= self.dispute_blocks <= MAX_PHASE_BLOCKS,
                f"dispute_blocks is 1 to {MAX_PHASE_BLOCKS}",
            ),
            (
                1 <= self.mediation_blocks <= MAX_PHASE_BLOCKS,
                f"mediation_blocks is 1 to {MAX_PHASE_BLOCKS}",
            ),
            (
                1 <= self.max_bid_blocks <= MAX_BID_BLOCKS,
                f"max_bid_blocks is 1 to {MAX_BID_BLOCKS}",
            ),
            (1 <= self.max_timeout <= MAX_TIMEOUT, f"max_timeout is 1 to {MAX_TIMEOUT} seconds"),
            (
                0 <= self.min_collateral_ppm <= MAX_COLLATERAL_PPM,
                f"min_collateral_ppm is 0 to {MAX_COLLATERAL_PPM}",
            ),
            (0 <= self.fine_client_ppm <= PPM, f"fine_client_ppm is 0 to {PPM}"),
            (1 <= self.min_mediator_stake <= MAX_STAKE, f"min_mediator_stake is 1 to {MAX_STAKE}"),
            (
                0 <= self.mediator_exit_blocks <= MAX_EXIT_BLOCKS,
                f"mediator_exit_blocks is 0 to {MAX_EXIT_BLOCKS}",
            ),
            (0 <= self.mediator_slash_ppm <= PPM, f"mediator_slash_ppm is 0 to {PPM}"),
        )

    def run_blocks(self, timeout: int) -> int:
        """A job's run budget in blocks: ``ceil(timeout * 1000 / block_ms) + staging_blocks``."""
        return -(-timeout * 1000 // self.block_ms) + self.staging_blocks

    def mediation_budget(self, timeout: int) -> int:
        """Blocks a mediator has for its verdict: twice the job's run budget (it may run the job
        twice, to tell a wrong result from a non-deterministic job) plus ``mediation_blocks``."""
        return 2 * self.run_blocks(timeout) + self.mediation_blocks


def astuple_ints(params: ComputeParams) -> tuple[int, ...]:
    """The parameters' values in declaration order."""
    return int_fields(params)


MAINNET = ComputeParams()
"""The mainnet values (10-second blocks)."""
DEVNET = ComputeParams(
    block_ms=100,
    staging_blocks=100,
    reveal_blocks=20,
    dispute_blocks=20,
    mediation_blocks=100,
    max_bid_blocks=200,
    max_timeout=3_600,
    min_mediator_stake=1_000_000,
    mediator_exit_blocks=50,
)
"""Values that let a devnet with 100 ms blocks run a job, a dispute and a mediation in minutes
(with 2-second blocks every budget only lasts longer)."""


def to_json(params: ComputeParams) -> dict[str, int]:
    """The genesis file's ``"compute_market"`` object."""
    return asdict(params)


def from_json(obj: Any) -> ComputeParams:
    """Parse a ``"compute_market"`` object: known integer fields only; missing ones take the
    mainnet value. :class:`ComputeParamsError` on anything else."""
    return int_fields_from_json(obj, ComputeParams, "compute_market", ComputeParamsError)
