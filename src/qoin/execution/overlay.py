"""The state a block's execution reads and writes: a journaled overlay over the parent state.

Execution reads and writes state-tree leaves by key through a :class:`StateOverlay`:

* reads fall through to the *base* (the parent state: a database, or the proven values of a
  witness) once per key, and are cached;
* writes stay in the overlay; :meth:`StateOverlay.checkpoint` / :meth:`~StateOverlay.revert` undo
  the writes of a call frame (and of every frame it called);
* the block is cut into *steps* (the cron step, each transaction, the coinbase payouts): for each
  step the overlay records the value every key it accessed had before the step, and the values it
  changed. That record (:class:`StepAccess`) is what a witness proves and what account state
  sampling re-executes a step from (docs/spec/sampling.md); a block's records together are its
  trace (:mod:`qoin.execution.trace`).

Values are never removed from the tree: a deleted storage value is written as the empty value
(docs/decisions.md #22).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from qoin.errors import QoinError
from qoin.state.smt import MAX_VALUE_SIZE

Read = Callable[[bytes], bytes | None]
"""A lookup of a state-tree key: its value, or None if absent."""


class TraceIncomplete(QoinError):
    """A step read a key that its recorded access does not cover."""


@dataclass(frozen=True)
class StepAccess:
    """What one step read and wrote."""

    pre: tuple[tuple[bytes, bytes | None], ...]
    """Every key the step accessed, with its value before the step (None: absent), sorted by key."""
    post: tuple[tuple[bytes, bytes], ...]
    """Every key whose value the step changed, with its value after the step, sorted by key."""
    fee: int = 0
    """Shor the step charged its sender (a transaction's fee; 0 for the cron and payout steps)."""

    def keys(self) -> list[bytes]:
        """The keys the step accessed."""
        return [key for key, _ in self.pre]


class StateOverlay:
    """Reads through to ``base``, keeps writes, journals them for frames, records step access."""

    def __init__(self, base: Read) -> None:
        self._base = base
        self._original: dict[bytes, bytes | None] = {}
        self._values: dict[bytes, bytes | None] = {}
        self._journal: list[tuple[bytes, bytes | None]] = []
        self._step_pre: dict[bytes, bytes | None] = {}
        self._steps: list[StepAccess] = []

    # -- values ------------------------------------------------------------------------------------

    def _current(self, key: bytes) -> bytes | None:
        values = self._values
        if key in values:
            value = values[key]
        else:
            value = self._base(key)
            self._original[key] = value
            values[key] = value
        if key not in self._step_pre:
            self._step_pre[key] = value
        return value

    def get(self, key: bytes) -> bytes | None:
        """The current value of ``key`` (None: absent)."""
        return self._current(key)

    def set(self, key: bytes, value: bytes) -> None:
        """Write ``value`` under ``key`` (journaled: a revert undoes it)."""
        if len(value) > MAX_VALUE_SIZE:
            raise ValueError(f"state values are at most {MAX_VALUE_SIZE} bytes")
        old = self._current(key)
        self._journal.append((key, old))
        self._values[key] = value

    # -- frames ------------------------------------------------------------------------------------

    def checkpoint(self) -> int:
        """A mark to :meth:`revert` to."""
        return len(self._journal)

    def revert(self, mark: int) -> None:
        """Undo every write made since ``mark``."""
        journal, values = self._journal, self._values
        while len(journal) > mark:
            key, old = journal.pop()
            values[key] = old

    # -- steps -------------------------------------------------------------------------------------

    def end_step(self, fee: int = 0) -> StepAccess:
        """Close the current step (which charged ``fee``): record what it accessed and changed;
        start the next one."""
        values = self._values
        pre = self._step_pre
        access = StepAccess(
            tuple(sorted(pre.items())),
            tuple(
                sorted(
                    (key, value)
                    for key, before in pre.items()
                    if (value := values[key]) != before and value is not None
                )
            ),
            fee,
        )
        self._steps.append(access)
        self._step_pre = {}
        self._journal.clear()
        return access

    @property
    def steps(self) -> tuple[StepAccess, ...]:
        """The closed steps, in order."""
        return tuple(self._steps)

    def touched(self) -> list[bytes]:
        """Every key read from the base so far, in first-read order (what a witness proves)."""
        return list(self._original)

    def values(self) -> dict[bytes, bytes | None]:
        """The current value of every key read or written (the post-state of what was touched)."""
        return dict(self._values)

    def changes(self) -> dict[bytes, bytes]:
        """Every key whose value differs from the base, with its new value (the tree update)."""
        original = self._original
        return {
            key: value
            for key, value in self._values.items()
            if value is not None and value != original[key]
        }


def step_reader(access: StepAccess) -> Read:
    """A base that serves exactly a step's recorded pre-values (re-executing one step)."""
    known = dict(access.pre)

    def read(key: bytes) -> bytes | None:
        if key not in known:
            raise TraceIncomplete(f"the step reads key {key.hex()}, which its access record lacks")
        return known[key]

    return read
