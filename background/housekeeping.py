"""The lease holder's periodic chores (heartbeat log line, retention trimming) on one schedule.

A ``Housekeeping`` holds named chores, each with its interval, against an injectable monotonic clock. It has no
loop and no thread of its own: ``due(now)`` says which chores are due, and ``run_due()`` runs each due chore once
(the status observer calls it on every observation while this worker holds the lease). Chores are isolated: one
that raises is logged and waits for its next interval like one that succeeded, and the others still run.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Sequence

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Chore:
    """One periodic chore: ``action()`` every ``interval_seconds``; the first run is one interval after the schedule
    starts, or at once with ``run_at_start``."""

    name: str
    interval_seconds: float
    action: Callable[[], None]
    run_at_start: bool = False


class Housekeeping:
    """When each chore runs next, and running the due ones. ``expected_errors`` are failures logged without a
    traceback (e.g. the state store being unreachable); anything else is logged with one."""

    def __init__(self, chores: Sequence[Chore], *, clock: Callable[[], float] = time.monotonic,
                 expected_errors: tuple[type[Exception], ...] = ()) -> None:
        names = [chore.name for chore in chores]
        if len(set(names)) != len(names):
            raise ValueError(f"chore names must be unique: {names}")
        for chore in chores:
            if chore.interval_seconds <= 0:
                raise ValueError(f"chore {chore.name}: interval_seconds must be > 0")
        self.chores = tuple(chores)
        self.clock = clock
        self.expected_errors = expected_errors
        started = clock()
        self._next_run = {chore.name: started if chore.run_at_start else started + chore.interval_seconds
                          for chore in self.chores}

    def next_run(self, name: str) -> float:
        """The monotonic time at which chore ``name`` is due next."""
        return self._next_run[name]

    def due(self, now: float) -> list[Chore]:
        """The chores due at monotonic time ``now``, in the order they were given (nothing is run)."""
        return [chore for chore in self.chores if now >= self._next_run[chore.name]]

    def run_due(self, now: float | None = None) -> list[str]:
        """Run every due chore once and schedule its next run one interval from ``now`` (the clock's time when not
        given), whether it succeeded or raised. Returns the names of the chores that ran."""
        now = self.clock() if now is None else now
        ran: list[str] = []
        for chore in self.due(now):
            self._next_run[chore.name] = now + chore.interval_seconds
            ran.append(chore.name)
            try:
                chore.action()
            except self.expected_errors as exc:
                logger.warning("BG_POLLER: housekeeping chore %s failed (%s)", chore.name, exc)
            except Exception:  # one chore's bug must not stop the others, nor the observer that runs them
                logger.warning("BG_POLLER: housekeeping chore %s failed", chore.name, exc_info=True)
        return ran
