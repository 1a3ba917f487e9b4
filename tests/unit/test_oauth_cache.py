"""Unit tests of services/oauth/cache.py: tokens shared per key, refreshed by the rule, one refresh per key at a
time (threads, no server)."""

from __future__ import annotations

import threading
import time

import pytest

from services.oauth import AccessToken, CacheKey, OAuthError, TokenCache


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingProvider:
    def __init__(self, key: CacheKey, clock: Clock, lifetime: float = 3600, delay: float = 0.0) -> None:
        self.cache_key = key
        self.clock, self.lifetime, self.delay = clock, lifetime, delay
        self.calls = 0
        self.in_flight = 0
        self.most_in_flight = 0
        self.fail: OAuthError | None = None
        self._lock = threading.Lock()

    def fetch_token(self) -> AccessToken:
        with self._lock:
            self.calls += 1
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            number = self.calls
        try:
            if self.delay:
                time.sleep(self.delay)
            if self.fail is not None:
                raise self.fail
            return AccessToken(f"token-{number}", self.clock.now + self.lifetime, self.clock.now)
        finally:
            with self._lock:
                self.in_flight -= 1


APP = CacheKey("microsoft_client_credentials", "tenant", "client", "https://outlook.office365.com/.default", None)


def test_mailboxes_of_one_app_share_its_token_until_it_needs_a_refresh():
    clock = Clock()
    cache = TokenCache(clock)
    first, second = CountingProvider(APP, clock), CountingProvider(APP, clock)  # two mailboxes, one app
    assert cache.get(first).value == "token-1"
    assert cache.get(second).value == "token-1" and second.calls == 0
    clock.now += 3600 - 299  # within the last 5 minutes
    assert cache.get(second).value == "token-1" and second.calls == 1


def test_different_subjects_get_different_tokens():
    clock = Clock()
    cache = TokenCache(clock)
    alice = CountingProvider(CacheKey("refresh_token", "https://x/token", "c", None, "alice"), clock)
    bob = CountingProvider(CacheKey("refresh_token", "https://x/token", "c", None, "bob"), clock)
    cache.get(alice)
    cache.get(bob)
    assert alice.calls == bob.calls == 1


def test_one_refresh_per_key_at_a_time_and_the_waiters_take_its_token():
    clock = Clock()
    cache = TokenCache(clock)
    provider = CountingProvider(APP, clock, delay=0.2)
    barrier = threading.Barrier(8)
    values: list[str] = []

    def get() -> None:
        barrier.wait()
        values.append(cache.get(provider).value)

    threads = [threading.Thread(target=get) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert values == ["token-1"] * 8
    assert provider.calls == 1 and provider.most_in_flight == 1


def test_an_error_passes_through_and_caches_nothing():
    clock = Clock()
    cache = TokenCache(clock)
    provider = CountingProvider(APP, clock)
    provider.fail = OAuthError("invalid_grant", "AADSTS700082: expired", True)
    with pytest.raises(OAuthError) as caught:
        cache.get(provider)
    assert caught.value.terminal
    assert cache.peek(APP) is None
    provider.fail = None
    assert cache.get(provider).value == "token-2"


def test_invalidate_forgets_only_the_token_it_names():
    clock = Clock()
    cache = TokenCache(clock)
    provider = CountingProvider(APP, clock)
    old = cache.get(provider)
    cache.invalidate(APP, AccessToken("other", 0, 0))
    assert cache.peek(APP) is old
    cache.invalidate(APP, old)
    assert cache.get(provider).value == "token-2"


def test_expired_tokens_are_dropped():
    clock = Clock()
    cache = TokenCache(clock)
    cache.get(CountingProvider(APP, clock, lifetime=10))
    clock.now += 11
    assert cache.drop_expired() == 1 and cache.peek(APP) is None
