"""The device-code sign-in (RFC 8628) of a ``refresh_token`` mailbox, started and continued from the browser or the
operator API (issue 20), by any worker of any container: the state of a sign-in lives in the shared state store,
never in a process.

Two records per mailbox. ``oauth_device/<mailbox>`` holds the secret device code (sealed with
``STATE_ENCRYPTION_KEY`` when it is set) and lives exactly as long as the provider says the code is valid
(``expires_in``); ``oauth_sign_in/<mailbox>`` holds what may be shown (the user code, the verification link, when it
expires, the provider's interval, the state: ``pending``, ``done``, ``denied``, ``expired`` or ``error``) and is
kept an hour longer so the outcome can still be read. Nothing here sleeps: ``continue_sign_in`` makes at most one
token request, and only once the provider's interval has passed since the last one; the right to make it is taken
with ``compare_and_put_record`` on the public record (the next poll's time moves forward in the same write), so of
two workers continuing the same sign-in at once exactly one asks the provider. The granted refresh token is stored
as ``oauth-login`` stores it (``StoredRefreshTokens``, under the mailbox's refresh lock), where the mailbox's poller
looks for it every few seconds while it waits for a sign-in.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from background.operator_actions import ActionError, Conflict, NotFound
from config import MailboxConfig, OAuth2Credentials, OAuthProvider
from services.oauth.device_flow import (
    GRANT_DEVICE_CODE,
    MAX_TRANSIENT_FAILURES,
    SLOW_DOWN_STEP_SECONDS,
    DeviceCode,
    DeviceFlowConfig,
    start_device_flow,
)
from services.oauth.errors import OAuthError
from services.oauth.stored_tokens import StoredRefreshTokens, TokenCipher
from services.oauth.token_endpoint import OAuthClient, token_session
from timestamps import iso_utc

PUBLIC_NAMESPACE = "oauth_sign_in"
SECRET_NAMESPACE = "oauth_device"
OUTCOME_KEEP_SECONDS = 3600.0       # how long the public record outlives the code (to show the outcome)
MIN_RECORD_TTL_SECONDS = 1.0

PENDING, DONE, DENIED, EXPIRED, ERROR = "pending", "done", "denied", "expired", "error"
STATES = (PENDING, DONE, DENIED, EXPIRED, ERROR)
NO_SIGN_IN = "no_sign_in"   # the 404 of reading a sign-in nobody started

# What the mailbox's provider answered a device-code request with: the state it ends the sign-in in.
FINAL_CODES = {"access_denied": DENIED, "expired_token": EXPIRED}


class ProviderRefused(ActionError):
    """The identity provider refused to start a sign-in, or could not be reached (502: not the caller's fault)."""

    status = 502


# --- which mailbox ------------------------------------------------------------------------------------------------

def sign_in_credentials(mailboxes: Sequence[MailboxConfig], mailbox_id: str) -> OAuth2Credentials:
    """The OAuth2 credentials of a mailbox that signs in by device code; 404 unknown, 409 another kind of sign-in
    (or no device authorization endpoint is known)."""
    mailbox = next((entry for entry in mailboxes if entry.id == mailbox_id), None)
    if mailbox is None:
        raise NotFound("unknown_mailbox", f"no mailbox {mailbox_id!r}")
    credentials = mailbox.credentials
    if not isinstance(credentials, OAuth2Credentials) or credentials.provider is not OAuthProvider.REFRESH_TOKEN:
        how = credentials.provider.value if isinstance(credentials, OAuth2Credentials) else "a password"
        raise Conflict("not_refresh_token", f"mailbox {mailbox_id!r} signs in with {how}, not the refresh_token "
                                            "OAuth2 provider")
    if not credentials.effective_device_authorization_url or not credentials.token_url:
        raise Conflict("no_device_endpoint", "no device authorization endpoint is configured "
                                             "(OAUTH_DEVICE_AUTHORIZATION_URL, or OAUTH_TENANT_ID for Microsoft)")
    return credentials


def device_flow_config(credentials: OAuth2Credentials) -> DeviceFlowConfig:
    client = OAuthClient(credentials.client_id or "", credentials.client_secret, credentials.effective_scope,
                         credentials.ca_file)
    return DeviceFlowConfig(credentials.effective_device_authorization_url or "", credentials.token_url or "",
                            client, allow_insecure=credentials.allow_insecure)


# --- the records --------------------------------------------------------------------------------------------------

def public_view(mailbox_id: str, record: dict) -> dict:
    """What an answer or a page may show of a sign-in (never the device code: it is not in this record at all)."""
    return {"mailbox": mailbox_id, "state": record["state"], "user_code": record.get("user_code"),
            "verification_uri": record.get("verification_uri"),
            "verification_uri_complete": record.get("verification_uri_complete"),
            "expires_at": iso_utc(record.get("expires_at")), "interval": record.get("interval"),
            "started_at": iso_utc(record.get("started_at")), "finished_at": iso_utc(record.get("finished_at")),
            "error": record.get("error"), "detail": record.get("detail")}


def _ttl(record: dict, now: float) -> float:
    return max(MIN_RECORD_TTL_SECONDS, float(record["expires_at"]) + OUTCOME_KEEP_SECONDS - now)


def _finished(record: dict, state: str, now: float, error: str | None = None, detail: str | None = None) -> dict:
    return {**record, "state": state, "finished_at": now, "error": error, "detail": detail}


@dataclass(frozen=True)
class Progress:
    """A sign-in as ``continue_sign_in`` left it: its public record, and the state it ended in by this very call
    (None: it did not end here — still pending, or ended before)."""

    record: dict
    ended_now: str | None = None


# --- starting -----------------------------------------------------------------------------------------------------

def start_sign_in(store: Any, mailbox_id: str, credentials: OAuth2Credentials, cipher: TokenCipher, now: float, *,
                  start: Callable[[DeviceFlowConfig], DeviceCode] = start_device_flow) -> dict:
    """Ask the provider for a device and user code and keep them for every worker; returns the public record. A
    sign-in already under way for the mailbox is replaced (its user code stops working here)."""
    try:
        code = start(device_flow_config(credentials))
    except OAuthError as exc:
        raise ProviderRefused(f"provider_{exc.code}", exc.description) from None
    attempt = secrets.token_hex(8)
    _redact(code.device_code, now + float(code.expires_in))
    expires_in = max(MIN_RECORD_TTL_SECONDS, float(code.expires_in))
    record = {"attempt": attempt, "state": PENDING, "user_code": code.user_code,
              "verification_uri": code.verification_uri, "verification_uri_complete": code.verification_uri_complete,
              "started_at": now, "expires_at": now + expires_in, "interval": float(code.interval),
              "next_poll_at": now + float(code.interval), "polls": 0, "outages": 0, "finished_at": None,
              "error": None, "detail": None}
    # The secret first: a worker that sees the public record always finds its code (until the code expires).
    store.put_record(SECRET_NAMESPACE, mailbox_id, {"attempt": attempt, "device_code": cipher.seal(code.device_code)},
                     expires_in)
    store.put_record(PUBLIC_NAMESPACE, mailbox_id, record, _ttl(record, now))
    return record


# --- continuing ---------------------------------------------------------------------------------------------------

def current_sign_in(store: Any, mailbox_id: str) -> dict | None:
    return store.get_record(PUBLIC_NAMESPACE, mailbox_id)


def continue_sign_in(store: Any, mailbox_id: str, credentials: OAuth2Credentials, cipher: TokenCipher, now: float, *,
                     ask: Callable[[DeviceFlowConfig, str], dict] | None = None) -> Progress:
    """The sign-in's state, after at most one token request (made only when it is pending, its interval has passed
    since the last request, and no other worker took this turn). 404 when no sign-in is known for the mailbox."""
    record = current_sign_in(store, mailbox_id)
    if record is None:
        raise NotFound(NO_SIGN_IN, f"no sign-in of mailbox {mailbox_id!r} is under way")
    if record["state"] != PENDING:
        return Progress(record)
    if now >= float(record["expires_at"]):
        return _end(store, mailbox_id, record, _finished(record, EXPIRED, now, "expired_token",
                                                         "the code expired before the sign-in was approved"), now)
    if now < float(record["next_poll_at"]):
        return Progress(record)
    claimed = {**record, "next_poll_at": now + float(record["interval"]), "polls": int(record["polls"]) + 1}
    if not store.compare_and_put_record(PUBLIC_NAMESPACE, mailbox_id, record, claimed, _ttl(claimed, now)):
        return Progress(current_sign_in(store, mailbox_id) or record)  # another worker asks this turn
    secret = store.get_record(SECRET_NAMESPACE, mailbox_id)
    if secret is None or secret.get("attempt") != record["attempt"]:
        return _end(store, mailbox_id, claimed, _finished(claimed, EXPIRED, now, "expired_token",
                                                          "the code is no longer kept (it expired)"), now)
    try:
        device_code = cipher.open(str(secret["device_code"]))
    except OAuthError as exc:  # STATE_ENCRYPTION_KEY differs between the workers
        return _end(store, mailbox_id, claimed, _finished(claimed, ERROR, now, exc.code, exc.description), now)
    _redact(device_code, float(record["expires_at"]))
    try:
        answer = (ask or request_grant)(device_flow_config(credentials), device_code)
    except OAuthError as exc:
        return _after_refusal(store, mailbox_id, claimed, exc, now)
    refresh_token = str(answer.get("refresh_token") or "")
    if not refresh_token:
        return _end(store, mailbox_id, claimed, _finished(
            claimed, ERROR, now, "no_refresh_token", "the provider granted no refresh token (add offline_access to "
                                                     "the scope)"), now)
    tokens = StoredRefreshTokens(store, mailbox_id, cipher)
    with tokens.lock():
        tokens.save(refresh_token)
    return _end(store, mailbox_id, claimed, _finished(claimed, DONE, now), now)


def _after_refusal(store: Any, mailbox_id: str, claimed: dict, exc: OAuthError, now: float) -> Progress:
    """What one refused token request means (RFC 8628 section 3.5): keep waiting, slow down, or end the sign-in."""
    if exc.code == "authorization_pending":
        return Progress(claimed)
    if exc.code == "slow_down":
        interval = float(claimed["interval"]) + SLOW_DOWN_STEP_SECONDS
        slower = {**claimed, "interval": interval, "next_poll_at": now + interval}
        store.compare_and_put_record(PUBLIC_NAMESPACE, mailbox_id, claimed, slower, _ttl(slower, now))
        return Progress(slower)
    if exc.code in FINAL_CODES:
        return _end(store, mailbox_id, claimed, _finished(claimed, FINAL_CODES[exc.code], now, exc.code,
                                                          exc.description), now)
    outages = int(claimed.get("outages") or 0) + 1
    if not exc.terminal and outages < MAX_TRANSIENT_FAILURES:
        later = {**claimed, "outages": outages}
        store.compare_and_put_record(PUBLIC_NAMESPACE, mailbox_id, claimed, later, _ttl(later, now))
        return Progress(later)
    return _end(store, mailbox_id, claimed, _finished(claimed, ERROR, now, exc.code, exc.description), now)


def _end(store: Any, mailbox_id: str, current: dict, ended: dict, now: float) -> Progress:
    """Write the outcome over ``current`` (a new sign-in started meanwhile wins) and forget the device code."""
    if not store.compare_and_put_record(PUBLIC_NAMESPACE, mailbox_id, current, ended, _ttl(ended, now)):
        return Progress(current_sign_in(store, mailbox_id) or ended)
    secret = store.get_record(SECRET_NAMESPACE, mailbox_id)
    if secret is not None and secret.get("attempt") == current["attempt"]:
        # Spent or dead either way; a put with the shortest TTL is how a record is let go of here.
        store.compare_and_put_record(SECRET_NAMESPACE, mailbox_id, secret, {"attempt": current["attempt"]},
                                     MIN_RECORD_TTL_SECONDS)
    return Progress(ended, ended["state"])


def request_grant(config: DeviceFlowConfig, device_code: str) -> dict:
    """One device access token request (RFC 8628 section 3.4); ``OAuthError`` for every refusal, with the device
    code kept out of its description."""
    client = config.client
    with token_session(client, secrets=(device_code,)) as session:
        return dict(session.fetch_token(config.token_url, grant_type=GRANT_DEVICE_CODE, device_code=device_code,
                                        timeout=client.timeout_seconds))


def _redact(device_code: str, expires_at: float) -> None:
    from log_setup import register_expiring_secret

    register_expiring_secret(device_code, expires_at)


def refresh_seconds(record: dict, now: float) -> int:
    """How long a waiting page waits before it asks again: until the next poll is due (at least 1 s)."""
    return max(1, math.ceil(float(record.get("next_poll_at") or now) - now))
