"""Operational alerts: what needs a person, told once per streak to ``OPS_WEBHOOK_URL`` through the outbox.

Two halves. The **rule core** (``step``) is pure: given the open streaks, what is wrong now (``Condition``s), the
time and an ``allow(kind)`` cap, it returns the new streaks and the ``OpsEvent``s to send. One rule for every kind:
the first event of a streak at once; then at most one summary per streak every ``SUMMARY_INTERVAL_SECONDS``, and
only when its ``count`` changed; when the condition has been gone for ``RECOVER_AFTER_SECONDS``, one
``recovered`` (only for a streak that sent something); every kind capped at ``HOURLY_CAP`` events per hour (a
capped first event is sent once the cap allows, a capped summary or ``recovered`` is dropped). The **evaluator**
(``AlertEvaluator``) reads what the service already knows, the status observer's cluster view (mailboxes whose
sign-in needs an operator or that stalled, targets whose circuit is open) and the store (dead letters per target
and per email, parked emails), runs the core, and enqueues each event in the durable outbox as an item of the
reserved target ``ops``, which the delivery loop signs and retries like any webhook.

Where it runs, and why duplicates cannot happen: the evaluator is a housekeeping chore of the status observer, run
only by the holder of the first mailbox's lease (the process that already runs the cluster's chores), so normally
exactly one process evaluates. Around a lease hand-over two may overlap for one round; that is harmless because
(1) every event id is derived from the stored streak state alone (kind, subject, the streak's token, the event's
number in the streak), so two evaluators that read the same state enqueue the same ids and the outbox keeps the
first (``enqueue`` is idempotent cluster-wide); (2) the state is one record written with ``compare_and_put_record``
against the value read, so only one evaluator's round is kept and the other's is evaluated again from the winner's
state the next round. The ops target never raises events about itself: its circuit, its dead letters and its items
are left out of every condition, so a failing alert receiver cannot feed alerts about alerts.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Callable, Iterable, Mapping, Sequence

from config import OPS_TARGET_ID
from services.state_store import OutboxItem, OutboxStatus
from timestamps import iso_utc

logger = logging.getLogger(__name__)

EVALUATE_INTERVAL_SECONDS = 15.0    # how often the lease holder evaluates (a housekeeping chore)
SUMMARY_INTERVAL_SECONDS = 900.0    # at most one summary per streak this often
RECOVER_AFTER_SECONDS = 60.0        # a condition gone this long ends its streak (no flapping recovered/first pairs)
HOURLY_CAP = 20                     # events per kind per hour, cluster-wide (the store's ``hit``)
DEAD_LETTERS_RISING = 3             # new dead letters of one target within the window that make it failing …
DEAD_LETTER_WINDOW_SECONDS = 900.0  # … and the streak lasts while any new one arrived within it
RECENT_SECONDS = 3600.0             # dead letters and parked emails younger than this start a streak
SCAN_LIMIT = 100                    # dead letters and parked emails read per round (newest first)
MAX_EMAIL_STREAKS = 200             # open streaks about single emails kept (the oldest dropped beyond)
STATE_NAMESPACE = "ops_alerts"
STATE_KEY = "state"
STATE_TTL_SECONDS = 30 * 86400.0
OPS_STATE_KEY = "(ops)"             # the items' mailbox state key: not an IMAP mailbox, nothing is ever flagged


class AlertKind(StrEnum):
    REAUTH_REQUIRED = "reauth_required"
    MAILBOX_STALLED = "mailbox_stalled"
    TARGET_FAILING = "target_failing"
    EMAIL_PARKED = "email_parked"
    DEAD_LETTER = "dead_letter"
    RECOVERED = "recovered"


SUBJECT_KINDS = ("mailbox", "target", "email")


@dataclass(frozen=True)
class Condition:
    """One thing wrong now. ``origin``: a token the store gives the occurrence (e.g. when the email died), so that a
    later occurrence of the same subject is a new streak with new event ids; None: streaks are numbered."""

    kind: str
    subject_kind: str
    subject_id: str
    detail: Mapping[str, Any] = field(default_factory=dict)
    count: int = 1
    origin: str | None = None

    @property
    def key(self) -> str:
        return streak_key(self.kind, self.subject_kind, self.subject_id)


def streak_key(kind: str, subject_kind: str, subject_id: str) -> str:
    return f"{kind}|{subject_kind}|{subject_id}"


@dataclass(frozen=True)
class Streak:
    """An open streak: since when, what it last saw, how many events it sent and when the last one went out."""

    kind: str
    subject_kind: str
    subject_id: str
    token: str                 # the streak's part of its event ids
    started_at: float
    count: int
    detail: Mapping[str, Any]
    sent: int = 0              # events sent (the first, then the summaries)
    last_sent_at: float | None = None
    last_sent_count: int | None = None
    absent_since: float | None = None  # the condition was not seen since then

    def as_dict(self) -> dict:
        return {"kind": self.kind, "subject_kind": self.subject_kind, "subject_id": self.subject_id,
                "token": self.token, "started_at": self.started_at, "count": self.count, "detail": dict(self.detail),
                "sent": self.sent, "last_sent_at": self.last_sent_at, "last_sent_count": self.last_sent_count,
                "absent_since": self.absent_since}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Streak:
        return cls(kind=str(raw["kind"]), subject_kind=str(raw["subject_kind"]), subject_id=str(raw["subject_id"]),
                   token=str(raw["token"]), started_at=float(raw["started_at"]), count=int(raw["count"]),
                   detail=dict(raw.get("detail") or {}), sent=int(raw.get("sent") or 0),
                   last_sent_at=raw.get("last_sent_at"), last_sent_count=raw.get("last_sent_count"),
                   absent_since=raw.get("absent_since"))


@dataclass(frozen=True)
class AlertState:
    """Every open streak by key, and the last streak number of each subject without an origin token."""

    streaks: Mapping[str, Streak] = field(default_factory=dict)
    numbers: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class OpsEvent:
    """One alert; ``body()`` is exactly what the receiver gets (``docs/ops-event.schema.json``)."""

    event_id: str
    kind: str
    subject_kind: str
    subject_id: str
    at: float
    detail: Mapping[str, Any]
    count: int

    def body(self) -> dict:
        return {"event_id": self.event_id, "kind": self.kind, "subject": {self.subject_kind: self.subject_id},
                "at": iso_utc(self.at), "detail": dict(self.detail), "count": self.count}


@dataclass(frozen=True)
class Rules:
    """The rule's timings (the module's constants unless a test gives others)."""

    summary_seconds: float = SUMMARY_INTERVAL_SECONDS
    recover_after_seconds: float = RECOVER_AFTER_SECONDS


def event_id(kind: str, subject_kind: str, subject_id: str, token: str, number: str) -> str:
    """``ops_<kind>_<16 hex>_<n>``: the same for every evaluator that read the same state (``n``: 0 for the first
    event of a streak, 1… for its summaries, ``r`` for its recovered)."""
    digest = hashlib.sha256(f"{subject_kind}\x00{subject_id}\x00{token}".encode()).hexdigest()[:16]
    return f"ops_{kind}_{digest}_{number}"


# --- the rule core (pure) -------------------------------------------------------------------------------------------

def step(state: AlertState, conditions: Iterable[Condition], now: float, allow: Callable[[str], bool],
         rules: Rules = Rules()) -> tuple[AlertState, list[OpsEvent]]:
    """One round of the rule: the new state and the events to send now. ``allow(kind)`` is asked once per event
    about to be sent (the hourly cap); a refused first event is asked again next round."""
    seen = {condition.key: condition for condition in conditions}
    streaks: dict[str, Streak] = {}
    numbers = dict(state.numbers)
    events: list[OpsEvent] = []
    for key, condition in seen.items():
        streak = state.streaks.get(key)
        if streak is None:
            streak = _opened(condition, now, numbers)
        else:
            streak = replace(streak, count=condition.count, detail=dict(condition.detail), absent_since=None)
        streak, event = _maybe_send(streak, now, allow, rules)
        if event is not None:
            events.append(event)
        streaks[key] = streak
    for key, streak in state.streaks.items():
        if key in seen:
            continue
        absent_since = streak.absent_since if streak.absent_since is not None else now
        if now - absent_since < rules.recover_after_seconds:
            streaks[key] = replace(streak, absent_since=absent_since)
            continue
        if streak.sent and allow(AlertKind.RECOVERED):
            events.append(_recovered(streak, now))
    return AlertState(streaks, numbers), events


def _opened(condition: Condition, now: float, numbers: dict[str, int]) -> Streak:
    if condition.origin is not None:
        token = condition.origin
    else:
        numbers[condition.key] = numbers.get(condition.key, 0) + 1
        token = str(numbers[condition.key])
    return Streak(kind=condition.kind, subject_kind=condition.subject_kind, subject_id=condition.subject_id,
                  token=token, started_at=now, count=condition.count, detail=dict(condition.detail))


def _maybe_send(streak: Streak, now: float, allow: Callable[[str], bool],
                rules: Rules) -> tuple[Streak, OpsEvent | None]:
    if streak.sent == 0:
        due = True
    else:
        assert streak.last_sent_at is not None
        due = now - streak.last_sent_at >= rules.summary_seconds and streak.count != streak.last_sent_count
    if not due or not allow(streak.kind):
        return streak, None
    event = OpsEvent(event_id(streak.kind, streak.subject_kind, streak.subject_id, streak.token, str(streak.sent)),
                     streak.kind, streak.subject_kind, streak.subject_id, now,
                     {**streak.detail, "since": iso_utc(streak.started_at), "summary": streak.sent > 0},
                     streak.count)
    return replace(streak, sent=streak.sent + 1, last_sent_at=now, last_sent_count=streak.count), event


def _recovered(streak: Streak, now: float) -> OpsEvent:
    detail = {"recovered_kind": streak.kind, "since": iso_utc(streak.started_at),
              "duration_s": round(now - streak.started_at, 1), "events_sent": streak.sent}
    return OpsEvent(event_id(streak.kind, streak.subject_kind, streak.subject_id, streak.token, "r"),
                    AlertKind.RECOVERED, streak.subject_kind, streak.subject_id, now, detail, streak.count)


# --- the stored state -----------------------------------------------------------------------------------------------

def state_from_record(record: Mapping[str, Any] | None) -> tuple[AlertState, dict]:
    """The rule state and the evaluator's own memory (per target: dead letters seen, recent rises) of one record."""
    if not record:
        return AlertState(), {}
    streaks = {key: Streak.from_dict(raw) for key, raw in (record.get("streaks") or {}).items()}
    numbers = {key: int(value) for key, value in (record.get("numbers") or {}).items()}
    return AlertState(streaks, numbers), dict(record.get("targets") or {})


def state_record(state: AlertState, targets: Mapping[str, Any]) -> dict:
    return {"v": 1, "streaks": {key: streak.as_dict() for key, streak in state.streaks.items()},
            "numbers": dict(state.numbers), "targets": dict(targets)}


# --- reading what the service knows ---------------------------------------------------------------------------------

def view_is_usable(view: Mapping[str, Any] | None) -> bool:
    """A view the rules can trust: read from the store (not the observer's start-up placeholder) and not stale, so
    a store outage never reads as every problem having recovered."""
    if not view or "stalls" not in view:
        return False
    return not view.get("stale") and view.get("cluster") != "stale"


def mailbox_conditions(view: Mapping[str, Any], first_mailbox: str) -> list[Condition]:
    """Mailboxes whose sign-in needs an operator (``reauth_required``) and stalled ones (``mailbox_stalled``: the
    health rules' ``stalled`` and ``no_holder``)."""
    published = {first_mailbox: view.get("published") or {}, **(view.get("mailbox_statuses") or {})}
    found = []
    for mailbox_id, document in published.items():
        poller = (document or {}).get("poller") or {}
        if poller.get("imap") == "reauth_required":
            found.append(Condition(AlertKind.REAUTH_REQUIRED, "mailbox", mailbox_id,
                                   {"reason": "the OAuth2 sign-in needs an operator: sign in again"}))
    for problem in view.get("stalls") or ():
        if problem.get("kind") == "mailbox" and problem.get("state") in ("stalled", "no_holder") and problem.get("id"):
            poller = (published.get(problem["id"]) or {}).get("poller") or {}
            found.append(Condition(AlertKind.MAILBOX_STALLED, "mailbox", problem["id"],
                                   {"state": problem["state"], "reason": problem.get("detail")},
                                   count=max(1, int(poller.get("waiting") or 0))))
    return found


def target_conditions(view: Mapping[str, Any], memory: dict, now: float, target_ids: Sequence[str],
                      streaks: Mapping[str, Streak]) -> list[Condition]:
    """Targets whose circuit is open in some process, or whose dead letters are rising (``DEAD_LETTERS_RISING`` new
    ones within the window start a streak, any new one within it keeps it); updates ``memory`` (per target: the
    dead letters counted last round and the recent rises). Never the ops target."""
    stats = view.get("target_stats") or {}
    open_circuits = {problem.get("id") for problem in view.get("stalls") or ()
                     if problem.get("kind") == "target" and problem.get("state") == "circuit_open"}
    found = []
    for target_id in target_ids:
        if target_id == OPS_TARGET_ID:
            continue
        dead = int((stats.get(target_id) or {}).get("dead") or 0)
        seen = memory.get(target_id) or {}
        rises = [rise for rise in seen.get("rises") or () if now - rise[0] < DEAD_LETTER_WINDOW_SECONDS]
        if "dead" in seen and dead > int(seen["dead"]):
            rises.append([now, dead - int(seen["dead"])])
        memory[target_id] = {"dead": dead, "rises": rises}
        recent = sum(int(rise[1]) for rise in rises)
        already = streak_key(AlertKind.TARGET_FAILING, "target", target_id) in streaks
        rising = recent >= DEAD_LETTERS_RISING or (already and recent > 0)
        if target_id in open_circuits or rising:
            found.append(Condition(AlertKind.TARGET_FAILING, "target", target_id,
                                   {"circuit_open": target_id in open_circuits,
                                    "dead_letters_recent": recent,
                                    "window_s": int(DEAD_LETTER_WINDOW_SECONDS)}, count=max(1, recent)))
    for target_id in list(memory):
        if target_id not in target_ids:
            del memory[target_id]
    return found


def dead_letter_conditions(store: Any, now: float, streaks: Mapping[str, Streak]) -> list[Condition]:
    """One condition per email with a dead letter: those that died within ``RECENT_SECONDS`` (newest first, at most
    ``SCAN_LIMIT``) and those with an open streak whose items are not delivered yet (a replayed item is pending
    until its delivery: the streak recovers when it is delivered, or gone). Never an item of the ops target."""
    by_email: dict[str, list[OutboxItem]] = {}
    for item in store.list_items(OutboxStatus.DEAD, SCAN_LIMIT):
        if item.target_id != OPS_TARGET_ID and item.dead_at is not None and now - item.dead_at < RECENT_SECONDS:
            by_email.setdefault(item.email_id, []).append(item)
    for streak in streaks.values():
        if streak.kind != AlertKind.DEAD_LETTER or streak.subject_id in by_email:
            continue
        items = [store.get_item(one) for one in streak.detail.get("event_ids") or ()]
        still = [item for item in items if item is not None and item.status != OutboxStatus.DELIVERED]
        if still:
            by_email[streak.subject_id] = still
    found = []
    for email_id, items in by_email.items():
        items.sort(key=lambda item: (item.dead_at or 0.0, item.event_id))
        detail = {"event_ids": [item.event_id for item in items], "targets": [item.target_id for item in items],
                  "reasons": [item.dead_reason for item in items], "mailbox": items[0].mailbox_id}
        died = min((item.dead_at for item in items if item.dead_at is not None), default=0.0)
        found.append(Condition(AlertKind.DEAD_LETTER, "email", email_id, detail, count=len(items),
                               origin=f"{died:.3f}"))
    return found


def parked_conditions(store: Any, now: float, streaks: Mapping[str, Streak]) -> list[Condition]:
    """One condition per parked email: parked within ``RECENT_SECONDS`` (at most ``SCAN_LIMIT``), or with an open
    streak and still parked. The subject is the email id when known, else the parked id."""
    parked = {entry.parked_id: entry for entry in store.list_parked(SCAN_LIMIT)
              if now - entry.parked_at < RECENT_SECONDS}
    for streak in streaks.values():
        parked_id = streak.detail.get("parked_id")
        if streak.kind == AlertKind.EMAIL_PARKED and parked_id and parked_id not in parked:
            entry = store.get_parked(parked_id)
            if entry is not None:
                parked[parked_id] = entry
    return [Condition(AlertKind.EMAIL_PARKED, "email", entry.email_id or entry.parked_id,
                      {"parked_id": entry.parked_id, "mailbox": entry.mailbox_id, "reason": entry.reason},
                      origin=f"{entry.parked_at:.3f}")
            for entry in parked.values()]


def capped_email_streaks(conditions: list[Condition]) -> list[Condition]:
    """At most ``MAX_EMAIL_STREAKS`` conditions about single emails (the newest by origin kept)."""
    emails = [condition for condition in conditions if condition.subject_kind == "email"]
    if len(emails) <= MAX_EMAIL_STREAKS:
        return conditions
    keep = {id(condition) for condition in sorted(emails, key=lambda c: float(c.origin or 0), reverse=True)
            [:MAX_EMAIL_STREAKS]}
    logger.warning("OPS: %d emails need attention; alerts follow the newest %d", len(emails), MAX_EMAIL_STREAKS)
    return [condition for condition in conditions if condition.subject_kind != "email" or id(condition) in keep]


def ops_item(event: OpsEvent, mailbox_id: str) -> OutboxItem:
    """The outbox item of one alert: target ``ops``, delivered under mailbox ``mailbox_id``'s lease (the one whose
    holder evaluates), uid 0 (no IMAP message: nothing is flagged)."""
    return OutboxItem(event_id=event.event_id, email_id=event.event_id, payload=event.body(), mailbox=OPS_STATE_KEY,
                      uidvalidity=0, uid=0, message_id=None, created_at=event.at, next_attempt_at=event.at,
                      mailbox_id=mailbox_id, target_id=OPS_TARGET_ID)


class AlertEvaluator:
    """One evaluation round per call of ``evaluate_once`` (a housekeeping chore of the first mailbox's holder).
    ``view()``: the status observer's cluster view; ``target_ids``: the configured targets (not ``ops``)."""

    def __init__(self, store: Any, *, mailbox_id: str, view: Callable[[], Mapping[str, Any] | None],
                 target_ids: Iterable[str], clock: Callable[[], float] = time.time, hourly_cap: int | None = None,
                 rules: Rules | None = None) -> None:
        self.store = store
        self.mailbox_id = mailbox_id
        self.view = view
        self.target_ids = tuple(target_id for target_id in target_ids if target_id != OPS_TARGET_ID)
        self.clock = clock
        # The module's values when built (not when imported), so a test can shorten them.
        self.hourly_cap = HOURLY_CAP if hourly_cap is None else hourly_cap
        self.rules = rules or Rules(SUMMARY_INTERVAL_SECONDS, RECOVER_AFTER_SECONDS)

    def evaluate_once(self) -> list[OpsEvent]:
        """Read, decide, enqueue, record; returns the events enqueued (none when the view cannot be trusted or
        another evaluator's round was recorded first)."""
        view = self.view()
        if not view_is_usable(view):
            return []
        assert view is not None
        now = self.clock()
        record = self.store.get_record(STATE_NAMESPACE, STATE_KEY)
        state, memory = state_from_record(record)
        conditions = mailbox_conditions(view, self.mailbox_id)
        conditions += target_conditions(view, memory, now, self.target_ids, state.streaks)
        conditions += dead_letter_conditions(self.store, now, state.streaks)
        conditions += parked_conditions(self.store, now, state.streaks)
        new_state, events = step(state, capped_email_streaks(conditions), now, lambda kind: self._allow(kind, now),
                                 self.rules)
        for event in events:  # before the state: a crash in between sends again, with the same ids (deduplicated)
            if self.store.enqueue(ops_item(event, self.mailbox_id)):
                logger.info("OPS: %s %s %s=%s count=%d", event.kind, event.event_id, event.subject_kind,
                            event.subject_id, event.count)
        if not self.store.compare_and_put_record(STATE_NAMESPACE, STATE_KEY, record,
                                                 state_record(new_state, memory), STATE_TTL_SECONDS):
            logger.info("OPS: another process recorded this round first; evaluating again from its state")
        return events

    def _allow(self, kind: str, now: float) -> bool:
        """The hourly cap of ``kind``, counted cluster-wide (the store's fixed one-hour windows)."""
        count = self.store.hit(f"ops_alert:{kind}", 3600.0, now)
        if count == self.hourly_cap + 1:  # said once per window
            logger.warning("OPS: more than %d %s alerts this hour; holding the rest back", self.hourly_cap, kind)
        return count <= self.hourly_cap
