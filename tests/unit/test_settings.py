"""Settings: typed, validated once, secrets never shown, production defaults as documented."""

import dataclasses

import pytest

import settings as settings_module
from settings import ConfigError, Settings

MAILBOX = {"IMAP_SERVER": "imap.example.com", "EMAIL_ADDRESS": "bot@example.com", "EMAIL_PASSWORD": "pw-123456",
           "WEBHOOK_URL": "https://hook.example.com/abc"}


def test_every_spec_maps_to_a_settings_field_and_back():
    fields = {f.name for f in dataclasses.fields(Settings)}
    attrs = {spec.attr for spec in settings_module.SPECS}
    assert attrs == fields


def test_every_field_takes_its_default_and_secrecy_from_its_spec():
    by_name = {f.name: f for f in dataclasses.fields(Settings)}
    for spec in settings_module.SPECS:
        assert by_name[spec.attr].default == spec.default, spec.env
        assert by_name[spec.attr].repr is (not spec.secret), spec.env


def test_nothing_configured_is_valid_and_uses_documented_defaults():
    s = Settings.from_env({})
    assert (s.imap_port, s.imap_use_ssl, s.imap_timeout_seconds) == (993, True, 30.0)
    assert (s.redis_lock_ttl_seconds, s.email_polling_interval_seconds) == (300.0, 30.0)
    assert s.enable_background_tasks is True
    assert s.lease_retry_interval == 30.0
    assert (s.r2_fetch_timeout_seconds, s.r2_fetch_timeout_folder_seconds) == (15.0, 120.0)
    assert (s.r2_circuit_failures, s.r2_circuit_cooldown_seconds, s.r2_presign_ttl_seconds) == (5, 60.0, 86400)
    assert (s.webhook_timeout_seconds, s.webhook_retry_hours) == (30.0, 24.0)
    assert s.webhook_retry_schedule == (5.0, 30.0, 120.0, 600.0, 1800.0, 3600.0)
    assert (s.port, s.web_concurrency, s.gunicorn_threads) == (8000, 2, 4)
    assert (s.state_dir, s.state_retention_days, s.heartbeat_interval_seconds) == ("./var", 30.0, 300.0)
    assert s.first_start_max_age_hours == 72.0 and s.imap_mailbox == "INBOX" and s.mark_as_read
    assert s.mailbox_configured is False


def test_no_credential_url_or_address_has_a_default():
    for spec in settings_module.SPECS:
        if spec.secret or spec.env.endswith(("_URL", "_ENDPOINT", "_SERVER", "_ADDRESS", "_TOKEN", "_KEY", "_ID")):
            assert spec.default in (None, ()), spec.env


@pytest.mark.parametrize("env, variable", [
    ({"IMAP_PORT": "abc"}, "IMAP_PORT"),
    ({"IMAP_PORT": "70000"}, "IMAP_PORT"),
    ({"REDIS_LOCK_TTL_SECONDS": "-1"}, "REDIS_LOCK_TTL_SECONDS"),
    ({"IMAP_USE_SSL": "maybe"}, "IMAP_USE_SSL"),
    ({"ENABLE_BACKGROUND_TASKS": "enabled"}, "ENABLE_BACKGROUND_TASKS"),
    ({"IMAP_TIMEOUT_SECONDS": "nan"}, "IMAP_TIMEOUT_SECONDS"),
    ({"REDIS_URL": "http://localhost:6379"}, "REDIS_URL"),
    ({"WEBHOOK_RETRY_SCHEDULE": "5,x"}, "WEBHOOK_RETRY_SCHEDULE"),
    ({"WEBHOOK_TIMEOUT_SECONDS": "41"}, "WEBHOOK_TIMEOUT_SECONDS"),
    ({"LOG_FORMAT": "xml"}, "LOG_FORMAT"),
])
def test_a_malformed_value_names_its_variable(env, variable):
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert info.value.variable == variable
    assert str(info.value).startswith(f"CONFIG: {variable}: ")


@pytest.mark.parametrize("word, expected", [("TRUE", True), ("yes", True), ("On", True), ("1", True),
                                            ("false", False), ("NO", False), ("off", False), ("0", False)])
def test_booleans_accept_the_documented_spellings_in_any_case(word, expected):
    assert Settings.from_env({"IMAP_USE_SSL": word}).imap_use_ssl is expected


def test_partial_mailbox_configuration_is_an_error_but_none_is_not():
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"IMAP_SERVER": "imap.example.com"})
    assert info.value.variable == "EMAIL_ADDRESS"
    assert Settings.from_env(MAILBOX).mailbox_configured


def test_an_enabled_feature_requires_its_values():
    with pytest.raises(ConfigError, match="R2_FETCH_ENDPOINT"):
        Settings.from_env({"R2_FETCH_ENABLED": "true"})
    with pytest.raises(ConfigError, match="R2_FETCH_TOKEN"):
        Settings.from_env({"R2_FETCH_ENABLED": "true", "R2_FETCH_ENDPOINT": "https://w.example.workers.dev"})
    with pytest.raises(ConfigError, match="WEBHOOK_URL"):
        Settings.from_env({k: v for k, v in MAILBOX.items() if k != "WEBHOOK_URL"})


def test_webhook_url_must_be_https_unless_insecure_is_allowed():
    with pytest.raises(ConfigError, match="WEBHOOK_URL: must be https"):
        Settings.from_env({**MAILBOX, "WEBHOOK_URL": "http://127.0.0.1:9/hook"})
    assert Settings.from_env({**MAILBOX, "WEBHOOK_URL": "http://127.0.0.1:9/hook", "WEBHOOK_ALLOW_INSECURE": "1"})


def test_webhook_secret_must_be_a_whsec_base64_secret():
    with pytest.raises(ConfigError, match="WEBHOOK_SECRET"):
        Settings.from_env({"WEBHOOK_SECRET": "plain-text-secret"})
    assert Settings.from_env({"WEBHOOK_SECRET": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}).webhook_secret


def test_secrets_never_appear_in_repr_or_error_messages():
    env = {**MAILBOX, "EMAIL_PASSWORD": "hunter2-secret", "REDIS_URL": "redis://:redispw-secret@127.0.0.1:6379/0",
           "R2_FETCH_TOKEN": "r2tok-secret", "STATUS_API_TOKEN": "status-secret",
           "WEBHOOK_SECRET": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}
    text = repr(Settings.from_env(env))
    for value in ("hunter2-secret", "redispw-secret", "r2tok-secret", "status-secret", "MfKQ9r8GKY", "/abc"):
        assert value not in text
    with pytest.raises(ConfigError) as info:
        Settings.from_env({**env, "WEBHOOK_SECRET": "whsec_not base64!"})
    assert "not base64" not in str(info.value)


def test_secret_values_include_the_redis_password_and_the_webhook_path():
    s = Settings.from_env({**MAILBOX, "REDIS_URL": "redis://:redispw@127.0.0.1:6379/0"})
    assert "redispw" in s.secret_values() and "/abc" in s.secret_values() and "pw-123456" in s.secret_values()


def test_lease_retry_defaults_to_a_third_of_the_ttl_capped_at_30s():
    assert Settings.from_env({"REDIS_LOCK_TTL_SECONDS": "60"}).lease_retry_interval == 20.0
    assert Settings.from_env({"REDIS_LOCK_TTL_SECONDS": "3", "LEASE_RETRY_SECONDS": "0.5"}).lease_retry_interval == 0.5


def test_empty_values_count_as_unset():
    assert Settings.from_env({"IMAP_PORT": "", "REDIS_URL": "  "}).imap_port == 993


def test_shutdown_budgets_are_ordered():
    m = settings_module
    assert m.RENDER_SHUTDOWN_GRACE_SECONDS > m.GUNICORN_GRACEFUL_TIMEOUT_SECONDS > m.BACKGROUND_JOIN_TIMEOUT_SECONDS
    assert m.BACKGROUND_JOIN_TIMEOUT_SECONDS > m.MAX_WEBHOOK_TIMEOUT_SECONDS


def test_presigning_for_a_private_bucket_requires_the_bucket_name():
    env = {"R2_FETCH_ENABLED": "true", "R2_FETCH_ENDPOINT": "https://w.example.workers.dev", "R2_FETCH_TOKEN": "t0k3n",
           "R2_ACCOUNT_ID": "acc", "R2_ACCESS_KEY_ID": "key", "R2_SECRET_ACCESS_KEY": "secret"}
    with pytest.raises(ConfigError, match="R2_BUCKET_NAME"):
        Settings.from_env(env)
    assert Settings.from_env({**env, "R2_BUCKET_NAME": "files"}).presign_enabled


@pytest.mark.parametrize("env, other", [
    ({"STATE_RETENTION_DAYS": "1", "WEBHOOK_RETRY_HOURS": "24"}, "WEBHOOK_RETRY_HOURS"),
    ({"STATE_RETENTION_DAYS": "2", "FIRST_START_MAX_AGE_HOURS": "72"}, "FIRST_START_MAX_AGE_HOURS"),
])
def test_done_records_must_outlive_the_retry_window_and_the_first_start_window(env, other):
    with pytest.raises(ConfigError) as error:
        Settings.from_env(env)
    assert str(error.value).startswith("CONFIG: STATE_RETENTION_DAYS:") and other in str(error.value)
    Settings.from_env({**env, "STATE_RETENTION_DAYS": "4"})


def test_sender_authentication_is_off_by_default_and_needs_an_authserv_id_and_an_allow_list():
    assert (Settings.from_env({}).sender_require_authenticated, Settings.from_env({}).sender_authserv_id) == \
        (False, None)
    allowlist = {"SENDER_OF_INTEREST_FOR_POLLING": "@trusted.example"}
    with pytest.raises(ConfigError) as info:
        Settings.from_env({**allowlist, "SENDER_REQUIRE_AUTHENTICATED": "true"})
    assert str(info.value).startswith("CONFIG: SENDER_AUTHSERV_ID: required when SENDER_REQUIRE_AUTHENTICATED=true")
    with pytest.raises(ConfigError) as info:
        Settings.from_env({**allowlist, "SENDER_AUTHSERV_ID": "mx.google.com"})
    assert info.value.variable == "SENDER_REQUIRE_AUTHENTICATED"  # an id alone must not look like protection
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"SENDER_REQUIRE_AUTHENTICATED": "true", "SENDER_AUTHSERV_ID": "mx.google.com"})
    assert info.value.variable == "SENDER_OF_INTEREST_FOR_POLLING"
    s = Settings.from_env({**allowlist, "SENDER_REQUIRE_AUTHENTICATED": "yes", "SENDER_AUTHSERV_ID": " MX.Google.com "})
    assert (s.sender_require_authenticated, s.sender_authserv_id) == (True, "mx.google.com")
    assert Settings.from_env({**allowlist, "SENDER_REQUIRE_AUTHENTICATED": "true",
                              "SENDER_AUTHSERV_ID": "Topmost"}).sender_authserv_id == "topmost"
    assert Settings.from_env({**allowlist, "SENDER_REQUIRE_AUTHENTICATED": "false"}).sender_require_authenticated \
        is False


@pytest.mark.parametrize("bad", ["mx.google.com; dkim=pass", "two words", "(comment)", 'q"uote', "a=b"])
def test_an_authserv_id_is_one_rfc_8601_token(bad):
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"SENDER_OF_INTEREST_FOR_POLLING": "@t.example", "SENDER_REQUIRE_AUTHENTICATED": "true",
                           "SENDER_AUTHSERV_ID": bad})
    assert info.value.variable == "SENDER_AUTHSERV_ID"
