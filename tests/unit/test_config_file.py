"""The YAML configuration file: typed values out, every error with its path, ${} references, YAML 1.1 surprises."""

from __future__ import annotations

import datetime
import textwrap
from pathlib import Path

import pytest

import log_setup
from config import BasicAuth, RouteConfig, RouteMatch, SenderAuth, ServiceConfig, TargetProfile, TlsMode
from config_file import (
    UNRESOLVED,
    ConfigFileError,
    collect_config_errors,
    load_config_file,
    parse_config_text,
    service_config,
)
from settings import ConfigError, Settings

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
ENV = {"PW": "imap-pass-1", "URL": "https://hook.example.com/secret-path", "SECRET": SECRET, "TOKEN": "tok-123"}

MINIMAL = """
mailboxes:
  - id: studio
    server: imap.example.com
    user: studio@example.com
    password: ${PW}
targets:
  - id: make
    url: ${URL}
"""


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "render-signal.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return str(path)


def errors_of(tmp_path: Path, text: str, environ=None, settings=None, **options) -> list[str]:
    return collect_config_errors(write(tmp_path, text), ENV if environ is None else environ,
                                 settings or Settings(), **options)


def load(tmp_path: Path, text: str, environ=None, **options) -> tuple[ServiceConfig, list[str]]:
    return load_config_file(write(tmp_path, text), ENV if environ is None else environ, Settings(), **options)


def mailbox_with(extra: str) -> str:
    return MINIMAL.replace("    password: ${PW}\n", "    password: ${PW}\n" + textwrap.indent(
        textwrap.dedent(extra).strip("\n"), "    ") + "\n")


def target_with(extra: str) -> str:
    return MINIMAL + textwrap.indent(textwrap.dedent(extra).strip("\n"), "    ") + "\n"


# --- a valid file ---------------------------------------------------------------------------------------------

def test_a_minimal_file_gives_typed_values_with_the_environment_defaults(tmp_path):
    # Given a file with one mailbox and one target and nothing else
    config, secrets = load(tmp_path, MINIMAL)
    # Then every unset field takes the default of its environment variable
    (mailbox,), (target,) = config.mailboxes, config.targets
    assert (mailbox.id, mailbox.server, mailbox.user, mailbox.password) == ("studio", "imap.example.com",
                                                                            "studio@example.com", "imap-pass-1")
    assert (mailbox.port, mailbox.tls, mailbox.folder, mailbox.use_idle) == (993, TlsMode.IMPLICIT, "INBOX", True)
    assert (mailbox.poll_interval_seconds, mailbox.timeout_seconds, mailbox.reconnect_max_seconds) == (30, 30, 60)
    assert (mailbox.first_start_max_age_hours, mailbox.mark_as_read, mailbox.fetch_max_failures) == (72, True, 3)
    assert (mailbox.max_links_per_email, mailbox.allow_without_links, mailbox.sender_auth) == (50, False, None)
    assert (target.url, target.secret, target.profile, target.timeout_seconds) == (ENV["URL"], None,
                                                                                  TargetProfile.GENERIC, 30)
    assert target.retry.schedule == (5.0, 30.0, 120.0, 600.0, 1800.0, 3600.0) and target.retry.hours == 24
    assert (target.concurrency, target.window, target.headers, target.basic_auth) == (4, None, (), None)


def test_every_key_of_a_mailbox_and_a_target_reaches_its_field(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    text = f"""
    mailboxes:
      - id: studio
        server: imap.example.com
        port: 1143
        tls: starttls
        ca_file: {ca}
        user: studio@example.com
        password: ${{PW}}
        folder: Clients
        senders: ["Client@Example.com", "@agency.example"]
        sender_auth: {{authserv_id: MX.Example.com}}
        idle: false
        poll_interval_seconds: 12.5
        timeout_seconds: 20
        reconnect_max_seconds: 90
        first_start_max_age_hours: 6
        mark_as_read: false
        fetch_max_failures: 5
        max_links_per_email: 10
        allow_without_links: true
    targets:
      - id: make
        url: ${{URL}}
        secret: ${{SECRET}}
        profile: zapier
        headers: {{x-api-key: "Bearer ${{TOKEN}}"}}
        timeout_seconds: 10
        concurrency: 8
        max_body_bytes: 2000000
        rate_per_second: 5
        retry: {{schedule: [1, 2.5], hours: 2}}
        window: {{timezone: Europe/Paris, days: [mon, fri], from: "19:00", to: "07:30",
                 closed_dates: ["2026-12-25"]}}
        allow_insecure: false
        ca_file: {ca}
      - id: basic
        url: http://127.0.0.1:9000/hook
        allow_insecure: true
        basic_auth: {{user: robot, password: " p w "}}
    """
    config, _ = load(tmp_path, text)
    mailbox = config.mailbox("studio")
    assert (mailbox.port, mailbox.tls, mailbox.ca_file, mailbox.folder) == (1143, TlsMode.STARTTLS, str(ca), "Clients")
    assert mailbox.sender_allowlist == ("client@example.com", "@agency.example")
    assert mailbox.sender_auth == SenderAuth("mx.example.com")
    assert (mailbox.use_idle, mailbox.poll_interval_seconds, mailbox.timeout_seconds) == (False, 12.5, 20)
    assert (mailbox.reconnect_max_seconds, mailbox.first_start_max_age_hours, mailbox.mark_as_read) == (90, 6, False)
    assert (mailbox.fetch_max_failures, mailbox.max_links_per_email, mailbox.allow_without_links) == (5, 10, True)
    target = config.target("make")
    assert (target.secret, target.profile, target.headers) == (SECRET, TargetProfile.ZAPIER,
                                                               (("x-api-key", "Bearer tok-123"),))
    assert (target.timeout_seconds, target.concurrency, target.max_body_bytes, target.rate_per_second) == (10, 8,
                                                                                                          2000000, 5)
    assert (target.retry.schedule, target.retry.hours, target.ca_file) == ((1.0, 2.5), 2, str(ca))
    assert target.window is not None
    assert (target.window.timezone, target.window.days) == ("Europe/Paris", (0, 4))
    assert (target.window.opens, target.window.closes) == (datetime.time(19, 0), datetime.time(7, 30))
    assert target.window.closed_dates == (datetime.date(2026, 12, 25),)
    basic = config.target("basic")
    assert basic.allow_insecure and basic.basic_auth == BasicAuth("robot", " p w ")


def test_the_port_defaults_to_143_without_implicit_tls(tmp_path):
    config, _ = load(tmp_path, mailbox_with("tls: none"))
    assert config.mailboxes[0].port == 143 and config.mailboxes[0].tls is TlsMode.NONE


def test_routes_are_read_in_order_with_fan_out_drop_and_continue(tmp_path):
    text = MINIMAL + """
  - id: n8n
    url: https://n8n.example.com/x
routes:
  - match: {mailbox: [studio], sender: ["@Agency.example"], subject: "(?i)final", provider: [dropbox],
            has_links: true}
    to: [make, n8n]
    continue: true
  - match: {has_links: false}
    to: drop
  - to: [n8n]
"""
    config, _ = load(tmp_path, text)
    assert config.routes == (
        RouteConfig(match=RouteMatch(mailboxes=("studio",), senders=("@agency.example",), subject="(?i)final",
                                     providers=("dropbox",), has_links=True), to=("make", "n8n"), continue_=True),
        RouteConfig(match=RouteMatch(has_links=False), drop=True),
        RouteConfig(to=("n8n",)),
    )


def test_without_routes_every_email_with_links_goes_to_every_target(tmp_path):
    config, _ = load(tmp_path, MINIMAL + "  - id: other\n    url: https://other.example.com/\n")
    assert config.routes == (RouteConfig(to=("make", "other")),)


def test_without_routes_a_mailbox_allowing_emails_without_links_adds_the_route_for_them(tmp_path):
    config, _ = load(tmp_path, mailbox_with("allow_without_links: true"))
    assert config.routes == (RouteConfig(to=("make",)), RouteConfig(match=RouteMatch(has_links=False), to=("make",)))


def test_r2_stays_global_in_the_environment(tmp_path):
    settings = Settings.from_env({"R2_FETCH_ENABLED": "true", "R2_FETCH_ENDPOINT": "https://w.example.com",
                                  "R2_FETCH_TOKEN": "t" * 20})
    config, _ = load_config_file(write(tmp_path, MINIMAL), ENV, settings)
    assert config.r2.fetch_enabled and config.r2.fetch_endpoint == "https://w.example.com"


# --- ${} references -------------------------------------------------------------------------------------------

def test_a_reference_is_resolved_inside_a_string_and_a_double_dollar_is_a_literal_dollar(tmp_path):
    config, _ = load(tmp_path, mailbox_with('folder: "Cost $$5 ${TOKEN}-end"'))
    assert config.mailboxes[0].folder == "Cost $5 tok-123-end"


def test_a_missing_reference_is_an_error_naming_the_variable_at_its_path(tmp_path):
    assert errors_of(tmp_path, MINIMAL, environ={"URL": ENV["URL"]}) == [
        "CONFIG: mailboxes[0].password: ${PW} is not set in the environment"]


def test_an_empty_reference_is_an_error(tmp_path):
    assert errors_of(tmp_path, MINIMAL, environ={**ENV, "PW": ""}) == [
        "CONFIG: mailboxes[0].password: ${PW} is empty in the environment"]


def test_a_lone_dollar_is_an_error_that_says_how_to_write_one(tmp_path):
    assert errors_of(tmp_path, mailbox_with('folder: "a$b"')) == [
        "CONFIG: mailboxes[0].folder: a $ starts a ${NAME} reference; write $$ for a literal $"]


def test_a_malformed_reference_is_an_error(tmp_path):
    assert errors_of(tmp_path, mailbox_with('folder: "${not a name}"')) == [
        "CONFIG: mailboxes[0].folder: a $ starts a ${NAME} reference; write $$ for a literal $"]


def test_a_resolved_value_is_not_resolved_again(tmp_path):
    config, _ = load(tmp_path, MINIMAL, environ={**ENV, "PW": "${URL}$"})
    assert config.mailboxes[0].password == "${URL}$"


def test_allow_missing_env_resolves_missing_references_to_placeholders_without_error(tmp_path):
    # Given a file whose every secret comes from variables that are not set
    text = target_with('secret: ${SECRET}\nheaders: {x-key: "Bearer ${TOKEN}"}')
    # When it is read with allow_missing_env
    config, secrets = load(tmp_path, text, environ={}, allow_missing_env=True)
    # Then it is valid, the placeholders pass the format checks and none is taken for a secret
    assert errors_of(tmp_path, text, environ={}, allow_missing_env=True) == []
    assert config.mailboxes[0].password == f"{UNRESOLVED}-pw"
    assert config.targets[0].url.startswith("https://") and config.targets[0].secret.startswith("whsec_")
    assert config.targets[0].headers == (("x-key", f"Bearer {UNRESOLVED}-token"),)
    assert secrets == []


def test_allow_missing_env_still_reports_every_other_error(tmp_path):
    assert errors_of(tmp_path, mailbox_with("port: 0"), environ={}, allow_missing_env=True) == [
        "CONFIG: mailboxes[0].port: must be >= 1"]


# --- secrets --------------------------------------------------------------------------------------------------

def test_every_resolved_secret_value_is_returned_for_redaction(tmp_path):
    text = target_with('secret: ${SECRET}\nheaders: {x-key: "Bearer ${TOKEN}"}\n'
                       'basic_auth: {user: robot, password: "basic-pass"}')
    _, secrets = load(tmp_path, text)
    assert set(secrets) == {"imap-pass-1", ENV["URL"], "/secret-path", SECRET, "Bearer tok-123", "basic-pass"}
    assert secrets == sorted(secrets, key=len, reverse=True)


def test_service_config_loads_the_file_and_registers_its_secrets(tmp_path, monkeypatch):
    # Given RENDER_SIGNAL_CONFIG naming a valid file
    monkeypatch.setattr(log_setup, "_secrets", ())
    path = write(tmp_path, MINIMAL)
    settings = Settings.from_env({"RENDER_SIGNAL_CONFIG": path})
    # When the service's configuration is built
    config = service_config(settings, ENV)
    # Then it is the file's, and its secrets are redacted from logs
    assert [mailbox.id for mailbox in config.mailboxes] == ["studio"]
    assert log_setup.scrub("password imap-pass-1 url https://hook.example.com/secret-path") == "password *** url ***"


def test_service_config_without_a_file_is_the_environment_form():
    settings = Settings.from_env({"WEBHOOK_URL": "https://hook.example.com/x"})
    assert service_config(settings, {}) == ServiceConfig.from_settings(settings)


def test_service_config_raises_one_config_error_carrying_every_error(tmp_path):
    path = write(tmp_path, mailbox_with("port: 0\nfolder: 7"))
    with pytest.raises(ConfigFileError) as caught:
        service_config(Settings.from_env({"RENDER_SIGNAL_CONFIG": path}), ENV)
    assert isinstance(caught.value, ConfigError) and caught.value.variable == "mailboxes[0].port"
    assert str(caught.value).splitlines() == [
        "CONFIG: mailboxes[0].port: must be >= 1",
        'CONFIG: mailboxes[0].folder: expected a string, YAML read the number 7: quote the value, e.g. "7"']


# --- YAML 1.1 surprises ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("value, reason", [
    ("2", 'expected a string, YAML read the number 2: quote the value, e.g. "2"'),
    ("on", "expected a string, YAML read the boolean true (unquoted yes/no/on/off/true/false): quote the value"),
    ("off", "expected a string, YAML read the boolean false (unquoted yes/no/on/off/true/false): quote the value"),
    ("1.5", 'expected a string, YAML read the number 1.5: quote the value, e.g. "1.5"'),
    ("2026-01-02", "expected a string, YAML read the date 2026-01-02: quote the value"),
])
def test_an_unquoted_id_that_yaml_reads_as_another_type_is_refused_with_a_hint_to_quote_it(tmp_path, value, reason):
    assert errors_of(tmp_path, MINIMAL.replace("id: studio", f"id: {value}")) == [f"CONFIG: mailboxes[0].id: {reason}"]


def test_a_quoted_id_that_looks_like_a_number_is_an_id(tmp_path):
    config, _ = load(tmp_path, MINIMAL.replace("id: studio", 'id: "2"'))
    assert config.mailboxes[0].id == "2"


def test_an_unquoted_time_read_as_a_sexagesimal_number_is_refused_with_the_time_to_quote(tmp_path):
    text = target_with("window: {timezone: UTC, from: 19:00, to: 8:05}")
    assert errors_of(tmp_path, text) == [
        'CONFIG: targets[0].window.from: YAML read the number 1140 (an unquoted 19:00?): quote the time, e.g. "19:00"',
        'CONFIG: targets[0].window.to: YAML read the number 485 (an unquoted 08:05?): quote the time, e.g. "08:05"']


def test_an_unquoted_password_of_digits_is_refused(tmp_path):
    assert errors_of(tmp_path, MINIMAL.replace("${PW}", "123456")) == [
        'CONFIG: mailboxes[0].password: expected a string, YAML read the number 123456: quote the value, '
        'e.g. "123456"']


def test_a_quoted_boolean_or_number_is_refused_where_yaml_values_are_expected(tmp_path):
    assert errors_of(tmp_path, mailbox_with('idle: "yes"\nport: "993"')) == [
        "CONFIG: mailboxes[0].port: expected a number (write it without quotes), got a string",
        "CONFIG: mailboxes[0].idle: expected true or false (unquoted), got a string"]


def test_a_boolean_is_not_a_number(tmp_path):
    assert errors_of(tmp_path, mailbox_with("port: true")) == [
        "CONFIG: mailboxes[0].port: expected a number, got the boolean true"]


def test_an_unquoted_closed_date_is_a_date(tmp_path):
    config, _ = load(tmp_path, target_with("window: {timezone: UTC, closed_dates: [2026-12-25]}"))
    assert config.targets[0].window.closed_dates == (datetime.date(2026, 12, 25),)


# --- file-level errors ----------------------------------------------------------------------------------------

def test_a_missing_file_is_one_error_naming_the_file(tmp_path):
    path = str(tmp_path / "none.yaml")
    assert collect_config_errors(path, ENV, Settings()) == [f"CONFIG: {path}: cannot read (No such file or directory)"]


def test_invalid_yaml_is_one_error_with_its_line(tmp_path):
    path = write(tmp_path, "mailboxes: [\n")
    (error,) = collect_config_errors(path, ENV, Settings())
    assert error.startswith(f"CONFIG: {path}: not valid YAML (") and "line 2" in error


def test_a_key_given_twice_is_refused_where_safe_load_would_keep_the_last(tmp_path):
    (error,) = errors_of(tmp_path, MINIMAL.replace("    password: ${PW}\n", "    password: a\n    password: b\n"))
    assert "key 'password' is given twice in one mapping" in error and "line 7" in error


@pytest.mark.parametrize("text, reason", [("", "is empty"), ("- a\n", "holds a list")])
def test_a_file_that_is_not_a_mapping_is_refused(tmp_path, text, reason):
    path = write(tmp_path, text)
    assert collect_config_errors(path, ENV, Settings()) == [
        f"CONFIG: {path}: {reason} (expected a mapping with keys mailboxes, targets, routes, providers)"]


def test_a_file_with_no_mailbox_and_no_target_is_valid(tmp_path):
    config, _ = load(tmp_path, "mailboxes: []\n")
    assert (config.mailboxes, config.targets, config.routes) == ((), (), ())


def test_parse_config_text_reads_text_already_in_hand():
    result = parse_config_text(textwrap.dedent(MINIMAL), ENV, Settings())
    assert result.errors == () and result.config is not None


# --- unknown keys and collection of every error ---------------------------------------------------------------

@pytest.mark.parametrize("text, error", [
    ("mailbox: []\n", "CONFIG: mailbox: unknown key (did you mean mailboxes?)"),
    (MINIMAL.replace("password:", "passwd: x\n    password:"),
     "CONFIG: mailboxes[0].passwd: unknown key (did you mean password?)"),
    (target_with("colour: red"), "CONFIG: targets[0].colour: unknown key (expected one of id, url, secret, profile, "
                                 "headers, basic_auth, timeout_seconds, concurrency, max_body_bytes, "
                                 "rate_per_second, retry, window, allow_insecure, ca_file)"),
    (target_with("retry: {hour: 2}"), "CONFIG: targets[0].retry.hour: unknown key (did you mean hours?)"),
    (target_with("window: {timezone: UTC, day: [mon]}"),
     "CONFIG: targets[0].window.day: unknown key (did you mean days?)"),
    (target_with("basic_auth: {user: a, password: b, realm: c}"),
     "CONFIG: targets[0].basic_auth.realm: unknown key (expected one of user, password)"),
    (mailbox_with("senders: ['@a.example']\nsender_auth: {authserv: mx}"),
     "CONFIG: mailboxes[0].sender_auth.authserv: unknown key (did you mean authserv_id?)"),
    (MINIMAL + "routes:\n  - to: drop\n    stop: true\n", "CONFIG: routes[0].stop: unknown key (did you mean to?)"),
    (MINIMAL + "routes:\n  - to: drop\n    match: {subjects: x}\n",
     "CONFIG: routes[0].match.subjects: unknown key (did you mean subject?)"),
])
def test_an_unknown_key_is_an_error_at_its_path(tmp_path, text, error):
    assert error in errors_of(tmp_path, text)


def test_every_error_of_the_file_is_collected_not_just_the_first(tmp_path):
    text = """
    mailboxes:
      - id: Bad_Id
        server: imap.example.com
        port: 70000
        user: u
      - id: ok
        server: s
        user: u
        password: p
        poll_interval_seconds: 0
    targets:
      - id: t
        url: http://insecure.example.com/
        profile: slack
    routes:
      - to: [t, ghost]
      - match: {mailbox: [ok, nobody]}
        to: drop
    """
    assert errors_of(tmp_path, text) == [
        "CONFIG: mailboxes[0].password: required (or an auth block with method: oauth2)",
        "CONFIG: mailboxes[0].id: mailbox id 'Bad_Id' must be 1-32 characters of a-z, 0-9 and -",
        "CONFIG: mailboxes[0].port: must be <= 65535",
        "CONFIG: mailboxes[1].poll_interval_seconds: must be >= 0.1",
        "CONFIG: targets[0].url: must be https:// (set allow_insecure=true for a local receiver)",
        "CONFIG: targets[0].profile: expected one of generic | make | n8n | zapier",
        "CONFIG: routes[0].to[1]: unknown target 'ghost'",
        "CONFIG: routes[1].match.mailbox[1]: unknown mailbox 'nobody'",
    ]


# --- one rule each, with its path -----------------------------------------------------------------------------

@pytest.mark.parametrize("extra, error", [
    ("tls: tls13", "mailboxes[0].tls: expected one of implicit | starttls | none"),
    ("ca_file: /nonexistent/ca.pem", "mailboxes[0].ca_file: file not found"),
    ("senders: ['nobody']", "mailboxes[0].senders[0]: expected an address or @domain"),
    ("senders: '@a.example'", "mailboxes[0].senders: expected a list, got a string"),
    ("sender_auth: {authserv_id: mx.example.com}",
     "mailboxes[0].sender_auth: needs senders: authentication applies to allow-listed senders"),
    ("senders: ['@a.example']\nsender_auth: {authserv_id: 'a b'}",
     "mailboxes[0].sender_auth.authserv_id: expected one authserv-id token (e.g. mx.google.com) or topmost"),
    ("timeout_seconds: 601", "mailboxes[0].timeout_seconds: must be <= 600"),
    ("fetch_max_failures: 2.5", "mailboxes[0].fetch_max_failures: expected an integer"),
    ("max_links_per_email: 1001", "mailboxes[0].max_links_per_email: must be <= 1000"),
    ("mark_as_read: 1", "mailboxes[0].mark_as_read: expected true or false, got the number 1"),
    ("folder: ''", "mailboxes[0].folder: must not be empty"),
    ("first_start_max_age_hours: 1000", "mailboxes[0].first_start_max_age_hours: must be shorter than "
                                        "STATE_RETENTION_DAYS (720 h): done records have to outlive it"),
])
def test_a_bad_mailbox_value_is_an_error_at_its_path(tmp_path, extra, error):
    assert errors_of(tmp_path, mailbox_with(extra)) == [f"CONFIG: {error}"]


@pytest.mark.parametrize("extra, error", [
    ("secret: nope", "targets[0].secret: must start with whsec_"),
    ("secret: whsec_AAAA", "targets[0].secret: must decode to at least 16 bytes"),
    ("headers: {Content-Type: text/plain}", "targets[0].headers.Content-Type: set by the service itself "
                                            "(webhook-*, content-type, content-length and host are refused)"),
    ("headers: {WEBHOOK-SIGNATURE: x}", "targets[0].headers.WEBHOOK-SIGNATURE: set by the service itself "
                                        "(webhook-*, content-type, content-length and host are refused)"),
    ("headers: {HOST: x}", "targets[0].headers.HOST: set by the service itself (webhook-*, content-type, "
                           "content-length and host are refused)"),
    ("headers: {content-length: '1'}", "targets[0].headers.content-length: set by the service itself "
                                       "(webhook-*, content-type, content-length and host are refused)"),
    ("headers: {x-a: '1', X-A: '2'}", "targets[0].headers.X-A: given twice (header names ignore case)"),
    ("headers: {'bad name': x}", "targets[0].headers.bad name: not a valid header name"),
    ('headers: {x-a: "a\\r\\nb"}', "targets[0].headers.x-a: must not contain a line break or NUL"),
    ("headers: {x-a: 5}", 'targets[0].headers.x-a: expected a string, YAML read the number 5: quote the value, '
                          'e.g. "5"'),
    ("headers: [x]", "targets[0].headers: expected a mapping of header names to values, got a list"),
    ("basic_auth: {user: a, password: b}\nheaders: {Authorization: x}",
     "targets[0].headers.Authorization: cannot be combined with basic_auth (which sets Authorization)"),
    ("basic_auth: {user: 'a:b', password: c}", "targets[0].basic_auth.user: must not contain a colon (RFC 7617)"),
    ("basic_auth: {user: a}", "targets[0].basic_auth.password: required"),
    ("timeout_seconds: 41", "targets[0].timeout_seconds: must be <= 40"),
    ("concurrency: 0", "targets[0].concurrency: must be >= 1"),
    ("max_body_bytes: 100", "targets[0].max_body_bytes: must be >= 1024"),
    ("rate_per_second: 0", "targets[0].rate_per_second: must be > 0"),
    ("retry: {schedule: []}", "targets[0].retry.schedule: needs at least one delay"),
    ("retry: {schedule: [5, -1]}", "targets[0].retry.schedule[1]: must be >= 0.001"),
    ("retry: {hours: 0}", "targets[0].retry.hours: must be >= 0.0001"),
    ("retry: {hours: 720}", "targets[0].retry.hours: must be shorter than STATE_RETENTION_DAYS (720 h): done "
                            "records have to outlive it"),
    ("window: {days: [mon]}", "targets[0].window.timezone: required"),
    ("window: {timezone: Mars/Olympus}", "targets[0].window.timezone: unknown time zone (expected an IANA name "
                                         "such as Europe/Paris)"),
    ("window: {timezone: UTC, days: [monday]}", "targets[0].window.days[0]: expected one of mon, tue, wed, thu, "
                                                "fri, sat, sun"),
    ("window: {timezone: UTC, days: []}", "targets[0].window.days: needs at least one day"),
    ("window: {timezone: UTC, from: '25:00'}", "targets[0].window.from: expected a time HH:MM (00:00-23:59)"),
    ("window: {timezone: UTC, to: '7:00'}", "targets[0].window.to: expected a time HH:MM (00:00-23:59)"),
    ("window: {timezone: UTC, closed_dates: ['2026-02-30']}", "targets[0].window.closed_dates[0]: not a calendar "
                                                              "date"),
    ("window: {timezone: UTC, closed_dates: ['25/12/2026']}", "targets[0].window.closed_dates[0]: expected a date "
                                                              "YYYY-MM-DD"),
    ("ca_file: /nonexistent/ca.pem", "targets[0].ca_file: file not found"),
    ("allow_insecure: 'true'", "targets[0].allow_insecure: expected true or false (unquoted), got a string"),
])
def test_a_bad_target_value_is_an_error_at_its_path(tmp_path, extra, error):
    assert errors_of(tmp_path, target_with(extra)) == [f"CONFIG: {error}"]


@pytest.mark.parametrize("url, error", [
    ("ftp://hook.example.com/", "targets[0].url: expected an http:// or https:// URL"),
    ("http://hook.example.com/", "targets[0].url: must be https:// (set allow_insecure=true for a local receiver)"),
])
def test_a_target_url_follows_the_webhook_url_rules(tmp_path, url, error):
    assert errors_of(tmp_path, MINIMAL.replace("${URL}", url)) == [f"CONFIG: {error}"]


def test_a_target_needs_an_id_and_a_url(tmp_path):
    text = MINIMAL.replace("  - id: make\n    url: ${URL}\n", "  - profile: make\n")
    assert errors_of(tmp_path, text) == ["CONFIG: targets[0].id: required", "CONFIG: targets[0].url: required"]


def test_a_mailbox_needs_an_id_a_server_a_user_and_a_password(tmp_path):
    assert errors_of(tmp_path, "mailboxes:\n  - folder: INBOX\ntargets: []\n") == [
        "CONFIG: mailboxes[0].id: required", "CONFIG: mailboxes[0].server: required",
        "CONFIG: mailboxes[0].user: required",
        "CONFIG: mailboxes[0].password: required (or an auth block with method: oauth2)",
        "CONFIG: targets: at least one target is required when a mailbox is configured"]


def test_a_mailbox_without_any_target_is_an_error(tmp_path):
    assert errors_of(tmp_path, MINIMAL.split("targets:")[0]) == [
        "CONFIG: targets: at least one target is required when a mailbox is configured"]


def test_a_mailbox_without_any_target_is_valid_when_background_tasks_are_off(tmp_path):
    settings = Settings.from_env({"ENABLE_BACKGROUND_TASKS": "false"})
    assert errors_of(tmp_path, MINIMAL.split("targets:")[0], settings=settings) == []


def test_ids_are_unique_per_kind_but_a_mailbox_and_a_target_may_share_one(tmp_path):
    text = MINIMAL + "  - id: make\n    url: https://b.example.com/\n  - id: studio\n    url: https://c.example.com/\n"
    text = text.replace("mailboxes:\n", "mailboxes:\n  - {id: studio, server: s, user: u, password: p}\n")
    assert errors_of(tmp_path, text) == ["CONFIG: mailboxes[1].id: mailbox id 'studio' is used twice",
                                         "CONFIG: targets[1].id: target id 'make' is used twice"]


def test_an_id_longer_than_32_characters_is_refused(tmp_path):
    assert errors_of(tmp_path, MINIMAL.replace("id: make", "id: " + "a" * 33)) == [
        f"CONFIG: targets[0].id: target id '{'a' * 33}' must be 1-32 characters of a-z, 0-9 and -"]


def test_a_target_may_not_be_called_drop(tmp_path):
    text = MINIMAL.replace("id: make", "id: drop")
    assert errors_of(tmp_path, text) == ["CONFIG: targets[0].id: drop is reserved (a route's to: drop)"]


def test_two_mailboxes_whose_state_would_collide_are_refused(tmp_path):
    text = MINIMAL.replace("mailboxes:\n", "mailboxes:\n  - {id: default, server: s, user: u, password: p, "
                                           "folder: 'studio:INBOX'}\n")
    assert errors_of(tmp_path, text) == [
        "CONFIG: mailboxes[1].folder: shares the state of another mailbox (studio:INBOX): rename the folder or the id"]


@pytest.mark.parametrize("route, error", [
    ("match: {mailbox: [studio]}", "routes[0].to: required"),
    ("to: []", "routes[0].to: needs at least one target id (or the word drop)"),
    ("to: make", "routes[0].to: expected a list of target ids or the word drop, got a string"),
    ("to: [drop]", "routes[0].to[0]: drop is a word of its own: write to: drop"),
    ("to: [make, 3]", 'routes[0].to[1]: expected a string, YAML read the number 3: quote the value, e.g. "3"'),
    ("to: drop\ncontinue: maybe", "routes[0].continue: expected true or false, got a string"),
    ("to: drop\nmatch: {subject: '(unclosed'}", "routes[0].match.subject: not a valid regular expression "
                                                "(missing ), unterminated subpattern at position 0)"),
    ("to: drop\nmatch: {sender: [nobody]}", "routes[0].match.sender[0]: expected an address or @domain"),
    ("to: drop\nmatch: {provider: [icloud]}", "routes[0].match.provider[0]: unknown provider (expected one of "
                                              "dropbox, fromsmash, swisstransfer, wetransfer, gdrive, onedrive, "
                                              "sharepoint, box, pcloud, mega)"),
    ("to: drop\nmatch: {has_links: 'no'}", "routes[0].match.has_links: expected true or false (unquoted), got a "
                                           "string"),
    ("to: drop\nmatch: {mailbox: studio}", "routes[0].match.mailbox: expected a list, got a string"),
    ("to: drop\nmatch: [x]", "routes[0].match: expected a mapping with keys mailbox, sender, subject, provider, "
                             "has_links, got a list"),
])
def test_a_bad_route_is_an_error_at_its_path(tmp_path, route, error):
    text = MINIMAL + "routes:\n  - " + route.replace("\n", "\n    ") + "\n"
    assert errors_of(tmp_path, text) == [f"CONFIG: {error}"]


def test_a_route_naming_an_invalid_target_reports_the_target_not_the_route(tmp_path):
    # Given a target with a bad URL that a route names
    text = MINIMAL.replace("${URL}", "http://x.example.com/") + "routes:\n  - to: [make]\n"
    # Then the one error is the target's: the route names a target that exists
    assert errors_of(tmp_path, text) == [
        "CONFIG: targets[0].url: must be https:// (set allow_insecure=true for a local receiver)"]


def test_a_section_that_is_not_a_list_is_an_error(tmp_path):
    assert errors_of(tmp_path, "mailboxes: {id: x}\n") == ["CONFIG: mailboxes: expected a list, got a mapping"]


# --- the environment rule -------------------------------------------------------------------------------------

@pytest.mark.parametrize("variable", ["IMAP_SERVER", "IMAP_PORT", "EMAIL_ADDRESS", "EMAIL_POLLING_INTERVAL_SECONDS",
                                      "SENDER_OF_INTEREST_FOR_POLLING", "FIRST_START_MAX_AGE_HOURS", "MARK_AS_READ",
                                      "ALLOW_CUSTOM_WEBHOOK_WITHOUT_LINKS", "MAX_LINKS_PER_EMAIL", "WEBHOOK_URL",
                                      "WEBHOOK_SECRET", "OAUTH_CLIENT_ID"])
def test_the_file_with_a_per_mailbox_or_per_target_variable_is_a_config_error_naming_it(tmp_path, variable):
    path = write(tmp_path, MINIMAL)
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"RENDER_SIGNAL_CONFIG": path, variable: "993"})
    assert caught.value.variable == "RENDER_SIGNAL_CONFIG" and variable in caught.value.reason


def test_the_conflict_names_every_variable_set(tmp_path):
    path = write(tmp_path, MINIMAL)
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"RENDER_SIGNAL_CONFIG": path, "WEBHOOK_URL": "https://x.example.com/", "IMAP_PORT": "1"})
    assert str(caught.value) == ("CONFIG: RENDER_SIGNAL_CONFIG: cannot be combined with IMAP_PORT, WEBHOOK_URL: the "
                                 "file describes every mailbox and target (unset them)")


def test_an_empty_per_mailbox_variable_beside_the_file_is_no_conflict(tmp_path):
    path = write(tmp_path, MINIMAL)
    settings = Settings.from_env({"RENDER_SIGNAL_CONFIG": path, "IMAP_SERVER": " ", "REDIS_URL": "redis://x:6379"})
    assert settings.config_path == path


def test_a_settings_value_replaced_beside_the_file_is_a_conflict_too(tmp_path):
    settings = Settings.from_env({"RENDER_SIGNAL_CONFIG": write(tmp_path, MINIMAL)})
    with pytest.raises(ConfigError, match="WEBHOOK_URL"):
        settings.replace(webhook_url="https://x.example.com/")


def test_render_signal_config_must_name_an_existing_file(tmp_path):
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"RENDER_SIGNAL_CONFIG": str(tmp_path / "none.yaml")})
    assert str(caught.value) == "CONFIG: RENDER_SIGNAL_CONFIG: file not found"


# --- providers ------------------------------------------------------------------------------------------------

def test_the_providers_section_replaces_the_environments_values_key_by_key(tmp_path):
    config, secrets = load(tmp_path, MINIMAL + """
providers:
  swisstransfer:
    api_base: http://127.0.0.1:8123/api
    allow_insecure: true
    timeout_seconds: 3
  fromsmash:
    api_key: ${TOKEN}
  dropbox:
    resolve_tracking_links: false
""")
    swiss = config.provider("swisstransfer")
    assert swiss.endpoint is not None and swiss.endpoint.base_url == "http://127.0.0.1:8123/api"
    assert swiss.endpoint.allow_insecure and swiss.timeout_seconds == 3 and swiss.budget_seconds == 30.0
    smash = config.provider("fromsmash")
    assert smash.resolve and smash.api_key == "tok-123" and "tok-123" in secrets
    assert not config.provider("dropbox").resolve_tracking_links
    assert config.provider("wetransfer").resolve is False  # untouched: the environment's default
    assert [provider.id for provider in config.providers][:4] == ["dropbox", "fromsmash", "swisstransfer",
                                                                  "wetransfer"]


@pytest.mark.parametrize("section, error", [
    ("  icloud:\n    resolve: true\n", "providers.icloud: unknown provider (expected one of dropbox"),
    ("  box:\n    api_base: https://box.example\n", "providers.box.api_base: provider box calls no base URL"),
    ("  swisstransfer:\n    api_base: http://127.0.0.1:9/api\n",
     "providers.swisstransfer.api_base: must be https:// (allow_insecure: true for a local fake)"),
    ("  gdrive:\n    max_files: 0\n", "providers.gdrive.max_files:"),
    ("  pcloud:\n    resolv: true\n", "providers.pcloud.resolv: unknown key (did you mean resolve?)"),
])
def test_a_bad_providers_section_names_the_key(tmp_path, section, error):
    errors = errors_of(tmp_path, MINIMAL + "providers:\n" + section)
    assert any(error in line for line in errors), errors
