"""The mailbox poller: sees every new email, hands it to the orchestrator, queues it durably, flags what is done.

It runs in its own thread of every worker and acts only while this worker holds the lease. One IMAP session:
connect → SELECT → cycles; a cycle applies pending flag requests, then reads new UIDs after the durable checkpoint
of (mailbox, UIDVALIDITY) in bounded batches. Between cycles it IDLEs when the server offers it (new mail within
about a second) and runs a reconciliation cycle every ``EMAIL_POLLING_INTERVAL_SECONDS`` anyway, so a lost EXISTS
or a silently dead connection cannot stall the mailbox. Any IMAP error ends the session; the next one starts
after an exponential, jittered, capped backoff. Reading never sets ``\\Seen`` (BODY.PEEK): an email is flagged
only once it is done (delivered, skipped or dead-lettered), from the flag requests the store keeps.

A server that stores no custom keywords (PERMANENTFLAGS without ``\\*``, e.g. Exchange Online) gets no
``$RenderSignalDone`` and is never searched for it: the state store's done records (and ``\\Seen`` with MARK_AS_READ)
carry the done state. With MARK_AS_READ=false such a server would keep no done mark at all, so the mailbox stops at
its SELECT in the state ``no_server_done_mark`` unless ALLOW_NO_SERVER_DONE_MARK=true.
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
from config import DEFAULT_ID, MailboxConfig, RouteConfig
from services.imap_mailbox import (
    ImapAuthError,
    ImapConnectionError,
    ImapError,
    ImapMessageGone,
    ImapTimeout,
    MailboxClient,
)
from services.oauth.errors import OAuthError
from services.oauth.tokens import refresh_at
from services.state_store import FlagRequest, StateStoreError

logger = logging.getLogger(__name__)

DONE_KEYWORD = "$RenderSignalDone"
BATCH_SIZE = 50                     # UIDs fetched per batch (headers + structure); bounded memory per cycle
FULL_FETCH_MAX_BYTES = 2 * 1024 * 1024   # smaller messages are fetched whole; larger ones part by part
MAX_TEXT_PARTS = 4                  # text parts fetched from a large message (first plain and HTML ones)
IDLE_RENEW_SECONDS = 540            # re-issue IDLE at most every 9 minutes (servers drop idle sessions early)
IDLE_WAIT_SLICE_SECONDS = 1.0       # how often an idling poller looks at its stop/flag/lease signals
FLAG_BATCH = 100
MAX_FLAG_BATCHES_PER_CALL = 50
FLAG_MAX_FAILURES = 3               # failed applications of one flag request before it is dropped
STORED_TOKEN_CHECK_SECONDS = 2.0    # how often a reauth_required mailbox looks for a newly stored refresh token
MAX_UIDS_PER_CYCLE = 100_000        # new UIDs one cycle takes (one search); the rest come next cycle
RETRY_BATCH = 100                   # retry-set UIDs per cycle
REPLAY_BATCH = 50                   # replay requests carried out per cycle
# The poller's IMAP state for a server that would keep no done mark (no custom keywords, MARK_AS_READ=false,
# ALLOW_NO_SERVER_DONE_MARK unset): nothing is read from that mailbox.
NO_SERVER_DONE_MARK = ImapState.NO_SERVER_DONE_MARK


def backoff_delay(attempt: int, cap: float, rng: random.Random, base: float = 1.0) -> float:
    """Exponential backoff with ±25 % jitter: 1, 2, 4, 8 … s, capped."""
    delay = min(cap, base * (2 ** max(0, attempt - 1)))
    return max(0.05, delay * rng.uniform(0.75, 1.25))


class MailboxPoller:
    """The poller thread's body (``run(stop_event)``) and its unit of work (``run_cycle``)."""

    def __init__(self, config: MailboxConfig, store, lease, guard, status, *, offloader_factory: Callable[[], Any],
                 delivery_wakeup: threading.Event, flag_wakeup: threading.Event,
                 target_ids: tuple[str, ...] = (DEFAULT_ID,), enrich_wakeup: threading.Event | None = None,
                 client_factory: Callable[..., MailboxClient] = MailboxClient, rng: random.Random | None = None,
                 routes: tuple[RouteConfig, ...] | None = None, sign_in: Any = None):
        """``enrich_wakeup``: R2 copies are made in the background (``background.enrichment``), woken by it; None:
        none are made (R2 off). ``routes``: which of ``target_ids`` each email goes to (None or empty: all).
        ``sign_in``: the mailbox's OAuth2 sign-in (``services.oauth.sign_in.OAuthSignIn``), None for a password."""
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
        self.ingest = Ingest(store, IngestPolicy.for_mailbox(config), target_ids, routes=routes or None,
                             offloader_factory=offloader_factory, on_queued=delivery_wakeup.set,
                             enrich_later=enrich_wakeup is not None,
                             on_enriching=enrich_wakeup.set if enrich_wakeup is not None else lambda: None)
        self.sign_in = sign_in
        if sign_in is not None:
            status.update(auth_method="oauth2", oauth_provider=sign_in.provider_name)
        self._failures = 0
        self._auth_streak = False
        self._reauth_streak = False   # the reauth_required ERROR is logged once per streak
        self._reauth_version: str | None = None  # the stored refresh token's version when the sign-in failed
        self._cached_token_refused = False  # a cached token was refused once: the next refusal is terminal
        self._isolate_through = 0    # UIDs up to this one are fetched one by one (a batch failed on them)
        self._tried_this_cycle: set[int] = set()
        self._last_checkpoint: int | None = None
        self._checkpoint_moved_at: float | None = None
        self._no_done_mark_streak = False   # the no_server_done_mark ERROR is logged once per streak
        self._keyword_search_refused = False  # the server answered NO/BAD to UNKEYWORD $RenderSignalDone once

    # --- thread body ----------------------------------------------------------------------------------------

    def run(self, stop_event: threading.Event, held_event: threading.Event) -> None:
        while not stop_event.is_set():
            if not wait_for_ownership(self.lease, held_event, stop_event):
                self.status.update(state=PollerState.STANDBY, idle=False)
                continue
            delay = self._session(stop_event)
            if delay:
                self._pause(delay, stop_event)

    def _pause(self, delay: float, stop_event: threading.Event) -> None:
        """Wait ``delay`` before the next session; a mailbox waiting for a new sign-in (``reauth_required``) tries
        again as soon as another refresh token is stored (``oauth-login``), looked at every few seconds."""
        if not self._reauth_streak or self.sign_in is None or self.sign_in.refresh_tokens is None:
            stop_event.wait(delay)
            return
        deadline = time.monotonic() + delay
        while not stop_event.wait(min(STORED_TOKEN_CHECK_SECONDS, max(0.0, deadline - time.monotonic()))):
            if time.monotonic() >= deadline:
                return
            try:
                version = self.sign_in.stored_version()
            except StateStoreError:
                continue  # the store is down: the retry at the interval will say so
            if version != self._reauth_version:
                logger.info("OAUTH: a new refresh token is stored mailbox=%s; signing in", self.config.id)
                return

    def _session(self, stop_event: threading.Event) -> float:
        """One IMAP session; returns the backoff to wait before the next one (0 = none)."""
        extra = {"sign_in": self.sign_in} if self.sign_in is not None else {}
        client = self.client_factory(self.config, guard=self.guard, **extra)
        try:
            self.guard.check_remote()
            client.connect()
            return self._connected(client, stop_event)
        except OAuthError as exc:
            return self._sign_in_failed(exc)
        except LeaseLost as exc:
            logger.warning("BG_POLLER: stopped touching the mailbox (%s)", exc)
            self.status.update(state=PollerState.STANDBY, idle=False)
            return 0.0
        except ImapAuthError as exc:
            return self._login_refused(exc)
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

    def _connected(self, client: MailboxClient, stop_event: threading.Event) -> float:
        """The session once signed in: cycles and waits until stopped, or until its access token is due for renewal
        (then 0: the next session signs in at once with a fresh one)."""
        state = client.select(self.config.folder)
        self._on_connected(state, client)
        if not self._server_keeps_done_mark(state):
            return self.config.reconnect_max_seconds  # looked at again at the backoff's cap, quietly
        use_idle = self.config.use_idle and client.has_idle()
        while not stop_event.is_set():
            self.run_cycle(client, state)
            if self._token_renewal_due(client):
                logger.info("IMAP: reconnecting before the access token expires mailbox=%s", self.config.id)
                return 0.0
            self._wait_for_work(client, state, use_idle, stop_event)
        return 0.0

    def _login_refused(self, exc: ImapAuthError) -> float:
        if self.sign_in is not None:
            if self.sign_in.last_token_cached and not self._cached_token_refused:
                # The server may have revoked a token still alive in the cache: one more try, with a fresh token.
                self._cached_token_refused = True
                logger.warning("OAUTH: the server refused a cached access token mailbox=%s; signing in again with "
                               "a fresh one", self.config.id)
                return 0.0
            # refused right after a fresh token: only an operator mends it
            return self._sign_in_failed(OAuthError("imap_auth_failed", str(exc), terminal=True))
        self._failures += 1
        if not self._auth_streak:
            self._auth_streak = True
            logger.error("%s", exc)
        self.status.error(str(exc), imap_state=ImapState.AUTH_FAILED)
        return self._backoff()

    def _on_connected(self, state, client: MailboxClient) -> None:
        if self._auth_streak:
            logger.info("IMAP: login succeeded again for %s", self.config.user)
        if self._reauth_streak:
            logger.info("OAUTH: signed in again mailbox=%s", self.config.id)
        self._auth_streak = self._reauth_streak = self._cached_token_refused = False
        self.status.update(state=PollerState.POLLING, imap=ImapState.OK, uidvalidity=state.uidvalidity)
        if self.sign_in is not None:
            token = getattr(client, "token", None)
            self.status.update(token_expires_at=token.expires_at if token is not None else None,
                               last_refresh_at=self.sign_in.last_refresh_at)

    def _sign_in_failed(self, exc: OAuthError) -> float:
        """A token could not be had, or the server refused it. Terminal (a revoked grant, consent, a refusal right
        after a fresh token): ``reauth_required``, one ERROR per streak, tried again every OAUTH_REAUTH_RETRY_SECONDS.
        Transient (the token endpoint timed out, answered 5xx or 429): backed off like an IMAP outage."""
        assert self.sign_in is not None
        self._failures += 1
        if not exc.terminal:
            logger.warning("OAUTH: token endpoint unavailable mailbox=%s error=%s", self.config.id, exc.code)
            self.status.error(f"OAUTH: token endpoint unavailable: {exc.code}", imap_state=ImapState.UNREACHABLE)
            return self._backoff()
        if not self._reauth_streak:
            self._reauth_streak = True
            logger.error("OAUTH: reauth required mailbox=%s error=%s", self.config.id, exc.code)
        try:
            self._reauth_version = self.sign_in.stored_version()
        except StateStoreError:
            self._reauth_version = None
        self.status.error(f"OAUTH: reauth required: {exc.code}", imap_state=ImapState.REAUTH_REQUIRED)
        return self.sign_in.reauth_retry_seconds

    def _token_renewal_due(self, client: MailboxClient) -> bool:
        """The session's access token has less than min(5 min, 10 % of its lifetime) left: end the session, so that
        the next one signs in with a fresh token (a server never holds a session on an expired token)."""
        return time.time() >= self._token_renewal_at(client)

    def _token_renewal_at(self, client: MailboxClient) -> float:
        token = getattr(client, "token", None)
        return float("inf") if token is None else refresh_at(token)

    def _server_keeps_done_mark(self, state) -> bool:
        """Whether this session may go on: the server stores the done keyword, or ``\\Seen`` (MARK_AS_READ), or the
        operator accepted a server without any done mark. Says once per session how done state is kept."""
        mailbox_id = self.config.id
        if state.keywords_allowed:
            self._no_done_mark_streak = False
            return True
        if self.config.mark_as_read:
            self._no_done_mark_streak = False
            logger.info("IMAP: server stores no custom keywords mailbox=%s; done state from the state store and "
                        "\\Seen", mailbox_id)
            return True
        if self.config.allow_no_server_done_mark:
            logger.warning("IMAP: server stores no custom keywords mailbox=%s; done state from the state store only "
                           "(MARK_AS_READ=false, ALLOW_NO_SERVER_DONE_MARK=true: the server keeps no done mark)",
                           mailbox_id)
            return True
        message = (f"IMAP: {NO_SERVER_DONE_MARK} mailbox={mailbox_id}: the server stores no custom keywords and "
                   "MARK_AS_READ=false, so it would keep no done mark; set MARK_AS_READ=true, or "
                   "ALLOW_NO_SERVER_DONE_MARK=true to rely on the state store alone")
        if not self._no_done_mark_streak:
            self._no_done_mark_streak = True
            logger.error("%s", message)
        self.status.error(message)
        self.status.update(imap=NO_SERVER_DONE_MARK)
        return False

    def _backoff(self) -> float:
        delay = backoff_delay(self._failures, self.config.reconnect_max_seconds, self.rng)
        logger.warning("IMAP: reconnect attempt %d in %.1fs", self._failures, delay)
        return delay

    # --- waiting between cycles -----------------------------------------------------------------------------

    def _wait_for_work(self, client: MailboxClient, state, use_idle: bool, stop_event: threading.Event) -> None:
        """Until the next reconciliation cycle: IDLE (or sleep), applying flag requests as they come."""
        renewal_in = self._token_renewal_at(client) - time.time()  # IDLE ends in time for the next token
        deadline = time.monotonic() + max(0.0, min(self.config.poll_interval_seconds, renewal_in))
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
        """Apply flags, process every new UID in batches, then the retry set and replay requests. Returns the number
        of emails handled. One failing flag request, message or replay never stops the others (issue 15)."""
        self.status.update(last_cycle_at=time.time())
        self.guard.check_remote()
        self._tried_this_cycle = set()   # isolated UIDs: each is tried once per cycle
        self._apply_flags_isolated(client, state)
        # Dovecot (like other servers) shows mail appended by another session only once one of our commands has
        # ended: a NOOP first, so the search below sees everything that arrived before this cycle.
        client.noop()
        checkpoint = self.store.get_checkpoint(self.state_key, state.uidvalidity)
        if checkpoint is None:
            handled = self._first_pass(client, state)
            server_max = max(state.uidnext - 1, 0)
        else:
            # One search for everything new, then bounded batches: catching up is linear in the new messages.
            self.guard.check_remote()
            new_uids = client.uids_after(checkpoint, MAX_UIDS_PER_CYCLE)
            server_max = new_uids[-1] if new_uids else checkpoint
            handled = 0
            for start in range(0, len(new_uids), BATCH_SIZE):
                self.guard.check_remote()
                handled += self._process_batch(client, state, new_uids[start:start + BATCH_SIZE])
        return self.end_cycle(client, state, handled, server_max)

    def end_cycle(self, client: MailboxClient, state, handled: int, server_max: int) -> int:
        """After a cycle's new UIDs: the failed fetches and replays, the status, then the flags; how many emails the
        cycle handled."""
        handled += self._retry_failed_fetches(client, state)
        self._carry_out_replays(client, state)
        self._failures = 0
        checkpoint_now = self.store.get_checkpoint(self.state_key, state.uidvalidity)
        retries = len(self.store.fetch_retries(self.state_key, state.uidvalidity, RETRY_BATCH))
        if checkpoint_now != self._last_checkpoint:
            self._last_checkpoint, self._checkpoint_moved_at = checkpoint_now, time.time()
        self.status.update(state=PollerState.POLLING, imap=ImapState.OK, last_success_at=time.time(),
                           consecutive_errors=0, last_uid=checkpoint_now, server_uid_max=server_max,
                           retry_set=retries, checkpoint_moved_at=self._checkpoint_moved_at,
                           waiting=max(0, server_max - (checkpoint_now or 0)))
        if handled:
            self._apply_flags_isolated(client, state)
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
        else:
            logger.info("IMAP: first start on %s (UIDVALIDITY %s): processing unseen messages",
                        self.state_key, state.uidvalidity)
        uidnext = state.uidnext
        self.guard.check_remote()
        candidates = sorted(uid for uid in self._first_pass_search(client, state, changed) if uid < uidnext)
        cutoff = datetime.now(timezone.utc) - timedelta(hours=self.config.first_start_max_age_hours)
        handled = 0
        for start in range(0, len(candidates), BATCH_SIZE):
            self.guard.check_remote()
            handled += self._process_batch(client, state, candidates[start:start + BATCH_SIZE], too_old=cutoff,
                                           advance_checkpoint=False)
        self.store.set_checkpoint(self.state_key, state.uidvalidity, max(uidnext - 1, 0))
        return handled

    def _first_pass_search(self, client: MailboxClient, state, changed: bool) -> list[int]:
        """The candidates of a first pass. With the done keyword: the messages without it (first start: the unseen
        ones). Without it (the server stores none, or refused to search for it): first start, the unseen messages
        (``\\Seen`` is the done mark left when the state store is new or lost); UIDVALIDITY change, every message, the
        state store's done records deciding (as the keyword would: a message read by a person is not done)."""
        if state.keywords_allowed and not self._keyword_search_refused:
            criteria = ["UNKEYWORD", DONE_KEYWORD] if changed else ["UNSEEN", "UNKEYWORD", DONE_KEYWORD]
            try:
                return client.search_uids(criteria)
            except (ImapConnectionError, ImapTimeout):
                raise
            except ImapError as exc:  # some servers answer NO/BAD to a keyword they do not know: never loop on it
                self._keyword_search_refused = True
                logger.warning("IMAP: the server refused to search for %s mailbox=%s (%s); the state store and "
                               "\\Seen decide what is done", DONE_KEYWORD, self.config.id, exc)
        return client.search_uids(["ALL"] if changed else ["UNSEEN"])

    def _process_batch(self, client: MailboxClient, state, uids: list[int], too_old: datetime | None = None,
                       advance_checkpoint: bool = True) -> int:
        """The messages of one batch: fetched together, each processed on its own. A batch the server refuses (or
        whose fetch broke the connection last time) is taken UID by UID, so one poison message is isolated."""
        if uids and uids[0] <= self._isolate_through:
            return sum(self._process_isolated(client, state, uid, too_old, advance_checkpoint) for uid in uids)
        try:
            metas = client.fetch_meta(uids)
        except (ImapConnectionError, ImapTimeout):
            self._isolate_through = max(uids)   # the next session takes these one by one
            raise
        except ImapError as exc:  # NO / BAD for the batch: one of them cannot be read
            logger.warning("IMAP: fetching %d messages failed (%s); taking them one by one", len(uids), exc)
            return sum(self._process_isolated(client, state, uid, too_old, advance_checkpoint) for uid in uids)
        handled = 0
        passed_over = 0
        for uid in uids:
            meta = metas.get(uid)
            if meta is None and not self._confirmed_gone(client, uid):
                handled += self._process_isolated(client, state, uid, too_old, advance_checkpoint)
                continue
            if meta is None:  # expunged between SEARCH and FETCH (a UID SEARCH confirmed it)
                pass
            elif too_old is not None and meta.internaldate is not None and meta.internaldate < too_old:
                passed_over += 1
            else:
                handled += self._process_one(client, state, meta, advance_checkpoint)
            if advance_checkpoint:
                self.store.set_checkpoint(self.state_key, state.uidvalidity, uid)
        self._count_passed_over(passed_over)
        return handled

    def _process_one(self, client: MailboxClient, state, meta, advance_checkpoint: bool) -> int:
        """One message of a batch that was fetched fine; a message the server then refuses joins the retry set."""
        try:
            self._process_message(client, state, meta)
            return 1
        except ImapMessageGone:
            logger.info("IMAP: uid %s was expunged before it could be read; moving on", meta.uid)
            return 0
        except (ImapConnectionError, ImapTimeout):
            self._isolate_through = meta.uid
            raise
        except ImapError as exc:  # NO for this message: retried on its own, parked after IMAP_FETCH_MAX_FAILURES
            self._fetch_failed(state, meta.uid, str(exc), header=meta.header_bytes)
            return 0

    def _process_isolated(self, client: MailboxClient, state, uid: int, too_old: datetime | None,
                          advance_checkpoint: bool) -> int:
        """One UID on its own: counted as a failure before it is touched (so a message that breaks the connection
        is counted too), the checkpoint moved past it at once, the count cleared when it is processed."""
        self._tried_this_cycle.add(uid)
        failures = self.store.record_fetch_failure(self.state_key, state.uidvalidity, uid, "in progress")
        if advance_checkpoint:
            self.store.set_checkpoint(self.state_key, state.uidvalidity, uid)
        if failures > self.config.fetch_max_failures:
            self._park_unreadable(state, uid, "fetch failed repeatedly (the connection broke while reading it)")
            return 0
        try:
            meta = client.fetch_meta([uid]).get(uid)
            if meta is None:
                if self._confirmed_gone(client, uid):
                    self.store.clear_fetch_failure(self.state_key, state.uidvalidity, uid)
                    return 0
                raise ImapError("IMAP: the server answered the FETCH without the message", "fetch")
            if too_old is not None and meta.internaldate is not None and meta.internaldate < too_old:
                self.store.clear_fetch_failure(self.state_key, state.uidvalidity, uid)
                self._count_passed_over(1)
                return 0
            self._process_message(client, state, meta)
        except ImapMessageGone:
            pass
        except (ImapConnectionError, ImapTimeout):
            raise  # counted already: a message that keeps breaking the connection is parked in the end
        except ImapError as exc:
            if failures >= self.config.fetch_max_failures:
                self._park_unreadable(state, uid, str(exc))
            return 0
        self.store.clear_fetch_failure(self.state_key, state.uidvalidity, uid)
        return 1

    def _retry_failed_fetches(self, client: MailboxClient, state) -> int:
        """The retry set, after the new mail: each UID once per cycle until processed or parked."""
        handled = 0
        for uid, _ in self.store.fetch_retries(self.state_key, state.uidvalidity, RETRY_BATCH):
            if uid in self._tried_this_cycle:
                continue
            self.guard.check_remote()
            handled += self._process_isolated(client, state, uid, None, advance_checkpoint=False)
        if handled or self._isolate_through:
            checkpoint = self.store.get_checkpoint(self.state_key, state.uidvalidity) or 0
            if checkpoint >= self._isolate_through:
                self._isolate_through = 0
        return handled

    def _fetch_failed(self, state, uid: int, error: str, header: bytes = b"") -> None:
        failures = self.store.record_fetch_failure(self.state_key, state.uidvalidity, uid, error)
        logger.warning("IMAP: uid %s could not be fetched (%s); failure %d of %d", uid, error, failures,
                       self.config.fetch_max_failures)
        if failures >= self.config.fetch_max_failures:
            self._park_unreadable(state, uid, error, header)

    def _park_unreadable(self, state, uid: int, error: str, header: bytes = b"") -> None:
        from email_processing.parsing import parse_message

        self.store.clear_fetch_failure(self.state_key, state.uidvalidity, uid)
        parsed = parse_message(header) if header else None
        self.ingest.park(parsed, Where(state.uidvalidity, uid), "fetch_failed", error)

    def _confirmed_gone(self, client: MailboxClient, uid: int) -> bool:
        """A FETCH answered without the message means "expunged" only when a UID SEARCH agrees."""
        return uid not in client.search_uids(["UID", str(uid)])

    def _count_passed_over(self, passed_over: int) -> None:
        if passed_over:
            self.store.incr("emails_skipped", passed_over, label="older_than_first_start_window",
                            labels={"mailbox": self.config.id})
            logger.info("IMAP: passed over %d unseen messages older than %gh (FIRST_START_MAX_AGE_HOURS)",
                        passed_over, self.config.first_start_max_age_hours)

    def _carry_out_replays(self, client: MailboxClient, state) -> None:
        """Replay requests of parked emails (``flask replay-parked``): re-read each (by UID, else by Message-ID) and
        re-run the pipeline; an email that is gone gets a recorded refusal. One failing replay never stops the next."""
        for parked in self.store.replay_requests(self.config.id, REPLAY_BATCH):
            self.guard.check_remote()
            uids: list[int] = []
            if parked.uidvalidity == state.uidvalidity and not self._confirmed_gone(client, parked.uid):
                uids = [parked.uid]
            elif parked.message_id:
                try:
                    uids = find_by_message_id(client, parked.message_id)[:1]
                except ValueError:
                    uids = []
            if not uids:
                self.store.refuse_replay(parked.parked_id, "the email is no longer in the mailbox")
                logger.warning("EMAIL: replay refused parked_id=%s reason=gone", parked.parked_id)
                continue
            self.store.unpark(parked.parked_id)
            logger.info("EMAIL: replaying parked_id=%s", parked.parked_id)
            self._process_isolated(client, state, uids[0], None, advance_checkpoint=False)

    def _process_message(self, client: MailboxClient, state, meta) -> None:
        from email_processing.parsing import parse_message
        from email_processing.payload import format_received_at, received_at_from_date_header

        where = Where(state.uidvalidity, meta.uid)
        header_view = parse_message(meta.header_bytes)
        email_id = self.ingest.identify(header_view, where) if header_view.message_id else None
        if email_id is not None and self.ingest.known(email_id, where, header_view.message_id):
            return
        self.ingest.count_seen()
        try:
            parsed = self._fetch_and_parse(client, meta)
        except (ImapError, LeaseLost, StateStoreError):
            raise
        except Exception as exc:  # the parser promises not to raise; if it does, park this one email
            self.ingest.park(header_view, where, "parse_failed", f"{type(exc).__name__}: {exc}")
            return
        received_at = (format_received_at(meta.internaldate) if meta.internaldate
                       else received_at_from_date_header(parsed.date_header))
        self.ingest.ingest(parsed, received_at=received_at, where=where, email_id=email_id)

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

    def _apply_flags_isolated(self, client: MailboxClient, state) -> None:
        """Flag application never prevents ingestion: anything but a broken connection, the lease or the store is
        logged, and the cycle goes on to read new mail."""
        try:
            self.apply_flags(client, state)
        except (ImapConnectionError, ImapTimeout, LeaseLost, StateStoreError):
            raise
        except Exception:
            logger.error("IMAP: applying flag requests failed; reading new mail anyway", exc_info=True)

    def apply_flags(self, client: MailboxClient, state) -> int:
        """Flag done emails on the server (``\\Seen`` unless MARK_AS_READ=false, plus the done keyword where the server
        stores keywords), draining the pending requests in batches (bounded, so one call never runs for ever). With
        neither, a request is cleared without a STORE: the state store's done record is the only mark."""
        applied = 0
        for _ in range(MAX_FLAG_BATCHES_PER_CALL):
            done, failed = self._apply_flag_batch(client, state)
            applied += done
            if done + failed < FLAG_BATCH or failed:  # a failed request is counted once per call
                break
        return applied

    def _apply_flag_batch(self, client: MailboxClient, state) -> tuple[int, int]:
        """One batch of flag requests; returns (applied, failed). Each request is isolated: one that fails is
        counted and stays for the next cycle, and after FLAG_MAX_FAILURES it is dropped."""
        requests_ = self.store.pending_flags(self.state_key, FLAG_BATCH)
        if not requests_:
            return 0, 0
        flags = [DONE_KEYWORD] if state.keywords_allowed else []
        if self.config.mark_as_read:
            flags.append("\\Seen")
        targets: list[tuple[FlagRequest, list[int]]] = []
        failed = 0
        for request in requests_:
            try:
                targets.append((request, self._flag_targets(client, state, request)))
            except (ImapConnectionError, ImapTimeout, LeaseLost, StateStoreError):
                raise
            except Exception as exc:  # e.g. a Message-ID the server cannot search for
                failed += self._flag_request_failed(request, exc)
        if flags and any(uids for _, uids in targets):
            self.guard.check_remote()
            self.guard.record_action()
            try:
                client.add_flags(sorted({uid for _, uids in targets for uid in uids}), flags)
            except (ImapConnectionError, ImapTimeout):
                raise
            except ImapError:  # one of them refused: store them one by one
                targets, failed = self._store_flags_one_by_one(client, targets, flags, failed)
        for request, _ in targets:
            self.store.clear_flag(request)
        return len(targets), failed

    def _flag_targets(self, client: MailboxClient, state, request: FlagRequest) -> list[int]:
        if request.uidvalidity == state.uidvalidity:
            return [request.uid]
        if request.message_id:  # from an older UIDVALIDITY: find it again by Message-ID
            return find_by_message_id(client, request.message_id)
        return []

    def _store_flags_one_by_one(self, client: MailboxClient, targets: list, flags: list[str],
                                failed: int) -> tuple[list, int]:
        stored = []
        for request, uids in targets:
            try:
                if uids:
                    client.add_flags(uids, flags)
                stored.append((request, uids))
            except (ImapConnectionError, ImapTimeout):
                raise
            except ImapError as exc:
                failed += self._flag_request_failed(request, exc)
        return stored, failed

    def _flag_request_failed(self, request: FlagRequest, exc: Exception) -> int:
        failures = self.store.flag_failed(request)
        reason = f"{type(exc).__name__}: {exc}"[:200]
        if failures >= FLAG_MAX_FAILURES:
            self.store.clear_flag(request)
            self.store.incr("flag_requests_dropped", labels={"mailbox": self.config.id})
            logger.error("IMAP: flag request dropped uid=%s reason=%s", request.uid, reason)
        else:
            logger.warning("IMAP: flag request for uid %s failed (%d of %d): %s", request.uid, failures,
                           FLAG_MAX_FAILURES, reason)
        return 1


def find_by_message_id(client: MailboxClient, message_id: str) -> list[int]:
    """The UIDs whose Message-ID header is ``message_id`` (searched with UTF-8 when it is not ASCII)."""
    if any(ord(char) < 0x20 or char == "\x7f" for char in message_id):
        # A line break would end the SEARCH command mid-way and break the session: never send it.
        raise ValueError("the Message-ID holds control characters and cannot be searched for")
    return client.search_uids(["HEADER", "Message-ID", f"<{message_id}>"])


def _is_new_mail(response: Any) -> bool:
    return isinstance(response, tuple) and len(response) >= 2 and response[1] in (b"EXISTS", "EXISTS")
