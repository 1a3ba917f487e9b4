"""How an OAuth2 mailbox mends itself (issue 18, token lifecycle), through the real pipeline against Dovecot's oauth2
passdb and the fake identity provider:

- a mailbox in ``reauth_required`` signs in again as soon as a new refresh token is stored (what ``oauth-login``
  does), not at the next OAUTH_REAUTH_RETRY_SECONDS;
- the server refusing an access token that was still alive in the cache (revoked early) is not an operator's
  problem: the poller signs in once more with a fresh token.
"""

from __future__ import annotations

import logging
import time

import pytest

from harness.mail import make_email
from harness.pipeline import service_env
from services.oauth.stored_tokens import StoredRefreshTokens, TokenCipher
from tests.integration.test_oauth_sign_in import log_lines, oauth_config, refresh_credentials, start_refreshing_mailbox

pytestmark = [pytest.mark.imap, pytest.mark.timeout(90)]


def imap_state(pipeline) -> str:
    return pipeline.runtime.poller_status.snapshot()["imap"]


def test_a_reauth_required_mailbox_signs_in_within_seconds_of_a_new_refresh_token_being_stored(
        make_oauth2_dovecot, webhook_receiver, pipeline_factory, caplog):
    caplog.set_level(logging.INFO)
    # Given a mailbox whose grant was revoked, retrying only every 10 minutes
    pair, account, initial, pipeline = start_refreshing_mailbox(make_oauth2_dovecot, webhook_receiver,
                                                                pipeline_factory, OAUTH_REAUTH_RETRY_SECONDS="600")
    pipeline.wait_until(lambda: imap_state(pipeline) == "ok", timeout=20, what="signed in")
    pair.identity.revoke(initial)
    pipeline.wait_until(lambda: imap_state(pipeline) == "reauth_required", timeout=20, what="reauth_required")
    pair.server.append(account.user, make_email(subject="waited for the sign-in"))
    # When a new sign-in stores a new refresh token
    stored_at = time.monotonic()
    StoredRefreshTokens(pipeline.store, "default", TokenCipher(None)).save(
        pair.identity.issue_refresh_token(account.user))
    # Then the mailbox signs in again within seconds and delivers what waited
    webhook_receiver.wait_for(1, timeout=15)
    waited = time.monotonic() - stored_at
    assert waited < 10, f"signed in {waited:.1f} s after the token was stored"
    assert log_lines(caplog, "OAUTH: a new refresh token is stored mailbox=default")
    assert log_lines(caplog, "OAUTH: signed in again mailbox=default")


def test_a_refused_cached_access_token_is_replaced_by_a_fresh_one_without_reauth(
        make_oauth2_dovecot, webhook_receiver, pipeline_factory, caplog):
    caplog.set_level(logging.INFO)
    # Given a mailbox signed in with a token that lives a minute (cached, not due for renewal)
    pair = make_oauth2_dovecot(lifetime=60)
    account = pair.new_account()
    initial = pair.identity.issue_refresh_token(account.user)
    env = service_env(account, webhook_receiver, OAUTH_REAUTH_RETRY_SECONDS="600")
    pipeline = pipeline_factory(env, config=oauth_config(env, refresh_credentials(pair.identity, initial)))
    pipeline.wait_until(lambda: imap_state(pipeline) == "ok", timeout=20, what="signed in")
    # When the provider revokes the access token early and the server drops the session
    assert pair.identity.revoke_access_tokens(account.user) >= 1
    pair.server.kick(account.user)
    pair.server.append(account.user, make_email(subject="after the kick"))
    # Then the next login with the cached token is refused, and the one after it, with a fresh token, succeeds
    webhook_receiver.wait_for(1, timeout=20)
    assert log_lines(caplog, "refused a cached access token mailbox=default")
    assert not log_lines(caplog, "reauth required")
    assert imap_state(pipeline) == "ok"
