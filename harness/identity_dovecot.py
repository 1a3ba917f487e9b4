"""Dovecot signing users in with bearer tokens from the fake identity provider (``OAuth2Dovecot``), and its IMAP
sessions read from the log (microsecond timestamps), paired with the provider's introspections, to prove what
Dovecot itself never enforces: that a session signed in with a token ended before that token expired.

Dovecot checks a token only at AUTHENTICATE; a session it let in lives on after the token expired. The pairing:
a token login of user U at time T belongs to the latest active introspection of U at or before T not already
paired (Dovecot introspects, then logs the login). Two logins of one user within the same moment could swap
partners, which only matters if their tokens expire at different times.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any, Iterable

from harness.dovecot import DovecotServer, ImapAccount
from harness.identity import IdentityProvider, Introspection

TOKEN_MECHANISMS = ("XOAUTH2", "OAUTHBEARER")

_STAMP = r"(?P<stamp>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}) "
_LOGIN = re.compile(_STAMP + r"imap-login: Info: Login: user=<(?P<user>[^>]*)>, method=(?P<method>[A-Z0-9-]+), "
                    r".*session=<(?P<session>[^>]+)>")
_END = re.compile(_STAMP + r"imap\((?P<user>[^)]*)\)<\d+><(?P<session>[^>]+)>: Info: Disconnected")


@dataclass(frozen=True)
class ImapSession:
    """One IMAP session: who, with which SASL mechanism, from login to disconnect (``None``: still open)."""

    session: str
    user: str
    method: str
    login_at: float
    ended_at: float | None


@dataclass(frozen=True)
class TokenSession:
    session: ImapSession
    introspection: Introspection | None  # None: no active introspection explains this login

    def outlived_token(self, now: float | None = None) -> bool:
        """The session was (or still is) open after its token expired."""
        if self.introspection is None or self.introspection.expires_at is None:
            return True
        end = self.session.ended_at if self.session.ended_at is not None else (now or time.time())
        return end >= self.introspection.expires_at


def _epoch(stamp: str) -> float:
    # Dovecot writes local time; the test process shares the machine's time zone.
    whole, _, micros = stamp.partition(".")
    return time.mktime(time.strptime(whole, "%Y-%m-%d %H:%M:%S")) + int(micros) / 1e6


def imap_sessions(log_text: str) -> list[ImapSession]:
    """Every logged-in IMAP session in a Dovecot log, in login order."""
    logins: dict[str, tuple[str, str, float]] = {}
    ends: dict[str, float] = {}
    for line in log_text.splitlines():
        login = _LOGIN.match(line)
        if login:
            logins[login["session"]] = (login["user"], login["method"], _epoch(login["stamp"]))
            continue
        end = _END.match(line)
        if end:
            ends.setdefault(end["session"], _epoch(end["stamp"]))
    sessions = [ImapSession(session, user, method, at, ends.get(session))
                for session, (user, method, at) in logins.items()]
    return sorted(sessions, key=lambda item: item.login_at)


def token_sessions(log_text: str, introspections: Iterable[Introspection]) -> list[TokenSession]:
    """Each XOAUTH2/OAUTHBEARER session paired with the introspection that let it in."""
    unpaired = sorted((item for item in introspections if item.active), key=lambda item: item.at)
    paired: list[TokenSession] = []
    for session in imap_sessions(log_text):
        if session.method not in TOKEN_MECHANISMS:
            continue
        candidates = [item for item in unpaired if item.user == session.user and item.at <= session.login_at]
        match = candidates[-1] if candidates else None
        if match is not None:
            unpaired.remove(match)
        paired.append(TokenSession(session, match))
    return paired


def sessions_outliving_tokens(log_text: str, introspections: Iterable[Introspection],
                              now: float | None = None) -> list[TokenSession]:
    """The token sessions that stayed open past their token's expiry (empty is the proof of proactive reconnects)."""
    return [item for item in token_sessions(log_text, introspections) if item.outlived_token(now)]


@dataclass(frozen=True)
class OAuth2Dovecot:
    """A Dovecot whose XOAUTH2/OAUTHBEARER logins are introspected at ``identity``; password logins still work."""

    server: DovecotServer
    identity: IdentityProvider

    def new_account(self, prefix: str = "oauth") -> ImapAccount:
        """A fresh user (with a password too, for the test's own APPENDs); ``identity.issue_token(user)`` signs in."""
        return self.server.new_account(prefix)

    def sessions(self) -> list[ImapSession]:
        return imap_sessions(self.server.log_text())

    def token_sessions(self) -> list[TokenSession]:
        return token_sessions(self.server.log_text(), self.identity.introspections)

    def sessions_outliving_tokens(self, now: float | None = None) -> list[TokenSession]:
        return sessions_outliving_tokens(self.server.log_text(), self.identity.introspections, now)

    def stop(self) -> None:
        """Dovecot first (its auth process keeps connections to the provider open), then the provider."""
        try:
            self.server.stop()
        finally:
            self.identity.stop()


def start_oauth2_dovecot(binary: str, *, tls: bool = True, **identity_kwargs: Any) -> OAuth2Dovecot:
    """Start an identity provider (https with its own CA unless ``tls=False``) and a Dovecot checking tokens there."""
    identity = IdentityProvider(tls=tls, **identity_kwargs).start()
    try:
        server = DovecotServer(binary, oauth2=identity.dovecot_oauth2()).start()
    except BaseException:
        identity.stop()
        raise
    return OAuth2Dovecot(server, identity)
