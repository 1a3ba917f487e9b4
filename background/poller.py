"""The mailbox poller: sees every new email, hands it to the orchestrator, queues it durably, flags what is done.

It runs in its own thread of every worker and acts only while this worker holds the lease. One IMAP session:
connect → SELECT → cycles; a cycle applies pending flag requests, then reads new UIDs after the durable checkpoint
of (mailbox, UIDVALIDITY) in bounded batches. Between cycles it IDLEs when the server offers it (new mail within
about a second) and runs a reconciliation cycle every ``EMAIL_POLLING_INTERVAL_SECONDS`` anyway, so a lost EXISTS
or a silently dead connection cannot stall the mailbox. Any IMAP error ends the session; the next one starts
after an exponential, jittered, capped backoff. Reading never sets ``\\Seen`` (BODY.PEEK): an email is flagged
only once it is done (delivered, skipped or dead-lettered), from the flag requests the store keeps.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from background.ingest import Ingest, IngestPolicy, Where
from background.lease import LeaseLost, wait_for_ownership
from background.runner import ImapState, PollerState
from config import DEFAULT_ID, MailboxConfig
from services.imap_mailbox import ImapAuthError, ImapError, ImapMessageGone, MailboxClient
from services.state_store import StateStoreError

logger = logging.getLogger(__name__)

DONE_KEYWORD = "$RenderSignalDone"
BATCH_SIZE = 50                     # UIDs fetched per batch (headers + structure); bounded memory per cycle
FULL_FETCH_MAX_BYTES = 2 * 1024 * 1024   # smaller messages are fetched whole; larger ones part by part
MAX_TEXT_PARTS = 4                  # text parts fetched from a large message (first plain and HTML ones)
IDLE_RENEW_SECONDS = 540            # re-issue IDLE at most every 9 minutes (servers drop idle sessions early)
IDLE_WAIT_SLICE_SECONDS = 1.0       # how often an idling poller looks at its stop/flag/lease signals
FLAG_BATCH = 100
MAX_FLAG_BATCHES_PER_CALL = 50


def backoff_delay(attempt: int, cap: float, rng: random.Random, base: float = 1.0) -> float:
    """Exponential backoff with ±25 % jitter: 1, 2, 4, 8 … s, capped."""
    delay = min(cap, base * (2 ** max(0, attempt - 1)))
    return max(0.05, delay * rng.uniform(0.75, 1.25))


class MailboxPoller:
    """The poller thread's body (``run(stop_event)``) and its unit of work (``run_cycle``)."""

    def __init__(self, config: MailboxConfig, store, lease, guard, status, *, offloader_factory: Callable[[], Any],
                 delivery_wakeup: threading.Event, flag_wakeup: threading.Event,
                 target_ids: tuple[str, ...] = (DEFAULT_ID,),
                 client_factory: Callable[..., MailboxClient] = MailboxClient, rng: random.Random | None = None):
        self.config = config
        self.store = store
        self.lease = lease
        self.guard = guard
        self.status = status
        self.offloader_factory = offloader_factory
        self.delivery_wakeup = delivery_wakeup
        self.flag_wakeup = flag_wakeup
        self.client_factory = client_factory
        self.rng = rng or random.Random()
        self.state_key = config.state_key  # the state store's key for this mailbox's checkpoint and flag queue
        self.ingest = Ingest(store, IngestPolicy.for_mailbox(config), target_ids,
                             offloader_factory=offloader_factory, on_queued=delivery_wakeup.set)
        self._failures = 0
        self._auth_streak = False

    # --- thread body ----------------------------------------------------------------------------------------

    def run(self, stop_event: threading.Event, held_event: threading.Event) -> None:
        while not stop_event.is_set():
            if not wait_for_ownership(self.lease, held_event, stop_event):
                self.status.update(state=PollerState.STANDBY, idle=False)
                continue
            delay = self._session(stop_event)
            if delay:
                stop_event.wait(delay)

    def _session(self, stop_event: threading.Event) -> float:
        """One IMAP session; returns the backoff to wait before the next one (0 = none)."""
        client = self.client_factory(self.config, guard=self.guard)
        try:
            self.guard.check_remote()
            client.connect()
            state = client.select(self.config.folder)
            self._on_connected(state)
            use_idle = self.config.use_idle and client.has_idle()
            while not stop_event.is_set():
                self.run_cycle(client, state)
                self._wait_for_work(client, state, use_idle, stop_event)
            return 0.0
        except LeaseLost as exc:
            logger.warning("BG_POLLER: stopped touching the mailbox (%s)", exc)
            self.status.update(state=PollerState.STANDBY, idle=False)
            return 0.0
        except ImapAuthError as exc:
            self._failures += 1
            if not self._auth_streak:
                self._auth_streak = True
                logger.error("%s", exc)
            self.status.error(str(exc), imap_state=ImapState.AUTH_FAILED)
            return self._backoff()
        except ImapError as exc:
            self._failures += 1
            # Dovecot (like most servers) slows down logins after failures: a login timeout inside a failure
            # streak is still the credentials' fault.
            login_stall = self._auth_streak and getattr(exc, "op", None) == "login"
            self.status.error(str(exc), imap_state=ImapState.AUTH_FAILED if login_stall else ImapState.UNREACHABLE)
            return self._backoff()
        except StateStoreError as exc:
            self._failures += 1
            logger.error("BG_POLLER: state store error, pausing the mailbox (%s)", exc)
            self.status.error(f"state store: {exc}")
            self.status.update(state=PollerState.REDIS_UNAVAILABLE if self.store.backend == "redis"
                               else PollerState.BACKOFF)
            return self._backoff()
        except Exception as exc:  # a bug must not kill the thread: log it, back off, try again
            self._failures += 1
            logger.error("BG_POLLER: unexpected error in the mailbox session", exc_info=True)
            self.status.error(f"unexpected: {type(exc).__name__}")
            return self._backoff()
        finally:
            self.status.update(idle=False)
            client.close()

    def _on_connected(self, state) -> None:
        if self._auth_streak:
            logger.info("IMAP: login succeeded again for %s", self.config.user)
        self._auth_streak = False
        self.status.update(state=PollerState.POLLING, imap=ImapState.OK, uidvalidity=state.uidvalidity)

    def _backoff(self) -> float:
        delay = backoff_delay(self._failures, self.config.reconnect_max_seconds, self.rng)
        logger.warning("IMAP: reconnect attempt %d in %.1fs", self._failures, delay)
        return delay

    # --- waiting between cycles -----------------------------------------------------------------------------

    def _wait_for_work(self, client: MailboxClient, state, use_idle: bool, stop_event: threading.Event) -> None:
        """Until the next reconciliation cycle: IDLE (or sleep), applying flag requests as they come."""
        deadline = time.monotonic() + self.config.poll_interval_seconds
        while not stop_event.is_set() and time.monotonic() < deadline:
            if self.flag_wakeup.is_set():
                self.flag_wakeup.clear()
                self.apply_flags(client, state)
                continue
            if not use_idle:
                self.flag_wakeup.wait(min(1.0, max(0.0, deadline - time.monotonic())))
                self.guard.check_local()
                continue
            # New mail announced while we were busy may have come with the answer to one of our own commands
            # (and is not repeated once IDLE starts): look before idling.
            if self._new_mail_waiting(client, state) or self._idle_once(client, deadline, stop_event):
                return  # new mail: cycle now

    def _idle_once(self, client: MailboxClient, deadline: float, stop_event: threading.Event) -> bool:
        """One IDLE command; returns True when the server announced new mail."""
        client.idle_start()
        self.status.update(idle=True)
        started = time.monotonic()
        new_mail = False
        try:
            while not stop_event.is_set() and not self.flag_wakeup.is_set():
                now = time.monotonic()
                if now >= deadline or now - started >= IDLE_RENEW_SECONDS or not self.lease.holds_locally():
                    break
                responses = client.idle_wait(min(IDLE_WAIT_SLICE_SECONDS, deadline - now))
                if any(_is_new_mail(response) for response in responses):
                    new_mail = True
                    break
        finally:
            self.status.update(idle=False)
        if any(_is_new_mail(response) for response in client.idle_done()):
            new_mail = True
        return new_mail

    def _new_mail_waiting(self, client: MailboxClient, state) -> bool:
        checkpoint = self.store.get_checkpoint(self.state_key, state.uidvalidity)
        if checkpoint is None:
            return False
        client.noop()
        return bool(client.uids_after(checkpoint, 1))

    # --- one cycle ------------------------------------------------------------------------------------------

    def run_cycle(self, client: MailboxClient, state) -> int:
        """Apply flags, then process every new UID in batches. Returns the number of emails handled."""
        self.status.update(last_cycle_at=time.time())
        self.guard.check_remote()
        self.apply_flags(client, state)
        # Dovecot (like other servers) shows mail appended by another session only once one of our commands has
        # ended: a NOOP first, so the search below sees everything that arrived before this cycle.
        client.noop()
        checkpoint = self.store.get_checkpoint(self.state_key, state.uidvalidity)
        if checkpoint is None:
            handled = self._first_pass(client, state)
        else:
            handled = 0
            while True:
                self.guard.check_remote()
                uids = client.uids_after(checkpoint, BATCH_SIZE)
                if not uids:
                    break
                handled += self._process_batch(client, state, uids)
                checkpoint = uids[-1]
        self._failures = 0
        self.status.update(state=PollerState.POLLING, imap=ImapState.OK, last_success_at=time.time(),
                           consecutive_errors=0, last_uid=self.store.get_checkpoint(self.state_key, state.uidvalidity))
        if handled:
            self.apply_flags(client, state)
        return handled

    def _first_pass(self, client: MailboxClient, state) -> int:
        """No checkpoint for this UIDVALIDITY: a first start, or the mailbox was recreated (UIDVALIDITY changed).

        First start: the UNSEEN messages not flagged done (the established behaviour). UIDVALIDITY change: every
        message not flagged done, checked against the Message-ID record of what was delivered, so nothing already
        delivered is sent again. Either way unseen messages older than FIRST_START_MAX_AGE_HOURS are passed over,
        and the checkpoint becomes UIDNEXT - 1 so every later UID is processed whatever its flags.
        """
        changed = self.store.has_any_checkpoint(self.state_key)
        if changed:
            logger.warning("IMAP: UIDVALIDITY of %s is now %s: matching messages by Message-ID",
                           self.state_key, state.uidvalidity)
            criteria = ["UNKEYWORD", DONE_KEYWORD]
        else:
            logger.info("IMAP: first start on %s (UIDVALIDITY %s): processing unseen messages",
                        self.state_key, state.uidvalidity)
            criteria = ["UNSEEN", "UNKEYWORD", DONE_KEYWORD]
        uidnext = state.uidnext
        self.guard.check_remote()
        candidates = sorted(uid for uid in client.search_uids(criteria) if uid < uidnext)
        cutoff = datetime.now(timezone.utc) - timedelta(hours=self.config.first_start_max_age_hours)
        handled = 0
        for start in range(0, len(candidates), BATCH_SIZE):
            self.guard.check_remote()
            handled += self._process_batch(client, state, candidates[start:start + BATCH_SIZE], too_old=cutoff,
                                           advance_checkpoint=False)
        self.store.set_checkpoint(self.state_key, state.uidvalidity, max(uidnext - 1, 0))
        return handled

    def _process_batch(self, client: MailboxClient, state, uids: list[int], too_old: datetime | None = None,
                       advance_checkpoint: bool = True) -> int:
        metas = client.fetch_meta(uids)
        handled = 0
        passed_over = 0
        for uid in uids:
            meta = metas.get(uid)
            if meta is None:  # expunged between SEARCH and FETCH
                if advance_checkpoint:
                    self.store.set_checkpoint(self.state_key, state.uidvalidity, uid)
                continue
            if too_old is not None and meta.internaldate is not None and meta.internaldate < too_old:
                passed_over += 1
            else:
                try:
                    self._process_message(client, state, meta)
                    handled += 1
                except ImapMessageGone:
                    logger.info("IMAP: uid %s was expunged before it could be read; moving on", uid)
            if advance_checkpoint:
                self.store.set_checkpoint(self.state_key, state.uidvalidity, uid)
        if passed_over:
            self.store.incr("emails_skipped", passed_over, label="older_than_first_start_window",
                            labels={"mailbox": self.config.id})
            logger.info("IMAP: passed over %d unseen messages older than %gh (FIRST_START_MAX_AGE_HOURS)",
                        passed_over, self.config.first_start_max_age_hours)
        return handled

    def _process_message(self, client: MailboxClient, state, meta) -> None:
        from email_processing.parsing import parse_message
        from email_processing.payload import format_received_at, received_at_from_date_header

        where = Where(state.uidvalidity, meta.uid)
        header_view = parse_message(meta.header_bytes)
        if header_view.message_id and self.ingest.known(self.ingest.email_id(header_view), where,
                                                         header_view.message_id):
            return
        self.ingest.count_seen()
        try:
            parsed = self._fetch_and_parse(client, meta)
        except (ImapError, LeaseLost, StateStoreError):
            raise
        except Exception as exc:  # the parser promises not to raise; if it does, park this one email
            self.ingest.park(header_view, where, f"parse_failed: {type(exc).__name__}")
            return
        received_at = (format_received_at(meta.internaldate) if meta.internaldate
                       else received_at_from_date_header(parsed.date_header))
        self.ingest.ingest(parsed, received_at=received_at, where=where)

    def _fetch_and_parse(self, client: MailboxClient, meta):
        from email_processing.html_text import HTML_CAP_BYTES
        from email_processing.parsing import TEXT_CAP_BYTES, TextPart, encoded_fetch_limit, parse_message, parse_parts

        if meta.size is None or meta.size <= FULL_FETCH_MAX_BYTES:
            raw = client.fetch_full(meta.uid)
            if not raw and meta.size:
                # Dovecot answers an empty body for a message another session expunged meanwhile: that is not an
                # empty email to skip (and flag), it is gone.
                raise ImapMessageGone(meta.uid, "fetch")
            return parse_message(raw)
        # Large message: only the text parts, each with a byte limit; attachments are never downloaded.
        parts = []
        for info in client.text_parts(meta.bodystructure)[:MAX_TEXT_PARTS]:
            cap = HTML_CAP_BYTES if info.content_type == "text/html" else TEXT_CAP_BYTES
            limit = encoded_fetch_limit(cap, info.transfer_encoding)
            body = client.fetch_partial(meta.uid, info.part, limit)
            truncated = info.size is not None and info.size > len(body)
            parts.append(TextPart(info.content_type, info.charset, info.transfer_encoding, body, truncated))
        body_head = client.fetch_partial(meta.uid, "TEXT", 1024)  # for the email id of a message without Message-ID
        return parse_parts(meta.header_bytes, parts, body_head=body_head)

    # --- flags ----------------------------------------------------------------------------------------------

    def apply_flags(self, client: MailboxClient, state) -> int:
        """Flag done emails on the server (``\\Seen`` unless MARK_AS_READ=false, plus the done keyword), draining
        the pending requests in batches (bounded, so one call never runs for ever)."""
        applied = 0
        for _ in range(MAX_FLAG_BATCHES_PER_CALL):
            done = self._apply_flag_batch(client, state)
            applied += done
            if done < FLAG_BATCH:
                break
        return applied

    def _apply_flag_batch(self, client: MailboxClient, state) -> int:
        requests_ = self.store.pending_flags(self.state_key, FLAG_BATCH)
        if not requests_:
            return 0
        flags = [DONE_KEYWORD] if state.keywords_allowed else []
        if self.config.mark_as_read:
            flags.append("\\Seen")
        uids: list[int] = []
        for request in requests_:
            if request.uidvalidity == state.uidvalidity:
                uids.append(request.uid)
            elif request.message_id:
                uids.extend(client.search_uids(["HEADER", "Message-ID", f"<{request.message_id}>"]))
        if uids and flags:
            self.guard.check_remote()
            self.guard.record_action()
            client.add_flags(sorted(set(uids)), flags)
        for request in requests_:
            self.store.clear_flag(request)
        return len(requests_)


def _is_new_mail(response: Any) -> bool:
    return isinstance(response, tuple) and len(response) >= 2 and response[1] in (b"EXISTS", "EXISTS")
