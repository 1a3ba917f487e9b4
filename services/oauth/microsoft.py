"""Microsoft 365 app-only tokens (OAuth2 client credentials) through MSAL's ``ConfidentialClientApplication``,
with a client secret or a certificate (PEM certificate and key files). MSAL is imported only when a token is first
asked for, so a service without this provider never loads it.

The authority is ``{authority_host}/{tenant_id}``. For a host MSAL does not know as Microsoft's (a test endpoint),
instance discovery is off: MSAL would otherwise ask login.microsoftonline.com about it. MSAL keeps its own token
cache and treats a token with less than 5 minutes left as expired; the ``TokenCache`` above it decides when to ask.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests

from config import MICROSOFT_AUTHORITY_HOST, MICROSOFT_IMAP_SCOPE
from services.oauth.errors import OAuthError, from_error_body, safe_description, transient
from services.oauth.tokens import AccessToken, CacheKey, is_bearer_token
from services.oauth.transport import DEFAULT_TIMEOUT_SECONDS, http_session, require_secure_endpoint

logger = logging.getLogger(__name__)

PROVIDER = "microsoft_client_credentials"
DEFAULT_AUTHORITY_HOST = MICROSOFT_AUTHORITY_HOST
DEFAULT_SCOPE = MICROSOFT_IMAP_SCOPE


@dataclass(frozen=True)
class MicrosoftClientCredentialsConfig:
    """``client_secret``, or ``client_cert_file`` + ``client_key_file`` (PEM; the key unencrypted)."""

    tenant_id: str
    client_id: str
    client_secret: str | None = field(default=None, repr=False)
    client_cert_file: str | None = None
    client_key_file: str | None = None
    scope: str = DEFAULT_SCOPE
    authority_host: str = DEFAULT_AUTHORITY_HOST
    ca_file: str | None = None
    allow_insecure: bool = False
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS

    def __post_init__(self) -> None:
        if not self.tenant_id or not self.client_id:
            raise ValueError("microsoft_client_credentials needs tenant_id and client_id")
        has_cert = bool(self.client_cert_file or self.client_key_file)
        if bool(self.client_secret) == has_cert:
            raise ValueError("microsoft_client_credentials needs either client_secret or "
                             "client_cert_file + client_key_file, not both")
        if has_cert and not (self.client_cert_file and self.client_key_file):
            raise ValueError("a certificate credential needs both client_cert_file and client_key_file")
        require_secure_endpoint(self.authority_host, allow_insecure=self.allow_insecure, name="authority_host")

    @property
    def authority(self) -> str:
        return f"{self.authority_host.rstrip('/')}/{self.tenant_id}"


class MicrosoftClientCredentialsProvider:
    """App-only access tokens for every mailbox the app may open (``IMAP.AccessAsApp``)."""

    def __init__(self, config: MicrosoftClientCredentialsConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._app: Any = None
        self._last: AccessToken | None = None
        self._status = threading.local()

    @property
    def cache_key(self) -> CacheKey:
        return CacheKey(PROVIDER, self.config.tenant_id, self.config.client_id, self.config.scope, None)

    def fetch_token(self) -> AccessToken:
        with self._lock:
            try:
                return self._fetch()
            except OAuthError as exc:
                if exc.terminal:
                    # A new application next time: MSAL would replay this 4xx from its HTTP cache for 60 s, and an
                    # operator's fix (consent granted, tenant corrected) must show at the next retry.
                    self._app = None
                raise

    def _fetch(self) -> AccessToken:
        now = time.time()
        self._status.value = None
        from msal.exceptions import MsalServiceError

        try:
            result = self._application().acquire_token_for_client(scopes=[self.config.scope])
        except MsalServiceError:
            # MSAL raises (instead of answering the error body) for a 5xx from the token endpoint.
            status = self._status.value
            raise OAuthError("server_error", f"the Microsoft token endpoint answered HTTP {status}", False,
                             status=status) from None
        except requests.Timeout:
            raise transient("timeout", "the Microsoft token endpoint did not answer in time") from None
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else None
            raise OAuthError("server_error", f"Microsoft discovery answered HTTP {status}", False,
                             status=status) from None
        except requests.RequestException as exc:
            raise transient("connection_error", f"cannot reach the Microsoft identity platform "
                                                f"({type(exc).__name__})") from None
        return self._token(result, now)

    def _token(self, result: dict[str, Any] | None, now: float) -> AccessToken:
        secrets = (self.config.client_secret,)
        if not result or "error" in result or "access_token" not in result:
            raise from_error_body(result or {"error": "no_token"}, self._status.value, secrets)
        value = str(result["access_token"])
        if not is_bearer_token(value):
            raise OAuthError("invalid_token_response", "the token endpoint answered a malformed access token", True)
        if self._last is not None and self._last.value == value:
            return self._last  # MSAL answered from its own cache
        token = AccessToken(value, now + float(result.get("expires_in") or 0), now)
        self._last = token
        logger.info("OAUTH: token obtained provider=%s tenant=%s expires_in=%d", PROVIDER, self.config.tenant_id,
                    int(token.lifetime))
        return token

    def _application(self) -> Any:
        if self._app is None:
            self._app = self._build_application()
        return self._app

    def _build_application(self) -> Any:
        import msal
        import msal.authority

        config = self.config
        session = http_session(config.ca_file, config.timeout_seconds)
        session.hooks["response"].append(self._record_status)
        host = urlsplit(config.authority_host).hostname or ""
        try:
            return msal.ConfidentialClientApplication(
                config.client_id, client_credential=self._credential(), authority=config.authority,
                http_client=session, timeout=config.timeout_seconds,
                instance_discovery=host in msal.authority.WELL_KNOWN_AUTHORITY_HOSTS)
        except ValueError as exc:
            # MSAL's answer to a 4xx from tenant discovery (no such tenant) or to a malformed credential.
            raise OAuthError("invalid_authority", safe_description(exc, [config.client_secret]), True) from None

    def _record_status(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        self._status.value = response.status_code

    def _credential(self) -> str | dict[str, str]:
        config = self.config
        if config.client_secret:
            return config.client_secret
        try:
            with open(str(config.client_cert_file), encoding="utf-8") as handle:
                certificate = handle.read()
            with open(str(config.client_key_file), encoding="utf-8") as handle:
                private_key = handle.read()
        except OSError as exc:
            raise OAuthError("client_credential_unreadable", f"cannot read the client certificate or key "
                                                             f"({exc.strerror})", True) from None
        _check_rsa_key(private_key)
        # With the certificate MSAL computes the SHA-256 thumbprint (x5t#S256) itself.
        return {"private_key": private_key, "public_certificate": certificate}


def _check_rsa_key(private_key_pem: str) -> None:
    """Entra signs in with RSA certificates only (MSAL's PS256 assertion): anything else fails here, clearly."""
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(private_key_pem.encode("utf-8"), password=None)
    except (ValueError, TypeError):
        raise OAuthError("client_credential_invalid", "client_key_file is not an unencrypted PEM private key",
                         True) from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise OAuthError("client_credential_invalid", f"client_key_file holds a {type(key).__name__.lstrip('_')}, "
                                                      "not an RSA key", True)
