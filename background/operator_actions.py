"""The operator's actions (issue 20), each a function given exactly what it uses: replay a dead letter or a parked
email, replay those since a time, send a sample webhook, pause and resume a target, try an email, and everything
known about one email. The HTTP API (``routes/actions.py``) and the console call these; so could a CLI.

An action refused for the state of its subject raises ``ActionError`` (``NotFound`` 404, ``Conflict`` 409,
``BadRequest`` 400: the status the API answers); the state store's ``StateStoreError`` passes through. Replays only
write the store, so they never race the delivery loop: the store's status check is atomic (of concurrent replays of
one dead letter exactly one takes it), and the running lease holder sends it. A sample is one direct attempt through
a ``WebhookSender`` (never the outbox), and a try-email is the dry run of ``process-email --dry-run``: no network,
no state. ``record_action`` writes the history entry each action leaves (who, from where, when, with what result).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence

from config import DEFAULT_ID, DEFAULT_MAX_LINKS_PER_EMAIL, MailboxConfig, SenderAuth, TargetConfig
from log_setup import scrub_value
from timestamps import iso_utc

if TYPE_CHECKING:
    from services.state_store import FlagRequest, OutboxItem, ParkedEmail
    from services.webhook import AttemptOutcome

MAX_EML_BYTES = 25 * 1024 * 1024    # POST /api/try-email takes at most this much
PARKED_SCAN_LIMIT = 1000            # parked emails looked through for one email's report
FLAG_SCAN_LIMIT = 1000              # pending flag requests of a mailbox looked through for one email's report
SAMPLE_SENDER = "renders@render-signal.invalid"


class ActionError(Exception):
    """An action refused for its subject's state; ``status`` is the HTTP status the API answers with."""

    status = 400

    def __init__(self, error: str, detail: str | None = None) -> None:
        super().__init__(detail or error)
        self.error = error
        self.detail = detail


class BadRequest(ActionError):
    status = 400


class NotFound(ActionError):
    status = 404


class Conflict(ActionError):
    status = 409


class ActionStore(Protocol):
    """What the actions use of the state store (``services.state_store.StateStore`` has all of it)."""

    def get_item(self, event_id: str) -> OutboxItem | None: ...
    def replay(self, event_id: str | None = None, now: float | None = None, *, since: float | None = None,
               target_id: str | None = None) -> int: ...
    def get_parked(self, parked_id: str) -> ParkedEmail | None: ...
    def list_parked(self, limit: int = 20) -> list[ParkedEmail]: ...
    def request_replay(self, parked_id: str | None = None, now: float | None = None, *,
                       since: float | None = None) -> int: ...
    def pause_target(self, target_id: str, now: float) -> bool: ...
    def resume_target(self, target_id: str) -> bool: ...
    def paused_targets(self) -> dict[str, float]: ...
    def record_action(self, entry: dict, now: float) -> None: ...
    def get_done(self, email_id: str) -> str | None: ...
    def items_for_email(self, email_id: str) -> list[OutboxItem]: ...
    def pending_flags(self, mailbox: str, limit: int) -> list[FlagRequest]: ...


@dataclass(frozen=True)
class Actor:
    """Who acts: the kind of credential (``admin_token`` | ``session``) and the client address."""

    kind: str
    client: str


@dataclass(frozen=True)
class DryRunPolicy:
    """What a try-email needs of a mailbox: its sender filter and link rules (the environment's without one)."""

    mailbox_id: str = DEFAULT_ID
    sender_allowlist: tuple[str, ...] = ()
    allow_without_links: bool = False
    max_links: int = DEFAULT_MAX_LINKS_PER_EMAIL
    sender_auth: SenderAuth | None = None

    @classmethod
    def for_mailbox(cls, mailbox: MailboxConfig) -> DryRunPolicy:
        return cls(mailbox.id, tuple(mailbox.sender_allowlist), mailbox.allow_without_links,
                   mailbox.max_links_per_email, mailbox.sender_auth)


@dataclass(frozen=True, kw_only=True)
class OperatorSource:
    """What the operator routes use of this worker (built by ``ServiceRuntime.operator_source()``)."""

    status_api_token: str | None = field(default=None, repr=False)
    admin_api_token: str | None = field(default=None, repr=False)
    session_secret: str | None = field(default=None, repr=False)
    state_encryption_key: str | None = field(default=None, repr=False)  # seals what the store keeps of a sign-in
    open_store: Callable[[], Any]
    targets: tuple[TargetConfig, ...] = ()
    mailboxes: tuple[MailboxConfig, ...] = ()
    sender_factory: Callable[[TargetConfig], Any] | None = None
    default_dry_run: DryRunPolicy = DryRunPolicy()
    clock: Callable[[], float] = time.time

    def target(self, target_id: str) -> TargetConfig:
        for target in self.targets:
            if target.id == target_id:
                return target
        raise NotFound("unknown_target", f"no target {target_id!r}")

    def dry_run_policy(self, mailbox_id: str | None) -> DryRunPolicy:
        """The mailbox's policy; without an id the first mailbox's, or the environment's when none is configured."""
        if mailbox_id is None:
            return DryRunPolicy.for_mailbox(self.mailboxes[0]) if self.mailboxes else self.default_dry_run
        for mailbox in self.mailboxes:
            if mailbox.id == mailbox_id:
                return DryRunPolicy.for_mailbox(mailbox)
        raise NotFound("unknown_mailbox", f"no mailbox {mailbox_id!r}")


# --- the history --------------------------------------------------------------------------------------------------

def record_action(store: ActionStore, actor: Actor, action: str, subject: str | None, result: str,
                  now: float) -> None:
    """One history entry: ``{action, subject, token, client, at, result}`` (JSON-able; kept by the store)."""
    store.record_action({"action": action, "subject": subject, "token": actor.kind, "client": actor.client,
                         "at": iso_utc(now), "result": result}, now)


# --- replays ------------------------------------------------------------------------------------------------------

def replay_dead_letter(store: ActionStore, event_id: str, now: float) -> int:
    """Move one dead letter back to pending (attempts reset, same ``webhook-id``); 404 unknown, 409 not dead (or a
    concurrent replay took it first)."""
    if store.replay(event_id, now) == 1:
        return 1
    item = store.get_item(event_id)
    if item is None:
        raise NotFound("unknown_event", f"no outbox item {event_id!r}")
    raise Conflict("not_dead", f"the item is {item.status}, not a dead letter")


def replay_parked(store: ActionStore, parked_id: str, now: float) -> int:
    """Ask the mailbox's lease holder to re-run one parked email; 404 unknown, 409 a replay is already asked."""
    parked = store.get_parked(parked_id)
    if parked is None:
        raise NotFound("unknown_parked", f"no parked email {parked_id!r}")
    if parked.replay_requested_at is not None:
        raise Conflict("replay_already_requested", "a replay of this email is already waiting for its mailbox")
    if store.request_replay(parked_id, now) != 1:
        raise NotFound("unknown_parked", f"no parked email {parked_id!r}")
    return 1


def parse_since(value: Any) -> float | None:
    """``since`` of ``POST /api/replay``: ISO 8601 (``Z``, an offset, or none: UTC) or absent; 400 otherwise."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise BadRequest("bad_since", "since is an ISO 8601 time")
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise BadRequest("bad_since", "since is an ISO 8601 time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def replay_matching(store: ActionStore, *, since: float | None, target_id: str | None, parked: bool,
                    target_ids: Sequence[str], now: float) -> int:
    """Replay every dead letter (of one target, those dead since a time), or with ``parked`` ask for a replay of
    every parked email (parked since a time); returns how many."""
    if target_id is not None and target_id not in target_ids:
        raise NotFound("unknown_target", f"no target {target_id!r}")
    if parked:
        if target_id is not None:
            raise BadRequest("target_with_parked", "a parked email has no target yet: give target or parked")
        return store.request_replay(None, now, since=since)
    return store.replay(None, now, since=since, target_id=target_id)


# --- targets ------------------------------------------------------------------------------------------------------

def pause_target(store: ActionStore, target: TargetConfig, now: float) -> float:
    """Pause a target durably (its items stay pending); returns when; 409 when it is paused already."""
    if not store.pause_target(target.id, now):
        raise Conflict("already_paused", f"target {target.id!r} is paused already")
    return now


def resume_target(store: ActionStore, target: TargetConfig) -> None:
    """Resume a paused target; 409 when it is not paused."""
    if not store.resume_target(target.id):
        raise Conflict("not_paused", f"target {target.id!r} is not paused")


def sample_email(now: float) -> bytes:
    """A realistic render-notification email (a Dropbox file and a WeTransfer transfer), clearly a test."""
    message = EmailMessage()
    message["From"] = f"Render Farm (render-signal test) <{SAMPLE_SENDER}>"
    message["To"] = "inbox@render-signal.invalid"
    message["Subject"] = "[render-signal test] Your render \u201cep04_master\u201d is ready"
    message["Date"] = format_datetime(datetime.fromtimestamp(now, timezone.utc))
    message["Message-ID"] = make_msgid("sample", domain="render-signal.invalid")
    text = ("This is a test webhook sent by render-signal so that your scenario can learn the payload's data "
            "structure. It has \"test\": true and an event_id starting with test_; no email was received.\n\n"
            "Your render ep04_master.mov is ready:\n"
            "https://www.dropbox.com/scl/fi/k2l9x0q3sample/ep04_master.mov?rlkey=s4mpl3k3y&dl=0\n\n"
            "The stills are on WeTransfer: https://we.tl/t-Zx81KdP2qa\n")
    message.set_content(text)
    message.add_alternative(
        "<p>This is a <b>test webhook</b> sent by render-signal.</p>"
        '<p>Your render is ready: <a href="https://www.dropbox.com/scl/fi/k2l9x0q3sample/ep04_master.mov'
        '?rlkey=s4mpl3k3y&amp;dl=0">ep04_master.mov</a></p>'
        '<p>Stills: <a href="https://we.tl/t-Zx81KdP2qa">WeTransfer</a></p>', subtype="html")
    return message.as_bytes()


def sample_payload(now: float) -> dict:
    """The body of a sample webhook: a real payload of ``sample_email`` (the builder's every field), marked
    ``"test": true``, with an ``event_id`` of ``test_<unique>`` that no real email can have."""
    result = dry_run(sample_email(now), DryRunPolicy(allow_without_links=True))
    payload = dict(result["payload"])
    payload["event_id"] = f"test_{secrets.token_hex(16)}"
    payload["test"] = True
    return payload


def send_sample(target: TargetConfig, sender_factory: Callable[[TargetConfig], Any], now: float) -> dict:
    """One direct attempt of a sample webhook to ``target`` (not through the outbox: nothing is retried or
    recorded in the outbox); returns what the receiver answered."""
    from email_processing.payload import payload_bytes

    payload = sample_payload(now)
    sender = sender_factory(target)
    try:
        outcome: AttemptOutcome = sender.attempt(payload["event_id"], payload_bytes(payload))
    finally:
        close = getattr(sender, "close", None)
        if close is not None:
            close()
    return {"event_id": payload["event_id"], "target": target.id, "status": outcome.status,
            "outcome": outcome.kind, "error": outcome.error, "elapsed_ms": outcome.elapsed_ms,
            "excerpt": outcome.excerpt}


# --- try an email -------------------------------------------------------------------------------------------------

def dry_run(raw: bytes, policy: DryRunPolicy) -> dict:
    """The dry-run payload and decision of one ``.eml`` (``process-email --dry-run``'s code path): no network, no
    state, nothing sent."""
    from email_processing.cli import dry_run_result

    if len(raw) > MAX_EML_BYTES:
        raise BadRequest("too_large", f"an email is at most {MAX_EML_BYTES} bytes")
    result = dry_run_result(raw, sender_allowlist=policy.sender_allowlist,
                            allow_without_links=policy.allow_without_links, max_links=policy.max_links,
                            sender_auth=policy.sender_auth, mailbox_id=policy.mailbox_id)
    return {"mailbox": policy.mailbox_id, "decision": result.decision, "reason": result.reason,
            "event_id": result.event_id, "payload": result.payload}


# --- one email ----------------------------------------------------------------------------------------------------

def _item_view(item: OutboxItem, with_payload: bool) -> dict:
    view = {
        "event_id": item.event_id, "target": item.target_id, "mailbox": item.mailbox_id, "status": item.status,
        "attempts": item.attempts, "created_at": iso_utc(item.created_at),
        "first_attempt_at": iso_utc(item.first_attempt_at), "next_attempt_at": iso_utc(item.next_attempt_at),
        "delivered_at": iso_utc(item.delivered_at), "dead_at": iso_utc(item.dead_at),
        "dead_reason": item.dead_reason, "last_status": item.last_status, "last_error": item.last_error,
        "response_excerpt": item.response_excerpt, "held_until": iso_utc(item.held_until),
        "in_flight": item.in_flight, "uidvalidity": item.uidvalidity, "uid": item.uid,
        "attempt_log": [{**entry, "at": iso_utc(entry.get("at"))} for entry in item.attempt_log],
    }
    if with_payload:
        view["payload"] = item.payload
    return view


def _parked_view(parked: ParkedEmail) -> dict:
    return {"parked_id": parked.parked_id, "mailbox": parked.mailbox_id, "reason": parked.reason,
            "detail": parked.detail, "parked_at": iso_utc(parked.parked_at),
            "replay_requested_at": iso_utc(parked.replay_requested_at), "replay_refused": parked.replay_refused,
            "uidvalidity": parked.uidvalidity, "uid": parked.uid}


def _imap_flag(store: ActionStore, items: Sequence[OutboxItem], done: str | None) -> str | None:
    """The email's acknowledgement on the server (``\\Seen $RenderSignalDone``): ``pending`` while the poller still
    has to apply it, ``applied`` once a handed-off email (queued or ended) has none pending, None when nothing of it is
    queued (a parked email)."""
    places = {(item.mailbox, item.uidvalidity, item.uid) for item in items}
    for mailbox in {place[0] for place in places}:
        if any((request.mailbox, request.uidvalidity, request.uid) in places
               for request in store.pending_flags(mailbox, FLAG_SCAN_LIMIT)):
            return "pending"
    return "applied" if done is not None and places else None


def email_report(store: ActionStore, email_id: str, *, with_payload: bool) -> dict:
    """Everything known about one email: its end state (done record), each target's outbox item with its attempts,
    and its parked entry; the payloads only ``with_payload`` (the admin). 404 when nothing is known."""
    done = store.get_done(email_id)
    items = store.items_for_email(email_id)
    parked = [entry for entry in store.list_parked(PARKED_SCAN_LIMIT) if entry.email_id == email_id]
    if done is None and not items and not parked:
        raise NotFound("unknown_email", f"nothing is known of email {email_id!r}")
    first = items[0] if items else None
    subject = (first.payload.get("subject") if first is not None else None) or (
        parked[0].subject if parked else None)
    # Everything but the payloads goes through the log scrub: the correspondents' addresses (in a subject, an
    # excerpt, an error) are masked as on every page; the payload is the webhook body, shown to the admin as sent.
    report = scrub_value({"email_id": email_id, "outcome": done, "subject": subject,
                          "imap_flag": _imap_flag(store, items, done),
                        "message_id": first.message_id if first is not None else (
                            parked[0].message_id if parked else None),
                        "items": [_item_view(item, False) for item in items],
                        "parked": [_parked_view(entry) for entry in parked]})
    if with_payload:
        for view, item in zip(report["items"], items, strict=True):
            view["payload"] = item.payload
    return report
