"""OAuth2 sign-in configuration (issue 18): the ``auth`` block of a mailbox in the file and the IMAP_AUTH_METHOD /
OAUTH_* variables of the environment form read into one ``OAuth2Credentials`` value, checked by one set of rules
(``OAuth2Credentials.problems``) and reported in each form's own names. Secrets stay out of reprs."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from config import (
    GOOGLE_MAIL_SCOPE,
    MICROSOFT_IMAP_SCOPE,
    OAuth2Credentials,
    OAuthProvider,
    SaslMechanism,
    ServiceConfig,
)
from config_file import collect_config_errors, load_config_file
from settings import ConfigError, Settings

ENV = {"URL": "https://hook.example.com/secret-path", "CS": "client-secret-value", "RT": "refresh-token-value"}


def file_with_auth(auth: str, *, password: bool = False) -> str:
    block = textwrap.indent(textwrap.dedent(auth).strip("\n"), "      ")
    return ("mailboxes:\n  - id: studio\n    server: outlook.office365.com\n    user: studio@example.com\n"
            + ("    password: pw\n" if password else "") + "    auth:\n" + block + "\n"
            "targets:\n  - id: make\n    url: ${URL}\n")


def errors(tmp_path: Path, text: str, settings: Settings | None = None) -> list[str]:
    path = tmp_path / "render-signal.yaml"
    path.write_text(text, encoding="utf-8")
    return collect_config_errors(str(path), ENV, settings or Settings())


def loaded(tmp_path: Path, text: str, settings: Settings | None = None) -> tuple[ServiceConfig, list[str]]:
    path = tmp_path / "render-signal.yaml"
    path.write_text(text, encoding="utf-8")
    return load_config_file(str(path), ENV, settings or Settings())


MICROSOFT = """
method: oauth2
provider: microsoft_client_credentials
tenant_id: 11111111-2222-3333-4444-555555555555
client_id: app-id
client_secret: ${CS}
"""


def test_a_microsoft_app_only_mailbox_reads_with_the_outlook_scope_and_its_secret_registered(tmp_path):
    config, secrets = loaded(tmp_path, file_with_auth(MICROSOFT))
    credentials = config.mailboxes[0].credentials
    assert isinstance(credentials, OAuth2Credentials)
    assert (credentials.provider, credentials.mechanism) == (OAuthProvider.MICROSOFT_CLIENT_CREDENTIALS,
                                                             SaslMechanism.XOAUTH2)
    assert credentials.effective_scope == MICROSOFT_IMAP_SCOPE
    assert credentials.effective_device_authorization_url == (
        "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/oauth2/v2.0/devicecode")
    assert "client-secret-value" in secrets
    assert "client-secret-value" not in repr(config)


def test_every_problem_of_an_auth_block_is_reported_at_its_path(tmp_path):
    text = file_with_auth("""
        method: oauth2
        provider: microsoft_client_credentials
        mechanism: plain
        authority_host: http://login.example.test
        colour: blue
    """)
    assert errors(tmp_path, text) == [
        "CONFIG: mailboxes[0].auth.colour: unknown key (expected one of method, mechanism, provider, tenant_id, "
        "client_id, client_secret, client_cert_file, client_key_file, authority_host, token_url, "
        "device_authorization_url, refresh_token, scope, service_account_file, token_command, "
        "token_command_timeout_seconds, ca_file)",
        "CONFIG: mailboxes[0].auth.mechanism: expected one of XOAUTH2 | OAUTHBEARER",
    ]
    text = file_with_auth("""
        method: oauth2
        provider: microsoft_client_credentials
        authority_host: http://login.example.test
    """)
    assert errors(tmp_path, text) == [
        "CONFIG: mailboxes[0].auth.tenant_id: required for provider microsoft_client_credentials",
        "CONFIG: mailboxes[0].auth.client_id: required for provider microsoft_client_credentials",
        "CONFIG: mailboxes[0].auth.client_secret: required for provider microsoft_client_credentials (or "
        "client_cert_file + client_key_file)",
        "CONFIG: mailboxes[0].auth.authority_host: must be https:// (set OAUTH_ALLOW_INSECURE=true for a local "
        "identity server)",
    ]


def test_a_password_beside_oauth2_and_a_mailbox_with_neither_are_errors(tmp_path):
    assert errors(tmp_path, file_with_auth(MICROSOFT, password=True)) == [
        "CONFIG: mailboxes[0].password: cannot be combined with auth method oauth2"]
    assert errors(tmp_path, file_with_auth("method: password")) == [
        "CONFIG: mailboxes[0].password: required with auth method password"]
    assert errors(tmp_path, file_with_auth("method: password\nprovider: command", password=True)) == [
        "CONFIG: mailboxes[0].auth.provider: only with method: oauth2"]
    config, _ = loaded(tmp_path, file_with_auth("method: password", password=True))
    assert config.mailboxes[0].password == "pw"


def test_a_certificate_credential_needs_both_files_and_not_a_secret_too(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("c")
    key.write_text("k")
    base = "method: oauth2\nprovider: microsoft_client_credentials\ntenant_id: t\nclient_id: c\n"
    assert errors(tmp_path, file_with_auth(base + f"client_cert_file: {cert}\n")) == [
        "CONFIG: mailboxes[0].auth.client_key_file: required with a certificate credential (client_cert_file + "
        "client_key_file)"]
    assert errors(tmp_path, file_with_auth(base + f"client_cert_file: {cert}\nclient_key_file: {key}\n"
                                                  "client_secret: ${CS}\n")) == [
        "CONFIG: mailboxes[0].auth.client_secret: give a client secret or a certificate (client_cert_file + "
        "client_key_file), not both"]
    assert errors(tmp_path, file_with_auth(base + f"client_cert_file: {cert}\nclient_key_file: {tmp_path}/nope\n")) \
        == ["CONFIG: mailboxes[0].auth.client_key_file: file not found"]
    assert errors(tmp_path, file_with_auth(base + f"client_cert_file: {cert}\nclient_key_file: {key}\n")) == []


def test_the_refresh_token_provider_needs_redis_or_a_persistent_state_dir(tmp_path):
    text = file_with_auth("""
        method: oauth2
        provider: refresh_token
        token_url: https://oauth2.example.test/token
        client_id: c
        refresh_token: ${RT}
    """)
    assert errors(tmp_path, text) == [
        "CONFIG: mailboxes[0].auth.provider: refresh_token needs REDIS_URL (or STATE_DIR_PERSISTENT=true): providers "
        "rotate refresh tokens, and the newest must survive a restart"]
    assert errors(tmp_path, text, Settings(state_dir_persistent=True)) == []
    assert errors(tmp_path, text, Settings(redis_url="redis://127.0.0.1:6379/0")) == []


def test_a_google_service_account_takes_the_gmail_scope(tmp_path):
    key_file = tmp_path / "sa.json"
    key_file.write_text("{}")
    config, _ = loaded(tmp_path, file_with_auth(f"method: oauth2\nprovider: google_service_account\n"
                                                f"service_account_file: {key_file}\nmechanism: oauthbearer\n"))
    credentials = config.mailboxes[0].credentials
    assert isinstance(credentials, OAuth2Credentials)
    assert credentials.effective_scope == GOOGLE_MAIL_SCOPE and credentials.mechanism is SaslMechanism.OAUTHBEARER


def env_settings(**extra: str) -> Settings:
    return Settings.from_env({"IMAP_SERVER": "outlook.office365.com", "EMAIL_ADDRESS": "studio@example.com",
                              "WEBHOOK_URL": "https://hook.example.com/x", **extra})


MICROSOFT_ENV = {"IMAP_AUTH_METHOD": "oauth2", "OAUTH_PROVIDER": "microsoft_client_credentials",
                 "OAUTH_TENANT_ID": "t", "OAUTH_CLIENT_ID": "c", "OAUTH_CLIENT_SECRET": "client-secret-value"}


def test_the_environment_form_enables_the_poller_with_oauth2_and_no_password():
    settings = env_settings(**MICROSOFT_ENV)
    assert settings.mailbox_configured
    credentials = ServiceConfig.from_settings(settings).mailboxes[0].credentials
    assert isinstance(credentials, OAuth2Credentials) and credentials.client_secret == "client-secret-value"
    assert "client-secret-value" in settings.secret_values()
    assert "client-secret-value" not in repr(settings) + repr(credentials)


@pytest.mark.parametrize("extra, variable, reason", [
    ({"EMAIL_PASSWORD": "pw"}, "EMAIL_PASSWORD", "cannot be combined with IMAP_AUTH_METHOD=oauth2 (unset it)"),
    ({"OAUTH_PROVIDER": ""}, "OAUTH_PROVIDER", "required with IMAP_AUTH_METHOD=oauth2"),
    ({"OAUTH_TENANT_ID": ""}, "OAUTH_TENANT_ID", "required for provider microsoft_client_credentials"),
    ({"OAUTH_AUTHORITY_HOST": "http://login.example.test"}, "OAUTH_AUTHORITY_HOST",
     "must be https:// (set OAUTH_ALLOW_INSECURE=true for a local identity server)"),
    ({"OAUTH_PROVIDER": "refresh_token", "OAUTH_TOKEN_URL": "https://t.example.test/token"}, "OAUTH_PROVIDER",
     "refresh_token needs REDIS_URL (or STATE_DIR_PERSISTENT=true): providers rotate refresh tokens, and the newest "
     "must survive a restart"),
])
def test_each_oauth2_rule_names_its_variable(extra, variable, reason):
    with pytest.raises(ConfigError) as caught:
        env_settings(**{**MICROSOFT_ENV, **extra})
    assert (caught.value.variable, caught.value.reason) == (variable, reason)


def test_an_oauth_variable_with_a_password_login_is_an_error_not_ignored():
    with pytest.raises(ConfigError) as caught:
        env_settings(EMAIL_PASSWORD="pw", OAUTH_CLIENT_ID="c")
    assert (caught.value.variable, caught.value.reason) == ("OAUTH_CLIENT_ID", "only with IMAP_AUTH_METHOD=oauth2")
    # the settings that apply to every mailbox are not
    assert env_settings(EMAIL_PASSWORD="pw", OAUTH_ALLOW_INSECURE="true", OAUTH_REAUTH_RETRY_SECONDS="30")


def test_the_global_oauth_settings_may_sit_beside_a_configuration_file(tmp_path):
    path = tmp_path / "render-signal.yaml"
    path.write_text("mailboxes: []\ntargets: []\n")
    assert Settings.from_env({"RENDER_SIGNAL_CONFIG": str(path), "OAUTH_ALLOW_INSECURE": "true"})
    with pytest.raises(ConfigError, match="OAUTH_CLIENT_ID"):
        Settings.from_env({"RENDER_SIGNAL_CONFIG": str(path), "OAUTH_CLIENT_ID": "c"})
