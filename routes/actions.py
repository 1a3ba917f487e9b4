"""The operator API (issue 20): JSON in and out, ``Authorization: Bearer <ADMIN_API_TOKEN>``.

``POST /api/outbox/<event_id>/replay``, ``POST /api/parked/<parked_id>/replay``, ``POST /api/replay``
(``{"since", "target", "parked"}``, answers 202 ``{"count"}``), ``POST /api/targets/<id>/sample``,
``POST /api/targets/<id>/pause`` and ``/resume``, ``POST /api/try-email?mailbox=<id>`` (the raw ``.eml`` as the
body) and ``GET /api/emails/<email_id>`` (a read token is enough; payloads only for the admin). Unknown ids answer
404, a wrong state 409, a missing or wrong token 401; with ``ADMIN_API_TOKEN`` unset the action routes answer 404.
The same routes take a browser's form post made with an admin session (cookie + ``csrf_token`` field, see
``routes/access.py``) and answer it 303 to its local ``next`` path with ``notice=<action>:<result>`` added, so the
console's forms post to these very paths. Every action, refused or done, is recorded with the kind of credential,
the client address and the time (``record_action``). The actions themselves are ``background/operator_actions.py``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import quote

from flask import Blueprint, Response, jsonify, request

from background.operator_actions import (
    MAX_EML_BYTES,
    ActionError,
    ActionStore,
    Actor,
    BadRequest,
    dry_run,
    email_report,
    parse_since,
    pause_target,
    record_action,
    replay_dead_letter,
    replay_matching,
    replay_parked,
    resume_target,
    send_sample,
)
from routes import operator_source, session_keys
from routes.access import (
    ADMIN_TOKEN,
    COMMON_HEADERS,
    SESSION,
    client_address,
    csrf_ok,
    current_session,
    guarded,
    json_error,
    presented_token,
    safe_next,
    see_other,
    token_kind,
    unauthorized_api,
)
from services.state_store import StateStoreError
from timestamps import iso_utc

logger = logging.getLogger(__name__)

bp = Blueprint("actions", __name__)

FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
UPLOAD_OVERHEAD_BYTES = 64 * 1024   # a browser's multipart form around the .eml (its boundaries, csrf_token, next)


@dataclass(frozen=True)
class Authorized:
    """An admin caller: who (for the history), and whether the answer is a browser's 303 (a form post)."""

    actor: Actor
    form: bool


def _authorize_action() -> Authorized | Response:
    """The admin token (bearer), or an admin session whose request carries its CSRF token."""
    source = operator_source()
    if not source.admin_api_token:
        return json_error(404, "not_found")
    presented = presented_token()
    if presented is not None:
        kind = token_kind(presented, admin_token=source.admin_api_token, status_token=None)
        if kind != ADMIN_TOKEN:
            return unauthorized_api("admin token")
        return Authorized(Actor(ADMIN_TOKEN, client_address()), form=False)
    session = current_session(session_keys())
    if session is None or session.role != "admin":
        return unauthorized_api("admin token")
    if not csrf_ok(session):
        logger.info("SECURITY: refused %s from a session without its CSRF token", request.path)
        return json_error(403, "csrf_token_invalid")
    return Authorized(Actor(SESSION, client_address()), form=request.mimetype in FORM_TYPES)


def _answer(who: Authorized, status: int, body: dict, notice: str) -> Response:
    if who.form:
        path = safe_next(request.form.get("next"))
        return see_other(f"{path}{'&' if '?' in path else '?'}notice={quote(notice, safe=':')}")
    response = jsonify(body)
    response.status_code = status
    response.headers.update(COMMON_HEADERS)
    return response


def _record(store: ActionStore, who: Authorized, action: str, subject: str | None, result: str, now: float) -> None:
    try:
        record_action(store, who.actor, action, subject, result, now)
    except StateStoreError:  # the action happened (or was refused) all the same: say so, do not hide it
        logger.error("OPERATOR: %s %s (%s) could not be recorded in the history", action, subject, result)


Work = Callable[[ActionStore, float], tuple[int, dict]]


Subject = str | Callable[[], str | None] | None


def perform(action: str, subject: Subject, work: Work, *, redirect_forms: bool = True) -> Response:
    """Authorize, run ``work(store, now) -> (status, body)``, record the outcome, answer (JSON, or 303 to a form
    post unless ``redirect_forms`` is off). ``subject`` may be a callable, read once the caller is authorized."""
    who = _authorize_action()
    if isinstance(who, Response):
        return who
    if not redirect_forms:
        who = Authorized(who.actor, form=False)
    source = operator_source()
    now = source.clock()
    named = subject() if callable(subject) else subject
    try:
        store = source.open_store()
        try:
            status, body = work(store, now)
        except ActionError as exc:
            _record(store, who, action, named, exc.error, now)
            logger.info("OPERATOR: %s %s refused (%s) by %s", action, named, exc.error, who.actor.kind)
            return _answer(who, exc.status, {"error": exc.error, "detail": exc.detail}, f"{action}:{exc.error}")
        result = str(body.pop("result", "ok"))
        _record(store, who, action, named, result, now)
    except StateStoreError:
        logger.error("OPERATOR: %s %s failed: the state store is unavailable", action, named, exc_info=True)
        return json_error(503, "state_store_unavailable")
    logger.info("OPERATOR: %s %s %s by %s from %s", action, named, result, who.actor.kind, who.actor.client)
    return _answer(who, status, body, f"{action}:{result}")


guarded_view = guarded("OPERATOR")


# --- replays ------------------------------------------------------------------------------------------------------

@bp.post("/api/outbox/<event_id>/replay")
@guarded_view
def replay_one_dead_letter(event_id: str) -> Response:
    def work(store: ActionStore, now: float) -> tuple[int, dict]:
        return 202, {"count": replay_dead_letter(store, event_id, now), "event_id": event_id, "result": "replayed"}

    return perform("replay_dead_letter", event_id, work)


@bp.post("/api/parked/<parked_id>/replay")
@guarded_view
def replay_one_parked(parked_id: str) -> Response:
    def work(store: ActionStore, now: float) -> tuple[int, dict]:
        return 202, {"count": replay_parked(store, parked_id, now), "parked_id": parked_id, "result": "requested"}

    return perform("replay_parked", parked_id, work)


def _replay_arguments() -> tuple[float | None, str | None, bool]:
    """``since``, ``target``, ``parked`` of a JSON object (or of a form); all optional; 400 when malformed."""
    if request.mimetype in FORM_TYPES:
        args: Any = {key: value for key, value in request.form.items() if key not in ("csrf_token", "next")}
        if "parked" in args:
            args["parked"] = args["parked"].lower() in ("true", "on", "1", "yes")
    elif request.get_data(cache=True).strip():
        args = request.get_json(silent=True)
    else:
        args = {}
    if not isinstance(args, dict):
        raise BadRequest("bad_body", "the body is a JSON object {since, target, parked}")
    unknown = sorted(set(args) - {"since", "target", "parked"})
    if unknown:
        raise BadRequest("bad_body", f"unknown field(s): {', '.join(unknown)}")
    target, parked = args.get("target") or None, args.get("parked", False)
    if target is not None and not isinstance(target, str):
        raise BadRequest("bad_target", "target is a target id")
    if not isinstance(parked, bool):
        raise BadRequest("bad_parked", "parked is true or false")
    return parse_since(args.get("since")), target, parked


@bp.post("/api/replay")
@guarded_view
def replay_many() -> Response:
    source = operator_source()

    def work(store: ActionStore, now: float) -> tuple[int, dict]:
        since, target, parked = _replay_arguments()
        count = replay_matching(store, since=since, target_id=target, parked=parked,
                                target_ids=[target.id for target in source.targets], now=now)
        return 202, {"count": count, "result": f"{'requested' if parked else 'replayed'} {count}"}

    def subject() -> str:
        try:
            since, target, parked = _replay_arguments()
        except ActionError:
            return "a malformed request"  # refused by ``work`` below, and recorded so
        return f"{'parked' if parked else 'dead letters'} of {target or 'every target'} since {iso_utc(since)}"

    return perform("replay", subject, work)


# --- targets ------------------------------------------------------------------------------------------------------

@bp.post("/api/targets/<target_id>/sample")
@guarded_view
def sample(target_id: str) -> Response:
    source = operator_source()

    def work(store: ActionStore, now: float) -> tuple[int, dict]:
        target = source.target(target_id)
        if source.sender_factory is None:
            raise ActionError("no_sender", "this instance cannot send webhooks")
        answer = send_sample(target, source.sender_factory, now)
        # The receiver's answer: its status (200 here even when it said 4xx/5xx); 502 when nothing answered.
        result = f"status {answer['status']}" if answer["status"] is not None else (answer["error"] or "no answer")
        return (200 if answer["status"] is not None else 502), {**answer, "result": result}

    return perform("sample", target_id, work)


@bp.post("/api/targets/<target_id>/pause")
@guarded_view
def pause(target_id: str) -> Response:
    source = operator_source()

    def work(store: ActionStore, now: float) -> tuple[int, dict]:
        paused_at = pause_target(store, source.target(target_id), now)
        return 200, {"target": target_id, "paused": True, "paused_at": iso_utc(paused_at), "result": "paused"}

    return perform("pause", target_id, work)


@bp.post("/api/targets/<target_id>/resume")
@guarded_view
def resume(target_id: str) -> Response:
    source = operator_source()

    def work(store: ActionStore, now: float) -> tuple[int, dict]:
        resume_target(store, source.target(target_id))
        return 200, {"target": target_id, "paused": False, "result": "resumed"}

    return perform("resume", target_id, work)


# --- try an email -------------------------------------------------------------------------------------------------

def _uploaded_email() -> bytes:
    """The raw ``.eml``: the body itself, or the ``eml`` file of a browser's multipart form; at most 25 MiB."""
    if request.content_length is not None and request.content_length > MAX_EML_BYTES + UPLOAD_OVERHEAD_BYTES:
        raise _TooLarge()
    if request.mimetype == "multipart/form-data":
        upload = request.files.get("eml")
        if upload is None:
            raise BadRequest("no_email", "the form has no eml file")
        raw = upload.stream.read(MAX_EML_BYTES + 1)
    else:
        raw = request.stream.read(MAX_EML_BYTES + 1)
    if len(raw) > MAX_EML_BYTES:
        raise _TooLarge()
    if not raw.strip():
        raise BadRequest("no_email", "the body is the raw .eml")
    return raw


class _TooLarge(ActionError):
    status = 413

    def __init__(self) -> None:
        super().__init__("too_large", f"an email is at most {MAX_EML_BYTES} bytes")


@bp.post("/api/try-email")
@guarded_view
def try_email() -> Response:
    # Bounds the body before anything reads it (the CSRF check of a browser's form parses the form).
    request.max_content_length = MAX_EML_BYTES + UPLOAD_OVERHEAD_BYTES
    source = operator_source()
    mailbox_id = request.args.get("mailbox") or None

    def work(store: ActionStore, now: float) -> tuple[int, dict]:
        policy = source.dry_run_policy(mailbox_id)
        result = dry_run(_uploaded_email(), policy)
        return 200, {**result, "result": result["decision"]}

    # A browser's form gets the payload too (there is nothing to redirect to): the console renders it itself.
    return perform("try_email", mailbox_id, work, redirect_forms=False)


# --- one email (read) ---------------------------------------------------------------------------------------------

@bp.get("/api/emails/<email_id>")
@guarded_view
def email(email_id: str) -> Response:
    source = operator_source()
    if not source.admin_api_token and not source.status_api_token:
        return json_error(404, "not_found")
    kind = token_kind(presented_token(), admin_token=source.admin_api_token, status_token=source.status_api_token)
    admin = kind == ADMIN_TOKEN
    if kind is None:
        session = current_session(session_keys())
        if session is None:
            return unauthorized_api("read token")
        admin = session.role == "admin"
    try:
        report = email_report(source.open_store(), email_id, with_payload=admin)
    except ActionError as exc:
        return json_error(exc.status, exc.error)
    except StateStoreError:
        logger.error("OPERATOR: reading email %s failed: the state store is unavailable", email_id, exc_info=True)
        return json_error(503, "state_store_unavailable")
    response = jsonify(report)
    response.headers.update(COMMON_HEADERS)
    return response
