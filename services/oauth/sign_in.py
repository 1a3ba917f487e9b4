"""One mailbox's OAuth2 sign-in: its token provider (built once from the mailbox's ``OAuth2Credentials``), the
process's shared token cache, and the SASL mechanism. ``MailboxClient`` asks it for a token before every connect;
each token handed out is registered for log redaction until shortly after it expires.

``provider_for`` is the one place that maps the configuration onto the providers: each provider keeps taking only
its own small config value.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from config import OAuth2Credentials, OAuthProvider
from services.oauth.cache import TokenCache
from services.oauth.stored_tokens import StoredRefreshTokens, TokenCipher
from services.oauth.tokens import AccessToken, TokenProvider


class OAuthSignIn:
    """``token()``: a token with time left (from the cache, or fetched: ``OAuthError`` passes through);
    ``refused(token)``: the server refused it, so the next ``token()`` fetches anew. ``reauth_retry_seconds``: how
    long a mailbox whose sign-in needs an operator waits before it tries again (OAUTH_REAUTH_RETRY_SECONDS).
    ``refresh_tokens``: where a delegated mailbox's refresh token is stored (None for the other providers), so that
    a mailbox waiting for a new sign-in sees at once that one was stored (``stored_version``)."""

    def __init__(self, provider: TokenProvider, cache: TokenCache, *, mechanism: str, provider_name: str,
                 reauth_retry_seconds: float = 60.0, refresh_tokens: StoredRefreshTokens | None = None,
                 on_token: Callable[[AccessToken], None] | None = None) -> None:
        self.provider = provider
        self.cache = cache
        self.mechanism = mechanism
        self.provider_name = provider_name
        self.reauth_retry_seconds = reauth_retry_seconds
        self.refresh_tokens = refresh_tokens
        self._on_token = on_token or _register_for_redaction
        self.last_refresh_at: float | None = None
        self.last_token_cached = False  # the last token() came from the cache, not from the provider

    def token(self) -> AccessToken:
        before = self.cache.peek(self.provider.cache_key)
        token = self.cache.get(self.provider)
        self.last_token_cached = token is before
        if not self.last_token_cached:
            self.last_refresh_at = time.time()
        self._on_token(token)
        return token

    def stored_version(self) -> str | None:
        """The stored refresh token's fingerprint (``StoredRefreshTokens.version``); None without one."""
        return None if self.refresh_tokens is None else self.refresh_tokens.version()

    def refused(self, token: AccessToken) -> None:
        self.cache.invalidate(self.provider.cache_key, token)


def _register_for_redaction(token: AccessToken) -> None:
    from log_setup import register_expiring_secret

    register_expiring_secret(token.value, token.expires_at)


def refresh_tokens_for(credentials: OAuth2Credentials, *, mailbox_id: str, store: Any,
                       encryption_key: str | None) -> StoredRefreshTokens | None:
    """Where the mailbox's refresh token is kept in the state store ``store``; None unless it signs in with one."""
    if credentials.provider is not OAuthProvider.REFRESH_TOKEN:
        return None
    return StoredRefreshTokens(store, mailbox_id, TokenCipher(encryption_key))


def provider_for(credentials: OAuth2Credentials, *, user: str,
                 refresh_tokens: StoredRefreshTokens | None = None) -> TokenProvider:
    """The token provider a mailbox's credentials describe (``refresh_tokens``: where a refresh token is kept)."""
    if credentials.provider is OAuthProvider.MICROSOFT_CLIENT_CREDENTIALS:
        from services.oauth.microsoft import MicrosoftClientCredentialsConfig, MicrosoftClientCredentialsProvider

        return MicrosoftClientCredentialsProvider(MicrosoftClientCredentialsConfig(
            tenant_id=credentials.tenant_id or "", client_id=credentials.client_id or "",
            client_secret=credentials.client_secret, client_cert_file=credentials.client_cert_file,
            client_key_file=credentials.client_key_file, scope=credentials.effective_scope or "",
            authority_host=credentials.authority_host, ca_file=credentials.ca_file,
            allow_insecure=credentials.allow_insecure))
    if credentials.provider is OAuthProvider.REFRESH_TOKEN:
        from services.oauth.refresh_token import RefreshTokenConfig, RefreshTokenProvider

        if refresh_tokens is None:
            raise ValueError("the refresh_token provider needs the state store's refresh tokens")
        return RefreshTokenProvider(RefreshTokenConfig(
            token_url=credentials.token_url or "", client_id=credentials.client_id or "", subject=user,
            refresh_token=credentials.refresh_token, client_secret=credentials.client_secret,
            scope=credentials.effective_scope, ca_file=credentials.ca_file,
            allow_insecure=credentials.allow_insecure),
            refresh_tokens)
    if credentials.provider is OAuthProvider.GOOGLE_SERVICE_ACCOUNT:
        from services.oauth.google import GoogleServiceAccountConfig, GoogleServiceAccountProvider

        return GoogleServiceAccountProvider(GoogleServiceAccountConfig(
            service_account_file=credentials.service_account_file or "", subject=user,
            scope=credentials.effective_scope or "", ca_file=credentials.ca_file,
            allow_insecure=credentials.allow_insecure))
    from services.oauth.command import CommandConfig, CommandTokenProvider

    return CommandTokenProvider(CommandConfig(command=credentials.token_command or "", subject=user,
                                              timeout_seconds=credentials.token_command_timeout_seconds))


def sign_in_for(credentials: OAuth2Credentials, *, user: str, mailbox_id: str, store: Any, cache: TokenCache,
                encryption_key: str | None, reauth_retry_seconds: float) -> OAuthSignIn:
    refresh_tokens = refresh_tokens_for(credentials, mailbox_id=mailbox_id, store=store,
                                        encryption_key=encryption_key)
    return OAuthSignIn(provider_for(credentials, user=user, refresh_tokens=refresh_tokens),
                       cache, mechanism=credentials.mechanism.value, provider_name=credentials.provider.value,
                       reauth_retry_seconds=reauth_retry_seconds, refresh_tokens=refresh_tokens)
