"""Typed, frozen settings for render-signal, read once from an explicit environ mapping.

Every environment variable the service reads is declared once in ``SPECS`` (name, type, default, meaning,
secret or not). ``Settings.from_env(environ)`` parses and validates all of them and raises ``ConfigError``
naming the first bad variable; the README's configuration table is checked against ``SPECS`` by a test.
No credential, URL or address has a default here.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

from config import DEFAULT_MAX_LINKS_PER_EMAIL, MICROSOFT_AUTHORITY_HOST

# Shutdown budgets, outermost first (see README "Shutdown budgets"). Render sends SIGTERM and waits
# `maxShutdownDelaySeconds` (render.yaml sets 60: Render's default of 30 s cannot hold a 30 s webhook attempt);
# Gunicorn waits GRACEFUL_TIMEOUT for its workers; a worker joins its background threads for at most
# BACKGROUND_JOIN_TIMEOUT; a single webhook attempt must fit inside that (WEBHOOK_TIMEOUT_SECONDS is validated
# against it).
RENDER_SHUTDOWN_GRACE_SECONDS = 60
GUNICORN_GRACEFUL_TIMEOUT_SECONDS = 50
BACKGROUND_JOIN_TIMEOUT_SECONDS = 45
MAX_WEBHOOK_TIMEOUT_SECONDS = 40

TRUE_WORDS = frozenset({"true", "1", "yes", "on"})
FALSE_WORDS = frozenset({"false", "0", "no", "off"})


class ConfigError(Exception):
    """A setting is malformed or missing; ``str()`` is the operator line ``CONFIG: <VAR>: <reason>``."""

    def __init__(self, variable: str, reason: str) -> None:
        super().__init__(f"CONFIG: {variable}: {reason}")
        self.variable = variable
        self.reason = reason


# --- value parsers: str -> value, raising ValueError with a reason that never echoes a secret ---------------

def parse_bool(raw: str) -> bool:
    word = raw.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError("expected one of true/false/1/0/yes/no/on/off")


def _number(kind: Callable[[str], Any], minimum: float | None, maximum: float | None) -> Callable[[str], Any]:
    def parse(raw: str) -> Any:
        try:
            value = kind(raw.strip())
        except ValueError:
            raise ValueError(f"expected {'an integer' if kind is int else 'a number'}") from None
        if value != value:  # NaN
            raise ValueError("expected a number")
        if minimum is not None and value < minimum:
            raise ValueError(f"must be >= {minimum}")
        if maximum is not None and value > maximum:
            raise ValueError(f"must be <= {maximum}")
        return value
    return parse


def integer(minimum: int | None = None, maximum: int | None = None) -> Callable[[str], int]:
    return _number(int, minimum, maximum)


def number(minimum: float | None = None, maximum: float | None = None) -> Callable[[str], float]:
    return _number(float, minimum, maximum)


def text(raw: str) -> str:
    return raw.strip()


def secret_text(raw: str) -> str:
    # Secrets are kept verbatim (a password may start or end with a space).
    return raw


def http_url(raw: str) -> str:
    value = raw.strip()
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected an http:// or https:// URL")
    return value


def redis_url(raw: str) -> str:
    value = raw.strip()
    parts = urlsplit(value)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ValueError("expected a redis://, rediss:// or unix:// URL")
    return value


def address_list(raw: str) -> tuple[str, ...]:
    return tuple(item.strip().lower() for item in raw.split(",") if item.strip())


def authserv_id(raw: str) -> str:
    # RFC 8601: an authserv-id is a token (lower-cased here: it names a host, compared without case)
    value = raw.strip().lower()
    if not re.fullmatch(r"[^\x00-\x20\x7f()<>@,;:\\\"/\[\]?=]+", value):
        raise ValueError("expected one authserv-id token (e.g. mx.google.com) or topmost")
    return value


def seconds_schedule(raw: str) -> tuple[float, ...]:
    items = [item.strip() for item in raw.split(",") if item.strip()]
    if not items:
        raise ValueError("expected comma-separated seconds")
    try:
        values = tuple(float(item) for item in items)
    except ValueError:
        raise ValueError("expected comma-separated seconds") from None
    if any(value <= 0 or value != value for value in values):
        raise ValueError("every delay must be > 0")
    return values


def choice(*allowed: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in allowed:
            raise ValueError(f"expected one of {'/'.join(allowed)}")
        return value
    return parse


# --- the declaration of every variable ------------------------------------------------------------------------

@dataclass(frozen=True)
class Spec:
    env: str
    attr: str
    parse: Callable[[str], Any]
    default: Any
    doc: str
    secret: bool = False
    # Shown in the README's default column when the default is computed, e.g. "TTL/3, max 30".
    default_doc: str | None = None


SPECS: tuple[Spec, ...] = (
    # Configuration file
    Spec("RENDER_SIGNAL_CONFIG", "config_path", text, None, "Path of a YAML file describing several mailboxes, targets and routes (README \"Configuration file\"); cannot be combined with the per-mailbox and per-target variables (IMAP_*, EMAIL_*, SENDER_*, FIRST_START_MAX_AGE_HOURS, MARK_AS_READ, ALLOW_NO_SERVER_DONE_MARK, ALLOW_CUSTOM_WEBHOOK_WITHOUT_LINKS, MAX_LINKS_PER_EMAIL, WEBHOOK_*, OAUTH_*)."),
    # Mailbox
    Spec("IMAP_SERVER", "imap_server", text, None, "IMAP host name. With EMAIL_ADDRESS and a credential (EMAIL_PASSWORD, or IMAP_AUTH_METHOD=oauth2) it enables the poller."),
    Spec("IMAP_PORT", "imap_port", integer(1, 65535), 993, "IMAP port."),
    Spec("IMAP_USE_SSL", "imap_use_ssl", parse_bool, True, "Implicit TLS (IMAPS) with certificate and host name verification."),
    Spec("IMAP_STARTTLS", "imap_starttls", parse_bool, False, "Upgrade a plain connection with STARTTLS (with IMAP_USE_SSL=false)."),
    Spec("IMAP_CA_FILE", "imap_ca_file", text, None, "PEM bundle of CAs to trust for IMAP TLS instead of the system store."),
    Spec("EMAIL_ADDRESS", "email_address", text, None, "Mailbox login (the service's own address)."),
    Spec("EMAIL_PASSWORD", "email_password", secret_text, None, "Mailbox password (IMAP_AUTH_METHOD=password).", secret=True),
    Spec("IMAP_AUTH_METHOD", "imap_auth_method", choice("password", "oauth2"), "password", "How the service signs in: `password` (EMAIL_PASSWORD) or `oauth2` (an access token from OAUTH_PROVIDER over SASL; README \"OAuth2 sign-in\")."),
    Spec("IMAP_SASL_MECHANISM", "imap_sasl_mechanism", choice("XOAUTH2", "OAUTHBEARER"), "XOAUTH2", "SASL mechanism carrying the access token with IMAP_AUTH_METHOD=oauth2 (XOAUTH2 for Microsoft and Google, OAUTHBEARER per RFC 7628)."),
    Spec("OAUTH_PROVIDER", "oauth_provider", choice("microsoft_client_credentials", "refresh_token", "google_service_account", "command"), None, "Where access tokens come from with IMAP_AUTH_METHOD=oauth2 (required then)."),
    Spec("OAUTH_TENANT_ID", "oauth_tenant_id", text, None, "Microsoft Entra tenant id (microsoft_client_credentials; the device flow of oauth-login)."),
    Spec("OAUTH_CLIENT_ID", "oauth_client_id", text, None, "OAuth client (application) id."),
    Spec("OAUTH_CLIENT_SECRET", "oauth_client_secret", secret_text, None, "OAuth client secret (or OAUTH_CLIENT_CERT_FILE + OAUTH_CLIENT_KEY_FILE for Microsoft).", secret=True),
    Spec("OAUTH_CLIENT_CERT_FILE", "oauth_client_cert_file", text, None, "PEM certificate of a Microsoft certificate credential (with OAUTH_CLIENT_KEY_FILE)."),
    Spec("OAUTH_CLIENT_KEY_FILE", "oauth_client_key_file", text, None, "PEM private key (RSA) of that certificate credential."),
    Spec("OAUTH_AUTHORITY_HOST", "oauth_authority_host", http_url, MICROSOFT_AUTHORITY_HOST, "Microsoft identity platform host (the authority is <host>/<OAUTH_TENANT_ID>)."),
    Spec("OAUTH_TOKEN_URL", "oauth_token_url", http_url, None, "RFC 6749 token endpoint of the refresh_token provider."),
    Spec("OAUTH_DEVICE_AUTHORIZATION_URL", "oauth_device_authorization_url", http_url, None, "RFC 8628 device authorization endpoint for oauth-login.", default_doc="<OAUTH_AUTHORITY_HOST>/<OAUTH_TENANT_ID>/oauth2/v2.0/devicecode"),
    Spec("OAUTH_REFRESH_TOKEN", "oauth_refresh_token", secret_text, None, "The initial refresh token (refresh_token provider); a newer one stored in the state store always wins.", secret=True),
    Spec("OAUTH_SCOPE", "oauth_scope", text, None, "Scope asked for.", default_doc="https://outlook.office365.com/.default (Microsoft), https://mail.google.com/ (Google)"),
    Spec("OAUTH_SERVICE_ACCOUNT_FILE", "oauth_service_account_file", text, None, "Google service account key file (JSON) with domain-wide delegation; the mailbox user is the subject."),
    Spec("OAUTH_TOKEN_COMMAND", "oauth_token_command", secret_text, None, "Command (no shell) that prints an access token, or {\"access_token\", \"expires_in\"} as JSON, on stdout.", secret=True),
    Spec("OAUTH_TOKEN_COMMAND_TIMEOUT_SECONDS", "oauth_token_command_timeout_seconds", number(0.1, 300), 10.0, "Bound on one run of OAUTH_TOKEN_COMMAND."),
    Spec("OAUTH_CA_FILE", "oauth_ca_file", text, None, "PEM bundle of CAs to trust for the identity endpoints instead of the bundled store."),
    Spec("OAUTH_ALLOW_INSECURE", "oauth_allow_insecure", parse_bool, False, "Allow http:// identity endpoints (local tests only); applies to every mailbox."),
    Spec("OAUTH_REAUTH_RETRY_SECONDS", "oauth_reauth_retry_seconds", number(1, 86400), 60.0, "How often a mailbox in reauth_required tries again (a newly stored refresh token is used at the next try); applies to every mailbox."),
    Spec("IMAP_MAILBOX", "imap_mailbox", text, "INBOX", "Folder to watch."),
    Spec("IMAP_TIMEOUT_SECONDS", "imap_timeout_seconds", number(0.1, 600), 30.0, "Bound on every IMAP network operation (connect, TLS, login, select, search, fetch, store, idle, noop)."),
    Spec("IMAP_USE_IDLE", "imap_use_idle", parse_bool, True, "Use IMAP IDLE when the server offers it (push); polling runs anyway."),
    Spec("IMAP_RECONNECT_MAX_SECONDS", "imap_reconnect_max_seconds", number(0.1, 3600), 60.0, "Cap of the exponential reconnect backoff."),
    Spec("IMAP_FETCH_MAX_FAILURES", "imap_fetch_max_failures", integer(1, 100), 3, "Failed fetches of one message (counted durably, across sessions) before it is parked with reason fetch_failed."),
    Spec("EMAIL_POLLING_INTERVAL_SECONDS", "email_polling_interval_seconds", number(0.1, 86400), 30.0, "Reconciliation search interval (also while idling)."),
    Spec("SENDER_OF_INTEREST_FOR_POLLING", "sender_allowlist", address_list, (), "Comma-separated sender addresses (or @domain entries) to act on; empty = everyone.", default_doc="(empty)"),
    Spec("SENDER_REQUIRE_AUTHENTICATED", "sender_require_authenticated", parse_bool, False, "An allow-listed sender counts only when the Authentication-Results header of SENDER_AUTHSERV_ID says dmarc=pass for its From domain or dkim=pass with an aligned header.d (README \"Sender filter\")."),
    Spec("SENDER_AUTHSERV_ID", "sender_authserv_id", authserv_id, None, "The authserv-id of the Authentication-Results header to trust (your receiving server's, e.g. mx.google.com), or `topmost` for the topmost header (Microsoft 365 writes none)."),
    Spec("FIRST_START_MAX_AGE_HOURS", "first_start_max_age_hours", number(0, 100000), 72.0, "On first start, unseen emails older than this are passed over (counted and logged)."),
    Spec("MARK_AS_READ", "mark_as_read", parse_bool, True, "Set \\Seen on done emails (the $RenderSignalDone keyword is set regardless, where the server stores custom keywords)."),
    Spec("ALLOW_NO_SERVER_DONE_MARK", "allow_no_server_done_mark", parse_bool, False, "Poll a server that stores no custom keywords (Exchange Online) with MARK_AS_READ=false, so the server keeps no done mark at all and only the state store knows what is done; without it such a mailbox stops at its first SELECT in the state no_server_done_mark (README \"Servers without custom keywords\")."),
    Spec("ALLOW_CUSTOM_WEBHOOK_WITHOUT_LINKS", "allow_webhook_without_links", parse_bool, False, "Send a webhook for emails without any delivery link."),
    Spec("MAX_LINKS_PER_EMAIL", "max_links_per_email", integer(1, 1000), DEFAULT_MAX_LINKS_PER_EMAIL, "Delivery links kept per email: the first ones in document order, before the R2 offload; the payload says `delivery_links_truncated: true` when there were more (counted as links_truncated, one log line with the counts)."),
    # Background machinery and lease
    Spec("ENABLE_BACKGROUND_TASKS", "enable_background_tasks", parse_bool, True, "false = web side only; /health says the poller is disabled."),
    Spec("REDIS_URL", "redis_url", redis_url, None, "Redis for the lease and the shared state. Unset = file lock + SQLite (single container).", secret=True),
    Spec("REDIS_LOCK_TTL_SECONDS", "redis_lock_ttl_seconds", number(1, 86400), 300.0, "Lease TTL; the holder renews it every TTL/3."),
    Spec("MAX_MAILBOXES_PER_PROCESS", "max_mailboxes_per_process", integer(1, 100000), None, "The most mailboxes one worker process takes (with Redis; mailboxes are spread over the live processes by rendezvous hashing).", default_doc="unlimited"),
    Spec("LEASE_RETRY_SECONDS", "lease_retry_seconds", number(0.05, 3600), None, "How often standby processes try to take the lease.", default_doc="TTL/3, at most 30"),
    Spec("REDIS_TIMEOUT_SECONDS", "redis_timeout_seconds", number(0.05, 60), 3.0, "Connect and read timeout of every Redis call (no hidden retries)."),
    Spec("BG_POLLER_LOCK_FILE", "bg_poller_lock_file", text, None, "Lock file of the file lease (without REDIS_URL).", default_doc="$STATE_DIR/poller.lock"),
    Spec("STATE_DIR", "state_dir", text, "./var", "Directory of the SQLite state and the lock file (without REDIS_URL)."),
    Spec("STATE_DIR_PERSISTENT", "state_dir_persistent", parse_bool, False, "STATE_DIR is on a persistent disk: allows the refresh_token provider without REDIS_URL (its rotated tokens must survive a restart)."),
    Spec("STATE_ENCRYPTION_KEY", "state_encryption_key", secret_text, None, "Fernet key (cryptography) that encrypts stored refresh tokens; without it they are stored in clear (README \"OAuth2 sign-in\").", secret=True),
    Spec("STATE_RETENTION_DAYS", "state_retention_days", number(0.001, 3650), 30.0, "How long delivered and dead outbox items, done records, flag requests and history are kept."),
    Spec("HEARTBEAT_INTERVAL_SECONDS", "heartbeat_interval_seconds", number(0.1, 86400), 300.0, "Interval of the lease holder's `BG_POLLER: heartbeat` log line."),
    # Webhook
    Spec("WEBHOOK_URL", "webhook_url", http_url, None, "Receiver of the webhooks (a bearer capability: never logged in full).", secret=True),
    Spec("WEBHOOK_SECRET", "webhook_secret", secret_text, None, "Standard Webhooks secret (`whsec_<base64>`); signs each webhook when set.", secret=True),
    Spec("WEBHOOK_ALLOW_INSECURE", "webhook_allow_insecure", parse_bool, False, "Allow an http:// WEBHOOK_URL (local receivers only)."),
    Spec("WEBHOOK_CA_FILE", "webhook_ca_file", text, None, "PEM bundle of CAs to trust for the webhook's TLS instead of the bundled store."),
    Spec("WEBHOOK_TIMEOUT_SECONDS", "webhook_timeout_seconds", number(0.1, MAX_WEBHOOK_TIMEOUT_SECONDS), 30.0, f"Wall-clock bound on one whole webhook attempt, from the request's start to the last byte read, not per socket read (at most {MAX_WEBHOOK_TIMEOUT_SECONDS}, to fit the shutdown budget)."),
    Spec("WEBHOOK_RETRY_HOURS", "webhook_retry_hours", number(0.0001, 24 * 30), 24.0, "How long a failing webhook is retried before it becomes a dead letter."),
    Spec("WEBHOOK_RETRY_SCHEDULE", "webhook_retry_schedule", seconds_schedule, (5.0, 30.0, 120.0, 600.0, 1800.0, 3600.0), "Comma-separated retry delays in seconds; the last repeats.", default_doc="5,30,120,600,1800,3600"),
    # Operational alerts (README "Operational alerts"): the reserved target ``ops``
    Spec("OPS_WEBHOOK_URL", "ops_webhook_url", http_url, None, "Receiver of the operational alerts (reauth_required, mailbox_stalled, target_failing, email_parked, dead_letter, recovered), delivered through the outbox as the reserved target `ops`; unset = no alerts. A bearer capability: never logged in full.", secret=True),
    Spec("OPS_WEBHOOK_SECRET", "ops_webhook_secret", secret_text, None, "Standard Webhooks secret (`whsec_<base64>`) signing every alert (required with OPS_WEBHOOK_URL).", secret=True),
    Spec("OPS_WEBHOOK_ALLOW_INSECURE", "ops_webhook_allow_insecure", parse_bool, False, "Allow an http:// OPS_WEBHOOK_URL (local receivers only)."),
    Spec("OPS_WEBHOOK_CA_FILE", "ops_webhook_ca_file", text, None, "PEM bundle of CAs to trust for the alert receiver's TLS instead of the bundled store."),
    # R2 offload
    Spec("R2_FETCH_ENABLED", "r2_fetch_enabled", parse_bool, False, "Copy Dropbox files to R2 through the Worker before the webhook."),
    Spec("R2_FETCH_ENDPOINT", "r2_fetch_endpoint", http_url, None, "URL of the Worker (required when R2_FETCH_ENABLED=true)."),
    Spec("R2_ALLOW_INSECURE", "r2_allow_insecure", parse_bool, False, "Allow an http:// R2_FETCH_ENDPOINT (local Workers only)."),
    Spec("R2_CA_FILE", "r2_ca_file", text, None, "PEM bundle of CAs to trust for the Worker's TLS instead of the bundled store."),
    Spec("R2_FETCH_TOKEN", "r2_fetch_token", secret_text, None, "Shared token sent as X-R2-FETCH-TOKEN (required when R2_FETCH_ENABLED=true).", secret=True),
    Spec("R2_BUCKET_NAME", "r2_bucket_name", text, None, "Bucket name sent to the Worker; required for presigning (private bucket)."),
    Spec("R2_FETCH_TIMEOUT_SECONDS", "r2_fetch_timeout_seconds", number(0.1, 3600), 15.0, "Worker call timeout for a file link."),
    Spec("R2_FETCH_TIMEOUT_FOLDER_SECONDS", "r2_fetch_timeout_folder_seconds", number(0.1, 3600), 120.0, "Worker call timeout for a Dropbox folder link (zipped by Dropbox)."),
    Spec("R2_EMAIL_BUDGET_SECONDS", "r2_email_budget_seconds", number(1, 3600), 130.0, "How long the R2 copies of one email's links may take, in the background after the email is queued; links not copied by then keep their source URLs and the webhook goes out."),
    Spec("R2_CIRCUIT_FAILURES", "r2_circuit_failures", integer(1, 1000), 5, "Consecutive Worker failures that open the circuit."),
    Spec("R2_CIRCUIT_COOLDOWN_SECONDS", "r2_circuit_cooldown_seconds", number(0.1, 86400), 60.0, "How long an open circuit skips R2 before one trial call."),
    Spec("R2_RETENTION_HOURS", "r2_retention_hours", number(0.01, 100000), 24.0, "How long an R2 copy is reused (match the Worker's R2_RETENTION_HOURS)."),
    Spec("R2_MAX_BYTES", "r2_max_bytes", integer(1, 5 * 1024 ** 4), 2 * 1024 ** 3, "The largest file copied to R2, in bytes, sent with each Worker call (the Worker's own R2_MAX_BYTES caps it too); a larger file keeps its source URL (reason=policy_too_large).", default_doc="2147483648 (2 GiB)"),
    Spec("R2_EMAIL_MAX_BYTES", "r2_email_max_bytes", integer(1, 100 * 1024 ** 4), 20 * 1024 ** 3, "The most bytes copied to R2 for one email (the files of resolved transfers, as their provider sizes them); files past it keep their source URLs.", default_doc="21474836480 (20 GiB)"),
    Spec("R2_PUBLIC_BASE_URL", "r2_public_base_url", http_url, None, "Public base URL of the bucket; when unset and S3 credentials are given, r2_url is presigned."),
    Spec("R2_ACCOUNT_ID", "r2_account_id", text, None, "Cloudflare account id (for presigning)."),
    Spec("R2_ACCESS_KEY_ID", "r2_access_key_id", text, None, "R2 S3 access key id (for presigning)."),
    Spec("R2_SECRET_ACCESS_KEY", "r2_secret_access_key", secret_text, None, "R2 S3 secret key (for presigning).", secret=True),
    Spec("R2_PRESIGN_TTL_SECONDS", "r2_presign_ttl_seconds", integer(1, 7 * 24 * 3600), 86400, "Validity of presigned r2_url links."),
    Spec("R2_S3_ENDPOINT_URL", "r2_s3_endpoint_url", http_url, None, "S3 endpoint for presigning.", default_doc="https://<R2_ACCOUNT_ID>.r2.cloudflarestorage.com"),
    Spec("R2_S3_ALLOW_INSECURE", "r2_s3_allow_insecure", parse_bool, False, "Allow an http:// R2_S3_ENDPOINT_URL (local S3 servers only)."),
    # Link resolution (issue 19): each provider's base URL is a setting whose default is the real one
    Spec("MAX_FILES_PER_LINK", "max_files_per_link", integer(1, 10000), 100, "Files listed (and copied to R2) per resolved link; file_count keeps the true number."),
    Spec("RESOLVE_TIMEOUT_SECONDS", "resolve_timeout_seconds", number(0.1, 300), 10.0, "Timeout of one call to a provider while resolving a link."),
    Spec("RESOLVE_BUDGET_SECONDS", "resolve_budget_seconds", number(0.5, 3600), 30.0, "How long one provider may take resolving the links of one email (within R2_EMAIL_BUDGET_SECONDS when R2 is on)."),
    Spec("RESOLVE_CIRCUIT_FAILURES", "resolve_circuit_failures", integer(1, 1000), 5, "Consecutive failures of one provider that open its circuit (its links then go out unresolved, resolution=error)."),
    Spec("RESOLVE_CIRCUIT_COOLDOWN_SECONDS", "resolve_circuit_cooldown_seconds", number(0.1, 86400), 60.0, "How long an open provider circuit skips resolution before one trial."),
    Spec("SWISSTRANSFER_API_BASE", "swisstransfer_api_base", http_url, "https://www.swisstransfer.com/api", "SwissTransfer's public link API (files, sizes, expiry, download URLs)."),
    Spec("SWISSTRANSFER_ALLOW_INSECURE", "swisstransfer_allow_insecure", parse_bool, False, "Allow an http:// SWISSTRANSFER_API_BASE (local tests only)."),
    Spec("SWISSTRANSFER_CA_FILE", "swisstransfer_ca_file", text, None, "PEM bundle of CAs to trust for SWISSTRANSFER_API_BASE."),
    Spec("SMASH_API_KEY", "smash_api_key", secret_text, None, "Smash API key: Smash transfers are resolved only with it.", secret=True),
    Spec("SMASH_API_BASE", "smash_api_base", http_url, "https://transfer.{region}.fromsmash.co", "Smash's regional transfer API (preview of a transfer's files); {region} is the transfer's region (its id names it), a base without it serves every region."),
    Spec("SMASH_ALLOW_INSECURE", "smash_allow_insecure", parse_bool, False, "Allow an http:// SMASH_API_BASE (local tests only)."),
    Spec("SMASH_CA_FILE", "smash_ca_file", text, None, "PEM bundle of CAs to trust for SMASH_API_BASE."),
    Spec("RESOLVE_WETRANSFER", "resolve_wetransfer", parse_bool, False, "Resolve WeTransfer links through WeTransfer's web download API (undocumented: it can break without notice)."),
    Spec("WETRANSFER_API_BASE", "wetransfer_api_base", http_url, "https://wetransfer.com/api/v4", "WeTransfer's web API (with RESOLVE_WETRANSFER=true)."),
    Spec("WETRANSFER_ALLOW_INSECURE", "wetransfer_allow_insecure", parse_bool, False, "Allow an http:// WETRANSFER_API_BASE (local tests only)."),
    Spec("WETRANSFER_CA_FILE", "wetransfer_ca_file", text, None, "PEM bundle of CAs to trust for WETRANSFER_API_BASE."),
    Spec("GDRIVE_DOWNLOAD_BASE", "gdrive_download_base", http_url, "https://drive.usercontent.google.com", "Google Drive's download host (the direct form, with its large-file confirmation step)."),
    Spec("GDRIVE_ALLOW_INSECURE", "gdrive_allow_insecure", parse_bool, False, "Allow an http:// GDRIVE_DOWNLOAD_BASE (local tests only)."),
    Spec("GDRIVE_CA_FILE", "gdrive_ca_file", text, None, "PEM bundle of CAs to trust for GDRIVE_DOWNLOAD_BASE."),
    Spec("RESOLVE_DROPBOX_TRACKING_LINKS", "resolve_dropbox_tracking_links", parse_bool, True, "Follow Dropbox notification links (www.dropbox.com/l/…) to the share link they lead to (each hop host-checked). Following one may count as the recipient's click."),
    Spec("DROPBOX_LINK_BASE", "dropbox_link_base", http_url, "https://www.dropbox.com", "Where Dropbox notification links are followed (the links' own host)."),
    Spec("DROPBOX_ALLOW_INSECURE", "dropbox_allow_insecure", parse_bool, False, "Allow an http:// DROPBOX_LINK_BASE (local tests only)."),
    Spec("DROPBOX_CA_FILE", "dropbox_ca_file", text, None, "PEM bundle of CAs to trust for DROPBOX_LINK_BASE."),
    Spec("PCLOUD_API_BASE", "pcloud_api_base", http_url, "https://api.pcloud.com", "pCloud's API for public links (getpublinkdownload; EU accounts answer at eapi.pcloud.com, which the API names)."),
    Spec("PCLOUD_ALLOW_INSECURE", "pcloud_allow_insecure", parse_bool, False, "Allow an http:// PCLOUD_API_BASE (local tests only)."),
    Spec("PCLOUD_CA_FILE", "pcloud_ca_file", text, None, "PEM bundle of CAs to trust for PCLOUD_API_BASE."),
    # Operator surface
    Spec("STATUS_API_TOKEN", "status_api_token", secret_text, None, "Token for /api/status, /metrics and the / page; unset = /api/status is 404.", secret=True),
    Spec("ADMIN_API_TOKEN", "admin_api_token", secret_text, None, "Token for the operator actions (replay, sample, pause/resume, try-email; README \"Operator API\"), which also reads; at least 16 characters, not STATUS_API_TOKEN; unset = the action routes are 404.", secret=True),
    Spec("SESSION_SECRET", "session_secret", secret_text, None, "Key material (at least 32 characters) for the console's signed session cookies; unset = derived from ADMIN_API_TOKEN and STATUS_API_TOKEN (HKDF), so every worker and container accepts them.", secret=True),
    Spec("LOG_FORMAT", "log_format", choice("text", "json"), "text", "`json` = one JSON object per line."),
    Spec("LOG_LEVEL", "log_level", choice("debug", "info", "warning", "error"), "info", "Minimum log level."),
    Spec("RENDER_GIT_COMMIT", "render_git_commit", text, None, "Set by Render; reported as `version`."),
    # Gunicorn (read by gunicorn.conf.py; validated here too)
    Spec("PORT", "port", integer(1, 65535), 8000, "HTTP port (Gunicorn binds 0.0.0.0:$PORT; `make run` binds 127.0.0.1)."),
    Spec("WEB_CONCURRENCY", "web_concurrency", integer(1, 64), 2, "Gunicorn worker processes."),
    Spec("GUNICORN_THREADS", "gunicorn_threads", integer(1, 256), 4, "Threads per Gunicorn worker."),
)

SPEC_BY_ENV = {spec.env: spec for spec in SPECS}
_SPEC_BY_ATTR = {spec.attr: spec for spec in SPECS}


def _settings_field(attr: str) -> Any:
    """The dataclass field of one setting: its default and repr come from its ``Spec`` (declared once)."""
    spec = _SPEC_BY_ATTR[attr]
    return field(default=spec.default, repr=not spec.secret)


@dataclass(frozen=True)
class Settings:
    """All configuration, validated. Build with ``Settings.from_env(environ)``; tests pass a dict."""

    config_path: str | None = _settings_field("config_path")
    imap_server: str | None = _settings_field("imap_server")
    imap_port: int = _settings_field("imap_port")
    imap_use_ssl: bool = _settings_field("imap_use_ssl")
    imap_starttls: bool = _settings_field("imap_starttls")
    imap_ca_file: str | None = _settings_field("imap_ca_file")
    email_address: str | None = _settings_field("email_address")
    email_password: str | None = _settings_field("email_password")
    imap_auth_method: str = _settings_field("imap_auth_method")
    imap_sasl_mechanism: str = _settings_field("imap_sasl_mechanism")
    oauth_provider: str | None = _settings_field("oauth_provider")
    oauth_tenant_id: str | None = _settings_field("oauth_tenant_id")
    oauth_client_id: str | None = _settings_field("oauth_client_id")
    oauth_client_secret: str | None = _settings_field("oauth_client_secret")
    oauth_client_cert_file: str | None = _settings_field("oauth_client_cert_file")
    oauth_client_key_file: str | None = _settings_field("oauth_client_key_file")
    oauth_authority_host: str = _settings_field("oauth_authority_host")
    oauth_token_url: str | None = _settings_field("oauth_token_url")
    oauth_device_authorization_url: str | None = _settings_field("oauth_device_authorization_url")
    oauth_refresh_token: str | None = _settings_field("oauth_refresh_token")
    oauth_scope: str | None = _settings_field("oauth_scope")
    oauth_service_account_file: str | None = _settings_field("oauth_service_account_file")
    oauth_token_command: str | None = _settings_field("oauth_token_command")
    oauth_token_command_timeout_seconds: float = _settings_field("oauth_token_command_timeout_seconds")
    oauth_ca_file: str | None = _settings_field("oauth_ca_file")
    oauth_allow_insecure: bool = _settings_field("oauth_allow_insecure")
    oauth_reauth_retry_seconds: float = _settings_field("oauth_reauth_retry_seconds")
    imap_mailbox: str = _settings_field("imap_mailbox")
    imap_timeout_seconds: float = _settings_field("imap_timeout_seconds")
    imap_use_idle: bool = _settings_field("imap_use_idle")
    imap_reconnect_max_seconds: float = _settings_field("imap_reconnect_max_seconds")
    imap_fetch_max_failures: int = _settings_field("imap_fetch_max_failures")
    email_polling_interval_seconds: float = _settings_field("email_polling_interval_seconds")
    sender_allowlist: tuple[str, ...] = _settings_field("sender_allowlist")
    sender_require_authenticated: bool = _settings_field("sender_require_authenticated")
    sender_authserv_id: str | None = _settings_field("sender_authserv_id")
    first_start_max_age_hours: float = _settings_field("first_start_max_age_hours")
    mark_as_read: bool = _settings_field("mark_as_read")
    allow_no_server_done_mark: bool = _settings_field("allow_no_server_done_mark")
    allow_webhook_without_links: bool = _settings_field("allow_webhook_without_links")
    max_links_per_email: int = _settings_field("max_links_per_email")
    enable_background_tasks: bool = _settings_field("enable_background_tasks")
    redis_url: str | None = _settings_field("redis_url")
    redis_lock_ttl_seconds: float = _settings_field("redis_lock_ttl_seconds")
    max_mailboxes_per_process: int | None = _settings_field("max_mailboxes_per_process")
    lease_retry_seconds: float | None = _settings_field("lease_retry_seconds")
    redis_timeout_seconds: float = _settings_field("redis_timeout_seconds")
    bg_poller_lock_file: str | None = _settings_field("bg_poller_lock_file")
    state_dir: str = _settings_field("state_dir")
    state_dir_persistent: bool = _settings_field("state_dir_persistent")
    state_encryption_key: str | None = _settings_field("state_encryption_key")
    state_retention_days: float = _settings_field("state_retention_days")
    heartbeat_interval_seconds: float = _settings_field("heartbeat_interval_seconds")
    webhook_url: str | None = _settings_field("webhook_url")
    webhook_secret: str | None = _settings_field("webhook_secret")
    webhook_allow_insecure: bool = _settings_field("webhook_allow_insecure")
    webhook_ca_file: str | None = _settings_field("webhook_ca_file")
    webhook_timeout_seconds: float = _settings_field("webhook_timeout_seconds")
    webhook_retry_hours: float = _settings_field("webhook_retry_hours")
    webhook_retry_schedule: tuple[float, ...] = _settings_field("webhook_retry_schedule")
    ops_webhook_url: str | None = _settings_field("ops_webhook_url")
    ops_webhook_secret: str | None = _settings_field("ops_webhook_secret")
    ops_webhook_allow_insecure: bool = _settings_field("ops_webhook_allow_insecure")
    ops_webhook_ca_file: str | None = _settings_field("ops_webhook_ca_file")
    r2_fetch_enabled: bool = _settings_field("r2_fetch_enabled")
    r2_fetch_endpoint: str | None = _settings_field("r2_fetch_endpoint")
    r2_allow_insecure: bool = _settings_field("r2_allow_insecure")
    r2_ca_file: str | None = _settings_field("r2_ca_file")
    r2_fetch_token: str | None = _settings_field("r2_fetch_token")
    r2_bucket_name: str | None = _settings_field("r2_bucket_name")
    r2_fetch_timeout_seconds: float = _settings_field("r2_fetch_timeout_seconds")
    r2_fetch_timeout_folder_seconds: float = _settings_field("r2_fetch_timeout_folder_seconds")
    r2_email_budget_seconds: float = _settings_field("r2_email_budget_seconds")
    r2_max_bytes: int = _settings_field("r2_max_bytes")
    r2_email_max_bytes: int = _settings_field("r2_email_max_bytes")
    r2_circuit_failures: int = _settings_field("r2_circuit_failures")
    r2_circuit_cooldown_seconds: float = _settings_field("r2_circuit_cooldown_seconds")
    r2_retention_hours: float = _settings_field("r2_retention_hours")
    r2_public_base_url: str | None = _settings_field("r2_public_base_url")
    r2_account_id: str | None = _settings_field("r2_account_id")
    r2_access_key_id: str | None = _settings_field("r2_access_key_id")
    r2_secret_access_key: str | None = _settings_field("r2_secret_access_key")
    r2_presign_ttl_seconds: int = _settings_field("r2_presign_ttl_seconds")
    r2_s3_endpoint_url: str | None = _settings_field("r2_s3_endpoint_url")
    r2_s3_allow_insecure: bool = _settings_field("r2_s3_allow_insecure")
    max_files_per_link: int = _settings_field("max_files_per_link")
    resolve_timeout_seconds: float = _settings_field("resolve_timeout_seconds")
    resolve_budget_seconds: float = _settings_field("resolve_budget_seconds")
    resolve_circuit_failures: int = _settings_field("resolve_circuit_failures")
    resolve_circuit_cooldown_seconds: float = _settings_field("resolve_circuit_cooldown_seconds")
    swisstransfer_api_base: str = _settings_field("swisstransfer_api_base")
    swisstransfer_allow_insecure: bool = _settings_field("swisstransfer_allow_insecure")
    swisstransfer_ca_file: str | None = _settings_field("swisstransfer_ca_file")
    smash_api_key: str | None = _settings_field("smash_api_key")
    smash_api_base: str = _settings_field("smash_api_base")
    smash_allow_insecure: bool = _settings_field("smash_allow_insecure")
    smash_ca_file: str | None = _settings_field("smash_ca_file")
    resolve_wetransfer: bool = _settings_field("resolve_wetransfer")
    wetransfer_api_base: str = _settings_field("wetransfer_api_base")
    wetransfer_allow_insecure: bool = _settings_field("wetransfer_allow_insecure")
    wetransfer_ca_file: str | None = _settings_field("wetransfer_ca_file")
    gdrive_download_base: str = _settings_field("gdrive_download_base")
    gdrive_allow_insecure: bool = _settings_field("gdrive_allow_insecure")
    gdrive_ca_file: str | None = _settings_field("gdrive_ca_file")
    resolve_dropbox_tracking_links: bool = _settings_field("resolve_dropbox_tracking_links")
    dropbox_link_base: str = _settings_field("dropbox_link_base")
    dropbox_allow_insecure: bool = _settings_field("dropbox_allow_insecure")
    dropbox_ca_file: str | None = _settings_field("dropbox_ca_file")
    pcloud_api_base: str = _settings_field("pcloud_api_base")
    pcloud_allow_insecure: bool = _settings_field("pcloud_allow_insecure")
    pcloud_ca_file: str | None = _settings_field("pcloud_ca_file")
    status_api_token: str | None = _settings_field("status_api_token")
    admin_api_token: str | None = _settings_field("admin_api_token")
    session_secret: str | None = _settings_field("session_secret")
    log_format: str = _settings_field("log_format")
    log_level: str = _settings_field("log_level")
    render_git_commit: str | None = _settings_field("render_git_commit")
    port: int = _settings_field("port")
    web_concurrency: int = _settings_field("web_concurrency")
    gunicorn_threads: int = _settings_field("gunicorn_threads")

    # --- construction -----------------------------------------------------------------------------------------

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        """Parse and validate every variable of ``SPECS`` from ``environ`` (``os.environ`` when None)."""
        env = os.environ if environ is None else environ
        _check_config_file_conflicts(env)
        values: dict[str, Any] = {}
        for spec in SPECS:
            raw = env.get(spec.env)
            if raw is None or raw.strip() == "":
                # An empty variable counts as unset (Render dashboards leave empty values around).
                continue
            try:
                values[spec.attr] = spec.parse(raw)
            except ValueError as exc:
                raise ConfigError(spec.env, str(exc)) from None
        settings = cls(**values)
        settings.validate()
        return settings

    def replace(self, **changes: Any) -> "Settings":
        new = dataclasses.replace(self, **changes)
        new.validate()
        return new

    def validate(self) -> None:
        """Cross-field rules: a feature that is on has what it needs."""
        for rule in (_check_config_file, _check_mailbox, _check_sender_auth, _check_outside_urls, _check_webhook, _check_ops_webhook,
                     _check_r2_fetch, _check_presign, _check_retention, _check_operator_tokens):
            rule(self)

    # --- derived values ---------------------------------------------------------------------------------------

    @property
    def mailbox_configured(self) -> bool:
        return bool(self.imap_server and self.email_address and (self.email_password or self.oauth2))

    @property
    def oauth2(self) -> bool:
        return self.imap_auth_method == "oauth2"

    @property
    def lease_retry_interval(self) -> float:
        if self.lease_retry_seconds is not None:
            return self.lease_retry_seconds
        return min(self.redis_lock_ttl_seconds / 3.0, 30.0)

    @property
    def lock_file_path(self) -> str:
        return self.bg_poller_lock_file or os.path.join(self.state_dir, "poller.lock")

    @property
    def presign_enabled(self) -> bool:
        return (not self.r2_public_base_url and bool(self.r2_access_key_id and self.r2_secret_access_key)
                and bool(self.r2_account_id or self.r2_s3_endpoint_url))

    @property
    def s3_endpoint(self) -> str | None:
        if self.r2_s3_endpoint_url:
            return self.r2_s3_endpoint_url
        if self.r2_account_id:
            return f"https://{self.r2_account_id}.r2.cloudflarestorage.com"
        return None

    def secret_values(self) -> tuple[str, ...]:
        """Every secret value currently set (for log redaction), including the Redis password and webhook path."""
        values: list[str] = []
        for spec in SPECS:
            value = getattr(self, spec.attr)
            if spec.secret and isinstance(value, str) and value:
                values.append(value)
        if self.redis_url:
            password = urlsplit(self.redis_url).password
            if password:
                values.append(password)
        for url in (self.webhook_url, self.ops_webhook_url):
            path = urlsplit(url).path if url else ""
            if len(path) > 1:
                values.append(path)
        return tuple(sorted(set(values), key=len, reverse=True))


# --- cross-field rules (one per feature), run by Settings.validate ---------------------------------------------

# The variables that describe mailbox and target ``default``: with RENDER_SIGNAL_CONFIG the file describes every
# mailbox and target, and one of these set beside it would be silently ignored, so it is an error instead.
# (MAX_LINKS_PER_EMAIL is a per-mailbox setting too: the file's mailboxes have max_links_per_email.)
PER_MAILBOX_AND_TARGET_PREFIXES = ("IMAP_", "EMAIL_", "SENDER_", "WEBHOOK_", "OAUTH_")
PER_MAILBOX_AND_TARGET_NAMES = frozenset({"FIRST_START_MAX_AGE_HOURS", "MARK_AS_READ", "ALLOW_NO_SERVER_DONE_MARK",
                                          "ALLOW_CUSTOM_WEBHOOK_WITHOUT_LINKS", "MAX_LINKS_PER_EMAIL"})


def is_per_mailbox_or_target(name: str) -> bool:
    if name in GLOBAL_OAUTH_NAMES:
        return False
    return name.startswith(PER_MAILBOX_AND_TARGET_PREFIXES) or name in PER_MAILBOX_AND_TARGET_NAMES


def _config_file_conflict(names: list[str]) -> ConfigError:
    return ConfigError("RENDER_SIGNAL_CONFIG", f"cannot be combined with {', '.join(sorted(names))}: the file "
                                               "describes every mailbox and target (unset them)")


def _check_config_file_conflicts(env: Mapping[str, str]) -> None:
    """RENDER_SIGNAL_CONFIG beside any per-mailbox or per-target variable present and non-empty (checked on the raw
    environment: OAUTH_* and a variable set to its default count too)."""
    if not (env.get("RENDER_SIGNAL_CONFIG") or "").strip():
        return
    names = [name for name, value in env.items() if is_per_mailbox_or_target(name) and value.strip()]
    if names:
        raise _config_file_conflict(names)


def _check_config_file(s: Settings) -> None:
    if not s.config_path:
        return
    names = [spec.env for spec in SPECS
             if is_per_mailbox_or_target(spec.env) and getattr(s, spec.attr) != spec.default]
    if names:
        raise _config_file_conflict(names)
    if not os.path.isfile(s.config_path):
        raise ConfigError("RENDER_SIGNAL_CONFIG", "file not found")


def _check_mailbox(s: Settings) -> None:
    mailbox = {"IMAP_SERVER": s.imap_server, "EMAIL_ADDRESS": s.email_address}
    if s.oauth2:
        if s.email_password:
            raise ConfigError("EMAIL_PASSWORD", "cannot be combined with IMAP_AUTH_METHOD=oauth2 (unset it)")
    else:
        mailbox["EMAIL_PASSWORD"] = s.email_password
    missing = [name for name, value in mailbox.items() if not value]
    if 0 < len(missing) < len(mailbox) or (s.oauth2 and missing):
        raise ConfigError(missing[0], f"required when any of {', '.join(mailbox)} is set"
                                      + (" (IMAP_AUTH_METHOD=oauth2)" if s.oauth2 else ""))
    _check_oauth(s)
    if s.imap_use_ssl and s.imap_starttls:
        raise ConfigError("IMAP_STARTTLS", "cannot be combined with IMAP_USE_SSL=true (implicit TLS)")
    check_ca_file("IMAP_CA_FILE", s.imap_ca_file)


# OAUTH_* that apply to every mailbox (with a configuration file too); every other one describes mailbox default.
GLOBAL_OAUTH_NAMES = frozenset({"OAUTH_ALLOW_INSECURE", "OAUTH_REAUTH_RETRY_SECONDS"})


def _check_oauth(s: Settings) -> None:
    """IMAP_AUTH_METHOD=oauth2 has a provider and what it needs (``OAuth2Credentials.problems``, in OAUTH_* names);
    with a password, an OAUTH_* variable describing the mailbox would be ignored, so it is an error."""
    from config import OAUTH_FILE_KEYS, OAuth2Credentials, credentials_from_settings

    if not s.oauth2:
        given = [spec.env for spec in SPECS if spec.env.startswith("OAUTH_") and spec.env not in GLOBAL_OAUTH_NAMES
                 and getattr(s, spec.attr) != spec.default]
        if given:
            raise ConfigError(given[0], "only with IMAP_AUTH_METHOD=oauth2")
        return
    if not s.oauth_provider:
        raise ConfigError("OAUTH_PROVIDER", "required with IMAP_AUTH_METHOD=oauth2")
    credentials = credentials_from_settings(s)
    assert isinstance(credentials, OAuth2Credentials)
    for key, reason in credentials.problems():
        raise ConfigError(f"OAUTH_{key.upper()}", reason)
    for key in OAUTH_FILE_KEYS:
        check_ca_file(f"OAUTH_{key.upper()}", getattr(credentials, key))
    if s.oauth_provider == "refresh_token" and not s.redis_url and not s.state_dir_persistent:
        raise ConfigError("OAUTH_PROVIDER", "refresh_token needs REDIS_URL (or STATE_DIR_PERSISTENT=true): providers "
                                            "rotate refresh tokens, and the newest must survive a restart")


def _check_sender_auth(s: Settings) -> None:
    if s.sender_require_authenticated and not s.sender_authserv_id:
        raise ConfigError("SENDER_AUTHSERV_ID", "required when SENDER_REQUIRE_AUTHENTICATED=true (your receiving "
                                                "server's authserv-id, or topmost)")
    if s.sender_authserv_id and not s.sender_require_authenticated:
        raise ConfigError("SENDER_REQUIRE_AUTHENTICATED", "set it to true to authenticate senders by "
                                                          "SENDER_AUTHSERV_ID (alone it changes nothing)")
    if s.sender_require_authenticated and not s.sender_allowlist:
        raise ConfigError("SENDER_OF_INTEREST_FOR_POLLING", "required with SENDER_REQUIRE_AUTHENTICATED=true: "
                                                            "authentication applies to allow-listed senders")


# One rule for every URL the service connects to: https:// unless its *_ALLOW_INSECURE twin is true, and a private
# CA from its *_CA_FILE twin (where one exists). (variable, allow-insecure twin, CA twin, what a local one is).
OUTSIDE_URLS: tuple[tuple[str, str, str | None, str], ...] = (
    ("WEBHOOK_URL", "WEBHOOK_ALLOW_INSECURE", "WEBHOOK_CA_FILE", "receiver"),
    ("OPS_WEBHOOK_URL", "OPS_WEBHOOK_ALLOW_INSECURE", "OPS_WEBHOOK_CA_FILE", "receiver"),
    ("R2_FETCH_ENDPOINT", "R2_ALLOW_INSECURE", "R2_CA_FILE", "Worker"),
    ("R2_S3_ENDPOINT_URL", "R2_S3_ALLOW_INSECURE", None, "S3 server"),
    ("SWISSTRANSFER_API_BASE", "SWISSTRANSFER_ALLOW_INSECURE", "SWISSTRANSFER_CA_FILE", "SwissTransfer fake"),
    ("SMASH_API_BASE", "SMASH_ALLOW_INSECURE", "SMASH_CA_FILE", "Smash fake"),
    ("WETRANSFER_API_BASE", "WETRANSFER_ALLOW_INSECURE", "WETRANSFER_CA_FILE", "WeTransfer fake"),
    ("GDRIVE_DOWNLOAD_BASE", "GDRIVE_ALLOW_INSECURE", "GDRIVE_CA_FILE", "Google Drive fake"),
    ("DROPBOX_LINK_BASE", "DROPBOX_ALLOW_INSECURE", "DROPBOX_CA_FILE", "Dropbox fake"),
    ("PCLOUD_API_BASE", "PCLOUD_ALLOW_INSECURE", "PCLOUD_CA_FILE", "pCloud fake"),
)


def check_outside_url(variable: str, url: str | None, allow_insecure: bool, allow_variable: str,
                      local_kind: str) -> None:
    """Refuse a URL the service would connect to without TLS, unless its ``*_ALLOW_INSECURE`` twin allows it."""
    if url and not allow_insecure and not url.startswith("https://"):
        raise ConfigError(variable, f"must be https:// (set {allow_variable}=true for a local {local_kind})")


def check_ca_file(variable: str, path: str | None) -> None:
    """A ``*_CA_FILE`` must name an existing file (it replaces the system CA store for that connection)."""
    if path and not os.path.isfile(path):
        raise ConfigError(variable, "file not found")


def _check_outside_urls(s: Settings) -> None:
    for variable, allow_variable, ca_variable, local_kind in OUTSIDE_URLS:
        check_outside_url(variable, getattr(s, SPEC_BY_ENV[variable].attr),
                          getattr(s, SPEC_BY_ENV[allow_variable].attr), allow_variable, local_kind)
        if ca_variable is not None:
            check_ca_file(ca_variable, getattr(s, SPEC_BY_ENV[ca_variable].attr))


def _check_webhook(s: Settings) -> None:
    # With RENDER_SIGNAL_CONFIG the file names the targets (and the loader demands one when it has a mailbox).
    if s.mailbox_configured and s.enable_background_tasks and not s.webhook_url and not s.config_path:
        raise ConfigError("WEBHOOK_URL", "required when the mailbox is configured")
    if s.webhook_secret is not None:
        validate_webhook_secret(s.webhook_secret)


def _check_ops_webhook(s: Settings) -> None:
    """Alerts are always signed: OPS_WEBHOOK_URL needs OPS_WEBHOOK_SECRET, and the secret alone would sign nothing."""
    if s.ops_webhook_url and not s.ops_webhook_secret:
        raise ConfigError("OPS_WEBHOOK_SECRET", "required with OPS_WEBHOOK_URL (every alert is signed)")
    if s.ops_webhook_secret is not None:
        if not s.ops_webhook_url:
            raise ConfigError("OPS_WEBHOOK_SECRET", "only with OPS_WEBHOOK_URL (alone it changes nothing)")
        validate_webhook_secret(s.ops_webhook_secret, "OPS_WEBHOOK_SECRET")


def _check_r2_fetch(s: Settings) -> None:
    if not s.r2_fetch_enabled:
        return
    if not s.r2_fetch_endpoint:
        raise ConfigError("R2_FETCH_ENDPOINT", "required when R2_FETCH_ENABLED=true")
    if not s.r2_fetch_token:
        raise ConfigError("R2_FETCH_TOKEN", "required when R2_FETCH_ENABLED=true")
    if s.presign_enabled and not s.r2_bucket_name:
        raise ConfigError("R2_BUCKET_NAME", "required to presign r2_url for a private bucket")


def _check_presign(s: Settings) -> None:
    presign = {"R2_ACCOUNT_ID": s.r2_account_id, "R2_ACCESS_KEY_ID": s.r2_access_key_id,
               "R2_SECRET_ACCESS_KEY": s.r2_secret_access_key}
    given = [name for name, value in presign.items() if value]
    if given and len(given) < len(presign):
        missing_name = next(name for name, value in presign.items() if not value)
        if not (missing_name == "R2_ACCOUNT_ID" and s.r2_s3_endpoint_url):
            raise ConfigError(missing_name, "required with the other R2 S3 credentials")


def _check_retention(s: Settings) -> None:
    """A done record must outlive any retry and the first-start window: otherwise an email still being retried, or
    seen again on a first start, would look new and be sent twice."""
    retention_hours = s.state_retention_days * 24
    for variable, hours in (("WEBHOOK_RETRY_HOURS", s.webhook_retry_hours),
                            ("FIRST_START_MAX_AGE_HOURS", s.first_start_max_age_hours)):
        if retention_hours <= hours:
            raise ConfigError("STATE_RETENTION_DAYS", f"must be longer than {variable} ({hours:g} h): done records "
                                                      "have to outlive it")


ADMIN_TOKEN_MIN_CHARS = 16
SESSION_SECRET_MIN_CHARS = 32


def _check_operator_tokens(s: Settings) -> None:
    """The admin token acts: it must not be guessable, nor be the read token (whoever reads could then act)."""
    if s.admin_api_token is not None:
        if len(s.admin_api_token) < ADMIN_TOKEN_MIN_CHARS:
            raise ConfigError("ADMIN_API_TOKEN", f"must be at least {ADMIN_TOKEN_MIN_CHARS} characters")
        if s.status_api_token is not None and s.admin_api_token == s.status_api_token:
            raise ConfigError("ADMIN_API_TOKEN", "must differ from STATUS_API_TOKEN")
    if s.session_secret is not None and len(s.session_secret) < SESSION_SECRET_MIN_CHARS:
        raise ConfigError("SESSION_SECRET", f"must be at least {SESSION_SECRET_MIN_CHARS} characters")


def validate_webhook_secret(secret: str, variable: str = "WEBHOOK_SECRET") -> None:
    """A Standard Webhooks secret: ``whsec_`` and base64 of at least 16 bytes (``ConfigError`` naming ``variable``,
    the configuration file's path for a target's ``secret``)."""
    import base64
    import binascii

    if not secret.startswith("whsec_"):
        raise ConfigError(variable, "must start with whsec_")
    try:
        decoded = base64.b64decode(secret[len("whsec_"):], validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(variable, "must be whsec_ followed by base64") from None
    if len(decoded) < 16:
        raise ConfigError(variable, "must decode to at least 16 bytes")


def load_settings_or_exit(environ: Mapping[str, str] | None = None) -> Settings:
    """Build settings; on a bad value print the one ``CONFIG:`` line and exit with code 3."""
    import sys

    try:
        return Settings.from_env(environ)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr, flush=True)
        raise SystemExit(3) from None
