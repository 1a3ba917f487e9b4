"""OAuth2 sign-in through the real pipeline (issue 18): a Dovecot whose XOAUTH2/OAUTHBEARER logins are introspected
at the fake identity provider, tokens that live a few seconds, and a real webhook receiver.

- A mailbox signing in with a rotating refresh token keeps polling and idling across many token expiries: every
  email is delivered once, no login is refused, and every IMAP session ended before its token expired (Dovecot does
  not end a session whose token expires, so this is what proves the proactive reconnect).
- A revoked refresh token puts the mailbox in ``reauth_required`` (one ERROR line, no email lost); once a new refresh
  token is stored (what ``oauth-login`` does) it recovers by itself.
- An app-only (client credentials) mailbox signs in with OAUTHBEARER.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import pytest

from config import OAuth2Credentials, OAuthProvider, SaslMechanism, ServiceConfig
from harness.identity import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, GRANT_REFRESH
from harness.mail import make_email
from harness.pipeline import service_env
from services.oauth.stored_tokens import StoredRefreshTokens, TokenCipher
from settings import Settings

pytestmark = [pytest.mark.imap, pytest.mark.timeout(120)]

LIFETIME = 3.0  # seconds an access token lives at the fake provider


def oauth_config(env: dict, credentials: OAuth2Credentials) -> ServiceConfig:
    base = ServiceConfig.from_settings(Settings.from_env(env))
    return dataclasses.replace(base, mailboxes=(dataclasses.replace(base.mailboxes[0], credentials=credentials),))


def refresh_credentials(identity, refresh_token: str) -> OAuth2Credentials:
    return OAuth2Credentials(provider=OAuthProvider.REFRESH_TOKEN, token_url=identity.token_url,
                             client_id=DEFAULT_CLIENT_ID, client_secret=DEFAULT_CLIENT_SECRET,
                             refresh_token=refresh_token, ca_file=identity.ca_file)


def start_refreshing_mailbox(make_oauth2_dovecot, webhook_receiver, pipeline_factory, **env_overrides):
    """A Dovecot and provider with short-lived tokens, a user with a refresh token, and the service signing in with
    it: (dovecot pair, account, the initial refresh token, the running pipeline)."""
    pair = make_oauth2_dovecot(lifetime=LIFETIME)
    account = pair.new_account()
    initial = pair.identity.issue_refresh_token(account.user)
    env = service_env(account, webhook_receiver, **env_overrides)
    pipeline = pipeline_factory(env, config=oauth_config(env, refresh_credentials(pair.identity, initial)))
    return pair, account, initial, pipeline


def log_lines(caplog, needle: str) -> list[str]:
    return [record.getMessage() for record in caplog.records if needle in record.getMessage()]


def test_a_refresh_token_mailbox_polls_and_idles_across_token_expiries_and_no_session_outlives_its_token(
        make_oauth2_dovecot, webhook_receiver, pipeline_factory, caplog):
    caplog.set_level(logging.INFO)
    pair, account, initial, pipeline = start_refreshing_mailbox(make_oauth2_dovecot, webhook_receiver,
                                                                pipeline_factory, EMAIL_POLLING_INTERVAL_SECONDS="5")
    identity = pair.identity
    # When 20 emails arrive over about 15 s (five token lifetimes)
    raws = [make_email(subject=f"oauth {n}") for n in range(20)]
    for raw in raws:
        pair.server.append(account.user, raw)
        time.sleep(0.75)
    # Then every one is delivered once
    webhook_receiver.wait_for(20, timeout=30)
    time.sleep(1.0)
    ids = webhook_receiver.delivered_ids()
    assert len(ids) == len(set(ids)) == 20
    # across at least five refreshes (each rotating the refresh token, none refused), with no login refused
    refreshes = [item for item in identity.requests if item.grant_type == GRANT_REFRESH]
    assert len(refreshes) >= 5 and {item.status for item in refreshes} == {200}
    assert log_lines(caplog, "reconnecting before the access token expires")
    assert not log_lines(caplog, "login failed") and not log_lines(caplog, "reauth required")
    # and no IMAP session outlived its token (the proactive reconnect), the current one included
    assert pair.sessions_outliving_tokens() == []
    # the newest refresh token is the one stored
    stored = StoredRefreshTokens(pipeline.store, "default", TokenCipher(None)).load()
    assert stored == identity.latest_refresh_token(initial)
    status = pipeline.runtime.poller_status.snapshot()
    assert (status["auth_method"], status["oauth_provider"]) == ("oauth2", "refresh_token")
    assert status["token_expires_at"] and status["last_refresh_at"]


def test_a_revoked_refresh_token_is_reauth_required_and_a_newly_stored_one_recovers_with_no_email_lost(
        make_oauth2_dovecot, webhook_receiver, pipeline_factory, caplog):
    caplog.set_level(logging.INFO)
    pair, account, initial, pipeline = start_refreshing_mailbox(make_oauth2_dovecot, webhook_receiver,
                                                                pipeline_factory, OAUTH_REAUTH_RETRY_SECONDS="1")
    identity = pair.identity
    pair.server.append(account.user, make_email(subject="before"))
    webhook_receiver.wait_for(1, timeout=20)
    # When the grant is revoked mid-run, and mail keeps arriving
    identity.revoke(initial)
    pipeline.wait_until(lambda: pipeline.runtime.poller_status.snapshot()["imap"] == "reauth_required",
                        timeout=LIFETIME * 4, what="reauth_required")
    during = [make_email(subject=f"during {n}") for n in range(3)]
    for raw in during:
        pair.server.append(account.user, raw)
    time.sleep(2.5)
    # Then one ERROR line says so (never a token), and nothing was delivered or lost meanwhile
    lines = log_lines(caplog, "OAUTH: reauth required mailbox=default error=invalid_grant")
    assert len(lines) == 1
    assert len(webhook_receiver.delivered_ids()) == 1
    # When a new sign-in stores a new refresh token, the mailbox recovers by itself and delivers what waited
    fresh = identity.issue_refresh_token(account.user)
    StoredRefreshTokens(pipeline.store, "default", TokenCipher(None)).save(fresh)
    webhook_receiver.wait_for(4, timeout=20)
    ids = webhook_receiver.delivered_ids()
    assert len(ids) == len(set(ids)) == 4
    assert log_lines(caplog, "OAUTH: signed in again mailbox=default")
    assert all(fresh not in record.getMessage() and initial not in record.getMessage() for record in caplog.records)


def test_an_app_only_mailbox_signs_in_with_oauthbearer_and_client_credentials(
        make_oauth2_dovecot, webhook_receiver, pipeline_factory):
    pair = make_oauth2_dovecot(lifetime=30)
    identity, account = pair.identity, pair.new_account()
    identity.add_client("app-1", "app-secret", mailboxes=(account.user,))
    credentials = OAuth2Credentials(provider=OAuthProvider.MICROSOFT_CLIENT_CREDENTIALS,
                                    mechanism=SaslMechanism.OAUTHBEARER, tenant_id=identity.tenant,
                                    client_id="app-1", client_secret="app-secret",
                                    authority_host=identity.authority_host, ca_file=identity.ca_file)
    env = service_env(account, webhook_receiver)
    pipeline_factory(env, config=oauth_config(env, credentials))
    raw = make_email(subject="app only")
    pair.server.append(account.user, raw)
    assert len(webhook_receiver.wait_for(1, timeout=30)) == 1
