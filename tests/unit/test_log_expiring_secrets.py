"""Short-lived secrets (OAuth2 access tokens) are redacted in every log line until a while after they expire, then
forgotten: a process that runs for months is given a new token every hour, and the redaction list stays bounded."""

from __future__ import annotations

from log_setup import EXPIRED_SECRET_GRACE_SECONDS, expiring_secret_count, register_expiring_secret, scrub

NOW = 1_800_000_000.0


def test_an_access_token_is_redacted_until_after_it_expires_then_dropped():
    register_expiring_secret("eyJ-token-one-abc", NOW + 3600, now=NOW)
    assert "eyJ-token-one-abc" not in scrub("login with eyJ-token-one-abc refused")
    before = expiring_secret_count()
    # A day of hourly tokens later, only the live ones are kept
    for hour in range(1, 25):
        register_expiring_secret(f"eyJ-token-hour-{hour}", NOW + hour * 3600 + 3600, now=NOW + hour * 3600)
    assert expiring_secret_count() <= before + 2
    assert "eyJ-token-hour-24" not in scrub("eyJ-token-hour-24")


def test_a_token_is_still_redacted_within_the_grace_after_its_expiry():
    register_expiring_secret("eyJ-grace-token", NOW + 10, now=NOW)
    register_expiring_secret("eyJ-other", NOW + 3600, now=NOW + 10 + EXPIRED_SECRET_GRACE_SECONDS / 2)
    assert "eyJ-grace-token" not in scrub("eyJ-grace-token")
