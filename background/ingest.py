"""Ingest one email: deduplicate, decide, enqueue (one item per target) or record the skip, park what fails.

Used by the mailbox poller (which keeps the IMAP session, IDLE and flags) and by ``process-email`` (a saved email
belongs to mailbox ``default`` under the state key ``(cli)``, uid 0: it queues no flag request). Everything an email
leaves behind is written here: its done record, its outbox items, its counters and its history entry.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Literal, Sequence

from background.lease import LeaseLost
from config import DEFAULT_ID, DEFAULT_MAX_LINKS_PER_EMAIL, MailboxConfig, RouteConfig, RouteMatch, SenderAuth
from email_processing.identity import email_id_for, email_id_for_reused, event_id_for, fingerprint_of, message_address
from email_processing.orchestrator import NullOffloader, Offloader, ProcessResult, process_email
from email_processing.parsing import ParsedEmail
from email_processing.payload import for_target
from email_processing.routing import Router
from log_setup import mask_address
from services.state_store import OutboxItem, OutboxStatus, ParkedEmail, StateStoreError
from timestamps import utc_now

logger = logging.getLogger(__name__)

CLI_STATE_KEY = "(cli)"
ATTEMPTED_NOW_DUE_IN_SECONDS = 3600.0


@dataclass(frozen=True)
class IngestPolicy:
    """What ingest needs to know of the mailbox an email came from."""

    mailbox_id: str
    state_key: str
    sender_allowlist: tuple[str, ...] = ()
    allow_without_links: bool = False
    max_links: int = DEFAULT_MAX_LINKS_PER_EMAIL
    sender_auth: SenderAuth | None = None

    @classmethod
    def for_mailbox(cls, mailbox: MailboxConfig) -> IngestPolicy:
        return cls(mailbox.id, mailbox.state_key, mailbox.sender_allowlist, mailbox.allow_without_links,
                   mailbox.max_links_per_email, mailbox.sender_auth)

    @classmethod
    def saved_email(cls, sender_allowlist: tuple[str, ...], allow_without_links: bool,
                    max_links: int = DEFAULT_MAX_LINKS_PER_EMAIL,
                    sender_auth: SenderAuth | None = None) -> IngestPolicy:
        """``process-email``: mailbox ``default``, no IMAP message behind it."""
        return cls(DEFAULT_ID, CLI_STATE_KEY, tuple(sender_allowlist), allow_without_links, max_links, sender_auth)


@dataclass(frozen=True)
class Where:
    """Where in the mailbox the email is (uid 0: not from IMAP)."""

    uidvalidity: int = 0
    uid: int = 0


@dataclass(frozen=True)
class Ingested:
    outcome: Literal["queued", "known", "skipped", "parked"]
    result: ProcessResult | None = None
    items: tuple[OutboxItem, ...] = ()


class Ingest:
    """Ingests the emails of one mailbox into the store, one outbox item per target its routes name."""

    def __init__(self, store, policy: IngestPolicy, target_ids: tuple[str, ...], *,
                 offloader_factory: Callable[[], Offloader], on_queued: Callable[[], None] = lambda: None,
                 enrich_later: bool = False, on_enriching: Callable[[], None] = lambda: None,
                 clock: Callable[[], float] = time.time, routes: Sequence[RouteConfig] | None = None) -> None:
        """``routes``: which targets an accepted email goes to (``email_processing.routing``); None: every one of
        ``target_ids`` takes the emails with links, and those without when the mailbox allows them (the
        environment form's routes). ``enrich_later``: the R2 copies are made in the background
        (``background.enrichment``): an email whose links the offloader copies is queued ``enriching``
        (``on_enriching`` wakes the enricher) and ingestion never waits on R2. Otherwise (``process-email``) the
        offload runs here, before the items are queued."""
        self.store = store
        self.policy = policy
        self.target_ids = target_ids or (DEFAULT_ID,)
        if routes is None:
            routes = (RouteConfig(to=self.target_ids),)
            if policy.allow_without_links:
                routes += (RouteConfig(match=RouteMatch(has_links=False), to=self.target_ids),)
        self.router = Router(routes)
        self.offloader_factory = offloader_factory
        self.on_queued = on_queued
        self.enrich_later = enrich_later
        self.on_enriching = on_enriching
        self.clock = clock
        self._labels = {"mailbox": policy.mailbox_id}  # every counter of an email names its mailbox

    def email_id(self, parsed: ParsedEmail) -> str:
        return email_id_for(parsed, self.policy.mailbox_id)

    def identify(self, parsed: ParsedEmail, where: Where) -> str:
        """The email id of ``parsed`` by the identity rule (``email_processing.identity``): a Message-ID keeps naming
        one email only while Date, From and Subject agree. A second live UID of the same email is merged (counted
        ``duplicates_merged``); the same email seen again after a UIDVALIDITY change is not counted."""
        base = self.email_id(parsed)
        if not parsed.message_id:
            return base
        fingerprint = fingerprint_of(parsed)
        first = self.store.get_identity(base)
        if first is None:
            if self.store.get_done(base) is None:  # a done record older than fingerprints: the same email
                self.store.remember_identity(base, fingerprint, where.uidvalidity, where.uid)
            return base
        if first["fingerprint"] != fingerprint:
            return email_id_for_reused(parsed, fingerprint, self.policy.mailbox_id)
        if where.uid and first["uidvalidity"] == where.uidvalidity and first["uid"] != where.uid:
            if self.store.get_done(base) is not None:
                self.store.incr("duplicates_merged", labels=self._labels)
                logger.info("EMAIL: merged mailbox=%s uid=%s into uid=%s email_id=%s (same Message-ID, Date, "
                            "From, Subject)", self.policy.mailbox_id, where.uid, first["uid"], base)
        return base

    def known(self, email_id: str, where: Where, message_id: str | None) -> bool:
        """True when the email was ingested before; then, if it is done, make sure it is flagged."""
        outcome = self.store.get_done(email_id)
        if outcome is None:
            return False
        if outcome != "enqueued" and where.uid:
            # Done before (e.g. a retry after a crash, or the same Message-ID again): make sure it is flagged.
            self.store.queue_flag(self.policy.state_key, where.uidvalidity, where.uid, message_id)
        return True

    def count_seen(self) -> None:
        self.store.incr("emails_seen", labels=self._labels)

    def ingest(self, parsed: ParsedEmail, *, received_at: str, where: Where = Where(),
               attempt_now: bool = False, email_id: str | None = None) -> Ingested:
        """Decide and record one parsed email. ``attempt_now``: the caller makes the first attempt itself, so the
        items are queued as attempted once, with their next due time an hour away (no delivery loop claims them
        meanwhile; a failed attempt reschedules them on the normal schedule). ``email_id``: what ``identify`` gave
        the caller for this email already (the poller identifies by the headers first), so it is not looked up
        twice."""
        if email_id is None:
            email_id = self.identify(parsed, where)
        if not parsed.message_id and self.known(email_id, where, None):  # (with one, the caller looked already)
            return Ingested("known")
        try:
            # Emails without links are let through: the routes decide (a has_links: false route, else skipped
            # no_delivery_links as before).
            result = process_email(parsed, received_at=received_at, sender_allowlist=self.policy.sender_allowlist,
                                   allow_without_links=True,
                                   offloader=NullOffloader() if self.enrich_later else self.offloader_factory(),
                                   mailbox_id=self.policy.mailbox_id,
                                   email_id=email_id, max_links=self.policy.max_links,
                                   sender_auth=self.policy.sender_auth)
        except (LeaseLost, StateStoreError):
            raise
        except Exception as exc:  # the orchestrator promises not to raise; if it does, park this one email
            logger.error("BG_POLLER: processing failed for uid %s", where.uid, exc_info=True)
            if not where.uid:  # a saved email (process-email): no mailbox to re-read it from; the command fails
                raise
            self.park(parsed, where, "processing_failed", f"{type(exc).__name__}: {exc}")
            return Ingested("parked")
        if result.refused_links:
            self._count_refused_links(result, where)
        if parsed.html_truncated:
            self.store.incr("html_truncations", labels=self._labels)
        if result.links_truncated:  # MAX_LINKS_PER_EMAIL cut the email's links (logged by the orchestrator)
            self.store.incr("links_truncated", result.links_truncated, labels=self._labels)
        result, target_ids = self._routed(result, parsed)
        if result.decision == "skip":
            self._record_skip(result, where, parsed)
            return Ingested("skipped", result)
        enriching = self.enrich_later and self.offloader_factory().offloads_any(result.links)
        items = self._enqueue(result, where, parsed, attempt_now, enriching, target_ids)
        return Ingested("queued" if items else "known", result, items)

    def _routed(self, result: ProcessResult, parsed: ParsedEmail) -> tuple[ProcessResult, tuple[str, ...]]:
        """The targets an accepted email goes to, or the result turned into a skip for the routes' reason
        (``route_drop``, ``no_route``, ``no_delivery_links``)."""
        if result.decision != "send":
            return result, ()
        decision = self.router.route(mailbox_id=self.policy.mailbox_id, sender=parsed.sender_email,
                                     subject=parsed.subject, providers={link.provider for link in result.links},
                                     has_links=bool(result.links))
        if decision.reason is not None:
            return dataclasses.replace(result, decision="skip", reason=decision.reason), ()
        return result, decision.targets

    def _count_refused_links(self, result: ProcessResult, where: Where) -> None:
        # Links are capabilities: one line per email naming providers and hosts, never a URL.
        for refused in result.refused_links:
            self.store.incr("links_refused", label=refused.reason, labels=self._labels)
        logger.warning("SECURITY: refused %d delivery link(s) mailbox=%s uid=%s event_id=%s: %s",
                       len(result.refused_links), self.policy.mailbox_id, where.uid, result.event_id,
                       "; ".join(f"{r.provider} host={r.host} reason={r.reason}" for r in result.refused_links))

    def _record_skip(self, result: ProcessResult, where: Where, parsed: ParsedEmail) -> None:
        self.store.mark_done(result.email_id, f"skipped:{result.reason}")
        self.store.incr("emails_skipped", label=result.reason, labels=self._labels)
        if where.uid:
            self.store.queue_flag(self.policy.state_key, where.uidvalidity, where.uid, parsed.message_id)
        self.store.record_recent(recent_entry(result.payload, f"skipped: {result.reason}"))
        logger.info("EMAIL: skipped mailbox=%s uid=%s event_id=%s reason=%s sender=%s", self.policy.mailbox_id,
                    where.uid, result.event_id, result.reason, mask_address(parsed.sender_email))

    def _enqueue(self, result: ProcessResult, where: Where, parsed: ParsedEmail, attempt_now: bool,
                 enriching: bool = False, target_ids: tuple[str, ...] = ()) -> tuple[OutboxItem, ...]:
        now = self.clock()
        first_due_in = ATTEMPTED_NOW_DUE_IN_SECONDS if attempt_now else 0.0
        items = [OutboxItem(event_id=event_id_for(result.email_id, target_id), email_id=result.email_id,
                            payload=for_target(result.payload, target_id), mailbox=self.policy.state_key,
                            uidvalidity=where.uidvalidity, uid=where.uid, message_id=parsed.message_id,
                            created_at=now, next_attempt_at=now + first_due_in,
                            attempts=1 if attempt_now else 0, first_attempt_at=now if attempt_now else None,
                            mailbox_id=self.policy.mailbox_id, target_id=target_id,
                            status=OutboxStatus.ENRICHING if enriching else OutboxStatus.PENDING)
                 for target_id in target_ids]
        # One transaction for every target's item: none can end (and the email be flagged done) before all exist.
        queued = []
        for item, created in zip(items, self.store.enqueue_all(items), strict=True):
            if created:
                queued.append(item)
                logger.info("BG_POLLER: queued %s (uid %s, %d links%s)", item.event_id, where.uid,
                            len(result.payload.get("delivery_links") or []), ", enriching" if enriching else "")
        if queued:
            self.store.incr("emails_processed", labels=self._labels)
            (self.on_enriching if enriching else self.on_queued)()
        return tuple(queued)

    def park(self, parsed: ParsedEmail | None, where: Where, reason: str, detail: str | None = None) -> None:
        """Keep an email the pipeline could not bring to an end state as a parked email (``<mailbox_id>:
        <uidvalidity>:<uid>``): not in the outbox, no done record, not flagged done on the server, so the original
        stays as it is and ``replay-parked`` can re-run the pipeline on it."""
        parked_id = message_address(self.policy.mailbox_id, where.uidvalidity, where.uid)
        email_id = self.email_id(parsed) if parsed is not None and parsed.message_id else None
        self.store.park(ParkedEmail(
            parked_id=parked_id, mailbox_id=self.policy.mailbox_id, mailbox=self.policy.state_key,
            uidvalidity=where.uidvalidity, uid=where.uid, reason=reason, email_id=email_id,
            message_id=parsed.message_id if parsed is not None else None,
            subject=(parsed.subject or "")[:200] if parsed is not None else None,
            detail=(detail or "")[:500] or None, parked_at=self.clock()))
        self.store.incr("emails_parked", label=reason, labels=self._labels)
        if reason in ("parse_failed", "processing_failed"):
            self.store.incr("parse_failures", labels=self._labels)
        logger.error("EMAIL: parked mailbox=%s uid=%s parked_id=%s reason=%s", self.policy.mailbox_id, where.uid,
                     parked_id, reason)


def recent_entry(payload: dict[str, Any], outcome: str) -> dict[str, Any]:
    return {
        "at": utc_now(),
        "sender": mask_address(payload.get("sender_email") or ""),
        "subject": (payload.get("subject") or "")[:80],
        "links": [link.get("provider") for link in payload.get("delivery_links") or []],
        "event_id": payload.get("event_id"),
        "outcome": outcome,
    }
