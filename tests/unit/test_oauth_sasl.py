"""Unit tests of services/oauth/sasl.py: the XOAUTH2 and OAUTHBEARER initial responses and the callback's answer to
an error challenge (the exchange with a real Dovecot is in tests/integration/test_oauth_providers.py)."""

from __future__ import annotations

import json

import pytest

from services.oauth import OAuth2SaslAuthenticator, oauthbearer_initial_response, xoauth2_initial_response

TOKEN = "ya29.a0-token_value~"


def test_xoauth2_initial_response_has_googles_shape():
    expected = f"user=u@example.org\x01auth=Bearer {TOKEN}\x01\x01".encode()
    assert xoauth2_initial_response("u@example.org", TOKEN) == expected


def test_oauthbearer_initial_response_is_rfc_7628_with_an_escaped_authzid():
    assert oauthbearer_initial_response("u@example.org", TOKEN) == \
        f"n,a=u@example.org,\x01auth=Bearer {TOKEN}\x01\x01".encode()
    assert oauthbearer_initial_response("a=b,c", TOKEN).startswith(b"n,a=a=3Db=2Cc,\x01")


def test_a_control_a_in_user_or_token_is_refused():
    with pytest.raises(ValueError):
        xoauth2_initial_response("u\x01auth=Bearer x", TOKEN)
    with pytest.raises(ValueError):
        oauthbearer_initial_response("u", "")


@pytest.mark.parametrize("mechanism, empty", [("XOAUTH2", b""), ("OAUTHBEARER", b"\x01"), ("xoauth2", b"")])
def test_the_callback_sends_the_token_once_then_the_empty_response_and_keeps_the_challenge(mechanism, empty):
    auth = OAuth2SaslAuthenticator(mechanism, "u@example.org", TOKEN)
    first = auth(b"")
    assert TOKEN.encode() in first
    challenge = {"status": "invalid_token", "schemes": "bearer", "scope": "https://mail.google.com/"}
    assert auth(json.dumps(challenge).encode()) == empty
    assert auth.error_challenge == challenge and auth.error_status == "invalid_token"
    assert TOKEN not in repr(auth)


def test_a_challenge_that_is_not_json_is_kept_raw_only():
    auth = OAuth2SaslAuthenticator("XOAUTH2", "u", TOKEN)
    auth(b"")
    assert auth(b"\xffnot json") == b""
    assert auth.error_challenge is None and auth.error_status is None and auth.raw_challenge == b"\xffnot json"


def test_an_unknown_mechanism_is_refused():
    with pytest.raises(ValueError):
        OAuth2SaslAuthenticator("PLAIN", "u", TOKEN)
