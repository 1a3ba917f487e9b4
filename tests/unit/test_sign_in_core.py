"""background/sign_in.py on a real SQLite state store with the provider's two requests stubbed (the integration
tests in tests/integration/test_device_sign_in.py make them over https): which answer ends a sign-in how, outages,
a sign-in replaced while a request was out, the secret record's lifetime, and which mailbox may sign in."""

from __future__ import annotations

import time

import pytest

from background.operator_actions import Conflict, NotFound
from background.sign_in import (
    DONE,
    ERROR,
    EXPIRED,
    PENDING,
    PUBLIC_NAMESPACE,
    SECRET_NAMESPACE,
    continue_sign_in,
    public_view,
    refresh_seconds,
    sign_in_credentials,
    start_sign_in,
)
from config import MailboxConfig, OAuth2Credentials, OAuthProvider, PasswordCredentials
from services.oauth.device_flow import MAX_TRANSIENT_FAILURES, DeviceCode
from services.oauth.errors import OAuthError, token_endpoint_error
from services.oauth.stored_tokens import StoredRefreshTokens, TokenCipher
from services.state_store import open_state_store
from settings import Settings

pytestmark = pytest.mark.unit

DEVICE_CODE = "dev-code-Zq81-secret"
CREDENTIALS = OAuth2Credentials(provider=OAuthProvider.REFRESH_TOKEN, client_id="app",
                                token_url="https://login.example.test/token",
                                device_authorization_url="https://login.example.test/devicecode")
PLAIN = TokenCipher(None)


@pytest.fixture
def store(tmp_path):
    store = open_state_store(Settings.from_env({"STATE_DIR": str(tmp_path)}))
    yield store
    store.close()


def code(expires_in: float = 600, interval: float = 5) -> DeviceCode:
    return DeviceCode(DEVICE_CODE, "ABCD-EFGH", "https://login.example.test/device", None, expires_in, interval)


def started(store, **kwargs) -> dict:
    # The store's TTLs run on the wall clock: so does the sign-in here (``at`` picks a later moment of it).
    return start_sign_in(store, "box", CREDENTIALS, PLAIN, time.time(), start=lambda config: code(**kwargs))


def refusing(error: str, status: int = 400):
    def ask(config, device_code):
        raise token_endpoint_error(error, f"{error} for {device_code}", status, (device_code,))

    return ask


def at(record: dict, seconds_after_next_poll: float = 0.0) -> float:
    return float(record["next_poll_at"]) + seconds_after_next_poll


def test_the_public_record_and_its_view_never_hold_the_device_code(store):
    record = started(store)
    assert DEVICE_CODE not in repr(record) and DEVICE_CODE not in repr(public_view("box", record))
    assert store.get_record(SECRET_NAMESPACE, "box")["device_code"] == f"plain:{DEVICE_CODE}"
    assert set(public_view("box", record)) >= {"state", "user_code", "verification_uri", "expires_at", "interval"}


def test_nothing_is_asked_before_the_interval_has_passed(store):
    record = started(store)
    asked = []
    progress = continue_sign_in(store, "box", CREDENTIALS, PLAIN, at(record, -0.5),
                                ask=lambda config, device_code: asked.append(device_code) or {})
    assert progress.record["state"] == PENDING and progress.ended_now is None and asked == []


def test_a_grant_stores_the_refresh_token_and_ends_done(store):
    record = started(store)
    progress = continue_sign_in(store, "box", CREDENTIALS, PLAIN, at(record),
                                ask=lambda config, device_code: {"access_token": "a", "refresh_token": "rt-1"})
    assert progress.ended_now == DONE and progress.record["state"] == DONE
    assert StoredRefreshTokens(store, "box", PLAIN).load() == "rt-1"
    assert "device_code" not in store.get_record(SECRET_NAMESPACE, "box")


def test_a_grant_without_a_refresh_token_is_an_error_and_stores_nothing(store):
    record = started(store)
    progress = continue_sign_in(store, "box", CREDENTIALS, PLAIN, at(record),
                                ask=lambda config, device_code: {"access_token": "a"})
    assert (progress.ended_now, progress.record["error"]) == (ERROR, "no_refresh_token")
    assert StoredRefreshTokens(store, "box", PLAIN).load() is None


def test_outages_keep_it_pending_until_too_many_in_a_row_end_it(store):
    record = started(store)
    for _ in range(MAX_TRANSIENT_FAILURES - 1):
        progress = continue_sign_in(store, "box", CREDENTIALS, PLAIN, at(record), ask=refusing("http_503", 503))
        assert progress.record["state"] == PENDING
        record = progress.record
    progress = continue_sign_in(store, "box", CREDENTIALS, PLAIN, at(record), ask=refusing("http_503", 503))
    assert progress.ended_now == ERROR


@pytest.mark.parametrize("error, state", [("access_denied", "denied"), ("expired_token", EXPIRED),
                                          ("invalid_grant", ERROR), ("invalid_client", ERROR)])
def test_a_final_refusal_ends_the_sign_in_and_its_description_never_names_the_device_code(store, error, state):
    record = started(store)
    progress = continue_sign_in(store, "box", CREDENTIALS, PLAIN, at(record), ask=refusing(error))
    assert progress.ended_now == state and progress.record["error"] == error
    assert DEVICE_CODE not in repr(store.get_record(PUBLIC_NAMESPACE, "box"))


def test_a_sign_in_replaced_while_its_request_was_out_keeps_the_new_one(store):
    record = started(store)

    def ask(config, device_code):
        started(store)  # the operator pressed "start a new sign-in" meanwhile
        raise OAuthError("access_denied", "declined", True)

    progress = continue_sign_in(store, "box", CREDENTIALS, PLAIN, at(record), ask=ask)
    assert progress.ended_now is None and progress.record["state"] == PENDING
    assert progress.record["attempt"] != record["attempt"]
    assert store.get_record(SECRET_NAMESPACE, "box")["device_code"] == f"plain:{DEVICE_CODE}"


def test_a_device_code_no_longer_kept_ends_the_sign_in_expired_without_asking(store):
    record = started(store)
    store.put_record(SECRET_NAMESPACE, "box", {"attempt": "another"}, 60)
    progress = continue_sign_in(store, "box", CREDENTIALS, PLAIN, at(record),
                                ask=lambda config, device_code: pytest.fail("asked"))
    assert progress.ended_now == EXPIRED


def test_a_device_code_sealed_with_another_key_is_an_error(store):
    from cryptography.fernet import Fernet

    sealed = TokenCipher(Fernet.generate_key().decode())
    record = start_sign_in(store, "box", CREDENTIALS, sealed, time.time(), start=lambda config: code())
    progress = continue_sign_in(store, "box", CREDENTIALS, TokenCipher(Fernet.generate_key().decode()), at(record),
                                ask=lambda config, device_code: pytest.fail("asked"))
    assert (progress.ended_now, progress.record["error"]) == (ERROR, "stored_token_unreadable")


def test_the_secret_record_lives_as_long_as_the_code(store):
    started(store, expires_in=1)
    assert store.get_record(SECRET_NAMESPACE, "box") is not None
    time.sleep(1.1)
    assert store.get_record(SECRET_NAMESPACE, "box") is None
    assert store.get_record(PUBLIC_NAMESPACE, "box") is not None  # the outcome stays readable


def test_a_waiting_page_reloads_when_the_next_poll_is_due():
    assert refresh_seconds({"next_poll_at": 110.2}, 100.0) == 11
    assert refresh_seconds({"next_poll_at": 90.0}, 100.0) == 1


def test_only_a_refresh_token_mailbox_with_a_device_endpoint_signs_in_here():
    def mailbox(mailbox_id, credentials):
        return MailboxConfig(id=mailbox_id, server="imap.example.test", user="u@example.test",
                             credentials=credentials)

    mailboxes = (mailbox("box", CREDENTIALS), mailbox("pw", PasswordCredentials("secret")),
                 mailbox("cmd", OAuth2Credentials(provider=OAuthProvider.COMMAND, token_command="true")),
                 mailbox("nodev", OAuth2Credentials(provider=OAuthProvider.REFRESH_TOKEN, client_id="app",
                                                    token_url="https://login.example.test/token")))
    assert sign_in_credentials(mailboxes, "box") is CREDENTIALS
    with pytest.raises(NotFound):
        sign_in_credentials(mailboxes, "nope")
    for mailbox_id, error in (("pw", "not_refresh_token"), ("cmd", "not_refresh_token"),
                              ("nodev", "no_device_endpoint")):
        with pytest.raises(Conflict) as raised:
            sign_in_credentials(mailboxes, mailbox_id)
        assert raised.value.error == error
