"""The YAML configuration file (``RENDER_SIGNAL_CONFIG``): several mailboxes, targets and routes as typed values.

``load_config_file`` reads the file with PyYAML's safe loader, resolves ``${ENV_NAME}`` references, validates every
field and returns the ``ServiceConfig`` with the resolved secret values (for log redaction); ``collect_config_errors``
returns every error instead of raising (``flask --app app check-config``). Errors are ``settings.ConfigError`` lines
``CONFIG: <path>: <reason>`` whose "variable" is the path in the file (``mailboxes[0].port``, ``routes[2].to[1]``).
Defaults, ranges and the URL and secret rules are those of the environment variables (``settings.SPECS``), so the
two forms cannot drift; the global settings (Redis, state, R2, logging, Gunicorn) stay in the environment.
``service_config`` is the wiring point: the file's configuration when ``RENDER_SIGNAL_CONFIG`` is set, else the
environment form. Pure apart from reading the file.
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import functools
import re
import time
import zoneinfo
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence
from urllib.parse import urlsplit

import yaml

from config import (
    DEFAULT_DELIVERY_CONCURRENCY,
    DROP,
    MICROSOFT_AUTHORITY_HOST,
    OAUTH_FILE_KEYS,
    OPS_TARGET_ID,
    WEEKDAYS,
    AuthMethod,
    BasicAuth,
    DeliveryWindow,
    MailboxConfig,
    OAuth2Credentials,
    OAuthProvider,
    PasswordCredentials,
    ProviderConfig,
    ProviderEndpoint,
    R2Config,
    RetryPolicy,
    RouteConfig,
    RouteMatch,
    SaslMechanism,
    SenderAuth,
    ServiceConfig,
    TargetConfig,
    TargetProfile,
    TlsMode,
    check_id,
)
from email_processing.delivery_window import check_window
from settings import (
    FALSE_WORDS,
    SPEC_BY_ENV,
    TRUE_WORDS,
    ConfigError,
    Settings,
    authserv_id,
    check_outside_url,
    http_url,
    integer,
    number,
    validate_webhook_secret,
)

CONFIG_ENV = "RENDER_SIGNAL_CONFIG"
MAX_FILE_BYTES = 1024 * 1024
# What an unresolved ``${NAME}`` becomes with allow_missing_env (check-config --allow-missing-env): a field whose
# value holds one is not checked further (its format is unknown) and takes a stand-in that passes the checks.
UNRESOLVED = "unresolved"
_PLACEHOLDER_URL = "https://unresolved.invalid/"
_PLACEHOLDER_SECRET = "whsec_" + "A" * 24  # 18 zero bytes: a well-formed secret that signs nothing real

# The keys of every mapping of the file, each with its meaning in one word; docs/config.schema.json names the same
# keys (a test compares them).
TOP_KEYS = ("mailboxes", "targets", "routes", "providers")
MAILBOX_KEYS = ("id", "server", "port", "tls", "ca_file", "user", "password", "folder", "senders", "sender_auth",
                "idle", "poll_interval_seconds", "timeout_seconds", "reconnect_max_seconds",
                "first_start_max_age_hours", "mark_as_read", "allow_no_server_done_mark", "fetch_max_failures",
                "max_links_per_email", "allow_without_links", "auth")
AUTH_KEYS = ("method", "mechanism", "provider", "tenant_id", "client_id", "client_secret", "client_cert_file",
             "client_key_file", "authority_host", "token_url", "device_authorization_url", "refresh_token", "scope",
             "service_account_file", "token_command", "token_command_timeout_seconds", "ca_file")
_AUTH_SECRETS = ("client_secret", "refresh_token", "token_command")
_AUTH_URLS = ("authority_host", "token_url", "device_authorization_url")
_AUTH_TEXT = ("tenant_id", "client_id", "scope")
SENDER_AUTH_KEYS = ("authserv_id",)
TARGET_KEYS = ("id", "url", "secret", "profile", "headers", "basic_auth", "timeout_seconds", "concurrency",
               "max_body_bytes", "rate_per_second", "retry", "window", "allow_insecure", "ca_file")
BASIC_AUTH_KEYS = ("user", "password")
RETRY_KEYS = ("schedule", "hours")
WINDOW_KEYS = ("timezone", "days", "from", "to", "closed_dates")
ROUTE_KEYS = ("match", "to", "continue")
PROVIDER_KEYS = ("resolve", "api_base", "allow_insecure", "ca_file", "api_key", "resolve_tracking_links",
                 "timeout_seconds", "budget_seconds", "max_files")
MATCH_KEYS = ("mailbox", "sender", "subject", "provider", "has_links")

# Mailbox keys read exactly like an environment variable (same parser, same range, same default).
_MAILBOX_SPECS = {
    "folder": "IMAP_MAILBOX",
    "idle": "IMAP_USE_IDLE",
    "poll_interval_seconds": "EMAIL_POLLING_INTERVAL_SECONDS",
    "timeout_seconds": "IMAP_TIMEOUT_SECONDS",
    "reconnect_max_seconds": "IMAP_RECONNECT_MAX_SECONDS",
    "first_start_max_age_hours": "FIRST_START_MAX_AGE_HOURS",
    "mark_as_read": "MARK_AS_READ",
    "allow_no_server_done_mark": "ALLOW_NO_SERVER_DONE_MARK",
    "fetch_max_failures": "IMAP_FETCH_MAX_FAILURES",
    "max_links_per_email": "MAX_LINKS_PER_EMAIL",
    "allow_without_links": "ALLOW_CUSTOM_WEBHOOK_WITHOUT_LINKS",
}
_DEFAULT_PORTS = {TlsMode.IMPLICIT: 993, TlsMode.STARTTLS: 143, TlsMode.NONE: 143}
# Headers the sender writes itself: a target's extra headers may not replace them.
_RESERVED_HEADERS = frozenset({"content-type", "content-length", "host"})
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_REFERENCE = re.compile(r"\$(\$|\{([A-Za-z_][A-Za-z0-9_]*)\})?")
_HH_MM = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


class ConfigFileError(ConfigError):
    """Every error of one configuration file; ``str()`` is one ``CONFIG: <path>: <reason>`` line per error (the
    first error's path and reason are ``variable`` and ``reason``, as for any ``ConfigError``)."""

    def __init__(self, errors: Sequence[ConfigError]) -> None:
        super().__init__(errors[0].variable, errors[0].reason)
        self.errors = tuple(errors)

    def __str__(self) -> str:
        return "\n".join(str(error) for error in self.errors)


class _Bad:
    """A value that failed validation (its error is recorded): the item holding it is not built."""


_BAD: Any = _Bad()


@dataclass
class _Resolved:
    text: str
    unresolved: bool = False


@dataclass
class _Reader:
    """Walks the loaded YAML with the path of each value, recording every error and every secret value."""

    environ: Mapping[str, str]
    allow_missing_env: bool
    errors: list[ConfigError] = field(default_factory=list)
    secrets: list[str] = field(default_factory=list)

    def error(self, path: str, reason: str) -> Any:
        self.errors.append(ConfigError(path, reason))
        return _BAD

    # --- shapes -----------------------------------------------------------------------------------------------

    def mapping(self, path: str, raw: Any, keys: Sequence[str], required: Sequence[str] = ()) -> dict[str, Any] | None:
        """``raw`` as a dict when it is a mapping with string keys among ``keys``; unknown and missing keys are errors
        (the known keys are still read)."""
        if not isinstance(raw, dict):
            self.error(path, f"expected a mapping with keys {', '.join(keys)}, got {_kind(raw)}")
            return None
        values: dict[str, Any] = {}
        for key, value in raw.items():
            name = str(key)
            if not isinstance(key, str) or key not in keys:
                close = difflib.get_close_matches(name, keys, n=1)
                hint = f"did you mean {close[0]}?" if close else f"expected one of {', '.join(keys)}"
                self.error(_join(path, name), f"unknown key ({hint})")
            else:
                values[key] = value
        for key in required:
            if values.get(key) is None:
                self.error(_join(path, key), "required")
        return values

    def items(self, path: str, raw: Any) -> list[tuple[str, Any]]:
        """``(path[i], item)`` for a list (None: empty)."""
        if raw is None:
            return []
        if not isinstance(raw, list):
            self.error(path, f"expected a list, got {_kind(raw)}")
            return []
        return [(f"{path}[{index}]", item) for index, item in enumerate(raw)]

    # --- scalars ----------------------------------------------------------------------------------------------

    def resolve(self, path: str, raw: str) -> _Resolved | Any:
        """``${NAME}`` replaced by the environment's value (missing or empty: an error, or a placeholder with
        allow_missing_env), ``$$`` by ``$``; any other ``$`` is an error."""
        parts: list[str] = []
        unresolved = False
        position = 0
        for match in _REFERENCE.finditer(raw):
            parts.append(raw[position:match.start()])
            position = match.end()
            if match.group(1) == "$":
                parts.append("$")
            elif match.group(2):
                name = match.group(2)
                value = self.environ.get(name)
                if value is None or value == "":
                    if not self.allow_missing_env:
                        return self.error(path, f"${{{name}}} is {'empty' if value == '' else 'not set'} in the "
                                                "environment")
                    unresolved = True
                    parts.append(f"{UNRESOLVED}-{name.lower().replace('_', '-')}")
                else:
                    parts.append(value)
            else:
                return self.error(path, "a $ starts a ${NAME} reference; write $$ for a literal $")
        parts.append(raw[position:])
        return _Resolved("".join(parts), unresolved)

    def string(self, path: str, raw: Any, *, secret: bool = False, strip: bool = True,
               check: Callable[[str], Any] | None = None, placeholder: str | None = None) -> Any:
        """A string value, references resolved; ``check`` validates (ValueError: its message is the reason) unless
        the value holds an unresolved reference, which then becomes ``placeholder`` when given."""
        if not isinstance(raw, str):
            return self.error(path, _not_a_string(raw))
        resolved = self.resolve(path, raw)
        if resolved is _BAD:
            return _BAD
        value = resolved.text.strip() if strip else resolved.text
        if resolved.unresolved:
            return placeholder if placeholder is not None else value
        if value == "":
            return self.error(path, "must not be empty")
        if check is not None:
            try:
                value = check(value)
            except ValueError as exc:
                return self.error(path, str(exc))
            except ConfigError as exc:
                return self.error(path, exc.reason)
        if secret:
            self.secrets.append(value)
        return value

    def boolean(self, path: str, raw: Any) -> Any:
        if not isinstance(raw, bool):
            hint = " (unquoted)" if isinstance(raw, str) and raw.strip().lower() in TRUE_WORDS | FALSE_WORDS else ""
            return self.error(path, f"expected true or false{hint}, got {_kind(raw)}")
        return raw

    def number(self, path: str, raw: Any, parse: Callable[[str], Any]) -> Any:
        """An int or float from YAML, checked by a ``settings`` parser (its range and kind)."""
        if isinstance(raw, bool) or not isinstance(raw, (int, float)):
            hint = " (write it without quotes)" if isinstance(raw, str) else ""
            return self.error(path, f"expected a number{hint}, got {_kind(raw)}")
        try:
            return parse(repr(raw))
        except ValueError as exc:
            return self.error(path, str(exc))

    def spec_value(self, path: str, raw: Any, env: str) -> Any:
        """A value read like the environment variable ``env`` (None: its default)."""
        spec = SPEC_BY_ENV[env]
        if raw is None:
            return spec.default
        if isinstance(spec.default, bool):
            return self.boolean(path, raw)
        if isinstance(spec.default, (int, float)):
            return self.number(path, raw, spec.parse)
        return self.string(path, raw, check=spec.parse)

    def optional(self, values: dict[str, Any], path: str, key: str, read: Callable[[str, Any], Any],
                 default: Any = None) -> Any:
        """``read(path.key, value)`` when the key has a value, else ``default``."""
        raw = values.get(key)
        return default if raw is None else read(_join(path, key), raw)

    def string_list(self, path: str, raw: Any, check: Callable[[str], Any] | None = None) -> list[Any]:
        return [self.string(item_path, item, check=check) for item_path, item in self.items(path, raw)]


# --- the file ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ConfigFileResult:
    """What reading a file gave: the configuration (None when there were errors), every error, the secrets."""

    config: ServiceConfig | None
    errors: tuple[ConfigError, ...]
    secrets: tuple[str, ...] = field(repr=False)


def read_config_file(path: str, environ: Mapping[str, str], settings: Settings, *,
                     allow_missing_env: bool = False) -> ConfigFileResult:
    """Read, resolve and validate the file at ``path``, collecting every error."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        return ConfigFileResult(None, (ConfigError(path, f"cannot read ({exc.strerror or type(exc).__name__})"),), ())
    if len(data) > MAX_FILE_BYTES:
        return ConfigFileResult(None, (ConfigError(path, f"larger than {MAX_FILE_BYTES} bytes"),), ())
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return ConfigFileResult(None, (ConfigError(path, "not UTF-8"),), ())
    return parse_config_text(text, environ, settings, allow_missing_env=allow_missing_env, source=path)


def parse_config_text(text: str, environ: Mapping[str, str], settings: Settings, *, allow_missing_env: bool = False,
                      source: str = "<config>") -> ConfigFileResult:
    """``read_config_file`` for text already read (``source`` names it in file-level errors)."""
    try:
        document = yaml.load(text, Loader=_UniqueKeySafeLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        return ConfigFileResult(None, (ConfigError(source, f"not valid YAML ({_yaml_reason(exc)})"),), ())
    reader = _Reader(environ, allow_missing_env)
    config = _read_service(reader, document, settings, source)
    secrets = tuple(sorted(set(reader.secrets), key=len, reverse=True))
    if reader.errors:
        return ConfigFileResult(None, tuple(reader.errors), secrets)
    return ConfigFileResult(config, (), secrets)


def load_config_file(path: str, environ: Mapping[str, str], settings: Settings, *,
                     allow_missing_env: bool = False) -> tuple[ServiceConfig, list[str]]:
    """The file's ``ServiceConfig`` and its resolved secret values; ``ConfigFileError`` (every error) if invalid."""
    result = read_config_file(path, environ, settings, allow_missing_env=allow_missing_env)
    if result.errors or result.config is None:
        raise ConfigFileError(result.errors)
    return result.config, list(result.secrets)


def collect_config_errors(path: str, environ: Mapping[str, str], settings: Settings, *,
                          allow_missing_env: bool = False) -> list[str]:
    """Every ``CONFIG: <path>: <reason>`` line of the file (empty: valid)."""
    result = read_config_file(path, environ, settings, allow_missing_env=allow_missing_env)
    return [str(error) for error in result.errors]


def service_config(settings: Settings, environ: Mapping[str, str]) -> ServiceConfig:
    """The service's configuration: the file's when RENDER_SIGNAL_CONFIG is set (its secrets registered for log
    redaction, its mailbox logins as the service's own addresses), else the environment form."""
    if not settings.config_path:
        return ServiceConfig.from_settings(settings)
    from log_setup import register_secrets

    config, secrets = load_config_file(settings.config_path, environ, settings)
    register_secrets(secrets, own_addresses=[mailbox.user for mailbox in config.mailboxes])
    return config


def service_config_or_exit(settings: Settings, environ: Mapping[str, str]) -> ServiceConfig:
    """``service_config``; on a bad file print every ``CONFIG:`` line and exit with code 3 (as a bad variable)."""
    import sys

    try:
        return service_config(settings, environ)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr, flush=True)
        raise SystemExit(3) from None



# --- one section each -------------------------------------------------------------------------------------------

def _read_service(reader: _Reader, document: Any, settings: Settings, source: str) -> ServiceConfig | None:
    if not isinstance(document, dict):
        what = "is empty" if document is None else f"holds {_kind(document)}"
        reader.error(source, f"{what} (expected a mapping with keys {', '.join(TOP_KEYS)})")
        return None
    top = reader.mapping("", document, TOP_KEYS)
    if top is None:
        return None
    mailboxes = [_read_mailbox(reader, path, raw, settings) for path, raw in reader.items("mailboxes",
                                                                                           top.get("mailboxes"))]
    targets = [_read_target(reader, path, raw, settings) for path, raw in reader.items("targets", top.get("targets"))]
    mailbox_ids = _check_unique(reader, "mailboxes", "mailbox", top.get("mailboxes"))
    target_ids = _check_unique(reader, "targets", "target", top.get("targets"))
    _check_state_keys(reader, mailboxes)
    if top.get("routes") is None:
        routes = _default_routes(mailboxes, targets)
    else:
        routes = [_read_route(reader, path, raw, mailbox_ids, target_ids)
                  for path, raw in reader.items("routes", top.get("routes"))]
    if mailboxes and not targets and settings.enable_background_tasks:
        reader.error("targets", "at least one target is required when a mailbox is configured")
    providers = _read_providers(reader, top.get("providers"), settings)
    if reader.errors:
        return None
    try:
        return ServiceConfig(mailboxes=tuple(mailboxes), targets=tuple(targets), r2=R2Config.from_settings(settings),
                             providers=providers, routes=tuple(routes), ops=TargetConfig.ops_from_settings(settings))
    except ValueError as exc:  # every rule of ServiceConfig is checked above with a path; this is a safety net
        reader.error(source, str(exc))
        return None


def _default_routes(mailboxes: list[Any], targets: list[Any]) -> list[RouteConfig]:
    """Without ``routes``: every email with links goes to every target (and, when a mailbox sets
    ``allow_without_links``, every email without links too), as the environment form does for target default."""
    target_ids = tuple(target.id for target in targets if isinstance(target, TargetConfig))
    if not target_ids:
        return []
    routes = [RouteConfig(to=target_ids)]
    if any(isinstance(mailbox, MailboxConfig) and mailbox.allow_without_links for mailbox in mailboxes):
        routes.append(RouteConfig(match=RouteMatch(has_links=False), to=target_ids))
    return routes


def _check_unique(reader: _Reader, section: str, kind: str, raw: Any) -> set[str]:
    """The valid ids of a section; a repeated id is an error at each later occurrence."""
    seen: set[str] = set()
    if not isinstance(raw, list):
        return seen
    for index, item in enumerate(raw):
        value = item.get("id") if isinstance(item, dict) else None
        if not isinstance(value, str) or not _valid_id(value):
            continue
        if value in seen:
            reader.error(f"{section}[{index}].id", f"{kind} id {value!r} is used twice")
        seen.add(value)
    return seen


def _check_state_keys(reader: _Reader, mailboxes: list[Any]) -> None:
    seen: set[str] = set()
    ids: set[str] = set()
    for index, mailbox in enumerate(mailboxes):
        if not isinstance(mailbox, MailboxConfig) or mailbox.id in ids:  # a repeated id is its own error
            continue
        ids.add(mailbox.id)
        if mailbox.state_key in seen:
            reader.error(f"mailboxes[{index}].folder", f"shares the state of another mailbox ({mailbox.state_key}):"
                                                       " rename the folder or the id")
        seen.add(mailbox.state_key)


def _read_id(reader: _Reader, path: str, raw: Any, kind: str) -> Any:
    value = reader.string(path, raw)
    if value is _BAD:
        return _BAD
    if not _valid_id(value):
        return reader.error(path, f"{kind} id {value!r} must be 1-32 characters of a-z, 0-9 and -")
    if kind == "target" and value == DROP:
        return reader.error(path, "drop is reserved (a route's to: drop)")
    if kind == "target" and value == OPS_TARGET_ID:
        return reader.error(path, "ops is reserved (the operational alerts' target, OPS_WEBHOOK_URL)")
    return value


def _valid_id(value: str) -> bool:
    try:
        check_id("x", value)
    except ValueError:
        return False
    return True


def _read_mailbox(reader: _Reader, path: str, raw: Any, settings: Settings) -> MailboxConfig | Any:
    errors_before = len(reader.errors)
    values = reader.mapping(path, raw, MAILBOX_KEYS, required=("id", "server", "user"))
    if values is None:
        return _BAD
    if values.get("password") is None and values.get("auth") is None:
        reader.error(_join(path, "password"), "required (or an auth block with method: oauth2)")
    opt = functools.partial(reader.optional, values, path)
    mailbox_id = opt("id", lambda at, raw: _read_id(reader, at, raw, "mailbox"), _BAD)
    server = opt("server", reader.string, _BAD)
    user = opt("user", reader.string, _BAD)
    credentials = _read_credentials(reader, path, values, settings)
    tls = opt("tls", lambda at, raw: _enum(reader, at, reader.string(at, raw), TlsMode), TlsMode.IMPLICIT)
    port = opt("port", lambda at, raw: reader.number(at, raw, SPEC_BY_ENV["IMAP_PORT"].parse),
               _DEFAULT_PORTS.get(tls, 993))
    ca_file = opt("ca_file", lambda at, raw: reader.string(at, raw, check=_existing_file))
    senders = tuple(reader.string_list(_join(path, "senders"), values.get("senders"), check=_sender_entry))
    sender_auth = opt("sender_auth", lambda at, raw: _read_sender_auth(reader, at, raw))
    if sender_auth not in (None, _BAD) and not senders:
        reader.error(_join(path, "sender_auth"), "needs senders: authentication applies to allow-listed senders")
    tuned = {key: reader.spec_value(_join(path, key), values.get(key), env) for key, env in _MAILBOX_SPECS.items()}
    first_start = tuned["first_start_max_age_hours"]
    if isinstance(first_start, float) and settings.state_retention_days * 24 <= first_start:
        reader.error(_join(path, "first_start_max_age_hours"), _retention_reason(settings))
    if len(reader.errors) > errors_before:
        return _BAD
    try:
        return MailboxConfig(
            id=mailbox_id, server=server, user=user, credentials=credentials, port=port, tls=tls,
            ca_file=ca_file, folder=tuned["folder"], sender_allowlist=senders, sender_auth=sender_auth,
            poll_interval_seconds=tuned["poll_interval_seconds"], use_idle=tuned["idle"],
            first_start_max_age_hours=first_start, mark_as_read=tuned["mark_as_read"],
            allow_no_server_done_mark=tuned["allow_no_server_done_mark"],
            timeout_seconds=tuned["timeout_seconds"], reconnect_max_seconds=tuned["reconnect_max_seconds"],
            allow_without_links=tuned["allow_without_links"], fetch_max_failures=tuned["fetch_max_failures"],
            max_links_per_email=tuned["max_links_per_email"])
    except ValueError as exc:
        return reader.error(path, str(exc))


def _read_credentials(reader: _Reader, path: str, values: dict[str, Any],
                      settings: Settings) -> PasswordCredentials | OAuth2Credentials | Any:
    """``password``, or an ``auth`` block with ``method: oauth2`` (``method: password`` takes ``password``)."""
    auth = reader.optional(values, path, "auth", lambda at, raw: _read_auth(reader, at, raw, settings))
    raw_password = values.get("password")
    if isinstance(auth, OAuth2Credentials):
        if raw_password is not None:
            return reader.error(_join(path, "password"), "cannot be combined with auth method oauth2")
        return auth
    if auth is _BAD or (auth is None and raw_password is None):  # the missing password is reported already
        return _BAD
    if raw_password is None:
        return reader.error(_join(path, "password"), "required with auth method password")
    password = reader.string(_join(path, "password"), raw_password, secret=True, strip=False)
    return _BAD if password is _BAD else PasswordCredentials(password)


def _read_auth(reader: _Reader, path: str, raw: Any, settings: Settings) -> OAuth2Credentials | str | Any:
    """A mailbox's ``auth`` block: ``AuthMethod.PASSWORD.value`` for ``method: password`` (nothing else may be
    given then), else the ``OAuth2Credentials`` it describes, checked by ``OAuth2Credentials.problems``."""
    values = reader.mapping(path, raw, AUTH_KEYS, required=("method",))
    if values is None or values.get("method") is None:
        return _BAD
    method = _enum(reader, _join(path, "method"), reader.string(_join(path, "method"), values["method"]), AuthMethod)
    if method is AuthMethod.PASSWORD:
        extra = [key for key in values if key != "method" and values[key] is not None]
        return reader.error(_join(path, extra[0]), "only with method: oauth2") if extra else method.value
    if method is _BAD:
        return _BAD
    errors_before = len(reader.errors)
    fields = _auth_fields(reader, path, values)
    if values.get("provider") is None:
        reader.error(_join(path, "provider"), "required with method: oauth2")
    if len(reader.errors) > errors_before:
        return _BAD
    credentials = OAuth2Credentials(allow_insecure=settings.oauth_allow_insecure, **fields)
    for key, reason in credentials.problems():
        reader.error(_join(path, key), reason)
    if credentials.provider is OAuthProvider.REFRESH_TOKEN and not settings.redis_url \
            and not settings.state_dir_persistent:
        reader.error(_join(path, "provider"), "refresh_token needs REDIS_URL (or STATE_DIR_PERSISTENT=true): "
                                              "providers rotate refresh tokens, and the newest must survive a restart")
    return _BAD if len(reader.errors) > errors_before else credentials


def _auth_fields(reader: _Reader, path: str, values: dict[str, Any]) -> dict[str, Any]:
    """The ``OAuth2Credentials`` keyword arguments of an ``auth`` block (errors recorded on the reader)."""
    opt = functools.partial(reader.optional, values, path)
    fields: dict[str, Any] = {
        "provider": opt("provider", lambda at, raw: _enum(reader, at, reader.string(at, raw), OAuthProvider)),
        "mechanism": opt("mechanism", lambda at, raw: _mechanism(reader, at, raw), SaslMechanism.XOAUTH2),
        "token_command_timeout_seconds": reader.spec_value(
            _join(path, "token_command_timeout_seconds"), values.get("token_command_timeout_seconds"),
            "OAUTH_TOKEN_COMMAND_TIMEOUT_SECONDS")}
    for key in _AUTH_TEXT:
        fields[key] = opt(key, reader.string)
    for key in _AUTH_SECRETS:
        fields[key] = opt(key, lambda at, raw: reader.string(at, raw, secret=True, strip=False))
    for key in _AUTH_URLS:
        fields[key] = opt(key, lambda at, raw: reader.string(at, raw, check=http_url))
    for key in OAUTH_FILE_KEYS:
        fields[key] = opt(key, lambda at, raw: reader.string(at, raw, check=_existing_file))
    if fields["authority_host"] is None:
        fields["authority_host"] = MICROSOFT_AUTHORITY_HOST
    return fields


def _mechanism(reader: _Reader, path: str, raw: Any) -> SaslMechanism | Any:
    word = reader.string(path, raw)
    if word is _BAD:
        return _BAD
    try:
        return SaslMechanism(word.upper())
    except ValueError:
        return reader.error(path, f"expected one of {' | '.join(member.value for member in SaslMechanism)}")


def _read_sender_auth(reader: _Reader, path: str, raw: Any) -> SenderAuth | Any:
    values = reader.mapping(path, raw, SENDER_AUTH_KEYS, required=SENDER_AUTH_KEYS)
    if values is None or values.get("authserv_id") is None:
        return _BAD
    value = reader.string(_join(path, "authserv_id"), values["authserv_id"], check=authserv_id)
    return _BAD if value is _BAD else SenderAuth(value)


def _read_target(reader: _Reader, path: str, raw: Any, settings: Settings) -> TargetConfig | Any:
    errors_before = len(reader.errors)
    values = reader.mapping(path, raw, TARGET_KEYS, required=("id", "url"))
    if values is None:
        return _BAD
    opt = functools.partial(reader.optional, values, path)
    target_id = opt("id", lambda at, raw: _read_id(reader, at, raw, "target"), _BAD)
    allow_insecure = reader.spec_value(_join(path, "allow_insecure"), values.get("allow_insecure"),
                                       "WEBHOOK_ALLOW_INSECURE")
    url = opt("url", lambda at, raw: _read_target_url(reader, at, raw, allow_insecure is True), _BAD)
    secret = opt("secret", lambda at, raw: reader.string(
        at, raw, secret=True, strip=False, placeholder=_PLACEHOLDER_SECRET,
        check=lambda value: _checked(validate_webhook_secret, value, at)))
    profile = opt("profile", lambda at, raw: _enum(reader, at, reader.string(at, raw), TargetProfile),
                  TargetProfile.GENERIC)
    basic_auth = opt("basic_auth", lambda at, raw: _read_basic_auth(reader, at, raw))
    headers = opt("headers", lambda at, raw: _read_headers(reader, at, raw, basic_auth is not None), ())
    timeout = reader.spec_value(_join(path, "timeout_seconds"), values.get("timeout_seconds"),
                                "WEBHOOK_TIMEOUT_SECONDS")
    concurrency = opt("concurrency", lambda at, raw: reader.number(at, raw, integer(1, 256)),
                      DEFAULT_DELIVERY_CONCURRENCY)
    max_body_bytes = opt("max_body_bytes", lambda at, raw: reader.number(at, raw, integer(1024, 1024 ** 3)))
    rate = opt("rate_per_second", lambda at, raw: reader.number(at, raw, _positive_number))
    retry = opt("retry", lambda at, raw: _read_retry(reader, at, raw, settings), RetryPolicy.from_settings(Settings()))
    window = opt("window", lambda at, raw: _read_window(reader, at, raw))
    ca_file = opt("ca_file", lambda at, raw: reader.string(at, raw, check=_existing_file))
    if len(reader.errors) > errors_before:
        return _BAD
    try:
        return TargetConfig(id=target_id, url=url, secret=secret, headers=headers, timeout_seconds=timeout,
                            concurrency=concurrency, retry=retry, allow_insecure=allow_insecure, ca_file=ca_file,
                            profile=profile, basic_auth=basic_auth, max_body_bytes=max_body_bytes,
                            rate_per_second=rate, window=window)
    except ValueError as exc:
        return reader.error(path, str(exc))


def _read_target_url(reader: _Reader, path: str, raw: Any, allow_insecure: bool) -> Any:
    url = reader.string(path, raw, secret=True, placeholder=_PLACEHOLDER_URL,
                        check=lambda value: _target_url(path, value, allow_insecure))
    if isinstance(url, str) and url != _PLACEHOLDER_URL:
        reader.secrets.extend(_url_secrets(url))
    return url


def _target_url(path: str, value: str, allow_insecure: bool) -> str:
    url = http_url(value)
    check_outside_url(path, url, allow_insecure, "allow_insecure", "receiver")
    return url


def _url_secrets(url: str) -> list[str]:
    """Besides the whole URL: its path (the capability part) and any password in it, as for WEBHOOK_URL."""
    parts = urlsplit(url)
    found = [parts.path] if len(parts.path) > 1 else []
    if parts.password:
        found.append(parts.password)
    return found


def _read_basic_auth(reader: _Reader, path: str, raw: Any) -> BasicAuth | Any:
    values = reader.mapping(path, raw, BASIC_AUTH_KEYS, required=BASIC_AUTH_KEYS)
    if values is None or values.get("user") is None or values.get("password") is None:
        return _BAD
    user = reader.string(_join(path, "user"), values["user"], check=_basic_auth_user)
    password = reader.string(_join(path, "password"), values["password"], secret=True, strip=False,
                             check=_header_safe)
    if user is _BAD or password is _BAD:
        return _BAD
    return BasicAuth(user, password)


def _read_headers(reader: _Reader, path: str, raw: Any, has_basic_auth: bool) -> tuple[tuple[str, str], ...] | Any:
    if not isinstance(raw, dict):
        return reader.error(path, f"expected a mapping of header names to values, got {_kind(raw)}")
    headers: list[tuple[str, str]] = []
    seen: set[str] = set()
    for name, raw_value in raw.items():
        header_path = _join(path, str(name))
        if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
            reader.error(header_path, "not a valid header name")
            continue
        lowered = name.lower()
        if lowered.startswith("webhook-") or lowered in _RESERVED_HEADERS:
            reader.error(header_path, "set by the service itself (webhook-*, content-type, content-length and host "
                                      "are refused)")
            continue
        if lowered == "authorization" and has_basic_auth:
            reader.error(header_path, "cannot be combined with basic_auth (which sets Authorization)")
            continue
        if lowered in seen:
            reader.error(header_path, "given twice (header names ignore case)")
            continue
        seen.add(lowered)
        value = reader.string(header_path, raw_value, secret=True, check=_header_safe)
        if value is not _BAD:
            headers.append((name, value))
    return tuple(headers)


def _read_retry(reader: _Reader, path: str, raw: Any, settings: Settings) -> RetryPolicy | Any:
    errors_before = len(reader.errors)
    values = reader.mapping(path, raw, RETRY_KEYS)
    if values is None:
        return _BAD
    schedule: Any = SPEC_BY_ENV["WEBHOOK_RETRY_SCHEDULE"].default
    if values.get("schedule") is not None:
        items = reader.items(_join(path, "schedule"), values["schedule"])
        if isinstance(values["schedule"], list) and not items:
            reader.error(_join(path, "schedule"), "needs at least one delay")
        schedule = tuple(reader.number(item_path, item, number(0.001, 30 * 86400)) for item_path, item in items)
    hours = reader.spec_value(_join(path, "hours"), values.get("hours"), "WEBHOOK_RETRY_HOURS")
    if isinstance(hours, float) and settings.state_retention_days * 24 <= hours:
        reader.error(_join(path, "hours"), _retention_reason(settings))
    if len(reader.errors) > errors_before:
        return _BAD
    try:
        return RetryPolicy(schedule=tuple(float(delay) for delay in schedule), hours=hours)
    except ValueError as exc:
        return reader.error(path, str(exc))


def _read_window(reader: _Reader, path: str, raw: Any) -> DeliveryWindow | Any:
    errors_before = len(reader.errors)
    values = reader.mapping(path, raw, WINDOW_KEYS, required=("timezone",))
    if values is None:
        return _BAD
    timezone: Any = _BAD
    if values.get("timezone") is not None:
        timezone = reader.string(_join(path, "timezone"), values["timezone"], check=_timezone)
    days: Any = tuple(range(7))
    if values.get("days") is not None:
        items = reader.items(_join(path, "days"), values["days"])
        if isinstance(values["days"], list) and not items:
            reader.error(_join(path, "days"), "needs at least one day")
        days = tuple(reader.string(item_path, item, check=_weekday) for item_path, item in items)
    opens = _read_time(reader, _join(path, "from"), values.get("from"))
    closes = _read_time(reader, _join(path, "to"), values.get("to"))
    closed: list[Any] = []
    for item_path, item in reader.items(_join(path, "closed_dates"), values.get("closed_dates")):
        if isinstance(item, datetime.date) and not isinstance(item, datetime.datetime):
            closed.append(item)  # an unquoted YYYY-MM-DD: a date either way
        else:
            closed.append(reader.string(item_path, item, check=_iso_date))
    if len(reader.errors) > errors_before:
        return _BAD
    try:
        window = DeliveryWindow(timezone=timezone, days=days, opens=opens, closes=closes, closed_dates=tuple(closed))
        check_window(window, time.time())  # a window that never opens would hold its items for ever
        return window
    except ValueError as exc:
        return reader.error(path, str(exc))


def _read_time(reader: _Reader, path: str, raw: Any) -> datetime.time | Any:
    if raw is None:
        return datetime.time(0, 0)
    if isinstance(raw, int) and not isinstance(raw, bool) and 0 <= raw < 24 * 60:
        # YAML 1.1 reads an unquoted 19:00 as the sexagesimal number 1140
        text = f"{raw // 60:02d}:{raw % 60:02d}"
        return reader.error(path, f"YAML read the number {raw} (an unquoted {text}?): quote the time, "
                                  f"e.g. \"{text}\"")
    return reader.string(path, raw, check=_hh_mm)


def _read_route(reader: _Reader, path: str, raw: Any, mailbox_ids: set[str], target_ids: set[str]) -> Any:
    errors_before = len(reader.errors)
    values = reader.mapping(path, raw, ROUTE_KEYS, required=("to",))
    if values is None:
        return _BAD
    match = _read_match(reader, _join(path, "match"), values.get("match"), mailbox_ids)
    to, drop = _read_route_to(reader, _join(path, "to"), values.get("to"), target_ids)
    continue_ = False
    if values.get("continue") is not None:
        continue_ = reader.boolean(_join(path, "continue"), values["continue"])
    if len(reader.errors) > errors_before:
        return _BAD
    try:
        return RouteConfig(match=match, to=to, drop=drop, continue_=continue_)
    except ValueError as exc:
        return reader.error(path, str(exc))


def _read_route_to(reader: _Reader, path: str, raw: Any, target_ids: set[str]) -> tuple[tuple[str, ...], bool]:
    """A route's ``to``: (target ids, False) or ((), True) for the word drop."""
    if raw == DROP:
        return (), True
    to: tuple[str, ...] = ()
    if raw is None:
        return to, False  # reported as required
    if not isinstance(raw, list):
        reader.error(path, f"expected a list of target ids or the word drop, got {_kind(raw)}")
        return to, False
    if not raw:
        reader.error(path, "needs at least one target id (or the word drop)")
    for item_path, item in reader.items(path, raw):
        target_id = reader.string(item_path, item)
        if target_id is _BAD:
            continue
        if target_id == DROP:
            reader.error(item_path, "drop is a word of its own: write to: drop")
        elif target_id not in target_ids:
            reader.error(item_path, f"unknown target {target_id!r}")
        else:
            to += (target_id,)
    return to, False


def _read_match(reader: _Reader, path: str, raw: Any, mailbox_ids: set[str]) -> RouteMatch | Any:
    if raw is None:
        return RouteMatch()
    values = reader.mapping(path, raw, MATCH_KEYS)
    if values is None:
        return _BAD
    mailboxes = []
    for item_path, item in reader.items(_join(path, "mailbox"), values.get("mailbox")):
        mailbox_id = reader.string(item_path, item)
        if mailbox_id is not _BAD and mailbox_id not in mailbox_ids:
            reader.error(item_path, f"unknown mailbox {mailbox_id!r}")
        mailboxes.append(mailbox_id)
    senders = reader.string_list(_join(path, "sender"), values.get("sender"), check=_sender_entry)
    providers = reader.string_list(_join(path, "provider"), values.get("provider"), check=_provider)
    subject = None
    if values.get("subject") is not None:
        subject = reader.string(_join(path, "subject"), values["subject"], strip=False, check=_regex)
    has_links = None
    if values.get("has_links") is not None:
        has_links = reader.boolean(_join(path, "has_links"), values["has_links"])
    if _BAD in (subject, has_links) or _BAD in mailboxes or _BAD in senders or _BAD in providers:
        return _BAD
    return RouteMatch(mailboxes=tuple(mailboxes), senders=tuple(senders), subject=subject,
                      providers=tuple(providers), has_links=has_links)


# --- value checks: str -> value, ValueError with the reason -----------------------------------------------------

def _checked(validate: Callable[..., None], value: str, path: str) -> str:
    validate(value, path)
    return value


def _existing_file(value: str) -> str:
    import os

    if not os.path.isfile(value):
        raise ValueError("file not found")
    return value


def _sender_entry(value: str) -> str:
    value = value.lower()
    if "@" not in value or any(char.isspace() or char == "," for char in value):
        raise ValueError("expected an address or @domain")
    return value


def _read_providers(reader: _Reader, raw: Any, settings: Settings) -> tuple[ProviderConfig, ...]:
    """The environment's provider settings, with each key the file's ``providers:`` mapping gives (by provider
    name) in its place."""
    configs = {config.id: config for config in ProviderConfig.all_from_settings(settings)}
    if raw is None:
        return tuple(configs.values())
    if not isinstance(raw, dict):
        reader.error("providers", f"expected a mapping of provider names, got {_kind(raw)}")
        return tuple(configs.values())
    for name, entry in raw.items():
        path = _join("providers", str(name))
        if name not in configs:
            reader.error(path, f"unknown provider (expected one of {', '.join(configs)})")
            continue
        configs[name] = _read_provider(reader, path, entry, configs[name])
    return tuple(configs.values())


def _read_provider(reader: _Reader, path: str, raw: Any, base: ProviderConfig) -> ProviderConfig:
    values = reader.mapping(path, raw, PROVIDER_KEYS) if raw is not None else {}
    if values is None:
        return base
    errors_before = len(reader.errors)
    opt = functools.partial(reader.optional, values, path)
    changes: dict[str, Any] = {}
    for key in ("resolve", "resolve_tracking_links"):
        if values.get(key) is not None:
            changes[key] = reader.boolean(_join(path, key), values[key])
    for key, parse in (("timeout_seconds", number(0.1, 300)), ("budget_seconds", number(0.5, 3600)),
                       ("max_files", integer(1, 10000))):
        if values.get(key) is not None:
            changes[key] = reader.number(_join(path, key), values[key], parse)
    if values.get("api_key") is not None:
        changes["api_key"] = opt("api_key", lambda at, raw: reader.string(at, raw, secret=True))
        changes.setdefault("resolve", True)
    endpoint = _read_provider_endpoint(reader, path, values, base)
    if len(reader.errors) > errors_before:
        return base
    try:
        return dataclasses.replace(base, endpoint=endpoint, **changes)
    except ValueError as exc:
        reader.error(path, str(exc))
        return base


def _read_provider_endpoint(reader: _Reader, path: str, values: dict[str, Any],
                            base: ProviderConfig) -> ProviderEndpoint | None:
    given = [key for key in ("api_base", "allow_insecure", "ca_file") if values.get(key) is not None]
    if not given:
        return base.endpoint
    if base.endpoint is None:
        reader.error(_join(path, given[0]), f"provider {base.id} calls no base URL")
        return None
    opt = functools.partial(reader.optional, values, path)
    url = opt("api_base", lambda at, raw: reader.string(at, raw), base.endpoint.base_url)
    allow = opt("allow_insecure", lambda at, raw: reader.boolean(at, raw), base.endpoint.allow_insecure)
    ca_file = opt("ca_file", lambda at, raw: reader.string(at, raw, check=_existing_file), base.endpoint.ca_file)
    if _BAD in (url, allow, ca_file):
        return None
    try:
        return ProviderEndpoint(url, allow_insecure=allow, ca_file=ca_file, public_url=base.endpoint.public_url)
    except ValueError as exc:
        reader.error(_join(path, "api_base"), str(exc))
        return None


def _provider(value: str) -> str:
    names = provider_names()
    if value.lower() not in names:
        raise ValueError(f"unknown provider (expected one of {', '.join(names)})")
    return value.lower()


def provider_names() -> tuple[str, ...]:
    """The providers a route's ``match.provider`` may name (the link registry's)."""
    from email_processing.links import PROVIDERS

    return tuple(provider.name for provider in PROVIDERS)


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"not a valid regular expression ({exc})") from None
    return value


def _header_safe(value: str) -> str:
    if any(char in value for char in "\r\n\x00"):
        raise ValueError("must not contain a line break or NUL")
    return value


def _basic_auth_user(value: str) -> str:
    if ":" in value:
        raise ValueError("must not contain a colon (RFC 7617)")
    return _header_safe(value)


def _positive_number(raw: str) -> float:
    value = number(None, 100000)(raw)
    if not value > 0:
        raise ValueError("must be > 0")
    return float(value)


def _timezone(value: str) -> str:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError("unknown time zone (expected an IANA name such as Europe/Paris)") from None
    return value


def _weekday(value: str) -> int:
    word = value.lower()
    if word not in WEEKDAYS:
        raise ValueError(f"expected one of {', '.join(WEEKDAYS)}")
    return WEEKDAYS.index(word)


def _hh_mm(value: str) -> datetime.time:
    match = _HH_MM.fullmatch(value)
    if not match:
        raise ValueError("expected a time HH:MM (00:00-23:59)")
    return datetime.time(int(match.group(1)), int(match.group(2)))


def _iso_date(value: str) -> datetime.date:
    if not _DATE.fullmatch(value):
        raise ValueError("expected a date YYYY-MM-DD")
    try:
        return datetime.date.fromisoformat(value)
    except ValueError:
        raise ValueError("not a calendar date") from None


def _enum(reader: _Reader, path: str, word: Any, kind: Any) -> Any:
    if word is _BAD:
        return _BAD
    try:
        return kind(word.lower())
    except ValueError:
        return reader.error(path, f"expected one of {' | '.join(member.value for member in kind)}")


def _retention_reason(settings: Settings) -> str:
    return (f"must be shorter than STATE_RETENTION_DAYS ({settings.state_retention_days * 24:g} h): done records "
            "have to outlive it")


# --- YAML -------------------------------------------------------------------------------------------------------

class _UniqueKeySafeLoader(yaml.SafeLoader):
    """``yaml.safe_load``'s loader, refusing a key given twice in one mapping (safe_load keeps the last silently:
    a second ``password:`` would win unseen)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key; the base constructor reports it
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice in one mapping", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _yaml_reason(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return " ".join(f"{problem}{where}".split())


def _not_a_string(raw: Any) -> str:
    """The reason for a non-string where a string belongs, naming the YAML 1.1 reading when that is the cause."""
    if isinstance(raw, bool):
        return (f"expected a string, YAML read the boolean {str(raw).lower()} (unquoted yes/no/on/off/true/false): "
                "quote the value")
    if isinstance(raw, (int, float)):
        return f"expected a string, YAML read the number {raw!r}: quote the value, e.g. \"{raw!r}\""
    if isinstance(raw, (datetime.date, datetime.datetime)):
        return f"expected a string, YAML read the date {raw.isoformat()}: quote the value"
    if raw is None:
        return "required"
    return f"expected a string, got {_kind(raw)}"


def _kind(raw: Any) -> str:
    if raw is None:
        return "nothing"
    if isinstance(raw, bool):
        return f"the boolean {str(raw).lower()}"
    if isinstance(raw, (int, float)):
        return f"the number {raw!r}"
    if isinstance(raw, str):
        return "a string"
    if isinstance(raw, list):
        return "a list"
    if isinstance(raw, dict):
        return "a mapping"
    if isinstance(raw, (datetime.date, datetime.datetime)):
        return f"the date {raw.isoformat()}"
    return type(raw).__name__


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
