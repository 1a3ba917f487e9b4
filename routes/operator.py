"""The operator surface besides ``/health``: ``GET /api/status`` (JSON), ``GET /metrics`` (Prometheus), and the
console page's building blocks (its tables' rows, its stylesheet and ``render_page``; the routes ``/`` and
``/emails/<id>`` are ``routes/console.py``'s).

All of them render the one status document of ``routes.status_view``, so they always agree. ``/api/status`` needs
``STATUS_API_TOKEN`` (``Authorization: Bearer`` or ``X-API-Key``) and is 404 without a configured token;
``/metrics`` needs it when one is configured and is open otherwise (scrapers on a private network). Tokens are
compared in constant time on bytes. The metrics come from a ``CollectorRegistry`` built per request from the
document (never the process-global registry, whose counters would differ per worker). Any error answers JSON 500
without internals; the traceback goes to the (scrubbed) log. The page's HTML and CSS are the templates of
``routes/templates/``; the CSS is inlined and allowed by the Content-Security-Policy by its hash."""

from __future__ import annotations

import base64
import datetime
import functools
import hashlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from flask import Blueprint, Response, jsonify, render_template, request
from markupsafe import Markup

from routes import operator_source, status_source
from routes.access import COMMON_HEADERS, api_credentials_ok, guarded
from routes.access import json_error as _json_error
from routes.access import unauthorized_api as _unauthorized_api
from routes.status_view import KNOWN_COUNTERS, LABELLED_COUNTERS, RECENT_LIMIT, build_status
from timestamps import epoch_of

logger = logging.getLogger(__name__)

METRIC_PREFIX = "render_signal_"

# The page's HTML and CSS live in routes/templates/ (Flask's Jinja autoescapes every .html template).
bp = Blueprint("operator", __name__, template_folder="templates")


def _read_credentials_ok(status_token: str | None) -> bool:
    """The status token or the admin token (which also reads), as Bearer or ``X-API-Key``."""
    admin_token = operator_source().admin_api_token
    status_ok = bool(status_token) and api_credentials_ok(status_token or "")
    admin_ok = bool(admin_token) and api_credentials_ok(admin_token or "")
    return status_ok or admin_ok


_guarded = guarded("STATUS")


# --- /api/status ------------------------------------------------------------------------------------------------------

@bp.get("/api/status")
@_guarded
def api_status() -> Response:
    source = status_source()
    token = source.status_api_token
    if not token and not operator_source().admin_api_token:
        return _json_error(404, "not_found")
    if not _read_credentials_ok(token):
        return _unauthorized_api()
    document, _ = build_status(source)
    response = jsonify(document)
    response.headers.update(COMMON_HEADERS)
    return response


# --- /metrics ---------------------------------------------------------------------------------------------------------

class StatusCollector:
    """A prometheus_client collector over one status document (built per request)."""

    def __init__(self, document: dict) -> None:
        self.document = document

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        doc = self.document
        series = doc.get("counter_series")
        if series is not None:
            yield from _counter_families(series)

        def gauge(name: str, help_text: str, value: float | None) -> Iterator[Any]:
            if value is None or (isinstance(value, float) and math.isnan(value)):
                return
            yield GaugeMetricFamily(f"{METRIC_PREFIX}{name}", help_text, value=float(value))

        yield from gauge("up", "1: this process answered (see status_stale for the shared store).", 1)
        yield from gauge("status_stale", "1 when the shared state store could not be read for this answer.",
                         1 if doc.get("stale") else 0)
        outbox = doc.get("outbox")
        if outbox is not None:
            yield from gauge("outbox_pending", "Webhooks waiting for delivery.", outbox.get("pending"))
            yield from gauge("outbox_enriching", "Of the pending webhooks, those waiting for their R2 copies.",
                             outbox.get("enriching") or 0)
            yield from gauge("outbox_oldest_pending_age_seconds", "Age of the oldest pending webhook (0 if none).",
                             outbox.get("oldest_pending_age_s") or 0.0)
            # Not "dead_letters": that family is the counter render_signal_dead_letters_total.
            yield from gauge("outbox_dead_letters", "Dead letters currently kept (within STATE_RETENTION_DAYS).",
                             (outbox.get("dead_letters") or {}).get("count"))
        yield from gauge("oldest_unfinished_email_age_seconds",
                         "Age of the oldest email not yet delivered, skipped or parked (0 if none).",
                         doc.get("oldest_unfinished_email_age_s"))
        yield from gauge("last_success_age_seconds", "Seconds since the lease holder's last successful IMAP cycle.",
                         doc.get("last_success_age_s"))
        lease = doc.get("lease") or {}
        if not doc.get("stale") and doc.get("background") == "enabled":
            yield from gauge("lease_held", "1 when a lease holder published its status within TTL + retry.",
                             1 if doc.get("lease_held") else 0)
        yield from gauge("lease_renewals", "Renewals by the current lease holder.", lease.get("renewals"))
        yield from gauge("lease_losses", "Leases lost by the current lease holder process.", lease.get("losses"))
        poller = doc.get("poller") or {}
        yield from gauge("poller_consecutive_errors", "Consecutive failed poller cycles.",
                         poller.get("consecutive_errors"))
        state = poller.get("state")
        if state:
            state_family = GaugeMetricFamily(f"{METRIC_PREFIX}poller_state", "1 for the poller's current state.",
                                             labels=["state"])
            state_family.add_metric([str(state)], 1.0)
            yield state_family
        yield from _per_target_and_mailbox(doc)
        info = GaugeMetricFamily(f"{METRIC_PREFIX}build_info", "Version of the answering instance.",
                                 labels=["version"])
        info.add_metric([str((doc.get("instance") or {}).get("version") or "")], 1.0)
        yield info


def _target_states(targets: list[dict]) -> Iterator[Any]:
    """``target_circuit_open`` (1 while some holder's breaker of the target is open or half-open; only targets whose
    circuit a holder reported) and ``target_window_open`` (only targets with a delivery window)."""
    from prometheus_client.core import GaugeMetricFamily

    circuit = GaugeMetricFamily(f"{METRIC_PREFIX}target_circuit_open",
                                "1 while a holder's circuit breaker of the target is open or half-open.",
                                labels=["target"])
    window = GaugeMetricFamily(f"{METRIC_PREFIX}target_window_open",
                               "1 while the target's delivery window is open (targets with a window only).",
                               labels=["target"])
    for entry in targets:
        if entry.get("circuit") is not None:
            circuit.add_metric([str(entry["id"])], 0.0 if entry["circuit"] == "closed" else 1.0)
        if isinstance(entry.get("window"), dict):
            window.add_metric([str(entry["id"])], 1.0 if entry["window"].get("open") else 0.0)
    yield circuit
    yield window


def _per_target_and_mailbox(doc: dict) -> Iterator[Any]:
    """Gauges labelled ``target`` (pending, held, oldest pending age, dead) and ``mailbox`` (backlog, held here)."""
    from prometheus_client.core import GaugeMetricFamily

    targets = [entry for entry in doc.get("targets") or [] if entry.get("pending") is not None]
    for key, name, help_text in (
            ("pending", "target_pending", "Webhooks waiting for delivery, per target (not those held)."),
            ("held", "target_held", "Webhooks held outside their target's delivery window."),
            ("oldest_pending_age_s", "target_oldest_pending_age_seconds", "Age of a target's oldest pending webhook."),
            ("dead", "target_dead_letters", "Dead letters currently kept, per target.")):
        family = GaugeMetricFamily(f"{METRIC_PREFIX}{name}", help_text, labels=["target"])
        for entry in targets:
            family.add_metric([str(entry["id"])], float(entry.get(key) or 0))
        yield family
    yield from _target_states(doc.get("targets") or [])
    mailboxes = doc.get("mailboxes") or []
    backlog = GaugeMetricFamily(f"{METRIC_PREFIX}mailbox_backlog", "Pending webhooks per mailbox.",
                                labels=["mailbox"])
    held = GaugeMetricFamily(f"{METRIC_PREFIX}mailbox_lease_held", "1 when some process holds the mailbox's lease.",
                             labels=["mailbox"])
    reauth = GaugeMetricFamily(f"{METRIC_PREFIX}mailbox_reauth_required",
                               "1 while the mailbox's OAuth2 sign-in needs an operator (reauth_required).",
                               labels=["mailbox"])
    for entry in mailboxes:
        if entry.get("backlog") is not None:
            backlog.add_metric([str(entry["id"])], float(entry["backlog"]))
        held.add_metric([str(entry["id"])], 1.0 if (entry.get("lease") or {}).get("held") else 0.0)
        reauth.add_metric([str(entry["id"])], 1.0 if entry.get("imap") == "reauth_required" else 0.0)
    yield backlog
    yield held
    yield reauth


def _counter_families(series: list[dict]) -> Iterator[Any]:
    """One counter family per name, in the status document's ``counter_series`` key format: the family's labels are
    every label any of its series has (``reason`` always for the counters by reason); a series without one of them
    carries "" for it. A known counter that never moved is 0 (or, by reason, an empty family)."""
    from prometheus_client.core import CounterMetricFamily

    by_name: dict[str, list[dict]] = {}
    for row in series:
        if _valid_metric_part(row["name"]):
            by_name.setdefault(row["name"], []).append(row)
    extra = sorted(name for name in by_name if name not in KNOWN_COUNTERS)
    for name in [*KNOWN_COUNTERS, *extra]:
        rows = by_name.get(name, [])
        metric = f"{METRIC_PREFIX}{name}"
        help_text = f"{name.replace('_', ' ').capitalize()} since the first start (cluster-wide)."
        label_names = sorted({label for row in rows for label in row["labels"]}
                             | ({"reason"} if name in LABELLED_COUNTERS else set()))
        if not label_names:
            yield CounterMetricFamily(metric, help_text, value=float(sum(row["value"] for row in rows)))
            continue
        family = CounterMetricFamily(metric, help_text, labels=label_names)
        for row in rows:
            family.add_metric([str(row["labels"].get(label, "")) for label in label_names], float(row["value"]))
        yield family


def _valid_metric_part(name: str) -> bool:
    return bool(name) and all(ch.isalnum() and ch.isascii() or ch == "_" for ch in name) and not name[0].isdigit()


def render_metrics(document: dict, accept: str | None = None) -> tuple[bytes, str]:
    """``(body, content type)``: the classic text format, or OpenMetrics when the scraper asks for it."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.exposition import choose_encoder

    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(document))
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type


@bp.get("/metrics")
@_guarded
def metrics() -> Response:
    source = status_source()
    token = source.status_api_token
    if (token or operator_source().admin_api_token) and not _read_credentials_ok(token):
        return _unauthorized_api()
    document, _ = build_status(source)
    body, content_type = render_metrics(document, request.headers.get("Accept"))
    response = Response(body, content_type=content_type)
    response.headers.update(COMMON_HEADERS)
    return response


# --- / (the human page) -------------------------------------------------------------------------------------------

STYLE_PATH = Path(__file__).with_name("templates") / "status.css"


@dataclass(frozen=True)
class InlineStyle:
    """The page's one stylesheet, exactly as it is rendered inline, and the CSP that allows only it (by hash)."""

    css: str
    content_security_policy: str


def inline_style(css: str) -> InlineStyle:
    # The hash is taken over the very text the template inserts; the file's trailing newline is not part of it.
    css = css.strip()
    digest = base64.b64encode(hashlib.sha256(css.encode("utf-8")).digest()).decode("ascii")
    # Nothing may load from anywhere: no script, no image, no font, no frame; only the inline style. Forms (the
    # console's actions, the login) may post to this origin only.
    policy = (f"default-src 'none'; style-src 'sha256-{digest}'; img-src 'none'; "
              "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
    return InlineStyle(css=css, content_security_policy=policy)


@functools.cache
def page_style() -> InlineStyle:
    """The stylesheet of ``STYLE_PATH``, read once per process (on first use, not at import)."""
    return inline_style(STYLE_PATH.read_text(encoding="utf-8"))


# --- the page's Mailboxes and Targets tables: display text built here, so the template only prints it ----------

NOT_KNOWN = "\u2014"  # an em dash: no value (not configured, not published, or the store was unreadable)
CIRCUIT_MARKS = {"open": "bad", "half_open": "warn"}


@dataclass(frozen=True)
class MailboxRow:
    """One row of the page's Mailboxes table. ``mark`` names a state that needs the operator's eye (a CSS class,
    always beside a text saying it, never colour alone)."""

    id: str
    folder: str
    state: str
    mark: str | None
    holder: str
    checkpoint: str
    backlog: str
    last_success: str


@dataclass(frozen=True)
class TargetRow:
    """One row of the page's Targets table (counts and policy only: a target's URL, secret and headers are never
    in the status document, so never here)."""

    id: str
    profile: str
    pending: str
    held: str
    oldest_pending: str
    dead: str
    circuit: str
    circuit_mark: str | None
    window: str
    window_opens_at: str | None   # the UTC instant behind "opens ...", for the <time> element
    rate_limit: str
    body_cap: str


def human_age(seconds: float | None) -> str:
    """``42 s``, ``3 min``, ``2 h 5 min``, ``3 d 4 h``: how long an operator reads an age (rounded down)."""
    if seconds is None:
        return NOT_KNOWN
    whole = max(0, int(seconds))
    if whole < 60:
        return f"{whole} s"
    minutes, hours, days = whole // 60, whole // 3600, whole // 86400
    if whole < 3600:
        return f"{minutes} min"
    if whole < 86400:
        return f"{hours} h {minutes % 60} min" if minutes % 60 else f"{hours} h"
    return f"{days} d {hours % 24} h" if hours % 24 else f"{days} d"


def human_bytes(count: int | None) -> str:
    """Decimal units, as the configuration is written (``max_body_bytes: 4000000`` is ``4 MB``)."""
    if count is None:
        return NOT_KNOWN
    for unit, size in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if count >= size:
            return f"{count / size:.1f}".removesuffix(".0") + f" {unit}"
    return f"{count} B"


def _shown(value: Any) -> str:
    return NOT_KNOWN if value is None or value == "" else str(value)


def mailbox_row(entry: dict) -> MailboxRow:
    """A ``mailboxes[]`` entry of the status document as the page shows it."""
    lease = entry.get("lease") or {}
    checkpoint = entry.get("checkpoint") or {}
    if entry.get("state") == "no_holder":
        state, mark = "no holder", "warn"
    else:
        state, mark = _shown(entry.get("state")), None
    if lease.get("held"):
        holder = f"held by {lease['holder']}" if lease.get("holder") else "held"
    else:
        holder = "none"
    uidvalidity, last_uid = checkpoint.get("uidvalidity"), checkpoint.get("last_uid")
    position = NOT_KNOWN if uidvalidity is None and last_uid is None else f"{_shown(uidvalidity)}/{_shown(last_uid)}"
    return MailboxRow(id=_shown(entry.get("id")), folder=_shown(entry.get("folder")), state=state, mark=mark,
                      holder=holder, checkpoint=position, backlog=_shown(entry.get("backlog")),
                      last_success=_shown(entry.get("last_success_at")))


def _window_text(entry: dict) -> tuple[str, str | None]:
    """``(text, UTC instant)``: "always open" (no window), "open", or "opens <local time> <zone>"."""
    if "window" not in entry:
        return NOT_KNOWN, None
    window = entry["window"]
    if window is None:
        return "always open", None
    if window.get("open"):
        return "open", None
    opens_at, zone_name = window.get("opens_at"), window.get("timezone") or "UTC"
    epoch = epoch_of(opens_at)
    if epoch is None:
        return "closed", None
    try:
        zone: datetime.tzinfo = ZoneInfo(zone_name)
    except (ZoneInfoNotFoundError, ValueError):
        zone, zone_name = datetime.timezone.utc, "UTC"
    local = datetime.datetime.fromtimestamp(epoch, zone)
    return f"opens {local:%a %Y-%m-%d %H:%M} {zone_name}", opens_at


def target_row(entry: dict) -> TargetRow:
    """A ``targets[]`` entry of the status document as the page shows it; ``circuit`` ("closed", "open",
    "half_open") only when the document carries one."""
    circuit = entry.get("circuit")
    window, opens_at = _window_text(entry)
    if "rate_per_second" not in entry:
        rate = NOT_KNOWN
    elif entry["rate_per_second"] is None:
        rate = "unlimited"
    else:
        rate = f"{float(entry['rate_per_second']):g}/s"
    return TargetRow(id=_shown(entry.get("id")), profile=_shown(entry.get("profile")),
                     pending=_shown(entry.get("pending")), held=_shown(entry.get("held")),
                     oldest_pending=human_age(entry.get("oldest_pending_age_s")), dead=_shown(entry.get("dead")),
                     circuit=_shown(circuit).replace("_", "-"),
                     circuit_mark=CIRCUIT_MARKS.get(circuit) if isinstance(circuit, str) else None,
                     window=window, window_opens_at=opens_at, rate_limit=rate,
                     body_cap=human_bytes(entry.get("body_cap_bytes")))


def render_page(document: dict | None, recent: list[dict], *, health: dict, version: str, generated_at: str,
                viewer: Any = None, reads: Any = None) -> str:
    """The console's HTML for one status document (None: the ``/health`` summary only); needs an app context.
    ``viewer`` and ``reads`` are ``routes.console``'s (who looks, and the dead letters, parked emails, history and
    links it read); without them the page shows the status document alone, read-only."""
    from routes.console import ConsoleReads, health_reasons, mailbox_health, notice_text, recent_rows, target_health

    reads = reads if reads is not None else ConsoleReads()
    reasons = health_reasons(document)
    mailboxes = [(mailbox_row(entry), *mailbox_health(entry, reasons))
                 for entry in (document or {}).get("mailboxes") or []]
    targets = [(target_row(entry), *target_health(entry, reasons), bool(entry.get("paused")))
               for entry in (document or {}).get("targets") or []]
    source_mailboxes = [row.id for row, _, _ in mailboxes]
    # The style is our constant: unescaped, or its quotes would become entities (broken CSS, wrong CSP hash).
    return render_template("status.html", style=Markup(page_style().css), doc=document,
                           recent=recent_rows(recent, reads), health=health, version=version,
                           generated_at=generated_at, recent_limit=RECENT_LIMIT, mailboxes=mailboxes,
                           targets=targets, viewer=viewer, reads=reads, notice=notice_text() if viewer else None,
                           mailbox_ids=source_mailboxes, here="/")
