"""Unit tests of services/circuit_breaker.py: closed / open / half-open on a clock the test moves, the single trial
call, the reset on success, and the transitions it reports. How the R2 offload uses it (which failures count, what is
logged) is proven in test_r2_offload_unit.py and test_r2_resilience.py."""

from __future__ import annotations

import threading

from services.circuit_breaker import BreakerState, BreakerTransition, CircuitBreaker


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def opened_breaker(clock: FakeClock, threshold: int = 2, cooldown: float = 30, **kwargs) -> CircuitBreaker:
    breaker = CircuitBreaker(threshold, cooldown, clock, **kwargs)
    for _ in range(threshold):
        breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    return breaker


def test_it_stays_closed_and_allows_calls_below_the_failure_threshold():
    breaker = CircuitBreaker(3, 30, FakeClock())
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.allow() and breaker.allow()
    assert breaker.openings == 0


def test_it_opens_at_the_threshold_of_consecutive_failures_and_refuses_calls():
    breaker = CircuitBreaker(3, 30, FakeClock())
    for _ in range(3):
        assert breaker.allow()
        breaker.record_failure()
    assert breaker.state is BreakerState.OPEN and breaker.openings == 1
    assert not breaker.allow() and not breaker.allow()


def test_a_threshold_below_one_opens_on_the_first_failure():
    breaker = CircuitBreaker(0, 30, FakeClock())
    assert breaker.failure_threshold == 1
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN


def test_a_success_resets_the_consecutive_failure_count():
    breaker = CircuitBreaker(2, 60, FakeClock())
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN


def test_it_refuses_calls_until_the_cooldown_has_passed_on_the_injected_clock():
    clock = FakeClock()
    breaker = opened_breaker(clock, cooldown=30)
    clock.now += 29.9
    assert not breaker.allow() and breaker.state is BreakerState.OPEN
    clock.now += 0.1
    assert breaker.allow()
    assert breaker.state is BreakerState.HALF_OPEN


def test_half_open_grants_exactly_one_trial_until_its_result_is_recorded():
    clock = FakeClock()
    breaker = opened_breaker(clock)
    clock.now += 30
    assert breaker.allow()                          # the trial
    clock.now += 1000
    assert not breaker.allow() and not breaker.allow()  # however long it takes, no second caller
    assert breaker.state is BreakerState.HALF_OPEN


def test_half_open_grants_exactly_one_trial_under_concurrency():
    clock = FakeClock()
    breaker = CircuitBreaker(1, 10, clock)
    breaker.record_failure()
    clock.now += 10
    start = threading.Barrier(16)
    granted: list[bool] = []
    lock = threading.Lock()

    def contend() -> None:
        start.wait()
        allowed = breaker.allow()
        with lock:
            granted.append(allowed)

    threads = [threading.Thread(target=contend) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert granted.count(True) == 1 and len(granted) == 16


def test_a_successful_trial_closes_the_circuit_and_calls_flow_again():
    clock = FakeClock()
    breaker = opened_breaker(clock)
    clock.now += 30
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.allow() and breaker.allow()
    breaker.record_failure()   # the count restarted from zero: one failure is below the threshold of 2
    assert breaker.state is BreakerState.CLOSED


def test_a_failed_trial_opens_the_circuit_again_for_a_full_cooldown():
    clock = FakeClock()
    breaker = opened_breaker(clock, cooldown=30)
    clock.now += 30
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN and breaker.openings == 2
    clock.now += 29.9
    assert not breaker.allow()
    clock.now += 0.1
    assert breaker.allow()


def test_a_late_failure_while_open_neither_reopens_nor_extends_the_cooldown():
    # Given an open circuit, and a call started before the opening that fails afterwards
    clock = FakeClock()
    breaker = opened_breaker(clock, cooldown=30)
    clock.now += 20
    breaker.record_failure()
    # Then it counts as no new opening, and the cool-down still ends 30 s after the first opening
    assert breaker.openings == 1
    clock.now += 10
    assert breaker.allow()


def test_a_late_success_while_open_closes_the_circuit():
    breaker = opened_breaker(FakeClock())
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED and breaker.allow()


def test_every_change_of_state_is_reported_once_with_the_failure_count():
    clock = FakeClock()
    seen: list[BreakerTransition] = []
    breaker = CircuitBreaker(2, 30, clock, on_transition=seen.append)
    breaker.record_failure()
    breaker.record_success()          # closed -> closed: nothing to report
    assert seen == []
    breaker.record_failure()
    breaker.record_failure()          # opens
    breaker.record_failure()          # late failure while open: no change
    assert not breaker.allow()        # still cooling down: no change
    clock.now += 30
    assert breaker.allow()            # half-open, trial granted
    assert not breaker.allow()        # no second trial, no change
    breaker.record_failure()          # trial failed: open again
    clock.now += 30
    assert breaker.allow()
    breaker.record_success()          # trial succeeded: closed
    closed, opened, half = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN
    assert seen == [BreakerTransition(closed, opened, 2), BreakerTransition(opened, half, 3),
                    BreakerTransition(half, opened, 4), BreakerTransition(opened, half, 4),
                    BreakerTransition(half, closed, 0)]


def test_the_transition_callback_runs_outside_the_lock_and_may_read_the_state():
    states: list[BreakerState] = []
    breaker: CircuitBreaker

    def read_state(change: BreakerTransition) -> None:
        states.append(breaker.state)   # would deadlock if called with the lock held

    breaker = CircuitBreaker(1, 30, FakeClock(), on_transition=read_state)
    breaker.record_failure()
    assert states == [BreakerState.OPEN]


def test_the_state_is_an_enum_that_still_compares_equal_to_its_plain_name():
    breaker = CircuitBreaker(1, 30, FakeClock())
    assert breaker.state is BreakerState.CLOSED and breaker.state == "closed" and str(breaker.state) == "closed"
    breaker.record_failure()
    assert breaker.state == "open"
    assert BreakerState.HALF_OPEN == "half_open"
