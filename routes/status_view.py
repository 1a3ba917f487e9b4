"""The status document behind ``/api/status``, ``/metrics`` and the ``/`` page: one builder, so they always agree.

``read_cluster_state(source, now)`` does the store reads (the lease holder's published document, the cluster-wide
counters, the outbox figures and, for the page, the recent history) and turns any ``StateStoreError`` into
``stale``. ``build_status_document(...)`` is a pure function of those reads and this instance's own view. The
lease and poller sections come from the document the lease holder publishes, never from the worker that happens to
answer, and counters/outbox come from the shared store, so every worker of every container gives the same answer.
When the store cannot be read the document is this instance's own view with ``"stale": true``. ``mailboxes`` and
``targets`` restate those sections per mailbox / webhook target (today one each, ``default``); ``health`` and
``problems`` are ``/health``'s, whose rules (like the poller-state rules used here) live in ``background.health``.
Every string is passed through ``log_setup.scrub`` before it leaves: no secret and no unmasked correspondent address
in an answer.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from background.health import DEFAULT_ID, circuit_states, lease_held, local_poller_state
from background.lease import LeaseState
from background.runner import PollerState
from background.status_source import StatusSource
from log_setup import scrub_value
from services.state_store import fold_series
from timestamps import epoch_of, iso_utc, iso_utc_ms

logger = logging.getLogger(__name__)

# Counters every store is expected to carry (the metric names without prefix/suffix); reported as 0 until they
# first move, so dashboards and alerts see the series from the start. "by reason" counters carry a label.
KNOWN_COUNTERS: tuple[str, ...] = (
    "emails_seen", "emails_processed", "emails_skipped", "webhooks_delivered", "webhook_retries", "dead_letters",
    "possible_duplicates", "r2_success", "r2_fallback", "html_truncations", "parse_failures",
    "emails_parked", "duplicates_merged", "flag_requests_dropped", "links_truncated", "links_refused",
    "enrichments",
)
LABELLED_COUNTERS = frozenset({"emails_skipped", "r2_fallback", "emails_parked", "links_refused", "enrichments"})
RECENT_LIMIT = 20
DEAD_LETTERS_SHOWN = 5

LEASE_FIELDS = ("backend", "holder", "acquired_at", "expires_in_s", "renewals", "losses")
POLLER_FIELDS = ("state", "imap", "mailbox", "uidvalidity", "last_uid", "idle", "last_cycle_at", "last_success_at",
                 "last_error", "consecutive_errors", "server_uid_max", "waiting", "retry_set", "checkpoint_moved_at",
                 "auth_method", "oauth_provider", "token_expires_at", "last_refresh_at")
PARKED_SHOWN = 20


@dataclass
class ClusterReads:
    """What one request read from the shared store (``stale`` when it could not be read)."""

    stale: bool = False
    published: dict | None = None
    counters: dict | None = None
    series: list[tuple[str, dict[str, str], int]] | None = None   # every counter with its labels
    parked_count: int | None = None
    parked: list = field(default_factory=list)                      # the newest ParkedEmail records
    outbox_stats: dict | None = None
    mailbox_statuses: dict[str, dict] = field(default_factory=dict)  # each mailbox holder's published status
    target_stats: dict[str, dict] | None = None
    backlog: dict[str, int] = field(default_factory=dict)            # pending items per mailbox id
    recent: list[dict] = field(default_factory=list)
    paused: dict[str, float] = field(default_factory=dict)           # paused targets: id -> paused at
    read: bool = False   # False when the store was deliberately not consulted (nothing shared to read)


def _store_is_shared(source: StatusSource) -> bool:
    """The store holds cluster state worth reading: the background runs here, or a shared Redis is configured
    (a web-only container still shows what the holder elsewhere published). Without either, a GET must not create
    a SQLite file."""
    return source.background_mode == "enabled" or source.shared_redis


def read_cluster_state(source: StatusSource, now: float, *, recent_limit: int = 0) -> ClusterReads:
    """Read the shared state for one answer; never raises for a store failure (that is ``stale``)."""
    from services.state_store import StateStoreError

    if not _store_is_shared(source):
        return ClusterReads()
    view = source.cluster_view() or {}
    if view.get("stale"):
        # The observer's last read failed moments ago: answer at once from this instance's view instead of holding
        # a request thread for a full store timeout per call.
        return ClusterReads(stale=True, outbox_stats=view.get("outbox_stats"), read=True)
    try:
        store = source.open_store()
        reads = ClusterReads(read=True)
        reads.published = store.read_status()
        reads.series = store.counter_series()
        reads.counters = fold_series(reads.series)
        reads.outbox_stats = store.outbox_stats(now)
        reads.parked_count = store.parked_count()
        reads.parked = store.list_parked(PARKED_SHOWN)
        reads.mailbox_statuses = store.read_mailbox_statuses(source.mailbox_ids)
        breakdown = store.outbox_breakdown(now)   # the targets' figures and the mailboxes' backlog in one pass
        reads.target_stats = breakdown["targets"]
        reads.backlog = dict(breakdown["mailboxes"])
        reads.paused = store.paused_targets()
        if recent_limit > 0:
            reads.recent = list(store.recent(recent_limit))
        return reads
    except StateStoreError as exc:
        logger.info("STATUS: state store unreadable, answering with this instance's view: %s", exc)
        return ClusterReads(stale=True, outbox_stats=view.get("outbox_stats"), read=True)


def build_status_document(*, mode: str, lease_backend: str, mailbox_folder: str, version: str, instance: dict,
                          local_lease: dict | None, local_poller: dict, health: dict | None, reads: ClusterReads,
                          now: float, problems: list[dict] | None = None, mailbox_ids: tuple[str, ...] = (),
                          targets: tuple = ()) -> dict:
    """The status document (pure): see the module docstring and the README's "Operations" section. ``problems``
    are ``/health``'s (``background.health``); ``lease_backend`` is ``redis`` or ``file``."""
    published = reads.published if not reads.stale else None
    if mode != "enabled":
        lease = _lease_section(None, lease_backend)
        poller = _poller_section({"state": mode, "mailbox": mailbox_folder if mode == "disabled" else None})
        source: dict[str, Any] = {"kind": mode, "published_at": None, "published_by": None}
    elif reads.stale:
        lease = _lease_section(local_lease, lease_backend)
        own = dict(local_poller)
        own["state"] = local_poller_state(own.get("state"), (local_lease or {}).get("state"))
        poller = _poller_section(own)
        source = {"kind": "local", "published_at": None, "published_by": None}
    elif published:
        lease = _lease_section(published.get("lease"), lease_backend)
        poller = _poller_section(published.get("poller") or {})
        holder_instance = published.get("instance") or {}
        source = {"kind": "published", "published_at": iso_utc_ms(published.get("published_at")),
                  "published_by": {key: holder_instance.get(key) for key in ("host", "pid", "worker")}}
    else:
        # Nobody published a holder's status within TTL + retry: the same answer from every instance.
        lease = _lease_section(None, lease_backend)
        poller = _poller_section({"state": PollerState.STANDBY, "mailbox": mailbox_folder})
        source = {"kind": "no_holder", "published_at": None, "published_by": None}

    last_success = None
    if published:
        published_poller = published.get("poller") or {}
        last_success = published_poller.get("last_success_epoch") or epoch_of(published_poller.get("last_success_at"))
    elif reads.stale:
        last_success = local_poller.get("last_success_epoch") or epoch_of(local_poller.get("last_success_at"))

    outbox = _outbox_section(reads.outbox_stats)
    document = {
        "generated_at": iso_utc_ms(now),
        "stale": bool(reads.stale),
        "background": mode,
        "lease": lease,
        "lease_held": lease_held(published),
        "poller": poller,
        "last_success_age_s": round(max(0.0, now - float(last_success)), 1) if last_success else None,
        "counters": _counters_section(reads.counters) if reads.counters is not None else None,
        "counter_series": _series_section(reads.series) if reads.series is not None else None,
        "outbox": outbox,
        "instance": _instance_section(instance, version),
        "source": source,
        "health": health,
        "problems": list(problems or []),
        "mailboxes": _mailboxes_section(mailbox_ids, poller, lease, lease_held(published), reads),
        "targets": _targets_section(targets, outbox, reads, now),
        "stranded": (published or {}).get("stranded"),
        "parked": _parked_section(reads) if reads.parked_count is not None else None,
        "oldest_unfinished_email_age_s": _oldest_unfinished_age(published, reads.outbox_stats, now),
    }
    return scrub_document(document)


def build_status(source: StatusSource, *, now: float | None = None, recent_limit: int = 0) -> tuple[dict, list[dict]]:
    """Read and build in one go: ``(status document, recent history entries)`` (entries scrubbed too)."""
    from routes.health import assess_source

    now = time.time() if now is None else now
    reads = read_cluster_state(source, now, recent_limit=recent_limit)
    health = assess_source(source)
    document = build_status_document(
        mode=source.background_mode, lease_backend=source.lease_backend, mailbox_folder=source.mailbox_folder,
        version=source.version, instance=source.instance(), local_lease=source.lease_snapshot(),
        local_poller=source.poller_snapshot(), health={"status": health.status, "checks": health.checks},
        reads=reads, now=now, problems=health.problem_dicts(), mailbox_ids=source.mailbox_ids,
        targets=source.targets)
    recent = [_recent_entry(entry) for entry in reads.recent[:recent_limit]] if not reads.stale else []
    return document, scrub_document(recent)


# --- sections -----------------------------------------------------------------------------------------------------

def _lease_section(snapshot: dict | None, backend: str) -> dict:
    snapshot = snapshot or {}
    section = {name: snapshot.get(name) for name in LEASE_FIELDS}
    section["backend"] = section["backend"] or backend
    section["state"] = snapshot.get("state") or (LeaseState.STANDBY if snapshot else None)
    return section


def _poller_section(snapshot: dict) -> dict:
    section = {name: snapshot.get(name) for name in POLLER_FIELDS}
    section["idle"] = bool(section["idle"])
    section["consecutive_errors"] = int(section["consecutive_errors"] or 0)
    error = section["last_error"]
    if isinstance(error, dict):
        section["last_error"] = {"at": error.get("at"), "message": error.get("message")}
    elif error:
        section["last_error"] = {"at": None, "message": str(error)}
    else:
        section["last_error"] = None
    return section


def _counters_section(raw: dict) -> dict:
    counters: dict[str, Any] = {}
    for name in KNOWN_COUNTERS:
        counters[name] = {} if name in LABELLED_COUNTERS else 0
    for name, value in sorted(raw.items()):
        if isinstance(value, dict):
            counters[name] = {str(label): int(count) for label, count in sorted(value.items())}
        elif name in LABELLED_COUNTERS:
            # Only ever counted without a label: keep the number under an empty reason rather than lose it.
            counters[name] = {"": int(value)}
        else:
            counters[name] = int(value)
    return counters


def _parked_section(reads: ClusterReads) -> dict:
    """Parked emails: how many, and the newest (no link, no body: subject and ids only)."""
    recent = [{"parked_id": p.parked_id, "email_id": p.email_id, "mailbox": p.mailbox_id, "uid": p.uid,
               "message_id": p.message_id, "subject": p.subject, "reason": p.reason, "at": iso_utc(p.parked_at),
               "replay_requested": p.replay_requested_at is not None, "replay_refused": p.replay_refused}
              for p in reads.parked]
    return {"count": int(reads.parked_count or 0), "recent": recent}


def _oldest_unfinished_age(published: dict | None, stats: dict | None, now: float) -> float | None:
    """Seconds the oldest email not yet in an end state has waited: the oldest pending webhook, or mail waiting past
    a checkpoint (at most as long as the checkpoint has not moved). None when nothing is known."""
    ages = []
    if stats is not None:
        ages.append(float(stats.get("oldest_pending_age_s") or 0.0))
    poller = (published or {}).get("poller") or {}
    moved = poller.get("checkpoint_moved_epoch") or poller.get("last_success_epoch")
    if poller.get("waiting") and moved:
        ages.append(max(0.0, now - float(moved)))
    return round(max(ages), 1) if ages else None


def _series_section(series: list[tuple[str, dict[str, str], int]]) -> list[dict]:
    """Every counter with its labels (mailbox, target, reason), sorted: what /metrics exposes, label by label."""
    rows = [{"name": name, "labels": dict(sorted(labels.items())), "value": int(value)}
            for name, labels, value in series]
    return sorted(rows, key=lambda row: (row["name"], sorted(row["labels"].items())))


def _outbox_section(stats: dict | None) -> dict | None:
    if stats is None:
        return None
    oldest = stats.get("oldest_pending_age_s")
    recent = [{"event_id": item.get("event_id"), "reason": item.get("reason"), "status": item.get("status"),
               "at": iso_utc(item.get("at"))} for item in (stats.get("dead_recent") or [])[:DEAD_LETTERS_SHOWN]]
    return {"pending": int(stats.get("pending") or 0),
            "enriching": int(stats.get("enriching") or 0),   # of the pending: waiting for their R2 copies
            "oldest_pending_age_s": round(float(oldest), 1) if oldest is not None else None,
            "dead_letters": {"count": int(stats.get("dead") or 0), "recent": recent},
            # pending items with a link that expires before their retry window ends (issue 19)
            "links_expiring": list(stats.get("links_expiring") or [])}


def _mailbox_entry(mailbox_id: str, poller: dict, lease: dict, held: bool) -> dict:
    """One mailbox, from the poller and lease sections already built (today only ``DEFAULT_ID``)."""
    return {"id": mailbox_id, "folder": poller.get("mailbox"), "state": poller.get("state"),
            "imap": poller.get("imap"),
            "lease": {"held": held, "holder": lease.get("holder"), "state": lease.get("state"),
                      "expires_in_s": lease.get("expires_in_s")},
            "checkpoint": {"uidvalidity": poller.get("uidvalidity"), "last_uid": poller.get("last_uid")},
            "idle": poller.get("idle"), "last_success_at": poller.get("last_success_at"),
            "auth": {"method": poller.get("auth_method"), "oauth_provider": poller.get("oauth_provider"),
                     "token_expires_at": poller.get("token_expires_at"),
                     "last_refresh_at": poller.get("last_refresh_at")}}


def _mailboxes_section(mailbox_ids: tuple[str, ...], poller: dict, lease: dict, held: bool,
                       reads: ClusterReads) -> list[dict]:
    """Every configured mailbox: the first from the poller and lease sections (the single-mailbox fields), each
    other from the status its holder published (``no_holder`` when none did within TTL + retry)."""
    ids = mailbox_ids or (DEFAULT_ID,)
    entries = []
    for index, mailbox_id in enumerate(ids):
        if index == 0:
            entry = _mailbox_entry(mailbox_id, poller, lease, held)
        elif mailbox_id in reads.mailbox_statuses:
            published = reads.mailbox_statuses[mailbox_id]
            entry = _mailbox_entry(mailbox_id, _poller_section(published.get("poller") or {}),
                                   _lease_section(published.get("lease"), lease.get("backend") or "redis"), True)
        else:
            entry = {"id": mailbox_id, "folder": None, "state": "no_holder", "imap": None,
                     "lease": {"held": False, "holder": None, "state": None, "expires_in_s": None},
                     "checkpoint": {"uidvalidity": None, "last_uid": None}, "idle": None, "last_success_at": None,
                     "auth": None}
        entry["backlog"] = reads.backlog.get(mailbox_id, 0) if reads.read and not reads.stale else None
        entries.append(entry)
    return entries


def _targets_section(targets: tuple, outbox: dict | None, reads: ClusterReads, now: float) -> list[dict]:
    """Every configured target: its own counts (pending, held, oldest pending age, dead), whether it is paused,
    its window and its circuit (the worst any holder published: ``open``, ``half_open``, ``closed``; None when no
    holder published)."""
    circuits = circuit_states([reads.published, *reads.mailbox_statuses.values()])
    if not targets:
        return [{**_target_entry(DEFAULT_ID, outbox, circuits.get(DEFAULT_ID)), **_paused_fields(DEFAULT_ID, reads)}]
    from email_processing.delivery_window import window_opens_at

    entries = []
    for target in targets:
        stats = (reads.target_stats or {}).get(target.id, {"pending": 0, "held": 0, "dead": 0,
                                                             "oldest_pending_age_s": None})
        window = None
        if target.window is not None:
            try:
                opens = window_opens_at(target.window, now)
            except ValueError:
                opens = None
            window = {"open": opens is None, "opens_at": iso_utc_ms(opens) if opens is not None else None,
                      "timezone": target.window.timezone}
        known = reads.target_stats is not None
        oldest = stats.get("oldest_pending_age_s")
        entries.append({"id": target.id, "profile": target.profile.value,
                        "pending": stats["pending"] if known else None, "held": stats["held"] if known else None,
                        "oldest_pending_age_s": round(float(oldest), 1) if known and oldest is not None else None,
                        "dead": stats["dead"] if known else None, "circuit": circuits.get(target.id),
                        "window": window,
                        "rate_per_second": target.rate_limit, "body_cap_bytes": target.body_cap,
                        **_paused_fields(target.id, reads)})
    return entries


def _paused_fields(target_id: str, reads: ClusterReads) -> dict:
    """``paused`` (an operator paused the target: its items wait, claimed by nobody) and ``paused_at`` (ISO or
    None). Unknown (None) when the store was not read or could not be."""
    if not reads.read or reads.stale:
        return {"paused": None, "paused_at": None}
    at = reads.paused.get(target_id)
    return {"paused": at is not None, "paused_at": iso_utc(at) if at is not None else None}


def _target_entry(target_id: str, outbox: dict | None, circuit: str | None) -> dict:
    """One webhook target, from the outbox section (counts only: its URL never appears in an answer)."""
    outbox = outbox or {}
    return {"id": target_id, "pending": outbox.get("pending"),
            "oldest_pending_age_s": outbox.get("oldest_pending_age_s"),
            "dead": (outbox.get("dead_letters") or {}).get("count"), "circuit": circuit}


def _instance_section(instance: dict, version: str) -> dict:
    return {"host": instance.get("host"), "pid": instance.get("pid"), "worker": instance.get("worker"),
            "uptime_s": instance.get("uptime_s"), "version": instance.get("version") or version}


def _recent_entry(entry: dict) -> dict:
    links = entry.get("links") or []
    return {"at": entry.get("at"), "sender": entry.get("sender") or "", "subject": (entry.get("subject") or "")[:80],
            "links": [str(link) for link in links if link], "outcome": entry.get("outcome") or "",
            "event_id": entry.get("event_id")}


def scrub_document(value: Any) -> Any:
    """Every string of a JSON-like value through ``log_setup.scrub`` (secrets out, correspondents masked)."""
    return scrub_value(value)
