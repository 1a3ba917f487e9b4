"""The Redis lease token: which process holds the lease, in the operator format, unique across containers."""

from __future__ import annotations

import re

TOKEN_RE = re.compile(r"^pid=(\d+) host=(\S+) nonce=([0-9a-f]{16})$")


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
