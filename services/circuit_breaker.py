"""A circuit breaker: after consecutive failures of a dependency, skip it for a cool-down, then let one trial call
decide whether it is back. Pure state (no I/O, no logging, no knowledge of what it guards): the caller reports each
call's result, and learns of state changes through an optional ``on_transition`` callback, which is where it logs in
its own words. Thread-safe; the clock is injectable so tests move time themselves.
"""

from __future__ import annotations

import enum
import threading
import time
from dataclasses import dataclass
from typing import Callable


class BreakerState(enum.StrEnum):
    """A ``StrEnum`` so that the state still compares equal to (and prints as) its plain name."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class BreakerTransition:
    """One change of state; ``consecutive_failures`` is the count at that moment (0 after a success)."""

    previous: BreakerState
    current: BreakerState
    consecutive_failures: int


class CircuitBreaker:
    """``failure_threshold`` consecutive failures open the circuit for ``cooldown_seconds``; then ``allow`` grants
    one trial call (half-open), whose success closes it and whose failure opens it again. Any success closes the
    circuit and resets the count."""

    def __init__(self, failure_threshold: int, cooldown_seconds: float,
                 clock: Callable[[], float] = time.monotonic,
                 on_transition: Callable[[BreakerTransition], None] | None = None) -> None:
        self.failure_threshold = max(1, int(failure_threshold))
        self.cooldown_seconds = float(cooldown_seconds)
        self._clock = clock
        self._on_transition = on_transition
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trial_in_flight = False
        self.openings = 0

    @property
    def state(self) -> BreakerState:
        with self._lock:
            return self._state

    def allow(self) -> bool:
        """May a call be made now? In half-open state only one caller gets the trial."""
        transition = None
        with self._lock:
            if self._state is BreakerState.CLOSED:
                return True
            if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self.cooldown_seconds:
                transition = self._move_to(BreakerState.HALF_OPEN)
                self._trial_in_flight = False
            allowed = self._state is BreakerState.HALF_OPEN and not self._trial_in_flight
            if allowed:
                self._trial_in_flight = True
        self._announce(transition)
        return allowed

    def record_success(self) -> None:
        with self._lock:
            self._failures = 0
            self._trial_in_flight = False
            transition = self._move_to(BreakerState.CLOSED)
        self._announce(transition)

    def release_trial(self) -> None:
        """The caller that was granted the half-open trial made no call after all (nothing to do, or an outcome
        that says nothing of the dependency): the next ``allow`` grants the trial again."""
        with self._lock:
            if self._state is BreakerState.HALF_OPEN:
                self._trial_in_flight = False

    def record_failure(self) -> None:
        transition = None
        with self._lock:
            self._failures += 1
            # A late failure while already open (a call started before the opening) does not open it again.
            if self._state is BreakerState.HALF_OPEN or (
                    self._state is BreakerState.CLOSED and self._failures >= self.failure_threshold):
                transition = self._move_to(BreakerState.OPEN)
                self._opened_at = self._clock()
                self._trial_in_flight = False
                self.openings += 1
        self._announce(transition)

    def _move_to(self, state: BreakerState) -> BreakerTransition | None:
        """Set the state (lock held); the transition to announce, or None when nothing changed."""
        previous, self._state = self._state, state
        if previous is state:
            return None
        return BreakerTransition(previous, state, self._failures)

    def _announce(self, transition: BreakerTransition | None) -> None:
        # Outside the lock: the callback may log, or even ask the breaker for its state.
        if transition is not None and self._on_transition is not None:
            self._on_transition(transition)
