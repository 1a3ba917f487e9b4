"""The per-worker runtime: lazily built adapters, the background threads, and the views the routes read.

``ServiceRuntime`` is created by ``create_app`` (no I/O, no thread). Gunicorn's ``post_worker_init`` calls
``start_background()``: every worker then runs a lease keeper (standby or holder), and the poller and delivery
threads, which act only while this worker holds the lease, plus an observer that publishes the holder's status
to the shared store and caches the cluster view for ``/health`` (which must do no network I/O of its own).
``stop_background(timeout)`` (``worker_exit``) stops everything and joins with a timeout. The routes read this
worker only through ``status_source()`` (``background/status_source.py``).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Callable

from config import MailboxConfig, OAuth2Credentials, SenderAuth, ServiceConfig, TargetConfig
from settings import Settings
from timestamps import iso_utc

if TYPE_CHECKING:  # the adapters are imported lazily, on first use (heavy, and importing must open nothing)
    import redis

    from background.operator_actions import OperatorSource
    from background.services import BackgroundServices
    from background.status_source import StatusSource
    from services.state_store import StateStore
    from services.webhook import WebhookSender

logger = logging.getLogger(__name__)

PACKAGE_VERSION = "1.0.0"


class PollerState(StrEnum):
    """What the poller is doing (``PollerStatus.state``; /health ``checks.poller``, /api/status ``poller.state``)."""

    STANDBY = "standby"
    POLLING = "polling"
    BACKOFF = "backoff"
    REDIS_UNAVAILABLE = "redis_unavailable"


class ImapState(StrEnum):
    """What the poller last saw of the IMAP server (``PollerStatus.imap``; /health ``checks.imap``)."""

    OK = "ok"
    UNREACHABLE = "unreachable"
    AUTH_FAILED = "auth_failed"
    NO_SERVER_DONE_MARK = "no_server_done_mark"  # no custom keywords and MARK_AS_READ=false: nothing is read
    REAUTH_REQUIRED = "reauth_required"  # the OAuth2 sign-in needs an operator (revoked grant, consent, refusal)
    NOT_APPLICABLE = "n/a"


@dataclass
class PollerStatus:
    """What the poller thread knows about itself; written by that thread, read by the routes (no lock needed
    for single attribute reads in CPython; the dict snapshot copies under a lock)."""

    state: PollerState = PollerState.STANDBY
    imap: ImapState = ImapState.NOT_APPLICABLE
    mailbox: str | None = None
    uidvalidity: int | None = None
    last_uid: int | None = None
    idle: bool = False
    last_cycle_at: float | None = None
    last_success_at: float | None = None
    last_error_at: float | None = None
    last_error: str | None = None
    consecutive_errors: int = 0
    # Progress figures of the last successful cycle (issue 15's stall rule): the highest UID the cycle's search saw,
    # how many UIDs wait past the checkpoint, the retry set's size, when the checkpoint last moved.
    server_uid_max: int | None = None
    waiting: int = 0
    retry_set: int = 0
    checkpoint_moved_at: float | None = None
    # How the mailbox signs in: password | oauth2; with oauth2 its provider, its session's token expiry, last refresh.
    auth_method: str = "password"
    oauth_provider: str | None = None
    token_expires_at: float | None = None
    last_refresh_at: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def update(self, **changes: Any) -> None:
        with self._lock:
            for key, value in changes.items():
                setattr(self, key, value)

    def error(self, message: str, imap_state: ImapState | None = None) -> None:
        with self._lock:
            self.last_error_at = time.time()
            self.last_error = message
            self.consecutive_errors += 1
            self.state = PollerState.BACKOFF
            if imap_state:
                self.imap = imap_state

    def snapshot(self) -> dict:
        with self._lock:
            return {
                "state": self.state,
                "imap": self.imap,
                "mailbox": self.mailbox,
                "uidvalidity": self.uidvalidity,
                "last_uid": self.last_uid,
                "idle": self.idle,
                "last_cycle_at": iso_utc(self.last_cycle_at),
                "last_success_at": iso_utc(self.last_success_at),
                "last_success_epoch": self.last_success_at,
                "last_error": ({"at": iso_utc(self.last_error_at), "message": self.last_error}
                               if self.last_error else None),
                "consecutive_errors": self.consecutive_errors,
                "server_uid_max": self.server_uid_max,
                "waiting": self.waiting,
                "retry_set": self.retry_set,
                "checkpoint_moved_at": iso_utc(self.checkpoint_moved_at),
                "checkpoint_moved_epoch": self.checkpoint_moved_at,
                "auth_method": self.auth_method,
                "oauth_provider": self.oauth_provider,
                "token_expires_at": iso_utc(self.token_expires_at),
                "last_refresh_at": iso_utc(self.last_refresh_at),
            }


@dataclass(frozen=True)
class InstanceInfo:
    host: str
    pid: int
    started_at: float
    version: str
    worker: int | None = None

    def as_dict(self) -> dict:
        return {"host": self.host, "pid": self.pid, "worker": self.worker,
                "uptime_s": round(time.time() - self.started_at, 1), "version": self.version}


class ServiceRuntime:
    """Everything one worker process owns. Adapters are built on first use, never at import."""

    def __init__(self, settings: Settings, config: ServiceConfig | None = None) -> None:
        self.settings = settings
        # The typed values every adapter takes (one mailbox and one target today), built once from the settings
        # unless given (tests of several mailbox values).
        if config is None:
            from config_file import service_config

            config = service_config(settings, os.environ)
        self.config = config
        self.version = settings.render_git_commit or PACKAGE_VERSION
        self.instance = InstanceInfo(socket.gethostname(), os.getpid(), time.time(), self.version)
        self.poller_status = PollerStatus(
            mailbox=self.config.mailboxes[0].folder if self.config.mailboxes else settings.imap_mailbox)
        self.poller_statuses: dict[str, PollerStatus] = {}  # per mailbox id, once the background is built
        self._lock = threading.RLock()
        self._store: StateStore | None = None
        self._redis: redis.Redis | None = None
        self._offloader: Any = None  # NullOffloader | R2Offloader, behind a ResolvingOffloader when links resolve
        self._sender: WebhookSender | None = None
        self.background: BackgroundServices | None = None  # once started
        self.background_failed = False

    # --- the mailbox and target the background work uses (the first, and today only, of each) --------------

    @property
    def mailbox(self) -> MailboxConfig:
        if not self.config.mailboxes:
            raise LookupError("no mailbox is configured (IMAP_SERVER, EMAIL_ADDRESS, EMAIL_PASSWORD)")
        return self.config.mailboxes[0]

    @property
    def target(self) -> TargetConfig:
        if not self.config.targets:
            from services.webhook import WebhookError

            raise WebhookError("WEBHOOK_URL is not set")
        return self.config.targets[0]

    # --- lazily built adapters ----------------------------------------------------------------------------

    @property
    def redis_client(self):
        if not self.settings.redis_url:
            return None
        with self._lock:
            if self._redis is None:
                from services.redis_client import make_redis_client

                self._redis = make_redis_client(self.settings)
            return self._redis

    @property
    def store(self):
        with self._lock:
            if self._store is None:
                from services.state_store import open_state_store

                self._store = open_state_store(self.settings, redis_client=self.redis_client)
            return self._store

    @property
    def offloader(self):
        with self._lock:
            if self._offloader is None:
                from services.r2_offload import build_offloader

                offloader: Any = build_offloader(self.config.r2, self.store, metrics=self.store)
                if self.resolves_links:
                    from services.link_resolution import LinkResolution, ResolvingOffloader

                    offloader = ResolvingOffloader(LinkResolution(self.config.providers, self.store, self.store),
                                                   offloader, budget_seconds=self.enrich_budget_seconds or 0.0,
                                                   max_email_bytes=self.config.r2.email_max_bytes)
                self._offloader = offloader
            return self._offloader

    @property
    def resolves_links(self) -> bool:
        """Whether any provider's links are resolved (its resolution is on and it has a resolver)."""
        from services.resolvers import resolver_for

        return any(provider.resolve and resolver_for(provider.id) is not None for provider in self.config.providers)

    @property
    def enrich_budget_seconds(self) -> float | None:
        """How long one email's enrichment may take in the background: R2_EMAIL_BUDGET_SECONDS with R2 on, else the
        longest provider budget when links are resolved; None when there is no enrichment at all."""
        if self.config.r2.fetch_enabled:
            return self.config.r2.email_budget_seconds
        if self.resolves_links:
            return max(provider.budget_seconds for provider in self.config.providers if provider.resolve)
        return None

    @property
    def sender(self):
        with self._lock:
            if self._sender is None:
                from services.webhook import WebhookSender

                self._sender = WebhookSender(self.target, version=self.version)
            return self._sender

    # --- background lifecycle -----------------------------------------------------------------------------

    @property
    def background_mode(self) -> str:
        """not_configured | disabled | enabled."""
        if not self.settings.enable_background_tasks:
            return "disabled"
        if not self.config.mailboxes:
            return "not_configured"
        return "enabled"

    def start_background(self, worker_id: int | None = None) -> None:
        # Gunicorn forks after create_app (with --preload even the import happened in the master): re-read the pid.
        self.instance = InstanceInfo(self.instance.host, os.getpid(), self.instance.started_at, self.version,
                                     worker_id if worker_id is not None else self.instance.worker)
        mode = self.background_mode
        if mode == "disabled":
            logger.info("BG_POLLER: background tasks disabled (ENABLE_BACKGROUND_TASKS=false)")
            return
        if mode == "not_configured":
            logger.info("BG_POLLER: mailbox not configured (IMAP_SERVER, EMAIL_ADDRESS, EMAIL_PASSWORD); web only")
            return
        with self._lock:
            if self.background is not None:
                return
            try:
                background = self._build_background()
                background.start()
            except Exception:
                # E.g. the state directory is not writable. /health answers 503 "down" so Render restarts us.
                logger.critical("BG_POLLER: background tasks could not start", exc_info=True)
                self.background_failed = True
                return
            self.background = background

    def _build_background(self) -> BackgroundServices:
        """The background threads, each given exactly what it uses (opens the store and makes the leases: one per
        mailbox, ``background.lease.lease_key``)."""
        from background.health import HealthTimings
        from background.lease import LeaseKeeper, make_lease
        from background.observer import OBSERVE_INTERVAL_SECONDS, StatusObserver
        from background.services import BackgroundServices, MailboxLease
        from services.webhook import WebhookSender

        settings = self.settings
        store = self.store
        if not self.config.targets:
            self.target  # noqa: B018 - raises WebhookError: a configured mailbox needs a target
        membership = None
        if settings.redis_url:
            from background.membership import Membership

            membership = Membership(self.redis_client, settings.redis_lock_ttl_seconds)
        leases = [make_lease(settings, self.redis_client, mailbox.id) for mailbox in self.config.mailboxes]
        mailboxes = []
        for index, (mailbox, lease) in enumerate(zip(self.config.mailboxes, leases, strict=True)):
            status = self.poller_status if index == 0 else PollerStatus(mailbox=mailbox.folder)
            self.poller_statuses[mailbox.id] = status
            policy = self._spread_policy(membership, mailbox.id, lease, leases) if membership else None
            keeper = LeaseKeeper(lease, retry_interval=settings.lease_retry_interval, policy=policy)
            mailboxes.append(MailboxLease(mailbox, lease, keeper, status))
        observer = StatusObserver(
            lease=mailboxes[0].lease, store=store, poller_status=self.poller_status, instance=lambda: self.instance,
            timings=HealthTimings.from_settings(settings, observe_interval=OBSERVE_INTERVAL_SECONDS),
            heartbeat_interval_seconds=settings.heartbeat_interval_seconds, config=self.config,
            extra_chores=self._alert_chores(store, lambda: observer.view))
        return BackgroundServices(
            mailboxes=mailboxes, targets=self.config.targets, store=store, observer=observer,
            offloader_factory=lambda: self.offloader,
            sender_factory=lambda target: WebhookSender(target, version=self.version),
            enrich_budget_seconds=self.enrich_budget_seconds,
            routes=self.config.routes, membership=membership, rate_limiters=self._rate_limiters(),
            sign_in_factory=self._sign_in_factory(store), ops_target=self.config.ops)

    def _alert_chores(self, store: Any, view: Callable[[], dict]) -> list[Any]:
        """With OPS_WEBHOOK_URL, the alerts' evaluator as a chore of the first mailbox's holder (the process that
        runs the cluster's chores: ``background.alerts`` says why one evaluator at a time, and why an overlap at a
        hand-over is harmless); none otherwise."""
        if self.config.ops is None:
            return []
        from background.alerts import EVALUATE_INTERVAL_SECONDS, AlertEvaluator
        from background.housekeeping import Chore

        evaluator = AlertEvaluator(store, mailbox_id=self.config.mailboxes[0].id, view=view,
                                   target_ids=[target.id for target in self.config.targets])

        def evaluate() -> None:
            evaluator.evaluate_once()

        return [Chore("alerts", EVALUATE_INTERVAL_SECONDS, evaluate)]

    def _sign_in_factory(self, store: Any) -> Callable[[MailboxConfig], Any]:
        """Each OAuth2 mailbox's sign-in (its provider, and one token cache per process, so mailboxes of one app
        share its token); None for a password mailbox. The OAuth libraries load only when a mailbox uses them."""
        settings = self.settings
        cache: list[Any] = []

        def sign_in(mailbox: MailboxConfig) -> Any:
            if not isinstance(mailbox.credentials, OAuth2Credentials):
                return None
            from services.oauth import TokenCache
            from services.oauth.sign_in import sign_in_for

            if not cache:
                cache.append(TokenCache())
            return sign_in_for(mailbox.credentials, user=mailbox.user, mailbox_id=mailbox.id, store=store,
                               cache=cache[0], encryption_key=settings.state_encryption_key,
                               reauth_retry_seconds=settings.oauth_reauth_retry_seconds)

        return sign_in

    def _rate_limiters(self) -> dict[str, Any]:
        """One token bucket per rate-limited target: cluster-wide in Redis, else this process's."""
        from services.rate_limit import LocalTokenBucket, RedisTokenBucket

        limiters: dict[str, Any] = {}
        for target in self.config.targets:
            rate = target.rate_limit
            if rate is None:
                continue
            limiters[target.id] = (RedisTokenBucket(self.redis_client, target.id, rate) if self.settings.redis_url
                                   else LocalTokenBucket(rate))
        return limiters

    def _spread_policy(self, membership, mailbox_id: str, lease, leases: list) -> Any:
        """Which mailboxes this process tries and hands over (``background.membership``)."""
        from background.membership import SpreadPolicy

        settings = self.settings
        store = self.store

        def lease_is_free() -> bool:
            return not lease.redis.exists(lease.key)

        return SpreadPolicy(
            membership, mailbox_id, lease_is_free=lease_is_free,
            held_count=lambda: sum(1 for other in leases if other.is_held),
            max_held=settings.max_mailboxes_per_process,
            grace_seconds=settings.redis_lock_ttl_seconds + settings.lease_retry_interval,
            on_move=lambda moved: store.incr("mailbox_moves", labels={"mailbox": moved}))

    def stop_background(self, timeout: float) -> None:
        with self._lock:
            background, self.background = self.background, None
        if background is not None:
            background.stop(timeout)
        for closer in (self._sender, self._offloader, self._store):
            close = getattr(closer, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:  # shutting down: nothing more useful to do than log
                    logger.warning("BG_POLLER: error while closing %s", type(closer).__name__, exc_info=True)

    # --- views for the routes -----------------------------------------------------------------------------

    def status_source(self) -> StatusSource:
        """Everything the status routes read about this worker, and nothing else (``create_app`` hands it over)."""
        from background.status_source import StatusSource

        settings = self.settings
        return StatusSource(
            version=self.version, status_api_token=settings.status_api_token, background_mode=self.background_mode,
            lease_backend="redis" if settings.redis_url else "file", shared_redis=bool(settings.redis_url),
            mailbox_folder=settings.imap_mailbox, open_store=lambda: self.store,
            instance=lambda: self.instance.as_dict(), poller_snapshot=lambda: self.poller_status.snapshot(),
            lease_snapshot=self.lease_snapshot, cluster_view=self.cluster_view, threads_dead=self.threads_dead,
            mailbox_ids=tuple(mailbox.id for mailbox in self.config.mailboxes), targets=self.config.delivered_targets)

    def operator_source(self) -> OperatorSource:
        """What the operator API and the login read about this worker (``create_app`` hands it over)."""
        from background.operator_actions import DryRunPolicy, OperatorSource
        from services.webhook import WebhookSender

        settings = self.settings
        return OperatorSource(
            status_api_token=settings.status_api_token, admin_api_token=settings.admin_api_token,
            session_secret=settings.session_secret, state_encryption_key=settings.state_encryption_key,
            open_store=lambda: self.store, targets=self.config.targets,
            mailboxes=self.config.mailboxes,
            sender_factory=lambda target: WebhookSender(target, version=self.version),
            default_dry_run=DryRunPolicy(sender_allowlist=tuple(settings.sender_allowlist),
                                         allow_without_links=settings.allow_webhook_without_links,
                                         max_links=settings.max_links_per_email,
                                         sender_auth=SenderAuth.from_settings(settings)))

    def lease_snapshot(self) -> dict | None:
        background = self.background
        return background.lease_snapshot() if background is not None else None

    def cluster_view(self) -> dict | None:
        background = self.background
        return background.cluster_view() if background is not None else None

    def threads_dead(self) -> bool:
        background = self.background
        return self.background_failed or (background is not None and background.dead())

    def ingest_saved(self, parsed, received_at: str):
        """``process-email`` without --dry-run: ingest one saved email (mailbox ``default``) for its first attempt
        now; returns the ``background.ingest.Ingested``."""
        from background.ingest import Ingest, IngestPolicy

        settings = self.settings
        policy = IngestPolicy.saved_email(settings.sender_allowlist, settings.allow_webhook_without_links,
                                          settings.max_links_per_email, SenderAuth.from_settings(settings))
        ingest = Ingest(self.store, policy, (self.target.id,), offloader_factory=lambda: self.offloader)
        return ingest.ingest(parsed, received_at=received_at, attempt_now=True)

    def deliver_now(self, ingested) -> dict:
        """The first attempt of what ``ingest_saved`` queued."""
        from background.delivery import deliver_now

        return deliver_now(self.store, self.target, self.sender, ingested)
