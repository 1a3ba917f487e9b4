"""Unit tests of services/oauth: the refresh rule, the error taxonomy, https-only endpoints and the providers'
configuration checks (no server; the providers against the fake identity provider are in
tests/integration/test_oauth_providers.py)."""

from __future__ import annotations

import pytest

from services.oauth import AccessToken, InsecureEndpointError, OAuthError, needs_refresh
from services.oauth.command import CommandConfig
from services.oauth.errors import from_error_body, is_terminal, safe_description, token_endpoint_error
from services.oauth.google import GoogleServiceAccountConfig
from services.oauth.microsoft import DEFAULT_AUTHORITY_HOST, DEFAULT_SCOPE, MicrosoftClientCredentialsConfig
from services.oauth.refresh_token import RefreshTokenConfig
from services.oauth.tokens import is_bearer_token
from services.oauth.transport import http_session, require_secure_endpoint

SECRET = "s3cr3t-value"


# --- the refresh rule -------------------------------------------------------------------------------------------

def test_an_hour_token_needs_refresh_only_in_its_last_five_minutes():
    token = AccessToken("t", expires_at=4600.0, obtained_at=1000.0)
    assert not needs_refresh(token, 4600.0 - 301)
    assert needs_refresh(token, 4600.0 - 299)


def test_a_short_token_needs_refresh_in_its_last_tenth():
    token = AccessToken("t", expires_at=1060.0, obtained_at=1000.0)  # 60 s: the margin is 6 s, not 5 minutes
    assert not needs_refresh(token, 1053.9)
    assert needs_refresh(token, 1054.1)


def test_an_expired_or_missing_token_needs_refresh():
    assert needs_refresh(None, 0.0)
    assert needs_refresh(AccessToken("t", expires_at=10.0, obtained_at=0.0), 11.0)


def test_the_token_value_is_not_in_its_repr():
    token = AccessToken("eyJ0eXAiOi.secret-part", expires_at=2.0, obtained_at=1.0)
    assert "secret-part" not in repr(token)
    assert "expires_at=2.0" in repr(token)


def test_only_rfc_6750_token_characters_make_a_bearer_token():
    assert is_bearer_token("eyJhbGci.eyJzdWIi.c2ln-_~+/==")
    for bad in ("", "two words", "line\nbreak", "ctrl\x01a", "quote\""):
        assert not is_bearer_token(bad), bad


# --- the error taxonomy -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("code, description", [
    ("invalid_grant", "AADSTS700082: The refresh token has expired due to inactivity."),
    ("invalid_grant", "AADSTS50173: The provided grant has expired due to it being revoked."),
    ("invalid_client", "AADSTS7000215: Invalid client secret provided."),
    ("unauthorized_client", "AADSTS700016: Application not found in the directory."),
    ("access_denied", "The user declined."),
    ("consent_required", "AADSTS65001: The user or administrator has not consented to use the application."),
    ("invalid_request", "AADSTS65001: The user or administrator has not consented to use the application."),
    ("interaction_required", "AADSTS50076: multi-factor authentication is required."),
    ("invalid_scope", "The provided value for scope is not valid."),
])
def test_sign_in_consent_and_permission_errors_are_terminal(code, description):
    assert token_endpoint_error(code, description, 400).terminal
    assert is_terminal(code, description)


@pytest.mark.parametrize("code, status", [
    ("temporarily_unavailable", 503), ("server_error", 500), (None, 502), ("invalid_request", 429), (None, 429),
    ("temporarily_unavailable", None),
])
def test_outages_and_throttling_are_transient(code, status):
    assert not token_endpoint_error(code, "AADSTS90033: the service is busy", status).terminal


def test_an_unknown_error_answered_with_a_4xx_is_terminal():
    assert token_endpoint_error("unheard_of", "?", 400).terminal


def test_error_descriptions_never_carry_a_named_secret_and_stay_short():
    error = from_error_body({"error": "invalid_grant", "error_description": f"bad token {SECRET}\n" + "x" * 1000},
                            400, secrets=[SECRET, None])
    assert SECRET not in error.description and SECRET not in str(error) and SECRET not in repr(error)
    assert "[redacted]" in error.description
    assert len(error.description) <= 300 and "\n" not in error.description
    assert safe_description("a  b\tc") == "a b c"


def test_the_aadsts_number_is_read_from_the_description():
    error = OAuthError("invalid_grant", "AADSTS700082: expired", True)
    assert error.aadsts == 700082
    assert OAuthError("invalid_grant", "no number", True).aadsts is None


# --- endpoints ------------------------------------------------------------------------------------------------------

def test_plain_http_endpoints_need_allow_insecure():
    with pytest.raises(InsecureEndpointError):
        require_secure_endpoint("http://127.0.0.1:1/token")
    assert require_secure_endpoint("http://127.0.0.1:1/token", allow_insecure=True)
    assert require_secure_endpoint("https://login.example/token")
    for bad in ("ftp://x/token", "/relative/token", "https:///no-host"):
        with pytest.raises(InsecureEndpointError):
            require_secure_endpoint(bad, allow_insecure=True)


def test_every_provider_refuses_a_plain_http_endpoint_unless_allowed():
    with pytest.raises(InsecureEndpointError):
        MicrosoftClientCredentialsConfig("t", "c", client_secret=SECRET, authority_host="http://127.0.0.1:9")
    with pytest.raises(InsecureEndpointError):
        RefreshTokenConfig("http://127.0.0.1:9/token", "c", "user@example.org")
    RefreshTokenConfig("http://127.0.0.1:9/token", "c", "user@example.org", allow_insecure=True)


def test_a_session_with_a_ca_file_trusts_it_and_not_the_environment():
    session = http_session("/tmp/ca.pem")
    assert session.verify == "/tmp/ca.pem" and session.trust_env is False
    assert http_session(None).trust_env is True


# --- configuration ------------------------------------------------------------------------------------------------

def test_microsoft_defaults_are_the_real_endpoints():
    config = MicrosoftClientCredentialsConfig("tenant-1", "client-1", client_secret=SECRET)
    assert config.authority_host == DEFAULT_AUTHORITY_HOST == "https://login.microsoftonline.com"
    assert config.scope == DEFAULT_SCOPE == "https://outlook.office365.com/.default"
    assert config.authority == "https://login.microsoftonline.com/tenant-1"


def test_microsoft_needs_a_secret_or_a_certificate_and_key_but_not_both():
    with pytest.raises(ValueError):
        MicrosoftClientCredentialsConfig("t", "c")
    with pytest.raises(ValueError):
        MicrosoftClientCredentialsConfig("t", "c", client_secret=SECRET, client_cert_file="c.pem",
                                         client_key_file="k.pem")
    with pytest.raises(ValueError):
        MicrosoftClientCredentialsConfig("t", "c", client_cert_file="c.pem")
    MicrosoftClientCredentialsConfig("t", "c", client_cert_file="c.pem", client_key_file="k.pem")


def test_secrets_are_not_in_the_configurations_repr():
    configs = [MicrosoftClientCredentialsConfig("t", "c", client_secret=SECRET),
               RefreshTokenConfig("https://x/token", "c", "u", refresh_token=SECRET, client_secret=SECRET),
               CommandConfig(f"vault read {SECRET}")]
    for config in configs:
        assert SECRET not in repr(config)


def test_google_and_command_configurations_check_their_required_values():
    with pytest.raises(ValueError):
        GoogleServiceAccountConfig("", "user@example.org")
    assert GoogleServiceAccountConfig("key.json", "user@example.org").scope == "https://mail.google.com/"
    with pytest.raises(ValueError):
        CommandConfig("   ")
    with pytest.raises(ValueError):
        CommandConfig("print-token", timeout_seconds=0)
    assert CommandConfig("print-token").timeout_seconds == 10
