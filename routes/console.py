"""The operator console: ``GET /`` (health, recent emails, dead letters, parked emails, actions, history) and
``GET /emails/<email_id>`` (everything known about one email), server-rendered HTML that runs no script at all.

Who sees what: a browser session of ``routes/access.py`` (signed in on ``/login`` with ``STATUS_API_TOKEN`` to read
or ``ADMIN_API_TOKEN`` to act), or HTTP Basic with a token as password (read-only: a Basic client carries no CSRF
token, so it gets no forms). Without any credential a browser is sent to the login form; with a wrong one the answer
is 401. With no token configured at all, ``/`` shows the ``/health`` summary only. The forms post to the operator
API's own paths (``routes/actions.py``) with the session's CSRF token and come back here by a 303 (``next``), whose
``notice`` the page shows. Payloads are rendered only for an admin; every string passes ``log_setup.scrub`` (no
secret, correspondents masked). The Content-Security-Policy allows the one inline stylesheet (by hash), no script,
and forms that post to this origin only.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from flask import Blueprint, Response, render_template, request

from log_setup import scrub
from routes import operator_source, session_keys, status_source
from routes.access import COMMON_HEADERS, REALM, basic_credentials_ok, current_session, html_page, html_response
from routes.status_view import RECENT_LIMIT, build_status, scrub_document
from services.state_store import StateStoreError
from timestamps import iso_utc

logger = logging.getLogger(__name__)

bp = Blueprint("console", __name__, template_folder="templates")

DEAD_LETTERS_LISTED = 20
PARKED_LISTED = 20
ACTIONS_LISTED = 15
EXCERPT_SHOWN = 300
NOTICE_PATTERN = re.compile(r"[a-z_]{1,40}:[A-Za-z0-9_ .:-]{1,80}")
# The answers of the action routes that mean "done" (the rest are refusals: shown as such).
DONE_RESULTS = ("replayed", "requested", "ok", "paused", "resumed", "status 2")


@dataclass(frozen=True)
class Viewer:
    """Who looks at the page: ``admin`` or ``read``; ``csrf`` only for a browser session (forms need it)."""

    role: str
    csrf: str | None = None
    via: str = "session"   # session | basic

    @property
    def admin(self) -> bool:
        return self.role == "admin"

    @property
    def can_act(self) -> bool:
        return self.admin and bool(self.csrf)


# --- who is looking ----------------------------------------------------------------------------------------------

def identify_viewer() -> Viewer | Response | None:
    """The viewer, a response that refuses (401 for wrong Basic credentials, 303 to the login form for none), or
    None when no token is configured (the public health summary)."""
    source = operator_source()
    status_token, admin_token = source.status_api_token, source.admin_api_token
    if not status_token and not admin_token:
        return None
    session = current_session(session_keys())
    if session is not None:
        return Viewer(role=session.role, csrf=session.csrf)
    if admin_token and basic_credentials_ok(admin_token):
        return Viewer(role="admin", via="basic")
    if status_token and basic_credentials_ok(status_token):
        return Viewer(role="read", via="basic")
    if request.headers.get("Authorization") or request.headers.get("X-API-Key"):
        logger.info("SECURITY: rejected %s without valid credentials", request.path)
        return html_response(render_template("unauthorized.html"), 401,
                             {"WWW-Authenticate": f'Basic realm="{REALM}", charset="UTF-8"'})
    response = Response(status=303, headers={"Location": f"/login?next={quote(request.full_path.rstrip('?'))}"})
    response.headers.update(COMMON_HEADERS)
    return response


def error_page(message: str | None, status: int) -> Response:
    return html_page("error.html", status, viewer=None, notice=None, message=message)


def notice_text() -> tuple[str, bool] | None:
    """The ``notice=<action>:<result>`` an action's 303 added, as ``(text, done)``; anything else is ignored (the
    query string is the visitor's to write: nothing but this shape is echoed)."""
    notice = request.args.get("notice", "")
    if not NOTICE_PATTERN.fullmatch(notice):
        return None
    action, _, result = notice.partition(":")
    return f"{action.replace('_', ' ')}: {result.replace('_', ' ')}", result.startswith(DONE_RESULTS)


# --- what the page shows ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LinkView:
    provider: str
    resolution: str
    r2: str


@dataclass(frozen=True)
class RecentRow:
    at: str
    sender: str
    subject: str
    links: str
    outcome: str
    email_id: str | None


@dataclass(frozen=True)
class DeadRow:
    event_id: str
    email_id: str
    target: str
    mailbox: str
    dead_at: str
    reason: str
    last_status: str
    excerpt: str
    attempts: int
    subject: str
    payload: str | None


@dataclass(frozen=True)
class ParkedRow:
    parked_id: str
    email_id: str | None
    mailbox: str
    parked_at: str
    reason: str
    detail: str
    subject: str
    replay: str


@dataclass
class ConsoleReads:
    """The store reads of the console beyond the status document (empty lists when the store is unreadable)."""

    dead: list[DeadRow] = field(default_factory=list)
    parked: list[ParkedRow] = field(default_factory=list)
    actions: list[dict] = field(default_factory=list)
    links: dict[str, list[LinkView]] = field(default_factory=dict)   # event id -> its links, for recent emails
    email_ids: dict[str, str] = field(default_factory=dict)          # event id -> email id
    sign_in: frozenset[str] = frozenset()   # mailboxes that sign in by device code (refresh_token provider)
    stale: bool = False


def link_views(payload: dict) -> list[LinkView]:
    """Each delivery link of a payload: provider, what resolving it gave, and its R2 copy (in words)."""
    views = []
    for link in payload.get("delivery_links") or []:
        files = link.get("files") or []
        copied = bool(link.get("r2_url")) or any(entry.get("r2_url") for entry in files)
        views.append(LinkView(provider=str(link.get("provider") or "?"),
                              resolution=str(link.get("resolution") or "none"),
                              r2="copied to R2" if copied else "no R2 copy"))
    return views


def links_text(links: list[LinkView]) -> str:
    return ", ".join(f"{link.provider} (resolution {link.resolution}, {link.r2})" for link in links)


def payload_text(payload: dict | None) -> str | None:
    if payload is None:
        return None
    return json.dumps(scrub_document(payload), indent=2, ensure_ascii=False, sort_keys=False)


def _excerpt(text: str | None) -> str:
    text = (text or "").strip()
    return text if len(text) <= EXCERPT_SHOWN else text[:EXCERPT_SHOWN] + "\u2026"


def dead_row(item: Any, admin: bool) -> DeadRow:
    return DeadRow(event_id=item.event_id, email_id=item.email_id, target=item.target_id, mailbox=item.mailbox_id,
                   dead_at=iso_utc(item.dead_at) or "", reason=scrub(item.dead_reason or ""),
                   last_status=str(item.last_status) if item.last_status is not None else "no answer",
                   excerpt=scrub(_excerpt(item.response_excerpt or item.last_error)), attempts=item.attempts,
                   subject=scrub(str((item.payload or {}).get("subject") or "")[:80]),
                   payload=payload_text(item.payload) if admin else None)


def parked_row(parked: Any) -> ParkedRow:
    if parked.replay_requested_at is not None:
        replay = f"replay requested {iso_utc(parked.replay_requested_at)}"
    elif parked.replay_refused:
        replay = f"last replay refused: {parked.replay_refused}"
    else:
        replay = "waiting for an operator"
    return ParkedRow(parked_id=parked.parked_id, email_id=parked.email_id, mailbox=parked.mailbox_id,
                     parked_at=iso_utc(parked.parked_at) or "", reason=scrub(parked.reason),
                     detail=scrub(_excerpt(parked.detail)), subject=scrub((parked.subject or "")[:80]),
                     replay=scrub(replay))


def read_console(store: Any, recent: list[dict], admin: bool) -> ConsoleReads:
    """Dead letters, parked emails, the action history and the links of the recent emails; never raises for a
    store failure (``stale``)."""
    reads = ConsoleReads()
    try:
        reads.dead = [dead_row(item, admin) for item in store.list_items("dead", DEAD_LETTERS_LISTED)]
        reads.parked = [parked_row(parked) for parked in store.list_parked(PARKED_LISTED)]
        reads.actions = scrub_document(list(store.actions(ACTIONS_LISTED)))
        for entry in recent:
            event_id = entry.get("event_id")
            if not event_id or event_id in reads.links:
                continue
            item = store.get_item(event_id)
            if item is not None:
                reads.links[event_id] = link_views(item.payload or {})
                reads.email_ids[event_id] = item.email_id
    except StateStoreError as exc:
        logger.info("STATUS: the console could not read the state store: %s", exc)
        reads.stale = True
    return reads


def device_sign_in_mailboxes(mailboxes: Any) -> frozenset[str]:
    """The ids of the mailboxes an operator can sign in from the browser (``routes/sign_in.py``'s page)."""
    from background.operator_actions import ActionError
    from background.sign_in import sign_in_credentials

    ids = set()
    for mailbox in mailboxes:
        try:
            sign_in_credentials(mailboxes, mailbox.id)
        except ActionError:
            continue
        ids.add(mailbox.id)
    return frozenset(ids)


def recent_rows(recent: list[dict], reads: ConsoleReads) -> list[RecentRow]:
    from email_processing.identity import parse_event_id

    rows = []
    for entry in recent:
        event_id = entry.get("event_id") or ""
        links = reads.links.get(event_id)
        email_id = reads.email_ids.get(event_id)
        if email_id is None and event_id:
            try:
                email_id = parse_event_id(event_id).email_id
            except ValueError:
                email_id = None
        rows.append(RecentRow(at=entry.get("at") or "", sender=entry.get("sender") or "",
                              subject=entry.get("subject") or "",
                              links=links_text(links) if links else ", ".join(entry.get("links") or []),
                              outcome=entry.get("outcome") or "", email_id=email_id))
    return rows


def health_reasons(document: dict | None) -> dict[tuple[str, str], list[str]]:
    """``(kind, id) -> [detail, …]`` of the health problems (kind ``mailbox`` or ``target``), in words."""
    reasons: dict[tuple[str, str], list[str]] = {}
    for problem in (document or {}).get("problems") or []:
        if problem.get("kind") in ("mailbox", "target") and problem.get("id"):
            reasons.setdefault((problem["kind"], problem["id"]), []).append(str(problem.get("detail") or ""))
    return reasons


def mailbox_health(entry: dict, reasons: dict) -> tuple[str, str | None]:
    """``(words, mark)`` of one mailbox: its problems, else what it is doing."""
    found = reasons.get(("mailbox", entry.get("id")))
    if found:
        return "; ".join(found), "bad"
    if entry.get("state") == "no_holder":
        return "no process holds this mailbox's lease", "warn"
    if entry.get("imap") == "reauth_required":
        return "the OAuth2 sign-in needs an operator", "bad"
    return "healthy: polled and caught up", None


def target_health(entry: dict, reasons: dict) -> tuple[str, str | None]:
    """``(words, mark)`` of one target: paused, its problems, dead letters, else healthy."""
    if entry.get("paused"):
        since = entry.get("paused_at")
        return (f"paused by an operator since {since}" if since else "paused by an operator"), "warn"
    found = reasons.get(("target", entry.get("id")))
    if found:
        return "; ".join(found), "bad"
    dead = entry.get("dead") or 0
    if dead:
        return f"{dead} dead letter{'s' if dead != 1 else ''} waiting for a replay", "warn"
    return "healthy: delivering", None


# --- the routes ---------------------------------------------------------------------------------------------------

def _guarded_html(render: Any) -> Response:
    try:
        return render()
    except Exception:
        logger.error("STATUS: %s failed", request.path, exc_info=True)
        return error_page(None, 500)


@bp.get("/")
def dashboard() -> Response:
    return _guarded_html(_dashboard)


def _dashboard() -> Response:
    from routes.health import health_document
    from routes.operator import render_page

    source = status_source()
    viewer = identify_viewer()
    if isinstance(viewer, Response):
        return viewer
    if viewer is None:
        health_doc, _ = health_document(source)
        health = {"status": health_doc["status"], "checks": health_doc["checks"]}
        return html_response(render_page(None, [], health=health, version=source.version,
                                         generated_at=iso_utc(time.time()) or ""))
    document, recent = build_status(source, recent_limit=RECENT_LIMIT)
    reads = ConsoleReads(stale=True)
    if not document.get("stale"):
        try:
            reads = read_console(operator_source().open_store(), recent, viewer.admin)
        except StateStoreError:
            reads = ConsoleReads(stale=True)
    if viewer.admin:
        reads.sign_in = device_sign_in_mailboxes(operator_source().mailboxes)
    return html_response(render_page(document, recent, health=document["health"], version=source.version,
                                     generated_at=document["generated_at"], viewer=viewer, reads=reads))


@bp.get("/emails/<email_id>")
def email_page(email_id: str) -> Response:
    return _guarded_html(lambda: _email_page(email_id))


def _email_page(email_id: str) -> Response:
    from background.operator_actions import ActionError, email_report

    viewer = identify_viewer()
    if viewer is None:
        return error_page("Set a token to see emails here.", 404)
    if isinstance(viewer, Response):
        return viewer
    try:
        # The payloads are read for every viewer (the links' provider, resolution and R2 state are no secret) and
        # rendered for the admin only.
        report = email_report(operator_source().open_store(), email_id, with_payload=True)
    except ActionError as exc:
        return error_page("Nothing is known of this email.", exc.status)
    except StateStoreError:
        return error_page("The state store is unavailable.", 503)
    report = scrub_document(report)
    items = [{**{key: value for key, value in item.items() if key != "payload"},
              "links": link_views(item.get("payload") or {}),
              "payload_text": payload_text(item.get("payload")) if viewer.admin else None}
             for item in report.get("items") or []]
    return html_page("email.html", report=report, items=items, viewer=viewer, notice=notice_text(), here=request.path)
