"""One way to talk to an RFC 6749 token endpoint, for every grant this service uses (refresh, device code,
authorization code): an Authlib ``OAuth2Session`` (a ``requests.Session``, so the CA file, ``trust_env`` and timeout
apply as everywhere else here) whose failures come out as ``OAuthError`` of the issue 18 taxonomy, with every secret
the caller names kept out of the description. Authlib is imported only when a session is opened.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import requests

from services.oauth.errors import token_endpoint_error, transient
from services.oauth.transport import DEFAULT_TIMEOUT_SECONDS, http_session


@dataclass(frozen=True)
class OAuthClient:
    """The app that asks: its id, its secret (None: a public client, as device and loopback sign-ins often are)."""

    client_id: str
    client_secret: str | None = field(default=None, repr=False)
    scope: str | None = None
    ca_file: str | None = None
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS


@contextlib.contextmanager
def token_session(client: OAuthClient, *, secrets: Iterable[str | None] = (),
                  redirect_uri: str | None = None) -> Iterator[Any]:
    """An ``OAuth2Session`` for ``client``; any failure inside the block is raised as ``OAuthError``."""
    from authlib.integrations.base_client.errors import OAuthError as AuthlibOAuthError
    from authlib.integrations.requests_client import OAuth2Session

    hidden = (client.client_secret, *secrets)
    statuses: list[int] = []
    session = OAuth2Session(client.client_id, client.client_secret, scope=client.scope, redirect_uri=redirect_uri,
                            code_challenge_method="S256",
                            token_endpoint_auth_method="client_secret_post" if client.client_secret else "none")
    base = http_session(client.ca_file)
    session.verify, session.trust_env = base.verify, base.trust_env
    session.hooks["response"].append(lambda response, *args, **kwargs: statuses.append(response.status_code))
    try:
        with session:
            yield session
    except AuthlibOAuthError as exc:
        raise token_endpoint_error(exc.error, exc.description, statuses[-1] if statuses else None,
                                   hidden) from None
    except requests.Timeout:
        raise transient("timeout", "the token endpoint did not answer in time") from None
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        raise token_endpoint_error(None, None, status) from None
    except requests.RequestException as exc:
        raise transient("connection_error", f"cannot reach the token endpoint ({type(exc).__name__})") from None
    except ValueError:
        raise token_endpoint_error("invalid_token_response", "the token endpoint answered no JSON object",
                                   statuses[-1] if statuses else None) from None
