"""The service's configuration as typed values: which mailboxes to watch, which targets to deliver to, R2.

``Settings`` (settings.py) is the flat, validated reading of the environment; ``ServiceConfig.from_settings``
turns it once into small frozen values, and each adapter takes only the value it needs (``MailboxClient`` a
``MailboxConfig``, ``WebhookSender`` a ``TargetConfig``, the R2 offloader an ``R2Config``). Today the environment
describes at most one mailbox and one target, both with the id ``default``; the shapes are tuples so that a later
configuration file can describe several without changing the adapters. Pure: no I/O, at import or later.
Secrets (passwords, the webhook URL and secret, tokens, keys) are left out of every ``repr``.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, TypeVar

if TYPE_CHECKING:
    from settings import Settings

_T = TypeVar("_T", "MailboxConfig", "TargetConfig")

DEFAULT_ID = "default"
ID_PATTERN = re.compile(r"[a-z0-9-]{1,32}")
# Delivery threads per target for the lease holder: attempts overlap a slow receiver's round trips.
DEFAULT_DELIVERY_CONCURRENCY = 4
DEFAULT_RETRY_SCHEDULE = (5.0, 30.0, 120.0, 600.0, 1800.0, 3600.0)
# Delivery links kept per email (MAX_LINKS_PER_EMAIL): bounds the R2 Worker calls and the body one email can cost.
DEFAULT_MAX_LINKS_PER_EMAIL = 50


def check_id(kind: str, value: str) -> str:
    """``value`` if it is a valid mailbox/target id (``[a-z0-9-]{1,32}``), else ``ValueError`` naming ``kind``."""
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        raise ValueError(f"{kind} id {value!r} must be 1-32 characters of a-z, 0-9 and -")
    return value


class TlsMode(enum.Enum):
    """How the IMAP connection is secured: implicit TLS (IMAPS), a STARTTLS upgrade, or none (local tests)."""

    IMPLICIT = "implicit"
    STARTTLS = "starttls"
    NONE = "none"


@dataclass(frozen=True)
class PasswordCredentials:
    """A login with a password (the only kind today; OAuth2 credentials will be a sibling value)."""

    password: str = field(repr=False)


@dataclass(frozen=True)
class SenderAuth:
    """A mailbox's sender authentication: an allow-listed From address counts only when the Authentication-Results
    header (RFC 8601) of ``authserv_id`` vouches for its domain (the topmost header with that id: the receiving
    server adds its own above whatever a sender wrote). ``TOPMOST`` trusts the topmost header whatever its id
    (Microsoft 365 writes none). The rules are in ``email_processing.sender``."""

    authserv_id: str

    TOPMOST: ClassVar[str] = "topmost"

    @property
    def topmost(self) -> bool:
        return self.authserv_id == self.TOPMOST

    @classmethod
    def from_settings(cls, settings: Settings) -> SenderAuth | None:
        """Mailbox ``default``'s: SENDER_REQUIRE_AUTHENTICATED with SENDER_AUTHSERV_ID, or None (off)."""
        if not settings.sender_require_authenticated or not settings.sender_authserv_id:
            return None
        return cls(settings.sender_authserv_id)


@dataclass(frozen=True)
class MailboxConfig:
    """One mailbox to watch: where it is, how to log in, and what the poller does with its mail."""

    id: str
    server: str
    user: str
    credentials: PasswordCredentials
    port: int = 993
    tls: TlsMode = TlsMode.IMPLICIT
    ca_file: str | None = None
    folder: str = "INBOX"
    sender_allowlist: tuple[str, ...] = ()
    sender_auth: SenderAuth | None = None  # None: an allow-listed From address counts as it is
    poll_interval_seconds: float = 30.0
    use_idle: bool = True
    first_start_max_age_hours: float = 72.0
    mark_as_read: bool = True
    timeout_seconds: float = 30.0
    reconnect_max_seconds: float = 60.0
    allow_without_links: bool = False
    fetch_max_failures: int = 3   # failed fetches of one message before it is parked (fetch_failed)
    max_links_per_email: int = DEFAULT_MAX_LINKS_PER_EMAIL  # the first ones in document order are kept

    def __post_init__(self) -> None:
        check_id("mailbox", self.id)

    @property
    def state_key(self) -> str:
        """The state store's name for this mailbox's checkpoints and flag requests: the folder for mailbox
        ``default`` (the keys every earlier release wrote, unchanged), ``<id>:<folder>`` for any other mailbox, so
        two mailboxes with the same folder name never share state."""
        return self.folder if self.id == DEFAULT_ID else f"{self.id}:{self.folder}"

    @property
    def password(self) -> str | None:
        """The password of a password login (None for other kinds of credentials)."""
        return self.credentials.password if isinstance(self.credentials, PasswordCredentials) else None

    @classmethod
    def from_settings(cls, settings: Settings, id: str = DEFAULT_ID) -> MailboxConfig:
        """The mailbox the IMAP_* / EMAIL_* variables describe (the caller checks ``mailbox_configured``)."""
        if settings.imap_use_ssl:
            tls = TlsMode.IMPLICIT
        elif settings.imap_starttls:
            tls = TlsMode.STARTTLS
        else:
            tls = TlsMode.NONE
        return cls(id=id, server=settings.imap_server or "", user=settings.email_address or "",
                   credentials=PasswordCredentials(settings.email_password or ""), port=settings.imap_port,
                   tls=tls, ca_file=settings.imap_ca_file or None, folder=settings.imap_mailbox,
                   sender_allowlist=settings.sender_allowlist, sender_auth=SenderAuth.from_settings(settings),
                   poll_interval_seconds=settings.email_polling_interval_seconds,
                   use_idle=settings.imap_use_idle, first_start_max_age_hours=settings.first_start_max_age_hours,
                   mark_as_read=settings.mark_as_read, timeout_seconds=settings.imap_timeout_seconds,
                   reconnect_max_seconds=settings.imap_reconnect_max_seconds,
                   fetch_max_failures=settings.imap_fetch_max_failures,
                   allow_without_links=settings.allow_webhook_without_links,
                   max_links_per_email=settings.max_links_per_email)


@dataclass(frozen=True)
class RetryPolicy:
    """When a failing delivery is tried again (``schedule``, the last delay repeats) and for how long (``hours``)."""

    schedule: tuple[float, ...] = DEFAULT_RETRY_SCHEDULE
    hours: float = 24.0

    def __post_init__(self) -> None:
        if not self.schedule or any(not delay > 0 for delay in self.schedule):
            raise ValueError("a retry schedule needs at least one delay, every delay > 0")
        if not self.hours > 0:
            raise ValueError("retry hours must be > 0")

    def deadline(self, first_attempt_at: float) -> float:
        """Epoch seconds after which a failing item stops being retried and becomes a dead letter."""
        return first_attempt_at + self.hours * 3600.0

    def base_delay(self, attempt_number: int) -> float:
        """The scheduled delay after failed attempt ``attempt_number`` (1-based; the last entry repeats)."""
        if attempt_number < 1:
            raise ValueError(f"attempt_number must be >= 1, got {attempt_number}")
        return self.schedule[min(attempt_number, len(self.schedule)) - 1]

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(schedule=settings.webhook_retry_schedule, hours=settings.webhook_retry_hours)


@dataclass(frozen=True)
class TargetConfig:
    """One webhook receiver. The URL is a bearer capability and, like the secret and headers, never in a repr."""

    id: str
    url: str = field(repr=False)
    secret: str | None = field(default=None, repr=False)
    # Extra request headers (name, value) sent with every attempt; none can be configured today.
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    timeout_seconds: float = 30.0
    concurrency: int = DEFAULT_DELIVERY_CONCURRENCY
    retry: RetryPolicy = RetryPolicy()
    allow_insecure: bool = False
    ca_file: str | None = None

    def __post_init__(self) -> None:
        check_id("target", self.id)
        if self.concurrency < 1:
            raise ValueError("target concurrency must be >= 1")

    @classmethod
    def from_settings(cls, settings: Settings, id: str = DEFAULT_ID) -> TargetConfig:
        """The target the WEBHOOK_* variables describe (the caller checks that WEBHOOK_URL is set)."""
        return cls(id=id, url=settings.webhook_url or "", secret=settings.webhook_secret,
                   timeout_seconds=settings.webhook_timeout_seconds, retry=RetryPolicy.from_settings(settings),
                   allow_insecure=settings.webhook_allow_insecure, ca_file=settings.webhook_ca_file or None)


@dataclass(frozen=True)
class R2Config:
    """The R2 offload through the Worker and the optional presigning of ``r2_url`` (S3 credentials)."""

    fetch_enabled: bool = False
    fetch_endpoint: str | None = None
    allow_insecure: bool = False  # an http:// fetch_endpoint (R2_ALLOW_INSECURE)
    ca_file: str | None = None  # CAs to trust for the Worker's TLS (R2_CA_FILE)
    fetch_token: str | None = field(default=None, repr=False)
    bucket_name: str | None = None
    fetch_timeout_seconds: float = 15.0
    fetch_timeout_folder_seconds: float = 120.0
    circuit_failures: int = 5
    circuit_cooldown_seconds: float = 60.0
    retention_hours: float = 24.0
    public_base_url: str | None = None
    account_id: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    presign_ttl_seconds: int = 86400
    s3_allow_insecure: bool = False  # an http:// R2_S3_ENDPOINT_URL (R2_S3_ALLOW_INSECURE)
    # Resolved once by Settings (R2_S3_ENDPOINT_URL, else the account's endpoint), so the rule lives in one place.
    s3_endpoint: str | None = None
    presign_enabled: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> R2Config:
        return cls(fetch_enabled=settings.r2_fetch_enabled, fetch_endpoint=settings.r2_fetch_endpoint,
                   allow_insecure=settings.r2_allow_insecure, ca_file=settings.r2_ca_file or None,
                   s3_allow_insecure=settings.r2_s3_allow_insecure,
                   fetch_token=settings.r2_fetch_token, bucket_name=settings.r2_bucket_name,
                   fetch_timeout_seconds=settings.r2_fetch_timeout_seconds,
                   fetch_timeout_folder_seconds=settings.r2_fetch_timeout_folder_seconds,
                   circuit_failures=settings.r2_circuit_failures,
                   circuit_cooldown_seconds=settings.r2_circuit_cooldown_seconds,
                   retention_hours=settings.r2_retention_hours, public_base_url=settings.r2_public_base_url,
                   account_id=settings.r2_account_id, access_key_id=settings.r2_access_key_id,
                   secret_access_key=settings.r2_secret_access_key,
                   presign_ttl_seconds=settings.r2_presign_ttl_seconds, s3_endpoint=settings.s3_endpoint,
                   presign_enabled=settings.presign_enabled)


@dataclass(frozen=True)
class ProviderConfig:
    """A file-delivery provider's settings (a slot: none is configurable yet)."""

    id: str

    def __post_init__(self) -> None:
        check_id("provider", self.id)


@dataclass(frozen=True)
class ServiceConfig:
    """Every mailbox, target and provider the service works with, plus R2. Ids are unique per kind."""

    mailboxes: tuple[MailboxConfig, ...] = ()
    targets: tuple[TargetConfig, ...] = ()
    r2: R2Config = R2Config()
    providers: tuple[ProviderConfig, ...] = ()

    def __post_init__(self) -> None:
        for kind, values in (("mailbox", self.mailboxes), ("target", self.targets), ("provider", self.providers)):
            ids = [value.id for value in values]
            duplicates = sorted({value for value in ids if ids.count(value) > 1})
            if duplicates:
                raise ValueError(f"{kind} ids must be unique: {', '.join(duplicates)}")
        keys = [mailbox.state_key for mailbox in self.mailboxes]
        clashes = sorted({key for key in keys if keys.count(key) > 1})
        if clashes:  # only a default folder literally named "<other id>:<its folder>" can do this
            raise ValueError(f"mailboxes would share state under {', '.join(clashes)}: rename the folder or the id")

    @classmethod
    def from_settings(cls, settings: Settings) -> ServiceConfig:
        """One ``default`` mailbox when IMAP_SERVER, EMAIL_ADDRESS and EMAIL_PASSWORD are set, one ``default``
        target when WEBHOOK_URL is set, R2 as configured, no providers."""
        mailboxes = (MailboxConfig.from_settings(settings),) if settings.mailbox_configured else ()
        targets = (TargetConfig.from_settings(settings),) if settings.webhook_url else ()
        return cls(mailboxes=mailboxes, targets=targets, r2=R2Config.from_settings(settings), providers=())

    def mailbox(self, id: str) -> MailboxConfig:
        return _by_id("mailbox", self.mailboxes, id)

    def target(self, id: str) -> TargetConfig:
        return _by_id("target", self.targets, id)


def _by_id(kind: str, values: tuple[_T, ...], id: str) -> _T:
    for value in values:
        if value.id == id:
            return value
    raise KeyError(f"no {kind} with id {id!r}")
