"""The Redis poller lease with separate OS processes (harness/lease_child.py) against a real redis-server.

Each child records, every 20 ms, whether it believes it holds the lease (wall-clock bracketed samples) and, while its
keeper says "held", performs guarded "mailbox actions" that a Lua witness in Redis marks as owned or not at the
moment they happen. Every test has a watchdog and stops every child it started (SIGCONT, SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import re

import pytest

from harness.lease_child import ACTIONS_KEY, Contender, spawn, wait_for

KEY = "render_signal:poller_lock"
TTL = 1.0
RETRY = TTL / 3.0           # the default LEASE_RETRY_SECONDS for this TTL (a third of it)
TIMEOUT = 0.25              # REDIS_TIMEOUT_SECONDS in the children
SCHEDULING_SLACK = 0.5      # process start-up jitter and a loaded 2-core CI machine
TOKEN_RE = re.compile(r"^pid=(\d+) host=(\S+) nonce=([0-9a-f]{16})$")


@pytest.fixture
def contenders(tmp_path):
    """Start lease_child.py processes; whatever happens, every one of them is stopped and reaped afterwards."""
    started: list[Contender] = []

    def start(name: str, redis_url: str, *extra: str) -> Contender:
        child = spawn(name, str(tmp_path), "--redis-url", redis_url, "--ttl", str(TTL), "--timeout", str(TIMEOUT),
                      *extra)
        started.append(child)
        return child

    try:
        yield start
    finally:
        for child in started:
            child.stop()


def wait_started(children: list[Contender]) -> None:
    for child in children:
        wait_for(lambda: child.events("start") or child.proc.poll() is not None, 15, f"{child.name} to start")
        assert child.proc.poll() is None, child.log()


def current_holder(client, children: list[Contender]) -> Contender | None:
    token = client.get(KEY)
    for child in children:
        starts = child.events("start")
        if token and starts and starts[0]["token"] == token:
            return child
    return None


def acquired_after(children: list[Contender], since: float) -> tuple[Contender, float] | None:
    found = [(child, t) for child in children for t in child.acquisitions() if t > since]
    return min(found, key=lambda item: item[1]) if found else None


def stop_gracefully(children: list[Contender]) -> None:
    for child in children:
        if child.proc.poll() is None:
            child.proc.terminate()
    for child in children:
        child.proc.wait(10)


def assert_witness_clean(client) -> int:
    entries = client.lrange(ACTIONS_KEY, 0, -1)
    unowned = [entry for entry in entries if entry.split("|")[1] != "1"]
    assert not unowned, f"mailbox actions performed without owning the lease: {unowned[:5]}"
    return len(entries)


def test_the_token_names_pid_and_host_and_differs_across_hosts_with_equal_pids(monkeypatch):
    from background import lease as lease_module

    # Given two containers whose processes have the same PID
    monkeypatch.setattr(lease_module.os, "getpid", lambda: 7)
    monkeypatch.setattr(lease_module.socket, "gethostname", lambda: "web-a")
    token_a = lease_module.make_token()
    monkeypatch.setattr(lease_module.socket, "gethostname", lambda: "web-b")
    token_b = lease_module.make_token()

    # Then the tokens say which process holds the lease, exactly in the operator format, and differ
    assert TOKEN_RE.match(token_a).groups()[:2] == ("7", "web-a")
    assert TOKEN_RE.match(token_b).groups()[:2] == ("7", "web-b")
    assert "pid=7" in token_a and token_a != token_b
