"""OAuth2 sign-in for IMAP (issue 18): token providers (one module each: ``microsoft``, ``refresh_token``,
``google``, ``command``), the per-key token cache, the error taxonomy and the SASL XOAUTH2/OAUTHBEARER exchange.

Importing this package loads none of the heavy client libraries (msal, google-auth, Authlib): each provider imports
its own when it first fetches a token."""

from services.oauth.cache import TokenCache
from services.oauth.errors import OAuthError
from services.oauth.sasl import OAuth2SaslAuthenticator, oauthbearer_initial_response, xoauth2_initial_response
from services.oauth.tokens import AccessToken, CacheKey, TokenProvider, needs_refresh
from services.oauth.transport import InsecureEndpointError

__all__ = ["AccessToken", "CacheKey", "InsecureEndpointError", "OAuth2SaslAuthenticator", "OAuthError",
           "TokenCache", "TokenProvider", "needs_refresh", "oauthbearer_initial_response",
           "xoauth2_initial_response"]
