"""The service's configuration as typed values: which mailboxes to watch, which targets to deliver to, R2.

``Settings`` (settings.py) is the flat, validated reading of the environment; ``ServiceConfig.from_settings``
turns it once into small frozen values, and each adapter takes only the value it needs (``MailboxClient`` a
``MailboxConfig``, ``WebhookSender`` a ``TargetConfig``, the R2 offloader an ``R2Config``). Today the environment
describes at most one mailbox and one target, both with the id ``default``; the shapes are tuples so that a later
configuration file can describe several without changing the adapters. Pure: no I/O, at import or later.
Secrets (passwords, the webhook URL and secret, tokens, keys) are left out of every ``repr``.
"""

from __future__ import annotations

import datetime
import enum
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, TypeVar
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from settings import Settings

_T = TypeVar("_T", "MailboxConfig", "TargetConfig")

DEFAULT_ID = "default"
# The reserved target of the operational alerts (OPS_WEBHOOK_URL, ``background.alerts``): no configured target may
# take this id, and no email is ever routed to it.
OPS_TARGET_ID = "ops"
OPS_TARGET_CONCURRENCY = 1   # alerts are few: one delivery thread
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
    """A login with a password (IMAP LOGIN); ``OAuth2Credentials`` is its sibling."""

    password: str = field(repr=False)


class AuthMethod(enum.Enum):
    """How the service signs in to a mailbox: a password (LOGIN), or an OAuth2 access token (SASL)."""

    PASSWORD = "password"
    OAUTH2 = "oauth2"


class SaslMechanism(enum.Enum):
    """The SASL mechanism that carries an OAuth2 access token: Google's and Microsoft's XOAUTH2, or RFC 7628."""

    XOAUTH2 = "XOAUTH2"
    OAUTHBEARER = "OAUTHBEARER"


class OAuthProvider(enum.Enum):
    """Where access tokens come from (README "OAuth2 sign-in")."""

    MICROSOFT_CLIENT_CREDENTIALS = "microsoft_client_credentials"  # app-only, Microsoft 365 (MSAL)
    REFRESH_TOKEN = "refresh_token"                                # delegated, any RFC 6749 provider
    GOOGLE_SERVICE_ACCOUNT = "google_service_account"              # Workspace, domain-wide delegation
    COMMAND = "command"                                            # a vault or token broker prints the token


MICROSOFT_AUTHORITY_HOST = "https://login.microsoftonline.com"
MICROSOFT_IMAP_SCOPE = "https://outlook.office365.com/.default"
GOOGLE_MAIL_SCOPE = "https://mail.google.com/"
DEFAULT_TOKEN_COMMAND_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class OAuth2Credentials:
    """A sign-in with OAuth2: the provider of access tokens and what it needs. Client secrets, refresh tokens and
    the token command are secrets (never in a repr). ``problems()`` holds every rule; both readers (the environment
    and the file) report its findings in their own names."""

    provider: OAuthProvider
    mechanism: SaslMechanism = SaslMechanism.XOAUTH2
    tenant_id: str | None = None
    client_id: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    client_cert_file: str | None = None
    client_key_file: str | None = None
    authority_host: str = MICROSOFT_AUTHORITY_HOST
    token_url: str | None = None
    device_authorization_url: str | None = None
    refresh_token: str | None = field(default=None, repr=False)   # the initial one: a stored newer one wins
    scope: str | None = None
    service_account_file: str | None = None
    token_command: str | None = field(default=None, repr=False)
    token_command_timeout_seconds: float = DEFAULT_TOKEN_COMMAND_TIMEOUT_SECONDS
    ca_file: str | None = None
    allow_insecure: bool = False      # OAUTH_ALLOW_INSECURE: http:// endpoints (local tests only)

    @property
    def effective_scope(self) -> str | None:
        """The scope asked for: the configured one, else the provider's (None: the provider's own default)."""
        if self.scope:
            return self.scope
        return {OAuthProvider.MICROSOFT_CLIENT_CREDENTIALS: MICROSOFT_IMAP_SCOPE,
                OAuthProvider.GOOGLE_SERVICE_ACCOUNT: GOOGLE_MAIL_SCOPE}.get(self.provider)

    @property
    def effective_device_authorization_url(self) -> str | None:
        """RFC 8628's endpoint: the configured one, else derived from the Microsoft authority and tenant."""
        if self.device_authorization_url:
            return self.device_authorization_url
        if self.tenant_id:
            return f"{self.authority_host.rstrip('/')}/{self.tenant_id}/oauth2/v2.0/devicecode"
        return None

    def problems(self) -> list[tuple[str, str]]:
        """Every rule this sign-in breaks, as (key, reason); keys are the file's ``auth`` keys (the environment's
        names are ``OAUTH_<KEY>``). Files are not looked at here (the readers check they exist)."""
        found = [(key, f"required for provider {self.provider.value}")
                 for key in _OAUTH_REQUIRED[self.provider] if not getattr(self, key)]
        if self.provider is OAuthProvider.MICROSOFT_CLIENT_CREDENTIALS:
            found += self._microsoft_credential_problems()
        for key in ("authority_host", "token_url", "device_authorization_url"):
            url = getattr(self, key)
            if url and not url.startswith("https://") and not (self.allow_insecure and url.startswith("http://")):
                found.append((key, "must be https:// (set OAUTH_ALLOW_INSECURE=true for a local identity server)"))
        if not 0 < self.token_command_timeout_seconds <= 300:
            found.append(("token_command_timeout_seconds", "must be > 0 and <= 300"))
        return found

    def _microsoft_credential_problems(self) -> list[tuple[str, str]]:
        has_secret = bool(self.client_secret)
        has_cert = bool(self.client_cert_file or self.client_key_file)
        if has_secret and has_cert:
            return [("client_secret", "give a client secret or a certificate (client_cert_file + client_key_file), "
                                      "not both")]
        if has_cert and not (self.client_cert_file and self.client_key_file):
            missing = "client_key_file" if self.client_cert_file else "client_cert_file"
            return [(missing, "required with a certificate credential (client_cert_file + client_key_file)")]
        if not has_secret and not has_cert:
            return [("client_secret", "required for provider microsoft_client_credentials (or client_cert_file + "
                                      "client_key_file)")]
        return []


# What each provider cannot do without (a refresh token may come later, from ``oauth-login``).
_OAUTH_REQUIRED: dict[OAuthProvider, tuple[str, ...]] = {
    OAuthProvider.MICROSOFT_CLIENT_CREDENTIALS: ("tenant_id", "client_id"),
    OAuthProvider.REFRESH_TOKEN: ("token_url", "client_id"),
    OAuthProvider.GOOGLE_SERVICE_ACCOUNT: ("service_account_file",),
    OAuthProvider.COMMAND: ("token_command",),
}
OAUTH_FILE_KEYS = ("client_cert_file", "client_key_file", "service_account_file", "ca_file")


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
    credentials: PasswordCredentials | OAuth2Credentials
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
    # A server without custom keywords and MARK_AS_READ=false keeps no done mark: polled only when this is true.
    allow_no_server_done_mark: bool = False
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
                   credentials=credentials_from_settings(settings), port=settings.imap_port,
                   tls=tls, ca_file=settings.imap_ca_file or None, folder=settings.imap_mailbox,
                   sender_allowlist=settings.sender_allowlist, sender_auth=SenderAuth.from_settings(settings),
                   poll_interval_seconds=settings.email_polling_interval_seconds,
                   use_idle=settings.imap_use_idle, first_start_max_age_hours=settings.first_start_max_age_hours,
                   mark_as_read=settings.mark_as_read,
                   allow_no_server_done_mark=settings.allow_no_server_done_mark,
                   timeout_seconds=settings.imap_timeout_seconds,
                   reconnect_max_seconds=settings.imap_reconnect_max_seconds,
                   fetch_max_failures=settings.imap_fetch_max_failures,
                   allow_without_links=settings.allow_webhook_without_links,
                   max_links_per_email=settings.max_links_per_email)


def credentials_from_settings(settings: Settings) -> PasswordCredentials | OAuth2Credentials:
    """The sign-in IMAP_AUTH_METHOD and the EMAIL_PASSWORD or OAUTH_* variables describe."""
    if settings.imap_auth_method != AuthMethod.OAUTH2.value:
        return PasswordCredentials(settings.email_password or "")
    return OAuth2Credentials(
        provider=OAuthProvider(settings.oauth_provider), mechanism=SaslMechanism(settings.imap_sasl_mechanism),
        tenant_id=settings.oauth_tenant_id, client_id=settings.oauth_client_id,
        client_secret=settings.oauth_client_secret, client_cert_file=settings.oauth_client_cert_file,
        client_key_file=settings.oauth_client_key_file, authority_host=settings.oauth_authority_host,
        token_url=settings.oauth_token_url, device_authorization_url=settings.oauth_device_authorization_url,
        refresh_token=settings.oauth_refresh_token, scope=settings.oauth_scope,
        service_account_file=settings.oauth_service_account_file, token_command=settings.oauth_token_command,
        token_command_timeout_seconds=settings.oauth_token_command_timeout_seconds, ca_file=settings.oauth_ca_file,
        allow_insecure=settings.oauth_allow_insecure)


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


class TargetProfile(enum.Enum):
    """What kind of receiver a target is. A profile sets defaults only (``PROFILE_DEFAULTS``), never credentials."""

    GENERIC = "generic"
    MAKE = "make"
    N8N = "n8n"
    ZAPIER = "zapier"


@dataclass(frozen=True)
class ProfileDefaults:
    """A profile's defaults: the body cap, which HTTP statuses are retried besides transport errors (None: today's
    classification), and a cluster-wide rate limit (None: none)."""

    max_body_bytes: int
    retried_statuses: frozenset[int] | None = None
    rate_per_second: float | None = None


_MB = 1_000_000
PROFILE_DEFAULTS: dict[TargetProfile, ProfileDefaults] = {
    TargetProfile.GENERIC: ProfileDefaults(max_body_bytes=16 * _MB),
    TargetProfile.MAKE: ProfileDefaults(max_body_bytes=5 * _MB, retried_statuses=frozenset({429, *range(500, 600)})),
    TargetProfile.N8N: ProfileDefaults(max_body_bytes=16 * _MB),
    TargetProfile.ZAPIER: ProfileDefaults(max_body_bytes=10 * _MB, rate_per_second=30.0),
}

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True)
class DeliveryWindow:
    """When a target accepts deliveries: on ``days`` (0 = Monday) from ``opens`` to ``closes`` local time in
    ``timezone`` (an IANA name; ``opens`` > ``closes`` spans midnight, the night belonging to the day it starts on),
    never on ``closed_dates`` (local dates). Items outside the window are held, not failed."""

    timezone: str
    days: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6)
    opens: datetime.time = datetime.time(0, 0)
    closes: datetime.time = datetime.time(0, 0)   # equal to opens: the whole day
    closed_dates: tuple[datetime.date, ...] = ()

    def __post_init__(self) -> None:
        if not self.days or any(day not in range(7) for day in self.days):
            raise ValueError("window days must be weekdays 0-6 (mon-sun), at least one")


@dataclass(frozen=True)
class BasicAuth:
    user: str
    password: str = field(repr=False)


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
    profile: TargetProfile = TargetProfile.GENERIC
    basic_auth: BasicAuth | None = field(default=None, repr=False)
    max_body_bytes: int | None = None          # None: the profile's
    rate_per_second: float | None = None       # None: the profile's (a cluster-wide token bucket)
    window: DeliveryWindow | None = None       # None: always open

    def __post_init__(self) -> None:
        check_id("target", self.id)
        if self.concurrency < 1:
            raise ValueError("target concurrency must be >= 1")
        if self.max_body_bytes is not None and self.max_body_bytes < 1024:
            raise ValueError("target max_body_bytes must be >= 1024")
        if self.rate_per_second is not None and not self.rate_per_second > 0:
            raise ValueError("target rate_per_second must be > 0")

    @property
    def defaults(self) -> ProfileDefaults:
        return PROFILE_DEFAULTS[self.profile]

    @property
    def body_cap(self) -> int:
        """The largest body this target is ever sent, in bytes."""
        return self.max_body_bytes if self.max_body_bytes is not None else self.defaults.max_body_bytes

    @property
    def rate_limit(self) -> float | None:
        return self.rate_per_second if self.rate_per_second is not None else self.defaults.rate_per_second

    @classmethod
    def from_settings(cls, settings: Settings, id: str = DEFAULT_ID) -> TargetConfig:
        """The target the WEBHOOK_* variables describe (the caller checks that WEBHOOK_URL is set)."""
        return cls(id=id, url=settings.webhook_url or "", secret=settings.webhook_secret,
                   timeout_seconds=settings.webhook_timeout_seconds, retry=RetryPolicy.from_settings(settings),
                   allow_insecure=settings.webhook_allow_insecure, ca_file=settings.webhook_ca_file or None)

    @classmethod
    def ops_from_settings(cls, settings: Settings) -> TargetConfig | None:
        """The reserved target ``ops`` the OPS_WEBHOOK_* variables describe (None without OPS_WEBHOOK_URL): signed
        with OPS_WEBHOOK_SECRET, retried on the WEBHOOK_RETRY_* schedule like any target."""
        if not settings.ops_webhook_url:
            return None
        return cls(id=OPS_TARGET_ID, url=settings.ops_webhook_url, secret=settings.ops_webhook_secret,
                   timeout_seconds=settings.webhook_timeout_seconds, retry=RetryPolicy.from_settings(settings),
                   allow_insecure=settings.ops_webhook_allow_insecure, ca_file=settings.ops_webhook_ca_file or None,
                   concurrency=OPS_TARGET_CONCURRENCY)


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
    email_budget_seconds: float = 130.0  # one email's R2 copies, in the background (R2_EMAIL_BUDGET_SECONDS)
    circuit_failures: int = 5
    circuit_cooldown_seconds: float = 60.0
    retention_hours: float = 24.0
    max_bytes: int = 2 * 1024 ** 3  # the largest copy asked of the Worker (R2_MAX_BYTES)
    email_max_bytes: int = 20 * 1024 ** 3  # the most bytes copied for one email (R2_EMAIL_MAX_BYTES)
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
                   email_budget_seconds=settings.r2_email_budget_seconds,
                   circuit_failures=settings.r2_circuit_failures,
                   circuit_cooldown_seconds=settings.r2_circuit_cooldown_seconds,
                   retention_hours=settings.r2_retention_hours, max_bytes=settings.r2_max_bytes,
                   email_max_bytes=settings.r2_email_max_bytes,
                   public_base_url=settings.r2_public_base_url,
                   account_id=settings.r2_account_id, access_key_id=settings.r2_access_key_id,
                   secret_access_key=settings.r2_secret_access_key,
                   presign_ttl_seconds=settings.r2_presign_ttl_seconds, s3_endpoint=settings.s3_endpoint,
                   presign_enabled=settings.presign_enabled)


@dataclass(frozen=True)
class ProviderEndpoint:
    """An outside base URL a provider's resolver calls (a setting whose default is the real one; tests point it at
    127.0.0.1), with its TLS settings."""

    base_url: str
    allow_insecure: bool = False   # an http:// base (local fakes only)
    ca_file: str | None = None     # CAs to trust instead of the bundled store
    # The real endpoint this base stands for (the setting's default): a URL a resolver got on ``base_url`` is
    # emitted and copied on this origin, so a local fake of the API still yields the provider's own URLs.
    public_url: str | None = None

    def public_form(self, url: str) -> str:
        """``url`` with this base's origin replaced by the public one (unchanged when it is not on the base)."""
        if not self.public_url or self.public_url == self.base_url:
            return url
        base, public = _origin_of(self.base_url), _origin_of(self.public_url)
        if base and public and (url == base or url.startswith(base + "/") or url.startswith(base + "?")):
            return public + url[len(base):]
        return url

    def __post_init__(self) -> None:
        if not self.base_url.startswith("https://") and not (self.allow_insecure
                                                             and self.base_url.startswith("http://")):
            raise ValueError("must be https:// (allow_insecure: true for a local fake)")


@dataclass(frozen=True)
class ProviderConfig:
    """One file-delivery provider's settings (issue 19): whether its links are resolved, where its resolver
    asks, and its bounds. ``id``: the registry's name (``dropbox``, ``swisstransfer``…). ``resolve_tracking_links``:
    Dropbox only (follow ``/l/`` notification links)."""

    id: str
    resolve: bool = True
    endpoint: ProviderEndpoint | None = None
    api_key: str | None = field(default=None, repr=False)
    resolve_tracking_links: bool = True
    timeout_seconds: float = 10.0        # one call (RESOLVE_TIMEOUT_SECONDS)
    budget_seconds: float = 30.0         # one email's links at this provider (RESOLVE_BUDGET_SECONDS)
    max_files: int = 100                 # MAX_FILES_PER_LINK
    circuit_failures: int = 5
    circuit_cooldown_seconds: float = 60.0

    def __post_init__(self) -> None:
        check_id("provider", self.id)

    @classmethod
    def all_from_settings(cls, settings: Settings) -> tuple[ProviderConfig, ...]:
        """One per registered provider, in the registry's order, from the environment (and the defaults)."""
        from email_processing.providers import PROVIDERS

        return tuple(cls.from_settings(settings, provider.name) for provider in PROVIDERS)

    @classmethod
    def from_settings(cls, settings: Settings, provider: str) -> ProviderConfig:
        endpoint = None
        prefix = PROVIDER_ENDPOINT_SETTINGS.get(provider)
        if prefix is not None:
            base_attr, name = prefix
            endpoint = ProviderEndpoint(getattr(settings, base_attr),
                                        allow_insecure=getattr(settings, f"{name}_allow_insecure"),
                                        ca_file=getattr(settings, f"{name}_ca_file") or None,
                                        public_url=_spec_default(base_attr))
        resolve = {"wetransfer": settings.resolve_wetransfer,
                   "fromsmash": bool(settings.smash_api_key)}.get(provider, True)
        return cls(provider, resolve=resolve, endpoint=endpoint,
                   api_key=settings.smash_api_key if provider == "fromsmash" else None,
                   resolve_tracking_links=settings.resolve_dropbox_tracking_links,
                   timeout_seconds=settings.resolve_timeout_seconds, budget_seconds=settings.resolve_budget_seconds,
                   max_files=settings.max_files_per_link, circuit_failures=settings.resolve_circuit_failures,
                   circuit_cooldown_seconds=settings.resolve_circuit_cooldown_seconds)


def _origin_of(url: str) -> str | None:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else None


def _spec_default(attr: str) -> str | None:
    from settings import SPECS

    return next((spec.default for spec in SPECS if spec.attr == attr), None)


# The environment's base URL of each provider that has one: (its Settings attribute, the prefix of its
# ``*_allow_insecure`` / ``*_ca_file`` twins).
PROVIDER_ENDPOINT_SETTINGS: dict[str, tuple[str, str]] = {
    "swisstransfer": ("swisstransfer_api_base", "swisstransfer"),
    "fromsmash": ("smash_api_base", "smash"),
    "wetransfer": ("wetransfer_api_base", "wetransfer"),
    "gdrive": ("gdrive_download_base", "gdrive"),
    "dropbox": ("dropbox_link_base", "dropbox"),
    "pcloud": ("pcloud_api_base", "pcloud"),
}


DROP = "drop"  # a route's ``to: drop``


@dataclass(frozen=True)
class RouteMatch:
    """What a route's ``match`` asks; every key given must hold (AND), any entry of a list may (OR). An empty
    tuple / None means the key was not given. ``senders``: addresses or ``@domain``; ``subject``: a regular
    expression searched in the decoded subject (cut to 998 characters); ``providers``: any link of one of them;
    ``has_links``: None and True match emails with links only, False emails without links only (an email
    without links that no route takes is skipped ``no_delivery_links``, one with links ``no_route``)."""

    mailboxes: tuple[str, ...] = ()
    senders: tuple[str, ...] = ()
    subject: str | None = None
    providers: tuple[str, ...] = ()
    has_links: bool | None = None

    def __post_init__(self) -> None:
        if self.subject is not None:
            re.compile(self.subject)  # re.error (a ValueError) for a bad pattern


@dataclass(frozen=True)
class RouteConfig:
    """One routing rule: emails that ``match`` go to the targets ``to`` (fan-out), or are skipped (``drop``,
    reason ``route_drop``). Routes are tried in order; the first that matches wins unless it says ``continue``."""

    match: RouteMatch = RouteMatch()
    to: tuple[str, ...] = ()
    drop: bool = False
    continue_: bool = False

    def __post_init__(self) -> None:
        if self.drop == bool(self.to):
            raise ValueError("a route sends to one or more targets or drops, not both and not neither")


@dataclass(frozen=True)
class ServiceConfig:
    """Every mailbox, target and provider the service works with, plus R2. Ids are unique per kind."""

    mailboxes: tuple[MailboxConfig, ...] = ()
    targets: tuple[TargetConfig, ...] = ()
    r2: R2Config = R2Config()
    providers: tuple[ProviderConfig, ...] = ()
    # Ordered; empty: every accepted email goes to every target (the environment form: one route to ``default``).
    routes: tuple[RouteConfig, ...] = ()
    # The reserved alert target (OPS_WEBHOOK_URL), delivered like a target but never in ``targets``: no email is
    # routed to it. None: alerts are off.
    ops: TargetConfig | None = None

    def __post_init__(self) -> None:
        _check_ops_target(self.targets, self.ops)
        for kind, values in (("mailbox", self.mailboxes), ("target", self.targets), ("provider", self.providers)):
            ids = [value.id for value in values]
            duplicates = sorted({value for value in ids if ids.count(value) > 1})
            if duplicates:
                raise ValueError(f"{kind} ids must be unique: {', '.join(duplicates)}")
        keys = [mailbox.state_key for mailbox in self.mailboxes]
        clashes = sorted({key for key in keys if keys.count(key) > 1})
        if clashes:  # only a default folder literally named "<other id>:<its folder>" can do this
            raise ValueError(f"mailboxes would share state under {', '.join(clashes)}: rename the folder or the id")
        mailbox_ids = {mailbox.id for mailbox in self.mailboxes}
        target_ids = {target.id for target in self.targets}
        for index, route in enumerate(self.routes):
            for target_id in route.to:
                if target_id not in target_ids:
                    raise ValueError(f"routes[{index}] sends to unknown target {target_id!r}")
            for mailbox_id in route.match.mailboxes:
                if mailbox_id not in mailbox_ids:
                    raise ValueError(f"routes[{index}] matches unknown mailbox {mailbox_id!r}")

    @classmethod
    def from_settings(cls, settings: Settings) -> ServiceConfig:
        """One ``default`` mailbox when IMAP_SERVER, EMAIL_ADDRESS and EMAIL_PASSWORD are set, one ``default``
        target when WEBHOOK_URL is set (and the route sending every accepted email to it: emails with links, and
        with ALLOW_CUSTOM_WEBHOOK_WITHOUT_LINKS those without), R2 and every provider as configured."""
        mailboxes = (MailboxConfig.from_settings(settings),) if settings.mailbox_configured else ()
        targets = (TargetConfig.from_settings(settings),) if settings.webhook_url else ()
        routes: tuple[RouteConfig, ...] = ()
        if targets:
            routes = (RouteConfig(to=(DEFAULT_ID,)),)
            if settings.allow_webhook_without_links:
                routes += (RouteConfig(match=RouteMatch(has_links=False), to=(DEFAULT_ID,)),)
        return cls(mailboxes=mailboxes, targets=targets, r2=R2Config.from_settings(settings),
                   providers=ProviderConfig.all_from_settings(settings), routes=routes,
                   ops=TargetConfig.ops_from_settings(settings))

    @property
    def delivered_targets(self) -> tuple[TargetConfig, ...]:
        """Every target the outbox delivers to: the configured ones and, with alerts on, the reserved ``ops``."""
        return self.targets if self.ops is None else (*self.targets, self.ops)

    def mailbox(self, id: str) -> MailboxConfig:
        return _by_id("mailbox", self.mailboxes, id)

    def target(self, id: str) -> TargetConfig:
        return _by_id("target", self.targets, id)

    def provider(self, id: str) -> ProviderConfig:
        """A provider's settings; one not configured gets the defaults (resolution on, no base URL)."""
        for provider in self.providers:
            if provider.id == id:
                return provider
        return ProviderConfig(id)


def _check_ops_target(targets: tuple[TargetConfig, ...], ops: TargetConfig | None) -> None:
    """The id ``ops`` belongs to the alert target alone (``ValueError`` otherwise)."""
    if any(target.id == OPS_TARGET_ID for target in targets):
        raise ValueError(f"target id {OPS_TARGET_ID!r} is reserved for the operational alerts (OPS_WEBHOOK_URL)")
    if ops is not None and ops.id != OPS_TARGET_ID:
        raise ValueError(f"the alert target's id must be {OPS_TARGET_ID!r}")


def _by_id(kind: str, values: tuple[_T, ...], id: str) -> _T:
    for value in values:
        if value.id == id:
            return value
    raise KeyError(f"no {kind} with id {id!r}")
