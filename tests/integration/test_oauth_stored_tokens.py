"""Refresh tokens kept in the state store (issue 18): two OS processes refreshing one mailbox's token at the same
moment, each with its own store connection, against the fake identity provider that rotates refresh tokens and
refuses a spent one. Both get an access token, neither spends a stale refresh token, and what is stored is the
newest, encrypted with STATE_ENCRYPTION_KEY; on SQLite (a persistent STATE_DIR) and on a real redis-server."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from harness.identity import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, GRANT_REFRESH, IdentityProvider
from services.oauth import OAuthError
from services.oauth.stored_tokens import StoredRefreshTokens, TokenCipher
from services.state_store import open_state_store
from settings import Settings

MAILBOX_ID = "studio"
USER = "studio@example.com"
KEY = "cGxlYXNlLWRvLW5vdC11c2UtdGhpcy1rZXktYW55d2g="  # 32 bytes, url-safe base64: a test key only


def _refresh_in_a_process(environ: dict, token_url: str, barrier, results) -> None:
    """One process: its own store, its own provider, refreshing when the other is ready too."""
    from services.oauth.refresh_token import RefreshTokenConfig, RefreshTokenProvider

    store = open_state_store(Settings.from_env(environ))
    tokens = StoredRefreshTokens(store, MAILBOX_ID, TokenCipher(environ["STATE_ENCRYPTION_KEY"]))
    provider = RefreshTokenProvider(RefreshTokenConfig(
        token_url=token_url, client_id=DEFAULT_CLIENT_ID, client_secret=DEFAULT_CLIENT_SECRET, subject=USER,
        allow_insecure=True), tokens)
    barrier.wait(10)
    try:
        provider.fetch_token()
        results.put("ok")
    except OAuthError as exc:
        results.put(exc.code)
    finally:
        store.close()


@pytest.fixture(params=["sqlite", "redis"])
def state_environ(request, tmp_path: Path) -> dict:
    environ = {"STATE_DIR": str(tmp_path / "state"), "STATE_ENCRYPTION_KEY": KEY}
    if request.param == "redis":
        environ["REDIS_URL"] = request.getfixturevalue("redis_url")
    return environ


@pytest.mark.timeout(60)
def test_two_processes_refreshing_at_once_never_spend_a_stale_refresh_token(identity_provider: IdentityProvider,
                                                                           state_environ: dict):
    identity = identity_provider
    initial = identity.issue_refresh_token(USER)
    store = open_state_store(Settings.from_env(state_environ))
    tokens = StoredRefreshTokens(store, MAILBOX_ID, TokenCipher(KEY))
    tokens.save(initial)  # what oauth-login (or the first refresh) stores
    # When two processes refresh the mailbox's token at the same moment
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    processes = [context.Process(target=_refresh_in_a_process, args=(state_environ, identity.token_url, barrier,
                                                                     results)) for _ in range(2)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(40)
    outcomes = sorted(results.get(timeout=5) for _ in processes)
    # Then both got an access token: they took turns, each with the newest refresh token
    assert outcomes == ["ok", "ok"]
    refreshes = [item for item in identity.requests if item.grant_type == GRANT_REFRESH]
    assert [item.status for item in refreshes] == [200, 200]
    # and the store holds the newest one, encrypted (never the token in clear)
    assert tokens.load() == identity.latest_refresh_token(initial)
    stored = store.read_refresh_token(MAILBOX_ID)
    assert stored is not None and stored.startswith("fernet:") and tokens.load() not in stored
    store.close()


def test_a_stored_token_encrypted_with_another_key_or_none_is_a_terminal_error(tmp_path: Path):
    store = open_state_store(Settings.from_env({"STATE_DIR": str(tmp_path)}))
    StoredRefreshTokens(store, MAILBOX_ID, TokenCipher(KEY)).save("rt-secret")
    for cipher in (TokenCipher(None), TokenCipher("b3RoZXIta2V5LW90aGVyLWtleS1vdGhlci1rZXktMTI=")):
        with pytest.raises(OAuthError) as caught:
            StoredRefreshTokens(store, MAILBOX_ID, cipher).load()
        assert caught.value.terminal and caught.value.code == "stored_token_unreadable"
        assert "rt-secret" not in str(caught.value)
    # a token stored in clear before a key was set is still read, and sealed at the next save
    plain = StoredRefreshTokens(store, MAILBOX_ID, TokenCipher(None))
    plain.save("rt-plain")
    sealed = StoredRefreshTokens(store, MAILBOX_ID, TokenCipher(KEY))
    assert sealed.load() == "rt-plain"
    sealed.save("rt-next")
    assert store.read_refresh_token(MAILBOX_ID).startswith("fernet:") and sealed.load() == "rt-next"
    store.close()
