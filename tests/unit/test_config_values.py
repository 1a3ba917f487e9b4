"""ServiceConfig and its values: built once from Settings, ids checked, secrets out of every repr."""

from __future__ import annotations

import pytest

from config import (
    DEFAULT_DELIVERY_CONCURRENCY,
    MailboxConfig,
    PasswordCredentials,
    R2Config,
    RetryPolicy,
    ServiceConfig,
    TargetConfig,
    TlsMode,
)
from settings import Settings

MAILBOX_ENV = {"IMAP_SERVER": "imap.example", "EMAIL_ADDRESS": "me@example.com", "EMAIL_PASSWORD": "pw-s3cret",
               "WEBHOOK_URL": "https://hook.example/path-s3cret"}


def test_an_unconfigured_service_has_no_mailbox_no_target_and_r2_off():
    config = ServiceConfig.from_settings(Settings.from_env({}))
    assert config.mailboxes == ()
    assert config.targets == ()
    assert config.r2 == R2Config()
    assert not config.r2.fetch_enabled


def test_todays_environment_gives_one_default_mailbox_and_one_default_target():
    env = {**MAILBOX_ENV, "IMAP_PORT": "1993", "IMAP_MAILBOX": "Deliveries", "SENDER_OF_INTEREST_FOR_POLLING":
           "A@x.example,@y.example", "EMAIL_POLLING_INTERVAL_SECONDS": "7", "IMAP_USE_IDLE": "false",
           "FIRST_START_MAX_AGE_HOURS": "5", "MARK_AS_READ": "false", "IMAP_TIMEOUT_SECONDS": "9",
           "IMAP_RECONNECT_MAX_SECONDS": "11", "ALLOW_CUSTOM_WEBHOOK_WITHOUT_LINKS": "true", "MAX_LINKS_PER_EMAIL": "7",
           "WEBHOOK_TIMEOUT_SECONDS": "12", "WEBHOOK_RETRY_HOURS": "2", "WEBHOOK_RETRY_SCHEDULE": "1,2"}
    config = ServiceConfig.from_settings(Settings.from_env(env))

    [mailbox] = config.mailboxes
    assert mailbox == MailboxConfig(
        id="default", server="imap.example", user="me@example.com", credentials=PasswordCredentials("pw-s3cret"),
        port=1993, tls=TlsMode.IMPLICIT, ca_file=None, folder="Deliveries",
        sender_allowlist=("a@x.example", "@y.example"), poll_interval_seconds=7.0, use_idle=False,
        first_start_max_age_hours=5.0, mark_as_read=False, timeout_seconds=9.0, reconnect_max_seconds=11.0,
        allow_without_links=True, max_links_per_email=7)
    [target] = config.targets
    assert target == TargetConfig(id="default", url="https://hook.example/path-s3cret", secret=None, headers=(),
                                  timeout_seconds=12.0, concurrency=DEFAULT_DELIVERY_CONCURRENCY,
                                  retry=RetryPolicy(schedule=(1.0, 2.0), hours=2.0), allow_insecure=False)
    assert config.mailbox("default") is mailbox and config.target("default") is target


@pytest.mark.parametrize(("env", "mode"), [
    ({}, TlsMode.IMPLICIT),
    ({"IMAP_USE_SSL": "false", "IMAP_STARTTLS": "true"}, TlsMode.STARTTLS),
    ({"IMAP_USE_SSL": "false"}, TlsMode.NONE),
])
def test_the_tls_mode_follows_imap_use_ssl_and_imap_starttls(env, mode):
    [mailbox] = ServiceConfig.from_settings(Settings.from_env({**MAILBOX_ENV, **env})).mailboxes
    assert mailbox.tls is mode


def test_r2_values_carry_the_resolved_s3_endpoint_and_presign_decision():
    settings = Settings.from_env({"R2_FETCH_ENABLED": "true", "R2_FETCH_ENDPOINT": "https://w.example/",
                                  "R2_FETCH_TOKEN": "tok-s3cret", "R2_BUCKET_NAME": "b", "R2_ACCOUNT_ID": "acc",
                                  "R2_ACCESS_KEY_ID": "kid", "R2_SECRET_ACCESS_KEY": "key-s3cret"})
    r2 = ServiceConfig.from_settings(settings).r2
    assert r2.fetch_enabled and r2.presign_enabled
    assert r2.s3_endpoint == "https://acc.r2.cloudflarestorage.com"
    assert (r2.fetch_token, r2.secret_access_key, r2.bucket_name) == ("tok-s3cret", "key-s3cret", "b")


def test_no_secret_appears_in_any_repr():
    env = {**MAILBOX_ENV, "WEBHOOK_SECRET": "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVg==",
           "R2_FETCH_ENABLED": "true", "R2_FETCH_ENDPOINT": "https://w.example/", "R2_FETCH_TOKEN": "tok-s3cret",
           "R2_BUCKET_NAME": "b", "R2_ACCOUNT_ID": "acc", "R2_ACCESS_KEY_ID": "kid",
           "R2_SECRET_ACCESS_KEY": "key-s3cret"}
    text = repr(ServiceConfig.from_settings(Settings.from_env(env)))
    for secret in ("pw-s3cret", "path-s3cret", "QUJDREVG", "tok-s3cret", "key-s3cret"):
        assert secret not in text
    assert "imap.example" in text  # the repr is still useful


@pytest.mark.parametrize("bad", ["", "Default", "a_b", "a" * 33, "ünï", "a b"])
def test_an_id_outside_a_to_z_digits_and_dash_is_refused(bad):
    with pytest.raises(ValueError, match="id"):
        TargetConfig(id=bad, url="https://hook.example/x")
    with pytest.raises(ValueError, match="id"):
        MailboxConfig(id=bad, server="s", user="u", credentials=PasswordCredentials("p"))


def test_ids_of_32_characters_and_dashes_are_accepted():
    assert TargetConfig(id="a" * 32, url="https://h.example/").id == "a" * 32
    assert MailboxConfig(id="sales-eu-2", server="s", user="u", credentials=PasswordCredentials("p")).id


def test_two_mailboxes_or_two_targets_with_the_same_id_are_refused():
    one = TargetConfig(id="t1", url="https://a.example/")
    with pytest.raises(ValueError, match="unique: t1"):
        ServiceConfig(targets=(one, TargetConfig(id="t1", url="https://b.example/")))


def test_a_second_mailbox_and_a_second_target_are_data_not_code():
    # The issue's "change cost": adding a second mailbox and a second target touches this one file.
    config = ServiceConfig(
        mailboxes=(MailboxConfig(id="default", server="imap.a.example", user="a", credentials=PasswordCredentials("1")),
                   MailboxConfig(id="sales", server="imap.b.example", user="b", credentials=PasswordCredentials("2"),
                                 tls=TlsMode.STARTTLS, folder="Orders")),
        targets=(TargetConfig(id="default", url="https://a.example/h"),
                 TargetConfig(id="crm", url="https://b.example/h", retry=RetryPolicy(schedule=(1.0,), hours=1.0),
                              headers=(("X-Tenant", "b"),))))
    assert [m.id for m in config.mailboxes] == ["default", "sales"]
    assert config.mailbox("sales").folder == "Orders"
    assert config.target("crm").retry.deadline(100.0) == 3700.0
    with pytest.raises(KeyError):
        config.target("missing")


def test_the_retry_policy_repeats_its_last_delay_and_refuses_nonsense():
    policy = RetryPolicy(schedule=(5.0, 30.0), hours=1.0)
    assert [policy.base_delay(n) for n in (1, 2, 3, 50)] == [5.0, 30.0, 30.0, 30.0]
    with pytest.raises(ValueError):
        policy.base_delay(0)
    with pytest.raises(ValueError):
        RetryPolicy(schedule=())
    with pytest.raises(ValueError):
        RetryPolicy(hours=0)


def test_sender_authentication_of_the_default_mailbox_comes_from_its_two_settings():
    from config import SenderAuth

    [plain] = ServiceConfig.from_settings(Settings.from_env(MAILBOX_ENV)).mailboxes
    assert plain.sender_auth is None and MailboxConfig(id="x", server="s", user="u",
                                                       credentials=PasswordCredentials("p")).sender_auth is None
    env = {**MAILBOX_ENV, "SENDER_OF_INTEREST_FOR_POLLING": "@trusted.example", "SENDER_REQUIRE_AUTHENTICATED": "true"}
    [gmail] = ServiceConfig.from_settings(Settings.from_env({**env, "SENDER_AUTHSERV_ID": "mx.google.com"})).mailboxes
    assert gmail.sender_auth == SenderAuth("mx.google.com") and not gmail.sender_auth.topmost
    [m365] = ServiceConfig.from_settings(Settings.from_env({**env, "SENDER_AUTHSERV_ID": "topmost"})).mailboxes
    assert m365.sender_auth == SenderAuth("topmost") and m365.sender_auth.topmost
    assert SenderAuth.from_settings(Settings.from_env(MAILBOX_ENV)) is None


def test_every_registered_provider_has_settings_with_real_default_endpoints_and_the_issues_switches():
    from email_processing.providers import PROVIDERS

    config = ServiceConfig.from_settings(Settings.from_env({}))
    assert [provider.id for provider in config.providers] == [provider.name for provider in PROVIDERS]
    swiss = config.provider("swisstransfer")
    assert swiss.resolve and swiss.endpoint is not None
    assert swiss.endpoint.base_url == "https://www.swisstransfer.com/api" and not swiss.endpoint.allow_insecure
    # WeTransfer's web API is undocumented: off unless asked; Smash needs its API key
    assert not config.provider("wetransfer").resolve and not config.provider("fromsmash").resolve
    assert config.provider("dropbox").resolve_tracking_links
    assert all(provider.max_files == 100 for provider in config.providers)


def test_provider_settings_come_from_the_environment_and_an_api_key_stays_out_of_reprs():
    env = {"SMASH_API_KEY": "smash-key-s3cret", "SMASH_API_BASE": "http://127.0.0.1:9/api",
           "SMASH_ALLOW_INSECURE": "true", "RESOLVE_WETRANSFER": "true", "RESOLVE_DROPBOX_TRACKING_LINKS": "false",
           "MAX_FILES_PER_LINK": "7"}
    config = ServiceConfig.from_settings(Settings.from_env(env))
    smash = config.provider("fromsmash")
    assert smash.resolve and smash.api_key == "smash-key-s3cret"
    assert smash.endpoint is not None and smash.endpoint.base_url == "http://127.0.0.1:9/api"
    assert "s3cret" not in repr(config)
    assert config.provider("wetransfer").resolve
    assert not config.provider("dropbox").resolve_tracking_links
    assert config.provider("box").max_files == 7


@pytest.mark.parametrize("variable", ["SWISSTRANSFER_API_BASE", "SMASH_API_BASE", "WETRANSFER_API_BASE",
                                      "GDRIVE_DOWNLOAD_BASE", "DROPBOX_LINK_BASE", "PCLOUD_API_BASE"])
def test_a_plain_http_provider_base_is_refused_without_its_allow_insecure_twin(variable):
    from settings import ConfigError

    with pytest.raises(ConfigError) as raised:
        Settings.from_env({variable: "http://127.0.0.1:9/"})
    assert raised.value.variable == variable and "ALLOW_INSECURE" in str(raised.value)
