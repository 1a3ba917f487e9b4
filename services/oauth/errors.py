"""The one exception of the OAuth2 token providers and its taxonomy (issue 18): what needs an operator (terminal:
``reauth_required``) and what passes by itself (transient: back off as for an IMAP outage).

Terminal: ``invalid_grant`` (an expired, revoked or already rotated refresh token; Microsoft AADSTS700082,
AADSTS50173, AADSTS70008…), consent and permission errors (AADSTS65001, ``unauthorized_client``, ``invalid_client``,
``access_denied``, ``consent_required``, ``interaction_required``), and any other OAuth error the token endpoint
answers with a 4xx (a wrong scope or request does not mend itself either). Transient: timeouts, connection errors,
any 5xx or 429, and the RFC 6749 codes ``temporarily_unavailable`` and ``server_error``. Descriptions are cut short
and every secret the caller names is replaced, so an ``OAuthError`` can be logged as it is.
"""

from __future__ import annotations

import re
from typing import Iterable, Mapping

TERMINAL_CODES = frozenset({"invalid_grant", "invalid_client", "unauthorized_client", "access_denied",
                            "consent_required", "interaction_required", "login_required", "invalid_scope",
                            "unsupported_grant_type", "expired_token", "command_refused"})
TRANSIENT_CODES = frozenset({"temporarily_unavailable", "server_error", "timeout", "connection_error",
                             "command_timeout", "command_failed", "slow_down"})
# AADSTS numbers that mean "sign in again" or "an admin must consent", whatever the ``error`` field says.
TERMINAL_AADSTS = frozenset({700082, 50173, 70008, 700084, 50076, 50079, 65001, 65004, 7000215, 7000222,
                             700016, 50034, 50057, 50053, 53003, 500011})
MAX_DESCRIPTION_CHARS = 300
REDACTED = "[redacted]"
_AADSTS = re.compile(r"AADSTS(\d+)")


class OAuthError(Exception):
    """A token could not be had. ``terminal``: only an operator (a new sign-in, consent, a fixed setting) mends it."""

    def __init__(self, code: str, description: str, terminal: bool, *, status: int | None = None) -> None:
        super().__init__(f"{code}: {description}")
        self.code = code
        self.description = description
        self.terminal = terminal
        self.status = status

    @property
    def aadsts(self) -> int | None:
        """Microsoft's AADSTS number in the description, if any."""
        match = _AADSTS.search(self.description)
        return int(match.group(1)) if match else None

    def __repr__(self) -> str:
        return f"OAuthError(code={self.code!r}, terminal={self.terminal}, status={self.status})"


def safe_description(text: object, secrets: Iterable[str | None] = ()) -> str:
    """``text`` with each of ``secrets`` replaced, on one line, at most MAX_DESCRIPTION_CHARS long."""
    result = " ".join(str(text or "").split())
    for secret in secrets:
        if secret:
            result = result.replace(secret, REDACTED)
    if len(result) > MAX_DESCRIPTION_CHARS:
        result = result[: MAX_DESCRIPTION_CHARS - 1] + "…"
    return result


def is_terminal(code: str, description: str = "", status: int | None = None) -> bool:
    """The taxonomy above, for an error the token endpoint answered."""
    match = _AADSTS.search(description)
    if match and int(match.group(1)) in TERMINAL_AADSTS:
        return True
    if code in TERMINAL_CODES:
        return True
    if code in TRANSIENT_CODES:
        return False
    if status is not None and (status >= 500 or status == 429):
        return False
    return True


def token_endpoint_error(code: str | None, description: str | None, status: int | None = None,
                         secrets: Iterable[str | None] = ()) -> OAuthError:
    """The ``OAuthError`` for an RFC 6749 section 5.2 error answer (or a bare HTTP status without one)."""
    code = code or ("http_error" if status is None else f"http_{status}")
    text = safe_description(description or (f"token endpoint answered HTTP {status}" if status else code), secrets)
    return OAuthError(code, text, is_terminal(code, text, status), status=status)


def from_error_body(body: Mapping[str, object], status: int | None = None,
                    secrets: Iterable[str | None] = ()) -> OAuthError:
    return token_endpoint_error(str(body.get("error") or "") or None, str(body.get("error_description") or ""),
                                status, secrets)


def transient(code: str, description: str, secrets: Iterable[str | None] = ()) -> OAuthError:
    return OAuthError(code, safe_description(description, secrets), False)
