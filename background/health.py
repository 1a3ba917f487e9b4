"""Every health rule of the service, as pure functions: no I/O, no clock, no thread.

The status observer (``background/observer.py``) feeds it what it read from the shared store and gets back the
cluster view it caches; ``/health``, ``/api/status`` and the ``/`` page turn that view into ``checks``, a status
(ok / degraded / down) and ``problems``, one per thing that makes the status degraded or down. The one rule that
decides the HTTP code stays here too: 503 (``down``) only when this instance's background threads died and will
not come back, so a restart would help; anything a restart would not fix is ``degraded`` with 200.

Today's environment variables describe one mailbox and one webhook target, both ``DEFAULT_ID``. A new problem
state is one row of ``PROBLEM_RULES``; a new kind is one row too (its ``kind`` and subject id). Problems of a named
mailbox or target (``stalled``, ``no_holder``, ``circuit_open``) come from the observer's reads instead (the view's
``stalls``): each mailbox is stalled by its own poll interval and IMAP timeout, each target by the outbox's stall
rule applied to its own due items, and a target whose circuit breaker any holder published open is ``circuit_open``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from background.lease import LeaseState
from background.runner import ImapState, PollerState
from config import DEFAULT_ID  # the mailbox and the webhook target today's environment variables describe
from timestamps import epoch_of

if TYPE_CHECKING:
    from config import MailboxConfig

OUTBOX_BACKLOG_ITEMS = 100          # more pending than this is a backlog …
OUTBOX_BACKLOG_AGE_SECONDS = 900    # … and so is a pending item older than this
OUTBOX_STALL_MIN_SECONDS = 60.0     # a due item overdue by more than this (or 2 × its delay) is a stalled outbox

CHECK_NAMES = ("poller", "lease", "imap", "outbox", "cluster")
# IMAP states of a mailbox that only an operator mends, with what to do (the first mailbox's through PROBLEM_RULES,
# every other's from the status its holder published).
MAILBOX_IMAP_PROBLEMS = {
    ImapState.AUTH_FAILED: "the IMAP server refused the login",
    ImapState.NO_SERVER_DONE_MARK: "the server stores no custom keywords and MARK_AS_READ=false: no done mark (set "
                                   "MARK_AS_READ=true or ALLOW_NO_SERVER_DONE_MARK=true)",
    ImapState.REAUTH_REQUIRED: "the OAuth2 sign-in needs an operator (a revoked or expired grant, missing consent, or "
                               "a token the server refused): sign in again (oauth-login) or fix the app's permission",
}
CIRCUIT_STATES = ("open", "half_open", "closed")   # worst first: the state a target reports when processes differ


# --- the observer's cluster view ------------------------------------------------------------------------------------

def stall_limit(poll_interval_seconds: float, imap_timeout_seconds: float) -> float:
    """How long a mailbox may go without progress before it is stalled: 3 × its poll interval + 2 × its IMAP
    timeout (three missed cycles, each allowed to time out twice)."""
    return 3 * poll_interval_seconds + 2 * imap_timeout_seconds


@dataclass(frozen=True)
class HealthTimings:
    """The time limits of the cluster rules, from the settings (read once per observer)."""

    publish_ttl: float       # a holder's published status lives this long (lease TTL + retry interval)
    stale_after: float       # the store unread for longer than this: the cluster view is stale
    stall_after: float       # mail waiting past a checkpoint that has not moved for this long: the mailbox stalled
    # Each configured mailbox's own stall limit (from its poll interval and IMAP timeout), as (id, seconds);
    # a mailbox not listed uses ``stall_after``.
    mailbox_stall_after: tuple[tuple[str, float], ...] = ()

    @classmethod
    def from_settings(cls, settings: Any, *, observe_interval: float) -> HealthTimings:
        """``observe_interval``: how often the observer reads the store (its staleness scales with it)."""
        return cls(
            publish_ttl=settings.redis_lock_ttl_seconds + settings.lease_retry_interval,
            stale_after=max(3 * observe_interval, 3 * settings.redis_timeout_seconds),
            stall_after=stall_limit(settings.email_polling_interval_seconds, settings.imap_timeout_seconds))

    def for_mailboxes(self, mailboxes: Iterable[MailboxConfig]) -> HealthTimings:
        """These timings with each mailbox's own stall limit (the environment form's one mailbox gets the same
        limit as ``stall_after``: its poll interval and timeout are the same settings)."""
        return replace(self, mailbox_stall_after=tuple(
            (mailbox.id, stall_limit(mailbox.poll_interval_seconds, mailbox.timeout_seconds))
            for mailbox in mailboxes))

    def stall_after_for(self, mailbox_id: str) -> float:
        """The stall limit of ``mailbox_id``: its own when configured, else ``stall_after``."""
        return dict(self.mailbox_stall_after).get(mailbox_id, self.stall_after)


def outbox_state(stats: dict | None) -> str:
    """``n/a`` (not read), ``backlog`` (too many pending, or the oldest too old) or ``ok``."""
    if stats is None:
        return "n/a"
    backlog = (stats.get("pending", 0) > OUTBOX_BACKLOG_ITEMS
               or (stats.get("oldest_pending_age_s") or 0) > OUTBOX_BACKLOG_AGE_SECONDS)
    return "backlog" if backlog else "ok"


def polling_states(*, held: bool, own_poller: dict, published: dict | None) -> tuple[str, str]:
    """``(poller, imap)``: the holder speaks for itself; a standby repeats the imap state the holder published."""
    if held:
        return own_poller["state"], own_poller["imap"]
    return PollerState.STANDBY, ((published or {}).get("poller") or {}).get("imap", ImapState.NOT_APPLICABLE)


def cluster_state(published: dict | None, *, now: float, started: float, timings: HealthTimings) -> str:
    """``no_poller`` when nobody has published a holder's status for TTL + retry (once this observer has waited that
    long); ``ok`` otherwise (a holder that publishes but makes no progress is a stalled mailbox, see
    ``mailbox_stall``). Every instance reads the same store, so every instance gives the same answer."""
    if published is None:
        return "no_poller" if now - started > timings.publish_ttl else "ok"
    return "ok"


def mailbox_stall(published: dict | None, *, now: float, timings: HealthTimings,
                  mailbox_id: str = DEFAULT_ID) -> str | None:
    """Why the holder's mailbox is stalled, or None. The one stall rule: mail has been waiting past the checkpoint
    for more than 3 × the mailbox's poll interval + 2 × its IMAP timeout without the checkpoint moving (a holder that
    has not completed a cycle for that long counts too: it cannot tell what waits)."""
    if not published:
        return None
    stall_after = timings.stall_after_for(mailbox_id)
    poller = published.get("poller") or {}
    lease = published.get("lease") or {}
    last_success = poller.get("last_success_epoch")
    reference = last_success or epoch_of(lease.get("acquired_at")) or published.get("published_at")
    if reference and now - reference > stall_after:
        return f"no poller cycle completed for {int(now - reference)} s"
    waiting = int(poller.get("waiting") or 0)
    moved = poller.get("checkpoint_moved_epoch") or last_success
    if waiting and moved and now - moved > stall_after:
        return f"{waiting} emails wait past the checkpoint, which has not moved for {int(now - moved)} s"
    return None


def other_mailbox_problems(mailbox_ids: tuple[str, ...], statuses: dict[str, dict], *, now: float, started: float,
                           timings: HealthTimings) -> list[dict]:
    """The problems of the configuration's other mailboxes (each published by its own holder): ``stalled`` by the
    one stall rule, ``no_holder`` when none published for longer than the cluster allows a holder to be missing."""
    problems = []
    for mailbox_id in mailbox_ids:
        published = statuses.get(mailbox_id)
        if published is None:
            if now - started > timings.publish_ttl:
                problems.append(Problem("mailbox", mailbox_id, "no_holder",
                                        f"no process has held mailbox {mailbox_id} within TTL + retry").as_dict())
            continue
        imap = (published.get("poller") or {}).get("imap")
        if imap in MAILBOX_IMAP_PROBLEMS:
            problems.append(Problem("mailbox", mailbox_id, imap, MAILBOX_IMAP_PROBLEMS[imap]).as_dict())
        stall = mailbox_stall(published, now=now, timings=timings, mailbox_id=mailbox_id)
        if stall:
            problems.append(Problem("mailbox", mailbox_id, "stalled", stall).as_dict())
    return problems


def outbox_stall(stats: dict | None, *, now: float) -> str | None:
    """Why the outbox is stalled, or None: its oldest due item is overdue by more than max(2 × its scheduled delay,
    60 s). Items waiting for a later attempt (or held by a live claim) are not due."""
    due_at = (stats or {}).get("oldest_due_at")
    if due_at is None:
        return None
    overdue = now - float(due_at)
    delay = float((stats or {}).get("oldest_due_delay") or 0.0)
    if overdue > max(2 * delay, OUTBOX_STALL_MIN_SECONDS):
        return f"the oldest due webhook is {int(overdue)} s overdue"
    return None


def circuit_states(documents: Iterable[dict | None]) -> dict[str, str]:
    """Each target's circuit across the published statuses (each holder publishes its process's breakers under
    ``circuits``): ``open`` if any process reports it open, else ``half_open`` if any does, else ``closed``. A target
    no published status mentions is absent (nobody delivering to it published)."""
    states: dict[str, str] = {}
    for document in documents:
        for target_id, state in ((document or {}).get("circuits") or {}).items():
            if state not in CIRCUIT_STATES:
                continue
            known = states.get(target_id)
            if known is None or CIRCUIT_STATES.index(state) < CIRCUIT_STATES.index(known):
                states[target_id] = state
    return states


def target_problems(target_ids: tuple[str, ...], target_stats: dict[str, dict] | None, circuits: dict[str, str], *,
                    now: float, paused: Mapping[str, float] | None = None) -> list[dict]:
    """The problems of each target: ``stalled`` by the outbox's stall rule applied to its own due items (held items
    are not due, so a closed window never stalls it), ``circuit_open`` when a process's breaker skips it. A target an
    operator paused has none (its items wait on purpose). Without configured ids, every target the stats or the
    circuits name, sorted."""
    ids = target_ids or tuple(sorted(set(target_stats or {}) | set(circuits)))
    problems = []
    for target_id in ids:
        if target_id in (paused or {}):
            continue
        stall = outbox_stall((target_stats or {}).get(target_id), now=now)
        if stall:
            problems.append(Problem("target", target_id, "stalled", stall).as_dict())
        if circuits.get(target_id) == "open":
            problems.append(Problem("target", target_id, "circuit_open",
                                    f"the circuit breaker of target {target_id} is open: deliveries to it are "
                                    "paused in at least one process").as_dict())
    return problems


def without_paused(stats: dict | None, target_stats: dict[str, dict] | None,
                   paused: Mapping[str, float] | None) -> dict | None:
    """The outbox figures the backlog and stall rules judge: ``stats`` without the items of paused targets (which
    wait on purpose), from each target's figures; ``stats`` itself when nothing is paused or the figures are unknown."""
    if not paused or stats is None or target_stats is None:
        return stats
    running = [entry for target_id, entry in target_stats.items() if target_id not in paused]
    ages = [float(entry["oldest_pending_age_s"]) for entry in running if entry.get("oldest_pending_age_s") is not None]
    heads = [entry for entry in running if entry.get("oldest_due_at") is not None]
    head = min(heads, key=lambda entry: float(entry["oldest_due_at"]), default=None)
    waiting = sum(int(entry.get("pending") or 0) for target_id, entry in target_stats.items() if target_id in paused)
    return {**stats, "pending": max(0, int(stats.get("pending") or 0) - waiting),
            "oldest_pending_age_s": max(ages, default=None),
            "oldest_due_at": None if head is None else head["oldest_due_at"],
            "oldest_due_delay": None if head is None else head.get("oldest_due_delay")}


@dataclass(frozen=True)
class ObservedReads:
    """What the observer read from the shared store in one observation (the last good read when this one failed)."""

    published: dict | None = None                    # the first mailbox's holder's status
    stats: dict | None = None                        # outbox_stats
    mailbox_statuses: dict[str, dict] | None = None  # each other mailbox's holder's status
    target_stats: dict[str, dict] | None = None      # target_stats, per target id
    paused: dict[str, float] | None = None           # paused_targets: target id -> paused at


def _stalls(read: ObservedReads, *, now: float, started: float, timings: HealthTimings, first_mailbox: str,
            other_mailboxes: tuple[str, ...], targets: tuple[str, ...]) -> list[dict]:
    """Every problem of a named mailbox, target or the outbox the observer's read shows (never ``down``)."""
    stalls = []
    mailbox = mailbox_stall(read.published, now=now, timings=timings, mailbox_id=first_mailbox)
    if mailbox:
        stalls.append(Problem("mailbox", first_mailbox, "stalled", mailbox).as_dict())
    statuses = read.mailbox_statuses or {}
    stalls += other_mailbox_problems(other_mailboxes, statuses, now=now, started=started, timings=timings)
    outbox = outbox_stall(without_paused(read.stats, read.target_stats, read.paused), now=now)
    if outbox:
        stalls.append(Problem("outbox", None, "stalled", outbox).as_dict())
    circuits = circuit_states([read.published, *statuses.values()])
    stalls += target_problems(targets, read.target_stats, circuits, now=now, paused=read.paused)
    return stalls


def observed_view(*, lease_state: str, held: bool, own_poller: dict, published: dict | None, stats: dict | None,
                  read_ok: bool, now: float, last_read_ok: float, started: float, timings: HealthTimings,
                  first_mailbox: str = DEFAULT_ID, other_mailboxes: tuple[str, ...] = (),
                  mailbox_statuses: dict[str, dict] | None = None, target_stats: dict[str, dict] | None = None,
                  targets: tuple[str, ...] = (), paused_targets: dict[str, float] | None = None) -> dict:
    """The cluster view the observer caches for ``/health``. ``published``, ``stats``, ``mailbox_statuses`` and
    ``target_stats`` are the last ones read (the cached ones when this read failed); a failed read turns the cluster
    ``stale`` only after ``stale_after``, so one slow answer does not flap the health. ``targets``: the configured
    target ids (their problems are reported in that order); ``paused_targets``: those an operator paused, whose
    waiting items are neither a backlog nor a stall."""
    poller, imap = polling_states(held=held, own_poller=own_poller, published=published)
    if not read_ok and now - last_read_ok > timings.stale_after:
        cluster = "stale"
    else:
        cluster = cluster_state(published, now=now, started=started, timings=timings)
    stalls = []
    if cluster != "stale":
        read = ObservedReads(published=published, stats=stats, mailbox_statuses=mailbox_statuses,
                             target_stats=target_stats, paused=paused_targets)
        stalls = _stalls(read, now=now, started=started, timings=timings, first_mailbox=first_mailbox,
                         other_mailboxes=other_mailboxes, targets=targets)
    return {"poller": poller, "lease": lease_state or LeaseState.STANDBY, "imap": imap,
            "outbox": outbox_state(without_paused(stats, target_stats, paused_targets)),
            "cluster": cluster, "published": published, "outbox_stats": stats, "stale": not read_ok,
            "mailbox_statuses": dict(mailbox_statuses or {}), "target_stats": target_stats, "stalls": stalls,
            "paused_targets": dict(paused_targets or {})}


# --- checks, status and problems ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Problem:
    """One thing that makes the status degraded or down."""

    kind: str            # mailbox | target | outbox | cluster
    id: str | None       # the mailbox or target id; None for what is one per cluster
    state: str
    detail: str

    def as_dict(self) -> dict:
        return {"kind": self.kind, "id": self.id, "state": self.state, "detail": self.detail}


@dataclass(frozen=True)
class ProblemRule:
    """``checks[check] == state`` is a problem of ``kind``/``subject`` (``state`` None: anything but ``ok``)."""

    check: str
    state: str | None
    kind: str
    subject: str | None
    detail: str
    down: bool = False   # a problem a restart of this instance fixes: the status is down (503)


# One row per problem state, in the order they are reported. Adding a state or a kind is adding a row.
PROBLEM_RULES: tuple[ProblemRule, ...] = (
    ProblemRule("poller", "down", "mailbox", DEFAULT_ID,
                "this instance's background threads stopped; a restart brings them back", down=True),
    ProblemRule("imap", ImapState.UNREACHABLE, "mailbox", DEFAULT_ID, "the IMAP server cannot be reached"),
    ProblemRule("imap", ImapState.AUTH_FAILED, "mailbox", DEFAULT_ID, MAILBOX_IMAP_PROBLEMS[ImapState.AUTH_FAILED]),
    ProblemRule("imap", ImapState.NO_SERVER_DONE_MARK, "mailbox", DEFAULT_ID,
                MAILBOX_IMAP_PROBLEMS[ImapState.NO_SERVER_DONE_MARK]),
    ProblemRule("imap", ImapState.REAUTH_REQUIRED, "mailbox", DEFAULT_ID,
                MAILBOX_IMAP_PROBLEMS[ImapState.REAUTH_REQUIRED]),
    ProblemRule("outbox", "backlog", "outbox", None,
                f"more than {OUTBOX_BACKLOG_ITEMS} webhooks pending, or the oldest older than "
                f"{OUTBOX_BACKLOG_AGE_SECONDS // 60} min"),
    ProblemRule("lease", LeaseState.REDIS_UNREACHABLE, "cluster", None,
                "Redis cannot be reached: nobody can hold the lease"),
    ProblemRule("cluster", "no_poller", "cluster", None, "nobody in the cluster is polling the mailbox"),
    ProblemRule("cluster", "stale", "cluster", None, "the shared state store cannot be read"),
    ProblemRule("cluster", None, "cluster", None, "the cluster is not healthy"),
)


@dataclass(frozen=True)
class Health:
    """``/health``'s answer without the version: status, checks, problems and the HTTP code."""

    status: str
    checks: dict
    problems: tuple[Problem, ...]

    @property
    def http_status(self) -> int:
        # 503 only when a restart would help (Render restarts an instance whose health check fails).
        return 503 if self.status == "down" else 200

    def problem_dicts(self) -> list[dict]:
        return [problem.as_dict() for problem in self.problems]


def health_checks(*, mode: str, threads_dead: bool, view: dict | None) -> dict:
    """The five checks: from the mode when the background does not run here, else from the observer's view."""
    if mode != "enabled":
        return {"poller": mode, "lease": "n/a", "imap": ImapState.NOT_APPLICABLE, "outbox": "n/a", "cluster": "ok"}
    if threads_dead:
        return {"poller": "down", "lease": "n/a", "imap": ImapState.NOT_APPLICABLE, "outbox": "n/a", "cluster": "stale"}
    view = view or {}
    return {"poller": view.get("poller", PollerState.STANDBY), "lease": view.get("lease", LeaseState.STANDBY),
            "imap": view.get("imap", ImapState.NOT_APPLICABLE), "outbox": view.get("outbox", "n/a"),
            "cluster": view.get("cluster", "ok")}


def _matching_rules(checks: dict, rules: tuple[ProblemRule, ...]) -> list[tuple[ProblemRule, str]]:
    """For each check in a problem state, the first rule that matches it, with the check's value."""
    matched: list[tuple[ProblemRule, str]] = []
    for check in CHECK_NAMES:
        value = checks.get(check)
        for rule in rules:
            if rule.check == check and (value == rule.state or (rule.state is None and value not in ("ok", None))):
                matched.append((rule, str(value)))
                break
    return matched


def problems_of(checks: dict, rules: tuple[ProblemRule, ...] = PROBLEM_RULES) -> tuple[Problem, ...]:
    """One problem per check in a problem state, in the order of ``CHECK_NAMES``."""
    return tuple(Problem(rule.kind, rule.subject, value, rule.detail) for rule, value in _matching_rules(checks, rules))


def status_of(checks: dict, rules: tuple[ProblemRule, ...] = PROBLEM_RULES) -> str:
    """``down`` when a restart would help, ``degraded`` for any other problem, ``ok`` without one."""
    matched = _matching_rules(checks, rules)
    if any(rule.down for rule, _ in matched):
        return "down"
    return "degraded" if matched else "ok"


def assess(*, mode: str, threads_dead: bool, view: dict | None) -> Health:
    """The whole health answer from the background mode, whether the threads died, and the observer's view (whose
    ``stalls`` are problems of their own: a stall is ``degraded``, never ``down``)."""
    checks = health_checks(mode=mode, threads_dead=threads_dead, view=view)
    problems = problems_of(checks)
    stalls = tuple(Problem(**stall) for stall in (view or {}).get("stalls") or ()) if mode == "enabled" else ()
    status = status_of(checks)
    if stalls and status == "ok":
        status = "degraded"
    return Health(status=status, checks=checks, problems=problems + stalls)


# --- the status document's poller rules -----------------------------------------------------------------------------

def local_poller_state(poller_state: str | None, lease_state: str | None) -> str | None:
    """This instance's own poller state: ``redis_unavailable`` while its lease keeper cannot reach Redis (it polls
    nothing until Redis answers again, issue 9)."""
    return PollerState.REDIS_UNAVAILABLE if lease_state == LeaseState.REDIS_UNREACHABLE else poller_state


def lease_held(published: dict | None) -> bool:
    """A lease holder published its status within TTL + retry (and said it holds the lease)."""
    return bool(published and (published.get("lease") or {}).get("state") == LeaseState.HELD)
