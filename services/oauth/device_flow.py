"""The device authorization grant (RFC 8628) for ``oauth-login``: sign a delegated mailbox in from a server that has
no browser. The operator opens the verification URL on any device and enters the code; meanwhile this polls the
token endpoint at the interval the provider asks for (``slow_down`` adds 5 s, section 3.5) until the grant is given,
denied or the code expires. The answer's refresh token is what the service keeps.

Both requests go through ``services.oauth.token_endpoint`` (Authlib), so errors follow the issue 18 taxonomy.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from services.oauth.errors import OAuthError, from_error_body
from services.oauth.token_endpoint import OAuthClient, token_session
from services.oauth.transport import require_secure_endpoints

GRANT_DEVICE_CODE = "urn:ietf:params:oauth:grant-type:device_code"
SLOW_DOWN_STEP_SECONDS = 5          # RFC 8628 section 3.5
DEFAULT_INTERVAL_SECONDS = 5        # when the provider names none (section 3.2)
MAX_TRANSIENT_FAILURES = 5          # token endpoint outages in a row before the sign-in gives up


@dataclass(frozen=True)
class DeviceFlowConfig:
    device_authorization_url: str
    token_url: str
    client: OAuthClient
    allow_insecure: bool = False

    def __post_init__(self) -> None:
        require_secure_endpoints(allow_insecure=self.allow_insecure, token_url=self.token_url,
                                 device_authorization_url=self.device_authorization_url)


@dataclass(frozen=True)
class DeviceCode:
    """What the provider answered (section 3.2); ``device_code`` is a secret, the user code is shown."""

    device_code: str = field(repr=False)
    user_code: str
    verification_uri: str
    verification_uri_complete: str | None
    expires_in: float
    interval: float

    @classmethod
    def from_answer(cls, answer: dict[str, Any]) -> "DeviceCode":
        # Google names it verification_url (an early draft's name); everyone else follows the RFC.
        uri = answer.get("verification_uri") or answer.get("verification_url")
        if not answer.get("device_code") or not answer.get("user_code") or not uri:
            raise OAuthError("invalid_device_response", "the device authorization endpoint answered no device_code, "
                                                        "user_code or verification_uri", True)
        return cls(str(answer["device_code"]), str(answer["user_code"]), str(uri),
                   str(answer["verification_uri_complete"]) if answer.get("verification_uri_complete") else None,
                   float(answer.get("expires_in") or 600), float(answer.get("interval") or DEFAULT_INTERVAL_SECONDS))


def start_device_flow(config: DeviceFlowConfig) -> DeviceCode:
    """Ask for a device and user code (section 3.1)."""
    client = config.client
    data = {"client_id": client.client_id}
    if client.scope:
        data["scope"] = client.scope
    if client.client_secret:
        data["client_secret"] = client.client_secret
    with token_session(client) as session:
        response = session.post(config.device_authorization_url, data=data, timeout=client.timeout_seconds,
                                headers={"Accept": "application/json"}, withhold_token=True)
        answer = response.json()
    if not isinstance(answer, dict):
        raise OAuthError("invalid_device_response", "the device authorization endpoint answered no JSON object", True)
    if response.status_code != 200 or answer.get("error"):
        raise from_error_body(answer, response.status_code, (client.client_secret,))
    return DeviceCode.from_answer(answer)


def wait_for_grant(config: DeviceFlowConfig, code: DeviceCode, *, sleep: Callable[[float], None] = time.sleep,
                   clock: Callable[[], float] = time.monotonic) -> dict[str, Any]:
    """Poll the token endpoint (section 3.4) until the user approves: the token answer, with its refresh token.
    ``OAuthError`` when the user denies (``access_denied``), the code expires (``expired_token``), the endpoint
    keeps failing, or the answer carries no refresh token (ask for ``offline_access``)."""
    deadline = clock() + code.expires_in
    interval, outages = code.interval, 0
    while clock() + interval < deadline:
        sleep(interval)
        try:
            answer = _ask(config, code)
        except OAuthError as exc:
            if exc.code == "authorization_pending":
                continue
            if exc.code == "slow_down":
                interval += SLOW_DOWN_STEP_SECONDS
                continue
            outages += 1
            if exc.terminal or outages >= MAX_TRANSIENT_FAILURES:
                raise
            continue
        if not answer.get("refresh_token"):
            raise OAuthError("no_refresh_token", "the provider granted no refresh token (add offline_access to "
                                                 "the scope)", True)
        return answer
    raise OAuthError("expired_token", "the code expired before the sign-in was approved", True)


def _ask(config: DeviceFlowConfig, code: DeviceCode) -> dict[str, Any]:
    with token_session(config.client, secrets=(code.device_code,)) as session:
        return dict(session.fetch_token(config.token_url, grant_type=GRANT_DEVICE_CODE,
                                        device_code=code.device_code, timeout=config.client.timeout_seconds))
