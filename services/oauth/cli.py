"""``flask --app app oauth-login [--mailbox ID] [--loopback]``: sign a delegated (``refresh_token``) mailbox in
without a browser on the server.

- Default, the device flow (RFC 8628): prints the verification URL and the code, waits while the operator signs in
  on any device, then stores the refresh token in the state store (encrypted with STATE_ENCRYPTION_KEY when set),
  under the mailbox's refresh lock. The running service looks for it every few seconds while the mailbox is
  ``reauth_required`` and signs in at once. Its endpoint: OAUTH_DEVICE_AUTHORIZATION_URL (``auth.device_authorization
  _url``), derived from the authority and tenant for Microsoft.
- ``--loopback``, on the operator's own machine (Google, whose device flow does not allow the Gmail scope): an
  authorization-code sign-in with PKCE and a redirect to 127.0.0.1; prints the refresh token to store as the
  mailbox's OAUTH_REFRESH_TOKEN secret (a configured refresh token replaces a stored one the provider refuses).

Exit status: 0 signed in; 1 the sign-in failed (denied, expired, the provider refused); 2 a usage or configuration
error. Tokens are never logged; only ``--loopback`` prints one, because that is its purpose.
"""

from __future__ import annotations

import sys
from typing import NoReturn

import click
from flask import current_app
from flask.cli import with_appcontext

from config import MailboxConfig, OAuth2Credentials, OAuthProvider
from services.oauth.errors import OAuthError
from services.oauth.token_endpoint import OAuthClient


def _fail(message: str, status: int) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(status)


def _mailbox(mailboxes: tuple[MailboxConfig, ...], mailbox_id: str | None) -> MailboxConfig:
    if mailbox_id is None and len(mailboxes) != 1:
        _fail(f"give --mailbox (one of: {', '.join(m.id for m in mailboxes) or 'none configured'})", 2)
    found = [m for m in mailboxes if mailbox_id is None or m.id == mailbox_id]
    if not found:
        _fail(f"no mailbox {mailbox_id!r} (configured: {', '.join(m.id for m in mailboxes)})", 2)
    mailbox = found[0]
    credentials = mailbox.credentials
    if not isinstance(credentials, OAuth2Credentials) or credentials.provider is not OAuthProvider.REFRESH_TOKEN:
        how = credentials.provider.value if isinstance(credentials, OAuth2Credentials) else "a password"
        _fail(f"mailbox {mailbox.id} signs in with {how}: oauth-login is for provider refresh_token "
              "(IMAP_AUTH_METHOD=oauth2, OAUTH_PROVIDER=refresh_token)", 2)
    return mailbox


def _client(credentials: OAuth2Credentials) -> OAuthClient:
    return OAuthClient(credentials.client_id or "", credentials.client_secret, credentials.effective_scope,
                       credentials.ca_file)


def _device_login(mailbox: MailboxConfig, credentials: OAuth2Credentials) -> None:
    from services.oauth.device_flow import DeviceFlowConfig, start_device_flow, wait_for_grant
    from services.oauth.stored_tokens import StoredRefreshTokens, TokenCipher

    endpoint = credentials.effective_device_authorization_url
    if not endpoint:
        _fail("no device authorization endpoint: set OAUTH_DEVICE_AUTHORIZATION_URL (auth.device_authorization_url),"
              " or OAUTH_TENANT_ID for Microsoft; for Google use --loopback on your own machine", 2)
    runtime = current_app.extensions["render_signal"]
    cipher = TokenCipher(runtime.settings.state_encryption_key)
    config = DeviceFlowConfig(endpoint or "", credentials.token_url or "", _client(credentials),
                              allow_insecure=credentials.allow_insecure)
    code = start_device_flow(config)
    click.echo(f"To sign in mailbox {mailbox.id} ({mailbox.user}): open {code.verification_uri} and enter the code "
               f"{code.user_code} (valid {int(code.expires_in // 60)} min).")
    if code.verification_uri_complete:
        click.echo(f"Or open {code.verification_uri_complete}")
    answer = wait_for_grant(config, code)
    tokens = StoredRefreshTokens(runtime.store, mailbox.id, cipher)
    with tokens.lock():
        tokens.save(str(answer["refresh_token"]))
    sealed = "encrypted" if cipher.encrypts else "NOT encrypted (set STATE_ENCRYPTION_KEY)"
    click.echo(f"Signed in: the refresh token of mailbox {mailbox.id} is stored in the state store "
               f"({runtime.store.backend}, {sealed}); the running service signs in with it within seconds.")


def _loopback_login(mailbox: MailboxConfig, credentials: OAuth2Credentials, authorization_url: str | None,
                    port: int) -> None:
    from services.oauth.loopback import LoopbackConfig, authorization_url_for, loopback_sign_in

    url = authorization_url or authorization_url_for(credentials.token_url or "")
    if not url:
        _fail("no authorization endpoint is known for this token URL: give --authorization-url", 2)
    config = LoopbackConfig(url or "", credentials.token_url or "", _client(credentials),
                            allow_insecure=credentials.allow_insecure, port=port)
    answer = loopback_sign_in(config, on_authorization_url=lambda link: click.echo(
        f"To sign in mailbox {mailbox.id} ({mailbox.user}), open this URL in a browser on this machine:\n{link}"))
    click.echo(f"Signed in. Store this refresh token as the secret OAUTH_REFRESH_TOKEN (auth.refresh_token) of "
               f"mailbox {mailbox.id}; it is shown once:")
    click.echo(str(answer["refresh_token"]))


@click.command("oauth-login")
@click.option("--mailbox", "mailbox_id", help="The mailbox id (needed when several are configured).")
@click.option("--loopback", is_flag=True,
              help="Sign in in a browser on this machine (authorization code + PKCE) and print the refresh token.")
@click.option("--authorization-url", help="With --loopback: the authorization endpoint (known for Google and "
                                          "Microsoft).")
@click.option("--port", type=click.IntRange(0, 65535), default=0, help="With --loopback: the redirect's port "
                                                                       "(0: a free one).")
@with_appcontext
def oauth_login_command(mailbox_id: str | None, loopback: bool, authorization_url: str | None, port: int) -> None:
    """Sign a refresh_token mailbox in (device flow; --loopback for Google)."""
    from services.state_store import StateStoreError

    runtime = current_app.extensions["render_signal"]
    mailbox = _mailbox(runtime.config.mailboxes, mailbox_id)
    assert isinstance(mailbox.credentials, OAuth2Credentials)
    try:
        if loopback:
            _loopback_login(mailbox, mailbox.credentials, authorization_url, port)
        else:
            _device_login(mailbox, mailbox.credentials)
    except OAuthError as exc:
        _fail(f"sign-in failed: {exc.code}: {exc.description}", 1)
    except StateStoreError as exc:
        _fail(f"state store unavailable, the refresh token was not stored ({exc})", 1)
    except ValueError as exc:  # an insecure endpoint or a malformed STATE_ENCRYPTION_KEY
        _fail(str(exc), 2)
