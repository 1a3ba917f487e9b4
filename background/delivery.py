"""The outbox delivery loop: claims due webhooks from the state store and makes one attempt each.

Separate from mailbox reading: a slow or dead receiver never stops new emails from being read and queued. It acts
only while this worker holds the lease and re-checks the token in the store before every attempt. Outcomes: 2xx →
delivered (the email is then flagged done by the poller); connection errors, timeouts, 408, 429, 5xx → retried on
the schedule until ``WEBHOOK_RETRY_HOURS`` have passed since the first attempt; other 4xx/3xx → dead letter.
Whatever else fails in an attempt ends in a recorded outcome too, never in the loop: a body that cannot be
serialised → dead letter ``encode_error``; any other error → a retry (``attempt_error``) within the same window.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from background.lease import LeaseLost
from background.stranded import TARGET_REMOVED
from config import OPS_TARGET_ID, RetryPolicy, TargetConfig
from email_processing.body_fit import fit_body
from email_processing.delivery_window import window_opens_at
from email_processing.payload import payload_bytes
from services.circuit_breaker import BreakerState, BreakerTransition, CircuitBreaker
from services.state_store import OutboxItem, StateStoreError
from services.webhook import AttemptOutcome, next_delay
from timestamps import iso_utc

logger = logging.getLogger(__name__)

CLAIM_BATCH = 1            # one item per claim: a lost lease never leaves claimed-but-unattempted items behind
ACK_RETRY_PAUSES = (0.2, 0.5, 1.0)   # a 2xx whose recording fails is recorded again after these pauses
CLAIM_MARGIN_SECONDS = 15  # a claim outlives one attempt's timeout by this much
IDLE_WAIT_SECONDS = 1.0
BODY_TOO_LARGE = "body_too_large"  # over the target's cap even with the text cut and the file names dropped
ENCODE_ERROR = "encode_error"    # the stored body cannot be serialised as UTF-8 JSON: no retry can change that
ATTEMPT_ERROR = "attempt_error"  # the attempt failed outside the network (a bug): retried, the window still runs
BREAKER_FAILURES = 5             # consecutive retried failures of a target that open its circuit (per process)
BREAKER_COOLDOWN_SECONDS = 10    # an open circuit claims nothing of its target for this long, then one trial


@dataclass(frozen=True)
class Lane:
    """One mailbox as the delivery threads see it: its (fenced) store, its lease and guard, the event that tells its
    poller an email may now be done, and the removed mailboxes whose items it delivers too. ``mailbox_id`` None:
    every item of the target, whatever its mailbox (the single-mailbox form of the tests and ``process-email``)."""

    mailbox_id: str | None
    store: Any
    lease: Any
    guard: Any
    flag_wakeup: threading.Event
    adopted_mailboxes: Callable[[], Iterable[str]] = tuple

    def actable(self) -> bool:
        """May this process act for the mailbox now (the lease held here, Redis not in its backoff)?"""
        return self.lease.backoff_remaining() <= 0 and self.lease.holds_locally()


class DeliveryWorker:
    def __init__(self, target: TargetConfig, store, lease, guard, sender_factory: Callable[[], Any], *,
                 wakeup: threading.Event, flag_wakeup: threading.Event, rng: random.Random | None = None,
                 clock: Callable[[], float] = time.time, mailbox_id: str | None = None,
                 adopted_mailboxes: Callable[[], Iterable[str]] = tuple, rate_limiter: Any = None,
                 lanes: Sequence[Lane] | None = None, breaker: CircuitBreaker | None = None) -> None:
        """One delivery thread of ``target``. ``lanes``: the mailboxes this process may hold, taken in turn so that
        one mailbox's backlog never starves another's (each claim is the item of one mailbox, under that
        mailbox's lease); without it, one lane from ``store``, ``lease``, ``guard``, ``flag_wakeup``, ``mailbox_id``
        and ``adopted_mailboxes``. ``breaker``: the target's circuit breaker, shared by its threads in this process
        (while open, no item of the target is claimed). Items are claimed per (mailbox, target), so another
        target's backlog never delays these."""
        self.target = target
        self.lanes: tuple[Lane, ...] = tuple(lanes) if lanes else (
            Lane(mailbox_id, store, lease, guard, flag_wakeup, adopted_mailboxes),)
        first = self.lanes[0]
        self.store, self.lease, self.guard, self.flag_wakeup = first.store, first.lease, first.guard, first.flag_wakeup
        self.rate_limiter = rate_limiter  # services.rate_limit: the target's token bucket (None: no limit)
        self.breaker = breaker
        self.sender_factory = sender_factory
        self.wakeup = wakeup
        self.rng = rng or random.Random()
        self.clock = clock
        self._store_failing = False
        self._sender = None
        self._next_lane = 0

    def run(self, stop_event: threading.Event, held_event: Any = None) -> None:
        """The thread's loop until ``stop_event``; ``held_event`` is unused (each lane's lease decides)."""
        try:
            self._loop(stop_event)
        finally:
            close = getattr(self._sender, "close", None)
            if close is not None:
                close()

    @property
    def sender(self):
        # One sender (one HTTP connection pool) per delivery thread: a requests.Session is not thread-safe.
        if self._sender is None:
            self._sender = self.sender_factory()
        return self._sender

    def _loop(self, stop_event: threading.Event) -> None:
        while not stop_event.is_set():
            if not any(lane.actable() for lane in self.lanes):
                self._report_outages()
                self.wakeup.wait(IDLE_WAIT_SECONDS)  # also set when a lease is acquired here
                self.wakeup.clear()
                continue
            try:
                found = self.run_once(stop_event)
                if self._store_failing:
                    self._store_failing = False
                    logger.info("WEBHOOK: state store reachable again; delivering")
            except LeaseLost as exc:  # the one lane's lease (with several, run_once goes on with the others)
                logger.warning("WEBHOOK: stopped delivering (%s)", exc)
                continue
            except StateStoreError as exc:
                if not self._store_failing:
                    self._store_failing = True
                    logger.error("WEBHOOK: state store error, delivery paused (%s)", exc)
                stop_event.wait(2.0)
                continue
            except Exception:  # a bug must not kill the thread
                logger.error("WEBHOOK: unexpected error in the delivery loop", exc_info=True)
                stop_event.wait(2.0)
                continue
            if not found:
                self.wakeup.wait(IDLE_WAIT_SECONDS)
                self.wakeup.clear()

    def _report_outages(self) -> None:
        for lane in self.lanes:
            if lane.lease.backoff_remaining() > 0:
                lane.lease.report_outage()

    def run_once(self, stop_event: threading.Event | None = None) -> bool:
        """Claim and attempt due items, a mailbox at a time in turn, until none is due (or the target's circuit
        is open); returns whether any was attempted. A lease lost for one mailbox stops only that mailbox's lane."""
        attempted = False
        lost: set[int] = set()  # lanes whose lease was found lost in this run: not claimed again until the next
        while stop_event is None or not stop_event.is_set():
            if self.breaker is not None and not self.breaker.allow():
                return attempted
            claimed = self._claim_next(lost)
            if claimed is None:
                self._abandon_trial()
                return attempted
            lane, item = claimed
            try:
                self.deliver(item, lane)
            except LeaseLost as exc:
                self._abandon_trial()
                logger.warning("WEBHOOK: stopped delivering for mailbox %s (%s)", lane.mailbox_id, exc)
                if len(self.lanes) == 1:
                    raise
                lost.add(self.lanes.index(lane))
                continue
            attempted = True
        return attempted

    def _claim_next(self, lost: set[int]) -> tuple[Lane, OutboxItem] | None:
        """The next due item of the next lane that has one (round robin over the lanes held here, but ``lost``)."""
        count = len(self.lanes)
        for step in range(count):
            index = (self._next_lane + step) % count
            lane = self.lanes[index]
            if count > 1 and (index in lost or not lane.actable()):
                continue
            try:
                lane.guard.check_local()
                items = self._claim(lane)
            except LeaseLost as exc:
                if count == 1:
                    raise
                logger.warning("WEBHOOK: not claiming for mailbox %s (%s)", lane.mailbox_id, exc)
                continue
            if items:
                self._next_lane = (self._next_lane + step + 1) % count
                return lane, items[0]
        return None

    def _claim(self, lane: Lane) -> list[OutboxItem]:
        claim_seconds = self.target.timeout_seconds + CLAIM_MARGIN_SECONDS
        if lane.mailbox_id is None:
            return lane.store.claim_due(lane.lease.token, self.clock(), CLAIM_BATCH, claim_seconds)
        for mailbox_id in (lane.mailbox_id, *lane.adopted_mailboxes()):
            items = lane.store.claim_due(lane.lease.token, self.clock(), CLAIM_BATCH, claim_seconds,
                                         mailbox_id=mailbox_id, target_id=self.target.id)
            if items:
                return items
        return []

    def deliver(self, item: OutboxItem, lane: Lane | None = None) -> str:
        """One attempt for a claimed item; records the outcome. Returns delivered | retry | dead | held."""
        lane = lane or self.lanes[0]
        store = lane.store
        try:
            lane.guard.check_remote()  # the token is re-checked in the store before every attempt
        except LeaseLost:
            _release(store, item)  # claimed, never attempted: no attempt counted, no duplicate later
            raise
        if item.target_id != self.target.id:
            # Claimed without an owner filter: an item of a target this process does not know was removed.
            store.dead_letter(item.event_id, TARGET_REMOVED, None, f"target {item.target_id} is not configured",
                              now=self.clock())
            logger.error("WEBHOOK: dead letter %s reason=%s (target %s)", item.event_id, TARGET_REMOVED,
                         item.target_id)
            self._abandon_trial()
            return "dead"
        now = self.clock()
        opens = self._window_opens_at(now)
        if opens is not None:
            # Outside the target's delivery window: held, durably pending, no attempt counted.
            store.hold(item.event_id, opens, now)
            logger.info("WEBHOOK: held %s until %s (target %s is outside its delivery window)", item.event_id,
                        iso_utc(opens), self.target.id)
            self._abandon_trial()
            return "held"
        self._wait_for_a_token(lane)
        lane.guard.record_action()
        outcome = attempt_item(self.sender, item, cap=self.target.body_cap)
        self._tell_breaker(outcome)
        return record_outcome(self.target.retry, store, item, outcome, self.clock(), self.rng, lane.flag_wakeup)

    def _tell_breaker(self, outcome: AttemptOutcome) -> None:
        """A receiver that answered (2xx, or a 4xx it means) is reachable; a retried failure (timeout, transport
        error, 408/429/5xx) counts toward opening; a failure outside the network (body, bug) says nothing of it."""
        if self.breaker is None:
            return
        if outcome.kind == "delivered" or (outcome.kind == "permanent" and outcome.status is not None):
            self.breaker.record_success()
        elif outcome.kind == "retry" and outcome.error != ATTEMPT_ERROR:
            self.breaker.record_failure()
        else:
            self.breaker.release_trial()

    def _abandon_trial(self) -> None:
        if self.breaker is not None:
            self.breaker.release_trial()

    def _wait_for_a_token(self, lane: Lane) -> None:
        """The target's rate limit: wait (checking the lease) until its bucket gives a token."""
        if self.rate_limiter is None:
            return
        while (wait := self.rate_limiter.take()) > 0:
            lane.guard.check_local()
            time.sleep(min(wait, 1.0))

    def _window_opens_at(self, now: float) -> float | None:
        """When the target's delivery window next opens, or None when it is open (or has none)."""
        if self.target.window is None:
            return None
        try:
            return window_opens_at(self.target.window, now)
        except ValueError:  # never opens (refused at start-up): deliver rather than hold for ever
            logger.error("WEBHOOK: the delivery window of target %s never opens; delivering", self.target.id)
            return None


def target_breaker(target_id: str, clock: Callable[[], float] = time.monotonic) -> CircuitBreaker:
    """The circuit breaker of one target in this process: ``BREAKER_FAILURES`` consecutive retried failures pause
    its deliveries for ``BREAKER_COOLDOWN_SECONDS``, then one trial attempt decides. Logged on every change."""

    def log_transition(change: BreakerTransition) -> None:
        if change.current is BreakerState.OPEN:
            logger.warning("WEBHOOK: circuit open for target %s after %d consecutive failures; attempts paused "
                           "for %ds", target_id, change.consecutive_failures, BREAKER_COOLDOWN_SECONDS)
        elif change.current is BreakerState.CLOSED:
            logger.info("WEBHOOK: circuit closed for target %s; delivering", target_id)
        else:
            logger.info("WEBHOOK: circuit half-open for target %s; one trial attempt", target_id)

    return CircuitBreaker(BREAKER_FAILURES, BREAKER_COOLDOWN_SECONDS, clock, on_transition=log_transition)


def attempt_item(sender, item: OutboxItem, cap: int | None = None) -> AttemptOutcome:
    """One attempt of ``item``. Never raises: the sender reports what the network does, and what fails outside it
    becomes an outcome here, so that the caller always records one (an escaped error would leave the item in
    flight, re-claimed for ever once its claim lapses). ``cap``: the target's body cap; a larger body is shrunk
    (``email_processing.body_fit``, the same bytes on every attempt) or, when even that does not fit, the item is
    a dead letter ``body_too_large``: never sent over the cap."""
    try:
        body = payload_bytes(item.payload)
    except (TypeError, ValueError) as exc:  # UnicodeEncodeError (a lone surrogate) is a ValueError
        logger.error("WEBHOOK: cannot serialise the body of %s (%s)", item.event_id, exc)
        return AttemptOutcome(kind="permanent", status=None, retry_after=None,
                              excerpt=f"body cannot be serialised: {exc}", elapsed_ms=0, error=ENCODE_ERROR)
    if cap is not None and len(body) > cap:
        fitted = fit_body(item.payload, cap)
        if fitted.body is None:
            logger.error("WEBHOOK: the body of %s is %d bytes, over the target's cap of %d even shrunk",
                         item.event_id, len(body), cap)
            return AttemptOutcome(kind="permanent", status=None, retry_after=None,
                                  excerpt=f"body of {len(body)} bytes does not fit the cap of {cap}", elapsed_ms=0,
                                  error=BODY_TOO_LARGE)
        logger.warning("WEBHOOK: the body of %s was shrunk from %d to %d bytes to fit the target's cap of %d",
                       item.event_id, len(body), len(fitted.body), cap)
        body = fitted.body
    started = time.monotonic()
    try:
        return sender.attempt(item.event_id, body)
    except Exception:
        logger.error("WEBHOOK: attempt of %s failed outside the network", item.event_id, exc_info=True)
        return AttemptOutcome(kind="retry", status=None, retry_after=None, excerpt=None,
                              elapsed_ms=int(round((time.monotonic() - started) * 1000)), error=ATTEMPT_ERROR)


def _release(store, item: OutboxItem) -> None:
    try:
        store.release_claim(item.event_id)
    except StateStoreError as exc:  # the claim lapses by itself then
        logger.warning("WEBHOOK: could not release the claim of %s (%s)", item.event_id, exc)


def _acknowledge(store, item: OutboxItem, status: int, now: float, attempt: dict) -> None:
    """Record a 2xx, retried locally: the receiver has the webhook, so giving up here means sending it again."""
    for pause in ACK_RETRY_PAUSES:
        try:
            store.mark_delivered(item.event_id, status, now, attempt=attempt)
            return
        except StateStoreError as exc:
            logger.warning("WEBHOOK: recording the delivery of %s failed (%s); again in %.1fs", item.event_id, exc,
                           pause)
            time.sleep(pause)
    store.mark_delivered(item.event_id, status, now, attempt=attempt)


def record_outcome(policy: RetryPolicy, store, item: OutboxItem, outcome, now: float, rng: random.Random,
                   flag_wakeup: threading.Event | None = None) -> str:
    attempt = max(item.attempts, 1)
    entry = {"at": now, "attempt": attempt, "status": outcome.status, "error": outcome.error,
             "ms": outcome.elapsed_ms}
    if outcome.kind == "delivered":
        _acknowledge(store, item, outcome.status, now, entry)
        logger.info("WEBHOOK: delivered %s status=%s attempt=%d in %dms", item.event_id, outcome.status, attempt,
                    outcome.elapsed_ms)
        logger.info("EMAIL: delivered mailbox=%s uid=%s event_id=%s target=%s", item.mailbox_id, item.uid,
                    item.event_id, item.target_id)
        _record_recent(store, item, "delivered")
        if flag_wakeup is not None:
            flag_wakeup.set()
        return "delivered"
    if outcome.kind == "retry":
        first = item.first_attempt_at or now
        delay = next_delay(attempt, policy.schedule, outcome.retry_after, rng)
        if now + delay <= policy.deadline(first):
            store.reschedule(item.event_id, now + delay, outcome.error or "retry", outcome.status, attempt=entry)
            logger.warning("WEBHOOK: retry %s attempt=%d error=%s status=%s next in %.1fs", item.event_id, attempt,
                           outcome.error, outcome.status, delay)
            return "retry"
        reason = "retries_exhausted"
    else:
        reason = outcome.error or f"http_{outcome.status}"
    store.dead_letter(item.event_id, reason, outcome.status, outcome.excerpt, now=now, attempt=entry)
    logger.error("WEBHOOK: dead letter %s reason=%s status=%s attempts=%d", item.event_id, reason, outcome.status,
                 attempt)
    logger.error("EMAIL: dead letter mailbox=%s uid=%s event_id=%s target=%s reason=%s", item.mailbox_id, item.uid,
                 item.event_id, item.target_id, reason)
    _record_recent(store, item, f"dead letter: {reason}")
    if flag_wakeup is not None:
        flag_wakeup.set()
    return "dead"


def _record_recent(store, item: OutboxItem, outcome: str) -> None:
    from background.ingest import recent_entry

    if item.target_id == OPS_TARGET_ID:  # an alert is not an email: the recent emails list only emails
        return
    try:
        store.record_recent(recent_entry(item.payload, outcome))
    except StateStoreError:
        logger.warning("WEBHOOK: could not record %s in the recent history", item.event_id)


def deliver_now(store, target: TargetConfig, sender, ingested) -> dict:
    """``process-email`` without --dry-run: the first attempt of what ``Ingest.ingest(attempt_now=True)`` queued
    (an email already known reports its item's status instead). A failed attempt is rescheduled on the normal
    schedule and the service's delivery loop takes it from there (same ``webhook-id``)."""
    event_id = ingested.result.event_id
    if not ingested.items:
        existing = store.get_item(event_id)
        return {"event_id": event_id, "outcome": "already_known", "status": existing.status if existing else None}
    item = ingested.items[0]  # one target today (the environment's)
    outcome = attempt_item(sender, item)
    recorded = record_outcome(target.retry, store, item, outcome, time.time(), random.Random())
    return {"event_id": item.event_id, "outcome": recorded, "status": outcome.status}
