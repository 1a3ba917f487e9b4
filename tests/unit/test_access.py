"""routes/access.py's pure parts: which token is which, session cookies (HKDF key, signature, expiry, rotation), the
safe ``next`` path, CSRF, and the failed-login limit over a store that counts like the real one."""

from __future__ import annotations

import pytest
from flask import Flask

from routes.access import (
    ADMIN_TOKEN,
    LOGIN_FAILURES_PER_CLIENT,
    LOGIN_FAILURES_PER_CLUSTER,
    SESSION_MAX_AGE_SECONDS,
    STATUS_TOKEN,
    Session,
    SessionKeys,
    count_failed_login,
    csrf_ok,
    login_blocked,
    safe_next,
    token_kind,
)

ADMIN = "admin-token-Wq81-do-not-print"
STATUS = "status-token-Hb27-do-not-print"
NOW = 1_796_000_000.0


def keys(**changes) -> SessionKeys:
    values = {"admin_token": ADMIN, "status_token": STATUS, "session_secret": None, **changes}
    return SessionKeys(**values)


@pytest.mark.parametrize(("presented", "expected"), [
    (ADMIN.encode(), ADMIN_TOKEN), (STATUS.encode(), STATUS_TOKEN), (b"nope", None), (None, None),
    (ADMIN.encode() + b" ", None), (ADMIN[:-1].encode(), None),
])
def test_a_presented_token_is_the_admin_token_the_status_token_or_neither(presented, expected):
    assert token_kind(presented, admin_token=ADMIN, status_token=STATUS) == expected


def test_an_unset_token_matches_nothing_not_even_an_empty_one():
    assert token_kind(b"", admin_token=None, status_token=None) is None
    assert token_kind(b"", admin_token="", status_token="") is None


def test_a_cookie_reads_back_as_its_session_until_it_expires():
    cookie, issued = keys().issue("admin", NOW)
    assert ADMIN not in cookie and STATUS not in cookie
    assert keys().read(cookie, NOW + 60) == issued
    assert issued.expires_at == NOW + SESSION_MAX_AGE_SECONDS and len(issued.csrf) >= 32
    assert keys().read(cookie, NOW + SESSION_MAX_AGE_SECONDS) is None


def test_every_session_has_its_own_csrf_token():
    assert keys().issue("admin", NOW)[1].csrf != keys().issue("admin", NOW)[1].csrf


@pytest.mark.parametrize("changes", [{"admin_token": ADMIN + "2"}, {"status_token": STATUS + "2"},
                                     {"session_secret": "x" * 32}])
def test_a_cookie_signed_under_other_tokens_or_another_secret_is_refused(changes):
    cookie, _ = keys().issue("read", NOW)
    assert keys(**changes).read(cookie, NOW) is None


def test_with_a_session_secret_only_a_rotation_of_the_sessions_own_token_ends_it():
    secret = "k" * 40
    admin_cookie, _ = keys(session_secret=secret).issue("admin", NOW)
    read_cookie, _ = keys(session_secret=secret).issue("read", NOW)
    rotated_status = keys(session_secret=secret, status_token=STATUS + "2")
    assert rotated_status.read(admin_cookie, NOW) is not None
    assert rotated_status.read(read_cookie, NOW) is None


@pytest.mark.parametrize("cookie", [None, "", "v1", "v1..", "v2.e30.AAAA", "v1.e30.AAAA", "v1.!!!.!!!", "x" * 2000])
def test_a_malformed_cookie_is_no_session(cookie):
    assert keys().read(cookie, NOW) is None


def test_without_any_token_or_secret_no_session_can_exist():
    empty = keys(admin_token=None, status_token=None)
    assert not empty.usable
    assert empty.read("v1.e30.AAAA", NOW) is None
    assert repr(keys()) == "SessionKeys(...)"


def test_the_role_of_a_login_is_the_token_it_presented():
    assert keys().role_for(ADMIN.encode()) == "admin"
    assert keys().role_for(STATUS.encode()) == "read"
    assert keys().role_for(b"guess") is None
    assert keys(admin_token=None).role_for(ADMIN.encode()) is None


@pytest.mark.parametrize(("value", "expected"), [
    ("/", "/"), ("/emails/abc?x=1#top", "/emails/abc?x=1#top"), (None, "/"), ("", "/"),
    ("//evil.example", "/"), ("/\\evil.example", "/"), ("https://evil.example/", "/"), ("evil", "/"),
    ("/a\r\nLocation: //x", "/"), ("/a\x00", "/"), ("/" + "a" * 3000, "/"),
])
def test_next_is_a_local_path_or_the_console(value, expected):
    assert safe_next(value) == expected


def test_csrf_needs_the_sessions_token_in_the_form_or_header_and_no_cross_site_origin():
    app = Flask("csrf")
    session = Session(role="admin", csrf="tok-123")
    cases = [({"data": {"csrf_token": "tok-123"}}, True), ({"headers": {"X-CSRF-Token": "tok-123"}}, True),
             ({"data": {"csrf_token": "tok-12"}}, False), ({}, False),
             ({"data": {"csrf_token": "tok-123"}, "headers": {"Sec-Fetch-Site": "cross-site"}}, False),
             ({"data": {"csrf_token": "tok-123"}, "headers": {"Sec-Fetch-Site": "same-origin"}}, True)]
    for kwargs, expected in cases:
        with app.test_request_context("/x", method="POST", **kwargs):
            assert csrf_ok(session) is expected, kwargs
    with app.test_request_context("/x", method="POST", data={"csrf_token": ""}):
        assert csrf_ok(Session(role="admin", csrf="")) is False


class CountingStore:
    """Counts like the store's ``hit`` (one fixed window here) and keeps records like ``put_record``."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.records: dict[tuple[str, str], dict] = {}

    def hit(self, key: str, window_seconds: float, now: float) -> int:
        self.counts[key] = self.counts.get(key, 0) + 1
        return self.counts[key]

    def get_record(self, namespace: str, key: str) -> dict | None:
        return self.records.get((namespace, key))

    def put_record(self, namespace: str, key: str, record: dict, ttl_seconds: float) -> None:
        self.records[(namespace, key)] = record


def test_a_client_is_blocked_at_its_limit_of_failed_logins_and_others_are_not():
    store = CountingStore()
    for _ in range(LOGIN_FAILURES_PER_CLIENT - 1):
        assert not count_failed_login(store, "203.0.113.9", NOW)
    assert not login_blocked(store, "203.0.113.9")
    assert count_failed_login(store, "203.0.113.9", NOW)
    assert login_blocked(store, "203.0.113.9") and not login_blocked(store, "198.51.100.7")


def test_the_whole_cluster_is_blocked_at_its_limit_whatever_the_addresses():
    store = CountingStore()
    for n in range(LOGIN_FAILURES_PER_CLUSTER):
        count_failed_login(store, f"10.0.{n // 250}.{n % 250}", NOW)
    assert login_blocked(store, "198.51.100.7")
