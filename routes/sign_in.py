"""The device-code sign-in of a ``refresh_token`` mailbox from the browser or the API (issue 20); the sign-in itself
is ``background/sign_in.py``.

``POST /api/mailboxes/<id>/sign-in`` (the admin token, or an admin session with its CSRF token: the operator API's
rules of ``routes/actions.py``, whose ``perform`` runs it) starts one and answers 202 with the code and the link to
show; ``GET /api/mailboxes/<id>/sign-in`` (admin) answers its state ``{state, user_code, verification_uri,
expires_at, interval, …}`` and, while it is pending and the provider's interval has passed, asks the provider once.
``GET /console/mailboxes/<id>/sign-in`` is the same for a browser: a page (no script: the console's CSP allows
none) that shows the code and the link and reloads itself (``<meta http-equiv="refresh">``) while the sign-in is
pending. Unknown mailboxes answer 404, a mailbox that signs in otherwise 409; with ``ADMIN_API_TOKEN`` unset every
route is 404. The device code is never in an answer, a page or a log; the end of a sign-in is recorded in the
history like every action.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from urllib.parse import quote

from flask import Blueprint, Response, jsonify

from background.operator_actions import ActionError, ActionStore, Actor, NotFound, record_action
from background.sign_in import (
    NO_SIGN_IN,
    PENDING,
    Progress,
    continue_sign_in,
    public_view,
    refresh_seconds,
    sign_in_credentials,
    start_sign_in,
)
from routes import operator_source, session_keys
from routes.access import (
    ADMIN_TOKEN,
    COMMON_HEADERS,
    SESSION,
    Session,
    client_address,
    current_session,
    html_page,
    json_error,
    presented_token,
    see_other,
    token_kind,
    unauthorized_api,
)
from routes.actions import guarded_view as guarded
from routes.actions import perform as perform_action
from services.oauth.stored_tokens import TokenCipher
from services.state_store import StateStoreError

logger = logging.getLogger(__name__)

bp = Blueprint("sign_in", __name__, template_folder="templates")

ACTION = "sign_in"


def page_path(mailbox_id: str) -> str:
    return f"/console/mailboxes/{quote(mailbox_id, safe='')}/sign-in"


def _cipher() -> TokenCipher:
    return TokenCipher(operator_source().state_encryption_key)


# --- start --------------------------------------------------------------------------------------------------------

@bp.post("/api/mailboxes/<mailbox_id>/sign-in")
@guarded
def start(mailbox_id: str) -> Response:
    source = operator_source()

    def work(store: ActionStore, now: float) -> tuple[int, dict]:
        credentials = sign_in_credentials(source.mailboxes, mailbox_id)
        record = start_sign_in(store, mailbox_id, credentials, _cipher(), now)
        return 202, {**public_view(mailbox_id, record), "result": "started"}

    return perform_action(ACTION, mailbox_id, work)


# --- continue -----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Reader:
    """An admin reading a sign-in (and so moving it on): who, and the browser session if it is one."""

    actor: Actor
    session: Session | None = None


def _admin_reader() -> Reader | Response | None:
    """The admin token (bearer) or an admin session; None: no credential at all; a Response: refused."""
    source = operator_source()
    if not source.admin_api_token:
        return json_error(404, "not_found")
    presented = presented_token()
    if presented is not None:
        if token_kind(presented, admin_token=source.admin_api_token, status_token=None) != ADMIN_TOKEN:
            return unauthorized_api("admin token")
        return Reader(Actor(ADMIN_TOKEN, client_address()))
    session = current_session(session_keys())
    if session is None:
        return None
    if session.role != "admin":
        return json_error(403, "admin_session_required")
    return Reader(Actor(SESSION, client_address()), session)


def _progress(mailbox_id: str, reader: Reader) -> Progress:
    """The sign-in moved on by at most one token request; its end recorded in the history."""
    source = operator_source()
    credentials = sign_in_credentials(source.mailboxes, mailbox_id)
    store = source.open_store()
    now = source.clock()
    progress = continue_sign_in(store, mailbox_id, credentials, _cipher(), now)
    if progress.ended_now is not None:
        logger.info("OPERATOR: %s %s %s (seen by %s from %s)", ACTION, mailbox_id, progress.ended_now,
                    reader.actor.kind, reader.actor.client)
        try:
            record_action(store, reader.actor, ACTION, mailbox_id, progress.ended_now, now)
        except StateStoreError:
            logger.error("OPERATOR: %s %s (%s) could not be recorded in the history", ACTION, mailbox_id,
                         progress.ended_now)
    return progress


@bp.get("/api/mailboxes/<mailbox_id>/sign-in")
@guarded
def state(mailbox_id: str) -> Response:
    reader = _admin_reader()
    if reader is None:
        return unauthorized_api("admin token")
    if isinstance(reader, Response):
        return reader
    try:
        progress = _progress(mailbox_id, reader)
    except ActionError as exc:
        return json_error(exc.status, exc.error, detail=exc.detail)
    except StateStoreError:
        logger.error("OPERATOR: reading the sign-in of %s failed: the state store is unavailable", mailbox_id,
                     exc_info=True)
        return json_error(503, "state_store_unavailable")
    response = jsonify(public_view(mailbox_id, progress.record))
    response.headers.update(COMMON_HEADERS)
    return response


# --- the page -----------------------------------------------------------------------------------------------------

def _page(status: int, **context: object) -> Response:
    refresh = context.get("refresh")
    # the Refresh header says what the page's meta tag says, for clients that skip it
    return html_page("sign_in.html", status, {"Refresh": str(refresh)} if refresh else None, **context)


def _safe_link(url: object) -> str | None:
    """A provider's link, shown as a link only when it is http(s) (never ``javascript:`` or the like)."""
    text = str(url or "")
    return text if text.startswith(("https://", "http://")) else None


@bp.get("/console/mailboxes/<mailbox_id>/sign-in")
@guarded
def page(mailbox_id: str) -> Response:
    reader = _admin_reader()
    if reader is None:
        return see_other(f"/login?next={quote(page_path(mailbox_id), safe='')}")
    if isinstance(reader, Response):
        if reader.status_code == 403:
            return _page(403, mailbox=mailbox_id, message="Signing a mailbox in needs the admin token.")
        return reader
    context: dict[str, object] = {"mailbox": mailbox_id, "action": f"/api/mailboxes/{quote(mailbox_id, safe='')}"
                                  "/sign-in", "next": page_path(mailbox_id),
                                  "csrf_token": reader.session.csrf if reader.session else None}
    try:
        progress = _progress(mailbox_id, reader)
    except NotFound as exc:
        if exc.error == NO_SIGN_IN:  # none started yet (or its outcome was let go of): the button to start one
            return _page(200, sign_in=None, **context)
        return _page(exc.status, message=exc.detail or exc.error, **context)
    except ActionError as exc:
        return _page(exc.status, message=exc.detail or exc.error, **context)
    except StateStoreError:
        logger.error("OPERATOR: reading the sign-in of %s failed: the state store is unavailable", mailbox_id,
                     exc_info=True)
        return _page(503, message="The state store is unavailable; this page tries again shortly.", refresh=5,
                     **context)
    view = public_view(mailbox_id, progress.record)
    pending = view["state"] == PENDING
    return _page(200, sign_in=view, link=_safe_link(view["verification_uri"]),
                 link_complete=_safe_link(view["verification_uri_complete"]),
                 refresh=refresh_seconds(progress.record, operator_source().clock()) if pending else None,
                 **context)
